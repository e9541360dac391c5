//! Kernel-exit NAT: IP forwarding plus one nftables table of privd's own.
//!
//! The ruleset is text for `nft -f -`, built only from privd's config (never
//! from request data) and from values that are validated here before they are
//! written into it, so nothing a peer sends can reach nft.

use ipnet::IpNet;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::process::Command;

/// The table privd owns; nothing else in it is touched.
pub const TABLE: &str = "inet sapper";

const IPV4_FORWARD: &str = "/proc/sys/net/ipv4/ip_forward";
const IPV6_FORWARD: &str = "/proc/sys/net/ipv6/conf/all/forwarding";
const NFT_TIMEOUT: Duration = Duration::from_secs(10);

/// NAT errors.
#[derive(Debug, thiserror::Error)]
pub enum NatError {
    /// Nothing to masquerade.
    #[error("privd.nat is enabled but there are no sources: set privd.nat.sources or give the TUN addresses")]
    NoSources,
    /// The interface name could break out of the quoted nft string.
    #[error("interface name {0:?} has characters not allowed in an nft ruleset")]
    BadName(String),
    /// A sysctl write failed.
    #[error("cannot write {path}: {source}")]
    Sysctl {
        /// The file.
        path: &'static str,
        /// Why.
        source: std::io::Error,
    },
    /// nft could not be run at all.
    #[error("cannot run nft: {0}")]
    Spawn(std::io::Error),
    /// nft ran and failed.
    #[error("nft failed: {0}")]
    Nft(String),
}

/// The masquerade sources: configured ones, or else the networks of the TUN
/// addresses (10.99.0.1/24 gives 10.99.0.0/24).
pub fn sources(configured: &[IpNet], tun_addresses: &[IpNet]) -> Vec<IpNet> {
    let mut out: Vec<IpNet> = if configured.is_empty() {
        tun_addresses.iter().map(IpNet::trunc).collect()
    } else {
        configured.iter().map(IpNet::trunc).collect()
    };
    out.sort();
    out.dedup();
    out
}

/// Builds the ruleset. It first declares and deletes the table so that a
/// stale table from an earlier run is replaced in the same atomic batch.
pub fn ruleset(tun: &str, sources: &[IpNet]) -> Result<String, NatError> {
    let name_ok = !tun.is_empty()
        && tun
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
    if !name_ok {
        return Err(NatError::BadName(tun.to_string()));
    }
    let list = |v4: bool| -> Option<String> {
        let nets: Vec<String> = sources
            .iter()
            .filter(|n| matches!(n, IpNet::V4(_)) == v4)
            .map(ToString::to_string)
            .collect();
        (!nets.is_empty()).then(|| nets.join(", "))
    };
    let (v4, v6) = (list(true), list(false));
    if v4.is_none() && v6.is_none() {
        return Err(NatError::NoSources);
    }
    let mut text = format!(
        "table {TABLE}\ndelete table {TABLE}\ntable {TABLE} {{\n\tchain postrouting {{\n\t\ttype nat hook postrouting priority 100; policy accept;\n"
    );
    // Only traffic leaving through another interface is rewritten: packets
    // routed back into the tunnel keep their tunnel source address.
    if let Some(v4) = v4 {
        text += &format!("\t\toifname != \"{tun}\" ip saddr {{ {v4} }} masquerade\n");
    }
    if let Some(v6) = v6 {
        text += &format!("\t\toifname != \"{tun}\" ip6 saddr {{ {v6} }} masquerade\n");
    }
    text += "\t}\n}\n";
    Ok(text)
}

/// The text that removes the table whether or not it exists.
pub fn teardown() -> String {
    format!("table {TABLE}\ndelete table {TABLE}\n")
}

