//! The whole of privd's policy: one pure function, [`decide`], over what
//! privd holds ([`State`]), who asks ([`Caller`]) and what is asked
//! ([`Request`]). No socket, no kernel, no clock: every rule is unit tested
//! below, and server.rs only carries out what [`decide`] returns.

use ipnet::IpNet;
use sapper_shared::proto::privd::ErrorCode;
use std::collections::BTreeSet;

/// Connections netd's uid may hold at once (its reserved slots).
pub const NETD_CONNECTIONS: usize = 8;
/// Connections any other uid may hold at once.
pub const OTHER_PER_UID: usize = 2;
/// Connections all other uids together may hold at once.
pub const OTHER_TOTAL: usize = 16;

/// What a caller asks, already decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// A new connection wants a slot.
    Connect,
    /// Hand out the TUN fd.
    OpenTun,
    /// Add (`add`) or remove one route on the TUN.
    RouteChange {
        /// The prefix as sent.
        prefix: String,
        /// Add or remove.
        add: bool,
    },
    /// Report what privd holds.
    Status,
    /// Empty, undecodable, oversize or of a kind this privd does not know.
    Unknown,
}

impl Request {
    /// The name used in audit records.
    pub fn as_str(&self) -> &'static str {
        match self {
            Request::Connect => "connect",
            Request::OpenTun => "open_tun",
            Request::RouteChange { .. } => "route_change",
            Request::Status => "status",
            Request::Unknown => "unknown",
        }
    }
}

/// Who asks: the uid from SO_PEERCRED, and how many connections that uid
/// and everyone else hold now (the new one not counted).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caller {
    /// SO_PEERCRED uid.
    pub uid: u32,
    /// Connections open from this uid.
    pub open_own: usize,
    /// Connections open from all uids other than netd's.
    pub open_others: usize,
}

/// What privd holds and was configured with.
#[derive(Debug, Clone, Copy)]
pub struct State<'a> {
    /// The one uid netd runs as.
    pub netd_uid: u32,
    /// privd.tun.allowed_routes.
    pub allowed: &'a [IpNet],
    /// privd.tun.routes: the operator's.
    pub configured: &'a BTreeSet<IpNet>,
    /// Every route privd installed (configured ones included).
    pub installed: &'a BTreeSet<IpNet>,
    /// privd.tun.max_routes: how many routes netd may hold.
    pub max_routes: usize,
}

/// What to carry out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Give the connection a slot; `one_reply` closes it after one reply.
    Admit {
        /// True for every uid but netd's.
        one_reply: bool,
    },
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
        match self {
            Refusal::NotNetd | Refusal::TooManyConnections(_) => ErrorCode::PermissionDenied,
            Refusal::Malformed => ErrorCode::Malformed,
            Refusal::Unparsable | Refusal::HostBits(_) | Refusal::NotAllowed(_) => {
                ErrorCode::RouteNotAllowed
            }
            Refusal::Configured(_) => ErrorCode::RouteConfigured,
            Refusal::NotInstalled(_) => ErrorCode::RouteNotInstalled,
            Refusal::RouteLimit(_) => ErrorCode::RouteLimit,
        }
    }
}

/// Every policy decision privd makes.
///
/// - Connections: netd's uid has [`NETD_CONNECTIONS`] slots of its own; any
///   other uid at most [`OTHER_PER_UID`], all of them together at most
///   [`OTHER_TOTAL`], each closed after one reply. So no member of the socket
///   group can lock netd out.
/// - Status is read-only and answers anyone who reached the socket (its mode
///   and group decide who that is). Everything else is netd's alone; root
///   gets nothing unless netd runs as root.
/// - Routes: only inside allowed_routes, never one in privd.tun.routes (a
///   netd that leaves the entry role cannot take the operator's routes
///   away), removals only of routes privd installed, and at most
///   max_routes of them.
pub fn decide(state: &State<'_>, caller: &Caller, req: &Request) -> Result<Action, Refusal> {
    let netd = caller.uid == state.netd_uid;
    match req {
        Request::Connect if netd => match caller.open_own < NETD_CONNECTIONS {
            true => Ok(Action::Admit { one_reply: false }),
            false => Err(Refusal::TooManyConnections(caller.uid)),
        },
        Request::Connect => {
            match caller.open_own < OTHER_PER_UID && caller.open_others < OTHER_TOTAL {
                true => Ok(Action::Admit { one_reply: true }),
                false => Err(Refusal::TooManyConnections(caller.uid)),
            }
        }
        Request::Unknown => Err(Refusal::Malformed),
        Request::Status => Ok(Action::Status),
        Request::OpenTun | Request::RouteChange { .. } if !netd => Err(Refusal::NotNetd),
        Request::OpenTun => Ok(Action::OpenTun),
        Request::RouteChange { prefix, add } => {
            let (net, within) = check_route(prefix, state.configured, state.allowed)?;
            let held = state.installed.contains(&net);
            match (add, held) {
                (true, true) => Ok(Action::AddRoute(net, within)),
                (true, false) => {
                    let netds = state.installed.difference(state.configured).count();
                    match netds < state.max_routes {
                        true => Ok(Action::AddRoute(net, within)),
                        false => Err(Refusal::RouteLimit(state.max_routes)),
                    }
                }
                (false, true) => Ok(Action::DelRoute(net, within)),
                (false, false) => Err(Refusal::NotInstalled(net)),
            }
        }
    }
}

