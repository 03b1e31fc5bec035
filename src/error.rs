//! The typed error of the domain services: a stable [`ErrorCode`] and a human message.
//!
//! Domain functions (corrections, admin, quota balance, queries) return
//! `Result<T, crate::error::Error>`; the HTTP layer maps it, through its one mapping in
//! `http::error`, to a status and an `application/problem+json` body. The mapping of the
//! lower layers' errors (a store or journal failure: `storage_full` for a full disk,
//! `storage_unavailable` otherwise) is in [`sources`], which sits above the store and the
//! journal in `src/layers.txt` while this type stays a leaf.

mod sources;

use std::fmt;

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
    /// The code named `s` (a code another node answered with).
    pub fn parse(s: &str) -> Option<ErrorCode> {
        use ErrorCode::*;
        [
            MalformedBody,
            InvalidRequest,
            InvalidQuery,
            Unauthorized,
            Forbidden,
            NotFound,
            MethodNotAllowed,
            Conflict,
            LimitReached,
            PayloadTooLarge,
            BatchTooLarge,
            UnsupportedMediaType,
            RequestTimeout,
            Overloaded,
            NotReady,
            StorageUnavailable,
            StorageFull,
            Internal,
        ]
        .into_iter()
        .find(|c| c.as_str() == s)
    }

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
}

/// Why one event of a request was refused: the stable per-event codes of the
/// `errors[].code` field (whole-request failures use `ErrorCode` instead).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RejectCode {
    /// The element is not a valid event (a field is missing or malformed).
    InvalidEvent,
    /// The event names a lever the tenant does not have.
    UnknownLever,
    /// The event names a contract the tenant does not have.
    UnknownContract,
    /// The event time is older than the tenant's accepted lateness.
    TooLate,
    /// The event time is more than 5 minutes in the future.
    TooEarly,
    /// The event time is at or after the contract's end.
    ContractEnded,
    /// A hard quota of the contract or an ancestor pool would be exceeded.
    QuotaExceeded,
    /// Cluster mode: the event's partition had no reachable owner (it is moving between
    /// nodes); nothing about it was decided here. Retry it with the same id.
    Unavailable,
}

impl RejectCode {
    /// Every code, in the order the API documents them.
    pub const ALL: [RejectCode; 8] = [
        RejectCode::InvalidEvent,
        RejectCode::UnknownLever,
        RejectCode::UnknownContract,
        RejectCode::TooLate,
        RejectCode::TooEarly,
        RejectCode::ContractEnded,
        RejectCode::QuotaExceeded,
        RejectCode::Unavailable,
    ];

    /// The code string.
    pub const fn as_str(self) -> &'static str {
        match self {
            RejectCode::InvalidEvent => "invalid_event",
            RejectCode::UnknownLever => "unknown_lever",
            RejectCode::UnknownContract => "unknown_contract",
            RejectCode::TooLate => "too_late",
            RejectCode::TooEarly => "too_early",
            RejectCode::ContractEnded => "contract_ended",
            RejectCode::QuotaExceeded => "quota_exceeded",
            RejectCode::Unavailable => "unavailable",
        }
    }

    /// The code named `s`.
    pub fn parse(s: &str) -> Option<RejectCode> {
        RejectCode::ALL.into_iter().find(|c| c.as_str() == s)
    }
}

impl Serialize for RejectCode {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// A domain error: what went wrong ([`ErrorCode`]) and the detail a client is shown.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    code: ErrorCode,
    message: String,
}

impl Error {
    /// An error with any code.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Error {
        Error {
            code,
            message: message.into(),
        }
    }

    /// `not_found`: "{what} {id:?} does not exist".
    pub fn not_found(what: &str, id: &str) -> Error {
        Error::new(ErrorCode::NotFound, format!("{what} {id:?} does not exist"))
    }

    /// `not_found` with its own detail.
    pub fn not_found_detail(message: impl Into<String>) -> Error {
        Error::new(ErrorCode::NotFound, message)
    }

    /// `invalid_request` about one body field: "`{field}`: {reason}".
    pub fn invalid(field: &str, reason: impl fmt::Display) -> Error {
        Error::new(ErrorCode::InvalidRequest, format!("`{field}`: {reason}"))
    }

    /// `invalid_request` from a registry validator's `(field, reason)`.
    pub fn invalid_field((field, reason): (&'static str, String)) -> Error {
        Error::invalid(field, reason)
    }

    /// `invalid_query`: a query parameter is invalid.
    pub fn invalid_query(message: impl Into<String>) -> Error {
        Error::new(ErrorCode::InvalidQuery, message)
    }

    /// `conflict`: the change conflicts with stored state.
    pub fn conflict(message: impl Into<String>) -> Error {
        Error::new(ErrorCode::Conflict, message)
    }

    /// `limit_reached`: a per-resource count limit is reached.
    pub fn limit_reached(message: impl Into<String>) -> Error {
        Error::new(ErrorCode::LimitReached, message)
    }

    /// `storage_unavailable`: the store cannot do it now; retry later.
    pub fn unavailable(message: impl Into<String>) -> Error {
        Error::new(ErrorCode::StorageUnavailable, message)
    }

    /// `internal`: a bug (e.g. a record that does not encode).
    pub fn internal(e: impl fmt::Display) -> Error {
        Error::new(ErrorCode::Internal, e.to_string())
    }

    /// Cluster mode: the error a partition owner answered a forwarded request with (its
    /// code's name and its detail).
    pub fn from_owner(code: &str, message: String) -> Error {
        Error::new(
            ErrorCode::parse(code).unwrap_or(ErrorCode::Internal),
            message,
        )
    }

    /// Cluster mode: a forwarded request of partition `p` whose answer could not be read
    /// (retryable).
    pub fn unreadable_answer(p: u32, e: impl fmt::Display) -> Error {
        Error::new(
            ErrorCode::NotReady,
            format!("partition {p}: unreadable answer from its owner: {e}"),
        )
    }

    /// The code.
    pub fn code(&self) -> ErrorCode {
        self.code
    }

    /// The detail.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The code and the detail.
    pub fn into_parts(self) -> (ErrorCode, String) {
        (self.code, self.message)
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code.as_str(), self.message)
    }
}

impl std::error::Error for Error {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constructors_word_the_detail() {
        let e = Error::not_found("contract", "c1");
        assert_eq!(e.code(), ErrorCode::NotFound);
        assert_eq!(e.message(), "contract \"c1\" does not exist");
        let e = Error::invalid("value", "must not be 0");
        assert_eq!(
            e.into_parts(),
            (
                ErrorCode::InvalidRequest,
                "`value`: must not be 0".to_string()
            )
        );
        assert_eq!(
            Error::invalid_field(("id", "bad".into())).message(),
            "`id`: bad"
        );
    }
}
