//! RocksDB tuning: the options of the database, of each column family (merge operators,
//! table formats and filters, memtables, compaction, the retention filters of
//! [`super::retention`]), and those set once the store is open. The comments give the
//! facts each setting rests on; the measurements that led to them are in docs/benchmarks.md
//! ("RocksDB settings: history").

use std::time::Duration;

use rocksdb::{BlockBasedOptions, ColumnFamilyDescriptor, Options};

use super::agg::merge_operator;
use super::{cf, retention, Store, StoreError};
use crate::window::WindowRetention;

/// Memory bounds for RocksDB, in bytes.
#[derive(Debug, Clone, Copy)]
pub struct MemoryBudget {
    /// Cap on all memtables together.
    pub memtables: u64,
    /// The block cache shared by every column family.
    pub block_cache: u64,
}

/// The options of the database as a whole, and the block cache every column family
/// shares when `memory` bounds RocksDB's memory.
pub(super) fn db_options(memory: Option<MemoryBudget>) -> (Options, Option<rocksdb::Cache>) {
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
    // grows toward RocksDB's default of four times all write buffers (gigabytes), and
    // start-up replays all of it. Past 512 MiB RocksDB flushes the memtables that hold
    // the oldest WAL file.
    db_opts.set_max_total_wal_size(512 << 20);
    // Writes reach the memtables from the journal's one writer thread (and rarely from
    // the flusher and admin requests), so parallel memtable inserts buy nothing; turning
    // them off lets the `quota_log` column family use a vector memtable.
    db_opts.set_allow_concurrent_memtable_write(false);
    // One block cache for every column family (by default each table factory has its
    // own), and one cap on all memtables together: RocksDB's write buffer manager
    // flushes the largest memtable when the cap is near.
    let cache = memory.map(|m| {
        let wbm = rocksdb::WriteBufferManager::new_write_buffer_manager(
            usize::try_from(m.memtables).unwrap_or(usize::MAX),
            false,
        );
        db_opts.set_write_buffer_manager(&wbm);
        rocksdb::Cache::new_lru_cache(usize::try_from(m.block_cache).unwrap_or(usize::MAX))
    });
    (db_opts, cache)
}

