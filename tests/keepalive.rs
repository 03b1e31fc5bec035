//! Black-box tests that every answer leaves a kept-alive connection usable, or says
//! `Connection: close` and closes it (docs/design.md: keep-alive after any answer).
//!
//! Every error path of the role x tenant matrix (no key, a bad key, each role that may
//! not, the other tenant's keys, a method the route does not serve, a route that does
//! not exist) and of the limits (413 declared and chunked, 413 batch, 415, 400 body and
//! query, 408 slow body, 431 head too large and too many header lines, 429 in-flight) is
//! sent twice in a row on one kept-alive connection by pooled clients nobody here wrote:
//! Python's `http.client` and `requests.Session` (pinned in `tests/python/requirements.txt`,
//! driven by `tests/python/keepalive.py`) and `reqwest`'s pool. Every request must get
//! its answer, the same both times. An answer to a request whose unread body is within
//! `max_body_bytes` keeps the connection (no `Connection: close`, the next request goes
//! on the same socket); a body read partway or past the bound closes it, saying so.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::pyenv::{clean, python_dir, sdk_python, tail};
use common::{Daemon, ADMIN, INGEST, OTHER_ADMIN, OTHER_INGEST, OTHER_READ, READ};
use serde_json::{json, Value};

const MAX_BODY: usize = 4096;
const LIMITS: &str = "max_body_bytes = 4096\nmax_batch_events = 10\nbody_read_timeout = \"1s\"\n";

/// One request of the list, and what it must get.
struct Case {
    name: String,
    method: &'static str,
    path: String,
    headers: Vec<(String, String)>,
    body: Option<String>,
    chunked: bool,
    /// Bytes of the declared body actually sent (408); `http.client` only.
    partial: Option<usize>,
    status: u16,
    /// True when the answer must close the connection (and say so).
    closes: bool,
}

impl Case {
    fn new(name: impl Into<String>, method: &'static str, path: impl Into<String>) -> Case {
        Case {
            name: name.into(),
            method,
            path: path.into(),
            headers: Vec::new(),
            body: None,
            chunked: false,
            partial: None,
            status: 0,
            closes: false,
        }
    }

    fn key(mut self, key: &str) -> Case {
        self.headers
            .push(("Authorization".into(), format!("Bearer {key}")));
        self
    }

    fn json(mut self, body: String) -> Case {
        self.headers
            .push(("Content-Type".into(), "application/json".into()));
        self.body = Some(body);
        self
    }

    fn header(mut self, k: &str, v: &str) -> Case {
        self.headers.push((k.into(), v.into()));
        self
    }

    fn expect(mut self, status: u16, closes: bool) -> Case {
        self.status = status;
        self.closes = closes;
        self
    }

    fn spec(&self) -> Value {
        json!({
            "name": self.name,
            "method": self.method,
            "path": self.path,
            "headers": self
                .headers
                .iter()
                .map(|(k, v)| (k.clone(), Value::String(v.clone())))
                .collect::<serde_json::Map<_, _>>(),
            "body": self.body,
            "chunked": self.chunked,
            "partial": self.partial,
        })
    }
}

/// A body for a route: an event for the ingest routes, a small JSON object otherwise.
fn body_for(method: &str, path: &str) -> Option<String> {
    match (method, path) {
        ("POST", "/v1/events") => {
            Some(json!({"id": "ka-ev", "contract": "ctr", "lever": "calls"}).to_string())
        }
        ("POST", "/api/v1/events") => Some(
            json!({"specversion": "1.0", "id": "ka-ce", "source": "ka", "type": "calls",
                   "subject": "ctr", "data": {}})
            .to_string(),
        ),
        ("PUT" | "POST", _) => Some(json!({"note": "x".repeat(600)}).to_string()),
        _ => None,
    }
}

