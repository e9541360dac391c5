//! The WebSocket client's way through an HTTP CONNECT proxy: a TCP
//! connection to the proxy, `CONNECT host:port`, the proxy's answer read
//! and checked, and then the stream is the peer's, for TLS and the Sapper
//! handshake end to end (the proxy sees only ciphertext).
//!
//! Everything from the proxy is untrusted: its response head is bounded
//! ([`MAX_RESPONSE_HEAD`]), connecting and answering share one deadline,
//! and every way it can fail (refusal, authentication, another status,
//! garbage, early close, silence) is its own error, logged by the dialler,
//! which then backs off as after any failed dial.

use base64::Engine as _;
use sapper_shared::config::{Connect, NoProxy, Proxy, ProxyUrl};
use sapper_shared::text::{sanitize, sanitize_bytes};
use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use zeroize::Zeroizing;

/// Largest response head (status line and headers) read from a proxy.
pub const MAX_RESPONSE_HEAD: usize = 8 * 1024;
/// Largest credentials file (one `user:password` line).
const MAX_CREDENTIALS: u64 = 4 * 1024;
/// Longest reason phrase quoted in an error.
const MAX_REASON: usize = 64;

/// How dialling through a proxy failed.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// 403: the proxy's rules refuse this destination.
    #[error("proxy {proxy} refused CONNECT to {target}: 403 {reason} (the proxy's rules do not allow this destination or port)")]
    Forbidden {
        /// The proxy.
        proxy: String,
        /// `host:port` asked for.
        target: String,
        /// Its reason phrase (escaped, bounded).
        reason: String,
    },
    /// 407 (or 401): authentication missing or rejected.
    #[error("proxy {proxy} requires authentication: {status} {reason} ({hint})")]
    AuthRequired {
        /// The proxy.
        proxy: String,
        /// 407, or 401 from proxies that answer so.
        status: u16,
        /// Its reason phrase (escaped, bounded).
        reason: String,
        /// Whether credentials were sent.
        hint: &'static str,
    },
    /// Any other status that is not 2xx.
    #[error("proxy {proxy} answered CONNECT to {target} with {status} {reason}")]
    Status {
        /// The proxy.
        proxy: String,
        /// `host:port` asked for.
        target: String,
        /// Status code.
        status: u16,
        /// Its reason phrase (escaped, bounded).
        reason: String,
    },
    /// Not an HTTP response.
    #[error("proxy {proxy} answered something that is not an HTTP response: {start:?}")]
    Garbage {
        /// The proxy.
        proxy: String,
        /// The first bytes (escaped).
        start: String,
    },
    /// No end of the head within the bound.
    #[error("proxy {proxy}'s response head exceeds {MAX_RESPONSE_HEAD} bytes")]
    TooLong {
        /// The proxy.
        proxy: String,
    },
    /// Bytes after the head before the client spoke TLS.
    #[error("proxy {proxy} sent {extra} bytes after its response head, before the TLS handshake")]
    Trailing {
        /// The proxy.
        proxy: String,
        /// How many.
        extra: usize,
    },
    /// The proxy closed before a complete answer.
    #[error("proxy {proxy} closed the connection before answering CONNECT ({got} bytes received)")]
    Closed {
        /// The proxy.
        proxy: String,
        /// Bytes of answer received.
        got: usize,
    },
    /// Connecting and answering took longer than the deadline.
    #[error("proxy {proxy} did not connect and answer CONNECT within {ms} ms")]
    Timeout {
        /// The proxy.
        proxy: String,
        /// The deadline.
        ms: u128,
    },
    /// The TCP connection to the proxy failed.
    #[error("connecting to proxy {proxy}: {source}")]
    Connect {
        /// The proxy.
        proxy: String,
        /// Why.
        source: io::Error,
    },
    /// Reading or writing failed after connecting.
    #[error("talking to proxy {proxy}: {source}")]
    Io {
        /// The proxy.
        proxy: String,
        /// Why.
        source: io::Error,
    },
    /// The peer's address cannot be put on a request line.
    #[error("{0:?} cannot be sent to a proxy (only visible ASCII)")]
    BadTarget(String),
}

/// The `Proxy-Authorization` value (`Basic ...`), wiped on drop and never
/// printed.
pub struct Credentials(Zeroizing<String>);

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Credentials(<redacted>)")
    }
}

/// systemd's credentials directory, private to the service (set once at
/// start): files there are not mode checked, as for the PSK.
static CREDENTIALS_DIR: OnceLock<Option<PathBuf>> = OnceLock::new();

