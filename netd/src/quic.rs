//! QUIC links (quinn): IP packets ride in unreliable datagrams; one
//! bidirectional stream, opened by the dialler, carries control messages.
//! A packet larger than the path's current datagram limit goes on a
//! unidirectional stream instead of being dropped, so a TUN MTU above the
//! QUIC datagram size costs latency for those packets, never the link.

use crate::datapath::{Packet, PacketTx};
use crate::link::{run_link, Inbound, Link};
use crate::node::Node;
use crate::quic_tls::{Probe, ProbedClient, ProbedServer};
use crate::target::{Dial, Target};
use crate::tls::{Negotiated, ServerTls};
use anyhow::{anyhow, bail, Context, Result};
use bytes::Bytes;
use sapper_control::Direction;
use sapper_shared::config::{NetdConfig, Transport};
use sapper_shared::framing::{self, FrameDecoder, HEADER_LEN, MAX_CONTROL_FRAME};
use sapper_shared::proof::{ChannelBinding, BINDING_LEN, EXPORTER_LABEL};
use sapper_shared::proto::control::ControlMessage;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::task::JoinSet;

pub fn transport_config(node_cfg: &NetdConfig) -> Arc<quinn::TransportConfig> {
    Arc::new(base_transport(node_cfg))
}

fn base_transport(node_cfg: &NetdConfig) -> quinn::TransportConfig {
    let mut t = quinn::TransportConfig::default();
    // Our own pings detect dead peers; QUIC's idle timeout is a backstop a
    // little beyond the point where keepalive would have given up.
    // At most a day times u32::MAX + 2: no overflow (typed bounds).
    let idle =
        Duration::from_millis(node_cfg.ping_interval.get() * (node_cfg.ping_miss_limit.get() + 2))
            .max(Duration::from_secs(5));
    if let Ok(idle) = quinn::IdleTimeout::try_from(idle) {
        t.max_idle_timeout(Some(idle));
    }
    t.keep_alive_interval(Some(node_cfg.ping_interval.millis()));
    // Bounded buffers: a peer can fill them, so they have limits.
    t.datagram_receive_buffer_size(Some(4 << 20));
    t.datagram_send_buffer_size(4 << 20);
    t.max_concurrent_uni_streams(MAX_BIG_STREAMS_WINDOW.into());
    t.max_concurrent_bidi_streams(1u32.into());
    t.stream_receive_window(STREAM_WINDOW.into());
    t.receive_window(AUTHENTICATED_WINDOW.into());
    t
}

/// Flow-control window of one stream (a control frame or a big packet fits).
const STREAM_WINDOW: u32 = 256 * 1024;
/// The connection's receive window once the peer proved the PSK.
const AUTHENTICATED_WINDOW: u32 = 16 << 20;
/// Big-packet streams a peer may have open once authenticated.
const MAX_BIG_STREAMS_WINDOW: u32 = 16;

/// The listener's transport config: until the dialler's proof verified, a
/// connection may open only the control stream and send no more than one
/// control frame's worth; [`QuicLink::authenticated`] raises both. (quinn
/// fixes the datagram buffer per connection: datagrams arriving before the
/// proof are read and discarded, see [`QuicLink::new`].)
fn server_transport_config(node_cfg: &NetdConfig) -> Arc<quinn::TransportConfig> {
    let mut t = base_transport(node_cfg);
    t.max_concurrent_uni_streams(0u32.into());
    t.receive_window(PREAUTH_WINDOW.into());
    Arc::new(t)
}

/// The connection's receive window before the proof verified.
const PREAUTH_WINDOW: u32 = 2 * MAX_CONTROL_FRAME as u32;

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
    node_cfg: &NetdConfig,
    tls: ServerTls,
) -> Result<(quinn::Endpoint, Arc<QuicServer>)> {
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls.shared())
        .context("building the QUIC server TLS config")?;
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    server.transport_config(server_transport_config(node_cfg));
    size_buffers(&socket);
    let runtime = quinn::default_runtime().ok_or_else(|| anyhow!("no async runtime"))?;
    let endpoint = quinn::Endpoint::new(
        crate::reset_key::endpoint_config(),
        Some(server.clone()),
        socket,
        runtime,
    )
    .context("creating the QUIC endpoint")?;
    Ok((endpoint, Arc::new(QuicServer { tls, base: server })))
}

