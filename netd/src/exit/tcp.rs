//! TCP flows: the entry's SYN waits while netd connects to the destination;
//! only a successful connect lets a smoltcp socket answer it. Then two tasks
//! move bytes between the real socket and the engine:
//!
//! ```text
//! entry ⇄ smoltcp socket (flow_buffer_bytes each way) ⇄ engine
//!        ⇄ channels (CHANNEL_DEPTH × CHUNK each way) ⇄ reader/writer tasks ⇄ TcpStream
//! ```
//!
//! Back-pressure: the engine takes bytes out of smoltcp's receive buffer
//! only when the writer's channel has room, so a slow destination shrinks
//! the window the entry sees; the reader reads the destination only when
//! its channel has room, and the engine drains that channel only into free
//! space in smoltcp's send buffer, so a slow entry closes the kernel's
//! window toward the destination. Nothing grows without a bound.
//!
//! Closing: a FIN from either side becomes a half-close on the other
//! (`shutdown(SHUT_WR)` on the real socket, a FIN from smoltcp). A RST from
//! the entry, or a smoltcp timeout, resets the real socket (SO_LINGER 0);
//! an error on the real socket makes smoltcp send a RST.

use super::engine::{Engine, Event};
use super::limits::{CHANNEL_DEPTH, CHUNK};
use super::packet::{self, FlowKey, Unreachable};
use bytes::{Buf, Bytes, BytesMut};
use sapper_shared::egress::Proto;
use smoltcp::iface::{SocketHandle, SocketSet};
use smoltcp::socket::tcp::{self as stcp, SocketBuffer, State as S};
use smoltcp::wire::IpListenEndpoint;
use std::io::ErrorKind;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, Notify};
use tokio_util::sync::CancellationToken;

/// Keep-alive probes toward the entry on an idle flow.
const KEEPALIVE: Duration = Duration::from_secs(30);
/// A flow whose entry side sends nothing for this long (despite keep-alive
/// probes, or with data outstanding) is reset.
const ENTRY_TIMEOUT: Duration = Duration::from_secs(120);

pub struct TcpFlow {
    pub gen: u64,
    pub peer: u64,
    pub cost: u64,
    pub state: State,
}

pub enum State {
    /// connect() in progress; `syn` is the latest SYN from the entry.
    Connecting {
        syn: Bytes,
        task: tokio::task::AbortHandle,
    },
    Active(Active),
}

/// What the flow's tasks and the engine share.
#[derive(Default)]
pub struct Shared {
    /// Set by a task when the real socket failed: reset the entry side.
    reset: AtomicBool,
    /// Cancelled by the engine to reset the real socket.
    abort: CancellationToken,
}

pub struct Active {
    handle: SocketHandle,
    /// Toward the writer task; `None` once the entry's FIN was passed on.
    up: Option<mpsc::Sender<Bytes>>,
    /// From the reader task.
    down: mpsc::Receiver<Bytes>,
    /// Part of a chunk that did not fit into smoltcp's send buffer yet.
    pending: Bytes,
    down_eof: bool,
    fin_sent: bool,
    established: bool,
    shared: Arc<Shared>,
}

impl TcpFlow {
    /// Tears the flow down: stops a connect in progress, or removes the
    /// smoltcp socket and, when `abort` (or the flow did not finish
    /// cleanly), resets the real socket.
    pub fn finish(self, sockets: &mut SocketSet<'static>, abort: bool) {
        match self.state {
            State::Connecting { task, .. } => task.abort(),
            State::Active(a) => {
                if abort || !a.clean() {
                    a.shared.abort.cancel();
                }
                sockets.remove(a.handle);
            }
        }
    }
}

impl Active {
    /// Both directions ended with a FIN.
    fn clean(&self) -> bool {
        self.fin_sent && self.up.is_none() && !self.shared.reset.load(Relaxed)
    }

