//! Lifecycle through the real binary: `--drain`, SIGTERM drains a registered node until the
//! gateway says DRAINED, a second SIGTERM exits at once.

use std::time::Duration;

use cyxcloud_core::Hash;
use cyxcloud_proto::ErrorCode;
use cyxcloud_proto::v1::NodeState;

use crate::startup::run_to_exit;
use crate::support::gateway::FakeGateway;
use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_flag_refuses_new_shards_keeps_serving_reads() {
    let mut node = Node::start(Spec::id("drain-node"));
    let mut c = node.client().await;
    let a = random(1, 20_000);
    put(&mut c, "drain-node", &a).await.unwrap();

    let mut cmd = node.command();
    cmd.arg("--drain");
    let (code, out) = run_to_exit(cmd, node.data_root(), "drain-cmd");
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("ok draining"), "{out}");
    assert_eq!(node.health()["state"], "draining");

    let s = assert_code(
        put(&mut c, "drain-node", &random(2, 1000)).await,
        ErrorCode::Draining,
    );
    assert!(cyxcloud_proto::status::is_retryable(&s));
    assert!(get(&mut c, "drain-node", &Hash::of(&a)).await.unwrap() == a);
    let st = stats(&mut c, "drain-node").await;
    assert_eq!(st.state, NodeState::Draining as i32);
    let mut cmd = node.command();
    cmd.arg("--drain");
    let (code, out) = run_to_exit(cmd, node.data_root(), "drain-again");
    assert_eq!(code, 0);
    assert!(out.contains("ok already draining"), "{out}");

    // A standalone node has nobody to drain to: SIGTERM stops it cleanly.
    drop(c);
    node.stop();
    let mut cmd = node.command();
    cmd.arg("--drain");
    let (code, out) = run_to_exit(cmd, node.data_root(), "drain-nobody");
    assert_ne!(code, 0);
    assert!(out.contains("no node is running"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_a_registered_node_until_the_gateway_says_drained() {
    let gw = FakeGateway::start().await;
    let mut node = Node::start(Spec {
        trust_test_key: false,
        ..Spec::id("term-node").gateway(gw.addr)
    });
    eventually(
        Duration::from_secs(20),
        "registration and a heartbeat",
        || (!gw.state().heartbeats_of("term-node").is_empty()).then_some(()),
    )
    .await;
    let mut c = node.client().await;
    let a = random(3, 10_000);
    put(&mut c, "term-node", &a).await.unwrap();

    node.proc().term();
    eventually(Duration::from_secs(20), "a DRAINING heartbeat", || {
        gw.state()
            .heartbeats_of("term-node")
            .iter()
            .any(|h| h.state == NodeState::Draining as i32)
            .then_some(())
    })
    .await;
    assert_code(
        put(&mut c, "term-node", &random(4, 100)).await,
        ErrorCode::Draining,
    );
    assert!(get(&mut c, "term-node", &Hash::of(&a)).await.unwrap() == a);
    assert_eq!(node.health()["state"], "draining");
    assert!(
        node.proc().is_running(),
        "draining nodes wait for the gateway"
    );

    gw.state()
        .desired
        .insert("term-node".into(), NodeState::Drained);
    let st = node.proc().wait_exit(Duration::from_secs(20));
    assert!(st.success(), "{st}\n{}", node.log());
    assert!(node.log().contains("node is drained"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_sigterm_exits_at_once() {
    let gw = FakeGateway::start().await;
    let mut node = Node::start(Spec::id("twice-node").gateway(gw.addr));
    node.proc().term();
    eventually(Duration::from_secs(20), "draining", || {
        (node.health()["state"] == "draining").then_some(())
    })
    .await;
    node.proc().term();
    let st = node.proc().wait_exit(Duration::from_secs(5));
    assert!(st.success(), "{st}");
    assert!(node.log().contains("second termination signal"));
    drop(gw);
}
