//! Corrections (SPEC 4.3), served by [`crate::corrections`]:
//!
//! - `POST /v1/contracts/{contract}/adjustments`: `201` with the audit entry, `200` for
//!   an idempotent repeat, `409` for the same id with another definition.
//! - `DELETE /v1/events/{id}`: `200` with the audit entry (also for a repeat), `409`
//!   for `max` and `latest` levers, `404` for ids not remembered.
//! - `GET /v1/contracts/{contract}/adjustments`: the audit log, oldest first.

use crate::http::util::ReqBody;
use hyper::{Request, Response, StatusCode};

use crate::corrections::forward::adjust_routed;
use crate::corrections::{Actor, AdjustmentBody, Corrections};
use crate::http::error::ApiError;
use crate::http::router::Ctx;
use crate::http::util::{json, only_params, parse_json, query_map, Body};
use crate::registry::persist::PageRequest;
use crate::window::now_ms;

/// The caller, as the audit log names it.
fn actor(ctx: &Ctx) -> Actor {
    Actor {
        tenant: ctx.principal.tenant.to_string(),
        role: ctx.principal.role.as_str().to_string(),
        key: ctx.principal.key_name.to_string(),
    }
}

/// `POST /v1/contracts/{contract}/adjustments`.
pub async fn post_adjustment(
    ctx: &Ctx,
    contract: &str,
    req: Request<ReqBody>,
) -> Result<Response<Body>, ApiError> {
    let bytes = ctx.admin_body(req).await?;
    let b: AdjustmentBody = parse_json(&bytes)?;
    let t = ctx.tenant()?;
    // In cluster mode, decided by the owner of the contract's partition.
    let done = adjust_routed(&ctx.state, &t, contract, &bytes, &b, actor(ctx), now_ms()).await?;
    let status = if done.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok(json(status, &done.entry))
}

/// `DELETE /v1/events/{id}`.
pub async fn retract(ctx: &Ctx, id: &str) -> Result<Response<Body>, ApiError> {
    let t = ctx.tenant()?;
    let done = Corrections::of(&ctx.state)
        .retract(&t, id, actor(ctx))
        .await?;
    Ok(json(StatusCode::OK, &done.entry))
}

/// `GET /v1/contracts/{contract}/adjustments?cursor=&limit=`: the audit log, oldest first.
pub fn list(ctx: &Ctx, contract: &str, req: &Request<ReqBody>) -> Result<Response<Body>, ApiError> {
    let q = query_map(req.uri().query())?;
    only_params(&q, &["cursor", "limit"])?;
    let t = ctx.tenant()?;
    let page = Corrections::of(&ctx.state).list(&t, contract, &PageRequest::from_query(&q))?;
    Ok(json(StatusCode::OK, &page))
}
