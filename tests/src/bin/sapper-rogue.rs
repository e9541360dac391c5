//! A hostile Sapper node for the end-to-end tests: it speaks the protocol
//! (with the right PSK, when given one) and then misbehaves.
//!
//! ```text
//! sapper-rogue anon quic|ws ADDR FINGERPRINT [--bind IP]
//!     TLS (pinned) and the control stream, no PSK: waits 2 s having sent
//!     nothing, then sends a Handshake with a made-up proof. Prints
//!     `first=nothing|handshake|error|closed` and
//!     `after_bad_proof=nothing|handshake|error|closed`.
//! sapper-rogue peer ADDR FINGERPRINT PSKFILE [--bind IP] [--name N]
//!         [--hint entry|exit] [--address A]... [--announce P]... [--ws] STEP...
//!     A QUIC link (WebSocket with --ws) with the right PSK, then the steps
//!     in order:
//!       flood-routes N       N RouteUpdates of 1024 new /32s each
//!       update ORIGIN P,P..  one RouteUpdate
//!       withdraw ORIGIN P,P.. one RouteWithdraw
//!       pings N              N control Pings at once
//!       spoof SRC DST N      N UDP datagrams SRC:40000 → DST:9 as tunnel packets
//!       udp-tagged SRC DST N N UDP datagrams "rogue-i" SRC:40000 → DST:7002, 10 ms
//!                            apart; prints `ours=X foreign=Y` for the answers
//!                            that came back (carrying "rogue" / anything else)
//!       hold SECS            stay up (answering pings)
//!       super-malformed SRC DST  (WebSocket only) five WebSocket super-packet
//!                            messages (tag 2) SRC → DST that are not what they
//!                            claim: too short for the tag's header, segment size
//!                            0, an IP length that disagrees, a bad IHL, an IPv4
//!                            fragment; prints `sent=5`
//!     (spoof and udp-tagged need QUIC.)
//!     Prints `connected peer=NAME`, one `done STEP` per step.
//! sapper-rogue idle ADDR N SECS [--bind IP]
//!     N TCP connections that never speak, held SECS; prints `opened=N`.
//! ```
//!
//! Every mode ends by itself (deadlines on every wait).

use prost::Message as _;
use rustls::pki_types::ServerName;
use sapper_shared::framing::{self, FrameDecoder, MAX_CONTROL_FRAME, WS_TAG_CONTROL, WS_TAG_SUPER};
use sapper_shared::handshake::Handshaker;
use sapper_shared::proof::{ChannelBinding, Side, BINDING_LEN, EXPORTER_LABEL};
use sapper_shared::proto::control::{
    control_message::Body, ControlMessage, RouteUpdate, RouteWithdraw,
};
use sapper_shared::proto::data::{
    Capabilities, Handshake, HintLevel, NodeRole, Ping, Pong, RoleHint,
};
use sapper_shared::psk::Psk;
use sapper_tests::pinned::Pinned;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

type Res<T> = Result<T, String>;

fn main() -> ExitCode {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("sapper-rogue: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(async { tokio::time::timeout(Duration::from_secs(300), run()).await }) {
        Ok(Ok(())) => ExitCode::SUCCESS,
        Ok(Err(e)) => {
            println!("error: {e}");
            eprintln!("sapper-rogue: {e}");
            ExitCode::FAILURE
        }
        Err(_) => {
            eprintln!("sapper-rogue: overall deadline passed");
            ExitCode::FAILURE
        }
    }
}

fn take_flag(args: &mut Vec<String>, name: &str) -> Vec<String> {
    let mut out = Vec::new();
    while let Some(i) = args.iter().position(|a| a == name) {
        if i + 1 >= args.len() {
            break;
        }
        out.push(args.remove(i + 1));
        args.remove(i);
    }
    out
}

