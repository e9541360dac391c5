//! Shedding privilege. After startup privd keeps exactly CAP_NET_ADMIN,
//! which is all that its remaining jobs need:
//!
//! - TUNSETIFF, link/address/route changes over rtnetlink: CAP_NET_ADMIN.
//! - Writing /proc/sys/net/*/forwarding: the net sysctls grant the owner's
//!   write bit to CAP_NET_ADMIN in the namespace (see nat.rs).
//! - Running `nft`: CAP_NET_ADMIN is kept in the inheritable and ambient
//!   sets so the child gets it even when privd is not uid 0; as uid 0 the
//!   child would otherwise get "all" capabilities, which the bounding set
//!   limits to CAP_NET_ADMIN as well.
//! - Removing the socket at exit: privd still runs as uid 0, which owns the
//!   socket directory, so plain DAC allows it.
//!
//! no_new_privs makes sure no exec (setuid binary or file capabilities) can
//! raise anything again.

use caps::{CapSet, Capability, CapsHashSet};

const KEEP: Capability = Capability::CAP_NET_ADMIN;

/// Capability errors.
#[derive(Debug, thiserror::Error)]
pub enum PrivError {
    /// Started without the one capability privd needs.
    #[error("sapper-privd must run as root or with CAP_NET_ADMIN")]
    NoNetAdmin,
    /// The kernel refused a change.
    #[error("{what}: {msg}")]
    Caps {
        /// What was being changed.
        what: &'static str,
        /// The caps crate's message.
        msg: String,
    },
}

fn caps_err(what: &'static str) -> impl FnOnce(caps::errors::CapsError) -> PrivError {
    move |e| PrivError::Caps {
        what,
        msg: e.to_string(),
    }
}

/// Fails early with a clear message when privd cannot do its job.
pub fn check_net_admin() -> Result<(), PrivError> {
    match caps::has_cap(None, CapSet::Effective, KEEP) {
        Ok(true) => Ok(()),
        _ => Err(PrivError::NoNetAdmin),
    }
}

/// Drops every capability but CAP_NET_ADMIN from every set and sets
/// no_new_privs. Must run before any other thread exists: capabilities are
/// per thread and new threads copy their creator's.
pub fn drop_to_net_admin() -> Result<(), PrivError> {
    // The bounding set can only shrink, and only with CAP_SETPCAP; without it
    // (privd started non-root with just CAP_NET_ADMIN) the bounding set does
    // not matter because no_new_privs below stops any exec from gaining.
    if caps::has_cap(None, CapSet::Effective, Capability::CAP_SETPCAP).unwrap_or(false) {
        for cap in caps::all() {
            if cap != KEEP && caps::has_cap(None, CapSet::Bounding, cap).unwrap_or(false) {
                caps::drop(None, CapSet::Bounding, cap).map_err(caps_err("trim bounding set"))?;
            }
        }
    }
    let keep: CapsHashSet = [KEEP].into_iter().collect();
    let is_keep = |set| caps::read(None, set).is_ok_and(|s| s == keep);
    // Started by systemd with AmbientCapabilities=CAP_NET_ADMIN the sets are
    // already exactly `keep`, and the unit's SystemCallFilter= denies
    // capset(2); so change only what differs.
    if !is_keep(CapSet::Ambient) {
        caps::clear(None, CapSet::Ambient).map_err(caps_err("clear ambient set"))?;
    }
    // Effective before permitted: the kernel refuses an effective set that is
    // larger than the permitted one.
    for (set, what) in [
        (CapSet::Effective, "set effective set"),
        (CapSet::Permitted, "set permitted set"),
        (CapSet::Inheritable, "set inheritable set"),
    ] {
        if !is_keep(set) {
            caps::set(None, set, &keep).map_err(caps_err(what))?;
        }
    }
    if !is_keep(CapSet::Ambient) {
        caps::raise(None, CapSet::Ambient, KEEP)
            .map_err(caps_err("raise ambient CAP_NET_ADMIN"))?;
    }
    nix::sys::prctl::set_no_new_privs().map_err(|e| PrivError::Caps {
        what: "set no_new_privs",
        msg: e.to_string(),
    })?;
    Ok(())
}

/// The capabilities left, for the startup log line.
pub fn describe() -> String {
    let show = |set| {
        let mut v: Vec<String> = caps::read(None, set)
            .unwrap_or_default()
            .iter()
            .map(|c| c.to_string())
            .collect();
        v.sort();
        v.join(",")
    };
    format!(
        "effective={} permitted={} bounding={} ambient={}",
        show(CapSet::Effective),
        show(CapSet::Permitted),
        show(CapSet::Bounding),
        show(CapSet::Ambient)
    )
}