/// Every column family with its options. Block-based tables use `cache` when given.
pub(super) fn column_families(
    dedupe_retention: Duration,
    windows_retention: WindowRetention,
    cache: Option<&rocksdb::Cache>,
) -> Vec<ColumnFamilyDescriptor> {
    let table = |bloom_filter: Option<bool>| {
        let mut b = match bloom_filter {
            Some(whole_key) => bloom(whole_key),
            None => BlockBasedOptions::default(),
        };
        if let Some(c) = cache {
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
            retention::window_keys(windows_retention),
        );
        // Rows in files no write touches any more are still removed: such files are
        // compacted daily, which runs the filter.
        windows.set_periodic_compaction_seconds(86_400);
    }

    let mut dedupe = Options::default();
    // Dedupe lookups skip the block cache (`multi_get_sorted`), and RocksDB applies that
    // to filter and index blocks too: once the LRU evicted a file's filter, every lookup
    // read and parsed the whole filter again (megabytes per file), so the CPU per event
    // grew with the data. Pinned, they stay in the cache (and in its usage) while their
    // file lives: about 1.6 bytes per remembered id (the filter plus the index; README,
    // Memory).
    let mut dedupe_table = table(Some(true));
    dedupe_table.set_unpartitioned_pinning_tier(rocksdb::BlockBasedTablePinningTier::All);
    // Ribbon filters below L0 (about 30% smaller than bloom at the same false-positive
    // rate, built by compactions; flushes keep the cheaper bloom), and 16 KiB data
    // blocks (a quarter of the index entries). Almost every lookup is for a new id and
    // stops at the filters, one per sorted run; a false positive reads and decompresses
    // a block, so the filters are a bloom-equivalent 16 bits per id (false positives
    // about 0.05% per file; 10 bits cost measurably more per event).
    dedupe_table.set_hybrid_ribbon_filter(16.0, 1);
    dedupe_table.set_block_size(16 << 10);
    dedupe.set_block_based_table_factory(&dedupe_table);
    // Universal (size-tiered) compaction: dedupe keys are hashes, so every new file
    // overlaps the whole key range, and leveled compaction rewrote the next level in
    // full for each batch of L0 files; universal writes about half as much and costs
    // less CPU per event, at a similar lookup cost (one filter per sorted run). A data
    // dir written with leveled compaction opens as is: each of its levels becomes a
    // sorted run. The cost is disk headroom: a compaction of the oldest runs needs free
    // space for its output (README, Disk).
    dedupe.set_compaction_style(rocksdb::DBCompactionStyle::Universal);
    // Memtables of 32 MiB (RocksDB's default is 64) and compaction from 8 sorted runs
    // (default 4): fewer, larger merges, and half the memtable held in RAM.
    dedupe.set_write_buffer_size(32 << 20);
    dedupe.set_level_zero_file_num_compaction_trigger(8);
    dedupe.set_level_zero_slowdown_writes_trigger(24);
    dedupe.set_level_zero_stop_writes_trigger(40);
    dedupe.set_compression_type(rocksdb::DBCompressionType::Lz4);
    // Almost every lookup is for a new id: a memtable bloom filter answers those
    // without walking the skiplist.
    dedupe.set_memtable_prefix_bloom_ratio(0.1);
    dedupe.set_memtable_whole_key_filtering(true);
    dedupe.set_compaction_filter(
        "meterd.dedupe.retention",
        retention::dedupe(dedupe_retention),
    );
    // Expired records sitting in cold files are still removed: files untouched for a
    // day are compacted periodically, which runs the filter.
    dedupe.set_periodic_compaction_seconds(86_400);

    let mut quota = Options::default();
    quota.set_merge_operator_associative("meterd.agg.v1", merge_operator);
    if let Some(keep) = windows_retention.quota_periods {
        quota.set_compaction_filter("meterd.quota.retention", retention::quota_periods(keep));
        quota.set_periodic_compaction_seconds(86_400);
    }
    quota.set_block_based_table_factory(&table(None));
    // `quota` keeps RocksDB's skip list: it is written once a second per changed row
    // (the journal's fold of the quota log), by merges on few distinct keys.

    // `quota_log` gets one record per journal write (the write's quota operands) and a
    // range deletion per fold, about a second later; it is read only at start-up. A
    // vector memtable appends each record; a small one (4 MiB) keeps the memory its
    // folded records hold low, and its flushes write little (a record and the deletion
    // covering it are dropped together when both are in the memtable).
    let mut quota_log = Options::default();
    quota_log.set_block_based_table_factory(&table(None));
    quota_log.set_memtable_factory(rocksdb::MemtableFactory::Vector);
    quota_log.set_write_buffer_size(4 << 20);

    // `journal` is written on every commit and read only at start-up (a full scan). It
    // keeps RocksDB's skip list: its keys (sequence numbers) arrive in order, and the
    // skip list inserts a key that follows the previous one without a search (it keeps
    // the last insert's position), while its flush needs no sort. A vector memtable
    // appends as cheaply but sorts at flush, and the sort is not cheaper for sorted
    // input: its flushes took about five times as long, each a latency episode, at the
    // same cost per event.
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
            retention::window_values(windows_retention),
        );
        changes.set_periodic_compaction_seconds(86_400);
        rowrev.set_compaction_filter(
            "meterd.rowrev.retention",
            retention::window_keys(windows_retention),
        );
        rowrev.set_periodic_compaction_seconds(86_400);
    }

    vec![
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
    ]
}

/// Options set on the open store (they cannot be given at open).
pub(super) fn after_open(store: &Store) -> Result<(), StoreError> {
    // When compaction makes an SST obsolete, erase its filter and index blocks from the
    // block cache instead of leaving them to age out of the LRU. Dedupe files are
    // rewritten constantly (random keys), and their dead blocks otherwise held tens of
    // MiB of the cache. 300 is the value RocksDB names as its future default.
    for name in Store::CFS {
        store
            .db
            .set_options_cf(store.cf(name), &[("uncache_aggressiveness", "300")])
            .map_err(StoreError::classify)?;
    }
    Ok(())
}

fn bloom(whole_key: bool) -> BlockBasedOptions {
    let mut b = BlockBasedOptions::default();
    b.set_bloom_filter(10.0, false);
    b.set_whole_key_filtering(whole_key);
    b.set_cache_index_and_filter_blocks(true);
    b.set_pin_l0_filter_and_index_blocks_in_cache(true);
    b
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use rocksdb::{Options, WriteBatch, DB};

    use crate::store::keys::{dedupe_key, id_hash};
    use crate::store::records::{encode_dedupe, EventRecord};
    use crate::store::{cf, Store};

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
}
