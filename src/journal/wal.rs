//! [`WalJournal`]: the journal as group commit into RocksDB's write-ahead log
//! (durability, SPEC 2.2).
//!
//! Requests hand their write batch (journal records + dedupe records) and their quota
//! usage operands to one writer thread. The writer drains everything queued, writes the
//! batches into the RocksDB WAL (consecutive small ones merged into one write of up to
//! 1 MiB, with the quota operands of that write's requests combined per row into one
//! quota log record), and, with `durability = "fsync"`, fsyncs the WAL once for the whole
//! group before answering every request in it. While one fsync runs, the next group
//! queues up, so concurrent requests share fsyncs and no request pays a private one.
//!
//! Quota usage reaches the `quota` column family through the quota log
//! ([`super::quota_log`]): each write appends one record of its combined operands, and
//! the writer folds the records into `quota` about once a second. The hot rows of a busy
//! contract get one memtable entry a second instead of one per write, and a record costs
//! one append to a vector memtable.
//!
//! Fsyncs are paced: the next one starts no sooner than `group_commit_interval` (1 ms by
//! default) after the previous one started, so a busy journal fsyncs at most 1,000 times
//! a second, with groups as large as the request rate makes them, and an idle one still
//! commits at once. Every fsync costs device operations and, on virtual disks, host CPU
//! charged to the machine: unpaced, at 8k requests/s the fsyncs alone got the benchmark
//! VM throttled for 11-16 ms of every 100 ms, which set the p99 (BENCHMARKS.md).
//!
//! With `durability = "buffered"` the writer answers right after the write (the data is
//! in the OS page cache and survives `kill -9`); the flusher fsyncs the WAL every
//! `flush_interval`, which bounds what a power loss can take. A group holding a batch
//! marked [`Batch::durable`] (registry and correction writes) is fsynced in either mode.
//!
//! Events records live in the `journal` column family under their 8-byte big-endian
//! sequence numbers until the flusher deletes them ([`Journal::truncate`]).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use rocksdb::WriteBatch;
use tokio::sync::oneshot;

use super::group::{combined_quota, segment_end, Commit, MAX_GROUP};
use super::quota_log::{encode_log_record, fold_quota_log, QuotaLog};
use super::{Batch, Journal, Ticket};
use crate::config::Durability;
use crate::hash::FastHashMap;
use crate::store::agg::AggValue;
use crate::store::keys::journal_key;
use crate::store::{cf, Store, StoreError};
use crate::telemetry::names;

/// The journal as group commit into RocksDB's WAL (see the module note).
#[derive(Debug)]
pub struct WalJournal {
    store: Store,
    tx: Sender<Commit>,
    next_seq: AtomicU64,
    fsyncs: Arc<AtomicU64>,
}

impl WalJournal {
    /// Folds what an earlier run left in the quota log into `quota` (so the quota
    /// book can be loaded after this returns), then starts the writer thread.
    /// `first_seq` is the next unused journal sequence number. With
    /// `durability = fsync`, fsyncs start at least `group_commit_interval` apart.
    pub fn start(
        store: Store,
        durability: Durability,
        group_commit_interval: Duration,
        first_seq: u64,
    ) -> Result<(WalJournal, JoinHandle<()>), StoreError> {
        let log = QuotaLog::new(fold_quota_log(&store)?);
        let (tx, rx) = crossbeam_channel::bounded::<Commit>(65_536);
        let fsyncs = Arc::new(AtomicU64::new(0));
        let counted = fsyncs.clone();
        let writer_store = store.clone();
        let handle = std::thread::Builder::new()
            .name("meterd-journal".into())
            .spawn(move || {
                writer(
                    writer_store,
                    durability,
                    group_commit_interval,
                    rx,
                    &counted,
                    log,
                )
            })
            .expect("spawn journal writer");
        Ok((
            WalJournal {
                store,
                tx,
                next_seq: AtomicU64::new(first_seq),
                fsyncs,
            },
            handle,
        ))
    }
}

impl Journal for WalJournal {
    fn batch(&self, bytes: usize) -> Batch<'_> {
        Batch::new(self.store.writes(bytes))
    }

    fn submit(&self, batch: Batch<'_>) -> Ticket {
        let (done, wait) = oneshot::channel();
        let commit = Commit::new(batch, done);
        match self.tx.send(commit) {
            Ok(()) => Ticket::pending(wait),
            Err(_) => Ticket::failed(super::CommitError::Stopped),
        }
    }

    fn reserve(&self, n: u64) -> u64 {
        self.next_seq.fetch_add(n, Ordering::Relaxed)
    }

    fn set_next(&self, seq: u64) {
        self.next_seq.store(seq, Ordering::SeqCst);
    }

    fn local(&self) -> &Store {
        &self.store
    }

    fn fsyncs(&self) -> u64 {
        self.fsyncs.load(Ordering::Relaxed)
    }
}

