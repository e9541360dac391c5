//! The management socket: length-delimited management.proto requests from
//! sapperctl. Reads are open to anyone who can reach the socket (its mode and
//! group decide who can); changes need root, netd's own uid, or membership in
//! the operator group, judged from SO_PEERCRED. Answers come from the
//! control core (through the driver) and the data path's counters.

use crate::inputs::{Input, Links, PingFailure};
use crate::node::Node;
use crate::target::{Dial, Target};
use anyhow::{Context, Result};
use sapper_control::{LinkView, OperatorError};
use sapper_shared::config::{raw, Transport, WsPath};
use sapper_shared::framing::{self, FrameDecoder, MAX_CONTROL_FRAME};
use sapper_shared::proto::data::NodeRole;
use sapper_shared::proto::management::{
    event, ConnectRequest, ListenRequest, PeerInfo, PingResponse, RouteChangeRequest,
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

/// Management connections open at once; more wait in the listen backlog.
const MAX_CLIENTS: usize = 32;
/// First and longest pause after a failed accept (EMFILE and the like).
const ACCEPT_BACKOFF: (Duration, Duration) = (Duration::from_millis(10), Duration::from_secs(1));

pub async fn serve(node: Arc<Node>, listener: UnixListener) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CLIENTS));
    let mut backoff = ACCEPT_BACKOFF.0;
    loop {
        // A slot first: at the cap, new clients wait in the backlog.
        let permit = tokio::select! {
            _ = node.shutdown.cancelled() => return,
            p = slots.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => return,
            },
        };
        let stream = tokio::select! {
            _ = node.shutdown.cancelled() => return,
            r = listener.accept() => match r {
                Ok((s, _)) => {
                    backoff = ACCEPT_BACKOFF.0;
                    s
                }
                Err(e) => {
                    // Never straight back into accept: on EMFILE it would
                    // fail again at once and spin.
                    tracing::warn!(error = %e, pause_ms = backoff.as_millis() as u64, "management accept failed");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(ACCEPT_BACKOFF.1);
                    continue;
                }
            },
        };
        let node = node.clone();
        tokio::spawn(async move {
            if let Err(e) = client(node, stream).await {
                tracing::debug!(error = %format!("{e:#}"), "management client ended");
            }
            drop(permit);
        });
    }
}

/// Reads one request within `deadline` (`netd.management_read_timeout_ms`,
/// how long a client may sit between requests and take over one); `None`
/// at a clean end of stream between requests.
async fn read_request(
    stream: &mut UnixStream,
    decoder: &mut FrameDecoder,
    deadline: Duration,
) -> Result<Option<Request>> {
    tokio::time::timeout(deadline, read_frame(stream, decoder))
        .await
        .context("no complete request within the read deadline")?
}

/// Reads one request through the shared frame decoder.
async fn read_frame(
    stream: &mut UnixStream,
    decoder: &mut FrameDecoder,
) -> Result<Option<Request>> {
    let mut buf = [0u8; 4096];
    loop {
        if let Some(body) = decoder.next_frame()? {
            return Ok(Some(framing::decode(&body)?));
        }
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            if decoder.is_empty() {
                return Ok(None);
            }
            anyhow::bail!("connection closed inside a request");
        }
        decoder.push(&buf[..n]);
    }
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

/// Whether a request only reads or changes something.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Access {
    Read,
    Change,
}

/// The one decision of who may send what: every request kind is listed, so
/// a new kind cannot be open to everyone by default.
fn access(body: &Req) -> Access {
    match body {
        Req::Status(_)
        | Req::Peers(_)
        | Req::Stats(_)
        | Req::Routes(_)
        | Req::Ping(_)
        | Req::Subscribe(_) => Access::Read,
        Req::Connect(_)
        | Req::Listen(_)
        | Req::Disconnect(_)
        | Req::Shutdown(_)
        | Req::RouteChange(_)
        | Req::Hint(_) => Access::Change,
    }
}

