//! Kernel-exit NAT: IP forwarding plus one nftables table of privd's own.
//!
//! The ruleset is text for `nft -f -`, built only from privd's config (never
//! from request data) and from values that are validated here before they are
//! written into it, so nothing a peer sends can reach nft.

use anyhow::{bail, ensure, Context};
use ipnet::IpNet;
use nix::sys::signal::{SigSet, Signal};
use std::collections::BTreeSet;
use std::io::Write;
use std::os::unix::process::CommandExt;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

/// The table privd owns; nothing else in it is touched.
pub const TABLE: &str = "inet sapper";
const IPV4_FORWARD: &str = "/proc/sys/net/ipv4/ip_forward";
const IPV6_FORWARD: &str = "/proc/sys/net/ipv6/conf/all/forwarding";
const NFT_TIMEOUT: Duration = Duration::from_secs(10);

/// The masquerade sources: configured ones, or else the networks of the TUN
/// addresses (10.99.0.1/24 gives 10.99.0.0/24).
pub fn sources(configured: &[IpNet], tun_addresses: &[IpNet]) -> Vec<IpNet> {
    let from = if configured.is_empty() {
        tun_addresses
    } else {
        configured
    };
    let sorted: BTreeSet<IpNet> = from.iter().map(IpNet::trunc).collect();
    sorted.into_iter().collect()
}

/// Builds the ruleset. It first declares and deletes the table so that a
/// stale table from an earlier run is replaced in the same atomic batch.
pub fn ruleset(tun: &str, sources: &[IpNet], host_ports: &[u16]) -> anyhow::Result<String> {
    let name_ok = !tun.is_empty()
        && tun
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
    ensure!(
        name_ok,
        "interface name {tun:?} has characters not allowed in an nft ruleset"
    );
    ensure!(!sources.is_empty(), "privd.nat is enabled but there are no sources: set privd.nat.sources or give the TUN addresses");
    // Per family: the source set, used to masquerade and to forward.
    let meta = " ip daddr != 169.254.0.0/16";
    let sets: Vec<(String, &str)> = [("ip", true, meta), ("ip6", false, "")]
        .into_iter()
        .filter_map(|(family, v4, meta)| {
            let nets: Vec<String> = sources
                .iter()
                .filter(|n| n.addr().is_ipv4() == v4)
                .map(ToString::to_string)
                .collect();
            (!nets.is_empty()).then(|| (format!("{family} saddr {{ {} }}", nets.join(", ")), meta))
        })
        .collect();
    // Forward: out of the TUN only from the sources (never to IPv4
    // link-local, i.e. cloud metadata), into it only replies; input: from
    // the TUN only echo requests (diagnostics), replies and ICMP errors for
    // the exit host's own traffic, and the host ports the operator opened.
    let ports = host_ports.iter().map(u16::to_string).collect::<Vec<_>>();
    let open = (!ports.is_empty()).then(|| {
        format!(
            "\t\tiifname \"{tun}\" meta l4proto {{ tcp, udp }} th dport {{ {} }} accept\n",
            ports.join(", ")
        )
    });
    let mut text = format!("{}table {TABLE} {{\n\tchain forward {{\n\t\ttype filter hook forward priority 0; policy accept;\n\t\toifname \"{tun}\" ct state established,related accept\n", teardown());
    for (set, meta) in &sets {
        text += &format!("\t\tiifname \"{tun}\" oifname != \"{tun}\" {set}{meta} accept\n");
    }
    text += &format!("\t\tiifname \"{tun}\" drop\n\t\toifname \"{tun}\" drop\n\t}}\n\tchain input {{\n\t\ttype filter hook input priority 0; policy accept;\n\t\tiifname \"{tun}\" icmp type echo-request accept\n\t\tiifname \"{tun}\" icmpv6 type echo-request accept\n{}\t\tiifname \"{tun}\" ct state != {{ established, related }} drop\n\t}}\n", open.unwrap_or_default());
    text += "\tchain postrouting {\n\t\ttype nat hook postrouting priority 100; policy accept;\n";
    // Only traffic leaving through another interface is rewritten: packets
    // routed back into the tunnel keep their tunnel source address.
    for (set, _) in &sets {
        text += &format!("\t\toifname != \"{tun}\" {set} masquerade\n");
    }
    Ok(text + "\t}\n}\n")
}

/// The text that removes the table whether or not it exists.
pub fn teardown() -> String {
    format!("table {TABLE}\ndelete table {TABLE}\n")
}

/// The signals privd takes as "stop", blocked in privd and its helper.
pub fn stop_signals() -> SigSet {
    SigSet::from_iter([Signal::SIGTERM, Signal::SIGINT])
}

/// Feeds `script` to `nft -f -` (at start, before the seccomp filter).
pub fn apply(script: &str) -> anyhow::Result<()> {
    Nft::start(script)?.run()
}

