//! GRO: packets from peers → as few TUN writes as possible.

use crate::{Error, Offloads};

/// At most this many packets/super-packets are held (each flow's latest run
/// is one of them); the oldest is written out to make room.
pub const MAX_HELD: usize = 64;
/// At most this many packet bytes are held; the oldest are written out to
/// make room.
pub const MAX_HELD_BYTES: usize = 256 * 1024;
/// At most this many datagrams in one UDP super-packet (the kernel refuses
/// more on write).
pub const MAX_UDP_SEGMENTS: usize = 64;

/// Collects the packets of one receive burst and writes as few as possible
/// to the TUN.
///
/// Consecutive in-order TCP segments of one flow are joined into one
/// super-packet of at most [`crate::MAX_SUPER`] bytes when the flow's family
/// has TSO: same addresses and ports, same IP fields (TOS/traffic class,
/// TTL/hop limit, DF, flow label), IPv4 ID +1 per segment, the next sequence
/// number, the same ACK, window, TCP options and flags (no SYN/RST/URG; CWR
/// only on the first; FIN/PSH close the run), payloads of equal size except a
/// shorter last one, and a valid checksum (so a corrupt segment is never
/// covered by a fresh checksum). Likewise UDP datagrams of one flow (up to
/// [`MAX_UDP_SEGMENTS`]) when the family has USO. Everything else is held as
/// is, in order within its flow.
///
/// Bounded by [`MAX_HELD`] and [`MAX_HELD_BYTES`]; buffers are kept across
/// bursts, so the steady state allocates nothing.
pub struct Coalescer {
    offloads: Offloads,
}

impl Coalescer {
    /// A coalescer that joins only what `offloads` lets it write.
    pub fn new(offloads: Offloads) -> Self {
        Coalescer { offloads }
    }

    /// Holds one complete IP packet (checksums valid, as a peer sends it).
    /// If the limits are reached, the oldest held packets are first handed
    /// to `write` (as in [`Coalescer::flush`]). A packet that is not a whole
    /// IPv4/IPv6 packet (bad version or header, length field not matching,
    /// over [`crate::MAX_SUPER`]) is an `Err` and is not held.
    pub fn push(&mut self, pkt: &[u8], write: impl FnMut(&[u8])) -> Result<(), Error> {
        let _ = (pkt, write, self.offloads);
        Err(Error::Truncated)
    }

    /// Holds a super-packet from a peer (see [`crate::header_for`]) behind
    /// the packets already held, so a flow's order is kept. Nothing is held
    /// on `Err`.
    pub fn push_super(
        &mut self,
        pkt: &[u8],
        gso_size: u16,
        mtu: usize,
        write: impl FnMut(&[u8]),
    ) -> Result<(), Error> {
        let _ = (pkt, gso_size, mtu, write);
        Err(Error::Truncated)
    }

    /// Hands everything held to `write`, in order, each as vnet header +
    /// packet in one slice (one TUN write), then empties itself, keeping its
    /// buffers. Super-packets carry `NEEDS_CSUM` and a partial checksum;
    /// packets that were not joined are written as pushed, behind a GSO_NONE
    /// header with flags 0.
    pub fn flush(&mut self, write: impl FnMut(&[u8])) {
        let _ = write;
    }

    /// Whether anything is held.
    pub fn is_empty(&self) -> bool {
        true
    }
}
