//! The node configuration file (`/etc/sapper/sapper.toml`), shared by privd
//! and netd; each reads its own section. Validation errors name the file and
//! the key so an operator can fix them without reading code.

use ipnet::IpNet;
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// Default config path.
pub const DEFAULT_CONFIG: &str = "/etc/sapper/sapper.toml";
/// Default privd socket.
pub const DEFAULT_PRIVD_SOCKET: &str = "/run/sapper/privd.sock";
/// Default netd management socket.
pub const DEFAULT_MGMT_SOCKET: &str = "/run/sapper/netd.sock";

/// A configuration error, naming where it is.
#[derive(Debug, thiserror::Error)]
#[error("{file}: {key}: {message}")]
pub struct ConfigError {
    /// The file.
    pub file: String,
    /// The offending key (dotted path), or `-` for syntax errors.
    pub key: String,
    /// What is wrong.
    pub message: String,
}

/// The whole file.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Settings both daemons use.
    #[serde(default)]
    pub node: NodeConfig,
    /// netd's section.
    pub netd: Option<NetdConfig>,
    /// privd's section.
    pub privd: Option<PrivdConfig>,
}

/// Role names as written in the config file.
#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum RoleName {
    /// Traffic enters here.
    Entry,
    /// Traffic leaves here.
    Exit,
    /// Forwards between neighbours.
    Relay,
}

/// `[node]`
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// Node name shown to peers; defaults to the host name.
    pub name: Option<String>,
    /// The role this node takes (a fixed hint until negotiation decides).
    pub role: Option<RoleName>,
    /// File holding the PSK. `%d/NAME` means `$CREDENTIALS_DIRECTORY/NAME`
    /// (systemd's `LoadCredential=NAME:...`), as `%d` does in a unit file.
    pub psk_file: Option<PathBuf>,
    /// Environment variable holding the PSK.
    pub psk_env: Option<String>,
    /// Turn automatic role negotiation and automatic routes back on under
    /// the secure posture.
    #[serde(default)]
    pub zero_config: bool,
    /// Override zero_config for negotiation alone.
    pub auto_negotiate: Option<bool>,
    /// Override zero_config for installing announced routes alone.
    pub auto_routes: Option<bool>,
    /// Run with no PSK at all. Must be asked for in so many words.
    #[serde(default)]
    pub insecure_open: bool,
    /// A role hint carried in the Handshake.
    pub hint: Option<HintConfig>,
    /// Do not announce this node's routes to peers.
    #[serde(default)]
    pub no_announce_routes: bool,
    /// Do not install routes peers announce.
    #[serde(default)]
    pub no_accept_routes: bool,
}

/// Hint strengths as written in the config file.
#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum HintLevelName {
    /// Take the role if negotiation is ambiguous.
    Prefer,
    /// Never take the role.
    Exclude,
    /// This role or Indeterminate.
    Fixed,
}

/// `[node.hint]`
#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct HintConfig {
    /// Strength.
    pub level: HintLevelName,
    /// Role the hint is about.
    pub role: RoleName,
}

/// Transport kinds.
#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    /// QUIC (datagrams for packets, a stream for control).
    Quic,
    /// WebSocket over TLS.
    Ws,
}

impl Transport {
    /// Lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Quic => "quic",
            Transport::Ws => "ws",
        }
    }
}

/// The WebSocket path used when none is configured.
pub fn default_ws_path() -> String {
    "/sapper".into()
}

/// `[[netd.listen]]`
#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct ListenConfig {
    /// Transport.
    pub transport: Transport,
    /// Address to bind.
    pub address: SocketAddr,
    /// HTTP path for WebSocket upgrades.
    #[serde(default = "default_ws_path")]
    pub ws_path: String,
    /// Peers on this listener may send from (and announce) only prefixes
    /// inside these; absent: no restriction beyond the ownership rules.
    pub allowed_sources: Option<Vec<IpNet>>,
}

/// `[[netd.connect]]`
#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct ConnectConfig {
    /// Transport.
    pub transport: Transport,
    /// `host:port` to dial.
    pub address: String,
    /// TLS server name; defaults to the host part of `address`.
    pub server_name: Option<String>,
    /// SHA-256 fingerprint (hex, colons allowed) of the peer's certificate.
    pub fingerprint: Option<String>,
    /// CA certificate (PEM) to verify the peer against.
    pub ca_file: Option<PathBuf>,
    /// HTTP path for WebSocket upgrades.
    #[serde(default = "default_ws_path")]
    pub ws_path: String,
    /// This peer may send from (and announce) only prefixes inside these;
    /// absent: no restriction beyond the ownership rules.
    pub allowed_sources: Option<Vec<IpNet>>,
}

