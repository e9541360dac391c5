//! Random sequences of link up/down, announcements, withdrawals, hints and
//! time keep the control plane's invariants:
//! * a route is on a TUN only while the link it was learned over is up and
//!   the node is the entry (forwarding);
//! * privd's routes are exactly the ones the core believes it installed;
//! * every install is matched by exactly one removal, in turn;
//! * both ends of every link agree on both roles;
//! * no two links own overlapping prefixes, every owner is a live link, and
//!   the per-link and per-node bounds hold.

mod sim;

use proptest::prelude::*;
use sapper_shared::proto::control::{
    control_message::Body, ControlMessage, RouteUpdate, RouteWithdraw,
};
use sapper_shared::proto::data::{HintLevel, NodeRole};
use sim::*;
use std::collections::BTreeMap;
use std::time::Duration;

const PREFIXES: [&str; 4] = ["10.20.0.0/24", "10.30.0.0/16", "fd20::/64", "10.20.0.0/16"];
const NAMES: [&str; 4] = ["n0", "n1", "n2", "n3"];

#[derive(Debug, Clone)]
enum Op {
    Connect(usize, usize),
    Cut(usize),
    Hint(usize, Option<(i32, i32)>),
    Announce {
        wire: usize,
        to_a: bool,
        prefixes: Vec<usize>,
        origin: usize,
    },
    Withdraw {
        wire: usize,
        to_a: bool,
        prefixes: Vec<usize>,
        origin: usize,
    },
    Tick(u64),
}

fn op() -> impl Strategy<Value = Op> {
    let prefixes = proptest::collection::vec(0..PREFIXES.len(), 1..3);
    prop_oneof![
        3 => (0..4usize, 0..4usize).prop_map(|(a, b)| Op::Connect(a, b)),
        2 => (0..16usize).prop_map(Op::Cut),
        2 => (0..4usize, proptest::option::of((1..4i32, 0..4i32))).prop_map(|(n, h)| Op::Hint(n, h)),
        2 => (0..16usize, any::<bool>(), prefixes.clone(), 0..4usize)
            .prop_map(|(wire, to_a, prefixes, origin)| Op::Announce { wire, to_a, prefixes, origin }),
        2 => (0..16usize, any::<bool>(), prefixes, 0..4usize)
            .prop_map(|(wire, to_a, prefixes, origin)| Op::Withdraw { wire, to_a, prefixes, origin }),
        1 => (0..3000u64).prop_map(Op::Tick),
    ]
}

fn spec() -> impl Strategy<Value = (bool, bool, bool, Option<usize>)> {
    (
        any::<bool>(),
        any::<bool>(),
        any::<bool>(),
        proptest::option::of(0..PREFIXES.len()),
    )
}

fn build(specs: &[(bool, bool, bool, Option<usize>)]) -> Sim {
    Sim::new(
        specs
            .iter()
            .zip(NAMES)
            .map(|(&(tun, listen, connect, announce), name)| {
                let mut s = Spec::new(name);
                s.tun = tun;
                s.listen = listen;
                s.connect = connect;
                s.announce = announce.map(|i| net(PREFIXES[i])).into_iter().collect();
                if tun {
                    s = s.address(&format!("10.99.0.{}", name.as_bytes()[1] - b'0' + 1));
                }
                s.limits(LIMITS)
            })
            .collect(),
    )
}

fn inject(s: &mut Sim, wire: usize, to_a: bool, body: Body) {
    let Some(w) = s.wires.get(wire) else { return };
    if !w.up {
        return;
    }
    let (node, link) = if to_a { w.a } else { w.b };
    let now = s.now;
    s.nodes[node]
        .core
        .handle_control(now, link, ControlMessage { body: Some(body) });
    s.run();
}

/// Small bounds, so random histories reach them.
const LIMITS: sapper_shared::peer_limits::PeerLimits = sapper_shared::peer_limits::PeerLimits {
    max_preauth: 8,
    max_preauth_per_ip: 8,
    max_routes_per_peer: 2,
    max_routes: 3,
    control_rate: 1000,
    control_burst: 1000,
};

