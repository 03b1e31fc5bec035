//! `GET /v1/changes?after=REV&limit=&window=` (SPEC 4.2), answered by
//! [`crate::query::changes`].

use std::collections::HashMap;

use crate::http::util::ReqBody;
use hyper::{Request, Response, StatusCode};

use crate::http::error::{ApiError, ErrorCode};
use crate::http::router::Ctx;
use crate::http::util::{json, only_params, query_map_up_to, Body};
use crate::query::changes::{changes, changes_partitioned, Cursor};
use crate::window::Granularity;

/// Longest query string of this route: a cursor over 4,096 partitions fits (13 bytes
/// each while streams hold under 2^40 messages), and the URI stays under hyper's
/// 65,534-byte limit.
const MAX_CHANGES_QUERY: usize = 64 * 1024 - 512;

/// Default and largest page size.
const DEFAULT_LIMIT: usize = 1000;
const MAX_LIMIT: usize = 10_000;

fn bad(msg: impl Into<String>) -> ApiError {
    ApiError::new(ErrorCode::InvalidQuery, msg)
}

/// The `limit` parameter.
fn limit(q: &HashMap<String, String>) -> Result<usize, ApiError> {
    match q.get("limit") {
        None => Ok(DEFAULT_LIMIT),
        Some(v) => match v.parse::<usize>() {
            Ok(n) if (1..=MAX_LIMIT).contains(&n) => Ok(n),
            _ => Err(bad(format!(
                "`limit` must be an integer between 1 and {MAX_LIMIT}"
            ))),
        },
    }
}

/// The `window` parameter.
fn only(q: &HashMap<String, String>) -> Result<Option<Granularity>, ApiError> {
    match q.get("window").map(String::as_str) {
        None => Ok(None),
        Some("minute") => Ok(Some(Granularity::Minute)),
        Some("hour") => Ok(Some(Granularity::Hour)),
        Some("day") => Ok(Some(Granularity::Day)),
        Some(_) => Err(bad("`window` must be minute, hour or day")),
    }
}

/// Answers one page of the changes feed.
pub fn get(ctx: &Ctx, req: &Request<ReqBody>) -> Result<Response<Body>, ApiError> {
    // Cluster mode's cursor holds a position per partition: 13 bytes each while streams hold under 2^40 messages.
    let q = query_map_up_to(req.uri().query(), MAX_CHANGES_QUERY)?;
    only_params(&q, &["after", "limit", "window"])?;
    let limit = limit(&q)?;
    let only = only(&q)?;
    let tenant = ctx.tenant()?;
    if let Some(cluster) = &ctx.state.cfg.cluster {
        // Cluster mode: the position is one per partition (crate::revision).
        let cursor = Cursor::parse(q.get("after").map(String::as_str), cluster.partitions)
            .map_err(|e| bad(e.0))?;
        let page = tokio::task::block_in_place(|| {
            changes_partitioned(
                &ctx.state.store,
                &tenant.name,
                &cursor,
                cluster.partitions,
                limit,
                only,
            )
        })?;
        return Ok(json(StatusCode::OK, &page));
    }
    let after: u64 = match q.get("after") {
        None => 0,
        Some(v) => v
            .parse()
            .map_err(|_| bad("`after` must be a revision (a non-negative integer)"))?,
    };
    let page = tokio::task::block_in_place(|| {
        changes(&ctx.state.store, &tenant.name, after, limit, only)
    })?;
    Ok(json(StatusCode::OK, &page))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::util::query_map_up_to;
    use crate::query::changes::Cursor;

    #[test]
    fn the_largest_cluster_cursor_fits_the_route_s_query_limit() {
        // Every one of 4,096 partitions read, each at the 2^40th message of its stream
        // (a trillion; the cursor format allows up to 2^50, which would not fit).
        let c = Cursor((0..4096).map(|p| (p, (1 << 40) - 1)).collect());
        let query = format!("after={}&limit=10000&window=minute", c.encode());
        assert!(query.len() <= MAX_CHANGES_QUERY, "{}", query.len());
        let q = query_map_up_to(Some(&query), MAX_CHANGES_QUERY).unwrap();
        assert_eq!(
            Cursor::parse(q.get("after").map(String::as_str), 4096).unwrap(),
            c
        );
    }

    #[test]
    fn query_strings_are_accepted_at_their_limit_and_refused_past_it() {
        let at = format!("after={}", "0".repeat(MAX_CHANGES_QUERY - 6));
        assert!(query_map_up_to(Some(&at), MAX_CHANGES_QUERY).is_ok());
        let past = format!("{at}0");
        assert!(query_map_up_to(Some(&past), MAX_CHANGES_QUERY).is_err());
        let general = format!("a={}", "b".repeat(crate::http::util::MAX_QUERY - 2));
        assert!(crate::http::util::query_map(Some(&general)).is_ok());
        assert!(crate::http::util::query_map(Some(&format!("{general}b"))).is_err());
    }
}
