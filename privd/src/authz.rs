//! The whole of privd's policy: two pure functions, [`admit`] for a new
//! connection and [`decide`] for a request, over what privd holds
//! ([`Policy`]), who asks (the SO_PEERCRED uid) and what is asked (the
//! decoded request body). No socket, no kernel, no clock: every rule is unit
//! tested below, and server.rs only carries out what they return.

use ipnet::IpNet;
use sapper_shared::proto::privd::{priv_request::Body, ErrorCode, RouteChange};
use std::collections::BTreeSet;

/// Connections netd's uid may hold at once (its reserved slots).
pub const NETD_CONNECTIONS: usize = 8;
/// Connections any other uid may hold at once.
pub const OTHER_PER_UID: usize = 2;
/// Connections all other uids together may hold at once.
pub const OTHER_TOTAL: usize = 16;

/// What privd holds and was configured with.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    /// The one uid netd runs as.
    pub netd_uid: u32,
    /// privd.tun.allowed_routes.
    pub allowed: Vec<IpNet>,
    /// privd.tun.routes: the operator's.
    pub configured: BTreeSet<IpNet>,
    /// Every route privd installed (configured ones included).
    pub installed: BTreeSet<IpNet>,
    /// privd.tun.max_routes: how many routes netd may hold.
    pub max_routes: usize,
}

/// What to carry out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Send a duplicate of the TUN fd.
    OpenTun,
    /// Add the route (an already installed one is re-confirmed).
    AddRoute(IpNet, IpNet),
    /// Remove a route privd installed for netd.
    DelRoute(IpNet, IpNet),
    /// Answer with the status.
    Status,
}

/// Why a request was refused before anything was attempted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The peer is not netd.
    #[error("permission denied: only netd's uid may use privd")]
    NotNetd,
    /// The caller holds all the connections it may.
    #[error("too many connections from uid {0}")]
    TooManyConnections(u32),
    /// The request could not be understood.
    #[error("unknown or malformed request")]
    Malformed,
    /// The text is not a CIDR prefix.
    #[error("not a CIDR prefix")]
    Unparsable,
    /// Bits set below the prefix length.
    #[error("prefix has host bits set (did you mean {0}?)")]
    HostBits(IpNet),
    /// Not inside any allowed prefix.
    #[error("{0} is not inside privd.tun.allowed_routes")]
    NotAllowed(IpNet),
    /// Configured in privd.tun.routes.
    #[error("{0} is configured in privd.tun.routes; privd keeps it")]
    Configured(IpNet),
    /// Removal of a route privd did not install.
    #[error("{0} is not a route privd installed")]
    NotInstalled(IpNet),
    /// netd already holds max_routes routes.
    #[error("netd already holds {0} routes (privd.tun.max_routes)")]
    RouteLimit(usize),
}

impl Refusal {
    /// The typed code sent with the refusal.
    pub fn code(&self) -> ErrorCode {
        use Refusal::*;
        match self {
            NotNetd | TooManyConnections(_) => ErrorCode::PermissionDenied,
            Malformed => ErrorCode::Malformed,
            Unparsable | HostBits(_) | NotAllowed(_) => ErrorCode::RouteNotAllowed,
            Configured(_) => ErrorCode::RouteConfigured,
            NotInstalled(_) => ErrorCode::RouteNotInstalled,
            RouteLimit(_) => ErrorCode::RouteLimit,
        }
    }
}

/// Whether a new connection from `uid` gets a slot, given how many its uid,
/// and all uids but netd's together, hold now (the new one not counted):
/// netd's uid has [`NETD_CONNECTIONS`] slots of its own; any other uid at
/// most [`OTHER_PER_UID`], all of them together at most [`OTHER_TOTAL`]. So
/// no member of the socket group can lock netd out. `Ok(one_reply)`: true
/// (closed after one reply) for every uid but netd's.
pub fn admit(state: &Policy, uid: u32, own: usize, others: usize) -> Result<bool, Refusal> {
    let netd = uid == state.netd_uid;
    let room = match netd {
        true => own < NETD_CONNECTIONS,
        false => own < OTHER_PER_UID && others < OTHER_TOTAL,
    };
    let one_reply = !netd;
    room.then_some(one_reply)
        .ok_or(Refusal::TooManyConnections(uid))
}

