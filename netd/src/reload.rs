//! SIGHUP: re-read the config file and apply what can change while links
//! stay up.
//!
//! The new file is read and parsed by the same code as at start (inside the
//! sandbox: Landlock leaves the config file readable). A file that does not
//! parse is refused — the error names the file and the key — and the
//! running configuration stays as it was. Of a valid file, applied live:
//!
//! - `[[netd.connect]]`: a new entry starts dialling; a removed entry stops
//!   redialling and its link is closed;
//! - `[[netd.listen]]`: a new entry is bound (netd holds no privilege by
//!   then, so only ports ≥ 1024 outside systemd's sockets); a removed one is
//!   closed (QUIC refuses new connections, the TCP socket closes), links
//!   already accepted on it stay up;
//! - `netd.announce_routes`, `node.no_announce_routes`, the hint
//!   (`node.role`, `[node.hint]`), `netd.ping_interval_ms`,
//!   `netd.ping_miss_limit`: handed to the control core
//!   (`Core::handle_config`), which re-announces and renegotiates;
//! - `[netd.exit]` limits, timeouts and policy: the userspace exit applies
//!   them to new flows;
//! - `[netd.metrics]`: the endpoint is turned on, off or moved.
//!
//! Links the change does not touch are left alone, so they keep
//! forwarding. One info line names the keys applied live; every other
//! difference (`[node]`'s name, PSK and posture switches, TLS, users,
//! paths, reconnect delays, `netd.exit.enable`, a listener's options at an
//! unchanged address) is named in one warning per key as taking effect at
//! the next restart.

use crate::node::Node;
use anyhow::{Context, Result};
use sapper_control::LiveConfig;
use sapper_shared::config::{
    Config, Connect, Listen, MetricsConfig, NetdConfig, NodeConfig, Transport,
};
use std::path::Path;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// Every connector running, with the token that stops it. Shared by the
/// reload (entries from the file) and the management socket (`sapperctl
/// connect` adds, `disconnect --stay` stops); never locked across an await.
struct Connector {
    target: Connect,
    stop: CancellationToken,
    /// From `[[netd.connect]]` (managed by reload) or `sapperctl connect`.
    from_file: bool,
}

static CONNECTORS: std::sync::Mutex<Vec<Connector>> = std::sync::Mutex::new(Vec::new());

fn connectors() -> std::sync::MutexGuard<'static, Vec<Connector>> {
    CONNECTORS.lock().unwrap_or_else(|e| e.into_inner())
}

/// Starts a connector for `sapperctl connect` (not part of the file, so a
/// reload leaves it alone).
pub fn spawn_adhoc(node: &Arc<Node>, c: &Connect) -> Result<()> {
    let stop = start_connector(node, c)?;
    connectors().push(Connector {
        target: c.clone(),
        stop,
        from_file: false,
    });
    Ok(())
}

/// `disconnect --stay`: stops the connectors that dial `addr` (the remote
/// address of an outbound link). Returns how many. A reload that still
/// lists a stopped file entry starts it again.
pub async fn stay_away(addr: &str) -> usize {
    let all: Vec<Connect> = connectors().iter().map(|c| c.target.clone()).collect();
    let mut hit = Vec::new();
    for c in all {
        if let Ok(a) = crate::target::Dial::resolve(&c).await {
            if a.to_string() == addr {
                hit.push(c);
            }
        }
    }
    let mut list = connectors();
    let before = list.len();
    list.retain(|c| {
        if hit.contains(&c.target) {
            c.stop.cancel();
            tracing::info!(peer = %c.target.address(), "disconnect --stay: no longer dialling it");
            false
        } else {
            true
        }
    });
    before - list.len()
}

/// The configuration running now, as far as reload changes it.
pub struct Running {
    /// Listeners from the file, with the token that closes each.
    listeners: Vec<(Listen, CancellationToken)>,
    /// The metrics endpoint serving, with the token that stops it.
    metrics: Option<(MetricsConfig, CancellationToken)>,
    /// The last accepted file's sections, to name what changed.
    netd: NetdConfig,
    node: NodeConfig,
}

/// A listener started at start-up: its address, transport and stop token.
pub type Started = (String, Transport, CancellationToken);

/// The live part of the core's configuration a file asks for, with the
/// prefixes it announces (`announce_routes = "interfaces"` resolved).
fn live_config(
    node: &NodeConfig,
    netd: &NetdConfig,
    announce_routes: Vec<ipnet::IpNet>,
) -> Result<LiveConfig> {
    let posture = sapper_shared::posture::resolve(node, netd)?;
    Ok(LiveConfig {
        announce_routes,
        announce: posture.announce_routes,
        hint: posture.hint,
        ping_interval: netd.ping_interval.millis(),
        ping_miss_limit: netd.ping_miss_limit.as_u32(),
    })
}

