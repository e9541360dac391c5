//! What a running daemon may do, read from `/proc/<pid>/task/*/status`.
//!
//! Credentials and capabilities are per thread on Linux: a daemon that drops
//! privileges on its main thread after another thread started keeps them in
//! that thread. So every check here reads every task of the process, and one
//! [`Expected`] names every field that matters, so that no privilege test
//! can forget one (the supplementary groups, say).

use std::fs;

/// `CAP_NET_ADMIN` as a capability mask.
pub const CAP_NET_ADMIN: u64 = 1 << 12;

/// What every thread of a daemon must show.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expected {
    /// Real, effective, saved and filesystem uid (all four must be this).
    pub uid: u32,
    /// Real, effective, saved and filesystem gid.
    pub gid: u32,
    /// Supplementary groups, in any order.
    pub groups: Vec<u32>,
    /// CapInh, CapPrm, CapEff and CapAmb (the four sets a thread holds).
    pub caps: u64,
    /// CapBnd; `None` when the test cannot know it (a non-root caller's
    /// bounding set is whatever it inherited).
    pub bounding: Option<u64>,
    /// NoNewPrivs: 1.
    pub no_new_privs: bool,
    /// Seccomp: 0 (none), 1 (strict) or 2 (filter).
    pub seccomp: u8,
}

impl Expected {
    /// netd after `privs::drop_all` to `uid:gid`: nothing in any capability
    /// set, only its own group, no_new_privs, the seccomp allow-list.
    pub fn netd(uid: u32, gid: u32) -> Expected {
        Expected {
            uid,
            gid,
            groups: vec![gid],
            caps: 0,
            bounding: Some(0),
            no_new_privs: true,
            seccomp: 2,
        }
    }
}

/// One thread's fields, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskPrivs {
    pub uids: [u32; 4],
    pub gids: [u32; 4],
    pub groups: Vec<u32>,
    pub cap_inh: u64,
    pub cap_prm: u64,
    pub cap_eff: u64,
    pub cap_bnd: u64,
    pub cap_amb: u64,
    pub no_new_privs: bool,
    pub seccomp: u8,
}

impl TaskPrivs {
    /// Parses a `/proc/.../status` text; `Err` names the missing or bad field.
    pub fn parse(status: &str) -> Result<TaskPrivs, String> {
        let field = |name: &str| -> Result<&str, String> {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix(':')))
                .map(str::trim)
                .ok_or_else(|| format!("no {name}: line"))
        };
        let ids = |name: &str| -> Result<[u32; 4], String> {
            let v: Vec<u32> = field(name)?
                .split_whitespace()
                .map(|s| s.parse().map_err(|_| format!("bad {name}: {s}")))
                .collect::<Result<_, _>>()?;
            v.try_into().map_err(|_| format!("{name}: not four ids"))
        };
        let mask = |name: &str| -> Result<u64, String> {
            let s = field(name)?;
            u64::from_str_radix(s, 16).map_err(|_| format!("bad {name}: {s}"))
        };
        let mut groups: Vec<u32> = field("Groups")?
            .split_whitespace()
            .map(|s| s.parse().map_err(|_| format!("bad Groups: {s}")))
            .collect::<Result<_, _>>()?;
        groups.sort_unstable();
        Ok(TaskPrivs {
            uids: ids("Uid")?,
            gids: ids("Gid")?,
            groups,
            cap_inh: mask("CapInh")?,
            cap_prm: mask("CapPrm")?,
            cap_eff: mask("CapEff")?,
            cap_bnd: mask("CapBnd")?,
            cap_amb: mask("CapAmb")?,
            no_new_privs: field("NoNewPrivs")? == "1",
            seccomp: field("Seccomp")?
                .parse()
                .map_err(|_| "bad Seccomp".to_string())?,
        })
    }

    /// Every difference from `want`, one line each.
    pub fn differences(&self, want: &Expected) -> Vec<String> {
        let mut d = Vec::new();
        if self.uids != [want.uid; 4] {
            d.push(format!("Uid {:?}, want {} everywhere", self.uids, want.uid));
        }
        if self.gids != [want.gid; 4] {
            d.push(format!("Gid {:?}, want {} everywhere", self.gids, want.gid));
        }
        let mut groups = want.groups.clone();
        groups.sort_unstable();
        if self.groups != groups {
            d.push(format!("Groups {:?}, want {groups:?}", self.groups));
        }
        for (name, got) in [
            ("CapInh", self.cap_inh),
            ("CapPrm", self.cap_prm),
            ("CapEff", self.cap_eff),
            ("CapAmb", self.cap_amb),
        ] {
            if got != want.caps {
                d.push(format!("{name} {got:016x}, want {:016x}", want.caps));
            }
        }
        if let Some(b) = want.bounding {
            if self.cap_bnd != b {
                d.push(format!("CapBnd {:016x}, want {b:016x}", self.cap_bnd));
            }
        }
        if self.no_new_privs != want.no_new_privs {
            d.push(format!(
                "NoNewPrivs {}, want {}",
                u8::from(self.no_new_privs),
                u8::from(want.no_new_privs)
            ));
        }
        if self.seccomp != want.seccomp {
            d.push(format!("Seccomp {}, want {}", self.seccomp, want.seccomp));
        }
        d
    }
}

