//! Role negotiation: which role each end of a link plays, computed by both
//! ends from the two Handshakes and the direction of the link, so both reach
//! the same answer without another round trip.
//!
//! The rules, in order:
//! 1. A node told to both listen and connect is a relay, always.
//! 2. Facing a relay, the node that dialled it sits upstream and is the entry
//!    if it has a TUN; the node the relay dialled sits downstream and is the
//!    exit (kernel exit with a TUN, userspace exit without). A TUN-less node
//!    that dialled a relay has nothing to do: Indeterminate.
//! 3. Between two non-relays, the TUN-capable one is the entry and the other
//!    the exit. Two TUN-capable nodes are ambiguous; two TUN-less ones cannot
//!    form a tunnel at all.
//! 4. Hints break ties only: an ambiguous pair takes the assignment that the
//!    hints allow (fixed/exclude) and favour (prefer/fixed). Outside a tie a
//!    fixed or exclude hint can only veto, never pick another role.
//! 5. A link on which either end is Indeterminate forwards nothing, so both
//!    ends are Indeterminate.

use crate::proto::data::{Capabilities, HintLevel, NodeRole, RoleHint};

/// One end of a link as negotiation sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Party {
    /// From the Handshake.
    pub caps: Capabilities,
    /// From the Handshake (or a later RoleTransition).
    pub hint: Option<RoleHint>,
    /// True for the end that opened the link.
    pub dialed: bool,
}

/// Why negotiation came out as it did, for operators.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// One end has a TUN, the other does not.
    TunAsymmetry,
    /// One end listens and connects.
    RelayChain,
    /// Both ends are relays.
    RelayToRelay,
    /// A TUN-less node dialled a relay: it is neither entry nor exit.
    UpstreamWithoutTun,
    /// Both ends have a TUN and no hint breaks the tie.
    BothTunNoHint,
    /// Both ends have a TUN and the hints favour both assignments equally.
    HintsTie,
    /// Hints resolved an ambiguous pair.
    HintResolved,
    /// Hints rule out every assignment.
    HintsConflict,
    /// A fixed or exclude hint vetoes the only possible assignment.
    HintVeto,
    /// Neither end has a TUN.
    NeitherTun,
}

impl Reason {
    /// Human text for `sapperctl status`.
    pub fn describe(self) -> &'static str {
        match self {
            Reason::TunAsymmetry => "one peer is TUN-capable, the other is not",
            Reason::RelayChain => "part of a relay chain",
            Reason::RelayToRelay => "relay to relay",
            Reason::UpstreamWithoutTun => "dialled a relay without a TUN",
            Reason::BothTunNoHint => "both peers TUN-capable, no hint",
            Reason::HintsTie => "both peers TUN-capable, hints tie",
            Reason::HintResolved => "both peers TUN-capable, resolved by hint",
            Reason::HintsConflict => "hints conflict",
            Reason::HintVeto => "a fixed or exclude hint rules out the only assignment",
            Reason::NeitherTun => "neither peer is TUN-capable",
        }
    }
}

/// The result for one link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    /// This end's role on the link.
    pub local: NodeRole,
    /// The other end's role on the link.
    pub peer: NodeRole,
    /// Why.
    pub reason: Reason,
}

impl Outcome {
    fn swapped(self) -> Outcome {
        Outcome {
            local: self.peer,
            peer: self.local,
            reason: self.reason,
        }
    }
}

/// Whether a posture makes this node a relay.
pub fn is_relay(caps: &Capabilities) -> bool {
    caps.listening && caps.connecting
}

/// A role a node can be told to take (config `node.role`, `[node.hint]`
/// and `sapperctl hint`); Indeterminate is an outcome, never asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RoleName {
    /// Traffic enters here.
    Entry,
    /// Traffic leaves here.
    Exit,
    /// Forwards between neighbours.
    Relay,
}

impl RoleName {
    /// The wire role.
    pub fn role(self) -> NodeRole {
        match self {
            RoleName::Entry => NodeRole::RoleEntry,
            RoleName::Exit => NodeRole::RoleExit,
            RoleName::Relay => NodeRole::RoleRelay,
        }
    }
}

/// How strong a hint is, as written in the config file and by sapperctl.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HintLevelName {
    /// Take the role if negotiation is ambiguous.
    Prefer,
    /// Never take the role.
    Exclude,
    /// This role or Indeterminate.
    Fixed,
}

