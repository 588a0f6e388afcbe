//! Repair after a node dies, on a real local cluster (gateway + 15 nodes + rebalancer, release
//! binaries): time to detection, time to full redundancy, and repair throughput as a ratio of
//! this machine's ceiling for the same traffic (k shard reads and the lost shards' writes per
//! chunk, between node processes over gRPC) measured in the same run; then the durability
//! model of the usage guide's 10+4 with the measured repair time.
//!
//! ```text
//! cargo build --release --bins
//! cargo bench -p cyxcloud-rebalancer --bench repair                 # ~0.25 GiB on the node that dies
//! CYX_BENCH_NODE_GIB=1 cargo bench -p cyxcloud-rebalancer --bench repair
//! ```

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use cyxcloud_client::write::UploadOptions;
use cyxcloud_client::{Client, ClientConfig, path_ref};
use cyxcloud_proto::v1;
use cyxcloud_proto::v1::chunk_service_client::ChunkServiceClient;
use cyxcloud_proto::v1::put_shard_request::Msg;
use cyxcloud_testkit::cluster::{ACCESS_KEY, Cluster, ClusterOptions, SECRET_KEY};
use futures::StreamExt;

const MIB: usize = 1 << 20;
const HEARTBEAT_MS: u64 = 1000;
const PARALLELISM: usize = 4;

fn data(len: usize, seed: u64) -> Vec<u8> {
    let mut v = vec![0u8; len];
    let mut x = 0x9E37_79B9_7F4A_7C15u64 ^ seed;
    for c in v.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let b = x.to_le_bytes();
        c.copy_from_slice(&b[..c.len()]);
    }
    v
}

async fn channel(addr: &str) -> tonic::transport::Channel {
    tonic::transport::Endpoint::from_shared(addr.to_string())
        .unwrap()
        .tcp_nodelay(true)
        .initial_stream_window_size(8 << 20)
        .initial_connection_window_size(32 << 20)
        .connect()
        .await
        .unwrap()
}

/// One chunk the victim holds shards of: its key, the other shards, and how many it holds.
struct Victim {
    key: Vec<u8>,
    sources: Vec<v1::RepairSource>,
    lost: Vec<u32>,
    shard_size: u64,
}

/// The ceiling: for each chunk, k GetShards from their nodes and one PutShard per lost shard
/// to a node not holding the chunk (a fetched shard's bytes, under a Put token the gateway
/// grants for it), `PARALLELISM` chunks at a time. Returns bytes moved and seconds.
async fn ceiling(client: &Client, chunks: &[Victim], spare: &str) -> (u64, f64) {
    let mut m = client.maintenance();
    let mut grants = Vec::new();
    for c in chunks {
        let k = c.sources.len();
        // Put targets: the first `lost.len()` source indexes, on the spare node.
        let targets = c.sources[..c.lost.len().min(k)]
            .iter()
            .map(|s| v1::RepairTarget {
                index: s.index,
                node_id: spare.to_string(),
                ..Default::default()
            })
            .collect();
        let g = m
            .grant_repair(v1::GrantRepairRequest {
                key: c.key.clone(),
                holder: "bench-ceiling".into(),
                lease_ms: 600_000,
                sources: c.sources.clone(),
                targets,
            })
            .await
            .unwrap()
            .into_inner();
        assert!(g.granted);
        grants.push(g);
    }
    let t = Instant::now();
    let moved: Vec<u64> = futures::stream::iter(grants.iter().map(|g| async move {
        let mut fetched = BTreeMap::new();
        let gets = g.sources.iter().map(|s| async move {
            let mut c = ChunkServiceClient::new(channel(&s.address).await)
                .max_decoding_message_size(cyxcloud_proto::MAX_MESSAGE_BYTES);
            let mut st = c
                .get_shard(v1::GetShardRequest {
                    hash: s.hash.clone(),
                    token: s.token.clone(),
                    offset: 0,
                    length: 0,
                })
                .await
                .unwrap()
                .into_inner();
            let mut buf = Vec::new();
            while let Some(p) = st.message().await.unwrap() {
                buf.extend_from_slice(&p.data);
            }
            (s.index, buf)
        });
        for (i, b) in futures::future::join_all(gets).await {
            fetched.insert(i, b);
        }
        let mut bytes: u64 = fetched.values().map(|b| b.len() as u64).sum();
        for t in &g.targets {
            let d = bytes::Bytes::from(fetched[&t.index].clone());
            let hash = g
                .sources
                .iter()
                .find(|s| s.index == t.index)
                .unwrap()
                .hash
                .clone();
            let msgs = vec![
                v1::PutShardRequest {
                    msg: Some(Msg::Header(v1::PutShardHeader {
                        hash,
                        size: d.len() as u64,
                        token: t.token.clone(),
                    })),
                },
                v1::PutShardRequest {
                    msg: Some(Msg::Data(d.clone())),
                },
            ];
            ChunkServiceClient::new(channel(&t.address).await)
                .put_shard(tokio_stream::iter(msgs))
                .await
                .unwrap();
            bytes += d.len() as u64;
        }
        bytes
    }))
    .buffer_unordered(PARALLELISM)
    .collect()
    .await;
    let secs = t.elapsed().as_secs_f64();
    // The copies go: the grants end, and garbage collection deletes them.
    for c in chunks {
        m.abandon_repair(v1::AbandonRepairRequest {
            key: c.key.clone(),
            holder: "bench-ceiling".into(),
        })
        .await
        .unwrap();
    }
    (moved.iter().sum(), secs)
}

