//! The request socket. Its mode and group are the first gate (only the
//! socket group can connect at all); SO_PEERCRED in server.rs is the second.

use std::io;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;

/// Socket setup errors.
#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    /// Filesystem or bind failure.
    #[error("{what} {path}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// Which path.
        path: String,
        /// Why.
        source: io::Error,
    },
    /// Something other than a socket sits at the path.
    #[error("{0} exists and is not a socket; refusing to remove it")]
    NotASocket(String),
    /// Another privd answers on the path.
    #[error("{0} is in use by a running privd")]
    InUse(String),
    /// The socket systemd passed is not a listening Unix stream socket.
    #[error("the passed socket is not a listening Unix stream socket")]
    NotListening,
    /// The socket's directory is not safe.
    #[error(transparent)]
    Dir(#[from] sapper_shared::sockdir::SocketDirError),
    /// The configured group does not exist.
    #[error("privd.socket_group {0:?}: no such group")]
    NoGroup(String),
}

/// Takes the socket systemd bound (sapper-privd.socket sets its mode and
/// group), after checking it is a listening Unix stream socket.
pub fn activated(fd: std::os::fd::OwnedFd) -> Result<UnixListener, SocketError> {
    use nix::sys::socket::{getsockname, getsockopt, sockopt, SockType, UnixAddr};
    use std::os::fd::AsRawFd;
    let ok = getsockopt(&fd, sockopt::SockType) == Ok(SockType::Stream)
        && getsockopt(&fd, sockopt::AcceptConn) == Ok(true)
        && getsockname::<UnixAddr>(fd.as_raw_fd()).is_ok();
    if !ok {
        return Err(SocketError::NotListening);
    }
    Ok(UnixListener::from(fd))
}

/// Binds the request socket: mode 0660, group `group` when given.
pub fn bind(path: &Path, group: Option<&str>) -> Result<UnixListener, SocketError> {
    let shown = path.display().to_string();
    let io_err = |what: &'static str| {
        let path = shown.clone();
        move |source| SocketError::Io { what, path, source }
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty() && !d.exists()) {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(dir)
            .map_err(io_err("create directory for"))?;
        // Explicitly, since the umask may have narrowed it and netd must be
        // able to traverse it.
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))
            .map_err(io_err("chmod directory for"))?;
    }
    check_dir(path, nix::unistd::geteuid().as_raw())?;
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => {
            if UnixStream::connect(path).is_ok() {
                return Err(SocketError::InUse(shown));
            }
            std::fs::remove_file(path).map_err(io_err("remove stale socket"))?;
        }
        Ok(_) => return Err(SocketError::NotASocket(shown)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err("inspect")(e)),
    }
    // Created 0600 so that nobody can connect before the group is right.
    let old = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o177));
    let bound = UnixListener::bind(path);
    nix::sys::stat::umask(old);
    let listener = bound.map_err(io_err("bind"))?;
    if let Some(name) = group {
        let gid = nix::unistd::Group::from_name(name)
            .ok()
            .flatten()
            .ok_or_else(|| SocketError::NoGroup(name.to_string()))?
            .gid;
        // By path (fchown on a socket fd changes the sockfs inode, not the
        // file), which the directory check makes safe; no symlink followed.
        let nofollow = nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW;
        nix::unistd::fchownat(None, path, None, Some(gid), nofollow)
            .map_err(|e| io_err("chown")(io::Error::from(e)))?;
    }
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))
        .map_err(io_err("chmod"))?;
    Ok(listener)
}

/// Reads the facts of the socket's directory for the shared rule.
fn check_dir(socket: &Path, own: u32) -> Result<(), sapper_shared::sockdir::SocketDirError> {
    use sapper_shared::sockdir::{judge, parent_of, DirFacts, SocketDirError};
    use std::os::unix::fs::MetadataExt;
    let dir = parent_of(socket);
    let m = std::fs::metadata(dir).map_err(|e| SocketDirError::Inspect {
        path: dir.display().to_string(),
        detail: e.to_string(),
    })?;
    let facts = DirFacts { owner: m.uid(), mode: m.mode(), is_dir: m.is_dir() };
    judge(dir, facts, own)
}
