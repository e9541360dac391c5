//! `[netd.metrics]`: the OpenMetrics endpoint, off unless the section is
//! present. One of `listen` (a loopback TCP address) or `socket` (a Unix
//! socket path).

use super::KeyError;
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::PathBuf;

/// `[netd.metrics]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMetrics {
    pub listen: Option<SocketAddr>,
    pub socket: Option<PathBuf>,
    pub max_connections: Option<u64>,
}

/// Where the endpoint listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MetricsEndpoint {
    /// A loopback TCP address (the endpoint has no authentication).
    Tcp(SocketAddr),
    /// A Unix socket (mode 0660, the management socket's group).
    Unix(PathBuf),
}

/// `[netd.metrics]`, typed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetricsConfig {
    /// Where to serve.
    pub endpoint: MetricsEndpoint,
    /// Scrape connections served at once (1..=64, default 4); more wait in
    /// the backlog.
    pub max_connections: usize,
}

impl TryFrom<RawMetrics> for MetricsConfig {
    type Error = KeyError;

    fn try_from(m: RawMetrics) -> Result<Self, KeyError> {
        let endpoint = match (m.listen, m.socket) {
            (Some(_), Some(_)) => {
                return Err(KeyError::invalid(
                    "socket",
                    "set either listen or socket, not both",
                ))
            }
            (None, None) => {
                return Err(KeyError::invalid(
                    "listen",
                    "set listen (a loopback address such as \"127.0.0.1:9477\") or socket",
                ))
            }
            (Some(a), None) if !a.ip().is_loopback() => {
                return Err(KeyError::invalid(
                    "listen",
                    "must be a loopback address (127.0.0.0/8 or ::1): the endpoint has no authentication",
                ))
            }
            (Some(a), None) => MetricsEndpoint::Tcp(a),
            (None, Some(p)) if !p.is_absolute() => {
                return Err(KeyError::invalid("socket", "must be an absolute path"))
            }
            (None, Some(p)) => MetricsEndpoint::Unix(p),
        };
        let max_connections = match m.max_connections {
            None => 4,
            Some(n @ 1..=64) => n as usize,
            Some(_) => return Err(KeyError::invalid("max_connections", "must be 1..=64")),
        };
        Ok(MetricsConfig {
            endpoint,
            max_connections,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(s: &str) -> Result<MetricsConfig, String> {
        let raw: RawMetrics = toml::from_str(s).map_err(|e| e.to_string())?;
        MetricsConfig::try_from(raw).map_err(|e| e.key)
    }

    #[test]
    fn loopback_only_and_one_place() {
        assert_eq!(
            check("listen = \"127.0.0.1:9477\"").unwrap().endpoint,
            MetricsEndpoint::Tcp("127.0.0.1:9477".parse().unwrap())
        );
        assert!(check("listen = \"[::1]:9477\"").is_ok());
        assert_eq!(
            check("socket = \"/run/sapper/metrics.sock\"")
                .unwrap()
                .max_connections,
            4
        );
        assert_eq!(check("listen = \"0.0.0.0:9477\"").unwrap_err(), "listen");
        assert_eq!(check("").unwrap_err(), "listen");
        assert_eq!(
            check("listen = \"127.0.0.1:1\"\nsocket = \"/x\"").unwrap_err(),
            "socket"
        );
        assert_eq!(check("socket = \"rel\"").unwrap_err(), "socket");
        assert_eq!(
            check("listen = \"127.0.0.1:1\"\nmax_connections = 0").unwrap_err(),
            "max_connections"
        );
    }
}
