//! systemd integration without systemd: the test plays the service manager.
//!
//! * netd gets its QUIC (UDP), WS (TCP) and management sockets as LISTEN_FDS
//!   with LISTEN_FDNAMES, bound by the test (so netd binding them itself
//!   would fail with EADDRINUSE); a QUIC peer and a WS peer connect through
//!   them; READY=1, STATUS= and STOPPING=1 arrive on a NOTIFY_SOCKET the
//!   test listens on.
//! * privd pushes its TUN with FDSTORE=1/FDNAME=tun; the test keeps the fd
//!   across a privd restart and passes it back: the interface keeps its
//!   index and its routes.
//! * netd's credentials (as it runs: non-root, no capability, no_new_privs)
//!   cannot create a TUN or change a route (EPERM).
//! * scripts/security-score.sh prints and gates the units' exposure scores.
//!
//! Root is needed (network namespaces, TUN, dropping to `nobody`).

use sapper_shared::framing::{self, HEADER_LEN, MAX_CONTROL_FRAME};
use sapper_shared::proto::privd::{
    priv_request, priv_response, PrivRequest, PrivResponse, RouteChange, StatusQuery,
};
use sapper_tests::bins::bins;
use sapper_tests::cmd::{run_timeout, wait_until, WAIT};
use sapper_tests::netns::{self, Netns};
use std::fs;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixDatagram, UnixListener, UnixStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Sets LISTEN_PID to the pid that will exec the daemon (`exec` keeps it),
/// which the test cannot know before the fork.
const WRAP: &str = "export LISTEN_PID=$$; exec \"$@\"";
/// The most fds a test passes.
const MAX_PASSED: usize = 8;

struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let d = std::env::temp_dir().join(format!(
            "sapper-sd-{tag}-{}-{}",
            std::process::id(),
            netns::next_id()
        ));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).expect("create temp dir");
        // The daemons run as nobody and must reach their sockets in here.
        fs::set_permissions(&d, fs::Permissions::from_mode(0o755)).expect("chmod temp dir");
        TempDir(d)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if std::thread::panicking() && std::env::var_os("SAPPER_E2E_KEEP").is_some() {
            eprintln!("keeping {}", self.0.display());
        } else {
            let _ = fs::remove_dir_all(&self.0);
        }
    }
}

/// A child process that is killed and reaped on drop, logs in files.
struct Proc {
    label: String,
    child: Child,
    log: PathBuf,
}

impl Proc {
    fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn terminate(&mut self) -> Option<std::process::ExitStatus> {
        // SAFETY: kill has no memory-safety preconditions.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(s)) = self.child.try_wait() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        self.child.wait().ok()
    }

    fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.alive() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if std::thread::panicking() {
            eprintln!("----- {} log -----\n{}", self.label, self.log_text());
        }
    }
}

