//! The control core: see the crate documentation.

use crate::forwarding::Forwarding;
use crate::LinkId;
use ipnet::IpNet;
use sapper_shared::config::Transport;
use sapper_shared::handshake::Accepted;
use sapper_shared::latency::{pong_for, Latency};
use sapper_shared::peer_limits::PeerLimits;
use sapper_shared::posture::{self, Posture};
use sapper_shared::proto::control::{
    control_message::Body, ControlMessage, Disconnect, RoleTransition, RouteUpdate, RouteWithdraw,
};
use sapper_shared::proto::data::{Capabilities, Handshake, HintLevel, NodeRole, Ping, RoleHint};
use sapper_shared::proto::management::{
    event, ListenerInfo, PeerDisconnected, PeerInfo, RouteInfo,
};
use sapper_shared::rate::TokenBucket;
use sapper_shared::roles::{self, fixed_target, role_from_wire, role_name, Party};
use sapper_shared::routing::parse_prefixes;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

const INDET: NodeRole = NodeRole::RoleIndeterminate;

/// Most operator pings in flight per link.
pub const MAX_PINGS_PER_LINK: usize = 16;
/// How long an operator ping waits for its pong.
pub const OPERATOR_PING_TIMEOUT: Duration = Duration::from_secs(5);
/// Most listeners recorded for `status`.
pub const MAX_LISTENERS: usize = 64;

/// What the core is built from; parsed configuration only.
#[derive(Debug, Clone)]
pub struct CoreConfig {
    /// This node's name (node.name, or the host name).
    pub name: String,
    /// The posture resolved from the configuration.
    pub posture: Posture,
    /// What this node can do (TUN, listening, connecting).
    pub capabilities: Capabilities,
    /// netd.announce_routes.
    pub announce_routes: Vec<IpNet>,
    /// This node has a TUN and a privd that may install routes on it.
    pub installs_routes: bool,
    /// Keepalive interval.
    pub ping_interval: Duration,
    /// Keepalive pings unanswered before a link counts as dead.
    pub ping_miss_limit: u32,
    /// This node's own tunnel addresses: told to peers (they accept our
    /// packets from these), never accepted from a peer.
    pub addresses: Vec<std::net::IpAddr>,
    /// Networks an automatic route must never cover (the underlay: connect
    /// targets, the default gateway, the networks of the other interfaces).
    pub protected: Vec<IpNet>,
    /// Bounds on routes and control messages per peer (`[netd.limits]`).
    pub limits: PeerLimits,
}

/// What a reload may change in a running core (see
/// [`Core::handle_config`]); every other part of [`CoreConfig`] is fixed for
/// the life of the process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveConfig {
    /// netd.announce_routes.
    pub announce_routes: Vec<IpNet>,
    /// Whether this node announces them (not `node.no_announce_routes`).
    pub announce: bool,
    /// The configured hint (`[node.hint]` / `node.role`).
    pub hint: Option<RoleHint>,
    /// netd.ping_interval_ms.
    pub ping_interval: Duration,
    /// netd.ping_miss_limit.
    pub ping_miss_limit: u32,
}

impl CoreConfig {
    /// The part of this configuration a reload may change.
    pub fn live(&self) -> LiveConfig {
        LiveConfig {
            announce_routes: self.announce_routes.clone(),
            announce: self.posture.announce_routes,
            hint: self.posture.hint,
            ping_interval: self.ping_interval,
            ping_miss_limit: self.ping_miss_limit,
        }
    }

    /// What this node announces as its own routes.
    fn own_routes(&self) -> Vec<IpNet> {
        if self.posture.announce_routes {
            self.announce_routes.clone()
        } else {
            Vec::new()
        }
    }
}

/// Who opened a link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// The peer dialled us.
    Inbound,
    /// We dialled the peer.
    Outbound,
}

/// A link that passed the handshake.
#[derive(Debug, Clone)]
pub struct LinkUp {
    /// The peer's verified Handshake and its parsed routes.
    pub accepted: Accepted,
    /// The peer's underlay address.
    pub remote: SocketAddr,
    /// QUIC or WebSocket.
    pub transport: Transport,
    /// Who dialled.
    pub direction: Direction,
    /// Wall-clock seconds since the epoch, for `peers`.
    pub connected_at_unix_s: u64,
    /// The operator's restriction (`allowed_sources` of the connect or
    /// listen entry): prefixes and addresses from this link are accepted
    /// only inside these. `None`: no restriction beyond the rules.
    pub allowed_sources: Option<Vec<IpNet>>,
}

/// The core asks the driver to close a link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Close {
    /// Which link.
    pub link: LinkId,
    /// Why, for the log and `PeerDisconnected`.
    pub reason: String,
    /// A Disconnect was queued first: give it a moment to leave.
    pub graceful: bool,
}

/// What privd made of a [`RouteRequest`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteOutcome {
    /// Carried out.
    Granted,
    /// Refused (outside privd's allow-list, or not netd's route).
    Refused,
    /// privd could not be asked: nothing changed, tried again on the next
    /// change.
    Failed,
}

/// A route change for privd to carry out. Requests of one batch are
/// applied in order; the driver reports each with
/// [`Core::handle_route_result`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouteRequest {
    /// The prefix.
    pub prefix: IpNet,
    /// Add (true) or remove.
    pub add: bool,
}

/// What the core reports. `Management` events go to `subscribe` clients;
/// the others are for the daemon's log.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// For management subscribers (boxed: a peer's entry is large).
    Management(Box<event::Body>),
    /// This node's role changed.
    RoleChanged {
        /// The new role.
        role: NodeRole,
        /// Why.
        reason: String,
    },
    /// A neighbour announced a new role or hint.
    PeerRoleChanged {
        /// The link.
        link: LinkId,
        /// The neighbour's name.
        peer: String,
        /// The role it announced.
        role: NodeRole,
        /// Its reason.
        reason: String,
    },
    /// A link stopped answering keepalive pings.
    PeerDead {
        /// The link.
        link: LinkId,
        /// The neighbour's name.
        peer: String,
        /// Pings unanswered.
        missed: usize,
    },
    /// The neighbour said goodbye.
    PeerSaidGoodbye {
        /// The link.
        link: LinkId,
        /// The neighbour's name.
        peer: String,
        /// Its reason.
        reason: String,
    },
    /// Something worth a warning in the log.
    Warning {
        /// The link concerned, if any.
        link: Option<LinkId>,
        /// What happened.
        message: String,
    },
}

impl Event {
    fn management(body: event::Body) -> Event {
        Event::Management(Box::new(body))
    }
}

