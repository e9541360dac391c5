//! Starting listeners, at start-up (sockets bound before the privilege drop)
//! and later on an operator's request.

use crate::inputs::Input;
use crate::node::Node;
use crate::{quic, tls, ws};
use anyhow::{Context, Result};
use sapper_shared::proto::management::ListenerInfo;
use std::sync::Arc;

fn record(node: &Node, address: String, transport: &str) {
    let info = ListenerInfo {
        address,
        transport: transport.into(),
    };
    let add = Input::Inspect(Box::new(move |core, _| core.add_listener(info)));
    if node.driver.try_send(add).is_err() {
        tracing::warn!("listener not recorded for status: the control driver is busy");
    }
}

/// `allowed_sources` of the configured listener at `addr`.
fn allowed(node: &Node, addr: &str) -> Option<Arc<Vec<ipnet::IpNet>>> {
    node.cfg
        .listen
        .iter()
        .find(|l| l.address.to_string() == addr)
        .and_then(|l| l.allowed_sources.clone())
        .map(Arc::new)
}

/// Serves QUIC on a bound UDP socket.
pub fn quic(node: &Arc<Node>, sock: std::net::UdpSocket, addr: String) -> Result<()> {
    let kx = node.cfg.tls.key_exchange;
    let tls = tls::ServerTls::new(&node.identity, &[tls::ALPN_QUIC], kx)?;
    let (ep, server) = quic::server_endpoint(sock, &node.cfg, tls)?;
    tracing::info!(address = %addr, key_exchange = kx.as_str(), "listening (QUIC)");
    let allowed = allowed(node, &addr);
    record(node, addr, "quic");
    tokio::spawn(quic::accept_loop(node.clone(), ep, server, allowed));
    Ok(())
}

/// Serves WebSocket-over-TLS on a bound TCP listener.
pub fn ws(node: &Arc<Node>, sock: std::net::TcpListener, addr: String, path: String) -> Result<()> {
    let kx = node.cfg.tls.key_exchange;
    let tls = Arc::new(tls::ServerTls::new(&node.identity, &[b"http/1.1"], kx)?);
    let listener = tokio::net::TcpListener::from_std(sock).context("registering the listener")?;
    tracing::info!(address = %addr, %path, key_exchange = kx.as_str(), "listening (WebSocket)");
    let allowed = allowed(node, &addr);
    record(node, addr, "ws");
    tokio::spawn(ws::accept_loop(node.clone(), listener, tls, path, allowed));
    Ok(())
}
