//! The request loop: one task per connection, one audited decision per
//! request. A connection is identified only by SO_PEERCRED, which the kernel
//! fills in at connect time and the peer cannot forge.

use crate::audit::{self, Outcome, Record};
use crate::authz::{self, AccessPolicy, Decision, Denial, RequestKind};
use crate::nat;
use crate::netlink::{Netlink, NetlinkError};
use ipnet::IpNet;
use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
use sapper_shared::framing::{self, HEADER_LEN};
use sapper_shared::proto::privd::{
    priv_request, priv_response, PrivRequest, PrivResponse, PrivStatus, RouteChange, TunOpened,
};
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::future::Future;
use std::io::{self, IoSlice};
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt, Interest};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{Mutex, Semaphore};

/// Requests are tiny (the largest is a prefix string); anything bigger is
/// not a privd client.
pub const MAX_REQUEST: usize = 4 * 1024;
/// Time allowed to finish reading a request once its header has arrived,
/// and to write a reply. Idle connections are fine: netd keeps one open.
const IO_TIMEOUT: Duration = Duration::from_secs(5);
/// Bounds the fds a misbehaving member of the socket group can pin.
const MAX_CONNECTIONS: usize = 64;

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
    /// Who may ask.
    pub policy: AccessPolicy,
    /// The rtnetlink handle.
    pub net: Netlink,
    /// Routes privd installed. The lock also serialises route changes so
    /// the set and the kernel agree.
    pub routes: Mutex<BTreeSet<IpNet>>,
    /// Routes from privd.tun.routes: the operator's, never netd's to add or
    /// remove, so a netd that leaves the entry role cannot take them away.
    pub configured_routes: BTreeSet<IpNet>,
    /// True when the nft table was installed at start.
    pub nat_active: bool,
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

    fn not_granted(outcome: Outcome, reason: impl Into<String>) -> Self {
        let reason = reason.into();
        Reply {
            body: priv_response::Body::Error(reason.clone()),
            fd: None,
            outcome,
            reason,
        }
    }
}

fn describe(req: &Option<priv_request::Body>, body_len: usize) -> (RequestKind, Value) {
    match req {
        Some(priv_request::Body::OpenTun(_)) => (RequestKind::OpenTun, json!({})),
        Some(priv_request::Body::RouteChange(rc)) => (
            RequestKind::RouteChange,
            json!({ "prefix": audit::clip(&rc.prefix), "add": rc.add }),
        ),
        Some(priv_request::Body::Status(_)) => (RequestKind::Status, json!({})),
        None => (RequestKind::Unknown, json!({ "len": body_len })),
    }
}

