//! `cyxcloud-mountd`: the CyxCloud drive. A FUSE filesystem (fuser) whose top-level
//! directories are the user's buckets (or one bucket). It talks to the gateway's Control API
//! for the namespace and stripes file bytes directly to and from the storage nodes with
//! `cyxcloud-client`.
//!
//! * [`store`]: the local SQLite cache of names, attributes and layouts (and the write journal),
//!   behind a trait with an in-memory twin.
//! * [`drive`], [`nsops`], [`fileops`]: the operations; [`fs`] is the FUSE adapter and
//!   [`errno`] the one place errors become errno values.
//! * [`staging`] + [`upload`]: writes land in a local staged copy, journalled, and are striped to
//!   nodes in the background, at close, or at `fsync` (which waits for the commit).
//! * [`chunkcache`]: decoded chunks on disk, LRU-bounded, verified on use.
//! * [`watch`]: the change journal keeps the cache current and invalidates the kernel's.
//! * [`status`]: `status.json` in the cache directory for `cyxcloud mount status`.
//!
//! Depends on `core`, `proto`, `client` and `daemon`; nothing depends on it.

pub mod chunkcache;
pub mod config;
pub mod drive;
pub mod errno;
pub mod error;
pub mod fileops;
pub mod fs;
pub mod ids;
pub mod nsops;
pub mod remote;
pub mod staging;
pub mod status;
pub mod store;
pub mod upload;
pub mod watch;

use std::sync::Arc;
use std::time::{Duration, Instant};

use fuser::{MountOption, SessionACL};
use tokio_util::sync::CancellationToken;

pub use config::{Args, Config};
pub use error::{Error, Result};

use crate::drive::{Drive, lock_cache_dir};

/// How long a clean unmount waits for queued uploads before leaving them to the next start.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Mounts and serves until unmounted (`fusermount3 -u`, SIGTERM or SIGINT).
pub fn run(cfg: Config) -> Result<()> {
    let _lock = lock_cache_dir(&cfg)?;
    prepare_mountpoint(&cfg.mountpoint)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .thread_name("mountd")
        .enable_all()
        .build()?;
    let drive = rt.block_on(Drive::start(cfg.clone()))?.into_arc();
    tracing::info!(
        mountpoint = %cfg.mountpoint.display(),
        bucket = ?cfg.bucket,
        gateway = %cfg.gateway,
        cache_dir = %cfg.cache_dir.display(),
        cache_size = cfg.cache_size,
        read_only = cfg.read_only,
        "mounting"
    );

    let mut options = fuser::Config::default();
    options.mount_options = vec![
        MountOption::FSName("cyxcloud".into()),
        MountOption::Subtype("cyxcloud".into()),
        MountOption::DefaultPermissions,
        MountOption::NoDev,
        MountOption::NoSuid,
        if cfg.read_only {
            MountOption::RO
        } else {
            MountOption::RW
        },
    ];
    options.acl = if cfg.allow_other {
        SessionACL::All
    } else {
        SessionACL::Owner
    };
    options.n_threads = Some(4);
    options.clone_fd = true;

    let fs = fs::Fs {
        d: drive.clone(),
        rt: rt.handle().clone(),
    };
    let mut session = fuser::Session::new(fs, &cfg.mountpoint, &options)?;
    drive.start_invalidator(session.notifier());
    let mut unmounter = session.unmount_callable();

    let stop = CancellationToken::new();
    rt.spawn(watch::run(drive.clone(), stop.clone()));
    rt.spawn(upload::run(drive.clone(), cfg.upload_workers, stop.clone()));
    // Ids for new files, fetched before the drive is served so that creates work even if
    // the gateway goes away; a gateway that is down now only delays them to the first create.
    if !cfg.read_only
        && let Err(e) = rt.block_on(async {
            tokio::time::timeout(Duration::from_secs(5), drive.reserve_ids())
                .await
                .map_err(|_| Error::Offline("reserving inode ids timed out".into()))?
        })
    {
        tracing::info!(error = %e, "no inode ids reserved yet");
    }
    {
        let (d, s) = (drive.clone(), stop.clone());
        rt.spawn(async move { d.staging.run_scheduler(s).await });
    }
    rt.spawn(status::run(drive.clone(), stop.clone()));

    let shutdown = cyxcloud_daemon::Shutdown::new();
    {
        let _g = rt.enter();
        shutdown.listen_for_signals(None);
    }
    let unmounted = CancellationToken::new();
    {
        let (sd, done) = (shutdown.clone(), unmounted.clone());
        rt.spawn(async move {
            tokio::select! {
                _ = sd.wait() => {}
                _ = done.cancelled() => return,
            }
            tracing::info!("unmounting");
            let r = tokio::task::spawn_blocking(move || unmounter.unmount()).await;
            if let Ok(Err(e)) = r {
                tracing::error!(error = %e, "unmount failed");
            }
            sd.wait_now().await;
            tracing::warn!("exiting now; staged writes are uploaded at the next start");
            std::process::exit(1);
        });
    }
    tracing::info!("mounted");
    let served = session.run();
    unmounted.cancel();
    tracing::info!("unmounted");
    status::write(&drive, false);
    rt.block_on(drain(&drive));
    stop.cancel();
    if let Err(e) = drive.chunks.flush() {
        tracing::warn!(error = %e, "cannot flush the chunk index");
    }
    status::write(&drive, false);
    rt.shutdown_timeout(Duration::from_secs(2));
    served.map_err(Error::Io)
}

/// Gives queued uploads a little time to finish after an unmount.
async fn drain(d: &Arc<Drive>) {
    let started = Instant::now();
    for sf in d.staging.all() {
        d.staging.upload_now(&sf);
    }
    loop {
        let (n, _) = d.staging.pending();
        if n == 0 {
            return;
        }
        if started.elapsed() > DRAIN_TIMEOUT
            || (!d.remote.is_online() && started.elapsed() > Duration::from_secs(2))
        {
            tracing::warn!(files = n, "leaving staged files for the next start");
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A mountpoint left by a killed daemon answers ENOTCONN: detach it first.
fn prepare_mountpoint(p: &std::path::Path) -> Result<()> {
    match std::fs::metadata(p) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => Err(Error::Config(format!("{} is not a directory", p.display()))),
        Err(e) if e.raw_os_error() == Some(libc::ENOTCONN) => {
            tracing::warn!(mountpoint = %p.display(), "stale mount found; detaching it");
            let st = std::process::Command::new("fusermount3")
                .arg("-u")
                .arg("-z")
                .arg(p)
                .status()?;
            if !st.success() {
                return Err(Error::Config(format!(
                    "{} is a dead mount and fusermount3 -u failed",
                    p.display()
                )));
            }
            Ok(())
        }
        Err(e) => Err(Error::Config(format!("mountpoint {}: {e}", p.display()))),
    }
}
