//! TUN offloads (issue 14): privd opens the TUN with a virtio_net_hdr and
//! TSO/USO (`[privd.tun] offload = true`), netd moves GSO super-packets.
//! Real privd and netd in namespaces, real packets; needs root.
//!
//! Every scenario runs checksummed TCP transfers (`sapper-blast`, IPv4 and
//! IPv6, both directions) and UDP request/response through the tunnel, then
//! checks from the counters that super-packets really were read from and
//! written to the TUNs (`stats` `tun_super_packets_in`/`_out`), that none was
//! refused (`super_packet_drops`), and, on WebSocket links, whether they
//! travelled whole (the average message on the link is larger than the MTU)
//! or cut (never larger). The userspace exit's case is in
//! `userspace_exit.rs` (`offload_traffic`), beside its own harness.

use sapper_tests::bins::tool;
use sapper_tests::chain::{Chain, ChainSpec, NodeSpec};
use sapper_tests::cmd::{run_timeout, wait_until, WAIT};
use sapper_tests::topology::{random_hex, PRIVATE_HOST, TUN_NAME};
use sapper_tests::{Node, Options, Topology, Transport};
use serde_json::Value;
use std::process::{Command, Output};
use std::time::Duration;

/// Bytes of each transfer.
const BYTES: u64 = 4 * 1024 * 1024 + 77;
/// The TUN MTU of both harnesses.
const MTU: u64 = 1280;
const OFFLOAD: &str = "offload = true";
const UDP_PORT: u16 = 7002;