/// The matrix's error cells on every authenticated route: no key, a bad key, every own
/// role that may not, every key of the other tenant (404 on the default tenant's
/// resources, or 403), and a method the route does not serve.
fn matrix_cases() -> Vec<Case> {
    let mut out = Vec::new();
    let roles = [("ingest", INGEST), ("read", READ), ("admin", ADMIN)];
    let others = [
        ("other-ingest", OTHER_INGEST),
        ("other-read", OTHER_READ),
        ("other-admin", OTHER_ADMIN),
    ];
    let mut templates: Vec<&str> = meterd::http::router::ROUTES
        .iter()
        .map(|(_, t)| *t)
        .filter(|t| t.starts_with("/v1/") || t.starts_with("/api/v1/"))
        .collect();
    templates.dedup();
    for template in templates {
        let path = template
            .replace("{lever}", "calls")
            .replace("{contract}", "ctr")
            .replace("{plan}", "basic")
            .replace("{id}", "ka-missing");
        let path = match path.as_str() {
            "/v1/usage" => "/v1/usage?from=2026-01-01T00:00:00Z".to_string(),
            p if p.ends_with("/usage") => format!("{p}?from=2026-01-01T00:00:00Z"),
            _ => path,
        };
        let served: Vec<&str> = meterd::http::router::ROUTES
            .iter()
            .filter(|(_, t)| *t == template)
            .map(|(m, _)| *m)
            .collect();
        for method in served.iter().copied() {
            let method: &'static str = match method {
                "GET" => "GET",
                "PUT" => "PUT",
                "POST" => "POST",
                "DELETE" => "DELETE",
                m => panic!("unexpected method {m}"),
            };
            let need =
                if template.starts_with("/v1/events") || template.starts_with("/api/v1/events") {
                    if method == "POST" {
                        "ingest"
                    } else {
                        "admin"
                    }
                } else if method == "GET" {
                    "read"
                } else {
                    "admin"
                };
            let mk = |name: String| {
                let c = Case::new(name, method, path.clone());
                match body_for(method, template) {
                    Some(b) => c.json(b),
                    None => c,
                }
            };
            out.push(mk(format!("{method} {template} no key")).expect(401, false));
            out.push(
                mk(format!("{method} {template} bad key"))
                    .key("not-a-configured-key")
                    .expect(401, false),
            );
            for (role, key) in roles {
                if role != "admin" && role != need {
                    out.push(
                        mk(format!("{method} {template} {role}"))
                            .key(key)
                            .expect(403, false),
                    );
                }
            }
            for (role, key) in others {
                let allowed = role == "other-admin" || role == format!("other-{need}");
                // Allowed keys of the other tenant act on their own tenant, where the
                // default tenant's lever, contract and plan do not exist: some answers
                // are errors (404, 400), some succeed (a collection, an upsert); the
                // status is whatever it is, the same both times.
                let c = mk(format!("{method} {template} {role}")).key(key);
                out.push(if allowed {
                    c.expect(0, false)
                } else {
                    c.expect(403, false)
                });
            }
        }
        // A method the route does not serve.
        let unserved = ["GET", "PUT", "POST", "DELETE"]
            .into_iter()
            .find(|m| !served.contains(m))
            .map(|m| match m {
                "GET" => "GET",
                "PUT" => "PUT",
                "POST" => "POST",
                _ => "DELETE",
            });
        if let Some(m) = unserved {
            let c = Case::new(format!("{m} {template} not served"), m, path.clone()).key(ADMIN);
            let c = if m == "PUT" || m == "POST" {
                c.json(json!({"note": "x".repeat(600)}).to_string())
            } else {
                c
            };
            out.push(c.expect(405, false));
        }
    }
    out.push(
        Case::new("POST no such route", "POST", "/v1/nothing-here")
            .key(ADMIN)
            .json(json!({"x": 1}).to_string())
            .expect(404, false),
    );
    out.push(
        Case::new("POST unauthenticated chunked", "POST", "/v1/events")
            .json("[".to_string() + &"{\"a\":1},".repeat(300) + "{}]")
            .chunked()
            .expect(401, false),
    );
    out
}

impl Case {
    fn chunked(mut self) -> Case {
        self.chunked = true;
        self
    }
}

