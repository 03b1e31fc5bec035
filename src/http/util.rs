//! Request helpers: bounded body reading, query strings, path segments, JSON responses.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::{header, HeaderMap, Response, StatusCode};
use serde::Serialize;

use super::error::{ApiError, ErrorCode};

/// Response body type: a whole body, or a stream (large exports).
pub type Body = http_body_util::combinators::BoxBody<Bytes, std::io::Error>;

/// Refuses query parameters not in `allowed` (`400 invalid_query`).
pub fn only_params(q: &HashMap<String, String>, allowed: &[&str]) -> Result<(), ApiError> {
    match q.keys().find(|k| !allowed.contains(&k.as_str())) {
        Some(k) => Err(ApiError::new(
            ErrorCode::InvalidQuery,
            format!("unknown parameter `{k}`"),
        )),
        None => Ok(()),
    }
}

/// A whole response body.
pub fn full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into()).map_err(|never| match never {}).boxed()
}

/// A streamed response body fed by a channel; an `Err` item aborts the response (the
/// client sees a truncated transfer rather than a silently short result).
pub struct ChannelBody(pub tokio::sync::mpsc::Receiver<Result<Bytes, std::io::Error>>);

impl hyper::body::Body for ChannelBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, std::io::Error>>> {
        self.0
            .poll_recv(cx)
            .map(|item| item.map(|r| r.map(hyper::body::Frame::data)))
    }
}

/// The memory charge of a request whose body length was not declared (chunked): it
/// starts small and grows with the bytes received, so a slow chunked upload holds only
/// what it has sent, not `max_body_bytes` worth of the request budget. Put in the
/// request's extensions by the router and read by [`read_body`].
pub struct BodyCharge {
    budget: Arc<Semaphore>,
    per_byte: u64,
    /// Everything held so far, merged into one permit (its count is the charge in KiB).
    held: Mutex<OwnedSemaphorePermit>,
}

impl BodyCharge {
    /// A charge on `budget` (permits are KiB) that already holds `first`.
    pub fn new(budget: Arc<Semaphore>, per_byte: u64, first: OwnedSemaphorePermit) -> Self {
        BodyCharge {
            budget,
            per_byte,
            held: Mutex::new(first),
        }
    }

    /// Grows the charge to cover a body of `bytes`; false when the budget cannot.
    fn grow_to(&self, bytes: u64) -> bool {
        let need = bytes.saturating_mul(self.per_byte).div_ceil(1024);
        let mut held = crate::sync::lock(&self.held);
        let have = held.num_permits() as u64;
        if need <= have {
            return true;
        }
        let more = (need - have).min(u32::MAX as u64) as u32;
        match self.budget.clone().try_acquire_many_owned(more) {
            Ok(p) => {
                held.merge(p);
                true
            }
            Err(_) => false,
        }
    }
}

/// The declared `content-length` of a request, if any.
pub fn declared_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
}

/// A request's body as the handlers see it. [`read_body`] takes it at most once; the
/// router keeps a [`BodyLeft`] on the same body, so that once the answer is decided it
/// can read and discard what the handler did not read (the connection stays usable) or
/// tell the client the connection closes. A body that is empty from the start (`GET`,
/// `content-length: 0`) has no shared state and costs nothing.
pub struct ReqBody(Option<Arc<BodyShared>>);

struct BodyShared {
    /// The body until a handler takes it.
    incoming: Mutex<Option<Incoming>>,
    /// Set when a handler read the body to its end.
    finished: AtomicBool,
}

/// The router's hold on a request body: what is left of it once the handler is done.
pub struct BodyLeft(Arc<BodyShared>);

impl ReqBody {
    /// Wraps a request's body; the [`BodyLeft`] (with what settling it needs to know
    /// of the head) is `None` when the body is empty.
    pub fn new(incoming: Incoming, headers: &HeaderMap) -> (ReqBody, Option<(BodyLeft, BodyHead)>) {
        use hyper::body::Body as _;
        if incoming.is_end_stream() {
            return (ReqBody(None), None);
        }
        let head = BodyHead::of(&incoming, headers);
        let shared = Arc::new(BodyShared {
            incoming: Mutex::new(Some(incoming)),
            finished: AtomicBool::new(false),
        });
        (
            ReqBody(Some(shared.clone())),
            Some((BodyLeft(shared), head)),
        )
    }

    fn take(&self) -> Option<Incoming> {
        let shared = self.0.as_ref()?;
        crate::sync::lock(&shared.incoming).take()
    }

    fn mark_finished(&self) {
        if let Some(shared) = &self.0 {
            shared.finished.store(true, Ordering::Release);
        }
    }
}

