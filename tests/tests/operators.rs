//! What an operator does on day one, end to end: nodes set up by
//! `sapperctl init` alone, the metrics endpoint, recovery after a restart,
//! reload. Real daemons in network namespaces; needs root.

use sapper_tests::bins::bins;
use sapper_tests::cmd::{run_timeout, WAIT};
use sapper_tests::topology::{EXIT_UNDERLAY, PRIVATE_HOST, PRIVATE_NET};
use sapper_tests::{Node, Options, Topology, Transport};
use serde_json::Value;
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use sapper_tests::per_transport;

fn show(out: &Output) -> String {
    format!(
        "status {}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Runs sapperctl with `args` (not against a daemon), expecting success.
fn sapperctl(args: &[String]) -> Output {
    let mut cmd = Command::new(&bins().ctl);
    cmd.args(args);
    let out = run_timeout(&mut cmd, Duration::from_secs(30)).unwrap_or_else(|e| panic!("{e}"));
    assert!(
        out.status.success(),
        "sapperctl {}:\n{}",
        args.join(" "),
        show(&out)
    );
    out
}

/// A topology with namespaces only; the test writes and starts the nodes.
fn bare(t: Transport) -> Topology {
    let mut topo = Topology::start(Options {
        start_daemons: false,
        ..Options::new(t)
    });
    topo.bins = Some(bins());
    topo
}

/// The node's host-specific init options: where its files go in the test
/// directory, and the unprivileged user of the test topologies.
fn host_args(topo: &Topology, node: Node) -> Vec<String> {
    let d = topo.node_dir(node);
    vec![
        "--dir".into(),
        d.display().to_string(),
        "--state-dir".into(),
        d.join("state").display().to_string(),
        "--run-dir".into(),
        d.display().to_string(),
        "--user".into(),
        "nobody".into(),
    ]
}

/// Starts privd then netd of `node` from its config and waits for their
/// sockets.
fn start_node(topo: &mut Topology, node: Node) {
    let cfg = topo.config_path(node);
    let b = bins();
    let privd = topo.privd_socket(node);
    topo.spawn(
        &format!("{}-privd", node.as_str()),
        node,
        &b.privd,
        &["--config".as_ref(), cfg.as_os_str()],
    );
    topo.wait_for("privd socket", WAIT, || privd.exists().then_some(()));
    topo.spawn(
        &format!("{}-netd", node.as_str()),
        node,
        &b.netd,
        &["--config".as_ref(), cfg.as_os_str()],
    );
    let mgmt = topo.mgmt_socket(node);
    topo.wait_for("netd socket", WAIT, || mgmt.exists().then_some(()));
}

/// What `init exit` reported.
struct Pair {
    exit_report: Value,
}

/// Writes both nodes with `sapperctl init` alone: the exit's init prints
/// the command for the entry; the PSK file is copied (as scp would) and
/// that command runs with the entry's own paths. Starts both.
fn init_pair(topo: &mut Topology, t: Transport) -> Pair {
    let port = if t == Transport::Quic { 4433 } else { 8443 };
    let mut args: Vec<String> = ["--json", "init", "exit", "--transport", t.as_str()]
        .iter()
        .map(|s| s.to_string())
        .collect();
    args.extend(host_args(topo, Node::Exit));
    args.extend([
        "--public-address".into(),
        format!("{EXIT_UNDERLAY}:{port}"),
        "--announce".into(),
        PRIVATE_NET.into(),
    ]);
    let out = sapperctl(&args);
    let report: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("init exit --json: {e}\n{}", show(&out)));
    let exit_dir = topo.node_dir(Node::Exit);
    let psk = std::fs::read(exit_dir.join("psk")).expect("exit psk");
    assert_eq!(psk.len(), 65, "32 bytes as hex plus a newline");
    let mode = |p: &Path| {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(p).map(|m| m.permissions().mode() & 0o777)
    };
    assert_eq!(mode(&exit_dir.join("psk")).ok(), Some(0o600));
    assert_eq!(mode(&exit_dir.join("state/key.pem")).ok(), Some(0o600));

    // The command the exit printed, as the operator would paste it, with
    // the PSK copy where the entry keeps it.
    let cmd: Vec<String> = report["entry_command"]
        .as_array()
        .unwrap_or_else(|| panic!("no entry_command: {report}"))
        .iter()
        .map(|v| v.as_str().unwrap_or_default().to_string())
        .collect();
    assert_eq!(cmd.first().map(String::as_str), Some("sapperctl"));
    let entry_dir = topo.node_dir(Node::Entry);
    std::fs::create_dir_all(&entry_dir).expect("entry dir");
    let copy = entry_dir.join("psk.copy");
    std::fs::write(&copy, &psk).expect("copy psk");
    let mut entry_args: Vec<String> = Vec::new();
    let mut it = cmd.into_iter().skip(1);
    while let Some(a) = it.next() {
        if a == "--psk-from" {
            it.next();
            entry_args.push(a);
            entry_args.push(copy.display().to_string());
        } else {
            entry_args.push(a);
        }
    }
    entry_args.extend(host_args(topo, Node::Entry));
    sapperctl(&entry_args);
    assert_eq!(
        std::fs::read(entry_dir.join("psk")).expect("entry psk"),
        psk,
        "the entry's PSK file is the exit's"
    );
    start_node(topo, Node::Exit);
    start_node(topo, Node::Entry);
    Pair {
        exit_report: report,
    }
}

/// Two nodes brought up from `sapperctl init` output alone carry a ping.
fn init_alone(t: Transport) {
    let mut topo = bare(t);
    let pair = init_pair(&mut topo, t);
    topo.wait_for_tunnel();
    let out = topo.ping(&topo.entry, PRIVATE_HOST, 3, 2);
    assert!(
        out.status.success(),
        "ping through the tunnel: {}",
        show(&out)
    );
    // The pinned fingerprint is the one the running exit reports.
    let st = topo.ctl_json(Node::Exit, &["status"]).expect("exit status");
    assert_eq!(st["cert_fingerprint"], pair.exit_report["fingerprint"]);
}
per_transport!(init_alone);

/// One `ping -c 1 -W 0.2` from E to P (`ns`: E's namespace).
fn quick_ping(ns: &str) -> bool {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", ns, "ping"]);
    cmd.args(["-n", "-q", "-c", "1", "-W", "0.2", PRIVATE_HOST]);
    run_timeout(&mut cmd, Duration::from_secs(5)).is_ok_and(|o| o.status.success())
}

/// kill -9 of one netd and an immediate restart: how long until a ping from
/// E reaches P again (printed, not judged; the deadline is for liveness).
/// Default timers (`init` writes none): 1 s pings, 5 missed.
fn restart_recovery(t: Transport) {
    let mut topo = bare(t);
    init_pair(&mut topo, t);
    topo.wait_for_tunnel();
    let mut figures = Vec::new();
    let ns = topo.entry.name().to_string();
    for side in [Node::Exit, Node::Entry] {
        let label = format!("{}-netd", side.as_str());
        let cfg = topo.config_path(side);
        // The survivor keeps sending (pings, keepalives) to the dead node.
        std::thread::sleep(Duration::from_millis(300));
        let start = std::time::Instant::now();
        topo.kill(&label);
        topo.spawn(
            &label,
            side,
            &bins().netd,
            &["--config".as_ref(), cfg.as_os_str()],
        );
        topo.wait_for(
            &format!(
                "a ping E -> P after restarting the {}'s netd",
                side.as_str()
            ),
            Duration::from_secs(30),
            || quick_ping(&ns).then_some(()),
        );
        let back = start.elapsed();
        figures.push((side, back));
        println!(
            "{}: traffic back {} ms after kill -9 + restart of the {}'s netd",
            t.as_str(),
            back.as_millis(),
            side.as_str()
        );
        // Settle before the next round.
        topo.wait_for_peers();
    }
    if t == Transport::Quic {
        // The entry's stale connection to the killed exit ended by the
        // restarted exit's stateless reset (the key persisted in
        // state_dir), not by missed pings.
        let log = topo.daemon("entry-netd (killed)").stderr_text();
        assert!(
            log.contains("reset by peer"),
            "the entry's link to the restarted exit did not end by a stateless reset:\n{log}"
        );
        // The restarted entry dials from a new port, where no reset can
        // reach the exit's stale connection: the exit replaces that link
        // when the entry's new one is up.
        let log = topo.daemon("exit-netd").stderr_text();
        assert!(
            log.contains("peer_replaced"),
            "the exit did not replace the restarted entry's stale link:\n{log}"
        );
        let key = topo.node_dir(Node::Exit).join("state/quic-reset-key");
        let meta = std::fs::metadata(&key).expect("reset key file");
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        assert_eq!(meta.len(), 32);
    }
    for (side, back) in figures {
        eprintln!(
            "figure {} {}: {} ms",
            t.as_str(),
            side.as_str(),
            back.as_millis()
        );
    }
}
per_transport!(restart_recovery);
