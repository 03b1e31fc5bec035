//! The one place where errors become HTTP responses: the stable codes of
//! [`crate::error::ErrorCode`], each with its status, rendered as
//! `application/problem+json` (RFC 9457) with a `code`. Domain errors
//! ([`crate::error::Error`]) become [`ApiError`]s through `From`, the one mapping.

use hyper::{header, Response, StatusCode};
use serde::Serialize;

pub use crate::error::ErrorCode;

/// HTTP status and problem title of each code.
trait Http {
    fn status(self) -> StatusCode;
    fn title(self) -> &'static str;
}

impl Http for ErrorCode {
    /// The HTTP status.
    fn status(self) -> StatusCode {
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

impl From<crate::error::Error> for ApiError {
    fn from(e: crate::error::Error) -> ApiError {
        let (code, detail) = e.into_parts();
        ApiError { code, detail }
    }
}

impl From<crate::ingest::IngestError> for ApiError {
    fn from(e: crate::ingest::IngestError) -> ApiError {
        ApiError::from(crate::error::Error::from(e))
    }
}
