//! sapper-privd: the one process in Sapper that keeps a privilege. It owns
//! the TUN, its addresses and routes, and (on an exit node) forwarding and
//! NAT, and it answers a handful of typed requests from netd's uid over a
//! Unix socket. Every decision is written to stderr as one JSON line.

mod audit;
mod authz;
mod nat;
mod netlink;
mod privs;
mod sd;
mod server;
mod socket;
mod tun;

use anyhow::{bail, Context};
use clap::Parser;
use sapper_shared::config::{Config, PrivdConfig};
use server::Privd;
use std::collections::BTreeSet;
use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use tokio::signal::unix::{signal, SignalKind};

/// Sapper's privileged helper: opens the TUN, sets addresses and routes, and
/// hands the TUN to sapper-netd. Accepts only typed requests from netd's uid.
#[derive(Parser)]
#[command(version)]
struct Args {
    /// Config file.
    #[arg(long, default_value = sapper_shared::config::DEFAULT_CONFIG)]
    config: PathBuf,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let file = args.config.display().to_string();
    let text = std::fs::read_to_string(&args.config)
        .with_context(|| format!("loading {file}: cannot read"))?;
    let cfg = Config::parse(&text, &file)
        .with_context(|| format!("loading {file}"))?
        .privd
        .with_context(|| format!("{}: no [privd] section", args.config.display()))?;
    privs::check_net_admin()?;
    let netd_uid = netd_uid(&cfg)?;
    // Under systemd: the socket of sapper-privd.socket, and the TUN that a
    // previous privd left in the fd store (named "tun").
    let (stored, sockets): (Vec<_>, Vec<_>) = sd::listen_fds()
        .context("taking the fds systemd passed")?
        .into_iter()
        .partition(|(_, name)| name == "tun");
    let activated = !sockets.is_empty();
    let mut sockets = sockets.into_iter();
    let std_listener = match (sockets.next(), sockets.next()) {
        (None, _) => socket::bind(&cfg.socket, cfg.socket_group.as_deref())
            .context("setting up the privd socket")?,
        (Some((fd, _)), None) => socket::activated(fd).context("the socket systemd passed")?,
        (Some(_), Some(_)) => bail!("systemd passed more than one socket; privd serves one"),
    };
    let stored_tun = stored.into_iter().next().map(|(fd, _)| fd);
    // From here on only CAP_NET_ADMIN is left; everything below was checked
    // to need no more (see privs.rs).
    privs::drop_to_net_admin().context("dropping capabilities")?;
    audit::log("info", &format!("capabilities: {}", privs::describe()));

    // Built only now so that every runtime thread inherits the reduced sets.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    let result = rt.block_on(run(&cfg, netd_uid, std_listener, stored_tun));
    // An activated socket is systemd's: it must outlive this process.
    if !activated {
        if let Err(e) = std::fs::remove_file(&cfg.socket) {
            audit::log("warn", &format!("removing {}: {e}", cfg.socket.display()));
        }
    }
    match &result {
        Ok(()) => audit::log("info", "stopped"),
        Err(e) => audit::log("error", &format!("{e:#}")),
    }
    result
}

fn netd_uid(cfg: &PrivdConfig) -> anyhow::Result<u32> {
    match (&cfg.netd_user, cfg.netd_uid) {
        (Some(name), _) => Ok(nix::unistd::User::from_name(name)
            .with_context(|| format!("looking up privd.netd_user {name:?}"))?
            .with_context(|| format!("privd.netd_user {name:?}: no such user"))?
            .uid
            .as_raw()),
        (None, Some(uid)) => Ok(uid),
        (None, None) => bail!("set privd.netd_user or privd.netd_uid"),
    }
}

