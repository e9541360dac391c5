//! What a QUIC link's TLS handshake negotiated. quinn 0.11 exposes only
//! ALPN and the server name of its rustls session (`HandshakeData`), and
//! rustls's key-exchange groups and cipher suites are `&'static`, so they
//! cannot carry a per-connection record. Instead each connection gets thin
//! wrappers around quinn's own rustls crypto config and session: they pass
//! every call through unchanged and read the ServerHello off the TLS
//! handshake stream the session carries (in QUIC, TLS handshake messages
//! travel in CRYPTO frames without TLS records; the ServerHello is
//! cleartext TLS wire format). The listener reads the ServerHello it wrote,
//! the dialler the one rustls accepted, so what is recorded is the version,
//! suite and group the handshake truly used; a link is only reported after
//! its handshake completed.

use crate::tls::Negotiated;
use quinn_proto::crypto::{self, ExportKeyingMaterialError, KeyPair, Keys, PacketKey};
use quinn_proto::transport_parameters::TransportParameters;
use quinn_proto::{ConnectError, ConnectionId, Side, TransportError};
use rustls::{CipherSuite, NamedGroup, ProtocolVersion};
use std::any::Any;
use std::sync::{Arc, Mutex};

/// Handshake bytes kept while looking for the ServerHello; a ServerHello
/// with an ML-KEM-768 ciphertext is ~1.2 KB, a HelloRetryRequest before it
/// is small.
const MAX_SCAN: usize = 16 * 1024;
const SERVER_HELLO: u8 = 2;
const EXT_SUPPORTED_VERSIONS: u16 = 43;
const EXT_KEY_SHARE: u16 = 51;
/// RFC 8446 4.1.3: the random of a HelloRetryRequest (SHA-256 of
/// "HelloRetryRequest").
const HRR_RANDOM: [u8; 32] = [
    0xcf, 0x21, 0xad, 0x74, 0xe5, 0x9a, 0x61, 0x11, 0xbe, 0x1d, 0x8c, 0x02, 0x1e, 0x65, 0xb8, 0x91,
    0xc2, 0xa2, 0x11, 0x16, 0x7a, 0xbb, 0x8c, 0x5e, 0x07, 0x9e, 0x09, 0xe2, 0xc8, 0xa8, 0x33, 0x9c,
];

/// Outcome of scanning the start of the server's handshake stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scan {
    /// Not enough bytes yet.
    More,
    /// The ServerHello's selection.
    Found(Negotiated),
    /// The stream does not start the way a TLS 1.3 server's does.
    Malformed(&'static str),
}

/// A cursor over untrusted bytes: every read is bounds-checked.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Some(a)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
    fn u16(&mut self) -> Option<u16> {
        self.take(2).map(|b| u16::from_be_bytes([b[0], b[1]]))
    }
    fn u24(&mut self) -> Option<usize> {
        self.take(3)
            .map(|b| (usize::from(b[0]) << 16) | (usize::from(b[1]) << 8) | usize::from(b[2]))
    }
}

/// Finds the ServerHello (skipping a HelloRetryRequest) at the start of a
/// server's TLS handshake message stream and returns the version, cipher
/// suite and key-share group it selected.
pub fn scan_server_hello(stream: &[u8]) -> Scan {
    let mut r = Reader(stream);
    loop {
        let (Some(kind), Some(len)) = (r.u8(), r.u24()) else {
            return Scan::More;
        };
        if kind != SERVER_HELLO {
            return Scan::Malformed("the server's first handshake message is not a ServerHello");
        }
        let Some(body) = r.take(len) else {
            return Scan::More;
        };
        match parse_server_hello(body) {
            Ok(Some(n)) => return Scan::Found(n),
            // A HelloRetryRequest: the real ServerHello follows.
            Ok(None) => continue,
            Err(e) => return Scan::Malformed(e),
        }
    }
}

