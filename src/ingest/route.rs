//! Cluster mode: a request's events split by partition, each part decided by its
//! partition's owner, the outcomes merged back in input order.
//!
//! Any node accepts an ingest request. Its events are grouped by partition
//! ([`crate::quota::book::partition`]: tenant and chain root); the groups this node
//! owns run through the pipeline here ([`super::ingest_in`]), the others are sent to
//! their owners ([`crate::state::Peers::request`]), which run the same pipeline
//! ([`serve_forwarded`]). A group whose partition has no reachable owner, or whose
//! owner lost the partition mid-request, gets the per-event code `unavailable` for each
//! of its events: nothing about them is decided, and a retry with the same ids is
//! answered exactly once (accepted, or `duplicate` if an unanswered attempt was in fact
//! counted). Never a false accept, never a silent drop.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::{ingest_in, ingest_parsed, IngestError, Outcome, RejectCode, Rejection};
use crate::decimal::Amount;
use crate::event::{Event, Parsed};
use crate::journal::CommitError;
use crate::registry::Tenant;
use crate::state::State;

/// One event on its way to its partition's owner.
#[derive(Debug, Serialize, Deserialize)]
struct WireEvent<'a> {
    #[serde(borrow)]
    id: Cow<'a, str>,
    #[serde(borrow)]
    contract: Cow<'a, str>,
    #[serde(borrow)]
    lever: Cow<'a, str>,
    value: Option<Amount>,
    time_ms: Option<i64>,
    #[serde(borrow)]
    bucket: Option<Cow<'a, str>>,
    #[serde(borrow)]
    shown_id: Option<Cow<'a, str>>,
}

/// A forwarded part of a request: its tenant, receive time and events.
#[derive(Debug, Serialize, Deserialize)]
struct WireRequest<'a> {
    #[serde(borrow)]
    tenant: Cow<'a, str>,
    now_ms: i64,
    #[serde(borrow)]
    events: Vec<WireEvent<'a>>,
}

/// A per-event rejection on the way back.
#[derive(Debug, Serialize, Deserialize)]
struct WireRejection {
    index: usize,
    id: Option<String>,
    code: String,
    field: Option<String>,
    message: String,
}

/// The owner's answer to a forwarded part.
#[derive(Debug, Serialize, Deserialize)]
enum WireReply {
    /// The part was decided.
    Outcome {
        accepted: usize,
        duplicates: usize,
        errors: Vec<WireRejection>,
    },
    /// Nothing of the part was decided (the owner lost the partition, its journal
    /// failed, it is overloaded); every event is `unavailable`.
    Failed(String),
}

/// The event fields a per-event error may name (they are `&'static str` in
/// [`Rejection`]).
const FIELDS: &[&str] = &[
    "",
    "id",
    "contract",
    "lever",
    "value",
    "time",
    "bucket",
    "properties",
    "subject",
    "type",
    "data",
];

fn wire(e: &Event<'_>) -> WireEvent<'static> {
    WireEvent {
        id: Cow::Owned(e.id.to_string()),
        contract: Cow::Owned(e.contract.to_string()),
        lever: Cow::Owned(e.lever.to_string()),
        value: e.value,
        time_ms: e.time_ms,
        bucket: e.bucket.as_ref().map(|b| Cow::Owned(b.to_string())),
        shown_id: e.shown_id.as_ref().map(|b| Cow::Owned(b.to_string())),
    }
}

fn unwire<'a>(w: WireEvent<'a>) -> Event<'a> {
    Event {
        id: w.id,
        contract: w.contract,
        lever: w.lever,
        value: w.value,
        time_ms: w.time_ms,
        bucket: w.bucket,
        shown_id: w.shown_id,
    }
}

fn rejection_of(w: WireRejection, index: usize) -> Rejection {
    Rejection {
        index,
        id: w.id,
        code: RejectCode::parse(&w.code).unwrap_or(RejectCode::Unavailable),
        field: w
            .field
            .and_then(|f| FIELDS.iter().copied().find(|k| *k == f)),
        message: w.message,
    }
}

