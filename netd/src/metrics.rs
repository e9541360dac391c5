//! What the OpenMetrics endpoint reports (served by metrics_http.rs).
//!
//! Two kinds of numbers:
//! - values netd already keeps (per-link counters in the data path, the
//!   control core's links and routes, the userspace exit's counters) are
//!   read at scrape time into a fresh registry, so they are exactly what
//!   `sapperctl --json stats/peers/status` shows;
//! - what only exists as events (handshakes accepted and refused, RTT
//!   samples, privd's answers, connections still before authentication)
//!   is recorded as it happens in the families of [`recorded`], a
//!   process-wide set that the call sites reach without a handle.
//!
//! Label values come from authenticated peers' names (bounded by
//! [`MAX_PEER_SERIES`]) and from fixed lists of reasons; never from
//! anything an unauthenticated connection sends, so nobody can grow the
//! label set from outside.

use crate::inputs::Links;
use crate::node::Node;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use sapper_control::Core;
use sapper_shared::proto::data::NodeRole;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::OnceLock;

/// Most peer names that get series of their own in the recorded families
/// (handshakes, RTT histogram); later names are counted under `peer="_other"`.
pub const MAX_PEER_SERIES: usize = 256;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PeerLabel {
    pub peer: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PeerReason {
    peer: String,
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PeerInfoLabel {
    peer: String,
    role: String,
    transport: String,
    direction: String,
    address: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RoleLabel {
    role: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: String,
}

type HistogramFamily = Family<PeerLabel, Histogram, fn() -> Histogram>;

/// Families recorded as things happen.
pub struct Recorded {
    handshakes: Family<PeerLabel, Counter>,
    refusals: Family<ReasonLabel, Counter>,
    rtt: HistogramFamily,
    privd: Family<OutcomeLabel, Counter>,
    quic_retries: Counter,
    peers_seen: std::sync::Mutex<std::collections::HashSet<String>>,
}

fn rtt_histogram() -> Histogram {
    // 0.1 ms .. ~3.3 s in doublings: a LAN to a bad intercontinental path.
    Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
        0.0001, 2.0, 16,
    ))
}

/// The process-wide recorded families.
pub fn recorded() -> &'static Recorded {
    static R: OnceLock<Recorded> = OnceLock::new();
    R.get_or_init(|| Recorded {
        handshakes: Family::default(),
        refusals: Family::default(),
        rtt: Family::new_with_constructor(rtt_histogram as fn() -> Histogram),
        privd: Family::default(),
        quic_retries: Counter::default(),
        peers_seen: std::sync::Mutex::new(Default::default()),
    })
}

impl Recorded {
    /// The label for `name`, or `_other` once [`MAX_PEER_SERIES`] names
    /// have series.
    fn peer(&self, name: &str) -> PeerLabel {
        let peer = match self.peers_seen.lock() {
            Ok(mut seen) if seen.contains(name) || seen.len() < MAX_PEER_SERIES => {
                seen.insert(name.to_string());
                name.to_string()
            }
            _ => "_other".to_string(),
        };
        PeerLabel { peer }
    }

    /// A peer passed the handshake.
    pub fn handshake_accepted(&self, peer: &str) {
        self.handshakes.get_or_create(&self.peer(peer)).inc();
    }

    /// A handshake was refused; `reason` is one of a fixed list
    /// (`timeout`, `link_failed`, `tls_key_exchange`, or a rejection code).
    pub fn handshake_refused(&self, reason: &str) {
        self.refusals
            .get_or_create(&ReasonLabel {
                reason: reason.to_string(),
            })
            .inc();
    }

    /// One RTT sample (a pong) from `peer`.
    pub fn rtt(&self, peer: &str, rtt_ms: f64) {
        self.rtt
            .get_or_create(&self.peer(peer))
            .observe(rtt_ms / 1000.0);
    }

    /// privd answered a route request: `granted`, `refused` or `failed`.
    pub fn privd(&self, outcome: &str) {
        self.privd
            .get_or_create(&OutcomeLabel {
                outcome: outcome.to_string(),
            })
            .inc();
    }

    /// A QUIC client was asked to prove its address (Retry): the pre-auth
    /// gate was at least half full.
    pub fn quic_retry(&self) {
        self.quic_retries.inc();
    }
}

fn counter(v: u64) -> Counter {
    let c = Counter::default();
    c.inc_by(v);
    c
}

fn gauge(v: i64) -> Gauge {
    let g = Gauge::default();
    g.set(v);
    g
}

