//! The engine: one task that owns the smoltcp interface, every flow table and
//! the accounting. Packets from peers arrive on a bounded queue; per-flow
//! tasks report through an event channel (one message per flow lifetime at
//! most, so its length is bounded by the flow limits) and wake the engine
//! with a `Notify` when they moved data.

use super::limits::{proto_index, Limits, Refusal, Usage};
use super::packet::{self, FlowKey, Kind, Parsed, Unreachable};
use super::{icmp, tcp, udp, Stats};
use crate::datapath::{DataPath, Packet, ARENA};
use anyhow::Result;
use bytes::{BufMut, Bytes, BytesMut};
use sapper_control::LinkId;
use sapper_shared::config::ExitConfig;
use sapper_shared::egress::{Proto, Verdict};
use sapper_shared::framing::WS_TAG_PACKET;
use smoltcp::iface::{Config, Interface, SocketSet};
use smoltcp::phy::{Device, DeviceCapabilities, Medium, RxToken, TxToken};
use smoltcp::wire::{HardwareAddress, IpAddress, IpCidr, Ipv4Address, Ipv6Address};
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, Notify};
use tokio_util::sync::CancellationToken;

/// Inbound packets taken per loop turn before the flows get attention.
const BATCH: usize = 256;
/// Packets smoltcp may emit per poll before the device pushes back.
const TX_QUEUE: usize = 4096;
/// Remembered denied flows (for logging once per flow).
const DENIED_CACHE: usize = 4096;
/// How long a denied flow stays remembered.
const DENIED_TTL: Duration = Duration::from_secs(120);
/// The interface's own addresses: documentation prefixes no real
/// destination uses; "any IP" mode accepts every other address too.
const OWN_V4: Ipv4Address = Ipv4Address::new(192, 0, 2, 1);
const OWN_V6: Ipv6Address = Ipv6Address::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1);

/// What per-flow tasks tell the engine.
pub enum Event {
    /// A TCP connect finished.
    Connected {
        key: FlowKey,
        gen: u64,
        result: std::io::Result<tokio::net::TcpStream>,
    },
    /// A UDP or ICMP flow's task ended (idle, error, shutdown).
    DgramClosed { key: FlowKey, gen: u64 },
}

/// What per-flow tasks share with the engine.
pub struct Ctx {
    /// Where the exit's answers go: the links, through the data path.
    pub sink: Arc<DataPath>,
    pub shutdown: CancellationToken,
    pub events: mpsc::UnboundedSender<Event>,
    pub notify: Arc<Notify>,
    pub stats: Arc<Stats>,
}

impl Ctx {
    /// Sends a packet the exit originated to peer `peer`, or wherever the
    /// routing table says if that peer is gone (it may have reconnected).
    pub fn send_to_peer(&self, peer: u64, pkt: Vec<u8>) {
        self.send_packet_to_peer(peer, Packet::plain(Bytes::from(pkt)));
    }

    /// As [`Ctx::send_to_peer`], for a packet already on the data path's terms.
    pub fn send_packet_to_peer(&self, peer: u64, pkt: Packet) {
        if !self.sink.send_to(Some(LinkId(peer)), pkt) {
            self.stats.dropped.fetch_add(1, Relaxed);
        }
    }
}

/// smoltcp's view of the tunnel: a queue in, a queue out.
pub struct QueueDevice {
    pub(super) rx: VecDeque<Bytes>,
    /// Packets smoltcp emitted, each behind a WebSocket packet tag.
    pub(super) tx: Vec<Bytes>,
    arena: BytesMut,
}

pub struct Rx(Bytes);
/// A transmit slot: packets are written into one shared arena with a byte of
/// headroom for the WebSocket packet tag, so that in the steady state
/// neither building nor forwarding them allocates.
pub struct Tx<'a> {
    queue: &'a mut Vec<Bytes>,
    arena: &'a mut BytesMut,
}

impl RxToken for Rx {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(&self.0)
    }
}

impl TxToken for Tx<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        if self.arena.capacity() < 1 + len {
            // Reclaimed in place once the packets cut from it were sent.
            self.arena.reserve(ARENA.max(1 + len));
        }
        self.arena.put_u8(WS_TAG_PACKET);
        self.arena.resize(1 + len, 0);
        let r = f(&mut self.arena[1..]);
        self.queue.push(self.arena.split().freeze());
        r
    }
}

impl Device for QueueDevice {
    type RxToken<'a> = Rx;
    type TxToken<'a> = Tx<'a>;

