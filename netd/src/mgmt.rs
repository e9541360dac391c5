//! The management socket: length-delimited management.proto requests from
//! sapperctl. Reads are open to anyone who can reach the socket (its mode and
//! group decide who can); changes need root, netd's own uid, or membership in
//! the operator group, judged from SO_PEERCRED.

use crate::node::{role_str, Node};
use anyhow::{Context, Result};
use sapper_shared::config::{parse_fingerprint, ConnectConfig, Transport};
use sapper_shared::framing::{self, HEADER_LEN, MAX_CONTROL_FRAME};
use sapper_shared::proto::control::{control_message::Body as Ctl, ControlMessage};
use sapper_shared::proto::data::Ping;
use sapper_shared::proto::management::{
    event, ConnectRequest, ListenRequest, PingResponse, RouteChangeRequest,
};
use sapper_shared::proto::management::{
    request::Body as Req, response::Body as Resp, Error, ErrorCode, Ok as MOk, PeersResponse,
    Request, Response, RouteInfo, RoutesResponse, StatsResponse, StatusResponse, TunInfo,
};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};

pub async fn serve(node: Arc<Node>, listener: UnixListener) {
    loop {
        let stream = tokio::select! {
            _ = node.shutdown.cancelled() => return,
            r = listener.accept() => match r {
                Ok((s, _)) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "management accept failed");
                    continue;
                }
            },
        };
        let node = node.clone();
        tokio::spawn(async move {
            if let Err(e) = client(node, stream).await {
                tracing::debug!(error = %format!("{e:#}"), "management client ended");
            }
        });
    }
}

async fn read_request(stream: &mut UnixStream) -> Result<Option<Request>> {
    let mut header = [0u8; HEADER_LEN];
    match stream.read_exact(&mut header).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e.into()),
    }
    let len = framing::body_len(header, MAX_CONTROL_FRAME)?;
    let mut body = vec![0u8; len];
    stream.read_exact(&mut body).await?;
    Ok(Some(framing::decode(&body)?))
}

fn error(id: u64, code: ErrorCode, message: impl Into<String>) -> Response {
    Response {
        id,
        body: Some(Resp::Error(Error {
            code: code as i32,
            message: message.into(),
        })),
    }
}

async fn client(node: Arc<Node>, mut stream: UnixStream) -> Result<()> {
    let cred = stream.peer_cred().context("SO_PEERCRED")?;
    let may_write = may_change(
        cred.uid(),
        cred.gid(),
        nix::unistd::getuid().as_raw(),
        node.operator_gid,
        supplementary_groups,
    );
    while let Some(req) = read_request(&mut stream).await? {
        let id = req.id;
        let Some(body) = req.body else {
            let r = error(id, ErrorCode::InvalidArgument, "empty request");
            stream.write_all(&framing::encode(&r)).await?;
            continue;
        };
        let is_write = matches!(
            body,
            Req::Connect(_)
                | Req::Listen(_)
                | Req::Disconnect(_)
                | Req::Shutdown(_)
                | Req::RouteChange(_)
                | Req::Hint(_)
        );
        if is_write && !may_write {
            tracing::warn!(sapper_event = "management_refused", outcome = "refused", uid = cred.uid(), peer_uid = cred.uid(), pid = ?cred.pid(), request = request_kind(&body), "refused a management change from a non-operator");
            let r = error(id, ErrorCode::PermissionDenied, denied_message(&node));
            stream.write_all(&framing::encode(&r)).await?;
            continue;
        }
        if let Req::Subscribe(_) = body {
            return subscribe(node, stream, id).await;
        }
        let resp = handle(&node, id, body).await;
        stream.write_all(&framing::encode(&resp)).await?;
    }
    Ok(())
}

async fn subscribe(node: Arc<Node>, mut stream: UnixStream, id: u64) -> Result<()> {
    let mut rx = node.events.subscribe();
    stream
        .write_all(&framing::encode(&Response {
            id,
            body: Some(Resp::Ok(MOk {})),
        }))
        .await?;
    let mut probe = [0u8; 1];
    loop {
        tokio::select! {
            ev = rx.recv() => match ev {
                Ok(ev) => stream.write_all(&framing::encode(&Response { id, body: Some(Resp::Event(ev)) })).await?,
                Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                    let ev = sapper_shared::proto::management::Event {
                        timestamp_ms: crate::node::unix_ms(),
                        body: Some(sapper_shared::proto::management::event::Body::Error(format!("{n} events dropped: subscriber too slow"))),
                    };
                    stream.write_all(&framing::encode(&Response { id, body: Some(Resp::Event(ev)) })).await?;
                }
                Err(_) => return Ok(()),
            },
            // The client hangs up to end the subscription.
            r = stream.read(&mut probe) => if matches!(r, Ok(0) | Err(_)) { return Ok(()) },
            _ = node.shutdown.cancelled() => return Ok(()),
        }
    }
}

