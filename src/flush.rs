//! Periodic flush of coalesced counter deltas into RocksDB windows, and start-up
//! recovery of the journal.
//!
//! A flush writes, in one atomic batch, a merge operand per dirty window and the deletion
//! of the journal records the deltas came from, a range deletion per run of consecutive
//! records (see [`crate::counters`] for the two phases and [`crate::store`] for why this
//! is exactly-once across crashes).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use crossbeam_channel::{Receiver, RecvTimeoutError};
use rocksdb::WriteBatch;

use crate::config::Durability;
use crate::counters::Counters;
use crate::revision::Revisions;
use crate::state::State;
use crate::store::keys::{journal_key, window_key};
use crate::store::records::decode_journal;
use crate::store::{cf, Store, StoreError};
use crate::telemetry::names;

/// Meta key holding the highest journal sequence number whose deltas were flushed.
pub const SEQ_HWM_KEY: &[u8] = b"journal_seq_hwm";

/// Writes every pending delta to the store, stamping each changed row with a new
/// revision of its tenant ([`crate::revision`]). Returns the number of window rows
/// written.
pub fn flush_once(
    store: &Store,
    counters: &Counters,
    revisions: &Revisions,
) -> Result<usize, StoreError> {
    let started = Instant::now();
    let sets = counters.begin_flush();
    // Read after the swap: every swapped delta has a sequence number at or below it.
    let hwm = counters.max_seq();
    if sets.is_empty() {
        return Ok(0);
    }
    let windows = store.cf(cf::WINDOWS);
    let journal = store.cf(cf::JOURNAL);
    let mut batch = WriteBatch::default();
    let mut rows = 0usize;
    let mut keys: Vec<Vec<u8>> = Vec::new();
    let mut value = Vec::with_capacity(33);
    let mut seqs: Vec<u64> = Vec::new();
    for set in &sets {
        for (ck, deltas) in &set.deltas {
            for (sw, v) in deltas {
                let key = window_key(
                    &ck.tenant,
                    &ck.contract,
                    &sw.lever,
                    sw.gran,
                    sw.start,
                    sw.bucket.as_deref(),
                );
                value.clear();
                v.encode_into(&mut value);
                batch.merge_cf(windows, &key, &value);
                keys.push(key);
                rows += 1;
            }
        }
        seqs.extend_from_slice(&set.journal);
    }
    delete_journal_records(&mut batch, journal, &mut seqs);
    // Journal sequence numbers also order `latest` ties; the high-water mark keeps them
    // increasing across restarts after the journal has been emptied.
    batch.put_cf(store.cf(cf::META), SEQ_HWM_KEY, hwm.to_be_bytes());
    drop(sets);
    let mut stamp = revisions.begin();
    if let Err(e) = stamp.stamp(store, &mut batch, &keys) {
        counters.abort_flush();
        metrics::counter!(names::FLUSH_ERRORS_TOTAL).increment(1);
        return Err(e);
    }
    drop(keys);
    let result = {
        let _gate = counters.gate_write();
        let r = store.write(batch, false);
        match &r {
            Ok(()) => counters.end_flush(),
            Err(_) => counters.abort_flush(),
        }
        r
    };
    metrics::histogram!(names::FLUSH_SECONDS).record(started.elapsed().as_secs_f64());
    match result {
        Ok(()) => {
            metrics::counter!(names::FLUSH_ROWS_TOTAL).increment(rows as u64);
            Ok(rows)
        }
        Err(e) => {
            metrics::counter!(names::FLUSH_ERRORS_TOTAL).increment(1);
            Err(e)
        }
    }
}

/// Adds to `batch` the deletion of journal records `seqs` (sorted here): one range
/// deletion per run of consecutive sequence numbers, a point deletion for a record alone.
///
/// Every number inside a run is in `seqs`, and journal keys are exactly the 8-byte
/// big-endian sequence numbers, never reused, so a run's range holds no other record:
/// the records deleted are exactly those of point deletions. Consecutive requests get
/// consecutive numbers, so a flush's records form a few runs (split only by records of
/// requests still in flight at the swap, or by numbers reserved for failed writes): a
/// flush of 20,000 single events writes a handful of range tombstones instead of 20,000
/// point tombstones, and the `journal` memtable flushes hold the records alone, which
/// the tombstones then drop (no tombstones left in the column family's files).
fn delete_journal_records(
    batch: &mut WriteBatch,
    journal: &rocksdb::ColumnFamily,
    seqs: &mut [u64],
) {
    for (first, last) in runs(seqs) {
        match last.checked_add(1) {
            Some(end) if last > first => {
                batch.delete_range_cf(journal, journal_key(first), journal_key(end))
            }
            _ => {
                for seq in first..=last {
                    batch.delete_cf(journal, journal_key(seq));
                }
            }
        }
    }
}

