//! The Maintenance API (the rebalancer's view of the metadata) between real processes: who may
//! call it, what a grant checks and signs, the compare-and-set commit against a concurrent
//! delete, pending shards that arrive late, and two rebalancers sharing the work.

use std::net::SocketAddr;
use std::time::Duration;

use cyxcloud_proto::v1;
use cyxcloud_proto::v1::chunk_service_client::ChunkServiceClient;
use cyxcloud_proto::v1::maintenance_client::MaintenanceClient;
use cyxcloud_testkit::{Proc, free_port, http_get, wait_for_http};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

use crate::cluster::{
    ACCESS_KEY, Bearer, CHUNK, Cluster, ClusterOptions, SECRET_KEY, channel, cluster, ctl, id_ref,
    options, read_file, test_data, wait_online, write_file, write_file_late,
};
use crate::common::eventually;

type Maint = MaintenanceClient<InterceptedService<Channel, Bearer>>;

async fn maintenance(url: &str, ak: &str, sk: &str) -> Maint {
    let ch = channel(url).await;
    let t = v1::control_client::ControlClient::new(ch.clone())
        .authenticate(v1::AuthenticateRequest {
            access_key: ak.into(),
            secret_key: sk.into(),
        })
        .await
        .unwrap()
        .into_inner();
    MaintenanceClient::with_interceptor(ch, Bearer(format!("Bearer {}", t.token).parse().unwrap()))
        .max_decoding_message_size(cyxcloud_proto::MAX_MESSAGE_BYTES)
}

async fn degraded(m: &mut Maint) -> v1::DegradedResponse {
    m.degraded(v1::DegradedRequest {
        limit: 100,
        exclude: vec![],
    })
    .await
    .unwrap()
    .into_inner()
}

/// A `cyxcloud-rebalancer` process against `cl`'s gateway, with its metrics port.
struct Rebalancer {
    _proc: Proc,
    metrics: SocketAddr,
}

impl Rebalancer {
    fn start(cl: &Cluster, holder: &str) -> Rebalancer {
        Self::start_with(cl, holder, &[])
    }

    fn start_with(cl: &Cluster, holder: &str, settings: &[String]) -> Rebalancer {
        let metrics = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let log = cl.dir.path().join(format!("rebalancer-{holder}.log"));
        let proc = cyxcloud_testkit::spawn_rebalancer(
            &cl.grpc_url(),
            (ACCESS_KEY, SECRET_KEY),
            metrics.port(),
            &[&[format!("holder={holder}")], settings].concat(),
            &log,
        );
        let health = wait_for_http(metrics, "/health", Duration::from_secs(60));
        // The port is ours (not another test's process that took it meanwhile).
        assert!(
            health.contains(&format!("\"holder\":\"{holder}\"")),
            "{health}"
        );
        Rebalancer {
            _proc: proc,
            metrics,
        }
    }

    fn metric(&self, name: &str) -> f64 {
        let text = http_get(self.metrics, "/metrics").unwrap().1;
        text.lines()
            .filter(|l| l.starts_with(name) && !l.starts_with('#'))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }
}

