//! privd alone: the real sapper-privd binary in a fresh network namespace,
//! driven through sapper-privd-client. Needs root (it creates namespaces);
//! fails with a message otherwise.
//!
//! The "other uid" check re-runs this test binary as uid 4242 with
//! `PROBE_ENV` set, which turns the `probe_child` test into a tiny client.

use nix::libc;
use sapper_privd_client::{ErrorCode, PrivdClient, PrivdError};
use sapper_tests::bins::bins;
use sapper_tests::cmd::{run_timeout, wait_until};
use sapper_tests::netns::{self, Netns};
use serde_json::Value;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const PROBE_ENV: &str = "SAPPER_PRIVD_PROBE_SOCKET";
const HOLD_ENV: &str = "SAPPER_PRIVD_PROBE_HOLD";
const PROBE_UID: u32 = 4242;
const NOGROUP: u32 = 65534;

/// Not a test of its own: the client half of the "other uid" checks, run
/// only by `probe_as` (`--ignored --exact probe_child` in a copy of this
/// binary as another uid). Ignored, so that it never reports a pass.
#[test]
#[ignore = "helper, run by probe_as as another uid"]
fn probe_child() {
    let path = std::env::var(PROBE_ENV)
        .unwrap_or_else(|_| panic!("probe_child runs only under probe_as ({PROBE_ENV} unset)"));
    if std::env::var_os(HOLD_ENV).is_some() {
        // The lock-out attempt: 64 idle connections, held until stdin closes.
        let held: Vec<UnixStream> = (0..64)
            .filter_map(|_| UnixStream::connect(&path).ok())
            .collect();
        println!("PROBE held {}", held.len());
        let _ = std::io::stdout().flush();
        let _ = std::io::stdin().read(&mut [0u8; 1]);
        return;
    }
    let open = PrivdClient::connect(&path).and_then(|mut c| c.open_tun().map(|_| ()));
    println!("PROBE open_tun: {}", outcome(open));
    let status = PrivdClient::connect(&path).and_then(|mut c| c.status().map(|_| ()));
    println!("PROBE status: {}", outcome(status));
}

fn outcome(r: Result<(), PrivdError>) -> String {
    match r {
        Ok(()) => "ok".into(),
        Err(PrivdError::PermissionDenied { detail, .. }) => format!("permission-denied {detail}"),
        Err(PrivdError::Refused { code, detail }) => format!("refused {code:?} {detail}"),
        Err(e) => format!("other {e}"),
    }
}

/// A namespace, a temp dir and a running privd; torn down in Drop so that a
/// failed assertion leaves nothing behind.
struct World {
    ns: Netns,
    dir: PathBuf,
    socket: PathBuf,
    privd: Option<Child>,
    stderr: Arc<Mutex<Vec<String>>>,
}

impl World {
    fn new(config_tail: &str) -> Self {
        // A skip would report a pass for a test that did not run.
        assert!(
            nix::unistd::Uid::effective().is_root(),
            "the privd integration tests need root (network namespaces, TUN devices): \
             run `sudo scripts/test.sh`"
        );
        sapper_tests::privd_user();
        let ns = Netns::create(netns::name_for('V', netns::next_id()));
        let dir = std::env::temp_dir().join(ns.name());
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let socket = dir.join("run/privd.sock");
        let mut world = World {
            ns,
            dir,
            socket,
            privd: None,
            stderr: Arc::default(),
        };
        let config = format!(
            "[privd]\nsocket = {:?}\nsocket_group = \"nogroup\"\n{config_tail}",
            world.socket.display().to_string()
        );
        let cfg_path = world.dir.join("sapper.toml");
        std::fs::write(&cfg_path, config).unwrap();
        world.start(&cfg_path);
        world
    }

