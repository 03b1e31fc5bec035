//! Black-box tests of CloudEvents HTTP **binary content mode** on `POST /api/v1/events`:
//! one event per request, its attributes in `ce-` headers and its `data` in the body.
//!
//! Real clients nobody here wrote send it: the CNCF JavaScript SDK (npm `cloudevents`,
//! pinned in `tests/js/package.json` and its lock, installed by this test with `npm ci`
//! into `$HOME/.cache/meterd/node-sdk`; Debian's `nodejs` and `npm` are installed with
//! apt-get when missing), through its default emitter `emitterFor(httpTransport(url))`
//! and through `HTTP.binary(event)` posted with node's fetch; and the CNCF Python SDK's
//! `to_binary` (the venv of `tests/cloudevents.rs`). The tests check the usage meterd
//! reports (exact sums by bucket), deduplication across modes and SDKs (the same
//! `(source, id)` in binary and structured mode is one event), the answers (204, or 400
//! `rejected_events` with per-event errors exactly as in structured mode), hard quotas,
//! and with direct requests the header rules (case-insensitive names, percent-decoded
//! values, `ce-time` optional, extensions ignored), the data rules and every whole-request
//! refusal with its status and problem code. The shared helpers are in
//! `tests/cloudevents_support/`.

mod cloudevents_support;
mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use cloudevents_support::*;
use common::{time_at, Daemon, INGEST, READ};
use serde_json::{json, Value};

// ---------------------------------------------------------------------------------------
// Direct binary-mode requests.

/// A binary-mode request: headers (sent in order, repeats allowed) and the body.
#[derive(Clone)]
struct Bin {
    headers: Vec<(String, Vec<u8>)>,
    body: Vec<u8>,
}

/// A valid binary-mode event for the `tokens` lever (source `binary-tests`).
fn bin(id: &str, subject: &str, tokens: Value, model: &str) -> Bin {
    Bin {
        headers: vec![
            ("ce-specversion".into(), b"1.0".to_vec()),
            ("ce-id".into(), id.as_bytes().to_vec()),
            ("ce-source".into(), b"binary-tests".to_vec()),
            ("ce-type".into(), b"tokens".to_vec()),
            ("ce-subject".into(), subject.as_bytes().to_vec()),
            ("ce-time".into(), time_at(0).into_bytes()),
            ("content-type".into(), b"application/json".to_vec()),
        ],
        body: serde_json::to_vec(&json!({"tokens": tokens, "model": model})).unwrap(),
    }
}

impl Bin {
    /// Sets header `name` (replacing any value).
    fn set(mut self, name: &str, value: impl AsRef<[u8]>) -> Bin {
        self = self.without(name);
        self.headers
            .push((name.to_string(), value.as_ref().to_vec()));
        self
    }

    /// Adds one more `name` header.
    fn add(mut self, name: &str, value: impl AsRef<[u8]>) -> Bin {
        self.headers
            .push((name.to_string(), value.as_ref().to_vec()));
        self
    }

    fn without(mut self, name: &str) -> Bin {
        self.headers.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
        self
    }

    fn body(mut self, body: impl AsRef<[u8]>) -> Bin {
        self.body = body.as_ref().to_vec();
        self
    }

    /// Posts it with `key`; returns (status, response content type, JSON body).
    fn post(&self, d: &Daemon, key: Option<&str>) -> (u16, String, Value) {
        let mut rb = d
            .client
            .post(d.url("/api/v1/events"))
            .body(self.body.clone());
        let mut h = reqwest::header::HeaderMap::new();
        for (n, v) in &self.headers {
            h.append(
                reqwest::header::HeaderName::from_bytes(n.as_bytes()).unwrap(),
                reqwest::header::HeaderValue::from_bytes(v).unwrap(),
            );
        }
        rb = rb.headers(h);
        if let Some(k) = key {
            rb = rb.bearer_auth(k);
        }
        answer(rb)
    }