/// One ServerHello body; Ok(None) for a HelloRetryRequest.
fn parse_server_hello(body: &[u8]) -> Result<Option<Negotiated>, &'static str> {
    const SHORT: &str = "truncated ServerHello";
    let mut r = Reader(body);
    let legacy_version = r.u16().ok_or(SHORT)?;
    let random = r.take(32).ok_or(SHORT)?;
    let sid_len = r.u8().ok_or(SHORT)?;
    r.take(usize::from(sid_len)).ok_or(SHORT)?;
    let suite = r.u16().ok_or(SHORT)?;
    r.u8().ok_or(SHORT)?; // legacy_compression_method
    if random == HRR_RANDOM {
        return Ok(None);
    }
    let ext_len = r.u16().ok_or(SHORT)?;
    let mut exts = Reader(r.take(usize::from(ext_len)).ok_or(SHORT)?);
    let (mut version, mut group) = (None, None);
    while !exts.0.is_empty() {
        let kind = exts.u16().ok_or(SHORT)?;
        let len = exts.u16().ok_or(SHORT)?;
        let mut data = Reader(exts.take(usize::from(len)).ok_or(SHORT)?);
        match kind {
            EXT_SUPPORTED_VERSIONS => version = Some(data.u16().ok_or(SHORT)?),
            EXT_KEY_SHARE => group = Some(data.u16().ok_or(SHORT)?),
            _ => {}
        }
    }
    let version = version.unwrap_or(legacy_version);
    let group = group.ok_or("ServerHello without a key_share")?;
    Ok(Some(Negotiated::new(
        ProtocolVersion::from(version),
        CipherSuite::from(suite),
        NamedGroup::from(group),
    )))
}

/// Per-connection record: the server's handshake bytes until the
/// ServerHello is complete, then what it selected.
#[derive(Debug, Default)]
pub struct Probe {
    state: Mutex<ProbeState>,
}

#[derive(Debug, Default)]
struct ProbeState {
    buf: Vec<u8>,
    result: Option<Result<Negotiated, &'static str>>,
}

impl Probe {
    fn feed(&self, bytes: &[u8]) {
        let Ok(mut s) = self.state.lock() else { return };
        if s.result.is_some() || bytes.is_empty() {
            return;
        }
        if s.buf.len() + bytes.len() > MAX_SCAN {
            s.result = Some(Err("no complete ServerHello in the first 16 KiB"));
            s.buf = Vec::new();
            return;
        }
        s.buf.extend_from_slice(bytes);
        match scan_server_hello(&s.buf) {
            Scan::More => {}
            Scan::Found(n) => {
                s.result = Some(Ok(n));
                s.buf = Vec::new();
            }
            Scan::Malformed(e) => {
                s.result = Some(Err(e));
                s.buf = Vec::new();
            }
        }
    }

    /// What the finished handshake negotiated.
    pub fn negotiated(&self) -> anyhow::Result<Negotiated> {
        let s = self
            .state
            .lock()
            .map_err(|_| anyhow::anyhow!("TLS probe poisoned"))?;
        match &s.result {
            Some(Ok(n)) => Ok(n.clone()),
            Some(Err(e)) => Err(anyhow::anyhow!(
                "reading the negotiated TLS parameters: {e}"
            )),
            None => Err(anyhow::anyhow!("the TLS handshake carried no ServerHello")),
        }
    }
}

/// quinn's rustls session, passed through, with the ServerHello observed.
struct ProbedSession {
    inner: Box<dyn crypto::Session>,
    probe: Arc<Probe>,
    side: Side,
}

impl crypto::Session for ProbedSession {
    fn initial_keys(&self, dst_cid: &ConnectionId, side: Side) -> Keys {
        self.inner.initial_keys(dst_cid, side)
    }
    fn handshake_data(&self) -> Option<Box<dyn Any>> {
        self.inner.handshake_data()
    }
    fn peer_identity(&self) -> Option<Box<dyn Any>> {
        self.inner.peer_identity()
    }
    fn early_crypto(&self) -> Option<(Box<dyn crypto::HeaderKey>, Box<dyn PacketKey>)> {
        self.inner.early_crypto()
    }
    fn early_data_accepted(&self) -> Option<bool> {
        self.inner.early_data_accepted()
    }
    fn is_handshaking(&self) -> bool {
        self.inner.is_handshaking()
    }
    fn read_handshake(&mut self, buf: &[u8]) -> Result<bool, TransportError> {
        let r = self.inner.read_handshake(buf)?;
        // Only bytes rustls accepted: the dialler records the ServerHello
        // it went on with.
        if self.side == Side::Client {
            self.probe.feed(buf);
        }
        Ok(r)
    }
    fn transport_parameters(&self) -> Result<Option<TransportParameters>, TransportError> {
        self.inner.transport_parameters()
    }
    fn write_handshake(&mut self, buf: &mut Vec<u8>) -> Option<Keys> {
        let start = buf.len();
        let keys = self.inner.write_handshake(buf);
        if self.side == Side::Server {
            if let Some(written) = buf.get(start..) {
                self.probe.feed(written);
            }
        }
        keys
    }
    fn next_1rtt_keys(&mut self) -> Option<KeyPair<Box<dyn PacketKey>>> {
        self.inner.next_1rtt_keys()
    }
    fn is_valid_retry(&self, orig_dst_cid: &ConnectionId, header: &[u8], payload: &[u8]) -> bool {
        self.inner.is_valid_retry(orig_dst_cid, header, payload)
    }
    fn export_keying_material(
        &self,
        output: &mut [u8],
        label: &[u8],
        context: &[u8],
    ) -> Result<(), ExportKeyingMaterialError> {
        self.inner.export_keying_material(output, label, context)
    }
}

