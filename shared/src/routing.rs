//! Which peer a packet from the TUN goes to: longest-prefix match over the
//! prefixes peers announced. Pure data structure; netd owns the I/O.

use ipnet::IpNet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// The destination address of an IPv4 or IPv6 packet, `None` if the packet is
/// too short or of another version.
pub fn destination(packet: &[u8]) -> Option<IpAddr> {
    match packet.first()? >> 4 {
        4 if packet.len() >= 20 => {
            let b: [u8; 4] = packet[16..20].try_into().ok()?;
            Some(IpAddr::V4(Ipv4Addr::from(b)))
        }
        6 if packet.len() >= 40 => {
            let b: [u8; 16] = packet[24..40].try_into().ok()?;
            Some(IpAddr::V6(Ipv6Addr::from(b)))
        }
        _ => None,
    }
}

/// The source address of an IPv4 or IPv6 packet, `None` if the packet is
/// too short or of another version.
pub fn source(packet: &[u8]) -> Option<IpAddr> {
    match packet.first()? >> 4 {
        4 if packet.len() >= 20 => {
            let b: [u8; 4] = packet[12..16].try_into().ok()?;
            Some(IpAddr::V4(Ipv4Addr::from(b)))
        }
        6 if packet.len() >= 40 => {
            let b: [u8; 16] = packet[8..24].try_into().ok()?;
            Some(IpAddr::V6(Ipv6Addr::from(b)))
        }
        _ => None,
    }
}

/// Largest IP packet the data path carries anywhere (TUN reads, QUIC's
/// big-packet stream, WebSocket messages, the userspace exit): the limit of
/// the IPv4 total-length and IPv6 payload-length fields.
pub const MAX_IP_PACKET: usize = 65535;

/// Most prefixes one announcement (Handshake or RouteUpdate) may carry.
pub const MAX_ROUTES: usize = 1024;

/// Why a list of announced prefixes was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PrefixError {
    /// More than [`MAX_ROUTES`] prefixes.
    #[error("{0} prefixes, at most {MAX_ROUTES}")]
    TooMany(usize),
    /// One entry is not a CIDR prefix.
    #[error("{0:?} is not a CIDR prefix")]
    NotAPrefix(String),
}

/// Parses a peer's (or the operator's) prefix list: the one place such lists
/// are read, so the bound and the syntax are the same everywhere.
pub fn parse_prefixes<S: AsRef<str>>(list: &[S]) -> Result<Vec<IpNet>, PrefixError> {
    if list.len() > MAX_ROUTES {
        return Err(PrefixError::TooMany(list.len()));
    }
    list.iter()
        .map(|p| {
            let p = p.as_ref();
            p.parse::<IpNet>()
                .map_err(|_| PrefixError::NotAPrefix(p.to_string()))
        })
        .collect()
}

/// Prefix → next-hop table. `K` identifies a peer.
#[derive(Debug, Clone)]
pub struct RouteTable<K> {
    entries: Vec<(IpNet, K)>,
}

impl<K> Default for RouteTable<K> {
    fn default() -> Self {
        Self {
            entries: Vec::new(),
        }
    }
}

impl<K: Clone + PartialEq> RouteTable<K> {
    /// Adds or replaces the next hop for `prefix`.
    pub fn insert(&mut self, prefix: IpNet, peer: K) {
        let prefix = prefix.trunc();
        self.entries.retain(|(p, _)| *p != prefix);
        self.entries.push((prefix, peer));
        // Longest prefix first so lookup can stop at the first match.
        self.entries
            .sort_by_key(|e| std::cmp::Reverse(e.0.prefix_len()));
    }

    /// Removes one prefix, whatever its next hop.
    pub fn remove_prefix(&mut self, prefix: &IpNet) {
        let prefix = prefix.trunc();
        self.entries.retain(|(p, _)| *p != prefix);
    }

    /// Removes every route through `peer`, returning the prefixes removed.
    pub fn remove_peer(&mut self, peer: &K) -> Vec<IpNet> {
        let mut removed = Vec::new();
        self.entries.retain(|(p, k)| {
            if k == peer {
                removed.push(*p);
                false
            } else {
                true
            }
        });
        removed
    }

    /// The peer for `addr` by longest-prefix match.
    pub fn lookup(&self, addr: IpAddr) -> Option<&K> {
        self.entries
            .iter()
            .find(|(p, _)| p.contains(&addr))
            .map(|(_, k)| k)
    }

    /// All routes, longest prefix first.
    pub fn iter(&self) -> impl Iterator<Item = &(IpNet, K)> {
        self.entries.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn longest_prefix_wins_and_peers_are_removed() {
        let mut t = RouteTable::default();
        t.insert("10.0.0.0/8".parse().unwrap(), 1u64);
        t.insert("10.20.0.0/24".parse().unwrap(), 2u64);
        t.insert("fd00::/8".parse().unwrap(), 3u64);
        assert_eq!(t.lookup("10.20.0.5".parse().unwrap()), Some(&2));
        assert_eq!(t.lookup("10.21.0.5".parse().unwrap()), Some(&1));
        assert_eq!(t.lookup("fd00::1".parse().unwrap()), Some(&3));
        assert_eq!(t.lookup("192.0.2.1".parse().unwrap()), None);
        assert_eq!(t.remove_peer(&2), vec!["10.20.0.0/24".parse().unwrap()]);
        assert_eq!(t.lookup("10.20.0.5".parse().unwrap()), Some(&1));
        // Host bits are ignored; re-inserting replaces.
        t.insert("10.1.2.3/8".parse().unwrap(), 9u64);
        assert_eq!(t.lookup("10.20.0.5".parse().unwrap()), Some(&9));
        assert_eq!(t.iter().count(), 2);
    }

    #[test]
    fn destination_of_v4_and_v6() {
        let mut v4 = [0u8; 20];
        v4[0] = 0x45;
        v4[16..20].copy_from_slice(&[10, 20, 0, 2]);
        assert_eq!(destination(&v4), Some("10.20.0.2".parse().unwrap()));
        v4[12..16].copy_from_slice(&[10, 99, 0, 1]);
        assert_eq!(source(&v4), Some("10.99.0.1".parse().unwrap()));
        let mut v6 = [0u8; 40];
        v6[0] = 0x60;
        v6[24] = 0xfd;
        v6[39] = 1;
        assert_eq!(destination(&v6), Some("fd00::1".parse().unwrap()));
        assert_eq!(destination(&v4[..10]), None);
        assert_eq!(destination(&[]), None);
        assert_eq!(destination(&[0x70; 40]), None);
    }
}
