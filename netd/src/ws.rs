//! WebSocket-over-TLS links (tokio-rustls + tokio-tungstenite), for networks
//! where only HTTPS gets through or a reverse proxy fronts the node. Every
//! binary message starts with a one-byte tag: `TAG_CONTROL` followed by one
//! encoded ControlMessage, `TAG_PACKET` followed by one IP packet, or (to a
//! peer that advertised `super_packets`) `TAG_SUPER`, a u16 segment size and
//! one GSO super-packet (see `sapper_shared::framing`).
//! WebSocket pings keep middleboxes from timing the link out; Sapper's own
//! pings measure latency and detect a dead peer.

use crate::datapath::{Packet, PacketTx};
use crate::link::{run_link, Inbound, Link};
use crate::node::Node;
use crate::target::{Dial, Target};
use crate::tls::{Negotiated, ServerTls};
use anyhow::{anyhow, bail, Context, Result};
use bytes::{BufMut, Bytes, BytesMut};
use futures_util::{SinkExt, StreamExt};
use prost::Message as _;
use sapper_control::Direction;
use sapper_shared::config::{NetdConfig, Transport};
use sapper_shared::proof::{ChannelBinding, BINDING_LEN, EXPORTER_LABEL};
use sapper_shared::proto::control::ControlMessage;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::{TlsAcceptor, TlsConnector};
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;
use tokio_util::sync::CancellationToken;

use sapper_shared::framing::MAX_CONTROL_FRAME;
use sapper_shared::framing::WS_SUPER_HEADER;
pub use sapper_shared::framing::{
    WS_TAG_CONTROL as TAG_CONTROL, WS_TAG_PACKET as TAG_PACKET, WS_TAG_SUPER as TAG_SUPER,
};
use sapper_shared::routing::MAX_IP_PACKET;

/// One IP packet (a super-packet too) or one control frame, plus its tag
/// (and segment size), fits; nothing larger is buffered for a peer.
const MAX_MESSAGE: usize = WS_SUPER_HEADER
    + if MAX_IP_PACKET > MAX_CONTROL_FRAME {
        MAX_IP_PACKET
    } else {
        MAX_CONTROL_FRAME
    };
/// Interval of WebSocket-level pings.
const WS_PING: Duration = Duration::from_secs(15);

fn ws_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .max_message_size(Some(MAX_MESSAGE))
        .max_frame_size(Some(MAX_MESSAGE))
        .max_write_buffer_size(4 << 20)
}

