//! The drive benchmark (issue 7): each operation on a local directory (the ceiling) and through
//! a `cyxcloud-mountd` mount of a live local cluster (gateway + 7 nodes, all real processes),
//! in one run. Beside both, the same operation through an s3fs-fuse mount of the same cluster's S3 API (the
//! peer). Prints a Markdown table for BENCHMARKS.md.
//!
//! Run: `cargo build --release -p cyxcloud-gateway -p cyxcloud-node -p cyxcloud-mountd --bins`
//! then `cargo bench -p cyxcloud-mountd --bench drive` (as root: FUSE, drop_caches).
//! `DRIVE_BENCH_MB` (default 1024) sets the size of the sequential file, `DRIVE_BENCH_FILES`
//! (default 10000) the small-file count. `DRIVE_BENCH_SMALL_ONLY=1` times only the drive's
//! small-file creates (until close, until durable) and keeps its log in
//! `/tmp/drive-bench-small.log`: for profiling that path.

#[path = "../tests/cluster.rs"]
#[allow(unused_imports)]
mod cluster;

use std::io::{Read, Write};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::{Duration, Instant};

use cluster::{Cluster, Mount, data, sh};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The drive's log filter as a user runs it (the tests' mounts log at debug level).
const USER_LOG: &str = "info";

fn drop_caches() {
    let _ = std::fs::write("/proc/sys/vm/drop_caches", "3");
}

fn write_seq(p: &Path, mb: usize) -> Duration {
    let block = data(42, 4 << 20);
    let t = Instant::now();
    let mut f = std::fs::File::create(p).unwrap();
    for _ in 0..mb / 4 {
        f.write_all(&block).unwrap();
    }
    f.sync_all().unwrap();
    t.elapsed()
}

fn read_seq(p: &Path) -> (Duration, u64) {
    let t = Instant::now();
    let mut f = std::fs::File::open(p).unwrap();
    let mut buf = vec![0u8; 4 << 20];
    let mut n = 0u64;
    loop {
        let k = f.read(&mut buf).unwrap();
        if k == 0 {
            break;
        }
        n += k as u64;
    }
    (t.elapsed(), n)
}

fn create_small(dir: &Path, n: usize) -> Duration {
    std::fs::create_dir_all(dir).unwrap();
    let body = data(7, 100);
    let t = Instant::now();
    for i in 0..n {
        std::fs::write(dir.join(format!("f{i:05}")), &body).unwrap();
    }
    t.elapsed()
}

fn stat_all(dir: &Path, n: usize) -> Duration {
    let t = Instant::now();
    let mut total = 0u64;
    for i in 0..n {
        total += std::fs::metadata(dir.join(format!("f{i:05}")))
            .unwrap()
            .size();
    }
    assert_eq!(total, 100 * n as u64);
    t.elapsed()
}

fn ls_l(dir: &Path) -> Duration {
    let t = Instant::now();
    sh(&format!("ls -l {} > /dev/null", dir.display()));
    t.elapsed()
}

/// An s3fs-fuse mount of one bucket of the cluster's S3 API (the peer), with s3fs's defaults
/// apart from what talking to a local endpoint needs.
struct S3fs {
    proc: Option<cyxcloud_testkit::Proc>,
    path: std::path::PathBuf,
    _dir: cyxcloud_testkit::TempDir,
}

impl S3fs {
    fn mount(c: &Cluster, bucket: &str) -> S3fs {
        let dir = cyxcloud_testkit::tempdir().unwrap();
        let pass = dir.path().join("passwd");
        std::fs::write(
            &pass,
            format!("{}:{}\n", cluster::ACCESS_KEY, cluster::SECRET_KEY),
        )
        .unwrap();
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&pass, std::fs::Permissions::from_mode(0o600)).unwrap();
        }
        let path = dir.path().join("mnt");
        std::fs::create_dir_all(&path).unwrap();
        let mut cmd = std::process::Command::new("s3fs");
        cmd.arg(bucket)
            .arg(&path)
            .arg("-f")
            .args(["-o", &format!("url={}", c.http_url())])
            .args(["-o", "use_path_request_style,sigv4,endpoint=us-east-1"])
            .args(["-o", &format!("passwd_file={}", pass.display())]);
        let proc = cyxcloud_testkit::Proc::spawn("s3fs", cmd, &dir.path().join("s3fs.log"));
        let want = path.display().to_string();
        cyxcloud_testkit::wait_until(Duration::from_secs(30), "the s3fs mount", || {
            std::fs::read_to_string("/proc/mounts")
                .unwrap_or_default()
                .lines()
                .any(|l| l.split_whitespace().nth(1) == Some(want.as_str()))
                .then_some(())
        });
        S3fs {
            proc: Some(proc),
            path,
            _dir: dir,
        }
    }

    fn p(&self, rel: &str) -> std::path::PathBuf {
        self.path.join(rel)
    }
}

