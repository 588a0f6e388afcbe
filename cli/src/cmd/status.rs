//! `cyxcloud status [-b BUCKET] [-v]`

use std::process::ExitCode;

use cyxcloud_client::ClientError;
use cyxcloud_proto::v1;

use crate::args::{Cli, StatusArgs};
use crate::output::{human, human1, rfc3339};

pub async fn run(cli: &Cli, a: &StatusArgs) -> anyhow::Result<ExitCode> {
    let client = match super::connect(cli).await {
        Ok(c) => c,
        Err(e) => {
            if cli.json {
                println!(
                    "{}",
                    serde_json::json!({"gateway": "offline", "error": format!("{e:#}")})
                );
            } else {
                println!("CyxCloud Storage Status\n");
                println!("Gateway Status: ● Offline");
                println!("  {e:#}");
            }
            return Ok(ExitCode::from(5));
        }
    };
    let cluster = client
        .control()
        .cluster_status(v1::ClusterStatusRequest {})
        .await
        .map_err(|s| ClientError::rpc("cluster status", s))?
        .into_inner();
    let Some(bucket) = &a.bucket else {
        return cluster_view(cli, a, &cluster);
    };
    let mut objects = super::list_all(&client, bucket, "", None).await?;
    objects.retain(|o| !o.path.ends_with('/'));
    let total: u64 = objects.iter().map(|o| o.size).sum();
    objects.sort_by(|x, y| {
        y.mtime_ns
            .cmp(&x.mtime_ns)
            .then_with(|| x.path.cmp(&y.path))
    });
    if cli.json {
        let recent: Vec<_> = objects.iter().take(10).map(|o| serde_json::json!({"key": o.path, "size": o.size, "last_modified": rfc3339(o.mtime_ns)})).collect();
        println!(
            "{}",
            serde_json::to_string_pretty(
                &serde_json::json!({"gateway": "online", "bucket": bucket, "objects": objects.len(), "total_bytes": total, "recent": recent})
            )?
        );
        return Ok(ExitCode::SUCCESS);
    }
    println!("CyxCloud Storage Status\n");
    println!("Gateway Status: ● Online\n");
    println!("Bucket: {bucket}\n");
    println!("  Objects:      {}", objects.len());
    println!("  Total Size:   {}", human(total));
    if !objects.is_empty() {
        let show = if a.verbose { 20 } else { 2 };
        println!("\n  Recent Objects:");
        for o in objects.iter().take(show) {
            println!(
                "    {} ({}) - {}",
                o.path,
                human1(o.size),
                rfc3339(o.mtime_ns)
            );
        }
        if objects.len() > show {
            println!("    ... and {} more objects...", objects.len() - show);
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn state_name(s: i32) -> &'static str {
    match v1::NodeState::try_from(s) {
        Ok(v1::NodeState::Online) => "online",
        Ok(v1::NodeState::Offline) => "offline",
        Ok(v1::NodeState::Draining) => "draining",
        Ok(v1::NodeState::Drained) => "drained",
        _ => "unknown",
    }
}

/// What a user who is not an admin is shown: its own usage (the gateway tells it nothing of
/// the nodes or the cluster's totals).
fn account_view(cli: &Cli, c: &v1::ClusterStatusResponse) -> anyhow::Result<ExitCode> {
    if cli.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "gateway": "online", "version": c.version, "scope": "account",
                "buckets": c.buckets, "files": c.files, "logical_bytes": c.logical_bytes,
                "used_bytes": c.used_bytes,
                "quota_bytes": (c.quota_bytes > 0).then_some(c.quota_bytes),
            }))?
        );
        return Ok(ExitCode::SUCCESS);
    }
    println!("CyxCloud Storage Status\n");
    println!("Gateway Status: ● Online  (version {})\n", c.version);
    println!("  Your account (cluster details are for admins)");
    println!("  Buckets:      {}", c.buckets);
    println!("  Objects:      {} ({})", c.files, human(c.logical_bytes));
    if c.quota_bytes > 0 {
        println!(
            "  Quota:        {} used of {}",
            human(c.used_bytes),
            human(c.quota_bytes)
        );
    } else {
        println!("  Quota:        {} used, no limit", human(c.used_bytes));
    }
    Ok(ExitCode::SUCCESS)
}

