//! Black-box tests of quota threshold notifications (SPEC 3): the durable outbox and the
//! signed webhook delivery, observed through a real HTTP receiver run by the test.
//!
//! Promises guarded:
//! - an event that moves a quota period's usage from below to at or above
//!   `limit * threshold / 100` (exactly: tiny limits are not rounded down) yields exactly
//!   one notification per (contract, lever, period, period start, threshold), for its own
//!   contract and for every ancestor reached through `parent` (with that ancestor's own
//!   limit), also when one request carries several crossing events, one event crosses
//!   several thresholds, or many clients post concurrently;
//! - one id never names two different notifications (a `latest` lever falling and rising
//!   again, or a raised limit, must not reuse the id of the first crossing);
//! - the notification carries the usage that caused it: rejected events (hard limit) and
//!   duplicates never cause one, and a restarted daemon does not cross again what was
//!   already crossed;
//! - thresholds come from the contract, else its plan, else the tenant; a tenant without
//!   `webhook_url` records no crossings at all;
//! - the body has the documented fields (decimal strings for usage and limit, no period
//!   bounds for `lifetime`), every attempt is signed with
//!   `t=<ts>,v1=HMAC-SHA256(secret, "<ts>.<body>")` matching `meterd-webhook-timestamp`,
//!   and the id (`meterd-webhook-id`) and body are stable across retries;
//! - non-2xx answers, refused connections and hanging receivers (`webhook_timeout`) are
//!   retried with backoff until delivered; pending notifications survive `kill -9` and
//!   SIGTERM restarts (SIGTERM does not wait for a hanging receiver); notifications older
//!   than `webhook_max_age` are dropped, counted and not loaded again;
//! - the webhook metrics (crossings, attempts by outcome, outbox depth, drops) agree;
//! - `check-config` refuses (exit 64, naming the key) incomplete or invalid webhook and
//!   threshold settings, and the admin API refuses invalid contract and plan thresholds.

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use chrono::{DateTime, Months, Timelike, Utc};
use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::Sha256;

use common::{time_at, Daemon, ADMIN, OTHER_ADMIN, OTHER_INGEST, READ};

const LEVER: &str = "calls";
const SECRET: &str = "whsec_test_0123456789abcdef";
const WRONG_SECRET: &str = "whsec_test_0123456789abcdeX";
/// Fast retries so that tests finish quickly.
const FAST: &str =
    "webhook_retry_initial = \"50ms\"\nwebhook_retry_max = \"400ms\"\nwebhook_timeout = \"2s\"\n";
/// How long a test waits for deliveries.
const DEADLINE: Duration = Duration::from_secs(20);

// ---------------------------------------------------------------------------------------
// The receiver: a minimal HTTP/1.1 server on 127.0.0.1

/// One request as the receiver saw it.
#[derive(Debug, Clone)]
struct Received {
    method: String,
    path: String,
    /// Header names in lower case.
    headers: HashMap<String, String>,
    body: String,
    /// What the receiver answered (0: it hung up without answering).
    status: u16,
    /// When the head was read.
    at: Instant,
    /// Unix seconds when the head was read.
    unix: i64,
}

impl Received {
    #[track_caller]
    fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .unwrap_or_else(|| panic!("no `{name}` header: {self:?}"))
    }

    fn id(&self) -> &str {
        self.headers
            .get("meterd-webhook-id")
            .map(String::as_str)
            .unwrap_or("")
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {:?}", self.body))
    }
}

#[derive(Debug, Default)]
struct Script {
    /// Answer the next N requests with 500.
    fail_next: usize,
    /// Hold the next N requests for `hang` without answering, then hang up.
    hang_next: usize,
    hang: Duration,
    log: Vec<Received>,
}

/// A webhook receiver that records every request; it can fail or hang on purpose, stop
/// (the port then refuses connections) and start again on the same port.
struct Receiver {
    port: u16,
    script: Arc<Mutex<Script>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Receiver {
    fn start() -> Receiver {
        Self::listen(0, Arc::new(Mutex::new(Script::default())))
    }

    fn listen(port: u16, script: Arc<Mutex<Script>>) -> Receiver {
        let deadline = Instant::now() + Duration::from_secs(10);
        let listener = loop {
            match TcpListener::bind(("127.0.0.1", port)) {
                Ok(l) => break l,
                Err(e) if Instant::now() < deadline => {
                    eprintln!("receiver: bind 127.0.0.1:{port} failed ({e}); retrying");
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(e) => panic!("receiver cannot bind 127.0.0.1:{port}: {e}"),
            }
        };
        let port = listener.local_addr().unwrap().port();
        listener.set_nonblocking(true).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (stop, script) = (stop.clone(), script.clone());
            std::thread::spawn(move || {
                // The listener is dropped (the port closed) when this loop ends.
                while !stop.load(Ordering::SeqCst) {
                    match listener.accept() {
                        Ok((s, _)) => {
                            let script = script.clone();
                            std::thread::spawn(move || serve(s, &script));
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(5)),
                    }
                }
            })
        };
        Receiver {
            port,
            script,
            stop,
            thread: Some(thread),
        }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/hook", self.port)
    }

    /// Closes the port: connections are refused until [`Receiver::restart`].
    fn stop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
        // Check that the port really refuses now.
        assert!(
            TcpStream::connect(("127.0.0.1", self.port)).is_err(),
            "port {} still accepts after stop",
            self.port
        );
    }

    /// Listens again on the same port, keeping the log and the script.
    fn restart(&mut self) {
        assert!(self.thread.is_none(), "receiver is running");
        let r = Self::listen(self.port, self.script.clone());
        assert_eq!(r.port, self.port);
        // The old value (stopped, no thread) is dropped here.
        *self = r;
    }

