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

use crossbeam_channel::Receiver;

use crate::config::Durability;
use crate::counters::Counters;
use crate::dedupe::{ClaimKey, Unflushed};
use crate::journal::record::{decode_events, dedupe_records};
use crate::journal::Journal;
use crate::registry::Registry;
use crate::revision::Revisions;
use crate::state::State;
use crate::store::keys::{dedupe_key, id_hash, window_key};
use crate::store::records::dedupe_id;
use crate::store::{Store, StoreError};
use crate::telemetry::names;

/// Meta key holding the highest journal sequence number whose deltas were flushed.
pub const SEQ_HWM_KEY: &[u8] = b"journal_seq_hwm";

/// Writes every pending delta to the store, stamping each changed row with a new
/// revision of its tenant ([`crate::revision`]). Returns the number of window rows
/// written.
pub fn flush_once(
    store: &Store,
    journal: &dyn Journal,
    counters: &Counters,
    revisions: &Revisions,
    recent: &Unflushed,
    registry: &Registry,
    pace: bool,
) -> Result<usize, StoreError> {
    let started = Instant::now();
    let sets = counters.begin_flush();
    // Read after the swap: every swapped delta has a sequence number at or below it.
    let hwm = counters.max_seq();
    if sets.is_empty() {
        return Ok(0);
    }
    let mut batch = store.writes(0);
    let mut rows = 0usize;
    let mut keys: Vec<(Vec<u8>, u64)> = Vec::new();
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
                v.value.encode_into(&mut value);
                batch.merge_window(&key, &value);
                keys.push((key, v.rev));
                rows += 1;
            }
        }
        seqs.extend_from_slice(&set.journal);
    }
    // The dedupe records the flushed journal records carry go into `dedupe` first, and
    // their ids leave `recent` only once the journal records are deleted.
    let runs = runs(&mut seqs);
    let moved = match move_dedupe_records(store, journal, registry, &runs, pace) {
        Ok(m) => m,
        Err(e) => {
            counters.abort_flush();
            metrics::counter!(names::FLUSH_ERRORS_TOTAL).increment(1);
            return Err(e);
        }
    };
    // One range deletion per run of consecutive records (see [`runs`]).
    for &(first, last) in &runs {
        journal.truncate(&mut batch, first, last);
    }
    // Journal sequence numbers also order `latest` ties; the high-water mark keeps them
    // increasing across restarts after the journal has been emptied.
    batch.put_meta(SEQ_HWM_KEY, &hwm.to_be_bytes());
    drop(sets);
    // Held until the write below is done (lock order: docs/design.md): revisions must be
    // committed in the order they are issued, or a changes-feed reader could see
    // revision n + 1 before n, skip n, and never apply it.
    let mut stamp = revisions.begin();
    if let Err(e) = stamp.stamp_rows(store, &mut batch, &keys) {
        counters.abort_flush();
        metrics::counter!(names::FLUSH_ERRORS_TOTAL).increment(1);
        return Err(e);
    }
    drop(keys);
    let result = {
        // Held across the write: a query must not read the stored rows after the write
        // and the swapped-out deltas before `end_flush`, or it counts them twice.
        let _gate = counters.gate_write();
        let r = store.apply(batch, false);
        match &r {
            Ok(()) => counters.end_flush(),
            Err(_) => counters.abort_flush(),
        }
        r
    };
    metrics::histogram!(names::FLUSH_SECONDS).record(started.elapsed().as_secs_f64());
    match result {
        Ok(()) => {
            for (key, seq) in &moved {
                recent.remove(key, *seq);
            }
            metrics::counter!(names::FLUSH_ROWS_TOTAL).increment(rows as u64);
            Ok(rows)
        }
        Err(e) => {
            metrics::counter!(names::FLUSH_ERRORS_TOTAL).increment(1);
            Err(e)
        }
    }
}

/// Dedupe records written per RocksDB write when the flusher moves them into `dedupe`:
/// small enough that a request's write queued behind one waits well under a millisecond.
const DEDUPE_WRITE_RECORDS: usize = 256;

/// Paced moves pause this many times as long as each write took: the flusher then takes
/// at most a tenth of a CPU while it moves dedupe records, instead of a burst of all of
/// a second's records that requests on the same CPU queue behind (at 20k single events/s,
/// T5-shaped p99 4.1-6.9 ms with 9 against 6.1-201 ms with 3; benches/analysis.md).
const DEDUPE_PACE: u32 = 9;

/// Dedupe records the flusher sorts and writes together; it holds at most this many
/// (with their journal records) in memory while it moves them.
const DEDUPE_MOVE_SLICE: usize = 65_536;

