//! A real HTTP account API (axum) implementing the login and machine registration contract.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use serde_json::{Value, json};

pub const EMAIL: &str = "miner@example.com";
pub const PASSWORD: &str = "correct horse";
const JWT: &str = "jwt-test-123";

#[derive(Debug, Default)]
pub struct ApiState {
    pub logins: Vec<Value>,
    pub registrations: Vec<(Value, Option<String>)>,
}

type Shared = Arc<Mutex<ApiState>>;

async fn login(State(s): State<Shared>, Json(body): Json<Value>) -> (StatusCode, Json<Value>) {
    s.lock().unwrap().logins.push(body.clone());
    if body["email"] == EMAIL && body["password"] == PASSWORD {
        (
            StatusCode::OK,
            Json(
                json!({"token": JWT, "user": {"id": "user-1", "email": EMAIL, "name": "John Doe"}}),
            ),
        )
    } else {
        (
            StatusCode::UNAUTHORIZED,
            Json(json!({"error": "invalid email or password"})),
        )
    }
}

async fn register(
    State(s): State<Shared>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> (StatusCode, Json<Value>) {
    let auth = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let mut st = s.lock().unwrap();
    st.registrations.push((body, auth.clone()));
    if auth.as_deref() != Some(&format!("Bearer {JWT}")) {
        return (
            StatusCode::UNAUTHORIZED,
            Json(json!({"error": "invalid token"})),
        );
    }
    let n = st.registrations.len();
    (
        StatusCode::OK,
        Json(
            json!({"machine_id": format!("machine-{n}"), "api_key": format!("api-key-{n}"), "owner_id": "user-1"}),
        ),
    )
}

pub struct AccountApi {
    pub addr: SocketAddr,
    pub state: Shared,
    task: tokio::task::JoinHandle<()>,
}

impl AccountApi {
    pub async fn start() -> AccountApi {
        let state: Shared = Arc::default();
        let app = Router::new()
            .route("/api/auth/login", post(login))
            .route("/api/machines/register", post(register))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        AccountApi { addr, state, task }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for AccountApi {
    fn drop(&mut self) {
        self.task.abort();
    }
}
