//! The Coalescer, case by case.

mod common;

use common::*;
use sapper_offload::{
    Coalescer, Error, Offloads, VnetHdr, F_NEEDS_CSUM, GSO_TCPV4, GSO_UDP_L4, MAX_HELD,
    MAX_HELD_BYTES, MAX_SUPER, MAX_UDP_SEGMENTS,
};

const ALL: Offloads = Offloads {
    csum: true,
    tso4: true,
    tso6: true,
    uso4: true,
    uso6: true,
};

fn payload(n: usize, salt: u8) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u8).wrapping_mul(13).wrapping_add(salt))
        .collect()
}

/// `n` consecutive segments of `size` bytes (the last `last` bytes).
fn run(f: &Flow, n: usize, size: usize, last: usize) -> Vec<Vec<u8>> {
    let mut f = f.clone();
    (0..n)
        .map(|i| {
            let len = if i + 1 == n { last } else { size };
            let p = packet(&f, &payload(len, i as u8));
            f.seq = f.seq.wrapping_add(len as u32);
            f.id = f.id.wrapping_add(1);
            p
        })
        .collect()
}

fn coalesce(o: Offloads, pkts: &[Vec<u8>]) -> Vec<(VnetHdr, Vec<u8>)> {
    let mut c = Coalescer::new(o);
    let mut out = Vec::new();
    for p in pkts {
        c.push(p, |w| out.push(unwrap_write(w))).unwrap();
    }
    c.flush(|w| out.push(unwrap_write(w)));
    assert!(c.is_empty());
    out
}

/// The super-packet the segments of `run` add up to, as the kernel expects it.
fn expected_super(f: &Flow, segs: &[Vec<u8>]) -> (VnetHdr, Vec<u8>) {
    let hl = f.hdr_len();
    let data: Vec<u8> = segs.iter().flat_map(|s| s[hl..].to_vec()).collect();
    let mut g = f.clone();
    g.flags |= tcp_flags_or(segs) & (FIN | PSH);
    kernel_super(&g, &data, (segs[0].len() - hl) as u16)
}

fn tcp_flags_or(segs: &[Vec<u8>]) -> u8 {
    if segs[0][if segs[0][0] >> 4 == 6 { 6 } else { 9 }] == 6 {
        tcp_flags(segs.last().unwrap())
    } else {
        0
    }
}

#[test]
fn tcp_segments_of_one_flow_become_one_super_packet() {
    for f in [Flow::tcp4(), Flow::tcp6()] {
        let mut f = f;
        f.flags = ACK;
        let mut segs = run(&f, 5, 1000, 400);
        // PSH on the last, as a sender sets it.
        let at = ip_len(&segs[4]) + 13;
        segs[4][at] |= PSH;
        let ipl = ip_len(&segs[4]);
        let mut all = pseudo_bytes(&segs[4], segs[4].len() - ipl);
        segs[4][ipl + 16..ipl + 18].fill(0);
        all.extend_from_slice(&segs[4][ipl..]);
        let c = !sum16(&all);
        segs[4][ipl + 16..ipl + 18].copy_from_slice(&c.to_be_bytes());
        verify(&segs[4]).unwrap();

        let out = coalesce(ALL, &segs);
        assert_eq!(out.len(), 1);
        let (h, p) = &out[0];
        let (wh, wp) = expected_super(&f, &segs);
        assert_eq!(h, &wh);
        assert_eq!(p, &wp);
        assert_eq!(h.flags, F_NEEDS_CSUM);
        assert_eq!(usize::from(h.gso_size), 1000);
        // What the kernel completes is a valid packet.
        let mut done = p.clone();
        complete(&mut done, h);
        verify(&done).unwrap();
    }
}

#[test]
fn udp_datagrams_join_only_with_uso() {
    for f in [Flow::udp4(), Flow::udp6()] {
        let segs = run(&f, 4, 1200, 1200);
        let out = coalesce(ALL, &segs);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].0.gso_type, GSO_UDP_L4);
        assert_eq!(out[0], expected_super(&f, &segs));
        let out = coalesce(
            Offloads {
                uso4: false,
                uso6: false,
                ..ALL
            },
            &segs,
        );
        assert_eq!(out.len(), 4);
        for ((h, p), s) in out.iter().zip(&segs) {
            assert_eq!(*h, VnetHdr::default());
            assert_eq!(p, s);
        }
    }
}

