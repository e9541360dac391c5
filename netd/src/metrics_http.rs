//! The metrics endpoint's HTTP side: `GET /metrics` on a loopback TCP
//! address or a Unix socket (`[netd.metrics]`), bound before the privilege
//! drop like every other socket, served inside netd's sandbox (accept,
//! read and write on a socket it already has: nothing seccomp or Landlock
//! withholds).
//!
//! A reload may turn the endpoint on, off or move it (see reload.rs): the
//! running one is stopped by its token and a new one bound then, by the
//! unprivileged netd (a loopback port, or a socket in a directory netd may
//! write; owned by netd's user and group until the next restart).
//!
//! A deliberately small HTTP/1.x: one request per connection, then close.
//! Whatever is not `GET /metrics` (or `GET /`) with an HTTP/1.0 or 1.1
//! request line, complete headers within [`MAX_REQUEST`] bytes and
//! [`READ_DEADLINE`], gets a bare `400 Bad Request` (`404` for another
//! path) and nothing else. At most `max_connections` scrapes are served at
//! once; the rest wait in the kernel's backlog, so a slow scraper holds at
//! most its slots and only until the read deadline.

use crate::node::Node;
use anyhow::{Context, Result};
use sapper_shared::config::{MetricsConfig, MetricsEndpoint};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

/// The longest request (line plus headers) read.
pub const MAX_REQUEST: usize = 8 * 1024;
/// Time a client has to send its whole request.
pub const READ_DEADLINE: Duration = Duration::from_secs(5);
/// Time allowed to write the answer.
const WRITE_DEADLINE: Duration = Duration::from_secs(10);

/// The bound listener, TCP or Unix.
pub enum Listener {
    Tcp(std::net::TcpListener),
    Unix(std::os::unix::net::UnixListener),
}

impl Listener {
    /// What it listens on, for the log.
    pub fn describe(&self) -> String {
        match self {
            Listener::Tcp(l) => l
                .local_addr()
                .map(|a| format!("tcp {a}"))
                .unwrap_or_else(|_| "tcp".into()),
            Listener::Unix(_) => "unix socket".into(),
        }
    }
}

/// Binds `cfg`'s address (a Unix socket under umask 0177, then mode 0660
/// and `owner`/`group`, as the management socket).
pub fn bind(
    cfg: &MetricsConfig,
    owner: Option<nix::unistd::Uid>,
    group: Option<nix::unistd::Gid>,
    own_uid: u32,
) -> Result<Listener> {
    let path = match &cfg.endpoint {
        MetricsEndpoint::Tcp(addr) => {
            let l = std::net::TcpListener::bind(addr)
                .with_context(|| format!("binding netd.metrics.listen {addr}"))?;
            l.set_nonblocking(true)?;
            return Ok(Listener::Tcp(l));
        }
        MetricsEndpoint::Unix(p) => p,
    };
    let l = sapper_unixsock::bind(path, own_uid, owner, group)
        .context("binding netd.metrics.socket")?;
    Ok(Listener::Unix(l))
}

/// The exposition format of an answer.
#[derive(Debug, PartialEq, Eq, Clone, Copy)]
pub enum Format {
    /// OpenMetrics 1.0 (asked for with `Accept: application/openmetrics-text`,
    /// as Prometheus does).
    OpenMetrics,
    /// The Prometheus text format 0.0.4, for everything else (curl,
    /// `promtool check metrics`).
    Text,
}

/// What the request asked for.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    Metrics(Format),
    NotFound,
    Bad,
}

/// Judges a complete request head (up to and including the blank line).
pub fn judge(head: &[u8]) -> Verdict {
    let Ok(text) = std::str::from_utf8(head) else {
        return Verdict::Bad;
    };
    let mut lines = text.split("\r\n");
    let Some(first) = lines.next() else {
        return Verdict::Bad;
    };
    let mut parts = first.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Verdict::Bad;
    };
    if method != "GET" || !matches!(version, "HTTP/1.0" | "HTTP/1.1") || !target.starts_with('/') {
        return Verdict::Bad;
    }
    // Every header line must at least look like one.
    let mut format = Format::Text;
    for l in lines.take_while(|l| !l.is_empty()) {
        match l.split_once(':') {
            Some((name, value))
                if !name.is_empty() && name.bytes().all(|b| b.is_ascii_graphic()) =>
            {
                if name.eq_ignore_ascii_case("accept")
                    && value.contains("application/openmetrics-text")
                {
                    format = Format::OpenMetrics;
                }
            }
            _ => return Verdict::Bad,
        }
    }
    let path = target.split('?').next().unwrap_or(target);
    match path {
        "/metrics" | "/" => Verdict::Metrics(format),
        _ => Verdict::NotFound,
    }
}

