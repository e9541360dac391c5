//! What an automatic route must never cover: the networks this host reaches
//! the underlay through. Read from the kernel's routing tables in /proc at
//! start (before the sandbox closes /proc): every directly connected network
//! and every default gateway, on any interface but the TUN. With the
//! configured connect targets they are the control core's `protected` list.

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Connected networks and gateways of every interface other than `tun`.
pub fn protected(tun: Option<&str>) -> Vec<IpNet> {
    let mut out = Vec::new();
    if let Ok(t) = std::fs::read_to_string("/proc/net/route") {
        out.extend(parse_v4(&t, tun));
    }
    if let Ok(t) = std::fs::read_to_string("/proc/net/ipv6_route") {
        out.extend(parse_v6(&t, tun));
    }
    out.sort();
    out.dedup();
    out
}

fn hex32_le(s: &str) -> Option<Ipv4Addr> {
    u32::from_str_radix(s, 16)
        .ok()
        .map(|v| Ipv4Addr::from(v.swap_bytes()))
}

/// `/proc/net/route`: Iface Destination Gateway Flags RefCnt Use Metric Mask …
/// (addresses little-endian hex).
fn parse_v4(text: &str, tun: Option<&str>) -> Vec<IpNet> {
    let mut out = Vec::new();
    for line in text.lines().skip(1).take(100_000) {
        let f: Vec<&str> = line.split_whitespace().collect();
        let (Some(iface), Some(dst), Some(gw), Some(mask)) =
            (f.first(), f.get(1), f.get(2), f.get(7))
        else {
            continue;
        };
        if Some(*iface) == tun || *iface == "lo" {
            continue;
        }
        let (Some(dst), Some(gw), Some(mask)) = (hex32_le(dst), hex32_le(gw), hex32_le(mask))
        else {
            continue;
        };
        let len = u32::from(mask).count_ones() as u8;
        if !gw.is_unspecified() {
            out.push(IpNet::from(IpAddr::V4(gw)));
        } else if len > 0 {
            if let Ok(n) = Ipv4Net::new(dst, len) {
                out.push(IpNet::V4(n.trunc()));
            }
        }
    }
    out
}

/// `/proc/net/ipv6_route`: dst dst_len src src_len next_hop metric refcnt
/// use flags iface (addresses as 32 hex digits).
fn parse_v6(text: &str, tun: Option<&str>) -> Vec<IpNet> {
    let mut out = Vec::new();
    for line in text.lines().take(100_000) {
        let f: Vec<&str> = line.split_whitespace().collect();
        let (Some(dst), Some(len), Some(gw), Some(iface)) =
            (f.first(), f.get(1), f.get(4), f.get(9))
        else {
            continue;
        };
        if Some(*iface) == tun || *iface == "lo" {
            continue;
        }
        let (Ok(dst), Ok(len), Ok(gw)) = (
            u128::from_str_radix(dst, 16),
            u8::from_str_radix(len, 16),
            u128::from_str_radix(gw, 16),
        ) else {
            continue;
        };
        let (dst, gw) = (Ipv6Addr::from(dst), Ipv6Addr::from(gw));
        // Multicast and link-local are not routes a peer could announce usefully.
        if dst.segments()[0] & 0xff00 == 0xff00 {
            continue;
        }
        if !gw.is_unspecified() {
            out.push(IpNet::from(IpAddr::V6(gw)));
        } else if len > 0 {
            if let Ok(n) = Ipv6Net::new(dst, len) {
                out.push(IpNet::V6(n.trunc()));
            }
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
            parse_v4(v4, Some("sap0")),
            vec![
                "192.0.2.1/32".parse::<IpNet>().unwrap(),
                "192.0.2.0/24".parse().unwrap()
            ]
        );
        let v6 = "fd000000000000000000000000000000 40 00000000000000000000000000000000 00 00000000000000000000000000000000 00000100 00000001 00000000 00000001     eth0\n\
                  00000000000000000000000000000000 00 00000000000000000000000000000000 00 fd000000000000000000000000000001 00000400 00000003 00000000 00000003     eth0\n";
        assert_eq!(
            parse_v6(v6, None),
            vec![
                "fd00::/64".parse::<IpNet>().unwrap(),
                "fd00::1/128".parse().unwrap()
            ]
        );
    }
}
