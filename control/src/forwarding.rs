//! What the data path needs from the control plane, as an immutable value:
//! whether this node forwards at all, whether it relays, the announced
//! prefixes with the link each goes to, and which links forward. netd
//! publishes one of these (with its per-link handles attached) after every
//! change and packet tasks read it without a lock.

use crate::prefix_map::PrefixMap;
use crate::LinkId;
use ipnet::IpNet;
use std::net::IpAddr;

/// The control plane's forwarding decisions, by link id.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Forwarding {
    /// This node has a role other than Indeterminate.
    pub forwarding: bool,
    /// This node is a relay: packets from a link go on to another link.
    pub relay: bool,
    /// Announced prefixes, longest first, with the link that reaches each.
    pub routes: Vec<(IpNet, LinkId)>,
    /// Links whose negotiated local role forwards (not Indeterminate).
    pub active: Vec<LinkId>,
    /// Links that are one of several to the same peer, each with the
    /// lowest id of its peer's links (links not listed are their own).
    /// Such links are one peer to the data path: each may send from what
    /// any of them owns, and none is "another" link for the others.
    pub peer_of: Vec<(LinkId, LinkId)>,
}

/// [`Forwarding`] with a value of the data path's own attached to every
/// active link (netd: the link's packet sender and counters). Immutable once
/// built; lookups allocate nothing and cost one hash probe per prefix length
/// present ([`PrefixMap`]).
#[derive(Debug)]
pub struct ForwardingTable<T> {
    /// Whether packets move at all.
    pub forwarding: bool,
    /// Whether packets from one link go on to another.
    pub relay: bool,
    /// prefix → (owning link id, index into `links` when that link
    /// forwards).
    routes: PrefixMap<(LinkId, Option<usize>)>,
    links: Vec<(LinkId, T)>,
    /// [`Forwarding::peer_of`].
    peer_of: Vec<(LinkId, LinkId)>,
}

impl<T> Default for ForwardingTable<T> {
    fn default() -> Self {
        Self {
            forwarding: false,
            relay: false,
            routes: PrefixMap::default(),
            links: Vec::new(),
            peer_of: Vec::new(),
        }
    }
}

impl<T> ForwardingTable<T> {
    /// Attaches `handle(id)` to each active link; links without a handle are
    /// left out (they are treated as not forwarding).
    pub fn build(f: &Forwarding, mut handle: impl FnMut(LinkId) -> Option<T>) -> Self {
        let links: Vec<(LinkId, T)> = f
            .active
            .iter()
            .filter_map(|id| handle(*id).map(|h| (*id, h)))
            .collect();
        let routes = PrefixMap::build(
            f.routes
                .iter()
                .map(|(p, id)| (*p, (*id, links.iter().position(|(l, _)| l == id)))),
        );
        Self {
            forwarding: f.forwarding,
            relay: f.relay,
            routes,
            links,
            peer_of: f.peer_of.clone(),
        }
    }

    /// The peer behind link `id`: the lowest id of the links to it.
    fn peer(&self, id: LinkId) -> LinkId {
        self.peer_of
            .iter()
            .find(|(l, _)| *l == id)
            .map_or(id, |(_, p)| *p)
    }

    fn same_peer(&self, a: Option<LinkId>, b: LinkId) -> bool {
        a.is_some_and(|a| a == b || self.peer(a) == self.peer(b))
    }

    /// The active link with this id.
    pub fn link(&self, id: LinkId) -> Option<&T> {
        self.links.iter().find(|(l, _)| *l == id).map(|(_, t)| t)
    }

    /// Every active link.
    pub fn links(&self) -> impl Iterator<Item = (LinkId, &T)> {
        self.links.iter().map(|(id, t)| (*id, t))
    }

    /// The first active link to the only peer other than `not`'s, if
    /// every other active link goes to one peer.
    fn only_other(&self, not: Option<LinkId>) -> Option<(LinkId, &T)> {
        let mut others = self
            .links
            .iter()
            .filter(|(id, _)| !self.same_peer(not, *id));
        let (first, t) = others.next()?;
        let peer = self.peer(*first);
        others
            .all(|(id, _)| self.peer(*id) == peer)
            .then_some((*first, t))
    }

    /// Where a packet to `dst` goes, never back to `from`'s peer: the link
    /// of the longest announced prefix if it forwards, else the only other
    /// peer's (first) link when there is exactly one other peer.
    pub fn next_hop(&self, dst: Option<IpAddr>, from: Option<LinkId>) -> Option<(LinkId, &T)> {
        if let Some(dst) = dst {
            if let Some((_, Some(i))) = self.routes.lookup(dst) {
                let (id, t) = &self.links[*i];
                if !self.same_peer(from, *id) {
                    return Some((*id, t));
                }
            }
        }
        self.only_other(from)
    }