fn start_connector(node: &Arc<Node>, c: &Connect) -> Result<CancellationToken> {
    let tls = crate::target::Dial::client_tls(c, node.cfg.tls.key_exchange)?;
    let stop = node.shutdown.child_token();
    tokio::spawn(crate::dial::connector_until(
        node.clone(),
        c.clone(),
        tls,
        stop.clone(),
    ));
    Ok(stop)
}

impl Running {
    /// Starts the configured connectors; `started` are the listeners bound
    /// at start (those of the file among them are closed when a reload
    /// removes them), `metrics` the endpoint serving.
    pub fn start(
        node: &Arc<Node>,
        node_section: &NodeConfig,
        netd: &NetdConfig,
        started: Vec<Started>,
        metrics: Option<CancellationToken>,
    ) -> Result<Self> {
        for c in &netd.connect {
            let stop = start_connector(node, c)?;
            connectors().push(Connector {
                target: c.clone(),
                stop,
                from_file: true,
            });
        }
        let mut listeners = Vec::new();
        for l in &netd.listen {
            let addr = l.address.to_string();
            if let Some((_, _, stop)) = started
                .iter()
                .find(|(a, t, _)| *a == addr && *t == l.transport)
            {
                listeners.push((l.clone(), stop.clone()));
            }
        }
        Ok(Self {
            listeners,
            metrics: netd.metrics.clone().zip(metrics),
            netd: netd.clone(),
            node: node_section.clone(),
        })
    }

    /// Re-reads `file` and applies it; an error leaves everything running
    /// as it was.
    pub async fn reload(&mut self, node: &Arc<Node>, file: &Path) -> Result<()> {
        let shown = file.display().to_string();
        let text =
            std::fs::read_to_string(file).with_context(|| format!("{shown}: cannot read"))?;
        let mut cfg = Config::parse(&text, &shown)?;
        let creds = std::env::var_os("CREDENTIALS_DIRECTORY").map(std::path::PathBuf::from);
        cfg.expand_credentials(&shown, creds.as_deref())?;
        let mut new = cfg
            .netd
            .clone()
            .with_context(|| format!("{shown}: no [netd] section"))?;
        new.connect = crate::proxy::with_env(std::mem::take(&mut new.connect));
        // Everything that can fail is checked before anything changes.
        for (i, c) in new.connect.iter().enumerate() {
            crate::target::Dial::client_tls(c, node.cfg.tls.key_exchange)
                .with_context(|| format!("{shown}: netd.connect[{i}]"))?;
            if let Some(f) = c.proxy().and_then(|p| p.credentials_file.as_deref()) {
                crate::proxy::credentials_at_reload(f, &node.cfg.state_dir).with_context(|| {
                    format!("{shown}: netd.connect[{i}].proxy_credentials_file")
                })?;
            }
        }
        tracing::info!(
            sapper_event = "config_reloaded",
            config = %shown,
            config_sha256 = %crate::logging::config_hash(text.as_bytes()),
            "config re-read (SIGHUP)"
        );
        // Resolved again from the tables now: interfaces may have come or
        // gone. Unreadable tables refuse the reload rather than withdraw
        // every route.
        let announce = crate::interfaces::announced(&new, &node.route_tables).with_context(|| {
            format!("{shown}: netd.announce_routes = \"interfaces\": the routing tables in /proc could not be read")
        })?;
        let live = live_config(&cfg.node, &new, announce)
            .with_context(|| format!("{shown}: node (psk_file, psk_env, insecure_open)"))?;
        let mut applied: Vec<&'static str> = Vec::new();
        if self.netd.connect != new.connect {
            applied.push("netd.connect");
        }
        self.apply_connect(node, &new.connect).await;
        if self.apply_listen(node, &new.listen).await {
            applied.push("netd.listen");
        }
        let now = std::time::Instant::now();
        match node
            .inspect(move |core, _| core.handle_config(now, live))
            .await
        {
            Ok(keys) => {
                let from = new.announce_routes.source() == "interfaces";
                node.announce_from_interfaces.store(from, Relaxed);
                applied.extend(keys)
            }
            Err(e) => {
                tracing::error!(error = %format!("{e:#}"), "reload: routes, hint and ping timers not applied")
            }
        }
        let mut restart = Vec::new();
        match &node.exit {
            Some(exit) => match exit.reconfigure(&new.exit) {
                Ok(keys) => applied.extend(keys),
                Err(key) => restart.push(key),
            },
            // No userspace exit runs (a TUN node, or enable = false):
            // nothing reads the section until a restart might start one.
            None if self.netd.exit.enable != new.exit.enable => restart.push("netd.exit.enable"),
            None => {}
        }
        if self.netd.metrics != new.metrics {
            if self.apply_metrics(node, new.metrics.clone()) {
                applied.push("netd.metrics");
            } else {
                restart.push("netd.metrics");
            }
        }
        restart.extend(self.restart_only(&cfg.node, &new));
        let restart_keys = restart.join(", ");
        if applied.is_empty() {
            tracing::info!(config = %shown, needs_restart = %restart_keys, "reload: nothing to apply live");
        } else {
            tracing::info!(sapper_event = "config_applied", config = %shown, applied = %applied.join(", "), needs_restart = %restart_keys, "reload: applied live");
        }
        for key in &restart {
            tracing::warn!(config = %shown, key, "reload: this change takes effect when netd restarts");
        }
        self.netd = new;
        self.node = cfg.node;
        Ok(())
    }

