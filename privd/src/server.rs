//! The loop: one thread, one poll(2) over the stop signal, the listening
//! socket and the clients, one audited decision per request. A connection is
//! identified only by SO_PEERCRED, which the kernel fills in at connect time
//! and the peer cannot forge. What is allowed is decided in authz.rs; this
//! file only carries it out. Nothing here blocks: sockets are non-blocking,
//! netlink answers at once (with a deadline), and a client that does not
//! read its reply is hung up on.

use crate::audit::{self, Outcome, RateBound, Record};
use crate::authz::{self, Action, Policy, Refusal};
use crate::netlink::Netlink;
use crate::{nat, sd};
use ipnet::IpNet;
use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::socket::{self, sockopt, SockFlag, UnixCredentials};
use sapper_shared::framing::{self, FrameDecoder};
use sapper_shared::proto::privd::{
    priv_request::Body, priv_response, ErrorCode, PrivRequest, PrivResponse, PrivStatus,
    Refusal as Refused, RouteChange, TunOpened,
};
use serde_json::{json, Value};
use std::collections::{BTreeSet, VecDeque};
use std::io::{self, ErrorKind::Interrupted, ErrorKind::WouldBlock, Read};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::time::{Duration, Instant, SystemTime};

/// Requests are tiny (the largest is a prefix string); anything bigger is
/// not a privd client.
pub const MAX_REQUEST: usize = 4 * 1024;
/// How long anyone but netd may take for its one request, and netd for the
/// rest of a request it has begun.
const IO_TIMEOUT: Duration = Duration::from_secs(5);
/// How long netd's own connection may sit idle between requests.
const NETD_IDLE: Duration = Duration::from_secs(60);
/// Pause after an accept error (EMFILE and friends) instead of spinning.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// The status reply lists at most this many routes, so that it stays within
/// the client's 64 KiB frame (config validation keeps the count below it).
const STATUS_ROUTES: usize = sapper_shared::config::MAX_TUN_ROUTES;

/// Everything privd holds. The TUN facts come from the config only.
pub struct Privd {
    /// The open_tun answer: the name the kernel reported, MTU and addresses
    /// from the config, the TUN's framing and offloads.
    pub opened: TunOpened,
    /// Kernel interface index of the TUN.
    pub ifindex: u32,
    /// privd's own TUN fd; callers get duplicates.
    pub tun_fd: OwnedFd,
    /// The rtnetlink socket.
    pub net: Netlink,
    /// What the policy sees: netd's uid, the allowed, configured and
    /// installed routes.
    pub policy: Policy,
    /// True when the nft table was installed at start.
    pub nat_active: bool,
    /// The audit rate bound.
    pub audit: RateBound,
    /// Requests granted, and refused or failed, since start.
    pub counts: [u64; 2],
    /// The audit lines of the last [`LAST_REFUSALS`] refusals, oldest first.
    pub refusals: VecDeque<String>,
}

/// Refusals the status reply repeats. Each line is short (privd's own
/// reasons; peer text clipped), so they fit the frame beside every route.
pub const LAST_REFUSALS: usize = 8;

/// One client: who, its bytes so far, when it is hung up on.
struct Conn {
    stream: UnixStream,
    peer: UnixCredentials,
    frames: FrameDecoder,
    deadline: Instant,
    one_reply: bool,
}

/// What a handler decided, before it is audited and sent: the body when
/// granted, else the error code (the reason is the refusal's detail).
struct Reply {
    body: Result<priv_response::Body, ErrorCode>,
    reason: String,
}

impl Reply {
    fn new(body: Result<priv_response::Body, ErrorCode>, reason: String) -> Self {
        Reply { body, reason }
    }

    fn refused(r: &Refusal) -> Self {
        Self::new(Err(r.code()), r.to_string())
    }

