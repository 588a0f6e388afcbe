//! Command-line interface, as the usage guide's "CLI Usage" section specifies it.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "cyxcloud",
    version,
    about = "CyxCloud decentralized storage: upload, download, list, run a local cluster"
)]
pub struct Cli {
    /// Gateway URL (its HTTP port: S3, /health, /api). The Control gRPC endpoint is discovered
    /// from it.
    #[arg(long, global = true, env = "CYXCLOUD_GATEWAY")]
    pub gateway: Option<String>,
    /// Access key (default: $CYXCLOUD_ACCESS_KEY, then ~/.config/cyxcloud/config.toml).
    #[arg(
        long,
        global = true,
        env = "CYXCLOUD_ACCESS_KEY",
        hide_env_values = true
    )]
    pub access_key: Option<String>,
    /// Secret key (default: $CYXCLOUD_SECRET_KEY, then the config file).
    #[arg(
        long,
        global = true,
        env = "CYXCLOUD_SECRET_KEY",
        hide_env_values = true
    )]
    pub secret_key: Option<String>,
    /// CA certificate (PEM) that certifies an https:// gateway: the cluster CA (`cyxcloud up`
    /// prints its path) or the CA of the operator's certificate.
    #[arg(long, global = true, env = "CYXCLOUD_CA_CERT")]
    pub ca_cert: Option<PathBuf>,
    /// Config file (default ~/.config/cyxcloud/config.toml).
    #[arg(long, global = true, env = "CYXCLOUD_CONFIG")]
    pub config: Option<PathBuf>,
    /// Machine-readable JSON output.
    #[arg(long, global = true)]
    pub json: bool,
    /// No progress bars.
    #[arg(long, short = 'q', global = true)]
    pub quiet: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Upload a file, or a directory recursively.
    Upload(UploadArgs),
    /// Download one object, everything under a prefix, or a whole bucket.
    Download(DownloadArgs),
    /// List objects in a bucket.
    List(ListArgs),
    /// Delete an object (shows what would be deleted unless --force).
    Delete(DeleteArgs),
    /// Gateway, cluster or bucket status.
    Status(StatusArgs),
    /// Manage a storage node on this machine.
    #[command(subcommand)]
    Node(NodeCommand),
    /// Start the whole product on this machine: gateway, nodes, rebalancer, drive.
    Up(UpArgs),
    /// Mount CyxCloud as a drive (`cyxcloud mount status` shows mounts and pending uploads).
    Mount(MountArgs),
    /// Unmount a drive mounted with `cyxcloud mount`.
    Unmount(UnmountArgs),
}

#[derive(Debug, Args)]
pub struct MountArgs {
    /// Where to mount, or `status`.
    pub mountpoint: std::path::PathBuf,
    /// Options for cyxcloud-mountd: --bucket B, --read-only, --allow-other, --uid U, --gid G,
    /// --cache-dir DIR, --cache-size 10G, --foreground.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub options: Vec<String>,
}

#[derive(Debug, Args)]
pub struct UnmountArgs {
    pub mountpoint: std::path::PathBuf,
}

#[derive(Debug, Args)]
pub struct UploadArgs {
    /// File or directory to upload.
    pub path: PathBuf,
    /// Target bucket.
    #[arg(short, long, default_value = "default")]
    pub bucket: String,
    /// Key prefix for uploaded files.
    #[arg(short, long, default_value = "")]
    pub prefix: String,
    /// Encrypt client-side (AES-256-GCM) with your master key.
    #[arg(short, long)]
    pub encrypt: bool,
    /// Master key file (default ~/.config/cyxcloud/master.key, created on first use).
    #[arg(long, env = "CYXCLOUD_KEY_FILE")]
    pub key_file: Option<PathBuf>,
    /// Derive the master key from this passphrase instead of a key file.
    #[arg(long, env = "CYXCLOUD_PASSPHRASE", hide_env_values = true)]
    pub passphrase: Option<String>,
    /// Erasure profile: default (10+4), ha (8+6), max-ha (8+8), extreme (6+10) or K+M.
    #[arg(long)]
    pub profile: Option<String>,
    /// Start over instead of resuming an interrupted upload of the same file.
    #[arg(long)]
    pub no_resume: bool,
    /// Return only when every shard of every chunk is stored: the file survives M lost
    /// nodes at once, instead of after the slowest shards are repaired.
    #[arg(long)]
    pub all_shards: bool,
}