/// P(a chunk is lost within one repair window): at least m + 1 of its n nodes fail within
/// the window, each independently with probability `p`.
fn window_loss(n: u32, m: u32, p: f64) -> f64 {
    let choose =
        |n: u32, k: u32| -> f64 { (0..k).fold(1.0, |a, i| a * (n - i) as f64 / (i + 1) as f64) };
    (m + 1..=n)
        .map(|i| choose(n, i) * p.powi(i as i32) * (1.0 - p).powi((n - i) as i32))
        .sum()
}

fn main() {
    let node_gib: f64 = std::env::var("CYX_BENCH_NODE_GIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.25);
    let nodes = 15;
    let mut c = Cluster::start(ClusterOptions {
        nodes,
        heartbeat_ms: HEARTBEAT_MS,
        chunk_size: Some(4 * MIB as u64),
        capacity_gb: 64.0,
        rebalancer_settings: vec![
            "rate_limit_bytes_per_hour=0".into(),
            format!("repair_parallelism={PARALLELISM}"),
            "audit_period_secs=0".into(),
        ],
        ..Default::default()
    });
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut cfg = ClientConfig::new(c.grpc_url(), ACCESS_KEY, SECRET_KEY);
        cfg.wait_all_shards = true;
        let client = Client::connect(cfg).await.unwrap();
        client
            .control()
            .create_bucket(v1::CreateBucketRequest {
                name: "bench".into(),
                public_read: false,
            })
            .await
            .unwrap();
        // Enough data that one node holds about `node_gib`: 14/10 of it spread over 15 nodes.
        let total = (node_gib * (1u64 << 30) as f64 * nodes as f64 / 1.4) as usize;
        let file = 64 * MIB;
        let files = total.div_ceil(file);
        let t = Instant::now();
        let mut ids = Vec::new();
        for i in 0..files {
            let mut up = client.upload(path_ref("bench", &format!("f{i}")), UploadOptions::default());
            up.write(&data(file, i as u64)).await.unwrap();
            ids.push(up.finish().await.unwrap().id);
        }
        eprintln!("uploaded {} MiB in {:.1} s", files * 64, t.elapsed().as_secs_f64());
        tokio::task::block_in_place(|| c.wait_redundant(Duration::from_secs(600)));

        // The victim: the node holding the most shard bytes.
        let status = client
            .control()
            .cluster_status(v1::ClusterStatusRequest {})
            .await
            .unwrap()
            .into_inner();
        let victim = status
            .nodes
            .iter()
            .max_by_key(|n| n.used_bytes)
            .unwrap()
            .clone();
        let mut chunks = Vec::new();
        for id in &ids {
            let l = client
                .control()
                .get_layout(v1::GetLayoutRequest {
                    entry: Some(v1::EntryRef {
                        r#ref: Some(v1::entry_ref::Ref::Id(*id)),
                    }),
                    offset: 0,
                    length: 0,
                })
                .await
                .unwrap()
                .into_inner();
            for ch in l.chunks {
                let info = ch.info.clone().unwrap();
                let lost: Vec<u32> = ch
                    .shards
                    .iter()
                    .filter(|s| s.node_id == victim.node_id)
                    .map(|s| s.index)
                    .collect();
                if lost.is_empty() {
                    continue;
                }
                // The chunk's storage key (the gateway's `layout::chunk_key`): a hash of its
                // whole description.
                let key = {
                    use prost::Message;
                    let mut h = blake3::Hasher::new_derive_key("cyxcloud gateway chunk key v1");
                    h.update(&info.encode_to_vec());
                    h.finalize().as_bytes().to_vec()
                };
                let sources = ch
                    .shards
                    .iter()
                    .filter(|s| s.node_id != victim.node_id)
                    .take(info.data_shards as usize)
                    .map(|s| v1::RepairSource {
                        index: s.index,
                        node_id: s.node_id.clone(),
                    })
                    .collect();
                chunks.push(Victim {
                    key,
                    sources,
                    lost,
                    shard_size: info.shard_size as u64,
                });
            }
        }
        let lost_shards: usize = chunks.iter().map(|v| v.lost.len()).sum();
        let traffic: u64 = chunks
            .iter()
            .map(|v| v.shard_size * (v.sources.len() + v.lost.len()) as u64)
            .sum();
        let spare = status
            .nodes
            .iter()
            .find(|n| n.node_id != victim.node_id)
            .unwrap()
            .node_id
            .clone();
        let (ceil_bytes, ceil_secs) = ceiling(&client, &chunks, &spare).await;
        let ceil_rate = ceil_bytes as f64 / ceil_secs;
        tokio::task::block_in_place(|| c.wait_redundant(Duration::from_secs(600)));

        // The node dies.
        let i = c.nodes.iter().position(|n| n.id == victim.node_id).unwrap();
        let killed = Instant::now();
        c.kill_node(i);
        let mut m = client.maintenance();
        let detected = loop {
            let ns = m.nodes(v1::MaintenanceNodesRequest {}).await.unwrap().into_inner();
            if ns
                .nodes
                .iter()
                .any(|n| n.id == victim.node_id && n.state == v1::NodeState::Offline as i32)
            {
                break killed.elapsed();
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let repaired = loop {
            let d = m
                .degraded(v1::DegradedRequest {
                    limit: 1,
                    exclude: vec![],
                })
                .await
                .unwrap()
                .into_inner();
            if d.total == 0 {
                break killed.elapsed();
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let repair_secs = (repaired - detected).as_secs_f64();
        let repair_rate = traffic as f64 / repair_secs;
        let gib = |b: f64| b / (1u64 << 30) as f64;
        let mib = |b: f64| b / MIB as f64;
        println!("node that died: {} holding {:.2} GiB in {} shards of {} chunks", victim.node_id, gib(victim.used_bytes as f64), lost_shards, chunks.len());
        println!("detection: {:.2} s ({:.1} heartbeat intervals of {HEARTBEAT_MS} ms)", detected.as_secs_f64(), detected.as_millis() as f64 / HEARTBEAT_MS as f64);
        println!("full redundancy: {:.2} s after the kill ({repair_secs:.2} s of repair)", repaired.as_secs_f64());
        println!("repair traffic: {:.1} MiB (k reads + lost writes per chunk) at {:.1} MiB/s", mib(traffic as f64), mib(repair_rate));
        println!("ceiling, same traffic pattern between node processes: {:.1} MiB in {ceil_secs:.2} s = {:.1} MiB/s", mib(ceil_bytes as f64), mib(ceil_rate));
        println!("repair / ceiling: {:.2}", repair_rate / ceil_rate);
        // Durability: 10+4, the measured time to full redundancy as the repair window.
        let month = 30.0 * 86400.0;
        let year = 365.0 * 86400.0;
        let window = repaired.as_secs_f64();
        for (label, w) in [
            ("measured", window),
            // A node holding 4 TiB repaired at the measured throughput (same cluster share).
            ("4 TiB node at this rate", detected.as_secs_f64() + 4.0 * (1u64 << 40) as f64 * (traffic as f64 / victim.used_bytes.max(1) as f64) / repair_rate),
        ] {
            for pm in [0.01f64, 0.05, 0.10] {
                let p = 1.0 - (1.0 - pm).powf(w / month);
                let annual = window_loss(14, 4, p) * year / w;
                println!(
                    "durability ({label}: window {w:.0} s, monthly node loss {:.0}%): annual chunk loss {annual:.2e} = {:.1} nines",
                    pm * 100.0,
                    -annual.log10()
                );
            }
        }
    });
}
