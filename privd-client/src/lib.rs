//! Client for sapper-privd's Unix socket, used by netd (from
//! `spawn_blocking`) and sapperctl. Blocking on purpose: each call is one
//! small request and one small reply, and a plain `std` socket with timeouts
//! is the easiest thing to reason about on the privileged boundary.
//!
//! A connection may carry any number of requests. After any
//! [`PrivdError::Io`] or [`PrivdError::Protocol`] the connection is in an
//! unknown state: drop it and [`PrivdClient::connect`] again.

use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
use sapper_shared::framing::{self, HEADER_LEN};
use sapper_shared::proto::privd::{priv_request, priv_response, PrivRequest, PrivResponse};
use std::io::{self, IoSliceMut, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use sapper_shared::proto::privd::{PrivStatus, TunOpened};

/// Read and write timeout used by [`PrivdClient::connect`].
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// Largest reply accepted (a status with a long route list stays far below).
const MAX_REPLY: usize = framing::MAX_CONTROL_FRAME;

/// privd prefixes uid refusals with this; kept in step with privd's
/// `authz::Denial::NotNetd` message (the integration test checks both ends).
const DENIED_PREFIX: &str = "permission denied";

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
    /// privd understood the request and said no (or the kernel did).
    #[error("privd refused: {0}")]
    Refused(String),
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

    /// Asks for the TUN. Returns a close-on-exec duplicate of privd's TUN fd
    /// and the interface facts from privd's config. Every duplicate shares
    /// one open file description and one packet queue, so O_NONBLOCK set on
    /// one is seen by all, and two readers would split the packets.
    pub fn open_tun(&mut self) -> Result<(OwnedFd, TunOpened), PrivdError> {
        let (body, fds) = self.call(priv_request::Body::OpenTun(Default::default()))?;
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
        match self.call(req)?.0 {
            priv_response::Body::RouteChanged(_) => Ok(()),
            other => Err(unexpected("RouteChanged", &other)),
        }
    }

    /// Asks what privd holds.
    pub fn status(&mut self) -> Result<PrivStatus, PrivdError> {
        match self.call(priv_request::Body::Status(Default::default()))?.0 {
            priv_response::Body::Status(s) => Ok(s),
            other => Err(unexpected("PrivStatus", &other)),
        }
    }

    /// Sends one request and reads its reply with any fds that came along.
    fn call(
        &mut self,
        body: priv_request::Body,
    ) -> Result<(priv_response::Body, Vec<OwnedFd>), PrivdError> {
        let frame = framing::encode(&PrivRequest { body: Some(body) });
        self.stream.write_all(&frame).map_err(|e| self.io(e))?;
        let mut header = [0u8; HEADER_LEN];
        let fds = self.recv_with_fds(&mut header)?;
        let len = framing::body_len(header, MAX_REPLY)
            .map_err(|e| PrivdError::Protocol(e.to_string()))?;
        let mut buf = vec![0u8; len];
        self.stream.read_exact(&mut buf).map_err(|e| self.io(e))?;
        let reply: PrivResponse =
            framing::decode(&buf).map_err(|e| PrivdError::Protocol(e.to_string()))?;
        match reply.body {
            Some(priv_response::Body::Error(msg)) if msg.starts_with(DENIED_PREFIX) => {
                Err(PrivdError::PermissionDenied {
                    path: self.path.clone(),
                    detail: msg,
                })
            }
            Some(priv_response::Body::Error(msg)) => Err(PrivdError::Refused(msg)),
            Some(b) => Ok((b, fds)),
            None => Err(PrivdError::Protocol("empty reply".into())),
        }
    }

    /// Fills `buf` completely, collecting SCM_RIGHTS fds. privd attaches an
    /// fd to the first bytes of a reply, so it arrives with the header.
    fn recv_with_fds(&mut self, buf: &mut [u8]) -> Result<Vec<OwnedFd>, PrivdError> {
        let mut fds = Vec::new();
        let mut filled = 0;
        while filled < buf.len() {
            let mut cmsg_space = nix::cmsg_space!([std::os::fd::RawFd; 4]);
            let mut iov = [IoSliceMut::new(&mut buf[filled..])];
            let msg = match recvmsg::<()>(
                self.stream.as_raw_fd(),
                &mut iov,
                Some(&mut cmsg_space),
                MsgFlags::MSG_CMSG_CLOEXEC,
            ) {
                Ok(m) => m,
                Err(nix::Error::EINTR) => continue,
                Err(e) => return Err(self.io(io::Error::from(e))),
            };
            let n = msg.bytes;
            let truncated = msg.flags.contains(MsgFlags::MSG_CTRUNC);
            for c in msg.cmsgs().map_err(|e| self.io(io::Error::from(e)))? {
                if let ControlMessageOwned::ScmRights(raw) = c {
                    // SAFETY: the kernel just installed these fds in our
                    // table for us; nothing else owns them.
                    fds.extend(raw.into_iter().map(|f| unsafe { OwnedFd::from_raw_fd(f) }));
                }
            }
            if truncated {
                return Err(PrivdError::Protocol(
                    "too many file descriptors in reply".into(),
                ));
            }
            if n == 0 {
                return Err(self.io(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "privd closed the connection",
                )));
            }
            filled += n;
        }
        Ok(fds)
    }

    fn io(&self, source: io::Error) -> PrivdError {
        PrivdError::Io {
            path: self.path.clone(),
            source,
        }
    }
}

fn unexpected(wanted: &str, got: &priv_response::Body) -> PrivdError {
    let got = match got {
        priv_response::Body::TunOpened(_) => "TunOpened",
        priv_response::Body::RouteChanged(_) => "RouteChanged",
        priv_response::Body::Status(_) => "PrivStatus",
        priv_response::Body::Error(_) => "Error",
    };
    PrivdError::Protocol(format!("expected {wanted}, got {got}"))
}

#[cfg(test)]
mod tests {
    use super::*;
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
            let mut header = [0u8; 4];
            s.read_exact(&mut header).unwrap();
            let mut body = vec![0u8; u32::from_be_bytes(header) as usize];
            s.read_exact(&mut body).unwrap();
            s.write_all(&framing::encode(&reply)).unwrap();
            body
        });
        (path, handle)
    }

    #[test]
    fn error_replies_map_to_refused_or_permission_denied() {
        let (path, h) = fake_privd(
            "refused",
            PrivResponse {
                body: Some(priv_response::Body::Error(
                    "11.0.0.0/8 is not inside".into(),
                )),
            },
        );
        let mut c = PrivdClient::connect(&path).unwrap();
        let e = c.route_change("11.0.0.0/8", true).unwrap_err();
        assert!(
            matches!(e, PrivdError::Refused(ref m) if m.contains("not inside")),
            "{e:?}"
        );
        let sent: PrivRequest = framing::decode(&h.join().unwrap()).unwrap();
        assert!(matches!(
            sent.body,
            Some(priv_request::Body::RouteChange(ref rc)) if rc.prefix == "11.0.0.0/8" && rc.add
        ));

        let (path, _h) = fake_privd(
            "denied",
            PrivResponse {
                body: Some(priv_response::Body::Error(
                    "permission denied: only netd's uid may use privd".into(),
                )),
            },
        );
        let e = PrivdClient::connect(&path).unwrap().status().unwrap_err();
        assert!(matches!(e, PrivdError::PermissionDenied { .. }), "{e:?}");
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
