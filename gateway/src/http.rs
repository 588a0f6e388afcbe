//! The HTTP port: `/health` and `/metrics` (`cyxcloud_daemon::ops`), the `/ws` journal feed,
//! and the operator account API under `/api`. The S3 API (its own module) merges its routes
//! into [`router`]'s result; bucket names that collide with these routes are refused by the
//! namespace (`namespace::RESERVED_BUCKETS`).
//!
//! `/ws` protocol (JSON text frames): the client sends
//! `{"type":"subscribe","topics":["file.*","node.*"]}` (optional `"since": <seq>` to replay the
//! journal from a position, optional `"token"`, optional `"bucket"`); the server answers
//! `{"type":"subscribed",...}` then one `{"type":"event","topic":"file.created",...}` per change.
//! Topics: `file.created|updated|deleted|renamed`, `node.online|offline|draining|drained`,
//! `repair.started|done|abandoned`, and `resync`. Without a bearer token (header, `?token=` or
//! the message) only `node.*` and `repair.*` are sent.

use std::sync::Arc;

use axum::Router;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use cyxcloud_proto::{ErrorCode, v1};
use serde::Deserialize;
use serde_json::json;

use crate::Gateway;
use crate::accounts::{Caller, MachineInfo};
use crate::error::Error;

/// `/health`, `/metrics`, `/ws`, `/api/...`.
pub fn router(gw: Gateway) -> Router {
    let health_gw = gw.clone();
    let health: cyxcloud_daemon::ops::HealthFn = Arc::new(move || {
        let ok = health_gw.metrics_db_ok();
        let mut details = serde_json::Map::new();
        details.insert("service".into(), json!("cyxcloud-gateway"));
        details.insert("version".into(), json!(env!("CARGO_PKG_VERSION")));
        details.insert("gateway_id".into(), json!(health_gw.gateway_id));
        details.insert("database".into(), json!(health_gw.db.backend().name()));
        details.insert(
            "cache".into(),
            json!(if health_gw.cache.is_local() {
                "local"
            } else {
                "redis"
            }),
        );
        details.insert(
            "journal_seq".into(),
            json!(*health_gw.db.journal_head().borrow()),
        );
        cyxcloud_daemon::Health {
            healthy: ok,
            state: if ok {
                "ok".into()
            } else {
                "database unreachable".into()
            },
            details,
        }
    });
    let ops =
        cyxcloud_daemon::ops::router(gw.metrics.registry.clone(), health, "/metrics", "/health");
    Router::new()
        .route("/ws", get(ws))
        .route("/api/auth/login", post(login))
        .route("/api/machines/register", post(register_machine))
        .route("/api/workers", get(workers))
        .with_state(gw)
        .merge(ops)
}

/// An HTTP error with a JSON body `{"error": ...}`.
pub struct ApiError(pub Error);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = match self.0.code() {
            ErrorCode::NotFound => StatusCode::NOT_FOUND,
            ErrorCode::AlreadyExists | ErrorCode::Conflict => StatusCode::CONFLICT,
            ErrorCode::Unauthenticated | ErrorCode::Expired => StatusCode::UNAUTHORIZED,
            ErrorCode::PermissionDenied => StatusCode::FORBIDDEN,
            ErrorCode::InvalidArgument | ErrorCode::InvalidName => StatusCode::BAD_REQUEST,
            ErrorCode::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        let msg = match &self.0 {
            Error::Unauthenticated(m) => m.clone(),
            e => e.to_string(),
        };
        (status, axum::Json(json!({ "error": msg }))).into_response()
    }
}

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        ApiError(e)
    }
}

#[derive(Deserialize)]
struct LoginBody {
    email: String,
    password: String,
}

