//! The data path: IP packets between the TUN (or the userspace exit) and
//! the links. Every packet reads the forwarding table the driver last
//! published (an immutable [`Table`] behind an `ArcSwap`): no lock, and in
//! the steady state no allocation — packets from links are forwarded as the
//! `Bytes` they arrived in, and TUN reads fill one reusable buffer.

use crate::gso::{Rx, Segmenter, SuperDrops};
use crate::tun::Tun;
use arc_swap::ArcSwap;
use bytes::{BufMut, Bytes, BytesMut};
use sapper_control::{ForwardingTable, LinkId};
use sapper_shared::framing::{WS_SUPER_HEADER, WS_TAG_PACKET, WS_TAG_SUPER};
use sapper_shared::routing;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, OnceLock};
use tokio_util::sync::CancellationToken;

/// One IP packet on the data path. It may keep headroom in front (a
/// WebSocket tag, already written), so that a packet read from the TUN or
/// received over WebSocket leaves over WebSocket without a copy, and over
/// QUIC as a slice of the same buffer. A GSO super-packet (up to 64 KiB of
/// one TCP or UDP flow) always carries the [`WS_TAG_SUPER`] header: it only
/// ever leaves whole over a WebSocket link whose peer takes it.
#[derive(Clone)]
pub struct Packet {
    buf: Bytes,
    /// Bytes of headroom: 0, 1 ([`WS_TAG_PACKET`]) or
    /// [`WS_SUPER_HEADER`] ([`WS_TAG_SUPER`] and the segment size).
    head: u8,
}

impl Packet {
    /// A bare packet.
    pub fn plain(buf: Bytes) -> Self {
        Self { buf, head: 0 }
    }

    /// `buf` is [`WS_TAG_PACKET`] followed by the packet.
    pub fn tagged(buf: Bytes) -> Self {
        debug_assert_eq!(buf.first(), Some(&WS_TAG_PACKET));
        Self { buf, head: 1 }
    }

    /// `buf` is a [`WS_TAG_SUPER`] message: the tag, the segment size
    /// (u16, big-endian), then the super-packet. `None` when too short.
    pub fn super_packet(buf: Bytes) -> Option<Self> {
        (buf.len() > WS_SUPER_HEADER && buf[0] == WS_TAG_SUPER).then_some(Self {
            buf,
            head: WS_SUPER_HEADER as u8,
        })
    }

    /// The segment size of a super-packet; `None` for a plain packet.
    pub fn gso_size(&self) -> Option<u16> {
        (self.head as usize == WS_SUPER_HEADER)
            .then(|| u16::from_be_bytes([self.buf[1], self.buf[2]]))
    }

    /// The packet alone (no allocation: a slice of the same buffer).
    pub fn into_bytes(self) -> Bytes {
        if self.head > 0 {
            self.buf.slice(self.head as usize..)
        } else {
            self.buf
        }
    }

    /// The packet behind its WebSocket tag (a super-packet: behind its
    /// tag and segment size). A packet that came without headroom (from
    /// QUIC) is copied into `arena`, which the WebSocket writer keeps: one
    /// allocation serves many packets and is reclaimed in place once they
    /// are written (as the TUN reader's buffer is).
    pub fn into_tagged(self, arena: &mut BytesMut) -> Bytes {
        if self.head > 0 {
            return self.buf;
        }
        if arena.capacity() < 1 + self.buf.len() {
            arena.reserve(ARENA.max(1 + self.buf.len()));
        }
        arena.put_u8(WS_TAG_PACKET);
        arena.extend_from_slice(&self.buf);
        arena.split().freeze()
    }
}

/// Size of the buffers that hold many packets (the WebSocket writer's
/// tagging arena, the userspace exit's transmit arena).
pub const ARENA: usize = 64 * 1024;

impl std::ops::Deref for Packet {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.buf[self.head as usize..]
    }
}

/// How one transport takes a packet: never waits; a full queue drops the
/// packet as a congested router would (`false`).
pub trait PacketTx: Send + Sync {
    /// Queues one packet.
    fn try_send(&self, pkt: Packet) -> bool;
}

/// Per-link counters.
#[derive(Default)]
pub struct Counters {
    pub bytes_in: AtomicU64,
    pub bytes_out: AtomicU64,
    pub packets_in: AtomicU64,
    pub packets_out: AtomicU64,
    pub drops: AtomicU64,
    /// Of `drops`: the link's send queue was full.
    pub drops_queue_full: AtomicU64,
    /// Of `drops`: arrived while forwarding was off, from an unknown link,
    /// or with no readable destination.
    pub drops_not_forwarded: AtomicU64,
    /// Packets whose source this link may not send from (also in `drops`).
    pub source_drops: AtomicU64,
    /// Control messages dropped by the link's rate limit before they reach
    /// the driver.
    pub control_drops: AtomicU64,
    /// Super-packets from this peer dropped as malformed (also in `drops`;
    /// by reason in [`Stats::super_drops`]).
    pub super_drops: AtomicU64,
}

