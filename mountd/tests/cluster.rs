//! A live cluster for the drive's tests: the testkit's cluster (a real `cyxcloud-gateway` on
//! SQLite and real `cyxcloud-node` processes on free ports), plus real `cyxcloud-mountd`
//! mounts. Every process is killed when its handle drops; mounts are unmounted first.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use cyxcloud_client::{Client, ClientConfig};
use cyxcloud_proto::v1;
use cyxcloud_testkit::cluster::ClusterOptions;
use cyxcloud_testkit::{Proc, TempDir, bin, tempdir, wait_until};

pub use cyxcloud_testkit::cluster::{ACCESS_KEY, SECRET_KEY};
const START: Duration = Duration::from_secs(60);

/// The testkit's cluster (its gateway, nodes, rebalancer and fault operations) with a
/// runtime for the client library calls the drive's tests make beside the mounts.
pub struct Cluster {
    pub tk: cyxcloud_testkit::cluster::Cluster,
    pub rt: tokio::runtime::Runtime,
}

impl std::ops::Deref for Cluster {
    type Target = cyxcloud_testkit::cluster::Cluster;
    fn deref(&self) -> &Self::Target {
        &self.tk
    }
}

impl std::ops::DerefMut for Cluster {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.tk
    }
}

impl Cluster {
    /// A gateway with `nodes` storage nodes, all registered; 4 MiB chunks; no rebalancer
    /// unless [`start_rebalancer`](cyxcloud_testkit::cluster::Cluster::start_rebalancer).
    pub fn start(nodes: usize) -> Cluster {
        Cluster::start_with(nodes, &[])
    }

    /// [`Cluster::start`] with extra gateway settings (`key=value`).
    pub fn start_with(nodes: usize, settings: &[&str]) -> Cluster {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let tk = cyxcloud_testkit::cluster::Cluster::start(ClusterOptions {
            nodes,
            chunk_size: Some(4 << 20),
            rebalancer: false,
            gateway_settings: std::iter::once("nodes.latency_probe_ms=1000")
                .chain(settings.iter().copied())
                .map(String::from)
                .collect(),
            ..Default::default()
        });
        Cluster { tk, rt }
    }

    /// Waits until the gateway counts `offline` nodes offline, then until no chunk is below
    /// full redundancy (the rebalancer repaired them).
    pub fn wait_repaired(&self, offline: usize, timeout: Duration) {
        let c = self.client();
        wait_until(timeout, "every chunk at full redundancy", || {
            let mut m = c.maintenance();
            // Node states first: a count read before the nodes went offline is 0.
            let nodes = self
                .rt
                .block_on(m.nodes(v1::MaintenanceNodesRequest {}))
                .ok()?
                .into_inner();
            let down = nodes
                .nodes
                .iter()
                .filter(|n| n.state == v1::NodeState::Offline as i32)
                .count();
            let d = self
                .rt
                .block_on(m.degraded(v1::DegradedRequest {
                    limit: 1,
                    exclude: vec![],
                }))
                .ok()?
                .into_inner();
            (down >= offline && d.total == 0).then_some(())
        });
    }

    /// A client of the gateway as the admin.
    pub fn client(&self) -> Client {
        let cfg = ClientConfig::new(self.grpc_url(), ACCESS_KEY, SECRET_KEY);
        self.rt.block_on(Client::connect(cfg)).unwrap()
    }

    /// Names in bucket `bucket` at the gateway, by S3-style listing.
    pub fn list(&self, bucket: &str) -> Vec<String> {
        let c = self.client();
        let r = self
            .rt
            .block_on(c.control().list_objects(v1::ListObjectsRequest {
                bucket: bucket.into(),
                max_keys: 1000,
                ..Default::default()
            }))
            .unwrap()
            .into_inner();
        r.objects.into_iter().map(|o| o.path).collect()
    }

    /// A user who is not an admin, with a storage quota (0: none): (access key, secret key).
    pub fn create_user(&self, name: &str, quota_bytes: u64) -> (String, String) {
        let c = self.client();
        let u = self
            .rt
            .block_on(c.control().create_user(v1::CreateUserRequest {
                name: name.into(),
                quota_bytes,
                admin: false,
            }))
            .unwrap()
            .into_inner();
        (u.access_key, u.secret_key)
    }

    pub fn create_bucket(&self, name: &str) {
        let c = self.client();
        self.rt
            .block_on(c.control().create_bucket(v1::CreateBucketRequest {
                name: name.into(),
                public_read: false,
            }))
            .unwrap();
    }
}

/// A running `cyxcloud-mountd`.
pub struct Mount {
    pub proc: Option<Proc>,
    pub path: PathBuf,
    pub cache: PathBuf,
    args: Vec<String>,
    env: Vec<(String, String)>,
    _dir: TempDir,
    starts: u32,
    log: String,
}