    /// Whether link `from` may send a packet from `src` to `dst` (strict
    /// reverse-path check, WireGuard's allowed IPs): `src` must lie in a
    /// prefix `from` owns (its tunnel addresses and the routes this node
    /// accepted from it). A source no link owns passes only when `from` is
    /// where this node would itself send that address: the only active link
    /// (on a relay: the only one other than the link `dst` is on). No two
    /// links own overlapping prefixes, so a source has at most one owner;
    /// the links to one peer share what that peer owns (replies may come
    /// back over a link other than the one the request left on).
    pub fn source_allowed(&self, src: IpAddr, dst: Option<IpAddr>, from: LinkId) -> bool {
        if let Some((owner, _)) = self.routes.lookup(src) {
            return self.same_peer(Some(*owner), from);
        }
        let back = if self.relay {
            match dst.and_then(|d| self.routes.lookup(d)) {
                Some((owner, _)) => Some(*owner),
                None => return false,
            }
        } else {
            None
        };
        matches!(self.only_other(back), Some((id, _)) if self.same_peer(Some(id), from))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn longest_prefix_then_the_only_other_link() {
        let f = Forwarding {
            forwarding: true,
            relay: true,
            routes: vec![
                ("10.20.0.0/24".parse().unwrap(), LinkId(2)),
                ("10.0.0.0/8".parse().unwrap(), LinkId(3)),
            ],
            active: vec![LinkId(1), LinkId(2)],
            peer_of: Vec::new(),
        };
        let t = ForwardingTable::build(&f, |id| Some(id.0 * 10));
        let dst = |s: &str| Some(s.parse().unwrap());
        assert_eq!(
            t.next_hop(dst("10.20.0.5"), Some(LinkId(1))),
            Some((LinkId(2), &20))
        );
        // Never back where it came from: falls back to the only other link.
        assert_eq!(
            t.next_hop(dst("10.20.0.5"), Some(LinkId(2))),
            Some((LinkId(1), &10))
        );
        // The /8 goes to a link that does not forward: fall back.
        assert_eq!(
            t.next_hop(dst("10.1.0.1"), Some(LinkId(1))),
            Some((LinkId(2), &20))
        );
        // From the TUN with two active links and no route: nowhere.
        assert_eq!(t.next_hop(dst("192.0.2.1"), None), None);
        assert_eq!(t.link(LinkId(3)), None);
    }

    #[test]
    fn sources_belong_to_their_owner_only() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let f = Forwarding {
            forwarding: true,
            relay: false,
            routes: vec![
                ("10.99.0.1/32".parse().unwrap(), LinkId(1)),
                ("10.20.0.0/24".parse().unwrap(), LinkId(2)),
            ],
            active: vec![LinkId(1), LinkId(2)],
            peer_of: Vec::new(),
        };
        let t = ForwardingTable::build(&f, |id| Some(id.0));
        assert!(t.source_allowed(ip("10.99.0.1"), None, LinkId(1)));
        // Another link's address: spoofed.
        assert!(!t.source_allowed(ip("10.99.0.1"), None, LinkId(2)));
        assert!(t.source_allowed(ip("10.20.0.9"), None, LinkId(2)));
        // Nobody's, with two links: nobody may send from it.
        assert!(!t.source_allowed(ip("192.0.2.1"), None, LinkId(1)));
        // With one link, what no one owns comes from that link.
        let one = Forwarding {
            active: vec![LinkId(1)],
            ..f.clone()
        };
        let t = ForwardingTable::build(&one, |id| Some(id.0));
        assert!(t.source_allowed(ip("192.0.2.1"), None, LinkId(1)));
        // A relay: an unowned source passes from the side opposite the
        // destination's owner.
        let relay = Forwarding { relay: true, ..f };
        let t = ForwardingTable::build(&relay, |id| Some(id.0));
        assert!(t.source_allowed(ip("192.0.2.1"), Some(ip("10.99.0.1")), LinkId(2)));
        assert!(!t.source_allowed(ip("192.0.2.1"), Some(ip("10.99.0.1")), LinkId(1)));
    }

    #[test]
    fn links_to_one_peer_share_its_sources() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        // Links 1 and 3 go to the same peer (3's twin is 1); 2 to another.
        let f = Forwarding {
            forwarding: true,
            relay: false,
            routes: vec![
                ("10.20.0.0/24".parse().unwrap(), LinkId(1)),
                ("10.30.0.0/24".parse().unwrap(), LinkId(2)),
            ],
            active: vec![LinkId(1), LinkId(2), LinkId(3)],
            peer_of: vec![(LinkId(1), LinkId(1)), (LinkId(3), LinkId(1))],
        };
        let t = ForwardingTable::build(&f, |id| Some(id.0));
        // A reply may come back over the twin link...
        assert!(t.source_allowed(ip("10.20.0.9"), None, LinkId(1)));
        assert!(t.source_allowed(ip("10.20.0.9"), None, LinkId(3)));
        // ...but another peer still may not send from it.
        assert!(!t.source_allowed(ip("10.20.0.9"), None, LinkId(2)));
        assert!(!t.source_allowed(ip("10.30.0.9"), None, LinkId(3)));
        // Out over the link that owns the route.
        assert_eq!(
            t.next_hop(Some(ip("10.20.0.9")), None),
            Some((LinkId(1), &1))
        );
        // Two links to one peer are still "the only other" peer.
        let one_peer = Forwarding {
            routes: vec![("10.20.0.0/24".parse().unwrap(), LinkId(1))],
            active: vec![LinkId(1), LinkId(3)],
            ..f
        };
        let t = ForwardingTable::build(&one_peer, |id| Some(id.0));
        assert_eq!(
            t.next_hop(Some(ip("192.0.2.1")), None),
            Some((LinkId(1), &1))
        );
        assert!(t.source_allowed(ip("192.0.2.1"), None, LinkId(3)));
        // A relay never sends a packet back to the peer it came from, over
        // either of its links.
        let relay = Forwarding {
            relay: true,
            ..one_peer
        };
        let t = ForwardingTable::build(&relay, |id| Some(id.0));
        assert_eq!(t.next_hop(Some(ip("10.20.0.9")), Some(LinkId(3))), None);
    }
}
