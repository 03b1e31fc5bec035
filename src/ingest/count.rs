//! Phase "count": what a committed request changes in memory. The accepted ids go into
//! [`Unflushed`] before the claims are released (by the caller) and before the counters,
//! whose flush truncates the events records: an accepted id is always claimed, in
//! `Unflushed` or in the store. Then the notifications go to the outbox's delivery and the
//! events into their shards' counters.

use std::sync::Arc;

use crate::counters::Counters;
use crate::dedupe::{ClaimKey, Unflushed};
use crate::notify::{Entry, Outbox};
use crate::registry::Tenant;
use crate::store::records::EventRecord;

/// Records the committed request: `recent` (id, events record) pairs, the `outbox`
/// entries staged in its batch, and per shard its events record's number and events;
/// `rev` gives a record's revision ([`crate::journal::Journal::revision_of`]).
#[inline]
#[allow(clippy::too_many_arguments)] // the phase's inputs, each a different piece of state
pub(super) fn count(
    unflushed: &Unflushed,
    outbox: &Outbox,
    counters: &Counters,
    tenant: &Arc<Tenant>,
    recent: Vec<(ClaimKey, u64)>,
    staged: Vec<(u64, Entry)>,
    groups: &[(usize, u64, Vec<EventRecord>)],
    rev: impl Fn(u64) -> u64,
) {
    for (key, seq) in recent {
        unflushed.insert(key, seq);
    }
    outbox.enqueue(staged);
    for (shard, seq, events) in groups {
        counters.apply(*shard, *seq, rev(*seq), &tenant.name, events);
    }
}

#[cfg(test)]
mod tests {
    use super::super::fixture::tenant;
    use super::*;
    use crate::store::Store;
    use std::time::Duration;

    #[test]
    fn committed_events_are_remembered_and_counted() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), Duration::from_secs(3600)).unwrap();
        let outbox = Outbox::load(&store).unwrap();
        let (unflushed, counters, t) = (Unflushed::new(), Counters::new(4), tenant(None));
        let ev = EventRecord::sample();
        count(
            &unflushed,
            &outbox,
            &counters,
            &t,
            vec![((t.index, 1), 7), ((t.index, 2), 8)],
            vec![],
            &[(0, 7, vec![ev.clone()]), (1, 8, vec![ev.clone(), ev])],
            |seq| seq,
        );
        assert_eq!(unflushed.get(&(t.index, 1)), Some(7));
        assert_eq!(unflushed.get(&(t.index, 2)), Some(8));
        assert_eq!(counters.max_seq(), 8);
        let journal: Vec<u64> = counters
            .begin_flush()
            .iter()
            .flat_map(|s| s.journal.clone())
            .collect();
        assert_eq!(journal.len(), 2, "one events record per shard group");
    }
}
