//! `netd.announce_routes` and `netd.announce_exclude`: the prefixes a node
//! offers its peers, either listed or discovered from the node's own
//! interfaces (netd's `interfaces` module does the discovery; this module
//! only says what the operator asked for).

use super::{KeyError, RouteList};
use ipnet::IpNet;

/// What a node announces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Announce {
    /// `announce_routes = ["10.20.0.0/24", ...]` (or the key absent: none).
    Routes(RouteList),
    /// `announce_routes = "interfaces"`: the networks of this node's own
    /// interfaces, minus the underlay, the tunnel and `exclude`.
    Interfaces(AnnounceExclude),
}

impl Default for Announce {
    fn default() -> Self {
        Self::Routes(RouteList::default())
    }
}

impl Announce {
    /// The listed prefixes; empty for `Interfaces` (resolved by netd).
    pub fn listed(&self) -> &[IpNet] {
        match self {
            Self::Routes(r) => r.as_slice(),
            Self::Interfaces(_) => &[],
        }
    }

    /// `"interfaces"` or `"config"`: where the announced list comes from.
    pub fn source(&self) -> &'static str {
        match self {
            Self::Routes(_) => "config",
            Self::Interfaces(_) => "interfaces",
        }
    }
}

/// `netd.announce_exclude`: what discovery must leave out besides the
/// underlay and the tunnel.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AnnounceExclude {
    /// Networks overlapping one of these are not announced (a bare address
    /// counts as its host prefix).
    pub prefixes: Vec<IpNet>,
    /// Interfaces whose networks are not announced.
    pub interfaces: Vec<String>,
}

impl AnnounceExclude {
    /// Whether `net` on `iface` is excluded by the operator.
    pub fn excludes(&self, iface: &str, net: &IpNet) -> bool {
        self.interfaces.iter().any(|i| i == iface)
            || self
                .prefixes
                .iter()
                .any(|p| p.contains(net) || net.contains(p))
    }
}

/// What the word form accepts.
pub const INTERFACES: &str = "interfaces";

/// An interface name as the kernel allows it (IFNAMSIZ - 1 bytes, no '/',
/// no whitespace, not "." or "..").
fn interface_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 15
        && s != "."
        && s != ".."
        && !s.contains('/')
        && !s
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || c == ':')
}

fn exclude_entry(i: usize, s: &str) -> Result<Result<IpNet, String>, KeyError> {
    if let Ok(net) = s.parse::<IpNet>() {
        return Ok(Ok(net.trunc()));
    }
    if let Ok(addr) = s.parse::<std::net::IpAddr>() {
        return Ok(Ok(IpNet::from(addr)));
    }
    if interface_name(s) {
        return Ok(Err(s.to_string()));
    }
    Err(KeyError::invalid(
        format!("announce_exclude[{i}]"),
        format!("{s:?} is neither a CIDR prefix, an address nor an interface name"),
    ))
}

/// Types `announce_routes` (a TOML list or the word `"interfaces"`) and
/// `announce_exclude`.
pub fn parse(
    routes: Option<toml::Value>,
    exclude: Option<Vec<String>>,
) -> Result<Announce, KeyError> {
    let wrong = || {
        KeyError::invalid(
            "announce_routes",
            format!("expected a list of CIDR prefixes or {INTERFACES:?}"),
        )
    };
    match routes {
        Some(toml::Value::String(s)) if s == INTERFACES => {
            let mut out = AnnounceExclude::default();
            for (i, s) in exclude.unwrap_or_default().iter().enumerate() {
                match exclude_entry(i, s)? {
                    Ok(net) => out.prefixes.push(net),
                    Err(name) => out.interfaces.push(name),
                }
            }
            Ok(Announce::Interfaces(out))
        }
        Some(toml::Value::String(s)) => Err(KeyError::invalid(
            "announce_routes",
            format!("{s:?}: expected a list of CIDR prefixes or {INTERFACES:?}"),
        )),
        other => {
            if exclude.is_some() {
                return Err(KeyError::invalid(
                    "announce_exclude",
                    format!("goes with announce_routes = {INTERFACES:?}"),
                ));
            }
            let list = match other {
                None => Vec::new(),
                Some(toml::Value::Array(a)) => a
                    .into_iter()
                    .map(|v| match v {
                        toml::Value::String(s) => Ok(s),
                        _ => Err(wrong()),
                    })
                    .collect::<Result<Vec<_>, _>>()?,
                Some(_) => return Err(wrong()),
            };
            let prefixes = crate::routing::parse_prefixes(&list).map_err(|e| {
                use crate::routing::PrefixError;
                let message = match e {
                    PrefixError::TooMany(_) => format!(
                        "at most {} prefixes (peers refuse a Handshake with more)",
                        crate::routing::MAX_ROUTES
                    ),
                    PrefixError::NotAPrefix(p) => format!("{p:?} is not a CIDR prefix"),
                };
                KeyError::invalid("announce_routes", message)
            })?;
            RouteList::new(prefixes)
                .map(Announce::Routes)
                .ok_or_else(wrong)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> toml::Value {
        toml::from_str::<toml::Table>(&format!("x = {s}")).unwrap()["x"].clone()
    }

    #[test]
    fn word_list_and_errors() {
        assert_eq!(parse(None, None).unwrap(), Announce::default());
        let Announce::Routes(r) = parse(Some(v("[\"10.0.0.0/24\"]")), None).unwrap() else {
            panic!()
        };
        assert_eq!(r.as_slice(), &["10.0.0.0/24".parse::<IpNet>().unwrap()]);
        let a = parse(
            Some(v("\"interfaces\"")),
            Some(vec![
                "10.1.2.3/16".into(),
                "192.0.2.7".into(),
                "eth2".into(),
            ]),
        )
        .unwrap();
        let Announce::Interfaces(x) = &a else {
            panic!()
        };
        assert_eq!(
            x.prefixes,
            vec![
                "10.1.0.0/16".parse::<IpNet>().unwrap(),
                "192.0.2.7/32".parse().unwrap()
            ]
        );
        assert_eq!(x.interfaces, vec!["eth2".to_string()]);
        assert!(x.excludes("eth2", &"10.9.0.0/24".parse().unwrap()));
        assert!(x.excludes("eth0", &"10.1.5.0/24".parse().unwrap()));
        assert!(x.excludes("eth0", &"10.0.0.0/8".parse().unwrap()));
        assert!(x.excludes("eth0", &"192.0.2.0/24".parse().unwrap()));
        assert!(!x.excludes("eth0", &"10.2.0.0/24".parse().unwrap()));
        assert_eq!(a.source(), "interfaces");
        assert!(a.listed().is_empty());

        for (routes, exclude, key, text) in [
            ("\"everything\"", None, "announce_routes", "\"everything\""),
            ("3", None, "announce_routes", "expected a list"),
            ("[1]", None, "announce_routes", "expected a list"),
            ("[\"10.0.0.0/33\"]", None, "announce_routes", "not a CIDR"),
            (
                "[\"10.0.0.0/8\"]",
                Some(vec!["eth0".to_string()]),
                "announce_exclude",
                "goes with",
            ),
            (
                "\"interfaces\"",
                Some(vec!["eth0".to_string(), "not an/interface".into()]),
                "announce_exclude[1]",
                "neither",
            ),
        ] {
            let e = parse(Some(v(routes)), exclude).unwrap_err();
            assert_eq!(e.key, key, "{routes}");
            assert!(e.to_string().contains(text), "{e}");
        }
    }
}
