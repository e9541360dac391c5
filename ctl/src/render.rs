//! Human tables and stable JSON for management responses. The JSON field
//! names are part of sapperctl's interface (documented in the README).

use sapper_shared::proto::data::{Capabilities, NodeRole};
use sapper_shared::proto::management::{
    event, response::Body as Resp, ErrorCode, Event, ExitStats, PeerInfo, StatusResponse,
};
use sapper_shared::proto::privd::PrivStatus;
use serde_json::{json, Value};
use std::time::{SystemTime, UNIX_EPOCH};

pub fn error_code(code: i32) -> &'static str {
    ErrorCode::try_from(code)
        .map(|c| c.as_str_name())
        .unwrap_or("UNKNOWN")
}

fn role(r: i32) -> &'static str {
    sapper_shared::roles::role_name(sapper_shared::roles::role_from_wire(r))
}

fn caps_json(c: &Option<Capabilities>) -> Value {
    let c = c.unwrap_or_default();
    json!({"tun_capable": c.tun_capable, "listening": c.listening, "connecting": c.connecting, "super_packets": c.super_packets})
}

pub fn status_json(s: &StatusResponse) -> Value {
    json!({
        "name": s.name,
        "version": s.version,
        "role": role(s.role),
        "role_reason": s.role_reason,
        "uptime_s": s.uptime_s,
        "listeners": s.listeners.iter().map(|l| json!({"address": l.address, "transport": l.transport})).collect::<Vec<_>>(),
        "cert_fingerprint": s.cert_fingerprint,
        "tun": s.tun.as_ref().map(|t| json!({"name": t.name, "addresses": t.addresses, "mtu": t.mtu, "offloads": t.offloads})),
        "peer_count": s.peer_count,
        "exit_mode": if s.exit_mode.is_empty() { "none" } else { s.exit_mode.as_str() },
        "exit": s.exit.as_ref().map(exit_json),
        "landlock": s.landlock,
        "pid": s.pid,
        "announced_routes": s.announced_routes,
        "announce_source": s.announce_source,
    })
}

/// The userspace exit's counters (`status --json` → `exit`).
pub fn exit_json(x: &ExitStats) -> Value {
    json!({
        "tcp_flows": x.tcp_flows,
        "udp_flows": x.udp_flows,
        "icmp_flows": x.icmp_flows,
        "tcp_flows_total": x.tcp_flows_total,
        "udp_flows_total": x.udp_flows_total,
        "icmp_flows_total": x.icmp_flows_total,
        "refused_limit": x.refused_limit,
        "denied_flows": x.denied_flows,
        "denied_packets": x.denied_packets,
        "connect_refused": x.connect_refused,
        "connect_failed": x.connect_failed,
        "buffer_bytes": x.buffer_bytes,
        "max_buffer_bytes": x.max_buffer_bytes,
        "dropped_packets": x.dropped_packets,
        "icmp_unavailable": x.icmp_unavailable,
    })
}

/// How a peer that is an exit realises traffic: a TUN-capable exit uses the
/// kernel (TUN + NAT), a TUN-less one the userspace exit.
pub fn peer_exit_mode(p: &PeerInfo) -> Option<&'static str> {
    (NodeRole::try_from(p.role) == Ok(NodeRole::RoleExit)).then(|| {
        if p.capabilities.unwrap_or_default().tun_capable {
            "kernel"
        } else {
            "userspace"
        }
    })
}

pub fn peer_json(p: &PeerInfo) -> Value {
    json!({
        "name": p.name,
        "address": p.address,
        "transport": p.transport,
        "outbound": p.outbound,
        "capabilities": caps_json(&p.capabilities),
        "role": role(p.role),
        "latency_ms": p.latency_ms,
        "bytes_in": p.bytes_in,
        "bytes_out": p.bytes_out,
        "packets_in": p.packets_in,
        "packets_out": p.packets_out,
        "drops": p.drops,
        "source_drops": p.source_drops,
        "control_drops": p.control_drops,
        "super_packet_drops": p.super_packet_drops,
        "routes_refused": p.routes_refused,
        "connected_at": p.connected_at,
        "routes": p.routes,
        "link_reason": p.link_reason,
        "exit_mode": peer_exit_mode(p),
        "exit_flows": p.exit_flows.map(|f| json!({"tcp": f.tcp, "udp": f.udp, "icmp": f.icmp})),
        "tls": p.tls.as_ref().map(|t| json!({
            "version": t.version,
            "cipher_suite": t.cipher_suite,
            "kx_group": t.kx_group,
        })),
    })
}

pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

pub fn ago(unix_s: u64) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    duration(now.saturating_sub(unix_s)) + " ago"
}

pub fn duration(s: u64) -> String {
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m", s / 60),
        3600..=86399 => format!("{}h{}m", s / 3600, (s % 3600) / 60),
        _ => format!("{}d{}h", s / 86400, (s % 86400) / 3600),
    }
}

/// Left-aligned columns sized to their widest cell.
/// One of privd's last refusals (its JSON audit line) as JSON: the line's
/// object, or the text when it is not one.
pub fn refusal_json(line: &str) -> Value {
    serde_json::from_str::<Value>(line)
        .ok()
        .filter(Value::is_object)
        .unwrap_or_else(|| json!(line))
}

/// One of privd's last refusals for people: its time and message, escaped.
pub fn refusal_text(line: &str) -> String {
    let v = refusal_json(line);
    match (
        v.get("ts").and_then(Value::as_str),
        v.get("msg").and_then(Value::as_str),
    ) {
        (Some(ts), Some(msg)) => clean(&format!("{ts} {msg}")),
        _ => clean(line),
    }
}

/// What a daemon (and so possibly a peer) put in a string, fit for a
/// terminal: control characters escaped, length bounded.
pub fn clean(s: &str) -> String {
    sapper_shared::text::sanitize(s, sapper_shared::text::MAX_PEER_STRING)
}

/// Left-aligned columns sized to their widest cell; every cell cleaned.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let rows: Vec<Vec<String>> = rows
        .iter()
        .map(|r| r.iter().map(|c| clean(c)).collect())
        .collect();
    let mut width: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in &rows {
        for (i, c) in r.iter().enumerate() {
            width[i] = width[i].max(c.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<w$}", w = width[i]))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_string()
    };
    let mut out = vec![line(header.iter().map(|h| h.to_string()).collect())];
    out.extend(rows.into_iter().map(line));
    out.join("\n")
}

