//! Registration, heartbeats and gateway commands between real node processes and a real
//! NodeRegistry server.

use std::time::Duration;

use bytes::BytesMut;
use cyxcloud_core::token::{Op, Role, Scope};
use cyxcloud_core::{CodecId, Hash, Profile, encode_chunk};
use cyxcloud_proto::v1::node_command::Command;
use cyxcloud_proto::v1::{
    ChunkInfo, DeleteCommand, NodeCommand, NodeState, RepairCommand, RepairTarget, ShardLocation,
    TransferCommand,
};

use crate::support::gateway::{FakeGateway, GwState};
use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registers_heartbeats_and_keeps_serving_while_the_gateway_is_down() {
    let mut gw = FakeGateway::start().await;
    gw.state().require_api_key = Some("machine-key".into());
    let tmp = cyxcloud_testkit::tempdir().unwrap();
    let cfg = tmp.path().join("node.toml");
    std::fs::write(
        &cfg,
        "[cyxwiz_api]\napi_key = \"machine-key\"\nmachine_id = \"machine-9\"\nowner_id = \"user-1\"\n",
    )
    .unwrap();
    let mut spec = Spec {
        trust_test_key: false,
        ..Spec::id("hb-node").gateway(gw.addr)
    }
    .env("NODE_REGION", "eu-west")
    .env("NODE_DATACENTER", "dc2")
    .env("NODE_RACK", "r3")
    .env("STORAGE_CAPACITY_GB", "3");
    spec.args = vec!["--config".into(), cfg.display().to_string()];
    let node = Node::start(spec);
    let reg = eventually(Duration::from_secs(20), "registration", || {
        gw.state().registrations.first().cloned()
    })
    .await;
    let (r, auth) = reg;
    assert_eq!(auth.as_deref(), Some("Bearer machine-key"));
    assert_eq!(r.node_id, "hb-node");
    assert_eq!(r.grpc_address, node.url());
    assert_eq!(r.machine_id, "machine-9");
    let topo = r.topology.unwrap();
    assert_eq!(
        (
            topo.region.as_str(),
            topo.datacenter.as_str(),
            topo.rack.as_str()
        ),
        ("eu-west", "dc2", "r3")
    );
    assert_eq!(r.capacity_bytes, 3 << 30);
    assert_eq!(r.state, NodeState::Online as i32);
    assert!(r.peer_id.starts_with("12D3Koo"));
    assert!(!r.p2p_addresses.is_empty());

    // The node trusts the key the gateway handed out (none was configured).
    eventually(Duration::from_secs(20), "registered", || {
        (node.health()["registered"] == true).then_some(())
    })
    .await;
    let mut c = node.client().await;
    let a = random(1, 30_000);
    put(&mut c, "hb-node", &a).await.unwrap();
    let hb = eventually(
        Duration::from_secs(20),
        "a heartbeat reporting the shard",
        || {
            gw.state()
                .heartbeats_of("hb-node")
                .iter()
                .find(|h| h.shard_count == 1)
                .map(|h| (*h).clone())
        },
    )
    .await;
    assert_eq!(hb.used_bytes, 30_060);
    assert_eq!(hb.available_bytes, (3 << 30) - 30_060);
    assert_eq!(hb.bytes_uploaded, 30_000);
    assert!(hb.active_connections >= 1);
    assert_eq!(hb.state, NodeState::Online as i32);
    assert!(
        gw.state()
            .heartbeats
            .iter()
            .all(|(_, a)| a.as_deref() == Some("Bearer machine-key"))
    );
    assert!(node.metric("cyxcloud_heartbeat_success_total") >= 1.0);
    assert_eq!(node.health()["registered"], true);

    // Gateway gone: reads and writes go on, heartbeats fail.
    gw.stop().await;
    eventually(Duration::from_secs(20), "a failed heartbeat", || {
        (node.metric("cyxcloud_heartbeat_failure_total") >= 1.0).then_some(())
    })
    .await;
    assert!(get(&mut c, "hb-node", &Hash::of(&a)).await.unwrap() == a);
    let b = random(2, 1000);
    put(&mut c, "hb-node", &b).await.unwrap();
    assert_eq!(node.health()["registered"], false);

    // A fresh gateway on the same address (empty registry): the node registers again.
    let fresh = std::sync::Arc::new(std::sync::Mutex::new(GwState::default()));
    let gw2 = FakeGateway::start_on(gw.addr, fresh).await;
    let again = eventually(Duration::from_secs(20), "re-registration", || {
        gw2.state().registrations.first().map(|(r, _)| r.clone())
    })
    .await;
    assert_eq!(again.shard_count, 2);
    eventually(Duration::from_secs(20), "heartbeats again", || {
        (!gw2.state().heartbeats_of("hb-node").is_empty()).then_some(())
    })
    .await;
    assert_eq!(node.health()["registered"], true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_requiring_machine_keys_refuses_a_node_without_one() {
    let gw = FakeGateway::start().await;
    gw.state().require_api_key = Some("machine-key".into());
    let node = Node::start(Spec::id("nokey-node").gateway(gw.addr));
    eventually(
        Duration::from_secs(20),
        "a refused registration in the log",
        || {
            node.log()
                .contains("a valid machine API key is required")
                .then_some(())
        },
    )
    .await;
    assert!(gw.state().registrations.is_empty());
    assert_eq!(node.health()["registered"], false);
    // Still serving.
    let mut c = node.client().await;
    put(&mut c, "nokey-node", &random(5, 100)).await.unwrap();
}

fn read_token(node: &str, h: Hash) -> Vec<u8> {
    token(node, Role::Client, &[Op::Get], Scope::Shards(vec![h]))
}

fn cmd(id: &str, c: Command) -> NodeCommand {
    NodeCommand {
        id: id.into(),
        command: Some(c),
    }
}

/// A log line without its colour escapes.
fn plain(line: &str) -> String {
    let mut out = String::new();
    let mut esc = false;
    for ch in line.chars() {
        match (esc, ch) {
            (false, '\u{1b}') => esc = true,
            (true, 'm') => esc = false,
            (true, _) => {}
            (false, c) => out.push(c),
        }
    }
    out
}

async fn result_of(gw: &FakeGateway, id: &str) -> cyxcloud_proto::v1::CommandResult {
    eventually(Duration::from_secs(30), &format!("result of {id}"), || {
        gw.state().result(id).cloned()
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repair_transfer_and_delete_commands_run_end_to_end() {
    let gw = FakeGateway::start().await;
    let a = Node::start(Spec::id("cmd-a").gateway(gw.addr));
    let boot = format!("/ip4/127.0.0.1/tcp/{}", a.p2p_port);
    let b = Node::start(
        Spec::id("cmd-b")
            .gateway(gw.addr)
            .env("BOOTSTRAP_PEERS", boot.clone()),
    );
    let c = Node::start(
        Spec::id("cmd-c")
            .gateway(gw.addr)
            .env("BOOTSTRAP_PEERS", boot),
    );
    eventually(Duration::from_secs(20), "three registrations", || {
        let st = gw.state();
        (st.registered("cmd-a") > 0 && st.registered("cmd-b") > 0 && st.registered("cmd-c") > 0)
            .then_some(())
    })
    .await;

    // A 2+1 chunk: shard 0 on A, shard 1 on B, shard 2 lost.
    let enc = encode_chunk(
        BytesMut::from(&random(42, 300_000)[..]),
        CodecId::ReedSolomonErasure,
        Profile::new(2, 1).unwrap(),
        None,
    )
    .unwrap();
    let info = ChunkInfo::from(&enc.meta);
    let hs = enc.meta.shard_hashes.clone();
    let (mut ca, mut cb, mut cc) = (a.client().await, b.client().await, c.client().await);
    put(&mut ca, "cmd-a", &enc.shards[0]).await.unwrap();
    put(&mut cb, "cmd-b", &enc.shards[1]).await.unwrap();

    // C must find B through the DHT alone (the repair source has no address).
    wait(
        Duration::from_secs(30),
        "C resolves B in the DHT",
        || match cyxcloud_testkit::http_get(c.metrics, "/peers/cmd-b") {
            Ok((200, _)) => Some(()),
            _ => None,
        },
    );
    let sources = vec![
        ShardLocation {
            index: 0,
            hash: hs[0].0.to_vec(),
            node_id: "cmd-a".into(),
            address: a.url(),
            token: read_token("cmd-a", hs[0]),
            ..Default::default()
        },
        ShardLocation {
            index: 1,
            hash: hs[1].0.to_vec(),
            node_id: "cmd-b".into(),
            address: String::new(),
            token: read_token("cmd-b", hs[1]),
            ..Default::default()
        },
    ];
    gw.state().commands.insert(
        "cmd-c".into(),
        vec![
            cmd(
                "repair-1",
                Command::Repair(RepairCommand {
                    chunk: Some(info.clone()),
                    target_index: 2,
                    sources: sources.clone(),
                    ..Default::default()
                }),
            ),
            cmd(
                "repair-short",
                Command::Repair(RepairCommand {
                    chunk: Some(info.clone()),
                    // Shard 0, which C does not hold (shard 2 may be held by then), from one
                    // source where the code needs two.
                    target_index: 0,
                    sources: sources[1..].to_vec(),
                    ..Default::default()
                }),
            ),
        ],
    );
    let r = result_of(&gw, "repair-1").await;
    assert!(r.ok, "{r:?}\n{}", c.log());
    assert!(get(&mut cc, "cmd-c", &hs[2]).await.unwrap() == enc.shards[2]);
    let short = result_of(&gw, "repair-short").await;
    assert!(
        !short.ok && short.error.contains("only 1 of the 2"),
        "{short:?}"
    );

    // Transfer shard 0 from A to C with a put token for C.
    let put_c = token(
        "cmd-c",
        Role::Rebalancer,
        &[Op::Put],
        Scope::Shards(vec![hs[0]]),
    );
    gw.state().commands.insert(
        "cmd-a".into(),
        vec![cmd(
            "transfer-1",
            Command::Transfer(TransferCommand {
                hash: hs[0].0.to_vec(),
                target_node_id: "cmd-c".into(),
                target_address: c.url(),
                target_token: put_c,
            }),
        )],
    );
    let r = result_of(&gw, "transfer-1").await;
    assert!(r.ok, "{r:?}");
    assert!(get(&mut cc, "cmd-c", &hs[0]).await.unwrap() == enc.shards[0]);

    // Delete on A with a gateway token; a client token is refused and deletes nothing.
    gw.state().commands.insert(
        "cmd-b".into(),
        vec![cmd(
            "delete-client",
            Command::Delete(DeleteCommand {
                hashes: vec![hs[1].0.to_vec()],
                token: token(
                    "cmd-b",
                    Role::Client,
                    &[Op::Delete],
                    Scope::Shards(vec![hs[1]]),
                ),
                ..Default::default()
            }),
        )],
    );
    gw.state().commands.insert(
        "cmd-a".into(),
        vec![cmd(
            "delete-1",
            Command::Delete(DeleteCommand {
                hashes: vec![hs[0].0.to_vec()],
                token: gateway_token("cmd-a", &[Op::Delete]),
                ..Default::default()
            }),
        )],
    );
    assert!(result_of(&gw, "delete-1").await.ok);
    assert_eq!(has(&mut ca, "cmd-a", &[hs[0]]).await, vec![false]);
    let refused = result_of(&gw, "delete-client").await;
    assert!(!refused.ok);
    assert!(refused.error.contains("may not Delete"), "{refused:?}");
    assert_eq!(has(&mut cb, "cmd-b", &[hs[1]]).await, vec![true]);

    // A delete is bound to the heartbeat after which the gateway decided it: C holds shards 0
    // and 2 (transfer, repair); shard 2 is put again after that heartbeat, as a new write of
    // the same bytes would, and survives the delete; shard 0 goes.
    let seen = gw.state().heartbeats_of("cmd-c").len();
    let (epoch, seq) = eventually(Duration::from_secs(30), "a heartbeat of C", || {
        let st = gw.state();
        let hb = st.heartbeats_of("cmd-c");
        // The second heartbeat after `seen` was built after it: it covers every put so far.
        (hb.len() > seen + 1).then(|| (hb[hb.len() - 1].put_epoch, hb[hb.len() - 1].put_seq))
    })
    .await;
    assert_ne!(epoch, 0);
    assert!(
        seq >= 2,
        "C took at least the repair and the transfer: {seq}"
    );
    put(&mut cc, "cmd-c", &enc.shards[2]).await.unwrap();
    let delete_c = |id: &str, epoch: u64, seq: u64| {
        cmd(
            id,
            Command::Delete(DeleteCommand {
                hashes: vec![hs[0].0.to_vec(), hs[2].0.to_vec()],
                token: gateway_token("cmd-c", &[Op::Delete]),
                put_epoch: epoch,
                put_seq: seq,
            }),
        )
    };
    gw.state()
        .commands
        .insert("cmd-c".into(), vec![delete_c("delete-bound", epoch, seq)]);
    let r = result_of(&gw, "delete-bound").await;
    assert!(r.ok, "{r:?}");
    assert_eq!(
        has(&mut cc, "cmd-c", &[hs[0], hs[2]]).await,
        vec![false, true]
    );
    let log = c.log();
    assert!(
        log.lines()
            .any(|l| l.contains("delete command") && plain(l).contains("kept=1")),
        "the node reports what it kept:\n{log}"
    );
    // A command bound to another process of the node spares everything this one stored.
    let other = if epoch == u64::MAX { 1 } else { epoch + 1 };
    gw.state().commands.insert(
        "cmd-c".into(),
        vec![delete_c("delete-other", other, u64::MAX)],
    );
    assert!(result_of(&gw, "delete-other").await.ok);
    assert_eq!(has(&mut cc, "cmd-c", &[hs[2]]).await, vec![true]);
    // Bound to a heartbeat after the put, it goes; then C holds nothing.
    gw.state()
        .commands
        .insert("cmd-c".into(), vec![delete_c("delete-after", 0, 0)]);
    assert!(result_of(&gw, "delete-after").await.ok);
    assert_eq!(
        has(&mut cc, "cmd-c", &[hs[0], hs[2]]).await,
        vec![false, false]
    );
    let m = c.metrics_text();
    assert!(
        m.contains("cyxcloud_node_commands_total{kind=\"repair\",result=\"ok\"}"),
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_direct_repair_rebuilds_every_lost_shard_from_one_fetch_and_checks_its_token() {
    let a = Node::start(Spec::id("rep-a"));
    let b = Node::start(Spec::id("rep-b"));
    let c = Node::start(Spec::id("rep-c"));
    // A 2+2 chunk: shards 0 and 1 on A and B, shards 2 and 3 lost.
    let enc = encode_chunk(
        BytesMut::from(&random(7, 500_000)[..]),
        CodecId::ReedSolomonErasure,
        Profile::new(2, 2).unwrap(),
        None,
    )
    .unwrap();
    let info = ChunkInfo::from(&enc.meta);
    let hs = enc.meta.shard_hashes.clone();
    let (mut ca, mut cb, mut cc) = (a.client().await, b.client().await, c.client().await);
    put(&mut ca, "rep-a", &enc.shards[0]).await.unwrap();
    put(&mut cb, "rep-b", &enc.shards[1]).await.unwrap();
    let source = |i: usize, node: &Node| ShardLocation {
        index: i as u32,
        hash: hs[i].0.to_vec(),
        node_id: node.id.clone(),
        address: node.url(),
        token: token(
            &node.id,
            Role::Rebalancer,
            &[Op::Get],
            Scope::Shards(vec![hs[i]]),
        ),
        ..Default::default()
    };
    let command = |target_token: Vec<u8>, more_token: Vec<u8>| RepairCommand {
        chunk: Some(info.clone()),
        target_index: 2,
        sources: vec![source(0, &a), source(1, &b)],
        target_token,
        more_targets: vec![RepairTarget {
            index: 3,
            node_id: "rep-a".into(),
            address: a.url(),
            token: more_token,
            from_node: String::new(),
        }],
    };
    let put_c = |role| token("rep-c", role, &[Op::Put], Scope::Shards(vec![hs[2]]));
    let put_a = token(
        "rep-a",
        Role::Rebalancer,
        &[Op::Put],
        Scope::Shards(vec![hs[3]]),
    );

    // No token, a client's token, a token for another shard: refused, nothing stored.
    for (t, code) in [
        (Vec::new(), tonic::Code::Unauthenticated),
        (put_c(Role::Client), tonic::Code::PermissionDenied),
        (
            token(
                "rep-c",
                Role::Rebalancer,
                &[Op::Put],
                Scope::Shards(vec![hs[3]]),
            ),
            tonic::Code::PermissionDenied,
        ),
    ] {
        let e = cc.repair(command(t, put_a.clone())).await.unwrap_err();
        assert_eq!(e.code(), code, "{e:?}");
    }
    assert_eq!(has(&mut cc, "rep-c", &[hs[2]]).await, vec![false]);
    assert_eq!(has(&mut ca, "rep-a", &[hs[3]]).await, vec![false]);

    // A bad token for the pushed shard: the local one is stored, the push is reported.
    let r = cc
        .repair(command(put_c(Role::Rebalancer), b"forged".to_vec()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.stored, vec![2]);
    assert_eq!(r.errors.len(), 1, "{r:?}");
    assert!(r.errors[0].contains("shard 3 to rep-a"), "{r:?}");
    assert_eq!(r.bytes_read, 2 * enc.meta.shard_size as u64);
    assert!(get(&mut cc, "rep-c", &hs[2]).await.unwrap() == enc.shards[2]);

    // Both rebuilt from one fetch of k = 2 shards.
    let r = cc
        .repair(command(put_c(Role::Rebalancer), put_a.clone()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((r.stored.clone(), r.errors.clone()), (vec![2, 3], vec![]));
    assert_eq!(r.bytes_written, enc.meta.shard_size as u64);
    assert!(get(&mut ca, "rep-a", &hs[3]).await.unwrap() == enc.shards[3]);

    // Sources that cannot give k shards: an error, nothing changes.
    let put_c3 = token(
        "rep-c",
        Role::Rebalancer,
        &[Op::Put],
        Scope::Shards(vec![hs[3]]),
    );
    let mut short = command(put_c3, put_a);
    short.target_index = 3;
    short.more_targets.clear();
    short.sources.truncate(1);
    let e = cc.repair(short).await.unwrap_err();
    assert!(e.message().contains("only 1 of the 2"), "{e:?}");
}
