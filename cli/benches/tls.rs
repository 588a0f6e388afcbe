//! What TLS 1.3 costs: the same transfers against a plaintext cluster and a TLS cluster
//! (gateway + 7 nodes, release binaries), in one run, alternating which goes first:
//!
//! * the CLI (striping client: gateway and every node over TLS) uploading and downloading a
//!   file;
//! * S3 PUT and GET of one object with boto3 (the venv `scripts/lib/env.sh` installs);
//! * the drive: sequential write (then fsync) and read of a file through `cyxcloud mount`.
//!
//! ```text
//! cargo build --release --bins
//! cargo bench -p cyxcloud-cli --bench tls            # 512 MiB each, 3 rounds (medians)
//! CYX_BENCH_MIB=128 CYX_BENCH_ROUNDS=5 cargo bench -p cyxcloud-cli --bench tls
//! ```

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

mod common;
use common::{cli, make_file, make_file_seeded};

use cyxcloud_testkit::cluster::{ACCESS_KEY, Cluster, ClusterOptions, SECRET_KEY};

const MIB: u64 = 1 << 20;

fn run(mut cmd: Command) -> f64 {
    let t = Instant::now();
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    t.elapsed().as_secs_f64()
}

fn venv_python() -> PathBuf {
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_default();
    home.join(".cache/cyxcloud-s3-venv/bin/python")
}

const BOTO3: &str = r#"
import boto3, sys, time
endpoint, ca, path, out = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                  verify=(ca if ca else None))
try:
    s3.create_bucket(Bucket="s3bench")
except s3.exceptions.BucketAlreadyOwnedByYou:
    pass
body = open(path, "rb").read()
t = time.time(); s3.put_object(Bucket="s3bench", Key="obj", Body=body); put = time.time() - t
t = time.time(); got = s3.get_object(Bucket="s3bench", Key="obj")["Body"].read(); get = time.time() - t
assert got == body
print(f"{put} {get}")
"#;

