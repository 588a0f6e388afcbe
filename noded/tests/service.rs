//! ChunkService through gRPC against a real node: round trips, ranges, challenge, stats,
//! metrics, and every bad request with its precise status (and nothing changed).

use std::time::Duration;

use cyxcloud_core::Hash;
use cyxcloud_core::token::{Op, Role, Scope, TokenSigner};
use cyxcloud_proto::ErrorCode;
use cyxcloud_proto::v1::put_shard_request::Msg;
use cyxcloud_proto::v1::{
    ChallengeRequest, DeleteShardsRequest, HasShardsRequest, PutShardHeader, PutShardRequest,
    StatsRequest,
};

use crate::support::*;

const MIB: usize = 1 << 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shards_round_trip_from_one_byte_to_64_mib_with_ranges_and_survive_restart() {
    let mut node = Node::start(Spec::id("rt-node"));
    let mut c = node.client().await;
    let sizes = [1, 1000, MIB + 3, 8 * MIB, 64 * MIB];
    let mut stored = Vec::new();
    for (i, len) in sizes.into_iter().enumerate() {
        let data = random(i as u64, len);
        let h = Hash::of(&data);
        let r = put(&mut c, "rt-node", &data).await.unwrap();
        assert_eq!(r.hash, h.0.to_vec());
        assert!(!r.already_present);
        assert!(r.stored_bytes >= len as u64, "incompressible: stored as is");
        let (back, size) = get_range(&mut c, "rt-node", &h, 0, 0).await.unwrap();
        assert_eq!(size, len as u64);
        assert!(back == data, "round trip of {len} bytes");
        stored.push((h, data));
    }
    // Ranged gets, including ranges that cross the 1 MiB stream pieces and the last byte.
    let (h, data) = &stored[3];
    for (off, len) in [
        (0u64, 1u64),
        (5, 100),
        (MIB as u64 - 7, 20),
        (3 * MIB as u64 + 11, 2 * MIB as u64),
        (8 * MIB as u64 - 1, 1),
        (8 * MIB as u64 - 10, 0),
        (8 * MIB as u64, 0),
    ] {
        let (got, size) = get_range(&mut c, "rt-node", h, off, len).await.unwrap();
        let end = if len == 0 {
            data.len()
        } else {
            (off + len) as usize
        };
        assert_eq!(size, 8 * MIB as u64);
        assert!(got == data[off as usize..end], "range {off}+{len}");
    }
    // Same shard again: acknowledged, nothing written.
    let again = put(&mut c, "rt-node", &stored[1].1).await.unwrap();
    assert!(again.already_present);
    // Has (batch, in order), Challenge, Stats.
    let unknown = Hash::of(b"never stored");
    let mut query: Vec<Hash> = stored.iter().map(|s| s.0).collect();
    query.insert(2, unknown);
    let present = has(&mut c, "rt-node", &query).await;
    assert_eq!(present, vec![true, true, false, true, true, true]);
    let nonce = [9u8; 32];
    let proof = c
        .challenge(ChallengeRequest {
            hash: stored[2].0.0.to_vec(),
            nonce: nonce.to_vec(),
            token: rw_token("rt-node", &[stored[2].0]),
        })
        .await
        .unwrap()
        .into_inner()
        .proof;
    let mut expect = blake3::Hasher::new();
    expect.update(&nonce);
    expect.update(&stored[2].1);
    assert_eq!(proof, expect.finalize().as_bytes().to_vec());
    // Stats needs a token of this node: without one, or with another node's, refused.
    assert_code(
        c.stats(StatsRequest { token: vec![] }).await,
        ErrorCode::Unauthenticated,
    );
    assert_code(
        c.stats(StatsRequest {
            token: gateway_token("other-node", &[Op::Get]),
        })
        .await,
        ErrorCode::PermissionDenied,
    );
    let stats = stats(&mut c, "rt-node").await;
    assert_eq!(stats.node_id, "rt-node");
    assert_eq!(stats.shard_count, 5);
    let total: u64 = sizes.iter().map(|s| *s as u64 + 60).sum();
    assert_eq!(stats.used_bytes, total);
    assert!(stats.active_connections >= 1);
    // Prometheus, with the guide's names.
    let m = node.metrics_text();
    assert_eq!(
        metric_value(&m, "cyxcloud_storage_used_bytes"),
        total as f64
    );
    assert_eq!(metric_value(&m, "cyxcloud_chunks_stored"), 5.0);
    let payload: u64 = sizes.iter().map(|s| *s as u64).sum();
    assert_eq!(
        metric_value(&m, "cyxcloud_bytes_uploaded"),
        (payload + 1000) as f64,
        "the repeated put counts as received"
    );
    assert!(metric_value(&m, "cyxcloud_bytes_downloaded") >= payload as f64);
    assert!(metric_value(&m, "cyxcloud_bandwidth_in_bytes") > payload as f64);
    assert!(metric_value(&m, "cyxcloud_bandwidth_out_bytes") > payload as f64);
    assert!(metric_value(&m, "cyxcloud_active_connections") >= 1.0);
    assert_eq!(metric_value(&m, "cyxcloud_put_latency_seconds_count"), 6.0);
    assert!(metric_value(&m, "cyxcloud_get_latency_seconds_count") >= 12.0);
    assert!(m.contains("cyxcloud_heartbeat_success_total 0"));
    drop(c);
    // Restart: every shard is still there, byte for byte.
    node.restart();
    let mut c = node.client().await;
    for (h, data) in &stored {
        assert!(get(&mut c, "rt-node", h).await.unwrap() == *data);
    }
    assert_eq!(node.metric("cyxcloud_chunks_stored"), 5.0);
    // Delete needs a gateway/rebalancer token; it frees the space.
    let del = c
        .delete_shards(DeleteShardsRequest {
            hashes: vec![stored[4].0.0.to_vec(), unknown.0.to_vec()],
            token: gateway_token("rt-node", &[Op::Delete]),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((del.deleted, del.missing), (1, 1));
    assert_eq!(del.freed_bytes, 64 * MIB as u64 + 60);
    assert_code(
        get(&mut c, "rt-node", &stored[4].0).await,
        ErrorCode::NotFound,
    );
    assert_eq!(node.metric("cyxcloud_chunks_stored"), 4.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_bad_request_gets_a_precise_status_and_changes_nothing() {
    let node = Node::start(Spec::id("bad-node"));
    let mut c = node.client().await;
    let good = random(1, 5000);
    let gh = Hash::of(&good);
    put(&mut c, "bad-node", &good).await.unwrap();
    let data = random(2, 3000);
    let h = Hash::of(&data);
    let tok = rw_token("bad-node", &[h]);

    // Wrong hash: the bytes do not hash to the announced key.
    let wrong = Hash::of(b"another shard");
    let s = assert_code(
        put_raw(
            &mut c,
            put_msgs(&wrong, &data, &rw_token("bad-node", &[wrong])),
        )
        .await,
        ErrorCode::HashMismatch,
    );
    assert!(s.message().contains(&wrong.to_hex()), "{}", s.message());
    // Oversize: refused on the header, before any data.
    let mut msgs = put_msgs(&h, &data, &tok);
    if let Some(Msg::Header(hd)) = &mut msgs[0].msg {
        hd.size = cyxcloud_core::record::MAX_ORIGINAL_SIZE + 1;
    }
    assert_code(
        put_raw(&mut c, msgs[..1].to_vec()).await,
        ErrorCode::TooLarge,
    );
    // Forged token (another key), expired token, token for another node, for another shard,
    // without put, no token at all.
    let forger = TokenSigner::from_seed([8; 32]);
    let forged = token_by(
        &forger,
        "bad-node",
        Role::Client,
        &[Op::Put],
        Scope::Shards(vec![h]),
        now() + 600,
    );
    assert_code(
        put_raw(&mut c, put_msgs(&h, &data, &forged)).await,
        ErrorCode::Unauthenticated,
    );
    let expired = token_by(
        &signer(),
        "bad-node",
        Role::Client,
        &[Op::Put],
        Scope::Shards(vec![h]),
        now() - 1,
    );
    assert_code(
        put_raw(&mut c, put_msgs(&h, &data, &expired)).await,
        ErrorCode::Expired,
    );
    let other_node = rw_token("some-other-node", &[h]);
    assert_code(
        put_raw(&mut c, put_msgs(&h, &data, &other_node)).await,
        ErrorCode::PermissionDenied,
    );
    let other_shard = rw_token("bad-node", &[gh]);
    assert_code(
        put_raw(&mut c, put_msgs(&h, &data, &other_shard)).await,
        ErrorCode::PermissionDenied,
    );
    let get_only = token("bad-node", Role::Client, &[Op::Get], Scope::Shards(vec![h]));
    assert_code(
        put_raw(&mut c, put_msgs(&h, &data, &get_only)).await,
        ErrorCode::PermissionDenied,
    );
    assert_code(
        put_raw(&mut c, put_msgs(&h, &data, &[])).await,
        ErrorCode::Unauthenticated,
    );
    let mut altered = tok.clone();
    altered[10] ^= 1;
    assert_code(
        put_raw(&mut c, put_msgs(&h, &data, &altered)).await,
        ErrorCode::Unauthenticated,
    );
    // Malformed streams: no header, data first, empty message, second header, bad hash length,
    // zero size, too much and too little data.
    assert_code(put_raw(&mut c, vec![]).await, ErrorCode::InvalidArgument);
    let data_first = vec![PutShardRequest {
        msg: Some(Msg::Data(bytes::Bytes::from(data.clone()))),
    }];
    let s = assert_code(
        put_raw(&mut c, data_first).await,
        ErrorCode::InvalidArgument,
    );
    assert!(
        s.message().contains("data before header"),
        "{}",
        s.message()
    );
    assert_code(
        put_raw(&mut c, vec![PutShardRequest { msg: None }]).await,
        ErrorCode::InvalidArgument,
    );
    let mut twice = put_msgs(&h, &data, &tok);
    twice.insert(1, twice[0].clone());
    assert_code(put_raw(&mut c, twice).await, ErrorCode::InvalidArgument);
    let short_hash = vec![PutShardRequest {
        msg: Some(Msg::Header(PutShardHeader {
            hash: vec![1; 31],
            size: 10,
            token: tok.clone(),
        })),
    }];
    let s = assert_code(
        put_raw(&mut c, short_hash).await,
        ErrorCode::InvalidArgument,
    );
    assert!(s.message().contains("32-byte"), "{}", s.message());
    let mut zero = put_msgs(&h, &data, &tok);
    if let Some(Msg::Header(hd)) = &mut zero[0].msg {
        hd.size = 0;
    }
    assert_code(
        put_raw(&mut c, zero[..1].to_vec()).await,
        ErrorCode::InvalidArgument,
    );
    let mut more = put_msgs(&h, &data, &tok);
    more.push(PutShardRequest {
        msg: Some(Msg::Data(bytes::Bytes::from_static(b"extra"))),
    });
    let s = assert_code(put_raw(&mut c, more).await, ErrorCode::InvalidArgument);
    assert!(s.message().contains("announced 3000"), "{}", s.message());
    let mut less = put_msgs(&h, &data, &tok);
    if let Some(Msg::Header(hd)) = &mut less[0].msg {
        hd.size = 4000;
    }
    assert_code(put_raw(&mut c, less).await, ErrorCode::InvalidArgument);
    // Reads: unknown shard, bad ranges, forged and cross-shard read tokens, bad hash.
    assert_code(get(&mut c, "bad-node", &h).await, ErrorCode::NotFound);
    assert_code(
        get_range(&mut c, "bad-node", &gh, 5001, 0).await,
        ErrorCode::InvalidArgument,
    );
    assert_code(
        get_range(&mut c, "bad-node", &gh, 4000, 1001).await,
        ErrorCode::InvalidArgument,
    );
    assert_code(
        get_range(&mut c, "bad-node", &gh, u64::MAX, 2).await,
        ErrorCode::InvalidArgument,
    );
    assert_code(
        get_with(&mut c, &gh, &forged, 0, 0).await,
        ErrorCode::Unauthenticated,
    );
    assert_code(
        get_with(&mut c, &gh, &tok, 0, 0).await,
        ErrorCode::PermissionDenied,
    );
    assert_code(
        get_with(&mut c, &Hash([0; 32]), &[], 0, 0).await,
        ErrorCode::Unauthenticated,
    );
    let bad_has = c
        .has_shards(HasShardsRequest {
            hashes: vec![vec![0; 33]],
            token: gateway_token("bad-node", &[Op::Get]),
        })
        .await;
    assert_code(bad_has, ErrorCode::InvalidArgument);
    // HasShards is no oracle: without a token, or with a token for other shards, refused.
    for token in [vec![], rw_token("bad-node", &[Hash::of(b"other")])] {
        let r = c
            .has_shards(HasShardsRequest {
                hashes: vec![gh.0.to_vec()],
                token,
            })
            .await;
        assert!(r.is_err(), "{r:?}");
    }
    // Challenge: nonce bounds.
    for n in [0usize, 15, 65] {
        let r = c
            .challenge(ChallengeRequest {
                hash: gh.0.to_vec(),
                nonce: vec![1; n],
                token: rw_token("bad-node", &[gh]),
            })
            .await;
        assert_code(r, ErrorCode::InvalidArgument);
    }
    // Delete: a client token is never enough, even when it lists the shard and grants Delete.
    let client_delete = token(
        "bad-node",
        Role::Client,
        &[Op::Delete],
        Scope::Shards(vec![gh]),
    );
    let r = c
        .delete_shards(DeleteShardsRequest {
            hashes: vec![gh.0.to_vec()],
            token: client_delete,
        })
        .await;
    assert_code(r, ErrorCode::PermissionDenied);
    let r = c
        .delete_shards(DeleteShardsRequest {
            hashes: vec![gh.0.to_vec()],
            token: vec![],
        })
        .await;
    assert_code(r, ErrorCode::Unauthenticated);
    let r = c
        .delete_shards(DeleteShardsRequest {
            hashes: vec![gh.0.to_vec()],
            token: gateway_token("bad-node", &[Op::Get]),
        })
        .await;
    assert_code(r, ErrorCode::PermissionDenied);

    // Nothing changed: one shard, the good one, intact.
    assert_eq!(
        has(&mut c, "bad-node", &[gh, h, wrong]).await,
        vec![true, false, false]
    );
    assert!(get(&mut c, "bad-node", &gh).await.unwrap() == good);
    let stats = stats(&mut c, "bad-node").await;
    assert_eq!(stats.shard_count, 1);
    assert_eq!(stats.used_bytes, 5060);
    let m = node.metrics_text();
    assert!(
        m.contains("cyxcloud_node_requests_total{rpc=\"put\",code=\"hash-mismatch\"} 1"),
        "{m}"
    );
    assert!(m.contains("cyxcloud_node_requests_total{rpc=\"put\",code=\"expired\"} 1"));
    // The node is still healthy after all of it.
    let _ = Duration::ZERO;
    assert_eq!(node.health()["state"], "running");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_on_the_put_stream_is_invalid_argument() {
    use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};

    /// Sends raw bytes as gRPC messages (not protobuf).
    #[derive(Default)]
    struct Raw;
    struct RawEnc;
    struct RawDec;
    impl Encoder for RawEnc {
        type Item = Vec<u8>;
        type Error = tonic::Status;
        fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
            use bytes::BufMut;
            dst.put_slice(&item);
            Ok(())
        }
    }
    impl Decoder for RawDec {
        type Item = Vec<u8>;
        type Error = tonic::Status;
        fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, tonic::Status> {
            use bytes::Buf;
            let v = src.chunk().to_vec();
            src.advance(v.len());
            Ok(Some(v))
        }
    }
    impl Codec for Raw {
        type Encode = Vec<u8>;
        type Decode = Vec<u8>;
        type Encoder = RawEnc;
        type Decoder = RawDec;
        fn encoder(&mut self) -> RawEnc {
            RawEnc
        }
        fn decoder(&mut self) -> RawDec {
            RawDec
        }
    }

    let node = Node::start(Spec::id("garbage-node"));
    let ch = tonic::transport::Endpoint::from_shared(node.url())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut grpc = tonic::client::Grpc::new(ch);
    grpc.ready().await.unwrap();
    let path =
        tonic::codegen::http::uri::PathAndQuery::from_static("/cyxcloud.v1.ChunkService/PutShard");
    let garbage = vec![vec![0xff, 0xff, 0xff, 0xff, 0x0f]];
    let r = grpc
        .client_streaming(tonic::Request::new(tokio_stream::iter(garbage)), path, Raw)
        .await;
    let s = assert_code(r, ErrorCode::InvalidArgument);
    assert!(
        s.message().contains("could not be decoded"),
        "{}",
        s.message()
    );
    let mut c = node.client().await;
    let st = stats(&mut c, "garbage-node").await;
    assert_eq!(st.shard_count, 0);
}