    fn start(&mut self, cfg: &Path) {
        let mut child = self
            .ns
            .cmd(&bins().privd)
            .arg("--config")
            .arg(cfg)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn sapper-privd");
        let err = child.stderr.take().unwrap();
        let lines = self.stderr.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                eprintln!("privd: {line}");
                lines.lock().unwrap().push(line);
            }
        });
        self.privd = Some(child);
        let up = wait_until("privd's socket", Duration::from_secs(15), || {
            if let Some(status) = self.privd.as_mut().unwrap().try_wait().unwrap() {
                std::thread::sleep(Duration::from_millis(100));
                panic!("privd exited early ({status}): {:?}", self.lines());
            }
            UnixStream::connect(&self.socket).ok()
        });
        up.unwrap_or_else(|e| panic!("{e}: {:?}", self.lines()));
    }

    fn client(&self) -> PrivdClient {
        PrivdClient::connect_with_timeout(&self.socket, Duration::from_secs(5)).unwrap()
    }

    fn lines(&self) -> Vec<String> {
        self.stderr.lock().unwrap().clone()
    }

    /// Audit records so far, each parsed; every stderr line must be JSON.
    fn audit(&self) -> Vec<Value> {
        self.lines()
            .iter()
            .map(|l| serde_json::from_str::<Value>(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .filter(|v| v["audit"] == true)
            .collect()
    }

    fn ip(&self, args: &[&str]) -> String {
        self.ns.ip(args)
    }

    fn in_ns(&self, cmd: &[&str]) -> Output {
        let mut c = self.ns.cmd(cmd[0]);
        run_timeout(c.args(&cmd[1..]), Duration::from_secs(10)).unwrap()
    }

    /// SIGTERM and wait (bounded) for a clean exit.
    fn stop(&mut self) -> std::process::ExitStatus {
        let mut child = self.privd.take().unwrap();
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::SIGTERM).unwrap();
        let status = wait_bounded(&mut child, Duration::from_secs(10));
        // Let the reader thread drain the last lines.
        std::thread::sleep(Duration::from_millis(200));
        status.unwrap_or_else(|| panic!("privd ignored SIGTERM: {:?}", self.lines()))
    }
}

