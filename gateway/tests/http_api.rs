//! The HTTP port of a real gateway process: `/health`, `/metrics`, the `/ws` journal feed and
//! the operator account API, including a real node logging in through it.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::time::Duration;

use cyxcloud_proto::v1;
use cyxcloud_testkit::{http_get, tempdir};
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use crate::cluster::{Cluster, ClusterOptions, channel, ctl, options, path_ref, wait_online};
use crate::common::eventually;

/// A minimal HTTP/1.1 request (a JSON body when given, a bearer token when given):
/// `(status, JSON body)`.
fn http_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&Value>,
    bearer: Option<&str>,
) -> (u16, Value) {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let body = body.map(Value::to_string).unwrap_or_default();
    let auth = bearer
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n{auth}\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    let status = raw
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = raw.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    (status, serde_json::from_str(body).unwrap_or(Value::Null))
}

fn http_post(addr: SocketAddr, path: &str, body: &Value, bearer: Option<&str>) -> (u16, Value) {
    http_request(addr, "POST", path, Some(body), bearer)
}

fn http_get_bearer(addr: SocketAddr, path: &str, bearer: Option<&str>) -> (u16, Value) {
    http_request(addr, "GET", path, None, bearer)
}

/// The control API's bearer token for an access key.
async fn bearer_token(cl: &Cluster, access_key: &str, secret_key: &str) -> String {
    cyxcloud_proto::v1::control_client::ControlClient::new(channel(&cl.grpc_url()).await)
        .authenticate(v1::AuthenticateRequest {
            access_key: access_key.into(),
            secret_key: secret_key.into(),
        })
        .await
        .unwrap()
        .into_inner()
        .token
}

