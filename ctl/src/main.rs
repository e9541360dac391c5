//! sapperctl: the operator's view of a running node, over netd's management
//! socket (and, for `privd status`, privd's). Human output by default,
//! `--json` for scripts.

mod audit;
mod client;
mod init;
mod render;

use clap::{CommandFactory, Parser, Subcommand};
use client::{Client, ClientError};
use sapper_shared::proto::management::{
    request::Body as Req, response::Body as Resp, ConnectRequest, DisconnectRequest, HintRequest,
    ListenRequest, PingRequest, RouteChangeRequest,
};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

/// Inspect and steer a running Sapper node.
#[derive(Parser)]
#[command(name = "sapperctl", version)]
struct Args {
    /// netd's management socket.
    #[arg(long, global = true, default_value = sapper_shared::config::DEFAULT_MGMT_SOCKET)]
    socket: PathBuf,
    /// Print JSON instead of tables (one object per line for `events`).
    #[arg(long, global = true)]
    json: bool,
    /// privd's socket (for `privd status`).
    #[arg(long, global = true, default_value = sapper_shared::config::DEFAULT_PRIVD_SOCKET)]
    privd_socket: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Node name, role, uptime, listeners, certificate and TUN.
    Status,
    /// Connected peers with latency and traffic.
    Peers,
    /// Packet, byte, drop and handshake-failure counters.
    Stats,
    /// Routes and the peer each goes to.
    Routes,
    /// Ping a peer over the control channel and print the RTT.
    Ping {
        /// Unique prefix of the peer's name.
        peer: String,
        /// Number of pings.
        #[arg(short = 'c', long, default_value_t = 1)]
        count: u32,
    },
    /// Dial a new peer (and keep redialling it).
    Connect {
        /// host:port.
        address: String,
        /// SHA-256 fingerprint of the peer's certificate.
        #[arg(long)]
        fingerprint: String,
        /// quic or ws.
        #[arg(long, default_value = "quic")]
        transport: String,
        /// TLS server name (defaults to the host).
        #[arg(long)]
        server_name: Option<String>,
        /// WebSocket path.
        #[arg(long)]
        ws_path: Option<String>,
    },
    /// Open a new listener.
    Listen {
        /// address:port to bind.
        address: String,
        /// quic or ws.
        #[arg(long, default_value = "quic")]
        transport: String,
        /// WebSocket path.
        #[arg(long)]
        ws_path: Option<String>,
    },
    /// Close the link to a peer (a configured connector redials it unless
    /// --stay).
    Disconnect {
        /// Unique prefix of the peer's name.
        peer: String,
        /// Also stop redialling it, until netd restarts or a reload
        /// (SIGHUP) that still lists its connect entry.
        #[arg(long)]
        stay: bool,
    },
    /// Add or remove a route on the TUN (privd checks its allow-list).
    Route {
        #[command(subcommand)]
        action: RouteAction,
    },
    /// Set or clear this node's role hint; neighbours re-negotiate.
    Hint {
        #[command(subcommand)]
        action: HintAction,
    },
    /// Stream events (peer connected/disconnected, routes, errors) until Ctrl-C.
    Events,
    /// Stop netd.
    Shutdown,
    /// Ask privd.
    Privd {
        #[command(subcommand)]
        action: PrivdAction,
    },
    /// Print shell completions.
    Completions {
        /// bash, zsh, fish, elvish or powershell.
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff), or write sapperctl.1 and one
    /// sapperctl-COMMAND.1 per command into a directory.
    Man {
        /// Write the pages here instead of printing sapperctl.1.
        #[arg(long)]
        out_dir: Option<PathBuf>,
    },
    /// Print a fresh random PSK (32 bytes as hex), or write it to a new
    /// file with mode 0600.
    Genpsk {
        /// Write here instead of stdout (refused if the file exists).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// What the running netd and privd hold, from the kernel: uid/gid,
    /// capabilities, NoNewPrivs, seccomp, Landlock, sockets, privd's
    /// counters, the units' exposure score (systemd).
    Audit,
    /// Write a commented config, a fresh PSK (0600) and the certificate for
    /// an entry or an exit; print the fingerprint and what the other side needs.
    Init(Box<init::InitArgs>),
}

#[derive(Subcommand)]
enum RouteAction {
    /// Add a route.
    Add { prefix: String },
    /// Remove a route.
    Del { prefix: String },
}

#[derive(Subcommand)]
enum HintAction {
    /// Take ROLE when negotiation is ambiguous.
    Prefer { role: RoleArg },
    /// Never take ROLE.
    Exclude { role: RoleArg },
    /// Take ROLE or stay indeterminate.
    Fixed { role: RoleArg },
    /// Remove the hint.
    Clear,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum RoleArg {
    Entry,
    Relay,
    Exit,
}

fn hint_request(action: HintAction) -> HintRequest {
    use sapper_shared::roles::{Hint, HintLevelName, RoleName};
    let role = |r: RoleArg| match r {
        RoleArg::Entry => RoleName::Entry,
        RoleArg::Relay => RoleName::Relay,
        RoleArg::Exit => RoleName::Exit,
    };
    // Encoded as netd encodes node.role / [node.hint] (roles::Hint::wire).
    let make = |level, r| {
        Some(
            Hint {
                level,
                role: role(r),
            }
            .wire(),
        )
    };
    HintRequest {
        hint: match action {
            HintAction::Prefer { role } => make(HintLevelName::Prefer, role),
            HintAction::Exclude { role } => make(HintLevelName::Exclude, role),
            HintAction::Fixed { role } => make(HintLevelName::Fixed, role),
            HintAction::Clear => None,
        },
    }
}

#[derive(Subcommand)]
enum PrivdAction {
    /// What privd holds: TUN, routes, NAT, request counters.
    Status,
}

/// Prints a line to stdout. A reader that went away (`sapperctl … | head`)
/// ends sapperctl quietly instead of with a panic, as SIGPIPE would for a C
/// tool.
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        if let Err(e) = writeln!(std::io::stdout().lock(), $($arg)*) {
            if e.kind() == std::io::ErrorKind::BrokenPipe {
                std::process::exit(0);
            }
            eprintln!("sapperctl: writing output: {e}");
            std::process::exit(EXIT_FAILED.into());
        }
    }};
}

