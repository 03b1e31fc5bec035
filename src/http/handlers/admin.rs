//! Levers and contracts (SPEC 5). Writes need role `admin`, reads `read` or `admin`.
//!
//! A write is persisted (fsynced) before the in-memory registry changes, and writes are
//! serialised by one admin lock, so a lookup never sees a definition that a crash could
//! take back.

use std::sync::Arc;

use crate::http::util::ReqBody;
use hyper::{Request, Response, StatusCode};
use serde::Deserialize;
use serde_json::json;

use crate::config::valid_name;
use crate::http::error::{ApiError, ErrorCode};
use crate::http::router::Ctx;
use crate::http::util::{
    decode_cursor, empty, encode_cursor, json, page_limit, parse_json, query_map, read_body,
    require_json, Body,
};
use crate::quota::book::chain;
use crate::registry::{
    normalize_quotas, valid_external_id, Contract, ContractBody, ContractStatus, Lever, LeverBody,
    Plan, PlanBody, Tenant, MAX_PARENT_DEPTH,
};
use crate::state::State;
use crate::store::keys::{admin_prefix, AdminKind};
use crate::window::{now_ms, parse_rfc3339, rfc3339};

/// Largest admin request body.
const MAX_ADMIN_BODY: usize = 256 * 1024;

pub async fn body(ctx: &Ctx, req: Request<ReqBody>) -> Result<bytes::Bytes, ApiError> {
    require_json(req.headers())?;
    let (parts, b) = req.into_parts();
    read_body(&parts, b, MAX_ADMIN_BODY, ctx.state.cfg.body_read_timeout).await
}

