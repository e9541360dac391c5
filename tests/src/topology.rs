//! The standard test network and the daemons running in it.
//!
//! ```text
//!   E (entry)                 X (exit)                   P (private)
//!   sap0 10.99.0.1/24         sap0 10.99.0.2/24
//!   ve-x 10.10.0.1/24 ─────── vx-e 10.10.0.2/24
//!                             vx-p 10.20.0.1/24 ──────── vp-x 10.20.0.2/24
//! ```
//!
//! P has no default route: its replies reach E only because the exit
//! masquerades tunnel traffic to its own 10.20.0.1. The entry's privd routes
//! 10.20.0.0/24 into the TUN; the exit announces it.
//!
//! [`Topology`] is a guard: dropping it (also while a test panics) stops every
//! process it started, deletes the namespaces and removes its temporary
//! directory. When the drop happens during a panic it first prints every
//! daemon's log, so a failed CI run shows why.

use crate::bins::{bins, tool, Bins};
use crate::blast::Summary;
use crate::cmd::{run_ok, run_timeout, wait_until, WAIT};
use crate::netns::{self, Netns};
use serde_json::Value;
use std::fmt::Write as _;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

/// Entry's underlay address.
pub const ENTRY_UNDERLAY: &str = "10.10.0.1";
/// Exit's underlay address.
pub const EXIT_UNDERLAY: &str = "10.10.0.2";
/// Exit's address on the private network.
pub const EXIT_PRIVATE: &str = "10.20.0.1";
/// The private host, reachable only through the exit.
pub const PRIVATE_HOST: &str = "10.20.0.2";
/// The private network.
pub const PRIVATE_NET: &str = "10.20.0.0/24";
/// TUN interface name in both nodes.
pub const TUN_NAME: &str = "sap0";

/// Transport between the two netds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// QUIC on UDP 4433.
    Quic,
    /// WebSocket over TLS on TCP 8443, path `/sapper`.
    Ws,
}

impl Transport {
    /// Config spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Quic => "quic",
            Transport::Ws => "ws",
        }
    }

    fn port(self) -> u16 {
        match self {
            Transport::Quic => 4433,
            Transport::Ws => 8443,
        }
    }
}

/// One of the two tunnel nodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Node {
    /// The entry, in namespace E.
    Entry,
    /// The exit, in namespace X.
    Exit,
}

impl Node {
    /// Lower-case name, also the node's `[node] name`.
    pub fn as_str(self) -> &'static str {
        match self {
            Node::Entry => "entry",
            Node::Exit => "exit",
        }
    }

    /// The other node.
    pub fn other(self) -> Node {
        match self {
            Node::Entry => Node::Exit,
            Node::Exit => Node::Entry,
        }
    }

    fn underlay(self) -> &'static str {
        match self {
            Node::Entry => ENTRY_UNDERLAY,
            Node::Exit => EXIT_UNDERLAY,
        }
    }
}

/// How to build a topology.
#[derive(Debug, Clone)]
pub struct Options {
    /// Transport of the single link.
    pub transport: Transport,
    /// Which node listens; the other one connects.
    pub listener: Node,
    /// PSK written to the entry's psk file.
    pub entry_psk: String,
    /// PSK written to the exit's psk file.
    pub exit_psk: String,
    /// Start privd and netd on both nodes (false: only the network).
    pub start_daemons: bool,
    /// `netd.operator_group` on both nodes (members may change things over
    /// the management socket).
    pub operator_group: Option<String>,
    /// `netd.tls.key_exchange` of the entry and of the exit (None: the
    /// default, which is "hybrid").
    pub key_exchange: [Option<String>; 2],
    /// TOML lines added to the entry's and the exit's netd part (tables
    /// such as `[netd.limits]` or another `[[netd.listen]]`).
    pub extra: [Vec<String>; 2],
    /// Keys added to the entry's and the exit's `[node]` table.
    pub node_lines: [Vec<String>; 2],
    /// The connector's `[[netd.connect]]` address instead of the
    /// listener's underlay address (the listener's port).
    pub connect_host: Option<String>,
    /// Keys added to the connector's `[[netd.connect]]` entry.
    pub connect_lines: Vec<String>,
    /// Keys added to the exit's `[privd.nat]` table (e.g. `sources`).
    pub exit_nat_lines: Vec<String>,
    /// The exit's announce keys instead of `announce_routes = [PRIVATE_NET]`
    /// (when not empty).
    pub exit_announce: Vec<String>,
    /// Keys added to the entry's and the exit's `[privd.tun]` table (e.g.
    /// `offload = true`).
    pub tun_lines: [Vec<String>; 2],
}

