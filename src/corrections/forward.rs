//! Cluster mode: an adjustment is decided by its contract's partition owner, which
//! appends it to the partition's stream ([`Corrections::adjust`]); a node that does not
//! own the partition forwards the request ([`crate::state::Peers`]) and answers what the
//! owner answered. On a single node, and on the owner, it is decided here.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::{Actor, AdjustmentBody, AuditEntry, Corrected, Corrections};
use crate::error::{Error, ErrorCode};
use crate::registry::Tenant;
use crate::state::{PeerError, State};

/// An adjustment sent to the partition owner.
#[derive(Debug, Serialize, Deserialize)]
struct WireAdjust {
    tenant: String,
    contract: String,
    /// The request's JSON body, as received.
    body: String,
    by: Actor,
    now_ms: i64,
}

/// The owner's answer.
#[derive(Debug, Serialize, Deserialize)]
enum WireAnswer {
    Done {
        entry: Box<AuditEntry>,
        created: bool,
    },
    Error {
        code: String,
        message: String,
    },
}

/// Adjustment `b` (`raw`: its JSON body) of `contract`, decided by the owner of its
/// partition.
pub async fn adjust_routed(
    state: &State,
    t: &Arc<Tenant>,
    contract: &str,
    raw: &[u8],
    b: &AdjustmentBody,
    by: Actor,
    now_ms: i64,
) -> Result<Corrected, Error> {
    // `adjust` blocks in place itself.
    let here = |by| Corrections::of(state).adjust(t, contract, b, by, now_ms);
    let Some(peers) = state.peers.get() else {
        return here(by);
    };
    let p = crate::quota::book::partition(t, contract, peers.partitions());
    if peers.owns(p) {
        return here(by);
    }
    let req = WireAdjust {
        tenant: t.name.to_string(),
        contract: contract.to_string(),
        body: String::from_utf8_lossy(raw).into_owned(),
        by,
        now_ms,
    };
    let bytes = serde_json::to_vec(&req).map_err(Error::internal)?;
    let reply = peers
        .request("adjust", p, bytes)
        .await
        .map_err(|e: PeerError| Error::new(ErrorCode::NotReady, format!("{e}; retry shortly")))?;
    match serde_json::from_slice::<WireAnswer>(&reply) {
        Ok(WireAnswer::Done { entry, created }) => Ok(Corrected {
            entry: *entry,
            created,
        }),
        Ok(WireAnswer::Error { code, message }) => Err(Error::from_owner(&code, message)),
        Err(e) => Err(Error::unreadable_answer(p, e)),
    }
}

/// The owner's side of a forwarded adjustment.
pub fn serve_forwarded(state: &State, request: &[u8]) -> Vec<u8> {
    let fail = |code: ErrorCode, message: String| WireAnswer::Error {
        code: code.as_str().into(),
        message,
    };
    let answer = match serde_json::from_slice::<WireAdjust>(request) {
        Err(e) => fail(
            ErrorCode::Internal,
            format!("unreadable forwarded adjustment: {e}"),
        ),
        Ok(req) => match (
            state.registry.tenant(&req.tenant),
            serde_json::from_str::<AdjustmentBody>(&req.body),
        ) {
            (None, _) => fail(
                ErrorCode::Internal,
                format!("tenant {} is not configured here", req.tenant),
            ),
            (_, Err(e)) => fail(
                ErrorCode::MalformedBody,
                format!("unreadable adjustment: {e}"),
            ),
            (Some(t), Ok(b)) => {
                match Corrections::of(state).adjust(t, &req.contract, &b, req.by, req.now_ms) {
                    Ok(done) => WireAnswer::Done {
                        entry: Box::new(done.entry),
                        created: done.created,
                    },
                    Err(e) => fail(e.code(), e.message().to_string()),
                }
            }
        },
    };
    serde_json::to_vec(&answer).expect("an answer serializes")
}
