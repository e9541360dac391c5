//! `announce_routes = "interfaces"`: the networks this node reaches
//! directly, found in the kernel's routing tables, minus the underlay, the
//! tunnel and what the operator excludes.
//!
//! The tables are the /proc files [`crate::underlay::RouteTables`] opened
//! before the sandbox: netd may not open netlink sockets (seccomp and the
//! unit's RestrictAddressFamilies=), and the same descriptors answer again
//! at reload. An interface's networks are its routes without a gateway
//! (the kernel's connected routes, and any device route the operator
//! added), which is what "reachable on this link" means to the kernel.
//!
//! An interface is underlay, and none of its networks is announced, when it
//! holds a default route, or when the kernel's best route to a connect
//! target (or its proxy) or to a bound listen address leaves through it. A
//! listener on the wildcard address is covered by the default route; a node
//! without one that listens on the wildcard names its underlay in
//! `announce_exclude`.

use crate::underlay::{KernelRoute, RouteTables, RTF_ANYCAST, RTF_CACHE, RTF_LOCAL, RTF_REJECT};
use ipnet::IpNet;
use sapper_shared::config::{Announce, AnnounceExclude, NetdConfig};
use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};

/// Why an interface's networks are not announced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Underlay {
    /// Loopback.
    Loopback,
    /// The TUN.
    Tunnel,
    /// Holds a default route.
    DefaultRoute,
    /// Carries a connect target (or its proxy).
    Peer,
    /// Holds a bound listen address.
    Listen,
}

impl Underlay {
    fn as_str(self) -> &'static str {
        match self {
            Underlay::Loopback => "loopback",
            Underlay::Tunnel => "tunnel",
            Underlay::DefaultRoute => "default route",
            Underlay::Peer => "carries a peer",
            Underlay::Listen => "holds a listen address",
        }
    }
}

/// The outcome of discovery, for the log and for tests.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Discovery {
    /// What to announce, sorted.
    pub routes: Vec<IpNet>,
    /// Interfaces left out, with the first reason found.
    pub underlay: BTreeMap<String, Underlay>,
    /// Networks left out by `announce_exclude`.
    pub excluded: Vec<IpNet>,
    /// Networks beyond the announce limit, dropped.
    pub truncated: usize,
}

/// Addresses whose interface is underlay: literal connect targets (their
/// proxy's when they use one) and specific listen addresses. Names are
/// left to the default-route rule: resolving them here would make the
/// answer depend on DNS at start.
pub fn underlay_addresses(cfg: &NetdConfig) -> (Vec<IpAddr>, Vec<IpAddr>) {
    let peers = cfg
        .connect
        .iter()
        .filter_map(|c| match c.proxy() {
            Some(p) => p.url.host().parse::<IpAddr>().ok(),
            None => c.address().parse::<SocketAddr>().ok().map(|a| a.ip()),
        })
        .collect();
    let listen = cfg
        .listen
        .iter()
        .map(|l| l.address.ip())
        .filter(|ip| !ip.is_unspecified())
        .collect();
    (peers, listen)
}

/// The kernel's choice for `addr`: the longest usable prefix holding it.
fn route_for<'a>(routes: &'a [KernelRoute], addr: &IpAddr) -> Option<&'a KernelRoute> {
    routes
        .iter()
        .filter(|r| r.flags & RTF_REJECT == 0 && r.net.contains(addr))
        .max_by_key(|r| r.net.prefix_len())
}

/// Not a network to offer anyone: multicast, link-local, loopback.
fn never_announced(net: &IpNet) -> bool {
    match net {
        IpNet::V4(n) => {
            let a = n.network();
            a.is_multicast() || a.is_link_local() || a.is_loopback() || a.is_broadcast()
        }
        IpNet::V6(n) => {
            let s = n.network().segments()[0];
            s & 0xff00 == 0xff00 || s & 0xffc0 == 0xfe80 || n.network().is_loopback()
        }
    }
}