fn default_state_dir() -> PathBuf {
    PathBuf::from("/var/lib/sapper")
}
fn default_mgmt() -> PathBuf {
    PathBuf::from(DEFAULT_MGMT_SOCKET)
}
fn default_ping_interval() -> u64 {
    1000
}
fn default_miss_limit() -> u32 {
    5
}
fn default_reconnect_min() -> u64 {
    250
}
fn default_reconnect_max() -> u64 {
    30_000
}
fn default_handshake_timeout() -> u64 {
    10_000
}
fn default_queue() -> usize {
    1024
}
fn default_workers() -> usize {
    1
}

/// `[netd]`
#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct NetdConfig {
    /// User to drop to when started as root.
    pub user: Option<String>,
    /// Group to drop to (defaults to the user's primary group).
    pub group: Option<String>,
    /// Where a generated certificate and key are kept.
    #[serde(default = "default_state_dir")]
    pub state_dir: PathBuf,
    /// Certificate (PEM); generated into `state_dir` when absent.
    pub cert_file: Option<PathBuf>,
    /// Private key (PEM) for `cert_file`.
    pub key_file: Option<PathBuf>,
    /// The user privd runs as, besides root: netd takes the TUN only from a
    /// privd socket whose listener is root or this user (SO_PEERCRED).
    pub privd_user: Option<String>,
    /// Management socket path.
    #[serde(default = "default_mgmt")]
    pub management_socket: PathBuf,
    /// Group that owns the management socket: its members can read status.
    pub management_group: Option<String>,
    /// Group whose members may also change things (connect, disconnect,
    /// routes, shutdown). Root and netd's own user always may.
    pub operator_group: Option<String>,
    /// privd's socket; absent on a node without a TUN.
    pub privd_socket: Option<PathBuf>,
    /// Interval between control-channel pings.
    #[serde(default = "default_ping_interval")]
    pub ping_interval_ms: u64,
    /// Unanswered pings after which a peer is dropped.
    #[serde(default = "default_miss_limit")]
    pub ping_miss_limit: u32,
    /// First reconnect delay.
    #[serde(default = "default_reconnect_min")]
    pub reconnect_min_ms: u64,
    /// Largest reconnect delay.
    #[serde(default = "default_reconnect_max")]
    pub reconnect_max_ms: u64,
    /// Time allowed for TLS plus the Sapper handshake.
    #[serde(default = "default_handshake_timeout")]
    pub handshake_timeout_ms: u64,
    /// Packets queued per peer before new ones are dropped.
    #[serde(default = "default_queue")]
    pub peer_queue: usize,
    /// Async worker threads. One is the default: on a 2-core host a single
    /// worker moved ~30% more through the tunnel than two (no cross-thread
    /// wake-ups per packet, and the other core stays free for the kernel
    /// and the applications); raise it on hosts with many peers and cores.
    #[serde(default = "default_workers")]
    pub worker_threads: usize,
    /// Prefixes this node reaches and offers to peers.
    #[serde(default)]
    pub announce_routes: Vec<IpNet>,
    /// Listeners.
    #[serde(default)]
    pub listen: Vec<ListenConfig>,
    /// Peers to dial.
    #[serde(default)]
    pub connect: Vec<ConnectConfig>,
    /// The userspace exit (`[netd.exit]`).
    #[serde(default)]
    pub exit: ExitConfig,
    /// TLS settings of every link (`[netd.tls]`).
    #[serde(default)]
    pub tls: TlsConfig,
    /// Bounds on what peers may make this node hold (`[netd.limits]`).
    #[serde(default)]
    pub limits: crate::peer_limits::PeerLimits,
}

/// Which key-exchange groups a node's links offer and accept
/// (`netd.tls.key_exchange`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum KeyExchange {
    /// Only the hybrid post-quantum group X25519MLKEM768: a peer that
    /// offers nothing else is refused. The default.
    #[default]
    Hybrid,
    /// X25519MLKEM768 first, then X25519 for peers that lack the hybrid.
    ClassicAllowed,
    /// Only X25519. For interoperability tests (it is what a node without
    /// post-quantum support looks like); not for production.
    ClassicOnly,
}

