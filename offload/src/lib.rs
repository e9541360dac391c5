//! TUN offloads for Sapper's data path, as pure functions over byte slices.
//!
//! netd's TUN is opened with `IFF_VNET_HDR` and `TUNSETOFFLOAD`
//! (`TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6`, maybe `TUN_F_USO4 | TUN_F_USO6`).
//! Every read then starts with a [`VnetHdr`] and may be a GSO super-packet of
//! up to 64 KiB with a partial checksum; every write must start with one and
//! may be a super-packet too. This crate does the byte work for both
//! directions and no I/O:
//!
//! * [`split`]: TUN read → packets of at most the tunnel MTU, fully
//!   checksummed (what a peer expects when it does not take super-packets).
//! * [`header_for`]: a super-packet from a peer → the header to write it to
//!   the TUN with.
//! * [`Coalescer`]: ordinary packets from peers → as few TUN writes as
//!   possible (GRO).
//!
//! # Checksum conventions
//!
//! * A **complete** packet has a valid IPv4 header checksum and a valid
//!   TCP/UDP checksum. [`split`] emits only complete packets;
//!   [`Coalescer::push`] takes complete packets.
//! * A **partial** packet (what the kernel hands out with `NEEDS_CSUM`, and
//!   expects with a GSO write) has, in its TCP/UDP checksum field, the folded
//!   but *not* complemented one's-complement sum of the pseudo-header, whose
//!   length is the L4 length of the whole (super-)packet. The IPv4 header
//!   checksum is valid. [`Coalescer::flush`] writes super-packets in this
//!   state, and [`header_for`] puts a packet into it, whatever its checksum
//!   field held before (so a peer may forward the TUN's super-packet as read).
//!
//! Nothing here panics on any input or reads outside the slices it is given.
//!
//! # How netd uses it
//!
//! * **TUN read** (buffer of `VNET_HDR_LEN + MAX_SUPER`): [`VnetHdr::decode`]
//!   the front, then either [`split`] the rest into packets for a peer, or,
//!   for a peer that takes super-packets, send a GSO packet as it is with its
//!   `gso_size` in front (its checksum field may stay partial; the receiver
//!   rewrites it). A GSO_NONE packet still goes through `split` to complete a
//!   `NEEDS_CSUM` checksum. `split` needs `&mut` only for that.
//! * **Peer → TUN**: ordinary packets into [`Coalescer::push`], super-packets
//!   into [`Coalescer::push_super`] (or [`header_for`] and a write, after a
//!   flush, to keep a flow in order); [`Coalescer::flush`] at the end of each
//!   receive burst. Every write carries a vnet header, joined or not.
//! * **Peer super-packet, no TUN** (userspace exit, or a TUN without the
//!   offload): `header_for(pkt, gso_size, mtu, Offloads::ALL)` then `split`
//!   with that header gives complete packets.

mod checksum;
mod coalesce;
mod ip;
mod split;
mod vnet;

pub use coalesce::{Coalescer, MAX_HELD, MAX_HELD_BYTES, MAX_UDP_SEGMENTS};
pub use split::{header_for, split};
pub use vnet::{
    Offloads, VnetHdr, F_DATA_VALID, F_NEEDS_CSUM, GSO_ECN, GSO_NONE, GSO_TCPV4, GSO_TCPV6,
    GSO_UDP_L4, VNET_HDR_LEN,
};

/// The largest IP packet (header included) a super-packet can be, in either
/// direction: a TUN read buffer of `VNET_HDR_LEN + MAX_SUPER` bytes holds
/// any read. Larger packets are refused ([`Error::TooBig`]).
pub const MAX_SUPER: usize = 65535;

/// Why a packet was refused. Each is a drop the caller counts under
/// [`Error::reason`].
#[derive(Debug, thiserror::Error, Clone, Copy, PartialEq, Eq)]
pub enum Error {
    /// Shorter than a header it must hold (vnet, IP, TCP or UDP).
    #[error("packet truncated")]
    Truncated,
    /// Not IPv4/IPv6, a bad IHL, or an IPv4 fragment where a whole packet is needed.
    #[error("bad IP header")]
    BadIpHeader,
    /// The GSO type needs TCP or UDP and the packet is something else
    /// (including IPv6 with extension headers, which are not handled).
    #[error("not TCP or UDP (or IPv6 extension headers)")]
    NotTcpOrUdp,
    /// A GSO packet with `gso_size` 0.
    #[error("GSO segment size 0")]
    SegmentSizeZero,
    /// `gso_size` plus the headers exceeds the MTU.
    #[error("GSO segment larger than the MTU")]
    SegmentTooBig,
    /// The IP (or UDP) length field disagrees with the bytes present.
    #[error("length field does not match the packet")]
    LengthMismatch,
    /// A GSO type this crate does not handle (UFO, ECN with UDP, unknown bits).
    #[error("unknown GSO type")]
    UnknownGsoType,
    /// A header length inconsistent with the packet: vnet `hdr_len` beyond
    /// it, `csum_start` not at the L4 header, a TCP data offset under 20.
    #[error("bad header length")]
    BadHeaderLength,
    /// `csum_offset` does not point at the TCP/UDP checksum (or out of the packet).
    #[error("bad vnet checksum offset")]
    BadChecksumOffset,
    /// Larger than [`MAX_SUPER`].
    #[error("packet larger than a super-packet can be")]
    TooBig,
    /// A UDP super-packet of more than [`MAX_UDP_SEGMENTS`] datagrams (the
    /// kernel refuses those on write).
    #[error("too many segments in a UDP super-packet")]
    TooManySegments,
    /// The packet needs an offload the TUN did not accept.
    #[error("offload not enabled on the TUN")]
    OffloadDisabled,
}

impl Error {
    /// Every refusal, in declaration order: a drop counter's slots.
    pub const ALL: [Error; 12] = [
        Error::Truncated,
        Error::BadIpHeader,
        Error::NotTcpOrUdp,
        Error::SegmentSizeZero,
        Error::SegmentTooBig,
        Error::LengthMismatch,
        Error::UnknownGsoType,
        Error::BadHeaderLength,
        Error::BadChecksumOffset,
        Error::TooBig,
        Error::TooManySegments,
        Error::OffloadDisabled,
    ];

    /// A stable label for a drop counter (snake case, never changes).
    pub fn reason(&self) -> &'static str {
        match self {
            Error::Truncated => "truncated",
            Error::BadIpHeader => "bad_ip_header",
            Error::NotTcpOrUdp => "not_tcp_or_udp",
            Error::SegmentSizeZero => "segment_size_zero",
            Error::SegmentTooBig => "segment_too_big",
            Error::LengthMismatch => "length_mismatch",
            Error::UnknownGsoType => "unknown_gso_type",
            Error::BadHeaderLength => "bad_header_length",
            Error::BadChecksumOffset => "bad_checksum_offset",
            Error::TooBig => "too_big",
            Error::TooManySegments => "too_many_segments",
            Error::OffloadDisabled => "offload_disabled",
        }
    }
}