async fn run(
    cfg: &PrivdConfig,
    netd_uid: u32,
    std_listener: std::os::unix::net::UnixListener,
    stored_tun: Option<OwnedFd>,
) -> anyhow::Result<()> {
    // Signal handlers first, so a SIGTERM during setup is not lost.
    let mut term = signal(SignalKind::terminate()).context("SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("SIGINT handler")?;

    let net = netlink::Netlink::connect()?;
    let t = &cfg.tun;
    let adopted = match stored_tun.map(tun::adopt).transpose()? {
        Some((fd, name)) if name == t.name => Some((fd, name)),
        Some((_, name)) => {
            // Dropping our copy and systemd's lets that interface go once
            // netd lets go, and makes room in the store for the new one.
            let _ = sd::notify("FDSTOREREMOVE=1\nFDNAME=tun", None);
            audit::log(
                "warn",
                &format!(
                    "fd store held TUN {name}, config says {}: creating anew",
                    t.name
                ),
            );
            None
        }
        None => None,
    };
    let from_store = adopted.is_some();
    let (tun_fd, tun_name) = match adopted {
        Some(a) => a,
        None => tun::create(&t.name)?,
    };
    let ifindex = nix::net::if_::if_nametoindex(tun_name.as_str())
        .with_context(|| format!("interface index of {tun_name}"))?;
    net.configure_link(ifindex, t.mtu, &t.addresses)
        .await
        .with_context(|| format!("configuring {tun_name}"))?;
    let mut routes = BTreeSet::new();
    for r in &t.routes {
        let r = r.trunc();
        match net.add_route(ifindex, r).await {
            // A TUN from the fd store still has the routes the last privd set.
            Err(netlink::NetlinkError::Exists(_)) if from_store => {}
            other => other.with_context(|| format!("privd.tun.routes: {r}"))?,
        }
        routes.insert(r);
    }
    let configured = routes.clone();
    if from_store {
        // Routes netd had the previous privd add are still on this TUN; they
        // stay netd's to remove (only inside allowed_routes, as before).
        match net.static_routes_via(ifindex).await {
            Ok(found) => routes.extend(
                found
                    .into_iter()
                    .filter(|r| sapper_shared::config::prefix_allowed(r, &t.allowed_routes)),
            ),
            Err(e) => audit::log("warn", &format!("listing the routes of {tun_name}: {e}")),
        }
    }
    // Into systemd's fd store (FileDescriptorStoreMax= in the unit), so the
    // next privd takes the interface back instead of creating it anew. A TUN
    // that came from the store is still in it: storing it again would only
    // overflow FileDescriptorStoreMax=1.
    if !from_store {
        match sd::notify("FDSTORE=1\nFDNAME=tun", Some(tun_fd.as_fd())) {
            Ok(true) => audit::log(
                "info",
                &format!("TUN {tun_name} fd kept in systemd's fd store"),
            ),
            Ok(false) => {}
            Err(e) => audit::log("warn", &format!("fd store: {e}")),
        }
    }

    std_listener.set_nonblocking(true)?;
    let listener = tokio::net::UnixListener::from_std(std_listener)?;
    // Last fallible step before serving, so that once the table exists the
    // only way out is through the teardown below.
    let nat_active = setup_nat(cfg, &tun_name).await?;
    let privd = Arc::new(Privd {
        tun_name: tun_name.clone(),
        tun_mtu: t.mtu,
        tun_addresses: t.addresses.clone(),
        ifindex,
        tun_fd,
        allowed_routes: t.allowed_routes.clone(),
        max_routes: t.max_routes,
        netd_uid,
        net,
        conns: Default::default(),
        audit: std::sync::Mutex::new(audit::RateBound::new(std::time::Instant::now())),
        configured_routes: configured,
        routes: tokio::sync::Mutex::new(routes),
        nat_active,
        granted: AtomicU64::new(0),
        refused: AtomicU64::new(0),
    });
    let state = format!(
        "tun {tun_name} (index {ifindex}, {}), nat {}, forwarding {}",
        if from_store {
            "from the fd store"
        } else {
            "created"
        },
        if nat_active { "on" } else { "off" },
        if nat::forwarding_enabled() {
            "on"
        } else {
            "off"
        },
    );
    audit::log(
        "info",
        &format!(
            "serving {} for uid {netd_uid}: {state}",
            cfg.socket.display()
        ),
    );
    // Ready: the socket is listening and the TUN is configured.
    if let Err(e) = sd::notify(&format!("READY=1\nSTATUS={state}"), None) {
        audit::log("warn", &format!("sd_notify READY: {e}"));
    }
    let shutdown = async {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    };
    let served = privd.serve(listener, shutdown).await;
    let _ = sd::notify("STOPPING=1", None);
    if nat_active {
        match nat::apply(&nat::teardown()).await {
            Ok(()) => audit::log("info", &format!("removed nft table {}", nat::TABLE)),
            Err(e) => audit::log("error", &format!("removing nft table {}: {e}", nat::TABLE)),
        }
    }
    served.context("accepting connections")
}

/// Installs forwarding and the NAT table when `[privd.nat] enable = true`;
/// otherwise removes a table a previous run may have left.
async fn setup_nat(cfg: &PrivdConfig, tun_name: &str) -> anyhow::Result<bool> {
    let Some(nat_cfg) = cfg.nat.as_ref().filter(|n| n.enable) else {
        // Best effort: without nft there can be no stale table to worry about.
        let _ = nat::apply(&nat::teardown()).await;
        return Ok(false);
    };
    let sources = nat::sources(&nat_cfg.sources, &cfg.tun.addresses);
    let ruleset = nat::ruleset(tun_name, &sources)?;
    let need_v6 = sources.iter().any(|n| matches!(n, ipnet::IpNet::V6(_)));
    let forwarding = nat::enable_forwarding(need_v6)?;
    if !forwarding {
        // Not fatal: the NAT table is still right, and status keeps
        // reporting forwarding off until the operator's sysctl fixes it.
        audit::log(
            "warn",
            "forwarding off: /proc/sys is read-only here; set net.ipv4.ip_forward=1 (sysctl.d/60-sapper.conf)",
        );
    }
    nat::apply(&ruleset)
        .await
        .with_context(|| format!("installing nft table {}", nat::TABLE))?;
    let shown: Vec<String> = sources.iter().map(ToString::to_string).collect();
    audit::log(
        "info",
        &format!(
            "forwarding {}; masquerading {} via table {}",
            if forwarding { "on" } else { "off" },
            shown.join(", "),
            nat::TABLE
        ),
    );
    Ok(true)
}
