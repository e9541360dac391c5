//! A peer that restarted and dialled again.
//!
//! A dialler that is killed and restarted comes back from a new UDP port, so
//! its QUIC stateless reset (see reset_key.rs) never reaches the connection
//! this node still holds for it: that stale link would keep its routes and
//! take the return traffic until missed pings drop it (5 s by default).
//! The new link has passed the same handshake (PSK proof, name), so an
//! older *inbound* link from the same peer name, the same remote IP and
//! over the same transport is the restarted peer's previous life: it is
//! closed as soon as the new one is up. Links we dialled, links from other
//! addresses and links over the other transport (a peer may dial both for
//! redundancy) are never touched. So one peer should not dial this node
//! twice over one transport: the later link would replace the earlier.

use sapper_control::{Core, Direction, LinkUp};
use std::net::SocketAddr;

/// Closes the links `up` supersedes; returns how many.
pub fn replace_stale(core: &mut Core, up: &LinkUp) -> usize {
    if up.direction != Direction::Inbound {
        return 0;
    }
    let name = &up.accepted.peer.name;
    let ip = up.remote.ip();
    let stale: Vec<_> = core
        .links()
        .into_iter()
        .filter(|v| {
            !v.info.outbound
                && v.info.name == *name
                && v.info.transport == up.transport.as_str()
                && v.info
                    .address
                    .parse::<SocketAddr>()
                    .is_ok_and(|a| a.ip() == ip)
        })
        .map(|v| (v.id, v.info.address))
        .collect();
    for (id, old) in &stale {
        tracing::info!(
            sapper_event = "peer_replaced",
            peer = %name,
            old = %old,
            new = %up.remote,
            "a new link from the same peer replaces its stale one (the peer restarted)"
        );
        core.disconnect(*id, "replaced by a newer link from the same peer");
    }
    stale.len()
}
