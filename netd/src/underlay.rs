//! What an automatic route must never cover: the networks this host reaches
//! the underlay through. Read from the kernel's routing tables in /proc at
//! start: every directly connected network and every default gateway, on
//! any interface but the TUN. With the configured connect targets they are
//! the control core's `protected` list. The tables are read again every
//! [`REFRESH`] so that an interface, address or gateway added later is
//! protected too (`Core::set_underlay`): through descriptors opened before
//! the sandbox (Landlock does not follow /proc/self across threads), read
//! from offset 0 each time (the kernel regenerates the text). A failed read
//! keeps the last set: the protection never shrinks by accident.

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// The kernel's routing tables, read at start and on every refresh.
const ROUTE_FILES: [&str; 2] = ["/proc/net/route", "/proc/net/ipv6_route"];

/// Bound on one table's text (a full-table host has ~1 M routes of ~128
/// bytes; more than that is not an underlay worth parsing).
const MAX_TABLE: usize = 64 << 20;

/// The two routing tables, opened once before the sandbox.
pub struct RouteTables {
    v4: Option<std::fs::File>,
    v6: Option<std::fs::File>,
    tun: Option<String>,
}

impl RouteTables {
    /// Opens the tables (a missing one, e.g. IPv6 off, is skipped).
    pub fn open(tun: Option<&str>) -> Self {
        let open = |p: &str| std::fs::File::open(p).ok();
        Self {
            v4: open(ROUTE_FILES[0]),
            v6: open(ROUTE_FILES[1]),
            tun: tun.map(str::to_string),
        }
    }

    /// Connected networks and gateways of every interface other than the
    /// TUN, as the kernel has them now; `None` when a table could not be
    /// read.
    pub fn read(&self) -> Option<Vec<IpNet>> {
        Some(protected(&self.routes()?, self.tun.as_deref()))
    }

    /// Every entry of both tables as the kernel has them now; `None` when a
    /// table could not be read.
    pub fn routes(&self) -> Option<Vec<KernelRoute>> {
        let mut out = Vec::new();
        if let Some(f) = &self.v4 {
            out.extend(parse_v4(&read_all(f)?));
        }
        if let Some(f) = &self.v6 {
            out.extend(parse_v6(&read_all(f)?));
        }
        Some(out)
    }

    /// The TUN's name, if there is one.
    pub fn tun(&self) -> Option<&str> {
        self.tun.as_deref()
    }
}

/// One entry of the kernel's routing tables.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelRoute {
    /// Outgoing interface.
    pub iface: String,
    /// Destination.
    pub net: IpNet,
    /// Next hop, when the route has one.
    pub gateway: Option<IpAddr>,
    /// RTF_* flags.
    pub flags: u32,
}

/// RTF_* flags (linux/route.h, linux/ipv6_route.h).
pub const RTF_REJECT: u32 = 0x0200;
/// A route to one of this host's own addresses (IPv6 table only).
pub const RTF_LOCAL: u32 = 0x8000_0000;
/// A subnet-router anycast address (IPv6 local table, with forwarding on).
pub const RTF_ANYCAST: u32 = 0x0010_0000;
/// A cached (learned) IPv6 route.
pub const RTF_CACHE: u32 = 0x0100_0000;

/// What an automatic route must not cover: every network reached directly
/// and every gateway, on interfaces other than the TUN and loopback.
fn protected(routes: &[KernelRoute], tun: Option<&str>) -> Vec<IpNet> {
    let mut out: Vec<IpNet> = routes
        .iter()
        .filter(|r| Some(r.iface.as_str()) != tun && r.iface != "lo")
        // Multicast is not a route a peer could announce usefully.
        .filter(|r| !matches!(r.net, IpNet::V6(n) if n.addr().segments()[0] & 0xff00 == 0xff00))
        .filter_map(|r| match r.gateway {
            Some(gw) => Some(IpNet::from(gw)),
            None => (r.net.prefix_len() > 0).then_some(r.net),
        })
        .collect();
    out.sort();
    out.dedup();
    out
}

/// The whole text of a /proc table, from offset 0 (pread: no shared file
/// position).
fn read_all(f: &std::fs::File) -> Option<String> {
    use std::os::unix::fs::FileExt;
    let mut buf = vec![0u8; 64 * 1024];
    let mut len = 0;
    loop {
        if len == buf.len() {
            if buf.len() >= MAX_TABLE {
                return None;
            }
            buf.resize(buf.len() * 2, 0);
        }
        match f.read_at(&mut buf[len..], len as u64) {
            Ok(0) => break,
            Ok(n) => len += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return None,
        }
    }
    buf.truncate(len);
    String::from_utf8(buf).ok()
}