/// A dialler's QUIC crypto config for one connection.
pub struct ProbedClient {
    pub inner: Arc<quinn::crypto::rustls::QuicClientConfig>,
    pub probe: Arc<Probe>,
}

impl crypto::ClientConfig for ProbedClient {
    fn start_session(
        self: Arc<Self>,
        version: u32,
        server_name: &str,
        params: &TransportParameters,
    ) -> Result<Box<dyn crypto::Session>, ConnectError> {
        let inner = self
            .inner
            .clone()
            .start_session(version, server_name, params)?;
        Ok(Box::new(ProbedSession {
            inner,
            probe: self.probe.clone(),
            side: Side::Client,
        }))
    }
}

/// A listener's QUIC crypto config for one connection.
pub struct ProbedServer {
    pub inner: Arc<quinn::crypto::rustls::QuicServerConfig>,
    pub probe: Arc<Probe>,
}

impl crypto::ServerConfig for ProbedServer {
    fn initial_keys(
        &self,
        version: u32,
        dst_cid: &ConnectionId,
    ) -> Result<Keys, crypto::UnsupportedVersion> {
        self.inner.initial_keys(version, dst_cid)
    }
    fn retry_tag(&self, version: u32, orig_dst_cid: &ConnectionId, packet: &[u8]) -> [u8; 16] {
        self.inner.retry_tag(version, orig_dst_cid, packet)
    }
    fn start_session(
        self: Arc<Self>,
        version: u32,
        params: &TransportParameters,
    ) -> Box<dyn crypto::Session> {
        Box::new(ProbedSession {
            inner: self.inner.clone().start_session(version, params),
            probe: self.probe.clone(),
            side: Side::Server,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hello(random: [u8; 32], suite: u16, exts: &[(u16, Vec<u8>)]) -> Vec<u8> {
        let mut body = vec![0x03, 0x03];
        body.extend_from_slice(&random);
        body.push(0); // empty session id
        body.extend_from_slice(&suite.to_be_bytes());
        body.push(0);
        let mut e = Vec::new();
        for (k, d) in exts {
            e.extend_from_slice(&k.to_be_bytes());
            e.extend_from_slice(&(d.len() as u16).to_be_bytes());
            e.extend_from_slice(d);
        }
        body.extend_from_slice(&(e.len() as u16).to_be_bytes());
        body.extend_from_slice(&e);
        let mut msg = vec![SERVER_HELLO];
        msg.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
        msg.extend_from_slice(&body);
        msg
    }

    fn share(group: u16, key_len: usize) -> Vec<u8> {
        let mut d = group.to_be_bytes().to_vec();
        d.extend_from_slice(&(key_len as u16).to_be_bytes());
        d.extend(std::iter::repeat_n(7u8, key_len));
        d
    }

    #[test]
    fn reads_server_hello_after_a_retry_request() {
        let hrr = hello(
            HRR_RANDOM,
            0x1302,
            &[
                (EXT_SUPPORTED_VERSIONS, vec![3, 4]),
                (EXT_KEY_SHARE, vec![0x11, 0xec]),
            ],
        );
        let sh = hello(
            [1; 32],
            0x1302,
            &[
                (EXT_KEY_SHARE, share(0x11ec, 1120)),
                (EXT_SUPPORTED_VERSIONS, vec![3, 4]),
            ],
        );
        let stream = [hrr, sh, vec![8, 0, 0, 2, 0, 0]].concat();
        let want = Negotiated {
            version: "TLSv1.3".into(),
            cipher_suite: "TLS13_AES_256_GCM_SHA384".into(),
            kx_group: "X25519MLKEM768".into(),
        };
        assert_eq!(scan_server_hello(&stream), Scan::Found(want.clone()));
        // Byte by byte, as CRYPTO frames may split it.
        let p = Probe::default();
        for b in &stream {
            p.feed(std::slice::from_ref(b));
        }
        assert_eq!(p.negotiated().unwrap(), want);
        // Every truncation asks for more; none panics.
        for n in 0..stream.len() - 6 {
            let s = scan_server_hello(&stream[..n]);
            assert!(matches!(s, Scan::More | Scan::Found(_)), "{n}: {s:?}");
        }
    }

    #[test]
    fn refuses_what_is_not_a_server_hello() {
        assert!(matches!(
            scan_server_hello(&[1, 0, 0, 0]),
            Scan::Malformed(_)
        ));
        let no_share = hello([1; 32], 0x1301, &[(EXT_SUPPORTED_VERSIONS, vec![3, 4])]);
        assert!(matches!(scan_server_hello(&no_share), Scan::Malformed(_)));
        // An extension longer than the block that holds it.
        let mut bad = hello([1; 32], 0x1301, &[(EXT_KEY_SHARE, share(0x1d, 32))]);
        let n = bad.len();
        bad[n - 38] = 0xff;
        assert!(matches!(scan_server_hello(&bad), Scan::Malformed(_)));
        let x25519 = hello([1; 32], 0x1303, &[(EXT_KEY_SHARE, share(0x1d, 32))]);
        let Scan::Found(n) = scan_server_hello(&x25519) else {
            panic!("not found")
        };
        assert_eq!(
            (
                n.version.as_str(),
                n.cipher_suite.as_str(),
                n.kx_group.as_str()
            ),
            ("TLSv1.2", "TLS13_CHACHA20_POLY1305_SHA256", "X25519"),
            "no supported_versions: the legacy version is what it says"
        );
    }
}

/// Real QUIC handshakes on loopback: the probe must report what rustls
/// negotiated (the in-memory TLS matrix in tls::tests is the reference).
#[cfg(test)]
mod quic_tests {
    use super::*;
    use crate::tls::{self, tests::MATRIX, PeerTrust, ServerTls};

    async fn quic(
        client_kx: sapper_shared::config::KeyExchange,
        server_kx: sapper_shared::config::KeyExchange,
    ) -> (
        Result<Negotiated, String>,
        Result<Negotiated, String>,
        Option<String>,
    ) {
        let id = tls::tests::identity();
        let server_tls = ServerTls::new(&id, &[tls::ALPN_QUIC], server_kx).unwrap();
        let (cfg, offered) = server_tls.for_connection();
        let probe_s = Arc::new(Probe::default());
        let server_cfg = quinn::ServerConfig::with_crypto(Arc::new(ProbedServer {
            inner: Arc::new(quinn::crypto::rustls::QuicServerConfig::try_from(cfg).unwrap()),
            probe: probe_s.clone(),
        }));
        let server = quinn::Endpoint::server(server_cfg, "127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = server.local_addr().unwrap();
        let client_tls = tls::client_config(
            &PeerTrust::Pinned(id.fingerprint),
            &[tls::ALPN_QUIC],
            client_kx,
        )
        .unwrap();
        let probe_c = Arc::new(Probe::default());
        let client_cfg = quinn::ClientConfig::new(Arc::new(ProbedClient {
            inner: Arc::new(
                quinn::crypto::rustls::QuicClientConfig::try_from(Arc::new(client_tls)).unwrap(),
            ),
            probe: probe_c.clone(),
        }));
        let client = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
        let accept = async {
            let inc = server.accept().await.unwrap();
            inc.await.map_err(|e| e.to_string())
        };
        let connect = async {
            client
                .connect_with(client_cfg, addr, "node")
                .unwrap()
                .await
                .map_err(|e| e.to_string())
        };
        let (s, c) = tokio::join!(accept, connect);
        let c = c.and_then(|_| probe_c.negotiated().map_err(|e| e.to_string()));
        let s = s.and_then(|_| probe_s.negotiated().map_err(|e| e.to_string()));
        (c, s, offered.kx_refusal(server_kx))
    }

    #[tokio::test]
    async fn probe_reports_what_quic_negotiated() {
        for (client_kx, server_kx, want) in MATRIX {
            let what = format!("client {client_kx:?}, server {server_kx:?}");
            let (c, s, refusal) = quic(client_kx, server_kx).await;
            match want {
                Some(group) => {
                    let c = c.unwrap_or_else(|e| panic!("{what}: {e}"));
                    assert_eq!(Ok(c.clone()), s, "{what}");
                    assert_eq!(c.kx_group, group, "{what}");
                    assert_eq!(c.version, "TLSv1.3", "{what}");
                    assert_eq!(c.cipher_suite, "TLS13_AES_256_GCM_SHA384", "{what}");
                    assert_eq!(refusal, None, "{what}");
                }
                None => {
                    assert!(c.is_err() && s.is_err(), "{what}: {c:?} {s:?}");
                    let why = refusal.unwrap_or_else(|| panic!("{what}: no refusal: {s:?}"));
                    assert!(
                        why.contains("the peer offered key-exchange groups"),
                        "{why}"
                    );
                }
            }
        }
    }
}