pub async fn accept_loop(
    node: Arc<Node>,
    endpoint: quinn::Endpoint,
    server: Arc<QuicServer>,
    allowed: Option<Arc<Vec<ipnet::IpNet>>>,
) {
    loop {
        let incoming = tokio::select! {
            _ = node.shutdown.cancelled() => break,
            i = endpoint.accept() => match i { Some(i) => i, None => break },
        };
        // The gate first: a connection past the pre-auth cap costs nothing
        // more; near the cap an unvalidated address is asked to Retry (one
        // round trip, no state kept here) before it gets any.
        let remote = incoming.remote_address();
        if node.preauth.under_pressure()
            && !incoming.remote_address_validated()
            && incoming.may_retry()
        {
            if incoming.retry().is_ok() {
                crate::metrics::recorded().quic_retry();
            }
            continue;
        }
        let ticket = match node.preauth.admit(remote.ip()) {
            Ok(t) => t,
            Err(full) => {
                tracing::debug!(%remote, ?full, "pre-auth cap reached; QUIC connection refused");
                incoming.refuse();
                continue;
            }
        };
        let node = node.clone();
        let server = server.clone();
        let allowed = allowed.as_deref().cloned();
        tokio::spawn(async move {
            if let Err(e) = accept_one(node, incoming, &server, ticket, allowed).await {
                tracing::debug!(%remote, error = %sapper_shared::text::sanitize(&format!("{e:#}"), sapper_shared::text::MAX_PEER_STRING), "QUIC link ended");
            }
        });
    }
    endpoint.close(0u32.into(), b"shutdown");
}

async fn accept_one(
    node: Arc<Node>,
    incoming: quinn::Incoming,
    server: &QuicServer,
    ticket: crate::preauth::Ticket,
    allowed: Option<Vec<ipnet::IpNet>>,
) -> Result<()> {
    let remote = incoming.remote_address();
    // One deadline for TLS, the control stream and the Sapper handshake.
    let deadline = tokio::time::Instant::now() + node.cfg.handshake_timeout.millis();
    let (cfg, offered, probe) = server.for_connection()?;
    let failed = |e: quinn::ConnectionError| {
        if let Some(why) = offered.kx_refusal(server.tls.key_exchange) {
            crate::link::tls_refused(&node, remote, "quic", &why);
            return anyhow!("TLS handshake failed: {why}: {e}");
        }
        anyhow!(e).context("TLS handshake failed")
    };
    // A ClientHello that fits one packet is processed, and may be refused,
    // right here; a longer one (ML-KEM key shares) while connecting.
    let connecting = incoming.accept_with(cfg).map_err(failed)?;
    let conn = match tokio::time::timeout_at(deadline, connecting).await {
        Err(_) => bail!("TLS handshake timed out"),
        Ok(Err(e)) => return Err(failed(e)),
        Ok(Ok(c)) => c,
    };
    let tls = probe.negotiated()?;
    let (send, recv) = tokio::time::timeout_at(deadline, conn.accept_bi())
        .await
        .context("peer opened no control stream")?
        .context("accepting the control stream")?;
    let mut link = QuicLink::new(conn, send, recv, None, node.cfg.peer_queue.as_usize(), tls)?;
    link.ticket = Some(ticket);
    run_link(node, link, Direction::Inbound, deadline, allowed).await
}

/// True when the peer closed the connection with TLS alert
/// handshake_failure (40), which is how a listener says it shares no
/// key-exchange group (or cipher suite) with us.
fn closed_by_handshake_failure(e: &quinn::ConnectionError) -> bool {
    const HANDSHAKE_FAILURE: u8 = 40;
    matches!(e, quinn::ConnectionError::ConnectionClosed(c)
        if c.error_code == quinn::TransportErrorCode::crypto(HANDSHAKE_FAILURE))
}

