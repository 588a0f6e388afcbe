//! The drive benchmark (issue 7): each operation on a local directory (the ceiling) and through
//! a `cyxcloud-mountd` mount of a live local cluster (gateway + 7 nodes, all real processes),
//! in one run. Prints a Markdown table for BENCHMARKS.md.
//!
//! Run: `cargo build --release -p cyxcloud-gateway -p cyxcloud-node -p cyxcloud-mountd --bins`
//! then `cargo bench -p cyxcloud-mountd --bench drive` (as root: FUSE, drop_caches).
//! `DRIVE_BENCH_MB` (default 1024) sets the size of the sequential file, `DRIVE_BENCH_FILES`
//! (default 10000) the small-file count.

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

struct Row {
    what: String,
    local: Duration,
    cyx: Duration,
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
    let m = Mount::start(&c, &["--cache-size", "4G"]);
    let mut rows = Vec::new();
    let mbf = mb as f64;

    // Sequential write (until fsync returns: committed at the gateway for CyxCloud).
    let lw = write_seq(&local.path().join("seq"), mb);
    let cw = write_seq(&m.p("bench/seq"), mb);
    rows.push(Row {
        what: format!("sequential write {mb} MiB + fsync"),
        local: lw,
        cyx: cw,
        unit: mbf,
        unit_name: "MiB/s",
    });

    // Cold read: empty caches (a fresh mount with an empty cache dir; kernel caches dropped).
    drop_caches();
    let (lr, n) = read_seq(&local.path().join("seq"));
    assert_eq!(n, (mb as u64) << 20);
    let cold = Mount::start(&c, &["--cache-size", "4G"]);
    drop_caches();
    let (cr, n) = read_seq(&cold.p("bench/seq"));
    assert_eq!(n, (mb as u64) << 20);
    rows.push(Row {
        what: format!("sequential read {mb} MiB, cold"),
        local: lr,
        cyx: cr,
        unit: mbf,
        unit_name: "MiB/s",
    });

    // Cached read: chunks in the drive's on-disk cache; kernel page cache dropped first.
    drop_caches();
    let (lr2, _) = read_seq(&local.path().join("seq"));
    drop_caches();
    let (cr2, _) = read_seq(&cold.p("bench/seq"));
    rows.push(Row {
        what: format!("sequential read {mb} MiB, cached (drive cache, page cache dropped)"),
        local: lr2,
        cyx: cr2,
        unit: mbf,
        unit_name: "MiB/s",
    });
    // And with the page cache warm.
    let (lr3, _) = read_seq(&local.path().join("seq"));
    let (cr3, _) = read_seq(&cold.p("bench/seq"));
    rows.push(Row {
        what: format!("sequential read {mb} MiB, cached (page cache warm)"),
        local: lr3,
        cyx: cr3,
        unit: mbf,
        unit_name: "MiB/s",
    });

    // Small files.
    let lc = create_small(&local.path().join("small"), files);
    let cc = create_small(&m.p("bench/small"), files);
    rows.push(Row {
        what: format!("create {files} files of 100 B"),
        local: lc,
        cyx: cc,
        unit: files as f64,
        unit_name: "files/s",
    });

    // stat and ls -l of the big directory, from a fresh mount (metadata from the gateway once).
    let fresh = Mount::start(&c, &[]);
    let cl = ls_l(&fresh.p("bench/small"));
    let ll = ls_l(&local.path().join("small"));
    rows.push(Row {
        what: format!("ls -l of {files} entries, first time"),
        local: ll,
        cyx: cl,
        unit: files as f64,
        unit_name: "entries/s",
    });
    let ls = stat_all(&local.path().join("small"), files);
    let cs = stat_all(&fresh.p("bench/small"), files);
    rows.push(Row {
        what: format!("stat {files} entries"),
        local: ls,
        cyx: cs,
        unit: files as f64,
        unit_name: "stats/s",
    });
    let ll2 = ls_l(&local.path().join("small"));
    let cl2 = ls_l(&fresh.p("bench/small"));
    rows.push(Row {
        what: format!("ls -l of {files} entries, again"),
        local: ll2,
        cyx: cl2,
        unit: files as f64,
        unit_name: "entries/s",
    });

    println!("| operation | local dir | CyxCloud drive | drive / local | s3fs (peer) |");
    println!("|---|---|---|---|---|");
    for r in rows {
        let rate = |d: Duration| r.unit / d.as_secs_f64();
        println!(
            "| {} | {:.2} s ({:.0} {}) | {:.2} s ({:.0} {}) | {:.0} % | not measured (no S3 API yet) |",
            r.what,
            r.local.as_secs_f64(),
            rate(r.local),
            r.unit_name,
            r.cyx.as_secs_f64(),
            rate(r.cyx),
            r.unit_name,
            100.0 * r.local.as_secs_f64() / r.cyx.as_secs_f64(),
        );
    }
}