impl KeyExchange {
    /// Every value, as written in the config file.
    pub const NAMES: [&'static str; 3] = ["hybrid", "classic-allowed", "classic-only"];

    /// The name as written in the config file.
    pub fn as_str(self) -> &'static str {
        match self {
            KeyExchange::Hybrid => "hybrid",
            KeyExchange::ClassicAllowed => "classic-allowed",
            KeyExchange::ClassicOnly => "classic-only",
        }
    }

    /// Parses a config-file value.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "hybrid" => Some(KeyExchange::Hybrid),
            "classic-allowed" => Some(KeyExchange::ClassicAllowed),
            "classic-only" => Some(KeyExchange::ClassicOnly),
            _ => None,
        }
    }
}

fn default_key_exchange() -> String {
    KeyExchange::Hybrid.as_str().into()
}

/// `[netd.tls]`
#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// `"hybrid"` (default), `"classic-allowed"` or `"classic-only"`; see
    /// [`KeyExchange`]. Kept as text so a bad value is reported with its
    /// key by `Config::validate`.
    #[serde(default = "default_key_exchange")]
    pub key_exchange: String,
}

impl Default for TlsConfig {
    fn default() -> Self {
        Self {
            key_exchange: default_key_exchange(),
        }
    }
}

impl TlsConfig {
    /// The key-exchange setting; `Hybrid` for a value validation would have
    /// refused (a config that passed `Config::parse` never has one).
    pub fn key_exchange(&self) -> KeyExchange {
        KeyExchange::parse(&self.key_exchange).unwrap_or_default()
    }
}

fn default_privd_socket() -> PathBuf {
    PathBuf::from(DEFAULT_PRIVD_SOCKET)
}
fn default_tun_name() -> String {
    "sapper0".into()
}
fn default_mtu() -> u32 {
    1280
}

/// `[privd.tun]`
#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct TunConfig {
    /// Interface name.
    #[serde(default = "default_tun_name")]
    pub name: String,
    /// Addresses with prefix length.
    #[serde(default)]
    pub addresses: Vec<IpNet>,
    /// MTU.
    #[serde(default = "default_mtu")]
    pub mtu: u32,
    /// Routes installed when the TUN is created.
    #[serde(default)]
    pub routes: Vec<IpNet>,
    /// Prefixes inside which netd may add or remove routes later.
    #[serde(default)]
    pub allowed_routes: Vec<IpNet>,
    /// How many routes netd may hold through privd at once.
    #[serde(default = "default_max_routes")]
    pub max_routes: usize,
}

/// Default `privd.tun.max_routes`.
pub const DEFAULT_MAX_ROUTES: usize = 256;
/// Most routes on the TUN (`tun.routes` plus `tun.max_routes`): privd's
/// status reply lists them all within one 64 KiB frame.
pub const MAX_TUN_ROUTES: usize = 1024;

fn default_max_routes() -> usize {
    DEFAULT_MAX_ROUTES
}

/// `[privd.nat]`: kernel exit.
#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct NatConfig {
    /// Turn on forwarding and masquerade.
    #[serde(default)]
    pub enable: bool,
    /// Source prefixes to masquerade (the tunnel's addresses); defaults to
    /// the networks of the TUN addresses.
    #[serde(default)]
    pub sources: Vec<IpNet>,
}

/// `[privd]`
#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct PrivdConfig {
    /// Unix socket path.
    #[serde(default = "default_privd_socket")]
    pub socket: PathBuf,
    /// Group owning the socket (netd's group).
    pub socket_group: Option<String>,
    /// The only uid allowed to make requests, by name.
    pub netd_user: Option<String>,
    /// The only uid allowed to make requests, by number.
    pub netd_uid: Option<u32>,
    /// The TUN.
    pub tun: TunConfig,
    /// Kernel-exit NAT.
    pub nat: Option<NatConfig>,
}

/// The prefix that stands for systemd's credentials directory.
pub const CREDENTIALS_PREFIX: &str = "%d/";

