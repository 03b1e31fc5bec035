//! `GET /v1/contracts/{contract}/balance[?lever=]` (SPEC 3), answered from memory by
//! [`crate::quota::balance`].

use crate::http::util::ReqBody;
use hyper::{Request, Response, StatusCode};

use crate::http::error::ApiError;
use crate::http::router::Ctx;
use crate::http::util::{json, only_params, query_map, Body};
use crate::quota::balance::balance;
use crate::window::now_ms;

/// Answers the balance of one contract.
pub fn get(ctx: &Ctx, contract: &str, req: &Request<ReqBody>) -> Result<Response<Body>, ApiError> {
    let q = query_map(req.uri().query())?;
    only_params(&q, &["lever"])?;
    let tenant = ctx.tenant()?;
    let b = balance(
        &ctx.state.quotas,
        &tenant,
        contract,
        q.get("lever").map(String::as_str),
        now_ms(),
    )?;
    Ok(json(StatusCode::OK, &b))
}
