//! `cyxcloud node start|status|stop`: run a storage node on this machine in the background.
//!
//! `start` launches `cyxcloud-node` detached (it survives this command), with its data dir,
//! capacity and gateway, and records its pid and ports in `<data-dir>/cli-node.json`;
//! `status` reads that file, checks the process and asks the node's `/health`; `stop` sends
//! SIGTERM twice (a clean, immediate exit) or, with `--drain`, once: the node stops accepting
//! shards and keeps serving reads while the rebalancer moves its data elsewhere, then exits;
//! `stop --drain` shows the shards left until then (Ctrl-C stops watching, not the drain).

use std::path::Path;
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};

use crate::args::{Cli, NodeArgs, NodeCommand, NodeStartArgs, NodeStopArgs};
use crate::procs;

#[derive(Debug, Serialize, Deserialize)]
struct NodeFile {
    pid: u32,
    grpc_port: u16,
    p2p_port: u16,
    metrics_port: u16,
    storage_gb: u64,
}

fn node_file(dir: &Path) -> std::path::PathBuf {
    dir.join("cli-node.json")
}

fn read_node_file(dir: &Path) -> anyhow::Result<Option<NodeFile>> {
    match std::fs::read(node_file(dir)) {
        Ok(b) => Ok(Some(
            serde_json::from_slice(&b).context("cli-node.json is corrupt")?,
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e.into()),
    }
}

pub async fn run(cli: &Cli, c: &NodeCommand) -> anyhow::Result<ExitCode> {
    match c {
        NodeCommand::Start(a) => start(cli, a).await,
        NodeCommand::Status(a) => status(cli, a).await,
        NodeCommand::Stop(a) => stop(cli, a).await,
    }
}

fn port_or_free(default: u16) -> anyhow::Result<u16> {
    if std::net::TcpListener::bind(("0.0.0.0", default)).is_ok() {
        Ok(default)
    } else {
        procs::free_port()
    }
}

async fn start(cli: &Cli, a: &NodeStartArgs) -> anyhow::Result<ExitCode> {
    let dir = &a.node.data_dir;
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    if let Some(f) = read_node_file(dir)?
        && procs::alive(f.pid)
    {
        bail!(
            "a node is already running from {} (pid {})",
            dir.display(),
            f.pid
        );
    }
    if a.storage_gb == 0 {
        bail!("--storage-gb must be at least 1");
    }
    // The usage guide's default ports, or free ones when they are taken.
    let (grpc_port, p2p_port, metrics_port) = (
        port_or_free(50051)?,
        port_or_free(4001)?,
        port_or_free(9090)?,
    );
    let mut cmd = Command::new(procs::sibling("cyxcloud-node")?);
    cmd.arg("--data-dir")
        .arg(dir)
        .env("STORAGE_CAPACITY_GB", a.storage_gb.to_string())
        .env("GRPC_PORT", grpc_port.to_string())
        .env("LIBP2P_PORT", p2p_port.to_string())
        .env("METRICS_PORT", metrics_port.to_string());
    match &a.central {
        Some(central) => cmd
            .env("CENTRAL_ADDRESS", central)
            .env("CENTRAL_REGISTER", "true"),
        None => cmd.env("CENTRAL_REGISTER", "false"),
    };
    if let Some(f) = &a.join_token_file {
        let f =
            std::fs::canonicalize(f).with_context(|| format!("join token file {}", f.display()))?;
        cmd.env("NODE_JOIN_TOKEN_FILE", f)
            .env_remove("NODE_JOIN_TOKEN");
    }
    cmd.env(
        "CYXWIZ_API_REGISTER",
        if a.login { "true" } else { "false" },
    );
    let mut d = procs::spawn("cyxcloud-node", cmd, &dir.join("node.log"), false)?;
    let pid = d.pid();
    let f = NodeFile {
        pid,
        grpc_port,
        p2p_port,
        metrics_port,
        storage_gb: a.storage_gb,
    };
    std::fs::write(node_file(dir), serde_json::to_vec_pretty(&f)?)?;
    let health = format!("http://127.0.0.1:{metrics_port}");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok((code, _)) = crate::discover::http_get(&health, "/health").await
            && code != 0
        {
            break;
        }
        if !d.running() {
            bail!(
                "the node exited during start; last log lines:\n{}",
                d.log_tail(20)
            );
        }
        if Instant::now() > deadline {
            bail!(
                "the node did not answer on {health}/health within 30 s; see {}",
                d.log.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    if cli.json {
        println!(
            "{}",
            serde_json::json!({"pid": pid, "data_dir": dir, "grpc_port": grpc_port, "p2p_port": p2p_port, "metrics_port": metrics_port, "storage_gb": a.storage_gb})
        );
    } else {
        println!("✓ Node started (pid {pid})");
        println!("  Data dir:  {}", dir.display());
        println!("  Storage:   {} GB", a.storage_gb);
        println!(
            "  gRPC:      0.0.0.0:{grpc_port}   libp2p: {p2p_port}   metrics: http://127.0.0.1:{metrics_port}/metrics"
        );
        println!("  Log:       {}", d.log.display());
    }
    Ok(ExitCode::SUCCESS)
}

async fn status(cli: &Cli, a: &NodeArgs) -> anyhow::Result<ExitCode> {
    let Some(f) = read_node_file(&a.data_dir)? else {
        if cli.json {
            println!("{}", serde_json::json!({"running": false}));
        } else {
            println!(
                "No node started from {} (use `cyxcloud node start`).",
                a.data_dir.display()
            );
        }
        return Ok(ExitCode::from(3));
    };
    let running = procs::alive(f.pid);
    let health = if running {
        crate::discover::http_get(&format!("http://127.0.0.1:{}", f.metrics_port), "/health")
            .await
            .ok()
            .map(|(_, b)| b)
    } else {
        None
    };
    let h: serde_json::Value = health
        .as_deref()
        .and_then(|b| serde_json::from_str(b).ok())
        .unwrap_or_default();
    if cli.json {
        println!(
            "{}",
            serde_json::json!({"running": running, "pid": f.pid, "grpc_port": f.grpc_port, "metrics_port": f.metrics_port, "health": h})
        );
    } else {
        println!(
            "Node: {}",
            if running {
                "● Running"
            } else {
                "○ Stopped"
            }
        );
        println!("  PID:       {}", f.pid);
        println!("  Data dir:  {}", a.data_dir.display());
        println!("  Storage:   {} GB allocated", f.storage_gb);
        if let Some(state) = h.get("state").and_then(|s| s.as_str()) {
            println!("  State:     {state}");
        }
        if let Some(obj) = h.as_object() {
            for (k, v) in obj
                .iter()
                .filter(|(k, _)| !matches!(k.as_str(), "state" | "healthy"))
            {
                println!("  {k}: {v}");
            }
        }
    }
    Ok(if running {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(3)
    })
}

async fn stop(cli: &Cli, a: &NodeStopArgs) -> anyhow::Result<ExitCode> {
    let Some(f) = read_node_file(&a.node.data_dir)? else {
        bail!("no node started from {}", a.node.data_dir.display());
    };
    if !procs::alive(f.pid) {
        let _ = std::fs::remove_file(node_file(&a.node.data_dir));
        println!("Node was not running.");
        return Ok(ExitCode::SUCCESS);
    }
    procs::signal(f.pid, libc::SIGTERM);
    if a.drain {
        return drain(cli, a, &f).await;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    procs::signal(f.pid, libc::SIGTERM);
    let deadline = Instant::now() + Duration::from_secs(15);
    while procs::alive(f.pid) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    if procs::alive(f.pid) {
        bail!("node {} did not stop within 15 s", f.pid);
    }
    let _ = std::fs::remove_file(node_file(&a.node.data_dir));
    if cli.json {
        println!("{}", serde_json::json!({"stopped": true, "pid": f.pid}));
    } else {
        println!("✓ Node stopped (pid {})", f.pid);
    }
    Ok(ExitCode::SUCCESS)
}

/// Watches a draining node until it exits, printing how many shards it still holds.
async fn drain(cli: &Cli, a: &NodeStopArgs, f: &NodeFile) -> anyhow::Result<ExitCode> {
    let health = format!("http://127.0.0.1:{}", f.metrics_port);
    if !cli.json {
        println!(
            "Node {} is draining: no new shards; reads are served while its data moves.",
            f.pid
        );
    }
    let mut last = None;
    let started = Instant::now();
    loop {
        if !procs::alive(f.pid) {
            break;
        }
        if let Ok((200, body)) = crate::discover::http_get(&health, "/health").await
            && let Ok(h) = serde_json::from_str::<serde_json::Value>(&body)
        {
            let shards = h["shard_count"].as_u64();
            let state = h["state"].as_str().unwrap_or("").to_string();
            if last.as_ref() != Some(&(shards, state.clone())) {
                if !cli.json {
                    println!(
                        "  {:>5.0} s  {state}: {} shards on the node",
                        started.elapsed().as_secs_f64(),
                        shards.map_or("?".to_string(), |n| n.to_string())
                    );
                }
                last = Some((shards, state));
            }
        }
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {
                println!("Stopped watching; the node goes on draining (pid {}).", f.pid);
                return Ok(ExitCode::SUCCESS);
            }
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
    }
    let _ = std::fs::remove_file(node_file(&a.node.data_dir));
    if cli.json {
        println!(
            "{}",
            serde_json::json!({"stopped": true, "drained": true, "pid": f.pid, "seconds": started.elapsed().as_secs_f64()})
        );
    } else {
        println!(
            "✓ Node drained and stopped (pid {}, {:.0} s)",
            f.pid,
            started.elapsed().as_secs_f64()
        );
    }
    Ok(ExitCode::SUCCESS)
}
