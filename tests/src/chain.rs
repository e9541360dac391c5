//! Chains of nodes: a line of Sapper nodes, each in its own namespace, and a
//! private network behind the last one.
//!
//! ```text
//!   node 0             link 0            node 1   …   node n-1              P
//!   ch-down 10.10.0.1 ─────── ch-up 10.10.0.2      ch-down 10.20.0.1 ─── ch-up 10.20.0.2
//!                             ch-down 10.11.0.1 ─ link 1 ─ ch-up 10.11.0.2
//! ```
//!
//! Link `k` joins node `k` (interface `ch-down`, `10.(10+k).0.1/24`) to node
//! `k+1` (interface `ch-up`, `10.(10+k).0.2/24`); node `k` dials node `k+1`
//! over the link's transport, so a node in the middle both connects and
//! listens (a relay). The last node reaches P (`10.20.0.0/24`); P has no
//! default route, so its replies reach the first node only through a
//! masquerading exit. No node has a route to a network it is not attached to.
//!
//! Nodes with a privd get a TUN `sap0` with `10.99.0.<k+1>/24` and
//! `allowed_routes = ["10.0.0.0/8"]`; the last node's privd also masquerades
//! (kernel exit). Roles, hints and the posture are whatever the spec's
//! `[node]` lines make of them: nothing is configured implicitly, so a chain
//! is the tool for negotiation tests.
//!
//! [`Chain`] is a guard like [`crate::Topology`]: dropping it (also while a
//! test panics) stops every process, deletes the namespaces and removes the
//! temporary directory, after printing every daemon's log and config when
//! the test failed. It shares the parallelism limit with `Topology`.

use crate::bins::{bins, tool, Bins};
use crate::blast::Summary;
use crate::cmd::{run_ok, run_timeout, wait_until, WAIT};
use crate::netns::{self, Netns};
use crate::topology::{
    ping_ns, random_hex, scratch_dir, set_mode, write_file, Daemon, Slot, Transport, TUN_NAME,
};
use serde_json::Value;
use std::fmt::Write as _;
use std::fs;
use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::Duration;

/// The private network behind the last node.
pub const PRIVATE_NET: &str = "10.20.0.0/24";
/// The last node's address on the private network.
pub const LAST_PRIVATE: &str = "10.20.0.1";
/// The private host.
pub const PRIVATE_HOST: &str = "10.20.0.2";

/// A node's interface toward the next node (or P).
pub const DOWN_IF: &str = "ch-down";
/// A node's interface toward the previous node (P's toward the last node).
pub const UP_IF: &str = "ch-up";

/// UDP port of QUIC listeners.
pub const QUIC_PORT: u16 = 4433;
/// TCP port of WebSocket listeners.
pub const WS_PORT: u16 = 8443;

/// One node of a chain.
#[derive(Debug, Clone)]
pub struct NodeSpec {
    /// `[node] name`, and the prefix of its daemons' labels.
    pub name: String,
    /// Upper-case letter in the namespace name (not `P`).
    pub tag: char,
    /// Run a privd with a TUN (this node is TUN-capable).
    pub privd: bool,
    /// `privd.tun.routes`: installed with the TUN.
    pub tun_routes: Vec<String>,
    /// `netd.announce_routes`.
    pub announce: Vec<String>,
    /// Written to the node's PSK file and named by `node.psk_file`; `None`
    /// writes no PSK at all.
    pub psk: Option<String>,
    /// Extra lines for `[node]`, e.g. `zero_config = true`.
    pub node_lines: Vec<String>,
    /// Extra lines for `[privd.tun]`, e.g. `offload = true`.
    pub tun_lines: Vec<String>,
}

impl NodeSpec {
    /// A netd-only node with no PSK, no announcement and no extra settings.
    pub fn new(name: &str, tag: char) -> NodeSpec {
        assert!(
            tag.is_ascii_uppercase() && tag != 'P',
            "node tag {tag:?}: an upper-case letter other than P"
        );
        NodeSpec {
            name: name.to_string(),
            tag,
            privd: false,
            tun_routes: Vec::new(),
            announce: Vec::new(),
            psk: None,
            node_lines: Vec::new(),
            tun_lines: Vec::new(),
        }
    }

