//! `GET /v1/changes?after=REV&limit=&window=` (SPEC 4.2), answered by
//! [`crate::query::changes`].

use crate::http::util::ReqBody;
use hyper::{Request, Response, StatusCode};

use crate::http::error::{ApiError, ErrorCode};
use crate::http::router::Ctx;
use crate::http::util::{json, only_params, query_map, Body};
use crate::query::changes::changes;
use crate::window::Granularity;

/// Default and largest page size.
const DEFAULT_LIMIT: usize = 1000;
const MAX_LIMIT: usize = 10_000;

fn bad(msg: impl Into<String>) -> ApiError {
    ApiError::new(ErrorCode::InvalidQuery, msg)
}

/// Answers one page of the changes feed.
pub fn get(ctx: &Ctx, req: &Request<ReqBody>) -> Result<Response<Body>, ApiError> {
    let q = query_map(req.uri().query())?;
    only_params(&q, &["after", "limit", "window"])?;
    let after: u64 = match q.get("after") {
        None => 0,
        Some(v) => v
            .parse()
            .map_err(|_| bad("`after` must be a revision (a non-negative integer)"))?,
    };
    let limit = match q.get("limit") {
        None => DEFAULT_LIMIT,
        Some(v) => match v.parse::<usize>() {
            Ok(n) if (1..=MAX_LIMIT).contains(&n) => n,
            _ => {
                return Err(bad(format!(
                    "`limit` must be an integer between 1 and {MAX_LIMIT}"
                )))
            }
        },
    };
    let only: Option<Granularity> = match q.get("window").map(String::as_str) {
        None => None,
        Some("minute") => Some(Granularity::Minute),
        Some("hour") => Some(Granularity::Hour),
        Some("day") => Some(Granularity::Day),
        Some(_) => return Err(bad("`window` must be minute, hour or day")),
    };
    let tenant = ctx.tenant()?;
    let page = tokio::task::block_in_place(|| {
        changes(&ctx.state.store, &tenant.name, after, limit, only)
    })?;
    Ok(json(StatusCode::OK, &page))
}
