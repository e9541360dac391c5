//! GRO: packets from peers → as few TUN writes as possible.

use std::collections::VecDeque;

use crate::checksum::{self, l4_field};
use crate::ip::{self, Packet};
use crate::split::{ecn_bit, header_for};
use crate::vnet::{F_NEEDS_CSUM, GSO_TCPV4, GSO_TCPV6, GSO_UDP_L4, VNET_HDR_LEN};
use crate::{Error, Offloads, VnetHdr, MAX_SUPER};

/// At most this many packets/super-packets are held (each flow's latest run
/// is one of them); the oldest is written out to make room.
pub const MAX_HELD: usize = 64;
/// At most this many packet bytes are held; the oldest are written out to
/// make room.
pub const MAX_HELD_BYTES: usize = 256 * 1024;
/// At most this many datagrams in one UDP super-packet (the kernel refuses
/// more than `UDP_MAX_SEGMENTS`, 64 on older kernels, on write).
pub const MAX_UDP_SEGMENTS: usize = 64;

/// Same addresses, ports and protocol: packets that must stay in order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct FlowKey {
    v6: bool,
    proto: u8,
    src: [u8; 16],
    dst: [u8; 16],
    ports: [u8; 4],
}

impl FlowKey {
    fn of(pkt: &[u8], p: &Packet) -> Self {
        let (s, d) = ip::addrs(pkt, &p.ip);
        let (mut src, mut dst) = ([0u8; 16], [0u8; 16]);
        src[..s.len()].copy_from_slice(s);
        dst[..d.len()].copy_from_slice(d);
        let l4 = p.ip.hlen;
        FlowKey {
            v6: p.ip.v6,
            proto: p.ip.proto,
            src,
            dst,
            ports: [pkt[l4], pkt[l4 + 1], pkt[l4 + 2], pkt[l4 + 3]],
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// Written as pushed.
    Plain,
    /// A run of TCP segments or UDP datagrams (maybe just one so far).
    Run,
    /// A peer's super-packet, header already made.
    Super(VnetHdr),
}

/// One future TUN write.
struct Item {
    /// Room for the vnet header (filled at flush), then the IP packet.
    buf: Vec<u8>,
    /// None for what is not a whole TCP/UDP packet (nothing joins it).
    key: Option<FlowKey>,
    kind: Kind,
    /// Run only: the first packet's headers describe it all.
    pkt: Packet,
    /// Payload bytes of the first segment, the super-packet's gso_size.
    seg: usize,
    segs: usize,
    next_seq: u32,
    next_id: u16,
    /// Whether another segment may join (a short one, FIN or PSH ends it).
    open: bool,
}

impl Item {
    fn ip(&self) -> &[u8] {
        &self.buf[VNET_HDR_LEN..]
    }

    /// Whether `pkt` (parsed as `p`, a run candidate) continues this run.
    fn joins(&self, pkt: &[u8], p: &Packet) -> bool {
        let head = self.ip();
        let payload = pkt.len() - p.hdr_len();
        if !(self.kind == Kind::Run && self.open && p.hdr_len() == self.pkt.hdr_len()) {
            return false;
        }
        if payload == 0 || payload > self.seg || head.len() + payload > MAX_SUPER {
            return false;
        }
        // The L4 header starts where the IP header (with options) ends.
        let (ihl, l4) = (p.ip.hlen, p.ip.hlen);
        // IP: everything but the lengths, ID and header checksum must match,
        // and the ID must be the next one: the kernel's segmentation gives
        // segments ID, ID+1, ..., so a joined run comes apart as it came.
        let ip_same = if p.ip.v6 {
            head[..4] == pkt[..4] && head[6..40] == pkt[6..40]
        } else {
            head[..2] == pkt[..2]
                && head[6..10] == pkt[6..10]
                && head[12..ihl] == pkt[12..ihl]
                && ip::be16(pkt, 4) == self.next_id
        };
        if !ip_same {
            return false;
        }
        if p.ip.proto == ip::UDP {
            return self.segs < MAX_UDP_SEGMENTS && head[l4..l4 + 4] == pkt[l4..l4 + 4];
        }
        // TCP: ports, ACK, data offset, window, urgent pointer and options
        // equal; flags equal except the FIN/PSH a last segment may add and
        // the CWR only the first may carry.
        let flags = pkt[l4 + ip::TCP_FLAGS];
        let mask = !(ip::TCP_FIN | ip::TCP_PSH);
        flags & ip::TCP_CWR == 0
            && (flags & mask) == (head[l4 + ip::TCP_FLAGS] & mask & !ip::TCP_CWR)
            && ip::be32(pkt, l4 + 4) == self.next_seq
            && head[l4..l4 + 4] == pkt[l4..l4 + 4]
            && head[l4 + 8..l4 + 13] == pkt[l4 + 8..l4 + 13]
            && head[l4 + 14..l4 + 16] == pkt[l4 + 14..l4 + 16]
            && head[l4 + 18..l4 + p.l4_len] == pkt[l4 + 18..l4 + p.l4_len]
    }

    /// Appends a segment `joins` accepted.
    fn join(&mut self, pkt: &[u8], p: &Packet) {
        let payload = &pkt[p.hdr_len()..];
        self.buf.extend_from_slice(payload);
        self.segs += 1;
        self.next_id = self.next_id.wrapping_add(1);
        self.next_seq = self.next_seq.wrapping_add(payload.len() as u32);
        if payload.len() < self.seg {
            self.open = false;
        }
        if p.ip.proto == ip::TCP {
            let at = VNET_HDR_LEN + p.ip.hlen + ip::TCP_FLAGS;
            let end = pkt[p.ip.hlen + ip::TCP_FLAGS] & (ip::TCP_FIN | ip::TCP_PSH);
            if end != 0 {
                self.buf[at] |= end;
                self.open = false;
            }
        }
    }

    /// Fills in the vnet header and fixes the IP/L4 headers of a run.
    fn finish(&mut self) {
        let hdr = match self.kind {
            Kind::Super(h) => h,
            Kind::Run if self.segs > 1 => {
                let p = self.pkt;
                let pkt = &mut self.buf[VNET_HDR_LEN..];
                let l4 = p.ip.hlen;
                if p.ip.proto == ip::UDP {
                    let len = (pkt.len() - l4) as u16;
                    ip::put16(pkt, l4 + 4, len);
                }
                let id = ip::be16(pkt, 4);
                ip::set_len_id(pkt, &p.ip, id);
                checksum::set_l4_partial(pkt, &p.ip);
                let gso_type = match (p.ip.proto, p.ip.v6) {
                    (ip::TCP, false) => GSO_TCPV4,
                    (ip::TCP, true) => GSO_TCPV6,
                    _ => GSO_UDP_L4,
                };
                VnetHdr {
                    flags: F_NEEDS_CSUM,
                    gso_type: gso_type | ecn_bit(pkt, &p),
                    hdr_len: p.hdr_len() as u16,
                    gso_size: self.seg as u16,
                    csum_start: l4 as u16,
                    csum_offset: l4_field(p.ip.proto) as u16,
                }
            }
            // One packet: as pushed, checksums complete.
            _ => VnetHdr::default(),
        };
        self.buf[..VNET_HDR_LEN].copy_from_slice(&hdr.encode());
    }
}

/// Collects the packets of one receive burst and writes as few as possible
/// to the TUN.
///
/// Consecutive in-order TCP segments of one flow are joined into one
/// super-packet of at most [`crate::MAX_SUPER`] bytes when the flow's family
/// has TSO: same addresses and ports, same IP fields (TOS/traffic class,
/// TTL/hop limit, DF, flow label, IPv4 options), IPv4 ID +1 per segment, the
/// next sequence number, the same ACK, window, TCP options and flags (no
/// SYN/RST/URG; CWR only on the first; FIN/PSH end the run), payloads of
/// equal size except a shorter last one, and valid checksums (so a corrupt
/// segment is never covered by a fresh checksum). Likewise UDP datagrams of
/// one flow (up to [`MAX_UDP_SEGMENTS`], checksum not 0) when the family has
/// USO. Everything else is held as is, in order within its flow.
///
/// Bounded by [`MAX_HELD`] and [`MAX_HELD_BYTES`]; buffers are kept across
/// bursts (at most `MAX_HELD` of up to `VNET_HDR_LEN + MAX_SUPER` bytes), so
/// the steady state allocates nothing.
pub struct Coalescer {
    offloads: Offloads,
    items: VecDeque<Item>,
    spare: Vec<Vec<u8>>,
    held_bytes: usize,
}

impl Coalescer {
    /// A coalescer that joins only what `offloads` lets it write.
    pub fn new(offloads: Offloads) -> Self {
        Coalescer {
            offloads,
            items: VecDeque::with_capacity(MAX_HELD),
            spare: Vec::with_capacity(MAX_HELD),
            held_bytes: 0,
        }
    }

    /// Holds one complete IP packet (checksums valid, as a peer sends it).
    /// If the limits are reached, the oldest held packets are first handed
    /// to `write` (as in [`Coalescer::flush`]). A packet that is not a whole
    /// IPv4/IPv6 packet (bad version or header, length field not matching,
    /// over [`crate::MAX_SUPER`]) is an `Err` and is not held.
    pub fn push(&mut self, pkt: &[u8], mut write: impl FnMut(&[u8])) -> Result<(), Error> {
        if pkt.len() > MAX_SUPER {
            return Err(Error::TooBig);
        }
        let ip = ip::parse_ip(pkt)?;
        // Not a whole TCP/UDP packet (a fragment, ICMP, ...): nothing to
        // join, nothing it must stay behind.
        let Ok(p) = ip::parse_l4(pkt, ip) else {
            self.hold(pkt, None, Kind::Plain, &mut write);
            return Ok(());
        };
        let key = FlowKey::of(pkt, &p);
        self.make_room(pkt.len(), &mut write);
        let run = self.run_candidate(pkt, &p);
        // Only the flow's newest item may be extended: joining an older one
        // would put this packet before ones that came earlier.
        if run {
            if let Some(it) = self.items.iter_mut().rev().find(|it| it.key == Some(key)) {
                if it.joins(pkt, &p) {
                    it.join(pkt, &p);
                    self.held_bytes += pkt.len() - p.hdr_len();
                    return Ok(());
                }
            }
        }
        let kind = if run { Kind::Run } else { Kind::Plain };
        let it = self.hold(pkt, Some(key), kind, &mut write);
        if run {
            let l4 = p.ip.hlen;
            it.pkt = p;
            it.seg = pkt.len() - p.hdr_len();
            it.next_id = ip::be16(pkt, 4).wrapping_add(1);
            it.next_seq = ip::be32(pkt, l4 + 4).wrapping_add(it.seg as u32);
            it.open =
                p.ip.proto == ip::UDP || pkt[l4 + ip::TCP_FLAGS] & (ip::TCP_FIN | ip::TCP_PSH) == 0;
        }
        Ok(())
    }

    /// Holds a super-packet from a peer (see [`crate::header_for`]) behind
    /// the packets already held, so a flow's order is kept. Nothing is held
    /// on `Err`.
    pub fn push_super(
        &mut self,
        pkt: &[u8],
        gso_size: u16,
        mtu: usize,
        mut write: impl FnMut(&[u8]),
    ) -> Result<(), Error> {
        if pkt.len() > MAX_SUPER {
            return Err(Error::TooBig);
        }
        let p = ip::parse(pkt)?;
        let key = FlowKey::of(pkt, &p);
        let mut buf = self.buffer(pkt);
        match header_for(&mut buf[VNET_HDR_LEN..], gso_size, mtu, self.offloads) {
            Ok(h) => {
                self.hold_buf(buf, Some(key), Kind::Super(h), &mut write);
                Ok(())
            }
            Err(e) => {
                self.spare.push(buf);
                Err(e)
            }
        }
    }

    /// Hands everything held to `write`, in order, each as vnet header +
    /// packet in one slice (one TUN write), then empties itself, keeping its
    /// buffers. Super-packets carry `NEEDS_CSUM` and a partial checksum;
    /// packets that were not joined are written as pushed, behind a GSO_NONE
    /// header with flags 0.
    pub fn flush(&mut self, mut write: impl FnMut(&[u8])) {
        while self.write_oldest(&mut write) {}
    }

    /// Whether anything is held.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Whether a TCP/UDP packet may start or join a run: its family has the
    /// offload, its flags allow it, it has payload, and its checksums are
    /// right.
    fn run_candidate(&self, pkt: &[u8], p: &Packet) -> bool {
        let o = &self.offloads;
        let l4 = p.ip.hlen;
        let offload = match (p.ip.proto, p.ip.v6) {
            (ip::TCP, false) => o.tso4,
            (ip::TCP, true) => o.tso6,
            (_, false) => o.uso4,
            (_, true) => o.uso6,
        };
        if !offload || pkt.len() == p.hdr_len() {
            return false;
        }
        if p.ip.proto == ip::TCP
            && pkt[l4 + ip::TCP_FLAGS] & (ip::TCP_SYN | ip::TCP_RST | ip::TCP_URG) != 0
        {
            return false;
        }
        (p.ip.v6 || checksum::ipv4_header_valid(pkt, p.ip.hlen)) && checksum::l4_valid(pkt, &p.ip)
    }

    /// Writes out the oldest items until `len` more bytes fit.
    fn make_room(&mut self, len: usize, write: &mut impl FnMut(&[u8])) {
        while self.held_bytes + len > MAX_HELD_BYTES && self.write_oldest(write) {}
    }

    /// A spare buffer (or a new one) holding room for the vnet header and
    /// then `pkt`.
    fn buffer(&mut self, pkt: &[u8]) -> Vec<u8> {
        let mut buf = self.spare.pop().unwrap_or_default();
        buf.clear();
        buf.resize(VNET_HDR_LEN, 0);
        buf.extend_from_slice(pkt);
        buf
    }

    /// Holds `pkt` as a new item (writing the oldest out first if needed).
    fn hold(
        &mut self,
        pkt: &[u8],
        key: Option<FlowKey>,
        kind: Kind,
        write: &mut impl FnMut(&[u8]),
    ) -> &mut Item {
        let buf = self.buffer(pkt);
        self.hold_buf(buf, key, kind, write)
    }

    fn hold_buf(
        &mut self,
        buf: Vec<u8>,
        key: Option<FlowKey>,
        kind: Kind,
        write: &mut impl FnMut(&[u8]),
    ) -> &mut Item {
        let len = buf.len() - VNET_HDR_LEN;
        self.make_room(len, write);
        if self.items.len() >= MAX_HELD {
            self.write_oldest(write);
        }
        self.held_bytes += len;
        self.items.push_back(Item {
            buf,
            key,
            kind,
            pkt: Packet::default(),
            seg: 0,
            segs: 1,
            next_seq: 0,
            next_id: 0,
            open: false,
        });
        let last = self.items.len() - 1;
        &mut self.items[last]
    }

    /// Writes out the oldest item; false if there was none.
    fn write_oldest(&mut self, write: &mut impl FnMut(&[u8])) -> bool {
        let Some(mut it) = self.items.pop_front() else {
            return false;
        };
        it.finish();
        write(&it.buf);
        self.held_bytes -= it.buf.len() - VNET_HDR_LEN;
        it.buf.clear();
        self.spare.push(it.buf);
        true
    }
}
