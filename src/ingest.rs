//! The ingest pipeline: events -> dedupe -> validation -> group commit -> counters.
//!
//! Per request:
//! 1. parse every element in one pass over the body (bad ones are `invalid_event`, the
//!    rest go on; see [`crate::event::parse_body`]);
//! 2. claim every id in memory ([`crate::dedupe`]); ids held by other in-flight requests
//!    wait for those requests' fate;
//! 3. look claimed ids up: those accepted since the last flush in memory
//!    ([`crate::dedupe::Recent`]), the others in the `dedupe` column family (one
//!    multi-get);
//! 4. validate the rest (lever, contract, time window, contract end) and decide quotas:
//!    per (chain root, lever) in input order under the root's quota lock, levers without a
//!    finite quota once per (contract, lever) (see `decide`);
//! 5. write one batch: per owning shard one journal record, which carries each accepted
//!    event's dedupe record, and wait for the group commit;
//! 6. record the ids in [`crate::dedupe::Recent`], add the events to the shard counters,
//!    release the claims, answer. The flusher later writes the dedupe records into
//!    `dedupe` before it deletes the journal records.
//!
//! An event is thus either fully counted (journal record with its dedupe record, then
//! windows) or not at
//! all. Large batches run their CPU-bound phases with `block_in_place` so other requests
//! on the same worker are not starved.

use crate::hash::{FastHashMap, FastHashSet};
use std::borrow::Cow;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use rocksdb::WriteBatch;
use serde::Serialize;
use serde_json::value::RawValue;

use crate::counters::agg::AggValue;
use crate::decimal::Amount;
use crate::dedupe::{is_recorded, Claim, ClaimKey, Fate, Owner};
use crate::event::{parse_event, Event, Parsed};
use crate::journal::CommitError;
use crate::quota::book::{chain, chain_unlimited, Reserved};
use crate::registry::{Aggregation, Contract, Lever, Tenant};
use crate::state::State;
use crate::store::keys::{dedupe_key, id_hash, journal_key};
use crate::store::records::{dedupe_id, journal_dedupe_records, EventRecord, JournalDedupe};
use crate::store::{cf, StoreError};
use crate::telemetry::{hot, names};

/// How far in the future an event time may be (SPEC 2.2).
pub const MAX_EARLY_MS: i64 = 5 * 60_000;

/// Batches above this size run their CPU-bound phases off the async scheduler's
/// cooperative budget.
const BLOCKING_BATCH: usize = 64;

/// A per-event rejection in the response.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Rejection {
    /// Position in the request.
    pub index: usize,
    /// Event id, when readable.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Stable code.
    pub code: &'static str,
    /// The offending field, for `invalid_event`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<&'static str>,
    /// Human message.
    pub message: String,
}

/// The response of `POST /v1/events`.
#[derive(Debug, Clone, Serialize, Default, PartialEq, Eq)]
pub struct Outcome {
    /// Events counted.
    pub accepted: usize,
    /// Events already counted earlier (or earlier in this request).
    pub duplicates: usize,
    /// Events refused.
    pub rejected: usize,
    /// Rejections in input order.
    pub errors: Vec<Rejection>,
}

/// Whole-request ingest failures.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    /// The journal could not make the events durable; nothing was counted.
    #[error(transparent)]
    Commit(#[from] CommitError),
    /// A dedupe lookup failed; nothing was counted.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The unflushed ids stayed over their limit for [`BACKLOG_WAIT`]; nothing was
    /// counted.
    #[error("the flusher is behind ({0} accepted ids not yet flushed)")]
    Backlog(usize),
}

/// Longest a request waits for the unflushed ids to fall under their limit.
pub const BACKLOG_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// Wakes the flusher when the accepted ids not yet flushed ([`crate::dedupe::Recent`])
/// pass half of [`crate::config::Config::unflushed_ids_limit`], and waits while they are
/// over it: when requests come faster than the flusher moves their dedupe records, the
/// ids' memory stays bounded and requests slow to the flusher's pace.
async fn wait_for_backlog(state: &State) -> Result<(), IngestError> {
    let limit = state.cfg.unflushed_ids_limit();
    let mut n = state.recent.len();
    // The wait is for a slow flusher, not a failing store: while flushes fail (a full
    // disk), requests go on to their commit, which answers with the store's own error.
    if n <= limit / 2 || !state.storage_ok.load(Ordering::SeqCst) {
        return Ok(());
    }
    let _ = state.flush_wake.try_send(());
    let deadline = std::time::Instant::now() + BACKLOG_WAIT;
    while n > limit && state.storage_ok.load(Ordering::SeqCst) {
        if std::time::Instant::now() > deadline {
            return Err(IngestError::Backlog(n));
        }
        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        let _ = state.flush_wake.try_send(());
        n = state.recent.len();
    }
    Ok(())
}

