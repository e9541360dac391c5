//! The node: its identity, its TUN, the registry of connected peers and the
//! routes they announced. Transports register peers here after a verified
//! handshake and hand every received packet to `deliver`.

use crate::tun::Tun;
use bytes::Bytes;
use ipnet::IpNet;
use sapper_shared::config::{NetdConfig, Transport};
use sapper_shared::latency::Latency;
use sapper_shared::posture::Posture;
use sapper_shared::proto::control::ControlMessage;
use sapper_shared::proto::data::{Capabilities, Handshake, NodeRole, RoleHint};
use sapper_shared::proto::management::{self as mgmt, event, Event, PeerInfo};
use sapper_shared::psk::Psk;
use sapper_shared::routing::{self, RouteTable};
use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio_util::sync::CancellationToken;

pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

pub fn role_str(r: NodeRole) -> &'static str {
    match r {
        NodeRole::RoleIndeterminate => "indeterminate",
        NodeRole::RoleEntry => "entry",
        NodeRole::RoleRelay => "relay",
        NodeRole::RoleExit => "exit",
    }
}

#[derive(Default)]
pub struct Counters {
    pub bytes_in: AtomicU64,
    pub bytes_out: AtomicU64,
    pub packets_in: AtomicU64,
    pub packets_out: AtomicU64,
    pub drops: AtomicU64,
}

/// How packets reach one peer.
pub enum PacketPath {
    /// QUIC: datagrams, with a stream for packets over the datagram limit.
    Quic {
        conn: quinn::Connection,
        big: mpsc::Sender<Bytes>,
    },
    /// WebSocket: a bounded queue to the writer task.
    Ws { tx: mpsc::Sender<Bytes> },
}

pub struct Peer {
    pub id: u64,
    pub handshake: Handshake,
    pub routes: Vec<IpNet>,
    pub address: SocketAddr,
    pub transport: Transport,
    pub outbound: bool,
    pub connected_at: u64,
    pub counters: Counters,
    pub latency: Mutex<Latency>,
    pub control: mpsc::Sender<ControlMessage>,
    pub path: PacketPath,
    /// Cancelled to close this link (operator, shutdown, dead peer).
    pub close: CancellationToken,
    /// Operator pings waiting for their pong, by timestamp.
    pub ping_waiters: Mutex<HashMap<u64, oneshot::Sender<()>>>,
    /// What negotiation decided for this link.
    pub link: Mutex<LinkState>,
    /// What the link's TLS handshake negotiated.
    pub tls: crate::tls::Negotiated,
}

/// The negotiated state of one link.
#[derive(Debug, Clone)]
pub struct LinkState {
    /// Our role on this link.
    pub local: NodeRole,
    /// The peer's role on this link.
    pub peer: NodeRole,
    /// Why, for operators.
    pub reason: String,
    /// The peer's latest hint (Handshake, then RoleTransitions).
    pub peer_hint: Option<RoleHint>,
}

/// This node's role and why.
#[derive(Debug, Clone)]
pub struct RoleState {
    pub role: NodeRole,
    pub reason: String,
    pub hint: Option<RoleHint>,
}

/// Most operator pings in flight per peer.
pub const MAX_PING_WAITERS: usize = 16;

