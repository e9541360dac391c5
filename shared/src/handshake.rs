//! The handshake state machine. It takes the local Handshake, this side's TLS
//! role, the channel binding and the PSK, produces the first control message
//! to send, and judges the first control message received. The caller moves
//! bytes and enforces the timeout, and keeps the order the protocol fixes
//! (`crate::proof`, "Who sends first"): the client sends
//! [`Handshaker::outgoing`] first; the server sends it only after
//! [`Handshaker::receive`] accepted the client's.

use crate::framing::{self, FrameError};
use crate::proof::{self, ChannelBinding, Side};
use crate::proto::control::{control_message::Body, ControlMessage};
use crate::proto::data::Handshake;
use crate::psk::Psk;
use crate::PROTOCOL_VERSION;
use ipnet::IpNet;

/// Longest node name accepted.
pub const MAX_NAME_LEN: usize = 64;
/// Most routes one Handshake may carry.
pub use crate::routing::MAX_ROUTES;

/// Why a peer's handshake was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Reject {
    /// Bytes did not decode, or a field is invalid.
    #[error("malformed handshake: {0}")]
    Malformed(String),
    /// A message other than a Handshake arrived first.
    #[error("expected a handshake, got another control message")]
    Unexpected,
    /// The peer speaks another protocol version.
    #[error("protocol version mismatch: ours {ours}, peer's {theirs}")]
    VersionMismatch {
        /// Our version.
        ours: u32,
        /// The peer's.
        theirs: u32,
    },
    /// We require a PSK and the peer sent no proof.
    #[error("peer sent no PSK proof but this node requires one")]
    MissingPsk,
    /// The peer proved a PSK but this node has none configured.
    #[error("peer sent a PSK proof but this node has no PSK configured")]
    NoLocalPsk,
    /// The proof did not verify: wrong PSK, replay or tampering.
    #[error("PSK proof did not verify (wrong PSK?)")]
    BadProof,
    /// `receive` was called again after a verdict.
    #[error("handshake already finished")]
    AlreadyDone,
    /// The peer answered with a ControlError (the listener refused our
    /// proof, our version, …) instead of its Handshake.
    #[error("the peer refused the handshake (code {code}): {message}")]
    PeerRefused {
        /// The peer's error code.
        code: i32,
        /// The peer's message, truncated to [`MAX_PEER_MESSAGE`] bytes.
        message: String,
    },
}

/// Longest part of a peer's error message kept.
pub const MAX_PEER_MESSAGE: usize = 200;

impl Reject {
    /// The control-channel error code to tell the peer before closing.
    pub fn code(&self) -> crate::proto::control::ControlErrorCode {
        use crate::proto::control::ControlErrorCode as C;
        match self {
            Reject::Malformed(_) => C::Malformed,
            Reject::Unexpected | Reject::AlreadyDone | Reject::PeerRefused { .. } => C::Unexpected,
            Reject::VersionMismatch { .. } => C::VersionMismatch,
            Reject::MissingPsk | Reject::NoLocalPsk => C::MissingPsk,
            Reject::BadProof => C::BadProof,
        }
    }
}

impl From<FrameError> for Reject {
    fn from(e: FrameError) -> Self {
        Reject::Malformed(e.to_string())
    }
}

/// A verified peer handshake.
#[derive(Debug, Clone, PartialEq)]
pub struct Accepted {
    /// The peer's Handshake (proof included, already checked).
    pub peer: Handshake,
    /// The peer's routes, parsed.
    pub routes: Vec<IpNet>,
    /// The peer's tunnel addresses, as host prefixes.
    pub addresses: Vec<IpNet>,
}

/// Most tunnel addresses one Handshake may carry.
pub const MAX_ADDRESSES: usize = 16;

#[derive(Debug, PartialEq, Eq)]
enum State {
    AwaitingPeer,
    Done,
}

/// One side's handshake.
#[derive(Debug)]
pub struct Handshaker {
    local: Handshake,
    side: Side,
    binding: ChannelBinding,
    psk: Option<Psk>,
    state: State,
}