/// Dials `target` and opens the control stream.
pub async fn connect(
    cfg: &NetdConfig,
    target: &Target,
    tls: Arc<rustls::ClientConfig>,
) -> Result<QuicLink> {
    let addr = target.resolve().await?;
    let bind: SocketAddr = if addr.is_ipv4() {
        "0.0.0.0:0".parse()?
    } else {
        "[::]:0".parse()?
    };
    let socket = std::net::UdpSocket::bind(bind).context("binding a UDP socket")?;
    size_buffers(&socket);
    let runtime = quinn::default_runtime().ok_or_else(|| anyhow!("no async runtime"))?;
    let endpoint = quinn::Endpoint::new(crate::reset_key::endpoint_config(), None, socket, runtime)
        .context("creating the QUIC endpoint")?;
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls)
        .map_err(|e| anyhow!("building the QUIC client TLS config: {e}"))?;
    let probe = Arc::new(Probe::default());
    let mut client = quinn::ClientConfig::new(Arc::new(ProbedClient {
        inner: Arc::new(crypto),
        probe: probe.clone(),
    }));
    client.transport_config(transport_config(cfg));
    let timeout = cfg.handshake_timeout.millis();
    let conn = match tokio::time::timeout(
        timeout,
        endpoint.connect_with(client, addr, target.server_name())?,
    )
    .await
    {
        Err(_) => bail!("QUIC connect timed out"),
        Ok(Err(e)) if closed_by_handshake_failure(&e) => {
            let why = crate::tls::client_refusal(cfg.tls.key_exchange);
            bail!("QUIC connect to {addr}: {why}: {e}");
        }
        Ok(Err(e)) => return Err(anyhow!(e).context(format!("QUIC connect to {addr}"))),
        Ok(Ok(c)) => c,
    };
    let tls = probe.negotiated()?;
    let (send, recv) = tokio::time::timeout(timeout, conn.open_bi())
        .await
        .context("opening the control stream timed out")?
        .context("opening the control stream")?;
    QuicLink::new(
        conn,
        send,
        recv,
        Some(endpoint),
        cfg.peer_queue.as_usize(),
        tls,
    )
}

/// A QUIC link: control frames on the bidirectional stream, packets in
/// datagrams (or on a unidirectional stream when too big for one).
pub struct QuicLink {
    conn: quinn::Connection,
    send: quinn::SendStream,
    recv: quinn::RecvStream,
    decoder: FrameDecoder,
    binding: ChannelBinding,
    /// The dialler's own endpoint, drained when the link closes.
    endpoint: Option<quinn::Endpoint>,
    big_tx: mpsc::Sender<Bytes>,
    big_rx: Option<mpsc::Receiver<Bytes>>,
    tasks: JoinSet<()>,
    /// What the TLS handshake negotiated.
    tls: Negotiated,
    /// An accepted link's place at the pre-auth gate.
    ticket: Option<crate::preauth::Ticket>,
    /// Reads and discards datagrams until the peer is authenticated.
    drain: Option<tokio::task::JoinHandle<()>>,
}

impl QuicLink {
    fn new(
        conn: quinn::Connection,
        send: quinn::SendStream,
        recv: quinn::RecvStream,
        endpoint: Option<quinn::Endpoint>,
        peer_queue: usize,
        tls: Negotiated,
    ) -> Result<Self> {
        let mut b = [0u8; BINDING_LEN];
        conn.export_keying_material(&mut b, EXPORTER_LABEL, b"")
            .map_err(|_| anyhow!("TLS exporter unavailable"))?;
        let (big_tx, big_rx) = mpsc::channel(peer_queue.clamp(1, 256));
        // Until the handshake passed nothing reads datagrams, and quinn would
        // keep up to its buffer size of them per connection: drop them.
        let drainer = conn.clone();
        let drain = tokio::spawn(async move { while drainer.read_datagram().await.is_ok() {} });
        Ok(Self {
            ticket: None,
            drain: Some(drain),
            conn,
            send,
            recv,
            decoder: FrameDecoder::new(MAX_CONTROL_FRAME),
            binding: ChannelBinding(b),
            endpoint,
            big_tx,
            big_rx: Some(big_rx),
            tasks: JoinSet::new(),
            tls,
        })
    }
}

/// Bytes read from a stream per call; a decoder never holds more than one
/// frame plus one read.
const READ_CHUNK: usize = 16 * 1024;

/// Reads one frame from `recv` through `decoder`; cancel-safe (a
/// cancelled read leaves what it got in the decoder).
async fn next_frame(recv: &mut quinn::RecvStream, decoder: &mut FrameDecoder) -> Result<Vec<u8>> {
    loop {
        if let Some(f) = decoder.next_frame()? {
            return Ok(f);
        }
        match recv.read_chunk(READ_CHUNK, true).await? {
            Some(chunk) => decoder.push(&chunk.bytes),
            None => bail!("stream closed"),
        }
    }
}

struct QuicTx {
    conn: quinn::Connection,
    big: mpsc::Sender<Bytes>,
}

