//! The node configuration file (`/etc/sapper/sapper.toml`), shared by privd
//! and netd; each reads its own section.
//!
//! Parse, don't validate: serde reads the file into the raw structs of
//! [`raw`], and `TryFrom` turns them into the typed configuration below, in
//! which every value is already what its user needs (a `[u8; 32]`
//! fingerprint, parsed egress rules and prefixes, durations, numbers that
//! cannot leave their range). Nothing downstream parses or checks a config
//! value again. Every error names the key path, and [`Config::parse`] adds
//! the file, so an operator can fix it without reading code.
//!
//! This module does no I/O: the daemons read the file and pass its text to
//! [`Config::parse`].

mod announce;
mod bounded;
mod metrics;
mod proxy;
pub mod raw;

pub use announce::{Announce, AnnounceExclude};
pub use bounded::Bounded;
pub use metrics::{MetricsConfig, MetricsEndpoint};
pub use proxy::{NoProxy, ProxyUrl, ProxyUrlError};

use crate::egress::Policy;
pub use crate::roles::{Hint, HintLevelName, RoleName};
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

/// What is wrong with one value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Problem {
    /// The file is not TOML, or a key is unknown or of the wrong type.
    #[error("{0}")]
    Syntax(String),
    /// A number outside its range.
    #[error("must be {lo}..={hi}{unit}")]
    OutOfRange {
        /// Smallest allowed.
        lo: u64,
        /// Largest allowed.
        hi: u64,
        /// `" (milliseconds)"` for durations, else empty.
        unit: &'static str,
    },
    /// Two keys that exclude each other are both set.
    #[error("set either {0} or {1}, not both")]
    Conflict(&'static str, &'static str),
    /// Any other rule of the key.
    #[error("{0}")]
    Invalid(String),
}

/// A value that does not convert, with its key path (`netd.connect[0].fingerprint`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {problem}")]
pub struct KeyError {
    /// The offending key (dotted path), or `-` for syntax errors.
    pub key: String,
    /// What is wrong.
    pub problem: Problem,
}

impl KeyError {
    fn new(key: impl Into<String>, problem: Problem) -> Self {
        Self {
            key: key.into(),
            problem,
        }
    }

    fn invalid(key: impl Into<String>, message: impl Into<String>) -> Self {
        Self::new(key, Problem::Invalid(message.into()))
    }

    /// The same error one level down: `listen[0]` under `netd`.
    fn under(mut self, parent: &str) -> Self {
        self.key = if self.key.is_empty() {
            parent.to_string()
        } else {
            format!("{parent}.{}", self.key)
        };
        self
    }

    /// Names the file.
    pub fn in_file(self, file: &str) -> ConfigError {
        ConfigError {
            file: file.into(),
            key: self.key,
            problem: self.problem,
        }
    }
}

/// A configuration error, naming the file and the key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}: {key}: {problem}")]
pub struct ConfigError {
    /// The file.
    pub file: String,
    /// The offending key (dotted path), or `-` for syntax errors.
    pub key: String,
    /// What is wrong.
    pub problem: Problem,
}

/// A number read into its range, or the error naming `key`.
fn bounded<const LO: u64, const HI: u64>(
    key: &str,
    v: u64,
    unit: &'static str,
) -> Result<Bounded<LO, HI>, KeyError> {
    Bounded::new(v).ok_or_else(|| {
        KeyError::new(
            key,
            Problem::OutOfRange {
                lo: LO,
                hi: HI,
                unit,
            },
        )
    })
}

const MS: &str = " (milliseconds)";

/// The whole file, typed.
#[derive(Debug, Default)]
pub struct Config {
    /// Settings both daemons use.
    pub node: NodeConfig,
    /// netd's section.
    pub netd: Option<NetdConfig>,
    /// privd's section.
    pub privd: Option<PrivdConfig>,
}

/// A node name: 1 to 64 ASCII letters, digits, '-', '_' or '.' (the rule of
/// [`crate::handshake::valid_name`], which peers apply to Handshakes).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct NodeName(String);

impl NodeName {
    /// What a bad name is told.
    pub const RULE: &'static str = "1-64 ASCII letters, digits, '-', '_' or '.'";

    /// `name`, if it follows the rule.
    pub fn new(name: &str) -> Option<Self> {
        crate::handshake::valid_name(name).then(|| Self(name.to_string()))
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for NodeName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Where the PSK comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PskSource {
    /// `node.psk_file` (after `%d/` expansion).
    File(PathBuf),
    /// `node.psk_env`: the variable's name.
    Env(String),
}

/// `[node]`, typed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeConfig {
    /// Node name shown to peers; `None`: the host name.
    pub name: Option<NodeName>,
    /// `node.psk_file` or `node.psk_env` (never both).
    pub psk: Option<PskSource>,
    /// The hint this node starts with: `[node.hint]`, else the fixed hint
    /// `node.role` stands for.
    pub hint: Option<Hint>,
    /// Automatic negotiation and routes back on under the secure posture.
    pub zero_config: bool,
    /// Override of zero_config for negotiation alone.
    pub auto_negotiate: Option<bool>,
    /// Override of zero_config for installing announced routes alone.
    pub auto_routes: Option<bool>,
    /// Run with no PSK at all, asked for in so many words.
    pub insecure_open: bool,
    /// Do not announce this node's routes to peers.
    pub no_announce_routes: bool,
    /// Do not install routes peers announce.
    pub no_accept_routes: bool,
}

impl NodeConfig {
    /// The PSK file, if the PSK comes from one.
    pub fn psk_file(&self) -> Option<&Path> {
        match &self.psk {
            Some(PskSource::File(p)) => Some(p),
            _ => None,
        }
    }
}

impl TryFrom<raw::Node> for NodeConfig {
    type Error = KeyError;

