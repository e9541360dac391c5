//! Several control cores wired together in memory, with simulated time:
//! the behaviours the netns tests (tests/tests/roles.rs) check end to end,
//! here without sockets, daemons or wall-clock waits.

mod sim;

use sapper_shared::proto::data::{HintLevel, NodeRole::*};
use sim::*;
use std::time::Duration;

const PRIVATE: &str = "10.20.0.0/24";

/// Long enough for keepalive to declare a silent peer dead.
fn dead_after() -> Duration {
    PING_INTERVAL * (MISS_LIMIT + 2)
}

#[test]
fn entry_exit_negotiation() {
    let mut s = Sim::new(vec![
        Spec::new("entry").tun().connects(),
        Spec::new("exit").listens().announce(PRIVATE),
    ]);
    assert_eq!(s.role("entry"), RoleIndeterminate);
    let w = s.connect("entry", "exit");
    assert_eq!(s.role("entry"), RoleEntry);
    assert_eq!(s.role("exit"), RoleExit);
    assert_eq!(
        s.wire_roles(w),
        ((RoleEntry, RoleExit), (RoleExit, RoleEntry))
    );
    s.assert_links_agree();
    // The exit's route reaches the entry's TUN, and forwarding is on.
    assert!(s.nodes[s.idx("entry")].tun_routes.contains(&net(PRIVATE)));
    let f = s.core("entry").forwarding();
    assert!(f.forwarding && !f.relay);
    assert_eq!(f.routes.len(), 1);
    // Keepalives keep an answering link up indefinitely.
    s.advance(Duration::from_secs(30));
    assert_eq!(s.core("entry").links().len(), 1);
    assert!(s.core("entry").links()[0].info.latency_ms.is_some());
    // The link closes: the route leaves the TUN, the node idles.
    s.cut(w, "closed");
    assert_eq!(s.role("entry"), RoleIndeterminate);
    assert!(s.nodes[s.idx("entry")].tun_routes.is_empty());
}

fn chain() -> Sim {
    let mut s = Sim::new(vec![
        Spec::new("entry").tun().connects(),
        Spec::new("relay").listens().connects(),
        Spec::new("exit").listens().announce(PRIVATE),
    ]);
    s.connect("entry", "relay");
    s.connect("relay", "exit");
    s
}

#[test]
fn entry_relay_exit_route_reaches_the_entry() {
    let s = chain();
    assert_eq!(
        [s.role("entry"), s.role("relay"), s.role("exit")],
        [RoleEntry, RoleRelay, RoleExit]
    );
    s.assert_links_agree();
    let relay = s.core("relay").links();
    let roles: Vec<_> = relay
        .iter()
        .map(|l| (l.info.name.clone(), l.info.role))
        .collect();
    assert_eq!(
        roles,
        vec![
            ("entry".to_string(), RoleEntry as i32),
            ("exit".to_string(), RoleExit as i32)
        ]
    );
    assert!(s
        .core("relay")
        .status()
        .role_reason
        .contains("listen and connect"));
    // Announced by the exit, passed on by the relay, installed by the entry.
    assert_eq!(
        s.core("entry").routes(),
        vec![(net(PRIVATE), "relay".into())]
    );
    assert!(s.nodes[s.idx("entry")].tun_routes.contains(&net(PRIVATE)));
    // The relay has no TUN: nothing installed there, but it routes.
    assert!(s.nodes[s.idx("relay")].privd_log.is_empty());
    assert!(s.core("relay").forwarding().relay);
}

#[test]
fn relay_death_withdraws_and_its_return_readds() {
    let mut s = chain();
    s.kill("relay");
    s.advance(dead_after());
    assert_eq!(s.role("entry"), RoleIndeterminate);
    assert!(s.core("entry").routes().is_empty());
    assert!(s.nodes[s.idx("entry")].tun_routes.is_empty());
    assert!(s.core("exit").links().is_empty());
    s.restart("relay");
    s.connect("entry", "relay");
    s.connect("relay", "exit");
    assert_eq!(
        [s.role("entry"), s.role("relay"), s.role("exit")],
        [RoleEntry, RoleRelay, RoleExit]
    );
    assert!(s.nodes[s.idx("entry")].tun_routes.contains(&net(PRIVATE)));
    // One install, one removal, one install again.
    let log: Vec<_> = s.nodes[s.idx("entry")].privd_log.clone();
    assert_eq!(
        log,
        vec![
            (net(PRIVATE), true, true),
            (net(PRIVATE), false, true),
            (net(PRIVATE), true, true)
        ]
    );
}

