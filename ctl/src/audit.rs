//! `sapperctl audit`: what the running daemons actually hold, read from the
//! kernel rather than from their config. Each daemon is found as the peer
//! of its socket (netd's own pid from its status; else SO_PEERCRED; under
//! socket activation, where the peer is systemd, the one process of that
//! name), so the page describes the netd behind `--socket` and the privd
//! behind `--privd-socket`; its identity,
//! capabilities, NoNewPrivs and seccomp mode come from /proc/PID/status.
//! netd's Landlock outcome is what netd reports in its status (the kernel
//! shows it nowhere); privd's counters come from privd's status; the unit's
//! exposure score from `systemd-analyze security` when systemd runs.

use serde_json::{json, Value};
use std::os::unix::fs::MetadataExt as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Capability names by bit (linux/capability.h), for readable sets.
const CAP_NAMES: [&str; 41] = [
    "chown",
    "dac_override",
    "dac_read_search",
    "fowner",
    "fsetid",
    "kill",
    "setgid",
    "setuid",
    "setpcap",
    "linux_immutable",
    "net_bind_service",
    "net_broadcast",
    "net_admin",
    "net_raw",
    "ipc_lock",
    "ipc_owner",
    "sys_module",
    "sys_rawio",
    "sys_chroot",
    "sys_ptrace",
    "sys_pacct",
    "sys_admin",
    "sys_boot",
    "sys_nice",
    "sys_resource",
    "sys_time",
    "sys_tty_config",
    "mknod",
    "lease",
    "audit_write",
    "audit_control",
    "setfcap",
    "mac_override",
    "mac_admin",
    "syslog",
    "wake_alarm",
    "block_suspend",
    "audit_read",
    "perfmon",
    "bpf",
    "checkpoint_restore",
];

/// Largest /proc status file read.
const MAX_STATUS: u64 = 64 * 1024;

/// The pid at the other end of the Unix socket `path`.
fn peer_pid(path: &Path) -> Result<u32, String> {
    use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};
    let s = std::os::unix::net::UnixStream::connect(path)
        .map_err(|e| format!("connecting to {}: {e}", path.display()))?;
    let cred = getsockopt(&s, PeerCredentials).map_err(|e| format!("SO_PEERCRED: {e}"))?;
    u32::try_from(cred.pid()).map_err(|_| "no peer pid".to_string())
}

/// The `Name:` of /proc/PID/status (the executable's first 15 bytes).
fn comm(pid: u32) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .ok()
        .map(|s| s.trim_end().to_string())
}

/// The daemon serving `sock`: `reported` (netd says its own pid), else the
/// socket's peer if it is `name`; under socket activation the peer is
/// systemd (PID 1), so else the one process called `name`.
fn daemon_pid(sock: &Path, name: &str, reported: Option<u32>) -> Result<u32, String> {
    if let Some(p) = reported.filter(|p| *p != 0 && comm(*p).as_deref() == Some(name)) {
        return Ok(p);
    }
    let peer = peer_pid(sock);
    if let Ok(p) = &peer {
        if comm(*p).as_deref() == Some(name) {
            return Ok(*p);
        }
    }
    let found: Vec<u32> = std::fs::read_dir("/proc")
        .map_err(|e| format!("/proc: {e}"))?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|p| comm(*p).as_deref() == Some(name))
        .collect();
    match (found.as_slice(), peer) {
        ([one], _) => Ok(*one),
        (_, Err(e)) => Err(e),
        ([], Ok(p)) => Err(format!(
            "{}'s peer is pid {p}, not {name}, and no {name} runs",
            sock.display()
        )),
        (many, Ok(p)) => Err(format!(
            "{}'s peer is pid {p}, not {name}, and {} {name} processes run: cannot tell which",
            sock.display(),
            many.len()
        )),
    }
}

/// A capability mask as hex and names.
fn caps(mask: u64) -> Value {
    let names: Vec<String> = (0..64)
        .filter(|b| mask & (1u64 << b) != 0)
        .map(|b| {
            CAP_NAMES
                .get(b)
                .map_or(format!("cap_{b}"), |n| format!("cap_{n}"))
        })
        .collect();
    json!({"hex": format!("{mask:016x}"), "names": names})
}

