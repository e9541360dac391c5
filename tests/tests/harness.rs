//! Tests of the harness itself: namespaces, veths, the blast transfer over
//! the bare underlay, and cleanup when a test panics. They need root but no
//! Sapper daemon.

use sapper_tests::netns;
use sapper_tests::topology::{EXIT_UNDERLAY, PRIVATE_HOST};
use sapper_tests::{Node, Options, Topology};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};

#[test]
fn underlay_pings_and_blast_over_veth() {
    let mut topo = Topology::start(Options::network_only());
    for ns in [&topo.entry, &topo.exit, &topo.private] {
        assert!(netns::exists(ns.name()), "{} missing", ns.name());
        assert!(ns.name().len() <= 15);
    }
    let out = topo.ping(&topo.entry, EXIT_UNDERLAY, 1, 2);
    assert!(
        out.status.success(),
        "E cannot ping X over the veth: {out:?}"
    );
    let out = topo.ping(&topo.exit, PRIVATE_HOST, 1, 2);
    assert!(
        out.status.success(),
        "X cannot ping P over the veth: {out:?}"
    );
    // Without a tunnel, E has no route to P.
    let out = topo.ping(&topo.entry, PRIVATE_HOST, 1, 1);
    assert!(!out.status.success(), "E reached P without a tunnel");

    let bytes = 3 * 1024 * 1024 + 5;
    let (sent, received) = topo.blast(Node::Entry, "exit", EXIT_UNDERLAY, bytes);
    assert_eq!(sent.bytes, bytes);
    assert_eq!(sent, received, "checksums differ over the bare veth");
}

#[test]
fn two_topologies_do_not_collide() {
    let a = Topology::start(Options::network_only());
    let b = Topology::start(Options::network_only());
    assert_ne!(a.entry.name(), b.entry.name());
    assert_ne!(a.dir, b.dir);
    // Same addresses in both, isolated from each other.
    assert!(a.ping(&a.entry, EXIT_UNDERLAY, 1, 2).status.success());
    assert!(b.ping(&b.entry, EXIT_UNDERLAY, 1, 2).status.success());
}

struct Seen {
    namespaces: Vec<String>,
    dir: PathBuf,
    managed_pid: u32,
    stray_pid: u32,
}

fn gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        // A zombie is dead; it only waits to be reaped by its parent.
        Ok(stat) => stat
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| rest.starts_with('Z')),
    }
}

#[test]
fn guard_cleans_up_when_a_test_panics() {
    let seen: Arc<Mutex<Option<Seen>>> = Arc::new(Mutex::new(None));
    let seen2 = Arc::clone(&seen);
    let result = std::thread::spawn(move || {
        let mut topo = Topology::start(Options::network_only());
        let idx = topo.spawn("sleeper", Node::Exit, Path::new("sleep"), &["300".as_ref()]);
        let _ = idx;
        // A process the topology does not track; Netns's drop must kill it.
        let stray = topo
            .entry
            .cmd("sleep")
            .arg("300")
            .spawn()
            .expect("spawn stray sleep");
        *seen2.lock().unwrap() = Some(Seen {
            namespaces: [&topo.entry, &topo.exit, &topo.private]
                .iter()
                .map(|n| n.name().to_string())
                .collect(),
            dir: topo.dir.clone(),
            managed_pid: topo.daemon("sleeper").pid(),
            stray_pid: stray.id(),
        });
        std::mem::forget(stray);
        panic!("deliberate panic to exercise cleanup");
    })
    .join();
    assert!(result.is_err(), "the thread should have panicked");
    let seen = seen.lock().unwrap().take().expect("topology was built");
    for ns in &seen.namespaces {
        assert!(!netns::exists(ns), "namespace {ns} survived the panic");
    }
    assert!(
        !seen.dir.exists(),
        "{} survived the panic",
        seen.dir.display()
    );
    assert!(gone(seen.managed_pid), "managed process survived");
    assert!(
        gone(seen.stray_pid),
        "stray process in the namespace survived"
    );
    // Reap the stray zombie.
    // SAFETY: waitpid on our own child with a valid status pointer.
    unsafe {
        let mut status = 0;
        libc::waitpid(seen.stray_pid as i32, &mut status, 0);
    }
}

#[test]
fn stale_namespaces_of_dead_processes_are_removed() {
    sapper_tests::require_root();
    // A pid that cannot exist (above the kernel's pid_max ceiling of 2^22).
    let name = "sapZ4194399_1";
    let _ = Command::new("ip").args(["netns", "add", name]).status();
    assert!(netns::exists(name));
    netns::cleanup_stale();
    assert!(
        !netns::exists(name),
        "stale namespace {name} was not removed"
    );
}
