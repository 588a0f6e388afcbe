//! The striping client against a real cluster: a `cyxcloud-gateway` and real `cyxcloud-node`
//! processes (testkit), everything through the public client API.

use std::time::Duration;

use bytes::Bytes;
use cyxcloud_client::write::UploadOptions;
use cyxcloud_client::{Client, ClientConfig, ReadOptions, path_ref};
use cyxcloud_core::MasterKey;
use cyxcloud_proto::v1;
use cyxcloud_testkit::cluster::{ACCESS_KEY, Cluster, ClusterOptions, SECRET_KEY};

const MIB: usize = 1 << 20;

fn cluster(nodes: usize) -> Cluster {
    Cluster::start(ClusterOptions {
        nodes,
        chunk_size: Some(MIB as u64),
        ..Default::default()
    })
}

async fn client(c: &Cluster) -> Client {
    let mut cfg = ClientConfig::new(c.grpc_url(), ACCESS_KEY, SECRET_KEY);
    cfg.shard_timeout = Duration::from_secs(20);
    Client::connect(cfg).await.expect("connect")
}

/// Deterministic, incompressible test data.
fn data(len: usize, seed: u8) -> Vec<u8> {
    let mut v = vec![0u8; len];
    let mut x = 0x9E37_79B9_7F4A_7C15u64 ^ seed as u64;
    for b in v.iter_mut() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    v
}

async fn bucket(client: &Client, name: &str) {
    client
        .control()
        .create_bucket(v1::CreateBucketRequest {
            name: name.into(),
            public_read: false,
        })
        .await
        .expect("create bucket");
}

async fn put(client: &Client, b: &str, key: &str, bytes: &[u8], opts: UploadOptions) -> v1::Entry {
    let mut up = client.upload(path_ref(b, key), opts);
    // Feed in uneven pieces, as a socket would.
    for piece in bytes.chunks(333_333) {
        up.write(piece).await.expect("write");
    }
    up.finish().await.expect("finish")
}