impl Config {
    /// Rewrites `%d/NAME` in `node.psk_file`, `netd.cert_file` and
    /// `netd.key_file` to `creds/NAME`, where `creds` is
    /// `$CREDENTIALS_DIRECTORY` (systemd's `LoadCredential=`). The daemon
    /// passes the variable's value in, so parsing stays free of the
    /// environment. An error if a path uses `%d/` and there is no directory,
    /// or NAME is not a plain file name.
    pub fn expand_credentials(
        &mut self,
        file: &str,
        creds: Option<&Path>,
    ) -> Result<(), ConfigError> {
        let expand = |key: &str, p: &mut Option<PathBuf>| -> Result<(), ConfigError> {
            let Some(name) = p
                .as_ref()
                .and_then(|p| p.to_str())
                .and_then(|s| s.strip_prefix(CREDENTIALS_PREFIX))
            else {
                return Ok(());
            };
            let err = |message: String| ConfigError {
                file: file.into(),
                key: key.into(),
                message,
            };
            if name.is_empty() || name.contains('/') || name == "." || name == ".." {
                return Err(err(format!("{name:?} is not a credential name")));
            }
            let dir = creds.ok_or_else(|| {
                err("%d/ needs $CREDENTIALS_DIRECTORY: set LoadCredential= in the unit, or use a plain path".into())
            })?;
            *p = Some(dir.join(name));
            Ok(())
        };
        expand("node.psk_file", &mut self.node.psk_file)?;
        if let Some(n) = self.netd.as_mut() {
            expand("netd.cert_file", &mut n.cert_file)?;
            expand("netd.key_file", &mut n.key_file)?;
        }
        Ok(())
    }

    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: file.clone(),
            key: "-".into(),
            message: format!("cannot read: {e}"),
        })?;
        Self::parse(&text, &file)
    }

    /// Parses and validates config text; `file` is used in errors.
    pub fn parse(text: &str, file: &str) -> Result<Self, ConfigError> {
        let cfg: Config = toml::from_str(text).map_err(|e| ConfigError {
            file: file.into(),
            key: "-".into(),
            message: e.to_string().trim().replace('\n', " "),
        })?;
        cfg.validate(file)?;
        Ok(cfg)
    }

    fn validate(&self, file: &str) -> Result<(), ConfigError> {
        let err = |key: String, message: &str| ConfigError {
            file: file.into(),
            key,
            message: message.into(),
        };
        if let Some(name) = &self.node.name {
            if !crate::handshake::valid_name(name) {
                return Err(err(
                    "node.name".into(),
                    "1-64 ASCII letters, digits, '-', '_' or '.'",
                ));
            }
        }
        if self.node.psk_file.is_some() && self.node.psk_env.is_some() {
            return Err(err(
                "node.psk_env".into(),
                "set either psk_file or psk_env, not both",
            ));
        }
        if let Some(n) = &self.netd {
            if n.ping_interval_ms < 50 {
                return Err(err("netd.ping_interval_ms".into(), "must be at least 50"));
            }
            if n.ping_miss_limit == 0 {
                return Err(err("netd.ping_miss_limit".into(), "must be at least 1"));
            }
            if n.reconnect_min_ms == 0 || n.reconnect_max_ms < n.reconnect_min_ms {
                return Err(err(
                    "netd.reconnect_max_ms".into(),
                    "need 0 < reconnect_min_ms <= reconnect_max_ms",
                ));
            }
            if n.worker_threads == 0 || n.worker_threads > 64 {
                return Err(err("netd.worker_threads".into(), "must be 1..=64"));
            }
            if let Err((key, why)) = n.limits.check() {
                return Err(err(key.into(), why));
            }
            if n.peer_queue == 0 || n.peer_queue > 65536 {
                return Err(err("netd.peer_queue".into(), "must be 1..=65536"));
            }
            if n.announce_routes.len() > crate::handshake::MAX_ROUTES {
                return Err(err(
                    "netd.announce_routes".into(),
                    &format!(
                        "at most {} prefixes (peers refuse a Handshake with more)",
                        crate::handshake::MAX_ROUTES
                    ),
                ));
            }
            if KeyExchange::parse(&n.tls.key_exchange).is_none() {
                return Err(err(
                    "netd.tls.key_exchange".into(),
                    &format!(
                        "unknown value {:?}; expected \"hybrid\" or \"classic-allowed\" (or \"classic-only\", for interoperability tests)",
                        n.tls.key_exchange
                    ),
                ));
            }
            if n.cert_file.is_some() != n.key_file.is_some() {
                return Err(err(
                    "netd.key_file".into(),
                    "cert_file and key_file go together",
                ));
            }
            for (i, l) in n.listen.iter().enumerate() {
                if !l.ws_path.starts_with('/') {
                    return Err(err(
                        format!("netd.listen[{i}].ws_path"),
                        "must start with '/'",
                    ));
                }
            }
            for (i, c) in n.connect.iter().enumerate() {
                if c.fingerprint.is_none() && c.ca_file.is_none() {
                    return Err(err(
                        format!("netd.connect[{i}]"),
                        "set fingerprint (the peer's certificate SHA-256) or ca_file",
                    ));
                }
                if let Some(fp) = &c.fingerprint {
                    if parse_fingerprint(fp).is_none() {
                        return Err(err(
                            format!("netd.connect[{i}].fingerprint"),
                            "expected 64 hex digits (colons allowed)",
                        ));
                    }
                }
                if !c.ws_path.starts_with('/') {
                    return Err(err(
                        format!("netd.connect[{i}].ws_path"),
                        "must start with '/'",
                    ));
                }
                if c.address.rsplit_once(':').is_none() {
                    return Err(err(
                        format!("netd.connect[{i}].address"),
                        "expected host:port",
                    ));
                }
            }
        }
        if let Some(n) = &self.netd {
            if !(100..=60_000).contains(&n.handshake_timeout_ms) {
                return Err(err(
                    "netd.handshake_timeout_ms".into(),
                    "must be 100..=60000 (milliseconds)",
                ));
            }
        }
        if let Some((key, message)) = self.netd.as_ref().and_then(|n| n.exit.check().err()) {
            return Err(err(format!("netd.exit.{key}"), &message));
        }
        if let Some(p) = &self.privd {
            let t = &p.tun;
            // The kernel's own rules for interface names (dev_valid_name).
            if t.name.is_empty()
                || t.name.len() > 15
                || t.name == "."
                || t.name == ".."
                || t.name
                    .contains(|c: char| c == '/' || c == ':' || c.is_whitespace())
            {
                return Err(err(
                    "privd.tun.name".into(),
                    "1-15 characters, not '.' or '..', no '/', ':' or whitespace",
                ));
            }
            if !(576..=65535).contains(&t.mtu) {
                return Err(err("privd.tun.mtu".into(), "must be 576..=65535"));
            }
            if t.mtu < 1280 && t.addresses.iter().any(|a| matches!(a, IpNet::V6(_))) {
                return Err(err(
                    "privd.tun.mtu".into(),
                    "IPv6 addresses need an MTU of at least 1280",
                ));
            }
            if t.max_routes + t.routes.len() > MAX_TUN_ROUTES {
                return Err(err(
                    "privd.tun.max_routes".into(),
                    &format!("tun.routes plus max_routes must be at most {MAX_TUN_ROUTES}"),
                ));
            }
            if p.netd_user.is_some() && p.netd_uid.is_some() {
                return Err(err(
                    "privd.netd_uid".into(),
                    "set either netd_user or netd_uid, not both",
                ));
            }
            if p.netd_user.is_none() && p.netd_uid.is_none() {
                return Err(err(
                    "privd.netd_user".into(),
                    "name the user netd runs as (netd_user or netd_uid)",
                ));
            }
        }
        Ok(())
    }
}

