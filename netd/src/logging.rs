//! Where netd's log lines go. Under systemd (stderr is the journal stream)
//! events go to journald with their fields as journal fields, so an auditor
//! can run `journalctl SAPPER_EVENT=handshake_refused`; otherwise plain text
//! or JSON lines on stderr.
//!
//! Events an auditor relies on carry `sapper_event` (journal field
//! SAPPER_EVENT) and, where there is one, `peer` (PEER) or `peer_uid`
//! (PEER_UID). Secrets are never put in fields.

use std::os::fd::AsRawFd;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer, Registry};

/// Output format of lines written to stderr.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line, event fields at the top level.
    Json,
}

/// Installs the global subscriber. `format` given explicitly always wins;
/// without it, journald is used when stderr is the journal, text otherwise.
/// Returns a note to log once logging works (e.g. why journald was not used).
pub fn init(format: Option<LogFormat>) -> Option<String> {
    let filter = EnvFilter::try_from_env("SAPPER_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let mut note = None;
    let journald = match format {
        None if stderr_is_journal() => match tracing_journald::layer() {
            // No "F_" prefix: the fields are named as documented (PEER, not F_PEER).
            Ok(l) => Some(l.with_field_prefix(None)),
            Err(e) => {
                note = Some(format!(
                    "JOURNAL_STREAM is set but journald is unreachable ({e}); logging to stderr"
                ));
                None
            }
        },
        _ => None,
    };
    let layer: Box<dyn Layer<Registry> + Send + Sync> = match (journald, format) {
        (Some(j), _) => j.boxed(),
        (None, Some(LogFormat::Json)) => tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .with_writer(std::io::stderr)
            .boxed(),
        (None, _) => tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .boxed(),
    };
    tracing_subscriber::registry()
        .with(layer.with_filter(filter))
        .init();
    note
}

/// True when systemd connected our stderr to the journal: JOURNAL_STREAM
/// names the device and inode of that stream. Checking the inode (as
/// sd_journal_stream_fd's documentation asks) keeps a child whose stderr was
/// redirected from logging to the journal behind its caller's back.
fn stderr_is_journal() -> bool {
    let Some(v) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let Some((dev, ino)) = v.to_str().and_then(|s| s.split_once(':')) else {
        return false;
    };
    let (Ok(dev), Ok(ino)) = (dev.parse::<u64>(), ino.parse::<u64>()) else {
        return false;
    };
    match nix::sys::stat::fstat(std::io::stderr().as_raw_fd()) {
        Ok(st) => st.st_dev == dev && st.st_ino == ino,
        Err(_) => false,
    }
}

/// SHA-256 of the config text, in hex, for the "config loaded" event: an
/// auditor can tell which configuration a run used without the file's
/// contents (which may name secret paths) being logged.
pub fn config_hash(text: &[u8]) -> String {
    hex::encode(ring::digest::digest(&ring::digest::SHA256, text))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_hash_is_sha256_hex() {
        assert_eq!(
            config_hash(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
