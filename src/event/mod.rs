//! Parsing native events (SPEC 2.1) from JSON object, JSON array and NDJSON bodies.
//!
//! A body whose elements are all objects is read in one pass into their fields
//! ([`parse_body`]); any other body is read in two levels: split into raw JSON elements (a
//! malformed body is a whole-request error), then each element read field by field, so a
//! bad event gets a precise per-event `invalid_event` naming its field and never affects
//! its neighbours. Both give the same result.
//! Values keep their exact decimal text (`serde_json` raw values): numbers never pass
//! through binary floating point. Strings without escapes are borrowed from the body.

pub mod cloudevents;

use std::borrow::Cow;

use serde::Deserialize;
use serde_json::value::RawValue;

use crate::decimal::Amount;
use crate::window::parse_rfc3339;

/// Body encodings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFormat {
    /// `application/json`: one object or an array.
    Json,
    /// `application/x-ndjson`: one object per line.
    Ndjson,
}

/// A whole-body parse failure.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BodyError {
    /// Not valid JSON / NDJSON, or not an object or array.
    #[error("{0}")]
    Malformed(String),
    /// More events than allowed.
    #[error("batch of {count} events exceeds the limit of {limit}")]
    TooMany {
        /// Events found (at least).
        count: usize,
        /// Limit.
        limit: usize,
    },
    /// No events at all.
    #[error("the body contains no events")]
    Empty,
}

/// A per-event validation failure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventError {
    /// The offending field (`""` for the event as a whole).
    pub field: &'static str,
    /// Human message.
    pub message: String,
}

/// A syntactically valid event, borrowing from the body where possible.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event<'a> {
    /// Idempotency key.
    pub id: Cow<'a, str>,
    /// Contract id.
    pub contract: Cow<'a, str>,
    /// Lever name.
    pub lever: Cow<'a, str>,
    /// Value (default 1).
    pub value: Option<Amount>,
    /// Event time in epoch ms (default: receive time).
    pub time_ms: Option<i64>,
    /// Bucket.
    pub bucket: Option<Cow<'a, str>>,
    /// The id to show in per-event errors when it differs from `id` (a CloudEvent's
    /// own `id`, where `id` is the derived idempotency key).
    pub shown_id: Option<Cow<'a, str>>,
}

/// An element of the body: the event, or why it is invalid (with its id when readable).
pub type Parsed<'a> = Result<Event<'a>, (Option<String>, EventError)>;

#[derive(Deserialize)]
struct Fields<'a> {
    #[serde(borrow, default)]
    id: Option<&'a RawValue>,
    #[serde(borrow, default)]
    contract: Option<&'a RawValue>,
    #[serde(borrow, default)]
    lever: Option<&'a RawValue>,
    #[serde(borrow, default)]
    value: Option<&'a RawValue>,
    #[serde(borrow, default)]
    time: Option<&'a RawValue>,
    #[serde(borrow, default)]
    bucket: Option<&'a RawValue>,
}

/// Splits a body into raw event elements, enforcing `limit`.
pub fn split_body(
    body: &[u8],
    format: BodyFormat,
    limit: usize,
) -> Result<Vec<&RawValue>, BodyError> {
    let text = std::str::from_utf8(body)
        .map_err(|e| BodyError::Malformed(format!("body is not UTF-8: {e}")))?;
    let elems: Vec<&RawValue> = match format {
        BodyFormat::Json => {
            let trimmed = text.trim_start();
            if trimmed.starts_with('[') {
                // Count cheaply before materialising a huge array.
                let v: Vec<&RawValue> = serde_json::from_str(text)
                    .map_err(|e| BodyError::Malformed(format!("invalid JSON: {e}")))?;
                v
            } else if trimmed.starts_with('{') {
                let v: &RawValue = serde_json::from_str(text)
                    .map_err(|e| BodyError::Malformed(format!("invalid JSON: {e}")))?;
                vec![v]
            } else if trimmed.is_empty() {
                return Err(BodyError::Empty);
            } else {
                return Err(BodyError::Malformed(
                    "body must be a JSON object or an array of objects".into(),
                ));
            }
        }
        BodyFormat::Ndjson => {
            let mut v = Vec::new();
            for (n, line) in text.split('\n').enumerate() {
                let line = line.trim_end_matches('\r');
                if line.trim().is_empty() {
                    continue;
                }
                if v.len() >= limit {
                    return Err(BodyError::TooMany {
                        count: v.len() + 1,
                        limit,
                    });
                }
                let r: &RawValue = serde_json::from_str(line).map_err(|e| {
                    BodyError::Malformed(format!("invalid JSON on line {}: {e}", n + 1))
                })?;
                v.push(r);
            }
            v
        }
    };
    if elems.is_empty() {
        return Err(BodyError::Empty);
    }
    if elems.len() > limit {
        return Err(BodyError::TooMany {
            count: elems.len(),
            limit,
        });
    }
    Ok(elems)
}

