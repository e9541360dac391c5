//! The request socket. Its mode and group are the first gate (only the
//! socket group can connect at all); SO_PEERCRED in server.rs is the second.

use anyhow::{bail, ensure, Context};
use sapper_shared::sockdir;
use std::io;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;

/// Takes the socket systemd bound (sapper-privd.socket sets its mode and
/// group), after checking it is a listening Unix stream socket.
pub fn activated(fd: std::os::fd::OwnedFd) -> anyhow::Result<UnixListener> {
    use nix::sys::socket::{getsockname, getsockopt, sockopt, SockType, UnixAddr};
    use std::os::fd::AsRawFd;
    let ok = getsockopt(&fd, sockopt::SockType) == Ok(SockType::Stream)
        && getsockopt(&fd, sockopt::AcceptConn) == Ok(true)
        && getsockname::<UnixAddr>(fd.as_raw_fd()).is_ok();
    ensure!(
        ok,
        "the passed socket is not a listening Unix stream socket"
    );
    Ok(UnixListener::from(fd))
}

/// Binds the request socket: mode 0660, group `group` when given.
pub fn bind(path: &Path, group: Option<&str>) -> anyhow::Result<UnixListener> {
    let shown = path.display();
    let io_err = |what: &str| format!("{what} {shown}");
    if let Some(dir) = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty() && !d.exists())
    {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(dir)
            .with_context(|| io_err("create directory for"))?;
        // Explicitly, since the umask may have narrowed it and netd must be
        // able to traverse it.
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))
            .with_context(|| io_err("chmod directory for"))?;
    }
    // The shared rule on the socket's directory.
    let dir = sockdir::parent_of(path);
    let m = std::fs::metadata(dir).with_context(|| format!("inspect {}", dir.display()))?;
    let (owner, mode, is_dir) = (m.uid(), m.mode(), m.is_dir());
    let facts = sockdir::DirFacts {
        owner,
        mode,
        is_dir,
    };
    sockdir::judge(dir, facts, nix::unistd::geteuid().as_raw())?;
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => {
            ensure!(
                UnixStream::connect(path).is_err(),
                "{shown} is in use by a running privd"
            );
            std::fs::remove_file(path).with_context(|| io_err("remove stale socket"))?;
        }
        Ok(_) => bail!("{shown} exists and is not a socket; refusing to remove it"),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| io_err("inspect")),
    }
    // Created 0600 so that nobody can connect before the group is right.
    let old = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o177));
    let bound = UnixListener::bind(path);
    nix::sys::stat::umask(old);
    let listener = bound.with_context(|| io_err("bind"))?;
    if let Some(name) = group {
        let group = nix::unistd::Group::from_name(name).ok().flatten();
        let gid = group
            .with_context(|| format!("privd.socket_group {name:?}: no such group"))?
            .gid;
        // By path (fchown on a socket fd changes the sockfs inode, not the
        // file), which the directory check makes safe; no symlink followed.
        let nofollow = nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW;
        nix::unistd::fchownat(None, path, None, Some(gid), nofollow)
            .with_context(|| io_err("chown"))?;
    }
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))
        .with_context(|| io_err("chmod"))?;
    Ok(listener)
}