/// The limits' error paths.
fn limit_cases() -> Vec<Case> {
    let event = |id: &str| json!({"id": id, "contract": "ctr", "lever": "calls"});
    let mut big = event("big").to_string();
    big.push_str(&" ".repeat(MAX_BODY + 1 - big.len()));
    let batch: Vec<Value> = (0..11).map(|i| event(&format!("b{i}"))).collect();
    let mut slow = Case::new("POST body too slow (408)", "POST", "/v1/events")
        .key(INGEST)
        .json(event("slow").to_string())
        .expect(408, true);
    slow.partial = Some(5);
    let many: Vec<(String, String)> = (0..120)
        .map(|i| (format!("x-extra-{i}"), "v".to_string()))
        .collect();
    let mut too_many = Case::new("GET 120 header lines (431)", "GET", "/v1/levers")
        .key(READ)
        .expect(431, true);
    too_many.headers.extend(many);
    vec![
        Case::new("POST declared body too large (413)", "POST", "/v1/events")
            .key(INGEST)
            .json(big.clone())
            .expect(413, true),
        Case::new("POST chunked body too large (413)", "POST", "/v1/events")
            .key(INGEST)
            .json(big)
            .chunked()
            .expect(413, true),
        Case::new("POST batch too large (413)", "POST", "/v1/events")
            .key(INGEST)
            .json(Value::Array(batch).to_string())
            .expect(413, false),
        Case::new("POST wrong content type (415)", "POST", "/v1/events")
            .key(INGEST)
            .header("Content-Type", "text/plain")
            .header("X-Body", "plain")
            .with_body("id=1&contract=ctr")
            .expect(415, false),
        Case::new("POST malformed body (400)", "POST", "/v1/events")
            .key(INGEST)
            .json("{\"id\": ".to_string())
            .expect(400, false),
        Case::new(
            "GET unknown query parameter (400)",
            "GET",
            "/v1/usage?bogus=1",
        )
        .key(READ)
        .expect(400, false),
        slow,
        Case::new("GET header too large (431)", "GET", "/v1/levers")
            .key(READ)
            .header("X-Big", &"h".repeat(70 * 1024))
            .expect(431, true),
        too_many,
    ]
}

impl Case {
    fn with_body(mut self, body: &str) -> Case {
        self.body = Some(body.to_string());
        self
    }
}