impl Peer {
    /// A peer that passed the handshake on a new link.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        node: &Node,
        accepted: sapper_shared::handshake::Accepted,
        tls: crate::tls::Negotiated,
        address: SocketAddr,
        transport: Transport,
        outbound: bool,
        control: mpsc::Sender<ControlMessage>,
        path: PacketPath,
    ) -> Self {
        let peer_hint = accepted.peer.hint;
        Self {
            id: node.next_peer_id(),
            handshake: accepted.peer,
            routes: accepted.routes,
            address,
            transport,
            outbound,
            connected_at: unix_ms(),
            counters: Counters::default(),
            latency: Mutex::new(Latency::new(node.cfg.ping_miss_limit as usize)),
            control,
            path,
            close: CancellationToken::new(),
            link: Mutex::new(LinkState {
                local: NodeRole::RoleIndeterminate,
                peer: NodeRole::RoleIndeterminate,
                reason: "not negotiated yet".into(),
                peer_hint,
            }),
            ping_waiters: Mutex::new(HashMap::new()),
            tls,
        }
    }

    /// Tells the peer why we are closing (best effort), then closes after a
    /// moment so the message can leave first.
    pub fn disconnect(self: &Arc<Self>, reason: &str) {
        let msg = ControlMessage {
            body: Some(
                sapper_shared::proto::control::control_message::Body::Disconnect(
                    sapper_shared::proto::control::Disconnect {
                        reason: reason.to_string(),
                    },
                ),
            ),
        };
        let _ = self.control.try_send(msg);
        let me = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            me.close.cancel();
        });
    }

    /// True when negotiation gave this link a forwarding role.
    pub fn active(&self) -> bool {
        self.link
            .lock()
            .map(|l| l.local != NodeRole::RoleIndeterminate)
            .unwrap_or(false)
    }

    pub fn role(&self) -> NodeRole {
        self.link
            .lock()
            .map(|l| l.peer)
            .unwrap_or(NodeRole::RoleIndeterminate)
    }

    /// Queues one packet to the peer; never waits. A full queue drops the
    /// packet as a congested router would.
    pub fn send_packet(&self, pkt: Bytes) {
        let len = pkt.len() as u64;
        let ok = match &self.path {
            PacketPath::Quic { conn, big } => match conn.max_datagram_size() {
                Some(max) if pkt.len() <= max => conn.send_datagram(pkt).is_ok(),
                _ => big.try_send(pkt).is_ok(),
            },
            PacketPath::Ws { tx } => tx.try_send(pkt).is_ok(),
        };
        if ok {
            self.counters.packets_out.fetch_add(1, Relaxed);
            self.counters.bytes_out.fetch_add(len, Relaxed);
        } else {
            self.counters.drops.fetch_add(1, Relaxed);
        }
    }

    pub fn info(&self) -> PeerInfo {
        let c = &self.counters;
        PeerInfo {
            name: self.handshake.name.clone(),
            address: self.address.to_string(),
            transport: self.transport.as_str().into(),
            capabilities: self.handshake.capabilities,
            role: self.role() as i32,
            latency_ms: self.latency.lock().ok().and_then(|l| l.last_rtt_ms()),
            bytes_in: c.bytes_in.load(Relaxed),
            bytes_out: c.bytes_out.load(Relaxed),
            packets_in: c.packets_in.load(Relaxed),
            packets_out: c.packets_out.load(Relaxed),
            connected_at: self.connected_at / 1000,
            drops: c.drops.load(Relaxed),
            routes: self.handshake.routes.clone(),
            outbound: self.outbound,
            link_reason: self
                .link
                .lock()
                .map(|l| l.reason.clone())
                .unwrap_or_default(),
            exit_flows: None,
            tls: Some(mgmt::LinkTls {
                version: self.tls.version.clone(),
                cipher_suite: self.tls.cipher_suite.clone(),
                kx_group: self.tls.kx_group.clone(),
            }),
        }
    }
}

#[derive(Default)]
pub struct NodeStats {
    pub tun_in: AtomicU64,
    pub tun_out: AtomicU64,
    pub drops: AtomicU64,
    pub handshake_failures: AtomicU64,
}

pub struct Node {
    pub cfg: NetdConfig,
    pub identity: Arc<crate::tls::Identity>,
    /// Members of this group may change things over the management socket.
    pub operator_gid: Option<u32>,
    pub name: String,
    pub posture: Posture,
    pub role_state: Mutex<RoleState>,
    pub psk: Option<Psk>,
    pub fingerprint: String,
    pub started: Instant,
    pub tun: Option<Arc<Tun>>,
    /// The userspace exit, on a node without a TUN (set once at start).
    pub exit: std::sync::OnceLock<Arc<crate::exit::UserspaceExit>>,
    pub listeners: Mutex<Vec<mgmt::ListenerInfo>>,
    pub stats: NodeStats,
    pub events: broadcast::Sender<Event>,
    pub shutdown: CancellationToken,
    peers: RwLock<HashMap<u64, Arc<Peer>>>,
    pub(crate) routes: RwLock<RouteTable<u64>>,
    /// The node each learned prefix comes from, for withdrawals.
    pub(crate) route_origin: Mutex<HashMap<IpNet, String>>,
    /// Prefixes privd installed on our TUN at our request.
    pub(crate) installed: Mutex<BTreeSet<IpNet>>,
    /// Wakes the route worker (announce::route_worker).
    pub(crate) route_sync: tokio::sync::Notify,
    next_id: AtomicU64,
}