/// What the data path holds for one link.
pub struct LinkData {
    pub id: LinkId,
    pub counters: Counters,
    tx: Box<dyn PacketTx>,
    /// What the link's TLS handshake negotiated, for `peers`.
    pub tls: crate::tls::Negotiated,
    /// The link carries super-packets whole: WebSocket, and the peer's
    /// Handshake said `super_packets`.
    pub takes_super: bool,
}

impl LinkData {
    pub fn new(
        id: LinkId,
        tx: Box<dyn PacketTx>,
        tls: crate::tls::Negotiated,
        takes_super: bool,
    ) -> Self {
        Self {
            id,
            counters: Counters::default(),
            tx,
            tls,
            takes_super,
        }
    }

    /// Queues one packet to the peer; never waits.
    pub fn send(&self, pkt: Packet) {
        if pkt.gso_size().is_some() && !self.takes_super {
            // Callers cut super-packets for such links (the TUN reader,
            // DataPath::deliver); one that slipped through would reach the
            // peer as garbage.
            debug_assert!(false, "super-packet to a link that does not take it");
            self.counters.drops.fetch_add(1, Relaxed);
            return;
        }
        let len = pkt.len() as u64;
        if self.tx.try_send(pkt) {
            self.counters.packets_out.fetch_add(1, Relaxed);
            self.counters.bytes_out.fetch_add(len, Relaxed);
        } else {
            self.counters.drops.fetch_add(1, Relaxed);
            self.counters.drops_queue_full.fetch_add(1, Relaxed);
        }
    }
}

/// The forwarding table packet tasks read.
pub type Table = ForwardingTable<Arc<LinkData>>;

/// Where packets that leave the tunnel here go when there is no TUN.
pub trait Terminus: Send + Sync {
    /// One packet from link `from`; never waits.
    fn handle(&self, from: LinkId, pkt: Bytes);
}

#[derive(Default)]
pub struct Stats {
    pub tun_in: AtomicU64,
    pub tun_out: AtomicU64,
    pub drops: AtomicU64,
    pub handshake_failures: AtomicU64,
    /// Super-packets dropped (from peers or the TUN), by reason.
    pub super_drops: SuperDrops,
    /// Of `tun_in`: GSO super-packets the kernel handed us.
    pub tun_super_in: AtomicU64,
    /// Of `tun_out`: GSO super-packets written (joined here or arrived whole).
    pub tun_super_out: AtomicU64,
}

pub struct DataPath {
    table: ArcSwap<Table>,
    pub tun: Option<Arc<Tun>>,
    /// The userspace exit, on a node without a TUN (set once at start).
    terminus: OnceLock<Arc<dyn Terminus>>,
    pub stats: Stats,
}

impl DataPath {
    pub fn new(tun: Option<Arc<Tun>>) -> Self {
        Self {
            table: ArcSwap::from_pointee(Table::default()),
            tun,
            terminus: OnceLock::new(),
            stats: Stats::default(),
        }
    }

    /// Sets where packets terminate on a TUN-less node; once.
    pub fn set_terminus(&self, t: Arc<dyn Terminus>) -> bool {
        self.terminus.set(t).is_ok()
    }

    /// Publishes a new table (driver only).
    pub fn publish(&self, t: Table) {
        self.table.store(Arc::new(t));
    }

    /// The receive state one link reader keeps (see [`Rx`]).
    pub fn rx(&self) -> Rx {
        match &self.tun {
            Some(t) if t.vnet_hdr() => Rx::new(Some(t.offloads), t.mtu as usize),
            Some(t) => Rx::new(None, t.mtu as usize),
            None => Rx::new(None, sapper_offload::MAX_SUPER),
        }
    }

