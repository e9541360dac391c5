//! A peer to dial, parsed once: transport, `host:port`, the TLS server
//! name, how its certificate is trusted, the WebSocket path. It owns name
//! resolution and the client TLS configuration, so transports get nothing
//! left to check.

use crate::tls::{self, PeerTrust};
use anyhow::{Context, Result};
use sapper_shared::config::{parse_fingerprint, ConnectConfig, Transport};
use std::net::SocketAddr;
use std::sync::Arc;

/// Why a connect target cannot be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TargetError {
    #[error("{0}: a certificate fingerprint is 64 hex digits (colons allowed)")]
    BadFingerprint(String),
    #[error("{0}: no fingerprint or CA to trust the peer by")]
    NoTrust(String),
    #[error("{0}: not host:port")]
    BadAddress(String),
}

pub struct Target {
    pub transport: Transport,
    /// `host:port` as configured (resolved on every dial).
    pub address: String,
    pub server_name: String,
    pub trust: PeerTrust,
    pub ws_path: String,
    /// `allowed_sources` of the connect entry.
    pub allowed_sources: Option<Vec<ipnet::IpNet>>,
}

impl TryFrom<&ConnectConfig> for Target {
    type Error = TargetError;

    fn try_from(c: &ConnectConfig) -> Result<Self, TargetError> {
        let trust = match (&c.fingerprint, &c.ca_file) {
            (Some(fp), _) => PeerTrust::Pinned(
                parse_fingerprint(fp).ok_or_else(|| TargetError::BadFingerprint(fp.clone()))?,
            ),
            (None, Some(ca)) => PeerTrust::Ca(ca.clone()),
            (None, None) => return Err(TargetError::NoTrust(c.address.clone())),
        };
        let (host, port) = c
            .address
            .rsplit_once(':')
            .ok_or_else(|| TargetError::BadAddress(c.address.clone()))?;
        if host.is_empty() || port.parse::<u16>().is_err() {
            return Err(TargetError::BadAddress(c.address.clone()));
        }
        let server_name = match &c.server_name {
            Some(n) => n.clone(),
            None => host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_string(),
        };
        Ok(Self {
            transport: c.transport,
            address: c.address.clone(),
            server_name,
            trust,
            ws_path: c.ws_path.clone(),
            allowed_sources: c.allowed_sources.clone(),
        })
    }
}

impl Target {
    /// The first address `address` resolves to.
    pub async fn resolve(&self) -> Result<SocketAddr> {
        tokio::net::lookup_host(&self.address)
            .await
            .with_context(|| format!("resolving {}", self.address))?
            .next()
            .with_context(|| format!("{} resolves to no address", self.address))
    }

    /// The client TLS configuration for this peer and transport.
    /// The TLS client config for this target, offering the key-exchange
    /// groups `kx` allows (`netd.tls.key_exchange`).
    pub fn client_tls(
        &self,
        kx: sapper_shared::config::KeyExchange,
    ) -> Result<Arc<rustls::ClientConfig>> {
        let alpn: &[&[u8]] = match self.transport {
            Transport::Quic => &[tls::ALPN_QUIC],
            Transport::Ws => &[b"http/1.1"],
        };
        Ok(Arc::new(tls::client_config(&self.trust, alpn, kx)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(address: &str, fp: Option<&str>) -> ConnectConfig {
        ConnectConfig {
            transport: Transport::Quic,
            address: address.into(),
            server_name: None,
            fingerprint: fp.map(Into::into),
            ca_file: None,
            ws_path: "/sapper".into(),
            allowed_sources: None,
        }
    }

    #[test]
    fn parsed_once() {
        let fp = "ab".repeat(32);
        let t = Target::try_from(&cfg("[fd00::1]:4433", Some(&fp))).expect("valid");
        assert_eq!(t.server_name, "fd00::1");
        assert!(matches!(t.trust, PeerTrust::Pinned(b) if b == [0xab; 32]));
        assert!(matches!(
            Target::try_from(&cfg("exit:4433", Some("xyz"))),
            Err(TargetError::BadFingerprint(f)) if f == "xyz"
        ));
        assert!(matches!(
            Target::try_from(&cfg("exit", Some(&fp))),
            Err(TargetError::BadAddress(_))
        ));
        assert!(matches!(
            Target::try_from(&cfg("exit:1", None)),
            Err(TargetError::NoTrust(_))
        ));
    }
}