/// A hint as an operator states it; [`Hint::wire`] is the one encoding into
/// the Handshake's `RoleHint`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hint {
    /// Strength.
    pub level: HintLevelName,
    /// The role it is about.
    pub role: RoleName,
}

impl Hint {
    /// `node.role = R`: the fixed hint for R.
    pub fn fixed(role: RoleName) -> Hint {
        Hint {
            level: HintLevelName::Fixed,
            role,
        }
    }

    /// The wire form.
    pub fn wire(self) -> RoleHint {
        let level = match self.level {
            HintLevelName::Prefer => HintLevel::Prefer,
            HintLevelName::Exclude => HintLevel::Exclude,
            HintLevelName::Fixed => HintLevel::Fixed,
        };
        RoleHint {
            level: level as i32,
            target: self.role.role() as i32,
        }
    }
}

/// The one spelling of each role, for logs, status and sapperctl.
pub fn role_name(r: NodeRole) -> &'static str {
    match r {
        NodeRole::RoleIndeterminate => "indeterminate",
        NodeRole::RoleEntry => "entry",
        NodeRole::RoleRelay => "relay",
        NodeRole::RoleExit => "exit",
    }
}

/// The role a wire value names; unknown values are Indeterminate.
pub fn role_from_wire(v: i32) -> NodeRole {
    NodeRole::try_from(v).unwrap_or(NodeRole::RoleIndeterminate)
}

/// The role a fixed hint pins, `None` for any other hint (or none).
pub fn fixed_target(h: Option<RoleHint>) -> Option<NodeRole> {
    let h = h?;
    (h.level == HintLevel::Fixed as i32).then(|| role_from_wire(h.target))
}

fn level(h: &Option<RoleHint>) -> HintLevel {
    h.map(|h| HintLevel::try_from(h.level).unwrap_or(HintLevel::Unspecified))
        .unwrap_or(HintLevel::Unspecified)
}

fn target(h: &Option<RoleHint>) -> NodeRole {
    h.map(|h| role_from_wire(h.target))
        .unwrap_or(NodeRole::RoleIndeterminate)
}

/// May `p` take `role` under its own hint?
fn permits(p: &Party, role: NodeRole) -> bool {
    match level(&p.hint) {
        HintLevel::Fixed => target(&p.hint) == role,
        HintLevel::Exclude => target(&p.hint) != role,
        _ => true,
    }
}

/// Does `p`'s hint favour `role`?
fn favours(p: &Party, role: NodeRole) -> bool {
    matches!(level(&p.hint), HintLevel::Prefer | HintLevel::Fixed) && target(&p.hint) == role
}

const INDET: NodeRole = NodeRole::RoleIndeterminate;

fn idle(reason: Reason) -> Outcome {
    Outcome {
        local: INDET,
        peer: INDET,
        reason,
    }
}

/// Roles before hints, from posture, TUN capability and link direction.
/// `None` means ambiguous (both TUN-capable, neither a relay).
fn structural(local: &Party, peer: &Party) -> Option<Outcome> {
    use NodeRole::*;
    let (lr, pr) = (is_relay(&local.caps), is_relay(&peer.caps));
    if lr && pr {
        return Some(Outcome {
            local: RoleRelay,
            peer: RoleRelay,
            reason: Reason::RelayToRelay,
        });
    }
    if pr {
        return structural(peer, local).map(Outcome::swapped);
    }
    if lr {
        let peer_role = if !peer.dialed {
            RoleExit
        } else if peer.caps.tun_capable {
            RoleEntry
        } else {
            return Some(idle(Reason::UpstreamWithoutTun));
        };
        return Some(Outcome {
            local: RoleRelay,
            peer: peer_role,
            reason: Reason::RelayChain,
        });
    }
    match (local.caps.tun_capable, peer.caps.tun_capable) {
        (true, false) => Some(Outcome {
            local: RoleEntry,
            peer: RoleExit,
            reason: Reason::TunAsymmetry,
        }),
        (false, true) => Some(Outcome {
            local: RoleExit,
            peer: RoleEntry,
            reason: Reason::TunAsymmetry,
        }),
        (false, false) => Some(idle(Reason::NeitherTun)),
        (true, true) => None,
    }
}