impl Node {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        cfg: NetdConfig,
        identity: Arc<crate::tls::Identity>,
        operator_gid: Option<u32>,
        name: String,
        posture: Posture,
        psk: Option<Psk>,
        fingerprint: String,
        tun: Option<Arc<Tun>>,
    ) -> Self {
        Self {
            cfg,
            identity,
            operator_gid,
            name,
            role_state: Mutex::new(RoleState {
                role: NodeRole::RoleIndeterminate,
                reason: "no peers yet".into(),
                hint: posture.hint,
            }),
            posture,
            psk,
            fingerprint,
            started: Instant::now(),
            tun,
            exit: std::sync::OnceLock::new(),
            listeners: Mutex::new(Vec::new()),
            stats: NodeStats::default(),
            events: broadcast::channel(256).0,
            shutdown: CancellationToken::new(),
            peers: RwLock::new(HashMap::new()),
            routes: RwLock::new(RouteTable::default()),
            route_origin: Mutex::new(HashMap::new()),
            installed: Mutex::new(BTreeSet::new()),
            route_sync: tokio::sync::Notify::new(),
            next_id: AtomicU64::new(1),
        }
    }

    /// Milliseconds on the monotonic clock since start; used for pings.
    pub fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// Microseconds on the same clock; keepalive RTTs keep sub-ms precision.
    pub fn now_us(&self) -> u64 {
        self.started.elapsed().as_micros() as u64
    }

    pub fn capabilities(&self) -> Capabilities {
        Capabilities {
            tun_capable: self.tun.is_some(),
            listening: !self.cfg.listen.is_empty(),
            connecting: !self.cfg.connect.is_empty(),
        }
    }

    /// What we tell peers about ourselves.
    pub fn local_handshake(&self) -> Handshake {
        Handshake {
            capabilities: Some(self.capabilities()),
            name: self.name.clone(),
            version: sapper_shared::PROTOCOL_VERSION,
            psk_proof: vec![],
            routes: if self.posture.announce_routes {
                self.cfg
                    .announce_routes
                    .iter()
                    .map(|r| r.to_string())
                    .collect()
            } else {
                vec![]
            },
            hint: self.role_state.lock().ok().and_then(|s| s.hint),
            software: sapper_shared::SOFTWARE_VERSION.into(),
        }
    }

    /// Whether tunnel packets are forwarded at all: an Indeterminate node
    /// keeps its links and keepalives but moves no traffic.
    pub fn forwarding(&self) -> bool {
        self.role() != NodeRole::RoleIndeterminate
    }

    pub fn role(&self) -> NodeRole {
        self.role_state
            .lock()
            .map(|s| s.role)
            .unwrap_or(NodeRole::RoleIndeterminate)
    }

    pub fn next_peer_id(&self) -> u64 {
        self.next_id.fetch_add(1, Relaxed)
    }

    pub fn emit(&self, body: event::Body) {
        // No subscribers is fine.
        let _ = self.events.send(Event {
            timestamp_ms: unix_ms(),
            body: Some(body),
        });
    }

    pub fn register(&self, peer: Arc<Peer>) {
        if let Ok(mut peers) = self.peers.write() {
            peers.insert(peer.id, peer.clone());
        }
        self.renegotiate(false);
        self.learn_routes(&peer, &peer.routes, &peer.handshake.name);
        self.share_routes_with(&peer);
        self.emit(event::Body::PeerConnected(peer.info()));
    }

    pub fn unregister(&self, peer: &Peer, reason: &str) {
        self.forget_peer_routes(peer);
        let removed = self
            .peers
            .write()
            .map(|mut p| p.remove(&peer.id).is_some())
            .unwrap_or(false);
        if removed {
            self.renegotiate(false);
            self.emit(event::Body::PeerDisconnected(mgmt::PeerDisconnected {
                name: peer.handshake.name.clone(),
                reason: reason.into(),
            }));
        }
    }

    pub fn peers(&self) -> Vec<Arc<Peer>> {
        let mut v: Vec<_> = self
            .peers
            .read()
            .map(|p| p.values().cloned().collect())
            .unwrap_or_default();
        v.sort_by_key(|p| p.id);
        v
    }

    /// The connected peer with this id.
    pub fn peer_by_id(&self, id: u64) -> Option<Arc<Peer>> {
        self.peers.read().ok()?.get(&id).cloned()
    }

    pub fn routes(&self) -> Vec<(IpNet, String)> {
        let peers = self.peers.read();
        let Ok(peers) = peers else { return vec![] };
        self.routes
            .read()
            .map(|t| {
                t.iter()
                    .map(|(p, id)| {
                        let name = peers
                            .get(id)
                            .map(|p| p.handshake.name.clone())
                            .unwrap_or_default();
                        (*p, name)
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Picks the peer for a packet read from the TUN: the longest announced
    /// prefix, else the only peer when there is exactly one.
    pub fn peer_for(&self, packet: &[u8]) -> Option<Arc<Peer>> {
        self.next_hop(packet, None)
    }

    /// The peer a packet goes to, never back to `from`: the longest
    /// announced prefix among active links, else the only other active link.
    pub fn next_hop(&self, packet: &[u8], from: Option<u64>) -> Option<Arc<Peer>> {
        let peers = self.peers.read().ok()?;
        if let Some(dst) = routing::destination(packet) {
            if let Some(id) = self.routes.read().ok()?.lookup(dst) {
                if let Some(p) = peers.get(id) {
                    if Some(p.id) != from && p.active() {
                        return Some(p.clone());
                    }
                }
            }
        }
        let mut others = peers.values().filter(|p| Some(p.id) != from && p.active());
        match (others.next(), others.next()) {
            (Some(only), None) => Some(only.clone()),
            _ => None,
        }
    }

    /// A packet arrived from `peer`: hand it to the TUN.
    pub async fn deliver(&self, peer: &Peer, packet: &[u8]) {
        peer.counters.packets_in.fetch_add(1, Relaxed);
        peer.counters
            .bytes_in
            .fetch_add(packet.len() as u64, Relaxed);
        if !self.forwarding() || !peer.active() || routing::destination(packet).is_none() {
            peer.counters.drops.fetch_add(1, Relaxed);
            return;
        }
        if self.role() == NodeRole::RoleRelay {
            // A relay has no TUN of its own in the path: packets go on to
            // the neighbour on the other side.
            match self.next_hop(packet, Some(peer.id)) {
                Some(next) => next.send_packet(Bytes::copy_from_slice(packet)),
                None => {
                    self.stats.drops.fetch_add(1, Relaxed);
                }
            }
            return;
        }
        let Some(tun) = &self.tun else {
            // No TUN: the userspace exit realises the packet, if there is one.
            match self.exit.get() {
                Some(exit) => exit.handle(peer.id, packet),
                None => {
                    self.stats.drops.fetch_add(1, Relaxed);
                }
            }
            return;
        };
        match tun.write(packet).await {
            Ok(()) => {
                self.stats.tun_out.fetch_add(1, Relaxed);
            }
            Err(e) => {
                self.stats.drops.fetch_add(1, Relaxed);
                tracing::debug!(error = %e, "TUN write failed");
            }
        }
    }
}

/// Reads the TUN and sends each packet to its peer until shutdown.
pub async fn tun_reader(node: Arc<Node>) {
    let Some(tun) = node.tun.clone() else { return };
    let mut buf = vec![0u8; 65536];
    loop {
        let n = tokio::select! {
            _ = node.shutdown.cancelled() => return,
            r = tun.read(&mut buf) => match r {
                Ok(n) => n,
                Err(e) => {
                    tracing::error!(error = %e, "reading the TUN failed; stopping the data path");
                    node.emit(event::Body::Error(format!("TUN read failed: {e}")));
                    return;
                }
            },
        };
        node.stats.tun_in.fetch_add(1, Relaxed);
        let pkt = &buf[..n];
        if !node.forwarding() {
            node.stats.drops.fetch_add(1, Relaxed);
            continue;
        }
        match node.peer_for(pkt) {
            Some(peer) => peer.send_packet(Bytes::copy_from_slice(pkt)),
            None => {
                node.stats.drops.fetch_add(1, Relaxed);
            }
        }
    }
}
