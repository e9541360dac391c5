//! systemd integration for netd, all optional: started by hand none of this
//! does anything and netd binds its own sockets.
//!
//! - Socket activation: systemd binds the listeners (as root, so netd never
//!   needs CAP_NET_BIND_SERVICE) and passes them as LISTEN_FDS, named by
//!   the units' FileDescriptorName=: `quic` (UDP), `ws` (TCP), `mgmt`
//!   (Unix). An fd with another name (systemd's default is the socket unit's
//!   name) is classified by its socket type instead.
//! - sd_notify: READY=1 once listeners and TUN are in hand, STATUS= with the
//!   peer count, WATCHDOG=1 when WatchdogSec= is set, STOPPING=1 at the end.

use crate::node::Node;
use nix::sys::socket::{getsockname, getsockopt, sockopt, SockType, SockaddrStorage};
use sd_notify::NotifyState;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// True once an activated management socket was taken: it is systemd's and
/// must not be removed at exit.
static MGMT_ACTIVATED: AtomicBool = AtomicBool::new(false);

/// Socket activation errors.
#[derive(Debug, thiserror::Error)]
pub enum ActivationError {
    /// LISTEN_FDS / LISTEN_FDNAMES could not be read.
    #[error("socket activation: {0}")]
    Env(std::io::Error),
    /// A passed fd is not the kind of socket its name says.
    #[error("socket activation: fd {fd} named {name:?} is {found}, expected {expected}")]
    WrongKind {
        /// The fd number.
        fd: i32,
        /// Its LISTEN_FDNAMES name.
        name: String,
        /// What it is.
        found: &'static str,
        /// What the name promises.
        expected: &'static str,
    },
    /// Two management sockets.
    #[error("socket activation: more than one management socket")]
    TwoMgmt,
}

/// What an activated fd is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Quic,
    Ws,
    Mgmt,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Quic => "a UDP socket (quic)",
            Kind::Ws => "a listening TCP socket (ws)",
            Kind::Mgmt => "a listening Unix stream socket (mgmt)",
        }
    }
}

/// Activated UDP sockets with their local addresses.
pub type QuicFds = Vec<(std::net::UdpSocket, SocketAddr)>;
/// Activated TCP listeners with their local addresses.
pub type WsFds = Vec<(std::net::TcpListener, SocketAddr)>;

/// Listeners systemd passed, by kind.
#[derive(Debug, Default)]
pub struct Activated {
    quic: QuicFds,
    ws: WsFds,
    mgmt: Option<std::os::unix::net::UnixListener>,
}

fn kind_of(fd: &OwnedFd) -> Option<Kind> {
    let ty = getsockopt(fd, sockopt::SockType).ok()?;
    let addr: SockaddrStorage = getsockname(fd.as_raw_fd()).ok()?;
    let inet = addr.as_sockaddr_in().is_some() || addr.as_sockaddr_in6().is_some();
    let listening = || getsockopt(fd, sockopt::AcceptConn).unwrap_or(false);
    match (ty, inet, addr.as_unix_addr().is_some()) {
        (SockType::Datagram, true, _) => Some(Kind::Quic),
        (SockType::Stream, true, _) if listening() => Some(Kind::Ws),
        (SockType::Stream, _, true) if listening() => Some(Kind::Mgmt),
        _ => None,
    }
}

fn local_addr(fd: &OwnedFd) -> Option<SocketAddr> {
    let addr: SockaddrStorage = getsockname(fd.as_raw_fd()).ok()?;
    if let Some(a) = addr.as_sockaddr_in() {
        return Some(SocketAddr::from((a.ip(), a.port())));
    }
    addr.as_sockaddr_in6()
        .map(|a| SocketAddr::from((a.ip(), a.port())))
}

/// Whether an activated socket bound to `got` serves a listener configured
/// as `want`: the same address, or both "any address" on the same port.
/// The latter because `ListenDatagram=4433` binds `[::]:4433` (dual-stack)
/// while a config says `0.0.0.0:4433`; netd binding that itself next to
/// systemd's socket would only fail with EADDRINUSE.
fn same_listener(got: SocketAddr, want: SocketAddr) -> bool {
    got == want
        || (got.port() == want.port() && got.ip().is_unspecified() && want.ip().is_unspecified())
}

/// Which kind the name promises, if it is one of ours. `quic-2` counts as
/// `quic`, so several listeners of one transport can be told apart in logs.
fn kind_named(name: &str) -> Option<Kind> {
    match name.split('-').next() {
        Some("quic") => Some(Kind::Quic),
        Some("ws") => Some(Kind::Ws),
        Some("mgmt") => Some(Kind::Mgmt),
        _ => None,
    }
}

impl Activated {
    /// Takes the fds systemd passed to this process (none unless LISTEN_PID
    /// is our pid). Must run before any thread exists: it unsets the
    /// LISTEN_* variables so that no child could take the fds again.
    pub fn from_env() -> Result<Activated, ActivationError> {
        // SAFETY: called from main() before the async runtime or any other
        // thread exists, so nothing reads the environment concurrently.
        let passed = unsafe { sd_notify::listen_fds_with_names_and_unset_env() }
            .map_err(ActivationError::Env)?;
        let mut out = Activated::default();
        for (raw, name) in passed {
            // SAFETY: systemd passed this fd to this process (LISTEN_PID was
            // checked) and the variables are now unset, so it is owned here
            // exactly once; sd_notify has set CLOEXEC on it.
            let fd = unsafe { OwnedFd::from_raw_fd(raw) };
            let found = kind_of(&fd);
            let kind = match (kind_named(&name), found) {
                (Some(want), Some(got)) if want == got => got,
                (None, Some(got)) => got,
                (want, got) => {
                    return Err(ActivationError::WrongKind {
                        fd: raw,
                        name,
                        found: got.map_or("not a usable socket", Kind::as_str),
                        expected: want.map_or("a quic, ws or mgmt socket", Kind::as_str),
                    })
                }
            };
            let addr = local_addr(&fd);
            tracing::info!(fd = raw, %name, kind = kind.as_str(), ?addr, "socket from systemd");
            match (kind, addr) {
                (Kind::Quic, Some(a)) => out.quic.push((fd.into(), a)),
                (Kind::Ws, Some(a)) => out.ws.push((fd.into(), a)),
                (Kind::Mgmt, _) if out.mgmt.is_some() => return Err(ActivationError::TwoMgmt),
                (Kind::Mgmt, _) => out.mgmt = Some(fd.into()),
                // kind_of saw an inet address a moment ago.
                (_, None) => {}
            }
        }
        Ok(out)
    }

