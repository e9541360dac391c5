//! A blocking client for netd's management socket.

use sapper_shared::framing::{self, FrameDecoder, MAX_CONTROL_FRAME};
use sapper_shared::proto::management::{
    request::Body as Req, response::Body as Resp, Request, Response,
};
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Debug)]
pub enum ClientError {
    Unreachable {
        path: PathBuf,
        source: std::io::Error,
    },
    Io(std::io::Error),
    Protocol(String),
}

impl std::fmt::Display for ClientError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ClientError::Unreachable { path, source } => match source.kind() {
                std::io::ErrorKind::PermissionDenied => write!(
                    f,
                    "permission denied on {}: run as root or as a member of the socket's group (see netd.management_group)",
                    path.display()
                ),
                _ => write!(
                    f,
                    "cannot reach netd: {source}; is sapper-netd running? expected socket at {}",
                    path.display()
                ),
            },
            ClientError::Io(e) => write!(f, "talking to netd: {e}"),
            ClientError::Protocol(m) => write!(f, "bad reply from netd: {m}"),
        }
    }
}

impl std::error::Error for ClientError {}

pub struct Client {
    stream: UnixStream,
    decoder: FrameDecoder,
    next_id: u64,
}

impl Client {
    pub fn connect(path: &Path) -> Result<Self, ClientError> {
        let stream = UnixStream::connect(path).map_err(|source| ClientError::Unreachable {
            path: path.to_path_buf(),
            source,
        })?;
        let t = Some(Duration::from_secs(10));
        stream.set_read_timeout(t).map_err(ClientError::Io)?;
        stream.set_write_timeout(t).map_err(ClientError::Io)?;
        Ok(Self {
            stream,
            decoder: FrameDecoder::new(MAX_CONTROL_FRAME),
            next_id: 1,
        })
    }

    pub fn call(&mut self, body: Req) -> Result<Resp, ClientError> {
        let id = self.next_id;
        self.next_id += 1;
        let req = Request {
            id,
            body: Some(body),
        };
        self.stream
            .write_all(&framing::encode(&req))
            .map_err(ClientError::Io)?;
        let resp = self.read()?;
        if resp.id != id {
            return Err(ClientError::Protocol(format!(
                "reply to request {} instead of {id}",
                resp.id
            )));
        }
        resp.body
            .ok_or_else(|| ClientError::Protocol("empty response".into()))
    }

    /// Reads streamed events until netd closes the stream or `on_event`'s
    /// caller is interrupted. No read timeout: events may be rare.
    pub fn stream_events(
        &mut self,
        mut on_event: impl FnMut(sapper_shared::proto::management::Event),
    ) -> Result<(), ClientError> {
        self.stream
            .set_read_timeout(None)
            .map_err(ClientError::Io)?;
        loop {
            let resp = match self.read() {
                Ok(r) => r,
                Err(ClientError::Io(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                    return Ok(())
                }
                Err(e) => return Err(e),
            };
            match resp.body {
                Some(Resp::Event(ev)) => on_event(ev),
                Some(Resp::Error(e)) => return Err(ClientError::Protocol(e.message)),
                _ => {}
            }
        }
    }

    /// Reads one response through the shared frame decoder (the length is
    /// checked before anything is buffered for the body).
    fn read(&mut self) -> Result<Response, ClientError> {
        let mut buf = [0u8; 4096];
        loop {
            let frame = self
                .decoder
                .next_frame()
                .map_err(|e| ClientError::Protocol(e.to_string()))?;
            if let Some(body) = frame {
                return framing::decode(&body).map_err(|e| ClientError::Protocol(e.to_string()));
            }
            let n = self.stream.read(&mut buf).map_err(ClientError::Io)?;
            if n == 0 {
                return Err(ClientError::Io(std::io::ErrorKind::UnexpectedEof.into()));
            }
            self.decoder.push(&buf[..n]);
        }
    }
}
