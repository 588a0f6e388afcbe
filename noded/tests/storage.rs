//! Storage guarantees through the real binary: durability under kill -9, corruption on disk
//! detected on read, capacity enforced.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cyxcloud_core::Hash;
use cyxcloud_node::store::ShardStore;
use cyxcloud_node::store::rocks::{RocksOptions, RocksStore};
use cyxcloud_proto::ErrorCode;

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_a_stream_of_puts_loses_no_acknowledged_shard() {
    let mut node = Node::start(Spec::id("crash-node"));
    let acked: Arc<Mutex<Vec<(Hash, u64)>>> = Arc::default();
    let mut writers = Vec::new();
    for w in 0..4u64 {
        let url = node.url();
        let acked = acked.clone();
        writers.push(tokio::spawn(async move {
            let mut c = client(&url).await;
            for i in 0.. {
                let seed = w * 1_000_000 + i;
                let data = random(seed, 48 * 1024 + (seed as usize % 4096));
                match put(&mut c, "crash-node", &data).await {
                    Ok(_) => acked.lock().unwrap().push((Hash::of(&data), seed)),
                    // The node died under us: stop writing.
                    Err(_) => break,
                }
            }
        }));
    }
    eventually(Duration::from_secs(60), "60 acknowledged puts", || {
        (acked.lock().unwrap().len() >= 60).then_some(())
    })
    .await;
    node.proc().kill9();
    for w in writers {
        w.await.unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    node.launch();
    node.wait_ready();
    let mut c = node.client().await;
    let hashes: Vec<Hash> = acked.iter().map(|a| a.0).collect();
    let present = has(&mut c, "crash-node", &hashes).await;
    let lost: Vec<_> = hashes
        .iter()
        .zip(&present)
        .filter(|(_, p)| !**p)
        .map(|(h, _)| *h)
        .collect();
    assert!(
        lost.is_empty(),
        "{} acknowledged shards lost: {lost:?}",
        lost.len()
    );
    for (h, seed) in &acked {
        let data = get(&mut c, "crash-node", h).await.unwrap();
        assert_eq!(data, random(*seed, data.len()), "shard {h} intact");
        assert_eq!(Hash::of(&data), *h);
    }
    let stats = stats(&mut c, "crash-node").await;
    assert!(stats.shard_count >= acked.len() as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shard_corrupted_on_disk_is_reported_and_never_served() {
    let mut node = Node::start(Spec::id("rot-node").env("STORAGE_CAPACITY_GB", "1"));
    let mut c = node.client().await;
    let a = random(10, 100_000);
    let b = random(11, 50_000);
    let blob = random(12, 300_000);
    let (ha, hb, hblob) = (Hash::of(&a), Hash::of(&b), Hash::of(&blob));
    for d in [&a, &b, &blob] {
        put(&mut c, "rot-node", d).await.unwrap();
    }
    drop(c);
    node.stop();

    // A second tool writes a damaged record through RocksDB (one payload bit flipped).
    let db = node.dir.join("rocksdb");
    {
        let store = RocksStore::open(&db, &RocksOptions::default()).unwrap();
        let mut rec = store.get(&ha).unwrap().unwrap();
        rec[60 + 4321] ^= 0x08;
        store.put(&ha, &rec).unwrap();
        // Move everything into SST and blob files, then flip bytes inside the blob file that
        // holds the 300 kB shard.
        store.flush().unwrap();
    }
    let mut flipped = false;
    for e in std::fs::read_dir(&db).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "blob") {
            let mut bytes = std::fs::read(&p).unwrap();
            let needle = &blob[150_000..150_032];
            if let Some(at) = bytes.windows(32).position(|w| w == needle) {
                bytes[at + 7] ^= 0xff;
                std::fs::write(&p, bytes).unwrap();
                flipped = true;
            }
        }
    }
    assert!(flipped, "the 300 kB shard lives in a blob file");

    node.launch();
    node.wait_ready();
    let mut c = node.client().await;
    let s = assert_code(get(&mut c, "rot-node", &ha).await, ErrorCode::Corrupt);
    assert!(s.message().contains("corrupt"), "{}", s.message());
    assert_code(get(&mut c, "rot-node", &hblob).await, ErrorCode::Corrupt);
    // Challenges of a corrupt shard cannot succeed either; the shard is quarantined.
    assert_eq!(
        has(&mut c, "rot-node", &[ha, hb, hblob]).await,
        vec![false, true, false]
    );
    assert!(get(&mut c, "rot-node", &hb).await.unwrap() == b);
    let m = node.metrics_text();
    assert_eq!(metric_value(&m, "cyxcloud_corrupt_shards_total"), 2.0);
    assert_eq!(metric_value(&m, "cyxcloud_chunks_stored"), 1.0);
    assert!(node.log().contains("corrupt shard detected"));
    // Repair can store it again.
    put(&mut c, "rot-node", &a).await.unwrap();
    assert!(get(&mut c, "rot-node", &ha).await.unwrap() == a);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_scrub_finds_a_corrupt_shard_nobody_reads() {
    let mut node = Node::start(Spec::id("scrub-node").env("SCRUB_PERIOD_SECS", "1"));
    let mut c = node.client().await;
    let shards: Vec<Vec<u8>> = (0..3).map(|i| random(40 + i, 200_000)).collect();
    for d in &shards {
        put(&mut c, "scrub-node", d).await.unwrap();
    }
    drop(c);
    // A clean pass first: nothing is corrupt.
    node.wait_metric("cyxcloud_scrubbed_shards_total", 3.0);
    assert_eq!(node.metric("cyxcloud_corrupt_shards_total"), 0.0);
    node.stop();
    let db = node.dir.join("rocksdb");
    {
        let store = RocksStore::open(&db, &RocksOptions::default()).unwrap();
        store.flush().unwrap();
    }
    let mut flipped = false;
    for e in std::fs::read_dir(&db).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "blob") {
            let mut bytes = std::fs::read(&p).unwrap();
            let needle = &shards[1][100_000..100_032];
            if let Some(at) = bytes.windows(32).position(|w| w == needle) {
                bytes[at + 3] ^= 0x10;
                std::fs::write(&p, bytes).unwrap();
                flipped = true;
            }
        }
    }
    assert!(flipped, "the shard lives in a blob file");
    node.launch();
    node.wait_ready();
    // No read asks for it: the scrub finds it, quarantines it and counts it.
    node.wait_metric("cyxcloud_corrupt_shards_total", 1.0);
    let mut c = node.client().await;
    let hashes: Vec<Hash> = shards.iter().map(|d| Hash::of(d)).collect();
    assert_eq!(
        has(&mut c, "scrub-node", &hashes).await,
        vec![true, false, true]
    );
    assert!(node.log().contains("corrupt shard detected"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn puts_beyond_capacity_are_refused_cleanly() {
    // 0.0003 GiB = 322 122 bytes: three 100 000-byte shards (plus headers) fit, a fourth does not.
    let mut node = Node::start(Spec::id("full-node").env("STORAGE_CAPACITY_GB", "0.0003"));
    let mut c = node.client().await;
    let shards: Vec<Vec<u8>> = (0..4).map(|i| random(100 + i, 100_000)).collect();
    for s in &shards[..3] {
        put(&mut c, "full-node", s).await.unwrap();
    }
    let s = assert_code(
        put(&mut c, "full-node", &shards[3]).await,
        ErrorCode::NoSpace,
    );
    assert!(s.message().contains("not enough space"), "{}", s.message());
    assert!(cyxcloud_proto::status::is_retryable(&s));
    let hashes: Vec<Hash> = shards.iter().map(|s| Hash::of(s)).collect();
    assert_eq!(
        has(&mut c, "full-node", &hashes).await,
        vec![true, true, true, false]
    );
    let used = node.metric("cyxcloud_storage_used_bytes");
    assert_eq!(used, 300_180.0);
    assert!(used <= node.metric("cyxcloud_storage_capacity_bytes"));
    // Still full after a restart (usage is recounted from disk).
    drop(c);
    node.restart();
    let mut c = node.client().await;
    assert_code(
        put(&mut c, "full-node", &shards[3]).await,
        ErrorCode::NoSpace,
    );
    // Deleting makes room.
    c.delete_shards(cyxcloud_proto::v1::DeleteShardsRequest {
        hashes: vec![hashes[0].0.to_vec()],
        token: gateway_token("full-node", &[cyxcloud_core::token::Op::Delete]),
    })
    .await
    .unwrap();
    put(&mut c, "full-node", &shards[3]).await.unwrap();
    let unique: HashSet<_> = hashes.iter().collect();
    assert_eq!(unique.len(), 4);
}
