//! Packet builders and an independent checksum/length verifier for the
//! offload tests. Deliberately written the plain way (16-bit words, the
//! pseudo-header as bytes) so it shares no code with the crate.
#![allow(dead_code)]

use sapper_offload::{VnetHdr, F_NEEDS_CSUM, GSO_ECN, GSO_TCPV4, GSO_TCPV6, GSO_UDP_L4};

pub const FIN: u8 = 0x01;
pub const SYN: u8 = 0x02;
pub const RST: u8 = 0x04;
pub const PSH: u8 = 0x08;
pub const ACK: u8 = 0x10;
pub const URG: u8 = 0x20;
pub const ECE: u8 = 0x40;
pub const CWR: u8 = 0x80;

/// Everything that makes up a TCP/UDP packet's headers.
#[derive(Clone, Debug)]
pub struct Flow {
    pub v6: bool,
    pub tcp: bool,
    pub src: [u8; 16],
    pub dst: [u8; 16],
    pub sport: u16,
    pub dport: u16,
    pub ttl: u8,
    pub tos: u8,
    pub df: bool,
    pub flow_label: u32,
    pub id: u16,
    pub seq: u32,
    pub ack: u32,
    pub window: u16,
    pub flags: u8,
    /// TCP options, a multiple of 4 bytes, at most 40.
    pub tcp_opts: Vec<u8>,
    /// IPv4 options, a multiple of 4 bytes, at most 40.
    pub ip_opts: Vec<u8>,
}

