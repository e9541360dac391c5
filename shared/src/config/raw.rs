//! The file as serde reads it: every key of `sapper.toml` exactly as written,
//! with its default. Nothing here is checked beyond TOML types; the typed
//! configuration in the parent module is built from these by `TryFrom`, and
//! nothing but that conversion reads them.

use super::{PrivdConfig, Transport};
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::PathBuf;

/// The whole file.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct File {
    #[serde(default)]
    pub node: Node,
    pub netd: Option<Netd>,
    pub privd: Option<PrivdConfig>,
}

/// `[node]`
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Node {
    pub name: Option<String>,
    pub role: Option<crate::roles::RoleName>,
    pub psk_file: Option<PathBuf>,
    pub psk_env: Option<String>,
    #[serde(default)]
    pub zero_config: bool,
    pub auto_negotiate: Option<bool>,
    pub auto_routes: Option<bool>,
    #[serde(default)]
    pub insecure_open: bool,
    pub hint: Option<Hint>,
    #[serde(default)]
    pub no_announce_routes: bool,
    #[serde(default)]
    pub no_accept_routes: bool,
}

/// `[node.hint]`
#[derive(Debug, Deserialize, Clone, Copy)]
#[serde(deny_unknown_fields)]
pub struct Hint {
    pub level: crate::roles::HintLevelName,
    pub role: crate::roles::RoleName,
}

/// `[[netd.listen]]`
#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct Listen {
    pub transport: Transport,
    pub address: SocketAddr,
    pub ws_path: Option<String>,
    pub allowed_sources: Option<Vec<String>>,
}

/// `[[netd.connect]]`, and what an operator's `connect` request carries.
#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct Connect {
    pub transport: Transport,
    pub address: String,
    pub server_name: Option<String>,
    pub fingerprint: Option<String>,
    pub ca_file: Option<PathBuf>,
    pub ws_path: Option<String>,
    pub allowed_sources: Option<Vec<String>>,
    /// `http://host:port` of an HTTP CONNECT proxy (ws only).
    #[serde(default)]
    pub proxy: Option<String>,
    /// `user:password` for the proxy's Basic authentication.
    #[serde(default)]
    pub proxy_credentials_file: Option<PathBuf>,
}

fn default_state_dir() -> PathBuf {
    PathBuf::from("/var/lib/sapper")
}
fn default_mgmt() -> PathBuf {
    PathBuf::from(super::DEFAULT_MGMT_SOCKET)
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
fn default_mgmt_read_timeout() -> u64 {
    60_000
}
fn default_queue() -> u64 {
    1024
}
fn default_workers() -> u64 {
    1
}

/// `[netd]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Netd {
    pub user: Option<String>,
    pub group: Option<String>,
    #[serde(default = "default_state_dir")]
    pub state_dir: PathBuf,
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    pub privd_user: Option<String>,
    #[serde(default = "default_mgmt")]
    pub management_socket: PathBuf,
    pub management_group: Option<String>,
    pub operator_group: Option<String>,
    #[serde(default = "default_mgmt_read_timeout")]
    pub management_read_timeout_ms: u64,
    pub privd_socket: Option<PathBuf>,
    #[serde(default = "default_ping_interval")]
    pub ping_interval_ms: u64,
    #[serde(default = "default_miss_limit")]
    pub ping_miss_limit: u32,
    #[serde(default = "default_reconnect_min")]
    pub reconnect_min_ms: u64,
    #[serde(default = "default_reconnect_max")]
    pub reconnect_max_ms: u64,
    #[serde(default = "default_handshake_timeout")]
    pub handshake_timeout_ms: u64,
    #[serde(default = "default_queue")]
    pub peer_queue: u64,
    #[serde(default = "default_workers")]
    pub worker_threads: u64,
    /// A list of prefixes or the word "interfaces" (typed in
    /// config/announce.rs, which names the key in its errors).
    pub announce_routes: Option<toml::Value>,
    pub announce_exclude: Option<Vec<String>>,
    #[serde(default)]
    pub listen: Vec<Listen>,
    #[serde(default)]
    pub connect: Vec<Connect>,
    #[serde(default)]
    pub exit: Exit,
    #[serde(default)]
    pub tls: Tls,
    /// `[netd.metrics]` (typed in config/metrics.rs).
    pub metrics: Option<super::metrics::RawMetrics>,
    #[serde(default)]
    pub limits: crate::peer_limits::PeerLimits,
}

/// `[netd.tls]`
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Tls {
    /// Kept as text so a bad value is reported with its key and the
    /// accepted spellings, not as serde's "unknown variant".
    pub key_exchange: Option<String>,
}

fn default_max_tcp_flows() -> u64 {
    1024
}
fn default_max_udp_flows() -> u64 {
    1024
}
fn default_max_icmp_flows() -> u64 {
    256
}
fn default_flow_buffer() -> u64 {
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

/// `[netd.exit]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Exit {
    pub enable: Option<bool>,
    #[serde(default = "default_max_tcp_flows")]
    pub max_tcp_flows: u64,
    #[serde(default = "default_max_udp_flows")]
    pub max_udp_flows: u64,
    #[serde(default = "default_max_icmp_flows")]
    pub max_icmp_flows: u64,
    pub max_flows_per_peer: Option<u64>,
    #[serde(default = "default_flow_buffer")]
    pub flow_buffer_bytes: u64,
    #[serde(default = "default_max_buffer")]
    pub max_buffer_bytes: u64,
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout_ms: u64,
    #[serde(default = "default_udp_idle")]
    pub udp_idle_timeout_ms: u64,
    #[serde(default = "default_icmp_idle")]
    pub icmp_idle_timeout_ms: u64,
    #[serde(default = "default_true")]
    pub deny_local: bool,
    #[serde(default)]
    pub allow: Vec<String>,
    #[serde(default)]
    pub deny: Vec<String>,
}

impl Default for Exit {
    fn default() -> Self {
        Exit {
            enable: None,
            max_tcp_flows: default_max_tcp_flows(),
            max_udp_flows: default_max_udp_flows(),
            max_icmp_flows: default_max_icmp_flows(),
            max_flows_per_peer: None,
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
