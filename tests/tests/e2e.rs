//! End-to-end tests: real `sapper-privd` and `sapper-netd` in network
//! namespaces, real packets. Each scenario runs once over QUIC and once over
//! WebSocket (`<scenario>::quic`, `<scenario>::ws`). Needs root.
//!
//! Topology (see `sapper_tests::topology`): E=entry, X=exit, P=private
//! network behind X with no default route, so P's replies reach E only
//! through the exit's masquerade.

use sapper_tests::bins::tool;
use sapper_tests::cmd::{run_timeout, WAIT};
use sapper_tests::topology::{PRIVATE_HOST, TUN_NAME};
use sapper_tests::{Node, Options, Topology, Transport};
use serde_json::Value;
use std::os::unix::process::CommandExt;
use std::process::{Command, Output};
use std::time::Duration;

/// Bytes pushed through the tunnel by the transfer tests.
const TRANSFER_BYTES: u64 = 4 * 1024 * 1024 + 123;

macro_rules! per_transport {
    ($scenario:ident) => {
        mod $scenario {
            #[test]
            fn quic() {
                super::$scenario(sapper_tests::Transport::Quic);
            }
            #[test]
            fn ws() {
                super::$scenario(sapper_tests::Transport::Ws);
            }
        }
    };
}

fn show(out: &Output) -> String {
    format!(
        "status {}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The peer named `name` in `node`'s `sapperctl peers --json`.
fn peer(topo: &Topology, node: Node, name: &str) -> Value {
    let peers = topo.peers(node).unwrap_or_else(|e| panic!("{e}"));
    peers
        .into_iter()
        .find(|p| p["name"] == name)
        .unwrap_or_else(|| panic!("{} does not list peer {name}", node.as_str()))
}

/// Ping and a checksummed TCP transfer E → P through the tunnel, plus what
/// sapperctl reports about it.
fn ping_and_transfer(topo: &mut Topology, t: Transport) {
    topo.wait_for_tunnel();

    let out = topo.ping(&topo.entry, PRIVATE_HOST, 3, 2);
    assert!(
        out.status.success(),
        "ping -c 3 -W 2 {PRIVATE_HOST} from E failed:\n{}",
        show(&out)
    );

    let (sent, received) = topo.blast(Node::Entry, "private", PRIVATE_HOST, TRANSFER_BYTES);
    assert_eq!(sent.bytes, TRANSFER_BYTES, "sender did not send everything");
    assert_eq!(
        sent, received,
        "data through the tunnel differs from what was sent"
    );

    // What the management socket says about the link.
    let p = peer(topo, Node::Entry, "exit");
    assert_eq!(p["transport"], t.as_str(), "entry's peer entry: {p}");
    for key in ["bytes_out", "packets_out", "bytes_in", "packets_in"] {
        let n = p[key].as_u64().unwrap_or(0);
        assert!(n > 0, "entry's peer shows {key} = {}: {p}", p[key]);
    }
    assert!(
        p["bytes_out"].as_u64().unwrap_or(0) >= TRANSFER_BYTES,
        "entry sent {TRANSFER_BYTES} bytes through the tunnel but counts {}",
        p["bytes_out"]
    );
    let p = peer(topo, Node::Exit, "entry");
    assert_eq!(p["transport"], t.as_str(), "exit's peer entry: {p}");

    let status = topo
        .ctl_json(Node::Entry, &["status"])
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(status["name"], "entry", "status: {status}");
    assert_eq!(status["peer_count"], 1, "status: {status}");
    assert_eq!(status["tun"]["name"], TUN_NAME, "status: {status}");
    assert_eq!(status["tun"]["mtu"], 1280, "status: {status}");

    // The human-readable forms work too.
    for what in ["status", "peers"] {
        let out = topo.ctl(Node::Entry, &[what]);
        assert!(out.status.success(), "sapperctl {what}:\n{}", show(&out));
        assert!(!out.stdout.is_empty(), "sapperctl {what} printed nothing");
    }
    topo.assert_daemons_alive();
}

/// (a) The standard topology: the exit listens, the entry connects.
fn tunnel(t: Transport) {
    let mut topo = Topology::start(Options::new(t));
    ping_and_transfer(&mut topo, t);
}
per_transport!(tunnel);

/// The roles do not depend on who dials: the entry listens, the exit
/// connects, and traffic still flows E → P.
fn entry_listens(t: Transport) {
    let mut topo = Topology::start(Options::new(t).listener(Node::Entry));
    ping_and_transfer(&mut topo, t);
    let p = peer(&topo, Node::Exit, "entry");
    assert_eq!(p["outbound"], true, "the exit dialled: {p}");
}
per_transport!(entry_listens);

/// (b) netd runs without root and without capabilities, in every thread.
fn netd_unprivileged(t: Transport) {
    let mut topo = Topology::start(Options::new(t));
    // Once peers are up netd is long past its privilege drop.
    topo.wait_for_peers();
    for node in [Node::Entry, Node::Exit] {
        let pid = topo.netd(node).pid();
        let tasks = std::fs::read_dir(format!("/proc/{pid}/task"))
            .unwrap_or_else(|e| panic!("netd {pid} of {} is gone: {e}", node.as_str()));
        let mut checked = 0;
        for task in tasks.flatten() {
            let path = task.path().join("status");
            let Ok(status) = std::fs::read_to_string(&path) else {
                continue; // the thread just exited
            };
            let field = |name: &str| {
                status
                    .lines()
                    .find(|l| l.starts_with(name))
                    .unwrap_or_else(|| panic!("no {name} in {}", path.display()))
                    .to_string()
            };
            let uid = field("Uid:");
            assert!(
                uid.split_whitespace().skip(1).all(|u| u != "0"),
                "{} netd ({}) still has uid 0: {uid}",
                node.as_str(),
                path.display()
            );
            let cap = field("CapEff:");
            assert_eq!(
                cap,
                "CapEff:\t0000000000000000",
                "{} netd ({}) has effective capabilities",
                node.as_str(),
                path.display()
            );
            checked += 1;
        }
        assert!(checked > 0, "no thread of netd {pid} could be read");
    }
    topo.assert_daemons_alive();
}
per_transport!(netd_unprivileged);

/// (c) Different PSKs: both sides reject the handshake, nobody becomes a
/// peer, and no packet crosses.
fn psk_mismatch(t: Transport) {
    let mut topo = Topology::start(Options::new(t).mismatched_psk());
    topo.wait_for_log("entry-netd", "handshake rejected", WAIT);
    topo.wait_for_log("exit-netd", "handshake rejected", WAIT);
    for node in [Node::Entry, Node::Exit] {
        let peers = topo.peers(node).unwrap_or_else(|e| panic!("{e}"));
        assert!(
            peers.is_empty(),
            "{} lists peers despite the PSK mismatch: {peers:?}",
            node.as_str()
        );
    }
    let out = topo.ping(&topo.entry, PRIVATE_HOST, 3, 2);
    assert!(
        !out.status.success(),
        "ping reached P with mismatched PSKs:\n{}",
        show(&out)
    );
    topo.assert_daemons_alive();
}
per_transport!(psk_mismatch);

use sapper_tests::gid_of;

/// (d) privd serves netd's uid only: a process of another uid that can
/// reach the socket (it is in the socket's group) is refused and audited.
fn privd_refuses_other_uid(t: Transport) {
    let mut topo = Topology::start(Options::new(t));
    topo.wait_for_peers();
    let socket = topo.privd_socket(Node::Entry);
    let mut cmd = Command::new(tool("sapper-privd-probe"));
    // Group nogroup so the socket's 0660 mode lets the connection through
    // and privd's own uid check is what refuses.
    cmd.arg(&socket).uid(4242).gid(gid_of("nogroup"));
    let out = run_timeout(&mut cmd, Duration::from_secs(15)).unwrap_or_else(|e| panic!("{e}"));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "probe failed:\n{}", show(&out));
    assert!(
        stdout.starts_with("outcome=") && !stdout.contains("outcome=granted"),
        "privd granted a TUN to uid 4242: {stdout}"
    );
    topo.wait_for_log("entry-privd", "refused", WAIT);
    let audit = topo.privd(Node::Entry).stderr_text();
    let line = audit
        .lines()
        .find(|l| l.contains("refused") && l.contains("4242"))
        .unwrap_or_else(|| panic!("privd logged no refusal naming uid 4242; its stderr:\n{audit}"));
    eprintln!("probe: {}; audit: {line}", stdout.trim());
    // netd, the legitimate client, is unaffected.
    topo.assert_daemons_alive();
    assert!(
        !topo.peers(Node::Entry).unwrap_or_default().is_empty(),
        "entry lost its peer after the refused request"
    );
}
per_transport!(privd_refuses_other_uid);