enum Slot<'a> {
    Rejected(Rejection),
    Duplicate,
    /// Parsed and claimed by this request; to be checked and maybe accepted.
    Claimed(Event<'a>, ClaimKey),
    /// Parsed, claim held by another request.
    Waiting(Event<'a>, ClaimKey, Arc<Owner>),
    Accepted,
}

fn maybe_blocking<R>(big: bool, f: impl FnOnce() -> R) -> R {
    if big {
        tokio::task::block_in_place(f)
    } else {
        f()
    }
}

/// Ingests native body elements for `tenant` at receive time `now_ms`.
pub async fn ingest(
    state: &State,
    tenant: &Arc<Tenant>,
    elems: &[&RawValue],
    now_ms: i64,
) -> Result<Outcome, IngestError> {
    let big = elems.len() > BLOCKING_BATCH;
    let parsed = maybe_blocking(big, || elems.iter().map(|r| parse_event(r)).collect());
    ingest_parsed(state, tenant, parsed, now_ms).await
}

/// Ingests events already read from a body (native or CloudEvents) for `tenant` at
/// receive time `now_ms`; `Err` elements are rejected as `invalid_event`.
pub async fn ingest_parsed<'a>(
    state: &State,
    tenant: &Arc<Tenant>,
    parsed: Vec<Parsed<'a>>,
    now_ms: i64,
) -> Result<Outcome, IngestError> {
    wait_for_backlog(state).await?;
    let big = parsed.len() > BLOCKING_BATCH;
    let owner = Owner::new();
    let mut held: Vec<ClaimKey> = Vec::new();

    // Phases 1-2: parse and claim.
    let mut slots: Vec<Slot<'a>> = maybe_blocking(big, || {
        parsed
            .into_iter()
            .enumerate()
            .map(|(i, p)| match p {
                Err((id, e)) => Slot::Rejected(Rejection {
                    index: i,
                    id,
                    code: "invalid_event",
                    field: Some(e.field),
                    message: e.message,
                }),
                Ok(ev) => {
                    let key = (tenant.index, id_hash(&ev.id));
                    match state.claims.claim(key, &owner) {
                        Claim::Claimed => {
                            held.push(key);
                            Slot::Claimed(ev, key)
                        }
                        // A repeat within this request: decided after validation, so a
                        // rejected first occurrence cannot swallow a valid repeat.
                        Claim::OwnDuplicate => Slot::Claimed(ev, key),
                        Claim::Busy(other) => Slot::Waiting(ev, key, other),
                    }
                }
            })
            .collect()
    });

    let result = run_claimed(state, tenant, &owner, &mut slots, &mut held, now_ms, big).await;
    let fate = if result.is_ok() {
        Fate::Committed
    } else {
        Fate::Failed
    };
    state.claims.release(&owner, &held, fate);
    result?;

    let mut out = Outcome::default();
    for s in slots {
        match s {
            Slot::Accepted => out.accepted += 1,
            Slot::Duplicate => out.duplicates += 1,
            Slot::Rejected(r) => {
                out.rejected += 1;
                out.errors.push(r);
            }
            Slot::Claimed(..) | Slot::Waiting(..) => unreachable!("every slot is decided"),
        }
    }
    record_metrics(&out);
    Ok(out)
}

