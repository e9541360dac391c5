//! Locating the binaries under test.
//!
//! `env!("CARGO_BIN_EXE_…")` only names binaries of the package being tested,
//! and the daemons live in other packages. So, once per test process, the
//! harness runs `cargo build --workspace --bins` (same profile, same target
//! directory as the running test binary) and then takes every binary from
//! that profile directory. This is a no-op when `scripts/test.sh` (or you)
//! already built the workspace, and it guarantees the e2e tests never run
//! stale daemons after `cargo test -p sapper-tests`.
//!
//! Environment overrides:
//! * `SAPPER_BIN_DIR=/path` — take all binaries from there, build nothing.
//! * `SAPPER_E2E_NO_BUILD=1` — skip the build, use the profile directory.
//!
//! The harness's own helpers (`sapper-blast`, `sapper-privd-probe`) come
//! from [`tool`], which never builds.

use crate::cmd::run_timeout;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

/// Paths of every binary the tests run.
#[derive(Debug, Clone)]
pub struct Bins {
    /// `sapper-privd`.
    pub privd: PathBuf,
    /// `sapper-netd`.
    pub netd: PathBuf,
    /// `sapperctl`.
    pub ctl: PathBuf,
}

static BINS: OnceLock<Result<Bins, String>> = OnceLock::new();

/// The binaries, building them first if needed. Panics with the build's
/// output when the workspace does not build.
pub fn bins() -> &'static Bins {
    match BINS.get_or_init(|| {
        crate::netns::cleanup_stale();
        locate()
    }) {
        Ok(b) => b,
        Err(e) => panic!("{e}"),
    }
}

fn locate() -> Result<Bins, String> {
    let dir = if let Some(dir) = std::env::var_os("SAPPER_BIN_DIR") {
        PathBuf::from(dir)
    } else {
        let dir = profile_dir()?;
        if std::env::var_os("SAPPER_E2E_NO_BUILD").is_none() {
            build(&dir)?;
        }
        dir
    };
    let find = |name: &str| -> Result<PathBuf, String> {
        let p = dir.join(name);
        if p.is_file() {
            Ok(p)
        } else {
            Err(format!(
                "binary {} not found; build the workspace first \
                 (`cargo build --workspace --bins`, done by scripts/test.sh)",
                p.display()
            ))
        }
    };
    Ok(Bins {
        privd: find("sapper-privd")?,
        netd: find("sapper-netd")?,
        ctl: find("sapperctl")?,
    })
}

/// A helper binary of this package (`sapper-blast`, `sapper-privd-probe`).
/// Cargo builds those before it runs this package's integration tests, so
/// no workspace build is needed (the harness's own tests work even while
/// the daemons do not build).
pub fn tool(name: &str) -> PathBuf {
    let mut dirs = Vec::new();
    if let Some(d) = std::env::var_os("SAPPER_BIN_DIR") {
        dirs.push(PathBuf::from(d));
    }
    if let Ok(d) = profile_dir() {
        dirs.push(d);
    }
    dirs.iter()
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!("{name} not found in {dirs:?}; run `cargo build -p sapper-tests --bins`")
        })
}

/// `target/<profile>` of the running test binary
/// (`target/<profile>/deps/<test>-<hash>`).
fn profile_dir() -> Result<PathBuf, String> {
    let exe = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
    let deps = exe
        .parent()
        .ok_or_else(|| format!("{} has no parent", exe.display()))?;
    let dir = if deps.file_name().is_some_and(|n| n == "deps") {
        deps.parent().unwrap_or(deps)
    } else {
        deps
    };
    Ok(dir.to_path_buf())
}

/// Variables cargo sets for the process it runs (besides `CARGO_PKG_*`).
const CARGO_SET_FOR_TESTS: &[&str] = &[
    "CARGO_MANIFEST_DIR",
    "CARGO_MANIFEST_PATH",
    "CARGO_MANIFEST_LINKS",
    "CARGO_CRATE_NAME",
    "CARGO_BIN_NAME",
    "CARGO_PRIMARY_PACKAGE",
    "CARGO_TARGET_TMPDIR",
    "CARGO_RUSTC_CURRENT_DIR",
    "OUT_DIR",
];

fn build(profile_dir: &Path) -> Result<(), String> {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .ok_or("tests crate has no parent directory")?;
    let target_dir = profile_dir
        .parent()
        .ok_or("profile directory has no parent")?;
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    // `cargo test` gives the test process the variables it sets for the test
    // crate (CARGO_MANIFEST_DIR, CARGO_PKG_NAME, ...). Passed on, they would
    // make build scripts that watch them (ring's does) rerun, and the nested
    // build would recompile half the dependency tree every time.
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy();
        if key.starts_with("CARGO_PKG_") || CARGO_SET_FOR_TESTS.contains(&key.as_ref()) {
            cmd.env_remove(key.as_ref());
        }
    }
    cmd.current_dir(workspace)
        .args(["build", "--workspace", "--bins", "--target-dir"])
        .arg(target_dir);
    match profile_dir.file_name().and_then(|n| n.to_str()) {
        Some("debug") | None => {}
        Some("release") => {
            cmd.arg("--release");
        }
        Some(other) => {
            cmd.args(["--profile", other]);
        }
    }
    let desc = crate::cmd::describe(&cmd);
    // Generous: a cold build of the workspace on two cores.
    let out = run_timeout(&mut cmd, Duration::from_secs(60 * 60))?;
    if !out.status.success() {
        return Err(format!(
            "`{desc}` failed, so the e2e tests cannot run:\n{}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(())
}
