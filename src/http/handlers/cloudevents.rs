//! `POST /api/v1/events` (SPEC 2.3): CloudEvents ingest compatible with OpenMeter's API,
//! so OpenMeter and CloudEvents SDKs work unchanged with their base URL pointed at
//! meterd. It shares the native path's dedupe, quotas and durability
//! ([`crate::ingest::ingest_parsed`]).
//!
//! Accepted media types: `application/cloudevents+json` (one event),
//! `application/cloudevents-batch+json` (an array) and `application/json` (one or an
//! array). Success is `204 No Content`. If any event is rejected the answer is `400`
//! problem+json with code `rejected_events`, the counts and the per-event errors; the
//! accepted events of the same request stay accepted (as in OpenMeter).

use crate::http::util::ReqBody;
use hyper::{header, Request, Response, StatusCode};
use serde_json::json;

use crate::event::cloudevents::parse_cloudevent;
use crate::event::{split_body, BodyError, BodyFormat};
use crate::http::error::{ApiError, ErrorCode};
use crate::http::router::Ctx;
use crate::http::util::{empty, full, media_type, read_body, Body};
use crate::ingest::ingest_parsed;
use crate::window::now_ms;

/// Ingests one CloudEvent or a batch.
pub async fn post(ctx: &Ctx, req: Request<ReqBody>) -> Result<Response<Body>, ApiError> {
    let batch_only = match media_type(req.headers()) {
        None => false,
        Some((mime, ct)) => match mime.as_str() {
            "application/cloudevents+json" | "application/json" => false,
            "application/cloudevents-batch+json" => true,
            _ => {
                return Err(ApiError::new(
                    ErrorCode::UnsupportedMediaType,
                    format!(
                        "expected application/cloudevents+json, application/cloudevents-batch+json \
                         or application/json, got {ct:?}"
                    ),
                ))
            }
        },
    };
    let cfg = &ctx.state.cfg;
    let (parts, body) = req.into_parts();
    let bytes = read_body(&parts, body, cfg.max_body_bytes, cfg.body_read_timeout).await?;
    if batch_only && !bytes.trim_ascii_start().starts_with(b"[") {
        return Err(ApiError::new(
            ErrorCode::MalformedBody,
            "application/cloudevents-batch+json needs a JSON array; nothing was accepted",
        ));
    }
    let now = now_ms();
    let tenant = ctx.tenant()?;
    let elems =
        split_body(&bytes, BodyFormat::Json, cfg.max_batch_events).map_err(|e| match e {
            BodyError::TooMany { .. } => ApiError::new(ErrorCode::BatchTooLarge, e.to_string()),
            BodyError::Malformed(_) | BodyError::Empty => ApiError::new(
                ErrorCode::MalformedBody,
                format!("{e}; nothing was accepted"),
            ),
        })?;
    let parsed = elems.iter().map(|r| parse_cloudevent(&tenant, r)).collect();
    let out = ingest_parsed(&ctx.state, &tenant, parsed, now).await?;
    if out.rejected == 0 {
        return Ok(empty(StatusCode::NO_CONTENT));
    }
    let body = json!({
        "type": "urn:meterd:problem:rejected_events",
        "title": "Some events were rejected",
        "status": 400,
        "detail": format!(
            "{} of {} events rejected; the other {} are accepted ({} of them duplicates)",
            out.rejected,
            out.accepted + out.duplicates + out.rejected,
            out.accepted + out.duplicates,
            out.duplicates
        ),
        "code": "rejected_events",
        "accepted": out.accepted,
        "duplicates": out.duplicates,
        "rejected": out.rejected,
        "errors": out.errors,
    });
    Ok(Response::builder()
        .status(StatusCode::BAD_REQUEST)
        .header(header::CONTENT_TYPE, "application/problem+json")
        .body(full(body.to_string()))
        .expect("static response parts are valid"))
}
