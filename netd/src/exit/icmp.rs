//! ICMP echo through unprivileged "ping" sockets (`SOCK_DGRAM` with
//! `IPPROTO_ICMP` / `IPPROTO_ICMPV6`): one socket per (entry source,
//! destination, identifier), owned by a task that sends the entry's echo
//! requests and turns the replies back into packets with the entry's
//! identifier (the kernel puts its own on the wire).
//!
//! The kernel allows ping sockets only to groups inside
//! `net.ipv4.ping_group_range` (one setting for IPv4 and IPv6, per network
//! namespace; the default "1 0" allows nobody). When netd's group is not in
//! it, socket() fails with EACCES: the exit then answers each echo request
//! with an ICMP destination unreachable "administratively prohibited", counts
//! it in `icmp_unavailable` and logs a warning once. Fix with e.g.
//! `sysctl -w net.ipv4.ping_group_range="0 2147483647"`.

use super::engine::{Ctx, DgramFlow, Engine, Event};
use super::limits::ICMP_FLOW_BYTES;
use super::packet::{self, FlowKey, Kind, Parsed, Unreachable};
use bytes::Bytes;
use sapper_shared::egress::Proto;
use socket2::{Domain, Protocol, Socket, Type};
use std::io::ErrorKind;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::time::Instant;

/// Echo requests queued toward one flow's socket, at most.
const QUEUE: usize = 32;

/// An echo request from the entry.
pub fn packet(e: &mut Engine, peer: u64, key: FlowKey, parsed: &Parsed<'_>, pkt: &[u8]) {
    let Kind::Echo { seq, data, .. } = parsed.kind else {
        return;
    };
    let msg = Bytes::from(request(key.dst.ip(), seq, data));
    if e.offer_to_flow(Proto::Icmp, &key, msg.clone(), ICMP_FLOW_BYTES as usize) {
        return;
    }
    if !e.admit(peer, key, pkt) {
        return;
    }
    let cost = e.limits.cost(Proto::Icmp);
    let sock = match open(key.dst.ip()) {
        Ok(s) => s,
        Err(err) => {
            e.unadmit(Proto::Icmp, cost);
            let why = if err.kind() == ErrorKind::PermissionDenied {
                e.ctx.stats.icmp_unavailable.fetch_add(1, Relaxed);
                if !e.icmp_warned {
                    e.icmp_warned = true;
                    tracing::warn!(
                        ping_group_range = %ping_group_range(),
                        gid = %nix::unistd::getgid(),
                        "userspace exit: the kernel refuses ping sockets to this group \
                         (net.ipv4.ping_group_range); echo requests are answered with \
                         ICMP administratively prohibited"
                    );
                }
                Unreachable::Prohibited
            } else if err.kind() == ErrorKind::NetworkUnreachable {
                Unreachable::Net
            } else {
                Unreachable::Host
            };
            tracing::debug!(flow = %key, error = %err, "userspace exit: ping socket failed");
            e.reply(peer, packet::unreachable(pkt, why));
            return;
        }
    };
    let gen = e.gen();
    let (flow, rx) = DgramFlow::new(gen, peer, cost, QUEUE);
    let _ = flow.offer(msg, ICMP_FLOW_BYTES as usize);
    let idle = e.cfg.icmp_idle_timeout.millis();
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
    e.icmp.insert(key, flow);
    e.flow_opened(peer, Proto::Icmp);
}

/// The ICMP message a ping socket sends: the kernel fills in the identifier
/// and checksum.
fn request(dst: IpAddr, seq: u16, data: &[u8]) -> Vec<u8> {
    let ty = if dst.is_ipv4() { 8 } else { 128 };
    let mut m = Vec::with_capacity(8 + data.len());
    m.extend_from_slice(&[ty, 0, 0, 0, 0, 0]);
    m.extend_from_slice(&seq.to_be_bytes());
    m.extend_from_slice(data);
    m
}

/// An echo reply as a ping socket returns it: (sequence, data), or `None`
/// for anything else.
pub fn parse_reply(v6: bool, msg: &[u8]) -> Option<(u16, &[u8])> {
    let want = if v6 { 129 } else { 0 };
    if msg.len() < 8 || msg[0] != want || msg[1] != 0 {
        return None;
    }
    Some((u16::from_be_bytes([msg[6], msg[7]]), &msg[8..]))
}

fn open(dst: IpAddr) -> std::io::Result<UdpSocket> {
    let (domain, proto) = match dst {
        IpAddr::V4(_) => (Domain::IPV4, Protocol::ICMPV4),
        IpAddr::V6(_) => (Domain::IPV6, Protocol::ICMPV6),
    };
    let s = Socket::new(domain, Type::DGRAM, Some(proto))?;
    s.set_nonblocking(true)?;
    s.connect(&SocketAddr::new(dst, 0).into())?;
    UdpSocket::from_std(s.into())
}

fn ping_group_range() -> String {
    std::fs::read_to_string("/proc/sys/net/ipv4/ping_group_range")
        .map(|s| s.split_whitespace().collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

/// Logs at start whether this netd may open ping sockets.
pub fn probe_ping_sockets() {
    match Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::ICMPV4)) {
        Ok(_) => {
            tracing::info!("userspace exit: ping sockets available; echo requests are realised")
        }
        Err(e) => tracing::warn!(
            error = %e,
            ping_group_range = %ping_group_range(),
            gid = %nix::unistd::getgid(),
            "userspace exit: no ping sockets for this group (net.ipv4.ping_group_range); \
             echo requests will be answered with ICMP administratively prohibited"
        ),
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
    let v6 = key.dst.is_ipv6();
    let mut deadline = Instant::now() + idle;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep_until(deadline) => break,
            d = rx.recv() => {
                let Some(d) = d else { break };
                queued.fetch_sub(d.len(), Relaxed);
                deadline = Instant::now() + idle;
                let _ = sock.send(&d).await;
            }
            r = sock.readable() => {
                if r.is_err() {
                    break;
                }
                let got = super::udp::RECV_BUF.with(|b| {
                    let mut b = b.borrow_mut();
                    sock.try_recv(&mut b[..]).map(|n| {
                        parse_reply(v6, &b[..n]).and_then(|(seq, data)| {
                            packet::echo_reply(key.dst.ip(), key.src.ip(), key.src.port(), seq, data)
                        })
                    })
                });
                if let Ok(Some(pkt)) = got {
                    deadline = Instant::now() + idle;
                    ctx.send_to_peer(peer, pkt);
                }
            }
        }
    }
    let _ = ctx.events.send(Event::DgramClosed { key, gen });
}
