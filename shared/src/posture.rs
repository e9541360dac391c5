//! The security posture a node runs with, from what it was configured with.
//! Only a PSK means the secure posture (pins and CAs authenticate the
//! listeners this node dials, not who dials in): verification enforced. No
//! posture turns on automatic negotiation or routes by itself, the
//! configured role is fixed; `zero_config` (or `auto_negotiate` /
//! `auto_routes`) turns the automation on explicitly. A node without a PSK
//! must say `insecure_open`, which switches nothing else on.

use crate::config::{NetdConfig, NodeConfig};
use crate::proto::data::{NodeRole, RoleHint};

/// What the node may do on its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Posture {
    /// Some authentication is configured.
    pub secure: bool,
    /// Roles come from negotiation rather than configuration alone.
    pub auto_negotiate: bool,
    /// Announced routes are installed on the TUN.
    pub auto_routes: bool,
    /// This node announces its routes.
    pub announce_routes: bool,
    /// This node accepts routes peers announce.
    pub accept_routes: bool,
    /// The hint this node starts with.
    pub hint: Option<RoleHint>,
}

/// Why a posture cannot be formed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PostureError {
    /// Nothing authenticates peers and the operator did not ask for that.
    #[error(
        "no authentication configured: set node.psk_file or node.psk_env (and pin peers), \
         or set node.insecure_open = true to run an open node on purpose"
    )]
    Unauthenticated,
}

/// Resolves the posture.
pub fn resolve(node: &NodeConfig, netd: &NetdConfig) -> Result<Posture, PostureError> {
    let _ = netd;
    let has_psk = node.psk.is_some();
    // Only a PSK authenticates the peers that dial in: pins and CAs check
    // the listeners this node dials, and a listener without a PSK accepts
    // anyone. So only a PSK makes the posture secure.
    let secure = has_psk;
    if !has_psk && !node.insecure_open {
        return Err(PostureError::Unauthenticated);
    }
    // Automation is asked for explicitly; `insecure_open` turns nothing on.
    let automatic = node.zero_config;
    let hint = node.hint.map(|h| h.wire());
    Ok(Posture {
        secure,
        auto_negotiate: node.auto_negotiate.unwrap_or(automatic),
        auto_routes: node.auto_routes.unwrap_or(automatic),
        announce_routes: !node.no_announce_routes,
        accept_routes: !node.no_accept_routes,
        hint,
    })
}

/// The role a node without automatic negotiation takes: its fixed hint.
pub fn fixed_role(p: &Posture) -> Option<NodeRole> {
    crate::roles::fixed_target(p.hint)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::proto::data::HintLevel;

    fn posture(toml: &str) -> Result<Posture, PostureError> {
        let c = Config::parse(toml, "t.toml").unwrap();
        resolve(&c.node, c.netd.as_ref().unwrap())
    }

    #[test]
    fn psk_means_secure_and_manual() {
        let p = posture("[node]\npsk_file = \"/k\"\nrole = \"exit\"\n[netd]\n").unwrap();
        assert!(p.secure);
        assert!(!p.auto_negotiate && !p.auto_routes);
        assert_eq!(fixed_role(&p), Some(NodeRole::RoleExit));
    }

    #[test]
    fn zero_config_turns_automation_back_on() {
        let p = posture("[node]\npsk_file = \"/k\"\nzero_config = true\n[netd]\n").unwrap();
        assert!(p.secure && p.auto_negotiate && p.auto_routes);
        assert_eq!(p.hint, None);
        let p =
            posture("[node]\npsk_file = \"/k\"\nzero_config = true\nauto_routes = false\n[netd]\n")
                .unwrap();
        assert!(p.auto_negotiate && !p.auto_routes);
    }

    #[test]
    fn no_authentication_must_be_asked_for() {
        assert_eq!(posture("[netd]\n"), Err(PostureError::Unauthenticated));
        let p = posture("[node]\ninsecure_open = true\n[netd]\n").unwrap();
        assert!(!p.secure && !p.auto_negotiate && !p.auto_routes);
        // Pins without a PSK: the listeners still accept anyone.
        let p = posture(&format!(
            "[node]\ninsecure_open = true\n[netd]\n[[netd.connect]]\ntransport = \"quic\"\naddress = \"192.0.2.1:4433\"\nfingerprint = \"{}\"\n",
            "ab".repeat(32)
        ))
        .unwrap();
        assert!(!p.secure);
        let p = posture("[node]\ninsecure_open = true\nzero_config = true\n[netd]\n").unwrap();
        assert!(!p.secure && p.auto_negotiate && p.auto_routes);
    }

    #[test]
    fn hints_and_switches() {
        let p = posture(
            "[node]\npsk_file = \"/k\"\nno_accept_routes = true\n[node.hint]\nlevel = \"prefer\"\nrole = \"entry\"\n[netd]\n",
        )
        .unwrap();
        assert_eq!(
            p.hint,
            Some(RoleHint {
                level: HintLevel::Prefer as i32,
                target: NodeRole::RoleEntry as i32
            })
        );
        assert_eq!(fixed_role(&p), None);
        assert!(!p.accept_routes && p.announce_routes);
    }
}
