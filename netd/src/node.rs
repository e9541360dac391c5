//! What every task of netd shares: configuration, identity, secrets, the
//! data path, the event bus, the shutdown token, and the channel to the
//! driver (the one task that owns the control core). Nothing here is
//! behind a lock.

use crate::datapath::DataPath;
use crate::inputs::{Input, Links};
use anyhow::{anyhow, Context, Result};
use sapper_control::{Core, LinkId};
use sapper_shared::config::NetdConfig;
use sapper_shared::proto::management::Event;
use sapper_shared::psk::Psk;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio_util::sync::CancellationToken;

pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// How long a task waits for the driver to take or answer a request.
pub const DRIVER_WAIT: Duration = Duration::from_secs(5);

pub struct Node {
    pub cfg: NetdConfig,
    pub identity: Arc<crate::tls::Identity>,
    /// Members of this group may change things over the management socket.
    pub operator_gid: Option<u32>,
    pub name: String,
    pub psk: Option<Psk>,
    pub fingerprint: String,
    pub started: Instant,
    pub data: Arc<DataPath>,
    /// The userspace exit, on a node without a TUN.
    pub exit: Option<Arc<crate::exit::UserspaceExit>>,
    pub events: broadcast::Sender<Event>,
    pub shutdown: CancellationToken,
    /// To the driver; bounded.
    pub driver: mpsc::Sender<Input>,
    /// Connections not yet past the Sapper handshake (`netd.limits`).
    pub preauth: Arc<crate::preauth::PreAuth>,
    /// The kernel's routing tables, opened before the sandbox: the
    /// underlay watch and `announce_routes = "interfaces"` read them.
    pub route_tables: Arc<crate::underlay::RouteTables>,
    /// Where the announced routes come from now (`announce_routes` as a
    /// reload last applied it, `cfg` being the start config).
    pub announce_from_interfaces: AtomicBool,
    next_link: AtomicU64,
}

impl Node {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        cfg: NetdConfig,
        identity: Arc<crate::tls::Identity>,
        operator_gid: Option<u32>,
        name: String,
        psk: Option<Psk>,
        fingerprint: String,
        data: Arc<DataPath>,
        exit: Option<Arc<crate::exit::UserspaceExit>>,
        shutdown: CancellationToken,
        driver: mpsc::Sender<Input>,
        route_tables: Arc<crate::underlay::RouteTables>,
    ) -> Self {
        let announce_from_interfaces = cfg.announce_routes.source() == "interfaces";
        let preauth =
            crate::preauth::PreAuth::new(cfg.limits.max_preauth, cfg.limits.max_preauth_per_ip);
        Self {
            preauth,
            cfg,
            identity,
            operator_gid,
            name,
            psk,
            fingerprint,
            started: Instant::now(),
            data,
            exit,
            events: broadcast::channel(256).0,
            shutdown,
            driver,
            route_tables,
            announce_from_interfaces: AtomicBool::new(announce_from_interfaces),
            next_link: AtomicU64::new(1),
        }
    }

    /// A fresh link id; never reused.
    pub fn next_link_id(&self) -> LinkId {
        LinkId(self.next_link.fetch_add(1, Relaxed))
    }

    /// Hands the driver one input, waiting at most [`DRIVER_WAIT`] for room.
    pub async fn tell(&self, input: Input) -> Result<()> {
        self.driver
            .send_timeout(input, DRIVER_WAIT)
            .await
            .map_err(|_| anyhow!("the control driver is busy or gone"))
    }

    /// Reads something from the control core.
    pub async fn inspect<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Core, &Links) -> T + Send + 'static,
    ) -> Result<T> {
        let (tx, rx) = oneshot::channel();
        self.tell(Input::Inspect(Box::new(
            move |core: &mut Core, links: &Links| {
                let _ = tx.send(f(core, links));
            },
        )))
        .await?;
        tokio::time::timeout(DRIVER_WAIT, rx)
            .await
            .context("the control driver did not answer in time")?
            .context("the control driver is gone")
    }
}
