//! Who may ask privd for what, and which routes may be granted. Everything
//! here is a pure function of the request, the peer and the configuration so
//! that the whole policy can be reviewed and unit tested without a socket.

use ipnet::IpNet;

/// The request kinds privd understands, plus one for everything else.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestKind {
    /// Hand out the TUN fd.
    OpenTun,
    /// Add or remove one route on the TUN.
    RouteChange,
    /// Report what privd holds.
    Status,
    /// Empty, undecodable or of a kind this privd does not know.
    Unknown,
}

impl RequestKind {
    /// The name used in audit records.
    pub fn as_str(self) -> &'static str {
        match self {
            RequestKind::OpenTun => "open_tun",
            RequestKind::RouteChange => "route_change",
            RequestKind::Status => "status",
            RequestKind::Unknown => "unknown",
        }
    }
}

/// Who may talk to privd. A struct rather than a bare uid so that, say, a
/// list of read-only status uids can be added without touching callers.
#[derive(Debug, Clone)]
pub struct AccessPolicy {
    /// The one uid netd runs as.
    pub netd_uid: u32,
}

/// Why a request was refused before anything was attempted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Denial {
    /// The peer is not netd.
    NotNetd,
    /// The request could not be understood.
    Malformed,
}

impl Denial {
    /// The text sent back to the peer and written to the audit log.
    ///
    /// The `permission denied:` prefix is part of the protocol: the client
    /// library maps it to its permission-denied error.
    pub fn message(self) -> &'static str {
        match self {
            Denial::NotNetd => "permission denied: only netd's uid may use privd",
            Denial::Malformed => "unknown or malformed request",
        }
    }
}

/// The outcome of [`authorize`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Go on and try the request.
    Allow,
    /// Refuse without doing anything.
    Deny(Denial),
}

/// Decides whether `peer_uid` may make a request of `kind`.
///
/// Status is read-only and answers anyone who can reach the socket (its mode
/// and group already decide who that is), so operators can run
/// `sapperctl privd status`. Everything that changes state is netd's alone.
/// Root gets no special treatment: a root shell that wants a route must go
/// through netd (or run netd as root, which makes netd_uid 0).
pub fn authorize(kind: RequestKind, peer_uid: u32, policy: &AccessPolicy) -> Decision {
    match kind {
        RequestKind::Unknown => Decision::Deny(Denial::Malformed),
        RequestKind::Status => Decision::Allow,
        RequestKind::OpenTun | RequestKind::RouteChange => {
            if peer_uid == policy.netd_uid {
                Decision::Allow
            } else {
                Decision::Deny(Denial::NotNetd)
            }
        }
    }
}

/// Why a route was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RouteRefusal {
    /// The text is not a CIDR prefix.
    #[error("not a CIDR prefix")]
    Unparsable,
    /// Bits are set below the prefix length; the kernel would reject or
    /// silently truncate it, so we refuse it outright.
    #[error("prefix has host bits set (did you mean {0}?)")]
    HostBits(IpNet),
    /// The prefix is not within any allowed prefix.
    #[error("{0} is not inside privd.tun.allowed_routes")]
    NotAllowed(IpNet),
}

/// Parses a requested prefix and checks it against the allow-list.
/// Returns the prefix and the allowed prefix that contains it.
pub fn check_route(prefix: &str, allowed: &[IpNet]) -> Result<(IpNet, IpNet), RouteRefusal> {
    let net: IpNet = prefix
        .trim()
        .parse()
        .map_err(|_| RouteRefusal::Unparsable)?;
    if net.trunc() != net {
        return Err(RouteRefusal::HostBits(net.trunc()));
    }
    if !sapper_shared::config::prefix_allowed(&net, allowed) {
        return Err(RouteRefusal::NotAllowed(net));
    }
    // prefix_allowed said yes, so one of them contains it.
    let within = allowed
        .iter()
        .find(|a| a.contains(&net))
        .copied()
        .ok_or(RouteRefusal::NotAllowed(net))?;
    Ok((net, within))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter().map(|s| s.parse().unwrap()).collect()
    }

    #[test]
    fn only_netd_uid_may_change_anything() {
        let p = AccessPolicy { netd_uid: 998 };
        for uid in [0, 998, 4242] {
            assert_eq!(authorize(RequestKind::Status, uid, &p), Decision::Allow);
        }
        for kind in [RequestKind::OpenTun, RequestKind::RouteChange] {
            assert_eq!(authorize(kind, 998, &p), Decision::Allow, "{kind:?}");
            assert_eq!(
                authorize(kind, 0, &p),
                Decision::Deny(Denial::NotNetd),
                "root is not netd"
            );
            assert_eq!(authorize(kind, 4242, &p), Decision::Deny(Denial::NotNetd));
        }
    }

    #[test]
    fn root_is_allowed_only_when_netd_is_root() {
        let p = AccessPolicy { netd_uid: 0 };
        assert_eq!(authorize(RequestKind::OpenTun, 0, &p), Decision::Allow);
        assert_eq!(
            authorize(RequestKind::OpenTun, 1, &p),
            Decision::Deny(Denial::NotNetd)
        );
    }

    #[test]
    fn unknown_requests_are_refused_for_everyone() {
        let p = AccessPolicy { netd_uid: 998 };
        for uid in [0, 998, 4242] {
            assert_eq!(
                authorize(RequestKind::Unknown, uid, &p),
                Decision::Deny(Denial::Malformed)
            );
        }
        assert!(Denial::NotNetd.message().starts_with("permission denied:"));
    }

    #[test]
    fn routes_inside_the_allow_list_are_granted() {
        let allowed = nets(&["10.0.0.0/8", "fd00:1::/32"]);
        let (net, within) = check_route("10.1.0.0/16", &allowed).unwrap();
        assert_eq!(net.to_string(), "10.1.0.0/16");
        assert_eq!(within.to_string(), "10.0.0.0/8");
        assert!(
            check_route("10.0.0.0/8", &allowed).is_ok(),
            "the whole prefix"
        );
        assert!(check_route("fd00:1:2::/48", &allowed).is_ok());
        assert!(check_route(" 10.9.9.0/24 ", &allowed).is_ok());
    }

    #[test]
    fn routes_outside_or_malformed_are_refused() {
        let allowed = nets(&["10.0.0.0/8"]);
        let refused = |p: &str| check_route(p, &allowed).unwrap_err();
        assert!(matches!(refused("0.0.0.0/0"), RouteRefusal::NotAllowed(_)));
        assert!(matches!(refused("10.0.0.0/7"), RouteRefusal::NotAllowed(_)));
        assert!(matches!(refused("11.0.0.0/8"), RouteRefusal::NotAllowed(_)));
        assert!(matches!(refused("::/0"), RouteRefusal::NotAllowed(_)));
        assert_eq!(refused("10.0.0.1"), RouteRefusal::Unparsable);
        assert_eq!(refused(""), RouteRefusal::Unparsable);
        assert_eq!(refused("10.0.0.0/33"), RouteRefusal::Unparsable);
        assert_eq!(refused("eth0"), RouteRefusal::Unparsable);
        assert_eq!(
            refused("10.1.2.3/16"),
            RouteRefusal::HostBits("10.1.0.0/16".parse().unwrap())
        );
        assert!(matches!(
            check_route("10.1.0.0/16", &[]),
            Err(RouteRefusal::NotAllowed(_))
        ));
    }
}
