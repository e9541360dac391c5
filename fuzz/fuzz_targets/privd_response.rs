//! A PrivResponse, as netd reads it from privd.
//! Decoding arbitrary bytes never panics, and whatever decodes re-encodes
//! canonically: decode, encode, decode, encode gives the same bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use prost::Message;
use sapper_shared::framing;
use sapper_shared::proto::privd;

fuzz_target!(|data: &[u8]| {
    if let Ok(msg) = framing::decode::<privd::PrivResponse>(data) {
        let canonical = msg.encode_to_vec();
        let again = framing::decode::<privd::PrivResponse>(&canonical)
            .expect("canonical encoding must decode");
        assert_eq!(again.encode_to_vec(), canonical);
    }
});
