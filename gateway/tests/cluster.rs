//! Multi-process acceptance tests: the real `cyxcloud-gateway` binary with real `cyxcloud-node`
//! processes (the testkit's cluster), driven through the gRPC and HTTP surfaces a client uses.
//! A test client stripes files itself (cyxcloud-core encodes, the generated
//! ChunkService/Control clients move bytes).
//!
//! Needs the node binary: `cargo build -p cyxcloud-node` (or `cargo test --workspace`).

use std::process::Command;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use cyxcloud_core::codec::{CodecId, Profile};
use cyxcloud_core::{ChunkMeta, Hash, decode_chunk, encode_chunk};
use cyxcloud_proto::v1::chunk_service_client::ChunkServiceClient;
use cyxcloud_proto::v1::control_client::ControlClient;
use cyxcloud_proto::v1::put_shard_request::Msg;
use cyxcloud_proto::{ErrorCode, error_code, v1};
pub use cyxcloud_testkit::cluster::{ACCESS_KEY, Cluster, ClusterOptions, SECRET_KEY};
use cyxcloud_testkit::{Proc, free_port, tempdir};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

use crate::common::eventually;

/// Chunk size of the gateway tests' clusters (their client stripes chunks of this size).
pub const CHUNK: usize = 256 * 1024;

/// The gateway tests' clusters: `nodes` nodes, [`CHUNK`]-byte chunks, a quick journal poll and
/// latency probe, and no rebalancer (the tests that want one start theirs).
pub fn options(nodes: usize) -> ClusterOptions {
    ClusterOptions {
        nodes,
        chunk_size: Some(CHUNK as u64),
        rebalancer: false,
        gateway_settings: vec![
            "journal.poll_ms=50".into(),
            "nodes.latency_probe_ms=500".into(),
        ],
        ..Default::default()
    }
}

/// A cluster of [`options`], every node registered.
pub fn cluster(nodes: usize) -> Cluster {
    Cluster::start(options(nodes))
}

/// A Control client of `cl`'s gateway as the admin.
pub async fn ctl(cl: &Cluster) -> Ctl {
    control(&cl.grpc_url(), ACCESS_KEY, SECRET_KEY).await
}

pub type Ctl = ControlClient<InterceptedService<Channel, Bearer>>;

#[derive(Clone)]
pub struct Bearer(pub tonic::metadata::MetadataValue<tonic::metadata::Ascii>);

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        req.metadata_mut().insert("authorization", self.0.clone());
        Ok(req)
    }
}

pub async fn channel(url: &str) -> Channel {
    tonic::transport::Endpoint::from_shared(url.to_string())
        .unwrap()
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .unwrap()
}

/// An authenticated Control client.
pub async fn control(url: &str, ak: &str, sk: &str) -> Ctl {
    let ch = channel(url).await;
    let t = ControlClient::new(ch.clone())
        .authenticate(v1::AuthenticateRequest {
            access_key: ak.into(),
            secret_key: sk.into(),
        })
        .await
        .unwrap()
        .into_inner();
    with_token(ch, &t.token)
}

pub fn with_token(ch: Channel, token: &str) -> Ctl {
    ControlClient::with_interceptor(ch, Bearer(format!("Bearer {token}").parse().unwrap()))
        .max_decoding_message_size(cyxcloud_proto::MAX_MESSAGE_BYTES)
}

pub async fn wait_online(ctl: &mut Ctl, n: usize) {
    eventually(&format!("{n} nodes online"), || {
        let mut ctl = ctl.clone();
        async move {
            let s = ctl
                .cluster_status(v1::ClusterStatusRequest {})
                .await
                .ok()?
                .into_inner();
            let online = s
                .nodes
                .iter()
                .filter(|x| x.state == v1::NodeState::Online as i32)
                .count();
            (online >= n).then_some(())
        }
    })
    .await;
}

pub fn path_ref(bucket: &str, path: &str) -> v1::EntryRef {
    v1::EntryRef {
        r#ref: Some(v1::entry_ref::Ref::Path(v1::BucketPath {
            bucket: bucket.into(),
            path: path.into(),
        })),
    }
}

