//! Revisions: a tenant-wide, strictly increasing number stamped on every change to stored
//! usage, and the index the changes feed reads (SPEC 4.2).
//!
//! Every write that changes window rows (a flush, an adjustment, a retraction) holds the
//! [`Revisions`] lock and, in the same atomic batch as the row changes, gives each changed
//! row the next revision of its tenant:
//!
//! - `changes`: `tenant, revision:u64` -> window key. A row appears once, at its latest
//!   revision: the entry of its previous revision is deleted in the same batch.
//! - `rowrev`: window key -> its latest revision (to find that previous entry).
//! - `meta`: `rev/<tenant>` -> the tenant's last issued revision, so revisions keep
//!   increasing across restarts.
//!
//! A reader iterates `changes` after a revision in a RocksDB snapshot and reads each
//! row's value in the same snapshot, so it sees a row at a revision together with the
//! value that revision wrote (or a later one). A consumer that stores the last revision
//! it applied and sets rows to the values it reads converges to exactly the stored rows.
//!
//! ## Cluster mode: revisions of the partitions' streams
//!
//! Each node flushes on its own schedule, so numbers issued by a node would mean
//! nothing on another, and a billing job's cursor must survive a failover. In cluster
//! mode ([`Revisions::partitioned`]) a row's revision is instead the revision of the
//! last stream message whose events changed it: `((p + 1) << 50) | stream sequence` of
//! its partition `p` (the range of [`crate::journal::stream::events_seq_range`]), the
//! same on every node. Rows changed by one message share its revision, so their
//! entries are keyed `tenant, revision, window key`. A contract's rows live in one
//! partition (its chain root's), so each partition's entries are a feed of their own,
//! and the cursor is a position per partition ([`crate::query::changes`]).
//!
//! A node flushes in its own order, so a row may be flushed with a later message's
//! events before an earlier message's. The feed therefore shows, per partition, only
//! revisions below the partition's first unflushed events record (whose revisions are
//! kept in `meta` until their flush): every message at or below such a revision is in
//! the rows, so a row shown at revision `r` has exactly the value the messages up to
//! `r` give it, on whichever node answers. A row whose entry is above that bound waits
//! until the earlier records are flushed too.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};

use crate::store::keys::get_str;
use crate::store::writes::Writes;
use crate::store::{Store, StoreError};

/// Meta key prefix of the per-tenant revision high-water marks.
const META_PREFIX: &[u8] = b"rev/";

/// The last issued revision of every tenant; its lock serialises usage writes.
#[derive(Debug)]
pub struct Revisions {
    last: Mutex<HashMap<String, u64>>,
    partitioned: bool,
}

/// Held while a usage write stamps and commits its rows.
pub struct Stamp<'a> {
    last: MutexGuard<'a, HashMap<String, u64>>,
    partitioned: bool,
}

impl Revisions {
    /// Loads the high-water marks.
    pub fn load(store: &Store) -> Result<Revisions, StoreError> {
        let mut last = HashMap::new();
        store.scan_meta(META_PREFIX, |k, v| {
            if let (Ok(t), Ok(b)) = (
                std::str::from_utf8(&k[META_PREFIX.len()..]),
                <[u8; 8]>::try_from(v),
            ) {
                last.insert(t.to_string(), u64::from_be_bytes(b));
            }
            true
        })?;
        Ok(Revisions {
            last: Mutex::new(last),
            partitioned: false,
        })
    }

    /// Cluster mode's revisions: rows are stamped with the revisions of the stream
    /// messages that changed them (see the module note).
    pub fn partitioned(self) -> Revisions {
        Revisions {
            partitioned: true,
            ..self
        }
    }

    /// Takes the usage-write lock.
    pub fn begin(&self) -> Stamp<'_> {
        Stamp {
            last: crate::sync::lock(&self.last),
            partitioned: self.partitioned,
        }
    }

    /// The last revision issued to `tenant` (0 before any).
    pub fn current(&self, tenant: &str) -> u64 {
        crate::sync::lock(&self.last)
            .get(tenant)
            .copied()
            .unwrap_or(0)
    }
}

impl Stamp<'_> {
    /// Adds to `batch` the changes-feed entries of rows changed by a flush: each window
    /// key of `rows` with the highest revision of the records that changed it. In
    /// cluster mode a row's entry moves to that revision (never back); otherwise each
    /// distinct key gets a new revision of its tenant ([`Stamp::stamp`]). Returns the
    /// highest revision written (0 when none).
    pub fn stamp_rows(
        &mut self,
        store: &Store,
        batch: &mut Writes<'_>,
        rows: &[(Vec<u8>, u64)],
    ) -> Result<u64, StoreError> {
        if !self.partitioned {
            let keys: Vec<&[u8]> = rows.iter().map(|(k, _)| k.as_slice()).collect();
            return self.stamp(store, batch, &keys);
        }
        let mut by_key: HashMap<&[u8], u64> = HashMap::new();
        for (key, rev) in rows {
            let e = by_key.entry(key.as_slice()).or_insert(0);
            *e = (*e).max(*rev);
        }
        let keys: Vec<&[u8]> = by_key.keys().copied().collect();
        let previous = store.row_revisions(&keys)?;
        let mut highest = 0;
        for (key, prev) in keys.iter().zip(previous) {
            let rev = by_key[key].max(prev.unwrap_or(0));
            if prev == Some(rev) {
                continue;
            }
            let (tenant, _) = get_str(key).ok_or(StoreError::Corrupt("window key"))?;
            batch.put_row_change(tenant, rev, prev, key);
            highest = highest.max(rev);
        }
        Ok(highest)
    }

    /// Adds to `batch` a new revision for each distinct window key in `keys` (full keys
    /// of the `windows` column family, which start with the tenant). Revisions issued
    /// for a batch that then fails to commit are skipped, never reused. Returns the
    /// highest revision issued (0 when `keys` is empty).
    pub fn stamp<K: AsRef<[u8]>>(
        &mut self,
        store: &Store,
        batch: &mut Writes<'_>,
        keys: &[K],
    ) -> Result<u64, StoreError> {
        if keys.is_empty() {
            return Ok(0);
        }
        let mut highest = 0;
        let previous = store.row_revisions(keys)?;
        let mut touched: HashMap<String, u64> = HashMap::new();
        let mut seen: std::collections::HashSet<&[u8]> = std::collections::HashSet::new();
        for (key, prev) in keys.iter().zip(previous) {
            let key = key.as_ref();
            if !seen.insert(key) {
                continue;
            }
            let (tenant, _) = get_str(key).ok_or(StoreError::Corrupt("window key"))?;
            let last = self.last.entry(tenant.to_string()).or_insert(0);
            *last += 1;
            let rev = *last;
            batch.put_change(tenant, rev, prev, key);
            touched.insert(tenant.to_string(), rev);
            highest = highest.max(rev);
        }
        for (tenant, rev) in touched {
            let mut k = META_PREFIX.to_vec();
            k.extend_from_slice(tenant.as_bytes());
            batch.put_meta(&k, &rev.to_be_bytes());
        }
        Ok(highest)
    }
}
