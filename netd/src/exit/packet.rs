//! Reading the IP packets that arrive from the tunnel and writing the ones
//! the userspace exit sends back (UDP datagrams, echo replies, RSTs and ICMP
//! errors). smoltcp's `wire` types do the byte work; everything here is pure
//! and bounds-checked, so a malformed packet is `None`, never a panic.

use sapper_shared::egress::Proto;
use smoltcp::phy::ChecksumCapabilities;
use smoltcp::wire::{
    Icmpv4DstUnreachable, Icmpv4Message, Icmpv4Packet, Icmpv4Repr, Icmpv6DstUnreachable,
    Icmpv6Message, Icmpv6Packet, Icmpv6Repr, IpProtocol, Ipv4Packet, Ipv4Repr, Ipv6Packet,
    Ipv6Repr, TcpPacket, UdpPacket, UdpRepr,
};
use std::net::{IpAddr, SocketAddr};

/// Hop limit of the packets the exit originates.
pub const HOP_LIMIT: u8 = 64;

/// Identifies a flow from the entry's point of view: the entry-side source
/// and the destination. For ICMP echo both "ports" are the identifier.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FlowKey {
    pub proto: Proto,
    pub src: SocketAddr,
    pub dst: SocketAddr,
}

impl std::fmt::Display for FlowKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.proto {
            Proto::Icmp => write!(
                f,
                "icmp {} -> {} id {}",
                self.src.ip(),
                self.dst.ip(),
                self.src.port()
            ),
            p => write!(f, "{p} {} -> {}", self.src, self.dst),
        }
    }
}

/// What the transport layer of a packet is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind<'a> {
    Tcp {
        src_port: u16,
        dst_port: u16,
        syn: bool,
        ack: bool,
        rst: bool,
    },
    Udp {
        src_port: u16,
        dst_port: u16,
        payload: &'a [u8],
    },
    /// ICMP or ICMPv6 echo request.
    Echo {
        ident: u16,
        seq: u16,
        data: &'a [u8],
    },
    /// An IPv4 fragment or an IPv6 packet with a fragment header.
    Fragment,
    /// Anything else, by IP protocol number (for ICMP: a non-echo message).
    Other(u8),
}

/// A parsed packet from the tunnel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Parsed<'a> {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub kind: Kind<'a>,
}

impl Parsed<'_> {
    /// The flow this packet belongs to, for TCP, UDP and echo.
    pub fn key(&self) -> Option<FlowKey> {
        let (proto, sp, dp) = match self.kind {
            Kind::Tcp {
                src_port, dst_port, ..
            } => (Proto::Tcp, src_port, dst_port),
            Kind::Udp {
                src_port, dst_port, ..
            } => (Proto::Udp, src_port, dst_port),
            Kind::Echo { ident, .. } => (Proto::Icmp, ident, ident),
            _ => return None,
        };
        Some(FlowKey {
            proto,
            src: SocketAddr::new(self.src, sp),
            dst: SocketAddr::new(self.dst, dp),
        })
    }
}

