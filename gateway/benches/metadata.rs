//! Metadata operations per second through the Control gRPC API over loopback, on SQLite and on
//! PostgreSQL: create (an empty file, as `create(2)` in the mount does), stat (GetAttr by id and
//! by path), readdir of a 10 000-entry directory, rename, and creates from 16 concurrent clients,
//! beside a baseline row: the same gRPC round trip refused before any query.
//!
//! `cargo bench -p cyxcloud-gateway --bench metadata` starts a gateway in this process on
//! loopback ports (SQLite in a temp dir, then PostgreSQL: a private server from cyxcloud-testkit,
//! or `CYXCLOUD_BENCH_DATABASE_URL`), and prints one markdown table row per operation.
//! `BENCH_N` scales the operation counts (default 2000); `BENCH_BACKENDS=postgres` (or
//! `sqlite`) runs one backend.

use std::time::{Duration, Instant};

use cyxcloud_daemon::Shutdown;
use cyxcloud_gateway::Config;
use cyxcloud_proto::v1;
use cyxcloud_proto::v1::control_client::ControlClient;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Clone)]
struct Bearer(tonic::metadata::MetadataValue<tonic::metadata::Ascii>);

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        req.metadata_mut().insert("authorization", self.0.clone());
        Ok(req)
    }
}

type Ctl = ControlClient<InterceptedService<Channel, Bearer>>;

const AK: &str = "BENCHADMIN";
const SK: &str = "bench-secret-0123456789";

fn path(b: &str, p: &str) -> v1::EntryRef {
    v1::EntryRef {
        r#ref: Some(v1::entry_ref::Ref::Path(v1::BucketPath {
            bucket: b.into(),
            path: p.into(),
        })),
    }
}

fn id(i: u64) -> v1::EntryRef {
    v1::EntryRef {
        r#ref: Some(v1::entry_ref::Ref::Id(i)),
    }
}

struct Stats {
    samples: Vec<Duration>,
    wall: Duration,
}

impl Stats {
    fn row(&self, backend: &str, op: &str) -> String {
        let mut s = self.samples.clone();
        s.sort();
        let q = |p: f64| s[((s.len() - 1) as f64 * p) as usize];
        format!(
            "| {backend} | {op} | {} | {:.0} | {:.0} | {:.0} | {:.0} |",
            s.len(),
            q(0.5).as_secs_f64() * 1e6,
            q(0.99).as_secs_f64() * 1e6,
            s.iter().sum::<Duration>().as_secs_f64() * 1e6 / s.len() as f64,
            s.len() as f64 / self.wall.as_secs_f64(),
        )
    }
}

async fn timed<F, Fut>(n: usize, mut f: F) -> Stats
where
    F: FnMut(usize) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let mut samples = Vec::with_capacity(n);
    let start = Instant::now();
    for i in 0..n {
        let t = Instant::now();
        f(i).await;
        samples.push(t.elapsed());
    }
    Stats {
        samples,
        wall: start.elapsed(),
    }
}

/// The database's own round trip, measured in the same run beside the gRPC floor: `SELECT 1`
/// and the inode + name join GetAttr by id runs, on one connection of this process, without
/// gRPC. So a GetAttr row reads as gRPC floor + this + the gateway's own work.
async fn pg_floor(url: &str, n: usize, ids: &[u64]) -> Vec<(String, Stats)> {
    use sqlx::Connection;
    let conn = std::sync::Arc::new(tokio::sync::Mutex::new(
        sqlx::PgConnection::connect(url).await.unwrap(),
    ));
    let select1 = timed(n, |_| {
        let c = conn.clone();
        async move {
            let mut c = c.lock().await;
            let _: (i32,) = sqlx::query_as("SELECT 1").fetch_one(&mut *c).await.unwrap();
        }
    })
    .await;
    let by_id = timed(n, |i| {
        let c = conn.clone();
        let e = ids[i % ids.len()] as i64;
        async move {
            let mut c = c.lock().await;
            sqlx::query(
                "SELECT i.*, d.parent_id, d.name FROM inodes i \
                 JOIN dentries d ON d.inode_id = i.id WHERE i.id = $1",
            )
            .bind(e)
            .fetch_one(&mut *c)
            .await
            .unwrap();
        }
    })
    .await;
    vec![
        ("baseline: PostgreSQL round trip (SELECT 1)".into(), select1),
        ("baseline: GetAttr's query alone".into(), by_id),
    ]
}