/// The parsed status of every task (thread) of `pid`, by task id. Panics if
/// the process is gone or has no readable task: a privilege test that read
/// nothing must not pass.
pub fn tasks(pid: u32) -> Vec<(u32, TaskPrivs)> {
    let dir = format!("/proc/{pid}/task");
    let entries = fs::read_dir(&dir).unwrap_or_else(|e| panic!("{dir}: {e} (is {pid} gone?)"));
    let mut out = Vec::new();
    for entry in entries.flatten() {
        let Ok(tid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        // A thread may exit between the listing and the read.
        let Ok(text) = fs::read_to_string(entry.path().join("status")) else {
            continue;
        };
        let p = TaskPrivs::parse(&text)
            .unwrap_or_else(|e| panic!("{}/status: {e}", entry.path().display()));
        out.push((tid, p));
    }
    assert!(!out.is_empty(), "no task of {pid} could be read");
    out
}

/// Asserts that every thread of `pid` (`what` names it in the message)
/// matches `want` in every field; returns how many threads were checked.
pub fn assert_privileges(pid: u32, want: &Expected, what: &str) -> usize {
    let tasks = tasks(pid);
    let mut bad = Vec::new();
    for (tid, p) in &tasks {
        for d in p.differences(want) {
            bad.push(format!("  task {tid}: {d}"));
        }
    }
    assert!(
        bad.is_empty(),
        "{what} (pid {pid}) does not hold exactly the expected privileges:\n{}",
        bad.join("\n")
    );
    tasks.len()
}

/// Linux capability names by bit number, as `setpriv` spells them.
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

/// `-all,+name,…` for the capabilities in `mask` (bits this table does not
/// name are an error: the test would otherwise under-grant silently).
fn cap_list(mask: u64) -> String {
    let mut s = String::from("-all");
    for bit in 0..64 {
        if mask & (1 << bit) != 0 {
            let name = CAP_NAMES
                .get(bit)
                .unwrap_or_else(|| panic!("capability bit {bit} has no name here"));
            s.push_str(",+");
            s.push_str(name);
        }
    }
    s
}

/// `nsenter` + `setpriv` arguments that run a command in `pid`'s network
/// namespace with `pid`'s uid, gid, groups, bounding set, no_new_privs and
/// its effective capabilities (kept across exec through the ambient set,
/// the only way a non-root process keeps any): what that process itself
/// could do if it ran the command.
pub fn as_process(pid: u32) -> Vec<String> {
    let (_, p) = tasks(pid).swap_remove(0);
    let groups = if p.groups.is_empty() {
        "--clear-groups".to_string()
    } else {
        let g: Vec<String> = p.groups.iter().map(u32::to_string).collect();
        format!("--groups={}", g.join(","))
    };
    let mut args = vec![
        "nsenter".to_string(),
        format!("--target={pid}"),
        "--net".to_string(),
        "--".to_string(),
        "setpriv".to_string(),
        format!("--reuid={}", p.uids[1]),
        format!("--regid={}", p.gids[1]),
        groups,
        format!("--inh-caps={}", cap_list(p.cap_eff)),
        format!("--ambient-caps={}", cap_list(p.cap_eff)),
        format!("--bounding-set={}", cap_list(p.cap_bnd)),
    ];
    if p.no_new_privs {
        args.push("--no-new-privs".to_string());
    }
    args.push("--".to_string());
    args
}

/// The Landlock ABI version this kernel offers (0: none), as
/// `landlock_create_ruleset(NULL, 0, LANDLOCK_CREATE_RULESET_VERSION)`
/// reports it: the kernel's own word on whether it lists Landlock.
pub fn landlock_abi() -> u32 {
    const LANDLOCK_CREATE_RULESET_VERSION: libc::c_ulong = 1;
    // SAFETY: the version query reads no memory (null attr, size 0).
    let r = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<u8>(),
            0usize,
            LANDLOCK_CREATE_RULESET_VERSION,
        )
    };
    u32::try_from(r).unwrap_or(0)
}

