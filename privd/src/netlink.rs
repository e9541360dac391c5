//! Interface, address and route changes over rtnetlink. privd never runs
//! `ip`: a netlink message built from typed values cannot be turned into a
//! different command by odd characters in a prefix or name.

use ipnet::IpNet;
use nix::libc::{EEXIST, ENOENT, ESRCH};
use rtnetlink::packet_route::address::{AddressAttribute, AddressFlags, AddressHeaderFlags};
use rtnetlink::packet_route::link::LinkAttribute;
use rtnetlink::packet_route::route::RouteScope;
use rtnetlink::{Handle, LinkUnspec, RouteMessageBuilder};
use std::net::IpAddr;
use std::time::Duration;

/// Transmit queue of the TUN (packets waiting for netd to read them).
const TUN_TXQUEUELEN: u32 = 2000;

/// Netlink failures.
#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    /// The rtnetlink socket could not be opened.
    #[error("cannot open rtnetlink socket: {0}")]
    Connect(std::io::Error),
    /// The kernel already has a route for the prefix.
    #[error("a route for {0} already exists")]
    Exists(IpNet),
    /// The kernel has no such route.
    #[error("no route for {0} on the TUN")]
    NotFound(IpNet),
    /// No answer in time (should not happen; bounds how long a route
    /// change can hold privd's route lock).
    #[error("{0}: no answer from the kernel within {NETLINK_TIMEOUT:?}")]
    Timeout(String),
    /// Any other refusal from the kernel.
    #[error("{what}: {source}")]
    Kernel {
        /// What was being done.
        what: String,
        /// The netlink error.
        source: rtnetlink::Error,
    },
}

const NETLINK_TIMEOUT: Duration = Duration::from_secs(5);

/// A handle on the rtnetlink socket; cheap to clone.
#[derive(Clone)]
pub struct Netlink {
    handle: Handle,
}

fn errno(e: &rtnetlink::Error) -> i32 {
    match e {
        rtnetlink::Error::NetlinkError(m) => -m.raw_code(),
        _ => 0,
    }
}

fn kernel(what: String) -> impl FnOnce(rtnetlink::Error) -> NetlinkError {
    move |source| NetlinkError::Kernel { what, source }
}

impl Netlink {
    /// Opens the socket and spawns its I/O task; needs a tokio runtime.
    pub fn connect() -> Result<Self, NetlinkError> {
        let (conn, handle, _) = rtnetlink::new_connection().map_err(NetlinkError::Connect)?;
        tokio::spawn(conn);
        Ok(Self { handle })
    }

    /// Sets the MTU, adds the addresses and brings the link up.
    pub async fn configure_link(
        &self,
        index: u32,
        mtu: u32,
        addresses: &[IpNet],
    ) -> Result<(), NetlinkError> {
        self.handle
            .link()
            .set(
                LinkUnspec::new_with_index(index)
                    .mtu(mtu)
                    // netd drains the TUN in bursts; the default 500-packet
                    // queue overflows (each overflow a lost packet) at a few
                    // hundred Mbit/s.
                    .append_extra_attribute(LinkAttribute::TxQueueLen(TUN_TXQUEUELEN))
                    .build(),
            )
            .execute()
            .await
            .map_err(kernel(format!("set MTU {mtu}")))?;
        for a in addresses {
            let mut req = self
                .handle
                .address()
                .add(index, a.addr(), a.prefix_len())
                // Replace so that re-adding after a privd restart that found
                // the interface still present is not an error.
                .replace();
            if a.addr().is_ipv6() {
                // Skip duplicate address detection: the TUN is point-to-point
                // with nobody to collide with, and DAD would leave the address
                // "tentative" (unusable as a source) for a second or more.
                let msg = req.message_mut();
                msg.header.flags |= AddressHeaderFlags::Nodad;
                msg.attributes
                    .push(AddressAttribute::Flags(AddressFlags::Nodad));
            }
            req.execute()
                .await
                .map_err(kernel(format!("add address {a}")))?;
        }
        self.handle
            .link()
            .set(LinkUnspec::new_with_index(index).up().build())
            .execute()
            .await
            .map_err(kernel("set link up".into()))?;
        Ok(())
    }

