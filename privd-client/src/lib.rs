//! Client for sapper-privd's Unix socket, used by netd (from
//! `spawn_blocking`) and sapperctl. Blocking on purpose: each call is one
//! small request and one small reply, and a plain `std` socket with timeouts
//! is the easiest thing to reason about on the privileged boundary.
//!
//! A connection may carry any number of requests. After any
//! [`PrivdError::Io`] or [`PrivdError::Protocol`] the connection is in an
//! unknown state: drop it and [`PrivdClient::connect`] again.

use sapper_shared::framing::{self, FrameDecoder};
use sapper_shared::proto::privd::{priv_request, priv_response, PrivRequest, PrivResponse};
use std::io::{self, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use sapper_shared::proto::privd::{PrivStatus, TunOpened};

/// Read and write timeout used by [`PrivdClient::connect`].
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// Largest reply accepted (a status with a long route list stays far below).
const MAX_REPLY: usize = framing::MAX_CONTROL_FRAME;

pub use sapper_shared::proto::privd::ErrorCode;

/// What can go wrong talking to privd.
#[derive(Debug, thiserror::Error)]
pub enum PrivdError {
    /// Nothing listens at the path (missing socket, stale socket).
    #[error("cannot reach privd at {path}: {source} (is sapper-privd running?)")]
    Unreachable {
        /// The socket path.
        path: PathBuf,
        /// The connect error.
        source: io::Error,
    },
    /// The socket's permissions or privd's policy keep this process out.
    #[error("permission denied by privd at {path}: {detail}")]
    PermissionDenied {
        /// The socket path.
        path: PathBuf,
        /// The OS error or privd's message.
        detail: String,
    },
    /// privd understood the request and said no (`code` says why; the
    /// kernel's own refusals are [`ErrorCode::Failed`]).
    #[error("privd refused ({code:?}): {detail}")]
    Refused {
        /// The typed reason.
        code: ErrorCode,
        /// privd's message.
        detail: String,
    },
    /// The reply was not what the protocol promises.
    #[error("privd protocol error: {0}")]
    Protocol(String),
    /// The connection failed or timed out mid-request.
    #[error("talking to privd at {path}: {source}")]
    Io {
        /// The socket path.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
}

/// A connection to privd.
#[derive(Debug)]
pub struct PrivdClient {
    stream: UnixStream,
    path: PathBuf,
}

impl PrivdClient {
    /// Connects with [`DEFAULT_TIMEOUT`] for every read and write.
    pub fn connect(path: impl AsRef<Path>) -> Result<Self, PrivdError> {
        Self::connect_with_timeout(path, DEFAULT_TIMEOUT)
    }

    /// Connects with the given read and write timeout.
    pub fn connect_with_timeout(
        path: impl AsRef<Path>,
        timeout: Duration,
    ) -> Result<Self, PrivdError> {
        let path = path.as_ref().to_path_buf();
        let stream = match UnixStream::connect(&path) {
            Ok(s) => s,
            Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
                return Err(PrivdError::PermissionDenied {
                    detail: format!("{e} (is this user in privd.socket_group?)"),
                    path,
                })
            }
            Err(source) => return Err(PrivdError::Unreachable { path, source }),
        };
        let set = stream
            .set_read_timeout(Some(timeout))
            .and_then(|()| stream.set_write_timeout(Some(timeout)));
        if let Err(source) = set {
            return Err(PrivdError::Io { path, source });
        }
        Ok(Self { stream, path })
    }

    /// The uid of the process that set up the listening end (SO_PEERCRED):
    /// root or privd's own user for a real privd. Check it before trusting
    /// an fd from this connection.
    pub fn peer_uid(&self) -> Result<u32, PrivdError> {
        use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};
        getsockopt(&self.stream, PeerCredentials)
            .map(|c| c.uid())
            .map_err(|e| self.io(io::Error::from(e)))
    }

    /// Asks for the TUN. Returns a close-on-exec duplicate of privd's TUN fd
    /// and the interface facts from privd's config. Every duplicate shares
    /// one open file description and one packet queue, so O_NONBLOCK set on
    /// one is seen by all, and two readers would split the packets.
    pub fn open_tun(&mut self) -> Result<(OwnedFd, TunOpened), PrivdError> {
        let (body, fds) = self.call(priv_request::Body::OpenTun(Default::default()), 1)?;
        match body {
            priv_response::Body::TunOpened(t) => {
                let fd = fds.into_iter().next().ok_or_else(|| {
                    PrivdError::Protocol("TunOpened arrived without a file descriptor".into())
                })?;
                Ok((fd, t))
            }
            other => Err(unexpected("TunOpened", &other)),
        }
    }

    /// Adds (`add = true`) or removes a route to `prefix` (CIDR) on the TUN.
    pub fn route_change(&mut self, prefix: &str, add: bool) -> Result<(), PrivdError> {
        let req = priv_request::Body::RouteChange(sapper_shared::proto::privd::RouteChange {
            prefix: prefix.to_string(),
            add,
        });
        match self.call(req, 0)?.0 {
            priv_response::Body::RouteChanged(_) => Ok(()),
            other => Err(unexpected("RouteChanged", &other)),
        }
    }

    /// Asks what privd holds.
    pub fn status(&mut self) -> Result<PrivStatus, PrivdError> {
        match self
            .call(priv_request::Body::Status(Default::default()), 0)?
            .0
        {
            priv_response::Body::Status(s) => Ok(s),
            other => Err(unexpected("PrivStatus", &other)),
        }
    }

    /// Sends one request and reads its reply with any fds that came along.
    /// More than `max_fds` fds is a protocol error: the extras are closed
    /// (dropped) rather than left in this process's fd table, where a
    /// misbehaving peer could otherwise exhaust it or plant fds.
    fn call(
        &mut self,
        body: priv_request::Body,
        max_fds: usize,
    ) -> Result<(priv_response::Body, Vec<OwnedFd>), PrivdError> {
        let frame = framing::encode(&PrivRequest { body: Some(body) });
        self.stream.write_all(&frame).map_err(|e| self.io(e))?;
        let (body, fds) = self.recv_frame()?;
        if fds.len() > max_fds {
            let n = fds.len();
            drop(fds);
            return Err(PrivdError::Protocol(format!(
                "reply carried {n} file descriptors, expected at most {max_fds}; closed them"
            )));
        }
        let reply: PrivResponse =
            framing::decode(&body).map_err(|e| PrivdError::Protocol(e.to_string()))?;
        match reply.body {
            Some(priv_response::Body::Refused(r)) => match r.code() {
                ErrorCode::PermissionDenied => Err(PrivdError::PermissionDenied {
                    path: self.path.clone(),
                    detail: r.detail,
                }),
                code => Err(PrivdError::Refused {
                    code,
                    detail: r.detail,
                }),
            },
            Some(b) => Ok((b, fds)),
            None => Err(PrivdError::Protocol("empty reply".into())),
        }
    }

    /// Reads one reply frame through the shared [`FrameDecoder`] (which
    /// checks the length against [`MAX_REPLY`] before any body is kept),
    /// collecting SCM_RIGHTS fds. privd attaches an fd to the first bytes of
    /// a reply. MSG_CMSG_CLOEXEC makes every received fd close-on-exec
    /// atomically (no window in which a concurrent fork+exec could inherit
    /// it). Ancillary data the kernel had to truncate (MSG_CTRUNC) means fds
    /// were lost or the reply is not what privd sends: the whole reply is
    /// refused and the fds that did arrive are closed. privd sends exactly
    /// one reply per request, so bytes after it are a protocol error.
    fn recv_frame(&mut self) -> Result<(Vec<u8>, Vec<OwnedFd>), PrivdError> {
        let mut frames = FrameDecoder::new(MAX_REPLY);
        let mut fds = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            match frames.next_frame() {
                Ok(Some(_)) if !frames.is_empty() => {
                    return Err(PrivdError::Protocol("bytes after the reply".into()))
                }
                Ok(Some(body)) => return Ok((body, fds)),
                Ok(None) => {}
                Err(e) => return Err(PrivdError::Protocol(e.to_string())),
            }
            let (n, truncated) = match recv_once(self.stream.as_raw_fd(), &mut buf, &mut fds) {
                Ok(r) => r,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(self.io(e)),
            };
            if truncated {
                // `fds` drops here: what did arrive is closed.
                return Err(PrivdError::Protocol(
                    "ancillary data truncated (MSG_CTRUNC): too many file descriptors in reply"
                        .into(),
                ));
            }
            if n == 0 {
                return Err(self.io(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "privd closed the connection",
                )));
            }
            frames.push(&buf[..n]);
        }
    }

    fn io(&self, source: io::Error) -> PrivdError {
        PrivdError::Io {
            path: self.path.clone(),
            source,
        }
    }
}

