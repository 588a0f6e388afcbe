//! `cyxcloud-gateway`: serve (default), or manage accounts on the configured store
//! (`cyxcloud-gateway user add ...`).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand};
use cyxcloud_gateway::{Config, accounts::Accounts};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "cyxcloud-gateway",
    version,
    about = "CyxCloud gateway: control plane and S3 API"
)]
struct Cli {
    #[command(flatten)]
    opts: Opts,
    #[command(subcommand)]
    cmd: Option<Cmd>,
}

#[derive(Args)]
struct Opts {
    /// TOML configuration file.
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    /// Data directory (SQLite database, cluster key) [env: GATEWAY_DATA_DIR].
    #[arg(long, global = true)]
    data_dir: Option<String>,
    /// Bind address [env: GATEWAY_HOST].
    #[arg(long, global = true)]
    host: Option<String>,
    /// HTTP port [env: GATEWAY_PORT].
    #[arg(long, global = true)]
    port: Option<u16>,
    /// gRPC port [env: GATEWAY_GRPC_PORT].
    #[arg(long, global = true)]
    grpc_port: Option<u16>,
    /// postgres://... (default: SQLite in the data dir) [env: DATABASE_URL].
    #[arg(long, global = true)]
    database_url: Option<String>,
    /// redis://... [env: REDIS_URL].
    #[arg(long, global = true)]
    redis_url: Option<String>,
    /// Any setting as dotted.key=value (repeatable), e.g. nodes.heartbeat_interval_ms=500.
    #[arg(long = "set", global = true, value_name = "KEY=VALUE")]
    set: Vec<String>,
}

#[derive(Subcommand)]
enum Cmd {
    /// Serve (the default).
    Run,
    /// Manage users.
    User {
        #[command(subcommand)]
        cmd: UserCmd,
    },
}

#[derive(Subcommand)]
enum UserCmd {
    /// Create a user: an operator account with --email and a password, and/or an access key.
    Add {
        #[arg(long)]
        name: String,
        #[arg(long)]
        email: Option<String>,
        /// Password [env: CYXCLOUD_USER_PASSWORD]; prefer --password-file.
        #[arg(long, env = "CYXCLOUD_USER_PASSWORD", hide_env_values = true)]
        password: Option<String>,
        #[arg(long)]
        password_file: Option<PathBuf>,
        #[arg(long)]
        admin: bool,
        /// 0 = unlimited.
        #[arg(long, default_value_t = 0)]
        quota_bytes: u64,
        /// Also create an access key (printed once).
        #[arg(long)]
        access_key: bool,
    },
    /// Create another access key for a user (printed once).
    Key {
        #[arg(long)]
        user_id: String,
    },
    /// Set a user's quota.
    Quota {
        #[arg(long)]
        user_id: String,
        #[arg(long)]
        bytes: u64,
    },
}

fn flags(o: &Opts) -> anyhow::Result<Vec<(String, String)>> {
    let mut f = Vec::new();
    let mut put = |k: &str, v: Option<String>| {
        if let Some(v) = v {
            f.push((k.to_string(), v));
        }
    };
    put("data_dir", o.data_dir.clone());
    put("host", o.host.clone());
    put("port", o.port.map(|p| p.to_string()));
    put("grpc_port", o.grpc_port.map(|p| p.to_string()));
    put("database_url", o.database_url.clone());
    put("redis_url", o.redis_url.clone());
    for s in &o.set {
        let (k, v) = s
            .split_once('=')
            .with_context(|| format!("--set {s:?}: expected KEY=VALUE"))?;
        f.push((k.trim().to_string(), v.to_string()));
    }
    Ok(f)
}

