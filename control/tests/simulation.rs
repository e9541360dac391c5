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