impl Flow {
    pub fn tcp4() -> Self {
        Flow {
            v6: false,
            tcp: true,
            src: [10, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            dst: [10, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            sport: 40000,
            dport: 443,
            ttl: 64,
            tos: 0,
            df: true,
            flow_label: 0,
            id: 0x1234,
            seq: 1_000_000,
            ack: 77,
            window: 500,
            flags: ACK,
            tcp_opts: vec![1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2],
            ip_opts: vec![],
        }
    }
    pub fn tcp6() -> Self {
        let mut f = Flow::tcp4();
        f.v6 = true;
        f.src = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
        f.dst = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];
        f.flow_label = 0xabcde;
        f
    }
    pub fn udp4() -> Self {
        Flow {
            tcp: false,
            tcp_opts: vec![],
            flags: 0,
            ..Flow::tcp4()
        }
    }
    pub fn udp6() -> Self {
        Flow {
            tcp: false,
            tcp_opts: vec![],
            flags: 0,
            ..Flow::tcp6()
        }
    }
    pub fn ip_len(&self) -> usize {
        if self.v6 {
            40
        } else {
            20 + self.ip_opts.len()
        }
    }
    pub fn l4_len(&self) -> usize {
        if self.tcp {
            20 + self.tcp_opts.len()
        } else {
            8
        }
    }
    pub fn hdr_len(&self) -> usize {
        self.ip_len() + self.l4_len()
    }
    pub fn proto(&self) -> u8 {
        if self.tcp {
            6
        } else {
            17
        }
    }
}

/// RFC 1071, 16 bits at a time: the folded, not complemented sum.
pub fn sum16(data: &[u8]) -> u16 {
    let mut s: u64 = 0;
    for c in data.chunks(2) {
        s += (u64::from(c[0]) << 8) | u64::from(c.get(1).copied().unwrap_or(0));
    }
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    s as u16
}

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

pub fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// The pseudo-header as bytes (RFC 768/793 for IPv4, RFC 8200 for IPv6).
pub fn pseudo_bytes(pkt: &[u8], l4_len: usize) -> Vec<u8> {
    let mut p = Vec::new();
    if pkt[0] >> 4 == 6 {
        p.extend_from_slice(&pkt[8..40]);
        p.extend_from_slice(&(l4_len as u32).to_be_bytes());
        p.extend_from_slice(&[0, 0, 0, pkt[6]]);
    } else {
        p.extend_from_slice(&pkt[12..20]);
        p.extend_from_slice(&[0, pkt[9]]);
        p.extend_from_slice(&(l4_len as u16).to_be_bytes());
    }
    p
}

/// A whole packet with complete checksums. Both checksums are written as
/// `!sum` (a UDP 0 as 0xffff), the same choice split makes, so a packet
/// rebuilt by split is byte-equal to one built here.
pub fn packet(f: &Flow, payload: &[u8]) -> Vec<u8> {
    let mut p = Vec::new();
    let total = f.hdr_len() + payload.len();
    if f.v6 {
        let w = (6u32 << 28) | (u32::from(f.tos) << 20) | (f.flow_label & 0xfffff);
        p.extend_from_slice(&w.to_be_bytes());
        p.extend_from_slice(&((total - 40) as u16).to_be_bytes());
        p.extend_from_slice(&[f.proto(), f.ttl]);
        p.extend_from_slice(&f.src);
        p.extend_from_slice(&f.dst);
    } else {
        p.push(0x40 | ((20 + f.ip_opts.len()) / 4) as u8);
        p.push(f.tos);
        p.extend_from_slice(&(total as u16).to_be_bytes());
        p.extend_from_slice(&f.id.to_be_bytes());
        p.extend_from_slice(&[if f.df { 0x40 } else { 0 }, 0, f.ttl, f.proto(), 0, 0]);
        p.extend_from_slice(&f.src[..4]);
        p.extend_from_slice(&f.dst[..4]);
        p.extend_from_slice(&f.ip_opts);
        let c = !sum16(&p);
        p[10..12].copy_from_slice(&c.to_be_bytes());
    }
    let l4 = p.len();
    p.extend_from_slice(&f.sport.to_be_bytes());
    p.extend_from_slice(&f.dport.to_be_bytes());
    if f.tcp {
        p.extend_from_slice(&f.seq.to_be_bytes());
        p.extend_from_slice(&f.ack.to_be_bytes());
        p.push((((20 + f.tcp_opts.len()) / 4) as u8) << 4);
        p.push(f.flags);
        p.extend_from_slice(&f.window.to_be_bytes());
        p.extend_from_slice(&[0, 0, 0, 0]);
        p.extend_from_slice(&f.tcp_opts);
    } else {
        p.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
        p.extend_from_slice(&[0, 0]);
    }
    p.extend_from_slice(payload);
    let at = l4 + if f.tcp { 16 } else { 6 };
    let mut all = pseudo_bytes(&p, p.len() - l4);
    all.extend_from_slice(&p[l4..]);
    let mut c = !sum16(&all);
    if c == 0 && !f.tcp {
        c = 0xffff;
    }
    p[at..at + 2].copy_from_slice(&c.to_be_bytes());
    p
}

/// A super-packet as the kernel hands it out with TSO/USO on: headers of
/// the first segment, the whole payload, lengths of the whole, the partial
/// (pseudo-header) checksum in the L4 field, and its vnet header.
pub fn kernel_super(f: &Flow, payload: &[u8], gso_size: u16) -> (VnetHdr, Vec<u8>) {
    let mut p = packet(f, payload);
    let l4 = f.ip_len();
    let at = l4 + if f.tcp { 16 } else { 6 };
    let partial = sum16(&pseudo_bytes(&p, p.len() - l4));
    p[at..at + 2].copy_from_slice(&partial.to_be_bytes());
    let gso_type = match (f.tcp, f.v6) {
        (true, false) => GSO_TCPV4,
        (true, true) => GSO_TCPV6,
        _ => GSO_UDP_L4,
    } | if f.tcp && f.flags & CWR != 0 {
        GSO_ECN
    } else {
        0
    };
    let h = VnetHdr {
        flags: F_NEEDS_CSUM,
        gso_type,
        hdr_len: f.hdr_len() as u16,
        gso_size,
        csum_start: l4 as u16,
        csum_offset: if f.tcp { 16 } else { 6 },
    };
    (h, p)
}

/// Checks a complete packet on its own: IP version, lengths, IPv4 header
/// checksum, UDP length, and the TCP/UDP checksum.
pub fn verify(pkt: &[u8]) -> Result<(), String> {
    let (l4, proto) = match pkt.first().map(|b| b >> 4) {
        Some(4) => {
            let ihl = usize::from(pkt[0] & 15) * 4;
            if pkt.len() < ihl || ihl < 20 {
                return Err("short IPv4".into());
            }
            if usize::from(be16(pkt, 2)) != pkt.len() {
                return Err(format!(
                    "IPv4 total length {} != {}",
                    be16(pkt, 2),
                    pkt.len()
                ));
            }
            if sum16(&pkt[..ihl]) != 0xffff {
                return Err("IPv4 header checksum".into());
            }
            (ihl, pkt[9])
        }
        Some(6) => {
            if pkt.len() < 40 || usize::from(be16(pkt, 4)) + 40 != pkt.len() {
                return Err("IPv6 payload length".into());
            }
            (40, pkt[6])
        }
        _ => return Err("not IP".into()),
    };
    let min = if proto == 6 { 20 } else { 8 };
    if pkt.len() < l4 + min {
        return Err("short L4".into());
    }
    if proto == 17 && usize::from(be16(pkt, l4 + 4)) != pkt.len() - l4 {
        return Err("UDP length".into());
    }
    if proto == 17 && be16(pkt, l4 + 6) == 0 {
        return Err("UDP checksum missing".into());
    }
    let mut all = pseudo_bytes(pkt, pkt.len() - l4);
    all.extend_from_slice(&pkt[l4..]);
    if sum16(&all) != 0xffff {
        return Err(format!("L4 checksum (proto {proto})"));
    }
    Ok(())
}

/// The TCP flags byte of a packet.
pub fn tcp_flags(pkt: &[u8]) -> u8 {
    pkt[ip_len(pkt) + 13]
}

pub fn ip_len(pkt: &[u8]) -> usize {
    if pkt[0] >> 4 == 6 {
        40
    } else {
        usize::from(pkt[0] & 15) * 4
    }
}

/// Completes a NEEDS_CSUM packet the way the kernel does.
pub fn complete(pkt: &mut [u8], h: &VnetHdr) {
    let start = usize::from(h.csum_start);
    let at = start + usize::from(h.csum_offset);
    let c = match !sum16(&pkt[start..]) {
        0 => 0xffff,
        c => c,
    };
    pkt[at..at + 2].copy_from_slice(&c.to_be_bytes());
}

/// Splits a TUN write (vnet header + packet) into its header and packet.
pub fn unwrap_write(w: &[u8]) -> (VnetHdr, Vec<u8>) {
    (
        VnetHdr::decode(w).expect("write has a vnet header"),
        w[sapper_offload::VNET_HDR_LEN..].to_vec(),
    )
}