    /// Gives the node a privd and a TUN.
    pub fn with_privd(mut self) -> NodeSpec {
        self.privd = true;
        self
    }

    /// Adds a route privd installs with the TUN.
    pub fn tun_route(mut self, prefix: &str) -> NodeSpec {
        self.tun_routes.push(prefix.to_string());
        self
    }

    /// Adds a prefix to `netd.announce_routes`.
    pub fn announce(mut self, prefix: &str) -> NodeSpec {
        self.announce.push(prefix.to_string());
        self
    }

    /// Sets the PSK.
    pub fn psk(mut self, psk: &str) -> NodeSpec {
        self.psk = Some(psk.to_string());
        self
    }

    /// Adds a line to `[node]`.
    pub fn node_line(mut self, line: &str) -> NodeSpec {
        self.node_lines.push(line.to_string());
        self
    }

    /// Adds a line to `[privd.tun]` (the node needs a privd).
    pub fn tun_line(mut self, line: &str) -> NodeSpec {
        self.tun_lines.push(line.to_string());
        self
    }
}

/// A chain: nodes in order, and the transport of each link between them.
#[derive(Debug, Clone, Default)]
pub struct ChainSpec {
    /// The nodes; node `k` dials node `k+1`.
    pub nodes: Vec<NodeSpec>,
    /// `links[k]` joins `nodes[k]` and `nodes[k+1]`.
    pub links: Vec<Transport>,
}

impl ChainSpec {
    /// A chain of one node (add more with [`ChainSpec::then`]).
    pub fn first(node: NodeSpec) -> ChainSpec {
        ChainSpec {
            nodes: vec![node],
            links: Vec::new(),
        }
    }

    /// Appends `node`, dialled by the current last node over `transport`.
    pub fn then(mut self, transport: Transport, node: NodeSpec) -> ChainSpec {
        self.nodes.push(node);
        self.links.push(transport);
        self
    }

    /// Adds `line` to `[node]` of every node.
    pub fn all_nodes(mut self, line: &str) -> ChainSpec {
        for n in &mut self.nodes {
            n.node_lines.push(line.to_string());
        }
        self
    }

    /// Entry (privd, no configured route) →QUIC→ relay (netd only) →WS→
    /// exit (privd with NAT, announcing the private network), all sharing a
    /// fresh PSK and `zero_config = true`, none with a `node.role`.
    pub fn entry_relay_exit() -> ChainSpec {
        let psk = random_hex(24);
        ChainSpec::first(NodeSpec::new("entry", 'E').with_privd().psk(&psk))
            .then(Transport::Quic, NodeSpec::new("relay", 'R').psk(&psk))
            .then(
                Transport::Ws,
                NodeSpec::new("exit", 'X')
                    .with_privd()
                    .announce(PRIVATE_NET)
                    .psk(&psk),
            )
            .all_nodes("zero_config = true")
    }
}

fn port(t: Transport) -> u16 {
    match t {
        Transport::Quic => QUIC_PORT,
        Transport::Ws => WS_PORT,
    }
}

/// The subnet prefix (first three octets) of link `k`.
fn link_net(k: usize) -> String {
    assert!(k < 10, "at most 10 links");
    format!("10.{}.0", 10 + k)
}

/// The running chain. See the module docs.
pub struct Chain {
    /// Temporary directory with configs, PSKs, sockets, state and logs.
    pub dir: PathBuf,
    /// What it was built from.
    pub spec: ChainSpec,
    /// The daemons' binaries.
    pub bins: &'static Bins,
    /// `sapper-blast`.
    pub blast_bin: PathBuf,
    daemons: Vec<Daemon>,
    /// One namespace per node, in chain order.
    pub nodes: Vec<Netns>,
    /// The private host's namespace.
    pub private: Netns,
    _slot: Slot,
}