    fn try_from(n: raw::Node) -> Result<Self, KeyError> {
        let name = match n.name {
            Some(s) => {
                Some(NodeName::new(&s).ok_or_else(|| KeyError::invalid("name", NodeName::RULE))?)
            }
            None => None,
        };
        let psk = match (n.psk_file, n.psk_env) {
            (Some(_), Some(_)) => {
                return Err(KeyError::new(
                    "psk_env",
                    Problem::Conflict("psk_file", "psk_env"),
                ))
            }
            (Some(f), None) => Some(PskSource::File(f)),
            (None, Some(v)) if v.is_empty() || v.contains('=') || v.contains('\0') => {
                return Err(KeyError::invalid(
                    "psk_env",
                    "not an environment variable name",
                ))
            }
            (None, Some(v)) => Some(PskSource::Env(v)),
            (None, None) => None,
        };
        let hint = match (n.hint, n.role) {
            (Some(h), _) => Some(Hint {
                level: h.level,
                role: h.role,
            }),
            (None, Some(r)) => Some(Hint::fixed(r)),
            (None, None) => None,
        };
        Ok(NodeConfig {
            name,
            psk,
            hint,
            zero_config: n.zero_config,
            auto_negotiate: n.auto_negotiate,
            auto_routes: n.auto_routes,
            insecure_open: n.insecure_open,
            no_announce_routes: n.no_announce_routes,
            no_accept_routes: n.no_accept_routes,
        })
    }
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

    /// Parses the lower-case name (`sapperctl connect --transport`).
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "quic" => Some(Transport::Quic),
            "ws" => Some(Transport::Ws),
            _ => None,
        }
    }
}

/// The HTTP path of WebSocket upgrades: starts with '/'.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct WsPath(String);

impl WsPath {
    /// `path`, if it starts with '/'.
    pub fn new(path: &str) -> Option<Self> {
        path.starts_with('/').then(|| Self(path.to_string()))
    }

    /// `path`, or the default when absent or empty (an operator request
    /// leaves it empty).
    pub fn or_default(path: Option<&str>) -> Option<Self> {
        match path {
            None | Some("") => Some(Self::default()),
            Some(p) => Self::new(p),
        }
    }

    /// The path.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for WsPath {
    /// `/sapper`.
    fn default() -> Self {
        Self("/sapper".into())
    }
}

fn ws_path(key: &str, p: Option<&str>) -> Result<WsPath, KeyError> {
    WsPath::or_default(p).ok_or_else(|| KeyError::invalid(key, "must start with '/'"))
}

/// `[[netd.listen]]`, typed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listen {
    /// Transport.
    pub transport: Transport,
    /// Address to bind.
    pub address: SocketAddr,
    /// HTTP path for WebSocket upgrades.
    pub ws_path: WsPath,
    /// Peers on this listener may send from (and announce) only inside
    /// these; `None`: no restriction beyond the ownership rules.
    pub allowed_sources: Option<Vec<IpNet>>,
}

/// `allowed_sources` of a listen or connect entry.
fn allowed_sources(list: Option<Vec<String>>) -> Result<Option<Vec<IpNet>>, KeyError> {
    list.map(|l| {
        crate::routing::parse_prefixes(&l)
            .map_err(|e| KeyError::invalid("allowed_sources", e.to_string()))
    })
    .transpose()
}

/// How a dialled peer's certificate is trusted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerTrust {
    /// Exactly this certificate (SHA-256 of its DER).
    Pinned([u8; 32]),
    /// Any certificate this CA (PEM file) signed for the server name.
    Ca(PathBuf),
}

/// A peer to dial (`[[netd.connect]]`, or an operator's `connect`), parsed
/// once: the fields are private so none can be set to something unchecked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connect {
    transport: Transport,
    address: String,
    server_name: String,
    trust: PeerTrust,
    ws_path: WsPath,
    allowed_sources: Option<Vec<IpNet>>,
    proxy: Option<Proxy>,
}

/// The HTTP CONNECT proxy a WebSocket peer is dialled through.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Proxy {
    /// Where the proxy listens.
    pub url: ProxyUrl,
    /// `user:password` for Basic authentication (read by netd, mode
    /// checked like the PSK file); `None`: no authentication.
    pub credentials_file: Option<PathBuf>,
    /// Taken from `HTTPS_PROXY` rather than the entry (for logs).
    pub from_env: bool,
}

impl Connect {
    /// The HTTP proxy this peer is dialled through, if any.
    pub fn proxy(&self) -> Option<&Proxy> {
        self.proxy.as_ref()
    }
    /// The entry with `HTTPS_PROXY`'s proxy when it is a WebSocket entry
    /// without its own and its host is not in `NO_PROXY`.
    pub fn with_env_proxy(mut self, url: &ProxyUrl, no_proxy: &NoProxy) -> Connect {
        let host = split_host_port(&self.address).map_or("", |(h, _)| h);
        if self.transport == Transport::Ws && self.proxy.is_none() && !no_proxy.matches(host) {
            self.proxy = Some(Proxy {
                url: url.clone(),
                credentials_file: None,
                from_env: true,
            });
        }
        self
    }
    /// The peer may send from (and announce) only inside these.
    pub fn allowed_sources(&self) -> Option<&[IpNet]> {
        self.allowed_sources.as_deref()
    }
    /// Transport.
    pub fn transport(&self) -> Transport {
        self.transport
    }
    /// `host:port` as configured (resolved on every dial).
    pub fn address(&self) -> &str {
        &self.address
    }
    /// The TLS server name: configured, or the host part of the address.
    pub fn server_name(&self) -> &str {
        &self.server_name
    }
    /// How the peer's certificate is trusted.
    pub fn trust(&self) -> &PeerTrust {
        &self.trust
    }
    /// The WebSocket path.
    pub fn ws_path(&self) -> &WsPath {
        &self.ws_path
    }
}

