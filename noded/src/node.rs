//! Wiring: claims the data dir, opens the store, binds the listeners and runs every service
//! of the node until it is stopped, drained, or told to exit now.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use cyxcloud_daemon::{Health, Shutdown, ops};
use cyxcloud_proto::v1::Topology;
use cyxcloud_proto::v1::chunk_service_server::ChunkServiceServer;

use crate::config::{Config, parse_public_key};
use crate::error::{Error, Result};
use crate::lifecycle::{self, Lifecycle, State};
use crate::metadata::NodeMetadata;
use crate::metrics::Metrics;
use crate::service::ChunkSvc;
use crate::store::memory::MemoryStore;
use crate::store::rocks::{RocksOptions, RocksStore};
use crate::store::{ShardStore, Shards};
use crate::tokens::Tokens;

/// How [`run`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// Stopped on request (standalone SIGTERM) after in-flight requests finished.
    Stopped,
    /// Drained after SIGTERM: the gateway holds nothing here any more.
    Drained,
    /// Second termination signal: the caller must exit the process at once.
    Immediate,
}

/// Inputs besides the config.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    pub login: crate::login::LoginInput,
}

fn open_store(cfg: &Config) -> Result<Box<dyn ShardStore>> {
    Ok(match cfg.storage.backend.as_str() {
        "memory" => Box::new(MemoryStore::new()),
        _ => Box::new(RocksStore::open(
            &cfg.data_dir().join("rocksdb"),
            &RocksOptions {
                cache_bytes: (cfg.storage.cache_size_mb as usize) << 20,
                sync: true,
            },
        )?),
    })
}

async fn bind(what: &'static str, addr: SocketAddr) -> Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| Error::Bind {
            what,
            addr: addr.to_string(),
            source,
        })
}