/// Per-event `unavailable` rejections for the events at `indexes`.
fn unavailable(events: &[(usize, Event<'_>)], why: &str) -> Outcome {
    Outcome {
        rejected: events.len(),
        errors: events
            .iter()
            .map(|(i, e)| Rejection {
                index: *i,
                id: Some(e.shown_id.as_deref().unwrap_or(&e.id).to_string()),
                code: RejectCode::Unavailable,
                field: None,
                message: format!(
                    "{why}; nothing was decided for this event, retry it with the same id"
                ),
            })
            .collect(),
        ..Outcome::default()
    }
}

/// True when an ingest failure means "ask again", not a problem of this request.
fn retryable(e: &IngestError) -> bool {
    matches!(
        e,
        IngestError::Commit(
            CommitError::NotOwner(_)
                | CommitError::Fenced(_)
                | CommitError::InDoubt(..)
                | CommitError::Conflict
        )
    )
}

/// Ingests events for `tenant`, each decided by its partition's owner in cluster mode
/// (see the module note); on a single node the same as [`ingest_parsed`].
pub async fn ingest_routed<'a>(
    state: &State,
    tenant: &Arc<Tenant>,
    parsed: Vec<Parsed<'a>>,
    now_ms: i64,
) -> Result<Outcome, IngestError> {
    let Some(peers) = state.peers.get() else {
        return ingest_parsed(state, tenant, parsed, now_ms).await;
    };
    let partitions = peers.partitions();
    // Invalid elements are rejected here; valid ones grouped by partition.
    let mut out = Outcome::default();
    let mut groups: BTreeMap<u32, Vec<(usize, Event<'a>)>> = BTreeMap::new();
    for (i, p) in parsed.into_iter().enumerate() {
        match p {
            Ok(e) => {
                let part = crate::quota::book::partition(tenant, &e.contract, partitions);
                groups.entry(part).or_default().push((i, e));
            }
            Err((id, err)) => {
                out.rejected += 1;
                out.errors.push(Rejection {
                    index: i,
                    id,
                    code: RejectCode::InvalidEvent,
                    field: Some(err.field),
                    message: err.message,
                });
            }
        }
    }
    let single = groups.len() == 1 && out.errors.is_empty();
    let parts = groups.into_iter().map(|(p, events)| async move {
        let r = decide_part(state, peers.as_ref(), tenant, p, &events, now_ms).await;
        (events, r)
    });
    for (events, r) in futures_util::future::join_all(parts).await {
        let part = match r {
            Ok(o) => o,
            // One partition, nothing else in the request: its failure is the request's
            // (the same answers as a single node gives).
            Err(e) if single && !retryable(&e) => return Err(e),
            Err(e) => unavailable(&events, &e.to_string()),
        };
        out.accepted += part.accepted;
        out.duplicates += part.duplicates;
        out.rejected += part.rejected;
        out.errors.extend(part.errors);
    }
    out.errors.sort_by_key(|r| r.index);
    // Decided parts were counted by the node that decided them; what was settled here
    // (invalid elements, unavailable partitions) is counted here.
    let here = Outcome {
        errors: out
            .errors
            .iter()
            .filter(|r| matches!(r.code, RejectCode::InvalidEvent | RejectCode::Unavailable))
            .cloned()
            .collect(),
        ..Outcome::default()
    };
    super::outcome::record_metrics(&here);
    Ok(out)
}

/// Decides the events of partition `p` (with their request indexes): here when this node
/// owns it, else by its owner. Returns the outcome with request indexes.
async fn decide_part(
    state: &State,
    peers: &dyn crate::state::Peers,
    tenant: &Arc<Tenant>,
    p: u32,
    events: &[(usize, Event<'_>)],
    now_ms: i64,
) -> Result<Outcome, IngestError> {
    if peers.owns(p) {
        let parsed: Vec<Parsed<'_>> = events.iter().map(|(_, e)| Ok(e.clone())).collect();
        let mut o = ingest_in(state, tenant, parsed, now_ms, Some(p)).await?;
        for r in &mut o.errors {
            r.index = events[r.index].0;
        }
        return Ok(o);
    }
    let request = WireRequest {
        tenant: Cow::Borrowed(&tenant.name),
        now_ms,
        events: events.iter().map(|(_, e)| wire(e)).collect(),
    };
    let bytes = serde_json::to_vec(&request).expect("a request serializes");
    let reply = match peers.request("ingest", p, bytes).await {
        Ok(r) => r,
        Err(e) => {
            tracing::debug!(error = %e, "forwarded events not decided");
            return Ok(unavailable(events, &e.to_string()));
        }
    };
    match serde_json::from_slice::<WireReply>(&reply) {
        Ok(WireReply::Outcome {
            accepted,
            duplicates,
            errors,
        }) => {
            let mut o = Outcome {
                accepted,
                duplicates,
                rejected: errors.len(),
                errors: Vec::with_capacity(errors.len()),
            };
            for w in errors {
                let index = events.get(w.index).map_or(w.index, |(i, _)| *i);
                o.errors.push(rejection_of(w, index));
            }
            Ok(o)
        }
        Ok(WireReply::Failed(why)) => Ok(unavailable(events, &why)),
        Err(e) => Ok(unavailable(
            events,
            &format!("partition {p}: unreadable answer from its owner: {e}"),
        )),
    }
}

/// The owner's side of a forwarded part for partition `p`: decides it and returns the
/// encoded reply.
pub async fn serve_forwarded(state: &State, p: u32, request: &[u8]) -> Vec<u8> {
    let reply = match serde_json::from_slice::<WireRequest<'_>>(request) {
        Err(e) => WireReply::Failed(format!("unreadable forwarded request: {e}")),
        Ok(req) => match state.registry.tenant(&req.tenant).cloned() {
            None => WireReply::Failed(format!("tenant {} is not configured here", req.tenant)),
            Some(tenant) => {
                let parsed: Vec<Parsed<'_>> =
                    req.events.into_iter().map(|w| Ok(unwire(w))).collect();
                match ingest_in(state, &tenant, parsed, req.now_ms, Some(p)).await {
                    Ok(o) => WireReply::Outcome {
                        accepted: o.accepted,
                        duplicates: o.duplicates,
                        errors: o
                            .errors
                            .into_iter()
                            .map(|r| WireRejection {
                                index: r.index,
                                id: r.id,
                                code: r.code.as_str().to_string(),
                                field: r.field.map(str::to_string),
                                message: r.message,
                            })
                            .collect(),
                    },
                    Err(e) => WireReply::Failed(e.to_string()),
                }
            }
        },
    };
    serde_json::to_vec(&reply).expect("a reply serializes")
}