/// What the router does with a request body after the handler: how much of an unread
/// body it reads and discards to keep the connection, and for how long.
#[derive(Debug, Clone, Copy)]
pub struct DrainBound {
    /// Most bytes read and discarded (`max_body_bytes`).
    pub bytes: u64,
    /// Longest time spent on it (`body_read_timeout`).
    pub time: Duration,
}

/// What settling a body needs to know of the request head.
#[derive(Debug, Clone, Copy)]
pub struct BodyHead {
    /// The declared `content-length`, if any.
    pub declared: Option<u64>,
    /// The client sent `Expect: 100-continue`.
    pub expects_continue: bool,
}

impl BodyHead {
    /// Reads them from the request's body and headers (the declared length from the
    /// body's exact size hint: hyper has parsed `content-length` already).
    pub fn of(incoming: &Incoming, headers: &HeaderMap) -> BodyHead {
        use hyper::body::Body as _;
        BodyHead {
            declared: incoming.size_hint().exact(),
            expects_continue: headers
                .get(header::EXPECT)
                .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue")),
        }
    }
}

impl BodyLeft {
    /// Settles the body after the handler answered: `true` when the connection can carry
    /// the next request (the body was read to its end, by the handler or here), `false`
    /// when the answer must say `Connection: close`: the handler stopped reading partway
    /// (too large, too slow, over budget), the declared length is past `bound`, the
    /// client waits for `100 Continue` (its body was never asked for), `drain` is false
    /// (the answer is a 413), or the rest did not arrive within `bound`.
    pub async fn settle(self, head: BodyHead, bound: DrainBound, drain: bool) -> bool {
        let rest = crate::sync::lock(&self.0.incoming).take();
        let Some(mut rest) = rest else {
            return self.0.finished.load(Ordering::Acquire);
        };
        if !drain || head.expects_continue || head.declared.is_some_and(|n| n > bound.bytes) {
            return false;
        }
        let drain = async {
            let mut seen = 0u64;
            while let Some(frame) = rest.frame().await {
                let Ok(frame) = frame else {
                    return false;
                };
                if let Some(data) = frame.data_ref() {
                    seen += data.len() as u64;
                    if seen > bound.bytes {
                        return false;
                    }
                }
            }
            true
        };
        tokio::time::timeout(bound.time, drain)
            .await
            .unwrap_or(false)
    }
}

enum ReadError {
    TooLarge,
    Overloaded,
    Broken(String),
}

/// Reads a whole body of at most `limit` bytes within `timeout`. A request carrying a
/// [`BodyCharge`] has it grown as bytes arrive (429 when the budget runs out). A body
/// not read to its end (any error here) makes the router close the connection after
/// the answer.
pub async fn read_body(
    parts: &hyper::http::request::Parts,
    body: ReqBody,
    limit: usize,
    timeout: Duration,
) -> Result<Bytes, ApiError> {
    let charge = parts.extensions.get::<Arc<BodyCharge>>().cloned();
    if let Some(len) = declared_length(&parts.headers) {
        if len > limit as u64 {
            return Err(too_large(limit));
        }
    }
    let Some(incoming) = body.take() else {
        return Ok(Bytes::new());
    };
    let collect = async {
        let mut body = Limited::new(incoming, limit);
        // Frames are kept as they arrive; a body of one frame (the usual case) is
        // returned without a copy.
        let mut frames: Vec<Bytes> = Vec::new();
        let mut total = 0u64;
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| {
                if e.downcast_ref::<http_body_util::LengthLimitError>()
                    .is_some()
                {
                    ReadError::TooLarge
                } else {
                    ReadError::Broken(e.to_string())
                }
            })?;
            if let Ok(data) = frame.into_data() {
                total += data.len() as u64;
                if let Some(c) = &charge {
                    if !c.grow_to(total) {
                        return Err(ReadError::Overloaded);
                    }
                }
                frames.push(data);
            }
        }
        Ok(match frames.len() {
            0 => Bytes::new(),
            1 => frames.pop().unwrap_or_default(),
            _ => Bytes::from(frames.concat()),
        })
    };
    match tokio::time::timeout(timeout, collect).await {
        Err(_) => Err(ApiError::new(
            ErrorCode::RequestTimeout,
            format!(
                "the body was not received within {}",
                humantime::format_duration(timeout)
            ),
        )),
        Ok(Err(ReadError::TooLarge)) => Err(too_large(limit)),
        Ok(Err(ReadError::Overloaded)) => Err(ApiError::new(
            ErrorCode::Overloaded,
            "too much request data in progress for memory_limit; retry after the indicated delay",
        )),
        Ok(Err(ReadError::Broken(e))) => Err(ApiError::new(
            ErrorCode::MalformedBody,
            format!("could not read the body: {e}"),
        )),
        Ok(Ok(b)) => {
            body.mark_finished();
            Ok(b)
        }
    }
}

