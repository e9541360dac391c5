//! The management socket netd binds itself when systemd did not pass one
//! (the rules are sapper-unixsock's: directory checked, only a stale socket
//! replaced, bound 0600 then opened 0660 to its owner and group).

use anyhow::{Context, Result};
use std::os::unix::net::UnixListener;
use std::path::Path;

/// Binds the socket at `path`: owned by the user netd drops to (`target`),
/// group `group` (else that user's group).
pub fn bind(
    path: &Path,
    group: Option<&str>,
    target: Option<crate::privs::Target>,
) -> Result<UnixListener> {
    // "Own user": the one netd runs as once it has dropped privileges.
    let own = target.map_or(nix::unistd::geteuid().as_raw(), |t| t.uid.as_raw());
    let group = match group {
        Some(g) => Some(
            nix::unistd::Group::from_name(g)?
                .with_context(|| format!("netd.management_group {g:?} does not exist"))?
                .gid,
        ),
        None => target.map(|t| t.gid),
    };
    sapper_unixsock::bind(path, own, target.map(|t| t.uid), group)
        .context("binding the management socket")
}