/// Exit codes: scripts tell "the request failed" from "nobody answered".
const EXIT_FAILED: u8 = 1;
const EXIT_UNREACHABLE: u8 = 3;

fn fail(e: &ClientError) -> ExitCode {
    eprintln!("sapperctl: {e}");
    match e {
        ClientError::Unreachable { .. } => ExitCode::from(EXIT_UNREACHABLE),
        _ => ExitCode::from(EXIT_FAILED),
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    let req = match args.command {
        Command::Completions { shell } => {
            // Rendered into memory first: the generator panics on a closed pipe.
            let mut buf = Vec::new();
            clap_complete::generate(shell, &mut Args::command(), "sapperctl", &mut buf);
            out!("{}", String::from_utf8_lossy(&buf).trim_end());
            return ExitCode::SUCCESS;
        }
        Command::Man { out_dir: Some(dir) } => {
            return match write_man_pages(&dir) {
                Ok(n) => {
                    if args.json {
                        out!(
                            "{}",
                            serde_json::json!({"dir": dir.display().to_string(), "pages": n})
                        );
                    } else {
                        out!("wrote {n} man pages to {}", dir.display());
                    }
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("sapperctl man: {e}");
                    ExitCode::from(EXIT_FAILED)
                }
            };
        }
        Command::Man { out_dir: None } => {
            let mut buf = Vec::new();
            if let Err(e) = clap_mangen::Man::new(Args::command()).render(&mut buf) {
                eprintln!("sapperctl: rendering the man page: {e}");
                return ExitCode::from(EXIT_FAILED);
            }
            out!("{}", String::from_utf8_lossy(&buf).trim_end());
            return ExitCode::SUCCESS;
        }
        Command::Genpsk { out } => return genpsk(out.as_deref(), args.json),
        Command::Init(a) => {
            return match init::run(&a) {
                Ok(report) => {
                    if args.json {
                        out!("{}", report.json());
                    } else {
                        out!("{}", report.text());
                    }
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("sapperctl init: {e:#}");
                    ExitCode::from(EXIT_FAILED)
                }
            };
        }
        Command::Audit => return audit(&args.socket, &args.privd_socket, args.json),
        Command::Privd {
            action: PrivdAction::Status,
        } => {
            return privd_status(&args.privd_socket, args.json);
        }
        Command::Status => Req::Status(Default::default()),
        Command::Peers => Req::Peers(Default::default()),
        Command::Stats => Req::Stats(Default::default()),
        Command::Routes => Req::Routes(Default::default()),
        Command::Ping { peer, count } => return ping(&args.socket, peer, count, args.json),
        Command::Connect {
            address,
            fingerprint,
            transport,
            server_name,
            ws_path,
        } => Req::Connect(ConnectRequest {
            address,
            transport,
            fingerprint,
            server_name: server_name.unwrap_or_default(),
            ws_path: ws_path.unwrap_or_default(),
        }),
        Command::Listen {
            address,
            transport,
            ws_path,
        } => Req::Listen(ListenRequest {
            address,
            transport,
            ws_path: ws_path.unwrap_or_default(),
        }),
        Command::Disconnect { peer, stay } => Req::Disconnect(DisconnectRequest { peer, stay }),
        Command::Route { action } => Req::RouteChange(match action {
            RouteAction::Add { prefix } => RouteChangeRequest { prefix, add: true },
            RouteAction::Del { prefix } => RouteChangeRequest { prefix, add: false },
        }),
        Command::Hint { action } => Req::Hint(hint_request(action)),
        Command::Events => return events(&args.socket, args.json),
        Command::Shutdown => Req::Shutdown(Default::default()),
    };
    let mut client = match Client::connect(&args.socket) {
        Ok(c) => c,
        Err(e) => return fail(&e),
    };
    match client
        .call(req)
        .and_then(|first| more_pages(&mut client, first))
    {
        Ok(Resp::Error(e)) => {
            eprintln!("sapperctl: {} ({})", e.message, render::error_code(e.code));
            ExitCode::from(EXIT_FAILED)
        }
        Ok(body) => {
            out!("{}", render::render(&body, args.json));
            ExitCode::SUCCESS
        }
        Err(e) => fail(&e),
    }
}

/// sapperctl.1 and one page per command, as the package installs them.
fn write_man_pages(dir: &std::path::Path) -> std::io::Result<usize> {
    std::fs::create_dir_all(dir)?;
    let cmd = Args::command();
    let mut n = 0;
    let mut write = |name: &str, c: clap::Command| -> std::io::Result<()> {
        let mut buf = Vec::new();
        clap_mangen::Man::new(c).title(name).render(&mut buf)?;
        std::fs::write(dir.join(format!("{name}.1")), buf)?;
        n += 1;
        Ok(())
    };
    write("sapperctl", cmd.clone())?;
    for sub in cmd.get_subcommands() {
        let name = format!("sapperctl-{}", sub.get_name());
        write(&name, sub.clone())?;
    }
    Ok(n)
}

fn genpsk(path: Option<&std::path::Path>, json: bool) -> ExitCode {
    let psk = match init::fresh_psk() {
        Ok(p) => p,
        Err(e) => {
            eprintln!("sapperctl genpsk: {e:#}");
            return ExitCode::from(EXIT_FAILED);
        }
    };
    match path {
        None => {
            // The operator asked for it on the terminal.
            out!("{}", psk.trim_end());
        }
        Some(p) => {
            if let Err(e) = init::write_new(p, psk.as_bytes(), 0o600, false) {
                eprintln!("sapperctl genpsk: {e:#}");
                return ExitCode::from(EXIT_FAILED);
            }
            if json {
                out!(
                    "{}",
                    serde_json::json!({"psk_file": p.display().to_string(), "mode": "0600"})
                );
            } else {
                out!("wrote {} (mode 0600)", p.display());
            }
        }
    }
    ExitCode::SUCCESS
}

/// `peers` and `routes` come one frame-sized page at a time: asks for the
/// rest from where the last page ended, until `total` (or an empty page,
/// or a bound on the number of pages) is reached.
fn more_pages(client: &mut Client, first: Resp) -> Result<Resp, client::ClientError> {
    const MAX_PAGES: usize = 100_000;
    match first {
        Resp::Routes(mut r) => {
            for _ in 0..MAX_PAGES {
                if r.routes.len() >= r.total as usize {
                    break;
                }
                let next = client.call(Req::Routes(
                    sapper_shared::proto::management::RoutesRequest {
                        offset: r.routes.len() as u32,
                    },
                ))?;
                match next {
                    Resp::Routes(p) if !p.routes.is_empty() => r.routes.extend(p.routes),
                    _ => break,
                }
            }
            Ok(Resp::Routes(r))
        }
        Resp::Peers(mut r) => {
            for _ in 0..MAX_PAGES {
                if r.peers.len() >= r.total as usize {
                    break;
                }
                let next =
                    client.call(Req::Peers(sapper_shared::proto::management::PeersRequest {
                        offset: r.peers.len() as u32,
                    }))?;
                match next {
                    Resp::Peers(p) if !p.peers.is_empty() => r.peers.extend(p.peers),
                    _ => break,
                }
            }
            Ok(Resp::Peers(r))
        }
        other => Ok(other),
    }
}

fn ping(socket: &std::path::Path, peer: String, count: u32, json: bool) -> ExitCode {
    let mut client = match Client::connect(socket) {
        Ok(c) => c,
        Err(e) => return fail(&e),
    };
    let mut failed = false;
    for i in 0..count.max(1) {
        if i > 0 {
            std::thread::sleep(Duration::from_secs(1));
        }
        match client.call(Req::Ping(PingRequest { peer: peer.clone() })) {
            Ok(Resp::Ping(p)) => {
                if json {
                    out!(
                        "{}",
                        serde_json::json!({"peer": p.peer, "rtt_ms": p.rtt_ms})
                    );
                } else {
                    out!("pong from {}: time={:.2} ms", p.peer, p.rtt_ms);
                }
            }
            Ok(Resp::Error(e)) => {
                eprintln!("sapperctl: {} ({})", e.message, render::error_code(e.code));
                failed = true;
            }
            Ok(other) => {
                eprintln!("sapperctl: unexpected reply {other:?}");
                failed = true;
            }
            Err(e) => return fail(&e),
        }
    }
    if failed {
        ExitCode::from(EXIT_FAILED)
    } else {
        ExitCode::SUCCESS
    }
}

fn events(socket: &std::path::Path, json: bool) -> ExitCode {
    let mut client = match Client::connect(socket) {
        Ok(c) => c,
        Err(e) => return fail(&e),
    };
    match client.call(Req::Subscribe(Default::default())) {
        Ok(Resp::Ok(_)) => {}
        Ok(Resp::Error(e)) => {
            eprintln!("sapperctl: {} ({})", e.message, render::error_code(e.code));
            return ExitCode::from(EXIT_FAILED);
        }
        Ok(other) => {
            eprintln!("sapperctl: unexpected reply {other:?}");
            return ExitCode::from(EXIT_FAILED);
        }
        Err(e) => return fail(&e),
    }
    if let Err(e) = client.stream_events(|ev| {
        out!("{}", render::event_line(&ev, json));
    }) {
        return fail(&e);
    }
    ExitCode::SUCCESS
}

/// `sapperctl audit`: best effort for every part; fails only when
/// neither daemon could be examined.
fn audit(mgmt: &std::path::Path, privd: &std::path::Path, json: bool) -> ExitCode {
    let netd_status = Client::connect(mgmt)
        .and_then(|mut c| c.call(Req::Status(Default::default())))
        .ok()
        .and_then(|r| match r {
            Resp::Status(s) => Some(render::status_json(&s)),
            _ => None,
        });
    let privd_status = sapper_privd_client::PrivdClient::connect(privd)
        .and_then(|mut c| c.status())
        .map(|s| {
            serde_json::json!({
                "granted": s.granted,
                "refused": s.refused,
                "last_refusals": s.last_refusals.iter().map(|l| render::refusal_json(l)).collect::<Vec<_>>(),
            })
        })
        .map_err(|e| e.to_string());
    let page = audit::collect(mgmt, privd, netd_status.as_ref(), privd_status);
    if json {
        out!("{page}");
    } else {
        out!("{}", audit::text(&page));
    }
    if page["netd"].get("error").is_some() && page["privd"].get("error").is_some() {
        eprintln!("sapperctl audit: no daemon could be examined");
        return ExitCode::from(EXIT_UNREACHABLE);
    }
    ExitCode::SUCCESS
}

fn privd_status(path: &std::path::Path, json: bool) -> ExitCode {
    let status = sapper_privd_client::PrivdClient::connect(path).and_then(|mut c| c.status());
    match status {
        Ok(s) => {
            out!("{}", render::privd_status(&s, json));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("sapperctl: {e}");
            if matches!(e, sapper_privd_client::PrivdError::Unreachable { .. }) {
                ExitCode::from(EXIT_UNREACHABLE)
            } else {
                ExitCode::from(EXIT_FAILED)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sapper_shared::proto::data::{HintLevel, NodeRole, RoleHint};

    /// `sapperctl hint fixed exit` asks for exactly what `node.role = "exit"`
    /// configures: one encoding of hints, in sapper_shared::roles.
    #[test]
    fn hints_encode_as_the_config_does() {
        let cfg = sapper_shared::config::Config::parse("[node]\nrole = \"exit\"\n", "t.toml")
            .expect("config");
        let fixed = hint_request(HintAction::Fixed {
            role: RoleArg::Exit,
        });
        assert_eq!(fixed.hint, cfg.node.hint.map(|h| h.wire()));
        assert_eq!(
            hint_request(HintAction::Prefer {
                role: RoleArg::Relay
            })
            .hint,
            Some(RoleHint {
                level: HintLevel::Prefer as i32,
                target: NodeRole::RoleRelay as i32
            })
        );
        assert_eq!(hint_request(HintAction::Clear).hint, None);
    }
}
