//! The deterministic byte stream and checksum used by `sapper-blast`.

use ring::digest::{Context, SHA256};

/// An endless, deterministic pseudo-random byte stream (xorshift64*).
#[derive(Debug, Clone)]
pub struct Stream {
    state: u64,
}

impl Default for Stream {
    fn default() -> Self {
        Self::new(0x5a99_e4b1_a57c_0ffe)
    }
}

impl Stream {
    /// A stream from `seed` (zero is replaced, xorshift needs a non-zero state).
    pub fn new(seed: u64) -> Self {
        Self {
            state: if seed == 0 { 1 } else { seed },
        }
    }

    /// Fills `buf` with the next bytes of the stream.
    pub fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            self.state ^= self.state >> 12;
            self.state ^= self.state << 25;
            self.state ^= self.state >> 27;
            let v = self.state.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
}

/// A byte count and SHA-256, as `sapper-blast` prints it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    /// Bytes sent or received.
    pub bytes: u64,
    /// Lower-case hex SHA-256 of those bytes.
    pub sha256: String,
}

impl Summary {
    /// The line `sapper-blast` prints: `bytes=N sha256=HEX`.
    pub fn line(&self) -> String {
        format!("bytes={} sha256={}", self.bytes, self.sha256)
    }

    /// Finds the summary line in `sapper-blast` output.
    pub fn parse(output: &str) -> Option<Summary> {
        output.lines().find_map(|l| {
            let mut bytes = None;
            let mut sha = None;
            for field in l.split_whitespace() {
                if let Some(v) = field.strip_prefix("bytes=") {
                    bytes = v.parse().ok();
                } else if let Some(v) = field.strip_prefix("sha256=") {
                    sha = Some(v.to_string());
                }
            }
            Some(Summary {
                bytes: bytes?,
                sha256: sha?,
            })
        })
    }
}

/// Incremental byte counter plus SHA-256.
pub struct Hasher {
    ctx: Context,
    bytes: u64,
}

impl Default for Hasher {
    fn default() -> Self {
        Self {
            ctx: Context::new(&SHA256),
            bytes: 0,
        }
    }
}

impl Hasher {
    /// Adds `data`.
    pub fn update(&mut self, data: &[u8]) {
        self.ctx.update(data);
        self.bytes += data.len() as u64;
    }

    /// Bytes added so far.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// The count and digest so far.
    pub fn finish(self) -> Summary {
        let digest = self.ctx.finish();
        let sha256 = digest.as_ref().iter().map(|b| format!("{b:02x}")).collect();
        Summary {
            bytes: self.bytes,
            sha256,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_is_deterministic_and_chunking_independent() {
        let mut a = vec![0u8; 1000];
        Stream::default().fill(&mut a);
        let mut s = Stream::default();
        let mut b = vec![0u8; 1000];
        // Chunk sizes that are multiples of 8 keep the stream aligned.
        for c in b.chunks_mut(64) {
            s.fill(c);
        }
        assert_eq!(a, b);
        assert_ne!(a[..8], a[8..16]);
    }

    #[test]
    fn summary_round_trips_and_hash_is_sha256() {
        let mut h = Hasher::default();
        h.update(b"abc");
        let s = h.finish();
        assert_eq!(
            s.sha256,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(Summary::parse(&format!("noise\n{}\n", s.line())), Some(s));
        assert_eq!(Summary::parse("bytes=3\n"), None);
    }
}
