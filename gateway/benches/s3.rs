//! S3 PUT and GET throughput for 4 KiB, 1 MiB and 256 MiB objects with a concurrent client
//! (`aws-sdk-s3`, several requests in flight), against a real local cluster (release gateway on
//! SQLite + 7 release nodes on RocksDB, default 10+4 profile and 64 MiB chunks), next to the
//! same client against a loopback HTTP sink that stores nothing (the ceiling), in one run.
//!
//! ```text
//! cargo build --release -p cyxcloud-gateway -p cyxcloud-node --bins
//! cargo bench -p cyxcloud-gateway --bench s3
//! ```
//! `S3_BENCH_SCALE` (default 1.0) scales the object counts.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use aws_sdk_s3::Client;
use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_s3::primitives::ByteStream;
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use cyxcloud_testkit::cluster::{ACCESS_KEY, Cluster, ClusterOptions, SECRET_KEY};
use futures::StreamExt;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const KIB: usize = 1 << 10;
const MIB: usize = 1 << 20;

fn client(endpoint: &str) -> Client {
    let http = aws_smithy_http_client::Builder::new().build_http();
    let conf = aws_sdk_s3::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .credentials_provider(Credentials::new(
            ACCESS_KEY, SECRET_KEY, None, None, "bench",
        ))
        .endpoint_url(endpoint)
        .force_path_style(true)
        .http_client(http)
        .build();
    Client::from_conf(conf)
}

/// The ceiling: an HTTP server that reads every request body and throws it away, and answers
/// a GET with as many bytes as were PUT under that path (zero-copy slices of one buffer).
#[derive(Clone)]
struct Sink {
    sizes: Arc<Mutex<HashMap<String, usize>>>,
    blob: Bytes,
}

async fn sink(State(s): State<Sink>, req: Request) -> Response {
    let path = req.uri().path().to_string();
    match *req.method() {
        Method::PUT => {
            let mut body = req.into_body().into_data_stream();
            let mut n = 0usize;
            while let Some(c) = body.next().await {
                match c {
                    Ok(c) => n += c.len(),
                    Err(_) => return StatusCode::BAD_REQUEST.into_response(),
                }
            }
            s.sizes.lock().unwrap().insert(path, n);
            let mut h = HeaderMap::new();
            h.insert(
                "etag",
                "\"00000000000000000000000000000000\"".parse().unwrap(),
            );
            (StatusCode::OK, h).into_response()
        }
        Method::GET => {
            let Some(n) = s.sizes.lock().unwrap().get(&path).copied() else {
                return StatusCode::NOT_FOUND.into_response();
            };
            let mut h = HeaderMap::new();
            h.insert("content-length", n.into());
            h.insert(
                "etag",
                "\"00000000000000000000000000000000\"".parse().unwrap(),
            );
            (StatusCode::OK, h, Body::from(s.blob.slice(..n))).into_response()
        }
        _ => StatusCode::OK.into_response(),
    }
}

async fn start_sink(max: usize) -> SocketAddr {
    let s = Sink {
        sizes: Arc::default(),
        blob: Bytes::from(vec![0x5a; max]),
    };
    let app = axum::Router::new().fallback(sink).with_state(s);
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
    addr
}

/// One object size: how many objects, how many requests in flight.
struct Case {
    size: usize,
    count: usize,
    concurrency: usize,
}

fn body(size: usize, seed: u64) -> Bytes {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut v = vec![0u8; size];
    for c in v.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let b = x.to_le_bytes();
        c.copy_from_slice(&b[..c.len()]);
    }
    Bytes::from(v)
}

/// `(seconds for all PUTs, seconds for all GETs)`; GETs check the size of what comes back.
async fn run(c: &Client, bucket: &str, case: &Case, tag: &str) -> (f64, f64) {
    // Distinct contents per object (no deduplication helps the store).
    let bodies: Vec<Bytes> = (0..case.count.min(8))
        .map(|i| body(case.size, i as u64 + 1))
        .collect();
    let key = |i: usize| format!("{tag}/{}/obj-{i:05}", case.size);
    let t = Instant::now();
    futures::stream::iter(0..case.count)
        .map(|i| {
            let mut b = bodies[i % bodies.len()].to_vec();
            let n = b.len().min(8);
            b[..n].copy_from_slice(&(i as u64).to_le_bytes()[..n]);
            let req = c
                .put_object()
                .bucket(bucket)
                .key(key(i))
                .body(ByteStream::from(b));
            async move { req.send().await.expect("put") }
        })
        .buffer_unordered(case.concurrency)
        .for_each(|_| async {})
        .await;
    let put = t.elapsed().as_secs_f64();
    let t = Instant::now();
    futures::stream::iter(0..case.count)
        .map(|i| {
            let req = c.get_object().bucket(bucket).key(key(i));
            async move {
                let o = req.send().await.expect("get");
                let mut n = 0usize;
                let mut s = o.body;
                while let Some(b) = s.next().await {
                    n += b.expect("get body").len();
                }
                n
            }
        })
        .buffer_unordered(case.concurrency)
        .for_each(|n| {
            assert_eq!(n, case.size, "short GET");
            async {}
        })
        .await;
    (put, t.elapsed().as_secs_f64())
}

fn human(size: usize) -> String {
    if size >= MIB {
        format!("{} MiB", size / MIB)
    } else {
        format!("{} KiB", size / KIB)
    }
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo test --benches` asks for the list of benchmarks.
    }
    let scale: f64 = std::env::var("S3_BENCH_SCALE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1.0);
    let n = |k: usize| ((k as f64 * scale).ceil() as usize).max(1);
    let cases = [
        Case {
            size: 4 * KIB,
            count: n(2000),
            concurrency: 16,
        },
        Case {
            size: MIB,
            count: n(256),
            concurrency: 8,
        },
        Case {
            size: 256 * MIB,
            count: n(4),
            concurrency: 2,
        },
    ];
    let cluster = Cluster::start(ClusterOptions {
        nodes: 7,
        capacity_gb: 40.0,
        ..Default::default()
    });
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let sink_addr = start_sink(256 * MIB).await;
        let sink = client(&format!("http://{sink_addr}"));
        let cyx = client(&cluster.http_url());
        cyx.create_bucket().bucket("bench").send().await.unwrap();
        println!(
            "| object size | objects x in flight | PUT: CyxCloud | PUT: sink (ceiling) | PUT ratio | GET: CyxCloud | GET: sink (ceiling) | GET ratio |"
        );
        println!("|---|---|---|---|---|---|---|---|");
        for case in &cases {
            let (sp, sg) = run(&sink, "bench", case, "sink").await;
            let (cp, cg) = run(&cyx, "bench", case, "cyx").await;
            let rate = |secs: f64| {
                let ops = case.count as f64 / secs;
                let mib = ops * case.size as f64 / MIB as f64;
                format!("{ops:.0} op/s, {mib:.1} MiB/s")
            };
            println!(
                "| {} | {} x {} | {} | {} | {:.0} % | {} | {} | {:.0} % |",
                human(case.size),
                case.count,
                case.concurrency,
                rate(cp),
                rate(sp),
                100.0 * sp / cp,
                rate(cg),
                rate(sg),
                100.0 * sg / cg,
            );
        }
    });
}
