//! Running commands with time limits, and bounded polling.

use std::io::Read;
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

/// Runs `cmd` to completion with stdin closed and stdout/stderr captured.
/// The command is killed, and an error returned, if it has not finished
/// within `timeout`.
pub fn run_timeout(cmd: &mut Command, timeout: Duration) -> Result<Output, String> {
    let desc = describe(cmd);
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("cannot start `{desc}`: {e}"))?;
    let (tx_out, rx_out) = mpsc::channel();
    let (tx_err, rx_err) = mpsc::channel();
    if let Some(mut out) = child.stdout.take() {
        thread::spawn(move || {
            let mut v = Vec::new();
            let _ = out.read_to_end(&mut v);
            let _ = tx_out.send(v);
        });
    }
    if let Some(mut err) = child.stderr.take() {
        thread::spawn(move || {
            let mut v = Vec::new();
            let _ = err.read_to_end(&mut v);
            let _ = tx_err.send(v);
        });
    }
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                let partial = rx_err
                    .recv_timeout(Duration::from_millis(500))
                    .unwrap_or_default();
                return Err(format!(
                    "`{desc}` did not finish within {timeout:?}; stderr so far: {}",
                    String::from_utf8_lossy(&partial).trim()
                ));
            }
            Ok(None) => thread::sleep(Duration::from_millis(10)),
            Err(e) => return Err(format!("waiting for `{desc}`: {e}")),
        }
    };
    // A grandchild could keep the pipes open; never wait for it for long.
    let stdout = rx_out
        .recv_timeout(Duration::from_secs(2))
        .unwrap_or_default();
    let stderr = rx_err
        .recv_timeout(Duration::from_secs(2))
        .unwrap_or_default();
    Ok(Output {
        status,
        stdout,
        stderr,
    })
}

/// Like [`run_timeout`] but also requires a zero exit status; returns stdout.
pub fn run_ok(cmd: &mut Command, timeout: Duration) -> Result<String, String> {
    let desc = describe(cmd);
    let out = run_timeout(cmd, timeout)?;
    if !out.status.success() {
        return Err(format!(
            "`{desc}` failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim(),
            String::from_utf8_lossy(&out.stdout).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs `ip ARGS` (10 s limit), panicking with ip's message on failure.
pub fn ip(args: &[&str]) -> String {
    run_ok(Command::new("ip").args(args), Duration::from_secs(10)).unwrap_or_else(|e| panic!("{e}"))
}

/// A shell-like rendering of a command, for messages.
pub fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// Calls `probe` until it returns `Some`, for at most `timeout`; polls start
/// at 50 ms apart and back off to 500 ms. Returns an error naming `what` when
/// the deadline passes. Never loops without bound.
pub fn wait_until<T>(
    what: &str,
    timeout: Duration,
    mut probe: impl FnMut() -> Option<T>,
) -> Result<T, String> {
    let start = Instant::now();
    let deadline = start + timeout;
    let mut delay = Duration::from_millis(50);
    loop {
        if let Some(v) = probe() {
            return Ok(v);
        }
        let now = Instant::now();
        if now >= deadline {
            return Err(format!("timed out after {timeout:?} waiting for {what}"));
        }
        thread::sleep(delay.min(deadline - now));
        delay = (delay * 2).min(Duration::from_millis(500));
    }
}

/// Default deadline for "the daemon should be there by now" waits.
pub const WAIT: Duration = Duration::from_secs(20);