    /// Moves data between smoltcp's buffers and the channels.
    fn pump(&mut self, sock: &mut stcp::Socket<'static>) {
        if !self.established && !matches!(sock.state(), S::Listen | S::SynReceived | S::Closed) {
            self.established = true;
        }
        if self.shared.reset.load(Relaxed) {
            if sock.is_open() {
                sock.abort();
            }
            return;
        }
        // Entry → destination, only as far as the writer keeps up.
        if let Some(up) = &self.up {
            while sock.can_recv() {
                let Ok(permit) = up.try_reserve() else { break };
                match sock.recv(|b| {
                    let n = b.len().min(CHUNK);
                    (n, Bytes::copy_from_slice(&b[..n]))
                }) {
                    Ok(chunk) if !chunk.is_empty() => permit.send(chunk),
                    _ => break,
                }
            }
            if self.established && !sock.may_recv() {
                // The entry's FIN (or the end of the connection): EOF.
                self.up = None;
            }
        }
        // Destination → entry, only into free send-buffer space.
        loop {
            if self.pending.is_empty() {
                if self.down_eof {
                    break;
                }
                match self.down.try_recv() {
                    Ok(b) => self.pending = b,
                    Err(mpsc::error::TryRecvError::Empty) => break,
                    Err(mpsc::error::TryRecvError::Disconnected) => {
                        self.down_eof = true;
                        break;
                    }
                }
            }
            if !sock.can_send() {
                break;
            }
            match sock.send_slice(&self.pending) {
                Ok(n) if n > 0 => self.pending.advance(n),
                _ => break,
            }
        }
        if self.down_eof && self.pending.is_empty() && !self.fin_sent && sock.may_send() {
            sock.close();
            self.fin_sent = true;
        }
    }
}

/// Moves data for every established flow.
pub fn pump_all(e: &mut Engine) {
    for flow in e.tcp.values_mut() {
        if let State::Active(a) = &mut flow.state {
            let sock = e.sockets.get_mut::<stcp::Socket>(a.handle);
            a.pump(sock);
        }
    }
}

/// Removes flows whose smoltcp socket has finished.
pub fn reap(e: &mut Engine) {
    let done: Vec<FlowKey> = e
        .tcp
        .iter()
        .filter_map(|(k, f)| match &f.state {
            State::Active(a) => {
                let sock = e.sockets.get::<stcp::Socket>(a.handle);
                // Not while bytes the entry sent still wait for the writer.
                let drained = !sock.can_recv() || a.shared.reset.load(Relaxed);
                (matches!(sock.state(), S::Closed | S::TimeWait) && drained).then_some(*k)
            }
            State::Connecting { .. } => None,
        })
        .collect();
    for k in done {
        e.close_tcp(&k, false);
    }
}

/// A new flow passed policy and limits: connect to the destination.
pub fn start_connect(e: &mut Engine, peer: u64, key: FlowKey, syn: Bytes) {
    let gen = e.gen();
    let ctx = e.ctx.clone();
    let timeout = e.cfg.connect_timeout.millis();
    let task = tokio::spawn(async move {
        let result = match tokio::time::timeout(timeout, TcpStream::connect(key.dst)).await {
            Ok(r) => r,
            Err(_) => Err(std::io::Error::new(
                ErrorKind::TimedOut,
                "connect timed out (netd.exit.connect_timeout_ms)",
            )),
        };
        let _ = ctx.events.send(Event::Connected { key, gen, result });
    });
    e.tcp.insert(
        key,
        TcpFlow {
            gen,
            peer,
            cost: e.limits.cost(Proto::Tcp),
            state: State::Connecting {
                syn,
                task: task.abort_handle(),
            },
        },
    );
    e.flow_opened(peer, Proto::Tcp);
}

