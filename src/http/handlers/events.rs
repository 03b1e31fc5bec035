//! `POST /v1/events` (SPEC 2.1).

use crate::http::util::ReqBody;
use hyper::{Request, Response, StatusCode};

use crate::event::{parse_body, BodyError, BodyFormat};
use crate::http::error::{ApiError, ErrorCode};
use crate::http::router::Ctx;
use crate::http::util::{json, media_type, read_body, Body};
use crate::ingest::ingest_routed;

/// Bodies above this size are parsed with `block_in_place`.
const PARSE_BLOCKING_BYTES: usize = 16 * 1024;
use crate::window::now_ms;

fn body_format(req: &Request<ReqBody>) -> Result<BodyFormat, ApiError> {
    let Some((mime, ct)) = media_type(req.headers()) else {
        return Ok(BodyFormat::Json);
    };
    match mime.as_str() {
        "application/json" => Ok(BodyFormat::Json),
        "application/x-ndjson" | "application/ndjson" | "application/jsonl" => {
            Ok(BodyFormat::Ndjson)
        }
        _ => Err(ApiError::new(
            ErrorCode::UnsupportedMediaType,
            format!("expected application/json or application/x-ndjson, got {ct:?}"),
        )),
    }
}

/// Ingests one event, a JSON array or NDJSON.
pub async fn post(ctx: &Ctx, req: Request<ReqBody>) -> Result<Response<Body>, ApiError> {
    let format = body_format(&req)?;
    let cfg = &ctx.state.cfg;
    let (parts, body) = req.into_parts();
    let bytes = read_body(&parts, body, cfg.max_body_bytes, cfg.body_read_timeout).await?;
    let now = now_ms();
    let tenant = ctx.tenant()?;
    let limit = cfg.max_batch_events;
    // A large body is parsed off the async scheduler's cooperative budget, like the rest
    // of a large batch's CPU-bound work (see `crate::ingest`).
    let parsed = if bytes.len() > PARSE_BLOCKING_BYTES {
        tokio::task::block_in_place(|| parse_body(&bytes, format, limit))
    } else {
        parse_body(&bytes, format, limit)
    };
    let parsed = parsed.map_err(|e| match e {
        BodyError::TooMany { .. } => ApiError::new(ErrorCode::BatchTooLarge, e.to_string()),
        BodyError::Malformed(_) | BodyError::Empty => ApiError::new(
            ErrorCode::MalformedBody,
            format!("{e}; nothing was accepted"),
        ),
    })?;
    let outcome = ingest_routed(&ctx.state, &tenant, parsed, now).await?;
    Ok(json(StatusCode::OK, &outcome))
}