async fn run() -> Res<()> {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let bind: Option<IpAddr> = match take_flag(&mut args, "--bind").pop() {
        Some(b) => Some(b.parse().map_err(|e| format!("--bind {b}: {e}"))?),
        None => None,
    };
    let addr = |s: &str| {
        s.parse::<SocketAddr>()
            .map_err(|e| format!("bad address {s}: {e}"))
    };
    match args.first().map(String::as_str) {
        Some("anon") => {
            let [_, t, a, fp] = args.as_slice() else {
                return Err("usage: anon quic|ws ADDR FINGERPRINT".into());
            };
            anon(t, addr(a)?, &fingerprint(fp)?, bind).await
        }
        Some("peer") => {
            let name = take_flag(&mut args, "--name")
                .pop()
                .unwrap_or("rogue".into());
            let hint = take_flag(&mut args, "--hint")
                .pop()
                .unwrap_or("exit".into());
            let addresses = take_flag(&mut args, "--address");
            let announce = take_flag(&mut args, "--announce");
            let ws = match args.iter().position(|a| a == "--ws") {
                Some(i) => {
                    args.remove(i);
                    true
                }
                None => false,
            };
            if args.len() < 4 {
                return Err("usage: peer ADDR FINGERPRINT PSKFILE STEP...".into());
            }
            let psk_text = std::fs::read(&args[3]).map_err(|e| format!("{}: {e}", args[3]))?;
            let psk = Psk::new(zeroize::Zeroizing::new(psk_text)).map_err(|e| e.to_string())?;
            let local = Handshake {
                capabilities: Some(Capabilities {
                    tun_capable: false,
                    listening: false,
                    connecting: true,
                    super_packets: false,
                }),
                name,
                version: sapper_shared::PROTOCOL_VERSION,
                psk_proof: vec![],
                routes: announce,
                hint: Some(RoleHint {
                    level: HintLevel::Fixed as i32,
                    target: match hint.as_str() {
                        "entry" => NodeRole::RoleEntry,
                        _ => NodeRole::RoleExit,
                    } as i32,
                }),
                software: "sapper-rogue".into(),
                addresses,
            };
            peer(
                addr(&args[1])?,
                &fingerprint(&args[2])?,
                bind,
                ws,
                psk,
                local,
                &args[4..],
            )
            .await
        }
        Some("idle") => {
            let [_, a, n, secs] = args.as_slice() else {
                return Err("usage: idle ADDR N SECS".into());
            };
            let n: usize = n.parse().map_err(|_| format!("bad N {n}"))?;
            let secs: u64 = secs.parse().map_err(|_| format!("bad SECS {secs}"))?;
            idle(addr(a)?, n.min(100_000), secs.min(600), bind).await
        }
        _ => Err("usage: see tests/src/bin/sapper-rogue.rs".into()),
    }
}

fn fingerprint(s: &str) -> Res<[u8; 32]> {
    let hex: String = s.chars().filter(|c| *c != ':').collect();
    if hex.len() != 64 {
        return Err("FINGERPRINT: 64 hex digits".into());
    }
    let mut out = [0u8; 32];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).map_err(|_| "FINGERPRINT: hex")?;
    }
    Ok(out)
}

fn tls(fp: &[u8; 32], alpn: &[u8]) -> Res<rustls::ClientConfig> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let algs = provider.signature_verification_algorithms;
    let mut c = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(Pinned {
            fingerprint: *fp,
            algs,
        }))
        .with_no_client_auth();
    c.alpn_protocols = vec![alpn.to_vec()];
    Ok(c)
}

/// The control channel, either transport.
enum Control {
    Quic {
        conn: quinn::Connection,
        send: quinn::SendStream,
        recv: quinn::RecvStream,
        decoder: FrameDecoder,
        _endpoint: quinn::Endpoint,
    },
    Ws(
        Box<
            tokio_tungstenite::WebSocketStream<
                tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
            >,
        >,
    ),
}

/// What arrived within `wait`.
#[derive(Debug)]
enum Got {
    Nothing,
    Msg(ControlMessage),
    Closed,
}

impl Control {
    /// One binary WebSocket message as it is.
    async fn send_binary(&mut self, b: Vec<u8>) -> Res<()> {
        use futures_util::SinkExt;
        match self {
            Control::Quic { .. } => Err("this step needs WebSocket".into()),
            Control::Ws(ws) => ws
                .send(tokio_tungstenite::tungstenite::Message::Binary(b.into()))
                .await
                .map_err(|e| e.to_string()),
        }
    }

    async fn send(&mut self, m: &ControlMessage) -> Res<()> {
        use futures_util::SinkExt;
        match self {
            Control::Quic { send, .. } => send
                .write_all(&framing::encode(m))
                .await
                .map_err(|e| e.to_string()),
            Control::Ws(ws) => {
                let mut b = vec![WS_TAG_CONTROL];
                b.extend_from_slice(&m.encode_to_vec());
                ws.send(tokio_tungstenite::tungstenite::Message::Binary(b.into()))
                    .await
                    .map_err(|e| e.to_string())
            }
        }
    }