/// Parses an IPv4 or IPv6 packet. Checks the IPv4 header checksum and the
/// UDP and ICMP checksums (TCP's is checked by smoltcp). `None` for
/// anything malformed.
pub fn parse(pkt: &[u8]) -> Option<Parsed<'_>> {
    let caps = ChecksumCapabilities::default();
    match pkt.first()? >> 4 {
        4 => {
            let ip = Ipv4Packet::new_checked(pkt).ok()?;
            if !ip.verify_checksum() {
                return None;
            }
            let (src, dst) = (IpAddr::V4(ip.src_addr()), IpAddr::V4(ip.dst_addr()));
            let proto = ip.next_header();
            if ip.more_frags() || ip.frag_offset() != 0 {
                return Some(Parsed {
                    src,
                    dst,
                    kind: Kind::Fragment,
                });
            }
            let hl = usize::from(ip.header_len());
            let total = usize::from(ip.total_len());
            let payload = pkt.get(hl..total)?;
            let kind = match proto {
                IpProtocol::Icmp => {
                    let icmp = Icmpv4Packet::new_checked(payload).ok()?;
                    match Icmpv4Repr::parse(&icmp, &caps).ok()? {
                        Icmpv4Repr::EchoRequest {
                            ident,
                            seq_no,
                            data,
                        } => Kind::Echo {
                            ident,
                            seq: seq_no,
                            data,
                        },
                        _ => Kind::Other(1),
                    }
                }
                p => transport(p, src, dst, payload)?,
            };
            Some(Parsed { src, dst, kind })
        }
        6 => {
            let ip = Ipv6Packet::new_checked(pkt).ok()?;
            let (s6, d6) = (ip.src_addr(), ip.dst_addr());
            let (src, dst) = (IpAddr::V6(s6), IpAddr::V6(d6));
            let payload = ip.payload();
            let kind = match ip.next_header() {
                IpProtocol::Ipv6Frag => Kind::Fragment,
                IpProtocol::Icmpv6 => {
                    let icmp = Icmpv6Packet::new_checked(payload).ok()?;
                    match icmp.msg_type() {
                        Icmpv6Message::EchoRequest => {
                            match Icmpv6Repr::parse(&s6, &d6, &icmp, &caps).ok()? {
                                Icmpv6Repr::EchoRequest {
                                    ident,
                                    seq_no,
                                    data,
                                } => Kind::Echo {
                                    ident,
                                    seq: seq_no,
                                    data,
                                },
                                _ => Kind::Other(58),
                            }
                        }
                        _ => Kind::Other(58),
                    }
                }
                p => transport(p, src, dst, payload)?,
            };
            Some(Parsed { src, dst, kind })
        }
        _ => None,
    }
}

fn transport<'a>(p: IpProtocol, src: IpAddr, dst: IpAddr, payload: &'a [u8]) -> Option<Kind<'a>> {
    Some(match p {
        IpProtocol::Tcp => {
            let t = TcpPacket::new_checked(payload).ok()?;
            Kind::Tcp {
                src_port: t.src_port(),
                dst_port: t.dst_port(),
                syn: t.syn(),
                ack: t.ack(),
                rst: t.rst(),
            }
        }
        IpProtocol::Udp => {
            let u = UdpPacket::new_checked(payload).ok()?;
            let repr = UdpRepr::parse(
                &u,
                &src.into(),
                &dst.into(),
                &ChecksumCapabilities::default(),
            )
            .ok()?;
            Kind::Udp {
                src_port: repr.src_port,
                dst_port: repr.dst_port,
                payload: u.payload(),
            }
        }
        other => Kind::Other(u8::from(other)),
    })
}

/// Builds an IP packet `src -> dst` whose payload `fill` writes; `fill` gets
/// the payload buffer. `None` when the families differ or it is too big.
fn ip_packet(
    src: IpAddr,
    dst: IpAddr,
    proto: IpProtocol,
    payload_len: usize,
    fill: impl FnOnce(&mut [u8]),
) -> Option<Vec<u8>> {
    let caps = ChecksumCapabilities::default();
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            let repr = Ipv4Repr {
                src_addr: s,
                dst_addr: d,
                next_header: proto,
                payload_len,
                hop_limit: HOP_LIMIT,
            };
            let hl = repr.buffer_len();
            if hl + payload_len > usize::from(u16::MAX) {
                return None;
            }
            let mut buf = vec![0u8; hl + payload_len];
            repr.emit(&mut Ipv4Packet::new_unchecked(&mut buf[..]), &caps);
            fill(&mut buf[hl..]);
            Some(buf)
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            if payload_len > usize::from(u16::MAX) {
                return None;
            }
            let repr = Ipv6Repr {
                src_addr: s,
                dst_addr: d,
                next_header: proto,
                payload_len,
                hop_limit: HOP_LIMIT,
            };
            let hl = repr.buffer_len();
            let mut buf = vec![0u8; hl + payload_len];
            repr.emit(&mut Ipv6Packet::new_unchecked(&mut buf[..]));
            fill(&mut buf[hl..]);
            Some(buf)
        }
        _ => None,
    }
}