/// Decides what to announce from the tables' entries. Pure, so that every
/// rule is tested without a kernel.
pub fn discover(
    routes: &[KernelRoute],
    tun: Option<&str>,
    peers: &[IpAddr],
    listen: &[IpAddr],
    exclude: &AnnounceExclude,
) -> Discovery {
    let mut d = Discovery::default();
    let mut mark = |iface: &str, why: Underlay| {
        d.underlay.entry(iface.to_string()).or_insert(why);
    };
    for r in routes {
        if r.iface == "lo" {
            mark(&r.iface, Underlay::Loopback);
        } else if Some(r.iface.as_str()) == tun {
            mark(&r.iface, Underlay::Tunnel);
        } else if r.net.prefix_len() == 0 && r.flags & RTF_REJECT == 0 {
            mark(&r.iface, Underlay::DefaultRoute);
        }
    }
    for (addrs, why) in [(peers, Underlay::Peer), (listen, Underlay::Listen)] {
        for a in addrs {
            if let Some(r) = route_for(routes, a) {
                mark(&r.iface, why);
            }
        }
    }
    let mut out: Vec<IpNet> = Vec::new();
    for r in routes {
        let usable = r.gateway.is_none()
            && r.flags & (RTF_REJECT | RTF_LOCAL | RTF_ANYCAST | RTF_CACHE) == 0
            && r.net.prefix_len() > 0
            && !never_announced(&r.net);
        if !usable || d.underlay.contains_key(&r.iface) {
            continue;
        }
        if exclude.excludes(&r.iface, &r.net) {
            d.excluded.push(r.net);
            continue;
        }
        out.push(r.net);
    }
    out.sort();
    out.dedup();
    d.excluded.sort();
    d.excluded.dedup();
    let max = sapper_shared::routing::MAX_ROUTES;
    d.truncated = out.len().saturating_sub(max);
    out.truncate(max);
    d.routes = out;
    d
}