pub async fn accept_loop(
    node: Arc<Node>,
    listener: TcpListener,
    tls: Arc<ServerTls>,
    path: String,
    allowed: Option<Arc<Vec<ipnet::IpNet>>>,
) {
    let path = Arc::new(path);
    loop {
        let (tcp, remote) = tokio::select! {
            _ = node.shutdown.cancelled() => return,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "accepting a TCP connection failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        // Past the pre-auth cap the socket is closed at once: no TLS, no task.
        let ticket = match node.preauth.admit(remote.ip()) {
            Ok(t) => t,
            Err(full) => {
                tracing::debug!(%remote, ?full, "pre-auth cap reached; TCP connection closed");
                drop(tcp);
                continue;
            }
        };
        let (node, tls, path) = (node.clone(), tls.clone(), path.clone());
        let allowed = allowed.as_deref().cloned();
        tokio::spawn(async move {
            if let Err(e) = accept_one(node, tcp, remote, tls, &path, ticket, allowed).await {
                tracing::debug!(%remote, error = %format!("{e:#}"), "WebSocket link ended");
            }
        });
    }
}

async fn accept_one(
    node: Arc<Node>,
    tcp: TcpStream,
    remote: SocketAddr,
    server: Arc<ServerTls>,
    path: &str,
    ticket: crate::preauth::Ticket,
    allowed: Option<Vec<ipnet::IpNet>>,
) -> Result<()> {
    let _ = tcp.set_nodelay(true);
    // One deadline for TLS, the upgrade and the Sapper handshake.
    let deadline = tokio::time::Instant::now() + node.cfg.handshake_timeout.millis();
    let (cfg, offered) = server.for_connection();
    let tls = match tokio::time::timeout_at(deadline, TlsAcceptor::from(cfg).accept(tcp)).await {
        Err(_) => bail!("TLS handshake timed out"),
        Ok(Err(e)) => {
            if let Some(why) = offered.kx_refusal(server.key_exchange) {
                crate::link::tls_refused(&node, remote, "ws", &why);
                bail!("TLS handshake failed: {why}: {e}");
            }
            return Err(anyhow!(e).context("TLS handshake failed"));
        }
        Ok(Ok(t)) => t,
    };
    let binding = channel_binding(tls.get_ref().1)?;
    let negotiated = Negotiated::from_rustls(tls.get_ref().1)?;
    // The callback's signature is tungstenite's; its error type is not ours to shrink.
    #[allow(clippy::result_large_err)]
    let check_path = |req: &Request, resp: Response| -> Result<Response, ErrorResponse> {
        if req.uri().path() == path {
            Ok(resp)
        } else {
            let mut e = ErrorResponse::new(Some("not found".into()));
            *e.status_mut() = tokio_tungstenite::tungstenite::http::StatusCode::NOT_FOUND;
            Err(e)
        }
    };
    let ws = tokio::time::timeout_at(
        deadline,
        tokio_tungstenite::accept_hdr_async_with_config(tls, check_path, Some(ws_config())),
    )
    .await
    .context("WebSocket upgrade timed out")?
    .context("WebSocket upgrade failed")?;
    let mut link = WsLink::new(
        ws,
        remote,
        binding,
        node.cfg.peer_queue.as_usize(),
        negotiated,
    );
    link.ticket = Some(ticket);
    run_link(node, link, Direction::Inbound, deadline, allowed).await
}

/// The RFC 9266 tls-exporter value of a finished TLS 1.3 session.
fn channel_binding<D>(conn: &rustls::ConnectionCommon<D>) -> Result<ChannelBinding> {
    conn.export_keying_material([0u8; BINDING_LEN], EXPORTER_LABEL, Some(b""))
        .map(ChannelBinding)
        .map_err(|e| anyhow!("TLS exporter unavailable: {e}"))
}

/// Dials `target`: TCP, TLS, then the WebSocket upgrade.
pub async fn connect(
    cfg: &NetdConfig,
    target: &Target,
    tls: Arc<rustls::ClientConfig>,
) -> Result<WsLink<tokio_rustls::client::TlsStream<TcpStream>>> {
    let timeout = cfg.handshake_timeout.millis();
    let (tcp, addr) = match target.proxy() {
        None => {
            let addr = target.resolve().await?;
            let tcp = tokio::time::timeout(timeout, TcpStream::connect(addr))
                .await
                .context("TCP connect timed out")?
                .with_context(|| format!("TCP connect to {addr}"))?;
            (tcp, addr)
        }
        Some(proxy) => {
            let creds = proxy
                .credentials_file
                .as_deref()
                .map(crate::proxy::credentials)
                .transpose()?;
            let tcp =
                crate::proxy::tunnel(proxy, target.address(), creds.as_deref(), timeout).await?;
            drop(creds);
            // The peer's own address when the entry names one; behind a
            // proxy its name may not resolve here, so else the proxy's.
            let addr = match target.address().parse::<SocketAddr>() {
                Ok(a) => a,
                Err(_) => tcp.peer_addr().context("proxy connection's address")?,
            };
            tracing::debug!(peer = %target.address(), proxy = %proxy.url, from_env = proxy.from_env, "tunnel through the HTTP proxy open");
            (tcp, addr)
        }
    };
    let _ = tcp.set_nodelay(true);
    let name = rustls_pki_types::ServerName::try_from(target.server_name().to_string())
        .context("invalid TLS server name")?;
    let tls = match tokio::time::timeout(timeout, TlsConnector::from(tls).connect(name, tcp)).await
    {
        Err(_) => bail!("TLS handshake timed out"),
        Ok(Err(e)) if refused_by_handshake_failure(&e) => {
            let why = crate::tls::client_refusal(cfg.tls.key_exchange);
            bail!("TLS handshake failed: {why}: {e}");
        }
        Ok(Err(e)) => return Err(anyhow!(e).context("TLS handshake failed")),
        Ok(Ok(t)) => t,
    };
    let binding = channel_binding(tls.get_ref().1)?;
    let negotiated = Negotiated::from_rustls(tls.get_ref().1)?;
    let url = format!("wss://{}{}", target.address(), target.ws_path().as_str());
    let (ws, _) = tokio::time::timeout(
        timeout,
        tokio_tungstenite::client_async_with_config(url, tls, Some(ws_config())),
    )
    .await
    .context("WebSocket upgrade timed out")?
    .context("WebSocket upgrade failed")?;
    Ok(WsLink::new(
        ws,
        addr,
        binding,
        cfg.peer_queue.as_usize(),
        negotiated,
    ))
}

/// True when the listener ended the TLS handshake with alert
/// handshake_failure: it shares no key-exchange group (or suite) with us.
fn refused_by_handshake_failure(e: &std::io::Error) -> bool {
    matches!(
        e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()),
        Some(rustls::Error::AlertReceived(
            rustls::AlertDescription::HandshakeFailure
        ))
    )
}

