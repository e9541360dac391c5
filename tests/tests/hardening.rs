//! Defence in depth inside netd, without systemd: the seccomp allow-list is
//! on in a working tunnel (`Seccomp: 2` in /proc), syscalls outside it fail,
//! and the log lines an auditor relies on carry their SAPPER_EVENT fields.
//! Needs root (network namespaces).

use sapper_tests::bins::bins;
use sapper_tests::cmd::{run_timeout, WAIT};
use sapper_tests::netns::{self, Netns};
use sapper_tests::topology::PRIVATE_HOST;
use sapper_tests::{Node, Options, Topology, Transport};
use std::process::Command;
use std::time::Duration;

fn sha256_hex(bytes: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, bytes)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Both netds of a QUIC tunnel run under the filter while ping and a TCP
/// transfer pass through the tunnel (the exit is the kernel exit here; the
/// userspace exit and roles suites exercise the rest under the same filter,
/// which is on by default).
#[test]
fn netd_runs_filtered_and_logs_audit_events() {
    let mut topo = Topology::start(Options::new(Transport::Quic));
    topo.wait_for_tunnel();
    let out = topo.ping(&topo.entry, PRIVATE_HOST, 3, 2);
    assert!(out.status.success(), "ping through the tunnel failed");
    topo.blast(Node::Entry, "private", PRIVATE_HOST, 1024 * 1024);

    for node in [Node::Entry, Node::Exit] {
        let pid = topo.netd(node).pid();
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        assert_eq!(comm.trim(), "sapper-netd", "pid {pid} is not netd itself");
        // Every thread: the filter (TSYNC), no_new_privs, and the rest of
        // what the privilege drop leaves.
        sapper_tests::privs::assert_privileges(
            pid,
            &sapper_tests::privs::Expected::netd(65534, sapper_tests::gid_of("nogroup")),
            &format!("{} netd", node.as_str()),
        );

        let log = topo.netd(node).stderr_text();
        let config = std::fs::read(topo.config_path(node)).expect("read config");
        let hash = sha256_hex(&config);
        assert!(
            log.contains("sapper_event=\"config_loaded\"")
                && log.contains(&format!("config_sha256={hash}")),
            "{} netd did not log config loaded with the file's SHA-256 {hash}:\n{log}",
            node.as_str()
        );
        for event in ["handshake_accepted", "peer_connected", "seccomp_installed"] {
            assert!(
                log.contains(&format!("sapper_event=\"{event}\"")),
                "{} netd did not log {event}:\n{log}",
                node.as_str()
            );
        }
        // Landlock as this kernel offers it: fully enforced wherever the
        // kernel has netd's ABI, and said so under its own event name.
        let (ll_event, ll_enforcement) = sapper_tests::privs::expected_landlock();
        assert!(
            log.lines().any(|l| l.contains(&format!("sapper_event=\"{ll_event}\""))
                && l.contains(&format!("enforcement=\"{ll_enforcement}\""))),
            "{} netd did not log {ll_event} with enforcement={ll_enforcement} (kernel Landlock ABI {}):\n{log}",
            node.as_str(),
            sapper_tests::privs::landlock_abi()
        );
        assert!(
            !log.contains(&topo.opts.entry_psk),
            "{} netd logged the PSK",
            node.as_str()
        );
    }
    topo.assert_daemons_alive();
}

