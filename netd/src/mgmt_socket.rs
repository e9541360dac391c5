//! The management socket netd binds itself when systemd did not pass one:
//! its directory created if missing and checked by the shared rule
//! (`sapper_shared::sockdir`), a stale socket (and only a socket) removed,
//! then bound 0600 and opened to its owner and group.

use anyhow::{Context, Result};
use sapper_shared::sockdir::{self, DirFacts};
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::UnixListener;
use std::path::Path;

/// Binds the socket at `path`: owned by the user netd drops to (`target`),
/// group `group` (else that user's group).
pub fn bind(
    path: &Path,
    group: Option<&str>,
    target: Option<crate::privs::Target>,
) -> Result<UnixListener> {
    let dir = sockdir::parent_of(path);
    if !dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(dir)
            .with_context(|| format!("creating {}", dir.display()))?;
        // Explicitly: the umask may have narrowed it, and operators'
        // sapperctl must be able to traverse it.
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))
            .with_context(|| format!("chmod {}", dir.display()))?;
    }
    // "Own user": the one netd runs as once it has dropped privileges.
    let own = target.map_or(nix::unistd::geteuid().as_raw(), |t| t.uid.as_raw());
    // Checked whether netd created it just now or found it.
    check_dir(dir, own)?;
    // Only a stale socket is ever removed, never a file someone put there.
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => std::fs::remove_file(path)
            .with_context(|| format!("removing stale {}", path.display()))?,
        Ok(_) => anyhow::bail!(
            "{} exists and is not a socket; refusing to remove it",
            path.display()
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("inspecting {}", path.display())),
    }
    // Bound 0600 so nobody can connect before owner and mode are right.
    // Owner and mode are then set by path: fchmod/fchown on a socket's fd
    // change the sockfs inode, not the file connect(2) checks. The path is
    // safe to use because the directory check above means only root or this
    // user could have replaced it, and chown does not follow a symlink.
    let old = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o177));
    let bound = UnixListener::bind(path);
    nix::sys::stat::umask(old);
    let mgmt =
        bound.with_context(|| format!("binding the management socket {}", path.display()))?;
    mgmt.set_nonblocking(true)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))
        .with_context(|| format!("chmod {}", path.display()))?;
    let group = match group {
        Some(g) => Some(
            nix::unistd::Group::from_name(g)?
                .with_context(|| format!("netd.management_group {g:?} does not exist"))?
                .gid,
        ),
        None => target.map(|t| t.gid),
    };
    if target.is_some() || group.is_some() {
        nix::unistd::fchownat(
            None,
            path,
            target.map(|t| t.uid),
            group,
            nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
        )
        .with_context(|| format!("chown {}", path.display()))?;
    }
    Ok(mgmt)
}

/// One `stat` of the directory, judged by the shared rule.
pub fn check_dir(dir: &Path, own: u32) -> Result<(), sockdir::SocketDirError> {
    let m = std::fs::metadata(dir).map_err(|e| sockdir::SocketDirError::Inspect {
        path: dir.display().to_string(),
        detail: e.to_string(),
    })?;
    let facts = DirFacts {
        owner: m.uid(),
        mode: m.mode(),
        is_dir: m.is_dir(),
    };
    sockdir::judge(dir, facts, own)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn real_directories() {
        let dir = std::env::temp_dir().join(format!("sockdir-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let own = nix::unistd::geteuid().as_raw();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert!(check_dir(&dir, own).is_ok());
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
        let e = check_dir(&dir, own).unwrap_err();
        assert!(e.to_string().contains(&dir.display().to_string()), "{e}");
        let file = dir.join("f");
        std::fs::write(&file, b"").unwrap();
        assert!(matches!(
            check_dir(&file, own),
            Err(sockdir::SocketDirError::NotADirectory { .. })
        ));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