fn user_add(gw_data_dir: &std::path::Path, email: &str, password: &str) {
    let out = Command::new(cyxcloud_testkit::bin("cyxcloud-gateway"))
        .env_remove("DATABASE_URL")
        .env("GATEWAY_DATA_DIR", gw_data_dir)
        .env("CYXCLOUD_USER_PASSWORD", password)
        .args(["user", "add", "--name", "John Doe", "--email", email])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "user add: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("user id: u-"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn operator_login_and_machine_registration_let_a_node_in() {
    let tmp = tempdir().unwrap();
    let data = tmp.path().join("gw");
    std::fs::create_dir_all(&data).unwrap();
    user_add(&data, "miner@example.com", "correct horse battery");
    let mut cl = Cluster::start(ClusterOptions {
        gateway_dir: Some(data),
        gateway_env: vec![("GATEWAY_REQUIRE_MACHINE_KEYS".into(), "true".into())],
        ..options(0)
    });
    // The account API contract.
    let (code, body) = http_post(
        cl.http_addr(),
        "/api/auth/login",
        &json!({"email": "miner@example.com", "password": "wrong password"}),
        None,
    );
    assert_eq!(code, 401);
    assert_eq!(body, json!({"error": "invalid email or password"}));
    let (code, body) = http_post(
        cl.http_addr(),
        "/api/auth/login",
        &json!({"email": "miner@example.com", "password": "correct horse battery"}),
        None,
    );
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["user"]["name"], "John Doe");
    assert_eq!(body["user"]["email"], "miner@example.com");
    let jwt = body["token"].as_str().unwrap().to_string();
    assert_eq!(jwt.split('.').count(), 3, "a JWT");
    let machine = json!({"node_id": "probe", "name": "rig", "hostname": "h", "cpu_cores": 8,
        "ram_bytes": 0, "gpu": "", "storage_capacity_bytes": 0, "wallet_address": ""});
    let (code, _) = http_post(
        cl.http_addr(),
        "/api/machines/register",
        &machine,
        Some("not-a-jwt"),
    );
    assert_eq!(code, 401);
    let (code, _) = http_post(cl.http_addr(), "/api/machines/register", &machine, None);
    assert_eq!(code, 401);
    let (code, body) = http_post(
        cl.http_addr(),
        "/api/machines/register",
        &machine,
        Some(&jwt),
    );
    assert_eq!(code, 200, "{body}");
    assert!(body["machine_id"].as_str().unwrap().starts_with("m-"));
    assert!(!body["api_key"].as_str().unwrap().is_empty());
    assert!(body["owner_id"].as_str().unwrap().starts_with("u-"));

    // A real node logs in through this API, saves its credentials and is let in; a node
    // without a machine key is refused.
    let api = cl.http_url();
    let good = cl.add_node_as(
        "miner-node",
        &[
            ("CYXWIZ_API_REGISTER", "true"),
            ("CYXWIZ_API_URL", &api),
            ("CYXWIZ_EMAIL", "miner@example.com"),
            ("CYXWIZ_PASSWORD", "correct horse battery"),
        ],
    );
    cl.add_node_as("stranger", &[]);
    let mut ctl = ctl(&cl).await;
    wait_online(&mut ctl, 1).await;
    let s = ctl
        .cluster_status(v1::ClusterStatusRequest {})
        .await
        .unwrap()
        .into_inner();
    let ids: Vec<&str> = s.nodes.iter().map(|n| n.node_id.as_str()).collect();
    assert_eq!(ids, [cl.nodes[good].id.as_str()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_expired_operator_jwt_is_refused_and_a_new_login_works() {
    let tmp = tempdir().unwrap();
    let data = tmp.path().join("gw");
    std::fs::create_dir_all(&data).unwrap();
    user_add(&data, "op@example.com", "correct horse battery");
    let cl = Cluster::start(ClusterOptions {
        gateway_dir: Some(data),
        gateway_settings: [
            options(0).gateway_settings,
            vec!["auth.jwt_ttl_secs=2".into()],
        ]
        .concat(),
        ..options(0)
    });
    let login = || {
        let (code, body) = http_post(
            cl.http_addr(),
            "/api/auth/login",
            &json!({"email": "op@example.com", "password": "correct horse battery"}),
            None,
        );
        assert_eq!(code, 200, "{body}");
        body["token"].as_str().unwrap().to_string()
    };
    let machine = |id: &str| {
        json!({"node_id": id, "name": "rig", "hostname": "h", "cpu_cores": 8, "ram_bytes": 0,
            "gpu": "", "storage_capacity_bytes": 0, "wallet_address": ""})
    };
    let stale = login();
    let issued = std::time::Instant::now();
    // The expiry is the behaviour under test: wait past it by the clock.
    cyxcloud_testkit::wait_until(Duration::from_secs(10), "the JWT to expire", || {
        (issued.elapsed() > Duration::from_secs(3)).then_some(())
    });
    let (code, body) = http_post(
        cl.http_addr(),
        "/api/machines/register",
        &machine("late"),
        Some(&stale),
    );
    assert_eq!(code, 401, "{body}");
    assert_eq!(body, json!({"error": "invalid or expired token"}));
    let (code, body) = http_post(
        cl.http_addr(),
        "/api/machines/register",
        &machine("renewed"),
        Some(&login()),
    );
    assert_eq!(code, 200, "{body}");
    assert!(body["api_key"].as_str().is_some_and(|k| !k.is_empty()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn health_metrics_and_the_ws_feed_replay_the_journal() {
    let mut cl = Cluster::start(options(0));
    let (code, body) = http_get(cl.http_addr(), "/health").unwrap();
    assert_eq!(code, 200);
    let h: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(h["healthy"], true);
    assert_eq!(h["database"], "sqlite");
    let mut ctl = ctl(&cl).await;
    let token = bearer_token(&cl, crate::cluster::ACCESS_KEY, crate::cluster::SECRET_KEY).await;
    // The gateway's background workers: for an admin's bearer token only, and in /metrics.
    let (code, workers) = http_get_bearer(cl.http_addr(), "/api/workers", Some(&token));
    assert_eq!(code, 200, "{workers}");
    let names: Vec<&str> = workers["workers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["name"].as_str().unwrap())
        .collect();
    for want in [
        "journal-tailer",
        "node-sweep",
        "latency-probe",
        "write-expiry",
        "metrics-refresh",
    ] {
        assert!(names.contains(&want), "{want} missing: {workers}");
    }
    assert!(
        workers["workers"]
            .as_array()
            .unwrap()
            .iter()
            .all(|w| w["state"] != "error"),
        "{workers}"
    );
    assert_eq!(http_get_bearer(cl.http_addr(), "/api/workers", None).0, 401);
    let user = ctl
        .create_user(v1::CreateUserRequest {
            name: "not-admin".into(),
            quota_bytes: 0,
            admin: false,
        })
        .await
        .unwrap()
        .into_inner();
    let user_token = bearer_token(&cl, &user.access_key, &user.secret_key).await;
    assert_eq!(
        http_get_bearer(cl.http_addr(), "/api/workers", Some(&user_token)).0,
        403
    );
    let (_, metrics) = http_get(cl.http_addr(), "/metrics").unwrap();
    assert!(
        metrics.contains("cyxcloud_worker_state{worker=\"node-sweep\",state=\"idle\"}")
            && metrics.contains("cyxcloud_worker_steps_total{worker=\"node-sweep\"}"),
        "{metrics}"
    );

    let b = ctl
        .create_bucket(v1::CreateBucketRequest {
            name: "feed".into(),
            public_read: false,
        })
        .await
        .unwrap()
        .into_inner();
    let node = cl.add_node_as("ws-node", &[]);
    wait_online(&mut ctl, 1).await;

    // An authenticated subscriber replaying from the start.
    let (mut ws, _) =
        tokio_tungstenite::connect_async(format!("ws://{}/ws?token={token}", cl.http_addr()))
            .await
            .unwrap();
    ws.send(Message::Text(
        json!({"type": "subscribe", "topics": ["file.*", "node.*"], "since": 0})
            .to_string()
            .into(),
    ))
    .await
    .unwrap();
    // Events of this test's bucket and its node (other components may make their own).
    let mut next = async || -> Value {
        loop {
            let m = tokio::time::timeout(Duration::from_secs(15), ws.next())
                .await
                .expect("a ws message in time")
                .unwrap()
                .unwrap();
            if let Message::Text(t) = m {
                let v: Value = serde_json::from_str(&t).unwrap();
                let ours = v["type"] != "event"
                    || v["bucket"] == "feed"
                    || v["topic"].as_str().is_some_and(|t| t.starts_with("node."));
                if ours {
                    return v;
                }
            }
        }
    };
    let ack = next().await;
    assert_eq!(ack["type"], "subscribed");
    assert_eq!(ack["authenticated"], true);
    let e1 = next().await;
    assert_eq!(
        (e1["topic"].as_str(), e1["bucket"].as_str()),
        (Some("file.created"), Some("feed"))
    );
    assert_eq!(e1["entry"]["kind"], "bucket");
    let e2 = next().await;
    assert_eq!(e2["topic"], "node.online");
    assert_eq!(e2["node_id"], cl.nodes[node].id.as_str());
    assert!(e2["seq"].as_u64() > e1["seq"].as_u64());
    // A live change arrives too.
    ctl.mkdir(v1::MkdirRequest {
        parent_id: b.id,
        name: "live".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    let e3 = next().await;
    assert_eq!(
        (e3["topic"].as_str(), e3["path"].as_str()),
        (Some("file.created"), Some("live"))
    );

    // Without a token only node events are sent, even to a subscriber asking for file events:
    // the replay from the start skips the bucket's file.created (the journal's first event)
    // and begins with the node coming online.
    let (mut anon, _) = tokio_tungstenite::connect_async(format!("ws://{}/ws", cl.http_addr()))
        .await
        .unwrap();
    anon.send(Message::Text(
        json!({"type": "subscribe", "topics": ["file.*", "node.*"], "since": 0})
            .to_string()
            .into(),
    ))
    .await
    .unwrap();
    let mut got = Vec::new();
    while got.len() < 2 {
        let m = tokio::time::timeout(Duration::from_secs(15), anon.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        if let Message::Text(t) = m {
            got.push(serde_json::from_str::<Value>(&t).unwrap());
        }
    }
    assert_eq!(got[0]["authenticated"], false);
    assert_eq!(got[1]["topic"], "node.online", "{got:?}");
    assert!(got[1]["seq"].as_u64() > e1["seq"].as_u64(), "{got:?}");

    // Metrics name requests, nodes by state, objects and bytes.
    ctl.write_inline(v1::WriteInlineRequest {
        target: Some(path_ref("feed", "small.txt")),
        data: b"hello".to_vec(),
        ..Default::default()
    })
    .await
    .unwrap();
    let metrics = eventually("metrics to show the file", || async {
        let (_, m) = http_get(cl.http_addr(), "/metrics").ok()?;
        m.contains("cyxcloud_gateway_objects 1").then_some(m)
    })
    .await;
    assert!(metrics.contains("cyxcloud_gateway_bytes 5"));
    assert!(metrics.contains("cyxcloud_gateway_nodes{state=\"online\"} 1"));
    assert!(
        metrics.contains("cyxcloud_gateway_requests_total{method=\"WriteInline\",code=\"ok\"} 1")
    );
    assert!(metrics.contains("cyxcloud_gateway_request_duration_seconds_bucket"));
}