async fn run_claimed<'a>(
    state: &State,
    tenant: &Arc<Tenant>,
    owner: &Arc<Owner>,
    slots: &mut [Slot<'a>],
    held: &mut Vec<ClaimKey>,
    now_ms: i64,
    big: bool,
) -> Result<(), IngestError> {
    // Wait for other requests holding our ids, then claim them ourselves: whether the
    // other request accepted, rejected or failed that event, the dedupe record (written
    // before its claim was released) is what decides, not the other request's fate.
    loop {
        let mut waited = false;
        for slot in slots.iter_mut() {
            if let Slot::Waiting(_, key, other) = slot {
                let key = *key;
                other.outcome().await;
                waited = true;
                let Slot::Waiting(ev, _, _) = std::mem::replace(slot, Slot::Duplicate) else {
                    unreachable!()
                };
                *slot = match state.claims.claim(key, owner) {
                    Claim::Claimed => {
                        held.push(key);
                        Slot::Claimed(ev, key)
                    }
                    Claim::OwnDuplicate => Slot::Claimed(ev, key),
                    Claim::Busy(o) => Slot::Waiting(ev, key, o),
                };
            }
        }
        if !waited {
            break;
        }
    }

    // Phases 3-4: stored dedupe records, then validation; build the batch.
    let plan = maybe_blocking(big, || check_and_plan(state, tenant, slots, now_ms))?;
    let Some(plan) = plan else {
        return Ok(());
    };

    // Phase 5: durable commit.
    let Plan {
        batch,
        quota,
        groups,
        recent,
        reserved,
        outbox,
    } = plan;
    let commit = state.journal.commit_with_quota(batch, quota).await;
    if let Err(e) = commit {
        state.quotas.rollback(tenant, &reserved);
        state.storage_ok.store(false, Ordering::SeqCst);
        tracing::error!(error = %e, "journal commit failed; events not acknowledged");
        return Err(e.into());
    }
    state.storage_ok.store(true, Ordering::SeqCst);
    // Before the claims are released (by the caller) and before the counters, whose
    // flush deletes the journal records: an accepted id is always claimed, in `recent`
    // or in `dedupe`.
    for (key, seq) in recent {
        state.recent.insert(key, seq);
    }
    state.outbox.enqueue(outbox);

    // Phase 6: counters.
    maybe_blocking(big, || {
        for (shard, seq, events) in &groups {
            state.counters.apply(*shard, *seq, &tenant.name, events);
        }
    });
    for slot in slots.iter_mut() {
        if matches!(slot, Slot::Claimed(..)) {
            *slot = Slot::Accepted;
        }
    }
    Ok(())
}

/// Accepted events of one shard with their ids and the ancestors whose quotas they
/// counted toward, in input order.
type ShardGroup<'a> = (
    usize,
    Vec<(EventRecord, Cow<'a, str>, Vec<String>, ClaimKey)>,
);

struct Plan {
    batch: WriteBatch,
    /// Quota row operands, committed atomically with `batch`.
    quota: crate::journal::QuotaOperands,
    groups: Vec<(usize, u64, Vec<EventRecord>)>,
    /// Accepted ids and their journal records, for [`crate::dedupe::Recent`].
    recent: Vec<(ClaimKey, u64)>,
    reserved: Reserved,
    /// Threshold notifications staged in the batch.
    outbox: Vec<(u64, crate::notify::Entry)>,
}

/// What became of one claimed event in [`decide`].
enum Verdict {
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
struct Grouping {
    /// Reserve events without a finite quota per (contract, lever).
    unlimited: bool,
    /// Decide the other events per (chain root, lever).
    bulk: bool,
}

impl Grouping {
    /// Every event decided on its own, in input order.
    const NONE: Grouping = Grouping {
        unlimited: false,
        bulk: false,
    };
}

/// Decisions for the claimed slots, in input order, with what they reserved.
struct Decided {
    verdicts: Vec<(usize, Verdict)>,
    reserved: Reserved,
    notifications: Vec<crate::notify::Entry>,
}

fn check_and_plan(
    state: &State,
    tenant: &Arc<Tenant>,
    slots: &mut [Slot<'_>],
    now_ms: i64,
) -> Result<Option<Plan>, IngestError> {
    let claimed: Vec<usize> = (0..slots.len())
        .filter(|i| matches!(slots[*i], Slot::Claimed(..)))
        .collect();
    if claimed.is_empty() {
        return Ok(None);
    }
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
        match state.recent.get(&(tenant.index, h)) {
            Some(seq) => unflushed.push((seq, h, n)),
            None => stored.push((h, n)),
        }
    }
    if !unflushed.is_empty() {
        // One read per journal record, however many of its ids the request repeats.
        unflushed.sort_unstable();
        for group in unflushed.chunk_by(|a, b| a.0 == b.0) {
            read_unflushed(state, group, &mut records, &mut stored)?;
        }
        stored.sort_unstable();
    }
    if !stored.is_empty() {
        let keys: Vec<Vec<u8>> = stored
            .iter()
            .map(|&(h, _)| dedupe_key(&tenant.name, h))
            .collect();
        for (&(_, n), r) in stored
            .iter()
            .zip(state.store.multi_get_sorted(cf::DEDUPE, &keys)?)
        {
            records[n as usize] = r;
        }
    }
    // Grouping the quota bookkeeping of unlimited levers is undone and the request decided
    // event by event when the registry gained a quota meanwhile (rare).
    // A single event gains nothing from grouping (its decision is as cheap either way).
    // Deciding limited events per chain root changes their order across roots only,
    // which is harmless unless an id repeats in the request (its first admitted
    // occurrence counts): then every event is decided in input order.
    let group = claimed.len() > 1;
    let grouping = Grouping {
        unlimited: group,
        bulk: group && !repeats,
    };
    let decided = match decide(state, tenant, slots, &claimed, &records, now_ms, grouping) {
        Some(d) => d,
        None => decide(
            state,
            tenant,
            slots,
            &claimed,
            &records,
            now_ms,
            Grouping::NONE,
        )
        .expect("the per-event path always decides"),
    };
    let Decided {
        verdicts,
        reserved,
        notifications,
    } = decided;

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
        let shard = state.counters.shard_of(&tenant.name, &record.contract);
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
        return Ok(None);
    }