/// Matches a peer by unique name prefix.
fn find_peer(node: &Node, prefix: &str) -> Result<Arc<crate::node::Peer>, (ErrorCode, String)> {
    let peers: Vec<_> = node
        .peers()
        .into_iter()
        .filter(|p| p.handshake.name.starts_with(prefix))
        .collect();
    if let Some(exact) = peers.iter().find(|p| p.handshake.name == prefix) {
        return Ok(exact.clone());
    }
    match peers.len() {
        0 => Err((ErrorCode::PeerNotFound, format!("no peer named {prefix:?}"))),
        1 => Ok(peers[0].clone()),
        n => Err((
            ErrorCode::PeerAmbiguous,
            format!("{n} peers match {prefix:?}"),
        )),
    }
}

async fn handle(node: &Arc<Node>, id: u64, body: Req) -> Response {
    let ok = |b| Response { id, body: Some(b) };
    match body {
        Req::Status(_) => ok(Resp::Status(StatusResponse {
            name: node.name.clone(),
            version: sapper_shared::SOFTWARE_VERSION.into(),
            role: node.role() as i32,
            uptime_s: node.started.elapsed().as_secs(),
            listeners: node.listeners.lock().map(|l| l.clone()).unwrap_or_default(),
            cert_fingerprint: node.fingerprint.clone(),
            tun: node.tun.as_ref().map(|t| TunInfo {
                name: t.name.clone(),
                addresses: t.addresses.clone(),
                mtu: t.mtu,
            }),
            peer_count: node.peers().len() as u32,
            role_reason: node
                .role_state
                .lock()
                .map(|st| {
                    format!(
                        "{}: {} [{}]",
                        role_str(st.role),
                        st.reason,
                        node.posture_summary()
                    )
                })
                .unwrap_or_default(),
            exit_mode: exit_mode(node).into(),
            exit: node.exit.get().map(|x| x.stats_proto()),
        })),
        Req::Peers(_) => ok(Resp::Peers(PeersResponse {
            peers: node
                .peers()
                .iter()
                .map(|p| {
                    let mut info = p.info();
                    info.exit_flows = node.exit.get().map(|x| x.peer_flows(p.id));
                    info
                })
                .collect(),
        })),
        Req::Stats(_) => {
            let peers = node.peers();
            let s = &node.stats;
            ok(Resp::Stats(StatsResponse {
                tun_packets_in: s.tun_in.load(Relaxed),
                tun_packets_out: s.tun_out.load(Relaxed),
                drops: s.drops.load(Relaxed)
                    + peers
                        .iter()
                        .map(|p| p.counters.drops.load(Relaxed))
                        .sum::<u64>(),
                handshake_failures: s.handshake_failures.load(Relaxed),
                bytes_in: peers
                    .iter()
                    .map(|p| p.counters.bytes_in.load(Relaxed))
                    .sum(),
                bytes_out: peers
                    .iter()
                    .map(|p| p.counters.bytes_out.load(Relaxed))
                    .sum(),
            }))
        }
        Req::Routes(_) => ok(Resp::Routes(RoutesResponse {
            routes: node
                .routes()
                .into_iter()
                .map(|(prefix, peer)| RouteInfo {
                    prefix: prefix.to_string(),
                    peer,
                })
                .collect(),
        })),
        Req::Disconnect(d) => match find_peer(node, &d.peer) {
            Ok(p) => {
                p.disconnect("disconnected by the operator");
                ok(Resp::Ok(MOk {}))
            }
            Err((code, msg)) => error(id, code, msg),
        },
        Req::Shutdown(_) => {
            tracing::info!("shutdown requested over the management socket");
            node.shutdown.cancel();
            ok(Resp::Ok(MOk {}))
        }
        Req::Ping(p) => match find_peer(node, &p.peer) {
            Ok(peer) => match ping(node, &peer).await {
                Ok(rtt_ms) => ok(Resp::Ping(PingResponse {
                    rtt_ms,
                    peer: peer.handshake.name.clone(),
                })),
                Err((code, msg)) => error(id, code, msg),
            },
            Err((code, msg)) => error(id, code, msg),
        },
        Req::Connect(c) => match connect(node, c).await {
            Ok(()) => ok(Resp::Ok(MOk {})),
            Err((code, msg)) => error(id, code, msg),
        },
        Req::Listen(l) => match listen(node, l) {
            Ok(()) => ok(Resp::Ok(MOk {})),
            Err((code, msg)) => error(id, code, msg),
        },
        Req::RouteChange(r) => match route_change(node, r).await {
            Ok(()) => ok(Resp::Ok(MOk {})),
            Err((code, msg)) => error(id, code, msg),
        },
        Req::Hint(h) => {
            node.set_hint(h.hint);
            ok(Resp::Ok(MOk {}))
        }
        Req::Subscribe(_) => error(id, ErrorCode::Internal, "subscribe handled elsewhere"),
    }
}