fn default_max_tcp_flows() -> u32 {
    1024
}
fn default_max_udp_flows() -> u32 {
    1024
}
fn default_max_icmp_flows() -> u32 {
    256
}
fn default_flow_buffer() -> u32 {
    128 * 1024
}
fn default_max_buffer() -> u64 {
    256 * 1024 * 1024
}
fn default_connect_timeout() -> u64 {
    10_000
}
fn default_udp_idle() -> u64 {
    60_000
}
fn default_icmp_idle() -> u64 {
    10_000
}
fn default_true() -> bool {
    true
}

/// `[netd.exit]`: the userspace exit. On a node without privd (no TUN) netd
/// terminates the tunnel's TCP, UDP and ICMP echo in a userspace TCP/IP stack
/// and realises them as ordinary sockets of its own unprivileged user.
#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct ExitConfig {
    /// Run the userspace exit. Default: on whenever netd has no
    /// `netd.privd_socket` (no TUN); ignored on a node with a TUN.
    pub enable: Option<bool>,
    /// Most TCP flows open at once; more are refused with a RST.
    #[serde(default = "default_max_tcp_flows")]
    pub max_tcp_flows: u32,
    /// Most UDP flows (source ↔ destination pairs) at once; more are refused
    /// with an ICMP unreachable.
    #[serde(default = "default_max_udp_flows")]
    pub max_udp_flows: u32,
    /// Most ICMP echo flows (source, destination, identifier) at once.
    #[serde(default = "default_max_icmp_flows")]
    pub max_icmp_flows: u32,
    /// Buffer per TCP flow and direction, in bytes (the window offered to
    /// the entry); also the most bytes queued toward one UDP flow's socket.
    #[serde(default = "default_flow_buffer")]
    pub flow_buffer_bytes: u32,
    /// Total bytes all flow buffers may reserve; a new flow that would pass
    /// it is refused.
    #[serde(default = "default_max_buffer")]
    pub max_buffer_bytes: u64,
    /// Time allowed for the exit's connect() to a TCP destination.
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout_ms: u64,
    /// A UDP flow with no datagram either way for this long is closed.
    #[serde(default = "default_udp_idle")]
    pub udp_idle_timeout_ms: u64,
    /// An ICMP echo flow with no traffic for this long is closed.
    #[serde(default = "default_icmp_idle")]
    pub icmp_idle_timeout_ms: u64,
    /// Refuse the exit host's loopback, link-local, "this host", multicast
    /// and broadcast destinations (see `sapper_shared::egress::LOCAL_DENY`).
    #[serde(default = "default_true")]
    pub deny_local: bool,
    /// Destinations allowed (`[tcp|udp|icmp] PREFIX [port N[-M]]`); empty
    /// allows everything not denied.
    #[serde(default)]
    pub allow: Vec<String>,
    /// Destinations refused; a deny rule beats every allow rule.
    #[serde(default)]
    pub deny: Vec<String>,
}

