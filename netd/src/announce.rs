//! Route announcement: what neighbours told us they reach, passed on by
//! relays (keeping the origin so a withdrawal finds its routes), and
//! installed on the entry's TUN through privd when automatic routes are on.
//! privd still checks its own allow-list for every route.

use crate::node::{Node, Peer};
use ipnet::IpNet;
use sapper_shared::handshake::MAX_ROUTES;
use sapper_shared::proto::control::{
    control_message::Body, ControlMessage, RouteUpdate, RouteWithdraw,
};
use sapper_shared::proto::data::NodeRole;
use sapper_shared::proto::management::{event, RouteInfo};
use std::collections::BTreeSet;

/// Parses announced prefixes, refusing oversize lists and junk.
pub fn parse_prefixes(list: &[String]) -> Result<Vec<IpNet>, String> {
    if list.len() > MAX_ROUTES {
        return Err(format!("{} prefixes, at most {MAX_ROUTES}", list.len()));
    }
    list.iter()
        .map(|p| {
            p.parse::<IpNet>()
                .map_err(|_| format!("{p:?} is not a CIDR prefix"))
        })
        .collect()
}

impl Node {
    fn is_relay(&self) -> bool {
        self.role() == NodeRole::RoleRelay
    }

    fn broadcast_except(&self, from: u64, body: Body) {
        let msg = ControlMessage { body: Some(body) };
        for p in self.peers() {
            if p.id != from {
                let _ = p.control.try_send(msg.clone());
            }
        }
    }

    /// `peer` reaches `prefixes` (originating at `origin`).
    pub fn learn_routes(&self, peer: &Peer, prefixes: &[IpNet], origin: &str) {
        if prefixes.is_empty() || !self.posture.accept_routes {
            return;
        }
        if let (Ok(mut table), Ok(mut origins)) = (self.routes.write(), self.route_origin.lock()) {
            for p in prefixes {
                table.insert(*p, peer.id);
                origins.insert(p.trunc(), origin.to_string());
            }
        }
        for p in prefixes {
            self.emit(event::Body::RouteAdded(RouteInfo {
                prefix: p.to_string(),
                peer: peer.handshake.name.clone(),
            }));
        }
        if self.is_relay() && self.posture.announce_routes {
            self.broadcast_except(
                peer.id,
                Body::RouteUpdate(RouteUpdate {
                    prefixes: prefixes.iter().map(|p| p.to_string()).collect(),
                    origin: origin.to_string(),
                }),
            );
        }
        self.sync_installed_routes();
    }

    /// `peer` no longer reaches `prefixes`.
    pub fn withdraw_routes(&self, peer: &Peer, prefixes: &[IpNet], origin: &str) {
        let mut gone = Vec::new();
        if let (Ok(mut table), Ok(mut origins)) = (self.routes.write(), self.route_origin.lock()) {
            for p in prefixes {
                let p = p.trunc();
                let via_peer = table.iter().any(|(q, id)| *q == p && *id == peer.id);
                if via_peer && origins.get(&p).map(|o| o == origin).unwrap_or(true) {
                    table.remove_prefix(&p);
                    origins.remove(&p);
                    gone.push(p);
                }
            }
        }
        self.after_withdrawal(peer, gone, origin);
    }

    /// Every route through `peer`, on disconnect.
    pub fn forget_peer_routes(&self, peer: &Peer) {
        let mut by_origin: std::collections::HashMap<String, Vec<IpNet>> = Default::default();
        if let (Ok(mut table), Ok(mut origins)) = (self.routes.write(), self.route_origin.lock()) {
            for p in table.remove_peer(&peer.id) {
                let o = origins.remove(&p).unwrap_or_default();
                by_origin.entry(o).or_default().push(p);
            }
        }
        for (origin, gone) in by_origin {
            self.after_withdrawal(peer, gone, &origin);
        }
    }

    fn after_withdrawal(&self, peer: &Peer, gone: Vec<IpNet>, origin: &str) {
        if gone.is_empty() {
            return;
        }
        for p in &gone {
            self.emit(event::Body::RouteRemoved(RouteInfo {
                prefix: p.to_string(),
                peer: peer.handshake.name.clone(),
            }));
        }
        if self.is_relay() {
            self.broadcast_except(
                peer.id,
                Body::RouteWithdraw(RouteWithdraw {
                    prefixes: gone.iter().map(|p| p.to_string()).collect(),
                    origin: origin.to_string(),
                }),
            );
        }
        self.sync_installed_routes();
    }

