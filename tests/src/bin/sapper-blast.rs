//! A tiny TCP transfer with checksums, for the end-to-end tests.
//!
//! ```text
//! sapper-blast serve ADDR [--timeout SECS]        accept one connection, read to EOF
//! sapper-blast send ADDR BYTES [--timeout SECS]   send BYTES deterministic bytes
//! ```
//!
//! Both print `bytes=N sha256=HEX` on stdout when done (the server prints
//! `listening ADDR` first, once it accepts connections) and exit 0; any error
//! or the deadline (default 60 s for the whole run) exits 1.

use sapper_tests::blast::{Hasher, Stream};
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::process::ExitCode;
use std::time::{Duration, Instant};

const CHUNK: usize = 64 * 1024;

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sapper-blast: {e}");
            ExitCode::FAILURE
        }
    }
}

fn usage() -> String {
    "usage: sapper-blast serve ADDR [--timeout SECS] | sapper-blast send ADDR BYTES [--timeout SECS]"
        .into()
}

fn run() -> Result<(), String> {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let mut timeout = Duration::from_secs(60);
    if let Some(i) = args.iter().position(|a| a == "--timeout") {
        let v = args.get(i + 1).ok_or_else(usage)?;
        let secs: u64 = v.parse().map_err(|_| format!("bad --timeout {v}"))?;
        timeout = Duration::from_secs(secs);
        args.drain(i..i + 2);
    }
    let deadline = Instant::now() + timeout;
    match args.iter().map(String::as_str).collect::<Vec<_>>()[..] {
        ["serve", addr] => serve(parse_addr(addr)?, deadline),
        ["send", addr, bytes] => {
            let n: u64 = bytes
                .parse()
                .map_err(|_| format!("bad byte count {bytes}"))?;
            send(parse_addr(addr)?, n, deadline)
        }
        _ => Err(usage()),
    }
}

fn parse_addr(s: &str) -> Result<SocketAddr, String> {
    s.parse().map_err(|e| format!("bad address {s}: {e}"))
}

fn remaining(deadline: Instant) -> Result<Duration, String> {
    let now = Instant::now();
    if now >= deadline {
        return Err("deadline passed".into());
    }
    Ok(deadline - now)
}

fn serve(addr: SocketAddr, deadline: Instant) -> Result<(), String> {
    let listener = TcpListener::bind(addr).map_err(|e| format!("bind {addr}: {e}"))?;
    listener
        .set_nonblocking(true)
        .map_err(|e| format!("set_nonblocking: {e}"))?;
    println!("listening {addr}");
    std::io::stdout().flush().ok();
    let mut stream = loop {
        match listener.accept() {
            Ok((s, peer)) => {
                eprintln!("sapper-blast: connection from {peer}");
                break s;
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                remaining(deadline).map_err(|_| "no connection before the deadline")?;
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => return Err(format!("accept: {e}")),
        }
    };
    stream
        .set_nonblocking(false)
        .map_err(|e| format!("set_nonblocking: {e}"))?;
    let start = Instant::now();
    let mut hasher = Hasher::default();
    let mut buf = vec![0u8; CHUNK];
    loop {
        let left =
            remaining(deadline).map_err(|_| "transfer did not finish before the deadline")?;
        stream
            .set_read_timeout(Some(left))
            .map_err(|e| format!("set_read_timeout: {e}"))?;
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => hasher.update(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(format!("read after {} bytes: {e}", hasher.bytes())),
        }
    }
    let summary = hasher.finish();
    report(&summary, start);
    println!("{}", summary.line());
    Ok(())
}

fn send(addr: SocketAddr, total: u64, deadline: Instant) -> Result<(), String> {
    let mut stream = loop {
        let left = remaining(deadline).map_err(|_| format!("could not connect to {addr}"))?;
        match TcpStream::connect_timeout(&addr, left.min(Duration::from_secs(2))) {
            Ok(s) => break s,
            Err(e) => {
                eprintln!("sapper-blast: connect {addr}: {e}; retrying");
                std::thread::sleep(Duration::from_millis(200).min(left));
            }
        }
    };
    let start = Instant::now();
    let mut gen = Stream::default();
    let mut hasher = Hasher::default();
    let mut buf = vec![0u8; CHUNK];
    let mut sent = 0u64;
    while sent < total {
        let n = ((total - sent) as usize).min(CHUNK);
        gen.fill(&mut buf);
        let left = remaining(deadline)
            .map_err(|_| format!("sent only {sent} bytes before the deadline"))?;
        stream
            .set_write_timeout(Some(left))
            .map_err(|e| format!("set_write_timeout: {e}"))?;
        stream
            .write_all(&buf[..n])
            .map_err(|e| format!("write after {sent} bytes: {e}"))?;
        hasher.update(&buf[..n]);
        sent += n as u64;
    }
    stream
        .shutdown(Shutdown::Write)
        .map_err(|e| format!("shutdown: {e}"))?;
    // Wait for the server to close its side: then it has read everything.
    let left = remaining(deadline).map_err(|_| "deadline passed before the server closed")?;
    stream
        .set_read_timeout(Some(left))
        .map_err(|e| format!("set_read_timeout: {e}"))?;
    let mut sink = [0u8; 64];
    loop {
        match stream.read(&mut sink) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(format!("waiting for the server to close: {e}")),
        }
    }
    let summary = hasher.finish();
    report(&summary, start);
    println!("{}", summary.line());
    Ok(())
}

fn report(summary: &sapper_tests::blast::Summary, start: Instant) {
    let secs = start.elapsed().as_secs_f64().max(1e-6);
    eprintln!(
        "sapper-blast: {} bytes in {:.3} s ({:.1} Mbit/s)",
        summary.bytes,
        secs,
        summary.bytes as f64 * 8.0 / secs / 1e6
    );
}