/// Syscalls outside the allow-list fail with EPERM once the filter is on:
/// mounting, tracing, changing personality, starting a process, making
/// memory executable. With Landlock (allowing only the config file) even
/// root cannot read /etc/shadow or create a file.
#[test]
fn syscalls_and_files_outside_the_sandbox_fail() {
    let dir = std::env::temp_dir().join(format!("sapper-hardening-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let config = dir.join("netd.toml");
    std::fs::write(&config, "# only this file is readable\n").expect("write config");
    let mut cmd = Command::new(&bins().netd);
    cmd.arg("--sandbox-selftest").arg("--config").arg(&config);
    let out = run_timeout(&mut cmd, WAIT).expect("run netd --sandbox-selftest");
    let _ = std::fs::remove_dir_all(&dir);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "selftest failed: {text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let has = |line: &str| text.lines().any(|l| l.starts_with(line));
    for probe in [
        "mount",
        "ptrace",
        "personality",
        "fork",
        "netlink_socket",
        "mprotect_exec",
    ] {
        assert!(
            has(&format!("{probe}: EPERM")),
            "{probe} was not refused with EPERM:\n{text}"
        );
    }
    assert!(has("read_config: ok"), "{text}");
    // No skipping: the kernel says which Landlock it has, and the file
    // checks must then hold (reading and creating files are restricted from
    // ABI 1 on).
    let abi = sapper_tests::privs::landlock_abi();
    let (_, enforcement) = sapper_tests::privs::expected_landlock();
    let want = match enforcement {
        "full" => "landlock: fully enforced",
        "partial" => "landlock: partially enforced",
        _ => "landlock: not enforced",
    };
    assert!(
        has(want),
        "kernel Landlock ABI {abi}: want {want:?}:\n{text}"
    );
    if abi > 0 {
        assert!(has("read_shadow: EACCES"), "{text}");
        assert!(has("create_file: EACCES"), "{text}");
    }
}

/// A netd started by hand (no privd, no listener) as root dropping to
/// nobody, logging JSON lines; killed on drop.
struct HandNetd {
    child: std::process::Child,
    dir: std::path::PathBuf,
}

impl HandNetd {
    fn start(tag: &str, env: &[(&str, &str)]) -> HandNetd {
        HandNetd::start_in(tag, env, None)
    }

    /// As [`HandNetd::start`], inside `ns` when given (`ip netns exec`
    /// execs netd, so the child's pid is netd's).
    fn start_in(tag: &str, env: &[(&str, &str)], ns: Option<&Netns>) -> HandNetd {
        HandNetd::start_with(tag, env, ns, None, "")
    }

    /// As [`HandNetd::start_in`]; `psk_env` names the variable the PSK comes
    /// from instead of the file, and `netd_extra` is added to `[netd]`.
    fn start_with(
        tag: &str,
        env: &[(&str, &str)],
        ns: Option<&Netns>,
        psk_env: Option<&str>,
        netd_extra: &str,
    ) -> HandNetd {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("sapper-hand-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        // Owned by the user netd drops to, so that it can remove its socket
        // at exit, and writable by nobody else (netd refuses that).
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        std::os::unix::fs::chown(&dir, Some(65534), Some(sapper_tests::gid_of("nogroup")))
            .expect("chown");
        let psk = dir.join("psk");
        std::fs::write(&psk, "hardening-test-psk-0123456789abcdef\n").expect("psk");
        std::fs::set_permissions(&psk, std::fs::Permissions::from_mode(0o600)).expect("chmod psk");
        let config = dir.join("netd.toml");
        let psk_line = match psk_env {
            Some(var) => format!("psk_env = \"{var}\""),
            None => format!("psk_file = \"{}\"", psk.display()),
        };
        std::fs::write(
            &config,
            format!(
                "[node]\nname = \"hand\"\n{psk_line}\n\n[netd]\nuser = \"nobody\"\n\
                 group = \"nogroup\"\nstate_dir = \"{}\"\nmanagement_socket = \"{}\"\n{netd_extra}\n",
                dir.join("state").display(),
                dir.join("netd.sock").display()
            ),
        )
        .expect("config");
        let log = std::fs::File::create(dir.join("stderr")).expect("log");
        let mut cmd = match ns {
            Some(ns) => ns.cmd(&bins().netd),
            None => Command::new(&bins().netd),
        };
        let child = cmd
            .arg("--config")
            .arg(&config)
            .args(["--log-format", "json"])
            .envs(env.iter().copied())
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start netd");
        HandNetd { child, dir }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("stderr")).unwrap_or_default()
    }

    /// Its JSON log lines, once it is ready.
    fn ready_lines(&mut self) -> Vec<serde_json::Value> {
        let deadline = std::time::Instant::now() + WAIT;
        loop {
            let lines: Vec<serde_json::Value> = self
                .log()
                .lines()
                .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
                .collect();
            if lines.iter().any(|v| v["message"] == "netd ready") {
                return lines;
            }
            if let Ok(Some(s)) = self.child.try_wait() {
                panic!("netd exited ({s}):\n{}", self.log());
            }
            assert!(
                std::time::Instant::now() < deadline,
                "netd not ready:\n{}",
                self.log()
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }
}

impl Drop for HandNetd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn event<'a>(lines: &'a [serde_json::Value], name: &str) -> Option<&'a serde_json::Value> {
    lines.iter().find(|v| v["sapper_event"] == name)
}

/// Started by hand, netd logs JSON lines with the audit fields, filters
/// itself by default, and SAPPER_NO_SECCOMP=1 / SAPPER_NO_LANDLOCK=1 turn
/// the filters off (with a warning), for debugging.
#[test]
fn hand_started_netd_filters_itself_unless_told_not_to() {
    let mut on = HandNetd::start("on", &[]);
    let lines = on.ready_lines();
    let dropped = sapper_tests::privs::Expected::netd(65534, sapper_tests::gid_of("nogroup"));
    sapper_tests::privs::assert_privileges(on.child.id(), &dropped, "hand-started netd");
    let loaded = event(&lines, "config_loaded").expect("config_loaded event");
    let config = std::fs::read(on.dir.join("netd.toml")).expect("read config");
    assert_eq!(loaded["config_sha256"], sha256_hex(&config));
    assert!(event(&lines, "seccomp_installed").is_some(), "{}", on.log());
    let (ll_event, ll_enforcement) = sapper_tests::privs::expected_landlock();
    let ll = event(&lines, ll_event).unwrap_or_else(|| panic!("no {ll_event}: {}", on.log()));
    assert_eq!(ll["enforcement"], ll_enforcement, "{}", on.log());
    assert!(
        !on.log().contains("hardening-test-psk"),
        "the PSK was logged"
    );

    let mut off = HandNetd::start(
        "off",
        &[("SAPPER_NO_SECCOMP", "1"), ("SAPPER_NO_LANDLOCK", "1")],
    );
    let lines = off.ready_lines();
    // Only the filter is off: the privilege drop is not an escape hatch.
    let unfiltered = sapper_tests::privs::Expected {
        seccomp: 0,
        ..dropped
    };
    sapper_tests::privs::assert_privileges(off.child.id(), &unfiltered, "netd without seccomp");
    let disabled = event(&lines, "seccomp_disabled").expect("seccomp_disabled event");
    assert_eq!(disabled["level"], "WARN");
    assert!(
        event(&lines, "landlock_disabled").is_some(),
        "{}",
        off.log()
    );
    assert!(
        event(&lines, "seccomp_installed").is_none(),
        "{}",
        off.log()
    );
}

/// A netd run by hand as root (dropping to nobody) with `tail` appended to
/// its [netd] section, in `dir`; returns its stderr once it has exited.
fn netd_refuses(dir: &std::path::Path, psk_mode: u32, tail: &str) -> String {
    use std::os::unix::fs::PermissionsExt;
    let psk = dir.join("psk");
    std::fs::write(&psk, "hardening-test-psk-0123456789abcdef\n").expect("psk");
    std::fs::set_permissions(&psk, std::fs::Permissions::from_mode(psk_mode)).expect("chmod");
    let config = dir.join("netd.toml");
    std::fs::write(
        &config,
        format!(
            "[node]\nname = \"hand\"\npsk_file = \"{}\"\n\n[netd]\nuser = \"nobody\"\n\
             group = \"nogroup\"\nstate_dir = \"{}\"\n{tail}\n",
            psk.display(),
            dir.join("state").display(),
        ),
    )
    .expect("config");
    let out = sapper_tests::cmd::run_timeout(
        Command::new(&bins().netd).arg("--config").arg(&config),
        std::time::Duration::from_secs(60),
    )
    .expect("netd ran");
    assert!(!out.status.success(), "netd started anyway");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn scratch(tag: &str, mode: u32) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let dir = std::env::temp_dir().join(format!("sapper-refuse-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(mode)).expect("chmod");
    dir
}

/// A management socket in a directory anyone may write to is refused, with
/// the path named; the same netd in a 0755 root directory gets past it.
#[test]
fn world_writable_socket_directory_is_refused() {
    sapper_tests::require_root();
    let dir = scratch("sockdir", 0o777);
    let sock = dir.join("netd.sock");
    let err = netd_refuses(
        &dir,
        0o600,
        &format!("management_socket = \"{}\"", sock.display()),
    );
    assert!(
        err.contains(&format!("refusing to use a socket in {}", dir.display()))
            && err.contains("group or others write"),
        "{err}"
    );
    assert!(!sock.exists(), "nothing bound");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A PSK file that group or others may read is refused with the fix.
#[test]
fn group_readable_psk_file_is_refused() {
    sapper_tests::require_root();
    let dir = scratch("psk", 0o755);
    let sock = dir.join("netd.sock");
    let err = netd_refuses(
        &dir,
        0o640,
        &format!("management_socket = \"{}\"", sock.display()),
    );
    let psk = dir.join("psk");
    assert!(
        err.contains("readable by group or others")
            && err.contains(&format!("chmod 600 {}", psk.display())),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Something answering at the privd socket path as an ordinary uid (4242)
/// does not get to hand netd a TUN: netd checks SO_PEERCRED and exits.
#[test]
fn fake_privd_with_the_wrong_uid_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    sapper_tests::require_root();
    let dir = scratch("fakeprivd", 0o755);
    let fake = dir.join("fake");
    std::fs::create_dir_all(&fake).expect("mkdir");
    std::os::unix::fs::chown(&fake, Some(4242), Some(4242)).expect("chown");
    let path = fake.join("privd.sock");
    // listen(2) records the calling thread's credentials; a thread of our
    // own that switched (only itself, by the raw syscall) to uid 4242.
    let p = path.clone();
    let listener = std::thread::spawn(move || {
        // SAFETY: setresuid/setresgid via syscall(2) change only this
        // thread's credentials; the thread ends right after.
        unsafe {
            assert_eq!(libc::syscall(libc::SYS_setresgid, 4242, 4242, 4242), 0);
            assert_eq!(libc::syscall(libc::SYS_setresuid, 4242, 4242, 4242), 0);
        }
        std::os::unix::net::UnixListener::bind(&p).expect("bind as 4242")
    })
    .join()
    .expect("listener thread");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o777)).expect("chmod");
    let sock = dir.join("netd.sock");
    let err = netd_refuses(
        &dir,
        0o600,
        &format!(
            "management_socket = \"{}\"\nprivd_socket = \"{}\"",
            sock.display(),
            path.display()
        ),
    );
    assert!(
        err.contains(&format!("refusing the privd socket {}", path.display()))
            && err.contains("served by uid 4242"),
        "{err}"
    );
    drop(listener);
    let _ = std::fs::remove_dir_all(&dir);
}

/// netd's own credentials, taken from the live process (its uid, gid,
/// groups, capability sets and no_new_privs, in its network namespace),
/// cannot create a TUN or change a route: that is privd's job. Were netd
/// to keep root or a capability, the same commands would succeed here.
#[test]
fn netd_credentials_cannot_create_a_tun_or_change_a_route() {
    sapper_tests::require_env();
    // netd alone (no privd, which would refuse a netd that kept root and so
    // end the test before it looked), in a namespace of its own.
    let ns = Netns::create(netns::name_for('C', netns::next_id()));
    let mut hand = HandNetd::start_in("creds", &[], Some(&ns));
    hand.ready_lines();
    let pid = hand.child.id();
    let wrap = sapper_tests::privs::as_process(pid);
    let run = |args: &[&str]| {
        let mut cmd = Command::new(&wrap[0]);
        cmd.args(&wrap[1..]).args(args);
        run_timeout(&mut cmd, Duration::from_secs(10)).expect("run as netd")
    };
    // The wrapper really reproduces netd's credentials.
    let own = run(&["cat", "/proc/self/status"]);
    assert!(
        own.status.success(),
        "{}",
        String::from_utf8_lossy(&own.stderr)
    );
    let child = sapper_tests::privs::TaskPrivs::parse(&String::from_utf8_lossy(&own.stdout))
        .expect("parse the wrapped command's status");
    let netd = sapper_tests::privs::tasks(pid).swap_remove(0).1;
    assert_eq!(
        (
            child.uids,
            child.gids,
            &child.groups,
            child.cap_amb,
            child.cap_bnd
        ),
        (
            netd.uids,
            netd.gids,
            &netd.groups,
            netd.cap_eff,
            netd.cap_bnd
        ),
        "the command does not run with netd's credentials"
    );

    let tun = run(&["ip", "tuntap", "add", "dev", "nope0", "mode", "tun"]);
    let err = String::from_utf8_lossy(&tun.stderr);
    assert!(
        !tun.status.success(),
        "netd's credentials created a TUN: {err}"
    );
    // EACCES where /dev/net/tun is not world-writable, else EPERM from
    // TUNSETIFF without CAP_NET_ADMIN.
    assert!(
        err.contains("Operation not permitted") || err.contains("Permission denied"),
        "{err}"
    );
    let route = run(&["ip", "route", "add", "10.1.2.0/24", "dev", "lo"]);
    let err = String::from_utf8_lossy(&route.stderr);
    assert!(
        !route.status.success(),
        "netd's credentials added a route: {err}"
    );
    assert!(err.contains("Operation not permitted"), "{err}");
    assert!(
        hand.child.try_wait().ok().flatten().is_none(),
        "netd exited:\n{}",
        hand.log()
    );
}

/// A management request frame (status) as sapperctl sends it.
fn status_request() -> Vec<u8> {
    use sapper_shared::proto::management::{request::Body, Request, StatusRequest};
    sapper_shared::framing::encode(&Request {
        id: 1,
        body: Some(Body::Status(StatusRequest {})),
    })
}

/// Whether `s` delivers at least one byte within `wait` (`Some(0)`: EOF).
fn read_within(s: &mut std::os::unix::net::UnixStream, wait: Duration) -> Option<usize> {
    use std::io::Read;
    s.set_read_timeout(Some(wait)).expect("read timeout");
    let mut b = [0u8; 512];
    match s.read(&mut b) {
        Ok(n) => Some(n),
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) =>
        {
            None
        }
        Err(e) => panic!("management read: {e}"),
    }
}

/// The management socket serves 32 connections at once: with 32 idle
/// clients holding every slot, a 33rd is not answered; the read deadline
/// (`netd.management_read_timeout_ms`, 5 s here) closes the idle ones, and
/// then the 33rd gets its answer.
#[test]
fn management_connection_cap_and_read_deadline() {
    use std::io::Write;
    use std::os::unix::net::UnixStream;
    sapper_tests::require_root();
    let mut hand = HandNetd::start_with(
        "mgmtcap",
        &[],
        None,
        None,
        "management_read_timeout_ms = 5000",
    );
    hand.ready_lines();
    let sock = hand.dir.join("netd.sock");
    // A served connection answers: the socket works at all.
    let mut probe = UnixStream::connect(&sock).expect("connect");
    probe.write_all(&status_request()).expect("send");
    assert!(
        read_within(&mut probe, Duration::from_secs(10)).is_some_and(|n| n > 0),
        "no answer to a lone status request"
    );
    drop(probe);
    std::thread::sleep(Duration::from_millis(200));
    let idle: Vec<UnixStream> = (0..32)
        .map(|_| UnixStream::connect(&sock).expect("connect idle"))
        .collect();
    let started = std::time::Instant::now();
    let mut extra = UnixStream::connect(&sock).expect("connect 33rd (backlog)");
    extra.write_all(&status_request()).expect("send");
    let early = read_within(&mut extra, Duration::from_millis(1500));
    assert!(
        started.elapsed() < Duration::from_millis(4500),
        "the machine is too slow for this check"
    );
    assert_eq!(
        early, None,
        "a 33rd connection was served while 32 held every slot"
    );
    // Every idle client is hung up on by the deadline (liveness bound 20 s).
    for (i, mut s) in idle.into_iter().enumerate() {
        assert_eq!(
            read_within(&mut s, Duration::from_secs(20)),
            Some(0),
            "idle connection {i} was not closed by the read deadline"
        );
    }
    assert!(
        read_within(&mut extra, Duration::from_secs(20)).is_some_and(|n| n > 0),
        "the waiting client was not served once slots were free"
    );
}

/// With the PSK in `node.psk_env`, the value is gone from
/// /proc/PID/environ once netd runs; netd is not dumpable, so its /proc
/// files belong to root although it runs as nobody; and RLIMIT_CORE is 0
/// (soft and hard).
#[test]
fn psk_env_scrubbed_and_netd_not_dumpable() {
    use std::os::unix::fs::MetadataExt;
    sapper_tests::require_root();
    const SECRET: &str = "env-psk-value-0123456789abcdef";
    let mut hand = HandNetd::start_with(
        "pskenv",
        &[("SAPPER_TEST_PSK", SECRET)],
        None,
        Some("SAPPER_TEST_PSK"),
        "",
    );
    hand.ready_lines();
    let pid = hand.child.id();
    let environ = std::fs::read(format!("/proc/{pid}/environ")).expect("environ");
    let environ = String::from_utf8_lossy(&environ);
    assert!(
        !environ.contains(SECRET),
        "the PSK is still in /proc/{pid}/environ"
    );
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    let uid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|u| u.split_whitespace().next())
        .expect("Uid line");
    assert_eq!(uid, "65534", "netd runs as nobody");
    // A dumpable process's /proc files are owned by its own uid.
    let owner = std::fs::metadata(format!("/proc/{pid}/status"))
        .expect("stat")
        .uid();
    assert_eq!(
        owner, 0,
        "netd is dumpable (its /proc files belong to uid {owner})"
    );
    // And no core file, not even by raising the soft limit: hard limit 0.
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).expect("limits");
    let core: Vec<&str> = limits
        .lines()
        .find_map(|l| l.strip_prefix("Max core file size"))
        .expect("core limit line")
        .split_whitespace()
        .collect();
    assert_eq!(&core[..2], ["0", "0"], "RLIMIT_CORE of netd: {core:?}");
}

/// `handshake_timeout_ms` outside 100..=60000 stops netd at start with the
/// file, the key and the range.
#[test]
fn handshake_timeout_out_of_range_is_refused() {
    sapper_tests::require_root();
    let dir = scratch("hstimeout", 0o755);
    for v in ["99", "60001"] {
        let err = netd_refuses(&dir, 0o600, &format!("handshake_timeout_ms = {v}"));
        let config = dir.join("netd.toml");
        assert!(
            err.contains(&format!(
                "{}: netd.handshake_timeout_ms: must be 100..=60000 (milliseconds)",
                config.display()
            )),
            "{err}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