/// Splits `host:port` (`[v6]:port` for IPv6); the host without brackets.
pub fn split_host_port(address: &str) -> Option<(&str, u16)> {
    let (host, port) = address.rsplit_once(':')?;
    let port = port.parse::<u16>().ok()?;
    let host = match host.strip_prefix('[') {
        Some(h) => h.strip_suffix(']')?,
        None => host,
    };
    (!host.is_empty()).then_some((host, port))
}

impl TryFrom<raw::Connect> for Connect {
    type Error = KeyError;

    fn try_from(c: raw::Connect) -> Result<Self, KeyError> {
        let trust = match (c.fingerprint, c.ca_file) {
            (Some(fp), _) => PeerTrust::Pinned(parse_fingerprint(&fp).ok_or_else(|| {
                KeyError::invalid("fingerprint", "expected 64 hex digits (colons allowed)")
            })?),
            (None, Some(ca)) => PeerTrust::Ca(ca),
            (None, None) => {
                return Err(KeyError::invalid(
                    "",
                    "set fingerprint (the peer's certificate SHA-256) or ca_file",
                ))
            }
        };
        let ws_path = ws_path("ws_path", c.ws_path.as_deref())?;
        let (host, _) = split_host_port(&c.address).ok_or_else(|| {
            KeyError::invalid("address", format!("{:?}: expected host:port", c.address))
        })?;
        let server_name = match c.server_name {
            Some(n) if n.is_empty() => {
                return Err(KeyError::invalid("server_name", "must not be empty"))
            }
            Some(n) => n,
            None => host.to_string(),
        };
        let proxy = match (c.proxy, c.proxy_credentials_file) {
            (None, None) => None,
            (None, Some(_)) => {
                return Err(KeyError::invalid(
                    "proxy_credentials_file",
                    "set only together with proxy",
                ))
            }
            (Some(_), _) if c.transport != Transport::Ws => {
                return Err(KeyError::invalid(
                    "proxy",
                    "only the ws transport can go through an HTTP proxy (QUIC is UDP)",
                ))
            }
            (Some(url), credentials_file) => Some(Proxy {
                url: ProxyUrl::parse(&url)
                    .map_err(|e| KeyError::invalid("proxy", e.to_string()))?,
                credentials_file,
                from_env: false,
            }),
        };
        Ok(Connect {
            transport: c.transport,
            address: c.address,
            server_name,
            trust,
            ws_path,
            allowed_sources: allowed_sources(c.allowed_sources)?,
            proxy,
        })
    }
}

/// The certificate and key netd presents (`netd.cert_file`, `netd.key_file`:
/// both or neither).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentityFiles {
    /// Certificate (PEM).
    pub cert: PathBuf,
    /// Private key (PEM).
    pub key: PathBuf,
}

/// Reconnect delays: `0 < min <= max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reconnect {
    min_ms: u64,
    max_ms: u64,
}

impl Reconnect {
    /// `min_ms..=max_ms`, if `0 < min_ms <= max_ms`.
    pub fn new(min_ms: u64, max_ms: u64) -> Option<Self> {
        (min_ms > 0 && min_ms <= max_ms).then_some(Self { min_ms, max_ms })
    }
    /// First delay, in milliseconds.
    pub fn min_ms(self) -> u64 {
        self.min_ms
    }
    /// Largest delay, in milliseconds.
    pub fn max_ms(self) -> u64 {
        self.max_ms
    }
}

impl Default for Reconnect {
    fn default() -> Self {
        Self {
            min_ms: 250,
            max_ms: 30_000,
        }
    }
}

/// Prefixes a node announces: at most [`crate::routing::MAX_ROUTES`] (peers
/// refuse a Handshake with more).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RouteList(Vec<IpNet>);

impl RouteList {
    /// `prefixes`, if there are not too many.
    pub fn new(prefixes: Vec<IpNet>) -> Option<Self> {
        (prefixes.len() <= crate::routing::MAX_ROUTES).then_some(Self(prefixes))
    }
    /// The prefixes.
    pub fn as_slice(&self) -> &[IpNet] {
        &self.0
    }
}

/// `netd.ping_interval_ms`.
pub type PingInterval = Bounded<50, 86_400_000>;
/// `netd.ping_miss_limit`.
pub type PingMissLimit = Bounded<1, { u32::MAX as u64 }>;
/// `netd.handshake_timeout_ms`: time allowed for TLS plus the Sapper handshake.
pub type HandshakeTimeout = Bounded<100, 60_000>;
/// `netd.management_read_timeout_ms`: how long a management client may sit
/// between requests, and take over one.
pub type ManagementReadTimeout = Bounded<1000, 3_600_000>;
/// `netd.peer_queue`: packets queued per peer before new ones are dropped.
pub type PeerQueue = Bounded<1, 65_536>;
/// `netd.worker_threads`.
pub type WorkerThreads = Bounded<1, 64>;