fn check(s: &Sim) {
    s.assert_links_agree();
    for n in &s.nodes {
        let core = &n.core;
        let owned = core.route_links();
        let live: Vec<_> = core.links().iter().map(|l| l.id).collect();
        assert!(
            owned.len() <= LIMITS.max_routes,
            "{}: {owned:?}",
            n.spec.name
        );
        for (i, (p, a)) in owned.iter().enumerate() {
            assert!(
                live.contains(a),
                "{}: {p} owned by a dead link",
                n.spec.name
            );
            let mine = owned.iter().filter(|(_, b)| b == a).count();
            assert!(
                mine <= LIMITS.max_routes_per_peer,
                "{}: {owned:?}",
                n.spec.name
            );
            for (q, b) in &owned[i + 1..] {
                assert!(
                    a == b || !(p.contains(q) || q.contains(p)),
                    "{}: {p} ({a}) and {q} ({b}) overlap",
                    n.spec.name
                );
            }
        }
        assert_eq!(
            core.installed_routes(),
            &n.tun_routes,
            "{}: the core and privd disagree",
            n.spec.name
        );
        let up: Vec<_> = core.links().iter().map(|l| l.id).collect();
        let routes = core.route_links();
        for p in &n.tun_routes {
            assert_eq!(
                core.role(),
                NodeRole::RoleEntry,
                "{}: {p} installed",
                n.spec.name
            );
            let link = routes.iter().find(|(q, _)| q == p).map(|(_, l)| *l);
            assert!(
                link.is_some_and(|l| up.contains(&l)),
                "{}: {p} installed without a live link",
                n.spec.name
            );
            // Only a peer whose role originates routes has them installed.
            let peer = link.and_then(|l| core.link_roles(l)).map(|(_, peer)| peer);
            assert!(
                matches!(peer, Some(NodeRole::RoleExit | NodeRole::RoleRelay)),
                "{}: {p} installed from a peer now {peer:?}",
                n.spec.name
            );
        }
        // Installs and removals alternate per prefix, starting with an install.
        let mut on: BTreeMap<_, bool> = BTreeMap::new();
        for (p, add, granted) in &n.privd_log {
            assert!(granted);
            let was = on.insert(*p, *add).unwrap_or(false);
            assert_ne!(was, *add, "{}: {p} add={add} twice in a row", n.spec.name);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn invariants_hold(specs in proptest::collection::vec(spec(), 4), ops in proptest::collection::vec(op(), 1..40)) {
        let mut s = build(&specs);
        for op in ops {
            match op {
                Op::Connect(a, b) => {
                    let linked = s.wires.iter().any(|w| w.up && ((w.a.0, w.b.0) == (a, b) || (w.a.0, w.b.0) == (b, a)));
                    if a != b && !linked {
                        s.connect(NAMES[a], NAMES[b]);
                    }
                }
                Op::Cut(w) => if w < s.wires.len() { s.cut(w, "cut") },
                Op::Hint(n, h) => s.set_hint(NAMES[n], h.and_then(|(l, t)| {
                    let level = HintLevel::try_from(l).ok()?;
                    hint(level, NodeRole::try_from(t).ok()?)
                })),
                Op::Announce { wire, to_a, prefixes, origin } => inject(&mut s, wire, to_a, Body::RouteUpdate(RouteUpdate {
                    prefixes: prefixes.iter().map(|i| PREFIXES[*i].to_string()).collect(),
                    origin: NAMES[origin].to_string(),
                })),
                Op::Withdraw { wire, to_a, prefixes, origin } => inject(&mut s, wire, to_a, Body::RouteWithdraw(RouteWithdraw {
                    prefixes: prefixes.iter().map(|i| PREFIXES[*i].to_string()).collect(),
                    origin: NAMES[origin].to_string(),
                })),
                Op::Tick(ms) => s.advance(Duration::from_millis(ms)),
            }
            check(&s);
        }
        // Everything goes down: every install has had its removal.
        for w in 0..s.wires.len() {
            s.cut(w, "end");
        }
        check(&s);
        for n in &s.nodes {
            prop_assert!(n.tun_routes.is_empty(), "{}: {:?} left behind", n.spec.name, n.tun_routes);
            let adds = n.privd_log.iter().filter(|e| e.1).count();
            let dels = n.privd_log.iter().filter(|e| !e.1).count();
            prop_assert_eq!(adds, dels);
            prop_assert_eq!(n.core.role() == NodeRole::RoleRelay, n.spec.listen && n.spec.connect);
        }
    }
}