async fn login(
    State(gw): State<Gateway>,
    body: Result<axum::Json<LoginBody>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, ApiError> {
    let axum::Json(b) = body.map_err(|e| Error::invalid(e.body_text()))?;
    let (token, user) = gw.accounts.login(&b.email, &b.password).await?;
    Ok(axum::Json(json!({
        "token": token,
        "user": { "id": user.id, "email": user.email, "name": user.name },
    }))
    .into_response())
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let v = headers.get("authorization")?.to_str().ok()?;
    v.strip_prefix("Bearer ")
        .or_else(|| v.strip_prefix("bearer "))
        .map(str::trim)
}

/// `GET /api/workers`: this gateway's background workers, for an admin (the bearer token of
/// the control API's `Authenticate`).
async fn workers(State(gw): State<Gateway>, headers: HeaderMap) -> Result<Response, ApiError> {
    let token =
        bearer(&headers).ok_or_else(|| Error::Unauthenticated("missing bearer token".into()))?;
    let caller = gw.accounts.verify(token)?;
    if !caller.admin {
        return Err(ApiError(Error::PermissionDenied(
            "only an admin may list the gateway's workers".into(),
        )));
    }
    Ok(axum::Json(json!({
        "gateway_id": gw.gateway_id,
        "workers": gw.workers.list(),
    }))
    .into_response())
}

async fn register_machine(
    State(gw): State<Gateway>,
    headers: HeaderMap,
    body: Result<axum::Json<MachineInfo>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, ApiError> {
    let jwt =
        bearer(&headers).ok_or_else(|| Error::Unauthenticated("missing bearer token".into()))?;
    let owner = gw.accounts.verify_jwt(jwt)?;
    let axum::Json(info) = body.map_err(|e| Error::invalid(e.body_text()))?;
    let (m, api_key) = gw.accounts.register_machine(&owner, &info).await?;
    tracing::info!(machine = %m.id, node = %m.node_id, owner = %m.owner_id, "machine registered");
    Ok(axum::Json(json!({
        "machine_id": m.id,
        "api_key": api_key,
        "owner_id": m.owner_id,
    }))
    .into_response())
}

#[derive(Deserialize, Default)]
struct WsQuery {
    token: Option<String>,
}

async fn ws(
    State(gw): State<Gateway>,
    headers: HeaderMap,
    Query(q): Query<WsQuery>,
    up: WebSocketUpgrade,
) -> Response {
    let token = bearer(&headers).map(String::from).or(q.token);
    up.on_upgrade(move |socket| ws_session(gw, socket, token))
}

#[derive(Deserialize)]
struct Subscribe {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    topics: Vec<String>,
    since: Option<u64>,
    token: Option<String>,
    #[serde(default)]
    bucket: String,
}

fn topic_matches(patterns: &[String], topic: &str) -> bool {
    topic == "resync"
        || patterns.iter().any(|p| {
            p == "*"
                || p == topic
                || p.strip_suffix(".*")
                    .is_some_and(|pre| topic.strip_prefix(pre).is_some_and(|r| r.starts_with('.')))
        })
}

/// The `/ws` topic and JSON of a journal event.
pub fn event_json(ev: &v1::ChangeEvent) -> (String, serde_json::Value) {
    let kind = v1::ChangeKind::try_from(ev.kind).unwrap_or(v1::ChangeKind::Unspecified);
    let topic = match kind {
        v1::ChangeKind::Create => "file.created".to_string(),
        v1::ChangeKind::Update => "file.updated".to_string(),
        v1::ChangeKind::Delete => "file.deleted".to_string(),
        v1::ChangeKind::Rename => "file.renamed".to_string(),
        v1::ChangeKind::Resync => "resync".to_string(),
        v1::ChangeKind::Node => format!(
            "node.{}",
            crate::metrics::state_name(
                v1::NodeState::try_from(ev.node_state).unwrap_or(v1::NodeState::Unspecified)
            )
        ),
        v1::ChangeKind::Repair => format!(
            "repair.{}",
            ev.repair.as_ref().map_or("unknown", |r| r.phase.as_str())
        ),
        v1::ChangeKind::Unspecified => "unknown".to_string(),
    };
    let entry = ev.entry.as_ref().map(|e| {
        json!({
            "id": e.id,
            "parent_id": e.parent_id,
            "name": e.name,
            "kind": match v1::EntryKind::try_from(e.kind) {
                Ok(v1::EntryKind::File) => "file",
                Ok(v1::EntryKind::Directory) => "directory",
                Ok(v1::EntryKind::Symlink) => "symlink",
                Ok(v1::EntryKind::Bucket) => "bucket",
                _ => "unknown",
            },
            "size": e.size,
            "version": e.version,
            "etag": e.etag,
            "mtime_ns": e.mtime_ns,
        })
    });
    let v = json!({
        "type": "event",
        "topic": topic,
        "seq": ev.seq,
        "time_ns": ev.time_ns,
        "bucket": ev.bucket,
        "path": ev.path,
        "old_path": ev.old_path,
        "entry_id": ev.entry_id,
        "entry": entry,
        "node_id": ev.node_id,
        "repair": ev.repair.as_ref().map(|r| json!({
            "chunk": hex::encode(&r.chunk_key),
            "shards": r.shards,
            "bytes": r.bytes,
            "holder": r.holder,
        })),
    });
    (topic, v)
}

async fn ws_session(gw: Gateway, mut socket: WebSocket, header_token: Option<String>) {
    // Wait for the subscribe message.
    let sub = loop {
        let Some(Ok(msg)) = socket.recv().await else {
            return;
        };
        let text = match msg {
            Message::Text(t) => t.to_string(),
            Message::Close(_) => return,
            _ => continue,
        };
        match serde_json::from_str::<Subscribe>(&text) {
            Ok(s) if s.kind == "subscribe" => break s,
            _ => {
                let e = json!({"type": "error", "error": "expected {\"type\":\"subscribe\",\"topics\":[...]}"});
                if socket
                    .send(Message::Text(e.to_string().into()))
                    .await
                    .is_err()
                {
                    return;
                }
            }
        }
    };
    let token = sub.token.clone().or(header_token);
    let caller: Option<Caller> = match token.as_deref().map(|t| gw.accounts.verify(t)) {
        Some(Ok(c)) => Some(c),
        Some(Err(e)) => {
            let _ = socket
                .send(Message::Text(
                    json!({"type": "error", "error": e.to_string()})
                        .to_string()
                        .into(),
                ))
                .await;
            return;
        }
        None => None,
    };
    let filter = match &caller {
        Some(c) => match gw.watch_filter(c, &sub.bucket).await {
            Ok(f) => f,
            Err(e) => {
                let _ = socket
                    .send(Message::Text(
                        json!({"type": "error", "error": e.to_string()})
                            .to_string()
                            .into(),
                    ))
                    .await;
                return;
            }
        },
        // Node and repair events only (their owner is "").
        None => crate::journal::Filter::Owner(String::new()),
    };
    let topics: Vec<String> = if sub.topics.is_empty() {
        vec!["*".into()]
    } else {
        sub.topics.clone()
    };
    let head = *gw.db.journal_head().borrow();
    let since = sub.since.unwrap_or(head);
    let ack = json!({"type": "subscribed", "topics": topics, "seq": head, "since": since, "authenticated": caller.is_some()});
    if socket
        .send(Message::Text(ack.to_string().into()))
        .await
        .is_err()
    {
        return;
    }
    let mut rx = crate::journal::watch(gw.db.clone(), since, filter, gw.stop.child_token());
    loop {
        tokio::select! {
            ev = rx.recv() => {
                let Some(ev) = ev else { return };
                let ev = match ev {
                    Ok(ev) => ev,
                    Err(e) => {
                        let _ = socket.send(Message::Text(json!({"type": "error", "error": e.to_string()}).to_string().into())).await;
                        return;
                    }
                };
                let (topic, v) = event_json(&ev);
                let anonymous_file = caller.is_none() && topic.starts_with("file.");
                if anonymous_file || !topic_matches(&topics, &topic) {
                    continue;
                }
                if socket.send(Message::Text(v.to_string().into())).await.is_err() {
                    return;
                }
            }
            msg = socket.recv() => {
                match msg {
                    Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return,
                    _ => {}
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_match_by_prefix() {
        let p = vec!["file.*".to_string()];
        assert!(topic_matches(&p, "file.created"));
        assert!(!topic_matches(&p, "node.online"));
        assert!(!topic_matches(&p, "filex.y"));
        assert!(topic_matches(&p, "resync"));
        assert!(topic_matches(&["*".to_string()], "node.offline"));
    }
}
