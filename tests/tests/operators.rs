//! What an operator does on day one, end to end: nodes set up by
//! `sapperctl init` alone, the metrics endpoint, recovery after a restart,
//! reload. Real daemons in network namespaces; needs root.

use sapper_tests::bins::bins;
use sapper_tests::cmd::{run_timeout, wait_until, WAIT};
use sapper_tests::topology::{ping_ns, ENTRY_UNDERLAY, EXIT_UNDERLAY, PRIVATE_HOST, PRIVATE_NET};
use sapper_tests::{Node, Options, Topology, Transport};
use serde_json::Value;
use std::os::unix::process::CommandExt;
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
    init_pair_with(topo, t, |_| String::new())
}

/// [`init_pair`], with `extra(node)` appended to each node's config
/// before it starts.
fn init_pair_with(topo: &mut Topology, t: Transport, extra: impl Fn(Node) -> String) -> Pair {
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
    for node in [Node::Exit, Node::Entry] {
        let more = extra(node);
        if !more.is_empty() {
            let path = topo.config_path(node);
            let mut text = std::fs::read_to_string(&path).expect("read config");
            text.push('\n');
            text.push_str(&more);
            std::fs::write(&path, text).expect("write config");
        }
    }
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

/// Sends `request` on a fresh connection to the Unix socket `path` and
/// returns everything the server sent before closing (10 s limit).
fn unix_exchange(path: &Path, request: &[u8]) -> Vec<u8> {
    use std::io::{Read, Write};
    let mut s = std::os::unix::net::UnixStream::connect(path)
        .unwrap_or_else(|e| panic!("connect {}: {e}", path.display()));
    s.set_read_timeout(Some(Duration::from_secs(10))).ok();
    s.write_all(request).expect("send request");
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    out
}

/// The body of a 200 answer; panics otherwise.
fn body_of(answer: &[u8]) -> String {
    let text = String::from_utf8_lossy(answer).into_owned();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no HTTP head in {text:?}"));
    assert!(head.starts_with("HTTP/1.1 200 "), "answer: {head}");
    assert!(
        head.contains("Content-Type: text/plain; version=0.0.4")
            || head.contains("Content-Type: application/openmetrics-text; version=1.0.0"),
        "answer: {head}"
    );
    body.to_string()
}

/// `name{labels} value` lines: (name, labels, value).
fn samples(body: &str) -> Vec<(String, String, f64)> {
    body.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (name, labels) = match series.split_once('{') {
                Some((n, rest)) => (n, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            Some((name.to_string(), labels.to_string(), value.parse().ok()?))
        })
        .collect()
}

/// Sum of every series named `name` whose labels contain `with`.
fn sum(s: &[(String, String, f64)], name: &str, with: &str) -> f64 {
    s.iter()
        .filter(|(n, l, _)| n == name && l.contains(with))
        .map(|(_, _, v)| v)
        .sum()
}

/// Runs `promtool check metrics` on `body`.
fn promtool(body: &str) {
    use std::io::Write;
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool (Debian package prometheus; scripts/test.sh installs it)");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(body.as_bytes())
        .expect("write to promtool");
    let out = child.wait_with_output().expect("promtool");
    assert!(
        out.status.success(),
        "promtool check metrics refused the scrape:\n{}\n--- scrape ---\n{body}",
        show(&out)
    );
}

/// The metrics endpoint on both nodes (a Unix socket on the entry, loopback
/// TCP on the exit): promtool accepts the scrape, its values equal
/// `sapperctl --json stats` taken around it, per-peer series describe the
/// link; garbage gets a bare 400; a slow scraper holds at most
/// `max_connections` slots and only until the read deadline.
fn metrics(t: Transport) {
    let mut topo = bare(t);
    let sock = topo.node_dir(Node::Entry).join("metrics.sock");
    let sock_cfg = sock.display().to_string();
    init_pair_with(&mut topo, t, |node| match node {
        Node::Entry => format!("[netd.metrics]\nsocket = \"{sock_cfg}\"\nmax_connections = 2\n"),
        Node::Exit => "[netd.metrics]\nlisten = \"127.0.0.1:9477\"\n".into(),
    });
    topo.wait_for_tunnel();
    let out = topo.ping(&topo.entry, PRIVATE_HOST, 3, 2);
    assert!(out.status.success(), "ping: {}", show(&out));
    // At least one pong recorded in the RTT histogram (1 s pings).
    std::thread::sleep(Duration::from_millis(2500));

    let get = b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n";
    // Stats before and after the scrape must agree for the comparison to
    // mean something (keepalives are not tunnel packets; nothing else runs).
    let mut matched = None;
    for _ in 0..10 {
        let before = topo.ctl_json(Node::Entry, &["stats"]).expect("stats");
        let body = body_of(&unix_exchange(&sock, get));
        let after = topo.ctl_json(Node::Entry, &["stats"]).expect("stats");
        if before == after {
            matched = Some((before, body));
            break;
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    let (stats, body) = matched.expect("stats never held still around a scrape");
    promtool(&body);
    // What Prometheus asks for: OpenMetrics, the same samples, `# EOF` last.
    let open = body_of(&unix_exchange(
        &sock,
        b"GET /metrics HTTP/1.1\r\nAccept: application/openmetrics-text; version=1.0.0\r\n\r\n",
    ));
    assert!(open.ends_with("# EOF\n"), "{open}");
    assert!(
        open.contains("# TYPE sapper_peer_receive_bytes counter"),
        "{open}"
    );
    let s = samples(&body);
    let num = |k: &str| stats[k].as_f64().unwrap_or(f64::NAN);
    assert_eq!(
        sum(&s, "sapper_tun_receive_packets_total", ""),
        num("tun_packets_in"),
        "{body}"
    );
    assert_eq!(
        sum(&s, "sapper_tun_transmit_packets_total", ""),
        num("tun_packets_out"),
        "{body}"
    );
    assert_eq!(
        sum(&s, "sapper_peer_receive_bytes_total", ""),
        num("bytes_in"),
        "{body}"
    );
    assert_eq!(
        sum(&s, "sapper_peer_transmit_bytes_total", ""),
        num("bytes_out"),
        "{body}"
    );
    assert_eq!(
        sum(&s, "sapper_handshake_failures_total", ""),
        num("handshake_failures"),
        "{body}"
    );
    assert_eq!(
        sum(&s, "sapper_node_dropped_packets_total", "")
            + sum(&s, "sapper_peer_dropped_packets_total", ""),
        num("drops"),
        "{body}"
    );
    assert!(
        num("tun_packets_in") >= 3.0,
        "the pings went through the TUN: {stats}"
    );
    let peer = format!(
        "peer=\"exit\",role=\"exit\",transport=\"{}\",direction=\"outbound\"",
        t.as_str()
    );
    assert_eq!(sum(&s, "sapper_peer_link", &peer), 1.0, "{body}");
    assert!(
        sum(&s, "sapper_peer_handshakes_total", "peer=\"exit\"") >= 1.0,
        "{body}"
    );
    assert!(
        sum(&s, "sapper_peer_rtt_samples_seconds_count", "peer=\"exit\"") >= 1.0,
        "{body}"
    );
    assert!(
        sum(&s, "sapper_peer_rtt_seconds", "peer=\"exit\"") > 0.0,
        "{body}"
    );
    assert_eq!(sum(&s, "sapper_peers", ""), 1.0, "{body}");
    // The entry installs its route with the TUN; the exit announced it.
    assert!(sum(&s, "sapper_routes_learned", "") >= 1.0, "{body}");

    // The exit over loopback TCP, inside its namespace.
    let mut cmd = topo.exit.cmd("bash");
    cmd.args([
        "-c",
        "exec 3<>/dev/tcp/127.0.0.1/9477 && printf 'GET /metrics HTTP/1.0\\r\\n\\r\\n' >&3 && cat <&3",
    ]);
    let out = run_timeout(&mut cmd, Duration::from_secs(10)).expect("scrape the exit");
    let exit_body = body_of(&out.stdout);
    promtool(&exit_body);
    let es = samples(&exit_body);
    assert_eq!(
        sum(&es, "sapper_peer_link", "peer=\"entry\""),
        1.0,
        "{exit_body}"
    );
    assert_eq!(
        sum(&es, "sapper_node_role", "role=\"exit\""),
        1.0,
        "{exit_body}"
    );

    // Garbage: a bare 400 and nothing else.
    let bad = b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
    for junk in [
        &b"garbage\r\n\r\n"[..],
        b"GET /metrics SPDY/9\r\n\r\n",
        &[0xffu8; 9000][..],
    ] {
        let answer = unix_exchange(&sock, junk);
        assert_eq!(
            answer,
            bad.to_vec(),
            "answer to {:?}: {:?}",
            String::from_utf8_lossy(&junk[..junk.len().min(40)]),
            String::from_utf8_lossy(&answer)
        );
    }

    // A slow scraper: two silent connections fill max_connections = 2, so
    // a third is not served until the read deadline (5 s) closes them with
    // a 400; then it is.
    use std::io::{Read, Write};
    let idle: Vec<_> = (0..2)
        .map(|_| std::os::unix::net::UnixStream::connect(&sock).expect("idle connection"))
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    let mut third = std::os::unix::net::UnixStream::connect(&sock).expect("third connection");
    third.write_all(get).expect("third request");
    third
        .set_read_timeout(Some(Duration::from_millis(1500)))
        .ok();
    let mut first = [0u8; 1];
    let early = third.read(&mut first);
    assert!(
        early.is_err(),
        "a third connection was served while two silent ones held both slots: {early:?}"
    );
    let started = std::time::Instant::now();
    for mut c in idle {
        c.set_read_timeout(Some(Duration::from_secs(15))).ok();
        let mut got = Vec::new();
        let _ = c.read_to_end(&mut got);
        assert_eq!(
            got,
            bad.to_vec(),
            "a silent scraper is closed with a 400 at the deadline"
        );
    }
    third.set_read_timeout(Some(Duration::from_secs(15))).ok();
    let mut rest = Vec::new();
    let _ = third.read_to_end(&mut rest);
    // The early read timed out, so nothing was taken from the stream.
    body_of(&rest);
    println!(
        "silent scrapers closed and the waiting scrape served {} ms after the check",
        started.elapsed().as_millis()
    );
}
per_transport!(metrics);

/// SIGHUP to `node`'s netd.
fn hup(topo: &Topology, node: Node) {
    let pid = topo.netd(node).pid();
    // SAFETY: kill has no memory-safety preconditions.
    let rc = unsafe { libc::kill(pid as i32, libc::SIGHUP) };
    assert_eq!(rc, 0, "kill -HUP {pid}");
}

/// Reload, while a ping flows on the link no change touches: a listener
/// added on the exit (SIGHUP) opens; a connect entry added on the entry
/// starts dialling; a broken file is refused naming file and key, and the
/// old config keeps running; the ping loses nothing. Then a connect entry
/// to the exit's new listener brings up a second link over the other
/// transport.
fn reload(t: Transport) {
    let mut topo = bare(t);
    init_pair(&mut topo, t);
    topo.wait_for_tunnel();
    let other = if t == Transport::Quic {
        Transport::Ws
    } else {
        Transport::Quic
    };
    let other_port = if other == Transport::Quic { 4433 } else { 8443 };

    // A ping all along: 0.2 s apart for ~10 s.
    let mut pinger = topo.entry.cmd("ping");
    pinger
        .args(["-n", "-q", "-i", "0.2", "-c", "50", "-W", "1", PRIVATE_HOST])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let pinger = pinger.spawn().expect("start ping");

    // The exit gets a listener for the other transport.
    let exit_cfg = topo.config_path(Node::Exit);
    let mut text = std::fs::read_to_string(&exit_cfg).expect("exit config");
    text = text.replacen(
        "\n[privd]\n",
        &format!(
            "\n[[netd.listen]]\ntransport = \"{}\"\naddress = \"0.0.0.0:{other_port}\"\n\n[privd]\n",
            other.as_str()
        ),
        1,
    );
    std::fs::write(&exit_cfg, &text).expect("write exit config");
    hup(&topo, Node::Exit);
    topo.wait_for_log("exit-netd", "reload: new listener", WAIT);

    let fp = topo.ctl_json(Node::Exit, &["status"]).expect("exit status")["cert_fingerprint"]
        .as_str()
        .expect("fingerprint")
        .to_string();
    let entry_cfg = topo.config_path(Node::Entry);
    let good = std::fs::read_to_string(&entry_cfg).expect("entry config");
    let with_connect = |address: &str| {
        good.replacen(
            "\n[privd]\n",
            &format!(
                "\n[[netd.connect]]\ntransport = \"{}\"\naddress = \"{address}\"\nserver_name = \"exit\"\nfingerprint = \"{fp}\"\n\n[privd]\n",
                other.as_str()
            ),
            1,
        )
    };
    // A connect entry to an address nobody serves: dialled (and failing).
    let dead = format!("{EXIT_UNDERLAY}:9");
    std::fs::write(&entry_cfg, with_connect(&dead)).expect("write entry config");
    hup(&topo, Node::Entry);
    topo.wait_for_log_line(
        "entry-netd",
        &["connection failed", &format!("peer={dead}")],
        WAIT,
    );

    // A broken file: refused, naming file and key.
    let broken = good.replacen("\n[netd]\n", "\n[netd]\nping_interval_ms = 1\n", 1);
    std::fs::write(&entry_cfg, &broken).expect("write broken config");
    hup(&topo, Node::Entry);
    topo.wait_for_log("entry-netd", "config_refused", WAIT);
    let log = topo.netd(Node::Entry).stderr_text();
    let line = log
        .lines()
        .find(|l| l.contains("config_refused"))
        .unwrap_or_default()
        .to_string();
    assert!(
        line.contains(&entry_cfg.display().to_string()) && line.contains("netd.ping_interval_ms"),
        "the refusal names neither the file nor the key: {line}"
    );
    topo.assert_daemons_alive();

    let out = pinger.wait_with_output().expect("ping");
    let summary = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        summary.contains("50 packets transmitted, 50 received"),
        "the ping on the untouched link lost packets during the reloads:\n{summary}"
    );
    // The refused reload kept the dead entry dialling (the old config runs).
    let failures = |topo: &Topology| {
        topo.netd(Node::Entry)
            .stderr_text()
            .lines()
            .filter(|l| l.contains("connection failed") && l.contains(&format!("peer={dead}")))
            .count()
    };
    let before = failures(&topo);
    wait_until("another dial of the kept entry", WAIT, || {
        (failures(&topo) > before).then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}"));

    // A connect entry to the exit's new listener: a second link.
    std::fs::write(
        &entry_cfg,
        with_connect(&format!("{EXIT_UNDERLAY}:{other_port}")),
    )
    .expect("write entry config");
    hup(&topo, Node::Entry);
    topo.wait_for_log("entry-netd", "reload: connect entry removed", WAIT);
    let mut want = vec![t.as_str().to_string(), other.as_str().to_string()];
    want.sort();
    wait_until("links to the exit over both transports", WAIT, || {
        let mut v: Vec<String> = topo
            .peers(Node::Entry)
            .unwrap_or_default()
            .iter()
            .filter(|p| p["name"] == "exit")
            .map(|p| p["transport"].as_str().unwrap_or_default().to_string())
            .collect();
        v.sort();
        (v == want).then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}"));
}
per_transport!(reload);

/// Sends `GET /metrics` to `addr` from inside the network namespace `ns`
/// (one thread moved there with setns) and returns the answer; `None` when
/// nothing accepts the connection.
fn scrape_in(ns: &str, addr: &str) -> Option<Vec<u8>> {
    let path = format!("/run/netns/{ns}");
    let addr: std::net::SocketAddr = addr.parse().expect("scrape address");
    std::thread::spawn(move || {
        use std::io::{Read, Write};
        use std::os::fd::AsRawFd;
        let f = std::fs::File::open(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        // SAFETY: setns on an fd we own; it moves only this thread.
        let rc = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns {path}");
        let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(10))).ok();
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n")
            .ok()?;
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out);
        Some(out)
    })
    .join()
    .expect("scrape thread")
}

/// Whether the exit's listener at `addr` (over `t`) completes TLS and
/// opens the control stream, tried from the entry's namespace with
/// `sapper-rogue anon` (which then sends a bad proof and is refused).
fn served(topo: &Topology, t: Transport, addr: &str, fp: &str) -> bool {
    let mut cmd = topo.entry.cmd(sapper_tests::bins::tool("sapper-rogue"));
    cmd.args(["anon", t.as_str(), addr, fp]);
    match run_timeout(&mut cmd, Duration::from_secs(30)) {
        Ok(o) => {
            println!("sapper-rogue anon {} {addr}: {}", t.as_str(), show(&o));
            o.status.success() && String::from_utf8_lossy(&o.stdout).contains("first=")
        }
        Err(e) => {
            println!("sapper-rogue anon {} {addr}: {e}", t.as_str());
            false
        }
    }
}

/// Counts the lines of `node`'s netd log containing `needle`.
fn log_count(topo: &Topology, node: Node, needle: &str) -> usize {
    topo.netd(node)
        .stderr_text()
        .lines()
        .filter(|l| l.contains(needle))
        .count()
}

/// Writes `text` as `node`'s config, sends SIGHUP and waits for the reload
/// to be logged as applied; returns that log line.
fn reload_with(topo: &mut Topology, node: Node, text: &str) -> String {
    let before = log_count(topo, node, "reload: applied live");
    std::fs::write(topo.config_path(node), text).expect("write config");
    hup(topo, node);
    wait_until("the reload to be applied", WAIT, || {
        (log_count(topo, node, "reload: applied live") > before).then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", topo.netd(node).stderr_text()));
    topo.netd(node)
        .stderr_text()
        .lines()
        .rfind(|l| l.contains("reload: applied live"))
        .unwrap_or_default()
        .to_string()
}

/// The pongs the entry recorded from the exit so far (the RTT histogram's
/// count), scraped from its metrics endpoint.
fn pongs(topo: &Topology, addr: &str) -> f64 {
    let answer = scrape_in(topo.entry.name(), addr).expect("the metrics endpoint answers");
    let body = body_of(&answer);
    sum(
        &samples(&body),
        "sapper_peer_rtt_samples_seconds_count",
        "peer=\"exit\"",
    )
}

/// Reload applies live what used to wait for a restart, while a ping on the
/// link no change touches loses nothing:
/// - a listener added and then removed on the exit: served, then closed
///   (no TLS handshake completes on it) while the tunnel's listener serves;
/// - `announce_routes` on the exit: the entry learns an added prefix and
///   drops a removed one;
/// - `[netd.metrics]` on the entry turned on (scraped), moved to another
///   port and turned off (nothing accepts);
/// - `ping_interval_ms` on the entry: the pongs counted by the metrics
///   endpoint go from ~1/s to ~10/s.
fn reload_live(t: Transport) {
    let mut topo = bare(t);
    init_pair(&mut topo, t);
    topo.wait_for_tunnel();
    let (other, other_port) = if t == Transport::Quic {
        (Transport::Ws, 8443)
    } else {
        (Transport::Quic, 4433)
    };
    let own_port = if t == Transport::Quic { 4433 } else { 8443 };
    let fp = topo.ctl_json(Node::Exit, &["status"]).expect("exit status")["cert_fingerprint"]
        .as_str()
        .expect("fingerprint")
        .to_string();

    // A ping all along: 0.2 s apart for ~30 s.
    let mut pinger = topo.entry.cmd("ping");
    pinger
        .args([
            "-n",
            "-q",
            "-i",
            "0.2",
            "-c",
            "150",
            "-W",
            "1",
            PRIVATE_HOST,
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let pinger = pinger.spawn().expect("start ping");

    // Listeners: one added, then removed.
    let exit_cfg = topo.config_path(Node::Exit);
    let exit_good = std::fs::read_to_string(&exit_cfg).expect("exit config");
    let other_addr = format!("{EXIT_UNDERLAY}:{other_port}");
    let own_addr = format!("{EXIT_UNDERLAY}:{own_port}");
    let with_listener = exit_good.replacen(
        "\n[privd]\n",
        &format!(
            "\n[[netd.listen]]\ntransport = \"{}\"\naddress = \"0.0.0.0:{other_port}\"\n\n[privd]\n",
            other.as_str()
        ),
        1,
    );
    let line = reload_with(&mut topo, Node::Exit, &with_listener);
    assert!(line.contains("netd.listen"), "{line}");
    assert!(
        served(&topo, other, &other_addr, &fp),
        "the added listener serves"
    );
    let line = reload_with(&mut topo, Node::Exit, &exit_good);
    assert!(line.contains("netd.listen"), "{line}");
    topo.wait_for_log("exit-netd", "listener closed", WAIT);
    assert!(
        !served(&topo, other, &other_addr, &fp),
        "the removed listener still completes handshakes"
    );
    assert!(served(&topo, t, &own_addr, &fp), "the kept listener serves");

    // Announced routes: one added on the exit reaches the entry, and goes
    // again when removed.
    const MORE: &str = "10.77.0.0/24";
    let entry_routes = |topo: &Topology| -> Vec<String> {
        topo.ctl_json(Node::Entry, &["routes"]).expect("routes")["routes"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter(|r| r["peer"] == "exit")
                    .filter_map(|r| r["prefix"].as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    };
    let announce = format!("announce_routes = [\"{PRIVATE_NET}\"]");
    assert!(exit_good.contains(&announce), "{exit_good}");
    let more = exit_good.replacen(
        &announce,
        &format!("announce_routes = [\"{PRIVATE_NET}\", \"{MORE}\"]"),
        1,
    );
    let line = reload_with(&mut topo, Node::Exit, &more);
    assert!(line.contains("netd.announce_routes"), "{line}");
    wait_until("the entry to learn the added route", WAIT, || {
        entry_routes(&topo)
            .contains(&MORE.to_string())
            .then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}"));
    // `peers` shows the exit's list as it is now.
    let peers = topo.peers(Node::Entry).expect("peers");
    assert!(
        peers[0]["routes"]
            .as_array()
            .is_some_and(|r| r.iter().any(|p| p == MORE)),
        "{peers:?}"
    );
    reload_with(&mut topo, Node::Exit, &exit_good);
    wait_until("the entry to drop the removed route", WAIT, || {
        let r = entry_routes(&topo);
        (!r.contains(&MORE.to_string()) && r.contains(&PRIVATE_NET.to_string())).then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}: {:?}", entry_routes(&topo)));

    // Metrics on by reload, then the ping interval from 1 s to 100 ms.
    let entry_cfg = topo.config_path(Node::Entry);
    let entry_good = std::fs::read_to_string(&entry_cfg).expect("entry config");
    // [netd.metrics] goes last, after the sections the file has.
    let with_metrics = |port: u16, extra: &str| {
        let base = if extra.is_empty() {
            entry_good.clone()
        } else {
            entry_good.replacen("\n[netd]\n", &format!("\n[netd]\n{extra}\n"), 1)
        };
        format!("{base}\n[netd.metrics]\nlisten = \"127.0.0.1:{port}\"\n")
    };
    assert!(
        scrape_in(topo.entry.name(), "127.0.0.1:9477").is_none(),
        "a metrics endpoint before it was configured"
    );
    let line = reload_with(&mut topo, Node::Entry, &with_metrics(9477, ""));
    assert!(line.contains("netd.metrics"), "{line}");
    let rate = |topo: &Topology, addr: &str| {
        let a = pongs(topo, addr);
        std::thread::sleep(Duration::from_secs(3));
        (pongs(topo, addr) - a) / 3.0
    };
    let slow = rate(&topo, "127.0.0.1:9477");
    let line = reload_with(
        &mut topo,
        Node::Entry,
        &with_metrics(9478, "ping_interval_ms = 100"),
    );
    assert!(
        line.contains("netd.ping_interval_ms") && line.contains("netd.metrics"),
        "{line}"
    );
    assert!(
        scrape_in(topo.entry.name(), "127.0.0.1:9477").is_none(),
        "the old metrics address still answers"
    );
    let fast = rate(&topo, "127.0.0.1:9478");
    println!("pongs per second: {slow:.1} at 1000 ms, {fast:.1} at 100 ms");
    assert!(
        slow <= 2.5 && fast >= 5.0,
        "pongs per second {slow:.1} at 1000 ms, {fast:.1} at 100 ms"
    );
    // Metrics off, and a key only a restart applies: named in the same
    // line and in a warning of its own.
    let slower_redial = entry_good.replacen("\n[netd]\n", "\n[netd]\nreconnect_max_ms = 2000\n", 1);
    let line = reload_with(&mut topo, Node::Entry, &slower_redial);
    assert!(
        line.contains("netd.metrics") && line.contains("needs_restart=netd.reconnect_*"),
        "{line}"
    );
    let warned = topo.wait_for_log_line(
        "entry-netd",
        &["takes effect when netd restarts", "netd.reconnect_*"],
        WAIT,
    );
    assert!(warned.contains("WARN"), "{warned}");
    assert!(
        scrape_in(topo.entry.name(), "127.0.0.1:9478").is_none(),
        "metrics still served after they were turned off"
    );

    topo.assert_daemons_alive();
    let out = pinger.wait_with_output().expect("ping");
    let summary = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        summary.contains("150 packets transmitted, 150 received"),
        "the ping on the untouched link lost packets during the reloads:\n{summary}"
    );
    // One link all along: no change touched it.
    let peers = topo.peers(Node::Entry).expect("peers");
    assert_eq!(peers.len(), 1, "{peers:?}");
    assert_eq!(
        log_count(&topo, Node::Entry, "peer_disconnected"),
        0,
        "the entry's link went down during the reloads"
    );

    // The hint: the exit's fixed role taken out by a reload makes it
    // undecided (the secure posture does not negotiate), so the entry drops
    // its routes; put back, the exit's routes return. The link stays up.
    let role_line = "role = \"exit\"";
    assert!(exit_good.contains(role_line), "{exit_good}");
    let exit_role = |topo: &Topology| {
        topo.peers(Node::Entry).ok().and_then(|p| {
            p.first()
                .and_then(|p| p["role"].as_str().map(str::to_string))
        })
    };
    let line = reload_with(&mut topo, Node::Exit, &exit_good.replacen(role_line, "", 1));
    assert!(line.contains("node.hint"), "{line}");
    wait_until("the entry to see the exit undecided", WAIT, || {
        (exit_role(&topo).as_deref() == Some("indeterminate")
            && !entry_routes(&topo).contains(&PRIVATE_NET.to_string()))
        .then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}: {:?} {:?}", exit_role(&topo), entry_routes(&topo)));
    reload_with(&mut topo, Node::Exit, &exit_good);
    wait_until("the exit to be the exit again", WAIT, || {
        (exit_role(&topo).as_deref() == Some("exit")
            && entry_routes(&topo).contains(&PRIVATE_NET.to_string()))
        .then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}: {:?} {:?}", exit_role(&topo), entry_routes(&topo)));
    topo.wait_for_tunnel();
    assert_eq!(log_count(&topo, Node::Entry, "peer_disconnected"), 0);
}
per_transport!(reload_live);

/// `disconnect --stay`: the entry closes its link to the exit and stops
/// redialling it (no link at any look for 3 s); the exit, which was dialled,
/// refuses --stay with a reason; a reload that still lists the connect entry
/// brings the link back.
fn disconnect_stay(t: Transport) {
    let mut topo = bare(t);
    init_pair(&mut topo, t);
    topo.wait_for_tunnel();

    let out = topo.ctl(Node::Exit, &["disconnect", "entry", "--stay"]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "--stay on a dialled-in peer: {}",
        show(&out)
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("dialled this node"),
        "{}",
        show(&out)
    );

    let out = topo.ctl(Node::Entry, &["disconnect", "exit", "--stay", "--json"]);
    assert!(out.status.success(), "{}", show(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        r#"{"ok":true}"#
    );
    // The link closes (a QUIC dialler drains its endpoint for up to 3 s
    // first); from then on it stays closed.
    wait_until("the entry's link to the exit to close", WAIT, || {
        topo.peers(Node::Entry)
            .ok()
            .filter(|p| p.iter().all(|p| p["name"] != "exit"))
            .map(|_| ())
    })
    .unwrap_or_else(|e| panic!("{e}"));
    let until = std::time::Instant::now() + Duration::from_secs(3);
    while std::time::Instant::now() < until {
        let peers = topo.peers(Node::Entry).expect("peers");
        assert!(
            peers.iter().all(|p| p["name"] != "exit"),
            "the entry redialled a peer disconnected with --stay: {peers:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    topo.assert_daemons_alive();

    hup(&topo, Node::Entry);
    topo.wait_for_tunnel();
}
per_transport!(disconnect_stay);

/// The proxy's namespace R between the entry and the exit:
/// E `ve-r` 10.40.0.1 ── `vr-e` 10.40.0.2 (tinyproxy) R `vr-x` 10.30.0.2 ──
/// `vx-r` 10.30.0.1 X. R does not forward, E's direct link to X is
/// deleted: the proxy is E's only way to the exit.
const PROXY_ADDR: &str = "10.40.0.2";
const EXIT_BEHIND_PROXY: &str = "10.30.0.1";

/// A WebSocket entry whose only way to the exit is a real HTTP proxy
/// (tinyproxy, Basic authentication, CONNECT allowed to port 8443 only):
/// TLS and the Sapper handshake run through the tunnel and a ping crosses
/// it. Entries the proxy refuses (403: a port it does not allow; 401/407:
/// wrong credentials) are logged as such, again after backoff, while netd
/// keeps running and the good link keeps carrying traffic.
#[test]
fn ws_through_http_proxy() {
    let mut topo = Topology::start(Options {
        start_daemons: false,
        connect_host: Some(EXIT_BEHIND_PROXY.into()),
        ..Options::new(Transport::Ws)
    });
    topo.bins = Some(bins());
    let dir = topo.node_dir(Node::Entry);
    std::fs::create_dir_all(&dir).expect("entry dir");
    let good = dir.join("proxy-credentials");
    let bad = dir.join("proxy-credentials-wrong");
    let write_secret = |p: &Path, text: &str| {
        use std::os::unix::fs::PermissionsExt;
        std::fs::write(p, text).expect("write credentials");
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    };
    write_secret(&good, "sapper:s3cret-pass\n");
    write_secret(&bad, "sapper:wrong\n");
    let proxy_url = format!("http://{PROXY_ADDR}:8888");
    topo.opts.connect_lines = vec![
        format!("proxy = \"{proxy_url}\""),
        format!("proxy_credentials_file = \"{}\"", good.display()),
    ];

    // The network: R between E and X, E's direct link gone.
    let r = sapper_tests::netns::Netns::create(sapper_tests::netns::name_for(
        'R',
        sapper_tests::netns::next_id(),
    ));
    topo.entry.ip(&["link", "del", "ve-x"]);
    topo.entry.ip(&[
        "link",
        "add",
        "ve-r",
        "type",
        "veth",
        "peer",
        "name",
        "vr-e",
        "netns",
        r.name(),
    ]);
    topo.exit.ip(&[
        "link",
        "add",
        "vx-r",
        "type",
        "veth",
        "peer",
        "name",
        "vr-x",
        "netns",
        r.name(),
    ]);
    topo.entry
        .ip(&["addr", "add", "10.40.0.1/24", "dev", "ve-r"]);
    r.ip(&["addr", "add", &format!("{PROXY_ADDR}/24"), "dev", "vr-e"]);
    r.ip(&["addr", "add", "10.30.0.2/24", "dev", "vr-x"]);
    topo.exit.ip(&[
        "addr",
        "add",
        &format!("{EXIT_BEHIND_PROXY}/24"),
        "dev",
        "vx-r",
    ]);
    for (ns, dev) in [
        (&topo.entry, "ve-r"),
        (&r, "vr-e"),
        (&r, "vr-x"),
        (&topo.exit, "vx-r"),
    ] {
        ns.ip(&["link", "set", dev, "up"]);
    }
    let mut sysctl = r.cmd("sysctl");
    sysctl.args(["-qw", "net.ipv4.ip_forward=0"]);
    run_timeout(&mut sysctl, Duration::from_secs(5)).expect("sysctl");
    let conf = topo.dir.join("tinyproxy.conf");
    std::fs::write(
        &conf,
        format!(
            "User nobody\nGroup nogroup\nPort 8888\nListen {PROXY_ADDR}\nTimeout 30\n\
             MaxClients 16\nLogLevel Info\nAllow 10.40.0.0/24\nConnectPort 8443\n\
             BasicAuth sapper s3cret-pass\n"
        ),
    )
    .expect("tinyproxy.conf");
    let mut cmd = r.cmd("tinyproxy");
    cmd.arg("-d").arg("-c").arg(&conf);
    topo.spawn_in("tinyproxy", cmd);
    let mut probe = r.cmd("ss");
    probe.args(["-Htln", &format!("src {PROXY_ADDR}:8888")]);
    topo.wait_for("tinyproxy listening", WAIT, || {
        run_timeout(&mut probe, Duration::from_secs(5))
            .ok()
            .filter(|o| !o.stdout.is_empty())
            .map(|_| ())
    });
    // The premise: no direct way from E to the exit.
    let direct = topo.ping(&topo.entry, EXIT_BEHIND_PROXY, 1, 1);
    assert!(
        !direct.status.success(),
        "the entry reaches the exit directly: {}",
        show(&direct)
    );

    // Two entries the proxy refuses beside the good one: a port it does
    // not allow (403) and wrong credentials (407). Both fail before TLS,
    // so any pin will do.
    let pin = "ab".repeat(32);
    for (address, creds) in [
        (format!("{EXIT_BEHIND_PROXY}:9443"), &good),
        ("10.30.0.9:8443".to_string(), &bad),
    ] {
        topo.opts.extra[Node::Entry as usize].extend([
            "[[netd.connect]]".to_string(),
            "transport = \"ws\"".into(),
            format!("address = \"{address}\""),
            format!("fingerprint = \"{pin}\""),
            format!("proxy = \"{proxy_url}\""),
            format!("proxy_credentials_file = \"{}\"", creds.display()),
        ]);
    }
    topo.start_daemons();
    topo.wait_for_tunnel();
    let out = topo.ping(&topo.entry, PRIVATE_HOST, 3, 2);
    assert!(
        out.status.success(),
        "ping through the proxy: {}",
        show(&out)
    );
    // The link really is the proxy's: tinyproxy logged the CONNECT.
    let log = topo.daemon("tinyproxy").stderr_text() + &topo.daemon("tinyproxy").stdout_text();
    assert!(
        log.contains("CONNECT"),
        "tinyproxy's log has no CONNECT:\n{log}"
    );

    let forbidden = topo.wait_for_log_line(
        "entry-netd",
        &["refused CONNECT to 10.30.0.1:9443: 403"],
        Duration::from_secs(10),
    );
    let auth = topo.wait_for_log_line(
        "entry-netd",
        &[
            "requires authentication: 40",
            "credentials in proxy_credentials_file were rejected",
        ],
        Duration::from_secs(10),
    );
    // Backoff, not a crash loop: the refusal comes again, netd stays up,
    // the good link still carries a ping.
    let log_path = topo.netd(Node::Entry).stderr.clone();
    wait_until(
        "the 403 logged again after backoff",
        Duration::from_secs(10),
        || {
            std::fs::read_to_string(&log_path)
                .ok()
                .filter(|l| l.matches("refused CONNECT to 10.30.0.1:9443: 403").count() >= 2)
        },
    )
    .unwrap_or_else(|e| panic!("{e}"));
    topo.assert_daemons_alive();
    let out = topo.ping(&topo.entry, PRIVATE_HOST, 2, 2);
    assert!(
        out.status.success(),
        "ping after the refusals: {}\n{forbidden}\n{auth}",
        show(&out)
    );
    // The secret never reaches the log.
    assert!(!topo.netd(Node::Entry).stderr_text().contains("s3cret"));
    drop(topo);
    drop(r);
}

/// `sapperctl audit --json` says what /proc says about the netd and privd
/// behind the sockets it was given: their pids (found by SO_PEERCRED), all
/// four uids and gids, every capability set, NoNewPrivs and seccomp mode;
/// netd's Landlock outcome is the one netd logged; the sockets' owner and
/// mode are the files'; privd's counters are privd's own. The human form
/// names the same pid.
#[test]
fn audit_matches_proc() {
    use sapper_tests::privs::TaskPrivs;
    use std::os::unix::fs::MetadataExt;
    let mut topo = Topology::start(Options::new(Transport::Quic));
    topo.wait_for_tunnel();
    let privd_sock = topo.privd_socket(Node::Exit);
    // A refusal for the page to list: a uid that is not netd's, in the
    // socket's group so that privd itself (not the file mode) says no.
    let mut probe = Command::new(sapper_tests::bins::tool("sapper-privd-probe"));
    probe
        .arg(&privd_sock)
        .uid(4242)
        .gid(sapper_tests::gid_of("nogroup"));
    let out = run_timeout(&mut probe, Duration::from_secs(15)).unwrap_or_else(|e| panic!("{e}"));
    assert!(
        String::from_utf8_lossy(&out.stdout).starts_with("outcome=refused "),
        "{}",
        show(&out)
    );
    topo.wait_for_log("exit-privd", "4242", WAIT);
    let page = topo
        .ctl_json(
            Node::Exit,
            &["--privd-socket", &privd_sock.display().to_string(), "audit"],
        )
        .expect("audit --json");
    let logs = topo.netd(Node::Exit).stderr_text();
    for (name, label, sock) in [
        ("netd", "exit-netd", topo.mgmt_socket(Node::Exit)),
        ("privd", "exit-privd", privd_sock.clone()),
    ] {
        let d = &page[name];
        let pid = topo.daemon(label).pid();
        assert_eq!(d["pid"], pid, "{name}: {d}");
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
        let want = TaskPrivs::parse(&status).expect("parse");
        let ids = |k: &str| -> Vec<u64> {
            ["real", "effective", "saved", "fs"]
                .iter()
                .map(|f| d[k][f].as_u64().unwrap_or(u64::MAX))
                .collect()
        };
        assert_eq!(ids("uid"), want.uids.map(u64::from).to_vec(), "{name} uids");
        assert_eq!(ids("gid"), want.gids.map(u64::from).to_vec(), "{name} gids");
        for (set, mask) in [
            ("inheritable", want.cap_inh),
            ("permitted", want.cap_prm),
            ("effective", want.cap_eff),
            ("bounding", want.cap_bnd),
            ("ambient", want.cap_amb),
        ] {
            assert_eq!(
                d["capabilities"][set]["hex"],
                format!("{mask:016x}"),
                "{name} {set}"
            );
        }
        assert_eq!(d["no_new_privs"], want.no_new_privs, "{name}");
        let seccomp = ["disabled", "strict", "filter"][usize::from(want.seccomp.min(2))];
        assert_eq!(d["seccomp"], seccomp, "{name}");
        let m = std::fs::metadata(&sock).expect("socket");
        assert_eq!(d["socket"]["uid"], m.uid(), "{name} socket owner");
        assert_eq!(d["socket"]["gid"], m.gid(), "{name} socket group");
        assert_eq!(
            d["socket"]["mode"],
            format!("{:04o}", m.mode() & 0o7777),
            "{name} socket mode"
        );
    }
    // netd is unprivileged and filtered; privd holds only CAP_NET_ADMIN.
    assert_ne!(page["netd"]["uid"]["effective"], 0);
    assert_eq!(
        page["netd"]["capabilities"]["effective"]["names"],
        serde_json::json!([])
    );
    assert_eq!(page["netd"]["seccomp"], "filter");
    assert_eq!(
        page["privd"]["capabilities"]["effective"]["names"],
        serde_json::json!(["cap_net_admin"])
    );
    let landlock = page["netd"]["landlock"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        logs.contains(&format!("enforcement=\"{landlock}\""))
            || logs.contains(&format!("enforcement={landlock}")),
        "audit says landlock {landlock:?}; netd logged otherwise:\n{logs}"
    );
    let privd_status = topo
        .ctl_json(
            Node::Exit,
            &[
                "--privd-socket",
                &privd_sock.display().to_string(),
                "privd",
                "status",
            ],
        )
        .expect("privd status");
    let granted = page["privd"]["requests"]["granted"]
        .as_u64()
        .expect("granted");
    assert!(granted > 0, "privd granted the TUN at least: {page}");
    assert!(granted <= privd_status["granted"].as_u64().unwrap_or(0));
    // The refusal provoked above: counted, and the newest of the last
    // refusals is the audit line privd logged for it.
    let requests = &page["privd"]["requests"];
    assert!(requests["refused"].as_u64().unwrap_or(0) >= 1, "{page}");
    let refusals = requests["last_refusals"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert!(refusals.len() <= 8, "{page}");
    let newest = refusals
        .last()
        .unwrap_or_else(|| panic!("audit lists no refusal of privd: {page}"));
    assert!(
        newest.to_string().contains("4242"),
        "newest refusal {newest}"
    );
    // The very line privd wrote to its log (JSON, so compared parsed).
    let privd_log = topo.privd(Node::Exit).stderr_text();
    assert!(
        privd_log
            .lines()
            .any(|l| serde_json::from_str::<Value>(l).ok().as_ref() == Some(newest)),
        "privd logged no line {newest}:\n{privd_log}"
    );
    let text = topo.ctl(
        Node::Exit,
        &["--privd-socket", &privd_sock.display().to_string(), "audit"],
    );
    let shown = String::from_utf8_lossy(&text.stdout);
    assert!(
        shown.contains(&format!("pid:          {}", topo.netd(Node::Exit).pid())),
        "{shown}"
    );
    assert!(
        shown
            .lines()
            .any(|l| l.starts_with("  refused:") && l.contains("4242")),
        "{shown}"
    );
}

/// `announce_routes = "interfaces"` on an exit with its underlay veth (which
/// holds the default route), the standard private LAN, a second LAN veth
/// into its own namespace (IPv4 and IPv6) and a third LAN the operator
/// excludes: the entry learns exactly the two LANs' prefixes (not the
/// underlay, not the TUN's networks, not link-local, not the excluded one),
/// the exit's status lists the same, and a ping from the entry reaches the
/// host in the second LAN, whose only route back is the exit. A network
/// added later is announced after a SIGHUP.
#[test]
fn announce_interfaces() {
    use sapper_tests::netns::{self, Netns};
    let mut topo = Topology::start(Options {
        start_daemons: false,
        exit_announce: vec![
            "announce_routes = \"interfaces\"".into(),
            "announce_exclude = [\"10.40.0.0/16\"]".into(),
        ],
        ..Options::new(Transport::Quic).node_lines(Node::Entry, &["auto_routes = true"])
    });
    topo.bins = Some(bins());
    let lan = Netns::create(netns::name_for('L', netns::next_id()));
    let x = &topo.exit;
    x.ip(&[
        "link",
        "add",
        "vx-l",
        "type",
        "veth",
        "peer",
        "name",
        "vl-x",
        "netns",
        lan.name(),
    ]);
    x.ip(&["addr", "add", "10.30.0.1/24", "dev", "vx-l"]);
    x.ip(&["addr", "add", "fd30::1/64", "dev", "vx-l", "nodad"]);
    x.ip(&["link", "set", "vx-l", "up"]);
    lan.ip(&["addr", "add", "10.30.0.2/24", "dev", "vl-x"]);
    lan.ip(&["link", "set", "vl-x", "up"]);
    // No dummy module on every test kernel: a veth pair with one end
    // addressed is a LAN just the same.
    x.ip(&[
        "link", "add", "lan3", "type", "veth", "peer", "name", "lan3p",
    ]);
    x.ip(&["addr", "add", "10.40.0.1/24", "dev", "lan3"]);
    x.ip(&["link", "set", "lan3", "up"]);
    x.ip(&["link", "set", "lan3p", "up"]);
    x.ip(&[
        "route",
        "add",
        "default",
        "via",
        ENTRY_UNDERLAY,
        "dev",
        "vx-e",
    ]);
    topo.start_daemons();
    topo.wait_for_peers();
    // What the entry learned from the exit, sorted; polled until it is
    // `want` (or the deadline), the last answer shown.
    let learned_is = |topo: &Topology, want: &[&str]| {
        let mut last = Vec::new();
        let res = wait_until("the exit's announcement at the entry", WAIT, || {
            let peers = topo.peers(Node::Entry).ok()?;
            let mut routes: Vec<String> = peers
                .first()?
                .get("routes")?
                .as_array()?
                .iter()
                .filter_map(|r| r.as_str().map(str::to_string))
                .collect();
            routes.sort();
            last = routes.clone();
            (routes == want).then_some(())
        });
        assert!(res.is_ok(), "the entry learned {last:?}, want {want:?}");
    };
    let want = vec!["10.20.0.0/24", "10.30.0.0/24", "fd30::/64"];
    learned_is(&topo, &want);
    let status = topo.ctl_json(Node::Exit, &["status"]).expect("status");
    assert_eq!(status["announce_source"], "interfaces", "{status}");
    assert_eq!(
        status["announced_routes"],
        serde_json::json!(want),
        "{status}"
    );
    let text = String::from_utf8_lossy(&topo.ctl(Node::Exit, &["status"]).stdout).to_string();
    assert!(
        text.contains(
            "announces:   10.20.0.0/24 10.30.0.0/24 fd30::/64 (networks of this node's interfaces)"
        ),
        "{text}"
    );
    let log = topo.netd(Node::Exit).stderr_text();
    assert!(
        log.contains("announce_interfaces") && log.contains("vx-e (default route)"),
        "{log}"
    );
    let ns = topo.entry.name().to_string();
    topo.wait_for("a ping from E to the second LAN's host", WAIT, || {
        ping_ns(&ns, "10.30.0.2", 1, 1)
            .status
            .success()
            .then_some(())
    });
    // A network that appears later is announced at the next reload (the
    // tables are read again), through the same link.
    topo.exit
        .ip(&["addr", "add", "10.50.0.1/24", "dev", "lan3p"]);
    hup(&topo, Node::Exit);
    learned_is(
        &topo,
        &["10.20.0.0/24", "10.30.0.0/24", "10.50.0.0/24", "fd30::/64"],
    );
    // From discovery to a list by reload: the list is announced and
    // status names where it comes from now.
    let cfg = topo.config_path(Node::Exit);
    let text = std::fs::read_to_string(&cfg).expect("read config");
    let listed = text
        .replace(
            "announce_routes = \"interfaces\"",
            "announce_routes = [\"10.30.0.0/24\"]",
        )
        .replace("announce_exclude = [\"10.40.0.0/16\"]\n", "");
    assert_ne!(listed, text);
    std::fs::write(&cfg, listed).expect("write config");
    hup(&topo, Node::Exit);
    learned_is(&topo, &["10.30.0.0/24"]);
    let status = topo.ctl_json(Node::Exit, &["status"]).expect("status");
    assert_eq!(status["announce_source"], "config", "{status}");
    drop(topo);
    drop(lan);
}
