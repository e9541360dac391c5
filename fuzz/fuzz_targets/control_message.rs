//! A ControlMessage, as a node reads it from a peer on the control channel.
//! Decoding arbitrary bytes never panics, and whatever decodes re-encodes
//! canonically: decode, encode, decode, encode gives the same bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use prost::Message;
use sapper_shared::framing;
use sapper_shared::proto::control;

fuzz_target!(|data: &[u8]| {
    if let Ok(msg) = framing::decode::<control::ControlMessage>(data) {
        let canonical = msg.encode_to_vec();
        let again = framing::decode::<control::ControlMessage>(&canonical)
            .expect("canonical encoding must decode");
        assert_eq!(again.encode_to_vec(), canonical);
    }
});
