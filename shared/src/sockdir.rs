//! Who may replace a daemon's Unix socket: whoever can write to the
//! directory it lives in. Both daemons refuse to serve from a directory that
//! anyone but root or the daemon's own user owns, or that group or others
//! may write to (a sticky /tmp included): there someone else could swap the
//! socket for their own between bind and use.

use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// Why the socket's directory is not safe.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SocketDirError {
    /// The directory could not be inspected.
    #[error("cannot inspect {path}, the directory of the socket: {detail}")]
    Inspect {
        /// The directory.
        path: String,
        /// Why.
        detail: String,
    },
    /// Owned by someone else.
    #[error("refusing to use a socket in {path}: it is owned by uid {owner}, not by root or this daemon's uid {own}")]
    Owner {
        /// The directory.
        path: String,
        /// Its owner.
        owner: u32,
        /// This process's uid.
        own: u32,
    },
    /// Writable by group or others.
    #[error("refusing to use a socket in {path}: mode {mode:04o} lets group or others write to it (chmod go-w {path}, or use a directory only root or this daemon's user can write)")]
    Writable {
        /// The directory.
        path: String,
        /// Its mode bits.
        mode: u32,
    },
}

/// The rule, over the directory's owner and mode and this process's uid.
pub fn judge(path: &str, owner: u32, mode: u32, own: u32) -> Result<(), SocketDirError> {
    if owner != 0 && owner != own {
        return Err(SocketDirError::Owner {
            path: path.into(),
            owner,
            own,
        });
    }
    if mode & 0o022 != 0 {
        return Err(SocketDirError::Writable {
            path: path.into(),
            mode: mode & 0o7777,
        });
    }
    Ok(())
}

/// Checks the directory `socket` lives in for a process of uid `own`.
pub fn check_parent(socket: &Path, own: u32) -> Result<(), SocketDirError> {
    let dir = match socket.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let shown = dir.display().to_string();
    let meta = std::fs::metadata(dir).map_err(|e| SocketDirError::Inspect {
        path: shown.clone(),
        detail: e.to_string(),
    })?;
    judge(&shown, meta.uid(), meta.mode(), own)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_and_mode_rules() {
        assert_eq!(judge("/run/sapper", 0, 0o40755, 998), Ok(()));
        assert_eq!(judge("/run/sapper", 998, 0o40700, 998), Ok(()));
        assert!(matches!(
            judge("/home/x", 1000, 0o40755, 998),
            Err(SocketDirError::Owner { owner: 1000, .. })
        ));
        for mode in [0o40775, 0o40757, 0o41777] {
            let e = judge("/tmp", 0, mode, 0).unwrap_err();
            assert!(e.to_string().contains("chmod go-w /tmp"), "{e}");
        }
    }

    #[test]
    fn real_directories() {
        let dir = std::env::temp_dir().join(format!("sockdir-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let own = nix_uid();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert_eq!(check_parent(&dir.join("s.sock"), own), Ok(()));
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
        let e = check_parent(&dir.join("s.sock"), own).unwrap_err();
        assert!(e.to_string().contains(&dir.display().to_string()), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    fn nix_uid() -> u32 {
        std::fs::metadata("/proc/self").map(|m| m.uid()).unwrap()
    }
}
