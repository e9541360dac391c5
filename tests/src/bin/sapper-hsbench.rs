//! Handshake benchmark client for bench/handshake.sh: many short TLS
//! handshakes from one process against one netd listener, and the bytes on
//! the wire of one handshake.
//!
//! ```text
//! sapper-hsbench quic|ws ADDR FINGERPRINT hybrid|classic [--count N] [--concurrency C]
//! ```
//!
//! `hybrid` offers only X25519MLKEM768, `classic` only X25519 (both with
//! netd's three TLS 1.3 suites). Every handshake is a full one (no session
//! resumption) and the server's certificate is checked against the pinned
//! SHA-256 FINGERPRINT with its handshake signature verified, as netd does.
//! Each connection is closed as soon as its TLS handshake completes (for WS
//! before any WebSocket upgrade). Prints one line:
//! `transport=.. kx=.. handshakes=N seconds=S per_second=R bytes_out=B bytes_in=B`
//! where bytes_* are one extra handshake's bytes measured by the client:
//! UDP payload for QUIC (100 ms after it completed, so the server's
//! HANDSHAKE_DONE and ACKs are in; the client sends no path-MTU probes, the
//! listener's first probe may fall in that window), TLS bytes over TCP for WS (when
//! the client's handshake completed; TCP/IP headers not counted).

use rustls::crypto::aws_lc_rs::{cipher_suite, kx_group};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::ServerName;
use sapper_tests::pinned::Pinned;
use std::net::SocketAddr;
use std::pin::Pin;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

fn main() -> ExitCode {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("sapper-hsbench: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sapper-hsbench: {e}");
            ExitCode::FAILURE
        }
    }
}

fn usage() -> String {
    "usage: sapper-hsbench quic|ws ADDR FINGERPRINT hybrid|classic [--count N] [--concurrency C]"
        .into()
}

fn flag(args: &mut Vec<String>, name: &str, default: usize, max: usize) -> Result<usize, String> {
    let Some(i) = args.iter().position(|a| a == name) else {
        return Ok(default);
    };
    let v = args.get(i + 1).ok_or_else(usage)?.clone();
    args.drain(i..i + 2);
    match v.parse::<usize>() {
        Ok(n) if (1..=max).contains(&n) => Ok(n),
        _ => Err(format!("{name} must be 1..={max}, not {v}")),
    }
}

async fn run() -> Result<(), String> {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let count = flag(&mut args, "--count", 500, 100_000)?;
    let concurrency = flag(&mut args, "--concurrency", 4, 64)?;
    let [transport, addr, fp, kx] = args.as_slice() else {
        return Err(usage());
    };
    let addr: SocketAddr = addr.parse().map_err(|e| format!("bad ADDR {addr}: {e}"))?;
    let fingerprint = parse_fingerprint(fp).ok_or("FINGERPRINT: 64 hex digits, colons allowed")?;
    let groups = match kx.as_str() {
        "hybrid" => vec![kx_group::X25519MLKEM768],
        "classic" => vec![kx_group::X25519],
        other => return Err(format!("unknown key exchange {other} (hybrid or classic)")),
    };
    let provider = Arc::new(CryptoProvider {
        cipher_suites: vec![
            cipher_suite::TLS13_AES_256_GCM_SHA384,
            cipher_suite::TLS13_AES_128_GCM_SHA256,
            cipher_suite::TLS13_CHACHA20_POLY1305_SHA256,
        ],
        kx_groups: groups,
        ..rustls::crypto::aws_lc_rs::default_provider()
    });
    let algs = provider.signature_verification_algorithms;
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(Pinned { fingerprint, algs }))
        .with_no_client_auth();
    tls.resumption = rustls::client::Resumption::disabled();
    let (secs, bytes_out, bytes_in) = match transport.as_str() {
        "quic" => quic(addr, tls, count, concurrency).await?,
        "ws" => ws(addr, tls, count, concurrency).await?,
        other => return Err(format!("unknown transport {other} (quic or ws)")),
    };
    println!(
        "transport={transport} kx={kx} handshakes={count} seconds={secs:.3} per_second={:.1} bytes_out={bytes_out} bytes_in={bytes_in}",
        count as f64 / secs
    );
    Ok(())
}