#[test]
fn exit_death_is_withdrawn_through_the_relay() {
    let mut s = chain();
    s.kill("exit");
    s.advance(dead_after());
    // The entry keeps its link to the relay; only the relay's withdrawal
    // (origin: exit) takes the route away.
    assert_eq!(s.core("entry").links().len(), 1);
    assert!(s.core("entry").routes().is_empty());
    assert!(s.nodes[s.idx("entry")].tun_routes.is_empty());
    s.restart("exit");
    s.connect("relay", "exit");
    assert!(s.nodes[s.idx("entry")].tun_routes.contains(&net(PRIVATE)));
    s.assert_links_agree();
}

#[test]
fn two_tun_nodes_stay_indeterminate_until_one_hint() {
    let mut s = Sim::new(vec![
        Spec::new("alpha").tun().connects(),
        Spec::new("beta").tun().listens().announce(PRIVATE),
    ]);
    let w = s.connect("alpha", "beta");
    assert_eq!(s.role("alpha"), RoleIndeterminate);
    assert_eq!(s.role("beta"), RoleIndeterminate);
    assert!(s.core("beta").links()[0]
        .info
        .link_reason
        .contains("no hint"));
    // Connected, learned, but nothing installed or forwarded.
    assert!(s.nodes[s.idx("alpha")].tun_routes.is_empty());
    assert!(!s.core("alpha").forwarding().forwarding);
    assert!(s.core("alpha").forwarding().active.is_empty());
    s.advance(Duration::from_secs(10));
    assert_eq!(s.role("alpha"), RoleIndeterminate);

    s.set_hint("alpha", hint(HintLevel::Prefer, RoleEntry));
    assert_eq!(s.role("alpha"), RoleEntry);
    assert_eq!(s.role("beta"), RoleExit);
    assert!(s
        .core("beta")
        .status()
        .role_reason
        .contains("resolved by hint"));
    assert!(s.nodes[s.idx("alpha")].tun_routes.contains(&net(PRIVATE)));
    s.assert_links_agree();

    s.set_hint("alpha", None);
    assert_eq!(s.role("alpha"), RoleIndeterminate);
    assert_eq!(s.role("beta"), RoleIndeterminate);
    assert!(s.nodes[s.idx("alpha")].tun_routes.is_empty());
    // Role changes never tear the link down.
    assert!(s.wires[w].up);
    assert_eq!(s.core("alpha").links().len(), 1);
}

/// Three TUN-capable zero-config nodes, two dialling the third: every link
/// is a tie until one hint on the middle node resolves all of them at once.
#[test]
fn one_hint_resolves_the_chain() {
    let mut s = Sim::new(vec![
        Spec::new("a").tun().connects(),
        Spec::new("b").tun().listens().announce(PRIVATE),
        Spec::new("c").tun().connects(),
    ]);
    s.connect("a", "b");
    s.connect("c", "b");
    for n in ["a", "b", "c"] {
        assert_eq!(s.role(n), RoleIndeterminate, "{n}");
    }
    s.set_hint("b", hint(HintLevel::Prefer, RoleExit));
    assert_eq!(
        [s.role("a"), s.role("b"), s.role("c")],
        [RoleEntry, RoleExit, RoleEntry]
    );
    s.assert_links_agree();
    for n in ["a", "c"] {
        assert!(s.nodes[s.idx(n)].tun_routes.contains(&net(PRIVATE)), "{n}");
    }
    // c refusing to be the entry flips its own link (c exit, b entry); b's
    // links then disagree about b, so b idles and says why.
    s.set_hint("c", hint(HintLevel::Exclude, RoleEntry));
    assert_eq!(s.role("c"), RoleExit);
    assert_eq!(s.role("b"), RoleIndeterminate);
    assert!(s.core("b").status().role_reason.contains("disagree"));
    s.assert_links_agree();
}

