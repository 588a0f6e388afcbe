//! One module per command.

mod delete;
mod download;
mod list;
mod mount;
mod node;
mod status;
mod up;
mod upload;

use std::process::ExitCode;

use anyhow::Context;
use cyxcloud_client::{Client, ClientConfig};

use crate::args::{Cli, Command};
use crate::{discover, settings};

pub async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match &cli.command {
        Command::Upload(a) => upload::run(&cli, a).await,
        Command::Download(a) => download::run(&cli, a).await,
        Command::List(a) => list::run(&cli, a).await,
        Command::Delete(a) => delete::run(&cli, a).await,
        Command::Status(a) => status::run(&cli, a).await,
        Command::Up(a) => up::run(&cli, a).await,
        Command::Node(c) => node::run(&cli, c).await,
        Command::Mount(a) => mount::mount(&cli, a).await,
        Command::Unmount(a) => mount::unmount(&cli, a).await,
    }
}

/// Connects to the gateway named by flags, environment or config file.
pub async fn connect(cli: &Cli) -> anyhow::Result<Client> {
    connect_with(cli, |_| {}).await
}

/// [`connect`] with a client setting changed by `tweak`.
pub async fn connect_with(
    cli: &Cli,
    tweak: impl FnOnce(&mut ClientConfig),
) -> anyhow::Result<Client> {
    let s = settings::resolve(cli)?;
    let grpc = discover::grpc_address(&s.gateway, s.ca_pem.as_deref()).await?;
    let mut config = ClientConfig::new(grpc, s.access_key, s.secret_key);
    config.ca_pem = s.ca_pem;
    tweak(&mut config);
    let client = Client::connect(config)
        .await
        .with_context(|| format!("cannot connect to gateway {}", s.gateway))?;
    Ok(client)
}

/// A progress bar for `total` bytes (hidden with --quiet/--json or without a terminal).
pub fn progress(cli: &Cli, total: u64, msg: &str) -> indicatif::ProgressBar {
    use std::io::IsTerminal;
    if cli.quiet || cli.json || !std::io::stderr().is_terminal() {
        return indicatif::ProgressBar::hidden();
    }
    let pb = indicatif::ProgressBar::new(total);
    pb.set_style(
        indicatif::ProgressStyle::with_template(
            "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} ETA {eta}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    pb.set_message(msg.to_string());
    pb
}

/// Joins a prefix and a relative key with exactly one '/'.
pub fn join_key(prefix: &str, rel: &str) -> String {
    let p = prefix.trim_matches('/');
    if p.is_empty() {
        rel.to_string()
    } else {
        format!("{p}/{rel}")
    }
}

/// Lists every object under `prefix` (no delimiter), following pagination.
pub async fn list_all(
    client: &Client,
    bucket: &str,
    prefix: &str,
    max: Option<u32>,
) -> anyhow::Result<Vec<cyxcloud_client::Entry>> {
    let mut out = Vec::new();
    let mut after = String::new();
    loop {
        let want = max.map_or(1000, |m| (m as usize - out.len()).min(1000) as u32);
        let r = client
            .control()
            .list_objects(cyxcloud_proto::v1::ListObjectsRequest {
                bucket: bucket.to_string(),
                prefix: prefix.to_string(),
                delimiter: String::new(),
                start_after: after.clone(),
                max_keys: want,
            })
            .await
            .map_err(|s| cyxcloud_client::ClientError::rpc("list objects", s))?
            .into_inner();
        out.extend(r.objects);
        if !r.truncated
            || max.is_some_and(|m| out.len() >= m as usize)
            || r.next_start_after.is_empty()
        {
            break;
        }
        after = r.next_start_after;
    }
    Ok(out)
}
