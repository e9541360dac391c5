//! Post-quantum key exchange end to end (issue 17): real daemons in network
//! namespaces, once over QUIC and once over WebSocket. What `sapperctl
//! --json peers` shows on both ends, what the handshake_accepted event logs,
//! and who refuses whom for each `netd.tls.key_exchange` pairing. The exit
//! listens, the entry dials. Needs root.

use sapper_tests::{Node, Options, Topology, Transport};
use serde_json::Value;
use std::time::Duration;

use sapper_tests::per_transport;

const HYBRID: &str = "X25519MLKEM768";
const CLASSIC: &str = "X25519";
/// The first of netd's fixed suites, which both ends prefer.
const SUITE: &str = "TLS13_AES_256_GCM_SHA384";

/// The other node as `node` lists it in `sapperctl --json peers`.
fn peer(topo: &Topology, node: Node) -> Value {
    let want = node.other().as_str();
    topo.peers(node)
        .unwrap_or_else(|e| panic!("{e}"))
        .into_iter()
        .find(|p| p["name"] == want)
        .unwrap_or_else(|| panic!("{} does not list peer {want}", node.as_str()))
}

/// Starts both nodes with the given settings (None: the default) and
/// checks that the link comes up with `group`, TLS 1.3 and [`SUITE`] on both
/// ends, in peers and in the handshake_accepted log line.
fn connects_with(t: Transport, entry: Option<&str>, exit: Option<&str>, group: &str) {
    let mut opts = Options::new(t);
    if let Some(kx) = entry {
        opts = opts.key_exchange(Node::Entry, kx);
    }
    if let Some(kx) = exit {
        opts = opts.key_exchange(Node::Exit, kx);
    }
    let mut topo = Topology::start(opts);
    topo.wait_for_peers();
    for node in [Node::Entry, Node::Exit] {
        let p = peer(&topo, node);
        let tls = &p["tls"];
        let what = format!("{}'s peer: {p}", node.as_str());
        assert_eq!(p["transport"], t.as_str(), "{what}");
        assert_eq!(tls["version"], "TLSv1.3", "{what}");
        assert_eq!(tls["kx_group"], group, "{what}");
        assert_eq!(tls["cipher_suite"], SUITE, "{what}");
        let label = format!("{}-netd", node.as_str());
        topo.wait_for_log(
            &label,
            &format!("tls_version=TLSv1.3 tls_cipher_suite={SUITE} tls_kx_group={group}"),
            Duration::from_secs(5),
        );
    }
    // The table shows the same.
    let out = topo.ctl(Node::Entry, &["peers"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("KEY EXCHANGE"), "{text}");
    assert!(
        text.contains(&format!("TLSv1.3 {SUITE}  {group}")),
        "{text}"
    );
    topo.assert_daemons_alive();
}

/// Starts both nodes; the listener (exit) must refuse the dialler's TLS
/// handshake, log the group the dialler offered, and neither side may list
/// a peer.
fn refused(t: Transport, entry: &str, exit: &str, offered: &str, accepted: &str) {
    let opts = Options::new(t)
        .key_exchange(Node::Entry, entry)
        .key_exchange(Node::Exit, exit);
    let mut topo = Topology::start(opts);
    let wait = Duration::from_secs(20);
    topo.wait_for_log(
        "exit-netd",
        &format!(
            "refused: the peer offered key-exchange groups [{offered}] and this node accepts only [{accepted}]"
        ),
        wait,
    );
    topo.wait_for_log("exit-netd", "sapper_event=\"handshake_refused\"", wait);
    // The dialler says the listener refused and what it offered.
    topo.wait_for_log(
        "entry-netd",
        &format!(
            "the peer refused the TLS handshake (alert handshake_failure: no key-exchange group or cipher suite in common); this node offered key-exchange groups [{offered}]"
        ),
        wait,
    );
    // It keeps retrying, and keeps being refused: give it a few rounds.
    std::thread::sleep(Duration::from_millis(1500));
    for node in [Node::Entry, Node::Exit] {
        let peers = topo.peers(node).unwrap_or_else(|e| panic!("{e}"));
        assert!(peers.is_empty(), "{} lists peers: {peers:?}", node.as_str());
    }
    let stats = topo
        .ctl_json(Node::Exit, &["stats"])
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        stats["handshake_failures"].as_u64().unwrap_or(0) >= 1,
        "the refusal is counted: {stats}"
    );
    topo.assert_daemons_alive();
}

/// Defaults on both ends: the hybrid group.
fn hybrid_by_default(t: Transport) {
    connects_with(t, None, None, HYBRID);
}
per_transport!(hybrid_by_default);

/// Allowing classical groups on both ends does not downgrade: the dialler
/// lists X25519MLKEM768 first and the listener takes it.
fn classic_allowed_both_still_hybrid(t: Transport) {
    connects_with(t, Some("classic-allowed"), Some("classic-allowed"), HYBRID);
}
per_transport!(classic_allowed_both_still_hybrid);

/// A classic-allowed listener takes a classic-only dialler, with X25519.
fn classic_allowed_listener_takes_classic(t: Transport) {
    connects_with(t, Some("classic-only"), Some("classic-allowed"), CLASSIC);
}
per_transport!(classic_allowed_listener_takes_classic);

/// A classic-allowed dialler reaches a classic-only listener, with X25519.
fn classic_allowed_dialler_takes_classic(t: Transport) {
    connects_with(t, Some("classic-allowed"), Some("classic-only"), CLASSIC);
}
per_transport!(classic_allowed_dialler_takes_classic);

/// A hybrid-only listener refuses a classic-only dialler.
fn hybrid_listener_refuses_classic(t: Transport) {
    refused(t, "classic-only", "hybrid", CLASSIC, HYBRID);
}
per_transport!(hybrid_listener_refuses_classic);

/// A classic-only listener refuses a hybrid-only dialler.
fn classic_listener_refuses_hybrid(t: Transport) {
    refused(t, "hybrid", "classic-only", HYBRID, CLASSIC);
}
per_transport!(classic_listener_refuses_hybrid);
