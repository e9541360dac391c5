//! Small network probes for the end-to-end tests of the userspace exit.
//!
//! ```text
//! sapper-probe tcp-echo-serve ADDR            echo every TCP connection until EOF
//! sapper-probe udp-echo-serve ADDR            echo every UDP datagram
//! sapper-probe tcp-conns ADDR N BYTES         N concurrent connections, each sends
//!                                             BYTES, reads the echo and compares
//! sapper-probe tcp-connect ADDR               one connect; prints result=... ms=...
//! sapper-probe tcp-slow ADDR BYTES SECS       one connection sending BYTES over
//!                                             SECS seconds, echo compared
//! sapper-probe udp-ping ADDR N                N request/response exchanges
//! sapper-probe udp-tagged FROM ADDR N TAG      from FROM (ip:port) N datagrams
//!     "TAG-i" 10 ms apart to an echo server; prints `ours=X foreign=Y`
//!     (answers carrying TAG / anything else that reached FROM)
//! sapper-probe tcp-hold-serve ADDR            accept connections, never read them
//! sapper-probe tcp-push ADDR BYTES STALL      write BYTES until a write makes no
//!                                             progress for STALL seconds; prints
//!                                             stalled|done written=N
//! ```
//!
//! Every mode takes `--timeout SECS` (default 60) bounding the whole run.
//! Servers print `listening ADDR` once ready and exit 0 at the deadline;
//! clients print one result line and exit 0 on success, 1 otherwise.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::process::ExitCode;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            println!("error: {e}");
            eprintln!("sapper-probe: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), String> {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let mut timeout = Duration::from_secs(60);
    if let Some(i) = args.iter().position(|a| a == "--timeout") {
        let v = args.get(i + 1).ok_or("--timeout needs a value")?;
        timeout = Duration::from_secs(v.parse().map_err(|_| format!("bad --timeout {v}"))?);
        args.drain(i..i + 2);
    }
    let deadline = Instant::now() + timeout;
    let num = |s: &str| s.parse::<u64>().map_err(|_| format!("bad number {s}"));
    let addr = |s: &str| {
        s.parse::<SocketAddr>()
            .map_err(|e| format!("bad address {s}: {e}"))
    };
    match args.iter().map(String::as_str).collect::<Vec<_>>()[..] {
        ["tcp-echo-serve", a] => tcp_echo_serve(addr(a)?, deadline),
        ["udp-echo-serve", a] => udp_echo_serve(addr(a)?, deadline),
        ["tcp-conns", a, n, b] => tcp_conns(addr(a)?, num(n)? as usize, num(b)? as usize, deadline),
        ["tcp-connect", a] => tcp_connect(addr(a)?, deadline),
        ["tcp-slow", a, b, s] => tcp_slow(addr(a)?, num(b)? as usize, num(s)?, deadline),
        ["udp-ping", a, n] => udp_ping(addr(a)?, num(n)? as usize, deadline),
        ["udp-tagged", f, a, n, tag] => udp_tagged(addr(f)?, addr(a)?, num(n)?.min(100_000), tag),
        ["tcp-hold-serve", a] => tcp_hold_serve(addr(a)?, deadline),
        ["tcp-push", a, b, s] => tcp_push(addr(a)?, num(b)?, num(s)?, deadline),
        _ => Err("usage: see the module docs of tests/src/bin/sapper-probe.rs".into()),
    }
}

fn left(deadline: Instant) -> Result<Duration, String> {
    deadline
        .checked_duration_since(Instant::now())
        .filter(|d| !d.is_zero())
        .ok_or_else(|| "deadline passed".to_string())
}

/// Bytes a client sends: depend on the connection number, so crossed
/// streams show.
fn pattern(conn: usize, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i.wrapping_mul(31) ^ conn.wrapping_mul(7919)) as u8)
        .collect()
}

fn tcp_echo_serve(addr: SocketAddr, deadline: Instant) -> Result<(), String> {
    let l = TcpListener::bind(addr).map_err(|e| format!("bind {addr}: {e}"))?;
    l.set_nonblocking(true).map_err(|e| e.to_string())?;
    println!("listening {addr}");
    std::io::stdout().flush().ok();
    while Instant::now() < deadline {
        match l.accept() {
            Ok((s, _)) => {
                std::thread::spawn(move || {
                    let _ = echo(s, deadline);
                });
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(5))
            }
            Err(e) => return Err(format!("accept: {e}")),
        }
    }
    Ok(())
}

fn echo(mut s: TcpStream, deadline: Instant) -> Result<(), String> {
    s.set_nonblocking(false).map_err(|e| e.to_string())?;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        s.set_read_timeout(Some(left(deadline)?))
            .map_err(|e| e.to_string())?;
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => s.write_all(&buf[..n]).map_err(|e| e.to_string())?,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e.to_string()),
        }
    }
    let _ = s.shutdown(Shutdown::Write);
    Ok(())
}

