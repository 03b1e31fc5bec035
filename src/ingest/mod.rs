//! The ingest pipeline: a request's parsed events become an acknowledged [`Outcome`].
//!
//! One file per phase, in the order a request goes through them:
//!
//! 1. [`claim`]: wait while the flusher is far behind, then claim every id in memory;
//!    ids held by other in-flight requests wait for those requests' fate. Elements that
//!    failed to parse ([`crate::event::parse_body`]) are `invalid_event` here.
//! 2. [`lookup`]: the stored dedupe record of each claimed id (in memory and the journal
//!    for ids accepted since the last flush, else one multi-get in the store).
//! 3. [`validate`]: lever, contract, time window, contract end.
//! 4. [`decide`]: duplicates, then the quota decision and usage reservation of the rest
//!    (per (chain root, lever) under the root's quota lock; levers without a finite quota
//!    once per (contract, lever)).
//! 5. [`commit`]: one journal batch (per counter shard one events record carrying its
//!    events' dedupe records, the quota operands, the notifications), committed durably;
//!    on failure the reservations are rolled back and nothing is acknowledged.
//! 6. [`count`]: the ids into [`crate::dedupe::Unflushed`], the notifications to the
//!    outbox, the events into the shard counters; then the claims are released.
//! 7. [`outcome`]: the answer, with per-event rejections ([`RejectCode`]) in input order.
//!
//! An event is thus either fully counted (events record with its dedupe record, then
//! windows) or not at all. Large batches run their CPU-bound phases with
//! `block_in_place` so other requests on the same worker are not starved.

mod claim;
mod commit;
mod count;
mod decide;
#[cfg(test)]
mod fixture;
mod lookup;
mod outcome;
mod route;
mod validate;

use std::sync::atomic::Ordering;
use std::sync::Arc;

use serde_json::value::RawValue;

use crate::dedupe::{ClaimKey, Fate, Owner};
use crate::event::{parse_event, Event, Parsed};
use crate::journal::CommitError;
use crate::registry::Tenant;
use crate::state::State;
use crate::store::StoreError;

pub use claim::BACKLOG_WAIT;
pub use outcome::{Outcome, RejectCode, Rejection};
pub use route::{ingest_routed, serve_forwarded};
pub use validate::MAX_EARLY_MS;

use decide::{decide, Decided, Grouping};

/// Batches above this size run their CPU-bound phases off the async scheduler's
/// cooperative budget.
const BLOCKING_BATCH: usize = 64;

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

impl From<IngestError> for crate::error::Error {
    fn from(e: IngestError) -> crate::error::Error {
        use crate::error::{Error, ErrorCode};
        match e {
            IngestError::Commit(c) if c.is_full() => {
                Error::new(ErrorCode::StorageFull, format!("{c}; nothing was counted"))
            }
            IngestError::Commit(
                c @ (CommitError::NotOwner(_)
                | CommitError::Fenced(_)
                | CommitError::InDoubt(..)
                | CommitError::Conflict),
            ) => Error::new(
                ErrorCode::NotReady,
                format!("{c}; retry with the same event ids"),
            ),
            IngestError::Commit(c) => Error::new(
                ErrorCode::StorageUnavailable,
                format!("{c}; nothing was counted"),
            ),
            IngestError::Store(s) => Error::from(s),
            IngestError::Backlog(_) => Error::new(
                ErrorCode::Overloaded,
                format!("{e}; nothing was counted, retry later"),
            ),
        }
    }
}

/// Where one element of the request stands.
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
    ingest_in(state, tenant, parsed, now_ms, None).await
}

/// Same as [`ingest_parsed`], for events of one partition (cluster mode: this node owns
/// `partition`, and the batch goes to its journal).
pub async fn ingest_in<'a>(
    state: &State,
    tenant: &Arc<Tenant>,
    parsed: Vec<Parsed<'a>>,
    now_ms: i64,
    partition: Option<u32>,
) -> Result<Outcome, IngestError> {
    claim::wait_for_backlog(state).await?;
    let big = parsed.len() > BLOCKING_BATCH;
    let owner = Owner::new();
    let mut held: Vec<ClaimKey> = Vec::new();
    let mut slots: Vec<Slot<'a>> = maybe_blocking(big, || {
        claim::claim_all(&state.claims, tenant.index, &owner, parsed, &mut held)
    });
    let result = run_claimed(
        state, tenant, &owner, &mut slots, &mut held, now_ms, big, partition,
    )
    .await;
    let fate = if result.is_ok() {
        Fate::Committed
    } else {
        Fate::Failed
    };
    state.claims.release(&owner, &held, fate);
    result?;
    let out = outcome::outcome(slots);
    outcome::record_metrics(&out);
    Ok(out)
}

