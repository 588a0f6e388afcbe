//! The write protocol, chunk references and the node registry on both backends, with nodes
//! registered through the registry API (the multi-process tests use real node processes).

use bytes::BytesMut;
use cyxcloud_core::codec::{CodecId, Profile};
use cyxcloud_core::token::{Op, Role, Scope, TokenVerifier};
use cyxcloud_core::{ChunkMeta, EncodedChunk, Hash, encode_chunk};
use cyxcloud_gateway::accounts::Caller;
use cyxcloud_gateway::db::args;
use cyxcloud_gateway::namespace::Ref;
use cyxcloud_gateway::writes::{BeginParams, Committed, FileAttrs};
use cyxcloud_proto::{ErrorCode, v1};

use crate::both_backends;
use crate::common::{Backend, Fixture, SignedRegistry, eventually, fixture_with};
use crate::store::check_consistent;

both_backends!(
    commit_accepts_only_the_placed_layout,
    identical_chunks_are_stored_once_and_released_at_the_last_reference,
    abandoned_writes_expire_and_release_their_shards,
    node_states_follow_heartbeats,
    machine_keys_are_enforced_when_required,
    node_ids_are_bound_to_their_keys,
    knowing_a_content_id_does_not_link_someone_elses_data,
);

const NODES: usize = 7;

pub(crate) async fn register_nodes(f: &Fixture, n: usize) -> Vec<String> {
    let mut ids = Vec::new();
    for i in 0..n {
        let id = format!("node-{i}");
        f.gw.registry
            .register_signed(
                &v1::RegisterRequest {
                    node_id: id.clone(),
                    name: id.clone(),
                    grpc_address: format!("http://127.0.0.1:{}", 20000 + i),
                    capacity_bytes: 1 << 40,
                    state: v1::NodeState::Online as i32,
                    ..Default::default()
                },
                None,
            )
            .await
            .unwrap();
        ids.push(id);
    }
    ids
}