/// `[netd]`, typed. `NetdConfig::default()` is the section with no keys;
/// every field's type holds only valid values, so a config built in code
/// (`NetdConfig { peer_queue: .., ..Default::default() }`) is valid too.
#[derive(Debug, Clone)]
pub struct NetdConfig {
    /// User to drop to when started as root.
    pub user: Option<String>,
    /// Group to drop to (defaults to the user's primary group).
    pub group: Option<String>,
    /// Where a generated certificate and key are kept.
    pub state_dir: PathBuf,
    /// Certificate and key; generated into `state_dir` when absent.
    pub identity: Option<IdentityFiles>,
    /// The user privd runs as, besides root: netd takes the TUN only from a
    /// privd socket whose listener is root or this user (SO_PEERCRED).
    pub privd_user: Option<String>,
    /// Management socket path.
    pub management_socket: PathBuf,
    /// Group that owns the management socket: its members can read status.
    pub management_group: Option<String>,
    /// Group whose members may also change things.
    pub operator_group: Option<String>,
    /// Read deadline of a management connection.
    pub management_read_timeout: ManagementReadTimeout,
    /// privd's socket; absent on a node without a TUN.
    pub privd_socket: Option<PathBuf>,
    /// Interval between control-channel pings.
    pub ping_interval: PingInterval,
    /// Unanswered pings after which a peer is dropped.
    pub ping_miss_limit: PingMissLimit,
    /// Reconnect delays.
    pub reconnect: Reconnect,
    /// Time allowed for TLS plus the Sapper handshake.
    pub handshake_timeout: HandshakeTimeout,
    /// Packets queued per peer before new ones are dropped.
    pub peer_queue: PeerQueue,
    /// Async worker threads (1 by default: on a 2-core host a single worker
    /// moved ~30% more through the tunnel than two).
    pub worker_threads: WorkerThreads,
    /// Prefixes this node reaches and offers to peers: listed, or
    /// discovered from its interfaces (`announce_routes = "interfaces"`).
    pub announce_routes: Announce,
    /// Listeners.
    pub listen: Vec<Listen>,
    /// Peers to dial.
    pub connect: Vec<Connect>,
    /// The userspace exit (`[netd.exit]`).
    pub exit: ExitConfig,
    /// TLS settings of every link (`[netd.tls]`).
    pub tls: TlsConfig,
    /// The OpenMetrics endpoint (`[netd.metrics]`); off when absent.
    pub metrics: Option<MetricsConfig>,
    /// Bounds on what peers may make this node hold (`[netd.limits]`).
    pub limits: crate::peer_limits::PeerLimits,
}

impl Default for NetdConfig {
    fn default() -> Self {
        Self {
            user: None,
            group: None,
            state_dir: PathBuf::from("/var/lib/sapper"),
            identity: None,
            privd_user: None,
            management_socket: PathBuf::from(DEFAULT_MGMT_SOCKET),
            management_group: None,
            operator_group: None,
            management_read_timeout: Bounded::new_const(60_000),
            privd_socket: None,
            ping_interval: Bounded::new_const(1000),
            ping_miss_limit: Bounded::new_const(5),
            reconnect: Reconnect::default(),
            handshake_timeout: Bounded::new_const(10_000),
            peer_queue: Bounded::new_const(1024),
            worker_threads: Bounded::new_const(1),
            announce_routes: Announce::default(),
            listen: Vec::new(),
            connect: Vec::new(),
            exit: ExitConfig::default(),
            tls: TlsConfig::default(),
            metrics: None,
            limits: crate::peer_limits::PeerLimits::default(),
        }
    }
}

fn indexed<T, U>(
    list: Vec<T>,
    name: &str,
    f: impl Fn(T) -> Result<U, KeyError>,
) -> Result<Vec<U>, KeyError> {
    list.into_iter()
        .enumerate()
        .map(|(i, x)| f(x).map_err(|e| e.under(&format!("{name}[{i}]"))))
        .collect()
}

impl TryFrom<raw::Netd> for NetdConfig {
    type Error = KeyError;

    fn try_from(n: raw::Netd) -> Result<Self, KeyError> {
        let identity = match (n.cert_file, n.key_file) {
            (Some(cert), Some(key)) => Some(IdentityFiles { cert, key }),
            (None, None) => None,
            _ => {
                return Err(KeyError::invalid(
                    "key_file",
                    "cert_file and key_file go together",
                ))
            }
        };
        let reconnect =
            Reconnect::new(n.reconnect_min_ms, n.reconnect_max_ms).ok_or_else(|| {
                KeyError::invalid(
                    "reconnect_max_ms",
                    "need 0 < reconnect_min_ms <= reconnect_max_ms",
                )
            })?;
        let announce = announce::parse(n.announce_routes, n.announce_exclude)?;
        let listen = indexed(n.listen, "listen", |l| {
            Ok(Listen {
                transport: l.transport,
                address: l.address,
                ws_path: ws_path("ws_path", l.ws_path.as_deref())?,
                allowed_sources: allowed_sources(l.allowed_sources)?,
            })
        })?;
        Ok(NetdConfig {
            user: n.user,
            group: n.group,
            state_dir: n.state_dir,
            identity,
            privd_user: n.privd_user,
            management_socket: n.management_socket,
            management_group: n.management_group,
            operator_group: n.operator_group,
            management_read_timeout: bounded(
                "management_read_timeout_ms",
                n.management_read_timeout_ms,
                MS,
            )?,
            privd_socket: n.privd_socket,
            ping_interval: bounded("ping_interval_ms", n.ping_interval_ms, MS)?,
            ping_miss_limit: bounded("ping_miss_limit", u64::from(n.ping_miss_limit), "")?,
            reconnect,
            handshake_timeout: bounded("handshake_timeout_ms", n.handshake_timeout_ms, MS)?,
            peer_queue: bounded("peer_queue", n.peer_queue, "")?,
            worker_threads: bounded("worker_threads", n.worker_threads, "")?,
            announce_routes: announce,
            listen,
            connect: indexed(n.connect, "connect", Connect::try_from)?,
            exit: ExitConfig::try_from(n.exit).map_err(|e| e.under("exit"))?,
            tls: TlsConfig::try_from(n.tls).map_err(|e| e.under("tls"))?,
            metrics: n
                .metrics
                .map(MetricsConfig::try_from)
                .transpose()
                .map_err(|e| e.under("metrics"))?,
            limits: {
                if let Err((key, why)) = n.limits.check() {
                    let key = key.strip_prefix("netd.").unwrap_or(key);
                    return Err(KeyError::invalid(key, why));
                }
                n.limits
            },
        })
    }
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

/// `[netd.tls]`, typed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TlsConfig {
    /// See [`KeyExchange`].
    pub key_exchange: KeyExchange,
}