fn role(r: NodeRole) -> String {
    sapper_shared::roles::role_name(r).to_string()
}

/// What one scrape needs from the driver (read in one `inspect`).
pub struct Snapshot {
    peers: Vec<PeerSnapshot>,
    routes_learned: usize,
    routes_installed: usize,
    role: NodeRole,
}

struct PeerSnapshot {
    name: String,
    role: String,
    transport: String,
    direction: &'static str,
    address: String,
    rtt_ms: Option<f64>,
    bytes_in: u64,
    bytes_out: u64,
    packets_in: u64,
    packets_out: u64,
    drops_queue_full: u64,
    drops_not_forwarded: u64,
    drops_malformed_super: u64,
}

/// Taken inside the driver (`Node::inspect`).
pub fn snapshot(core: &mut Core, links: &Links) -> Snapshot {
    let peers = core
        .links()
        .into_iter()
        .map(|v| {
            let c = links.get(&v.id).map(|l| &l.data.counters);
            let g = |f: fn(&crate::datapath::Counters) -> &AtomicU64| {
                c.map(|c| f(c).load(Relaxed)).unwrap_or(0)
            };
            PeerSnapshot {
                role: role(NodeRole::try_from(v.info.role).unwrap_or(NodeRole::RoleIndeterminate)),
                transport: v.info.transport.clone(),
                direction: if v.info.outbound {
                    "outbound"
                } else {
                    "inbound"
                },
                address: v.info.address.clone(),
                rtt_ms: v.info.latency_ms,
                bytes_in: g(|c| &c.bytes_in),
                bytes_out: g(|c| &c.bytes_out),
                packets_in: g(|c| &c.packets_in),
                packets_out: g(|c| &c.packets_out),
                drops_queue_full: g(|c| &c.drops_queue_full),
                drops_not_forwarded: g(|c| &c.drops_not_forwarded),
                drops_malformed_super: g(|c| &c.super_drops),
                name: v.info.name,
            }
        })
        .collect();
    Snapshot {
        peers,
        routes_learned: core.routes().len(),
        routes_installed: core.installed_routes().len(),
        role: core.role(),
    }
}

