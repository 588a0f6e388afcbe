//! `cyxcloud-rebalancer`: keeps every chunk at k+m healthy shards over time (issue 18; the
//! design is `docs/adr/0007`). The [`planner`] is pure: which shards of a chunk must be
//! rebuilt, where, and in what order. The [`repair`] worker detects degraded chunks through
//! the gateway's Maintenance API, plans, and has nodes rebuild the lost shards
//! (`ChunkService.Repair`), then commits the new locations with a compare-and-set. The
//! [`audit`] worker verifies every shard once per audit period (proof of storage); the [`gc`]
//! worker sweeps nodes for shards nothing refers to.
//!
//! Must not depend on the gateway crate or on a database: it reaches the metadata through the
//! gateway's API.

pub mod audit;
pub mod config;
pub mod gc;
pub mod metrics;
pub mod nodes;
pub mod planner;
pub mod repair;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cyxcloud_client::{Client, ClientConfig};
use cyxcloud_daemon::{Health, RateLimit, Shutdown, WorkerOptions, Workers};

pub use config::Config;

/// A running rebalancer.
#[derive(Debug)]
pub struct Running {
    pub metrics_addr: Option<SocketAddr>,
    pub tasks: Vec<tokio::task::JoinHandle<()>>,
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

fn random_suffix() -> String {
    let mut b = [0u8; 5];
    let _ = getrandom::fill(&mut b);
    hex::encode(b)
}

/// Connects to the gateway and starts the workers and the ops server.
pub async fn run(cfg: Config, shutdown: Shutdown) -> anyhow::Result<Running> {
    let holder = if !cfg.holder.is_empty() {
        cfg.holder.clone()
    } else if cfg.metrics.enabled && cfg.metrics.port != 0 {
        // Two rebalancers of one host cannot share a port; a restart keeps it.
        format!("rebalancer@{}:{}", hostname(), cfg.metrics.port)
    } else {
        format!("rebalancer-{}-{}", std::process::id(), random_suffix())
    };
    let mut cc = ClientConfig::new(&cfg.gateway, &cfg.access_key, &cfg.secret_key);
    cc.connect_timeout = Duration::from_secs(5);
    let client = loop {
        // The CA file is read at each attempt: a gateway starting beside this rebalancer makes
        // its cluster CA at its first start, a moment after both were launched.
        let attempt = if cfg.ca_cert_file.is_empty() {
            Ok(cc.clone())
        } else {
            cc.clone()
                .with_ca_file(std::path::Path::new(&cfg.ca_cert_file))
                .map_err(|e| format!("cannot read the CA certificate {}: {e}", cfg.ca_cert_file))
        };
        let r = match attempt {
            Ok(cc) => Client::connect(cc).await.map_err(|e| e.to_string()),
            Err(e) => Err(e),
        };
        match r {
            Ok(c) => break c,
            Err(e) => {
                tracing::warn!(error = %e, gateway = %cfg.gateway, "cannot reach the gateway; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = shutdown.wait() => anyhow::bail!("stopped before the gateway answered"),
                }
            }
        }
    };
    // The Maintenance API is for admins: fail at start, not at the first scan.
    let nodes = client
        .maintenance()
        .nodes(cyxcloud_proto::v1::MaintenanceNodesRequest {})
        .await
        .map_err(|s| anyhow::anyhow!("the gateway refused the maintenance API: {}", s.message()))?
        .into_inner();
    let poll = if cfg.poll_ms > 0 {
        Duration::from_millis(cfg.poll_ms)
    } else {
        Duration::from_millis(nodes.heartbeat_interval_ms.max(100) as u64)
    };
    let metrics = metrics::Metrics::new();
    let workers = Workers::new(shutdown.token());
    workers.register_metrics(&mut metrics.registry.lock().unwrap_or_else(|e| e.into_inner()));
    let progress = Arc::new(Mutex::new(repair::Progress::default()));
    let rate = cfg.rate_bytes_per_sec();
    // Bursts of one second's worth: a repair bigger than that waits for its whole cost.
    let limit = RateLimit::new(rate, rate);
    let repairer = repair::Repairer::new(
        client.clone(),
        holder.clone(),
        cfg.repair_parallelism as usize,
        cfg.lease(),
        poll,
        Duration::from_secs(cfg.scan_interval_secs),
        limit.clone(),
        metrics.clone(),
        progress.clone(),
    );
    let mut tasks = vec![workers.spawn(repairer, WorkerOptions::default())];
    let gc_progress = Arc::new(Mutex::new(gc::GcProgress::default()));
    if cfg.gc_grace_secs > 0 {
        let collector = gc::Collector::new(
            client.clone(),
            Duration::from_secs(cfg.scan_interval_secs),
            Duration::from_secs(cfg.gc_grace_secs),
            metrics.clone(),
            gc_progress.clone(),
        );
        tasks.push(workers.spawn(collector, WorkerOptions::default()));
    }
    let audit_progress = Arc::new(Mutex::new(audit::AuditProgress::default()));
    if cfg.audit_period_secs > 0 {
        let auditor = audit::Auditor::new(
            client.clone(),
            Duration::from_secs(cfg.audit_period_secs),
            Duration::from_millis(cfg.audit_interval_ms),
            limit.clone(),
            metrics.clone(),
            audit_progress.clone(),
        );
        tasks.push(workers.spawn(auditor, WorkerOptions::default()));
    }
    let mut metrics_addr = None;
    if cfg.metrics.enabled {
        let health = {
            let (progress, workers, holder, audits, gc) = (
                progress.clone(),
                workers.clone(),
                holder.clone(),
                audit_progress.clone(),
                gc_progress.clone(),
            );
            Arc::new(move || {
                let p = progress.lock().unwrap_or_else(|e| e.into_inner()).clone();
                let mut details = serde_json::Map::new();
                details.insert("holder".into(), holder.clone().into());
                details.insert(
                    "repair".into(),
                    serde_json::to_value(&p).unwrap_or_default(),
                );
                let a = audits.lock().unwrap_or_else(|e| e.into_inner()).clone();
                details.insert("audit".into(), serde_json::to_value(&a).unwrap_or_default());
                let g = gc.lock().unwrap_or_else(|e| e.into_inner()).clone();
                details.insert("gc".into(), serde_json::to_value(&g).unwrap_or_default());
                details.insert(
                    "workers".into(),
                    serde_json::to_value(workers.list()).unwrap_or_default(),
                );
                Health {
                    healthy: p.unrecoverable_chunks == 0,
                    state: if p.degraded_chunks == 0 {
                        "healthy".into()
                    } else {
                        "repairing".into()
                    },
                    details,
                }
            })
        };
        let router =
            cyxcloud_daemon::ops::router(metrics.registry.clone(), health, "/metrics", "/health");
        let addr: SocketAddr = format!("{}:{}", cfg.metrics.host, cfg.metrics.port).parse()?;
        let ops = cyxcloud_daemon::ops::serve(addr, router, shutdown.clone()).await?;
        tracing::info!(addr = %ops.addr, "metrics and health listening");
        metrics_addr = Some(ops.addr);
        tasks.push(ops.task);
    }
    tracing::info!(holder = %holder, gateway = %cfg.gateway, poll = ?poll, "rebalancer running");
    Ok(Running {
        metrics_addr,
        tasks,
    })
}
