//! Exactly-once: deduplication by `(tenant, id)` (SPEC 2.2).
//!
//! An id is first *claimed* in an in-memory table (atomic insert; a concurrent request
//! with the same id finds the claim and waits for the owner's outcome), then looked up
//! in [`Unflushed`] and, if absent there, in the `dedupe` column family. The owner commits
//! its events' dedupe records inside the journal records that count them (one atomic
//! write), records the ids in [`Unflushed`], and only then releases its claims. So at every
//! instant an accepted id is claimed, in [`Unflushed`] (its record durable in the journal),
//! or in `dedupe`; a failed write releases the claim with nothing recorded: an id can
//! never be claimed but uncounted. Memory holds the in-flight claims and the ids of one
//! flush interval, never the retention window.
//!
//! Records older than `dedupe_retention` are treated as absent and removed by a RocksDB
//! compaction filter, never by a scan and never kept in RAM.

use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;

use dashmap::mapref::entry::Entry;
use dashmap::DashMap;
use tokio::sync::Notify;

use crate::store::records::decode_dedupe;

/// Outcome of an in-flight request, as seen by requests waiting on its claims.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fate {
    /// Still running.
    Pending,
    /// Its events are durable: claimed ids are duplicates.
    Committed,
    /// Its write failed: claimed ids are free again.
    Failed,
}

impl Fate {
    fn from_code(code: u8) -> Fate {
        match code {
            1 => Fate::Committed,
            2 => Fate::Failed,
            _ => Fate::Pending,
        }
    }

    fn code(self) -> u8 {
        match self {
            Fate::Pending => 0,
            Fate::Committed => 1,
            Fate::Failed => 2,
        }
    }
}

/// A request's claim token: its fate, and the requests waiting for it.
///
/// Every ingest request makes one, and almost none is ever waited on (only a request
/// sent while another one holds the same id waits), so it is a fate word and a
/// [`Notify`] rather than a `watch` channel (which allocates its shared state and wakes
/// eight lists on every publish).
#[derive(Debug)]
pub struct Owner {
    fate: AtomicU8,
    decided: Notify,
}

impl Owner {
    /// Creates a token for one request.
    pub fn new() -> Arc<Owner> {
        Arc::new(Owner {
            fate: AtomicU8::new(Fate::Pending.code()),
            decided: Notify::new(),
        })
    }

    /// Waits until the owner has an outcome.
    pub async fn outcome(&self) -> Fate {
        loop {
            // Registered before the fate is read, so a publish in between still wakes it.
            let decided = self.decided.notified();
            tokio::pin!(decided);
            decided.as_mut().enable();
            let f = Fate::from_code(self.fate.load(Ordering::Acquire));
            if f != Fate::Pending {
                return f;
            }
            decided.await;
        }
    }

    /// Publishes the fate and wakes every waiter.
    fn publish(&self, fate: Fate) {
        self.fate.store(fate.code(), Ordering::Release);
        self.decided.notify_waiters();
    }
}

/// Key of a claim: tenant index and id hash.
pub type ClaimKey = (u32, u128);

/// Result of trying to claim an id.
#[derive(Debug)]
pub enum Claim {
    /// This request owns the id now.
    Claimed,
    /// This request already claimed the same id (a duplicate within one batch).
    OwnDuplicate,
    /// Another in-flight request holds it; wait for its fate.
    Busy(Arc<Owner>),
}

/// The in-flight claim table.
#[derive(Debug, Default)]
pub struct Claims {
    table: DashMap<ClaimKey, Arc<Owner>, foldhash::fast::RandomState>,
}

impl Claims {
    /// Creates an empty table.
    pub fn new() -> Claims {
        Claims::default()
    }

    /// Tries to claim `key` for `owner`.
    pub fn claim(&self, key: ClaimKey, owner: &Arc<Owner>) -> Claim {
        match self.table.entry(key) {
            Entry::Vacant(v) => {
                v.insert(owner.clone());
                Claim::Claimed
            }
            Entry::Occupied(o) => {
                if Arc::ptr_eq(o.get(), owner) {
                    Claim::OwnDuplicate
                } else {
                    Claim::Busy(o.get().clone())
                }
            }
        }
    }

    /// Publishes the owner's fate and releases its claims on `keys`.
    pub fn release(&self, owner: &Arc<Owner>, keys: &[ClaimKey], fate: Fate) {
        // Claims go first, so a woken waiter finds the ids free.
        for k in keys {
            self.table.remove_if(k, |_, v| Arc::ptr_eq(v, owner));
        }
        owner.publish(fate);
    }

    /// Number of ids currently claimed (a gauge).
    pub fn len(&self) -> usize {
        self.table.len()
    }

    /// True when nothing is claimed.
    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }
}

/// Ids accepted but not yet in the `dedupe` column family: id key -> the journal record
/// that carries their dedupe records.
///
/// A request's write holds no dedupe record of its own: each event's dedupe record rides
/// in its journal record, and the flusher writes the records of the journal records it
/// flushes into `dedupe` (sorted, from one thread, off the requests' path) before it
/// deletes those journal records, and only then drops their ids from here. Lookups read
/// this table before the column family, so an id is always found in one of them: it
/// leaves this table only after its record is in `dedupe`. Start-up fills the table
/// from the journal records a stop left behind. Its size is bounded by the events of
/// one flush interval (about 40 bytes each).
#[derive(Debug, Default)]
pub struct Unflushed {
    table: DashMap<ClaimKey, u64, foldhash::fast::RandomState>,
    /// Entries in `table` (every ingest request reads it; `DashMap::len` locks every
    /// shard).
    len: AtomicUsize,
}

