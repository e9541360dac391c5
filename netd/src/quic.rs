//! QUIC links (quinn): IP packets ride in unreliable datagrams; one
//! bidirectional stream, opened by the dialler, carries control messages.
//! A packet larger than the path's current datagram limit goes on a
//! unidirectional stream instead of being dropped, so a TUN MTU above the
//! QUIC datagram size costs latency for those packets, never the link.

use crate::node::{Node, PacketPath, Peer};
use crate::quic_tls::{Probe, ProbedClient, ProbedServer};
use crate::session::{self, ControlIo};
use crate::tls::{Negotiated, ServerTls};
use anyhow::{anyhow, bail, Context, Result};
use bytes::Bytes;
use sapper_shared::config::{ConnectConfig, Transport};
use sapper_shared::framing::{self, HEADER_LEN, MAX_CONTROL_FRAME};
use sapper_shared::proof::{ChannelBinding, Side, BINDING_LEN, EXPORTER_LABEL};
use sapper_shared::proto::control::ControlMessage;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Largest IP packet accepted on the big-packet stream.
const MAX_PACKET: usize = 65535;

pub fn transport_config(
    node_cfg: &sapper_shared::config::NetdConfig,
) -> Arc<quinn::TransportConfig> {
    let mut t = quinn::TransportConfig::default();
    // Our own pings detect dead peers; QUIC's idle timeout is a backstop a
    // little beyond the point where keepalive would have given up.
    let idle = Duration::from_millis(
        node_cfg.ping_interval_ms * (u64::from(node_cfg.ping_miss_limit) + 2),
    )
    .max(Duration::from_secs(5));
    if let Ok(idle) = quinn::IdleTimeout::try_from(idle) {
        t.max_idle_timeout(Some(idle));
    }
    t.keep_alive_interval(Some(Duration::from_millis(node_cfg.ping_interval_ms)));
    // Bounded buffers: a peer can fill them, so they have limits.
    t.datagram_receive_buffer_size(Some(4 << 20));
    t.datagram_send_buffer_size(4 << 20);
    t.max_concurrent_uni_streams(16u32.into());
    t.max_concurrent_bidi_streams(1u32.into());
    Arc::new(t)
}

/// Socket buffer size asked for on QUIC sockets. The kernel's default
/// (~200 KiB) overflows in bursts at a few hundred Mbit/s and every overflow
/// is a lost tunnel packet; the kernel caps the request at
/// net.core.rmem_max / wmem_max (the package's sysctl.d file raises them).
const UDP_BUFFER: usize = 4 << 20;

fn size_buffers(socket: &std::net::UdpSocket) {
    use nix::sys::socket::{setsockopt, sockopt};
    if let Err(e) = setsockopt(socket, sockopt::RcvBuf, &UDP_BUFFER) {
        tracing::debug!(error = %e, "SO_RCVBUF not raised");
    }
    if let Err(e) = setsockopt(socket, sockopt::SndBuf, &UDP_BUFFER) {
        tracing::debug!(error = %e, "SO_SNDBUF not raised");
    }
}

/// A QUIC listener's configs: each accepted connection gets its own TLS
/// config (to record its ClientHello) and crypto wrapper (to record what
/// the handshake negotiated).
pub struct QuicServer {
    tls: ServerTls,
    base: quinn::ServerConfig,
}

impl QuicServer {
    fn for_connection(
        &self,
    ) -> Result<(
        Arc<quinn::ServerConfig>,
        Arc<crate::tls::Offered>,
        Arc<Probe>,
    )> {
        let (tls, offered) = self.tls.for_connection();
        let inner = quinn::crypto::rustls::QuicServerConfig::try_from(tls)
            .context("building the QUIC server TLS config")?;
        let probe = Arc::new(Probe::default());
        let mut cfg = self.base.clone();
        cfg.crypto = Arc::new(ProbedServer {
            inner: Arc::new(inner),
            probe: probe.clone(),
        });
        Ok((Arc::new(cfg), offered, probe))
    }
}

pub fn server_endpoint(
    socket: std::net::UdpSocket,
    node_cfg: &sapper_shared::config::NetdConfig,
    tls: ServerTls,
) -> Result<(quinn::Endpoint, Arc<QuicServer>)> {
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls.shared())
        .context("building the QUIC server TLS config")?;
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    server.transport_config(transport_config(node_cfg));
    size_buffers(&socket);
    let runtime = quinn::default_runtime().ok_or_else(|| anyhow!("no async runtime"))?;
    let endpoint = quinn::Endpoint::new(
        quinn::EndpointConfig::default(),
        Some(server.clone()),
        socket,
        runtime,
    )
    .context("creating the QUIC endpoint")?;
    Ok((endpoint, Arc::new(QuicServer { tls, base: server })))
}

pub async fn accept_loop(node: Arc<Node>, endpoint: quinn::Endpoint, server: Arc<QuicServer>) {
    loop {
        let incoming = tokio::select! {
            _ = node.shutdown.cancelled() => break,
            i = endpoint.accept() => match i { Some(i) => i, None => break },
        };
        let node = node.clone();
        let server = server.clone();
        tokio::spawn(async move {
            let remote = incoming.remote_address();
            if let Err(e) = accept_one(node, incoming, &server).await {
                tracing::debug!(%remote, error = %format!("{e:#}"), "QUIC link ended");
            }
        });
    }
    endpoint.close(0u32.into(), b"shutdown");
}

