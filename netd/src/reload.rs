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
//!   then, so only ports ≥ 1024 outside systemd's sockets).
//!
//! Links the change does not touch are left alone, so they keep
//! forwarding. Every other difference (a removed listener, `[node]`,
//! announced routes, ping timers, exit limits, metrics, TLS, users, paths)
//! is named in one warning per key as taking effect at the next restart.

use crate::node::Node;
use anyhow::{Context, Result};
use sapper_shared::config::{Config, Connect, Listen, NetdConfig, Transport};
use std::path::Path;
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
    listeners: Vec<Listen>,
    /// The last accepted file's sections, to name what changed.
    netd: NetdConfig,
    node: String,
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
    /// Starts the configured connectors; `listeners` are those bound at
    /// start.
    pub fn start(node: &Arc<Node>, node_section: &str, netd: &NetdConfig) -> Result<Self> {
        for c in &netd.connect {
            let stop = start_connector(node, c)?;
            connectors().push(Connector {
                target: c.clone(),
                stop,
                from_file: true,
            });
        }
        Ok(Self {
            listeners: netd.listen.clone(),
            netd: netd.clone(),
            node: node_section.to_string(),
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
        self.apply_connect(node, &new.connect).await;
        self.apply_listen(node, &new.listen);
        self.note_restart_only(&shown, &cfg, &new);
        self.netd = new;
        self.node = format!("{:?}", cfg.node);
        Ok(())
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

    fn apply_listen(&mut self, node: &Arc<Node>, wanted: &[Listen]) {
        for l in &self.listeners {
            if !wanted.contains(l) {
                tracing::warn!(address = %l.address, transport = l.transport.as_str(), "reload: a removed listener stays open until netd restarts");
            }
        }
        for l in wanted {
            if self.listeners.contains(l) {
                continue;
            }
            let started = match l.transport {
                Transport::Quic => std::net::UdpSocket::bind(l.address)
                    .and_then(|s| s.set_nonblocking(true).map(|()| s))
                    .map_err(anyhow::Error::from)
                    .and_then(|s| crate::listen::quic(node, s, l.address.to_string())),
                Transport::Ws => std::net::TcpListener::bind(l.address)
                    .and_then(|s| s.set_nonblocking(true).map(|()| s))
                    .map_err(anyhow::Error::from)
                    .and_then(|s| {
                        crate::listen::ws(node, s, l.address.to_string(), l.ws_path.as_str().into())
                    }),
            };
            match started {
                Ok(()) => {
                    tracing::info!(address = %l.address, transport = l.transport.as_str(), "reload: new listener");
                    self.listeners.push(l.clone());
                }
                Err(e) => {
                    tracing::error!(address = %l.address, error = %format!("{e:#}"), "reload: cannot open the new listener (netd holds no privilege now: ports >= 1024 only)")
                }
            }
        }
    }

    /// One warning per changed key that only a restart applies.
    fn note_restart_only(&self, file: &str, cfg: &Config, new: &NetdConfig) {
        let old = &self.netd;
        let mut changed = Vec::new();
        if format!("{:?}", cfg.node) != self.node {
            changed.push("node");
        }
        let checks: [(&str, String, String); 16] = [
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
                "netd.ping_interval_ms",
                format!("{:?}", old.ping_interval),
                format!("{:?}", new.ping_interval),
            ),
            (
                "netd.ping_miss_limit",
                format!("{:?}", old.ping_miss_limit),
                format!("{:?}", new.ping_miss_limit),
            ),
            (
                "netd.reconnect_*",
                format!("{:?}", old.reconnect),
                format!("{:?}", new.reconnect),
            ),
            (
                "netd.announce_routes",
                format!("{:?}", old.announce_routes),
                format!("{:?}", new.announce_routes),
            ),
            (
                "netd.exit",
                format!("{:?}", old.exit),
                format!("{:?}", new.exit),
            ),
            (
                "netd.tls",
                format!("{:?}", old.tls),
                format!("{:?}", new.tls),
            ),
            (
                "netd.metrics",
                format!("{:?}", old.metrics),
                format!("{:?}", new.metrics),
            ),
        ];
        for (key, a, b) in &checks {
            if a != b {
                changed.push(key);
            }
        }
        for key in changed {
            tracing::warn!(config = %file, key, "reload: this change takes effect when netd restarts");
        }
    }
}