/// `len` bytes that differ for every `seed` and have no repeated shard.
pub(crate) fn data(seed: u64, len: usize) -> Vec<u8> {
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

pub(crate) fn chunk(data: &[u8]) -> EncodedChunk {
    encode_chunk(
        BytesMut::from(data),
        CodecId::ReedSolomonErasure,
        Profile::DEFAULT,
        None,
    )
    .unwrap()
}

fn target(b: &str, p: &str) -> Ref {
    Ref::Path {
        bucket: b.into(),
        path: p.into(),
    }
}

pub(crate) async fn begin(
    gw: &cyxcloud_gateway::Gateway,
    who: &Caller,
    p: &str,
    metas: &[&ChunkMeta],
) -> cyxcloud_gateway::writes::Begun {
    gw.writes
        .begin(
            who,
            &target("wbk", p),
            BeginParams {
                size_hint: metas.iter().map(|m| m.size).sum(),
                chunks: metas
                    .iter()
                    .enumerate()
                    .map(|(i, m)| (i as u32, (*m).clone()))
                    .collect(),
                ..Default::default()
            },
        )
        .await
        .unwrap()
}

/// The commit report for a placement with every shard stored except `skip`.
pub(crate) fn stored(p: &v1::ChunkPlacement, id: Hash, skip: &[u32]) -> Committed {
    Committed {
        index: p.index,
        id,
        stored: p
            .targets
            .iter()
            .filter(|t| !skip.contains(&t.index))
            .map(|t| (t.index, t.node_id.clone()))
            .collect(),
    }
}

async fn count(f: &Fixture, sql: &'static str) -> u64 {
    f.gw.db.one(sql, args![]).await.unwrap().u64(0).unwrap()
}

async fn commit_accepts_only_the_placed_layout(b: Backend) {
    let f = fixture_with(b, |c| c.nodes.heartbeat_interval_ms = 600_000).await;
    let a = &f.alice;
    register_nodes(&f, NODES).await;
    f.gw.ns.create_bucket(a, "wbk", false).await.unwrap();
    let c = chunk(&data(1, 100_000));
    let bw = begin(&f.gw, a, "dir/file.bin", &[&c.meta]).await;
    assert_eq!((bw.profile, bw.success_threshold), (Profile::DEFAULT, 13));
    let p = &bw.placements[0];
    assert!(!p.deduplicated);
    assert_eq!(p.targets.len(), 14);
    // At most 2 shards per node on 7 nodes; every token covers exactly that node's shards.
    let mut verifier = TokenVerifier::new();
    verifier.add_key(&f.gw.signer.public_key()).unwrap();
    for t in &p.targets {
        assert!(p.targets.iter().filter(|x| x.node_id == t.node_id).count() <= 2);
        let cap = verifier
            .verify(&t.token, cyxcloud_gateway::db::now_secs())
            .unwrap();
        assert_eq!(
            (cap.role, cap.node_id.as_str()),
            (Role::Client, t.node_id.as_str())
        );
        cap.check(Op::Put, &c.meta.shard_hashes[t.index as usize], &t.node_id)
            .unwrap();
        assert!(
            cap.check(
                Op::Delete,
                &c.meta.shard_hashes[t.index as usize],
                &t.node_id
            )
            .is_err()
        );
        let Scope::Shards(list) = cap.scope else {
            panic!("client token with Any scope")
        };
        let mine: Vec<Hash> = p
            .targets
            .iter()
            .filter(|x| x.node_id == t.node_id)
            .map(|x| c.meta.shard_hashes[x.index as usize])
            .collect();
        assert_eq!(list.len(), mine.len());
    }
    let head = cyxcloud_gateway::journal::head(&f.gw.db).await.unwrap();
    let commit = |chunks: Vec<Committed>, size: u64| {
        let gw = f.gw.clone();
        let a = a.clone();
        let id = bw.write_id.clone();
        async move {
            gw.writes
                .commit(&a, &id, &chunks, size, &FileAttrs::default())
                .await
        }
    };
    // Wrong chunk id.
    let e = commit(vec![stored(p, Hash::of(b"other"), &[])], c.meta.size)
        .await
        .unwrap_err();
    assert_eq!(e.code(), ErrorCode::HashMismatch, "{e}");
    // A shard reported on a node it was not placed on.
    let mut wrong = stored(p, c.meta.id, &[]);
    wrong.stored[0].1 = if wrong.stored[0].1 == "node-0" {
        "node-1".into()
    } else {
        "node-0".into()
    };
    let e = commit(vec![wrong], c.meta.size).await.unwrap_err();
    assert_eq!(e.code(), ErrorCode::InvalidArgument, "{e}");
    // Fewer stored shards than the threshold (12 of 14 < 13).
    let e = commit(vec![stored(p, c.meta.id, &[0, 13])], c.meta.size)
        .await
        .unwrap_err();
    assert_eq!(e.code(), ErrorCode::PreconditionFailed, "{e}");
    assert!(e.to_string().contains("threshold"), "{e}");
    // Sizes that do not match the chunks.
    let e = commit(vec![stored(p, c.meta.id, &[])], c.meta.size + 1)
        .await
        .unwrap_err();
    assert_eq!(e.code(), ErrorCode::InvalidArgument, "{e}");
    // A chunk index never placed.
    let e = commit(
        vec![Committed {
            index: 1,
            ..stored(p, c.meta.id, &[])
        }],
        c.meta.size,
    )
    .await
    .unwrap_err();
    assert_eq!(e.code(), ErrorCode::InvalidArgument, "{e}");
    // Nothing changed.
    assert_eq!(
        cyxcloud_gateway::journal::head(&f.gw.db).await.unwrap(),
        head
    );
    assert!(
        f.gw.ns
            .getattr(a, &target("wbk", "dir/file.bin"))
            .await
            .is_err()
    );
    assert_eq!(count(&f, "SELECT COUNT(*) FROM chunks").await, 0);
    // Another user cannot commit it.
    let e =
        f.gw.writes
            .commit(
                &f.bob,
                &bw.write_id,
                &[stored(p, c.meta.id, &[])],
                c.meta.size,
                &FileAttrs::default(),
            )
            .await
            .unwrap_err();
    assert_eq!(e.code(), ErrorCode::PermissionDenied);
    // 13 of 14: accepted, the missing shard is queued for repair.
    let e = commit(vec![stored(p, c.meta.id, &[5])], c.meta.size)
        .await
        .unwrap();
    assert_eq!(e.size, 100_000);
    assert_eq!(e.path, "dir/file.bin");
    assert_eq!(count(&f, "SELECT COUNT(*) FROM repairs").await, 1);
    let layout =
        f.gw.layout_with_tokens(a, &Ref::Id(e.id), 0, 0)
            .await
            .unwrap();
    assert_eq!(layout.chunks.len(), 1);
    assert_eq!(
        cyxcloud_proto::convert::chunk_meta(layout.chunks[0].info.as_ref().unwrap()).unwrap(),
        c.meta,
        "the layout describes exactly the committed chunk"
    );
    let shards = &layout.chunks[0].shards;
    assert_eq!(shards[5].state, v1::ShardState::Pending as i32);
    for s in shards {
        let cap = verifier
            .verify(&s.token, cyxcloud_gateway::db::now_secs())
            .unwrap();
        cap.check(Op::Get, &Hash::from_slice(&s.hash).unwrap(), &s.node_id)
            .unwrap();
        assert!(s.address.starts_with("http://127.0.0.1:"));
    }
    // The write is gone after commit.
    let e = commit(vec![stored(p, c.meta.id, &[])], c.meta.size)
        .await
        .unwrap_err();
    assert_eq!(e.code(), ErrorCode::NotFound);
    // Quota is enforced at BeginWrite.
    f.gw.accounts.set_quota(&a.user_id, 150_000).await.unwrap();
    let c2 = chunk(&data(2, 60_000));
    let e =
        f.gw.writes
            .begin(
                a,
                &target("wbk", "more"),
                BeginParams {
                    size_hint: 60_000,
                    chunks: vec![(0, c2.meta.clone())],
                    ..Default::default()
                },
            )
            .await
            .unwrap_err();
    assert_eq!(e.code(), ErrorCode::QuotaExceeded, "{e}");
    assert_eq!(count(&f, "SELECT COUNT(*) FROM writes").await, 0);
    // ... and at commit (a write that began with no size hint).
    let bw2 = begin(&f.gw, a, "more", &[]).await;
    let pl =
        f.gw.writes
            .place(a, &bw2.write_id, &[(0, c2.meta.clone())], &[])
            .await
            .unwrap();
    let e =
        f.gw.writes
            .commit(
                a,
                &bw2.write_id,
                &[stored(&pl[0], c2.meta.id, &[])],
                60_000,
                &FileAttrs::default(),
            )
            .await
            .unwrap_err();
    assert_eq!(e.code(), ErrorCode::QuotaExceeded, "{e}");
    check_consistent(&f.gw.db).await;
}

async fn identical_chunks_are_stored_once_and_released_at_the_last_reference(b: Backend) {
    let f = fixture_with(b, |c| c.nodes.heartbeat_interval_ms = 600_000).await;
    let a = &f.alice;
    let nodes = register_nodes(&f, NODES).await;
    f.gw.ns.create_bucket(a, "wbk", false).await.unwrap();
    let c = chunk(&data(3, 10_000));
    let w1 = begin(&f.gw, a, "one", &[&c.meta]).await;
    let first =
        f.gw.writes
            .commit(
                a,
                &w1.write_id,
                &[stored(&w1.placements[0], c.meta.id, &[])],
                c.meta.size,
                &FileAttrs::default(),
            )
            .await
            .unwrap();
    let w2 = begin(&f.gw, a, "two", &[&c.meta]).await;
    assert!(w2.placements[0].deduplicated);
    assert!(w2.placements[0].targets.is_empty());
    let second =
        f.gw.writes
            .commit(
                a,
                &w2.write_id,
                &[Committed {
                    index: 0,
                    id: c.meta.id,
                    stored: vec![],
                }],
                c.meta.size,
                &FileAttrs::default(),
            )
            .await
            .unwrap();
    assert_ne!(first.id, second.id);
    assert_eq!(count(&f, "SELECT COUNT(*) FROM chunks").await, 1);
    assert_eq!(count(&f, "SELECT refs FROM chunks").await, 2);
    // Overwriting "one" with other bytes drops one reference; nothing is deleted yet.
    let c2 = chunk(&data(4, 10_001));
    let w3 = begin(&f.gw, a, "one", &[&c2.meta]).await;
    f.gw.writes
        .commit(
            a,
            &w3.write_id,
            &[stored(&w3.placements[0], c2.meta.id, &[])],
            c2.meta.size,
            &FileAttrs::default(),
        )
        .await
        .unwrap();
    assert_eq!(
        count(&f, "SELECT refs FROM chunks WHERE size = 10000").await,
        1
    );
    assert_eq!(count(&f, "SELECT COUNT(*) FROM gc_queue").await, 0);
    // The last reference goes: the chunk is forgotten and its shards queued for deletion.
    f.gw.ns.unlink_path(a, "wbk", "two", false).await.unwrap();
    assert_eq!(count(&f, "SELECT COUNT(*) FROM chunks").await, 1);
    let queued = count(&f, "SELECT COUNT(*) FROM gc_queue").await;
    assert!(queued >= 7, "queued {queued}");
    // Each node gets a Gateway-signed delete for exactly its unreferenced shards.
    let mut verifier = TokenVerifier::new();
    verifier.add_key(&f.gw.signer.public_key()).unwrap();
    let mut deleted = 0;
    let hb = |node: &str, put_seq: u64, results: Vec<v1::CommandResult>| v1::HeartbeatRequest {
        node_id: node.to_string(),
        state: v1::NodeState::Online as i32,
        available_bytes: 1 << 40,
        put_epoch: 77,
        put_seq,
        results,
        ..Default::default()
    };
    let result = |id: &str, ok: bool, retry: bool| v1::CommandResult {
        command_id: id.to_string(),
        ok,
        error: if ok { String::new() } else { "stale".into() },
        retry,
    };
    let mut refused_once = false;
    for n in &nodes {
        let r =
            f.gw.registry
                .heartbeat_signed(&hb(n, 10, vec![]), None)
                .await
                .unwrap();
        for cmd in &r.commands {
            let Some(v1::node_command::Command::Delete(d)) = &cmd.command else {
                panic!("unexpected command {cmd:?}");
            };
            // Bound to the put position of the heartbeat it was built for.
            assert_eq!((d.put_epoch, d.put_seq), (77, 10));
            let cap = verifier
                .verify(&d.token, cyxcloud_gateway::db::now_secs())
                .unwrap();
            assert_eq!(cap.role, Role::Gateway);
            for h in &d.hashes {
                let h = Hash::from_slice(h).unwrap();
                assert!(c.meta.shard_hashes.contains(&h), "deleting a live shard");
                assert!(!c2.meta.shard_hashes.contains(&h));
                cap.check(Op::Delete, &h, n).unwrap();
                deleted += 1;
            }
            let mut id = cmd.id.clone();
            if !refused_once {
                // The node refuses it as stale: the hashes are queued again and the same
                // heartbeat carries a new command for them, bound to its own position.
                refused_once = true;
                let again =
                    f.gw.registry
                        .heartbeat_signed(&hb(n, 11, vec![result(&id, false, true)]), None)
                        .await
                        .unwrap();
                assert_eq!(f.gw.registry.command_state(&id).await.unwrap().0, 3);
                let [retried] = again.commands.as_slice() else {
                    panic!("expected one new command: {again:?}");
                };
                let Some(v1::node_command::Command::Delete(d2)) = &retried.command else {
                    panic!("unexpected command {retried:?}");
                };
                assert_ne!(retried.id, id);
                assert_eq!((d2.put_epoch, d2.put_seq), (77, 11));
                let mut a = d.hashes.clone();
                let mut b = d2.hashes.clone();
                a.sort();
                b.sort();
                assert_eq!(a, b);
                id = retried.id.clone();
            }
            // Report success: the command is done and not delivered again.
            let r2 =
                f.gw.registry
                    .heartbeat_signed(&hb(n, 12, vec![result(&id, true, false)]), None)
                    .await
                    .unwrap();
            assert!(r2.commands.is_empty());
            assert_eq!(f.gw.registry.command_state(&id).await.unwrap().0, 2);
        }
    }
    assert!(refused_once);
    assert_eq!(deleted, queued);
    assert_eq!(count(&f, "SELECT COUNT(*) FROM gc_queue").await, 0);
    check_consistent(&f.gw.db).await;
}

async fn abandoned_writes_expire_and_release_their_shards(b: Backend) {
    let f = fixture_with(b, |c| {
        c.writes.write_ttl_secs = 1;
        c.nodes.heartbeat_interval_ms = 600_000;
    })
    .await;
    let a = &f.alice;
    register_nodes(&f, NODES).await;
    f.gw.ns.create_bucket(a, "wbk", false).await.unwrap();
    // A stored chunk, then a write that deduplicates against it and one that uploads new data.
    let kept = chunk(&data(5, 5000));
    let w = begin(&f.gw, a, "kept", &[&kept.meta]).await;
    f.gw.writes
        .commit(
            a,
            &w.write_id,
            &[stored(&w.placements[0], kept.meta.id, &[])],
            kept.meta.size,
            &FileAttrs::default(),
        )
        .await
        .unwrap();
    let lost = chunk(&data(6, 5000));
    let w = begin(&f.gw, a, "abandoned", &[&kept.meta, &lost.meta]).await;
    assert!(w.placements[0].deduplicated);
    assert_eq!(
        count(&f, "SELECT refs FROM chunks").await,
        2,
        "dedup pins the chunk"
    );
    // Checkpointing a chunk does not make the file visible.
    let st =
        f.gw.writes
            .checkpoint(
                a,
                &w.write_id,
                &[stored(&w.placements[1], lost.meta.id, &[])],
            )
            .await
            .unwrap();
    assert_eq!(st.durable_chunks, vec![1]);
    assert_eq!(
        (st.data_shards, st.parity_shards, st.success_threshold),
        (10, 4, 13)
    );
    assert!(
        f.gw.ns
            .getattr(a, &target("wbk", "abandoned"))
            .await
            .is_err()
    );
    eventually("the write to expire", || async {
        (cyxcloud_gateway::db::now_secs() > w.expires_at as u64).then_some(())
    })
    .await;
    let e = f.gw.writes.status(a, &w.write_id).await.unwrap_err();
    assert_eq!(e.code(), ErrorCode::Expired);
    assert_eq!(f.gw.writes.expire().await.unwrap(), 1);
    assert_eq!(count(&f, "SELECT COUNT(*) FROM writes").await, 0);
    assert_eq!(count(&f, "SELECT COUNT(*) FROM write_targets").await, 0);
    assert_eq!(
        count(&f, "SELECT refs FROM chunks").await,
        1,
        "the pin is released"
    );
    // The uploaded shards of the abandoned chunk are queued for deletion; the kept ones are not.
    let q =
        f.gw.db
            .all("SELECT hash FROM gc_queue", args![])
            .await
            .unwrap();
    assert!(!q.is_empty());
    for r in &q {
        let h = r.hash(0).unwrap();
        assert!(lost.meta.shard_hashes.contains(&h));
        assert!(!kept.meta.shard_hashes.contains(&h));
    }
    // An explicit abort does the same.
    let w = begin(&f.gw, a, "aborted", &[&lost.meta]).await;
    f.gw.writes.abort(a, &w.write_id).await.unwrap();
    assert_eq!(count(&f, "SELECT COUNT(*) FROM writes").await, 0);
    check_consistent(&f.gw.db).await;
}

async fn node_states_follow_heartbeats(b: Backend) {
    let f = fixture_with(b, |c| c.nodes.heartbeat_interval_ms = 100).await;
    let reg = &f.gw.registry;
    let start = cyxcloud_gateway::journal::head(&f.gw.db).await.unwrap();
    let r = reg
        .register_signed(
            &v1::RegisterRequest {
                node_id: "n1".into(),
                grpc_address: "http://127.0.0.1:1".into(),
                capacity_bytes: 1000,
                topology: Some(v1::Topology {
                    region: "eu".into(),
                    datacenter: "dc1".into(),
                    rack: "r1".into(),
                }),
                ..Default::default()
            },
            None,
        )
        .await
        .unwrap();
    assert_eq!(r.heartbeat_interval_ms, 100);
    assert_eq!(r.token_public_keys, vec![f.gw.signer.public_key().to_vec()]);
    let e = reg
        .register_signed(
            &v1::RegisterRequest {
                node_id: "bad".into(),
                grpc_address: "not-a-url".into(),
                ..Default::default()
            },
            None,
        )
        .await
        .unwrap_err();
    assert_eq!(e.code(), ErrorCode::InvalidArgument);
    assert_eq!(reg.live_nodes().await.unwrap().len(), 1);
    // Three missed intervals: offline (and a journal event).
    eventually("n1 to go offline", || async {
        reg.sweep()
            .await
            .unwrap()
            .contains(&"n1".to_string())
            .then_some(())
    })
    .await;
    let nodes = reg.nodes().await.unwrap();
    assert_eq!(nodes[0].state, v1::NodeState::Offline);
    assert_eq!(
        (nodes[0].datacenter.as_str(), nodes[0].rack.as_str()),
        ("dc1", "r1")
    );
    assert!(reg.live_nodes().await.unwrap().is_empty());
    // A heartbeat brings it back; a draining node holding nothing is drained.
    let hb = |state: v1::NodeState, node: &str| v1::HeartbeatRequest {
        node_id: node.into(),
        state: state as i32,
        available_bytes: 500,
        ..Default::default()
    };
    reg.heartbeat_signed(&hb(v1::NodeState::Online, "n1"), None)
        .await
        .unwrap();
    assert_eq!(reg.nodes().await.unwrap()[0].state, v1::NodeState::Online);
    let r = reg
        .heartbeat_signed(&hb(v1::NodeState::Draining, "n1"), None)
        .await
        .unwrap();
    assert_eq!(r.desired_state, v1::NodeState::Drained as i32);
    assert_eq!(reg.nodes().await.unwrap()[0].state, v1::NodeState::Drained);
    // Unknown nodes are told to register again.
    let r = reg
        .heartbeat_signed(&hb(v1::NodeState::Online, "ghost"), None)
        .await
        .unwrap();
    assert!(r.reregister);
    let events = cyxcloud_gateway::journal::read_range(
        &f.gw.db,
        start,
        u64::MAX,
        &cyxcloud_gateway::journal::Filter::All,
        100,
    )
    .await
    .unwrap();
    let states: Vec<(String, i32)> = events
        .iter()
        .map(|e| (e.node_id.clone(), e.node_state))
        .collect();
    assert_eq!(
        states,
        vec![
            ("n1".into(), v1::NodeState::Online as i32),
            ("n1".into(), v1::NodeState::Offline as i32),
            ("n1".into(), v1::NodeState::Online as i32),
            ("n1".into(), v1::NodeState::Drained as i32),
        ]
    );
    assert!(events.iter().all(|e| e.kind == v1::ChangeKind::Node as i32));
}

async fn machine_keys_are_enforced_when_required(b: Backend) {
    let f = fixture_with(b, |c| c.nodes.require_machine_keys = true).await;
    let op =
        f.gw.accounts
            .create_user("Op", Some("op@example.com"), Some("op-password"), false, 0)
            .await
            .unwrap();
    let info = cyxcloud_gateway::accounts::MachineInfo {
        node_id: "n-key".into(),
        ..Default::default()
    };
    let (_, key) = f.gw.accounts.register_machine(&op.id, &info).await.unwrap();
    let req = v1::RegisterRequest {
        node_id: "n-key".into(),
        grpc_address: "http://127.0.0.1:9".into(),
        ..Default::default()
    };
    let e = f.gw.registry.register_signed(&req, None).await.unwrap_err();
    assert_eq!(e.code(), ErrorCode::Unauthenticated);
    let e =
        f.gw.registry
            .register_signed(&req, Some("cyxk_forged"))
            .await
            .unwrap_err();
    assert_eq!(e.code(), ErrorCode::Unauthenticated);
    let other = v1::RegisterRequest {
        node_id: "other".into(),
        ..req.clone()
    };
    let e =
        f.gw.registry
            .register_signed(&other, Some(&key))
            .await
            .unwrap_err();
    assert_eq!(e.code(), ErrorCode::Unauthenticated);
    assert!(f.gw.registry.nodes().await.unwrap().is_empty());
    f.gw.registry
        .register_signed(&req, Some(&key))
        .await
        .unwrap();
    let e =
        f.gw.registry
            .heartbeat_signed(
                &v1::HeartbeatRequest {
                    node_id: "n-key".into(),
                    ..Default::default()
                },
                None,
            )
            .await
            .unwrap_err();
    assert_eq!(e.code(), ErrorCode::Unauthenticated);
}

async fn node_ids_are_bound_to_their_keys(b: Backend) {
    use crate::common::{JOIN_TOKEN, signed_at};
    use cyxcloud_core::identity::NodeKey;
    use cyxcloud_proto::signed::Signed;
    let f = fixture_with(b, |_| {}).await;
    let reg = &f.gw.registry;
    let key = NodeKey::generate().unwrap();
    let thief = NodeKey::generate().unwrap();
    let register = |k: &NodeKey, token: &str, at: u64| {
        let mut r = v1::RegisterRequest {
            node_id: "n1".into(),
            grpc_address: "http://127.0.0.1:9".into(),
            capacity_bytes: 1000,
            public_key: k.public_key().to_vec(),
            join_token: token.into(),
            ..Default::default()
        };
        r.sign(k, at);
        r
    };
    let code = |r: cyxcloud_gateway::error::Result<v1::RegisterResponse>| r.unwrap_err().code();
    // Joining needs the join token.
    assert_eq!(
        code(
            reg.register(&register(&key, "", signed_at()), None, None)
                .await
        ),
        ErrorCode::Unauthenticated
    );
    assert_eq!(
        code(
            reg.register(
                &register(&key, "wrong-token-0123456789", signed_at()),
                None,
                None
            )
            .await
        ),
        ErrorCode::Unauthenticated
    );
    // Unsigned, or signed by another key than the one it names: refused.
    let mut unsigned = register(&key, JOIN_TOKEN, signed_at());
    unsigned.signature.clear();
    assert_eq!(
        code(reg.register(&unsigned, None, None).await),
        ErrorCode::Unauthenticated
    );
    let mut swapped = register(&key, JOIN_TOKEN, signed_at());
    swapped.public_key = thief.public_key().to_vec();
    assert_eq!(
        code(reg.register(&swapped, None, None).await),
        ErrorCode::Unauthenticated
    );
    // A signing time an hour old is refused (replay window).
    let old = signed_at() - 3_600_000;
    assert_eq!(
        code(
            reg.register(&register(&key, JOIN_TOKEN, old), None, None)
                .await
        ),
        ErrorCode::Unauthenticated
    );
    assert!(reg.nodes().await.unwrap().is_empty());
    // Joined: the id is bound to the key, and the key alone re-registers it.
    let first = register(&key, JOIN_TOKEN, signed_at());
    reg.register(&first, None, None).await.unwrap();
    reg.register(&register(&key, "", signed_at()), None, None)
        .await
        .unwrap();
    // The same registration again is a replay.
    assert_eq!(
        code(reg.register(&first, None, None).await),
        ErrorCode::Unauthenticated
    );
    // Another key cannot take the id over, even with the join token.
    let e = reg
        .register(&register(&thief, JOIN_TOKEN, signed_at()), None, None)
        .await
        .unwrap_err();
    assert_eq!(e.code(), ErrorCode::PermissionDenied, "{e}");
    assert_eq!(reg.nodes().await.unwrap()[0].address, "http://127.0.0.1:9");
    // Heartbeats: signed by the bound key, newer each time.
    let hb = |k: &NodeKey, at: u64| {
        let mut h = v1::HeartbeatRequest {
            node_id: "n1".into(),
            used_bytes: 1,
            available_bytes: 999,
            ..Default::default()
        };
        h.sign(k, at);
        h
    };
    let good = hb(&key, signed_at());
    assert!(!reg.heartbeat(&good, None, None).await.unwrap().reregister);
    let e = reg.heartbeat(&good, None, None).await.unwrap_err();
    assert_eq!(e.code(), ErrorCode::Unauthenticated, "replayed: {e}");
    let e = reg
        .heartbeat(&hb(&thief, signed_at()), None, None)
        .await
        .unwrap_err();
    assert_eq!(e.code(), ErrorCode::PermissionDenied, "forged: {e}");
    let mut unsigned = hb(&key, signed_at());
    unsigned.signature.clear();
    let e = reg.heartbeat(&unsigned, None, None).await.unwrap_err();
    assert_eq!(e.code(), ErrorCode::Unauthenticated, "unsigned: {e}");
    let mut altered = hb(&key, signed_at());
    altered.available_bytes = 1 << 50;
    let e = reg.heartbeat(&altered, None, None).await.unwrap_err();
    assert_eq!(e.code(), ErrorCode::PermissionDenied, "altered: {e}");
    assert_eq!(reg.nodes().await.unwrap()[0].available_bytes, 999);
    // A gateway without a join token admits new nodes only with a machine API key.
    let closed = fixture_with(b, |c| c.nodes.join_token.clear()).await;
    let e = closed
        .gw
        .registry
        .register(&register(&key, JOIN_TOKEN, signed_at()), None, None)
        .await
        .unwrap_err();
    assert_eq!(e.code(), ErrorCode::Unauthenticated);
    assert!(e.to_string().contains("machine API key"), "{e}");
}

async fn knowing_a_content_id_does_not_link_someone_elses_data(b: Backend) {
    let f = fixture_with(b, |c| c.nodes.heartbeat_interval_ms = 600_000).await;
    register_nodes(&f, NODES).await;
    f.gw.ns.create_bucket(&f.alice, "wbk", false).await.unwrap();
    f.gw.ns.create_bucket(&f.bob, "bobs", false).await.unwrap();
    let secret = chunk(&data(11, 20_000));
    let w = begin(&f.gw, &f.alice, "secret", &[&secret.meta]).await;
    f.gw.writes
        .commit(
            &f.alice,
            &w.write_id,
            &[stored(&w.placements[0], secret.meta.id, &[])],
            secret.meta.size,
            &FileAttrs::default(),
        )
        .await
        .unwrap();
    // Bob knows the content id (say, a published hash) and dresses his own junk up with it.
    let junk = chunk(&data(12, 20_000));
    let mut fake = junk.meta.clone();
    fake.id = secret.meta.id;
    let w =
        f.gw.writes
            .begin(
                &f.bob,
                &Ref::Path {
                    bucket: "bobs".into(),
                    path: "stolen".into(),
                },
                BeginParams {
                    size_hint: fake.size,
                    chunks: vec![(0, fake.clone())],
                    ..Default::default()
                },
            )
            .await
            .unwrap();
    assert!(
        !w.placements[0].deduplicated,
        "a content id alone must not deduplicate"
    );
    let e =
        f.gw.writes
            .commit(
                &f.bob,
                &w.write_id,
                &[stored(&w.placements[0], fake.id, &[])],
                fake.size,
                &FileAttrs::default(),
            )
            .await
            .unwrap();
    let l =
        f.gw.layout_with_tokens(&f.bob, &Ref::Id(e.id), 0, 0)
            .await
            .unwrap();
    assert_eq!(l.chunks[0].info.as_ref().unwrap().id, fake.id.0.to_vec());
    let hashes: Vec<Vec<u8>> = l.chunks[0].shards.iter().map(|s| s.hash.clone()).collect();
    for h in &secret.meta.shard_hashes {
        assert!(
            !hashes.contains(&h.0.to_vec()),
            "bob was handed alice's shards"
        );
    }
    assert_eq!(count(&f, "SELECT COUNT(*) FROM chunks").await, 2);
    // The honest duplicate (same encoding) still deduplicates.
    let w = begin(&f.gw, &f.alice, "again", &[&secret.meta]).await;
    assert!(w.placements[0].deduplicated);
    check_consistent(&f.gw.db).await;
}