/// The fields of /proc/PID/status an auditor asks for.
fn proc_status(pid: u32) -> Result<Value, String> {
    use std::io::Read as _;
    let path = format!("/proc/{pid}/status");
    let mut text = String::new();
    std::fs::File::open(&path)
        .and_then(|f| f.take(MAX_STATUS).read_to_string(&mut text))
        .map_err(|e| format!("{path}: {e}"))?;
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix(':')))
            .map(str::trim)
            .ok_or_else(|| format!("{path}: no {name}: line"))
    };
    let ids = |name: &str| -> Result<Value, String> {
        let v: Vec<u32> = field(name)?
            .split_whitespace()
            .map(|s| s.parse().map_err(|_| format!("{path}: bad {name}")))
            .collect::<Result<_, _>>()?;
        match v.as_slice() {
            [r, e, s, f] => Ok(json!({"real": r, "effective": e, "saved": s, "fs": f})),
            _ => Err(format!("{path}: {name}: not four ids")),
        }
    };
    let mask = |name: &str| -> Result<Value, String> {
        let s = field(name)?;
        u64::from_str_radix(s, 16)
            .map(caps)
            .map_err(|_| format!("{path}: bad {name}"))
    };
    let seccomp = match field("Seccomp")? {
        "0" => "disabled",
        "1" => "strict",
        "2" => "filter",
        _ => "unknown",
    };
    Ok(json!({
        "pid": pid,
        "name": field("Name")?,
        "uid": ids("Uid")?,
        "gid": ids("Gid")?,
        "capabilities": {
            "inheritable": mask("CapInh")?,
            "permitted": mask("CapPrm")?,
            "effective": mask("CapEff")?,
            "bounding": mask("CapBnd")?,
            "ambient": mask("CapAmb")?,
        },
        "no_new_privs": field("NoNewPrivs")? == "1",
        "seccomp": seccomp,
        "seccomp_filters": field("Seccomp_filters").ok().and_then(|s| s.parse::<u32>().ok()),
    }))
}

/// Owner and mode of a socket file.
fn socket_file(path: &Path) -> Value {
    match std::fs::symlink_metadata(path) {
        Ok(m) => json!({
            "path": path.display().to_string(),
            "uid": m.uid(),
            "gid": m.gid(),
            "owner": nix::unistd::User::from_uid(m.uid().into()).ok().flatten().map(|u| u.name),
            "group": nix::unistd::Group::from_gid(m.gid().into()).ok().flatten().map(|g| g.name),
            "mode": format!("{:04o}", m.mode() & 0o7777),
        }),
        Err(e) => json!({"path": path.display().to_string(), "error": e.to_string()}),
    }
}

/// The systemd service whose cgroup holds `pid` (from /proc/PID/cgroup).
fn unit_of(pid: u32) -> Option<String> {
    use std::io::Read as _;
    let mut text = String::new();
    std::fs::File::open(format!("/proc/{pid}/cgroup"))
        .and_then(|f| f.take(MAX_STATUS).read_to_string(&mut text))
        .ok()?;
    text.lines()
        .flat_map(|l| l.rsplit('/'))
        .find(|c| c.ends_with(".service"))
        .filter(|c| c.bytes().all(|b| b.is_ascii_graphic()))
        .map(str::to_string)
}

/// `systemd-analyze security UNIT`'s overall score, when systemd runs and
/// the tool answers within a few seconds; `None` otherwise.
fn exposure(unit: &str) -> Option<Value> {
    if !Path::new("/run/systemd/system").is_dir() {
        return None;
    }
    let mut child = Command::new("systemd-analyze")
        .args(["security", unit, "--no-pager"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
        }
    }
    let out = child.wait_with_output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    // "→ Overall exposure level for sapper-netd.service: 2.1 OK 🙂"
    let line = text
        .lines()
        .find(|l| l.contains("Overall exposure level"))?;
    let rest = line.rsplit_once(": ")?.1;
    let mut words = rest.split_whitespace();
    let score: f64 = words.next()?.parse().ok()?;
    Some(json!({"unit": unit, "score": score, "verdict": words.next().unwrap_or("")}))
}

/// The whole page as JSON.
pub fn collect(
    mgmt: &Path,
    privd: &Path,
    netd_status: Option<&Value>,
    privd_status: Result<Value, String>,
) -> Value {
    let daemon = |sock: &Path, unit_prefix: &str, reported: Option<u32>| -> Value {
        let pid = daemon_pid(sock, unit_prefix, reported);
        let mut d = match pid.clone().and_then(proc_status) {
            Ok(v) => v,
            Err(e) => json!({"error": e}),
        };
        d["socket"] = socket_file(sock);
        // The unit the process runs in (a template instance too); a
        // daemon not started by one of Sapper's units has no score.
        d["exposure"] = pid
            .ok()
            .and_then(unit_of)
            .filter(|u| u.starts_with(unit_prefix))
            .and_then(|u| exposure(&u))
            .unwrap_or(Value::Null);
        d
    };
    let mut netd = daemon(
        mgmt,
        "sapper-netd",
        netd_status
            .and_then(|s| s.get("pid"))
            .and_then(Value::as_u64)
            .and_then(|p| u32::try_from(p).ok()),
    );
    netd["landlock"] = netd_status
        .and_then(|s| s.get("landlock").cloned())
        .unwrap_or(Value::Null);
    let mut privd_d = daemon(privd, "sapper-privd", None);
    privd_d["landlock"] = Value::Null;
    privd_d["requests"] = match privd_status {
        Ok(s) => json!({
            "granted": s.get("granted").cloned().unwrap_or(Value::Null),
            "refused": s.get("refused").cloned().unwrap_or(Value::Null),
            // privd's own audit lines, newest last (at most 8).
            "last_refusals": s.get("last_refusals").cloned().unwrap_or_else(|| json!([])),
        }),
        Err(e) => json!({"error": e}),
    };
    json!({"netd": netd, "privd": privd_d})
}