impl Default for ExitConfig {
    fn default() -> Self {
        Self {
            enable: None,
            max_tcp_flows: default_max_tcp_flows(),
            max_udp_flows: default_max_udp_flows(),
            max_icmp_flows: default_max_icmp_flows(),
            flow_buffer_bytes: default_flow_buffer(),
            max_buffer_bytes: default_max_buffer(),
            connect_timeout_ms: default_connect_timeout(),
            udp_idle_timeout_ms: default_udp_idle(),
            icmp_idle_timeout_ms: default_icmp_idle(),
            deny_local: true,
            allow: Vec::new(),
            deny: Vec::new(),
        }
    }
}

impl ExitConfig {
    /// The egress policy these settings describe.
    pub fn policy(&self) -> Result<crate::egress::Policy, String> {
        crate::egress::Policy::parse(&self.allow, &self.deny, self.deny_local)
    }

    /// Checks ranges; the error is (key below `netd.exit`, message).
    pub fn check(&self) -> Result<(), (String, String)> {
        let bad = |k: &str, m: &str| Err((k.to_string(), m.to_string()));
        if !(1..=1_000_000).contains(&self.max_tcp_flows) {
            return bad("max_tcp_flows", "must be 1..=1000000");
        }
        if !(1..=1_000_000).contains(&self.max_udp_flows) {
            return bad("max_udp_flows", "must be 1..=1000000");
        }
        if !(1..=100_000).contains(&self.max_icmp_flows) {
            return bad("max_icmp_flows", "must be 1..=100000");
        }
        if !(4096..=(64 << 20)).contains(&self.flow_buffer_bytes) {
            return bad("flow_buffer_bytes", "must be 4096..=67108864");
        }
        // A TCP flow reserves both directions' buffers plus 128 KiB of
        // channels (netd's exit::limits).
        if self.max_buffer_bytes < 2 * u64::from(self.flow_buffer_bytes) + 131_072 {
            return bad(
                "max_buffer_bytes",
                "must hold at least one TCP flow (2 x flow_buffer_bytes + 131072)",
            );
        }
        if !(100..=600_000).contains(&self.connect_timeout_ms) {
            return bad("connect_timeout_ms", "must be 100..=600000");
        }
        if !(1000..=86_400_000).contains(&self.udp_idle_timeout_ms) {
            return bad("udp_idle_timeout_ms", "must be 1000..=86400000");
        }
        if !(1000..=3_600_000).contains(&self.icmp_idle_timeout_ms) {
            return bad("icmp_idle_timeout_ms", "must be 1000..=3600000");
        }
        for (list, name) in [(&self.allow, "allow"), (&self.deny, "deny")] {
            for (i, r) in list.iter().enumerate() {
                if let Err(e) = crate::egress::Rule::parse(r) {
                    return Err((format!("{name}[{i}]"), e));
                }
            }
        }
        Ok(())
    }
}

