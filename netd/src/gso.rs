//! GSO super-packets on the data path (issue 14), around the pure byte work
//! of `sapper_offload`: cutting a super-packet into segments for a peer or
//! a TUN that cannot take it whole ([`Segmenter`]), the per-reader receive
//! state that joins packets from a peer into as few TUN writes as possible
//! ([`Rx`]), and the drop counters for super-packets refused, by reason.
//!
//! Every buffer here belongs to one task and is reused: in the steady state
//! no packet allocates.

use crate::datapath::Packet;
use bytes::{BufMut, BytesMut};
use sapper_offload::{Coalescer, Error, Offloads, VnetHdr, MAX_SUPER};
use sapper_shared::framing::WS_TAG_PACKET;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

pub use sapper_offload::{F_NEEDS_CSUM, GSO_NONE, VNET_HDR_LEN};

/// Size of the arena segments are cut into (reclaimed in place once the
/// segments cut from it have been sent).
const ARENA: usize = 256 * 1024;

/// Packets a link reader takes without waiting before it writes what it
/// has joined to the TUN: bounds the latency a burst adds and the work
/// between two looks at the other tasks.
pub const RX_BATCH: usize = 64;

/// Every refusal [`sapper_offload::Error`] has; one that list lacks is
/// counted as `other`.
const REFUSALS: [Error; 12] = Error::ALL;
const SLOTS: usize = REFUSALS.len() + 1;

fn slot(e: Error) -> usize {
    REFUSALS
        .iter()
        .position(|r| *r == e)
        .unwrap_or(REFUSALS.len())
}

fn slot_reason(i: usize) -> &'static str {
    REFUSALS.get(i).map_or("other", |e| e.reason())
}

/// Super-packets (from a peer, or from our own TUN) dropped because they
/// could not be parsed, split or written, by reason.
#[derive(Default)]
pub struct SuperDrops([AtomicU64; SLOTS]);

impl SuperDrops {
    pub fn count(&self, e: Error) {
        self.0[slot(e)].fetch_add(1, Relaxed);
    }

    /// `(reason, count)` for every reason, zeros included.
    pub fn snapshot(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        self.0
            .iter()
            .enumerate()
            .map(|(i, c)| (slot_reason(i), c.load(Relaxed)))
    }
}

/// Cuts super-packets into complete packets, each with one byte of
/// headroom holding the WebSocket packet tag (so it leaves over WebSocket
/// without a copy, over QUIC as a slice), all from one reused arena.
#[derive(Default)]
pub struct Segmenter {
    arena: BytesMut,
    scratch: Vec<u8>,
    /// Where a peer's super-packet is copied to be checked and rewritten
    /// (it arrives in an immutable buffer).
    work: Vec<u8>,
}

impl Segmenter {
    /// Splits `pkt` (as read from the TUN behind `hdr`) into packets of at
    /// most `mtu` bytes, handing each to `out`. Returns how many.
    pub fn split(
        &mut self,
        hdr: &VnetHdr,
        pkt: &mut [u8],
        mtu: usize,
        mut out: impl FnMut(Packet),
    ) -> Result<usize, Error> {
        let arena = &mut self.arena;
        sapper_offload::split(hdr, pkt, mtu, &mut self.scratch, |seg| {
            out(Self::cut(arena, seg))
        })
    }

    /// Splits a super-packet a peer sent (segment size `gso_size`): its
    /// headers are checked as for a TUN write ([`sapper_offload::header_for`],
    /// which trusts nothing the peer sent but the packet and `gso_size`),
    /// then it is cut like a TUN read.
    pub fn split_peer(
        &mut self,
        pkt: &[u8],
        gso_size: u16,
        mtu: usize,
        mut out: impl FnMut(Packet),
    ) -> Result<usize, Error> {
        if pkt.len() > MAX_SUPER {
            return Err(Error::TooBig);
        }
        self.work.clear();
        self.work.extend_from_slice(pkt);
        // Every offload: only a header to cut by is wanted, never a write.
        let hdr = sapper_offload::header_for(&mut self.work, gso_size, mtu, Offloads::ALL)?;
        let arena = &mut self.arena;
        sapper_offload::split(&hdr, &mut self.work, mtu, &mut self.scratch, |seg| {
            out(Self::cut(arena, seg))
        })
    }

    fn cut(arena: &mut BytesMut, seg: &[u8]) -> Packet {
        if arena.capacity() < 1 + seg.len() {
            arena.reserve(ARENA.max(1 + seg.len()));
        }
        arena.put_u8(WS_TAG_PACKET);
        arena.extend_from_slice(seg);
        Packet::tagged(arena.split().freeze())
    }
}

/// What one link reader keeps between packets: the coalescer (on a vnet
/// TUN) and a segmenter for super-packets that must be cut.
pub struct Rx {
    /// Joins packets for the TUN; `None` when the TUN has no vnet header
    /// (or there is no TUN).
    pub coalescer: Option<Coalescer>,
    pub segmenter: Segmenter,
    /// The MTU segments must fit: the TUN's, or (relay, userspace exit)
    /// only the largest IP packet.
    pub mtu: usize,
}

impl Rx {
    pub fn new(vnet: Option<Offloads>, mtu: usize) -> Self {
        Self {
            coalescer: vnet.map(Coalescer::new),
            segmenter: Segmenter::default(),
            mtu,
        }
    }
}
