//! TLS material: the node's certificate (generated on first start), and the
//! rustls configs for accepting and for dialling with a pinned fingerprint
//! or a configured CA. TLS 1.3 only: RFC 9266's tls-exporter binding is
//! defined for it.
//!
//! The crypto provider is rustls's aws-lc-rs provider, built explicitly:
//! the cipher suites are [`CIPHER_SUITES`] and the key-exchange groups
//! [`kx_groups`] of the node's `netd.tls.key_exchange`, never the library's
//! defaults. By default that is the hybrid post-quantum group
//! X25519MLKEM768 alone, so a link that would fall back to a classical
//! group is refused.

use anyhow::{bail, Context, Result};
use ring::digest;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::aws_lc_rs::{cipher_suite, kx_group};
use rustls::crypto::{
    verify_tls13_signature, CryptoProvider, SupportedKxGroup, WebPkiSupportedAlgorithms,
};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{
    CipherSuite, DigitallySignedStruct, NamedGroup, ProtocolVersion, SignatureScheme,
    SupportedCipherSuite,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use sapper_shared::config::KeyExchange;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::{Arc, Mutex};

/// ALPN for QUIC links.
pub const ALPN_QUIC: &[u8] = b"sapper/1";

/// The node's own certificate and key.
pub struct Identity {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
    pub fingerprint: [u8; 32],
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Identity({})", hex::encode(self.fingerprint))
    }
}

pub fn fingerprint(cert: &CertificateDer<'_>) -> [u8; 32] {
    let d = digest::digest(&digest::SHA256, cert.as_ref());
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// The cipher suites every link offers and accepts, in order of
/// preference: all TLS 1.3, AEADs only (AES-256-GCM first, as rustls orders
/// them; ChaCha20-Poly1305 for hosts without AES instructions).
pub const CIPHER_SUITES: [SupportedCipherSuite; 3] = [
    cipher_suite::TLS13_AES_256_GCM_SHA384,
    cipher_suite::TLS13_AES_128_GCM_SHA256,
    cipher_suite::TLS13_CHACHA20_POLY1305_SHA256,
];

/// The key-exchange groups offered (dialling) and accepted (listening),
/// in order of preference:
/// - `hybrid`: X25519MLKEM768 only;
/// - `classic-allowed`: X25519MLKEM768, then X25519;
/// - `classic-only`: X25519 only (interoperability tests).
///
/// A listener picks the first group of the dialler's list that it also has,
/// so two `classic-allowed` nodes agree on X25519MLKEM768; X25519 is used
/// only when one end lacks the hybrid.
pub fn kx_groups(kx: KeyExchange) -> Vec<&'static dyn SupportedKxGroup> {
    match kx {
        KeyExchange::Hybrid => vec![kx_group::X25519MLKEM768],
        KeyExchange::ClassicAllowed => vec![kx_group::X25519MLKEM768, kx_group::X25519],
        KeyExchange::ClassicOnly => vec![kx_group::X25519],
    }
}

/// aws-lc-rs with exactly our suites and groups.
pub fn provider(kx: KeyExchange) -> Arc<CryptoProvider> {
    Arc::new(CryptoProvider {
        cipher_suites: CIPHER_SUITES.to_vec(),
        kx_groups: kx_groups(kx),
        ..rustls::crypto::aws_lc_rs::default_provider()
    })
}

/// A protocol version as shown to operators ("TLSv1.3").
pub fn version_name(v: ProtocolVersion) -> String {
    match v {
        ProtocolVersion::TLSv1_3 => "TLSv1.3".into(),
        ProtocolVersion::TLSv1_2 => "TLSv1.2".into(),
        other => format!("0x{:04x}", u16::from(other)),
    }
}

/// A cipher suite's IANA name ("TLS13_AES_256_GCM_SHA384").
pub fn suite_name(s: CipherSuite) -> String {
    s.as_str()
        .map(str::to_string)
        .unwrap_or_else(|| format!("0x{:04x}", u16::from(s)))
}

