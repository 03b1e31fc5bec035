//! The quota log: quota usage of recent commits, not yet folded into `quota`.
//!
//! Each write of the journal appends one record (the combined quota operands of its
//! requests) to `quota_log`, atomically with the events it counts, and the writer keeps
//! the sum of the records not yet folded. About once a second ([`QUOTA_FOLD_INTERVAL`])
//! it folds them: one merge operand per changed row into `quota` and a range deletion of
//! the folded records, in one atomic write. A record is thus counted exactly once,
//! whether the process stops before or after its fold; what a killed process left
//! unfolded is folded at the next start ([`fold_quota_log`]), before the quota book is
//! loaded.

use std::time::{Duration, Instant};

use crate::hash::FastHashMap;
use crate::store::agg::AggValue;
use crate::store::writes::Writes;
use crate::store::{cf, Store, StoreError};
use crate::telemetry::names;

/// Merge operands for the `quota` column family: (row key, delta).
pub type QuotaOperands = Vec<(Vec<u8>, AggValue)>;

/// How long quota log records wait before the writer folds them into `quota`.
pub const QUOTA_FOLD_INTERVAL: Duration = Duration::from_secs(1);

/// Unfolded quota log records after which the writer folds sooner.
const QUOTA_FOLD_RECORDS: u64 = 8192;

/// Distinct unfolded rows after which the writer folds sooner (bounds its memory).
const QUOTA_FOLD_ROWS: usize = 1 << 18;

/// Merges `delta` into `key`'s sum in `sums` (the row's first operand starts it).
pub(super) fn add_to(sums: &mut FastHashMap<Vec<u8>, AggValue>, key: Vec<u8>, delta: AggValue) {
    sums.entry(key)
        .and_modify(|v| *v = v.merge(delta))
        .or_insert(delta);
}

/// Quota log records written but not yet folded into `quota`, summed per row.
#[derive(Debug)]
pub(super) struct QuotaLog {
    /// Sum of the unfolded records per row.
    pending: FastHashMap<Vec<u8>, AggValue>,
    /// Number of the first unfolded record.
    first: u64,
    /// Number of the next record.
    pub(super) next: u64,
    /// When the first unfolded record was written.
    since: Option<Instant>,
}

impl QuotaLog {
    pub(super) fn new(next: u64) -> QuotaLog {
        QuotaLog {
            pending: FastHashMap::default(),
            first: next,
            next,
            since: None,
        }
    }

    /// Notes that record `self.next`, holding `ops`, was written.
    pub(super) fn written(&mut self, ops: QuotaOperands) {
        if ops.is_empty() {
            return;
        }
        self.next += 1;
        self.since.get_or_insert_with(Instant::now);
        for (key, delta) in ops {
            add_to(&mut self.pending, key, delta);
        }
    }

    /// The next item from `rx` for a writer thread, folding the log whenever a fold
    /// falls due while it waits (an idle writer still folds); `None` once every sender
    /// is gone.
    pub(super) fn wait_for<T>(
        &mut self,
        store: &Store,
        rx: &crossbeam_channel::Receiver<T>,
    ) -> Option<T> {
        loop {
            match self.due_in() {
                None => return rx.recv().ok(),
                Some(wait) => match rx.recv_timeout(wait) {
                    Ok(c) => return Some(c),
                    Err(crossbeam_channel::RecvTimeoutError::Timeout) => self.fold(store),
                    Err(crossbeam_channel::RecvTimeoutError::Disconnected) => return None,
                },
            }
        }
    }

    /// `None` with nothing to fold, else how long until the fold is due.
    pub(super) fn due_in(&self) -> Option<Duration> {
        let since = self.since?;
        if self.next - self.first >= QUOTA_FOLD_RECORDS || self.pending.len() >= QUOTA_FOLD_ROWS {
            return Some(Duration::ZERO);
        }
        Some((since + QUOTA_FOLD_INTERVAL).saturating_duration_since(Instant::now()))
    }

