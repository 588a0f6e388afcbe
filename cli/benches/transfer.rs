//! Upload and download throughput of a 1 GiB file through the `cyxcloud` CLI (striping client)
//! against a real local cluster (gateway + 14 nodes, release binaries), next to raw loopback
//! TCP throughput measured in the same run; and the CLI's peak RSS during a large upload.
//!
//! ```text
//! cargo build --release --bins
//! cargo bench -p cyxcloud-cli --bench transfer            # 1 GiB transfer + RSS of a 10 GiB upload
//! CYX_BENCH_RSS_GIB=2 cargo bench -p cyxcloud-cli --bench transfer   # smaller RSS run
//! ```

use std::io::{Read, Write};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

mod common;
use common::{cli, make_file};

use cyxcloud_testkit::cluster::{Cluster, ClusterOptions};

const GIB: u64 = 1 << 30;

fn raw_loopback(bytes: u64) -> f64 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let reader = std::thread::spawn(move || {
        let (mut s, _) = l.accept().unwrap();
        let mut buf = vec![0u8; 1 << 20];
        let mut n = 0u64;
        loop {
            let r = s.read(&mut buf).unwrap();
            if r == 0 {
                break n;
            }
            n += r as u64;
        }
    });
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    let buf = vec![7u8; 1 << 20];
    let t = Instant::now();
    let mut sent = 0;
    while sent < bytes {
        s.write_all(&buf).unwrap();
        sent += buf.len() as u64;
    }
    drop(s);
    assert_eq!(reader.join().unwrap(), bytes);
    bytes as f64 / t.elapsed().as_secs_f64()
}

/// Runs `cmd`, sampling its peak RSS (VmHWM); returns (seconds, peak RSS bytes).
fn timed(mut cmd: Command) -> (f64, u64) {
    let t = Instant::now();
    let mut child = cmd.spawn().unwrap();
    let pid = child.id();
    let mut peak = 0u64;
    loop {
        if let Ok(s) = std::fs::read_to_string(format!("/proc/{pid}/status"))
            && let Some(l) = s.lines().find(|l| l.starts_with("VmHWM:"))
        {
            let kb: u64 = l
                .split_whitespace()
                .nth(1)
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            peak = peak.max(kb * 1024);
        }
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "command failed: {status}");
            return (t.elapsed().as_secs_f64(), peak);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo test --benches` asks for the list of benchmarks.
    }
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().and_then(Path::parent).unwrap().to_path_buf();
    if std::env::var_os("CYXCLOUD_BIN_DIR").is_none() {
        println!("binaries from {}", profile_dir.display());
    }
    let rss_gib: u64 = std::env::var("CYX_BENCH_RSS_GIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10);
    let work = cyxcloud_testkit::tempdir().unwrap();
    let home = work.path().join("home");
    std::fs::create_dir_all(&home).unwrap();

    let raw = raw_loopback(4 * GIB);
    println!(
        "raw loopback TCP (1 stream, 1 MiB writes): {:.0} MB/s",
        raw / 1e6
    );

    let c = Cluster::start(ClusterOptions {
        nodes: 14,
        capacity_gb: 40.0,
        ..Default::default()
    });
    let f = work.path().join("one.bin");
    make_file(&f, GIB);
    let mut up = cli(&c, &home);
    up.args(["upload", f.to_str().unwrap(), "-b", "bench"]);
    let (secs, rss) = timed(up);
    let up_rate = GIB as f64 / secs;
    println!(
        "upload 1 GiB: {secs:.2} s = {:.0} MB/s ({:.2}x raw loopback), CLI peak RSS {} MiB",
        up_rate / 1e6,
        up_rate / raw,
        rss >> 20
    );
    let out = work.path().join("one.back");
    let mut down = cli(&c, &home);
    down.args([
        "download",
        "bench",
        "-k",
        "one.bin",
        "-o",
        out.to_str().unwrap(),
    ]);
    let (secs, rss) = timed(down);
    let down_rate = GIB as f64 / secs;
    println!(
        "download 1 GiB: {secs:.2} s = {:.0} MB/s ({:.2}x raw loopback), CLI peak RSS {} MiB",
        down_rate / 1e6,
        down_rate / raw,
        rss >> 20
    );
    assert_eq!(std::fs::metadata(&out).unwrap().len(), GIB);
    std::fs::remove_file(&out).unwrap();
    std::fs::remove_file(&f).unwrap();

    if rss_gib > 0 {
        let big = work.path().join("big.bin");
        make_file(&big, rss_gib * GIB);
        let mut up = cli(&c, &home);
        up.args(["upload", big.to_str().unwrap(), "-b", "bench"]);
        let (secs, rss) = timed(up);
        println!(
            "upload {rss_gib} GiB: {secs:.1} s = {:.0} MB/s, CLI peak RSS {} MiB (target < 1024 MiB)",
            (rss_gib * GIB) as f64 / secs / 1e6,
            rss >> 20
        );
    }
}