    /// FAILED is the kernel's no; every other code is the policy's.
    fn outcome(&self) -> Outcome {
        match self.body {
            Ok(_) => Outcome::Granted,
            Err(ErrorCode::Failed) => Outcome::Failed,
            Err(_) => Outcome::Refused,
        }
    }
}

/// The request, its name and parameters for the audit line.
fn request(bytes: &[u8]) -> (Option<Body>, &'static str, Value) {
    let body = framing::decode::<PrivRequest>(bytes).ok();
    let body = body.and_then(|r| r.body);
    let (name, params) = match &body {
        Some(Body::OpenTun(_)) => ("open_tun", json!({})),
        Some(Body::RouteChange(RouteChange { prefix, add })) => (
            "route_change",
            json!({ "prefix": audit::clip(prefix), "add": add }),
        ),
        Some(Body::Status(_)) => ("status", json!({})),
        None => ("unknown", json!({ "len": bytes.len() })),
    };
    (body, name, params)
}

impl Privd {
    /// Serves until `stop` (the signalfd) becomes readable.
    pub fn serve(&mut self, listener: &UnixListener, stop: BorrowedFd<'_>) -> io::Result<()> {
        let mut conns: Vec<Conn> = Vec::new();
        let mut paused: Option<Instant> = None;
        loop {
            let now = Instant::now();
            // Idle, stalled or too slow: hung up on.
            conns.retain(|c| c.deadline > now);
            paused = paused.filter(|t| *t > now);
            let next = conns.iter().map(|c| c.deadline).chain(paused).min();
            let wait = next.map_or(NETD_IDLE, |t| t.saturating_duration_since(now));
            let timeout = PollTimeout::try_from(wait + Duration::from_millis(1));
            let conn_fds = conns.iter().map(|c| c.stream.as_fd());
            let all = [stop, listener.as_fd()].into_iter().chain(conn_fds);
            let mut fds: Vec<_> = all.map(|fd| PollFd::new(fd, PollFlags::POLLIN)).collect();
            // While paused the listener is polled for nothing.
            if paused.is_some() {
                fds[1].set_events(PollFlags::empty());
            }
            match poll(&mut fds, timeout.unwrap_or(PollTimeout::MAX)) {
                Ok(_) | Err(Errno::EINTR) => {}
                Err(e) => return Err(e.into()),
            }
            let seen = |f: &PollFd| f.revents().is_some_and(|r| !r.is_empty());
            let ready: Vec<bool> = fds.iter().map(seen).collect();
            drop(fds);
            if ready[0] {
                return Ok(());
            }
            let polled = conns.len();
            if ready[1] && !self.accept(listener, &mut conns) {
                paused = Some(now + ACCEPT_BACKOFF);
            }
            // Backwards, so swap_remove only moves clients already handled
            // (or accepted just now, which were not polled).
            for i in (0..polled).rev() {
                if ready[i + 2] && !self.readable(&mut conns[i]) {
                    conns.swap_remove(i);
                }
            }
        }
    }

    /// Admits what is waiting (a bounded batch); false after an accept error.
    fn accept(&mut self, listener: &UnixListener, conns: &mut Vec<Conn>) -> bool {
        for _ in 0..16 {
            let flags = SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC;
            let stream = match socket::accept4(listener.as_raw_fd(), flags) {
                // SAFETY: accept4 just returned this fd; nothing else owns it.
                Ok(fd) => UnixStream::from(unsafe { OwnedFd::from_raw_fd(fd) }),
                Err(Errno::EAGAIN) => return true,
                Err(Errno::EINTR | Errno::ECONNABORTED) => continue,
                Err(e) => {
                    audit::log!("warn", "accept: {e}");
                    return false;
                }
            };
            let Ok(peer) = socket::getsockopt(&stream, sockopt::PeerCredentials) else {
                audit::log!("warn", "SO_PEERCRED failed, closing");
                continue;
            };
            let open_own = conns.iter().filter(|c| c.peer.uid() == peer.uid()).count();
            let netd = self.policy.netd_uid;
            let open_others = conns.iter().filter(|c| c.peer.uid() != netd).count();
            match authz::admit(&self.policy, peer.uid(), open_own, open_others) {
                Ok(one_reply) => conns.push(Conn {
                    stream,
                    peer,
                    frames: FrameDecoder::new(MAX_REQUEST),
                    deadline: deadline(one_reply),
                    one_reply,
                }),
                Err(r) => self.record(peer, "connect", json!({}), &Reply::refused(&r)),
            }
        }
        true
    }

