//! Group commit of accepted events (durability, SPEC 2.2).
//!
//! Requests hand their write batch (journal records + dedupe records) and their quota
//! usage operands to one writer thread. The writer drains everything queued, writes the
//! batches into the RocksDB WAL (consecutive small ones merged into one write of up to
//! 1 MiB, with the quota operands of that write's requests combined per row), and, with
//! `durability = "fsync"`, fsyncs the WAL once for the whole group before answering
//! every request in it. While one fsync runs, the next group queues up, so
//! concurrent requests share fsyncs and no request pays a private one.
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
//! `flush_interval`, which bounds what a power loss can take.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use rocksdb::WriteBatch;
use tokio::sync::oneshot;

use crate::config::Durability;
use crate::counters::agg::AggValue;
use crate::hash::FastHashMap;
use crate::store::{cf, Store, StoreError};
use crate::telemetry::names;

/// Largest number of requests committed as one group.
const MAX_GROUP: usize = 4096;

/// Largest RocksDB write the writer makes of several requests' batches (RocksDB's own
/// write groups stop at 1 MiB too). A larger batch is written alone.
const MAX_MERGED_BYTES: usize = 1 << 20;

/// Merge operands for the `quota` column family: (row key, delta).
pub type QuotaOperands = Vec<(Vec<u8>, AggValue)>;

struct Commit {
    batch: WriteBatch,
    quota: QuotaOperands,
    done: oneshot::Sender<Result<(), String>>,
}

impl Commit {
    /// Approximate bytes this commit adds to a merged write.
    fn size(&self) -> usize {
        self.batch.size_in_bytes() + self.quota.iter().map(|(k, _)| k.len() + 48).sum::<usize>()
    }
}

/// Handle to the group-commit writer.
#[derive(Debug)]
pub struct Journal {
    tx: Sender<Commit>,
    next_seq: AtomicU64,
    fsyncs: Arc<AtomicU64>,
}

/// Why a commit failed.
#[derive(Debug, thiserror::Error)]
pub enum CommitError {
    /// The store refused the write or the fsync.
    #[error("journal write failed: {0}")]
    Store(String),
    /// The writer has stopped (shutdown).
    #[error("journal writer stopped")]
    Stopped,
}

impl CommitError {
    /// True when the failure was a full disk.
    pub fn is_full(&self) -> bool {
        matches!(self, CommitError::Store(s) if s.starts_with("storage full"))
    }
}

impl Journal {
    /// Starts the writer thread. `first_seq` is the next unused journal sequence number.
    /// With `durability = fsync`, fsyncs start at least `group_commit_interval` apart.
    pub fn start(
        store: Store,
        durability: Durability,
        group_commit_interval: Duration,
        first_seq: u64,
    ) -> (Journal, JoinHandle<()>) {
        let (tx, rx) = crossbeam_channel::bounded::<Commit>(65_536);
        let fsyncs = Arc::new(AtomicU64::new(0));
        let counted = fsyncs.clone();
        let handle = std::thread::Builder::new()
            .name("meterd-journal".into())
            .spawn(move || writer(store, durability, group_commit_interval, rx, &counted))
            .expect("spawn journal writer");
        (
            Journal {
                tx,
                next_seq: AtomicU64::new(first_seq),
                fsyncs,
            },
            handle,
        )
    }

    /// Group-commit fsyncs made so far.
    pub fn fsyncs(&self) -> u64 {
        self.fsyncs.load(Ordering::Relaxed)
    }

    /// Sets the next sequence number (after journal replay).
    pub fn set_next(&self, seq: u64) {
        self.next_seq.store(seq, Ordering::SeqCst);
    }

    /// Reserves `n` consecutive journal sequence numbers and returns the first.
    pub fn reserve(&self, n: u64) -> u64 {
        self.next_seq.fetch_add(n, Ordering::Relaxed)
    }

    /// Commits a batch durably (per the durability mode) and returns once it is.
    pub async fn commit(&self, batch: WriteBatch) -> Result<(), CommitError> {
        self.commit_with_quota(batch, Vec::new()).await
    }

