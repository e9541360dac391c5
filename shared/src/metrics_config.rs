//! `[netd.metrics]`: the OpenMetrics endpoint (off unless this section is
//! present). One of `listen` (a loopback TCP address) or `socket` (a Unix
//! socket path); kept apart from config.rs so the section stays one small
//! group of keys.

use serde::Deserialize;
use std::net::SocketAddr;
use std::path::PathBuf;

fn default_max_connections() -> usize {
    4
}

/// `[netd.metrics]`
#[derive(Debug, Deserialize, Clone, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// Loopback TCP address to serve on, e.g. `"127.0.0.1:9477"`. Only
    /// loopback: the endpoint has no authentication of its own.
    pub listen: Option<SocketAddr>,
    /// Unix socket to serve on instead (mode 0660, the management socket's
    /// group).
    pub socket: Option<PathBuf>,
    /// Scrape connections served at once; more wait in the backlog.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
}

impl MetricsConfig {
    /// Checks the section; the error is (key below `netd.metrics`, message).
    pub fn check(&self) -> Result<(), (String, String)> {
        let bad = |k: &str, m: &str| Err((k.to_string(), m.to_string()));
        match (&self.listen, &self.socket) {
            (Some(_), Some(_)) => return bad("socket", "set either listen or socket, not both"),
            (None, None) => {
                return bad(
                    "listen",
                    "set listen (a loopback address such as \"127.0.0.1:9477\") or socket",
                )
            }
            (Some(a), None) if !a.ip().is_loopback() => {
                return bad(
                    "listen",
                    "must be a loopback address (127.0.0.0/8 or ::1): the endpoint has no authentication",
                )
            }
            (None, Some(p)) if !p.is_absolute() => return bad("socket", "must be an absolute path"),
            _ => {}
        }
        if !(1..=64).contains(&self.max_connections) {
            return bad("max_connections", "must be 1..=64");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> MetricsConfig {
        toml::from_str(s).unwrap()
    }

    #[test]
    fn loopback_only_and_one_place() {
        assert!(parse("listen = \"127.0.0.1:9477\"").check().is_ok());
        assert!(parse("listen = \"[::1]:9477\"").check().is_ok());
        assert!(parse("socket = \"/run/sapper/metrics.sock\"")
            .check()
            .is_ok());
        assert_eq!(
            parse("listen = \"0.0.0.0:9477\"").check().unwrap_err().0,
            "listen"
        );
        assert_eq!(parse("").check().unwrap_err().0, "listen");
        assert_eq!(
            parse("listen = \"127.0.0.1:1\"\nsocket = \"/x\"")
                .check()
                .unwrap_err()
                .0,
            "socket"
        );
        assert_eq!(parse("socket = \"rel\"").check().unwrap_err().0, "socket");
        assert_eq!(
            parse("listen = \"127.0.0.1:1\"\nmax_connections = 0")
                .check()
                .unwrap_err()
                .0,
            "max_connections"
        );
    }
}
