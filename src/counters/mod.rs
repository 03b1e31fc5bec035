//! Sharded in-memory counters of unflushed usage.
//!
//! Each shard owns the contracts that hash to it ([`Counters::shard_of`], a pure function
//! of tenant and contract, so shards can later be handed to nodes). A shard holds, per
//! contract, the coalesced deltas of accepted events not yet written to RocksDB, plus the
//! journal records those deltas came from.
//!
//! Flushing is two-phase so that ingest is never blocked behind a RocksDB write:
//! 1. [`Counters::begin_flush`] swaps each shard's pending deltas into a `flushing` set
//!    (under the shard lock, a pointer swap);
//! 2. the flusher writes the set's merge operands and journal deletions as one batch, then
//!    [`Counters::end_flush`] drops the `flushing` sets, both under the write side of the
//!    flush gate.
//!
//! Queries take the read side of the gate, read stored rows and then `flushing + pending`
//! under the shard lock: every delta is seen exactly once.
//!
//! Lock order: flush gate, then shard lock. The shard lock is never held across I/O or
//! `.await`.

pub mod agg;

use crate::hash::FastHashMap;
use crate::sync::lock;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};

use crate::store::records::EventRecord;
use crate::window::Granularity;
use agg::AggValue;

/// Identifies a contract across tenants.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ContractKey {
    /// Tenant name.
    pub tenant: Arc<str>,
    /// Contract id.
    pub contract: Arc<str>,
}

/// One window of one lever and bucket within a contract.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SeriesWindow {
    /// Lever name.
    pub lever: Arc<str>,
    /// Bucket.
    pub bucket: Option<Arc<str>>,
    /// Granularity.
    pub gran: Granularity,
    /// Window start (epoch ms, UTC-aligned).
    pub start: i64,
}

/// Deltas of one contract.
pub type ContractDeltas = FastHashMap<SeriesWindow, AggValue>;

/// One window's unflushed delta and the highest revision of the journal records it
/// came from (cluster mode stamps the row with it: [`crate::revision`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delta {
    /// The combined contribution.
    pub value: AggValue,
    /// The highest revision of its records.
    pub rev: u64,
}

impl Delta {
    /// `self` then `later`.
    fn merge(self, later: Delta) -> Delta {
        Delta {
            value: self.value.merge(later.value),
            rev: self.rev.max(later.rev),
        }
    }
}

/// Deltas of one contract with their revisions.
pub type RevDeltas = FastHashMap<SeriesWindow, Delta>;

/// A set of deltas taken out of a shard for flushing, with the journal records it
/// covers.
#[derive(Debug, Default)]
pub struct FlushSet {
    /// Deltas per contract.
    pub deltas: FastHashMap<ContractKey, RevDeltas>,
    /// Journal sequence numbers whose events are all in `deltas`.
    pub journal: Vec<u64>,
}

#[derive(Debug, Default)]
struct Shard {
    pending: FastHashMap<ContractKey, RevDeltas>,
    journal: Vec<u64>,
    flushing: Option<Arc<FlushSet>>,
    entries: usize,
}

/// The sharded counters.
#[derive(Debug)]
pub struct Counters {
    shards: Box<[Mutex<Shard>]>,
    gate: RwLock<()>,
    entries: AtomicUsize,
    max_seq: AtomicU64,
}

impl Counters {
    /// Creates `n` empty shards.
    pub fn new(n: usize) -> Counters {
        Counters {
            shards: (0..n.max(1))
                .map(|_| Mutex::new(Shard::default()))
                .collect(),
            gate: RwLock::new(()),
            entries: AtomicUsize::new(0),
            max_seq: AtomicU64::new(0),
        }
    }

    /// The shard owning `contract` of `tenant`: a pure function of the two ids and the
    /// shard count.
    pub fn shard_of(&self, tenant: &str, contract: &str) -> usize {
        shard_of(tenant, contract, self.shards.len())
    }

    /// Number of in-memory window entries not yet flushed (a gauge).
    pub fn pending_entries(&self) -> usize {
        self.entries.load(Ordering::Relaxed)
    }

    /// Highest journal sequence number applied so far. Every delta in memory or in a flush
    /// set comes from a sequence number at or below it.
    pub fn max_seq(&self) -> u64 {
        self.max_seq.load(Ordering::SeqCst)
    }

