//! split and header_for, case by case, including every kind of bad input.

mod common;

use common::*;
use sapper_offload::{
    header_for, split, Error, Offloads, VnetHdr, F_NEEDS_CSUM, GSO_ECN, GSO_NONE, GSO_TCPV4,
    GSO_TCPV6, GSO_UDP_L4, MAX_UDP_SEGMENTS,
};

const ALL: Offloads = Offloads {
    csum: true,
    tso4: true,
    tso6: true,
    uso4: true,
    uso6: true,
};

fn payload(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i * 31 + 7) as u8).collect()
}

/// Runs split and returns the segments.
fn segments(h: &VnetHdr, pkt: &[u8], mtu: usize) -> Result<Vec<Vec<u8>>, Error> {
    let mut pkt = pkt.to_vec();
    let mut out = Vec::new();
    let mut scratch = Vec::new();
    let n = split(h, &mut pkt, mtu, &mut scratch, |s| out.push(s.to_vec()))?;
    assert_eq!(n, out.len());
    Ok(out)
}

/// Cuts a kernel-style super-packet and checks the segments against what
/// the flow should have sent one by one.
fn check_split(f: &Flow, len: usize, gso: usize, mtu: usize) {
    let data = payload(len);
    let (h, sup) = kernel_super(f, &data, gso as u16);
    let segs = segments(&h, &sup, mtu).unwrap();
    assert_eq!(segs.len(), len.div_ceil(gso).max(1));
    for (i, s) in segs.iter().enumerate() {
        verify(s).unwrap_or_else(|e| panic!("segment {i}: {e}"));
        assert!(s.len() <= mtu);
        let mut g = f.clone();
        g.id = f.id.wrapping_add(i as u16);
        g.seq = f.seq.wrapping_add((i * gso) as u32);
        let last = i + 1 == segs.len();
        if !last {
            g.flags &= !(FIN | PSH);
        }
        if i > 0 {
            g.flags &= !CWR;
        }
        let chunk = &data[(i * gso).min(len)..((i + 1) * gso).min(len)];
        assert_eq!(s, &packet(&g, chunk), "segment {i}");
    }
}

#[test]
fn tcp4_super_packet_is_cut_into_checksummed_segments() {
    let mut f = Flow::tcp4();
    f.flags = ACK | PSH;
    check_split(&f, 4000, 1000, 1500);
    check_split(&f, 4001, 1000, 1500);
    check_split(&f, 1000, 1000, 1500);
}

#[test]
fn tcp6_udp4_udp6_super_packets_are_cut() {
    check_split(&Flow::tcp6(), 9000, 1428, 1500);
    check_split(&Flow::udp4(), 5000, 1200, 1280);
    check_split(&Flow::udp6(), 5001, 1232, 1280);
    // Odd segment sizes: checksums over an odd number of payload bytes.
    check_split(&Flow::udp6(), 1001, 333, 1280);
}

#[test]
fn fin_and_psh_only_on_last_cwr_only_on_first() {
    let mut f = Flow::tcp4();
    f.flags = ACK | PSH | FIN | CWR | ECE;
    let (h, sup) = kernel_super(&f, &payload(3000), 1000);
    assert_eq!(h.gso_type, GSO_TCPV4 | GSO_ECN);
    let segs = segments(&h, &sup, 1500).unwrap();
    let flags: Vec<u8> = segs.iter().map(|s| tcp_flags(s)).collect();
    assert_eq!(flags, [ACK | CWR | ECE, ACK | ECE, ACK | ECE | PSH | FIN]);
}

#[test]
fn sequence_numbers_and_ipv4_ids_wrap() {
    let mut f = Flow::tcp4();
    f.seq = u32::MAX - 1500;
    f.id = u16::MAX;
    check_split(&f, 3000, 1000, 1500);
}

#[test]
fn ipv4_options_are_copied_into_every_segment() {
    let mut f = Flow::tcp4();
    f.ip_opts = vec![0x94, 4, 0, 0]; // router alert
    check_split(&f, 2500, 1000, 1500);
}

#[test]
fn empty_payload_is_one_header_only_segment() {
    check_split(&Flow::tcp4(), 0, 1000, 1500);
}