    fn receive(
        &mut self,
        _t: smoltcp::time::Instant,
    ) -> Option<(Self::RxToken<'_>, Self::TxToken<'_>)> {
        let p = self.rx.pop_front()?;
        Some((
            Rx(p),
            Tx {
                queue: &mut self.tx,
                arena: &mut self.arena,
            },
        ))
    }

    fn transmit(&mut self, _t: smoltcp::time::Instant) -> Option<Self::TxToken<'_>> {
        if self.tx.len() < TX_QUEUE {
            Some(Tx {
                queue: &mut self.tx,
                arena: &mut self.arena,
            })
        } else {
            None
        }
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut c = DeviceCapabilities::default();
        c.medium = Medium::Ip;
        // The entry's MSS decides segment sizes; this only caps them.
        c.max_transmission_unit = sapper_shared::routing::MAX_IP_PACKET;
        c
    }
}

/// A UDP or ICMP flow as the engine sees it.
pub struct DgramFlow {
    pub gen: u64,
    pub peer: u64,
    pub cost: u64,
    pub tx: mpsc::Sender<Bytes>,
    /// Bytes queued toward the flow's socket.
    pub queued: Arc<AtomicUsize>,
}

/// What happened to a datagram offered to a flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offer {
    Queued,
    /// Over the flow's byte or count bound: dropped.
    Full,
    /// The flow's task has ended.
    Closed,
}

impl DgramFlow {
    /// A new flow record and the receiving end of its bounded queue
    /// (`depth` datagrams) for the flow's socket task.
    pub fn new(gen: u64, peer: u64, cost: u64, depth: usize) -> (Self, mpsc::Receiver<Bytes>) {
        let (tx, rx) = mpsc::channel(depth);
        let flow = DgramFlow {
            gen,
            peer,
            cost,
            tx,
            queued: Arc::new(AtomicUsize::new(0)),
        };
        (flow, rx)
    }

    /// Queues `d` toward the flow's socket if its bounds allow.
    pub fn offer(&self, d: Bytes, max_bytes: usize) -> Offer {
        let len = d.len();
        if self.queued.load(Relaxed) + len > max_bytes {
            return if self.tx.is_closed() {
                Offer::Closed
            } else {
                Offer::Full
            };
        }
        self.queued.fetch_add(len, Relaxed);
        match self.tx.try_send(d) {
            Ok(()) => Offer::Queued,
            Err(err) => {
                self.queued.fetch_sub(len, Relaxed);
                match err {
                    mpsc::error::TrySendError::Full(_) => Offer::Full,
                    mpsc::error::TrySendError::Closed(_) => Offer::Closed,
                }
            }
        }
    }
}

pub struct Engine {
    pub(super) ctx: Arc<Ctx>,
    pub(super) cfg: ExitConfig,
    /// New `[netd.exit]` from a reload.
    configs: tokio::sync::watch::Receiver<ExitConfig>,
    pub(super) limits: Limits,
    pub(super) usage: Usage,
    inbound: mpsc::Receiver<(u64, Bytes)>,
    queued: Arc<AtomicUsize>,
    events: mpsc::UnboundedReceiver<Event>,
    pub(super) iface: Interface,
    pub(super) device: QueueDevice,
    pub(super) sockets: SocketSet<'static>,
    clock: Instant,
    pub(super) tcp: HashMap<FlowKey, tcp::TcpFlow>,
    pub(super) udp: HashMap<FlowKey, DgramFlow>,
    pub(super) icmp: HashMap<FlowKey, DgramFlow>,
    denied: HashMap<FlowKey, Instant>,
    per_peer: HashMap<u64, [u32; 3]>,
    per_peer_dirty: bool,
    next_gen: u64,
    pub(super) icmp_warned: bool,
}

