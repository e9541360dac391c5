//! A guard for one network namespace.
//!
//! Names are `sap<tag><pid>_<n>` (at most 15 characters): the pid keeps test
//! binaries apart, the counter keeps tests of one binary apart, and the pid
//! lets [`cleanup_stale`] recognise namespaces left behind by a test process
//! that was killed before its guards could run.

use crate::cmd::{ip, run_timeout};
use std::ffi::OsStr;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::Duration;

/// Every namespace the harness creates starts with this.
pub const PREFIX: &str = "sap";

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// A number unique within this process, shared by the namespaces of one
/// topology so that their names line up in `ip netns list`.
pub fn next_id() -> usize {
    COUNTER.fetch_add(1, Ordering::Relaxed) % 1000
}

/// The namespace name for `tag` (one letter) and `id`.
pub fn name_for(tag: char, id: usize) -> String {
    let name = format!("{PREFIX}{tag}{}_{id}", std::process::id());
    assert!(name.len() <= 15, "namespace name {name} is too long");
    name
}

/// One network namespace; deleted (after killing whatever still runs in it)
/// when dropped, also while a test panics.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates the namespace and brings its `lo` up.
    pub fn create(name: String) -> Netns {
        if exists(&name) {
            delete(&name);
        }
        ip(&["netns", "add", &name]);
        // From here on Drop removes it, even if the next step fails.
        let ns = Netns { name };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    /// The namespace's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// A command that runs `program` inside the namespace
    /// (`ip netns exec NAME program`; `ip` execs it, so the child's pid is
    /// the program's pid).
    pub fn cmd(&self, program: impl AsRef<OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]).arg(program);
        c
    }

    /// Runs `ip -n NAME ARGS`, panicking on failure.
    pub fn ip(&self, args: &[&str]) -> String {
        let mut all = vec!["-n", &self.name];
        all.extend_from_slice(args);
        ip(&all)
    }

    /// Pids of the processes running in the namespace.
    pub fn pids(&self) -> Vec<i32> {
        pids(&self.name)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        delete(&self.name);
    }
}

/// True when a namespace of that name exists.
pub fn exists(name: &str) -> bool {
    Path::new("/run/netns").join(name).exists()
}

fn pids(name: &str) -> Vec<i32> {
    match run_timeout(
        Command::new("ip").args(["netns", "pids", name]),
        Duration::from_secs(5),
    ) {
        Ok(out) => String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect(),
        Err(_) => Vec::new(),
    }
}

/// Kills what runs in the namespace (processes the harness started there)
/// and deletes it. Best effort, bounded, never panics.
pub fn delete(name: &str) {
    for _ in 0..5 {
        let pids = pids(name);
        if pids.is_empty() {
            break;
        }
        for pid in pids {
            // SAFETY: kill has no memory-safety preconditions.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        thread::sleep(Duration::from_millis(100));
    }
    for _ in 0..10 {
        let _ = run_timeout(
            Command::new("ip").args(["netns", "del", name]),
            Duration::from_secs(5),
        );
        if !exists(name) {
            return;
        }
        thread::sleep(Duration::from_millis(200));
    }
    eprintln!("warning: could not delete network namespace {name}");
}

/// Deletes namespaces named like ours whose creating process is gone (a test
/// binary killed by a timeout or SIGKILL never runs its guards).
pub fn cleanup_stale() {
    let Ok(entries) = std::fs::read_dir("/run/netns") else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some(pid) = owner_pid(&name) {
            if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
                delete(&name);
            }
        }
    }
}

/// The pid encoded in one of our namespace names, if `name` is one.
pub fn owner_pid(name: &str) -> Option<u32> {
    let rest = name.strip_prefix(PREFIX)?;
    let mut chars = rest.chars();
    let tag = chars.next()?;
    if !tag.is_ascii_uppercase() {
        return None;
    }
    let (pid, id) = chars.as_str().split_once('_')?;
    id.parse::<u32>().ok()?;
    pid.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_fit_and_parse_back() {
        let n = name_for('E', 999);
        assert!(n.len() <= 15);
        assert_eq!(owner_pid(&n), Some(std::process::id()));
        assert_eq!(owner_pid("sapE12_x"), None);
        assert_eq!(owner_pid("other"), None);
        assert_eq!(owner_pid("sape12_1"), None);
    }
}