#[test]
fn secure_posture_refuses_auto_promotion() {
    let mut s = Sim::new(vec![
        Spec::new("alpha").tun().connects().posture(secure(None)),
        Spec::new("beta")
            .listens()
            .announce(PRIVATE)
            .posture(secure(None)),
    ]);
    s.connect("alpha", "beta");
    s.advance(Duration::from_secs(5));
    for n in ["alpha", "beta"] {
        assert_eq!(s.role(n), RoleIndeterminate, "{n}");
        let r = s.core(n).status().role_reason;
        assert!(
            r.contains("secure posture") && r.contains("negotiation off"),
            "{r}"
        );
    }
    let beta = &s.core("alpha").links()[0];
    assert_eq!(beta.info.role, RoleIndeterminate as i32);
    assert!(!s.core("alpha").forwarding().forwarding);
    assert!(s.nodes[s.idx("alpha")].privd_log.is_empty());

    // Fixed roles in the secure posture: they forward, but routes are
    // still manual.
    let mut s = Sim::new(vec![
        Spec::new("alpha")
            .tun()
            .connects()
            .posture(secure(Some(RoleEntry))),
        Spec::new("beta")
            .listens()
            .announce(PRIVATE)
            .posture(secure(Some(RoleExit))),
    ]);
    s.connect("alpha", "beta");
    assert_eq!(s.role("alpha"), RoleEntry);
    assert_eq!(s.role("beta"), RoleExit);
    s.assert_links_agree();
    assert!(s.core("alpha").forwarding().forwarding);
    assert!(s.nodes[s.idx("alpha")].privd_log.is_empty());
}

#[test]
fn refused_routes_are_never_removed_on_our_behalf() {
    let mut s = Sim::new(vec![
        Spec::new("entry").tun().connects(),
        Spec::new("exit")
            .listens()
            .announce(PRIVATE)
            .announce("192.168.0.0/16"),
    ]);
    let i = s.idx("entry");
    s.nodes[i].refuse.insert(net("192.168.0.0/16"));
    let w = s.connect("entry", "exit");
    assert_eq!(
        s.nodes[i].tun_routes.iter().copied().collect::<Vec<_>>(),
        vec![net(PRIVATE)]
    );
    s.cut(w, "closed");
    let removals: Vec<_> = s.nodes[i]
        .privd_log
        .iter()
        .filter(|(_, add, _)| !add)
        .map(|(p, _, _)| *p)
        .collect();
    assert_eq!(removals, vec![net(PRIVATE)]);
}

#[test]
fn a_route_covering_the_peer_is_not_installed() {
    let mut s = Sim::new(vec![
        Spec::new("entry").tun().connects(),
        Spec::new("exit")
            .listens()
            .announce("192.0.2.0/24")
            .announce(PRIVATE),
    ]);
    s.connect("entry", "exit");
    let i = s.idx("entry");
    assert_eq!(
        s.nodes[i].tun_routes.iter().copied().collect::<Vec<_>>(),
        vec![net(PRIVATE)]
    );
}

#[test]
fn operator_ping_answers_and_times_out() {
    use sapper_control::PingOutcome;
    let mut s = Sim::new(vec![
        Spec::new("entry").tun().connects(),
        Spec::new("exit").listens(),
    ]);
    s.connect("entry", "exit");
    let i = s.idx("entry");
    let link = s.nodes[i].core.find_link("ex").expect("prefix match");
    let now = s.now;
    s.nodes[i].core.ping(now, link, 7).expect("ping");
    // Deliver by hand so the reply is seen here rather than by the sim.
    let mut replies = Vec::new();
    for _ in 0..4 {
        while let Some((l, m)) = s.nodes[i].core.poll_transmit() {
            assert_eq!(l, link);
            let x = s.idx("exit");
            let xl = s.nodes[x].core.links()[0].id;
            let now = s.now;
            s.nodes[x].core.handle_control(now, xl, m);
            while let Some((_, back)) = s.nodes[x].core.poll_transmit() {
                s.nodes[i].core.handle_control(now, link, back);
            }
        }
        while let Some(r) = s.nodes[i].core.poll_ping_reply() {
            replies.push(r);
        }
    }
    assert_eq!(replies.len(), 1);
    assert_eq!(replies[0].token, 7);
    assert!(matches!(replies[0].outcome, PingOutcome::Answered(_)));
    // A dead peer: the ping times out after five seconds.
    s.kill("exit");
    let now = s.now;
    s.nodes[i].core.ping(now, link, 8).expect("ping");
    let _ = s.nodes[i].core.poll_transmit();
    s.nodes[i].core.handle_timeout(now + Duration::from_secs(6));
    let r = s.nodes[i].core.poll_ping_reply().expect("a reply");
    assert_eq!((r.token, r.outcome), (8, PingOutcome::TimedOut));
    assert!(s.nodes[i].core.find_link("nobody").is_err());
}