/// A UDP datagram `src -> dst` carrying `payload`.
pub fn udp(src: SocketAddr, dst: SocketAddr, payload: &[u8]) -> Option<Vec<u8>> {
    let len = 8 + payload.len();
    if len > usize::from(u16::MAX) {
        return None;
    }
    ip_packet(src.ip(), dst.ip(), IpProtocol::Udp, len, |buf| {
        let repr = UdpRepr {
            src_port: src.port(),
            dst_port: dst.port(),
        };
        repr.emit(
            &mut UdpPacket::new_unchecked(buf),
            &src.ip().into(),
            &dst.ip().into(),
            payload.len(),
            |p| p.copy_from_slice(payload),
            &ChecksumCapabilities::default(),
        );
    })
}

/// An echo reply `src -> dst` (ICMP or ICMPv6 by family).
pub fn echo_reply(src: IpAddr, dst: IpAddr, ident: u16, seq: u16, data: &[u8]) -> Option<Vec<u8>> {
    let caps = ChecksumCapabilities::default();
    match (src, dst) {
        (IpAddr::V4(_), IpAddr::V4(_)) => {
            let repr = Icmpv4Repr::EchoReply {
                ident,
                seq_no: seq,
                data,
            };
            ip_packet(src, dst, IpProtocol::Icmp, repr.buffer_len(), |buf| {
                repr.emit(&mut Icmpv4Packet::new_unchecked(buf), &caps)
            })
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            let repr = Icmpv6Repr::EchoReply {
                ident,
                seq_no: seq,
                data,
            };
            ip_packet(src, dst, IpProtocol::Icmpv6, repr.buffer_len(), |buf| {
                repr.emit(&s, &d, &mut Icmpv6Packet::new_unchecked(buf), &caps)
            })
        }
        _ => None,
    }
}

/// A RST answering the TCP segment `orig` (normally a SYN): RST|ACK
/// acknowledging everything it carried, from its destination to its source.
pub fn tcp_rst(orig: &[u8]) -> Option<Vec<u8>> {
    let (src, dst, payload) = match orig.first()? >> 4 {
        4 => {
            let ip = Ipv4Packet::new_checked(orig).ok()?;
            let hl = usize::from(ip.header_len());
            let total = usize::from(ip.total_len());
            (
                IpAddr::V4(ip.src_addr()),
                IpAddr::V4(ip.dst_addr()),
                orig.get(hl..total)?,
            )
        }
        6 => {
            let ip = Ipv6Packet::new_checked(orig).ok()?;
            let hl = ip.header_len();
            let total = hl + usize::from(ip.payload_len());
            (
                IpAddr::V6(ip.src_addr()),
                IpAddr::V6(ip.dst_addr()),
                orig.get(hl..total)?,
            )
        }
        _ => return None,
    };
    let t = TcpPacket::new_checked(payload).ok()?;
    if t.rst() {
        return None; // never answer a RST
    }
    let data_len = payload.len() - usize::from(t.header_len());
    let seg_len = data_len + usize::from(t.syn()) + usize::from(t.fin());
    let (seq, ack) = if t.ack() {
        (t.ack_number(), None)
    } else {
        (
            smoltcp::wire::TcpSeqNumber(0),
            Some(t.seq_number() + seg_len),
        )
    };
    let (sport, dport) = (t.dst_port(), t.src_port());
    ip_packet(dst, src, IpProtocol::Tcp, 20, |buf| {
        let mut p = TcpPacket::new_unchecked(buf);
        p.set_src_port(sport);
        p.set_dst_port(dport);
        p.set_seq_number(seq);
        p.set_ack_number(ack.unwrap_or(smoltcp::wire::TcpSeqNumber(0)));
        p.set_header_len(20);
        p.clear_flags();
        p.set_rst(true);
        p.set_ack(ack.is_some());
        p.set_window_len(0);
        p.set_urgent_at(0);
        p.fill_checksum(&dst.into(), &src.into());
    })
}

