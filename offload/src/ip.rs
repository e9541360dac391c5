//! IPv4/IPv6 and TCP/UDP header parsing: just the fields offloading needs,
//! every length checked against the slice before it is used.

use crate::Error;

pub(crate) const TCP: u8 = 6;
pub(crate) const UDP: u8 = 17;

pub(crate) const TCP_FIN: u8 = 0x01;
pub(crate) const TCP_SYN: u8 = 0x02;
pub(crate) const TCP_RST: u8 = 0x04;
pub(crate) const TCP_PSH: u8 = 0x08;
pub(crate) const TCP_URG: u8 = 0x20;
pub(crate) const TCP_CWR: u8 = 0x80;
/// Offset of the flags byte in the TCP header.
pub(crate) const TCP_FLAGS: usize = 13;

/// The IP header of a packet whose length fields agree with the slice.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Ip {
    pub v6: bool,
    /// IP header length (IPv4 with options; always 40 for IPv6).
    pub hlen: usize,
    /// IPv4 protocol or IPv6 next header (extension headers are not walked).
    pub proto: u8,
    /// An IPv4 fragment (MF set or a non-zero offset): no whole L4 header.
    pub frag: bool,
}

pub(crate) fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

pub(crate) fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

pub(crate) fn put16(b: &mut [u8], at: usize, v: u16) {
    b[at..at + 2].copy_from_slice(&v.to_be_bytes());
}

pub(crate) fn put32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_be_bytes());
}

/// Parses the IP header and checks that the packet is exactly as long as it
/// says (TUN reads and peer packets are single whole packets).
pub(crate) fn parse_ip(pkt: &[u8]) -> Result<Ip, Error> {
    match pkt.first().map(|b| b >> 4) {
        None => Err(Error::Truncated),
        Some(4) => {
            if pkt.len() < 20 {
                return Err(Error::Truncated);
            }
            let hlen = usize::from(pkt[0] & 0x0f) * 4;
            if hlen < 20 {
                return Err(Error::BadIpHeader);
            }
            if hlen > pkt.len() {
                return Err(Error::Truncated);
            }
            if usize::from(be16(pkt, 2)) != pkt.len() {
                return Err(Error::LengthMismatch);
            }
            Ok(Ip {
                v6: false,
                hlen,
                proto: pkt[9],
                frag: be16(pkt, 6) & 0x3fff != 0,
            })
        }
        Some(6) => {
            if pkt.len() < 40 {
                return Err(Error::Truncated);
            }
            if 40 + usize::from(be16(pkt, 4)) != pkt.len() {
                return Err(Error::LengthMismatch);
            }
            Ok(Ip {
                v6: true,
                hlen: 40,
                proto: pkt[6],
                frag: false,
            })
        }
        Some(_) => Err(Error::BadIpHeader),
    }
}

/// A whole TCP or UDP packet: IP header plus a checked L4 header.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Packet {
    pub ip: Ip,
    /// TCP header length with options, or 8 for UDP.
    pub l4_len: usize,
}

impl Packet {
    /// IP + L4 header length: where the payload starts.
    pub fn hdr_len(&self) -> usize {
        self.ip.hlen + self.l4_len
    }
}

/// Parses a whole, unfragmented TCP or UDP packet over IPv4 or IPv6 (no
/// extension headers).
pub(crate) fn parse(pkt: &[u8]) -> Result<Packet, Error> {
    let ip = parse_ip(pkt)?;
    parse_l4(pkt, ip)
}

pub(crate) fn parse_l4(pkt: &[u8], ip: Ip) -> Result<Packet, Error> {
    if ip.frag {
        return Err(Error::BadIpHeader);
    }
    let l4 = &pkt[ip.hlen..];
    let l4_len = match ip.proto {
        TCP => {
            if l4.len() < 20 {
                return Err(Error::Truncated);
            }
            let doff = usize::from(l4[12] >> 4) * 4;
            if doff < 20 {
                return Err(Error::BadHeaderLength);
            }
            if doff > l4.len() {
                return Err(Error::Truncated);
            }
            doff
        }
        UDP => {
            if l4.len() < 8 {
                return Err(Error::Truncated);
            }
            if usize::from(be16(l4, 4)) != l4.len() {
                return Err(Error::LengthMismatch);
            }
            8
        }
        _ => return Err(Error::NotTcpOrUdp),
    };
    Ok(Packet { ip, l4_len })
}

/// Source and destination address of a packet `parse_ip` accepted.
pub(crate) fn addrs<'a>(pkt: &'a [u8], ip: &Ip) -> (&'a [u8], &'a [u8]) {
    if ip.v6 {
        (&pkt[8..24], &pkt[24..40])
    } else {
        (&pkt[12..16], &pkt[16..20])
    }
}

/// Rewrites the IP length field (and the IPv4 header checksum) for a packet
/// that is now `pkt.len()` bytes long, with IPv4 ID `id`.
pub(crate) fn set_len_id(pkt: &mut [u8], ip: &Ip, id: u16) {
    if ip.v6 {
        put16(pkt, 4, (pkt.len() - 40) as u16);
    } else {
        put16(pkt, 2, pkt.len() as u16);
        put16(pkt, 4, id);
        crate::checksum::set_ipv4_header(pkt, ip.hlen);
    }
}
