//! Periodic flush of coalesced counter deltas into RocksDB windows, and start-up
//! recovery of the journal.
//!
//! A flush writes, in one atomic batch, a merge operand per dirty window and a delete per
//! journal record the deltas came from (see [`crate::counters`] for the two phases and
//! [`crate::store`] for why this is exactly-once across crashes).

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
        for seq in &set.journal {
            batch.delete_cf(journal, journal_key(*seq));
        }
    }
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
