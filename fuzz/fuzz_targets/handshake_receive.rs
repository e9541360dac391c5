//! `Handshaker::receive`, the judge of the first control frame from a peer.
//!
//! Byte 0 picks the mode, this side's TLS role and whether a PSK is set; the
//! rest is the input.
//!
//! - Raw mode: the input is the frame body as received. Never panics; with a
//!   PSK configured it is never accepted (no proof can be forged); a second
//!   call reports `AlreadyDone`.
//! - Signed mode: the input is decoded as a Handshake, which an honest peer
//!   holding the same PSK signs and sends. This gets arbitrary field values
//!   past the proof check, so validation itself is fuzzed: the verdict must
//!   be acceptance exactly when the fields are valid, else `Malformed` (or
//!   `VersionMismatch`).
#![no_main]

use libfuzzer_sys::fuzz_target;
use prost::Message;
use sapper_shared::handshake::{Handshaker, Reject, MAX_NAME_LEN, MAX_ROUTES};
use sapper_shared::proof::{ChannelBinding, Side};
use sapper_shared::proto::data::{Capabilities, Handshake};
use sapper_shared::psk::Psk;
use sapper_shared::PROTOCOL_VERSION;
use zeroize::Zeroizing;

const BINDING: ChannelBinding = ChannelBinding([0x5a; 32]);

fn psk() -> Psk {
    Psk::new(Zeroizing::new(b"fuzzing pre-shared key, 32 bytes".to_vec())).expect("valid PSK")
}

fn local() -> Handshake {
    Handshake {
        capabilities: Some(Capabilities::default()),
        name: "local".into(),
        version: PROTOCOL_VERSION,
        ..Default::default()
    }
}

fn valid(h: &Handshake) -> bool {
    h.capabilities.is_some()
        && !h.name.is_empty()
        && h.name.len() <= MAX_NAME_LEN
        && h.name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        && h.routes.len() <= MAX_ROUTES
        && h.routes.iter().all(|r| r.parse::<ipnet::IpNet>().is_ok())
}

fuzz_target!(|data: &[u8]| {
    let [sel, body @ ..] = data else {
        return;
    };
    let side = if sel & 1 == 0 {
        Side::Client
    } else {
        Side::Server
    };
    let key = (sel & 2 != 0).then(psk);
    let signed = sel & 4 != 0;

    if !signed {
        let has_psk = key.is_some();
        let mut h = Handshaker::new(local(), side, BINDING, key);
        let verdict = h.receive(body);
        if has_psk {
            assert!(
                verdict.is_err(),
                "accepted without a valid proof: {verdict:?}"
            );
        }
        if let Err(e) = &verdict {
            let _ = e.code();
        }
        assert_eq!(h.receive(body), Err(Reject::AlreadyDone));
        return;
    }

    let Ok(peer_hs) = Handshake::decode(body) else {
        return;
    };
    let peer = Handshaker::new(peer_hs.clone(), side.peer(), BINDING, key.clone());
    let mut me = Handshaker::new(local(), side, BINDING, key);
    let verdict = me.receive(&peer.outgoing().encode_to_vec());
    if peer_hs.version != PROTOCOL_VERSION {
        assert_eq!(
            verdict,
            Err(Reject::VersionMismatch {
                ours: PROTOCOL_VERSION,
                theirs: peer_hs.version
            })
        );
    } else if valid(&peer_hs) {
        let acc = verdict.expect("valid honest handshake rejected");
        assert_eq!(acc.peer.name, peer_hs.name);
        assert_eq!(acc.peer.routes, peer_hs.routes);
        assert_eq!(acc.routes.len(), peer_hs.routes.len());
    } else {
        assert!(
            matches!(verdict, Err(Reject::Malformed(_))),
            "invalid handshake got {verdict:?}"
        );
    }
});
