//! One link supervisor for every transport: the Sapper handshake, then
//! registration with the driver, then control messages both ways until the
//! link ends. Transports are adapters behind [`Link`]; the decisions are the
//! control core's.

use crate::datapath::{DataPath, LinkData, Packet, PacketTx};
use crate::gso::Rx;
use crate::inputs::{Input, LinkHandle, LINK_CONTROL_QUEUE};
use crate::node::Node;
use crate::tls::Negotiated;
use anyhow::{anyhow, Result};
use sapper_control::{Direction, LinkId, LinkUp};
use sapper_shared::config::Transport;
use sapper_shared::handshake::{Accepted, Handshaker};
use sapper_shared::proof::{ChannelBinding, Side};
use sapper_shared::proto::control::{
    control_message::Body, ControlError, ControlMessage, Disconnect,
};
use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Where a link hands the packets it receives: the data path, as this link.
#[derive(Clone)]
pub struct Inbound {
    pub data: Arc<DataPath>,
    pub link: Arc<LinkData>,
}

impl Inbound {
    /// The state one reader of this link keeps (each reader its own).
    pub fn rx(&self) -> Rx {
        self.data.rx()
    }

    /// One packet from the peer; never waits. Packets for the TUN may be
    /// held in `rx` until [`Inbound::flush`].
    pub fn packet(&self, pkt: Packet, rx: &mut Rx) {
        self.data.deliver(&self.link, pkt, rx);
    }

    /// Writes what `rx` holds; a reader calls it before it waits.
    pub fn flush(&self, rx: &mut Rx) {
        self.data.flush(rx);
    }

    /// A super-packet from the peer too short to be one: dropped, counted.
    pub fn malformed(&self, e: sapper_offload::Error) {
        self.data.malformed(&self.link, e);
    }
}

/// What a transport provides once TLS is up.
pub trait Link: Send + 'static {
    /// The RFC 9266 tls-exporter value of this TLS session.
    fn channel_binding(&self) -> ChannelBinding;
    /// The peer's underlay address.
    fn remote(&self) -> SocketAddr;
    /// Which transport this is.
    fn transport(&self) -> Transport;
    /// What the TLS handshake negotiated (version, suite, group).
    fn tls(&self) -> &Negotiated;
    /// Sends one control message.
    async fn send_control(&mut self, msg: &ControlMessage) -> Result<()>;
    /// Receives the body of one control message (bounded by the framing
    /// limit). Cancel-safe: used in `select!`.
    async fn recv_control(&mut self) -> Result<Vec<u8>>;
    /// The sender the data path uses to queue packets to the peer.
    fn packet_tx(&mut self) -> Box<dyn PacketTx>;
    /// The peer's proof verified: give back the pre-auth place and lift
    /// the pre-auth limits.
    fn authenticated(&mut self) {}
    /// After registration: start handing received packets to `inbound`.
    fn start(&mut self, inbound: Inbound);
    /// Closes the link (after a failed handshake too).
    async fn close(self, reason: &str);
}

/// Runs the Sapper handshake over `link`. On rejection the peer is told why
/// (typed code, no secrets) and an error is returned; the caller closes.
async fn handshake<L: Link>(
    node: &Node,
    link: &mut L,
    side: Side,
    deadline: tokio::time::Instant,
) -> Result<Accepted> {
    let remote = link.remote();
    let local = node.inspect(|core, _| core.local_handshake()).await?;
    let mut hs = Handshaker::new(local, side, link.channel_binding(), node.psk.clone());
    // The ordering is the protocol's (see `sapper_shared::proof`): the
    // dialler, which has already authenticated the listener by pin or CA
    // in TLS, speaks first; the listener answers only once the dialler's
    // proof verified, so an anonymous TLS client learns nothing.
    let result = tokio::time::timeout_at(deadline, async {
        if side == Side::Client {
            link.send_control(&hs.outgoing()).await?;
        }
        let body = link.recv_control().await?;
        let verdict = hs.receive(&body);
        if verdict.is_ok() {
            link.authenticated();
            if side == Side::Server {
                link.send_control(&hs.outgoing()).await?;
            }
        }
        Ok::<_, anyhow::Error>(verdict)
    })
    .await;
    let verdict = match result {
        Err(_) => {
            crate::metrics::recorded().handshake_refused("timeout");
            Err(anyhow!(
                "timed out ({} ms for TLS, upgrade and handshake together)",
                node.cfg.handshake_timeout.get()
            ))
        }
        Ok(Err(e)) => {
            crate::metrics::recorded().handshake_refused("link_failed");
            Err(e.context("link failed during handshake"))
        }
        Ok(Ok(Err(reject))) => {
            crate::metrics::recorded()
                .handshake_refused(&crate::metrics::reject_reason(reject.code()));
            let msg = ControlMessage {
                body: Some(Body::Error(ControlError {
                    code: reject.code() as i32,
                    message: reject.to_string(),
                })),
            };
            let _ = tokio::time::timeout(Duration::from_secs(1), link.send_control(&msg)).await;
            Err(anyhow!(reject))
        }
        Ok(Ok(Ok(accepted))) => Ok(accepted),
    };
    match &verdict {
        Ok(a) => {
            crate::metrics::recorded().handshake_accepted(&a.peer.name);
            let tls = link.tls();
            tracing::info!(
                sapper_event = "handshake_accepted",
                peer = %a.peer.name,
                %remote,
                tls_version = %tls.version,
                tls_cipher_suite = %tls.cipher_suite,
                tls_kx_group = %tls.kx_group,
                "handshake accepted"
            );
            if node.psk.is_none() {
                tracing::warn!(peer = %a.peer.name, %remote, "INSECURE: link without a PSK (node.insecure_open)");
            }
        }
        Err(e) => {
            node.data.stats.handshake_failures.fetch_add(1, Relaxed);
            tracing::warn!(sapper_event = "handshake_refused", %remote, reason = %sapper_shared::text::sanitize(&format!("{e:#}"), sapper_shared::text::MAX_PEER_STRING), "handshake rejected");
        }
    }
    verdict
}

