//! End-to-end tests of the userspace exit: the exit namespace runs
//! `sapper-netd` alone — no privd, no TUN, started directly as `nobody`
//! (never root, no capability) — and realises the entry's traffic with its
//! own sockets. The entry is the usual privd + netd with a TUN. Needs root
//! (namespaces) and `setpriv` (util-linux).
//!
//! ```text
//!   E (entry, privd+netd)        X (exit: netd as nobody)     P (private)
//!   sap0 10.99.0.1 fd99::1
//!   routes 10.20.0.0/24, fd20::/64, 169.254.77.0/24 → sap0
//!   ve-x 10.10.0.1 ───────────── vx-e 10.10.0.2
//!                                vx-p 10.20.0.1 fd20::1 ───── vp-x 10.20.0.2 fd20::2
//! ```

use sapper_tests::bins::{bins, tool};
use sapper_tests::cmd::{run_ok, run_timeout, wait_until, WAIT};
use sapper_tests::topology::PRIVATE_HOST;
use sapper_tests::{Node, Options, Topology, Transport};
use serde_json::Value;
use std::fmt::Write as _;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const NOBODY: u32 = 65534;
const PRIVATE_V6: &str = "fd20::2";
/// Bytes of the checksummed TCP transfer.
const TRANSFER_BYTES: u64 = 6 * 1024 * 1024 + 77;

use sapper_tests::gid_of;

