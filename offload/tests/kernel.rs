//! Against the real kernel: a TUN opened with IFF_VNET_HDR and
//! TUNSETOFFLOAD (csum, TSO, USO) in a network namespace of each test's own
//! (`unshare(CLONE_NEWNET)` on the test's thread; needs root, as all of
//! Sapper's tests). These pin down the ABI the crate assumes: what the kernel
//! hands out (super-packets `split` must cut), what it takes (the
//! coalescer's writes, delivered to local sockets), and that the partial
//! checksum convention is right (a forwarded super-packet, cut by the
//! kernel's software GSO on its way out of a TUN without offloads, comes out
//! as the original packets with valid checksums — local delivery alone
//! would trust any checksum of a NEEDS_CSUM packet).

mod common;

use std::fs::File;
use std::io::{Read, Write};
use std::net::{TcpListener, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd};
use std::process::Command;
use std::time::Duration;

use common::*;
use sapper_offload::*;

const MTU: usize = 1500;
const ALL: Offloads = Offloads {
    csum: true,
    tso4: true,
    tso6: true,
    uso4: true,
    uso6: true,
};

fn sh(cmd: &str) {
    let st = Command::new("sh").arg("-c").arg(cmd).status().expect("sh");
    assert!(st.success(), "{cmd}");
}

/// Moves this test's thread into a new network namespace (children it
/// spawns, like `ip`, inherit it).
fn own_netns() {
    // SAFETY: plain syscall; affects only this thread.
    let r = unsafe { libc::unshare(libc::CLONE_NEWNET) };
    assert_eq!(
        r,
        0,
        "unshare(CLONE_NEWNET) needs root: {}",
        std::io::Error::last_os_error()
    );
}

struct Tun {
    file: File,
    vnet: bool,
}

impl Tun {
    /// TUNSETIFF with IFF_TUN | IFF_NO_PI (| IFF_VNET_HDR and all offloads).
    fn open(name: &str, vnet: bool) -> Tun {
        // SAFETY: open(2) of a constant path.
        let fd = unsafe { libc::open(c"/dev/net/tun".as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) };
        assert!(fd >= 0, "open /dev/net/tun");
        // SAFETY: we own the fresh fd.
        let file = unsafe { File::from_raw_fd(fd) };
        let mut ifr = [0u8; 40]; // struct ifreq: name, then ifr_flags
        ifr[..name.len()].copy_from_slice(name.as_bytes());
        let mut flags = libc::IFF_TUN | libc::IFF_NO_PI;
        if vnet {
            flags |= libc::IFF_VNET_HDR;
        }
        ifr[16..18].copy_from_slice(&(flags as u16).to_ne_bytes());
        const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
        const TUNSETOFFLOAD: libc::c_ulong = 0x4004_54d0;
        // SAFETY: TUNSETIFF reads and writes a struct ifreq we own.
        assert_eq!(
            unsafe { libc::ioctl(fd, TUNSETIFF, ifr.as_mut_ptr()) },
            0,
            "TUNSETIFF"
        );
        if vnet {
            // TUN_F_CSUM | TSO4 | TSO6 | USO4 | USO6 (USO: kernel 6.2+).
            let off: libc::c_ulong = 0x01 | 0x02 | 0x04 | 0x20 | 0x40;
            // SAFETY: TUNSETOFFLOAD takes the flags by value.
            assert_eq!(
                unsafe { libc::ioctl(fd, TUNSETOFFLOAD, off) },
                0,
                "TUNSETOFFLOAD"
            );
        }
        Tun { file, vnet }
    }

