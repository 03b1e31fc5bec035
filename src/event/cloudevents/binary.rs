//! CloudEvents HTTP **binary content mode** (HTTP protocol binding 1.0, section 3.1): one
//! event whose attributes are `ce-<name>` headers and whose `data` is the HTTP body, typed
//! by the request's `Content-Type`.
//!
//! A binary-mode request is turned into the equivalent structured-mode event (a JSON
//! object with the same attributes and `data`), which [`super::parse_cloudevent`] then
//! reads, so both modes share one mapping, one set of per-event checks and one
//! idempotency key: the same `(source, id)` sent in either mode is the same event.
//!
//! - Header names are case-insensitive (hyper gives them lowercased). Values are
//!   percent-decoded (the binding percent-encodes characters outside printable ASCII,
//!   space, `"` and `%`), then read as UTF-8. Every `ce-` header is decoded, extensions
//!   included, so a malformed one is refused even where meterd ignores the attribute.
//! - meterd reads `specversion`, `id`, `source`, `type`, `subject` and `time`; other
//!   attributes (`dataschema`, extensions) are checked for their encoding and ignored,
//!   as structured mode ignores them.
//! - `data`: a body of only whitespace is no data. Otherwise the body must be JSON
//!   (`Content-Type` `application/json`, `text/json`, any `+json` type, or none, which
//!   meterd reads as JSON everywhere), because levers read their value and bucket from
//!   JSON `data`. A JSON array is refused: binary mode carries one event, and an array
//!   body is almost always a batch sent in the wrong mode (batches need
//!   `application/cloudevents-batch+json`).
//!
//! Failures that stop the request from being an event at all are [`BinaryError`]s
//! (whole-request errors); a readable event with a bad attribute is refused per event,
//! exactly as in structured mode, with [`locate`] naming the header it came from.

use hyper::HeaderMap;
use serde_json::value::RawValue;

use crate::event::EventError;

/// The CloudEvents attributes meterd reads, in the order they are written out.
const ATTRIBUTES: [&str; 6] = ["specversion", "id", "source", "type", "subject", "time"];

/// The header that marks a request as binary mode (with a non-CloudEvents media type).
pub const SPECVERSION_HEADER: &str = "ce-specversion";

/// Why a binary-mode request cannot be read as an event (nothing is accepted).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BinaryError {
    /// A `ce-` header is malformed: bad percent-encoding, not UTF-8 once decoded, or
    /// repeated.
    #[error("header `{name}` {reason}; nothing was accepted")]
    Header {
        /// The header name, lowercased.
        name: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The body is not empty and its `Content-Type` is not a JSON type.
    #[error(
        "in CloudEvents binary mode the body is the event's `data`, and meterd's levers \
         read their value and bucket from JSON data: send it as application/json (or a \
         +json type), or send an empty body for an event without data; got Content-Type \
         {0:?}; nothing was accepted"
    )]
    NotJson(String),
    /// The body (JSON by its type) is not valid JSON.
    #[error("the body (the event's `data` in CloudEvents binary mode) {0}; nothing was accepted")]
    MalformedData(String),
    /// The body is a JSON array: most likely a batch, which binary mode cannot carry.
    #[error(
        "the body is a JSON array, but CloudEvents binary mode carries one event whose \
         `data` is the body; send a batch in structured mode as \
         application/cloudevents-batch+json; nothing was accepted"
    )]
    Batch,
}

/// Whether a request whose `Content-Type` is not a CloudEvents media type is in binary
/// content mode: it carries a `ce-specversion` header.
pub fn is_binary(headers: &HeaderMap) -> bool {
    headers.contains_key(SPECVERSION_HEADER)
}

/// The attributes of a binary-mode request, read from its `ce-` headers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Attributes {
    /// Decoded values of [`ATTRIBUTES`], by position.
    values: [Option<String>; ATTRIBUTES.len()],
}

impl Attributes {
    /// Reads and percent-decodes every `ce-` header.
    pub fn from_headers(headers: &HeaderMap) -> Result<Attributes, BinaryError> {
        let mut out = Attributes::default();
        for name in headers.keys() {
            let Some(attr) = name.as_str().strip_prefix("ce-") else {
                continue;
            };
            let header_error = |reason: String| BinaryError::Header {
                name: name.as_str().to_string(),
                reason,
            };
            let mut all = headers.get_all(name).iter();
            let Some(raw) = all.next() else { continue };
            if all.next().is_some() {
                return Err(header_error(
                    "appears more than once (an attribute has one value)".into(),
                ));
            }
            let value = percent_decode(raw.as_bytes()).map_err(header_error)?;
            if let Some(i) = ATTRIBUTES.iter().position(|a| *a == attr) {
                out.values[i] = Some(value);
            }
        }
        Ok(out)
    }