/// Why an operator request failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OperatorError {
    /// No link by that id or name.
    #[error("no peer named {0:?}")]
    NotFound(String),
    /// Several links match a name prefix.
    #[error("{count} peers match {prefix:?}")]
    Ambiguous {
        /// The prefix asked for.
        prefix: String,
        /// How many match.
        count: usize,
    },
    /// [`MAX_PINGS_PER_LINK`] pings already wait on this link.
    #[error("too many pings in flight")]
    TooManyPings,
}

/// How an operator ping ended.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum PingOutcome {
    /// Answered after this many milliseconds.
    Answered(f64),
    /// No pong within [`OPERATOR_PING_TIMEOUT`].
    TimedOut,
    /// The link went down first.
    LinkGone,
}

/// The answer to an operator ping, by the caller's token.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PingReply {
    /// The token the operator request carried.
    pub token: u64,
    /// The outcome.
    pub outcome: PingOutcome,
}

/// One link as the management socket shows it.
#[derive(Debug, Clone)]
pub struct LinkView {
    /// The link.
    pub id: LinkId,
    /// `peers` output without the data path's counters (they are zero).
    pub info: PeerInfo,
    /// This node's role on the link.
    pub local: NodeRole,
}

/// This node as `status` shows it.
#[derive(Debug, Clone)]
pub struct StatusView {
    /// This node's role.
    pub role: NodeRole,
    /// "role: reason [posture]".
    pub role_reason: String,
    /// Links up.
    pub peer_count: u32,
    /// Listeners started.
    pub listeners: Vec<ListenerInfo>,
}

struct PendingPing {
    token: u64,
    timestamp_ms: u64,
    sent: Instant,
}

/// One learned prefix: the link it came over, the node it originates at
/// (shared by every prefix of one update), and whether it is the peer's own
/// tunnel address (a source, never installed as a route here).
#[derive(Debug, Clone)]
struct Learned {
    link: LinkId,
    origin: Arc<str>,
    address: bool,
}

struct Link {
    up: LinkUp,
    /// Handshake routes waiting until the peer's role lets it originate.
    held: Vec<IpNet>,
    /// Prefixes this link owns.
    owned: usize,
    /// What this link announced that a twin link (same peer) owns: taken
    /// over when the twin goes down. Bounded like `owned`.
    standby: BTreeMap<IpNet, (Arc<str>, bool)>,
    /// The rate limit on the link's control messages.
    bucket: TokenBucket,
    control_drops: u64,
    routes_refused: u64,
    local: NodeRole,
    peer: NodeRole,
    reason: String,
    peer_hint: Option<RoleHint>,
    latency: Latency,
    next_ping: Instant,
    pings: Vec<PendingPing>,
    closing: bool,
}

impl Link {
    fn name(&self) -> &str {
        &self.up.accepted.peer.name
    }

    fn outbound(&self) -> bool {
        self.up.direction == Direction::Outbound
    }
}

/// The control plane of one node. See the crate documentation.
pub struct Core {
    cfg: CoreConfig,
    start: Instant,
    role: NodeRole,
    reason: String,
    hint: Option<RoleHint>,
    links: BTreeMap<LinkId, Link>,
    routes: BTreeMap<IpNet, Learned>,
    installed: BTreeSet<IpNet>,
    privd_outstanding: usize,
    privd_dirty: bool,
    listeners: Vec<ListenerInfo>,
    transmits: VecDeque<(LinkId, ControlMessage)>,
    privd: VecDeque<RouteRequest>,
    events: VecDeque<Event>,
    closes: VecDeque<Close>,
    replies: VecDeque<PingReply>,
    published: Option<Forwarding>,
    /// The host's underlay as last read (connected networks, gateways):
    /// protected like `cfg.protected`, and kept current by the driver.
    underlay: Vec<IpNet>,
}

fn msg(body: Body) -> ControlMessage {
    ControlMessage { body: Some(body) }
}

impl Core {
    /// A core whose clock starts at `now`.
    pub fn new(cfg: CoreConfig, now: Instant) -> Self {
        let hint = cfg.posture.hint;
        Self {
            cfg,
            start: now,
            role: INDET,
            reason: "no peers yet".into(),
            hint,
            links: BTreeMap::new(),
            routes: BTreeMap::new(),
            installed: BTreeSet::new(),
            privd_outstanding: 0,
            privd_dirty: false,
            listeners: Vec::new(),
            transmits: VecDeque::new(),
            privd: VecDeque::new(),
            events: VecDeque::new(),
            closes: VecDeque::new(),
            replies: VecDeque::new(),
            published: None,
            underlay: Vec::new(),
        }
        .settled()
    }

    fn settled(mut self) -> Self {
        self.renegotiate(false);
        self
    }