/// A key-exchange group's name ("X25519MLKEM768").
pub fn group_name(g: NamedGroup) -> String {
    g.as_str()
        .map(str::to_string)
        .unwrap_or_else(|| format!("0x{:04x}", u16::from(g)))
}

fn group_list(groups: &[NamedGroup]) -> String {
    let names: Vec<String> = groups.iter().map(|g| group_name(*g)).collect();
    format!("[{}]", names.join(", "))
}

/// What one link's TLS handshake actually negotiated (read from the
/// finished connection, never from our configuration).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Negotiated {
    /// "TLSv1.3".
    pub version: String,
    /// IANA name of the cipher suite.
    pub cipher_suite: String,
    /// Name of the key-exchange group.
    pub kx_group: String,
}

impl Negotiated {
    pub fn new(version: ProtocolVersion, suite: CipherSuite, group: NamedGroup) -> Self {
        Self {
            version: version_name(version),
            cipher_suite: suite_name(suite),
            kx_group: group_name(group),
        }
    }

    /// From a finished rustls connection (the WebSocket transport).
    pub fn from_rustls<D>(conn: &rustls::ConnectionCommon<D>) -> Result<Self> {
        let (Some(v), Some(s), Some(g)) = (
            conn.protocol_version(),
            conn.negotiated_cipher_suite(),
            conn.negotiated_key_exchange_group(),
        ) else {
            bail!("TLS handshake finished without a negotiated version, suite and group");
        };
        Ok(Self::new(v, s.suite(), g.name()))
    }
}

/// What a dialler's ClientHello offered, recorded by the listener for the
/// error message when it refuses the link.
#[derive(Debug, Default)]
pub struct Offered {
    groups: Mutex<Option<Vec<NamedGroup>>>,
}

impl Offered {
    /// The supported_groups the last ClientHello listed (None before one
    /// arrived; empty when it had no such extension).
    pub fn groups(&self) -> Option<Vec<NamedGroup>> {
        self.groups.lock().ok().and_then(|g| g.clone())
    }

    /// Why a failed accept failed, when the reason is that the dialler
    /// offered no group this node accepts: names what it offered and what
    /// we accept. None when the failure had another cause (or no
    /// ClientHello arrived).
    pub fn kx_refusal(&self, kx: KeyExchange) -> Option<String> {
        let offered = self.groups()?;
        let ours: Vec<NamedGroup> = kx_groups(kx).iter().map(|g| g.name()).collect();
        if offered.iter().any(|g| ours.contains(g)) {
            return None;
        }
        Some(format!(
            "refused: the peer offered key-exchange groups {} and this node accepts only {} (netd.tls.key_exchange = {:?})",
            group_list(&offered),
            group_list(&ours),
            kx.as_str()
        ))
    }
}

/// Serves our certificate and notes what the ClientHello offered.
#[derive(Debug)]
struct RecordingResolver {
    key: Arc<CertifiedKey>,
    offered: Option<Arc<Offered>>,
}

impl ResolvesServerCert for RecordingResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        if let Some(Ok(mut g)) = self.offered.as_ref().map(|o| o.groups.lock()) {
            *g = Some(hello.named_groups().unwrap_or_default().to_vec());
        }
        Some(self.key.clone())
    }
}

/// The listening side's TLS: one config per accepted connection, so each
/// records what its own ClientHello offered.
pub struct ServerTls {
    base: rustls::ServerConfig,
    key: Arc<CertifiedKey>,
    pub key_exchange: KeyExchange,
}

impl ServerTls {
    pub fn new(id: &Identity, alpn: &[&[u8]], kx: KeyExchange) -> Result<Self> {
        let provider = provider(kx);
        let key = Arc::new(
            CertifiedKey::from_der(id.chain.clone(), id.key.clone_key(), &provider)
                .context("loading our certificate and key")?,
        );
        let mut base = server_config(provider, key.clone())?;
        base.alpn_protocols = alpn.iter().map(|a| a.to_vec()).collect();
        Ok(Self {
            base,
            key,
            key_exchange: kx,
        })
    }

