//! TUN read → segments ([`split`]) and peer super-packet → TUN write header
//! ([`header_for`]).

use crate::checksum::{self, l4_field};
use crate::coalesce::MAX_UDP_SEGMENTS;
use crate::ip::{self, Packet};
use crate::vnet::{F_NEEDS_CSUM, GSO_ECN, GSO_NONE, GSO_TCPV4, GSO_TCPV6, GSO_UDP_L4};
use crate::{Error, Offloads, VnetHdr, MAX_SUPER};

/// Cuts a packet as the TUN gave it (after the vnet header `hdr`) into
/// complete packets of at most `mtu` bytes and hands each to `emit`. Returns
/// how many were emitted.
///
/// * GSO_NONE: emitted as is (whatever its size), after completing its
///   checksum in place when `NEEDS_CSUM` is set.
/// * TCPV4/TCPV6/UDP_L4 (TCP with or without the ECN bit): the IP and L4
///   headers are copied in front of each `gso_size` chunk of payload (the
///   last may be shorter); IPv4 total length, ID (+1 per segment) and header
///   checksum, IPv6 payload length, TCP sequence number, UDP length and the
///   TCP/UDP checksum are rewritten in full. PSH and FIN stay on the last
///   segment only, CWR on the first only. Each segment is built in `scratch`
///   (reused, so no allocation once it has grown). The packet's own checksum
///   field is ignored, and `hdr_len` is only checked to lie within the packet
///   (the kernel may report the linear length there).
///
/// Refuses (never panics on) truncated or inconsistent packets, IPv4
/// fragments, IPv6 extension headers, `gso_size` 0, segments over `mtu`,
/// and packets over [`crate::MAX_SUPER`]. On `Err` nothing was emitted.
pub fn split(
    hdr: &VnetHdr,
    pkt: &mut [u8],
    mtu: usize,
    scratch: &mut Vec<u8>,
    mut emit: impl FnMut(&[u8]),
) -> Result<usize, Error> {
    if hdr.gso_type == GSO_NONE {
        if hdr.flags & F_NEEDS_CSUM != 0 {
            checksum::complete(pkt, hdr.csum_start.into(), hdr.csum_offset.into())?;
        }
        emit(pkt);
        return Ok(1);
    }
    let (v6, proto) = match (hdr.gso_type & !GSO_ECN, hdr.gso_type & GSO_ECN != 0) {
        (GSO_TCPV4, _) => (Some(false), ip::TCP),
        (GSO_TCPV6, _) => (Some(true), ip::TCP),
        // ECN is a TCP notion; UDP with it is malformed.
        (GSO_UDP_L4, false) => (None, ip::UDP),
        _ => return Err(Error::UnknownGsoType),
    };
    if pkt.len() > MAX_SUPER {
        return Err(Error::TooBig);
    }
    let p = ip::parse(pkt)?;
    if usize::from(hdr.hdr_len) > pkt.len() {
        return Err(Error::BadHeaderLength);
    }
    if p.ip.proto != proto || v6.is_some_and(|v6| v6 != p.ip.v6) {
        return Err(Error::NotTcpOrUdp);
    }
    if hdr.flags & F_NEEDS_CSUM != 0 {
        if usize::from(hdr.csum_start) != p.ip.hlen {
            return Err(Error::BadHeaderLength);
        }
        if usize::from(hdr.csum_offset) != l4_field(proto) {
            return Err(Error::BadChecksumOffset);
        }
    }
    let seg = check_segment(&p, hdr.gso_size, mtu)?;

    let hl = p.hdr_len();
    let (head, payload) = pkt.split_at(hl);
    // An empty payload still makes one (header-only) segment.
    let n = payload.len().div_ceil(seg).max(1);
    let id0 = ip::be16(head, 4);
    let seq0 = ip::be32(head, p.ip.hlen + 4);
    for i in 0..n {
        let chunk = payload.get(i * seg..).unwrap_or_default();
        let chunk = &chunk[..chunk.len().min(seg)];
        scratch.clear();
        scratch.extend_from_slice(head);
        scratch.extend_from_slice(chunk);
        let l4 = p.ip.hlen;
        if proto == ip::TCP {
            // seq wraps modulo 2^32 like the sequence space.
            ip::put32(scratch, l4 + 4, seq0.wrapping_add((i * seg) as u32));
            let mut flags = scratch[l4 + ip::TCP_FLAGS];
            if i + 1 < n {
                flags &= !(ip::TCP_FIN | ip::TCP_PSH);
            }
            if i > 0 {
                flags &= !ip::TCP_CWR;
            }
            scratch[l4 + ip::TCP_FLAGS] = flags;
        } else {
            let udp_len = (scratch.len() - l4) as u16;
            ip::put16(scratch, l4 + 4, udp_len);
        }
        ip::set_len_id(scratch, &p.ip, id0.wrapping_add(i as u16));
        checksum::set_l4_full(scratch, &p.ip);
        emit(scratch);
    }
    Ok(n)
}

