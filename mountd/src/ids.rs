//! The stock of inode ids the gateway reserved for this mount's new files (`ReserveIds`).
//!
//! A create is answered locally under the smallest id in stock and reaches the gateway later,
//! with the file's bytes. The stock is persisted in the cache's key/value table so that a
//! restarted daemon can still create files while the gateway is unreachable:
//!
//! - `id_pool` holds the stock as written after each reservation (`<expires_ns>;a-b,c,…`,
//!   ranges ascending; `expires_ns` is the earliest expiry of the batches in it);
//! - `ids_used_to` holds the last id handed out, written in the same transaction as the
//!   staged record of the file created under it (see `Staging::install`).
//!
//! Ids are handed out in increasing order, so on reload every id up to `ids_used_to` is
//! spent. The gateway's sequences only grow, so a later batch never holds a smaller id than
//! an earlier one, and handing out the smallest first keeps that order.

use std::collections::BTreeSet;

/// Key/value keys of the persisted pool.
pub const POOL_KEY: &str = "id_pool";
pub const USED_KEY: &str = "ids_used_to";

/// Reserved ids in stock, smallest handed out first.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct IdPool {
    ids: BTreeSet<u64>,
    /// When the earliest batch in stock expires at the gateway (0: stock empty).
    expires_ns: i64,
}

impl IdPool {
    /// The pool persisted as `pool` with every id up to `used_to` spent; empty when it expired
    /// by `now_ns` (the gateway may have released those ids) or does not parse.
    pub fn load(pool: Option<&str>, used_to: u64, now_ns: i64) -> IdPool {
        let Some(p) = pool.and_then(IdPool::decode) else {
            return IdPool::default();
        };
        if p.expires_ns <= now_ns {
            return IdPool::default();
        }
        IdPool {
            ids: p.ids.into_iter().filter(|&id| id > used_to).collect(),
            expires_ns: p.expires_ns,
        }
    }

    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// The smallest id in stock, unless the stock expired by `now_ns`.
    pub fn take(&mut self, now_ns: i64) -> Option<u64> {
        if self.expires_ns <= now_ns {
            self.ids.clear();
            return None;
        }
        self.ids.pop_first()
    }

    /// Adds a batch the gateway reserved until `expires_ns`.
    pub fn add(&mut self, ids: impl IntoIterator<Item = u64>, expires_ns: i64) {
        let before = self.ids.len();
        self.ids.extend(ids);
        if self.ids.len() > before {
            self.expires_ns = if before == 0 {
                expires_ns
            } else {
                self.expires_ns.min(expires_ns)
            };
        }
    }

    /// `<expires_ns>;a-b,c,…` with ascending ranges.
    pub fn encode(&self) -> String {
        let mut out = format!("{};", self.expires_ns);
        let mut it = self.ids.iter().copied().peekable();
        let mut first = true;
        while let Some(start) = it.next() {
            let mut end = start;
            while it.peek() == Some(&(end + 1)) {
                end += 1;
                it.next();
            }
            if !first {
                out.push(',');
            }
            first = false;
            if end == start {
                out.push_str(&start.to_string());
            } else {
                out.push_str(&format!("{start}-{end}"));
            }
        }
        out
    }

    /// The inverse of [`IdPool::encode`]; `None` for anything it did not write.
    pub fn decode(s: &str) -> Option<IdPool> {
        let (exp, ranges) = s.split_once(';')?;
        let expires_ns = exp.parse().ok()?;
        let mut ids = BTreeSet::new();
        for r in ranges.split(',').filter(|r| !r.is_empty()) {
            let (a, b) = match r.split_once('-') {
                Some((a, b)) => (a.parse::<u64>().ok()?, b.parse::<u64>().ok()?),
                None => {
                    let a = r.parse::<u64>().ok()?;
                    (a, a)
                }
            };
            // A reservation is at most a few thousand ids; refuse absurd ranges.
            if b < a || b - a > 1 << 20 {
                return None;
            }
            ids.extend(a..=b);
        }
        Some(IdPool { ids, expires_ns })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hands_out_the_smallest_first_and_round_trips() {
        let mut p = IdPool::default();
        p.add([10, 11, 12, 20], 1_000);
        p.add([30, 31], 2_000);
        assert_eq!(p.encode(), "1000;10-12,20,30-31");
        assert_eq!(IdPool::decode(&p.encode()), Some(p.clone()));
        assert_eq!(p.take(5), Some(10));
        assert_eq!(p.take(5), Some(11));
        assert_eq!(p.len(), 4);
    }

    #[test]
    fn reload_drops_spent_and_expired_ids() {
        let saved = "1000;10-14,20";
        let p = IdPool::load(Some(saved), 12, 500);
        assert_eq!(p.encode(), "1000;13-14,20");
        assert!(IdPool::load(Some(saved), 0, 1_000).is_empty());
        assert!(IdPool::load(None, 0, 0).is_empty());
        let mut p = IdPool::load(Some(saved), 0, 0);
        assert_eq!(p.take(999), Some(10));
        assert_eq!(p.take(1_000), None, "expired stock is dropped");
        assert!(p.is_empty());
    }

    #[test]
    fn malformed_pools_are_refused() {
        for bad in ["", "x;1", "5;1-", "5;3-1", "5;a", "5;0-99999999999", "5"] {
            assert_eq!(IdPool::decode(bad), None, "{bad:?}");
        }
        assert_eq!(IdPool::decode("5;").unwrap().len(), 0);
    }
}