    /// Reads what `c` sent and answers every whole request; false when the
    /// connection is done (closed, failed, framing lost, or its one reply).
    fn readable(&mut self, c: &mut Conn) -> bool {
        let mut buf = [0u8; 4096];
        match c.stream.read(&mut buf) {
            Ok(0) => return false,
            Ok(n) => c.frames.push(&buf[..n]),
            Err(e) => return matches!(e.kind(), WouldBlock | Interrupted),
        }
        loop {
            let reply = match c.frames.next_frame() {
                Ok(None) => break,
                Ok(Some(body)) => self.answer(c.peer, &body),
                Err(e) => {
                    // Framing is lost, so the connection cannot go on.
                    let reply = Reply::new(Err(ErrorCode::Malformed), e.to_string());
                    self.record(c.peer, "unknown", json!({ "error": e.to_string() }), &reply);
                    let _ = self.send(&c.stream, reply);
                    return false;
                }
            };
            if self.send(&c.stream, reply).is_err() || c.one_reply {
                return false;
            }
        }
        if !c.one_reply {
            c.deadline = deadline(!c.frames.is_empty());
        }
        true
    }

    fn answer(&mut self, peer: UnixCredentials, body: &[u8]) -> Reply {
        let (req, name, params) = request(body);
        let reply = match authz::decide(&self.policy, peer.uid(), req.as_ref()) {
            Err(r) => Reply::refused(&r),
            Ok(Action::OpenTun) => self.open_tun(),
            Ok(Action::AddRoute(net, within)) => self.change_route(net, true, within),
            Ok(Action::DelRoute(net, within)) => self.change_route(net, false, within),
            Ok(Action::Status) => {
                let counts = [self.counts[0], self.counts[1], self.audit.suppressed()];
                let (tun, routes) = (&self.opened, &self.policy.installed);
                let mut body = status_body(tun, routes, self.nat_active, counts);
                body.last_refusals = self.refusals.iter().cloned().collect();
                Reply::new(Ok(priv_response::Body::Status(body)), "ok".into())
            }
        };
        self.record(peer, name, params, &reply);
        reply
    }

    /// Carries out a route change authz granted. Re-adding a route privd
    /// holds (netd restarted and re-announces) is not an error; a route the
    /// kernel no longer has is no longer privd's.
    fn change_route(&mut self, net: IpNet, add: bool, within: IpNet) -> Reply {
        let r = self.net.route(self.ifindex, net, add);
        let errno = r.as_ref().err().map(|e| e.1);
        let ok = errno.is_none()
            || add && errno == Some(Errno::EEXIST) && self.policy.installed.contains(&net);
        if add && ok {
            self.policy.installed.insert(net);
        }
        if !add && (ok || matches!(errno, Some(Errno::ESRCH | Errno::ENOENT))) {
            self.policy.installed.remove(&net);
        }
        let prefix = net.to_string();
        let body = priv_response::Body::RouteChanged(RouteChange { prefix, add });
        match r {
            Err(e) if !ok => Reply::new(Err(ErrorCode::Failed), e.to_string()),
            _ => Reply::new(Ok(body), format!("inside allowed {within}")),
        }
    }