impl Drop for S3fs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("fusermount3")
            .arg("-u")
            .arg(&self.path)
            .status();
        if let Some(mut p) = self.proc.take() {
            let _ = p.wait_exit(Duration::from_secs(30));
        }
    }
}

/// Waits until the drive reports no file waiting for upload.
/// Small-file creates on the drive: (until the last close, until every upload is durable).
fn drive_creates(m: &Mount, files: usize) -> (Duration, Duration) {
    let t = Instant::now();
    eprintln!("phase: creates on the drive");
    let closed = create_small(&m.p("bench/small"), files);
    eprintln!("phase: creates on the drive closed");
    wait_all_durable(m);
    (closed, t.elapsed())
}

fn wait_all_durable(m: &Mount) {
    cyxcloud_testkit::wait_until(Duration::from_secs(3600), "all uploads", || {
        let s = m.status();
        (s["queued_uploads"].as_u64() == Some(0)).then_some(())
    });
}

struct Row {
    what: String,
    local: Duration,
    cyx: Duration,
    s3fs: Duration,
    unit: f64,
    unit_name: &'static str,
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let mb: usize = std::env::var("DRIVE_BENCH_MB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1024);
    let files: usize = std::env::var("DRIVE_BENCH_FILES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let local = tempfile::tempdir().unwrap();
    let c = Cluster::start(7);
    c.create_bucket("bench");
    c.create_bucket("peer");
    let m = Mount::start_logging(&c, &["--cache-size", "4G"], USER_LOG);
    if std::env::var("DRIVE_BENCH_SMALL_ONLY").is_ok_and(|v| v == "1") {
        let (closed, durable) = drive_creates(&m, files);
        let _ = std::fs::write("/tmp/drive-bench-small.log", m.log());
        println!(
            "{files} files of 100 B: {:.2} s until the last close, {:.2} s until durable",
            closed.as_secs_f64(),
            durable.as_secs_f64()
        );
        return;
    }
    let s3 = S3fs::mount(&c, "peer");
    let mut rows = Vec::new();
    let mbf = mb as f64;
    let mib = |what: String, local, cyx, s3fs| Row {
        what,
        local,
        cyx,
        s3fs,
        unit: mbf,
        unit_name: "MiB/s",
    };

    // Sequential write (until fsync returns: committed at the gateway for CyxCloud, uploaded
    // for s3fs).
    let lw = write_seq(&local.path().join("seq"), mb);
    let cw = write_seq(&m.p("bench/seq"), mb);
    let sw = write_seq(&s3.p("seq"), mb);
    rows.push(mib(
        format!("sequential write {mb} MiB + fsync"),
        lw,
        cw,
        sw,
    ));

    // Cold read: empty caches (a fresh mount with an empty cache dir; kernel caches dropped).
    drop_caches();
    let (lr, n) = read_seq(&local.path().join("seq"));
    assert_eq!(n, (mb as u64) << 20);
    let cold = Mount::start_logging(&c, &["--cache-size", "4G"], USER_LOG);
    drop(s3);
    let s3 = S3fs::mount(&c, "peer");
    drop_caches();
    let (cr, n) = read_seq(&cold.p("bench/seq"));
    assert_eq!(n, (mb as u64) << 20);
    drop_caches();
    let (sr, n) = read_seq(&s3.p("seq"));
    assert_eq!(n, (mb as u64) << 20);
    rows.push(mib(format!("sequential read {mb} MiB, cold"), lr, cr, sr));

    // Cached read: chunks in the drive's on-disk cache; kernel page cache dropped first (s3fs
    // keeps no local copy by default: it reads from the S3 API again).
    drop_caches();
    let (lr2, _) = read_seq(&local.path().join("seq"));
    drop_caches();
    let (cr2, _) = read_seq(&cold.p("bench/seq"));
    drop_caches();
    let (sr2, _) = read_seq(&s3.p("seq"));
    rows.push(mib(
        format!("sequential read {mb} MiB, cached (drive cache, page cache dropped)"),
        lr2,
        cr2,
        sr2,
    ));
    // And with the page cache warm.
    let (lr3, _) = read_seq(&local.path().join("seq"));
    let (cr3, _) = read_seq(&cold.p("bench/seq"));
    let (sr3, _) = read_seq(&s3.p("seq"));
    rows.push(mib(
        format!("sequential read {mb} MiB, cached (page cache warm)"),
        lr3,
        cr3,
        sr3,
    ));

    // Small files: the drive acknowledges close() once the file is staged locally and uploads
    // in the background; s3fs uploads inside close(). Both are reported: until the last
    // close(), and until every file is durable at the gateway.
    let count = |what: String, local, cyx, s3fs, unit_name| Row {
        what,
        local,
        cyx,
        s3fs,
        unit: files as f64,
        unit_name,
    };
    let lc = create_small(&local.path().join("small"), files);
    let (cc, cc_durable) = drive_creates(&m, files);
    let sc = create_small(&s3.p("small"), files);
    rows.push(count(
        format!("create {files} files of 100 B (until the last close returns)"),
        lc,
        cc,
        sc,
        "files/s",
    ));
    rows.push(count(
        format!("create {files} files of 100 B (until all are durable)"),
        lc,
        cc_durable,
        sc,
        "files/s",
    ));

    // stat of every entry of the big directory from fresh mounts, before any listing: each
    // name is looked up on its own (the drive asks the gateway, s3fs the S3 API).
    let cold_stat = Mount::start_logging(&c, &[], USER_LOG);
    drop(s3);
    let s3 = S3fs::mount(&c, "peer");
    drop_caches();
    let ls0 = stat_all(&local.path().join("small"), files);
    let cs0 = stat_all(&cold_stat.p("bench/small"), files);
    let ss0 = stat_all(&s3.p("small"), files);
    rows.push(count(
        format!("stat {files} entries, fresh mount (nothing listed)"),
        ls0,
        cs0,
        ss0,
        "stats/s",
    ));
    drop(cold_stat);

    // stat and ls -l of the big directory, from fresh mounts (metadata fetched once).
    let fresh = Mount::start_logging(&c, &[], USER_LOG);
    drop(s3);
    let s3 = S3fs::mount(&c, "peer");
    let ll = ls_l(&local.path().join("small"));
    let cl = ls_l(&fresh.p("bench/small"));
    let sl = ls_l(&s3.p("small"));
    rows.push(count(
        format!("ls -l of {files} entries, first time"),
        ll,
        cl,
        sl,
        "entries/s",
    ));
    let ls = stat_all(&local.path().join("small"), files);
    let cs = stat_all(&fresh.p("bench/small"), files);
    let ss = stat_all(&s3.p("small"), files);
    rows.push(count(
        format!("stat {files} entries, after ls -l"),
        ls,
        cs,
        ss,
        "stats/s",
    ));
    let ll2 = ls_l(&local.path().join("small"));
    let cl2 = ls_l(&fresh.p("bench/small"));
    let sl2 = ls_l(&s3.p("small"));
    rows.push(count(
        format!("ls -l of {files} entries, again"),
        ll2,
        cl2,
        sl2,
        "entries/s",
    ));

    // A thumbnailer: the first 4 KiB of each of 100 files of 1 MiB, from fresh mounts with
    // the page cache dropped (the drive's chunk cache empty).
    drop(fresh);
    const THUMBS: usize = 100;
    let thumbs = |dir: &Path| {
        std::fs::create_dir_all(dir).unwrap();
        for i in 0..THUMBS {
            std::fs::write(dir.join(format!("t{i}")), data(i as u64, 1 << 20)).unwrap();
        }
    };
    thumbs(&local.path().join("thumbs"));
    thumbs(&m.p("bench/thumbs"));
    thumbs(&s3.p("thumbs"));
    wait_all_durable(&m);
    let heads = |dir: &Path| {
        let t = Instant::now();
        let mut buf = vec![0u8; 4096];
        for i in 0..THUMBS {
            let mut f = std::fs::File::open(dir.join(format!("t{i}"))).unwrap();
            f.read_exact(&mut buf).unwrap();
        }
        t.elapsed()
    };
    let cold_heads = Mount::start_logging(&c, &[], USER_LOG);
    drop(s3);
    let s3 = S3fs::mount(&c, "peer");
    drop_caches();
    let lh = heads(&local.path().join("thumbs"));
    let ch = heads(&cold_heads.p("bench/thumbs"));
    let sh = heads(&s3.p("thumbs"));
    rows.push(Row {
        what: format!("first 4 KiB of {THUMBS} files of 1 MiB, fresh mount (thumbnailer)"),
        local: lh,
        cyx: ch,
        s3fs: sh,
        unit: THUMBS as f64,
        unit_name: "files/s",
    });

    println!(
        "| operation | local dir | CyxCloud drive | drive / local | s3fs (peer) | drive / s3fs |"
    );
    println!("|---|---|---|---|---|---|");
    for r in rows {
        let rate = |d: Duration| r.unit / d.as_secs_f64();
        println!(
            "| {} | {:.2} s ({:.0} {u}) | {:.2} s ({:.0} {u}) | {:.0} % | {:.2} s ({:.0} {u}) | {:.1}x |",
            r.what,
            r.local.as_secs_f64(),
            rate(r.local),
            r.cyx.as_secs_f64(),
            rate(r.cyx),
            100.0 * r.local.as_secs_f64() / r.cyx.as_secs_f64(),
            r.s3fs.as_secs_f64(),
            rate(r.s3fs),
            r.s3fs.as_secs_f64() / r.cyx.as_secs_f64(),
            u = r.unit_name,
        );
    }
}