    fn script(&self) -> std::sync::MutexGuard<'_, Script> {
        self.script.lock().unwrap()
    }

    fn log(&self) -> Vec<Received> {
        self.script().log.clone()
    }

    /// Ids of the notifications answered with 200.
    fn delivered_ids(&self) -> BTreeSet<String> {
        self.log()
            .iter()
            .filter(|r| r.status == 200)
            .map(|r| r.id().to_string())
            .collect()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Reads one request, records it and answers as scripted.
fn serve(mut s: TcpStream, script: &Mutex<Script>) {
    let _ = s.set_nonblocking(false);
    let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let head_end = loop {
        if let Some(p) = find(&buf, b"\r\n\r\n") {
            break p;
        }
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    let (at, unix) = (Instant::now(), Utc::now().timestamp());
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let mut request_line = lines.next().unwrap_or("").split(' ');
    let method = request_line.next().unwrap_or("").to_string();
    let path = request_line.next().unwrap_or("").to_string();
    let headers: HashMap<String, String> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    // Bodies must come with a Content-Length (chunked bodies are recorded as malformed).
    let len = headers
        .get("content-length")
        .and_then(|v| v.parse::<usize>().ok());
    let mut body = Vec::new();
    if let Some(len) = len {
        let start = head_end + 4;
        while buf.len() < start + len {
            match s.read(&mut chunk) {
                Ok(0) | Err(_) => break,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        body = buf[start.min(buf.len())..(start + len).min(buf.len())].to_vec();
    }
    let complete = len.is_some_and(|l| body.len() == l);
    let (status, hang) = {
        let mut sc = script.lock().unwrap();
        let (status, hang) = if !complete {
            (400, None)
        } else if sc.hang_next > 0 {
            sc.hang_next -= 1;
            (0, Some(sc.hang))
        } else if sc.fail_next > 0 {
            sc.fail_next -= 1;
            (500, None)
        } else {
            (200, None)
        };
        sc.log.push(Received {
            method,
            path,
            headers,
            body: String::from_utf8_lossy(&body).into_owned(),
            status,
            at,
            unix,
        });
        (status, hang)
    };
    if let Some(h) = hang {
        std::thread::sleep(h);
        return;
    }
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        _ => "Internal Server Error",
    };
    let _ = s.write_all(
        format!("HTTP/1.1 {status} {reason}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            .as_bytes(),
    );
    let _ = s.flush();
    let _ = s.shutdown(std::net::Shutdown::Both);
}

// ---------------------------------------------------------------------------------------
// Signatures, metrics, waiting

/// Hex HMAC-SHA256 of `"<ts>.<body>"`, computed independently of the daemon.
fn hmac_hex(secret: &str, ts: &str, body: &[u8]) -> String {
    let mut mac = <Hmac<Sha256>>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(ts.as_bytes());
    mac.update(b".");
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

/// Checks the signature headers of one request against `secret` (and that a wrong secret
/// or a changed body would not verify).
#[track_caller]
fn check_signature(r: &Received, secret: &str) {
    let ts = r.header("meterd-webhook-timestamp");
    let sig = r.header("meterd-signature");
    let parts: Vec<(&str, &str)> = sig
        .split(',')
        .map(|p| {
            p.split_once('=')
                .unwrap_or_else(|| panic!("malformed signature {sig:?}"))
        })
        .collect();
    assert_eq!(parts.len(), 2, "signature {sig:?}");
    assert_eq!(parts[0].0, "t", "signature {sig:?}");
    assert_eq!(parts[1].0, "v1", "signature {sig:?}");
    let (t, v1) = (parts[0].1, parts[1].1);
    assert_eq!(t, ts, "t= differs from meterd-webhook-timestamp");
    let t_num: i64 = t.parse().unwrap_or_else(|_| panic!("t={t:?} not integer"));
    assert!(
        (t_num - r.unix).abs() <= 5,
        "timestamp {t_num} is not the time of the attempt ({})",
        r.unix
    );
    assert_eq!(v1.len(), 64, "v1 is not 32 hex bytes: {sig:?}");
    assert_eq!(
        v1,
        hmac_hex(secret, t, r.body.as_bytes()),
        "signature does not verify for body {:?}",
        r.body
    );
    assert_ne!(v1, hmac_hex(WRONG_SECRET, t, r.body.as_bytes()));
    let mut tampered = r.body.clone().into_bytes();
    tampered.push(b' ');
    assert_ne!(v1, hmac_hex(secret, t, &tampered));
    let other_ts = (t_num + 1).to_string();
    assert_ne!(v1, hmac_hex(secret, &other_ts, r.body.as_bytes()));
}

/// Sum of the samples of `name` whose labels contain `label` (0 when absent).
fn metric(text: &str, name: &str, label: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (n, labels) = match series.find('{') {
                Some(i) => (&series[..i], &series[i..]),
                None => (series, ""),
            };
            if n == name && labels.contains(label) {
                value.parse::<f64>().ok()
            } else {
                None
            }
        })
        .sum()
}

#[derive(Debug, PartialEq)]
struct Hooks {
    crossings: f64,
    depth: f64,
    delivered: f64,
    failed: f64,
    dropped: f64,
    durations: f64,
}

fn hooks(d: &Daemon) -> Hooks {
    let t = d.metrics_text();
    Hooks {
        crossings: metric(&t, "meterd_quota_threshold_crossings_total", ""),
        depth: metric(&t, "meterd_webhook_outbox_depth", ""),
        delivered: metric(&t, "meterd_webhook_attempts_total", "outcome=\"delivered\""),
        failed: metric(&t, "meterd_webhook_attempts_total", "outcome=\"failed\""),
        dropped: metric(&t, "meterd_webhook_dropped_total", ""),
        durations: metric(&t, "meterd_webhook_delivery_duration_seconds_count", ""),
    }
}

/// Polls `f` until it returns `Some` or `timeout` passes.
#[track_caller]
fn wait_for<T>(
    what: &str,
    timeout: Duration,
    mut f: impl FnMut() -> Option<T>,
    diag: impl Fn() -> String,
) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        if Instant::now() > deadline {
            panic!("timed out waiting for {what}\n{}", diag());
        }
        std::thread::sleep(Duration::from_millis(25));
    }
}

fn diag(d: &Daemon, r: &Receiver) -> String {
    let log: Vec<String> = r
        .log()
        .iter()
        .map(|x| format!("  {} {} {}", x.status, x.id(), x.body))
        .collect();
    format!(
        "metrics: {:?}\nreceived:\n{}\ndaemon logs:\n{}",
        hooks(d),
        log.join("\n"),
        d.logs()
    )
}

/// Waits until the notifications `ids` (exactly these, no more) were answered 200 and the
/// daemon's outbox is empty.
#[track_caller]
fn wait_delivered(d: &Daemon, r: &Receiver, n: usize) -> BTreeSet<String> {
    let ids = wait_for(
        &format!("{n} delivered notifications and an empty outbox"),
        DEADLINE,
        || {
            let ids = r.delivered_ids();
            (ids.len() >= n && hooks(d).depth == 0.0).then_some(ids)
        },
        || diag(d, r),
    );
    assert_eq!(
        ids.len(),
        n,
        "more notifications than expected\n{}",
        diag(d, r)
    );
    ids
}

// ---------------------------------------------------------------------------------------
// Notification checks

/// One expected notification.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Note {
    contract: String,
    period: String,
    threshold: u64,
    usage: String,
    limit: String,
    mode: String,
    event_id: String,
}

