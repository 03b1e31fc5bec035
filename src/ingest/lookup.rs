//! Phase "look up": the stored dedupe record of every claimed id, if any.
//!
//! Ids accepted since the last flush are in [`Unflushed`], their dedupe records inside the
//! journal's events records; the others are looked up in the store (one multi-get, in
//! key order). `Unflushed` is read first: an id leaves it only after its record is in the
//! store, and an events record is truncated only after its dedupe records are written
//! there, so no id falls between the two.

use super::Slot;
use crate::dedupe::Unflushed;
use crate::hash::FastHashMap;
use crate::journal::record::dedupe_records;
use crate::journal::Journal;
use crate::registry::Tenant;
use crate::store::keys::{dedupe_key, id_hash};
use crate::store::records::dedupe_id;
use crate::store::{Store, StoreError};

/// What the look-up found for the claimed slots.
pub(super) struct Found {
    /// Per claimed slot (in the order of `claimed`), its stored dedupe record.
    pub(super) records: Vec<Option<Vec<u8>>>,
    /// True when an id occurs more than once among the claimed slots.
    pub(super) repeats: bool,
}

/// Looks up the dedupe records of the ids of `slots[claimed]`.
#[inline]
pub(super) fn lookup(
    recent: &Unflushed,
    journal: &dyn Journal,
    store: &Store,
    tenant: &Tenant,
    slots: &[Slot<'_>],
    claimed: &[usize],
) -> Result<Found, StoreError> {
    // (id hash, position in `claimed`) in key order (a dedupe key is the tenant and the
    // id hash, big-endian): the lookups go in key order, which spares RocksDB's own sort
    // of the keys, and so do the dedupe records written below. Sorted once, by value.
    let mut order: Vec<(u128, u32)> = claimed
        .iter()
        .enumerate()
        .map(|(n, &i)| match &slots[i] {
            Slot::Claimed(_, k) => (k.1, n as u32),
            _ => unreachable!(),
        })
        .collect();
    order.sort_unstable();
    let repeats = order.windows(2).any(|w| w[0].0 == w[1].0);
    // Ids accepted since the last flush are in `recent`, their records in the journal.
    // `recent` is read first: an id leaves it only after its record is in `dedupe`, and a
    // journal record is deleted only after its dedupe records are written there.
    let mut records: Vec<Option<Vec<u8>>> = vec![None; claimed.len()];
    // (id hash, position) of the ids to look up in the column family, and (journal
    // record, id hash, position) of those found in `recent`.
    let mut stored: Vec<(u128, u32)> = Vec::with_capacity(order.len());
    let mut unflushed: Vec<(u64, u128, u32)> = Vec::new();
    for &(h, n) in &order {
        match recent.get(&(tenant.index, h)) {
            Some(seq) => unflushed.push((seq, h, n)),
            None => stored.push((h, n)),
        }
    }
    if !unflushed.is_empty() {
        // One read per journal record, however many of its ids the request repeats.
        unflushed.sort_unstable();
        for group in unflushed.chunk_by(|a, b| a.0 == b.0) {
            read_unflushed(journal, group, &mut records, &mut stored)?;
        }
        stored.sort_unstable();
    }
    if !stored.is_empty() {
        let keys: Vec<Vec<u8>> = stored
            .iter()
            .map(|&(h, _)| dedupe_key(&tenant.name, h))
            .collect();
        for (&(_, n), r) in stored.iter().zip(store.dedupe_get_sorted(&keys)?) {
            records[n as usize] = r;
        }
    }
    Ok(Found { records, repeats })
}

/// Fills `records` for `group` ((journal record, id hash, position) of ids found in
/// `recent`, all of one journal record) from the dedupe records that journal record
/// carries, copying only those asked for. Ids it does not carry, or all of them when the
/// flusher has deleted it meanwhile (its dedupe records are in `dedupe` then), go to
/// `stored`, to be read from the column family.
fn read_unflushed(
    journal: &dyn Journal,
    group: &[(u64, u128, u32)],
    records: &mut [Option<Vec<u8>>],
    stored: &mut Vec<(u128, u32)>,
) -> Result<(), StoreError> {
    let Some(record) = journal.events_record(group[0].0)? else {
        stored.extend(group.iter().map(|&(_, h, n)| (h, n)));
        return Ok(());
    };
    let corrupt = || crate::store::StoreError::Corrupt("journal");
    let (_, recs) = dedupe_records(&record).ok_or_else(corrupt)?;
    let mut by_hash: FastHashMap<u128, &[u8]> = FastHashMap::default();
    by_hash.reserve(recs.len());
    for r in recs {
        by_hash.insert(id_hash(dedupe_id(r).ok_or_else(corrupt)?), r);
    }
    for &(_, h, n) in group {
        match by_hash.get(&h) {
            Some(r) => records[n as usize] = Some(r.to_vec()),
            None => stored.push((h, n)),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::fixture::{event, tenant};
    use super::*;
    use crate::config::Durability;
    use crate::journal::EventsRecord;
    use crate::store::records::{encode_dedupe, EventRecord};
    use std::time::Duration;

    #[test]
    fn records_are_found_in_the_journal_or_in_the_store_and_repeats_are_noticed() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), Duration::from_secs(3600)).unwrap();
        let journal = crate::testkit::journal(&store, Durability::Buffered);
        let journal: &dyn Journal = &journal;
        let t = tenant(None);
        let recent = Unflushed::new();
        let ev = EventRecord::sample();
        // "in-journal" was accepted since the last flush: in `recent`, its record in
        // events record 5. "flushed" is in the store. "gone" is in `recent` but its
        // events record was truncated meanwhile (its record is in the store then).
        let mut batch = journal.batch(256);
        let mut rec = EventsRecord::new("t", 1);
        rec.push(10, "in-journal", &ev, &[] as &[&str]);
        batch.events(5, rec);
        batch.rows().put_dedupe(
            &dedupe_key("t", id_hash("flushed")),
            &encode_dedupe(20, "flushed", &ev),
        );
        batch.rows().put_dedupe(
            &dedupe_key("t", id_hash("gone")),
            &encode_dedupe(30, "gone", &ev),
        );
        journal.commit_blocking(batch).unwrap();
        recent.insert((t.index, id_hash("in-journal")), 5);
        recent.insert((t.index, id_hash("gone")), 6);
        let ids = ["new", "in-journal", "flushed", "gone"];
        let slots: Vec<Slot<'_>> = ids
            .iter()
            .map(|id| Slot::Claimed(event(id, "c1", "calls", None), (t.index, id_hash(id))))
            .collect();
        let claimed: Vec<usize> = (0..slots.len()).collect();
        let found = lookup(&recent, journal, &store, &t, &slots, &claimed).unwrap();
        let ms: Vec<Option<i64>> = found
            .records
            .iter()
            .map(|r| {
                r.as_deref()
                    .and_then(crate::store::records::dedupe_accepted_ms)
            })
            .collect();
        assert_eq!(ms, [None, Some(10), Some(20), Some(30)]);
        assert!(!found.repeats);
        let twice = vec![
            Slot::Claimed(event("a", "c1", "calls", None), (t.index, id_hash("a"))),
            Slot::Claimed(event("a", "c1", "calls", None), (t.index, id_hash("a"))),
        ];
        let found = lookup(&recent, journal, &store, &t, &twice, &[0, 1]).unwrap();
        assert!(found.repeats);
    }
}