impl Options {
    /// The standard case: exit listens, both sides share a fresh PSK.
    pub fn new(transport: Transport) -> Options {
        let psk = random_hex(24);
        Options {
            transport,
            listener: Node::Exit,
            entry_psk: psk.clone(),
            exit_psk: psk,
            start_daemons: true,
            operator_group: None,
            key_exchange: [None, None],
            extra: [Vec::new(), Vec::new()],
            node_lines: [Vec::new(), Vec::new()],
            connect_host: None,
            connect_lines: Vec::new(),
            exit_nat_lines: Vec::new(),
            exit_announce: Vec::new(),
            tun_lines: [Vec::new(), Vec::new()],
        }
    }

    /// Only namespaces, veths and addresses; no daemons.
    pub fn network_only() -> Options {
        Options {
            start_daemons: false,
            ..Options::new(Transport::Quic)
        }
    }

    /// Makes `node` the listener.
    pub fn listener(mut self, node: Node) -> Options {
        self.listener = node;
        self
    }

    /// Sets `netd.operator_group` on both nodes.
    pub fn operator_group(mut self, group: &str) -> Options {
        self.operator_group = Some(group.to_string());
        self
    }

    /// Sets `netd.tls.key_exchange` on `node`.
    pub fn key_exchange(mut self, node: Node, value: &str) -> Options {
        self.key_exchange[node as usize] = Some(value.to_string());
        self
    }

    /// Adds TOML lines to `node`'s netd part.
    pub fn extra(mut self, node: Node, lines: &[&str]) -> Options {
        self.extra[node as usize].extend(lines.iter().map(|l| l.to_string()));
        self
    }

    /// Adds keys to `node`'s `[node]` table.
    pub fn node_lines(mut self, node: Node, lines: &[&str]) -> Options {
        self.node_lines[node as usize].extend(lines.iter().map(|l| l.to_string()));
        self
    }

    /// Gives the two sides different PSKs.
    pub fn mismatched_psk(mut self) -> Options {
        self.exit_psk = random_hex(24);
        assert_ne!(self.entry_psk, self.exit_psk);
        self
    }
}