impl TryFrom<raw::Tls> for TlsConfig {
    type Error = KeyError;

    fn try_from(t: raw::Tls) -> Result<Self, KeyError> {
        let key_exchange = match t.key_exchange.as_deref() {
            None => KeyExchange::default(),
            Some(v) => KeyExchange::parse(v).ok_or_else(|| {
                KeyError::invalid(
                    "key_exchange",
                    format!("unknown value {v:?}; expected \"hybrid\" or \"classic-allowed\" (or \"classic-only\", for interoperability tests)"),
                )
            })?,
        };
        Ok(TlsConfig { key_exchange })
    }
}

/// The userspace exit's buffer settings: the total holds at least one TCP
/// flow (both directions' buffers plus 128 KiB of channels, netd's
/// exit::limits).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExitBuffers {
    flow: u32,
    total: u64,
}

impl ExitBuffers {
    /// Bytes of channels a TCP flow holds besides its buffers.
    pub const TCP_CHANNEL_BYTES: u64 = 131_072;

    /// The pair, or the key below `netd.exit` that is wrong.
    pub fn new(flow_buffer_bytes: u64, max_buffer_bytes: u64) -> Result<Self, KeyError> {
        let flow: Bounded<4096, { 64 << 20 }> =
            bounded("flow_buffer_bytes", flow_buffer_bytes, "")?;
        if max_buffer_bytes < 2 * flow.get() + Self::TCP_CHANNEL_BYTES {
            return Err(KeyError::invalid(
                "max_buffer_bytes",
                "must hold at least one TCP flow (2 x flow_buffer_bytes + 131072)",
            ));
        }
        Ok(Self {
            flow: flow.as_u32(),
            total: max_buffer_bytes,
        })
    }
    /// Buffer per TCP flow and direction (also a UDP flow's queue bound).
    pub fn flow_bytes(self) -> u32 {
        self.flow
    }
    /// Total bytes all flow buffers may reserve.
    pub fn total_bytes(self) -> u64 {
        self.total
    }
}

impl Default for ExitBuffers {
    fn default() -> Self {
        Self {
            flow: 128 * 1024,
            total: 256 * 1024 * 1024,
        }
    }
}

/// `[netd.exit]`, typed: the userspace exit. On a node without privd (no
/// TUN) netd terminates the tunnel's TCP, UDP and ICMP echo in a userspace
/// TCP/IP stack and realises them as ordinary sockets of its own user.
#[derive(Debug, Clone)]
pub struct ExitConfig {
    /// Run the userspace exit. `None`: on whenever netd has no TUN.
    pub enable: Option<bool>,
    /// Most TCP flows open at once; more are refused with a RST.
    pub max_tcp_flows: Bounded<1, 1_000_000>,
    /// Most UDP flows at once; more are refused with an ICMP unreachable.
    pub max_udp_flows: Bounded<1, 1_000_000>,
    /// Most ICMP echo flows at once.
    pub max_icmp_flows: Bounded<1, 100_000>,
    /// Most flows of each protocol one peer may hold; `None`: half of the
    /// protocol's limit, but never fewer than min(limit, 64).
    pub max_flows_per_peer: Option<Bounded<1, 1_000_000>>,
    /// Per-flow and total buffer bytes.
    pub buffers: ExitBuffers,
    /// Time allowed for the exit's connect() to a TCP destination.
    pub connect_timeout: Bounded<100, 600_000>,
    /// A UDP flow with no datagram either way for this long is closed.
    pub udp_idle_timeout: Bounded<1000, 86_400_000>,
    /// An ICMP echo flow with no traffic for this long is closed.
    pub icmp_idle_timeout: Bounded<1000, 3_600_000>,
    /// `allow`, `deny` and `deny_local`, compiled.
    pub policy: Policy,
    /// `deny_local` as configured, for the log.
    pub deny_local: bool,
}

impl Default for ExitConfig {
    fn default() -> Self {
        Self {
            enable: None,
            max_tcp_flows: Bounded::new_const(1024),
            max_udp_flows: Bounded::new_const(1024),
            max_icmp_flows: Bounded::new_const(256),
            max_flows_per_peer: None,
            buffers: ExitBuffers::default(),
            connect_timeout: Bounded::new_const(10_000),
            udp_idle_timeout: Bounded::new_const(60_000),
            icmp_idle_timeout: Bounded::new_const(10_000),
            policy: Policy::new(Vec::new(), Vec::new(), true),
            deny_local: true,
        }
    }
}

impl TryFrom<raw::Exit> for ExitConfig {
    type Error = KeyError;