/// Records `$CREDENTIALS_DIRECTORY` (main, before the environment goes).
pub fn set_credentials_dir(dir: Option<PathBuf>) {
    let _ = CREDENTIALS_DIR.set(dir);
}

/// Credentials files read so far, by path: read at start while netd is
/// still root (like the PSK, the file may be root's own), so dials never
/// need the file again.
static CACHE: Mutex<BTreeMap<PathBuf, Arc<Credentials>>> = Mutex::new(BTreeMap::new());

fn cache() -> std::sync::MutexGuard<'static, BTreeMap<PathBuf, Arc<Credentials>>> {
    CACHE
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Reads every entry's credentials file (main, before privileges are
/// dropped); the error names the entry's key.
pub fn load_all(file: &str, list: &[Connect]) -> anyhow::Result<()> {
    use anyhow::Context as _;
    for (i, c) in list.iter().enumerate() {
        if let Some(f) = c.proxy().and_then(|p| p.credentials_file.as_deref()) {
            credentials(f)
                .with_context(|| format!("{file}: netd.connect[{i}].proxy_credentials_file"))?;
        }
    }
    Ok(())
}

/// The credentials of `path`: as read at start, or read now (a path a
/// reload added; netd then reads it as its own unprivileged user).
pub fn credentials(path: &Path) -> anyhow::Result<Arc<Credentials>> {
    if let Some(c) = cache().get(path) {
        return Ok(c.clone());
    }
    let c = Arc::new(read_credentials(path)?);
    cache().insert(path.to_path_buf(), c.clone());
    Ok(c)
}

/// At reload: the credentials of `path` (a path read at start comes from
/// the cache and is not read again), or why the sandboxed netd cannot read
/// a new one. After start netd reads files as its own user and, under
/// Landlock, only inside `state_dir` (a read root from start) besides the
/// files named then; a file elsewhere needs a restart.
pub fn credentials_at_reload(path: &Path, state_dir: &Path) -> anyhow::Result<Arc<Credentials>> {
    credentials(path).map_err(|e| {
        let denied = e
            .chain()
            .filter_map(|c| c.downcast_ref::<std::io::Error>())
            .any(|io| io.kind() == std::io::ErrorKind::PermissionDenied);
        if !denied {
            return e;
        }
        // Landlock judges the resolved path.
        let real = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
        let hint = if real(path).starts_with(real(state_dir)) {
            "netd's user cannot read it: make that user its owner (mode 0600)".to_string()
        } else {
            format!(
                "after start netd reads new files only inside netd.state_dir ({}): move it there, owned by netd's user with mode 0600, or restart netd",
                state_dir.display()
            )
        };
        e.context(hint)
    })
}

/// Reads `user:password` (one line) from `path`, which must not be readable
/// by group or others.
fn read_credentials(path: &Path) -> anyhow::Result<Credentials> {
    use anyhow::Context as _;
    use std::io::Read as _;
    use std::os::unix::fs::MetadataExt as _;
    let shown = path.display();
    let file = std::fs::File::open(path)
        .with_context(|| format!("cannot read proxy credentials file {shown}"))?;
    let mode = file
        .metadata()
        .with_context(|| format!("fstat {shown}"))?
        .mode();
    let private = !CREDENTIALS_DIR
        .get()
        .and_then(Option::as_deref)
        .is_some_and(|d| path.starts_with(d));
    if private && mode & 0o077 != 0 {
        anyhow::bail!(
            "proxy credentials file {shown} is readable by group or others (mode {:04o}); fix it with: chmod 600 {shown}",
            mode & 0o7777
        );
    }
    let mut raw = Zeroizing::new(Vec::new());
    file.take(MAX_CREDENTIALS)
        .read_to_end(&mut raw)
        .with_context(|| format!("cannot read proxy credentials file {shown}"))?;
    let mut line: &[u8] = &raw;
    while let [rest @ .., b'\n' | b'\r'] = line {
        line = rest;
    }
    let user_end = line.iter().position(|b| *b == b':');
    if user_end.is_none_or(|u| u == 0) || line.iter().any(|b| b.is_ascii_control()) {
        anyhow::bail!("proxy credentials file {shown}: expected one line user:password");
    }
    let mut value = Zeroizing::new(String::from("Basic "));
    base64::engine::general_purpose::STANDARD.encode_string(line, &mut value);
    Ok(Credentials(value))
}

