//! Cache of hot layouts and directory listings: Redis when `REDIS_URL` is set (shared by all
//! gateways), otherwise in process.
//!
//! Correctness rests on generations, not on timing: every inode has a generation that each
//! commit touching it raises (in the commit path itself, `Db::finish_write`). A reader takes
//! the generation *before* reading the database and stores its result tagged with it; the
//! store is refused when the generation moved meanwhile, and a cached value is only served
//! while its tag equals the current generation. So a value computed from a state older than
//! the latest commit can never be served. With Redis the generation check and the store are
//! one Lua script; values also expire (`ttl`) as a backstop. The in-process cache learns of
//! other gateways' commits through the journal tailer.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};

/// What is cached about an inode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    Layout,
    Listing,
}

impl Kind {
    fn tag(self) -> &'static str {
        match self {
            Kind::Layout => "l",
            Kind::Listing => "d",
        }
    }
}

#[derive(Clone)]
pub enum Cache {
    Local(Arc<Local>),
    Redis(Redis),
}

impl std::fmt::Debug for Cache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Cache::Local(_) => f.write_str("Cache::Local"),
            Cache::Redis(r) => write!(f, "Cache::Redis({})", r.prefix),
        }
    }
}

/// A read ticket: the generation seen before reading the database.
#[derive(Debug, Clone, Copy)]
pub struct Ticket(u64);

impl Cache {
    pub fn local(max_entries: usize, ttl: Duration) -> Cache {
        Cache::Local(Arc::new(Local {
            inner: Mutex::new(LocalInner::default()),
            max_entries: max_entries.max(16),
            ttl,
        }))
    }

    /// Connects to Redis (checked with PING). Keys start with `prefix`.
    pub async fn redis(url: &str, prefix: &str, ttl: Duration) -> Result<Cache> {
        let client =
            redis::Client::open(url).map_err(|e| Error::Config(format!("REDIS_URL: {e}")))?;
        let mut conn = redis::aio::ConnectionManager::new(client)
            .await
            .map_err(|e| Error::Cache(format!("cannot connect to Redis: {e}")))?;
        let _: String = redis::cmd("PING")
            .query_async(&mut conn)
            .await
            .map_err(|e| Error::Cache(format!("Redis PING: {e}")))?;
        Ok(Cache::Redis(Redis {
            conn,
            prefix: prefix.to_string(),
            ttl,
            script: Arc::new(redis::Script::new(PUT_IF_CURRENT)),
        }))
    }

    pub fn is_local(&self) -> bool {
        matches!(self, Cache::Local(_))
    }

    /// Call before reading the database for a value you will [`put`](Self::put).
    pub async fn ticket(&self, id: u64) -> Ticket {
        match self {
            Cache::Local(l) => l.ticket(id),
            Cache::Redis(r) => Ticket(r.generation(id).await.unwrap_or(u64::MAX)),
        }
    }

    pub async fn get(&self, kind: Kind, id: u64) -> Option<Vec<u8>> {
        match self {
            Cache::Local(l) => l.get(kind, id),
            Cache::Redis(r) => r.get(kind, id).await.ok().flatten(),
        }
    }

    /// Stores a value read after `ticket`, unless the inode changed since.
    pub async fn put(&self, kind: Kind, id: u64, ticket: Ticket, value: Vec<u8>) {
        match self {
            Cache::Local(l) => l.put(kind, id, ticket, value),
            Cache::Redis(r) => {
                if ticket.0 != u64::MAX
                    && let Err(e) = r.put(kind, id, ticket, value).await
                {
                    tracing::debug!(error = %e, "cache store failed");
                }
            }
        }
    }

    /// Marks inodes changed: their cached values are never served again.
    pub async fn invalidate(&self, ids: &[u64]) {
        match self {
            Cache::Local(l) => l.invalidate(ids),
            Cache::Redis(r) => {
                if let Err(e) = r.invalidate(ids).await {
                    // A failed invalidation must not leave stale entries served: values carry a
                    // TTL, and we log loudly.
                    tracing::warn!(error = %e, "Redis cache invalidation failed");
                }
            }
        }
    }

    /// Drops everything (local cache only; used when the journal cannot be read).
    pub async fn clear(&self) {
        if let Cache::Local(l) = self {
            let mut g = l.inner.lock().unwrap_or_else(|e| e.into_inner());
            g.values.clear();
            g.epoch += 1;
            g.cleared_at = g.epoch;
        }
    }
}

pub struct Local {
    inner: Mutex<LocalInner>,
    max_entries: usize,
    ttl: Duration,
}

#[derive(Default)]
struct LocalInner {
    epoch: u64,
    cleared_at: u64,
    /// Epoch of each inode's last invalidation (pruned after a while).
    invalidated: HashMap<u64, (u64, Instant)>,
    values: HashMap<(Kind, u64), (u64, Instant, Vec<u8>)>,
}

impl Local {
    fn ticket(&self, _id: u64) -> Ticket {
        let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        g.epoch += 1;
        Ticket(g.epoch)
    }

    fn get(&self, kind: Kind, id: u64) -> Option<Vec<u8>> {
        let g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let (read_epoch, at, v) = g.values.get(&(kind, id))?;
        if at.elapsed() > self.ttl {
            return None;
        }
        if g.invalidated.get(&id).is_some_and(|(e, _)| e >= read_epoch)
            || *read_epoch <= g.cleared_at
        {
            return None;
        }
        Some(v.clone())
    }

