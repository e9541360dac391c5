//! A peer to dial. The config (or an operator's `connect`) parses it once
//! into [`sapper_shared::config::Connect`]: transport, `host:port`, the TLS
//! server name, how its certificate is trusted, the WebSocket path. Here it
//! gains what needs I/O or netd's TLS code: name resolution and the client
//! TLS configuration, so transports get nothing left to check.

use crate::tls;
use anyhow::{Context, Result};
use sapper_shared::config::{Connect, KeyExchange, Transport};
use std::net::SocketAddr;
use std::sync::Arc;

/// A parsed peer to dial.
pub type Target = Connect;

/// What netd does with a [`Target`].
pub(crate) trait Dial {
    /// The first address `address` resolves to (resolved on every dial).
    async fn resolve(&self) -> Result<SocketAddr>;
    /// The TLS client config for this target, offering the key-exchange
    /// groups `kx` allows (`netd.tls.key_exchange`).
    fn client_tls(&self, kx: KeyExchange) -> Result<Arc<rustls::ClientConfig>>;
}

impl Dial for Connect {
    async fn resolve(&self) -> Result<SocketAddr> {
        tokio::net::lookup_host(self.address())
            .await
            .with_context(|| format!("resolving {}", self.address()))?
            .next()
            .with_context(|| format!("{} resolves to no address", self.address()))
    }

    fn client_tls(&self, kx: KeyExchange) -> Result<Arc<rustls::ClientConfig>> {
        let alpn: &[&[u8]] = match self.transport() {
            Transport::Quic => &[tls::ALPN_QUIC],
            Transport::Ws => &[b"http/1.1"],
        };
        Ok(Arc::new(tls::client_config(self.trust(), alpn, kx)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sapper_shared::config::{raw, PeerTrust};

    fn cfg(address: &str, fp: Option<&str>) -> raw::Connect {
        raw::Connect {
            transport: Transport::Quic,
            address: address.into(),
            server_name: None,
            fingerprint: fp.map(Into::into),
            ca_file: None,
            ws_path: None,
            allowed_sources: None,
            proxy: None,
            proxy_credentials_file: None,
        }
    }

    #[test]
    fn parsed_once() {
        let fp = "ab".repeat(32);
        let t = Target::try_from(cfg("[fd00::1]:4433", Some(&fp))).expect("valid");
        assert_eq!(t.server_name(), "fd00::1");
        assert_eq!(t.ws_path().as_str(), "/sapper");
        assert!(matches!(t.trust(), PeerTrust::Pinned(b) if *b == [0xab; 32]));
        let e = Target::try_from(cfg("exit:4433", Some("xyz"))).unwrap_err();
        assert_eq!(e.key, "fingerprint");
        let e = Target::try_from(cfg("exit", Some(&fp))).unwrap_err();
        assert_eq!(e.key, "address");
        let e = Target::try_from(cfg(":1", Some(&fp))).unwrap_err();
        assert_eq!(e.key, "address");
        let e = Target::try_from(cfg("exit:1", None)).unwrap_err();
        assert_eq!(e.key, "");
    }
}
