//! The little of systemd's protocols privd speaks, written out here (no
//! extra crate) so the whole of it can be read in one sitting:
//!
//! - socket activation: take the fds systemd passed (LISTEN_PID must be our
//!   pid, LISTEN_FDS counts them from fd 3, LISTEN_FDNAMES names them);
//! - sd_notify: one datagram of `KEY=value` lines to $NOTIFY_SOCKET,
//!   optionally carrying one fd (the TUN, for systemd's fd store).
//!
//! Without systemd both are no-ops: no fds, no socket to notify.

use nix::sys::socket::{
    self, sendmsg, AddressFamily, ControlMessage, MsgFlags, SockFlag, SockType, UnixAddr,
};
use std::io::IoSlice;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;

/// First fd systemd passes (SD_LISTEN_FDS_START).
const FIRST_FD: RawFd = 3;
/// More than systemd would ever pass privd; bounds a bogus LISTEN_FDS.
const MAX_FDS: usize = 16;

/// Activation errors.
#[derive(Debug, thiserror::Error)]
pub enum SdError {
    /// LISTEN_FDS or LISTEN_FDNAMES is not what systemd writes.
    #[error("bad socket activation environment: {0}")]
    Env(String),
    /// fcntl on a passed fd failed (it is not open).
    #[error("passed fd {fd}: {source}")]
    Fd {
        /// The fd.
        fd: RawFd,
        /// Why.
        source: nix::Error,
    },
}

/// The fds systemd passed to this process, with their names. Empty unless
/// LISTEN_PID is our pid, so fds meant for a parent are never taken. Call
/// once: the fds become owned by the caller.
pub fn listen_fds() -> Result<Vec<(OwnedFd, String)>, SdError> {
    let var = |k| std::env::var(k).ok();
    let (Some(pid), Some(count)) = (var("LISTEN_PID"), var("LISTEN_FDS")) else {
        return Ok(Vec::new());
    };
    if pid.trim().parse::<u32>().ok() != Some(std::process::id()) {
        return Ok(Vec::new());
    }
    let n: usize = count
        .trim()
        .parse()
        .ok()
        .filter(|n| *n <= MAX_FDS)
        .ok_or_else(|| SdError::Env(format!("LISTEN_FDS={count:?}")))?;
    let names: Vec<String> = match var("LISTEN_FDNAMES") {
        Some(s) => s.split(':').map(str::to_string).collect(),
        None => vec!["unknown".into(); n],
    };
    if names.len() != n {
        return Err(SdError::Env(format!("LISTEN_FDNAMES has {} names for {n} fds", names.len())));
    }
    let mut out = Vec::with_capacity(n);
    for (i, name) in names.into_iter().enumerate() {
        let fd = FIRST_FD + i as RawFd;
        // CLOEXEC first: nft, which privd runs, must not inherit them. This
        // also proves the fd is open before we claim it.
        nix::fcntl::fcntl(fd, nix::fcntl::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC))
            .map_err(|source| SdError::Fd { fd, source })?;
        // SAFETY: systemd passed this fd to this very process (LISTEN_PID
        // checked above) and nothing else in privd refers to fds 3.. by
        // number, so ownership is taken exactly once, here.
        out.push((unsafe { OwnedFd::from_raw_fd(fd) }, name));
    }
    Ok(out)
}

/// Sends `state` (newline-separated `KEY=value`) to $NOTIFY_SOCKET, with
/// `fd` attached if given. Ok(false) when there is no $NOTIFY_SOCKET.
pub fn notify(state: &str, fd: Option<BorrowedFd<'_>>) -> nix::Result<bool> {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return Ok(false);
    };
    let bytes = path.as_bytes();
    let addr = match bytes.strip_prefix(b"@") {
        Some(name) => UnixAddr::new_abstract(name)?,
        None => UnixAddr::new(bytes)?,
    };
    let sock =
        socket::socket(AddressFamily::Unix, SockType::Datagram, SockFlag::SOCK_CLOEXEC, None)?;
    let fds: Vec<RawFd> = fd.iter().map(|f| f.as_raw_fd()).collect();
    let cmsg: Vec<ControlMessage> =
        if fds.is_empty() { Vec::new() } else { vec![ControlMessage::ScmRights(&fds)] };
    let iov = [IoSlice::new(state.as_bytes())];
    sendmsg(sock.as_raw_fd(), &iov, &cmsg, MsgFlags::MSG_NOSIGNAL, Some(&addr))?;
    Ok(true)
}