impl Engine {
    pub fn new(
        sink: Arc<DataPath>,
        shutdown: CancellationToken,
        mut configs: tokio::sync::watch::Receiver<ExitConfig>,
        stats: Arc<Stats>,
        inbound: mpsc::Receiver<(u64, Bytes)>,
        queued: Arc<AtomicUsize>,
    ) -> Result<Engine> {
        let cfg = configs.borrow_and_update().clone();
        let (etx, erx) = mpsc::unbounded_channel();
        let ctx = Arc::new(Ctx {
            sink,
            shutdown,
            events: etx,
            notify: Arc::new(Notify::new()),
            stats,
        });
        let mut device = QueueDevice {
            rx: VecDeque::new(),
            tx: Vec::new(),
            arena: BytesMut::new(),
        };
        let mut config = Config::new(HardwareAddress::Ip);
        let mut seed = [0u8; 8];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut seed)
            .map_err(|_| anyhow::anyhow!("no randomness for TCP sequence numbers"))?;
        config.random_seed = u64::from_le_bytes(seed);
        let clock = Instant::now();
        let mut iface = Interface::new(config, &mut device, smoltcp::time::Instant::ZERO);
        iface.update_ip_addrs(|a| {
            let _ = a.push(IpCidr::new(IpAddress::Ipv4(OWN_V4), 32));
            let _ = a.push(IpCidr::new(IpAddress::Ipv6(OWN_V6), 128));
        });
        iface
            .routes_mut()
            .add_default_ipv4_route(OWN_V4)
            .map_err(|_| anyhow::anyhow!("smoltcp route table full"))?;
        iface
            .routes_mut()
            .add_default_ipv6_route(OWN_V6)
            .map_err(|_| anyhow::anyhow!("smoltcp route table full"))?;
        iface.set_any_ip(true);
        Ok(Engine {
            limits: Limits::from_config(&cfg),
            ctx,
            cfg,
            configs,
            usage: Usage::default(),
            inbound,
            queued,
            events: erx,
            iface,
            device,
            sockets: SocketSet::new(Vec::new()),
            clock,
            tcp: HashMap::new(),
            udp: HashMap::new(),
            icmp: HashMap::new(),
            denied: HashMap::new(),
            per_peer: HashMap::new(),
            per_peer_dirty: false,
            next_gen: 1,
            icmp_warned: false,
        })
    }

    pub(super) fn now(&self) -> smoltcp::time::Instant {
        smoltcp::time::Instant::from_micros(self.clock.elapsed().as_micros() as i64)
    }

    pub(super) fn gen(&mut self) -> u64 {
        self.next_gen += 1;
        self.next_gen
    }

    pub async fn run(mut self) {
        let shutdown = self.ctx.shutdown.clone();
        let notify = self.ctx.notify.clone();
        loop {
            // Flow tasks' news first: a connect that finished is answered
            // before new packets are looked at.
            while let Ok(ev) = self.events.try_recv() {
                self.on_event(ev);
            }
            let mut taken = 0;
            while taken < BATCH {
                match self.inbound.try_recv() {
                    Ok((peer, pkt)) => {
                        self.queued.fetch_sub(pkt.len(), Relaxed);
                        self.ingest(peer, pkt);
                        taken += 1;
                    }
                    Err(mpsc::error::TryRecvError::Empty) => break,
                    Err(mpsc::error::TryRecvError::Disconnected) => return,
                }
            }
            self.turn();
            if taken == BATCH {
                tokio::task::yield_now().await;
                continue;
            }
            let now = self.now();
            let delay = self
                .iface
                .poll_delay(now, &self.sockets)
                .map(|d| Duration::from_micros(d.total_micros()))
                .unwrap_or(Duration::from_secs(60));
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                ev = self.events.recv() => if let Some(ev) = ev { self.on_event(ev) },
                p = self.inbound.recv() => match p {
                    Some((peer, pkt)) => {
                        self.queued.fetch_sub(pkt.len(), Relaxed);
                        self.ingest(peer, pkt);
                    }
                    None => break,
                },
                _ = notify.notified() => {}
                Ok(()) = self.configs.changed() => {
                    let cfg = self.configs.borrow_and_update().clone();
                    self.reconfigure(cfg);
                }
                _ = tokio::time::sleep(delay) => {}
            }
        }
        self.shutdown_all();
    }

    /// A reload's `[netd.exit]`: new limits for new flows. What open flows
    /// hold stays counted (each gives back the cost it was admitted with),
    /// so a lower limit refuses new flows until enough have closed. The
    /// cache of denied flows is dropped: the policy may allow them now.
    fn reconfigure(&mut self, cfg: ExitConfig) {
        self.limits = Limits::from_config(&cfg);
        self.ctx
            .stats
            .max_buffer_bytes
            .store(cfg.buffers.total_bytes(), Relaxed);
        self.denied.clear();
        tracing::info!(
            max_tcp_flows = self.limits.max_flows[0],
            max_udp_flows = self.limits.max_flows[1],
            max_icmp_flows = self.limits.max_flows[2],
            max_buffer_bytes = cfg.buffers.total_bytes(),
            deny_local = cfg.deny_local,
            "reload: userspace exit limits and policy applied to new flows"
        );
        self.cfg = cfg;
    }

    /// One round of smoltcp processing and data movement.
    fn turn(&mut self) {
        let now = self.now();
        self.iface.poll(now, &mut self.device, &mut self.sockets);
        tcp::pump_all(self);
        let now = self.now();
        self.iface.poll(now, &mut self.device, &mut self.sockets);
        tcp::reap(self);
        self.flush_tx();
        self.publish();
    }

    /// Sends what smoltcp emitted to the link that owns its destination.
    /// The data path admitted the flow's packets only from the link that
    /// owns their source (allowed sources, no two links overlapping), so
    /// the forwarding table's owner of a reply's destination is the link
    /// that opened the flow: no "last sender wins" table to poison. This is
    /// also why flows are keyed by the 5-tuple alone: the source names one
    /// peer, so the key is (peer, 5-tuple) without a smoltcp interface per
    /// link (one interface tells sockets apart by their endpoints only).
    pub(super) fn flush_tx(&mut self) {
        // Drained in place: the queue's own allocation is kept for the next round.
        for pkt in self.device.tx.drain(..) {
            let pkt = Packet::tagged(pkt);
            if !self.ctx.sink.send_to(None, pkt) {
                self.ctx.stats.dropped.fetch_add(1, Relaxed);
            }
        }
    }

    /// Sends a packet the engine built (RST, ICMP error) to `peer`.
    pub(super) fn reply(&mut self, peer: u64, pkt: Option<Vec<u8>>) {
        let Some(pkt) = pkt else { return };
        if !self
            .ctx
            .sink
            .send_to(Some(LinkId(peer)), Packet::plain(Bytes::from(pkt)))
        {
            self.ctx.stats.dropped.fetch_add(1, Relaxed);
        }
    }

    fn ingest(&mut self, peer: u64, pkt: Bytes) {
        let Some(parsed) = packet::parse(&pkt) else {
            self.ctx.stats.dropped.fetch_add(1, Relaxed);
            return;
        };
        match parsed.kind {
            Kind::Tcp { .. } => self.tcp_packet(peer, &parsed, &pkt),
            Kind::Udp { payload, .. } => {
                let Some(key) = parsed.key() else { return };
                // A slice of the packet's own buffer, not a copy.
                let payload = pkt.slice_ref(payload);
                udp::packet(self, peer, key, payload, &pkt);
            }
            Kind::Echo { .. } => {
                let Some(key) = parsed.key() else { return };
                icmp::packet(self, peer, key, &parsed, &pkt);
            }
            Kind::Fragment | Kind::Other(_) => {
                self.ctx.stats.dropped.fetch_add(1, Relaxed);
            }
        }
    }

    fn tcp_packet(&mut self, peer: u64, parsed: &Parsed<'_>, pkt: &Bytes) {
        let Kind::Tcp { syn, ack, rst, .. } = parsed.kind else {
            return;
        };
        let Some(key) = parsed.key() else { return };
        if let Some(flow) = self.tcp.get_mut(&key) {
            match &mut flow.state {
                tcp::State::Connecting { syn: held, .. } => {
                    if rst {
                        self.close_tcp(&key, true);
                    } else if syn && !ack {
                        // A retransmitted SYN: answer the latest one.
                        *held = pkt.clone();
                    }
                }
                tcp::State::Active(_) => self.device.rx.push_back(pkt.clone()),
            }
            return;
        }
        if !syn || ack {
            // No flow: smoltcp answers with a RST (and ignores RSTs).
            if !rst {
                self.device.rx.push_back(pkt.clone());
            }
            return;
        }
        if !self.admit(peer, key, pkt) {
            return;
        }
        tcp::start_connect(self, peer, key, pkt.clone());
    }

    /// Policy and limits for a new flow. On refusal answers the entry (RST
    /// or ICMP), counts and logs once per flow, and returns false.
    pub(super) fn admit(&mut self, peer: u64, key: FlowKey, pkt: &[u8]) -> bool {
        let mut verdict = self
            .cfg
            .policy
            .check(key.proto, key.dst.ip(), key.dst.port());
        if verdict == Verdict::Allow && self.cfg.deny_local && is_this_host(key.dst.ip()) {
            verdict = Verdict::DenyLocal;
        }
        let refusal = match verdict {
            Verdict::Allow => None,
            v => Some(v),
        };
        if let Some(v) = refusal {
            self.ctx.stats.denied_packets.fetch_add(1, Relaxed);
            if self.first_denial(key) {
                self.ctx.stats.denied_flows.fetch_add(1, Relaxed);
                let why = match v {
                    Verdict::DenyRule(i) => match self.cfg.policy.deny_rules().get(i) {
                        Some(r) => format!("deny rule {i} ({r})"),
                        None => format!("deny rule {i}"),
                    },
                    Verdict::DenyLocal => "local destination (netd.exit.deny_local)".into(),
                    Verdict::NotAllowed => "not in netd.exit.allow".into(),
                    Verdict::Allow => String::new(),
                };
                tracing::warn!(flow = %key, reason = %why, "userspace exit: egress denied");
            }
            self.refuse(peer, key.proto, pkt);
            return false;
        }
        // The per-peer quota beside the global limits.
        let i = proto_index(key.proto);
        let quota = self
            .limits
            .per_peer(i, self.cfg.max_flows_per_peer.map(|n| n.as_u32()));
        if quota < self.limits.max_flows[i]
            && self.per_peer.get(&peer).map(|c| c[i]).unwrap_or(0) >= quota
        {
            self.ctx.stats.refused_limit.fetch_add(1, Relaxed);
            if self.first_denial(key) {
                tracing::warn!(flow = %key, quota, "userspace exit: new flow refused by the per-peer quota (netd.exit.max_flows_per_peer)");
            }
            self.refuse(peer, key.proto, pkt);
            return false;
        }
        let cost = self.limits.cost(key.proto);
        if let Err(r) = self.usage.admit(&self.limits, key.proto, cost) {
            self.ctx.stats.refused_limit.fetch_add(1, Relaxed);
            if self.first_denial(key) {
                tracing::warn!(flow = %key, limit = %r, "userspace exit: new flow refused by a limit");
            }
            let _: Refusal = r;
            self.refuse(peer, key.proto, pkt);
            return false;
        }
        self.sync_usage();
        true
    }

    fn refuse(&mut self, peer: u64, proto: Proto, pkt: &[u8]) {
        let answer = match proto {
            Proto::Tcp => packet::tcp_rst(pkt),
            Proto::Udp | Proto::Icmp => packet::unreachable(pkt, Unreachable::Prohibited),
        };
        self.reply(peer, answer);
    }

    /// True the first time `key` is refused within [`DENIED_TTL`].
    fn first_denial(&mut self, key: FlowKey) -> bool {
        let now = Instant::now();
        if let Some(t) = self.denied.get(&key) {
            if now.duration_since(*t) < DENIED_TTL {
                return false;
            }
        }
        if self.denied.len() >= DENIED_CACHE {
            self.denied
                .retain(|_, t| now.duration_since(*t) < DENIED_TTL);
            if self.denied.len() >= DENIED_CACHE {
                self.denied.clear();
            }
        }
        self.denied.insert(key, now);
        true
    }

    /// Undoes an admit whose flow could not be created after all.
    pub(super) fn unadmit(&mut self, proto: Proto, cost: u64) {
        self.usage.release(proto, cost);
        self.sync_usage();
    }

    /// Records a new flow of `proto` for `peer` (after a successful admit).
    pub(super) fn flow_opened(&mut self, peer: u64, proto: Proto) {
        let s = &self.ctx.stats;
        match proto {
            Proto::Tcp => s.tcp_total.fetch_add(1, Relaxed),
            Proto::Udp => s.udp_total.fetch_add(1, Relaxed),
            Proto::Icmp => s.icmp_total.fetch_add(1, Relaxed),
        };
        self.per_peer.entry(peer).or_default()[proto_index(proto)] += 1;
        self.per_peer_dirty = true;
        self.sync_usage();
    }

    /// Gives back a flow's share (exactly once per admitted flow).
    /// Hands a datagram to the existing UDP or ICMP flow for `key`. Returns
    /// true when that settled it (queued, or dropped because the flow's queue
    /// is full); false when there is no live flow and the caller opens one.
    /// A flow whose task already ended (idle) is retired here.
    pub(super) fn offer_to_flow(
        &mut self,
        proto: Proto,
        key: &FlowKey,
        msg: Bytes,
        cap: usize,
    ) -> bool {
        let table = match proto {
            Proto::Udp => &mut self.udp,
            Proto::Icmp => &mut self.icmp,
            Proto::Tcp => return false,
        };
        let Some(f) = table.get(key) else {
            return false;
        };
        match f.offer(msg, cap) {
            Offer::Queued => true,
            Offer::Full => {
                self.ctx.stats.dropped.fetch_add(1, Relaxed);
                true
            }
            Offer::Closed => {
                if let Some(f) = table.remove(key) {
                    self.flow_closed(f.peer, proto, f.cost);
                }
                false
            }
        }
    }

    pub(super) fn flow_closed(&mut self, peer: u64, proto: Proto, cost: u64) {
        self.usage.release(proto, cost);
        if let Some(c) = self.per_peer.get_mut(&peer) {
            let i = proto_index(proto);
            c[i] = c[i].saturating_sub(1);
            if *c == [0; 3] {
                self.per_peer.remove(&peer);
            }
        }
        self.per_peer_dirty = true;
        self.sync_usage();
    }

    fn sync_usage(&self) {
        let s = &self.ctx.stats;
        s.tcp_flows
            .store(u64::from(self.usage.flows(Proto::Tcp)), Relaxed);
        s.udp_flows
            .store(u64::from(self.usage.flows(Proto::Udp)), Relaxed);
        s.icmp_flows
            .store(u64::from(self.usage.flows(Proto::Icmp)), Relaxed);
        s.buffer_bytes.store(self.usage.bytes(), Relaxed);
    }

    fn publish(&mut self) {
        if !self.per_peer_dirty {
            return;
        }
        self.per_peer_dirty = false;
        if let Ok(mut m) = self.ctx.stats.per_peer.lock() {
            m.clone_from(&self.per_peer);
        }
    }

    fn on_event(&mut self, ev: Event) {
        match ev {
            Event::Connected { key, gen, result } => tcp::connected(self, key, gen, result),
            Event::DgramClosed { key, gen } => {
                let table = match key.proto {
                    Proto::Udp => &mut self.udp,
                    _ => &mut self.icmp,
                };
                if table.get(&key).is_some_and(|f| f.gen == gen) {
                    if let Some(f) = table.remove(&key) {
                        self.flow_closed(f.peer, key.proto, f.cost);
                    }
                }
            }
        }
    }

    pub(super) fn close_tcp(&mut self, key: &FlowKey, abort: bool) {
        if let Some(flow) = self.tcp.remove(key) {
            let (peer, cost) = (flow.peer, flow.cost);
            flow.finish(&mut self.sockets, abort);
            self.flow_closed(peer, Proto::Tcp, cost);
        }
    }

    fn shutdown_all(&mut self) {
        let keys: Vec<FlowKey> = self.tcp.keys().copied().collect();
        for k in keys {
            self.close_tcp(&k, true);
        }
        for (k, f) in std::mem::take(&mut self.udp) {
            self.flow_closed(f.peer, k.proto, f.cost);
        }
        for (k, f) in std::mem::take(&mut self.icmp) {
            self.flow_closed(f.peer, k.proto, f.cost);
        }
    }
}