    let first_seq = state.journal.reserve(by_shard.len() as u64);
    // Sized up front (per event its dedupe record inside the journal record, about 160
    // bytes), so the batch's buffer is not regrown and copied.
    let accepted: usize = by_shard.iter().map(|(_, v)| v.len()).sum();
    let mut batch = WriteBatch::with_capacity_bytes(512 + 192 * accepted);
    let journal_cf = state.store.cf(cf::JOURNAL);
    let mut groups = Vec::with_capacity(by_shard.len());
    let mut recent = Vec::with_capacity(accepted);
    // One journal record per shard, carrying each event's dedupe record: the flusher
    // writes those into `dedupe` when it deletes the journal record, and until then the
    // ids are looked up in `recent`.
    for (g, (shard, items)) in by_shard.into_iter().enumerate() {
        let seq = first_seq + g as u64;
        let mut events = Vec::with_capacity(items.len());
        let mut journal = JournalDedupe::new(&tenant.name, items.len());
        for (pos, (mut rec, id, ancestors, key)) in items.into_iter().enumerate() {
            rec.ordinal = (seq << 20) | pos as u64;
            journal.push(now_ms, &id, &rec, &ancestors);
            recent.push((key, seq));
            events.push(rec);
        }
        batch.put_cf(journal_cf, journal_key(seq), journal.finish());
        groups.push((shard, seq, events));
    }
    // Quota usage rows (one reservation per row: see `Reserved`) commit with the events,
    // as operands the journal combines with those of the requests written alongside.
    let mut quota = Vec::with_capacity(reserved.rows().len() + reserved.takes.len());
    for r in reserved.rows() {
        quota.push((r.key.encode(), r.delta));
        if r.granted.0 != 0 {
            quota.push((r.key.encode_granted(), AggValue::Sum(r.granted.0)));
        }
    }
    let mut takes: FastHashMap<&crate::quota::book::GrantKey, i128> = FastHashMap::default();
    for t in &reserved.takes {
        *takes.entry(&t.key).or_default() += t.amount.0;
    }
    for (key, amount) in takes {
        quota.push((key.encode(), AggValue::Sum(amount)));
    }
    let outbox = state.outbox.stage(&state.store, &mut batch, notifications);
    Ok(Some(Plan {
        batch,
        quota,
        groups,
        recent,
        reserved,
        outbox,
    }))
}