fn admin_env() -> anyhow::Result<Option<(String, String)>> {
    let ak = std::env::var("CYXCLOUD_ACCESS_KEY")
        .ok()
        .filter(|s| !s.is_empty());
    let sk = match std::env::var("CYXCLOUD_SECRET_KEY_FILE")
        .ok()
        .filter(|s| !s.is_empty())
    {
        Some(f) => Some(
            std::fs::read_to_string(&f)
                .with_context(|| format!("read {f}"))?
                .trim()
                .to_string(),
        ),
        None => std::env::var("CYXCLOUD_SECRET_KEY")
            .ok()
            .filter(|s| !s.is_empty()),
    };
    match (ak, sk) {
        (Some(a), Some(s)) => Ok(Some((a, s))),
        (None, None) => Ok(None),
        _ => bail!("set both CYXCLOUD_ACCESS_KEY and CYXCLOUD_SECRET_KEY (or neither)"),
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    cyxcloud_daemon::logging::init("info");
    match real_main().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("cyxcloud-gateway: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn real_main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let config = Config::load(cli.opts.config.as_deref(), &flags(&cli.opts)?)?;
    match cli.cmd {
        None | Some(Cmd::Run) => serve(config).await,
        Some(Cmd::User { cmd }) => user(config, cmd).await,
    }
}

async fn serve(config: Config) -> anyhow::Result<()> {
    tracing::info!(config = ?config.redacted(), "starting cyxcloud-gateway");
    let shutdown = cyxcloud_daemon::Shutdown::new();
    shutdown.listen_for_signals(None);
    let admin = admin_env()?;
    let s3 = config.s3.enabled.then(cyxcloud_gateway::s3::S3::new);
    let running = cyxcloud_gateway::run(
        config,
        shutdown.clone(),
        admin.as_ref().map(|(a, s)| (a.as_str(), s.as_str())),
        s3.as_ref().map(|s| s.router()),
    )
    .await?;
    if let Some(s3) = &s3 {
        s3.start(&running).await?;
    }
    if let Some(k) = &running.new_admin_key {
        // Printed once, at first start; the secret is stored encrypted and never logged.
        println!("admin access key: {}", k.access_key);
        println!("admin secret key: {}", k.secret_key.as_str());
    }
    println!(
        "cyxcloud-gateway http on {} grpc on {}",
        running.http_addr, running.grpc_addr
    );
    tokio::select! {
        _ = shutdown.wait() => {}
        _ = shutdown.wait_now() => {}
    }
    for t in running.tasks {
        let _ = tokio::time::timeout(std::time::Duration::from_secs(10), t).await;
    }
    Ok(())
}

async fn accounts(config: &Config) -> anyhow::Result<Accounts> {
    let stop = tokio_util::sync::CancellationToken::new();
    let (gw, _) = cyxcloud_gateway::open(config, None, stop).await?;
    Ok(gw.accounts)
}

async fn user(config: Config, cmd: UserCmd) -> anyhow::Result<()> {
    let accounts = accounts(&config).await?;
    match cmd {
        UserCmd::Add {
            name,
            email,
            password,
            password_file,
            admin,
            quota_bytes,
            access_key,
        } => {
            let password = match password_file {
                Some(f) => Some(
                    std::fs::read_to_string(&f)
                        .with_context(|| format!("read {}", f.display()))?
                        .trim_end()
                        .to_string(),
                ),
                None => password,
            };
            if email.is_some() != password.is_some() {
                bail!("an operator account needs both --email and a password");
            }
            let u = accounts
                .create_user(
                    &name,
                    email.as_deref(),
                    password.as_deref(),
                    admin,
                    quota_bytes,
                )
                .await?;
            println!("user id: {}", u.id);
            if access_key {
                let k = accounts.create_access_key(&u.id).await?;
                println!("access key: {}", k.access_key);
                println!("secret key: {}", k.secret_key.as_str());
            }
        }
        UserCmd::Key { user_id } => {
            let k = accounts.create_access_key(&user_id).await?;
            println!("access key: {}", k.access_key);
            println!("secret key: {}", k.secret_key.as_str());
        }
        UserCmd::Quota { user_id, bytes } => {
            accounts.set_quota(&user_id, bytes).await?;
            println!("quota of {user_id}: {bytes} bytes");
        }
    }
    Ok(())
}