async fn get(client: &Client, b: &str, key: &str, opts: ReadOptions) -> Vec<u8> {
    let mut out = Vec::new();
    client
        .download_to(path_ref(b, key), None, &mut out, opts)
        .await
        .expect("download");
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn files_round_trip_at_every_size_and_ranges_read_only_what_they_touch() {
    // No rebalancer: its audits would read shards while node traffic is being counted.
    let c = Cluster::start(ClusterOptions {
        nodes: 7,
        chunk_size: Some(MIB as u64),
        rebalancer: false,
        ..Default::default()
    });
    let client = client(&c).await;
    bucket(&client, "sizes").await;
    for (i, len) in [
        0usize,
        1,
        100,
        4096,
        4097,
        100_000,
        MIB - 1,
        MIB,
        MIB + 1,
        3 * MIB + 12_345,
    ]
    .into_iter()
    .enumerate()
    {
        let bytes = data(len, i as u8);
        let key = format!("dir/file-{len}");
        let e = put(
            &client,
            "sizes",
            &key,
            &bytes,
            UploadOptions {
                md5: true,
                ..Default::default()
            },
        )
        .await;
        assert_eq!(e.size, len as u64);
        let md5 = {
            use md5::Digest;
            hex::encode(md5::Md5::digest(&bytes))
        };
        assert_eq!(
            e.etag.trim_matches('"'),
            md5,
            "ETag is the MD5 of the content"
        );
        assert_eq!(
            get(&client, "sizes", &key, ReadOptions::default()).await,
            bytes,
            "{len} bytes"
        );
    }
    // Ranges: inside a chunk (served from data shards without decoding), across chunk
    // boundaries, past the end.
    let bytes = data(3 * MIB + 12_345, 9);
    let key = "dir/file-3158073";
    for (off, len) in [
        (0u64, 10u64),
        (5, 4096),
        (MIB as u64 - 100, 200),
        (MIB as u64 + 7, 2 * MIB as u64),
        (3 * MIB as u64, 1 << 30),
    ] {
        let served = c.node_metric_sum("cyxcloud_bytes_downloaded");
        let got = client
            .read_range(path_ref("sizes", key), off, len, ReadOptions::default())
            .await
            .expect("range");
        let end = ((off + len) as usize).min(bytes.len());
        assert_eq!(&got[..], &bytes[off as usize..end], "range {off}+{len}");
        // What the nodes served: a small range exactly its bytes; a large one whole shards of
        // the chunks it touches and no others.
        let served = c.node_metric_sum("cyxcloud_bytes_downloaded") - served;
        let want = (end - off as usize) as u64;
        let touched = (end as u64).div_ceil(MIB as u64) - off / MIB as u64;
        // Within whole chunks (the last one is 12,345 bytes, so any range of it is large).
        let full_chunks = (bytes.len() / MIB * MIB) as u64;
        if want * 2 <= MIB as u64 && end as u64 <= full_chunks {
            assert_eq!(served, want, "range {off}+{len}: bytes served by the nodes");
        } else {
            // k data shards of each touched chunk, each up to 1 MiB / k (plus a tail).
            assert!(
                served >= want && served <= touched * (MIB as u64 + 64 * 1024),
                "range {off}+{len} touching {touched} chunks: the nodes served {served} bytes"
            );
        }
    }
    // Overwrite: a new version replaces the old one.
    let v2 = data(2 * MIB, 42);
    put(&client, "sizes", key, &v2, UploadOptions::default()).await;
    assert_eq!(get(&client, "sizes", key, ReadOptions::default()).await, v2);
    // Identical content is stored once: a second file with the same bytes is deduplicated
    // (the nodes receive no shard and hold no more; they may hold fewer meanwhile, as the
    // overwritten version's shards are collected).
    let (stored, received) = (
        c.node_metric_sum("cyxcloud_chunks_stored"),
        c.node_metric_sum("cyxcloud_bytes_uploaded"),
    );
    let e = put(&client, "sizes", "dir/copy", &v2, UploadOptions::default()).await;
    assert_eq!(e.size, v2.len() as u64);
    assert_eq!(
        c.node_metric_sum("cyxcloud_bytes_uploaded"),
        received,
        "a deduplicated upload sent shards to the nodes"
    );
    assert!(
        c.node_metric_sum("cyxcloud_chunks_stored") <= stored,
        "a deduplicated upload stored shards"
    );
    assert_eq!(
        get(&client, "sizes", "dir/copy", ReadOptions::default()).await,
        v2
    );
    // A missing file is a typed not-found error.
    let err = client
        .read_range(path_ref("sizes", "nope"), 0, 1, ReadOptions::default())
        .await
        .unwrap_err();
    assert!(err.is_not_found(), "{err}");
}

/// Scans every file under `dir` for `needle`.
fn disk_contains(dir: &std::path::Path, needle: &[u8]) -> bool {
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if let Ok(b) = std::fs::read(&p)
                && b.windows(needle.len()).any(|w| w == needle)
            {
                return true;
            }
        }
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn encrypted_files_are_ciphertext_on_nodes_and_unreadable_without_the_key() {
    let c = cluster(7);
    let client = client(&c).await;
    bucket(&client, "secret").await;
    // A recognisable plaintext: a 64-byte marker repeated through 2 MiB.
    let marker: Vec<u8> =
        b"CYXCLOUD-PLAINTEXT-MARKER-0123456789-abcdefghijklmnopqrstuvwxyz!!".to_vec();
    let plain: Vec<u8> = marker.iter().copied().cycle().take(2 * MIB).collect();
    let key = MasterKey::from_bytes([0x5a; 32]);
    put(
        &client,
        "secret",
        "enc",
        &plain,
        UploadOptions {
            key: Some(key.clone()),
            ..Default::default()
        },
    )
    .await;
    let nodes_dir = c.dir.path().join("nodes");
    // Every byte the nodes wrote (RocksDB WAL, SST and blob files): no plaintext anywhere.
    assert!(
        !disk_contains(&nodes_dir, &marker),
        "plaintext marker found on a node's disk for an encrypted file"
    );
    assert_eq!(
        get(
            &client,
            "secret",
            "enc",
            ReadOptions {
                key: Some(key.clone()),
                ..Default::default()
            }
        )
        .await,
        plain
    );
    let err = client
        .download_to(
            path_ref("secret", "enc"),
            None,
            &mut Vec::new(),
            ReadOptions::default(),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(err, cyxcloud_client::ClientError::KeyRequired),
        "{err}"
    );
    let wrong = MasterKey::from_bytes([0x5b; 32]);
    let err = client
        .download_to(
            path_ref("secret", "enc"),
            None,
            &mut Vec::new(),
            ReadOptions {
                key: Some(wrong),
                ..Default::default()
            },
        )
        .await;
    assert!(err.is_err(), "a wrong key must not decrypt");
    // Control: the same bytes uploaded without encryption are found by the same scan, so the
    // check above could have failed.
    put(&client, "secret", "plain", &plain, UploadOptions::default()).await;
    assert!(
        disk_contains(&nodes_dir, &marker),
        "control: unencrypted shards hold the plaintext"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn interrupted_upload_resumes_after_the_last_durable_chunk() {
    let c = cluster(7);
    let client = client(&c).await;
    bucket(&client, "resume").await;
    let bytes = data(5 * MIB + 999, 3);
    let opts = UploadOptions {
        md5: true,
        ..Default::default()
    };
    let mut up = client.upload(path_ref("resume", "big"), opts.clone());
    // Write 3.5 chunks, then "crash": the upload is dropped without finishing.
    up.write(&bytes[..3 * MIB + MIB / 2]).await.unwrap();
    let write_id = up.write_id().expect("write started").to_string();
    drop(up);
    // The checkpointed chunks survive; resume continues after them, not from byte 0.
    let mut up =
        cyxcloud_client::write::Upload::resume(&client, &write_id, path_ref("resume", "big"), opts)
            .await
            .unwrap();
    let skip = up.resume_offset() as usize;
    assert!(
        skip >= MIB && skip.is_multiple_of(MIB) && skip <= 3 * MIB,
        "resumed at {skip}"
    );
    up.hash_only(&bytes[..skip]);
    up.write(&bytes[skip..]).await.unwrap();
    let e = up.finish().await.unwrap();
    assert_eq!(e.size, bytes.len() as u64);
    let md5 = {
        use md5::Digest;
        hex::encode(md5::Md5::digest(&bytes))
    };
    assert_eq!(e.etag.trim_matches('"'), md5);
    assert_eq!(
        get(&client, "resume", "big", ReadOptions::default()).await,
        bytes
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reads_that_meet_corrupt_shards_return_the_right_bytes_and_report_them() {
    // No rebalancer: the corrupt shards stay where they are, and stay reported.
    let mut c = Cluster::start(ClusterOptions {
        nodes: 7,
        chunk_size: Some(MIB as u64),
        rebalancer: false,
        ..Default::default()
    });
    let client = client(&c).await;
    bucket(&client, "rot").await;
    let files: Vec<(String, Vec<u8>)> = (0..3)
        .map(|i| (format!("f{i}"), data(2 * MIB + 1000 * i, 40 + i as u8)))
        .collect();
    for (k, v) in &files {
        put(&client, "rot", k, v, UploadOptions::default()).await;
    }
    // Two of the seven nodes hold 4 of each chunk's 14 shards; all of theirs rot. A read takes
    // 10 shards, so it meets some of them (all 4 missed in every chunk: odds below 1e-12).
    let rotten = [1, 4];
    for i in rotten {
        c.corrupt_node_disk(i);
    }
    let client = self::client(&c).await;
    for (k, v) in &files {
        assert!(
            get(&client, "rot", k, ReadOptions::default()).await == *v,
            "{k} read with 2 rotten nodes differs"
        );
        let off = MIB as u64 + 10;
        let got = client
            .read_range(path_ref("rot", k), off, 5000, ReadOptions::default())
            .await
            .expect("range");
        assert_eq!(&got[..], &v[off as usize..off as usize + 5000], "{k} range");
    }
    // The rotten nodes found the damage on read, and the gateway knows which shards are bad.
    let found: u64 = rotten
        .iter()
        .map(|&i| c.node_metric(i, "cyxcloud_corrupt_shards_total"))
        .sum();
    assert!(found > 0, "no corrupt shard counted by the rotten nodes");
    eventually("the gateway to list a corrupt shard", || async {
        let d = client
            .maintenance()
            .degraded(v1::DegradedRequest {
                limit: 100,
                exclude: vec![],
            })
            .await
            .ok()?
            .into_inner();
        d.chunks
            .iter()
            .flat_map(|c| &c.shards)
            .any(|s| s.state == v1::ShardState::Corrupt as i32)
            .then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_whose_disk_fills_during_puts_fails_them_and_the_writes_go_elsewhere() {
    let mut c = Cluster::start(ClusterOptions {
        nodes: 8,
        chunk_size: Some(MIB as u64),
        rebalancer: false,
        ..Default::default()
    });
    // A ninth node offers 4 GB on a disk of 8 MiB (keeping 1 MiB free).
    let full = c.add_node_with_disk(8 * MIB as u64);
    c.wait_registered(full);
    let client = client(&c).await;
    bucket(&client, "fill").await;
    // 84 MiB of shards over nine nodes: about 9 MiB each, more than the small disk holds.
    let files: Vec<(String, Vec<u8>)> = (0..20)
        .map(|i| (format!("f{i}"), data(3 * MIB + 77 * i, 120 + i as u8)))
        .collect();
    for (k, v) in &files {
        put(&client, "fill", k, v, UploadOptions::default()).await;
    }
    for (k, v) in &files {
        assert!(
            get(&client, "fill", k, ReadOptions::default()).await == *v,
            "{k} differs"
        );
    }
    // The node with the full disk is alive and answering, and says why it refused.
    let n = &mut c.nodes[full];
    assert!(
        n.proc.as_mut().is_some_and(|p| p.is_running()),
        "the node died"
    );
    let (status, _) = cyxcloud_testkit::http_get(n.metrics_addr(), "/health").unwrap();
    assert!(status == 200 || status == 503, "health answered {status}");
    let log = n.proc.as_ref().unwrap().log();
    assert!(
        log.contains("disk is full"),
        "the full node's log does not say its disk is full"
    );
    // It stored what fitted before refusing.
    let (_, health) = cyxcloud_testkit::http_get(n.metrics_addr(), "/health").unwrap();
    let v: serde_json::Value = serde_json::from_str(&health).unwrap();
    assert!(v["shard_count"].as_u64() > Some(0), "{health}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn files_survive_four_dead_nodes_of_fourteen() {
    let mut c = cluster(14);
    // Every shard acknowledged before an upload returns: with the default threshold (13) and
    // the long-tail cut-off a file is only guaranteed to survive 3 lost nodes until repair.
    let mut cfg = ClientConfig::new(c.grpc_url(), ACCESS_KEY, SECRET_KEY);
    cfg.shard_timeout = Duration::from_secs(20);
    cfg.wait_all_shards = true;
    let client = Client::connect(cfg).await.expect("connect");
    bucket(&client, "durable").await;
    let files: Vec<(String, Vec<u8>)> = (0..6)
        .map(|i| (format!("f{i}"), data(i * MIB / 2 + 5000, i as u8)))
        .collect();
    for (k, v) in &files {
        put(&client, "durable", k, v, UploadOptions::default()).await;
    }
    for i in [0, 3, 7, 12] {
        c.kill_node(i);
    }
    for (k, v) in &files {
        assert_eq!(
            &get(&client, "durable", k, ReadOptions::default()).await,
            v,
            "{k} with 4 of 14 nodes dead"
        );
    }
    // Writes still succeed around the dead nodes.
    let fresh = data(MIB + 77, 99);
    put(
        &client,
        "durable",
        "after",
        &fresh,
        UploadOptions::default(),
    )
    .await;
    assert_eq!(
        get(&client, "durable", "after", ReadOptions::default()).await,
        fresh
    );
    let _ = Bytes::new();
}

/// A download consumed slowly outlives the node tokens of the layout it began with (2 s
/// tokens, read over 8 s): the chunks fetched late get fresh tokens, and the bytes are right.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_slow_download_outlives_its_node_tokens() {
    use futures::StreamExt;
    let c = Cluster::start(ClusterOptions {
        nodes: 7,
        chunk_size: Some(MIB as u64),
        gateway_settings: vec![
            "auth.token_ttl_secs=2".into(),
            "writes.token_ttl_secs=2".into(),
        ],
        ..Default::default()
    });
    let client = client(&c).await;
    bucket(&client, "slow").await;
    let body = data(8 * MIB + 99, 7);
    put(&client, "slow", "f", &body, UploadOptions::default()).await;
    let layout = client.layout(path_ref("slow", "f"), None).await.unwrap();
    let mut s = std::pin::pin!(client.read_stream(layout, None, ReadOptions::default()));
    let start = std::time::Instant::now();
    let mut got = Vec::new();
    let mut parts = 0u64;
    while let Some(part) = s.next().await {
        got.extend_from_slice(&part.expect("a chunk read with the tokens it needs"));
        parts += 1;
        // The expiry is the behaviour under test: consume at the clock's pace.
        let next = Duration::from_millis(900 * parts);
        while start.elapsed() < next {
            tokio::time::sleep(next - start.elapsed()).await;
        }
    }
    assert!(got == body, "the bytes differ");
    assert!(start.elapsed() > Duration::from_secs(6));
}

/// The gateway's view of node `id`: its state.
async fn node_state(client: &Client, id: &str) -> Option<v1::NodeState> {
    let s = client
        .control()
        .cluster_status(v1::ClusterStatusRequest {})
        .await
        .ok()?
        .into_inner();
    let n = s.nodes.iter().find(|n| n.node_id == id)?;
    v1::NodeState::try_from(n.state).ok()
}

/// Polls `f` until it returns `Some`, for at most 60 s.
async fn eventually<T, F: std::future::Future<Output = Option<T>>>(
    what: &str,
    mut f: impl FnMut() -> F,
) -> T {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A node cut off the network (every packet dropped, so connections to it hang rather than
/// being refused) while files are read and written: reads route around it, a write placed on
/// it before the gateway notices completes on the other 13 nodes, the gateway marks it
/// offline, and when the partition heals it rejoins, takes new shards and the cluster returns
/// to full redundancy.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_partitioned_node_is_routed_around_and_rejoins_when_the_partition_heals() {
    let c = Cluster::start(ClusterOptions {
        nodes: 14,
        netns_nodes: 1,
        chunk_size: Some(MIB as u64),
        ..Default::default()
    });
    let client = client(&c).await;
    bucket(&client, "split").await;
    let before = data(3 * MIB + 123, 1);
    put(
        &client,
        "split",
        "before",
        &before,
        UploadOptions::default(),
    )
    .await;
    let id = c.nodes[0].id.clone();
    assert_eq!(node_state(&client, &id).await, Some(v1::NodeState::Online));

    let beats = c.node_metric(0, "cyxcloud_heartbeat_success_total");
    c.partition_node(0);
    // The partition is real and silent: a connection to the node times out, not refused.
    let err = std::net::TcpStream::connect_timeout(
        &c.nodes[0].metrics_addr(),
        Duration::from_millis(500),
    )
    .unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::TimedOut, "{err}");
    // Before the gateway notices: reads return the right bytes, and a write whose placement
    // includes the node completes on the others.
    assert_eq!(
        get(&client, "split", "before", ReadOptions::default()).await,
        before
    );
    let during = data(2 * MIB + 7, 2);
    put(
        &client,
        "split",
        "during",
        &during,
        UploadOptions::default(),
    )
    .await;
    assert_eq!(
        get(&client, "split", "during", ReadOptions::default()).await,
        during
    );
    eventually("the gateway to mark the partitioned node offline", || {
        let (client, id) = (&client, &id);
        async move { (node_state(client, id).await? == v1::NodeState::Offline).then_some(()) }
    })
    .await;
    let after = data(MIB + 5, 3);
    put(&client, "split", "after", &after, UploadOptions::default()).await;

    c.heal_node(0);
    eventually("the node to come back online", || {
        let (client, id) = (&client, &id);
        async move { (node_state(client, id).await? == v1::NodeState::Online).then_some(()) }
    })
    .await;
    // Its heartbeats got through again (its metrics, like everything on it, were out of reach
    // during the partition).
    assert!(c.node_metric(0, "cyxcloud_heartbeat_success_total") > beats);
    // It takes new shards again: with 14 nodes online every chunk has one on each.
    let back = data(MIB, 4);
    let e = put(&client, "split", "back", &back, UploadOptions::default()).await;
    let l = client
        .control()
        .get_layout(v1::GetLayoutRequest {
            entry: Some(v1::EntryRef {
                r#ref: Some(v1::entry_ref::Ref::Id(e.id)),
            }),
            offset: 0,
            length: 0,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(
        l.chunks[0]
            .shards
            .iter()
            .any(|s| s.node_id == id && s.state == v1::ShardState::Stored as i32),
        "{l:?}"
    );
    c.wait_redundant(Duration::from_secs(120));
    for (k, v) in [
        ("before", &before),
        ("during", &during),
        ("after", &after),
        ("back", &back),
    ] {
        assert_eq!(
            &get(&client, "split", k, ReadOptions::default()).await,
            v,
            "{k}"
        );
    }
}

/// The data path over TLS 1.3 end to end: the gateway's ports, every node's port (certified by
/// the cluster CA for the node's own key at registration), the rebalancer, node-to-node
/// repair. Clients verify; a client that does not trust the CA, or speaks plaintext to a TLS
/// port, is refused with a clear error.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_tls_cluster_serves_verified_clients_repairs_and_refuses_the_rest() {
    let mut c = Cluster::start(ClusterOptions {
        nodes: 8,
        chunk_size: Some(256 * 1024),
        tls: true,
        ..Default::default()
    });
    let ca = std::fs::read(c.ca_path()).expect("the cluster CA");
    let config = |url: String, ca: Option<Vec<u8>>| {
        let mut cfg = ClientConfig::new(url, ACCESS_KEY, SECRET_KEY);
        cfg.shard_timeout = Duration::from_secs(20);
        cfg.ca_pem = ca;
        cfg
    };
    assert!(c.grpc_url().starts_with("https://"));
    let client = Client::connect(config(c.grpc_url(), Some(ca.clone())))
        .await
        .expect("a client trusting the cluster CA");
    bucket(&client, "sealed").await;
    let d = data(900_000, 9);
    put(&client, "sealed", "f", &d, UploadOptions::default()).await;
    assert!(get(&client, "sealed", "f", ReadOptions::default()).await == d);
    // Every node serves TLS: the layout names https:// addresses.
    let l = client
        .control()
        .get_layout(v1::GetLayoutRequest {
            entry: Some(path_ref("sealed", "f")),
            offset: 0,
            length: 0,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(
        l.chunks
            .iter()
            .flat_map(|ch| &ch.shards)
            .all(|s| s.address.starts_with("https://")),
        "{l:?}"
    );
    // Discovery over https finds the Control endpoint.
    assert_eq!(
        cyxcloud_client::discover::grpc_address(&c.http_url(), Some(&ca))
            .await
            .unwrap(),
        c.grpc_url()
    );

    // A client trusting another CA is refused, saying why; so is one that has no CA.
    let elsewhere = tempfile::tempdir().unwrap();
    let other = cyxcloud_daemon::tls::ClusterCa::load_or_create(elsewhere.path()).unwrap();
    let e = Client::connect(config(
        c.grpc_url(),
        Some(other.cert_pem().as_bytes().to_vec()),
    ))
    .await
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("UnknownIssuer") || e.contains("invalid peer certificate"),
        "{e}"
    );
    let e = Client::connect(config(c.grpc_url(), None))
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("CA certificate"), "{e}");
    let e = cyxcloud_client::discover::http_get(
        &c.http_url(),
        "/health",
        Some(other.cert_pem().as_bytes()),
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(e.contains("TLS"), "{e}");
    // Plaintext to the TLS ports: the gateway's gRPC and HTTP ports and a node's port.
    let plain = c.grpc_url().replace("https://", "http://");
    assert!(Client::connect(config(plain, None)).await.is_err());
    assert!(
        !matches!(
            cyxcloud_testkit::http_get(c.http_addr(), "/health"),
            Ok((200, _))
        ),
        "the HTTP port answered plaintext"
    );
    let node_plain = c.nodes[0].grpc_url().replace("https://", "http://");
    let r = tokio::time::timeout(Duration::from_secs(10), async {
        let ch = tonic::transport::Endpoint::from_shared(node_plain)
            .unwrap()
            .connect()
            .await?;
        v1::chunk_service_client::ChunkServiceClient::new(ch)
            .stats(v1::StatsRequest::default())
            .await
            .map(|_| ())
            .map_err(|s| Box::new(s) as Box<dyn std::error::Error + Send + Sync>)
    })
    .await
    .expect("a plaintext call to a TLS node port ends");
    assert!(r.is_err(), "a node answered plaintext");

    // A node dies: the rebalancer rebuilds its shards, node to node, over TLS.
    c.kill_node(1);
    let dead = c.nodes[1].id.clone();
    cyxcloud_testkit::wait_until(Duration::from_secs(60), "the dead node offline", || {
        let rt = tokio::runtime::Handle::current();
        let st = tokio::task::block_in_place(|| {
            rt.block_on(client.control().cluster_status(v1::ClusterStatusRequest {}))
        })
        .ok()?
        .into_inner();
        st.nodes
            .iter()
            .any(|n| n.node_id == dead && n.state == v1::NodeState::Offline as i32)
            .then_some(())
    });
    tokio::task::block_in_place(|| c.wait_redundant(Duration::from_secs(120)));
    let st = client
        .control()
        .cluster_status(v1::ClusterStatusRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(st.pending_repairs, 0, "{st:?}");
    assert!(get(&client, "sealed", "f", ReadOptions::default()).await == d);
}