/// Fills `records` for `group` ((journal record, id hash, position) of ids found in
/// `recent`, all of one journal record) from the dedupe records that journal record
/// carries, copying only those asked for. Ids it does not carry, or all of them when the
/// flusher has deleted it meanwhile (its dedupe records are in `dedupe` then), go to
/// `stored`, to be read from the column family.
fn read_unflushed(
    state: &State,
    group: &[(u64, u128, u32)],
    records: &mut [Option<Vec<u8>>],
    stored: &mut Vec<(u128, u32)>,
) -> Result<(), IngestError> {
    let Some(record) = state.store.get(cf::JOURNAL, &journal_key(group[0].0))? else {
        stored.extend(group.iter().map(|&(_, h, n)| (h, n)));
        return Ok(());
    };
    let corrupt = || crate::store::StoreError::Corrupt("journal");
    let (_, recs) = journal_dedupe_records(&record).ok_or_else(corrupt)?;
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

/// Checks every claimed event (dedupe record, lever, contract, time window, quota) and
/// reserves the usage of those admitted. With `grouping.unlimited`, events on levers without
/// a finite quota in their contract's chain skip the per-event quota decision and are
/// reserved per (contract, lever) at the end; if the registry gained such a quota
/// meanwhile, everything reserved is rolled back and `None` returned, and the caller
/// decides again without grouping. With `grouping.bulk`, the other events are decided per
/// (chain root, lever) in one hold of the root's quota lock
/// ([`crate::quota::book::QuotaBook::reserve_bulk`]), in input order within a root;
/// roots share no rows, so this decides exactly as input order would.
fn decide(
    state: &State,
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
    let retention_ms = state.cfg.dedupe_retention.as_millis() as i64;
    let lateness_ms = tenant.lateness.as_millis() as i64;
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
        let rejected = |code: &'static str, message: String| {
            Verdict::Rejected(Rejection {
                index: i,
                id: id(),
                code,
                field: None,
                message,
            })
        };
        let Some(lever) = tenant.lever(&ev.lever) else {
            let v = rejected(
                "unknown_lever",
                format!("lever {:?} does not exist", ev.lever),
            );
            verdicts.push((i, v));
            continue;
        };
        let Some(contract) = tenant.contract(&ev.contract) else {
            let v = rejected(
                "unknown_contract",
                format!("contract {:?} does not exist", ev.contract),
            );
            verdicts.push((i, v));
            continue;
        };
        let time_ms = ev.time_ms.unwrap_or(now_ms);
        if time_ms < now_ms - lateness_ms {
            let v = rejected(
                "too_late",
                format!(
                    "event time {} is older than the accepted lateness of {}; use an adjustment",
                    crate::window::rfc3339(time_ms),
                    humantime::format_duration(tenant.lateness)
                ),
            );
            verdicts.push((i, v));
            continue;
        }
        if time_ms > now_ms + MAX_EARLY_MS {
            let v = rejected(
                "too_early",
                format!(
                    "event time {} is more than 5 minutes in the future",
                    crate::window::rfc3339(time_ms)
                ),
            );
            verdicts.push((i, v));
            continue;
        }
        if let Some(end) = contract.ends_at_ms {
            if time_ms >= end {
                let v = rejected(
                    "contract_ended",
                    format!(
                        "contract {:?} ended at {}",
                        ev.contract,
                        contract.ends_at.as_deref().unwrap_or("")
                    ),
                );
                verdicts.push((i, v));
                continue;
            }
        }
        let value = match lever.aggregation {
            Aggregation::Count => Amount::ONE,
            _ => ev.value.unwrap_or(Amount::ONE),
        };
        let record = EventRecord {
            contract: contract.id.clone(),
            lever: lever.id.clone(),
            aggregation: lever.aggregation,
            bucket: ev.bucket.as_ref().map(|b| b.to_string()),
            time_ms,
            value: value.0,
            ordinal: 0,
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
        match state
            .quotas
            .try_reserve(tenant, &contract, &lever, value, time_ms, &mut reserved)
        {
            Ok(decision) => *tally.entry(decision.labels()).or_default() += 1,
            Err(q) => {
                *tally.entry(("rejected", "hard")).or_default() += 1;
                verdicts.push((i, rejected("quota_exceeded", q.to_string())));
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
            if let Some(results) =
                state
                    .quotas
                    .reserve_bulk(tenant, root, lever, &items, &mut reserved)
            {
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
                let r = state.quotas.try_reserve(
                    tenant,
                    contract,
                    lever,
                    *value,
                    *time_ms,
                    &mut reserved,
                );
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
                        code: "quota_exceeded",
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
        match state.quotas.reserve_unlimited(
            tenant,
            &g.contract,
            &g.lever,
            &g.events,
            &mut reserved,
        ) {
            Some(ancestors) => ancestors_of.push(ancestors),
            None => {
                state.quotas.rollback(tenant, &reserved);
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

fn record_metrics(out: &Outcome) {
    if out.accepted > 0 {
        hot::count1(
            names::INGEST_EVENTS_TOTAL,
            "outcome",
            "accepted",
            out.accepted as u64,
        );
    }
    if out.duplicates > 0 {
        hot::count1(
            names::INGEST_EVENTS_TOTAL,
            "outcome",
            "duplicate",
            out.duplicates as u64,
        );
        hot::count0(names::DEDUPE_HITS_TOTAL, out.duplicates as u64);
    }
    for r in &out.errors {
        hot::count1(names::INGEST_REJECTED_TOTAL, "code", r.code, 1);
    }
    if out.rejected > 0 {
        hot::count1(
            names::INGEST_EVENTS_TOTAL,
            "outcome",
            "rejected",
            out.rejected as u64,
        );
    }
    hot::record0(
        names::INGEST_BATCH_EVENTS,
        (out.accepted + out.duplicates + out.rejected) as f64,
    );
}