/// The OpenMetrics text of one scrape.
pub fn render(node: &Node, snap: Snapshot) -> String {
    let mut reg = Registry::default();
    // The pre-auth gate's own count (admitted, not yet authenticated):
    // one count for the limit and the metric.
    let preauth = Gauge::<i64, AtomicI64>::default();
    preauth.set(i64::try_from(node.preauth.waiting()).unwrap_or(i64::MAX));
    let peer_fam = || Family::<PeerLabel, Counter>::default();
    let (rx_b, tx_b, rx_p, tx_p) = (peer_fam(), peer_fam(), peer_fam(), peer_fam());
    let drops = Family::<PeerReason, Counter>::default();
    let rtt = Family::<PeerLabel, Gauge<f64, AtomicU64>>::default();
    let info = Family::<PeerInfoLabel, Gauge>::default();
    for p in &snap.peers {
        let l = PeerLabel {
            peer: p.name.clone(),
        };
        rx_b.get_or_create(&l).inc_by(p.bytes_in);
        tx_b.get_or_create(&l).inc_by(p.bytes_out);
        rx_p.get_or_create(&l).inc_by(p.packets_in);
        tx_p.get_or_create(&l).inc_by(p.packets_out);
        for (reason, v) in [
            ("queue_full", p.drops_queue_full),
            ("not_forwarded", p.drops_not_forwarded),
            ("malformed_super_packet", p.drops_malformed_super),
        ] {
            drops
                .get_or_create(&PeerReason {
                    peer: p.name.clone(),
                    reason: reason.into(),
                })
                .inc_by(v);
        }
        if let Some(ms) = p.rtt_ms {
            rtt.get_or_create(&l).set(ms / 1000.0);
        }
        info.get_or_create(&PeerInfoLabel {
            peer: p.name.clone(),
            role: p.role.clone(),
            transport: p.transport.clone(),
            direction: p.direction.into(),
            address: p.address.clone(),
        })
        .set(1);
    }
    reg.register(
        "sapper_peer_receive_bytes",
        "Bytes of tunnel packets received from the peer",
        rx_b,
    );
    reg.register(
        "sapper_peer_transmit_bytes",
        "Bytes of tunnel packets queued to the peer",
        tx_b,
    );
    reg.register(
        "sapper_peer_receive_packets",
        "Tunnel packets received from the peer",
        rx_p,
    );
    reg.register(
        "sapper_peer_transmit_packets",
        "Tunnel packets queued to the peer",
        tx_p,
    );
    reg.register(
        "sapper_peer_dropped_packets",
        "Packets to or from the peer dropped, by reason (queue_full: its send queue; not_forwarded: arrived while forwarding was off or with no destination; malformed_super_packet: a GSO super-packet whose headers did not check, by cause in sapper_super_packet_drops)",
        drops,
    );
    reg.register(
        "sapper_peer_rtt_seconds",
        "Smoothed control-channel round-trip time",
        rtt,
    );
    reg.register(
        "sapper_peer_link",
        "One series per live link, value 1: its role, transport, direction and remote address",
        info,
    );
    let r = recorded();
    reg.register(
        "sapper_peer_rtt_samples_seconds",
        "Control-channel round-trip times, one observation per pong",
        r.rtt.clone(),
    );
    reg.register(
        "sapper_peer_handshakes",
        "Handshakes the peer passed",
        r.handshakes.clone(),
    );
    reg.register(
        "sapper_handshake_refusals",
        "Handshakes refused, by reason (not per peer: a refused peer has no authenticated name)",
        r.refusals.clone(),
    );
    reg.register(
        "sapper_preauth_connections",
        "Inbound connections not yet authenticated (TLS or the Sapper handshake) right now: the pre-auth gate's count, which netd.limits.max_preauth bounds",
        preauth,
    );
    reg.register(
        "sapper_quic_retries",
        "QUIC connections asked to prove their address (Retry) because the pre-auth gate was half full",
        r.quic_retries.clone(),
    );
    reg.register(
        "sapper_privd_requests",
        "Route requests netd sent privd, by outcome",
        r.privd.clone(),
    );
    let s = &node.data.stats;
    reg.register(
        "sapper_tun_receive_packets",
        "Packets read from the TUN (`stats` tun_packets_in)",
        counter(s.tun_in.load(Relaxed)),
    );
    reg.register(
        "sapper_tun_transmit_packets",
        "Packets written to the TUN (`stats` tun_packets_out)",
        counter(s.tun_out.load(Relaxed)),
    );
    reg.register(
        "sapper_node_dropped_packets",
        "Packets dropped by the node itself (no route, TUN write failed, forwarding off); `stats` drops is this plus every peer's drops",
        counter(s.drops.load(Relaxed)),
    );
    reg.register(
        "sapper_handshake_failures",
        "Failed handshakes (`stats` handshake_failures)",
        counter(s.handshake_failures.load(Relaxed)),
    );
    reg.register(
        "sapper_tun_receive_super_packets",
        "GSO super-packets read from the TUN, of sapper_tun_receive_packets (`stats` tun_super_packets_in)",
        counter(s.tun_super_in.load(Relaxed)),
    );
    reg.register(
        "sapper_tun_transmit_super_packets",
        "GSO super-packets written to the TUN, of sapper_tun_transmit_packets (`stats` tun_super_packets_out)",
        counter(s.tun_super_out.load(Relaxed)),
    );
    let super_drops = Family::<ReasonLabel, Counter>::default();
    for (reason, v) in s.super_drops.snapshot() {
        super_drops
            .get_or_create(&ReasonLabel {
                reason: reason.into(),
            })
            .inc_by(v);
    }
    reg.register(
        "sapper_super_packet_drops",
        "GSO super-packets dropped, from peers (malformed) or from the TUN (could not be cut), by reason (`stats` super_packet_drops)",
        super_drops,
    );
    reg.register("sapper_peers", "Live links", gauge(snap.peers.len() as i64));
    reg.register(
        "sapper_routes_learned",
        "Routes learned from peers",
        gauge(snap.routes_learned as i64),
    );
    reg.register(
        "sapper_routes_installed",
        "Routes installed on the TUN through privd",
        gauge(snap.routes_installed as i64),
    );
    let node_role = Family::<RoleLabel, Gauge>::default();
    node_role
        .get_or_create(&RoleLabel {
            role: role(snap.role),
        })
        .set(1);
    reg.register("sapper_node_role", "This node's role, value 1", node_role);
    if let Some(x) = &node.exit {
        let st = x.stats_proto();
        let open = Family::<KindLabel, Gauge>::default();
        let total = Family::<KindLabel, Counter>::default();
        for (kind, o, t) in [
            ("tcp", st.tcp_flows, st.tcp_flows_total),
            ("udp", st.udp_flows, st.udp_flows_total),
            ("icmp", st.icmp_flows, st.icmp_flows_total),
        ] {
            let k = KindLabel { kind: kind.into() };
            open.get_or_create(&k).set(o as i64);
            total.get_or_create(&k).inc_by(t);
        }
        reg.register(
            "sapper_exit_open_flows",
            "Userspace-exit flows open now, by kind",
            open,
        );
        reg.register(
            "sapper_exit_flows",
            "Userspace-exit flows opened, by kind",
            total,
        );
        let refused = Family::<ReasonLabel, Counter>::default();
        for (reason, v) in [
            ("limit", st.refused_limit),
            ("denied_flow", st.denied_flows),
            ("denied_packet", st.denied_packets),
            ("connect_refused", st.connect_refused),
            ("connect_failed", st.connect_failed),
            ("icmp_unavailable", st.icmp_unavailable),
            ("dropped_packet", st.dropped_packets),
        ] {
            refused
                .get_or_create(&ReasonLabel {
                    reason: reason.into(),
                })
                .inc_by(v);
        }
        reg.register(
            "sapper_exit_refusals",
            "Userspace-exit refusals, by reason",
            refused,
        );
        reg.register(
            "sapper_exit_buffer_bytes",
            "Bytes reserved by userspace-exit flow buffers",
            gauge(st.buffer_bytes as i64),
        );
    }
    let mut out = String::new();
    if prometheus_client::encoding::text::encode(&mut out, &reg).is_err() {
        // Writing into a String cannot fail; keep the endpoint well-formed.
        out = "# EOF\n".into();
    }
    out
}