fn invalid(field: &'static str, message: impl Into<String>) -> EventError {
    EventError {
        field,
        message: message.into(),
    }
}

/// Reads a JSON string, borrowing it when it has no escapes. `None` if not a string.
pub fn raw_str(raw: &RawValue) -> Option<Cow<'_, str>> {
    let t = raw.get();
    if t.len() >= 2 && t.starts_with('"') && t.ends_with('"') {
        let inner = &t[1..t.len() - 1];
        if !inner.contains('\\') {
            return Some(Cow::Borrowed(inner));
        }
        return serde_json::from_str::<String>(t).ok().map(Cow::Owned);
    }
    None
}

fn is_null(raw: Option<&RawValue>) -> bool {
    raw.is_none_or(|r| r.get() == "null")
}

fn string_field<'a>(
    raw: Option<&'a RawValue>,
    field: &'static str,
    max: usize,
) -> Result<Option<Cow<'a, str>>, EventError> {
    if is_null(raw) {
        return Ok(None);
    }
    let s = raw_str(raw.expect("checked"))
        .ok_or_else(|| invalid(field, format!("`{field}` must be a string")))?;
    if s.is_empty() || s.len() > max {
        return Err(invalid(field, format!("`{field}` must be 1-{max} bytes")));
    }
    if s.chars().any(char::is_control) {
        return Err(invalid(
            field,
            format!("`{field}` must not contain control characters"),
        ));
    }
    Ok(Some(s))
}

/// Parses an exact decimal from a JSON number or decimal string.
pub fn amount_field(raw: &RawValue) -> Result<Amount, String> {
    let t = raw.get();
    let text: Cow<'_, str> = if t.starts_with('"') {
        raw_str(raw).ok_or("must be a number or a decimal string")?
    } else if t.starts_with(|c: char| c == '-' || c.is_ascii_digit()) {
        Cow::Borrowed(t)
    } else {
        return Err("must be a number or a decimal string".into());
    };
    Amount::parse_input(&text).map_err(|e| e.to_string())
}

/// Splits a body and reads its events in one pass over the JSON where it can: a body
/// whose elements are all objects is read straight into their fields; any other body
/// (an element that is not an object, a duplicate field, malformed JSON) is read again
/// element by element ([`split_body`], [`parse_event`]), which gives the same result
/// with precise per-event errors. The result always equals
/// `split_body(..).map(parse_event)` (the fuzz targets check it).
pub fn parse_body(
    body: &[u8],
    format: BodyFormat,
    limit: usize,
) -> Result<Vec<Parsed<'_>>, BodyError> {
    let two_pass = |body| -> Result<Vec<Parsed<'_>>, BodyError> {
        Ok(split_body(body, format, limit)?
            .into_iter()
            .map(parse_event)
            .collect())
    };
    let Ok(text) = std::str::from_utf8(body) else {
        return two_pass(body);
    };
    match format {
        BodyFormat::Json => {
            let trimmed = text.trim_start();
            if trimmed.starts_with('[') {
                match serde_json::from_str::<Vec<Fields<'_>>>(text) {
                    Ok(all) if !all.is_empty() && all.len() <= limit => {
                        Ok(all.into_iter().map(from_fields).collect())
                    }
                    _ => two_pass(body),
                }
            } else if trimmed.starts_with('{') {
                match serde_json::from_str::<Fields<'_>>(text) {
                    Ok(f) => Ok(vec![from_fields(f)]),
                    Err(_) => two_pass(body),
                }
            } else {
                two_pass(body)
            }
        }
        BodyFormat::Ndjson => {
            let mut out = Vec::new();
            for line in text.split('\n') {
                let line = line.trim_end_matches('\r');
                if line.trim().is_empty() {
                    continue;
                }
                if out.len() >= limit {
                    return two_pass(body);
                }
                match serde_json::from_str::<Fields<'_>>(line) {
                    Ok(f) => out.push(from_fields(f)),
                    Err(_) => return two_pass(body),
                }
            }
            if out.is_empty() {
                return two_pass(body);
            }
            Ok(out)
        }
    }
}

/// Reads one element into an event.
pub fn parse_event(raw: &RawValue) -> Parsed<'_> {
    let f: Fields<'_> = match serde_json::from_str(raw.get()) {
        Ok(f) => f,
        Err(e) => {
            let msg = if raw.get().trim_start().starts_with('{') {
                format!("invalid event: {e}")
            } else {
                "each event must be a JSON object".to_string()
            };
            return Err((None, invalid("", msg)));
        }
    };
    from_fields(f)
}