    /// Commits a batch and merge operands for the `quota` column family atomically with
    /// it. Within one RocksDB write the writer combines the operands of all its requests
    /// per row ([`AggValue::merge`] is associative and commutative, so the stored rows
    /// are exactly what per-request operands would give): at 50 requests per group on a
    /// few contracts, hundreds of operands become one per row, and the quota memtable
    /// inserts, and later sorts and merges at flush, a fraction of them.
    pub async fn commit_with_quota(
        &self,
        batch: WriteBatch,
        quota: QuotaOperands,
    ) -> Result<(), CommitError> {
        let (done, wait) = oneshot::channel();
        self.tx
            .send(Commit { batch, quota, done })
            .map_err(|_| CommitError::Stopped)?;
        match wait.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(CommitError::Store(e)),
            Err(_) => Err(CommitError::Stopped),
        }
    }

    /// Same as [`Journal::commit`], for blocking callers (recovery, tests).
    pub fn commit_blocking(&self, batch: WriteBatch) -> Result<(), CommitError> {
        self.commit_blocking_with_quota(batch, Vec::new())
    }

    /// Same as [`Journal::commit_with_quota`], for blocking callers.
    pub fn commit_blocking_with_quota(
        &self,
        batch: WriteBatch,
        quota: QuotaOperands,
    ) -> Result<(), CommitError> {
        let (done, wait) = oneshot::channel();
        self.tx
            .send(Commit { batch, quota, done })
            .map_err(|_| CommitError::Stopped)?;
        match wait.blocking_recv() {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(CommitError::Store(e)),
            Err(_) => Err(CommitError::Stopped),
        }
    }
}

fn writer(
    store: Store,
    durability: Durability,
    interval: Duration,
    rx: Receiver<Commit>,
    fsyncs: &AtomicU64,
) {
    let group_size = metrics::histogram!(names::JOURNAL_GROUP_SIZE);
    let fsync_secs = metrics::histogram!(names::JOURNAL_FSYNC_SECONDS);
    let write_secs = metrics::histogram!(names::JOURNAL_WRITE_SECONDS);
    let mut group: Vec<Commit> = Vec::with_capacity(MAX_GROUP);
    let mut results: Vec<Result<(), String>> = Vec::with_capacity(MAX_GROUP);
    let mut last_sync: Option<Instant> = None;
    let mut rows: FastHashMap<Vec<u8>, AggValue> = FastHashMap::default();
    while let Ok(first) = rx.recv() {
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
            let mut end = start;
            let mut bytes = 0;
            while let Some(c) = group.get(end) {
                let size = c.size();
                if end > start && bytes + size > MAX_MERGED_BYTES {
                    break;
                }
                bytes += size;
                end += 1;
            }
            let mut batches: Vec<WriteBatch> = group[start..end]
                .iter_mut()
                .map(|c| std::mem::take(&mut c.batch))
                .collect();
            if let Some(q) = combined_quota(&store, &mut group[start..end], &mut rows) {
                batches.push(q);
            }
            let r = store.write_all(batches, false).map_err(|e| e.to_string());
            any_ok |= r.is_ok();
            results.extend(std::iter::repeat_n(r, end - start));
            start = end;
        }
        write_secs.record(started.elapsed().as_secs_f64());
        if durability == Durability::Fsync && any_ok {
            let t = Instant::now();
            last_sync = Some(t);
            let synced: Result<(), StoreError> = store.sync_wal();
            fsyncs.fetch_add(1, Ordering::Relaxed);
            fsync_secs.record(t.elapsed().as_secs_f64());
            if let Err(e) = synced {
                let msg = e.to_string();
                for r in results.iter_mut() {
                    if r.is_ok() {
                        *r = Err(msg.clone());
                    }
                }
            }
        }
        group_size.record(group.len() as f64);
        for (c, r) in group.drain(..).zip(results.drain(..)) {
            let _ = c.done.send(r);
        }
    }
}

