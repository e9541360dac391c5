//! TUN read → segments ([`split`]) and peer super-packet → TUN write header
//! ([`header_for`]).

use crate::{Error, Offloads, VnetHdr};

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
/// and packets over [`crate::MAX_SUPER`].
pub fn split(
    hdr: &VnetHdr,
    pkt: &mut [u8],
    mtu: usize,
    scratch: &mut Vec<u8>,
    emit: impl FnMut(&[u8]),
) -> Result<usize, Error> {
    let _ = (hdr, pkt, mtu, scratch, emit);
    Err(Error::UnknownGsoType)
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
/// checksum field).
pub fn header_for(
    pkt: &mut [u8],
    gso_size: u16,
    mtu: usize,
    offloads: Offloads,
) -> Result<VnetHdr, Error> {
    let _ = (pkt, gso_size, mtu, offloads);
    Err(Error::UnknownGsoType)
}