fn random_hex(n: usize) -> String {
    let mut buf = vec![0u8; n];
    let mut f = fs::File::open("/dev/urandom").expect("open /dev/urandom");
    std::io::Read::read_exact(&mut f, &mut buf).expect("read /dev/urandom");
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

/// One ping from namespace `ns`, waiting at most a second.
fn ping(ns: &str, target: &str) -> bool {
    let mut cmd = Command::new("ip");
    cmd.args([
        "netns", "exec", ns, "ping", "-n", "-c", "1", "-W", "1", target,
    ]);
    run_timeout(&mut cmd, Duration::from_secs(10)).is_ok_and(|o| o.status.success())
}

fn show(out: &Output) -> String {
    format!(
        "status {}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn chown(path: &Path, uid: u32, gid: u32) {
    std::os::unix::fs::chown(path, Some(uid), Some(gid))
        .unwrap_or_else(|e| panic!("chown {}: {e}", path.display()));
}

fn write(path: &Path, text: &str, mode: u32) {
    fs::write(path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("chmod {}: {e}", path.display()));
}

/// `setpriv` arguments that make the rest of the command run as nobody
/// with no groups and no capabilities.
fn as_nobody() -> Vec<String> {
    let gid = gid_of("nogroup");
    [
        "--reuid",
        &NOBODY.to_string(),
        "--regid",
        &gid.to_string(),
        "--clear-groups",
        "--inh-caps=-all",
        "--bounding-set=-all",
        "--",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// A server started in the private namespace; killed on drop.
struct Server {
    child: Child,
    what: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The test network with the userspace exit.
struct Ux {
    topo: Topology,
    servers: Vec<Server>,
    /// `[privd.tun] offload = true` on the entry.
    entry_offload: bool,
}

impl Ux {
    /// Builds the network, configures and starts the exit netd (as nobody,
    /// with `exit_lines` added to its `[netd.exit]`) and the entry's privd
    /// and netd, and waits until they list each other.
    fn start(t: Transport, exit_lines: &[&str], ping_sockets: bool) -> Ux {
        Self::start_with(t, exit_lines, ping_sockets, false)
    }

    /// [`Ux::start`], with the entry's TUN offloads on when `entry_offload`.
    fn start_with(
        t: Transport,
        exit_lines: &[&str],
        ping_sockets: bool,
        entry_offload: bool,
    ) -> Ux {
        let opts = Options {
            start_daemons: false,
            ..Options::new(t)
        };
        let mut topo = Topology::start(opts);
        topo.bins = Some(bins());
        let (x, p) = (&topo.exit, &topo.private);
        x.ip(&["addr", "add", "fd20::1/64", "dev", "vx-p", "nodad"]);
        p.ip(&["addr", "add", "fd20::2/64", "dev", "vp-x", "nodad"]);
        if ping_sockets {
            let out = run_timeout(
                x.cmd("sysctl")
                    .args(["-w", "net.ipv4.ping_group_range=0 2147483647"]),
                Duration::from_secs(10),
            )
            .unwrap_or_else(|e| panic!("{e}"));
            assert!(out.status.success(), "sysctl: {}", show(&out));
        }
        let mut ux = Ux {
            topo,
            servers: Vec::new(),
            entry_offload,
        };
        ux.write_configs(t, exit_lines);
        ux.start_daemons();
        ux.topo.wait_for_peers();
        ux
    }

    fn port(t: Transport) -> u16 {
        match t {
            Transport::Quic => 4433,
            Transport::Ws => 8443,
        }
    }

    fn write_configs(&mut self, t: Transport, exit_lines: &[&str]) {
        let gid = gid_of("nogroup");
        let psk = random_hex(24);
        let port = Self::port(t);
        let ws = if t == Transport::Ws {
            "ws_path = \"/sapper\"\n"
        } else {
            ""
        };

        // The exit: netd only, everything owned by nobody.
        let xd = self.topo.node_dir(Node::Exit);
        fs::create_dir_all(xd.join("state")).expect("create exit dir");
        fs::set_permissions(&xd, fs::Permissions::from_mode(0o755)).expect("chmod");
        fs::set_permissions(xd.join("state"), fs::Permissions::from_mode(0o700)).expect("chmod");
        chown(&xd, NOBODY, gid);
        chown(&xd.join("state"), NOBODY, gid);
        write(&xd.join("psk"), &format!("{psk}\n"), 0o600);
        chown(&xd.join("psk"), NOBODY, gid);
        let p = |d: &Path, n: &str| d.join(n).display().to_string();
        let mut s = String::new();
        let _ = writeln!(s, "[node]\nname = \"exit\"\nrole = \"exit\"");
        let _ = writeln!(s, "psk_file = \"{}\"\n", p(&xd, "psk"));
        let _ = writeln!(s, "[netd]");
        let _ = writeln!(s, "state_dir = \"{}\"", p(&xd, "state"));
        let _ = writeln!(s, "management_socket = \"{}\"", p(&xd, "netd.sock"));
        let _ = writeln!(s, "ping_interval_ms = 200");
        let _ = writeln!(s, "announce_routes = [\"10.20.0.0/24\", \"fd20::/64\"]\n");
        let _ = writeln!(s, "[[netd.listen]]\ntransport = \"{}\"", t.as_str());
        let _ = writeln!(s, "address = \"0.0.0.0:{port}\"\n{ws}");
        let _ = writeln!(s, "[netd.exit]");
        for l in exit_lines {
            let _ = writeln!(s, "{l}");
        }
        write(&self.topo.config_path(Node::Exit), &s, 0o644);

        let mut fp = Command::new("setpriv");
        fp.args(as_nobody())
            .arg(&bins().netd)
            .arg("--config")
            .arg(self.topo.config_path(Node::Exit))
            .arg("--print-fingerprint");
        let fp = run_ok(&mut fp, Duration::from_secs(30)).unwrap_or_else(|e| panic!("{e}"));
        let fp = fp
            .lines()
            .map(str::trim)
            .rfind(|l| !l.is_empty())
            .expect("a fingerprint")
            .to_string();

        // The entry: the usual privd + netd, routing the private networks
        // and a link-local prefix into the TUN.
        let ed = self.topo.node_dir(Node::Entry);
        fs::create_dir_all(ed.join("state")).expect("create entry dir");
        fs::set_permissions(&ed, fs::Permissions::from_mode(0o755)).expect("chmod");
        fs::set_permissions(ed.join("state"), fs::Permissions::from_mode(0o700)).expect("chmod");
        write(&ed.join("psk"), &format!("{psk}\n"), 0o600);
        let mut s = String::new();
        let _ = writeln!(s, "[node]\nname = \"entry\"\nrole = \"entry\"");
        let _ = writeln!(s, "psk_file = \"{}\"\n", p(&ed, "psk"));
        let _ = writeln!(s, "[netd]\nuser = \"nobody\"\ngroup = \"nogroup\"");
        let _ = writeln!(s, "state_dir = \"{}\"", p(&ed, "state"));
        let _ = writeln!(s, "management_socket = \"{}\"", p(&ed, "netd.sock"));
        let _ = writeln!(s, "privd_socket = \"{}\"", p(&ed, "privd.sock"));
        let _ = writeln!(s, "ping_interval_ms = 200");
        let _ = writeln!(s, "reconnect_min_ms = 100\nreconnect_max_ms = 1000\n");
        let _ = writeln!(s, "[[netd.connect]]\ntransport = \"{}\"", t.as_str());
        let _ = writeln!(s, "address = \"10.10.0.2:{port}\"\nserver_name = \"exit\"");
        let _ = writeln!(s, "fingerprint = \"{fp}\"\n{ws}");
        let _ = writeln!(s, "[privd]\nsocket = \"{}\"", p(&ed, "privd.sock"));
        let _ = writeln!(s, "socket_group = \"nogroup\"\nnetd_user = \"nobody\"\n");
        let _ = writeln!(s, "[privd.tun]\nname = \"sap0\"");
        let _ = writeln!(
            s,
            "addresses = [\"10.99.0.1/24\", \"fd99::1/64\"]\nmtu = 1280"
        );
        let _ = writeln!(s, "offload = {}", self.entry_offload);
        let _ = writeln!(
            s,
            "routes = [\"10.20.0.0/24\", \"fd20::/64\", \"169.254.77.0/24\"]"
        );
        let _ = writeln!(
            s,
            "allowed_routes = [\"10.0.0.0/8\", \"fd00::/8\", \"169.254.0.0/16\"]"
        );
        write(&self.topo.config_path(Node::Entry), &s, 0o644);
    }

    fn start_daemons(&mut self) {
        let b = bins();
        let xcfg = self.topo.config_path(Node::Exit);
        let mut args: Vec<std::ffi::OsString> = as_nobody().into_iter().map(Into::into).collect();
        args.push(b.netd.clone().into());
        args.push("--config".into());
        args.push(xcfg.into());
        let refs: Vec<&std::ffi::OsStr> = args.iter().map(|a| a.as_os_str()).collect();
        self.topo
            .spawn("exit-netd", Node::Exit, Path::new("setpriv"), &refs);
        let sock = self.topo.mgmt_socket(Node::Exit);
        self.topo.wait_for("exit netd management socket", WAIT, || {
            sock.exists().then_some(())
        });

        let ecfg = self.topo.config_path(Node::Entry);
        let cfg_args = ["--config".as_ref(), ecfg.as_os_str()];
        self.topo
            .spawn("entry-privd", Node::Entry, &b.privd, &cfg_args);
        let psock = self.topo.privd_socket(Node::Entry);
        self.topo
            .wait_for("entry privd socket", WAIT, || psock.exists().then_some(()));
        self.topo
            .spawn("entry-netd", Node::Entry, &b.netd, &cfg_args);
        let sock = self.topo.mgmt_socket(Node::Entry);
        self.topo
            .wait_for("entry netd management socket", WAIT, || {
                sock.exists().then_some(())
            });
    }

    /// Starts `sapper-probe MODE ADDR` in P and waits until it listens.
    fn serve(&mut self, mode: &str, addr: &str) {
        let out = self
            .topo
            .dir
            .join(format!("server-{}.out", self.servers.len()));
        let file = fs::File::create(&out).expect("create server log");
        let mut cmd = self.topo.private.cmd(tool("sapper-probe"));
        cmd.args([mode, addr, "--timeout", "300"])
            .stdin(Stdio::null())
            .stdout(Stdio::from(file))
            .stderr(Stdio::null());
        let child = cmd.spawn().unwrap_or_else(|e| panic!("start {mode}: {e}"));
        self.servers.push(Server {
            child,
            what: format!("{mode} {addr}"),
        });
        let what = format!("{mode} on {addr} to listen");
        self.topo.wait_for(&what, WAIT, || {
            fs::read_to_string(&out)
                .ok()
                .filter(|s| s.contains("listening"))
                .map(|_| ())
        });
    }

    /// Runs `sapper-probe ARGS` in the entry namespace.
    fn probe(&self, args: &[&str], limit: Duration) -> Output {
        let mut cmd = self.topo.entry.cmd(tool("sapper-probe"));
        cmd.args(args);
        run_timeout(&mut cmd, limit).unwrap_or_else(|e| panic!("{e}"))
    }

    /// `sapper-probe tcp-connect ADDR`: (result, milliseconds).
    fn connect(&self, addr: &str) -> (String, u64) {
        let out = self.probe(
            &["tcp-connect", addr, "--timeout", "15"],
            Duration::from_secs(30),
        );
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let field = |k: &str| {
            text.split_whitespace()
                .find_map(|f| f.strip_prefix(k))
                .map(str::to_string)
                .unwrap_or_else(|| panic!("no {k} in tcp-connect output: {}", show(&out)))
        };
        (field("result="), field("ms=").parse().unwrap_or(u64::MAX))
    }

    /// The exit's `sapperctl status --json` `exit` object.
    fn exit_stats(&self) -> Value {
        let s = self
            .topo
            .ctl_json(Node::Exit, &["status"])
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(s["exit_mode"], "userspace", "exit status: {s}");
        s["exit"].clone()
    }

    fn stat(&self, key: &str) -> u64 {
        let x = self.exit_stats();
        x[key]
            .as_u64()
            .unwrap_or_else(|| panic!("no {key} in the exit's status: {x}"))
    }

    /// Starts the "earlier flow": 256 KiB echoed over 8 s from the entry to
    /// `addr`, and waits until it is connected; returns its output file.
    fn start_slow_flow(&mut self, addr: &str) -> PathBuf {
        let out_path = self
            .topo
            .dir
            .join(format!("slow-{}.out", self.servers.len()));
        let file = fs::File::create(&out_path).expect("create the slow flow's output");
        let mut slow = self.topo.entry.cmd(tool("sapper-probe"));
        slow.args(["tcp-slow", addr, "262144", "8", "--timeout", "60"])
            .stdin(Stdio::null())
            .stdout(Stdio::from(file))
            .stderr(Stdio::null());
        let child = slow.spawn().expect("start tcp-slow");
        self.servers.push(Server {
            child,
            what: "tcp-slow (entry)".into(),
        });
        let watch = out_path.clone();
        self.topo.wait_for("the slow flow to connect", WAIT, || {
            fs::read_to_string(&watch)
                .ok()
                .filter(|s| s.contains("connected"))
                .map(|_| ())
        });
        out_path
    }

    /// Waits for the flow of [`Ux::start_slow_flow`] to end and asserts
    /// that every byte came back.
    fn finish_slow_flow(&mut self, out_path: &Path) {
        let watch = out_path.to_path_buf();
        self.topo
            .wait_for("the slow flow to finish", Duration::from_secs(45), || {
                fs::read_to_string(&watch)
                    .ok()
                    .filter(|s| s.contains("ok bytes=") || s.contains("error"))
            });
        let text = fs::read_to_string(out_path).unwrap_or_default();
        assert!(
            text.contains("ok bytes=262144"),
            "the earlier flow broke: {text}"
        );
    }

    /// Once every TCP flow is gone, a new connection to `addr` is admitted
    /// again: a limit refuses new flows only while it is reached.
    fn assert_room_again(&self, addr: &str) {
        let r = wait_until(
            "the exit's TCP flows to close",
            Duration::from_secs(30),
            || (self.stat("tcp_flows") == 0).then_some(()),
        );
        r.unwrap_or_else(|e| panic!("{e}; exit: {}", self.exit_stats()));
        let (r, _) = self.connect(addr);
        assert_eq!(r, "connected", "no room again once the flows closed");
    }

    fn wait_for_ping(&mut self, target: &str) {
        let ns = self.topo.entry.name().to_string();
        let target = target.to_string();
        self.topo
            .wait_for(&format!("a ping from E to {target}"), WAIT, || {
                ping(&ns, &target).then_some(())
            });
    }
}

impl Drop for Ux {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for s in &self.servers {
                eprintln!("(server: {})", s.what);
            }
        }
        // Servers first (Vec drop), then the topology (fields drop in order).
        self.servers.clear();
    }
}

/// The exit's netd runs as nobody with no capability, and nothing else
/// runs in its namespace.
fn assert_exit_unprivileged(ux: &Ux) {
    let pid = ux.topo.netd(Node::Exit).pid();
    // Started by setpriv as nobody with no groups and an empty bounding set;
    // netd itself adds no_new_privs and its seccomp filter.
    let want = sapper_tests::privs::Expected {
        groups: Vec::new(),
        ..sapper_tests::privs::Expected::netd(NOBODY, gid_of("nogroup"))
    };
    sapper_tests::privs::assert_privileges(pid, &want, "userspace-exit netd");
    let pids = ux.topo.exit.pids();
    assert_eq!(
        pids,
        vec![pid as i32],
        "only netd runs in the exit namespace (no privd)"
    );
    assert!(
        !ux.topo.privd_socket(Node::Exit).exists(),
        "the exit has no privd socket"
    );
}

/// Ping (v4, v6), a checksummed TCP transfer, TCP over IPv6, UDP both
/// families, a closed port, denied destinations, and what sapperctl says.
fn traffic(t: Transport) {
    let mut ux = Ux::start(t, &["deny = [\"tcp 10.20.0.2 port 5999\"]"], true);
    ux.wait_for_ping(PRIVATE_HOST);
    assert_exit_unprivileged(&ux);

    let out = ux.topo.ping(&ux.topo.entry, PRIVATE_HOST, 3, 2);
    assert!(out.status.success(), "ping {PRIVATE_HOST}: {}", show(&out));
    ux.wait_for_ping(PRIVATE_V6);
    let out = ux.topo.ping(&ux.topo.entry, PRIVATE_V6, 3, 2);
    assert!(out.status.success(), "ping {PRIVATE_V6}: {}", show(&out));

    let (sent, received) = ux
        .topo
        .blast(Node::Entry, "private", PRIVATE_HOST, TRANSFER_BYTES);
    assert_eq!(sent.bytes, TRANSFER_BYTES, "sender did not send everything");
    assert_eq!(sent, received, "data through the userspace exit differs");

    ux.serve("tcp-echo-serve", "[fd20::2]:7001");
    ux.serve("udp-echo-serve", "10.20.0.2:7002");
    ux.serve("udp-echo-serve", "[fd20::2]:7002");
    ux.serve("tcp-echo-serve", "10.20.0.2:5999");

    let out = ux.probe(
        &[
            "tcp-conns",
            "[fd20::2]:7001",
            "4",
            "300000",
            "--timeout",
            "60",
        ],
        Duration::from_secs(90),
    );
    assert!(out.status.success(), "TCP over IPv6: {}", show(&out));
    for addr in ["10.20.0.2:7002", "[fd20::2]:7002"] {
        let out = ux.probe(
            &["udp-ping", addr, "20", "--timeout", "60"],
            Duration::from_secs(90),
        );
        assert!(out.status.success(), "UDP to {addr}: {}", show(&out));
    }

    // Nothing listens on 6000: refused (a RST), not left to time out. How
    // long each answer took is printed, not judged: speed belongs in the
    // benchmarks.
    let (r, ms) = ux.connect("10.20.0.2:6000");
    assert_eq!(r, "refused", "closed port");
    eprintln!("closed port refused after {ms} ms");
    // 5999 has a server, but a deny rule covers it; 169.254.77.1 is
    // link-local, denied by default.
    for addr in ["10.20.0.2:5999", "169.254.77.1:80"] {
        let (r, ms) = ux.connect(addr);
        assert_eq!(r, "refused", "denied destination {addr}");
        eprintln!("denied {addr} refused after {ms} ms");
    }

    // Nobody at 10.20.0.99: the exit's connect fails (no ARP answer) and the
    // entry gets an ICMP host unreachable, not a silent timeout.
    let (r, ms) = ux.connect("10.20.0.99:80");
    assert_eq!(r, "unreachable", "host without a machine behind it");
    eprintln!("unreachable host reported after {ms} ms");

    let x = ux.exit_stats();
    let n = |k: &str| {
        x[k].as_u64()
            .unwrap_or_else(|| panic!("no {k} in the exit's status: {x}"))
    };
    assert!(n("connect_failed") >= 1, "{x}");
    assert!(n("tcp_flows_total") >= 6, "{x}");
    assert!(n("udp_flows_total") >= 2, "{x}");
    assert!(n("icmp_flows_total") >= 2, "{x}");
    assert!(n("connect_refused") >= 1, "{x}");
    assert_eq!(n("denied_flows"), 2, "{x}");
    assert_eq!(n("refused_limit"), 0, "{x}");
    assert!(n("max_buffer_bytes") > 0, "{x}");
    let log = ux.topo.netd(Node::Exit).stderr_text();
    assert!(
        log.contains("egress denied") && log.contains("169.254.77.1"),
        "denials are logged: {log}"
    );

    // The entry sees a TUN-less userspace exit; the exit shows the entry's
    // flows.
    let peers = ux.topo.peers(Node::Entry).unwrap_or_else(|e| panic!("{e}"));
    let exit = peers
        .iter()
        .find(|p| p["name"] == "exit")
        .unwrap_or_else(|| panic!("no exit peer: {peers:?}"));
    assert_eq!(exit["capabilities"]["tun_capable"], false, "{exit}");
    assert_eq!(exit["role"], "exit", "{exit}");
    assert_eq!(exit["exit_mode"], "userspace", "{exit}");
    let peers = ux.topo.peers(Node::Exit).unwrap_or_else(|e| panic!("{e}"));
    let entry = peers
        .iter()
        .find(|p| p["name"] == "entry")
        .unwrap_or_else(|| panic!("no entry peer: {peers:?}"));
    assert!(entry["exit_flows"].is_object(), "{entry}");
    for (node, what, needle) in [
        (Node::Exit, "status", "exit:        userspace"),
        (Node::Exit, "peers", "EXIT FLOWS"),
        (Node::Entry, "peers", "exit (userspace)"),
    ] {
        let out = ux.topo.ctl(node, &[what]);
        assert!(out.status.success(), "sapperctl {what}: {}", show(&out));
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains(needle),
            "sapperctl {what} on {node:?}: {text}"
        );
    }
    assert_exit_unprivileged(&ux);
    ux.topo.assert_daemons_alive();
}

mod traffic {
    #[test]
    fn quic() {
        super::traffic(sapper_tests::Transport::Quic);
    }
    #[test]
    fn ws() {
        super::traffic(sapper_tests::Transport::Ws);
    }
}

/// The entry's TUN with offloads (issue 14): its kernel hands netd
/// super-packets, which reach the userspace exit cut (over QUIC by the
/// entry, over WebSocket whole and cut by the exit before smoltcp), and the
/// exit's answers are joined for the entry's TUN. Checksummed TCP over IPv4
/// and IPv6, UDP echoes over both; nothing refused.
fn offload_traffic(t: Transport) {
    let mut ux = Ux::start_with(t, &[], true, true);
    ux.wait_for_ping(PRIVATE_HOST);
    ux.wait_for_ping(PRIVATE_V6);
    let peer_out = |ux: &Ux| {
        let peers = ux.topo.peers(Node::Entry).unwrap_or_else(|e| panic!("{e}"));
        let p = peers
            .iter()
            .find(|p| p["name"] == "exit")
            .unwrap_or_else(|| panic!("no exit peer: {peers:?}"));
        (
            p["bytes_out"].as_u64().unwrap_or(0),
            p["packets_out"].as_u64().unwrap_or(0),
        )
    };
    let before = peer_out(&ux);
    for addr in [PRIVATE_HOST, "[fd20::2]"] {
        let (sent, received) = ux.topo.blast(Node::Entry, "private", addr, TRANSFER_BYTES);
        assert_eq!(sent.bytes, TRANSFER_BYTES, "{addr}: not all sent");
        assert_eq!(
            sent, received,
            "{addr}: data through the userspace exit differs"
        );
    }
    let after = peer_out(&ux);
    let avg = (after.0 - before.0) / (after.1 - before.1).max(1);
    eprintln!("{} B per packet to the exit", avg);
    match t {
        Transport::Quic => assert!(avg <= 1280, "{avg} B per datagram"),
        Transport::Ws => assert!(avg > 1280, "super-packets not sent whole ({avg} B)"),
    }
    ux.serve("tcp-echo-serve", "[fd20::2]:7001");
    ux.serve("udp-echo-serve", "10.20.0.2:7002");
    ux.serve("udp-echo-serve", "[fd20::2]:7002");
    let out = ux.probe(
        &[
            "tcp-conns",
            "[fd20::2]:7001",
            "4",
            "300000",
            "--timeout",
            "60",
        ],
        Duration::from_secs(90),
    );
    assert!(out.status.success(), "TCP echo over IPv6: {}", show(&out));
    for addr in ["10.20.0.2:7002", "[fd20::2]:7002"] {
        let out = ux.probe(
            &["udp-ping", addr, "20", "--timeout", "60"],
            Duration::from_secs(90),
        );
        assert!(out.status.success(), "UDP to {addr}: {}", show(&out));
    }
    for node in [Node::Entry, Node::Exit] {
        let s = ux
            .topo
            .ctl_json(node, &["stats"])
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(
            s["super_packet_drops"]
                .as_object()
                .is_some_and(|m| m.is_empty()),
            "{node:?} refused super-packets: {s}"
        );
        if node == Node::Entry {
            let n = |k: &str| s[k].as_u64().unwrap_or(0);
            assert!(n("tun_super_packets_in") > 0, "{s}");
            assert!(
                n("tun_super_packets_out") > 0,
                "the entry joined nothing: {s}"
            );
        }
    }
    let status = ux
        .topo
        .ctl_json(Node::Entry, &["status"])
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        status["tun"]["offloads"]
            .as_array()
            .is_some_and(|o| o.iter().any(|x| x == "tso4")),
        "{status}"
    );
    assert_eq!(ux.stat("dropped_packets"), 0);
    ux.topo.assert_daemons_alive();
}
sapper_tests::per_transport!(offload_traffic);

/// 500 concurrent short TCP connections all complete, and every flow is
/// gone from the exit afterwards.
#[test]
fn many_concurrent_connections() {
    let mut ux = Ux::start(Transport::Quic, &[], true);
    ux.serve("tcp-echo-serve", "10.20.0.2:7001");
    ux.wait_for_ping(PRIVATE_HOST);
    let start = Instant::now();
    let out = ux.probe(
        &[
            "tcp-conns",
            "10.20.0.2:7001",
            "500",
            "2000",
            "--timeout",
            "120",
        ],
        Duration::from_secs(150),
    );
    assert!(out.status.success(), "500 connections: {}", show(&out));
    eprintln!("500 connections in {:?}", start.elapsed());
    assert!(ux.stat("tcp_flows_total") >= 500);
    assert_eq!(ux.stat("refused_limit"), 0);
    let r = wait_until(
        "the exit's TCP flows to close",
        Duration::from_secs(30),
        || (ux.stat("tcp_flows") == 0 && ux.stat("buffer_bytes") == 0).then_some(()),
    );
    r.unwrap_or_else(|e| panic!("{e}; exit: {}", ux.exit_stats()));
    ux.topo.assert_daemons_alive();
}

/// With max_tcp_flows = 4, new connections past the limit are refused and
/// counted while an earlier, slow flow carries on to the end intact.
#[test]
fn flow_limit_refuses_new_flows_only() {
    let mut ux = Ux::start(Transport::Quic, &["max_tcp_flows = 4"], true);
    ux.serve("tcp-echo-serve", "10.20.0.2:7001");
    ux.wait_for_ping(PRIVATE_HOST);

    let slow = ux.start_slow_flow("10.20.0.2:7001");
    let out = ux.probe(
        &[
            "tcp-conns",
            "10.20.0.2:7001",
            "12",
            "1000",
            "--timeout",
            "30",
        ],
        Duration::from_secs(45),
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        !out.status.success(),
        "12 connections past a limit of 4 all succeeded: {text}"
    );
    assert!(
        text.contains("refused"),
        "refusals are RSTs: {}",
        show(&out)
    );
    let refused = ux.stat("refused_limit");
    assert!(refused >= 1, "refusals counted: {}", ux.exit_stats());
    let log = ux.topo.netd(Node::Exit).stderr_text();
    assert!(
        log.contains("max_tcp_flows reached"),
        "refusal logged: {log}"
    );

    ux.finish_slow_flow(&slow);
    ux.assert_room_again("10.20.0.2:7001");
    ux.topo.assert_daemons_alive();
}

/// A reload (SIGHUP) of `[netd.exit]` on the running exit: a lower
/// max_tcp_flows refuses connections the old limit admitted, a deny rule
/// added refuses a destination that connected before, and taking both out
/// again admits them; the link and a ping through it stay up throughout.
#[test]
fn reload_applies_exit_limits_and_policy() {
    let mut ux = Ux::start(Transport::Quic, &["max_tcp_flows = 64"], true);
    ux.serve("tcp-echo-serve", "10.20.0.2:7001");
    ux.wait_for_ping(PRIVATE_HOST);
    let cfg = ux.topo.config_path(Node::Exit);
    let good = fs::read_to_string(&cfg).expect("exit config");
    let reload = |ux: &mut Ux, text: &str| {
        let applied = |ux: &Ux| {
            ux.topo
                .netd(Node::Exit)
                .stderr_text()
                .matches("reload: userspace exit limits and policy applied")
                .count()
        };
        let before = applied(ux);
        write(&cfg, text, 0o644);
        let pid = ux.topo.netd(Node::Exit).pid();
        // SAFETY: kill has no memory-safety preconditions.
        assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGHUP) }, 0);
        wait_until("the exit to apply the reload", WAIT, || {
            (applied(ux) > before).then_some(())
        })
        .unwrap_or_else(|e| panic!("{e}\n{}", ux.topo.netd(Node::Exit).stderr_text()));
    };
    let conns = |ux: &Ux| {
        ux.probe(
            &[
                "tcp-conns",
                "10.20.0.2:7001",
                "12",
                "1000",
                "--timeout",
                "30",
            ],
            Duration::from_secs(45),
        )
    };
    let flows_gone = |ux: &Ux| {
        wait_until(
            "the exit's TCP flows to close",
            Duration::from_secs(30),
            || (ux.stat("tcp_flows") == 0).then_some(()),
        )
        .unwrap_or_else(|e| panic!("{e}; exit: {}", ux.exit_stats()));
    };
    let out = conns(&ux);
    assert!(
        out.status.success(),
        "12 connections under 64: {}",
        show(&out)
    );
    flows_gone(&ux);

    reload(
        &mut ux,
        &good.replace("max_tcp_flows = 64", "max_tcp_flows = 4"),
    );
    let refused = ux.stat("refused_limit");
    let out = conns(&ux);
    assert!(
        !out.status.success() && String::from_utf8_lossy(&out.stdout).contains("refused"),
        "12 connections past a reloaded limit of 4: {}",
        show(&out)
    );
    assert!(ux.stat("refused_limit") > refused, "{}", ux.exit_stats());
    flows_gone(&ux);

    reload(
        &mut ux,
        &format!("{good}deny = [\"tcp 10.20.0.2 port 7001\"]\n"),
    );
    let (r, _) = ux.connect("10.20.0.2:7001");
    assert_eq!(r, "refused", "a destination denied by the reload");
    assert!(ux.stat("denied_flows") >= 1, "{}", ux.exit_stats());

    reload(&mut ux, &good);
    let (r, _) = ux.connect("10.20.0.2:7001");
    assert_eq!(r, "connected", "allowed again");
    ux.wait_for_ping(PRIVATE_HOST);
    assert_eq!(ux.topo.peers(Node::Entry).expect("peers").len(), 1);
    ux.topo.assert_daemons_alive();
}

