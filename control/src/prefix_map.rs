//! Longest-prefix match in one hash table per prefix length present: a
//! lookup costs one masked hash probe per distinct length (at most 33 for
//! IPv4, 129 for IPv6, in practice a handful), never a scan of every
//! prefix, and allocates nothing. Built once, then read-only.

use ipnet::IpNet;
use std::collections::HashMap;
use std::net::IpAddr;

/// Prefix → value, longest match.
#[derive(Debug, Clone)]
pub struct PrefixMap<V> {
    /// (length, network bits → value), longest length first.
    v4: Vec<(u8, HashMap<u32, V>)>,
    v6: Vec<(u8, HashMap<u128, V>)>,
}

impl<V> Default for PrefixMap<V> {
    fn default() -> Self {
        Self {
            v4: Vec::new(),
            v6: Vec::new(),
        }
    }
}

fn mask4(len: u8) -> u32 {
    if len == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(len))
    }
}

fn mask6(len: u8) -> u128 {
    if len == 0 {
        0
    } else {
        u128::MAX << (128 - u32::from(len))
    }
}

impl<V> PrefixMap<V> {
    /// Builds the map; of two equal prefixes the first wins.
    pub fn build(entries: impl IntoIterator<Item = (IpNet, V)>) -> Self {
        let mut m = Self::default();
        for (p, v) in entries {
            let len = p.prefix_len();
            match p.trunc() {
                IpNet::V4(n) => {
                    let bits = u32::from(n.network());
                    let slot = match m.v4.iter().position(|(l, _)| *l == len) {
                        Some(i) => i,
                        None => {
                            m.v4.push((len, HashMap::new()));
                            m.v4.len() - 1
                        }
                    };
                    m.v4[slot].1.entry(bits).or_insert(v);
                }
                IpNet::V6(n) => {
                    let bits = u128::from(n.network());
                    let slot = match m.v6.iter().position(|(l, _)| *l == len) {
                        Some(i) => i,
                        None => {
                            m.v6.push((len, HashMap::new()));
                            m.v6.len() - 1
                        }
                    };
                    m.v6[slot].1.entry(bits).or_insert(v);
                }
            }
        }
        m.v4.sort_by_key(|(l, _)| std::cmp::Reverse(*l));
        m.v6.sort_by_key(|(l, _)| std::cmp::Reverse(*l));
        m
    }

    /// The value of the longest prefix containing `addr`.
    pub fn lookup(&self, addr: IpAddr) -> Option<&V> {
        match addr {
            IpAddr::V4(a) => {
                let a = u32::from(a);
                self.v4
                    .iter()
                    .find_map(|(len, t)| t.get(&(a & mask4(*len))))
            }
            IpAddr::V6(a) => {
                let a = u128::from(a);
                self.v6
                    .iter()
                    .find_map(|(len, t)| t.get(&(a & mask6(*len))))
            }
        }
    }

    /// How many prefixes it holds.
    pub fn len(&self) -> usize {
        self.v4.iter().map(|(_, t)| t.len()).sum::<usize>()
            + self.v6.iter().map(|(_, t)| t.len()).sum::<usize>()
    }

    /// True when it holds nothing.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    #[test]
    fn longest_match_for_both_families() {
        let m = PrefixMap::build([
            (net("10.0.0.0/8"), 1),
            (net("10.20.0.0/24"), 2),
            (net("10.20.0.7/32"), 3),
            (net("0.0.0.0/0"), 4),
            (net("fd00::/8"), 5),
            (net("fd00:1::/64"), 6),
        ]);
        let at = |s: &str| m.lookup(s.parse().unwrap()).copied();
        assert_eq!(at("10.20.0.7"), Some(3));
        assert_eq!(at("10.20.0.8"), Some(2));
        assert_eq!(at("10.21.0.1"), Some(1));
        assert_eq!(at("192.0.2.1"), Some(4));
        assert_eq!(at("fd00:1::9"), Some(6));
        assert_eq!(at("fd01::1"), Some(5));
        assert_eq!(at("2001:db8::1"), None);
        assert_eq!(m.len(), 6);
    }

    /// Against a linear scan, over many random prefixes and addresses.
    #[test]
    fn agrees_with_a_scan() {
        let mut x: u64 = 0x9e3779b97f4a7c15;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let prefixes: Vec<(IpNet, usize)> = (0..500)
            .map(|i| {
                let a = std::net::Ipv4Addr::from((next() as u32) & 0x0aff_ffff);
                let len = (next() % 33) as u8;
                (IpNet::V4(ipnet::Ipv4Net::new(a, len).unwrap().trunc()), i)
            })
            .collect();
        let m = PrefixMap::build(prefixes.iter().copied());
        for _ in 0..2000 {
            let a = IpAddr::V4(std::net::Ipv4Addr::from((next() as u32) & 0x0aff_ffff));
            let scan = prefixes
                .iter()
                .filter(|(p, _)| p.contains(&a))
                .max_by_key(|(p, i)| (p.prefix_len(), std::cmp::Reverse(*i)))
                .map(|(_, i)| *i);
            assert_eq!(m.lookup(a).copied(), scan, "{a}");
        }
    }
}
