//! A hostile peer beside an honest entry and exit: `sapper-rogue` speaks
//! the protocol (with the right PSK where it has one) and misbehaves. Every
//! refusal is checked where the operator sees it (`sapperctl --json`), and
//! the honest traffic is checked to keep flowing. Needs root.
//!
//! The rogue runs in the exit's namespace against a second QUIC listener
//! on the entry (so both the honest exit's and the rogue's announcements
//! reach the entry), or in the entry's namespace from its own address
//! 10.10.0.3 against the exit.

use sapper_tests::bins::tool;
use sapper_tests::cmd::{run_timeout, wait_until, WAIT};
use sapper_tests::topology::{EXIT_UNDERLAY, PRIVATE_HOST, PRIVATE_NET};
use sapper_tests::{per_transport, Node, Options, Topology, Transport};
use serde_json::Value;
use std::ffi::OsStr;
use std::time::Duration;

/// The rogue's own underlay address in the entry's namespace.
const ROGUE_UNDERLAY: &str = "10.10.0.3";
/// The entry's second listener, for peers that dial it.
const ENTRY_QUIC: &str = "10.10.0.1:4433";

fn port(t: Transport) -> u16 {
    match t {
        Transport::Quic => 4433,
        Transport::Ws => 8443,
    }
}

fn peer_named(topo: &Topology, node: Node, name: &str) -> Option<Value> {
    topo.peers(node)
        .ok()?
        .into_iter()
        .find(|p| p["name"] == name)
}

fn rogue_log(topo: &Topology, label: &str) -> String {
    topo.daemon(label).stdout_text()
}

/// An anonymous TLS client (no PSK) that opens the control stream gets
/// neither the listener's Handshake nor its proof: not before it speaks,
/// and not after it sent a Handshake with a made-up proof.
fn anonymous_client_learns_nothing(t: Transport) {
    let mut topo = Topology::start(Options::new(t));
    topo.wait_for_tunnel();
    topo.entry.ip(&[
        "addr",
        "add",
        &format!("{ROGUE_UNDERLAY}/24"),
        "dev",
        "ve-x",
    ]);
    let fp = topo.fingerprint(Node::Exit);
    let mut cmd = topo.entry.cmd(tool("sapper-rogue"));
    cmd.args([
        "anon",
        t.as_str(),
        &format!("{EXIT_UNDERLAY}:{}", port(t)),
        &fp,
        "--bind",
        ROGUE_UNDERLAY,
    ]);
    let out = run_timeout(&mut cmd, Duration::from_secs(30)).unwrap_or_else(|e| panic!("{e}"));
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "sapper-rogue anon: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let first = text
        .lines()
        .find_map(|l| l.strip_prefix("first="))
        .unwrap_or("?");
    let after = text
        .lines()
        .find_map(|l| l.strip_prefix("after_bad_proof="))
        .unwrap_or("?");
    assert_eq!(first, "nothing", "the listener spoke first: {text}");
    assert!(
        after == "error" || after == "closed",
        "after a bad proof the listener answered {after}: {text}"
    );
    // The honest link is untouched.
    assert!(peer_named(&topo, Node::Exit, "entry").is_some());
    topo.assert_daemons_alive();
}
per_transport!(anonymous_client_learns_nothing);