/// With max_udp_flows = 2 and max_icmp_flows = 1, a third UDP flow and a
/// second ping flow are refused at once (ICMP "prohibited", which the
/// sockets see as unreachable), counted and logged with the limit's name,
/// while the admitted flows keep working.
#[test]
fn udp_and_icmp_flow_limits_refuse_new_flows() {
    let mut ux = Ux::start(
        Transport::Quic,
        &["max_udp_flows = 2", "max_icmp_flows = 1"],
        true,
    );
    ux.serve("udp-echo-serve", "10.20.0.2:7002");
    // The one ICMP flow: this ping's echo id.
    ux.wait_for_ping(PRIVATE_HOST);
    let udp = |ux: &Ux| {
        ux.probe(
            &["udp-ping", "10.20.0.2:7002", "3", "--timeout", "30"],
            Duration::from_secs(45),
        )
    };
    // Each probe binds a fresh source port: a new flow. UDP flows idle out
    // after 60 s, so both are still open when the third comes.
    for i in 1..=2 {
        let out = udp(&ux);
        assert!(out.status.success(), "UDP flow {i} of 2: {}", show(&out));
    }
    assert_eq!(ux.stat("udp_flows"), 2, "{}", ux.exit_stats());
    let before = ux.stat("refused_limit");
    let out = udp(&ux);
    assert!(
        !out.status.success(),
        "a third UDP flow passed max_udp_flows = 2: {}",
        show(&out)
    );
    assert_eq!(ux.stat("udp_flows"), 2, "{}", ux.exit_stats());
    let after_udp = ux.stat("refused_limit");
    assert!(
        after_udp > before,
        "UDP refusal not counted: {}",
        ux.exit_stats()
    );

    // A second ping process has another echo id: a second ICMP flow.
    let out = ux.topo.ping(&ux.topo.entry, PRIVATE_HOST, 2, 2);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        !out.status.success(),
        "a second ICMP flow passed max_icmp_flows = 1: {text}"
    );
    assert!(
        text.contains("Prohibited") || text.contains("filtered"),
        "the entry is told the ping is prohibited: {text}"
    );
    assert!(
        ux.stat("refused_limit") > after_udp,
        "ICMP refusal not counted: {}",
        ux.exit_stats()
    );
    let log = ux.topo.netd(Node::Exit).stderr_text();
    for limit in ["max_udp_flows reached", "max_icmp_flows reached"] {
        assert!(
            log.contains(limit),
            "the exit did not log {limit:?}:\n{log}"
        );
    }
    ux.topo.assert_daemons_alive();
}

