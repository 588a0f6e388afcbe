//! `cyxcloud-gateway`: the control plane. It owns all metadata (accounts, buckets, the
//! namespace, file layouts, the node registry, the change journal) in SQLite or PostgreSQL
//! through one code path ([`db`]), serves the `Control` and `NodeRegistry` gRPC services
//! ([`control`], [`registry_rpc`]) and the HTTP port ([`http`]: `/health`, `/metrics`, `/ws`,
//! `/api/...`; the S3 API merges its routes there through [`run`]'s `extra_routes`).
//!
//! Must not depend on: the node daemon, mountd, syncd (nothing depends on a daemon crate).

pub mod accounts;
pub mod audits;
pub mod cache;
pub mod config;
pub mod control;
pub mod db;
pub mod error;
pub mod http;
pub mod journal;
pub mod keys;
pub mod layout;
pub mod leases;
pub mod maintenance;
pub mod metrics;
pub mod namespace;
pub mod placement;
pub mod registry;
pub mod registry_rpc;
pub mod s3;
pub mod state;
pub mod tls;
pub mod writes;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use cyxcloud_core::codec::CodecId;
use cyxcloud_core::placement::Limits;
use cyxcloud_daemon::Shutdown;
use cyxcloud_proto::v1;
use tokio::task::JoinHandle;

pub use config::Config;
pub use error::{Error, Result};
pub use state::Gateway;

use accounts::{Accounts, NewKey};
use cache::Cache;
use db::Db;
use keys::ClusterKeys;
use namespace::Namespace;
use registry::{Registry, RegistryConfig};
use writes::{WriteConfig, Writes};

/// A running gateway.
#[derive(Debug)]
pub struct Running {
    pub http_addr: SocketAddr,
    pub grpc_addr: SocketAddr,
    pub gateway: Gateway,
    /// The admin credential created at this start (print it once), if any.
    pub new_admin_key: Option<NewKey>,
    pub tasks: Vec<JoinHandle<()>>,
}

/// Opens the store and builds the shared state (binds nothing, starts nothing).
/// `admin_key` is the `(access key, secret)` from the environment, if set.
pub async fn open(
    config: &Config,
    admin_key: Option<(&str, &str)>,
    stop: tokio_util::sync::CancellationToken,
) -> Result<(Gateway, Option<NewKey>)> {
    config.validate()?;
    let data_dir = config.data_dir();
    std::fs::create_dir_all(&data_dir).map_err(|e| Error::io(&data_dir, e))?;
    let keys = Arc::new(ClusterKeys::load_or_create(&config.cluster_key_path())?);
    let db = Db::open(&config.database(), config.db_max_connections).await?;
    keys.bind_to(&db).await?;
    let cache_ttl = Duration::from_secs(config.cache.ttl_secs.max(1));
    let cache = if config.redis_url.is_empty() {
        Cache::local(config.cache.entries as usize, cache_ttl)
    } else {
        Cache::redis(&config.redis_url, &config.redis_prefix, cache_ttl).await?
    };
    db.set_cache(cache.clone());
    let accounts = Accounts::new(
        db.clone(),
        keys.clone(),
        config.auth.token_ttl_secs,
        config.auth.jwt_ttl_secs,
    );
    let new_admin_key = accounts.bootstrap_admin(admin_key).await?;
    let tls = if config.tls.enabled {
        Some(Arc::new(tls::GatewayTls::open(config)?))
    } else {
        None
    };
    let signer = keys.token_signer();
    let gateway_id = format!("gw-{}", keys::random_id(10)?.to_lowercase());
    let registry = Registry::new(
        db.clone(),
        RegistryConfig {
            heartbeat_interval_ms: config.nodes.heartbeat_interval_ms,
            missed_heartbeats: config.nodes.missed_heartbeats,
            require_machine_keys: config.nodes.require_machine_keys,
            latency_probe_ms: config.nodes.latency_probe_ms,
            gateway_id: gateway_id.clone(),
            join_token_hash: config
                .join_token()?
                .map(|t| *blake3::hash(t.as_bytes()).as_bytes()),
        },
        signer.clone(),
        accounts.clone(),
        tls.clone(),
    );
    let s = &config.storage;
    let writes = Writes::new(
        db.clone(),
        WriteConfig {
            chunk_size: s.chunk_size_bytes as u32,
            profile: config.profile()?,
            codec: CodecId::from_u8(s.codec as u8).map_err(|e| Error::Config(e.to_string()))?,
            inline_threshold: s.inline_threshold_bytes as u32,
            success_threshold: s.success_threshold,
            write_ttl_secs: config.writes.write_ttl_secs,
            token_ttl_secs: config.writes.token_ttl_secs,
            verify_commits: s.verify_commits,
            limits: Limits {
                per_node: s.max_shards_per_node as usize,
                per_rack: s.max_shards_per_rack as usize,
                per_datacenter: s.max_shards_per_datacenter as usize,
            },
        },
        registry.clone(),
        signer.clone(),
        tls.clone(),
    );
    let metrics = metrics::Metrics::new();
    let workers = cyxcloud_daemon::Workers::new(stop.clone());
    workers.register_metrics(&mut metrics.registry.lock().unwrap_or_else(|e| e.into_inner()));
    let gw = Gateway {
        ns: Namespace::new(db.clone()),
        leases: leases::Leases::new(db.clone()),
        db,
        accounts,
        registry,
        writes,
        signer,
        metrics,
        workers,
        cache,
        config: Arc::new(config.clone()),
        gateway_id,
        repair_rate: Arc::default(),
        stop,
        tls,
    };
    Ok((gw, new_admin_key))
}

