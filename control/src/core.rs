//! The control core: see the crate documentation.

use crate::forwarding::Forwarding;
use crate::LinkId;
use ipnet::IpNet;
use sapper_shared::config::Transport;
use sapper_shared::handshake::Accepted;
use sapper_shared::latency::{pong_for, Latency};
use sapper_shared::posture::{self, Posture};
use sapper_shared::proto::control::{
    control_message::Body, ControlMessage, Disconnect, RoleTransition, RouteUpdate, RouteWithdraw,
};
use sapper_shared::proto::data::{Capabilities, Handshake, HintLevel, NodeRole, Ping, RoleHint};
use sapper_shared::proto::management::{
    event, ListenerInfo, PeerDisconnected, PeerInfo, RouteInfo,
};
use sapper_shared::roles::{self, fixed_target, role_from_wire, role_name, Party};
use sapper_shared::routing::{parse_prefixes, RouteTable};
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

const INDET: NodeRole = NodeRole::RoleIndeterminate;

/// Most operator pings in flight per link.
pub const MAX_PINGS_PER_LINK: usize = 16;
/// How long an operator ping waits for its pong.
pub const OPERATOR_PING_TIMEOUT: Duration = Duration::from_secs(5);
/// Most learned prefixes, over all links: a peer cannot grow the table
/// without bound by announcing new prefixes again and again.
pub const MAX_LEARNED_ROUTES: usize = 4 * sapper_shared::routing::MAX_ROUTES;
/// Longest route origin (a node name) kept.
pub const MAX_ORIGIN_LEN: usize = sapper_shared::handshake::MAX_NAME_LEN;
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

struct Link {
    up: LinkUp,
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
    routes: RouteTable<LinkId>,
    origins: HashMap<IpNet, String>,
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
            routes: RouteTable::default(),
            origins: HashMap::new(),
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
            routes: if self.cfg.posture.announce_routes {
                self.cfg
                    .announce_routes
                    .iter()
                    .map(|r| r.to_string())
                    .collect()
            } else {
                vec![]
            },
            hint: self.hint,
            software: sapper_shared::SOFTWARE_VERSION.into(),
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
        self.routes
            .iter()
            .map(|(p, id)| {
                let name = self
                    .links
                    .get(id)
                    .map(|l| l.name().to_string())
                    .unwrap_or_default();
                (*p, name)
            })
            .collect()
    }

    /// Learned routes with the link each goes to.
    pub fn route_links(&self) -> Vec<(IpNet, LinkId)> {
        self.routes.iter().copied().collect()
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
        }
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
        let origin = up.accepted.peer.name.clone();
        self.links.insert(
            id,
            Link {
                up,
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
        self.learn_routes(id, &routes, &origin);
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
                    reason: d.reason,
                });
                self.close(id, "closed".into(), false);
            }
            Some(Body::Error(e)) => {
                self.warn(
                    Some(id),
                    format!(
                        "peer {name} reported an error (code {}): {}",
                        e.code, e.message
                    ),
                );
                self.close(id, "closed".into(), false);
            }
            Some(Body::Handshake(_)) => {
                self.warn(Some(id), format!("second handshake from {name}; closing"));
                self.close(id, "closed".into(), false);
            }
            Some(Body::RouteUpdate(u)) => match parse_prefixes(&u.prefixes) {
                Ok(_) if u.origin.len() > MAX_ORIGIN_LEN => self.warn(
                    Some(id),
                    format!("ignored a route update from {name}: origin too long"),
                ),
                Ok(p) => self.learn_routes(id, &p, &u.origin),
                Err(e) => self.warn(
                    Some(id),
                    format!("ignored a bad route update from {name}: {e}"),
                ),
            },
            Some(Body::RouteWithdraw(w)) => match parse_prefixes(&w.prefixes) {
                Ok(p) => self.withdraw_routes(id, &p, &w.origin),
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
                    reason: t.reason,
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
            if Some(*id) != from {
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
    }

    fn link_name(&self, id: LinkId) -> String {
        self.links
            .get(&id)
            .map(|l| l.name().to_string())
            .unwrap_or_default()
    }

    /// `id` reaches `prefixes`, which originate at `origin`.
    fn learn_routes(&mut self, id: LinkId, prefixes: &[IpNet], origin: &str) {
        if prefixes.is_empty() || !self.cfg.posture.accept_routes {
            return;
        }
        let name = self.link_name(id);
        let mut learned = Vec::with_capacity(prefixes.len());
        for p in prefixes {
            let known = self.routes.iter().any(|(q, _)| *q == p.trunc());
            // The first announcement of a prefix wins until it is withdrawn
            // (or its link goes down): a later announcement of a known
            // prefix, over any link and from any origin, changes nothing
            // and is not passed on. Updates are thus only sent on learning,
            // and cannot circle a loop of relays forever.
            if known {
                continue;
            }
            if self.origins.len() >= MAX_LEARNED_ROUTES {
                self.warn(
                    Some(id),
                    format!("ignored route {p} from {name}: already {MAX_LEARNED_ROUTES} routes"),
                );
                continue;
            }
            self.routes.insert(*p, id);
            self.origins.insert(p.trunc(), origin.to_string());
            learned.push(*p);
        }
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

    /// `id` no longer reaches `prefixes` (originating at `origin`).
    fn withdraw_routes(&mut self, id: LinkId, prefixes: &[IpNet], origin: &str) {
        let mut gone = Vec::new();
        for p in prefixes {
            let p = p.trunc();
            let via_link = self.routes.iter().any(|(q, l)| *q == p && *l == id);
            if via_link && self.origins.get(&p).map(|o| o == origin).unwrap_or(true) {
                self.routes.remove_prefix(&p);
                self.origins.remove(&p);
                gone.push(p);
            }
        }
        self.after_withdrawal(id, gone, origin);
    }

    /// Every route through `id`, when it goes down.
    fn forget_link_routes(&mut self, id: LinkId) {
        let mut by_origin: BTreeMap<String, Vec<IpNet>> = BTreeMap::new();
        for p in self.routes.remove_peer(&id) {
            let o = self.origins.remove(&p).unwrap_or_default();
            by_origin.entry(o).or_default().push(p);
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

    /// A relay tells a new neighbour what the others reach.
    fn share_routes_with(&mut self, id: LinkId) {
        if self.role != NodeRole::RoleRelay || !self.cfg.posture.announce_routes {
            return;
        }
        let mut by_origin: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (p, l) in self.routes.iter() {
            if *l != id {
                let o = self.origins.get(p).cloned().unwrap_or_default();
                by_origin.entry(o).or_default().push(p.to_string());
            }
        }
        for (origin, prefixes) in by_origin {
            self.transmits
                .push_back((id, msg(Body::RouteUpdate(RouteUpdate { prefixes, origin }))));
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
        let underlay: Vec<std::net::IpAddr> =
            self.links.values().map(|l| l.up.remote.ip()).collect();
        let mut want = BTreeSet::new();
        let mut loops = Vec::new();
        for (prefix, _) in self.routes.iter() {
            if underlay.iter().any(|a| prefix.contains(a)) {
                loops.push(*prefix);
            } else {
                want.insert(*prefix);
            }
        }
        for prefix in loops {
            self.warn(
                None,
                format!("not installing announced route {prefix}: it covers a peer's address"),
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