fn cluster_view(
    cli: &Cli,
    a: &StatusArgs,
    c: &v1::ClusterStatusResponse,
) -> anyhow::Result<ExitCode> {
    if c.caller_only {
        return account_view(cli, c);
    }
    let online = c
        .nodes
        .iter()
        .filter(|n| n.state == v1::NodeState::Online as i32)
        .count();
    let capacity: u64 = c.nodes.iter().map(|n| n.capacity_bytes).sum();
    let used: u64 = c.nodes.iter().map(|n| n.used_bytes).sum();
    if cli.json {
        let nodes: Vec<_> = c
            .nodes
            .iter()
            .map(|n| serde_json::json!({"id": n.node_id, "address": n.address, "state": state_name(n.state), "capacity_bytes": n.capacity_bytes, "used_bytes": n.used_bytes, "shards": n.shard_count,
                "audit": n.audit.as_ref().map(|a| serde_json::json!({"audits": a.audits, "failures": a.failures, "consecutive_failures": a.consecutive_failures, "score": a.score, "last_error": a.last_error}))}))
            .collect();
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "gateway": "online", "version": c.version, "nodes_online": online, "nodes": nodes,
                "capacity_bytes": capacity, "used_bytes": used, "buckets": c.buckets, "files": c.files,
                "logical_bytes": c.logical_bytes, "chunks": c.chunks, "pending_repairs": c.pending_repairs,
                "repair_bytes": c.repair_bytes, "repair_bytes_per_sec": c.repair_bytes_per_sec,
                "repair_eta_secs": (c.repair_eta_secs > 0).then_some(c.repair_eta_secs),
                "workers": c.workers.iter().map(|w| serde_json::json!({
                    "name": w.name, "state": w.state, "steps": w.steps, "errors": w.errors,
                    "consecutive_errors": w.consecutive_errors, "last_error": w.last_error,
                    "progress": w.progress, "lease_held": w.has_lease.then_some(w.lease_held),
                })).collect::<Vec<_>>(),
            }))?
        );
        return Ok(ExitCode::SUCCESS);
    }
    println!("CyxCloud Storage Status\n");
    println!("Gateway Status: ● Online  (version {})\n", c.version);
    println!("  Nodes:        {online} online of {}", c.nodes.len());
    println!(
        "  Capacity:     {} used of {}",
        human(used),
        human(capacity)
    );
    println!("  Buckets:      {}", c.buckets);
    println!("  Objects:      {} ({})", c.files, human(c.logical_bytes));
    println!("  Chunks:       {}", c.chunks);
    if c.pending_repairs > 0 {
        let eta = if c.repair_eta_secs > 0 {
            format!(
                " at {}/s, about {} left",
                human(c.repair_bytes_per_sec as u64),
                duration(c.repair_eta_secs)
            )
        } else {
            String::new()
        };
        println!(
            "  Repairs:      {} chunks below full redundancy, {} to rebuild{eta}",
            c.pending_repairs,
            human(c.repair_bytes)
        );
    } else {
        println!("  Redundancy:   every chunk complete");
    }
    if a.verbose {
        println!(
            "\n  {:<20} {:<10} {:<24} {:>12} {:>12} {:>8} {:>14}",
            "NODE", "STATE", "ADDRESS", "USED", "CAPACITY", "SHARDS", "AUDITS"
        );
        for n in &c.nodes {
            println!(
                "  {:<20} {:<10} {:<24} {:>12} {:>12} {:>8} {:>14}",
                n.node_id,
                state_name(n.state),
                n.address,
                human(n.used_bytes),
                human(n.capacity_bytes),
                n.shard_count,
                audit_column(n.audit.as_ref())
            );
        }
        if !c.workers.is_empty() {
            // Only admins are shown the gateway's background workers.
            println!(
                "\n  {:<20} {:<10} {:>10} {:>7}  PROGRESS / LAST ERROR",
                "WORKER", "STATE", "STEPS", "ERRORS"
            );
            for w in &c.workers {
                let note = if w.state == "error" || (w.errors > 0 && w.progress.is_empty()) {
                    w.last_error.as_str()
                } else {
                    w.progress.as_str()
                };
                println!(
                    "  {:<20} {:<10} {:>10} {:>7}  {}",
                    w.name, w.state, w.steps, w.errors, note
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `90` → "1 min 30 s", `7300` → "2 h 1 min".
fn duration(secs: u64) -> String {
    match secs {
        0..60 => format!("{secs} s"),
        60..3600 => format!("{} min {} s", secs / 60, secs % 60),
        _ => format!("{} h {} min", secs / 3600, secs % 3600 / 60),
    }
}

/// "99.5% of 200" (success ratio of the node's audits), or "-" before its first audit.
fn audit_column(a: Option<&v1::AuditScore>) -> String {
    match a {
        Some(a) if a.audits > 0 => format!("{:.1}% of {}", a.score * 100.0, a.audits),
        _ => "-".to_string(),
    }
}
