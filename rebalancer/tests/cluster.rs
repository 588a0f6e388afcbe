//! The rebalancer between real processes: a gateway, up to 18 nodes and `cyxcloud-rebalancer`
//! (testkit's cluster starts it as `cyxcloud up` does), files written with default settings
//! through the client library.

use std::time::{Duration, Instant};

use cyxcloud_client::write::UploadOptions;
use cyxcloud_client::{Client, ClientConfig, ReadOptions, path_ref};
use cyxcloud_proto::v1;
use cyxcloud_testkit::cluster::{ACCESS_KEY, Cluster, ClusterOptions, SECRET_KEY};

const CHUNK: usize = 256 * 1024;

async fn client(c: &Cluster) -> Client {
    let mut cfg = ClientConfig::new(c.grpc_url(), ACCESS_KEY, SECRET_KEY);
    cfg.shard_timeout = Duration::from_secs(20);
    Client::connect(cfg).await.expect("connect")
}

fn data(len: usize, seed: u64) -> Vec<u8> {
    let mut v = vec![0u8; len];
    let mut x = 0x9E37_79B9_7F4A_7C15u64 ^ seed;
    for b in v.iter_mut() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    v
}

async fn put(client: &Client, b: &str, key: &str, bytes: &[u8]) {
    let mut up = client.upload(path_ref(b, key), UploadOptions::default());
    up.write(bytes).await.expect("write");
    up.finish().await.expect("finish");
}

async fn get(client: &Client, b: &str, key: &str) -> Vec<u8> {
    let mut out = Vec::new();
    client
        .download_to(path_ref(b, key), None, &mut out, ReadOptions::default())
        .await
        .unwrap_or_else(|e| panic!("download {key}: {e}"));
    out
}

/// Polls `f` every 100 ms until it returns `Some`, or fails after `timeout`.
async fn eventually<T, F: std::future::Future<Output = Option<T>>>(
    timeout: Duration,
    what: &str,
    mut f: impl FnMut() -> F,
) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn node_states(client: &Client) -> Vec<(String, i32)> {
    client
        .maintenance()
        .nodes(v1::MaintenanceNodesRequest {})
        .await
        .expect("nodes")
        .into_inner()
        .nodes
        .into_iter()
        .map(|n| (n.id, n.state))
        .collect()
}

async fn degraded(client: &Client) -> v1::DegradedResponse {
    client
        .maintenance()
        .degraded(v1::DegradedRequest {
            limit: 1000,
            exclude: vec![],
        })
        .await
        .expect("degraded")
        .into_inner()
}

/// Waits until the gateway counts `ids` offline, then until no chunk is degraded.
async fn wait_repaired(client: &Client, ids: &[String], log: &str) {
    eventually(
        Duration::from_secs(60),
        "the dead nodes to be offline",
        || async {
            let states = node_states(client).await;
            ids.iter()
                .all(|id| {
                    states
                        .iter()
                        .any(|(n, s)| n == id && *s == v1::NodeState::Offline as i32)
                })
                .then_some(())
        },
    )
    .await;
    let started = Instant::now();
    eventually(
        Duration::from_secs(240),
        "every chunk back to k+m",
        || async {
            let d = degraded(client).await;
            (d.total == 0).then_some(())
        },
    )
    .await;
    eprintln!("repaired in {:?}", started.elapsed());
    let _ = log;
}