type Failure = (ErrorCode, String);

/// Who may change things: root, netd's own uid, and members of the operator
/// group (primary or supplementary). Everyone else who can reach the socket
/// may only read.
pub fn may_change(
    uid: u32,
    gid: u32,
    netd_uid: u32,
    operator_gid: Option<u32>,
    groups_of: impl Fn(u32, u32) -> Vec<u32>,
) -> bool {
    if uid == 0 || uid == netd_uid {
        return true;
    }
    match operator_gid {
        Some(op) => gid == op || groups_of(uid, gid).contains(&op),
        None => false,
    }
}

/// The account's groups from the group database. Reading it needs no
/// privilege, and it reflects what a login for that uid would get.
fn supplementary_groups(uid: u32, gid: u32) -> Vec<u32> {
    let Ok(Some(user)) = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid)) else {
        return vec![];
    };
    let Ok(name) = std::ffi::CString::new(user.name) else {
        return vec![];
    };
    nix::unistd::getgrouplist(&name, nix::unistd::Gid::from_raw(gid))
        .map(|g| g.into_iter().map(|g| g.as_raw()).collect())
        .unwrap_or_default()
}

fn denied_message(node: &Node) -> String {
    let group = node
        .cfg
        .operator_group
        .as_deref()
        .map(|g| format!(", or membership in group {g:?}"))
        .unwrap_or_default();
    format!("permission denied: changes need root, netd's own user{group}")
}

fn request_kind(body: &Req) -> &'static str {
    match body {
        Req::Status(_) => "status",
        Req::Peers(_) => "peers",
        Req::Stats(_) => "stats",
        Req::Routes(_) => "routes",
        Req::Ping(_) => "ping",
        Req::Connect(_) => "connect",
        Req::Listen(_) => "listen",
        Req::Disconnect(_) => "disconnect",
        Req::Shutdown(_) => "shutdown",
        Req::Subscribe(_) => "subscribe",
        Req::RouteChange(_) => "route-change",
        Req::Hint(_) => "hint",
    }
}

/// How traffic leaving the tunnel is realised here (StatusResponse.exit_mode).
fn exit_mode(node: &Node) -> &'static str {
    if node.exit.get().is_some() {
        "userspace"
    } else if node.tun.is_some() && node.role() == sapper_shared::proto::data::NodeRole::RoleExit {
        "kernel"
    } else {
        "none"
    }
}

/// A control-channel ping answered by the peer's control loop, so the RTT
/// includes the peer's daemon, not just its kernel.
async fn ping(node: &Node, peer: &crate::node::Peer) -> Result<f64, Failure> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let mut ts = node.now_ms();
    {
        let mut w = peer
            .ping_waiters
            .lock()
            .map_err(|_| (ErrorCode::Internal, "lock poisoned".to_string()))?;
        if w.len() >= crate::node::MAX_PING_WAITERS {
            return Err((ErrorCode::Internal, "too many pings in flight".into()));
        }
        // Timestamps double as ids; keep them unique among waiters.
        while w.contains_key(&ts) {
            ts += 1;
        }
        w.insert(ts, tx);
    }
    let started = std::time::Instant::now();
    let msg = ControlMessage {
        body: Some(Ctl::Ping(Ping { timestamp_ms: ts })),
    };
    let sent = peer.control.try_send(msg).is_ok();
    let answered = sent
        && matches!(
            tokio::time::timeout(Duration::from_secs(5), rx).await,
            Ok(Ok(()))
        );
    if let Ok(mut w) = peer.ping_waiters.lock() {
        w.remove(&ts);
    }
    if answered {
        Ok(started.elapsed().as_secs_f64() * 1000.0)
    } else {
        Err((
            ErrorCode::Timeout,
            format!("no pong from {} within 5 s", peer.handshake.name),
        ))
    }
}

fn transport(s: &str) -> Result<Transport, Failure> {
    match s {
        "quic" | "" => Ok(Transport::Quic),
        "ws" => Ok(Transport::Ws),
        other => Err((
            ErrorCode::InvalidArgument,
            format!("unknown transport {other:?}: use quic or ws"),
        )),
    }
}