impl Chain {
    /// Builds the network, writes every config (pinning each listener's
    /// certificate into its dialler's config), starts the privds, then the
    /// netds from the last node to the first, and waits for their sockets.
    /// Does not wait for links or roles.
    pub fn start(spec: ChainSpec) -> Chain {
        crate::require_env();
        assert!(!spec.nodes.is_empty(), "a chain needs a node");
        assert_eq!(spec.links.len() + 1, spec.nodes.len(), "one link per gap");
        let bins = bins();
        let blast_bin = tool("sapper-blast");
        let slot = Slot::acquire();
        let id = netns::next_id();
        let dir = scratch_dir("chain", id);
        let private = Netns::create(netns::name_for('P', id));
        let mut chain = Chain {
            dir,
            bins,
            blast_bin,
            daemons: Vec::new(),
            nodes: Vec::new(),
            private,
            spec,
            _slot: slot,
        };
        // Owned by the guard as soon as each exists.
        for i in 0..chain.spec.nodes.len() {
            let tag = chain.spec.nodes[i].tag;
            chain.nodes.push(Netns::create(netns::name_for(tag, id)));
        }
        chain.build_network();
        chain.write_configs();
        chain.start_daemons();
        chain
    }

    fn build_network(&self) {
        let n = self.nodes.len();
        for k in 0..n {
            let ns = &self.nodes[k];
            let (peer_ns, local_addr, peer_addr) = if k + 1 < n {
                let net = link_net(k);
                (
                    self.nodes[k + 1].name(),
                    format!("{net}.1/24"),
                    format!("{net}.2/24"),
                )
            } else {
                (
                    self.private.name(),
                    format!("{LAST_PRIVATE}/24"),
                    format!("{PRIVATE_HOST}/24"),
                )
            };
            ns.ip(&[
                "link", "add", DOWN_IF, "type", "veth", "peer", "name", UP_IF, "netns", peer_ns,
            ]);
            ns.ip(&["addr", "add", &local_addr, "dev", DOWN_IF]);
            ns.ip(&["link", "set", DOWN_IF, "up"]);
            let peer = if k + 1 < n {
                &self.nodes[k + 1]
            } else {
                &self.private
            };
            peer.ip(&["addr", "add", &peer_addr, "dev", UP_IF]);
            peer.ip(&["link", "set", UP_IF, "up"]);
        }
    }

    /// Index of the node named `name`.
    pub fn index(&self, name: &str) -> usize {
        self.spec
            .nodes
            .iter()
            .position(|n| n.name == name)
            .unwrap_or_else(|| panic!("no node named {name} in the chain"))
    }

    /// The namespace of node `name`.
    pub fn ns(&self, name: &str) -> &Netns {
        &self.nodes[self.index(name)]
    }