/// Reads up to the end of the request head; None when the client sent
/// more than [`MAX_REQUEST`] bytes or closed first.
async fn read_head<S: AsyncRead + Unpin>(s: &mut S) -> std::io::Result<Option<Vec<u8>>> {
    let mut buf = Vec::with_capacity(512);
    let mut chunk = [0u8; 1024];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            buf.truncate(end + 4);
            return Ok(Some(buf));
        }
        if buf.len() >= MAX_REQUEST {
            return Ok(None);
        }
        let n = s.read(&mut chunk).await?;
        if n == 0 {
            return Ok(None);
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

const BAD: &[u8] = b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
const NOT_FOUND: &[u8] =
    b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";

async fn serve_one<S: AsyncRead + AsyncWrite + Unpin>(node: Arc<Node>, mut s: S) -> Result<()> {
    let head = match tokio::time::timeout(READ_DEADLINE, read_head(&mut s)).await {
        Ok(Ok(Some(h))) => h,
        // Too long, closed early, or silent past the deadline.
        Ok(Ok(None)) | Err(_) => {
            let _ = tokio::time::timeout(WRITE_DEADLINE, s.write_all(BAD)).await;
            return Ok(());
        }
        Ok(Err(e)) => return Err(e.into()),
    };
    let answer = match judge(&head) {
        Verdict::Bad => BAD.to_vec(),
        Verdict::NotFound => NOT_FOUND.to_vec(),
        Verdict::Metrics(format) => {
            let snap = node.inspect(crate::metrics::snapshot).await?;
            let open = crate::metrics::render(&node, snap);
            let (body, content_type) = match format {
                Format::OpenMetrics => (
                    open,
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                ),
                Format::Text => (
                    crate::metrics::to_text_format(&open),
                    "text/plain; version=0.0.4; charset=utf-8",
                ),
            };
            let mut a = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            )
            .into_bytes();
            a.extend_from_slice(body.as_bytes());
            a
        }
    };
    tokio::time::timeout(WRITE_DEADLINE, s.write_all(&answer))
        .await
        .context("write deadline")??;
    let _ = s.shutdown().await;
    Ok(())
}

/// Serves scrapes, at most `max` at once, until shutdown or `stop` (a reload
/// that turns the endpoint off or moves it); the listener closes then.
pub async fn serve(node: Arc<Node>, listener: Listener, max: usize, stop: CancellationToken) {
    let slots = Arc::new(tokio::sync::Semaphore::new(max));
    let (tcp, unix) = match listener {
        Listener::Tcp(l) => (tokio::net::TcpListener::from_std(l).ok(), None),
        Listener::Unix(l) => (None, tokio::net::UnixListener::from_std(l).ok()),
    };
    if tcp.is_none() && unix.is_none() {
        tracing::error!("metrics endpoint: cannot register the listener");
        return;
    }
    let mut pause = Duration::from_millis(10);
    loop {
        // A slot first: past the bound, connections wait in the backlog.
        let permit = tokio::select! {
            _ = stop.cancelled() => return,
            p = slots.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => return },
        };
        let accepted: std::io::Result<Box<dyn Stream>> = tokio::select! {
            _ = stop.cancelled() => return,
            r = async {
                match (&tcp, &unix) {
                    (Some(t), _) => t.accept().await.map(|(s, _)| Box::new(s) as Box<dyn Stream>),
                    (_, Some(u)) => u.accept().await.map(|(s, _)| Box::new(s) as Box<dyn Stream>),
                    _ => std::future::pending().await,
                }
            } => r,
        };
        match accepted {
            Ok(s) => {
                pause = Duration::from_millis(10);
                let node = node.clone();
                tokio::spawn(async move {
                    if let Err(e) = serve_one(node, s).await {
                        tracing::debug!(error = %format!("{e:#}"), "metrics scrape failed");
                    }
                    drop(permit);
                });
            }
            Err(e) => {
                // EMFILE and the like: no spin.
                tracing::warn!(error = %e, "metrics endpoint: accept failed");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(1));
            }
        }
    }
}

trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn judges_requests() {
        assert_eq!(
            judge(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"),
            Verdict::Metrics(Format::Text)
        );
        assert_eq!(
            judge(b"GET /metrics HTTP/1.1\r\naccept: application/openmetrics-text;version=1.0.0,text/plain;q=0.5\r\n\r\n"),
            Verdict::Metrics(Format::OpenMetrics)
        );
        assert_eq!(
            judge(b"GET / HTTP/1.0\r\n\r\n"),
            Verdict::Metrics(Format::Text)
        );
        assert_eq!(judge(b"GET /other HTTP/1.1\r\n\r\n"), Verdict::NotFound);
        for bad in [
            &b"garbage\r\n\r\n"[..],
            b"POST /metrics HTTP/1.1\r\n\r\n",
            b"GET /metrics HTTP/2\r\n\r\n",
            b"GET metrics HTTP/1.1\r\n\r\n",
            b"GET /metrics HTTP/1.1 x\r\n\r\n",
            b"GET /metrics HTTP/1.1\r\nno colon\r\n\r\n",
            b"\xff\xfe\r\n\r\n",
        ] {
            assert_eq!(
                judge(bad),
                Verdict::Bad,
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
