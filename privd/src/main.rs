//! sapper-privd: the one process in Sapper that keeps a privilege. It owns
//! the TUN, its addresses and routes, and (on an exit node) forwarding and
//! NAT, and it answers a handful of typed requests from netd's uid over a
//! Unix socket. Every decision is written to stderr as one JSON line.
//!
//! Like the parent of an OpenBSD daemon it does all that needs root first
//! (socket, TUN, routes, NAT), then restricts itself (its own uid, only
//! CAP_NET_ADMIN, no_new_privs, a seccomp allow-list) and only then serves:
//! one thread, one poll loop, blocking netlink, every length checked.

mod audit;
mod authz;
mod nat;
mod netlink;
mod privs;
mod sd;
mod seccomp;
mod server;
mod tun;

use anyhow::{bail, Context};
use audit::log;
use clap::Parser;
use nix::sys::signalfd::{SfdFlags, SignalFd};
use sapper_shared::config::{Config, PrivdConfig};
use sapper_shared::proto::privd::{priv_request::Body, RouteChange, TunOpened};
use sapper_unixsock as unixsock;
use std::collections::BTreeSet;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixListener;
use std::path::PathBuf;

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
    let shown = args.config.display().to_string();
    let text = std::fs::read_to_string(&args.config)
        .with_context(|| format!("loading {shown}: cannot read"))?;
    let cfg = Config::parse(&text, &shown)
        .with_context(|| format!("loading {shown}"))?
        .privd
        .with_context(|| format!("{shown}: no [privd] section"))?;
    privs::check_net_admin()?;
    let netd_uid = netd_uid(&cfg)?;
    let user = privs::resolve(cfg.user.as_deref())?;
    // netd must not be able to signal or trace the process that holds its
    // privilege, nor the other way round.
    if user.as_ref().is_some_and(|u| u.uid.as_raw() == netd_uid) {
        bail!("privd.user must not be netd's user (uid {netd_uid})");
    }
    // SIGTERM and SIGINT arrive as a readable fd in the poll loop; blocked
    // from here on (and in the nft helper, which outlives them).
    let mask = nat::stop_signals();
    mask.thread_block().context("blocking SIGTERM/SIGINT")?;
    let stop = SignalFd::with_flags(&mask, SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK)
        .context("signalfd")?;
    // Under systemd: the socket of sapper-privd.socket, and the TUN that a
    // previous privd left in the fd store (named "tun").
    let (stored, mut sockets): (Vec<_>, Vec<_>) = sd::listen_fds()
        .context("taking the fds systemd passed")?
        .into_iter()
        .partition(|(_, name)| name == "tun");
    let activated = !sockets.is_empty();
    // Non-blocking either way (the loop's accept must never block), before
    // the seccomp filter, which has no ioctl.
    let listener = match sockets.len() {
        0 => bind(&cfg).context("setting up the privd socket")?,
        1 => unixsock::activated(sockets.remove(0).0).context("the socket systemd passed")?,
        _ => bail!("systemd passed more than one socket; privd serves one"),
    };
    let stored_tun = stored.into_iter().next().map(|(fd, _)| fd);
    let result = run(&cfg, netd_uid, user.as_ref(), &listener, stored_tun, &stop);
    // An activated socket is systemd's: it must outlive this process. One
    // bound by hand sits in a directory privd's own uid may not write to;
    // then the next start replaces it (it answers nobody).
    if !activated {
        if let Err(e) = std::fs::remove_file(&cfg.socket) {
            log!("info", "leaving {}: {e}", cfg.socket.display());
        }
    }
    match &result {
        Ok(()) => log!("info", "stopped"),
        Err(e) => log!("error", "{e:#}"),
    }
    result
}

/// The request socket, bound by privd itself. Its mode and group are the
/// first gate (only the socket group can connect at all); SO_PEERCRED in
/// server.rs is the second.
fn bind(cfg: &PrivdConfig) -> anyhow::Result<UnixListener> {
    let gid = match &cfg.socket_group {
        Some(name) => match nix::unistd::Group::from_name(name).ok().flatten() {
            Some(g) => Some(g.gid),
            None => bail!("privd.socket_group {name:?}: no such group"),
        },
        None => None,
    };
    let own = nix::unistd::geteuid().as_raw();
    Ok(sapper_unixsock::bind(&cfg.socket, own, None, gid)?)
}

