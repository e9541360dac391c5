//! sapper-netd: the unprivileged network daemon. It binds what needs binding,
//! reads its secrets, drops to its own user with no capability, and only then
//! asks privd for the TUN and starts talking to the network.

mod activation;
mod datapath;
mod dial;
mod driver;
mod exit;
mod fs_sandbox;
mod gso;
mod inputs;
mod interfaces;
mod link;
mod listen;
mod logging;
mod metrics;
mod metrics_http;
mod mgmt;
mod mgmt_socket;
mod node;
mod peer_log;
mod preauth;
mod privs;
mod proxy;
mod quic;
mod quic_tls;
mod reload;
mod reset_key;
mod restarted;
mod seccomp;
mod target;
mod tls;
mod tun;
mod underlay;
mod ws;

use anyhow::{Context, Result};
use clap::Parser;
use node::Node;
use sapper_shared::config::{format_fingerprint, Config, NetdConfig, PskSource, Transport};
use sapper_shared::psk::Psk;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Sapper network daemon: carries IP packets between nodes over QUIC or
/// WebSocket-over-TLS, holding no privilege.
#[derive(Parser)]
#[command(version)]
struct Args {
    /// Config file.
    #[arg(long, default_value = sapper_shared::config::DEFAULT_CONFIG)]
    config: PathBuf,
    /// Print this node's certificate fingerprint (generating the certificate
    /// if needed) and exit.
    #[arg(long)]
    print_fingerprint: bool,
    /// Format of log lines on stderr. Without it, netd logs to journald when
    /// its stderr is the journal (JOURNAL_STREAM), plain text otherwise.
    #[arg(long, value_enum, env = "SAPPER_LOG_FORMAT")]
    log_format: Option<logging::LogFormat>,
    /// Debugging escape hatch: do not install netd's seccomp filter (see
    /// README). The systemd unit's SystemCallFilter= still applies.
    #[arg(long, env = "SAPPER_NO_SECCOMP", value_parser = clap::builder::BoolishValueParser::new(), default_value_t = false)]
    no_seccomp: bool,
    /// Debugging escape hatch: do not restrict filesystem access with
    /// Landlock (see README).
    #[arg(long, env = "SAPPER_NO_LANDLOCK", value_parser = clap::builder::BoolishValueParser::new(), default_value_t = false)]
    no_landlock: bool,
    /// Apply Landlock (reading only --config) and the seccomp filter, try
    /// what they forbid, print the errno of each attempt, and exit (used by
    /// the tests).
    #[arg(long, hide = true)]
    sandbox_selftest: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    if let Some(note) = logging::init(args.log_format) {
        tracing::warn!("{note}");
    }
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Sockets bound before the privilege drop.
struct Bound {
    quic: Vec<(std::net::UdpSocket, String)>,
    ws: Vec<(std::net::TcpListener, String, String)>,
    mgmt: std::os::unix::net::UnixListener,
    /// `[netd.metrics]`'s listener.
    metrics: Option<metrics_http::Listener>,
}

fn run(args: Args) -> Result<()> {
    if args.sandbox_selftest {
        return sandbox_selftest(&args.config);
    }
    let file = args.config.display().to_string();
    // Read once, hash and parse the same bytes: the logged hash is exactly
    // the configuration this run uses.
    let text =
        std::fs::read_to_string(&args.config).with_context(|| format!("{file}: cannot read"))?;
    let mut cfg = Config::parse(&text, &file)?;
    tracing::info!(
        sapper_event = "config_loaded",
        config = %file,
        config_sha256 = %logging::config_hash(text.as_bytes()),
        "config loaded"
    );
    // "%d/name" paths: files systemd's LoadCredential= put in place.
    let creds = std::env::var_os("CREDENTIALS_DIRECTORY").map(PathBuf::from);
    cfg.expand_credentials(&file, creds.as_deref())?;
    proxy::set_credentials_dir(creds.clone());
    proxy::read_env()?;
    let node_section = cfg.node.clone();
    let mut netd = cfg
        .netd
        .with_context(|| format!("{file}: no [netd] section"))?;
    netd.connect = proxy::with_env(std::mem::take(&mut netd.connect));
    let name = match &cfg.node.name {
        Some(n) => n.to_string(),
        None => nix::unistd::gethostname()
            .context("reading the host name for node.name")?
            .to_string_lossy()
            .into_owned(),
    };
    let (identity, generated) =
        tls::load_or_generate(netd.identity.as_ref(), &netd.state_dir, &name)?;
    let fingerprint = format_fingerprint(&identity.fingerprint);
    if args.print_fingerprint {
        println!("{fingerprint}");
        return Ok(());
    }
    // Read while netd may still write state_dir (before the sandbox).
    reset_key::init(&netd.state_dir)?;
    if generated {
        tracing::info!(%fingerprint, dir = %netd.state_dir.display(), "generated a self-signed certificate");
    }
    tracing::info!(%fingerprint, "certificate fingerprint (pin this on connecting peers)");

    // Like the PSK: read now, as root, before the sandbox.
    proxy::load_all(&file, &netd.connect)?;
    let psk_file = cfg.node.psk_file().map(Path::to_path_buf);
    // No core dumps and no ptrace/proc access by the same uid: memory holds
    // the PSK and the TLS key. Set again after the uid change (which resets
    // the dumpable flag).
    privs::no_core_dumps()?;
    let psk = match &cfg.node.psk {
        // systemd's credentials directory is private to the service.
        Some(PskSource::File(f)) if creds.as_deref().is_some_and(|c| f.starts_with(c)) => {
            Some(psk_from_file(f, false).with_context(|| format!("{file}: node.psk_file"))?)
        }
        Some(PskSource::File(f)) => {
            Some(psk_from_file(f, true).with_context(|| format!("{file}: node.psk_file"))?)
        }
        Some(PskSource::Env(v)) => {
            let psk = psk_from_env(v).with_context(|| format!("{file}: node.psk_env"))?;
            // Out of /proc/PID/environ for the rest of the process's life.
            privs::scrub_env(v);
            Some(psk)
        }
        None => {
            tracing::warn!("no PSK configured: peers are checked by certificate pin or CA only");
            None
        }
    };

    if let Some(p) = &psk {
        if p.len() < sapper_shared::psk::RECOMMENDED_PSK_LEN {
            tracing::warn!(
                psk_bytes = p.len(),
                "the PSK is shorter than {} bytes: use {} random bytes (e.g. `head -c 32 /dev/urandom | base64`)",
                sapper_shared::psk::RECOMMENDED_PSK_LEN,
                sapper_shared::psk::RECOMMENDED_PSK_LEN
            );
        }
    }
    let posture = sapper_shared::posture::resolve(&cfg.node, &netd)
        .with_context(|| format!("{file}: [node]"))?;
    if !posture.secure {
        tracing::warn!("INSECURE: no authentication configured (node.insecure_open); any peer that can reach this node is accepted");
    }
    let target = privs::resolve(netd.user.as_deref(), netd.group.as_deref())?;
    let operator_gid = match &netd.operator_group {
        Some(g) => Some(
            nix::unistd::Group::from_name(g)?
                .with_context(|| format!("{file}: netd.operator_group {g:?} does not exist"))?
                .gid
                .as_raw(),
        ),
        None => None,
    };
    // The uid privd may run as besides root (checked by SO_PEERCRED).
    let privd_uid = match &netd.privd_user {
        Some(u) => Some(
            nix::unistd::User::from_name(u)?
                .with_context(|| format!("{file}: netd.privd_user {u:?} does not exist"))?
                .uid
                .as_raw(),
        ),
        None => None,
    };
    let bound = bind_all(&netd, target)?;
    privs::drop_all(target)?;
    privs::no_core_dumps()?;
    tracing::info!(uid = %nix::unistd::getuid(), "dropped privileges; no capabilities held");

    let (tun, tun_name) = match &netd.privd_socket {
        Some(path) => {
            let (t, name) = open_tun(path, privd_uid)?;
            (Some(t), Some(name))
        }
        None => (None, None),
    };
    // Read now, and again every few seconds through the same descriptors
    // (underlay::watch), past the sandbox below.
    let route_tables = Arc::new(underlay::RouteTables::open(tun_name.as_deref()));
    let protected = route_tables.read().unwrap_or_default();
    // `announce_routes = "interfaces"` is resolved here and at reload
    // (interfaces::announced); unreadable tables announce nothing.
    let announce_routes = interfaces::announced(&netd, &route_tables).unwrap_or_default();

    // Setup is done: sockets bound, secrets read, privileges dropped, the
    // TUN in hand. Both are applied before the runtime starts so that every
    // thread it creates inherits them (Landlock applies to the calling
    // thread only; seccomp's TSYNC would also cover earlier threads).
    // Landlock first: its own syscalls are not on the seccomp allow-list.
    if args.no_landlock {
        fs_sandbox::record("disabled");
        tracing::warn!(
            sapper_event = "landlock_disabled",
            "Landlock NOT applied (--no-landlock / SAPPER_NO_LANDLOCK)"
        );
    } else {
        let mut readable = vec![args.config.clone(), netd.state_dir.clone()];
        if let Some(id) = &netd.identity {
            readable.extend([id.cert.clone(), id.key.clone()]);
        }
        readable.extend(psk_file.iter().cloned());
        // The management socket is removed at shutdown unless systemd owns it.
        let remove_in = (!activation::mgmt_activated())
            .then(|| netd.management_socket.parent())
            .flatten();
        let status = fs_sandbox::restrict(&readable, remove_in)?;
        // One event name per outcome, so that `journalctl
        // SAPPER_EVENT=landlock_applied` never matches a sandbox that is not
        // in force; `enforcement` says the same in one word.
        let enforcement = fs_sandbox::enforcement(&status);
        fs_sandbox::record(enforcement);
        match status {
            landlock::RulesetStatus::FullyEnforced => tracing::info!(
                sapper_event = "landlock_applied",
                enforcement,
                status = fs_sandbox::describe(&status),
                "Landlock applied: only the config, certificate, key and PSK files are readable"
            ),
            landlock::RulesetStatus::PartiallyEnforced => tracing::warn!(
                sapper_event = "landlock_partial",
                enforcement,
                status = fs_sandbox::describe(&status),
                "Landlock only partly enforced here (the kernel's Landlock ABI is older than the one netd asks for)"
            ),
            landlock::RulesetStatus::NotEnforced => tracing::warn!(
                sapper_event = "landlock_not_enforced",
                enforcement,
                status = fs_sandbox::describe(&status),
                "Landlock NOT enforced here (the kernel, or a container's own syscall filter, lacks it)"
            ),
        }
    }
    if args.no_seccomp {
        tracing::warn!(
            sapper_event = "seccomp_disabled",
            "seccomp filter NOT installed (--no-seccomp / SAPPER_NO_SECCOMP)"
        );
    } else {
        let log_only = std::env::var_os("SAPPER_SECCOMP_LOG").is_some_and(|v| v == "1");
        seccomp::install(log_only)?;
        tracing::info!(
            sapper_event = "seccomp_installed",
            log_only,
            "seccomp allow-list installed"
        );
    }

    let netd_workers = netd.worker_threads.as_usize();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(netd_workers)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    // Connect targets were parsed with the config: a bad one was an error
    // naming the file and key, not a retry loop later.
    let running = (node_section, netd.clone());
    let config_file = args.config.clone();
    runtime.block_on(async move {
        let tun = match tun {
            Some(t) => Some(Arc::new(t()?)),
            None => None,
        };
        let core_cfg = sapper_control::CoreConfig {
            name: name.clone(),
            posture,
            capabilities: sapper_shared::proto::data::Capabilities {
                tun_capable: tun.is_some(),
                listening: !netd.listen.is_empty(),
                connecting: !netd.connect.is_empty(),
                // The WebSocket reader takes tag-2 super-packets: cut for a
                // TUN without offloads, the userspace exit or a QUIC hop.
                super_packets: true,
            },
            announce_routes,
            installs_routes: tun.is_some() && netd.privd_socket.is_some(),
            ping_interval: netd.ping_interval.millis(),
            ping_miss_limit: netd.ping_miss_limit.as_u32(),
            addresses: tun
                .iter()
                .flat_map(|t| t.addresses.iter())
                .filter_map(|a| a.parse::<ipnet::IpNet>().ok().map(|n| n.addr()))
                .collect(),
            protected: {
                let mut p = protected.clone();
                // Connect targets given as literal addresses (names are
                // resolved on every dial and covered by the gateway rule).
                p.extend(netd.connect.iter().filter_map(|c| {
                    c.address()
                        .parse::<std::net::SocketAddr>()
                        .ok()
                        .map(|a| ipnet::IpNet::from(a.ip()))
                }));
                p
            },
            limits: netd.limits.clone(),
        };
        let core = sapper_control::Core::new(core_cfg, Instant::now());
        let summary = core.posture_summary();
        let data = Arc::new(datapath::DataPath::new(tun));
        let shutdown = tokio_util::sync::CancellationToken::new();
        let exit = exit::install(&netd, &data, shutdown.clone())?;
        let (driver_tx, driver_rx) = tokio::sync::mpsc::channel(driver::INPUT_QUEUE);
        let node = Arc::new(Node::new(
            netd,
            Arc::new(identity),
            operator_gid,
            name,
            psk,
            fingerprint,
            data,
            exit,
            shutdown,
            driver_tx,
            route_tables,
        ));
        tokio::spawn(driver::Driver::new(core, node.clone()).run(driver_rx));
        tokio::spawn(underlay::watch(
            node.clone(),
            node.route_tables.clone(),
            protected.clone(),
            node.shutdown.clone(),
        ));
        serve(node, bound, running, config_file, summary).await
    })
}

/// Reads the PSK from a file, straight into zeroizing memory.
///
/// With `private`, a file group or others may read is refused with how to
/// fix it; files in systemd's credentials directory are not checked (the
/// directory is private to the service and the mode bits may show an ACL
/// mask).
fn psk_from_file(path: &Path, private: bool) -> Result<Psk> {
    use std::io::Read;
    use std::os::unix::fs::MetadataExt;
    let shown = path.display();
    let file =
        std::fs::File::open(path).with_context(|| format!("cannot read PSK file {shown}"))?;
    // The mode of the file opened (fstat), not of whatever is at the path now.
    let mode = file
        .metadata()
        .with_context(|| format!("fstat {shown}"))?
        .mode();
    if private && mode & 0o077 != 0 {
        anyhow::bail!(
            "PSK file {shown} is readable by group or others (mode {:04o}); fix it with: chmod 600 {shown}",
            mode & 0o7777
        );
    }
    // Bounded: a PSK is a line of text.
    let mut raw = zeroize::Zeroizing::new(Vec::new());
    file.take(64 * 1024)
        .read_to_end(&mut raw)
        .with_context(|| format!("cannot read PSK file {shown}"))?;
    Ok(Psk::new(raw)?)
}

/// Reads the PSK from an environment variable.
fn psk_from_env(var: &str) -> Result<Psk> {
    let value =
        std::env::var_os(var).with_context(|| format!("environment variable {var} is not set"))?;
    Ok(Psk::new(zeroize::Zeroizing::new(
        value.into_encoded_bytes(),
    ))?)
}

/// Hidden `--sandbox-selftest`: applies Landlock allowing only `config` to
/// be read and the seccomp filter to this idle process, then tries what they
/// forbid and prints one `what: result` line each.
fn sandbox_selftest(config: &Path) -> Result<()> {
    nix::sys::prctl::set_no_new_privs().context("setting no_new_privs")?;
    let status = fs_sandbox::restrict(&[config.to_path_buf()], None)?;
    println!("landlock: {}", fs_sandbox::describe(&status));
    seccomp::install(false)?;
    seccomp::probe();
    for (name, path) in [
        ("read_config", config),
        ("read_shadow", Path::new("/etc/shadow")),
    ] {
        match std::fs::read(path) {
            Ok(_) => println!("{name}: ok"),
            Err(e) => {
                let errno = nix::errno::Errno::from_raw(e.raw_os_error().unwrap_or(0));
                println!("{name}: {errno}");
            }
        }
    }
    let created = std::fs::File::create(std::env::temp_dir().join("sapper-sandbox-selftest"));
    match created {
        Ok(_) => println!("create_file: ok"),
        Err(e) => {
            let errno = nix::errno::Errno::from_raw(e.raw_os_error().unwrap_or(0));
            println!("create_file: {errno}");
        }
    }
    Ok(())
}

/// Takes the sockets systemd passed (see activation.rs) and binds the rest.
fn bind_all(netd: &NetdConfig, target: Option<privs::Target>) -> Result<Bound> {
    let mut act = activation::Activated::from_env()?;
    let mut quic = Vec::new();
    let mut ws = Vec::new();
    for l in &netd.listen {
        match l.transport {
            Transport::Quic => {
                let s = match act.take_quic(l.address) {
                    Some(s) => s,
                    None => std::net::UdpSocket::bind(l.address)
                        .with_context(|| format!("binding UDP {}", l.address))?,
                };
                s.set_nonblocking(true)?;
                quic.push((s, l.address.to_string()));
            }
            Transport::Ws => {
                let s = match act.take_ws(l.address) {
                    Some(s) => s,
                    None => std::net::TcpListener::bind(l.address)
                        .with_context(|| format!("binding TCP {}", l.address))?,
                };
                s.set_nonblocking(true)?;
                ws.push((s, l.address.to_string(), l.ws_path.as_str().to_string()));
            }
        }
    }
    let metrics = match &netd.metrics {
        Some(m) => {
            // The management socket's group reads metrics too.
            let group = match &netd.management_group {
                Some(g) => Some(
                    nix::unistd::Group::from_name(g)?
                        .with_context(|| format!("netd.management_group {g:?} does not exist"))?
                        .gid,
                ),
                None => target.map(|t| t.gid),
            };
            let own = target.map_or(nix::unistd::geteuid().as_raw(), |t| t.uid.as_raw());
            Some(metrics_http::bind(m, target.map(|t| t.uid), group, own)?)
        }
        None => None,
    };
    let mgmt_passed = act.take_mgmt();
    let (more_quic, more_ws) = act.rest();
    for (s, addr) in more_quic {
        s.set_nonblocking(true)?;
        quic.push((s, addr.to_string()));
    }
    for (s, addr) in more_ws {
        s.set_nonblocking(true)?;
        let path = sapper_shared::config::WsPath::default();
        ws.push((s, addr.to_string(), path.as_str().to_string()));
    }
    if let Some(mgmt) = mgmt_passed {
        // Mode, owner and group were set by the socket unit.
        mgmt.set_nonblocking(true)?;
        return Ok(Bound {
            quic,
            ws,
            mgmt,
            metrics,
        });
    }
    let mgmt = mgmt_socket::bind(
        &netd.management_socket,
        netd.management_group.as_deref(),
        target,
    )?;
    Ok(Bound {
        quic,
        ws,
        mgmt,
        metrics,
    })
}

/// Asks privd for the TUN, waiting a while for privd to come up (both are
/// often started together). Returns a constructor to run inside the runtime,
/// where the fd can be registered with the reactor.
fn open_tun(
    path: &Path,
    privd_uid: Option<u32>,
) -> Result<(impl FnOnce() -> Result<tun::Tun>, String)> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut client = loop {
        match sapper_privd_client::PrivdClient::connect(path) {
            Ok(c) => break c,
            Err(e) if Instant::now() < deadline => {
                tracing::debug!(error = %e, "privd not reachable yet");
                std::thread::sleep(Duration::from_millis(200));
            }
            Err(e) => return Err(e).context("connecting to privd"),
        }
    };
    // Whatever answers at the path gets to hand netd its TUN: it must be
    // root's (systemd's socket, or privd bound it as root) or privd's user.
    let peer = client
        .peer_uid()
        .context("SO_PEERCRED of the privd socket")?;
    if peer != 0 && Some(peer) != privd_uid {
        anyhow::bail!(
            "refusing the privd socket {}: it is served by uid {peer}, not root{}",
            path.display(),
            privd_uid
                .map(|u| format!(" or netd.privd_user (uid {u})"))
                .unwrap_or_default()
        );
    }
    let (fd, info) = client.open_tun().context("asking privd for the TUN")?;
    tracing::info!(tun = %info.name, mtu = info.mtu, vnet_hdr = info.vnet_hdr, offloads = ?info.offloads, "received the TUN from privd");
    let name = info.name.clone();
    let vnet = tun::VnetInfo {
        vnet_hdr: info.vnet_hdr,
        offloads: if info.vnet_hdr {
            info.offloads
        } else {
            Vec::new()
        },
    };
    Ok((
        move || {
            tun::Tun::new(fd, info.name, info.mtu, info.addresses, vnet)
                .context("registering the TUN")
        },
        name,
    ))
}