    /// A relay tells a new neighbour what the others reach.
    pub fn share_routes_with(&self, peer: &Peer) {
        if !self.is_relay() || !self.posture.announce_routes {
            return;
        }
        let mut by_origin: std::collections::HashMap<String, Vec<String>> = Default::default();
        if let (Ok(table), Ok(origins)) = (self.routes.read(), self.route_origin.lock()) {
            for (p, id) in table.iter() {
                if *id != peer.id {
                    let o = origins.get(p).cloned().unwrap_or_default();
                    by_origin.entry(o).or_default().push(p.to_string());
                }
            }
        }
        for (origin, prefixes) in by_origin {
            let msg = ControlMessage {
                body: Some(Body::RouteUpdate(RouteUpdate { prefixes, origin })),
            };
            let _ = peer.control.try_send(msg);
        }
    }

    /// Asks the route worker to make privd's routes match what we learned.
    pub fn sync_installed_routes(&self) {
        self.route_sync.notify_one();
    }

    /// The prefixes that should be on our TUN: everything learned, when this
    /// node is the entry and automatic routes are on; nothing otherwise
    /// (Indeterminate, disconnect, withdrawal). Never a prefix covering a
    /// peer's own address: the link to it would then run through itself.
    fn wanted_routes(&self) -> BTreeSet<IpNet> {
        if self.role() != NodeRole::RoleEntry
            || !self.posture.auto_routes
            || !self.posture.accept_routes
            || self.tun.is_none()
        {
            return BTreeSet::new();
        }
        let underlay: Vec<std::net::IpAddr> = self.peers().iter().map(|p| p.address.ip()).collect();
        self.routes
            .read()
            .map(|t| t.iter().map(|(p, _)| *p).collect::<Vec<_>>())
            .unwrap_or_default()
            .into_iter()
            .filter(|p| {
                let loops = underlay.iter().any(|a| p.contains(a));
                if loops {
                    tracing::warn!(prefix = %p, "not installing an announced route that covers a peer's address");
                }
                !loops
            })
            .collect()
    }
}

/// Applies route changes through privd one at a time, in order, so a quick
/// remove-then-add never reaches privd reversed. A route counts as ours only
/// once privd granted it: routes privd refuses (outside its allow-list, or
/// configured by the operator) are never removed on our behalf.
pub async fn route_worker(node: std::sync::Arc<Node>) {
    let Some(path) = node.cfg.privd_socket.clone() else {
        return;
    };
    loop {
        tokio::select! {
            _ = node.shutdown.cancelled() => return,
            _ = node.route_sync.notified() => {}
        }
        let want = node.wanted_routes();
        let have = node.installed.lock().map(|i| i.clone()).unwrap_or_default();
        let del: Vec<IpNet> = have.difference(&want).copied().collect();
        let add: Vec<IpNet> = want.difference(&have).copied().collect();
        if add.is_empty() && del.is_empty() {
            continue;
        }
        let path = path.clone();
        let done = tokio::task::spawn_blocking(move || {
            let mut client = match sapper_privd_client::PrivdClient::connect(&path) {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot reach privd to update routes");
                    return Vec::new();
                }
            };
            let mut applied = Vec::new();
            for (prefix, on) in del.iter().map(|p| (*p, false)).chain(add.iter().map(|p| (*p, true))) {
                match client.route_change(&prefix.to_string(), on) {
                    Ok(()) => {
                        tracing::info!(%prefix, add = on, "announced route applied through privd");
                        applied.push((prefix, on));
                    }
                    Err(e) => {
                        tracing::warn!(%prefix, add = on, error = %e, "privd refused an announced route");
                        // A removal privd refuses leaves nothing of ours behind.
                        if !on {
                            applied.push((prefix, on));
                        }
                    }
                }
            }
            applied
        })
        .await
        .unwrap_or_default();
        if let Ok(mut installed) = node.installed.lock() {
            for (prefix, on) in done {
                if on {
                    installed.insert(prefix);
                } else {
                    installed.remove(&prefix);
                }
            }
        }
    }
}