    /// The decoded value of attribute `name` (`specversion`, `id`, ...), if sent.
    pub fn get(&self, name: &str) -> Option<&str> {
        let i = ATTRIBUTES.iter().position(|a| *a == name)?;
        self.values[i].as_deref()
    }

    /// The equivalent structured-mode event: a JSON object with the attributes sent and
    /// `data` from `body`. `content_type` is the request's media type, lowercased and
    /// without parameters (`None` when absent).
    pub fn into_event(
        self,
        content_type: Option<&str>,
        body: &[u8],
    ) -> Result<Box<RawValue>, BinaryError> {
        let data = read_data(content_type, body)?;
        let mut text = String::with_capacity(data.map_or(0, str::len) + 256);
        text.push('{');
        for (name, value) in ATTRIBUTES.iter().zip(&self.values) {
            if let Some(v) = value {
                if text.len() > 1 {
                    text.push(',');
                }
                push_json_string(&mut text, name);
                text.push(':');
                push_json_string(&mut text, v);
            }
        }
        if let Some(d) = data {
            if text.len() > 1 {
                text.push(',');
            }
            text.push_str("\"data\":");
            text.push_str(d);
        }
        text.push('}');
        RawValue::from_string(text)
            .map_err(|e| BinaryError::MalformedData(format!("could not be read: {e}")))
    }
}

fn push_json_string(out: &mut String, s: &str) {
    // Serializing a `str` cannot fail.
    out.push_str(&serde_json::to_string(s).unwrap_or_default());
}

/// Whether `data` of this media type is JSON (`None`: no `Content-Type`, read as JSON).
pub fn is_json_type(content_type: Option<&str>) -> bool {
    match content_type {
        None => true,
        Some(m) => m == "application/json" || m == "text/json" || m.ends_with("+json"),
    }
}

/// The body as `data`: `None` when empty, else its JSON text.
fn read_data<'b>(
    content_type: Option<&str>,
    body: &'b [u8],
) -> Result<Option<&'b str>, BinaryError> {
    if body.trim_ascii().is_empty() {
        return Ok(None);
    }
    if !is_json_type(content_type) {
        return Err(BinaryError::NotJson(content_type.unwrap_or("").to_string()));
    }
    let text = std::str::from_utf8(body)
        .map_err(|e| BinaryError::MalformedData(format!("is not UTF-8: {e}")))?;
    let raw: &RawValue = serde_json::from_str(text)
        .map_err(|e| BinaryError::MalformedData(format!("is not valid JSON: {e}")))?;
    if raw.get().starts_with('[') {
        return Err(BinaryError::Batch);
    }
    Ok(Some(raw.get()))
}

