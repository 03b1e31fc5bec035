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
//!   the same batch as the events that caused it (see [`crate::quota::state`]).
//! - `outbox`: threshold notifications not yet delivered, written in the same batch as
//!   the usage that crossed the threshold (see [`crate::notify`]).
//! - `changes`, `rowrev`: the changes feed index (see [`crate::revision`]).
//! - `meta`: on-disk format version and the journal sequence high-water mark.

pub mod agg;
pub mod keys;
pub mod quota_keys;
pub mod records;
pub mod tables;
pub mod writes;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rocksdb::{
    BlockBasedOptions, ColumnFamilyDescriptor, Direction, IteratorMode, Options, ReadOptions,
    WriteBatch, WriteOptions, DB,
};

use crate::window::WindowRetention;
use agg::merge_operator;

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

/// Parses `Cumulative stall: HH:MM:SS.sss H:M:S, ...` into seconds.
fn parse_cumulative_stall(text: &str) -> Option<f64> {
    let line = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("Cumulative stall:"))?;
    let hms = line.split_whitespace().next()?;
    let mut parts = hms.split(':');
    let h: f64 = parts.next()?.parse().ok()?;
    let m: f64 = parts.next()?.parse().ok()?;
    let sec: f64 = parts.next()?.parse().ok()?;
    Some(h * 3600.0 + m * 60.0 + sec)
}

/// Expiry of window rows under a [`WindowRetention`] (the type sits in
/// [`crate::window`], where the configuration also takes it from; reading the row's key
/// is the store's part).
impl WindowRetention {
    /// Whether the window row with key `k` ended longer than its retention before `now`.
    pub fn expired(&self, k: &[u8], now_ms: i64) -> bool {
        use crate::window::Granularity;
        let parse = || -> Option<(Granularity, i64)> {
            let (_, b) = keys::get_str(k)?;
            let (_, b) = keys::get_str(b)?;
            let (_, b) = keys::get_str(b)?;
            let (&g, b) = b.split_first()?;
            let (start, _) = keys::get_time(b)?;
            Some((Granularity::from_code(g)?, start))
        };
        let Some((g, start)) = parse() else {
            return false;
        };
        let keep = match g {
            Granularity::Minute => self.minute,
            Granularity::Hour => self.hour,
            Granularity::Day => self.day,
        };
        keep.is_some_and(|d| start + g.len_ms() + d.as_millis() as i64 <= now_ms)
    }
}

