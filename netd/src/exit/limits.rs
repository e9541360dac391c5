//! Flow and memory accounting for the userspace exit: pure bookkeeping, no
//! I/O. The engine asks [`Usage::admit`] before it creates a flow and calls
//! [`Usage::release`] exactly once when the flow goes away.

use sapper_shared::config::ExitConfig;
use sapper_shared::egress::Proto;

/// Bytes moved per channel message between a TCP flow's socket task and the
/// engine.
pub const CHUNK: usize = 16 * 1024;
/// Messages each direction's channel holds.
pub const CHANNEL_DEPTH: usize = 4;
/// What an ICMP echo flow may hold: its queue of requests.
pub const ICMP_FLOW_BYTES: u64 = 16 * 1024;

/// The configured ceilings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Most open flows per protocol: [tcp, udp, icmp].
    pub max_flows: [u32; 3],
    /// Most bytes all flows may reserve together.
    pub max_bytes: u64,
    /// Per-flow buffer setting.
    pub flow_buffer: u64,
}

/// Descriptors kept back from the userspace exit's flows: listeners,
/// links, the management socket, pre-auth connections (capped by
/// `netd.limits.max_preauth`, 256 by default) and some to spare.
pub const FD_RESERVE: u64 = 512;

/// This process's soft `RLIMIT_NOFILE`.
pub fn nofile_limit() -> u64 {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes the struct we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) } == 0 {
        r.rlim_cur
    } else {
        1024
    }
}

impl Limits {
    /// The configured ceilings, fitted to the descriptors the process may
    /// open ([`nofile_limit`] less [`FD_RESERVE`]): every flow holds one
    /// socket, so flow limits beyond that would fail as EMFILE instead of
    /// as a clean refusal.
    pub fn from_config(c: &ExitConfig) -> Limits {
        Limits {
            max_flows: [
                c.max_tcp_flows.as_u32(),
                c.max_udp_flows.as_u32(),
                c.max_icmp_flows.as_u32(),
            ],
            max_bytes: c.buffers.total_bytes(),
            flow_buffer: u64::from(c.buffers.flow_bytes()),
        }
        .fit_to_descriptors(nofile_limit())
    }

    /// Most flows of protocol index `i` one peer may hold: the configured
    /// quota, else half the limit but never fewer than min(limit, 64), so
    /// that one peer cannot take every flow from the others.
    pub fn per_peer(&self, i: usize, configured: Option<u32>) -> u32 {
        let limit = self.max_flows[i];
        match configured {
            Some(n) => n.min(limit),
            None => (limit / 2).max(limit.min(64)),
        }
    }

    /// Scales the flow limits down, in proportion, so that together they fit
    /// in `nofile - FD_RESERVE` descriptors (at least one flow each).
    pub fn fit_to_descriptors(mut self, nofile: u64) -> Limits {
        let budget = nofile.saturating_sub(FD_RESERVE).max(3);
        let total: u64 = self.max_flows.iter().map(|n| u64::from(*n)).sum();
        if total > budget {
            for n in &mut self.max_flows {
                *n = ((u64::from(*n) * budget) / total).max(1) as u32;
            }
        }
        self
    }

    /// Bytes one new flow of `proto` reserves: for TCP both smoltcp buffers
    /// plus both channels; for UDP its send queue bound; for ICMP a fixed
    /// small queue.
    pub fn cost(&self, proto: Proto) -> u64 {
        match proto {
            Proto::Tcp => 2 * self.flow_buffer + 2 * (CHANNEL_DEPTH * CHUNK) as u64,
            Proto::Udp => self.flow_buffer,
            Proto::Icmp => ICMP_FLOW_BYTES,
        }
    }
}