impl PacketTx for QuicTx {
    fn try_send(&self, pkt: Packet) -> bool {
        let pkt = pkt.into_bytes();
        match self.conn.max_datagram_size() {
            Some(max) if pkt.len() <= max => self.conn.send_datagram(pkt).is_ok(),
            _ => self.big.try_send(pkt).is_ok(),
        }
    }
}

impl Link for QuicLink {
    fn channel_binding(&self) -> ChannelBinding {
        ChannelBinding(self.binding.0)
    }

    fn remote(&self) -> SocketAddr {
        self.conn.remote_address()
    }

    fn transport(&self) -> Transport {
        Transport::Quic
    }

    fn tls(&self) -> &Negotiated {
        &self.tls
    }

    async fn send_control(&mut self, msg: &ControlMessage) -> Result<()> {
        self.send
            .write_all(&framing::encode(msg))
            .await
            .context("writing the control stream")
    }

    async fn recv_control(&mut self) -> Result<Vec<u8>> {
        tokio::select! {
            f = next_frame(&mut self.recv, &mut self.decoder) => f,
            e = self.conn.closed() => Err(anyhow!(e)),
        }
    }

    fn packet_tx(&mut self) -> Box<dyn PacketTx> {
        Box::new(QuicTx {
            conn: self.conn.clone(),
            big: self.big_tx.clone(),
        })
    }

    fn authenticated(&mut self) {
        self.ticket = None;
        self.conn.set_receive_window(AUTHENTICATED_WINDOW.into());
        self.conn
            .set_max_concurrent_uni_streams(MAX_BIG_STREAMS_WINDOW.into());
    }

    fn start(&mut self, inbound: Inbound) {
        if let Some(d) = self.drain.take() {
            d.abort();
        }
        let conn = self.conn.clone();
        self.tasks.spawn(datagram_reader(conn, inbound.clone()));
        self.tasks.spawn(big_reader(self.conn.clone(), inbound));
        if let Some(rx) = self.big_rx.take() {
            self.tasks.spawn(big_writer(self.conn.clone(), rx));
        }
    }

    async fn close(mut self, reason: &str) {
        if reason == "handshake rejected" {
            // Give the error frame a moment to leave before closing.
            let _ = self.send.finish();
            let _ = tokio::time::timeout(Duration::from_millis(500), self.send.stopped()).await;
            self.conn.close(1u32.into(), b"handshake rejected");
        } else {
            self.conn.close(0u32.into(), b"bye");
        }
        self.tasks.abort_all();
        if let Some(d) = self.drain.take() {
            d.abort();
        }
        if let Some(ep) = self.endpoint.take() {
            let _ = tokio::time::timeout(Duration::from_secs(3), ep.wait_idle()).await;
        }
    }
}

/// Hands the peer's datagrams to the data path: every datagram already
/// there (up to a batch) is taken without waiting, so that packets of one
/// flow can be joined into one TUN write before the reader waits again.
async fn datagram_reader(conn: quinn::Connection, inbound: Inbound) {
    use futures_util::FutureExt;
    let mut rx = inbound.rx();
    while let Ok(d) = conn.read_datagram().await {
        inbound.packet(Packet::plain(d), &mut rx);
        for _ in 1..crate::gso::RX_BATCH {
            // A pending read that is dropped loses nothing: quinn hands a
            // datagram over only to a poll that returns it.
            match conn.read_datagram().now_or_never() {
                Some(Ok(d)) => inbound.packet(Packet::plain(d), &mut rx),
                Some(Err(_)) => {
                    inbound.flush(&mut rx);
                    return;
                }
                None => break,
            }
        }
        inbound.flush(&mut rx);
    }
    inbound.flush(&mut rx);
}

/// Big-packet streams read at once per link.
const MAX_BIG_STREAMS: usize = 16;

/// Accepts the peer's big-packet streams.
async fn big_reader(conn: quinn::Connection, inbound: Inbound) {
    let mut readers = JoinSet::new();
    while let Ok(mut recv) = conn.accept_uni().await {
        while readers.try_join_next().is_some() {}
        if readers.len() >= MAX_BIG_STREAMS {
            let _ = recv.stop(0u32.into());
            continue;
        }
        let inbound = inbound.clone();
        readers.spawn(async move {
            let mut decoder = FrameDecoder::new(sapper_shared::routing::MAX_IP_PACKET);
            let mut rx = inbound.rx();
            while let Ok(pkt) = next_frame(&mut recv, &mut decoder).await {
                inbound.packet(Packet::plain(Bytes::from(pkt)), &mut rx);
                inbound.flush(&mut rx);
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