/// The page for people.
pub fn text(v: &Value) -> String {
    let mut s = String::new();
    for (name, d) in [("netd", &v["netd"]), ("privd", &v["privd"])] {
        s.push_str(&format!("{name}:\n"));
        if let Some(e) = d.get("error") {
            s.push_str(&format!(
                "  error:        {}\n",
                e.as_str().unwrap_or_default()
            ));
        } else {
            let ids = |k: &str| {
                let i = &d[k];
                format!(
                    "{} {} {} {} (real effective saved fs)",
                    i["real"], i["effective"], i["saved"], i["fs"]
                )
            };
            s.push_str(&format!("  pid:          {}\n", d["pid"]));
            s.push_str(&format!("  uid:          {}\n", ids("uid")));
            s.push_str(&format!("  gid:          {}\n", ids("gid")));
            for set in [
                "effective",
                "permitted",
                "inheritable",
                "ambient",
                "bounding",
            ] {
                let c = &d["capabilities"][set];
                let names: Vec<&str> = c["names"]
                    .as_array()
                    .map(|a| a.iter().filter_map(Value::as_str).collect())
                    .unwrap_or_default();
                let shown = if names.is_empty() {
                    "none".to_string()
                } else if names.len() > 8 {
                    format!("{} capabilities", names.len())
                } else {
                    names.join(" ")
                };
                s.push_str(&format!(
                    "  cap {set:<11} {} ({shown})\n",
                    c["hex"].as_str().unwrap_or_default()
                ));
            }
            s.push_str(&format!("  no_new_privs: {}\n", d["no_new_privs"]));
            s.push_str(&format!(
                "  seccomp:      {} ({} filters)\n",
                d["seccomp"].as_str().unwrap_or_default(),
                d["seccomp_filters"]
            ));
        }
        s.push_str(&format!(
            "  landlock:     {}\n",
            d["landlock"].as_str().unwrap_or("not reported")
        ));
        let sock = &d["socket"];
        match sock.get("error") {
            Some(e) => s.push_str(&format!(
                "  socket:       {} ({})\n",
                sock["path"].as_str().unwrap_or_default(),
                e.as_str().unwrap_or_default()
            )),
            None => s.push_str(&format!(
                "  socket:       {} owner {} group {} mode {}\n",
                sock["path"].as_str().unwrap_or_default(),
                sock["owner"]
                    .as_str()
                    .map_or(sock["uid"].to_string(), str::to_string),
                sock["group"]
                    .as_str()
                    .map_or(sock["gid"].to_string(), str::to_string),
                sock["mode"].as_str().unwrap_or_default()
            )),
        }
        if let Some(r) = d.get("requests") {
            match r.get("error") {
                Some(e) => s.push_str(&format!(
                    "  requests:     unavailable ({})\n",
                    e.as_str().unwrap_or_default()
                )),
                None => {
                    s.push_str(&format!(
                        "  requests:     {} granted, {} refused\n",
                        r["granted"], r["refused"]
                    ));
                    // Strings a daemon wrote: escaped for the terminal.
                    for line in r["last_refusals"].as_array().into_iter().flatten() {
                        let shown = match line.as_str() {
                            Some(text) => crate::render::refusal_text(text),
                            None => crate::render::refusal_text(&line.to_string()),
                        };
                        s.push_str(&format!("  refused:      {shown}\n"));
                    }
                }
            }
        }
        match d["exposure"].get("score") {
            Some(score) => s.push_str(&format!(
                "  exposure:     {score} {}\n",
                d["exposure"]["verdict"].as_str().unwrap_or_default()
            )),
            None => s.push_str("  exposure:     n/a (no systemd)\n"),
        }
    }
    s.trim_end().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_own_status() {
        let c = caps((1 << 12) | (1 << 40) | (1 << 63));
        assert_eq!(c["hex"], "8000010000001000");
        assert_eq!(
            c["names"],
            json!(["cap_net_admin", "cap_checkpoint_restore", "cap_63"])
        );
        let me = proc_status(std::process::id()).expect("own status");
        assert_eq!(me["uid"]["real"], nix::unistd::getuid().as_raw());
        assert_eq!(me["pid"], std::process::id());
        assert!(proc_status(u32::MAX).is_err());
    }

    #[test]
    fn last_refusals_listed_and_escaped() {
        let page = collect(
            Path::new("/nonexistent/netd.sock"),
            Path::new("/nonexistent/privd.sock"),
            None,
            Ok(json!({"granted": 3, "refused": 2, "last_refusals": [
                {"ts": "2026-12-02T04:00:00Z", "audit": true, "msg": "refused add_route 8.8.8.0/24"},
                "bad \u{1b}[2J"
            ]})),
        );
        assert_eq!(
            page["privd"]["requests"]["last_refusals"][0]["msg"],
            "refused add_route 8.8.8.0/24"
        );
        let t = text(&page);
        assert!(
            t.contains("  refused:      2026-12-02T04:00:00Z refused add_route 8.8.8.0/24\n"),
            "{t}"
        );
        assert!(t.contains("  refused:      bad "), "{t}");
        assert!(!t.contains('\u{1b}'), "{t}");
    }
}
