//! Kernel-exit NAT: IP forwarding plus one nftables table of privd's own.
//!
//! The ruleset is text for `nft -f -`, built only from privd's config (never
//! from request data) and from values that are validated here before they are
//! written into it, so nothing a peer sends can reach nft.

use ipnet::IpNet;
use nix::libc;
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{ForkResult, Pid};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// The table privd owns; nothing else in it is touched.
pub const TABLE: &str = "inet sapper";
const TABLE_FAMILY: &str = "inet";
const TABLE_NAME: &str = "sapper";

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
    let name_ok =
        !tun.is_empty() && tun.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
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

/// Feeds `script` to `nft -f -` (at start, before the seccomp filter).
/// A fixed PATH and an empty environment, so the environment privd was
/// started with cannot pick a different `nft`.
pub fn apply(script: &str) -> Result<(), NatError> {
    use std::io::{Read, Write};
    let mut child = nft()
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(NatError::Spawn)?;
    let wrote = child.stdin.take().map(|mut i| i.write_all(script.as_bytes()));
    let status = wait(&mut child).map_err(NatError::Nft)?;
    let mut err = String::new();
    let _ = child.stderr.take().map(|mut e| e.read_to_string(&mut err));
    match (status.success(), wrote) {
        (true, None | Some(Ok(()))) => Ok(()),
        (_, Some(Err(e))) => Err(NatError::Spawn(e)),
        (false, _) => Err(NatError::Nft(format!("{status}: {}", err.trim().replace('\n', " | ")))),
    }
}

fn nft() -> Command {
    let mut c = Command::new("nft");
    c.env_clear().env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin").stdout(Stdio::null());
    c
}

/// Waits for `child`, at most [`NFT_TIMEOUT`] (then kills it).
fn wait(child: &mut Child) -> Result<std::process::ExitStatus, String> {
    let deadline = std::time::Instant::now() + NFT_TIMEOUT;
    while std::time::Instant::now() < deadline {
        match child.try_wait() {
            Ok(Some(s)) => return Ok(s),
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => return Err(e.to_string()),
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    Err(format!("nft gave no answer within {NFT_TIMEOUT:?}"))
}

/// The one process privd starts after setup: forked before the seccomp
/// filter (which refuses fork and exec), holding no fd but the read end of a
/// pipe, it waits for that pipe to close (privd exiting, however it exits)
/// and then runs `nft delete table inet sapper`, with privd's uid and
/// CAP_NET_ADMIN only. So the running privd never needs to exec anything,
/// and the table goes with privd even when privd is killed.
pub struct Teardown {
    pipe: Option<OwnedFd>,
    pid: Pid,
}

impl Teardown {
    /// Forks the helper. privd must be single-threaded here.
    pub fn fork() -> Result<Self, NatError> {
        let spawn = |e: nix::Error| NatError::Spawn(e.into());
        let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(spawn)?;
        // SAFETY: privd has one thread, so the child may run any code; it
        // only waits on the pipe and then execs.
        match unsafe { nix::unistd::fork() }.map_err(spawn)? {
            ForkResult::Parent { child } => Ok(Teardown { pipe: Some(w), pid: child }),
            ForkResult::Child => {
                drop(w);
                // Nothing of privd's but the pipe: no TUN, socket or netlink.
                let _ = nix::unistd::dup2(r.as_raw_fd(), 0);
                // SAFETY: closes fds by number in a process that uses none.
                unsafe { libc::close_range(3, libc::c_uint::MAX, 0) };
                let _ = nix::unistd::read(0, &mut [0u8; 1]);
                let err = nft().args(["delete", "table", TABLE_FAMILY, TABLE_NAME]).exec();
                eprintln!("sapper-privd teardown helper: nft: {err}");
                std::process::exit(1)
            }
        }
    }

    /// Lets the helper run and waits (bounded) for its verdict.
    pub fn run(mut self) -> Result<(), NatError> {
        drop(self.pipe.take());
        let deadline = std::time::Instant::now() + NFT_TIMEOUT;
        while std::time::Instant::now() < deadline {
            match waitpid(self.pid, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) => std::thread::sleep(Duration::from_millis(20)),
                Ok(WaitStatus::Exited(_, 0)) => return Ok(()),
                other => return Err(NatError::Nft(format!("teardown helper: {other:?}"))),
            }
        }
        Err(NatError::Nft(format!("teardown helper: no answer within {NFT_TIMEOUT:?}")))
    }
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
        assert_eq!(sources(&nets(&["192.168.5.7/16"]), &addrs), nets(&["192.168.0.0/16"]));
    }

    #[test]
    fn ruleset_text() {
        let text =
            ruleset("sapper0", &nets(&["10.99.0.0/24", "10.98.0.0/24", "fd99::/64"])).unwrap();
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
            assert!(matches!(ruleset(bad, &src), Err(NatError::BadName(_))), "{bad:?}");
        }
        assert!(matches!(ruleset("sapper0", &[]), Err(NatError::NoSources)));
        assert_eq!(teardown(), "table inet sapper\ndelete table inet sapper\n");
    }
}
