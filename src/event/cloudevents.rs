//! CloudEvents (structured mode, JSON) mapped onto meterd events, as OpenMeter's ingest
//! API does (SPEC 2.3):
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

/// Follows a `$.a.b` path into JSON `data`.
pub fn lookup<'v>(data: &'v serde_json::Value, path: &str) -> Option<&'v serde_json::Value> {
    let rest = path.strip_prefix("$.")?;
    rest.split('.')
        .try_fold(data, |v, part| v.as_object()?.get(part))
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
    let data: Option<serde_json::Value> = match f.data.filter(|r| r.get() != "null") {
        None => None,
        Some(d) => {
            let text = d.get();
            // `data` may also be a JSON string holding JSON (some SDKs encode it so).
            let v: serde_json::Value = serde_json::from_str(text)
                .map_err(|_| with_id(invalid("data", "`data` must be JSON")))?;
            match v {
                serde_json::Value::String(s) => serde_json::from_str(&s).ok(),
                other => Some(other),
            }
        }
    };
    let (value, bucket) = match tenant.lever(&lever) {
        // Unknown levers are rejected by ingest with `unknown_lever`.
        None => (None, None),
        Some(l) => {
            let value = if l.aggregation == Aggregation::Count {
                None
            } else {
                let path = l.value_property.as_deref().unwrap_or("$.value");
                let v = data.as_ref().and_then(|d| lookup(d, path)).ok_or_else(|| {
                    with_id(invalid(
                        "data",
                        format!("`data` has no value at {path} (lever {:?})", l.id),
                    ))
                })?;
                let text = v.to_string();
                let raw: Box<RawValue> = RawValue::from_string(text)
                    .map_err(|_| with_id(invalid("data", "unreadable value")))?;
                Some(
                    amount_field(&raw)
                        .map_err(|m| with_id(invalid("data", format!("value at {path} {m}"))))?,
                )
            };
            let bucket = match l.bucket_property.as_deref() {
                None => None,
                Some(path) => match data.as_ref().and_then(|d| lookup(d, path)) {
                    None | Some(serde_json::Value::Null) => None,
                    Some(serde_json::Value::String(s)) => Some(s.clone()),
                    Some(other @ (serde_json::Value::Number(_) | serde_json::Value::Bool(_))) => {
                        Some(other.to_string())
                    }
                    Some(_) => {
                        return Err(with_id(invalid(
                            "data",
                            format!("bucket at {path} must be a string or a number"),
                        )))
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
    fn paths() {
        let d = serde_json::json!({"a": {"b": 3}, "v": "1.5"});
        assert_eq!(lookup(&d, "$.a.b"), Some(&serde_json::json!(3)));
        assert_eq!(lookup(&d, "$.v"), Some(&serde_json::json!("1.5")));
        assert_eq!(lookup(&d, "$.a.c"), None);
        assert_eq!(lookup(&d, "a.b"), None);
    }
}