/// Phases 2-6 for the claimed slots.
#[allow(clippy::too_many_arguments)]
async fn run_claimed<'a>(
    state: &State,
    tenant: &Arc<Tenant>,
    owner: &Arc<Owner>,
    slots: &mut [Slot<'a>],
    held: &mut Vec<ClaimKey>,
    now_ms: i64,
    big: bool,
    partition: Option<u32>,
) -> Result<(), IngestError> {
    claim::claim_waiting(&state.claims, owner, slots, held).await;
    let staged = maybe_blocking(big, || {
        look_up_and_decide(state, tenant, slots, now_ms, partition)
    })?;
    let Some(staged) = staged else {
        return Ok(());
    };
    let commit::Staged {
        batch,
        groups,
        recent,
        reserved,
        outbox,
    } = staged;
    if let Err(e) = state.journal.commit(batch).await {
        state.quotas.rollback(tenant, &reserved);
        if matches!(e, CommitError::Store(_) | CommitError::Stopped) {
            state.storage_ok.store(false, Ordering::SeqCst);
            tracing::error!(error = %e, "journal commit failed; events not acknowledged");
        } else {
            // Cluster mode: the partition moved or its stream did not answer; this
            // node's storage is fine.
            tracing::warn!(error = %e, "journal commit refused; events not acknowledged");
        }
        return Err(e.into());
    }
    state.storage_ok.store(true, Ordering::SeqCst);
    maybe_blocking(big, || {
        count::count(
            &state.unflushed,
            &state.outbox,
            &state.counters,
            tenant,
            recent,
            outbox,
            &groups,
            |seq| state.journal.revision_of(seq),
        )
    });
    for slot in slots.iter_mut() {
        if matches!(slot, Slot::Claimed(..)) {
            *slot = Slot::Accepted;
        }
    }
    Ok(())
}

/// Phases 2-5 up to the commit: look up, validate and decide the claimed slots, and
/// stage the accepted ones; `None` when nothing is to be committed.
fn look_up_and_decide<'s>(
    state: &'s State,
    tenant: &Arc<Tenant>,
    slots: &mut [Slot<'_>],
    now_ms: i64,
    partition: Option<u32>,
) -> Result<Option<commit::Staged<'s>>, IngestError> {
    let claimed: Vec<usize> = (0..slots.len())
        .filter(|i| matches!(slots[*i], Slot::Claimed(..)))
        .collect();
    if claimed.is_empty() {
        return Ok(None);
    }
    let found = lookup::lookup(
        &state.unflushed,
        &*state.journal,
        &state.store,
        tenant,
        slots,
        &claimed,
    )?;
    // Grouping the quota bookkeeping of unlimited levers is undone and the request decided
    // event by event when the registry gained a quota meanwhile (rare).
    // A single event gains nothing from grouping (its decision is as cheap either way).
    // Deciding limited events per chain root changes their order across roots only,
    // which is harmless unless an id repeats in the request (its first admitted
    // occurrence counts): then every event is decided in input order.
    let group = claimed.len() > 1;
    let grouping = Grouping {
        unlimited: group,
        bulk: group && !found.repeats,
    };
    let retention_ms = state.cfg.dedupe_retention.as_millis() as i64;
    let run = |grouping| {
        decide(
            &state.quotas,
            retention_ms,
            tenant,
            slots,
            &claimed,
            &found.records,
            now_ms,
            grouping,
        )
    };
    let Decided {
        verdicts,
        reserved,
        notifications,
    } = match run(grouping) {
        Some(d) => d,
        None => run(Grouping::NONE).expect("the per-event path always decides"),
    };
    Ok(commit::stage(
        &*state.journal,
        &state.outbox,
        &state.counters,
        tenant,
        slots,
        verdicts,
        reserved,
        notifications,
        now_ms,
        partition,
    ))
}
