//! UDP flows: one connected socket per (entry source, destination) pair,
//! owned by a task that forwards datagrams both ways and ends after
//! `udp_idle_timeout_ms` without traffic. The queue toward the socket is
//! bounded in bytes (`flow_buffer_bytes`); datagrams past it are dropped, as
//! a congested router would.

use super::engine::{Ctx, DgramFlow, Engine, Event};
use super::packet::{self, FlowKey, Unreachable};
use crate::datapath::Packet;
use bytes::{Bytes, BytesMut};
use sapper_shared::egress::Proto;
use std::cell::RefCell;
use std::io::ErrorKind;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::time::Instant;

/// Datagrams queued toward one flow's socket, at most (bytes are bounded too).
const QUEUE: usize = 256;

thread_local! {
    /// Receive buffer shared by all flows on a thread: a datagram is copied
    /// out of it into its packet at once, so flows hold no buffer of their own.
    pub static RECV_BUF: RefCell<Vec<u8>> = RefCell::new(vec![0u8; sapper_shared::routing::MAX_IP_PACKET]);
    /// Where replies are built, shared by all flows on a thread the same
    /// way (see `packet::udp_tagged`).
    static TX_ARENA: RefCell<BytesMut> = RefCell::new(BytesMut::new());
}

/// A UDP datagram from the entry.
pub fn packet(e: &mut Engine, peer: u64, key: FlowKey, payload: Bytes, pkt: &[u8]) {
    let cap = e.limits.flow_buffer as usize;
    // A flow whose task ended (idle) but whose close event is still on the
    // way is replaced.
    if e.offer_to_flow(Proto::Udp, &key, payload.clone(), cap) {
        return;
    }
    if !e.admit(peer, key, pkt) {
        return;
    }
    let cost = e.limits.cost(Proto::Udp);
    let sock = match open(key.dst) {
        Ok(s) => s,
        Err(err) => {
            e.unadmit(Proto::Udp, cost);
            let why = match err.kind() {
                ErrorKind::NetworkUnreachable => Unreachable::Net,
                ErrorKind::PermissionDenied => Unreachable::Prohibited,
                _ => Unreachable::Host,
            };
            tracing::debug!(flow = %key, error = %err, "userspace exit: UDP socket failed");
            e.reply(peer, packet::unreachable(pkt, why));
            return;
        }
    };
    let gen = e.gen();
    let (flow, rx) = DgramFlow::new(gen, peer, cost, QUEUE);
    let _ = flow.offer(payload, cap);
    let idle = e.cfg.udp_idle_timeout.millis();
    tokio::spawn(run(
        sock,
        key,
        gen,
        peer,
        rx,
        flow.queued.clone(),
        idle,
        e.ctx.clone(),
    ));
    e.udp.insert(key, flow);
    e.flow_opened(peer, Proto::Udp);
}

fn open(dst: SocketAddr) -> std::io::Result<UdpSocket> {
    let any: IpAddr = match dst {
        SocketAddr::V4(_) => Ipv4Addr::UNSPECIFIED.into(),
        SocketAddr::V6(_) => Ipv6Addr::UNSPECIFIED.into(),
    };
    let s = std::net::UdpSocket::bind(SocketAddr::new(any, 0))?;
    s.connect(dst)?;
    s.set_nonblocking(true)?;
    UdpSocket::from_std(s)
}

/// Tells the entry nothing listens on the destination port.
fn port_unreachable(ctx: &Ctx, peer: u64, key: FlowKey) {
    let orig = packet::udp(key.src, key.dst, &[]);
    if let Some(p) = orig.and_then(|o| packet::unreachable(&o, Unreachable::Port)) {
        ctx.send_to_peer(peer, p);
    }
}

#[allow(clippy::too_many_arguments)]
async fn run(
    sock: UdpSocket,
    key: FlowKey,
    gen: u64,
    peer: u64,
    mut rx: mpsc::Receiver<Bytes>,
    queued: Arc<AtomicUsize>,
    idle: Duration,
    ctx: Arc<Ctx>,
) {
    let shutdown = ctx.shutdown.clone();
    let mut deadline = Instant::now() + idle;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep_until(deadline) => break,
            d = rx.recv() => {
                let Some(d) = d else { break };
                queued.fetch_sub(d.len(), Relaxed);
                deadline = Instant::now() + idle;
                if let Err(err) = sock.send(&d).await {
                    if err.kind() == ErrorKind::ConnectionRefused {
                        port_unreachable(&ctx, peer, key);
                    }
                }
            }
            r = sock.readable() => {
                if r.is_err() {
                    break;
                }
                let got: std::io::Result<Option<Bytes>> = RECV_BUF.with(|b| {
                    let mut b = b.borrow_mut();
                    let n = sock.try_recv(&mut b[..])?;
                    Ok(TX_ARENA.with(|a| {
                        packet::udp_tagged(&mut a.borrow_mut(), key.dst, key.src, &b[..n])
                    }))
                });
                match got {
                    Ok(Some(pkt)) => {
                        deadline = Instant::now() + idle;
                        ctx.send_packet_to_peer(peer, Packet::tagged(pkt));
                    }
                    Ok(None) => {}
                    Err(err) if err.kind() == ErrorKind::WouldBlock => {}
                    Err(err) if err.kind() == ErrorKind::ConnectionRefused => {
                        port_unreachable(&ctx, peer, key);
                    }
                    Err(_) => {}
                }
            }
        }
    }
    let _ = ctx.events.send(Event::DgramClosed { key, gen });
}