/// Parses a requested prefix, keeps the operator's routes out and checks it
/// against the allow-list; returns the prefix and the allowed prefix that
/// contains it.
fn check_route(
    prefix: &str,
    configured: &BTreeSet<IpNet>,
    allowed: &[IpNet],
) -> Result<(IpNet, IpNet), Refusal> {
    let net: IpNet = prefix.trim().parse().map_err(|_| Refusal::Unparsable)?;
    if net.trunc() != net {
        return Err(Refusal::HostBits(net.trunc()));
    }
    if configured.contains(&net) {
        return Err(Refusal::Configured(net));
    }
    allowed
        .iter()
        .find(|a| a.contains(&net))
        .map(|within| (net, *within))
        .ok_or(Refusal::NotAllowed(net))
}

#[cfg(test)]
mod tests {
    use super::*;
    use Action::*;
    use ErrorCode as C;
    use Refusal::*;

    const NETD: u32 = 998;
    const OTHER: u32 = 4242;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    fn nets(list: &[&str]) -> BTreeSet<IpNet> {
        list.iter().map(|s| net(s)).collect()
    }

    fn rc(prefix: &str, add: bool) -> Request {
        Request::RouteChange {
            prefix: prefix.into(),
            add,
        }
    }

    /// Allowed 10.78/16, 10.80/16, fd80::/48; the operator's 10.78.0.0/24;
    /// netd holds `installed` of at most `max`.
    fn decide_with(
        max: usize,
        installed: &[&str],
        c: Caller,
        req: &Request,
    ) -> Result<Action, Refusal> {
        let allowed: Vec<IpNet> = nets(&["10.78.0.0/16", "10.80.0.0/16", "fd80::/48"])
            .into_iter()
            .collect();
        let configured = nets(&["10.78.0.0/24"]);
        let mut held = configured.clone();
        held.extend(nets(installed));
        let state = State {
            netd_uid: NETD,
            allowed: &allowed,
            configured: &configured,
            installed: &held,
            max_routes: max,
        };
        decide(&state, &c, req)
    }

    fn by(uid: u32) -> Caller {
        Caller {
            uid,
            open_own: 0,
            open_others: 0,
        }
    }

    /// Each case: `WHO REQUEST => Debug of the decision`, where WHO is
    /// root, netd or other and REQUEST is status, tun, junk, +PREFIX (add)
    /// or -PREFIX (remove).
    fn check(max: usize, installed: &[&str], cases: &[&str]) {
        for case in cases {
            let (asked, want) = case.split_once(" => ").unwrap();
            let (who, what) = asked.split_once(' ').unwrap();
            let uid = match who {
                "root" => 0,
                "netd" => NETD,
                _ => OTHER,
            };
            let req = match what {
                "status" => Request::Status,
                "tun" => Request::OpenTun,
                "junk" => Request::Unknown,
                p => rc(&p[1..], p.starts_with('+')),
            };
            let got = decide_with(max, installed, by(uid), &req);
            assert_eq!(format!("{got:?}"), want, "{case}");
        }
    }

