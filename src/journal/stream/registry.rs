//! [`RegistryJournal`]: registry changes (levers, plans, contracts, grants) in cluster
//! mode. Any node may write; the registry stream orders the writes.
//!
//! A write is appended on the last registry sequence this node applied. If another node
//! appended first, the condition fails and the write is refused with
//! [`CommitError::Conflict`], having stored nothing: the change was validated against a
//! registry that is no longer the latest, so the caller catches up and tries again. A
//! successful append is answered once this node's registry applier has applied it, so
//! the writer reads its own write, and every node applies registry changes in the same
//! order.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::runtime::Handle;
use tokio::sync::{oneshot, watch};

use super::{append_resolved, message, PartitionLog};
use crate::journal::{Batch, CommitError, Journal, Ticket};
use crate::store::{concat_batches, Store};

/// The partition number the registry stream's applied sequence and quota log are kept
/// under (one past the largest partition).
pub const REGISTRY: u32 = crate::config::MAX_PARTITIONS;

/// Registry changes through the registry stream (see the module note).
pub struct RegistryJournal<L> {
    store: Store,
    log: Arc<L>,
    rt: Handle,
    node: String,
    /// The last registry sequence this node's applier applied.
    applied: watch::Receiver<u64>,
    writes: AtomicU64,
    retry_for: Duration,
}

impl<L> std::fmt::Debug for RegistryJournal<L> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryJournal")
            .field("node", &self.node)
            .finish_non_exhaustive()
    }
}

impl<L: PartitionLog> RegistryJournal<L> {
    /// A registry journal appending to `log`; `applied` follows this node's registry
    /// applier.
    pub fn new(
        store: Store,
        log: Arc<L>,
        rt: Handle,
        node: String,
        applied: watch::Receiver<u64>,
        retry_for: Duration,
    ) -> RegistryJournal<L> {
        RegistryJournal {
            store,
            log,
            rt,
            node,
            applied,
            writes: AtomicU64::new(0),
            retry_for,
        }
    }
}

impl<L: PartitionLog> Journal for RegistryJournal<L> {
    fn batch(&self, bytes: usize) -> Batch<'_> {
        Batch::new(self.store.writes(bytes))
    }

    fn submit(&self, batch: Batch<'_>) -> Ticket {
        let rows = concat_batches(&[batch.rows.into_batch()]);
        let payload = message::encode_group(rows.data(), &[], 0, &batch.quota);
        let expected = *self.applied.borrow();
        // Unique across nodes and restarts: the node, a random start and a counter.
        let id = format!(
            "r.{}.{:016x}.{}",
            self.node,
            rand::random::<u64>(),
            self.writes.fetch_add(1, Ordering::Relaxed)
        );
        let (done, wait) = oneshot::channel();
        let log = self.log.clone();
        let mut applied = self.applied.clone();
        let retry_for = self.retry_for;
        self.rt.spawn(async move {
            let r = match append_resolved(&*log, REGISTRY, &id, expected, payload, retry_for).await
            {
                Ok(seq) => {
                    // Answered once this node applied it (its own write is then read).
                    match tokio::time::timeout(retry_for, applied.wait_for(|a| *a >= seq)).await {
                        Ok(Ok(_)) => Ok(()),
                        _ => Err(CommitError::InDoubt(
                            REGISTRY,
                            format!("registry change {seq} stored but not yet applied here"),
                        )),
                    }
                }
                Err(CommitError::Fenced(_)) => Err(CommitError::Conflict),
                Err(e) => Err(e),
            };
            let _ = done.send(r);
        });
        Ticket::pending(wait)
    }

    fn reserve(&self, n: u64) -> u64 {
        let _ = n;
        0
    }

    fn set_next(&self, seq: u64) {
        let _ = seq;
    }

    fn local(&self) -> &Store {
        &self.store
    }

    fn fsyncs(&self) -> u64 {
        0
    }
}
