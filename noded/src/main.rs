//! `cyxcloud-node`: parse flags, load the config, run the node (or tell a running one to drain).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use cyxcloud_node::config::{Config, Overrides};
use cyxcloud_node::login::LoginInput;
use cyxcloud_node::{Exit, RunOptions};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// CyxCloud storage node.
#[derive(Debug, Parser)]
#[command(name = "cyxcloud-node", version)]
struct Cli {
    /// Config file (default: ./config.toml when it exists).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Data directory (overrides [storage] data_dir and STORAGE_PATH).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Tell the node running on this data dir to drain, then exit.
    #[arg(long)]
    drain: bool,
    /// Operator email for a non-interactive first login (or CYXWIZ_EMAIL).
    #[arg(long)]
    email: Option<String>,
    /// File holding the operator password (or CYXWIZ_PASSWORD / CYXWIZ_PASSWORD_FILE).
    #[arg(long)]
    password_file: Option<PathBuf>,
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let cfg = Config::load(&Overrides {
        config: cli.config,
        data_dir: cli.data_dir,
    })?;
    if cli.drain {
        let reply = cyxcloud_node::lifecycle::send_control(&cfg.data_dir(), "drain").await?;
        println!("{reply}");
        return Ok(ExitCode::SUCCESS);
    }
    let opts = RunOptions {
        login: LoginInput {
            email: cli.email,
            password_file: cli.password_file,
        },
    };
    match cyxcloud_node::run(cfg, opts).await? {
        // Second termination signal: leave without waiting for anything.
        Exit::Immediate => exit_now(),
        Exit::Stopped | Exit::Drained => Ok(ExitCode::SUCCESS),
    }
}

/// Leaves the process at once. `std::process::exit` would run C++ static destructors while
/// RocksDB's background threads still use them (abort: "pthread lock: Invalid argument");
/// `_exit` skips them. Nothing is lost: every acknowledged write is already in the synced WAL.
#[allow(unsafe_code)]
fn exit_now() -> ! {
    use std::io::Write;
    let _ = std::io::stdout().flush();
    let _ = std::io::stderr().flush();
    // SAFETY: _exit(2) only terminates the process; it touches no Rust-managed state.
    unsafe { libc::_exit(0) }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    cyxcloud_daemon::logging::init("info");
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let r = rt.block_on(run(cli));
    rt.shutdown_timeout(std::time::Duration::from_secs(1));
    match r {
        Ok(code) => code,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