fn udp_echo_serve(addr: SocketAddr, deadline: Instant) -> Result<(), String> {
    let s = UdpSocket::bind(addr).map_err(|e| format!("bind {addr}: {e}"))?;
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .map_err(|e| e.to_string())?;
    println!("listening {addr}");
    std::io::stdout().flush().ok();
    let mut buf = vec![0u8; 65536];
    while Instant::now() < deadline {
        match s.recv_from(&mut buf) {
            Ok((n, from)) => {
                let _ = s.send_to(&buf[..n], from);
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) => return Err(format!("recv: {e}")),
        }
    }
    Ok(())
}

/// One client connection: connect, send, half-close, read the echo back.
fn exchange(addr: SocketAddr, conn: usize, bytes: usize, deadline: Instant) -> Result<(), String> {
    let mut s =
        TcpStream::connect_timeout(&addr, left(deadline)?).map_err(|e| format!("connect: {e}"))?;
    let data = pattern(conn, bytes);
    s.set_write_timeout(Some(left(deadline)?))
        .map_err(|e| e.to_string())?;
    let mut r = s.try_clone().map_err(|e| e.to_string())?;
    // Read concurrently so neither side's buffers can deadlock the echo.
    let reader = std::thread::spawn(move || -> Result<Vec<u8>, String> {
        let mut got = Vec::with_capacity(bytes);
        r.set_read_timeout(Some(left(deadline)?))
            .map_err(|e| e.to_string())?;
        r.read_to_end(&mut got).map_err(|e| format!("read: {e}"))?;
        Ok(got)
    });
    s.write_all(&data).map_err(|e| format!("write: {e}"))?;
    s.shutdown(Shutdown::Write)
        .map_err(|e| format!("shutdown: {e}"))?;
    let got = reader.join().map_err(|_| "reader panicked")??;
    if got != data {
        return Err(format!(
            "echo differs: sent {} bytes, got {}",
            data.len(),
            got.len()
        ));
    }
    Ok(())
}

fn tcp_conns(addr: SocketAddr, n: usize, bytes: usize, deadline: Instant) -> Result<(), String> {
    let barrier = Arc::new(Barrier::new(n));
    let handles: Vec<_> = (0..n)
        .map(|i| {
            let b = barrier.clone();
            std::thread::Builder::new()
                .stack_size(256 * 1024)
                .spawn(move || {
                    b.wait();
                    exchange(addr, i, bytes, deadline)
                })
        })
        .collect::<Result<_, _>>()
        .map_err(|e| format!("spawning threads: {e}"))?;
    let mut errors = Vec::new();
    for h in handles {
        match h.join() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => errors.push(e),
            Err(_) => errors.push("thread panicked".into()),
        }
    }
    println!("ok={} failed={}", n - errors.len(), errors.len());
    if errors.is_empty() {
        Ok(())
    } else {
        errors.sort();
        errors.dedup();
        Err(format!(
            "{} failed: {:?}",
            n,
            &errors[..errors.len().min(5)]
        ))
    }
}

fn tcp_connect(addr: SocketAddr, deadline: Instant) -> Result<(), String> {
    let start = Instant::now();
    let r = TcpStream::connect_timeout(&addr, left(deadline)?);
    let ms = start.elapsed().as_millis();
    let result = match r {
        Ok(_) => "connected".to_string(),
        Err(e) => match e.kind() {
            ErrorKind::ConnectionRefused => "refused".into(),
            ErrorKind::HostUnreachable | ErrorKind::NetworkUnreachable => "unreachable".into(),
            ErrorKind::TimedOut | ErrorKind::WouldBlock => "timeout".into(),
            _ => format!("error:{e}"),
        },
    };
    println!("result={result} ms={ms}");
    Ok(())
}

fn tcp_slow(addr: SocketAddr, bytes: usize, secs: u64, deadline: Instant) -> Result<(), String> {
    let mut s =
        TcpStream::connect_timeout(&addr, left(deadline)?).map_err(|e| format!("connect: {e}"))?;
    println!("connected");
    std::io::stdout().flush().ok();
    let data = pattern(4242, bytes);
    let mut r = s.try_clone().map_err(|e| e.to_string())?;
    let reader = std::thread::spawn(move || -> Result<Vec<u8>, String> {
        let mut got = Vec::new();
        r.set_read_timeout(Some(left(deadline)?))
            .map_err(|e| e.to_string())?;
        r.read_to_end(&mut got).map_err(|e| format!("read: {e}"))?;
        Ok(got)
    });
    let steps = (secs * 10).max(1) as usize;
    let per = bytes.div_ceil(steps).max(1);
    for chunk in data.chunks(per) {
        s.set_write_timeout(Some(left(deadline)?))
            .map_err(|e| e.to_string())?;
        s.write_all(chunk).map_err(|e| format!("write: {e}"))?;
        std::thread::sleep(Duration::from_millis(100));
    }
    s.shutdown(Shutdown::Write)
        .map_err(|e| format!("shutdown: {e}"))?;
    let got = reader.join().map_err(|_| "reader panicked")??;
    if got != data {
        return Err(format!(
            "echo differs: sent {bytes} bytes, got {}",
            got.len()
        ));
    }
    println!("ok bytes={bytes}");
    Ok(())
}

