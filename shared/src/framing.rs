//! Length-delimited framing for protobuf messages on byte streams.
//!
//! A frame is a 4-byte big-endian length followed by that many bytes. The
//! length is checked against the caller's limit *before* any buffer for the
//! body is allocated, so a peer cannot make us reserve memory by announcing a
//! huge frame.
//!
//! WebSocket links frame by message instead: each binary message is one tag
//! byte and its body — `WS_TAG_CONTROL` + an encoded ControlMessage,
//! `WS_TAG_PACKET` + one IP packet, or (to a peer that advertised
//! `super_packets`) `WS_TAG_SUPER` + a u16 big-endian segment size + one
//! GSO super-packet, which the receiver splits or hands its TUN whole.

use bytes::{Buf, BytesMut};
use prost::Message;

/// Size of the length prefix.
pub const HEADER_LEN: usize = 4;

/// Default limit for control and management frames. Control messages are
/// small; 64 KiB leaves room for long route lists.
pub const MAX_CONTROL_FRAME: usize = 64 * 1024;

/// WebSocket links: each binary message starts with one of these tags.
/// A control message follows [`WS_TAG_CONTROL`].
pub const WS_TAG_CONTROL: u8 = 0;
/// One IP packet follows [`WS_TAG_PACKET`].
pub const WS_TAG_PACKET: u8 = 1;
/// A GSO super-packet follows [`WS_TAG_SUPER`]: a 2-byte big-endian
/// segment size (the payload bytes of every segment but the last, as the
/// sender's kernel cut them), then one IP packet of up to 64 KiB whose
/// TCP or UDP payload is that many segments long. Its transport checksum
/// need not be complete (the receiver rebuilds the offload header or
/// splits and completes it). Sent only to a peer whose Handshake set
/// `Capabilities.super_packets`; every other peer gets the segments as
/// [`WS_TAG_PACKET`] messages. A receiver trusts none of it: the IP and
/// transport headers are parsed and checked before the packet goes on.
pub const WS_TAG_SUPER: u8 = 2;
/// Bytes in front of the packet in a [`WS_TAG_SUPER`] message.
pub const WS_SUPER_HEADER: usize = 3;

/// Errors from decoding frames.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    /// The announced length exceeds the limit.
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        /// Announced length.
        len: usize,
        /// The limit in force.
        max: usize,
    },
    /// The frame body is not a valid message of the expected type.
    #[error("malformed frame: {0}")]
    Malformed(String),
}

/// Encodes `msg` as one frame.
pub fn encode<M: Message>(msg: &M) -> Vec<u8> {
    let len = msg.encoded_len();
    let mut out = Vec::with_capacity(HEADER_LEN + len);
    out.extend_from_slice(&(len as u32).to_be_bytes());
    // Encoding into a Vec cannot run out of capacity.
    msg.encode(&mut out).unwrap_or_default();
    out
}

/// Reads the body length from a header, refusing lengths over `max`.
/// Async readers call this after reading exactly [`HEADER_LEN`] bytes and
/// before allocating the body.
pub fn body_len(header: [u8; HEADER_LEN], max: usize) -> Result<usize, FrameError> {
    let len = u32::from_be_bytes(header) as usize;
    if len > max {
        return Err(FrameError::TooLarge { len, max });
    }
    Ok(len)
}

/// Decodes a frame body as `M`.
pub fn decode<M: Message + Default>(body: &[u8]) -> Result<M, FrameError> {
    M::decode(body).map_err(|e| FrameError::Malformed(e.to_string()))
}

/// Incremental decoder for callers that receive arbitrary byte chunks.
#[derive(Debug)]
pub struct FrameDecoder {
    buf: BytesMut,
    max: usize,
}

impl FrameDecoder {
    /// A decoder that refuses frames longer than `max` bytes.
    pub fn new(max: usize) -> Self {
        Self {
            buf: BytesMut::new(),
            max,
        }
    }

    /// Appends received bytes. The caller bounds how much it pushes between
    /// calls to [`FrameDecoder::next_frame`]; buffered bytes never exceed one
    /// maximal frame plus one push.
    pub fn push(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// True when no bytes are buffered (a stream may end here cleanly).
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// Returns the next complete frame body, `None` if more bytes are needed.
    /// After an error the stream is unusable: framing is lost.
    pub fn next_frame(&mut self) -> Result<Option<Vec<u8>>, FrameError> {
        if self.buf.len() < HEADER_LEN {
            return Ok(None);
        }
        let mut header = [0u8; HEADER_LEN];
        header.copy_from_slice(&self.buf[..HEADER_LEN]);
        let len = body_len(header, self.max)?;
        if self.buf.len() < HEADER_LEN + len {
            return Ok(None);
        }
        self.buf.advance(HEADER_LEN);
        Ok(Some(self.buf.split_to(len).to_vec()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::data::Ping;

    #[test]
    fn round_trip() {
        let bytes = encode(&Ping { timestamp_ms: 42 });
        let mut d = FrameDecoder::new(MAX_CONTROL_FRAME);
        d.push(&bytes[..3]);
        assert_eq!(d.next_frame(), Ok(None));
        d.push(&bytes[3..]);
        let body = d.next_frame().unwrap().unwrap();
        assert_eq!(decode::<Ping>(&body).unwrap().timestamp_ms, 42);
        assert_eq!(d.next_frame(), Ok(None));
    }

    #[test]
    fn oversize_refused_before_body_arrives() {
        let mut d = FrameDecoder::new(1024);
        // Only the header: the decoder must refuse without waiting for (or
        // reserving room for) the announced 4 GiB body.
        d.push(&u32::MAX.to_be_bytes());
        assert_eq!(
            d.next_frame(),
            Err(FrameError::TooLarge {
                len: u32::MAX as usize,
                max: 1024
            })
        );
        assert!(d.buf.capacity() < 1024);
        assert_eq!(
            body_len(2048u32.to_be_bytes(), 1024),
            Err(FrameError::TooLarge {
                len: 2048,
                max: 1024
            })
        );
        assert_eq!(body_len(1024u32.to_be_bytes(), 1024), Ok(1024));
    }

    #[test]
    fn malformed_body_is_an_error() {
        assert!(matches!(
            decode::<Ping>(&[0xff, 0xff, 0xff]),
            Err(FrameError::Malformed(_))
        ));
    }
}
