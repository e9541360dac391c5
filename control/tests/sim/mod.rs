//! An in-memory network of control cores with simulated time: links are
//! queues between two cores, privd is a set of routes per node, the clock
//! only moves when a test says so. Everything is deterministic.

#![allow(dead_code)]

use ipnet::IpNet;
use sapper_control::{Core, CoreConfig, Direction, Event, LinkId, LinkUp};
use sapper_shared::config::Transport;
use sapper_shared::handshake::Accepted;
use sapper_shared::posture::Posture;
use sapper_shared::proto::control::ControlMessage;
use sapper_shared::proto::data::{Capabilities, HintLevel, NodeRole, RoleHint};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

pub const PING_INTERVAL: Duration = Duration::from_millis(1000);
pub const MISS_LIMIT: u32 = 3;

/// How one node is set up.
#[derive(Clone)]
pub struct Spec {
    pub name: &'static str,
    pub tun: bool,
    pub listen: bool,
    pub connect: bool,
    pub announce: Vec<IpNet>,
    pub posture: Posture,
    pub addresses: Vec<std::net::IpAddr>,
    pub limits: sapper_shared::peer_limits::PeerLimits,
    pub protected: Vec<IpNet>,
}

pub fn zero_config() -> Posture {
    Posture {
        secure: true,
        auto_negotiate: true,
        auto_routes: true,
        announce_routes: true,
        accept_routes: true,
        hint: None,
    }
}

pub fn secure(fixed: Option<NodeRole>) -> Posture {
    Posture {
        secure: true,
        auto_negotiate: false,
        auto_routes: false,
        announce_routes: true,
        accept_routes: true,
        hint: fixed.map(|r| RoleHint {
            level: HintLevel::Fixed as i32,
            target: r as i32,
        }),
    }
}

pub fn hint(level: HintLevel, target: NodeRole) -> Option<RoleHint> {
    Some(RoleHint {
        level: level as i32,
        target: target as i32,
    })
}

pub fn net(s: &str) -> IpNet {
    s.parse().expect("test prefix")
}

impl Spec {
    pub fn new(name: &'static str) -> Self {
        Self {
            name,
            tun: false,
            listen: false,
            connect: false,
            announce: vec![],
            posture: zero_config(),
            addresses: vec![],
            limits: Default::default(),
            protected: vec![],
        }
    }
    pub fn protect(mut self, p: &str) -> Self {
        self.protected.push(net(p));
        self
    }
    pub fn address(mut self, a: &str) -> Self {
        self.addresses.push(a.parse().expect("test address"));
        self
    }
    pub fn limits(mut self, l: sapper_shared::peer_limits::PeerLimits) -> Self {
        self.limits = l;
        self
    }
    pub fn tun(mut self) -> Self {
        self.tun = true;
        self
    }
    pub fn listens(mut self) -> Self {
        self.listen = true;
        self
    }
    pub fn connects(mut self) -> Self {
        self.connect = true;
        self
    }
    pub fn announce(mut self, p: &str) -> Self {
        self.announce.push(net(p));
        self
    }
    pub fn posture(mut self, p: Posture) -> Self {
        self.posture = p;
        self
    }
}

pub struct SimNode {
    pub spec: Spec,
    pub core: Core,
    pub alive: bool,
    /// Routes privd has on this node's TUN.
    pub tun_routes: BTreeSet<IpNet>,
    /// Prefixes privd refuses (outside its allow-list).
    pub refuse: BTreeSet<IpNet>,
    /// Every privd call: (prefix, add, granted).
    pub privd_log: Vec<(IpNet, bool, bool)>,
    pub events: Vec<Event>,
}

pub struct Wire {
    pub a: (usize, LinkId),
    pub b: (usize, LinkId),
    pub up: bool,
}

pub struct Sim {
    pub now: Instant,
    pub nodes: Vec<SimNode>,
    pub wires: Vec<Wire>,
    /// Messages in flight: (to node, on link, message).
    inflight: VecDeque<(usize, LinkId, ControlMessage)>,
    next_link: u64,
    pub trace: bool,
}