/// OpenMetrics text as the Prometheus text format 0.0.4: a counter's HELP
/// and TYPE lines name the sample (`x_total`, where OpenMetrics names the
/// family `x`), and there is no `# EOF`. Everything else is the same in
/// both for what [`render`] writes (no units, no `_created`, no exemplars).
pub fn to_text_format(open: &str) -> String {
    let mut out = String::with_capacity(open.len());
    let mut help: Option<&str> = None;
    for line in open.lines() {
        if line == "# EOF" {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# HELP ") {
            // Held until TYPE says whether the family is a counter.
            if let Some(h) = help.replace(rest) {
                out.push_str("# HELP ");
                out.push_str(h);
                out.push('\n');
            }
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or((rest, ""));
            let suffix = if kind == "counter" { "_total" } else { "" };
            if let Some(h) = help.take() {
                let text = h.split_once(' ').map_or("", |(_, t)| t);
                out.push_str(&format!("# HELP {name}{suffix} {text}\n"));
            }
            out.push_str(&format!("# TYPE {name}{suffix} {kind}\n"));
            continue;
        }
        if let Some(h) = help.take() {
            out.push_str("# HELP ");
            out.push_str(h);
            out.push('\n');
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// The fixed reason name of a handshake rejection.
pub fn reject_reason(code: sapper_shared::proto::control::ControlErrorCode) -> String {
    let name = code.as_str_name();
    name.strip_prefix("CONTROL_ERROR_CODE_")
        .unwrap_or(name)
        .to_ascii_lowercase()
}

/// True for a Pong (the driver then records the new RTT sample).
pub fn is_pong(msg: &sapper_shared::proto::control::ControlMessage) -> bool {
    matches!(
        msg.body,
        Some(sapper_shared::proto::control::control_message::Body::Pong(
            _
        ))
    )
}

/// After the core took a Pong on `id`: its latest RTT as one observation.
pub fn pong_seen(core: &Core, id: sapper_control::LinkId) {
    if let Some(v) = core.link(id) {
        if let Some(ms) = v.info.latency_ms {
            recorded().rtt(&v.info.name, ms);
        }
    }
}

/// privd's answer to one route request.
pub fn privd_outcome(o: sapper_control::RouteOutcome) {
    recorded().privd(match o {
        sapper_control::RouteOutcome::Granted => "granted",
        sapper_control::RouteOutcome::Refused => "refused",
        sapper_control::RouteOutcome::Failed => "failed",
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_format_names_counters_by_their_samples() {
        let open = "# HELP a_bytes Bytes.\n# TYPE a_bytes counter\na_bytes_total{peer=\"x\"} 3\n# HELP g A gauge.\n# TYPE g gauge\ng 1\n# EOF\n";
        assert_eq!(
            to_text_format(open),
            "# HELP a_bytes_total Bytes.\n# TYPE a_bytes_total counter\na_bytes_total{peer=\"x\"} 3\n# HELP g A gauge.\n# TYPE g gauge\ng 1\n"
        );
    }
}