// ----- a hostile peer (authenticated, so it can say anything) ----------

use sapper_shared::proto::control::{control_message::Body, RouteUpdate, RouteWithdraw};
use sapper_shared::proto::data::Ping;

fn update(prefixes: &[&str], origin: &str) -> Body {
    Body::RouteUpdate(RouteUpdate {
        prefixes: prefixes.iter().map(|p| p.to_string()).collect(),
        origin: origin.into(),
    })
}

/// An entry with an honest exit and a rogue that claims the exit role.
fn entry_exit_rogue() -> (Sim, usize, usize) {
    let mut s = Sim::new(vec![
        Spec::new("entry")
            .tun()
            .connects()
            .address("10.99.0.1")
            .posture(secure(Some(RoleEntry))),
        Spec::new("exit")
            .listens()
            .announce(PRIVATE)
            .posture(secure(Some(RoleExit))),
        Spec::new("rogue").listens().posture(secure(Some(RoleExit))),
    ]);
    let honest = s.connect("entry", "exit");
    let rogue = s.connect("entry", "rogue");
    (s, honest, rogue)
}

fn owner(s: &Sim, node: &str, prefix: &str) -> Option<sapper_control::LinkId> {
    s.core(node)
        .route_links()
        .into_iter()
        .find(|(p, _)| *p == net(prefix))
        .map(|(_, l)| l)
}

fn refused(s: &Sim, node: &str, w: usize) -> u64 {
    let id = s.link_at(w, node);
    s.core(node).link(id).unwrap().info.routes_refused
}

#[test]
fn a_peer_cannot_take_over_or_withdraw_another_peers_prefix() {
    let (mut s, honest, rogue) = entry_exit_rogue();
    let exit_link = s.link_at(honest, "entry");
    assert_eq!(owner(&s, "entry", PRIVATE), Some(exit_link));
    // The same prefix, a more specific one, a covering one: all refused.
    s.inject_from(rogue, "rogue", update(&[PRIVATE], "exit"));
    s.inject_from(rogue, "rogue", update(&["10.20.0.128/25"], "rogue"));
    s.inject_from(rogue, "rogue", update(&["10.0.0.0/8"], "rogue"));
    // A withdrawal of the exit's prefix, under the exit's name too.
    s.inject_from(
        rogue,
        "rogue",
        Body::RouteWithdraw(RouteWithdraw {
            prefixes: vec![PRIVATE.into()],
            origin: "exit".into(),
        }),
    );
    assert_eq!(owner(&s, "entry", PRIVATE), Some(exit_link));
    assert_eq!(
        s.core("entry").route_links().len(),
        1,
        "{:?}",
        s.core("entry").routes()
    );
    // (The same prefix again is a known prefix, as in a loop of relays:
    // ignored without being counted.)
    assert_eq!(refused(&s, "entry", rogue), 3);
    // The entry's own address is nobody else's either.
    s.inject_from(rogue, "rogue", update(&["10.99.0.1/32"], "rogue"));
    assert_eq!(refused(&s, "entry", rogue), 4);
    // A prefix of its own is fine, and the forwarding table says who owns what.
    s.inject_from(rogue, "rogue", update(&["10.66.0.0/16"], "rogue"));
    assert_eq!(
        owner(&s, "entry", "10.66.0.0/16"),
        Some(s.link_at(rogue, "entry"))
    );
    // Only after the exit withdraws it may another link have it.
    s.inject_from(
        honest,
        "exit",
        Body::RouteWithdraw(RouteWithdraw {
            prefixes: vec![PRIVATE.into()],
            origin: "exit".into(),
        }),
    );
    assert_eq!(owner(&s, "entry", PRIVATE), None);
}