#[test]
fn nothing_joins_without_tso() {
    let segs = run(&Flow::tcp4(), 4, 1000, 1000);
    let out = coalesce(Offloads { tso4: false, ..ALL }, &segs);
    let got: Vec<_> = out.iter().map(|(_, p)| p.clone()).collect();
    assert_eq!(got, segs);
    // tso6 alone does not let IPv4 join.
    let out = coalesce(
        Offloads {
            tso6: true,
            ..Default::default()
        },
        &segs,
    );
    assert_eq!(out.len(), 4);
}

#[test]
fn a_single_packet_is_written_as_pushed() {
    let p = packet(&Flow::tcp4(), &payload(100, 0));
    let out = coalesce(ALL, std::slice::from_ref(&p));
    assert_eq!(out, [(VnetHdr::default(), p)]);
}

#[test]
fn interleaved_flows_each_join_and_keep_first_arrival_order() {
    let a = run(&Flow::tcp4(), 3, 1000, 1000);
    let mut fb = Flow::tcp4();
    fb.sport = 40001;
    let b = run(&fb, 3, 500, 500);
    let mixed = vec![
        a[0].clone(),
        b[0].clone(),
        a[1].clone(),
        b[1].clone(),
        b[2].clone(),
        a[2].clone(),
    ];
    let out = coalesce(ALL, &mixed);
    assert_eq!(
        out,
        [expected_super(&Flow::tcp4(), &a), expected_super(&fb, &b)]
    );
}

#[test]
fn out_of_order_segment_starts_a_new_run_and_order_is_kept() {
    let segs = run(&Flow::tcp4(), 4, 1000, 1000);
    let out = coalesce(
        ALL,
        &[
            segs[0].clone(),
            segs[2].clone(),
            segs[1].clone(),
            segs[3].clone(),
        ],
    );
    // 0 | 2 (a gap) | 1 (may not join 0: it would jump ahead of 2) | 3
    // (follows 2, but 1 is the flow's newest run).
    let got: Vec<Vec<u8>> = out.iter().map(|(_, p)| p.clone()).collect();
    assert_eq!(got.len(), 4);
    assert_eq!(got[0], segs[0]);
    assert_eq!(got[1], segs[2]);
    assert_eq!(got[2], segs[1]);
    assert_eq!(got[3], segs[3]);
}

#[test]
fn a_bigger_segment_after_a_smaller_one_does_not_join() {
    let f = Flow::tcp4();
    let small = run(&f, 2, 500, 500);
    let mut g = f.clone();
    g.seq += 1000;
    g.id += 2;
    let big = packet(&g, &payload(1000, 9));
    let out = coalesce(ALL, &[small[0].clone(), small[1].clone(), big.clone()]);
    assert_eq!(out.len(), 2);
    assert_eq!(out[0], expected_super(&f, &small));
    assert_eq!(out[1].1, big);
    // And nothing joins behind a shorter one.
    let segs = run(&f, 3, 1000, 1000);
    let mut short = segs.clone();
    short[1] = run(&f, 2, 1000, 600)[1].clone();
    let mut h = f.clone();
    h.seq += 1600;
    h.id += 2;
    short[2] = packet(&h, &payload(1000, 2));
    let out = coalesce(ALL, &short);
    assert_eq!(out.len(), 2);
    assert_eq!(out[0], expected_super(&f, &short[..2]));
}

#[test]
fn control_segments_and_pure_acks_are_not_joined() {
    for flag in [SYN, RST, URG, FIN, CWR] {
        let mut f = Flow::tcp4();
        let first = packet(&f, &payload(1000, 1));
        f.seq += 1000;
        f.id += 1;
        f.flags |= flag;
        let second = packet(&f, &payload(1000, 2));
        let out = coalesce(ALL, &[first.clone(), second.clone()]);
        if flag == FIN {
            // FIN may end a run.
            assert_eq!(out.len(), 1, "FIN");
            assert_eq!(tcp_flags(&out[0].1) & FIN, FIN);
        } else {
            assert_eq!(out.len(), 2, "flag {flag:#x}");
        }
    }
    // A pure ACK in between keeps the runs apart (order within the flow).
    let segs = run(&Flow::tcp4(), 2, 1000, 1000);
    let ack = packet(&Flow::tcp4(), &[]);
    let out = coalesce(ALL, &[segs[0].clone(), ack.clone(), segs[1].clone()]);
    let got: Vec<Vec<u8>> = out.iter().map(|(_, p)| p.clone()).collect();
    assert_eq!(got, [segs[0].clone(), ack, segs[1].clone()]);
}

