//! One's-complement Internet checksum (RFC 1071) and the IP/TCP/UDP
//! checksum fields built on it.

use crate::ip::{self, Ip};

/// Adds `w` to `acc` with the end-around carry, so `acc` never overflows.
fn add_word(acc: u64, w: u64) -> u64 {
    let (s, carry) = acc.overflowing_add(w);
    s + u64::from(carry)
}

/// Adds `data` to a running sum. The sum is kept in 64-bit words: 2^16 ≡ 1
/// modulo 2^16 − 1, so folding it later gives the same result as adding
/// 16-bit words, at a quarter of the additions. `data` must start at an even
/// offset of what is being checksummed (an odd last byte is padded with 0).
pub(crate) fn add(mut acc: u64, data: &[u8]) -> u64 {
    let mut chunks = data.chunks_exact(8);
    for c in &mut chunks {
        let w = u64::from_be_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]);
        acc = add_word(acc, w);
    }
    let rest = chunks.remainder();
    if !rest.is_empty() {
        let mut tail = [0u8; 8];
        tail[..rest.len()].copy_from_slice(rest);
        acc = add_word(acc, u64::from_be_bytes(tail));
    }
    acc
}

/// The folded, not complemented, 16-bit sum.
pub(crate) fn fold(mut acc: u64) -> u16 {
    while acc >> 16 != 0 {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc as u16
}

/// The sum of the TCP/UDP pseudo-header (RFC 793/768, RFC 8200 §8.1) for an
/// L4 length of `l4_len`. IPv4 and IPv6 differ only in address size here:
/// the 32-bit IPv6 length and the padded next header add up the same.
pub(crate) fn pseudo(pkt: &[u8], ip: &Ip, l4_len: usize) -> u64 {
    let (src, dst) = ip::addrs(pkt, ip);
    let acc = add(add(0, src), dst);
    add_word(add_word(acc, u64::from(ip.proto)), l4_len as u64)
}

/// Offset of the TCP/UDP checksum field from the start of the L4 header.
pub(crate) fn l4_field(proto: u8) -> usize {
    if proto == ip::TCP {
        16
    } else {
        6
    }
}

fn put(pkt: &mut [u8], at: usize, v: u16) {
    pkt[at..at + 2].copy_from_slice(&v.to_be_bytes());
}

/// Writes the complete TCP/UDP checksum of a whole packet. UDP's 0 becomes
/// 0xffff, because 0 there means "no checksum".
pub(crate) fn set_l4_full(pkt: &mut [u8], ip: &Ip) {
    let at = ip.hlen + l4_field(ip.proto);
    put(pkt, at, 0);
    let sum = add(pseudo(pkt, ip, pkt.len() - ip.hlen), &pkt[ip.hlen..]);
    let c = !fold(sum);
    put(
        pkt,
        at,
        if c == 0 && ip.proto == ip::UDP {
            0xffff
        } else {
            c
        },
    );
}

/// Writes the partial checksum `NEEDS_CSUM` wants: the pseudo-header sum for
/// the whole packet's L4 length, folded, not complemented. The kernel (or
/// [`complete`]) then adds the L4 bytes and complements.
pub(crate) fn set_l4_partial(pkt: &mut [u8], ip: &Ip) {
    let at = ip.hlen + l4_field(ip.proto);
    let sum = pseudo(pkt, ip, pkt.len() - ip.hlen);
    put(pkt, at, fold(sum));
}

/// Whether a whole packet's TCP/UDP checksum is right (a UDP checksum of 0,
/// "none", counts as not right: such a datagram is never joined).
pub(crate) fn l4_valid(pkt: &[u8], ip: &Ip) -> bool {
    let at = ip.hlen + l4_field(ip.proto);
    if pkt.get(at..at + 2) == Some(&[0, 0]) && ip.proto == ip::UDP {
        return false;
    }
    fold(add(pseudo(pkt, ip, pkt.len() - ip.hlen), &pkt[ip.hlen..])) == 0xffff
}

/// Recomputes an IPv4 header checksum (the header is `pkt[..hlen]`).
pub(crate) fn set_ipv4_header(pkt: &mut [u8], hlen: usize) {
    put(pkt, 10, 0);
    let c = !fold(add(0, &pkt[..hlen]));
    put(pkt, 10, c);
}

/// Whether an IPv4 header checksum is right.
pub(crate) fn ipv4_header_valid(pkt: &[u8], hlen: usize) -> bool {
    fold(add(0, &pkt[..hlen])) == 0xffff
}

/// Completes a `NEEDS_CSUM` checksum the generic way (as the kernel's
/// `skb_checksum_help`): sum from `start` to the end, complement, store at
/// `start + offset`. The field already holds the pseudo-header part.
pub(crate) fn complete(pkt: &mut [u8], start: usize, offset: usize) -> Result<(), crate::Error> {
    let at = start
        .checked_add(offset)
        .filter(|at| at.checked_add(2).is_some_and(|end| end <= pkt.len()))
        .ok_or(crate::Error::BadChecksumOffset)?;
    let c = !fold(add(0, &pkt[start..]));
    // 0 and 0xffff are the same one's-complement number; 0xffff is right
    // for UDP as well as TCP.
    put(pkt, at, if c == 0 { 0xffff } else { c });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The RFC 1071 way, 16 bits at a time, to check the 64-bit one against.
    fn slow(data: &[u8]) -> u16 {
        let mut s: u32 = 0;
        for c in data.chunks(2) {
            s += u32::from(c[0]) << 8 | u32::from(*c.get(1).unwrap_or(&0));
            s = (s & 0xffff) + (s >> 16);
        }
        s as u16
    }

    #[test]
    fn wide_sum_matches_rfc1071() {
        // RFC 1071 §3's example bytes.
        assert_eq!(
            fold(add(0, &[0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7])),
            0xddf2
        );
        let data: Vec<u8> = (0..1000u32).map(|i| (i * 7919 % 251) as u8).collect();
        for len in [0, 1, 2, 7, 8, 9, 15, 16, 17, 999, 1000] {
            assert_eq!(fold(add(0, &data[..len])), slow(&data[..len]), "len {len}");
        }
        assert_eq!(fold(add(0, &[0xff; 64])), 0xffff);
    }

    #[test]
    fn complete_refuses_offsets_outside() {
        let mut p = [0u8; 10];
        assert!(complete(&mut p, 8, 0).is_ok());
        assert_eq!(complete(&mut p, 9, 0), Err(crate::Error::BadChecksumOffset));
        assert_eq!(complete(&mut p, 0, 9), Err(crate::Error::BadChecksumOffset));
        assert_eq!(
            complete(&mut p, usize::MAX, 1),
            Err(crate::Error::BadChecksumOffset)
        );
        assert_eq!(
            complete(&mut p, 11, 0),
            Err(crate::Error::BadChecksumOffset)
        );
    }
}
