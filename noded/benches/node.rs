//! Storage node benchmark: PutShard/GetShard throughput and latency for 1 MiB and 8 MiB shards
//! over loopback gRPC against a real `cyxcloud-node` (release build, RocksDB, WAL synced per
//! put), next to a raw sequential disk write baseline measured in the same run, in the same
//! directory.
//!
//! Run: `cargo bench -p cyxcloud-node --bench node` (env `BENCH_DIR` picks the disk; default
//! `target/bench-node`; `BENCH_MB` the data volume per round, default 128; `BENCH_ROUNDS`, default 5).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use cyxcloud_core::Hash;
use cyxcloud_core::token::{Capability, Op, Role, Scope, TokenSigner};
use cyxcloud_proto::v1::chunk_service_client::ChunkServiceClient;
use cyxcloud_proto::v1::put_shard_request::Msg;
use cyxcloud_proto::v1::{GetShardRequest, PutShardHeader, PutShardRequest};
use cyxcloud_proto::{MAX_MESSAGE_BYTES, STREAM_PIECE_BYTES};
use tonic::transport::Channel;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const MIB: usize = 1 << 20;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct NodeProc(Child);

impl Drop for NodeProc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_node(dir: &Path, compression: bool, signer: &TokenSigner) -> (NodeProc, String) {
    let grpc = free_port();
    let metrics = free_port();
    let log = std::fs::File::create(dir.join("node.log")).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_cyxcloud-node"))
        .current_dir(dir)
        .env("RUST_LOG", "warn")
        .env("NODE_ID", "bench-node")
        .env("GRPC_HOST", "127.0.0.1")
        .env("GRPC_PORT", grpc.to_string())
        .env("METRICS_PORT", metrics.to_string())
        .env("LIBP2P_PORT", free_port().to_string())
        .env("STORAGE_PATH", dir.join("data"))
        .env("STORAGE_CAPACITY_GB", "1000")
        .env("CENTRAL_REGISTER", "false")
        .env("CYXWIZ_API_REGISTER", "false")
        .env(
            "CYXCLOUD_TOKEN_PUBLIC_KEYS",
            hex::encode(signer.public_key()),
        )
        .arg("--config")
        .arg(write_config(dir, compression))
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("spawn cyxcloud-node");
    let addr = format!("127.0.0.1:{metrics}");
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(&addr).is_err() {
        assert!(Instant::now() < deadline, "node did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    (NodeProc(child), format!("http://127.0.0.1:{grpc}"))
}

fn write_config(dir: &Path, compression: bool) -> PathBuf {
    let p = dir.join("bench.toml");
    std::fs::write(&p, format!("[storage]\ncompression = {compression}\n")).unwrap();
    p
}

fn token(signer: &TokenSigner) -> Vec<u8> {
    signer.sign(&Capability {
        role: Role::Rebalancer,
        ops: Op::Put as u8 | Op::Get as u8,
        node_id: "bench-node".into(),
        expires_at: u64::MAX / 2,
        scope: Scope::Any,
    })
}

fn shard(seed: u64, len: usize) -> Bytes {
    let mut v = vec![0u8; len];
    blake3::Hasher::new()
        .update(&seed.to_le_bytes())
        .finalize_xof()
        .fill(&mut v);
    Bytes::from(v)
}

async fn connect(url: &str) -> ChunkServiceClient<Channel> {
    let ch = cyxcloud_node::net::endpoint(url, None)
        .unwrap()
        .connect()
        .await
        .unwrap();
    ChunkServiceClient::new(ch)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES)
}

async fn put(c: &mut ChunkServiceClient<Channel>, h: Hash, data: Bytes, tok: &[u8]) {
    let mut msgs = vec![PutShardRequest {
        msg: Some(Msg::Header(PutShardHeader {
            hash: h.0.to_vec(),
            size: data.len() as u64,
            token: tok.to_vec(),
        })),
    }];
    for off in (0..data.len()).step_by(STREAM_PIECE_BYTES) {
        let end = (off + STREAM_PIECE_BYTES).min(data.len());
        msgs.push(PutShardRequest {
            msg: Some(Msg::Data(data.slice(off..end))),
        });
    }
    c.put_shard(tokio_stream::iter(msgs)).await.unwrap();
}

async fn get(c: &mut ChunkServiceClient<Channel>, h: Hash, tok: &[u8]) -> usize {
    let mut s = c
        .get_shard(GetShardRequest {
            hash: h.0.to_vec(),
            token: tok.to_vec(),
            offset: 0,
            length: 0,
        })
        .await
        .unwrap()
        .into_inner();
    let mut n = 0;
    while let Some(m) = s.message().await.unwrap() {
        n += m.data.len();
    }
    n
}

/// Puts then gets `count` shards of `size` bytes with `streams` concurrent clients; returns
/// (put MiB/s, get MiB/s) and appends the per-request latencies.
#[allow(clippy::too_many_arguments)]
async fn round(
    url: &str,
    tok: &[u8],
    size: usize,
    count: usize,
    streams: usize,
    seed: u64,
    put_lat: &mut Vec<Duration>,
    get_lat: &mut Vec<Duration>,
) -> (f64, f64) {
    let shards: Arc<Vec<(Hash, Bytes)>> = Arc::new(
        (0..count)
            .map(|i| {
                let d = shard(seed + i as u64, size);
                (Hash::of(&d), d)
            })
            .collect(),
    );
    let run = |is_put: bool| {
        let shards = shards.clone();
        let tok = tok.to_vec();
        let url = url.to_string();
        async move {
            let start = Instant::now();
            let mut tasks = Vec::new();
            for s in 0..streams {
                let (shards, tok, url) = (shards.clone(), tok.clone(), url.clone());
                tasks.push(tokio::spawn(async move {
                    let mut c = connect(&url).await;
                    let mut lat = Vec::new();
                    for (h, d) in shards.iter().skip(s).step_by(streams) {
                        let t = Instant::now();
                        if is_put {
                            put(&mut c, *h, d.clone(), &tok).await;
                        } else {
                            assert_eq!(get(&mut c, *h, &tok).await, d.len());
                        }
                        lat.push(t.elapsed());
                    }
                    lat
                }));
            }
            let mut lat = Vec::new();
            for t in tasks {
                lat.extend(t.await.unwrap());
            }
            (
                (size * count) as f64 / MIB as f64 / start.elapsed().as_secs_f64(),
                lat,
            )
        }
    };
    let (p, pl) = run(true).await;
    let (g, gl) = run(false).await;
    put_lat.extend(pl);
    get_lat.extend(gl);
    (p, g)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn pct(lat: &mut [Duration], q: f64) -> f64 {
    lat.sort();
    lat[((lat.len() - 1) as f64 * q).round() as usize].as_secs_f64() * 1e3
}

/// Sequential writes of `total` bytes in `block`-byte writes; `sync_each` fdatasyncs every block
/// (the durability a node gives each put), otherwise one fsync at the end.
fn raw_disk(dir: &Path, total: usize, block: usize, sync_each: bool) -> f64 {
    let p = dir.join("raw.bin");
    let buf = shard(999, block);
    let mut f = std::fs::File::create(&p).unwrap();
    let start = Instant::now();
    let mut written = 0;
    while written < total {
        f.write_all(&buf).unwrap();
        if sync_each {
            f.sync_data().unwrap();
        }
        written += block;
    }
    f.sync_all().unwrap();
    let mbps = written as f64 / MIB as f64 / start.elapsed().as_secs_f64();
    drop(f);
    std::fs::remove_file(&p).unwrap();
    mbps
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --benches` passes nothing useful: only run for real
    // under `cargo bench`.
    if !std::env::args().any(|a| a == "--bench") {
        println!("node bench: run with `cargo bench -p cyxcloud-node --bench node`");
        return;
    }
    let base = std::env::var("BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/bench-node"));
    std::fs::create_dir_all(&base).unwrap();
    let mb: usize = std::env::var("BENCH_MB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(128);
    let total = mb * MIB;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let signer = TokenSigner::from_seed([5; 32]);
    let tok = token(&signer);
    let rounds: usize = std::env::var("BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    println!(
        "# cyxcloud-node bench: {rounds} rounds x {mb} MiB per case, dir {}",
        base.display()
    );
    println!(
        "# each round: raw sequential write of {mb} MiB (fdatasync per shard-sized block), then \
         PutShard of {mb} MiB, then GetShard of the same shards; medians over rounds"
    );
    println!(
        "| records | shard | streams | raw MiB/s | put MiB/s | put/raw | put p50 ms | put p99 ms | get MiB/s | get p50 ms | get p99 ms |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    for compression in [false, true] {
        let dir = base.join(format!("node-{compression}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let (node, url) = start_node(&dir, compression, &signer);
        let mut seed = 0;
        for (size, streams) in [(MIB, 4), (8 * MIB, 1), (8 * MIB, 4)] {
            if compression && size == MIB {
                continue;
            }
            let count = (total / size).max(4);
            let (mut raws, mut puts, mut gets, mut ratios) = (vec![], vec![], vec![], vec![]);
            let (mut pl, mut gl) = (vec![], vec![]);
            for _ in 0..rounds {
                seed += 1_000_000;
                let raw = raw_disk(&base, total, size, true);
                let (p, g) = rt.block_on(round(
                    &url, &tok, size, count, streams, seed, &mut pl, &mut gl,
                ));
                raws.push(raw);
                puts.push(p);
                gets.push(g);
                ratios.push(p / raw);
            }
            println!(
                "| {} | {} MiB | {streams} | {:.0} | {:.0} | {:.0} % | {:.1} | {:.1} | {:.0} | {:.1} | {:.1} |",
                if compression { "lz4 on" } else { "plain" },
                size / MIB,
                median(raws),
                median(puts),
                median(ratios) * 100.0,
                pct(&mut pl, 0.5),
                pct(&mut pl, 0.99),
                median(gets),
                pct(&mut gl, 0.5),
                pct(&mut gl, 0.99),
            );
        }
        drop(node);
        let _ = std::fs::remove_dir_all(&dir);
    }
    println!(
        "raw sequential write, 8 MiB blocks, one fsync at the end (page cache bound): {:.0} MiB/s",
        raw_disk(&base, total, 8 * MIB, false)
    );
}
