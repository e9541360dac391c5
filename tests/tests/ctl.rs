//! End-to-end tests of `sapperctl` and netd's management API (issue 4):
//! the real binaries in the standard E/X/P topology (see
//! `sapper_tests::topology`), with sapperctl run as root, as a reader
//! (uid 4242 in the socket's group) and as a member of
//! `netd.operator_group`. Needs root.

use sapper_tests::cmd::{run_timeout, wait_until, WAIT};
use sapper_tests::topology::{PRIVATE_NET, TUN_NAME};
use sapper_tests::{Node, Options, Topology, Transport};
use serde_json::Value;
use std::fs;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

/// A route inside the entry privd's `allowed_routes` (10.0.0.0/8) that no
/// one installs otherwise.
const EXTRA_ROUTE: &str = "10.30.0.0/24";
/// A route outside every allow-list.
const FORBIDDEN_ROUTE: &str = "192.168.77.0/24";
/// A uid with no passwd entry: only the socket's group lets it in.
const READER_UID: u32 = 4242;
/// A uid whose primary group is the operator group.
const OPERATOR_UID: u32 = 4243;
/// The operator group (exists on every Debian system).
const OPERATOR_GROUP: &str = "users";
/// The management socket's group: netd's group, as the harness sets
/// `netd.group = "nogroup"` and no `netd.management_group`.
const SOCKET_GROUP: &str = "nogroup";

