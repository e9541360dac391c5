//! The driver: the one task that owns the control core. Links and the
//! management socket send it [`Input`]s through one bounded channel; after
//! each input it carries out the core's outputs — control messages to the
//! links' writers, route changes to privd (one batch at a time, off the
//! async threads), events to subscribers and the log, closes, ping answers
//! — and publishes a new forwarding table when the core's changed.

use crate::datapath::Table;
use crate::inputs::{Input, Links, PingFailure, PingResult};
use crate::node::{unix_ms, Node};
use sapper_control::{Core, Event, ForwardingTable, PingOutcome, RouteOutcome, RouteRequest};
use sapper_shared::proto::management::Event as MgmtEvent;
use sapper_shared::roles::role_name;
use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

/// Inputs waiting for the driver, at most.
pub const INPUT_QUEUE: usize = 1024;
/// Operator pings in flight over all links, at most.
const MAX_PINGS: usize = 256;
/// How long a Disconnect gets to leave before the link is closed.
const GOODBYE: Duration = Duration::from_millis(100);

type PrivdBatch = JoinHandle<Vec<(RouteRequest, RouteOutcome)>>;

pub struct Driver {
    core: Core,
    node: Arc<Node>,
    links: Links,
    pings: HashMap<u64, (String, oneshot::Sender<PingResult>)>,
    next_token: u64,
    privd_queue: VecDeque<RouteRequest>,
    privd_task: Option<PrivdBatch>,
    /// Bounds the log lines each peer can cause.
    peer_log: crate::peer_log::PeerLog,
}

impl Driver {
    pub fn new(core: Core, node: Arc<Node>) -> Self {
        Self {
            core,
            node,
            links: HashMap::new(),
            pings: HashMap::new(),
            next_token: 1,
            privd_queue: VecDeque::new(),
            privd_task: None,
            peer_log: Default::default(),
        }
    }

    pub async fn run(mut self, mut rx: mpsc::Receiver<Input>) {
        loop {
            self.flush();
            let deadline = self.core.poll_timeout().map(tokio::time::Instant::from_std);
            tokio::select! {
                input = rx.recv() => match input {
                    Some(i) => self.handle(i),
                    None => return,
                },
                r = async {
                    match self.privd_task.as_mut() {
                        Some(t) => t.await,
                        None => std::future::pending().await,
                    }
                } => {
                    self.privd_task = None;
                    for (req, outcome) in r.unwrap_or_default() {
                        crate::metrics::privd_outcome(outcome);
                        self.core.handle_route_result(req, outcome);
                    }
                }
                _ = async {
                    match deadline {
                        Some(d) => tokio::time::sleep_until(d).await,
                        None => std::future::pending().await,
                    }
                } => {
                    self.core.handle_timeout(Instant::now());
                }
            }
        }
    }

    fn handle(&mut self, input: Input) {
        let now = Instant::now();
        match input {
            Input::LinkUp { id, up, handle } => {
                crate::restarted::replace_stale(&mut self.core, &up);
                self.links.insert(id, handle);
                self.core.handle_link_up(now, id, *up);
            }
            Input::LinkDown { id, reason } => {
                self.links.remove(&id);
                let name = self.core.link(id).map(|l| l.info.name).unwrap_or_default();
                self.core.handle_link_down(now, id, &reason);
                let suppressed = self.peer_log.forget(id);
                if suppressed > 0 {
                    tracing::warn!(peer = %name, suppressed, "suppressed log lines about a peer (rate limit)");
                }
            }
            Input::Control { id, msg } => {
                let pong = crate::metrics::is_pong(&msg);
                self.core.handle_control(now, id, msg);
                if pong {
                    crate::metrics::pong_seen(&self.core, id);
                }
            }
            Input::Inspect(f) => f(&mut self.core, &self.links),
            Input::Ping { link, reply } => {
                let name = self
                    .core
                    .link(link)
                    .map(|l| l.info.name)
                    .unwrap_or_default();
                if self.pings.len() >= MAX_PINGS {
                    let _ = reply.send(Err(PingFailure::TooMany));
                    return;
                }
                let token = self.next_token;
                self.next_token += 1;
                match self.core.ping(now, link, token) {
                    Ok(()) => {
                        self.pings.insert(token, (name, reply));
                    }
                    Err(sapper_control::OperatorError::TooManyPings) => {
                        let _ = reply.send(Err(PingFailure::TooMany));
                    }
                    Err(_) => {
                        let _ = reply.send(Err(PingFailure::NoPong(name)));
                    }
                }
            }
        }
    }

