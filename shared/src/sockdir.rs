//! Who may replace a daemon's Unix socket: whoever can write to the
//! directory it lives in. Both daemons refuse to serve from a directory that
//! anyone but root or the daemon's own user owns, or that group or others
//! may write to (a sticky /tmp included): there someone else could swap the
//! socket for their own between bind and use.
//!
//! The rule is a pure function of facts about the directory; each daemon
//! reads those facts (one `stat`) itself.

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
    /// Not a directory at all.
    #[error("refusing to use a socket in {path}: it is not a directory")]
    NotADirectory {
        /// The path.
        path: String,
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

/// What the rule looks at: the directory's owner, mode bits and type, as
/// `stat(2)` of the directory (following symlinks) reports them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DirFacts {
    /// Owner uid.
    pub owner: u32,
    /// `st_mode` (type and permission bits).
    pub mode: u32,
    /// Whether it is a directory.
    pub is_dir: bool,
}

/// The directory a socket at `socket` lives in (`.` for a bare name).
pub fn parent_of(socket: &Path) -> &Path {
    match socket.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    }
}

/// The rule, for a process of uid `own`: the directory `dir` is owned by
/// root or `own` and nobody else may write to it.
pub fn judge(dir: &Path, facts: DirFacts, own: u32) -> Result<(), SocketDirError> {
    let path = dir.display().to_string();
    if !facts.is_dir {
        return Err(SocketDirError::NotADirectory { path });
    }
    if facts.owner != 0 && facts.owner != own {
        return Err(SocketDirError::Owner {
            path,
            owner: facts.owner,
            own,
        });
    }
    if facts.mode & 0o022 != 0 {
        return Err(SocketDirError::Writable {
            path,
            mode: facts.mode & 0o7777,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(owner: u32, mode: u32) -> DirFacts {
        DirFacts {
            owner,
            mode,
            is_dir: true,
        }
    }

    #[test]
    fn owner_and_mode_rules() {
        let run = Path::new("/run/sapper");
        assert_eq!(judge(run, dir(0, 0o40755), 998), Ok(()));
        assert_eq!(judge(run, dir(998, 0o40700), 998), Ok(()));
        assert!(matches!(
            judge(Path::new("/home/x"), dir(1000, 0o40755), 998),
            Err(SocketDirError::Owner { owner: 1000, .. })
        ));
        for mode in [0o40775, 0o40757, 0o41777] {
            let e = judge(Path::new("/tmp"), dir(0, mode), 0).unwrap_err();
            assert!(e.to_string().contains("chmod go-w /tmp"), "{e}");
        }
        let file = DirFacts {
            is_dir: false,
            ..dir(0, 0o100644)
        };
        assert!(matches!(
            judge(run, file, 0),
            Err(SocketDirError::NotADirectory { .. })
        ));
    }

    #[test]
    fn parent_of_a_bare_name_is_here() {
        assert_eq!(parent_of(Path::new("s.sock")), Path::new("."));
        assert_eq!(
            parent_of(Path::new("/run/sapper/s.sock")),
            Path::new("/run/sapper")
        );
    }
}