/// max_buffer_bytes bounds what flows may reserve together: with 64 KiB
/// flow buffers a TCP flow reserves 256 KiB (two buffers, two 64 KiB
/// channels), so a 300000-byte budget holds one. A second connection is
/// refused (RST) while the first carries on intact; once it is gone there
/// is room again.
#[test]
fn memory_limit_refuses_new_flows_only() {
    let mut ux = Ux::start(
        Transport::Quic,
        &["flow_buffer_bytes = 65536", "max_buffer_bytes = 300000"],
        true,
    );
    ux.serve("tcp-echo-serve", "10.20.0.2:7001");
    ux.wait_for_ping(PRIVATE_HOST);
    let slow = ux.start_slow_flow("10.20.0.2:7001");
    let before = ux.stat("refused_limit");
    let (r, ms) = ux.connect("10.20.0.2:7001");
    assert_eq!(
        r, "refused",
        "a second TCP flow fit in max_buffer_bytes = 300000"
    );
    eprintln!("over-budget connection refused after {ms} ms");
    let x = ux.exit_stats();
    assert!(
        ux.stat("refused_limit") > before,
        "refusal not counted: {x}"
    );
    assert_eq!(x["tcp_flows"], 1, "{x}");
    let (used, max) = (x["buffer_bytes"].as_u64(), x["max_buffer_bytes"].as_u64());
    assert!(
        matches!((used, max), (Some(u), Some(300_000)) if (262_144..=300_000).contains(&u)),
        "one TCP flow's reservation within the budget: {x}"
    );
    let log = ux.topo.netd(Node::Exit).stderr_text();
    assert!(
        log.contains("max_buffer_bytes reached"),
        "the exit did not log the memory limit:\n{log}"
    );
    ux.finish_slow_flow(&slow);
    ux.assert_room_again("10.20.0.2:7001");
    ux.topo.assert_daemons_alive();
}