    fn put(&self, kind: Kind, id: u64, t: Ticket, value: Vec<u8>) {
        let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if g.invalidated.get(&id).is_some_and(|(e, _)| *e >= t.0) || t.0 <= g.cleared_at {
            return;
        }
        if g.values.len() >= self.max_entries {
            // Cheap eviction: drop expired entries, then half of the rest.
            let ttl = self.ttl;
            g.values.retain(|_, (_, at, _)| at.elapsed() <= ttl);
            if g.values.len() >= self.max_entries {
                let drop: Vec<_> = g
                    .values
                    .keys()
                    .take(self.max_entries / 2)
                    .copied()
                    .collect();
                for k in drop {
                    g.values.remove(&k);
                }
            }
        }
        g.values.insert((kind, id), (t.0, Instant::now(), value));
    }

    fn invalidate(&self, ids: &[u64]) {
        let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        g.epoch += 1;
        let epoch = g.epoch;
        let now = Instant::now();
        for id in ids {
            g.invalidated.insert(*id, (epoch, now));
            g.values.remove(&(Kind::Layout, *id));
            g.values.remove(&(Kind::Listing, *id));
        }
        if g.invalidated.len() > 100_000 {
            // Reads take far less than a minute; older invalidations cannot matter any more
            // (their values were removed above).
            g.invalidated
                .retain(|_, (_, at)| at.elapsed() < Duration::from_secs(60));
        }
    }
}

#[derive(Clone)]
pub struct Redis {
    conn: redis::aio::ConnectionManager,
    prefix: String,
    ttl: Duration,
    script: Arc<redis::Script>,
}

/// KEYS[1] = generation key, KEYS[2] = value key; ARGV[1] = generation read before the
/// database read, ARGV[2] = value, ARGV[3] = ttl ms. Stores `gen || value` only if the
/// generation is unchanged.
const PUT_IF_CURRENT: &str = r#"
local g = redis.call('GET', KEYS[1]) or '0'
if g == ARGV[1] then
  redis.call('SET', KEYS[2], ARGV[1] .. ':' .. ARGV[2], 'PX', ARGV[3])
  return 1
end
return 0
"#;

impl Redis {
    fn gen_key(&self, id: u64) -> String {
        format!("{}g:{id}", self.prefix)
    }
    fn val_key(&self, kind: Kind, id: u64) -> String {
        format!("{}{}:{id}", self.prefix, kind.tag())
    }

    async fn generation(&self, id: u64) -> Result<u64> {
        let mut c = self.conn.clone();
        let g: Option<u64> = redis::cmd("GET")
            .arg(self.gen_key(id))
            .query_async(&mut c)
            .await
            .map_err(|e| Error::Cache(e.to_string()))?;
        Ok(g.unwrap_or(0))
    }

    async fn get(&self, kind: Kind, id: u64) -> Result<Option<Vec<u8>>> {
        let mut c = self.conn.clone();
        let (g, v): (Option<u64>, Option<Vec<u8>>) = redis::cmd("MGET")
            .arg(self.gen_key(id))
            .arg(self.val_key(kind, id))
            .query_async(&mut c)
            .await
            .map_err(|e| Error::Cache(e.to_string()))?;
        let Some(v) = v else { return Ok(None) };
        let Some(colon) = v.iter().position(|b| *b == b':') else {
            return Ok(None);
        };
        let tag: u64 = std::str::from_utf8(&v[..colon])
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(u64::MAX);
        if tag != g.unwrap_or(0) {
            return Ok(None);
        }
        Ok(Some(v[colon + 1..].to_vec()))
    }

    async fn put(&self, kind: Kind, id: u64, t: Ticket, value: Vec<u8>) -> Result<()> {
        let mut c = self.conn.clone();
        let _: i64 = self
            .script
            .key(self.gen_key(id))
            .key(self.val_key(kind, id))
            .arg(t.0.to_string())
            .arg(value)
            .arg(self.ttl.as_millis() as u64)
            .invoke_async(&mut c)
            .await
            .map_err(|e| Error::Cache(e.to_string()))?;
        Ok(())
    }

    async fn invalidate(&self, ids: &[u64]) -> Result<()> {
        let mut c = self.conn.clone();
        let mut p = redis::pipe();
        for id in ids {
            let k = self.gen_key(*id);
            p.cmd("INCR").arg(&k).ignore();
            // Generations outlive the values they guard (values expire after `ttl`).
            p.cmd("PEXPIRE")
                .arg(&k)
                .arg((self.ttl.as_millis() as u64).saturating_mul(6).max(60_000))
                .ignore();
        }
        let _: () = p
            .query_async(&mut c)
            .await
            .map_err(|e| Error::Cache(e.to_string()))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn local_cache_refuses_values_read_before_an_invalidation() {
        let c = Cache::local(100, Duration::from_secs(60));
        let t = c.ticket(7).await;
        c.invalidate(&[7]).await; // a commit lands while we read the database
        c.put(Kind::Layout, 7, t, b"stale".to_vec()).await;
        assert_eq!(c.get(Kind::Layout, 7).await, None);
        let t = c.ticket(7).await;
        c.put(Kind::Layout, 7, t, b"fresh".to_vec()).await;
        assert_eq!(c.get(Kind::Layout, 7).await.as_deref(), Some(&b"fresh"[..]));
        c.invalidate(&[7]).await;
        assert_eq!(c.get(Kind::Layout, 7).await, None);
    }
}
