//! `POST /api/v1/events` (SPEC 2.3): CloudEvents ingest compatible with OpenMeter's API,
//! so OpenMeter and CloudEvents SDKs work unchanged with their base URL pointed at
//! meterd. It shares the native path's dedupe, quotas and durability
//! ([`crate::ingest::ingest_routed`]).
//!
//! Structured mode: `application/cloudevents+json` (one event),
//! `application/cloudevents-batch+json` (an array) and `application/json` (one or an
//! array). Binary content mode: a request whose media type is not a CloudEvents one and
//! that carries `ce-specversion` is one event with its attributes in `ce-` headers and
//! its `data` in the body ([`crate::event::cloudevents::binary`]); it is read into the
//! equivalent structured event, so the mapping, dedupe and answers are the same.
//!
//! Success is `204 No Content`. If any event is rejected the answer is `400`
//! problem+json with code `rejected_events`, the counts and the per-event errors; the
//! accepted events of the same request stay accepted (as in OpenMeter).

use crate::http::util::ReqBody;
use hyper::{header, Request, Response, StatusCode};
use serde_json::json;

use crate::event::cloudevents::binary::{self, Attributes, BinaryError};
use crate::event::cloudevents::parse_cloudevent;
use crate::event::{split_body, BodyError, BodyFormat, Parsed};
use crate::http::error::{ApiError, ErrorCode};
use crate::http::router::Ctx;
use crate::http::util::{empty, full, media_type, read_body, Body};
use crate::ingest::ingest_routed;
use crate::window::now_ms;

/// How a request carries its events.
enum Mode {
    /// Structured JSON: one event or an array (`batch_only`: an array is required).
    Structured {
        /// The media type is the batch one.
        batch_only: bool,
    },
    /// Binary content mode: one event in `ce-` headers and the body.
    Binary {
        /// The attributes read from the headers.
        attributes: Attributes,
        /// The media type of `data` (lowercased, no parameters), if any.
        content_type: Option<String>,
    },
}

/// Which mode a request is in, from its headers alone.
fn mode(headers: &hyper::HeaderMap) -> Result<Mode, ApiError> {
    let mt = media_type(headers);
    let mime = mt.as_ref().map(|(m, _)| m.as_str());
    match mime {
        Some("application/cloudevents+json") => return Ok(Mode::Structured { batch_only: false }),
        Some("application/cloudevents-batch+json") => {
            return Ok(Mode::Structured { batch_only: true })
        }
        // Structured (or batch) mode in an event format other than JSON.
        Some(m) if m.starts_with("application/cloudevents") => {}
        _ if binary::is_binary(headers) => {
            let attributes = Attributes::from_headers(headers)
                .map_err(|e| ApiError::new(ErrorCode::InvalidRequest, e.to_string()))?;
            return Ok(Mode::Binary {
                attributes,
                content_type: mime.map(str::to_string),
            });
        }
        None | Some("application/json") => return Ok(Mode::Structured { batch_only: false }),
        Some(_) => {}
    }
    let ct = mt.map(|(_, ct)| ct).unwrap_or("");
    Err(ApiError::new(
        ErrorCode::UnsupportedMediaType,
        format!(
            "expected application/cloudevents+json, application/cloudevents-batch+json \
             or application/json, or one event in CloudEvents binary mode (a \
             `ce-specversion` header, the body being its JSON `data`), got {ct:?}"
        ),
    ))
}

/// The whole-request error of a binary-mode request that cannot be an event.
fn binary_error(e: BinaryError) -> ApiError {
    let code = match e {
        BinaryError::Header { .. } => ErrorCode::InvalidRequest,
        BinaryError::NotJson(_) => ErrorCode::UnsupportedMediaType,
        BinaryError::MalformedData(_) | BinaryError::Batch => ErrorCode::MalformedBody,
    };
    ApiError::new(code, e.to_string())
}

/// Ingests one CloudEvent or a batch.
pub async fn post(ctx: &Ctx, req: Request<ReqBody>) -> Result<Response<Body>, ApiError> {
    let mode = mode(req.headers())?;
    let cfg = &ctx.state.cfg;
    let (parts, body) = req.into_parts();
    let bytes = read_body(&parts, body, cfg.max_body_bytes, cfg.body_read_timeout).await?;
    let now = now_ms();
    let tenant = ctx.tenant()?;
    // Binary mode's event, as structured JSON; it outlives `parsed`, which borrows it.
    let binary_event;
    let parsed: Vec<Parsed<'_>> = match mode {
        Mode::Binary {
            attributes,
            content_type,
        } => {
            binary_event = attributes
                .into_event(content_type.as_deref(), &bytes)
                .map_err(binary_error)?;
            vec![parse_cloudevent(&tenant, &binary_event).map_err(|(id, e)| (id, binary::locate(e)))]
        }
        Mode::Structured { batch_only } => {
            if batch_only && !bytes.trim_ascii_start().starts_with(b"[") {
                return Err(ApiError::new(
                    ErrorCode::MalformedBody,
                    "application/cloudevents-batch+json needs a JSON array; nothing was \
                     accepted",
                ));
            }
            let elems = split_body(&bytes, BodyFormat::Json, cfg.max_batch_events).map_err(
                |e| match e {
                    BodyError::TooMany { .. } => {
                        ApiError::new(ErrorCode::BatchTooLarge, e.to_string())
                    }
                    BodyError::Malformed(_) | BodyError::Empty => ApiError::new(
                        ErrorCode::MalformedBody,
                        format!("{e}; nothing was accepted"),
                    ),
                },
            )?;
            elems
                .into_iter()
                .map(|r| parse_cloudevent(&tenant, r))
                .collect()
        }
    };
    let out = ingest_routed(&ctx.state, &tenant, parsed, now).await?;
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
