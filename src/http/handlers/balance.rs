//! `GET /v1/contracts/{contract}/balance[?lever=]` (SPEC 3), answered from memory by
//! [`crate::quota::balance`].

use crate::http::util::ReqBody;
use hyper::{Request, Response, StatusCode};

use crate::http::error::ApiError;
use crate::http::router::Ctx;
use crate::http::util::{json, only_params, query_map, Body};
use crate::query::balance::{balance_routed, Answer};
use crate::window::now_ms;

/// Answers the balance of one contract (in cluster mode, from its partition owner's
/// quota book).
pub async fn get(
    ctx: &Ctx,
    contract: &str,
    req: &Request<ReqBody>,
) -> Result<Response<Body>, ApiError> {
    let q = query_map(req.uri().query())?;
    only_params(&q, &["lever"])?;
    let tenant = ctx.tenant()?;
    let lever = q.get("lever").map(String::as_str);
    match balance_routed(&ctx.state, &tenant, contract, lever, now_ms()).await? {
        Answer::Here(b) => Ok(json(StatusCode::OK, &b)),
        Answer::Owner(raw) => Ok(crate::http::util::json_bytes(StatusCode::OK, raw)),
    }
}