/// One GetAttr by id that must succeed.
async fn stat_by_id(mut c: Ctl, e: u64) {
    c.get_attr(v1::GetAttrRequest { entry: Some(id(e)) })
        .await
        .unwrap();
}

/// `clients` tasks at once, each timing `per` calls of `f(client, call)`.
async fn concurrent<F, Fut>(clients: usize, per: usize, f: F) -> Stats
where
    F: Fn(usize, usize) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let start = Instant::now();
    let tasks: Vec<_> = (0..clients)
        .map(|w| {
            let f = f.clone();
            tokio::spawn(async move {
                let mut lat = Vec::with_capacity(per);
                for i in 0..per {
                    let t = Instant::now();
                    f(w, i).await;
                    lat.push(t.elapsed());
                }
                lat
            })
        })
        .collect();
    let mut samples = Vec::new();
    for t in tasks {
        samples.extend(t.await.unwrap());
    }
    Stats {
        samples,
        wall: start.elapsed(),
    }
}

/// The gateway's own count and total seconds of GetAttr calls, from its `/metrics`.
fn server_getattr(addr: std::net::SocketAddr) -> (f64, f64) {
    use std::io::{Read, Write};
    let mut t = std::net::TcpStream::connect(addr).unwrap();
    t.write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut body = String::new();
    t.read_to_string(&mut body).unwrap();
    let mut sum = 0.0;
    let mut count = 0.0;
    for l in body.lines() {
        if l.contains("request_duration_seconds_sum") && l.contains("GetAttr") {
            sum = l.rsplit(' ').next().unwrap().parse().unwrap();
        }
        if l.contains("request_duration_seconds_count") && l.contains("GetAttr") {
            count = l.rsplit(' ').next().unwrap().parse().unwrap();
        }
    }
    (sum, count)
}