/// Runs `count` handshakes, `concurrency` at a time; the elapsed seconds.
async fn timed<F, Fut>(count: usize, concurrency: usize, one: F) -> Result<f64, String>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<(), String>> + 'static,
{
    let start = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    let mut started = 0;
    while started < count.min(concurrency) {
        set.spawn_local(one());
        started += 1;
    }
    while let Some(r) = set.join_next().await {
        r.map_err(|e| e.to_string())??;
        if started < count {
            set.spawn_local(one());
            started += 1;
        }
    }
    Ok(start.elapsed().as_secs_f64())
}

async fn quic(
    addr: SocketAddr,
    tls: rustls::ClientConfig,
    count: usize,
    concurrency: usize,
) -> Result<(f64, u64, u64), String> {
    let mut tls = tls;
    tls.alpn_protocols = vec![b"sapper/1".to_vec()];
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls)
        .map_err(|e| format!("QUIC client config: {e}"))?;
    let mut client = quinn::ClientConfig::new(Arc::new(crypto));
    // No path-MTU probes from the client: they are not part of a handshake.
    let mut transport = quinn::TransportConfig::default();
    transport.mtu_discovery_config(None);
    client.transport_config(Arc::new(transport));
    let endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().map_err(|e| format!("{e}"))?)
        .map_err(|e| format!("QUIC endpoint: {e}"))?;
    let connect = move |endpoint: quinn::Endpoint, client: quinn::ClientConfig| async move {
        endpoint
            .connect_with(client, addr, "sapper")
            .map_err(|e| format!("connect: {e}"))?
            .await
            .map_err(|e| format!("QUIC handshake: {e}"))
    };
    // One measured handshake first (also checks that it works at all).
    let conn = connect(endpoint.clone(), client.clone()).await?;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let stats = conn.stats();
    conn.close(0u32.into(), b"bench");
    let local = tokio::task::LocalSet::new();
    let secs = local
        .run_until(timed(count, concurrency, || {
            let (endpoint, client) = (endpoint.clone(), client.clone());
            async move {
                let conn = connect(endpoint, client).await?;
                conn.close(0u32.into(), b"bench");
                Ok(())
            }
        }))
        .await?;
    endpoint.wait_idle().await;
    Ok((secs, stats.udp_tx.bytes, stats.udp_rx.bytes))
}

async fn ws(
    addr: SocketAddr,
    tls: rustls::ClientConfig,
    count: usize,
    concurrency: usize,
) -> Result<(f64, u64, u64), String> {
    let mut tls = tls;
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(tls));
    let connect = move |connector: tokio_rustls::TlsConnector| async move {
        let tcp = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| format!("TCP connect: {e}"))?;
        let _ = tcp.set_nodelay(true);
        let counted = Counted {
            inner: tcp,
            out: Arc::new(AtomicU64::new(0)),
            inn: Arc::new(AtomicU64::new(0)),
        };
        let (out, inn) = (counted.out.clone(), counted.inn.clone());
        let name = ServerName::try_from("sapper").map_err(|e| e.to_string())?;
        let stream = connector
            .connect(name, counted)
            .await
            .map_err(|e| format!("TLS handshake: {e}"))?;
        Ok::<_, String>((stream, out.load(Relaxed), inn.load(Relaxed)))
    };
    let (_, bytes_out, bytes_in) = connect(connector.clone()).await?;
    let local = tokio::task::LocalSet::new();
    let secs = local
        .run_until(timed(count, concurrency, || {
            let c = connector.clone();
            async move { connect(c).await.map(|_| ()) }
        }))
        .await?;
    Ok((secs, bytes_out, bytes_in))
}

/// A TCP stream that counts the bytes it moves.
struct Counted {
    inner: tokio::net::TcpStream,
    out: Arc<AtomicU64>,
    inn: Arc<AtomicU64>,
}

impl AsyncRead for Counted {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = buf.filled().len().saturating_sub(before);
        self.inn.fetch_add(n as u64, Relaxed);
        r
    }
}

impl AsyncWrite for Counted {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = &r {
            self.out.fetch_add(*n as u64, Relaxed);
        }
        r
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

fn parse_fingerprint(s: &str) -> Option<[u8; 32]> {
    let hex: String = s.chars().filter(|c| *c != ':').collect();
    if hex.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}