/// The events record `seq` in the local `journal` column family.
pub(in crate::journal) fn events_record(
    store: &Store,
    seq: u64,
) -> Result<Option<Vec<u8>>, StoreError> {
    store.get(cf::JOURNAL, &journal_key(seq))
}

/// Calls `f` with every events record numbered `first..=last` in the local `journal`
/// column family, in order.
pub(in crate::journal) fn scan_events(
    store: &Store,
    first: u64,
    last: u64,
    one_time: bool,
    f: &mut super::EventsVisitor<'_>,
) -> Result<(), StoreError> {
    // Journal keys are 8 bytes: the 9-byte key sorts after `u64::MAX`.
    let end = match last.checked_add(1) {
        Some(n) => journal_key(n).to_vec(),
        None => vec![0xff; 9],
    };
    let mut failed: Option<StoreError> = None;
    store.scan_range(cf::JOURNAL, &journal_key(first), &end, !one_time, |k, v| {
        if failed.is_some() {
            return;
        }
        let r = match <[u8; 8]>::try_from(k) {
            Ok(seq) => f(u64::from_be_bytes(seq), v),
            Err(_) => Err(StoreError::Corrupt("journal")),
        };
        if let Err(e) = r {
            failed = Some(e);
        }
    })?;
    failed.map_or(Ok(()), Err)
}

