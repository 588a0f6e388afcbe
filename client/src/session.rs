//! A connected, authenticated client: one gRPC channel to the gateway's Control API (bearer
//! token renewed in the background before it expires) and a pool of channels to nodes.

use std::sync::{Arc, RwLock, Weak};
use std::time::Duration;

use cyxcloud_proto::v1;
use cyxcloud_proto::v1::control_client::ControlClient;
use cyxcloud_proto::v1::maintenance_client::MaintenanceClient;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};

use crate::config::ClientConfig;
use crate::error::{ClientError, Result};
use crate::nodes::NodePool;

/// Adds `authorization: Bearer <token>` to every Control call.
#[derive(Clone)]
pub struct Auth(Arc<RwLock<Token>>);

#[derive(Debug, Clone, Default)]
struct Token {
    value: String,
    /// Unix seconds; the gateway refuses the token from this second on.
    expires_at: i64,
}

impl Token {
    /// How long until the token should be renewed: after three quarters of what is left of
    /// its life, so a call made just before renewal still arrives in time.
    fn renew_in(&self) -> Duration {
        let left_ms = (self.expires_at * 1000 - unix_now_ms()).max(0) as u64;
        Duration::from_millis(left_ms * 3 / 4)
    }
}

impl tonic::service::Interceptor for Auth {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        let t = self.0.read().unwrap_or_else(|e| e.into_inner());
        if !t.value.is_empty() {
            let v = format!("Bearer {}", t.value)
                .parse()
                .map_err(|_| tonic::Status::internal("token is not valid ASCII"))?;
            req.metadata_mut().insert("authorization", v);
        }
        Ok(req)
    }
}

pub type Control = ControlClient<InterceptedService<Channel, Auth>>;
/// The gateway's Maintenance API (admins and the rebalancer).
pub type Maintenance = MaintenanceClient<InterceptedService<Channel, Auth>>;

/// A CyxCloud client. Cheap to clone; clones share connections.
#[derive(Clone)]
pub struct Client {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) cfg: ClientConfig,
    channel: Channel,
    token: Arc<RwLock<Token>>,
    pub(crate) nodes: NodePool,
    pub(crate) user_id: String,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("gateway", &self.inner.cfg.gateway)
            .finish()
    }
}

/// Builds a channel with settings suited to large streams (big HTTP/2 windows); an `https://`
/// address is verified against `ca_pem`.
pub(crate) fn endpoint(
    address: &str,
    connect_timeout: Duration,
    ca_pem: Option<&[u8]>,
) -> Result<Endpoint> {
    let ep = cyxcloud_proto::channel::endpoint(address, ca_pem).map_err(ClientError::BadAddress)?;
    Ok(ep
        .connect_timeout(connect_timeout)
        .tcp_nodelay(true)
        .initial_stream_window_size(8 << 20)
        .initial_connection_window_size(32 << 20)
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_while_idle(true))
}

impl Client {
    /// Connects to the gateway and authenticates with the access key and secret.
    pub async fn connect(cfg: ClientConfig) -> Result<Client> {
        let channel = endpoint(&cfg.gateway, cfg.connect_timeout, cfg.ca_pem.as_deref())?
            .connect()
            .await
            .map_err(|e| ClientError::Connect {
                address: cfg.gateway.clone(),
                reason: source_chain(&e),
            })?;
        let token = Arc::new(RwLock::new(Token::default()));
        let (user_id, node_ca) = authenticate(&channel, &cfg, &token).await?;
        // Nodes are certified by the cluster CA, which the (verified) gateway names.
        let node_ca = node_ca.or_else(|| cfg.ca_pem.clone());
        let nodes = NodePool::new(cfg.connect_timeout, cfg.max_shard_streams, node_ca);
        let inner = Arc::new(Inner {
            cfg,
            channel,
            token,
            nodes,
            user_id,
        });
        tokio::spawn(renew_tokens(Arc::downgrade(&inner)));
        Ok(Client { inner })
    }

    pub fn config(&self) -> &ClientConfig {
        &self.inner.cfg
    }

    pub fn user_id(&self) -> &str {
        &self.inner.user_id
    }

    pub fn nodes(&self) -> &NodePool {
        &self.inner.nodes
    }

    /// The Control API client (namespace operations and everything else).
    pub fn control(&self) -> Control {
        ControlClient::with_interceptor(self.inner.channel.clone(), Auth(self.inner.token.clone()))
            .max_decoding_message_size(cyxcloud_proto::MAX_MESSAGE_BYTES)
            .max_encoding_message_size(cyxcloud_proto::MAX_MESSAGE_BYTES)
    }

    /// The Maintenance API client (admin credentials only).
    pub fn maintenance(&self) -> Maintenance {
        MaintenanceClient::with_interceptor(
            self.inner.channel.clone(),
            Auth(self.inner.token.clone()),
        )
        .max_decoding_message_size(cyxcloud_proto::MAX_MESSAGE_BYTES)
        .max_encoding_message_size(cyxcloud_proto::MAX_MESSAGE_BYTES)
    }

    /// Re-authenticates when the bearer token expires within five minutes. Long-running
    /// clients (mountd, syncd) call this periodically; uploads and downloads call it first.
    pub async fn refresh_token(&self) -> Result<()> {
        let expires_at = self
            .inner
            .token
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .expires_at;
        if expires_at - unix_now() < 300 {
            authenticate(&self.inner.channel, &self.inner.cfg, &self.inner.token).await?;
        }
        Ok(())
    }
}

/// Renews the client's bearer token before it expires, for as long as the client lives: every
/// call of a long-running upload, download or mount carries a valid token, whatever the
/// token's lifetime and however long the caller waits between calls.
async fn renew_tokens(inner: Weak<Inner>) {
    let mut failures = 0u32;
    loop {
        let wait = {
            let Some(i) = inner.upgrade() else { return };
            let t = i.token.read().unwrap_or_else(|e| e.into_inner());
            if failures == 0 {
                // Never in a busy loop, even when the clocks disagree on the expiry.
                t.renew_in().max(Duration::from_millis(500))
            } else {
                // The gateway did not answer: try again soon, backing off to 16 s.
                Duration::from_millis(250 << failures.min(6))
            }
        };
        tokio::time::sleep(wait).await;
        let Some(i) = inner.upgrade() else { return };
        match authenticate(&i.channel, &i.cfg, &i.token).await {
            Ok(_) => failures = 0,
            Err(e) => {
                failures += 1;
                tracing::debug!(error = %e, "bearer token renewal failed; retrying");
            }
        }
    }
}

/// Authenticates; returns the user id and the cluster CA the gateway names, if any.
async fn authenticate(
    channel: &Channel,
    cfg: &ClientConfig,
    token: &Arc<RwLock<Token>>,
) -> Result<(String, Option<Vec<u8>>)> {
    let mut c = ControlClient::new(channel.clone());
    let r = c
        .authenticate(v1::AuthenticateRequest {
            access_key: cfg.access_key.clone(),
            secret_key: cfg.secret_key.clone(),
        })
        .await
        .map_err(|s| ClientError::rpc("authenticate", s))?
        .into_inner();
    *token.write().unwrap_or_else(|e| e.into_inner()) = Token {
        value: r.token,
        expires_at: r.expires_at,
    };
    let node_ca = (!r.node_ca.is_empty()).then(|| r.node_ca.into_bytes());
    Ok((r.user_id, node_ca))
}

fn unix_now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

pub(crate) fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// The full cause chain of a transport error (tonic's top-level message is just "transport
/// error").
pub(crate) fn source_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}
