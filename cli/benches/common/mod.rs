//! What the CLI benchmarks share: deterministic incompressible files, and the `cyxcloud`
//! command set up for a cluster.

use std::io::Write;
use std::path::Path;
use std::process::Command;

use cyxcloud_testkit::cluster::{ACCESS_KEY, Cluster, SECRET_KEY};

/// `cyxcloud --quiet` for cluster `c` as its admin, with `home` as its home (and the cluster
/// CA on a TLS cluster).
pub fn cli(c: &Cluster, home: &Path) -> Command {
    let mut cmd = Command::new(cyxcloud_testkit::bin("cyxcloud"));
    cmd.env("CYXCLOUD_GATEWAY", c.http_url())
        .env("CYXCLOUD_ACCESS_KEY", ACCESS_KEY)
        .env("CYXCLOUD_SECRET_KEY", SECRET_KEY)
        .env("HOME", home)
        .env("XDG_CACHE_HOME", home.join("cache"))
        .env_remove("CYXCLOUD_GRPC_ADDRESS")
        .arg("--quiet");
    if c.opts.tls {
        cmd.env("CYXCLOUD_CA_CERT", c.ca_path());
    } else {
        cmd.env_remove("CYXCLOUD_CA_CERT");
    }
    cmd
}

/// A file of `bytes` deterministic, incompressible bytes (xorshift).
pub fn make_file(p: &Path, bytes: u64) {
    make_file_seeded(p, bytes, 0)
}

/// [`make_file`] with other bytes for each `seed`.
pub fn make_file_seeded(p: &Path, bytes: u64, seed: u64) {
    let mut f = std::io::BufWriter::with_capacity(8 << 20, std::fs::File::create(p).unwrap());
    let mut x = 0x9E37_79B9_7F4A_7C15u64 ^ seed.wrapping_mul(0xD1B5_4A32_D192_ED03);
    let mut block = vec![0u8; 1 << 20];
    let mut left = bytes;
    while left > 0 {
        for c in block.chunks_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            c.copy_from_slice(&x.to_le_bytes());
        }
        let n = left.min(block.len() as u64) as usize;
        f.write_all(&block[..n]).unwrap();
        left -= n as u64;
    }
    f.flush().unwrap();
}