async fn bench(backend: &str, database_url: Option<String>, n: usize) -> Vec<String> {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config {
        host: "127.0.0.1".into(),
        port: 0,
        grpc_port: 0,
        data_dir: dir.path().join("gw").display().to_string(),
        database_url: database_url.clone().unwrap_or_default(),
        db_max_connections: 32,
        ..Default::default()
    };
    config.nodes.heartbeat_interval_ms = 600_000;
    // The metadata path itself, as before TLS (its cost is measured in the TLS benchmark).
    config.tls.enabled = false;
    let shutdown = Shutdown::new();
    let running = cyxcloud_gateway::run(config, shutdown.clone(), Some((AK, SK)), None)
        .await
        .unwrap();
    let url = format!("http://{}", running.grpc_addr);
    let ch = tonic::transport::Endpoint::from_shared(url)
        .unwrap()
        .tcp_nodelay(true)
        .connect()
        .await
        .unwrap();
    let token = ControlClient::new(ch.clone())
        .authenticate(v1::AuthenticateRequest {
            access_key: AK.into(),
            secret_key: SK.into(),
        })
        .await
        .unwrap()
        .into_inner()
        .token;
    let bearer = Bearer(format!("Bearer {token}").parse().unwrap());
    let ctl: Ctl = ControlClient::with_interceptor(ch.clone(), bearer.clone());
    let mut c = ctl.clone();
    let b = c
        .create_bucket(v1::CreateBucketRequest {
            name: "bench".into(),
            public_read: false,
        })
        .await
        .unwrap()
        .into_inner();
    let d = c
        .mkdir(v1::MkdirRequest {
            parent_id: b.id,
            name: "d".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let mut rows = Vec::new();

    // Baseline: the gRPC round trip itself. GetAttr without an entry is authenticated, routed
    // and refused before any query, so this is what every row below pays before the database.
    let floor = timed(n, |_| {
        let mut c = ctl.clone();
        async move {
            let r = c.get_attr(v1::GetAttrRequest { entry: None }).await;
            assert_eq!(r.unwrap_err().code(), tonic::Code::InvalidArgument);
        }
    })
    .await;
    rows.push(floor.row(backend, "baseline: gRPC round trip, no query"));

    // create: empty files in one directory.
    let create = timed(n, |i| {
        let mut c = ctl.clone();
        async move {
            c.write_inline(v1::WriteInlineRequest {
                target: Some(path("bench", &format!("d/f{i}"))),
                if_absent: true,
                ..Default::default()
            })
            .await
            .unwrap();
        }
    })
    .await;
    rows.push(create.row(backend, "create (WriteInline, empty file)"));
    let ids: Vec<u64> = {
        let mut out = Vec::new();
        let mut after = String::new();
        loop {
            let r = c
                .read_dir(v1::ReadDirRequest {
                    directory: Some(id(d.id)),
                    after: after.clone(),
                    limit: 10_000,
                })
                .await
                .unwrap()
                .into_inner();
            out.extend(r.entries.iter().map(|e| e.id));
            if !r.more {
                break;
            }
            after = r.entries.last().unwrap().name.clone();
        }
        out
    };
    if let Some(url) = &database_url {
        for (op, s) in pg_floor(url, n, &ids).await {
            rows.push(s.row(backend, &op));
        }
    }
    let before = server_getattr(running.http_addr);
    let stat = timed(n * 2, |i| stat_by_id(ctl.clone(), ids[i % ids.len()])).await;
    rows.push(stat.row(backend, "stat (GetAttr by id)"));
    let after = server_getattr(running.http_addr);
    // The same calls as the gateway timed them, from its handler's start to its reply: the
    // rest of the row above is transport.
    rows.push(format!(
        "| {backend} | stat (GetAttr by id): inside the gateway (its /metrics) | {} | | | {:.0} | |",
        after.1 - before.1,
        (after.0 - before.0) / (after.1 - before.1) * 1e6,
    ));
    // stat from 16 concurrent clients: throughput, where every round trip to the database
    // costs CPU that two cores share with the gateway and the clients.
    let per = n * 2 / 16;
    let shared = std::sync::Arc::new(ids.clone());
    let conc = concurrent(16, per, {
        let ctl = ctl.clone();
        move |w, i| stat_by_id(ctl.clone(), shared[(w * per + i) % shared.len()])
    })
    .await;
    rows.push(conc.row(backend, "stat (GetAttr by id), 16 concurrent clients"));
    let stat_p = timed(n, |i| {
        let mut c = ctl.clone();
        async move {
            c.get_attr(v1::GetAttrRequest {
                entry: Some(path("bench", &format!("d/f{}", i % n))),
            })
            .await
            .unwrap();
        }
    })
    .await;
    rows.push(stat_p.row(backend, "stat (GetAttr by bucket/path)"));
    let lookup = timed(n, |i| {
        let mut c = ctl.clone();
        let parent = d.id;
        async move {
            c.lookup(v1::LookupRequest {
                parent_id: parent,
                name: format!("f{}", i % n),
            })
            .await
            .unwrap();
        }
    })
    .await;
    rows.push(lookup.row(backend, "lookup (parent id + name)"));
    let rename = timed(n, |i| {
        let mut c = ctl.clone();
        let parent = d.id;
        async move {
            c.rename(v1::RenameRequest {
                parent_id: parent,
                name: format!("f{i}"),
                new_parent_id: parent,
                new_name: format!("r{i}"),
                flags: 0,
            })
            .await
            .unwrap();
        }
    })
    .await;
    rows.push(rename.row(backend, "rename (same directory)"));

    // readdir of a 10 000-entry directory (filled by 16 concurrent clients: also a throughput
    // figure for concurrent creates).
    let big = c
        .mkdir(v1::MkdirRequest {
            parent_id: b.id,
            name: "big".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let conc = concurrent(16, 10_000 / 16, {
        let ctl = ctl.clone();
        move |w, i| {
            let mut c = ctl.clone();
            let k = w * (10_000 / 16) + i;
            async move {
                c.write_inline(v1::WriteInlineRequest {
                    target: Some(path("bench", &format!("big/e{k:05}"))),
                    ..Default::default()
                })
                .await
                .unwrap();
            }
        }
    })
    .await;
    rows.push(conc.row(backend, "create, 16 concurrent clients"));
    let readdir = timed(10, |_| {
        let mut c = ctl.clone();
        let dir = big.id;
        async move {
            let mut after = String::new();
            let mut total = 0;
            loop {
                let r = c
                    .read_dir(v1::ReadDirRequest {
                        directory: Some(id(dir)),
                        after: after.clone(),
                        limit: 1000,
                    })
                    .await
                    .unwrap()
                    .into_inner();
                total += r.entries.len();
                if !r.more {
                    break;
                }
                after = r.entries.last().unwrap().name.clone();
            }
            assert_eq!(total, 10_000);
        }
    })
    .await;
    rows.push(readdir.row(
        backend,
        "readdir 10 000 entries (pages of 1000), per listing",
    ));
    let list = timed(10, |_| {
        let mut c = ctl.clone();
        async move {
            let mut after = String::new();
            let mut total = 0;
            loop {
                let r = c
                    .list_objects(v1::ListObjectsRequest {
                        bucket: "bench".into(),
                        prefix: "big/".into(),
                        delimiter: "/".into(),
                        start_after: after.clone(),
                        max_keys: 1000,
                    })
                    .await
                    .unwrap()
                    .into_inner();
                // Files only: the explicitly created directory lists as its own `big/` marker.
                total += r
                    .objects
                    .iter()
                    .filter(|e| e.kind == v1::EntryKind::File as i32)
                    .count();
                if !r.truncated {
                    break;
                }
                after = r.next_start_after.clone();
            }
            assert_eq!(total, 10_000);
        }
    })
    .await;
    rows.push(list.row(backend, "S3 list 10 000 keys (pages of 1000), per listing"));
    shutdown.trigger();
    for t in running.tasks {
        let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
    }
    rows
}

fn main() {
    // `cargo bench` passes `--bench`; nothing else to parse.
    let n: usize = std::env::var("BENCH_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000);
    let rt = match std::env::var("BENCH_WORKERS")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        Some(0) => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap(),
        Some(w) => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(w)
            .enable_all()
            .build()
            .unwrap(),
        None => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .unwrap(),
    };
    println!("| backend | operation | ops | median µs | p99 µs | mean µs | ops/s |");
    println!("|---|---|---|---|---|---|---|");
    // `BENCH_BACKENDS=postgres` (or `sqlite`) runs one backend.
    let only = std::env::var("BENCH_BACKENDS").unwrap_or_default();
    if only.is_empty() || only.contains("sqlite") {
        for r in rt.block_on(bench("sqlite", None, n)) {
            println!("{r}");
        }
    }
    if !(only.is_empty() || only.contains("postgres")) {
        return;
    }
    let pg_url = std::env::var("CYXCLOUD_BENCH_DATABASE_URL").ok();
    let (url, _db) = match pg_url {
        Some(u) => (u, None),
        None => {
            let db = cyxcloud_testkit::services::postgres_db();
            (db.url.clone(), Some(db))
        }
    };
    for r in rt.block_on(bench("postgres", Some(url), n)) {
        println!("{r}");
    }
}