    /// Carries out everything the core asked for.
    fn flush(&mut self) {
        while let Some((id, msg)) = self.core.poll_transmit() {
            if let Some(l) = self.links.get(&id) {
                // A peer that does not read its control stream only loses
                // messages (pongs, pings), never blocks the driver.
                if l.control.try_send(msg).is_err() {
                    l.data.counters.drops.fetch_add(1, Relaxed);
                }
            }
        }
        while let Some(c) = self.core.poll_close() {
            if let Some(l) = self.links.get(&c.link) {
                let token = l.close.clone();
                if c.graceful {
                    tokio::spawn(async move {
                        tokio::time::sleep(GOODBYE).await;
                        token.cancel();
                    });
                } else {
                    token.cancel();
                }
            }
        }
        while let Some(r) = self.core.poll_ping_reply() {
            if let Some((name, reply)) = self.pings.remove(&r.token) {
                let _ = reply.send(match r.outcome {
                    PingOutcome::Answered(rtt) => Ok((name, rtt)),
                    PingOutcome::TimedOut | PingOutcome::LinkGone => Err(PingFailure::NoPong(name)),
                });
            }
        }
        while let Some(e) = self.core.poll_event() {
            self.event(e);
        }
        while let Some(req) = self.core.poll_route_request() {
            self.privd_queue.push_back(req);
        }
        if self.privd_task.is_none() && !self.privd_queue.is_empty() {
            let batch: Vec<RouteRequest> = self.privd_queue.drain(..).collect();
            match self.node.cfg.privd_socket.clone() {
                Some(path) => {
                    self.privd_task = Some(tokio::task::spawn_blocking(move || {
                        apply_routes(&path, batch)
                    }))
                }
                None => {
                    for req in batch {
                        self.core.handle_route_result(req, RouteOutcome::Failed);
                    }
                }
            }
        }
        if let Some(f) = self.core.poll_forwarding() {
            let links = &self.links;
            let table: Table =
                ForwardingTable::build(&f, |id| links.get(&id).map(|l| l.data.clone()));
            self.node.data.publish(table);
        }
    }

    /// Whether a line about `link` may be logged now (see peer_log.rs).
    fn peer_may_log(&mut self, link: sapper_control::LinkId) -> bool {
        match self.peer_log.check(link, Instant::now()) {
            crate::peer_log::Verdict::Log { suppressed } => {
                if suppressed > 0 {
                    let peer = self
                        .core
                        .link(link)
                        .map(|l| l.info.name)
                        .unwrap_or_default();
                    tracing::warn!(%peer, suppressed, "suppressed log lines about a peer (rate limit)");
                }
                true
            }
            crate::peer_log::Verdict::Suppress => false,
        }
    }

    fn event(&mut self, e: Event) {
        match e {
            Event::Management(body) => {
                // No subscribers is fine.
                let _ = self.node.events.send(MgmtEvent {
                    timestamp_ms: unix_ms(),
                    body: Some(*body),
                });
            }
            Event::RoleChanged { role, reason } => {
                tracing::info!(role = role_name(role), %reason, "role changed")
            }
            Event::PeerRoleChanged {
                peer,
                role,
                reason,
                link,
            } => {
                if !self.peer_may_log(link) {
                    return;
                }
                tracing::info!(%peer, role = role_name(role), %reason, "peer changed role")
            }
            Event::PeerDead { peer, missed, .. } => {
                tracing::warn!(sapper_event = "peer_disconnected", %peer, missed, "peer stopped answering pings; dropping it")
            }
            Event::PeerSaidGoodbye { peer, reason, link } => {
                if !self.peer_may_log(link) {
                    return;
                }
                tracing::info!(sapper_event = "peer_disconnected", %peer, %reason, "peer disconnected")
            }
            Event::Warning { message, link } => {
                if link.is_none_or(|l| self.peer_may_log(l)) {
                    tracing::warn!("{message}")
                }
            }
        }
    }
}

/// Applies one batch through privd, in order, on a blocking thread.
fn apply_routes(path: &PathBuf, batch: Vec<RouteRequest>) -> Vec<(RouteRequest, RouteOutcome)> {
    let mut client = match sapper_privd_client::PrivdClient::connect(path) {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(error = %e, "cannot reach privd to update routes");
            return batch
                .into_iter()
                .map(|r| (r, RouteOutcome::Failed))
                .collect();
        }
    };
    batch
        .into_iter()
        .map(|req| {
            let prefix = req.prefix;
            match client.route_change(&prefix.to_string(), req.add) {
                Ok(()) => {
                    tracing::info!(%prefix, add = req.add, "announced route applied through privd");
                    (req, RouteOutcome::Granted)
                }
                Err(e) => {
                    tracing::warn!(%prefix, add = req.add, error = %e, "privd refused an announced route");
                    (req, RouteOutcome::Refused)
                }
            }
        })
        .collect()
}