/// Every decision on a request (`None`: empty, undecodable or of a kind this
/// privd does not know).
///
/// - Status is read-only and answers anyone who reached the socket (its mode
///   and group decide who that is). Everything else is netd's alone; root
///   gets nothing unless netd runs as root.
/// - Routes: only inside allowed_routes, never one in privd.tun.routes (a
///   netd that leaves the entry role cannot take the operator's routes
///   away), removals only of routes privd installed, and at most
///   max_routes of them.
pub fn decide(state: &Policy, uid: u32, req: Option<&Body>) -> Result<Action, Refusal> {
    let netd = uid == state.netd_uid;
    let (prefix, add) = match req {
        None => return Err(Refusal::Malformed),
        Some(Body::Status(_)) => return Ok(Action::Status),
        Some(_) if !netd => return Err(Refusal::NotNetd),
        Some(Body::OpenTun(_)) => return Ok(Action::OpenTun),
        Some(Body::RouteChange(RouteChange { prefix, add })) => (prefix, *add),
    };
    let net: IpNet = prefix.trim().parse().map_err(|_| Refusal::Unparsable)?;
    if net.trunc() != net {
        return Err(Refusal::HostBits(net.trunc()));
    }
    if state.configured.contains(&net) {
        return Err(Refusal::Configured(net));
    }
    let within = state.allowed.iter().find(|a| a.contains(&net));
    let within = *within.ok_or(Refusal::NotAllowed(net))?;
    let netds = state.installed.difference(&state.configured).count();
    match (add, state.installed.contains(&net)) {
        (true, true) => Ok(Action::AddRoute(net, within)),
        (true, false) if netds < state.max_routes => Ok(Action::AddRoute(net, within)),
        (true, false) => Err(Refusal::RouteLimit(state.max_routes)),
        (false, true) => Ok(Action::DelRoute(net, within)),
        (false, false) => Err(Refusal::NotInstalled(net)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Allowed 10.78/16, 10.80/16, fd80::/48; the operator's 10.78.0.0/24;
    /// netd holds `installed` of at most `max`. Each case reads
    /// `WHO REQUEST => decision [code]`: WHO is root, netd or other;
    /// REQUEST is status, tun, junk, +PREFIX (add), -PREFIX (remove) or
    /// connect:OWN:OTHERS; the decision is its Debug text, then a refusal's
    /// ErrorCode.
    fn check(max: usize, installed: &[&str], cases: &[&str]) {
        let nets = |l: &[&str]| {
            l.iter()
                .map(|s| s.parse().unwrap())
                .collect::<BTreeSet<_>>()
        };
        let configured = nets(&["10.78.0.0/24"]);
        let state = Policy {
            netd_uid: 998,
            allowed: nets(&["10.78.0.0/16", "10.80.0.0/16", "fd80::/48"])
                .into_iter()
                .collect(),
            installed: &configured | &nets(installed),
            configured,
            max_routes: max,
        };
        for case in cases {
            let (asked, want) = case.split_once(" => ").unwrap();
            let (who, what) = asked.split_once(' ').unwrap();
            let uid = match who {
                "root" => 0,
                "netd" => 998,
                _ => 4242,
            };
            let req = match what {
                "status" => Some(Body::Status(Default::default())),
                "tun" => Some(Body::OpenTun(Default::default())),
                "junk" => None,
                p => Some(Body::RouteChange(RouteChange {
                    prefix: p[1..].into(),
                    add: p.starts_with('+'),
                })),
            };
            let got = match what.split(':').collect::<Vec<_>>()[..] {
                ["connect", own, others] => {
                    admit(&state, uid, own.parse().unwrap(), others.parse().unwrap())
                        .map(|one_reply| format!("Admit one_reply={one_reply}"))
                }
                _ => decide(&state, uid, req.as_ref()).map(|a| format!("{a:?}")),
            };
            let got = got.unwrap_or_else(|r| format!("{r:?} {:?}", r.code()));
            assert_eq!(got, want, "{case}");
        }
    }

    #[test]
    fn every_rule() {
        check(
            2,
            &["10.80.1.0/24"],
            &[
                // Status is read-only and open to anyone who reached the socket.
                "netd status => Status",
                "other status => Status",
                "other junk => Malformed Malformed",
                // Everything else is netd's alone; root is not netd.
                "netd tun => OpenTun",
                "root tun => NotNetd PermissionDenied",
                "root +10.80.2.0/24 => NotNetd PermissionDenied",
                "other -10.80.1.0/24 => NotNetd PermissionDenied",
                // Inside the allow-list: granted (re-adding one privd holds too).
                "netd +10.80.2.0/24 => AddRoute(10.80.2.0/24, 10.80.0.0/16)",
                "netd + 10.80.2.0/24  => AddRoute(10.80.2.0/24, 10.80.0.0/16)",
                "netd +fd80:0:0:5::/64 => AddRoute(fd80:0:0:5::/64, fd80::/48)",
                "netd +10.80.1.0/24 => AddRoute(10.80.1.0/24, 10.80.0.0/16)",
                // Outside or malformed: refused.
                "netd +10.0.0.0/8 => NotAllowed(10.0.0.0/8) RouteNotAllowed",
                "netd +11.0.0.0/8 => NotAllowed(11.0.0.0/8) RouteNotAllowed",
                "netd +::/0 => NotAllowed(::/0) RouteNotAllowed",
                "netd +10.0.0.1 => Unparsable RouteNotAllowed",
                "netd +10.0.0.0/33 => Unparsable RouteNotAllowed",
                "netd +10.80.2.3/16 => HostBits(10.80.0.0/16) RouteNotAllowed",
                // The operator's routes stay the operator's.
                "netd +10.78.0.0/24 => Configured(10.78.0.0/24) RouteConfigured",
                "netd -10.78.0.0/24 => Configured(10.78.0.0/24) RouteConfigured",
                // netd removes only what privd added.
                "netd -10.80.1.0/24 => DelRoute(10.80.1.0/24, 10.80.0.0/16)",
                "netd -10.80.9.0/24 => NotInstalled(10.80.9.0/24) RouteNotInstalled",
                // Connections: others two each and sixteen in all, one reply
                // each; netd its own eight, whatever the others hold.
                "other connect:1:15 => Admit one_reply=true",
                "other connect:2:5 => TooManyConnections(4242) PermissionDenied",
                "other connect:0:16 => TooManyConnections(4242) PermissionDenied",
                "root connect:1:0 => Admit one_reply=true",
                "netd connect:7:16 => Admit one_reply=false",
                "netd connect:8:0 => TooManyConnections(998) PermissionDenied",
            ],
        );
        // At most max_routes; re-adding and removing still work at the cap.
        check(
            2,
            &["10.80.1.0/24", "10.80.2.0/24"],
            &[
                "netd +10.80.3.0/24 => RouteLimit(2) RouteLimit",
                "netd +10.80.2.0/24 => AddRoute(10.80.2.0/24, 10.80.0.0/16)",
                "netd -10.80.2.0/24 => DelRoute(10.80.2.0/24, 10.80.0.0/16)",
            ],
        );
        // Configured routes do not count against netd's cap.
        check(
            1,
            &[],
            &["netd +10.80.3.0/24 => AddRoute(10.80.3.0/24, 10.80.0.0/16)"],
        );
        check(0, &[], &["netd +10.80.3.0/24 => RouteLimit(0) RouteLimit"]);
    }
}
