//! sapper-offload on what a TUN or a peer could hand netd: `split` with an
//! arbitrary vnet header, `header_for` with an arbitrary segment size, and
//! the `Coalescer` on the input cut into packets. Never a panic; split's GSO
//! segments fit the MTU and carry valid lengths and checksums; what the
//! coalescer writes, cut again by split, is exactly what it accepted.
//!
//! Input: 10 bytes vnet header, 2 bytes MTU, 2 bytes gso_size, 1 byte
//! offloads, then the packet. The coalescer gets the packet, then the rest
//! cut at the 0xff 0xff markers in it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sapper_offload::{
    header_for, split, Coalescer, Offloads, VnetHdr, GSO_NONE, MAX_SUPER, VNET_HDR_LEN,
};

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

/// Whether a packet's IP lengths and checksums hold (split's output).
fn valid(p: &[u8]) -> bool {
    let (l4, proto) = match p[0] >> 4 {
        4 => {
            let ihl = usize::from(p[0] & 15) * 4;
            if fold(sum(&p[..ihl])) != 0xffff || usize::from(be16(p, 2)) != p.len() {
                return false;
            }
            (ihl, p[9])
        }
        6 => {
            if usize::from(be16(p, 4)) + 40 != p.len() {
                return false;
            }
            (40, p[6])
        }
        _ => return false,
    };
    let len = (p.len() - l4) as u64;
    let addrs = if p[0] >> 4 == 6 { &p[8..40] } else { &p[12..20] };
    let pseudo = sum(addrs) + u64::from(proto) + len;
    fold(pseudo + sum(&p[l4..])) == 0xffff
}

fn sum(b: &[u8]) -> u64 {
    b.chunks(2)
        .map(|c| (u64::from(c[0]) << 8) | u64::from(c.get(1).copied().unwrap_or(0)))
        .sum()
}

fn fold(mut s: u64) -> u16 {
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    s as u16
}

fn cut(w: &[u8], out: &mut Vec<Vec<u8>>) {
    let h = VnetHdr::decode(w).expect("every write has a vnet header");
    let mut p = w[VNET_HDR_LEN..].to_vec();
    let mut scratch = Vec::new();
    split(&h, &mut p, MAX_SUPER, &mut scratch, |s| out.push(s.to_vec()))
        .expect("split takes what the coalescer writes");
}

fuzz_target!(|data: &[u8]| {
    if data.len() < VNET_HDR_LEN + 5 {
        return;
    }
    let Ok(h) = VnetHdr::decode(data) else { return };
    let mtu = usize::from(be16(data, 10));
    let gso_size = be16(data, 12);
    let o = data[14];
    let offloads = Offloads {
        csum: o & 1 != 0,
        tso4: o & 2 != 0,
        tso6: o & 4 != 0,
        uso4: o & 8 != 0,
        uso6: o & 16 != 0,
    };
    let rest = &data[15..];

    let mut pkt = rest.to_vec();
    let mut scratch = Vec::new();
    let mut n = 0;
    let r = split(&h, &mut pkt, mtu, &mut scratch, |s| {
        n += 1;
        if h.gso_type != GSO_NONE {
            assert!(s.len() <= mtu, "segment over the MTU");
            assert!(valid(s), "invalid segment");
        }
    });
    match r {
        Ok(k) => assert_eq!(k, n),
        Err(_) => assert_eq!(n, 0),
    }

    let mut pkt = rest.to_vec();
    if let Ok(h) = header_for(&mut pkt, gso_size, mtu, offloads) {
        if h.gso_type != GSO_NONE {
            split(&h, &mut pkt, mtu, &mut scratch, |s| assert!(valid(s)))
                .expect("split takes header_for's header");
        }
    }

    let mut c = Coalescer::new(offloads);
    let mut accepted = Vec::new();
    let mut back = Vec::new();
    let pieces = std::iter::once(rest).chain(rest.split(|&b| b == 0xff).filter(|p| !p.is_empty()));
    for p in pieces {
        if c.push(p, |w| cut(w, &mut back)).is_ok() {
            accepted.push(p.to_vec());
        }
    }
    c.flush(|w| cut(w, &mut back));
    accepted.sort();
    back.sort();
    assert_eq!(back, accepted, "coalescer lost or changed packets");
});
