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
}

impl<T> Default for ForwardingTable<T> {
    fn default() -> Self {
        Self {
            forwarding: false,
            relay: false,
            routes: PrefixMap::default(),
            links: Vec::new(),
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
        }
    }

    /// The active link with this id.
    pub fn link(&self, id: LinkId) -> Option<&T> {
        self.links.iter().find(|(l, _)| *l == id).map(|(_, t)| t)
    }

    /// Every active link.
    pub fn links(&self) -> impl Iterator<Item = (LinkId, &T)> {
        self.links.iter().map(|(id, t)| (*id, t))
    }

    /// The only active link other than `not`, if there is exactly one.
    fn only_other(&self, not: Option<LinkId>) -> Option<(LinkId, &T)> {
        let mut others = self.links.iter().filter(|(id, _)| Some(*id) != not);
        match (others.next(), others.next()) {
            (Some((id, t)), None) => Some((*id, t)),
            _ => None,
        }
    }

    /// Where a packet to `dst` goes, never back to `from`: the link of the
    /// longest announced prefix if it forwards, else the only other active
    /// link when there is exactly one.
    pub fn next_hop(&self, dst: Option<IpAddr>, from: Option<LinkId>) -> Option<(LinkId, &T)> {
        if let Some(dst) = dst {
            if let Some((_, Some(i))) = self.routes.lookup(dst) {
                let (id, t) = &self.links[*i];
                if Some(*id) != from {
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
    /// links own overlapping prefixes, so a source has at most one owner.
    pub fn source_allowed(&self, src: IpAddr, dst: Option<IpAddr>, from: LinkId) -> bool {
        if let Some((owner, _)) = self.routes.lookup(src) {
            return *owner == from;
        }
        let back = if self.relay {
            match dst.and_then(|d| self.routes.lookup(d)) {
                Some((owner, _)) => Some(*owner),
                None => return false,
            }
        } else {
            None
        };
        matches!(self.only_other(back), Some((id, _)) if id == from)
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
}