/// Runs `tests/python/keepalive.py` over `cases` against `d`.
fn run_python(d: &Daemon, cases: &[Case]) -> Vec<Value> {
    let spec = json!({
        "base": d.base,
        "requests": cases.iter().map(Case::spec).collect::<Vec<_>>(),
    });
    let mut c = Command::new(sdk_python());
    c.arg(python_dir().join("keepalive.py"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = clean(c).spawn().expect("run keepalive.py");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(spec.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "keepalive.py failed: {}\n{}",
        tail(&out.stdout, 4000),
        tail(&out.stderr, 8000)
    );
    let v: Value = serde_json::from_slice(&out.stdout).expect("keepalive.py output");
    v["results"].as_array().unwrap().clone()
}

/// One `reqwest` answer: case name, attempt, status or error, `Connection` header.
type Answer = (String, u32, Result<u16, String>, Option<String>);

/// Sends every case twice with a `reqwest` blocking client whose pool keeps one idle
/// connection; returns (name, attempt, status or error, Connection header).
fn run_reqwest(d: &Daemon, cases: &[Case]) -> Vec<Answer> {
    let client = reqwest::blocking::Client::builder()
        .pool_max_idle_per_host(1)
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap();
    let mut out = Vec::new();
    for c in cases.iter().filter(|c| c.partial.is_none()) {
        for attempt in 1..=2 {
            let m = reqwest::Method::from_bytes(c.method.as_bytes()).unwrap();
            let mut rb = client.request(m, d.url(&c.path));
            for (k, v) in &c.headers {
                rb = rb.header(k, v);
            }
            if let Some(b) = &c.body {
                rb = if c.chunked {
                    // An unknown length: reqwest sends it chunked.
                    let reader = std::io::Cursor::new(b.clone().into_bytes());
                    rb.body(reqwest::blocking::Body::new(reader))
                } else {
                    rb.body(b.clone())
                };
            }
            let r = rb.send();
            let item = match r {
                Ok(r) => {
                    let conn = r
                        .headers()
                        .get("connection")
                        .map(|v| v.to_str().unwrap_or("").to_string());
                    let s = r.status().as_u16();
                    let _ = r.bytes();
                    (Ok(s), conn)
                }
                Err(e) => (Err(format!("{e:?}")), None),
            };
            out.push((c.name.clone(), attempt, item.0, item.1));
        }
    }
    out
}

/// Checks the Python clients' results against the cases.
fn check_python(cases: &[Case], results: &[Value]) -> Vec<String> {
    let mut failures = Vec::new();
    let mut previous_closed: Option<bool> = None;
    for r in results {
        let name = r["name"].as_str().unwrap();
        let client = r["client"].as_str().unwrap();
        let c = cases.iter().find(|c| c.name == name).unwrap();
        let closed = r["connection"]
            .as_str()
            .is_some_and(|v| v.eq_ignore_ascii_case("close"));
        if let Some(e) = r.get("error") {
            failures.push(format!(
                "{client}: {name} #{}: no answer: {e}",
                r["attempt"]
            ));
            previous_closed = None;
            continue;
        }
        let status = r["status"].as_u64().unwrap() as u16;
        if c.status != 0 && status != c.status {
            failures.push(format!(
                "{client}: {name} #{}: status {status}, want {}",
                r["attempt"], c.status
            ));
        }
        if closed != c.closes {
            failures.push(format!(
                "{client}: {name} #{}: Connection: close {}, want {}",
                r["attempt"],
                if closed { "sent" } else { "not sent" },
                if c.closes { "sent" } else { "not sent" },
            ));
        }
        // http.client reconnects only after an answer that said close: a new socket
        // after one that did not means the server closed a connection silently (the
        // request would have failed), a reused one after `close` cannot happen.
        if client == "http.client" {
            let new_socket = r["new_socket"].as_bool().unwrap();
            if let Some(prev) = previous_closed {
                if new_socket != prev {
                    failures.push(format!(
                        "{client}: {name} #{}: new socket {new_socket} after an answer that \
                         {} Connection: close",
                        r["attempt"],
                        if prev { "said" } else { "did not say" }
                    ));
                }
            }
        }
        previous_closed = Some(closed);
    }
    failures
}

/// Checks that the two attempts of every case with a fixed status got the same answer
/// from each client.
fn same_twice(cases: &[Case], results: &[Value]) -> Vec<String> {
    let mut failures = Vec::new();
    for pair in results.chunks(2) {
        if let [a, b] = pair {
            let fixed = cases.iter().any(|c| c.name == a["name"] && c.status != 0);
            if fixed && a["name"] == b["name"] && a["status"] != b["status"] {
                failures.push(format!(
                    "{}: {}: first {} then {}",
                    a["client"], a["name"], a["status"], b["status"]
                ));
            }
        }
    }
    failures
}

fn check_reqwest(cases: &[Case], results: &[Answer]) -> Vec<String> {
    let mut failures = Vec::new();
    for (name, attempt, got, conn) in results {
        let c = cases.iter().find(|c| &c.name == name).unwrap();
        match got {
            Err(e) => failures.push(format!("reqwest: {name} #{attempt}: no answer: {e}")),
            Ok(s) if c.status != 0 && *s != c.status => failures.push(format!(
                "reqwest: {name} #{attempt}: status {s}, want {}",
                c.status
            )),
            Ok(_) => {
                let closed = conn
                    .as_deref()
                    .is_some_and(|v| v.eq_ignore_ascii_case("close"));
                if closed != c.closes {
                    failures.push(format!(
                        "reqwest: {name} #{attempt}: Connection: close {closed}, want {}",
                        c.closes
                    ));
                }
            }
        }
    }
    failures
}

fn start() -> Daemon {
    let d = Daemon::start_with(LIMITS, "");
    d.lever("calls", "sum");
    d.contract("ctr");
    let (s, b) = d.req(
        "PUT",
        "/v1/plans/basic",
        Some(ADMIN),
        Some(
            &json!({"quotas": [{"lever": "calls", "period": "month", "limit": 100,
                                   "mode": "soft"}]}),
        ),
    );
    assert!(s == 200 || s == 201, "{s} {b}");
    d
}

#[test]
fn every_error_answer_keeps_or_closes_the_connection_honestly() {
    let d = start();
    let mut cases = matrix_cases();
    cases.extend(limit_cases());
    assert!(cases.len() > 100, "only {} cases", cases.len());
    let py = run_python(&d, &cases);
    let mut failures = check_python(&cases, &py);
    failures.extend(same_twice(&cases, &py));
    let rq = run_reqwest(&d, &cases);
    failures.extend(check_reqwest(&cases, &rq));
    assert!(
        failures.is_empty(),
        "{} of {} answers failed:\n{}",
        failures.len(),
        py.len() + rq.len(),
        failures.join("\n")
    );
    // The daemon is still healthy and the events of the refused requests were not
    // counted (nothing allowed was sent to the default tenant's contract).
    assert_eq!(d.day_total("ctr", "calls"), 0);
}

/// Opens a request to `POST /v1/events` and sends only part of its body, so the server
/// holds an in-flight permit while it waits for the rest; returns the rest.
fn hold(d: &Daemon, id: &str) -> (TcpStream, Vec<u8>) {
    let body = json!({"id": id, "contract": "ctr", "lever": "calls"}).to_string();
    let mut s = TcpStream::connect(d.base.trim_start_matches("http://")).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let head = format!(
        "POST /v1/events HTTP/1.1\r\nHost: meterd\r\nAuthorization: Bearer {INGEST}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).unwrap();
    s.write_all(&body.as_bytes()[..5]).unwrap();
    (s, body.as_bytes()[5..].to_vec())
}

/// Waits until `n` requests are in flight.
fn wait_in_flight(d: &Daemon, n: f64) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while in_flight(d) != n {
        assert!(
            Instant::now() < deadline,
            "the held request never took its slot"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn in_flight(d: &Daemon) -> f64 {
    common::sample(&d.metrics_text(), "meterd_http_in_flight_requests").unwrap_or(-1.0)
}

#[test]
fn shed_requests_keep_the_connection() {
    let d = Daemon::start_with("max_in_flight = 1\nbody_read_timeout = \"30s\"\n", "");
    d.lever("calls", "sum");
    d.contract("ctr");
    let (held, _) = hold(&d, "held");
    wait_in_flight(&d, 1.0);
    let event = json!({"id": "shed", "contract": "ctr", "lever": "calls"}).to_string();
    let cases = vec![
        Case::new("POST shed (429)", "POST", "/v1/events")
            .key(INGEST)
            .json(event.clone())
            .expect(429, false),
        Case::new("POST shed chunked (429)", "POST", "/v1/events")
            .key(INGEST)
            .json(event + &" ".repeat(3000))
            .chunked()
            .expect(429, false),
    ];
    let py = run_python(&d, &cases);
    let mut failures = check_python(&cases, &py);
    failures.extend(same_twice(&cases, &py));
    let rq = run_reqwest(&d, &cases);
    failures.extend(check_reqwest(&cases, &rq));
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    drop(held);
}

/// Everything the server sends until it closes (or the read timeout), lower-cased.
fn read_until_closed(s: &mut TcpStream) -> String {
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    String::from_utf8_lossy(&buf).to_ascii_lowercase()
}

/// A client that sends `Expect: 100-continue` and is refused before its body is asked
/// for gets `Connection: close`: its body was never read, and it may still send it.
#[test]
fn refused_expect_continue_closes() {
    let d = Daemon::start_with(LIMITS, "");
    let mut s = TcpStream::connect(d.base.trim_start_matches("http://")).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(
        b"POST /v1/events HTTP/1.1\r\nHost: meterd\r\nContent-Type: application/json\r\n\
          Content-Length: 20\r\nExpect: 100-continue\r\n\r\n",
    )
    .unwrap();
    let text = read_until_closed(&mut s);
    assert!(text.starts_with("http/1.1 401"), "{text}");
    assert!(!text.contains("100 continue"), "{text}");
    assert!(text.contains("connection: close"), "{text}");
}

/// An answer given while meterd stops (after SIGTERM, draining the requests in flight)
/// says `Connection: close`: hyper's graceful shutdown closes the connection after it.
#[test]
fn answers_while_stopping_say_close() {
    let mut d = Daemon::start_with("body_read_timeout = \"30s\"\n", "");
    d.lever("calls", "sum");
    d.contract("ctr");
    let (mut s, rest) = hold(&d, "during-stop");
    wait_in_flight(&d, 1.0);
    let pid = d.child.as_ref().unwrap().id();
    common::unsafe_sigterm(pid);
    // The listener stops accepting once meterd is no longer ready.
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(d.base.trim_start_matches("http://")).is_ok() {
        assert!(
            Instant::now() < deadline,
            "meterd kept accepting after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    s.write_all(&rest).unwrap();
    let text = read_until_closed(&mut s);
    assert!(text.starts_with("http/1.1 200"), "{text}");
    assert!(text.contains("connection: close"), "{text}");
    assert_eq!(d.terminate(), Some(0));
}