fn tagged(tag: u8, body: &[u8]) -> Message {
    let mut b = BytesMut::with_capacity(1 + body.len());
    b.put_u8(tag);
    b.extend_from_slice(body);
    Message::Binary(b.freeze())
}

/// Control messages waiting for the writer, at most.
const CONTROL_QUEUE: usize = 64;

/// A WebSocket link: one writer task owns the sink (control first, then
/// packets, batched); the supervisor reads the stream, handing packets to
/// the data path and returning control messages.
pub struct WsLink<S> {
    stream: futures_util::stream::SplitStream<WebSocketStream<S>>,
    control: mpsc::Sender<ControlMessage>,
    data: mpsc::Sender<Packet>,
    close: CancellationToken,
    writer: tokio::task::JoinHandle<()>,
    remote: SocketAddr,
    binding: ChannelBinding,
    inbound: Option<Inbound>,
    /// The reader's receive state, from `start` on.
    rx: Option<crate::gso::Rx>,
    /// Packets handed on since the last flush of `rx`.
    unflushed: usize,
    /// What the TLS handshake negotiated.
    tls: Negotiated,
    /// An accepted link's place at the pre-auth gate.
    ticket: Option<crate::preauth::Ticket>,
}

impl<S> WsLink<S>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    fn new(
        ws: WebSocketStream<S>,
        remote: SocketAddr,
        binding: ChannelBinding,
        queue: usize,
        tls: Negotiated,
    ) -> Self {
        let (sink, stream) = ws.split();
        let (control, control_rx) = mpsc::channel(CONTROL_QUEUE);
        let (data, data_rx) = mpsc::channel(queue.max(1));
        let close = CancellationToken::new();
        let writer = tokio::spawn(writer(sink, control_rx, data_rx, close.clone()));
        Self {
            stream,
            control,
            data,
            close,
            writer,
            remote,
            binding,
            inbound: None,
            rx: None,
            unflushed: 0,
            tls,
            ticket: None,
        }
    }
}

struct WsTx(mpsc::Sender<Packet>);

impl PacketTx for WsTx {
    fn try_send(&self, pkt: Packet) -> bool {
        // Tagged (if it was not already) by the writer, into its arena.
        self.0.try_send(pkt).is_ok()
    }
}

impl<S> Link for WsLink<S>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    fn channel_binding(&self) -> ChannelBinding {
        ChannelBinding(self.binding.0)
    }

    fn remote(&self) -> SocketAddr {
        self.remote
    }

    fn transport(&self) -> Transport {
        Transport::Ws
    }

    fn tls(&self) -> &Negotiated {
        &self.tls
    }

    async fn send_control(&mut self, msg: &ControlMessage) -> Result<()> {
        self.control
            .send(msg.clone())
            .await
            .map_err(|_| anyhow!("the WebSocket writer has stopped"))
    }

    async fn recv_control(&mut self) -> Result<Vec<u8>> {
        let writer_gone = self.close.clone();
        tokio::select! {
            r = self.read_control() => r,
            _ = writer_gone.cancelled() => bail!("the WebSocket writer has stopped"),
        }
    }

    fn packet_tx(&mut self) -> Box<dyn PacketTx> {
        Box::new(WsTx(self.data.clone()))
    }

    fn authenticated(&mut self) {
        self.ticket = None;
    }

    fn start(&mut self, inbound: Inbound) {
        self.rx = Some(inbound.rx());
        self.inbound = Some(inbound);
    }

    async fn close(mut self, _reason: &str) {
        // The writer sends a Close frame when it sees the cancellation.
        self.close.cancel();
        if tokio::time::timeout(Duration::from_millis(500), &mut self.writer)
            .await
            .is_err()
        {
            self.writer.abort();
        }
    }
}