fn too_large(limit: usize) -> ApiError {
    ApiError::new(
        ErrorCode::PayloadTooLarge,
        format!("the body exceeds the limit of {limit} bytes"),
    )
}

/// Longest query string accepted.
pub const MAX_QUERY: usize = 8192;

/// Parses a query string of at most [`MAX_QUERY`] bytes into a map; repeated keys are
/// an error.
pub fn query_map(query: Option<&str>) -> Result<HashMap<String, String>, ApiError> {
    query_map_up_to(query, MAX_QUERY)
}

/// [`query_map`] for a query of at most `max` bytes.
pub fn query_map_up_to(
    query: Option<&str>,
    max: usize,
) -> Result<HashMap<String, String>, ApiError> {
    let mut out = HashMap::new();
    if let Some(q) = query {
        if q.len() > max {
            return Err(ApiError::new(
                ErrorCode::InvalidQuery,
                format!("query string too long (the limit is {max} bytes)"),
            ));
        }
        for (k, v) in form_urlencoded::parse(q.as_bytes()) {
            if out.insert(k.to_string(), v.to_string()).is_some() {
                return Err(ApiError::new(
                    ErrorCode::InvalidQuery,
                    format!("parameter `{k}` given more than once"),
                ));
            }
        }
    }
    Ok(out)
}

/// Percent-decodes one path segment.
pub fn decode_segment(seg: &str) -> Result<String, ApiError> {
    percent_encoding::percent_decode_str(seg)
        .decode_utf8()
        .map(|s| s.into_owned())
        .map_err(|_| ApiError::new(ErrorCode::NotFound, "path segment is not valid UTF-8"))
}

/// A JSON response.
pub fn json<T: Serialize>(status: StatusCode, value: &T) -> Response<Body> {
    match serde_json::to_vec(value) {
        Ok(v) => Response::builder()
            .status(status)
            .header(header::CONTENT_TYPE, "application/json")
            .body(full(v))
            .expect("static response parts are valid"),
        Err(e) => ApiError::new(ErrorCode::Internal, e.to_string()).into_response(),
    }
}

/// A response whose body is JSON already encoded (another node's answer).
pub fn json_bytes(status: StatusCode, body: bytes::Bytes) -> Response<Body> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .body(full(body))
        .expect("static response parts are valid")
}

/// An empty response.
pub fn empty(status: StatusCode) -> Response<Body> {
    Response::builder()
        .status(status)
        .body(full(Bytes::new()))
        .expect("static response parts are valid")
}

/// Parses a JSON request body into `T`, mapping errors to `invalid_request` /
/// `malformed_body`.
pub fn parse_json<'a, T: serde::Deserialize<'a>>(body: &'a [u8]) -> Result<T, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::new(
            ErrorCode::MalformedBody,
            "a JSON body is required",
        ));
    }
    serde_json::from_slice(body).map_err(|e| {
        let code = if e.is_syntax() || e.is_eof() {
            ErrorCode::MalformedBody
        } else {
            ErrorCode::InvalidRequest
        };
        ApiError::new(code, format!("invalid body: {e}"))
    })
}

/// Checks that the request's content type is JSON (or absent).
pub fn require_json(headers: &HeaderMap) -> Result<(), ApiError> {
    match media_type(headers) {
        None => Ok(()),
        Some((mime, _)) if mime == "application/json" || mime.ends_with("+json") => Ok(()),
        Some((_, ct)) => Err(ApiError::new(
            ErrorCode::UnsupportedMediaType,
            format!("expected application/json, got {ct:?}"),
        )),
    }
}

/// The request's media type (lower case, without parameters) and the raw header value;
/// `None` without a `Content-Type`.
pub fn media_type(headers: &HeaderMap) -> Option<(String, &str)> {
    let ct = headers.get(header::CONTENT_TYPE)?;
    let ct = ct.to_str().unwrap_or("");
    let mime = ct
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    Some((mime, ct))
}

/// Encodes a page cursor (opaque to clients).
pub fn encode_cursor(last: &str) -> String {
    crate::registry::persist::encode_cursor(last)
}

/// Decodes a page cursor.
pub fn decode_cursor(c: &str) -> Result<String, ApiError> {
    Ok(crate::registry::persist::decode_cursor(c)?)
}

/// Reads `limit` (default 100, 1..=1000).
pub fn page_limit(q: &HashMap<String, String>) -> Result<usize, ApiError> {
    Ok(crate::registry::persist::page_limit(
        q.get("limit").map(String::as_str),
    )?)
}