    async fn recv(&mut self, wait: Duration) -> Got {
        use futures_util::StreamExt;
        let fut = async {
            match self {
                Control::Quic { recv, decoder, .. } => loop {
                    match decoder.next_frame() {
                        Ok(Some(f)) => {
                            return framing::decode::<ControlMessage>(&f)
                                .map(Got::Msg)
                                .unwrap_or(Got::Closed)
                        }
                        Ok(None) => {}
                        Err(_) => return Got::Closed,
                    }
                    match recv.read_chunk(16 * 1024, true).await {
                        Ok(Some(c)) => decoder.push(&c.bytes),
                        _ => return Got::Closed,
                    }
                },
                Control::Ws(ws) => loop {
                    match ws.next().await {
                        Some(Ok(tokio_tungstenite::tungstenite::Message::Binary(b)))
                            if b.first() == Some(&WS_TAG_CONTROL) =>
                        {
                            return framing::decode::<ControlMessage>(&b[1..])
                                .map(Got::Msg)
                                .unwrap_or(Got::Closed)
                        }
                        Some(Ok(_)) => continue,
                        _ => return Got::Closed,
                    }
                },
            }
        };
        tokio::time::timeout(wait, fut)
            .await
            .unwrap_or(Got::Nothing)
    }
}

fn describe(g: &Got) -> &'static str {
    match g {
        Got::Nothing => "nothing",
        Got::Closed => "closed",
        Got::Msg(m) => match m.body {
            Some(Body::Handshake(_)) => "handshake",
            Some(Body::Error(_)) => "error",
            _ => "other",
        },
    }
}

async fn quic_connect(
    addr: SocketAddr,
    fp: &[u8; 32],
    bind: Option<IpAddr>,
) -> Res<(Control, ChannelBinding)> {
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls(fp, b"sapper/1")?)
        .map_err(|e| e.to_string())?;
    let client = quinn::ClientConfig::new(Arc::new(crypto));
    let local = SocketAddr::new(bind.unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED)), 0);
    let endpoint = quinn::Endpoint::client(local).map_err(|e| format!("QUIC endpoint: {e}"))?;
    let conn = tokio::time::timeout(
        Duration::from_secs(10),
        endpoint
            .connect_with(client, addr, "sapper")
            .map_err(|e| e.to_string())?,
    )
    .await
    .map_err(|_| "QUIC connect timed out")?
    .map_err(|e| format!("QUIC connect: {e}"))?;
    let mut b = [0u8; BINDING_LEN];
    conn.export_keying_material(&mut b, EXPORTER_LABEL, b"")
        .map_err(|_| "exporter")?;
    let (send, recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
    Ok((
        Control::Quic {
            conn,
            send,
            recv,
            decoder: FrameDecoder::new(MAX_CONTROL_FRAME),
            _endpoint: endpoint,
        },
        ChannelBinding(b),
    ))
}

async fn tcp_from(addr: SocketAddr, bind: Option<IpAddr>) -> Res<tokio::net::TcpStream> {
    let sock = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()
    } else {
        tokio::net::TcpSocket::new_v6()
    }
    .map_err(|e| e.to_string())?;
    if let Some(ip) = bind {
        sock.bind(SocketAddr::new(ip, 0))
            .map_err(|e| format!("bind {ip}: {e}"))?;
    }
    tokio::time::timeout(Duration::from_secs(10), sock.connect(addr))
        .await
        .map_err(|_| "TCP connect timed out".to_string())?
        .map_err(|e| format!("TCP connect: {e}"))
}

async fn ws_connect(
    addr: SocketAddr,
    fp: &[u8; 32],
    bind: Option<IpAddr>,
) -> Res<(Control, ChannelBinding)> {
    let tcp = tcp_from(addr, bind).await?;
    let connector = tokio_rustls::TlsConnector::from(Arc::new(tls(fp, b"http/1.1")?));
    let name = ServerName::try_from("sapper").map_err(|e| e.to_string())?;
    let stream = tokio::time::timeout(Duration::from_secs(10), connector.connect(name, tcp))
        .await
        .map_err(|_| "TLS timed out")?
        .map_err(|e| format!("TLS: {e}"))?;
    let b = stream
        .get_ref()
        .1
        .export_keying_material([0u8; BINDING_LEN], EXPORTER_LABEL, Some(b""))
        .map_err(|e| e.to_string())?;
    let url = format!("wss://{addr}/sapper");
    let (ws, _) = tokio::time::timeout(
        Duration::from_secs(10),
        tokio_tungstenite::client_async(url, stream),
    )
    .await
    .map_err(|_| "upgrade timed out")?
    .map_err(|e| format!("upgrade: {e}"))?;
    Ok((Control::Ws(Box::new(ws)), ChannelBinding(b)))
}