/// Writes the dedupe records carried by the journal records in `runs` (inclusive
/// sequence-number bounds) into the `dedupe` column family, and returns the ids moved
/// with their journal records.
///
/// The records go in key-sorted slices of up to [`DEDUPE_MOVE_SLICE`], in writes of
/// [`DEDUPE_WRITE_RECORDS`], not atomically with the flush's batch: a record written
/// twice (a flush that failed after some of these writes, then retried) is the same
/// bytes under the same key, and the journal records are deleted only by the flush's
/// batch, after every write here. Sorted inserts share their skip-list searches, and a
/// memtable filled in key-ordered runs flushes with far fewer cache misses than one
/// filled in random order by single requests (96-116 ms per 26 MB `dedupe` memtable
/// instead of 220-280 ms).
fn move_dedupe_records(
    store: &Store,
    journal: &dyn Journal,
    registry: &Registry,
    runs: &[(u64, u64)],
    pace: bool,
) -> Result<Vec<(ClaimKey, u64)>, StoreError> {
    let mut moved: Vec<(ClaimKey, u64)> = Vec::new();
    let mut slice = MoveSlice::default();
    for &(first, last) in runs {
        journal.scan_events(first, last, true, &mut |seq, v| {
            let (tenant, recs) = dedupe_records(v).ok_or(StoreError::Corrupt("journal"))?;
            if recs.is_empty() {
                return Ok(());
            }
            let index = registry.tenant(tenant).map(|t| t.index);
            let t = slice.tenant(tenant);
            let buf = slice.bufs.len() as u32;
            for r in &recs {
                let id = dedupe_id(r).ok_or(StoreError::Corrupt("journal"))?;
                let h = id_hash(id);
                let off = (r.as_ptr() as usize - v.as_ptr() as usize) as u32;
                slice.entries.push((t, h, buf, off, r.len() as u32));
                if let Some(i) = index {
                    moved.push(((i, h), seq));
                }
            }
            slice.bufs.push(v.to_vec());
            if slice.entries.len() >= DEDUPE_MOVE_SLICE {
                slice.write(store, pace)?;
            }
            Ok(())
        })?;
    }
    slice.write(store, pace)?;
    Ok(moved)
}

/// Dedupe records on their way from journal records to the `dedupe` column family.
#[derive(Default)]
struct MoveSlice {
    /// Key prefixes (encoded tenant names) of the records' tenants.
    tenants: Vec<Vec<u8>>,
    /// The journal records the dedupe records are read from.
    bufs: Vec<Vec<u8>>,
    /// (tenant, id hash, journal record, offset, length) per dedupe record.
    entries: Vec<(u32, u128, u32, u32, u32)>,
}

impl MoveSlice {
    /// Index of `tenant`'s key prefix.
    fn tenant(&mut self, tenant: &str) -> u32 {
        let prefix = dedupe_key(tenant, 0);
        let prefix = &prefix[..prefix.len() - 16];
        match self.tenants.iter().position(|p| p == prefix) {
            Some(i) => i as u32,
            None => {
                self.tenants.push(prefix.to_vec());
                (self.tenants.len() - 1) as u32
            }
        }
    }

    /// Writes the records in key order ([`dedupe_key`]: tenant prefix, then the hash
    /// big-endian) and empties the slice. With `pace`, it pauses after each write for
    /// [`DEDUPE_PACE`] times as long as the write took.
    fn write(&mut self, store: &Store, pace: bool) -> Result<(), StoreError> {
        let tenants = &self.tenants;
        // Journal records are read in sequence order, so `buf` orders equal keys (two ids
        // with one 128-bit hash): the later record is written last and wins, as it did
        // when each request wrote its own.
        self.entries.sort_unstable_by(|a, b| {
            tenants[a.0 as usize]
                .cmp(&tenants[b.0 as usize])
                .then(a.1.cmp(&b.1))
                .then(a.2.cmp(&b.2))
        });
        let mut key = Vec::with_capacity(64);
        for chunk in self.entries.chunks(DEDUPE_WRITE_RECORDS) {
            let mut batch = store.writes(0);
            for &(t, h, buf, off, len) in chunk {
                key.clear();
                key.extend_from_slice(&tenants[t as usize]);
                key.extend_from_slice(&h.to_be_bytes());
                let (off, len) = (off as usize, len as usize);
                batch.put_dedupe(&key, &self.bufs[buf as usize][off..off + len]);
            }
            let t = Instant::now();
            store.apply(batch, false)?;
            if pace {
                std::thread::sleep(t.elapsed() * DEDUPE_PACE);
            }
        }
        self.entries.clear();
        self.bufs.clear();
        Ok(())
    }
}