#[test]
fn gso_none_is_passed_through() {
    let p = packet(&Flow::udp4(), &payload(100));
    let segs = segments(&VnetHdr::default(), &p, 1500).unwrap();
    assert_eq!(segs, [p]);
    // Whatever it is and however big: the TUN's own MTU bounds it.
    let junk = vec![0xee; 3000];
    assert_eq!(segments(&VnetHdr::default(), &junk, 1500).unwrap(), [junk]);
}

#[test]
fn gso_none_needs_csum_is_completed() {
    for f in [Flow::tcp4(), Flow::tcp6(), Flow::udp4(), Flow::udp6()] {
        let (mut h, sup) = kernel_super(&f, &payload(777), 1000);
        h.gso_type = GSO_NONE;
        h.gso_size = 0;
        let segs = segments(&h, &sup, 1500).unwrap();
        assert_eq!(segs, [packet(&f, &payload(777))]);
    }
}

#[test]
fn gso_none_needs_csum_outside_the_packet_is_refused() {
    let p = packet(&Flow::udp4(), &payload(10));
    for (start, off) in [(37, 0), (38, 0), (20, 17), (u16::MAX, u16::MAX)] {
        let h = VnetHdr {
            flags: F_NEEDS_CSUM,
            csum_start: start,
            csum_offset: off,
            ..Default::default()
        };
        assert_eq!(
            segments(&h, &p, 1500),
            Err(Error::BadChecksumOffset),
            "{start}+{off}"
        );
    }
}

#[test]
fn truncated_packets_are_refused() {
    let (h, sup) = kernel_super(&Flow::tcp4(), &payload(3000), 1000);
    assert_eq!(segments(&h, &[], 1500), Err(Error::Truncated));
    assert_eq!(segments(&h, &sup[..19], 1500), Err(Error::Truncated));
    // A header that says 20 + 32 bytes of TCP header, all of it present in
    // the length field but cut off in the slice.
    let mut short = sup[..40].to_vec();
    short[2..4].copy_from_slice(&40u16.to_be_bytes());
    let hs = VnetHdr { hdr_len: 40, ..h };
    assert_eq!(segments(&hs, &short, 1500), Err(Error::Truncated));
    let (h6, sup6) = kernel_super(&Flow::udp6(), &payload(3000), 1000);
    assert_eq!(segments(&h6, &sup6[..39], 1500), Err(Error::Truncated));
}

#[test]
fn length_field_claiming_more_or_less_than_present_is_refused() {
    for f in [Flow::tcp4(), Flow::tcp6(), Flow::udp4()] {
        let (h, sup) = kernel_super(&f, &payload(3000), 1000);
        assert_eq!(
            segments(&h, &sup[..sup.len() - 1], 1500),
            Err(Error::LengthMismatch)
        );
        let mut more = sup.clone();
        more.push(0);
        assert_eq!(segments(&h, &more, 1500), Err(Error::LengthMismatch));
    }
    // UDP length disagreeing with the IP length.
    let (h, mut sup) = kernel_super(&Flow::udp4(), &payload(3000), 1000);
    sup[24] ^= 1;
    assert_eq!(segments(&h, &sup, 1500), Err(Error::LengthMismatch));
}

#[test]
fn gso_size_zero_or_over_mtu_is_refused() {
    let f = Flow::tcp4();
    let (mut h, sup) = kernel_super(&f, &payload(3000), 0);
    assert_eq!(segments(&h, &sup, 1500), Err(Error::SegmentSizeZero));
    h.gso_size = (1500 - f.hdr_len() + 1) as u16;
    assert_eq!(segments(&h, &sup, 1500), Err(Error::SegmentTooBig));
    h.gso_size -= 1;
    assert!(segments(&h, &sup, 1500).is_ok());
    assert_eq!(segments(&h, &sup, 0), Err(Error::SegmentTooBig));
}

#[test]
fn gso_type_must_match_the_packet() {
    let (h, sup) = kernel_super(&Flow::udp4(), &payload(3000), 1000);
    for t in [GSO_TCPV4, GSO_TCPV6] {
        assert_eq!(
            segments(&VnetHdr { gso_type: t, ..h }, &sup, 1500),
            Err(Error::NotTcpOrUdp)
        );
    }
    let (h, sup) = kernel_super(&Flow::tcp4(), &payload(3000), 1000);
    for t in [GSO_TCPV6, GSO_UDP_L4] {
        assert_eq!(
            segments(&VnetHdr { gso_type: t, ..h }, &sup, 1500),
            Err(Error::NotTcpOrUdp)
        );
    }
    // ICMP in a TCP super-packet.
    let mut icmp = sup.clone();
    icmp[9] = 1;
    assert_eq!(segments(&h, &icmp, 1500), Err(Error::NotTcpOrUdp));
}