/// Adds a peer to dial (and redial) and waits until it is connected or the
/// handshake timeout passes; the connector keeps trying either way.
async fn connect(node: &Arc<Node>, c: ConnectRequest) -> Result<(), Failure> {
    let bad = |m: String| (ErrorCode::InvalidArgument, m);
    let transport = transport(&c.transport)?;
    if parse_fingerprint(&c.fingerprint).is_none() {
        return Err(bad(
            "a certificate fingerprint (64 hex digits) is required to connect".into(),
        ));
    }
    let target = ConnectConfig {
        transport,
        address: c.address.clone(),
        server_name: (!c.server_name.is_empty()).then_some(c.server_name),
        fingerprint: Some(c.fingerprint),
        ca_file: None,
        ws_path: if c.ws_path.is_empty() {
            "/sapper".into()
        } else {
            c.ws_path
        },
    };
    let addr = crate::dial::resolve(&target.address)
        .await
        .map_err(|e| bad(format!("{e:#}")))?;
    let tls = crate::dial::client_tls(&target, node.cfg.tls.key_exchange())
        .map_err(|e| bad(format!("{e:#}")))?;
    let mut events = node.events.subscribe();
    tokio::spawn(crate::dial::connector(node.clone(), target, tls));
    let wait = Duration::from_millis(node.cfg.handshake_timeout_ms);
    let connected = tokio::time::timeout(wait, async {
        while let Ok(ev) = events.recv().await {
            if let Some(event::Body::PeerConnected(p)) = ev.body {
                if p.address == addr.to_string() {
                    return true;
                }
            }
        }
        false
    })
    .await;
    match connected {
        Ok(true) => Ok(()),
        _ => Err((
            ErrorCode::Timeout,
            format!("not connected to {addr} within {wait:?}; still retrying in the background (see netd's log)"),
        )),
    }
}

fn listen(node: &Arc<Node>, l: ListenRequest) -> Result<(), Failure> {
    let transport = transport(&l.transport)?;
    let addr: std::net::SocketAddr = l.address.parse().map_err(|_| {
        (
            ErrorCode::InvalidArgument,
            format!("{:?} is not an address:port", l.address),
        )
    })?;
    let failed = |e: anyhow::Error| (ErrorCode::Internal, format!("{e:#}"));
    let bind_err = |e: std::io::Error| {
        let hint = if e.kind() == std::io::ErrorKind::PermissionDenied {
            " (netd runs without privileges: use a port >= 1024 or configure the listener)"
        } else {
            ""
        };
        (ErrorCode::Internal, format!("binding {addr}: {e}{hint}"))
    };
    match transport {
        Transport::Quic => {
            let s = std::net::UdpSocket::bind(addr).map_err(bind_err)?;
            s.set_nonblocking(true).map_err(bind_err)?;
            crate::listen::quic(node, s, addr.to_string()).map_err(failed)
        }
        Transport::Ws => {
            let s = std::net::TcpListener::bind(addr).map_err(bind_err)?;
            s.set_nonblocking(true).map_err(bind_err)?;
            let path = if l.ws_path.is_empty() {
                "/sapper".into()
            } else {
                l.ws_path
            };
            crate::listen::ws(node, s, addr.to_string(), path).map_err(failed)
        }
    }
}

/// Asks privd to change a route on the TUN; privd checks its own allow-list.
async fn route_change(node: &Node, r: RouteChangeRequest) -> Result<(), Failure> {
    let prefix: ipnet::IpNet = r.prefix.parse().map_err(|_| {
        (
            ErrorCode::InvalidArgument,
            format!("{:?} is not a CIDR prefix", r.prefix),
        )
    })?;
    let Some(path) = node.cfg.privd_socket.clone() else {
        return Err((
            ErrorCode::PrivdRefused,
            "this node has no privd (no TUN)".into(),
        ));
    };
    let add = r.add;
    let res = tokio::task::spawn_blocking(move || {
        let mut c = sapper_privd_client::PrivdClient::connect(&path)?;
        c.route_change(&prefix.to_string(), add)
    })
    .await
    .map_err(|e| (ErrorCode::Internal, e.to_string()))?;
    res.map_err(|e| (ErrorCode::PrivdRefused, e.to_string()))?;
    let info = RouteInfo {
        prefix: prefix.to_string(),
        peer: String::new(),
    };
    node.emit(if add {
        event::Body::RouteAdded(info)
    } else {
        event::Body::RouteRemoved(info)
    });
    tracing::info!(%prefix, add, "route changed through privd");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn who_may_change() {
        let none = |_: u32, _: u32| vec![];
        let member = |_: u32, _: u32| vec![100, 4242];
        // root and netd itself always
        assert!(may_change(0, 0, 999, None, none));
        assert!(may_change(999, 999, 999, None, none));
        // others only through the operator group
        assert!(!may_change(1000, 1000, 999, None, member));
        assert!(!may_change(1000, 1000, 999, Some(4242), none));
        assert!(may_change(1000, 4242, 999, Some(4242), none));
        assert!(may_change(1000, 1000, 999, Some(4242), member));
        assert!(!may_change(1000, 1000, 999, Some(7), member));
    }
}