#[test]
fn nothing_joins_after_psh_or_fin() {
    let mut f = Flow::tcp4();
    f.flags = ACK | PSH;
    let segs = run(&f, 3, 1000, 1000);
    assert_eq!(coalesce(ALL, &segs).len(), 3);
}

#[test]
fn header_fields_that_must_match() {
    let f = Flow::tcp4();
    let base = run(&f, 2, 1000, 1000);
    let changes: [fn(&mut Flow); 9] = [
        |g| g.ack += 1,
        |g| g.window += 1,
        |g| g.ttl -= 1,
        |g| g.tos = 4,
        |g| g.df = false,
        |g| g.tcp_opts[11] ^= 1,
        |g| g.id += 1,
        |g| g.flags |= ECE,
        |g| g.dst[3] = 3,
    ];
    for (i, ch) in changes.iter().enumerate() {
        let mut g = f.clone();
        g.seq += 1000;
        g.id += 1;
        ch(&mut g);
        let second = packet(&g, &payload(1000, 1));
        assert_eq!(
            coalesce(ALL, &[base[0].clone(), second]).len(),
            2,
            "change {i}"
        );
    }
    let mut g = Flow::tcp6();
    let first = packet(&g, &payload(1000, 0));
    g.seq += 1000;
    g.flow_label ^= 1;
    assert_eq!(
        coalesce(ALL, &[first, packet(&g, &payload(1000, 1))]).len(),
        2
    );
    assert_eq!(coalesce(ALL, &base).len(), 1);
}

#[test]
fn a_segment_with_a_bad_checksum_is_never_joined() {
    let mut segs = run(&Flow::tcp4(), 3, 1000, 1000);
    let last = segs[1].len() - 1;
    segs[1][last] ^= 0x5a;
    let out = coalesce(ALL, &segs);
    let got: Vec<Vec<u8>> = out.iter().map(|(_, p)| p.clone()).collect();
    assert_eq!(got, segs, "written as pushed, for the kernel to drop");
    // A bad IPv4 header checksum too.
    let mut segs = run(&Flow::udp4(), 2, 1000, 1000);
    segs[1][8] -= 1; // TTL
    assert_eq!(coalesce(ALL, &segs).len(), 2);
    // UDP without a checksum.
    let mut segs = run(&Flow::udp4(), 2, 1000, 1000);
    segs.iter_mut().for_each(|s| s[26..28].fill(0));
    assert_eq!(coalesce(ALL, &segs).len(), 2);
}

#[test]
fn super_packets_stay_under_64k_and_udp_under_the_segment_limit() {
    let segs = run(&Flow::tcp4(), 200, 1400, 1400);
    let out = coalesce(ALL, &segs);
    assert!(out.iter().all(|(_, p)| p.len() <= MAX_SUPER));
    let per = (MAX_SUPER - Flow::tcp4().hdr_len()) / 1400;
    assert_eq!(out.len(), 200usize.div_ceil(per));
    let segs = run(&Flow::udp6(), MAX_UDP_SEGMENTS + 1, 100, 100);
    let out = coalesce(ALL, &segs);
    assert_eq!(out.len(), 2);
    assert_eq!(
        out[0],
        expected_super(&Flow::udp6(), &segs[..MAX_UDP_SEGMENTS])
    );
}

