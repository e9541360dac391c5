//! Outgoing links: one task per configured peer that connects, runs the link
//! until it ends, and tries again with exponential backoff and jitter.

use crate::link::run_link;
use crate::node::Node;
use crate::target::Target;
use crate::{quic, ws};
use anyhow::Result;
use sapper_control::Direction;
use sapper_shared::backoff::Backoff;
use sapper_shared::config::Transport;
use std::sync::Arc;

fn random_u32() -> u32 {
    let mut b = [0u8; 4];
    // SystemRandom failing means no entropy source; no jitter is the safe fallback.
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b);
    u32::from_ne_bytes(b)
}

/// Connects once and runs the link until it ends.
async fn dial_once(
    node: &Arc<Node>,
    target: &Target,
    tls: &Arc<rustls::ClientConfig>,
) -> Result<()> {
    let allowed = target.allowed_sources().map(<[_]>::to_vec);
    let deadline = tokio::time::Instant::now() + node.cfg.handshake_timeout.millis();
    match target.transport() {
        Transport::Quic => {
            let link = quic::connect(&node.cfg, target, tls.clone()).await?;
            run_link(node.clone(), link, Direction::Outbound, deadline, allowed).await
        }
        Transport::Ws => {
            let link = ws::connect(&node.cfg, target, tls.clone()).await?;
            run_link(node.clone(), link, Direction::Outbound, deadline, allowed).await
        }
    }
}

/// Dials `target` and redials it with backoff until `stop` is cancelled
/// (shutdown, a reload that removed the entry, `disconnect --stay`).
/// A link that is up is left to end on its own (the reload closes it
/// through the core, so its end is reported like any other); `stop` is
/// checked before every dial.
pub async fn connector_until(
    node: Arc<Node>,
    target: Target,
    tls: Arc<rustls::ClientConfig>,
    stop: tokio_util::sync::CancellationToken,
) {
    let mut backoff = Backoff::new(node.cfg.reconnect.min_ms(), node.cfg.reconnect.max_ms());
    loop {
        if stop.is_cancelled() {
            return;
        }
        match dial_once(&node, &target, &tls).await {
            Ok(()) => backoff.reset(),
            Err(e) => {
                tracing::warn!(peer = %target.address(), transport = target.transport().as_str(), error = %sapper_shared::text::sanitize(&format!("{e:#}"), sapper_shared::text::MAX_PEER_STRING), "connection failed")
            }
        }
        let delay = backoff.next_delay(random_u32());
        tracing::debug!(peer = %target.address(), ?delay, "reconnecting after delay");
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(delay) => {}
        }
    }
}
