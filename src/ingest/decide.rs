//! Phase "decide": the verdict of every claimed event (duplicate, rejected, accepted)
//! and the quota usage the accepted ones reserve.
//!
//! An event is a duplicate when its id was admitted earlier in the request or its
//! dedupe record (found by [`super::lookup`]) is still within `dedupe_retention`;
//! otherwise it is validated ([`super::validate`]) and its quota decided. The decision
//! and the reservation are one step under the quota lock of the contract's chain root
//! (SPEC 3): per event, or per (chain root, lever) for a whole request
//! ([`Grouping`]); events on levers without a finite quota in their chain are reserved
//! per (contract, lever).

use std::sync::Arc;

use super::outcome::{RejectCode, Rejection};
use super::validate::{validate, Valid};
use super::Slot;
use crate::decimal::Amount;
use crate::dedupe::is_recorded;
use crate::hash::{FastHashMap, FastHashSet};
use crate::quota::book::{chain, chain_unlimited, QuotaBook, Reserved};
use crate::registry::{Contract, Lever, Tenant};
use crate::store::records::EventRecord;
use crate::telemetry::{hot, names};

/// What became of one claimed event in [`decide`].
pub(super) enum Verdict {
    Duplicate,
    Rejected(Rejection),
    /// Admitted by its quotas: its record and the ancestors it counted toward.
    Accepted(EventRecord, Vec<String>),
    /// Valid, on a (contract, lever) whose chain has no finite quota: admitted with its
    /// group (an index into the groups of [`decide`]).
    Grouped(EventRecord, usize),
    /// Valid, on a (contract, lever) with a finite quota in its chain: decided with the
    /// other events of its chain root (an index into the pending events of [`decide`]).
    Pending(EventRecord, usize),
}

/// Events of one (contract, lever) without a finite quota in the contract's chain, whose
/// usage is reserved together ([`crate::quota::book::QuotaBook::reserve_unlimited`]).
struct UnlimitedGroup {
    contract: Arc<Contract>,
    lever: Arc<Lever>,
    /// `(time_ms, value)` per event.
    events: Vec<(i64, Amount)>,
}

/// An event left for the per-root decisions of [`decide`]: contract, lever, value, time
/// and its slot.
type PendingEvent = (Arc<Contract>, Arc<Lever>, Amount, i64, usize);

/// How [`decide`] may group the quota work of a request's events.
#[derive(Clone, Copy)]
pub(super) struct Grouping {
    /// Reserve events without a finite quota per (contract, lever).
    pub(super) unlimited: bool,
    /// Decide the other events per (chain root, lever).
    pub(super) bulk: bool,
}

impl Grouping {
    /// Every event decided on its own, in input order.
    pub(super) const NONE: Grouping = Grouping {
        unlimited: false,
        bulk: false,
    };
}

/// Decisions for the claimed slots, in input order, with what they reserved.
pub(super) struct Decided {
    pub(super) verdicts: Vec<(usize, Verdict)>,
    pub(super) reserved: Reserved,
    pub(super) notifications: Vec<crate::notify::Entry>,
}