#[test]
fn unknown_gso_types_are_refused() {
    let (h, sup) = kernel_super(&Flow::udp4(), &payload(3000), 1000);
    // 3 is UFO (IP fragmentation), ECN makes no sense on UDP.
    for t in [3, 2, 6, 0x7f, GSO_UDP_L4 | GSO_ECN, GSO_ECN] {
        assert_eq!(
            segments(&VnetHdr { gso_type: t, ..h }, &sup, 1500),
            Err(Error::UnknownGsoType),
            "{t}"
        );
    }
}

#[test]
fn ipv6_extension_headers_are_refused() {
    let (h, mut sup) = kernel_super(&Flow::tcp6(), &payload(3000), 1000);
    for nh in [0, 43, 44, 60] {
        sup[6] = nh;
        assert_eq!(
            segments(&h, &sup, 1500),
            Err(Error::NotTcpOrUdp),
            "next header {nh}"
        );
    }
}

#[test]
fn bad_ip_headers_are_refused() {
    let (h, sup) = kernel_super(&Flow::tcp4(), &payload(3000), 1000);
    let mut v = sup.clone();
    v[0] = 0x55;
    assert_eq!(segments(&h, &v, 1500), Err(Error::BadIpHeader));
    let mut ihl = sup.clone();
    ihl[0] = 0x44;
    assert_eq!(segments(&h, &ihl, 1500), Err(Error::BadIpHeader));
    for frag in [[0x20, 0], [0, 1]] {
        let mut fr = sup.clone();
        fr[6..8].copy_from_slice(&frag);
        assert_eq!(segments(&h, &fr, 1500), Err(Error::BadIpHeader));
    }
    let mut doff = sup.clone();
    doff[32] = 0x40;
    assert_eq!(segments(&h, &doff, 1500), Err(Error::BadHeaderLength));
}

#[test]
fn inconsistent_vnet_header_lengths_are_refused() {
    let (h, sup) = kernel_super(&Flow::tcp4(), &payload(3000), 1000);
    let hl = VnetHdr {
        hdr_len: sup.len() as u16 + 1,
        ..h
    };
    assert_eq!(segments(&hl, &sup, 1500), Err(Error::BadHeaderLength));
    // The kernel may put the linear length in hdr_len: allowed.
    let lin = VnetHdr {
        hdr_len: sup.len() as u16,
        ..h
    };
    assert!(segments(&lin, &sup, 1500).is_ok());
    let cs = VnetHdr {
        csum_start: 24,
        ..h
    };
    assert_eq!(segments(&cs, &sup, 1500), Err(Error::BadHeaderLength));
    let co = VnetHdr {
        csum_offset: 6,
        ..h
    };
    assert_eq!(segments(&co, &sup, 1500), Err(Error::BadChecksumOffset));
    // Without NEEDS_CSUM the checksum fields are not looked at.
    let none = VnetHdr {
        flags: 0,
        csum_start: 999,
        csum_offset: 999,
        ..h
    };
    assert!(segments(&none, &sup, 1500).is_ok());
}

#[test]
fn packets_over_max_super_are_refused() {
    let big = vec![0x45; 65536];
    let h = VnetHdr {
        gso_type: GSO_TCPV4,
        gso_size: 1000,
        ..Default::default()
    };
    assert_eq!(segments(&h, &big, 1500), Err(Error::TooBig));
    let mut pkt = big.clone();
    assert_eq!(header_for(&mut pkt, 1000, 1500, ALL), Err(Error::TooBig));
}

#[test]
fn header_for_super_packet_gives_the_kernel_header() {
    for f in [Flow::tcp4(), Flow::tcp6(), Flow::udp4(), Flow::udp6()] {
        let data = payload(5000);
        let (want, sup) = kernel_super(&f, &data, 1200);
        // A peer may send it fully checksummed or as the TUN gave it.
        for mut pkt in [packet(&f, &data), sup.clone()] {
            let h = header_for(&mut pkt, 1200, 1280, ALL).unwrap();
            assert_eq!(h, want);
            assert_eq!(pkt, sup);
            // And what the kernel would make of it is right.
            let segs = segments(&h, &pkt, 1280).unwrap();
            assert_eq!(segs.len(), 5);
            segs.iter().for_each(|s| verify(s).unwrap());
        }
    }
}

