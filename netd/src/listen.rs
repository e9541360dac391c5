//! Starting listeners, at start-up (sockets bound before the privilege drop)
//! and later on a reload; each returns the token that stops it again (a
//! reload that removes the listener).

use crate::inputs::Input;
use crate::node::Node;
use crate::{quic, tls, ws};
use anyhow::{Context, Result};
use sapper_shared::proto::management::ListenerInfo;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

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

fn forget(node: &Node, address: String, transport: &'static str) {
    let gone = Input::Inspect(Box::new(move |core, _| {
        core.remove_listener(&address, transport)
    }));
    if node.driver.try_send(gone).is_err() {
        tracing::warn!("closed listener still shown by status: the control driver is busy");
    }
}

/// `allowed_sources` of the configured listener at `addr` in the
/// configuration netd started with.
pub fn allowed_at_start(node: &Node, addr: &str) -> Option<Vec<ipnet::IpNet>> {
    node.cfg
        .listen
        .iter()
        .find(|l| l.address.to_string() == addr)
        .and_then(|l| l.allowed_sources.clone())
}

/// Serves QUIC on a bound UDP socket until the returned token is cancelled:
/// then the endpoint refuses new connections (QUIC's CONNECTION_REFUSED)
/// and its socket closes once the links accepted on it have ended.
pub fn quic(
    node: &Arc<Node>,
    sock: std::net::UdpSocket,
    addr: String,
    allowed: Option<Vec<ipnet::IpNet>>,
) -> Result<CancellationToken> {
    let kx = node.cfg.tls.key_exchange;
    let tls = tls::ServerTls::new(&node.identity, &[tls::ALPN_QUIC], kx)?;
    let (ep, server) = quic::server_endpoint(sock, &node.cfg, tls)?;
    tracing::info!(address = %addr, key_exchange = kx.as_str(), "listening (QUIC)");
    record(node, addr.clone(), "quic");
    let stop = node.shutdown.child_token();
    let (n, s, handle) = (node.clone(), stop.clone(), ep.clone());
    tokio::spawn(async move {
        tokio::select! {
            _ = s.cancelled() => {
                handle.set_server_config(None);
                if !n.shutdown.is_cancelled() {
                    tracing::info!(address = %addr, "QUIC listener closed: new connections are refused");
                    forget(&n, addr, "quic");
                }
            }
            _ = quic::accept_loop(n.clone(), ep, server, allowed.map(Arc::new)) => {}
        }
    });
    Ok(stop)
}

/// Serves WebSocket-over-TLS on a bound TCP listener until the returned
/// token is cancelled: then the listening socket is closed.
pub fn ws(
    node: &Arc<Node>,
    sock: std::net::TcpListener,
    addr: String,
    path: String,
    allowed: Option<Vec<ipnet::IpNet>>,
) -> Result<CancellationToken> {
    let kx = node.cfg.tls.key_exchange;
    let tls = Arc::new(tls::ServerTls::new(&node.identity, &[b"http/1.1"], kx)?);
    let listener = tokio::net::TcpListener::from_std(sock).context("registering the listener")?;
    tracing::info!(address = %addr, %path, key_exchange = kx.as_str(), "listening (WebSocket)");
    record(node, addr.clone(), "ws");
    let stop = node.shutdown.child_token();
    let (n, s) = (node.clone(), stop.clone());
    tokio::spawn(async move {
        // Dropping the accept loop drops the listening socket.
        tokio::select! {
            _ = s.cancelled() => {
                if !n.shutdown.is_cancelled() {
                    tracing::info!(address = %addr, "WebSocket listener closed");
                    forget(&n, addr, "ws");
                }
            }
            _ = ws::accept_loop(n.clone(), listener, tls, path, allowed.map(Arc::new)) => {}
        }
    });
    Ok(stop)
}