    fn try_from(x: raw::Exit) -> Result<Self, KeyError> {
        Ok(ExitConfig {
            enable: x.enable,
            max_tcp_flows: bounded("max_tcp_flows", x.max_tcp_flows, "")?,
            max_udp_flows: bounded("max_udp_flows", x.max_udp_flows, "")?,
            max_icmp_flows: bounded("max_icmp_flows", x.max_icmp_flows, "")?,
            max_flows_per_peer: x
                .max_flows_per_peer
                .map(|n| bounded("max_flows_per_peer", n, ""))
                .transpose()?,
            buffers: ExitBuffers::new(x.flow_buffer_bytes, x.max_buffer_bytes)?,
            connect_timeout: bounded("connect_timeout_ms", x.connect_timeout_ms, MS)?,
            udp_idle_timeout: bounded("udp_idle_timeout_ms", x.udp_idle_timeout_ms, MS)?,
            icmp_idle_timeout: bounded("icmp_idle_timeout_ms", x.icmp_idle_timeout_ms, MS)?,
            policy: Policy::parse(&x.allow, &x.deny, x.deny_local)
                .map_err(|e| KeyError::invalid(format!("{}[{}]", e.list, e.index), e.message))?,
            deny_local: x.deny_local,
        })
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

/// `[privd.tun]`. privd's sections are read by serde directly and checked
/// by [`check_privd`] when the file is parsed.
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
    /// Open the TUN (default: yes) with a virtio_net_hdr on every packet and turn on the
    /// checksum and segmentation offloads the kernel takes (TSO, USO), so
    /// that netd reads and writes up to 64 KiB at a time.
    #[serde(default = "default_offload")]
    pub offload: bool,
}

fn default_offload() -> bool {
    true
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
    /// TCP/UDP ports of the exit host itself that peers may reach through
    /// the tunnel (privd's input chain); by default none.
    #[serde(default)]
    pub host_ports: Vec<u16>,
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
    /// The user a privd started as root becomes once set up (default
    /// `sapper-privd`).
    pub user: Option<String>,
    /// The only uid allowed to make requests, by name.
    pub netd_user: Option<String>,
    /// The only uid allowed to make requests, by number.
    pub netd_uid: Option<u32>,
    /// The TUN.
    pub tun: TunConfig,
    /// Kernel-exit NAT.
    pub nat: Option<NatConfig>,
}

/// The rules of `[privd]` a parsed config always satisfies; the error's key
/// is below `privd`.
fn check_privd(p: &PrivdConfig) -> Result<(), KeyError> {
    let t = &p.tun;
    // The kernel's own rules for interface names (dev_valid_name).
    if t.name.is_empty()
        || t.name.len() > 15
        || t.name == "."
        || t.name == ".."
        || t.name
            .contains(|c: char| c == '/' || c == ':' || c.is_whitespace())
    {
        return Err(KeyError::invalid(
            "tun.name",
            "1-15 characters, not '.' or '..', no '/', ':' or whitespace",
        ));
    }
    if !(576..=65535).contains(&t.mtu) {
        return Err(KeyError::new(
            "tun.mtu",
            Problem::OutOfRange {
                lo: 576,
                hi: 65535,
                unit: "",
            },
        ));
    }
    if t.mtu < 1280 && t.addresses.iter().any(|a| matches!(a, IpNet::V6(_))) {
        return Err(KeyError::invalid(
            "tun.mtu",
            "IPv6 addresses need an MTU of at least 1280",
        ));
    }
    if t.max_routes.saturating_add(t.routes.len()) > MAX_TUN_ROUTES {
        return Err(KeyError::invalid(
            "tun.max_routes",
            format!("tun.routes plus max_routes must be at most {MAX_TUN_ROUTES}"),
        ));
    }
    match (&p.netd_user, p.netd_uid) {
        (Some(_), Some(_)) => Err(KeyError::new(
            "netd_uid",
            Problem::Conflict("netd_user", "netd_uid"),
        )),
        (None, None) => Err(KeyError::invalid(
            "netd_user",
            "name the user netd runs as (netd_user or netd_uid)",
        )),
        _ => Ok(()),
    }
}

impl TryFrom<raw::File> for Config {
    type Error = KeyError;

