//! The userspace exit's egress policy: which destinations the tunnel may reach
//! through the exit host's own sockets. Pure matching, no I/O; netd's exit
//! asks [`Policy::check`] once per new flow.
//!
//! Rules are written as strings in `[netd.exit]`:
//!
//! ```text
//! [PROTO] PREFIX [port N | port N-M]
//! ```
//!
//! `PROTO` is `tcp`, `udp` or `icmp` (absent: every protocol); `PREFIX` is an
//! address or CIDR prefix, IPv4 or IPv6; a port range only matches TCP and UDP.
//! Examples: `"10.0.0.0/8"`, `"tcp 192.0.2.10 port 22"`,
//! `"udp fd00::/8 port 5000-5999"`.
//!
//! Evaluation: a deny rule (configured, or built in while `deny_local` is on)
//! beats everything; otherwise an empty allow list allows, and a non-empty one
//! allows only what it matches. IPv4-mapped IPv6 destinations
//! (`::ffff:a.b.c.d`) are judged as the IPv4 address they stand for.

use ipnet::IpNet;
use std::fmt;
use std::net::IpAddr;

/// Transport protocol of a flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Proto {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
    /// ICMP or ICMPv6 echo.
    Icmp,
}

impl Proto {
    /// Lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
            Proto::Icmp => "icmp",
        }
    }
}

impl fmt::Display for Proto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One allow or deny rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// Only this protocol, or any.
    pub proto: Option<Proto>,
    /// Destination prefix.
    pub net: IpNet,
    /// Inclusive destination port range; `None` matches every port (and ICMP).
    pub ports: Option<(u16, u16)>,
}

impl Rule {
    /// Parses `[PROTO] PREFIX [port N[-M]]`.
    pub fn parse(s: &str) -> Result<Rule, String> {
        let words: Vec<&str> = s.split_whitespace().collect();
        let (proto, rest) = match words.first().copied() {
            Some("tcp") => (Some(Proto::Tcp), &words[1..]),
            Some("udp") => (Some(Proto::Udp), &words[1..]),
            Some("icmp") => (Some(Proto::Icmp), &words[1..]),
            Some(_) => (None, &words[..]),
            None => return Err("empty rule".into()),
        };
        let (net, rest) = match rest.split_first() {
            Some((p, rest)) => (parse_prefix(p)?, rest),
            None => return Err(format!("{s:?}: no prefix")),
        };
        let ports = match rest {
            [] => None,
            ["port", range] => Some(parse_ports(range)?),
            _ => {
                return Err(format!(
                    "{s:?}: expected \"[tcp|udp|icmp] PREFIX [port N[-M]]\""
                ))
            }
        };
        if ports.is_some() && proto == Some(Proto::Icmp) {
            return Err(format!("{s:?}: ICMP has no ports"));
        }
        Ok(Rule { proto, net, ports })
    }

    /// Whether the rule covers this flow.
    pub fn matches(&self, proto: Proto, dst: IpAddr, port: u16) -> bool {
        if self.proto.is_some_and(|p| p != proto) {
            return false;
        }
        if let Some((lo, hi)) = self.ports {
            if proto == Proto::Icmp || port < lo || port > hi {
                return false;
            }
        }
        self.net.contains(&dst)
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(p) = self.proto {
            write!(f, "{p} ")?;
        }
        write!(f, "{}", self.net)?;
        match self.ports {
            Some((lo, hi)) if lo == hi => write!(f, " port {lo}"),
            Some((lo, hi)) => write!(f, " port {lo}-{hi}"),
            None => Ok(()),
        }
    }
}

fn parse_prefix(s: &str) -> Result<IpNet, String> {
    if let Ok(n) = s.parse::<IpNet>() {
        return Ok(n.trunc());
    }
    s.parse::<IpAddr>()
        .map(IpNet::from)
        .map_err(|_| format!("{s:?} is not an address or CIDR prefix"))
}

