//! Typed writes: the one way code outside `store/` and [`crate::journal`] puts rows into
//! the column families.
//!
//! A [`Writes`] gathers the rows of one atomic write (usage window deltas, dedupe
//! records, registry and audit rows, quota deltas, notifications, changes-feed rows),
//! each added by a method that knows its column family and key encoding. Callers never
//! name a column family; the journal turns a [`Writes`] into the [`WriteBatch`] it
//! commits ([`Writes::into_batch`]), so the rows reach RocksDB exactly as they would
//! have through a hand-built batch. Column family handles are looked up once per family
//! and write (a lookup is a search by name, about 450 instructions).

use rocksdb::{ColumnFamily, WriteBatch};

use super::agg::AggValue;
use super::keys::{
    admin_key, changes_key, changes_row_key, journal_key, record_rev_key, AdminKind,
    RECORD_REV_PREFIX,
};
use super::Store;

/// Index of each column family in [`Writes`]' handle cache (order of [`Store::CFS`]).
#[derive(Clone, Copy)]
enum Family {
    Windows = 0,
    Journal,
    Dedupe,
    Admin,
    Meta,
    Quota,
    QuotaLog,
    Outbox,
    Changes,
    RowRev,
}

impl Family {
    fn name(self) -> &'static str {
        Store::CFS[self as usize]
    }
}

/// The rows of one atomic write, built by typed methods (see the module note).
pub struct Writes<'s> {
    store: &'s Store,
    batch: WriteBatch,
    handles: [Option<&'s ColumnFamily>; 10],
}

impl std::fmt::Debug for Writes<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Writes")
            .field("rows", &self.batch.len())
            .finish_non_exhaustive()
    }
}

impl Store {
    /// An empty write with room for about `bytes` bytes of rows.
    pub fn writes(&self, bytes: usize) -> Writes<'_> {
        Writes {
            store: self,
            batch: WriteBatch::with_capacity_bytes(bytes),
            handles: [None; 10],
        }
    }

    /// Writes `w` atomically; with `sync` the WAL is fsynced before returning. For
    /// writes outside the journal's commits (start-up, the flusher's dedupe moves).
    pub fn apply(&self, w: Writes<'_>, sync: bool) -> Result<(), super::StoreError> {
        self.write(w.into_batch(), sync)
    }
}

impl<'s> Writes<'s> {
    fn cf(&mut self, f: Family) -> &'s ColumnFamily {
        let store = self.store;
        self.handles[f as usize].get_or_insert_with(|| store.cf(f.name()))
    }

    /// The RocksDB batch holding the rows (for the journal's commit).
    pub fn into_batch(self) -> WriteBatch {
        self.batch
    }

    /// Number of rows (puts, merges and deletions) added.
    pub fn len(&self) -> usize {
        self.batch.len()
    }

    /// True when no row was added.
    pub fn is_empty(&self) -> bool {
        self.batch.is_empty()
    }

    /// A merge operand (an encoded [`AggValue`]) for the usage window row `key`
    /// ([`super::keys::window_key`]).
    pub fn merge_window(&mut self, key: &[u8], encoded: &[u8]) {
        let cf = self.cf(Family::Windows);
        self.batch.merge_cf(cf, key, encoded);
    }

    /// The dedupe record of an event id (`key` from [`super::keys::dedupe_key`]).
    pub fn put_dedupe(&mut self, key: &[u8], record: &[u8]) {
        let cf = self.cf(Family::Dedupe);
        self.batch.put_cf(cf, key, record);
    }

    /// A registry or audit row: `kind`'s record `name` of `tenant` (JSON or an index).
    pub fn put_admin(&mut self, kind: AdminKind, tenant: &str, name: &str, value: &[u8]) {
        let cf = self.cf(Family::Admin);
        self.batch.put_cf(cf, admin_key(kind, tenant, name), value);
    }

    /// A merge operand for the quota row `key` ([`super::quota_keys`]).
    pub fn merge_quota(&mut self, key: &[u8], delta: AggValue) {
        let cf = self.cf(Family::Quota);
        self.batch.merge_cf(cf, key, delta.encode());
    }

    /// A threshold notification waiting for delivery, under its outbox number.
    pub fn put_outbox(&mut self, seq: u64, entry: &[u8]) {
        let cf = self.cf(Family::Outbox);
        self.batch.put_cf(cf, seq.to_be_bytes(), entry);
    }

    /// Removes a delivered (or given up) notification.
    pub fn delete_outbox(&mut self, seq: u64) {
        let cf = self.cf(Family::Outbox);
        self.batch.delete_cf(cf, seq.to_be_bytes());
    }

    /// Records that window row `window_key` changed at revision `rev` of `tenant`,
    /// replacing its entry at revision `previous` in the changes feed.
    pub fn put_change(&mut self, tenant: &str, rev: u64, previous: Option<u64>, window_key: &[u8]) {
        let changes = self.cf(Family::Changes);
        if let Some(p) = previous {
            self.batch.delete_cf(changes, changes_key(tenant, p));
        }
        self.batch
            .put_cf(changes, changes_key(tenant, rev), window_key);
        let rowrev = self.cf(Family::RowRev);
        self.batch.put_cf(rowrev, window_key, rev.to_be_bytes());
    }

    /// Cluster mode's [`Writes::put_change`]: the entry's key ends with the window key,
    /// since rows changed by one stream message share its revision.
    pub fn put_row_change(
        &mut self,
        tenant: &str,
        rev: u64,
        previous: Option<u64>,
        window_key: &[u8],
    ) {
        let changes = self.cf(Family::Changes);
        if let Some(p) = previous {
            self.batch
                .delete_cf(changes, changes_row_key(tenant, p, window_key));
        }
        self.batch.put_cf(
            changes,
            changes_row_key(tenant, rev, window_key),
            window_key,
        );
        let rowrev = self.cf(Family::RowRev);
        self.batch.put_cf(rowrev, window_key, rev.to_be_bytes());
    }

    /// Records the revision of unflushed events record `seq` (cluster mode).
    pub fn put_record_rev(&mut self, seq: u64, rev: u64) {
        let cf = self.cf(Family::Meta);
        self.batch
            .put_cf(cf, record_rev_key(seq), rev.to_be_bytes());
    }

    /// Deletes the revisions of events records `first..=last` (their flush).
    pub fn delete_record_revs(&mut self, first: u64, last: u64) {
        let cf = self.cf(Family::Meta);
        let end = match last.checked_add(1) {
            Some(end) => record_rev_key(end),
            None => {
                let mut k = RECORD_REV_PREFIX.to_vec();
                k.extend_from_slice(&[0xff; 9]);
                k
            }
        };
        self.batch.delete_range_cf(cf, record_rev_key(first), end);
    }

    /// A row of the `meta` family (format version, high-water marks).
    pub fn put_meta(&mut self, key: &[u8], value: &[u8]) {
        let cf = self.cf(Family::Meta);
        self.batch.put_cf(cf, key, value);
    }

    /// An events record of the journal under sequence number `seq` (the record format is
    /// the journal's: [`crate::journal`]).
    pub fn put_journal(&mut self, seq: u64, record: &[u8]) {
        let cf = self.cf(Family::Journal);
        self.batch.put_cf(cf, journal_key(seq), record);
    }

    /// A quota log record (the journal's combined quota operands of one write).
    pub fn put_quota_log(&mut self, n: u64, record: &[u8]) {
        let cf = self.cf(Family::QuotaLog);
        self.batch.put_cf(cf, n.to_be_bytes(), record);
    }

    /// Deletes quota log records `first..next`.
    pub fn delete_quota_log(&mut self, first: u64, next: u64) {
        let cf = self.cf(Family::QuotaLog);
        self.batch
            .delete_range_cf(cf, first.to_be_bytes(), next.to_be_bytes());
    }

    /// Deletes journal records `first..=last` (a range deletion when there are several).
    pub fn delete_journal(&mut self, first: u64, last: u64) {
        let cf = self.cf(Family::Journal);
        match last.checked_add(1) {
            Some(end) if last > first => {
                self.batch
                    .delete_range_cf(cf, journal_key(first), journal_key(end))
            }
            _ => {
                for seq in first..=last {
                    self.batch.delete_cf(cf, journal_key(seq));
                }
            }
        }
    }
}