async fn anon(t: &str, addr: SocketAddr, fp: &[u8; 32], bind: Option<IpAddr>) -> Res<()> {
    let (mut c, _) = match t {
        "quic" => quic_connect(addr, fp, bind).await?,
        "ws" => ws_connect(addr, fp, bind).await?,
        other => return Err(format!("unknown transport {other}")),
    };
    if let Control::Quic { send, .. } = &mut c {
        // A QUIC stream exists for the listener only once a byte arrives on
        // it: send the first byte of a frame's length header, no more.
        send.write_all(&[0]).await.map_err(|e| e.to_string())?;
    }
    let first = c.recv(Duration::from_secs(2)).await;
    println!("first={}", describe(&first));
    if matches!(first, Got::Closed) {
        println!("after_bad_proof=closed");
        return Ok(());
    }
    let hs = Handshake {
        capabilities: Some(Capabilities::default()),
        name: "anon".into(),
        version: sapper_shared::PROTOCOL_VERSION,
        psk_proof: vec![0x42; 32],
        ..Default::default()
    };
    let m = ControlMessage {
        body: Some(Body::Handshake(hs)),
    };
    match &mut c {
        Control::Quic { send, .. } => {
            // The rest of the frame after the one header byte sent above.
            let f = framing::encode(&m);
            send.write_all(&f[1..]).await.map_err(|e| e.to_string())?;
        }
        Control::Ws(_) => c.send(&m).await?,
    }
    let mut after = c.recv(Duration::from_secs(3)).await;
    // An error may be followed by nothing else; a Handshake anywhere is the
    // finding.
    if matches!(after, Got::Msg(_)) && describe(&after) == "error" {
        let next = c.recv(Duration::from_millis(500)).await;
        if describe(&next) == "handshake" {
            after = next;
        }
    }
    println!("after_bad_proof={}", describe(&after));
    Ok(())
}