/// The quota operands of `commits`, combined per row into one batch of merges (`None`
/// when there are none). `rows` is scratch space, left empty.
fn combined_quota(
    store: &Store,
    commits: &mut [Commit],
    rows: &mut FastHashMap<Vec<u8>, AggValue>,
) -> Option<WriteBatch> {
    let mut sorted: Vec<(Vec<u8>, AggValue)> = if let [one] = commits {
        // Alone in its write: nothing to combine with (a request reserves each row once).
        std::mem::take(&mut one.quota)
    } else {
        for c in commits.iter_mut() {
            for (key, delta) in c.quota.drain(..) {
                rows.entry(key)
                    .and_modify(|v| *v = v.merge(delta))
                    .or_insert(delta);
            }
        }
        rows.drain().collect()
    };
    if sorted.is_empty() {
        return None;
    }
    // In key order: the memtable's skip list then inserts each next to the previous one.
    sorted.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    let quota_cf = store.cf(cf::QUOTA);
    let mut batch = WriteBatch::with_capacity_bytes(sorted.len() * 96);
    for (key, value) in sorted {
        batch.merge_cf(quota_cf, key, value.encode());
    }
    Some(batch)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::cf;

    fn batch(store: &Store, key: u32) -> WriteBatch {
        let mut b = WriteBatch::default();
        b.put_cf(store.cf(cf::META), key.to_be_bytes(), b"v");
        b
    }

    #[test]
    fn paced_fsyncs_gather_the_requests_that_arrive_meanwhile() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), Duration::from_secs(3600)).unwrap();
        let interval = Duration::from_millis(200);
        let (journal, thread) = Journal::start(store.clone(), Durability::Fsync, interval, 1);
        let journal = Arc::new(journal);
        // An idle journal commits at once.
        let t0 = Instant::now();
        journal.commit_blocking(batch(&store, 0)).unwrap();
        assert_eq!(journal.fsyncs(), 1);
        // Requests arriving within the interval wait for it and share one fsync.
        let waiters: Vec<_> = (1..=8)
            .map(|i| {
                let (j, s) = (journal.clone(), store.clone());
                std::thread::spawn(move || j.commit_blocking(batch(&s, i)))
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
        let (journal, thread) = Journal::start(
            store.clone(),
            Durability::Fsync,
            Duration::from_millis(100),
            1,
        );
        journal.commit_blocking(batch(&store, 0)).unwrap();
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
                let (j, s) = (journal.clone(), store.clone());
                std::thread::spawn(move || {
                    j.commit_blocking_with_quota(batch(&s, i as u32 + 1), ops(i))
                })
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
        for (k, v) in &expected {
            let stored = store.get(cf::QUOTA, k).unwrap().expect("row written");
            assert_eq!(AggValue::decode(&stored), Some(*v), "row {k:?}");
        }
        assert!(
            journal.fsyncs() < n,
            "{} groups: commits were not grouped",
            journal.fsyncs()
        );
        // Grouped commits wrote one operand per row, not one per commit and row.
        let entries = store
            .property_int(cf::QUOTA, "rocksdb.num-entries-active-mem-table")
            .unwrap();
        assert!(entries < 4 * n, "{entries} quota operands for {n} commits");
        drop(journal);
        thread.join().unwrap();
    }

    #[test]
    fn unpaced_fsyncs_follow_each_other() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), Duration::from_secs(3600)).unwrap();
        let (journal, thread) = Journal::start(store.clone(), Durability::Fsync, Duration::ZERO, 1);
        for i in 0..5 {
            journal.commit_blocking(batch(&store, i)).unwrap();
        }
        assert_eq!(journal.fsyncs(), 5, "one fsync per sequential commit");
        // Buffered durability never fsyncs per group.
        drop(journal);
        thread.join().unwrap();
        let (journal, thread) = Journal::start(
            store.clone(),
            Durability::Buffered,
            Duration::from_millis(1),
            1,
        );
        journal.commit_blocking(batch(&store, 9)).unwrap();
        assert_eq!(journal.fsyncs(), 0);
        drop(journal);
        thread.join().unwrap();
    }
}