fn rss_kib(pid: u32) -> u64 {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or_else(|| panic!("no VmRSS in /proc/{pid}/status"))
}

/// A destination that never reads: the entry's writes stall after a
/// bounded amount (kernel buffers on both sides plus the exit's per-flow
/// window), and the exit's memory does not grow with what the entry tries
/// to send.
#[test]
fn slow_destination_is_backpressured() {
    let mut ux = Ux::start(Transport::Quic, &[], true);
    ux.serve("tcp-hold-serve", "10.20.0.2:7003");
    ux.wait_for_ping(PRIVATE_HOST);
    let pid = ux.topo.netd(Node::Exit).pid();
    let before = rss_kib(pid);
    let out = ux.probe(
        &[
            "tcp-push",
            "10.20.0.2:7003",
            "536870912",
            "3",
            "--timeout",
            "90",
        ],
        Duration::from_secs(120),
    );
    assert!(out.status.success(), "tcp-push: {}", show(&out));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let written: u64 = text
        .split_whitespace()
        .find_map(|f| f.strip_prefix("written="))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no written= in {text}"));
    eprintln!("entry wrote {written} bytes before stalling");
    assert!(
        text.starts_with("stalled"),
        "512 MiB went into a destination that never reads: {text}"
    );
    assert!(written < 64 << 20, "{written} bytes buffered on the way");
    let x = ux.exit_stats();
    assert_eq!(x["tcp_flows"], 1, "{x}");
    let (used, max) = (x["buffer_bytes"].as_u64(), x["max_buffer_bytes"].as_u64());
    assert!(
        matches!((used, max), (Some(u), Some(m)) if u <= m && m > 0),
        "buffer_bytes must be reported and within max_buffer_bytes: {x}"
    );
    let after = rss_kib(pid);
    eprintln!("exit netd RSS {before} KiB -> {after} KiB");
    assert!(
        after < before + 32 * 1024,
        "exit netd grew from {before} KiB to {after} KiB"
    );
    ux.topo.assert_daemons_alive();
}