    /// One read, with a 3 s deadline.
    fn read(&mut self, buf: &mut [u8]) -> usize {
        let mut pfd = libc::pollfd {
            fd: self.file.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one pollfd we own.
        let r = unsafe { libc::poll(&mut pfd, 1, 3000) };
        assert_eq!(r, 1, "nothing to read from the TUN within 3 s");
        self.file.read(buf).expect("TUN read")
    }

    /// Reads until `want` accepts a packet (at most 100 reads: the kernel
    /// may send unrelated packets, e.g. IPv6 MLD).
    fn read_until(&mut self, mut want: impl FnMut(&[u8]) -> bool) -> (VnetHdr, Vec<u8>) {
        let mut buf = vec![0u8; VNET_HDR_LEN + MAX_SUPER];
        let skip = if self.vnet { VNET_HDR_LEN } else { 0 };
        for _ in 0..100 {
            let n = self.read(&mut buf);
            let h = if self.vnet {
                VnetHdr::decode(&buf[..n]).expect("vnet header")
            } else {
                VnetHdr::default()
            };
            if want(&buf[skip..n]) {
                return (h, buf[skip..n].to_vec());
            }
        }
        panic!("the packet wanted never came");
    }

    fn write(&mut self, w: &[u8]) {
        assert_eq!(self.file.write(w).expect("TUN write"), w.len());
    }
}

fn is(p: &[u8], v6: bool, proto: u8) -> bool {
    !p.is_empty() && (p[0] >> 4 == 6) == v6 && p.len() > 40 && p[if v6 { 6 } else { 9 }] == proto
}

fn split_all(h: &VnetHdr, p: &[u8]) -> Vec<Vec<u8>> {
    let mut p = p.to_vec();
    let (mut out, mut scratch) = (Vec::new(), Vec::new());
    split(h, &mut p, MTU, &mut scratch, |s| out.push(s.to_vec())).expect("split");
    out
}

/// Pushes `pkts` through a coalescer, expecting exactly one write.
fn coalesce_one(pkts: &[Vec<u8>]) -> Vec<u8> {
    let mut c = Coalescer::new(ALL);
    let mut writes = Vec::new();
    for p in pkts {
        c.push(p, |w| writes.push(w.to_vec())).expect("push");
    }
    c.flush(|w| writes.push(w.to_vec()));
    assert_eq!(writes.len(), 1);
    writes.remove(0)
}

/// Segments of a flow: `n` of `size` bytes and a last of `last`.
fn flow_packets(f: &mut Flow, n: usize, size: usize, last: usize) -> Vec<Vec<u8>> {
    (0..n)
        .map(|i| {
            let len = if i + 1 == n { last } else { size };
            let d: Vec<u8> = (0..len).map(|j| (i * 13 + j * 3) as u8).collect();
            let p = packet(f, &d);
            f.id = f.id.wrapping_add(1);
            f.seq = f.seq.wrapping_add(len as u32);
            p
        })
        .collect()
}

fn v4(a: [u8; 4]) -> [u8; 16] {
    let mut x = [0u8; 16];
    x[..4].copy_from_slice(&a);
    x
}

fn up(name: &str, addr: &str) {
    sh(&format!(
        "sysctl -qw net.ipv6.conf.{name}.disable_ipv6=1 && ip addr add {addr} dev {name} && ip link set {name} mtu {MTU} up"
    ));
}

#[test]
fn kernel_udp_gso_send_reads_as_a_super_packet_split_cuts() {
    own_netns();
    let mut tun = Tun::open("ofl0", true);
    up("ofl0", "10.99.0.1/24");
    let s = UdpSocket::bind("10.99.0.1:0").expect("bind");
    let seg: libc::c_int = 1000;
    const UDP_SEGMENT: libc::c_int = 103;
    // SAFETY: setsockopt with an int we own.
    let r = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_UDP,
            UDP_SEGMENT,
            (&seg as *const libc::c_int).cast(),
            4,
        )
    };
    assert_eq!(r, 0);
    let data: Vec<u8> = (0..4500u32).map(|i| (i * 7) as u8).collect();
    s.send_to(&data, "10.99.0.2:9").expect("send");
    let (h, p) = tun.read_until(|p| is(p, false, 17));
    assert_eq!(
        (h.gso_type, h.gso_size, h.flags),
        (GSO_UDP_L4, 1000, F_NEEDS_CSUM)
    );
    let segs = split_all(&h, &p);
    assert_eq!(segs.len(), 5);
    let mut got = Vec::new();
    for s in &segs {
        verify(s).expect("valid segment");
        got.extend_from_slice(&s[28..]);
    }
    assert_eq!(got, data);
}