    /// Writes the unfolded records' sums into `quota` and deletes the records, in one
    /// atomic write. On failure everything stays pending for the next attempt.
    pub(super) fn fold(&mut self, store: &Store) {
        if self.first == self.next {
            return;
        }
        let t = Instant::now();
        let batch = fold_batch(store, &self.pending, self.first, self.next);
        match store.apply(batch, false) {
            Ok(()) => {
                self.pending.clear();
                self.pending.shrink_to(1024);
                self.first = self.next;
                self.since = None;
                metrics::histogram!(names::QUOTA_FOLD_SECONDS).record(t.elapsed().as_secs_f64());
            }
            Err(e) => {
                // Retried after another interval, not at once.
                self.since = Some(Instant::now());
                tracing::error!(error = %e, "folding the quota log failed; kept for the next attempt");
            }
        }
    }
}

/// One merge per row of `sums` into `quota` (in key order) and the deletion of quota log
/// records `first..next`.
fn fold_batch<'s>(
    store: &'s Store,
    sums: &FastHashMap<Vec<u8>, AggValue>,
    first: u64,
    next: u64,
) -> Writes<'s> {
    let mut sorted: Vec<(&Vec<u8>, &AggValue)> = sums.iter().collect();
    sorted.sort_unstable_by(|a, b| a.0.cmp(b.0));
    let mut batch = store.writes(sorted.len() * 96 + 64);
    for (key, v) in sorted {
        batch.merge_quota(key, *v);
    }
    batch.delete_quota_log(first, next);
    batch
}

/// Folds every record in the quota log into `quota` (start-up: what a killed process
/// left). Returns the number for the next record.
pub fn fold_quota_log(store: &Store) -> Result<u64, StoreError> {
    fold_quota_log_range(store, 0, u64::MAX)
}

/// Folds the quota log records numbered `lo..hi` into `quota` and returns the number for
/// the next record in that range (`lo` when there were none). Cluster mode gives each
/// partition's writer its own range of record numbers ([`super::stream`]), so a node
/// that applies several partitions' journals keeps their records apart.
pub fn fold_quota_log_range(store: &Store, lo: u64, hi: u64) -> Result<u64, StoreError> {
    let mut sums: FastHashMap<Vec<u8>, AggValue> = FastHashMap::default();
    let mut first: Option<u64> = None;
    let mut next = lo;
    let mut corrupt = false;
    store.scan_range(
        cf::QUOTA_LOG,
        &lo.to_be_bytes(),
        &hi.to_be_bytes(),
        true,
        |k, v| {
            if corrupt {
                return;
            }
            let Ok(n) = <[u8; 8]>::try_from(k).map(u64::from_be_bytes) else {
                corrupt = true;
                return;
            };
            first.get_or_insert(n);
            next = n + 1;
            corrupt = decode_log_record(v, |key, delta| {
                add_to(&mut sums, key.to_vec(), delta);
            })
            .is_none();
        },
    )?;
    if corrupt {
        return Err(StoreError::Corrupt("quota_log"));
    }
    if let Some(first) = first {
        store.apply(fold_batch(store, &sums, first, next), true)?;
        tracing::info!(
            records = next - first,
            rows = sums.len(),
            "quota log folded"
        );
    }
    Ok(next)
}

/// Appends a quota log record: per operand, the key's length (u32 LE), the key, the
/// value's length (u8) and its [`AggValue`] encoding.
pub(super) fn encode_log_record(ops: &[(Vec<u8>, AggValue)], out: &mut Vec<u8>) {
    for (key, value) in ops {
        out.extend_from_slice(&(key.len() as u32).to_le_bytes());
        out.extend_from_slice(key);
        let at = out.len();
        out.push(0);
        value.encode_into(out);
        out[at] = (out.len() - at - 1) as u8;
    }
}

/// Calls `f` with each operand of a quota log record; `None` when it is corrupt.
pub(super) fn decode_log_record(mut b: &[u8], mut f: impl FnMut(&[u8], AggValue)) -> Option<()> {
    while !b.is_empty() {
        let (len, rest) = b.split_first_chunk::<4>()?;
        let len = u32::from_le_bytes(*len) as usize;
        let key = rest.get(..len)?;
        let (&vlen, rest) = rest.get(len..)?.split_first()?;
        let value = AggValue::decode(rest.get(..vlen as usize)?)?;
        f(key, value);
        b = &rest[vlen as usize..];
    }
    Some(())
}
