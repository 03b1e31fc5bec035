//! Black-box tests of request limits and robustness (SPEC 2.1, 2.4): body and batch size
//! limits at their exact edges (also for chunked bodies), field length and decimal digit
//! limits, lateness edges, the in-flight limit (429 + Retry-After), slow bodies (408),
//! content types (415), and malformed or hostile bodies that must never cause a 5xx, a
//! crash or a partially accepted request.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::{time_at, Daemon, ADMIN, INGEST, READ};
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

const LIMITS: &str =
    "max_body_bytes = 4096\nmax_batch_events = 10\nmax_in_flight = 2\nbody_read_timeout = \"1s\"\n";

fn start_limited() -> Daemon {
    let d = Daemon::start_with(LIMITS, "");
    d.lever("calls", "sum");
    d.contract("ctr");
    d
}

/// A raw HTTP/1.1 response.
struct Resp {
    status: u16,
    head: String,
    body: Value,
}

impl Resp {
    fn header(&self, name: &str) -> Option<String> {
        self.head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case(name).then(|| v.trim().to_string())
        })
    }
}

fn connect(d: &Daemon) -> TcpStream {
    let s = TcpStream::connect(d.base.trim_start_matches("http://")).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    s.set_nodelay(true).unwrap();
    s
}

/// Request head for `POST /v1/events` with the ingest key and extra header lines.
fn events_head(extra: &str) -> String {
    format!(
        "POST /v1/events HTTP/1.1\r\nHost: meterd\r\nAuthorization: Bearer {INGEST}\r\nContent-Type: application/json\r\n{extra}\r\n"
    )
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Reads one response (head and a content-length body). `None` if the connection closed
/// without a response.
fn read_resp(s: &mut TcpStream) -> Option<Resp> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let head_end = loop {
        if let Some(p) = find(&buf, b"\r\n\r\n") {
            break p + 4;
        }
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let status: u16 = head.split_whitespace().nth(1)?.parse().ok()?;
    let mut r = Resp {
        status,
        head,
        body: Value::Null,
    };
    let len: usize = r
        .header("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    while buf.len() < head_end + len {
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    let body = &buf[head_end..buf.len().min(head_end + len)];
    r.body = serde_json::from_slice(body).unwrap_or(Value::Null);
    Some(r)
}

/// Sends `body` with chunked transfer encoding (no content-length) in pieces of `piece`.
fn post_chunked(d: &Daemon, body: &[u8], piece: usize) -> Resp {
    let mut s = connect(d);
    let mut req = events_head("Transfer-Encoding: chunked\r\nConnection: close\r\n").into_bytes();
    for c in body.chunks(piece) {
        req.extend_from_slice(format!("{:x}\r\n", c.len()).as_bytes());
        req.extend_from_slice(c);
        req.extend_from_slice(b"\r\n");
    }
    req.extend_from_slice(b"0\r\n\r\n");
    s.write_all(&req).unwrap();
    read_resp(&mut s).expect("no response")
}

/// Sends only a request head declaring a JSON body of `len` bytes, then reads the answer.
fn head_only(d: &Daemon, method: &str, path: &str, key: &str, len: usize) -> Resp {
    let mut s = connect(d);
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: meterd\r\nAuthorization: Bearer {key}\r\nContent-Type: application/json\r\nContent-Length: {len}\r\n\r\n"
    );
    s.write_all(head.as_bytes()).unwrap();
    read_resp(&mut s).expect("no response")
}

/// An event padded with trailing blanks to exactly `len` bytes.
fn padded_event(id: &str, len: usize) -> Vec<u8> {
    let mut b = json!({"id": id, "contract": "ctr", "lever": "calls"})
        .to_string()
        .into_bytes();
    assert!(b.len() <= len);
    b.resize(len, b' ');
    b
}

#[track_caller]
fn assert_problem(status: u16, body: &Value, want_status: u16, code: &str) {
    assert_eq!(status, want_status, "{body}");
    assert_eq!(body["code"], code, "{body}");
    assert_eq!(body["status"], want_status, "{body}");
}

#[track_caller]
fn accepted(status: u16, body: &Value) -> u64 {
    assert_eq!(status, 200, "{body}");
    body["accepted"].as_u64().unwrap()
}

fn total(d: &Daemon, contract: &str) -> Option<String> {
    let from = time_at(-3_600_000 - 600_000);
    let to = time_at(3_600_000);
    let u = d.usage(contract, &format!("from={from}&to={to}&lever=calls"));
    u["items"][0]["value"].as_str().map(str::to_string)
}

#[test]
fn body_size_limit_at_the_edge() {
    let d = start_limited();
    // With a content-length.
    let (s, b) = d.raw(
        "/v1/events",
        INGEST,
        "application/json",
        padded_event("cl-ok", 4096),
    );
    assert_eq!(accepted(s, &b), 1);
    let (s, b) = d.raw(
        "/v1/events",
        INGEST,
        "application/json",
        padded_event("cl-over", 4097),
    );
    assert_problem(s, &b, 413, "payload_too_large");
    // A declared length over the limit is refused before the body is read.
    let r = head_only(&d, "POST", "/v1/events", INGEST, 1 << 20);
    assert_problem(r.status, &r.body, 413, "payload_too_large");
    // Chunked, in pieces of various sizes.
    for piece in [4096, 1000, 7] {
        let r = post_chunked(&d, &padded_event(&format!("ch-ok-{piece}"), 4096), piece);
        assert_eq!(accepted(r.status, &r.body), 1, "piece {piece}");
        let r = post_chunked(&d, &padded_event(&format!("ch-over-{piece}"), 4097), piece);
        assert_problem(r.status, &r.body, 413, "payload_too_large");
    }
    // Nothing of the refused bodies was counted; their ids are still free.
    assert_eq!(total(&d, "ctr").as_deref(), Some("4"));
    let (s, b) = d.post_events(&json!([
        {"id": "cl-over", "contract": "ctr", "lever": "calls"},
        {"id": "ch-over-7", "contract": "ctr", "lever": "calls"}
    ]));
    assert_eq!(accepted(s, &b), 2);
    // Admin bodies have their own bound but still refuse oversized input cleanly.
    let r = head_only(&d, "PUT", "/v1/contracts/big", ADMIN, 300_000);
    assert_problem(r.status, &r.body, 413, "payload_too_large");
}

#[test]
fn batch_size_limit_at_the_edge() {
    let d = start_limited();
    let events = |prefix: &str, n: usize| -> Vec<Value> {
        (0..n)
            .map(|i| json!({"id": format!("{prefix}-{i}"), "contract": "ctr", "lever": "calls"}))
            .collect()
    };
    let ndjson = |evs: &[Value]| -> Vec<u8> {
        evs.iter()
            .map(|e| format!("{e}\n"))
            .collect::<String>()
            .into_bytes()
    };
    let (s, b) = d.post_events(&Value::Array(events("arr10", 10)));
    assert_eq!(accepted(s, &b), 10);
    let (s, b) = d.post_events(&Value::Array(events("arr11", 11)));
    assert_problem(s, &b, 413, "batch_too_large");
    let (s, b) = d.raw(
        "/v1/events",
        INGEST,
        "application/x-ndjson",
        ndjson(&events("nd10", 10)),
    );
    assert_eq!(accepted(s, &b), 10);
    let (s, b) = d.raw(
        "/v1/events",
        INGEST,
        "application/x-ndjson",
        ndjson(&events("nd11", 11)),
    );
    assert_problem(s, &b, 413, "batch_too_large");
    // Blank lines do not count as events.
    let mut body = ndjson(&events("ndb", 10));
    body.extend_from_slice(b"\n\n\r\n");
    let (s, b) = d.raw("/v1/events", INGEST, "application/x-ndjson", body);
    assert_eq!(accepted(s, &b), 10);
    // Invalid elements count towards the limit too.
    let (s, b) = d.post_events(&json!([1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11]));
    assert_problem(s, &b, 413, "batch_too_large");
    // Refused batches accepted nothing.
    assert_eq!(total(&d, "ctr").as_deref(), Some("30"));
    let (s, b) = d.post_events(&json!([
        {"id": "arr11-10", "contract": "ctr", "lever": "calls"},
        {"id": "nd11-0", "contract": "ctr", "lever": "calls"}
    ]));
    assert_eq!(accepted(s, &b), 2);
}

#[test]
fn field_limits_at_the_edge() {
    let d = start_limited();
    let base = || json!({"id": "f", "contract": "ctr", "lever": "calls"});
    let with = |k: &str, v: Value| {
        let mut e = base();
        e[k] = v;
        e
    };
    let ok_cases = [
        with("id", json!("i".repeat(128))),
        with("id", json!("é".repeat(64))),
        {
            let mut e = with("bucket", json!("b".repeat(64)));
            e["id"] = json!("bucket64");
            e
        },
        {
            let mut e = with("value", json!("0.123456789"));
            e["id"] = json!("frac9");
            e
        },
        {
            let mut e = with("value", json!("999999999999999999"));
            e["id"] = json!("int18");
            e
        },
        {
            let mut e = with("value", json!("999999999999999999.999999999"));
            e["id"] = json!("int18frac9");
            e
        },
    ];
    for e in &ok_cases {
        let (s, b) = d.post_events(e);
        assert_eq!(accepted(s, &b), 1, "{e} -> {b}");
    }
    // JSON numbers (not strings) keep their exact digits too.
    let raw = br#"[{"id":"num-frac9","contract":"ctr","lever":"calls","value":0.000000001},
                   {"id":"num-int18","contract":"ctr","lever":"calls","value":100000000000000000}]"#;
    let (s, b) = d.raw("/v1/events", INGEST, "application/json", raw.to_vec());
    assert_eq!(accepted(s, &b), 2, "{b}");

    let bad_cases = [
        (with("id", json!("i".repeat(129))), "id"),
        (with("id", json!(format!("{}é", "i".repeat(127)))), "id"),
        (with("bucket", json!("b".repeat(65))), "bucket"),
        (with("value", json!("0.1234567891")), "value"),
        (with("value", json!("1000000000000000000")), "value"),
        (with("value", json!("1000000000000000000.5")), "value"),
    ];
    for (e, field) in &bad_cases {
        let (s, b) = d.post_events(e);
        assert_eq!((s, b["rejected"].as_u64()), (200, Some(1)), "{e} -> {b}");
        assert_eq!(b["errors"][0]["code"], "invalid_event", "{b}");
        assert_eq!(b["errors"][0]["field"], *field, "{e} -> {b}");
    }
    let raw = br#"[{"id":"num-frac10","contract":"ctr","lever":"calls","value":0.0000000001},
                   {"id":"num-int19","contract":"ctr","lever":"calls","value":1000000000000000000}]"#;
    let (s, b) = d.raw("/v1/events", INGEST, "application/json", raw.to_vec());
    assert_eq!((s, b["rejected"].as_u64()), (200, Some(2)), "{b}");
    assert!(
        b["errors"]
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["field"] == "value"),
        "{b}"
    );

    // Exact sum of the accepted values: 3 x 1 + 0.123456789 + 999999999999999999
    // + 999999999999999999.999999999 + 0.000000001 + 100000000000000000.
    assert_eq!(
        total(&d, "ctr").as_deref(),
        Some("2100000000000000002.123456789")
    );
}