impl Mount {
    /// Mounts all buckets (or pass `--bucket B` etc. in `args`).
    pub fn start(c: &Cluster, args: &[&str]) -> Mount {
        Mount::start_logging(c, args, "info,cyxcloud_mountd=debug")
    }

    /// [`Mount::start`] with another user's access key.
    pub fn start_as(c: &Cluster, args: &[&str], (access, secret): (&str, &str)) -> Mount {
        Mount::start_with(c, args, "info,cyxcloud_mountd=debug", (access, secret))
    }

    /// [`Mount::start`] with log filter `log` (`RUST_LOG`).
    pub fn start_logging(c: &Cluster, args: &[&str], log: &str) -> Mount {
        Mount::start_with(c, args, log, (ACCESS_KEY, SECRET_KEY))
    }

    fn start_with(c: &Cluster, args: &[&str], log: &str, (access, secret): (&str, &str)) -> Mount {
        let dir = tempdir().unwrap();
        let path = dir.path().join("mnt");
        let cache = dir.path().join("cache");
        std::fs::create_dir_all(&path).unwrap();
        let mut m = Mount {
            proc: None,
            path,
            cache,
            args: args.iter().map(|s| s.to_string()).collect(),
            env: vec![
                ("CYXCLOUD_GATEWAY".into(), c.http_url()),
                ("CYXCLOUD_GRPC_ADDRESS".into(), c.grpc_url()),
                ("CYXCLOUD_ACCESS_KEY".into(), access.into()),
                ("CYXCLOUD_SECRET_KEY".into(), secret.into()),
            ],
            _dir: dir,
            starts: 0,
            log: log.to_string(),
        };
        m.launch();
        m
    }

    pub fn launch(&mut self) {
        self.starts += 1;
        let mut cmd = Command::new(bin("cyxcloud-mountd"));
        cmd.arg(&self.path)
            .arg("--foreground")
            .arg("--cache-dir")
            .arg(&self.cache)
            .args(&self.args)
            .env("RUST_LOG", &self.log);
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        let log = self
            .cache
            .parent()
            .unwrap()
            .join(format!("mountd-{}.log", self.starts));
        let p = Proc::spawn("mountd", cmd, &log);
        let pid = p.pid();
        self.proc = Some(p);
        let status = self.cache.join("status.json");
        wait_until(START, "the drive to mount", || {
            let s = std::fs::read_to_string(&status).ok()?;
            let v: serde_json::Value = serde_json::from_str(&s).ok()?;
            (v["pid"].as_u64() == Some(pid as u64) && v["mounted"].as_bool() == Some(true))
                .then_some(())
        });
        wait_until(START, "the mountpoint to answer", || {
            is_fuse_mount(&self.path).then_some(())
        });
    }

    pub fn p(&self, rel: &str) -> PathBuf {
        self.path.join(rel)
    }

    pub fn status(&self) -> serde_json::Value {
        let s = std::fs::read_to_string(self.cache.join("status.json")).unwrap();
        serde_json::from_str(&s).unwrap()
    }

    pub fn log(&self) -> String {
        self.proc.as_ref().map(Proc::log).unwrap_or_default()
    }

    /// SIGKILL: the daemon dies, the mount is left dead.
    pub fn kill9(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.kill9();
        }
        let _ = Command::new("fusermount3")
            .args(["-u", "-z"])
            .arg(&self.path)
            .status();
    }

    /// Clean unmount with `fusermount3 -u`; waits for the daemon to exit.
    pub fn unmount(&mut self) {
        let st = Command::new("fusermount3")
            .arg("-u")
            .arg(&self.path)
            .status()
            .unwrap();
        assert!(st.success(), "fusermount3 -u failed");
        if let Some(mut p) = self.proc.take() {
            let s = p.wait_exit(Duration::from_secs(30));
            assert!(s.success(), "mountd exited with {s}:\n{}", p.log());
        }
    }

    /// Waits until `rel` is committed at the gateway (its `user.cyxcloud.state` says so).
    pub fn wait_durable(&self, rel: &str) {
        let p = self.p(rel);
        wait_until(
            Duration::from_secs(120),
            &format!("{rel} to be durable"),
            || (state(&p).as_deref() == Some("durable")).then_some(()),
        );
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        if self.proc.is_some() {
            let _ = Command::new("fusermount3")
                .args(["-u", "-z"])
                .arg(&self.path)
                .status();
        }
    }
}

pub fn is_fuse_mount(p: &Path) -> bool {
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    let want = p.display().to_string();
    mounts
        .lines()
        .any(|l| l.split_whitespace().nth(1) == Some(want.as_str()) && l.contains("fuse"))
}

/// Deterministic bytes.
pub fn data(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut v = Vec::with_capacity(len + 8);
    while v.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(len);
    v
}

