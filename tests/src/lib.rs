//! End-to-end test harness for Sapper.
//!
//! The tests in `tests/tests/` build a small network out of Linux network
//! namespaces (entry `E`, exit `X`, and a private network `P` reachable only
//! from `X`), start the real `sapper-privd` and `sapper-netd` binaries inside
//! them and push real packets through the tunnel. Everything here is
//! synchronous std code: the daemons are separate processes, so the harness
//! only spawns, waits (always with a deadline) and reads files.
//!
//! * [`bins`] finds (and, once per test binary, builds) the workspace binaries.
//! * [`cmd`] runs commands with time limits and polls with deadlines.
//! * [`netns`] is a guard for one network namespace.
//! * [`topology`] is the guard for a whole E/X/P test network with daemons.
//! * [`chain`] is the guard for a line of nodes (entry → relay → exit …).
//! * [`privs`] reads and checks every thread's credentials and capabilities.
//! * [`blast`] is the data generator and checksum shared with `sapper-blast`.

pub mod bins;
pub mod blast;
pub mod chain;
pub mod cmd;
pub mod netns;
pub mod pinned;
pub mod privs;
pub mod topology;

use std::sync::OnceLock;

pub use topology::{Node, Options, Topology, Transport};

/// `per_transport!(scenario)`: the test module `scenario` with `quic` and
/// `ws`, each running `fn scenario(t: Transport)` over that transport.
#[macro_export]
macro_rules! per_transport {
    ($scenario:ident) => {
        mod $scenario {
            #[test]
            fn quic() {
                super::$scenario($crate::Transport::Quic);
            }
            #[test]
            fn ws() {
                super::$scenario($crate::Transport::Ws);
            }
        }
    };
}

/// The gid of `group` from /etc/group; panics naming the group if it is
/// missing, so a test never runs as an unintended group.
pub fn gid_of(group: &str) -> u32 {
    std::fs::read_to_string("/etc/group")
        .ok()
        .and_then(|text| {
            text.lines().find_map(|l| {
                let mut f = l.split(':');
                (f.next() == Some(group))
                    .then(|| f.nth(1).and_then(|g| g.parse().ok()))
                    .flatten()
            })
        })
        .unwrap_or_else(|| panic!("group {group} missing from /etc/group"))
}

/// The user a hand-started privd becomes (`privd.user` unset means
/// `sapper-privd`), created as a system user when this host has none yet.
/// Returns its uid and primary gid.
pub fn privd_user() -> (u32, u32) {
    const NAME: &str = "sapper-privd";
    let lookup = || {
        let text = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
        text.lines().find_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f.len() > 3 && f[0] == NAME).then(|| Some((f[2].parse().ok()?, f[3].parse().ok()?)))?
        })
    };
    if lookup().is_none() {
        // Another test may create it at the same moment: look again after.
        let _ = std::process::Command::new("useradd")
            .args(["--system", "--user-group", "--no-create-home"])
            .args(["--shell", "/usr/sbin/nologin", NAME])
            .status();
    }
    lookup().unwrap_or_else(|| panic!("no user {NAME}, and useradd could not create it"))
}

/// Fails the calling test with a clear message unless it runs as root.
///
/// The end-to-end tests create network namespaces, TUN devices and nftables
/// rules; none of that works unprivileged, and silently skipping would let a
/// CI run look green without testing anything.
pub fn require_root() {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    assert!(
        euid == 0,
        "the Sapper end-to-end tests must run as root (they create network \
         namespaces, TUN devices and nftables rules); euid is {euid}. \
         Run `sudo scripts/test.sh` (or `sudo -E cargo test -p sapper-tests`)."
    );
}

/// Checks, once per process, that the test runs as root and that the
/// commands the harness shells out to are installed; panics naming what is
/// missing and how to get it.
pub fn require_env() {
    require_root();
    static CHECKED: OnceLock<Result<(), String>> = OnceLock::new();
    let res = CHECKED.get_or_init(|| {
        let needed = [
            ("ip", "iproute2"),
            ("ping", "iputils-ping"),
            ("nft", "nftables"),
        ];
        let missing: Vec<String> = needed
            .iter()
            .filter(|(cmd, _)| !on_path(cmd))
            .map(|(cmd, pkg)| format!("`{cmd}` (Debian package {pkg})"))
            .collect();
        if missing.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "the e2e tests need {}; scripts/test.sh installs them, or run \
                 `apt-get install -y iproute2 iputils-ping nftables`",
                missing.join(", ")
            ))
        }
    });
    if let Err(e) = res {
        panic!("{e}");
    }
}

fn on_path(cmd: &str) -> bool {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/sbin".into()])
        .any(|d| d.join(cmd).is_file())
}
