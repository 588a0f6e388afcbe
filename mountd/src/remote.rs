//! The connection to the gateway: connected lazily, reconnected after failures, with a timeout
//! on every control call so a hung gateway cannot hang the mount. Tracks whether the gateway is
//! reachable (offline mode).

use std::future::Future;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use cyxcloud_client::{Client, ClientConfig};

use crate::config::Config;
use crate::error::{Error, Result};

/// Time allowed for one control call.
pub const RPC_TIMEOUT: Duration = Duration::from_secs(15);
/// After a failed connect, calls fail fast for this long before the next attempt.
const RECONNECT_BACKOFF: Duration = Duration::from_millis(500);

pub struct Remote {
    gateway: String,
    grpc_address: Option<String>,
    ca_pem: Option<Vec<u8>>,
    access_key: String,
    secret_key: String,
    client: tokio::sync::Mutex<Option<Client>>,
    last_failure: Mutex<Option<(Instant, String)>>,
    online: AtomicBool,
}

impl std::fmt::Debug for Remote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Remote")
            .field("gateway", &self.gateway)
            .finish_non_exhaustive()
    }
}

impl Remote {
    pub fn new(cfg: &Config) -> Remote {
        Remote {
            gateway: cfg.gateway.clone(),
            grpc_address: cfg.grpc_address.clone(),
            ca_pem: cfg.ca_pem.clone(),
            access_key: cfg.access_key.clone(),
            secret_key: cfg.secret_key.clone(),
            client: tokio::sync::Mutex::new(None),
            last_failure: Mutex::new(None),
            online: AtomicBool::new(false),
        }
    }

    pub fn is_online(&self) -> bool {
        self.online.load(Ordering::Relaxed)
    }

    pub fn gateway(&self) -> &str {
        &self.gateway
    }

    /// The connected client, connecting first if needed.
    pub async fn client(&self) -> Result<Client> {
        let mut g = self.client.lock().await;
        if let Some(c) = g.as_ref() {
            return Ok(c.clone());
        }
        if let Some((at, why)) = self
            .last_failure
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            && at.elapsed() < RECONNECT_BACKOFF
        {
            return Err(Error::Offline(why));
        }
        match self.connect().await {
            Ok(c) => {
                *g = Some(c.clone());
                self.online.store(true, Ordering::Relaxed);
                *self.last_failure.lock().unwrap_or_else(|e| e.into_inner()) = None;
                tracing::info!(gateway = %self.gateway, "connected to the gateway");
                Ok(c)
            }
            Err(e) => {
                self.online.store(false, Ordering::Relaxed);
                let why = e.to_string();
                *self.last_failure.lock().unwrap_or_else(|e| e.into_inner()) =
                    Some((Instant::now(), why.clone()));
                if e.is_unavailable() {
                    Err(Error::Offline(why))
                } else {
                    Err(e)
                }
            }
        }
    }

    async fn connect(&self) -> Result<Client> {
        let address = cyxcloud_client::discover::control_address(
            &self.gateway,
            self.grpc_address.as_deref(),
            self.ca_pem.as_deref(),
        )
        .await
        .map_err(|e| Error::Offline(e.to_string()))?;
        let mut cc = ClientConfig::new(address, &self.access_key, &self.secret_key);
        cc.ca_pem = self.ca_pem.clone();
        cc.connect_timeout = Duration::from_secs(3);
        cc.shard_timeout = Duration::from_secs(30);
        let c = tokio::time::timeout(RPC_TIMEOUT, Client::connect(cc))
            .await
            .map_err(|_| Error::Offline("connecting to the gateway timed out".into()))??;
        Ok(c)
    }

    /// Records the outcome of a call: unreachable gateways drop the connection (the next call
    /// reconnects) and switch to offline mode.
    pub fn observe<T>(&self, r: &Result<T>) {
        match r {
            Ok(_) => self.online.store(true, Ordering::Relaxed),
            Err(e) if e.is_unavailable() => {
                self.online.store(false, Ordering::Relaxed);
                if let Ok(mut g) = self.client.try_lock() {
                    *g = None;
                }
                *self.last_failure.lock().unwrap_or_else(|e| e.into_inner()) =
                    Some((Instant::now(), e.to_string()));
            }
            Err(_) => {}
        }
    }

    /// [`Remote::call`] of one Control RPC: `f` gets the Control API client and returns the
    /// RPC's future; the answer's message comes back.
    pub async fn control<T, F, Fut>(&self, op: &'static str, f: F) -> Result<T>
    where
        F: FnOnce(cyxcloud_client::session::Control) -> Fut,
        Fut: Future<Output = std::result::Result<tonic::Response<T>, tonic::Status>>,
    {
        self.call(op, |c| async move {
            f(c.control()).await.map(tonic::Response::into_inner)
        })
        .await
    }

    /// Runs one control call with the timeout; `f` gets a fresh client handle.
    pub async fn call<T, F, Fut>(&self, op: &'static str, f: F) -> Result<T>
    where
        F: FnOnce(Client) -> Fut,
        Fut: Future<Output = std::result::Result<T, tonic::Status>>,
    {
        let c = self.client().await?;
        if let Err(e) = c.refresh_token().await {
            let e = Error::from(e);
            self.observe::<()>(&Err(Error::Offline(e.to_string())));
            return Err(if e.is_unavailable() {
                Error::Offline(e.to_string())
            } else {
                e
            });
        }
        let r = match tokio::time::timeout(RPC_TIMEOUT, f(c)).await {
            Err(_) => Err(Error::Offline(format!(
                "{op}: no answer within {RPC_TIMEOUT:?}"
            ))),
            Ok(Err(s)) => Err(Error::rpc(op, s)),
            Ok(Ok(v)) => Ok(v),
        };
        self.observe(&r);
        r
    }
}
