//! How a Sapper daemon binds a Unix socket of its own, in one place for
//! privd's request socket and netd's management and metrics sockets:
//!
//! 1. the directory is created if missing (0755: operators' tools must
//!    traverse it) and judged by the shared rule (`sapper_shared::sockdir`):
//!    only root or the daemon's own user may be able to replace the socket;
//! 2. a stale socket — and only a socket nobody answers on — is removed;
//!    a live one means another instance is running, anything else was put
//!    there by someone and is left alone;
//! 3. it is bound under umask 0177, so nobody can connect before owner and
//!    mode are right, then opened to mode 0660 and chowned by path (fchown on
//!    a socket fd changes the sockfs inode, not the file connect(2) checks;
//!    the directory rule makes the path safe, and no symlink is followed).
//!
//! Every listener returned is non-blocking: both daemons poll or register it.

use nix::sys::socket::{getsockname, getsockopt, sockopt, SockType, UnixAddr};
use nix::unistd::{Gid, Uid};
use sapper_shared::sockdir::{self, DirFacts, SocketDirError};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;

/// Why a socket could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    /// A file system or socket call failed.
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: String,
        source: io::Error,
    },
    /// The directory may be written by others.
    #[error(transparent)]
    Dir(#[from] SocketDirError),
    /// Something that is not a socket sits at the path.
    #[error("{0} exists and is not a socket; refusing to remove it")]
    NotASocket(String),
    /// A live socket: another instance answers on it.
    #[error("{0} is in use: another instance is running")]
    InUse(String),
    /// An fd systemd passed is not what the unit promised.
    #[error("the passed socket is not a listening Unix stream socket")]
    NotAListener,
}

fn io_err<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> SocketError + 'a {
    move |source| SocketError::Io {
        what,
        path: path.display().to_string(),
        source,
    }
}

/// Binds `path` as described above; `own` is the uid the daemon serves as
/// (for the directory rule), `owner`/`group` what the socket is chowned to.
pub fn bind(
    path: &Path,
    own: u32,
    owner: Option<Uid>,
    group: Option<Gid>,
) -> Result<UnixListener, SocketError> {
    let dir = sockdir::parent_of(path);
    if !dir.exists() {
        let mut create = std::fs::DirBuilder::new();
        create
            .recursive(true)
            .mode(0o755)
            .create(dir)
            .map_err(io_err("creating", dir))?;
        // Explicitly: the umask may have narrowed it.
        let mode = std::fs::Permissions::from_mode(0o755);
        std::fs::set_permissions(dir, mode).map_err(io_err("chmod", dir))?;
    }
    check_dir(dir, own)?;
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => {
            if UnixStream::connect(path).is_ok() {
                return Err(SocketError::InUse(path.display().to_string()));
            }
            std::fs::remove_file(path).map_err(io_err("removing stale", path))?;
        }
        Ok(_) => return Err(SocketError::NotASocket(path.display().to_string())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err("inspecting", path)(e)),
    }
    let old = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o177));
    let bound = UnixListener::bind(path);
    nix::sys::stat::umask(old);
    let listener = bound.map_err(io_err("binding", path))?;
    listener
        .set_nonblocking(true)
        .map_err(io_err("non-blocking", path))?;
    let mode = std::fs::Permissions::from_mode(0o660);
    std::fs::set_permissions(path, mode).map_err(io_err("chmod", path))?;
    if owner.is_some() || group.is_some() {
        let nofollow = nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW;
        nix::unistd::fchownat(None, path, owner, group, nofollow)
            .map_err(|e| io_err("chown", path)(e.into()))?;
    }
    Ok(listener)
}

/// One `stat` of the directory, judged by the shared rule.
pub fn check_dir(dir: &Path, own: u32) -> Result<(), SocketDirError> {
    let m = std::fs::metadata(dir).map_err(|e| SocketDirError::Inspect {
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

/// Takes a socket systemd bound (the unit set its mode and group) after
/// checking it is a listening Unix stream socket.
pub fn activated(fd: OwnedFd) -> Result<UnixListener, SocketError> {
    let ok = getsockopt(&fd, sockopt::SockType) == Ok(SockType::Stream)
        && getsockopt(&fd, sockopt::AcceptConn) == Ok(true)
        && getsockname::<UnixAddr>(fd.as_raw_fd()).is_ok();
    if !ok {
        return Err(SocketError::NotAListener);
    }
    let listener = UnixListener::from(fd);
    listener
        .set_nonblocking(true)
        .map_err(io_err("non-blocking", Path::new("(passed socket)")))?;
    Ok(listener)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("unixsock-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn binds_0660_in_a_fresh_0755_directory_and_replaces_only_stale_sockets() {
        let dir = tmp("bind");
        let path = dir.join("sub/s.sock");
        let own = nix::unistd::geteuid().as_raw();
        let l = bind(&path, own, None, None).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().mode() & 0o7777;
        assert_eq!(mode(&path), 0o660);
        assert_eq!(mode(path.parent().unwrap()), 0o755);
        // A live socket is another instance: refused, left alone.
        assert!(matches!(
            bind(&path, own, None, None),
            Err(SocketError::InUse(_))
        ));
        drop(l);
        // Nobody answers any more: stale, replaced.
        drop(bind(&path, own, None, None).unwrap());
        // Not a socket: never removed.
        let file = dir.join("sub/file");
        std::fs::write(&file, b"x").unwrap();
        assert!(matches!(
            bind(&file, own, None, None),
            Err(SocketError::NotASocket(_))
        ));
        assert!(file.exists());
        // A directory others may write to: refused.
        let open = dir.join("open");
        std::fs::create_dir_all(&open).unwrap();
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
        let e = bind(&open.join("s"), own, None, None).unwrap_err();
        assert!(
            matches!(e, SocketError::Dir(SocketDirError::Writable { .. })),
            "{e}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn only_a_listening_stream_socket_is_taken_as_activated() {
        let dir = tmp("act");
        let own = nix::unistd::geteuid().as_raw();
        let l = bind(&dir.join("s"), own, None, None).unwrap();
        assert!(activated(OwnedFd::from(l)).is_ok());
        let (a, _b) = UnixStream::pair().unwrap();
        assert!(matches!(
            activated(OwnedFd::from(a)),
            Err(SocketError::NotAListener)
        ));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