fn show(out: &Output) -> String {
    format!(
        "status {}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

use sapper_tests::gid_of;

/// `sapperctl ARGS` as `uid` with primary group `gid` and supplementary
/// groups `groups` (set in the child before exec, in the order
/// setgroups, setgid, setuid).
fn ctl_as(ctl: &Path, uid: u32, gid: u32, groups: &[u32], args: &[&str]) -> Output {
    let mut cmd = Command::new(ctl);
    cmd.args(args);
    let groups: Vec<libc::gid_t> = groups.to_vec();
    // SAFETY: the closure runs in the forked child before exec and only
    // makes async-signal-safe system calls.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setgroups(groups.len(), groups.as_ptr()) != 0
                || libc::setgid(gid) != 0
                || libc::setuid(uid) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    run_timeout(&mut cmd, Duration::from_secs(15)).unwrap_or_else(|e| panic!("{e}"))
}

/// `sapperctl --socket <node's socket> ARGS` as the reader uid.
fn reader_ctl(topo: &Topology, node: Node, args: &[&str]) -> Output {
    let sock = topo.mgmt_socket(node).display().to_string();
    let mut all = vec!["--socket", sock.as_str()];
    all.extend_from_slice(args);
    let g = gid_of(SOCKET_GROUP);
    ctl_as(&topo.daemon_bins().ctl, READER_UID, g, &[g], &all)
}

fn exit_code(out: &Output) -> Option<i32> {
    out.status.code()
}

/// Asserts that `out` is a failed request: exit code 1 and `needle` in
/// stderr.
fn assert_failed(out: &Output, what: &str, needle: &str) {
    assert_eq!(
        exit_code(out),
        Some(1),
        "{what}: expected exit code 1 (request failed):\n{}",
        show(out)
    );
    assert!(
        stderr(out).contains(needle),
        "{what}: stderr should mention {needle:?}:\n{}",
        show(out)
    );
}

fn has_keys(v: &Value, keys: &[&str], what: &str) {
    for k in keys {
        assert!(v.get(*k).is_some(), "{what} lacks the field {k:?}: {v}");
    }
}

/// The peer named `name` in `node`'s `sapperctl peers --json`.
fn peer(topo: &Topology, node: Node, name: &str) -> Value {
    topo.peers(node)
        .unwrap_or_else(|e| panic!("{e}"))
        .into_iter()
        .find(|p| p["name"] == name)
        .unwrap_or_else(|| panic!("{} does not list peer {name}", node.as_str()))
}

fn kernel_routes(topo: &Topology, node: Node, prefix: &str) -> String {
    topo.ns(node).ip(&["route", "show", prefix])
}

fn tun_routes(topo: &Topology, node: Node, prefix: &str) -> bool {
    kernel_routes(topo, node, prefix)
        .lines()
        .any(|l| l.starts_with(prefix) && l.contains(&format!("dev {TUN_NAME}")))
}

/// sapperctl's own behaviour without any daemon: completions, the man page,
/// usage errors (exit 2) and an absent socket (exit 3 with a hint).
#[test]
fn cli_without_a_daemon() {
    let ctl = &sapper_tests::bins::bins().ctl;
    let run = |args: &[&str]| {
        run_timeout(Command::new(ctl).args(args), Duration::from_secs(10))
            .unwrap_or_else(|e| panic!("{e}"))
    };

    let out = run(&["completions", "bash"]);
    assert!(out.status.success(), "completions bash:\n{}", show(&out));
    let text = stdout(&out);
    assert!(
        text.contains("sapperctl") && text.contains("complete") && text.contains("disconnect"),
        "completions bash printed no bash completion for sapperctl:\n{text}"
    );
    let out = run(&["completions", "zsh"]);
    assert!(out.status.success(), "completions zsh:\n{}", show(&out));
    assert!(!out.stdout.is_empty(), "completions zsh printed nothing");

    let out = run(&["man"]);
    assert!(out.status.success(), "man:\n{}", show(&out));
    let text = stdout(&out);
    assert!(
        text.contains(".TH") && text.contains("sapperctl"),
        "man printed no roff page:\n{text}"
    );

    for args in [
        &["ping"][..],
        &["no-such-command"],
        &["route", "add"],
        &["hint", "prefer", "bouncer"],
        &["completions", "no-such-shell"],
    ] {
        let out = run(args);
        assert_eq!(
            exit_code(&out),
            Some(2),
            "sapperctl {args:?} is a usage error (exit 2):\n{}",
            show(&out)
        );
    }

    let dir = std::env::temp_dir().join(format!("sapper-ctl-nosock-{}", std::process::id()));
    let sock = dir.join("netd.sock");
    let sock_s = sock.display().to_string();
    for args in [
        vec!["--socket", &sock_s, "status"],
        vec!["--socket", &sock_s, "--json", "peers"],
        vec!["--socket", &sock_s, "disconnect", "exit"],
        vec!["--socket", &sock_s, "events"],
    ] {
        let out = run(&args);
        assert_eq!(
            exit_code(&out),
            Some(3),
            "sapperctl {args:?} with no netd should exit 3 (unreachable):\n{}",
            show(&out)
        );
        let err = stderr(&out);
        assert!(
            err.contains("is sapper-netd running?") && err.contains(&sock_s),
            "sapperctl {args:?}: the error should ask whether sapper-netd runs and name {sock_s}:\n{err}"
        );
    }
    let privd_sock = dir.join("privd.sock").display().to_string();
    let out = run(&["--privd-socket", &privd_sock, "privd", "status"]);
    assert_eq!(
        exit_code(&out),
        Some(3),
        "privd status with no privd should exit 3:\n{}",
        show(&out)
    );
}

/// Reads as root and as a reader: peers with a latency figure, ping with
/// RTTs (human and JSON), typed errors for unknown and ambiguous prefixes,
/// the documented JSON fields of status/peers/stats/routes, privd status.
#[test]
fn read_commands_and_ping() {
    let mut topo = Topology::start(Options::new(Transport::Quic));
    topo.wait_for_peers();

    // Keepalive pongs give the peer a latency figure.
    wait_alive(&topo, "a latency figure for the exit on E", WAIT, || {
        let peers = topo.peers(Node::Entry).ok()?;
        let p = peers.iter().find(|p| p["name"] == "exit")?;
        p["latency_ms"].as_f64()
    });
    let out = topo.ctl(Node::Entry, &["peers"]);
    assert!(out.status.success(), "sapperctl peers:\n{}", show(&out));
    let table = stdout(&out);
    let header = table.lines().next().unwrap_or_default();
    for col in ["NAME", "TRANSPORT", "ROLE", "LATENCY"] {
        assert!(header.contains(col), "no {col} column in:\n{table}");
    }
    let row = table
        .lines()
        .find(|l| l.starts_with("exit "))
        .unwrap_or_else(|| panic!("sapperctl peers on E lists no exit:\n{table}"));
    assert!(
        row.split_whitespace()
            .collect::<Vec<_>>()
            .windows(2)
            .any(|w| w[1] == "ms" && w[0].parse::<f64>().is_ok()),
        "the exit's row has no latency in ms: {row:?}"
    );
    assert!(
        row.contains("quic"),
        "the exit's row names no transport: {row:?}"
    );

    // ping: human output, one RTT per reply.
    let out = topo.ctl(Node::Entry, &["ping", "exit", "-c", "2"]);
    assert!(out.status.success(), "ping exit -c 2:\n{}", show(&out));
    let rtts: Vec<f64> = stdout(&out)
        .lines()
        .filter_map(|l| {
            let rest = l.strip_prefix("pong from exit: time=")?;
            rest.strip_suffix(" ms")?.parse().ok()
        })
        .collect();
    assert_eq!(rtts.len(), 2, "two RTTs expected:\n{}", show(&out));
    assert!(
        rtts.iter().all(|r| *r > 0.0 && *r < 5000.0),
        "implausible RTTs {rtts:?}"
    );
    // ping --json, by a unique prefix: one object per line.
    let out = topo.ctl(Node::Entry, &["ping", "ex", "-c", "2", "--json"]);
    assert!(out.status.success(), "ping ex -c 2 --json:\n{}", show(&out));
    let lines: Vec<Value> = stdout(&out)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("ping --json line {l:?}: {e}")))
        .collect();
    assert_eq!(lines.len(), 2, "two JSON lines expected:\n{}", show(&out));
    for l in &lines {
        assert_eq!(l["peer"], "exit", "{l}");
        assert!(l["rtt_ms"].as_f64().is_some_and(|r| r > 0.0), "{l}");
    }
    // Unknown prefix: typed error, exit 1.
    let out = topo.ctl(Node::Entry, &["ping", "nosuch"]);
    assert_failed(&out, "ping nosuch", "PEER_NOT_FOUND");
    let out = topo.ctl(Node::Entry, &["disconnect", "nosuch"]);
    assert_failed(&out, "disconnect nosuch", "PEER_NOT_FOUND");

    // --json documents: status, peers, stats, routes.
    let fp_exit = topo.fingerprint(Node::Exit);
    for node in [Node::Entry, Node::Exit] {
        let s = topo
            .ctl_json(node, &["status"])
            .unwrap_or_else(|e| panic!("{e}"));
        has_keys(
            &s,
            &[
                "name",
                "version",
                "role",
                "role_reason",
                "uptime_s",
                "listeners",
                "cert_fingerprint",
                "tun",
                "peer_count",
            ],
            "status",
        );
        assert_eq!(s["name"], node.as_str(), "{s}");
        assert_eq!(s["role"], node.as_str(), "role fixed by node.role: {s}");
        assert!(s["uptime_s"].is_u64(), "{s}");
        assert_eq!(s["peer_count"], 1, "{s}");
        assert_eq!(s["tun"]["name"], TUN_NAME, "{s}");
        assert_eq!(s["tun"]["mtu"], 1280, "{s}");
        assert!(
            s["tun"]["addresses"]
                .as_array()
                .is_some_and(|a| !a.is_empty()),
            "{s}"
        );
        assert!(s["version"].as_str().is_some_and(|v| !v.is_empty()), "{s}");
        assert!(
            s["role_reason"].as_str().is_some_and(|v| !v.is_empty()),
            "{s}"
        );
        let listeners = s["listeners"].as_array().expect("listeners is an array");
        if node == Node::Exit {
            assert_eq!(s["cert_fingerprint"], fp_exit.as_str(), "{s}");
            assert!(
                listeners
                    .iter()
                    .any(|l| l["transport"] == "quic" && l["address"] == "0.0.0.0:4433"),
                "the exit's status lists no QUIC listener: {s}"
            );
        } else {
            assert!(listeners.is_empty(), "the entry does not listen: {s}");
        }
    }
    let p = peer(&topo, Node::Entry, "exit");
    has_keys(
        &p,
        &[
            "name",
            "address",
            "transport",
            "outbound",
            "capabilities",
            "role",
            "link_reason",
            "latency_ms",
            "bytes_in",
            "bytes_out",
            "packets_in",
            "packets_out",
            "drops",
            "connected_at",
            "routes",
        ],
        "peers[]",
    );
    has_keys(
        &p["capabilities"],
        &["tun_capable", "listening", "connecting"],
        "peers[].capabilities",
    );
    assert_eq!(p["address"], "10.10.0.2:4433", "{p}");
    assert_eq!(p["transport"], "quic", "{p}");
    assert_eq!(p["outbound"], true, "{p}");
    assert_eq!(p["role"], "exit", "{p}");
    assert_eq!(p["capabilities"]["tun_capable"], true, "{p}");
    assert_eq!(p["capabilities"]["listening"], true, "{p}");
    assert_eq!(p["capabilities"]["connecting"], false, "{p}");
    assert!(
        p["routes"]
            .as_array()
            .is_some_and(|r| r.iter().any(|r| r == PRIVATE_NET)),
        "the exit announced {PRIVATE_NET}: {p}"
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let at = p["connected_at"].as_u64().unwrap_or(0);
    assert!(
        at <= now && now - at < 300,
        "connected_at {at} is not a recent unix time (now {now})"
    );
    let st = topo
        .ctl_json(Node::Entry, &["stats"])
        .unwrap_or_else(|e| panic!("{e}"));
    for k in [
        "tun_packets_in",
        "tun_packets_out",
        "drops",
        "handshake_failures",
        "bytes_in",
        "bytes_out",
    ] {
        assert!(st[k].is_u64(), "stats.{k} is not a number: {st}");
    }
    let r = topo
        .ctl_json(Node::Entry, &["routes"])
        .unwrap_or_else(|e| panic!("{e}"));
    let routes = r["routes"].as_array().expect("routes is an array");
    assert!(
        routes
            .iter()
            .any(|r| r["prefix"] == PRIVATE_NET && r["peer"] == "exit"),
        "E's routes lack {{prefix: {PRIVATE_NET}, peer: exit}}: {r}"
    );
    for kind in ["status", "stats", "routes"] {
        let out = topo.ctl(Node::Entry, &[kind]);
        assert!(out.status.success(), "sapperctl {kind}:\n{}", show(&out));
        assert!(!out.stdout.is_empty(), "sapperctl {kind} printed nothing");
    }

    // privd status for a reader (uid 4242 in the socket's group).
    for (node, nat) in [(Node::Entry, false), (Node::Exit, true)] {
        let sock = topo.privd_socket(node).display().to_string();
        let g = gid_of(SOCKET_GROUP);
        let out = ctl_as(
            &topo.daemon_bins().ctl,
            READER_UID,
            g,
            &[g],
            &["--privd-socket", &sock, "--json", "privd", "status"],
        );
        assert!(
            out.status.success(),
            "privd status as uid {READER_UID} on {}:\n{}",
            node.as_str(),
            show(&out)
        );
        let v: Value = serde_json::from_str(&stdout(&out))
            .unwrap_or_else(|e| panic!("privd status --json: {e}\n{}", show(&out)));
        has_keys(
            &v,
            &[
                "tun_name",
                "routes",
                "nat_active",
                "forwarding",
                "granted",
                "refused",
                "offloads",
                "last_refusals",
            ],
            "privd status",
        );
        assert_eq!(v["tun_name"], TUN_NAME, "{v}");
        assert_eq!(v["nat_active"], nat, "{v}");
        assert!(v["granted"].as_u64().is_some_and(|g| g >= 1), "{v}");
        if node == Node::Entry {
            assert!(
                v["routes"]
                    .as_array()
                    .is_some_and(|r| r.iter().any(|r| r == PRIVATE_NET)),
                "E's privd installed {PRIVATE_NET} from its config: {v}"
            );
        }
    }

    // A second peer whose name shares a prefix with the first: the exit then
    // has "entry" and "entry2". It dials the exit from the exit's own
    // namespace (127.0.0.1), with the exit's PSK. Done last: a second active
    // link leaves the exit unsure where E's return traffic goes.
    let dir = topo.dir.join("entry2");
    fs::create_dir_all(dir.join("state")).expect("mkdir entry2");
    fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("chmod entry2");
    let psk = dir.join("psk");
    fs::write(&psk, format!("{}\n", topo.opts.exit_psk)).expect("write psk");
    fs::set_permissions(&psk, std::os::unix::fs::PermissionsExt::from_mode(0o600))
        .expect("chmod psk");
    let cfg = dir.join("sapper.toml");
    fs::write(
        &cfg,
        format!(
            "[node]\nname = \"entry2\"\nrole = \"entry\"\npsk_file = \"{}\"\n\n\
             [netd]\nuser = \"nobody\"\ngroup = \"nogroup\"\nstate_dir = \"{}\"\n\
             management_socket = \"{}\"\nping_interval_ms = 200\n\
             reconnect_min_ms = 100\nreconnect_max_ms = 1000\n\n\
             [[netd.connect]]\ntransport = \"quic\"\naddress = \"127.0.0.1:4433\"\n\
             server_name = \"exit\"\nfingerprint = \"{fp_exit}\"\n",
            psk.display(),
            dir.join("state").display(),
            dir.join("netd.sock").display(),
        ),
    )
    .expect("write entry2 config");
    let netd = topo.daemon_bins().netd.clone();
    topo.spawn(
        "entry2-netd",
        Node::Exit,
        &netd,
        &["--config".as_ref(), cfg.as_os_str()],
    );
    wait_alive(&topo, "the exit to list entry and entry2", WAIT, || {
        let peers = topo.peers(Node::Exit).ok()?;
        let names: Vec<&str> = peers.iter().filter_map(|p| p["name"].as_str()).collect();
        (names.contains(&"entry") && names.contains(&"entry2")).then_some(())
    });
    let out = topo.ctl(Node::Exit, &["ping", "ent"]);
    assert_failed(&out, "ping ent (entry, entry2)", "PEER_AMBIGUOUS");
    let out = topo.ctl(Node::Exit, &["disconnect", "ent"]);
    assert_failed(&out, "disconnect ent (entry, entry2)", "PEER_AMBIGUOUS");
    // An exact name wins over a longer name it prefixes.
    let out = topo.ctl(Node::Exit, &["ping", "entry", "--json"]);
    assert!(out.status.success(), "ping entry:\n{}", show(&out));
    assert!(
        stdout(&out).contains("\"peer\":\"entry\""),
        "{}",
        show(&out)
    );
    topo.assert_daemons_alive();
}

/// `route add|del` goes through privd (kernel table), privd's allow-list
/// refuses what is outside it, and `events --json` streams route changes
/// and the loss of the exit when its netd is killed.
#[test]
fn routes_through_privd_and_events() {
    let mut topo = Topology::start(Options::new(Transport::Quic));
    topo.wait_for_peers();

    // A subscriber in the background (stopped with the topology).
    let events_out = {
        let sock = topo.mgmt_socket(Node::Entry);
        let ctl = topo.daemon_bins().ctl.clone();
        topo.spawn(
            "ctl-events",
            Node::Entry,
            &ctl,
            &[
                "--socket".as_ref(),
                sock.as_os_str(),
                "--json".as_ref(),
                "events".as_ref(),
            ],
        );
        topo.daemon("ctl-events").stdout.clone()
    };
    let events = |path: &Path| -> Vec<Value> {
        fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .map(|l| {
                serde_json::from_str(l).unwrap_or_else(|e| panic!("events --json line {l:?}: {e}"))
            })
            .collect()
    };
    let has_event = |path: &Path, kind: &str, key: &str, val: &str| {
        events(path)
            .iter()
            .any(|e| e["event"] == kind && e["detail"][key] == val)
    };
    // The subscription starts a moment after the process does; routes
    // added before it would go unseen. Retry the add until an event shows.
    let out = topo.ctl(Node::Entry, &["route", "add", EXTRA_ROUTE]);
    assert!(
        out.status.success(),
        "route add {EXTRA_ROUTE}:\n{}",
        show(&out)
    );
    assert!(
        tun_routes(&topo, Node::Entry, EXTRA_ROUTE),
        "route add {EXTRA_ROUTE} succeeded but E's kernel has: {:?}",
        kernel_routes(&topo, Node::Entry, EXTRA_ROUTE)
    );
    let privd_routes = topo_privd_routes(&topo, Node::Entry);
    assert!(
        privd_routes.iter().any(|r| r == EXTRA_ROUTE),
        "privd status does not list {EXTRA_ROUTE}: {privd_routes:?}"
    );
    let seen = wait_until(
        "events to report route_added",
        Duration::from_secs(10),
        || {
            if has_event(&events_out, "route_added", "prefix", EXTRA_ROUTE) {
                return Some(());
            }
            // Re-adding a route privd holds is accepted and emits again.
            let _ = topo.ctl(Node::Entry, &["route", "add", EXTRA_ROUTE]);
            None
        },
    );
    if let Err(e) = seen {
        panic!(
            "{e}; events so far: {:?}",
            fs::read_to_string(&events_out).unwrap_or_default()
        );
    }

    let out = topo.ctl(Node::Entry, &["route", "del", EXTRA_ROUTE]);
    assert!(
        out.status.success(),
        "route del {EXTRA_ROUTE}:\n{}",
        show(&out)
    );
    assert!(
        !tun_routes(&topo, Node::Entry, EXTRA_ROUTE),
        "route del {EXTRA_ROUTE} succeeded but E's kernel still has it"
    );
    topo.wait_for("events to report route_removed", WAIT, || {
        has_event(&events_out, "route_removed", "prefix", EXTRA_ROUTE).then_some(())
    });

    // Outside privd's allowed_routes: refused, nothing installed.
    let out = topo.ctl(Node::Entry, &["route", "add", FORBIDDEN_ROUTE]);
    assert_failed(&out, "route add outside the allow-list", "PRIVD_REFUSED");
    assert!(
        kernel_routes(&topo, Node::Entry, FORBIDDEN_ROUTE)
            .trim()
            .is_empty(),
        "a refused route reached the kernel"
    );
    // Not a prefix at all / never installed.
    let out = topo.ctl(Node::Entry, &["route", "add", "not-a-cidr"]);
    assert_failed(&out, "route add not-a-cidr", "INVALID_ARGUMENT");
    let out = topo.ctl(Node::Entry, &["route", "del", "10.31.0.0/24"]);
    assert_failed(
        &out,
        "route del of a route nobody installed",
        "PRIVD_REFUSED",
    );
    let refused = topo.privd(Node::Entry).stderr_text();
    assert!(
        refused.contains(FORBIDDEN_ROUTE),
        "privd's audit log does not name the refused {FORBIDDEN_ROUTE}:\n{refused}"
    );

    // The exit's netd dies without a goodbye: E notices and says so.
    let killed = Instant::now();
    topo.kill("exit-netd");
    let found = wait_until(
        "events to report the exit disconnected",
        Duration::from_secs(15),
        || has_event(&events_out, "peer_disconnected", "name", "exit").then_some(()),
    );
    if let Err(e) = found {
        panic!(
            "{e}; events so far: {:?}",
            fs::read_to_string(&events_out).unwrap_or_default()
        );
    }
    eprintln!(
        "peer_disconnected reported {:?} after the exit's netd was killed",
        killed.elapsed()
    );
    for e in events(&events_out) {
        has_keys(&e, &["timestamp_ms", "event", "detail"], "event");
        assert!(e["timestamp_ms"].as_u64().is_some_and(|t| t > 0), "{e}");
    }
    let ev = events(&events_out);
    let gone = ev
        .iter()
        .find(|e| e["event"] == "peer_disconnected")
        .expect("checked above");
    assert!(
        gone["detail"]["reason"]
            .as_str()
            .is_some_and(|r| !r.is_empty()),
        "peer_disconnected without a reason: {gone}"
    );
    assert!(
        topo.peers(Node::Entry).unwrap_or_default().is_empty(),
        "E still lists a peer after the exit died"
    );
    // The subscriber is still streaming (it ends only when netd or we hang up).
    assert!(
        running(topo.daemon("ctl-events").pid()),
        "sapperctl events exited on its own"
    );
    topo.kill("ctl-events");
}

/// Like `Topology::wait_for`, for probes that need `&Topology`: polls
/// `probe` until it returns `Some` (bounded), failing at once if a privd or
/// netd of either node exits.
fn wait_alive<T>(
    topo: &Topology,
    what: &str,
    timeout: Duration,
    mut probe: impl FnMut() -> Option<T>,
) -> T {
    let mut dead = None;
    let res = wait_until(what, timeout, || {
        for node in [Node::Entry, Node::Exit] {
            for d in [topo.privd(node), topo.netd(node)] {
                if !running(d.pid()) {
                    dead = Some(format!("{} has exited", d.label));
                    return Some(None);
                }
            }
        }
        probe().map(Some)
    });
    match res {
        Ok(Some(v)) => v,
        Ok(None) => panic!("while waiting for {what}: {}", dead.unwrap_or_default()),
        Err(e) => panic!("{e}"),
    }
}

/// True while process `pid` runs (an unreaped child shows as a zombie).
fn running(pid: u32) -> bool {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let state = stat
        .rsplit_once(") ")
        .and_then(|(_, rest)| rest.chars().next());
    !matches!(state, None | Some('Z') | Some('X'))
}

fn topo_privd_routes(topo: &Topology, node: Node) -> Vec<String> {
    let out = run_timeout(
        Command::new(&topo.daemon_bins().ctl)
            .arg("--privd-socket")
            .arg(topo.privd_socket(node))
            .args(["--json", "privd", "status"]),
        Duration::from_secs(10),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert!(out.status.success(), "privd status:\n{}", show(&out));
    let v: Value = serde_json::from_str(&stdout(&out)).unwrap_or_else(|e| panic!("{e}"));
    v["routes"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|r| r.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// Who may change things: a reader (uid 4242, in the socket's group only)
/// reads but is refused every change with "permission denied" (and netd
/// logs it); a member of `netd.operator_group` may disconnect a peer.
#[test]
fn access_control() {
    let mut topo = Topology::start(Options::new(Transport::Quic).operator_group(OPERATOR_GROUP));
    topo.wait_for_peers();

    // Reads are open to the reader.
    let out = reader_ctl(&topo, Node::Entry, &["--json", "peers"]);
    assert!(
        out.status.success(),
        "peers as uid {READER_UID}:\n{}",
        show(&out)
    );
    let v: Value = serde_json::from_str(&stdout(&out)).unwrap_or_else(|e| panic!("{e}"));
    assert!(
        v["peers"]
            .as_array()
            .is_some_and(|p| p.iter().any(|p| p["name"] == "exit")),
        "the reader does not see the exit: {v}"
    );
    for args in [&["status"][..], &["stats"], &["routes"], &["ping", "exit"]] {
        let out = reader_ctl(&topo, Node::Entry, args);
        assert!(
            out.status.success(),
            "{args:?} as uid {READER_UID}:\n{}",
            show(&out)
        );
    }

    // Changes are not.
    let out = reader_ctl(&topo, Node::Entry, &["disconnect", "exit"]);
    assert_failed(&out, "disconnect as a reader", "permission denied");
    assert!(
        stderr(&out).contains("PERMISSION_DENIED") && stderr(&out).contains(OPERATOR_GROUP),
        "the refusal should be typed and name the operator group:\n{}",
        show(&out)
    );
    for args in [
        &["route", "add", EXTRA_ROUTE][..],
        &["hint", "prefer", "exit"],
        &["connect", "10.10.0.2:4433", "--fingerprint", "00"],
        &["listen", "0.0.0.0:5555"],
        &["shutdown"],
    ] {
        let out = reader_ctl(&topo, Node::Entry, args);
        assert_failed(&out, &format!("{args:?} as a reader"), "permission denied");
    }
    topo.wait_for_log(
        "entry-netd",
        "refused a management change from a non-operator",
        WAIT,
    );
    let log = topo.netd(Node::Entry).stderr_text();
    let refusals: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("refused a management change") && l.contains("4242"))
        .collect();
    assert!(
        refusals.len() >= 6,
        "netd should log every refused change with uid 4242; found {}:\n{}",
        refusals.len(),
        refusals.join("\n")
    );
    assert!(
        !tun_routes(&topo, Node::Entry, EXTRA_ROUTE),
        "a refused route add reached the kernel"
    );
    topo.assert_daemons_alive();
    assert_eq!(
        topo.peers(Node::Entry).unwrap_or_default().len(),
        1,
        "the refused disconnect closed the link anyway"
    );

    // A member of the operator group (primary group `users`; in the
    // socket's group too, so it can connect) may disconnect.
    let sock = topo.mgmt_socket(Node::Entry).display().to_string();
    let op = gid_of(OPERATOR_GROUP);
    let out = ctl_as(
        &topo.daemon_bins().ctl,
        OPERATOR_UID,
        op,
        &[op, gid_of(SOCKET_GROUP)],
        &["--socket", &sock, "disconnect", "exit"],
    );
    assert!(
        out.status.success(),
        "disconnect by an operator (uid {OPERATOR_UID}, group {OPERATOR_GROUP}):\n{}",
        show(&out)
    );
    // The exit hears why; the entry's connector then dials again.
    topo.wait_for_log("exit-netd", "disconnected by the operator", WAIT);
    topo.wait_for_peers();
    topo.assert_daemons_alive();
}