#[test]
fn held_packets_are_bounded_and_the_oldest_written_first() {
    let mut c = Coalescer::new(ALL);
    let mut out = Vec::new();
    let mut pushed = Vec::new();
    for i in 0..(MAX_HELD * 2 + 3) {
        let mut f = Flow::udp4();
        f.sport = 1000 + i as u16;
        let p = packet(&f, &payload(100, i as u8));
        c.push(&p, |w| out.push(unwrap_write(w).1)).unwrap();
        pushed.push(p);
        assert!(pushed.len() - out.len() <= MAX_HELD);
    }
    assert_eq!(out.len(), MAX_HELD + 3);
    c.flush(|w| out.push(unwrap_write(w).1));
    assert_eq!(out, pushed);

    // Bytes: big packets of distinct flows.
    let mut c = Coalescer::new(ALL);
    let mut out = Vec::new();
    let mut held = 0;
    for i in 0..20 {
        let mut f = Flow::tcp4();
        f.sport = i;
        let p = packet(&f, &payload(60000, 0));
        c.push(&p, |w| out.push(w.len())).unwrap();
        held += p.len();
        held -= out
            .drain(..)
            .map(|n| n - sapper_offload::VNET_HDR_LEN)
            .sum::<usize>();
        assert!(held <= MAX_HELD_BYTES);
    }
}

#[test]
fn malformed_packets_are_errors_and_not_held() {
    let mut c = Coalescer::new(ALL);
    let good = packet(&Flow::tcp4(), &payload(10, 0));
    let nop = |_: &[u8]| panic!("nothing to write");
    assert_eq!(c.push(&[], nop), Err(Error::Truncated));
    assert_eq!(c.push(&[0x60; 39], nop), Err(Error::Truncated));
    assert_eq!(c.push(&[0x70; 60], nop), Err(Error::BadIpHeader));
    assert_eq!(
        c.push(&good[..good.len() - 1], nop),
        Err(Error::LengthMismatch)
    );
    assert_eq!(c.push(&vec![0x45; MAX_SUPER + 1], nop), Err(Error::TooBig));
    assert!(c.is_empty());
    // Not TCP/UDP, or a fragment, or a truncated TCP header: held as is.
    let mut icmp = good.clone();
    icmp[9] = 1;
    let mut frag = good.clone();
    frag[7] = 1;
    let mut short_tcp = good[..30].to_vec();
    short_tcp[2..4].copy_from_slice(&30u16.to_be_bytes());
    let odd = vec![icmp, frag, short_tcp];
    let out = coalesce(ALL, &odd);
    assert_eq!(out.into_iter().map(|(_, p)| p).collect::<Vec<_>>(), odd);
}

#[test]
fn push_super_keeps_flow_order() {
    let f = Flow::tcp4();
    let segs = run(&f, 5, 1000, 1000);
    // Segment 0 held, then a super-packet of 1..3, then 4: three writes, in
    // order, and 4 must not join 0.
    let (_, mid) = expected_super(
        &{
            let mut g = f.clone();
            g.seq += 1000;
            g.id += 1;
            g
        },
        &segs[1..4],
    );
    let mut c = Coalescer::new(ALL);
    let mut out = Vec::new();
    c.push(&segs[0], |w| out.push(unwrap_write(w))).unwrap();
    c.push_super(&mid, 1000, 1500, |w| out.push(unwrap_write(w)))
        .unwrap();
    c.push(&segs[4], |w| out.push(unwrap_write(w))).unwrap();
    assert_eq!(
        c.push_super(&mid, 0, 1500, |_| {}),
        Err(Error::SegmentSizeZero)
    );
    c.flush(|w| out.push(unwrap_write(w)));
    assert_eq!(out.len(), 3);
    assert_eq!(out[0].1, segs[0]);
    assert_eq!(out[1].0.gso_type, GSO_TCPV4);
    assert_eq!(out[1].1, mid);
    assert_eq!(out[2].1, segs[4]);
}

#[test]
fn buffers_are_reused_across_bursts() {
    let segs = run(&Flow::tcp4(), 100, 1400, 1400);
    let mut c = Coalescer::new(ALL);
    let mut ptrs = Vec::new();
    for _ in 0..3 {
        for s in &segs {
            c.push(s, |_| {}).unwrap();
        }
        let mut burst = Vec::new();
        c.flush(|w| burst.push(w.as_ptr() as usize));
        burst.sort();
        ptrs.push(burst);
    }
    assert_eq!(ptrs[2].len(), 3);
    assert_eq!(
        ptrs[1], ptrs[2],
        "the same buffers hold the same burst again"
    );
}