    /// The config for one incoming connection, and what its ClientHello
    /// will have offered.
    pub fn for_connection(&self) -> (Arc<rustls::ServerConfig>, Arc<Offered>) {
        let offered = Arc::new(Offered::default());
        let mut cfg = self.base.clone();
        cfg.cert_resolver = Arc::new(RecordingResolver {
            key: self.key.clone(),
            offered: Some(offered.clone()),
        });
        (Arc::new(cfg), offered)
    }

    /// A config that records nothing (a QUIC endpoint's default).
    pub fn shared(&self) -> Arc<rustls::ServerConfig> {
        Arc::new(self.base.clone())
    }
}

/// The error a dialler reports when the listener ended the TLS handshake
/// with a handshake_failure alert: TLS says no more than that, so this names
/// what we offered, the likeliest cause between two Sapper nodes.
pub fn client_refusal(kx: KeyExchange) -> String {
    let ours: Vec<NamedGroup> = kx_groups(kx).iter().map(|g| g.name()).collect();
    format!(
        "the peer refused the TLS handshake (alert handshake_failure: no key-exchange group or cipher suite in common); this node offered key-exchange groups {} (netd.tls.key_exchange = {:?})",
        group_list(&ours),
        kx.as_str()
    )
}

/// Loads the configured cert/key, or the generated pair in `state_dir`,
/// generating it (mode 0600) when absent. Returns whether it was generated.
pub fn load_or_generate(
    configured: Option<&sapper_shared::config::IdentityFiles>,
    state_dir: &Path,
    name: &str,
) -> Result<(Identity, bool)> {
    let (cert_path, key_path) = match configured {
        Some(id) => (id.cert.clone(), id.key.clone()),
        None => (state_dir.join("cert.pem"), state_dir.join("key.pem")),
    };
    let mut generated = false;
    if configured.is_none() && !cert_path.exists() {
        std::fs::create_dir_all(state_dir)
            .with_context(|| format!("creating state_dir {}", state_dir.display()))?;
        let ck = rcgen::generate_simple_self_signed(vec![name.to_string()])
            .context("generating a self-signed certificate")?;
        write_private(&key_path, ck.signing_key.serialize_pem().as_bytes())?;
        write_private(&cert_path, ck.cert.pem().as_bytes())?;
        generated = true;
    }
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&cert_path)
        .with_context(|| format!("reading certificate {}", cert_path.display()))?
        .collect::<Result<_, _>>()
        .with_context(|| format!("parsing certificate {}", cert_path.display()))?;
    let Some(first) = chain.first() else {
        bail!("{} holds no certificate", cert_path.display());
    };
    let fingerprint = fingerprint(first);
    let key = PrivateKeyDer::from_pem_file(&key_path)
        .with_context(|| format!("reading private key {}", key_path.display()))?;
    Ok((
        Identity {
            chain,
            key,
            fingerprint,
        },
        generated,
    ))
}

fn write_private(path: &Path, data: &[u8]) -> Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    f.write_all(data)
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// Server side: our certificate, no client certificates (peers prove
/// themselves with the PSK proof bound to this channel).
fn server_config(
    provider: Arc<CryptoProvider>,
    key: Arc<CertifiedKey>,
) -> Result<rustls::ServerConfig> {
    let cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .context("TLS 1.3 with the aws-lc-rs provider")?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(RecordingResolver { key, offered: None }));
    Ok(cfg)
}

pub use sapper_shared::config::PeerTrust;

/// Client side config for one dial target.
pub fn client_config(
    trust: &PeerTrust,
    alpn: &[&[u8]],
    kx: KeyExchange,
) -> Result<rustls::ClientConfig> {
    let provider = provider(kx);
    let algs = provider.signature_verification_algorithms;
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .context("TLS 1.3 with the aws-lc-rs provider")?;
    let mut cfg = match trust {
        PeerTrust::Pinned(fp) => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(PinnedVerifier {
                fingerprint: *fp,
                algs,
            }))
            .with_no_client_auth(),
        PeerTrust::Ca(path) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in CertificateDer::pem_file_iter(path)
                .with_context(|| format!("reading CA file {}", path.display()))?
            {
                let c = c.with_context(|| format!("parsing CA file {}", path.display()))?;
                roots
                    .add(c)
                    .with_context(|| format!("adding CA from {}", path.display()))?;
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
    };
    cfg.alpn_protocols = alpn.iter().map(|a| a.to_vec()).collect();
    Ok(cfg)
}

