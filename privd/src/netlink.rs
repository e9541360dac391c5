//! Interface, address and route changes over a blocking rtnetlink socket
//! (the message types of `netlink-packet-route`, no runtime). privd never
//! runs `ip`: a netlink message built from typed values cannot be turned
//! into a different command by odd characters in a prefix or name.

use ipnet::IpNet;
use netlink_packet_core::{
    NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL, NLM_F_REPLACE,
    NLM_F_REQUEST,
};
use netlink_packet_route::address::AddressMessage;
use netlink_packet_route::address::{AddressAttribute, AddressFlags, AddressHeaderFlags};
use netlink_packet_route::link::{LinkAttribute, LinkFlags, LinkMessage};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage as Rt};
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};
use nix::errno::Errno;
use nix::libc;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// Transmit queue of the TUN (packets waiting for netd to read them).
const TUN_TXQUEUELEN: u32 = 2000;
/// Bounds how long one change may hold up privd's loop (the kernel answers
/// at once; this is for the impossible case).
const NETLINK_TIMEOUT: Duration = Duration::from_secs(5);

/// A netlink failure: what was being done and the errno (the kernel's
/// answer, or the socket's; EBADMSG for an answer that does not parse).
#[derive(Debug, thiserror::Error)]
#[error("{0}: {1}")]
pub struct NetlinkError(pub String, pub Errno);

fn io_errno(e: std::io::Error) -> Errno {
    Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO))
}

/// One rtnetlink socket; requests are answered in order.
pub struct Netlink {
    sock: Socket,
    seq: u32,
}

impl Netlink {
    /// Opens the socket, with a receive timeout on every answer.
    pub fn connect() -> Result<Self, NetlinkError> {
        let io = |e| NetlinkError("open rtnetlink".into(), io_errno(e));
        let mut sock = Socket::new(NETLINK_ROUTE).map_err(io)?;
        sock.bind_auto().map_err(io)?;
        sock.connect(&SocketAddr::new(0, 0)).map_err(io)?;
        let tv = nix::sys::time::TimeVal::new(NETLINK_TIMEOUT.as_secs() as i64, 0);
        nix::sys::socket::setsockopt(&sock, nix::sys::socket::sockopt::ReceiveTimeout, &tv)
            .map_err(|e| NetlinkError("rtnetlink timeout".into(), e))?;
        Ok(Self { sock, seq: 0 })
    }

    /// Sends one request and collects the answers up to the ACK or the end
    /// of a dump; every length comes from the parser, which checks it.
    fn call(&mut self, msg: Rt, flags: u16, what: &str) -> Result<Vec<Rt>, NetlinkError> {
        let fail = |errno| NetlinkError(what.into(), errno);
        let io = |e| fail(io_errno(e));
        self.seq = self.seq.wrapping_add(1);
        let mut req = NetlinkMessage::from(msg);
        req.header.flags = NLM_F_REQUEST | flags;
        req.header.sequence_number = self.seq;
        req.finalize();
        let mut buf = vec![0u8; req.buffer_len()];
        req.serialize(&mut buf);
        self.sock.send(&buf, 0).map_err(io)?;
        let (deadline, mut out) = (Instant::now() + NETLINK_TIMEOUT, Vec::new());
        while Instant::now() < deadline {
            let (data, _) = self.sock.recv_from_full().map_err(io)?;
            let mut rest = &data[..];
            while !rest.is_empty() {
                let m =
                    NetlinkMessage::<Rt>::deserialize(rest).map_err(|_| fail(Errno::EBADMSG))?;
                let len = (m.header.length as usize + 3) & !3;
                rest = rest.get(len.max(16)..).unwrap_or_default();
                if m.header.sequence_number != self.seq {
                    continue;
                }
                match m.payload {
                    NetlinkPayload::InnerMessage(i) => out.push(i),
                    NetlinkPayload::Error(e) => match e.code {
                        None => return Ok(out),
                        Some(c) => return Err(fail(Errno::from_raw(-c.get()))),
                    },
                    NetlinkPayload::Done(_) => return Ok(out),
                    _ => {}
                }
            }
        }
        Err(fail(Errno::ETIMEDOUT))
    }