/// `HTTPS_PROXY` and `NO_PROXY` as read at start (`None`: no proxy set).
static ENV_PROXY: OnceLock<Option<(ProxyUrl, NoProxy)>> = OnceLock::new();

/// Reads `HTTPS_PROXY` / `https_proxy` and `NO_PROXY` / `no_proxy` once
/// (main, before any thread): a reload uses the same values. A URL that is
/// not `http://host:port` is an error, not a silent direct connection.
pub fn read_env() -> anyhow::Result<()> {
    let var = |upper: &str, lower: &str| {
        std::env::var(upper)
            .ok()
            .or_else(|| std::env::var(lower).ok())
            .filter(|v| !v.trim().is_empty())
    };
    let found = match var("HTTPS_PROXY", "https_proxy") {
        None => None,
        Some(url) => {
            let url = ProxyUrl::parse(url.trim())
                .map_err(|e| anyhow::anyhow!("environment variable HTTPS_PROXY: {e}"))?;
            let no = NoProxy::parse(&var("NO_PROXY", "no_proxy").unwrap_or_default());
            Some((url, no))
        }
    };
    let _ = ENV_PROXY.set(found);
    Ok(())
}

/// The entries with the environment's proxy filled in where
/// [`Connect::with_env_proxy`] says so.
pub fn with_env(list: Vec<Connect>) -> Vec<Connect> {
    match ENV_PROXY.get().and_then(Option::as_ref) {
        Some((url, no)) => list
            .into_iter()
            .map(|c| c.with_env_proxy(url, no))
            .collect(),
        None => list,
    }
}

/// Connects to the proxy, asks it for a tunnel to `target` (`host:port`)
/// and returns the stream once the proxy said 2xx. `deadline` covers the
/// TCP connect, the request and the whole answer.
pub async fn tunnel(
    proxy: &Proxy,
    target: &str,
    credentials: Option<&Credentials>,
    deadline: Duration,
) -> Result<TcpStream, ProxyError> {
    let name = proxy.url.to_string();
    if target.is_empty() || !target.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(ProxyError::BadTarget(sanitize(target, MAX_REASON)));
    }
    let work = async {
        let mut tcp = TcpStream::connect(proxy.url.authority())
            .await
            .map_err(|source| ProxyError::Connect {
                proxy: name.clone(),
                source,
            })?;
        let _ = tcp.set_nodelay(true);
        let mut req = Zeroizing::new(format!(
            "CONNECT {target} HTTP/1.1\r\nHost: {target}\r\nUser-Agent: sapper-netd\r\n"
        ));
        if let Some(c) = credentials {
            req.push_str("Proxy-Authorization: ");
            req.push_str(&c.0);
            req.push_str("\r\n");
        }
        req.push_str("\r\n");
        let io = |source| ProxyError::Io {
            proxy: name.clone(),
            source,
        };
        tcp.write_all(req.as_bytes()).await.map_err(io)?;
        let mut buf = vec![0u8; MAX_RESPONSE_HEAD];
        let mut got = 0;
        let head_len = loop {
            if got == buf.len() {
                return Err(ProxyError::TooLong {
                    proxy: name.clone(),
                });
            }
            let n = tcp.read(&mut buf[got..]).await.map_err(io)?;
            if n == 0 {
                return Err(ProxyError::Closed {
                    proxy: name.clone(),
                    got,
                });
            }
            got += n;
            // Garbage is told at once, not after 8 KiB or the deadline.
            let start = &buf[..got.min(5)];
            if !b"HTTP/".starts_with(start) {
                return Err(ProxyError::Garbage {
                    proxy: name.clone(),
                    start: sanitize_bytes(&buf[..got], 32),
                });
            }
            if let Some(end) = buf[..got].windows(4).position(|w| w == b"\r\n\r\n") {
                break end + 4;
            }
        };
        // A refusal's body (an HTML page, usually) is not read: the
        // status says it all.
        check_answer(&name, target, &buf[..head_len], credentials.is_some())?;
        if got > head_len {
            return Err(ProxyError::Trailing {
                proxy: name.clone(),
                extra: got - head_len,
            });
        }
        Ok(tcp)
    };
    tokio::time::timeout(deadline, work)
        .await
        .map_err(|_| ProxyError::Timeout {
            proxy: name.clone(),
            ms: deadline.as_millis(),
        })?
}