/// Room for this many fds in one reply's control data; privd sends one.
const CMSG_FDS: usize = 4;

/// One recvmsg(2) into `buf`, appending every SCM_RIGHTS fd to `fds`.
/// Returns the byte count and whether the kernel truncated the ancillary
/// data (MSG_CTRUNC). Written against libc rather than nix because nix
/// refuses to walk the control messages of a truncated reply, and the fds
/// that did arrive must still be taken (and so closed) rather than leaked.
fn recv_once(sock: RawFd, buf: &mut [u8], fds: &mut Vec<OwnedFd>) -> io::Result<(usize, bool)> {
    // u64 keeps the buffer aligned for cmsghdr.
    let mut control = [0u64; 8];
    // SAFETY: CMSG_SPACE only computes a size.
    let space = unsafe { libc::CMSG_SPACE((CMSG_FDS * std::mem::size_of::<libc::c_int>()) as u32) };
    let space = (space as usize).min(std::mem::size_of_val(&control));
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: msghdr is plain data; all-zero is a valid empty header.
    let mut mhdr: libc::msghdr = unsafe { std::mem::zeroed() };
    mhdr.msg_iov = &mut iov;
    mhdr.msg_iovlen = 1;
    mhdr.msg_control = control.as_mut_ptr().cast();
    mhdr.msg_controllen = space as _;
    // MSG_CMSG_CLOEXEC: every fd arrives close-on-exec, atomically.
    // SAFETY: iov and control point at live buffers of the stated lengths
    // for the duration of the call.
    let n = unsafe { libc::recvmsg(sock, &mut mhdr, libc::MSG_CMSG_CLOEXEC) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: walking the control buffer the kernel just filled, with the
    // length it reported in mhdr.msg_controllen, using the libc macros.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(&mhdr);
        while !c.is_null() {
            let hdr = std::ptr::read_unaligned(c);
            if hdr.cmsg_level == libc::SOL_SOCKET && hdr.cmsg_type == libc::SCM_RIGHTS {
                let data = libc::CMSG_DATA(c);
                let header_len = data as usize - c as usize;
                let count = (hdr.cmsg_len as usize).saturating_sub(header_len)
                    / std::mem::size_of::<libc::c_int>();
                for i in 0..count {
                    let fd: libc::c_int =
                        std::ptr::read_unaligned(data.cast::<libc::c_int>().add(i));
                    // The kernel installed this fd in our table for us;
                    // nothing else owns it.
                    fds.push(OwnedFd::from_raw_fd(fd));
                }
            }
            c = libc::CMSG_NXTHDR(&mhdr, c);
        }
    }
    Ok((n as usize, mhdr.msg_flags & libc::MSG_CTRUNC != 0))
}