impl Handshaker {
    /// Prepares this side's Handshake, signing it when a PSK is configured.
    /// `local.psk_proof` is overwritten.
    pub fn new(
        mut local: Handshake,
        side: Side,
        binding: ChannelBinding,
        psk: Option<Psk>,
    ) -> Self {
        local.psk_proof.clear();
        if let Some(psk) = &psk {
            local.psk_proof = proof::compute(psk, side, &binding, &local).to_vec();
        }
        Self {
            local,
            side,
            binding,
            psk,
            state: State::AwaitingPeer,
        }
    }

    /// The control message to send first.
    pub fn outgoing(&self) -> ControlMessage {
        ControlMessage {
            body: Some(Body::Handshake(self.local.clone())),
        }
    }

    /// The control message to send first, framed.
    pub fn outgoing_frame(&self) -> Vec<u8> {
        framing::encode(&self.outgoing())
    }

    /// Judges the body of the first control frame received from the peer.
    pub fn receive(&mut self, body: &[u8]) -> Result<Accepted, Reject> {
        if self.state == State::Done {
            return Err(Reject::AlreadyDone);
        }
        self.state = State::Done;
        let msg: ControlMessage = framing::decode(body)?;
        let peer = match msg.body {
            Some(Body::Handshake(h)) => h,
            Some(Body::Error(e)) => {
                return Err(Reject::PeerRefused {
                    code: e.code,
                    message: crate::text::sanitize(&e.message, MAX_PEER_MESSAGE),
                })
            }
            Some(_) => return Err(Reject::Unexpected),
            None => return Err(Reject::Malformed("empty control message".into())),
        };
        if peer.version != PROTOCOL_VERSION {
            return Err(Reject::VersionMismatch {
                ours: PROTOCOL_VERSION,
                theirs: peer.version,
            });
        }
        let routes = validate(&peer)?;
        let addresses = parse_addresses(&peer.addresses)?;
        match (&self.psk, peer.psk_proof.is_empty()) {
            (Some(_), true) => return Err(Reject::MissingPsk),
            (None, false) => return Err(Reject::NoLocalPsk),
            (None, true) => {}
            (Some(psk), false) => {
                if !proof::verify(psk, self.side.peer(), &self.binding, &peer) {
                    return Err(Reject::BadProof);
                }
            }
        }
        Ok(Accepted {
            peer,
            routes,
            addresses,
        })
    }
}

/// A peer's tunnel addresses: bare addresses, at most [`MAX_ADDRESSES`].
pub fn parse_addresses<S: AsRef<str>>(list: &[S]) -> Result<Vec<IpNet>, Reject> {
    if list.len() > MAX_ADDRESSES {
        return Err(Reject::Malformed(format!(
            "{} addresses, at most {MAX_ADDRESSES}",
            list.len()
        )));
    }
    list.iter()
        .map(|a| {
            a.as_ref()
                .parse::<std::net::IpAddr>()
                .map(IpNet::from)
                .map_err(|_| {
                    Reject::Malformed(format!("address {:?} is not an IP address", a.as_ref()))
                })
        })
        .collect()
}

/// Checks the fields a peer controls.
fn validate(h: &Handshake) -> Result<Vec<IpNet>, Reject> {
    if h.capabilities.is_none() {
        return Err(Reject::Malformed("capabilities missing".into()));
    }
    if h.name.is_empty() || h.name.len() > MAX_NAME_LEN {
        return Err(Reject::Malformed(format!(
            "name must be 1..={MAX_NAME_LEN} bytes"
        )));
    }
    if !valid_name(&h.name) {
        return Err(Reject::Malformed(
            "name may contain only ASCII letters, digits, '-', '_' and '.'".into(),
        ));
    }
    crate::routing::parse_prefixes(&h.routes).map_err(|e| match e {
        crate::routing::PrefixError::TooMany(n) => {
            Reject::Malformed(format!("{n} routes, at most {MAX_ROUTES}"))
        }
        crate::routing::PrefixError::NotAPrefix(r) => {
            Reject::Malformed(format!("route {r:?} is not a CIDR prefix"))
        }
    })
}

