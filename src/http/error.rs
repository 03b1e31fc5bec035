//! The one place where errors become HTTP responses: a closed set of stable codes, each
//! with its status, rendered as `application/problem+json` (RFC 9457) with a `code`.

use hyper::{header, Response, StatusCode};
use serde::Serialize;

/// Stable error codes of whole-request failures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    /// Body is not valid JSON/NDJSON or has the wrong shape.
    MalformedBody,
    /// A request body field is invalid.
    InvalidRequest,
    /// A query parameter is invalid.
    InvalidQuery,
    /// No or unknown API key.
    Unauthorized,
    /// The key's role may not do this.
    Forbidden,
    /// No such resource (or route).
    NotFound,
    /// Method not supported on this route.
    MethodNotAllowed,
    /// The change conflicts with stored state.
    Conflict,
    /// A per-resource count limit is reached (e.g. open grants of a contract).
    LimitReached,
    /// Body exceeds `max_body_bytes`.
    PayloadTooLarge,
    /// More events than `max_batch_events`.
    BatchTooLarge,
    /// Wrong `Content-Type`.
    UnsupportedMediaType,
    /// Body not received within `body_read_timeout`.
    RequestTimeout,
    /// In-flight limit reached.
    Overloaded,
    /// Recovery not done or shutting down.
    NotReady,
    /// The store failed to persist.
    StorageUnavailable,
    /// The disk is full.
    StorageFull,
    /// A bug.
    Internal,
}

impl ErrorCode {
    /// The code string.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::MalformedBody => "malformed_body",
            ErrorCode::InvalidRequest => "invalid_request",
            ErrorCode::InvalidQuery => "invalid_query",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::NotFound => "not_found",
            ErrorCode::MethodNotAllowed => "method_not_allowed",
            ErrorCode::Conflict => "conflict",
            ErrorCode::LimitReached => "limit_reached",
            ErrorCode::PayloadTooLarge => "payload_too_large",
            ErrorCode::BatchTooLarge => "batch_too_large",
            ErrorCode::UnsupportedMediaType => "unsupported_media_type",
            ErrorCode::RequestTimeout => "request_timeout",
            ErrorCode::Overloaded => "overloaded",
            ErrorCode::NotReady => "not_ready",
            ErrorCode::StorageUnavailable => "storage_unavailable",
            ErrorCode::StorageFull => "storage_full",
            ErrorCode::Internal => "internal",
        }
    }

    /// The HTTP status.
    pub fn status(self) -> StatusCode {
        match self {
            ErrorCode::MalformedBody | ErrorCode::InvalidRequest | ErrorCode::InvalidQuery => {
                StatusCode::BAD_REQUEST
            }
            ErrorCode::Unauthorized => StatusCode::UNAUTHORIZED,
            ErrorCode::Forbidden => StatusCode::FORBIDDEN,
            ErrorCode::NotFound => StatusCode::NOT_FOUND,
            ErrorCode::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ErrorCode::Conflict | ErrorCode::LimitReached => StatusCode::CONFLICT,
            ErrorCode::PayloadTooLarge | ErrorCode::BatchTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ErrorCode::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ErrorCode::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            ErrorCode::Overloaded => StatusCode::TOO_MANY_REQUESTS,
            ErrorCode::NotReady | ErrorCode::StorageUnavailable | ErrorCode::StorageFull => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ErrorCode::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn title(self) -> &'static str {
        match self {
            ErrorCode::MalformedBody => "Malformed body",
            ErrorCode::InvalidRequest => "Invalid request",
            ErrorCode::InvalidQuery => "Invalid query parameter",
            ErrorCode::Unauthorized => "Missing or unknown API key",
            ErrorCode::Forbidden => "Role not allowed",
            ErrorCode::NotFound => "Not found",
            ErrorCode::MethodNotAllowed => "Method not allowed",
            ErrorCode::Conflict => "Conflict",
            ErrorCode::LimitReached => "Limit reached",
            ErrorCode::PayloadTooLarge => "Body too large",
            ErrorCode::BatchTooLarge => "Too many events",
            ErrorCode::UnsupportedMediaType => "Unsupported content type",
            ErrorCode::RequestTimeout => "Request body too slow",
            ErrorCode::Overloaded => "Overloaded",
            ErrorCode::NotReady => "Not ready",
            ErrorCode::StorageUnavailable => "Storage unavailable",
            ErrorCode::StorageFull => "Storage full",
            ErrorCode::Internal => "Internal error",
        }
    }
}

/// A whole-request error.
#[derive(Debug, Clone)]
pub struct ApiError {
    /// Stable code.
    pub code: ErrorCode,
    /// Human detail.
    pub detail: String,
}

impl ApiError {
    /// Builds an error.
    pub fn new(code: ErrorCode, detail: impl Into<String>) -> ApiError {
        ApiError {
            code,
            detail: detail.into(),
        }
    }

    /// Renders the problem+json response.
    pub fn into_response(self) -> Response<crate::http::util::Body> {
        #[derive(Serialize)]
        struct Problem<'a> {
            #[serde(rename = "type")]
            kind: String,
            title: &'a str,
            status: u16,
            detail: &'a str,
            code: &'a str,
        }
        let status = self.code.status();
        let body = serde_json::to_vec(&Problem {
            kind: format!("urn:meterd:problem:{}", self.code.as_str()),
            title: self.code.title(),
            status: status.as_u16(),
            detail: &self.detail,
            code: self.code.as_str(),
        })
        .unwrap_or_default();
        let mut b = Response::builder()
            .status(status)
            .header(header::CONTENT_TYPE, "application/problem+json");
        if matches!(
            self.code,
            ErrorCode::Overloaded
                | ErrorCode::NotReady
                | ErrorCode::StorageFull
                | ErrorCode::StorageUnavailable
        ) {
            b = b.header(header::RETRY_AFTER, "1");
        }
        if self.code == ErrorCode::Unauthorized {
            b = b.header(header::WWW_AUTHENTICATE, "Bearer");
        }
        b.body(crate::http::util::full(body))
            .expect("static response parts are valid")
    }
}

impl From<crate::store::StoreError> for ApiError {
    fn from(e: crate::store::StoreError) -> ApiError {
        match e {
            crate::store::StoreError::Full(d) => ApiError::new(ErrorCode::StorageFull, d),
            other => {
                tracing::error!(error = %other, "store error");
                ApiError::new(ErrorCode::StorageUnavailable, other.to_string())
            }
        }
    }
}

impl From<crate::journal::CommitError> for ApiError {
    fn from(e: crate::journal::CommitError) -> ApiError {
        if e.is_full() {
            ApiError::new(ErrorCode::StorageFull, e.to_string())
        } else {
            tracing::error!(error = %e, "journal commit failed");
            ApiError::new(ErrorCode::StorageUnavailable, e.to_string())
        }
    }
}

impl From<crate::ingest::IngestError> for ApiError {
    fn from(e: crate::ingest::IngestError) -> ApiError {
        match e {
            crate::ingest::IngestError::Commit(c) if c.is_full() => {
                ApiError::new(ErrorCode::StorageFull, format!("{c}; nothing was counted"))
            }
            crate::ingest::IngestError::Commit(c) => ApiError::new(
                ErrorCode::StorageUnavailable,
                format!("{c}; nothing was counted"),
            ),
            crate::ingest::IngestError::Store(s) => ApiError::from(s),
            crate::ingest::IngestError::Backlog(_) => ApiError::new(
                ErrorCode::Overloaded,
                format!("{e}; nothing was counted, retry later"),
            ),
        }
    }
}