    fn now_us(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.start).as_micros() as u64
    }

    // ----- views -------------------------------------------------------

    /// This node's configuration.
    pub fn config(&self) -> &CoreConfig {
        &self.cfg
    }

    /// This node's role.
    pub fn role(&self) -> NodeRole {
        self.role
    }

    /// This node's current hint.
    pub fn hint(&self) -> Option<RoleHint> {
        self.hint
    }

    /// What we tell a new peer about ourselves (the proof is added by the
    /// handshake).
    pub fn local_handshake(&self) -> Handshake {
        Handshake {
            capabilities: Some(self.cfg.capabilities),
            name: self.cfg.name.clone(),
            version: sapper_shared::PROTOCOL_VERSION,
            psk_proof: vec![],
            routes: self
                .cfg
                .own_routes()
                .iter()
                .map(|r| r.to_string())
                .collect(),
            hint: self.hint,
            software: sapper_shared::SOFTWARE_VERSION.into(),
            addresses: self.cfg.addresses.iter().map(|a| a.to_string()).collect(),
        }
    }

    /// The posture in one line, for `status`.
    pub fn posture_summary(&self) -> String {
        let p = &self.cfg.posture;
        format!(
            "{} posture, negotiation {}, routes {}{}",
            if p.secure {
                "secure"
            } else {
                "open (insecure)"
            },
            if p.auto_negotiate { "automatic" } else { "off" },
            if p.auto_routes { "automatic" } else { "manual" },
            posture::fixed_role(p)
                .map(|r| format!(", fixed role {}", role_name(r)))
                .unwrap_or_default()
        )
    }

    /// `status`, less what the daemon adds (TUN, exit, uptime).
    pub fn status(&self) -> StatusView {
        StatusView {
            role: self.role,
            role_reason: format!(
                "{}: {} [{}]",
                role_name(self.role),
                self.reason,
                self.posture_summary()
            ),
            peer_count: self.links.len() as u32,
            listeners: self.listeners.clone(),
        }
    }

    fn view(&self, id: LinkId, l: &Link) -> LinkView {
        let h = &l.up.accepted.peer;
        LinkView {
            id,
            local: l.local,
            info: PeerInfo {
                name: h.name.clone(),
                address: l.up.remote.to_string(),
                transport: l.up.transport.as_str().into(),
                capabilities: h.capabilities,
                role: l.peer as i32,
                latency_ms: l.latency.last_rtt_ms(),
                connected_at: l.up.connected_at_unix_s,
                routes: h.routes.clone(),
                outbound: l.outbound(),
                link_reason: l.reason.clone(),
                control_drops: l.control_drops,
                routes_refused: l.routes_refused,
                ..PeerInfo::default()
            },
        }
    }

    /// Every link, in the order they came up.
    pub fn links(&self) -> Vec<LinkView> {
        self.links.iter().map(|(id, l)| self.view(*id, l)).collect()
    }

    /// One link.
    pub fn link(&self, id: LinkId) -> Option<LinkView> {
        self.links.get(&id).map(|l| self.view(id, l))
    }

    /// Both negotiated roles of a link: (ours, the peer's).
    pub fn link_roles(&self, id: LinkId) -> Option<(NodeRole, NodeRole)> {
        self.links.get(&id).map(|l| (l.local, l.peer))
    }

    /// Learned routes, longest prefix first, with the neighbour's name.
    pub fn routes(&self) -> Vec<(IpNet, String)> {
        let mut v: Vec<(IpNet, String)> = self
            .routes
            .iter()
            .map(|(p, r)| {
                let name = self
                    .links
                    .get(&r.link)
                    .map(|l| l.name().to_string())
                    .unwrap_or_default();
                (*p, name)
            })
            .collect();
        v.sort_by_key(|(p, _)| std::cmp::Reverse(p.prefix_len()));
        v
    }

    /// Learned prefixes (routes and peers' addresses) with the link that
    /// owns each, in prefix order.
    pub fn route_links(&self) -> Vec<(IpNet, LinkId)> {
        self.routes.iter().map(|(p, r)| (*p, r.link)).collect()
    }

    /// The node a learned prefix originates at.
    pub fn route_origin(&self, prefix: &IpNet) -> Option<&str> {
        self.routes.get(&prefix.trunc()).map(|r| &*r.origin)
    }

    /// Routes privd granted and that are ours to remove.
    pub fn installed_routes(&self) -> &BTreeSet<IpNet> {
        &self.installed
    }

    /// Finds a link by unique name prefix (an exact name always wins).
    pub fn find_link(&self, prefix: &str) -> Result<LinkId, OperatorError> {
        let matching: Vec<(&LinkId, &Link)> = self
            .links
            .iter()
            .filter(|(_, l)| l.name().starts_with(prefix))
            .collect();
        if let Some((id, _)) = matching.iter().find(|(_, l)| l.name() == prefix) {
            return Ok(**id);
        }
        match matching.as_slice() {
            [] => Err(OperatorError::NotFound(prefix.to_string())),
            [(id, _)] => Ok(**id),
            many => Err(OperatorError::Ambiguous {
                prefix: prefix.to_string(),
                count: many.len(),
            }),
        }
    }

    /// The forwarding decisions as they are now.
    pub fn forwarding(&self) -> Forwarding {
        Forwarding {
            forwarding: self.role != INDET,
            relay: self.role == NodeRole::RoleRelay,
            routes: self.route_links(),
            active: self
                .links
                .iter()
                .filter(|(_, l)| l.local != INDET)
                .map(|(id, _)| *id)
                .collect(),
            peer_of: self.peer_of(),
        }
    }

    /// Each link that shares its peer with another link, with the lowest
    /// id of that peer's links (see [`Core::same_peer`]); one pass over the
    /// links, grouped by (name, address).
    fn peer_of(&self) -> Vec<(LinkId, LinkId)> {
        let mut groups: BTreeMap<(&str, std::net::IpAddr), Vec<LinkId>> = BTreeMap::new();
        for (id, l) in &self.links {
            groups
                .entry((l.name(), canonical(l.up.remote.ip())))
                .or_default()
                .push(*id);
        }
        let mut out = Vec::new();
        for ids in groups.values().filter(|ids| ids.len() > 1) {
            // BTreeMap order: the first is the lowest id.
            out.extend(ids.iter().map(|id| (*id, ids[0])));
        }
        out.sort();
        out
    }

    // ----- outputs -----------------------------------------------------

    /// The next control message to send, and the link it goes to.
    pub fn poll_transmit(&mut self) -> Option<(LinkId, ControlMessage)> {
        self.transmits.pop_front()
    }

    /// The next route change for privd.
    pub fn poll_route_request(&mut self) -> Option<RouteRequest> {
        self.privd.pop_front()
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// The next link to close.
    pub fn poll_close(&mut self) -> Option<Close> {
        self.closes.pop_front()
    }

    /// The next answer to an operator ping.
    pub fn poll_ping_reply(&mut self) -> Option<PingReply> {
        self.replies.pop_front()
    }

    /// A new forwarding table when it changed since the last call.
    pub fn poll_forwarding(&mut self) -> Option<Forwarding> {
        let now = self.forwarding();
        if self.published.as_ref() == Some(&now) {
            return None;
        }
        self.published = Some(now.clone());
        Some(now)
    }

    /// When [`Core::handle_timeout`] is due next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.links
            .values()
            .flat_map(|l| {
                std::iter::once(l.next_ping)
                    .chain(l.pings.iter().map(|p| p.sent + OPERATOR_PING_TIMEOUT))
            })
            .min()
    }

    // ----- inputs ------------------------------------------------------

    /// A link passed the handshake.
    pub fn handle_link_up(&mut self, now: Instant, id: LinkId, up: LinkUp) {
        if self.links.contains_key(&id) {
            self.warn(Some(id), "a link id came up twice; ignored".into());
            return;
        }
        let peer_hint = up.accepted.peer.hint;
        let routes = up.accepted.routes.clone();
        let addresses = up.accepted.addresses.clone();
        let origin: Arc<str> = Arc::from(up.accepted.peer.name.as_str());
        let limits = &self.cfg.limits;
        let bucket = TokenBucket::new(limits.control_burst, limits.control_rate, now);
        self.links.insert(
            id,
            Link {
                up,
                held: Vec::new(),
                owned: 0,
                standby: BTreeMap::new(),
                bucket,
                control_drops: 0,
                routes_refused: 0,
                local: INDET,
                peer: INDET,
                reason: "not negotiated yet".into(),
                peer_hint,
                latency: Latency::new(self.cfg.ping_miss_limit as usize),
                next_ping: now,
                pings: Vec::new(),
                closing: false,
            },
        );
        self.renegotiate(false);
        // The peer's own addresses are its sources whatever its role; its
        // routes count only once its role lets it originate routes.
        self.learn_routes(id, &addresses, origin.clone(), true);
        if self.may_originate(id) {
            self.learn_routes(id, &routes, origin, false);
        } else if let Some(l) = self.links.get_mut(&id) {
            l.held = routes;
        }
        self.share_routes_with(id);
        if let Some(l) = self.links.get(&id) {
            let info = self.view(id, l).info;
            self.events
                .push_back(Event::management(event::Body::PeerConnected(info)));
        }
        // The first keepalive goes out at once.
        self.keepalive(now);
    }

    /// A link ended (closed by either side, or failed).
    pub fn handle_link_down(&mut self, _now: Instant, id: LinkId, reason: &str) {
        if !self.links.contains_key(&id) {
            return;
        }
        self.forget_link_routes(id);
        let Some(link) = self.links.remove(&id) else {
            return;
        };
        for p in link.pings {
            self.replies.push_back(PingReply {
                token: p.token,
                outcome: PingOutcome::LinkGone,
            });
        }
        self.transmits.retain(|(l, _)| *l != id);
        self.closes.retain(|c| c.link != id);
        self.renegotiate(false);
        self.events
            .push_back(Event::management(event::Body::PeerDisconnected(
                PeerDisconnected {
                    name: link.up.accepted.peer.name,
                    reason: reason.into(),
                },
            )));
    }

    /// A decoded control message arrived on a link.
    pub fn handle_control(&mut self, now: Instant, id: LinkId, m: ControlMessage) {
        let Some(link) = self.links.get_mut(&id) else {
            return;
        };
        // The rate limit first: a flood costs a counter, not the work.
        if !link.bucket.take(now) {
            link.control_drops += 1;
            return;
        }
        let name = link.name().to_string();
        match m.body {
            Some(Body::Ping(p)) => self
                .transmits
                .push_back((id, msg(Body::Pong(pong_for(&p))))),
            Some(Body::Pong(p)) => {
                if let Some(i) = link
                    .pings
                    .iter()
                    .position(|w| w.timestamp_ms == p.timestamp_ms)
                {
                    let w = link.pings.swap_remove(i);
                    let rtt = now.saturating_duration_since(w.sent).as_secs_f64() * 1000.0;
                    self.replies.push_back(PingReply {
                        token: w.token,
                        outcome: PingOutcome::Answered(rtt),
                    });
                }
                let now_us = now.saturating_duration_since(self.start).as_micros() as u64;
                link.latency.pong_us(&p, now_us);
            }
            Some(Body::Disconnect(d)) => {
                self.events.push_back(Event::PeerSaidGoodbye {
                    link: id,
                    peer: name,
                    reason: sapper_shared::text::sanitize(
                        &d.reason,
                        sapper_shared::text::MAX_PEER_STRING,
                    ),
                });
                self.close(id, "closed".into(), false);
            }
            Some(Body::Error(e)) => {
                self.warn(
                    Some(id),
                    format!(
                        "peer {name} reported an error (code {}): {}",
                        e.code,
                        sapper_shared::text::sanitize(
                            &e.message,
                            sapper_shared::text::MAX_PEER_STRING
                        )
                    ),
                );
                self.close(id, "closed".into(), false);
            }
            Some(Body::Handshake(_)) => {
                self.warn(Some(id), format!("second handshake from {name}; closing"));
                self.close(id, "closed".into(), false);
            }
            Some(Body::RouteUpdate(u)) => match parse_prefixes(&u.prefixes) {
                Ok(p) if !sapper_shared::handshake::valid_name(&u.origin) => {
                    self.refused(id, p.len(), "its origin is not a node name");
                }
                Ok(p) if !self.may_originate(id) && u.origin == name => {
                    // The peer's own routes (a reload added them) wait for a
                    // role that originates, like its Handshake's.
                    self.peer_announces(id, &p, true);
                    self.hold(id, p);
                }
                Ok(p) if !self.may_originate(id) => {
                    self.refused(id, p.len(), "its role does not originate routes");
                }
                Ok(p) => {
                    if u.origin == name {
                        self.peer_announces(id, &p, true);
                    }
                    self.learn_routes(id, &p, Arc::from(u.origin.as_str()), false)
                }
                Err(e) => self.warn(
                    Some(id),
                    format!("ignored a bad route update from {name}: {e}"),
                ),
            },
            Some(Body::RouteWithdraw(w)) => match parse_prefixes(&w.prefixes) {
                Ok(p) => {
                    if w.origin == name {
                        self.peer_announces(id, &p, false);
                    }
                    self.withdraw_routes(id, &p, &w.origin)
                }
                Err(e) => self.warn(
                    Some(id),
                    format!("ignored a bad route withdrawal from {name}: {e}"),
                ),
            },
            Some(Body::RoleTransition(t)) => {
                link.peer_hint = t.hint;
                self.events.push_back(Event::PeerRoleChanged {
                    link: id,
                    peer: name,
                    role: role_from_wire(t.role),
                    reason: sapper_shared::text::sanitize(
                        &t.reason,
                        sapper_shared::text::MAX_PEER_STRING,
                    ),
                });
                self.renegotiate(false);
            }
            None => {}
        }
    }

    /// Time passed: keepalives, dead links, operator pings that timed out.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.keepalive(now);
        let mut expired = Vec::new();
        for l in self.links.values_mut() {
            l.pings.retain(|p| {
                let keep = now < p.sent + OPERATOR_PING_TIMEOUT;
                if !keep {
                    expired.push(p.token);
                }
                keep
            });
        }
        for token in expired {
            self.replies.push_back(PingReply {
                token,
                outcome: PingOutcome::TimedOut,
            });
        }
    }

    /// What privd made of a [`RouteRequest`].
    pub fn handle_route_result(&mut self, req: RouteRequest, outcome: RouteOutcome) {
        // A route counts as ours only once privd granted it; a removal privd
        // refuses leaves nothing of ours behind either.
        match (req.add, outcome) {
            (_, RouteOutcome::Failed) => {}
            (true, RouteOutcome::Granted) => {
                self.installed.insert(req.prefix);
            }
            (true, RouteOutcome::Refused) => {}
            (false, _) => {
                self.installed.remove(&req.prefix);
            }
        }
        self.privd_outstanding = self.privd_outstanding.saturating_sub(1);
        if self.privd_outstanding == 0 && self.privd_dirty {
            self.privd_dirty = false;
            self.sync_routes();
        }
    }

    /// The operator set (or with `None` cleared) this node's hint.
    pub fn set_hint(&mut self, hint: Option<RoleHint>) {
        self.hint = hint.filter(|h| h.level != HintLevel::Unspecified as i32);
        self.renegotiate(true);
    }

    /// A reload changed the live part of the configuration. Returns the keys
    /// that changed (all applied now):
    ///
    /// - announced routes: what was added is sent to every peer as a
    ///   `RouteUpdate`, what was removed as a `RouteWithdraw`, both with this
    ///   node as origin — the messages a relay already passes on, so the
    ///   change reaches nodes behind it too. New links get the new list in
    ///   the Handshake.
    /// - the hint: replaces the current one (also one the operator set with
    ///   `sapperctl hint`) and renegotiates every link, telling the peers;
    ///   that may change roles, and with them routes.
    /// - ping interval: every link's next keepalive is due no later than one
    ///   new interval from `now`.
    /// - miss limit: every link's liveness tracker counts against the new
    ///   limit from the next keepalive on.
    pub fn handle_config(&mut self, now: Instant, new: LiveConfig) -> Vec<&'static str> {
        let old = self.cfg.live();
        let mut changed = Vec::new();
        if new.announce_routes != old.announce_routes || new.announce != old.announce {
            changed.push("netd.announce_routes");
            let before = self.cfg.own_routes();
            self.cfg.announce_routes = new.announce_routes;
            self.cfg.posture.announce_routes = new.announce;
            let after = self.cfg.own_routes();
            let gone: Vec<String> = before
                .iter()
                .filter(|p| !after.contains(p))
                .map(|p| p.to_string())
                .collect();
            let added: Vec<String> = after
                .iter()
                .filter(|p| !before.contains(p))
                .map(|p| p.to_string())
                .collect();
            let origin = self.cfg.name.clone();
            // Withdrawals first: a prefix replaced by an overlapping one
            // (10.0.0.0/24 by 10.0.0.0/16) must be gone before the new one
            // is checked against what the peer owns.
            for chunk in gone.chunks(sapper_shared::routing::MAX_ROUTES) {
                self.broadcast_except(
                    None,
                    Body::RouteWithdraw(RouteWithdraw {
                        prefixes: chunk.to_vec(),
                        origin: origin.clone(),
                    }),
                );
            }
            for chunk in added.chunks(sapper_shared::routing::MAX_ROUTES) {
                self.broadcast_except(
                    None,
                    Body::RouteUpdate(RouteUpdate {
                        prefixes: chunk.to_vec(),
                        origin: origin.clone(),
                    }),
                );
            }
        }
        if new.hint != old.hint {
            changed.push("node.hint");
            self.cfg.posture.hint = new.hint;
            self.hint = new.hint;
            self.renegotiate(true);
        }
        if new.ping_interval != old.ping_interval {
            changed.push("netd.ping_interval_ms");
            self.cfg.ping_interval = new.ping_interval;
            let due = now + new.ping_interval.max(Duration::from_millis(1));
            for l in self.links.values_mut() {
                l.next_ping = l.next_ping.min(due);
            }
        }
        if new.ping_miss_limit != old.ping_miss_limit {
            changed.push("netd.ping_miss_limit");
            self.cfg.ping_miss_limit = new.ping_miss_limit;
            for l in self.links.values_mut() {
                l.latency.set_miss_limit(new.ping_miss_limit as usize);
            }
        }
        changed
    }

    /// The operator pings a link; the answer comes from
    /// [`Core::poll_ping_reply`] with `token`.
    pub fn ping(&mut self, now: Instant, id: LinkId, token: u64) -> Result<(), OperatorError> {
        let now_ms = self.now_us(now) / 1000;
        let link = self
            .links
            .get_mut(&id)
            .ok_or_else(|| OperatorError::NotFound(id.to_string()))?;
        if link.pings.len() >= MAX_PINGS_PER_LINK {
            return Err(OperatorError::TooManyPings);
        }
        // Timestamps double as ids; keep them unique among waiters.
        let mut ts = now_ms;
        while link.pings.iter().any(|p| p.timestamp_ms == ts) {
            ts += 1;
        }
        link.pings.push(PendingPing {
            token,
            timestamp_ms: ts,
            sent: now,
        });
        self.transmits
            .push_back((id, msg(Body::Ping(Ping { timestamp_ms: ts }))));
        Ok(())
    }

    /// The operator (or shutdown) closes a link, telling the peer why.
    pub fn disconnect(&mut self, id: LinkId, reason: &str) {
        if !self.links.contains_key(&id) {
            return;
        }
        self.transmits.push_back((
            id,
            msg(Body::Disconnect(Disconnect {
                reason: reason.to_string(),
            })),
        ));
        self.close(id, "closed".into(), true);
    }

    /// A listener started.
    pub fn add_listener(&mut self, l: ListenerInfo) {
        if self.listeners.len() < MAX_LISTENERS {
            self.listeners.push(l);
        }
    }

    /// A listener closed (a reload removed it).
    pub fn remove_listener(&mut self, address: &str, transport: &str) {
        self.listeners
            .retain(|l| !(l.address == address && l.transport == transport));
    }

    /// The host's underlay networks and gateways changed (an interface or
    /// default route came or went): automatic routes are checked against
    /// the new set at once, and one that now covers it is uninstalled. The
    /// protected list from the configuration stays protected.
    pub fn set_underlay(&mut self, mut underlay: Vec<IpNet>) {
        underlay.sort();
        underlay.dedup();
        if underlay != self.underlay {
            self.underlay = underlay;
            self.sync_routes();
        }
    }

    /// The operator changed a route through privd directly.
    pub fn operator_route_changed(&mut self, prefix: IpNet, add: bool) {
        let info = RouteInfo {
            prefix: prefix.to_string(),
            peer: String::new(),
        };
        self.events.push_back(Event::management(if add {
            event::Body::RouteAdded(info)
        } else {
            event::Body::RouteRemoved(info)
        }));
    }

    // ----- internals ---------------------------------------------------

    fn warn(&mut self, link: Option<LinkId>, message: String) {
        self.events.push_back(Event::Warning { link, message });
    }

    fn close(&mut self, id: LinkId, reason: String, graceful: bool) {
        if let Some(l) = self.links.get_mut(&id) {
            if !l.closing {
                l.closing = true;
                self.closes.push_back(Close {
                    link: id,
                    reason,
                    graceful,
                });
            }
        }
    }

    fn keepalive(&mut self, now: Instant) {
        let now_us = self.now_us(now);
        let interval = self.cfg.ping_interval.max(Duration::from_millis(1));
        let mut dead = Vec::new();
        for (id, l) in self.links.iter_mut() {
            if l.closing || now < l.next_ping {
                continue;
            }
            l.next_ping = now + interval;
            if l.latency.is_dead() {
                dead.push((*id, l.name().to_string(), l.latency.missed()));
                continue;
            }
            let ping = l.latency.ping_us(now_us);
            self.transmits.push_back((*id, msg(Body::Ping(ping))));
        }
        for (id, peer, missed) in dead {
            self.events.push_back(Event::PeerDead {
                link: id,
                peer,
                missed,
            });
            self.close(id, "closed".into(), false);
        }
    }

    fn broadcast_except(&mut self, from: Option<LinkId>, body: Body) {
        let m = msg(body);
        for id in self.links.keys() {
            if !from.is_some_and(|f| self.same_peer(f, *id)) {
                self.transmits.push_back((*id, m.clone()));
            }
        }
    }

    /// Recomputes every link's roles and this node's role. Tells the
    /// neighbours when the role changed, or always when `announce` (our
    /// hint changed, so they must re-run with it).
    fn renegotiate(&mut self, announce: bool) {
        let caps = self.cfg.capabilities;
        let hint = self.hint;
        let auto = self.cfg.posture.auto_negotiate;
        let mut link_roles = Vec::with_capacity(self.links.len());
        let mut first_reason = None;
        for l in self.links.values_mut() {
            let (local, peer, reason) = if auto {
                let o = roles::negotiate(
                    &Party {
                        caps,
                        hint,
                        dialed: l.outbound(),
                    },
                    &Party {
                        caps: l.up.accepted.peer.capabilities.unwrap_or_default(),
                        hint: l.peer_hint,
                        dialed: !l.outbound(),
                    },
                );
                (o.local, o.peer, o.reason.describe().to_string())
            } else {
                (
                    fixed_target(hint).unwrap_or(INDET),
                    fixed_target(l.peer_hint).unwrap_or(INDET),
                    "fixed by configuration (secure posture)".to_string(),
                )
            };
            l.local = local;
            l.peer = peer;
            if first_reason.is_none() {
                first_reason = Some(reason.clone());
            }
            l.reason = reason;
            link_roles.push(local);
        }
        let (role, reason) = if auto {
            let role = roles::node_role(&caps, &link_roles);
            let why = if roles::is_relay(&caps) {
                "told to listen and connect".to_string()
            } else if self.links.is_empty() {
                "no peers yet".to_string()
            } else if role == INDET && link_roles.iter().any(|r| *r != INDET) {
                "links disagree about this node's role".to_string()
            } else {
                first_reason.unwrap_or_default()
            };
            (role, why)
        } else {
            match fixed_target(hint) {
                Some(r) if r != INDET => (r, "fixed by configuration (secure posture)".to_string()),
                _ => (
                    INDET,
                    "secure posture: no fixed role (set node.role, or zero_config = true)"
                        .to_string(),
                ),
            }
        };
        let changed = self.role != role;
        self.role = role;
        self.reason = reason.clone();
        if changed {
            self.events.push_back(Event::RoleChanged {
                role,
                reason: reason.clone(),
            });
        }
        if changed || announce {
            self.broadcast_except(
                None,
                Body::RoleTransition(RoleTransition {
                    role: role as i32,
                    reason,
                    hint,
                }),
            );
        }
        if changed {
            self.sync_routes();
        }
        self.demote_routes();
        self.learn_held();
    }

    /// A peer whose role no longer originates routes (it stopped being an
    /// exit or relay) loses the routes it announced: withdrawn (passed on by
    /// a relay) and uninstalled. Its own ones are held again, to be learned
    /// back if it returns to such a role; what it relayed for others is
    /// dropped. Its tunnel addresses stay its sources.
    fn demote_routes(&mut self) {
        let demoted: Vec<LinkId> = self
            .links
            .keys()
            .filter(|id| !self.may_originate(**id))
            .filter(|id| self.routes.values().any(|r| r.link == **id && !r.address))
            .copied()
            .collect();
        let max = self.cfg.limits.max_routes_per_peer;
        for id in demoted {
            let mut by_origin: BTreeMap<Arc<str>, Vec<IpNet>> = BTreeMap::new();
            self.routes.retain(|p, r| {
                if r.link == id && !r.address {
                    by_origin.entry(r.origin.clone()).or_default().push(*p);
                    false
                } else {
                    true
                }
            });
            if let Some(l) = self.links.get_mut(&id) {
                let n: usize = by_origin.values().map(Vec::len).sum();
                l.owned = l.owned.saturating_sub(n);
                l.standby.retain(|_, (_, address)| *address);
                if let Some(own) = by_origin.get(l.name()) {
                    for p in own {
                        if l.held.len() < max && !l.held.contains(p) {
                            l.held.push(*p);
                        }
                    }
                }
            }
            for (origin, gone) in by_origin {
                self.after_withdrawal(id, gone, &origin);
            }
        }
    }

    /// Whether links `a` and `b` go to the same peer: the same name from
    /// the same underlay address (a node dialling us, or dialled by us,
    /// over both transports). Such links share what the peer owns: its
    /// addresses and routes are owned by the first of them, the others hold
    /// them on standby, and the data path accepts the peer's sources from
    /// any of them. The address keeps another node that merely claims the
    /// name from sharing anything.
    fn same_peer(&self, a: LinkId, b: LinkId) -> bool {
        if a == b {
            return true;
        }
        match (self.links.get(&a), self.links.get(&b)) {
            (Some(x), Some(y)) => {
                x.name() == y.name() && canonical(x.up.remote.ip()) == canonical(y.up.remote.ip())
            }
            _ => false,
        }
    }

    fn link_name(&self, id: LinkId) -> String {
        self.links
            .get(&id)
            .map(|l| l.name().to_string())
            .unwrap_or_default()
    }

    /// Whether the peer on `id` plays a role that originates routes: an
    /// exit (it reaches them) or a relay (it passes on what it learned).
    /// An entry or an undecided peer announces only its own addresses.
    fn may_originate(&self, id: LinkId) -> bool {
        self.links
            .get(&id)
            .is_some_and(|l| matches!(l.peer, NodeRole::RoleExit | NodeRole::RoleRelay))
    }

    /// Counts (and reports once per message) prefixes refused from `id`.
    fn refused(&mut self, id: LinkId, n: usize, why: &str) {
        if n == 0 {
            return;
        }
        let name = match self.links.get_mut(&id) {
            Some(l) => {
                l.routes_refused += n as u64;
                l.name().to_string()
            }
            None => return,
        };
        self.warn(
            Some(id),
            format!("refused {n} prefix(es) from {name}: {why}"),
        );
    }

    /// Why `p` may not be learned from `id`, or `None` when it may. The
    /// ownership rule: a prefix belongs to the first link that announced
    /// it, and no other link may announce it, a prefix inside it (that would
    /// take over part of its traffic) or one containing it (that would
    /// claim its sources), until the owner withdraws it or goes down. This
    /// node's own addresses and announced routes belong to no peer.
    fn refusal(&self, id: LinkId, p: &IpNet) -> Option<&'static str> {
        let link = self.links.get(&id)?;
        if let Some(allowed) = &link.up.allowed_sources {
            if !allowed.iter().any(|a| a.contains(p)) {
                return Some("outside the link's allowed_sources");
            }
        }
        if self.cfg.addresses.iter().any(|a| p.contains(a))
            || self
                .cfg
                .announce_routes
                .iter()
                .any(|r| r.contains(p) || p.contains(r))
        {
            return Some("it overlaps this node's own addresses or routes");
        }
        if let Some(w) = self.bound_reached(id) {
            return Some(w);
        }
        if self.overlapping_owner(p, id).is_some() {
            return Some("it overlaps a prefix another link owns");
        }
        None
    }

    /// Whether `id` may own one more prefix.
    fn bound_reached(&self, id: LinkId) -> Option<&'static str> {
        let lim = &self.cfg.limits;
        let owned = self.links.get(&id).map(|l| l.owned).unwrap_or(usize::MAX);
        if owned >= lim.max_routes_per_peer {
            return Some("the link already owns netd.limits.max_routes_per_peer prefixes");
        }
        if self.routes.len() >= lim.max_routes {
            return Some("this node already holds netd.limits.max_routes prefixes");
        }
        None
    }

    /// A link other than `id` owning `p`, a prefix inside it or one
    /// containing it. At most one probe per shorter length plus one range
    /// scan of the prefixes inside `p`.
    fn overlapping_owner(&self, p: &IpNet, id: LinkId) -> Option<LinkId> {
        let p = p.trunc();
        for len in 0..=p.prefix_len() {
            let sup = match p {
                IpNet::V4(n) => ipnet::Ipv4Net::new(n.network(), len)
                    .ok()
                    .map(|n| IpNet::V4(n.trunc())),
                IpNet::V6(n) => ipnet::Ipv6Net::new(n.network(), len)
                    .ok()
                    .map(|n| IpNet::V6(n.trunc())),
            };
            if let Some(r) = sup.and_then(|s| self.routes.get(&s)) {
                if r.link != id {
                    return Some(r.link);
                }
            }
        }
        let last = match p {
            IpNet::V4(n) => IpNet::V4(ipnet::Ipv4Net::new(n.broadcast(), 32).ok()?),
            IpNet::V6(n) => IpNet::V6(ipnet::Ipv6Net::new(n.broadcast(), 128).ok()?),
        };
        self.routes
            .range(p..=last)
            .find(|(_, r)| r.link != id)
            .map(|(_, r)| r.link)
    }

    /// `id` reaches `prefixes` (its own addresses when `address`), which
    /// originate at `origin`. The first announcement of a prefix wins until
    /// it is withdrawn (or its link goes down): a later announcement of a
    /// known prefix, over any link, changes nothing and is not passed on.
    /// Updates are thus only sent on learning, and cannot circle a loop of
    /// relays forever.
    fn learn_routes(&mut self, id: LinkId, prefixes: &[IpNet], origin: Arc<str>, address: bool) {
        if prefixes.is_empty() || !self.cfg.posture.accept_routes && !address {
            return;
        }
        let name = self.link_name(id);
        let mut learned = Vec::with_capacity(prefixes.len().min(64));
        let mut refused = 0usize;
        let mut why = "";
        for (i, p) in prefixes.iter().enumerate() {
            // Past a bound the rest of the update is refused at once: a
            // flood costs a counter, not a lookup per prefix.
            if let Some(w) = self.bound_reached(id) {
                refused += prefixes.len() - i;
                why = w;
                break;
            }
            let p = p.trunc();
            if self.routes.get(&p).is_some_and(|r| r.link == id) {
                continue;
            }
            if self
                .routes
                .get(&p)
                .is_some_and(|r| self.same_peer(r.link, id))
            {
                // The peer's twin link owns it: held on standby.
                let max = self.cfg.limits.max_routes_per_peer;
                if let Some(l) = self.links.get_mut(&id) {
                    if l.standby.len() < max || l.standby.contains_key(&p) {
                        l.standby.insert(p, (origin.clone(), address));
                    }
                }
                continue;
            }
            if let Some(w) = self.refusal(id, &p) {
                // Another link announcing the same prefix is the normal
                // case in a loop of relays: refused, not reported.
                if !self.routes.contains_key(&p) {
                    refused += 1;
                    why = w;
                }
                continue;
            }
            self.routes.insert(
                p,
                Learned {
                    link: id,
                    origin: origin.clone(),
                    address,
                },
            );
            if let Some(l) = self.links.get_mut(&id) {
                l.owned += 1;
            }
            learned.push(p);
        }
        self.refused(id, refused, why);
        for p in &learned {
            self.events
                .push_back(Event::management(event::Body::RouteAdded(RouteInfo {
                    prefix: p.to_string(),
                    peer: name.clone(),
                })));
        }
        if self.role == NodeRole::RoleRelay
            && self.cfg.posture.announce_routes
            && !learned.is_empty()
        {
            self.broadcast_except(
                Some(id),
                Body::RouteUpdate(RouteUpdate {
                    prefixes: learned.iter().map(|p| p.to_string()).collect(),
                    origin: origin.to_string(),
                }),
            );
        }
        self.sync_routes();
    }

    /// `id` no longer reaches `prefixes` (originating at `origin`). Only the
    /// owning link can withdraw a prefix; anything else is refused.
    fn withdraw_routes(&mut self, id: LinkId, prefixes: &[IpNet], origin: &str) {
        let mut gone = Vec::new();
        let mut refused = 0;
        for p in prefixes {
            let p = p.trunc();
            if let Some(l) = self.links.get_mut(&id) {
                if l.name() == origin {
                    // Its own route, not learned yet: no longer held back.
                    l.held.retain(|h| h.trunc() != p);
                }
                if l.standby
                    .get(&p)
                    .is_some_and(|(o, a)| !*a && &**o == origin)
                {
                    l.standby.remove(&p);
                    continue;
                }
            }
            match self.routes.get(&p) {
                Some(r) if r.link == id && !r.address && &*r.origin == origin => {
                    self.routes.remove(&p);
                    gone.push(p);
                }
                Some(_) => refused += 1,
                None => {}
            }
        }
        if let Some(l) = self.links.get_mut(&id) {
            l.owned = l.owned.saturating_sub(gone.len());
        }
        self.refused(id, refused, "a withdrawal of prefixes it does not own");
        self.after_withdrawal(id, gone, origin);
    }

    /// Every route through `id`, when it goes down: what a twin link to the
    /// same peer holds on standby passes to it (nothing is withdrawn or
    /// uninstalled), the rest is withdrawn.
    fn forget_link_routes(&mut self, id: LinkId) {
        let twins: Vec<LinkId> = self
            .links
            .keys()
            .filter(|o| **o != id && self.same_peer(**o, id))
            .copied()
            .collect();
        for twin in twins {
            let Some(l) = self.links.get_mut(&twin) else {
                continue;
            };
            let mut taken = 0;
            for (p, r) in self.routes.iter_mut() {
                if r.link != id {
                    continue;
                }
                if let Some((origin, address)) = l.standby.remove(p) {
                    *r = Learned {
                        link: twin,
                        origin,
                        address,
                    };
                    taken += 1;
                }
            }
            l.owned += taken;
        }
        let mut by_origin: BTreeMap<Arc<str>, Vec<IpNet>> = BTreeMap::new();
        self.routes.retain(|p, r| {
            if r.link == id {
                by_origin.entry(r.origin.clone()).or_default().push(*p);
                false
            } else {
                true
            }
        });
        if let Some(l) = self.links.get_mut(&id) {
            l.owned = 0;
        }
        for (origin, gone) in by_origin {
            self.after_withdrawal(id, gone, &origin);
        }
    }

    fn after_withdrawal(&mut self, id: LinkId, gone: Vec<IpNet>, origin: &str) {
        if gone.is_empty() {
            return;
        }
        let name = self.link_name(id);
        for p in &gone {
            self.events
                .push_back(Event::management(event::Body::RouteRemoved(RouteInfo {
                    prefix: p.to_string(),
                    peer: name.clone(),
                })));
        }
        if self.role == NodeRole::RoleRelay {
            self.broadcast_except(
                Some(id),
                Body::RouteWithdraw(RouteWithdraw {
                    prefixes: gone.iter().map(|p| p.to_string()).collect(),
                    origin: origin.to_string(),
                }),
            );
        }
        self.sync_routes();
    }

    /// A relay tells a new neighbour what the others reach (their routes
    /// and addresses, as routes: downstream they are reached through us).
    fn share_routes_with(&mut self, id: LinkId) {
        if self.role != NodeRole::RoleRelay || !self.cfg.posture.announce_routes {
            return;
        }
        let mut by_origin: BTreeMap<Arc<str>, Vec<String>> = BTreeMap::new();
        for (p, r) in self.routes.iter() {
            if !self.same_peer(r.link, id) {
                by_origin
                    .entry(r.origin.clone())
                    .or_default()
                    .push(p.to_string());
            }
        }
        for (origin, prefixes) in by_origin {
            for chunk in prefixes.chunks(sapper_shared::routing::MAX_ROUTES) {
                self.transmits.push_back((
                    id,
                    msg(Body::RouteUpdate(RouteUpdate {
                        prefixes: chunk.to_vec(),
                        origin: origin.to_string(),
                    })),
                ));
            }
        }
    }

    /// The peer announced (or withdrew) `prefixes` of its own after its
    /// Handshake: `peers` shows its current list. Bounded like a
    /// Handshake's list.
    fn peer_announces(&mut self, id: LinkId, prefixes: &[IpNet], add: bool) {
        let Some(l) = self.links.get_mut(&id) else {
            return;
        };
        let shown = &mut l.up.accepted.peer.routes;
        for p in prefixes {
            let p = p.trunc().to_string();
            if !add {
                shown.retain(|r| {
                    r.parse::<IpNet>()
                        .map_or(true, |n| n.trunc().to_string() != p)
                });
            } else if shown.len() < sapper_shared::routing::MAX_ROUTES && !shown.contains(&p) {
                shown.push(p);
            }
        }
    }

    /// Keeps the peer's own `prefixes` until its role lets it originate
    /// them; bounded like what it may own.
    fn hold(&mut self, id: LinkId, prefixes: Vec<IpNet>) {
        let max = self.cfg.limits.max_routes_per_peer;
        let mut refused = 0;
        if let Some(l) = self.links.get_mut(&id) {
            for p in prefixes {
                if l.held.contains(&p) {
                    continue;
                }
                if l.held.len() >= max {
                    refused += 1;
                } else {
                    l.held.push(p);
                }
            }
        }
        self.refused(
            id,
            refused,
            "the link already holds netd.limits.max_routes_per_peer prefixes",
        );
    }

    /// Links whose peer may now originate routes learn what their
    /// Handshake held back.
    fn learn_held(&mut self) {
        let ready: Vec<LinkId> = self
            .links
            .iter()
            .filter(|(id, l)| !l.held.is_empty() && self.may_originate(**id))
            .map(|(id, _)| *id)
            .collect();
        for id in ready {
            let (held, origin) = match self.links.get_mut(&id) {
                Some(l) => (
                    std::mem::take(&mut l.held),
                    Arc::<str>::from(l.up.accepted.peer.name.as_str()),
                ),
                None => continue,
            };
            self.learn_routes(id, &held, origin, false);
        }
    }

    /// The prefixes that should be on our TUN: everything learned, when this
    /// node is the entry and automatic routes are on; nothing otherwise.
    /// Never a prefix covering a peer's own address: the link to it would
    /// then run through itself.
    fn wanted_routes(&mut self) -> BTreeSet<IpNet> {
        let p = &self.cfg.posture;
        if self.role != NodeRole::RoleEntry
            || !p.auto_routes
            || !p.accept_routes
            || !self.cfg.installs_routes
        {
            return BTreeSet::new();
        }
        let underlay: Vec<std::net::IpAddr> = self
            .links
            .values()
            .map(|l| canonical(l.up.remote.ip()))
            .collect();
        let mut want = BTreeSet::new();
        let mut loops = Vec::new();
        for (prefix, r) in self.routes.iter() {
            if r.address {
                continue;
            }
            if underlay.iter().any(|a| prefix.contains(a))
                || self
                    .cfg
                    .protected
                    .iter()
                    .chain(self.underlay.iter())
                    .any(|u| prefix.contains(u) || u.contains(prefix))
            {
                loops.push(*prefix);
            } else {
                want.insert(*prefix);
            }
        }
        for prefix in loops {
            self.warn(
                None,
                format!(
                    "not installing announced route {prefix}: it covers a peer's address or this node's underlay"
                ),
            );
        }
        want
    }

    /// Makes privd's routes match [`Core::wanted_routes`], one batch at a
    /// time (removals first) so a quick remove-then-add never reaches privd
    /// reversed.
    fn sync_routes(&mut self) {
        if !self.cfg.installs_routes {
            return;
        }
        if self.privd_outstanding > 0 {
            self.privd_dirty = true;
            return;
        }
        let want = self.wanted_routes();
        let del: Vec<IpNet> = self.installed.difference(&want).copied().collect();
        let add: Vec<IpNet> = want.difference(&self.installed).copied().collect();
        for (prefix, add) in del
            .into_iter()
            .map(|p| (p, false))
            .chain(add.into_iter().map(|p| (p, true)))
        {
            self.privd.push_back(RouteRequest { prefix, add });
            self.privd_outstanding += 1;
        }
    }
}

/// An IPv4 peer seen on a dual-stack socket (`::ffff:a.b.c.d`) is the IPv4
/// address it is.
pub fn canonical(ip: std::net::IpAddr) -> std::net::IpAddr {
    match ip {
        std::net::IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map(std::net::IpAddr::V4)
            .unwrap_or(std::net::IpAddr::V6(v6)),
        v4 => v4,
    }
}
