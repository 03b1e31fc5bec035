//! `GET /v1/contracts/{contract}/usage` (SPEC 4.1).

use std::sync::Arc;

use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use serde_json::json;

use crate::http::error::{ApiError, ErrorCode};
use crate::http::router::Ctx;
use crate::http::util::{json, query_map, Body};
use chrono_tz::Tz;

use crate::query::{usage, UsageQuery, WindowSpec};
use crate::window::{now_ms, parse_rfc3339, Granularity, DAY_MS};

/// Longest range per window size, so a response stays bounded.
fn max_range_ms(w: WindowSpec) -> i64 {
    match w {
        WindowSpec::Stored(Granularity::Minute) => 31 * DAY_MS,
        WindowSpec::Stored(Granularity::Hour) => 400 * DAY_MS,
        WindowSpec::Stored(Granularity::Day) | WindowSpec::Calendar(_) | WindowSpec::None => {
            100 * 366 * DAY_MS
        }
    }
}

fn bad(msg: impl Into<String>) -> ApiError {
    ApiError::new(ErrorCode::InvalidQuery, msg)
}

/// Answers a usage query for one contract.
pub fn get(ctx: &Ctx, contract: &str, req: &Request<Incoming>) -> Result<Response<Body>, ApiError> {
    let q = query_map(req.uri().query())?;
    for k in q.keys() {
        if !matches!(
            k.as_str(),
            "lever" | "from" | "to" | "window" | "tz" | "group_by"
        ) {
            return Err(bad(format!("unknown parameter `{k}`")));
        }
    }
    let tenant = ctx.tenant()?;
    let Some(c) = tenant.contract(contract) else {
        return Err(ApiError::new(
            ErrorCode::NotFound,
            format!("contract {contract:?} does not exist"),
        ));
    };
    let tz: Tz = match q.get("tz") {
        None => c.tz.unwrap_or(Tz::UTC),
        Some(z) => z
            .parse()
            .map_err(|_| bad(format!("`tz` {z:?} is not an IANA time zone")))?,
    };
    let window = match q.get("window") {
        None => WindowSpec::None,
        Some(w) => WindowSpec::parse(w, tz)
            .ok_or_else(|| bad("`window` must be minute, hour, day, month or none"))?,
    };
    let group_by_bucket = match q.get("group_by").map(String::as_str) {
        None => false,
        Some("bucket") => true,
        Some(_) => return Err(bad("`group_by` must be `bucket`")),
    };
    let now = now_ms();
    let to = match q.get("to") {
        Some(t) => parse_rfc3339(t).ok_or_else(|| bad("`to` must be an RFC 3339 time"))?,
        None => now + 1,
    };
    let from = match q.get("from") {
        Some(t) => parse_rfc3339(t).ok_or_else(|| bad("`from` must be an RFC 3339 time"))?,
        None => return Err(bad("`from` is required (RFC 3339); `to` defaults to now")),
    };
    if from >= to {
        return Err(bad("`from` must be before `to`"));
    }
    if to - from > max_range_ms(window) {
        return Err(bad(format!(
            "range too long for window `{}`; split the query",
            window.as_str()
        )));
    }
    let levers = match q.get("lever") {
        Some(l) => vec![tenant
            .lever(l)
            .or_else(|| tenant.levers.get(l.as_str()).map(|x| Arc::clone(&x)))
            .ok_or_else(|| {
                ApiError::new(ErrorCode::NotFound, format!("lever {l:?} does not exist"))
            })?],
        None => {
            let mut all: Vec<_> = tenant.levers.iter().map(|l| Arc::clone(&l)).collect();
            all.sort_by(|a, b| a.id.cmp(&b.id));
            all
        }
    };
    let query = UsageQuery {
        tenant: tenant.name.clone(),
        contract: contract.to_string(),
        levers,
        from,
        to,
        window,
        tz,
        group_by_bucket,
        lateness_ms: tenant.lateness.as_millis() as i64,
        now_ms: now,
    };
    let state = &ctx.state;
    let rows = tokio::task::block_in_place(|| usage(&state.store, &state.counters, &query))?;
    Ok(json(
        StatusCode::OK,
        &json!({
            "contract": contract,
            "window": window.as_str(),
            "tz": tz.name(),
            "from": crate::window::rfc3339(from),
            "to": crate::window::rfc3339(to),
            "items": rows,
        }),
    ))
}
