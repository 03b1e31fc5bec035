//! The embedded RocksDB store.
//!
//! Column families:
//! - `windows`: aggregated usage rows, written only by the flusher as merge operands
//!   ([`agg::merge_operator`]); never read-modify-written.
//! - `journal`: accepted events not yet flushed into `windows`. A journal record carries
//!   the dedupe records of its events; the flusher writes those into `dedupe`, then
//!   deletes the journal record in the same batch that merges its deltas into `windows`.
//!   So after any crash each accepted event is either in the journal (replayed at start)
//!   or in `windows`, exactly once, and its dedupe record in the journal or in `dedupe`.
//! - `dedupe`: one record per accepted event id, removed by a compaction filter once older
//!   than `dedupe_retention` (memory stays bounded: only in-flight ids and the ids of one
//!   flush live in RAM, see [`crate::dedupe`]).
//! - `admin`: lever and contract definitions (JSON).
//! - `quota`: usage per contract, lever and quota period, written as merge operands in
//!   the same batch as the events that caused it (see [`crate::quota::book`]).
//! - `outbox`: threshold notifications not yet delivered, written in the same batch as
//!   the usage that crossed the threshold (see [`crate::notify`]).
//! - `changes`, `rowrev`: the changes feed index (see [`crate::revision`]).
//! - `meta`: on-disk format version and the journal sequence high-water mark.
//!
//! Files: [`options`] (RocksDB tuning per column family), [`retention`] (what compaction
//! removes), `read` and `write` (lookups, scans, batches), `props` (properties for
//! metrics), `error` (failures); keys and records are in [`keys`], [`quota_keys`],
//! [`records`] and [`agg`].

pub mod agg;
mod error;
pub mod keys;
mod options;
mod props;
pub mod quota_keys;
mod read;
pub mod records;
mod retention;
pub mod tables;
mod write;
pub use write::concat_batches;
pub mod writes;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rocksdb::{Options, WriteOptions, DB};

use crate::window::WindowRetention;

pub use error::StoreError;
pub use options::MemoryBudget;
pub use read::{prefix_successor, PartitionFeed};

/// On-disk format version written by this build.
pub const FORMAT_VERSION: u32 = 1;

/// Column family names.
pub mod cf {
    /// Usage windows.
    pub const WINDOWS: &str = "windows";
    /// Unflushed accepted events.
    pub const JOURNAL: &str = "journal";
    /// Idempotency records.
    pub const DEDUPE: &str = "dedupe";
    /// Levers and contracts.
    pub const ADMIN: &str = "admin";
    /// Format metadata.
    pub const META: &str = "meta";
    /// Quota usage per contract, lever and period.
    pub const QUOTA: &str = "quota";
    /// Quota usage of recent commits not yet folded into `quota` (see [`crate::journal`]).
    pub const QUOTA_LOG: &str = "quota_log";
    /// Threshold notifications not yet delivered.
    pub const OUTBOX: &str = "outbox";
    /// The changes feed: tenant and revision -> window key.
    pub const CHANGES: &str = "changes";
    /// Latest revision of each window row.
    pub const ROWREV: &str = "rowrev";
}

/// Handle to the open store (cheap to clone).
#[derive(Clone)]
pub struct Store {
    db: Arc<DB>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").finish_non_exhaustive()
    }
}

impl Store {
    /// Opens (creating if needed) the store under `path`.
    pub fn open(path: &Path, dedupe_retention: Duration) -> Result<Store, StoreError> {
        Store::open_with(path, dedupe_retention, WindowRetention::default(), None)
    }

    /// Opens the store, removing window rows older than `windows` during compaction.
    /// `memory` bounds RocksDB's memory (RocksDB's defaults when `None`). The options of
    /// every column family are in [`options`].
    pub fn open_with(
        path: &Path,
        dedupe_retention: Duration,
        windows_retention: WindowRetention,
        memory: Option<MemoryBudget>,
    ) -> Result<Store, StoreError> {
        std::fs::create_dir_all(path).map_err(|e| StoreError::Full(format!("{path:?}: {e}")))?;
        let (db_opts, cache) = options::db_options(memory);
        let cfs = options::column_families(dedupe_retention, windows_retention, cache.as_ref());
        let db = DB::open_cf_descriptors(&db_opts, path, cfs).map_err(StoreError::classify)?;
        let store = Store { db: Arc::new(db) };
        options::after_open(&store)?;
        store.check_format()?;
        Ok(store)
    }