fn unexpected(wanted: &str, got: &priv_response::Body) -> PrivdError {
    let got = match got {
        priv_response::Body::TunOpened(_) => "TunOpened",
        priv_response::Body::RouteChanged(_) => "RouteChanged",
        priv_response::Body::Status(_) => "PrivStatus",
        priv_response::Body::Refused(_) => "Refused",
    };
    PrivdError::Protocol(format!("expected {wanted}, got {got}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::os::unix::net::UnixListener;

    fn temp_socket(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("privd-client-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir.join("privd.sock")
    }

    #[test]
    fn missing_socket_says_where_and_what_to_check() {
        let e = PrivdClient::connect("/nonexistent/privd.sock").unwrap_err();
        assert!(matches!(e, PrivdError::Unreachable { .. }), "{e:?}");
        let text = e.to_string();
        assert!(text.contains("/nonexistent/privd.sock"), "{text}");
        assert!(text.contains("is sapper-privd running?"), "{text}");
    }

    /// A fake privd answering one request with `reply`.
    fn fake_privd(tag: &str, reply: PrivResponse) -> (PathBuf, std::thread::JoinHandle<Vec<u8>>) {
        let path = temp_socket(tag);
        let listener = UnixListener::bind(&path).unwrap();
        let handle = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let body = read_request(&mut s);
            s.write_all(&framing::encode(&reply)).unwrap();
            body
        });
        (path, handle)
    }

    /// One request frame, through the shared decoder.
    fn read_request(s: &mut std::os::unix::net::UnixStream) -> Vec<u8> {
        let mut frames = FrameDecoder::new(MAX_REPLY);
        let mut buf = [0u8; 512];
        loop {
            if let Some(body) = frames.next_frame().unwrap() {
                return body;
            }
            let n = s.read(&mut buf).unwrap();
            assert!(n > 0, "client closed before a whole request");
            frames.push(&buf[..n]);
        }
    }

    fn refusal(code: ErrorCode, detail: &str) -> PrivResponse {
        PrivResponse {
            body: Some(priv_response::Body::Refused(
                sapper_shared::proto::privd::Refusal {
                    code: code as i32,
                    detail: detail.into(),
                },
            )),
        }
    }

    #[test]
    fn error_replies_map_to_refused_or_permission_denied() {
        let (path, h) = fake_privd(
            "refused",
            refusal(ErrorCode::RouteNotAllowed, "11.0.0.0/8 is not inside"),
        );
        let mut c = PrivdClient::connect(&path).unwrap();
        let e = c.route_change("11.0.0.0/8", true).unwrap_err();
        assert!(
            matches!(e, PrivdError::Refused { code: ErrorCode::RouteNotAllowed, ref detail } if detail.contains("not inside")),
            "{e:?}"
        );
        let sent: PrivRequest = framing::decode(&h.join().unwrap()).unwrap();
        assert!(matches!(
            sent.body,
            Some(priv_request::Body::RouteChange(ref rc)) if rc.prefix == "11.0.0.0/8" && rc.add
        ));

        // The code decides, not the text.
        let (path, _h) = fake_privd("denied", refusal(ErrorCode::PermissionDenied, "no"));
        let e = PrivdClient::connect(&path).unwrap().status().unwrap_err();
        assert!(matches!(e, PrivdError::PermissionDenied { .. }), "{e:?}");
        let (path, _h) = fake_privd(
            "text",
            refusal(ErrorCode::Failed, "permission denied: kernel"),
        );
        let e = PrivdClient::connect(&path).unwrap().status().unwrap_err();
        let failed = matches!(
            e,
            PrivdError::Refused {
                code: ErrorCode::Failed,
                ..
            }
        );
        assert!(failed, "{e:?}");
    }

    #[test]
    fn peer_uid_is_the_listeners() {
        let (path, _h) = fake_privd("peer", refusal(ErrorCode::Failed, "x"));
        let c = PrivdClient::connect(&path).unwrap();
        assert_eq!(c.peer_uid().unwrap(), nix::unistd::getuid().as_raw());
    }

    #[test]
    fn tun_reply_without_fd_is_a_protocol_error() {
        let (path, _h) = fake_privd(
            "nofd",
            PrivResponse {
                body: Some(priv_response::Body::TunOpened(TunOpened::default())),
            },
        );
        let e = PrivdClient::connect(&path).unwrap().open_tun().unwrap_err();
        assert!(matches!(e, PrivdError::Protocol(_)), "{e:?}");
    }

    #[test]
    fn wrong_reply_kind_is_a_protocol_error() {
        let (path, _h) = fake_privd(
            "kind",
            PrivResponse {
                body: Some(priv_response::Body::Status(PrivStatus::default())),
            },
        );
        let e = PrivdClient::connect(&path)
            .unwrap()
            .route_change("10.0.0.0/8", false)
            .unwrap_err();
        assert!(
            matches!(e, PrivdError::Protocol(ref m) if m.contains("RouteChanged")),
            "{e:?}"
        );
    }

    /// A fake privd answering one request with `reply`, the given fds
    /// riding on the reply's first bytes as privd sends them. It drops its
    /// copies of the fds once sent and keeps the connection open until the
    /// client closes it.
    fn fake_privd_with_fds(
        tag: &str,
        reply: PrivResponse,
        fds: Vec<OwnedFd>,
    ) -> (PathBuf, std::thread::JoinHandle<()>) {
        use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
        use std::io::IoSlice;
        let path = temp_socket(tag);
        let listener = UnixListener::bind(&path).unwrap();
        let handle = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let _ = read_request(&mut s);
            let frame = framing::encode(&reply);
            let raw: Vec<std::os::fd::RawFd> = fds.iter().map(|f| f.as_raw_fd()).collect();
            let iov = [IoSlice::new(&frame)];
            let cmsg = [ControlMessage::ScmRights(&raw)];
            let n = sendmsg::<()>(s.as_raw_fd(), &iov, &cmsg, MsgFlags::empty(), None).unwrap();
            s.write_all(&frame[n..]).unwrap();
            drop(fds);
            let _ = s.read(&mut [0u8; 1]);
        });
        (path, handle)
    }

    fn tun_reply() -> PrivResponse {
        PrivResponse {
            body: Some(priv_response::Body::TunOpened(TunOpened {
                name: "sapper0".into(),
                mtu: 1400,
                ..Default::default()
            })),
        }
    }

    /// A pipe whose write end is what gets passed: once every copy of the
    /// write end is closed, the (non-blocking) read end reads EOF.
    fn pipe() -> (std::fs::File, OwnedFd) {
        let (r, w) = nix::unistd::pipe().unwrap();
        let r = std::fs::File::from(r);
        nix::fcntl::fcntl(
            r.as_raw_fd(),
            nix::fcntl::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
        )
        .unwrap();
        (r, w)
    }

    fn all_writers_closed(mut r: &std::fs::File) -> bool {
        matches!(r.read(&mut [0u8; 1]), Ok(0))
    }

    #[test]
    fn received_tun_fd_is_close_on_exec() {
        let (r, w) = pipe();
        let (path, h) = fake_privd_with_fds("cloexec", tun_reply(), vec![w]);
        let mut c = PrivdClient::connect(&path).unwrap();
        let (fd, info) = c.open_tun().unwrap();
        assert_eq!(info.name, "sapper0");
        let flags = nix::fcntl::fcntl(fd.as_raw_fd(), nix::fcntl::F_GETFD).unwrap();
        assert!(
            nix::fcntl::FdFlag::from_bits_truncate(flags).contains(nix::fcntl::FdFlag::FD_CLOEXEC)
        );
        drop(c);
        h.join().unwrap();
        assert!(!all_writers_closed(&r), "the one expected fd is kept");
        drop(fd);
        assert!(all_writers_closed(&r));
    }

    #[test]
    fn extra_fds_are_refused_and_closed() {
        let (r, w) = pipe();
        let fds = vec![w.try_clone().unwrap(), w];
        let (path, h) = fake_privd_with_fds("extra", tun_reply(), fds);
        let mut c = PrivdClient::connect(&path).unwrap();
        let e = c.open_tun().unwrap_err();
        assert!(
            matches!(e, PrivdError::Protocol(ref m) if m.contains("2 file descriptors")),
            "{e:?}"
        );
        drop(c);
        h.join().unwrap();
        assert!(all_writers_closed(&r), "the extra fds were left open");
    }

    #[test]
    fn fd_on_a_reply_that_takes_none_is_refused_and_closed() {
        let (r, w) = pipe();
        let reply = PrivResponse {
            body: Some(priv_response::Body::Status(PrivStatus::default())),
        };
        let (path, h) = fake_privd_with_fds("statusfd", reply, vec![w]);
        let mut c = PrivdClient::connect(&path).unwrap();
        let e = c.status().unwrap_err();
        assert!(matches!(e, PrivdError::Protocol(_)), "{e:?}");
        drop(c);
        h.join().unwrap();
        assert!(all_writers_closed(&r));
    }

    #[test]
    fn truncated_ancillary_data_is_refused_and_closed() {
        let (r, w) = pipe();
        // More than the client's control buffer holds: the kernel sets
        // MSG_CTRUNC and closes what did not fit.
        let fds: Vec<OwnedFd> = (0..16).map(|_| w.try_clone().unwrap()).collect();
        drop(w);
        let (path, h) = fake_privd_with_fds("ctrunc", tun_reply(), fds);
        let mut c = PrivdClient::connect(&path).unwrap();
        let e = c.open_tun().unwrap_err();
        assert!(
            matches!(e, PrivdError::Protocol(ref m) if m.contains("MSG_CTRUNC")),
            "{e:?}"
        );
        drop(c);
        h.join().unwrap();
        assert!(all_writers_closed(&r));
    }

    #[test]
    fn closed_connection_is_an_io_error() {
        let path = temp_socket("closed");
        let listener = UnixListener::bind(&path).unwrap();
        let h = std::thread::spawn(move || drop(listener.accept().unwrap()));
        let mut c = PrivdClient::connect(&path).unwrap();
        h.join().unwrap();
        assert!(matches!(c.status(), Err(PrivdError::Io { .. })));
    }
}
