//! Dropping root: netd binds what it must as root, then becomes its own user
//! with no capability at all before any thread or peer exists.

use anyhow::{bail, Context, Result};
use caps::CapSet;
use nix::unistd::{Gid, Group, Uid, User};

/// The identity to become.
#[derive(Debug, Clone, Copy)]
pub struct Target {
    pub uid: Uid,
    pub gid: Gid,
}

/// Resolves the configured user/group. `None` when not started as root: a
/// plain user simply stays who it is.
pub fn resolve(user: Option<&str>, group: Option<&str>) -> Result<Option<Target>> {
    if !Uid::effective().is_root() {
        return Ok(None);
    }
    let Some(user) = user else {
        bail!(
            "started as root but netd.user is not set: refusing to run the network daemon as root"
        );
    };
    let u = User::from_name(user)
        .context("looking up netd.user")?
        .with_context(|| format!("netd.user {user:?} does not exist"))?;
    if u.uid.is_root() {
        bail!("netd.user must not be root");
    }
    let gid = match group {
        Some(g) => {
            Group::from_name(g)
                .context("looking up netd.group")?
                .with_context(|| format!("netd.group {g:?} does not exist"))?
                .gid
        }
        None => u.gid,
    };
    Ok(Some(Target { uid: u.uid, gid }))
}

/// Becomes `target` (if any) and clears every capability set, then sets
/// no_new_privs. Must run before the async runtime starts threads: capset(2)
/// acts on the calling thread only.
pub fn drop_all(target: Option<Target>) -> Result<()> {
    if let Some(t) = target {
        // The bounding set can only shrink while we still hold CAP_SETPCAP,
        // i.e. before setuid.
        for cap in caps::all() {
            caps::drop(None, CapSet::Bounding, cap)
                .with_context(|| format!("dropping {cap} from the bounding set"))?;
        }
        nix::unistd::setgroups(&[t.gid]).context("setgroups")?;
        nix::unistd::setresgid(t.gid, t.gid, t.gid).context("setresgid")?;
        nix::unistd::setresuid(t.uid, t.uid, t.uid).context("setresuid")?;
    }
    for set in [
        CapSet::Ambient,
        CapSet::Inheritable,
        CapSet::Effective,
        CapSet::Permitted,
    ] {
        // Only when there is something to clear: under systemd the sets are
        // already empty and the unit's SystemCallFilter= denies capset(2).
        let held =
            caps::read(None, set).with_context(|| format!("reading {set:?} capabilities"))?;
        if !held.is_empty() {
            caps::clear(None, set).with_context(|| format!("clearing {set:?} capabilities"))?;
        }
    }
    nix::sys::prctl::set_no_new_privs().context("setting no_new_privs")?;
    let eff = caps::read(None, CapSet::Effective).context("reading capabilities")?;
    if !eff.is_empty() || Uid::effective().is_root() {
        bail!(
            "privilege drop did not take effect (uid {}, caps {eff:?})",
            Uid::effective()
        );
    }
    Ok(())
}

/// No core dumps (RLIMIT_CORE 0) and not dumpable: a dump, ptrace or
/// /proc/PID/mem by the same uid would expose the PSK and the TLS key.
pub fn no_core_dumps() -> Result<()> {
    nix::sys::prctl::set_dumpable(false).context("PR_SET_DUMPABLE 0")?;
    let zero = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: setrlimit reads one plain struct that lives across the call.
    if unsafe { libc::setrlimit(libc::RLIMIT_CORE, &zero) } != 0 {
        return Err(std::io::Error::last_os_error()).context("RLIMIT_CORE 0");
    }
    Ok(())
}

/// Removes `var` from the environment, first overwriting its value in
/// place: /proc/PID/environ shows the memory the process started with, which
/// removing the variable alone leaves as it was. Call before any thread
/// exists (the environment is not thread-safe).
pub fn scrub_env(var: &str) {
    if let Ok(name) = std::ffi::CString::new(var) {
        // SAFETY: single-threaded here; getenv returns a pointer into the
        // environment block (or null), and strlen bytes from it are the
        // value, which is overwritten within its own length.
        unsafe {
            let value = libc::getenv(name.as_ptr());
            if !value.is_null() {
                std::ptr::write_bytes(value, b'x', libc::strlen(value));
            }
        }
    }
    std::env::remove_var(var);
}