    /// A packet arrived from link `from`: to the TUN, the userspace exit,
    /// or (on a relay) on to the next link. Packets for a vnet TUN are held
    /// in `rx` to be joined: the reader calls [`DataPath::flush`] before it
    /// waits for more.
    pub fn deliver(&self, from: &LinkData, pkt: Packet, rx: &mut Rx) {
        let c = &from.counters;
        c.packets_in.fetch_add(1, Relaxed);
        c.bytes_in.fetch_add(pkt.len() as u64, Relaxed);
        let table = self.table.load();
        let dst = routing::destination(&pkt);
        if !table.forwarding || table.link(from.id).is_none() || dst.is_none() {
            c.drops.fetch_add(1, Relaxed);
            c.drops_not_forwarded.fetch_add(1, Relaxed);
            return;
        }
        // Allowed sources: a link sends only from what it owns (its
        // addresses and accepted routes), checked on the same immutable
        // table, with no lock and no allocation.
        match routing::source(&pkt) {
            Some(src) if table.source_allowed(src, dst, from.id) => {}
            _ => {
                c.drops.fetch_add(1, Relaxed);
                c.source_drops.fetch_add(1, Relaxed);
                return;
            }
        }
        let malformed = |e| self.malformed(from, e);
        if table.relay {
            // A relay has no TUN in the path: packets go on to the
            // neighbour on the other side, as they came (a super-packet
            // whole to a WebSocket peer that takes it, else cut).
            match table.next_hop(dst, Some(from.id)) {
                Some((_, next)) => match pkt.gso_size() {
                    Some(gso) if !next.takes_super => {
                        if let Err(e) = rx.segmenter.split_peer(&pkt, gso, rx.mtu, |p| next.send(p))
                        {
                            malformed(e);
                        }
                    }
                    _ => next.send(pkt),
                },
                None => {
                    self.stats.drops.fetch_add(1, Relaxed);
                }
            }
            return;
        }
        match (&self.tun, self.terminus.get()) {
            (Some(tun), _) => {
                let Rx {
                    coalescer,
                    segmenter,
                    mtu,
                } = rx;
                match (pkt.gso_size(), coalescer) {
                    // Whole to the TUN, behind what was held before it.
                    (Some(gso), Some(co)) => {
                        match co.push_super(&pkt, gso, *mtu, |f| self.write_frame(tun, f)) {
                            Ok(()) => {}
                            // A kind of super-packet this TUN does not
                            // take (USO on an older kernel): cut, after
                            // what is held.
                            Err(sapper_offload::Error::OffloadDisabled) => {
                                co.flush(|f| self.write_frame(tun, f));
                                if let Err(e) =
                                    segmenter.split_peer(&pkt, gso, *mtu, |p| self.write(tun, &p))
                                {
                                    malformed(e);
                                }
                            }
                            Err(e) => malformed(e),
                        }
                    }
                    (Some(gso), None) => {
                        if let Err(e) =
                            segmenter.split_peer(&pkt, gso, *mtu, |p| self.write(tun, &p))
                        {
                            malformed(e);
                        }
                    }
                    (None, Some(co)) => {
                        // What the coalescer cannot parse goes to the kernel
                        // as it came (as without offloads), after what it holds.
                        if co.push(&pkt, |f| self.write_frame(tun, f)).is_err() {
                            co.flush(|f| self.write_frame(tun, f));
                            self.write(tun, &pkt);
                        }
                    }
                    (None, None) => self.write(tun, &pkt),
                }
            }
            (None, Some(exit)) => match pkt.gso_size() {
                // smoltcp takes packets of the MTU, one at a time.
                Some(gso) => {
                    if let Err(e) = rx
                        .segmenter
                        .split_peer(&pkt, gso, rx.mtu, |p| exit.handle(from.id, p.into_bytes()))
                    {
                        malformed(e);
                    }
                }
                None => exit.handle(from.id, pkt.into_bytes()),
            },
            (None, None) => {
                self.stats.drops.fetch_add(1, Relaxed);
            }
        }
    }

    /// A super-packet from `from` that is not one: dropped and counted, by
    /// reason (never trusted, never passed on).
    pub fn malformed(&self, from: &LinkData, e: sapper_offload::Error) {
        self.stats.super_drops.count(e);
        from.counters.drops.fetch_add(1, Relaxed);
        from.counters.super_drops.fetch_add(1, Relaxed);
    }

    /// Writes what `rx` holds for the TUN; a reader calls it before it waits.
    pub fn flush(&self, rx: &mut Rx) {
        if let (Some(tun), Some(co)) = (&self.tun, rx.coalescer.as_mut()) {
            if !co.is_empty() {
                co.flush(|f| self.write_frame(tun, f));
            }
        }
    }

    /// One complete packet to the TUN.
    fn write(&self, tun: &Tun, pkt: &[u8]) {
        self.written(tun.try_write(pkt));
    }

    /// One vnet header + packet to a vnet TUN.
    fn write_frame(&self, tun: &Tun, frame: &[u8]) {
        // Byte 1 of a virtio_net_hdr is its GSO type.
        if frame.get(1).is_some_and(|t| *t != crate::gso::GSO_NONE) {
            self.stats.tun_super_out.fetch_add(1, Relaxed);
        }
        self.written(tun.try_write_frame(frame));
    }

    fn written(&self, r: std::io::Result<()>) {
        match r {
            Ok(()) => {
                self.stats.tun_out.fetch_add(1, Relaxed);
            }
            Err(e) => {
                self.stats.drops.fetch_add(1, Relaxed);
                tracing::debug!(error = %e, "TUN write failed");
            }
        }
    }