/// Checks the fields of one element and builds the event.
fn from_fields(f: Fields<'_>) -> Parsed<'_> {
    let id = match string_field(f.id, "id", 128) {
        Ok(Some(id)) => id,
        Ok(None) => return Err((None, invalid("id", "`id` is required"))),
        Err(e) => return Err((None, e)),
    };
    let with_id = |e: EventError| (Some(id.to_string()), e);
    let contract = match string_field(f.contract, "contract", 128) {
        Ok(Some(c)) => c,
        Ok(None) => return Err(with_id(invalid("contract", "`contract` is required"))),
        Err(e) => return Err(with_id(e)),
    };
    let lever = match string_field(f.lever, "lever", 64) {
        Ok(Some(l)) => l,
        Ok(None) => return Err(with_id(invalid("lever", "`lever` is required"))),
        Err(e) => return Err(with_id(e)),
    };
    let value = if is_null(f.value) {
        None
    } else {
        match amount_field(f.value.expect("checked")) {
            Ok(a) => Some(a),
            Err(m) => return Err(with_id(invalid("value", format!("`value` {m}")))),
        }
    };
    let time_ms = if is_null(f.time) {
        None
    } else {
        match raw_str(f.time.expect("checked"))
            .as_deref()
            .and_then(parse_rfc3339)
        {
            Some(t) => Some(t),
            None => {
                return Err(with_id(invalid(
                    "time",
                    "`time` must be an RFC 3339 time such as 2026-11-23T10:15:30.123Z",
                )))
            }
        }
    };
    let bucket = match string_field(f.bucket, "bucket", 64) {
        Ok(b) => b,
        Err(e) => return Err(with_id(e)),
    };
    Ok(Event {
        id,
        contract,
        lever,
        value,
        time_ms,
        bucket,
        shown_id: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(body: &str) -> Parsed<'_> {
        let v = split_body(body.as_bytes(), BodyFormat::Json, 10).unwrap();
        parse_event(v[0])
    }

    #[test]
    fn parses_a_full_event() {
        let e = one(r#"{"id":"r1","contract":"c","lever":"l","value":"0.5","time":"2026-11-23T10:15:30.123Z","bucket":"eu"}"#).unwrap();
        assert_eq!(e.id, "r1");
        assert_eq!(e.value, Some(Amount(500_000_000)));
        assert_eq!(e.bucket.as_deref(), Some("eu"));
        let e = one(r#"{"id":"r\u0031","contract":"c","lever":"l","value":0.1}"#).unwrap();
        assert_eq!(e.id, "r1");
        assert_eq!(e.value, Some(Amount(100_000_000)));
    }

    #[test]
    fn field_errors() {
        let cases = [
            (r#"{"contract":"c","lever":"l"}"#, "id"),
            (r#"{"id":"","contract":"c","lever":"l"}"#, "id"),
            (r#"{"id":5,"contract":"c","lever":"l"}"#, "id"),
            (r#"{"id":"a","lever":"l"}"#, "contract"),
            (r#"{"id":"a","contract":"c"}"#, "lever"),
            (
                r#"{"id":"a","contract":"c","lever":"l","value":-1}"#,
                "value",
            ),
            (
                r#"{"id":"a","contract":"c","lever":"l","value":true}"#,
                "value",
            ),
            (
                r#"{"id":"a","contract":"c","lever":"l","value":"1e400"}"#,
                "value",
            ),
            (
                r#"{"id":"a","contract":"c","lever":"l","time":"yesterday"}"#,
                "time",
            ),
            (
                r#"{"id":"a","contract":"c","lever":"l","bucket":""}"#,
                "bucket",
            ),
        ];
        for (body, field) in cases {
            let (_, e) = one(body).unwrap_err();
            assert_eq!(e.field, field, "{body}");
        }
        let long = format!(
            r#"{{"id":"{}","contract":"c","lever":"l"}}"#,
            "x".repeat(129)
        );
        assert_eq!(one(&long).unwrap_err().1.field, "id");
        let at = format!(
            r#"{{"id":"{}","contract":"c","lever":"l"}}"#,
            "x".repeat(128)
        );
        assert!(one(&at).is_ok());
    }

    #[test]
    fn body_shapes_and_limits() {
        assert_eq!(
            split_body(b"[{},{}]", BodyFormat::Json, 2).unwrap().len(),
            2
        );
        assert!(matches!(
            split_body(b"[{},{},{}]", BodyFormat::Json, 2),
            Err(BodyError::TooMany { .. })
        ));
        assert_eq!(
            split_body(b"{}\n\n{}\r\n", BodyFormat::Ndjson, 2)
                .unwrap()
                .len(),
            2
        );
        for bad in [&b"[{}"[..], b"nul", b"\"x\"", b"{\"a\":1}{", &[0xff, 0xfe]] {
            assert!(split_body(bad, BodyFormat::Json, 5).is_err());
        }
        assert!(matches!(
            split_body(b"  ", BodyFormat::Json, 5),
            Err(BodyError::Empty)
        ));
        assert!(matches!(
            split_body(b"[]", BodyFormat::Json, 5),
            Err(BodyError::Empty)
        ));
        let v = split_body(b"[1, \"x\", {}]", BodyFormat::Json, 5).unwrap();
        assert!(parse_event(v[0]).is_err());
        assert!(parse_event(v[1]).is_err());
    }
}
