//! The request loop: one task per connection, one audited decision per
//! request. A connection is identified only by SO_PEERCRED, which the kernel
//! fills in at connect time and the peer cannot forge. What is allowed is
//! decided in authz.rs; this file only carries it out.

use crate::audit::{self, Outcome, RateBound, Record};
use crate::authz::{self, Action, Caller, Refusal, Request, State};
use crate::nat;
use crate::netlink::{Netlink, NetlinkError};
use ipnet::IpNet;
use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
use sapper_shared::framing::{self, HEADER_LEN};
use sapper_shared::proto::privd::{
    priv_request, priv_response, ErrorCode, PrivRequest, PrivResponse, PrivStatus, RouteChange,
    TunOpened,
};
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::io::{self, IoSlice};
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt, Interest};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::Mutex;

/// Requests are tiny (the largest is a prefix string); anything bigger is
/// not a privd client.
pub const MAX_REQUEST: usize = 4 * 1024;
/// Deadline for every read and write: a whole request from anyone but
/// netd, the rest of a request whose header has arrived, a reply.
const IO_TIMEOUT: Duration = Duration::from_secs(5);
/// How long netd's own connection may sit idle between requests.
const NETD_IDLE: Duration = Duration::from_secs(60);
/// The status reply lists at most this many routes, so that it stays within
/// the client's 64 KiB frame (config validation keeps the count below it).
const STATUS_ROUTES: usize = sapper_shared::config::MAX_TUN_ROUTES;

/// Everything privd holds. The TUN facts come from the config only.
pub struct Privd {
    /// Interface name as the kernel reported it.
    pub tun_name: String,
    /// Configured MTU.
    pub tun_mtu: u32,
    /// Configured addresses.
    pub tun_addresses: Vec<IpNet>,
    /// Kernel interface index of the TUN.
    pub ifindex: u32,
    /// privd's own TUN fd; callers get duplicates.
    pub tun_fd: OwnedFd,
    /// Prefixes netd may route into the TUN.
    pub allowed_routes: Vec<IpNet>,
    /// privd.tun.max_routes.
    pub max_routes: usize,
    /// The uid netd runs as.
    pub netd_uid: u32,
    /// The rtnetlink handle.
    pub net: Netlink,
    /// Routes privd installed. The lock also serialises requests so that
    /// the set, the policy's view of it and the kernel agree.
    pub routes: Mutex<BTreeSet<IpNet>>,
    /// Routes from privd.tun.routes: the operator's.
    pub configured_routes: BTreeSet<IpNet>,
    /// True when the nft table was installed at start.
    pub nat_active: bool,
    /// Open connections per uid.
    pub conns: std::sync::Mutex<BTreeMap<u32, usize>>,
    /// The audit rate bound.
    pub audit: std::sync::Mutex<RateBound>,
    /// Requests granted since start.
    pub granted: AtomicU64,
    /// Requests refused or failed since start.
    pub refused: AtomicU64,
}

#[derive(Clone, Copy)]
struct Peer {
    uid: u32,
    pid: Option<i32>,
}

/// What a handler decided, before it is audited and sent.
struct Reply {
    body: priv_response::Body,
    fd: Option<OwnedFd>,
    outcome: Outcome,
    reason: String,
}

impl Reply {
    fn granted(body: priv_response::Body, reason: impl Into<String>) -> Self {
        Reply {
            body,
            fd: None,
            outcome: Outcome::Granted,
            reason: reason.into(),
        }
    }

    fn refused(r: &Refusal) -> Self {
        Self::not_granted(Outcome::Refused, r.code(), r.to_string())
    }

    fn failed(reason: impl Into<String>) -> Self {
        Self::not_granted(Outcome::Failed, ErrorCode::Failed, reason.into())
    }

    fn not_granted(outcome: Outcome, code: ErrorCode, reason: String) -> Self {
        let body = priv_response::Body::Refused(sapper_shared::proto::privd::Refusal {
            code: code as i32,
            detail: reason.clone(),
        });
        Reply {
            body,
            fd: None,
            outcome,
            reason,
        }
    }
}

fn request(body: &[u8]) -> (Request, Value) {
    let req = framing::decode::<PrivRequest>(body)
        .ok()
        .and_then(|r| r.body);
    match req {
        Some(priv_request::Body::OpenTun(_)) => (Request::OpenTun, json!({})),
        Some(priv_request::Body::RouteChange(rc)) => {
            let params = json!({ "prefix": audit::clip(&rc.prefix), "add": rc.add });
            let (prefix, add) = (rc.prefix, rc.add);
            (Request::RouteChange { prefix, add }, params)
        }
        Some(priv_request::Body::Status(_)) => (Request::Status, json!({})),
        None => (Request::Unknown, json!({ "len": body.len() })),
    }
}

/// Gives a connection slot back when its task ends.
struct Slot {
    privd: Arc<Privd>,
    uid: u32,
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Ok(mut conns) = self.privd.conns.lock() {
            if let Some(n) = conns.get_mut(&self.uid) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    conns.remove(&self.uid);
                }
            }
        }
    }
}

