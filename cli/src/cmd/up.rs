//! `cyxcloud up`: the whole product on this machine in one command.
//!
//! Under one data dir (default `./cyxcloud-data`) it starts a gateway on SQLite, enough storage
//! nodes on RocksDB for the default 10+4 profile (7 nodes at 2 shards each), the rebalancer
//! (repairs chunks that lost shards), and the drive when `cyxcloud-mountd` is built; prints the
//! S3 endpoint, the gateway URL and the credentials; stays in the foreground with a live status
//! line, restarting a daemon that crashes; and on Ctrl-C (or SIGTERM) stops everything in
//! order: drive, rebalancer, nodes, gateway. Run again, it finds
//! all data: node ids, RocksDB stores and the metadata database live in the data dir.
//!
//! Secure by default: the gateway admits new nodes only with the cluster's join token, which
//! `up` generates once (`join-token`, 0600) and hands to its nodes; each node binds its id to
//! its own key at its first registration.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use cyxcloud_client::{Client, ClientConfig};
use cyxcloud_proto::v1;
use serde::{Deserialize, Serialize};

use crate::args::{Cli, UpArgs};
use crate::checkout::Checkout;
use crate::output::human;
use crate::procs::{self, Daemon};

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Credentials {
    access_key: String,
    secret_key: String,
}

