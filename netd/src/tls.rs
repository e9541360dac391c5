//! TLS material: the node's certificate (generated on first start), and the
//! rustls configs for accepting and for dialling with a pinned fingerprint
//! or a configured CA. TLS 1.3 only: RFC 9266's tls-exporter binding is
//! defined for it.

use anyhow::{bail, Context, Result};
use ring::digest;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls13_signature, CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::{DigitallySignedStruct, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::Arc;

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

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Loads the configured cert/key, or the generated pair in `state_dir`,
/// generating it (mode 0600) when absent. Returns whether it was generated.
pub fn load_or_generate(
    cert_file: Option<&Path>,
    key_file: Option<&Path>,
    state_dir: &Path,
    name: &str,
) -> Result<(Identity, bool)> {
    let (cert_path, key_path) = match (cert_file, key_file) {
        (Some(c), Some(k)) => (c.to_path_buf(), k.to_path_buf()),
        _ => (state_dir.join("cert.pem"), state_dir.join("key.pem")),
    };
    let mut generated = false;
    if cert_file.is_none() && !cert_path.exists() {
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
pub fn server_config(id: &Identity, alpn: &[&[u8]]) -> Result<rustls::ServerConfig> {
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .context("TLS 1.3 with the ring provider")?
        .with_no_client_auth()
        .with_single_cert(id.chain.clone(), id.key.clone_key())
        .context("loading our certificate and key")?;
    cfg.alpn_protocols = alpn.iter().map(|a| a.to_vec()).collect();
    Ok(cfg)
}

/// How a dialler authenticates the server.
pub enum PeerTrust {
    /// SHA-256 of the end-entity certificate.
    Pinned([u8; 32]),
    /// A CA certificate file (PEM).
    Ca(std::path::PathBuf),
}

/// Client side config for one dial target.
pub fn client_config(trust: &PeerTrust, alpn: &[&[u8]]) -> Result<rustls::ClientConfig> {
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .context("TLS 1.3 with the ring provider")?;
    let mut cfg = match trust {
        PeerTrust::Pinned(fp) => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(PinnedVerifier {
                fingerprint: *fp,
                algs: provider().signature_verification_algorithms,
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