pub fn render(body: &Resp, json_out: bool) -> String {
    match body {
        Resp::Status(s) if json_out => status_json(s).to_string(),
        Resp::Status(s) => {
            let mut out = vec![
                format!("node:        {} ({})", s.name, s.version),
                format!("role:        {}", s.role_reason),
                format!("uptime:      {}", duration(s.uptime_s)),
                format!("fingerprint: {}", s.cert_fingerprint),
                format!("peers:       {}", s.peer_count),
            ];
            match &s.tun {
                Some(t) => out.push(format!(
                    "tun:         {} mtu {} {}{}",
                    t.name,
                    t.mtu,
                    t.addresses.join(" "),
                    if t.offloads.is_empty() {
                        String::new()
                    } else {
                        format!(" offloads {}", t.offloads.join(","))
                    }
                )),
                None => out.push("tun:         none (no privd)".into()),
            }
            for l in &s.listeners {
                out.push(format!("listening:   {} {}", l.transport, l.address));
            }
            out.push(format!(
                "announces:   {}{}",
                if s.announced_routes.is_empty() {
                    "nothing".to_string()
                } else {
                    s.announced_routes.iter().map(|r| clean(r)).collect::<Vec<_>>().join(" ")
                },
                if s.announce_source == "interfaces" {
                    " (networks of this node's interfaces)"
                } else {
                    ""
                }
            ));
            match (&s.exit, s.exit_mode.as_str()) {
                (Some(x), _) => {
                    out.push(format!(
                        "exit:        userspace; flows tcp {} udp {} icmp {} (opened {}/{}/{}); buffers {} of {}",
                        x.tcp_flows,
                        x.udp_flows,
                        x.icmp_flows,
                        x.tcp_flows_total,
                        x.udp_flows_total,
                        x.icmp_flows_total,
                        human_bytes(x.buffer_bytes),
                        human_bytes(x.max_buffer_bytes)
                    ));
                    out.push(format!(
                        "             refused {} by limits, {} flows denied by policy; connects refused {} failed {}; dropped {}; echo without ping sockets {}",
                        x.refused_limit,
                        x.denied_flows,
                        x.connect_refused,
                        x.connect_failed,
                        x.dropped_packets,
                        x.icmp_unavailable
                    ));
                }
                (None, "kernel") => out.push("exit:        kernel (TUN and privd NAT)".into()),
                _ => {}
            }
            out.join("\n")
        }
        Resp::Peers(p) if json_out => {
            json!({"peers": p.peers.iter().map(peer_json).collect::<Vec<_>>()}).to_string()
        }
        Resp::Peers(p) if p.peers.is_empty() => "no peers connected".into(),
        Resp::Peers(p) => {
            let flows = p.peers.iter().any(|p| p.exit_flows.is_some());
            let mut header = vec![
                "NAME",
                "ADDRESS",
                "TRANSPORT",
                "ROLE",
                "LATENCY",
                "IN",
                "OUT",
                "CONNECTED",
                "TLS",
                "KEY EXCHANGE",
            ];
            if flows {
                header.push("EXIT FLOWS");
            }
            let rows = p
                .peers
                .iter()
                .map(|p| {
                    let role = match peer_exit_mode(p) {
                        Some(mode) => format!("exit ({mode})"),
                        None => role(p.role).into(),
                    };
                    let mut row = vec![
                        p.name.clone(),
                        p.address.clone(),
                        p.transport.clone(),
                        role,
                        p.latency_ms
                            .map(|l| format!("{l:.1} ms"))
                            .unwrap_or_else(|| "-".into()),
                        human_bytes(p.bytes_in),
                        human_bytes(p.bytes_out),
                        ago(p.connected_at),
                        p.tls
                            .as_ref()
                            .map(|t| format!("{} {}", t.version, t.cipher_suite))
                            .unwrap_or_else(|| "-".into()),
                        p.tls
                            .as_ref()
                            .map(|t| t.kx_group.clone())
                            .unwrap_or_else(|| "-".into()),
                    ];
                    if flows {
                        row.push(match p.exit_flows {
                            Some(f) => format!("tcp {} udp {} icmp {}", f.tcp, f.udp, f.icmp),
                            None => "-".into(),
                        });
                    }
                    row
                })
                .collect::<Vec<_>>();
            table(&header, &rows)
        }
        Resp::Stats(st) if json_out => json!({
            "tun_packets_in": st.tun_packets_in,
            "tun_packets_out": st.tun_packets_out,
            "drops": st.drops,
            "handshake_failures": st.handshake_failures,
            "bytes_in": st.bytes_in,
            "bytes_out": st.bytes_out,
            "super_packet_drops": st.super_packet_drops,
            "tun_super_packets_in": st.tun_super_packets_in,
            "tun_super_packets_out": st.tun_super_packets_out,
        })
        .to_string(),
        Resp::Stats(st) => [
            format!("tun packets in:     {}", st.tun_packets_in),
            format!("tun packets out:    {}", st.tun_packets_out),
            format!(
                "super-packets:      {} in, {} out",
                st.tun_super_packets_in, st.tun_super_packets_out
            ),
            format!("bytes in:           {}", human_bytes(st.bytes_in)),
            format!("bytes out:          {}", human_bytes(st.bytes_out)),
            format!("drops:              {}", st.drops),
            format!("handshake failures: {}", st.handshake_failures),
            format!(
                "super-packet drops: {}",
                st.super_packet_drops.values().sum::<u64>()
            ),
        ]
        .join("\n"),
        Resp::Routes(r) if json_out => json!({
            "routes": r.routes.iter().map(|r| json!({"prefix": r.prefix, "peer": r.peer})).collect::<Vec<_>>()
        })
        .to_string(),
        Resp::Routes(r) if r.routes.is_empty() => "no routes".into(),
        Resp::Routes(r) => table(
            &["PREFIX", "PEER"],
            &r.routes
                .iter()
                .map(|r| {
                    let peer = if r.peer.is_empty() { "-".into() } else { r.peer.clone() };
                    vec![r.prefix.clone(), peer]
                })
                .collect::<Vec<_>>(),
        ),
        Resp::Ok(_) => {
            if json_out {
                json!({"ok": true}).to_string()
            } else {
                "ok".into()
            }
        }
        other => format!("{other:?}"),
    }
}

