//! The library every Sapper binary shares: generated protocol types, stream
//! framing, the PSK proof and handshake state machine, latency bookkeeping and
//! configuration types. Nothing in here performs I/O; the daemons wire these
//! pieces to sockets at their edges.

pub mod backoff;
pub mod config;
pub mod egress;
pub mod framing;
pub mod handshake;
pub mod latency;
pub mod peer_limits;
pub mod posture;
pub mod proof;
pub mod proto;
pub mod psk;
pub mod rate;
pub mod roles;
pub mod routing;
pub mod sockdir;
pub mod text;

/// Wire protocol version carried in every Handshake.
pub const PROTOCOL_VERSION: u32 = 1;

/// Software version, informational.
pub const SOFTWARE_VERSION: &str = env!("CARGO_PKG_VERSION");
