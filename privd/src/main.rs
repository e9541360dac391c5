use clap::Parser;

/// Sapper's privileged helper: opens the TUN, sets addresses and routes, and
/// hands the TUN to sapper-netd. Accepts only typed requests from netd's uid.
#[derive(Parser)]
#[command(version)]
struct Args {
    /// Config file.
    #[arg(long, default_value = sapper_shared::config::DEFAULT_CONFIG)]
    config: std::path::PathBuf,
}

fn main() -> anyhow::Result<()> {
    let _args = Args::parse();
    anyhow::bail!("not implemented yet")
}
