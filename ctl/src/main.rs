use clap::Parser;

/// sapperctl: inspect and steer a running Sapper node.
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