    /// Sends a packet this node originated (the userspace exit's answers)
    /// to link `to`, or wherever the table says if that link is gone.
    /// `false` when it could go nowhere.
    pub fn send_to(&self, to: Option<LinkId>, pkt: Packet) -> bool {
        let table = self.table.load();
        let link = match to.and_then(|id| table.link(id)) {
            Some(l) => Some(l),
            None => table
                .next_hop(routing::destination(&pkt), None)
                .map(|(_, l)| l),
        };
        match link {
            Some(l) => {
                l.send(pkt);
                true
            }
            None => false,
        }
    }
}

/// One allocation holds many packets; it is reclaimed in place once the
/// packets cut from it have been sent (BytesMut::reserve).
const TUN_BUFFER: usize = 256 * 1024;
/// On a vnet TUN, where one read may be 64 KiB.
const VNET_TUN_BUFFER: usize = 1024 * 1024;

/// Reads the TUN and sends each packet to its link until shutdown.
pub async fn tun_reader(data: Arc<DataPath>, shutdown: CancellationToken) {
    let Some(tun) = data.tun.clone() else { return };
    if tun.vnet_hdr() {
        return vnet_tun_reader(data, tun, shutdown).await;
    }
    let read_size = (tun.mtu as usize).clamp(576, routing::MAX_IP_PACKET);
    let mut buf = BytesMut::with_capacity(TUN_BUFFER);
    loop {
        // One byte of headroom for the WebSocket packet tag.
        buf.reserve(1 + read_size);
        buf.resize(1 + read_size, 0);
        buf[0] = WS_TAG_PACKET;
        let n = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = tun.read(&mut buf[1..]) => match r {
                Ok(n) => n,
                Err(e) => {
                    tracing::error!(error = %e, "reading the TUN failed; stopping the data path");
                    return;
                }
            },
        };
        buf.truncate(1 + n);
        let pkt = Packet::tagged(buf.split().freeze());
        data.stats.tun_in.fetch_add(1, Relaxed);
        let table = data.table.load();
        if !table.forwarding {
            data.stats.drops.fetch_add(1, Relaxed);
            continue;
        }
        match table.next_hop(routing::destination(&pkt), None) {
            Some((_, link)) => link.send(pkt),
            None => {
                data.stats.drops.fetch_add(1, Relaxed);
            }
        }
    }
}