    /// `DIR/<name>`.
    pub fn node_dir(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// The node's config file.
    pub fn config_path(&self, name: &str) -> PathBuf {
        self.node_dir(name).join("sapper.toml")
    }

    /// netd's management socket of node `name`.
    pub fn mgmt_socket(&self, name: &str) -> PathBuf {
        self.node_dir(name).join("netd.sock")
    }

    /// privd's socket of node `name` (exists only with a privd).
    pub fn privd_socket(&self, name: &str) -> PathBuf {
        self.node_dir(name).join("privd.sock")
    }

    /// The TOML config of node `k`; `downstream_fp` is the certificate
    /// fingerprint of node `k+1`, which node `k` dials.
    pub fn config_text(&self, k: usize, downstream_fp: Option<&str>) -> String {
        let spec = &self.spec.nodes[k];
        let d = self.node_dir(&spec.name);
        let p = |name: &str| d.join(name).display().to_string();
        let list = |v: &[String]| {
            v.iter()
                .map(|r| format!("\"{r}\""))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let mut s = String::new();
        let _ = writeln!(s, "[node]");
        let _ = writeln!(s, "name = \"{}\"", spec.name);
        if spec.psk.is_some() {
            let _ = writeln!(s, "psk_file = \"{}\"", p("psk"));
        }
        for l in &spec.node_lines {
            let _ = writeln!(s, "{l}");
        }
        let _ = writeln!(s);
        let _ = writeln!(s, "[netd]");
        let _ = writeln!(s, "user = \"nobody\"");
        let _ = writeln!(s, "group = \"nogroup\"");
        let _ = writeln!(s, "state_dir = \"{}\"", p("state"));
        let _ = writeln!(s, "management_socket = \"{}\"", p("netd.sock"));
        if spec.privd {
            let _ = writeln!(s, "privd_socket = \"{}\"", p("privd.sock"));
        }
        let _ = writeln!(s, "ping_interval_ms = 200");
        let _ = writeln!(s, "reconnect_min_ms = 100");
        let _ = writeln!(s, "reconnect_max_ms = 1000");
        if !spec.announce.is_empty() {
            let _ = writeln!(s, "announce_routes = [{}]", list(&spec.announce));
        }
        if k > 0 {
            let t = self.spec.links[k - 1];
            let _ = writeln!(s);
            let _ = writeln!(s, "[[netd.listen]]");
            let _ = writeln!(s, "transport = \"{}\"", t.as_str());
            let _ = writeln!(s, "address = \"0.0.0.0:{}\"", port(t));
            if t == Transport::Ws {
                let _ = writeln!(s, "ws_path = \"/sapper\"");
            }
        }
        if k + 1 < self.spec.nodes.len() {
            let t = self.spec.links[k];
            let next = &self.spec.nodes[k + 1];
            let _ = writeln!(s);
            let _ = writeln!(s, "[[netd.connect]]");
            let _ = writeln!(s, "transport = \"{}\"", t.as_str());
            let _ = writeln!(s, "address = \"{}.2:{}\"", link_net(k), port(t));
            let _ = writeln!(s, "server_name = \"{}\"", next.name);
            let _ = writeln!(
                s,
                "fingerprint = \"{}\"",
                downstream_fp.expect("a dialling node needs the next node's fingerprint")
            );
            if t == Transport::Ws {
                let _ = writeln!(s, "ws_path = \"/sapper\"");
            }
        }
        if spec.privd {
            let last = k + 1 == self.spec.nodes.len();
            let _ = writeln!(s);
            let _ = writeln!(s, "[privd]");
            let _ = writeln!(s, "socket = \"{}\"", p("privd.sock"));
            let _ = writeln!(s, "socket_group = \"nogroup\"");
            let _ = writeln!(s, "netd_user = \"nobody\"");
            let _ = writeln!(s);
            let _ = writeln!(s, "[privd.tun]");
            let _ = writeln!(s, "name = \"{TUN_NAME}\"");
            let _ = writeln!(
                s,
                "addresses = [\"10.99.0.{}/24\", \"fd99::{}/64\"]",
                k + 1,
                k + 1
            );
            let _ = writeln!(s, "mtu = 1280");
            if !spec.tun_routes.is_empty() {
                let _ = writeln!(s, "routes = [{}]", list(&spec.tun_routes));
            }
            let _ = writeln!(s, "allowed_routes = [\"10.0.0.0/8\", \"fd00::/8\"]");
            for l in &spec.tun_lines {
                let _ = writeln!(s, "{l}");
            }
            if last {
                let _ = writeln!(s);
                let _ = writeln!(s, "[privd.nat]");
                let _ = writeln!(s, "enable = true");
            }
        }
        s
    }

    /// Writes every node's files, from the last node to the first so that
    /// each dialler can pin the fingerprint of the node it dials.
    fn write_configs(&self) {
        let mut downstream_fp: Option<String> = None;
        for k in (0..self.spec.nodes.len()).rev() {
            let spec = &self.spec.nodes[k];
            let d = self.node_dir(&spec.name);
            fs::create_dir_all(d.join("state")).expect("create node dir");
            set_mode(&d, 0o755);
            set_mode(&d.join("state"), 0o700);
            if let Some(psk) = &spec.psk {
                write_file(&d.join("psk"), &format!("{psk}\n"), 0o600);
            }
            write_file(
                &self.config_path(&spec.name),
                &self.config_text(k, downstream_fp.as_deref()),
                0o644,
            );
            downstream_fp = Some(self.fingerprint(&spec.name));
        }
    }

    /// Runs `sapper-netd --print-fingerprint` for node `name` (generating
    /// its certificate) and returns the fingerprint.
    pub fn fingerprint(&self, name: &str) -> String {
        let out = run_ok(
            Command::new(&self.bins.netd)
                .arg("--config")
                .arg(self.config_path(name))
                .arg("--print-fingerprint"),
            Duration::from_secs(30),
        )
        .unwrap_or_else(|e| panic!("fingerprint of {name}: {e}"));
        out.lines()
            .map(str::trim)
            .rfind(|l| !l.is_empty())
            .unwrap_or_else(|| panic!("sapper-netd --print-fingerprint printed nothing"))
            .to_string()
    }

    fn start_daemons(&mut self) {
        let names: Vec<String> = self.spec.nodes.iter().map(|n| n.name.clone()).collect();
        crate::privd_user();
        for (k, name) in names.iter().enumerate() {
            if self.spec.nodes[k].privd {
                let cfg = self.config_path(name);
                let mut cmd = self.nodes[k].cmd(&self.bins.privd);
                cmd.arg("--config").arg(cfg);
                self.daemons
                    .push(Daemon::start(&format!("{name}-privd"), &self.dir, cmd));
            }
        }
        for (k, name) in names.iter().enumerate() {
            if self.spec.nodes[k].privd {
                let sock = self.privd_socket(name);
                self.wait_for(&format!("{name} privd socket"), WAIT, || {
                    sock.exists().then_some(())
                });
            }
        }
        // Listeners before their diallers: the last node first.
        for name in names.iter().rev() {
            self.start_netd(name);
        }
    }

    /// Starts node `name`'s netd (again) and waits for its management socket.
    pub fn start_netd(&mut self, name: &str) {
        let k = self.index(name);
        let sock = self.mgmt_socket(name);
        // A killed netd leaves its socket behind; wait for the new one.
        let _ = fs::remove_file(&sock);
        let mut cmd = self.nodes[k].cmd(&self.bins.netd);
        cmd.arg("--config").arg(self.config_path(name));
        self.daemons
            .push(Daemon::start(&format!("{name}-netd"), &self.dir, cmd));
        self.wait_for(&format!("{name} netd management socket"), WAIT, || {
            sock.exists().then_some(())
        });
    }

    /// SIGKILLs node `name`'s netd, as a crash would (no goodbye to its
    /// peers). It no longer counts as a daemon that must stay alive.
    pub fn kill_netd(&mut self, name: &str) {
        let label = format!("{name}-netd");
        let d = self
            .daemons
            .iter_mut()
            .find(|d| d.label == label)
            .unwrap_or_else(|| panic!("no running {label}"));
        d.kill();
        d.label = format!("{label} (killed)");
    }

    /// The running process labelled `label` (e.g. `relay-netd`).
    pub fn daemon(&self, label: &str) -> &Daemon {
        self.daemons
            .iter()
            .find(|d| d.label == label)
            .unwrap_or_else(|| panic!("no process labelled {label}"))
    }

    /// A privd or netd that should run but has exited, if any. Reads /proc
    /// (an unreaped child shows as a zombie), so it needs no `&mut`.
    pub fn dead_daemon(&self) -> Option<String> {
        self.daemons
            .iter()
            .filter(|d| d.label.ends_with("-privd") || d.label.ends_with("-netd"))
            .find(|d| {
                let stat =
                    fs::read_to_string(format!("/proc/{}/stat", d.pid())).unwrap_or_default();
                let state = stat
                    .rsplit_once(") ")
                    .and_then(|(_, rest)| rest.chars().next());
                matches!(state, None | Some('Z') | Some('X'))
            })
            .map(|d| format!("{} has exited", d.label))
    }

    /// Panics (printing logs via Drop) if a privd or netd has exited.
    pub fn assert_daemons_alive(&self) {
        if let Some(dead) = self.dead_daemon() {
            panic!("{dead}");
        }
    }

    /// Calls `probe` until it returns `Some` (bounded by `timeout`); fails
    /// at once when a daemon dies meanwhile.
    pub fn wait_for<T>(
        &self,
        what: &str,
        timeout: Duration,
        mut probe: impl FnMut() -> Option<T>,
    ) -> T {
        let mut died = None;
        let res = wait_until(what, timeout, || {
            if let Some(d) = self.dead_daemon() {
                died = Some(d);
                return Some(None);
            }
            probe().map(Some)
        });
        match res {
            Ok(Some(v)) => v,
            Ok(None) => panic!(
                "while waiting for {what}: {}",
                died.unwrap_or_else(|| "a daemon exited".into())
            ),
            Err(e) => panic!("{e}"),
        }
    }

    /// Runs `sapperctl --socket <name's mgmt socket> ARGS` (10 s limit).
    pub fn ctl(&self, name: &str, args: &[&str]) -> Output {
        let mut cmd = Command::new(&self.bins.ctl);
        cmd.arg("--socket").arg(self.mgmt_socket(name)).args(args);
        run_timeout(&mut cmd, Duration::from_secs(10)).unwrap_or_else(|e| panic!("{e}"))
    }

    /// `sapperctl ARGS --json` on node `name`, parsed.
    pub fn ctl_json(&self, name: &str, args: &[&str]) -> Result<Value, String> {
        let mut all = args.to_vec();
        all.push("--json");
        let out = self.ctl(name, &all);
        let stdout = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() {
            return Err(format!(
                "sapperctl {} on {name} failed ({}): {}{}",
                all.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim(),
                stdout.trim()
            ));
        }
        serde_json::from_str(&stdout).map_err(|e| {
            format!(
                "sapperctl {} on {name} printed no JSON ({e}): {stdout}",
                all.join(" ")
            )
        })
    }

    /// `sapperctl status --json` of node `name`.
    pub fn status(&self, name: &str) -> Result<Value, String> {
        self.ctl_json(name, &["status"])
    }

    /// The `peers` array of `sapperctl peers --json` on node `name`.
    pub fn peers(&self, name: &str) -> Result<Vec<Value>, String> {
        let v = self.ctl_json(name, &["peers"])?;
        v.get("peers")
            .and_then(Value::as_array)
            .cloned()
            .ok_or_else(|| format!("no \"peers\" array in {v}"))
    }

    /// The names of node `name`'s peers (empty when netd does not answer).
    pub fn peer_names(&self, name: &str) -> Vec<String> {
        self.peers(name)
            .unwrap_or_default()
            .iter()
            .filter_map(|p| p["name"].as_str().map(str::to_string))
            .collect()
    }

    /// Waits until every node lists its chain neighbours as peers.
    pub fn wait_for_links(&self) {
        let names: Vec<String> = self.spec.nodes.iter().map(|n| n.name.clone()).collect();
        for (k, name) in names.iter().enumerate() {
            let mut want = Vec::new();
            if k > 0 {
                want.push(names[k - 1].clone());
            }
            if k + 1 < names.len() {
                want.push(names[k + 1].clone());
            }
            let mut last = Vec::new();
            let what = format!("{name} to list peers {want:?}");
            self.wait_for(&what, WAIT, || {
                last = self.peer_names(name);
                want.iter().all(|w| last.contains(w)).then_some(())
            });
        }
    }

    /// Waits until each `(node, role)` shows that role in
    /// `sapperctl status --json`; the panic names every node's last status.
    pub fn wait_for_roles(&self, want: &[(&str, &str)], timeout: Duration) {
        let mut last = String::new();
        let ok = wait_until("roles", timeout, || {
            if self.dead_daemon().is_some() {
                return Some(false);
            }
            last.clear();
            let mut all = true;
            for (name, role) in want {
                let got = self.status(name).unwrap_or_else(Value::String);
                all &= got["role"] == *role;
                let _ = write!(
                    last,
                    "\n  {name}: role {} ({})",
                    got["role"], got["role_reason"]
                );
            }
            all.then_some(true)
        });
        match ok {
            Ok(true) => {}
            Ok(false) => panic!(
                "while waiting for roles {want:?}: {}",
                self.dead_daemon().unwrap_or_default()
            ),
            Err(e) => panic!("{e}; wanted {want:?}, last seen:{last}"),
        }
    }

    /// The role node `name` reports now (`"?"` when netd does not answer).
    pub fn role(&self, name: &str) -> String {
        self.status(name)
            .ok()
            .and_then(|s| s["role"].as_str().map(str::to_string))
            .unwrap_or_else(|| "?".into())
    }

    /// `ip -n NS route show PREFIX` on node `name` (kernel routing table).
    pub fn kernel_route(&self, name: &str, prefix: &str) -> String {
        self.ns(name).ip(&["route", "show", prefix])
    }

    /// True when node `name`'s kernel routes `prefix` into its TUN.
    pub fn has_tun_route(&self, name: &str, prefix: &str) -> bool {
        self.kernel_route(name, prefix)
            .lines()
            .any(|l| l.starts_with(prefix) && l.contains(&format!("dev {TUN_NAME}")))
    }

    /// `ping -c COUNT -W WAIT TARGET` inside node `name`'s namespace.
    pub fn ping(&self, name: &str, target: &str, count: u32, wait_s: u32) -> Output {
        ping_ns(self.ns(name).name(), target, count, wait_s)
    }

    /// Moves `bytes` bytes with `sapper-blast` from node `from` to
    /// `PRIVATE_HOST:5001`, served in P; returns (sender's, receiver's)
    /// summary.
    pub fn blast_to_private(&mut self, from: &str, bytes: u64) -> (Summary, Summary) {
        let addr = format!("{PRIVATE_HOST}:5001");
        let mut serve = self.private.cmd(&self.blast_bin);
        serve.args(["serve", &addr, "--timeout", "90"]);
        let mut send = self.ns(from).cmd(&self.blast_bin);
        send.args(["send", &addr, &bytes.to_string(), "--timeout", "60"]);
        crate::topology::blast_transfer(&mut self.daemons, &self.dir, serve, send)
    }

    /// Moves `bytes` bytes with `sapper-blast` from node `from` to
    /// `addr:5001` served in node `to`'s namespace (or P's, `"private"`).
    pub fn blast(&mut self, from: &str, to: &str, addr: &str, bytes: u64) -> (Summary, Summary) {
        let addr = format!("{addr}:5001");
        let mut serve = if to == "private" {
            self.private.cmd(&self.blast_bin)
        } else {
            self.ns(to).cmd(&self.blast_bin)
        };
        serve.args(["serve", &addr, "--timeout", "90"]);
        let mut send = self.ns(from).cmd(&self.blast_bin);
        send.args(["send", &addr, &bytes.to_string(), "--timeout", "60"]);
        crate::topology::blast_transfer(&mut self.daemons, &self.dir, serve, send)
    }

    /// All logs and configs, for humans.
    pub fn dump_logs(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "===== sapper chain logs ({}) =====", self.dir.display());
        crate::topology::write_daemon_logs(&mut s, &self.daemons);
        for n in &self.spec.nodes {
            let cfg = self.config_path(&n.name);
            if let Ok(text) = fs::read_to_string(&cfg) {
                let _ = writeln!(s, "----- {} -----\n{text}", cfg.display());
            }
        }
        let _ = writeln!(s, "===== end of sapper chain logs =====");
        s
    }
}

impl Drop for Chain {
    fn drop(&mut self) {
        crate::topology::stop_all(&mut self.daemons);
        crate::topology::finish(
            &self.dir,
            std::thread::panicking().then(|| self.dump_logs()),
        );
        // The Netns fields drop next and delete the namespaces.
    }
}
