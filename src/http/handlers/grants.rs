//! `POST/GET /v1/contracts/{contract}/grants` (SPEC 3, 5): top-up packs.
//!
//! A grant is written (fsynced) to the admin column family before it is added to the
//! registry, so the next quota decision sees it and a restart keeps it. Grants are
//! immutable: a POST with an existing `id` and the same definition answers the stored
//! grant (`200`), a different definition is a `409 conflict`.

use std::sync::Arc;

use crate::http::util::ReqBody;
use hyper::{Request, Response, StatusCode};
use serde_json::json;

use super::admin::{body, invalid, not_found, page_under, persist};
use crate::http::error::{ApiError, ErrorCode};
use crate::http::router::Ctx;
use crate::http::util::{json, only_params, parse_json, query_map, Body};
use crate::quota::book::chain;
use crate::registry::{Grant, GrantBody, Grants, Tenant, MAX_OPEN_GRANTS};
use crate::store::keys::{admin_prefix, grant_name, AdminKind};
use crate::window::now_ms;

fn root_of(t: &Tenant, contract: &str) -> Option<String> {
    let c = t.contract(contract)?;
    chain(t, &c).last().map(|r| r.id.clone())
}

/// The API views of `grants` (all of one contract), with their consumption.
fn views(ctx: &Ctx, t: &Tenant, contract: &str, grants: &[&Grant]) -> Vec<serde_json::Value> {
    let root = root_of(t, contract).unwrap_or_default();
    let used = ctx.state.quotas.grants_used(t, grants, &root);
    let now = now_ms();
    grants
        .iter()
        .zip(used)
        .map(|(g, u)| g.view(u, now))
        .collect()
}

/// `POST /v1/contracts/{contract}/grants`.
pub async fn post(
    ctx: &Ctx,
    contract: &str,
    req: Request<ReqBody>,
) -> Result<Response<Body>, ApiError> {
    let bytes = body(ctx, req).await?;
    let b: GrantBody = parse_json(&bytes)?;
    let t = ctx.tenant()?;
    if t.contract(contract).is_none() {
        return Err(not_found("contract", contract));
    }
    let explicit_start = b.effective_at.is_some();
    let now = now_ms();
    let _lock = ctx.state.admin_lock.lock().await;
    let current: Arc<Grants> = t
        .grants
        .get(contract)
        .map(|g| Arc::clone(&g))
        .unwrap_or_default();
    // A repeat that omits `effective_at` means the stored one (it defaulted to the
    // creation time), also after the grant expired.
    let start_default = current
        .get(&b.id)
        .filter(|_| !explicit_start)
        .map(|g| g.effective_ms)
        .unwrap_or(now);
    let mut grant = b
        .into_grant(contract, start_default, |l| match t.lever(l) {
            None => Err(format!("unknown lever {l:?}")),
            Some(lv) if !lv.aggregation.is_additive() => Err(format!(
                "lever {l:?} aggregates with `{}`; grants add allowance to sum and count levers",
                lv.aggregation.as_str()
            )),
            Some(_) => Ok(()),
        })
        .map_err(invalid)?;
    grant.created_at = crate::window::rfc3339(now);
    if let Some(existing) = current.get(&grant.id) {
        let same = existing.same_definition(&grant)
            && (!explicit_start || existing.effective_ms == grant.effective_ms);
        if !same {
            return Err(ApiError::new(
                ErrorCode::Conflict,
                format!(
                    "grant {:?} already exists with a different definition; grants are immutable",
                    grant.id
                ),
            ));
        }
        let v = views(ctx, &t, contract, &[existing]);
        return Ok(json(StatusCode::OK, &v[0]));
    }
    if current.open_count(now) >= MAX_OPEN_GRANTS {
        return Err(ApiError::new(
            ErrorCode::LimitReached,
            format!(
                "contract {contract:?} already has {MAX_OPEN_GRANTS} grants that have not expired"
            ),
        ));
    }
    let enc = serde_json::to_vec(&grant)
        .map_err(|e| ApiError::new(ErrorCode::Internal, e.to_string()))?;
    persist(
        &ctx.state,
        AdminKind::Grant,
        &t.name,
        &grant_name(contract, &grant.id),
        &enc,
    )?;
    let v = views(ctx, &t, contract, &[&grant]);
    t.grants
        .insert(contract.to_string(), Arc::new(current.with(grant)));
    Ok(json(StatusCode::CREATED, &v[0]))
}

/// `GET /v1/contracts/{contract}/grants?cursor=&limit=`: grants in id order.
pub fn list(ctx: &Ctx, contract: &str, req: &Request<ReqBody>) -> Result<Response<Body>, ApiError> {
    let q = query_map(req.uri().query())?;
    only_params(&q, &["cursor", "limit"])?;
    let t = ctx.tenant()?;
    if t.contract(contract).is_none() {
        return Err(not_found("contract", contract));
    }
    let grants: Arc<Grants> = t
        .grants
        .get(contract)
        .map(|g| Arc::clone(&g))
        .unwrap_or_default();
    let mut prefix = admin_prefix(AdminKind::Grant, &t.name);
    prefix.extend_from_slice(grant_name(contract, "").as_bytes());
    let (items, next) = page_under(&ctx.state, prefix, &q, |id, _| {
        grants.get(id).map(Arc::clone)
    })?;
    let refs: Vec<&Grant> = items.iter().map(|g| &**g).collect();
    let views = views(ctx, &t, contract, &refs);
    Ok(json(
        StatusCode::OK,
        &json!({"items": views, "next_cursor": next}),
    ))
}