/// `(seconds to PUT, seconds to GET)` of the file at `path` with boto3.
fn s3_put_get(c: &Cluster, path: &Path, home: &Path) -> (f64, f64) {
    let ca = if c.opts.tls {
        c.ca_path().display().to_string()
    } else {
        String::new()
    };
    let out = Command::new(venv_python())
        .args(["-c", BOTO3, &c.http_url(), &ca])
        .arg(path)
        .arg(home)
        .env("AWS_ACCESS_KEY_ID", ACCESS_KEY)
        .env("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("AWS_CONFIG_FILE", home.join("aws-config"))
        .env_remove("AWS_CA_BUNDLE")
        .env_remove("REQUESTS_CA_BUNDLE")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "boto3: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let t: Vec<f64> = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .map(|v| v.parse().unwrap())
        .collect();
    (t[0], t[1])
}

/// Mounts the account's drive at `point` with its own cache dir.
fn mount(c: &Cluster, home: &Path, point: &Path, cache: &str) {
    std::fs::create_dir_all(point).unwrap();
    let mut m = cli(c, home);
    m.arg("mount")
        .arg(point)
        .arg("--cache-dir")
        .arg(home.join(cache));
    run(m);
}

/// `(seconds to write + fsync, seconds to read)` of `bytes` through the drive: written through
/// one mount, read through a second one with an empty cache (so the bytes come from the nodes).
fn drive(c: &Cluster, home: &Path, bytes: u64) -> (f64, f64) {
    let mut mk = cli(c, home);
    let seed = home.join("seed.txt");
    std::fs::write(&seed, b"x").unwrap();
    mk.arg("upload").arg(&seed).args(["-b", "drivebench"]);
    run(mk);
    let (a, b) = (home.join("mnt-a"), home.join("mnt-b"));
    mount(c, home, &a, "cache-a");
    let block = vec![0x5Au8; 1 << 20];
    let t = Instant::now();
    {
        let mut f = std::fs::File::create(a.join("drivebench/seq.bin")).unwrap();
        for _ in 0..bytes / MIB {
            f.write_all(&block).unwrap();
        }
        f.sync_all().unwrap();
    }
    let write = t.elapsed().as_secs_f64();
    mount(c, home, &b, "cache-b");
    let t = Instant::now();
    let mut f = std::fs::File::open(b.join("drivebench/seq.bin")).unwrap();
    let mut buf = vec![0u8; 1 << 20];
    let mut n = 0u64;
    loop {
        let r = f.read(&mut buf).unwrap();
        if r == 0 {
            break;
        }
        n += r as u64;
    }
    let read = t.elapsed().as_secs_f64();
    drop(f);
    assert_eq!(n, bytes);
    for p in [&a, &b] {
        let _ = Command::new("fusermount3").arg("-uz").arg(p).status();
    }
    (write, read)
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo test --benches` asks for the list of benchmarks.
    }
    let mib: u64 = std::env::var("CYX_BENCH_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(512);
    let bytes = mib * MIB;
    let work = cyxcloud_testkit::tempdir().unwrap();
    let f = work.path().join("payload.bin");
    make_file(&f, bytes);
    let rounds: usize = std::env::var("CYX_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    // rates[mode][metric] over the rounds; the order of the modes alternates per round.
    let mut rates: [Vec<[f64; 6]>; 2] = [Vec::new(), Vec::new()];
    for round in 0..rounds {
        for tls in if round % 2 == 0 {
            [false, true]
        } else {
            [true, false]
        } {
            let c = Cluster::start(ClusterOptions {
                nodes: 7,
                capacity_gb: 20.0,
                tls,
                ..Default::default()
            });
            let home = work
                .path()
                .join(format!("{}-{round}", if tls { "tls" } else { "plain" }));
            std::fs::create_dir_all(&home).unwrap();
            // Warm up (connections, the processes' first allocations) with other bytes, so the
            // measured transfers are not deduplicated against them.
            let warm = home.join("warm.bin");
            make_file_seeded(&warm, 32 * MIB, 1 + round as u64 * 2 + tls as u64);
            let mut w = cli(&c, &home);
            w.arg("upload").arg(&warm).args(["-b", "warmup"]);
            run(w);
            s3_put_get(&c, &warm, &home);
            let mut up = cli(&c, &home);
            up.args(["upload", f.to_str().unwrap(), "-b", "bench"]);
            let up_s = run(up);
            let back = home.join("back.bin");
            let mut down = cli(&c, &home);
            down.args([
                "download",
                "bench",
                "-k",
                "payload.bin",
                "-o",
                back.to_str().unwrap(),
            ]);
            let down_s = run(down);
            assert_eq!(std::fs::metadata(&back).unwrap().len(), bytes);
            std::fs::remove_file(&back).unwrap();
            let (put_s, get_s) = s3_put_get(&c, &f, &home);
            let (dw_s, dr_s) = drive(&c, &home, bytes);
            let rate = |s: f64| bytes as f64 / s / 1e6;
            let r = [
                rate(up_s),
                rate(down_s),
                rate(put_s),
                rate(get_s),
                rate(dw_s),
                rate(dr_s),
            ];
            println!(
                "round {round} {}: CLI upload {:.0} MB/s, download {:.0} MB/s; S3 PUT {:.0} MB/s, GET {:.0} MB/s; drive write {:.0} MB/s, read {:.0} MB/s",
                if tls { "TLS 1.3  " } else { "plaintext" },
                r[0],
                r[1],
                r[2],
                r[3],
                r[4],
                r[5]
            );
            rates[tls as usize].push(r);
        }
    }
    let median = |mode: usize, i: usize| {
        let mut v: Vec<f64> = rates[mode].iter().map(|r| r[i]).collect();
        v.sort_by(|a, b| a.total_cmp(b));
        v[v.len() / 2]
    };
    let names = [
        "CLI upload",
        "CLI download",
        "S3 PUT",
        "S3 GET",
        "drive write",
        "drive read",
    ];
    for (i, n) in names.iter().enumerate() {
        println!(
            "{n}: median of {rounds}: plaintext {:.0} MB/s, TLS {:.0} MB/s, TLS / plaintext = {:.2}",
            median(0, i),
            median(1, i),
            median(1, i) / median(0, i)
        );
    }
}