/// Store failures.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// RocksDB reported an error.
    #[error("rocksdb: {0}")]
    Rocks(#[from] rocksdb::Error),
    /// The data dir was written by an incompatible version.
    #[error("data dir has on-disk format {found:?}, this meterd reads format {FORMAT_VERSION}; use a matching meterd version")]
    IncompatibleFormat {
        /// Version found on disk.
        found: String,
    },
    /// A stored record could not be decoded.
    #[error("corrupt record in column family {0}")]
    Corrupt(&'static str),
    /// The disk is full.
    #[error("storage full: {0}")]
    Full(String),
}

impl StoreError {
    /// Sorts a RocksDB error into the variant callers match on. RocksDB's C API hands a
    /// failed `Status` over as its text only (rust-rocksdb's own `Error::kind` parses
    /// that text too), so this is the one place meterd reads error text: an I/O error
    /// whose status says "No space left" (RocksDB's `NoSpace` subcode, or the OS's
    /// ENOSPC) is [`StoreError::Full`]. Everything above the store matches the variant.
    fn classify(e: rocksdb::Error) -> StoreError {
        let s = e.to_string();
        if s.contains("No space left") || s.contains("ENOSPC") {
            StoreError::Full(s)
        } else {
            StoreError::Rocks(e)
        }
    }
}

/// Memory bounds for RocksDB, in bytes.
#[derive(Debug, Clone, Copy)]
pub struct MemoryBudget {
    /// Cap on all memtables together.
    pub memtables: u64,
    /// The block cache shared by every column family.
    pub block_cache: u64,
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
    /// `memory` bounds RocksDB's memory (RocksDB's defaults when `None`).
    pub fn open_with(
        path: &Path,
        dedupe_retention: Duration,
        windows_retention: WindowRetention,
        memory: Option<MemoryBudget>,
    ) -> Result<Store, StoreError> {
        std::fs::create_dir_all(path).map_err(|e| StoreError::Full(format!("{path:?}: {e}")))?;
        let mut db_opts = Options::default();
        db_opts.create_if_missing(true);
        db_opts.create_missing_column_families(true);
        // Three jobs: one flush and two compactions, so that the newest dedupe files are
        // still merged while a long compaction of the oldest runs is under way (with one
        // compaction slot, new files would pile up behind it toward the write stall).
        db_opts.set_max_background_jobs(3);
        db_opts.set_bytes_per_sync(1 << 20);
        db_opts.set_keep_log_file_num(4);
        // A WAL file is kept until every column family's memtable holding some of its
        // writes is flushed, and some memtables fill slowly (`quota` gets one merge per
        // changed row a second, `admin` a write per admin change): without a cap the WAL
        // grew toward RocksDB's default of four times all write buffers (gigabytes), and
        // start-up replays all of it. Past 512 MiB RocksDB flushes the memtables that
        // hold the oldest WAL file.
        db_opts.set_max_total_wal_size(512 << 20);
        // Writes reach the memtables from the journal's one writer thread (and rarely from
        // the flusher and admin requests), so parallel memtable inserts buy nothing; turning
        // them off lets the `quota_log` column family below use a vector memtable.
        db_opts.set_allow_concurrent_memtable_write(false);
        // One block cache for every column family (by default each table factory has
        // its own), and one cap on all memtables together: RocksDB's write buffer
        // manager flushes the largest memtable when the cap is near.
        let cache = memory.map(|m| {
            let wbm = rocksdb::WriteBufferManager::new_write_buffer_manager(
                usize::try_from(m.memtables).unwrap_or(usize::MAX),
                false,
            );
            db_opts.set_write_buffer_manager(&wbm);
            rocksdb::Cache::new_lru_cache(usize::try_from(m.block_cache).unwrap_or(usize::MAX))
        });
        let table = |bloom_filter: Option<bool>| {
            let mut b = match bloom_filter {
                Some(whole_key) => bloom(whole_key),
                None => BlockBasedOptions::default(),
            };
            if let Some(c) = &cache {
                b.set_block_cache(c);
            }
            b
        };

        let mut windows = Options::default();
        windows.set_merge_operator_associative("meterd.agg.v1", merge_operator);
        windows.set_block_based_table_factory(&table(Some(false)));
        windows.set_compression_type(rocksdb::DBCompressionType::Lz4);
        if windows_retention.any() {
            windows.set_compaction_filter(
                "meterd.windows.retention",
                move |_lvl: u32, k: &[u8], _v: &[u8]| {
                    if windows_retention.expired(k, crate::window::now_ms()) {
                        rocksdb::CompactionDecision::Remove
                    } else {
                        rocksdb::CompactionDecision::Keep
                    }
                },
            );
            // Rows in files no write touches any more are still removed: such files are
            // compacted daily, which runs the filter.
            windows.set_periodic_compaction_seconds(86_400);
        }

        let mut dedupe = Options::default();
        // Dedupe lookups skip the block cache (`multi_get_sorted`), and RocksDB applies
        // that to filter and index blocks too: once the LRU evicted a file's filter, every
        // lookup read and parsed the whole filter again (megabytes per file), and the CPU
        // per event grew with the data (T2 fell from 18k to 7k req/s within a few million
        // ids). Pinned, they stay in the cache (and in its usage) while their file lives:
        // about 1.6 bytes per remembered id (the filter plus the index; docs/durability.md,
        // Memory).
        let mut dedupe_table = table(Some(true));
        dedupe_table.set_unpartitioned_pinning_tier(rocksdb::BlockBasedTablePinningTier::All);
        // Ribbon filters below L0 (about 30% smaller than bloom at the same false-positive
        // rate, built by compactions; flushes keep the cheaper bloom), and 16 KiB data
        // blocks (a quarter of the index entries). Almost every lookup is for a new id
        // and stops at the filters, one per sorted run: at a bloom-equivalent
        // 16 bits per id (false positives about 0.05% per file) the rare false positive
        // is what reads and decompresses a block. At 10 bits it was 3.4k of a single
        // event's 94k instructions on a daemon holding 6M ids; at 16, 0.2k.
        dedupe_table.set_hybrid_ribbon_filter(16.0, 1);
        dedupe_table.set_block_size(16 << 10);
        dedupe.set_block_based_table_factory(&dedupe_table);
        // Universal (size-tiered) compaction: dedupe keys are hashes, so every new file
        // overlaps the whole key range, and leveled compaction rewrote the next level in
        // full for each batch of L0 files. Filling a daemon with 30 million ids
        // (`benches/aged-profile.sh`), the dedupe compactions wrote 6.7-6.8 GB with
        // leveled and 3.1 GB with universal, and the daemon's CPU per event (compactions
        // included) fell from 7.0-7.2 to 5.6 us. A lookup probes one filter per sorted
        // run, as leveled probes one per L0 file and level: at 6M ids a single event
        // cost 82.6k instructions against 84.1k with leveled, at 30M 86.5k against
        // 80.0k (more runs at rest than leveled had files and levels; compacting from 4
        // runs instead of 8 gave that back but wrote more than leveled did). A data dir
        // written with leveled compaction opens as is: each of its levels becomes a
        // sorted run. The cost is disk headroom: a compaction of the oldest runs needs
        // free space for its output (docs/durability.md, Disk).
        dedupe.set_compaction_style(rocksdb::DBCompactionStyle::Universal);
        // Memtables of 32 MiB (RocksDB's default is 64) and compaction from 8 sorted runs
        // (default 4): fewer, larger merges, and half the memtable held in RAM (16 MiB
        // memtables with 4 runs quadrupled the rewriting under leveled compaction;
        // benches/analysis.md).
        dedupe.set_write_buffer_size(32 << 20);
        dedupe.set_level_zero_file_num_compaction_trigger(8);
        dedupe.set_level_zero_slowdown_writes_trigger(24);
        dedupe.set_level_zero_stop_writes_trigger(40);
        dedupe.set_compression_type(rocksdb::DBCompressionType::Lz4);
        // Almost every lookup is for a new id: a memtable bloom filter answers those
        // without walking the skiplist.
        dedupe.set_memtable_prefix_bloom_ratio(0.1);
        dedupe.set_memtable_whole_key_filtering(true);
        let retention_ms = dedupe_retention.as_millis() as i64;
        dedupe.set_compaction_filter(
            "meterd.dedupe.retention",
            move |_lvl: u32, _k: &[u8], v: &[u8]| match records::dedupe_accepted_ms(v) {
                Some(at) if at + retention_ms < crate::window::now_ms() => {
                    rocksdb::CompactionDecision::Remove
                }
                _ => rocksdb::CompactionDecision::Keep,
            },
        );
        // Expired records sitting in cold files are still removed: files untouched for a
        // day are compacted periodically, which runs the filter.
        dedupe.set_periodic_compaction_seconds(86_400);

        let mut quota = Options::default();
        quota.set_merge_operator_associative("meterd.agg.v1", merge_operator);
        if let Some(keep) = windows_retention.quota_periods {
            let keep_ms = keep.as_millis() as i64;
            quota.set_compaction_filter(
                "meterd.quota.retention",
                move |_lvl: u32, k: &[u8], _v: &[u8]| {
                    use quota_keys::StoredKey;
                    let end = match StoredKey::decode(k) {
                        Some(StoredKey::Usage(u) | StoredKey::Granted(u)) => u.end,
                        Some(StoredKey::Notified(n)) => n.row.end,
                        _ => i64::MAX,
                    };
                    if end != i64::MAX && end.saturating_add(keep_ms) < crate::window::now_ms() {
                        rocksdb::CompactionDecision::Remove
                    } else {
                        rocksdb::CompactionDecision::Keep
                    }
                },
            );
            quota.set_periodic_compaction_seconds(86_400);
        }
        quota.set_block_based_table_factory(&table(None));
        // `quota` keeps RocksDB's skip list: it is written once a second per changed row
        // (the journal's fold of the quota log), by merges on few distinct keys.

        // `quota_log` gets one record per journal write (the write's quota operands) and
        // a range deletion per fold, about a second later; it is read only at start-up.
        // A vector memtable appends each record; a small one (4 MiB) keeps the memory
        // its folded records hold low, and its flushes write little (a record and the
        // deletion covering it are dropped together when both are in the memtable).
        let mut quota_log = Options::default();
        quota_log.set_block_based_table_factory(&table(None));
        quota_log.set_memtable_factory(rocksdb::MemtableFactory::Vector);
        quota_log.set_write_buffer_size(4 << 20);

        // `journal` is written on every commit and read only at start-up (a full scan).
        // It keeps RocksDB's skip list: its keys (sequence numbers) arrive in order, and
        // the skip list inserts a key that follows the previous one without a search (it
        // keeps the last insert's position), while its flush needs no sort. A vector
        // memtable appends as cheaply but sorts at flush, and the sort is not cheaper for
        // sorted input: at 20k single events/s a 67 MB journal memtable (716k records)
        // took 310-320 ms of the server's one CPU to flush, and each such flush was a slow
        // episode of up to 44 ms in T5; with the skip list the flushes took 57-61 ms, at
        // the same callgrind cost per event (75.5k against 75.0k per single event, 19.2k
        // against 19.4k per batched one: within 1%). benches/analysis.md.
        let mut journal = Options::default();
        journal.set_block_based_table_factory(&table(None));
        let mut admin = Options::default();
        admin.set_block_based_table_factory(&table(None));
        let mut meta = Options::default();
        meta.set_block_based_table_factory(&table(None));
        let mut outbox = Options::default();
        outbox.set_block_based_table_factory(&table(None));
        let mut changes = Options::default();
        changes.set_block_based_table_factory(&table(None));
        let mut rowrev = Options::default();
        rowrev.set_block_based_table_factory(&table(Some(true)));
        if windows_retention.any() {
            // The feed index of a removed row goes with it: `changes` values and `rowrev`
            // keys are window keys.
            changes.set_compaction_filter(
                "meterd.changes.retention",
                move |_lvl: u32, _k: &[u8], v: &[u8]| {
                    if windows_retention.expired(v, crate::window::now_ms()) {
                        rocksdb::CompactionDecision::Remove
                    } else {
                        rocksdb::CompactionDecision::Keep
                    }
                },
            );
            changes.set_periodic_compaction_seconds(86_400);
            rowrev.set_compaction_filter(
                "meterd.rowrev.retention",
                move |_lvl: u32, k: &[u8], _v: &[u8]| {
                    if windows_retention.expired(k, crate::window::now_ms()) {
                        rocksdb::CompactionDecision::Remove
                    } else {
                        rocksdb::CompactionDecision::Keep
                    }
                },
            );
            rowrev.set_periodic_compaction_seconds(86_400);
        }

        let cfs = vec![
            ColumnFamilyDescriptor::new(cf::WINDOWS, windows),
            ColumnFamilyDescriptor::new(cf::JOURNAL, journal),
            ColumnFamilyDescriptor::new(cf::DEDUPE, dedupe),
            ColumnFamilyDescriptor::new(cf::ADMIN, admin),
            ColumnFamilyDescriptor::new(cf::META, meta),
            ColumnFamilyDescriptor::new(cf::QUOTA, quota),
            ColumnFamilyDescriptor::new(cf::QUOTA_LOG, quota_log),
            ColumnFamilyDescriptor::new(cf::OUTBOX, outbox),
            ColumnFamilyDescriptor::new(cf::CHANGES, changes),
            ColumnFamilyDescriptor::new(cf::ROWREV, rowrev),
        ];
        let db = DB::open_cf_descriptors(&db_opts, path, cfs).map_err(StoreError::classify)?;
        let store = Store { db: Arc::new(db) };
        // When compaction makes an SST obsolete, erase its filter and index blocks from
        // the block cache instead of leaving them to age out of the LRU. Dedupe files are
        // rewritten constantly (random keys), and their dead blocks otherwise held tens of
        // MiB of the cache (benches: T7's growth over 10M ids). 300 is the value RocksDB
        // names as its future default.
        for name in Store::CFS {
            store
                .db
                .set_options_cf(store.cf(name), &[("uncache_aggressiveness", "300")])
                .map_err(StoreError::classify)?;
        }
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

    /// Writes a batch; with `sync` the WAL is fsynced before returning.
    pub fn write(&self, batch: WriteBatch, sync: bool) -> Result<(), StoreError> {
        let mut wo = WriteOptions::default();
        wo.set_sync(sync);
        self.db.write_opt(batch, &wo).map_err(StoreError::classify)
    }

    /// Writes several batches as one RocksDB write (one WAL record, one `write(2)`),
    /// atomically: either every batch is applied or none is. With `sync` the WAL is
    /// fsynced before returning.
    pub fn write_all(&self, mut batches: Vec<WriteBatch>, sync: bool) -> Result<(), StoreError> {
        if batches.len() <= 1 {
            return match batches.pop() {
                Some(one) => self.write(one, sync),
                None => Ok(()),
            };
        }
        self.write(concat_batches(&batches), sync)
    }

    /// Checks that the store accepts writes: a tiny durable write (fsynced) to `meta`.
    /// Used to notice on its own that a full or failing disk is writable again.
    pub fn probe_writable(&self) -> Result<(), StoreError> {
        let mut batch = WriteBatch::default();
        batch.put_cf(
            self.cf(cf::META),
            b"probe",
            crate::window::now_ms().to_be_bytes(),
        );
        self.write(batch, true)
    }

    /// Fsyncs the write-ahead log (covering every earlier unsynced write).
    pub fn sync_wal(&self) -> Result<(), StoreError> {
        self.db.flush_wal(true).map_err(StoreError::classify)
    }

    /// Point lookups of several keys in one column family.
    pub fn multi_get(
        &self,
        cf_name: &str,
        keys: &[Vec<u8>],
    ) -> Result<Vec<Option<Vec<u8>>>, StoreError> {
        let cf = self.cf(cf_name);
        self.db
            .multi_get_cf(keys.iter().map(|k| (cf, k.as_slice())))
            .into_iter()
            .map(|r| r.map_err(StoreError::from))
            .collect()
    }

    /// Point lookups of several keys, given in ascending order (RocksDB then skips its
    /// own sort of the keys), without filling the block cache.
    pub fn multi_get_sorted(
        &self,
        cf_name: &str,
        keys: &[Vec<u8>],
    ) -> Result<Vec<Option<Vec<u8>>>, StoreError> {
        debug_assert!(keys.windows(2).all(|w| w[0] <= w[1]), "keys must be sorted");
        let cf = self.cf(cf_name);
        // Lookups of (mostly new) random ids have no locality: caching the data blocks
        // they touch would only push useful blocks out of the shared cache.
        let mut ro = ReadOptions::default();
        ro.fill_cache(false);
        if let [key] = keys {
            // One key (a single-event request): a plain lookup skips MultiGet's set-up.
            return Ok(vec![self
                .db
                .get_pinned_cf_opt(cf, key, &ro)?
                .map(|v| v.to_vec())]);
        }
        self.db
            .batched_multi_get_cf_opt(cf, keys, true, &ro)
            .into_iter()
            .map(|r| r.map(|v| v.map(|v| v.to_vec())).map_err(StoreError::from))
            .collect()
    }

    /// Reads up to `limit` entries of the changes feed of `tenant` after revision `after`
    /// whose window key passes `keep`, each with its window row's value, all in one
    /// snapshot. Returns `(revision, window key, value)`; the value is `None` for a row
    /// removed by retention.
    #[allow(clippy::type_complexity)]
    pub fn changes_after(
        &self,
        tenant: &str,
        after: u64,
        limit: usize,
        mut keep: impl FnMut(&[u8]) -> bool,
    ) -> Result<Vec<(u64, Vec<u8>, Option<Vec<u8>>)>, StoreError> {
        let snap = self.db.snapshot();
        let prefix = keys::changes_key(tenant, 0);
        let prefix = &prefix[..prefix.len() - 8];
        let start = keys::changes_key(tenant, after.saturating_add(1));
        let mut ro = ReadOptions::default();
        ro.set_snapshot(&snap);
        ro.set_iterate_lower_bound(start.clone());
        if let Some(upper) = prefix_successor(prefix) {
            ro.set_iterate_upper_bound(upper);
        }
        let windows = self.cf(cf::WINDOWS);
        let mut out = Vec::new();
        let it = self.db.iterator_cf_opt(
            self.cf(cf::CHANGES),
            ro,
            IteratorMode::From(&start, Direction::Forward),
        );
        for item in it {
            let (k, v) = item?;
            let rev = keys::changes_rev(&k, prefix.len()).ok_or(StoreError::Corrupt("changes"))?;
            if !keep(&v) {
                continue;
            }
            let value = snap.get_cf(windows, &v)?;
            out.push((rev, v.to_vec(), value));
            if out.len() >= limit {
                break;
            }
        }
        Ok(out)
    }

    /// Point lookup.
    pub fn get(&self, cf_name: &str, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.db.get_cf(self.cf(cf_name), key)?)
    }

    /// Calls `f` for every `(key, value)` whose key starts with `prefix`, starting at
    /// `start` (which must itself start with `prefix`), in key order, until `f` returns
    /// false.
    pub fn scan_prefix(
        &self,
        cf_name: &str,
        prefix: &[u8],
        start: &[u8],
        mut f: impl FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<(), StoreError> {
        let mut ro = ReadOptions::default();
        ro.set_iterate_lower_bound(start.to_vec());
        if let Some(upper) = prefix_successor(prefix) {
            ro.set_iterate_upper_bound(upper);
        }
        let it = self.db.iterator_cf_opt(
            self.cf(cf_name),
            ro,
            IteratorMode::From(start, Direction::Forward),
        );
        for item in it {
            let (k, v) = item?;
            if !k.starts_with(prefix) {
                break;
            }
            if !f(&k, &v) {
                break;
            }
        }
        Ok(())
    }

    /// Calls `f` for every key in `[from, to)` of a column family. With `fill_cache`
    /// false the blocks read do not enter the block cache (a one-time read, such as the
    /// flusher's of the journal records it deletes, would only evict useful blocks).
    pub fn scan_range(
        &self,
        cf_name: &str,
        from: &[u8],
        to: &[u8],
        fill_cache: bool,
        mut f: impl FnMut(&[u8], &[u8]),
    ) -> Result<(), StoreError> {
        let mut ro = ReadOptions::default();
        ro.fill_cache(fill_cache);
        ro.set_iterate_lower_bound(from.to_vec());
        ro.set_iterate_upper_bound(to.to_vec());
        let it = self.db.iterator_cf_opt(
            self.cf(cf_name),
            ro,
            IteratorMode::From(from, Direction::Forward),
        );
        for item in it {
            let (k, v) = item?;
            f(&k, &v);
        }
        Ok(())
    }

    /// Iterates over a whole column family.
    pub fn scan_all(
        &self,
        cf_name: &str,
        mut f: impl FnMut(&[u8], &[u8]) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        for item in self.db.iterator_cf(self.cf(cf_name), IteratorMode::Start) {
            let (k, v) = item?;
            f(&k, &v)?;
        }
        Ok(())
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

    /// Sum of a RocksDB integer property over every column family (for metrics).
    pub fn property_sum(&self, name: &str) -> u64 {
        Store::CFS
            .iter()
            .filter_map(|c| self.property_int(c, name))
            .sum()
    }

    /// Cumulative time RocksDB stalled user writes since the store was opened, in
    /// seconds (the "Cumulative stall" line of `rocksdb.dbstats`).
    pub fn write_stall_seconds(&self) -> Option<f64> {
        let text = self.db.property_value("rocksdb.dbstats").ok()??;
        parse_cumulative_stall(&text)
    }

    /// A RocksDB integer property of a column family (for metrics).
    pub fn property_int(&self, cf_name: &str, name: &str) -> Option<u64> {
        self.db
            .property_int_value_cf(self.cf(cf_name), name)
            .ok()
            .flatten()
    }

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

/// Size of a RocksDB write batch's header: a fixed64 sequence number and a fixed32
/// record count, both little-endian, followed by the records (`db/write_batch.cc`:
/// `rep_ := sequence: fixed64, count: fixed32, data: record[count]`).
const BATCH_HEADER: usize = 12;

/// Concatenates write batches into one: the records of each, in order, under one header
/// whose count is the sum of theirs (what RocksDB's `WriteBatchInternal::Append` does).
fn concat_batches(batches: &[WriteBatch]) -> WriteBatch {
    let bytes: usize = batches
        .iter()
        .map(|b| b.data().len().saturating_sub(BATCH_HEADER))
        .sum();
    let mut rep = Vec::with_capacity(BATCH_HEADER + bytes);
    rep.extend_from_slice(&[0u8; BATCH_HEADER]);
    let mut count: u32 = 0;
    for b in batches {
        let data = b.data();
        if data.len() > BATCH_HEADER {
            rep.extend_from_slice(&data[BATCH_HEADER..]);
            count += u32::try_from(b.len()).expect("a write batch counts its records in 32 bits");
        }
    }
    rep[8..BATCH_HEADER].copy_from_slice(&count.to_le_bytes());
    WriteBatch::from_data(&rep)
}

fn bloom(whole_key: bool) -> BlockBasedOptions {
    let mut b = BlockBasedOptions::default();
    b.set_bloom_filter(10.0, false);
    b.set_whole_key_filtering(whole_key);
    b.set_cache_index_and_filter_blocks(true);
    b.set_pin_l0_filter_and_index_blocks_in_cache(true);
    b
}

/// Smallest byte string greater than every string with prefix `p`, if one exists.
pub fn prefix_successor(p: &[u8]) -> Option<Vec<u8>> {
    let mut v = p.to_vec();
    while let Some(last) = v.pop() {
        if last < 0xff {
            v.push(last + 1);
            return Some(v);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::keys::{dedupe_key, id_hash};
    use crate::store::records::{encode_dedupe, EventRecord};

    #[test]
    fn merged_batches_apply_every_record_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), Duration::from_secs(3600)).unwrap();
        let mut batches = Vec::new();
        for i in 0..5u8 {
            let mut b = WriteBatch::default();
            // Later batches overwrite "shared": the last one must win, as in separate writes.
            b.put_cf(store.cf(cf::META), b"shared", [i]);
            for j in 0..=i {
                b.put_cf(store.cf(cf::ADMIN), [i, j], [j]);
            }
            if i == 3 {
                b.delete_cf(store.cf(cf::ADMIN), [1u8, 0]);
            }
            batches.push(b);
        }
        // An empty batch in the middle contributes nothing.
        batches.insert(2, WriteBatch::default());
        let records: usize = batches.iter().map(|b| b.len()).sum();
        assert_eq!(concat_batches(&batches).len(), records);
        let seq_before = store.db.latest_sequence_number();
        store.write_all(batches, true).unwrap();
        assert_eq!(store.get(cf::META, b"shared").unwrap(), Some(vec![4]));
        for i in 0..5u8 {
            for j in 0..=i {
                let want = if (i, j) == (1, 0) {
                    None
                } else {
                    Some(vec![j])
                };
                assert_eq!(store.get(cf::ADMIN, &[i, j]).unwrap(), want, "({i}, {j})");
            }
        }
        // The merged write consumed one sequence number per record, like separate writes.
        assert_eq!(
            store.db.latest_sequence_number() - seq_before,
            records as u64
        );
        // One batch and none are written as they are.
        let mut b = WriteBatch::default();
        b.put_cf(store.cf(cf::META), b"one", b"1");
        store.write_all(vec![b], false).unwrap();
        store.write_all(Vec::new(), false).unwrap();
        assert_eq!(store.get(cf::META, b"one").unwrap(), Some(b"1".to_vec()));
    }

    #[test]
    fn expired_dedupe_records_are_removed_by_compaction() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), Duration::from_secs(3600)).unwrap();
        let ev = EventRecord::sample();
        let now = crate::window::now_ms();
        let old = dedupe_key("t", id_hash("old"));
        let fresh = dedupe_key("t", id_hash("fresh"));
        let mut b = WriteBatch::default();
        b.put_cf(
            store.cf(cf::DEDUPE),
            &old,
            encode_dedupe(now - 7_200_000, "old", &ev),
        );
        b.put_cf(
            store.cf(cf::DEDUPE),
            &fresh,
            encode_dedupe(now - 60_000, "fresh", &ev),
        );
        store.write(b, true).unwrap();
        store.compact(cf::DEDUPE).unwrap();
        assert!(store.get(cf::DEDUPE, &old).unwrap().is_none());
        assert!(store.get(cf::DEDUPE, &fresh).unwrap().is_some());
    }

    /// `dedupe` files laid out by an earlier meterd's leveled compaction (in L0 and
    /// below) open under universal compaction with every record found, go on being
    /// compacted, and the result opens under leveled compaction again.
    #[test]
    fn dedupe_files_of_leveled_compaction_open_under_universal_and_back() {
        let dir = tempfile::tempdir().unwrap();
        let ev = EventRecord::sample();
        let now = crate::window::now_ms();
        let record = |i: u32| {
            let id = format!("id-{i}");
            (dedupe_key("t", id_hash(&id)), encode_dedupe(now, &id, &ev))
        };
        let leveled = || {
            let mut o = Options::default();
            o.create_if_missing(true);
            o.create_missing_column_families(true);
            o.set_disable_auto_compactions(true);
            o
        };
        // Leveled: three generations, the first compacted below L0, the others left
        // in L0.
        {
            let db = DB::open_cf(&leveled(), dir.path(), Store::CFS).unwrap();
            let h = db.cf_handle(cf::DEDUPE).unwrap();
            for gen in 0..3u32 {
                for i in gen * 1000..(gen + 1) * 1000 {
                    let (k, v) = record(i);
                    db.put_cf(h, k, v).unwrap();
                }
                db.flush_cf(h).unwrap();
                if gen == 0 {
                    db.compact_range_cf(h, None::<&[u8]>, None::<&[u8]>);
                }
            }
            let files = db.live_files().unwrap();
            let levels: Vec<i32> = files
                .iter()
                .filter(|f| f.column_family_name == cf::DEDUPE)
                .map(|f| f.level)
                .collect();
            assert_eq!(levels.iter().filter(|l| **l == 0).count(), 2, "{levels:?}");
            assert!(levels.iter().any(|l| *l > 0), "{levels:?}");
        }
        // Universal (this build): every record is there, new ones are added, and a
        // compaction runs over files of every level.
        {
            let store = Store::open(dir.path(), Duration::from_secs(3600)).unwrap();
            for i in 0..3000 {
                assert!(
                    store.get(cf::DEDUPE, &record(i).0).unwrap().is_some(),
                    "{i}"
                );
            }
            let mut b = WriteBatch::default();
            for i in 3000..4000 {
                let (k, v) = record(i);
                b.put_cf(store.cf(cf::DEDUPE), k, v);
            }
            store.write(b, true).unwrap();
            store.compact(cf::DEDUPE).unwrap();
            for i in 0..4000 {
                assert!(
                    store.get(cf::DEDUPE, &record(i).0).unwrap().is_some(),
                    "{i}"
                );
            }
            assert!(store.get(cf::DEDUPE, &record(4000).0).unwrap().is_none());
        }
        // Back under leveled compaction (an earlier meterd): still every record.
        let db = DB::open_cf(&leveled(), dir.path(), Store::CFS).unwrap();
        let h = db.cf_handle(cf::DEDUPE).unwrap();
        for i in 0..4000 {
            assert!(db.get_cf(h, record(i).0).unwrap().is_some(), "{i}");
        }
    }

    #[test]
    fn old_window_rows_are_removed_by_compaction_per_granularity() {
        use crate::store::agg::AggValue;
        use crate::store::keys::window_key;
        use crate::window::{Granularity, DAY_MS};
        let dir = tempfile::tempdir().unwrap();
        let day = Duration::from_secs(86_400);
        let retention = WindowRetention {
            minute: Some(7 * day),
            hour: Some(30 * day),
            day: None,
            quota_periods: Some(2 * day),
        };
        let store =
            Store::open_with(dir.path(), Duration::from_secs(3600), retention, None).unwrap();
        let now = crate::window::now_ms();
        let key = |g: Granularity, age_days: i64| {
            window_key("t", "c", "l", g, g.floor(now - age_days * DAY_MS), None)
        };
        // (granularity, age in days, kept?)
        let cases = [
            (Granularity::Minute, 1, true),
            (Granularity::Minute, 6, true),
            (Granularity::Minute, 8, false),
            (Granularity::Hour, 8, true),
            (Granularity::Hour, 29, true),
            (Granularity::Hour, 31, false),
            (Granularity::Day, 31, true),
            (Granularity::Day, 5000, true),
        ];
        let mut b = WriteBatch::default();
        for (g, age, _) in cases {
            b.merge_cf(
                store.cf(cf::WINDOWS),
                key(g, age),
                AggValue::Sum(1).encode(),
            );
        }
        store.write(b, true).unwrap();
        // Merge operands become values in the first compaction; the filter sees values.
        store.compact(cf::WINDOWS).unwrap();
        store.compact(cf::WINDOWS).unwrap();
        for (g, age, kept) in cases {
            let present = store.get(cf::WINDOWS, &key(g, age)).unwrap().is_some();
            assert_eq!(present, kept, "{g:?} row {age} days old");
        }
        // Keys that are not window keys are never removed.
        assert!(!retention.expired(b"garbage", now));
        // The changes-feed index of removed rows goes too.
        let old = key(Granularity::Minute, 8);
        let fresh = key(Granularity::Minute, 1);
        let mut b = WriteBatch::default();
        for (i, k) in [&old, &fresh].into_iter().enumerate() {
            b.put_cf(
                store.cf(cf::CHANGES),
                keys::changes_key("t", i as u64 + 1),
                k,
            );
            b.put_cf(store.cf(cf::ROWREV), k, (i as u64 + 1).to_be_bytes());
        }
        store.write(b, true).unwrap();
        store.compact(cf::CHANGES).unwrap();
        store.compact(cf::ROWREV).unwrap();
        let changes_1 = keys::changes_key("t", 1);
        let changes_2 = keys::changes_key("t", 2);
        assert!(store.get(cf::CHANGES, &changes_1).unwrap().is_none());
        assert!(store.get(cf::CHANGES, &changes_2).unwrap().is_some());
        assert!(store.get(cf::ROWREV, &old).unwrap().is_none());
        assert!(store.get(cf::ROWREV, &fresh).unwrap().is_some());
        // Quota period rows: ended more than 2 days ago -> removed; lifetime and grant
        // consumption rows are kept.
        use crate::quota::period::PeriodKind;
        use crate::store::quota_keys::{GrantKey, UsageKey};
        let row = |kind: PeriodKind, end: i64| {
            UsageKey::new("t".into(), "c".into(), "l".into(), kind, end - DAY_MS, end)
        };
        let ended = row(PeriodKind::Day, now - 3 * DAY_MS);
        let recent = row(PeriodKind::Day, now - DAY_MS);
        let lifetime = row(PeriodKind::Lifetime, i64::MAX);
        let grant = GrantKey {
            tenant: "t".into(),
            contract: "c".into(),
            lever: "l".into(),
            id: "g".into(),
        };
        let mut b = WriteBatch::default();
        for k in [
            ended.encode(),
            ended.encode_granted(),
            recent.encode(),
            lifetime.encode(),
            grant.encode(),
        ] {
            b.merge_cf(store.cf(cf::QUOTA), k, AggValue::Sum(1).encode());
        }
        store.write(b, true).unwrap();
        store.compact(cf::QUOTA).unwrap();
        store.compact(cf::QUOTA).unwrap();
        let has = |k: Vec<u8>| store.get(cf::QUOTA, &k).unwrap().is_some();
        assert!(!has(ended.encode()) && !has(ended.encode_granted()));
        assert!(has(recent.encode()) && has(lifetime.encode()) && has(grant.encode()));
    }

    #[test]
    fn cumulative_stall_is_parsed() {
        let text = "Uptime(secs): 1.0 total\nCumulative stall: 01:02:03.500 H:M:S, 0.0 percent\n";
        assert_eq!(parse_cumulative_stall(text), Some(3723.5));
        assert_eq!(parse_cumulative_stall("nothing"), None);
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), Duration::from_secs(3600)).unwrap();
        assert_eq!(store.write_stall_seconds(), Some(0.0));
    }

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
