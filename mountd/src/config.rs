//! The daemon's one validated configuration: flags, then environment, then defaults.

use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Parser;

use crate::error::{Error, Result};

/// Default on-disk chunk cache bound.
pub const DEFAULT_CACHE_SIZE: u64 = 10 << 30;
/// Staged files wait this long after their last write before a background upload.
pub const DEFAULT_UPLOAD_DELAY: Duration = Duration::from_secs(2);
/// Files uploaded at the same time.
pub const DEFAULT_UPLOAD_WORKERS: usize = 4;
/// Staged files the upload queue holds before writers wait for it.
pub const DEFAULT_QUEUE_CAPACITY: usize = 4096;
/// How long the kernel may cache attributes and names. Changes made elsewhere reach the kernel
/// sooner: the journal stream invalidates each changed name and inode as it arrives (within
/// 2 s), so this only bounds staleness while the stream is down or resyncing. At 1 s, a
/// `stat` of every entry right after an `ls -l` of a 10,000-entry directory went back to the
/// daemon for each one.
pub const DEFAULT_ATTR_TTL: Duration = Duration::from_secs(10);

/// `cyxcloud-mountd <mountpoint> [options]`: mounts CyxCloud as a drive.
#[derive(Debug, Clone, Parser)]
#[command(name = "cyxcloud-mountd", version, about)]
pub struct Args {
    /// Where to mount (an existing empty directory).
    pub mountpoint: PathBuf,
    /// Mount one bucket instead of all buckets as top-level directories.
    #[arg(long)]
    pub bucket: Option<String>,
    /// Mount read-only.
    #[arg(long)]
    pub read_only: bool,
    /// Let other users access the mount (needs user_allow_other in /etc/fuse.conf for non-root).
    #[arg(long)]
    pub allow_other: bool,
    /// Owner shown for every entry (default: the stored owner).
    #[arg(long)]
    pub uid: Option<u32>,
    /// Group shown for every entry (default: the stored group).
    #[arg(long)]
    pub gid: Option<u32>,
    /// Cache directory (metadata, staged writes, chunk cache).
    #[arg(long)]
    pub cache_dir: Option<PathBuf>,
    /// Bound of the chunk cache, in bytes or with a unit (10G, 512M, 1T).
    #[arg(long, default_value = "10G")]
    pub cache_size: String,
    /// Stay in the foreground (default: detach once mounted).
    #[arg(long, short = 'f')]
    pub foreground: bool,
    /// The gateway's HTTP URL.
    #[arg(
        long,
        env = "CYXCLOUD_GATEWAY",
        default_value = "http://127.0.0.1:8080"
    )]
    pub gateway: String,
    /// The gateway's Control gRPC address (skips discovery through /api/info).
    #[arg(long, env = "CYXCLOUD_GRPC_ADDRESS")]
    pub grpc_address: Option<String>,
    /// CA certificate (PEM) that certifies an https:// gateway (the cluster CA).
    #[arg(long, env = "CYXCLOUD_CA_CERT")]
    pub ca_cert: Option<PathBuf>,
    #[arg(long, env = "CYXCLOUD_ACCESS_KEY", hide_env_values = true)]
    pub access_key: Option<String>,
    #[arg(long, env = "CYXCLOUD_SECRET_KEY", hide_env_values = true)]
    pub secret_key: Option<String>,
    /// Seconds a written file waits after its last write before a background upload.
    #[arg(long, env = "CYXCLOUD_MOUNT_UPLOAD_DELAY_MS", default_value_t = DEFAULT_UPLOAD_DELAY.as_millis() as u64)]
    pub upload_delay_ms: u64,
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub mountpoint: PathBuf,
    pub bucket: Option<String>,
    pub read_only: bool,
    pub allow_other: bool,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub cache_dir: PathBuf,
    pub cache_size: u64,
    pub foreground: bool,
    pub gateway: String,
    pub grpc_address: Option<String>,
    /// The CA certificate (PEM) for an https:// gateway.
    pub ca_pem: Option<Vec<u8>>,
    pub access_key: String,
    pub secret_key: String,
    pub upload_delay: Duration,
    pub upload_workers: usize,
    pub queue_capacity: usize,
    pub attr_ttl: Duration,
}