    /// Writes a consistent point-in-time copy of the whole store into `dir` (which must
    /// not exist; its parent must be on the same filesystem as the data dir for SST
    /// files to be hard links rather than copies). RocksDB flushes the memtables first,
    /// so the copy needs no WAL replay beyond what it holds. The copy is a complete data
    /// dir: start meterd on it to restore. Returns its size in bytes and file count.
    pub fn checkpoint(&self, dir: &Path) -> Result<(u64, usize), StoreError> {
        let cp = rocksdb::checkpoint::Checkpoint::new(&self.db).map_err(StoreError::classify)?;
        cp.create_checkpoint(dir).map_err(StoreError::classify)?;
        let mut bytes = 0;
        let mut files = 0;
        for e in std::fs::read_dir(dir).map_err(|e| StoreError::Full(format!("{dir:?}: {e}")))? {
            let e = e.map_err(|e| StoreError::Full(format!("{dir:?}: {e}")))?;
            if let Ok(m) = e.metadata() {
                bytes += m.len();
                files += 1;
            }
        }
        Ok((bytes, files))
    }

    /// Stamps the data dir at `path` (which must exist and not be open) with on-disk
    /// format `version`, without checking what it held. For upgrade tooling and for the
    /// tests that show a meterd refusing a format it cannot read.
    pub fn stamp_format_version(path: &Path, version: &str) -> Result<(), StoreError> {
        let mut opts = Options::default();
        opts.create_missing_column_families(true);
        // No merge operators or filters are set here: nothing may be compacted.
        opts.set_disable_auto_compactions(true);
        let names = DB::list_cf(&opts, path)?;
        let db = DB::open_cf(&opts, path, names)?;
        let meta = db.cf_handle(cf::META).ok_or(StoreError::Corrupt("meta"))?;
        let mut wo = WriteOptions::default();
        wo.set_sync(true);
        db.put_cf_opt(meta, b"format", version, &wo)?;
        Ok(())
    }

    fn check_format(&self) -> Result<(), StoreError> {
        let meta = self.cf(cf::META);
        match self.db.get_cf(meta, b"format")? {
            Some(v) => {
                let found = String::from_utf8_lossy(&v).to_string();
                if found != FORMAT_VERSION.to_string() {
                    return Err(StoreError::IncompatibleFormat { found });
                }
            }
            None => {
                let mut wo = WriteOptions::default();
                wo.set_sync(true);
                self.db
                    .put_cf_opt(meta, b"format", FORMAT_VERSION.to_string(), &wo)?;
            }
        }
        Ok(())
    }

    /// Returns a column family handle.
    pub fn cf(&self, name: &str) -> &rocksdb::ColumnFamily {
        self.db
            .cf_handle(name)
            .expect("column families are created at open")
    }

    /// Every column family name.
    pub const CFS: [&'static str; 10] = [
        cf::WINDOWS,
        cf::JOURNAL,
        cf::DEDUPE,
        cf::ADMIN,
        cf::META,
        cf::QUOTA,
        cf::QUOTA_LOG,
        cf::OUTBOX,
        cf::CHANGES,
        cf::ROWREV,
    ];

    /// Flushes a column family's memtable and compacts its whole key range (runs the
    /// compaction filters; used by operations tooling and tests).
    pub fn compact(&self, cf_name: &str) -> Result<(), StoreError> {
        let cf = self.cf(cf_name);
        self.db.flush_cf(cf)?;
        self.db.compact_range_cf(cf, None::<&[u8]>, None::<&[u8]>);
        Ok(())
    }

    /// Flushes memtables and syncs the WAL (at shutdown).
    pub fn close(&self) -> Result<(), StoreError> {
        self.db.flush_wal(true)?;
        for name in [
            cf::WINDOWS,
            cf::JOURNAL,
            cf::DEDUPE,
            cf::ADMIN,
            cf::QUOTA,
            cf::QUOTA_LOG,
        ] {
            self.db.flush_cf(self.cf(name))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rocksdb::WriteBatch;

    #[test]
    fn refuses_an_incompatible_format() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path(), Duration::from_secs(3600)).unwrap();
            let mut b = WriteBatch::default();
            b.put_cf(store.cf(cf::META), b"format", b"999");
            store.write(b, true).unwrap();
        }
        let err = Store::open(dir.path(), Duration::from_secs(3600)).unwrap_err();
        assert!(
            matches!(err, StoreError::IncompatibleFormat { .. }),
            "{err}"
        );
    }
}