/// The Landlock ABI netd asks for (`netd/src/fs_sandbox.rs`, `ABI_USED`).
pub const NETD_LANDLOCK_ABI: u32 = 5;

/// What netd must report about Landlock on this kernel: the event name and
/// its `enforcement` field.
pub fn expected_landlock() -> (&'static str, &'static str) {
    match landlock_abi() {
        0 => ("landlock_not_enforced", "none"),
        v if v < NETD_LANDLOCK_ABI => ("landlock_partial", "partial"),
        _ => ("landlock_applied", "full"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STATUS: &str = "Name:\tsapper-netd\nUid:\t65534\t65534\t65534\t65534\n\
        Gid:\t65534\t65534\t65534\t65534\nGroups:\t65534 \nCapInh:\t0000000000000000\n\
        CapPrm:\t0000000000000000\nCapEff:\t0000000000000000\nCapBnd:\t0000000000000000\n\
        CapAmb:\t0000000000000000\nNoNewPrivs:\t1\nSeccomp:\t2\n";

    #[test]
    fn a_dropped_netd_matches_and_each_field_is_checked() {
        let p = TaskPrivs::parse(STATUS).unwrap();
        assert!(p.differences(&Expected::netd(65534, 65534)).is_empty());
        for (from, to, field) in [
            (
                "Uid:\t65534\t65534\t65534\t65534",
                "Uid:\t65534\t0\t65534\t65534",
                "Uid",
            ),
            (
                "Gid:\t65534\t65534\t65534\t65534",
                "Gid:\t0\t65534\t65534\t65534",
                "Gid",
            ),
            ("Groups:\t65534 ", "Groups:\t0 65534", "Groups"),
            (
                "CapInh:\t0000000000000000",
                "CapInh:\t0000000000001000",
                "CapInh",
            ),
            (
                "CapPrm:\t0000000000000000",
                "CapPrm:\t0000000000001000",
                "CapPrm",
            ),
            (
                "CapEff:\t0000000000000000",
                "CapEff:\t0000000000001000",
                "CapEff",
            ),
            (
                "CapBnd:\t0000000000000000",
                "CapBnd:\t000001ffffffffff",
                "CapBnd",
            ),
            (
                "CapAmb:\t0000000000000000",
                "CapAmb:\t0000000000001000",
                "CapAmb",
            ),
            ("NoNewPrivs:\t1", "NoNewPrivs:\t0", "NoNewPrivs"),
            ("Seccomp:\t2", "Seccomp:\t0", "Seccomp"),
        ] {
            let p = TaskPrivs::parse(&STATUS.replace(from, to)).unwrap();
            let d = p.differences(&Expected::netd(65534, 65534));
            assert_eq!(d.len(), 1, "{field}: {d:?}");
            assert!(d[0].starts_with(field), "{field}: {d:?}");
        }
        assert!(TaskPrivs::parse(&STATUS.replace("Groups:\t65534 \n", "")).is_err());
    }
}