#[test]
fn only_exits_and_relays_originate_routes() {
    let mut s = Sim::new(vec![
        Spec::new("exit")
            .listens()
            .address("10.99.0.2")
            .announce(PRIVATE)
            .posture(secure(Some(RoleExit))),
        Spec::new("pretender")
            .tun()
            .connects()
            .address("10.99.0.7")
            .announce("10.70.0.0/16")
            .posture(secure(Some(RoleEntry))),
    ]);
    let w = s.connect("pretender", "exit");
    // Its Handshake routes were held back, its address is its source.
    assert_eq!(owner(&s, "exit", "10.70.0.0/16"), None);
    assert_eq!(
        owner(&s, "exit", "10.99.0.7/32"),
        Some(s.link_at(w, "exit"))
    );
    // Its own routes sent later (a reload) are held back the same way...
    s.inject_from(w, "pretender", update(&["10.71.0.0/16"], "pretender"));
    assert_eq!(owner(&s, "exit", "10.71.0.0/16"), None);
    assert_eq!(refused(&s, "exit", w), 0);
    // ...and what it relays for another origin is refused.
    s.inject_from(w, "pretender", update(&["10.72.0.0/16"], "elsewhere"));
    assert_eq!(owner(&s, "exit", "10.72.0.0/16"), None);
    assert_eq!(refused(&s, "exit", w), 1);
}

#[test]
fn route_floods_are_bounded_per_peer_and_per_node() {
    let limits = sapper_shared::peer_limits::PeerLimits {
        max_routes_per_peer: 100,
        max_routes: 150,
        ..Default::default()
    };
    let mut s = Sim::new(vec![
        Spec::new("entry")
            .tun()
            .connects()
            .posture(secure(Some(RoleEntry)))
            .limits(limits.clone()),
        Spec::new("exit")
            .listens()
            .announce(PRIVATE)
            .posture(secure(Some(RoleExit))),
        Spec::new("rogue").listens().posture(secure(Some(RoleExit))),
        Spec::new("rogue2")
            .listens()
            .posture(secure(Some(RoleExit))),
    ]);
    let _honest = s.connect("entry", "exit");
    let rogue = s.connect("entry", "rogue");
    let rogue2 = s.connect("entry", "rogue2");
    for batch in 0..10u32 {
        let prefixes: Vec<String> = (0..100u32)
            .map(|i| format!("10.{}.{}.0/24", 100 + batch, i))
            .collect();
        let refs: Vec<&str> = prefixes.iter().map(String::as_str).collect();
        s.inject_from(rogue, "rogue", update(&refs, "rogue"));
        let prefixes2: Vec<String> = (0..100u32)
            .map(|i| format!("172.{}.{}.0/24", 16 + batch, i))
            .collect();
        let refs: Vec<&str> = prefixes2.iter().map(String::as_str).collect();
        s.inject_from(rogue2, "rogue2", update(&refs, "rogue2"));
    }
    let owned = s.core("entry").route_links();
    let by = |w: usize| {
        let id = s.link_at(w, "entry");
        owned.iter().filter(|(_, l)| *l == id).count()
    };
    assert_eq!(by(rogue), 100);
    assert_eq!(owned.len(), 150);
    assert_eq!(by(rogue2), 49);
    // The honest exit's prefix is still there and still its own.
    assert!(owner(&s, "entry", PRIVATE).is_some());
    assert_eq!(refused(&s, "entry", rogue), 900);
    // The origin is one shared name per update, and must be a node name.
    s.inject_from(rogue, "rogue", update(&["10.200.0.0/16"], "bad\norigin"));
    assert_eq!(refused(&s, "entry", rogue), 901);
}