/// The TUN reader on a vnet TUN: every read is a virtio_net_hdr and a
/// packet that may be a GSO super-packet with a partial checksum. The
/// header's room is reused as headroom: its last byte becomes the
/// WebSocket packet tag of a complete packet, its last three the super tag
/// and segment size of a super-packet that leaves whole. Everything else
/// is cut into complete packets of the TUN's MTU, from one arena.
async fn vnet_tun_reader(data: Arc<DataPath>, tun: Arc<Tun>, shutdown: CancellationToken) {
    use crate::gso::{F_NEEDS_CSUM, GSO_NONE, VNET_HDR_LEN};
    let read_size = VNET_HDR_LEN + sapper_offload::MAX_SUPER;
    let mtu = tun.mtu as usize;
    let mut buf = BytesMut::with_capacity(VNET_TUN_BUFFER);
    let mut seg = Segmenter::default();
    loop {
        buf.clear();
        let n = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = tun.read_buf(&mut buf, read_size) => match r {
                Ok(n) => n,
                Err(e) => {
                    tracing::error!(error = %e, "reading the TUN failed; stopping the data path");
                    return;
                }
            },
        };
        debug_assert_eq!(buf.len(), n);
        data.stats.tun_in.fetch_add(1, Relaxed);
        let hdr = match sapper_offload::VnetHdr::decode(&buf) {
            Ok(h) => h,
            Err(e) => {
                data.stats.super_drops.count(e);
                data.stats.drops.fetch_add(1, Relaxed);
                continue;
            }
        };
        if hdr.gso_type != GSO_NONE {
            data.stats.tun_super_in.fetch_add(1, Relaxed);
        }
        let table = data.table.load();
        if !table.forwarding {
            data.stats.drops.fetch_add(1, Relaxed);
            continue;
        }
        let Some((_, link)) = table.next_hop(routing::destination(&buf[VNET_HDR_LEN..]), None)
        else {
            data.stats.drops.fetch_add(1, Relaxed);
            continue;
        };
        if hdr.gso_type == GSO_NONE && hdr.flags & F_NEEDS_CSUM == 0 {
            // Complete as it is.
            buf[VNET_HDR_LEN - 1] = WS_TAG_PACKET;
            let frozen = buf.split().freeze();
            link.send(Packet::tagged(frozen.slice(VNET_HDR_LEN - 1..)));
        } else if hdr.gso_type != GSO_NONE && link.takes_super {
            // Whole, checksum partial: the peer rebuilds the header from
            // the packet's own headers (or cuts it).
            buf[VNET_HDR_LEN - WS_SUPER_HEADER] = WS_TAG_SUPER;
            buf[VNET_HDR_LEN - 2..VNET_HDR_LEN].copy_from_slice(&hdr.gso_size.to_be_bytes());
            let frozen = buf.split().freeze();
            match Packet::super_packet(frozen.slice(VNET_HDR_LEN - WS_SUPER_HEADER..)) {
                Some(p) => link.send(p),
                None => {
                    data.stats.drops.fetch_add(1, Relaxed);
                }
            }
        } else if let Err(e) = seg.split(&hdr, &mut buf[VNET_HDR_LEN..], mtu, |p| link.send(p)) {
            // Cut (and checksummed) into packets of the MTU; `buf` stays
            // ours for the next read.
            data.stats.super_drops.count(e);
            data.stats.drops.fetch_add(1, Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sapper_control::Forwarding;
    use std::sync::Mutex;

    /// A link sender that keeps what it is given.
    #[derive(Clone, Default)]
    struct Keep(Arc<Mutex<Vec<Packet>>>);

    impl PacketTx for Keep {
        fn try_send(&self, pkt: Packet) -> bool {
            self.0.lock().unwrap().push(pkt);
            true
        }
    }

    impl Keep {
        fn take(&self) -> Vec<Packet> {
            std::mem::take(&mut *self.0.lock().unwrap())
        }
    }

    impl Terminus for Keep {
        fn handle(&self, _from: LinkId, pkt: Bytes) {
            self.0.lock().unwrap().push(Packet::plain(pkt));
        }
    }

    fn sum16(b: &[u8], mut acc: u32) -> u32 {
        for c in b.chunks(2) {
            acc += u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
        }
        acc
    }

    fn fold(mut acc: u32) -> u16 {
        while acc > 0xffff {
            acc = (acc & 0xffff) + (acc >> 16);
        }
        acc as u16
    }

    /// An IPv4/TCP packet 10.0.0.1 → 10.0.0.2 carrying `payload` bytes,
    /// checksums left as the kernel leaves a super-packet's (IP valid, TCP
    /// whatever): the receiver must not care.
    fn tcp4(payload: usize) -> Vec<u8> {
        let total = 40 + payload;
        let mut p = vec![0u8; total];
        p[0] = 0x45;
        p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
        p[6] = 0x40; // DF
        p[8] = 64;
        p[9] = 6;
        p[12..16].copy_from_slice(&[10, 0, 0, 1]);
        p[16..20].copy_from_slice(&[10, 0, 0, 2]);
        let c = !fold(sum16(&p[..20], 0));
        p[10..12].copy_from_slice(&c.to_be_bytes());
        p[20..22].copy_from_slice(&40000u16.to_be_bytes());
        p[22..24].copy_from_slice(&5201u16.to_be_bytes());
        p[24..28].copy_from_slice(&1000u32.to_be_bytes());
        p[32] = 5 << 4;
        p[33] = 0x10; // ACK
        p[34..36].copy_from_slice(&512u16.to_be_bytes());
        for (i, b) in p[40..].iter_mut().enumerate() {
            *b = i as u8;
        }
        p
    }

    /// The TCP checksum of an IPv4 packet verifies.
    fn tcp4_valid(p: &[u8]) -> bool {
        let l4 = &p[20..];
        let mut acc = sum16(&p[12..20], 0) + 6 + l4.len() as u32;
        acc = sum16(l4, acc);
        fold(acc) == 0xffff && fold(sum16(&p[..20], 0)) == 0xffff
    }

    fn super_msg(gso: u16, pkt: &[u8]) -> Packet {
        let mut b = vec![WS_TAG_SUPER];
        b.extend_from_slice(&gso.to_be_bytes());
        b.extend_from_slice(pkt);
        Packet::super_packet(Bytes::from(b)).unwrap()
    }

    /// A data path without a TUN and links 1 (10.0.0.1, the sender) and 2
    /// (10.0.0.2); link 2 takes super-packets when `whole`.
    fn two_links(relay: bool, whole: bool) -> (DataPath, Arc<LinkData>, Keep) {
        let data = DataPath::new(None);
        let (k1, k2) = (Keep::default(), Keep::default());
        let l1 = Arc::new(LinkData::new(
            LinkId(1),
            Box::new(k1),
            Default::default(),
            true,
        ));
        let l2 = Arc::new(LinkData::new(
            LinkId(2),
            Box::new(k2.clone()),
            Default::default(),
            whole,
        ));
        let f = Forwarding {
            forwarding: true,
            relay,
            routes: vec![
                ("10.0.0.1/32".parse().unwrap(), LinkId(1)),
                ("10.0.0.2/32".parse().unwrap(), LinkId(2)),
            ],
            active: vec![LinkId(1), LinkId(2)],
            peer_of: vec![],
        };
        let (a, b) = (l1.clone(), l2);
        data.publish(Table::build(&f, |id| match id.0 {
            1 => Some(a.clone()),
            2 => Some(b.clone()),
            _ => None,
        }));
        (data, l1, k2)
    }

    /// An IPv4/UDP packet 10.0.0.1 → 10.0.0.2 with `payload` bytes (IP
    /// checksum valid, UDP checksum 0: a super-packet's is rewritten).
    fn udp4(payload: usize) -> Vec<u8> {
        let total = 28 + payload;
        let mut p = vec![0u8; total];
        p[0] = 0x45;
        p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
        p[8] = 64;
        p[9] = 17;
        p[12..16].copy_from_slice(&[10, 0, 0, 1]);
        p[16..20].copy_from_slice(&[10, 0, 0, 2]);
        let c = !fold(sum16(&p[..20], 0));
        p[10..12].copy_from_slice(&c.to_be_bytes());
        p[20..22].copy_from_slice(&40000u16.to_be_bytes());
        p[22..24].copy_from_slice(&7002u16.to_be_bytes());
        p[24..26].copy_from_slice(&((8 + payload) as u16).to_be_bytes());
        p
    }

    /// A TUN stand-in: a vnet `Tun` over one end of a SOCK_SEQPACKET pair
    /// (one message per write, as a TUN), without USO; the other end reads
    /// what netd wrote.
    fn vnet_tun() -> (Arc<Tun>, std::os::fd::OwnedFd) {
        use nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType};
        let (a, b) = socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        )
        .unwrap();
        let vnet = crate::tun::VnetInfo {
            vnet_hdr: true,
            offloads: vec!["csum".into(), "tso4".into(), "tso6".into()],
        };
        let tun = Tun::new(a, "t".into(), 1280, vec![], vnet).unwrap();
        (Arc::new(tun), b)
    }

    /// Every message waiting on `fd`.
    fn written(fd: &std::os::fd::OwnedFd) -> Vec<Vec<u8>> {
        use nix::sys::socket::{recv, MsgFlags};
        use std::os::fd::AsRawFd;
        let mut out = Vec::new();
        let mut buf = vec![0u8; 70_000];
        while let Ok(n) = recv(fd.as_raw_fd(), &mut buf, MsgFlags::MSG_DONTWAIT) {
            out.push(buf[..n].to_vec());
        }
        out
    }

    /// A data path with `tun` and link 1 (10.0.0.1) sending to it.
    fn to_tun(tun: Arc<Tun>) -> (DataPath, Arc<LinkData>) {
        let data = DataPath::new(Some(tun));
        let l1 = Arc::new(LinkData::new(
            LinkId(1),
            Box::new(Keep::default()),
            Default::default(),
            true,
        ));
        let f = Forwarding {
            forwarding: true,
            relay: false,
            routes: vec![("10.0.0.1/32".parse().unwrap(), LinkId(1))],
            active: vec![LinkId(1)],
            peer_of: vec![],
        };
        let a = l1.clone();
        data.publish(Table::build(&f, |id| (id.0 == 1).then(|| a.clone())));
        (data, l1)
    }

    #[test]
    fn vnet_tun_takes_joined_and_whole_super_packets_and_cuts_what_it_cannot() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()
            .unwrap();
        let _guard = rt.enter();
        let (tun, other) = vnet_tun();
        let (data, from) = to_tun(tun);
        let mut rx = data.rx();
        // A TCP super-packet: whole, behind a TSO header.
        data.deliver(&from, super_msg(1000, &tcp4(3500)), &mut rx);
        data.flush(&mut rx);
        let w = written(&other);
        assert_eq!(w.len(), 1);
        let hdr = sapper_offload::VnetHdr::decode(&w[0]).unwrap();
        assert_eq!(
            (hdr.gso_type, hdr.gso_size),
            (sapper_offload::GSO_TCPV4, 1000)
        );
        assert_eq!(w[0].len(), 10 + 3540);
        // A UDP one without USO on the TUN: cut, each datagram complete.
        data.deliver(&from, super_msg(1000, &udp4(4000)), &mut rx);
        data.flush(&mut rx);
        let w = written(&other);
        assert_eq!(w.len(), 4, "cut into four datagrams");
        for m in &w {
            assert_eq!(&m[..10], &[0; 10], "a header that asks nothing");
            assert_eq!(m.len(), 10 + 1028);
            let p = &m[10..];
            let acc = sum16(&p[12..20], 0) + 17 + 1008;
            assert_eq!(fold(sum16(&p[20..], acc)), 0xffff, "UDP checksum");
        }
        // Three in-order TCP segments of one flow: one TUN write.
        for k in 0..3u32 {
            let mut s = tcp4(1000);
            s[24..28].copy_from_slice(&(1000 + 1000 * k).to_be_bytes());
            s[4..6].copy_from_slice(&(k as u16).to_be_bytes());
            s[10..12].copy_from_slice(&[0, 0]);
            let c = !fold(sum16(&s[..20], 0));
            s[10..12].copy_from_slice(&c.to_be_bytes());
            let acc = sum16(&s[12..20], 0) + 6 + 1020;
            let c = !fold(sum16(&s[20..], acc));
            s[36..38].copy_from_slice(&c.to_be_bytes());
            assert!(tcp4_valid(&s));
            data.deliver(&from, Packet::plain(Bytes::from(s)), &mut rx);
        }
        assert!(written(&other).is_empty(), "held until the flush");
        data.flush(&mut rx);
        let w = written(&other);
        assert_eq!(w.len(), 1, "joined");
        assert_eq!(w[0].len(), 10 + 40 + 3000);
        assert_eq!(data.stats.tun_super_out.load(Relaxed), 2);
        assert_eq!(data.stats.tun_out.load(Relaxed), 6);
        assert_eq!(from.counters.super_drops.load(Relaxed), 0);
    }

    /// The vnet TUN reader: a TSO read goes whole to a link that takes
    /// super-packets and cut (checksummed) to one that does not; a complete
    /// packet goes as read, its tag in the header's room.
    #[test]
    fn vnet_tun_reader_sends_whole_or_cut_by_the_link() {
        use nix::sys::socket::{send, MsgFlags};
        use std::os::fd::AsRawFd;
        for whole in [true, false] {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            let _guard = rt.enter();
            let (tun, kernel) = vnet_tun();
            let data = Arc::new(DataPath::new(Some(tun)));
            let k2 = Keep::default();
            let l2 = Arc::new(LinkData::new(
                LinkId(2),
                Box::new(k2.clone()),
                Default::default(),
                whole,
            ));
            let f = Forwarding {
                forwarding: true,
                relay: false,
                routes: vec![("10.0.0.2/32".parse().unwrap(), LinkId(2))],
                active: vec![LinkId(2)],
                peer_of: vec![],
            };
            data.publish(Table::build(&f, |id| (id.0 == 2).then(|| l2.clone())));
            let tso = sapper_offload::VnetHdr {
                flags: sapper_offload::F_NEEDS_CSUM,
                gso_type: sapper_offload::GSO_TCPV4,
                hdr_len: 40,
                gso_size: 1000,
                csum_start: 20,
                csum_offset: 16,
            };
            let mut frame = tso.encode().to_vec();
            frame.extend_from_slice(&tcp4(3500));
            send(kernel.as_raw_fd(), &frame, MsgFlags::empty()).unwrap();
            let mut plain = vec![0u8; 10];
            plain.extend_from_slice(&udp4(100));
            send(kernel.as_raw_fd(), &plain, MsgFlags::empty()).unwrap();
            let stop = CancellationToken::new();
            let want = if whole { 2 } else { 5 };
            let got = rt.block_on(async {
                let reader = tokio::spawn(tun_reader(data.clone(), stop.clone()));
                let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
                while k2.0.lock().unwrap().len() < want && tokio::time::Instant::now() < deadline {
                    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                }
                stop.cancel();
                let _ = reader.await;
                k2.take()
            });
            assert_eq!(got.len(), want, "whole={whole}");
            let (sup, rest) = got.split_at(want - 1);
            if whole {
                assert_eq!(sup[0].gso_size(), Some(1000));
                assert_eq!(sup[0].len(), 3540);
            } else {
                assert!(sup.iter().all(|p| p.gso_size().is_none() && tcp4_valid(p)));
                assert_eq!(sup.iter().map(|p| p.len() - 40).sum::<usize>(), 3500);
            }
            assert_eq!(rest[0].len(), 128, "the complete packet as read");
            assert_eq!(data.stats.tun_super_in.load(Relaxed), 1);
            assert_eq!(data.stats.tun_in.load(Relaxed), 2);
        }
    }

    #[test]
    fn super_packet_headroom() {
        let p = super_msg(1000, &tcp4(3000));
        assert_eq!(p.gso_size(), Some(1000));
        assert_eq!(p.len(), 3040);
        assert_eq!(p[0], 0x45);
        let mut arena = BytesMut::new();
        let whole = p.clone().into_tagged(&mut arena);
        assert_eq!(&whole[..3], &[WS_TAG_SUPER, 0x03, 0xe8]);
        assert_eq!(whole.as_ptr(), p.buf.as_ptr(), "sent as it came");
        assert!(Packet::super_packet(Bytes::from_static(&[WS_TAG_SUPER, 0, 1])).is_none());
        assert!(Packet::super_packet(Bytes::from_static(&[WS_TAG_PACKET, 0, 1, 0x45])).is_none());
        assert_eq!(Packet::plain(Bytes::from_static(&[0x45])).gso_size(), None);
    }

    #[test]
    fn relay_cuts_super_packets_for_a_link_that_does_not_take_them() {
        let (data, from, to) = two_links(true, false);
        let mut rx = data.rx();
        data.deliver(&from, super_msg(1000, &tcp4(3500)), &mut rx);
        let segs = to.take();
        assert_eq!(segs.len(), 4);
        let mut seq = 1000u32;
        for (i, s) in segs.iter().enumerate() {
            assert_eq!(s.gso_size(), None);
            let want = if i < 3 { 1000 } else { 500 };
            assert_eq!(s.len(), 40 + want);
            assert!(tcp4_valid(s), "segment {i} checksummed");
            assert_eq!(u32::from_be_bytes([s[24], s[25], s[26], s[27]]), seq);
            seq += want as u32;
        }
        assert_eq!(from.counters.super_drops.load(Relaxed), 0);
    }

    #[test]
    fn relay_passes_super_packets_whole_to_a_link_that_takes_them() {
        let (data, from, to) = two_links(true, true);
        let mut rx = data.rx();
        let p = super_msg(1000, &tcp4(3500));
        let ptr = p.buf.as_ptr();
        data.deliver(&from, p, &mut rx);
        let got = to.take();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].gso_size(), Some(1000));
        assert_eq!(
            got[0].clone().into_tagged(&mut BytesMut::new()).as_ptr(),
            ptr
        );
    }

    #[test]
    fn malformed_super_packets_are_dropped_and_counted() {
        let (data, from, to) = two_links(true, false);
        let mut rx = data.rx();
        let mut short = tcp4(3000);
        short.truncate(2000); // IP total length says 3040
        let mut bad_ihl = tcp4(3000);
        bad_ihl[0] = 0x43;
        for p in [
            super_msg(0, &tcp4(3000)),
            super_msg(1000, &short),
            super_msg(1000, &bad_ihl),
            super_msg(1000, &tcp4(3000)[..30]),
        ] {
            data.deliver(&from, p, &mut rx);
        }
        assert!(to.take().is_empty(), "nothing malformed goes on");
        assert_eq!(from.counters.super_drops.load(Relaxed), 4);
        assert_eq!(from.counters.drops.load(Relaxed), 4);
        let by: Vec<_> = data
            .stats
            .super_drops
            .snapshot()
            .filter(|(_, n)| *n > 0)
            .collect();
        assert!(by.contains(&("segment_size_zero", 1)), "{by:?}");
        assert_eq!(by.iter().map(|(_, n)| n).sum::<u64>(), 4, "{by:?}");
    }

    #[test]
    fn userspace_exit_gets_super_packets_cut() {
        let (data, from, _) = two_links(false, true);
        let exit = Keep::default();
        assert!(data.set_terminus(Arc::new(exit.clone())));
        let mut rx = data.rx();
        data.deliver(&from, super_msg(1200, &tcp4(6000)), &mut rx);
        data.flush(&mut rx);
        let segs = exit.take();
        assert_eq!(segs.len(), 5);
        assert!(segs.iter().all(|s| s.len() == 1240 && tcp4_valid(s)));
    }

    #[test]
    fn headroom_is_used_not_copied() {
        let framed = Bytes::from_static(&[WS_TAG_PACKET, 0x45, 1, 2]);
        let p = Packet::tagged(framed.clone());
        assert_eq!(&p[..], &[0x45, 1, 2]);
        // Over WebSocket: the very same buffer.
        let mut arena = BytesMut::new();
        assert_eq!(p.clone().into_tagged(&mut arena).as_ptr(), framed.as_ptr());
        // Over QUIC: a slice of it.
        assert_eq!(p.into_bytes().as_ptr(), framed[1..].as_ptr());
        // A bare packet gains its tag by a copy into the arena...
        let bare = Packet::plain(Bytes::from_static(&[0x45, 9]));
        assert_eq!(&bare[..], &[0x45, 9]);
        let first = bare.clone().into_tagged(&mut arena);
        assert_eq!(&first[..], &[WS_TAG_PACKET, 0x45, 9]);
        // ...where the next one follows it in the same allocation...
        let second = bare.clone().into_tagged(&mut arena);
        assert_eq!(second.as_ptr(), first[first.len()..].as_ptr());
        // ...and once both are written (dropped) the space is reused.
        let base = first.as_ptr();
        drop((first, second));
        let mut n = 0;
        while arena.capacity() >= 3 {
            drop(bare.clone().into_tagged(&mut arena));
            n += 1;
        }
        assert!(n > 1000, "{n} packets fit one arena");
        let again = bare.into_tagged(&mut arena);
        assert_eq!(again.as_ptr(), base, "reclaimed in place, not reallocated");
    }
}