/// The runs of consecutive numbers in `seqs` (sorted here), as inclusive bounds: the
/// flusher deletes each run of journal records with one range deletion
/// ([`Journal::truncate`]).
///
/// Every number inside a run is in `seqs`, and journal sequence numbers are never
/// reused, so a run's range holds no other record: the records deleted are exactly those
/// of point deletions. Consecutive requests get consecutive numbers, so a flush's records
/// form a few runs (split only by records of requests still in flight at the swap, or by
/// numbers reserved for failed writes): a flush of 20,000 single events writes a handful
/// of range tombstones instead of 20,000 point tombstones, and the `journal` memtable
/// flushes hold the records alone, which the tombstones then drop.
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

/// Starts the flusher thread. It flushes every `interval`, and at once when `wake`
/// receives, until `stop` is closed, then flushes once more. In buffered mode it also
/// fsyncs the WAL after each flush.
pub fn start(state: Arc<State>, stop: Receiver<()>, wake: Receiver<()>) -> JoinHandle<()> {
    std::thread::Builder::new()
        .name("meterd-flush".into())
        .spawn(move || {
            let interval = state.cfg.flush_interval;
            let buffered = state.cfg.durability == Durability::Buffered;
            let mut rounds: u64 = 0;
            loop {
                rounds += 1;
                let stopping = crossbeam_channel::select! {
                    recv(stop) -> _ => true,
                    recv(wake) -> _ => false,
                    default(interval) => false,
                };
                match flush_once(
                    &state.store,
                    &*state.journal,
                    &state.counters,
                    &state.revisions,
                    &state.unflushed,
                    &state.registry,
                    // Paced unless the unflushed ids are past a quarter of their limit:
                    // then requests are about to wait for the flusher.
                    state.unflushed.len() <= state.cfg.unflushed_ids_limit() / 4,
                ) {
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
                metrics::gauge!(names::DEDUPE_UNFLUSHED).set(state.unflushed.len() as f64);
                if rounds.is_multiple_of(60) {
                    let horizon = crate::quota::quota_horizon(&state.cfg, crate::window::now_ms());
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
pub fn recover(
    store: &Store,
    journal: &dyn Journal,
    counters: &Counters,
    recent: &Unflushed,
    registry: &Registry,
) -> Result<(u64, usize), StoreError> {
    let started = Instant::now();
    let hwm = match store.meta_get(SEQ_HWM_KEY)? {
        Some(v) => u64::from_be_bytes(
            v.as_slice()
                .try_into()
                .map_err(|_| StoreError::Corrupt("meta"))?,
        ),
        None => 0,
    };
    let mut next = hwm + 1;
    let mut events = 0usize;
    journal.scan_events(0, u64::MAX, false, &mut |seq, v| {
        events += replay_record(counters, recent, registry, seq, journal.revision_of(seq), v)?;
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

/// Counts the events record `seq` (bytes `v`, revision `rev`: see
/// [`Counters::apply`]) into `counters`, and its ids into `recent` (their dedupe records
/// are in the journal until a flush moves them). Returns the number of events. Used by
/// start-up replay and, in cluster mode, by a standby for every events record it applies
/// from a partition's stream.
pub fn replay_record(
    counters: &Counters,
    recent: &Unflushed,
    registry: &Registry,
    seq: u64,
    rev: u64,
    v: &[u8],
) -> Result<usize, StoreError> {
    let (tenant, evs) = decode_events(v).ok_or(StoreError::Corrupt("journal"))?;
    // Ids whose dedupe records are still in the journal are found in `recent` until the
    // first flush moves them.
    if let Some(t) = registry.tenant(&tenant) {
        let (_, recs) = dedupe_records(v).ok_or(StoreError::Corrupt("journal"))?;
        for r in recs {
            let id = dedupe_id(r).ok_or(StoreError::Corrupt("journal"))?;
            recent.insert((t.index, id_hash(id)), seq);
        }
    }
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
    let mut events = 0;
    for (s, evs) in by_shard {
        events += evs.len();
        counters.apply(s, seq, rev, &tenant, &evs);
    }
    Ok(events)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::record::{encode_events_only, EventsRecord};
    use crate::journal::WalJournal;
    use crate::store::cf;
    use crate::store::records::{encode_dedupe_with, EventRecord};
    use std::time::Duration;

    fn wal(store: &Store) -> WalJournal {
        crate::testkit::journal(store, Durability::Buffered)
    }

    /// Writes events records straight into the journal's column family.
    fn put_records(store: &Store, records: impl IntoIterator<Item = (u64, Vec<u8>)>) {
        let mut w = store.writes(0);
        for (seq, rec) in records {
            w.put_journal(seq, &rec);
        }
        store.apply(w, false).unwrap();
    }

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

    use crate::testkit::registry;

    /// A journal record of tenant `t` carrying the dedupe records of `ids`.
    fn record_with_ids(seq: u64, ids: &[&str]) -> (Vec<u8>, Vec<Vec<u8>>) {
        let mut journal = EventsRecord::new("t", ids.len());
        let mut dedupe = Vec::new();
        for (i, id) in ids.iter().enumerate() {
            let mut ev = EventRecord::sample();
            ev.ordinal = (seq << 20) | i as u64;
            journal.push(1_000, id, &ev, &["parent"]);
            dedupe.push(encode_dedupe_with(1_000, id, &ev, &["parent"]));
        }
        (journal.finish(), dedupe)
    }

    #[test]
    fn a_flush_moves_the_dedupe_records_its_journal_records_carry() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), Duration::from_secs(3600)).unwrap();
        let counters = Counters::new(2);
        let revisions = Revisions::load(&store).unwrap();
        let registry = registry();
        let recent = Unflushed::new();
        let t = registry.tenant("t").unwrap().clone();
        let ids: [&[&str]; 3] = [&["a", "b"], &["c"], &["d", "e", "f"]];
        let mut dedupe = Vec::new();
        let mut records = Vec::new();
        for (i, ids) in ids.iter().enumerate() {
            let seq = i as u64 + 1;
            let (rec, recs) = record_with_ids(seq, ids);
            records.push((seq, rec));
            for (id, r) in ids.iter().zip(recs) {
                recent.insert((t.index, id_hash(id)), seq);
                dedupe.push((seq, *id, r));
            }
        }
        put_records(&store, records);
        let journal = wal(&store);
        let stored = |id: &str| {
            store
                .get(cf::DEDUPE, &dedupe_key("t", id_hash(id)))
                .unwrap()
        };
        // Records 1 and 3 applied (flushed); 2 still in flight.
        for seq in [1, 3] {
            counters.apply(
                seq as usize % 2,
                seq,
                seq,
                &t.name,
                &[EventRecord::sample()],
            );
        }
        flush_once(
            &store, &journal, &counters, &revisions, &recent, &registry, true,
        )
        .unwrap();
        assert_eq!(journal_seqs(&store), vec![2]);
        for (seq, id, r) in &dedupe {
            let key = (t.index, id_hash(id));
            if *seq == 2 {
                assert_eq!(stored(id), None, "{id}");
                assert_eq!(recent.get(&key), Some(2), "{id}");
            } else {
                // The very bytes the journal record carried.
                assert_eq!(stored(id).as_ref(), Some(r), "{id}");
                assert_eq!(recent.get(&key), None, "{id}");
            }
        }
        assert_eq!(recent.len(), 1);
        // A restart finds the unflushed ids in the journal again (and numbers new records
        // after the highest flushed one).
        let (counters, recent) = (Counters::new(2), Unflushed::new());
        let (next, events) = recover(&store, &journal, &counters, &recent, &registry).unwrap();
        assert_eq!((next, events, recent.len()), (4, 1, 1));
        assert_eq!(recent.get(&(t.index, id_hash("c"))), Some(2));
        // Its flush moves the last one.
        flush_once(
            &store, &journal, &counters, &revisions, &recent, &registry, true,
        )
        .unwrap();
        assert!(recent.is_empty() && journal_seqs(&store).is_empty());
        assert_eq!(stored("c").as_ref(), Some(&dedupe[2].2));
    }

    #[test]
    fn a_flush_deletes_exactly_its_journal_records() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), Duration::from_secs(3600)).unwrap();
        let counters = Counters::new(4);
        let revisions = Revisions::load(&store).unwrap();
        let (recent, registry) = (Unflushed::new(), registry());
        let journal = wal(&store);
        let flush = |c: &Counters| {
            flush_once(&store, &journal, c, &revisions, &recent, &registry, false).unwrap();
        };
        let tenant: Arc<str> = Arc::from("t");
        let ev = EventRecord::sample();
        put_records(
            &store,
            (1..=20u64).map(|seq| (seq, encode_events_only("t", std::slice::from_ref(&ev)))),
        );
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
            counters.apply(shard, seq, seq, &tenant, std::slice::from_ref(&ev));
        }
        flush(&counters);
        assert_eq!(journal_seqs(&store), vec![1, 6, 8, 11, 15, 16, 17, 18, 19]);
        // The rest once applied and flushed; nothing is left, and a record written after
        // the range deletions (a new sequence number) is untouched by them.
        for seq in [1, 6, 8, 11, 15, 16, 17, 18, 19] {
            counters.apply(0, seq, seq, &tenant, std::slice::from_ref(&ev));
        }
        flush(&counters);
        assert_eq!(journal_seqs(&store), Vec::<u64>::new());
        put_records(
            &store,
            [(21, encode_events_only("t", std::slice::from_ref(&ev)))],
        );
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
        let journal = wal(&store);
        let mut batch = store.writes(0);
        for (first, last) in runs(&mut [u64::MAX, u64::MAX - 1, 3, 4]) {
            journal.truncate(&mut batch, first, last);
        }
        assert_eq!(batch.len(), 3);
    }
}
