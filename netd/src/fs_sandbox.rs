//! Landlock: once setup is done netd may read only the files it names here
//! (its config, certificate, key and PSK, and the system files that user,
//! group and host name lookups read) and write nothing on the filesystem,
//! except removing its own management socket at shutdown. Holds without
//! systemd's ProtectSystem=; best effort: a kernel without Landlock (or with
//! an older ABI) gets what it supports, and netd says so in its log.
//!
//! Connecting to privd's and journald's Unix sockets is not a filesystem
//! access Landlock (up to ABI 5, the set asked for here) controls, so it
//! keeps working.

use anyhow::{Context, Result};
use landlock::{
    path_beneath_rules, Access, AccessFs, Ruleset, RulesetAttr, RulesetCreatedAttr, RulesetStatus,
    ABI,
};
use std::path::{Path, PathBuf};

/// The Landlock ABI whose rights are handled. Fixed rather than "newest",
/// so that a kernel update cannot start refusing something netd needs.
const ABI_USED: ABI = ABI::V5;

/// Files every netd may read after setup: user and group lookups (the
/// management socket's operator check) and host name resolution (peers
/// configured by name).
const SYSTEM_READ: &[&str] = &[
    "/etc/passwd",
    "/etc/group",
    "/etc/nsswitch.conf",
    "/etc/hosts",
    "/etc/host.conf",
    "/etc/resolv.conf",
    "/etc/gai.conf",
    "/etc/services",
    "/etc/protocols",
    "/etc/localtime",
    // The userspace exit explains a missing ping socket with this range.
    "/proc/sys/net/ipv4/ping_group_range",
];

/// How much of the ruleset the kernel enforces.
pub fn describe(status: &RulesetStatus) -> &'static str {
    match status {
        RulesetStatus::FullyEnforced => "fully enforced",
        RulesetStatus::PartiallyEnforced => "partially enforced (older Landlock ABI)",
        RulesetStatus::NotEnforced => {
            "not enforced (no Landlock: the kernel, or a syscall filter above netd such as systemd-nspawn's)"
        }
    }
}

/// What Landlock does in this process, for `status` (set once at start).
static RECORDED: std::sync::OnceLock<&'static str> = std::sync::OnceLock::new();

/// Records the outcome (`enforcement`'s word, or "disabled").
pub fn record(word: &'static str) {
    let _ = RECORDED.set(word);
}

/// The recorded outcome; "unknown" before start-up recorded one.
pub fn recorded() -> &'static str {
    RECORDED.get().copied().unwrap_or("unknown")
}

/// The same in one word, for the log's `enforcement` field.
pub fn enforcement(status: &RulesetStatus) -> &'static str {
    match status {
        RulesetStatus::FullyEnforced => "full",
        RulesetStatus::PartiallyEnforced => "partial",
        RulesetStatus::NotEnforced => "none",
    }
}

/// Restricts this thread and every thread it starts afterwards (Landlock
/// applies to the calling thread only: call before the runtime exists).
/// `read` are the files (or directories) netd may still read; `remove_in`
/// the directory whose entries it may unlink (the management socket's).
pub fn restrict(read: &[PathBuf], remove_in: Option<&Path>) -> Result<RulesetStatus> {
    let mut ruleset = Ruleset::default()
        .handle_access(AccessFs::from_all(ABI_USED))
        .context("landlock: handling filesystem access")?
        .create()
        .context("landlock: creating the ruleset")?
        .add_rules(path_beneath_rules(
            read.iter()
                .map(PathBuf::as_path)
                .chain(SYSTEM_READ.iter().map(Path::new)),
            AccessFs::from_read(ABI_USED),
        ))
        .context("landlock: adding the read rules")?;
    if let Some(dir) = remove_in {
        ruleset = ruleset
            .add_rules(path_beneath_rules([dir], AccessFs::RemoveFile))
            .context("landlock: adding the socket-removal rule")?;
    }
    let status = ruleset
        .restrict_self()
        .context("landlock: restricting netd")?;
    Ok(status.ruleset)
}
