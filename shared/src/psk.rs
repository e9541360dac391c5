//! The pre-shared key: held in zeroizing memory from the moment it is read to
//! the moment it is dropped, never printed. Reading it (file or
//! environment) is the daemon's business; this only checks and holds it.

use std::fmt;
use zeroize::Zeroizing;

/// Shortest PSK accepted. HMAC-SHA256 keys shorter than this are guessable.
pub const MIN_PSK_LEN: usize = 16;
/// Shorter PSKs are accepted with a warning at start: a dialler that
/// reached a listener it pinned sees the listener's proof, and a
/// low-entropy key can then be tested offline. 32 random bytes are beyond
/// that.
pub const RECOMMENDED_PSK_LEN: usize = 32;

/// Errors loading a PSK.
#[derive(Debug, thiserror::Error)]
pub enum PskError {
    /// The PSK is too short.
    #[error("PSK is {len} bytes after trimming; at least {min} are required")]
    TooShort {
        /// Length found.
        len: usize,
        /// Minimum.
        min: usize,
    },
}

/// A pre-shared key. `Debug` never shows the bytes.
#[derive(Clone)]
pub struct Psk(Zeroizing<Vec<u8>>);

impl fmt::Debug for Psk {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Psk(<redacted>)")
    }
}

impl Psk {
    /// Takes ownership of key bytes, trimming surrounding ASCII whitespace
    /// (files usually end in a newline).
    pub fn new(raw: Zeroizing<Vec<u8>>) -> Result<Self, PskError> {
        let trimmed = raw.trim_ascii();
        if trimmed.len() < MIN_PSK_LEN {
            return Err(PskError::TooShort {
                len: trimmed.len(),
                min: MIN_PSK_LEN,
            });
        }
        Ok(Self(Zeroizing::new(trimmed.to_vec())))
    }

    /// The key's length in bytes (for the start-up warning; not secret).
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Never true: an empty PSK is refused by [`Psk::new`].
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The key bytes, for HMAC only.
    pub(crate) fn expose(&self) -> &[u8] {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_redacts() {
        let p = Psk::new(Zeroizing::new(b"correct horse battery staple".to_vec())).unwrap();
        let s = format!("{p:?}");
        assert!(!s.contains("horse"), "{s}");
        assert_eq!(s, "Psk(<redacted>)");
    }

    #[test]
    fn trims_and_checks_length() {
        let p = Psk::new(Zeroizing::new(b"  0123456789abcdef\n".to_vec())).unwrap();
        assert_eq!(p.expose(), b"0123456789abcdef");
        assert!(matches!(
            Psk::new(Zeroizing::new(b"short\n".to_vec())),
            Err(PskError::TooShort { len: 5, .. })
        ));
    }
}
