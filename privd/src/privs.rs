//! Shedding privilege. After setup privd keeps exactly CAP_NET_ADMIN, which
//! is all its remaining jobs need (handing out TUN duplicates needs none;
//! routes over rtnetlink need CAP_NET_ADMIN), and, started as root, it
//! becomes its own user (`privd.user`), so root-owned files are out of reach.
//! CAP_NET_ADMIN stays in the inheritable and ambient sets so the nft
//! teardown helper (nat.rs) gets it too, and no_new_privs makes sure no exec
//! (setuid binary or file capabilities) can raise anything again.

use anyhow::{anyhow, ensure, Context};
use caps::{CapSet, Capability, CapsHashSet};
use nix::unistd::{Uid, User};

const KEEP: Capability = Capability::CAP_NET_ADMIN;
/// `privd.user` when unset.
pub const DEFAULT_USER: &str = "sapper-privd";

fn kernel<E: std::fmt::Display>(what: &'static str) -> impl Fn(E) -> anyhow::Error {
    move |e| anyhow!("{what}: {e}")
}

/// Fails unless CAP_NET_ADMIN is effective (i.e. root or granted it).
pub fn check_net_admin() -> anyhow::Result<()> {
    let ok = caps::has_cap(None, CapSet::Effective, KEEP).unwrap_or(false);
    ensure!(ok, "sapper-privd must run as root or with CAP_NET_ADMIN");
    Ok(())
}

/// The user to become: `None` unless started as root (under systemd privd
/// already is its own user).
pub fn resolve(name: Option<&str>) -> anyhow::Result<Option<User>> {
    if !Uid::effective().is_root() {
        return Ok(None);
    }
    let name = name.unwrap_or(DEFAULT_USER);
    let (user, why) = match User::from_name(name).ok().flatten() {
        Some(u) if u.uid.is_root() => (None, "is root"),
        u => (u, "does not exist"),
    };
    let hint = "create it (useradd --system --no-create-home --shell /usr/sbin/nologin";
    user.map(Some)
        .with_context(|| format!("privd.user {name:?} {why}: {hint} {name}) or set privd.user"))
}

/// Becomes `user` (if any), keeping CAP_NET_ADMIN across the switch, then
/// leaves exactly CAP_NET_ADMIN in every set and sets no_new_privs. privd is
/// single-threaded, so this covers the whole process.
pub fn drop_to_net_admin(user: Option<&User>) -> anyhow::Result<()> {
    // The bounding set can only shrink, and only with CAP_SETPCAP; without
    // it (started non-root) no_new_privs below stops any exec from gaining.
    if caps::has_cap(None, CapSet::Effective, Capability::CAP_SETPCAP).unwrap_or(false) {
        for cap in caps::all().into_iter().filter(|c| *c != KEEP) {
            caps::drop(None, CapSet::Bounding, cap).map_err(kernel("trim bounding set"))?;
        }
    }
    if let Some(u) = user {
        // Without keepcaps setresuid() away from 0 empties the permitted set.
        nix::sys::prctl::set_keepcaps(true).map_err(kernel("PR_SET_KEEPCAPS"))?;
        nix::unistd::setgroups(&[u.gid]).map_err(kernel("setgroups"))?;
        nix::unistd::setresgid(u.gid, u.gid, u.gid).map_err(kernel("setresgid"))?;
        nix::unistd::setresuid(u.uid, u.uid, u.uid).map_err(kernel("setresuid"))?;
        nix::sys::prctl::set_keepcaps(false).map_err(kernel("PR_SET_KEEPCAPS"))?;
    }
    let keep: CapsHashSet = [KEEP].into_iter().collect();
    let is_keep = |set| caps::read(None, set).is_ok_and(|s| s == keep);
    // Under systemd the sets are already exactly `keep` and the unit denies
    // capset(2), so change only what differs. Effective first: the kernel
    // refuses a permitted set smaller than the effective one. Ambient last
    // (it needs the cap permitted and inheritable).
    for set in [CapSet::Effective, CapSet::Permitted, CapSet::Inheritable] {
        if !is_keep(set) {
            caps::set(None, set, &keep).map_err(kernel("set capabilities"))?;
        }
    }
    if !is_keep(CapSet::Ambient) {
        caps::clear(None, CapSet::Ambient).map_err(kernel("clear ambient set"))?;
        caps::raise(None, CapSet::Ambient, KEEP).map_err(kernel("raise ambient set"))?;
    }
    nix::sys::prctl::set_no_new_privs().map_err(kernel("set no_new_privs"))?;
    let root = user.is_some() && Uid::effective().is_root();
    ensure!(
        !root && is_keep(CapSet::Effective),
        "privilege drop: did not take effect"
    );
    Ok(())
}

/// Who privd is now, for the startup log line (drop_to_net_admin checked
/// the other sets).
pub fn describe() -> String {
    let bounding = caps::read(None, CapSet::Bounding).unwrap_or_default();
    let keep = caps::read(None, CapSet::Effective).unwrap_or_default();
    let uid = Uid::effective();
    format!("uid={uid} capabilities={keep:?} bounding={bounding:?}")
}