    /// Stops the metrics endpoint and starts the one `wanted` asks for.
    /// False when the new one cannot be bound (the old one is gone then:
    /// nothing serves until a restart binds it with privilege).
    fn apply_metrics(&mut self, node: &Arc<Node>, wanted: Option<MetricsConfig>) -> bool {
        if let Some((old, stop)) = self.metrics.take() {
            stop.cancel();
            if let sapper_shared::config::MetricsEndpoint::Unix(p) = &old.endpoint {
                // Best effort: Landlock may keep netd from removing it.
                let _ = std::fs::remove_file(p);
            }
            tracing::info!("reload: metrics endpoint closed");
        }
        let Some(m) = wanted else {
            return true;
        };
        // Unprivileged now: the socket keeps netd's own user and group.
        let own = nix::unistd::geteuid().as_raw();
        match crate::metrics_http::bind(&m, None, None, own) {
            Ok(l) => {
                tracing::info!(on = %l.describe(), "reload: metrics endpoint serving");
                let stop = node.shutdown.child_token();
                tokio::spawn(crate::metrics_http::serve(
                    node.clone(),
                    l,
                    m.max_connections,
                    stop.clone(),
                ));
                self.metrics = Some((m, stop));
                true
            }
            Err(e) => {
                tracing::error!(error = %format!("{e:#}"), "reload: cannot open the metrics endpoint (netd holds no privilege now)");
                false
            }
        }
    }

    async fn apply_connect(&mut self, node: &Arc<Node>, wanted: &[Connect]) {
        // Taken out under the lock; the closing below awaits.
        let removed: Vec<Connector> = {
            let mut list = connectors();
            let (gone, kept): (Vec<_>, Vec<_>) = std::mem::take(&mut *list)
                .into_iter()
                .partition(|c| c.from_file && !wanted.contains(&c.target));
            *list = kept;
            gone
        };
        for Connector {
            target: c, stop, ..
        } in removed
        {
            stop.cancel();
            tracing::info!(peer = %c.address(), transport = c.transport().as_str(), "reload: connect entry removed; closing its link");
            // Its link is the outbound one to the address it resolves to.
            if let Ok(addr) = crate::target::Dial::resolve(&c).await {
                let addr = addr.to_string();
                let _ = node
                    .inspect(move |core, _| {
                        let ids: Vec<_> = core
                            .links()
                            .into_iter()
                            .filter(|v| v.info.outbound && v.info.address == addr)
                            .map(|v| v.id)
                            .collect();
                        for id in ids {
                            core.disconnect(id, "connect entry removed from the config");
                        }
                    })
                    .await;
            }
        }
        for c in wanted {
            if connectors().iter().any(|k| k.from_file && k.target == *c) {
                continue;
            }
            match start_connector(node, c) {
                Ok(stop) => {
                    tracing::info!(peer = %c.address(), transport = c.transport().as_str(), "reload: new connect entry; dialling");
                    connectors().push(Connector {
                        target: c.clone(),
                        stop,
                        from_file: true,
                    });
                }
                Err(e) => {
                    tracing::error!(peer = %c.address(), error = %format!("{e:#}"), "reload: cannot start the new connect entry")
                }
            }
        }
    }