fn core_for(spec: &Spec, now: Instant) -> Core {
    Core::new(
        CoreConfig {
            name: spec.name.to_string(),
            posture: spec.posture,
            capabilities: Capabilities {
                tun_capable: spec.tun,
                listening: spec.listen,
                connecting: spec.connect,
                super_packets: false,
            },
            announce_routes: spec.announce.clone(),
            installs_routes: spec.tun,
            ping_interval: PING_INTERVAL,
            ping_miss_limit: MISS_LIMIT,
            addresses: spec.addresses.clone(),
            protected: spec.protected.clone(),
            limits: spec.limits.clone(),
        },
        now,
    )
}

impl Sim {
    pub fn new(specs: Vec<Spec>) -> Self {
        let now = Instant::now();
        let nodes = specs
            .into_iter()
            .map(|spec| SimNode {
                core: core_for(&spec, now),
                spec,
                alive: true,
                tun_routes: BTreeSet::new(),
                refuse: BTreeSet::new(),
                privd_log: Vec::new(),
                events: Vec::new(),
            })
            .collect();
        let mut sim = Self {
            now,
            nodes,
            wires: Vec::new(),
            inflight: VecDeque::new(),
            next_link: 1,
            trace: false,
        };
        sim.run();
        sim
    }

    pub fn idx(&self, name: &str) -> usize {
        self.nodes
            .iter()
            .position(|n| n.spec.name == name)
            .unwrap_or_else(|| panic!("no node {name}"))
    }

    pub fn core(&self, name: &str) -> &Core {
        &self.nodes[self.idx(name)].core
    }

    pub fn role(&self, name: &str) -> NodeRole {
        self.core(name).role()
    }

    fn addr(i: usize) -> SocketAddr {
        SocketAddr::from(([192, 0, 2, i as u8 + 1], 4433))
    }

    /// `dialer` connects to `listener`; both pass the handshake.
    pub fn connect(&mut self, dialer: &str, listener: &str) -> usize {
        self.connect_restricted(dialer, listener, None)
    }

    /// [`Sim::connect`], with the listener's `allowed_sources` for the
    /// dialler set to `allowed`.
    pub fn connect_restricted(
        &mut self,
        dialer: &str,
        listener: &str,
        allowed: Option<Vec<IpNet>>,
    ) -> usize {
        let (d, l) = (self.idx(dialer), self.idx(listener));
        assert!(self.nodes[d].alive && self.nodes[l].alive);
        let (ld, ll) = (LinkId(self.next_link), LinkId(self.next_link + 1));
        self.next_link += 2;
        let hd = self.nodes[d].core.local_handshake();
        let hl = self.nodes[l].core.local_handshake();
        let up = |h: sapper_shared::proto::data::Handshake, remote, direction| LinkUp {
            accepted: Accepted {
                routes: h.routes.iter().map(|r| net(r)).collect(),
                addresses: h
                    .addresses
                    .iter()
                    .map(|a| IpNet::from(a.parse::<std::net::IpAddr>().unwrap()))
                    .collect(),
                peer: h,
            },
            remote,
            transport: Transport::Quic,
            direction,
            connected_at_unix_s: 0,
            allowed_sources: None,
        };
        let now = self.now;
        self.nodes[d]
            .core
            .handle_link_up(now, ld, up(hl, Self::addr(l), Direction::Outbound));
        let mut inbound = up(hd, Self::addr(d), Direction::Inbound);
        inbound.allowed_sources = allowed;
        self.nodes[l].core.handle_link_up(now, ll, inbound);
        self.wires.push(Wire {
            a: (d, ld),
            b: (l, ll),
            up: true,
        });
        self.run();
        self.wires.len() - 1
    }

