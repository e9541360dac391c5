//! The management socket: length-delimited management.proto requests from
//! sapperctl. Reads are open to anyone who can reach the socket; changes
//! need root or netd's own uid (the operator-group rule arrives with the
//! ctl issue).

use crate::node::{role_str, Node};
use anyhow::{Context, Result};
use sapper_shared::framing::{self, HEADER_LEN, MAX_CONTROL_FRAME};
use sapper_shared::proto::management::{
    request::Body as Req, response::Body as Resp, Error, ErrorCode, Ok as MOk, PeersResponse,
    Request, Response, RouteInfo, RoutesResponse, StatsResponse, StatusResponse, TunInfo,
};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
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
    let may_write = cred.uid() == 0 || cred.uid() == nix::unistd::getuid().as_raw();
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
        );
        if is_write && !may_write {
            tracing::warn!(uid = cred.uid(), pid = ?cred.pid(), "refused a management change from an unprivileged uid");
            let r = error(
                id,
                ErrorCode::PermissionDenied,
                "permission denied: changes need root or netd's own user",
            );
            stream.write_all(&framing::encode(&r)).await?;
            continue;
        }
        if let Req::Subscribe(_) = body {
            return subscribe(node, stream, id).await;
        }
        let resp = handle(&node, id, body);
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

fn handle(node: &Node, id: u64, body: Req) -> Response {
    let ok = |b| Response { id, body: Some(b) };
    match body {
        Req::Status(_) => ok(Resp::Status(StatusResponse {
            name: node.name.clone(),
            version: sapper_shared::SOFTWARE_VERSION.into(),
            role: node.role as i32,
            uptime_s: node.started.elapsed().as_secs(),
            listeners: node.listeners.lock().map(|l| l.clone()).unwrap_or_default(),
            cert_fingerprint: node.fingerprint.clone(),
            tun: node.tun.as_ref().map(|t| TunInfo {
                name: t.name.clone(),
                addresses: t.addresses.clone(),
                mtu: t.mtu,
            }),
            peer_count: node.peers().len() as u32,
            role_reason: format!("{} (fixed by configuration)", role_str(node.role)),
        })),
        Req::Peers(_) => ok(Resp::Peers(PeersResponse {
            peers: node.peers().iter().map(|p| p.info()).collect(),
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
                p.close.cancel();
                ok(Resp::Ok(MOk {}))
            }
            Err((code, msg)) => error(id, code, msg),
        },
        Req::Shutdown(_) => {
            tracing::info!("shutdown requested over the management socket");
            node.shutdown.cancel();
            ok(Resp::Ok(MOk {}))
        }
        Req::Ping(_) | Req::Connect(_) | Req::Listen(_) | Req::RouteChange(_) => error(
            id,
            ErrorCode::Unimplemented,
            "not implemented yet in this netd",
        ),
        Req::Subscribe(_) => error(id, ErrorCode::Internal, "subscribe handled elsewhere"),
    }
}