/// Without ping sockets (net.ipv4.ping_group_range left at its default,
/// "1 0"), echo requests are refused at once with an ICMP error and
/// counted; TCP is unaffected.
#[test]
fn ping_without_ping_sockets() {
    let mut ux = Ux::start(Transport::Quic, &[], false);
    ux.serve("tcp-echo-serve", "10.20.0.2:7001");
    let mut last = String::new();
    let r = wait_until("TCP through the exit", WAIT, || {
        let (r, _) = ux.connect("10.20.0.2:7001");
        last = r;
        (last == "connected").then_some(())
    });
    r.unwrap_or_else(|e| panic!("{e}; last result {last}"));
    let start = Instant::now();
    let out = ux.topo.ping(&ux.topo.entry, PRIVATE_HOST, 2, 2);
    assert!(!out.status.success(), "ping worked without ping sockets");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("Prohibited") || text.contains("filtered"),
        "the entry is told why: {text}"
    );
    eprintln!("ping refused after {:?}", start.elapsed());
    assert!(ux.stat("icmp_unavailable") >= 1, "{}", ux.exit_stats());
    let log = ux.topo.netd(Node::Exit).stderr_text();
    assert!(
        log.contains("ping_group_range"),
        "the exit names the sysctl: {log}"
    );
    ux.topo.assert_daemons_alive();
}