    fn other_end(&self, node: usize, link: LinkId) -> Option<(usize, usize, LinkId)> {
        self.wires.iter().enumerate().find_map(|(w, wire)| {
            if !wire.up {
                return None;
            }
            if wire.a == (node, link) {
                Some((w, wire.b.0, wire.b.1))
            } else if wire.b == (node, link) {
                Some((w, wire.a.0, wire.a.1))
            } else {
                None
            }
        })
    }

    /// Tears a wire down at both live ends (a transport closing).
    pub fn cut(&mut self, w: usize, reason: &str) {
        if !self.wires[w].up {
            return;
        }
        self.wires[w].up = false;
        let now = self.now;
        for (n, l) in [self.wires[w].a, self.wires[w].b] {
            if self.nodes[n].alive {
                self.nodes[n].core.handle_link_down(now, l, reason);
            }
        }
        self.inflight
            .retain(|(n, l, _)| (*n, *l) != self.wires[w].a && (*n, *l) != self.wires[w].b);
        self.run();
    }

    /// The node's daemon dies without a word: its peers only notice by
    /// their keepalives.
    pub fn kill(&mut self, name: &str) {
        let i = self.idx(name);
        self.nodes[i].alive = false;
    }

    /// A killed node starts again from scratch (its TUN routes are gone
    /// with its TUN).
    pub fn restart(&mut self, name: &str) {
        let i = self.idx(name);
        let now = self.now;
        for w in &mut self.wires {
            if w.a.0 == i || w.b.0 == i {
                // The dead end's links are gone with it; the live end's
                // were closed by keepalive (tests wait for that first).
                w.up = false;
            }
        }
        let n = &mut self.nodes[i];
        n.core = core_for(&n.spec, now);
        n.alive = true;
        n.tun_routes.clear();
        self.run();
    }

    /// Delivers everything in flight and carries out every output until
    /// nothing moves.
    pub fn run(&mut self) {
        for _round in 0..10_000 {
            let mut moved = false;
            for i in 0..self.nodes.len() {
                if !self.nodes[i].alive {
                    continue;
                }
                moved |= self.drain(i);
            }
            while let Some((to, link, m)) = self.inflight.pop_front() {
                moved = true;
                if self.trace {
                    eprintln!("-> {} {:?}: {:?}", self.nodes[to].spec.name, link, m.body);
                }
                if self.nodes[to].alive {
                    let now = self.now;
                    self.nodes[to].core.handle_control(now, link, m);
                }
            }
            if !moved {
                return;
            }
        }
        panic!("the simulation did not settle");
    }

    fn drain(&mut self, i: usize) -> bool {
        let mut moved = false;
        while let Some((link, m)) = self.nodes[i].core.poll_transmit() {
            moved = true;
            if let Some((_, to, their)) = self.other_end(i, link) {
                if self.nodes[to].alive {
                    self.inflight.push_back((to, their, m));
                }
            }
        }
        while let Some(req) = self.nodes[i].core.poll_route_request() {
            moved = true;
            let n = &mut self.nodes[i];
            let granted = !n.refuse.contains(&req.prefix);
            if granted {
                if req.add {
                    n.tun_routes.insert(req.prefix);
                } else {
                    n.tun_routes.remove(&req.prefix);
                }
            }
            n.privd_log.push((req.prefix, req.add, granted));
            n.core.handle_route_result(
                req,
                if granted {
                    sapper_control::RouteOutcome::Granted
                } else {
                    sapper_control::RouteOutcome::Refused
                },
            );
        }
        while let Some(e) = self.nodes[i].core.poll_event() {
            self.nodes[i].events.push(e);
        }
        while self.nodes[i].core.poll_ping_reply().is_some() {}
        let mut closes = Vec::new();
        while let Some(c) = self.nodes[i].core.poll_close() {
            closes.push(c);
        }
        for c in closes {
            moved = true;
            if let Some((w, _, _)) = self.other_end(i, c.link) {
                self.cut(w, &c.reason);
            } else {
                // A wire to a dead node: only this end closes.
                let now = self.now;
                self.nodes[i].core.handle_link_down(now, c.link, &c.reason);
                for w in &mut self.wires {
                    if w.a == (i, c.link) || w.b == (i, c.link) {
                        w.up = false;
                    }
                }
            }
        }
        moved
    }