    fn send(&self, d: &Daemon) -> (u16, String, Value) {
        self.post(d, Some(INGEST))
    }
}

/// Sends a request byte for byte over a new connection (header names keep the case they
/// are written in); returns (status, JSON body).
fn raw_http(d: &Daemon, head: &str, body: &[u8]) -> (u16, Value) {
    let addr = d.base.trim_start_matches("http://");
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let req = format!(
        "POST /api/v1/events HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\
         Authorization: Bearer {INGEST}\r\nContent-Length: {}\r\n{head}\r\n",
        body.len()
    );
    s.write_all(req.as_bytes()).unwrap();
    s.write_all(body).unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).unwrap();
    let text = String::from_utf8_lossy(&out);
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status line: {text}"));
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    let v = if body.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(body).unwrap_or(Value::String(body.into()))
    };
    (status, v)
}

/// Asserts a 400 `rejected_events` of one event whose only error is `invalid_event` on
/// `field`, with the binary-mode hint naming where the field came from.
#[track_caller]
fn assert_invalid(resp: &(u16, String, Value), id: Option<&str>, field: &str) {
    assert_eq!(resp.0, 400, "{}", resp.2);
    assert!(resp.1.starts_with("application/problem+json"), "{}", resp.1);
    let errors = assert_rejected(&resp.2, 0, 0, 1);
    assert_error(&errors[0], 0, id, "invalid_event", Some(field));
    let place = if field == "data" {
        "(binary mode: the request body)".to_string()
    } else {
        format!("(binary mode: the `ce-{field}` header)")
    };
    let message = errors[0]["message"].as_str().unwrap();
    assert!(
        message.ends_with(&place),
        "{message:?} should end with {place:?}"
    );
}

// ---------------------------------------------------------------------------------------
// The JavaScript and Python SDKs.

/// Asserts every request of a JavaScript emitter run was answered with no body (the SDK's
/// transport reports no status: meterd's 204 has no body, its refusals all have one).
#[track_caller]
fn assert_all_empty(summary: &Value, n_requests: usize) {
    let reqs = requests(summary);
    assert_eq!(reqs.len(), n_requests, "{summary}");
    for r in reqs {
        assert!(r["body"].is_null(), "an answer with a body: {summary}");
        assert_eq!(
            r["content_type"], "application/json; charset=utf-8",
            "{summary}"
        );
    }
}

/// Asserts every request of a run got 204 with no body, sent without a Content-Type.
#[track_caller]
fn assert_all_204_untyped(summary: &Value, n_requests: usize) {
    let reqs = requests(summary);
    assert_eq!(reqs.len(), n_requests, "{summary}");
    for r in reqs {
        assert_eq!(r["status"], 204, "{summary}");
        assert!(r["content_type"].is_null(), "{summary}");
        assert!(r["body"].is_null(), "a 204 with a body: {summary}");
    }
}