impl Unflushed {
    /// Creates an empty table.
    pub fn new() -> Unflushed {
        Unflushed::default()
    }

    /// Records that `key` was accepted in journal record `seq`.
    pub fn insert(&self, key: ClaimKey, seq: u64) {
        if self.table.insert(key, seq).is_none() {
            self.len.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The journal record that carries the dedupe record of `key`, if not yet flushed.
    pub fn get(&self, key: &ClaimKey) -> Option<u64> {
        self.table.get(key).map(|s| *s)
    }

    /// Drops `key` once its dedupe record is in the column family (only if it still
    /// belongs to journal record `seq`).
    pub fn remove(&self, key: &ClaimKey, seq: u64) {
        if self.table.remove_if(key, |_, s| *s == seq).is_some() {
            self.len.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Number of ids whose dedupe records are not yet in the column family.
    pub fn len(&self) -> usize {
        self.len.load(Ordering::Relaxed)
    }

    /// True when every accepted id's record is in the column family.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Whether a stored dedupe record makes `id` a duplicate at `now_ms`.
pub fn is_recorded(record: Option<&[u8]>, id: &str, now_ms: i64, retention_ms: i64) -> bool {
    match record.and_then(decode_dedupe) {
        Some((accepted, stored_id, _)) => stored_id == id && accepted + retention_ms >= now_ms,
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_expire_after_retention() {
        use crate::store::records::{encode_dedupe, EventRecord};
        let ev = EventRecord::sample();
        let rec = encode_dedupe(1_000, "id-1", &ev);
        assert!(is_recorded(Some(&rec), "id-1", 1_000 + 60_000, 60_000));
        assert!(!is_recorded(Some(&rec), "id-1", 1_000 + 60_001, 60_000));
        // A hash collision with another id is not a duplicate.
        assert!(!is_recorded(Some(&rec), "id-2", 1_000, 60_000));
        assert!(!is_recorded(None, "id-1", 1_000, 60_000));
    }

    #[test]
    fn recent_ids_are_counted_and_dropped_only_for_their_journal_record() {
        let r = Unflushed::new();
        r.insert((0, 1), 7);
        r.insert((0, 2), 7);
        r.insert((1, 1), 8);
        // The same id again (a retry after a hash collision's record): one entry.
        r.insert((0, 2), 9);
        assert_eq!((r.len(), r.get(&(0, 2))), (3, Some(9)));
        // A flush of record 7 leaves the entry that now points at record 9.
        r.remove(&(0, 1), 7);
        r.remove(&(0, 2), 7);
        assert_eq!(
            (r.len(), r.get(&(0, 1)), r.get(&(0, 2))),
            (2, None, Some(9))
        );
        r.remove(&(0, 2), 9);
        r.remove(&(1, 1), 8);
        r.remove(&(1, 1), 8);
        assert!(r.is_empty() && r.get(&(1, 1)).is_none());
    }

    #[tokio::test]
    async fn claims_are_exclusive_and_released() {
        let c = Claims::new();
        let a = Owner::new();
        let b = Owner::new();
        assert!(matches!(c.claim((0, 1), &a), Claim::Claimed));
        assert!(matches!(c.claim((0, 1), &a), Claim::OwnDuplicate));
        let busy = match c.claim((0, 1), &b) {
            Claim::Busy(o) => o,
            other => panic!("{other:?}"),
        };
        let waiter = tokio::spawn(async move { busy.outcome().await });
        c.release(&a, &[(0, 1)], Fate::Failed);
        assert_eq!(waiter.await.unwrap(), Fate::Failed);
        assert!(matches!(c.claim((0, 1), &b), Claim::Claimed));
        assert_eq!(c.len(), 1);
    }

    #[tokio::test]
    async fn every_waiter_sees_the_fate_whenever_it_asks() {
        let c = Claims::new();
        let a = Owner::new();
        let b = Owner::new();
        assert!(matches!(c.claim((0, 7), &a), Claim::Claimed));
        // Several requests wait on the same owner before it decides.
        let waiters: Vec<_> = (0..4)
            .map(|_| {
                let o = a.clone();
                tokio::spawn(async move { o.outcome().await })
            })
            .collect();
        tokio::task::yield_now().await;
        c.release(&a, &[(0, 7)], Fate::Committed);
        for w in waiters {
            assert_eq!(w.await.unwrap(), Fate::Committed);
        }
        // A request that asks after the decision gets it at once.
        assert_eq!(a.outcome().await, Fate::Committed);
        // A claim held by another owner is left alone by a release of `a`.
        assert!(matches!(c.claim((0, 8), &b), Claim::Claimed));
        c.release(&a, &[(0, 8)], Fate::Failed);
        assert!(matches!(c.claim((0, 8), &a), Claim::Busy(_)));
    }
}
