//! `cyxcloud-mountd <mountpoint> [--bucket B] [--read-only] [--allow-other] [--uid U --gid G]
//! [--cache-dir DIR] [--cache-size 10G] [--foreground]`.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use cyxcloud_mountd::{Args, Config};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let cfg = Config::from_args(args).context("invalid configuration")?;
    if !cfg.foreground {
        return detach(&cfg);
    }
    cyxcloud_daemon::logging::init("info");
    cyxcloud_mountd::run(cfg).context("mountd failed")
}

/// Starts the daemon in the background (its log in the cache directory) and returns once the
/// drive is mounted, or with the daemon's error.
fn detach(cfg: &Config) -> anyhow::Result<()> {
    std::fs::create_dir_all(&cfg.cache_dir)
        .with_context(|| format!("cannot create {}", cfg.cache_dir.display()))?;
    let log_path = cfg.cache_dir.join("mountd.log");
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)?;
    let start = std::fs::metadata(&log_path).map_or(0, |m| m.len());
    let exe = std::env::current_exe()?;
    let mut cmd = Command::new(exe);
    cmd.args(std::env::args_os().skip(1))
        .arg("--foreground")
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    let mut child = cmd.spawn().context("cannot start the daemon")?;
    let pid = child.id();
    let status_path = cfg.cache_dir.join("status.json");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(st) = child.try_wait()? {
            let text = std::fs::read_to_string(&log_path).unwrap_or_default();
            let tail = text.get(start as usize..).unwrap_or(&text);
            anyhow::bail!("mountd exited ({st}):\n{tail}");
        }
        if let Ok(s) = std::fs::read_to_string(&status_path)
            && let Ok(v) = serde_json::from_str::<serde_json::Value>(&s)
            && v["pid"].as_u64() == Some(pid as u64)
            && v["mounted"].as_bool() == Some(true)
        {
            println!(
                "mounted {} (pid {pid}, log {})",
                cfg.mountpoint.display(),
                log_path.display()
            );
            return Ok(());
        }
        if Instant::now() > deadline {
            anyhow::bail!(
                "mountd did not report a mount within 60 s; see {}",
                log_path.display()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