fn note(
    contract: &str,
    period: &str,
    threshold: u64,
    usage: &str,
    limit: &str,
    mode: &str,
    event_id: &str,
) -> Note {
    Note {
        contract: contract.into(),
        period: period.into(),
        threshold,
        usage: usage.into(),
        limit: limit.into(),
        mode: mode.into(),
        event_id: event_id.into(),
    }
}

fn parse_time(v: &Value, field: &str) -> DateTime<Utc> {
    let s = v[field]
        .as_str()
        .unwrap_or_else(|| panic!("`{field}` is not a string: {v}"));
    DateTime::parse_from_rfc3339(s)
        .unwrap_or_else(|e| panic!("`{field}` is not RFC 3339 ({e}): {v}"))
        .with_timezone(&Utc)
}

/// Checks the shape of one notification body (as JSON) and returns it as a [`Note`].
#[track_caller]
fn check_body(b: &Value) -> Note {
    let id = b["id"].as_str().unwrap_or_else(|| panic!("no id: {b}"));
    let hex_part = id
        .strip_prefix("thr_")
        .unwrap_or_else(|| panic!("id {id:?} lacks thr_"));
    assert!(
        hex_part.len() == 32
            && hex_part
                .bytes()
                .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c)),
        "id {id:?} is not thr_<32 hex>"
    );
    assert_eq!(b["type"], "quota.threshold_crossed", "{b}");
    assert_eq!(b["lever"], LEVER, "{b}");
    let period = b["period"].as_str().unwrap_or_else(|| panic!("{b}"));
    let time = parse_time(b, "time");
    let age = Utc::now() - time;
    assert!(
        age >= chrono::Duration::seconds(-5) && age < chrono::Duration::minutes(10),
        "time {time} is not recent: {b}"
    );
    let obj = b.as_object().unwrap();
    if period == "lifetime" {
        assert!(
            !obj.contains_key("period_start") && !obj.contains_key("period_end"),
            "lifetime has no period bounds: {b}"
        );
    } else {
        let start = parse_time(b, "period_start");
        let end = parse_time(b, "period_end");
        // Every test contract is in UTC with the default anchor.
        match period {
            "day" => {
                assert_eq!(start.time().num_seconds_from_midnight(), 0, "{b}");
                assert_eq!(end - start, chrono::Duration::days(1), "{b}");
            }
            "month" => {
                assert_eq!(start.time().num_seconds_from_midnight(), 0, "{b}");
                assert_eq!(chrono::Datelike::day(&start), 1, "{b}");
                assert_eq!(Some(end), start.checked_add_months(Months::new(1)), "{b}");
            }
            other => panic!("unexpected period {other:?} in the tests: {b}"),
        }
        assert!(
            start <= time && time < end + chrono::Duration::seconds(5),
            "time outside the period: {b}"
        );
    }
    let s = |f: &str| -> String {
        b[f].as_str()
            .unwrap_or_else(|| panic!("`{f}` is not a string: {b}"))
            .to_string()
    };
    let mode = s("mode");
    assert!(mode == "hard" || mode == "soft", "{b}");
    Note {
        contract: s("contract"),
        period: period.to_string(),
        threshold: b["threshold"]
            .as_u64()
            .unwrap_or_else(|| panic!("threshold is not an integer number: {b}")),
        usage: s("usage"),
        limit: s("limit"),
        mode,
        event_id: s("event_id"),
    }
}

/// Checks every request the receiver got (method, path, headers, signature, body) and
/// that one id always carries the same body; returns the notifications by id.
#[track_caller]
fn check_requests(r: &Receiver) -> BTreeMap<String, Note> {
    let mut by_id: BTreeMap<String, (String, Note)> = BTreeMap::new();
    for x in r.log() {
        assert_ne!(x.status, 400, "malformed request: {x:?}");
        assert_eq!(x.method, "POST", "{x:?}");
        assert_eq!(x.path, "/hook", "{x:?}");
        assert!(
            x.header("content-type").starts_with("application/json"),
            "{x:?}"
        );
        check_signature(&x, SECRET);
        let b = x.json();
        assert_eq!(
            b["id"],
            x.id(),
            "meterd-webhook-id differs from the body id"
        );
        let n = check_body(&b);
        match by_id.get(x.id()) {
            Some((body, _)) => assert_eq!(
                body,
                &x.body,
                "one notification id {} was sent with two different bodies",
                x.id()
            ),
            None => {
                by_id.insert(x.id().to_string(), (x.body.clone(), n));
            }
        }
    }
    by_id.into_iter().map(|(k, (_, n))| (k, n)).collect()
}

/// [`check_requests`], and that distinct ids are distinct crossings.
#[track_caller]
fn check_all(r: &Receiver) -> BTreeMap<String, Note> {
    let notes = check_requests(r);
    let mut keys = BTreeSet::new();
    for n in notes.values() {
        assert!(
            keys.insert((n.contract.clone(), n.period.clone(), n.threshold)),
            "two ids for one crossing: {notes:#?}"
        );
    }
    notes
}

/// Asserts that the delivered notifications are exactly `expected`.
#[track_caller]
fn assert_notes(notes: &BTreeMap<String, Note>, mut expected: Vec<Note>) {
    let mut got: Vec<Note> = notes.values().cloned().collect();
    got.sort();
    expected.sort();
    assert_eq!(got, expected);
}

// ---------------------------------------------------------------------------------------
// Daemon set-up

fn tenant_table(name: &str, thresholds: &str, url: Option<&str>) -> String {
    let mut s = format!("[[tenants]]\nname = \"{name}\"\nthresholds = {thresholds}\n");
    if let Some(u) = url {
        s.push_str(&format!(
            "webhook_url = \"{u}\"\nwebhook_secret = \"{SECRET}\"\n"
        ));
    }
    s.push('\n');
    s
}

fn start(top: &str, thresholds: &str, r: &Receiver) -> Daemon {
    let d = Daemon::start_with(top, &tenant_table("default", thresholds, Some(&r.url())));
    d.lever(LEVER, "sum");
    d
}

#[track_caller]
fn put(d: &Daemon, key: &str, path: &str, body: Value) {
    let (s, b) = d.req("PUT", path, Some(key), Some(&body));
    assert!(s == 200 || s == 201, "PUT {path}: {s} {b}");
}