pub fn sh(cmd: &str) -> String {
    let out = Command::new("bash").arg("-c").arg(cmd).output().unwrap();
    assert!(
        out.status.success(),
        "`{cmd}` failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The `user.cyxcloud.state` xattr of a file.
pub fn state(p: &Path) -> Option<String> {
    xattr_get(p, "user.cyxcloud.state")
        .ok()
        .map(|v| String::from_utf8_lossy(&v).into_owned())
}

fn cpath(p: &Path) -> std::ffi::CString {
    use std::os::unix::ffi::OsStrExt;
    std::ffi::CString::new(p.as_os_str().as_bytes()).unwrap()
}

fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

/// getxattr(2): the value or the errno.
#[allow(unsafe_code)]
pub fn xattr_get(p: &Path, name: &str) -> Result<Vec<u8>, i32> {
    let (cp, cn) = (cpath(p), std::ffi::CString::new(name).unwrap());
    let mut buf = vec![0u8; 65536];
    // SAFETY: valid NUL-terminated strings and a buffer of the given length.
    let n = unsafe { libc::getxattr(cp.as_ptr(), cn.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if n < 0 {
        return Err(errno());
    }
    buf.truncate(n as usize);
    Ok(buf)
}

/// setxattr(2) with `flags` (XATTR_CREATE / XATTR_REPLACE).
#[allow(unsafe_code)]
pub fn xattr_set(p: &Path, name: &str, value: &[u8], flags: i32) -> Result<(), i32> {
    let (cp, cn) = (cpath(p), std::ffi::CString::new(name).unwrap());
    // SAFETY: valid NUL-terminated strings and a value slice of the given length.
    let r = unsafe {
        libc::setxattr(
            cp.as_ptr(),
            cn.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            flags,
        )
    };
    if r < 0 { Err(errno()) } else { Ok(()) }
}

/// listxattr(2).
#[allow(unsafe_code)]
pub fn xattr_list(p: &Path) -> Result<Vec<String>, i32> {
    let cp = cpath(p);
    let mut buf = vec![0u8; 65536];
    // SAFETY: valid NUL-terminated path and a buffer of the given length.
    let n = unsafe { libc::listxattr(cp.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if n < 0 {
        return Err(errno());
    }
    buf.truncate(n as usize);
    Ok(buf
        .split(|b| *b == 0)
        .filter(|s| !s.is_empty())
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .collect())
}

/// removexattr(2).
#[allow(unsafe_code)]
pub fn xattr_remove(p: &Path, name: &str) -> Result<(), i32> {
    let (cp, cn) = (cpath(p), std::ffi::CString::new(name).unwrap());
    // SAFETY: valid NUL-terminated strings.
    let r = unsafe { libc::removexattr(cp.as_ptr(), cn.as_ptr()) };
    if r < 0 { Err(errno()) } else { Ok(()) }
}

impl Cluster {
    /// Writes a file through the client library (another writer than the mount).
    pub fn put(&self, bucket: &str, path: &str, bytes: &[u8]) {
        let c = self.client();
        let t = cyxcloud_client::path_ref(bucket, path);
        self.rt
            .block_on(c.upload_from(t, bytes, cyxcloud_client::UploadOptions::default()))
            .unwrap();
    }

    /// Reads a file through the client library.
    pub fn get(&self, bucket: &str, path: &str) -> Vec<u8> {
        let c = self.client();
        let mut out = Vec::new();
        self.rt
            .block_on(c.download_to(
                cyxcloud_client::path_ref(bucket, path),
                None,
                &mut out,
                cyxcloud_client::ReadOptions::default(),
            ))
            .unwrap();
        out
    }

    pub fn entry(&self, bucket: &str, path: &str) -> Option<v1::Entry> {
        let c = self.client();
        self.rt
            .block_on(c.control().get_attr(v1::GetAttrRequest {
                entry: Some(cyxcloud_client::path_ref(bucket, path)),
            }))
            .ok()
            .map(|r| r.into_inner())
    }
}

/// blake3 of a file, streamed.
pub fn file_hash(p: &Path) -> String {
    let mut f = std::fs::File::open(p).unwrap();
    let mut h = blake3_hasher();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = std::io::Read::read(&mut f, &mut buf).unwrap();
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    h.finalize()
}

/// A streaming hasher over cyxcloud-core's blake3.
pub struct Hasher(Vec<u8>, Vec<cyxcloud_core::Hash>);

pub fn blake3_hasher() -> Hasher {
    Hasher(Vec::new(), Vec::new())
}

impl Hasher {
    pub fn update(&mut self, d: &[u8]) {
        self.0.extend_from_slice(d);
        while self.0.len() >= 1 << 20 {
            let rest = self.0.split_off(1 << 20);
            self.1.push(cyxcloud_core::Hash::of(&self.0));
            self.0 = rest;
        }
    }
    pub fn finalize(mut self) -> String {
        self.1.push(cyxcloud_core::Hash::of(&self.0));
        let all: Vec<u8> = self.1.iter().flat_map(|h| h.0).collect();
        cyxcloud_core::Hash::of(&all).to_hex()
    }
}
