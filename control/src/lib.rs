//! netd's control plane as a deterministic state machine.
//!
//! [`Core`] owns everything netd decides: the links and the roles negotiated
//! on each, this node's role and hint, the routes peers announced (with their
//! origin and the link they came over), the routes installed through privd,
//! link latency and liveness, operator pings in flight, and the management
//! event stream.
//!
//! It does no I/O, reads no clock, draws no randomness, never spawns, locks
//! or sleeps. Inputs come in through `handle_*` calls that carry `now`;
//! outputs are drained with the `poll_*` calls, and [`Core::poll_timeout`]
//! says when [`Core::handle_timeout`] is due next. netd's driver task is the
//! one async shell around it; the tests wire several cores together in
//! memory with simulated time (see `tests/sim.rs`).

mod core;
mod forwarding;
mod prefix_map;

pub use crate::core::{
    Close, Core, CoreConfig, Direction, Event, LinkUp, LinkView, LiveConfig, OperatorError,
    PingOutcome, PingReply, RouteOutcome, RouteRequest, StatusView,
};
pub use crate::forwarding::{Forwarding, ForwardingTable};
pub use crate::prefix_map::PrefixMap;

/// Identifies one link for as long as it is up; never reused by a driver.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LinkId(pub u64);

impl std::fmt::Display for LinkId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "link#{}", self.0)
    }
}
