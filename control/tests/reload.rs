//! A reload (SIGHUP) changing the live part of a running core's
//! configuration (`Core::handle_config`): announced routes, the hint and the
//! keepalive timers, with the links up and in simulated time.

mod sim;

use sapper_shared::proto::data::{HintLevel, NodeRole::*};
use sim::*;
use std::time::Duration;

const PRIVATE: &str = "10.20.0.0/24";
const MORE: &str = "10.30.0.0/24";

fn tun_has(s: &Sim, node: &str, prefix: &str) -> bool {
    s.nodes[s.idx(node)].tun_routes.contains(&net(prefix))
}

fn all_up(s: &Sim) -> bool {
    s.wires.iter().all(|w| w.up)
}

#[test]
fn announced_routes_added_and_removed_reach_the_entry_through_a_relay() {
    let mut s = Sim::new(vec![
        Spec::new("entry").tun().connects(),
        Spec::new("relay").listens().connects(),
        Spec::new("exit").listens().announce(PRIVATE),
    ]);
    s.connect("entry", "relay");
    s.connect("relay", "exit");
    assert!(tun_has(&s, "entry", PRIVATE));
    assert!(!tun_has(&s, "entry", MORE));

    let applied = s.reload("exit", |c| c.announce_routes.push(net(MORE)));
    assert_eq!(applied, vec!["netd.announce_routes"]);
    assert!(
        tun_has(&s, "entry", MORE),
        "an added route reaches the entry"
    );
    assert!(tun_has(&s, "entry", PRIVATE));
    assert_eq!(s.core("entry").route_origin(&net(MORE)), Some("exit"));
    // `peers` on the relay shows the exit's list as it is now.
    let shown = |s: &Sim| -> Vec<String> {
        s.core("relay")
            .links()
            .into_iter()
            .find(|l| l.info.name == "exit")
            .map(|l| l.info.routes)
            .unwrap_or_default()
    };
    assert_eq!(shown(&s), vec![PRIVATE.to_string(), MORE.to_string()]);

    s.reload("exit", |c| c.announce_routes.retain(|p| *p != net(PRIVATE)));
    assert!(
        !tun_has(&s, "entry", PRIVATE),
        "a removed route leaves the entry"
    );
    assert!(s.core("relay").route_origin(&net(PRIVATE)).is_none());
    assert_eq!(shown(&s), vec![MORE.to_string()]);
    assert!(tun_has(&s, "entry", MORE));
    // node.no_announce_routes withdraws everything, and turning it back on
    // announces the list again.
    s.reload("exit", |c| c.announce = false);
    assert!(!tun_has(&s, "entry", MORE));
    s.reload("exit", |c| c.announce = true);
    assert!(tun_has(&s, "entry", MORE));
    // No link went down on the way, and nothing was refused.
    assert!(all_up(&s));
    for n in ["entry", "relay"] {
        assert!(s.core(n).links().iter().all(|l| l.info.routes_refused == 0));
    }
    // A link that comes up later hears the new list in the Handshake.
    let mut s2 = Sim::new(vec![
        Spec::new("entry").tun().connects(),
        Spec::new("exit").listens().announce(PRIVATE),
    ]);
    s2.reload("exit", |c| c.announce_routes = vec![net(MORE)]);
    s2.connect("entry", "exit");
    assert!(tun_has(&s2, "entry", MORE) && !tun_has(&s2, "entry", PRIVATE));
}

#[test]
fn a_replaced_overlapping_route_is_withdrawn_before_the_new_one_is_learned() {
    let mut s = Sim::new(vec![
        Spec::new("entry").tun().connects(),
        Spec::new("exit").listens().announce("10.40.0.0/24"),
    ]);
    s.connect("entry", "exit");
    s.reload("exit", |c| c.announce_routes = vec![net("10.40.0.0/16")]);
    assert!(tun_has(&s, "entry", "10.40.0.0/16"));
    assert!(!tun_has(&s, "entry", "10.40.0.0/24"));
    assert_eq!(s.core("entry").links()[0].info.routes_refused, 0);
}

#[test]
fn routes_of_a_peer_that_does_not_originate_yet_are_held_then_learned() {
    // The announcing node is an entry on its link (no role that originates):
    // what a reload adds is held like its Handshake's routes, and learned
    // when a hint makes it the exit; a withdrawal drops the held one.
    let mut s = Sim::new(vec![
        Spec::new("alpha").tun().connects(),
        Spec::new("beta").tun().listens(),
    ]);
    s.connect("alpha", "beta");
    s.set_hint("alpha", hint(HintLevel::Prefer, RoleEntry));
    assert_eq!(s.role("beta"), RoleExit);
    s.reload("alpha", |c| {
        c.announce_routes = vec![net(PRIVATE), net(MORE)]
    });
    assert!(s.core("beta").route_origin(&net(PRIVATE)).is_none());
    assert_eq!(s.core("beta").links()[0].info.routes_refused, 0);
    s.reload("alpha", |c| c.announce_routes = vec![net(MORE)]);
    // alpha turns exit by its configured hint; beta the entry.
    let applied = s.reload("alpha", |c| c.hint = hint(HintLevel::Prefer, RoleExit));
    assert_eq!(applied, vec!["node.hint"]);
    assert_eq!(s.role("alpha"), RoleExit);
    assert_eq!(s.role("beta"), RoleEntry);
    assert!(tun_has(&s, "beta", MORE));
    assert!(
        !tun_has(&s, "beta", PRIVATE),
        "the withdrawn one stays away"
    );
    assert!(all_up(&s));
}