fn writer(
    store: Store,
    durability: Durability,
    interval: Duration,
    rx: Receiver<Commit>,
    fsyncs: &AtomicU64,
    mut log: QuotaLog,
) {
    let group_size = metrics::histogram!(names::JOURNAL_GROUP_SIZE);
    let fsync_secs = metrics::histogram!(names::JOURNAL_FSYNC_SECONDS);
    let write_secs = metrics::histogram!(names::JOURNAL_WRITE_SECONDS);
    let mut group: Vec<Commit> = Vec::with_capacity(MAX_GROUP);
    let mut results: Vec<Result<(), Arc<StoreError>>> = Vec::with_capacity(MAX_GROUP);
    let mut last_sync: Option<Instant> = None;
    let mut rows: FastHashMap<Vec<u8>, AggValue> = FastHashMap::default();
    let mut record: Vec<u8> = Vec::new();
    loop {
        // An idle writer still folds the quota log when it is due.
        let Some(first) = log.wait_for(&store, &rx) else {
            break;
        };
        // Pacing: the next fsync starts no sooner than `interval` after the previous
        // one started; requests arriving meanwhile join this group. An idle journal
        // (last fsync longer ago) commits at once.
        if let (Durability::Fsync, Some(at)) = (durability, last_sync) {
            let wait = (at + interval).saturating_duration_since(Instant::now());
            if !wait.is_zero() {
                std::thread::sleep(wait);
            }
        }
        group.push(first);
        while group.len() < MAX_GROUP {
            match rx.try_recv() {
                Ok(c) => group.push(c),
                Err(_) => break,
            }
        }
        let started = Instant::now();
        results.clear();
        let mut any_ok = false;
        // Consecutive requests are written as one RocksDB write of up to
        // MAX_MERGED_BYTES (one WAL record and one write(2) instead of one per request).
        // A merged write is atomic, so its requests share one result.
        let mut start = 0;
        while start < group.len() {
            let end = segment_end(&group, start);
            let mut batches: Vec<WriteBatch> = group[start..end]
                .iter_mut()
                .map(|c| std::mem::take(&mut c.batch))
                .collect();
            let ops = combined_quota(&mut group[start..end], &mut rows);
            if !ops.is_empty() {
                record.clear();
                encode_log_record(&ops, &mut record);
                let mut b = store.writes(record.len() + 32);
                b.put_quota_log(log.next, &record);
                batches.push(b.into_batch());
            }
            let r = store.write_all(batches, false).map_err(Arc::new);
            if r.is_ok() {
                any_ok = true;
                log.written(ops);
            }
            results.extend(std::iter::repeat_n(r, end - start));
            start = end;
        }
        write_secs.record(started.elapsed().as_secs_f64());
        let must_sync = durability == Durability::Fsync || group.iter().any(|c| c.durable);
        if must_sync && any_ok {
            let t = Instant::now();
            last_sync = Some(t);
            let synced: Result<(), StoreError> = store.sync_wal();
            fsyncs.fetch_add(1, Ordering::Relaxed);
            fsync_secs.record(t.elapsed().as_secs_f64());
            if let Err(e) = synced {
                let e = Arc::new(e);
                for r in results.iter_mut() {
                    if r.is_ok() {
                        *r = Err(e.clone());
                    }
                }
            }
        }
        group_size.record(group.len() as f64);
        for (c, r) in group.drain(..).zip(results.drain(..)) {
            let _ = c.done.send(r.map_err(super::CommitError::Store));
        }
        // After the answers: a fold delays no request of this group.
        if log.due_in() == Some(Duration::ZERO) {
            log.fold(&store);
        }
    }
    // Shutting down: fold what is left (a failure leaves it for the next start).
    log.fold(&store);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::cf;

    use super::super::quota_log::{decode_log_record, QuotaOperands, QUOTA_FOLD_INTERVAL};
    use crate::journal::CommitError;

    /// Commits a `meta` row under `key` with `quota` operands, waiting for the answer.
    fn commit(j: &WalJournal, key: u32, quota: QuotaOperands) -> Result<(), CommitError> {
        let mut b = j.batch(64);
        b.rows().put_meta(&key.to_be_bytes(), b"v");
        for (k, v) in quota {
            b.quota(k, v);
        }
        (j as &dyn Journal).commit_blocking(b)
    }

    #[test]
    fn a_full_disk_is_recognised_by_its_variant_and_keeps_its_source() {
        use std::error::Error as _;
        let full = CommitError::Store(Arc::new(StoreError::Full("No space left".into())));
        assert!(full.is_full());
        assert!(
            full.source().is_some(),
            "the store error is kept as the source"
        );
        let corrupt = CommitError::Store(Arc::new(StoreError::Corrupt("journal")));
        assert!(!corrupt.is_full());
        assert!(!CommitError::Stopped.is_full());
    }

    #[test]
    fn paced_fsyncs_gather_the_requests_that_arrive_meanwhile() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), Duration::from_secs(3600)).unwrap();
        let interval = Duration::from_millis(200);
        let (journal, thread) =
            WalJournal::start(store.clone(), Durability::Fsync, interval, 1).unwrap();
        let journal = Arc::new(journal);
        // An idle journal commits at once.
        let t0 = Instant::now();
        commit(&journal, 0, vec![]).unwrap();
        assert_eq!(journal.fsyncs(), 1);
        // Requests arriving within the interval wait for it and share one fsync.
        let waiters: Vec<_> = (1..=8)
            .map(|i| {
                let j = journal.clone();
                std::thread::spawn(move || commit(&j, i, vec![]))
            })
            .collect();
        for w in waiters {
            w.join().unwrap().unwrap();
        }
        assert!(
            t0.elapsed() >= interval,
            "the second fsync came before the interval"
        );
        assert!(
            journal.fsyncs() <= 3,
            "{} fsyncs for 9 requests",
            journal.fsyncs()
        );
        for i in 0..=8u32 {
            assert!(store.get(cf::META, &i.to_be_bytes()).unwrap().is_some());
        }
        drop(journal);
        thread.join().unwrap();
    }

    #[test]
    fn quota_operands_of_a_group_are_combined_per_row_exactly() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), Duration::from_secs(3600)).unwrap();
        // A long pacing interval gathers the concurrent commits into few groups.
        let (journal, thread) = WalJournal::start(
            store.clone(),
            Durability::Fsync,
            Duration::from_millis(100),
            1,
        )
        .unwrap();
        commit(&journal, 0, vec![]).unwrap();
        let journal = Arc::new(journal);
        // Per commit i: a sum, a max and a latest operand on shared rows, and a row of its
        // own; the latest operands arrive out of time order.
        let ops = |i: u64| -> QuotaOperands {
            vec![
                (b"sum".to_vec(), AggValue::Sum(i as i128 + 1)),
                (b"max".to_vec(), AggValue::Max((i as i128 * 7) % 13)),
                (
                    b"latest".to_vec(),
                    AggValue::Latest {
                        time_ms: ((i * 5) % 11) as i64,
                        ordinal: i,
                        value: i as i128,
                    },
                ),
                (format!("own-{i}").into_bytes(), AggValue::Sum(1)),
            ]
        };
        let n = 40u64;
        let committers: Vec<_> = (0..n)
            .map(|i| {
                let j = journal.clone();
                std::thread::spawn(move || commit(&j, i as u32 + 1, ops(i)))
            })
            .collect();
        for c in committers {
            c.join().unwrap().unwrap();
        }
        let mut expected: FastHashMap<Vec<u8>, AggValue> = FastHashMap::default();
        for i in 0..n {
            for (k, v) in ops(i) {
                let e = expected.get(&k).map_or(v, |p| p.merge(v));
                expected.insert(k, e);
            }
        }
        assert!(
            journal.fsyncs() < n,
            "{} groups: commits were not grouped",
            journal.fsyncs()
        );
        // Grouped commits wrote one quota log record per write, not one per commit.
        let records = log_records(&store);
        assert!(
            !records.is_empty() && (records.len() as u64) < n,
            "{} quota log records for {n} commits",
            records.len()
        );
        // Each record holds one operand per row.
        for r in &records {
            let mut keys = Vec::new();
            decode_log_record(r, |k, _| keys.push(k.to_vec())).unwrap();
            let distinct: std::collections::HashSet<_> = keys.iter().collect();
            assert_eq!(distinct.len(), keys.len(), "a row twice in one record");
        }
        // The writer's last fold (at shutdown) puts exactly the fold of every operand into
        // `quota`, and empties the log.
        drop(journal);
        thread.join().unwrap();
        for (k, v) in &expected {
            let stored = store.get(cf::QUOTA, k).unwrap().expect("row written");
            assert_eq!(AggValue::decode(&stored), Some(*v), "row {k:?}");
        }
        assert!(
            log_records(&store).is_empty(),
            "folded records left in the log"
        );
        assert_eq!(
            store
                .property_int(cf::QUOTA, "rocksdb.num-entries-active-mem-table")
                .unwrap(),
            expected.len() as u64,
            "one merge per row"
        );
    }

    fn log_records(store: &Store) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        store
            .scan_all(cf::QUOTA_LOG, |_, v| {
                out.push(v.to_vec());
                Ok(())
            })
            .unwrap();
        out
    }

    #[test]
    fn an_idle_writer_folds_the_quota_log_after_the_interval() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), Duration::from_secs(3600)).unwrap();
        let (journal, thread) =
            WalJournal::start(store.clone(), Durability::Buffered, Duration::ZERO, 1).unwrap();
        let t0 = Instant::now();
        for i in 0..3 {
            commit(&journal, i, vec![(b"row".to_vec(), AggValue::Sum(2))]).unwrap();
        }
        // Committed, not yet folded: the usage is in the log only.
        assert_eq!(log_records(&store).len(), 3);
        assert_eq!(store.get(cf::QUOTA, b"row").unwrap(), None);
        // No further commit wakes the writer: it folds on its own.
        while store.get(cf::QUOTA, b"row").unwrap().is_none() {
            assert!(
                t0.elapsed() < QUOTA_FOLD_INTERVAL * 10,
                "the idle writer never folded the log"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(
            t0.elapsed() >= QUOTA_FOLD_INTERVAL,
            "folded before the interval"
        );
        let stored = store.get(cf::QUOTA, b"row").unwrap().unwrap();
        assert_eq!(AggValue::decode(&stored), Some(AggValue::Sum(6)));
        assert!(log_records(&store).is_empty());
        drop(journal);
        thread.join().unwrap();
    }

    #[test]
    fn start_folds_what_a_killed_writer_left_exactly_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), Duration::from_secs(3600)).unwrap();
        // A row already folded, and three records a killed process never folded (one of
        // them on a row of its own, one a max).
        let mut b = WriteBatch::default();
        b.merge_cf(store.cf(cf::QUOTA), b"a", AggValue::Sum(10).encode());
        let records: [QuotaOperands; 3] = [
            vec![
                (b"a".to_vec(), AggValue::Sum(1)),
                (b"m".to_vec(), AggValue::Max(4)),
            ],
            vec![
                (b"a".to_vec(), AggValue::Sum(2)),
                (b"m".to_vec(), AggValue::Max(9)),
            ],
            vec![(b"b".to_vec(), AggValue::Sum(-3))],
        ];
        for (n, ops) in records.iter().enumerate() {
            let mut rec = Vec::new();
            encode_log_record(ops, &mut rec);
            b.put_cf(store.cf(cf::QUOTA_LOG), (40 + n as u64).to_be_bytes(), rec);
        }
        store.write(b, true).unwrap();
        let value = |k: &[u8]| AggValue::decode(&store.get(cf::QUOTA, k).unwrap().unwrap());
        for _restart in 0..2 {
            let (journal, thread) =
                WalJournal::start(store.clone(), Durability::Fsync, Duration::ZERO, 1).unwrap();
            assert_eq!(value(b"a"), Some(AggValue::Sum(13)));
            assert_eq!(value(b"m"), Some(AggValue::Max(9)));
            assert_eq!(value(b"b"), Some(AggValue::Sum(-3)));
            assert!(log_records(&store).is_empty());
            drop(journal);
            thread.join().unwrap();
        }
        // The next record after a fold at start does not reuse a folded record's number.
        let (journal, thread) =
            WalJournal::start(store.clone(), Durability::Fsync, Duration::ZERO, 1).unwrap();
        commit(&journal, 1, vec![(b"a".to_vec(), AggValue::Sum(5))]).unwrap();
        drop(journal);
        thread.join().unwrap();
        assert_eq!(value(b"a"), Some(AggValue::Sum(18)));
    }

    #[test]
    fn a_corrupt_quota_log_record_stops_the_start() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), Duration::from_secs(3600)).unwrap();
        let mut b = WriteBatch::default();
        b.put_cf(
            store.cf(cf::QUOTA_LOG),
            1u64.to_be_bytes(),
            b"\x05\x00\x00\x00ab",
        );
        store.write(b, true).unwrap();
        let err =
            WalJournal::start(store.clone(), Durability::Fsync, Duration::ZERO, 1).unwrap_err();
        assert!(matches!(err, StoreError::Corrupt("quota_log")), "{err}");
    }

    #[test]
    fn quota_log_records_round_trip() {
        let ops: QuotaOperands = vec![
            (b"".to_vec(), AggValue::Sum(i128::MIN)),
            (vec![7u8; 300], AggValue::Max(3)),
            (
                b"l".to_vec(),
                AggValue::Latest {
                    time_ms: -5,
                    ordinal: u64::MAX,
                    value: 1,
                },
            ),
        ];
        let mut rec = Vec::new();
        encode_log_record(&ops, &mut rec);
        let mut back = Vec::new();
        decode_log_record(&rec, |k, v| back.push((k.to_vec(), v))).unwrap();
        assert_eq!(back, ops);
        // A record cut between two operands holds the first ones; cut anywhere else it
        // is corrupt.
        let mut ends = Vec::new();
        let mut whole = Vec::new();
        for op in &ops {
            encode_log_record(std::slice::from_ref(op), &mut whole);
            ends.push(whole.len());
        }
        for cut in 1..rec.len() {
            let mut n = 0;
            let r = decode_log_record(&rec[..cut], |_, _| n += 1);
            match ends.iter().position(|&e| e == cut) {
                Some(i) => assert_eq!((r, n), (Some(()), i + 1), "cut at {cut}"),
                None => assert_eq!(r, None, "cut at {cut}"),
            }
        }
    }

    #[test]
    fn a_durable_batch_is_fsynced_in_buffered_mode_too() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), Duration::from_secs(3600)).unwrap();
        let (journal, thread) =
            WalJournal::start(store.clone(), Durability::Buffered, Duration::ZERO, 1).unwrap();
        commit(&journal, 1, vec![]).unwrap();
        assert_eq!(
            journal.fsyncs(),
            0,
            "an ordinary buffered commit is not fsynced"
        );
        // A registry or correction write: marked durable, fsynced before its answer.
        let mut b = journal.batch(64);
        b.rows().put_meta(b"registry", b"v");
        b.durable();
        (&journal as &dyn Journal).commit_blocking(b).unwrap();
        assert_eq!(journal.fsyncs(), 1);
        drop(journal);
        thread.join().unwrap();
    }

    #[test]
    fn unpaced_fsyncs_follow_each_other() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), Duration::from_secs(3600)).unwrap();
        let (journal, thread) =
            WalJournal::start(store.clone(), Durability::Fsync, Duration::ZERO, 1).unwrap();
        for i in 0..5 {
            commit(&journal, i, vec![]).unwrap();
        }
        assert_eq!(journal.fsyncs(), 5, "one fsync per sequential commit");
        // Buffered durability never fsyncs per group.
        drop(journal);
        thread.join().unwrap();
        let (journal, thread) = WalJournal::start(
            store.clone(),
            Durability::Buffered,
            Duration::from_millis(1),
            1,
        )
        .unwrap();
        commit(&journal, 9, vec![]).unwrap();
        assert_eq!(journal.fsyncs(), 0);
        drop(journal);
        thread.join().unwrap();
    }
}