/// Checks `gso_size` against the MTU: every segment (headers + `gso_size`)
/// must fit.
fn check_segment(p: &Packet, gso_size: u16, mtu: usize) -> Result<usize, Error> {
    let seg = usize::from(gso_size);
    if seg == 0 {
        return Err(Error::SegmentSizeZero);
    }
    if p.hdr_len() + seg > mtu {
        return Err(Error::SegmentTooBig);
    }
    Ok(seg)
}

/// The vnet header to write a super-packet from a peer to the TUN with.
///
/// Built from the packet's own IP and TCP/UDP headers; of what the peer sent
/// besides the packet only `gso_size` (payload bytes per segment) is used,
/// and it is checked: non-zero, and headers + `gso_size` ≤ `mtu`. The
/// packet's TCP/UDP checksum field is overwritten with the partial
/// (pseudo-header) value `NEEDS_CSUM` wants, so its previous content does not
/// matter; the IPv4 header checksum is left as sent (the kernel checks it).
///
/// A packet whose payload fits in one segment gets GSO_NONE: with `NEEDS_CSUM`
/// when `offloads.csum`, else with its checksum completed here and flags 0.
/// A real super-packet needs the matching `tso4`/`tso6`/`uso4`/`uso6`, or it
/// is refused with [`Error::OffloadDisabled`]; the caller can then cut it
/// with [`split`] and a header of its own making (`split` ignores the
/// checksum field). A UDP one of more than [`MAX_UDP_SEGMENTS`] datagrams is
/// refused with [`Error::TooManySegments`]. The packet is unchanged on `Err`.
pub fn header_for(
    pkt: &mut [u8],
    gso_size: u16,
    mtu: usize,
    offloads: Offloads,
) -> Result<VnetHdr, Error> {
    if pkt.len() > MAX_SUPER {
        return Err(Error::TooBig);
    }
    let p = ip::parse(pkt)?;
    let seg = check_segment(&p, gso_size, mtu)?;
    let hl = p.hdr_len();
    let csum = VnetHdr {
        flags: F_NEEDS_CSUM,
        gso_type: GSO_NONE,
        hdr_len: hl as u16,
        gso_size: 0,
        csum_start: p.ip.hlen as u16,
        csum_offset: l4_field(p.ip.proto) as u16,
    };
    let payload = pkt.len() - hl;
    if payload <= seg {
        if offloads.csum {
            checksum::set_l4_partial(pkt, &p.ip);
            return Ok(csum);
        }
        checksum::set_l4_full(pkt, &p.ip);
        return Ok(VnetHdr::default());
    }
    let gso_type = match (p.ip.proto, p.ip.v6) {
        (ip::TCP, false) => GSO_TCPV4,
        (ip::TCP, true) => GSO_TCPV6,
        _ => GSO_UDP_L4,
    };
    if !offloads.allows(gso_type, p.ip.v6) {
        return Err(Error::OffloadDisabled);
    }
    if gso_type == GSO_UDP_L4 && payload.div_ceil(seg) > MAX_UDP_SEGMENTS {
        return Err(Error::TooManySegments);
    }
    checksum::set_l4_partial(pkt, &p.ip);
    Ok(VnetHdr {
        gso_type: gso_type | ecn_bit(pkt, &p),
        gso_size,
        ..csum
    })
}

/// `GSO_ECN` for a TCP super-packet whose first segment carries CWR: the
/// kernel must then keep CWR on the first segment only, and only a device
/// that can do that may get it unsegmented.
pub(crate) fn ecn_bit(pkt: &[u8], p: &Packet) -> u8 {
    if p.ip.proto == ip::TCP && pkt[p.ip.hlen + ip::TCP_FLAGS] & ip::TCP_CWR != 0 {
        GSO_ECN
    } else {
        0
    }
}