/// Checks every claimed event (dedupe record, lever, contract, time window, quota) and
/// reserves the usage of those admitted. With `grouping.unlimited`, events on levers without
/// a finite quota in their contract's chain skip the per-event quota decision and are
/// reserved per (contract, lever) at the end; if the registry gained such a quota
/// meanwhile, everything reserved is rolled back and `None` returned, and the caller
/// decides again without grouping. With `grouping.bulk`, the other events are decided per
/// (chain root, lever) in one hold of the root's quota lock
/// ([`crate::quota::book::QuotaBook::reserve_bulk`]), in input order within a root;
/// roots share no rows, so this decides exactly as input order would.
#[allow(clippy::too_many_arguments)]
pub(super) fn decide(
    quotas: &QuotaBook,
    retention_ms: i64,
    tenant: &Arc<Tenant>,
    slots: &[Slot<'_>],
    claimed: &[usize],
    records: &[Option<Vec<u8>>],
    now_ms: i64,
    grouping: Grouping,
) -> Option<Decided> {
    let Grouping {
        unlimited: group_unlimited,
        bulk: bulk_limited,
    } = grouping;
    let mut verdicts: Vec<(usize, Verdict)> = Vec::with_capacity(claimed.len());
    // Ids admitted earlier in this request: later occurrences are duplicates.
    let mut taken: FastHashSet<u128> = FastHashSet::default();
    let mut reserved = Reserved::default();
    let mut notifications: Vec<crate::notify::Entry> = Vec::new();
    let mut groups: Vec<UnlimitedGroup> = Vec::new();
    // Per (contract, lever) allocation: its group, or `None` when a quota applies. The
    // Arcs are kept alive in `groups` / `limited`, so their addresses stay unique.
    let mut group_of: FastHashMap<(usize, usize), Option<usize>> = FastHashMap::default();
    let mut limited: Vec<(Arc<Contract>, Arc<Lever>)> = Vec::new();
    // Events decided per chain root after the loop.
    let mut pending: Vec<PendingEvent> = Vec::new();
    // Quota decisions per (outcome, mode) metric labels.
    let mut tally: FastHashMap<(&'static str, &'static str), u64> = FastHashMap::default();
    for (n, &i) in claimed.iter().enumerate() {
        let Slot::Claimed(ev, key) = &slots[i] else {
            unreachable!()
        };
        if taken.contains(&key.1)
            || is_recorded(records[n].as_deref(), &ev.id, now_ms, retention_ms)
        {
            verdicts.push((i, Verdict::Duplicate));
            continue;
        }
        let id = || Some(ev.shown_id.as_deref().unwrap_or(&ev.id).to_string());
        let rejected = |code: RejectCode, message: String| {
            Verdict::Rejected(Rejection {
                index: i,
                id: id(),
                code,
                field: None,
                message,
            })
        };
        let Valid {
            lever,
            contract,
            record,
            value,
            time_ms,
        } = match validate(tenant, ev, now_ms) {
            Ok(v) => v,
            Err((code, message)) => {
                verdicts.push((i, rejected(code, message)));
                continue;
            }
        };
        if group_unlimited {
            let pair = (
                Arc::as_ptr(&contract) as usize,
                Arc::as_ptr(&lever) as usize,
            );
            let group = *group_of.entry(pair).or_insert_with(|| {
                let members = chain(tenant, &contract);
                if chain_unlimited(tenant, &members, &lever.id) {
                    groups.push(UnlimitedGroup {
                        contract: contract.clone(),
                        lever: lever.clone(),
                        events: Vec::new(),
                    });
                    Some(groups.len() - 1)
                } else {
                    limited.push((contract.clone(), lever.clone()));
                    None
                }
            });
            if let Some(g) = group {
                groups[g].events.push((time_ms, value));
                verdicts.push((i, Verdict::Grouped(record, g)));
                taken.insert(key.1);
                continue;
            }
        }
        if bulk_limited {
            pending.push((contract, lever, value, time_ms, i));
            verdicts.push((i, Verdict::Pending(record, pending.len() - 1)));
            continue;
        }
        // The quota decision and the usage reservation are one step under the quota
        // shard lock of the contract's chain (SPEC 3).
        let crossed = reserved.crossings.len();
        match quotas.try_reserve(tenant, &contract, &lever, value, time_ms, &mut reserved) {
            Ok(decision) => *tally.entry(decision.labels()).or_default() += 1,
            Err(q) => {
                *tally.entry(("rejected", "hard")).or_default() += 1;
                verdicts.push((i, rejected(RejectCode::QuotaExceeded, q.to_string())));
                continue;
            }
        }
        for c in &reserved.crossings[crossed..] {
            notifications.push(crate::notify::entry_for(&tenant.name, c, &ev.id, now_ms));
        }
        let ancestors = std::mem::take(&mut reserved.last_ancestors);
        verdicts.push((i, Verdict::Accepted(record, ancestors)));
        taken.insert(key.1);
    }
    // The pending events, per (chain root, lever) in input order.
    if !pending.is_empty() {
        let mut answers: Vec<Option<Result<Vec<String>, String>>> = vec![None; pending.len()];
        let mut root_of: FastHashMap<usize, String> = FastHashMap::default();
        let mut bulk_at: FastHashMap<(String, usize), usize> = FastHashMap::default();
        let mut bulks: Vec<(String, Arc<Lever>, Vec<usize>)> = Vec::new();
        for (pi, (contract, lever, _, _, _)) in pending.iter().enumerate() {
            let root = root_of
                .entry(Arc::as_ptr(contract) as usize)
                .or_insert_with(|| {
                    chain(tenant, contract)
                        .last()
                        .map(|c| c.id.clone())
                        .unwrap_or_default()
                })
                .clone();
            let key = (root, Arc::as_ptr(lever) as usize);
            match bulk_at.get(&key) {
                Some(&b) => bulks[b].2.push(pi),
                None => {
                    bulks.push((key.0.clone(), lever.clone(), vec![pi]));
                    bulk_at.insert(key, bulks.len() - 1);
                }
            }
        }
        for (root, lever, members) in &bulks {
            let items: Vec<(Arc<Contract>, Amount, i64)> = members
                .iter()
                .map(|&pi| (pending[pi].0.clone(), pending[pi].2, pending[pi].3))
                .collect();
            if let Some(results) = quotas.reserve_bulk(tenant, root, lever, &items, &mut reserved) {
                for (&pi, r) in members.iter().zip(results) {
                    answers[pi] = Some(match r {
                        Ok((d, ancestors)) => {
                            *tally.entry(d.labels()).or_default() += 1;
                            Ok(ancestors.to_vec())
                        }
                        Err(q) => {
                            *tally.entry(("rejected", "hard")).or_default() += 1;
                            Err(q.to_string())
                        }
                    });
                }
                continue;
            }
            // Grants, thresholds or a moved root: one by one, in input order.
            for &pi in members {
                let (contract, lever, value, time_ms, slot) = &pending[pi];
                let crossed = reserved.crossings.len();
                let r =
                    quotas.try_reserve(tenant, contract, lever, *value, *time_ms, &mut reserved);
                answers[pi] = Some(match r {
                    Ok(d) => {
                        *tally.entry(d.labels()).or_default() += 1;
                        let Slot::Claimed(ev, _) = &slots[*slot] else {
                            unreachable!()
                        };
                        for c in &reserved.crossings[crossed..] {
                            notifications.push(crate::notify::entry_for(
                                &tenant.name,
                                c,
                                &ev.id,
                                now_ms,
                            ));
                        }
                        Ok(std::mem::take(&mut reserved.last_ancestors))
                    }
                    Err(q) => {
                        *tally.entry(("rejected", "hard")).or_default() += 1;
                        Err(q.to_string())
                    }
                });
            }
        }
        for (i, v) in verdicts.iter_mut() {
            let Verdict::Pending(_, pi) = v else {
                continue;
            };
            let answer = answers[*pi].take().expect("every pending event is decided");
            let Verdict::Pending(record, _) = std::mem::replace(v, Verdict::Duplicate) else {
                unreachable!()
            };
            *v = match answer {
                Ok(ancestors) => Verdict::Accepted(record, ancestors),
                Err(message) => {
                    let Slot::Claimed(ev, _) = &slots[*i] else {
                        unreachable!()
                    };
                    Verdict::Rejected(Rejection {
                        index: *i,
                        id: Some(ev.shown_id.as_deref().unwrap_or(&ev.id).to_string()),
                        code: RejectCode::QuotaExceeded,
                        field: None,
                        message,
                    })
                }
            };
        }
    }
    // The grouped events' usage, one reservation per period row.
    let mut ancestors_of: Vec<Vec<String>> = Vec::with_capacity(groups.len());
    for g in &groups {
        match quotas.reserve_unlimited(tenant, &g.contract, &g.lever, &g.events, &mut reserved) {
            Some(ancestors) => ancestors_of.push(ancestors),
            None => {
                quotas.rollback(tenant, &reserved);
                return None;
            }
        }
    }
    for (_, v) in verdicts.iter_mut() {
        if let Verdict::Grouped(..) = v {
            let Verdict::Grouped(record, g) = std::mem::replace(v, Verdict::Duplicate) else {
                unreachable!()
            };
            *v = Verdict::Accepted(record, ancestors_of[g].clone());
            *tally.entry(("allowed", "unlimited")).or_default() += 1;
        }
    }
    // Counted only for the decisions that stand (not for an attempt given up above).
    for ((outcome, mode), n) in tally {
        hot::count2(
            names::QUOTA_DECISIONS_TOTAL,
            ("outcome", outcome),
            ("mode", mode),
            n,
        );
    }
    Some(Decided {
        verdicts,
        reserved,
        notifications,
    })
}

#[cfg(test)]
mod tests {
    use super::super::fixture::{event, tenant, NOW};
    use super::*;
    use crate::store::keys::id_hash;

    /// Verdict kinds per slot: 'a'ccepted, 'd'uplicate, or the rejection code.
    fn kinds(d: &Decided) -> Vec<String> {
        d.verdicts
            .iter()
            .map(|(_, v)| match v {
                Verdict::Accepted(..) => "a".to_string(),
                Verdict::Duplicate => "d".to_string(),
                Verdict::Rejected(r) => r.code.as_str().to_string(),
                Verdict::Grouped(..) | Verdict::Pending(..) => "unresolved".to_string(),
            })
            .collect()
    }

    #[test]
    fn grouped_and_per_event_decisions_agree_on_a_hard_quota() {
        let ids = ["e0", "e1", "e2", "e3", "e4", "u0", "late"];
        let slots_for = |t: &Arc<Tenant>| -> Vec<Slot<'static>> {
            ids.iter()
                .map(|id| {
                    let (contract, time) = match *id {
                        i if i.starts_with('u') => ("c2", Some(NOW)),
                        "late" => ("c1", Some(NOW - t.lateness.as_millis() as i64 - 1)),
                        _ => ("c1", Some(NOW)),
                    };
                    Slot::Claimed(event(id, contract, "calls", time), (t.index, id_hash(id)))
                })
                .collect()
        };
        let mut outcomes = Vec::new();
        for grouping in [
            Grouping::NONE,
            Grouping {
                unlimited: true,
                bulk: true,
            },
        ] {
            let t = tenant(Some("3"));
            let quotas = QuotaBook::new(4);
            let slots = slots_for(&t);
            let claimed: Vec<usize> = (0..slots.len()).collect();
            let records = vec![None; slots.len()];
            let d = decide(
                &quotas, 3_600_000, &t, &slots, &claimed, &records, NOW, grouping,
            )
            .expect("decided");
            outcomes.push(kinds(&d));
        }
        assert_eq!(
            outcomes[0],
            [
                "a",
                "a",
                "a",
                "quota_exceeded",
                "quota_exceeded",
                "a",
                "too_late"
            ]
        );
        assert_eq!(
            outcomes[0], outcomes[1],
            "the grouped path decides the same"
        );
    }

    #[test]
    fn a_recorded_id_or_a_repeat_is_a_duplicate() {
        let t = tenant(None);
        let quotas = QuotaBook::new(4);
        let slots: Vec<Slot<'static>> = ["x", "y", "y"]
            .iter()
            .map(|id| Slot::Claimed(event(id, "c2", "calls", Some(NOW)), (t.index, id_hash(id))))
            .collect();
        let stored = crate::store::records::encode_dedupe(
            NOW - 1_000,
            "x",
            &crate::store::records::EventRecord::sample(),
        );
        let records = vec![Some(stored), None, None];
        let d = decide(
            &quotas,
            3_600_000,
            &t,
            &slots,
            &[0, 1, 2],
            &records,
            NOW,
            Grouping::NONE,
        )
        .unwrap();
        assert_eq!(kinds(&d), ["d", "a", "d"]);
        // Past dedupe retention the stored record no longer makes it a duplicate.
        let d = decide(
            &quotas,
            500,
            &t,
            &slots[..1],
            &[0],
            &records[..1],
            NOW,
            Grouping::NONE,
        )
        .unwrap();
        assert_eq!(kinds(&d), ["a"]);
    }
}