    /// The activated UDP socket for a QUIC listener on `want`, if any (see
    /// [`same_listener`]).
    pub fn take_quic(&mut self, want: SocketAddr) -> Option<std::net::UdpSocket> {
        let i = self
            .quic
            .iter()
            .position(|(_, a)| same_listener(*a, want))?;
        Some(self.quic.swap_remove(i).0)
    }

    /// The activated TCP listener for a WS listener on `want`, if any.
    pub fn take_ws(&mut self, want: SocketAddr) -> Option<std::net::TcpListener> {
        let i = self.ws.iter().position(|(_, a)| same_listener(*a, want))?;
        Some(self.ws.swap_remove(i).0)
    }

    /// The activated management socket, if any.
    pub fn take_mgmt(&mut self) -> Option<std::os::unix::net::UnixListener> {
        let m = self.mgmt.take();
        MGMT_ACTIVATED.store(m.is_some(), Ordering::Relaxed);
        m
    }

    /// Activated sockets no `[[netd.listen]]` entry claimed: they are
    /// served anyway (the socket unit asked for them), with default settings.
    pub fn rest(self) -> (QuicFds, WsFds) {
        (self.quic, self.ws)
    }
}

/// True when the management socket came from systemd.
pub fn mgmt_activated() -> bool {
    MGMT_ACTIVATED.load(Ordering::Relaxed)
}

fn notify(state: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(state) {
        tracing::warn!(error = %e, "sd_notify");
    }
}

/// READY=1 and the first STATUS=, then a task that keeps STATUS= current
/// (peer count) and pets the watchdog when WatchdogSec= is set. Call once
/// the listeners and the TUN are in hand.
pub fn ready(node: &Arc<Node>) {
    if std::env::var_os("NOTIFY_SOCKET").is_none() {
        return;
    }
    let status = |n: usize| format!("{n} peer{}", if n == 1 { "" } else { "s" });
    // Nothing is connected before the listeners and connectors start.
    let mut last = 0;
    notify(&[NotifyState::Ready, NotifyState::Status(&status(last))]);
    tracing::info!("told systemd READY=1");
    let watchdog = sd_notify::watchdog_enabled();
    // Half the watchdog interval, as sd_watchdog_enabled(3) advises; the
    // status check rides on the same tick.
    let tick = watchdog
        .map(|w| (w / 2).clamp(Duration::from_millis(100), Duration::from_secs(2)))
        .unwrap_or(Duration::from_secs(2));
    let node = node.clone();
    tokio::spawn(async move {
        let mut every = tokio::time::interval(tick);
        loop {
            tokio::select! {
                _ = node.shutdown.cancelled() => return,
                _ = every.tick() => {}
            }
            // Asked of the control driver: a driver that stopped answering
            // is not petted, so the watchdog sees it.
            let Ok(n) = node
                .inspect(|core, _| core.status().peer_count as usize)
                .await
            else {
                tracing::warn!("the control driver did not answer; not petting the watchdog");
                continue;
            };
            if n != last {
                last = n;
                notify(&[NotifyState::Status(&status(n))]);
            }
            if watchdog.is_some() {
                notify(&[NotifyState::Watchdog]);
            }
        }
    });
}

/// STOPPING=1: shutdown has begun.
/// SIGHUP: re-reading the config (systemd shows "reloading").
pub fn reloading() {
    notify(&[
        NotifyState::Reloading,
        NotifyState::Status("reloading the config"),
    ]);
}

/// The reload is over (applied or refused).
pub fn reloaded() {
    notify(&[NotifyState::Ready]);
}

pub fn stopping() {
    notify(&[NotifyState::Stopping, NotifyState::Status("stopping")]);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listener_matching() {
        let a = |s: &str| s.parse::<SocketAddr>().unwrap();
        assert!(same_listener(a("0.0.0.0:4433"), a("0.0.0.0:4433")));
        assert!(same_listener(a("[::]:4433"), a("0.0.0.0:4433")));
        assert!(same_listener(a("0.0.0.0:4433"), a("[::]:4433")));
        assert!(!same_listener(a("[::]:4434"), a("0.0.0.0:4433")));
        assert!(!same_listener(a("10.0.0.1:4433"), a("0.0.0.0:4433")));
        assert!(!same_listener(a("0.0.0.0:4433"), a("10.0.0.1:4433")));
        assert!(same_listener(a("10.0.0.1:4433"), a("10.0.0.1:4433")));
    }

    #[test]
    fn names() {
        assert_eq!(kind_named("quic"), Some(Kind::Quic));
        assert_eq!(kind_named("quic-2"), Some(Kind::Quic));
        assert_eq!(kind_named("ws"), Some(Kind::Ws));
        assert_eq!(kind_named("mgmt"), Some(Kind::Mgmt));
        assert_eq!(kind_named("sapper-netd.socket"), None);
        assert_eq!(kind_named("unknown"), None);
    }
}
