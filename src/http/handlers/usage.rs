//! Usage queries (SPEC 4.1):
//!
//! - `GET /v1/contracts/{contract}/usage?lever=&from=&to=&window=&tz=&group_by=bucket`
//! - `GET /v1/usage?from=&to=&window=&lever=&tz=&group_by=&cursor=&limit=`: every contract
//!   of the tenant in id order, paged by contract with an opaque cursor (the last contract
//!   id of the page). Ingest never adds contracts, so paging while it runs neither skips
//!   nor repeats one; a contract created meanwhile appears if its id sorts after the
//!   cursor. With `Accept: application/x-ndjson` or `text/csv` the rows are streamed as
//!   they are computed, one contract at a time, so memory stays bounded however many
//!   contracts there are; without `limit` a stream covers every contract.

use std::collections::HashMap;
use std::sync::Arc;

use crate::http::util::ReqBody;
use bytes::Bytes;
use chrono_tz::Tz;
use http_body_util::BodyExt;
use hyper::{header, Request, Response, StatusCode};
use serde_json::json;

use crate::error::Error;
use crate::http::error::{ApiError, ErrorCode};
use crate::http::router::Ctx;
use crate::http::util::{decode_cursor, json, query_map, Body, ChannelBody};
use crate::query::contracts::contract_page;
use crate::query::{usage, UsageQuery, UsageRow, WindowSpec};
use crate::registry::{Contract, Lever, Tenant};
use crate::state::State;
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

/// Validated query parameters shared by both endpoints.
struct Params {
    levers: Vec<Arc<Lever>>,
    from: i64,
    to: i64,
    window: String,
    /// Explicit `tz`; else each contract's zone.
    tz: Option<Tz>,
    group_by_bucket: bool,
    now: i64,
}

fn parse_params(
    tenant: &Tenant,
    q: &HashMap<String, String>,
    extra: &[&str],
) -> Result<Params, ApiError> {
    for k in q.keys() {
        if !matches!(
            k.as_str(),
            "lever" | "from" | "to" | "window" | "tz" | "group_by"
        ) && !extra.contains(&k.as_str())
        {
            return Err(bad(format!("unknown parameter `{k}`")));
        }
    }
    let tz: Option<Tz> = match q.get("tz") {
        None => None,
        Some(z) => Some(
            z.parse()
                .map_err(|_| bad(format!("`tz` {z:?} is not an IANA time zone")))?,
        ),
    };
    let window = q.get("window").cloned().unwrap_or_else(|| "none".into());
    // Validated here for every zone; the spec itself depends on each contract's zone.
    let probe = WindowSpec::parse(&window, Tz::UTC)
        .ok_or_else(|| bad("`window` must be minute, hour, day, month or none"))?;
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
    if to - from > max_range_ms(probe) {
        return Err(bad(format!(
            "range too long for window `{}`; split the query",
            probe.as_str()
        )));
    }
    let levers = match q.get("lever") {
        Some(l) => vec![tenant
            .lever(l)
            .or_else(|| tenant.levers.get(l.as_str()).map(|x| Arc::clone(&x)))
            .ok_or_else(|| Error::not_found("lever", l))?],
        None => {
            let mut all: Vec<_> = tenant.levers.iter().map(|l| Arc::clone(&l)).collect();
            all.sort_by(|a, b| a.id.cmp(&b.id));
            all
        }
    };
    Ok(Params {
        levers,
        from,
        to,
        window,
        tz,
        group_by_bucket,
        now,
    })
}

