//! DHT discovery between four real node processes, with no gateway at all.

use std::time::Duration;

use crate::support::*;

#[test]
fn four_nodes_resolve_each_other_through_the_dht_alone() {
    let first = Node::start(Spec::id("dht-0"));
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(first.dir.join("metadata.json")).unwrap())
            .unwrap();
    let peer = meta["peer_id"].as_str().unwrap().to_string();
    // Both bootstrap forms: the guide's bare address, and one with the peer id.
    let bare = format!("/ip4/127.0.0.1/tcp/{}", first.p2p_port);
    let with_id = format!("{bare}/p2p/{peer}");
    let mut nodes = vec![first];
    for (i, boot) in [&bare, &with_id, &bare].into_iter().enumerate() {
        let spec = Spec::id(&format!("dht-{}", i + 1))
            .env("BOOTSTRAP_PEERS", boot.clone())
            .env("NODE_REGION", format!("region-{}", i + 1));
        nodes.push(Node::start(spec));
    }
    for a in &nodes {
        for b in &nodes {
            if a.id == b.id {
                continue;
            }
            let path = format!("/peers/{}", b.id);
            let body = wait(
                Duration::from_secs(30),
                &format!("{} resolves {}", a.id, b.id),
                || match cyxcloud_testkit::http_get(a.metrics, &path) {
                    Ok((200, body)) => Some(body),
                    _ => None,
                },
            );
            let rec: serde_json::Value = serde_json::from_str(&body).unwrap();
            assert_eq!(rec["node_id"], b.id.as_str());
            assert_eq!(
                rec["grpc_address"],
                b.url().as_str(),
                "{} via {}",
                b.id,
                a.id
            );
            assert!(rec["peer_id"].as_str().unwrap().starts_with("12D3Koo"));
        }
    }
    let rec: serde_json::Value = serde_json::from_str(
        &cyxcloud_testkit::http_get(nodes[0].metrics, "/peers/dht-2")
            .unwrap()
            .1,
    )
    .unwrap();
    assert_eq!(rec["region"], "region-2");
    // Unknown ids are a clean 404.
    let (code, body) = cyxcloud_testkit::http_get(nodes[1].metrics, "/peers/nobody").unwrap();
    assert_eq!(code, 404, "{body}");
    assert!(body.contains("not in the DHT"), "{body}");
    assert!(nodes[0].health()["peers"].as_u64().unwrap() >= 3);
}