fn parse_ports(s: &str) -> Result<(u16, u16), String> {
    let port = |p: &str| {
        p.parse::<u16>()
            .ok()
            .filter(|p| *p > 0)
            .ok_or_else(|| format!("bad port {p:?} (1-65535)"))
    };
    let (lo, hi) = match s.split_once('-') {
        Some((a, b)) => (port(a)?, port(b)?),
        None => {
            let p = port(s)?;
            (p, p)
        }
    };
    if lo > hi {
        return Err(format!("port range {s:?} is reversed"));
    }
    Ok((lo, hi))
}

/// Destinations a userspace exit refuses unless `deny_local = false`: the
/// exit host's own loopback, link-local, "this host" and multicast /
/// broadcast ranges. Typed constants, so that a mistyped entry cannot be
/// dropped at run time: it does not compile (`new_assert` rejects a bad
/// prefix length during constant evaluation).
pub const LOCAL_DENY: &[IpNet] = &[
    v4(0, 0, 0, 0, 8),
    v4(127, 0, 0, 0, 8),
    v4(169, 254, 0, 0, 16),
    v4(224, 0, 0, 0, 4),
    v4(255, 255, 255, 255, 32),
    v6(0, 128),
    v6(1, 128),
    v6(0xfe80 << 112, 10),
    v6(0xff00 << 112, 8),
];

const fn v4(a: u8, b: u8, c: u8, d: u8, len: u8) -> IpNet {
    IpNet::V4(ipnet::Ipv4Net::new_assert(
        std::net::Ipv4Addr::new(a, b, c, d),
        len,
    ))
}

const fn v6(addr: u128, len: u8) -> IpNet {
    IpNet::V6(ipnet::Ipv6Net::new_assert(
        std::net::Ipv6Addr::from_bits(addr),
        len,
    ))
}

/// Why a flow was refused or let through.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Allowed.
    Allow,
    /// Refused by the configured deny rule with this index.
    DenyRule(usize),
    /// Refused by the built-in local deny list (`deny_local`).
    DenyLocal,
    /// The allow list is not empty and nothing in it matched.
    NotAllowed,
}

impl Verdict {
    /// True for [`Verdict::Allow`].
    pub fn allowed(&self) -> bool {
        *self == Verdict::Allow
    }
}

/// A rule that does not parse: which list, which entry, why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{list}[{index}]: {message}")]
pub struct RuleError {
    /// `allow` or `deny`.
    pub list: &'static str,
    /// Position in the list.
    pub index: usize,
    /// What is wrong.
    pub message: String,
}

/// The compiled policy.
#[derive(Debug, Clone)]
pub struct Policy {
    allow: Vec<Rule>,
    deny: Vec<Rule>,
    local: Vec<IpNet>,
}

impl Policy {
    /// Builds a policy from parsed rules.
    pub fn new(allow: Vec<Rule>, deny: Vec<Rule>, deny_local: bool) -> Policy {
        let local = if deny_local {
            LOCAL_DENY.to_vec()
        } else {
            Vec::new()
        };
        Policy { allow, deny, local }
    }

    /// Parses rule strings; the error names the list and index.
    pub fn parse(allow: &[String], deny: &[String], deny_local: bool) -> Result<Policy, RuleError> {
        let parse_all = |list: &[String], name: &'static str| {
            list.iter()
                .enumerate()
                .map(|(index, s)| {
                    Rule::parse(s).map_err(|message| RuleError {
                        list: name,
                        index,
                        message,
                    })
                })
                .collect::<Result<Vec<_>, _>>()
        };
        Ok(Policy::new(
            parse_all(allow, "allow")?,
            parse_all(deny, "deny")?,
            deny_local,
        ))
    }

    /// The deny rules, for log messages.
    pub fn deny_rules(&self) -> &[Rule] {
        &self.deny
    }

    /// Judges a new flow to `dst` (`port` is ignored for ICMP).
    pub fn check(&self, proto: Proto, dst: IpAddr, port: u16) -> Verdict {
        let dst = canonical(dst);
        // A NAT64 address (64:ff9b::/96) reaches the IPv4 address inside
        // it: what is denied for that address is denied in this form too.
        let embedded = nat64(dst);
        if let Some(i) = self.deny.iter().position(|r| {
            r.matches(proto, dst, port) || embedded.is_some_and(|v4| r.matches(proto, v4, port))
        }) {
            return Verdict::DenyRule(i);
        }
        if self
            .local
            .iter()
            .any(|n| n.contains(&dst) || embedded.is_some_and(|v4| n.contains(&v4)))
        {
            return Verdict::DenyLocal;
        }
        if self.allow.is_empty() || self.allow.iter().any(|r| r.matches(proto, dst, port)) {
            Verdict::Allow
        } else {
            Verdict::NotAllowed
        }
    }
}