    /// Counts the outcome and writes its audit line, within the rate bound.
    fn record(&mut self, peer: UnixCredentials, req: &'static str, params: Value, reply: &Reply) {
        let (outcome, reason) = (reply.outcome(), reply.reason.as_str());
        self.counts[usize::from(outcome != Outcome::Granted)] += 1;
        let peer_pid = Some(peer.pid()).filter(|p| *p > 0);
        let rec = Record {
            peer_uid: peer.uid(),
            peer_pid,
            request: req,
            params,
            outcome,
            reason,
        };
        let line = audit::line(true, rec, SystemTime::now());
        if outcome != Outcome::Granted {
            // Kept even when the rate bound leaves the line out of the log.
            if self.refusals.len() == LAST_REFUSALS {
                self.refusals.pop_front();
            }
            self.refusals.push_back(line.clone());
        }
        match self.audit.admit(Instant::now()) {
            Some(0) => {}
            Some(n) => audit::log!("warn", "rate bound: {n} audit lines suppressed"),
            None => return,
        }
        audit::write_line(line);
    }

    /// Writes one reply frame without blocking; the TUN fd rides on the
    /// first sendmsg of a TunOpened reply so the client receives both in one
    /// recvmsg (SCM_RIGHTS gives the client its own reference). A reply fits
    /// the socket buffer of a client that reads: one that does not is hung
    /// up on.
    fn send(&self, stream: &UnixStream, reply: Reply) -> io::Result<()> {
        let tun = matches!(reply.body, Ok(priv_response::Body::TunOpened(_)));
        let mut fd = tun.then(|| self.tun_fd.as_raw_fd());
        let body = reply.body.unwrap_or_else(|code| {
            priv_response::Body::Refused(Refused {
                code: code as i32,
                detail: reply.reason,
            })
        });
        let frame = framing::encode(&PrivResponse { body: Some(body) });
        let mut sent = 0;
        while sent < frame.len() {
            sent += sd::send_fd(stream.as_raw_fd(), &frame[sent..], fd.take(), None)?;
        }
        Ok(())
    }

    fn open_tun(&self) -> Reply {
        let opened = priv_response::Body::TunOpened(self.opened.clone());
        Reply::new(Ok(opened), format!("fd for {}", self.opened.name))
    }
}

/// When a connection is hung up on: soon while a request is due (`hurry`),
/// else after netd's idle time.
fn deadline(hurry: bool) -> Instant {
    Instant::now() + if hurry { IO_TIMEOUT } else { NETD_IDLE }
}

/// The status reply; `counts` is granted, refused, audit lines suppressed.
fn status_body(
    tun: &TunOpened,
    routes: &BTreeSet<IpNet>,
    nat: bool,
    counts: [u64; 3],
) -> PrivStatus {
    PrivStatus {
        tun_name: tun.name.clone(),
        offloads: tun.offloads.clone(),
        routes: routes
            .iter()
            .take(STATUS_ROUTES)
            .map(ToString::to_string)
            .collect(),
        nat_active: nat,
        granted: counts[0],
        refused: counts[1],
        audit_suppressed: counts[2],
        forwarding: nat::forwarding_enabled(),
        last_refusals: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_largest_status_fits_the_clients_frame() {
        // As many of the longest routes as the status lists, and then some.
        let routes = (0..2 * STATUS_ROUTES as u128)
            .map(|i| IpNet::V6(ipnet::Ipv6Net::new((u128::MAX - i).into(), 128).unwrap()))
            .collect();
        let tun = TunOpened {
            name: "sapper-fifteen!".into(),
            ..Default::default()
        };
        let mut body = status_body(&tun, &routes, true, [u64::MAX; 3]);
        assert_eq!(body.routes.len(), STATUS_ROUTES);
        // Twice the longest line a refusal writes (peer text is clipped).
        body.last_refusals = vec!["x".repeat(1200); LAST_REFUSALS];
        let body = Some(priv_response::Body::Status(body));
        let len = framing::encode(&PrivResponse { body }).len();
        assert!(len <= framing::MAX_CONTROL_FRAME, "{len}");
    }
}