    /// Adds the contributions of committed events (all owned by `shard`) and records
    /// that journal record `seq`, of revision `rev` (cluster mode: its stream message's;
    /// otherwise `seq`), is covered by the pending deltas.
    pub fn apply(
        &self,
        shard: usize,
        seq: u64,
        rev: u64,
        tenant: &Arc<str>,
        events: &[EventRecord],
    ) {
        let mut s = lock(&self.shards[shard]);
        let mut added = 0usize;
        // Consecutive events usually share contract and lever: reuse the interned Arcs.
        let mut last: Option<(ContractKey, Arc<str>)> = None;
        for e in events {
            let (ck, lever) = match &last {
                Some((ck, lv)) if *ck.contract == *e.contract && **lv == *e.lever => {
                    (ck.clone(), lv.clone())
                }
                _ => {
                    let ck = ContractKey {
                        tenant: tenant.clone(),
                        contract: Arc::from(e.contract.as_str()),
                    };
                    let lv: Arc<str> = Arc::from(e.lever.as_str());
                    last = Some((ck.clone(), lv.clone()));
                    (ck, lv)
                }
            };
            let bucket: Option<Arc<str>> = e.bucket.as_deref().map(Arc::from);
            let v = Delta {
                value: AggValue::of_event(
                    e.aggregation,
                    crate::decimal::Amount(e.value),
                    e.time_ms,
                    e.ordinal,
                ),
                rev,
            };
            let deltas = s.pending.entry(ck).or_default();
            for gran in Granularity::ALL {
                let key = SeriesWindow {
                    lever: lever.clone(),
                    bucket: bucket.clone(),
                    gran,
                    start: gran.floor(e.time_ms),
                };
                match deltas.get_mut(&key) {
                    Some(cur) => *cur = cur.merge(v),
                    None => {
                        deltas.insert(key, v);
                        added += 1;
                    }
                }
            }
        }
        s.journal.push(seq);
        self.max_seq.fetch_max(seq, Ordering::SeqCst);
        s.entries += added;
        self.entries.fetch_add(added, Ordering::Relaxed);
    }

    /// Phase 1 of a flush: moves every shard's pending deltas into its `flushing` set and
    /// returns the sets. Shards with an unfinished previous flush are skipped.
    pub fn begin_flush(&self) -> Vec<Arc<FlushSet>> {
        let mut out = Vec::new();
        for shard in self.shards.iter() {
            let mut s = lock(shard);
            if s.flushing.is_some() || (s.pending.is_empty() && s.journal.is_empty()) {
                continue;
            }
            let set = Arc::new(FlushSet {
                deltas: std::mem::take(&mut s.pending),
                journal: std::mem::take(&mut s.journal),
            });
            self.entries.fetch_sub(s.entries, Ordering::Relaxed);
            s.entries = 0;
            s.flushing = Some(set.clone());
            out.push(set);
        }
        out
    }

    /// Takes the write side of the flush gate (held while the flush batch is written).
    pub fn gate_write(&self) -> RwLockWriteGuard<'_, ()> {
        crate::sync::write(&self.gate)
    }

    /// Takes the read side of the flush gate (held by queries).
    pub fn gate_read(&self) -> RwLockReadGuard<'_, ()> {
        crate::sync::read(&self.gate)
    }

    /// Phase 2 of a flush, after its batch is written: drops the `flushing` sets. Call
    /// with the write gate held.
    pub fn end_flush(&self) {
        for shard in self.shards.iter() {
            lock(shard).flushing = None;
        }
    }

    /// Phase 2 after a failed write: puts the `flushing` sets back into pending so the
    /// next flush retries them.
    pub fn abort_flush(&self) {
        for shard in self.shards.iter() {
            let mut s = lock(shard);
            if let Some(set) = s.flushing.take() {
                let set = Arc::try_unwrap(set).unwrap_or_else(|a| FlushSet {
                    deltas: a.deltas.clone(),
                    journal: a.journal.clone(),
                });
                let mut added = 0;
                for (ck, deltas) in set.deltas {
                    let into = s.pending.entry(ck).or_default();
                    for (k, v) in deltas {
                        match into.get_mut(&k) {
                            // Older (flushing) deltas first, then newer pending ones.
                            Some(cur) => *cur = v.merge(*cur),
                            None => {
                                into.insert(k, v);
                                added += 1;
                            }
                        }
                    }
                }
                s.journal.extend(set.journal);
                s.entries += added;
                self.entries.fetch_add(added, Ordering::Relaxed);
            }
        }
    }

    /// Unflushed deltas of one contract (flushing and pending combined). Call with the
    /// read gate held, after reading the store.
    pub fn contract_deltas(&self, tenant: &str, contract: &str) -> ContractDeltas {
        let shard = self.shard_of(tenant, contract);
        let s = lock(&self.shards[shard]);
        let key = ContractKey {
            tenant: Arc::from(tenant),
            contract: Arc::from(contract),
        };
        let mut out = ContractDeltas::default();
        if let Some(f) = &s.flushing {
            if let Some(d) = f.deltas.get(&key) {
                out.extend(d.iter().map(|(k, v)| (k.clone(), v.value)));
            }
        }
        if let Some(d) = s.pending.get(&key) {
            for (k, v) in d {
                match out.get_mut(k) {
                    Some(cur) => *cur = cur.merge(v.value),
                    None => {
                        out.insert(k.clone(), v.value);
                    }
                }
            }
        }
        out
    }
}