#[derive(Debug, Args)]
pub struct DownloadArgs {
    pub bucket: String,
    /// Specific object key to download.
    #[arg(short, long)]
    pub key: Option<String>,
    /// Download all objects with this prefix.
    #[arg(long)]
    pub prefix: Option<String>,
    /// Output path (default: current directory).
    #[arg(short, long)]
    pub output: Option<PathBuf>,
    #[arg(long, env = "CYXCLOUD_KEY_FILE")]
    pub key_file: Option<PathBuf>,
    #[arg(long, env = "CYXCLOUD_PASSPHRASE", hide_env_values = true)]
    pub passphrase: Option<String>,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    pub bucket: String,
    /// Filter by key prefix.
    #[arg(short, long, default_value = "")]
    pub prefix: String,
    /// Show size, date and ETag.
    #[arg(short, long)]
    pub long: bool,
    /// Human-readable sizes (KB, MB, GB).
    #[arg(short = 'H', long)]
    pub human_readable: bool,
    /// Maximum number of keys to return.
    #[arg(long)]
    pub max_keys: Option<u32>,
}

#[derive(Debug, Args)]
pub struct DeleteArgs {
    pub bucket: String,
    /// Object key to delete.
    #[arg(short, long)]
    pub key: String,
    /// Delete without confirmation.
    #[arg(short, long)]
    pub force: bool,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Show this bucket's status.
    #[arg(short, long)]
    pub bucket: Option<String>,
    /// Show details.
    #[arg(short, long)]
    pub verbose: bool,
}

#[derive(Debug, Subcommand)]
pub enum NodeCommand {
    /// Show the local node's status.
    Status(NodeArgs),
    /// Start a local storage node in the background.
    Start(NodeStartArgs),
    /// Stop the local node (or only drain it with --drain).
    Stop(NodeStopArgs),
}

#[derive(Debug, Args)]
pub struct NodeArgs {
    /// Node data directory.
    #[arg(long, default_value = "./cyxcloud-node")]
    pub data_dir: PathBuf,
}

#[derive(Debug, Args)]
pub struct NodeStartArgs {
    #[command(flatten)]
    pub node: NodeArgs,
    /// Storage to offer, in GB.
    #[arg(long, default_value_t = 100)]
    pub storage_gb: u64,
    /// Gateway gRPC address the node registers with (without it the node runs standalone).
    #[arg(long, env = "CENTRAL_ADDRESS")]
    pub central: Option<String>,
    /// File holding the cluster's join token (the gateway's `nodes.join_token`), needed by a
    /// node joining the cluster for the first time (`NODE_JOIN_TOKEN` in the environment works
    /// too); once joined, the node's own key identifies it.
    #[arg(long, env = "NODE_JOIN_TOKEN_FILE")]
    pub join_token_file: Option<PathBuf>,
    /// Log in to the operator account API (CyxWiz) to register the machine for payment; the
    /// node then prompts for email and password on first start, so run `cyxcloud-node` once in
    /// a terminal first.
    #[arg(long)]
    pub login: bool,
}

#[derive(Debug, Args)]
pub struct NodeStopArgs {
    #[command(flatten)]
    pub node: NodeArgs,
    /// Drain first: refuse new shards, keep serving reads while the rebalancer moves the
    /// node's data elsewhere, then exit (shows the shards left until then).
    #[arg(long)]
    pub drain: bool,
}

#[derive(Debug, Args)]
pub struct UpArgs {
    /// Where all data lives.
    #[arg(long, default_value = "./cyxcloud-data")]
    pub data_dir: PathBuf,
    /// Gateway HTTP port (S3, /health, /metrics); other ports are chosen free and printed.
    #[arg(long, default_value_t = 8080)]
    pub port: u16,
    /// Number of storage nodes (default: enough for the 10+4 profile at 2 shards per node).
    #[arg(long, default_value_t = 7)]
    pub nodes: usize,
    /// Mount the drive here.
    #[arg(long, conflicts_with = "no_mount")]
    pub mount: Option<PathBuf>,
    /// Do not mount the drive.
    #[arg(long)]
    pub no_mount: bool,
    /// Run from a source checkout (`cargo run ... -- up`), do not install system packages or
    /// build the daemons first: start the binaries already next to `cyxcloud`.
    #[arg(long)]
    pub no_build: bool,
}
