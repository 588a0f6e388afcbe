//! The operations HTTP server: Prometheus text on `/metrics` and a JSON state report on
//! `/health`, on its own port (9090 by default for nodes) or merged into a daemon's router.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::registry::Registry;

/// What `/health` reports; `healthy == false` answers 503.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Health {
    pub healthy: bool,
    pub state: String,
    #[serde(flatten)]
    pub details: serde_json::Map<String, serde_json::Value>,
}

pub type HealthFn = Arc<dyn Fn() -> Health + Send + Sync>;

#[derive(Clone)]
struct OpsState {
    registry: Arc<Mutex<Registry>>,
    health: HealthFn,
}

/// Builds the `/metrics` + `/health` routes (paths configurable, as the node's `[metrics]`
/// section allows).
pub fn router(
    registry: Arc<Mutex<Registry>>,
    health: HealthFn,
    metrics_path: &str,
    health_path: &str,
) -> Router {
    Router::new()
        .route(metrics_path, get(metrics))
        .route(health_path, get(health_handler))
        .with_state(OpsState { registry, health })
}

async fn metrics(State(s): State<OpsState>) -> impl IntoResponse {
    let mut body = String::new();
    let encoded = {
        let reg = s.registry.lock().unwrap_or_else(|e| e.into_inner());
        prometheus_client::encoding::text::encode(&mut body, &reg)
    };
    match encoded {
        Ok(()) => (
            StatusCode::OK,
            [(
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            body,
        )
            .into_response(),
        Err(_) => (StatusCode::INTERNAL_SERVER_ERROR, "metrics encoding failed").into_response(),
    }
}

async fn health_handler(State(s): State<OpsState>) -> impl IntoResponse {
    let h = (s.health)();
    let code = if h.healthy {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, axum::Json(h))
}

/// A running ops server.
#[derive(Debug)]
pub struct OpsServer {
    pub addr: SocketAddr,
    pub task: tokio::task::JoinHandle<()>,
}

/// Binds `addr` (port 0 picks a free one) and serves `router` until `shutdown` fires.
pub async fn serve(
    addr: SocketAddr,
    router: Router,
    shutdown: crate::Shutdown,
) -> std::io::Result<OpsServer> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let addr = listener.local_addr()?;
    let task = tokio::spawn(async move {
        let r = axum::serve(listener, router)
            .with_graceful_shutdown(async move { shutdown.wait().await })
            .await;
        if let Err(e) = r {
            tracing::error!(error = %e, "ops server failed");
        }
    });
    Ok(OpsServer { addr, task })
}