    /// Closes the removed listeners and binds the new ones; true when any
    /// changed. An entry whose address and transport stay but whose options
    /// (`ws_path`, `allowed_sources`) changed keeps its socket and old
    /// options until a restart (warned): rebinding the address would
    /// close the links accepted on it.
    async fn apply_listen(&mut self, node: &Arc<Node>, wanted: &[Listen]) -> bool {
        let same_socket =
            |a: &Listen, b: &Listen| a.address == b.address && a.transport == b.transport;
        let mut changed = false;
        let mut kept = Vec::new();
        for (l, stop) in std::mem::take(&mut self.listeners) {
            if wanted.contains(&l) {
                kept.push((l, stop));
            } else if let Some(w) = wanted.iter().find(|w| same_socket(w, &l)) {
                tracing::warn!(address = %l.address, transport = l.transport.as_str(), "reload: this listener's ws_path/allowed_sources change takes effect when netd restarts");
                // Counted as the new entry so the warning is given once.
                kept.push((w.clone(), stop));
            } else {
                stop.cancel();
                changed = true;
                tracing::info!(address = %l.address, transport = l.transport.as_str(), "reload: listener removed; closing it");
            }
        }
        self.listeners = kept;
        if changed {
            // Let the closed accept loops drop their sockets before an
            // address is bound again.
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        for l in wanted {
            if self.listeners.iter().any(|(k, _)| same_socket(k, l)) {
                continue;
            }
            let addr = l.address.to_string();
            let allowed = l.allowed_sources.clone();
            let started = match l.transport {
                Transport::Quic => std::net::UdpSocket::bind(l.address)
                    .and_then(|s| s.set_nonblocking(true).map(|()| s))
                    .map_err(anyhow::Error::from)
                    .and_then(|s| crate::listen::quic(node, s, addr, allowed)),
                Transport::Ws => std::net::TcpListener::bind(l.address)
                    .and_then(|s| s.set_nonblocking(true).map(|()| s))
                    .map_err(anyhow::Error::from)
                    .and_then(|s| {
                        crate::listen::ws(node, s, addr, l.ws_path.as_str().into(), allowed)
                    }),
            };
            match started {
                Ok(stop) => {
                    tracing::info!(address = %l.address, transport = l.transport.as_str(), "reload: new listener");
                    self.listeners.push((l.clone(), stop));
                    changed = true;
                }
                Err(e) => {
                    tracing::error!(address = %l.address, error = %format!("{e:#}"), "reload: cannot open the new listener (netd holds no privilege now: ports >= 1024 only)")
                }
            }
        }
        changed
    }

    /// The changed keys that only a restart applies.
    fn restart_only(&self, node: &NodeConfig, new: &NetdConfig) -> Vec<&'static str> {
        let old = &self.netd;
        let mut changed = Vec::new();
        // The hint and no_announce_routes are live; the rest of [node]
        // (name, PSK, posture switches) is not.
        let fixed = |n: &NodeConfig| NodeConfig {
            hint: None,
            no_announce_routes: false,
            ..n.clone()
        };
        if fixed(node) != fixed(&self.node) {
            changed.push("node (name, psk, zero_config, auto_*, insecure_open, no_accept_routes)");
        }
        let checks: [(&'static str, String, String); 12] = [
            (
                "netd.user",
                format!("{:?}", old.user),
                format!("{:?}", new.user),
            ),
            (
                "netd.group",
                format!("{:?}", old.group),
                format!("{:?}", new.group),
            ),
            (
                "netd.state_dir",
                format!("{:?}", old.state_dir),
                format!("{:?}", new.state_dir),
            ),
            (
                "netd.cert_file",
                format!("{:?}", old.identity),
                format!("{:?}", new.identity),
            ),
            (
                "netd.privd_user",
                format!("{:?}", old.privd_user),
                format!("{:?}", new.privd_user),
            ),
            (
                "netd.management_socket",
                format!("{:?}", old.management_socket),
                format!("{:?}", new.management_socket),
            ),
            (
                "netd.management_group",
                format!("{:?}", old.management_group),
                format!("{:?}", new.management_group),
            ),
            (
                "netd.operator_group",
                format!("{:?}", old.operator_group),
                format!("{:?}", new.operator_group),
            ),
            (
                "netd.privd_socket",
                format!("{:?}", old.privd_socket),
                format!("{:?}", new.privd_socket),
            ),
            (
                "netd.reconnect_*",
                format!("{:?}", old.reconnect),
                format!("{:?}", new.reconnect),
            ),
            (
                "netd.tls",
                format!("{:?}", old.tls),
                format!("{:?}", new.tls),
            ),
            (
                "netd.limits / handshake_timeout_ms / peer_queue / worker_threads / management_read_timeout_ms",
                format!(
                    "{:?}{:?}{:?}{:?}{:?}",
                    old.limits, old.handshake_timeout, old.peer_queue, old.worker_threads, old.management_read_timeout
                ),
                format!(
                    "{:?}{:?}{:?}{:?}{:?}",
                    new.limits, new.handshake_timeout, new.peer_queue, new.worker_threads, new.management_read_timeout
                ),
            ),
        ];
        for (key, a, b) in checks {
            if a != b {
                changed.push(key);
            }
        }
        changed
    }
}
