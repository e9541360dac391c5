//! What every link does after TLS, whatever the transport: the Sapper
//! handshake, then control messages and the keepalive loop. Transports supply
//! the byte movement; the decisions are sapper_shared's.

use crate::node::{Node, Peer};
use anyhow::{anyhow, Result};
use sapper_shared::handshake::{Accepted, Handshaker};
use sapper_shared::latency::pong_for;
use sapper_shared::proof::{ChannelBinding, Side};
use sapper_shared::proto::control::{control_message::Body, ControlError, ControlMessage};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

/// A transport's control channel, before it is split into tasks.
pub trait ControlIo {
    /// Sends one control message.
    async fn send(&mut self, msg: &ControlMessage) -> Result<()>;
    /// Receives the body of one control message (bounded by the framing limit).
    async fn recv(&mut self) -> Result<Vec<u8>>;
}

/// Runs the Sapper handshake over `io`. On rejection the peer is told why
/// (typed code, no secrets) and an error is returned; the caller closes.
pub async fn handshake<C: ControlIo>(
    node: &Node,
    io: &mut C,
    side: Side,
    binding: ChannelBinding,
    remote: std::net::SocketAddr,
    tls: &crate::tls::Negotiated,
) -> Result<Accepted> {
    let mut hs = Handshaker::new(node.local_handshake(), side, binding, node.psk.clone());
    let timeout = Duration::from_millis(node.cfg.handshake_timeout_ms);
    let result = tokio::time::timeout(timeout, async {
        io.send(&hs.outgoing()).await?;
        let body = io.recv().await?;
        Ok::<_, anyhow::Error>(hs.receive(&body))
    })
    .await;
    let verdict = match result {
        Err(_) => Err(anyhow!("timed out after {timeout:?}")),
        Ok(Err(e)) => Err(e.context("link failed during handshake")),
        Ok(Ok(Err(reject))) => {
            let msg = ControlMessage {
                body: Some(Body::Error(ControlError {
                    code: reject.code() as i32,
                    message: reject.to_string(),
                })),
            };
            let _ = tokio::time::timeout(Duration::from_secs(1), io.send(&msg)).await;
            Err(anyhow!(reject))
        }
        Ok(Ok(Ok(accepted))) => Ok(accepted),
    };
    match &verdict {
        Ok(a) => {
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
            node.stats.handshake_failures.fetch_add(1, Relaxed);
            tracing::warn!(sapper_event = "handshake_refused", %remote, reason = %format!("{e:#}"), "handshake rejected");
        }
    }
    verdict
}

/// A TLS handshake a listener refused because the dialler offered no
/// key-exchange group it accepts: logged and counted like a refused Sapper
/// handshake (`reason` names the groups offered and accepted).
pub fn tls_refused(node: &Node, remote: std::net::SocketAddr, transport: &str, reason: &str) {
    node.stats.handshake_failures.fetch_add(1, Relaxed);
    tracing::warn!(sapper_event = "handshake_refused", %remote, transport, reason, "TLS handshake refused");
}

/// Acts on one control message from an established peer.
pub fn handle_control(node: &Node, peer: &Peer, body: &[u8]) {
    let msg: ControlMessage = match sapper_shared::framing::decode(body) {
        Ok(m) => m,
        Err(e) => {
            tracing::warn!(peer = %peer.handshake.name, error = %e, "malformed control message; closing");
            peer.close.cancel();
            return;
        }
    };
    match msg.body {
        Some(Body::Ping(p)) => {
            let pong = ControlMessage {
                body: Some(Body::Pong(pong_for(&p))),
            };
            // A peer flooding pings only loses pongs.
            let _ = peer.control.try_send(pong);
        }
        Some(Body::Pong(p)) => {
            if let Some(waiter) = peer
                .ping_waiters
                .lock()
                .ok()
                .and_then(|mut w| w.remove(&p.timestamp_ms))
            {
                let _ = waiter.send(());
            }
            if let Ok(mut l) = peer.latency.lock() {
                l.pong_us(&p, node.now_us());
            }
        }
        Some(Body::Disconnect(d)) => {
            tracing::info!(sapper_event = "peer_disconnected", peer = %peer.handshake.name, reason = %d.reason, "peer disconnected");
            peer.close.cancel();
        }
        Some(Body::Error(e)) => {
            tracing::warn!(peer = %peer.handshake.name, code = e.code, message = %e.message, "peer reported an error");
            peer.close.cancel();
        }
        Some(Body::Handshake(_)) => {
            tracing::warn!(peer = %peer.handshake.name, "second handshake; closing");
            peer.close.cancel();
        }
        Some(Body::RouteUpdate(u)) => match crate::announce::parse_prefixes(&u.prefixes) {
            Ok(p) => node.learn_routes(peer, &p, &u.origin),
            Err(e) => {
                tracing::warn!(peer = %peer.handshake.name, error = %e, "ignored a bad route update")
            }
        },
        Some(Body::RouteWithdraw(w)) => match crate::announce::parse_prefixes(&w.prefixes) {
            Ok(p) => node.withdraw_routes(peer, &p, &w.origin),
            Err(e) => {
                tracing::warn!(peer = %peer.handshake.name, error = %e, "ignored a bad route withdrawal")
            }
        },
        Some(Body::RoleTransition(t)) => node.peer_transition(peer, &t),
        None => tracing::debug!(peer = %peer.handshake.name, "empty control message"),
    }
}

/// Pings the peer every interval; cancels the link when it misses too many.
pub async fn keepalive(node: Arc<Node>, peer: Arc<Peer>) {
    let mut tick = tokio::time::interval(Duration::from_millis(node.cfg.ping_interval_ms));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = peer.close.cancelled() => return,
            _ = tick.tick() => {}
        }
        let ping = match peer.latency.lock() {
            Ok(mut l) => {
                if l.is_dead() {
                    tracing::warn!(sapper_event = "peer_disconnected", peer = %peer.handshake.name, missed = l.missed(), "peer stopped answering pings; dropping it");
                    peer.close.cancel();
                    return;
                }
                l.ping_us(node.now_us())
            }
            Err(_) => return,
        };
        let msg = ControlMessage {
            body: Some(Body::Ping(ping)),
        };
        if peer.control.try_send(msg).is_err() {
            peer.counters.drops.fetch_add(1, Relaxed);
        }
    }
}