impl<S> WsLink<S>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    /// Reads until a control message, handing packets on; cancel-safe
    /// (what is held for the TUN is written before every wait, so a
    /// cancelled read leaves nothing behind). Messages already received are
    /// taken without waiting, up to a batch, so that a flow's packets can be
    /// joined into one TUN write.
    async fn read_control(&mut self) -> Result<Vec<u8>> {
        use futures_util::FutureExt;
        loop {
            let next = match self.stream.next().now_or_never() {
                Some(m) if self.unflushed < crate::gso::RX_BATCH => m,
                ready => {
                    self.flush();
                    match ready {
                        Some(m) => m,
                        None => self.stream.next().await,
                    }
                }
            };
            match next {
                None => bail!("connection closed"),
                Some(Err(e)) => return Err(anyhow!(e).context("reading the WebSocket")),
                Some(Ok(Message::Binary(b))) => {
                    let pkt = match b.first() {
                        Some(&TAG_CONTROL) => {
                            self.flush();
                            return Ok(b[1..].to_vec());
                        }
                        Some(&TAG_PACKET) => Packet::tagged(b),
                        Some(&TAG_SUPER) => match Packet::super_packet(b) {
                            Some(p) => p,
                            None => {
                                if let Some(inbound) = &self.inbound {
                                    inbound.malformed(sapper_offload::Error::Truncated);
                                }
                                continue;
                            }
                        },
                        _ => bail!("unknown WebSocket message tag"),
                    };
                    match (&self.inbound, self.rx.as_mut()) {
                        (Some(inbound), Some(rx)) => {
                            inbound.packet(pkt, rx);
                            self.unflushed += 1;
                        }
                        _ => bail!("expected a control message"),
                    }
                }
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                Some(Ok(Message::Close(_))) => bail!("connection closed"),
                Some(Ok(other)) => bail!("unexpected WebSocket message {other:?}"),
            }
        }
    }

    /// Writes what the reader holds for the TUN.
    fn flush(&mut self) {
        if let (Some(inbound), Some(rx)) = (&self.inbound, self.rx.as_mut()) {
            inbound.flush(rx);
        }
        self.unflushed = 0;
    }
}

async fn writer<S>(
    mut sink: futures_util::stream::SplitSink<WebSocketStream<S>, Message>,
    mut control: mpsc::Receiver<ControlMessage>,
    mut data: mpsc::Receiver<Packet>,
    close: CancellationToken,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    // Where packets from QUIC (no headroom) get their tag.
    let mut arena = BytesMut::new();
    let mut ping = tokio::time::interval(WS_PING);
    ping.tick().await;
    loop {
        let msg = tokio::select! {
            biased;
            _ = close.cancelled() => {
                // Whatever control is still queued (a Disconnect) goes first.
                while let Ok(c) = control.try_recv() {
                    let _ = sink.feed(tagged(TAG_CONTROL, &c.encode_to_vec())).await;
                }
                let _ = sink.send(Message::Close(None)).await;
                return;
            }
            Some(c) = control.recv() => tagged(TAG_CONTROL, &c.encode_to_vec()),
            // With its tag in front: no copy when it had headroom.
            Some(p) = data.recv() => Message::Binary(p.into_tagged(&mut arena)),
            _ = ping.tick() => Message::Ping(Bytes::new()),
        };
        // Batch: queue without flushing while more packets are waiting.
        let r = if data.is_empty() {
            sink.send(msg).await
        } else {
            sink.feed(msg).await
        };
        if r.is_err() {
            break;
        }
    }
    close.cancel();
}
