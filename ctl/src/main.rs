//! sapperctl: the operator's view of a running node, over netd's management
//! socket. Human output by default, `--json` for scripts.

mod client;
mod render;

use clap::{Parser, Subcommand};
use client::{Client, ClientError};
use sapper_shared::proto::management::{request::Body as Req, response::Body as Resp};
use std::path::PathBuf;
use std::process::ExitCode;

/// Inspect and steer a running Sapper node.
#[derive(Parser)]
#[command(version)]
struct Args {
    /// netd's management socket.
    #[arg(long, global = true, default_value = sapper_shared::config::DEFAULT_MGMT_SOCKET)]
    socket: PathBuf,
    /// Print JSON instead of tables.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Node name, role, uptime, listeners, certificate and TUN.
    Status,
    /// Connected peers with latency and traffic.
    Peers,
}

/// Exit codes: scripts tell "the request failed" from "nobody answered".
const EXIT_FAILED: u8 = 1;
const EXIT_UNREACHABLE: u8 = 3;

fn main() -> ExitCode {
    let args = Args::parse();
    let req = match args.command {
        Command::Status => Req::Status(Default::default()),
        Command::Peers => Req::Peers(Default::default()),
    };
    let mut client = match Client::connect(&args.socket) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("sapperctl: {e}");
            return ExitCode::from(EXIT_UNREACHABLE);
        }
    };
    match client.call(req) {
        Ok(Resp::Error(e)) => {
            eprintln!("sapperctl: {} ({})", e.message, render::error_code(e.code));
            ExitCode::from(EXIT_FAILED)
        }
        Ok(body) => {
            println!("{}", render::render(&body, args.json));
            ExitCode::SUCCESS
        }
        Err(e @ ClientError::Unreachable { .. }) => {
            eprintln!("sapperctl: {e}");
            ExitCode::from(EXIT_UNREACHABLE)
        }
        Err(e) => {
            eprintln!("sapperctl: {e}");
            ExitCode::from(EXIT_FAILED)
        }
    }
}