/// How often the routing tables are read again.
pub const REFRESH: Duration = Duration::from_secs(2);

/// Keeps the core's underlay current until shutdown: the tables are read
/// every [`REFRESH`] and a changed set is handed to the core.
pub async fn watch(
    node: Arc<crate::node::Node>,
    tables: Arc<RouteTables>,
    mut last: Vec<IpNet>,
    shutdown: CancellationToken,
) {
    let mut tick = tokio::time::interval(REFRESH);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let Some(now) = tables.read() else {
            tracing::debug!("reading the routing tables failed; the last underlay is kept");
            continue;
        };
        if now == last {
            continue;
        }
        tracing::info!(
            networks = now.len(),
            "the underlay changed; automatic routes re-checked"
        );
        let set = now.clone();
        if node
            .inspect(move |core, _| core.set_underlay(set))
            .await
            .is_ok()
        {
            last = now;
        }
    }
}

fn hex32_le(s: &str) -> Option<Ipv4Addr> {
    u32::from_str_radix(s, 16)
        .ok()
        .map(|v| Ipv4Addr::from(v.swap_bytes()))
}

/// `/proc/net/route`: Iface Destination Gateway Flags RefCnt Use Metric Mask …
/// (addresses little-endian hex).
fn parse_v4(text: &str) -> Vec<KernelRoute> {
    let mut out = Vec::new();
    for line in text.lines().skip(1).take(100_000) {
        let f: Vec<&str> = line.split_whitespace().collect();
        let (Some(iface), Some(dst), Some(gw), Some(flags), Some(mask)) =
            (f.first(), f.get(1), f.get(2), f.get(3), f.get(7))
        else {
            continue;
        };
        let (Some(dst), Some(gw), Some(mask), Ok(flags)) = (
            hex32_le(dst),
            hex32_le(gw),
            hex32_le(mask),
            u32::from_str_radix(flags, 16),
        ) else {
            continue;
        };
        let len = u32::from(mask).count_ones() as u8;
        if let Ok(n) = Ipv4Net::new(dst, len) {
            out.push(KernelRoute {
                iface: iface.to_string(),
                net: IpNet::V4(n.trunc()),
                gateway: (!gw.is_unspecified()).then_some(IpAddr::V4(gw)),
                flags,
            });
        }
    }
    out
}

/// `/proc/net/ipv6_route`: dst dst_len src src_len next_hop metric refcnt
/// use flags iface (addresses as 32 hex digits).
fn parse_v6(text: &str) -> Vec<KernelRoute> {
    let mut out = Vec::new();
    for line in text.lines().take(100_000) {
        let f: Vec<&str> = line.split_whitespace().collect();
        let (Some(dst), Some(len), Some(gw), Some(flags), Some(iface)) =
            (f.first(), f.get(1), f.get(4), f.get(8), f.get(9))
        else {
            continue;
        };
        let (Ok(dst), Ok(len), Ok(gw), Ok(flags)) = (
            u128::from_str_radix(dst, 16),
            u8::from_str_radix(len, 16),
            u128::from_str_radix(gw, 16),
            u32::from_str_radix(flags, 16),
        ) else {
            continue;
        };
        let (dst, gw) = (Ipv6Addr::from(dst), Ipv6Addr::from(gw));
        if let Ok(n) = Ipv6Net::new(dst, len) {
            out.push(KernelRoute {
                iface: iface.to_string(),
                net: IpNet::V6(n.trunc()),
                gateway: (!gw.is_unspecified()).then_some(IpAddr::V6(gw)),
                flags,
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_connected_networks_and_gateways_but_not_the_tun() {
        let v4 =
            "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
                  eth0\t00000000\t010200C0\t0003\t0\t0\t0\t00000000\t0\t0\t0\n\
                  eth0\t000200C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n\
                  sap0\t0000630A\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n";
        assert_eq!(
            protected(&parse_v4(v4), Some("sap0")),
            vec![
                "192.0.2.0/24".parse::<IpNet>().unwrap(),
                "192.0.2.1/32".parse().unwrap()
            ]
        );
        let v6 = "fd000000000000000000000000000000 40 00000000000000000000000000000000 00 00000000000000000000000000000000 00000100 00000001 00000000 00000001     eth0\n\
                  00000000000000000000000000000000 00 00000000000000000000000000000000 00 fd000000000000000000000000000001 00000400 00000003 00000000 00000003     eth0\n";
        assert_eq!(
            protected(&parse_v6(v6), None),
            vec![
                "fd00::/64".parse::<IpNet>().unwrap(),
                "fd00::1/128".parse().unwrap()
            ]
        );
    }
}