/// The keys of `[netd.exit]` that differ between `old` and `new`, all of
/// which a running exit applies to new flows; `Err` names the one that
/// needs a restart (`enable`: starting or stopping the exit changes where
/// the tunnel's packets end).
pub fn live_change(old: &ExitConfig, new: &ExitConfig) -> Result<Vec<&'static str>, &'static str> {
    if old.enable != new.enable {
        return Err("netd.exit.enable");
    }
    let mut changed = Vec::new();
    let mut check = |key, differs: bool| {
        if differs {
            changed.push(key);
        }
    };
    check(
        "netd.exit.max_tcp_flows",
        old.max_tcp_flows != new.max_tcp_flows,
    );
    check(
        "netd.exit.max_udp_flows",
        old.max_udp_flows != new.max_udp_flows,
    );
    check(
        "netd.exit.max_icmp_flows",
        old.max_icmp_flows != new.max_icmp_flows,
    );
    check(
        "netd.exit.max_flows_per_peer",
        old.max_flows_per_peer != new.max_flows_per_peer,
    );
    check("netd.exit.*_buffer_bytes", old.buffers != new.buffers);
    check(
        "netd.exit.connect_timeout_ms",
        old.connect_timeout != new.connect_timeout,
    );
    check(
        "netd.exit.*_idle_timeout_ms",
        old.udp_idle_timeout != new.udp_idle_timeout
            || old.icmp_idle_timeout != new.icmp_idle_timeout,
    );
    check(
        "netd.exit.allow/deny/deny_local",
        format!("{:?}", old.policy) != format!("{:?}", new.policy)
            || old.deny_local != new.deny_local,
    );
    Ok(changed)
}

/// Why a new flow was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The per-protocol flow limit is reached.
    Flows(Proto),
    /// The flow's buffers would pass the total.
    Memory,
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::Flows(p) => write!(f, "max_{p}_flows reached"),
            Refusal::Memory => f.write_str("max_buffer_bytes reached"),
        }
    }
}

fn idx(p: Proto) -> usize {
    match p {
        Proto::Tcp => 0,
        Proto::Udp => 1,
        Proto::Icmp => 2,
    }
}

/// What is in use now.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Usage {
    flows: [u32; 3],
    bytes: u64,
}

impl Usage {
    /// Takes room for one flow of `proto` costing `bytes`, or says why not.
    /// A refusal changes nothing.
    pub fn admit(&mut self, limits: &Limits, proto: Proto, bytes: u64) -> Result<(), Refusal> {
        let i = idx(proto);
        if self.flows[i] >= limits.max_flows[i] {
            return Err(Refusal::Flows(proto));
        }
        if self.bytes.saturating_add(bytes) > limits.max_bytes {
            return Err(Refusal::Memory);
        }
        self.flows[i] += 1;
        self.bytes += bytes;
        Ok(())
    }

    /// Gives back what [`Usage::admit`] took.
    pub fn release(&mut self, proto: Proto, bytes: u64) {
        let i = idx(proto);
        self.flows[i] = self.flows[i].saturating_sub(1);
        self.bytes = self.bytes.saturating_sub(bytes);
    }

    pub fn flows(&self, proto: Proto) -> u32 {
        self.flows[idx(proto)]
    }

    pub fn bytes(&self) -> u64 {
        self.bytes
    }
}