/// Starts the gateway's background workers (`/api/workers` and `cyxcloud status -v` list
/// them): the journal tailer, planner statistics, the node sweep and latency probe, write
/// expiry and the metrics refresh.
pub fn start_workers(gw: &Gateway) -> Vec<tokio::task::JoinHandle<()>> {
    use cyxcloud_daemon::{Periodic, WorkerOptions};
    let c = &gw.config;
    let quick = WorkerOptions {
        // Cross-gateway cache invalidation must not stall for minutes after a hiccup.
        max_backoff: Duration::from_secs(5),
        ..WorkerOptions::default()
    };
    let mut tasks = vec![
        gw.workers.spawn(
            journal::Tailer::new(
                gw.db.clone(),
                Duration::from_millis(c.journal.poll_ms),
                c.journal.retention_events,
                c.journal.retention_secs,
            ),
            quick.clone(),
        ),
        gw.workers.spawn(gw.db.analyzer(), WorkerOptions::default()),
    ];
    let r = gw.registry.clone();
    tasks.push(gw.workers.spawn(
        Periodic::new("node-sweep", r.sweep_interval(), move || {
            let r = r.clone();
            async move {
                r.sweep().await?;
                Ok::<(), cyxcloud_daemon::worker::WorkError>(())
            }
        }),
        quick.clone(),
    ));
    let r = gw.registry.clone();
    tasks.push(gw.workers.spawn(
        Periodic::new("latency-probe", r.probe_interval(), move || {
            let r = r.clone();
            async move {
                r.probe_latency().await;
                Ok::<(), cyxcloud_daemon::worker::WorkError>(())
            }
        }),
        WorkerOptions::default(),
    ));
    let w = gw.writes.clone();
    tasks.push(gw.workers.spawn(
        Periodic::new(
            "write-expiry",
            Duration::from_secs(c.writes.expiry_check_secs.max(1)),
            move || {
                let w = w.clone();
                async move {
                    w.expire().await?;
                    Ok::<(), cyxcloud_daemon::worker::WorkError>(())
                }
            },
        ),
        WorkerOptions::default(),
    ));
    let db = gw.db.clone();
    tasks.push(gw.workers.spawn(
        Periodic::new("repair-grant-expiry", Duration::from_secs(30), move || {
            let db = db.clone();
            async move {
                maintenance::expire_grants(&db).await?;
                Ok::<(), cyxcloud_daemon::worker::WorkError>(())
            }
        }),
        WorkerOptions::default(),
    ));
    let (m, db) = (gw.metrics.clone(), gw.db.clone());
    tasks.push(gw.workers.spawn(
        Periodic::new("metrics-refresh", Duration::from_secs(5), move || {
            let (m, db) = (m.clone(), db.clone());
            async move {
                m.refresh_recorded(&db).await?;
                Ok::<(), cyxcloud_daemon::worker::WorkError>(())
            }
        }),
        quick,
    ));
    tasks
}

