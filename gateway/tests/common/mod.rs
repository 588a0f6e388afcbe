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