async fn peer(
    addr: SocketAddr,
    fp: &[u8; 32],
    bind: Option<IpAddr>,
    ws: bool,
    psk: Psk,
    local: Handshake,
    steps: &[String],
) -> Res<()> {
    let (mut c, binding) = if ws {
        ws_connect(addr, fp, bind).await?
    } else {
        quic_connect(addr, fp, bind).await?
    };
    let mut hs = Handshaker::new(local, Side::Client, binding, Some(psk));
    c.send(&hs.outgoing()).await?;
    let name = match c.recv(Duration::from_secs(10)).await {
        Got::Msg(m) => {
            let a = hs.receive(&m.encode_to_vec()).map_err(|e| e.to_string())?;
            a.peer.name
        }
        other => return Err(format!("no handshake back: {}", describe(&other))),
    };
    println!("connected peer={name}");
    let quic = match &c {
        Control::Quic { conn, .. } => Some(conn.clone()),
        Control::Ws(_) => None,
    };
    let datagrams = || {
        quic.clone()
            .ok_or_else(|| "this step needs QUIC".to_string())
    };
    let mut i = 0;
    let mut next_net: u32 = 0;
    while i < steps.len() {
        let step = steps[i].as_str();
        let arg = |k: usize| -> Res<&str> {
            steps
                .get(i + k)
                .map(String::as_str)
                .ok_or_else(|| format!("{step}: missing argument {k}"))
        };
        match step {
            "flood-routes" => {
                let n: u32 = arg(1)?.parse().map_err(|_| "flood-routes N")?;
                for _ in 0..n {
                    let prefixes = (0..1024)
                        .map(|_| {
                            next_net += 1;
                            // 100.64.0.0/10 and up: never the test's networks.
                            let a = Ipv4Addr::from(0x6440_0000u32.wrapping_add(next_net));
                            format!("{a}/32")
                        })
                        .collect();
                    let m = ControlMessage {
                        body: Some(Body::RouteUpdate(RouteUpdate {
                            prefixes,
                            origin: "rogue".into(),
                        })),
                    };
                    c.send(&m).await?;
                    answer_pings(&mut c).await?;
                }
                i += 2;
            }
            "update" | "withdraw" => {
                let origin = arg(1)?.to_string();
                let prefixes: Vec<String> = arg(2)?.split(',').map(str::to_string).collect();
                let body = if step == "update" {
                    Body::RouteUpdate(RouteUpdate { prefixes, origin })
                } else {
                    Body::RouteWithdraw(RouteWithdraw { prefixes, origin })
                };
                c.send(&ControlMessage { body: Some(body) }).await?;
                i += 3;
            }
            "pings" => {
                let n: u64 = arg(1)?.parse().map_err(|_| "pings N")?;
                for t in 0..n {
                    let m = ControlMessage {
                        body: Some(Body::Ping(Ping { timestamp_ms: t })),
                    };
                    c.send(&m).await?;
                    if t % 256 == 255 {
                        // Still answer the listener's keepalives: the
                        // flood is the finding, not a dead link.
                        answer_pings(&mut c).await?;
                    }
                }
                i += 2;
            }
            "spoof" => {
                let src: Ipv4Addr = arg(1)?.parse().map_err(|_| "spoof SRC")?;
                let dst: Ipv4Addr = arg(2)?.parse().map_err(|_| "spoof DST")?;
                let n: u32 = arg(3)?.parse().map_err(|_| "spoof N")?;
                let conn = datagrams()?;
                for k in 0..n {
                    let pkt = udp_packet(src, dst, 40000, 9, &k.to_be_bytes());
                    conn.send_datagram(pkt.into()).map_err(|e| e.to_string())?;
                    if k % 64 == 63 {
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                }
                i += 4;
            }
            "udp-tagged" => {
                let src: Ipv4Addr = arg(1)?.parse().map_err(|_| "udp-tagged SRC")?;
                let dst: Ipv4Addr = arg(2)?.parse().map_err(|_| "udp-tagged DST")?;
                let n: u32 = arg(3)?.parse().map_err(|_| "udp-tagged N")?;
                let conn = datagrams()?;
                let (mut ours, mut foreign) = (0u32, 0u32);
                let mut count = |d: &[u8]| {
                    // IPv4 + UDP to SRC:40000 only.
                    if d.len() < 28
                        || d[9] != 17
                        || d[16..20] != src.octets()
                        || d[22..24] != 40000u16.to_be_bytes()
                    {
                        return;
                    }
                    if d[28..].starts_with(b"rogue") {
                        ours += 1;
                    } else {
                        foreign += 1;
                    }
                };
                for k in 0..n.min(100_000) {
                    let pkt = udp_packet(src, dst, 40000, 7002, format!("rogue-{k}").as_bytes());
                    conn.send_datagram(pkt.into()).map_err(|e| e.to_string())?;
                    let end = tokio::time::Instant::now() + Duration::from_millis(10);
                    while let Ok(Ok(d)) = tokio::time::timeout_at(end, conn.read_datagram()).await {
                        count(&d);
                    }
                    // Still a live peer: keepalives answered.
                    if let Got::Msg(ControlMessage {
                        body: Some(Body::Ping(p)),
                    }) = c.recv(Duration::from_millis(1)).await
                    {
                        pong(&mut c, &p).await?;
                    }
                }
                let end = tokio::time::Instant::now() + Duration::from_millis(500);
                while let Ok(Ok(d)) = tokio::time::timeout_at(end, conn.read_datagram()).await {
                    count(&d);
                }
                println!("ours={ours} foreign={foreign}");
                i += 4;
            }
            "super-malformed" => {
                let src: Ipv4Addr = arg(1)?.parse().map_err(|_| "super-malformed SRC")?;
                let dst: Ipv4Addr = arg(2)?.parse().map_err(|_| "super-malformed DST")?;
                // A UDP super-packet of four 1000-byte datagrams, then ways
                // for it to lie.
                let good = udp_packet(src, dst, 40000, 7002, &[0x5a; 4000]);
                let mut wrong_len = good.clone();
                wrong_len[2..4].copy_from_slice(&5000u16.to_be_bytes());
                let mut bad_ihl = good.clone();
                bad_ihl[0] = 0x43;
                let mut fragment = good.clone();
                fragment[6] = 0x20; // more fragments
                let msgs: [(u16, &[u8]); 5] = [
                    (1000, &[]),
                    (0, &good),
                    (1000, &wrong_len),
                    (1000, &bad_ihl),
                    (1000, &fragment),
                ];
                for (k, (gso, pkt)) in msgs.iter().enumerate() {
                    let mut b = vec![WS_TAG_SUPER];
                    if k > 0 {
                        b.extend_from_slice(&gso.to_be_bytes());
                    }
                    b.extend_from_slice(pkt);
                    c.send_binary(b).await?;
                }
                println!("sent={}", msgs.len());
                i += 3;
            }
            "hold" => {
                let secs: u64 = arg(1)?.parse().map_err(|_| "hold SECS")?;
                let end = tokio::time::Instant::now() + Duration::from_secs(secs.min(300));
                while tokio::time::Instant::now() < end {
                    match c.recv(Duration::from_millis(100)).await {
                        Got::Msg(ControlMessage {
                            body: Some(Body::Ping(p)),
                        }) => pong(&mut c, &p).await?,
                        Got::Closed => return Err("the link was closed while holding".into()),
                        _ => {}
                    }
                }
                i += 2;
            }
            other => return Err(format!("unknown step {other}")),
        }
        println!("done {step}");
    }
    Ok(())
}

async fn pong(c: &mut Control, p: &Ping) -> Res<()> {
    c.send(&ControlMessage {
        body: Some(Body::Pong(Pong {
            timestamp_ms: p.timestamp_ms,
        })),
    })
    .await
}

/// Answers whatever pings have already arrived, without waiting.
async fn answer_pings(c: &mut Control) -> Res<()> {
    loop {
        match c.recv(Duration::from_millis(1)).await {
            Got::Msg(ControlMessage {
                body: Some(Body::Ping(p)),
            }) => pong(c, &p).await?,
            Got::Closed => return Err("the link was closed".into()),
            Got::Nothing => return Ok(()),
            Got::Msg(_) => {}
        }
    }
}

/// An IPv4/UDP packet with correct checksums.
fn udp_packet(src: Ipv4Addr, dst: Ipv4Addr, sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let ulen = 8 + payload.len();
    let total = 20 + ulen;
    let mut p = vec![0u8; total];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
    p[8] = 64;
    p[9] = 17;
    p[12..16].copy_from_slice(&src.octets());
    p[16..20].copy_from_slice(&dst.octets());
    let c = checksum(&p[..20], 0);
    p[10..12].copy_from_slice(&c.to_be_bytes());
    p[20..22].copy_from_slice(&sport.to_be_bytes());
    p[22..24].copy_from_slice(&dport.to_be_bytes());
    p[24..26].copy_from_slice(&(ulen as u16).to_be_bytes());
    p[28..].copy_from_slice(payload);
    let mut pseudo: u32 = 0;
    for w in [src.octets(), dst.octets()] {
        pseudo += u32::from(u16::from_be_bytes([w[0], w[1]]))
            + u32::from(u16::from_be_bytes([w[2], w[3]]));
    }
    pseudo += 17 + ulen as u32;
    let c = checksum(&p[20..], pseudo);
    p[26..28].copy_from_slice(&(if c == 0 { 0xffff } else { c }).to_be_bytes());
    p
}

fn checksum(data: &[u8], init: u32) -> u16 {
    let mut sum = init;
    for ch in data.chunks(2) {
        let w = if ch.len() == 2 {
            u16::from_be_bytes([ch[0], ch[1]])
        } else {
            u16::from_be_bytes([ch[0], 0])
        };
        sum += u32::from(w);
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

async fn idle(addr: SocketAddr, n: usize, secs: u64, bind: Option<IpAddr>) -> Res<()> {
    raise_nofile(n as u64 + 64);
    let mut held = Vec::with_capacity(n);
    for _ in 0..n {
        match tcp_from(addr, bind).await {
            Ok(s) => held.push(s),
            Err(e) => {
                eprintln!("sapper-rogue: connection {} failed: {e}", held.len());
                break;
            }
        }
    }
    println!("opened={}", held.len());
    tokio::time::sleep(Duration::from_secs(secs)).await;
    // Count the ones the listener closed meanwhile.
    let mut closed = 0;
    for s in &mut held {
        let mut b = [0u8; 1];
        if let Ok(Ok(0)) = tokio::time::timeout(Duration::from_millis(1), s.read(&mut b)).await {
            closed += 1;
        }
    }
    let _ = held.first_mut().map(|s| s.shutdown());
    println!("closed_by_listener={closed}");
    Ok(())
}

fn raise_nofile(n: u64) {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit write/read the struct we own.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) == 0 && r.rlim_cur < n {
            r.rlim_cur = n.min(r.rlim_max.max(n));
            r.rlim_max = r.rlim_max.max(n);
            libc::setrlimit(libc::RLIMIT_NOFILE, &r);
        }
    }
}
