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
    // Right after the writes, without waiting for their slow shards: three nodes die and a
    // fourth freezes (alive to the kernel, silent to the cluster).
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
