//! [`Partitions`]: a node's journal in cluster mode. It hands each batch to the journal
//! of the partition the batch is for, when this node owns it, and registry batches
//! (no partition) to the registry journal.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use super::StreamJournal;
use crate::journal::{Batch, CommitError, Journal, Ticket};
use crate::store::writes::Writes;
use crate::store::Store;

/// The journals of the partitions this node owns, and the registry journal.
#[derive(Debug)]
pub struct Partitions {
    store: Store,
    owned: RwLock<HashMap<u32, Arc<StreamJournal>>>,
    registry: RwLock<Option<Arc<dyn Journal>>>,
}

impl Partitions {
    /// No partition owned yet, no registry journal.
    pub fn new(store: Store) -> Partitions {
        Partitions {
            store,
            owned: RwLock::new(HashMap::new()),
            registry: RwLock::new(None),
        }
    }

    /// Batches for partition `p` go to `journal` from now on.
    pub fn own(&self, p: u32, journal: Arc<StreamJournal>) {
        crate::sync::write(&self.owned).insert(p, journal);
    }

    /// Batches for partition `p` are refused from now on ([`CommitError::NotOwner`]);
    /// returns its journal, if it was owned.
    pub fn release(&self, p: u32) -> Option<Arc<StreamJournal>> {
        crate::sync::write(&self.owned).remove(&p)
    }

    /// The journal of partition `p`, if this node owns it.
    pub fn owned(&self, p: u32) -> Option<Arc<StreamJournal>> {
        crate::sync::read(&self.owned).get(&p).cloned()
    }

    /// The partitions owned, in order.
    pub fn owned_list(&self) -> Vec<u32> {
        let mut v: Vec<u32> = crate::sync::read(&self.owned).keys().copied().collect();
        v.sort_unstable();
        v
    }

    /// Registry batches go to `journal`.
    pub fn set_registry(&self, journal: Arc<dyn Journal>) {
        *crate::sync::write(&self.registry) = Some(journal);
    }
}

impl Journal for Partitions {
    fn batch(&self, bytes: usize) -> Batch<'_> {
        Batch::new(self.store.writes(bytes))
    }

    fn submit(&self, batch: Batch<'_>) -> Ticket {
        match batch.partition {
            Some(p) => match self.owned(p) {
                Some(j) => j.submit(batch),
                None => Ticket::failed(CommitError::NotOwner(p)),
            },
            None => match crate::sync::read(&self.registry).clone() {
                Some(j) => j.submit(batch),
                None => Ticket::failed(CommitError::Stopped),
            },
        }
    }

    fn reserve(&self, n: u64) -> u64 {
        // Batches without a partition hold no events records; a number from here is
        // never written.
        let _ = n;
        0
    }

    fn reserve_in(&self, p: Option<u32>, n: u64) -> u64 {
        match p.and_then(|p| self.owned(p)) {
            Some(j) => j.reserve(n),
            // Not owned: the submit is refused, the number never written.
            None => 0,
        }
    }

    fn set_next(&self, seq: u64) {
        let _ = seq;
    }

    fn local(&self) -> &Store {
        &self.store
    }

    /// The events records and the revisions of the messages that carried them go
    /// together ([`crate::revision`]).
    fn truncate(&self, rows: &mut Writes<'_>, first: u64, last: u64) {
        rows.delete_journal(first, last);
        rows.delete_record_revs(first, last);
    }

    /// Written with the record when its message was applied (owner or standby).
    fn revision_of(&self, seq: u64) -> u64 {
        match self.store.record_rev(seq) {
            Ok(Some(rev)) => rev,
            // Not a partition's record (cannot happen once written), or a store error:
            // `seq` is in the partition's range and below every later revision.
            other => {
                tracing::error!(seq, result = ?other, "an events record has no revision");
                seq
            }
        }
    }

    fn fsyncs(&self) -> u64 {
        0
    }
}