#[test]
fn lateness_edges() {
    let d = start_limited();
    let ev = |id: &str, offset_ms: i64| json!({"id": id, "contract": "ctr", "lever": "calls", "time": time_at(offset_ms)});
    let cases = [
        (ev("late-in", -3_600_000 + 5_000), None),
        (ev("late-out", -3_600_000 - 5_000), Some("too_late")),
        (ev("early-in", 300_000 - 5_000), None),
        (ev("early-out", 300_000 + 5_000), Some("too_early")),
        (ev("now", 0), None),
    ];
    for (e, code) in cases {
        let (s, b) = d.post_events(&e);
        assert_eq!(s, 200, "{b}");
        match code {
            None => assert_eq!(b["accepted"], 1, "{e} -> {b}"),
            Some(c) => assert_eq!(b["errors"][0]["code"], c, "{e} -> {b}"),
        }
    }
}

/// Opens a request to `POST /v1/events` and sends only part of its body, so the server
/// holds an in-flight permit while it waits for the rest.
fn hold(d: &Daemon, id: &str) -> (TcpStream, Vec<u8>) {
    let body = json!({"id": id, "contract": "ctr", "lever": "calls"})
        .to_string()
        .into_bytes();
    let mut s = connect(d);
    let head = events_head(&format!("Content-Length: {}\r\n", body.len()));
    s.write_all(head.as_bytes()).unwrap();
    s.write_all(&body[..5]).unwrap();
    (s, body[5..].to_vec())
}

