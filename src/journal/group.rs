//! What the journal implementations share: a submitted commit, and how a group of them
//! is cut into merged writes with their quota operands combined per row.

use rocksdb::WriteBatch;
use tokio::sync::oneshot;

use super::quota_log::{add_to, QuotaOperands};
use super::{Batch, CommitError};
use crate::hash::FastHashMap;
use crate::store::agg::AggValue;

/// Largest number of requests committed as one group.
pub(super) const MAX_GROUP: usize = 4096;

/// Largest write a writer makes of several requests' batches (RocksDB's own write groups
/// stop at 1 MiB too; cluster mode publishes one stream message per merged write). A
/// larger batch is written alone.
pub(super) const MAX_MERGED_BYTES: usize = 1 << 20;

/// One submitted batch on its way to a writer thread.
pub(super) struct Commit {
    pub(super) batch: WriteBatch,
    pub(super) quota: QuotaOperands,
    pub(super) durable: bool,
    pub(super) events: Vec<u64>,
    pub(super) done: oneshot::Sender<Result<(), CommitError>>,
}

impl Commit {
    /// The commit of `batch`, answered through `done`.
    pub(super) fn new(batch: Batch<'_>, done: oneshot::Sender<Result<(), CommitError>>) -> Commit {
        Commit {
            batch: batch.rows.into_batch(),
            quota: batch.quota,
            durable: batch.durable,
            events: batch.events,
            done,
        }
    }

    /// Approximate bytes this commit adds to a merged write.
    pub(super) fn size(&self) -> usize {
        self.batch.size_in_bytes() + self.quota.iter().map(|(k, _)| k.len() + 48).sum::<usize>()
    }
}

/// The end (exclusive) of the merged write that starts at `group[start]`: consecutive
/// commits up to [`MAX_MERGED_BYTES`] together, at least one.
pub(super) fn segment_end(group: &[Commit], start: usize) -> usize {
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
    end
}

/// The quota operands of `commits`, combined per row (each request's own operands
/// when it is alone). `rows` is scratch space, left empty.
pub(super) fn combined_quota(
    commits: &mut [Commit],
    rows: &mut FastHashMap<Vec<u8>, AggValue>,
) -> QuotaOperands {
    if let [one] = commits {
        // Alone in its write: nothing to combine with (a request reserves each row once).
        return std::mem::take(&mut one.quota);
    }
    for c in commits.iter_mut() {
        for (key, delta) in c.quota.drain(..) {
            add_to(rows, key, delta);
        }
    }
    rows.drain().collect()
}