/// Negotiates one link. Deterministic and symmetric:
/// `negotiate(b, a)` is `negotiate(a, b)` with local and peer swapped.
pub fn negotiate(local: &Party, peer: &Party) -> Outcome {
    use NodeRole::*;
    match structural(local, peer) {
        Some(o) if o.local == INDET || o.peer == INDET => o,
        Some(o) => {
            if permits(local, o.local) && permits(peer, o.peer) {
                o
            } else {
                idle(Reason::HintVeto)
            }
        }
        None => {
            let options = [(RoleEntry, RoleExit), (RoleExit, RoleEntry)];
            let allowed: Vec<(NodeRole, NodeRole)> = options
                .into_iter()
                .filter(|(l, p)| permits(local, *l) && permits(peer, *p))
                .collect();
            let votes = |(l, p): (NodeRole, NodeRole)| {
                usize::from(favours(local, l)) + usize::from(favours(peer, p))
            };
            let pick = |(l, p): (NodeRole, NodeRole)| Outcome {
                local: l,
                peer: p,
                reason: Reason::HintResolved,
            };
            match allowed.as_slice() {
                [] => idle(Reason::HintsConflict),
                [only] => pick(*only),
                [a, b] => match votes(*a).cmp(&votes(*b)) {
                    std::cmp::Ordering::Greater => pick(*a),
                    std::cmp::Ordering::Less => pick(*b),
                    std::cmp::Ordering::Equal if votes(*a) == 0 => idle(Reason::BothTunNoHint),
                    std::cmp::Ordering::Equal => idle(Reason::HintsTie),
                },
                _ => idle(Reason::HintsConflict),
            }
        }
    }
}

