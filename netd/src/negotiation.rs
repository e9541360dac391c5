//! Wiring sapper_shared::roles to the live node: re-run negotiation whenever
//! a link, a neighbour's hint or our own hint changes, and tell neighbours
//! when our role changes so a chain settles in one pass. Role changes never
//! touch the transports.

use crate::node::{role_str, LinkState, Node, RoleState};
use sapper_shared::posture;
use sapper_shared::proto::control::{control_message::Body, ControlMessage, RoleTransition};
use sapper_shared::proto::data::{HintLevel, NodeRole, RoleHint};
use sapper_shared::roles::{self, Party};

const INDET: NodeRole = NodeRole::RoleIndeterminate;

fn fixed_target(h: Option<RoleHint>) -> Option<NodeRole> {
    let h = h?;
    (h.level == HintLevel::Fixed as i32).then(|| NodeRole::try_from(h.target).unwrap_or(INDET))
}

impl Node {
    /// Recomputes every link and this node's role. Announces the role to
    /// neighbours when it changed, or always when `announce` (our hint
    /// changed, so they must re-run with it).
    pub fn renegotiate(&self, announce: bool) {
        let caps = self.capabilities();
        let Ok(mut state) = self.role_state.lock() else {
            return;
        };
        let hint = state.hint;
        let peers = self.peers();
        let mut link_roles = Vec::with_capacity(peers.len());
        let mut reasons = Vec::new();
        for p in &peers {
            let Ok(mut link) = p.link.lock() else {
                continue;
            };
            let (local, peer, reason) = if self.posture.auto_negotiate {
                let o = roles::negotiate(
                    &Party {
                        caps,
                        hint,
                        dialed: p.outbound,
                    },
                    &Party {
                        caps: p.handshake.capabilities.unwrap_or_default(),
                        hint: link.peer_hint,
                        dialed: !p.outbound,
                    },
                );
                (o.local, o.peer, o.reason.describe().to_string())
            } else {
                (
                    fixed_target(hint).unwrap_or(INDET),
                    fixed_target(link.peer_hint).unwrap_or(INDET),
                    "fixed by configuration (secure posture)".to_string(),
                )
            };
            *link = LinkState {
                local,
                peer,
                reason: reason.clone(),
                peer_hint: link.peer_hint,
            };
            link_roles.push(local);
            reasons.push(reason);
        }
        let (role, reason) = if self.posture.auto_negotiate {
            let role = roles::node_role(&caps, &link_roles);
            let why = if roles::is_relay(&caps) {
                "told to listen and connect".to_string()
            } else if peers.is_empty() {
                "no peers yet".to_string()
            } else if role == INDET && link_roles.iter().any(|r| *r != INDET) {
                "links disagree about this node's role".to_string()
            } else {
                reasons.first().cloned().unwrap_or_default()
            };
            (role, why)
        } else {
            match fixed_target(hint) {
                Some(r) if r != INDET => (r, "fixed by configuration (secure posture)".to_string()),
                _ => (
                    INDET,
                    "secure posture: no fixed role (set node.role, or zero_config = true)"
                        .to_string(),
                ),
            }
        };
        let changed = state.role != role;
        *state = RoleState {
            role,
            reason: reason.clone(),
            hint,
        };
        drop(state);
        if changed {
            tracing::info!(role = role_str(role), %reason, "role changed");
        }
        if changed || announce {
            let msg = ControlMessage {
                body: Some(Body::RoleTransition(RoleTransition {
                    role: role as i32,
                    reason,
                    hint,
                })),
            };
            for p in &peers {
                let _ = p.control.try_send(msg.clone());
            }
        }
        if changed {
            self.sync_installed_routes();
        }
    }

    /// Sets or clears this node's hint (from sapperctl).
    pub fn set_hint(&self, hint: Option<RoleHint>) {
        if let Ok(mut s) = self.role_state.lock() {
            s.hint = hint.filter(|h| h.level != HintLevel::Unspecified as i32);
        }
        self.renegotiate(true);
    }

    /// A neighbour announced a new role or hint.
    pub fn peer_transition(&self, peer: &crate::node::Peer, t: &RoleTransition) {
        if let Ok(mut link) = peer.link.lock() {
            link.peer_hint = t.hint;
        }
        tracing::info!(peer = %peer.handshake.name, role = role_str(NodeRole::try_from(t.role).unwrap_or(INDET)), reason = %t.reason, "peer changed role");
        self.renegotiate(false);
    }

    /// The role a node would take on its own, for `status` before any peer.
    pub fn posture_summary(&self) -> String {
        let p = &self.posture;
        format!(
            "{} posture, negotiation {}, routes {}{}",
            if p.secure {
                "secure"
            } else {
                "open (insecure)"
            },
            if p.auto_negotiate { "automatic" } else { "off" },
            if p.auto_routes { "automatic" } else { "manual" },
            posture::fixed_role(p)
                .map(|r| format!(", fixed role {}", role_str(r)))
                .unwrap_or_default()
        )
    }
}