/// A second, hostile entry (right PSK, its own address 10.10.0.3) sends
/// packets with the honest entry's tunnel source 10.99.0.1 while the honest
/// entry has a TCP flow open through the userspace exit: the exit drops and
/// counts every one of them against the rogue (`source_drops` in `peers`),
/// and the honest flow carries on to the end intact.
#[test]
fn spoofed_sources_are_dropped_and_the_honest_flow_is_unaffected() {
    let mut ux = Ux::start(Transport::Quic, &[], true);
    ux.serve("tcp-echo-serve", "10.20.0.2:7001");
    ux.wait_for_ping(PRIVATE_HOST);
    let slow = ux.start_slow_flow("10.20.0.2:7001");
    ux.topo
        .entry
        .ip(&["addr", "add", "10.10.0.3/24", "dev", "ve-x"]);
    let mut fp = Command::new("setpriv");
    fp.args(as_nobody())
        .arg(&bins().netd)
        .arg("--config")
        .arg(ux.topo.config_path(Node::Exit))
        .arg("--print-fingerprint");
    let fp = run_ok(&mut fp, Duration::from_secs(30)).unwrap_or_else(|e| panic!("{e}"));
    let fp = fp
        .lines()
        .map(str::trim)
        .rfind(|l| !l.is_empty())
        .expect("a fingerprint")
        .to_string();
    let psk = ux.topo.node_dir(Node::Exit).join("psk");
    let mut rogue = ux.topo.entry.cmd(tool("sapper-rogue"));
    rogue.args([
        "peer",
        "10.10.0.2:4433",
        &fp,
        &psk.display().to_string(),
        "--bind",
        "10.10.0.3",
        "--name",
        "rogue",
        "--hint",
        "entry",
        "--address",
        "10.99.0.9",
        "spoof",
        "10.99.0.1",
        PRIVATE_HOST,
        "3000",
        "hold",
        "2",
    ]);
    let out = run_timeout(&mut rogue, Duration::from_secs(60)).unwrap_or_else(|e| panic!("{e}"));
    assert!(out.status.success(), "sapper-rogue: {}", show(&out));
    let peers = ux.topo.peers(Node::Exit).unwrap_or_else(|e| panic!("{e}"));
    let rogue = peers
        .iter()
        .find(|p| p["name"] == "rogue")
        .unwrap_or_else(|| panic!("the exit does not list the rogue: {peers:?}"));
    assert!(
        rogue["source_drops"].as_u64().unwrap_or(0) >= 3000,
        "spoofed packets not dropped and counted: {rogue}"
    );
    let entry = peers
        .iter()
        .find(|p| p["name"] == "entry")
        .expect("the honest entry");
    assert_eq!(entry["source_drops"], 0, "{entry}");
    ux.finish_slow_flow(&slow);
    ux.topo.assert_daemons_alive();
}