    fn try_from(f: raw::File) -> Result<Self, KeyError> {
        let node = NodeConfig::try_from(f.node).map_err(|e| e.under("node"))?;
        let netd = match f.netd {
            Some(n) => Some(NetdConfig::try_from(n).map_err(|e| e.under("netd"))?),
            None => None,
        };
        if let Some(p) = &f.privd {
            check_privd(p).map_err(|e| e.under("privd"))?;
        }
        Ok(Config {
            node,
            netd,
            privd: f.privd,
        })
    }
}

/// The prefix that stands for systemd's credentials directory.
pub const CREDENTIALS_PREFIX: &str = "%d/";

impl Config {
    /// Parses config text into the typed configuration; `file` is named in
    /// errors. The daemon reads the file; this does no I/O.
    pub fn parse(text: &str, file: &str) -> Result<Self, ConfigError> {
        let raw: raw::File = toml::from_str(text).map_err(|e| ConfigError {
            file: file.into(),
            key: "-".into(),
            problem: Problem::Syntax(e.to_string().trim().replace('\n', " ")),
        })?;
        Config::try_from(raw).map_err(|e| e.in_file(file))
    }

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
        let expand = |key: &str, p: &mut PathBuf| -> Result<(), ConfigError> {
            let Some(name) = p.to_str().and_then(|s| s.strip_prefix(CREDENTIALS_PREFIX)) else {
                return Ok(());
            };
            let err = |message: String| KeyError::invalid(key, message).in_file(file);
            if name.is_empty() || name.contains('/') || name == "." || name == ".." {
                return Err(err(format!("{name:?} is not a credential name")));
            }
            let dir = creds.ok_or_else(|| {
                err("%d/ needs $CREDENTIALS_DIRECTORY: set LoadCredential= in the unit, or use a plain path".into())
            })?;
            *p = dir.join(name);
            Ok(())
        };
        if let Some(PskSource::File(p)) = &mut self.node.psk {
            expand("node.psk_file", p)?;
        }
        if let Some(id) = self.netd.as_mut().and_then(|n| n.identity.as_mut()) {
            expand("netd.cert_file", &mut id.cert)?;
            expand("netd.key_file", &mut id.key)?;
        }
        for (i, c) in self
            .netd
            .iter_mut()
            .flat_map(|n| n.connect.iter_mut())
            .enumerate()
        {
            if let Some(f) = c.proxy.as_mut().and_then(|p| p.credentials_file.as_mut()) {
                expand(&format!("netd.connect[{i}].proxy_credentials_file"), f)?;
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
        assert_eq!(n.ping_interval.millis(), std::time::Duration::from_secs(1));
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
        assert!(e.to_string().contains("bogus"), "{e}");

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
        assert_eq!(c.node.psk_file(), Some(Path::new("/run/credentials/x/psk")));
        // Plain paths are left alone, with or without a directory.
        let mut c = Config::parse(GOOD, "t.toml").unwrap();
        c.expand_credentials("t.toml", None).unwrap();
        assert_eq!(c.node.psk_file(), Some(Path::new("/etc/sapper/psk")));
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
        assert_eq!(x.max_tcp_flows.get(), 1024);
        assert!(x.deny_local);
        let with = |extra: &str| {
            Config::parse(
                &GOOD.replace("[privd]\n", &format!("[netd.exit]\n{extra}\n\n[privd]\n")),
                "t.toml",
            )
        };
        let c =
            with("enable = true\nmax_tcp_flows = 8\ndeny = [\"tcp 10.0.0.0/8 port 22\"]").unwrap();
        let x = c.netd.unwrap().exit;
        assert_eq!((x.enable, x.max_tcp_flows.get()), (Some(true), 8));
        let e = with("deny = [\"10.0.0.0/8\", \"10.0.0.0/8 port 0\"]").unwrap_err();
        assert_eq!(e.key, "netd.exit.deny[1]");
        let e = with("max_tcp_flows = 0").unwrap_err();
        assert_eq!(e.key, "netd.exit.max_tcp_flows");
        let e = with("flow_buffer_bytes = 1048576\nmax_buffer_bytes = 1048576").unwrap_err();
        assert_eq!(e.key, "netd.exit.max_buffer_bytes");
        let e = with("bogus = 1").unwrap_err();
        assert!(e.to_string().contains("bogus"), "{e}");
    }

    #[test]
    fn key_exchange_setting() {
        let c = Config::parse(GOOD, "t.toml").unwrap();
        assert_eq!(c.netd.unwrap().tls.key_exchange, KeyExchange::Hybrid);
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
            let kx = with(name).unwrap().netd.unwrap().tls.key_exchange;
            assert_eq!(kx.as_str(), name);
        }
        assert_eq!(
            with("classic-allowed")
                .unwrap()
                .netd
                .unwrap()
                .tls
                .key_exchange,
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

    /// Every typed key refuses what its type cannot hold, naming the file,
    /// the key path and the rule.
    #[test]
    fn typed_errors_name_file_key_and_rule() {
        let netd = |extra: &str| GOOD.replace("[netd]\n", &format!("[netd]\n{extra}\n"));
        let node = |extra: &str| GOOD.replace("[node]\n", &format!("[node]\n{extra}\n"));
        let cases: Vec<(String, &str, &str)> = vec![
            (netd("handshake_timeout_ms = 99"), "netd.handshake_timeout_ms", "must be 100..=60000 (milliseconds)"),
            (netd("handshake_timeout_ms = 60001"), "netd.handshake_timeout_ms", "must be 100..=60000 (milliseconds)"),
            (netd("ping_interval_ms = 49"), "netd.ping_interval_ms", "must be 50..="),
            (netd("ping_miss_limit = 0"), "netd.ping_miss_limit", "must be 1..="),
            (netd("peer_queue = 65537"), "netd.peer_queue", "must be 1..=65536"),
            (netd("worker_threads = 0"), "netd.worker_threads", "must be 1..=64"),
            (netd("management_read_timeout_ms = 999"), "netd.management_read_timeout_ms", "must be 1000..=3600000 (milliseconds)"),
            (netd("reconnect_min_ms = 5000\nreconnect_max_ms = 10"), "netd.reconnect_max_ms", "reconnect_min_ms <= reconnect_max_ms"),
            (netd("cert_file = \"/c.pem\""), "netd.key_file", "go together"),
            (netd("announce_routes = [\"10.0.0.0/33\"]").replace("announce_routes = [\"10.200.0.0/24\"]\n", ""), "netd.announce_routes", "is not a CIDR prefix"),
            (GOOD.replace("10.0.0.2:4433", "10.0.0.2"), "netd.connect[0].address", "expected host:port"),
            (GOOD.replace("10.0.0.2:4433", "10.0.0.2:99999"), "netd.connect[0].address", "expected host:port"),
            (GOOD.replace("[privd]", "ws_path = \"x\"\n[privd]"), "netd.connect[0].ws_path", "must start with '/'"),
            (GOOD.replace("[privd]", "proxy = \"http://p:3128\"\n[privd]"), "netd.connect[0].proxy", "only the ws transport"),
            (GOOD.replace("\"quic\"", "\"ws\"").replace("[privd]", "proxy = \"https://p:3128\"\n[privd]"), "netd.connect[0].proxy", "only http://"),
            (GOOD.replace("\"quic\"", "\"ws\"").replace("[privd]", "proxy = \"http://u:p@p:3128\"\n[privd]"), "netd.connect[0].proxy", "proxy_credentials_file"),
            (GOOD.replace("[privd]", "proxy_credentials_file = \"/c\"\n[privd]"), "netd.connect[0].proxy_credentials_file", "together with proxy"),
            (GOOD.replace("[[netd.connect]]", "[[netd.listen]]\ntransport = \"ws\"\naddress = \"0.0.0.0:443\"\nws_path = \"nope\"\n\n[[netd.connect]]"), "netd.listen[0].ws_path", "must start with '/'"),
            (GOOD.replace("name = \"entry\"", "name = \"bad name\""), "node.name", "ASCII letters"),
            (node("psk_env = \"SAPPER_PSK\""), "node.psk_env", "set either psk_file or psk_env, not both"),
            (GOOD.replace("netd_user = \"sapper\"", "netd_user = \"sapper\"\nnetd_uid = 5"), "privd.netd_uid", "not both"),
            (GOOD.replace("[privd.tun]", "[privd.tun]\nmtu = 100"), "privd.tun.mtu", "must be 576..=65535"),
        ];
        for (text, key, rule) in cases {
            let e = Config::parse(&text, "/etc/sapper/x.toml")
                .expect_err(&format!("{key} should be refused"));
            assert_eq!(e.file, "/etc/sapper/x.toml");
            assert_eq!(e.key, key, "{e}");
            let shown = e.to_string();
            assert!(
                shown.starts_with(&format!("/etc/sapper/x.toml: {key}: ")) && shown.contains(rule),
                "{shown}"
            );
        }
        // The edges are accepted.
        for ok in ["handshake_timeout_ms = 100", "handshake_timeout_ms = 60000"] {
            let n = Config::parse(&netd(ok), "t.toml").unwrap().netd.unwrap();
            assert!([100, 60_000].contains(&n.handshake_timeout.get()));
        }
    }

    #[test]
    fn typed_values_are_ready_to_use() {
        let c = Config::parse(GOOD, "t.toml").unwrap();
        assert_eq!(c.node.name.as_ref().map(NodeName::as_str), Some("entry"));
        assert_eq!(c.node.psk, Some(PskSource::File("/etc/sapper/psk".into())));
        let n = c.netd.unwrap();
        let peer = &n.connect[0];
        assert_eq!(peer.server_name(), "10.0.0.2");
        assert_eq!(peer.proxy(), None);
        // A proxy is parsed with its entry; HTTPS_PROXY fills in for a
        // WebSocket entry without one unless NO_PROXY names its host.
        let ws = GOOD.replace("\"quic\"", "\"ws\"");
        let with = ws.replace("[privd]", "proxy = \"http://proxy:3128\"\nproxy_credentials_file = \"/etc/sapper/proxy\"\n[privd]");
        let n2 = Config::parse(&with, "t.toml").unwrap().netd.unwrap();
        let p = n2.connect[0].proxy().expect("proxy");
        assert_eq!(p.url.authority(), "proxy:3128");
        assert_eq!(
            p.credentials_file.as_deref(),
            Some(Path::new("/etc/sapper/proxy"))
        );
        let env = ProxyUrl::parse("http://envproxy:8080").unwrap();
        let plain = Config::parse(&ws, "t.toml")
            .unwrap()
            .netd
            .unwrap()
            .connect
            .remove(0);
        let got = plain.clone().with_env_proxy(&env, &NoProxy::default());
        assert_eq!(
            got.proxy().map(|p| (p.url.host(), p.from_env)),
            Some(("envproxy", true))
        );
        let direct = plain
            .clone()
            .with_env_proxy(&env, &NoProxy::parse("10.0.0.0/8"));
        assert_eq!(direct.proxy(), None);
        let own = n2.connect[0]
            .clone()
            .with_env_proxy(&env, &NoProxy::default());
        assert_eq!(own.proxy().map(|p| p.url.host()), Some("proxy"));
        assert_eq!(
            peer.clone()
                .with_env_proxy(&env, &NoProxy::default())
                .proxy(),
            None,
            "QUIC never"
        );
        let mut want = [0u8; 32];
        want[..4].copy_from_slice(&[0xab, 0xcd, 0xab, 0xcd]);
        match peer.trust() {
            PeerTrust::Pinned(fp) => assert_eq!(fp[..4], want[..4]),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            n.announce_routes.listed(),
            &["10.200.0.0/24".parse::<IpNet>().unwrap()]
        );
        assert_eq!(n.reconnect, Reconnect::default());
        // node.role is the fixed hint it stands for; [node.hint] wins.
        let c = Config::parse("[node]\nrole = \"exit\"\n", "t.toml").unwrap();
        assert_eq!(c.node.hint, Some(Hint::fixed(RoleName::Exit)));
        let c = Config::parse(
            "[node]\nrole = \"exit\"\n[node.hint]\nlevel = \"prefer\"\nrole = \"entry\"\n",
            "t.toml",
        )
        .unwrap();
        assert_eq!(
            c.node.hint,
            Some(Hint {
                level: HintLevelName::Prefer,
                role: RoleName::Entry
            })
        );
        // The exit's rules are compiled once, here.
        let x = Config::parse(
            "[netd.exit]\ndeny = [\"tcp 10.0.0.0/8 port 22\"]\n",
            "t.toml",
        )
        .unwrap()
        .netd
        .unwrap()
        .exit;
        assert_eq!(x.policy.deny_rules().len(), 1);
        // A section with no keys is the code's default.
        let d = Config::parse("[netd]\n", "t.toml").unwrap().netd.unwrap();
        let n = NetdConfig::default();
        assert_eq!(
            (
                d.ping_interval,
                d.handshake_timeout,
                d.peer_queue,
                d.worker_threads
            ),
            (
                n.ping_interval,
                n.handshake_timeout,
                n.peer_queue,
                n.worker_threads
            )
        );
        assert_eq!(d.exit.buffers, ExitConfig::default().buffers);
    }
}