    /// Lets `d` of simulated time pass, firing every timer on the way.
    pub fn advance(&mut self, d: Duration) {
        let end = self.now + d;
        loop {
            let next = self
                .nodes
                .iter()
                .filter(|n| n.alive)
                .filter_map(|n| n.core.poll_timeout())
                .min();
            match next {
                Some(t) if t <= end => {
                    self.now = self.now.max(t);
                    let now = self.now;
                    for n in self.nodes.iter_mut().filter(|n| n.alive) {
                        if n.core.poll_timeout().is_some_and(|t| t <= now) {
                            n.core.handle_timeout(now);
                        }
                    }
                    self.run();
                }
                _ => break,
            }
        }
        self.now = end;
        self.run();
    }

    /// A reload on `name`: `change` edits the live configuration, the core
    /// gets it at the current time. Returns the keys it applied.
    pub fn reload(
        &mut self,
        name: &str,
        change: impl FnOnce(&mut sapper_control::LiveConfig),
    ) -> Vec<&'static str> {
        let i = self.idx(name);
        let mut live = self.nodes[i].core.config().live();
        change(&mut live);
        let now = self.now;
        let applied = self.nodes[i].core.handle_config(now, live);
        self.run();
        applied
    }

    pub fn set_hint(&mut self, name: &str, h: Option<RoleHint>) {
        let i = self.idx(name);
        self.nodes[i].core.set_hint(h);
        self.run();
    }

    /// The roles (ours, theirs) each end of every live wire negotiated.
    pub fn wire_roles(&self, w: usize) -> ((NodeRole, NodeRole), (NodeRole, NodeRole)) {
        let wire = &self.wires[w];
        let a = self.nodes[wire.a.0].core.link_roles(wire.a.1);
        let b = self.nodes[wire.b.0].core.link_roles(wire.b.1);
        (a.expect("a end of the wire"), b.expect("b end of the wire"))
    }

    /// Both ends of every live wire agree on both roles.
    pub fn assert_links_agree(&self) {
        for (w, wire) in self.wires.iter().enumerate() {
            if !wire.up || !self.nodes[wire.a.0].alive || !self.nodes[wire.b.0].alive {
                continue;
            }
            let ((al, ap), (bl, bp)) = self.wire_roles(w);
            assert_eq!(
                (al, ap),
                (bp, bl),
                "wire {w} ({} - {}) disagrees",
                self.nodes[wire.a.0].spec.name,
                self.nodes[wire.b.0].spec.name
            );
        }
    }

    /// Counts of privd calls by (prefix, add) that were granted.
    pub fn installs(&self, name: &str) -> BTreeMap<(IpNet, bool), usize> {
        let mut m = BTreeMap::new();
        for (p, add, granted) in &self.nodes[self.idx(name)].privd_log {
            if *granted || !*add {
                *m.entry((*p, *add)).or_insert(0) += 1;
            }
        }
        m
    }
}

impl Sim {
    /// `from` sends `body` over wire `w` straight into the other end's core
    /// (a hostile peer that says whatever it likes), then everything runs.
    pub fn inject_from(
        &mut self,
        w: usize,
        from: &str,
        body: sapper_shared::proto::control::control_message::Body,
    ) {
        let f = self.idx(from);
        let wire = &self.wires[w];
        let (to, link) = if wire.a.0 == f { wire.b } else { wire.a };
        let now = self.now;
        self.nodes[to]
            .core
            .handle_control(now, link, ControlMessage { body: Some(body) });
        self.run();
    }

    /// The link on `name`'s side of wire `w`.
    pub fn link_at(&self, w: usize, name: &str) -> LinkId {
        let i = self.idx(name);
        let wire = &self.wires[w];
        if wire.a.0 == i {
            wire.a.1
        } else {
            wire.b.1
        }
    }
}