async fn accept_one(node: Arc<Node>, incoming: quinn::Incoming, server: &QuicServer) -> Result<()> {
    let remote = incoming.remote_address();
    let timeout = Duration::from_millis(node.cfg.handshake_timeout_ms);
    let (cfg, offered, probe) = server.for_connection()?;
    let failed = |e: quinn::ConnectionError| {
        if let Some(why) = offered.kx_refusal(server.tls.key_exchange) {
            session::tls_refused(&node, remote, "quic", &why);
            return anyhow!("TLS handshake failed: {why}: {e}");
        }
        anyhow!(e).context("TLS handshake failed")
    };
    // A ClientHello that fits one packet is processed, and may be refused,
    // right here; a longer one (ML-KEM key shares) while connecting.
    let connecting = incoming.accept_with(cfg).map_err(failed)?;
    let conn = match tokio::time::timeout(timeout, connecting).await {
        Err(_) => bail!("TLS handshake timed out"),
        Ok(Err(e)) => return Err(failed(e)),
        Ok(Ok(c)) => c,
    };
    let tls = probe.negotiated()?;
    let (send, recv) = tokio::time::timeout(timeout, conn.accept_bi())
        .await
        .context("peer opened no control stream")?
        .context("accepting the control stream")?;
    run(node, conn, send, recv, Side::Server, false, tls).await
}

/// True when the peer closed the connection with TLS alert
/// handshake_failure (40), which is how a listener says it shares no
/// key-exchange group (or cipher suite) with us.
fn closed_by_handshake_failure(e: &quinn::ConnectionError) -> bool {
    const HANDSHAKE_FAILURE: u8 = 40;
    matches!(e, quinn::ConnectionError::ConnectionClosed(c)
        if c.error_code == quinn::TransportErrorCode::crypto(HANDSHAKE_FAILURE))
}

/// Dials `target`; returns when an established link ends (Ok) or when
/// connecting or the handshake fails (Err).
pub async fn dial(
    node: Arc<Node>,
    target: &ConnectConfig,
    tls: Arc<rustls::ClientConfig>,
) -> Result<()> {
    let addr = crate::dial::resolve(&target.address).await?;
    let bind: SocketAddr = if addr.is_ipv4() {
        "0.0.0.0:0".parse()?
    } else {
        "[::]:0".parse()?
    };
    let socket = std::net::UdpSocket::bind(bind).context("binding a UDP socket")?;
    size_buffers(&socket);
    let runtime = quinn::default_runtime().ok_or_else(|| anyhow!("no async runtime"))?;
    let endpoint = quinn::Endpoint::new(quinn::EndpointConfig::default(), None, socket, runtime)
        .context("creating the QUIC endpoint")?;
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls)
        .map_err(|e| anyhow!("building the QUIC client TLS config: {e}"))?;
    let probe = Arc::new(Probe::default());
    let mut client = quinn::ClientConfig::new(Arc::new(ProbedClient {
        inner: Arc::new(crypto),
        probe: probe.clone(),
    }));
    client.transport_config(transport_config(&node.cfg));
    let server_name = crate::dial::server_name(target);
    let timeout = Duration::from_millis(node.cfg.handshake_timeout_ms);
    let conn =
        match tokio::time::timeout(timeout, endpoint.connect_with(client, addr, &server_name)?)
            .await
        {
            Err(_) => bail!("QUIC connect timed out"),
            Ok(Err(e)) if closed_by_handshake_failure(&e) => {
                let why = crate::tls::client_refusal(node.cfg.tls.key_exchange());
                bail!("QUIC connect to {addr}: {why}: {e}");
            }
            Ok(Err(e)) => return Err(anyhow!(e).context(format!("QUIC connect to {addr}"))),
            Ok(Ok(c)) => c,
        };
    let tls = probe.negotiated()?;
    let (send, recv) = conn.open_bi().await.context("opening the control stream")?;
    let r = run(node, conn, send, recv, Side::Client, true, tls).await;
    endpoint.wait_idle().await;
    r
}

struct QuicControl {
    send: quinn::SendStream,
    recv: quinn::RecvStream,
}

impl ControlIo for QuicControl {
    async fn send(&mut self, msg: &ControlMessage) -> Result<()> {
        self.send
            .write_all(&framing::encode(msg))
            .await
            .context("writing the control stream")
    }

    async fn recv(&mut self) -> Result<Vec<u8>> {
        read_frame(&mut self.recv, MAX_CONTROL_FRAME).await
    }
}

async fn read_frame(recv: &mut quinn::RecvStream, max: usize) -> Result<Vec<u8>> {
    let mut header = [0u8; HEADER_LEN];
    recv.read_exact(&mut header)
        .await
        .context("reading a frame header")?;
    let len = framing::body_len(header, max)?;
    let mut body = vec![0u8; len];
    recv.read_exact(&mut body)
        .await
        .context("reading a frame body")?;
    Ok(body)
}

