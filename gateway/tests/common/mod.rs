//! Shared test fixtures: a gateway state on SQLite or on a private PostgreSQL database.

#![allow(dead_code)]

use cyxcloud_gateway::accounts::Caller;
use cyxcloud_gateway::{Config, Gateway};
use cyxcloud_testkit::services::{PgDb, RedisHandle};
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

pub struct Fixture {
    pub gw: Gateway,
    pub admin: Caller,
    pub alice: Caller,
    pub bob: Caller,
    pub config: Config,
    pub dir: tempfile::TempDir,
    pub pg: Option<PgDb>,
    pub stop: CancellationToken,
}

impl Drop for Fixture {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// A config for `backend` in a fresh temp dir (and database).
pub fn config(backend: Backend) -> (Config, tempfile::TempDir, Option<PgDb>) {
    let dir = tempfile::tempdir().unwrap();
    let mut c = Config {
        data_dir: dir.path().join("gw").display().to_string(),
        host: "127.0.0.1".into(),
        port: 0,
        grpc_port: 0,
        ..Default::default()
    };
    c.storage.verify_commits = false;
    c.storage.chunk_size_bytes = 1 << 20;
    c.nodes.heartbeat_interval_ms = 200;
    c.nodes.join_token = JOIN_TOKEN.into();
    // In-process fixtures call the model directly; the TLS paths run between processes.
    c.tls.enabled = false;
    let pg = match backend {
        Backend::Sqlite => None,
        Backend::Postgres => {
            let db = cyxcloud_testkit::services::postgres_db();
            c.database_url = db.url.clone();
            Some(db)
        }
    };
    (c, dir, pg)
}

pub async fn fixture(backend: Backend) -> Fixture {
    fixture_with(backend, |_| {}).await
}

pub async fn fixture_with(backend: Backend, tweak: impl FnOnce(&mut Config)) -> Fixture {
    let (mut config, dir, pg) = config(backend);
    tweak(&mut config);
    let stop = CancellationToken::new();
    let (gw, _) = cyxcloud_gateway::open(&config, None, stop.clone())
        .await
        .unwrap();
    let a = gw
        .accounts
        .create_user("alice", None, None, false, 0)
        .await
        .unwrap();
    let b = gw
        .accounts
        .create_user("bob", None, None, false, 0)
        .await
        .unwrap();
    Fixture {
        gw,
        admin: Caller {
            user_id: "admin-test".into(),
            admin: true,
        },
        alice: Caller {
            user_id: a.id,
            admin: false,
        },
        bob: Caller {
            user_id: b.id,
            admin: false,
        },
        config,
        dir,
        pg,
        stop,
    }
}

/// A second gateway state on the same store (another "process" sharing the database).
pub async fn second(f: &Fixture) -> Gateway {
    let (gw, _) = cyxcloud_gateway::open(&f.config, None, f.stop.clone())
        .await
        .unwrap();
    gw
}

pub fn redis() -> RedisHandle {
    cyxcloud_testkit::services::redis()
}

/// Deterministic pseudo-random numbers for workloads.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    pub fn pick<'a, T>(&mut self, v: &'a [T]) -> &'a T {
        &v[self.below(v.len() as u64) as usize]
    }
}

/// Generates `sqlite` and `postgres` variants of async test functions taking a [`Backend`].
#[macro_export]
macro_rules! both_backends {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    super::$name($crate::common::Backend::Sqlite).await
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    super::$name($crate::common::Backend::Postgres).await
                }
            )*
        }
    };
}

/// Polls `f` (every 20 ms) until it returns `Some`, or panics after 20 s naming `what`.
pub async fn eventually<T, F, Fut>(what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// The join token every fixture's gateway is configured with.
pub const JOIN_TOKEN: &str = "test-join-token-0123456789";

/// The identity key of a test node (deterministic per node id).
pub fn node_key(id: &str) -> cyxcloud_core::identity::NodeKey {
    cyxcloud_core::identity::NodeKey::from_seed(*blake3::hash(id.as_bytes()).as_bytes())
}

/// A signing time newer than every one used before in this test process.
pub fn signed_at() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static LAST: AtomicU64 = AtomicU64::new(0);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let prev = LAST
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |l| Some(now.max(l + 1)))
        .unwrap();
    now.max(prev + 1)
}

/// Registrations and heartbeats as a real node sends them: signed with the node's key, the
/// first one carrying the join token.
pub trait SignedRegistry {
    async fn register_signed(
        &self,
        req: &cyxcloud_proto::v1::RegisterRequest,
        api_key: Option<&str>,
    ) -> cyxcloud_gateway::error::Result<cyxcloud_proto::v1::RegisterResponse>;
    async fn heartbeat_signed(
        &self,
        req: &cyxcloud_proto::v1::HeartbeatRequest,
        api_key: Option<&str>,
    ) -> cyxcloud_gateway::error::Result<cyxcloud_proto::v1::HeartbeatResponse>;
}

impl SignedRegistry for cyxcloud_gateway::registry::Registry {
    async fn register_signed(
        &self,
        req: &cyxcloud_proto::v1::RegisterRequest,
        api_key: Option<&str>,
    ) -> cyxcloud_gateway::error::Result<cyxcloud_proto::v1::RegisterResponse> {
        use cyxcloud_proto::signed::Signed;
        let key = node_key(&req.node_id);
        let mut req = req.clone();
        req.public_key = key.public_key().to_vec();
        if req.join_token.is_empty() {
            req.join_token = JOIN_TOKEN.into();
        }
        req.sign(&key, signed_at());
        self.register(&req, api_key, None).await
    }

    async fn heartbeat_signed(
        &self,
        req: &cyxcloud_proto::v1::HeartbeatRequest,
        api_key: Option<&str>,
    ) -> cyxcloud_gateway::error::Result<cyxcloud_proto::v1::HeartbeatResponse> {
        use cyxcloud_proto::signed::Signed;
        let mut req = req.clone();
        req.sign(&node_key(&req.node_id), signed_at());
        self.heartbeat(&req, api_key, None).await
    }
}