/// Starts `program args` as systemd would with socket activation: `fds`
/// become 3, 4, ... with LISTEN_FDS/LISTEN_FDNAMES/LISTEN_PID set, and
/// NOTIFY_SOCKET points at `notify`. Inside `ns` when given.
// A test helper mirroring what systemd passes; a struct would only move the
// same eight values around.
#[allow(clippy::too_many_arguments)]
fn spawn_activated(
    label: &str,
    dir: &Path,
    ns: Option<&Netns>,
    program: &Path,
    args: &[&str],
    fds: &[(RawFd, &str)],
    notify: &Path,
    extra_env: &[(&str, &str)],
) -> Proc {
    let mut cmd = match ns {
        Some(ns) => ns.cmd("sh"),
        None => Command::new("sh"),
    };
    cmd.args(["-c", WRAP, "sh"]).arg(program).args(args);
    let names: Vec<&str> = fds.iter().map(|(_, n)| *n).collect();
    cmd.env("LISTEN_FDS", fds.len().to_string())
        .env("LISTEN_FDNAMES", names.join(":"))
        .env("NOTIFY_SOCKET", notify)
        .env("SAPPER_LOG", "info")
        .envs(extra_env.iter().copied());
    let log = dir.join(format!("{label}.log"));
    let out = fs::File::create(&log).expect("create log");
    let err = out.try_clone().expect("dup log");
    cmd.stdin(Stdio::null())
        .stdout(Stdio::from(out))
        .stderr(Stdio::from(err));
    assert!(fds.len() <= MAX_PASSED);
    let raw: Vec<RawFd> = fds.iter().map(|(fd, _)| *fd).collect();
    // SAFETY: only async-signal-safe calls (fcntl, dup2) between fork and
    // exec, on fds the parent keeps open for the duration of spawn().
    unsafe {
        cmd.pre_exec(move || {
            // First out of the way (a source may already sit on 3..), then
            // into place; dup2 leaves the targets without CLOEXEC.
            // No allocation here: the parent is multi-threaded.
            let mut tmp = [-1 as RawFd; MAX_PASSED];
            for (slot, fd) in tmp.iter_mut().zip(&raw) {
                *slot = libc::fcntl(*fd, libc::F_DUPFD_CLOEXEC, 64);
                if *slot < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            for (i, t) in tmp.iter().take(raw.len()).enumerate() {
                if libc::dup2(*t, 3 + i as RawFd) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("start {}: {e}", program.display()));
    Proc {
        label: label.into(),
        child,
        log,
    }
}

/// One datagram from the notify socket with the fds it carried, or None on
/// timeout.
fn recv_notify(sock: &UnixDatagram, timeout: Duration) -> Option<(String, Vec<OwnedFd>)> {
    sock.set_read_timeout(Some(timeout)).ok()?;
    let mut buf = [0u8; 4096];
    let mut cmsg = [0u64; 64];
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: msghdr is plain data; every pointer set below outlives the
    // recvmsg call.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cmsg.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&cmsg) as _;
    // SAFETY: msg points at live buffers of the sizes given.
    let n = unsafe { libc::recvmsg(sock.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC) };
    if n < 0 {
        return None;
    }
    let mut fds = Vec::new();
    // SAFETY: the CMSG_* macros walk the control buffer the kernel filled
    // (msg_controllen was updated by recvmsg); SCM_RIGHTS data is an array
    // of fds now owned by this process.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(&msg);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_RIGHTS {
                let data = libc::CMSG_DATA(c) as *const RawFd;
                let count = ((*c).cmsg_len as usize - libc::CMSG_LEN(0) as usize)
                    / std::mem::size_of::<RawFd>();
                for i in 0..count {
                    fds.push(OwnedFd::from_raw_fd(std::ptr::read_unaligned(data.add(i))));
                }
            }
            c = libc::CMSG_NXTHDR(&msg, c);
        }
    }
    Some((
        String::from_utf8_lossy(&buf[..n as usize]).into_owned(),
        fds,
    ))
}

/// Reads notify datagrams until one contains `needle`; returns it with its
/// fds. Panics (with the daemon's log) after `timeout`.
fn expect_notify(
    sock: &UnixDatagram,
    needle: &str,
    timeout: Duration,
    proc_: &Proc,
) -> (String, Vec<OwnedFd>) {
    let deadline = Instant::now() + timeout;
    let mut seen = Vec::new();
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        match recv_notify(sock, left.max(Duration::from_millis(10))) {
            Some((text, fds)) if text.contains(needle) => return (text, fds),
            Some((text, _)) => seen.push(text),
            None => break,
        }
    }
    panic!(
        "no notify message with {needle:?} within {timeout:?}; saw {seen:?}\n{} log:\n{}",
        proc_.label,
        proc_.log_text()
    );
}

fn notify_socket(dir: &Path) -> (UnixDatagram, PathBuf) {
    let path = dir.join("notify.sock");
    let sock = UnixDatagram::bind(&path).expect("bind notify socket");
    // The daemons send as nobody / their own uid.
    fs::set_permissions(&path, fs::Permissions::from_mode(0o666)).expect("chmod notify");
    (sock, path)
}

fn write(path: &Path, text: &str, mode: u32) {
    fs::write(path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).expect("chmod");
}

fn netd_config(dir: &Path, name: &str, body: &str) -> PathBuf {
    let d = dir.join(name);
    fs::create_dir_all(d.join("state")).expect("node dir");
    fs::set_permissions(&d, fs::Permissions::from_mode(0o755)).expect("chmod");
    write(&d.join("psk"), "sd-fast-test-psk-0123456789abcdef\n", 0o600);
    let cfg = format!(
        "[node]\nname = \"{name}\"\npsk_file = \"{psk}\"\n\n[netd]\nuser = \"nobody\"\ngroup = \"nogroup\"\n\
         state_dir = \"{state}\"\nmanagement_socket = \"{mgmt}\"\nping_interval_ms = 200\n\
         reconnect_min_ms = 100\nreconnect_max_ms = 1000\n\n{body}",
        psk = d.join("psk").display(),
        state = d.join("state").display(),
        mgmt = d.join("netd.sock").display(),
    );
    let path = d.join("sapper.toml");
    write(&path, &cfg, 0o644);
    path
}