// The handle cache relies on `Family`'s discriminants following `Store::CFS`.
const _: () = {
    assert!(matches!(Family::Windows as usize, 0));
    assert!(Family::RowRev as usize == Store::CFS.len() - 1);
};

#[cfg(test)]
mod tests {
    use super::super::cf;
    use super::*;
    use std::time::Duration;

    #[test]
    fn families_follow_the_store_order() {
        let all = [
            (Family::Windows, cf::WINDOWS),
            (Family::Journal, cf::JOURNAL),
            (Family::Dedupe, cf::DEDUPE),
            (Family::Admin, cf::ADMIN),
            (Family::Meta, cf::META),
            (Family::Quota, cf::QUOTA),
            (Family::QuotaLog, cf::QUOTA_LOG),
            (Family::Outbox, cf::OUTBOX),
            (Family::Changes, cf::CHANGES),
            (Family::RowRev, cf::ROWREV),
        ];
        for (f, name) in all {
            assert_eq!(f.name(), name);
        }
    }

    #[test]
    fn typed_rows_land_in_their_families_atomically() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), Duration::from_secs(3600)).unwrap();
        let mut w = store.writes(256);
        w.put_admin(AdminKind::Lever, "t", "calls", b"{}");
        w.put_dedupe(b"dk", b"rec");
        w.put_journal(7, b"events");
        w.put_journal(8, b"events");
        w.merge_quota(b"q", AggValue::Sum(3));
        w.merge_quota(b"q", AggValue::Sum(4));
        w.put_outbox(5, b"n");
        w.put_meta(b"m", b"v");
        assert_eq!(w.len(), 8);
        store.apply(w, true).unwrap();
        assert_eq!(
            store
                .get(cf::ADMIN, &admin_key(AdminKind::Lever, "t", "calls"))
                .unwrap()
                .as_deref(),
            Some(&b"{}"[..])
        );
        assert!(store.get(cf::DEDUPE, b"dk").unwrap().is_some());
        let q = store.get(cf::QUOTA, b"q").unwrap().unwrap();
        assert_eq!(AggValue::decode(&q), Some(AggValue::Sum(7)));
        assert!(store
            .get(cf::OUTBOX, &5u64.to_be_bytes())
            .unwrap()
            .is_some());
        let mut w = store.writes(64);
        w.delete_journal(7, 8);
        w.delete_outbox(5);
        store.apply(w, false).unwrap();
        assert!(store.get(cf::JOURNAL, &journal_key(7)).unwrap().is_none());
        assert!(store.get(cf::JOURNAL, &journal_key(8)).unwrap().is_none());
        assert!(store
            .get(cf::OUTBOX, &5u64.to_be_bytes())
            .unwrap()
            .is_none());
    }
}