async fn client(node: Arc<Node>, mut stream: UnixStream) -> Result<()> {
    let cred = stream.peer_cred().context("SO_PEERCRED")?;
    let groups = peer_groups(&stream);
    let may_write = may_change(
        cred.uid(),
        cred.gid(),
        nix::unistd::getuid().as_raw(),
        node.operator_gid,
        &groups,
    );
    let mut decoder = FrameDecoder::new(MAX_CONTROL_FRAME);
    let deadline = node.cfg.management_read_timeout.millis();
    while let Some(req) = read_request(&mut stream, &mut decoder, deadline).await? {
        let id = req.id;
        let Some(body) = req.body else {
            let r = error(id, ErrorCode::InvalidArgument, "empty request");
            stream.write_all(&framing::encode(&r)).await?;
            continue;
        };
        if access(&body) == Access::Change && !may_write {
            tracing::warn!(sapper_event = "management_refused", outcome = "refused", uid = cred.uid(), peer_uid = cred.uid(), pid = ?cred.pid(), request = request_kind(&body), "refused a management change from a non-operator");
            let r = error(id, ErrorCode::PermissionDenied, denied_message(&node));
            stream.write_all(&framing::encode(&r)).await?;
            continue;
        }
        if let Req::Subscribe(_) = body {
            return subscribe(node, stream, id).await;
        }
        let resp = match handle(&node, id, body).await {
            Ok(r) => r,
            Err((code, msg)) => error(id, code, msg),
        };
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
                        body: Some(event::Body::Error(format!("{n} events dropped: subscriber too slow"))),
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

type Failure = (ErrorCode, String);

fn internal(e: anyhow::Error) -> Failure {
    (ErrorCode::Internal, format!("{e:#}"))
}

fn operator(e: OperatorError) -> Failure {
    let code = match e {
        OperatorError::NotFound(_) => ErrorCode::PeerNotFound,
        OperatorError::Ambiguous { .. } => ErrorCode::PeerAmbiguous,
        OperatorError::TooManyPings => ErrorCode::Internal,
    };
    (code, e.to_string())
}

/// Bytes of entries one page carries: with the response's own fields it
/// stays well inside one management frame.
const PAGE_BYTES: usize = framing::MAX_CONTROL_FRAME / 2;

/// The entries from `offset` on that fit one page (at least one, so a
/// client always makes progress; a single entry is bounded by the protocol).
fn page<T: prost::Message>(items: impl IntoIterator<Item = T>, offset: usize) -> Vec<T> {
    let mut out = Vec::new();
    let mut bytes = 0;
    for item in items.into_iter().skip(offset) {
        let len = item.encoded_len() + 4;
        if !out.is_empty() && bytes + len > PAGE_BYTES {
            break;
        }
        bytes += len;
        out.push(item);
    }
    out
}

/// A link's `peers` entry: the core's view plus the data path's counters.
fn peer_info(node: &Node, v: LinkView, links: &Links) -> PeerInfo {
    let mut info = v.info;
    if let Some(l) = links.get(&v.id) {
        let c = &l.data.counters;
        info.bytes_in = c.bytes_in.load(Relaxed);
        info.bytes_out = c.bytes_out.load(Relaxed);
        info.packets_in = c.packets_in.load(Relaxed);
        info.packets_out = c.packets_out.load(Relaxed);
        info.drops = c.drops.load(Relaxed);
        info.source_drops = c.source_drops.load(Relaxed);
        info.control_drops += c.control_drops.load(Relaxed);
        info.super_packet_drops = c.super_drops.load(Relaxed);
        info.tls = Some(sapper_shared::proto::management::LinkTls {
            version: l.data.tls.version.clone(),
            cipher_suite: l.data.tls.cipher_suite.clone(),
            kx_group: l.data.tls.kx_group.clone(),
        });
    }
    info.exit_flows = node.exit.as_ref().map(|x| x.peer_flows(v.id.0));
    info
}

async fn handle(node: &Arc<Node>, id: u64, body: Req) -> Result<Response, Failure> {
    let ok = |b| Ok(Response { id, body: Some(b) });
    match body {
        Req::Status(_) => {
            let (st, announced) = node
                .inspect(|core, _| (core.status(), core.config().announce_routes.clone()))
                .await
                .map_err(internal)?;
            ok(Resp::Status(StatusResponse {
                name: node.name.clone(),
                version: sapper_shared::SOFTWARE_VERSION.into(),
                role: st.role as i32,
                uptime_s: node.started.elapsed().as_secs(),
                listeners: st.listeners,
                cert_fingerprint: node.fingerprint.clone(),
                tun: node.data.tun.as_ref().map(|t| TunInfo {
                    name: t.name.clone(),
                    addresses: t.addresses.clone(),
                    mtu: t.mtu,
                    offloads: t.vnet.offloads.clone(),
                }),
                peer_count: st.peer_count,
                role_reason: st.role_reason,
                exit_mode: exit_mode(node, st.role).into(),
                exit: node.exit.as_ref().map(|x| x.stats_proto()),
                landlock: crate::fs_sandbox::recorded().into(),
                pid: std::process::id(),
                announced_routes: announced.iter().map(ToString::to_string).collect(),
                announce_source: match node.announce_from_interfaces.load(Relaxed) {
                    true => "interfaces",
                    false => "config",
                }
                .into(),
            }))
        }
        Req::Peers(r) => {
            let n = node.clone();
            let peers = node
                .inspect(move |core, links| {
                    core.links()
                        .into_iter()
                        .map(|v| peer_info(&n, v, links))
                        .collect::<Vec<_>>()
                })
                .await
                .map_err(internal)?;
            let total = peers.len() as u32;
            let peers = page(peers, r.offset as usize);
            ok(Resp::Peers(PeersResponse { peers, total }))
        }
        Req::Stats(_) => {
            let (bytes_in, bytes_out, drops) = node
                .inspect(|_, links| {
                    links.values().fold((0, 0, 0), |(i, o, d), l| {
                        let c = &l.data.counters;
                        (
                            i + c.bytes_in.load(Relaxed),
                            o + c.bytes_out.load(Relaxed),
                            d + c.drops.load(Relaxed),
                        )
                    })
                })
                .await
                .map_err(internal)?;
            let s = &node.data.stats;
            ok(Resp::Stats(StatsResponse {
                tun_packets_in: s.tun_in.load(Relaxed),
                tun_packets_out: s.tun_out.load(Relaxed),
                drops: s.drops.load(Relaxed) + drops,
                handshake_failures: s.handshake_failures.load(Relaxed),
                bytes_in,
                bytes_out,
                tun_super_packets_in: s.tun_super_in.load(Relaxed),
                tun_super_packets_out: s.tun_super_out.load(Relaxed),
                super_packet_drops: s
                    .super_drops
                    .snapshot()
                    .filter(|(_, n)| *n > 0)
                    .map(|(r, n)| (r.to_string(), n))
                    .collect(),
            }))
        }
        Req::Routes(r) => {
            let routes = node
                .inspect(|core, _| core.routes())
                .await
                .map_err(internal)?;
            let total = routes.len() as u32;
            let routes = routes
                .into_iter()
                .skip(r.offset as usize)
                .map(|(prefix, peer)| RouteInfo {
                    prefix: prefix.to_string(),
                    peer,
                });
            ok(Resp::Routes(RoutesResponse {
                routes: page(routes, 0),
                total,
            }))
        }
        Req::Disconnect(d) => {
            let stay = d.stay;
            let (link, address, outbound) = node
                .inspect(move |core, _| {
                    let link = core.find_link(&d.peer)?;
                    let view = core.link(link);
                    Ok((
                        link,
                        view.as_ref()
                            .map(|v| v.info.address.clone())
                            .unwrap_or_default(),
                        view.is_some_and(|v| v.info.outbound),
                    ))
                })
                .await
                .map_err(internal)?
                .map_err(operator)?;
            if stay {
                if !outbound {
                    return Err((
                        ErrorCode::InvalidArgument,
                        format!("the peer at {address} dialled this node; --stay stops only this node's own connect entries (remove the peer's, or its PSK)"),
                    ));
                }
                if crate::reload::stay_away(&address).await == 0 {
                    return Err((
                        ErrorCode::PeerNotFound,
                        format!("no connect entry of this node dials {address}"),
                    ));
                }
            }
            let reason = if stay {
                "disconnected by the operator (stays disconnected)"
            } else {
                "disconnected by the operator"
            };
            node.inspect(move |core, _| core.disconnect(link, reason))
                .await
                .map_err(internal)?;
            ok(Resp::Ok(MOk {}))
        }
        Req::Shutdown(_) => {
            tracing::info!("shutdown requested over the management socket");
            node.shutdown.cancel();
            ok(Resp::Ok(MOk {}))
        }
        Req::Ping(p) => {
            let link = node
                .inspect(move |core, _| core.find_link(&p.peer))
                .await
                .map_err(internal)?
                .map_err(operator)?;
            let (tx, rx) = tokio::sync::oneshot::channel();
            node.tell(Input::Ping { link, reply: tx })
                .await
                .map_err(internal)?;
            let answer = tokio::time::timeout(Duration::from_secs(6), rx).await;
            match answer {
                Ok(Ok(Ok((peer, rtt_ms)))) => ok(Resp::Ping(PingResponse { rtt_ms, peer })),
                Ok(Ok(Err(PingFailure::TooMany))) => {
                    Err((ErrorCode::Internal, "too many pings in flight".into()))
                }
                Ok(Ok(Err(PingFailure::NoPong(peer)))) => Err((
                    ErrorCode::Timeout,
                    format!("no pong from {peer} within 5 s"),
                )),
                Ok(Err(_)) | Err(_) => Err((ErrorCode::Timeout, "no pong within 5 s".into())),
            }
        }
        Req::Connect(c) => {
            connect(node, c).await?;
            ok(Resp::Ok(MOk {}))
        }
        Req::Listen(l) => {
            listen(node, l)?;
            ok(Resp::Ok(MOk {}))
        }
        Req::RouteChange(r) => {
            route_change(node, r).await?;
            ok(Resp::Ok(MOk {}))
        }
        Req::Hint(h) => {
            node.inspect(move |core, _| core.set_hint(h.hint))
                .await
                .map_err(internal)?;
            ok(Resp::Ok(MOk {}))
        }
        Req::Subscribe(_) => Err((ErrorCode::Internal, "subscribe handled elsewhere".into())),
    }
}

/// Who may change things: root, netd's own uid, and members of the operator
/// group (primary or supplementary, as the caller's process holds them).
/// Everyone else who can reach the socket may only read.
pub fn may_change(
    uid: u32,
    gid: u32,
    netd_uid: u32,
    operator_gid: Option<u32>,
    groups: &[u32],
) -> bool {
    if uid == 0 || uid == netd_uid {
        return true;
    }
    match operator_gid {
        Some(op) => gid == op || groups.contains(&op),
        None => false,
    }
}

/// The peer's supplementary groups as the kernel recorded them at connect
/// time (SO_PEERGROUPS), not what the group database says now: a process
/// that dropped the operator group has not got it. Empty on failure, which
/// only ever takes write access away.
fn peer_groups(stream: &UnixStream) -> Vec<u32> {
    use std::os::fd::AsRawFd;
    // Bounded: NGROUPS_MAX is 65536; ask for up to 1024 (a bigger list is
    // refused by the kernel with ERANGE and then counts as none).
    let mut buf = vec![0 as libc::gid_t; 1024];
    let mut len = (buf.len() * std::mem::size_of::<libc::gid_t>()) as libc::socklen_t;
    // SAFETY: buf is live and len says its size in bytes; the kernel writes
    // at most len bytes and stores the length it wrote.
    let rc = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERGROUPS,
            buf.as_mut_ptr().cast(),
            &mut len,
        )
    };
    if rc != 0 {
        tracing::warn!(error = %std::io::Error::last_os_error(), "SO_PEERGROUPS failed; treating the caller as in no group");
        return Vec::new();
    }
    buf.truncate(len as usize / std::mem::size_of::<libc::gid_t>());
    buf
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
fn exit_mode(node: &Node, role: NodeRole) -> &'static str {
    if node.exit.is_some() {
        "userspace"
    } else if node.data.tun.is_some() && role == NodeRole::RoleExit {
        "kernel"
    } else {
        "none"
    }
}

