//! A real tonic NodeRegistry server inside the test process, standing in for the gateway's:
//! it records registrations and heartbeats, hands out queued commands, and answers with the
//! desired state the test sets.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use cyxcloud_proto::v1::node_registry_server::{NodeRegistry, NodeRegistryServer};
use cyxcloud_proto::v1::{
    CommandResult, HeartbeatRequest, HeartbeatResponse, NodeCommand, NodeState, RegisterRequest,
    RegisterResponse, node_command,
};
use cyxcloud_proto::{ErrorCode, status};
use tokio::sync::oneshot;
use tonic::{Request, Response, Status};

/// Everything the fake gateway saw and will answer.
#[derive(Debug, Default)]
pub struct GwState {
    pub registrations: Vec<(RegisterRequest, Option<String>)>,
    pub heartbeats: Vec<(HeartbeatRequest, Option<String>)>,
    pub results: Vec<CommandResult>,
    /// Commands handed to a node with its next heartbeat.
    pub commands: HashMap<String, Vec<NodeCommand>>,
    pub desired: HashMap<String, NodeState>,
    /// When set, Register/Heartbeat need `authorization: Bearer <key>`.
    pub require_api_key: Option<String>,
    known: HashSet<String>,
}

impl GwState {
    pub fn registered(&self, node: &str) -> usize {
        self.registrations
            .iter()
            .filter(|(r, _)| r.node_id == node)
            .count()
    }

    pub fn heartbeats_of(&self, node: &str) -> Vec<&HeartbeatRequest> {
        self.heartbeats
            .iter()
            .filter(|(h, _)| h.node_id == node)
            .map(|(h, _)| h)
            .collect()
    }

    pub fn result(&self, id: &str) -> Option<&CommandResult> {
        self.results.iter().find(|r| r.command_id == id)
    }
}

#[derive(Clone)]
struct Svc {
    state: Arc<Mutex<GwState>>,
}

fn auth<T>(r: &Request<T>) -> Option<String> {
    r.metadata()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

impl Svc {
    fn check(&self, a: &Option<String>) -> Result<(), Status> {
        let st = self.state.lock().unwrap();
        match &st.require_api_key {
            Some(k) if a.as_deref() != Some(&format!("Bearer {k}")) => Err(status(
                ErrorCode::Unauthenticated,
                "a valid machine API key is required",
            )),
            _ => Ok(()),
        }
    }
}

#[tonic::async_trait]
impl NodeRegistry for Svc {
    async fn register(
        &self,
        request: Request<RegisterRequest>,
    ) -> Result<Response<RegisterResponse>, Status> {
        let a = auth(&request);
        self.check(&a)?;
        let r = request.into_inner();
        let mut st = self.state.lock().unwrap();
        st.known.insert(r.node_id.clone());
        st.registrations.push((r, a));
        Ok(Response::new(RegisterResponse {
            token_public_keys: vec![super::signer().public_key().to_vec()],
            heartbeat_interval_secs: 30,
            gateway_id: "fake-gateway".into(),
            heartbeat_interval_ms: 150,
            ..Default::default()
        }))
    }

    async fn heartbeat(
        &self,
        request: Request<HeartbeatRequest>,
    ) -> Result<Response<HeartbeatResponse>, Status> {
        let a = auth(&request);
        self.check(&a)?;
        let h = request.into_inner();
        let mut st = self.state.lock().unwrap();
        let node = h.node_id.clone();
        if !st.known.contains(&node) {
            return Ok(Response::new(HeartbeatResponse {
                reregister: true,
                ..Default::default()
            }));
        }
        st.results.extend(h.results.iter().cloned());
        let (epoch, seq) = (h.put_epoch, h.put_seq);
        st.heartbeats.push((h, a));
        let mut commands = st.commands.remove(&node).unwrap_or_default();
        // Like the real gateway, a delete is bound to the heartbeat that delivers it, unless
        // the test bound it itself.
        for c in &mut commands {
            if let Some(node_command::Command::Delete(d)) = &mut c.command
                && d.put_epoch == 0
            {
                (d.put_epoch, d.put_seq) = (epoch, seq);
            }
        }
        let desired = st.desired.get(&node).copied().unwrap_or(NodeState::Online);
        Ok(Response::new(HeartbeatResponse {
            commands,
            reregister: false,
            desired_state: desired as i32,
        }))
    }
}

/// A running fake gateway.
pub struct FakeGateway {
    pub addr: SocketAddr,
    pub state: Arc<Mutex<GwState>>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl FakeGateway {
    pub async fn start() -> FakeGateway {
        let addr = SocketAddr::from(([127, 0, 0, 1], cyxcloud_testkit::free_port()));
        Self::start_on(addr, Arc::default()).await
    }

    /// Serves on `addr` with `state` (a restarted gateway gets a fresh state).
    pub async fn start_on(addr: SocketAddr, state: Arc<Mutex<GwState>>) -> FakeGateway {
        let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
        let (tx, rx) = oneshot::channel::<()>();
        let svc = Svc {
            state: state.clone(),
        };
        let task = tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .add_service(NodeRegistryServer::new(svc))
                .serve_with_incoming_shutdown(
                    tokio_stream::wrappers::TcpListenerStream::new(listener),
                    async move {
                        let _ = rx.await;
                    },
                )
                .await;
        });
        FakeGateway {
            addr,
            state,
            stop: Some(tx),
            task: Some(task),
        }
    }

    pub fn state(&self) -> MutexGuard<'_, GwState> {
        self.state.lock().unwrap()
    }

    /// Stops serving and closes every connection.
    pub async fn stop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(mut t) = self.task.take() {
            // Graceful shutdown waits for the node's open HTTP/2 connection; the test wants the
            // gateway gone now, so abort whatever is left after a moment.
            if tokio::time::timeout(Duration::from_secs(2), &mut t)
                .await
                .is_err()
            {
                t.abort();
                let _ = t.await;
            }
        }
    }
}