async fn bucket(ctl: &mut crate::cluster::Ctl, name: &str) {
    ctl.create_bucket(v1::CreateBucketRequest {
        name: name.into(),
        public_read: false,
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn grants_are_checked_and_commits_compare_and_set_the_shard_row_sqlite() {
    grants_and_commits(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn grants_are_checked_and_commits_compare_and_set_the_shard_row_postgres() {
    let db = cyxcloud_testkit::services::postgres_db();
    grants_and_commits(Some(db.url.clone())).await;
}

async fn grants_and_commits(database_url: Option<String>) {
    let cl = Cluster::start(ClusterOptions {
        database_url,
        ..options(7)
    });
    let mut ctl = ctl(&cl).await;
    wait_online(&mut ctl, 7).await;
    bucket(&mut ctl, "maint").await;

    // Admins only.
    let user = ctl
        .create_user(v1::CreateUserRequest {
            name: "plain".into(),
            quota_bytes: 0,
            admin: false,
        })
        .await
        .unwrap()
        .into_inner();
    let mut plain = maintenance(&cl.grpc_url(), &user.access_key, &user.secret_key).await;
    let e = plain
        .degraded(v1::DegradedRequest::default())
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e:?}");
    let e = MaintenanceClient::new(channel(&cl.grpc_url()).await)
        .nodes(v1::MaintenanceNodesRequest {})
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unauthenticated, "{e:?}");

    let mut m = maintenance(&cl.grpc_url(), ACCESS_KEY, SECRET_KEY).await;
    assert_eq!(degraded(&mut m).await.total, 0);
    // Shard 3 of the only chunk is never uploaded: it is pending.
    let data = test_data(5, CHUNK);
    let file = write_file(&mut ctl, "maint", "a", &data, &[(0, 3)])
        .await
        .unwrap();
    let d = degraded(&mut m).await;
    assert_eq!((d.total, d.chunks.len()), (1, 1), "{d:?}");
    let c = &d.chunks[0];
    assert_eq!(c.reason, "not stored at commit");
    assert_eq!(c.shards[3].state, v1::ShardState::Pending as i32);
    assert_eq!(d.bytes, c.info.as_ref().unwrap().shard_size as u64);
    let status = ctl
        .cluster_status(v1::ClusterStatusRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!((status.pending_repairs, status.repair_bytes), (1, d.bytes));
    let node_list = m
        .nodes(v1::MaintenanceNodesRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(node_list.nodes.len(), 7);
    assert_eq!(node_list.max_shards_per_node, 2);

    // What a grant refuses.
    let sources: Vec<v1::RepairSource> = c
        .shards
        .iter()
        .filter(|s| s.index != 3)
        .take(10)
        .map(|s| v1::RepairSource {
            index: s.index,
            node_id: s.node_id.clone(),
        })
        .collect();
    let pending_node = c.shards[3].node_id.clone();
    let target = cl
        .nodes
        .iter()
        .map(|n| n.id.clone())
        .find(|n| *n != pending_node)
        .unwrap();
    let grant = |key: Vec<u8>, holder: &str, sources: Vec<v1::RepairSource>, node: &str| {
        v1::GrantRepairRequest {
            key,
            holder: holder.into(),
            lease_ms: 60_000,
            sources,
            targets: vec![v1::RepairTarget {
                index: 3,
                node_id: node.into(),
                ..Default::default()
            }],
        }
    };
    let key = c.key.clone();
    for (req, code) in [
        (
            grant(vec![1; 5], "h1", sources.clone(), &target),
            tonic::Code::InvalidArgument,
        ),
        (
            grant(vec![0; 32], "h1", sources.clone(), &target),
            tonic::Code::NotFound,
        ),
        (
            grant(key.clone(), "h1", sources.clone(), "no-such-node"),
            tonic::Code::FailedPrecondition,
        ),
        (
            grant(key.clone(), "", sources.clone(), &target),
            tonic::Code::InvalidArgument,
        ),
        (
            grant(
                key.clone(),
                "h1",
                vec![v1::RepairSource {
                    index: 0,
                    node_id: "elsewhere".into(),
                }],
                &target,
            ),
            tonic::Code::FailedPrecondition,
        ),
    ] {
        let e = m.grant_repair(req).await.unwrap_err();
        assert_eq!(e.code(), code, "{e:?}");
    }

    // A plan made before the shard moved (it names another node as the shard's place).
    let mut stale = grant(key.clone(), "h1", sources.clone(), &target);
    stale.targets[0].from_node = "not-where-it-is".into();
    let e = m.grant_repair(stale).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e:?}");
    assert!(e.message().contains("no longer on node"), "{e:?}");

    // A grant signs what the repair needs; a second holder waits for the lease.
    let g = m
        .grant_repair(grant(key.clone(), "h1", sources.clone(), &target))
        .await
        .unwrap()
        .into_inner();
    assert!(g.granted);
    assert_eq!(g.sources.len(), 10);
    assert!(
        g.sources
            .iter()
            .all(|s| !s.token.is_empty() && !s.address.is_empty())
    );
    assert_eq!(g.chunk.as_ref(), c.info.as_ref());
    let other = m
        .grant_repair(grant(key.clone(), "h2", sources.clone(), &target))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((other.granted, other.holder.as_str()), (false, "h1"));

    // The target node rebuilds shard 3 from the granted sources.
    let t = &g.targets[0];
    let mut node = ChunkServiceClient::new(channel(&t.address).await);
    let r = node
        .repair(v1::RepairCommand {
            chunk: g.chunk.clone(),
            target_index: 3,
            sources: g.sources.clone(),
            target_token: t.token.clone(),
            more_targets: vec![],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.stored, vec![3]);

    // A move from a node the row does not name is not applied.
    let mv = |from: &str| v1::CommitRepairRequest {
        key: key.clone(),
        holder: "h1".into(),
        moves: vec![v1::ShardMove {
            index: 3,
            hash: c.shards[3].hash.clone(),
            from_node: from.into(),
            to_node: target.clone(),
        }],
    };
    let r = m
        .commit_repair(mv("someone-else"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.applied, vec![false]);
    // The commit ended the grant: the lease is free for another holder.
    let g2 = m
        .grant_repair(grant(key.clone(), "h2", sources.clone(), &target))
        .await
        .unwrap()
        .into_inner();
    assert!(g2.granted);
    let r = m
        .commit_repair(v1::CommitRepairRequest {
            holder: "h2".into(),
            ..mv(&pending_node)
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.applied, vec![true]);
    assert_eq!(degraded(&mut m).await.total, 0);
    let layout = ctl
        .get_layout(v1::GetLayoutRequest {
            entry: Some(id_ref(file.id)),
            offset: 0,
            length: 0,
        })
        .await
        .unwrap()
        .into_inner();
    let s3 = &layout.chunks[0].shards[3];
    assert_eq!(
        (s3.node_id.as_str(), s3.state),
        (target.as_str(), v1::ShardState::Stored as i32)
    );
    assert_eq!(
        read_file(&mut ctl, id_ref(file.id), 0, 0).await.unwrap(),
        data
    );
    // Garbage collection (queued by the first, refused move) leaves the named copy alone:
    // deletes reach a node in a heartbeat's reply, and a finished command wakes the next
    // heartbeat, so two heartbeats answered from now are past any delete for it.
    let t = cl.nodes.iter().position(|n| n.id == target).unwrap();
    let beats = cl.node_metric(t, "cyxcloud_heartbeat_success_total");
    eventually("two more heartbeats of the target", || async {
        (cl.node_metric(t, "cyxcloud_heartbeat_success_total") >= beats + 2).then_some(())
    })
    .await;
    let token = m
        .node_token(v1::NodeTokenRequest {
            node_id: target.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .token;
    let present = node
        .has_shards(v1::HasShardsRequest {
            hashes: vec![c.shards[3].hash.clone()],
            token,
        })
        .await
        .unwrap()
        .into_inner()
        .present;
    assert_eq!(present, vec![true]);

    // A file deleted while its chunk is being repaired: the commit applies nothing.
    let data_b = test_data(6, CHUNK);
    write_file(&mut ctl, "maint", "b", &data_b, &[(0, 1)])
        .await
        .unwrap();
    let d = degraded(&mut m).await;
    let cb = d.chunks[0].clone();
    let srcs: Vec<v1::RepairSource> = cb
        .shards
        .iter()
        .filter(|s| s.index != 1)
        .take(10)
        .map(|s| v1::RepairSource {
            index: s.index,
            node_id: s.node_id.clone(),
        })
        .collect();
    let mut gb = grant(cb.key.clone(), "h1", srcs, &target);
    gb.targets[0].index = 1;
    assert!(m.grant_repair(gb).await.unwrap().into_inner().granted);
    ctl.unlink(v1::RemoveRequest {
        path: Some(v1::BucketPath {
            bucket: "maint".into(),
            path: "b".into(),
        }),
        ..Default::default()
    })
    .await
    .unwrap();
    let r = m
        .commit_repair(v1::CommitRepairRequest {
            key: cb.key.clone(),
            holder: "h1".into(),
            moves: vec![v1::ShardMove {
                index: 1,
                hash: cb.shards[1].hash.clone(),
                from_node: cb.shards[1].node_id.clone(),
                to_node: target.clone(),
            }],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.applied, vec![false]);
    assert_eq!(degraded(&mut m).await.total, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_shard_that_arrives_after_its_commit_is_marked_stored_not_rebuilt() {
    // A node that misses 3 heartbeats under a loaded CI machine counts as offline when the
    // rebalancer plans, and its late shard is then rebuilt, not checked: this test is about the
    // check, so its nodes get 5 s heartbeats (seen twice in CI with 1 s).
    let cl = Cluster::start(ClusterOptions {
        heartbeat_ms: 5000,
        ..options(7)
    });
    let mut ctl = ctl(&cl).await;
    wait_online(&mut ctl, 7).await;
    bucket(&mut ctl, "late").await;
    let data = test_data(9, 2 * CHUNK);
    // Shard 5 of chunk 0 and shard 12 of chunk 1 reach their nodes only after the commit.
    let e = write_file_late(&mut ctl, "late", "f", &data, &[(0, 5), (1, 12)], true)
        .await
        .unwrap();
    let mut m = maintenance(&cl.grpc_url(), ACCESS_KEY, SECRET_KEY).await;
    assert_eq!(degraded(&mut m).await.total, 2);
    let rb = Rebalancer::start(&cl, "late-rb");
    eventually("the pending shards marked stored", || {
        let mut m = m.clone();
        async move { (degraded(&mut m).await.total == 0).then_some(()) }
    })
    .await;
    assert_eq!(
        rb.metric("cyxcloud_rebalancer_shards_marked_stored_total"),
        2.0
    );
    assert_eq!(rb.metric("cyxcloud_rebalancer_shards_repaired_total"), 0.0);
    assert_eq!(read_file(&mut ctl, id_ref(e.id), 0, 0).await.unwrap(), data);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_rebalancers_repair_every_lost_shard_exactly_once_sqlite() {
    two_rebalancers(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_rebalancers_repair_every_lost_shard_exactly_once_postgres() {
    let db = cyxcloud_testkit::services::postgres_db();
    two_rebalancers(Some(db.url.clone())).await;
}

async fn two_rebalancers(database_url: Option<String>) {
    let mut cl = Cluster::start(ClusterOptions {
        database_url,
        ..options(9)
    });
    let mut ctl = ctl(&cl).await;
    wait_online(&mut ctl, 9).await;
    bucket(&mut ctl, "two").await;
    let mut files = Vec::new();
    for i in 0..4u64 {
        let d = test_data(20 + i, 3 * CHUNK + 1000 * i as usize);
        let e = write_file(&mut ctl, "two", &format!("f{i}"), &d, &[])
            .await
            .unwrap();
        files.push((e.id, d));
    }
    // The shards on the node that dies.
    let dead = cl.nodes[4].id.clone();
    let mut lost = 0;
    for (id, _) in &files {
        let l = ctl
            .get_layout(v1::GetLayoutRequest {
                entry: Some(id_ref(*id)),
                offset: 0,
                length: 0,
            })
            .await
            .unwrap()
            .into_inner();
        lost += l
            .chunks
            .iter()
            .flat_map(|c| &c.shards)
            .filter(|s| s.node_id == dead)
            .count();
    }
    assert!(lost > 0);
    let a = Rebalancer::start(&cl, "rb-a");
    let b = Rebalancer::start(&cl, "rb-b");
    cl.kill_node(4);
    let mut m = maintenance(&cl.grpc_url(), ACCESS_KEY, SECRET_KEY).await;
    eventually("the dead node's shards repaired", || {
        let mut m = m.clone();
        async move {
            // Node states first: a degraded count read before the node went offline is 0.
            let offline = m
                .nodes(v1::MaintenanceNodesRequest {})
                .await
                .ok()?
                .into_inner()
                .nodes
                .iter()
                .any(|n| n.state == v1::NodeState::Offline as i32);
            let d = degraded(&mut m).await;
            (offline && d.total == 0).then_some(())
        }
    })
    .await;
    // The metrics count a repair once its task is reaped, just after its commit.
    let repaired = || {
        a.metric("cyxcloud_rebalancer_shards_repaired_total")
            + b.metric("cyxcloud_rebalancer_shards_repaired_total")
    };
    eventually("both rebalancers' counts", || async {
        (repaired() >= lost as f64).then_some(())
    })
    .await;
    assert_eq!(repaired(), lost as f64, "each lost shard rebuilt once");
    for (id, d) in &files {
        assert_eq!(read_file(&mut ctl, id_ref(*id), 0, 0).await.unwrap(), *d);
    }
    assert_eq!(degraded(&mut m).await.total, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn audit_batches_hand_out_each_shard_once_per_period_and_failures_lower_the_score() {
    let cl = cluster(7);
    let mut ctl = ctl(&cl).await;
    wait_online(&mut ctl, 7).await;
    bucket(&mut ctl, "audits").await;
    write_file(&mut ctl, "audits", "f", &test_data(3, CHUNK), &[])
        .await
        .unwrap();
    let mut m = maintenance(&cl.grpc_url(), ACCESS_KEY, SECRET_KEY).await;
    let batch = |limit, age| v1::AuditBatchRequest {
        limit,
        min_age_ms: age,
    };
    // Just stored: not due within a long period; all due with a zero one.
    let b = m
        .audit_batch(batch(100, 3_600_000))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((b.shards.len(), b.stored_shards, b.overdue), (0, 14, 0));
    let b = m.audit_batch(batch(100, 0)).await.unwrap().into_inner();
    assert_eq!(b.shards.len(), 14);
    assert!(
        b.shards
            .iter()
            .all(|s| !s.token.is_empty() && s.nonce.is_empty())
    );
    // Handed out = audited now: the next batch of the same period is empty.
    let again = m
        .audit_batch(batch(100, 60_000))
        .await
        .unwrap()
        .into_inner();
    assert!(again.shards.is_empty());

    let s = b.shards[0].clone();
    let result = |ok: bool, challenges: Vec<v1::AuditChallenge>| v1::AuditResult {
        chunk_key: s.chunk_key.clone(),
        index: s.index,
        hash: s.hash.clone(),
        node_id: s.node_id.clone(),
        ok,
        error: if ok {
            String::new()
        } else {
            "retrieval: corrupt".into()
        },
        challenges,
    };
    // Malformed challenges are refused.
    let e = m
        .report_audits(v1::ReportAuditsRequest {
            results: vec![result(
                true,
                vec![v1::AuditChallenge {
                    nonce: vec![1; 8],
                    proof: vec![2; 32],
                }],
            )],
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
    // A passed retrieval stocks a challenge, which the next audit of that shard asks.
    let ch = v1::AuditChallenge {
        nonce: vec![7; 32],
        proof: vec![9; 32],
    };
    m.report_audits(v1::ReportAuditsRequest {
        results: vec![result(true, vec![ch.clone()])],
    })
    .await
    .unwrap();
    let b2 = m.audit_batch(batch(100, 0)).await.unwrap().into_inner();
    let asked = b2
        .shards
        .iter()
        .find(|x| x.chunk_key == s.chunk_key && x.index == s.index)
        .unwrap();
    assert_eq!(
        (asked.nonce.clone(), asked.proof.clone()),
        (ch.nonce, ch.proof)
    );
    // A failed audit marks the shard corrupt (repair queued) and lowers the node's score.
    let r = m
        .report_audits(v1::ReportAuditsRequest {
            results: vec![result(false, vec![])],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.failed, 1);
    let d = degraded(&mut m).await;
    assert_eq!(d.total, 1);
    assert!(
        d.chunks[0].reason.starts_with("failed audit"),
        "{:?}",
        d.chunks[0]
    );
    let node = m
        .nodes(v1::MaintenanceNodesRequest {})
        .await
        .unwrap()
        .into_inner()
        .nodes
        .into_iter()
        .find(|n| n.id == s.node_id)
        .unwrap();
    let a = node.audit.unwrap();
    assert_eq!((a.audits, a.failures, a.consecutive_failures), (2, 1, 1));
    assert!((a.score - 0.5).abs() < 1e-9, "{a:?}");
    // The status shows it too.
    let st = ctl
        .cluster_status(v1::ClusterStatusRequest {})
        .await
        .unwrap()
        .into_inner();
    let n = st.nodes.iter().find(|n| n.node_id == s.node_id).unwrap();
    assert_eq!(n.audit.as_ref().unwrap().failures, 1);
}

/// `problem` reports of the first `n` shards of each chunk of `layout`, with their read tokens.
fn reports_of(l: &v1::GetLayoutResponse, n: usize, with_token: bool) -> Vec<v1::ShardReport> {
    l.chunks
        .iter()
        .flat_map(|c| {
            let id = c.info.as_ref().unwrap().id.clone();
            c.shards.iter().take(n).map(move |s| v1::ShardReport {
                chunk_id: id.clone(),
                index: s.index,
                node_id: s.node_id.clone(),
                problem: v1::ShardProblem::Corrupt as i32,
                token: if with_token { s.token.clone() } else { vec![] },
            })
        })
        .collect()
}

async fn layout_of(ctl: &mut crate::cluster::Ctl, id: u64) -> v1::GetLayoutResponse {
    ctl.get_layout(v1::GetLayoutRequest {
        entry: Some(id_ref(id)),
        offset: 0,
        length: 0,
    })
    .await
    .unwrap()
    .into_inner()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_readers_false_corruption_reports_change_nothing_and_get_it_refused() {
    let cl = cluster(7);
    let mut admin = ctl(&cl).await;
    wait_online(&mut admin, 7).await;
    let user = |name: &'static str| {
        let mut admin = admin.clone();
        let url = cl.grpc_url();
        async move {
            let u = admin
                .create_user(v1::CreateUserRequest {
                    name: name.into(),
                    quota_bytes: 0,
                    admin: false,
                })
                .await
                .unwrap()
                .into_inner();
            let mut c = crate::cluster::control(&url, &u.access_key, &u.secret_key).await;
            bucket(&mut c, name).await;
            c
        }
    };
    let mut alice = user("alice").await;
    let mut bob = user("bob").await;
    // Bob stores the same bytes as Alice: one deduplicated chunk, so his layout names her
    // shards and carries read tokens for them.
    let data = test_data(21, CHUNK / 2);
    let a = write_file(&mut alice, "alice", "mine", &data, &[])
        .await
        .unwrap();
    let b = write_file(&mut bob, "bob", "copy", &data, &[])
        .await
        .unwrap();
    let la = layout_of(&mut alice, a.id).await;
    let lb = layout_of(&mut bob, b.id).await;
    assert_eq!(la.chunks[0].shards, {
        // Same shards at the same nodes (tokens differ per grant).
        let mut s = lb.chunks[0].shards.clone();
        for (x, y) in s.iter_mut().zip(&la.chunks[0].shards) {
            x.token = y.token.clone();
        }
        s
    });

    // Without the read token, or with one for another shard: refused, nothing queued.
    let e = bob
        .report_shards(v1::ReportShardsRequest {
            reports: reports_of(&lb, 5, false),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e:?}");
    // (A read token covers the shards of one node: take one of another node.)
    let all = reports_of(&lb, 14, true);
    let other = all.iter().find(|r| r.node_id != all[0].node_id).unwrap();
    let mut swapped = vec![all[0].clone()];
    swapped[0].token = other.token.clone();
    let e = bob
        .report_shards(v1::ReportShardsRequest { reports: swapped })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e:?}");

    // With his tokens: accepted as evidence; the shards stay Stored until an audit decides.
    let five = reports_of(&lb, 5, true);
    bob.report_shards(v1::ReportShardsRequest {
        reports: five.clone(),
    })
    .await
    .unwrap();
    let stored = |l: &v1::GetLayoutResponse| {
        l.chunks
            .iter()
            .flat_map(|c| &c.shards)
            .all(|s| s.state == v1::ShardState::Stored as i32)
    };
    assert!(stored(&layout_of(&mut alice, a.id).await));
    // The next audit batch asks exactly the reported shards first (the rest are not due).
    let mut m = maintenance(&cl.grpc_url(), ACCESS_KEY, SECRET_KEY).await;
    let batch = m
        .audit_batch(v1::AuditBatchRequest {
            limit: 1,
            min_age_ms: 3_600_000,
        })
        .await
        .unwrap()
        .into_inner();
    let mut asked: Vec<(u32, String)> = batch
        .shards
        .iter()
        .map(|s| (s.index, s.node_id.clone()))
        .collect();
    asked.sort();
    let mut want: Vec<(u32, String)> = five.iter().map(|r| (r.index, r.node_id.clone())).collect();
    want.sort();
    assert_eq!(asked, want);
    // The audits find them intact: five false reports on Bob's record, no shard touched.
    m.report_audits(v1::ReportAuditsRequest {
        results: batch
            .shards
            .iter()
            .map(|s| v1::AuditResult {
                chunk_key: s.chunk_key.clone(),
                index: s.index,
                hash: s.hash.clone(),
                node_id: s.node_id.clone(),
                ok: true,
                error: String::new(),
                challenges: vec![],
            })
            .collect(),
    })
    .await
    .unwrap();
    assert!(stored(&layout_of(&mut alice, a.id).await));

    // A real rebalancer audits what Bob keeps reporting; every report is found false, and
    // after FALSE_REPORT_LIMIT of them in the hour he is not heard any more.
    let _r = Rebalancer::start_with(
        &cl,
        "auditor",
        &[
            "audit_interval_ms=100".into(),
            "audit_period_secs=86400".into(),
        ],
    );
    let refused = eventually("Bob's reports to be refused", || {
        let mut bob = bob.clone();
        async move {
            let l = layout_of(&mut bob, b.id).await;
            match bob
                .report_shards(v1::ReportShardsRequest {
                    reports: reports_of(&l, 5, true),
                })
                .await
            {
                Err(e) if e.code() == tonic::Code::PermissionDenied => Some(e),
                _ => None,
            }
        }
    })
    .await;
    assert!(refused.message().contains("found false"), "{refused:?}");
    // Alice's file is whole, every shard still Stored, nothing was repaired.
    assert_eq!(
        read_file(&mut alice, id_ref(a.id), 0, 0).await.unwrap(),
        data
    );
    assert!(stored(&layout_of(&mut alice, a.id).await));
    assert_eq!(
        m.degraded(v1::DegradedRequest {
            limit: 10,
            exclude: vec![]
        })
        .await
        .unwrap()
        .into_inner()
        .total,
        0
    );
    let log = cl.gateway_log();
    assert!(log.contains("found intact by its audit"), "{log}");
}
