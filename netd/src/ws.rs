//! WebSocket-over-TLS links (tokio-rustls + tokio-tungstenite), for networks
//! where only HTTPS gets through or a reverse proxy fronts the node. Every
//! binary message starts with a one-byte tag: `TAG_CONTROL` followed by one
//! encoded ControlMessage, or `TAG_PACKET` followed by one IP packet.
//! WebSocket pings keep middleboxes from timing the link out; Sapper's own
//! pings measure latency and detect a dead peer.

use crate::node::{Node, PacketPath, Peer};
use crate::session::{self, ControlIo};
use crate::tls::{Negotiated, ServerTls};
use anyhow::{anyhow, bail, Context, Result};
use bytes::{BufMut, Bytes, BytesMut};
use futures_util::{SinkExt, StreamExt};
use prost::Message as _;
use sapper_shared::config::{ConnectConfig, Transport};
use sapper_shared::proof::{ChannelBinding, Side, BINDING_LEN, EXPORTER_LABEL};
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

pub const TAG_CONTROL: u8 = 0;
pub const TAG_PACKET: u8 = 1;

/// One IP packet plus its tag, or one control message, fits; nothing larger
/// is buffered for a peer.
const MAX_MESSAGE: usize = 1 + 65536;
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
        let (node, tls, path) = (node.clone(), tls.clone(), path.clone());
        tokio::spawn(async move {
            if let Err(e) = accept_one(node, tcp, remote, tls, &path).await {
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
) -> Result<()> {
    let _ = tcp.set_nodelay(true);
    let timeout = Duration::from_millis(node.cfg.handshake_timeout_ms);
    let (cfg, offered) = server.for_connection();
    let tls = match tokio::time::timeout(timeout, TlsAcceptor::from(cfg).accept(tcp)).await {
        Err(_) => bail!("TLS handshake timed out"),
        Ok(Err(e)) => {
            if let Some(why) = offered.kx_refusal(server.key_exchange) {
                session::tls_refused(&node, remote, "ws", &why);
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
    let ws = tokio::time::timeout(
        timeout,
        tokio_tungstenite::accept_hdr_async_with_config(tls, check_path, Some(ws_config())),
    )
    .await
    .context("WebSocket upgrade timed out")?
    .context("WebSocket upgrade failed")?;
    run(node, ws, Side::Server, false, remote, binding, negotiated).await
}

/// The RFC 9266 tls-exporter value of a finished TLS 1.3 session.
fn channel_binding<D>(conn: &rustls::ConnectionCommon<D>) -> Result<ChannelBinding> {
    conn.export_keying_material([0u8; BINDING_LEN], EXPORTER_LABEL, Some(b""))
        .map(ChannelBinding)
        .map_err(|e| anyhow!("TLS exporter unavailable: {e}"))
}

pub async fn dial(
    node: Arc<Node>,
    target: &ConnectConfig,
    tls: Arc<rustls::ClientConfig>,
) -> Result<()> {
    let addr = crate::dial::resolve(&target.address).await?;
    let timeout = Duration::from_millis(node.cfg.handshake_timeout_ms);
    let tcp = tokio::time::timeout(timeout, TcpStream::connect(addr))
        .await
        .context("TCP connect timed out")?
        .with_context(|| format!("TCP connect to {addr}"))?;
    let _ = tcp.set_nodelay(true);
    let name = rustls_pki_types::ServerName::try_from(crate::dial::server_name(target))
        .context("invalid TLS server name")?;
    let tls = match tokio::time::timeout(timeout, TlsConnector::from(tls).connect(name, tcp)).await
    {
        Err(_) => bail!("TLS handshake timed out"),
        Ok(Err(e)) if refused_by_handshake_failure(&e) => {
            let why = crate::tls::client_refusal(node.cfg.tls.key_exchange());
            bail!("TLS handshake failed: {why}: {e}");
        }
        Ok(Err(e)) => return Err(anyhow!(e).context("TLS handshake failed")),
        Ok(Ok(t)) => t,
    };
    let binding = channel_binding(tls.get_ref().1)?;
    let negotiated = Negotiated::from_rustls(tls.get_ref().1)?;
    let url = format!("wss://{}{}", target.address, target.ws_path);
    let (ws, _) = tokio::time::timeout(
        timeout,
        tokio_tungstenite::client_async_with_config(url, tls, Some(ws_config())),
    )
    .await
    .context("WebSocket upgrade timed out")?
    .context("WebSocket upgrade failed")?;
    run(node, ws, Side::Client, true, addr, binding, negotiated).await
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

struct WsControl<'a, S> {
    ws: &'a mut WebSocketStream<S>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> ControlIo for WsControl<'_, S> {
    async fn send(&mut self, msg: &ControlMessage) -> Result<()> {
        self.ws
            .send(tagged(TAG_CONTROL, &msg.encode_to_vec()))
            .await
            .context("sending a control message")
    }

    async fn recv(&mut self) -> Result<Vec<u8>> {
        loop {
            match self.ws.next().await {
                None => bail!("connection closed"),
                Some(Err(e)) => return Err(anyhow!(e).context("reading the WebSocket")),
                Some(Ok(Message::Binary(b))) => match b.split_first() {
                    Some((&TAG_CONTROL, body)) => return Ok(body.to_vec()),
                    _ => bail!("expected a control message"),
                },
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                Some(Ok(other)) => bail!("unexpected WebSocket message {other:?}"),
            }
        }
    }
}

async fn run<S>(
    node: Arc<Node>,
    mut ws: WebSocketStream<S>,
    side: Side,
    outbound: bool,
    remote: SocketAddr,
    binding: ChannelBinding,
    tls: Negotiated,
) -> Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let accepted = {
        let mut io = WsControl { ws: &mut ws };
        match session::handshake(&node, &mut io, side, binding, remote, &tls).await {
            Ok(a) => a,
            Err(e) => {
                let _ = tokio::time::timeout(Duration::from_millis(500), ws.close(None)).await;
                return Err(e);
            }
        }
    };
    let (control_tx, control_rx) = mpsc::channel(64);
    let (data_tx, data_rx) = mpsc::channel(node.cfg.peer_queue);
    let peer = Arc::new(Peer::new(
        &node,
        accepted,
        tls,
        remote,
        Transport::Ws,
        outbound,
        control_tx,
        PacketPath::Ws { tx: data_tx },
    ));
    node.register(peer.clone());
    tracing::info!(sapper_event = "peer_connected", peer = %peer.handshake.name, %remote, transport = "ws", "peer connected");

    let (sink, stream) = ws.split();
    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(writer(sink, control_rx, data_rx, peer.close.clone()));
    tasks.spawn(reader(node.clone(), peer.clone(), stream));
    tasks.spawn(session::keepalive(node.clone(), peer.clone()));
    let reason = tokio::select! {
        _ = peer.close.cancelled() => "closed",
        _ = node.shutdown.cancelled() => {
            peer.disconnect("shutting down");
            peer.close.cancelled().await;
            "shutdown"
        }
        _ = tasks.join_next() => "link task ended",
    };
    peer.close.cancel();
    // The writer sends a Close frame when it sees the cancellation.
    let _ = tokio::time::timeout(Duration::from_millis(500), tasks.join_next()).await;
    tasks.abort_all();
    node.unregister(&peer, reason);
    tracing::info!(sapper_event = "peer_disconnected", peer = %peer.handshake.name, %reason, "peer disconnected");
    Ok(())
}

async fn writer<S>(
    mut sink: futures_util::stream::SplitSink<WebSocketStream<S>, Message>,
    mut control: mpsc::Receiver<ControlMessage>,
    mut data: mpsc::Receiver<Bytes>,
    close: CancellationToken,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut ping = tokio::time::interval(WS_PING);
    ping.tick().await;
    loop {
        let msg = tokio::select! {
            biased;
            _ = close.cancelled() => {
                let _ = sink.send(Message::Close(None)).await;
                return;
            }
            Some(c) = control.recv() => tagged(TAG_CONTROL, &c.encode_to_vec()),
            Some(p) = data.recv() => tagged(TAG_PACKET, &p),
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

async fn reader<S>(
    node: Arc<Node>,
    peer: Arc<Peer>,
    mut stream: futures_util::stream::SplitStream<WebSocketStream<S>>,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    while let Some(m) = stream.next().await {
        match m {
            Ok(Message::Binary(b)) => match b.split_first() {
                Some((&TAG_PACKET, pkt)) => node.deliver(&peer, pkt).await,
                Some((&TAG_CONTROL, body)) => session::handle_control(&node, &peer, body),
                _ => {
                    tracing::warn!(peer = %peer.handshake.name, "unknown WebSocket message tag; closing");
                    break;
                }
            },
            Ok(Message::Close(_)) => break,
            Ok(_) => {}
            Err(e) => {
                tracing::debug!(peer = %peer.handshake.name, error = %e, "WebSocket read failed");
                break;
            }
        }
    }
    peer.close.cancel();
}