fn transport(s: &str) -> Result<Transport, Failure> {
    match s {
        "" => Ok(Transport::Quic),
        other => Transport::parse(other).ok_or_else(|| {
            (
                ErrorCode::InvalidArgument,
                format!("unknown transport {other:?}: use quic or ws"),
            )
        }),
    }
}

/// Adds a peer to dial (and redial) and waits until it is connected or the
/// handshake timeout passes; the connector keeps trying either way.
async fn connect(node: &Arc<Node>, c: ConnectRequest) -> Result<(), Failure> {
    let bad = |m: String| (ErrorCode::InvalidArgument, m);
    let transport = transport(&c.transport)?;
    if c.fingerprint.is_empty() {
        return Err(bad(
            "a certificate fingerprint (64 hex digits) is required to connect".into(),
        ));
    }
    // The same parsing as a [[netd.connect]] entry.
    let fields = raw::Connect {
        transport,
        address: c.address,
        server_name: (!c.server_name.is_empty()).then_some(c.server_name),
        fingerprint: Some(c.fingerprint),
        ca_file: None,
        ws_path: Some(c.ws_path),
        allowed_sources: None,
        proxy: None,
        proxy_credentials_file: None,
    };
    let target = Target::try_from(fields).map_err(|e| bad(e.to_string()))?;
    let addr = target.resolve().await.map_err(|e| bad(format!("{e:#}")))?;
    let tls = target
        .client_tls(node.cfg.tls.key_exchange)
        .map_err(|e| bad(format!("{e:#}")))?;
    let mut events = node.events.subscribe();
    drop(tls);
    crate::reload::spawn_adhoc(node, &target).map_err(|e| bad(format!("{e:#}")))?;
    let wait = node.cfg.handshake_timeout.millis();
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
    let path = WsPath::or_default(Some(&l.ws_path)).ok_or_else(|| {
        (
            ErrorCode::InvalidArgument,
            format!("ws_path {:?} must start with '/'", l.ws_path),
        )
    })?;
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
            let allowed = crate::listen::allowed_at_start(node, &addr.to_string());
            crate::listen::quic(node, s, addr.to_string(), allowed)
                .map(drop)
                .map_err(failed)
        }
        Transport::Ws => {
            let s = std::net::TcpListener::bind(addr).map_err(bind_err)?;
            s.set_nonblocking(true).map_err(bind_err)?;
            let allowed = crate::listen::allowed_at_start(node, &addr.to_string());
            crate::listen::ws(node, s, addr.to_string(), path.as_str().into(), allowed)
                .map(drop)
                .map_err(failed)
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
    node.inspect(move |core, _| core.operator_route_changed(prefix, add))
        .await
        .map_err(internal)?;
    tracing::info!(%prefix, add, "route changed through privd");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_and_writes() {
        use sapper_shared::proto::management as m;
        assert_eq!(access(&Req::Status(Default::default())), Access::Read);
        assert_eq!(access(&Req::Subscribe(Default::default())), Access::Read);
        assert_eq!(access(&Req::Ping(m::PingRequest::default())), Access::Read);
        assert_eq!(access(&Req::Shutdown(Default::default())), Access::Change);
        assert_eq!(
            access(&Req::RouteChange(RouteChangeRequest::default())),
            Access::Change
        );
        assert_eq!(
            access(&Req::Connect(ConnectRequest::default())),
            Access::Change
        );
    }

    #[test]
    fn peer_groups_are_the_callers_own() {
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let _g = rt.enter();
        let a = UnixStream::from_std(a).unwrap();
        let mut want: Vec<u32> = nix::unistd::getgroups()
            .unwrap()
            .into_iter()
            .map(|g| g.as_raw())
            .collect();
        let mut got = peer_groups(&a);
        want.sort();
        got.sort();
        assert_eq!(got, want);
    }

    #[test]
    fn who_may_change() {
        let none: &[u32] = &[];
        let member: &[u32] = &[100, 4242];
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