fn udp_tagged(from: SocketAddr, addr: SocketAddr, n: u64, tag: &str) -> Result<(), String> {
    let s = UdpSocket::bind(from).map_err(|e| format!("bind {from}: {e}"))?;
    s.connect(addr).map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(Duration::from_millis(10)))
        .map_err(|e| e.to_string())?;
    let (mut ours, mut foreign) = (0u64, 0u64);
    let mut buf = vec![0u8; 65536];
    let mut count = |buf: &[u8]| {
        if buf.starts_with(tag.as_bytes()) {
            ours += 1;
        } else {
            foreign += 1;
        }
    };
    for i in 0..n {
        s.send(format!("{tag}-{i}").as_bytes())
            .map_err(|e| format!("send: {e}"))?;
        if let Ok(m) = s.recv(&mut buf) {
            count(&buf[..m]);
        }
    }
    // Late answers, for half a second.
    let end = Instant::now() + Duration::from_millis(500);
    while Instant::now() < end {
        if let Ok(m) = s.recv(&mut buf) {
            count(&buf[..m]);
        }
    }
    println!("ours={ours} foreign={foreign}");
    Ok(())
}

fn udp_ping(addr: SocketAddr, n: usize, deadline: Instant) -> Result<(), String> {
    let bind: SocketAddr = if addr.is_ipv4() {
        "0.0.0.0:0".parse().map_err(|_| "bind addr")?
    } else {
        "[::]:0".parse().map_err(|_| "bind addr")?
    };
    let s = UdpSocket::bind(bind).map_err(|e| format!("bind: {e}"))?;
    s.connect(addr).map_err(|e| format!("connect: {e}"))?;
    let mut ok = 0;
    let mut buf = vec![0u8; 65536];
    'requests: for i in 0..n {
        let msg = pattern(i, 64 + i % 1000);
        for _try in 0..5 {
            s.send(&msg).map_err(|e| format!("send: {e}"))?;
            let wait_until = Instant::now() + Duration::from_secs(1);
            while Instant::now() < wait_until {
                let t = wait_until.saturating_duration_since(Instant::now());
                s.set_read_timeout(Some(t.max(Duration::from_millis(1))))
                    .map_err(|e| e.to_string())?;
                match s.recv(&mut buf) {
                    Ok(m) if buf[..m] == msg[..] => {
                        ok += 1;
                        continue 'requests;
                    }
                    Ok(_) => {} // a late answer to an earlier try
                    Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                        break
                    }
                    Err(e) if e.kind() == ErrorKind::ConnectionRefused => {
                        println!("result=refused ok={ok} of {n}");
                        return Err("port unreachable".into());
                    }
                    Err(e) => return Err(format!("recv: {e}")),
                }
            }
            left(deadline)?;
        }
    }
    println!("ok={ok} of {n}");
    if ok == n {
        Ok(())
    } else {
        Err(format!("{} of {n} requests unanswered", n - ok))
    }
}

fn tcp_hold_serve(addr: SocketAddr, deadline: Instant) -> Result<(), String> {
    let l = TcpListener::bind(addr).map_err(|e| format!("bind {addr}: {e}"))?;
    l.set_nonblocking(true).map_err(|e| e.to_string())?;
    println!("listening {addr}");
    std::io::stdout().flush().ok();
    let mut held = Vec::new();
    while Instant::now() < deadline {
        match l.accept() {
            Ok((s, _)) => held.push(s),
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(20))
            }
            Err(e) => return Err(format!("accept: {e}")),
        }
    }
    Ok(())
}

fn tcp_push(addr: SocketAddr, total: u64, stall: u64, deadline: Instant) -> Result<(), String> {
    let mut s =
        TcpStream::connect_timeout(&addr, left(deadline)?).map_err(|e| format!("connect: {e}"))?;
    s.set_write_timeout(Some(Duration::from_secs(stall.max(1))))
        .map_err(|e| e.to_string())?;
    let buf = pattern(1, 64 * 1024);
    let mut written = 0u64;
    while written < total {
        left(deadline)?;
        let n = ((total - written) as usize).min(buf.len());
        match s.write(&buf[..n]) {
            Ok(m) => written += m as u64,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                println!("stalled written={written}");
                return Ok(());
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(format!("write after {written} bytes: {e}")),
        }
    }
    println!("done written={written}");
    Ok(())
}
