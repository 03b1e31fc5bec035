//! `POST/GET /v1/contracts/{contract}/grants` (SPEC 3, 5): top-up packs, served by
//! [`crate::admin::grants`].

use crate::http::util::ReqBody;
use hyper::{Request, Response, StatusCode};

use super::admin::saved_status;
use crate::admin::Admin;
use crate::http::error::ApiError;
use crate::http::router::Ctx;
use crate::http::util::{json, only_params, parse_json, query_map, Body};
use crate::registry::persist::PageRequest;
use crate::registry::GrantBody;

/// `POST /v1/contracts/{contract}/grants`.
pub async fn post(
    ctx: &Ctx,
    contract: &str,
    req: Request<ReqBody>,
) -> Result<Response<Body>, ApiError> {
    let bytes = ctx.admin_body(req).await?;
    let b: GrantBody = parse_json(&bytes)?;
    let t = ctx.tenant()?;
    let saved = Admin::of(&ctx.state).post_grant(&t, contract, b).await?;
    Ok(json(saved_status(&saved), &saved.value))
}

/// `GET /v1/contracts/{contract}/grants?cursor=&limit=`: grants in id order.
pub fn list(ctx: &Ctx, contract: &str, req: &Request<ReqBody>) -> Result<Response<Body>, ApiError> {
    let q = query_map(req.uri().query())?;
    only_params(&q, &["cursor", "limit"])?;
    let t = ctx.tenant()?;
    let page = Admin::of(&ctx.state).list_grants(&t, contract, &PageRequest::from_query(&q))?;
    Ok(json(StatusCode::OK, &page))
}