/// The JavaScript SDK's default emitter (binary mode) and `HTTP.binary` + fetch: every
/// event counts exactly, by bucket; re-sending the same (source, id) in binary mode, in
/// structured mode with the same SDK or with the Python SDK, changes nothing, and an
/// event first sent in structured mode is a duplicate in binary mode; a binary event
/// without its value is rejected with the same per-event error as in structured mode.
#[test]
fn js_sdk_binary_mode() {
    let d = Daemon::start();
    tokens_setup(&d, "ctr-js");
    let js = |args: &[&str]| send(&d, Sdk::JavaScript, INGEST, "ctr-js", "tokens", args);
    let emitted = [
        "--mode",
        "emitter",
        "--id-prefix",
        "e",
        "--values",
        "3,2.5,10,0.25",
        "--buckets",
        "gpt-a,gpt-b,gpt-a,",
        "--extension",
        "region=eu",
    ];
    let e1 = js(&emitted);
    assert_eq!(e1["sdk"], "cloudevents-js");
    assert_eq!(e1["sdk_version"], node::pinned("cloudevents"));
    assert_all_empty(&e1, 4);
    let fetched = [
        "--mode",
        "binary",
        "--id-prefix",
        "f",
        "--values",
        "1,2,4,8,16",
        "--buckets",
        "gpt-b,gpt-c",
    ];
    let f1 = js(&fetched);
    assert_all_204(&f1, "application/json; charset=utf-8", 5);
    let want = by_bucket(&[
        (None, "0.25"),
        (Some("gpt-a"), "13"),
        (Some("gpt-b"), "23.5"),
        (Some("gpt-c"), "10"),
    ]);
    assert_eq!(sent_totals(&[&e1, &f1], &[]), want);
    assert_eq!(usage(&d, "ctr-js", "tokens"), want);

    // Re-sent in binary mode: success, nothing counted twice.
    assert_all_empty(&js(&emitted), 4);
    assert_all_204(&js(&fetched), "application/json; charset=utf-8", 5);
    // The same (source, id) in structured mode, from this SDK and from the Python SDK.
    let mut structured = fetched.to_vec();
    structured[1] = "structured";
    assert_all_204(
        &js(&structured),
        "application/cloudevents+json; charset=utf-8",
        5,
    );
    let py = send(
        &d,
        Sdk::CloudEvents,
        INGEST,
        "ctr-js",
        "tokens",
        &[
            "--mode",
            "structured",
            "--source",
            "meterd-js-sdk-tests",
            "--id-prefix",
            "e",
            "--values",
            "3,2.5,10,0.25",
        ],
    );
    assert_all_204(&py, "application/cloudevents+json", 4);
    assert_eq!(usage(&d, "ctr-js", "tokens"), want);

    // Structured first, then binary: one event.
    let mut first = structured.clone();
    first[3] = "s";
    let s1 = js(&first);
    assert_all_204(&s1, "application/cloudevents+json; charset=utf-8", 5);
    let mut then = fetched.to_vec();
    then[3] = "s";
    assert_all_204(&js(&then), "application/json; charset=utf-8", 5);
    let want = sent_totals(&[&e1, &f1, &s1], &[]);
    assert_eq!(
        want,
        by_bucket(&[
            (None, "0.25"),
            (Some("gpt-a"), "13"),
            (Some("gpt-b"), "44.5"),
            (Some("gpt-c"), "20"),
        ])
    );
    assert_eq!(usage(&d, "ctr-js", "tokens"), want);

    // An event without its value: 400 rejected_events naming `data`; the others count.
    let bad = js(&[
        "--mode",
        "binary",
        "--id-prefix",
        "bad",
        "--values",
        "5,6",
        "--buckets",
        "gpt-z",
        "--omit-value",
        "1",
    ]);
    let reqs = requests(&bad);
    assert_eq!(reqs[0]["status"], 204, "{bad}");
    assert_eq!(reqs[1]["status"], 400, "{bad}");
    assert_eq!(
        reqs[1]["response_content_type"], "application/problem+json",
        "{bad}"
    );
    let errors = assert_rejected(&reqs[1]["body"], 0, 0, 1);
    assert_error(&errors[0], 0, Some("bad-1"), "invalid_event", Some("data"));
    let mut want = want;
    want.insert(Some("gpt-z".into()), "5".into());
    assert_eq!(usage(&d, "ctr-js", "tokens"), want);
    // The emitter gets the same problem body.
    let bad = js(&[
        "--mode",
        "emitter",
        "--id-prefix",
        "bad",
        "--values",
        "6",
        "--omit-value",
        "0",
    ]);
    let errors = assert_rejected(&requests(&bad)[0]["body"], 0, 0, 1);
    assert_error(&errors[0], 0, Some("bad-0"), "invalid_event", Some("data"));
    assert_eq!(usage(&d, "ctr-js", "tokens"), want);
}