fn peer_names(mgmt: &Path) -> Vec<String> {
    let mut cmd = Command::new(&bins().ctl);
    cmd.arg("--socket").arg(mgmt).args(["peers", "--json"]);
    let Ok(out) = run_timeout(&mut cmd, Duration::from_secs(10)) else {
        return Vec::new();
    };
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    v["peers"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|p| p["name"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn netd_serves_quic_and_ws_on_activated_fds_and_notifies() {
    sapper_tests::require_root();
    let b = bins();
    let tmp = TempDir::new("netd");
    let dir = &tmp.0;

    // The sockets "systemd" binds. netd binding them again would fail with
    // EADDRINUSE, so a working tunnel proves the passed fds were used.
    let udp = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind udp");
    let tcp = std::net::TcpListener::bind("127.0.0.1:0").expect("bind tcp");
    let quic_addr = udp.local_addr().expect("udp addr");
    let ws_addr = tcp.local_addr().expect("tcp addr");
    let lsn_cfg = netd_config(
        dir,
        "lsn",
        &format!(
            "[[netd.listen]]\ntransport = \"quic\"\naddress = \"{quic_addr}\"\n\n\
             [[netd.listen]]\ntransport = \"ws\"\naddress = \"{ws_addr}\"\nws_path = \"/sapper\"\n"
        ),
    );
    let mgmt_path = dir.join("lsn").join("netd.sock");
    let mgmt = UnixListener::bind(&mgmt_path).expect("bind mgmt");
    let (notify, notify_path) = notify_socket(dir);

    let mut fp_cmd = Command::new(&b.netd);
    fp_cmd
        .arg("--config")
        .arg(&lsn_cfg)
        .arg("--print-fingerprint");
    let fp_out = run_timeout(&mut fp_cmd, Duration::from_secs(30)).expect("fingerprint");
    let fp = String::from_utf8_lossy(&fp_out.stdout)
        .lines()
        .map(str::trim)
        .rfind(|l| !l.is_empty())
        .expect("a fingerprint line")
        .to_string();

    let cfg_s = lsn_cfg.to_string_lossy().into_owned();
    let mut lsn = spawn_activated(
        "lsn-netd",
        dir,
        None,
        &b.netd,
        &["--config", &cfg_s],
        &[
            (udp.as_raw_fd(), "quic"),
            (tcp.as_raw_fd(), "ws"),
            (mgmt.as_raw_fd(), "mgmt"),
        ],
        &notify_path,
        // As WatchdogSec=1s would: netd must pet it at least every 500 ms.
        &[("WATCHDOG_USEC", "1000000")],
    );
    let (ready, _) = expect_notify(&notify, "READY=1", WAIT, &lsn);
    assert!(ready.contains("STATUS=0 peers"), "first status: {ready:?}");
    expect_notify(&notify, "WATCHDOG=1", Duration::from_secs(2), &lsn);
    // Our copies are no longer needed; netd holds its own.
    drop((udp, tcp, mgmt));

    let mut peers = Vec::new();
    for (name, transport, addr) in [("cq", "quic", quic_addr), ("cw", "ws", ws_addr)] {
        let cfg = netd_config(
            dir,
            name,
            &format!(
                "[[netd.connect]]\ntransport = \"{transport}\"\naddress = \"{addr}\"\n\
                 server_name = \"lsn\"\nfingerprint = \"{fp}\"\nws_path = \"/sapper\"\n"
            ),
        );
        let log = dir.join(format!("{name}.log"));
        let out = fs::File::create(&log).expect("log");
        let err = out.try_clone().expect("dup log");
        let child = Command::new(&b.netd)
            .arg("--config")
            .arg(&cfg)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .expect("start connector netd");
        peers.push(Proc {
            label: format!("{name}-netd"),
            child,
            log,
        });
    }
    let listed = wait_until(
        "the listener to list peers cq (QUIC) and cw (WS)",
        WAIT,
        || {
            let names = peer_names(&mgmt_path);
            (names.iter().any(|n| n == "cq") && names.iter().any(|n| n == "cw")).then_some(names)
        },
    );
    if let Err(e) = listed {
        panic!(
            "{e}\n{}\n{}\n{}",
            lsn.log_text(),
            peers[0].log_text(),
            peers[1].log_text()
        );
    }
    expect_notify(&notify, "STATUS=2 peers", WAIT, &lsn);

    // As the unit would run it: nobody:nogroup and no other group, nothing
    // in any capability set, no_new_privs and the seccomp filter, in every
    // thread.
    sapper_tests::privs::assert_privileges(
        lsn.child.id(),
        &sapper_tests::privs::Expected::netd(65534, sapper_tests::gid_of("nogroup")),
        "activated netd",
    );

    lsn.terminate();
    expect_notify(&notify, "STOPPING=1", Duration::from_secs(5), &lsn);
    // An activated management socket is systemd's: netd leaves it alone.
    assert!(mgmt_path.exists(), "netd removed the activated mgmt socket");
}

#[test]
fn netd_rejects_a_mislabelled_fd() {
    sapper_tests::require_root();
    let b = bins();
    let tmp = TempDir::new("label");
    let dir = &tmp.0;
    let udp = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind udp");
    let cfg = netd_config(dir, "bad", "");
    let (_notify, notify_path) = notify_socket(dir);
    let cfg_s = cfg.to_string_lossy().into_owned();
    let mut p = spawn_activated(
        "bad-netd",
        dir,
        None,
        &b.netd,
        &["--config", &cfg_s],
        &[(udp.as_raw_fd(), "ws")],
        &notify_path,
        &[],
    );
    let status = wait_until("netd to refuse a UDP fd named ws", WAIT, || {
        p.child.try_wait().ok().flatten()
    })
    .unwrap_or_else(|e| panic!("{e}: {}", p.log_text()));
    assert!(!status.success());
    assert!(
        p.log_text().contains("named \"ws\""),
        "log: {}",
        p.log_text()
    );
}

/// One request to privd, as netd would send it; the reply's body.
fn privd_request(sock: &Path, body: priv_request::Body) -> priv_response::Body {
    let mut s = UnixStream::connect(sock).expect("connect to privd");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("read timeout");
    s.write_all(&framing::encode(&PrivRequest { body: Some(body) }))
        .expect("send to privd");
    let mut header = [0u8; HEADER_LEN];
    s.read_exact(&mut header).expect("privd reply header");
    let len = framing::body_len(header, MAX_CONTROL_FRAME).expect("privd frame");
    let mut buf = vec![0u8; len];
    s.read_exact(&mut buf).expect("privd reply body");
    framing::decode::<PrivResponse>(&buf)
        .expect("privd reply")
        .body
        .expect("privd reply body")
}

fn route_change(sock: &Path, prefix: &str, add: bool) -> priv_response::Body {
    privd_request(
        sock,
        priv_request::Body::RouteChange(RouteChange {
            prefix: prefix.into(),
            add,
        }),
    )
}

fn ifindex(ns: &Netns, dev: &str) -> String {
    let out = ns.ip(&["-o", "link", "show", dev]);
    out.split(':').next().unwrap_or("").trim().to_string()
}

#[test]
fn privd_keeps_the_tun_in_the_fd_store_across_a_restart() {
    sapper_tests::require_env();
    let b = bins();
    let tmp = TempDir::new("privd");
    let dir = &tmp.0;
    let ns = Netns::create(netns::name_for('F', netns::next_id()));
    let sock_path = dir.join("privd.sock");
    let cfg = dir.join("sapper.toml");
    write(
        &cfg,
        &format!(
            // netd_user root: the test itself plays netd.
            "[privd]\nsocket = \"{}\"\nnetd_user = \"root\"\n\n[privd.tun]\nname = \"sapfs0\"\n\
             addresses = [\"10.98.0.1/24\"]\nroutes = [\"10.97.0.0/24\"]\nallowed_routes = [\"10.0.0.0/8\"]\n",
            sock_path.display()
        ),
        0o644,
    );
    let listener = UnixListener::bind(&sock_path).expect("bind privd socket");
    let (notify, notify_path) = notify_socket(dir);
    let cfg_s = cfg.to_string_lossy().into_owned();

    let mut first = spawn_activated(
        "privd-1",
        dir,
        Some(&ns),
        &b.privd,
        &["--config", &cfg_s],
        &[(listener.as_raw_fd(), "privd")],
        &notify_path,
        &[],
    );
    let (store, mut fds) = expect_notify(&notify, "FDSTORE=1", WAIT, &first);
    assert!(store.contains("FDNAME=tun"), "{store:?}");
    assert_eq!(fds.len(), 1, "one TUN fd with FDSTORE=1");
    let tun = fds.remove(0);
    expect_notify(&notify, "READY=1", WAIT, &first);
    let index = ifindex(&ns, "sapfs0");
    // A route "netd" asked for, which the next privd must still own.
    let added = route_change(&sock_path, "10.96.0.0/24", true);
    assert!(
        matches!(added, priv_response::Body::RouteChanged(_)),
        "{added:?}"
    );

    first.terminate();
    expect_notify(&notify, "STOPPING=1", Duration::from_secs(5), &first);
    assert!(
        sock_path.exists(),
        "privd removed the activated socket at exit"
    );
    // The store (the test) holds the fd: the interface and route survive.
    assert_eq!(ifindex(&ns, "sapfs0"), index);
    assert!(ns
        .ip(&["route", "show", "dev", "sapfs0"])
        .contains("10.97.0.0/24"));

    let mut second = spawn_activated(
        "privd-2",
        dir,
        Some(&ns),
        &b.privd,
        &["--config", &cfg_s],
        &[(listener.as_raw_fd(), "privd"), (tun.as_raw_fd(), "tun")],
        &notify_path,
        &[],
    );
    let (ready, _) = expect_notify(&notify, "READY=1", WAIT, &second);
    assert!(
        ready.contains("from the fd store"),
        "second privd did not take the stored TUN: {ready:?}\n{}",
        second.log_text()
    );
    assert_eq!(ifindex(&ns, "sapfs0"), index, "the TUN was recreated");
    assert!(second.alive());
    let status = privd_request(&sock_path, priv_request::Body::Status(StatusQuery {}));
    let priv_response::Body::Status(st) = status else {
        panic!("status: {status:?}");
    };
    for r in ["10.96.0.0/24", "10.97.0.0/24"] {
        assert!(
            st.routes.iter().any(|x| x == r),
            "{r} not in {:?}",
            st.routes
        );
    }
    // Still netd's to remove after the restart.
    let removed = route_change(&sock_path, "10.96.0.0/24", false);
    assert!(
        matches!(removed, priv_response::Body::RouteChanged(_)),
        "{removed:?}\n{}",
        second.log_text()
    );
    assert!(!ns
        .ip(&["route", "show", "dev", "sapfs0"])
        .contains("10.96.0.0/24"));
    second.terminate();
}

#[test]
fn unit_security_scores_are_within_target() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut cmd = Command::new("bash");
    cmd.arg(root.join("scripts/security-score.sh"));
    let out = run_timeout(&mut cmd, Duration::from_secs(300)).expect("run security-score.sh");
    let text = String::from_utf8_lossy(&out.stdout);
    println!("{text}{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "exposure above target:\n{text}");
    for unit in ["sapper-netd.service", "sapper-privd.service"] {
        assert!(text.contains(unit), "no score for {unit}");
    }
}

#[test]
fn packaged_example_config_is_valid() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let path = root.join("systemd/sapper.toml.example");
    let text = fs::read_to_string(&path).expect("read the example config");
    let mut cfg = sapper_shared::config::Config::parse(&text, "sapper.toml.example")
        .unwrap_or_else(|e| panic!("{e}"));
    // psk_file = "%d/psk" needs systemd's credentials directory...
    assert!(cfg.expand_credentials("x", None).is_err());
    // ...and resolves into it.
    cfg.expand_credentials("x", Some(Path::new("/run/credentials/sapper-netd.service")))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        cfg.node.psk_file(),
        Some(Path::new("/run/credentials/sapper-netd.service/psk"))
    );
    let netd = cfg.netd.expect("[netd] in the example");
    assert_eq!(netd.listen.len(), 2, "quic and ws, as the socket units");
    // netd pairs activated sockets with listeners by address: the example
    // and the socket units must agree.
    for (unit, key, transport) in [
        ("sapper-netd-quic.socket", "ListenDatagram=", "quic"),
        ("sapper-netd-ws.socket", "ListenStream=", "ws"),
    ] {
        let text = fs::read_to_string(root.join("systemd").join(unit)).expect("read unit");
        let addr = text
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .unwrap_or_else(|| panic!("no {key} in {unit}"));
        let found = netd
            .listen
            .iter()
            .any(|l| l.transport.as_str() == transport && l.address.to_string() == addr);
        assert!(
            found,
            "{unit} listens on {addr}, the example has no {transport} listener there"
        );
    }
    let privd = cfg.privd.expect("[privd] in the example");
    let unit = fs::read_to_string(root.join("systemd/sapper-privd.socket")).expect("read unit");
    assert!(unit.contains(&format!("ListenStream={}", privd.socket.display())));
    assert_eq!(netd.privd_socket.as_ref(), Some(&privd.socket));
}