fn show(out: &Output) -> String {
    format!(
        "status {}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn num(v: &Value, key: &str) -> u64 {
    v[key]
        .as_u64()
        .unwrap_or_else(|| panic!("no number {key} in {v}"))
}

/// No super-packet refused, for any reason.
fn assert_no_super_drops(stats: &Value, who: &str) {
    let d = &stats["super_packet_drops"];
    assert!(
        d.as_object().is_some_and(|m| m.is_empty()),
        "{who} dropped super-packets: {stats}"
    );
}

/// What `ethtool -k sap0` says in `cmd`'s namespace.
fn ethtool(mut cmd: Command) -> String {
    cmd.args(["-k", TUN_NAME]);
    let out = run_timeout(&mut cmd, WAIT).unwrap_or_else(|e| panic!("{e}"));
    assert!(out.status.success(), "ethtool -k: {}", show(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The TUN's offloads as netd reports them (`status`) and as the kernel
/// does (`ethtool -k`): on, or all off.
fn assert_offloads(status: &Value, ethtool: &str, on: bool, who: &str) {
    let listed: Vec<&str> = status["tun"]["offloads"]
        .as_array()
        .unwrap_or_else(|| panic!("{who}: no tun.offloads in {status}"))
        .iter()
        .filter_map(Value::as_str)
        .collect();
    let tso = ethtool.contains("tcp-segmentation-offload: on");
    if on {
        for want in ["csum", "tso4", "tso6"] {
            assert!(listed.contains(&want), "{who}: {want} not in {listed:?}");
        }
        assert!(tso, "{who}: TSO off on the TUN:\n{ethtool}");
    } else {
        assert!(listed.is_empty(), "{who}: offloads {listed:?}");
        assert!(!tso, "{who}: TSO on the TUN:\n{ethtool}");
    }
}

/// (bytes, packets) queued to a peer so far, from its `peers` entry.
fn sent(peer: &Value) -> (u64, u64) {
    (num(peer, "bytes_out"), num(peer, "packets_out"))
}

/// Average bytes per packet between two [`sent`] snapshots.
fn average(before: (u64, u64), after: (u64, u64)) -> u64 {
    (after.0 - before.0) / (after.1 - before.1).max(1)
}

/// Waits until `label`'s stdout (a `sapper-probe` server) says it listens.
fn wait_listening(what: &str, stdout: impl Fn() -> String) {
    wait_until(what, WAIT, || stdout().contains("listening").then_some(()))
        .unwrap_or_else(|e| panic!("{e}"));
}

/// `sapper-probe udp-ping ADDR 20` from `cmd`'s namespace must succeed.
fn udp_ping(mut cmd: Command, addr: &str) {
    cmd.args(["udp-ping", addr, "20", "--timeout", "30"]);
    let out = run_timeout(&mut cmd, Duration::from_secs(45)).unwrap_or_else(|e| panic!("{e}"));
    assert!(out.status.success(), "UDP to {addr}: {}", show(&out));
}

/// Entry and exit with offloads on or off each; the exit's host opens the
/// transfer and echo ports to the tunnel (its input chain drops the rest).
fn pair(t: Transport, entry: bool, exit: bool) -> Topology {
    let mut o = Options::new(t);
    // Explicit both ways: the default is on.
    for (i, on) in [entry, exit].into_iter().enumerate() {
        o.tun_lines[i].push(format!("offload = {on}"));
    }
    o.exit_nat_lines = vec![format!("host_ports = [5001, {UDP_PORT}]")];
    Topology::start(o)
}

fn stats(topo: &Topology, node: Node) -> Value {
    topo.ctl_json(node, &["stats"])
        .unwrap_or_else(|e| panic!("{e}"))
}

fn peer(topo: &Topology, node: Node, name: &str) -> Value {
    topo.peers(node)
        .unwrap_or_else(|e| panic!("{e}"))
        .into_iter()
        .find(|p| p["name"] == name)
        .unwrap_or_else(|| panic!("{} does not list {name}", node.as_str()))
}

/// Transfers both ways over IPv4 and IPv6 and UDP echoes, checksums
/// compared. Returns, for the transfers from the entry and from the exit,
/// the average size of what the sender's netd queued to its peer meanwhile
/// (data only: the acknowledgements go the other way).
fn traffic(topo: &mut Topology) -> [u64; 2] {
    topo.wait_for_tunnel();
    let mut avg = [u64::MAX; 2];
    for (from, to, addr) in [
        (Node::Entry, "private", PRIVATE_HOST),
        (Node::Entry, "exit", "[fd99::2]"),
        (Node::Exit, "entry", "10.99.0.1"),
        (Node::Exit, "entry", "[fd99::1]"),
    ] {
        let other = from.other().as_str();
        let before = sent(&peer(topo, from, other));
        let (sent_sum, received) = topo.blast(from, to, addr, BYTES);
        assert_eq!(sent_sum.bytes, BYTES, "{from:?} → {addr}: not all sent");
        assert_eq!(sent_sum, received, "{from:?} → {addr}: data differs");
        let a = average(before, sent(&peer(topo, from, other)));
        eprintln!("{from:?} → {addr}: {a} B per packet on the link");
        avg[from as usize] = avg[from as usize].min(a);
    }
    for addr in ["10.99.0.2", "[fd99::2]"] {
        let addr = format!("{addr}:{UDP_PORT}");
        let mut serve = topo.exit.cmd(tool("sapper-probe"));
        serve.args(["udp-echo-serve", &addr, "--timeout", "120"]);
        let label = format!("udp-echo {addr}");
        topo.spawn_in(&label, serve);
        wait_listening(&label, || topo.daemon(&label).stdout_text());
        udp_ping(topo.entry.cmd(tool("sapper-probe")), &addr);
    }
    avg
}

/// Both TUNs with offloads: super-packets leave both kernels and reach both
/// (joined from a QUIC link's datagrams; whole over WebSocket).
fn both_on(t: Transport) {
    let mut topo = pair(t, true, true);
    let avg = traffic(&mut topo);
    for node in [Node::Entry, Node::Exit] {
        let who = node.as_str();
        let status = topo
            .ctl_json(node, &["status"])
            .unwrap_or_else(|e| panic!("{e}"));
        assert_offloads(&status, &ethtool(topo.ns(node).cmd("ethtool")), true, who);
        let s = stats(&topo, node);
        assert!(
            num(&s, "tun_super_packets_in") > 0,
            "{who} read no super-packet: {s}"
        );
        assert!(
            num(&s, "tun_super_packets_out") > 0,
            "{who} wrote no super-packet: {s}"
        );
        assert_no_super_drops(&s, who);
        let p = peer(&topo, node, node.other().as_str());
        let avg = avg[node as usize];
        match t {
            Transport::Quic => assert!(avg <= MTU, "{who}: {avg} B per datagram"),
            Transport::Ws => assert!(avg > MTU, "{who}: super-packets not whole ({avg} B)"),
        }
        assert_eq!(p["capabilities"]["super_packets"], true, "{p}");
    }
    topo.assert_daemons_alive();
}
sapper_tests::per_transport!(both_on);

/// Offloads on the entry only: the exit reads and writes plain packets and
/// cuts what the entry sends whole over WebSocket; the entry joins the
/// exit's packets.
fn entry_only(t: Transport) {
    let mut topo = pair(t, true, false);
    let avg = traffic(&mut topo);
    let status = topo
        .ctl_json(Node::Exit, &["status"])
        .unwrap_or_else(|e| panic!("{e}"));
    assert_offloads(&status, &ethtool(topo.exit.cmd("ethtool")), false, "exit");
    let status = topo
        .ctl_json(Node::Entry, &["status"])
        .unwrap_or_else(|e| panic!("{e}"));
    assert_offloads(&status, &ethtool(topo.entry.cmd("ethtool")), true, "entry");
    let x = stats(&topo, Node::Exit);
    assert_eq!(num(&x, "tun_super_packets_in"), 0, "{x}");
    assert_eq!(num(&x, "tun_super_packets_out"), 0, "{x}");
    assert_no_super_drops(&x, "exit");
    let e = stats(&topo, Node::Entry);
    assert!(num(&e, "tun_super_packets_in") > 0, "{e}");
    assert!(
        num(&e, "tun_super_packets_out") > 0,
        "the entry joined nothing: {e}"
    );
    assert_no_super_drops(&e, "entry");
    match t {
        Transport::Quic => assert!(avg[0] <= MTU, "{} B per datagram", avg[0]),
        Transport::Ws => assert!(avg[0] > MTU, "not whole ({} B)", avg[0]),
    }
    assert!(
        avg[1] <= MTU,
        "the exit has no super-packets to send: {} B",
        avg[1]
    );
    topo.assert_daemons_alive();
}
sapper_tests::per_transport!(entry_only);

/// entry →`first`→ relay →`second`→ exit, offloads on the entry's and the
/// exit's TUN; the relay has none. Transfers entry → P (IPv4) and exit →
/// entry (IPv4, IPv6), UDP echoes both ways.
fn relay_chain(first: Transport, second: Transport) {
    let psk = random_hex(24);
    let spec = ChainSpec::first(
        NodeSpec::new("entry", 'E')
            .with_privd()
            .tun_line(OFFLOAD)
            .psk(&psk),
    )
    .then(first, NodeSpec::new("relay", 'R').psk(&psk))
    .then(
        second,
        NodeSpec::new("exit", 'X')
            .with_privd()
            .tun_line(OFFLOAD)
            .announce(sapper_tests::chain::PRIVATE_NET)
            .psk(&psk),
    )
    .all_nodes("zero_config = true");
    let mut chain = Chain::start(spec);
    chain.wait_for_roles(
        &[("entry", "entry"), ("relay", "relay"), ("exit", "exit")],
        Duration::from_secs(30),
    );
    wait_until("the entry to reach P", WAIT, || {
        chain
            .ping("entry", sapper_tests::chain::PRIVATE_HOST, 1, 1)
            .status
            .success()
            .then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", chain.dump_logs()));
    let relay_peer = |chain: &Chain, name: &str| {
        chain
            .peers("relay")
            .unwrap_or_else(|e| panic!("{e}"))
            .into_iter()
            .find(|p| p["name"] == name)
            .unwrap_or_else(|| panic!("the relay does not list {name}"))
    };
    // What the relay sends on is whole only where the next hop is a
    // WebSocket peer and the packet came whole (over WebSocket).
    let whole = first == Transport::Ws && second == Transport::Ws;
    for (from, to, addr, next) in [
        (
            "entry",
            "private",
            sapper_tests::chain::PRIVATE_HOST,
            "exit",
        ),
        ("exit", "entry", "10.99.0.1", "entry"),
        ("exit", "entry", "[fd99::1]", "entry"),
    ] {
        let before = sent(&relay_peer(&chain, next));
        let (sent_sum, received) = chain.blast(from, to, addr, BYTES);
        assert_eq!(sent_sum.bytes, BYTES, "{from} → {addr}: not all sent");
        assert_eq!(sent_sum, received, "{from} → {addr}: data differs");
        let avg = average(before, sent(&relay_peer(&chain, next)));
        eprintln!("{from} → {addr}: the relay sent {avg} B per packet on");
        if whole {
            assert!(avg > MTU, "relay → {next}: not whole ({avg} B)");
        } else {
            assert!(avg <= MTU, "relay → {next}: {avg} B");
        }
    }
    for (server, client, addr) in [
        ("entry", "exit", format!("[fd99::1]:{UDP_PORT}")),
        ("entry", "exit", format!("10.99.0.1:{UDP_PORT}")),
    ] {
        let mut serve = chain.ns(server).cmd(tool("sapper-probe"));
        serve.args(["udp-echo-serve", &addr, "--timeout", "120"]);
        let out = chain.dir.join(format!("echo-{}.out", addr.len()));
        let file = std::fs::File::create(&out).expect("echo log");
        let mut child = serve
            .stdout(file)
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start udp-echo-serve");
        wait_listening(&addr, || std::fs::read_to_string(&out).unwrap_or_default());
        udp_ping(chain.ns(client).cmd(tool("sapper-probe")), &addr);
        let _ = child.kill();
        let _ = child.wait();
    }
    let ctl = |name: &str, what: &str| {
        chain
            .ctl_json(name, &[what])
            .unwrap_or_else(|e| panic!("{e}"))
    };
    for name in ["entry", "relay", "exit"] {
        assert_no_super_drops(&ctl(name, "stats"), name);
    }
    for name in ["entry", "exit"] {
        let s = ctl(name, "stats");
        assert!(num(&s, "tun_super_packets_in") > 0, "{name}: {s}");
        assert!(num(&s, "tun_super_packets_out") > 0, "{name}: {s}");
    }
    chain.assert_daemons_alive();
}

mod relay {
    use sapper_tests::Transport::{Quic, Ws};
    #[test]
    fn quic_then_ws() {
        super::relay_chain(Quic, Ws);
    }
    #[test]
    fn ws_then_quic() {
        super::relay_chain(Ws, Quic);
    }
    #[test]
    fn ws_then_ws() {
        super::relay_chain(Ws, Ws);
    }
}

/// A peer's super-packet headers are never trusted: an authenticated
/// WebSocket peer (`sapper-rogue`, its own tunnel address) sends five tag-2
/// messages that lie (too short, segment size 0, an IP length that
/// disagrees, a bad IHL, a fragment). The entry (offloads on) drops each,
/// counts it for that peer and by reason, keeps the link, and the honest
/// exit's traffic goes on.
#[test]
fn malformed_super_packets_are_dropped_and_counted() {
    let mut o = Options::new(Transport::Ws).extra(
        Node::Entry,
        &[
            "[[netd.listen]]",
            "transport = \"ws\"",
            "address = \"0.0.0.0:8443\"",
            "ws_path = \"/sapper\"",
        ],
    );
    o.tun_lines[0].push(OFFLOAD.into());
    let mut topo = Topology::start(o);
    topo.wait_for_tunnel();
    let fp = topo.fingerprint(Node::Entry);
    let psk = topo.node_dir(Node::Exit).join("psk");
    let mut rogue = topo.exit.cmd(tool("sapper-rogue"));
    rogue.args([
        "peer",
        "10.10.0.1:8443",
        &fp,
        &psk.display().to_string(),
        "--ws",
        "--name",
        "rogue",
        "--hint",
        "exit",
        "--address",
        "10.99.0.66",
        "super-malformed",
        "10.99.0.66",
        "10.99.0.1",
        "hold",
        "2",
    ]);
    let out = run_timeout(&mut rogue, Duration::from_secs(60)).unwrap_or_else(|e| panic!("{e}"));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "sapper-rogue: {}", show(&out));
    assert!(
        text.contains("sent=5") && text.contains("done hold"),
        "{text}"
    );
    let s = stats(&topo, Node::Entry);
    let drops = s["super_packet_drops"]
        .as_object()
        .unwrap_or_else(|| panic!("{s}"));
    eprintln!("super-packet drops by reason: {drops:?}");
    let total: u64 = drops.values().filter_map(Value::as_u64).sum();
    assert_eq!(total, 5, "{s}");
    for reason in ["truncated", "segment_size_zero"] {
        assert!(drops.contains_key(reason), "{reason} not counted: {s}");
    }
    assert!(drops.len() >= 3, "by reason: {s}");
    // The rogue is gone by now; its drops were its own, not the exit's.
    let exit = peer(&topo, Node::Entry, "exit");
    assert_eq!(num(&exit, "super_packet_drops"), 0, "{exit}");
    let out = topo.ping(&topo.entry, PRIVATE_HOST, 2, 2);
    assert!(out.status.success(), "ping after the rogue: {}", show(&out));
    let (sent, received) = topo.blast(Node::Entry, "private", PRIVATE_HOST, BYTES);
    assert_eq!(sent, received, "transfer after the rogue");
    topo.assert_daemons_alive();
}