fn binding(conn: &quinn::Connection) -> Result<ChannelBinding> {
    let mut b = [0u8; BINDING_LEN];
    conn.export_keying_material(&mut b, EXPORTER_LABEL, b"")
        .map_err(|_| anyhow!("TLS exporter unavailable"))?;
    Ok(ChannelBinding(b))
}

async fn run(
    node: Arc<Node>,
    conn: quinn::Connection,
    send: quinn::SendStream,
    recv: quinn::RecvStream,
    side: Side,
    outbound: bool,
    tls: Negotiated,
) -> Result<()> {
    let remote = conn.remote_address();
    let mut io = QuicControl { send, recv };
    let accepted =
        match session::handshake(&node, &mut io, side, binding(&conn)?, remote, &tls).await {
            Ok(a) => a,
            Err(e) => {
                // Give the error frame a moment to leave before closing.
                let _ = io.send.finish();
                let _ = tokio::time::timeout(Duration::from_millis(500), io.send.stopped()).await;
                conn.close(1u32.into(), b"handshake rejected");
                return Err(e);
            }
        };
    let (control_tx, control_rx) = mpsc::channel(64);
    let (big_tx, big_rx) = mpsc::channel(node.cfg.peer_queue.min(256));
    let peer = Arc::new(Peer::new(
        &node,
        accepted,
        tls,
        remote,
        Transport::Quic,
        outbound,
        control_tx,
        PacketPath::Quic {
            conn: conn.clone(),
            big: big_tx,
        },
    ));
    node.register(peer.clone());
    tracing::info!(sapper_event = "peer_connected", peer = %peer.handshake.name, %remote, transport = "quic", "peer connected");

    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(control_writer(io.send, control_rx, peer.close.clone()));
    tasks.spawn(control_reader(node.clone(), peer.clone(), io.recv));
    tasks.spawn(datagram_reader(node.clone(), peer.clone(), conn.clone()));
    tasks.spawn(big_reader(node.clone(), peer.clone(), conn.clone()));
    tasks.spawn(big_writer(conn.clone(), big_rx));
    tasks.spawn(session::keepalive(node.clone(), peer.clone()));

    let reason = tokio::select! {
        _ = peer.close.cancelled() => "closed".to_string(),
        _ = node.shutdown.cancelled() => {
            peer.disconnect("shutting down");
            peer.close.cancelled().await;
            "shutdown".to_string()
        }
        e = conn.closed() => e.to_string(),
        _ = tasks.join_next() => "link task ended".to_string(),
    };
    peer.close.cancel();
    conn.close(0u32.into(), b"bye");
    tasks.abort_all();
    node.unregister(&peer, &reason);
    tracing::info!(sapper_event = "peer_disconnected", peer = %peer.handshake.name, %reason, "peer disconnected");
    Ok(())
}

async fn control_writer(
    mut send: quinn::SendStream,
    mut rx: mpsc::Receiver<ControlMessage>,
    close: CancellationToken,
) {
    while let Some(msg) = rx.recv().await {
        if send.write_all(&framing::encode(&msg)).await.is_err() {
            break;
        }
    }
    close.cancel();
}

async fn control_reader(node: Arc<Node>, peer: Arc<Peer>, mut recv: quinn::RecvStream) {
    loop {
        match read_frame(&mut recv, MAX_CONTROL_FRAME).await {
            Ok(body) => session::handle_control(&node, &peer, &body),
            Err(e) => {
                tracing::debug!(peer = %peer.handshake.name, error = %format!("{e:#}"), "control stream ended");
                break;
            }
        }
    }
    peer.close.cancel();
}

async fn datagram_reader(node: Arc<Node>, peer: Arc<Peer>, conn: quinn::Connection) {
    while let Ok(d) = conn.read_datagram().await {
        node.deliver(&peer, &d).await;
    }
}

/// Accepts the peer's big-packet streams.
async fn big_reader(node: Arc<Node>, peer: Arc<Peer>, conn: quinn::Connection) {
    while let Ok(mut recv) = conn.accept_uni().await {
        let node = node.clone();
        let peer = peer.clone();
        tokio::spawn(async move {
            while let Ok(pkt) = read_frame(&mut recv, MAX_PACKET).await {
                node.deliver(&peer, &pkt).await;
            }
        });
    }
}

/// Sends packets too big for a datagram on one lazily opened stream.
async fn big_writer(conn: quinn::Connection, mut rx: mpsc::Receiver<Bytes>) {
    let mut stream: Option<quinn::SendStream> = None;
    while let Some(pkt) = rx.recv().await {
        if stream.is_none() {
            match conn.open_uni().await {
                Ok(s) => stream = Some(s),
                Err(_) => return,
            }
        }
        let Some(s) = stream.as_mut() else { return };
        let mut frame = Vec::with_capacity(HEADER_LEN + pkt.len());
        frame.extend_from_slice(&(pkt.len() as u32).to_be_bytes());
        frame.extend_from_slice(&pkt);
        if s.write_all(&frame).await.is_err() {
            stream = None;
        }
    }
}
