//! Phase "commit": the decided events become one journal [`Batch`], committed durably.
//!
//! Accepted events go into one events record per counter shard, each event carrying its
//! dedupe record (the flusher moves those into the store when it truncates the record;
//! until then the ids are found through [`crate::dedupe::Unflushed`]). The quota usage the
//! decisions reserved goes in as quota operands (one per row), and threshold
//! notifications as outbox rows, so the events, their quota usage and their
//! notifications are durable together or not at all.

use std::borrow::Cow;
use std::sync::Arc;

use super::decide::Verdict;
use super::Slot;
use crate::counters::Counters;
use crate::dedupe::ClaimKey;
use crate::hash::FastHashMap;
use crate::journal::{Batch, EventsRecord, Journal};
use crate::notify::{Entry, Outbox};
use crate::quota::book::{GrantKey, Reserved};
use crate::registry::Tenant;
use crate::store::agg::AggValue;
use crate::store::records::EventRecord;

/// The bits of an events record's sequence number that go into its events' ordinals.
const ORDINAL_SEQ_MASK: u64 = (1 << 44) - 1;

/// What a request hands the journal, and what it does once the journal answers.
pub(super) struct Staged<'j> {
    /// Events records, quota operands and notifications, committed atomically.
    pub(super) batch: Batch<'j>,
    /// Per shard: its events record's sequence number and its events.
    pub(super) groups: Vec<(usize, u64, Vec<EventRecord>)>,
    /// Accepted ids and their events records, for [`crate::dedupe::Unflushed`].
    pub(super) recent: Vec<(ClaimKey, u64)>,
    /// The quota usage reserved (rolled back if the commit fails).
    pub(super) reserved: Reserved,
    /// Threshold notifications staged in the batch.
    pub(super) outbox: Vec<(u64, Entry)>,
}

/// Accepted events of one shard with their ids and the ancestors whose quotas they
/// counted toward, in input order.
type ShardGroup<'a> = (
    usize,
    Vec<(EventRecord, Cow<'a, str>, Vec<String>, ClaimKey)>,
);

/// Settles `slots` by `verdicts` (duplicates and rejections now, accepted events once
/// committed) and stages the accepted events; `None` when none was accepted.
#[allow(clippy::too_many_arguments)]
#[inline]
pub(super) fn stage<'j>(
    journal: &'j dyn Journal,
    outbox: &Outbox,
    counters: &Counters,
    tenant: &Arc<Tenant>,
    slots: &mut [Slot<'_>],
    verdicts: Vec<(usize, Verdict)>,
    reserved: Reserved,
    notifications: Vec<Entry>,
    now_ms: i64,
    partition: Option<u32>,
) -> Option<Staged<'j>> {
    // Accepted events per shard, in input order.
    let mut by_shard: Vec<ShardGroup<'_>> = Vec::new();
    let mut decisions: Vec<(usize, Slot<'static>)> = Vec::new();
    for (i, verdict) in verdicts {
        let (record, ancestors) = match verdict {
            Verdict::Duplicate => {
                decisions.push((i, Slot::Duplicate));
                continue;
            }
            Verdict::Rejected(r) => {
                decisions.push((i, Slot::Rejected(r)));
                continue;
            }
            Verdict::Accepted(record, ancestors) => (record, ancestors),
            Verdict::Grouped(..) | Verdict::Pending(..) => {
                unreachable!("groups are resolved in decide")
            }
        };
        let Slot::Claimed(ev, key) = &slots[i] else {
            unreachable!()
        };
        let shard = counters.shard_of(&tenant.name, &record.contract);
        let item = (record, ev.id.clone(), ancestors, *key);
        match by_shard.iter_mut().find(|(s, _)| *s == shard) {
            Some((_, v)) => v.push(item),
            None => by_shard.push((shard, vec![item])),
        }
    }
    for (i, slot) in decisions {
        slots[i] = slot;
    }
    if by_shard.is_empty() {
        return None;
    }

    let first_seq = journal.reserve_in(partition, by_shard.len() as u64);
    // Sized up front (per event its dedupe record inside the events record, about 160
    // bytes), so the batch's buffer is not regrown and copied.
    let accepted: usize = by_shard.iter().map(|(_, v)| v.len()).sum();
    let mut batch = journal.batch(512 + 192 * accepted);
    if let Some(p) = partition {
        batch.set_partition(p);
    }
    let mut groups = Vec::with_capacity(by_shard.len());
    let mut recent = Vec::with_capacity(accepted);
    for (g, (shard, items)) in by_shard.into_iter().enumerate() {
        let seq = first_seq + g as u64;
        let mut events = Vec::with_capacity(items.len());
        let mut record = EventsRecord::new(&tenant.name, items.len());
        for (pos, (mut rec, id, ancestors, key)) in items.into_iter().enumerate() {
            // The low 44 bits of the number: in cluster mode the bits above them name
            // the partition (journal::stream::events_seq_range), and a contract's
            // events are ordered within their partition only.
            rec.ordinal = ((seq & ORDINAL_SEQ_MASK) << 20) | pos as u64;
            record.push(now_ms, &id, &rec, &ancestors);
            recent.push((key, seq));
            events.push(rec);
        }
        batch.events(seq, record);
        groups.push((shard, seq, events));
    }
    // Quota usage rows (one reservation per row: see `Reserved`) commit with the events,
    // as operands the journal combines with those of the requests written alongside.
    let granted = reserved.rows().iter().filter(|r| r.granted.0 != 0).count();
    batch.reserve_quota(reserved.rows().len() + granted + reserved.takes.len());
    for r in reserved.rows() {
        batch.quota(r.key.encode(), r.delta);
        if r.granted.0 != 0 {
            batch.quota(r.key.encode_granted(), AggValue::Sum(r.granted.0));
        }
    }
    let mut takes: FastHashMap<&GrantKey, i128> = FastHashMap::default();
    for t in &reserved.takes {
        *takes.entry(&t.key).or_default() += t.amount.0;
    }
    for (key, amount) in takes {
        batch.quota(key.encode(), AggValue::Sum(amount));
    }
    let outbox = outbox.stage(batch.rows(), notifications);
    Some(Staged {
        batch,
        groups,
        recent,
        reserved,
        outbox,
    })
}

