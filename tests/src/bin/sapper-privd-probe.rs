//! Sends one `OpenTun` request to privd's socket and reports what happened.
//!
//! ```text
//! sapper-privd-probe SOCKET [--timeout-ms MS]
//! ```
//!
//! The e2e tests run it under a uid that is not netd's to check that privd
//! refuses. It speaks the privd protocol directly (a 4-byte big-endian length
//! then a `PrivRequest`, see `proto/privd.proto` and `sapper_shared::framing`)
//! so that it depends on nothing but the wire format. It prints exactly one
//! line and exits 0 whatever privd answered:
//!
//! * `outcome=granted name=…`  — privd opened the TUN for us (a failure)
//! * `outcome=refused code=… message=…` — privd answered with an error
//! * `outcome=closed detail=…` — privd hung up without answering
//! * `outcome=connect-error detail=…` — the socket refused the connection
//! * `outcome=other detail=…` — any other reply

use sapper_shared::framing::{body_len, decode, encode, HEADER_LEN, MAX_CONTROL_FRAME};
use sapper_shared::proto::privd::{
    priv_request, priv_response, OpenTun, PrivRequest, PrivResponse,
};
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::process::ExitCode;
use std::time::Duration;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (socket, timeout) = match args.as_slice() {
        [s] => (s.clone(), 5000),
        [s, flag, ms] if flag == "--timeout-ms" => match ms.parse() {
            Ok(ms) => (s.clone(), ms),
            Err(_) => return usage(),
        },
        _ => return usage(),
    };
    println!("{}", probe(&socket, Duration::from_millis(timeout)));
    ExitCode::SUCCESS
}

fn usage() -> ExitCode {
    eprintln!("usage: sapper-privd-probe SOCKET [--timeout-ms MS]");
    ExitCode::from(2)
}

fn one_line(s: &str) -> String {
    s.replace('\n', " ")
}

fn probe(socket: &str, timeout: Duration) -> String {
    let mut stream = match UnixStream::connect(socket) {
        Ok(s) => s,
        Err(e) => return format!("outcome=connect-error detail={}", one_line(&e.to_string())),
    };
    let _ = stream.set_read_timeout(Some(timeout));
    let _ = stream.set_write_timeout(Some(timeout));
    let req = PrivRequest {
        body: Some(priv_request::Body::OpenTun(OpenTun {})),
    };
    if let Err(e) = stream.write_all(&encode(&req)) {
        return format!("outcome=closed detail=write: {}", one_line(&e.to_string()));
    }
    let mut header = [0u8; HEADER_LEN];
    if let Err(e) = stream.read_exact(&mut header) {
        return format!("outcome=closed detail=read: {}", one_line(&e.to_string()));
    }
    let len = match body_len(header, MAX_CONTROL_FRAME) {
        Ok(l) => l,
        Err(e) => return format!("outcome=other detail={e}"),
    };
    let mut body = vec![0u8; len];
    if let Err(e) = stream.read_exact(&mut body) {
        return format!(
            "outcome=closed detail=read body: {}",
            one_line(&e.to_string())
        );
    }
    match decode::<PrivResponse>(&body) {
        Ok(PrivResponse {
            body: Some(priv_response::Body::Refused(r)),
        }) => format!(
            "outcome=refused code={:?} message={}",
            r.code(),
            one_line(&r.detail)
        ),
        Ok(PrivResponse {
            body: Some(priv_response::Body::TunOpened(t)),
        }) => format!("outcome=granted name={}", t.name),
        Ok(other) => format!("outcome=other detail={other:?}"),
        Err(e) => format!("outcome=other detail={e}"),
    }
}
