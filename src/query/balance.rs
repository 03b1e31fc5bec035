//! Balances in cluster mode: the quota book that knows a contract's usage is its
//! partition owner's, so a node that does not own the partition asks the owner
//! ([`crate::state::Peers`]); on a single node, and on the owner, the local book answers
//! ([`crate::quota::balance`]).

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::error::{Error, ErrorCode};
use crate::quota::balance::{balance, Balance};
use crate::registry::Tenant;
use crate::state::{PeerError, State};

/// A balance read sent to the partition owner.
#[derive(Debug, Serialize, Deserialize)]
struct WireBalance {
    tenant: String,
    contract: String,
    lever: Option<String>,
    now_ms: i64,
}

/// The owner's answer: the balance as JSON, or an error.
#[derive(Debug, Serialize, Deserialize)]
enum WireAnswer {
    Balance(Box<serde_json::value::RawValue>),
    Error { code: String, message: String },
}

/// A balance, computed here or by the partition's owner (already JSON).
#[derive(Debug)]
pub enum Answer {
    /// Computed from this node's quota book.
    Here(Balance),
    /// The owner's answer, as JSON.
    Owner(bytes::Bytes),
}

/// The balance of `contract` (one lever or every lever) at `now_ms`, from the quota book
/// of the node that owns its partition.
pub async fn balance_routed(
    state: &State,
    tenant: &Arc<Tenant>,
    contract: &str,
    lever: Option<&str>,
    now_ms: i64,
) -> Result<Answer, Error> {
    let here = || balance(&state.quotas, tenant, contract, lever, now_ms).map(Answer::Here);
    let Some(peers) = state.peers.get() else {
        return here();
    };
    let p = crate::quota::book::partition(tenant, contract, peers.partitions());
    if peers.owns(p) {
        return here();
    }
    let req = WireBalance {
        tenant: tenant.name.to_string(),
        contract: contract.to_string(),
        lever: lever.map(str::to_string),
        now_ms,
    };
    let bytes = serde_json::to_vec(&req).map_err(Error::internal)?;
    let reply = peers
        .request("balance", p, bytes)
        .await
        .map_err(|e: PeerError| Error::new(ErrorCode::NotReady, format!("{e}; retry shortly")))?;
    match serde_json::from_slice::<WireAnswer>(&reply) {
        Ok(WireAnswer::Balance(raw)) => {
            Ok(Answer::Owner(bytes::Bytes::from(raw.get().to_string())))
        }
        Ok(WireAnswer::Error { code, message }) => Err(Error::from_owner(&code, message)),
        Err(e) => Err(Error::unreadable_answer(p, e)),
    }
}

/// The owner's side of a forwarded balance read.
pub fn serve_forwarded(state: &State, request: &[u8]) -> Vec<u8> {
    let answer = match serde_json::from_slice::<WireBalance>(request) {
        Err(e) => WireAnswer::Error {
            code: ErrorCode::Internal.as_str().into(),
            message: format!("unreadable forwarded balance read: {e}"),
        },
        Ok(req) => match state.registry.tenant(&req.tenant) {
            None => WireAnswer::Error {
                code: ErrorCode::Internal.as_str().into(),
                message: format!("tenant {} is not configured here", req.tenant),
            },
            Some(t) => match balance(
                &state.quotas,
                t,
                &req.contract,
                req.lever.as_deref(),
                req.now_ms,
            ) {
                Ok(b) => match serde_json::value::to_raw_value(&b) {
                    Ok(raw) => WireAnswer::Balance(raw),
                    Err(e) => WireAnswer::Error {
                        code: ErrorCode::Internal.as_str().into(),
                        message: e.to_string(),
                    },
                },
                Err(e) => WireAnswer::Error {
                    code: e.code().as_str().into(),
                    message: e.message().to_string(),
                },
            },
        },
    };
    serde_json::to_vec(&answer).expect("an answer serializes")
}