#[test]
fn control_floods_are_rate_limited_and_counted_the_link_stays() {
    let limits = sapper_shared::peer_limits::PeerLimits {
        control_rate: 10,
        control_burst: 20,
        ..Default::default()
    };
    let mut s = Sim::new(vec![
        Spec::new("entry")
            .tun()
            .connects()
            .posture(secure(Some(RoleEntry)))
            .limits(limits),
        Spec::new("rogue").listens().posture(secure(Some(RoleExit))),
    ]);
    let w = s.connect("entry", "rogue");
    let id = s.link_at(w, "entry");
    let before = s.core("entry").link(id).unwrap().info.control_drops;
    for i in 0..1000u64 {
        s.inject_from(w, "rogue", Body::Ping(Ping { timestamp_ms: i }));
    }
    let drops = s.core("entry").link(id).unwrap().info.control_drops - before;
    // At most the burst (less what the handshake's messages took) got through.
    assert!(drops >= 1000 - 20, "only {drops} dropped");
    assert_eq!(s.core("entry").links().len(), 1, "the link was kept");
    // The bucket refills with time.
    s.advance(Duration::from_secs(2));
    let d0 = s.core("entry").link(id).unwrap().info.control_drops;
    s.inject_from(w, "rogue", Body::Ping(Ping { timestamp_ms: 5000 }));
    assert_eq!(s.core("entry").link(id).unwrap().info.control_drops, d0);
}

#[test]
fn a_route_covering_the_underlay_is_learned_but_never_installed() {
    let mut s = Sim::new(vec![
        Spec::new("entry")
            .tun()
            .connects()
            .protect("198.51.100.0/24")
            .protect("198.51.100.1/32"),
        Spec::new("exit")
            .listens()
            .announce(PRIVATE)
            .announce("198.51.0.0/16")
            .announce("198.51.100.128/25"),
    ]);
    s.connect("entry", "exit");
    let tun = &s.nodes[s.idx("entry")].tun_routes;
    assert!(tun.contains(&net(PRIVATE)), "{tun:?}");
    assert!(!tun.contains(&net("198.51.0.0/16")), "{tun:?}");
    assert!(!tun.contains(&net("198.51.100.128/25")), "{tun:?}");
    // A route covering the peer's own address (the sim's peers are
    // 192.0.2.x) is never installed either.
    let mut s = Sim::new(vec![
        Spec::new("entry").tun().connects(),
        Spec::new("exit").listens().announce("192.0.2.0/24"),
    ]);
    s.connect("entry", "exit");
    assert!(s.nodes[s.idx("entry")].tun_routes.is_empty());
}

#[test]
fn allowed_sources_restrict_what_a_link_may_own() {
    let mut s = Sim::new(vec![
        Spec::new("entry")
            .tun()
            .connects()
            .address("10.99.0.1")
            .posture(secure(Some(RoleEntry))),
        Spec::new("exit")
            .listens()
            .address("10.99.0.2")
            .posture(secure(Some(RoleExit))),
        Spec::new("other")
            .tun()
            .connects()
            .address("10.98.0.1")
            .posture(secure(Some(RoleEntry))),
    ]);
    let w = s.connect_restricted("entry", "exit", Some(vec![net("10.99.0.0/24")]));
    let w2 = s.connect_restricted("other", "exit", Some(vec![net("10.99.0.0/24")]));
    // Inside the restriction: owned. Outside: refused and counted.
    assert_eq!(
        owner(&s, "exit", "10.99.0.1/32"),
        Some(s.link_at(w, "exit"))
    );
    assert_eq!(owner(&s, "exit", "10.98.0.1/32"), None);
    assert_eq!(refused(&s, "exit", w2), 1);
    // The forwarding table then lets the link send only from what it owns.
    let f = s.core("exit").forwarding();
    let t = sapper_control::ForwardingTable::build(&f, |id| Some(id.0));
    let ip = |a: &str| a.parse::<std::net::IpAddr>().unwrap();
    assert!(t.source_allowed(ip("10.99.0.1"), None, s.link_at(w, "exit")));
    assert!(!t.source_allowed(ip("10.99.0.1"), None, s.link_at(w2, "exit")));
    assert!(!t.source_allowed(ip("10.98.0.1"), None, s.link_at(w2, "exit")));
}