#[test]
fn kernel_delivers_coalesced_udp_and_tcp_and_its_tso_reads_split() {
    own_netns();
    let mut tun = Tun::open("ofl0", true);
    up("ofl0", "10.99.0.1/24");

    // UDP: one coalesced write, five datagrams at the socket.
    let r = UdpSocket::bind("10.99.0.1:6000").expect("bind");
    r.set_read_timeout(Some(Duration::from_secs(3)))
        .expect("timeout");
    let mut f = Flow {
        src: v4([10, 99, 0, 2]),
        dst: v4([10, 99, 0, 1]),
        sport: 5000,
        dport: 6000,
        ..Flow::udp4()
    };
    let pkts = flow_packets(&mut f, 5, 1000, 500);
    let w = coalesce_one(&pkts);
    assert_eq!(VnetHdr::decode(&w).expect("hdr").gso_type, GSO_UDP_L4);
    tun.write(&w);
    let mut buf = [0u8; 2000];
    for p in &pkts {
        let n = r.recv(&mut buf).expect("datagram delivered");
        assert_eq!(&buf[..n], &p[28..]);
    }

    // TCP: handshake by hand, then one coalesced write of ten segments.
    let l = TcpListener::bind("10.99.0.1:7000").expect("listen");
    let mut t = Flow {
        src: v4([10, 99, 0, 2]),
        dst: v4([10, 99, 0, 1]),
        sport: 5555,
        dport: 7000,
        seq: 1000,
        ack: 0,
        flags: SYN,
        window: 65535,
        tcp_opts: vec![2, 4, 0x05, 0xb4], // MSS 1460
        ..Flow::tcp4()
    };
    let plain = [0u8; VNET_HDR_LEN];
    tun.write(&[&plain[..], &packet(&t, &[])].concat());
    let (_, synack) = tun.read_until(|p| is(p, false, 6) && tcp_flags(p) & SYN != 0);
    t.seq += 1;
    t.ack = be32(&synack, 24).wrapping_add(1);
    t.flags = ACK;
    t.tcp_opts = vec![];
    t.id += 1;
    tun.write(&[&plain[..], &packet(&t, &[])].concat());
    let (mut conn, _) = l.accept().expect("accept");
    conn.set_read_timeout(Some(Duration::from_secs(3)))
        .expect("timeout");
    t.id += 1;
    let pkts = flow_packets(&mut t, 10, 1400, 1400);
    let w = coalesce_one(&pkts);
    assert_eq!(VnetHdr::decode(&w).expect("hdr").gso_type, GSO_TCPV4);
    tun.write(&w);
    let sent: Vec<u8> = pkts.iter().flat_map(|p| p[40..].to_vec()).collect();
    let mut got = vec![0u8; sent.len()];
    conn.read_exact(&mut got)
        .expect("coalesced segments delivered");
    assert_eq!(got, sent);

    // And the other way: what the socket sends comes as TSO super-packets
    // (initial window 10 segments, our window 65535), which split cuts
    // into valid segments carrying the stream.
    let big: Vec<u8> = (0..14000u32).map(|i| (i % 251) as u8).collect();
    conn.write_all(&big).expect("send");
    let (mut got, mut supers) = (Vec::new(), 0);
    while got.len() < big.len() {
        let (h, p) = tun.read_until(|p| is(p, false, 6) && p.len() > 40);
        supers += usize::from(h.gso_type == GSO_TCPV4);
        for s in split_all(&h, &p) {
            verify(&s).expect("valid segment");
            got.extend_from_slice(&s[40..]);
        }
    }
    assert_eq!(got, big);
    assert!(supers > 0, "the kernel sent no super-packet");
}

#[test]
fn kernel_forwards_coalesced_super_packets_as_the_original_packets() {
    own_netns();
    let mut tun = Tun::open("ofl0", true);
    let mut out = Tun::open("ofl1", false);
    sh("sysctl -qw net.ipv4.ip_forward=1 net.ipv6.conf.all.forwarding=1 net.ipv4.conf.all.rp_filter=0 \
        && ip addr add 10.99.0.1/24 dev ofl0 && ip addr add 10.98.0.1/24 dev ofl1 \
        && ip -6 addr add fd99::1/64 dev ofl0 nodad && ip -6 addr add fd98::1/64 dev ofl1 nodad \
        && ip link set ofl0 mtu 1500 up && ip link set ofl1 mtu 1500 up");
    let six = |last: u8| {
        let mut a = [0u8; 16];
        a[..2].copy_from_slice(&[0xfd, last]);
        a[15] = 2;
        a
    };
    let (src6, dst6) = (six(0x99), six(0x98));
    for base in [Flow::tcp4(), Flow::udp4(), Flow::tcp6(), Flow::udp6()] {
        let mut f = if base.v6 {
            Flow {
                src: src6,
                dst: dst6,
                ..base
            }
        } else {
            Flow {
                src: v4([10, 99, 0, 2]),
                dst: v4([10, 98, 0, 2]),
                ..base
            }
        };
        let first = f.clone();
        let pkts = flow_packets(&mut f, 6, 1201, 333);
        let w = coalesce_one(&pkts);
        assert_ne!(VnetHdr::decode(&w).expect("hdr").gso_type, GSO_NONE);
        // The same super-packet as a peer would send it (fully checksummed),
        // written with header_for's header.
        let data: Vec<u8> = pkts
            .iter()
            .flat_map(|p| p[first.hdr_len()..].to_vec())
            .collect();
        let mut peer = packet(&first, &data);
        let h = header_for(&mut peer, 1201, MTU, ALL).expect("header_for");
        assert_eq!(h, VnetHdr::decode(&w).expect("hdr"));
        for w in [w, [&h.encode()[..], &peer[..]].concat()] {
            tun.write(&w);
            expect_forwarded(&mut out, &f, &pkts);
        }
    }
}

/// Reads `pkts` back from the plain TUN, one by one.
fn expect_forwarded(out: &mut Tun, f: &Flow, pkts: &[Vec<u8>]) {
    for (i, want) in pkts.iter().enumerate() {
        let (_, got) = out.read_until(|p| is(p, f.v6, f.proto()));
        verify(&got).unwrap_or_else(|e| panic!("{:?} segment {i}: {e}", (f.v6, f.tcp)));
        // Forwarding took one off the TTL / hop limit (and changed the
        // IPv4 header checksum); all else is as coalesced.
        let (mut g, mut w) = (got.clone(), want.clone());
        if f.v6 {
            g[7] += 1;
        } else {
            g[8] += 1;
            g[10..12].fill(0);
            w[10..12].fill(0);
        }
        assert_eq!(g, w, "{:?} segment {i}", (f.v6, f.tcp));
    }
}
