//! Reading the IP packets that arrive from the tunnel and writing the ones
//! the userspace exit sends back (UDP datagrams, echo replies, RSTs and ICMP
//! errors). smoltcp's `wire` types do the byte work; everything here is pure
//! and bounds-checked, so a malformed packet is `None`, never a panic.

use crate::datapath::ARENA;
use bytes::{BufMut, Bytes, BytesMut};
use sapper_shared::egress::Proto;
use sapper_shared::framing::WS_TAG_PACKET;
use sapper_shared::routing::MAX_IP_PACKET;
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
    let mut out = BytesMut::new();
    append_ip_packet(&mut out, src, dst, proto, payload_len, fill)?;
    // The BytesMut's own allocation becomes the Vec (no copy).
    Some(Vec::from(out))
}

/// As [`ip_packet`], appended to `out` (which is left as it was on `None`).
fn append_ip_packet(
    out: &mut BytesMut,
    src: IpAddr,
    dst: IpAddr,
    proto: IpProtocol,
    payload_len: usize,
    fill: impl FnOnce(&mut [u8]),
) -> Option<()> {
    let caps = ChecksumCapabilities::default();
    let start = out.len();
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
            if hl + payload_len > MAX_IP_PACKET {
                return None;
            }
            out.resize(start + hl + payload_len, 0);
            let buf = &mut out[start..];
            repr.emit(&mut Ipv4Packet::new_unchecked(&mut buf[..]), &caps);
            fill(&mut buf[hl..]);
            Some(())
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            if payload_len > MAX_IP_PACKET {
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
            out.resize(start + hl + payload_len, 0);
            let buf = &mut out[start..];
            repr.emit(&mut Ipv6Packet::new_unchecked(&mut buf[..]));
            fill(&mut buf[hl..]);
            Some(())
        }
        _ => None,
    }
}

/// Writes the UDP header and `payload` (checksum over `src`, `dst`).
fn udp_fill<'a>(
    src: SocketAddr,
    dst: SocketAddr,
    payload: &'a [u8],
) -> impl FnOnce(&mut [u8]) + 'a {
    move |buf| {
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
    }
}

/// A UDP datagram `src -> dst` carrying `payload`.
pub fn udp(src: SocketAddr, dst: SocketAddr, payload: &[u8]) -> Option<Vec<u8>> {
    let len = 8 + payload.len();
    if len > MAX_IP_PACKET {
        return None;
    }
    ip_packet(
        src.ip(),
        dst.ip(),
        IpProtocol::Udp,
        len,
        udp_fill(src, dst, payload),
    )
}

/// As [`udp`], written into `arena` behind the WebSocket packet tag: the
/// returned buffer is a tagged packet cut from the arena, which many packets
/// share and which is reclaimed in place once they are sent, so the steady
/// stream of a UDP flow's replies allocates nothing.
pub fn udp_tagged(
    arena: &mut BytesMut,
    src: SocketAddr,
    dst: SocketAddr,
    payload: &[u8],
) -> Option<Bytes> {
    let len = 8 + payload.len();
    if len > MAX_IP_PACKET {
        return None;
    }
    let most = 1 + 40 + len;
    if arena.capacity() < most {
        arena.reserve(ARENA.max(most));
    }
    arena.clear();
    arena.put_u8(WS_TAG_PACKET);
    let fill = udp_fill(src, dst, payload);
    if append_ip_packet(arena, src.ip(), dst.ip(), IpProtocol::Udp, len, fill).is_none() {
        arena.clear();
        return None;
    }
    Some(arena.split().freeze())
}

/// An echo reply `src -> dst` (ICMP or ICMPv6 by family).
pub fn echo_reply(src: IpAddr, dst: IpAddr, ident: u16, seq: u16, data: &[u8]) -> Option<Vec<u8>> {
    echo(src, dst, ident, seq, data, true)
}