/// The entry with a second listener for the rogue, and the rogue started
/// in the exit's namespace with `steps`.
fn entry_with_rogue(node_lines: &[&str], extra_entry: &[&str], rogue_args: &[&str]) -> Topology {
    let mut entry_lines = vec![
        "[[netd.listen]]",
        "transport = \"quic\"",
        "address = \"0.0.0.0:4433\"",
    ];
    entry_lines.extend_from_slice(extra_entry);
    let mut topo = Topology::start(
        Options::new(Transport::Quic)
            .extra(Node::Entry, &entry_lines)
            .node_lines(Node::Entry, node_lines),
    );
    topo.wait_for_tunnel();
    let fp = topo.fingerprint(Node::Entry);
    let psk = topo.node_dir(Node::Exit).join("psk");
    let mut args: Vec<String> = vec![
        "peer".into(),
        ENTRY_QUIC.into(),
        fp,
        psk.display().to_string(),
        "--name".into(),
        "rogue".into(),
        "--hint".into(),
        "exit".into(),
    ];
    args.extend(rogue_args.iter().map(|a| a.to_string()));
    let refs: Vec<&OsStr> = args.iter().map(OsStr::new).collect();
    topo.spawn("rogue", Node::Exit, &tool("sapper-rogue"), &refs);
    topo
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

fn netd_pid(topo: &Topology, node: Node) -> u32 {
    // The managed process is `ip netns exec … sapper-netd`; exec keeps the pid.
    topo.netd(node).pid()
}

/// Route floods, a more specific prefix than the honest exit's, a
/// withdrawal of the exit's prefix and a control-message flood, all from
/// an authenticated peer: bounded, refused, rate-limited and counted; the
/// rogue's link is kept and the honest tunnel keeps working.
#[test]
fn rogue_routes_and_control_floods_are_refused_and_counted() {
    let mut topo = entry_with_rogue(
        &[],
        &[],
        &[
            "flood-routes",
            "40",
            "update",
            "exit",
            "10.20.0.128/25",
            "update",
            "rogue",
            "10.0.0.0/8",
            "withdraw",
            "exit",
            PRIVATE_NET,
            "pings",
            "20000",
            "hold",
            "60",
        ],
    );
    let before = rss_kib(netd_pid(&topo, Node::Entry));
    let rogue = wait_until(
        "the rogue to finish its floods",
        Duration::from_secs(60),
        || {
            let log = rogue_log(&topo, "rogue");
            if log.contains("error") {
                return Some(Err(log));
            }
            log.contains("done pings").then_some(Ok(()))
        },
    )
    .unwrap_or_else(|e| panic!("{e}: {}", rogue_log(&topo, "rogue")));
    if let Err(log) = rogue {
        panic!("the rogue failed: {log}");
    }
    // The entry counts what it refused and dropped, and keeps the link.
    let p = wait_until("the entry to count the rogue's refusals", WAIT, || {
        peer_named(&topo, Node::Entry, "rogue").filter(|p| {
            // 20000 pings: at most the burst (400) and 100/s get through.
            p["control_drops"].as_u64().unwrap_or(0) >= 10000
                && p["routes_refused"].as_u64().unwrap_or(0) >= 40 * 1024 - 1024 + 3
        })
    })
    .unwrap_or_else(|e| panic!("{e}: {:?}", peer_named(&topo, Node::Entry, "rogue")));
    let refused = p["routes_refused"].as_u64().unwrap_or(0);
    // 40 × 1024 announced, at most 1024 (netd.limits.max_routes_per_peer) kept,
    // plus the two overlapping prefixes and the withdrawal.
    assert!(
        refused >= 40 * 1024 - 1024 + 3,
        "only {refused} refused: {p}"
    );
    let routes = topo
        .ctl_json(Node::Entry, &["routes"])
        .unwrap_or_else(|e| panic!("{e}"));
    let routes = routes["routes"].as_array().cloned().unwrap_or_default();
    let by = |peer: &str| routes.iter().filter(|r| r["peer"] == peer).count();
    assert_eq!(by("rogue"), 1024, "the per-peer bound");
    let private: Vec<&Value> = routes
        .iter()
        .filter(|r| r["prefix"] == PRIVATE_NET)
        .collect();
    assert_eq!(private.len(), 1, "{private:?}");
    assert_eq!(
        private[0]["peer"], "exit",
        "the exit's prefix changed hands"
    );
    assert!(
        !routes
            .iter()
            .any(|r| r["prefix"] == "10.20.0.128/25" || r["prefix"] == "10.0.0.0/8"),
        "an overlapping prefix was accepted"
    );
    // Memory stayed bounded (generous: 40 MiB of announcements went in).
    let after = rss_kib(netd_pid(&topo, Node::Entry));
    assert!(
        after < before + 32 * 1024,
        "entry netd grew from {before} KiB to {after} KiB"
    );
    // Honest traffic flows.
    let out = topo.ping(&topo.entry, PRIVATE_HOST, 3, 2);
    assert!(
        out.status.success(),
        "ping through the tunnel failed after the floods"
    );
    assert!(
        peer_named(&topo, Node::Entry, "rogue").is_some(),
        "the rogue's link was dropped"
    );
    topo.assert_daemons_alive();
}

/// An announcement covering the entry's underlay is never installed on its
/// TUN (10.10.0.128/25 covers no peer, only the network of the entry's
/// underlay interface), while a harmless one is.
#[test]
fn a_route_covering_the_underlay_is_not_installed() {
    let mut topo = entry_with_rogue(
        &["auto_routes = true"],
        &[],
        &[
            "--announce",
            "10.10.0.128/25",
            "--announce",
            "10.77.0.0/24",
            "hold",
            "60",
        ],
    );
    // The kernel's own table in the entry's namespace is the ground truth.
    let routes = wait_until("the harmless route on the entry's TUN", WAIT, || {
        let r = topo.entry.ip(&["route", "show", "dev", "sap0"]);
        r.contains("10.77.0.0/24").then_some(r)
    })
    .unwrap_or_else(|e| panic!("{e}: {}", topo.entry.ip(&["route", "show"])));
    let routes: Vec<&str> = routes.lines().collect();
    assert!(
        !routes.iter().any(|r| r.starts_with("10.10.0.128/25")),
        "a route covering the underlay was installed: {routes:?}"
    );
    // The entry still reaches the exit over its underlay.
    let out = topo.ping(&topo.entry, PRIVATE_HOST, 2, 2);
    assert!(out.status.success(), "ping through the tunnel failed");
    topo.assert_daemons_alive();
}

/// 2,000 TCP connections that never start TLS, from one address, against a
/// WebSocket listener whose netd may open only 1,024 descriptors: the
/// pre-auth gate (`netd.limits`) closes what is past its caps at once, so
/// the honest entry, dropped and redialling, is back within 5 s.
#[test]
fn idle_preauth_connections_do_not_lock_out_an_honest_peer() {
    let mut topo = Topology::start(Options::new(Transport::Ws));
    topo.wait_for_tunnel();
    // The exit's netd again, under systemd's default descriptor limit.
    topo.kill("exit-netd");
    let netd = topo.daemon_bins().netd.clone();
    let cfg = topo.config_path(Node::Exit);
    let args: Vec<&OsStr> = vec![
        OsStr::new("--nofile=1024:1024"),
        netd.as_os_str(),
        OsStr::new("--config"),
        cfg.as_os_str(),
    ];
    topo.spawn(
        "exit-netd",
        Node::Exit,
        std::path::Path::new("prlimit"),
        &args,
    );
    wait_until("the entry to reconnect to the restarted exit", WAIT, || {
        peer_named(&topo, Node::Exit, "entry")
    })
    .unwrap_or_else(|e| panic!("{e}"));
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", netd_pid(&topo, Node::Exit)))
        .unwrap_or_default();
    assert!(
        limits
            .lines()
            .any(|l| l.starts_with("Max open files") && l.contains("1024")),
        "{limits}"
    );
    topo.entry.ip(&[
        "addr",
        "add",
        &format!("{ROGUE_UNDERLAY}/24"),
        "dev",
        "ve-x",
    ]);
    let target = format!("{EXIT_UNDERLAY}:8443");
    let args = [
        "idle",
        target.as_str(),
        "2000",
        "40",
        "--bind",
        ROGUE_UNDERLAY,
    ];
    let refs: Vec<&OsStr> = args.iter().map(OsStr::new).collect();
    topo.spawn("rogue-idle", Node::Entry, &tool("sapper-rogue"), &refs);
    let opened = wait_until(
        "the idle connections to be open",
        Duration::from_secs(60),
        || {
            rogue_log(&topo, "rogue-idle")
                .lines()
                .find_map(|l| l.strip_prefix("opened=").map(str::to_string))
        },
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let opened: usize = opened.trim().parse().unwrap_or(0);
    assert!(
        opened >= 1500,
        "only {opened} idle connections got through TCP"
    );
    // The honest entry loses its link and redials.
    let out = topo.ctl(Node::Entry, &["disconnect", "exit"]);
    assert!(out.status.success(), "disconnect: {out:?}");
    std::thread::sleep(Duration::from_millis(50));
    let back = wait_until(
        "the entry to be back within 5 s",
        Duration::from_secs(5),
        || {
            peer_named(&topo, Node::Exit, "entry").filter(|p| {
                // A new link: connected after the disconnect.
                p["connected_at"].as_u64().is_some()
            })
        },
    );
    let log = topo.netd(Node::Exit).stderr_text();
    assert!(
        back.is_ok(),
        "the honest entry was locked out: {back:?}\n{log}"
    );
    assert!(
        !log.contains("Too many open files"),
        "netd ran out of descriptors:\n{log}"
    );
    topo.assert_daemons_alive();
}

/// `sapperctl routes` (JSON and table) with more than 5,000 routes: far
/// more than one management frame holds, so it comes in pages.
#[test]
fn sapperctl_routes_lists_five_thousand_routes() {
    let topo = entry_with_rogue(
        &[],
        &[
            "[netd.limits]",
            "max_routes = 10000",
            "max_routes_per_peer = 10000",
        ],
        &["flood-routes", "5", "hold", "60"],
    );
    let routes = wait_until("5120 routes from the rogue", WAIT, || {
        let v = topo.ctl_json(Node::Entry, &["routes"]).ok()?;
        let r = v["routes"].as_array()?.clone();
        (r.iter().filter(|x| x["peer"] == "rogue").count() >= 5120).then_some(r)
    })
    .unwrap_or_else(|e| panic!("{e}: {:?}", topo.ctl_json(Node::Entry, &["routes"]).err()));
    // Each once, and the exit's too.
    let mut prefixes: Vec<&str> = routes.iter().filter_map(|r| r["prefix"].as_str()).collect();
    let n = prefixes.len();
    prefixes.sort();
    prefixes.dedup();
    assert_eq!(prefixes.len(), n, "a route listed twice");
    assert!(prefixes.contains(&PRIVATE_NET));
    let out = topo.ctl(Node::Entry, &["routes"]);
    assert!(out.status.success(), "sapperctl routes: {out:?}");
    let lines = String::from_utf8_lossy(&out.stdout).lines().count();
    assert!(lines > 5120, "the table has {lines} lines");
    let out = topo.ctl(Node::Entry, &["peers"]);
    assert!(out.status.success(), "sapperctl peers: {out:?}");
}

/// The underlay is kept current: an announced route installed on the TUN
/// is taken off it once an interface whose network it covers appears on
/// the entry after start (netd re-reads the routing tables, past its
/// sandbox), while a harmless one stays.
#[test]
fn an_interface_added_after_start_is_never_covered() {
    let mut topo = entry_with_rogue(
        &["auto_routes = true"],
        &[],
        &[
            "--announce",
            "10.66.0.0/24",
            "--announce",
            "10.77.0.0/24",
            "hold",
            "60",
        ],
    );
    wait_until("both routes on the entry's TUN", WAIT, || {
        let r = topo.entry.ip(&["route", "show", "dev", "sap0"]);
        (r.contains("10.66.0.0/24") && r.contains("10.77.0.0/24")).then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}: {}", topo.entry.ip(&["route", "show"])));
    // A new interface on the entry, in the network of the first route.
    topo.entry
        .ip(&["link", "add", "un0", "type", "veth", "peer", "name", "un1"]);
    topo.entry
        .ip(&["addr", "add", "10.66.0.1/24", "dev", "un0"]);
    topo.entry.ip(&["link", "set", "un0", "up"]);
    topo.entry.ip(&["link", "set", "un1", "up"]);
    wait_until("the covering route to leave the TUN", WAIT, || {
        let r = topo.entry.ip(&["route", "show", "dev", "sap0"]);
        (!r.contains("10.66.0.0/24")).then_some(())
    })
    .unwrap_or_else(|e| {
        panic!(
            "{e}: {}\n{}",
            topo.entry.ip(&["route", "show"]),
            topo.dump_logs()
        )
    });
    let r = topo.entry.ip(&["route", "show", "dev", "sap0"]);
    assert!(
        r.contains("10.77.0.0/24"),
        "the harmless route went too: {r}"
    );
    assert!(
        topo.netd(Node::Entry)
            .stderr_text()
            .contains("the underlay changed"),
        "netd did not notice the new interface"
    );
    topo.assert_daemons_alive();
}

/// QUIC address validation under pressure: idle WebSocket connections fill
/// more than half of the exit's pre-auth gate (`max_preauth = 16`), so the
/// honest entry's next QUIC dial is asked to Retry; it proves its address,
/// connects, and the exit counts the Retry (`sapper_quic_retries_total`).
#[test]
fn quic_retry_under_preauth_pressure() {
    let mut topo = Topology::start(Options::new(Transport::Quic).extra(
        Node::Exit,
        &[
            "[[netd.listen]]",
            "transport = \"ws\"",
            "address = \"0.0.0.0:8443\"",
            "ws_path = \"/sapper\"",
            "",
            "[netd.limits]",
            "max_preauth = 16",
            "max_preauth_per_ip = 16",
            "",
            "[netd.metrics]",
            "listen = \"127.0.0.1:9477\"",
        ],
    ));
    topo.wait_for_tunnel();
    let scrape = |topo: &Topology| -> String {
        let out = topo
            .exit
            .cmd("bash")
            .args([
                "-c",
                "exec 3<>/dev/tcp/127.0.0.1/9477 && printf 'GET /metrics HTTP/1.0\\r\\n\\r\\n' >&3 && timeout 5 cat <&3",
            ])
            .output()
            .expect("scrape");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let retries = |body: &str| -> u64 {
        body.lines()
            .find_map(|l| l.strip_prefix("sapper_quic_retries_total "))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no sapper_quic_retries_total in:\n{body}"))
    };
    assert_eq!(retries(&scrape(&topo)), 0, "a Retry without pressure");
    topo.entry.ip(&[
        "addr",
        "add",
        &format!("{ROGUE_UNDERLAY}/24"),
        "dev",
        "ve-x",
    ]);
    let target = format!("{EXIT_UNDERLAY}:8443");
    let args = [
        "idle",
        target.as_str(),
        "10",
        "30",
        "--bind",
        ROGUE_UNDERLAY,
    ];
    let refs: Vec<&OsStr> = args.iter().map(OsStr::new).collect();
    topo.spawn("rogue-idle", Node::Entry, &tool("sapper-rogue"), &refs);
    wait_until("the idle connections to be open", WAIT, || {
        rogue_log(&topo, "rogue-idle")
            .lines()
            .find(|l| l.starts_with("opened=10"))
            .map(|_| ())
    })
    .unwrap_or_else(|e| panic!("{e}: {}", rogue_log(&topo, "rogue-idle")));
    wait_until("the exit's gate to be half full", WAIT, || {
        scrape(&topo).lines().find_map(|l| {
            l.strip_prefix("sapper_preauth_connections ")
                .and_then(|v| v.trim().parse::<u64>().ok())
                .filter(|n| *n >= 8)
        })
    })
    .unwrap_or_else(|e| panic!("{e}:\n{}", scrape(&topo)));
    let before =
        peer_named(&topo, Node::Exit, "entry").expect("entry linked")["connected_at"].clone();
    // (connected_at counts seconds: the new link's must differ.)
    std::thread::sleep(Duration::from_millis(1100));
    let out = topo.ctl(Node::Entry, &["disconnect", "exit"]);
    assert!(out.status.success(), "disconnect: {out:?}");
    wait_until("the entry to be back over QUIC", WAIT, || {
        peer_named(&topo, Node::Exit, "entry").filter(|p| p["connected_at"] != before)
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", topo.dump_logs()));
    let n = retries(&scrape(&topo));
    assert!(n >= 1, "the entry connected without a Retry ({n})");
    let out = topo.ping(&topo.entry, PRIVATE_HOST, 2, 2);
    assert!(out.status.success(), "ping after the Retry failed");
    topo.assert_daemons_alive();
}