/// Admin credentials: from the environment when set, else generated once and kept (0600) in
/// the data dir.
fn credentials(data: &Path) -> anyhow::Result<Credentials> {
    if let (Ok(a), Ok(s)) = (
        std::env::var("CYXCLOUD_ACCESS_KEY"),
        std::env::var("CYXCLOUD_SECRET_KEY"),
    ) && !a.is_empty()
        && !s.is_empty()
    {
        return Ok(Credentials {
            access_key: a,
            secret_key: s,
        });
    }
    let path = data.join("credentials.json");
    if let Ok(bytes) = std::fs::read(&path) {
        return serde_json::from_slice(&bytes)
            .with_context(|| format!("{} is corrupt", path.display()));
    }
    let mut raw = [0u8; 30];
    getrandom(&mut raw)?;
    let hexs = cyxcloud_core::Hash::of(&raw).to_hex();
    let creds = Credentials {
        access_key: format!("CYX{}", hexs[..17].to_ascii_uppercase()),
        secret_key: hexs[20..60].to_string(),
    };
    let mut opts = std::fs::OpenOptions::new();
    std::os::unix::fs::OpenOptionsExt::mode(opts.write(true).create_new(true), 0o600);
    let mut f = opts
        .open(&path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    f.write_all(&serde_json::to_vec_pretty(&creds)?)?;
    f.sync_all()?;
    Ok(creds)
}

/// The node join token of this cluster: generated once and kept (0600) in `join-token` in the
/// data dir; the gateway admits new nodes only with it, and `up` hands it to its nodes.
fn join_token_file(data: &Path) -> anyhow::Result<PathBuf> {
    let path = data.join("join-token");
    if path.exists() {
        return Ok(path);
    }
    let mut raw = [0u8; 32];
    getrandom(&mut raw)?;
    let mut opts = std::fs::OpenOptions::new();
    std::os::unix::fs::OpenOptionsExt::mode(opts.write(true).create_new(true), 0o600);
    let mut f = opts
        .open(&path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    f.write_all(cyxcloud_core::Hash::of(&raw).to_hex().as_bytes())?;
    f.sync_all()?;
    Ok(path)
}

fn getrandom(buf: &mut [u8]) -> anyhow::Result<()> {
    use std::io::Read;
    std::fs::File::open("/dev/urandom")?.read_exact(buf)?;
    Ok(())
}

/// One supervised daemon: how to (re)start it and its restart history.
struct Supervised {
    daemon: Daemon,
    make: Box<dyn Fn() -> anyhow::Result<Daemon> + Send>,
    restarts: Vec<Instant>,
    /// Restarts stopped after a crash loop (reported once).
    gave_up: bool,
}

impl Supervised {
    fn start(make: Box<dyn Fn() -> anyhow::Result<Daemon> + Send>) -> anyhow::Result<Self> {
        Ok(Supervised {
            daemon: make()?,
            make,
            restarts: Vec::new(),
            gave_up: false,
        })
    }

    /// Restarts a daemon that exited, at most 5 times a minute.
    fn check(&mut self) -> Option<String> {
        if self.gave_up || self.daemon.running() {
            return None;
        }
        let now = Instant::now();
        self.restarts
            .retain(|t| now.duration_since(*t) < Duration::from_secs(60));
        let name = self.daemon.name.clone();
        if self.restarts.len() >= 5 {
            self.gave_up = true;
            return Some(format!(
                "{name} keeps crashing; not restarting it. Last log lines:\n{}",
                self.daemon.log_tail(15)
            ));
        }
        self.restarts.push(now);
        match (self.make)() {
            Ok(d) => {
                self.daemon = d;
                Some(format!(
                    "{name} exited; restarted it (log: {})",
                    self.daemon.log.display()
                ))
            }
            Err(e) => Some(format!("{name} exited and could not be restarted: {e:#}")),
        }
    }
}

/// Why this machine cannot mount the drive, if it cannot: FUSE needs the kernel's
/// `/dev/fuse` and the `fusermount3` helper (Debian package fuse3).
fn fuse_missing() -> Option<String> {
    if !Path::new("/dev/fuse").exists() {
        return Some("this machine has no /dev/fuse".to_string());
    }
    if !procs::exists("fusermount3") {
        return Some("fusermount3 is missing: apt-get install fuse3".to_string());
    }
    None
}

fn port_free(port: u16) -> bool {
    std::net::TcpListener::bind(("127.0.0.1", port)).is_ok()
}

fn node_capacity_gb(data: &Path, nodes: usize) -> u64 {
    // 80 % of the free space of the data dir's file system, shared by the nodes; at least 1 GB.
    let avail = fs_available(data).unwrap_or(100 << 30);
    ((avail as f64 * 0.8 / nodes as f64) / 1e9).floor().max(1.0) as u64
}

#[allow(unsafe_code)]
fn fs_available(p: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(p.as_os_str().as_bytes()).ok()?;
    let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a valid NUL-terminated path and `s` a properly sized out-parameter.
    let r = unsafe { libc::statvfs(c.as_ptr(), &mut s) };
    (r == 0).then(|| s.f_bavail as u64 * s.f_frsize as u64)
}

pub async fn run(cli: &Cli, a: &UpArgs) -> anyhow::Result<ExitCode> {
    if a.nodes == 0 {
        bail!("--nodes must be at least 1 (7 hold the default 10+4 profile at 2 shards per node)");
    }
    if !port_free(a.port) {
        bail!(
            "port {} is in use; pass --port to choose another for the gateway",
            a.port
        );
    }
    if !a.no_build
        && let Some(checkout) = Checkout::detect()
    {
        checkout.prepare()?;
    }
    std::fs::create_dir_all(&a.data_dir)
        .with_context(|| format!("cannot create {}", a.data_dir.display()))?;
    let data = std::fs::canonicalize(&a.data_dir)?;
    let creds = credentials(&data)?;
    let join_token = join_token_file(&data)?;
    let logs = data.join("logs");
    let gateway_bin = procs::sibling("cyxcloud-gateway")?;
    let node_bin = procs::sibling("cyxcloud-node")?;
    let rebalancer_bin = procs::sibling("cyxcloud-rebalancer")?;
    let grpc_port = procs::free_port()?;
    // TLS 1.3 everywhere: the gateway makes the cluster CA in its data dir (tls/ca.pem), which
    // certifies it and every node; every client here is handed that CA.
    let http = format!("https://127.0.0.1:{}", a.port);
    let grpc = format!("https://127.0.0.1:{grpc_port}");
    let ca_path = data.join("gateway").join("tls").join("ca.pem");

    // Gateway.
    let gw_dir = data.join("gateway");
    let (port, c, token) = (a.port, creds.clone(), join_token.clone());
    let gw_log = logs.join("gateway.log");
    let mut gateway = Supervised::start(Box::new(move || {
        let mut cmd = Command::new(&gateway_bin);
        cmd.arg("--data-dir")
            .arg(&gw_dir)
            .env("GATEWAY_HOST", "127.0.0.1")
            .env("GATEWAY_PORT", port.to_string())
            .env("GATEWAY_GRPC_PORT", grpc_port.to_string())
            .env("CYXCLOUD_ACCESS_KEY", &c.access_key)
            .env("CYXCLOUD_SECRET_KEY", &c.secret_key)
            .env("GATEWAY_NODE_JOIN_TOKEN_FILE", &token)
            .env("GATEWAY_TLS", "true")
            .env_remove("GATEWAY_NODE_JOIN_TOKEN")
            .env_remove("GATEWAY_TLS_CERT_PATH")
            .env_remove("GATEWAY_TLS_KEY_PATH")
            .env_remove("GATEWAY_TLS_CA_DIR")
            .env_remove("DATABASE_URL");
        procs::spawn("gateway", cmd, &gw_log, true)
    }))?;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(ca) = std::fs::read(&ca_path)
            && let Ok((200, _)) = crate::discover::http_get_with(&http, "/health", Some(&ca)).await
        {
            break;
        }
        if !gateway.daemon.running() || Instant::now() > deadline {
            let tail = gateway.daemon.log_tail(20);
            gateway.daemon.stop(1, Duration::from_secs(2));
            bail!("the gateway did not start; last log lines:\n{tail}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Nodes.
    let capacity = node_capacity_gb(&data, a.nodes);
    let mut p2p_first = None;
    let mut nodes = Vec::new();
    for i in 0..a.nodes {
        let id = format!("local-node-{:02}", i + 1);
        let dir = data.join("nodes").join(&id);
        std::fs::create_dir_all(&dir)?;
        let (g, m, p) = (
            procs::free_port()?,
            procs::free_port()?,
            procs::free_port()?,
        );
        let bootstrap = p2p_first
            .get_or_insert_with(|| format!("/ip4/127.0.0.1/tcp/{p}"))
            .clone();
        let config = format!(
            "[node]\nid = \"{id}\"\nname = \"{id}\"\n\n[storage]\ndata_dir = \"{dir}\"\nmax_capacity_gb = {capacity}\n\n\
             [network]\nbind_address = \"127.0.0.1\"\ngrpc_port = {g}\np2p_port = {p}\n\n\
             [central]\naddress = \"{grpc}\"\nregister = true\njoin_token_file = \"{token}\"\nca_cert_file = \"{ca}\"\n\n\
             [cyxwiz_api]\nregister = false\n\n[metrics]\nenabled = true\nport = {m}\n",
            dir = dir.display(),
            token = join_token.display(),
            ca = ca_path.display()
        );
        let cfg_path = dir.join("config.toml");
        std::fs::write(&cfg_path, config)?;
        let (bin, log) = (node_bin.clone(), logs.join(format!("{id}.log")));
        let first = i == 0;
        nodes.push(Supervised::start(Box::new(move || {
            let mut cmd = Command::new(&bin);
            cmd.arg("--config")
                .arg(&cfg_path)
                .env_remove("NODE_JOIN_TOKEN")
                .env_remove("NODE_JOIN_TOKEN_FILE")
                .env_remove("CENTRAL_CA_CERT")
                .env_remove("CENTRAL_ADDRESS");
            if !first {
                cmd.env("BOOTSTRAP_PEERS", &bootstrap);
            }
            procs::spawn(
                &log.file_stem()
                    .map(|s| s.to_string_lossy().into_owned())
                    .unwrap_or_default(),
                cmd,
                &log,
                true,
            )
        }))?);
    }

    let client = Client::connect(
        ClientConfig::new(
            grpc.clone(),
            creds.access_key.clone(),
            creds.secret_key.clone(),
        )
        .with_ca_file(&ca_path)?,
    )
    .await
    .context("cannot connect to the gateway it just started")?;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let online = online_nodes(&client).await.unwrap_or(0);
        if online >= a.nodes {
            break;
        }
        if Instant::now() > deadline {
            eprintln!(
                "warning: only {online} of {} nodes registered within 60 s; see {}",
                a.nodes,
                logs.display()
            );
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The rebalancer.
    let rebalancer_port = procs::free_port()?;
    let mut rebalancer = {
        let (c, g, log, ca) = (
            creds.clone(),
            grpc.clone(),
            logs.join("rebalancer.log"),
            ca_path.clone(),
        );
        Supervised::start(Box::new(move || {
            let mut cmd = Command::new(&rebalancer_bin);
            cmd.args(["--gateway", &g])
                .args(["--set", &format!("metrics.port={rebalancer_port}")])
                // One rebalancer per data dir, under one name from run to run (its ports
                // change): it takes back the leases of a predecessor that was killed.
                .args(["--set", "holder=cyxcloud-up"])
                .env("CYXCLOUD_ACCESS_KEY", &c.access_key)
                .env("CYXCLOUD_SECRET_KEY", &c.secret_key)
                .env("CYXCLOUD_CA_CERT", &ca);
            procs::spawn("rebalancer", cmd, &log, true)
        }))?
    };

    // The drive.
    let mut mount: Option<(Supervised, PathBuf)> = None;
    let mount_note = if a.no_mount {
        "not mounted (--no-mount)".to_string()
    } else if !procs::exists("cyxcloud-mountd") {
        "not mounted (cyxcloud-mountd is not built yet)".to_string()
    } else if let Some(why) = fuse_missing() {
        format!("not mounted ({why})")
    } else {
        let point = a.mount.clone().unwrap_or_else(|| data.join("drive"));
        std::fs::create_dir_all(&point)?;
        let bin = procs::sibling("cyxcloud-mountd")?;
        let (c, g, cache, log, ca) = (
            creds.clone(),
            http.clone(),
            data.join("mount-cache"),
            logs.join("mountd.log"),
            ca_path.clone(),
        );
        let p = point.clone();
        let s = Supervised::start(Box::new(move || {
            let mut cmd = Command::new(&bin);
            cmd.arg(&p)
                .arg("--foreground")
                .arg("--cache-dir")
                .arg(&cache)
                .env("CYXCLOUD_GATEWAY", &g)
                .env("CYXCLOUD_ACCESS_KEY", &c.access_key)
                .env("CYXCLOUD_SECRET_KEY", &c.secret_key)
                .env("CYXCLOUD_CA_CERT", &ca)
                .env_remove("CYXCLOUD_GRPC_ADDRESS");
            procs::spawn("mountd", cmd, &log, true)
        }))?;
        let note = format!("mounted at {}", point.display());
        mount = Some((s, point));
        note
    };

    if cli.json {
        println!(
            "{}",
            serde_json::json!({"gateway": http, "s3_endpoint": http, "control_api": grpc, "ca_certificate": ca_path, "access_key": creds.access_key,
                "secret_key": creds.secret_key, "nodes": a.nodes, "rebalancer": format!("http://127.0.0.1:{rebalancer_port}"), "data_dir": data, "drive": mount.as_ref().map(|m| &m.1)})
        );
    } else {
        println!("CyxCloud is up.\n");
        println!("  Gateway:      {http}   (/health, /metrics)");
        println!("  S3 endpoint:  {http}   (path style, region us-east-1)");
        println!("  Control API:  {grpc}   (gRPC)");
        println!(
            "  CA:           {}   (TLS 1.3; clients verify with it)",
            ca_path.display()
        );
        println!("  Access key:   {}", creds.access_key);
        println!("  Secret key:   {}", creds.secret_key);
        println!("  Nodes:        {} on RocksDB, {capacity} GB each", a.nodes);
        println!("  Rebalancer:   http://127.0.0.1:{rebalancer_port}   (/health, /metrics)");
        println!("  Drive:        {mount_note}");
        println!(
            "  Data:         {}   (logs in {})",
            data.display(),
            logs.display()
        );
        println!();
        println!(
            "  export CYXCLOUD_GATEWAY={http} CYXCLOUD_ACCESS_KEY={} CYXCLOUD_SECRET_KEY={} CYXCLOUD_CA_CERT={ca} AWS_CA_BUNDLE={ca}",
            creds.access_key,
            creds.secret_key,
            ca = ca_path.display()
        );
        println!("\nPress Ctrl-C to stop.");
    }
    let _ = std::io::stdout().flush();

    // Foreground: status line and supervision until Ctrl-C or SIGTERM.
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let tty = std::io::stderr().is_terminal() && !cli.json;
    let mut last = String::new();
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            _ = term.recv() => break,
            _ = tokio::time::sleep(Duration::from_secs(2)) => {}
        }
        for s in std::iter::once(&mut gateway)
            .chain(std::iter::once(&mut rebalancer))
            .chain(nodes.iter_mut())
            .chain(mount.iter_mut().map(|m| &mut m.0))
        {
            if let Some(msg) = s.check() {
                eprintln!("\n{msg}");
            }
        }
        if let Some(line) = status_line(&client, a.nodes).await
            && line != last
        {
            if tty {
                eprint!("\r\x1b[2K{line}");
            } else if !cli.json {
                eprintln!("{line}");
            }
            last = line;
        }
    }

    if tty {
        eprintln!();
    }
    eprintln!("Stopping CyxCloud...");
    if let Some((mut m, point)) = mount {
        m.daemon.stop(1, Duration::from_secs(10));
        // A mount left behind by a killed daemon would block the next `up`.
        // Quietly: normally the drive has unmounted itself and there is nothing to do.
        let _ = Command::new("fusermount3")
            .arg("-u")
            .arg("-z")
            .arg(&point)
            .stderr(std::process::Stdio::null())
            .status();
    }
    rebalancer.daemon.stop(1, Duration::from_secs(10));
    // Nodes: the second SIGTERM means "exit now" (the first one alone would start draining).
    for n in nodes.iter_mut() {
        if n.daemon.running() {
            procs::signal(n.daemon.pid(), libc::SIGTERM);
        }
    }
    std::thread::sleep(Duration::from_millis(100));
    for n in nodes.iter_mut() {
        n.daemon.stop(1, Duration::from_secs(10));
    }
    gateway.daemon.stop(1, Duration::from_secs(10));
    eprintln!(
        "Stopped. Data is kept in {}; run `cyxcloud up --data-dir {}` to start again.",
        data.display(),
        a.data_dir.display()
    );
    Ok(ExitCode::SUCCESS)
}

async fn online_nodes(client: &Client) -> anyhow::Result<usize> {
    let c = client
        .control()
        .cluster_status(v1::ClusterStatusRequest {})
        .await?
        .into_inner();
    Ok(c.nodes
        .iter()
        .filter(|n| n.state == v1::NodeState::Online as i32)
        .count())
}

async fn status_line(client: &Client, expected: usize) -> Option<String> {
    let c = client
        .control()
        .cluster_status(v1::ClusterStatusRequest {})
        .await
        .ok()?
        .into_inner();
    let online = c
        .nodes
        .iter()
        .filter(|n| n.state == v1::NodeState::Online as i32)
        .count();
    let used: u64 = c.nodes.iter().map(|n| n.used_bytes).sum();
    let dot = if online >= expected { "●" } else { "◐" };
    Some(format!(
        "{dot} {online}/{expected} nodes online · {} files, {} · {} on disk{}",
        c.files,
        human(c.logical_bytes),
        human(used),
        if c.pending_repairs > 0 {
            format!(" · {} chunks to repair", c.pending_repairs)
        } else {
            String::new()
        }
    ))
}
