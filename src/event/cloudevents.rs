//! CloudEvents (JSON; structured mode, and binary mode through [`binary`]) mapped onto
//! meterd events, as OpenMeter's ingest API does (SPEC 2.3):
//!
//! | CloudEvents | meterd |
//! |---|---|
//! | `subject` | contract |
//! | `type` | lever |
//! | `(source, id)` | idempotency key |
//! | `time` | time (optional) |
//! | `data` at the lever's `value_property` (default `$.value`) | value |
//! | `data` at the lever's `bucket_property` | bucket (optional) |
//!
//! The idempotency key is `ce:<len(source)>:<source>:<id>` (unambiguous for any source
//! and id), or `ce:sha256:<hex>` of that text when it would exceed 128 bytes, so native
//! and CloudEvents ids never collide. A `count` lever ignores the value; other levers
//! need it (OpenMeter's rule: a sum meter without its value property is an error).
//!
//! Binary content mode (attributes in `ce-` headers, `data` in the body) is read by
//! [`binary`] into the equivalent structured event, so it gets this same mapping.

pub mod binary;

use std::borrow::Cow;

use serde::Deserialize;
use serde_json::value::RawValue;
use sha2::{Digest, Sha256};

use super::{amount_field, raw_str, Event, EventError, Parsed};
use crate::registry::{Aggregation, Tenant};
use crate::window::parse_rfc3339;

#[derive(Deserialize)]
struct Fields<'a> {
    #[serde(borrow, default)]
    specversion: Option<&'a RawValue>,
    #[serde(borrow, default)]
    id: Option<&'a RawValue>,
    #[serde(borrow, default)]
    source: Option<&'a RawValue>,
    #[serde(borrow, default, rename = "type")]
    kind: Option<&'a RawValue>,
    #[serde(borrow, default)]
    subject: Option<&'a RawValue>,
    #[serde(borrow, default)]
    time: Option<&'a RawValue>,
    #[serde(borrow, default)]
    data: Option<&'a RawValue>,
}

fn invalid(field: &'static str, message: impl Into<String>) -> EventError {
    EventError {
        field,
        message: message.into(),
    }
}

fn required<'a>(
    raw: Option<&'a RawValue>,
    field: &'static str,
    max: usize,
) -> Result<Cow<'a, str>, EventError> {
    let raw = raw
        .filter(|r| r.get() != "null")
        .ok_or_else(|| invalid(field, format!("`{field}` is required")))?;
    let s = raw_str(raw).ok_or_else(|| invalid(field, format!("`{field}` must be a string")))?;
    if s.is_empty() || s.len() > max || s.chars().any(char::is_control) {
        return Err(invalid(
            field,
            format!("`{field}` must be 1-{max} bytes without control characters"),
        ));
    }
    Ok(s)
}

/// The idempotency key of a CloudEvent.
pub fn idempotency_key(source: &str, id: &str) -> String {
    let key = format!("ce:{}:{source}:{id}", source.len());
    if key.len() <= 128 {
        key
    } else {
        format!("ce:sha256:{}", hex::encode(Sha256::digest(key.as_bytes())))
    }
}

/// Follows a `$.a.b` path into raw JSON `data`, keeping the found value's exact text.
pub fn lookup(data: &RawValue, path: &str) -> Option<Box<RawValue>> {
    let rest = path.strip_prefix("$.")?;
    let mut cur: Box<RawValue> = data.to_owned();
    for part in rest.split('.') {
        let mut obj: std::collections::HashMap<String, Box<RawValue>> =
            serde_json::from_str(cur.get()).ok()?;
        cur = obj.remove(part)?;
    }
    Some(cur)
}

