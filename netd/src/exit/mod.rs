//! The userspace exit: on a node without a TUN (no privd, no capability,
//! any unprivileged uid) the IP packets that arrive from the entry are
//! terminated here and realised as ordinary sockets of netd's own user.
//!
//! * TCP goes through a smoltcp interface in "any IP" mode. The entry's SYN
//!   is held while netd `connect()`s to the destination; only when that
//!   succeeds does a smoltcp socket answer the SYN, so the entry's handshake
//!   completes exactly when the real one did. A refused connect becomes a RST,
//!   an unreachable or timed-out one an ICMP destination unreachable. Data
//!   moves between the smoltcp socket and the real socket through bounded
//!   channels, so a slow destination closes the window offered to the entry
//!   instead of growing buffers (see [`tcp`]).
//! * UDP: one connected socket per (source, destination) pair, closed after
//!   an idle time (see [`udp`]).
//! * ICMP echo: one unprivileged "ping" socket (`SOCK_DGRAM`/`IPPROTO_ICMP`,
//!   or ICMPv6) per (source, destination, identifier). When
//!   `net.ipv4.ping_group_range` (which governs ICMPv6 ping sockets too) does
//!   not include netd's group, the kernel refuses such sockets with EACCES:
//!   netd then answers every echo request with an ICMP destination
//!   unreachable "administratively prohibited" (so `ping` on the entry
//!   reports the failure at once instead of timing out), counts it in
//!   `icmp_unavailable` and logs a warning naming the sysctl once.
//!
//! Every new flow passes the egress policy (`sapper_shared::egress`) and the
//! limits ([`limits`]) first; a refusal is a RST (TCP) or an ICMP
//! unreachable "administratively prohibited" (UDP, echo), a counter, and one
//! log line per flow. Existing flows are never touched by a refusal.
//!
//! All flow state lives in one task, the [`engine`]; per-flow tasks own the
//! real sockets. Everything a peer can fill has a bound: the inbound queue
//! (packets and bytes), each flow's channels, smoltcp's per-socket buffers,
//! the number of flows and the bytes their buffers may reserve.

pub mod engine;
pub mod icmp;
pub mod limits;
pub mod packet;
pub mod tcp;
pub mod udp;

use crate::datapath::{DataPath, Terminus};
use anyhow::Result;
use bytes::Bytes;
use sapper_control::LinkId;
use sapper_shared::config::ExitConfig;
use sapper_shared::config::NetdConfig;
use sapper_shared::proto::management::{ExitPeerFlows, ExitStats};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Packets waiting for the engine, at most.
const INBOUND_PACKETS: usize = 4096;
/// Bytes waiting for the engine, at most.
const INBOUND_BYTES: usize = 8 << 20;

/// Counters shown by `sapperctl status`.
#[derive(Default)]
pub struct Stats {
    pub tcp_flows: AtomicU64,
    pub udp_flows: AtomicU64,
    pub icmp_flows: AtomicU64,
    pub tcp_total: AtomicU64,
    pub udp_total: AtomicU64,
    pub icmp_total: AtomicU64,
    pub refused_limit: AtomicU64,
    pub denied_flows: AtomicU64,
    pub denied_packets: AtomicU64,
    pub connect_refused: AtomicU64,
    pub connect_failed: AtomicU64,
    pub buffer_bytes: AtomicU64,
    pub max_buffer_bytes: AtomicU64,
    pub dropped: AtomicU64,
    pub icmp_unavailable: AtomicU64,
    /// Open flows per peer id: [tcp, udp, icmp].
    pub per_peer: Mutex<HashMap<u64, [u32; 3]>>,
}

/// The handle netd's data path holds.
pub struct UserspaceExit {
    inbound: mpsc::Sender<(u64, Bytes)>,
    queued: Arc<AtomicUsize>,
    pub stats: Arc<Stats>,
    /// `[netd.exit]` as the engine runs it; a reload sends a new one.
    config: tokio::sync::watch::Sender<ExitConfig>,
}

impl UserspaceExit {
    /// A reload changed `[netd.exit]`: limits, timeouts and the egress
    /// policy apply to every flow opened from now on (see
    /// [`limits::live_change`]); flows already open keep what they were
    /// admitted with until they close. Returns the keys that changed, or
    /// the key that only a restart applies.
    pub fn reconfigure(&self, new: &ExitConfig) -> Result<Vec<&'static str>, &'static str> {
        let changed = limits::live_change(&self.config.borrow(), new)?;
        if !changed.is_empty() {
            self.config.send_replace(new.clone());
        }
        Ok(changed)
    }
}

