//! A management Request, as netd reads it from sapperctl.
//! Decoding arbitrary bytes never panics, and whatever decodes re-encodes
//! canonically: decode, encode, decode, encode gives the same bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use prost::Message;
use sapper_shared::framing;
use sapper_shared::proto::management;

fuzz_target!(|data: &[u8]| {
    if let Ok(msg) = framing::decode::<management::Request>(data) {
        let canonical = msg.encode_to_vec();
        let again = framing::decode::<management::Request>(&canonical)
            .expect("canonical encoding must decode");
        assert_eq!(again.encode_to_vec(), canonical);
    }
});