#[cfg(test)]
mod tests {
    use super::super::fixture::{event, tenant};
    use super::super::outcome::{RejectCode, Rejection};
    use super::*;
    use crate::config::Durability;
    use crate::journal::record::decode_events;
    use crate::journal::WalJournal;
    use crate::store::keys::id_hash;
    use crate::store::Store;
    use std::time::Duration;

    #[test]
    fn accepted_events_go_into_one_record_per_shard_with_ordinals_by_position() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), Duration::from_secs(3600)).unwrap();
        let (wal, _writer) =
            WalJournal::start(store.clone(), Durability::Buffered, Duration::ZERO, 40).unwrap();
        let journal: &dyn Journal = &wal;
        let outbox = Outbox::load(&store).unwrap();
        let counters = Counters::new(64);
        let t = tenant(None);
        let ids = ["a", "b", "c", "d"];
        let contracts = ["c1", "c2", "c1", "c2"];
        let mut slots: Vec<Slot<'_>> = ids
            .iter()
            .zip(contracts)
            .map(|(id, c)| Slot::Claimed(event(id, c, "calls", None), (t.index, id_hash(id))))
            .collect();
        let record = |c: &str| {
            let mut r = EventRecord::sample();
            r.contract = c.to_string();
            r
        };
        let verdicts = vec![
            (0, Verdict::Accepted(record("c1"), vec![])),
            (1, Verdict::Accepted(record("c2"), vec![])),
            (2, Verdict::Duplicate),
            (
                3,
                Verdict::Rejected(Rejection {
                    index: 3,
                    id: Some("d".into()),
                    code: RejectCode::TooLate,
                    field: None,
                    message: "late".into(),
                }),
            ),
        ];
        let staged = stage(
            journal,
            &outbox,
            &counters,
            &t,
            &mut slots,
            verdicts,
            Reserved::default(),
            vec![],
            7,
            None,
        )
        .expect("two accepted");
        assert!(matches!(slots[2], Slot::Duplicate));
        assert!(matches!(slots[3], Slot::Rejected(_)));
        assert!(
            matches!(slots[0], Slot::Claimed(..)),
            "settled after the commit"
        );
        let shards: Vec<usize> = staged.groups.iter().map(|g| g.0).collect();
        let expected_groups =
            if counters.shard_of(&t.name, "c1") == counters.shard_of(&t.name, "c2") {
                1
            } else {
                2
            };
        assert_eq!(shards.len(), expected_groups);
        for (n, (_, seq, events)) in staged.groups.iter().enumerate() {
            assert_eq!(*seq, 40 + n as u64, "consecutive reserved numbers");
            for (pos, e) in events.iter().enumerate() {
                assert_eq!(e.ordinal, (seq << 20) | pos as u64);
            }
        }
        assert_eq!(staged.recent.len(), 2);
        let seqs: Vec<u64> = staged.groups.iter().map(|g| g.1).collect();
        journal.commit_blocking(staged.batch).unwrap();
        for seq in seqs {
            let rec = journal.events_record(seq).unwrap().expect("committed");
            let (tenant, _) = decode_events(&rec).unwrap();
            assert_eq!(tenant, "t");
        }
    }
}