/// The verdict of a complete response head.
fn check_answer(
    proxy: &str,
    target: &str,
    head: &[u8],
    sent_credentials: bool,
) -> Result<(), ProxyError> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut resp = httparse::Response::new(&mut headers);
    let garbage = || ProxyError::Garbage {
        proxy: proxy.to_string(),
        start: sanitize_bytes(head, 32),
    };
    match resp.parse(head) {
        Ok(httparse::Status::Complete(_)) => {}
        _ => return Err(garbage()),
    }
    let status = resp.code.ok_or_else(garbage)?;
    let reason = sanitize(resp.reason.unwrap_or(""), MAX_REASON);
    match status {
        200..=299 => Ok(()),
        403 => Err(ProxyError::Forbidden {
            proxy: proxy.to_string(),
            target: target.to_string(),
            reason,
        }),
        // 401 is what some proxies (tinyproxy) send for their own
        // authentication instead of 407.
        401 | 407 => Err(ProxyError::AuthRequired {
            proxy: proxy.to_string(),
            status,
            reason,
            hint: if sent_credentials {
                "the credentials in proxy_credentials_file were rejected"
            } else {
                "set proxy_credentials_file"
            },
        }),
        status => Err(ProxyError::Status {
            proxy: proxy.to_string(),
            target: target.to_string(),
            status,
            reason,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    /// Under the same Landlock rules as a running netd (in a thread of its
    /// own: Landlock binds the calling thread only), a new credentials file
    /// inside the state directory is read at reload; one elsewhere is
    /// refused with the exact remedy.
    #[test]
    fn reload_reads_new_credentials_only_inside_state_dir() {
        use std::os::unix::fs::PermissionsExt;
        let base = std::env::temp_dir().join(format!("sapper-cred-{}", std::process::id()));
        let state = base.join("state");
        std::fs::create_dir_all(&state).unwrap();
        let (inside, outside) = (state.join("proxy-cred"), base.join("proxy-cred"));
        for f in [&inside, &outside] {
            std::fs::write(f, "user:s3cret\n").unwrap();
            std::fs::set_permissions(f, std::fs::Permissions::from_mode(0o600)).unwrap();
        }
        let (s, i, o) = (state.clone(), inside.clone(), outside.clone());
        let res = std::thread::spawn(move || {
            let status = crate::fs_sandbox::restrict(std::slice::from_ref(&s), None).unwrap();
            (
                status,
                credentials_at_reload(&i, &s)
                    .map(|_| ())
                    .map_err(|e| format!("{e:#}")),
                credentials_at_reload(&o, &s)
                    .map(|_| ())
                    .map_err(|e| format!("{e:#}")),
            )
        })
        .join()
        .unwrap();
        let _ = std::fs::remove_dir_all(&base);
        assert!(res.1.is_ok(), "{:?}", res.1);
        if res.0 == landlock::RulesetStatus::NotEnforced {
            eprintln!("Landlock not enforced here: the outside case is not checked");
            return;
        }
        let err = res
            .2
            .expect_err("a file outside the state directory was read");
        assert!(
            err.contains("only inside netd.state_dir") && err.contains("or restart netd"),
            "{err}"
        );
        assert!(!err.contains("s3cret"), "{err}");
    }

    /// A proxy on loopback that reads the request head and answers
    /// `answer` (then holds a complete answer's connection open for a
    /// while, and closes after an incomplete one); returns the
    /// proxy and a receiver of the request it got.
    async fn fake(answer: &'static [u8]) -> (Proxy, tokio::sync::oneshot::Receiver<String>) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        let (tx, rx) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            let mut req = Vec::new();
            let mut b = [0u8; 512];
            while !req.ends_with(b"\r\n\r\n") {
                match s.read(&mut b).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => req.extend_from_slice(&b[..n]),
                }
            }
            let _ = tx.send(String::from_utf8_lossy(&req).into_owned());
            let _ = s.write_all(answer).await;
            // An unfinished head is followed by the close it tests.
            if answer.ends_with(b"\r\n\r\n") || answer.ends_with(b"\x16\x03") {
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
        });
        let proxy = Proxy {
            url: ProxyUrl::parse(&format!("http://127.0.0.1:{port}")).unwrap(),
            credentials_file: None,
            from_env: false,
        };
        (proxy, rx)
    }

    const T: Duration = Duration::from_millis(500);

    #[tokio::test]
    async fn answers() {
        let (p, rx) = fake(b"HTTP/1.1 200 Connection established\r\nVia: x\r\n\r\n").await;
        let creds = Credentials(Zeroizing::new("Basic dTpw".into()));
        tunnel(&p, "10.0.0.2:8443", Some(&creds), T)
            .await
            .expect("200");
        let req = rx.await.unwrap();
        assert!(
            req.starts_with("CONNECT 10.0.0.2:8443 HTTP/1.1\r\nHost: 10.0.0.2:8443\r\n"),
            "{req}"
        );
        assert!(
            req.contains("\r\nProxy-Authorization: Basic dTpw\r\n"),
            "{req}"
        );

        let cases: [(&'static [u8], &str); 8] = [
            (b"HTTP/1.1 403 Forbidden\r\nContent-Length: 4\r\n\r\nnope", "refused CONNECT to 10.0.0.2:8443: 403 Forbidden"),
            (b"HTTP/1.0 407 Proxy Authentication Required\r\n\r\n", "requires authentication: 407 Proxy Authentication Required (set proxy_credentials_file)"),
            (b"HTTP/1.1 502 Bad Gateway\r\n\r\n", "CONNECT to 10.0.0.2:8443 with 502 Bad Gateway"),
            (b"HTTP/1.1 502 Bad\x1bGateway\r\n\r\n", "not an HTTP response: \"HTTP/1.1 502 Bad\\\\u{1b}"),
            (b"SSH-2.0-OpenSSH\r\n\r\n", "not an HTTP response"),
            (b"HTTP/1.1 2000 x\r\n\r\n", "not an HTTP response"),
            (b"HTTP/1.1 200 OK\r\n\r\n\x16\x03", "sent 2 bytes after its response head"),
            (b"HTTP/1.1 200 OK\r\n", "closed the connection before answering CONNECT (17 bytes received)"),
        ];
        for (answer, want) in cases {
            let (p, _rx) = fake(answer).await;
            let e = tunnel(&p, "10.0.0.2:8443", None, T)
                .await
                .expect_err("refused");
            assert!(e.to_string().contains(want), "{e} (wanted {want})");
        }
    }

    #[tokio::test]
    async fn silence_long_heads_and_bad_targets() {
        // Accepts and never answers.
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        let p = Proxy {
            url: ProxyUrl::parse(&format!("http://127.0.0.1:{port}")).unwrap(),
            credentials_file: None,
            from_env: false,
        };
        let held = tokio::spawn(async move {
            let (s, _) = l.accept().await.unwrap();
            tokio::time::sleep(Duration::from_secs(3)).await;
            drop(s);
        });
        let e = tunnel(&p, "x:1", None, T).await.expect_err("silence");
        assert!(matches!(e, ProxyError::Timeout { ms: 500, .. }), "{e}");
        held.abort();

        // A head that never ends stops at the bound.
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            let _ = s.write_all(b"HTTP/1.1 200 OK\r\n").await;
            let line = b"X-Pad: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n";
            for _ in 0..200 {
                if s.write_all(line).await.is_err() {
                    break;
                }
            }
            tokio::time::sleep(Duration::from_secs(2)).await;
        });
        let p = Proxy {
            url: ProxyUrl::parse(&format!("http://127.0.0.1:{port}")).unwrap(),
            credentials_file: None,
            from_env: false,
        };
        let e = tunnel(&p, "x:1", None, Duration::from_secs(2))
            .await
            .expect_err("long");
        assert!(matches!(e, ProxyError::TooLong { .. }), "{e}");

        let e = tunnel(&p, "x y:1\r\nEvil: 1", None, T)
            .await
            .expect_err("bad");
        assert!(matches!(e, ProxyError::BadTarget(_)), "{e}");
    }

    #[test]
    fn credentials_file() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = std::env::temp_dir().join(format!("sapper-proxy-creds-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("c");
        std::fs::write(&f, "user:pa:ss\n").unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600)).unwrap();
        let c = read_credentials(&f).expect("read");
        assert_eq!(c.0.as_str(), "Basic dXNlcjpwYTpzcw==");
        assert_eq!(format!("{c:?}"), "Credentials(<redacted>)");
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o640)).unwrap();
        let e = read_credentials(&f).expect_err("group readable");
        assert!(e.to_string().contains("chmod 600"), "{e}");
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600)).unwrap();
        for bad in ["nopassword\n", ":pw\n", "a:b\nc:d\n", ""] {
            std::fs::write(&f, bad).unwrap();
            assert!(read_credentials(&f).is_err(), "{bad:?}");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