/// `nft -f -` with its script written to its stdin, which stays open: nft
/// runs the script when it closes. One of these outlives setup, the teardown
/// helper: started before the seccomp filter (which refuses fork and exec)
/// with privd's uid and CAP_NET_ADMIN only, already holding the teardown
/// script. Every fd privd has is close-on-exec, so nft holds nothing of
/// privd's but the pipe to its stdin; when that closes (privd exiting,
/// however it exits) nft deletes the table. So the running privd never needs
/// to exec anything, and the table goes with privd even when privd is killed.
pub struct Nft(Child, ChildStdin);

impl Nft {
    /// Starts nft. A fixed PATH and an empty environment, so the environment
    /// privd was started with cannot pick a different `nft`. privd must be
    /// single-threaded here.
    pub fn start(script: &str) -> anyhow::Result<Self> {
        let mut cmd = Command::new("nft");
        cmd.args(["-f", "-"])
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin");
        cmd.stdin(Stdio::piped()).stdout(Stdio::null());
        // std unblocks every signal in the child; the helper must outlive the
        // SIGTERM of `systemctl stop` (sent to the whole cgroup) and a Ctrl-C.
        // SAFETY: only pthread_sigmask runs between fork and exec.
        unsafe { cmd.pre_exec(|| Ok(stop_signals().thread_block()?)) };
        let mut child = cmd.spawn().context("cannot run nft")?;
        let mut stdin = child.stdin.take().context("nft's stdin")?;
        stdin
            .write_all(script.as_bytes())
            .context("writing to nft")?;
        Ok(Nft(child, stdin))
    }

    /// Lets nft run the script and waits, at most [`NFT_TIMEOUT`] (then kills
    /// it), for its verdict.
    pub fn run(self) -> anyhow::Result<()> {
        let Nft(mut child, stdin) = self;
        drop(stdin);
        let deadline = Instant::now() + NFT_TIMEOUT;
        while Instant::now() < deadline {
            match child.try_wait()? {
                Some(s) if s.success() => return Ok(()),
                Some(s) => bail!("nft failed: {s}"),
                None => std::thread::sleep(Duration::from_millis(20)),
            }
        }
        let _ = child.kill();
        let _ = child.wait();
        bail!("nft gave no answer within {NFT_TIMEOUT:?}")
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
pub fn enable_forwarding(need_v6: bool) -> anyhow::Result<bool> {
    let write = |path: &str| match std::fs::write(path, b"1\n") {
        Err(e) if e.raw_os_error() != Some(nix::libc::EROFS) => {
            Err(e).with_context(|| format!("cannot write {path}"))
        }
        _ => Ok(()),
    };
    write(IPV4_FORWARD)?;
    if need_v6 || std::path::Path::new(IPV6_FORWARD).exists() {
        write(IPV6_FORWARD)?;
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
        let sources = nets(&["10.99.0.0/24", "10.98.0.0/24", "fd99::/64"]);
        let text = ruleset("sapper0", &sources, &[22, 5001]);
        assert_eq!(
            text.unwrap(),
            "table inet sapper\n\
             delete table inet sapper\n\
             table inet sapper {\n\
             \tchain forward {\n\
             \t\ttype filter hook forward priority 0; policy accept;\n\
             \t\toifname \"sapper0\" ct state established,related accept\n\
             \t\tiifname \"sapper0\" oifname != \"sapper0\" ip saddr { 10.99.0.0/24, 10.98.0.0/24 } ip daddr != 169.254.0.0/16 accept\n\
             \t\tiifname \"sapper0\" oifname != \"sapper0\" ip6 saddr { fd99::/64 } accept\n\
             \t\tiifname \"sapper0\" drop\n\
             \t\toifname \"sapper0\" drop\n\
             \t}\n\
             \tchain input {\n\
             \t\ttype filter hook input priority 0; policy accept;\n\
             \t\tiifname \"sapper0\" icmp type echo-request accept\n\
             \t\tiifname \"sapper0\" icmpv6 type echo-request accept\n\
             \t\tiifname \"sapper0\" meta l4proto { tcp, udp } th dport { 22, 5001 } accept\n\
             \t\tiifname \"sapper0\" ct state != { established, related } drop\n\
             \t}\n\
             \tchain postrouting {\n\
             \t\ttype nat hook postrouting priority 100; policy accept;\n\
             \t\toifname != \"sapper0\" ip saddr { 10.99.0.0/24, 10.98.0.0/24 } masquerade\n\
             \t\toifname != \"sapper0\" ip6 saddr { fd99::/64 } masquerade\n\
             \t}\n\
             }\n"
        );
        let v4_only = ruleset("tun-1", &nets(&["10.0.0.0/8"]), &[]).unwrap();
        assert!(!v4_only.contains("ip6") && !v4_only.contains("dport"));
    }

    #[test]
    fn ruleset_refuses_bad_input() {
        for bad in ["", "a\"b", "x;y", "tun 0", "t\n", "t}"] {
            assert!(
                ruleset(bad, &nets(&["10.0.0.0/8"]), &[]).is_err(),
                "{bad:?}"
            );
        }
        assert!(ruleset("sapper0", &[], &[]).is_err());
    }
}