impl Drop for World {
    fn drop(&mut self) {
        if let Some(mut child) = self.privd.take() {
            let _ = child.kill();
            let _ = wait_bounded(&mut child, Duration::from_secs(5));
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn wait_bounded(child: &mut Child, limit: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if let Ok(Some(s)) = child.try_wait() {
            return Some(s);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}

/// Interface name and flags of a TUN fd (TUNGETIFF), proving it is one.
fn tun_info(fd: &OwnedFd) -> (String, i32) {
    #[repr(C)]
    struct IfReq {
        name: [u8; 16],
        flags: libc::c_short,
        _pad: [u8; 22],
    }
    nix::ioctl_read_bad!(
        tungetiff,
        nix::request_code_read!(b'T', 210, std::mem::size_of::<libc::c_uint>()),
        IfReq
    );
    let mut req = IfReq {
        name: [0; 16],
        flags: 0,
        _pad: [0; 22],
    };
    unsafe { tungetiff(fd.as_raw_fd(), &mut req) }.expect("TUNGETIFF on the received fd");
    let len = req.name.iter().position(|b| *b == 0).unwrap_or(16);
    (
        String::from_utf8_lossy(&req.name[..len]).into_owned(),
        i32::from(req.flags),
    )
}

/// Sends raw bytes and returns privd's one reply frame (through the shared
/// decoder) before it closes or a short timeout.
fn raw_exchange(socket: &Path, bytes: &[u8]) -> Vec<u8> {
    let mut s = UnixStream::connect(socket).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    s.write_all(bytes).unwrap();
    let mut frames = sapper_shared::framing::FrameDecoder::new(1 << 16);
    let mut buf = [0u8; 4096];
    loop {
        if let Some(body) = frames.next_frame().unwrap() {
            return body;
        }
        let n = s.read(&mut buf).unwrap();
        assert!(n > 0, "privd closed without a reply");
        frames.push(&buf[..n]);
    }
}

fn error_text(body: &[u8]) -> String {
    use sapper_shared::proto::privd::{priv_response, PrivResponse};
    let r: PrivResponse = sapper_shared::framing::decode(body).unwrap();
    match r.body {
        Some(priv_response::Body::Refused(r)) => format!("{:?} {}", r.code(), r.detail),
        other => panic!("expected an error reply, got {other:?}"),
    }
}

/// Runs `probe_child` from a copy of this test binary as another uid.
fn probe_as(world: &World, uid: u32, gid: u32) -> String {
    let exe = world.dir.join("probe");
    if !exe.exists() {
        // A copy in the 0755 temp dir, since the build tree may not be
        // traversable by other uids.
        std::fs::copy(std::env::current_exe().unwrap(), &exe).unwrap();
        std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let mut child = Command::new(&exe)
        .args([
            "--ignored",
            "--exact",
            "probe_child",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(PROBE_ENV, &world.socket)
        .uid(uid)
        .gid(gid)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let status = wait_bounded(&mut child, Duration::from_secs(30)).expect("probe hung");
    let mut out = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    assert!(status.success(), "probe failed: {out}");
    out
}

const MAIN_CONFIG: &str = r#"netd_uid = 0
[privd.tun]
name = "sapt0"
mtu = 1400
offload = false
addresses = ["10.77.0.1/24", "fd77::1/64"]
routes = ["10.78.0.0/24"]
allowed_routes = ["10.80.0.0/16", "fd80::/48"]
[privd.nat]
enable = true
"#;

#[test]
fn privd_end_to_end() {
    let mut w = World::new(MAIN_CONFIG);

    // The socket: 0660, group nogroup.
    let meta = std::fs::metadata(&w.socket).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o660);
    assert_eq!(std::os::unix::fs::MetadataExt::gid(&meta), NOGROUP);

    // OpenTun: a real TUN fd for the configured interface.
    let mut c = w.client();
    let (fd, opened) = c.open_tun().unwrap();
    assert_eq!(opened.name, "sapt0");
    assert_eq!(opened.mtu, 1400);
    assert_eq!(opened.addresses, ["10.77.0.1/24", "fd77::1/64"]);
    let (name, flags) = tun_info(&fd);
    assert_eq!(name, "sapt0");
    assert_eq!(flags & libc::IFF_TUN, libc::IFF_TUN);
    assert_eq!(flags & libc::IFF_NO_PI, libc::IFF_NO_PI);
    // Offloads are off in this config: plain packets, nothing turned on.
    assert_eq!(flags & libc::IFF_VNET_HDR, 0);
    assert!(!opened.vnet_hdr && opened.offloads.is_empty(), "{opened:?}");
    let fdflags = nix::fcntl::fcntl(fd.as_raw_fd(), nix::fcntl::FcntlArg::F_GETFD).unwrap();
    assert_ne!(
        fdflags & libc::FD_CLOEXEC,
        0,
        "received fd is close-on-exec"
    );
    let addr = w.ip(&["addr", "show", "dev", "sapt0"]);
    for want in ["mtu 1400", "inet 10.77.0.1/24", "inet6 fd77::1/64", ",UP"] {
        assert!(addr.contains(want), "{want:?} missing in:\n{addr}");
    }
    assert!(
        !addr.contains("tentative"),
        "v6 address usable at once:\n{addr}"
    );
    assert!(w.ip(&["route"]).contains("10.78.0.0/24 dev sapt0"));

    // Routes inside the allow-list are applied, on the same connection.
    c.route_change("10.80.1.0/24", true).unwrap();
    c.route_change("10.80.2.0/24", true).unwrap();
    c.route_change("10.80.2.0/24", true)
        .expect("re-adding a route privd holds is idempotent");
    c.route_change("fd80:0:0:5::/64", true).unwrap();
    let routes = w.ip(&["route"]);
    assert!(routes.contains("10.80.1.0/24 dev sapt0"), "{routes}");
    assert!(routes.contains("10.80.2.0/24 dev sapt0"), "{routes}");
    let routes6 = w.ip(&["-6", "route"]);
    assert!(routes6.contains("fd80:0:0:5::/64 dev sapt0"), "{routes6}");

    // Outside the allow-list, or not privd's: refused, nothing changes.
    for bad in ["10.81.0.0/24", "0.0.0.0/0", "fd81::/64"] {
        match c.route_change(bad, true) {
            Err(PrivdError::Refused {
                code: ErrorCode::RouteNotAllowed,
                detail,
            }) => {
                assert!(detail.contains("allowed_routes"), "{detail}")
            }
            other => panic!("{bad}: expected a refusal, got {other:?}"),
        }
    }
    assert!(!w.ip(&["route"]).contains("10.81.0.0"));
    assert!(
        matches!(c.route_change("10.80.1.7/24", true), Err(PrivdError::Refused { detail, .. }) if detail.contains("host bits"))
    );
    assert!(matches!(
        c.route_change("not a prefix", true),
        Err(PrivdError::Refused { .. })
    ));

    // Removal: only routes privd installed, and only once.
    c.route_change("10.80.1.0/24", false).unwrap();
    assert!(!w.ip(&["route"]).contains("10.80.1.0/24"));
    assert!(matches!(
        c.route_change("10.80.1.0/24", false),
        Err(PrivdError::Refused {
            code: ErrorCode::RouteNotInstalled,
            ..
        })
    ));
    // The operator's routes are not netd's to remove.
    assert!(matches!(
        c.route_change("10.78.0.0/24", false),
        Err(PrivdError::Refused {
            code: ErrorCode::RouteConfigured,
            ..
        })
    ));
    assert!(w.ip(&["route"]).contains("10.78.0.0/24 dev sapt0"));

    // A stalled client does not hold up others.
    let mut stalled = UnixStream::connect(&w.socket).unwrap();
    stalled.write_all(&[0, 0]).unwrap();
    let status = w.client().status().unwrap();
    assert_eq!(status.tun_name, "sapt0");
    assert_eq!(
        status.routes,
        ["10.78.0.0/24", "10.80.2.0/24", "fd80:0:0:5::/64"]
    );
    assert!(status.nat_active);
    assert!(status.forwarding);
    assert!(status.granted >= 6, "{status:?}");
    assert!(status.refused >= 6, "{status:?}");
    // The last refusals, each its audit line, newest last, at most eight.
    assert_eq!(status.last_refusals.len() as u64, status.refused.min(8));
    let newest: Value = serde_json::from_str(status.last_refusals.last().unwrap()).unwrap();
    assert_eq!(newest["outcome"], "refused", "{newest}");
    assert_eq!(newest["params"]["prefix"], "10.78.0.0/24", "{newest}");
    assert!(status.offloads.is_empty());
    for i in 0..8 {
        let _ = w.client().route_change(&format!("10.9{i}.0.0/24"), true);
    }
    let last = w.client().status().unwrap().last_refusals;
    assert_eq!(last.len(), 8);
    assert!(last[0].contains("10.90.0.0/24") && last[7].contains("10.97.0.0/24"));
    drop(stalled);

    // Garbage, empty and unknown bodies get an error reply.
    for body in [&[0xffu8, 0xff, 0xff][..], &[], &[0x2a, 0x00]] {
        let mut frame = (body.len() as u32).to_be_bytes().to_vec();
        frame.extend_from_slice(body);
        assert_eq!(
            error_text(&raw_exchange(&w.socket, &frame)),
            "Malformed unknown or malformed request"
        );
    }
    // An oversize frame is refused before its body is read, then closed.
    let reply = raw_exchange(&w.socket, &(1u32 << 20).to_be_bytes());
    assert!(
        error_text(&reply).contains("exceeds"),
        "{}",
        error_text(&reply)
    );

    // Another uid in the socket group reaches privd and is refused, audited.
    let out = probe_as(&w, PROBE_UID, NOGROUP);
    assert!(
        out.contains("PROBE open_tun: permission-denied permission denied: only netd's uid"),
        "{out}"
    );
    // Status is read-only and open to anyone who reaches the socket.
    assert!(out.contains("PROBE status: ok"), "{out}");
    // Outside the group it cannot even connect.
    let out = probe_as(&w, PROBE_UID + 1, PROBE_UID + 1);
    assert!(out.contains("PROBE open_tun: permission-denied"), "{out}");
    assert!(out.contains("is this user in privd.socket_group?"), "{out}");

    let audit = w.audit();
    let refused_probe = audit
        .iter()
        .find(|v| v["peer_uid"] == PROBE_UID && v["request"] == "open_tun")
        .unwrap_or_else(|| panic!("no audit record for uid {PROBE_UID}: {audit:#?}"));
    assert_eq!(refused_probe["outcome"], "refused");
    assert!(refused_probe["peer_pid"].as_i64().unwrap() > 0);
    assert!(refused_probe["reason"]
        .as_str()
        .unwrap()
        .starts_with("permission denied"));
    assert!(refused_probe["ts"].as_str().unwrap().ends_with('Z'));
    assert!(
        !audit.iter().any(|v| v["peer_uid"] == PROBE_UID + 1),
        "never connected"
    );
    let granted_route = audit
        .iter()
        .find(|v| v["request"] == "route_change" && v["params"]["prefix"] == "10.80.1.0/24")
        .unwrap();
    assert_eq!(granted_route["outcome"], "granted");
    assert_eq!(granted_route["params"]["add"], true);
    assert_eq!(granted_route["peer_uid"], 0);
    assert!(audit.iter().any(|v| v["request"] == "route_change"
        && v["params"]["prefix"] == "10.81.0.0/24"
        && v["outcome"] == "refused"));
    assert!(audit
        .iter()
        .any(|v| v["request"] == "unknown" && v["outcome"] == "refused"));

    // NAT: the table exists while privd runs, and goes with it.
    let table = w.in_ns(&["nft", "list", "table", "inet", "sapper"]);
    assert!(
        table.status.success(),
        "{}",
        String::from_utf8_lossy(&table.stderr)
    );
    let table = String::from_utf8_lossy(&table.stdout).into_owned();
    assert!(
        table.contains("masquerade") && table.contains("10.77.0.0/24"),
        "{table}"
    );
    assert!(table.contains("oifname != \"sapt0\""), "{table}");
    let fwd = w.in_ns(&["cat", "/proc/sys/net/ipv4/ip_forward"]).stdout;
    let fwd = String::from_utf8_lossy(&fwd);
    assert_eq!(fwd.trim(), "1");

    drop(c);
    drop(fd);
    let status = w.stop();
    assert!(status.success(), "privd exit: {status}");
    assert!(!w
        .in_ns(&["nft", "list", "table", "inet", "sapper"])
        .status
        .success());
    // privd's own uid may not write to the root-owned directory: the socket
    // stays behind, answering nobody, and the next start replaces it.
    assert!(
        UnixStream::connect(&w.socket).is_err(),
        "nobody listens after shutdown"
    );
    assert!(
        !w.ip(&["link"]).contains("sapt0"),
        "TUN gone with privd's fd"
    );
}

/// With `offload = true` the TUN carries a virtio_net_hdr and has the
/// kernel's checksum and segmentation offloads on; privd names them in its
/// replies and the kernel shows them (ethtool).
#[test]
fn tun_offloads_are_probed_and_reported() {
    let config = MAIN_CONFIG.replace("offload = false", "offload = true");
    let w = World::new(&config);
    let (fd, opened) = w.client().open_tun().unwrap();
    assert!(opened.vnet_hdr, "{opened:?}");
    let (_, flags) = tun_info(&fd);
    assert_eq!(flags & libc::IFF_VNET_HDR, libc::IFF_VNET_HDR);
    for want in ["csum", "tso4", "tso6"] {
        assert!(
            opened.offloads.iter().any(|o| o == want),
            "{want}: {opened:?}"
        );
    }
    assert_eq!(w.client().status().unwrap().offloads, opened.offloads);
    let k = w.in_ns(&["ethtool", "-k", "sapt0"]);
    let k = String::from_utf8_lossy(&k.stdout);
    for want in ["tx-checksumming: on", "tcp-segmentation-offload: on"] {
        assert!(k.contains(want), "{want:?} missing in:\n{k}");
    }
    let uso = opened.offloads.iter().any(|o| o == "uso4");
    assert_eq!(k.contains("tx-udp-segmentation: on"), uso, "{k}");
    let started = w.lines().into_iter().find(|l| l.contains("serving"));
    let joined = opened.offloads.join(",");
    assert!(started
        .unwrap_or_default()
        .contains(&format!("offloads [{joined}]")));
}

#[test]
fn root_is_refused_when_netd_is_someone_else() {
    let mut w = World::new(&format!(
        "netd_uid = {PROBE_UID}\n[privd.tun]\nname = \"sapt1\"\naddresses = [\"10.66.0.1/24\"]\n"
    ));
    let mut c = w.client();
    assert!(matches!(
        c.open_tun(),
        Err(PrivdError::PermissionDenied { .. })
    ));
    // Anyone but netd gets one reply per connection.
    assert!(matches!(c.status(), Err(PrivdError::Io { .. })));
    // Read-only status answers root like any reader.
    assert!(w.client().status().is_ok());
    // netd's uid is served (it is in the socket group here).
    let out = probe_as(&w, PROBE_UID, NOGROUP);
    assert!(out.contains("PROBE open_tun: ok"), "{out}");
    assert!(out.contains("PROBE status: ok"), "{out}");
    // NAT is off: no table.
    assert!(!w
        .in_ns(&["nft", "list", "table", "inet", "sapper"])
        .status
        .success());
    let audit = w.audit();
    assert!(audit
        .iter()
        .any(|v| v["peer_uid"] == 0 && v["request"] == "open_tun" && v["outcome"] == "refused"));
    assert!(audit.iter().any(|v| v["peer_uid"] == PROBE_UID
        && v["request"] == "open_tun"
        && v["outcome"] == "granted"));
    assert!(w.stop().success());
}

/// 64 idle connections from another uid in the socket group take no slot
/// of netd's: netd (root here) still gets its TUN, and privd audits the
/// connections it turned away.
#[test]
fn an_operator_uid_cannot_lock_netd_out() {
    let mut w = World::new("netd_uid = 0\n[privd.tun]\nname = \"sapt2\"\n");
    let exe = w.dir.join("probe");
    std::fs::copy(std::env::current_exe().unwrap(), &exe).unwrap();
    std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut hog = Command::new(&exe)
        .args([
            "--ignored",
            "--exact",
            "probe_child",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(PROBE_ENV, &w.socket)
        .env(HOLD_ENV, "1")
        .uid(PROBE_UID)
        .gid(NOGROUP)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(hog.stdout.take().unwrap());
    let mut line = String::new();
    // libtest prints "test probe_child ... " on the same line first.
    while !line.contains("PROBE held") {
        line.clear();
        assert!(out.read_line(&mut line).unwrap() > 0, "probe ended early");
    }
    assert!(line.trim().ends_with("PROBE held 64"), "{line}");
    // "netd restarts": a fresh connection from netd's uid, after all 64.
    let (fd, opened) = w.client().open_tun().unwrap();
    assert_eq!(tun_info(&fd).0, "sapt2");
    assert_eq!(opened.name, "sapt2");
    // Two admitted (closed after one reply or 5 s idle), 62 turned away; the
    // stderr reader may lag, so wait (bounded) for the lines.
    let refused = |w: &World| {
        w.audit()
            .iter()
            .filter(|v| v["peer_uid"] == PROBE_UID && v["request"] == "connect")
            .count()
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while refused(&w) < 62 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(refused(&w), 62, "{:#?}", w.audit());
    drop(hog.stdin.take());
    let _ = wait_bounded(&mut hog, Duration::from_secs(10));
    assert!(w.stop().success());
}

/// The nft teardown helper removes the table even when privd cannot: here
/// privd is killed with SIGKILL.
#[test]
fn a_killed_privd_takes_its_nat_table_along() {
    let cfg = "netd_uid = 0\n[privd.tun]\nname = \"sapt3\"\naddresses = [\"10.55.0.1/24\"]\n";
    let mut w = World::new(&format!("{cfg}[privd.nat]\nenable = true\n"));
    let table = |w: &World| {
        w.in_ns(&["nft", "list", "table", "inet", "sapper"])
            .status
            .success()
    };
    // The socket accepts from bind on; an answer means setup is over.
    assert!(w.client().status().unwrap().nat_active);
    assert!(table(&w), "table installed");
    let mut child = w.privd.take().unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while table(&w) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        !table(&w),
        "table left behind by a killed privd: {:?}",
        w.lines()
    );
}

#[test]
fn config_errors_are_clear() {
    sapper_tests::privd_user();
    let dir = std::env::temp_dir().join(format!("sapt-cfg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = dir.join("sapper.toml");
    let run = |text: &str| {
        std::fs::write(&cfg, text).unwrap();
        let out = Command::new(&bins().privd)
            .arg("--config")
            .arg(&cfg)
            .output();
        let out = out.unwrap();
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let err = run("[node]\nname = \"x\"\n");
    assert!(err.contains("no [privd] section"), "{err}");
    // Started as root, privd refuses to go on without the user to become.
    let err = run("[privd]\nnetd_uid = 0\nuser = \"sapt-nobody-here\"\n[privd.tun]\n");
    assert!(
        err.contains("privd.user \"sapt-nobody-here\" does not exist") && err.contains("useradd"),
        "{err}"
    );
    let err = run("[privd]\nnetd_user = \"sapper-privd\"\n[privd.tun]\n");
    assert!(err.contains("privd.user must not be netd's user"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}