pub fn id_ref(id: u64) -> v1::EntryRef {
    v1::EntryRef {
        r#ref: Some(v1::entry_ref::Ref::Id(id)),
    }
}

pub fn test_data(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

async fn put_shard(
    addr: &str,
    hash: &Hash,
    data: Bytes,
    token: &[u8],
) -> Result<(), tonic::Status> {
    let mut c = ChunkServiceClient::new(channel(addr).await);
    let mut msgs = vec![v1::PutShardRequest {
        msg: Some(Msg::Header(v1::PutShardHeader {
            hash: hash.0.to_vec(),
            size: data.len() as u64,
            token: token.to_vec(),
        })),
    }];
    msgs.push(v1::PutShardRequest {
        msg: Some(Msg::Data(data)),
    });
    c.put_shard(tokio_stream::iter(msgs)).await.map(|_| ())
}

async fn get_shard(addr: &str, hash: &[u8], token: &[u8]) -> Result<Bytes, tonic::Status> {
    let mut c = ChunkServiceClient::new(channel(addr).await)
        .max_decoding_message_size(cyxcloud_proto::MAX_MESSAGE_BYTES);
    let mut s = c
        .get_shard(v1::GetShardRequest {
            hash: hash.to_vec(),
            token: token.to_vec(),
            offset: 0,
            length: 0,
        })
        .await?
        .into_inner();
    let mut out = BytesMut::new();
    while let Some(m) = s.message().await? {
        out.extend_from_slice(&m.data);
    }
    Ok(out.freeze())
}

/// Writes `data` to `bucket/path` by striping: BeginWrite, PutShard to every target (except
/// those in `skip`: (chunk, shard) pairs deliberately not uploaded), CommitWrite.
pub async fn write_file(
    ctl: &mut Ctl,
    bucket: &str,
    path: &str,
    data: &[u8],
    skip: &[(u32, u32)],
) -> Result<v1::Entry, tonic::Status> {
    write_file_late(ctl, bucket, path, data, skip, false).await
}

/// [`write_file`]; with `late`, the skipped shards are uploaded after the commit (the slow
/// shards a client left behind, arriving after all).
pub async fn write_file_late(
    ctl: &mut Ctl,
    bucket: &str,
    path: &str,
    data: &[u8],
    skip: &[(u32, u32)],
    late: bool,
) -> Result<v1::Entry, tonic::Status> {
    let chunks: Vec<_> = data
        .chunks(CHUNK)
        .map(|c| {
            encode_chunk(
                BytesMut::from(c),
                CodecId::ReedSolomonErasure,
                Profile::DEFAULT,
                None,
            )
            .unwrap()
        })
        .collect();
    let begin = ctl
        .begin_write(v1::BeginWriteRequest {
            target: Some(path_ref(bucket, path)),
            size_hint: data.len() as u64,
            chunks: chunks
                .iter()
                .enumerate()
                .map(|(i, c)| v1::ChunkDescriptor {
                    index: i as u32,
                    info: Some(v1::ChunkInfo::from(&c.meta)),
                })
                .collect(),
            ..Default::default()
        })
        .await?
        .into_inner();
    let mut committed = Vec::new();
    let mut later = Vec::new();
    for (p, c) in begin.placements.iter().zip(&chunks) {
        let mut stored = Vec::new();
        let mut puts = Vec::new();
        for t in &p.targets {
            if skip.contains(&(p.index, t.index)) {
                if late {
                    later.push((
                        t.address.clone(),
                        c.meta.shard_hashes[t.index as usize],
                        c.shards[t.index as usize].clone(),
                        t.token.clone(),
                    ));
                }
                continue;
            }
            let (addr, token, shard) = (
                t.address.clone(),
                t.token.clone(),
                c.shards[t.index as usize].clone(),
            );
            let hash = c.meta.shard_hashes[t.index as usize];
            puts.push(async move { put_shard(&addr, &hash, shard, &token).await });
            stored.push(v1::StoredShard {
                index: t.index,
                node_id: t.node_id.clone(),
            });
        }
        for r in futures::future::join_all(puts).await {
            r?;
        }
        committed.push(v1::CommittedChunk {
            index: p.index,
            id: c.meta.id.0.to_vec(),
            stored: if p.deduplicated { vec![] } else { stored },
        });
    }
    let e = ctl
        .commit_write(v1::CommitWriteRequest {
            write_id: begin.write_id,
            chunks: committed,
            size: data.len() as u64,
            etag: hex::encode(&Hash::of(data).0[..16]),
            ..Default::default()
        })
        .await?
        .into_inner();
    for (addr, hash, shard, token) in later {
        put_shard(&addr, &hash, shard, &token).await?;
    }
    Ok(e)
}

/// Reads a file back: GetLayout, then the first `k` fetchable shards of each chunk.
pub async fn read_file(
    ctl: &mut Ctl,
    r: v1::EntryRef,
    offset: u64,
    length: u64,
) -> Result<Vec<u8>, tonic::Status> {
    let l = ctl
        .get_layout(v1::GetLayoutRequest {
            entry: Some(r),
            offset,
            length,
        })
        .await?
        .into_inner();
    if l.is_inline {
        return Ok(l.inline_data);
    }
    let size = l.entry.as_ref().map_or(0, |e| e.size);
    let mut out = Vec::new();
    for c in &l.chunks {
        let info = c.info.as_ref().unwrap();
        let meta: ChunkMeta = cyxcloud_proto::convert::chunk_meta(info)?;
        let k = meta.profile.data();
        let mut shards: Vec<Option<Bytes>> = vec![None; meta.profile.total()];
        let mut got = 0;
        for s in &c.shards {
            if got == k {
                break;
            }
            if s.state != v1::ShardState::Stored as i32 {
                continue;
            }
            match get_shard(&s.address, &s.hash, &s.token).await {
                Ok(b) => {
                    shards[s.index as usize] = Some(b);
                    got += 1;
                }
                Err(e) => eprintln!(
                    "shard {} of chunk {} on {}: {e}",
                    s.index, c.index, s.node_id
                ),
            }
        }
        let d = decode_chunk(&meta, shards, None)
            .map_err(|e| tonic::Status::data_loss(e.to_string()))?;
        out.extend_from_slice(&d.data);
    }
    let first = l.chunks.first().map_or(0, |c| c.offset);
    let end = if length == 0 {
        size
    } else {
        (offset + length).min(size)
    };
    let lo = (offset - first) as usize;
    let hi = (end - first) as usize;
    Ok(out[lo.min(out.len())..hi.min(out.len())].to_vec())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn files_stripe_over_seven_real_nodes_and_survive_a_dead_one() {
    let mut cl = cluster(7);
    let mut ctl = ctl(&cl).await;
    wait_online(&mut ctl, 7).await;
    ctl.create_bucket(v1::CreateBucketRequest {
        name: "cluster".into(),
        public_read: false,
    })
    .await
    .unwrap();
    // Three chunks, the last one short.
    let data = test_data(1, 2 * CHUNK + 12_345);
    let e = write_file(&mut ctl, "cluster", "dir/file.bin", &data, &[])
        .await
        .unwrap();
    assert_eq!(e.size, data.len() as u64);
    assert_eq!(read_file(&mut ctl, id_ref(e.id), 0, 0).await.unwrap(), data);
    // A range inside the second chunk and one spanning chunks.
    let r = read_file(
        &mut ctl,
        path_ref("cluster", "dir/file.bin"),
        CHUNK as u64 + 10,
        1000,
    )
    .await
    .unwrap();
    assert_eq!(r, &data[CHUNK + 10..CHUNK + 1010]);
    let r = read_file(&mut ctl, id_ref(e.id), CHUNK as u64 - 7, 20)
        .await
        .unwrap();
    assert_eq!(r, &data[CHUNK - 7..CHUNK + 13]);
    // Shards really are on the nodes: every node holds some.
    let status = ctl
        .cluster_status(v1::ClusterStatusRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(status.files, 1);
    assert_eq!(status.chunks, 3);
    // The same bytes again: every chunk is deduplicated.
    let again = write_file(&mut ctl, "cluster", "copy.bin", &data, &[])
        .await
        .unwrap();
    assert_eq!(
        read_file(&mut ctl, id_ref(again.id), 0, 0).await.unwrap(),
        data
    );
    let status = ctl
        .cluster_status(v1::ClusterStatusRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(status.chunks, 3);

    // A commit claiming shards that were never uploaded is refused (the gateway asks the
    // nodes), and changes nothing.
    let other = test_data(2, 1000);
    let before = status.journal_seq;
    let err = write_file(&mut ctl, "cluster", "liar.bin", &other, &[(0, 0), (0, 1)])
        .await
        .unwrap_err();
    assert_eq!(error_code(&err), ErrorCode::PreconditionFailed, "{err:?}");
    let err = ctl
        .get_attr(v1::GetAttrRequest {
            entry: Some(path_ref("cluster", "liar.bin")),
        })
        .await
        .unwrap_err();
    assert_eq!(error_code(&err), ErrorCode::NotFound);
    let status = ctl
        .cluster_status(v1::ClusterStatusRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(status.journal_seq, before);
    // One missing shard is within the threshold: accepted and queued for repair.
    let e2 = write_file(&mut ctl, "cluster", "one-missing.bin", &other, &[(0, 3)])
        .await
        .unwrap();
    assert_eq!(
        read_file(&mut ctl, id_ref(e2.id), 0, 0).await.unwrap(),
        other
    );
    let status = ctl
        .cluster_status(v1::ClusterStatusRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(status.pending_repairs, 1);

    // Kill a node: the gateway notices within 3 heartbeats, and files stay readable.
    let victim = cl.nodes[2].id.clone();
    let killed_at = std::time::Instant::now();
    cl.kill_node(2);
    eventually("the dead node to be marked offline", || {
        let mut ctl = ctl.clone();
        let id = victim.clone();
        async move {
            let s = ctl
                .cluster_status(v1::ClusterStatusRequest {})
                .await
                .ok()?
                .into_inner();
            s.nodes
                .iter()
                .any(|n| n.node_id == id && n.state == v1::NodeState::Offline as i32)
                .then_some(())
        }
    })
    .await;
    // After 3 missed heartbeats (how soon is a matter for benchmarks, not a test deadline on
    // a loaded machine); never before the first one is missed.
    let took = killed_at.elapsed();
    assert!(
        took >= Duration::from_millis(cl.opts.heartbeat_ms),
        "offline after {took:?}"
    );
    eprintln!("the killed node was marked offline after {took:?}");
    assert_eq!(read_file(&mut ctl, id_ref(e.id), 0, 0).await.unwrap(), data);
    let l = ctl
        .get_layout(v1::GetLayoutRequest {
            entry: Some(id_ref(e.id)),
            offset: 0,
            length: 0,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(
        l.chunks
            .iter()
            .flat_map(|c| &c.shards)
            .filter(|s| s.node_id == victim)
            .all(|s| s.state == v1::ShardState::Lost as i32)
    );
    // New writes avoid it.
    let e3 = write_file(&mut ctl, "cluster", "after.bin", &test_data(3, 5000), &[])
        .await
        .unwrap();
    let l = ctl
        .get_layout(v1::GetLayoutRequest {
            entry: Some(id_ref(e3.id)),
            offset: 0,
            length: 0,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(l.chunks[0].shards.iter().all(|s| s.node_id != victim));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_credentials_and_forged_tokens_are_refused() {
    let mut cl = cluster(0);
    let node = cl.add_node_as("lonely", &[]);
    cl.wait_registered(node);
    let ch = channel(&cl.grpc_url()).await;
    // No token, a garbage token, a token signed by another key.
    let mut anon = ControlClient::new(ch.clone());
    let err = anon
        .list_buckets(v1::ListBucketsRequest {})
        .await
        .unwrap_err();
    assert_eq!(error_code(&err), ErrorCode::Unauthenticated);
    let err = anon
        .authenticate(v1::AuthenticateRequest {
            access_key: ACCESS_KEY.into(),
            secret_key: "wrong".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(error_code(&err), ErrorCode::Unauthenticated);
    let mut bad = with_token(ch.clone(), "cyx1.AAAA.BBBB");
    let err = bad
        .list_buckets(v1::ListBucketsRequest {})
        .await
        .unwrap_err();
    assert_eq!(error_code(&err), ErrorCode::Unauthenticated);
    let mut good = ctl(&cl).await;
    let t = anon
        .authenticate(v1::AuthenticateRequest {
            access_key: ACCESS_KEY.into(),
            secret_key: SECRET_KEY.into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(t.admin);
    let mut forged = t.token.clone();
    let last = forged.pop().unwrap();
    forged.push(if last == 'A' { 'B' } else { 'A' });
    let mut f = with_token(ch.clone(), &forged);
    let err = f.list_buckets(v1::ListBucketsRequest {}).await.unwrap_err();
    assert_eq!(error_code(&err), ErrorCode::Unauthenticated);
    // A regular user made by the admin sees only its own buckets and cannot make users.
    let u = good
        .create_user(v1::CreateUserRequest {
            name: "dave".into(),
            quota_bytes: 1000,
            admin: false,
        })
        .await
        .unwrap()
        .into_inner();
    let mut dave = control(&cl.grpc_url(), &u.access_key, &u.secret_key).await;
    good.create_bucket(v1::CreateBucketRequest {
        name: "admins".into(),
        public_read: false,
    })
    .await
    .unwrap();
    let err = dave
        .get_attr(v1::GetAttrRequest {
            entry: Some(path_ref("admins", "")),
        })
        .await
        .unwrap_err();
    assert_eq!(error_code(&err), ErrorCode::PermissionDenied);
    // The refusal tells nothing of the entry: no internal id.
    assert!(
        !err.message().chars().any(|c| c.is_ascii_digit()),
        "{err:?}"
    );
    let err = dave
        .create_user(v1::CreateUserRequest {
            name: "eve".into(),
            quota_bytes: 0,
            admin: true,
        })
        .await
        .unwrap_err();
    assert_eq!(error_code(&err), ErrorCode::PermissionDenied);
    // Over quota at BeginWrite.
    dave.create_bucket(v1::CreateBucketRequest {
        name: "daves".into(),
        public_read: false,
    })
    .await
    .unwrap();
    let err = dave
        .begin_write(v1::BeginWriteRequest {
            target: Some(path_ref("daves", "big")),
            size_hint: 5000,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(error_code(&err), ErrorCode::QuotaExceeded);
    // Names with '/' or NUL.
    let b = dave
        .get_attr(v1::GetAttrRequest {
            entry: Some(path_ref("daves", "")),
        })
        .await
        .unwrap()
        .into_inner();
    for bad in ["a/b", "nul\0"] {
        let err = dave
            .mkdir(v1::MkdirRequest {
                parent_id: b.id,
                name: bad.into(),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(error_code(&err), ErrorCode::InvalidName, "{bad:?}");
    }
    // A node refuses a Put token not signed by its gateway.
    let other = cyxcloud_core::token::TokenSigner::from_seed([9; 32]);
    let data = Bytes::from_static(b"intruder shard");
    let h = Hash::of(&data);
    let tok = other.sign(&cyxcloud_core::token::Capability {
        role: cyxcloud_core::token::Role::Client,
        ops: cyxcloud_core::token::Op::Put as u8,
        node_id: cl.nodes[node].id.clone(),
        expires_at: cyxcloud_gateway::db::now_secs() + 60,
        scope: cyxcloud_core::token::Scope::Shards(vec![h]),
    });
    let err = put_shard(&cl.nodes[node].grpc_url(), &h, data, &tok)
        .await
        .unwrap_err();
    assert_eq!(error_code(&err), ErrorCode::Unauthenticated, "{err:?}");
}

/// Drains `n` events from a watch stream.
async fn next_events(s: &mut tonic::Streaming<v1::ChangeEvent>, n: usize) -> Vec<v1::ChangeEvent> {
    let mut out = Vec::new();
    for _ in 0..n {
        let ev = tokio::time::timeout(Duration::from_secs(15), s.message())
            .await
            .expect("an event in time")
            .unwrap()
            .expect("stream open");
        out.push(ev);
    }
    out
}

async fn watch_across_restart(database_url: Option<String>) {
    let mut cl = Cluster::start(ClusterOptions {
        database_url,
        ..options(0)
    });
    let mut ctl = self::ctl(&cl).await;
    let b = ctl
        .create_bucket(v1::CreateBucketRequest {
            name: "watched".into(),
            public_read: false,
        })
        .await
        .unwrap()
        .into_inner();
    let since = b.change_seq;
    let mut stream = ctl
        .watch_changes(v1::WatchChangesRequest {
            since,
            bucket: "watched".into(),
        })
        .await
        .unwrap()
        .into_inner();
    for i in 0..5 {
        ctl.mkdir(v1::MkdirRequest {
            parent_id: b.id,
            name: format!("d{i}"),
            ..Default::default()
        })
        .await
        .unwrap();
    }
    let first = next_events(&mut stream, 5).await;
    let seqs: Vec<u64> = first.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, (since + 1..=since + 5).collect::<Vec<_>>());
    assert_eq!(first[4].path, "d4");
    // The gateway dies; changes made after it comes back, and before the client reconnects,
    // are delivered from the client's last position: nothing lost, nothing twice.
    cl.restart_gateway();
    let mut ctl = self::ctl(&cl).await;
    for i in 5..8 {
        ctl.mkdir(v1::MkdirRequest {
            parent_id: b.id,
            name: format!("d{i}"),
            ..Default::default()
        })
        .await
        .unwrap();
    }
    let last = seqs[4];
    let mut stream = ctl
        .watch_changes(v1::WatchChangesRequest {
            since: last,
            bucket: "watched".into(),
        })
        .await
        .unwrap()
        .into_inner();
    for i in 8..10 {
        ctl.mkdir(v1::MkdirRequest {
            parent_id: b.id,
            name: format!("d{i}"),
            ..Default::default()
        })
        .await
        .unwrap();
    }
    let rest = next_events(&mut stream, 5).await;
    let seqs: Vec<u64> = rest.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, (last + 1..=last + 5).collect::<Vec<_>>());
    let paths: Vec<&str> = rest.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(paths, ["d5", "d6", "d7", "d8", "d9"]);
    assert!(
        tokio::time::timeout(Duration::from_millis(500), stream.message())
            .await
            .is_err(),
        "no duplicate or extra event"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn watch_changes_is_exactly_once_across_a_gateway_restart_sqlite() {
    watch_across_restart(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn watch_changes_is_exactly_once_across_a_gateway_restart_postgres() {
    let db = cyxcloud_testkit::services::postgres_db();
    watch_across_restart(Some(db.url.clone())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_gateway_processes_serve_one_postgres_namespace() {
    let db = cyxcloud_testkit::services::postgres_db();
    let tmp = tempdir().unwrap();
    let key = tmp.path().join("cluster.key");
    let on_db = |nodes| ClusterOptions {
        database_url: Some(db.url.clone()),
        gateway_env: vec![(
            "CYXCLOUD_CLUSTER_KEY_FILE".into(),
            key.display().to_string(),
        )],
        ..options(nodes)
    };
    // A with the nodes; B, a second gateway process on the same database, with none of its own.
    let a = Cluster::start(on_db(7));
    let b = Cluster::start(on_db(0));
    let mut ca = ctl(&a).await;
    let mut cb = ctl(&b).await;
    wait_online(&mut cb, 7).await;
    let bucket = ca
        .create_bucket(v1::CreateBucketRequest {
            name: "shared".into(),
            public_read: false,
        })
        .await
        .unwrap()
        .into_inner();
    let mut watch_b = cb
        .watch_changes(v1::WatchChangesRequest {
            since: bucket.change_seq,
            bucket: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    // Written through A (tokens signed by A), read through B (tokens signed by B).
    let data = test_data(9, CHUNK + 100);
    let e = write_file(&mut ca, "shared", "f.bin", &data, &[])
        .await
        .unwrap();
    assert_eq!(
        read_file(&mut cb, path_ref("shared", "f.bin"), 0, 0)
            .await
            .unwrap(),
        data
    );
    // Conflicting creates on both: exactly one wins.
    let r1 = ca.mkdir(v1::MkdirRequest {
        parent_id: bucket.id,
        name: "same".into(),
        ..Default::default()
    });
    let r2 = cb.mkdir(v1::MkdirRequest {
        parent_id: bucket.id,
        name: "same".into(),
        ..Default::default()
    });
    let (r1, r2) = tokio::join!(r1, r2);
    assert!(r1.is_ok() != r2.is_ok(), "{r1:?} / {r2:?}");
    // B's watcher sees A's changes, in order, once.
    let evs = next_events(&mut watch_b, 2).await;
    assert_eq!(evs[0].kind, v1::ChangeKind::Create as i32);
    assert_eq!(evs[0].entry_id, e.id);
    assert_eq!(evs[1].path, "same");
    assert_eq!(evs[1].seq, evs[0].seq + 1);
    // Overwrite through B; A serves the new version at once.
    let data2 = test_data(10, 3000);
    write_file(&mut cb, "shared", "f.bin", &data2, &[])
        .await
        .unwrap();
    assert_eq!(
        read_file(&mut ca, path_ref("shared", "f.bin"), 0, 0)
            .await
            .unwrap(),
        data2
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_gateway_with_another_cluster_key_refuses_the_database() {
    let db = cyxcloud_testkit::services::postgres_db();
    let tmp = tempdir().unwrap();
    let _a = Cluster::start(ClusterOptions {
        database_url: Some(db.url.clone()),
        ..options(0)
    });
    let mut cmd = Command::new(cyxcloud_testkit::bin("cyxcloud-gateway"));
    cmd.env("DATABASE_URL", &db.url)
        .env("GATEWAY_DATA_DIR", tmp.path().join("b"))
        .env("GATEWAY_HOST", "127.0.0.1")
        .env("GATEWAY_PORT", free_port().to_string())
        .env("GATEWAY_GRPC_PORT", free_port().to_string());
    let mut p = Proc::spawn("gateway-b", cmd, &tmp.path().join("b.log"));
    let status = p.wait_exit(Duration::from_secs(30));
    assert!(!status.success());
    assert!(p.log().contains("cluster key"), "{}", p.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn invalid_configuration_is_refused_before_binding() {
    let tmp = tempdir().unwrap();
    let port = free_port();
    let mut cmd = Command::new(cyxcloud_testkit::bin("cyxcloud-gateway"));
    cmd.env("GATEWAY_DATA_DIR", tmp.path())
        .env("GATEWAY_PORT", port.to_string())
        .env("GATEWAY_GRPC_PORT", "not-a-port");
    let mut p = Proc::spawn("gateway-bad", cmd, &tmp.path().join("bad.log"));
    assert!(!p.wait_exit(Duration::from_secs(30)).success());
    assert!(p.log().contains("GATEWAY_GRPC_PORT"), "{}", p.log());
    assert!(std::net::TcpListener::bind(("127.0.0.1", port)).is_ok());
}

/// A signed registration of `id` at a dead address, as an attacker with its own key sends it.
fn impostor(id: &str, key: &cyxcloud_core::identity::NodeKey, token: &str) -> v1::RegisterRequest {
    use cyxcloud_proto::signed::Signed;
    let mut r = v1::RegisterRequest {
        node_id: id.into(),
        grpc_address: "http://127.0.0.1:1".into(),
        capacity_bytes: 1 << 50,
        state: v1::NodeState::Online as i32,
        public_key: key.public_key().to_vec(),
        join_token: token.into(),
        ..Default::default()
    };
    r.sign(key, crate::common::signed_at());
    r
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_peer_without_a_nodes_key_cannot_take_over_its_id_or_join() {
    use cyxcloud_core::identity::NodeKey;
    use cyxcloud_proto::signed::Signed;
    use cyxcloud_proto::v1::node_registry_client::NodeRegistryClient;
    let mut cl = cluster(7);
    let mut ctl = self::ctl(&cl).await;
    wait_online(&mut ctl, 7).await;
    ctl.create_bucket(v1::CreateBucketRequest {
        name: "held".into(),
        public_read: false,
    })
    .await
    .unwrap();
    let data = test_data(7, CHUNK + 1000);
    let e = write_file(&mut ctl, "held", "f.bin", &data, &[])
        .await
        .unwrap();
    let addresses = |s: &v1::ClusterStatusResponse| {
        let mut a: Vec<(String, String)> = s
            .nodes
            .iter()
            .map(|n| (n.node_id.clone(), n.address.clone()))
            .collect();
        a.sort();
        a
    };
    let status = |mut c: Ctl| async move {
        c.cluster_status(v1::ClusterStatusRequest {})
            .await
            .unwrap()
            .into_inner()
    };
    let before = addresses(&status(ctl.clone()).await);

    // An attacker on the network, even one who learnt the join token, with its own key.
    let mut reg = NodeRegistryClient::new(channel(&cl.grpc_url()).await);
    let thief = NodeKey::generate().unwrap();
    for n in &cl.nodes[..5] {
        let err = reg
            .register(impostor(&n.id, &thief, cyxcloud_testkit::JOIN_TOKEN))
            .await
            .unwrap_err();
        assert_eq!(error_code(&err), ErrorCode::PermissionDenied, "{err:?}");
    }
    // A new id without the token: refused, and a 1 PB fake node is not admitted.
    let err = reg
        .register(impostor("fake-pb", &thief, ""))
        .await
        .unwrap_err();
    assert_eq!(error_code(&err), ErrorCode::Unauthenticated, "{err:?}");
    assert!(err.message().contains("join token"), "{err:?}");
    let err = reg
        .register(impostor("fake-pb", &thief, "guessed-token-0123456789"))
        .await
        .unwrap_err();
    assert_eq!(error_code(&err), ErrorCode::Unauthenticated, "{err:?}");
    // A forged heartbeat for a real node.
    let mut hb = v1::HeartbeatRequest {
        node_id: cl.nodes[0].id.clone(),
        state: v1::NodeState::Draining as i32,
        ..Default::default()
    };
    hb.sign(&thief, crate::common::signed_at());
    let err = reg.heartbeat(hb).await.unwrap_err();
    assert_eq!(error_code(&err), ErrorCode::PermissionDenied, "{err:?}");

    // Nothing changed: same nodes at the same addresses, all online, the file reads back.
    let after = status(ctl.clone()).await;
    assert_eq!(addresses(&after), before);
    assert!(
        after
            .nodes
            .iter()
            .all(|n| n.state == v1::NodeState::Online as i32)
    );
    assert_eq!(read_file(&mut ctl, id_ref(e.id), 0, 0).await.unwrap(), data);
    let log = cl.gateway_log();
    assert!(
        log.contains("refused a registration for a node id bound to another key")
            && log.contains("refused a forged heartbeat"),
        "the gateway warns of the impostor:\n{log}"
    );

    // A real node process with a wrong join token does not join and says why.
    let stranger = cl.add_node_as(
        "stranger",
        &[("NODE_JOIN_TOKEN", "not-the-token-0123456789")],
    );
    eventually("the stranger to log its refusal", || async {
        cl.nodes[stranger]
            .log()
            .contains("wrong join token")
            .then_some(())
    })
    .await;
    assert!(
        status(ctl.clone())
            .await
            .nodes
            .iter()
            .all(|n| n.node_id != "stranger")
    );
}
