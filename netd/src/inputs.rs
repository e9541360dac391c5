//! What tasks send the driver (see driver.rs), and what it keeps per link.
//! Types only, so that the node, the links and the management socket can
//! name them without depending on the driver itself.

use crate::datapath::LinkData;
use sapper_control::{Core, LinkId, LinkUp};
use sapper_shared::proto::control::ControlMessage;
use std::collections::HashMap;
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

/// Reads or changes the core (and reads the links) inside the driver.
pub type Inspector = Box<dyn FnOnce(&mut Core, &Links) + Send>;

/// Control messages waiting for one link's writer, at most.
pub const LINK_CONTROL_QUEUE: usize = 64;

/// What the driver holds for one link.
pub struct LinkHandle {
    pub data: Arc<LinkData>,
    pub control: mpsc::Sender<ControlMessage>,
    pub close: CancellationToken,
}

/// Why an operator ping got no RTT.
#[derive(Debug)]
pub enum PingFailure {
    /// No pong (or the link went down first); the peer's name.
    NoPong(String),
    /// Too many pings in flight.
    TooMany,
}

/// An operator ping's answer: the peer's name and the RTT.
pub type PingResult = Result<(String, f64), PingFailure>;

/// The driver's links, as [`Input::Inspect`] sees them.
pub type Links = HashMap<LinkId, LinkHandle>;

pub enum Input {
    LinkUp {
        id: LinkId,
        up: Box<LinkUp>,
        handle: LinkHandle,
    },
    LinkDown {
        id: LinkId,
        reason: String,
    },
    Control {
        id: LinkId,
        msg: ControlMessage,
    },
    /// Reads (or, for operator requests, changes) the core.
    Inspect(Inspector),
    Ping {
        link: LinkId,
        reply: oneshot::Sender<PingResult>,
    },
}
