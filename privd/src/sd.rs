//! The little of systemd's protocols privd speaks:
//!
//! - socket activation (the `sd-notify` crate): take the fds systemd passed
//!   (only if LISTEN_PID is our pid; LISTEN_FDNAMES names them);
//! - sd_notify: one datagram of `KEY=value` lines to $NOTIFY_SOCKET,
//!   optionally carrying one fd (the TUN, for systemd's fd store). Written
//!   out here, since it must work under the seccomp filter (sendto with an
//!   address, no connect) and the crate would need a further one for fds.
//!
//! Without systemd both are no-ops: no fds, no socket to notify.

use anyhow::Context;
use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags, UnixAddr};
use std::io::IoSlice;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::UnixDatagram;

/// The fds systemd passed to this process, with their names. Call once:
/// the fds become owned by the caller.
pub fn listen_fds() -> anyhow::Result<Vec<(OwnedFd, String)>> {
    let fds = sd_notify::listen_fds_with_names().context("bad socket activation environment")?;
    // SAFETY: systemd passed these fds to this very process (the crate
    // checked LISTEN_PID and set CLOEXEC) and nothing else in privd refers
    // to fds 3.. by number, so ownership is taken exactly once, here.
    Ok(fds
        .map(|(fd, name)| (unsafe { OwnedFd::from_raw_fd(fd) }, name))
        .collect())
}

/// Sends `state` (newline-separated `KEY=value`) to $NOTIFY_SOCKET, with
/// `fd` attached if given. Ok(false) when there is no $NOTIFY_SOCKET.
pub fn notify(state: &str, fd: Option<BorrowedFd<'_>>) -> std::io::Result<bool> {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return Ok(false);
    };
    let addr = match path.as_bytes().strip_prefix(b"@") {
        Some(name) => UnixAddr::new_abstract(name)?,
        None => UnixAddr::new(path.as_bytes())?,
    };
    let sock = UnixDatagram::unbound()?;
    let fd = fd.map(|f| f.as_raw_fd());
    send_fd(sock.as_raw_fd(), state.as_bytes(), fd, Some(&addr))?;
    Ok(true)
}

/// One sendmsg(2) of `buf`, carrying `fd` (SCM_RIGHTS) if given; returns
/// how many bytes went.
pub fn send_fd(
    sock: RawFd,
    buf: &[u8],
    fd: Option<RawFd>,
    to: Option<&UnixAddr>,
) -> nix::Result<usize> {
    let fds: Vec<RawFd> = fd.into_iter().collect();
    let rights = [ControlMessage::ScmRights(&fds)];
    let cmsg = if fds.is_empty() { &[][..] } else { &rights[..] };
    let flags = MsgFlags::MSG_NOSIGNAL;
    sendmsg(sock, &[IoSlice::new(buf)], cmsg, flags, to)
}