/// The runs of consecutive numbers in `seqs` (sorted here), as inclusive bounds.
fn runs(seqs: &mut [u64]) -> Vec<(u64, u64)> {
    seqs.sort_unstable();
    let mut out: Vec<(u64, u64)> = Vec::new();
    for &seq in seqs.iter() {
        match out.last_mut() {
            // A repeat cannot happen (a record belongs to one shard's set); tolerated.
            Some((_, last)) if seq == *last || Some(seq) == last.checked_add(1) => *last = seq,
            _ => out.push((seq, seq)),
        }
    }
    out
}

/// Starts the flusher thread. It flushes every `interval` until `stop` is closed, then
/// flushes once more. In buffered mode it also fsyncs the WAL after each flush.
pub fn start(state: Arc<State>, stop: Receiver<()>) -> JoinHandle<()> {
    std::thread::Builder::new()
        .name("meterd-flush".into())
        .spawn(move || {
            let interval = state.cfg.flush_interval;
            let buffered = state.cfg.durability == Durability::Buffered;
            let mut rounds: u64 = 0;
            loop {
                rounds += 1;
                let stopping =
                    !matches!(stop.recv_timeout(interval), Err(RecvTimeoutError::Timeout));
                match flush_once(&state.store, &state.counters, &state.revisions) {
                    Ok(rows) => {
                        state.last_flush_ms.store(crate::window::now_ms(), Ordering::Relaxed);
                        if rows > 0 {
                            state.storage_ok.store(true, Ordering::SeqCst);
                        }
                    }
                    Err(e) => {
                        state.storage_ok.store(false, Ordering::SeqCst);
                        tracing::error!(error = %e, "flush failed; deltas kept for the next attempt")
                    }
                }
                // A store that refused writes (disk full, I/O errors) is probed every
                // round, so readiness comes back on its own once it is writable again,
                // even with no ingest traffic to notice it.
                if !state.storage_ok.load(Ordering::SeqCst) {
                    match state.store.probe_writable() {
                        Ok(()) => {
                            tracing::warn!("store is writable again");
                            state.storage_ok.store(true, Ordering::SeqCst);
                        }
                        Err(e) => tracing::debug!(error = %e, "store still not writable"),
                    }
                }
                if buffered {
                    let t = Instant::now();
                    if let Err(e) = state.store.sync_wal() {
                        tracing::error!(error = %e, "periodic WAL fsync failed");
                    }
                    metrics::histogram!(names::JOURNAL_FSYNC_SECONDS)
                        .record(t.elapsed().as_secs_f64());
                }
                metrics::gauge!(names::COUNTERS_PENDING)
                    .set(state.counters.pending_entries() as f64);
                metrics::gauge!(names::DEDUPE_INFLIGHT).set(state.claims.len() as f64);
                if rounds.is_multiple_of(60) {
                    let horizon = crate::app::quota_horizon(&state.cfg, crate::window::now_ms());
                    state.quotas.prune(horizon);
                    metrics::gauge!(names::QUOTA_ROWS).set(state.quotas.len() as f64);
                }
                if stopping {
                    break;
                }
            }
        })
        .expect("spawn flusher")
}