fn quota(period: &str, limit: impl Into<Value>, mode: &str) -> Value {
    json!({"lever": LEVER, "period": period, "limit": limit.into(), "mode": mode})
}

/// Creates a contract with extra fields (`quotas`, `thresholds`, `parent`, `plan`).
#[track_caller]
fn contract(d: &Daemon, id: &str, extra: Value) {
    let mut body = json!({"customer": "cus_hooks"});
    for (k, v) in extra.as_object().unwrap() {
        body[k] = v.clone();
    }
    put(d, ADMIN, &format!("/v1/contracts/{id}"), body);
}

fn ev(id: &str, contract: &str, value: impl Into<Value>) -> Value {
    json!({"id": id, "contract": contract, "lever": LEVER, "value": value.into()})
}

/// Posts events; asserts 200 and the (accepted, duplicates, rejected) counts.
#[track_caller]
fn post(d: &Daemon, body: Value, counts: (u64, u64, u64)) -> Value {
    let (s, v) = d.post_events(&body);
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        (
            v["accepted"].as_u64().unwrap_or(99),
            v["duplicates"].as_u64().unwrap_or(99),
            v["rejected"].as_u64().unwrap_or(99)
        ),
        counts,
        "{body} -> {v}"
    );
    v
}

// ---------------------------------------------------------------------------------------
// Tests