/// The one rule for node names (and interface names): 1 to
/// [`MAX_NAME_LEN`] ASCII letters, digits, '-', '_' or '.'.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::framing::FrameDecoder;
    use crate::proto::data::{Capabilities, Ping};
    use zeroize::Zeroizing;

    fn hs(name: &str, tun: bool) -> Handshake {
        Handshake {
            capabilities: Some(Capabilities {
                tun_capable: tun,
                listening: !tun,
                connecting: tun,
                super_packets: true,
            }),
            name: name.into(),
            version: PROTOCOL_VERSION,
            psk_proof: vec![],
            routes: if tun {
                vec![]
            } else {
                vec!["10.200.0.0/24".into(), "fd00:200::/64".into()]
            },
            hint: None,
            software: "test".into(),
            addresses: vec![],
        }
    }

    fn psk(s: &[u8]) -> Option<Psk> {
        Some(Psk::new(Zeroizing::new(s.to_vec())).unwrap())
    }

    const K: &[u8] = b"shared secret of enough length";
    const B: ChannelBinding = ChannelBinding([0x5a; 32]);

    /// Runs both sides over an in-memory duplex: each side's outgoing frame
    /// is pushed byte-by-byte through a FrameDecoder as a stream would be.
    fn exchange(
        mut client: Handshaker,
        mut server: Handshaker,
    ) -> (Result<Accepted, Reject>, Result<Accepted, Reject>) {
        let to_server = client.outgoing_frame();
        let to_client = server.outgoing_frame();
        let deliver = |bytes: &[u8]| {
            let mut d = FrameDecoder::new(framing::MAX_CONTROL_FRAME);
            for b in bytes {
                d.push(std::slice::from_ref(b));
            }
            d.next_frame().unwrap().unwrap()
        };
        let s = server.receive(&deliver(&to_server));
        let c = client.receive(&deliver(&to_client));
        (c, s)
    }

    #[test]
    fn bidirectional_exchange_succeeds() {
        let c = Handshaker::new(hs("entry", true), Side::Client, B, psk(K));
        let s = Handshaker::new(hs("exit", false), Side::Server, B, psk(K));
        let (c, s) = exchange(c, s);
        let c = c.unwrap();
        let s = s.unwrap();
        assert_eq!(c.peer.name, "exit");
        assert_eq!(c.routes.len(), 2);
        assert_eq!(s.peer.name, "entry");
    }

    #[test]
    fn no_psk_on_either_side_is_accepted() {
        let c = Handshaker::new(hs("entry", true), Side::Client, B, None);
        let s = Handshaker::new(hs("exit", false), Side::Server, B, None);
        let (c, s) = exchange(c, s);
        assert!(c.is_ok() && s.is_ok());
    }

    #[test]
    fn wrong_psk_rejected_on_both_sides() {
        let c = Handshaker::new(hs("entry", true), Side::Client, B, psk(K));
        let s = Handshaker::new(
            hs("exit", false),
            Side::Server,
            B,
            psk(b"a different secret, long enough"),
        );
        let (c, s) = exchange(c, s);
        assert_eq!(c, Err(Reject::BadProof));
        assert_eq!(s, Err(Reject::BadProof));
    }

    #[test]
    fn missing_psk_rejected() {
        let c = Handshaker::new(hs("entry", true), Side::Client, B, None);
        let s = Handshaker::new(hs("exit", false), Side::Server, B, psk(K));
        let (c, s) = exchange(c, s);
        assert_eq!(s, Err(Reject::MissingPsk));
        assert_eq!(c, Err(Reject::NoLocalPsk));
    }

    #[test]
    fn proof_from_another_channel_rejected() {
        // An attacker relays the client's handshake, captured on channel A,
        // into its own TLS session B with the server.
        let captured = Handshaker::new(hs("entry", true), Side::Client, B, psk(K)).outgoing();
        let mut server = Handshaker::new(
            hs("exit", false),
            Side::Server,
            ChannelBinding([0x11; 32]),
            psk(K),
        );
        let body = prost::Message::encode_to_vec(&captured);
        assert_eq!(server.receive(&body), Err(Reject::BadProof));
    }

    #[test]
    fn reflected_proof_rejected() {
        // The server's own handshake sent back to it must not verify as the
        // client's, even on the same channel.
        let server = Handshaker::new(hs("exit", false), Side::Server, B, psk(K));
        let reflected = prost::Message::encode_to_vec(&server.outgoing());
        let mut server2 = Handshaker::new(hs("exit", false), Side::Server, B, psk(K));
        assert_eq!(server2.receive(&reflected), Err(Reject::BadProof));
    }

    #[test]
    fn malformed_first_message_rejected() {
        let mut s = Handshaker::new(hs("exit", false), Side::Server, B, psk(K));
        assert!(matches!(
            s.receive(&[0x0a, 0xff, 0x01]),
            Err(Reject::Malformed(_))
        ));
        assert_eq!(s.receive(&[]), Err(Reject::AlreadyDone));

        let mut s = Handshaker::new(hs("exit", false), Side::Server, B, psk(K));
        assert!(matches!(s.receive(&[]), Err(Reject::Malformed(_))));

        let ping = ControlMessage {
            body: Some(Body::Ping(Ping { timestamp_ms: 1 })),
        };
        let mut s = Handshaker::new(hs("exit", false), Side::Server, B, psk(K));
        assert_eq!(
            s.receive(&prost::Message::encode_to_vec(&ping)),
            Err(Reject::Unexpected)
        );
    }

    #[test]
    fn invalid_fields_rejected() {
        let check = |mutate: &dyn Fn(&mut Handshake)| {
            let mut h = hs("entry", true);
            mutate(&mut h);
            let c = Handshaker::new(h, Side::Client, B, psk(K));
            let mut s = Handshaker::new(hs("exit", false), Side::Server, B, psk(K));
            s.receive(&prost::Message::encode_to_vec(&c.outgoing()))
        };
        assert!(matches!(
            check(&|h| h.name.clear()),
            Err(Reject::Malformed(_))
        ));
        assert!(matches!(
            check(&|h| h.name = "bad name\n".into()),
            Err(Reject::Malformed(_))
        ));
        assert!(matches!(
            check(&|h| h.routes = vec!["not-a-cidr".into()]),
            Err(Reject::Malformed(_))
        ));
        assert!(matches!(
            check(&|h| h.capabilities = None),
            Err(Reject::Malformed(_))
        ));
        assert_eq!(
            check(&|h| h.version = 99),
            Err(Reject::VersionMismatch {
                ours: PROTOCOL_VERSION,
                theirs: 99
            })
        );
    }

    /// The listener answers a bad proof with a ControlError, never its
    /// Handshake: the dialler reports the listener's refusal, bounded and
    /// escaped.
    #[test]
    fn a_refusal_instead_of_a_handshake_is_reported() {
        use crate::proto::control::ControlError;
        let mut c = Handshaker::new(hs("entry", true), Side::Client, B, psk(K));
        let refusal = ControlMessage {
            body: Some(Body::Error(ControlError {
                code: 3,
                message: format!("bad\nproof{}", "x".repeat(1000)),
            })),
        };
        match c.receive(&prost::Message::encode_to_vec(&refusal)) {
            Err(Reject::PeerRefused { code, message }) => {
                assert_eq!(code, 3);
                assert!(!message.contains('\n'), "{message}");
                assert!(message.len() <= MAX_PEER_MESSAGE + 16, "{}", message.len());
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn debug_output_has_no_psk() {
        let secret = b"super secret psk material 12345";
        let h = Handshaker::new(hs("entry", true), Side::Client, B, psk(secret));
        let dbg = format!("{h:?}");
        assert!(!dbg.contains("super secret"));
    }
}