/// Runs the node. `cfg` must be validated ([`Config::load`] does it).
pub async fn run(cfg: Config, opts: RunOptions) -> Result<Exit> {
    tracing::info!(config = %cfg.redacted(), "CyxCloud Storage Node starting");
    let data_dir: PathBuf = cfg.data_dir();
    let mut meta = NodeMetadata::claim(&data_dir, &cfg.node.id)?;
    let node_id = meta.node_id.clone();
    let name = if cfg.node.name.is_empty() {
        node_id.clone()
    } else {
        cfg.node.name.clone()
    };
    let life = Lifecycle::new();
    let shutdown = Shutdown::new();
    // Signal handlers first, so a SIGTERM is never lost or fatal once the node answers.
    // The first SIGTERM drains a registered node (the gateway moves its shards away, then says
    // DRAINED); a standalone node has nobody to drain to and stops gracefully.
    let drain_on_signal = cfg.central.register;
    {
        let (life, sd) = (life.clone(), shutdown.clone());
        shutdown.listen_for_signals(Some(Box::new(move || {
            if drain_on_signal {
                life.drain_and_exit();
                if life.state() == State::Drained {
                    sd.trigger();
                }
            } else {
                sd.trigger();
            }
        })));
    }
    let control = lifecycle::serve_control(&data_dir, life.clone())?;

    let mut shards = Shards::open(
        open_store(&cfg)?,
        cfg.storage.compression,
        cfg.capacity_bytes(),
    )?;
    if cfg.storage.backend != "memory" {
        shards = shards.with_disk_reserve(&data_dir, cfg.storage.disk_reserve_mb << 20);
    }
    let shards = Arc::new(shards);
    let usage = shards.usage();
    tracing::info!(
        node_id = %node_id,
        backend = shards.backend_name(),
        shards = usage.shard_count,
        used_bytes = usage.used_bytes,
        capacity_bytes = usage.capacity_bytes,
        "shard store open"
    );
    let tokens = Arc::new(Tokens::new(&node_id));
    for k in &cfg.central.token_public_keys {
        tokens.trust(&parse_public_key(k).expect("validated key"))?;
    }
    let metrics = Metrics::new();
    metrics.observe_usage(usage);

    let credentials = crate::login::ensure(&cfg, &data_dir, &node_id, &opts.login).await?;

    let topology = Topology {
        region: cfg.node.region.clone(),
        datacenter: cfg.node.datacenter.clone(),
        rack: cfg.node.rack.clone(),
    };

    // Listeners.
    let grpc_listener = bind("gRPC", cfg.grpc_bind()).await?;
    let grpc_addr = grpc_listener
        .local_addr()
        .map_err(|e| Error::io("cannot read address of", "gRPC listener", e))?;
    let public_grpc = cfg.public_grpc_address(grpc_addr);
    let p2p = crate::p2p::start(crate::p2p::P2pConfig {
        data_dir: data_dir.clone(),
        listen: cfg.p2p_listen(),
        bootstrap: cfg.network.bootstrap_peers.clone(),
        record: crate::p2p::NodeRecord {
            node_id: node_id.clone(),
            grpc_address: public_grpc.clone(),
            peer_id: String::new(),
            region: topology.region.clone(),
            datacenter: topology.datacenter.clone(),
            rack: topology.rack.clone(),
        },
    })
    .await?;
    meta.refresh(
        &name,
        shards.backend_name(),
        cfg.capacity_bytes(),
        &public_grpc,
        &p2p.peer_id().to_string(),
    );
    meta.write(&data_dir)?;

    let key = crate::metadata::load_or_create_key(&data_dir)?;
    let tls = if cfg.tls_enabled() {
        Some(Arc::new(crate::tls::NodeTls::open(
            &data_dir,
            &key,
            cfg.central_ca()?,
        )?))
    } else {
        None
    };
    let gc = cfg.storage.gc_rate_mb_per_sec as f64 * 1e6;
    let gc_rate = cyxcloud_daemon::RateLimit::new(gc, gc);
    let svc = ChunkSvc {
        shards: shards.clone(),
        tokens: tokens.clone(),
        lifecycle: life.clone(),
        metrics: metrics.clone(),
        topology: topology.clone(),
        executor: crate::commands::Executor {
            shards: shards.clone(),
            tokens: tokens.clone(),
            lifecycle: life.clone(),
            metrics: metrics.clone(),
            p2p: p2p.clone(),
            gc_rate: gc_rate.clone(),
            tls: tls.clone(),
        },
    };
    let grpc_shutdown = shutdown.clone();
    let router = tonic::transport::Server::builder()
        .initial_stream_window_size(crate::net::STREAM_WINDOW)
        .initial_connection_window_size(crate::net::CONNECTION_WINDOW)
        .max_frame_size(crate::net::MAX_FRAME)
        .add_service(
            ChunkServiceServer::new(svc)
                .max_decoding_message_size(cyxcloud_proto::MAX_MESSAGE_BYTES)
                .max_encoding_message_size(cyxcloud_proto::MAX_MESSAGE_BYTES),
        );
    let grpc = match &tls {
        Some(t) => {
            let incoming = crate::net::incoming_tls(grpc_listener, &t.server, metrics.clone())
                .map_err(|e| Error::io("cannot listen on", grpc_addr.to_string(), e))?;
            tokio::spawn(async move {
                router
                    .serve_with_incoming_shutdown(
                        incoming,
                        async move { grpc_shutdown.wait().await },
                    )
                    .await
            })
        }
        None => tokio::spawn(router.serve_with_incoming_shutdown(
            crate::net::incoming(grpc_listener, metrics.clone()),
            async move { grpc_shutdown.wait().await },
        )),
    };
    tracing::info!(addr = %grpc_addr, public = %public_grpc, "gRPC ChunkService listening");

    let registered = Arc::new(AtomicBool::new(false));
    let ops_server = if cfg.metrics.enabled {
        let health = {
            let (life, shards, registered, node_id) = (
                life.clone(),
                shards.clone(),
                registered.clone(),
                node_id.clone(),
            );
            let register = cfg.central.register;
            let p2p = p2p.clone();
            Arc::new(move || {
                let u = shards.usage();
                let mut details = serde_json::Map::new();
                details.insert("node_id".into(), node_id.clone().into());
                details.insert("used_bytes".into(), u.used_bytes.into());
                details.insert("capacity_bytes".into(), u.capacity_bytes.into());
                details.insert("shard_count".into(), u.shard_count.into());
                details.insert(
                    "registered".into(),
                    (register && registered.load(Ordering::Relaxed)).into(),
                );
                details.insert("peers".into(), p2p.connected_peers().into());
                Health {
                    healthy: true,
                    state: life.state().as_str().to_string(),
                    details,
                }
            })
        };
        let router = ops::router(
            metrics.registry.clone(),
            health,
            &cfg.metrics.metrics_path,
            &cfg.metrics.health_path,
        )
        .merge(crate::p2p::routes(p2p.clone()));
        let listener_addr = cfg.metrics_bind();
        // Bind first so a taken port is a clear startup error.
        let probe = bind("metrics", listener_addr).await?;
        drop(probe);
        let s = ops::serve(listener_addr, router, shutdown.clone())
            .await
            .map_err(|source| Error::Bind {
                what: "metrics",
                addr: listener_addr.to_string(),
                source,
            })?;
        tracing::info!(addr = %s.addr, "metrics and health listening");
        Some(s)
    } else {
        None
    };

    if cfg.storage.scrub_period_secs > 0 {
        tokio::spawn(crate::scrub::run(
            shards.clone(),
            metrics.clone(),
            Duration::from_secs(cfg.storage.scrub_period_secs),
            shutdown.clone(),
        ));
    }
    let registry = if cfg.central.register {
        Some(tokio::spawn(crate::registry_client::run(
            crate::registry_client::Client {
                cfg: cfg.clone(),
                node_id: node_id.clone(),
                name: name.clone(),
                grpc_address: public_grpc.clone(),
                topology: topology.clone(),
                credentials: credentials.clone(),
                shards: shards.clone(),
                tokens: tokens.clone(),
                lifecycle: life.clone(),
                metrics: metrics.clone(),
                registered: registered.clone(),
                p2p: p2p.clone(),
                gc_rate: gc_rate.clone(),
                peer_id: p2p.peer_id().to_string(),
                p2p_addresses: p2p.listen_addresses(),
                key: key.clone(),
                tls: tls.clone(),
                join_token: cfg.join_token()?,
                signed_at: Default::default(),
            },
            shutdown.clone(),
        )))
    } else {
        tracing::info!("standalone: not registering with a gateway ([central] register = false)");
        None
    };

    tracing::info!(node_id = %node_id, "node running");

    let mut states = life.subscribe();
    let exit = loop {
        tokio::select! {
            _ = shutdown.wait_now() => break Exit::Immediate,
            _ = shutdown.wait() => break Exit::Stopped,
            changed = states.changed() => {
                if changed.is_err() {
                    break Exit::Stopped;
                }
                let s = *states.borrow_and_update();
                if s == State::Drained && life.exits_when_drained() {
                    break Exit::Drained;
                }
            }
        }
    };
    if exit == Exit::Immediate {
        return Ok(exit);
    }
    tracing::info!(?exit, "stopping: finishing in-flight requests");
    shutdown.trigger();
    let grace = async {
        let _ = grpc.await;
        if let Some(s) = ops_server {
            let _ = s.task.await;
        }
        if let Some(r) = registry {
            let _ = r.await;
        }
    };
    tokio::select! {
        _ = grace => {}
        _ = shutdown.wait_now() => return Ok(Exit::Immediate),
        _ = tokio::time::sleep(Duration::from_secs(30)) => {
            tracing::warn!("in-flight requests did not finish within 30 s");
        }
    }
    p2p.stop();
    control.abort();
    let _ = std::fs::remove_file(lifecycle::socket_path(&data_dir));
    tracing::info!("node stopped");
    Ok(exit)
}