#[test]
fn header_for_then_split_cuts_a_peer_super_packet_without_a_tun() {
    for f in [Flow::tcp4(), Flow::udp6()] {
        for len in [500, 3000] {
            let data = payload(len);
            let (_, mut sup) = kernel_super(&f, &data, 1000);
            let h = header_for(&mut sup, 1000, 1500, Offloads::ALL).unwrap();
            let segs = segments(&h, &sup, 1500).unwrap();
            assert_eq!(segs.len(), len.div_ceil(1000));
            let mut got = Vec::new();
            for s in &segs {
                verify(s).unwrap();
                got.extend_from_slice(&s[f.hdr_len()..]);
            }
            assert_eq!(got, data);
        }
    }
}

#[test]
fn header_for_sets_ecn_with_cwr() {
    let mut f = Flow::tcp6();
    f.flags |= CWR;
    let mut pkt = packet(&f, &payload(3000));
    assert_eq!(
        header_for(&mut pkt, 1000, 1500, ALL).unwrap().gso_type,
        GSO_TCPV6 | GSO_ECN
    );
}

#[test]
fn header_for_single_segment() {
    let f = Flow::udp4();
    let whole = packet(&f, &payload(1000));
    let mut pkt = whole.clone();
    let h = header_for(&mut pkt, 1000, 1500, ALL).unwrap();
    assert_eq!(
        h,
        VnetHdr {
            flags: F_NEEDS_CSUM,
            gso_type: GSO_NONE,
            hdr_len: 28,
            gso_size: 0,
            csum_start: 20,
            csum_offset: 6
        }
    );
    complete(&mut pkt, &h);
    assert_eq!(pkt, whole);
    // Without TUN_F_CSUM: completed here, plain header.
    let (_, mut sup) = kernel_super(&f, &payload(1000), 1000);
    let h = header_for(&mut sup, 1400, 1500, Offloads::default()).unwrap();
    assert_eq!(h, VnetHdr::default());
    assert_eq!(sup, whole);
}

#[test]
fn header_for_refuses_bad_gso_size_and_missing_offloads() {
    let f = Flow::tcp4();
    let pkt = packet(&f, &payload(3000));
    let t = |g: u16, mtu: usize, o: Offloads| {
        let mut p = pkt.clone();
        let r = header_for(&mut p, g, mtu, o);
        if r.is_err() {
            assert_eq!(p, pkt, "changed on error");
        }
        r
    };
    assert_eq!(t(0, 1500, ALL), Err(Error::SegmentSizeZero));
    assert_eq!(t(1500, 1500, ALL), Err(Error::SegmentTooBig));
    let no_tso4 = Offloads { tso4: false, ..ALL };
    assert_eq!(t(1000, 1500, no_tso4), Err(Error::OffloadDisabled));
    assert!(t(3000, 3100, no_tso4).is_ok(), "one segment needs no TSO");
    let mut p6 = packet(&Flow::udp6(), &payload(3000));
    assert_eq!(
        header_for(&mut p6, 1000, 1500, Offloads { uso6: false, ..ALL }),
        Err(Error::OffloadDisabled)
    );
    let mut icmp = pkt.clone();
    icmp[9] = 1;
    assert_eq!(
        header_for(&mut icmp, 1000, 1500, ALL),
        Err(Error::NotTcpOrUdp)
    );
    let mut short = pkt.clone();
    short.pop();
    assert_eq!(
        header_for(&mut short, 1000, 1500, ALL),
        Err(Error::LengthMismatch)
    );
}

#[test]
fn header_for_refuses_too_many_udp_segments() {
    let f = Flow::udp4();
    let mut ok = packet(&f, &payload(100 * MAX_UDP_SEGMENTS));
    assert!(header_for(&mut ok, 100, 1500, ALL).is_ok());
    let mut over = packet(&f, &payload(100 * MAX_UDP_SEGMENTS + 1));
    assert_eq!(
        header_for(&mut over, 100, 1500, ALL),
        Err(Error::TooManySegments)
    );
}

#[test]
fn reasons_are_distinct_labels() {
    let all = Error::ALL;
    let mut r: Vec<_> = all.iter().map(Error::reason).collect();
    assert!(r
        .iter()
        .all(|s| s.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')));
    r.sort();
    r.dedup();
    assert_eq!(r.len(), all.len());
}