/// One line per event: JSON object or human text.
pub fn event_line(ev: &Event, json_out: bool) -> String {
    let (kind, detail): (&str, Value) = match &ev.body {
        Some(event::Body::PeerConnected(p)) => ("peer_connected", peer_json(p)),
        Some(event::Body::PeerDisconnected(d)) => (
            "peer_disconnected",
            json!({"name": d.name, "reason": d.reason}),
        ),
        Some(event::Body::RouteAdded(r)) => {
            ("route_added", json!({"prefix": r.prefix, "peer": r.peer}))
        }
        Some(event::Body::RouteRemoved(r)) => {
            ("route_removed", json!({"prefix": r.prefix, "peer": r.peer}))
        }
        Some(event::Body::Error(e)) => ("error", json!({"message": e})),
        None => ("unknown", Value::Null),
    };
    if json_out {
        return json!({"timestamp_ms": ev.timestamp_ms, "event": kind, "detail": detail})
            .to_string();
    }
    let text = match &ev.body {
        Some(event::Body::PeerConnected(p)) => format!(
            "{} connected from {} over {}",
            p.name, p.address, p.transport
        ),
        Some(event::Body::PeerDisconnected(d)) => format!("{} disconnected: {}", d.name, d.reason),
        Some(event::Body::RouteAdded(r)) => format!("route {} added", r.prefix),
        Some(event::Body::RouteRemoved(r)) => format!("route {} removed", r.prefix),
        Some(event::Body::Error(e)) => format!("error: {e}"),
        None => "unknown event".into(),
    };
    format!("{} {}", ev.timestamp_ms, clean(&text))
}