impl Terminus for UserspaceExit {
    /// Hands one packet from link `from` to the engine; never waits. A full
    /// queue drops the packet (TCP retransmits; the drop is counted).
    fn handle(&self, from: LinkId, packet: Bytes) {
        let len = packet.len();
        if self.queued.load(Relaxed) + len > INBOUND_BYTES {
            self.stats.dropped.fetch_add(1, Relaxed);
            return;
        }
        self.queued.fetch_add(len, Relaxed);
        if self.inbound.try_send((from.0, packet)).is_err() {
            self.queued.fetch_sub(len, Relaxed);
            self.stats.dropped.fetch_add(1, Relaxed);
        }
    }
}

impl UserspaceExit {
    /// The counters as management.proto reports them.
    pub fn stats_proto(&self) -> ExitStats {
        let s = &self.stats;
        let g = |a: &AtomicU64| a.load(Relaxed);
        ExitStats {
            tcp_flows: g(&s.tcp_flows),
            udp_flows: g(&s.udp_flows),
            icmp_flows: g(&s.icmp_flows),
            tcp_flows_total: g(&s.tcp_total),
            udp_flows_total: g(&s.udp_total),
            icmp_flows_total: g(&s.icmp_total),
            refused_limit: g(&s.refused_limit),
            denied_flows: g(&s.denied_flows),
            denied_packets: g(&s.denied_packets),
            connect_refused: g(&s.connect_refused),
            connect_failed: g(&s.connect_failed),
            buffer_bytes: g(&s.buffer_bytes),
            max_buffer_bytes: g(&s.max_buffer_bytes),
            dropped_packets: g(&s.dropped),
            icmp_unavailable: g(&s.icmp_unavailable),
        }
    }

    /// Flows the peer with this id has open here.
    pub fn peer_flows(&self, peer: u64) -> ExitPeerFlows {
        let c = self
            .stats
            .per_peer
            .lock()
            .ok()
            .and_then(|m| m.get(&peer).copied())
            .unwrap_or_default();
        ExitPeerFlows {
            tcp: c[0],
            udp: c[1],
            icmp: c[2],
        }
    }
}

/// Starts the userspace exit if this node should run one: no TUN, and
/// `[netd.exit] enable` not false; packets that leave the tunnel here reach
/// it through the data path, and it answers through the same.
pub fn install(
    netd: &NetdConfig,
    data: &Arc<DataPath>,
    shutdown: CancellationToken,
) -> Result<Option<Arc<UserspaceExit>>> {
    let cfg: ExitConfig = netd.exit.clone();
    if data.tun.is_some() {
        if cfg.enable == Some(true) {
            tracing::warn!("netd.exit.enable is set but this node has a TUN (privd_socket): the kernel exit is used, the userspace exit stays off");
        }
        return Ok(None);
    }
    if cfg.enable == Some(false) {
        tracing::info!("userspace exit disabled (netd.exit.enable = false)");
        return Ok(None);
    }
    let stats = Arc::new(Stats::default());
    stats
        .max_buffer_bytes
        .store(cfg.buffers.total_bytes(), Relaxed);
    let (tx, rx) = mpsc::channel(INBOUND_PACKETS);
    let queued = Arc::new(AtomicUsize::new(0));
    let (config, config_rx) = tokio::sync::watch::channel(cfg.clone());
    let exit = Arc::new(UserspaceExit {
        inbound: tx,
        queued: queued.clone(),
        stats: stats.clone(),
        config,
    });
    icmp::probe_ping_sockets();
    let engine = engine::Engine::new(data.clone(), shutdown, config_rx, stats, rx, queued)?;
    tokio::spawn(engine.run());
    if !data.set_terminus(exit.clone()) {
        anyhow::bail!("userspace exit installed twice");
    }
    let fitted = limits::Limits::from_config(&cfg);
    let nofile = limits::nofile_limit();
    if fitted.max_flows
        != [
            cfg.max_tcp_flows.as_u32(),
            cfg.max_udp_flows.as_u32(),
            cfg.max_icmp_flows.as_u32(),
        ]
    {
        tracing::warn!(
            nofile,
            reserve = limits::FD_RESERVE,
            "the userspace exit's flow limits exceed the descriptor limit (RLIMIT_NOFILE) less a reserve; lowered to fit (raise LimitNOFILE= to keep them)"
        );
    }
    tracing::info!(
        max_tcp_flows = fitted.max_flows[0],
        max_udp_flows = fitted.max_flows[1],
        max_icmp_flows = fitted.max_flows[2],
        nofile,
        flow_buffer_bytes = cfg.buffers.flow_bytes(),
        max_buffer_bytes = cfg.buffers.total_bytes(),
        deny_local = cfg.deny_local,
        "userspace exit ready: tunnel traffic leaves through this host's own sockets"
    );
    Ok(Some(exit))
}