impl Config {
    pub fn from_args(a: Args) -> Result<Config> {
        let mountpoint = std::path::absolute(&a.mountpoint)
            .map_err(|e| Error::Config(format!("mountpoint {}: {e}", a.mountpoint.display())))?;
        let cache_size = parse_size(&a.cache_size)?;
        let cache_dir = match a.cache_dir {
            Some(d) => std::path::absolute(&d)
                .map_err(|e| Error::Config(format!("cache dir {}: {e}", d.display())))?,
            None => default_cache_dir(&mountpoint, a.bucket.as_deref()),
        };
        let ca_pem = match &a.ca_cert {
            Some(p) => Some(
                std::fs::read(p)
                    .map_err(|e| Error::Config(format!("CA certificate {}: {e}", p.display())))?,
            ),
            None => None,
        };
        let cfg = Config {
            mountpoint,
            bucket: a.bucket.filter(|b| !b.is_empty()),
            read_only: a.read_only,
            allow_other: a.allow_other,
            uid: a.uid,
            gid: a.gid,
            cache_dir,
            cache_size,
            foreground: a.foreground,
            gateway: a.gateway,
            grpc_address: a.grpc_address.filter(|s| !s.is_empty()),
            ca_pem,
            access_key: a.access_key.unwrap_or_default(),
            secret_key: a.secret_key.unwrap_or_default(),
            upload_delay: Duration::from_millis(a.upload_delay_ms),
            upload_workers: DEFAULT_UPLOAD_WORKERS,
            queue_capacity: DEFAULT_QUEUE_CAPACITY,
            attr_ttl: DEFAULT_ATTR_TTL,
        };
        cfg.validate()?;
        Ok(cfg)
    }

    pub fn validate(&self) -> Result<()> {
        if self.access_key.is_empty() || self.secret_key.is_empty() {
            return Err(Error::Config(
                "credentials missing: set CYXCLOUD_ACCESS_KEY and CYXCLOUD_SECRET_KEY".into(),
            ));
        }
        if !self.gateway.starts_with("http://") && !self.gateway.starts_with("https://") {
            return Err(Error::Config(format!(
                "gateway URL {:?} must start with http://",
                self.gateway
            )));
        }
        if self.cache_size < (64 << 20) {
            return Err(Error::Config(format!(
                "cache size {} is below the 64 MiB minimum (one chunk)",
                self.cache_size
            )));
        }
        if self.cache_dir.starts_with(&self.mountpoint) {
            return Err(Error::Config(
                "the cache directory cannot be inside the mountpoint".into(),
            ));
        }
        Ok(())
    }
}

/// `10G`, `512M`, `1T`, `64KiB`, `1048576` → bytes (binary units).
pub fn parse_size(s: &str) -> Result<u64> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let bad = || Error::Config(format!("bad size {s:?} (examples: 10G, 512M, 1073741824)"));
    let n: f64 = num.parse().map_err(|_| bad())?;
    let mult: u64 = match unit.trim().to_ascii_uppercase().as_str() {
        "" | "B" => 1,
        "K" | "KB" | "KIB" => 1 << 10,
        "M" | "MB" | "MIB" => 1 << 20,
        "G" | "GB" | "GIB" => 1 << 30,
        "T" | "TB" | "TIB" => 1 << 40,
        _ => return Err(bad()),
    };
    let v = n * mult as f64;
    if !v.is_finite() || v < 0.0 || v > u64::MAX as f64 {
        return Err(bad());
    }
    Ok(v as u64)
}

/// `$XDG_CACHE_HOME/cyxcloud/mounts/<hash of mountpoint and bucket>` (or under `~/.cache`).
pub fn default_cache_dir(mountpoint: &Path, bucket: Option<&str>) -> PathBuf {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from("/var/tmp"));
    let key = format!("{}\0{}", mountpoint.display(), bucket.unwrap_or(""));
    let h = cyxcloud_core::Hash::of(key.as_bytes()).to_hex();
    base.join("cyxcloud").join("mounts").join(&h[..16])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_units() {
        assert_eq!(parse_size("10G").unwrap(), 10 << 30);
        assert_eq!(parse_size("512M").unwrap(), 512 << 20);
        assert_eq!(parse_size("1TiB").unwrap(), 1 << 40);
        assert_eq!(parse_size("1.5G").unwrap(), 3 << 29);
        assert_eq!(parse_size("4096").unwrap(), 4096);
        for bad in ["", "G", "10X", "-1G", "1e400"] {
            assert!(parse_size(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn config_needs_credentials_and_sane_paths() {
        let mut a = Args::parse_from(["m", "/mnt/x", "--cache-dir", "/tmp/c"]);
        a.access_key = None;
        assert!(Config::from_args(a.clone()).is_err());
        a.access_key = Some("k".into());
        a.secret_key = Some("s".into());
        let c = Config::from_args(a.clone()).unwrap();
        assert_eq!(c.cache_size, 10 << 30);
        a.cache_dir = Some("/mnt/x/cache".into());
        assert!(Config::from_args(a).is_err());
    }
}
