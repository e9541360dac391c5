//! An HTTP CONNECT proxy for the WebSocket client (`proxy` of a
//! `[[netd.connect]]` entry, or `HTTPS_PROXY`), and `NO_PROXY` matching.
//!
//! Only `http://host[:port]`: the proxy sees a CONNECT line and then the
//! TLS bytes of the Sapper link, so TLS to the proxy would add nothing the
//! link's own TLS does not have. Credentials are never part of the URL (it
//! sits in the config, the environment or a process listing): they come
//! from `proxy_credentials_file`.

use ipnet::IpNet;
use std::fmt;
use std::net::IpAddr;

/// Port when the URL names none (HTTP's).
const DEFAULT_PORT: u16 = 80;

/// A parsed `http://host:port` proxy address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyUrl {
    host: String,
    port: u16,
}

/// Why a proxy URL is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProxyUrlError {
    /// Not `http://`.
    #[error("only http:// proxies are supported (got {0:?})")]
    Scheme(String),
    /// `user:pass@` in the URL.
    #[error("credentials do not belong in the URL: use proxy_credentials_file")]
    Credentials,
    /// A path, query or fragment after the authority.
    #[error("expected http://host:port with nothing after the port")]
    Trailing,
    /// Empty host, bad port or unbalanced brackets.
    #[error("expected http://host:port")]
    Authority,
}

impl ProxyUrl {
    /// Parses `http://host[:port][/]`.
    pub fn parse(s: &str) -> Result<ProxyUrl, ProxyUrlError> {
        let (scheme, rest) = s
            .split_once("://")
            .ok_or_else(|| ProxyUrlError::Scheme(s.to_string()))?;
        if !scheme.eq_ignore_ascii_case("http") {
            return Err(ProxyUrlError::Scheme(scheme.to_string()));
        }
        let authority = rest.strip_suffix('/').unwrap_or(rest);
        if authority.contains('@') {
            return Err(ProxyUrlError::Credentials);
        }
        if authority.contains(['/', '?', '#']) {
            return Err(ProxyUrlError::Trailing);
        }
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (h, after) = v6.split_once(']').ok_or(ProxyUrlError::Authority)?;
            let port = match after {
                "" => DEFAULT_PORT,
                p => port(p.strip_prefix(':').ok_or(ProxyUrlError::Authority)?)?,
            };
            h.parse::<std::net::Ipv6Addr>()
                .map_err(|_| ProxyUrlError::Authority)?;
            (h, port)
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (h, port(p)?),
                None => (authority, DEFAULT_PORT),
            }
        };
        let host_ok = !host.is_empty()
            && (host.contains(':')
                || host
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-'));
        if !host_ok {
            return Err(ProxyUrlError::Authority);
        }
        Ok(ProxyUrl {
            host: host.to_ascii_lowercase(),
            port,
        })
    }

    /// The host without brackets.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `host:port` to connect to (`[v6]:port` for IPv6).
    pub fn authority(&self) -> String {
        authority(&self.host, self.port)
    }
}

fn port(p: &str) -> Result<u16, ProxyUrlError> {
    match p.parse::<u16>() {
        Ok(0) | Err(_) => Err(ProxyUrlError::Authority),
        Ok(n) => Ok(n),
    }
}

/// `host:port`, bracketing an IPv6 host.
pub fn authority(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

impl fmt::Display for ProxyUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "http://{}", self.authority())
    }
}

/// A `NO_PROXY` list: hosts, domains (with or without a leading dot,
/// matching subdomains too), IP addresses, CIDR prefixes, or `*` for all.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NoProxy {
    all: bool,
    names: Vec<String>,
    nets: Vec<IpNet>,
}

impl NoProxy {
    /// Parses the comma-separated list; entries that are none of the above
    /// (an empty one, a port) are ignored, as other clients do.
    pub fn parse(s: &str) -> NoProxy {
        let mut n = NoProxy::default();
        for e in s.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            if e == "*" {
                n.all = true;
            } else if let Ok(net) = e.parse::<IpNet>() {
                n.nets.push(net);
            } else if let Ok(ip) = e.trim_matches(['[', ']']).parse::<IpAddr>() {
                n.nets.push(IpNet::from(ip));
            } else {
                let name = e.trim_start_matches("*.").trim_start_matches('.');
                if !name.is_empty() {
                    n.names.push(name.to_ascii_lowercase());
                }
            }
        }
        n
    }

    /// True when `host` (a name or an IP address, without brackets) is to
    /// be reached directly.
    pub fn matches(&self, host: &str) -> bool {
        if self.all {
            return true;
        }
        if let Ok(ip) = host.parse::<IpAddr>() {
            return self.nets.iter().any(|n| n.contains(&ip));
        }
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        self.names.iter().any(|n| {
            host == *n
                || host
                    .strip_suffix(n.as_str())
                    .is_some_and(|head| head.ends_with('.'))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let u = ProxyUrl::parse("http://proxy.example:3128").expect("valid");
        assert_eq!((u.host(), u.port()), ("proxy.example", 3128));
        assert_eq!(u.to_string(), "http://proxy.example:3128");
        let u = ProxyUrl::parse("HTTP://10.0.0.1/").expect("valid");
        assert_eq!(u.authority(), "10.0.0.1:80");
        let u = ProxyUrl::parse("http://[fd00::1]:8080").expect("valid");
        assert_eq!(
            (u.host(), u.authority().as_str()),
            ("fd00::1", "[fd00::1]:8080")
        );
        for (bad, want) in [
            ("https://p:1", ProxyUrlError::Scheme("https".into())),
            ("socks5://p:1", ProxyUrlError::Scheme("socks5".into())),
            ("p:1", ProxyUrlError::Scheme("p:1".into())),
            ("http://u:pw@p:1", ProxyUrlError::Credentials),
            ("http://p:1/x", ProxyUrlError::Trailing),
            ("http://p:1?a", ProxyUrlError::Trailing),
            ("http://:1", ProxyUrlError::Authority),
            ("http://p:0", ProxyUrlError::Authority),
            ("http://p:70000", ProxyUrlError::Authority),
            ("http://[fd00::1", ProxyUrlError::Authority),
            ("http://[nothex]:1", ProxyUrlError::Authority),
            ("http://a b:1", ProxyUrlError::Authority),
        ] {
            assert_eq!(ProxyUrl::parse(bad), Err(want), "{bad}");
        }
    }

    #[test]
    fn no_proxy() {
        let n = NoProxy::parse(" example.com, .corp.test,10.0.0.0/8, fd00::1 ,,localhost");
        for direct in [
            "example.com",
            "a.example.com",
            "x.corp.test",
            "corp.test",
            "10.2.3.4",
            "fd00::1",
            "LOCALHOST",
        ] {
            assert!(n.matches(direct), "{direct}");
        }
        for proxied in [
            "badexample.com",
            "example.org",
            "11.0.0.1",
            "fd00::2",
            "com",
        ] {
            assert!(!n.matches(proxied), "{proxied}");
        }
        assert!(NoProxy::parse("*").matches("anything"));
        assert!(!NoProxy::parse("").matches("anything"));
    }
}