/// Replays every journal record into the counters. Returns the next free journal
/// sequence number and the number of events replayed.
pub fn recover(store: &Store, counters: &Counters) -> Result<(u64, usize), StoreError> {
    let started = Instant::now();
    let hwm = match store.get(cf::META, SEQ_HWM_KEY)? {
        Some(v) => u64::from_be_bytes(
            v.as_slice()
                .try_into()
                .map_err(|_| StoreError::Corrupt("meta"))?,
        ),
        None => 0,
    };
    let mut next = hwm + 1;
    let mut events = 0usize;
    store.scan_all(cf::JOURNAL, |k, v| {
        let seq = u64::from_be_bytes(k.try_into().map_err(|_| StoreError::Corrupt("journal"))?);
        let (tenant, evs) = decode_journal(v).ok_or(StoreError::Corrupt("journal"))?;
        let tenant: Arc<str> = Arc::from(tenant.as_str());
        // Group by the current shard function (the shard count may have changed).
        let mut by_shard: Vec<(usize, Vec<_>)> = Vec::new();
        for e in evs {
            let s = counters.shard_of(&tenant, &e.contract);
            match by_shard.iter_mut().find(|(x, _)| *x == s) {
                Some((_, v)) => v.push(e),
                None => by_shard.push((s, vec![e])),
            }
        }
        for (s, evs) in by_shard {
            events += evs.len();
            counters.apply(s, seq, &tenant, &evs);
        }
        next = next.max(seq + 1);
        Ok(())
    })?;
    tracing::info!(
        events,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "journal replayed"
    );
    Ok((next, events))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::records::{encode_journal, EventRecord};
    use std::time::Duration;

    fn journal_seqs(store: &Store) -> Vec<u64> {
        let mut seqs = Vec::new();
        store
            .scan_all(cf::JOURNAL, |k, _| {
                seqs.push(u64::from_be_bytes(k.try_into().unwrap()));
                Ok(())
            })
            .unwrap();
        seqs
    }

    #[test]
    fn a_flush_deletes_exactly_its_journal_records() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), Duration::from_secs(3600)).unwrap();
        let counters = Counters::new(4);
        let revisions = Revisions::load(&store).unwrap();
        let tenant: Arc<str> = Arc::from("t");
        let ev = EventRecord::sample();
        let mut batch = WriteBatch::default();
        for seq in 1..=20u64 {
            batch.put_cf(
                store.cf(cf::JOURNAL),
                journal_key(seq),
                encode_journal("t", std::slice::from_ref(&ev)),
            );
        }
        store.write(batch, false).unwrap();
        // Applied (so flushed): runs 2-5 and 9-10, lone 7 and 20, and 12-14 on another
        // shard in reverse order; 1, 6, 8, 11 and 15-19 stay (still "in flight").
        for (shard, seq) in [
            (0, 2),
            (1, 3),
            (0, 4),
            (2, 5),
            (3, 7),
            (0, 9),
            (0, 10),
            (1, 14),
            (1, 13),
            (1, 12),
            (2, 20),
        ] {
            counters.apply(shard, seq, &tenant, std::slice::from_ref(&ev));
        }
        flush_once(&store, &counters, &revisions).unwrap();
        assert_eq!(journal_seqs(&store), vec![1, 6, 8, 11, 15, 16, 17, 18, 19]);
        // The rest once applied and flushed; nothing is left, and a record written after
        // the range deletions (a new sequence number) is untouched by them.
        for seq in [1, 6, 8, 11, 15, 16, 17, 18, 19] {
            counters.apply(0, seq, &tenant, std::slice::from_ref(&ev));
        }
        flush_once(&store, &counters, &revisions).unwrap();
        assert_eq!(journal_seqs(&store), Vec::<u64>::new());
        let mut batch = WriteBatch::default();
        batch.put_cf(
            store.cf(cf::JOURNAL),
            journal_key(21),
            encode_journal("t", std::slice::from_ref(&ev)),
        );
        store.write(batch, false).unwrap();
        assert_eq!(journal_seqs(&store), vec![21]);
    }

    #[test]
    fn journal_deletions_are_runs_of_consecutive_records() {
        assert_eq!(runs(&mut []), vec![]);
        assert_eq!(
            runs(&mut [9, 3, 4, 5, 1, u64::MAX, 8, 4]),
            vec![(1, 1), (3, 5), (8, 9), (u64::MAX, u64::MAX)]
        );
        assert_eq!(
            runs(&mut [u64::MAX, u64::MAX - 1]),
            vec![(u64::MAX - 1, u64::MAX)]
        );
        // A run ending at u64::MAX has no exclusive end key: point deletions.
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), Duration::from_secs(3600)).unwrap();
        let mut batch = WriteBatch::default();
        delete_journal_records(
            &mut batch,
            store.cf(cf::JOURNAL),
            &mut [u64::MAX, u64::MAX - 1, 3, 4],
        );
        assert_eq!(batch.len(), 3);
    }
}