pub fn invalid((field, reason): (&'static str, String)) -> ApiError {
    ApiError::new(ErrorCode::InvalidRequest, format!("`{field}`: {reason}"))
}

/// Persists one admin record with an fsync.
pub fn persist(
    state: &State,
    kind: AdminKind,
    tenant: &str,
    name: &str,
    value: &[u8],
) -> Result<(), ApiError> {
    let mut batch = state.journal.batch(value.len() + 64);
    batch.rows().put_admin(kind, tenant, name, value);
    batch.durable();
    tokio::task::block_in_place(|| state.journal.commit_blocking(batch)).map_err(ApiError::from)
}

pub fn not_found(what: &str, id: &str) -> ApiError {
    ApiError::new(ErrorCode::NotFound, format!("{what} {id:?} does not exist"))
}

/// `PUT /v1/levers/{lever}`.
pub async fn put_lever(
    ctx: &Ctx,
    name: &str,
    req: Request<ReqBody>,
) -> Result<Response<Body>, ApiError> {
    if !valid_name(name) {
        return Err(ApiError::new(
            ErrorCode::InvalidRequest,
            "lever names are 1-64 characters of [A-Za-z0-9_.:-]",
        ));
    }
    let bytes = body(ctx, req).await?;
    let b: LeverBody = parse_json(&bytes)?;
    b.validate().map_err(invalid)?;
    let t = ctx.tenant()?;
    let _lock = ctx.state.admin_lock.lock().await;
    let existing = t.levers.get(name).map(|l| Arc::clone(&l));
    if let Some(old) = &existing {
        if old.aggregation != b.aggregation {
            return Err(ApiError::new(
                ErrorCode::Conflict,
                format!(
                    "lever {name:?} aggregates with `{}`; its aggregation cannot change because usage is stored under it",
                    old.aggregation.as_str()
                ),
            ));
        }
        if old.same_as(&b) {
            return Ok(json(StatusCode::OK, &**old));
        }
    }
    let now = rfc3339(now_ms());
    let created = existing
        .as_ref()
        .filter(|l| !l.deleted)
        .map(|l| l.created_at.clone())
        .unwrap_or_else(|| now.clone());
    let lever = Lever::from_body(name, &b, created, now);
    let enc = serde_json::to_vec(&lever)
        .map_err(|e| ApiError::new(ErrorCode::Internal, e.to_string()))?;
    persist(&ctx.state, AdminKind::Lever, &t.name, name, &enc)?;
    let status = if existing.as_ref().is_some_and(|l| !l.deleted) {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    let lever = Arc::new(lever);
    t.levers.insert(name.to_string(), lever.clone());
    Ok(json(status, &*lever))
}

/// `GET /v1/levers/{lever}`.
pub fn get_lever(ctx: &Ctx, name: &str) -> Result<Response<Body>, ApiError> {
    let t = ctx.tenant()?;
    let l = t.lever(name).ok_or_else(|| not_found("lever", name))?;
    Ok(json(StatusCode::OK, &*l))
}

/// `DELETE /v1/levers/{lever}`: new events for it are refused; stored usage stays
/// queryable, and the lever may be re-created with the same aggregation.
pub async fn delete_lever(ctx: &Ctx, name: &str) -> Result<Response<Body>, ApiError> {
    let t = ctx.tenant()?;
    let _lock = ctx.state.admin_lock.lock().await;
    let l = t.lever(name).ok_or_else(|| not_found("lever", name))?;
    let mut gone = (*l).clone();
    gone.deleted = true;
    gone.status = "deleted".into();
    gone.updated_at = rfc3339(now_ms());
    let enc =
        serde_json::to_vec(&gone).map_err(|e| ApiError::new(ErrorCode::Internal, e.to_string()))?;
    persist(&ctx.state, AdminKind::Lever, &t.name, name, &enc)?;
    t.levers.insert(name.to_string(), Arc::new(gone));
    Ok(empty(StatusCode::NO_CONTENT))
}

/// Scans one page of admin records of `kind` after the cursor.
fn page<T>(
    state: &State,
    kind: AdminKind,
    tenant: &str,
    q: &std::collections::HashMap<String, String>,
    mut keep: impl FnMut(&str) -> Option<T>,
) -> Result<(Vec<T>, Option<String>), ApiError> {
    page_under(state, admin_prefix(kind, tenant), q, |name, _| keep(name))
}

/// Scans one page of admin records under `prefix` after the cursor; `keep` gets the rest
/// of each key as the record's name, and the record.
pub fn page_under<T>(
    state: &State,
    prefix: Vec<u8>,
    q: &std::collections::HashMap<String, String>,
    mut keep: impl FnMut(&str, &[u8]) -> Option<T>,
) -> Result<(Vec<T>, Option<String>), ApiError> {
    let limit = page_limit(q)?;
    let start = match q.get("cursor") {
        Some(c) => {
            let after = decode_cursor(c)?;
            let mut k = prefix.clone();
            k.extend_from_slice(after.as_bytes());
            // Strictly after the cursor's key.
            k.push(0);
            k
        }
        None => prefix.clone(),
    };
    let mut items = Vec::new();
    let mut last: Option<String> = None;
    let mut more = false;
    state.store.scan_admin(&prefix, &start, |k, v| {
        let Ok(name) = std::str::from_utf8(&k[prefix.len()..]) else {
            return true;
        };
        if let Some(item) = keep(name, v) {
            if items.len() == limit {
                more = true;
                return false;
            }
            items.push(item);
            last = Some(name.to_string());
        }
        true
    })?;
    Ok((
        items,
        if more {
            last.map(|l| encode_cursor(&l))
        } else {
            None
        },
    ))
}

/// `GET /v1/levers`.
pub fn list_levers(ctx: &Ctx, req: &Request<ReqBody>) -> Result<Response<Body>, ApiError> {
    let t = ctx.tenant()?;
    let q = query_map(req.uri().query())?;
    let (items, next) = page(&ctx.state, AdminKind::Lever, &t.name, &q, |name| {
        t.lever(name)
    })?;
    let items: Vec<&Lever> = items.iter().map(|l| &**l).collect();
    Ok(json(
        StatusCode::OK,
        &json!({"items": items, "next_cursor": next}),
    ))
}

/// Root of a contract's parent chain, with `contract` standing in for its stored version.
fn root_of(t: &Tenant, contract: &Arc<Contract>) -> String {
    chain(t, contract)
        .last()
        .map(|c| c.id.clone())
        .unwrap_or_default()
}

fn contract_view(c: &Contract) -> serde_json::Value {
    c.view(now_ms())
}

/// `PUT /v1/contracts/{contract}`.
pub async fn put_contract(
    ctx: &Ctx,
    id: &str,
    req: Request<ReqBody>,
) -> Result<Response<Body>, ApiError> {
    if !valid_external_id(id) {
        return Err(ApiError::new(
            ErrorCode::InvalidRequest,
            "contract ids are 1-128 bytes without control characters or '/'",
        ));
    }
    let bytes = body(ctx, req).await?;
    let mut b: ContractBody = parse_json(&bytes)?;
    let t = ctx.tenant()?;
    b.validate(|l| t.lever(l).is_some()).map_err(invalid)?;
    normalize_quotas(&mut b.quotas);
    if let Some(a) = b.anchor.as_deref().and_then(parse_rfc3339) {
        b.anchor = Some(rfc3339(a));
    }
    if let Some(p) = &b.plan {
        if t.plan(p).is_none() {
            return Err(ApiError::new(
                ErrorCode::InvalidRequest,
                format!("`plan`: plan {p:?} does not exist"),
            ));
        }
    }
    let _lock = ctx.state.admin_lock.lock().await;
    if let Some(parent) = &b.parent {
        // Walk to the root: the parent must exist, the chain must not come back to this
        // contract, and it may be at most MAX_PARENT_DEPTH deep.
        let mut at = parent.clone();
        let mut depth = 1;
        loop {
            if at == id {
                return Err(ApiError::new(
                    ErrorCode::InvalidRequest,
                    "`parent`: would create a cycle of parent contracts",
                ));
            }
            let Some(p) = t.contract(&at) else {
                return Err(ApiError::new(
                    ErrorCode::InvalidRequest,
                    format!("`parent`: contract {at:?} does not exist"),
                ));
            };
            match &p.body.parent {
                Some(next) if depth < MAX_PARENT_DEPTH => {
                    at = next.clone();
                    depth += 1;
                }
                Some(_) => {
                    return Err(ApiError::new(
                        ErrorCode::InvalidRequest,
                        format!(
                        "`parent`: parent chains may be at most {MAX_PARENT_DEPTH} contracts deep"
                    ),
                    ))
                }
                None => break,
            }
        }
        // The contract's descendants move with it: none may end up deeper than allowed.
        let below = t
            .contracts
            .iter()
            .map(|c| Arc::clone(c.value()))
            .collect::<Vec<_>>()
            .iter()
            .filter_map(|c| chain(&t, c).iter().position(|a| a.id == id))
            .max()
            .unwrap_or(0);
        if depth + below > MAX_PARENT_DEPTH {
            return Err(ApiError::new(
                ErrorCode::InvalidRequest,
                format!(
                    "`parent`: contracts under {id:?} would have more than {MAX_PARENT_DEPTH} ancestors"
                ),
            ));
        }
    }
    let existing = t.contract(id);
    if let Some(old) = &existing {
        if old.body == b {
            return Ok(json(StatusCode::OK, &contract_view(old)));
        }
    }
    let now = rfc3339(now_ms());
    let contract = Contract {
        id: id.to_string(),
        body: b,
        status: existing
            .as_ref()
            .map(|c| c.status)
            .unwrap_or(ContractStatus::Active),
        ends_at: existing.as_ref().and_then(|c| c.ends_at.clone()),
        created_at: existing
            .as_ref()
            .map(|c| c.created_at.clone())
            .unwrap_or_else(|| now.clone()),
        updated_at: now,
        ends_at_ms: None,
        tz: None,
        anchor_ms: 0,
        parsed_quotas: Vec::new(),
        shared_id: Default::default(),
    }
    .finish();
    let enc = serde_json::to_vec(&contract)
        .map_err(|e| ApiError::new(ErrorCode::Internal, e.to_string()))?;
    persist(&ctx.state, AdminKind::Contract, &t.name, id, &enc)?;
    let status = if existing.is_some() {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    let view = contract_view(&contract);
    let contract = Arc::new(contract);
    let old_root = existing.as_ref().map(|c| root_of(&t, c));
    let new_root = root_of(&t, &contract);
    match old_root {
        Some(old_root) if old_root != new_root => {
            // Re-parenting moves the quota rows of this contract and its descendants to
            // the new root's shard, atomically with the registry change.
            // Snapshot first: no registry lookups while a map iterator holds a shard.
            let all: Vec<Arc<Contract>> =
                t.contracts.iter().map(|c| Arc::clone(c.value())).collect();
            let moved: std::collections::HashSet<String> = all
                .iter()
                .filter(|c| chain(&t, c).iter().any(|a| a.id == id))
                .map(|c| c.id.clone())
                .chain(std::iter::once(id.to_string()))
                .collect();
            ctx.state
                .quotas
                .rehome(&t.name, &moved, &old_root, &new_root, || {
                    t.contracts.insert(id.to_string(), contract.clone())
                });
        }
        _ => {
            t.contracts.insert(id.to_string(), contract.clone());
        }
    }
    Ok(json(status, &view))
}

/// `GET /v1/contracts/{contract}`.
pub fn get_contract(ctx: &Ctx, id: &str) -> Result<Response<Body>, ApiError> {
    let t = ctx.tenant()?;
    let c = t.contract(id).ok_or_else(|| not_found("contract", id))?;
    Ok(json(StatusCode::OK, &contract_view(&c)))
}

/// `GET /v1/contracts?customer=&cursor=&limit=`.
pub fn list_contracts(ctx: &Ctx, req: &Request<ReqBody>) -> Result<Response<Body>, ApiError> {
    let t = ctx.tenant()?;
    let q = query_map(req.uri().query())?;
    let customer = q.get("customer").cloned();
    let (items, next) = page(&ctx.state, AdminKind::Contract, &t.name, &q, |id| {
        t.contract(id)
            .filter(|c| customer.as_ref().is_none_or(|cu| &c.body.customer == cu))
            .map(|c| contract_view(&c))
    })?;
    Ok(json(
        StatusCode::OK,
        &json!({"items": items, "next_cursor": next}),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EndBody {
    ends_at: Option<String>,
}

/// `POST /v1/contracts/{contract}/end`: events at or after `ends_at` (default now) get
/// `contract_ended`.
pub async fn end_contract(
    ctx: &Ctx,
    id: &str,
    req: Request<ReqBody>,
) -> Result<Response<Body>, ApiError> {
    let bytes = body(ctx, req).await?;
    let b: EndBody = if bytes.iter().all(u8::is_ascii_whitespace) {
        EndBody { ends_at: None }
    } else {
        parse_json(&bytes)?
    };
    let now = now_ms();
    let ends_ms = match &b.ends_at {
        Some(t) => parse_rfc3339(t).ok_or_else(|| {
            ApiError::new(
                ErrorCode::InvalidRequest,
                "`ends_at`: must be an RFC 3339 time",
            )
        })?,
        None => now,
    };
    let t = ctx.tenant()?;
    let _lock = ctx.state.admin_lock.lock().await;
    let c = t.contract(id).ok_or_else(|| not_found("contract", id))?;
    let mut updated = (*c).clone();
    updated.ends_at = Some(rfc3339(ends_ms));
    updated.status = if ends_ms <= now {
        ContractStatus::Ended
    } else {
        ContractStatus::Active
    };
    updated.updated_at = rfc3339(now);
    let updated = updated.finish();
    let enc = serde_json::to_vec(&updated)
        .map_err(|e| ApiError::new(ErrorCode::Internal, e.to_string()))?;
    persist(&ctx.state, AdminKind::Contract, &t.name, id, &enc)?;
    let view = contract_view(&updated);
    t.contracts.insert(id.to_string(), Arc::new(updated));
    Ok(json(StatusCode::OK, &view))
}

/// `PUT /v1/plans/{plan}`: creates or replaces a plan. Contracts on the plan see the new
/// quotas with their next event.
pub async fn put_plan(
    ctx: &Ctx,
    id: &str,
    req: Request<ReqBody>,
) -> Result<Response<Body>, ApiError> {
    if !valid_external_id(id) {
        return Err(ApiError::new(
            ErrorCode::InvalidRequest,
            "plan ids are 1-128 bytes without control characters or '/'",
        ));
    }
    let bytes = body(ctx, req).await?;
    let mut b: PlanBody = parse_json(&bytes)?;
    let t = ctx.tenant()?;
    b.validate(|l| t.lever(l).is_some()).map_err(invalid)?;
    normalize_quotas(&mut b.quotas);
    let _lock = ctx.state.admin_lock.lock().await;
    let existing = t.plan(id);
    if let Some(old) = &existing {
        if old.body == b {
            return Ok(json(StatusCode::OK, &old.view()));
        }
    }
    let now = rfc3339(now_ms());
    let plan = Plan {
        id: id.to_string(),
        body: b,
        created_at: existing
            .as_ref()
            .map(|p| p.created_at.clone())
            .unwrap_or_else(|| now.clone()),
        updated_at: now,
        parsed_quotas: Vec::new(),
    }
    .finish();
    let enc =
        serde_json::to_vec(&plan).map_err(|e| ApiError::new(ErrorCode::Internal, e.to_string()))?;
    persist(&ctx.state, AdminKind::Plan, &t.name, id, &enc)?;
    let status = if existing.is_some() {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    let view = plan.view();
    t.plans.insert(id.to_string(), Arc::new(plan));
    Ok(json(status, &view))
}

/// `GET /v1/plans/{plan}`.
pub fn get_plan(ctx: &Ctx, id: &str) -> Result<Response<Body>, ApiError> {
    let t = ctx.tenant()?;
    let p = t.plan(id).ok_or_else(|| not_found("plan", id))?;
    Ok(json(StatusCode::OK, &p.view()))
}

/// `GET /v1/plans?cursor=&limit=`.
pub fn list_plans(ctx: &Ctx, req: &Request<ReqBody>) -> Result<Response<Body>, ApiError> {
    let t = ctx.tenant()?;
    let q = query_map(req.uri().query())?;
    let (items, next) = page(&ctx.state, AdminKind::Plan, &t.name, &q, |id| {
        t.plan(id).map(|p| p.view())
    })?;
    Ok(json(
        StatusCode::OK,
        &json!({"items": items, "next_cursor": next}),
    ))
}