/// What `cfg` announces now: its list, or the networks discovery finds in
/// `tables` (logged). Called at start and, for a reload, with the new
/// config; `None` when the tables could not be read (keep what runs).
pub fn announced(cfg: &NetdConfig, tables: &RouteTables) -> Option<Vec<IpNet>> {
    let exclude = match &cfg.announce_routes {
        Announce::Routes(r) => return Some(r.as_slice().to_vec()),
        Announce::Interfaces(x) => x,
    };
    let Some(routes) = tables.routes() else {
        tracing::warn!(
            sapper_event = "announce_interfaces_failed",
            "announce_routes = \"interfaces\": the routing tables in /proc could not be read"
        );
        return None;
    };
    let (peers, listen) = underlay_addresses(cfg);
    let d = discover(&routes, tables.tun(), &peers, &listen, exclude);
    let list = |v: &[IpNet]| {
        v.iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(" ")
    };
    let underlay = d
        .underlay
        .iter()
        .map(|(i, why)| format!("{i} ({})", why.as_str()))
        .collect::<Vec<_>>()
        .join(", ");
    tracing::info!(
        sapper_event = "announce_interfaces",
        routes = %list(&d.routes),
        left_out = %underlay,
        excluded = %list(&d.excluded),
        "announcing the networks of this node's interfaces: [{}]",
        list(&d.routes)
    );
    if d.truncated > 0 {
        tracing::warn!(
            sapper_event = "announce_interfaces_truncated",
            dropped = d.truncated,
            "more interface networks than peers accept ({}); the rest are not announced",
            sapper_shared::routing::MAX_ROUTES
        );
    }
    Some(d.routes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(iface: &str, net: &str, gw: Option<&str>, flags: u32) -> KernelRoute {
        KernelRoute {
            iface: iface.into(),
            net: net.parse().unwrap(),
            gateway: gw.map(|g| g.parse().unwrap()),
            flags,
        }
    }

    fn nets(v: &[&str]) -> Vec<IpNet> {
        v.iter().map(|s| s.parse().unwrap()).collect()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    /// An exit: eth0 to the internet (default route), eth1 to a peer's
    /// network reached through a gateway, lan0/lan1 its LANs, sap0 the TUN.
    fn table() -> Vec<KernelRoute> {
        vec![
            r("eth0", "0.0.0.0/0", Some("192.0.2.1"), 3),
            r("eth0", "192.0.2.0/24", None, 1),
            r("eth1", "198.51.100.0/24", None, 1),
            r("eth1", "203.0.113.0/24", Some("198.51.100.1"), 3),
            r("lan0", "10.30.0.0/24", None, 1),
            r("lan1", "10.40.0.0/24", None, 1),
            r("lan1", "169.254.0.0/16", None, 1),
            r("sap0", "10.99.0.0/24", None, 1),
            r("sap0", "10.20.0.0/24", None, 1),
            r("lan0", "fd30::/64", None, 1),
            r("lan0", "fe80::/64", None, 1),
            r("lan0", "fd30::1/128", None, 0x8020_0001),
            r("lan0", "fd30::/128", None, 0x0030_0001),
            r("lan0", "ff00::/8", None, 1),
            r("eth0", "::/0", Some("fe80::1"), 3),
            r("lo", "::/0", None, 0x0020_0200),
            r("lo", "::1/128", None, 0x8020_0001),
        ]
    }

    #[test]
    fn lans_only_not_underlay_tunnel_or_link_local() {
        let d = discover(
            &table(),
            Some("sap0"),
            &[ip("203.0.113.9")],
            &[],
            &AnnounceExclude::default(),
        );
        assert_eq!(
            d.routes,
            nets(&["10.30.0.0/24", "10.40.0.0/24", "fd30::/64"])
        );
        assert_eq!(d.underlay["eth0"], Underlay::DefaultRoute);
        assert_eq!(d.underlay["eth1"], Underlay::Peer);
        assert_eq!(d.underlay["sap0"], Underlay::Tunnel);
        assert_eq!(d.underlay["lo"], Underlay::Loopback);
    }

    #[test]
    fn listen_address_and_operator_exclusions() {
        let exclude = AnnounceExclude {
            prefixes: nets(&["fd30::/16"]),
            interfaces: vec![],
        };
        let d = discover(&table(), Some("sap0"), &[], &[ip("10.40.0.1")], &exclude);
        assert_eq!(d.routes, nets(&["10.30.0.0/24", "198.51.100.0/24"]));
        assert_eq!(d.underlay["lan1"], Underlay::Listen);
        assert_eq!(d.excluded, nets(&["fd30::/64"]));
        let exclude = AnnounceExclude {
            prefixes: vec![],
            interfaces: vec!["lan0".into()],
        };
        let d = discover(&table(), Some("sap0"), &[], &[], &exclude);
        assert_eq!(d.routes, nets(&["10.40.0.0/24", "198.51.100.0/24"]));
    }

    #[test]
    fn a_peer_inside_a_lan_makes_it_underlay() {
        let d = discover(
            &table(),
            None,
            &[ip("10.30.0.7")],
            &[],
            &AnnounceExclude::default(),
        );
        // Without a TUN name sap0 is just another interface.
        assert_eq!(
            d.routes,
            nets(&[
                "10.20.0.0/24",
                "10.40.0.0/24",
                "10.99.0.0/24",
                "198.51.100.0/24"
            ])
        );
        assert_eq!(d.underlay["lan0"], Underlay::Peer);
    }

    #[test]
    fn no_more_than_peers_accept() {
        let many: Vec<KernelRoute> = (0..sapper_shared::routing::MAX_ROUTES + 5)
            .map(|i| r("lan0", &format!("10.{}.{}.0/24", i / 256, i % 256), None, 1))
            .collect();
        let d = discover(&many, None, &[], &[], &AnnounceExclude::default());
        assert_eq!(d.routes.len(), sapper_shared::routing::MAX_ROUTES);
        assert_eq!(d.truncated, 5);
    }
}
