//! The layout and listing caches stay correct on every change: in process, and in a real
//! Redis shared by two gateways (each test on SQLite and PostgreSQL).

use cyxcloud_gateway::Gateway;
use cyxcloud_gateway::namespace::{Ref, Rename};
use cyxcloud_gateway::writes::FileAttrs;

use crate::both_backends;
use crate::common::{Backend, Fixture, eventually, fixture_with, redis, second};
use crate::writes::{begin, chunk, data, register_nodes, stored};

both_backends!(
    redis_cache_is_coherent_across_gateways,
    local_cache_is_coherent_with_its_own_writes_and_follows_others
);

async fn listing(gw: &Gateway, f: &Fixture, dir: u64) -> Vec<(String, String, u64)> {
    gw.cached_readdir(&f.alice, &Ref::Id(dir), "", 0)
        .await
        .unwrap()
        .entries
        .into_iter()
        .map(|e| (e.name, e.path, e.size))
        .collect()
}

async fn layout_version(gw: &Gateway, f: &Fixture, file: u64) -> (u64, Vec<[u8; 32]>) {
    let l = gw
        .cached_layout(&f.alice, &Ref::Id(file), 0, 0)
        .await
        .unwrap();
    (
        l.entry.version,
        l.chunks.iter().map(|c| c.meta.id.0).collect(),
    )
}

/// Writes `bytes` (one chunk) to `wbk/<path>` through `gw`.
async fn write(
    gw: &Gateway,
    f: &Fixture,
    path: &str,
    seed: u64,
) -> cyxcloud_gateway::namespace::Entry {
    let c = chunk(&data(seed, 3000 + seed as usize));
    let w = begin(gw, &f.alice, path, &[&c.meta]).await;
    gw.writes
        .commit(
            &f.alice,
            &w.write_id,
            &[stored(&w.placements[0], c.meta.id, &[])],
            c.meta.size,
            &FileAttrs::default(),
        )
        .await
        .unwrap()
}

/// Checks `reader`'s listing of `dir` (at once, or eventually when it follows another
/// gateway's commits through the journal).
async fn check(
    f: &Fixture,
    reader: &Gateway,
    dir: u64,
    immediate: bool,
    what: &str,
    want: Vec<(String, String, u64)>,
) {
    if immediate {
        assert_eq!(listing(reader, f, dir).await, want, "{what}");
    } else {
        eventually(what, || {
            let want = want.clone();
            async move { (listing(reader, f, dir).await == want).then_some(()) }
        })
        .await;
    }
}

