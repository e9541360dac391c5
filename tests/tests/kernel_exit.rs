//! The kernel exit's nft chains (privd's `table inet sapper`): what arrives
//! on the exit's TUN is forwarded only from `[privd.nat] sources`, and never
//! reaches the exit host itself but ping. Real privd and netd in namespaces, real
//! packets. Needs root.
//!
//! The exit's sources are narrowed to the entry's own tunnel address
//! (10.99.0.1/32); the entry gets a second address on its TUN, 10.99.0.77,
//! that netd carries (it is inside the entry's tunnel network) but the exit
//! does not masquerade.

use sapper_tests::cmd::{run_timeout, WAIT};
use sapper_tests::topology::{EXIT_PRIVATE, PRIVATE_HOST, TUN_NAME};
use sapper_tests::{Node, Options, Topology, Transport};
use std::ffi::OsStr;
use std::process::Output;
use std::time::{Duration, Instant};

/// An address on the entry's TUN outside the exit's sources.
const SPARE: &str = "10.99.0.77";
/// The exit's tunnel address (the topology's).
const EXIT_TUN: &str = "10.99.0.2";
const PORT: &str = "5001";

fn show(out: &Output) -> String {
    format!(
        "status {}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Runs `args` in `ns` with a time limit.
fn in_ns(topo: &Topology, node: Option<Node>, args: &[&str], limit: Duration) -> Output {
    let ns = node.map_or(&topo.private, |n| topo.ns(n));
    let mut cmd = ns.cmd(args[0]);
    cmd.args(&args[1..]);
    run_timeout(&mut cmd, limit).unwrap_or_else(|e| panic!("{e}"))
}

/// A TCP connect to `addr:PORT` from `node` (None: the private host), with
/// bash's /dev/tcp under a 3 s limit; true when it connected.
fn connects(topo: &Topology, node: Option<Node>, addr: &str) -> bool {
    let script = format!("exec 3<>/dev/tcp/{addr}/{PORT}");
    let args = ["timeout", "3", "bash", "-c", &script];
    in_ns(topo, node, &args, Duration::from_secs(10))
        .status
        .success()
}

/// Echo requests that reached the private host, by its own nft counter.
fn private_echo_requests(topo: &Topology) -> u64 {
    let args = ["nft", "list", "chain", "inet", "probe", "input"];
    let out = in_ns(topo, None, &args, WAIT);
    assert!(out.status.success(), "{}", show(&out));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.split_whitespace()
        .skip_while(|w| *w != "packets")
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no counter in {text}"))
}

#[test]
fn kernel_exit_forwards_only_sources_and_keeps_the_host_closed() {
    let mut opts = Options::new(Transport::Quic);
    opts.exit_nat_lines = vec!["sources = [\"10.99.0.1/32\", \"fd99::1/128\"]".to_string()];
    let mut topo = Topology::start(opts);
    let hook = "{ type filter hook input priority 0; }";
    for rule in [
        &["add", "table", "inet", "probe"][..],
        &["add", "chain", "inet", "probe", "input", hook],
        &[
            "add",
            "rule",
            "inet",
            "probe",
            "input",
            "icmp",
            "type",
            "echo-request",
            "counter",
        ],
    ] {
        let out = in_ns(&topo, None, &[&["nft"], rule].concat(), WAIT);
        assert!(out.status.success(), "{}", show(&out));
    }

    // (c) From a source: reaches P (wait_for_tunnel pings it), masqueraded.
    topo.wait_for_tunnel();
    let out = topo.ping(&topo.entry, PRIVATE_HOST, 3, 2);
    assert!(out.status.success(), "ping E → P:\n{}", show(&out));
    let before = private_echo_requests(&topo);
    assert!(before >= 3, "P counted {before} echo requests");

    // (a) From the entry's spare address: netd carries it (the exit's netd
    // drops no source), the exit's forward chain does not.
    topo.entry
        .ip(&["addr", "add", &format!("{SPARE}/24"), "dev", TUN_NAME]);
    let out = in_ns(
        &topo,
        Some(Node::Entry),
        &[
            "ping",
            "-n",
            "-c",
            "3",
            "-W",
            "1",
            "-I",
            SPARE,
            PRIVATE_HOST,
        ],
        WAIT,
    );
    assert!(!out.status.success(), "ping from {SPARE}:\n{}", show(&out));
    let after = private_echo_requests(&topo);
    assert_eq!(
        after, before,
        "echo requests from {SPARE}, outside the exit's sources, reached P"
    );

    // (b) A service on the exit host: not reachable through the tunnel,
    // neither on its private nor on its tunnel address; reachable from P.
    let blast = topo.blast_bin.clone();
    let bind = format!("0.0.0.0:{PORT}");
    let args: Vec<&OsStr> = ["serve", &bind, "--timeout", "60"]
        .into_iter()
        .map(OsStr::new)
        .collect();
    topo.spawn("exit-service", Node::Exit, &blast, &args);
    let deadline = Instant::now() + WAIT;
    while !topo
        .daemon("exit-service")
        .stdout_text()
        .contains("listening")
    {
        assert!(
            Instant::now() < deadline,
            "the exit's service never listened"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    for addr in [EXIT_PRIVATE, EXIT_TUN] {
        assert!(
            !connects(&topo, Some(Node::Entry), addr),
            "the entry reached the exit host's service at {addr}:{PORT} through the tunnel"
        );
    }
    // The service was there all along (it serves one connection).
    assert!(
        connects(&topo, None, EXIT_PRIVATE),
        "P cannot reach the exit's service"
    );
    // Echo requests are the one thing the host answers (diagnostics).
    let out = topo.ping(&topo.entry, EXIT_TUN, 2, 2);
    assert!(out.status.success(), "ping E → exit's TUN:\n{}", show(&out));

    // Only the chains refused these: netd passed every packet on.
    let peers = topo.peers(Node::Exit).unwrap_or_else(|e| panic!("{e}"));
    let entry = peers.iter().find(|p| p["name"] == "entry").expect("entry");
    assert_eq!(entry["source_drops"], 0, "{entry}");
    // And sources still get through after all that.
    let out = topo.ping(&topo.entry, PRIVATE_HOST, 2, 2);
    assert!(out.status.success(), "ping E → P again:\n{}", show(&out));
    topo.assert_daemons_alive();
}