/// A TLS handshake a listener refused because the dialler offered no
/// key-exchange group it accepts: logged and counted like a refused Sapper
/// handshake (`reason` names the groups offered and accepted).
pub fn tls_refused(node: &Node, remote: SocketAddr, transport: &str, reason: &str) {
    node.data.stats.handshake_failures.fetch_add(1, Relaxed);
    crate::metrics::recorded().handshake_refused("tls_key_exchange");
    tracing::warn!(sapper_event = "handshake_refused", %remote, transport, reason, "TLS handshake refused");
}

/// Supervises one link from the handshake to its end. Returns Err when the
/// handshake fails, Ok when an established link ends. `deadline` is the one
/// deadline for everything before the Sapper handshake passed (TLS and the
/// WebSocket upgrade already ran against it).
pub async fn run_link<L: Link>(
    node: Arc<Node>,
    mut link: L,
    direction: Direction,
    deadline: tokio::time::Instant,
    allowed_sources: Option<Vec<ipnet::IpNet>>,
) -> Result<()> {
    let side = match direction {
        Direction::Outbound => Side::Client,
        Direction::Inbound => Side::Server,
    };
    let accepted = match handshake(&node, &mut link, side, deadline).await {
        Ok(a) => a,
        Err(e) => {
            link.close("handshake rejected").await;
            return Err(e);
        }
    };
    let remote = link.remote();
    let transport = link.transport();
    let name = accepted.peer.name.clone();
    let id: LinkId = node.next_link_id();
    // Super-packets go whole only over WebSocket (a QUIC datagram holds
    // one MTU-sized packet), and only to a peer that said it takes them.
    let takes_super =
        transport == Transport::Ws && accepted.peer.capabilities.is_some_and(|c| c.super_packets);
    let data = Arc::new(LinkData::new(
        id,
        link.packet_tx(),
        link.tls().clone(),
        takes_super,
    ));
    let (control_tx, mut control_rx) = mpsc::channel(LINK_CONTROL_QUEUE);
    let close = CancellationToken::new();
    let up = LinkUp {
        accepted,
        remote,
        transport,
        direction,
        connected_at_unix_s: crate::node::unix_ms() / 1000,
        allowed_sources,
    };
    let handle = LinkHandle {
        data: data.clone(),
        control: control_tx,
        close: close.clone(),
    };
    if let Err(e) = node
        .tell(Input::LinkUp {
            id,
            up: Box::new(up),
            handle,
        })
        .await
    {
        link.close("driver unavailable").await;
        return Err(e);
    }
    link.start(Inbound {
        data: node.data.clone(),
        link: data.clone(),
    });
    tracing::info!(sapper_event = "peer_connected", peer = %name, %remote, transport = transport.as_str(), "peer connected");

    // The rate limit on control messages sits here, before the driver's
    // queue: a flood costs this task a counter, never the driver's
    // attention (the core applies the same bound again, deterministically).
    let limits = &node.cfg.limits;
    let mut bucket = sapper_shared::rate::TokenBucket::new(
        limits.control_burst,
        limits.control_rate,
        std::time::Instant::now(),
    );
    let reason = loop {
        tokio::select! {
            _ = close.cancelled() => break "closed".to_string(),
            _ = node.shutdown.cancelled() => {
                let bye = ControlMessage {
                    body: Some(Body::Disconnect(Disconnect { reason: "shutting down".into() })),
                };
                let _ = tokio::time::timeout(Duration::from_millis(100), link.send_control(&bye)).await;
                break "shutdown".to_string();
            }
            m = control_rx.recv() => match m {
                Some(m) => {
                    if let Err(e) = link.send_control(&m).await {
                        break sapper_shared::text::sanitize(&format!("{e:#}"), sapper_shared::text::MAX_PEER_STRING);
                    }
                }
                None => break "closed".to_string(),
            },
            body = link.recv_control() => match body {
                Ok(body) => match sapper_shared::framing::decode::<ControlMessage>(&body) {
                    Ok(_) if !bucket.take(std::time::Instant::now()) => {
                        data.counters.control_drops.fetch_add(1, Relaxed);
                    }
                    Ok(msg) => {
                        if node.tell(Input::Control { id, msg }).await.is_err() {
                            break "driver unavailable".to_string();
                        }
                    }
                    Err(e) => {
                        tracing::warn!(peer = %name, error = %e, "malformed control message; closing");
                        break "malformed control message".to_string();
                    }
                },
                Err(e) => {
                    let why = sapper_shared::text::sanitize(&format!("{e:#}"), sapper_shared::text::MAX_PEER_STRING);
                    tracing::debug!(peer = %name, error = %why, "control channel ended");
                    // The cause ("reset by peer": a restarted peer's QUIC
                    // stateless reset) is what an operator reads in the log.
                    break format!("link task ended: {why}");
                }
            },
        }
    };
    link.close(&reason).await;
    // The driver must hear of the end even when it is busy: this is the
    // one input a link waits longest for.
    let down = Input::LinkDown {
        id,
        reason: reason.clone(),
    };
    if node
        .driver
        .send_timeout(down, Duration::from_secs(30))
        .await
        .is_err()
    {
        tracing::error!(peer = %name, "the control driver did not take a link's end");
    }
    tracing::info!(sapper_event = "peer_disconnected", peer = %name, %reason, "peer disconnected");
    Ok(())
}