impl Privd {
    fn state<'a>(&'a self, installed: &'a BTreeSet<IpNet>) -> State<'a> {
        State {
            netd_uid: self.netd_uid,
            allowed: &self.allowed_routes,
            configured: &self.configured_routes,
            installed,
            max_routes: self.max_routes,
        }
    }

    /// Accepts connections until `shutdown` resolves.
    pub async fn serve(
        self: Arc<Self>,
        listener: UnixListener,
        shutdown: impl Future<Output = ()>,
    ) -> io::Result<()> {
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                _ = &mut shutdown => return Ok(()),
                accepted = listener.accept() => {
                    let (stream, _) = match accepted {
                        Ok(s) => s,
                        Err(e) => {
                            // EMFILE and friends are transient; back off
                            // instead of spinning or exiting.
                            audit::log("warn", &format!("accept: {e}"));
                            tokio::time::sleep(Duration::from_millis(100)).await;
                            continue;
                        }
                    };
                    if let Some((slot, one_reply)) = self.admit(&stream).await {
                        tokio::spawn(async move {
                            slot.privd.clone().connection(stream, one_reply, slot.uid).await;
                            drop(slot);
                        });
                    }
                }
            }
        }
    }

    /// Asks the policy for a slot; a refused connection is audited and
    /// closed at once.
    async fn admit(self: &Arc<Self>, stream: &UnixStream) -> Option<(Slot, bool)> {
        let peer = match stream.peer_cred() {
            Ok(c) => Peer {
                uid: c.uid(),
                pid: c.pid(),
            },
            Err(e) => {
                audit::log("warn", &format!("SO_PEERCRED failed, closing: {e}"));
                return None;
            }
        };
        let decision = {
            let mut conns = self.conns.lock().ok()?;
            let caller = Caller {
                uid: peer.uid,
                open_own: conns.get(&peer.uid).copied().unwrap_or(0),
                open_others: conns
                    .iter()
                    .filter(|(uid, _)| **uid != self.netd_uid)
                    .map(|(_, n)| n)
                    .sum(),
            };
            let empty = BTreeSet::new();
            let d = authz::decide(&self.state(&empty), &caller, &Request::Connect);
            if d.is_ok() {
                *conns.entry(peer.uid).or_insert(0) += 1;
            }
            d
        };
        match decision {
            Ok(Action::Admit { one_reply }) => Some((
                Slot {
                    privd: self.clone(),
                    uid: peer.uid,
                },
                one_reply,
            )),
            Ok(_) => None,
            Err(r) => {
                self.record(peer, "connect", json!({}), &Reply::refused(&r));
                None
            }
        }
    }

    async fn connection(&self, mut stream: UnixStream, one_reply: bool, uid: u32) {
        let peer = Peer {
            uid,
            pid: stream.peer_cred().ok().and_then(|c| c.pid()),
        };
        let idle = if one_reply { IO_TIMEOUT } else { NETD_IDLE };
        loop {
            let mut header = [0u8; HEADER_LEN];
            match tokio::time::timeout(idle, stream.read_exact(&mut header)).await {
                Ok(Ok(_)) => {}
                _ => return,
            }
            let len = match framing::body_len(header, MAX_REQUEST) {
                Ok(len) => len,
                Err(e) => {
                    // Framing is lost, so the connection cannot go on.
                    let reply =
                        Reply::not_granted(Outcome::Refused, ErrorCode::Malformed, e.to_string());
                    let params = json!({ "len": u32::from_be_bytes(header) });
                    self.record(peer, "unknown", params, &reply);
                    let _ = self.send(&mut stream, reply).await;
                    return;
                }
            };
            let mut body = vec![0u8; len];
            match tokio::time::timeout(IO_TIMEOUT, stream.read_exact(&mut body)).await {
                Ok(Ok(_)) => {}
                _ => return,
            }
            let reply = self.answer(peer, &body).await;
            if self.send(&mut stream, reply).await.is_err() || one_reply {
                return;
            }
        }
    }

    async fn answer(&self, peer: Peer, body: &[u8]) -> Reply {
        let (req, params) = request(body);
        let caller = Caller {
            uid: peer.uid,
            open_own: 0,
            open_others: 0,
        };
        let mut routes = self.routes.lock().await;
        let reply = match authz::decide(&self.state(&routes), &caller, &req) {
            Err(r) => Reply::refused(&r),
            Ok(Action::OpenTun) => self.open_tun(),
            Ok(Action::AddRoute(net, within)) => {
                match self.net.add_route(self.ifindex, net).await {
                    // Re-adding a route privd already holds (netd restarted
                    // and re-announces) is not an error.
                    Err(NetlinkError::Exists(_)) if routes.contains(&net) => Ok(()),
                    r => r.map(|()| {
                        routes.insert(net);
                    }),
                }
                .map_or_else(
                    |e| Reply::failed(e.to_string()),
                    |()| route_ok(net, true, within),
                )
            }
            Ok(Action::DelRoute(net, within)) => {
                let r = self.net.del_route(self.ifindex, net).await;
                if matches!(r, Ok(()) | Err(NetlinkError::NotFound(_))) {
                    routes.remove(&net);
                }
                r.map_or_else(
                    |e| Reply::failed(e.to_string()),
                    |()| route_ok(net, false, within),
                )
            }
            Ok(Action::Status) => self.status(&routes),
            // decide() admits only for Request::Connect.
            Ok(Action::Admit { .. }) => Reply::refused(&Refusal::Malformed),
        };
        drop(routes);
        self.record(peer, req.as_str(), params, &reply);
        reply
    }

    fn record(&self, peer: Peer, request: &'static str, params: Value, reply: &Reply) {
        let counter = match reply.outcome {
            Outcome::Granted => &self.granted,
            Outcome::Refused | Outcome::Failed => &self.refused,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        let admitted = self
            .audit
            .lock()
            .ok()
            .and_then(|mut b| b.admit(Instant::now()));
        match admitted {
            None => {}
            Some(0) => {}
            Some(n) => audit::log("warn", &format!("rate bound: {n} audit lines suppressed")),
        }
        if admitted.is_some() {
            audit::emit(&Record {
                peer_uid: peer.uid,
                peer_pid: peer.pid,
                request,
                params,
                outcome: reply.outcome,
                reason: &reply.reason,
            });
        }
    }

    fn open_tun(&self) -> Reply {
        match self.tun_fd.try_clone() {
            Ok(fd) => Reply {
                fd: Some(fd),
                ..Reply::granted(
                    priv_response::Body::TunOpened(TunOpened {
                        name: self.tun_name.clone(),
                        mtu: self.tun_mtu,
                        addresses: self.tun_addresses.iter().map(ToString::to_string).collect(),
                    }),
                    format!("fd for {}", self.tun_name),
                )
            },
            Err(e) => Reply::failed(format!("cannot duplicate TUN fd: {e}")),
        }
    }

    fn status(&self, routes: &BTreeSet<IpNet>) -> Reply {
        let suppressed = self.audit.lock().map_or(0, |b| b.suppressed());
        Reply::granted(
            priv_response::Body::Status(status_body(
                &self.tun_name,
                routes,
                self.nat_active,
                [
                    self.granted.load(Ordering::Relaxed),
                    self.refused.load(Ordering::Relaxed),
                    suppressed,
                ],
            )),
            "ok",
        )
    }

    /// Writes one reply frame; a TUN fd rides on the same sendmsg as the
    /// frame's first bytes so the client receives both in one recvmsg.
    async fn send(&self, stream: &mut UnixStream, reply: Reply) -> io::Result<()> {
        let frame = framing::encode(&PrivResponse {
            body: Some(reply.body),
        });
        let mut sent = 0;
        if let Some(fd) = reply.fd {
            let raw_sock = stream.as_raw_fd();
            let fds = [fd.as_raw_fd()];
            let io = stream.async_io(Interest::WRITABLE, || {
                let iov = [IoSlice::new(&frame)];
                let cmsg = [ControlMessage::ScmRights(&fds)];
                sendmsg::<()>(raw_sock, &iov, &cmsg, MsgFlags::MSG_NOSIGNAL, None)
                    .map_err(io::Error::from)
            });
            sent = tokio::time::timeout(IO_TIMEOUT, io)
                .await
                .map_err(|_| io::Error::from(io::ErrorKind::TimedOut))??;
            // The kernel took its own reference; ours closes here.
            drop(fd);
        }
        let rest = frame.get(sent..).unwrap_or_default();
        tokio::time::timeout(IO_TIMEOUT, stream.write_all(rest))
            .await
            .map_err(|_| io::Error::from(io::ErrorKind::TimedOut))?
    }
}