/// The Python SDK's `to_binary`, with a `datacontenttype` (sent as Content-Type) and
/// without one (no Content-Type at all): exact decimal strings at nested paths, dedupe
/// against the same events in structured mode, both ways.
#[test]
fn python_sdk_binary_mode() {
    let d = Daemon::start();
    lever(&d, "nested", "sum", "$.usage.tokens.total", "$.meta.region");
    contract(&d, "ctr-py", json!({"customer": "cus_py"}));
    let run = |mode: &str, prefix: &str, extra: &[&str]| {
        let mut args = vec![
            "--mode",
            mode,
            "--id-prefix",
            prefix,
            "--values",
            "0.000000001,123456789.123456789,7",
            "--value-as",
            "string",
            "--value-path",
            "usage.tokens.total",
            "--bucket-path",
            "meta.region",
            "--buckets",
            "eu,us",
        ];
        args.extend(extra);
        send(&d, Sdk::CloudEvents, INGEST, "ctr-py", "nested", &args)
    };
    let typed = run("binary", "t", &["--datacontenttype", "application/json"]);
    assert_all_204(&typed, "application/json", 3);
    // Without a datacontenttype the SDK sends no Content-Type: meterd reads JSON.
    let untyped = run("binary", "u", &["--sdk-time"]);
    assert_all_204_untyped(&untyped, 3);
    let want = by_bucket(&[
        (Some("eu"), "14.000000002"),
        (Some("us"), "246913578.246913578"),
    ]);
    assert_eq!(sent_totals(&[&typed, &untyped], &[]), want);
    assert_eq!(usage(&d, "ctr-py", "nested"), want);

    // Again in binary mode, then the same ids in structured mode: duplicates.
    assert_all_204_untyped(&run("binary", "u", &[]), 3);
    assert_all_204(
        &run("structured", "t", &[]),
        "application/cloudevents+json",
        3,
    );
    assert_all_204(
        &run("structured", "u", &[]),
        "application/cloudevents+json",
        3,
    );
    assert_eq!(usage(&d, "ctr-py", "nested"), want);
    // Structured first, then binary.
    let s = run("structured", "s", &[]);
    assert_all_204(&s, "application/cloudevents+json", 3);
    assert_all_204(
        &run("binary", "s", &["--datacontenttype", "application/json"]),
        "application/json",
        3,
    );
    let want = sent_totals(&[&typed, &untyped, &s], &[]);
    assert_eq!(usage(&d, "ctr-py", "nested"), want);
}

/// Hard quotas in binary mode, from both SDKs and a direct request: an event past the
/// limit gets 400 `rejected_events` with `quota_exceeded` naming its CloudEvent id, a
/// re-sent accepted event is a duplicate (204), and usage stops at the limit.
#[test]
fn hard_quotas_apply_in_binary_mode() {
    let d = Daemon::start();
    quota_setup(&d, "ctr-q");
    let args = [
        "--mode",
        "binary",
        "--id-prefix",
        "q",
        "--values",
        "4,5,2,1",
        "--buckets",
        "gpt-a",
    ];
    let check = |run: &Value| {
        let reqs = requests(run);
        let statuses: Vec<&Value> = reqs.iter().map(|r| &r["status"]).collect();
        assert_eq!(statuses, [204, 204, 400, 204], "{run}");
        let errors = assert_rejected(&reqs[2]["body"], 0, 0, 1);
        assert_error(&errors[0], 0, Some("q-2"), "quota_exceeded", None);
    };
    let b = send(&d, Sdk::JavaScript, INGEST, "ctr-q", "tokens", &args);
    check(&b);
    let want = by_bucket(&[(Some("gpt-a"), "10")]);
    assert_eq!(sent_totals(&[&b], &["q-2"]), want);
    assert_eq!(usage(&d, "ctr-q", "tokens"), want);

    // The Python SDK's binary mode: one more billionth is refused.
    let c = send(
        &d,
        Sdk::CloudEvents,
        INGEST,
        "ctr-q",
        "tokens",
        &[
            "--mode",
            "binary",
            "--id-prefix",
            "more",
            "--values",
            "0.000000001",
            "--value-as",
            "string",
            "--datacontenttype",
            "application/json",
        ],
    );
    let r = &requests(&c)[0];
    assert_eq!(r["status"], 400, "{c}");
    let errors = assert_rejected(&r["body"], 0, 0, 1);
    assert_error(&errors[0], 0, Some("more-0"), "quota_exceeded", None);
    let r = bin("direct", "ctr-q", json!(1), "gpt-a").send(&d);
    assert_eq!(r.0, 400, "{}", r.2);
    let errors = assert_rejected(&r.2, 0, 0, 1);
    assert_error(&errors[0], 0, Some("direct"), "quota_exceeded", None);

    // Re-sent: the accepted ones are duplicates (204), the refused one still refused.
    let again = send(&d, Sdk::JavaScript, INGEST, "ctr-q", "tokens", &args);
    check(&again);
    assert_eq!(usage(&d, "ctr-q", "tokens"), want);
    assert_month_used_up(&d, "ctr-q");
}