/// Runs the query for one contract; returns its zone and rows.
fn contract_rows(
    state: &State,
    tenant: &Tenant,
    c: &Contract,
    p: &Params,
) -> Result<(Tz, Vec<UsageRow>), ApiError> {
    let tz = p.tz.unwrap_or(c.tz.unwrap_or(Tz::UTC));
    let window = WindowSpec::parse(&p.window, tz)
        .ok_or_else(|| bad("`window` must be minute, hour, day, month or none"))?;
    let query = UsageQuery {
        tenant: tenant.name.clone(),
        contract: c.id.clone(),
        levers: p.levers.clone(),
        from: p.from,
        to: p.to,
        window,
        tz,
        group_by_bucket: p.group_by_bucket,
        lateness_ms: tenant.lateness.as_millis() as i64,
        now_ms: p.now,
    };
    let rows = usage(&state.store, &state.counters, &query).map_err(Error::from)?;
    Ok((tz, rows))
}

/// Answers a usage query for one contract.
pub fn get(ctx: &Ctx, contract: &str, req: &Request<ReqBody>) -> Result<Response<Body>, ApiError> {
    let q = query_map(req.uri().query())?;
    let tenant = ctx.tenant()?;
    let Some(c) = tenant.contract(contract) else {
        return Err(Error::not_found("contract", contract).into());
    };
    let p = parse_params(&tenant, &q, &[])?;
    let (tz, rows) = tokio::task::block_in_place(|| contract_rows(&ctx.state, &tenant, &c, &p))?;
    let window = WindowSpec::parse(&p.window, tz).map(WindowSpec::as_str);
    Ok(json(
        StatusCode::OK,
        &json!({
            "contract": contract,
            "window": window,
            "tz": tz.name(),
            "from": crate::window::rfc3339(p.from),
            "to": crate::window::rfc3339(p.to),
            "items": rows,
        }),
    ))
}

/// Output format of `GET /v1/usage`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Json,
    Ndjson,
    Csv,
}

fn format_of(req: &Request<ReqBody>) -> Format {
    let accept = req
        .headers()
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let wants = |m: &str| {
        accept
            .split(',')
            .any(|part| part.split(';').next().unwrap_or("").trim() == m)
    };
    if wants("application/x-ndjson") {
        Format::Ndjson
    } else if wants("text/csv") {
        Format::Csv
    } else {
        Format::Json
    }
}

fn row_json(contract: &str, row: &UsageRow) -> serde_json::Value {
    let mut v = serde_json::to_value(row).unwrap_or_default();
    if let Some(obj) = v.as_object_mut() {
        obj.insert("contract".into(), contract.into());
    }
    v
}

/// Usage export bytes (NDJSON, or CSV with its header line first when `header` is set)
/// of the next contracts from `contracts`, until at least 32 KiB are ready or the
/// contracts run out; also whether contracts are left.
fn export_chunk<'c>(
    state: &State,
    tenant: &Tenant,
    p: &Params,
    contracts: &mut impl Iterator<Item = &'c Arc<Contract>>,
    is_csv: bool,
    header: &mut bool,
) -> Result<(Vec<u8>, bool), ApiError> {
    let mut out: Vec<u8> = Vec::with_capacity(64 * 1024);
    // CSV rows, appended to `out` (the writer quotes fields).
    let csv_rows = |out: &mut Vec<u8>, records: &mut dyn Iterator<Item = [String; 8]>| {
        let mut w = csv::WriterBuilder::new()
            .has_headers(false)
            .from_writer(Vec::new());
        for rec in records {
            let _ = w.write_record(&rec);
        }
        if let Ok(bytes) = w.into_inner() {
            out.extend_from_slice(&bytes);
        }
    };
    if std::mem::take(header) {
        let header = [
            "contract",
            "lever",
            "aggregation",
            "bucket",
            "start",
            "end",
            "value",
            "final",
        ]
        .map(String::from);
        csv_rows(&mut out, &mut std::iter::once(header));
    }
    for c in contracts.by_ref() {
        let (_, rows) = contract_rows(state, tenant, c, p)?;
        if is_csv {
            csv_rows(
                &mut out,
                &mut rows.iter().map(|r| {
                    [
                        c.id.clone(),
                        r.lever.clone(),
                        r.aggregation.as_str().to_string(),
                        r.bucket.clone().unwrap_or_default(),
                        r.start.clone(),
                        r.end.clone(),
                        r.value.to_string(),
                        r.is_final.to_string(),
                    ]
                }),
            );
        } else {
            for r in &rows {
                let _ = serde_json::to_writer(&mut out, &row_json(&c.id, r));
                out.push(b'\n');
            }
        }
        if out.len() >= 32 * 1024 {
            return Ok((out, true));
        }
    }
    Ok((out, false))
}