/// Accepts exactly one certificate, by fingerprint. The name in it does not
/// matter: the pin is the identity. Handshake signatures are still verified,
/// so the peer must hold the pinned certificate's key.
#[derive(Debug)]
struct PinnedVerifier {
    fingerprint: [u8; 32],
    algs: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for PinnedVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let got = fingerprint(end_entity);
        // Fingerprints are public; a plain comparison leaks nothing.
        if got == self.fingerprint {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General(format!(
                "certificate fingerprint {} does not match the pinned {}",
                sapper_shared::config::format_fingerprint(&got),
                sapper_shared::config::format_fingerprint(&self.fingerprint)
            )))
        }
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::PeerIncompatible(
            rustls::PeerIncompatible::Tls12NotOffered,
        ))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algs.supported_schemes()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use KeyExchange::{ClassicAllowed, ClassicOnly, Hybrid};

    /// A throwaway self-signed identity.
    pub(crate) fn identity() -> Identity {
        let ck = rcgen::generate_simple_self_signed(vec!["node".to_string()]).unwrap();
        let cert = CertificateDer::from(ck.cert.der().to_vec());
        let key = PrivateKeyDer::Pkcs8(ck.signing_key.serialize_der().into());
        let fingerprint = fingerprint(&cert);
        Identity {
            chain: vec![cert],
            key,
            fingerprint,
        }
    }

    fn names(p: &CryptoProvider) -> (Vec<String>, Vec<String>) {
        (
            p.kx_groups.iter().map(|g| group_name(g.name())).collect(),
            p.cipher_suites
                .iter()
                .map(|s| suite_name(s.suite()))
                .collect(),
        )
    }

    const SUITES: [&str; 3] = [
        "TLS13_AES_256_GCM_SHA384",
        "TLS13_AES_128_GCM_SHA256",
        "TLS13_CHACHA20_POLY1305_SHA256",
    ];

    #[test]
    fn offered_groups_and_suites_are_pinned() {
        let id = identity();
        for (kx, groups) in [
            (Hybrid, &["X25519MLKEM768"][..]),
            (ClassicAllowed, &["X25519MLKEM768", "X25519"][..]),
            (ClassicOnly, &["X25519"][..]),
        ] {
            let server = ServerTls::new(&id, &[b"x"], kx).unwrap();
            let (per_conn, _) = server.for_connection();
            let client = client_config(&PeerTrust::Pinned(id.fingerprint), &[b"x"], kx).unwrap();
            for (side, p) in [
                ("server", per_conn.crypto_provider()),
                ("server default", server.shared().crypto_provider()),
                ("client", client.crypto_provider()),
            ] {
                let (g, s) = names(p);
                assert_eq!(g, groups, "{side} groups for {kx:?}");
                assert_eq!(s, SUITES, "{side} suites for {kx:?}");
                assert!(
                    p.cipher_suites
                        .iter()
                        .all(|s| s.version() == &rustls::version::TLS13),
                    "{side}: TLS 1.3 suites only"
                );
            }
        }
    }

    /// Runs a TLS handshake in memory; the negotiated values of both ends,
    /// or the server's error.
    #[allow(clippy::result_large_err)]
    fn handshake(
        client: rustls::ClientConfig,
        server: Arc<rustls::ServerConfig>,
    ) -> Result<(Negotiated, Negotiated), (rustls::Error, Option<rustls::Error>)> {
        let name = ServerName::try_from("node").unwrap();
        let mut c = rustls::ClientConnection::new(Arc::new(client), name).unwrap();
        let mut s = rustls::ServerConnection::new(server).unwrap();
        for _ in 0..10 {
            let mut buf = Vec::new();
            while c.wants_write() {
                c.write_tls(&mut buf).unwrap();
            }
            let mut rd = &buf[..];
            while !rd.is_empty() {
                s.read_tls(&mut rd).unwrap();
            }
            if let Err(e) = s.process_new_packets() {
                // Deliver the alert to the client.
                let mut alert = Vec::new();
                while s.wants_write() {
                    s.write_tls(&mut alert).unwrap();
                }
                let mut rd = &alert[..];
                let _ = c.read_tls(&mut rd);
                return Err((e, c.process_new_packets().err()));
            }
            let mut buf = Vec::new();
            while s.wants_write() {
                s.write_tls(&mut buf).unwrap();
            }
            let mut rd = &buf[..];
            while !rd.is_empty() {
                c.read_tls(&mut rd).unwrap();
            }
            c.process_new_packets().unwrap();
            if !c.is_handshaking() && !s.is_handshaking() {
                return Ok((
                    Negotiated::from_rustls(&c).unwrap(),
                    Negotiated::from_rustls(&s).unwrap(),
                ));
            }
        }
        panic!("handshake did not finish");
    }

    /// Who talks to whom, and what the link ends up with.
    pub(crate) const MATRIX: [(KeyExchange, KeyExchange, Option<&str>); 9] = [
        (Hybrid, Hybrid, Some("X25519MLKEM768")),
        (Hybrid, ClassicAllowed, Some("X25519MLKEM768")),
        (ClassicAllowed, Hybrid, Some("X25519MLKEM768")),
        (ClassicAllowed, ClassicAllowed, Some("X25519MLKEM768")),
        (ClassicAllowed, ClassicOnly, Some("X25519")),
        (ClassicOnly, ClassicAllowed, Some("X25519")),
        (ClassicOnly, ClassicOnly, Some("X25519")),
        (Hybrid, ClassicOnly, None),
        (ClassicOnly, Hybrid, None),
    ];

    #[test]
    fn what_each_pair_of_settings_negotiates() {
        let id = identity();
        for (client_kx, server_kx, want) in MATRIX {
            let server = ServerTls::new(&id, &[b"x"], server_kx).unwrap();
            let (cfg, offered) = server.for_connection();
            let client =
                client_config(&PeerTrust::Pinned(id.fingerprint), &[b"x"], client_kx).unwrap();
            let what = format!("client {client_kx:?}, server {server_kx:?}");
            match (handshake(client, cfg), want) {
                (Ok((c, s)), Some(group)) => {
                    assert_eq!(c, s, "{what}");
                    assert_eq!(c.kx_group, group, "{what}");
                    assert_eq!(c.version, "TLSv1.3", "{what}");
                    assert_eq!(c.cipher_suite, SUITES[0], "{what}");
                    assert_eq!(offered.kx_refusal(server_kx), None, "{what}");
                }
                (Err((server_err, client_err)), None) => {
                    assert_eq!(
                        server_err,
                        rustls::Error::PeerIncompatible(
                            rustls::PeerIncompatible::NoKxGroupsInCommon
                        ),
                        "{what}"
                    );
                    assert_eq!(
                        client_err,
                        Some(rustls::Error::AlertReceived(
                            rustls::AlertDescription::HandshakeFailure
                        )),
                        "{what}"
                    );
                    let why = offered.kx_refusal(server_kx).expect("a refusal");
                    let (offer, accept) = if client_kx == Hybrid {
                        ("[X25519MLKEM768]", "[X25519]")
                    } else {
                        ("[X25519]", "[X25519MLKEM768]")
                    };
                    assert!(
                        why.contains(&format!(
                            "peer offered key-exchange groups {offer} and this node accepts only {accept}"
                        )),
                        "{what}: {why}"
                    );
                    assert!(why.contains(server_kx.as_str()), "{why}");
                }
                (got, _) => panic!("{what}: expected {want:?}, got {got:?}"),
            }
        }
    }

    #[test]
    fn client_refusal_names_what_we_offered() {
        let m = client_refusal(ClassicAllowed);
        assert!(
            m.contains("offered key-exchange groups [X25519MLKEM768, X25519]"),
            "{m}"
        );
        assert!(m.contains("\"classic-allowed\""), "{m}");
    }
}
