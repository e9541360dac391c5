//! `[netd.limits]`: the bounds on what peers, authenticated or not, may
//! make this node hold. One small table so every bound has one name and one
//! default; every key is optional.

use serde::Deserialize;

/// `[netd.limits]`.
#[derive(Debug, Deserialize, Clone, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct PeerLimits {
    /// Connections that have not yet passed the Sapper handshake, over all
    /// listeners. Past it new connections are refused at once.
    pub max_preauth: usize,
    /// The same, per source address.
    pub max_preauth_per_ip: usize,
    /// Prefixes one link may have this node learn (its Handshake and its
    /// RouteUpdates together).
    pub max_routes_per_peer: usize,
    /// Prefixes this node learns over all links.
    pub max_routes: usize,
    /// Control messages per second a link may send (a token bucket); the
    /// excess is dropped and counted, the link kept.
    pub control_rate: u32,
    /// The bucket's depth: messages a link may send in one burst.
    pub control_burst: u32,
}

impl Default for PeerLimits {
    fn default() -> Self {
        Self {
            max_preauth: 256,
            max_preauth_per_ip: 16,
            max_routes_per_peer: 1024,
            max_routes: 4096,
            control_rate: 100,
            control_burst: 400,
        }
    }
}

impl PeerLimits {
    /// The first key whose value is out of range, and why.
    pub fn check(&self) -> Result<(), (&'static str, &'static str)> {
        if !(1..=65536).contains(&self.max_preauth) {
            return Err(("netd.limits.max_preauth", "must be 1..=65536"));
        }
        if self.max_preauth_per_ip == 0 || self.max_preauth_per_ip > self.max_preauth {
            return Err((
                "netd.limits.max_preauth_per_ip",
                "must be 1..=netd.limits.max_preauth",
            ));
        }
        if !(1..=1_000_000).contains(&self.max_routes) {
            return Err(("netd.limits.max_routes", "must be 1..=1000000"));
        }
        if self.max_routes_per_peer == 0 || self.max_routes_per_peer > self.max_routes {
            return Err((
                "netd.limits.max_routes_per_peer",
                "must be 1..=netd.limits.max_routes",
            ));
        }
        if self.control_rate == 0 || self.control_burst == 0 {
            return Err((
                "netd.limits.control_rate",
                "rate and burst must be at least 1",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_bad_values_are_named() {
        assert_eq!(PeerLimits::default().check(), Ok(()));
        let l = PeerLimits {
            max_preauth_per_ip: 1000,
            ..PeerLimits::default()
        };
        assert_eq!(l.check().unwrap_err().0, "netd.limits.max_preauth_per_ip");
        let l = PeerLimits {
            max_routes_per_peer: 0,
            ..PeerLimits::default()
        };
        assert_eq!(l.check().unwrap_err().0, "netd.limits.max_routes_per_peer");
    }
}