/// Two links between the same pair (both transports): the first owns the
/// peer's prefixes, the second holds them on standby and takes them over
/// when the first goes, without a withdrawal or a route reinstalled.
#[test]
fn twin_links_share_a_peer_and_fail_over() {
    let mut s = Sim::new(vec![
        Spec::new("entry")
            .tun()
            .connects()
            .address("10.99.0.1")
            .posture(secure(Some(RoleEntry))),
        Spec::new("exit")
            .listens()
            .address("10.99.0.2")
            .announce(PRIVATE)
            .posture(secure(Some(RoleExit))),
    ]);
    let first = s.connect("entry", "exit");
    let second = s.connect("entry", "exit");
    let installs = s.installs("entry");
    assert_eq!(owner(&s, "entry", PRIVATE), Some(s.link_at(first, "entry")));
    assert_eq!(
        owner(&s, "exit", "10.99.0.1/32"),
        Some(s.link_at(first, "exit"))
    );
    // Not refused: the same peer's twin, on standby.
    assert_eq!(refused(&s, "entry", second), 0);
    assert_eq!(refused(&s, "exit", second), 0);
    for node in ["entry", "exit"] {
        let f = s.core(node).forwarding();
        let a = s.link_at(first, node);
        let b = s.link_at(second, node);
        assert!(f.peer_of.contains(&(b, a)), "{node}: {:?}", f.peer_of);
        // The data path takes the peer's sources from either link.
        let t = sapper_control::ForwardingTable::build(&f, |id| Some(id.0));
        let src: std::net::IpAddr = if node == "entry" {
            "10.20.0.9".parse().unwrap()
        } else {
            "10.99.0.1".parse().unwrap()
        };
        assert!(t.source_allowed(src, None, a) && t.source_allowed(src, None, b));
    }
    s.cut(first, "transport closed");
    assert_eq!(
        owner(&s, "entry", PRIVATE),
        Some(s.link_at(second, "entry"))
    );
    assert_eq!(
        owner(&s, "exit", "10.99.0.1/32"),
        Some(s.link_at(second, "exit"))
    );
    assert_eq!(s.installs("entry"), installs, "the route was reinstalled");
    // A withdrawal over the remaining link now withdraws.
    s.inject_from(
        second,
        "exit",
        Body::RouteWithdraw(RouteWithdraw {
            prefixes: vec![PRIVATE.into()],
            origin: "exit".into(),
        }),
    );
    assert_eq!(owner(&s, "entry", PRIVATE), None);
}

/// An exit that stops being one loses the routes it originated: withdrawn
/// at the entry and uninstalled; its address stays its source. Back in the
/// exit role, its Handshake routes are learned again.
#[test]
fn a_peer_leaving_the_exit_role_loses_its_routes() {
    let mut s = Sim::new(vec![
        Spec::new("entry")
            .tun()
            .connects()
            .address("10.99.0.1")
            .posture(sapper_shared::posture::Posture {
                auto_routes: true,
                ..secure(Some(RoleEntry))
            }),
        Spec::new("exit")
            .listens()
            .address("10.99.0.2")
            .announce(PRIVATE)
            .posture(secure(Some(RoleExit))),
    ]);
    let w = s.connect("entry", "exit");
    let link = s.link_at(w, "entry");
    assert_eq!(owner(&s, "entry", PRIVATE), Some(link));
    assert!(s.core("entry").installed_routes().contains(&net(PRIVATE)));
    // The exit drops its fixed role (a hint change; it says so).
    s.set_hint("exit", None);
    assert_eq!(s.role("exit"), RoleIndeterminate);
    assert_eq!(owner(&s, "entry", PRIVATE), None);
    assert!(!s.core("entry").installed_routes().contains(&net(PRIVATE)));
    assert_eq!(s.installs("entry").get(&(net(PRIVATE), false)), Some(&1));
    assert_eq!(owner(&s, "entry", "10.99.0.2/32"), Some(link));
    // An exit again: its routes come back.
    s.set_hint("exit", hint(HintLevel::Fixed, RoleExit));
    assert_eq!(owner(&s, "entry", PRIVATE), Some(link));
    assert!(s.core("entry").installed_routes().contains(&net(PRIVATE)));
}