/// Decodes a percent-encoded header value into UTF-8 text. Every `%` must start a
/// `%XX` escape of two hexadecimal digits; other bytes stand for themselves.
pub fn percent_decode(raw: &[u8]) -> Result<String, String> {
    fn hex(b: u8) -> Option<u8> {
        match b {
            b'0'..=b'9' => Some(b - b'0'),
            b'a'..=b'f' => Some(b - b'a' + 10),
            b'A'..=b'F' => Some(b - b'A' + 10),
            _ => None,
        }
    }
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        if raw[i] == b'%' {
            let byte = match (raw.get(i + 1).copied(), raw.get(i + 2).copied()) {
                (Some(h), Some(l)) => hex(h).zip(hex(l)).map(|(h, l)| (h << 4) | l),
                _ => None,
            };
            let Some(byte) = byte else {
                return Err(format!(
                    "has a malformed percent-encoding at byte {i} (`%` must be followed by \
                     two hexadecimal digits)"
                ));
            };
            out.push(byte);
            i += 3;
        } else {
            out.push(raw[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| "is not UTF-8 once percent-decoded".to_string())
}

/// Adds to a per-event error of a binary-mode event where the field came from: the
/// `ce-<field>` header, or the body for `data`.
pub fn locate(e: EventError) -> EventError {
    let place = match e.field {
        "" => return e,
        "data" => "the request body".to_string(),
        f => format!("the `ce-{f}` header"),
    };
    EventError {
        message: format!("{} (binary mode: {place})", e.message),
        field: e.field,
    }
}

#[cfg(test)]
mod tests {
    use hyper::header::{HeaderName, HeaderValue};

    use super::*;

    fn headers(pairs: &[(&str, &[u8])]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (n, v) in pairs {
            h.append(
                HeaderName::from_bytes(n.as_bytes()).unwrap(),
                HeaderValue::from_bytes(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode(b"plain-1").unwrap(), "plain-1");
        assert_eq!(percent_decode(b"a%20b%25c%22").unwrap(), "a b%c\"");
        assert_eq!(percent_decode(b"%C3%A9t%c3%a9").unwrap(), "été");
        // Raw UTF-8 (not encoded, as some SDKs send it) passes through.
        assert_eq!(percent_decode("été".as_bytes()).unwrap(), "été");
        for bad in [&b"%"[..], b"a%2", b"%zz", b"%+1", b"%-1", b"%%", b"100%"] {
            let e = percent_decode(bad).unwrap_err();
            assert!(e.contains("malformed"), "{bad:?}: {e}");
        }
        assert!(percent_decode(b"%FF%FE").unwrap_err().contains("UTF-8"));
    }

    #[test]
    fn attributes_from_headers() {
        let h = headers(&[
            ("ce-specversion", b"1.0"),
            ("CE-ID", b"evt%201"),
            ("ce-source", b"svc"),
            ("ce-type", b"tokens"),
            ("ce-subject", b"ctr"),
            ("ce-myext", b"ignored"),
            ("content-type", b"application/json"),
        ]);
        let a = Attributes::from_headers(&h).unwrap();
        assert_eq!(a.get("id"), Some("evt 1"));
        assert_eq!(a.get("time"), None);
        let ev = a
            .into_event(Some("application/json"), b"{\"tokens\": 5}")
            .unwrap();
        let v: serde_json::Value = serde_json::from_str(ev.get()).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"specversion": "1.0", "id": "evt 1", "source": "svc",
                               "type": "tokens", "subject": "ctr", "data": {"tokens": 5}})
        );
        // Numbers in data keep their exact text.
        let a = Attributes::from_headers(&h).unwrap();
        let ev = a
            .into_event(None, b" {\"v\": 0.1000000000000000000001} ")
            .unwrap();
        assert!(ev
            .get()
            .ends_with("\"data\":{\"v\": 0.1000000000000000000001}}"));
    }

    #[test]
    fn header_errors() {
        let e = Attributes::from_headers(&headers(&[("ce-id", b"a%2x")])).unwrap_err();
        assert!(
            matches!(&e, BinaryError::Header { name, .. } if name == "ce-id"),
            "{e}"
        );
        let e = Attributes::from_headers(&headers(&[("ce-ext", b"%")])).unwrap_err();
        assert!(
            matches!(&e, BinaryError::Header { name, .. } if name == "ce-ext"),
            "{e}"
        );
        let e =
            Attributes::from_headers(&headers(&[("ce-id", b"a"), ("ce-id", b"b")])).unwrap_err();
        assert!(e.to_string().contains("more than once"), "{e}");
    }

    #[test]
    fn data_rules() {
        let ev = |ct: Option<&str>, body: &[u8]| Attributes::default().into_event(ct, body);
        assert_eq!(ev(Some("text/plain"), b"").unwrap().get(), "{}");
        assert_eq!(ev(Some("application/json"), b" \r\n").unwrap().get(), "{}");
        assert!(matches!(
            ev(Some("text/plain"), b"5"),
            Err(BinaryError::NotJson(_))
        ));
        assert!(matches!(
            ev(Some("application/octet-stream"), b"{}"),
            Err(BinaryError::NotJson(_))
        ));
        assert!(ev(Some("application/vnd.acme+json"), b"{}").is_ok());
        assert!(ev(Some("text/json"), b"{}").is_ok());
        assert!(ev(None, b"{}").is_ok());
        assert!(matches!(
            ev(Some("application/json"), b"{\"a\":"),
            Err(BinaryError::MalformedData(_))
        ));
        assert!(matches!(
            ev(Some("application/json"), &[0xff, 0xfe]),
            Err(BinaryError::MalformedData(_))
        ));
        assert!(matches!(
            ev(Some("application/json"), b" [{\"id\": \"1\"}]"),
            Err(BinaryError::Batch)
        ));
    }

    /// Encodes as the HTTP binding says: characters outside printable ASCII, space, `"`
    /// and `%` become `%XX` of their UTF-8 bytes.
    fn encode(s: &str) -> String {
        let mut out = String::new();
        for b in s.bytes() {
            if (0x21..=0x7e).contains(&b) && b != b'"' && b != b'%' {
                out.push(b as char);
            } else {
                out.push_str(&format!("%{b:02X}"));
            }
        }
        out
    }

    proptest::proptest! {
        #[test]
        fn decoding_inverts_the_binding_encoding(s in proptest::prelude::any::<String>()) {
            proptest::prop_assert_eq!(percent_decode(encode(&s).as_bytes()).unwrap(), s);
        }

        #[test]
        fn decoding_never_panics(raw in proptest::collection::vec(proptest::num::u8::ANY, 0..64)) {
            let _ = percent_decode(&raw);
        }
    }

    #[test]
    fn located_messages() {
        let e = locate(EventError {
            field: "id",
            message: "`id` is required".into(),
        });
        assert_eq!(e.field, "id");
        assert_eq!(
            e.message,
            "`id` is required (binary mode: the `ce-id` header)"
        );
        let e = locate(EventError {
            field: "data",
            message: "m".into(),
        });
        assert_eq!(e.message, "m (binary mode: the request body)");
    }
}
