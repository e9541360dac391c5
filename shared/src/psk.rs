//! The pre-shared key: held in zeroizing memory from the moment it is read to
//! the moment it is dropped, never printed.

use std::fmt;
use std::path::Path;
use zeroize::Zeroizing;

/// Shortest PSK accepted. HMAC-SHA256 keys shorter than this are guessable.
pub const MIN_PSK_LEN: usize = 16;

/// Errors loading a PSK.
#[derive(Debug, thiserror::Error)]
pub enum PskError {
    /// The PSK file could not be read.
    #[error("cannot read PSK file {path}: {source}")]
    Read {
        /// File path.
        path: String,
        /// Underlying error.
        source: std::io::Error,
    },
    /// Group or others may read the file.
    #[error("PSK file {path} is readable by group or others (mode {mode:04o}); fix it with: chmod 600 {path}")]
    Exposed {
        /// File path.
        path: String,
        /// Its mode bits.
        mode: u32,
    },
    /// The environment variable is unset.
    #[error("environment variable {0} is not set")]
    EnvMissing(String),
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

    /// Reads the PSK from a file that only its owner may read (mode 0600
    /// or 0400); anything more open is refused with how to fix it.
    pub fn from_file(path: &Path) -> Result<Self, PskError> {
        Self::read(path, true)
    }

    /// Reads the PSK from systemd's credentials directory, which is private
    /// to the service (its mode bits may show an ACL mask instead).
    pub fn from_credential(path: &Path) -> Result<Self, PskError> {
        Self::read(path, false)
    }

    fn read(path: &Path, private: bool) -> Result<Self, PskError> {
        use std::io::Read;
        use std::os::unix::fs::MetadataExt;
        let shown = path.display().to_string();
        let io = |source| PskError::Read {
            path: shown.clone(),
            source,
        };
        let file = std::fs::File::open(path).map_err(io)?;
        // The mode of the file opened (fstat), not of whatever is at the path.
        let mode = file.metadata().map_err(io)?.mode();
        if private && mode & 0o077 != 0 {
            return Err(PskError::Exposed {
                path: shown,
                mode: mode & 0o7777,
            });
        }
        // Bounded: a PSK is a line of text.
        let mut raw = Zeroizing::new(Vec::new());
        file.take(64 * 1024).read_to_end(&mut raw).map_err(io)?;
        Self::new(raw)
    }

    /// Reads the PSK from an environment variable.
    pub fn from_env(var: &str) -> Result<Self, PskError> {
        let value = std::env::var_os(var).ok_or_else(|| PskError::EnvMissing(var.to_string()))?;
        let raw = Zeroizing::new(value.into_encoded_bytes());
        Self::new(raw)
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
    fn group_readable_file_is_refused_with_the_fix() {
        use std::os::unix::fs::PermissionsExt;
        let path = std::env::temp_dir().join(format!("psk-mode-{}", std::process::id()));
        std::fs::write(&path, "correct horse battery staple\n").unwrap();
        for mode in [0o640, 0o604, 0o644] {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            let e = Psk::from_file(&path).unwrap_err();
            assert!(matches!(e, PskError::Exposed { .. }), "{mode:o}: {e}");
            assert!(
                e.to_string()
                    .contains(&format!("chmod 600 {}", path.display())),
                "{e}"
            );
            assert!(Psk::from_credential(&path).is_ok());
        }
        for mode in [0o600, 0o400] {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            assert!(Psk::from_file(&path).is_ok(), "{mode:o}");
        }
        let _ = std::fs::remove_file(&path);
    }

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

    #[test]
    fn missing_env_is_an_error() {
        assert!(matches!(
            Psk::from_env("SAPPER_TEST_SURELY_UNSET_VAR"),
            Err(PskError::EnvMissing(_))
        ));
    }
}
