//! QUIC's stateless-reset key, kept across restarts in `state_dir`.
//!
//! A QUIC endpoint that receives a packet for a connection it does not know
//! answers with a stateless reset whose token is an HMAC of the packet's
//! connection ID under this key. The peer recognises it only when the token
//! equals the one the endpoint issued when the connection was live, so only
//! a key that survives a restart lets a restarted node close its peers'
//! stale connections at once: they redial within their backoff (250 ms by
//! default) instead of waiting for missed pings or QUIC's idle timeout.
//!
//! The file holds 32 random bytes, mode 0600, created with `create_new`; a
//! file of another length is refused (naming it) rather than silently
//! replaced, since it may be an operator's mistake.

use anyhow::{bail, Context, Result};
use ring::hmac;
use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;
use std::sync::Arc;

/// The key file's name inside `state_dir`.
pub const FILE_NAME: &str = "quic-reset-key";
/// Bytes of key material.
pub const KEY_LEN: usize = 32;

/// An HMAC-SHA256 key for quinn.
pub struct ResetKey(hmac::Key);

impl ResetKey {
    /// The connection-ID generator's key, derived from the secret (one
    /// file, two uses that cannot be confused: a labelled HMAC).
    fn cid_key(&self) -> u64 {
        let tag = hmac::sign(&self.0, b"sapper quic connection-id key");
        let mut b = [0u8; 8];
        b.copy_from_slice(&tag.as_ref()[..8]);
        u64::from_le_bytes(b)
    }
}

impl quinn::crypto::HmacKey for ResetKey {
    fn sign(&self, data: &[u8], signature_out: &mut [u8]) {
        let tag = hmac::sign(&self.0, data);
        let n = signature_out.len().min(tag.as_ref().len());
        signature_out[..n].copy_from_slice(&tag.as_ref()[..n]);
    }

    fn signature_len(&self) -> usize {
        hmac::HMAC_SHA256.digest_algorithm().output_len()
    }

    fn verify(&self, data: &[u8], signature: &[u8]) -> Result<(), quinn::crypto::CryptoError> {
        hmac::verify(&self.0, data, signature).map_err(|_| quinn::crypto::CryptoError)
    }
}

static KEY: std::sync::OnceLock<Arc<ResetKey>> = std::sync::OnceLock::new();

/// Loads (or creates) the key once at start, before the sandbox closes
/// `state_dir` to writes; every QUIC endpoint then uses it.
pub fn init(state_dir: &Path) -> Result<()> {
    let key = load_or_create(state_dir)?;
    let _ = KEY.set(key);
    Ok(())
}

/// The endpoint config every QUIC endpoint of this node uses: listener and
/// dialler alike (a dialler's stale connection on the peer is reset by the
/// peer's listener, a listener's by the dialler's endpoint).
pub fn endpoint_config() -> quinn::EndpointConfig {
    match KEY.get() {
        Some(k) => {
            let mut cfg = quinn::EndpointConfig::new(k.clone());
            // quinn answers a packet for an unknown connection with a reset
            // only when its connection ID validates, i.e. was made by a
            // generator with the same key: derived from the same secret, so
            // a restarted node recognises its predecessor's IDs.
            let cid_key = k.cid_key();
            cfg.cid_generator(move || {
                Box::new(quinn_proto::HashedConnectionIdGenerator::from_key(cid_key))
            });
            cfg
        }
        // Only before init (unit tests): a random key, as quinn's default.
        None => quinn::EndpointConfig::default(),
    }
}

/// Reads the key from `state_dir`, creating it on first start.
pub fn load_or_create(state_dir: &Path) -> Result<Arc<ResetKey>> {
    let path = state_dir.join(FILE_NAME);
    let shown = path.display();
    let mut raw = zeroize::Zeroizing::new([0u8; KEY_LEN]);
    match std::fs::File::open(&path) {
        Ok(f) => {
            let meta = f.metadata().with_context(|| format!("fstat {shown}"))?;
            if meta.mode() & 0o077 != 0 {
                bail!(
                    "{shown} is readable by group or others (mode {:04o}); fix it with: chmod 600 {shown}",
                    meta.mode() & 0o7777
                );
            }
            if meta.len() != KEY_LEN as u64 {
                bail!(
                    "{shown} holds {} bytes, not {KEY_LEN}; remove it to have a new key made",
                    meta.len()
                );
            }
            let mut f = f;
            f.read_exact(raw.as_mut())
                .with_context(|| format!("reading {shown}"))?;
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), raw.as_mut())
                .map_err(|_| anyhow::anyhow!("the system's random number generator failed"))?;
            std::fs::create_dir_all(state_dir)
                .with_context(|| format!("creating state_dir {}", state_dir.display()))?;
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)
                .with_context(|| format!("creating {shown}"))?;
            f.write_all(raw.as_ref())
                .and_then(|()| f.sync_all())
                .with_context(|| format!("writing {shown}"))?;
            tracing::info!(file = %shown, "created QUIC's stateless-reset key");
        }
        Err(e) => return Err(e).with_context(|| format!("reading {shown}")),
    }
    Ok(Arc::new(ResetKey(hmac::Key::new(
        hmac::HMAC_SHA256,
        raw.as_ref(),
    ))))
}

#[cfg(test)]
mod tests {
    use super::*;
    use quinn::crypto::HmacKey;

    fn scratch(tag: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("sapper-reset-key-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn persists_and_signs_the_same() {
        let d = scratch("persist");
        let a = load_or_create(&d).unwrap();
        let b = load_or_create(&d).unwrap();
        let mut sa = [0u8; 32];
        let mut sb = [0u8; 32];
        a.sign(b"cid", &mut sa);
        b.sign(b"cid", &mut sb);
        assert_eq!(sa, sb, "a reloaded key must give the same reset tokens");
        assert!(b.verify(b"cid", &sa).is_ok());
        assert!(b.verify(b"other", &sa).is_err());
        let mode = std::fs::metadata(d.join(FILE_NAME)).unwrap().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn refuses_bad_files() {
        let d = scratch("bad");
        std::fs::create_dir_all(&d).unwrap();
        let p = d.join(FILE_NAME);
        std::fs::write(&p, b"short").unwrap();
        std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
        let e = format!("{:#}", load_or_create(&d).err().unwrap());
        assert!(e.contains("5 bytes"), "{e}");
        std::fs::write(&p, [7u8; 32]).unwrap();
        std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
        let e = format!("{:#}", load_or_create(&d).err().unwrap());
        assert!(e.contains("chmod 600"), "{e}");
        let _ = std::fs::remove_dir_all(&d);
    }
}