#[test]
fn retries_are_signed_and_keep_the_id_and_body() {
    // The verifier itself against a vector computed with Python's hmac module.
    assert_eq!(
        hmac_hex("whsec_0123456789abcdef", "1700000000", br#"{"id":"thr_1"}"#),
        "9043df63bebd952eb45670b7111846ccd2877b0a3e96c98b9dbcdb5c35e6d7cd"
    );
    let r = Receiver::start();
    r.script().fail_next = 3;
    let d = start(FAST, "[50, 80, 100]", &r);
    contract(
        &d,
        "ctr_sig",
        json!({"quotas": [quota("month", 10, "hard")]}),
    );
    for i in 1..=10 {
        post(&d, ev(&format!("ev-{i}"), "ctr_sig", 1), (1, 0, 0));
    }
    // Over the limit: rejected, and no crossing.
    let out = post(&d, ev("ev-11", "ctr_sig", 1), (0, 0, 1));
    assert_eq!(out["errors"][0]["code"], "quota_exceeded", "{out}");
    assert_eq!(hooks(&d).crossings, 3.0);

    let ids = wait_delivered(&d, &r, 3);
    let notes = check_all(&r);
    assert_eq!(notes.keys().cloned().collect::<BTreeSet<_>>(), ids);
    assert_notes(
        &notes,
        vec![
            note("ctr_sig", "month", 50, "5", "10", "hard", "ev-5"),
            note("ctr_sig", "month", 80, "8", "10", "hard", "ev-8"),
            note("ctr_sig", "month", 100, "10", "10", "hard", "ev-10"),
        ],
    );
    // Each failed attempt was retried later with the same id and body until delivered.
    let log = r.log();
    let failed: Vec<&Received> = log.iter().filter(|x| x.status == 500).collect();
    assert_eq!(failed.len(), 3, "{}", diag(&d, &r));
    for f in failed {
        assert!(
            log.iter()
                .any(|x| x.status == 200 && x.id() == f.id() && x.body == f.body && x.at > f.at),
            "failed attempt of {} never delivered again with the same body\n{}",
            f.id(),
            diag(&d, &r)
        );
    }
    let h = wait_for(
        "attempt metrics",
        DEADLINE,
        || {
            let h = hooks(&d);
            (h.delivered >= 3.0).then_some(h)
        },
        || diag(&d, &r),
    );
    assert!(h.failed >= 3.0, "{h:?}");
    assert_eq!(h.delivered + h.failed, log.len() as f64, "{h:?}");
    assert!(h.durations >= log.len() as f64, "{h:?}");
    assert_eq!(h.depth, 0.0, "{h:?}");
    assert_eq!(h.crossings, 3.0, "{h:?}");
    assert_eq!(h.dropped, 0.0, "{h:?}");
}

#[test]
fn pending_notifications_survive_kill9_and_sigterm() {
    let mut r = Receiver::start();
    r.stop();
    let mut d = start(FAST, "[50, 100]", &r);

    // Phase 1: 5 contracts x 2 thresholds while the receiver refuses connections.
    for c in 0..5 {
        let id = format!("k{c}");
        contract(&d, &id, json!({"quotas": [quota("month", 4, "hard")]}));
        post(&d, ev(&format!("k{c}-a"), &id, 2), (1, 0, 0));
        post(&d, ev(&format!("k{c}-b"), &id, 2), (1, 0, 0));
    }
    assert_eq!(hooks(&d).crossings, 10.0);
    // Every notification was attempted (and refused) at least once.
    wait_for(
        "failed attempts",
        DEADLINE,
        || (hooks(&d).failed >= 10.0).then_some(()),
        || diag(&d, &r),
    );
    assert_eq!(hooks(&d).depth, 10.0);
    d.kill9();
    d.restart();
    let h = hooks(&d);
    assert_eq!((h.depth, h.crossings), (10.0, 0.0), "{h:?}");
    r.restart();
    let phase1 = wait_delivered(&d, &r, 10);
    let mut expected = Vec::new();
    for c in 0..5 {
        let id = format!("k{c}");
        expected.push(note(&id, "month", 50, "2", "4", "hard", &format!("{id}-a")));
        expected.push(note(
            &id,
            "month",
            100,
            "4",
            "4",
            "hard",
            &format!("{id}-b"),
        ));
    }
    assert_notes(&check_all(&r), expected.clone());

    // Phase 2: notifications pending across a SIGTERM restart. The usage loaded after the
    // restart must not cross again what was crossed before it: with thresholds [10, 100]
    // the event after the restart would cross 10 % if the usage before it were lost.
    r.stop();
    for c in 0..5 {
        let id = format!("s{c}");
        contract(
            &d,
            &id,
            json!({"thresholds": [10, 100], "quotas": [quota("month", 10, "hard")]}),
        );
        post(&d, ev(&format!("s{c}-a"), &id, 6), (1, 0, 0));
    }
    assert_eq!(hooks(&d).crossings, 5.0);
    assert_eq!(hooks(&d).depth, 5.0);
    assert_eq!(d.terminate(), Some(0), "{}", d.logs());
    d.restart();
    assert_eq!(hooks(&d).depth, 5.0);
    for c in 0..5 {
        let id = format!("s{c}");
        post(&d, ev(&format!("s{c}-b"), &id, 1), (1, 0, 0));
    }
    assert_eq!(
        hooks(&d).crossings,
        0.0,
        "a threshold crossed before the restart was crossed again"
    );
    for c in 0..5 {
        let id = format!("s{c}");
        post(&d, ev(&format!("s{c}-c"), &id, 3), (1, 0, 0));
        post(&d, ev(&format!("s{c}-d"), &id, 1), (0, 0, 1));
    }
    let h = hooks(&d);
    assert_eq!((h.crossings, h.depth), (5.0, 10.0), "{h:?}");
    // Nothing was delivered while the receiver was down.
    assert_eq!(r.delivered_ids(), phase1);
    r.restart();
    let all = wait_delivered(&d, &r, 20);
    assert!(all.is_superset(&phase1));
    for c in 0..5 {
        let id = format!("s{c}");
        expected.push(note(
            &id,
            "month",
            10,
            "6",
            "10",
            "hard",
            &format!("{id}-a"),
        ));
        expected.push(note(
            &id,
            "month",
            100,
            "10",
            "10",
            "hard",
            &format!("{id}-c"),
        ));
    }
    assert_notes(&check_all(&r), expected);
}

#[test]
fn one_batch_crosses_thresholds_of_a_child_and_its_parent() {
    let r = Receiver::start();
    let d = start(FAST, "[50, 100]", &r);
    contract(&d, "pool", json!({"quotas": [quota("month", 20, "hard")]}));
    contract(
        &d,
        "kid",
        json!({"parent": "pool", "quotas": [quota("month", 10, "hard")]}),
    );
    // kid2 has no quota of its own: only the pool's thresholds apply to its events.
    contract(&d, "kid2", json!({"parent": "pool"}));
    contract(
        &d,
        "kid3",
        json!({"parent": "pool", "quotas": [quota("month", 4, "hard")]}),
    );
    let out = post(
        &d,
        json!([
            ev("a", "kid", 4),  // kid 4, pool 4
            ev("b", "kid", 2),  // kid 6 (50 %), pool 6
            ev("b", "kid", 2),  // duplicate within the request
            ev("c", "kid", 4),  // kid 10 (100 %), pool 10 (50 %)
            ev("x", "kid", 1),  // over kid's hard limit: rejected
            ev("e", "kid3", 1), // kid3 1, pool 11
            ev("g", "kid2", 8), // pool 19
            ev("w", "kid3", 2), // kid3 would reach 3 (50 %), but the pool rejects it
            ev("f", "kid2", 1), // pool 20 (100 %)
            ev("y", "kid2", 1), // over the pool's hard limit: rejected
        ]),
        (6, 1, 3),
    );
    let rejected: Vec<(&Value, &Value)> = out["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (&e["id"], &e["code"]))
        .collect();
    assert_eq!(
        rejected,
        [
            (&json!("x"), &json!("quota_exceeded")),
            (&json!("w"), &json!("quota_exceeded")),
            (&json!("y"), &json!("quota_exceeded"))
        ],
        "{out}"
    );
    assert_eq!(hooks(&d).crossings, 4.0);
    wait_delivered(&d, &r, 4);
    assert_notes(
        &check_all(&r),
        vec![
            note("kid", "month", 50, "6", "10", "hard", "b"),
            note("kid", "month", 100, "10", "10", "hard", "c"),
            note("pool", "month", 50, "10", "20", "hard", "c"),
            note("pool", "month", 100, "20", "20", "hard", "f"),
        ],
    );
    // A later posting changes nothing: every limit is reached.
    post(
        &d,
        json!([ev("z", "kid2", 1), ev("b", "kid", 1)]),
        (0, 1, 1),
    );
    assert_eq!(hooks(&d).crossings, 4.0);
}

#[test]
fn crossings_follow_the_usage_that_caused_them() {
    let r = Receiver::start();
    let d = start(FAST, "[50, 100]", &r);

    // Invalid thresholds are refused by the admin API.
    for bad in [
        json!([0]),
        json!([1001]),
        json!((1..=17).collect::<Vec<u32>>()),
    ] {
        let (s, b) = d.req(
            "PUT",
            "/v1/contracts/bad",
            Some(ADMIN),
            Some(&json!({"customer": "c", "thresholds": bad})),
        );
        assert_eq!(s, 400, "contract thresholds {bad}: {b}");
        assert!(b.to_string().contains("thresholds"), "{b}");
        let (s, b) = d.req(
            "PUT",
            "/v1/plans/bad",
            Some(ADMIN),
            Some(&json!({"quotas": [], "thresholds": bad})),
        );
        assert_eq!(s, 400, "plan thresholds {bad}: {b}");
        assert!(b.to_string().contains("thresholds"), "{b}");
    }

    // Contract thresholds override the tenant's [50, 100].
    contract(
        &d,
        "ovr",
        json!({"thresholds": [90], "quotas": [quota("month", 10, "hard")]}),
    );
    post(&d, ev("o1", "ovr", 5), (1, 0, 0));
    post(&d, ev("o2", "ovr", 4), (1, 0, 0));
    post(&d, ev("o3", "ovr", 1), (1, 0, 0));

    // Rejected events and duplicates cause no crossing.
    contract(&d, "rej", json!({"quotas": [quota("month", 10, "hard")]}));
    post(&d, ev("r1", "rej", 11), (0, 0, 1));
    post(&d, ev("r2", "rej", 4), (1, 0, 0));
    post(&d, ev("r2", "rej", 4), (0, 1, 0));
    post(&d, ev("r2", "rej", 9), (0, 1, 0));
    assert_eq!(hooks(&d).crossings, 1.0, "a duplicate crossed a threshold");
    post(&d, ev("r3", "rej", 1), (1, 0, 0));
    post(&d, ev("r4", "rej", 7), (0, 0, 1));
    post(
        &d,
        json!([ev("r5", "rej", 5), ev("r5", "rej", 5)]),
        (1, 1, 0),
    );
    post(&d, ev("r6", "rej", 1), (0, 0, 1));

    // Plan thresholds apply to contracts without their own.
    put(
        &d,
        ADMIN,
        "/v1/plans/quarter",
        json!({"quotas": [quota("month", 8, "hard")], "thresholds": [25]}),
    );
    contract(&d, "pl", json!({"plan": "quarter"}));
    post(&d, ev("p1", "pl", 2), (1, 0, 0));
    post(&d, ev("p2", "pl", 6), (1, 0, 0));

    // Soft limits: one event crosses two thresholds; usage beyond crosses nothing more;
    // thresholds above 100 %.
    contract(&d, "soft", json!({"quotas": [quota("month", 4, "soft")]}));
    post(&d, ev("s1", "soft", 5), (1, 0, 0));
    post(&d, ev("s2", "soft", 3), (1, 0, 0));
    contract(
        &d,
        "over",
        json!({"thresholds": [150], "quotas": [quota("month", 2, "soft")]}),
    );
    post(&d, ev("v1", "over", 2), (1, 0, 0));
    post(&d, ev("v2", "over", 1), (1, 0, 0));

    // Each period kind crosses on its own; lifetime has no period bounds.
    contract(
        &d,
        "two",
        json!({"thresholds": [50], "quotas": [quota("day", 4, "hard"), quota("month", 8, "hard")]}),
    );
    post(&d, ev("t1", "two", 4), (1, 0, 0));
    contract(
        &d,
        "life",
        json!({"thresholds": [100], "quotas": [quota("lifetime", 2, "hard")]}),
    );
    post(&d, ev("l1", "life", 1), (1, 0, 0));
    post(&d, ev("l2", "life", 1), (1, 0, 0));

    // Decimal usage and limits.
    contract(
        &d,
        "frac",
        json!({"quotas": [quota("month", "2.5", "hard")]}),
    );
    post(&d, ev("f1", "frac", "1.25"), (1, 0, 0));

    // No finite limit, no crossing.
    contract(&d, "unl", json!({"quotas": [quota("month", -1, "hard")]}));
    contract(&d, "free", json!({}));
    post(
        &d,
        json!([ev("u1", "unl", 1000), ev("u2", "free", 1000)]),
        (2, 0, 0),
    );

    let expected = vec![
        note("ovr", "month", 90, "9", "10", "hard", "o2"),
        note("rej", "month", 50, "5", "10", "hard", "r3"),
        note("rej", "month", 100, "10", "10", "hard", "r5"),
        note("pl", "month", 25, "2", "8", "hard", "p1"),
        note("soft", "month", 50, "5", "4", "soft", "s1"),
        note("soft", "month", 100, "5", "4", "soft", "s1"),
        note("over", "month", 150, "3", "2", "soft", "v2"),
        note("two", "day", 50, "4", "4", "hard", "t1"),
        note("two", "month", 50, "4", "8", "hard", "t1"),
        note("life", "lifetime", 100, "2", "2", "hard", "l2"),
        note("frac", "month", 50, "1.25", "2.5", "hard", "f1"),
    ];
    assert_eq!(hooks(&d).crossings, expected.len() as f64);
    wait_delivered(&d, &r, expected.len());
    assert_notes(&check_all(&r), expected);
}

#[test]
fn a_tenant_without_webhook_records_no_crossings() {
    let r = Receiver::start();
    let extra = format!(
        "{}{}",
        tenant_table("default", "[50, 100]", Some(&r.url())),
        tenant_table("other", "[50, 100]", None)
    );
    let d = Daemon::start_with(FAST, &extra);
    put(
        &d,
        OTHER_ADMIN,
        &format!("/v1/levers/{LEVER}"),
        json!({"aggregation": "sum", "unit": "u"}),
    );
    for (id, th) in [("oc", json!([])), ("oc2", json!([10]))] {
        put(
            &d,
            OTHER_ADMIN,
            &format!("/v1/contracts/{id}"),
            json!({"customer": "c", "thresholds": th, "quotas": [quota("month", 2, "hard")]}),
        );
        let (s, v) = d.req(
            "POST",
            "/v1/events",
            Some(OTHER_INGEST),
            Some(&json!([
                ev(&format!("{id}-1"), id, 1),
                ev(&format!("{id}-2"), id, 1)
            ])),
        );
        assert_eq!((s, v["accepted"].as_u64()), (200, Some(2)), "{v}");
    }
    assert_eq!(hooks(&d).crossings, 0.0);
    assert_eq!(hooks(&d).depth, 0.0);

    // The tenant with a webhook in the same daemon does notify.
    d.lever(LEVER, "sum");
    contract(&d, "dc", json!({"quotas": [quota("month", 2, "hard")]}));
    post(&d, ev("dc-1", "dc", 2), (1, 0, 0));
    assert_eq!(hooks(&d).crossings, 2.0);
    wait_delivered(&d, &r, 2);
    assert_notes(
        &check_all(&r),
        vec![
            note("dc", "month", 50, "2", "2", "hard", "dc-1"),
            note("dc", "month", 100, "2", "2", "hard", "dc-1"),
        ],
    );
}

#[test]
fn a_hanging_receiver_is_timed_out_and_retried() {
    let r = Receiver::start();
    {
        let mut s = r.script();
        s.hang_next = 1;
        s.hang = Duration::from_secs(3);
    }
    let top = "webhook_retry_initial = \"50ms\"\nwebhook_retry_max = \"200ms\"\nwebhook_timeout = \"300ms\"\n";
    let d = start(top, "[100]", &r);
    contract(&d, "hang", json!({"quotas": [quota("month", 1, "hard")]}));
    post(&d, ev("h1", "hang", 1), (1, 0, 0));
    wait_delivered(&d, &r, 1);
    let log = r.log();
    assert!(log.len() >= 2, "{}", diag(&d, &r));
    assert_eq!(log[0].status, 0);
    let ok = log.iter().find(|x| x.status == 200).unwrap();
    assert_eq!(ok.id(), log[0].id());
    assert_eq!(ok.body, log[0].body);
    assert!(
        ok.at - log[0].at < Duration::from_millis(2000),
        "the daemon waited {:?} for a hanging receiver with webhook_timeout 300ms",
        ok.at - log[0].at
    );
    let h = hooks(&d);
    assert!(h.failed >= 1.0 && h.delivered >= 1.0, "{h:?}");
    assert_notes(
        &check_all(&r),
        vec![note("hang", "month", 100, "1", "1", "hard", "h1")],
    );
}

#[test]
fn undeliverable_notifications_are_dropped_after_max_age() {
    let mut r = Receiver::start();
    r.stop();
    let top = format!("{FAST}webhook_max_age = \"1s\"\n");
    let mut d = start(&top, "[100]", &r);
    contract(&d, "old", json!({"quotas": [quota("month", 1, "hard")]}));
    post(&d, ev("o1", "old", 1), (1, 0, 0));
    assert_eq!(hooks(&d).depth, 1.0);
    let h = wait_for(
        "the notification to be dropped",
        DEADLINE,
        || {
            let h = hooks(&d);
            (h.dropped >= 1.0).then_some(h)
        },
        || diag(&d, &r),
    );
    assert_eq!((h.dropped, h.depth), (1.0, 0.0), "{h:?}");
    assert!(h.failed >= 2.0, "{h:?}");
    // The drop is durable: a restarted daemon does not load it again.
    d.kill9();
    d.restart();
    assert_eq!(hooks(&d).depth, 0.0);
    r.restart();
    std::thread::sleep(Duration::from_millis(800));
    assert!(r.log().is_empty(), "{}", diag(&d, &r));
}

#[test]
fn concurrent_events_cross_each_threshold_exactly_once() {
    let r = Receiver::start();
    let d = start(FAST, "[50, 100]", &r);
    contract(
        &d,
        "hub",
        json!({"thresholds": [25, 50, 75, 100], "quotas": [quota("month", 120, "hard")]}),
    );
    const CHILDREN: usize = 4;
    for c in 0..CHILDREN {
        contract(
            &d,
            &format!("leaf{c}"),
            json!({"parent": "hub", "quotas": [quota("month", 40, "hard")]}),
        );
    }
    // Each child posts value-1 events one at a time, concurrently with the others; the
    // hub's limit (120) is reached before every child reaches its own (4 x 40).
    let accepted: Vec<Vec<String>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..CHILDREN)
            .map(|c| {
                let d = &d;
                s.spawn(move || {
                    let mut ok = Vec::new();
                    for n in 0..45 {
                        let id = format!("leaf{c}-{n}");
                        let (st, v) = d.post_events(&ev(&id, &format!("leaf{c}"), 1));
                        assert_eq!(st, 200, "{v}");
                        if v["accepted"] == 1 {
                            ok.push(id);
                        } else {
                            assert_eq!(v["errors"][0]["code"], "quota_exceeded", "{v}");
                        }
                    }
                    ok
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(accepted.iter().map(Vec::len).sum::<usize>(), 120);
    let all_accepted: BTreeSet<&String> = accepted.iter().flatten().collect();
    let mut expected = Vec::new();
    for (c, ok) in accepted.iter().enumerate() {
        // A child's events are sequential: its k-th accepted event brought it to k.
        for (t, level) in [(50, 20), (100, 40)] {
            if ok.len() >= level {
                let id = format!("leaf{c}");
                let usage = level.to_string();
                expected.push(note(&id, "month", t, &usage, "40", "hard", &ok[level - 1]));
            }
        }
    }
    let n = expected.len() + 4;
    assert_eq!(hooks(&d).crossings, n as f64);
    wait_delivered(&d, &r, n);
    let notes = check_all(&r);
    let (hub, leaves): (Vec<&Note>, Vec<&Note>) = notes.values().partition(|n| n.contract == "hub");
    let mut leaves: Vec<Note> = leaves.into_iter().cloned().collect();
    leaves.sort();
    expected.sort();
    assert_eq!(leaves, expected);
    // The hub's crossings happened at exactly 30, 60, 90 and 120, each by an accepted
    // event, and by four different events.
    let mut hub: Vec<&Note> = hub;
    hub.sort_by_key(|n| n.threshold);
    let got: Vec<(u64, &str, &str)> = hub
        .iter()
        .map(|n| (n.threshold, n.usage.as_str(), n.limit.as_str()))
        .collect();
    assert_eq!(
        got,
        [
            (25, "30", "120"),
            (50, "60", "120"),
            (75, "90", "120"),
            (100, "120", "120")
        ]
    );
    let events: BTreeSet<&String> = hub.iter().map(|n| &n.event_id).collect();
    assert_eq!(events.len(), 4, "{hub:?}");
    assert!(events.iter().all(|e| all_accepted.contains(e)), "{hub:?}");
}

#[test]
fn sigterm_does_not_wait_for_a_hanging_receiver() {
    let r = Receiver::start();
    {
        let mut s = r.script();
        s.hang_next = 1;
        s.hang = Duration::from_secs(20);
    }
    let top = "webhook_retry_initial = \"50ms\"\nwebhook_retry_max = \"400ms\"\nwebhook_timeout = \"30s\"\n";
    let mut d = start(top, "[100]", &r);
    contract(&d, "slow", json!({"quotas": [quota("month", 1, "hard")]}));
    post(&d, ev("w1", "slow", 1), (1, 0, 0));
    wait_for(
        "the first attempt",
        DEADLINE,
        || (!r.log().is_empty()).then_some(()),
        || diag(&d, &r),
    );
    let t = Instant::now();
    assert_eq!(d.terminate(), Some(0), "{}", d.logs());
    assert!(
        t.elapsed() < Duration::from_secs(10),
        "SIGTERM took {:?} with a delivery in flight",
        t.elapsed()
    );
    d.restart();
    wait_delivered(&d, &r, 1);
    assert_notes(
        &check_all(&r),
        vec![note("slow", "month", 100, "1", "1", "hard", "w1")],
    );
}

#[test]
fn thresholds_of_tiny_limits_are_not_rounded_down() {
    // The level of a threshold is limit * threshold / 100 exactly: usage (a multiple of
    // 1e-9) reaches it when it is at or above it, so a level that is not a multiple of
    // 1e-9 is reached at the next multiple, never at the one below.
    let r = Receiver::start();
    let d = start(FAST, "[50, 100]", &r);
    // 50 % of 3e-9 is 1.5e-9: 1e-9 (33 %) is below it, 2e-9 (67 %) above.
    contract(
        &d,
        "nano3",
        json!({"thresholds": [50], "quotas": [quota("month", "0.000000003", "hard")]}),
    );
    post(&d, ev("n3-1", "nano3", "0.000000001"), (1, 0, 0));
    post(&d, ev("n3-2", "nano3", "0.000000001"), (1, 0, 0));
    // 50 % of 1e-9 is 0.5e-9: the first event moves usage from 0 to 100 %, crossing both.
    contract(
        &d,
        "nano1",
        json!({"quotas": [quota("month", "0.000000001", "hard")]}),
    );
    post(&d, ev("n1-1", "nano1", "0.000000001"), (1, 0, 0));
    wait_for(
        "an empty outbox",
        DEADLINE,
        || (hooks(&d).depth == 0.0).then_some(()),
        || diag(&d, &r),
    );
    assert_notes(
        &check_all(&r),
        vec![
            note(
                "nano3",
                "month",
                50,
                "0.000000002",
                "0.000000003",
                "hard",
                "n3-2",
            ),
            note(
                "nano1",
                "month",
                50,
                "0.000000001",
                "0.000000001",
                "hard",
                "n1-1",
            ),
            note(
                "nano1",
                "month",
                100,
                "0.000000001",
                "0.000000001",
                "hard",
                "n1-1",
            ),
        ],
    );
}

/// Waits until the outbox is empty and every crossing was answered 200.
#[track_caller]
fn wait_quiet(d: &Daemon, r: &Receiver) {
    wait_for(
        "an empty outbox",
        DEADLINE,
        || {
            let h = hooks(d);
            (h.depth == 0.0 && h.delivered >= h.crossings).then_some(())
        },
        || diag(d, r),
    );
}

#[test]
fn a_latest_lever_crossing_again_never_reuses_an_id() {
    // A `latest` lever's usage can fall below a threshold and cross it again in the same
    // period. Receivers deduplicate by id, so one id must never name two different
    // notifications.
    let r = Receiver::start();
    let d = Daemon::start_with(FAST, &tenant_table("default", "[50]", Some(&r.url())));
    d.lever(LEVER, "latest");
    contract(&d, "gauge", json!({"quotas": [quota("month", 10, "soft")]}));
    for (i, (v, t)) in [(6, -3000), (2, -2000), (7, -1000)].into_iter().enumerate() {
        let mut e = ev(&format!("g{i}"), "gauge", v);
        e["time"] = json!(time_at(t));
        post(&d, e, (1, 0, 0));
    }
    let u = d.req("GET", "/v1/contracts/gauge/balance", Some(READ), None);
    assert_eq!(u.1["levers"][0]["usage"], "7", "{u:?}");
    wait_quiet(&d, &r);
    let notes = check_requests(&r);
    assert!(
        notes.values().any(|n| n.usage == "6" && n.event_id == "g0"),
        "the first crossing was not delivered: {notes:#?}"
    );
}

#[test]
fn raising_a_limit_never_reuses_an_id() {
    // After a limit is raised, usage crosses the threshold of the new limit: the first
    // notification's id must not be used again for a notification with other contents.
    let r = Receiver::start();
    let d = start(FAST, "[50]", &r);
    contract(&d, "grow", json!({"quotas": [quota("month", 10, "hard")]}));
    post(&d, ev("q1", "grow", 6), (1, 0, 0));
    wait_quiet(&d, &r);
    contract(&d, "grow", json!({"quotas": [quota("month", 20, "hard")]}));
    post(&d, ev("q2", "grow", 5), (1, 0, 0));
    wait_quiet(&d, &r);
    let notes = check_requests(&r);
    assert!(
        notes.values().any(
            |n| (n.usage.as_str(), n.limit.as_str(), n.event_id.as_str()) == ("6", "10", "q1")
        ),
        "the first crossing was not delivered: {notes:#?}"
    );
}

// ---------------------------------------------------------------------------------------
// Configuration

fn check_config(path: &Path) -> (Option<i32>, String) {
    let o = Command::new(env!("CARGO_BIN_EXE_meterd"))
        .args(["check-config", "--config"])
        .arg(path)
        .env_remove("METERD_CONFIG")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .output()
        .expect("run meterd");
    (
        o.status.code(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

#[test]
fn check_config_refuses_bad_webhook_settings() {
    let dir = tempfile::tempdir().unwrap();
    let url = "http://127.0.0.1:9/hook";
    let t = |body: &str| format!("[[tenants]]\nname = \"default\"\n{body}");
    let good = [
        t(&format!(
            "thresholds = [1, 80, 100, 1000]\nwebhook_url = \"{url}\"\nwebhook_secret = \"0123456789abcdef\"\n"
        )),
        t("thresholds = [50]\n"),
        format!(
            "webhook_timeout = \"1s\"\nwebhook_retry_initial = \"10ms\"\nwebhook_retry_max = \"10ms\"\nwebhook_max_age = \"1h\"\n{}",
            t(&format!(
                "webhook_url = \"https://example.com/x\"\nwebhook_secret = \"{SECRET}\"\n"
            ))
        ),
    ];
    for (i, text) in good.iter().enumerate() {
        let path = dir.path().join(format!("good{i}.toml"));
        std::fs::write(&path, text).unwrap();
        let (code, err) = check_config(&path);
        assert_eq!(code, Some(0), "{text}\n{err}");
    }
    let bad = [
        (
            t(&format!("webhook_url = \"{url}\"\n")),
            "tenants[0].webhook_secret",
        ),
        (
            t(&format!("webhook_secret = \"{SECRET}\"\n")),
            "tenants[0].webhook_url",
        ),
        (
            t(&format!(
                "webhook_url = \"{url}\"\nwebhook_secret = \"0123456789abcde\"\n"
            )),
            "tenants[0].webhook_secret",
        ),
        (
            t(&format!(
                "webhook_url = \"ftp://127.0.0.1/hook\"\nwebhook_secret = \"{SECRET}\"\n"
            )),
            "tenants[0].webhook_url",
        ),
        (
            t(&format!(
                "webhook_url = \"/hook\"\nwebhook_secret = \"{SECRET}\"\n"
            )),
            "tenants[0].webhook_url",
        ),
        (t("thresholds = [0]\n"), "tenants[0].thresholds"),
        (t("thresholds = [50, 1001]\n"), "tenants[0].thresholds"),
        (
            t(&format!(
                "thresholds = {:?}\n",
                (1..=17).collect::<Vec<u32>>()
            )),
            "tenants[0].thresholds",
        ),
        ("webhook_timeout = \"0s\"\n".to_string(), "webhook_timeout"),
        (
            "webhook_retry_initial = \"soon\"\n".to_string(),
            "webhook_retry_initial",
        ),
        (
            "webhook_retry_initial = \"2s\"\nwebhook_retry_max = \"1s\"\n".to_string(),
            "webhook_retry_max",
        ),
        ("webhook_max_age = \"0s\"\n".to_string(), "webhook_max_age"),
    ];
    for (i, (text, key)) in bad.iter().enumerate() {
        let path = dir.path().join(format!("bad{i}.toml"));
        std::fs::write(&path, text).unwrap();
        let (code, err) = check_config(&path);
        assert_eq!(code, Some(64), "{text}\n{err}");
        assert!(
            err.contains(key),
            "{text}\nstderr does not name `{key}`: {err}"
        );
        assert!(
            err.contains(&format!("bad{i}.toml")),
            "{text}\nstderr does not name the file: {err}"
        );
        assert!(
            !err.contains(SECRET),
            "the webhook secret appears in the error: {err}"
        );
    }
}