fn route_ok(net: IpNet, add: bool, within: IpNet) -> Reply {
    Reply::granted(
        priv_response::Body::RouteChanged(RouteChange {
            prefix: net.to_string(),
            add,
        }),
        format!("inside allowed {within}"),
    )
}

/// The status reply; `counts` is granted, refused, audit lines suppressed.
fn status_body(tun: &str, routes: &BTreeSet<IpNet>, nat: bool, counts: [u64; 3]) -> PrivStatus {
    PrivStatus {
        tun_name: tun.to_string(),
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
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_largest_status_fits_the_clients_frame() {
        // As many of the longest routes as the status lists, and then some.
        let routes = (0..2 * super::STATUS_ROUTES as u128)
            .map(|i| ipnet::IpNet::V6(ipnet::Ipv6Net::new((u128::MAX - i).into(), 128).unwrap()))
            .collect();
        let body = super::status_body("sapper-fifteen!", &routes, true, [u64::MAX; 3]);
        assert_eq!(body.routes.len(), super::STATUS_ROUTES);
        let frame = sapper_shared::framing::encode(&super::PrivResponse {
            body: Some(super::priv_response::Body::Status(body)),
        });
        assert!(
            frame.len() <= sapper_shared::framing::MAX_CONTROL_FRAME,
            "{}",
            frame.len()
        );
    }
}