/// Whether `dst` is one of this host's own addresses, as the kernel sees it
/// now: a UDP socket connected to it (no packet is sent) gets `dst` itself
/// as its source address only when the route is local. Asked per new flow,
/// so addresses added or removed later are covered too.
fn is_this_host(dst: std::net::IpAddr) -> bool {
    let dst = match dst {
        std::net::IpAddr::V6(v6) => v6.to_ipv4_mapped().map(std::net::IpAddr::V4).unwrap_or(dst),
        v4 => v4,
    };
    let any: std::net::SocketAddr = match dst {
        std::net::IpAddr::V4(_) => (std::net::Ipv4Addr::UNSPECIFIED, 0).into(),
        std::net::IpAddr::V6(_) => (std::net::Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let Ok(s) = std::net::UdpSocket::bind(any) else {
        // No socket: assume the worst for a local-deny check.
        return true;
    };
    match s.connect((dst, 9)) {
        Ok(()) => s.local_addr().is_ok_and(|l| l.ip() == dst),
        // Unreachable from here: not this host.
        Err(_) => false,
    }
}

#[cfg(test)]
mod host_tests {
    #[test]
    fn loopback_is_this_host_and_documentation_addresses_are_not() {
        assert!(super::is_this_host("127.0.0.1".parse().unwrap()));
        assert!(super::is_this_host("::ffff:127.0.0.1".parse().unwrap()));
        assert!(!super::is_this_host("192.0.2.1".parse().unwrap()));
    }
}