/// Opens the store, binds the HTTP and gRPC ports and serves until `shutdown`.
/// `extra_routes` (the S3 API) are merged into the HTTP router.
pub async fn run(
    config: Config,
    shutdown: Shutdown,
    admin_key: Option<(&str, &str)>,
    extra_routes: Option<axum::Router>,
) -> Result<Running> {
    let (gw, new_admin_key) = open(&config, admin_key, shutdown.token()).await?;
    if extra_routes.is_some() {
        // Before any port serves: the staging bucket's journal event is never interleaved
        // with the first client's changes.
        s3::store::ensure_staging_bucket(&gw).await?;
    }
    let bind = |port: u16| -> Result<std::net::TcpListener> {
        let addr: SocketAddr = format!("{}:{port}", config.host)
            .parse()
            .map_err(|e| Error::Config(format!("bind address: {e}")))?;
        let l = std::net::TcpListener::bind(addr)
            .map_err(|e| Error::Config(format!("cannot bind {addr}: {e}")))?;
        l.set_nonblocking(true)
            .map_err(|e| Error::io(addr.to_string(), e))?;
        Ok(l)
    };
    let http = tokio::net::TcpListener::from_std(bind(config.port)?)
        .map_err(|e| Error::io("http listener", e))?;
    let grpc = tokio::net::TcpListener::from_std(bind(config.grpc_port)?)
        .map_err(|e| Error::io("grpc listener", e))?;
    let http_addr = http
        .local_addr()
        .map_err(|e| Error::io("http listener", e))?;
    let grpc_addr = grpc
        .local_addr()
        .map_err(|e| Error::io("grpc listener", e))?;
    let mut tasks = Vec::new();

    let scheme = if gw.tls.is_some() { "https" } else { "http" };
    let mut app = http::router(gw.clone());
    // Clients that only know the HTTP URL (the CLI's --gateway, mountd) find the Control API
    // here.
    let info = serde_json::json!({
        "service": "cyxcloud-gateway",
        "version": env!("CARGO_PKG_VERSION"),
        "gateway_id": gw.gateway_id,
        "grpc_address": format!("{scheme}://{grpc_addr}"),
        "s3": extra_routes.is_some(),
    });
    app = app.route(
        "/api/info",
        axum::routing::get(move || {
            let info = info.clone();
            async move { axum::Json(info) }
        }),
    );
    if let Some(extra) = extra_routes {
        app = app.merge(extra);
    }
    let sd = shutdown.clone();
    enum HttpListener {
        Plain(tokio::net::TcpListener),
        Tls(cyxcloud_daemon::tls::TlsListener),
    }
    let http = match &gw.tls {
        // HTTP/1.1 only, as S3: SigV4 signs the `host` header, which HTTP/2 does not carry.
        Some(t) => HttpListener::Tls(
            t.server
                .with_alpn(&[b"http/1.1"])
                .listen(http)
                .map_err(|e| Error::io("https listener", e))?,
        ),
        None => HttpListener::Plain(http),
    };
    tasks.push(tokio::spawn(async move {
        let r = match http {
            HttpListener::Tls(l) => {
                axum::serve(l, app)
                    .with_graceful_shutdown(async move { sd.wait().await })
                    .await
            }
            HttpListener::Plain(l) => {
                axum::serve(l, app)
                    .with_graceful_shutdown(async move { sd.wait().await })
                    .await
            }
        };
        if let Err(e) = r {
            tracing::error!(error = %e, "HTTP server failed");
        }
    }));
    if let Some(t) = gw.tls.clone() {
        tasks.push(tokio::spawn(reload_on_sighup(t, shutdown.clone())));
    }

    let control = v1::control_server::ControlServer::new(control::ControlService::new(gw.clone()))
        .max_decoding_message_size(cyxcloud_proto::MAX_MESSAGE_BYTES)
        .max_encoding_message_size(cyxcloud_proto::MAX_MESSAGE_BYTES);
    let nodes = v1::node_registry_server::NodeRegistryServer::new(
        registry_rpc::RegistryService::new(gw.clone()),
    );
    let maintenance = v1::maintenance_server::MaintenanceServer::new(
        maintenance::MaintenanceService::new(gw.clone()),
    )
    .max_decoding_message_size(cyxcloud_proto::MAX_MESSAGE_BYTES)
    .max_encoding_message_size(cyxcloud_proto::MAX_MESSAGE_BYTES);
    let sd = shutdown.clone();
    let router = tonic::transport::Server::builder()
        .add_service(control)
        .add_service(nodes)
        .add_service(maintenance);
    let grpc_task = match &gw.tls {
        Some(t) => {
            let incoming = t
                .server
                .incoming(grpc)
                .map_err(|e| Error::io("grpc TLS listener", e))?;
            tokio::spawn(async move {
                let r = router
                    .serve_with_incoming_shutdown(incoming, async move { sd.wait().await })
                    .await;
                if let Err(e) = r {
                    tracing::error!(error = %e, "gRPC server failed");
                }
            })
        }
        None => tokio::spawn(async move {
            let r = router
                .serve_with_incoming_shutdown(
                    // Small control calls must not wait for Nagle + delayed ACK (~40 ms each).
                    tokio_stream::StreamExt::map(
                        tokio_stream::wrappers::TcpListenerStream::new(grpc),
                        |s| {
                            s.inspect(|s| {
                                let _ = s.set_nodelay(true);
                            })
                        },
                    ),
                    async move { sd.wait().await },
                )
                .await;
            if let Err(e) = r {
                tracing::error!(error = %e, "gRPC server failed");
            }
        }),
    };
    tasks.push(grpc_task);

    tasks.extend(start_workers(&gw));
    tracing::info!(
        http = %http_addr,
        grpc = %grpc_addr,
        database = gw.db.backend().name(),
        cache = if gw.cache.is_local() { "local" } else { "redis" },
        gateway_id = %gw.gateway_id,
        "gateway serving"
    );
    Ok(Running {
        http_addr,
        grpc_addr,
        gateway: gw,
        new_admin_key,
        tasks,
    })
}

/// Re-reads the operator's certificate files on SIGHUP (a failed read keeps the old ones).
async fn reload_on_sighup(tls: Arc<tls::GatewayTls>, shutdown: Shutdown) {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut hup) = signal(SignalKind::hangup()) else {
        tracing::warn!("cannot listen for SIGHUP: TLS certificates reload only at restart");
        return;
    };
    loop {
        tokio::select! {
            _ = shutdown.wait() => return,
            r = hup.recv() => if r.is_none() { return },
        }
        match tls.reload() {
            Ok(true) => tracing::info!("SIGHUP: TLS certificate reloaded"),
            Ok(false) => tracing::info!(
                "SIGHUP: the TLS certificate comes from the cluster CA; nothing to reload"
            ),
            Err(e) => {
                tracing::error!(error = %e, "SIGHUP: TLS certificate not reloaded; the old one stays")
            }
        }
    }
}
