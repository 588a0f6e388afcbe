//! `cyxcloud-rebalancer [--config FILE] [--set key=value]...`: repairs degraded chunks through
//! the gateway's Maintenance API until SIGTERM or Ctrl-C.

use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use cyxcloud_daemon::Shutdown;
use cyxcloud_rebalancer::Config;

#[derive(Parser)]
#[command(
    name = "cyxcloud-rebalancer",
    version,
    about = "CyxCloud rebalancer: repairs chunks that lost shards"
)]
struct Cli {
    /// TOML configuration file.
    #[arg(long)]
    config: Option<PathBuf>,
    /// The gateway's gRPC URL [env: CYXCLOUD_GRPC_ADDRESS].
    #[arg(long)]
    gateway: Option<String>,
    /// Any setting as dotted.key=value (repeatable), e.g. repair_parallelism=8.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    cyxcloud_daemon::logging::init("info");
    let mut flags = cli.set.clone();
    if let Some(g) = &cli.gateway {
        flags.push(format!("gateway={g}"));
    }
    let cfg = Config::load(cli.config.as_deref(), &flags).context("invalid configuration")?;
    tracing::info!(config = %cfg.redacted(), "CyxCloud rebalancer starting");
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async move {
        let shutdown = Shutdown::new();
        shutdown.listen_for_signals(None);
        let running = cyxcloud_rebalancer::run(cfg, shutdown.clone()).await?;
        shutdown.wait().await;
        tracing::info!("stopping");
        for t in running.tasks {
            let _ = t.await;
        }
        Ok(())
    })
}