    /// Sets the MTU and queue length and brings the link up, then adds the
    /// addresses.
    pub fn configure_link(
        &mut self,
        index: u32,
        mtu: u32,
        addrs: &[IpNet],
    ) -> Result<(), NetlinkError> {
        let mut link = LinkMessage::default();
        link.header.index = index;
        link.header.flags = LinkFlags::Up;
        link.header.change_mask = LinkFlags::Up;
        // netd drains the TUN in bursts; the default 500-packet queue
        // overflows (each overflow a lost packet) at a few hundred Mbit/s.
        link.attributes = vec![
            LinkAttribute::Mtu(mtu),
            LinkAttribute::TxQueueLen(TUN_TXQUEUELEN),
        ];
        let what = format!("set MTU {mtu}, link up");
        self.call(Rt::SetLink(link), NLM_F_ACK, &what)?;
        for a in addrs {
            let mut m = AddressMessage::default();
            m.header.family = a.addr().into();
            m.header.prefix_len = a.prefix_len();
            m.header.index = index;
            m.attributes = vec![
                AddressAttribute::Address(a.addr()),
                AddressAttribute::Local(a.addr()),
            ];
            if a.addr().is_ipv6() {
                // No duplicate address detection: the TUN is point-to-point
                // with nobody to collide with, and DAD would leave the
                // address "tentative" (unusable as a source) for a second.
                m.header.flags = AddressHeaderFlags::Nodad;
                m.attributes
                    .push(AddressAttribute::Flags(AddressFlags::Nodad));
            }
            // Replace, so that re-adding on a TUN from the fd store is fine.
            let flags = NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE;
            self.call(Rt::NewAddress(m), flags, &format!("add address {a}"))?;
        }
        Ok(())
    }

    /// Adds (refusing to replace an existing one, which might belong to
    /// another interface) or deletes the route to `net` via interface `index`.
    pub fn route(&mut self, index: u32, net: IpNet, add: bool) -> Result<(), NetlinkError> {
        let m = route(index, &net);
        let (msg, flags, what) = match add {
            true => (
                Rt::NewRoute(m),
                NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
                "add",
            ),
            false => (Rt::DelRoute(m), NLM_F_ACK, "delete"),
        };
        self.call(msg, flags, &format!("{what} route {net}"))
            .map(drop)
    }

    /// The prefixes of the static routes (privd's kind) in the main table
    /// that leave through interface `index`: on a TUN taken back from the fd
    /// store, what the previous privd installed.
    pub fn static_routes_via(&mut self, index: u32) -> Result<Vec<IpNet>, NetlinkError> {
        let mut out = Vec::new();
        for af in [AddressFamily::Inet, AddressFamily::Inet6] {
            let mut q = RouteMessage::default();
            q.header.address_family = af;
            for m in self.call(Rt::GetRoute(q), NLM_F_DUMP, "list routes")? {
                let Rt::NewRoute(m) = m else { continue };
                let ours = m.header.protocol == RouteProtocol::Static
                    && m.header.table == RouteHeader::RT_TABLE_MAIN
                    && m.attributes.contains(&RouteAttribute::Oif(index));
                let dst = m.attributes.iter().find_map(|a| match a {
                    RouteAttribute::Destination(RouteAddress::Inet(a)) => Some(IpAddr::V4(*a)),
                    RouteAttribute::Destination(RouteAddress::Inet6(a)) => Some(IpAddr::V6(*a)),
                    _ => None,
                });
                let len = m.header.destination_prefix_length;
                out.extend(dst.filter(|_| ours).and_then(|a| IpNet::new(a, len).ok()));
            }
        }
        Ok(out)
    }
}

/// What `ip route add PREFIX dev IF` sends for a gateway-less route.
fn route(index: u32, net: &IpNet) -> RouteMessage {
    let mut m = RouteMessage::default();
    m.header.address_family = net.addr().into();
    m.header.destination_prefix_length = net.prefix_len();
    m.header.table = RouteHeader::RT_TABLE_MAIN;
    m.header.protocol = RouteProtocol::Static;
    m.header.kind = RouteType::Unicast;
    m.header.scope = match net {
        IpNet::V4(_) => RouteScope::Link,
        IpNet::V6(_) => RouteScope::Universe,
    };
    let dst = RouteAttribute::Destination(net.addr().into());
    m.attributes = vec![dst, RouteAttribute::Oif(index)];
    m
}