async fn serve(
    node: Arc<Node>,
    bound: Bound,
    running: (
        sapper_shared::config::NodeConfig,
        sapper_shared::config::NetdConfig,
    ),
    config_file: PathBuf,
    posture: String,
) -> Result<()> {
    use sapper_shared::config::Transport;
    let mut started = Vec::new();
    for (sock, addr) in bound.quic {
        let allowed = listen::allowed_at_start(&node, &addr);
        let stop = listen::quic(&node, sock, addr.clone(), allowed)?;
        started.push((addr, Transport::Quic, stop));
    }
    for (sock, addr, path) in bound.ws {
        let allowed = listen::allowed_at_start(&node, &addr);
        let stop = listen::ws(&node, sock, addr.clone(), path, allowed)?;
        started.push((addr, Transport::Ws, stop));
    }
    let metrics = bound.metrics.map(|l| {
        tracing::info!(on = %l.describe(), "metrics endpoint serving");
        let stop = node.shutdown.child_token();
        let max = node.cfg.metrics.as_ref().map_or(4, |m| m.max_connections);
        tokio::spawn(metrics_http::serve(node.clone(), l, max, stop.clone()));
        stop
    });
    let mut running = reload::Running::start(&node, &running.0, &running.1, started, metrics)?;
    let mgmt = tokio::net::UnixListener::from_std(bound.mgmt)?;
    tokio::spawn(mgmt::serve(node.clone(), mgmt));
    tokio::spawn(datapath::tun_reader(
        node.data.clone(),
        node.shutdown.clone(),
    ));
    tracing::info!(name = %node.name, %posture, "netd ready");
    activation::ready(&node);

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
    loop {
        tokio::select! {
            _ = term.recv() => { tracing::info!("SIGTERM: shutting down"); break }
            _ = tokio::signal::ctrl_c() => { tracing::info!("SIGINT: shutting down"); break }
            _ = node.shutdown.cancelled() => break,
            _ = hup.recv() => {
                activation::reloading();
                match running.reload(&node, &config_file).await {
                    Ok(()) => {}
                    // The old configuration keeps running.
                    Err(e) => tracing::error!(sapper_event = "config_refused", error = %format!("{e:#}"), "reload refused; the running configuration is unchanged"),
                }
                activation::reloaded();
            }
        }
    }
    activation::stopping();
    node.shutdown.cancel();
    // Let links send their goodbyes.
    tokio::time::sleep(Duration::from_millis(300)).await;
    if !activation::mgmt_activated() {
        let _ = std::fs::remove_file(&node.cfg.management_socket);
    }
    Ok(())
}