/// The changes every cache test makes, checking reads through `reader` after writes
/// through `writer`; `sync` waits until `reader` may have seen `writer`'s commits.
async fn scenario(f: &Fixture, writer: &Gateway, reader: &Gateway, immediate: bool) {
    let a = &f.alice;
    let bk = writer.ns.create_bucket(a, "wbk", false).await.unwrap();
    let d = writer.ns.mkdir(a, bk.id, "d", 0, 0, 0).await.unwrap();
    let f1 = write(writer, f, "d/one", 1).await;
    let d = d.id;
    check(
        f,
        reader,
        d,
        immediate,
        "first listing",
        vec![("one".into(), "d/one".into(), 3001)],
    )
    .await;
    // Cached now; a new child must show.
    let f2 = write(writer, f, "d/two", 2).await;
    check(
        f,
        reader,
        d,
        immediate,
        "listing after a create",
        vec![
            ("one".into(), "d/one".into(), 3001),
            ("two".into(), "d/two".into(), 3002),
        ],
    )
    .await;
    // A child's new size must show.
    write(writer, f, "d/one", 7).await;
    check(
        f,
        reader,
        d,
        immediate,
        "listing after an overwrite",
        vec![
            ("one".into(), "d/one".into(), 3007),
            ("two".into(), "d/two".into(), 3002),
        ],
    )
    .await;
    // Renaming an ancestor changes every path below it.
    writer.ns.mkdir(a, bk.id, "top", 0, 0, 0).await.unwrap();
    let top = writer.ns.lookup(a, bk.id, "top").await.unwrap();
    writer
        .ns
        .rename(a, bk.id, "d", top.id, "moved", Rename::Replace)
        .await
        .unwrap();
    check(
        f,
        reader,
        d,
        immediate,
        "listing after an ancestor rename",
        vec![
            ("one".into(), "top/moved/one".into(), 3007),
            ("two".into(), "top/moved/two".into(), 3002),
        ],
    )
    .await;
    // Layouts: a read stores the current version in the cache, and the next one replaces it.
    let (v1, _) = layout_version(reader, f, f2.id).await;
    let cached = reader
        .cache
        .get(cyxcloud_gateway::cache::Kind::Layout, f2.id)
        .await
        .expect("the read stored the layout in the cache");
    let cached = <cyxcloud_proto::v1::GetLayoutResponse as prost::Message>::decode(&cached[..])
        .expect("a cached layout");
    assert_eq!(cached.entry.map(|e| e.version), Some(v1));
    let (v1b, _) = layout_version(reader, f, f2.id).await;
    assert_eq!(v1, v1b);
    let f2b = write(writer, f, "top/moved/two", 9).await;
    assert_eq!(f2b.id, f2.id);
    let want = f2b.version;
    if immediate {
        assert_eq!(layout_version(reader, f, f2.id).await.0, want);
    } else {
        eventually("the new layout", || async {
            (layout_version(reader, f, f2.id).await.0 == want).then_some(())
        })
        .await;
    }
    // Unlinked: gone, not served from a cache.
    let e = writer.ns.unlink(a, top.id, "moved").await.unwrap_err();
    assert!(
        matches!(e, cyxcloud_gateway::error::Error::IsDirectory { .. }),
        "{e:?}"
    );
    writer
        .ns
        .unlink_path(a, "wbk", "top/moved/one", false)
        .await
        .unwrap();
    let gone = async || {
        reader
            .cached_layout(&f.alice, &Ref::Id(f1.id), 0, 0)
            .await
            .is_err()
    };
    if immediate {
        assert!(gone().await);
    } else {
        eventually("the unlinked file to vanish", || async {
            gone().await.then_some(())
        })
        .await;
    }
}

async fn redis_cache_is_coherent_across_gateways(b: Backend) {
    let r = redis();
    let f = fixture_with(b, |c| {
        c.redis_url = r.url.clone();
        c.redis_prefix = r.prefix.clone();
        c.nodes.heartbeat_interval_ms = 600_000;
    })
    .await;
    assert!(!f.gw.cache.is_local());
    let g2 = second(&f).await;
    register_nodes(&f, 7).await;
    // Reads through gateway 1 are cached in Redis; writes through gateway 2 must be seen at
    // once (no journal tailer runs here: only the shared generations keep it right).
    scenario(&f, &g2, &f.gw, true).await;
    // The cache was really used.
    let client = redis::Client::open(r.url.as_str()).unwrap();
    let mut c = client.get_multiplexed_async_connection().await.unwrap();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{}*", r.prefix))
        .query_async(&mut c)
        .await
        .unwrap();
    assert!(keys.iter().any(|k| k.contains(":l:")), "{keys:?}");
    assert!(keys.iter().any(|k| k.contains(":d:")), "{keys:?}");
}

async fn local_cache_is_coherent_with_its_own_writes_and_follows_others(b: Backend) {
    let f = fixture_with(b, |c| c.nodes.heartbeat_interval_ms = 600_000).await;
    assert!(f.gw.cache.is_local());
    register_nodes(&f, 7).await;
    // One gateway: its own commits invalidate synchronously.
    scenario(&f, &f.gw, &f.gw, true).await;
    f.gw.ns
        .unlink_path(&f.alice, "wbk", "top/moved/two", false)
        .await
        .unwrap();
    f.gw.ns
        .rmdir_path(&f.alice, "wbk", "top/moved")
        .await
        .unwrap();
    f.gw.ns.rmdir_path(&f.alice, "wbk", "top").await.unwrap();
    f.gw.ns.delete_bucket(&f.alice, "wbk").await.unwrap();
    // Another gateway's commits reach it through the journal tailer.
    let g2 = second(&f).await;
    cyxcloud_daemon::Workers::new(f.stop.clone()).spawn(
        cyxcloud_gateway::journal::Tailer::new(
            f.gw.db.clone(),
            std::time::Duration::from_millis(20),
            1_000_000,
            3600,
        ),
        Default::default(),
    );
    scenario(&f, &g2, &f.gw, false).await;
}
