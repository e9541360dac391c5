//! End-to-end tests: real `sapper-privd` and `sapper-netd` in network
//! namespaces, real packets. Each scenario runs once over QUIC and once over
//! WebSocket (`<scenario>::quic`, `<scenario>::ws`). Needs root.
//!
//! Topology (see `sapper_tests::topology`): E=entry, X=exit, P=private
//! network behind X with no default route, so P's replies reach E only
//! through the exit's masquerade.

use sapper_tests::bins::tool;
use sapper_tests::cmd::{run_timeout, wait_until, WAIT};
use sapper_tests::privs;
use sapper_tests::topology::{PRIVATE_HOST, PRIVATE_NET, TUN_NAME};
use sapper_tests::{Node, Options, Topology, Transport};
use serde_json::Value;
use std::os::unix::process::CommandExt;
use std::process::{Command, Output};
use std::time::Duration;

/// Bytes pushed through the tunnel by the transfer tests.
const TRANSFER_BYTES: u64 = 4 * 1024 * 1024 + 123;

/// The uid netd drops to in the test topologies (`user = "nobody"`).
const NOBODY: u32 = 65534;

use sapper_tests::per_transport;

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

/// (b) netd runs as nobody:nogroup with no capability, no other group,
/// no_new_privs and its seccomp filter, in every thread; privd is its own
/// user with exactly CAP_NET_ADMIN and its own seccomp filter.
fn netd_unprivileged(t: Transport) {
    let mut topo = Topology::start(Options::new(t));
    // Once peers are up netd is long past its privilege drop.
    topo.wait_for_peers();
    let nogroup = gid_of("nogroup");
    for node in [Node::Entry, Node::Exit] {
        let what = format!("{} netd", node.as_str());
        let n = privs::assert_privileges(
            topo.netd(node).pid(),
            &privs::Expected::netd(NOBODY, nogroup),
            &what,
        );
        eprintln!("{what}: {n} threads checked");
        // privd is started by hand as root: once set up it is its own user
        // (privd.user, here the default sapper-privd) with exactly
        // CAP_NET_ADMIN, no_new_privs and its own seccomp filter.
        let what = format!("{} privd", node.as_str());
        let (uid, gid) = sapper_tests::privd_user();
        let want = privs::Expected {
            uid,
            gid,
            groups: vec![gid],
            caps: privs::CAP_NET_ADMIN,
            bounding: Some(privs::CAP_NET_ADMIN),
            no_new_privs: true,
            seccomp: 2,
        };
        let n = privs::assert_privileges(topo.privd(node).pid(), &want, &what);
        eprintln!("{what}: {n} threads checked");
    }
    topo.assert_daemons_alive();
}
per_transport!(netd_unprivileged);

