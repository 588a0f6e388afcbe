//! `cyxcloud mount <mountpoint> [options]`, `cyxcloud mount status`, `cyxcloud unmount
//! <mountpoint>`: thin front ends of `cyxcloud-mountd` (which detaches once mounted and keeps
//! `status.json` in its cache dir under `$XDG_CACHE_HOME/cyxcloud/mounts/`).

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::args::{Cli, MountArgs, UnmountArgs};
use crate::output::human;
use crate::procs;

pub async fn mount(cli: &Cli, a: &MountArgs) -> anyhow::Result<ExitCode> {
    if a.mountpoint.as_os_str() == "status" && a.options.is_empty() {
        return status(cli);
    }
    let s = crate::settings::resolve(cli)?;
    let mut cmd = Command::new(procs::sibling("cyxcloud-mountd")?);
    cmd.arg(&a.mountpoint)
        .args(&a.options)
        .env("CYXCLOUD_GATEWAY", &s.gateway)
        .env("CYXCLOUD_ACCESS_KEY", &s.access_key)
        .env("CYXCLOUD_SECRET_KEY", &s.secret_key);
    if let Some(ca) = &s.ca_cert {
        cmd.env("CYXCLOUD_CA_CERT", std::fs::canonicalize(ca)?);
    }
    let st = cmd.status().context("cannot run cyxcloud-mountd")?;
    Ok(ExitCode::from(st.code().unwrap_or(1).clamp(0, 255) as u8))
}

fn mounts_dir() -> PathBuf {
    std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from("/var/tmp"))
        .join("cyxcloud")
        .join("mounts")
}

/// Status documents of mounts whose daemon is alive.
fn live_mounts() -> Vec<serde_json::Value> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(mounts_dir()) else {
        return out;
    };
    for e in rd.flatten() {
        let Ok(text) = std::fs::read_to_string(e.path().join("status.json")) else {
            continue;
        };
        let Ok(v) = serde_json::from_str::<serde_json::Value>(&text) else {
            continue;
        };
        if v["pid"].as_u64().is_some_and(|p| procs::alive(p as u32))
            && v["mounted"].as_bool() == Some(true)
        {
            out.push(v);
        }
    }
    out
}

fn status(cli: &Cli) -> anyhow::Result<ExitCode> {
    let mounts = live_mounts();
    if cli.json {
        println!("{}", serde_json::to_string_pretty(&mounts)?);
        return Ok(ExitCode::SUCCESS);
    }
    if mounts.is_empty() {
        println!("No CyxCloud drives mounted.");
        return Ok(ExitCode::SUCCESS);
    }
    for m in &mounts {
        let online = m["online"].as_bool().unwrap_or(false);
        println!(
            "{}  ({})",
            m["mountpoint"].as_str().unwrap_or("?"),
            if online {
                "● online"
            } else {
                "○ offline: serving cached data"
            }
        );
        if let Some(b) = m["bucket"].as_str() {
            println!("  Bucket:   {b}");
        }
        println!("  Gateway:  {}", m["gateway"].as_str().unwrap_or("?"));
        println!(
            "  Cache:    {} of {}",
            human(m["cache_bytes"].as_u64().unwrap_or(0)),
            human(m["cache_limit_bytes"].as_u64().unwrap_or(0))
        );
        let queued = m["queued_uploads"].as_u64().unwrap_or(0);
        println!(
            "  Pending:  {queued} files not yet durable ({})",
            human(m["pending_bytes"].as_u64().unwrap_or(0))
        );
        for f in m["files"].as_array().into_iter().flatten() {
            let err = f["error"]
                .as_str()
                .filter(|e| !e.is_empty())
                .map(|e| format!(" ({e})"))
                .unwrap_or_default();
            println!(
                "    {} {} [{}]{err}",
                f["path"].as_str().unwrap_or("?"),
                human(f["size"].as_u64().unwrap_or(0)),
                f["state"].as_str().unwrap_or("?")
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn unmount(cli: &Cli, a: &UnmountArgs) -> anyhow::Result<ExitCode> {
    let point = std::fs::canonicalize(&a.mountpoint).unwrap_or_else(|_| a.mountpoint.clone());
    let pid = live_mounts()
        .iter()
        .find(|m| {
            m["mountpoint"]
                .as_str()
                .map(PathBuf::from)
                .is_some_and(|p| p == point || p == a.mountpoint)
        })
        .and_then(|m| m["pid"].as_u64());
    let st = Command::new("fusermount3")
        .arg("-u")
        .arg(&point)
        .status()
        .context("cannot run fusermount3 (package fuse3)")?;
    if !st.success() {
        bail!(
            "fusermount3 -u {} failed ({st}); is it mounted, and are files open on it?",
            point.display()
        );
    }
    if let Some(pid) = pid {
        // The daemon uploads what is still queued, then exits.
        let deadline = Instant::now() + Duration::from_secs(120);
        while procs::alive(pid as u32) && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    if cli.json {
        println!("{}", serde_json::json!({"unmounted": point}));
    } else {
        println!("✓ Unmounted {}", point.display());
    }
    Ok(ExitCode::SUCCESS)
}
