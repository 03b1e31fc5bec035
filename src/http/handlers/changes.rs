//! `GET /v1/changes?after=REV&limit=&window=` (SPEC 4.2): window rows whose value changed
//! after a revision, in revision order, read in one snapshot (see [`crate::revision`]).

use crate::http::util::ReqBody;
use hyper::{Request, Response, StatusCode};
use serde_json::json;

use crate::counters::agg::AggValue;
use crate::http::error::{ApiError, ErrorCode};
use crate::http::router::Ctx;
use crate::http::util::{json, only_params, query_map, Body};
use crate::store::keys::decode_window_key;
use crate::store::StoreError;
use crate::window::{rfc3339, Granularity};

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
    let entries = tokio::task::block_in_place(|| {
        ctx.state
            .store
            .changes_after(&tenant.name, after, limit, |k| match only {
                None => true,
                Some(g) => decode_window_key(k).is_some_and(|w| w.gran == g),
            })
    })?;
    let mut next_after = after;
    let mut items = Vec::with_capacity(entries.len());
    for (rev, key, value) in &entries {
        next_after = next_after.max(*rev);
        // A row removed by retention is no change to report.
        let Some(value) = value else { continue };
        let w = decode_window_key(key).ok_or(StoreError::Corrupt("changes"))?;
        let v = AggValue::decode(value).ok_or(StoreError::Corrupt("windows"))?;
        let mut item = json!({
            "revision": rev,
            "contract": w.contract,
            "lever": w.lever,
            "window": w.gran.as_str(),
            "start": rfc3339(w.start),
            "end": rfc3339(w.start + w.gran.len_ms()),
            "value": v.amount(),
        });
        if let (Some(b), Some(obj)) = (w.bucket, item.as_object_mut()) {
            obj.insert("bucket".into(), b.into());
        }
        items.push(item);
    }
    Ok(json(
        StatusCode::OK,
        &json!({"items": items, "next_after": next_after}),
    ))
}