/// netd's uid: `netd_uid`, or that of `netd_user` (config validation lets
/// exactly one of the two through).
fn netd_uid(cfg: &PrivdConfig) -> anyhow::Result<u32> {
    let Some(name) = &cfg.netd_user else {
        return cfg.netd_uid.context("set netd_user or netd_uid");
    };
    let user = nix::unistd::User::from_name(name).ok().flatten();
    let user = user.with_context(|| format!("privd.netd_user {name:?}: no such user"))?;
    Ok(user.uid.as_raw())
}

fn run(
    cfg: &PrivdConfig,
    netd_uid: u32,
    user: Option<&nix::unistd::User>,
    listener: &UnixListener,
    stored_tun: Option<OwnedFd>,
    stop: &SignalFd,
) -> anyhow::Result<()> {
    let mut net = netlink::Netlink::connect()?;
    let t = &cfg.tun;
    let adopted = match stored_tun.map(tun::adopt).transpose()? {
        Some((_, name, _)) if name != t.name => {
            // Dropping our copy and systemd's lets that interface go once
            // netd lets go, and makes room in the store for the new one.
            let _ = sd::notify("FDSTOREREMOVE=1\nFDNAME=tun", None);
            let want = &t.name;
            log!(
                "warn",
                "fd store held TUN {name}, not {want}: creating anew"
            );
            None
        }
        adopted => adopted,
    };
    let from_store = adopted.is_some();
    let (tun_fd, tun_name, vnet_hdr) =
        adopted.map_or_else(|| tun::create(&t.name, t.offload), Ok)?;
    let offloads = if vnet_hdr {
        tun::offload(&tun_fd)
    } else {
        Vec::new()
    };
    let ifindex = nix::net::if_::if_nametoindex(tun_name.as_str())
        .with_context(|| format!("interface index of {tun_name}"))?;
    net.configure_link(ifindex, t.mtu, &t.addresses)
        .with_context(|| format!("configuring {tun_name}"))?;
    let configured: BTreeSet<_> = t.routes.iter().map(ipnet::IpNet::trunc).collect();
    for r in &configured {
        match net.route(ifindex, *r, true) {
            // A TUN from the fd store still has the routes the last privd set.
            Err(e) if from_store && e.1 == nix::errno::Errno::EEXIST => {}
            other => other.with_context(|| format!("privd.tun.routes: {r}"))?,
        }
    }
    let mut privd = server::Privd {
        opened: TunOpened {
            name: tun_name.clone(),
            mtu: t.mtu,
            addresses: t.addresses.iter().map(ToString::to_string).collect(),
            vnet_hdr,
            offloads,
        },
        ifindex,
        tun_fd,
        net,
        policy: authz::Policy {
            netd_uid,
            allowed: t.allowed_routes.clone(),
            installed: configured.clone(),
            configured,
            max_routes: t.max_routes,
        },
        nat_active: false,
        audit: audit::RateBound::new(std::time::Instant::now()),
        counts: [0; 2],
        refusals: Default::default(),
    };
    if from_store {
        // Routes netd had the previous privd add are still on this TUN; they
        // are netd's again exactly when netd could add them now.
        match privd.net.static_routes_via(ifindex) {
            Ok(found) => found.into_iter().for_each(|r| {
                let prefix = r.to_string();
                let req = Body::RouteChange(RouteChange { prefix, add: true });
                if authz::decide(&privd.policy, netd_uid, Some(&req)).is_ok() {
                    privd.policy.installed.insert(r);
                }
            }),
            Err(e) => log!("warn", "listing the routes of {tun_name}: {e}"),
        }
    } else {
        // Into systemd's fd store (FileDescriptorStoreMax= in the unit), so
        // the next privd takes the interface back instead of creating it
        // anew. A TUN that came from the store is still in it: storing it
        // again would only overflow FileDescriptorStoreMax=1.
        match sd::notify("FDSTORE=1\nFDNAME=tun", Some(privd.tun_fd.as_fd())) {
            Ok(true) => log!("info", "TUN {tun_name} fd kept in systemd's fd store"),
            Ok(false) => {}
            Err(e) => log!("warn", "fd store: {e}"),
        }
    }
    privd.nat_active = setup_nat(cfg, &tun_name)?;
    // From here on the table exists: any way out removes it.
    let teardown = restrict(user, privd.nat_active).inspect_err(|_| {
        if privd.nat_active {
            let _ = nat::apply(&nat::teardown());
        }
    })?;
    let origin = ["created", "from the fd store"][usize::from(from_store)];
    let (nat, fwd) = (on(privd.nat_active), on(nat::forwarding_enabled()));
    let offloads = privd.opened.offloads.join(",");
    let state = format!("tun {tun_name} (index {ifindex}, {origin}, offloads [{offloads}]), nat {nat}, forwarding {fwd}");
    let socket = cfg.socket.display();
    log!("info", "serving {socket} for uid {netd_uid}: {state}");
    // Ready: the socket is listening, the TUN configured, privd restricted.
    if let Err(e) = sd::notify(&format!("READY=1\nSTATUS={state}"), None) {
        log!("warn", "sd_notify READY: {e}");
    }
    let served = privd.serve(listener, stop.as_fd());
    let _ = sd::notify("STOPPING=1", None);
    match teardown.map(nat::Nft::run) {
        Some(Ok(())) => log!("info", "removed nft table {}", nat::TABLE),
        Some(Err(e)) => log!("error", "removing nft table {}: {e:#}", nat::TABLE),
        None => {}
    }
    served.context("serving")
}