/// An echo request or reply `src -> dst` (ICMP or ICMPv6 by family).
fn echo(
    src: IpAddr,
    dst: IpAddr,
    ident: u16,
    seq_no: u16,
    data: &[u8],
    reply: bool,
) -> Option<Vec<u8>> {
    let caps = ChecksumCapabilities::default();
    match (src, dst) {
        (IpAddr::V4(_), IpAddr::V4(_)) => {
            let repr = if reply {
                Icmpv4Repr::EchoReply {
                    ident,
                    seq_no,
                    data,
                }
            } else {
                Icmpv4Repr::EchoRequest {
                    ident,
                    seq_no,
                    data,
                }
            };
            ip_packet(src, dst, IpProtocol::Icmp, repr.buffer_len(), |buf| {
                repr.emit(&mut Icmpv4Packet::new_unchecked(buf), &caps)
            })
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            let repr = if reply {
                Icmpv6Repr::EchoReply {
                    ident,
                    seq_no,
                    data,
                }
            } else {
                Icmpv6Repr::EchoRequest {
                    ident,
                    seq_no,
                    data,
                }
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

#[cfg(test)]
mod tests {
    use super::*;
    use smoltcp::wire::TcpSeqNumber;

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    /// A TCP segment `src -> dst` with the given flags and payload.
    fn tcp(src: SocketAddr, dst: SocketAddr, syn: bool, ack: bool, data: &[u8]) -> Vec<u8> {
        ip_packet(
            src.ip(),
            dst.ip(),
            IpProtocol::Tcp,
            20 + data.len(),
            |buf| {
                let mut p = TcpPacket::new_unchecked(buf);
                p.set_src_port(src.port());
                p.set_dst_port(dst.port());
                p.set_seq_number(TcpSeqNumber(1000));
                p.set_ack_number(TcpSeqNumber(if ack { 77 } else { 0 }));
                p.set_header_len(20);
                p.clear_flags();
                p.set_syn(syn);
                p.set_ack(ack);
                p.set_window_len(1000);
                p.payload_mut().copy_from_slice(data);
                p.fill_checksum(&src.ip().into(), &dst.ip().into());
            },
        )
        .unwrap()
    }

    fn echo_request(src: IpAddr, dst: IpAddr, ident: u16, seq: u16, data: &[u8]) -> Vec<u8> {
        echo(src, dst, ident, seq, data, false).unwrap()
    }

    #[test]
    fn tcp_syn_is_parsed_with_its_flow() {
        for (s, d) in [
            ("10.99.0.1:40000", "10.20.0.2:5001"),
            ("[fd99::1]:40000", "[fd20::2]:80"),
        ] {
            let pkt = tcp(sa(s), sa(d), true, false, b"");
            let p = parse(&pkt).unwrap();
            assert!(matches!(
                p.kind,
                Kind::Tcp {
                    syn: true,
                    ack: false,
                    rst: false,
                    ..
                }
            ));
            let key = p.key().unwrap();
            assert_eq!((key.proto, key.src, key.dst), (Proto::Tcp, sa(s), sa(d)));
        }
    }

    #[test]
    fn udp_round_trip_and_bad_checksum() {
        for (s, d) in [
            ("10.99.0.1:5353", "10.20.0.2:53"),
            ("[fd99::1]:5353", "[fd20::2]:53"),
        ] {
            let mut pkt = udp(sa(s), sa(d), b"hello").unwrap();
            let p = parse(&pkt).unwrap();
            assert_eq!(
                p.kind,
                Kind::Udp {
                    src_port: sa(s).port(),
                    dst_port: sa(d).port(),
                    payload: b"hello"
                }
            );
            assert_eq!(p.key().unwrap().proto, Proto::Udp);
            // Corrupt the payload: the checksum no longer holds.
            let last = pkt.len() - 1;
            pkt[last] ^= 0xff;
            assert_eq!(parse(&pkt), None);
        }
    }

    #[test]
    fn echo_request_and_reply() {
        for (s, d) in [("10.99.0.1", "10.20.0.2"), ("fd99::1", "fd20::2")] {
            let (s, d): (IpAddr, IpAddr) = (s.parse().unwrap(), d.parse().unwrap());
            let req = echo_request(s, d, 0x1234, 7, b"ping data");
            let p = parse(&req).unwrap();
            assert_eq!(
                p.kind,
                Kind::Echo {
                    ident: 0x1234,
                    seq: 7,
                    data: b"ping data"
                }
            );
            let key = p.key().unwrap();
            assert_eq!((key.proto, key.src.port()), (Proto::Icmp, 0x1234));
            // The reply verifies with smoltcp's own parser.
            let reply = echo_reply(d, s, 0x1234, 7, b"ping data").unwrap();
            let caps = ChecksumCapabilities::default();
            match (s, d) {
                (IpAddr::V4(_), IpAddr::V4(_)) => {
                    let ip = Ipv4Packet::new_checked(&reply[..]).unwrap();
                    assert_eq!(IpAddr::V4(ip.dst_addr()), s);
                    let icmp = Icmpv4Packet::new_checked(ip.payload()).unwrap();
                    assert_eq!(
                        Icmpv4Repr::parse(&icmp, &caps).unwrap(),
                        Icmpv4Repr::EchoReply {
                            ident: 0x1234,
                            seq_no: 7,
                            data: b"ping data"
                        }
                    );
                }
                (IpAddr::V6(s6), IpAddr::V6(d6)) => {
                    let ip = Ipv6Packet::new_checked(&reply[..]).unwrap();
                    let icmp = Icmpv6Packet::new_checked(ip.payload()).unwrap();
                    assert_eq!(
                        Icmpv6Repr::parse(&d6, &s6, &icmp, &caps).unwrap(),
                        Icmpv6Repr::EchoReply {
                            ident: 0x1234,
                            seq_no: 7,
                            data: b"ping data"
                        }
                    );
                }
                _ => unreachable!(),
            }
        }
    }

    #[test]
    fn rst_answers_a_syn() {
        for (s, d) in [
            ("10.99.0.1:40000", "10.20.0.2:5001"),
            ("[fd99::1]:40000", "[fd20::2]:80"),
        ] {
            let syn = tcp(sa(s), sa(d), true, false, b"");
            let rst = tcp_rst(&syn).unwrap();
            let p = parse(&rst).unwrap();
            assert_eq!((p.src, p.dst), (sa(d).ip(), sa(s).ip()));
            let payload = match sa(s) {
                SocketAddr::V4(_) => &rst[20..],
                SocketAddr::V6(_) => &rst[40..],
            };
            let t = TcpPacket::new_checked(payload).unwrap();
            assert!(t.verify_checksum(&sa(d).ip().into(), &sa(s).ip().into()));
            assert!(t.rst() && t.ack() && !t.syn());
            assert_eq!((t.src_port(), t.dst_port()), (sa(d).port(), sa(s).port()));
            assert_eq!(t.ack_number(), TcpSeqNumber(1001));
            // A RST is never answered; an ACK is answered with its ack number.
            assert_eq!(tcp_rst(&rst), None);
            let ack = tcp(sa(s), sa(d), false, true, b"abc");
            let r = tcp_rst(&ack).unwrap();
            let t = TcpPacket::new_checked(&r[r.len() - 20..]).unwrap();
            assert!(t.rst() && !t.ack());
            assert_eq!(t.seq_number(), TcpSeqNumber(77));
        }
    }

    #[test]
    fn unreachable_quotes_the_original() {
        let udp4 = udp(sa("10.99.0.1:5353"), sa("10.20.0.2:53"), &[9u8; 100]).unwrap();
        let icmp = unreachable(&udp4, Unreachable::Port).unwrap();
        let ip = Ipv4Packet::new_checked(&icmp[..]).unwrap();
        assert!(ip.verify_checksum());
        assert_eq!(ip.dst_addr().to_string(), "10.99.0.1");
        let m = Icmpv4Packet::new_checked(ip.payload()).unwrap();
        assert!(m.verify_checksum());
        assert_eq!(m.msg_type(), Icmpv4Message::DstUnreachable);
        assert_eq!(m.msg_code(), 3);
        // The IPv4 header and the first 8 bytes of the datagram (UDP header).
        assert_eq!(&ip.payload()[8..], &udp4[..28]);

        let udp6 = udp(sa("[fd99::1]:5353"), sa("[fd20::2]:53"), &[9u8; 2000]).unwrap();
        for (why, code) in [
            (Unreachable::Prohibited, 1),
            (Unreachable::Host, 3),
            (Unreachable::Port, 4),
        ] {
            let icmp = unreachable(&udp6, why).unwrap();
            assert!(icmp.len() <= 1280, "{}", icmp.len());
            let ip = Ipv6Packet::new_checked(&icmp[..]).unwrap();
            let m = Icmpv6Packet::new_checked(ip.payload()).unwrap();
            assert!(m.verify_checksum(&ip.src_addr(), &ip.dst_addr()));
            assert_eq!(m.msg_type(), Icmpv6Message::DstUnreachable);
            assert_eq!(m.msg_code(), code);
            assert_eq!(&ip.payload()[8..], &udp6[..1280 - 48]);
        }
        let syn = tcp(sa("10.99.0.1:1"), sa("10.20.0.2:2"), true, false, b"");
        let icmp = unreachable(&syn, Unreachable::Prohibited).unwrap();
        assert_eq!(
            Icmpv4Packet::new_checked(&icmp[20..]).unwrap().msg_code(),
            13
        );
    }

    #[test]
    fn fragments_and_garbage() {
        let mut frag = udp(sa("10.99.0.1:1"), sa("10.20.0.2:2"), b"x").unwrap();
        {
            let mut ip = Ipv4Packet::new_unchecked(&mut frag[..]);
            ip.set_more_frags(true);
            ip.fill_checksum();
        }
        assert_eq!(parse(&frag).map(|p| p.kind), Some(Kind::Fragment));
        assert_eq!(parse(&[]), None);
        assert_eq!(parse(&[0x45; 3]), None);
        assert_eq!(parse(&[0x70; 60]), None);
        // Every truncation of valid packets is rejected or parsed, never a panic.
        let samples = [
            tcp(sa("10.99.0.1:1"), sa("10.20.0.2:2"), true, false, b"data"),
            udp(sa("[fd99::1]:1"), sa("[fd20::2]:2"), b"data").unwrap(),
            echo_request(
                "10.99.0.1".parse().unwrap(),
                "10.20.0.2".parse().unwrap(),
                1,
                2,
                b"x",
            ),
        ];
        for s in &samples {
            for n in 0..s.len() {
                let _ = parse(&s[..n]);
                let _ = tcp_rst(&s[..n]);
                let _ = unreachable(&s[..n], Unreachable::Host);
            }
        }
    }

    #[test]
    fn ping_socket_replies() {
        use crate::exit::icmp::parse_reply;
        let msg = [0u8, 0, 0xab, 0xcd, 0x00, 0x09, 0x00, 0x05, b'h', b'i'];
        assert_eq!(parse_reply(false, &msg), Some((5, &b"hi"[..])));
        assert_eq!(parse_reply(true, &msg), None);
        let mut v6 = msg;
        v6[0] = 129;
        assert_eq!(parse_reply(true, &v6), Some((5, &b"hi"[..])));
        assert_eq!(parse_reply(false, &msg[..7]), None);
    }

    /// The tagged builder writes the very packet `udp` builds, behind the
    /// WebSocket tag, and consecutive packets share one allocation.
    #[test]
    fn udp_tagged_matches_udp_and_shares_the_arena() {
        let mut arena = BytesMut::new();
        for (s, d) in [
            ("10.20.0.2:53", "10.99.0.1:5353"),
            ("[fd20::2]:53", "[fd99::1]:5353"),
        ] {
            let plain = udp(sa(s), sa(d), b"answer").unwrap();
            let first = udp_tagged(&mut arena, sa(s), sa(d), b"answer").unwrap();
            assert_eq!(first[0], WS_TAG_PACKET);
            assert_eq!(&first[1..], &plain[..]);
            let second = udp_tagged(&mut arena, sa(s), sa(d), b"answer").unwrap();
            assert_eq!(second.as_ptr(), first[first.len()..].as_ptr());
        }
        // Mixed families build nothing and leave the arena as it was.
        assert!(udp_tagged(&mut arena, sa("10.0.0.1:1"), sa("[fd00::1]:1"), b"x").is_none());
        assert!(arena.is_empty());
    }
}
