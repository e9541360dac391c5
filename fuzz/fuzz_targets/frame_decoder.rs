//! `FrameDecoder` fed a byte stream in chunks: never panics, never returns a
//! frame over its limit, and agrees with a plain reading of the stream. Every
//! frame is then decoded as a ControlMessage, as the control channel does.
//!
//! Input: byte 0 picks the limit, byte 1 the chunk size, the rest is the
//! stream.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sapper_shared::framing::{self, FrameDecoder, FrameError, HEADER_LEN, MAX_CONTROL_FRAME};
use sapper_shared::proto::control::ControlMessage;

fn reference(stream: &[u8], max: usize) -> (Vec<&[u8]>, Option<FrameError>) {
    let mut frames = Vec::new();
    let mut rest = stream;
    while rest.len() >= HEADER_LEN {
        let len = u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        if len > max {
            return (frames, Some(FrameError::TooLarge { len, max }));
        }
        if rest.len() < HEADER_LEN + len {
            break;
        }
        frames.push(&rest[HEADER_LEN..HEADER_LEN + len]);
        rest = &rest[HEADER_LEN + len..];
    }
    (frames, None)
}

fuzz_target!(|data: &[u8]| {
    let [sel, chunk, stream @ ..] = data else {
        return;
    };
    let max = match sel % 4 {
        0 => 0,
        1 => 16,
        2 => 1024,
        _ => MAX_CONTROL_FRAME,
    };
    let chunk = usize::from(*chunk) + 1;

    let mut d = FrameDecoder::new(max);
    let mut frames = Vec::new();
    let mut err = None;
    'feed: for c in stream.chunks(chunk) {
        d.push(c);
        loop {
            match d.next_frame() {
                Ok(Some(f)) => {
                    assert!(
                        f.len() <= max,
                        "frame of {} bytes over limit {max}",
                        f.len()
                    );
                    frames.push(f);
                }
                Ok(None) => break,
                Err(e) => {
                    // Framing is lost for good: the error must stick.
                    assert_eq!(d.next_frame().err().as_ref(), Some(&e));
                    err = Some(e);
                    break 'feed;
                }
            }
        }
    }

    let (want, want_err) = reference(stream, max);
    assert_eq!(err, want_err);
    assert_eq!(frames.len(), want.len());
    for (got, want) in frames.iter().zip(want) {
        assert_eq!(got.as_slice(), want);
        let _ = framing::decode::<ControlMessage>(got);
    }
});