pub fn privd_status(s: &PrivStatus, json_out: bool) -> String {
    if json_out {
        return json!({
            "tun_name": s.tun_name,
            "routes": s.routes,
            "nat_active": s.nat_active,
            "forwarding": s.forwarding,
            "granted": s.granted,
            "refused": s.refused,
            "offloads": s.offloads,
            "last_refusals": s.last_refusals.iter().map(|l| refusal_json(l)).collect::<Vec<_>>(),
        })
        .to_string();
    }
    [
        format!(
            "tun:        {}",
            if s.tun_name.is_empty() {
                "-"
            } else {
                &s.tun_name
            }
        ),
        format!(
            "routes:     {}",
            if s.routes.is_empty() {
                "-".into()
            } else {
                s.routes.join(" ")
            }
        ),
        format!("nat:        {}", if s.nat_active { "on" } else { "off" }),
        format!("forwarding: {}", if s.forwarding { "on" } else { "off" }),
        format!(
            "offloads:   {}",
            if s.offloads.is_empty() {
                "off".into()
            } else {
                s.offloads.join(" ")
            }
        ),
        format!("requests:   {} granted, {} refused", s.granted, s.refused),
    ]
    .into_iter()
    .chain(
        s.last_refusals
            .iter()
            .map(|l| format!("refused:    {}", refusal_text(l))),
    )
    .collect::<Vec<_>>()
    .join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_strings_reach_the_terminal_escaped_and_bounded() {
        let ev = Event {
            timestamp_ms: 1,
            body: Some(event::Body::PeerDisconnected(
                sapper_shared::proto::management::PeerDisconnected {
                    name: "rogue".into(),
                    reason: format!("bye\x1b[2J\r\nfake line{}", "x".repeat(5000)),
                },
            )),
        };
        let line = event_line(&ev, false);
        assert!(
            !line.contains('\x1b') && !line.contains('\n') && !line.contains('\r'),
            "{line}"
        );
        assert!(line.contains("\\u{1b}[2J"), "{line}");
        assert!(line.len() < 400, "{}", line.len());
        let t = table(&["A"], &[vec!["a\u{202e}b".into()]]);
        assert!(t.contains("a\\u{202e}b"), "{t}");
    }

    #[test]
    fn units_and_tables() {
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(3 * 1024 * 1024), "3.0 MiB");
        assert_eq!(duration(42), "42s");
        assert_eq!(duration(180), "3m");
        assert_eq!(duration(3723), "1h2m");
        let t = table(&["A", "LONGER"], &[vec!["wide cell".into(), "x".into()]]);
        assert_eq!(t, "A          LONGER\nwide cell  x");
    }

    #[test]
    fn peer_json_has_documented_fields() {
        let p = PeerInfo {
            name: "exit".into(),
            latency_ms: Some(1.5),
            role: NodeRole::RoleExit as i32,
            ..Default::default()
        };
        let v = peer_json(&p);
        for k in [
            "name",
            "address",
            "transport",
            "role",
            "latency_ms",
            "bytes_in",
            "bytes_out",
            "packets_in",
            "packets_out",
            "connected_at",
            "capabilities",
        ] {
            assert!(v.get(k).is_some(), "missing {k}");
        }
        assert_eq!(v["role"], "exit");
        assert_eq!(v["latency_ms"], 1.5);
        // A TUN-less exit is a userspace exit.
        assert_eq!(v["exit_mode"], "userspace");
        assert!(v["exit_flows"].is_null());
    }

    #[test]
    fn peers_show_the_negotiated_tls() {
        use sapper_shared::proto::management::{LinkTls, PeersResponse};
        let peers = PeersResponse {
            peers: vec![PeerInfo {
                name: "exit".into(),
                tls: Some(LinkTls {
                    version: "TLSv1.3".into(),
                    cipher_suite: "TLS13_AES_256_GCM_SHA384".into(),
                    kx_group: "X25519MLKEM768".into(),
                }),
                ..Default::default()
            }],
            ..Default::default()
        };
        let text = render(&Resp::Peers(peers.clone()), false);
        assert!(
            text.contains("TLSv1.3 TLS13_AES_256_GCM_SHA384  X25519MLKEM768"),
            "{text}"
        );
        let v: Value = serde_json::from_str(&render(&Resp::Peers(peers), true)).unwrap();
        assert_eq!(v["peers"][0]["tls"]["version"], "TLSv1.3");
        assert_eq!(
            v["peers"][0]["tls"]["cipher_suite"],
            "TLS13_AES_256_GCM_SHA384"
        );
        assert_eq!(v["peers"][0]["tls"]["kx_group"], "X25519MLKEM768");
        // A netd without the field: null in JSON, "-" in the table.
        let old = PeersResponse {
            peers: vec![PeerInfo::default()],
            ..Default::default()
        };
        let v: Value = serde_json::from_str(&render(&Resp::Peers(old), true)).unwrap();
        assert!(v["peers"][0]["tls"].is_null());
    }

    #[test]
    fn exit_fields_in_status_and_peers() {
        use sapper_shared::proto::management::{ExitPeerFlows, PeersResponse};
        let s = StatusResponse {
            name: "exit".into(),
            exit_mode: "userspace".into(),
            exit: Some(ExitStats {
                tcp_flows: 3,
                refused_limit: 2,
                max_buffer_bytes: 1 << 20,
                ..Default::default()
            }),
            ..Default::default()
        };
        let v = status_json(&s);
        assert_eq!(v["exit_mode"], "userspace");
        assert_eq!(v["exit"]["tcp_flows"], 3);
        assert_eq!(v["exit"]["refused_limit"], 2);
        let text = render(&Resp::Status(s), false);
        assert!(
            text.contains("exit:        userspace; flows tcp 3"),
            "{text}"
        );
        let old = status_json(&StatusResponse::default());
        assert_eq!(old["exit_mode"], "none");
        assert!(old["exit"].is_null());

        let peers = PeersResponse {
            peers: vec![PeerInfo {
                name: "entry".into(),
                role: NodeRole::RoleEntry as i32,
                exit_flows: Some(ExitPeerFlows {
                    tcp: 1,
                    udp: 2,
                    icmp: 0,
                }),
                ..Default::default()
            }],
            ..Default::default()
        };
        let text = render(&Resp::Peers(peers.clone()), false);
        assert!(text.contains("EXIT FLOWS"), "{text}");
        assert!(text.contains("KEY EXCHANGE"), "{text}");
        assert!(text.contains("tcp 1 udp 2 icmp 0"), "{text}");
        let v: Value = serde_json::from_str(&render(&Resp::Peers(peers), true)).unwrap();
        assert_eq!(v["peers"][0]["exit_flows"]["udp"], 2);
        assert!(v["peers"][0]["exit_mode"].is_null());
    }
}