impl Privd {
    /// Accepts connections until `shutdown` resolves.
    pub async fn serve(
        self: Arc<Self>,
        listener: UnixListener,
        shutdown: impl Future<Output = ()>,
    ) -> io::Result<()> {
        let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
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
                    let Ok(permit) = slots.clone().try_acquire_owned() else {
                        audit::log("warn", "too many connections; dropping a new one");
                        continue;
                    };
                    let me = self.clone();
                    tokio::spawn(async move {
                        me.connection(stream).await;
                        drop(permit);
                    });
                }
            }
        }
    }

    async fn connection(&self, mut stream: UnixStream) {
        let peer = match stream.peer_cred() {
            Ok(c) => Peer {
                uid: c.uid(),
                pid: c.pid(),
            },
            Err(e) => {
                audit::log("warn", &format!("SO_PEERCRED failed, closing: {e}"));
                return;
            }
        };
        loop {
            let mut header = [0u8; HEADER_LEN];
            if stream.read_exact(&mut header).await.is_err() {
                return;
            }
            let len = match framing::body_len(header, MAX_REQUEST) {
                Ok(len) => len,
                Err(e) => {
                    // Framing is lost, so the connection cannot go on.
                    let reply = Reply::not_granted(Outcome::Refused, e.to_string());
                    let params = json!({ "len": u32::from_be_bytes(header) });
                    self.record(peer, RequestKind::Unknown, params, &reply);
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
            if self.send(&mut stream, reply).await.is_err() {
                return;
            }
        }
    }

    async fn answer(&self, peer: Peer, body: &[u8]) -> Reply {
        let req = framing::decode::<PrivRequest>(body)
            .ok()
            .and_then(|r| r.body);
        let (kind, params) = describe(&req, body.len());
        let reply = match (authz::authorize(kind, peer.uid, &self.policy), req) {
            (Decision::Deny(d), _) => Reply::not_granted(Outcome::Refused, d.message()),
            (Decision::Allow, Some(priv_request::Body::OpenTun(_))) => self.open_tun(),
            (Decision::Allow, Some(priv_request::Body::RouteChange(rc))) => {
                self.route_change(rc).await
            }
            (Decision::Allow, Some(priv_request::Body::Status(_))) => self.status().await,
            // authorize() never allows Unknown; kept total rather than panic.
            (Decision::Allow, None) => {
                Reply::not_granted(Outcome::Refused, Denial::Malformed.message())
            }
        };
        self.record(peer, kind, params, &reply);
        reply
    }

    fn record(&self, peer: Peer, kind: RequestKind, params: Value, reply: &Reply) {
        let counter = match reply.outcome {
            Outcome::Granted => &self.granted,
            Outcome::Refused | Outcome::Failed => &self.refused,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        audit::emit(&Record {
            peer_uid: peer.uid,
            peer_pid: peer.pid,
            request: kind.as_str(),
            params,
            outcome: reply.outcome,
            reason: &reply.reason,
        });
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
            Err(e) => Reply::not_granted(Outcome::Failed, format!("cannot duplicate TUN fd: {e}")),
        }
    }

    async fn route_change(&self, rc: RouteChange) -> Reply {
        let (net, within) = match authz::check_route(&rc.prefix, &self.allowed_routes) {
            Ok(ok) => ok,
            Err(e) => return Reply::not_granted(Outcome::Refused, e.to_string()),
        };
        if self.configured_routes.contains(&net) {
            return Reply::not_granted(
                Outcome::Refused,
                format!("{net} is configured in privd.tun.routes; privd keeps it"),
            );
        }
        let mut routes = self.routes.lock().await;
        let result = if rc.add {
            match self.net.add_route(self.ifindex, net).await {
                // Re-adding a route privd already holds (netd restarted and
                // re-announces) is not an error.
                Err(NetlinkError::Exists(_)) if routes.contains(&net) => Ok(()),
                r => r.map(|()| {
                    routes.insert(net);
                }),
            }
        } else if !routes.contains(&net) {
            // Only routes privd added may be removed, so netd cannot delete
            // the interface's own prefix routes or anyone else's.
            return Reply::not_granted(
                Outcome::Refused,
                format!("{net} is not a route privd installed"),
            );
        } else {
            let r = self.net.del_route(self.ifindex, net).await;
            if matches!(r, Ok(()) | Err(NetlinkError::NotFound(_))) {
                routes.remove(&net);
            }
            r
        };
        match result {
            Ok(()) => Reply::granted(
                priv_response::Body::RouteChanged(RouteChange {
                    prefix: net.to_string(),
                    add: rc.add,
                }),
                format!("inside allowed {within}"),
            ),
            Err(e) => Reply::not_granted(Outcome::Failed, e.to_string()),
        }
    }

    async fn status(&self) -> Reply {
        let routes = self
            .routes
            .lock()
            .await
            .iter()
            .map(ToString::to_string)
            .collect();
        Reply::granted(
            priv_response::Body::Status(PrivStatus {
                tun_name: self.tun_name.clone(),
                routes,
                nat_active: self.nat_active,
                granted: self.granted.load(Ordering::Relaxed),
                refused: self.refused.load(Ordering::Relaxed),
                forwarding: nat::forwarding_enabled(),
            }),
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