/// A connect finished: answer the held SYN, or refuse the flow.
pub fn connected(e: &mut Engine, key: FlowKey, gen: u64, result: std::io::Result<TcpStream>) {
    let (peer, syn) = match e.tcp.get(&key) {
        Some(TcpFlow {
            gen: g,
            peer,
            state: State::Connecting { syn, .. },
            ..
        }) if *g == gen => (*peer, syn.clone()),
        // The entry gave up meanwhile; dropping the stream closes it.
        _ => return,
    };
    let stream = match result {
        Ok(s) => s,
        Err(err) => {
            let stats = &e.ctx.stats;
            let answer = match err.kind() {
                ErrorKind::ConnectionRefused => {
                    stats.connect_refused.fetch_add(1, Relaxed);
                    packet::tcp_rst(&syn)
                }
                ErrorKind::NetworkUnreachable => {
                    stats.connect_failed.fetch_add(1, Relaxed);
                    packet::unreachable(&syn, Unreachable::Net)
                }
                ErrorKind::HostUnreachable | ErrorKind::TimedOut => {
                    stats.connect_failed.fetch_add(1, Relaxed);
                    packet::unreachable(&syn, Unreachable::Host)
                }
                ErrorKind::PermissionDenied => {
                    stats.connect_failed.fetch_add(1, Relaxed);
                    packet::unreachable(&syn, Unreachable::Prohibited)
                }
                _ => {
                    stats.connect_failed.fetch_add(1, Relaxed);
                    packet::tcp_rst(&syn)
                }
            };
            tracing::debug!(flow = %key, error = %err, "userspace exit: connect failed");
            e.reply(peer, answer);
            e.close_tcp(&key, false);
            return;
        }
    };
    let _ = stream.set_nodelay(true);
    // Let smoltcp finish whatever it holds, so the new listener sees only
    // this flow's SYN.
    let now = e.now();
    e.iface.poll(now, &mut e.device, &mut e.sockets);
    let buf = e.cfg.buffers.flow_bytes() as usize;
    let mut sock = stcp::Socket::new(
        SocketBuffer::new(vec![0u8; buf]),
        SocketBuffer::new(vec![0u8; buf]),
    );
    sock.set_nagle_enabled(false);
    sock.set_keep_alive(Some(KEEPALIVE.into()));
    sock.set_timeout(Some(ENTRY_TIMEOUT.into()));
    let endpoint = IpListenEndpoint {
        addr: Some(key.dst.ip().into()),
        port: key.dst.port(),
    };
    if sock.listen(endpoint).is_err() {
        e.reply(peer, packet::tcp_rst(&syn));
        e.close_tcp(&key, false);
        return;
    }
    let handle = e.sockets.add(sock);
    e.device.rx.push_back(syn.clone());
    let now = e.now();
    e.iface.poll(now, &mut e.device, &mut e.sockets);
    let s = e.sockets.get::<stcp::Socket>(handle);
    let ok = s.state() == S::SynReceived
        && s.remote_endpoint().map(std::net::SocketAddr::from) == Some(key.src);
    if !ok {
        // Should not happen: the SYN went elsewhere or was rejected.
        tracing::debug!(flow = %key, state = %s.state(), "userspace exit: SYN not accepted by its socket");
        e.sockets.remove(handle);
        e.reply(peer, packet::tcp_rst(&syn));
        e.close_tcp(&key, false);
        return;
    }
    e.flush_tx();
    let (up_tx, up_rx) = mpsc::channel(CHANNEL_DEPTH);
    let (down_tx, down_rx) = mpsc::channel(CHANNEL_DEPTH);
    let shared = Arc::new(Shared::default());
    let (r, w) = stream.into_split();
    let notify = e.ctx.notify.clone();
    tokio::spawn(writer(w, up_rx, shared.clone(), notify.clone()));
    tokio::spawn(reader(r, down_tx, shared.clone(), notify));
    if let Some(flow) = e.tcp.get_mut(&key) {
        flow.state = State::Active(Active {
            handle,
            up: Some(up_tx),
            down: down_rx,
            pending: Bytes::new(),
            down_eof: false,
            fin_sent: false,
            established: false,
            shared,
        });
    }
}

fn hard_close(s: &TcpStream) {
    let _ = socket2::SockRef::from(s).set_linger(Some(Duration::ZERO));
}

/// Writes what the entry sent to the destination; EOF becomes
/// `shutdown(SHUT_WR)`.
async fn writer(
    mut w: OwnedWriteHalf,
    mut up: mpsc::Receiver<Bytes>,
    shared: Arc<Shared>,
    notify: Arc<Notify>,
) {
    loop {
        let chunk = tokio::select! {
            _ = shared.abort.cancelled() => break,
            c = up.recv() => c,
        };
        let Some(chunk) = chunk else {
            let _ = w.shutdown().await;
            return;
        };
        // Room in the channel again: the engine may take more from smoltcp.
        notify.notify_one();
        let r = tokio::select! {
            _ = shared.abort.cancelled() => break,
            r = w.write_all(&chunk) => r,
        };
        if r.is_err() {
            shared.reset.store(true, Relaxed);
            notify.notify_one();
            break;
        }
    }
    hard_close(w.as_ref());
    w.forget();
}

/// Reads the destination while the channel toward the engine has room;
/// EOF drops the sender, which the engine sees as the FIN to pass on.
async fn reader(
    mut r: OwnedReadHalf,
    down: mpsc::Sender<Bytes>,
    shared: Arc<Shared>,
    notify: Arc<Notify>,
) {
    loop {
        let permit = tokio::select! {
            _ = shared.abort.cancelled() => break,
            p = down.reserve() => match p {
                Ok(p) => p,
                Err(_) => return,
            },
        };
        let mut buf = BytesMut::with_capacity(CHUNK);
        let n = tokio::select! {
            _ = shared.abort.cancelled() => break,
            n = r.read_buf(&mut buf) => n,
        };
        match n {
            Ok(0) => {
                drop(permit);
                drop(down);
                notify.notify_one();
                return;
            }
            Ok(_) => {
                permit.send(buf.freeze());
                notify.notify_one();
            }
            Err(_) => {
                shared.reset.store(true, Relaxed);
                notify.notify_one();
                break;
            }
        }
    }
    hard_close(r.as_ref());
}
