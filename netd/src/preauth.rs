//! The gate in front of every listener: how many connections may be
//! between their first packet and a passed Sapper handshake, over all and
//! per source address. An unauthenticated client costs a socket, TLS state
//! and a task; without this gate any number of them would fit.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

/// The canonical form of a peer address: an IPv4 peer seen on a dual-stack
/// socket (`::ffff:a.b.c.d`) is the IPv4 address it is.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map(IpAddr::V4)
            .unwrap_or(IpAddr::V6(v6)),
        v4 => v4,
    }
}

#[derive(Default)]
struct Counts {
    total: usize,
    per_ip: HashMap<IpAddr, usize>,
}

/// Counts connections not yet authenticated.
pub struct PreAuth {
    max: usize,
    max_per_ip: usize,
    counts: Mutex<Counts>,
    /// Connections refused at the gate.
    pub refused: AtomicU64,
}

/// Why the gate turned a connection away.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Full {
    /// Too many pre-auth connections over all.
    Total,
    /// Too many from this address.
    ThisAddress,
}

/// One connection's place at the gate; given back when dropped (the
/// handshake passed, failed or timed out).
pub struct Ticket {
    gate: Arc<PreAuth>,
    ip: IpAddr,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut c = self.gate.counts.lock().unwrap_or_else(|e| e.into_inner());
        c.total = c.total.saturating_sub(1);
        if let Some(n) = c.per_ip.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                c.per_ip.remove(&self.ip);
            }
        }
    }
}

impl PreAuth {
    pub fn new(max: usize, max_per_ip: usize) -> Arc<Self> {
        Arc::new(Self {
            max: max.max(1),
            max_per_ip: max_per_ip.max(1),
            counts: Mutex::new(Counts::default()),
            refused: AtomicU64::new(0),
        })
    }

    /// A place for a connection from `ip`, or why there is none.
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<Ticket, Full> {
        let ip = canonical(ip);
        let mut c = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        let full = if c.total >= self.max {
            Some(Full::Total)
        } else if c.per_ip.get(&ip).copied().unwrap_or(0) >= self.max_per_ip {
            Some(Full::ThisAddress)
        } else {
            None
        };
        if let Some(f) = full {
            self.refused.fetch_add(1, Relaxed);
            return Err(f);
        }
        c.total += 1;
        *c.per_ip.entry(ip).or_insert(0) += 1;
        Ok(Ticket {
            gate: self.clone(),
            ip,
        })
    }

    /// More than half the places are taken: QUIC asks new clients to prove
    /// their address (Retry) before it spends anything on them.
    pub fn under_pressure(&self) -> bool {
        let c = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        c.total * 2 >= self.max
    }

    /// Connections at the gate now (admitted, not yet authenticated; the
    /// `sapper_preauth_connections` gauge).
    pub fn waiting(&self) -> usize {
        self.counts.lock().unwrap_or_else(|e| e.into_inner()).total
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_total_and_per_address_and_frees_on_drop() {
        let gate = PreAuth::new(3, 2);
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let a_mapped: IpAddr = "::ffff:192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let t1 = gate.admit(a).unwrap();
        let _t2 = gate.admit(a_mapped).unwrap();
        // The mapped form is the same address.
        assert_eq!(gate.admit(a).err(), Some(Full::ThisAddress));
        let _t3 = gate.admit(b).unwrap();
        assert!(gate.under_pressure());
        assert_eq!(
            gate.admit("192.0.2.3".parse().unwrap()).err(),
            Some(Full::Total)
        );
        drop(t1);
        assert_eq!(gate.waiting(), 2);
        assert!(gate.admit(a).is_ok());
        assert_eq!(gate.refused.load(Relaxed), 2);
    }
}