/// A node's one role from the roles it negotiated on each link: a relay
/// posture is always Relay; otherwise the links must agree, ignoring idle
/// ones, or the node stays Indeterminate.
pub fn node_role(caps: &Capabilities, links: &[NodeRole]) -> NodeRole {
    if is_relay(caps) {
        return NodeRole::RoleRelay;
    }
    let mut active = links.iter().filter(|r| **r != INDET);
    match active.next() {
        None => INDET,
        Some(first) if active.all(|r| r == first) => *first,
        Some(_) => INDET,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use NodeRole::*;

    fn all_caps() -> Vec<Capabilities> {
        let mut v = Vec::new();
        for bits in 0..8u8 {
            v.push(Capabilities {
                tun_capable: bits & 1 != 0,
                listening: bits & 2 != 0,
                connecting: bits & 4 != 0,
                super_packets: false,
            });
        }
        v
    }

    fn all_hints() -> Vec<Option<RoleHint>> {
        let mut v = vec![None];
        for level in [HintLevel::Prefer, HintLevel::Exclude, HintLevel::Fixed] {
            for target in [RoleIndeterminate, RoleEntry, RoleRelay, RoleExit] {
                v.push(Some(RoleHint {
                    level: level as i32,
                    target: target as i32,
                }));
            }
        }
        v
    }

    fn parties(dialed: bool) -> Vec<Party> {
        let mut v = Vec::new();
        for caps in all_caps() {
            for hint in all_hints() {
                v.push(Party { caps, hint, dialed });
            }
        }
        v
    }

    /// Every combination of capabilities, posture, hint and direction:
    /// both ends agree, and the structural invariants hold.
    #[test]
    fn exhaustive_agreement_and_invariants() {
        let mut count = 0;
        for a in parties(true) {
            for b in parties(false) {
                let ab = negotiate(&a, &b);
                let ba = negotiate(&b, &a);
                assert_eq!(ab, ba.swapped(), "{a:?} vs {b:?}");
                count += 1;
                for (p, role) in [(&a, ab.local), (&b, ab.peer)] {
                    // Only a relay posture relays, and it never does anything else
                    // except idle.
                    if is_relay(&p.caps) {
                        assert!(role == RoleRelay || role == INDET, "{p:?} got {role:?}");
                    } else {
                        assert_ne!(role, RoleRelay);
                    }
                    // Entry needs a TUN.
                    if role == RoleEntry {
                        assert!(p.caps.tun_capable, "{p:?}");
                    }
                    // Fixed means this role or nothing; exclude is never taken.
                    match level(&p.hint) {
                        HintLevel::Fixed => assert!(role == target(&p.hint) || role == INDET),
                        HintLevel::Exclude => assert!(role != target(&p.hint) || role == INDET),
                        _ => {}
                    }
                }
                // Idle links are idle at both ends.
                assert_eq!(ab.local == INDET, ab.peer == INDET, "{a:?} vs {b:?}");
                // A working non-relay pair is one entry and one exit.
                if !is_relay(&a.caps) && !is_relay(&b.caps) && ab.local != INDET {
                    let mut roles = [ab.local, ab.peer];
                    roles.sort_by_key(|r| *r as i32);
                    assert_eq!(roles, [RoleEntry, RoleExit]);
                }
            }
        }
        assert_eq!(count, 104 * 104);
    }

    fn party(tun: bool, listen: bool, connect: bool, dialed: bool) -> Party {
        Party {
            caps: Capabilities {
                tun_capable: tun,
                listening: listen,
                connecting: connect,
                super_packets: false,
            },
            hint: None,
            dialed,
        }
    }

    fn hinted(mut p: Party, level: HintLevel, target: NodeRole) -> Party {
        p.hint = Some(RoleHint {
            level: level as i32,
            target: target as i32,
        });
        p
    }

    #[test]
    fn the_table() {
        // TUN vs no TUN, either direction.
        let e = party(true, false, true, true);
        let x = party(false, true, false, false);
        assert_eq!(negotiate(&e, &x).local, RoleEntry);
        assert_eq!(negotiate(&x, &e).local, RoleExit);
        let x_dials = party(false, false, true, true);
        let e_listens = party(true, true, false, false);
        assert_eq!(negotiate(&e_listens, &x_dials).local, RoleEntry);
        // Both TUN: ambiguous until a hint.
        let a = party(true, false, true, true);
        let b = party(true, true, false, false);
        assert_eq!(negotiate(&a, &b), idle(Reason::BothTunNoHint));
        let a_pref = hinted(a, HintLevel::Prefer, RoleEntry);
        let o = negotiate(&a_pref, &b);
        assert_eq!(
            (o.local, o.peer, o.reason),
            (RoleEntry, RoleExit, Reason::HintResolved)
        );
        let b_excl = hinted(b, HintLevel::Exclude, RoleExit);
        assert_eq!(negotiate(&a, &b_excl).local, RoleExit);
        let both_pref = hinted(b, HintLevel::Prefer, RoleEntry);
        assert_eq!(negotiate(&a_pref, &both_pref), idle(Reason::HintsTie));
        let fixed_conflict = hinted(b, HintLevel::Fixed, RoleEntry);
        let a_fixed = hinted(a, HintLevel::Fixed, RoleEntry);
        assert_eq!(
            negotiate(&a_fixed, &fixed_conflict),
            idle(Reason::HintsConflict)
        );
        // Fixed vetoes outside a tie, never picks another role.
        let e_fixed_exit = hinted(e, HintLevel::Fixed, RoleExit);
        assert_eq!(negotiate(&e_fixed_exit, &x), idle(Reason::HintVeto));
        // A prefer hint outside a tie changes nothing.
        let e_pref_exit = hinted(e, HintLevel::Prefer, RoleExit);
        assert_eq!(negotiate(&e_pref_exit, &x).local, RoleEntry);
        // Neither TUN.
        assert_eq!(negotiate(&x_dials, &x), idle(Reason::NeitherTun));
    }

    #[test]
    fn relay_chain() {
        let relay_up = party(false, true, true, false); // accepted the entry
        let entry = party(true, false, true, true);
        let o = negotiate(&entry, &relay_up);
        assert_eq!((o.local, o.peer), (RoleEntry, RoleRelay));
        let relay_down = party(false, true, true, true); // dialled the exit
        let exit = party(false, true, false, false);
        assert_eq!(negotiate(&exit, &relay_down).local, RoleExit);
        let kernel_exit = party(true, true, false, false);
        assert_eq!(negotiate(&kernel_exit, &relay_down).local, RoleExit);
        let tunless_upstream = party(false, false, true, true);
        assert_eq!(
            negotiate(&tunless_upstream, &relay_up),
            idle(Reason::UpstreamWithoutTun)
        );
        let r2 = party(true, true, true, false);
        assert_eq!(negotiate(&relay_down, &r2).reason, Reason::RelayToRelay);
    }

    #[test]
    fn node_role_from_links() {
        let plain = Capabilities {
            tun_capable: true,
            listening: false,
            connecting: true,
            super_packets: false,
        };
        let relay = Capabilities {
            tun_capable: false,
            listening: true,
            connecting: true,
            super_packets: false,
        };
        assert_eq!(node_role(&plain, &[]), INDET);
        assert_eq!(node_role(&plain, &[RoleEntry, INDET, RoleEntry]), RoleEntry);
        assert_eq!(node_role(&plain, &[RoleEntry, RoleExit]), INDET);
        assert_eq!(node_role(&relay, &[]), RoleRelay);
    }
}