/// `n` random bytes from /dev/urandom as lower-case hex (fresh PSKs).
pub fn random_hex(n: usize) -> String {
    let mut buf = vec![0u8; n];
    let mut f = fs::File::open("/dev/urandom").expect("open /dev/urandom");
    std::io::Read::read_exact(&mut f, &mut buf).expect("read /dev/urandom");
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

/// Runs one checksummed `sapper-blast` transfer: starts `serve` (already
/// `sapper-blast serve ADDR …` inside the receiving namespace) as a managed
/// process in `daemons`, waits until it listens, runs `send` to completion
/// and returns (sender's summary, receiver's summary). Every wait is bounded.
pub fn blast_transfer(
    daemons: &mut Vec<Daemon>,
    dir: &Path,
    serve: Command,
    mut send: Command,
) -> (Summary, Summary) {
    let label = format!("blast-serve-{}", daemons.len());
    daemons.push(Daemon::start(&label, dir, serve));
    let idx = daemons.len() - 1;
    let stdout = daemons[idx].stdout.clone();
    wait_until("sapper-blast to listen", WAIT, || {
        fs::read_to_string(&stdout)
            .ok()
            .filter(|s| s.contains("listening"))
            .map(|_| ())
    })
    .unwrap_or_else(|e| panic!("{e}"));
    let out = run_timeout(&mut send, Duration::from_secs(75)).unwrap_or_else(|e| panic!("{e}"));
    let sent_text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "sapper-blast send failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let sent = Summary::parse(&sent_text)
        .unwrap_or_else(|| panic!("no summary from sapper-blast send: {sent_text}"));
    let received = wait_until("sapper-blast serve to finish", WAIT, || {
        let d = &mut daemons[idx];
        d.try_exit().map(|_| Summary::parse(&d.stdout_text()))
    })
    .unwrap_or_else(|e| panic!("{e}"))
    .unwrap_or_else(|| {
        panic!(
            "sapper-blast serve printed no summary: {}",
            daemons[idx].stderr_text()
        )
    });
    (sent, received)
}

/// A process started by the harness, with its output going to files.
#[derive(Debug)]
pub struct Daemon {
    /// Short label, e.g. `entry-netd`.
    pub label: String,
    /// File receiving stdout.
    pub stdout: PathBuf,
    /// File receiving stderr.
    pub stderr: PathBuf,
    child: Child,
    exited: Option<std::process::ExitStatus>,
}

impl Daemon {
    /// Spawns `cmd` (stdin closed, stdout and stderr into
    /// `DIR/<label>.stdout` and `DIR/<label>.stderr`; a label used before in
    /// the same directory, e.g. a restarted daemon, gets `<label>.<n>.*`).
    pub fn start(label: &str, dir: &Path, mut cmd: Command) -> Daemon {
        let mut stem = label.to_string();
        let mut n = 1;
        while dir.join(format!("{stem}.stderr")).exists() {
            n += 1;
            stem = format!("{label}.{n}");
        }
        let stdout = dir.join(format!("{stem}.stdout"));
        let stderr = dir.join(format!("{stem}.stderr"));
        let out = fs::File::create(&stdout).expect("create stdout log");
        let err = fs::File::create(&stderr).expect("create stderr log");
        cmd.stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err))
            .env("RUST_BACKTRACE", "1");
        let desc = crate::cmd::describe(&cmd);
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start `{desc}`: {e}"));
        Daemon {
            label: label.to_string(),
            stdout,
            stderr,
            child,
            exited: None,
        }
    }

    /// SIGKILL (no goodbye to peers) and reap.
    pub fn kill(&mut self) {
        if self.try_exit().is_some() {
            return;
        }
        let _ = self.child.kill();
        if let Ok(s) = self.child.wait() {
            self.exited = Some(s);
        }
    }

    /// The process id (the binary's own: `ip netns exec` execs it).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything it wrote to stderr so far.
    pub fn stderr_text(&self) -> String {
        fs::read(&self.stderr)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// Everything it wrote to stdout so far.
    pub fn stdout_text(&self) -> String {
        fs::read(&self.stdout)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// Its exit status if it has exited.
    pub fn try_exit(&mut self) -> Option<std::process::ExitStatus> {
        if self.exited.is_none() {
            if let Ok(Some(s)) = self.child.try_wait() {
                self.exited = Some(s);
            }
        }
        self.exited
    }

    /// SIGTERM, up to 3 s of grace, then SIGKILL; always reaps.
    pub fn stop(&mut self) {
        if self.try_exit().is_some() {
            return;
        }
        // SAFETY: kill has no memory-safety preconditions.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline {
            if self.try_exit().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        if let Ok(s) = self.child.wait() {
            self.exited = Some(s);
        }
    }
}

/// Limits how many topologies run at once inside one test process
/// (`SAPPER_E2E_PARALLEL`, default 2): each runs four daemons and the
/// machines this runs on may have two cores. Shared with
/// [`crate::chain::Chain`]; held until dropped.
pub struct Slot(());

static SLOTS: Mutex<usize> = Mutex::new(0);
static SLOTS_FREED: Condvar = Condvar::new();

thread_local! {
    /// Slots this thread (one test) holds: a test's second topology (or
    /// chain) rides on its first slot, so SAPPER_E2E_PARALLEL=1 cannot make
    /// a test that needs two wait for itself.
    static HELD: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// How long a test waits for a slot before it fails (the others it waits
/// for have their own deadlines; this bounds the wait for the slot itself).
const SLOT_WAIT: Duration = Duration::from_secs(1800);

impl Slot {
    /// Waits for a free slot (at once when this thread already holds one).
    pub fn acquire() -> Slot {
        if HELD.with(|h| h.get()) == 0 {
            let max: usize = std::env::var("SAPPER_E2E_PARALLEL")
                .ok()
                .and_then(|v| v.parse().ok())
                .filter(|n| *n > 0)
                .unwrap_or(2);
            let deadline = Instant::now() + SLOT_WAIT;
            let mut used = SLOTS.lock().unwrap_or_else(|e| e.into_inner());
            while *used >= max {
                let left = deadline.saturating_duration_since(Instant::now());
                assert!(
                    !left.is_zero(),
                    "no free e2e slot within {SLOT_WAIT:?} (SAPPER_E2E_PARALLEL={max})"
                );
                used = SLOTS_FREED
                    .wait_timeout(used, left)
                    .unwrap_or_else(|e| e.into_inner())
                    .0;
            }
            *used += 1;
        }
        HELD.with(|h| h.set(h.get() + 1));
        Slot(())
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let outermost = HELD.with(|h| {
            let n = h.get().saturating_sub(1);
            h.set(n);
            n == 0
        });
        if outermost {
            let mut used = SLOTS.lock().unwrap_or_else(|e| e.into_inner());
            *used = used.saturating_sub(1);
            SLOTS_FREED.notify_one();
        }
    }
}

/// The E/X/P network and its daemons. See the module docs.
pub struct Topology {
    /// Temporary directory with configs, PSKs, sockets, state and logs.
    pub dir: PathBuf,
    /// What it was built from.
    pub opts: Options,
    /// The daemons' binaries (`None` for a network-only topology).
    pub bins: Option<&'static Bins>,
    /// `sapper-blast`.
    pub blast_bin: PathBuf,
    daemons: Vec<Daemon>,
    /// Namespace of the entry.
    pub entry: Netns,
    /// Namespace of the exit.
    pub exit: Netns,
    /// Namespace of the private host.
    pub private: Netns,
    _slot: Slot,
}

impl Topology {
    /// Builds the network and, if `opts.start_daemons`, starts privd and netd
    /// on both nodes (listener first) and waits until their sockets exist.
    /// Does not wait for the tunnel: see [`Topology::wait_for_tunnel`].
    pub fn start(opts: Options) -> Topology {
        crate::require_env();
        let bins = opts.start_daemons.then(bins);
        let blast_bin = tool("sapper-blast");
        let slot = Slot::acquire();
        let id = netns::next_id();
        let dir = scratch_dir("e2e", id);
        // Each namespace becomes owned by the topology the moment it exists,
        // so a failure half-way still cleans up what was made.
        let entry = Netns::create(netns::name_for('E', id));
        let mut topo = Topology {
            dir,
            opts,
            bins,
            blast_bin,
            daemons: Vec::new(),
            exit: Netns::create(netns::name_for('X', id)),
            private: Netns::create(netns::name_for('P', id)),
            entry,
            _slot: slot,
        };
        topo.build_network();
        if topo.opts.start_daemons {
            topo.start_daemons();
        }
        topo
    }

    fn build_network(&self) {
        let (e, x, p) = (&self.entry, &self.exit, &self.private);
        e.ip(&[
            "link",
            "add",
            "ve-x",
            "type",
            "veth",
            "peer",
            "name",
            "vx-e",
            "netns",
            x.name(),
        ]);
        x.ip(&[
            "link",
            "add",
            "vx-p",
            "type",
            "veth",
            "peer",
            "name",
            "vp-x",
            "netns",
            p.name(),
        ]);
        e.ip(&[
            "addr",
            "add",
            &format!("{ENTRY_UNDERLAY}/24"),
            "dev",
            "ve-x",
        ]);
        x.ip(&["addr", "add", &format!("{EXIT_UNDERLAY}/24"), "dev", "vx-e"]);
        x.ip(&["addr", "add", &format!("{EXIT_PRIVATE}/24"), "dev", "vx-p"]);
        p.ip(&["addr", "add", &format!("{PRIVATE_HOST}/24"), "dev", "vp-x"]);
        e.ip(&["link", "set", "ve-x", "up"]);
        x.ip(&["link", "set", "vx-e", "up"]);
        x.ip(&["link", "set", "vx-p", "up"]);
        p.ip(&["link", "set", "vp-x", "up"]);
    }

    /// The daemons' binaries; panics for a network-only topology.
    pub fn daemon_bins(&self) -> &'static Bins {
        self.bins
            .expect("this topology was built without daemons (Options::network_only)")
    }

    /// The namespace of `node`.
    pub fn ns(&self, node: Node) -> &Netns {
        match node {
            Node::Entry => &self.entry,
            Node::Exit => &self.exit,
        }
    }

    /// `DIR/<node>`.
    pub fn node_dir(&self, node: Node) -> PathBuf {
        self.dir.join(node.as_str())
    }

    /// The node's config file.
    pub fn config_path(&self, node: Node) -> PathBuf {
        self.node_dir(node).join("sapper.toml")
    }

    /// netd's management socket of `node`.
    pub fn mgmt_socket(&self, node: Node) -> PathBuf {
        self.node_dir(node).join("netd.sock")
    }

    /// privd's socket of `node`.
    pub fn privd_socket(&self, node: Node) -> PathBuf {
        self.node_dir(node).join("privd.sock")
    }

    /// The TOML config of `node`. `fingerprint` is the listener's certificate
    /// fingerprint, needed by the connecting side.
    pub fn config_text(&self, node: Node, fingerprint: Option<&str>) -> String {
        let d = self.node_dir(node);
        let p = |name: &str| d.join(name).display().to_string();
        let t = self.opts.transport;
        let mut s = String::new();
        let _ = writeln!(s, "[node]");
        let _ = writeln!(s, "name = \"{}\"", node.as_str());
        let _ = writeln!(s, "role = \"{}\"", node.as_str());
        let _ = writeln!(s, "psk_file = \"{}\"", p("psk"));
        for l in &self.opts.node_lines[node as usize] {
            let _ = writeln!(s, "{l}");
        }
        let _ = writeln!(s);
        let _ = writeln!(s, "[netd]");
        let _ = writeln!(s, "user = \"nobody\"");
        let _ = writeln!(s, "group = \"nogroup\"");
        let _ = writeln!(s, "state_dir = \"{}\"", p("state"));
        let _ = writeln!(s, "management_socket = \"{}\"", p("netd.sock"));
        let _ = writeln!(s, "privd_socket = \"{}\"", p("privd.sock"));
        let _ = writeln!(s, "ping_interval_ms = 200");
        let _ = writeln!(s, "reconnect_min_ms = 100");
        let _ = writeln!(s, "reconnect_max_ms = 1000");
        if node == Node::Exit && self.opts.exit_announce.is_empty() {
            let _ = writeln!(s, "announce_routes = [\"{PRIVATE_NET}\"]");
        } else if node == Node::Exit {
            for l in &self.opts.exit_announce {
                let _ = writeln!(s, "{l}");
            }
        }
        if let Some(g) = &self.opts.operator_group {
            let _ = writeln!(s, "operator_group = \"{g}\"");
        }
        let _ = writeln!(s);
        if node == self.opts.listener {
            let _ = writeln!(s, "[[netd.listen]]");
            let _ = writeln!(s, "transport = \"{}\"", t.as_str());
            let _ = writeln!(s, "address = \"0.0.0.0:{}\"", t.port());
            if t == Transport::Ws {
                let _ = writeln!(s, "ws_path = \"/sapper\"");
            }
        } else {
            let peer = node.other();
            let _ = writeln!(s, "[[netd.connect]]");
            let _ = writeln!(s, "transport = \"{}\"", t.as_str());
            let host = self.opts.connect_host.as_deref().unwrap_or(peer.underlay());
            let _ = writeln!(s, "address = \"{host}:{}\"", t.port());
            for l in &self.opts.connect_lines {
                let _ = writeln!(s, "{l}");
            }
            let _ = writeln!(s, "server_name = \"{}\"", peer.as_str());
            let _ = writeln!(
                s,
                "fingerprint = \"{}\"",
                fingerprint.expect("the connecting side needs the listener's fingerprint")
            );
            if t == Transport::Ws {
                let _ = writeln!(s, "ws_path = \"/sapper\"");
            }
        }
        if let Some(kx) = &self.opts.key_exchange[node as usize] {
            let _ = writeln!(s);
            let _ = writeln!(s, "[netd.tls]");
            let _ = writeln!(s, "key_exchange = \"{kx}\"");
        }
        if !self.opts.extra[node as usize].is_empty() {
            let _ = writeln!(s);
            for l in &self.opts.extra[node as usize] {
                let _ = writeln!(s, "{l}");
            }
        }
        let _ = writeln!(s);
        let _ = writeln!(s, "[privd]");
        let _ = writeln!(s, "socket = \"{}\"", p("privd.sock"));
        let _ = writeln!(s, "socket_group = \"nogroup\"");
        let _ = writeln!(s, "netd_user = \"nobody\"");
        let _ = writeln!(s);
        let _ = writeln!(s, "[privd.tun]");
        let _ = writeln!(s, "name = \"{TUN_NAME}\"");
        let (v4, v6) = match node {
            Node::Entry => ("10.99.0.1/24", "fd99::1/64"),
            Node::Exit => ("10.99.0.2/24", "fd99::2/64"),
        };
        let _ = writeln!(s, "addresses = [\"{v4}\", \"{v6}\"]");
        let _ = writeln!(s, "mtu = 1280");
        if node == Node::Entry {
            let _ = writeln!(s, "routes = [\"{PRIVATE_NET}\"]");
        }
        let _ = writeln!(s, "allowed_routes = [\"10.0.0.0/8\", \"fd00::/8\"]");
        for l in &self.opts.tun_lines[node as usize] {
            let _ = writeln!(s, "{l}");
        }
        if node == Node::Exit {
            let _ = writeln!(s);
            let _ = writeln!(s, "[privd.nat]");
            let _ = writeln!(s, "enable = true");
            for l in &self.opts.exit_nat_lines {
                let _ = writeln!(s, "{l}");
            }
        }
        s
    }

    fn write_node_files(&self, node: Node, fingerprint: Option<&str>) {
        let d = self.node_dir(node);
        fs::create_dir_all(d.join("state")).expect("create node dir");
        set_mode(&d, 0o755);
        set_mode(&d.join("state"), 0o700);
        let psk = match node {
            Node::Entry => &self.opts.entry_psk,
            Node::Exit => &self.opts.exit_psk,
        };
        write_file(&d.join("psk"), &format!("{psk}\n"), 0o600);
        write_file(
            &self.config_path(node),
            &self.config_text(node, fingerprint),
            0o644,
        );
    }

    /// Runs `sapper-netd --print-fingerprint` for `node` (generating its
    /// certificate) and returns the fingerprint.
    pub fn fingerprint(&self, node: Node) -> String {
        let out = run_ok(
            Command::new(&self.daemon_bins().netd)
                .arg("--config")
                .arg(self.config_path(node))
                .arg("--print-fingerprint"),
            Duration::from_secs(30),
        )
        .unwrap_or_else(|e| panic!("fingerprint of {}: {e}", node.as_str()));
        out.lines()
            .map(str::trim)
            .rfind(|l| !l.is_empty())
            .unwrap_or_else(|| panic!("sapper-netd --print-fingerprint printed nothing"))
            .to_string()
    }

    /// Writes both nodes' files and starts privd and netd on both (listener
    /// first); [`Topology::start`] does this unless `start_daemons` is false.
    pub fn start_daemons(&mut self) {
        let listener = self.opts.listener;
        let connector = listener.other();
        self.write_node_files(listener, None);
        let fp = self.fingerprint(listener);
        self.write_node_files(connector, Some(&fp));
        crate::privd_user();
        for node in [listener, connector] {
            let cfg = self.config_path(node);
            self.spawn(
                &format!("{}-privd", node.as_str()),
                node,
                &self.daemon_bins().privd.clone(),
                &["--config".as_ref(), cfg.as_os_str()],
            );
        }
        for node in [listener, connector] {
            let sock = self.privd_socket(node);
            self.wait_for(&format!("{} privd socket", node.as_str()), WAIT, || {
                sock.exists().then_some(())
            });
        }
        for node in [listener, connector] {
            let cfg = self.config_path(node);
            self.spawn(
                &format!("{}-netd", node.as_str()),
                node,
                &self.daemon_bins().netd.clone(),
                &["--config".as_ref(), cfg.as_os_str()],
            );
            let sock = self.mgmt_socket(node);
            self.wait_for(
                &format!("{} netd management socket", node.as_str()),
                WAIT,
                || sock.exists().then_some(()),
            );
        }
    }

    /// Starts `ns_cmd` (already wrapped for its namespace) as a managed
    /// process labelled `label`.
    pub fn spawn_in(&mut self, label: &str, ns_cmd: Command) -> usize {
        self.daemons.push(Daemon::start(label, &self.dir, ns_cmd));
        self.daemons.len() - 1
    }

    /// Starts `program args` inside `node`'s namespace as a managed process.
    pub fn spawn(
        &mut self,
        label: &str,
        node: Node,
        program: &Path,
        args: &[&std::ffi::OsStr],
    ) -> usize {
        let mut cmd = self.ns(node).cmd(program);
        cmd.args(args);
        self.spawn_in(label, cmd)
    }

    /// The managed process labelled `label` (e.g. `entry-netd`).
    pub fn daemon(&self, label: &str) -> &Daemon {
        self.daemons
            .iter()
            .find(|d| d.label == label)
            .unwrap_or_else(|| panic!("no process labelled {label}"))
    }

    /// netd of `node`.
    pub fn netd(&self, node: Node) -> &Daemon {
        self.daemon(&format!("{}-netd", node.as_str()))
    }

    /// privd of `node`.
    pub fn privd(&self, node: Node) -> &Daemon {
        self.daemon(&format!("{}-privd", node.as_str()))
    }

    /// SIGKILLs the managed process labelled `label` (e.g. `exit-netd`), as
    /// a crash would, and relabels it `<label> (killed)` so that the
    /// "a daemon died" checks no longer count it; its logs stay in the dump.
    pub fn kill(&mut self, label: &str) {
        let d = self
            .daemons
            .iter_mut()
            .find(|d| d.label == label)
            .unwrap_or_else(|| panic!("no process labelled {label}"));
        d.kill();
        d.label = format!("{label} (killed)");
    }

    /// Panics (printing logs via Drop) if a privd or netd has exited.
    pub fn assert_daemons_alive(&mut self) {
        let mut dead = Vec::new();
        for d in &mut self.daemons {
            if d.label.ends_with("-privd") || d.label.ends_with("-netd") {
                if let Some(s) = d.try_exit() {
                    dead.push(format!("{} exited with {s}", d.label));
                }
            }
        }
        assert!(dead.is_empty(), "daemon(s) died: {}", dead.join(", "));
    }

    /// Bounded poll that also fails at once if a daemon dies meanwhile.
    pub fn wait_for<T>(
        &mut self,
        what: &str,
        timeout: Duration,
        mut probe: impl FnMut() -> Option<T>,
    ) -> T {
        let mut died = None;
        let res = {
            let daemons = &mut self.daemons;
            wait_until(what, timeout, || {
                for d in daemons.iter_mut() {
                    if d.label.ends_with("-privd") || d.label.ends_with("-netd") {
                        if let Some(s) = d.try_exit() {
                            died = Some(format!("{} exited with {s}", d.label));
                            return Some(None);
                        }
                    }
                }
                probe().map(Some)
            })
        };
        match res {
            Ok(Some(v)) => v,
            Ok(None) => panic!(
                "while waiting for {what}: {}",
                died.unwrap_or_else(|| "a daemon exited".into())
            ),
            Err(e) => panic!("{e}"),
        }
    }

    /// Runs `sapperctl --socket <node's mgmt socket> ARGS` (10 s limit).
    pub fn ctl(&self, node: Node, args: &[&str]) -> Output {
        let mut cmd = Command::new(&self.daemon_bins().ctl);
        cmd.arg("--socket").arg(self.mgmt_socket(node)).args(args);
        run_timeout(&mut cmd, Duration::from_secs(10)).unwrap_or_else(|e| panic!("{e}"))
    }

    /// `sapperctl ARGS --json`, parsed; an error if it fails or is not JSON.
    pub fn ctl_json(&self, node: Node, args: &[&str]) -> Result<Value, String> {
        let mut all = args.to_vec();
        all.push("--json");
        let out = self.ctl(node, &all);
        let stdout = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() {
            return Err(format!(
                "sapperctl {} on {} failed ({}): {}{}",
                all.join(" "),
                node.as_str(),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim(),
                stdout.trim()
            ));
        }
        serde_json::from_str(&stdout).map_err(|e| {
            format!(
                "sapperctl {} printed no JSON ({e}): {stdout}",
                all.join(" ")
            )
        })
    }

    /// The `peers` array of `sapperctl peers --json` on `node`.
    pub fn peers(&self, node: Node) -> Result<Vec<Value>, String> {
        let v = self.ctl_json(node, &["peers"])?;
        v.get("peers")
            .and_then(Value::as_array)
            .cloned()
            .ok_or_else(|| format!("no \"peers\" array in {v}"))
    }

    /// Waits until each node lists the other as a peer.
    pub fn wait_for_peers(&mut self) {
        for node in [Node::Entry, Node::Exit] {
            let want = node.other().as_str();
            let mut last = String::new();
            let what = format!("{} to list peer {want}", node.as_str());
            let found = wait_until(&what, WAIT, || {
                if let Err(e) = self.check_alive_quiet() {
                    last = e;
                    return Some(false);
                }
                match self.peers(node) {
                    Ok(p) if p.iter().any(|p| p["name"] == want) => Some(true),
                    Ok(p) => {
                        last = format!("peers: {p:?}");
                        None
                    }
                    Err(e) => {
                        last = e;
                        None
                    }
                }
            });
            match found {
                Ok(true) => {}
                Ok(false) => panic!("while waiting for {what}: {last}"),
                Err(e) => panic!("{e}; last answer: {last}"),
            }
        }
    }

    fn check_alive_quiet(&self) -> Result<(), String> {
        // try_wait needs &mut; /proc tells us without it.
        for d in &self.daemons {
            if d.label.ends_with("-privd") || d.label.ends_with("-netd") {
                let stat =
                    fs::read_to_string(format!("/proc/{}/stat", d.pid())).unwrap_or_default();
                let state = stat
                    .rsplit_once(") ")
                    .and_then(|(_, rest)| rest.chars().next());
                if matches!(state, None | Some('Z') | Some('X')) {
                    return Err(format!("{} has exited", d.label));
                }
            }
        }
        Ok(())
    }

    /// Waits for both peers and then for one ping from E to P to get through
    /// (routes may land a moment after the handshake).
    pub fn wait_for_tunnel(&mut self) {
        self.wait_for_peers();
        let ns = self.entry.name().to_string();
        self.wait_for("a first ping from E to P through the tunnel", WAIT, || {
            ping_ns(&ns, PRIVATE_HOST, 1, 1)
                .status
                .success()
                .then_some(())
        });
    }

    /// `ping -c COUNT -W WAIT TARGET` inside `ns`.
    pub fn ping(&self, ns: &Netns, target: &str, count: u32, wait_s: u32) -> Output {
        ping_ns(ns.name(), target, count, wait_s)
    }

    /// Moves `bytes` bytes with `sapper-blast` from `from` to `to_addr:5001`
    /// served in `to`; returns (sender's summary, receiver's summary).
    pub fn blast(&mut self, from: Node, to: &str, to_addr: &str, bytes: u64) -> (Summary, Summary) {
        let to_ns = match to {
            "entry" => self.entry.name().to_string(),
            "exit" => self.exit.name().to_string(),
            "private" => self.private.name().to_string(),
            other => panic!("unknown namespace {other}"),
        };
        let addr = format!("{to_addr}:5001");
        let mut serve = Command::new("ip");
        serve
            .args(["netns", "exec", &to_ns])
            .arg(&self.blast_bin)
            .args(["serve", &addr, "--timeout", "90"]);
        let mut send = self.ns(from).cmd(&self.blast_bin);
        send.args(["send", &addr, &bytes.to_string(), "--timeout", "60"]);
        blast_transfer(&mut self.daemons, &self.dir, serve, send)
    }

    /// Waits until `label`'s stderr contains `needle`.
    pub fn wait_for_log(&mut self, label: &str, needle: &str, timeout: Duration) {
        let path = self.daemon(label).stderr.clone();
        self.wait_for(&format!("\"{needle}\" in {label}'s log"), timeout, || {
            fs::read(&path)
                .ok()
                .filter(|b| String::from_utf8_lossy(b).contains(needle))
                .map(|_| ())
        });
    }

    /// Waits until one line of `label`'s stderr contains every one of
    /// `needles`; returns that line.
    pub fn wait_for_log_line(
        &mut self,
        label: &str,
        needles: &[&str],
        timeout: Duration,
    ) -> String {
        let path = self.daemon(label).stderr.clone();
        self.wait_for(
            &format!("a line with {needles:?} in {label}'s log"),
            timeout,
            || {
                let text = fs::read(&path).ok()?;
                String::from_utf8_lossy(&text)
                    .lines()
                    .find(|l| needles.iter().all(|n| l.contains(n)))
                    .map(str::to_string)
            },
        )
    }

    /// All logs, for humans.
    pub fn dump_logs(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "===== sapper e2e logs ({}) =====", self.dir.display());
        write_daemon_logs(&mut s, &self.daemons);
        for node in [Node::Entry, Node::Exit] {
            let cfg = self.config_path(node);
            if let Ok(text) = fs::read_to_string(&cfg) {
                let _ = writeln!(s, "----- {} -----\n{text}", cfg.display());
            }
        }
        let _ = writeln!(s, "===== end of sapper e2e logs =====");
        s
    }
}

