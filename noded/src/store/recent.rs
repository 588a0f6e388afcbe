//! Which shards this process stored lately, so that a delete the gateway decided before a put
//! cannot remove what that put stored.
//!
//! The race it closes: the gateway turns a shard nobody refers to into a delete command once it
//! has checked, on receiving a heartbeat, that no stored chunk and no write in flight names it.
//! A client may then begin a new write of the same bytes (content addressing gives it the same
//! shard hash), be placed on this node and put the shard before the command runs here. Deleting
//! it then would take a shard the new version is about to commit.
//!
//! Every put gets a number (`seq`, counting from 1 in this process, whose `epoch` is random).
//! Each heartbeat carries the current `(epoch, seq)`, and a delete command built from that
//! heartbeat carries them back as its bound. Any put numbered at or below the bound happened
//! before the heartbeat was sent, so before the gateway's check; that put's write was begun
//! (and its write targets recorded) before it, so the check saw it. A put numbered above the
//! bound may be the new write: its shard is kept. A bound from another epoch grants nothing in
//! this process (bound 0): every put here counts as newer.
//!
//! Numbers are remembered (per shard, the last put's) for [`REMEMBER`] after the heartbeat
//! that followed them. A command whose bound is older than what is remembered is refused as
//! [`Stale`]; the gateway queues its hashes again and checks them afresh.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// How long put numbers are kept after the heartbeat that reported them. The gateway
/// redelivers an unacknowledged command after a minute; this covers several redeliveries.
pub const REMEMBER: Duration = Duration::from_secs(300);

/// A delete command's bound is older than this process remembers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stale {
    pub bound: u64,
    pub floor: u64,
}

/// Put numbering and the marks that say how far back numbers are remembered.
#[derive(Debug)]
pub struct Recent {
    epoch: u64,
    seq: AtomicU64,
    /// Put numbers below this are forgotten; bounds below it are [`Stale`].
    floor: AtomicU64,
    /// `(when, seq)` of each heartbeat mark, oldest first.
    marks: Mutex<VecDeque<(Instant, u64)>>,
}

/// The position a heartbeat reports: this process and its last put number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PutMark {
    pub epoch: u64,
    pub seq: u64,
}

impl Recent {
    pub fn new(epoch: u64) -> Self {
        Recent {
            epoch: epoch.max(1),
            seq: AtomicU64::new(0),
            floor: AtomicU64::new(0),
            marks: Mutex::new(VecDeque::new()),
        }
    }

    /// A random nonzero epoch for a new process.
    pub fn random_epoch() -> u64 {
        let mut b = [0u8; 8];
        if getrandom::fill(&mut b).is_err() {
            // Without randomness, time and pid still tell processes apart.
            let t = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default()
                .as_nanos() as u64;
            b = (t ^ (u64::from(std::process::id()) << 32)).to_le_bytes();
        }
        u64::from_le_bytes(b).max(1)
    }

    /// The number for the next put.
    pub fn next(&self) -> u64 {
        self.seq.fetch_add(1, Ordering::SeqCst) + 1
    }

    /// Records a heartbeat at `now` and returns its position, plus the new floor when marks
    /// older than [`REMEMBER`] were dropped (the caller then forgets puts below it).
    pub fn mark(&self, now: Instant) -> (PutMark, Option<u64>) {
        let mut marks = self.marks.lock().unwrap_or_else(|e| e.into_inner());
        let seq = self.seq.load(Ordering::SeqCst);
        marks.push_back((now, seq));
        let mut floor = None;
        while let Some(&(t, s)) = marks.front() {
            if now.duration_since(t) < REMEMBER {
                break;
            }
            marks.pop_front();
            floor = Some(s);
        }
        if let Some(f) = floor {
            if f > self.floor.load(Ordering::SeqCst) {
                self.floor.store(f, Ordering::SeqCst);
            } else {
                floor = None;
            }
        }
        (
            PutMark {
                epoch: self.epoch,
                seq,
            },
            floor,
        )
    }

    /// What a delete command built from the heartbeat at `(epoch, seq)` may delete here: shards
    /// whose last put is numbered at most the returned bound.
    pub fn bound(&self, epoch: u64, seq: u64) -> Result<u64, Stale> {
        let bound = if epoch == self.epoch { seq } else { 0 };
        let floor = self.floor.load(Ordering::SeqCst);
        if bound < floor {
            return Err(Stale { bound, floor });
        }
        Ok(bound)
    }

    #[cfg(test)]
    fn floor(&self) -> u64 {
        self.floor.load(Ordering::SeqCst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_follow_marks_and_expire() {
        let r = Recent::new(7);
        let t0 = Instant::now();
        assert_eq!(r.next(), 1);
        let (m, f) = r.mark(t0);
        assert_eq!((m.epoch, m.seq, f), (7, 1, None));
        assert_eq!(r.next(), 2);
        assert_eq!(r.bound(7, 1), Ok(1));
        // Another process's command grants nothing here, but is not stale while all is known.
        assert_eq!(r.bound(8, 1), Ok(0));
        // A mark REMEMBER later drops the first: its seq becomes the floor.
        let (m2, f2) = r.mark(t0 + REMEMBER);
        assert_eq!((m2.seq, f2), (2, Some(1)));
        assert_eq!(r.bound(7, 1), Ok(1));
        assert_eq!(r.bound(7, 0), Err(Stale { bound: 0, floor: 1 }));
        assert_eq!(r.bound(8, 5), Err(Stale { bound: 0, floor: 1 }));
        // The floor never moves back.
        let (_, f3) = r.mark(t0 + REMEMBER);
        assert_eq!(f3, None);
        assert_eq!(r.floor(), 1);
    }

    #[test]
    fn epochs_are_nonzero() {
        assert_eq!(Recent::new(0).mark(Instant::now()).0.epoch, 1);
        assert_ne!(Recent::random_epoch(), 0);
    }
}