/// Why a flow cannot be realised, as an ICMP destination-unreachable code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unreachable {
    /// No route to the destination network.
    Net,
    /// The destination host did not answer.
    Host,
    /// Nothing listens on the UDP port.
    Port,
    /// Refused by the exit's policy or limits.
    Prohibited,
}

/// An ICMP (v4) or ICMPv6 destination unreachable about `orig`, sent from
/// `orig`'s destination to its source. Quotes as much of `orig` as the
/// protocol allows (IPv4: header plus 8 bytes; IPv6: up to 1280 bytes total).
pub fn unreachable(orig: &[u8], why: Unreachable) -> Option<Vec<u8>> {
    let caps = ChecksumCapabilities::default();
    match orig.first()? >> 4 {
        4 => {
            let ip = Ipv4Packet::new_checked(orig).ok()?;
            let header = Ipv4Repr::parse(&ip, &caps).ok()?;
            let hl = usize::from(ip.header_len());
            let total = usize::from(ip.total_len());
            let data_len = (total - hl).min(8);
            let reason = match why {
                Unreachable::Net => Icmpv4DstUnreachable::NetUnreachable,
                Unreachable::Host => Icmpv4DstUnreachable::HostUnreachable,
                Unreachable::Port => Icmpv4DstUnreachable::PortUnreachable,
                Unreachable::Prohibited => Icmpv4DstUnreachable::CommProhibited,
            };
            let quote = orig.get(..hl + data_len)?;
            let (src, dst) = (IpAddr::V4(header.dst_addr), IpAddr::V4(header.src_addr));
            ip_packet(src, dst, IpProtocol::Icmp, 8 + quote.len(), |buf| {
                // Type, code, checksum, 4 unused bytes, then the quote.
                if let Some(body) = buf.get_mut(8..) {
                    let n = quote.len().min(body.len());
                    body[..n].copy_from_slice(&quote[..n]);
                }
                let mut p = Icmpv4Packet::new_unchecked(&mut *buf);
                p.set_msg_type(Icmpv4Message::DstUnreachable);
                p.set_msg_code(reason.into());
                p.fill_checksum();
            })
        }
        6 => {
            let ip = Ipv6Packet::new_checked(orig).ok()?;
            let (s, d) = (ip.src_addr(), ip.dst_addr());
            let reason = match why {
                Unreachable::Net => Icmpv6DstUnreachable::NoRoute,
                Unreachable::Host => Icmpv6DstUnreachable::AddrUnreachable,
                Unreachable::Port => Icmpv6DstUnreachable::PortUnreachable,
                Unreachable::Prohibited => Icmpv6DstUnreachable::AdminProhibit,
            };
            // 40 (IPv6) + 8 (ICMPv6) + quote <= 1280, the IPv6 minimum MTU.
            let quote = &orig[..orig.len().min(1280 - 48)];
            ip_packet(
                IpAddr::V6(d),
                IpAddr::V6(s),
                IpProtocol::Icmpv6,
                8 + quote.len(),
                |buf| {
                    if let Some(body) = buf.get_mut(8..) {
                        let n = quote.len().min(body.len());
                        body[..n].copy_from_slice(&quote[..n]);
                    }
                    let mut p = Icmpv6Packet::new_unchecked(&mut *buf);
                    p.set_msg_type(Icmpv6Message::DstUnreachable);
                    p.set_msg_code(reason.into());
                    p.fill_checksum(&d, &s);
                },
            )
        }
        _ => None,
    }
}