/// Index of `proto` in per-protocol arrays ([tcp, udp, icmp]).
pub fn proto_index(proto: Proto) -> usize {
    idx(proto)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(tcp: u32, bytes: u64) -> Limits {
        Limits {
            max_flows: [tcp, 2, 1],
            max_bytes: bytes,
            flow_buffer: 1000,
        }
    }

    #[test]
    fn live_changes_are_named_and_enable_needs_a_restart() {
        let old = ExitConfig::default();
        assert_eq!(live_change(&old, &old.clone()), Ok(vec![]));
        let mut new = old.clone();
        new.max_tcp_flows = sapper_shared::config::Bounded::new_const(2);
        new.policy = sapper_shared::egress::Policy::new(Vec::new(), Vec::new(), false);
        assert_eq!(
            live_change(&old, &new),
            Ok(vec![
                "netd.exit.max_tcp_flows",
                "netd.exit.allow/deny/deny_local"
            ])
        );
        new.enable = Some(false);
        assert_eq!(live_change(&old, &new), Err("netd.exit.enable"));
    }

    #[test]
    fn flow_limits_per_protocol() {
        let l = limits(2, 1 << 30);
        let mut u = Usage::default();
        assert_eq!(u.admit(&l, Proto::Tcp, 10), Ok(()));
        assert_eq!(u.admit(&l, Proto::Tcp, 10), Ok(()));
        assert_eq!(u.admit(&l, Proto::Tcp, 10), Err(Refusal::Flows(Proto::Tcp)));
        // Other protocols have their own limit.
        assert_eq!(u.admit(&l, Proto::Icmp, 10), Ok(()));
        assert_eq!(
            u.admit(&l, Proto::Icmp, 10),
            Err(Refusal::Flows(Proto::Icmp))
        );
        assert_eq!((u.flows(Proto::Tcp), u.bytes()), (2, 30));
        u.release(Proto::Tcp, 10);
        assert_eq!(u.admit(&l, Proto::Tcp, 10), Ok(()));
        assert_eq!(
            Refusal::Flows(Proto::Tcp).to_string(),
            "max_tcp_flows reached"
        );
    }

    #[test]
    fn memory_limit_and_refusal_changes_nothing() {
        let l = limits(100, 25);
        let mut u = Usage::default();
        assert_eq!(u.admit(&l, Proto::Udp, 20), Ok(()));
        let before = u.clone();
        assert_eq!(u.admit(&l, Proto::Udp, 6), Err(Refusal::Memory));
        assert_eq!(u, before);
        assert_eq!(u.admit(&l, Proto::Udp, 5), Ok(()));
        // Releasing more than held saturates instead of wrapping.
        u.release(Proto::Udp, 100);
        u.release(Proto::Udp, 100);
        u.release(Proto::Udp, 100);
        assert_eq!((u.flows(Proto::Udp), u.bytes()), (0, 0));
    }

    #[test]
    fn costs_follow_the_flow_buffer() {
        let c = ExitConfig {
            buffers: sapper_shared::config::ExitBuffers::new(65536, 1 << 20).unwrap(),
            ..Default::default()
        };
        let l = Limits::from_config(&c);
        assert_eq!(
            l.cost(Proto::Tcp),
            2 * 65536 + 2 * (CHANNEL_DEPTH * CHUNK) as u64
        );
        assert_eq!(l.cost(Proto::Udp), 65536);
        assert_eq!(l.cost(Proto::Icmp), ICMP_FLOW_BYTES);
        // The config's rule for netd.exit.max_buffer_bytes assumes this many
        // bytes of channels per TCP flow.
        assert_eq!(
            (2 * CHANNEL_DEPTH * CHUNK) as u64,
            sapper_shared::config::ExitBuffers::TCP_CHANNEL_BYTES
        );
        // The defaults admit at least 500 TCP flows by memory.
        let d = Limits::from_config(&ExitConfig::default()).fit_to_descriptors(1 << 20);
        assert!(d.max_bytes / d.cost(Proto::Tcp) >= 500);
    }

    #[test]
    fn flow_limits_fit_in_the_descriptor_limit() {
        let c = ExitConfig::default();
        let l = Limits::from_config(&c).fit_to_descriptors(1 << 20);
        assert_eq!(l.max_flows, [1024, 1024, 256]);
        // systemd's default soft limit: 1024 - 512 = 512 descriptors.
        let l = Limits::from_config(&c).fit_to_descriptors(1024);
        assert!(
            l.max_flows.iter().map(|n| u64::from(*n)).sum::<u64>() <= 512,
            "{l:?}"
        );
        assert!(l.max_flows.iter().all(|n| *n >= 1));
        assert!(l.max_flows[0] > l.max_flows[2]);
    }

    #[test]
    fn per_peer_quota_is_half_but_not_below_a_small_floor() {
        let l = Limits::from_config(&ExitConfig::default()).fit_to_descriptors(1 << 20);
        assert_eq!(l.per_peer(0, None), 512);
        assert_eq!(l.per_peer(0, Some(10)), 10);
        assert_eq!(l.per_peer(0, Some(5000)), 1024);
        let small = Limits {
            max_flows: [4, 2, 1],
            ..l
        };
        assert_eq!(small.per_peer(0, None), 4);
        assert_eq!(small.per_peer(2, None), 1);
    }
}