/// (c) Different PSKs: each side refuses the other's proof itself (its own
/// `handshake_refused` event names the proof, whatever the other side said
/// when it closed), counts the failure, and accepts nothing; nobody becomes
/// a peer, and no packet crosses.
fn psk_mismatch(t: Transport) {
    let mut topo = Topology::start(Options::new(t).mismatched_psk());
    for node in [Node::Entry, Node::Exit] {
        let label = format!("{}-netd", node.as_str());
        let line = topo.wait_for_log_line(
            &label,
            &[
                "sapper_event=\"handshake_refused\"",
                "PSK proof did not verify",
            ],
            WAIT,
        );
        eprintln!("{label}: {line}");
    }
    // The entry redials with backoff the whole time; for the next seconds
    // every look must show no peer, on both sides (a single snapshot could
    // fall between an accepted handshake and its link going down again).
    let window = std::time::Instant::now() + Duration::from_secs(3);
    while std::time::Instant::now() < window {
        for node in [Node::Entry, Node::Exit] {
            let peers = topo.peers(node).unwrap_or_else(|e| panic!("{e}"));
            assert!(
                peers.is_empty(),
                "{} lists peers despite the PSK mismatch: {peers:?}",
                node.as_str()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = topo.ping(&topo.entry, PRIVATE_HOST, 3, 2);
    assert!(
        !out.status.success(),
        "ping reached P with mismatched PSKs:\n{}",
        show(&out)
    );
    for node in [Node::Entry, Node::Exit] {
        let log = topo.netd(node).stderr_text();
        assert!(
            !log.contains("handshake_accepted"),
            "{} netd accepted a handshake with the wrong PSK:\n{log}",
            node.as_str()
        );
        let stats = topo
            .ctl_json(node, &["stats"])
            .unwrap_or_else(|e| panic!("{e}"));
        let failures = stats["handshake_failures"]
            .as_u64()
            .unwrap_or_else(|| panic!("no handshake_failures in {stats}"));
        assert!(
            failures >= 1,
            "{} counts no handshake failure: {stats}",
            node.as_str()
        );
    }
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
    // Exactly a refusal from privd itself: not a connection the socket's
    // mode refused, not a hang-up, not a grant.
    assert!(
        stdout.starts_with("outcome=refused ") && stdout.contains("permission denied"),
        "privd did not answer uid 4242 with a permission-denied refusal: {stdout}"
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

/// Two links to the same peer (the entry dials the exit over QUIC and over
/// WebSocket): one peer, not two. Packets go out on the link that owns the
/// route and may come back on either link, so a ping and a transfer lose
/// nothing; when the link carrying the routes goes away, its twin takes
/// them over and the tunnel keeps working.
#[test]
fn two_links_to_one_peer() {
    let mut topo = Topology::start(Options::new(Transport::Quic).extra(
        Node::Exit,
        &[
            "[[netd.listen]]",
            "transport = \"ws\"",
            "address = \"0.0.0.0:8443\"",
            "ws_path = \"/sapper\"",
        ],
    ));
    topo.wait_for_tunnel();
    // The second link: a WebSocket connect entry (the exit's fingerprint
    // is known only once its certificate exists).
    let fp = topo.ctl_json(Node::Exit, &["status"]).expect("exit status")["cert_fingerprint"]
        .as_str()
        .expect("fingerprint")
        .to_string();
    let cfg = topo.config_path(Node::Entry);
    let text = std::fs::read_to_string(&cfg).expect("entry config");
    let text = text.replacen(
        "\n[privd]\n",
        &format!(
            "\n[[netd.connect]]\ntransport = \"ws\"\naddress = \"{}:8443\"\nserver_name = \"exit\"\nfingerprint = \"{fp}\"\nws_path = \"/sapper\"\n\n[privd]\n",
            sapper_tests::topology::EXIT_UNDERLAY
        ),
        1,
    );
    std::fs::write(&cfg, text).expect("write entry config");
    // Restarted with both connect entries, it dials both at once (the
    // order in which the two links come up may differ between the sides).
    topo.kill("entry-netd");
    topo.spawn(
        "entry-netd",
        Node::Entry,
        &topo.daemon_bins().netd.clone(),
        &["--config".as_ref(), cfg.as_os_str()],
    );
    for node in [Node::Entry, Node::Exit] {
        let want = node.other().as_str();
        wait_until(
            &format!("{} to list two links", node.as_str()),
            WAIT,
            || {
                let peers = topo.peers(node).ok()?;
                let mut ts: Vec<String> = peers
                    .iter()
                    .filter(|p| p["name"] == want)
                    .map(|p| p["transport"].as_str().unwrap_or_default().to_string())
                    .collect();
                ts.sort();
                (ts == ["quic", "ws"]).then_some(())
            },
        )
        .unwrap_or_else(|e| panic!("{e}\n{}", topo.dump_logs()));
    }
    let lossless = |topo: &Topology, target: &str, what: &str| {
        let out = topo
            .entry
            .cmd("ping")
            .args(["-n", "-q", "-i", "0.1", "-c", "30", "-W", "2", target])
            .output()
            .expect("ping");
        let s = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            s.contains("30 packets transmitted, 30 received"),
            "{what}: ping {target} over two links lost packets:\n{s}\n{}",
            topo.dump_logs()
        );
    };
    lossless(&topo, PRIVATE_HOST, "both links up");
    lossless(&topo, "10.99.0.2", "both links up");
    let (sent, received) = topo.blast(Node::Entry, "private", PRIVATE_HOST, TRANSFER_BYTES);
    assert_eq!(sent, received, "a transfer over two links differs");
    // Nothing was dropped as spoofed on either side.
    for node in [Node::Entry, Node::Exit] {
        for p in topo.peers(node).expect("peers") {
            assert_eq!(
                p["source_drops"].as_u64().unwrap_or(0),
                0,
                "{} dropped packets of its own peer as spoofed: {p}",
                node.as_str()
            );
        }
    }
    // The QUIC link dies (its packets are dropped until missed pings end
    // it); the WebSocket link takes over the routes and the tunnel works.
    let nft = |args: &str| {
        let out = topo.entry.cmd("nft").arg(args).output().expect("nft");
        assert!(out.status.success(), "nft {args}: {}", show(&out));
    };
    nft("add table inet twin; add chain inet twin out { type filter hook output priority 0; }; add rule inet twin out udp dport 4433 drop");
    wait_until("the QUIC link to end", WAIT, || {
        let peers = topo.peers(Node::Entry).ok()?;
        (peers.len() == 1 && peers[0]["transport"] == "ws").then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", topo.dump_logs()));
    wait_until("a ping over the remaining link", WAIT, || {
        topo.ping(&topo.entry, PRIVATE_HOST, 1, 1)
            .status
            .success()
            .then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", topo.dump_logs()));
    lossless(&topo, PRIVATE_HOST, "after the QUIC link ended");
    // The remaining link took over what the exit owns (it was on standby).
    let routes = topo.ctl_json(Node::Entry, &["routes"]).expect("routes");
    assert!(
        routes["routes"]
            .as_array()
            .is_some_and(|r| r.iter().any(|r| r["prefix"] == PRIVATE_NET)),
        "the exit's route went with the QUIC link: {routes}"
    );
    topo.assert_daemons_alive();
}