fn metric(c: &Cluster, name: &str) -> f64 {
    let text = cyxcloud_testkit::http_get(c.rebalancer_addr(), "/metrics")
        .unwrap()
        .1;
    text.lines()
        .filter(|l| l.starts_with(name) && !l.starts_with('#'))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn after_four_nodes_die_repair_restores_every_chunk_so_four_more_can_die() {
    let mut c = Cluster::start(ClusterOptions {
        nodes: 18,
        chunk_size: Some(CHUNK as u64),
        ..Default::default()
    });
    let client = client(&c).await;
    client
        .control()
        .create_bucket(v1::CreateBucketRequest {
            name: "keep".into(),
            public_read: false,
        })
        .await
        .unwrap();
    let mut files = Vec::new();
    for (i, len) in [0usize, 1000, CHUNK - 1, CHUNK * 3 + 17, 2 << 20]
        .into_iter()
        .enumerate()
    {
        let d = data(len, i as u64 + 1);
        put(&client, "keep", &format!("f{i}"), &d).await;
        files.push((format!("f{i}"), d));
    }
    // Once the writes' slow shards are stored (a write returns at k+m-1), three nodes die and
    // a fourth freezes (alive to the kernel, silent to the cluster).
    c.wait_redundant(Duration::from_secs(120));
    let first = [2usize, 5, 11, 16];
    for &i in &first[..3] {
        c.kill_node(i);
    }
    c.nodes[first[3]].proc.as_ref().unwrap().pause();
    let ids: Vec<String> = first.iter().map(|&i| c.nodes[i].id.clone()).collect();
    wait_repaired(&client, &ids, "first").await;
    // Every file has more than 2 chunks' worth of shards on 18 nodes: some were on the dead.
    let repaired = metric(&c, "cyxcloud_rebalancer_shards_repaired_total");
    assert!(repaired >= 4.0, "{repaired} shards repaired");

    // Four other nodes die: every file still reads back bit-exact.
    for i in [0usize, 7, 9, 13] {
        c.kill_node(i);
    }
    for (k, d) in &files {
        assert!(get(&client, "keep", k).await == *d, "{k} differs");
    }
    c.nodes[first[3]].proc.as_ref().unwrap().resume();
}

/// Writes new files and reads old ones until `stop`, returning how many of each succeeded
/// and every failure.
async fn load(
    client: Client,
    bucket: &'static str,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> (usize, usize, Vec<String>) {
    let (mut writes, mut reads, mut errors) = (0, 0, Vec::new());
    let mut written: Vec<(String, Vec<u8>)> = Vec::new();
    let mut i = 0u64;
    while !stop.load(std::sync::atomic::Ordering::SeqCst) {
        let key = format!("load-{i}");
        let d = data(CHUNK + 5000 * i as usize % CHUNK, 1000 + i);
        let mut up = client.upload(path_ref(bucket, &key), UploadOptions::default());
        let r = async {
            up.write(&d).await?;
            up.finish().await
        }
        .await;
        match r {
            Ok(_) => {
                writes += 1;
                written.push((key, d));
            }
            Err(e) => errors.push(format!("write {key}: {e}")),
        }
        if let Some((k, want)) = written.get(i as usize * 7 % written.len().max(1)) {
            let mut out = Vec::new();
            match client
                .download_to(path_ref(bucket, k), None, &mut out, ReadOptions::default())
                .await
            {
                Ok(_) if out == *want => reads += 1,
                Ok(_) => errors.push(format!("read {k}: wrong bytes")),
                Err(e) => errors.push(format!("read {k}: {e}")),
            }
        }
        i += 1;
    }
    for (k, want) in &written {
        if get(&client, bucket, k).await != *want {
            errors.push(format!("{k} differs at the end"));
        }
    }
    (writes, reads, errors)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_drained_under_load_ends_empty_and_a_drain_killed_halfway_loses_nothing() {
    let mut c = Cluster::start(ClusterOptions {
        nodes: 16,
        chunk_size: Some(CHUNK as u64),
        ..Default::default()
    });
    let client = client(&c).await;
    client
        .control()
        .create_bucket(v1::CreateBucketRequest {
            name: "drain".into(),
            public_read: false,
        })
        .await
        .unwrap();
    let mut files = Vec::new();
    for i in 0..6u64 {
        let d = data(3 * CHUNK + 1234 * i as usize, 50 + i);
        put(&client, "drain", &format!("f{i}"), &d).await;
        files.push((format!("f{i}"), d));
    }
    c.wait_redundant(Duration::from_secs(120));

    // Drain node 3 (SIGTERM) while files are written and read.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let worker = tokio::spawn(load(client.clone(), "drain", stop.clone()));
    let drained = c.nodes[3].id.clone();
    c.nodes[3].proc.as_ref().unwrap().term();
    let status = tokio::task::block_in_place(|| {
        c.nodes[3]
            .proc
            .as_mut()
            .unwrap()
            .wait_exit(Duration::from_secs(180))
    });
    assert!(status.success(), "the drained node exits cleanly: {status}");
    c.nodes[3].proc = None;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let (writes, reads, errors) = worker.await.unwrap();
    assert!(errors.is_empty(), "{errors:?}");
    assert!(writes > 0 && reads > 0, "{writes} writes, {reads} reads");
    let states = node_states(&client).await;
    assert!(
        states
            .iter()
            .any(|(n, s)| *n == drained && *s == v1::NodeState::Drained as i32),
        "{states:?}"
    );
    assert_eq!(degraded(&client).await.total, 0);

    // Drain node 8 slowly (about two shard copies a second), and kill it once the drain has
    // begun moving shards: its remaining shards are rebuilt elsewhere, at full speed.
    c.kill_rebalancer();
    c.opts.rebalancer_settings = vec!["rate_limit_bytes_per_hour=360000000".into()];
    c.start_rebalancer();
    let victim = c.nodes[8].id.clone();
    c.nodes[8].proc.as_ref().unwrap().term();
    eventually(
        Duration::from_secs(60),
        "the drain to move a shard",
        || async { (metric(&c, "cyxcloud_rebalancer_shards_repaired_total") > 0.0).then_some(()) },
    )
    .await;
    c.kill_node(8);
    c.kill_rebalancer();
    c.opts.rebalancer_settings.clear();
    c.start_rebalancer();
    wait_repaired(&client, &[victim], "halfway").await;
    for (k, d) in &files {
        assert!(get(&client, "drain", k).await == *d, "{k} differs");
    }
}

/// The `"holder"` a rebalancer's `/health` names.
fn holder_of(c: &Cluster) -> String {
    let (_, body) = cyxcloud_testkit::http_get(c.rebalancer_addr(), "/health").expect("health");
    let v: serde_json::Value = serde_json::from_str(&body).expect("health JSON");
    v["holder"].as_str().expect("a holder").to_string()
}

/// A rebalancer killed in the middle of a repair leaves the chunk's lease held for its lease
/// time (10 min by default). Restarted, it keeps its name and so takes the lease back at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_restarted_rebalancer_takes_back_the_leases_of_the_one_killed() {
    let mut c = Cluster::start(ClusterOptions {
        nodes: 15,
        chunk_size: Some(CHUNK as u64),
        ..Default::default()
    });
    let client = client(&c).await;
    client
        .control()
        .create_bucket(v1::CreateBucketRequest {
            name: "lease".into(),
            public_read: false,
        })
        .await
        .unwrap();
    let body = data(3 * CHUNK + 5, 9);
    put(&client, "lease", "f", &body).await;
    c.wait_redundant(Duration::from_secs(60));
    let holder = holder_of(&c);
    c.kill_rebalancer();
    let dead = c.nodes[4].id.clone();
    c.kill_node(4);
    eventually(
        Duration::from_secs(60),
        "the node to be offline",
        || async {
            node_states(&client)
                .await
                .iter()
                .any(|(n, s)| *n == dead && *s == v1::NodeState::Offline as i32)
                .then_some(())
        },
    )
    .await;
    // What the killed rebalancer left: a repair of a chunk in flight, its grant and lease
    // good for 10 minutes.
    let d = degraded(&client).await;
    let ch = d
        .chunks
        .first()
        .expect("a chunk with a shard on the dead node");
    let lost = ch.shards.iter().find(|s| s.node_id == dead).unwrap().index;
    let sources = ch
        .shards
        .iter()
        .filter(|s| s.node_id != dead && s.state == v1::ShardState::Stored as i32)
        .take(10)
        .map(|s| v1::RepairSource {
            index: s.index,
            node_id: s.node_id.clone(),
        })
        .collect();
    let target = c
        .nodes
        .iter()
        .map(|n| n.id.clone())
        .find(|n| *n != dead && ch.shards.iter().all(|s| s.node_id != *n))
        .unwrap();
    let g = client
        .maintenance()
        .grant_repair(v1::GrantRepairRequest {
            key: ch.key.clone(),
            holder: holder.clone(),
            lease_ms: 600_000,
            sources,
            targets: vec![v1::RepairTarget {
                index: lost,
                node_id: target,
                ..Default::default()
            }],
        })
        .await
        .unwrap()
        .into_inner();
    assert!(g.granted);
    c.start_rebalancer();
    assert_eq!(holder_of(&c), holder, "the same name after a restart");
    eventually(
        Duration::from_secs(60),
        "every chunk back to k+m",
        || async { (degraded(&client).await.total == 0).then_some(()) },
    )
    .await;
    assert!(get(&client, "lease", "f").await == body);
}

async fn audit_of(client: &Client, node: &str) -> v1::AuditScore {
    client
        .maintenance()
        .nodes(v1::MaintenanceNodesRequest {})
        .await
        .unwrap()
        .into_inner()
        .nodes
        .into_iter()
        .find(|n| n.id == node)
        .and_then(|n| n.audit)
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bytes_flipped_on_a_nodes_disk_are_found_by_audits_and_rebuilt() {
    let mut c = Cluster::start(ClusterOptions {
        nodes: 15,
        chunk_size: Some(CHUNK as u64),
        rebalancer_settings: vec!["audit_period_secs=3".into(), "audit_interval_ms=200".into()],
        ..Default::default()
    });
    let client = client(&c).await;
    client
        .control()
        .create_bucket(v1::CreateBucketRequest {
            name: "rot".into(),
            public_read: false,
        })
        .await
        .unwrap();
    let mut files = Vec::new();
    for i in 0..4u64 {
        let d = data(4 * CHUNK + 999 * i as usize, 70 + i);
        put(&client, "rot", &format!("f{i}"), &d).await;
        files.push((format!("f{i}"), d));
    }
    c.wait_redundant(Duration::from_secs(120));
    let i = 6;
    let id = c.nodes[i].id.clone();
    // Audits pass while the bytes are intact.
    eventually(
        Duration::from_secs(60),
        "audits of the intact node",
        || async { (audit_of(&client, &id).await.audits > 0).then_some(()) },
    )
    .await;
    assert_eq!(audit_of(&client, &id).await.failures, 0);
    // Bytes flipped in every blob file of the node's disk.
    c.corrupt_node_disk(i);
    let before = audit_of(&client, &id).await;
    let failed = eventually(Duration::from_secs(120), "a failed audit", || async {
        let a = audit_of(&client, &id).await;
        (a.failures > 0).then_some(a)
    })
    .await;
    assert!(
        failed.score < 1.0 && failed.score < before.score.max(1.0),
        "{failed:?}"
    );
    assert!(!failed.last_error.is_empty(), "{failed:?}");
    // The corrupt shard is rebuilt elsewhere; every file reads back.
    eventually(
        Duration::from_secs(120),
        "the corrupt shard rebuilt",
        || async {
            (degraded(&client).await.total == 0
                && metric(&c, "cyxcloud_rebalancer_shards_repaired_total") > 0.0)
                .then_some(())
        },
    )
    .await;
    for (k, d) in &files {
        assert!(get(&client, "rot", k).await == *d, "{k} differs");
    }
}

fn node_shards(c: &Cluster, i: usize) -> u64 {
    let (_, body) = cyxcloud_testkit::http_get(c.nodes[i].metrics_addr(), "/health").unwrap();
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    v["shard_count"].as_u64().unwrap()
}

fn total_shards(c: &Cluster) -> u64 {
    (0..c.nodes.len())
        .filter(|&i| c.nodes[i].is_up())
        .map(|i| node_shards(c, i))
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn deleted_files_aborted_uploads_and_orphans_on_a_moved_disk_are_collected() {
    let mut c = Cluster::start(ClusterOptions {
        nodes: 7,
        chunk_size: Some(CHUNK as u64),
        rebalancer_settings: vec!["scan_interval_secs=1".into(), "gc_grace_secs=2".into()],
        ..Default::default()
    });
    let client = client(&c).await;
    client
        .control()
        .create_bucket(v1::CreateBucketRequest {
            name: "gcol".into(),
            public_read: false,
        })
        .await
        .unwrap();
    // Whole chunks of random bytes: no two shards alike (a short chunk's zero-padded data
    // shards would share a hash, stored once per node).
    let keep = data(2 * CHUNK, 1);
    put(&client, "gcol", "keep", &keep).await;
    c.wait_redundant(Duration::from_secs(60));
    let kept = total_shards(&c);
    assert_eq!(kept, 2 * 14, "two chunks of 14 shards");

    // A deleted file and an aborted upload leave nothing behind.
    put(&client, "gcol", "gone", &data(3 * CHUNK, 2)).await;
    let mut up = client.upload(path_ref("gcol", "aborted"), UploadOptions::default());
    up.write(&data(2 * CHUNK, 3)).await.unwrap();
    up.abort().await.unwrap();
    client
        .control()
        .unlink(v1::RemoveRequest {
            path: Some(v1::BucketPath {
                bucket: "gcol".into(),
                path: "gone".into(),
            }),
            ..Default::default()
        })
        .await
        .unwrap();
    eventually(
        Duration::from_secs(60),
        "released shards deleted",
        || async { (total_shards(&c) == kept).then_some(()) },
    )
    .await;

    // A disk moved from node 1 to a new node: the new node holds copies nothing refers to
    // there. The orphan sweep finds them and, after the grace period, has them deleted.
    c.kill_node(1);
    c.start_node(1);
    c.wait_registered(1);
    c.kill_node(1);
    let moved = c.add_node(Some(1));
    c.start_node(1);
    c.wait_registered(1);
    c.wait_registered(moved);
    let copies = node_shards(&c, moved);
    assert!(copies > 0);
    eventually(Duration::from_secs(60), "the orphans collected", || async {
        (node_shards(&c, moved) == 0).then_some(())
    })
    .await;
    assert_eq!(
        metric(&c, "cyxcloud_rebalancer_orphans_collected_total"),
        copies as f64
    );
    // Referenced shards were left alone.
    assert_eq!(node_shards(&c, 1), copies);
    assert_eq!(total_shards(&c), kept);
    assert!(get(&client, "gcol", "keep").await == keep);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn after_nodes_are_relabelled_into_one_rack_shards_move_out_to_the_limits() {
    let mut c = Cluster::start(ClusterOptions {
        nodes: 10,
        chunk_size: Some(CHUNK as u64),
        rebalancer_settings: vec!["scan_interval_secs=1".into()],
        ..Default::default()
    });
    let client = client(&c).await;
    client
        .control()
        .create_bucket(v1::CreateBucketRequest {
            name: "racks".into(),
            public_read: false,
        })
        .await
        .unwrap();
    let mut files = Vec::new();
    for i in 0..3u64 {
        let d = data(4 * CHUNK, 90 + i);
        put(&client, "racks", &format!("f{i}"), &d).await;
        files.push((format!("f{i}"), d));
    }
    c.wait_redundant(Duration::from_secs(60));
    // Half the nodes turn out to share one rack in one datacenter (the operator labels them).
    let rack: Vec<String> = c.nodes[..5].iter().map(|n| n.id.clone()).collect();
    let in_rack_max = |chunks: &[v1::DegradedChunk]| {
        chunks
            .iter()
            .map(|ch| {
                ch.shards
                    .iter()
                    .filter(|s| rack.contains(&s.node_id))
                    .count()
            })
            .max()
            .unwrap_or(0)
    };
    let all_chunks = || async {
        client
            .maintenance()
            .chunks(v1::ChunksRequest {
                after: vec![],
                limit: 1000,
            })
            .await
            .unwrap()
            .into_inner()
            .chunks
    };
    assert!(
        in_rack_max(&all_chunks().await) > 4,
        "some chunk has more than 4 shards there"
    );
    for i in 0..5 {
        let cfg = std::fs::read_to_string(&c.nodes[i].config).unwrap();
        let cfg = cfg.replace(
            "region = \"test\"\n",
            "region = \"test\"\ndatacenter = \"dc1\"\nrack = \"r1\"\n",
        );
        std::fs::write(&c.nodes[i].config, cfg).unwrap();
        c.kill_node(i);
        c.start_node(i);
        c.wait_registered(i);
    }
    // The placement check moves shards until no chunk has more than 4 in that rack (the
    // usage guide's rack limit, which these 10 nodes allow) or 2 on a node.
    let chunks = eventually(
        Duration::from_secs(120),
        "placements within the limits",
        || async {
            let chunks = all_chunks().await;
            (in_rack_max(&chunks) <= 4
                && degraded(&client).await.total == 0
                && chunks.iter().all(|ch| {
                    ch.shards
                        .iter()
                        .all(|s| ch.shards.iter().filter(|t| t.node_id == s.node_id).count() <= 2)
                }))
            .then_some(chunks)
        },
    )
    .await;
    assert_eq!(chunks.len(), 12);
    assert!(metric(&c, "cyxcloud_rebalancer_shards_repaired_total") > 0.0);
    for (k, d) in &files {
        assert!(get(&client, "racks", k).await == *d, "{k} differs");
    }
}