    fn route_message(index: u32, net: &IpNet) -> rtnetlink::packet_route::route::RouteMessage {
        match net.addr() {
            IpAddr::V4(a) => RouteMessageBuilder::<std::net::Ipv4Addr>::new()
                .destination_prefix(a, net.prefix_len())
                // What `ip route add PREFIX dev IF` uses for a gateway-less
                // route.
                .scope(RouteScope::Link)
                .output_interface(index)
                .build(),
            IpAddr::V6(a) => RouteMessageBuilder::<std::net::Ipv6Addr>::new()
                .destination_prefix(a, net.prefix_len())
                .output_interface(index)
                .build(),
        }
    }

    /// Adds a route to `net` through interface `index`; refuses to replace
    /// an existing one (which might belong to another interface).
    pub async fn add_route(&self, index: u32, net: IpNet) -> Result<(), NetlinkError> {
        let req = self.handle.route().add(Self::route_message(index, &net));
        tokio::time::timeout(NETLINK_TIMEOUT, req.execute())
            .await
            .map_err(|_| NetlinkError::Timeout(format!("add route {net}")))?
            .map_err(|e| match errno(&e) {
                EEXIST => NetlinkError::Exists(net),
                _ => kernel(format!("add route {net}"))(e),
            })
    }

    /// The prefixes of the static routes (privd's kind) in the main table
    /// that leave through interface `index`: on a TUN taken back from the fd
    /// store, what the previous privd installed. Kernel routes (the address
    /// prefixes, link-local) are not included.
    pub async fn static_routes_via(&self, index: u32) -> Result<Vec<IpNet>, NetlinkError> {
        use futures_util::TryStreamExt;
        use rtnetlink::packet_route::route::{
            RouteAddress, RouteAttribute, RouteHeader, RouteProtocol,
        };
        let mut out = Vec::new();
        for query in [
            RouteMessageBuilder::<std::net::Ipv4Addr>::new().build(),
            RouteMessageBuilder::<std::net::Ipv6Addr>::new().build(),
        ] {
            let list = self
                .handle
                .route()
                .get(query)
                .execute()
                .try_collect::<Vec<_>>();
            let msgs = tokio::time::timeout(NETLINK_TIMEOUT, list)
                .await
                .map_err(|_| NetlinkError::Timeout("list routes".into()))?
                .map_err(kernel("list routes".into()))?;
            for m in msgs {
                let ours = m.header.protocol == RouteProtocol::Static
                    && m.header.table == RouteHeader::RT_TABLE_MAIN
                    && m.attributes
                        .iter()
                        .any(|a| matches!(a, RouteAttribute::Oif(i) if *i == index));
                let dst = m.attributes.iter().find_map(|a| match a {
                    RouteAttribute::Destination(RouteAddress::Inet(a)) => Some(IpAddr::V4(*a)),
                    RouteAttribute::Destination(RouteAddress::Inet6(a)) => Some(IpAddr::V6(*a)),
                    _ => None,
                });
                if let (true, Some(addr)) = (ours, dst) {
                    if let Ok(net) = IpNet::new(addr, m.header.destination_prefix_length) {
                        out.push(net);
                    }
                }
            }
        }
        Ok(out)
    }

    /// Deletes the route to `net` through interface `index`.
    pub async fn del_route(&self, index: u32, net: IpNet) -> Result<(), NetlinkError> {
        let req = self.handle.route().del(Self::route_message(index, &net));
        tokio::time::timeout(NETLINK_TIMEOUT, req.execute())
            .await
            .map_err(|_| NetlinkError::Timeout(format!("delete route {net}")))?
            .map_err(|e| match errno(&e) {
                ESRCH | ENOENT => NetlinkError::NotFound(net),
                _ => kernel(format!("delete route {net}"))(e),
            })
    }
}