/// The shard owning a contract: `xxh3_64(tenant, 0xff, contract) mod n`.
pub fn shard_of(tenant: &str, contract: &str, n: usize) -> usize {
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    h.update(tenant.as_bytes());
    h.update(&[0xff]);
    h.update(contract.as_bytes());
    (h.digest() % n.max(1) as u64) as usize
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::Aggregation;

    fn ev(contract: &str, value: i128, t: i64) -> EventRecord {
        EventRecord {
            contract: contract.into(),
            lever: "l".into(),
            aggregation: Aggregation::Sum,
            bucket: None,
            time_ms: t,
            value,
            ordinal: 0,
        }
    }

    #[test]
    fn a_flushed_delta_carries_the_highest_revision_of_its_records() {
        let c = Counters::new(1);
        let t: Arc<str> = Arc::from("t");
        // Cluster mode applies records out of revision order (two request threads).
        c.apply(0, 10, 7, &t, &[ev("a", 1, 0)]);
        c.apply(0, 11, 5, &t, &[ev("a", 2, 0), ev("b", 4, 0)]);
        let sets = c.begin_flush();
        let minute = SeriesWindow {
            lever: Arc::from("l"),
            bucket: None,
            gran: Granularity::Minute,
            start: 0,
        };
        let of = |contract: &str| {
            let key = ContractKey {
                tenant: t.clone(),
                contract: Arc::from(contract),
            };
            sets[0].deltas[&key][&minute]
        };
        assert_eq!(
            (of("a"), of("b")),
            (
                Delta {
                    value: AggValue::Sum(3),
                    rev: 7
                },
                Delta {
                    value: AggValue::Sum(4),
                    rev: 5
                }
            )
        );
        // A failed flush puts the deltas back with their revisions.
        c.abort_flush();
        c.apply(0, 12, 9, &t, &[ev("b", 1, 0)]);
        let sets = c.begin_flush();
        let key = ContractKey {
            tenant: t.clone(),
            contract: Arc::from("b"),
        };
        assert_eq!(sets[0].deltas[&key][&minute].rev, 9);
    }

    #[test]
    fn shard_is_pure() {
        assert_eq!(shard_of("t", "c", 64), shard_of("t", "c", 64));
        assert!(shard_of("t", "c", 64) < 64);
    }

    #[test]
    fn flush_phases_keep_each_delta_once() {
        let c = Counters::new(4);
        let t: Arc<str> = Arc::from("t");
        let s = c.shard_of("t", "a");
        c.apply(s, 1, 1, &t, &[ev("a", 5, 0)]);
        let sets = c.begin_flush();
        assert_eq!(sets.len(), 1);
        c.apply(s, 2, 2, &t, &[ev("a", 7, 0)]);
        let d = c.contract_deltas("t", "a");
        let minute = SeriesWindow {
            lever: Arc::from("l"),
            bucket: None,
            gran: Granularity::Minute,
            start: 0,
        };
        assert_eq!(d[&minute], AggValue::Sum(12));
        c.abort_flush();
        assert_eq!(c.contract_deltas("t", "a")[&minute], AggValue::Sum(12));
        let sets = c.begin_flush();
        assert_eq!(sets[0].journal, vec![2, 1]);
        c.end_flush();
        assert!(c.contract_deltas("t", "a").is_empty());
        assert_eq!(c.pending_entries(), 0);
    }
}