/// `ping -n -c COUNT -W WAIT TARGET` inside the namespace named `ns`, with a
/// time limit.
pub fn ping_ns(ns: &str, target: &str, count: u32, wait_s: u32) -> Output {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", ns, "ping", "-n", "-c"])
        .arg(count.to_string())
        .arg("-W")
        .arg(wait_s.to_string())
        .arg(target);
    let limit = Duration::from_secs(u64::from(count * (wait_s + 1)) + 10);
    run_timeout(&mut cmd, limit).unwrap_or_else(|e| panic!("{e}"))
}

impl Drop for Topology {
    fn drop(&mut self) {
        stop_all(&mut self.daemons);
        finish(
            &self.dir,
            std::thread::panicking().then(|| self.dump_logs()),
        );
        // The Netns fields drop next and delete the namespaces.
    }
}

/// A fresh, empty temporary directory for one test network, named by
/// `kind`, this process and `id`; netd runs as nobody and must reach its
/// sockets in here, so it is 0755.
pub fn scratch_dir(kind: &str, id: usize) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("sapper-{kind}-{}-{id}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
    set_mode(&dir, 0o755);
    dir
}

/// Appends the last 300 lines of every daemon's stderr and stdout to `s`.
pub fn write_daemon_logs(s: &mut String, daemons: &[Daemon]) {
    for d in daemons {
        for (kind, text) in [("stderr", d.stderr_text()), ("stdout", d.stdout_text())] {
            let lines: Vec<&str> = text.lines().collect();
            let skip = lines.len().saturating_sub(300);
            let _ = writeln!(
                s,
                "----- {} {kind} (pid {}, {} lines{}) -----",
                d.label,
                d.pid(),
                lines.len(),
                if skip > 0 { ", last 300 shown" } else { "" }
            );
            for l in &lines[skip..] {
                let _ = writeln!(s, "{l}");
            }
        }
    }
}

/// Stops `daemons` in reverse start order (netd before privd).
pub fn stop_all(daemons: &mut [Daemon]) {
    for d in daemons.iter_mut().rev() {
        d.stop();
    }
}

/// Prints `logs` (present when the test failed) and removes `dir`, unless
/// SAPPER_E2E_KEEP asks to keep a failed test's files.
pub fn finish(dir: &Path, logs: Option<String>) {
    let failed = logs.is_some();
    if let Some(logs) = logs {
        eprintln!("{logs}");
    }
    if failed && std::env::var_os("SAPPER_E2E_KEEP").is_some() {
        eprintln!("SAPPER_E2E_KEEP is set: leaving {}", dir.display());
    } else {
        let _ = fs::remove_dir_all(dir);
    }
}

pub(crate) fn set_mode(path: &Path, mode: u32) {
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("chmod {}: {e}", path.display()));
}

pub(crate) fn write_file(path: &Path, text: &str, mode: u32) {
    fs::write(path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    set_mode(path, mode);
}