/// Polls `done` every 20 ms until it holds; false once both 10 s and 500 attempts have
/// passed (attempts too, so that a pause of the whole machine does not end the wait).
fn patiently(mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    for attempt in 0.. {
        if done() {
            return true;
        }
        if attempt >= 500 && Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    unreachable!()
}

/// What the server had done with held requests when a wait for them failed: anything
/// it answered on their connections, its request counters and its log.
fn held_diagnosis(d: &Daemon, held: [&TcpStream; 2]) -> String {
    let mut out = String::new();
    for (i, s) in held.into_iter().enumerate() {
        let mut s = s.try_clone().unwrap();
        s.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let mut buf = [0u8; 4096];
        let seen = match s.read(&mut buf) {
            Ok(n) => format!("{:?}", String::from_utf8_lossy(&buf[..n])),
            Err(e) => format!("no answer ({e})"),
        };
        out += &format!("held request {i}: {seen}\n");
    }
    let metrics = d.metrics_text();
    for l in metrics.lines() {
        if l.starts_with("meterd_http_") && !l.contains("_bucket") {
            out += l;
            out.push('\n');
        }
    }
    out + "log:\n" + &d.stderr.lock().unwrap()
}

/// `meterd_http_in_flight_requests` as the metrics listener reports it now.
fn in_flight(d: &Daemon) -> f64 {
    d.metrics_text()
        .lines()
        .find_map(|l| {
            l.strip_prefix("meterd_http_in_flight_requests ")?
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or(-1.0)
}

#[test]
fn in_flight_limit_sheds_with_retry_after() {
    let d = Daemon::start_with("max_in_flight = 2\nbody_read_timeout = \"20s\"\n", "");
    d.lever("calls", "sum");
    d.contract("ctr");
    let (mut a, a_rest) = hold(&d, "held-a");
    let (b, _) = hold(&d, "held-b");
    // Wait until the server has picked up both held requests. The wait reads the metrics
    // listener, which holds no in-flight slot: a probe on the API would hold one for a
    // moment, and a held request arriving in that moment would be shed instead of held.
    // Bounded by attempts as well as time, so that a machine that pauses (CI, VMs) does
    // not fail the wait.
    let filled = patiently(|| in_flight(&d) == 2.0);
    if !filled {
        panic!(
            "held requests never filled the in-flight limit\n{}",
            held_diagnosis(&d, [&a, &b])
        );
    }

    for (method, key) in [("GET", READ), ("POST", INGEST)] {
        let m = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let path = if method == "GET" {
            "/v1/levers"
        } else {
            "/v1/events"
        };
        let mut rb = d.client.request(m, d.url(path)).bearer_auth(key);
        if method == "POST" {
            rb = rb.json(&json!({"id": "shed", "contract": "ctr", "lever": "calls"}));
        }
        let r = rb.send().unwrap();
        assert_eq!(r.status().as_u16(), 429, "{method} {path}");
        let retry = r
            .headers()
            .get("retry-after")
            .expect("Retry-After")
            .to_str()
            .unwrap()
            .to_string();
        assert!(
            retry.parse::<u64>().is_ok_and(|s| s >= 1),
            "Retry-After {retry:?}"
        );
        assert!(r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/problem+json"));
        let body: Value = r.json().unwrap();
        assert_eq!(body["code"], "overloaded", "{body}");
    }
    // Authentication and roles are checked before the limit.
    assert_eq!(d.req("GET", "/v1/levers", None, None).0, 401);
    assert_eq!(d.req("GET", "/v1/levers", Some(INGEST), None).0, 403);
    // Health, readiness and metrics are not behind the limit.
    for base in [&d.base, &d.metrics] {
        for p in ["/healthz", "/readyz"] {
            assert_eq!(
                d.client
                    .get(format!("{base}{p}"))
                    .send()
                    .unwrap()
                    .status()
                    .as_u16(),
                200,
                "{base}{p}"
            );
        }
    }
    let shed = common::sample(&d.metrics_text(), "meterd_http_shed_requests_total");
    assert!(
        shed.is_some_and(|n| n >= 1.0),
        "shed requests counted: {shed:?}"
    );

    // Release: complete one held request, abandon the other.
    a.write_all(&a_rest).unwrap();
    let r = read_resp(&mut a).expect("held request answered");
    assert_eq!(accepted(r.status, &r.body), 1);
    drop(b);
    let released = patiently(|| {
        let (s, _) = d.post_events(&json!({"id": "after", "contract": "ctr", "lever": "calls"}));
        assert!(s == 200 || s == 429, "status {s}");
        s == 200
    });
    assert!(released, "permits were never released");
    // The shed event was not counted; the held and the later one were.
    assert_eq!(total(&d, "ctr").as_deref(), Some("2"));
    // Both permits are free again (the abandoned request's too): two held requests at
    // once are fine.
    assert!(
        patiently(|| in_flight(&d) == 0.0),
        "a permit was never released"
    );
    let held: Vec<_> = (0..2).map(|i| hold(&d, &format!("again-{i}"))).collect();
    for (mut s, rest) in held {
        s.write_all(&rest).unwrap();
        let r = read_resp(&mut s).unwrap();
        assert_eq!(accepted(r.status, &r.body), 1);
    }
}

#[test]
fn slow_clients_time_out() {
    let d = Daemon::start_with(
        "body_read_timeout = \"1s\"\nheader_read_timeout = \"1s\"\n",
        "",
    );
    d.lever("calls", "sum");
    d.contract("ctr");
    // A body that stops arriving.
    let started = Instant::now();
    let (mut s, _) = hold(&d, "slow-1");
    let r = read_resp(&mut s).expect("408 response");
    assert_problem(r.status, &r.body, 408, "request_timeout");
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(10),
        "{took:?}"
    );
    // A body that trickles in, one byte every 200 ms: the limit is on the whole body.
    let body = json!({"id": "slow-2", "contract": "ctr", "lever": "calls"})
        .to_string()
        .into_bytes();
    let mut s = connect(&d);
    s.write_all(events_head(&format!("Content-Length: {}\r\n", body.len())).as_bytes())
        .unwrap();
    let started = Instant::now();
    for byte in &body {
        if s.write_all(std::slice::from_ref(byte)).is_err()
            || started.elapsed() > Duration::from_secs(3)
        {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let r = read_resp(&mut s).expect("408 response");
    assert_problem(r.status, &r.body, 408, "request_timeout");
    // Chunked body that stops arriving.
    let mut s = connect(&d);
    s.write_all(events_head("Transfer-Encoding: chunked\r\n").as_bytes())
        .unwrap();
    s.write_all(b"5\r\n{\"id\"\r\n").unwrap();
    let r = read_resp(&mut s).expect("408 response");
    assert_problem(r.status, &r.body, 408, "request_timeout");
    // A request head that never completes: the connection is closed.
    let mut s = connect(&d);
    s.write_all(b"POST /v1/events HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    let started = Instant::now();
    let mut buf = [0u8; 1024];
    let closed = loop {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break true,
            Ok(_) => {}
        }
        if started.elapsed() > Duration::from_secs(10) {
            break false;
        }
    };
    assert!(
        closed && started.elapsed() < Duration::from_secs(10),
        "slow head not cut off"
    );
    // None of it was counted, and the daemon serves normally.
    assert_eq!(total(&d, "ctr"), None);
    let (s, b) = d.post_events(&json!({"id": "slow-1", "contract": "ctr", "lever": "calls"}));
    assert_eq!(accepted(s, &b), 1);
}

#[test]
fn content_types() {
    let d = start_limited();
    let body = |id: &str| {
        json!({"id": id, "contract": "ctr", "lever": "calls"})
            .to_string()
            .into_bytes()
    };
    for ct in [
        "text/plain",
        "application/xml",
        "multipart/form-data; boundary=x",
        "application/x-www-form-urlencoded",
        "json",
    ] {
        let (s, b) = d.raw("/v1/events", INGEST, ct, body("ct-bad"));
        assert_problem(s, &b, 415, "unsupported_media_type");
    }
    for (i, ct) in [
        "application/json",
        "application/json; charset=utf-8",
        "APPLICATION/JSON",
        "application/x-ndjson",
    ]
    .into_iter()
    .enumerate()
    {
        let (s, b) = d.raw("/v1/events", INGEST, ct, body(&format!("ct-ok-{i}")));
        assert_eq!(accepted(s, &b), 1, "{ct}");
    }
    // No content type: JSON is assumed.
    let r = d
        .client
        .post(d.url("/v1/events"))
        .bearer_auth(INGEST)
        .body(body("ct-none"))
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    // Admin writes want JSON too.
    let r = d
        .client
        .put(d.url("/v1/levers/x"))
        .bearer_auth(ADMIN)
        .header("content-type", "text/plain")
        .body(r#"{"aggregation":"sum"}"#)
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 415);
    assert_eq!(total(&d, "ctr").as_deref(), Some("5"));
}

/// Posts a hostile body and checks the daemon answers without a 5xx and accepts nothing.
#[track_caller]
fn hostile(d: &Daemon, what: &str, ct: &str, body: Vec<u8>) -> u16 {
    let r = d
        .client
        .post(d.url("/v1/events"))
        .bearer_auth(INGEST)
        .header("content-type", ct)
        .body(body)
        .send()
        .unwrap_or_else(|e| panic!("{what}: request failed (daemon crashed?): {e}"));
    let status = r.status().as_u16();
    let text = r.text().unwrap_or_default();
    assert!(status < 500, "{what}: {status} {text}");
    let v: Value =
        serde_json::from_str(&text).unwrap_or_else(|_| panic!("{what}: body is not JSON: {text}"));
    match status {
        200 => assert_eq!(v["accepted"], 0, "{what}: {v}"),
        400 => assert_eq!(v["code"], "malformed_body", "{what}: {v}"),
        413 => assert!(
            v["code"] == "payload_too_large" || v["code"] == "batch_too_large",
            "{what}: {v}"
        ),
        _ => panic!("{what}: unexpected status {status}: {v}"),
    }
    status
}

#[test]
fn hostile_bodies_never_break_the_daemon() {
    let mut d = Daemon::start();
    d.lever("calls", "sum");
    d.contract("ctr");
    let json_ct = "application/json";
    let ev = r#"{"id":"h","contract":"ctr","lever":"calls"}"#;
    let deep = |open: &str, close: &str, n: usize| {
        format!("{}{}", open.repeat(n), close.repeat(n)).into_bytes()
    };
    let mut cases: Vec<(&str, Vec<u8>, Option<u16>)> = vec![
        ("empty", vec![], Some(400)),
        ("blanks", b" \n\t ".to_vec(), Some(400)),
        ("empty array", b"[]".to_vec(), Some(400)),
        ("null", b"null".to_vec(), Some(400)),
        ("number", b"12345".to_vec(), Some(400)),
        ("string", b"\"event\"".to_vec(), Some(400)),
        ("invalid utf-8", vec![0xff, 0xfe, 0xfd], Some(400)),
        ("invalid utf-8 in a string", b"{\"id\":\"a\xffb\",\"contract\":\"ctr\",\"lever\":\"calls\"}".to_vec(), Some(400)),
        ("overlong utf-8", b"{\"id\":\"\xc0\xaf\",\"contract\":\"ctr\",\"lever\":\"calls\"}".to_vec(), Some(400)),
        ("nul bytes", vec![0; 64], Some(400)),
        ("raw nul in a string", b"{\"id\":\"a\0b\",\"contract\":\"ctr\",\"lever\":\"calls\"}".to_vec(), Some(400)),
        ("escaped nul in the id", br#"{"id":"a\u0000b","contract":"ctr","lever":"calls"}"#.to_vec(), Some(200)),
        ("lone surrogate id", br#"{"id":"\ud800","contract":"ctr","lever":"calls"}"#.to_vec(), None),
        ("truncated", ev.as_bytes()[..20].to_vec(), Some(400)),
        ("trailing garbage", format!("{ev}x").into_bytes(), Some(400)),
        ("two objects", format!("{ev}{ev}").into_bytes(), Some(400)),
        ("unclosed array", format!("[{ev},").into_bytes(), Some(400)),
        ("100k [", "[".repeat(100_000).into_bytes(), Some(400)),
        ("100k nested arrays", deep("[", "]", 100_000), None),
        ("100k nested objects", deep("{\"a\":", "}", 100_000), None),
        ("deep value", format!(r#"{{"id":"h","contract":"ctr","lever":"calls","value":{}}}"#, String::from_utf8(deep("[", "]", 5000)).unwrap()).into_bytes(), None),
        ("duplicate id keys", br#"{"id":"dup-a","id":"dup-b","contract":"ctr","lever":"calls"}"#.to_vec(), Some(200)),
        ("duplicate contract keys", br#"{"id":"dup-c","contract":"ctr","contract":"ctr","lever":"calls"}"#.to_vec(), Some(200)),
        ("array of non-objects", br#"[1, "x", null, true, [], 1.5, -0, [{"id":"n","contract":"ctr","lever":"calls"}]]"#.to_vec(), Some(200)),
        ("huge integer", br#"{"id":"h1","contract":"ctr","lever":"calls","value":123456789012345678901234567890123456789012345678901234567890}"#.to_vec(), Some(200)),
        ("huge exponent", br#"{"id":"h2","contract":"ctr","lever":"calls","value":1e400}"#.to_vec(), Some(200)),
        ("huge negative exponent", br#"{"id":"h3","contract":"ctr","lever":"calls","value":1e-400}"#.to_vec(), Some(200)),
        ("huge exponent string", br#"{"id":"h4","contract":"ctr","lever":"calls","value":"9e999999999"}"#.to_vec(), Some(200)),
        ("exponent overflow", br#"{"id":"h5","contract":"ctr","lever":"calls","value":"1e18446744073709551616"}"#.to_vec(), Some(200)),
        ("tiny negative string", br#"{"id":"h6","contract":"ctr","lever":"calls","value":"-1e-5"}"#.to_vec(), Some(200)),
        ("nan", br#"{"id":"h7","contract":"ctr","lever":"calls","value":"NaN"}"#.to_vec(), Some(200)),
        ("infinity literal", br#"{"id":"h8","contract":"ctr","lever":"calls","value":Infinity}"#.to_vec(), Some(400)),
        ("year 0", br#"{"id":"h9","contract":"ctr","lever":"calls","time":"0000-01-01T00:00:00Z"}"#.to_vec(), Some(200)),
        ("year 9999", br#"{"id":"h10","contract":"ctr","lever":"calls","time":"9999-12-31T23:59:59.999Z"}"#.to_vec(), Some(200)),
        ("long time", format!(r#"{{"id":"h11","contract":"ctr","lever":"calls","time":"2026-01-01T00:00:00.{}Z"}}"#, "1".repeat(10_000)).into_bytes(), Some(200)),
        ("feb 30", br#"{"id":"h12","contract":"ctr","lever":"calls","time":"2026-02-30T00:00:00Z"}"#.to_vec(), Some(200)),
        ("huge id", format!(r#"{{"id":"{}","contract":"ctr","lever":"calls"}}"#, "x".repeat(1 << 20)).into_bytes(), Some(200)),
        ("many unknown fields", format!("{{{}\"id\":\"h13\"}}", "\"k\":1,".repeat(100_000)).into_bytes(), Some(200)),
        ("10001 events", format!("[{}{{}}]", "{},".repeat(10_000)).into_bytes(), Some(413)),
    ];
    // Every proper prefix of a valid batch is malformed.
    let valid = format!(
        r#"[{{"id":"tr-1","contract":"ctr","lever":"calls","value":"1.5","bucket":"eu"}},{{"id":"tr-2","contract":"ctr","lever":"calls","time":"{}"}}]"#,
        time_at(-60_000)
    );
    for n in 0..valid.len() {
        cases.push(("prefix", valid.as_bytes()[..n].to_vec(), Some(400)));
    }
    for (what, body, want) in cases {
        let status = hostile(&d, what, json_ct, body);
        if let Some(w) = want {
            assert_eq!(status, w, "{what}");
        }
    }
    // NDJSON with hostile lines.
    for (what, body) in [
        (
            "ndjson garbage line",
            b"{\"id\":\"nd-1\",\"contract\":\"ctr\",\"lever\":\"calls\"}\n}{\n".to_vec(),
        ),
        (
            "ndjson array line",
            b"[{\"id\":\"nd-2\",\"contract\":\"ctr\",\"lever\":\"calls\"}]\n".to_vec(),
        ),
        ("ndjson deep line", "[".repeat(50_000).into_bytes()),
        ("ndjson lone cr", b"\r\r\r".to_vec()),
    ] {
        hostile(&d, what, "application/x-ndjson", body);
    }

    // Random bytes and random JSON-like token soup from a seeded RNG.
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x6d65_7465_7264);
    let tokens = [
        "{",
        "}",
        "[",
        "]",
        ":",
        ",",
        "\"",
        "\"id\"",
        "\"contract\"",
        "\"lever\"",
        "\"value\"",
        "\"time\"",
        "\"bucket\"",
        "\"x\"",
        "1",
        "-",
        ".",
        "e",
        "9",
        "null",
        "true",
        "\\",
        "\\u",
        "\n",
        " ",
        "\u{0}",
        "é",
    ];
    for i in 0..150 {
        let body: Vec<u8> = if i % 2 == 0 {
            let mut b = vec![0u8; rng.random_range(0..3000)];
            rng.fill(&mut b[..]);
            b
        } else {
            let n = rng.random_range(1..400);
            (0..n)
                .map(|_| tokens[rng.random_range(0..tokens.len())])
                .collect::<String>()
                .into_bytes()
        };
        let ct = if i % 3 == 0 {
            "application/x-ndjson"
        } else {
            json_ct
        };
        hostile(&d, &format!("random body {i}"), ct, body);
    }

    // Still alive and healthy, and nothing was counted.
    assert!(
        d.child.as_mut().unwrap().try_wait().unwrap().is_none(),
        "meterd exited: {}",
        d.logs()
    );
    assert_eq!(
        d.client
            .get(d.url("/healthz"))
            .send()
            .unwrap()
            .status()
            .as_u16(),
        200
    );
    assert_eq!(
        d.client
            .get(d.url("/readyz"))
            .send()
            .unwrap()
            .status()
            .as_u16(),
        200
    );
    assert_eq!(total(&d, "ctr"), None);
    // And the ids used by refused bodies are still free.
    let (s, b) = d.raw("/v1/events", INGEST, json_ct, valid.into_bytes());
    assert_eq!(accepted(s, &b), 2, "{b}");
    let (s, b) = d.post_events(&json!([
        {"id": "h", "contract": "ctr", "lever": "calls"},
        {"id": "nd-1", "contract": "ctr", "lever": "calls"},
        {"id": "dup-a", "contract": "ctr", "lever": "calls"}
    ]));
    assert_eq!(accepted(s, &b), 3, "{b}");
    assert_eq!(total(&d, "ctr").as_deref(), Some("5.5"));
}