/// `GET /v1/usage`: all contracts of the tenant.
pub fn list(ctx: &Ctx, req: &Request<ReqBody>) -> Result<Response<Body>, ApiError> {
    let q = query_map(req.uri().query())?;
    let tenant = ctx.tenant()?;
    let p = parse_params(&tenant, &q, &["cursor", "limit"])?;
    if let Some(c) = q.get("cursor") {
        decode_cursor(c)?;
    }
    let limit = match q.get("limit") {
        None => None,
        Some(v) => match v.parse::<usize>() {
            Ok(n) if (1..=1000).contains(&n) => Some(n),
            _ => return Err(bad("`limit` must be an integer between 1 and 1000")),
        },
    };
    let format = format_of(req);
    if format == Format::Json {
        let limit = limit.unwrap_or(100);
        let page = contract_page(
            &ctx.state.store,
            &tenant,
            q.get("cursor").map(String::as_str),
            Some(limit),
        )?;
        let (contracts, next) = (page.items, page.next_cursor);
        let mut items = Vec::new();
        tokio::task::block_in_place(|| -> Result<(), ApiError> {
            for c in &contracts {
                let (_, rows) = contract_rows(&ctx.state, &tenant, c, &p)?;
                items.extend(rows.iter().map(|r| row_json(&c.id, r)));
            }
            Ok(())
        })?;
        return Ok(json(
            StatusCode::OK,
            &json!({
                "window": p.window,
                "from": crate::window::rfc3339(p.from),
                "to": crate::window::rfc3339(p.to),
                "items": items,
                "next_cursor": next,
            }),
        ));
    }
    // Streams: the page of contract ids is fixed first (so the next cursor can go in a
    // header); rows are produced about 32 KiB at a time (`block_in_place`: store reads)
    // and sent through a small bounded channel, so a slow client holds back the producer.
    // The producer waits for the client as an async task, holding no thread: a blocking
    // thread per export would let a few slow readers take the whole blocking pool, and
    // with it every `block_in_place` of other requests.
    let page = contract_page(
        &ctx.state.store,
        &tenant,
        q.get("cursor").map(String::as_str),
        limit,
    )?;
    let (contracts, next) = (page.items, page.next_cursor);
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(8);
    let state = ctx.state.clone();
    let is_csv = format == Format::Csv;
    tokio::spawn(async move {
        let mut contracts = contracts.iter();
        let mut header = is_csv;
        loop {
            let produced = tokio::task::block_in_place(|| {
                export_chunk(&state, &tenant, &p, &mut contracts, is_csv, &mut header)
            });
            let (chunk, more) = match produced {
                Ok(c) => c,
                Err(e) => {
                    tracing::error!(error = %e.detail, "usage export failed; response aborted");
                    let _ = tx.send(Err(std::io::Error::other(e.detail))).await;
                    return;
                }
            };
            if !chunk.is_empty() && tx.send(Ok(Bytes::from(chunk))).await.is_err() {
                return; // the client went away
            }
            if !more {
                return;
            }
        }
    });
    let content_type = match format {
        Format::Csv => "text/csv; charset=utf-8",
        _ => "application/x-ndjson",
    };
    let mut b = Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, content_type);
    if let Some(n) = &next {
        b = b.header("meterd-next-cursor", n.as_str());
    }
    Ok(b.body(ChannelBody(rx).boxed())
        .expect("static response parts are valid"))
}
