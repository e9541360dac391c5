//! Outgoing links: one task per configured peer that connects, runs the link
//! until it ends, and tries again with exponential backoff and jitter.

use crate::node::Node;
use crate::tls::{self, PeerTrust};
use anyhow::{Context, Result};
use sapper_shared::backoff::Backoff;
use sapper_shared::config::{parse_fingerprint, ConnectConfig, Transport};
use std::net::SocketAddr;
use std::sync::Arc;

pub async fn resolve(address: &str) -> Result<SocketAddr> {
    tokio::net::lookup_host(address)
        .await
        .with_context(|| format!("resolving {address}"))?
        .next()
        .with_context(|| format!("{address} resolves to no address"))
}

/// The TLS server name: configured, else the host part of the address.
pub fn server_name(target: &ConnectConfig) -> String {
    if let Some(n) = &target.server_name {
        return n.clone();
    }
    let host = target
        .address
        .rsplit_once(':')
        .map(|(h, _)| h)
        .unwrap_or(&target.address);
    host.trim_start_matches('[')
        .trim_end_matches(']')
        .to_string()
}

pub fn client_tls(
    target: &ConnectConfig,
    kx: sapper_shared::config::KeyExchange,
) -> Result<Arc<rustls::ClientConfig>> {
    let trust = match (&target.fingerprint, &target.ca_file) {
        (Some(fp), _) => PeerTrust::Pinned(
            parse_fingerprint(fp).context("fingerprint was validated at load time")?,
        ),
        (None, Some(ca)) => PeerTrust::Ca(ca.clone()),
        (None, None) => anyhow::bail!("no fingerprint or CA for {}", target.address),
    };
    let alpn: &[&[u8]] = match target.transport {
        Transport::Quic => &[tls::ALPN_QUIC],
        Transport::Ws => &[b"http/1.1"],
    };
    Ok(Arc::new(tls::client_config(&trust, alpn, kx)?))
}

fn random_u32() -> u32 {
    let mut b = [0u8; 4];
    // SystemRandom failing means no entropy source; no jitter is the safe fallback.
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b);
    u32::from_ne_bytes(b)
}

pub async fn connector(node: Arc<Node>, target: ConnectConfig, tls: Arc<rustls::ClientConfig>) {
    let mut backoff = Backoff::new(node.cfg.reconnect_min_ms, node.cfg.reconnect_max_ms);
    loop {
        let r = match target.transport {
            Transport::Quic => crate::quic::dial(node.clone(), &target, tls.clone()).await,
            Transport::Ws => crate::ws::dial(node.clone(), &target, tls.clone()).await,
        };
        match r {
            Ok(()) => backoff.reset(),
            Err(e) => {
                tracing::warn!(peer = %target.address, transport = target.transport.as_str(), error = %format!("{e:#}"), "connection failed")
            }
        }
        let delay = backoff.next_delay(random_u32());
        tracing::debug!(peer = %target.address, ?delay, "reconnecting after delay");
        tokio::select! {
            _ = node.shutdown.cancelled() => return,
            _ = tokio::time::sleep(delay) => {}
        }
    }
}