// ---------------------------------------------------------------------------------------
// Direct requests.

/// The header and data rules, each checked against the usage meterd reports: header
/// names in any case; values percent-decoded (and raw UTF-8 taken as is), so that the
/// decoded `(source, id)` deduplicates against the same event in structured mode;
/// `ce-time` optional; `ce-dataschema` and extensions ignored; `data` of any JSON type
/// or without Content-Type; an empty body is an event without data (a `count` lever
/// counts it). A readable event with a bad attribute gets the per-event error of
/// structured mode, naming the header.
#[test]
fn binary_headers_and_data_map_like_structured_mode() {
    let d = Daemon::start();
    tokens_setup(&d, "ctr-b");
    let ev = |id: &str, v: i64| bin(id, "ctr-b", json!(v), "m");
    let structured = |id: &str, v: i64| {
        let mut e = ce(id, "ctr-b", json!(v), "m");
        e["source"] = json!("binary-tests");
        e
    };

    let r = ev("plain", 1)
        .without("ce-time")
        .add("ce-dataschema", "urn%3Ameterd%3Atokens")
        .add(
            "ce-traceparent",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        )
        .send(&d);
    assert_204(&r);
    // "évt 1%", percent-encoded; then structured mode with the decoded id: a duplicate.
    assert_204(&ev("%C3%A9vt%201%25", 2).send(&d));
    assert_204(&post_json(
        &d,
        "application/cloudevents+json",
        &structured("évt 1%", 1000),
    ));
    // Raw UTF-8 in a header value, and a percent-encoded subject (`ctr-b`).
    assert_204(&ev("naïve", 4).send(&d));
    assert_204(&post_json(
        &d,
        "application/cloudevents+json",
        &structured("naïve", 1000),
    ));
    assert_204(&ev("subj", 8).set("ce-subject", "ctr%2Db").send(&d));
    // Header names in any case, as written on the wire.
    let (s, b) = raw_http(
        &d,
        "CE-SpecVersion: 1.0\r\nCe-Id: upper\r\nCE-SOURCE: binary-tests\r\nce-Type: tokens\r\n\
         Ce-Subject: ctr-b\r\nContent-Type: Application/JSON; charset=UTF-8\r\n",
        br#"{"tokens": 16, "model": "m"}"#,
    );
    assert_eq!(s, 204, "{b}");
    // Any +json type; no Content-Type at all is read as JSON.
    assert_204(
        &ev("vnd", 32)
            .set("content-type", "application/vnd.acme.usage+json")
            .send(&d),
    );
    assert_204(&ev("untyped", 64).without("content-type").send(&d));
    // Sent again in binary mode: duplicates.
    assert_204(&ev("untyped", 1000).send(&d));
    assert_204(&ev("%C3%A9vt%201%25", 1000).send(&d));
    assert_eq!(
        usage(&d, "ctr-b", "tokens"),
        by_bucket(&[(Some("m"), "127")])
    );

    // `ce-time` is the event time: too late, or not a time, as in structured mode.
    let r = ev("late", 1000)
        .set("ce-time", time_at(-3 * 3_600_000))
        .send(&d);
    assert_eq!(r.0, 400, "{}", r.2);
    let errors = assert_rejected(&r.2, 0, 0, 1);
    assert_error(&errors[0], 0, Some("late"), "too_late", None);
    assert_invalid(
        &ev("when", 1000).set("ce-time", "yesterday").send(&d),
        Some("when"),
        "time",
    );

    // Missing or bad attributes: the per-event errors of structured mode.
    for (header, field) in [
        ("ce-id", "id"),
        ("ce-source", "source"),
        ("ce-type", "type"),
        ("ce-subject", "subject"),
    ] {
        let id = format!("no-{field}");
        let r = ev(&id, 1000).without(header).send(&d);
        assert_invalid(&r, (field != "id").then_some(id.as_str()), field);
    }
    assert_invalid(&ev("", 1000).send(&d), None, "id");
    assert_invalid(
        &ev("v03", 1000).set("ce-specversion", "0.3").send(&d),
        Some("v03"),
        "specversion",
    );
    assert_invalid(
        &ev("no-value", 0).body(br#"{"model": "m"}"#).send(&d),
        Some("no-value"),
        "data",
    );
    assert_invalid(&ev("no-data", 0).body("").send(&d), Some("no-data"), "data");
    let r = ev("lever?", 1000).set("ce-type", "no_such_lever").send(&d);
    let errors = assert_rejected(&r.2, 0, 0, 1);
    assert_error(&errors[0], 0, Some("lever?"), "unknown_lever", None);
    // The same bad event in structured mode: the same error but for the hint.
    let r = post_json(&d, "application/cloudevents+json", &{
        let mut e = structured("no-subject", 1000);
        e.as_object_mut().unwrap().remove("subject");
        e
    });
    let structured_error = assert_rejected(&r.2, 0, 0, 1).remove(0);
    let r = ev("no-subject", 1000).without("ce-subject").send(&d);
    let binary_error = assert_rejected(&r.2, 0, 0, 1).remove(0);
    for f in ["index", "id", "code", "field"] {
        assert_eq!(
            structured_error[f], binary_error[f],
            "{structured_error} {binary_error}"
        );
    }
    assert_eq!(
        format!(
            "{} (binary mode: the `ce-subject` header)",
            structured_error["message"].as_str().unwrap()
        ),
        binary_error["message"]
    );
    assert_eq!(
        usage(&d, "ctr-b", "tokens"),
        by_bucket(&[(Some("m"), "127")])
    );

    // A `count` lever: no body, or an empty one of any type, is an event without data.
    lever(&d, "calls", "count", "$.value", "$.route");
    let call = |id: &str| ev(id, 0).set("ce-type", "calls");
    assert_204(&call("c1").without("content-type").body("").send(&d));
    assert_204(
        &call("c2")
            .set("content-type", "text/plain")
            .body("")
            .send(&d),
    );
    assert_204(&call("c3").body(br#"{"route": "/a"}"#).send(&d));
    assert_eq!(
        usage(&d, "ctr-b", "calls"),
        by_bucket(&[(None, "2"), (Some("/a"), "1")])
    );
}

/// A binary-mode request that cannot be an event is refused whole, with its status and
/// problem code, and nothing of it counts: non-JSON data (415), malformed percent-encoding
/// or a repeated attribute header (400 `invalid_request`), data that is not JSON (400
/// `malformed_body`), a batch attempted in binary mode (400 `malformed_body`), a body
/// over `max_body_bytes` (413). The detection rule: a CloudEvents media type wins over
/// `ce-` headers, and without `ce-specversion` nothing changes.
#[test]
fn bad_binary_requests_are_refused() {
    let d = Daemon::start();
    tokens_setup(&d, "ctr-x");
    let ok = bin("ok", "ctr-x", json!(1), "m");
    assert_204(&ok.send(&d));
    let try_ = |id: &str| ok.clone().set("ce-id", id);

    for ct in [
        "text/plain",
        "application/octet-stream",
        "application/xml; charset=utf-8",
    ] {
        let r = try_("x-type").set("content-type", ct).send(&d);
        assert_problem(&r, 415, "unsupported_media_type");
        assert!(
            r.2["detail"].as_str().unwrap().contains("binary"),
            "{}",
            r.2
        );
    }
    for (name, value) in [
        ("ce-id", &b"a%2"[..]),
        ("ce-id", b"%zz"),
        ("ce-source", b"100%"),
        ("ce-subject", b"ctr%2-x"),
        ("ce-myext", b"%G1"),
        ("ce-id", b"%FF%FE"),
    ] {
        let r = try_("x-pct").set(name, value).send(&d);
        assert_problem(&r, 400, "invalid_request");
        let detail = r.2["detail"].as_str().unwrap();
        assert!(detail.contains(name), "{detail}");
    }
    let r = try_("x-twice").add("ce-id", "x-again").send(&d);
    assert_problem(&r, 400, "invalid_request");
    for body in [&b"{\"tokens\": "[..], b"tokens=5", &[0xff, 0xfe]] {
        assert_problem(&try_("x-json").body(body).send(&d), 400, "malformed_body");
    }
    // A batch in binary mode: refused, nothing accepted...
    let batch = serde_json::to_vec(&json!([
        ce("x-b1", "ctr-x", json!(2), "m"),
        ce("x-b2", "ctr-x", json!(4), "m"),
    ]))
    .unwrap();
    let r = try_("x-batch").body(&batch).send(&d);
    assert_problem(&r, 400, "malformed_body");
    let detail = r.2["detail"].as_str().unwrap();
    assert!(
        detail.contains("application/cloudevents-batch+json"),
        "{detail}"
    );
    assert_eq!(usage(&d, "ctr-x", "tokens"), by_bucket(&[(Some("m"), "1")]));
    // ...while with the batch media type it is a batch (the ce- headers are ignored).
    let r = try_("x-batch")
        .set("content-type", "application/cloudevents-batch+json")
        .body(&batch)
        .send(&d);
    assert_204(&r);
    // Other CloudEvents formats stay unsupported.
    let r = try_("x-xml")
        .set("content-type", "application/cloudevents+xml")
        .send(&d);
    assert_problem(&r, 415, "unsupported_media_type");
    // Without ce-specversion: a non-JSON type is 415 as before, and application/json is
    // structured mode (so this body, the event's data, is an event without an id).
    let r = try_("x-nospec")
        .without("ce-specversion")
        .set("content-type", "text/plain")
        .send(&d);
    assert_problem(&r, 415, "unsupported_media_type");
    let r = try_("x-nospec").without("ce-specversion").send(&d);
    let errors = assert_rejected(&r.2, 0, 0, 1);
    assert_error(&errors[0], 0, None, "invalid_event", Some("id"));
    assert!(
        !errors[0]["message"].as_str().unwrap().contains("binary"),
        "{}",
        r.2
    );
    // Roles as in structured mode.
    assert_problem(&try_("x-read").post(&d, Some(READ)), 403, "forbidden");
    assert_problem(&try_("x-anon").post(&d, None), 401, "unauthorized");
    assert_eq!(usage(&d, "ctr-x", "tokens"), by_bucket(&[(Some("m"), "7")]));

    // Data over max_body_bytes: 413; just under it: accepted.
    let small = Daemon::start_with("max_body_bytes = 4096", "");
    tokens_setup(&small, "ctr-x");
    let padded = |n: usize| {
        serde_json::to_vec(&json!({"tokens": 1, "model": "m", "pad": "x".repeat(n)})).unwrap()
    };
    let r = try_("x-big").body(padded(5000)).send(&small);
    assert_problem(&r, 413, "payload_too_large");
    assert_204(&try_("fits").body(padded(3900)).send(&small));
    assert_eq!(
        usage(&small, "ctr-x", "tokens"),
        by_bucket(&[(Some("m"), "1")])
    );
}