/// `deny_local` covers the exit host's own addresses, not only loopback:
/// a service listening on the exit's private-side address 10.20.0.1 (reached
/// over `lo` from the exit's own sockets) is refused like a closed port and
/// counted, while the private host behind it stays reachable.
#[test]
fn deny_local_covers_the_exit_hosts_own_addresses() {
    let mut ux = Ux::start(Transport::Quic, &[], true);
    ux.serve("tcp-echo-serve", "10.20.0.2:7001");
    ux.wait_for_ping(PRIVATE_HOST);
    // A service of the exit host itself.
    let args = ["tcp-echo-serve", "10.20.0.1:7009", "--timeout", "120"];
    let refs: Vec<&std::ffi::OsStr> = args.iter().map(std::ffi::OsStr::new).collect();
    ux.topo
        .spawn("exit-service", Node::Exit, &tool("sapper-probe"), &refs);
    let r = wait_until("the exit's own service to listen", WAIT, || {
        ux.topo
            .daemon("exit-service")
            .stdout_text()
            .contains("listening")
            .then_some(())
    });
    r.unwrap_or_else(|e| panic!("{e}"));
    let denied = ux.stat("denied_flows");
    let (r, _) = ux.connect("10.20.0.1:7009");
    assert_eq!(r, "refused", "the exit's own address was reachable");
    assert!(ux.stat("denied_flows") > denied, "{}", ux.exit_stats());
    let (r, _) = ux.connect("10.20.0.2:7001");
    assert_eq!(r, "connected", "the private host behind the exit");
    ux.topo.assert_daemons_alive();
}

/// `max_flows_per_peer = 1`: while the entry's one TCP flow is open, its
/// next is refused (a RST, counted in `refused_limit`) though the global
/// limit has room; once the first ends there is room again.
#[test]
fn per_peer_flow_quota() {
    let mut ux = Ux::start(Transport::Quic, &["max_flows_per_peer = 1"], true);
    ux.serve("tcp-echo-serve", "10.20.0.2:7001");
    let slow = ux.start_slow_flow("10.20.0.2:7001");
    let before = ux.stat("refused_limit");
    let (r, _) = ux.connect("10.20.0.2:7001");
    assert_eq!(r, "refused", "a second flow past the per-peer quota");
    assert!(ux.stat("refused_limit") > before, "{}", ux.exit_stats());
    let log = ux.topo.netd(Node::Exit).stderr_text();
    assert!(log.contains("per-peer quota"), "refusal logged: {log}");
    ux.finish_slow_flow(&slow);
    ux.assert_room_again("10.20.0.2:7001");
    ux.topo.assert_daemons_alive();
}

/// Two peers' UDP flows with the same destination and the same source port
/// (different tunnel addresses: the entry's 10.99.0.1, a second peer's
/// 10.99.0.9) through the userspace exit at the same time: each gets only
/// its own echoes back, none of the other's.
#[test]
fn same_destination_and_source_port_from_two_peers_stay_apart() {
    let mut ux = Ux::start(Transport::Quic, &[], true);
    ux.serve("udp-echo-serve", "10.20.0.2:7002");
    ux.wait_for_ping(PRIVATE_HOST);
    ux.topo
        .entry
        .ip(&["addr", "add", "10.10.0.3/24", "dev", "ve-x"]);
    let mut fp = Command::new("setpriv");
    fp.args(as_nobody())
        .arg(&bins().netd)
        .arg("--config")
        .arg(ux.topo.config_path(Node::Exit))
        .arg("--print-fingerprint");
    let fp = run_ok(&mut fp, Duration::from_secs(30)).unwrap_or_else(|e| panic!("{e}"));
    let fp = fp
        .lines()
        .map(str::trim)
        .rfind(|l| !l.is_empty())
        .expect("a fingerprint")
        .to_string();
    let psk = ux.topo.node_dir(Node::Exit).join("psk");
    let mut second = ux.topo.entry.cmd(tool("sapper-rogue"));
    second
        .args([
            "peer",
            "10.10.0.2:4433",
            &fp,
            &psk.display().to_string(),
            "--bind",
            "10.10.0.3",
            "--name",
            "second",
            "--hint",
            "entry",
            "--address",
            "10.99.0.9",
            "udp-tagged",
            "10.99.0.9",
            PRIVATE_HOST,
            "200",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let second = second.spawn().expect("start the second peer");
    // The entry's flow from the same port to the same destination, meanwhile.
    let mut probe = ux.topo.entry.cmd(tool("sapper-probe"));
    probe.args([
        "udp-tagged",
        "10.99.0.1:40000",
        "10.20.0.2:7002",
        "200",
        "entry",
    ]);
    let out = run_timeout(&mut probe, Duration::from_secs(60)).unwrap_or_else(|e| panic!("{e}"));
    let entry = String::from_utf8_lossy(&out.stdout).into_owned();
    let out = second.wait_with_output().expect("the second peer");
    let other = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "second peer: {}", show(&out));
    let counts = |text: &str| -> (u64, u64) {
        let line = text
            .lines()
            .find(|l| l.starts_with("ours="))
            .unwrap_or_else(|| panic!("no counts in {text:?}"));
        let num = |k: &str| {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(k))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        (num("ours="), num("foreign="))
    };
    let (e_ours, e_foreign) = counts(&entry);
    let (s_ours, s_foreign) = counts(&other);
    assert!(
        e_foreign == 0 && s_foreign == 0,
        "one peer got the other's data: entry {entry} second {other}"
    );
    assert!(
        e_ours >= 100 && s_ours >= 100,
        "too few echoes: entry {entry} second {other}\n{}",
        ux.exit_stats()
    );
    ux.topo.assert_daemons_alive();
}