/// Parses a SHA-256 fingerprint written as hex, with or without colons.
pub fn parse_fingerprint(s: &str) -> Option<[u8; 32]> {
    let clean: String = s.chars().filter(|c| *c != ':').collect();
    let bytes = hex::decode(clean).ok()?;
    bytes.try_into().ok()
}

/// Formats a fingerprint as colon-separated upper-case hex.
pub fn format_fingerprint(fp: &[u8; 32]) -> String {
    fp.iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// True when `prefix` lies entirely inside one of `allowed`.
pub fn prefix_allowed(prefix: &IpNet, allowed: &[IpNet]) -> bool {
    allowed.iter().any(|a| a.contains(prefix))
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[node]
name = "entry"
psk_file = "/etc/sapper/psk"

[netd]
user = "sapper"
privd_socket = "/run/sapper/privd.sock"
announce_routes = ["10.200.0.0/24"]

[[netd.connect]]
transport = "quic"
address = "10.0.0.2:4433"
fingerprint = "AB:CD:ab:cd:00:11:22:33:44:55:66:77:88:99:aa:bb:cc:dd:ee:ff:00:11:22:33:44:55:66:77:88:99:aa:bb"

[privd]
netd_user = "sapper"
[privd.tun]
addresses = ["10.99.0.1/24", "fd99::1/64"]
routes = ["10.200.0.0/24"]
allowed_routes = ["10.0.0.0/8"]
"#;

    #[test]
    fn parses_good_config() {
        let c = Config::parse(GOOD, "t.toml").unwrap();
        let n = c.netd.unwrap();
        assert_eq!(n.connect[0].transport, Transport::Quic);
        assert_eq!(n.ping_interval_ms, 1000);
        let p = c.privd.unwrap();
        assert_eq!(p.tun.name, "sapper0");
        assert_eq!(p.tun.mtu, 1280);
    }

    #[test]
    fn errors_name_file_and_key() {
        let bad = GOOD.replace("fingerprint = \"AB", "fingerprint = \"XY");
        let e = Config::parse(&bad, "t.toml").unwrap_err();
        assert_eq!(e.key, "netd.connect[0].fingerprint");
        assert!(e
            .to_string()
            .starts_with("t.toml: netd.connect[0].fingerprint"));

        let e = Config::parse(&GOOD.replace("mtu", "mtux"), "t.toml");
        assert!(e.is_ok(), "no mtu key in GOOD");
        let e = Config::parse(&format!("{GOOD}\nbogus = 1\n"), "t.toml").unwrap_err();
        assert!(e.message.contains("bogus"), "{e}");

        let no_pin = GOOD.replace("fingerprint = ", "# fingerprint = ");
        let e = Config::parse(&no_pin, "t.toml").unwrap_err();
        assert_eq!(e.key, "netd.connect[0]");
    }

    #[test]
    fn credential_paths() {
        let text = GOOD.replace("/etc/sapper/psk", "%d/psk");
        let mut c = Config::parse(&text, "t.toml").unwrap();
        let e = c.expand_credentials("t.toml", None).unwrap_err();
        assert_eq!(e.key, "node.psk_file");
        c.expand_credentials("t.toml", Some(Path::new("/run/credentials/x")))
            .unwrap();
        assert_eq!(
            c.node.psk_file.as_deref(),
            Some(Path::new("/run/credentials/x/psk"))
        );
        // Plain paths are left alone, with or without a directory.
        let mut c = Config::parse(GOOD, "t.toml").unwrap();
        c.expand_credentials("t.toml", None).unwrap();
        assert_eq!(
            c.node.psk_file.as_deref(),
            Some(Path::new("/etc/sapper/psk"))
        );
        let bad = GOOD.replace("/etc/sapper/psk", "%d/../etc/shadow");
        let mut c = Config::parse(&bad, "t.toml").unwrap();
        assert!(c
            .expand_credentials("t.toml", Some(Path::new("/c")))
            .is_err());
    }

    #[test]
    fn exit_section_defaults_and_errors() {
        let c = Config::parse(GOOD, "t.toml").unwrap();
        let x = c.netd.unwrap().exit;
        assert_eq!(x.enable, None);
        assert_eq!(x.max_tcp_flows, 1024);
        assert!(x.deny_local);
        assert!(x.policy().is_ok());
        let with = |extra: &str| {
            Config::parse(
                &GOOD.replace("[privd]\n", &format!("[netd.exit]\n{extra}\n\n[privd]\n")),
                "t.toml",
            )
        };
        let c =
            with("enable = true\nmax_tcp_flows = 8\ndeny = [\"tcp 10.0.0.0/8 port 22\"]").unwrap();
        let x = c.netd.unwrap().exit;
        assert_eq!((x.enable, x.max_tcp_flows), (Some(true), 8));
        let e = with("deny = [\"10.0.0.0/8\", \"10.0.0.0/8 port 0\"]").unwrap_err();
        assert_eq!(e.key, "netd.exit.deny[1]");
        let e = with("max_tcp_flows = 0").unwrap_err();
        assert_eq!(e.key, "netd.exit.max_tcp_flows");
        let e = with("flow_buffer_bytes = 1048576\nmax_buffer_bytes = 1048576").unwrap_err();
        assert_eq!(e.key, "netd.exit.max_buffer_bytes");
        let e = with("bogus = 1").unwrap_err();
        assert!(e.message.contains("bogus"), "{e}");
    }

    #[test]
    fn key_exchange_setting() {
        let c = Config::parse(GOOD, "t.toml").unwrap();
        assert_eq!(c.netd.unwrap().tls.key_exchange(), KeyExchange::Hybrid);
        let with = |v: &str| {
            Config::parse(
                &GOOD.replace(
                    "[privd]\n",
                    &format!("[netd.tls]\nkey_exchange = {v:?}\n\n[privd]\n"),
                ),
                "t.toml",
            )
        };
        for name in KeyExchange::NAMES {
            let kx = with(name).unwrap().netd.unwrap().tls.key_exchange();
            assert_eq!(kx.as_str(), name);
        }
        assert_eq!(
            with("classic-allowed")
                .unwrap()
                .netd
                .unwrap()
                .tls
                .key_exchange(),
            KeyExchange::ClassicAllowed
        );
        let e = with("classic").unwrap_err();
        assert_eq!(e.key, "netd.tls.key_exchange");
        assert!(
            e.to_string()
                .starts_with("t.toml: netd.tls.key_exchange: unknown value \"classic\""),
            "{e}"
        );
    }

    #[test]
    fn interface_names_and_route_counts_checked_early() {
        for bad in [".", "..", "a:b", "a b", "a/b", "sixteen-chars-xx"] {
            let t = GOOD.replace("[privd.tun]", &format!("[privd.tun]\nname = {bad:?}"));
            let e = Config::parse(&t, "t.toml").unwrap_err();
            assert_eq!(e.key, "privd.tun.name", "{bad}");
        }
        let many: Vec<String> = (0..1025)
            .map(|i| format!("\"10.{}.{}.0/24\"", i / 256, i % 256))
            .collect();
        let t = GOOD.replace(
            "announce_routes = [\"10.200.0.0/24\"]",
            &format!("announce_routes = [{}]", many.join(",")),
        );
        assert_eq!(
            Config::parse(&t, "t.toml").unwrap_err().key,
            "netd.announce_routes"
        );
    }

    #[test]
    fn fingerprints_and_allow_list() {
        let fp = [0xabu8; 32];
        let s = format_fingerprint(&fp);
        assert_eq!(parse_fingerprint(&s), Some(fp));
        assert_eq!(parse_fingerprint(&hex::encode(fp)), Some(fp));
        assert_eq!(parse_fingerprint("abcd"), None);
        let allowed: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        assert!(prefix_allowed(&"10.1.0.0/16".parse().unwrap(), &allowed));
        assert!(!prefix_allowed(&"0.0.0.0/0".parse().unwrap(), &allowed));
        assert!(!prefix_allowed(&"11.0.0.0/8".parse().unwrap(), &allowed));
    }
}