/// privd's pledge: its own uid with only CAP_NET_ADMIN, the nft teardown
/// helper started while that is still possible, then the seccomp filter.
fn restrict(user: Option<&nix::unistd::User>, nat: bool) -> anyhow::Result<Option<nat::Nft>> {
    privs::drop_to_net_admin(user).context("dropping privileges")?;
    log!("info", "privileges: {}", privs::describe());
    let teardown = nat.then(|| nat::Nft::start(&nat::teardown()));
    let teardown = teardown.transpose().context("starting the nft helper")?;
    seccomp::install()?;
    Ok(teardown)
}

/// Installs forwarding and the NAT table when `[privd.nat] enable = true`;
/// otherwise removes a table a previous run may have left.
fn setup_nat(cfg: &PrivdConfig, tun_name: &str) -> anyhow::Result<bool> {
    let Some(nat_cfg) = cfg.nat.as_ref().filter(|n| n.enable) else {
        // Best effort: without nft there can be no stale table to worry about.
        let _ = nat::apply(&nat::teardown());
        return Ok(false);
    };
    let sources = nat::sources(&nat_cfg.sources, &cfg.tun.addresses);
    let ruleset = nat::ruleset(tun_name, &sources, &nat_cfg.host_ports)?;
    let forwarding = nat::enable_forwarding(sources.iter().any(|n| n.addr().is_ipv6()))?;
    if !forwarding {
        // Not fatal: the NAT table is still right, and status keeps
        // reporting forwarding off until the operator's sysctl fixes it.
        let fix = "cp /usr/share/doc/sapper/exit.sysctl /etc/sysctl.d/60-sapper.conf";
        log!("warn", "forwarding off: /proc/sys is read-only here; {fix}");
    }
    nat::apply(&ruleset).with_context(|| format!("installing nft table {}", nat::TABLE))?;
    let shown: Vec<String> = sources.iter().map(ToString::to_string).collect();
    let (fwd, shown, table) = (on(forwarding), shown.join(", "), nat::TABLE);
    log!(
        "info",
        "forwarding {fwd}; masquerading {shown} via table {table}"
    );
    Ok(true)
}

fn on(b: bool) -> &'static str {
    ["off", "on"][usize::from(b)]
}