#[test]
fn a_hint_change_renegotiates_every_link_without_closing_any() {
    let mut s = Sim::new(vec![
        Spec::new("alpha").tun().connects(),
        Spec::new("beta").tun().listens().announce(PRIVATE),
    ]);
    let w = s.connect("alpha", "beta");
    assert_eq!(s.role("alpha"), RoleIndeterminate);
    let applied = s.reload("alpha", |c| c.hint = hint(HintLevel::Prefer, RoleEntry));
    assert_eq!(applied, vec!["node.hint"]);
    assert_eq!((s.role("alpha"), s.role("beta")), (RoleEntry, RoleExit));
    assert!(tun_has(&s, "alpha", PRIVATE));
    s.assert_links_agree();
    // The configured hint replaces one the operator set by hand.
    s.set_hint("alpha", hint(HintLevel::Prefer, RoleExit));
    assert_eq!(s.role("alpha"), RoleExit);
    s.reload("alpha", |c| c.hint = None);
    assert_eq!(s.core("alpha").hint(), None);
    assert_eq!(s.role("alpha"), RoleIndeterminate);
    assert!(!tun_has(&s, "alpha", PRIVATE));
    // An unchanged hint leaves the operator's alone.
    s.set_hint("alpha", hint(HintLevel::Prefer, RoleEntry));
    let applied = s.reload("alpha", |c| c.ping_interval = Duration::from_millis(500));
    assert_eq!(applied, vec!["netd.ping_interval_ms"]);
    assert_eq!(s.role("alpha"), RoleEntry);
    assert!(s.wires[w].up);
}

#[test]
fn a_shorter_ping_interval_is_due_at_once_and_finds_a_dead_peer_sooner() {
    let mut s = Sim::new(vec![
        Spec::new("entry").tun().connects(),
        Spec::new("exit").listens().announce(PRIVATE),
    ]);
    s.connect("entry", "exit");
    s.advance(Duration::from_millis(10));
    let now = s.now;
    s.reload("entry", |c| c.ping_interval = Duration::from_millis(100));
    let due = s.core("entry").poll_timeout().expect("a keepalive is due");
    assert!(
        due <= now + Duration::from_millis(100),
        "rescheduled from {:?} ahead",
        due - now
    );
    // The exit dies silently: MISS_LIMIT pings of 100 ms instead of 1 s.
    s.kill("exit");
    s.advance(Duration::from_millis(100) * (MISS_LIMIT + 2));
    assert!(s.core("entry").links().is_empty(), "dead peer not dropped");
    assert!(!tun_has(&s, "entry", PRIVATE));
}

#[test]
fn a_longer_ping_interval_takes_over_after_the_next_keepalive() {
    let mut s = Sim::new(vec![
        Spec::new("entry").tun().connects(),
        Spec::new("exit").listens().announce(PRIVATE),
    ]);
    s.connect("entry", "exit");
    s.reload("entry", |c| c.ping_interval = Duration::from_secs(10));
    s.advance(PING_INTERVAL * 2);
    let due = s.core("entry").poll_timeout().expect("a keepalive is due");
    assert!(due > s.now + PING_INTERVAL * 5);
}

#[test]
fn the_miss_limit_counts_against_the_new_value() {
    let mut s = Sim::new(vec![
        Spec::new("entry").tun().connects(),
        Spec::new("exit").listens().announce(PRIVATE),
    ]);
    s.connect("entry", "exit");
    let applied = s.reload("entry", |c| c.ping_miss_limit = 10);
    assert_eq!(applied, vec!["netd.ping_miss_limit"]);
    s.kill("exit");
    // Past the old limit the link is still up...
    s.advance(PING_INTERVAL * (MISS_LIMIT + 3));
    assert_eq!(s.core("entry").links().len(), 1);
    // ...until the new one.
    s.advance(PING_INTERVAL * 6);
    assert!(s.core("entry").links().is_empty());

    // A lower limit drops a peer that is already past it at the next
    // keepalive.
    let mut s = Sim::new(vec![
        Spec::new("entry").tun().connects(),
        Spec::new("exit").listens().announce(PRIVATE),
    ]);
    s.connect("entry", "exit");
    s.kill("exit");
    s.advance(PING_INTERVAL + Duration::from_millis(1));
    assert_eq!(s.core("entry").links().len(), 1);
    s.reload("entry", |c| c.ping_miss_limit = 1);
    s.advance(PING_INTERVAL);
    assert!(s.core("entry").links().is_empty());
}

#[test]
fn an_unchanged_config_changes_nothing() {
    let mut s = Sim::new(vec![
        Spec::new("entry").tun().connects(),
        Spec::new("exit").listens().announce(PRIVATE),
    ]);
    s.connect("entry", "exit");
    let before = s.nodes[s.idx("entry")].events.len();
    assert!(s.reload("exit", |_| {}).is_empty());
    assert!(s.reload("entry", |_| {}).is_empty());
    assert_eq!(s.nodes[s.idx("entry")].events.len(), before);
}
