//! The PSK proof: each side shows it holds the PSK, bound to this very TLS
//! channel so a proof cannot be replayed on another connection.
//!
//! `proof = HMAC-SHA256(psk, DOMAIN || side || channel_binding || handshake)`
//! where
//! - `DOMAIN` is the ASCII string `"sapper psk proof v1"` followed by a zero
//!   byte, so these MACs never collide with any other use of the key;
//! - `side` is one byte naming the *sender's* TLS role: `0x43` ('C') for the
//!   side that opened the connection, `0x53` ('S') for the side that accepted
//!   it. Both ends know both roles, so a proof the client made can never be
//!   reflected back to it as the server's;
//! - `channel_binding` is the 32-byte RFC 9266 `tls-exporter` value (exporter
//!   label `EXPORTER-Channel-Binding`, empty context), identical on both ends
//!   of one TLS session and different on every other;
//! - `handshake` is the deterministic protobuf encoding of the sender's
//!   Handshake with `psk_proof` cleared.
//!
//! Verification uses ring's constant-time comparison.
//!
//! ## Who sends first
//!
//! The proofs are not exchanged "both at once": the side that opened the
//! connection (the dialler) sends its Handshake and proof first, and the
//! side that accepted it (the listener) sends its own Handshake and proof
//! only after the dialler's proof verified. On failure the listener sends
//! a ControlError and closes, never its Handshake. The reasons:
//!
//! - anyone can finish TLS with a listener and compute `channel_binding`
//!   itself, so a listener that answered first would hand every anonymous
//!   client an HMAC over inputs the client knows: an offline oracle for
//!   guessing the PSK, plus the node's name, version, capabilities and
//!   prefixes before the client proved anything;
//! - the dialler may safely go first because it has already authenticated
//!   the listener in TLS (every connect target has a pinned fingerprint or
//!   a CA, `netd/src/target.rs`): its proof goes only to the node it meant
//!   to reach, over a channel only the two of them share.
//!
//! The MACed bytes are the same whichever side speaks first.

use crate::proto::data::Handshake;
use crate::psk::Psk;
use prost::Message;
use ring::hmac;

/// The RFC 9266 exporter label.
pub const EXPORTER_LABEL: &[u8] = b"EXPORTER-Channel-Binding";
/// Length of the exported channel binding.
pub const BINDING_LEN: usize = 32;
/// Length of a proof.
pub const PROOF_LEN: usize = 32;

const DOMAIN: &[u8] = b"sapper psk proof v1\0";

/// The TLS role of a party in one connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    /// The side that opened the connection.
    Client,
    /// The side that accepted it.
    Server,
}

impl Side {
    /// The other end.
    pub fn peer(self) -> Side {
        match self {
            Side::Client => Side::Server,
            Side::Server => Side::Client,
        }
    }

    fn tag(self) -> u8 {
        match self {
            Side::Client => b'C',
            Side::Server => b'S',
        }
    }
}

/// The `tls-exporter` channel binding of one TLS session.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct ChannelBinding(pub [u8; BINDING_LEN]);

impl std::fmt::Debug for ChannelBinding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ChannelBinding({})", hex::encode(self.0))
    }
}

/// The bytes that are MACed for `handshake` sent by `sender`.
fn signed_message(sender: Side, binding: &ChannelBinding, handshake: &Handshake) -> Vec<u8> {
    let mut hs = handshake.clone();
    hs.psk_proof.clear();
    let mut msg = Vec::with_capacity(DOMAIN.len() + 1 + BINDING_LEN + hs.encoded_len());
    msg.extend_from_slice(DOMAIN);
    msg.push(sender.tag());
    msg.extend_from_slice(&binding.0);
    hs.encode(&mut msg).unwrap_or_default();
    msg
}

/// Computes the proof for `handshake` sent by `sender` on the channel `binding`.
pub fn compute(
    psk: &Psk,
    sender: Side,
    binding: &ChannelBinding,
    handshake: &Handshake,
) -> [u8; PROOF_LEN] {
    let key = hmac::Key::new(hmac::HMAC_SHA256, psk.expose());
    let tag = hmac::sign(&key, &signed_message(sender, binding, handshake));
    let mut out = [0u8; PROOF_LEN];
    out.copy_from_slice(tag.as_ref());
    out
}

/// Checks, in constant time, that `handshake.psk_proof` is the proof `sender`
/// must have made on `binding`.
pub fn verify(psk: &Psk, sender: Side, binding: &ChannelBinding, handshake: &Handshake) -> bool {
    let key = hmac::Key::new(hmac::HMAC_SHA256, psk.expose());
    hmac::verify(
        &key,
        &signed_message(sender, binding, handshake),
        &handshake.psk_proof,
    )
    .is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::data::Capabilities;
    use zeroize::Zeroizing;

    /// RFC 4231 test case 2, through ring, to pin the primitive we build on.
    #[test]
    fn hmac_sha256_known_answer() {
        let key = hmac::Key::new(hmac::HMAC_SHA256, b"Jefe");
        let tag = hmac::sign(&key, b"what do ya want for nothing?");
        assert_eq!(
            hex::encode(tag.as_ref()),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    pub(crate) fn sample_handshake() -> Handshake {
        Handshake {
            capabilities: Some(Capabilities {
                tun_capable: true,
                listening: false,
                connecting: true,
                super_packets: false,
            }),
            name: "entry".into(),
            version: 1,
            psk_proof: vec![],
            routes: vec!["10.200.0.0/24".into()],
            hint: None,
            software: "0.1.0".into(),
            addresses: vec![],
        }
    }

    fn psk() -> Psk {
        Psk::new(Zeroizing::new(b"0123456789abcdef0123456789abcdef".to_vec())).unwrap()
    }

    /// The expected value was computed independently (Python's hmac module
    /// over the byte layout documented at the top of this module).
    #[test]
    fn proof_known_answer() {
        let binding = ChannelBinding([7u8; 32]);
        let hs = sample_handshake();
        let p = compute(&psk(), Side::Client, &binding, &hs);
        assert_eq!(hex::encode(p), PROOF_KAT);
    }

    pub(crate) const PROOF_KAT: &str =
        "af510cb78ccd38ba21f8836ad586f1297d2ae5803b4b1ef8e7259ec8dbee02c2";

    #[test]
    fn proof_is_bound_to_side_binding_and_content() {
        let binding = ChannelBinding([7u8; 32]);
        let mut hs = sample_handshake();
        hs.psk_proof = compute(&psk(), Side::Client, &binding, &hs).to_vec();
        assert!(verify(&psk(), Side::Client, &binding, &hs));
        // Reflected as if the server had sent it.
        assert!(!verify(&psk(), Side::Server, &binding, &hs));
        // Replayed on another channel.
        assert!(!verify(
            &psk(),
            Side::Client,
            &ChannelBinding([8u8; 32]),
            &hs
        ));
        // Content changed after signing.
        let mut tampered = hs.clone();
        tampered.routes.push("0.0.0.0/0".into());
        assert!(!verify(&psk(), Side::Client, &binding, &tampered));
        // Another key.
        let other = Psk::new(Zeroizing::new(b"another key of enough length!!".to_vec())).unwrap();
        assert!(!verify(&other, Side::Client, &binding, &hs));
        // Truncated proof.
        let mut short = hs.clone();
        short.psk_proof.truncate(16);
        assert!(!verify(&psk(), Side::Client, &binding, &short));
    }
}