/// The IPv4 address inside a NAT64 well-known-prefix address (RFC 6052,
/// 64:ff9b::/96).
fn nat64(a: IpAddr) -> Option<IpAddr> {
    match a {
        IpAddr::V6(v6) if v6.segments()[..6] == [0x64, 0xff9b, 0, 0, 0, 0] => {
            let o = v6.octets();
            Some(IpAddr::V4(std::net::Ipv4Addr::new(
                o[12], o[13], o[14], o[15],
            )))
        }
        _ => None,
    }
}

/// IPv4-mapped IPv6 addresses as the IPv4 address they reach.
fn canonical(a: IpAddr) -> IpAddr {
    match a {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => a,
        },
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn rules_parse_and_print() {
        let r = Rule::parse("tcp 10.0.0.0/8 port 22").unwrap();
        assert_eq!(r.proto, Some(Proto::Tcp));
        assert_eq!(r.ports, Some((22, 22)));
        assert_eq!(r.to_string(), "tcp 10.0.0.0/8 port 22");
        let r = Rule::parse("  fd00::/8   port 5000-5999 ").unwrap();
        assert_eq!(r.proto, None);
        assert_eq!(r.to_string(), "fd00::/8 port 5000-5999");
        // Host bits are dropped, bare addresses are host routes.
        assert_eq!(
            Rule::parse("10.1.2.3/8").unwrap().net,
            "10.0.0.0/8".parse::<IpNet>().unwrap()
        );
        assert_eq!(Rule::parse("192.0.2.1").unwrap().net.prefix_len(), 32);
        for bad in [
            "",
            "tcp",
            "10.0.0.0/33",
            "nonsense",
            "10.0.0.0/8 port",
            "10.0.0.0/8 port 0",
            "10.0.0.0/8 port 9-3",
            "10.0.0.0/8 port 70000",
            "10.0.0.0/8 ports 22",
            "icmp 10.0.0.0/8 port 1",
            "10.0.0.0/8 port 1 extra",
        ] {
            assert!(Rule::parse(bad).is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn rule_matching() {
        let r = Rule::parse("udp 10.20.0.0/24 port 53").unwrap();
        assert!(r.matches(Proto::Udp, ip("10.20.0.9"), 53));
        assert!(!r.matches(Proto::Tcp, ip("10.20.0.9"), 53));
        assert!(!r.matches(Proto::Udp, ip("10.20.1.9"), 53));
        assert!(!r.matches(Proto::Udp, ip("10.20.0.9"), 54));
        let any = Rule::parse("10.20.0.0/24").unwrap();
        assert!(any.matches(Proto::Icmp, ip("10.20.0.9"), 0));
        assert!(!any.matches(Proto::Icmp, ip("fd00::1"), 0));
        // A port rule never matches ICMP, which has no ports.
        let ported = Rule::parse("10.20.0.0/24 port 1-65535").unwrap();
        assert!(!ported.matches(Proto::Icmp, ip("10.20.0.9"), 0));
    }

    #[test]
    fn default_policy_denies_local_only() {
        let p = Policy::new(vec![], vec![], true);
        for local in [
            "127.0.0.1",
            "127.9.9.9",
            "0.0.0.0",
            "169.254.169.254",
            "::1",
            "::",
            "fe80::1",
            "::ffff:127.0.0.1",
            "224.0.0.1",
            "ff02::1",
        ] {
            assert_eq!(
                p.check(Proto::Tcp, ip(local), 80),
                Verdict::DenyLocal,
                "{local}"
            );
        }
        for remote in ["10.20.0.2", "192.0.2.1", "fd20::2", "2001:db8::1"] {
            assert!(p.check(Proto::Udp, ip(remote), 53).allowed(), "{remote}");
        }
        // The NAT64 forms of denied IPv4 ranges are denied too.
        assert_eq!(
            p.check(Proto::Tcp, ip("64:ff9b::127.0.0.1"), 80),
            Verdict::DenyLocal
        );
        assert_eq!(
            p.check(Proto::Udp, ip("64:ff9b::a9fe:a9fe"), 80),
            Verdict::DenyLocal
        );
        // With deny_local off, loopback is reachable.
        let open = Policy::new(vec![], vec![], false);
        assert!(open.check(Proto::Tcp, ip("127.0.0.1"), 80).allowed());
    }

    /// Each built-in range probed at both of its edges and just outside
    /// them, from a list written independently of LOCAL_DENY: dropping an
    /// entry or narrowing one (224.0.0.0/4 to /8, say) fails here.
    #[test]
    fn every_local_deny_range_is_denied_to_its_edges() {
        let p = Policy::new(vec![], vec![], true);
        let denied = [
            "0.0.0.0",
            "0.255.255.255",
            "127.0.0.0",
            "127.255.255.255",
            "169.254.0.0",
            "169.254.255.255",
            "224.0.0.0",
            "239.255.255.255",
            "255.255.255.255",
            "::",
            "::1",
            "fe80::",
            "febf:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
            "ff00::",
            "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
            "::ffff:169.254.169.254",
        ];
        for a in denied {
            for proto in [Proto::Tcp, Proto::Udp, Proto::Icmp] {
                assert_eq!(p.check(proto, ip(a), 80), Verdict::DenyLocal, "{a}");
            }
        }
        let allowed = [
            "1.0.0.0",
            "126.255.255.255",
            "128.0.0.0",
            "169.253.255.255",
            "169.255.0.0",
            "223.255.255.255",
            "240.0.0.0",
            "255.255.255.254",
            "::2",
            "fe7f:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
            "fec0::",
            "feff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
        ];
        for a in allowed {
            assert!(p.check(Proto::Tcp, ip(a), 80).allowed(), "{a}");
        }
        assert_eq!(LOCAL_DENY.len(), 9, "a range was added: probe it above");
    }

    #[test]
    fn deny_beats_allow_and_allow_list_restricts() {
        let p = Policy::parse(
            &["10.0.0.0/8".into(), "udp 0.0.0.0/0 port 53".into()],
            &["tcp 10.20.0.2 port 22".into()],
            true,
        )
        .unwrap();
        assert_eq!(
            p.check(Proto::Tcp, ip("10.20.0.2"), 22),
            Verdict::DenyRule(0)
        );
        assert!(p.check(Proto::Tcp, ip("10.20.0.2"), 80).allowed());
        assert!(p.check(Proto::Udp, ip("192.0.2.1"), 53).allowed());
        assert_eq!(
            p.check(Proto::Udp, ip("192.0.2.1"), 54),
            Verdict::NotAllowed
        );
        assert_eq!(p.check(Proto::Icmp, ip("fd00::1"), 0), Verdict::NotAllowed);
        // An allow-everything rule does not reopen loopback.
        let p = Policy::parse(&["0.0.0.0/0".into()], &[], true).unwrap();
        assert_eq!(p.check(Proto::Tcp, ip("127.0.0.1"), 1), Verdict::DenyLocal);
        let e = Policy::parse(&[], &["ok 1.2.3.4".into(), "bad/99".into()], true);
        assert!(e.is_err());
        let e = Policy::parse(&[], &["1.2.3.4".into(), "bad/99".into()], true).unwrap_err();
        assert_eq!((e.list, e.index), ("deny", 1));
        assert!(e.to_string().starts_with("deny[1]:"), "{e}");
    }
}