/// Feeds `script` to `nft -f -`.
///
/// nft inherits CAP_NET_ADMIN through the ambient set (see privs.rs); it
/// gets nothing else because the bounding set has nothing else.
pub async fn apply(script: &str) -> Result<(), NatError> {
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        // A fixed PATH so the environment privd was started with cannot pick
        // a different `nft`.
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(NatError::Spawn)?;
    let run = async {
        if let Some(mut stdin) = child.stdin.take() {
            stdin
                .write_all(script.as_bytes())
                .await
                .map_err(NatError::Spawn)?;
        }
        child.wait_with_output().await.map_err(NatError::Spawn)
    };
    let out = tokio::time::timeout(NFT_TIMEOUT, run)
        .await
        .map_err(|_| NatError::Nft(format!("no answer within {NFT_TIMEOUT:?}")))??;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        return Err(NatError::Nft(format!(
            "{}: {}",
            out.status,
            err.trim().replace('\n', " | ")
        )));
    }
    Ok(())
}

/// Turns on forwarding and returns whether IPv4 forwarding is on afterwards.
/// IPv6 is only required when there are v6 sources, so a host with IPv6
/// disabled can still be a v4 exit.
///
/// Writing these files needs no capability beyond CAP_NET_ADMIN: sysctls
/// under /proc/sys/net are checked against the network namespace owner, and
/// CAP_NET_ADMIN there grants the owner's write bit. Under systemd
/// (ProtectKernelTunables=yes) /proc/sys is read-only: forwarding is then
/// the sysctl.d file's job, a write failing with EROFS is not an error, and
/// the caller reports forwarding off if it is.
pub fn enable_forwarding(need_v6: bool) -> Result<bool, NatError> {
    let write = |path: &'static str| match std::fs::write(path, b"1\n") {
        Ok(()) => Ok(()),
        Err(e) if e.raw_os_error() == Some(nix::libc::EROFS) => Ok(()),
        Err(source) => Err(NatError::Sysctl { path, source }),
    };
    write(IPV4_FORWARD)?;
    match write(IPV6_FORWARD) {
        Err(e) if need_v6 || Path::new(IPV6_FORWARD).exists() => return Err(e),
        _ => {}
    }
    Ok(forwarding_enabled())
}

/// True when IPv4 forwarding is on.
pub fn forwarding_enabled() -> bool {
    std::fs::read_to_string(IPV4_FORWARD).is_ok_and(|s| s.trim() == "1")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter().map(|s| s.parse().unwrap()).collect()
    }

    #[test]
    fn sources_default_to_tun_networks() {
        let addrs = nets(&["10.99.0.1/24", "fd99::1/64", "10.99.0.2/24"]);
        assert_eq!(sources(&[], &addrs), nets(&["10.99.0.0/24", "fd99::/64"]));
        assert_eq!(
            sources(&nets(&["192.168.5.7/16"]), &addrs),
            nets(&["192.168.0.0/16"])
        );
    }

    #[test]
    fn ruleset_text() {
        let text = ruleset(
            "sapper0",
            &nets(&["10.99.0.0/24", "10.98.0.0/24", "fd99::/64"]),
        )
        .unwrap();
        assert_eq!(
            text,
            "table inet sapper\n\
             delete table inet sapper\n\
             table inet sapper {\n\
             \tchain postrouting {\n\
             \t\ttype nat hook postrouting priority 100; policy accept;\n\
             \t\toifname != \"sapper0\" ip saddr { 10.99.0.0/24, 10.98.0.0/24 } masquerade\n\
             \t\toifname != \"sapper0\" ip6 saddr { fd99::/64 } masquerade\n\
             \t}\n\
             }\n"
        );
        let v4_only = ruleset("tun-1", &nets(&["10.0.0.0/8"])).unwrap();
        assert!(!v4_only.contains("ip6"));
        assert!(v4_only.contains("oifname != \"tun-1\" ip saddr { 10.0.0.0/8 } masquerade"));
    }

    #[test]
    fn ruleset_refuses_bad_input() {
        let src = nets(&["10.0.0.0/8"]);
        for bad in ["", "a\"b", "x;y", "tun 0", "t\n", "t}"] {
            assert!(
                matches!(ruleset(bad, &src), Err(NatError::BadName(_))),
                "{bad:?}"
            );
        }
        assert!(matches!(ruleset("sapper0", &[]), Err(NatError::NoSources)));
        assert_eq!(teardown(), "table inet sapper\ndelete table inet sapper\n");
    }
}