/// Reads one CloudEvent of `tenant` into a meterd event.
pub fn parse_cloudevent<'a>(tenant: &Tenant, raw: &'a RawValue) -> Parsed<'a> {
    let f: Fields<'a> = match serde_json::from_str(raw.get()) {
        Ok(f) => f,
        Err(_) => return Err((None, invalid("", "each CloudEvent must be a JSON object"))),
    };
    let id = required(f.id, "id", 128).map_err(|e| (None, e))?;
    let source = required(f.source, "source", 256).map_err(|e| (Some(id.to_string()), e))?;
    let key = idempotency_key(&source, &id);
    let with_id = |e: EventError| (Some(id.to_string()), e);
    match f.specversion.and_then(raw_str) {
        Some(v) if v == "1.0" => {}
        _ => {
            return Err(with_id(invalid(
                "specversion",
                "`specversion` must be \"1.0\"",
            )))
        }
    }
    let lever = required(f.kind, "type", 64).map_err(with_id)?;
    let contract = required(f.subject, "subject", 128).map_err(with_id)?;
    let time_ms = match f.time.filter(|r| r.get() != "null") {
        None => None,
        Some(t) => Some(
            raw_str(t)
                .as_deref()
                .and_then(parse_rfc3339)
                .ok_or_else(|| with_id(invalid("time", "`time` must be an RFC 3339 time")))?,
        ),
    };
    // `data` stays raw JSON: numbers keep their exact text (no binary floating point).
    // It may also be a JSON string holding JSON (some SDKs encode it so).
    let data: Option<Box<RawValue>> = match f.data.filter(|r| r.get() != "null") {
        None => None,
        Some(d) => match raw_str(d) {
            Some(inner) if d.get().starts_with('"') => {
                Some(RawValue::from_string(inner.into_owned()).map_err(|_| {
                    with_id(invalid(
                        "data",
                        "`data` is a string that does not hold JSON",
                    ))
                })?)
            }
            _ => Some(d.to_owned()),
        },
    };
    let (value, bucket) = match tenant.lever(&lever) {
        // Unknown levers are rejected by ingest with `unknown_lever`.
        None => (None, None),
        Some(l) => {
            let value = if l.aggregation == Aggregation::Count {
                None
            } else {
                let path = l.value_property.as_deref().unwrap_or("$.value");
                let v = data
                    .as_deref()
                    .and_then(|d| lookup(d, path))
                    .ok_or_else(|| {
                        with_id(invalid(
                            "data",
                            format!("`data` has no value at {path} (lever {:?})", l.id),
                        ))
                    })?;
                Some(
                    amount_field(&v)
                        .map_err(|m| with_id(invalid("data", format!("value at {path} {m}"))))?,
                )
            };
            let bucket = match l.bucket_property.as_deref() {
                None => None,
                Some(path) => match data.as_deref().and_then(|d| lookup(d, path)) {
                    None => None,
                    Some(raw) if raw.get() == "null" => None,
                    Some(raw) => {
                        let t = raw.get();
                        if t.starts_with('"') {
                            raw_str(&raw).map(Cow::into_owned)
                        } else if t.starts_with(|c: char| c == '-' || c.is_ascii_digit())
                            || t == "true"
                            || t == "false"
                        {
                            Some(t.to_string())
                        } else {
                            return Err(with_id(invalid(
                                "data",
                                format!("bucket at {path} must be a string or a number"),
                            )));
                        }
                    }
                },
            };
            if let Some(b) = &bucket {
                if b.is_empty() || b.len() > 64 || b.chars().any(char::is_control) {
                    return Err(with_id(invalid(
                        "data",
                        format!(
                            "bucket at {} must be 1-64 bytes",
                            l.bucket_property.as_deref().unwrap_or("")
                        ),
                    )));
                }
            }
            (value, bucket)
        }
    };
    Ok(Event {
        id: Cow::Owned(key),
        contract,
        lever,
        value,
        time_ms,
        bucket: bucket.map(Cow::Owned),
        shown_id: Some(Cow::Owned(id.to_string())),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_unambiguous_and_bounded() {
        assert_ne!(idempotency_key("a:b", "c"), idempotency_key("a", "b:c"));
        assert_eq!(idempotency_key("svc", "1"), "ce:3:svc:1");
        let long = idempotency_key(&"s".repeat(200), "1");
        assert!(long.starts_with("ce:sha256:") && long.len() <= 128);
    }

    #[test]
    fn paths_keep_exact_number_text() {
        let d: Box<RawValue> =
            RawValue::from_string(r#"{"a": {"b": 123456789.123456789}, "v": "1.5"}"#.into())
                .unwrap();
        let get = |p: &str| lookup(&d, p).map(|r| r.get().to_string());
        assert_eq!(get("$.a.b").as_deref(), Some("123456789.123456789"));
        assert_eq!(get("$.v").as_deref(), Some(r#""1.5""#));
        assert_eq!(get("$.a.c"), None);
        assert_eq!(get("a.b"), None);
        assert_eq!(get("$.v.x"), None);
    }
}