    #[test]
    fn every_rule() {
        check(
            2,
            &["10.80.1.0/24"],
            &[
                // Status is read-only and open to anyone who reached the socket.
                "root status => Ok(Status)",
                "netd status => Ok(Status)",
                "other status => Ok(Status)",
                "netd junk => Err(Malformed)",
                "other junk => Err(Malformed)",
                // Everything else is netd's alone; root is not netd.
                "netd tun => Ok(OpenTun)",
                "root tun => Err(NotNetd)",
                "other tun => Err(NotNetd)",
                "root +10.80.2.0/24 => Err(NotNetd)",
                "other -10.80.1.0/24 => Err(NotNetd)",
                // Inside the allow-list: granted (re-adding one privd holds too).
                "netd +10.80.2.0/24 => Ok(AddRoute(10.80.2.0/24, 10.80.0.0/16))",
                "netd + 10.80.2.0/24  => Ok(AddRoute(10.80.2.0/24, 10.80.0.0/16))",
                "netd +fd80:0:0:5::/64 => Ok(AddRoute(fd80:0:0:5::/64, fd80::/48))",
                "netd +10.80.1.0/24 => Ok(AddRoute(10.80.1.0/24, 10.80.0.0/16))",
                // Outside or malformed: refused.
                "netd +0.0.0.0/0 => Err(NotAllowed(0.0.0.0/0))",
                "netd +10.0.0.0/8 => Err(NotAllowed(10.0.0.0/8))",
                "netd +11.0.0.0/8 => Err(NotAllowed(11.0.0.0/8))",
                "netd +::/0 => Err(NotAllowed(::/0))",
                "netd +10.0.0.1 => Err(Unparsable)",
                "netd + => Err(Unparsable)",
                "netd +10.0.0.0/33 => Err(Unparsable)",
                "netd +eth0 => Err(Unparsable)",
                "netd +10.80.2.3/16 => Err(HostBits(10.80.0.0/16))",
                // The operator's routes stay the operator's.
                "netd +10.78.0.0/24 => Err(Configured(10.78.0.0/24))",
                "netd -10.78.0.0/24 => Err(Configured(10.78.0.0/24))",
                // netd removes only what privd added.
                "netd -10.80.1.0/24 => Ok(DelRoute(10.80.1.0/24, 10.80.0.0/16))",
                "netd -10.80.9.0/24 => Err(NotInstalled(10.80.9.0/24))",
                "netd +10.80.3.0/24 => Ok(AddRoute(10.80.3.0/24, 10.80.0.0/16))",
            ],
        );
        // At most max_routes; re-adding and removing still work at the cap.
        check(
            2,
            &["10.80.1.0/24", "10.80.2.0/24"],
            &[
                "netd +10.80.3.0/24 => Err(RouteLimit(2))",
                "netd +10.80.2.0/24 => Ok(AddRoute(10.80.2.0/24, 10.80.0.0/16))",
                "netd -10.80.2.0/24 => Ok(DelRoute(10.80.2.0/24, 10.80.0.0/16))",
            ],
        );
        // Configured routes do not count against netd's cap.
        check(
            1,
            &[],
            &["netd +10.80.3.0/24 => Ok(AddRoute(10.80.3.0/24, 10.80.0.0/16))"],
        );
        check(0, &[], &["netd +10.80.3.0/24 => Err(RouteLimit(0))"]);
    }

    #[test]
    fn connection_slots_keep_netd_served() {
        let at = |uid, open_own, open_others| {
            decide_with(
                0,
                &[],
                Caller {
                    uid,
                    open_own,
                    open_others,
                },
                &Request::Connect,
            )
        };
        // Others: two each, sixteen in all, one reply each.
        assert_eq!(at(OTHER, 0, 0), Ok(Admit { one_reply: true }));
        assert_eq!(at(OTHER, 1, OTHER_TOTAL - 1), Ok(Admit { one_reply: true }));
        assert_eq!(at(OTHER, OTHER_PER_UID, 5), Err(TooManyConnections(OTHER)));
        assert_eq!(at(4243, 0, OTHER_TOTAL), Err(TooManyConnections(4243)));
        // netd: its own slots, whatever the others hold, kept open.
        assert_eq!(
            at(NETD, NETD_CONNECTIONS - 1, OTHER_TOTAL),
            Ok(Admit { one_reply: false })
        );
        assert_eq!(at(NETD, NETD_CONNECTIONS, 0), Err(TooManyConnections(NETD)));
    }

    #[test]
    fn refusals_carry_their_codes() {
        let n = net("10.0.0.0/8");
        let codes = [
            (NotNetd, C::PermissionDenied),
            (TooManyConnections(1), C::PermissionDenied),
            (Malformed, C::Malformed),
            (Unparsable, C::RouteNotAllowed),
            (HostBits(n), C::RouteNotAllowed),
            (NotAllowed(n), C::RouteNotAllowed),
            (Configured(n), C::RouteConfigured),
            (NotInstalled(n), C::RouteNotInstalled),
            (RouteLimit(2), C::RouteLimit),
        ];
        for (r, code) in codes {
            assert_eq!(r.code(), code, "{r}");
        }
    }
}
