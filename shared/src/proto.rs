//! Types generated from `proto/*.proto`.

#![allow(missing_docs, clippy::all)]

/// `data.proto`: capabilities, handshake, roles, ping/pong.
pub mod data {
    include!(concat!(env!("OUT_DIR"), "/sapper.data.rs"));
}
/// `control.proto`: the control channel between nodes.
pub mod control {
    include!(concat!(env!("OUT_DIR"), "/sapper.control.rs"));
}
/// `management.proto`: sapperctl ⇄ netd.
pub mod management {
    include!(concat!(env!("OUT_DIR"), "/sapper.management.rs"));
}
/// `privd.proto`: netd ⇄ privd.
pub mod privd {
    include!(concat!(env!("OUT_DIR"), "/sapper.privd.rs"));
}
