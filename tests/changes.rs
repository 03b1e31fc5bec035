//! Billing sync (SPEC 4.1, 4.2, 4.3; docs/billing.md): the changes feed
//! `GET /v1/changes` and the tenant-wide usage export `GET /v1/usage`.
//!
//! Promises guarded:
//! - a consumer that stores `next_after` and *sets* each row to the value it received
//!   converges exactly to the stored window rows (minute, hour, day, per bucket), while
//!   four writers ingest (with duplicates), an admin adjusts (also two days back) and
//!   retracts, and the daemon is restarted with SIGTERM and with `kill -9` under load;
//!   the revisions it sees are strictly increasing across pages and restarts;
//! - revisions are persisted: after a SIGTERM or `kill -9` restart (also with usage still
//!   unflushed at the kill) every changed row gets a revision above every earlier one;
//! - one feed read lists a row once, at its latest revision, with its full value, however
//!   many flushes, adjustments and retractions changed it, whatever the page size, and
//!   `window=` keeps exactly that granularity;
//! - `/v1/usage` pages by contract in byte order of the ids: while ingest runs and new
//!   contracts are created, no contract is on two pages and every contract that existed
//!   when paging started is on exactly one (JSON, NDJSON and CSV pages alike);
//! - CSV and NDJSON exports carry exactly the JSON rows (ids and buckets with commas,
//!   quotes and non-ASCII characters included), `meterd-next-cursor` pages them with
//!   `limit`, and without `limit` one stream covers every contract;
//! - parameters are validated (`400 invalid_query`) and roles enforced (`403`).
//!
//! The concurrent test is seeded; rerun a failure with `METERD_SEED=<seed>`.

mod common;

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::thread;
use std::time::{Duration, Instant};

use chrono::{DateTime, SecondsFormat, Utc};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use reqwest::blocking::Client;
use reqwest::Method;
use serde_json::{json, Value};

use common::{Daemon, ADMIN, INGEST, OTHER_ADMIN, OTHER_INGEST, OTHER_READ, READ};

const MINUTE: i64 = 60_000;
const HOUR: i64 = 3_600_000;
const DAY: i64 = 86_400_000;
const WINDOWS: [&str; 3] = ["minute", "hour", "day"];

/// `(contract, lever, bucket, window, start)` of a stored window row.
type RowKey = (String, String, Option<String>, String, String);
/// `(end, value)` of a stored window row.
type RowVal = (String, String);
type Rows = BTreeMap<RowKey, RowVal>;

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

fn seed() -> u64 {
    let seed = std::env::var("METERD_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    println!("seed = {seed} (rerun with METERD_SEED={seed})");
    seed
}

/// Starts a daemon with `flush_interval = "100ms"` and extra top-level settings.
fn start(top: &str) -> Daemon {
    let dir = Arc::new(tempfile::tempdir().expect("tempdir"));
    let config = dir.path().join("meterd.toml");
    let text = common::config_text(top, "");
    let fast = text.replace("flush_interval = \"200ms\"", "flush_interval = \"100ms\"");
    assert_ne!(
        text, fast,
        "the harness config no longer sets flush_interval"
    );
    std::fs::write(&config, fast).unwrap();
    Daemon::spawn(dir, config)
}

fn client() -> Client {
    Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap()
}

fn now_ms() -> i64 {
    Utc::now().timestamp_millis()
}

fn datetime(ms: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(ms).expect("time in range")
}

/// The server's time format: RFC 3339 UTC, fractional seconds only when non-zero.
fn rfc3339(ms: i64) -> String {
    datetime(ms).to_rfc3339_opts(SecondsFormat::AutoSi, true)
}

/// A query parameter or body time (always with milliseconds).
fn param_time(ms: i64) -> String {
    datetime(ms).to_rfc3339_opts(SecondsFormat::Millis, true)
}

fn parse_time(s: &str) -> i64 {
    DateTime::parse_from_rfc3339(s)
        .unwrap_or_else(|e| panic!("{s:?} is not RFC 3339: {e}"))
        .timestamp_millis()
}

fn floor(t: i64, len: i64) -> i64 {
    t.div_euclid(len) * len
}

fn window_len(w: &str) -> i64 {
    match w {
        "minute" => MINUTE,
        "hour" => HOUR,
        "day" => DAY,
        other => panic!("unknown window {other:?}"),
    }
}

/// Percent-encodes a path segment or query value.
fn enc(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
}

fn put_contract(d: &Daemon, id: &str) {
    let (s, b) = d.req(
        "PUT",
        &format!("/v1/contracts/{}", enc(id)),
        Some(ADMIN),
        Some(&json!({"customer": "cus_1"})),
    );
    assert_eq!(s, 201, "PUT contract {id:?}: {b}");
}

/// Posts events that must all be accepted (no duplicates, no rejections).
fn post_accepted(d: &Daemon, events: &Value) {
    let n = events.as_array().map_or(1, Vec::len);
    let (s, b) = d.post_events(events);
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["accepted"], json!(n), "{b}");
}

fn adjust(d: &Daemon, contract: &str, body: &Value) -> Value {
    let (s, b) = d.req(
        "POST",
        &format!("/v1/contracts/{}/adjustments", enc(contract)),
        Some(ADMIN),
        Some(body),
    );
    assert_eq!(s, 201, "adjustment {body}: {b}");
    b
}

/// Decodes and checks one feed item: every field present and well formed, `end` is
/// `start` plus the window length and `start` is aligned to it.
fn feed_item(it: &Value) -> (u64, RowKey, RowVal) {
    let s = |f: &str| -> String {
        it[f]
            .as_str()
            .unwrap_or_else(|| panic!("feed item without string `{f}`: {it}"))
            .to_string()
    };
    let rev = it["revision"]
        .as_u64()
        .unwrap_or_else(|| panic!("feed item without revision: {it}"));
    let bucket = match it.get("bucket") {
        None => None,
        Some(Value::String(b)) => Some(b.clone()),
        Some(other) => panic!("bucket is not a string: {other} in {it}"),
    };
    let window = s("window");
    let len = window_len(&window);
    let (start, end) = (s("start"), s("end"));
    let (st, en) = (parse_time(&start), parse_time(&end));
    assert_eq!(en - st, len, "end - start is not one {window}: {it}");
    assert_eq!(
        st,
        floor(st, len),
        "start not aligned to the {window}: {it}"
    );
    let value = s("value");
    assert!(
        value.parse::<f64>().is_ok(),
        "value {value:?} is not a decimal string: {it}"
    );
    (
        rev,
        (s("contract"), s("lever"), bucket, window, start),
        (end, value),
    )
}

/// One page of the feed: `(items, next_after)`.
fn feed_page(d: &Daemon, query: &str) -> (Vec<Value>, u64) {
    let (s, v) = d.req("GET", &format!("/v1/changes?{query}"), Some(READ), None);
    assert_eq!(s, 200, "GET /v1/changes?{query}: {v}");
    let items = v["items"]
        .as_array()
        .unwrap_or_else(|| panic!("no items array: {v}"))
        .clone();
    let next = v["next_after"]
        .as_u64()
        .unwrap_or_else(|| panic!("no next_after: {v}"));
    (items, next)
}

/// Reads the feed from `after` until an empty page, checking that revisions strictly
/// increase across all pages and that `next_after` never moves back. Returns every item
/// in order and the last `next_after`.
fn feed_all(d: &Daemon, after: u64, limit: usize, window: Option<&str>) -> (Vec<Value>, u64) {
    let mut after = after;
    let mut all = Vec::new();
    let mut last = after;
    loop {
        let w = window.map(|w| format!("&window={w}")).unwrap_or_default();
        let (items, next) = feed_page(d, &format!("after={after}&limit={limit}{w}"));
        assert!(items.len() <= limit, "page over limit {limit}: {items:?}");
        for it in &items {
            let (rev, _, _) = feed_item(it);
            assert!(
                rev > last,
                "revision {rev} after {last} (page after={after}): {it}"
            );
            last = rev;
        }
        assert!(next >= last, "next_after {next} below the page's revisions");
        if items.is_empty() && next == after {
            return (all, after);
        }
        all.extend(items);
        after = next;
    }
}

/// The whole feed in one page (one read, one snapshot), checking revision order.
fn feed_once(d: &Daemon) -> Vec<Value> {
    let (items, next) = feed_page(d, "after=0&limit=10000");
    assert!(items.len() < 10_000, "the test feed outgrew one page");
    let mut last = 0;
    for it in &items {
        let (rev, _, _) = feed_item(it);
        assert!(rev > last, "revision {rev} after {last}: {it}");
        last = rev;
    }
    assert!(next >= last);
    items
}

/// The rows of a feed read in which no row may appear twice: one page, or several
/// pages read while nothing changes.
fn rows_once(items: &[Value]) -> (Rows, BTreeMap<RowKey, u64>) {
    let mut rows = Rows::new();
    let mut revs = BTreeMap::new();
    for it in items {
        let (rev, k, v) = feed_item(it);
        assert!(
            revs.insert(k.clone(), rev).is_none(),
            "row {k:?} appears twice in one feed read: {items:?}"
        );
        rows.insert(k, v);
    }
    (rows, revs)
}

/// Polls the feed from `after` until it returns nothing new for `idle`; returns the last
/// `next_after`.
fn wait_quiet(d: &Daemon, mut after: u64, idle: Duration) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last_change = Instant::now();
    loop {
        let (items, next) = feed_all(d, after, 1000, None);
        if !items.is_empty() || next != after {
            after = next;
            last_change = Instant::now();
        } else if last_change.elapsed() >= idle {
            return after;
        }
        assert!(Instant::now() < deadline, "the feed never went quiet");
        thread::sleep(Duration::from_millis(50));
    }
}

/// Every stored minute, hour and day row of `contracts` with start in `[from, to)`, read
/// through the per-contract usage API grouped by bucket.
fn stored_rows(d: &Daemon, contracts: &[String], from: i64, to: i64) -> Rows {
    let mut rows = Rows::new();
    for c in contracts {
        for w in WINDOWS {
            let q = format!(
                "from={}&to={}&window={w}&group_by=bucket",
                enc(&param_time(from)),
                enc(&param_time(to))
            );
            let v = d.usage(&enc(c), &q);
            for it in v["items"].as_array().expect("items") {
                let key = (
                    c.clone(),
                    it["lever"].as_str().unwrap().to_string(),
                    it.get("bucket").map(|b| b.as_str().unwrap().to_string()),
                    w.to_string(),
                    it["start"].as_str().unwrap().to_string(),
                );
                let val = (
                    it["end"].as_str().unwrap().to_string(),
                    it["value"].as_str().unwrap().to_string(),
                );
                assert!(
                    rows.insert(key.clone(), val).is_none(),
                    "usage lists {key:?} twice"
                );
            }
        }
    }
    rows
}

/// Describes the differences of two row maps (at most 30 lines).
fn diff(got: &Rows, want: &Rows) -> String {
    let mut out = Vec::new();
    for (k, v) in want {
        match got.get(k) {
            None => out.push(format!("missing in feed: {k:?} = {v:?}")),
            Some(g) if g != v => out.push(format!("{k:?}: feed {g:?}, stored {v:?}")),
            _ => {}
        }
    }
    for (k, v) in got {
        if !want.contains_key(k) {
            out.push(format!("only in feed: {k:?} = {v:?}"));
        }
    }
    let n = out.len();
    out.truncate(30);
    format!("{n} differences:\n{}", out.join("\n"))
}

/// Asserts that a full feed read lists every stored row once, with its stored value.
fn assert_feed_is_store(d: &Daemon, contracts: &[String], from: i64, to: i64) -> u64 {
    let (items, next) = feed_all(d, 0, 10_000, None);
    let (rows, _) = rows_once(&items);
    let want = stored_rows(d, contracts, from, to);
    assert!(rows == want, "feed vs usage API: {}", diff(&rows, &want));
    next
}

// ---------------------------------------------------------------------------------------
// 1. A consumer converges under concurrent ingest, corrections and restarts
// ---------------------------------------------------------------------------------------

const C1_CONTRACTS: [&str; 4] = ["ctr-A", "ctr-b", "Ctr-c", "ctr-d9"];
const C1_LEVERS: [(&str, &str); 3] = [("calls", "sum"), ("hits", "count"), ("peak", "max")];
const C1_BUCKETS: [&str; 3] = ["eu", "us", "ap"];
const MARKER: &str = "marker";

/// State shared by the load threads.
struct Shared {
    /// Base URL of the running daemon; `None` while it restarts.
    base: RwLock<Option<String>>,
    /// Writers and the admin thread stop.
    stop: AtomicBool,
    /// Writers have stopped: the consumer drains the feed and returns.
    finish: AtomicBool,
    /// Accepted ids of `sum` / `count` events (retraction candidates).
    pool: Mutex<Vec<String>>,
}

impl Shared {
    fn base(&self) -> Option<String> {
        self.base.read().unwrap().clone()
    }
}

/// Sends a request until the daemon answers with something other than 429 / 503;
/// connection errors (restarts) are retried. Every write sent this way is idempotent.
fn send_retry(
    shared: &Shared,
    client: &Client,
    method: Method,
    path: &str,
    key: &str,
    body: Option<&Value>,
) -> (u16, Value) {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        assert!(
            Instant::now() < deadline,
            "{method} {path}: no answer within 90 s"
        );
        let Some(base) = shared.base() else {
            thread::sleep(Duration::from_millis(20));
            continue;
        };
        let mut rb = client
            .request(method.clone(), format!("{base}{path}"))
            .bearer_auth(key);
        if let Some(b) = body {
            rb = rb.json(b);
        }
        let Ok(r) = rb.send() else {
            thread::sleep(Duration::from_millis(20));
            continue;
        };
        let status = r.status().as_u16();
        let Ok(text) = r.text() else {
            thread::sleep(Duration::from_millis(20));
            continue;
        };
        if status == 503 || status == 429 {
            thread::sleep(Duration::from_millis(20));
            continue;
        }
        let v = serde_json::from_str(&text).unwrap_or(Value::String(text));
        return (status, v);
    }
}

fn random_value(rng: &mut StdRng) -> Value {
    match rng.random_range(0..4) {
        0 => json!(1),
        1 => json!("2.5"),
        2 => json!("0.001"),
        _ => json!(rng.random_range(1..100)),
    }
}

/// Posts batches of events (fresh ids, resent ids with the same or another body, ids
/// twice in one batch) until told to stop. Returns the number of fresh events.
fn writer(shared: Arc<Shared>, t: usize, seed: u64) -> usize {
    let client = client();
    let mut rng = StdRng::seed_from_u64(seed.wrapping_add(t as u64 * 7919));
    let mut sent: Vec<Value> = Vec::new();
    let mut n = 0usize;
    while !shared.stop.load(Ordering::SeqCst) {
        let mut batch = Vec::new();
        let mut fresh = Vec::new();
        for _ in 0..rng.random_range(1..=10) {
            if !sent.is_empty() && rng.random_bool(0.2) {
                let mut e = sent[rng.random_range(0..sent.len())].clone();
                if rng.random_bool(0.5) {
                    // A duplicate never changes anything, whatever its body.
                    e["value"] = json!("12345");
                    e["bucket"] = json!("changed");
                }
                batch.push(e);
                continue;
            }
            n += 1;
            let (lever, agg) = C1_LEVERS[rng.random_range(0..C1_LEVERS.len())];
            let mut e = json!({
                "id": format!("w{t}-{n}"),
                "contract": C1_CONTRACTS[rng.random_range(0..C1_CONTRACTS.len())],
                "lever": lever,
                "value": random_value(&mut rng),
            });
            if rng.random_bool(0.75) {
                e["bucket"] = json!(C1_BUCKETS[rng.random_range(0..C1_BUCKETS.len())]);
            }
            if rng.random_bool(0.6) {
                e["time"] = json!(param_time(now_ms() - rng.random_range(0..8 * MINUTE)));
            }
            fresh.push((e.clone(), agg));
            batch.push(e);
        }
        if rng.random_bool(0.1) {
            let again = batch[0].clone();
            batch.push(again);
        }
        let body = Value::Array(batch.clone());
        let (s, v) = send_retry(
            &shared,
            &client,
            Method::POST,
            "/v1/events",
            INGEST,
            Some(&body),
        );
        assert_eq!(s, 200, "POST /v1/events: {v}");
        assert_eq!(v["rejected"], json!(0), "{v}");
        let counted = v["accepted"].as_u64().unwrap() + v["duplicates"].as_u64().unwrap();
        assert_eq!(counted, batch.len() as u64, "{v}");
        let mut pool = shared.pool.lock().unwrap();
        for (e, agg) in fresh {
            if agg != "max" {
                pool.push(e["id"].as_str().unwrap().to_string());
            }
            sent.push(e);
        }
        drop(pool);
        thread::sleep(Duration::from_millis(rng.random_range(5..20)));
    }
    n
}

/// What the admin thread did.
#[derive(Debug, Default)]
struct AdminLog {
    adjustments: usize,
    retractions: usize,
    repeats: usize,
    /// Times of adjustments made two days back.
    old_times: Vec<i64>,
}

/// Posts adjustments (the first two days back) and retracts accepted events, and repeats
/// retractions (which must return the same audit entry), until told to stop.
fn admin(shared: Arc<Shared>, seed: u64) -> AdminLog {
    let client = client();
    let mut rng = StdRng::seed_from_u64(seed.wrapping_add(1_000_003));
    let mut log = AdminLog::default();
    let mut retracted: Vec<(String, u64)> = Vec::new();
    let mut k = 0usize;
    while !shared.stop.load(Ordering::SeqCst) {
        thread::sleep(Duration::from_millis(60));
        let choice = if k == 0 { 0 } else { rng.random_range(0..4) };
        match choice {
            0 | 1 => {
                k += 1;
                let contract = C1_CONTRACTS[rng.random_range(0..C1_CONTRACTS.len())];
                let sum = rng.random_bool(0.5);
                let magnitude = rng.random_range(1..50);
                let sign = if rng.random_bool(0.4) { "-" } else { "" };
                let value = if sum {
                    format!("{sign}{magnitude}.25")
                } else {
                    format!("{sign}{magnitude}")
                };
                let old = k == 1 || rng.random_bool(0.4);
                let time = if old {
                    now_ms() - 2 * DAY - rng.random_range(0..2 * HOUR)
                } else {
                    now_ms() - rng.random_range(0..20 * MINUTE)
                };
                let mut body = json!({
                    "id": format!("adj-{k}"),
                    "lever": if sum { "calls" } else { "hits" },
                    "time": param_time(time),
                    "value": value,
                    "reason": "test correction",
                });
                if rng.random_bool(0.5) {
                    body["bucket"] = json!(C1_BUCKETS[rng.random_range(0..C1_BUCKETS.len())]);
                }
                let path = format!("/v1/contracts/{contract}/adjustments");
                let (s, v) = send_retry(&shared, &client, Method::POST, &path, ADMIN, Some(&body));
                // 200: a retry after a response lost in a restart returns the stored entry.
                assert!(s == 201 || s == 200, "adjustment {body}: {s} {v}");
                assert!(v["revision"].as_u64().unwrap_or(0) > 0, "{v}");
                log.adjustments += 1;
                if old {
                    log.old_times.push(time);
                }
            }
            2 => {
                let id = {
                    let mut pool = shared.pool.lock().unwrap();
                    if pool.is_empty() {
                        continue;
                    }
                    let i = rng.random_range(0..pool.len());
                    pool.swap_remove(i)
                };
                let path = format!("/v1/events/{id}");
                let (s, v) = send_retry(&shared, &client, Method::DELETE, &path, ADMIN, None);
                assert_eq!(s, 200, "retraction of accepted event {id}: {v}");
                assert_eq!(v["kind"], json!("retraction"), "{v}");
                let rev = v["revision"].as_u64().unwrap_or(0);
                assert!(rev > 0, "{v}");
                retracted.push((id, rev));
                log.retractions += 1;
            }
            _ => {
                if retracted.is_empty() {
                    continue;
                }
                let (id, rev) = retracted[rng.random_range(0..retracted.len())].clone();
                let path = format!("/v1/events/{id}");
                let (s, v) = send_retry(&shared, &client, Method::DELETE, &path, ADMIN, None);
                assert_eq!(s, 200, "repeated retraction of {id}: {v}");
                assert_eq!(
                    v["revision"].as_u64(),
                    Some(rev),
                    "a repeated retraction must return the same entry: {v}"
                );
                log.repeats += 1;
            }
        }
    }
    log
}

/// What the consumer saw.
struct Consumed {
    rows: Rows,
    revisions: Vec<u64>,
    pages: usize,
    last_after: u64,
}

/// A billing job: polls the feed with small pages, sets rows to the values received,
/// stores `next_after`; tolerates restarts; returns once writers have stopped and the
/// feed has been quiet for a second.
fn consumer(shared: Arc<Shared>) -> Consumed {
    const LIMIT: usize = 7;
    let client = client();
    let mut rows = Rows::new();
    let mut revisions: Vec<u64> = Vec::new();
    let mut after = 0u64;
    let mut pages = 0usize;
    let mut last_new = Instant::now();
    let mut finish_seen: Option<Instant> = None;
    loop {
        if finish_seen.is_none() && shared.finish.load(Ordering::SeqCst) {
            finish_seen = Some(Instant::now());
        }
        let path = format!("/v1/changes?after={after}&limit={LIMIT}");
        let (s, v) = send_retry(&shared, &client, Method::GET, &path, READ, None);
        assert_eq!(s, 200, "GET {path}: {v}");
        let items = v["items"].as_array().expect("items").clone();
        let next = v["next_after"].as_u64().expect("next_after");
        assert!(items.len() <= LIMIT, "page over the limit: {v}");
        let mut prev = revisions.last().copied().unwrap_or(0).max(after);
        for it in &items {
            let (rev, key, val) = feed_item(it);
            assert!(
                rev > prev,
                "feed revisions not strictly increasing across pages: {rev} after {prev} \
                 (request after={after}): {v}"
            );
            prev = rev;
            revisions.push(rev);
            rows.insert(key, val);
        }
        assert!(
            next >= prev,
            "next_after {next} below revisions received ({prev}): {v}"
        );
        pages += 1;
        if items.is_empty() && next == after {
            let quiet = last_new.elapsed() >= Duration::from_secs(1);
            if let Some(f) = finish_seen {
                if quiet && f.elapsed() >= Duration::from_secs(1) {
                    return Consumed {
                        rows,
                        revisions,
                        pages,
                        last_after: after,
                    };
                }
            }
            thread::sleep(Duration::from_millis(30));
        } else {
            last_new = Instant::now();
        }
        after = next;
    }
}

/// Restarts the daemon under load (SIGTERM or `kill -9`). Returns the highest revision
/// read just before the stop and the revision of an adjustment made right after the
/// restart, which must be above it.
fn restart_under_load(d: &mut Daemon, shared: &Shared, kill: bool, marker: &str) -> (u64, u64) {
    let (_, before) = feed_all(d, 0, 10_000, None);
    *shared.base.write().unwrap() = None;
    if kill {
        d.kill9();
    } else {
        let code = d.terminate();
        assert_eq!(code, Some(0), "SIGTERM exit: {}", d.logs());
    }
    d.restart();
    *shared.base.write().unwrap() = Some(d.base.clone());
    let v = adjust(
        d,
        MARKER,
        &json!({"id": marker, "lever": "calls", "time": param_time(now_ms()),
                "value": "1", "reason": "restart marker"}),
    );
    let rev = v["revision"].as_u64().expect("revision");
    assert!(
        rev > before,
        "{}: the first revision after the restart ({rev}) is not above the last one \
         read before it ({before})",
        if kill { "kill -9" } else { "SIGTERM" }
    );
    (before, rev)
}

#[test]
fn feed_consumer_converges_under_concurrent_ingest_and_restarts() {
    let seed = seed();
    let mut d = start("lateness = \"1h\"");
    for (name, agg) in C1_LEVERS {
        d.lever(name, agg);
    }
    let mut contracts: Vec<String> = C1_CONTRACTS.iter().map(|c| c.to_string()).collect();
    contracts.push(MARKER.to_string());
    for c in &contracts {
        put_contract(&d, c);
    }
    let shared = Arc::new(Shared {
        base: RwLock::new(Some(d.base.clone())),
        stop: AtomicBool::new(false),
        finish: AtomicBool::new(false),
        pool: Mutex::new(Vec::new()),
    });
    let t0 = now_ms();
    let consumer_h = {
        let s = shared.clone();
        thread::spawn(move || consumer(s))
    };
    let writers: Vec<_> = (0..4)
        .map(|t| {
            let s = shared.clone();
            thread::spawn(move || writer(s, t, seed))
        })
        .collect();
    let admin_h = {
        let s = shared.clone();
        thread::spawn(move || admin(s, seed))
    };

    thread::sleep(Duration::from_millis(2000));
    let (before1, marker1) = restart_under_load(&mut d, &shared, false, "marker-1");
    thread::sleep(Duration::from_millis(2000));
    let (before2, marker2) = restart_under_load(&mut d, &shared, true, "marker-2");
    assert!(
        before2 >= marker1,
        "revisions went back: {before2} < {marker1}"
    );
    thread::sleep(Duration::from_millis(2000));

    shared.stop.store(true, Ordering::SeqCst);
    let events: usize = writers.into_iter().map(|h| h.join().unwrap()).sum();
    let mut log = admin_h.join().unwrap();
    // Last corrections, after all ingest: nothing else re-stamps the rows they change,
    // so the consumer only converges if each correction stamps all of its rows.
    let last: Vec<String> = {
        let mut pool = shared.pool.lock().unwrap();
        let n = pool.len();
        pool.split_off(n.saturating_sub(5))
    };
    assert!(!last.is_empty(), "no event to retract");
    for id in &last {
        let (s, v) = d.req("DELETE", &format!("/v1/events/{id}"), Some(ADMIN), None);
        assert_eq!(s, 200, "retraction of {id}: {v}");
        log.retractions += 1;
    }
    for (i, (contract, days_back)) in [("ctr-b", 2), ("Ctr-c", 0)].into_iter().enumerate() {
        let time = now_ms() - days_back * DAY - 90_000;
        adjust(
            &d,
            contract,
            &json!({"id": format!("final-{i}"), "lever": "hits", "time": param_time(time),
                    "value": "-2", "bucket": "us", "reason": "final correction"}),
        );
        if days_back > 0 {
            log.old_times.push(time);
        }
    }
    shared.finish.store(true, Ordering::SeqCst);
    let got = consumer_h.join().unwrap();
    println!(
        "{events} events, {log:?}, consumer: {} pages, {} items, {} rows, revisions \
         {before1}/{marker1} (SIGTERM), {before2}/{marker2} (kill -9), last {}",
        got.pages,
        got.revisions.len(),
        got.rows.len(),
        got.last_after
    );
    assert!(events > 100, "too little load: {events} events");
    assert!(log.adjustments > 0 && log.retractions > 0, "{log:?}");
    assert!(
        got.revisions.windows(2).all(|w| w[0] < w[1]),
        "revisions not strictly increasing"
    );
    assert!(
        got.revisions.iter().any(|&r| r > before2),
        "the consumer saw no revision issued after the kill -9 restart"
    );

    // The whole stored state, read through the usage API.
    let from = floor(t0 - 3 * DAY, DAY);
    let to = now_ms() + DAY;
    let want = stored_rows(&d, &contracts, from, to);
    assert!(
        got.rows == want,
        "consumer state != stored rows (seed {seed}): {}",
        diff(&got.rows, &want)
    );
    // The corrections two days back reached the feed.
    for t in &log.old_times {
        let day = rfc3339(floor(*t, DAY));
        assert!(
            got.rows
                .keys()
                .any(|(_, _, _, w, start)| w == "day" && *start == day),
            "no day row at {day} for an adjustment at {}",
            rfc3339(*t)
        );
    }
    // The consumer's position is the feed's end: nothing is left to read.
    let (rest, _) = feed_all(&d, got.last_after, 1000, None);
    assert!(
        rest.is_empty(),
        "items after the consumer's position: {rest:?}"
    );
}

// ---------------------------------------------------------------------------------------
// 2. Revisions persist across restarts
// ---------------------------------------------------------------------------------------

/// Waits until the feed's rows equal the stored rows of `contracts` and no flush is
/// pending (quiet for 400 ms); returns the feed's last revision.
fn settle(d: &Daemon, contracts: &[String], from: i64, to: i64) -> u64 {
    wait_quiet(d, 0, Duration::from_millis(400));
    assert_feed_is_store(d, contracts, from, to)
}

#[test]
fn revisions_persist_across_sigterm_and_kill9() {
    let mut d = start("");
    d.lever("calls", "sum");
    let contracts: Vec<String> = ["p-a", "p-b", "p-c", "p-d"]
        .iter()
        .map(|c| c.to_string())
        .collect();
    for c in &contracts {
        put_contract(&d, c);
    }
    let from = floor(now_ms() - 2 * DAY, DAY);
    let to = now_ms() + DAY;
    post_accepted(
        &d,
        &json!([{"id": "e1", "contract": "p-a", "lever": "calls", "value": 3, "bucket": "x"},
                {"id": "e2", "contract": "p-a", "lever": "calls", "value": 4}]),
    );
    let r1 = settle(&d, &contracts, from, to);
    assert!(r1 >= 6, "two series of minute/hour/day rows: {r1}");
    let (items_before, _) = feed_all(&d, 0, 10_000, None);

    // SIGTERM: the feed is unchanged and new revisions are above the old ones.
    assert_eq!(d.terminate(), Some(0), "{}", d.logs());
    d.restart();
    let (items_after, next) = feed_all(&d, 0, 10_000, None);
    assert_eq!(items_after, items_before, "the feed changed across SIGTERM");
    assert_eq!(next, r1);
    post_accepted(
        &d,
        &json!([{"id": "e3", "contract": "p-a", "lever": "calls", "value": 1, "bucket": "x"},
                {"id": "e4", "contract": "p-b", "lever": "calls", "value": 2}]),
    );
    let adj = adjust(
        &d,
        "p-c",
        &json!({"id": "a1", "lever": "calls", "time": param_time(now_ms() - DAY),
                "value": "-1.5", "reason": "credit"}),
    );
    assert!(adj["revision"].as_u64().unwrap() > r1, "{adj}");
    let r2 = settle(&d, &contracts, from, to);
    let (new_items, _) = feed_all(&d, r1, 10_000, None);
    let (new_rows, new_revs) = rows_once(&new_items);
    // Rows changed after the restart: p-a bucket x, p-b, p-c (minute, hour, day each).
    let changed: BTreeSet<(String, Option<String>, String)> = new_rows
        .keys()
        .map(|(c, _, b, w, _)| (c.clone(), b.clone(), w.clone()))
        .collect();
    let want: BTreeSet<(String, Option<String>, String)> =
        [("p-a", Some("x")), ("p-b", None), ("p-c", None)]
            .iter()
            .flat_map(|(c, b)| {
                WINDOWS
                    .iter()
                    .map(move |w| (c.to_string(), b.map(str::to_string), w.to_string()))
            })
            .collect();
    assert_eq!(changed, want, "rows changed after the SIGTERM restart");
    assert!(new_revs.values().all(|&r| r > r1));

    // kill -9 with usage acknowledged but (most likely) not flushed yet: the replayed
    // rows get revisions above every revision issued before.
    post_accepted(
        &d,
        &json!([{"id": "e5", "contract": "p-d", "lever": "calls", "value": 5, "bucket": "y"},
                {"id": "e6", "contract": "p-b", "lever": "calls", "value": 6, "bucket": "z"}]),
    );
    d.kill9();
    d.restart();
    let r3 = settle(&d, &contracts, from, to);
    assert!(
        r3 > r2,
        "no new revision for the replayed usage: {r3} <= {r2}"
    );
    let (items, _) = feed_all(&d, 0, 10_000, None);
    let (_, revs) = rows_once(&items);
    for ((c, _, b, w, s), rev) in &revs {
        let touched =
            (c == "p-d" && b.as_deref() == Some("y")) || (c == "p-b" && b.as_deref() == Some("z"));
        if touched {
            assert!(
                *rev > r2,
                "row {c} {b:?} {w} {s} changed after revision {r2} has revision {rev}"
            );
        }
    }

    // kill -9 after a flush: the high-water mark survives and keeps increasing.
    d.kill9();
    d.restart();
    let (_, next) = feed_all(&d, 0, 10_000, None);
    assert_eq!(next, r3, "the feed's last revision changed across kill -9");
    post_accepted(
        &d,
        &json!([{"id": "e7", "contract": "p-a", "lever": "calls", "value": 7}]),
    );
    let r4 = settle(&d, &contracts, from, to);
    let (items, _) = feed_all(&d, r3, 10_000, None);
    let (rows, revs) = rows_once(&items);
    assert_eq!(rows.len(), 3, "p-a minute/hour/day: {items:?}");
    assert!(revs.values().all(|&r| r > r3 && r <= r4));
    assert!(rows.keys().all(|(c, _, b, _, _)| c == "p-a" && b.is_none()));
}

// ---------------------------------------------------------------------------------------
// 3. One item per row, at its latest revision
// ---------------------------------------------------------------------------------------

#[test]
fn a_feed_read_lists_each_row_once_at_its_latest_revision() {
    let d = start("");
    d.lever("calls", "sum");
    d.lever("hits", "count");
    put_contract(&d, "r-1");
    let contracts = vec!["r-1".to_string()];
    // All events in one minute, two minutes ago (well within the lateness).
    let t = floor(now_ms() - 2 * MINUTE, MINUTE) + 30_000;
    let minute = rfc3339(floor(t, MINUTE));
    let key = |lever: &str, bucket: Option<&str>, w: &str, start: &str| -> RowKey {
        (
            "r-1".into(),
            lever.into(),
            bucket.map(str::to_string),
            w.into(),
            start.into(),
        )
    };
    let minute_x = key("calls", Some("x"), "minute", &minute);
    let mut total: i64 = 0;
    let mut last_rev = 0u64;
    for round in 1..=6i64 {
        post_accepted(
            &d,
            &json!([
                {"id": format!("c{round}"), "contract": "r-1", "lever": "calls",
                 "value": round, "bucket": "x", "time": param_time(t)},
                {"id": format!("h{round}"), "contract": "r-1", "lever": "hits",
                 "time": param_time(t)},
                {"id": format!("n{round}"), "contract": "r-1", "lever": "calls",
                 "value": "0.5", "time": param_time(t)},
            ]),
        );
        total += round;
        // Wait for this round's flush, so each round re-stamps the rows.
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            // One page is one read: each row at most once, even while flushes run.
            let items = feed_once(&d);
            let (rows, revs) = rows_once(&items);
            if rows.get(&minute_x).map(|v| v.1.clone()) == Some(total.to_string()) {
                let rev = revs[&minute_x];
                assert!(
                    rev > last_rev,
                    "round {round}: revision {rev} <= {last_rev}"
                );
                last_rev = rev;
                break;
            }
            assert!(Instant::now() < deadline, "round {round} never flushed");
            thread::sleep(Duration::from_millis(50));
        }
    }
    let settled = wait_quiet(&d, 0, Duration::from_millis(400));
    let from = floor(now_ms() - 3 * DAY, DAY);
    let to = now_ms() + DAY;
    assert_feed_is_store(&d, &contracts, from, to);

    let (items, next) = feed_all(&d, 0, 10_000, None);
    assert_eq!(next, settled);
    let (rows, revs) = rows_once(&items);
    // calls/x, calls/none, hits/none in minute, hour and day.
    assert_eq!(rows.len(), 9, "{items:?}");
    assert_eq!(rows[&minute_x].1, "21");
    assert_eq!(rows[&key("calls", None, "minute", &minute)].1, "3");
    assert_eq!(rows[&key("hits", None, "minute", &minute)].1, "6");
    // Six flushes stamped each row six times, yet the feed holds nine entries.
    assert!(settled >= 6 * 9, "{settled}");
    // Any page size walks the same sequence.
    for limit in [1, 2, 3, 8] {
        let (paged, n) = feed_all(&d, 0, limit, None);
        assert_eq!(paged, items, "limit={limit}");
        assert_eq!(n, next);
    }
    // `window=` keeps exactly that granularity, at the same revisions.
    for w in WINDOWS {
        for limit in [2, 1000] {
            let (only, _) = feed_all(&d, 0, limit, Some(w));
            let want: Vec<Value> = items
                .iter()
                .filter(|it| it["window"] == json!(w))
                .cloned()
                .collect();
            assert_eq!(only, want, "window={w} limit={limit}");
            assert_eq!(only.len(), 3);
        }
    }
    // Reading after any revision returns exactly the rows with a later revision.
    for it in &items {
        let r = it["revision"].as_u64().unwrap();
        let (tail, _) = feed_all(&d, r, 10_000, None);
        let want: Vec<Value> = items
            .iter()
            .filter(|x| x["revision"].as_u64().unwrap() > r)
            .cloned()
            .collect();
        assert_eq!(tail, want, "after={r}");
    }

    // An adjustment and a retraction re-stamp the three rows they change; each row is
    // still listed once, at its new revision, with its full value.
    let adj = adjust(
        &d,
        "r-1",
        &json!({"id": "a1", "lever": "calls", "time": param_time(t), "bucket": "x",
                "value": "-0.25", "reason": "credit"}),
    );
    let adj_rev = adj["revision"].as_u64().unwrap();
    assert!(adj_rev > settled, "{adj}");
    let (s, ret) = d.req("DELETE", "/v1/events/c6", Some(ADMIN), None);
    assert_eq!(s, 200, "{ret}");
    let ret_rev = ret["revision"].as_u64().unwrap();
    assert!(ret_rev > adj_rev, "{ret}");
    let (items2, next2) = feed_all(&d, 0, 10_000, None);
    assert_eq!(next2, ret_rev, "the retraction is the last change");
    let (rows2, revs2) = rows_once(&items2);
    assert_eq!(rows2.len(), 9);
    assert_eq!(rows2[&minute_x].1, "14.75", "21 - 0.25 - 6");
    let corrected: BTreeSet<u64> = WINDOWS
        .iter()
        .map(|w| revs2[&key("calls", Some("x"), w, &rfc3339(floor(t, window_len(w))))])
        .collect();
    assert_eq!(
        corrected,
        (ret_rev - 2..=ret_rev).collect::<BTreeSet<u64>>(),
        "the retraction's three revisions"
    );
    for w in WINDOWS {
        let start = rfc3339(floor(t, window_len(w)));
        let k = key("calls", Some("x"), w, &start);
        assert_eq!(rows2[&k].1, "14.75", "{w}");
        assert!(revs2[&k] > adj_rev && revs2[&k] <= ret_rev, "{w}");
        // The row's previous revisions are gone from the feed.
        assert!(
            !items2
                .iter()
                .any(|it| it["revision"].as_u64() == Some(revs[&k])),
            "the old revision {} of {k:?} is still listed",
            revs[&k]
        );
    }
    // The other rows kept their revisions.
    for (k, r) in &revs {
        if k.2.is_none() {
            assert_eq!(revs2[k], *r, "{k:?}");
        }
    }
    let (tail, _) = feed_all(&d, settled, 10_000, None);
    assert_eq!(tail.len(), 3, "only the three corrected rows: {tail:?}");
    assert_feed_is_store(&d, &contracts, from, to);
}

// ---------------------------------------------------------------------------------------
// 4. /v1/usage paging while ingest runs and contracts are created
// ---------------------------------------------------------------------------------------

/// A contract id of mixed case and characters, 1 to 128 bytes. Never `.` or `..`: URL
/// clients resolve those path segments (also percent-encoded) before sending.
fn random_id(rng: &mut StdRng) -> String {
    const CHARS: &[u8] = b"aAbBzZ09-_.~";
    loop {
        let len = match rng.random_range(0..10) {
            0..=5 => rng.random_range(1..=4),
            6..=8 => rng.random_range(5..=40),
            _ => rng.random_range(41..=128),
        };
        let id: String = (0..len)
            .map(|_| CHARS[rng.random_range(0..CHARS.len())] as char)
            .collect();
        if id != "." && id != ".." {
            return id;
        }
    }
}

/// `n` unique contract ids of mixed case, characters and length (1 to 128 bytes).
fn mixed_ids(rng: &mut StdRng, n: usize) -> Vec<String> {
    let mut ids: BTreeSet<String> = [
        "a", "A", "aa", "aA", "Aa", "AA", "a-", "a.", "_", "~", "Z9", "z", "zz",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    ids.insert("L".repeat(128));
    ids.insert("l".repeat(127));
    while ids.len() < n {
        ids.insert(random_id(rng));
    }
    ids.into_iter().collect()
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fmt {
    Json,
    Ndjson,
    Csv,
}

/// One page of `/v1/usage`: its rows as JSON values (CSV rows as objects of the CSV
/// columns) and the next cursor (`next_cursor` or the `meterd-next-cursor` header).
fn usage_page(d: &Daemon, key: &str, query: &str, fmt: Fmt) -> (Vec<Value>, Option<String>) {
    let mut rb = d.client.get(d.url(&format!("/v1/usage?{query}")));
    rb = rb.bearer_auth(key);
    rb = match fmt {
        Fmt::Json => rb,
        Fmt::Ndjson => rb.header("accept", "application/x-ndjson"),
        Fmt::Csv => rb.header("accept", "text/csv"),
    };
    let r = rb.send().expect("GET /v1/usage");
    let status = r.status().as_u16();
    let ctype = r
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let header = r
        .headers()
        .get("meterd-next-cursor")
        .map(|v| v.to_str().expect("ASCII cursor").to_string());
    let text = r.text().expect("body");
    assert_eq!(status, 200, "GET /v1/usage?{query} ({fmt:?}): {text}");
    match fmt {
        Fmt::Json => {
            assert!(ctype.starts_with("application/json"), "{ctype}");
            let v: Value = serde_json::from_str(&text).expect("JSON");
            let next = match &v["next_cursor"] {
                Value::Null => None,
                Value::String(s) => Some(s.clone()),
                other => panic!("next_cursor {other}"),
            };
            (v["items"].as_array().expect("items").clone(), next)
        }
        Fmt::Ndjson => {
            assert!(ctype.starts_with("application/x-ndjson"), "{ctype}");
            let rows = text
                .lines()
                .map(|l| {
                    serde_json::from_str(l).unwrap_or_else(|e| panic!("NDJSON line {l:?}: {e}"))
                })
                .collect();
            (rows, header)
        }
        Fmt::Csv => {
            assert!(ctype.starts_with("text/csv"), "{ctype}");
            (csv_rows(&text), header)
        }
    }
}

const CSV_HEADER: [&str; 8] = [
    "contract",
    "lever",
    "aggregation",
    "bucket",
    "start",
    "end",
    "value",
    "final",
];

/// Parses a CSV export (checking its header line) into one object per record.
fn csv_rows(text: &str) -> Vec<Value> {
    let mut r = csv::ReaderBuilder::new()
        .has_headers(true)
        .from_reader(text.as_bytes());
    let headers: Vec<String> = r
        .headers()
        .expect("CSV header")
        .iter()
        .map(str::to_string)
        .collect();
    assert_eq!(headers, CSV_HEADER, "CSV header line of {text:?}");
    r.records()
        .map(|rec| {
            let rec = rec.unwrap_or_else(|e| panic!("CSV record: {e} in {text:?}"));
            assert_eq!(rec.len(), 8, "{rec:?}");
            let mut o = serde_json::Map::new();
            for (h, f) in CSV_HEADER.iter().zip(rec.iter()) {
                o.insert(h.to_string(), json!(f));
            }
            Value::Object(o)
        })
        .collect()
}

/// A JSON usage row in the CSV columns (an absent bucket is an empty field).
fn as_csv(row: &Value) -> Value {
    let s = |f: &str| row[f].as_str().unwrap_or_else(|| panic!("{f} in {row}"));
    json!({
        "contract": s("contract"),
        "lever": s("lever"),
        "aggregation": s("aggregation"),
        "bucket": row.get("bucket").map_or("", |b| b.as_str().unwrap()),
        "start": s("start"),
        "end": s("end"),
        "value": s("value"),
        "final": row["final"].as_bool().unwrap().to_string(),
    })
}

/// Distinct contracts of a page, in order of appearance; checks that a page lists each
/// contract's rows together.
fn page_contracts(rows: &[Value]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for r in rows {
        let c = r["contract"].as_str().expect("contract").to_string();
        if out.last() != Some(&c) {
            assert!(
                !out.contains(&c),
                "rows of {c:?} are not together: {rows:?}"
            );
            out.push(c);
        }
    }
    out
}

/// Walks every page of `/v1/usage` with `limit`; returns the pages' rows.
fn walk(
    d: &Daemon,
    query: &str,
    limit: Option<usize>,
    fmt: Fmt,
    pause: Duration,
) -> Vec<Vec<Value>> {
    let mut pages = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut q = query.to_string();
        if let Some(l) = limit {
            q.push_str(&format!("&limit={l}"));
        }
        if let Some(c) = &cursor {
            q.push_str(&format!("&cursor={}", enc(c)));
        }
        let (rows, next) = usage_page(d, READ, &q, fmt);
        if let Some(l) = limit {
            assert!(page_contracts(&rows).len() <= l, "page over limit {l}");
        }
        pages.push(rows);
        assert!(pages.len() < 10_000, "paging does not end");
        match next {
            Some(n) => cursor = Some(n),
            None => return pages,
        }
        thread::sleep(pause);
    }
}

/// Checks a paged walk: no contract on two pages, ids strictly increasing in byte order
/// across the walk, every id of `must` exactly once. Returns the ids in order.
fn check_walk(pages: &[Vec<Value>], must: &[String], label: &str) -> Vec<String> {
    let mut all: Vec<String> = Vec::new();
    let mut seen: HashSet<String> = HashSet::new();
    for (i, p) in pages.iter().enumerate() {
        for c in page_contracts(p) {
            assert!(
                seen.insert(c.clone()),
                "{label}: contract {c:?} on two pages (again on page {i})"
            );
            if let Some(prev) = all.last() {
                assert!(
                    prev.as_bytes() < c.as_bytes(),
                    "{label}: {c:?} after {prev:?}: not in byte order (page {i})"
                );
            }
            all.push(c);
        }
    }
    let missing: Vec<&String> = must.iter().filter(|c| !seen.contains(*c)).collect();
    assert!(
        missing.is_empty(),
        "{label}: contracts never listed: {missing:?}"
    );
    all
}

#[test]
fn usage_paging_is_stable_while_ingest_runs_and_contracts_are_created() {
    let seed = seed();
    let mut rng = StdRng::seed_from_u64(seed);
    let d = start("");
    d.lever("calls", "sum");
    let ids = mixed_ids(&mut rng, 120);
    for id in &ids {
        put_contract(&d, id);
    }
    let events: Vec<Value> = ids
        .iter()
        .enumerate()
        .map(|(i, c)| json!({"id": format!("seed-{i}"), "contract": c, "lever": "calls"}))
        .collect();
    post_accepted(&d, &Value::Array(events));

    let stop = Arc::new(AtomicBool::new(false));
    let shared = Arc::new(Shared {
        base: RwLock::new(Some(d.base.clone())),
        stop: AtomicBool::new(false),
        finish: AtomicBool::new(false),
        pool: Mutex::new(Vec::new()),
    });
    let mut handles = Vec::new();
    for t in 0..3u64 {
        let (shared, stop, ids) = (shared.clone(), stop.clone(), ids.clone());
        handles.push(thread::spawn(move || {
            let client = client();
            let mut rng = StdRng::seed_from_u64(seed ^ (t + 1));
            let mut n = 0;
            while !stop.load(Ordering::SeqCst) {
                let batch: Vec<Value> = (0..5)
                    .map(|_| {
                        n += 1;
                        json!({"id": format!("t{t}-{n}"),
                               "contract": ids[rng.random_range(0..ids.len())],
                               "lever": "calls", "value": "1.5",
                               "bucket": format!("b{}", rng.random_range(0..3))})
                    })
                    .collect();
                let (s, v) = send_retry(
                    &shared,
                    &client,
                    Method::POST,
                    "/v1/events",
                    INGEST,
                    Some(&Value::Array(batch)),
                );
                assert_eq!(s, 200, "{v}");
                assert_eq!(v["accepted"], json!(5), "{v}");
                thread::sleep(Duration::from_millis(3));
            }
        }));
    }
    // An admin creates contracts (sorting anywhere) and gives each some usage.
    let created = Arc::new(Mutex::new(Vec::<String>::new()));
    {
        let (shared, stop, created) = (shared.clone(), stop.clone(), created.clone());
        let existing: HashSet<String> = ids.iter().cloned().collect();
        handles.push(thread::spawn(move || {
            let client = client();
            let mut rng = StdRng::seed_from_u64(seed ^ 0xadd);
            let mut n = 0;
            while !stop.load(Ordering::SeqCst) {
                n += 1;
                let id = loop {
                    let id = random_id(&mut rng);
                    if !existing.contains(&id) {
                        break id;
                    }
                };
                let path = format!("/v1/contracts/{}", enc(&id));
                let (s, v) = send_retry(
                    &shared,
                    &client,
                    Method::PUT,
                    &path,
                    ADMIN,
                    Some(&json!({"customer": "cus_2"})),
                );
                assert!(s == 201 || s == 200, "{id:?}: {s} {v}");
                let ev = json!({"id": format!("new-{n}"), "contract": id, "lever": "calls"});
                let (s, v) = send_retry(
                    &shared,
                    &client,
                    Method::POST,
                    "/v1/events",
                    INGEST,
                    Some(&ev),
                );
                assert_eq!(s, 200, "{v}");
                assert_eq!(v["accepted"], json!(1), "{v}");
                created.lock().unwrap().push(id);
                thread::sleep(Duration::from_millis(15));
            }
        }));
    }
    thread::sleep(Duration::from_millis(100));
    let from = param_time(now_ms() - HOUR);
    let query = format!("from={}&window=none&group_by=bucket", enc(&from));
    let pause = Duration::from_millis(15);
    let json_pages = walk(&d, &query, Some(7), Fmt::Json, pause);
    let csv_pages = walk(&d, &query, Some(7), Fmt::Csv, pause);
    let nd_pages = walk(&d, &query, Some(7), Fmt::Ndjson, pause);
    stop.store(true, Ordering::SeqCst);
    for h in handles {
        h.join().unwrap();
    }
    let created = created.lock().unwrap().clone();
    println!(
        "{} contracts created during paging; pages: json {}, csv {}, ndjson {}",
        created.len(),
        json_pages.len(),
        csv_pages.len(),
        nd_pages.len()
    );
    assert!(!created.is_empty(), "no contract was created during paging");
    let j = check_walk(&json_pages, &ids, "JSON");
    let c = check_walk(&csv_pages, &ids, "CSV");
    let n = check_walk(&nd_pages, &ids, "NDJSON");
    assert!(json_pages.len() >= ids.len() / 7, "{}", json_pages.len());
    // A contract listed is one of ours.
    let known: HashSet<&String> = ids.iter().chain(created.iter()).collect();
    for id in j.iter().chain(c.iter()).chain(n.iter()) {
        assert!(known.contains(id), "unknown contract {id:?} listed");
    }
    // Once quiet, every walk lists every contract once, in byte order.
    let mut everyone: Vec<String> = ids.iter().chain(created.iter()).cloned().collect();
    everyone.sort();
    everyone.dedup();
    for fmt in [Fmt::Json, Fmt::Csv, Fmt::Ndjson] {
        for limit in [Some(7), Some(1000), None] {
            if fmt == Fmt::Json && limit.is_none() {
                continue;
            }
            let pages = walk(&d, &query, limit, fmt, Duration::ZERO);
            let got = check_walk(&pages, &everyone, &format!("{fmt:?} {limit:?} quiet"));
            assert_eq!(got, everyone, "{fmt:?} {limit:?}");
        }
    }
}

// ---------------------------------------------------------------------------------------
// 5. CSV and NDJSON exports
// ---------------------------------------------------------------------------------------

#[test]
fn csv_and_ndjson_exports_match_the_json_api() {
    let d = start("");
    for (l, a) in [
        ("calls", "sum"),
        ("hits", "count"),
        ("peak", "max"),
        ("seats", "latest"),
    ] {
        d.lever(l, a);
    }
    let nasty = "ctr,\"quoted\" ünïcödé 日本";
    let contracts: Vec<String> = [
        nasty,
        "a%b?c#d&e=f+g;h",
        "plain-1",
        "Zeta",
        "alpha",
        "beta gamma",
        "ß",
        "x",
        "X",
        "émoji-😀",
        "q\"",
        &"l".repeat(128),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    for c in &contracts {
        put_contract(&d, c);
    }
    let buckets = ["eu,\"west\" ü", "plain", "日本,\n?", "x\"y"];
    let now = now_ms();
    let mut events = Vec::new();
    for (i, c) in contracts.iter().enumerate() {
        for j in 0..6 {
            let (lever, value) = [
                ("calls", json!("1.25")),
                ("hits", json!(1)),
                ("peak", json!(i * 10 + j)),
                ("seats", json!("0.000000001")),
            ][j % 4]
                .clone();
            let mut e = json!({"id": format!("e{i}-{j}"), "contract": c, "lever": lever,
                               "value": value, "time": param_time(now - (j as i64) * 10_000)});
            if j % 3 != 0 {
                e["bucket"] = json!(buckets[(i + j) % buckets.len()]);
            }
            events.push(e);
        }
    }
    let (s, b) = d.post_events(&Value::Array(events.clone()));
    assert_eq!(s, 200, "{b}");
    // A bucket with a newline may be refused; every other event must be accepted.
    let refused: Vec<&Value> = b["errors"]
        .as_array()
        .map(|e| e.iter().collect())
        .unwrap_or_default();
    for e in &refused {
        let idx = e["index"].as_u64().unwrap() as usize;
        assert!(
            events[idx]["bucket"]
                .as_str()
                .is_some_and(|b| b.contains('\n')),
            "refused: {e}"
        );
    }
    // Final rows two days back, in a bucket with a comma and a quote.
    adjust(
        &d,
        nasty,
        &json!({"id": "old", "lever": "calls", "time": param_time(now - 2 * DAY),
                "value": "-3.5", "bucket": buckets[0], "reason": "credit"}),
    );
    let from = param_time(floor(now - 3 * DAY, DAY));
    let to = param_time(now + HOUR);
    for base in [
        format!(
            "from={}&to={}&window=hour&group_by=bucket",
            enc(&from),
            enc(&to)
        ),
        format!("from={}&to={}&window=none", enc(&from), enc(&to)),
        format!(
            "from={}&to={}&window=minute&lever=calls&group_by=bucket",
            enc(&from),
            enc(&to)
        ),
    ] {
        // The JSON API, all contracts on one page (default limit 100).
        let (json_rows, next) = usage_page(&d, READ, &base, Fmt::Json);
        assert!(next.is_none());
        assert_eq!(page_contracts(&json_rows).len(), contracts.len(), "{base}");
        let mut by_bytes = contracts.clone();
        by_bytes.sort();
        assert_eq!(page_contracts(&json_rows), by_bytes, "{base}");
        // Every contract's rows equal the per-contract API.
        for c in &contracts {
            let v = d.usage(&enc(c), &base);
            let want: Vec<Value> = v["items"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| {
                    let mut r = r.clone();
                    r["contract"] = json!(c);
                    r
                })
                .collect();
            let got: Vec<Value> = json_rows
                .iter()
                .filter(|r| r["contract"] == json!(c))
                .cloned()
                .collect();
            assert_eq!(got, want, "{base}: contract {c:?}");
        }
        if base.contains("group_by") {
            assert!(
                json_rows
                    .iter()
                    .any(|r| r.get("bucket") == Some(&json!(buckets[0]))),
                "no row of bucket {:?}",
                buckets[0]
            );
        }
        assert!(json_rows.iter().any(|r| r["contract"] == json!(nasty)));

        // NDJSON: one JSON row per line, equal to the JSON items, no cursor header.
        let (nd, header) = usage_page(&d, READ, &base, Fmt::Ndjson);
        assert!(
            header.is_none(),
            "a stream without limit has no next cursor"
        );
        assert_eq!(nd, json_rows, "NDJSON vs JSON ({base})");

        // CSV: header line, then the same rows (quoting round-trips).
        let (csv, header) = usage_page(&d, READ, &base, Fmt::Csv);
        assert!(
            header.is_none(),
            "a stream without limit has no next cursor"
        );
        let want: Vec<Value> = json_rows.iter().map(as_csv).collect();
        assert_eq!(csv, want, "CSV vs JSON ({base})");

        // With limit=5 the header pages through every contract exactly once.
        for fmt in [Fmt::Csv, Fmt::Ndjson] {
            let pages = walk(&d, &base, Some(5), fmt, Duration::ZERO);
            assert_eq!(pages.len(), contracts.len().div_ceil(5), "{fmt:?} {base}");
            check_walk(&pages, &contracts, &format!("{fmt:?} limit=5"));
            let flat: Vec<Value> = pages.concat();
            match fmt {
                Fmt::Csv => assert_eq!(flat, want, "paged CSV ({base})"),
                _ => assert_eq!(flat, json_rows, "paged NDJSON ({base})"),
            }
        }
        // JSON pages of 5 alike.
        let pages = walk(&d, &base, Some(5), Fmt::Json, Duration::ZERO);
        assert_eq!(pages.concat(), json_rows, "paged JSON ({base})");
        // A limit of exactly the number of contracts: one page, no next cursor.
        let n = contracts.len();
        for fmt in [Fmt::Json, Fmt::Csv, Fmt::Ndjson] {
            let pages = walk(&d, &base, Some(n), fmt, Duration::ZERO);
            assert_eq!(
                pages.len(),
                1,
                "{fmt:?} limit={n}: a last page has no cursor"
            );
        }
        // A stream with a cursor and no limit covers every contract after it.
        let first = by_bytes[0].clone();
        let q = format!("{base}&cursor={}", hex_of(&first));
        let (csv_rest, header) = usage_page(&d, READ, &q, Fmt::Csv);
        assert!(header.is_none());
        let want_rest: Vec<Value> = want
            .iter()
            .filter(|r| r["contract"] != json!(first))
            .cloned()
            .collect();
        assert_eq!(csv_rest, want_rest, "CSV after cursor {first:?} ({base})");
    }
    // The JSON envelope echoes the window and the range.
    let q = format!("from={}&to={}&window=hour", enc(&from), enc(&to));
    let (s, v) = d.req("GET", &format!("/v1/usage?{q}"), Some(READ), None);
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["window"], json!("hour"), "{v}");
    assert_eq!(parse_time(v["from"].as_str().unwrap()), parse_time(&from));
    assert_eq!(parse_time(v["to"].as_str().unwrap()), parse_time(&to));
    assert_eq!(v["next_cursor"], Value::Null);
    // An export always starts with the CSV header, even with no rows.
    let far = format!(
        "from={}&to={}&window=hour",
        enc("2001-01-01T00:00:00Z"),
        enc("2001-01-02T00:00:00Z")
    );
    let r = d
        .client
        .get(d.url(&format!("/v1/usage?{far}")))
        .bearer_auth(READ)
        .header("accept", "text/csv")
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    let text = r.text().unwrap();
    assert_eq!(text.trim_end(), CSV_HEADER.join(","), "{text:?}");
}

// ---------------------------------------------------------------------------------------
// 6. Parameter validation and roles
// ---------------------------------------------------------------------------------------

/// GETs `path` (with an optional Accept header) and checks a problem response.
fn assert_problem(
    d: &Daemon,
    path: &str,
    key: Option<&str>,
    accept: Option<&str>,
    status: u16,
    code: &str,
) {
    let mut rb = d.client.get(d.url(path));
    if let Some(k) = key {
        rb = rb.bearer_auth(k);
    }
    if let Some(a) = accept {
        rb = rb.header("accept", a);
    }
    let r = rb.send().expect("request");
    let s = r.status().as_u16();
    let ctype = r
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let text = r.text().unwrap_or_default();
    assert_eq!(s, status, "GET {path} (accept {accept:?}): {text}");
    assert!(
        ctype.starts_with("application/problem+json"),
        "GET {path}: content type {ctype:?}"
    );
    let v: Value = serde_json::from_str(&text).unwrap_or_else(|_| panic!("{text}"));
    assert_eq!(v["code"], json!(code), "GET {path}: {v}");
    assert_eq!(v["status"], json!(status), "GET {path}: {v}");
}

#[test]
fn changes_and_usage_validate_parameters_and_roles() {
    let d = start("");
    d.lever("calls", "sum");
    put_contract(&d, "v-1");
    put_contract(&d, "v-2");
    post_accepted(
        &d,
        &json!([{"id": "e1", "contract": "v-1", "lever": "calls", "value": 2}]),
    );
    wait_quiet(&d, 0, Duration::from_millis(300));

    let bad_changes = [
        "after=-1",
        "after=abc",
        "after=",
        "after=1.5",
        "after=18446744073709551616",
        "limit=0",
        "limit=10001",
        "limit=-5",
        "limit=ten",
        "window=month",
        "window=none",
        "window=Minute",
        "foo=1",
        "after=1&after=2",
        "cursor=00",
    ];
    for q in bad_changes {
        assert_problem(
            &d,
            &format!("/v1/changes?{q}"),
            Some(READ),
            None,
            400,
            "invalid_query",
        );
    }
    for q in [
        "",
        "after=0",
        "limit=1",
        "limit=10000",
        "window=day",
        "after=18446744073709551615",
    ] {
        let (s, v) = d.req("GET", &format!("/v1/changes?{q}"), Some(READ), None);
        assert_eq!(s, 200, "/v1/changes?{q}: {v}");
    }
    let (_, v) = d.req("GET", "/v1/changes", Some(READ), None);
    assert_eq!(v["items"].as_array().unwrap().len(), 3, "{v}");
    let (_, v) = d.req(
        "GET",
        "/v1/changes?after=18446744073709551615",
        Some(READ),
        None,
    );
    assert_eq!(v["items"], json!([]), "{v}");

    let from = enc(&param_time(now_ms() - HOUR));
    let bad_usage = [
        String::new(),
        "window=hour".to_string(),
        "from=yesterday".to_string(),
        format!("from={from}&to=soon"),
        format!("from={from}&to={from}"),
        format!("from={from}&to={}", enc(&param_time(now_ms() - 2 * HOUR))),
        format!("from={from}&window=week"),
        format!("from={from}&tz=Mars%2FOlympus"),
        format!("from={from}&group_by=lever"),
        format!("from={from}&cursor=zz"),
        format!("from={from}&cursor=abc"),
        format!("from={from}&cursor=ff"),
        format!("from={from}&limit=0"),
        format!("from={from}&limit=1001"),
        format!("from={from}&limit=-1"),
        format!("from={from}&limit=x"),
        format!("from={from}&after=0"),
        format!("from={from}&foo=bar"),
        format!("from={from}&limit=5&limit=6"),
        format!(
            "from={}&window=minute",
            enc(&param_time(now_ms() - 32 * DAY))
        ),
    ];
    for q in &bad_usage {
        for accept in [None, Some("text/csv"), Some("application/x-ndjson")] {
            assert_problem(
                &d,
                &format!("/v1/usage?{q}"),
                Some(READ),
                accept,
                400,
                "invalid_query",
            );
        }
    }
    assert_problem(
        &d,
        &format!("/v1/usage?from={from}&lever=nope"),
        Some(READ),
        None,
        404,
        "not_found",
    );
    // Valid edges.
    for q in [
        format!("from={from}"),
        format!("from={from}&limit=1"),
        format!("from={from}&limit=1000"),
        format!("from={from}&window=month&tz=Europe%2FBerlin"),
        format!("from={from}&cursor={}", enc(&hex_of("v-1"))),
    ] {
        let (s, v) = d.req("GET", &format!("/v1/usage?{q}"), Some(READ), None);
        assert_eq!(s, 200, "/v1/usage?{q}: {v}");
    }
    // A cursor is the position after a contract id.
    let (_, v) = d.req(
        "GET",
        &format!("/v1/usage?from={from}&cursor={}", hex_of("v-0")),
        Some(READ),
        None,
    );
    assert_eq!(v["items"].as_array().unwrap().len(), 1, "{v}");
    let (_, v) = d.req(
        "GET",
        &format!("/v1/usage?from={from}&cursor={}", hex_of("v-1")),
        Some(READ),
        None,
    );
    assert_eq!(v["items"], json!([]), "{v}");

    // Roles: read and admin may read; ingest may not; no key is unauthorized.
    let usage = format!("/v1/usage?from={from}");
    for path in ["/v1/changes", "/v1/changes?after=0&limit=5", usage.as_str()] {
        for accept in [None, Some("text/csv"), Some("application/x-ndjson")] {
            assert_problem(&d, path, Some(INGEST), accept, 403, "forbidden");
            assert_problem(&d, path, None, accept, 401, "unauthorized");
            assert_problem(&d, path, Some("not-a-key"), accept, 401, "unauthorized");
        }
        for key in [READ, ADMIN] {
            let (s, v) = d.req("GET", path, Some(key), None);
            assert_eq!(s, 200, "{path}: {v}");
        }
    }
    // Another tenant's keys see none of this tenant's usage.
    for key in [OTHER_READ, OTHER_ADMIN] {
        let (s, v) = d.req("GET", "/v1/changes", Some(key), None);
        assert_eq!(s, 200, "{v}");
        assert_eq!(v["items"], json!([]), "{v}");
        assert_eq!(v["next_after"], json!(0), "{v}");
        let (s, v) = d.req("GET", &usage, Some(key), None);
        assert_eq!(s, 200, "{v}");
        assert_eq!(v["items"], json!([]), "{v}");
        let (rows, next) = usage_page(&d, key, &format!("from={from}"), Fmt::Csv);
        assert!(rows.is_empty() && next.is_none(), "{rows:?}");
    }

    // Revisions are per tenant: the other tenant's usage has its own feed, from 1.
    let (s, v) = d.req(
        "PUT",
        "/v1/levers/calls",
        Some(OTHER_ADMIN),
        Some(&json!({"aggregation": "sum", "unit": "u"})),
    );
    assert_eq!(s, 201, "{v}");
    let (s, v) = d.req(
        "PUT",
        "/v1/contracts/v-1",
        Some(OTHER_ADMIN),
        Some(&json!({"customer": "cus_9"})),
    );
    assert_eq!(s, 201, "{v}");
    let (s, v) = d.req(
        "POST",
        "/v1/events",
        Some(OTHER_INGEST),
        Some(&json!({"id": "o1", "contract": "v-1", "lever": "calls", "value": 9})),
    );
    assert_eq!((s, &v["accepted"]), (200, &json!(1)), "{v}");
    let mine = feed_once(&d);
    let deadline = Instant::now() + Duration::from_secs(20);
    let theirs = loop {
        let (s, v) = d.req("GET", "/v1/changes", Some(OTHER_READ), None);
        assert_eq!(s, 200, "{v}");
        if v["items"].as_array().unwrap().len() == 3 {
            break v;
        }
        assert!(
            Instant::now() < deadline,
            "other tenant's usage never flushed: {v}"
        );
        thread::sleep(Duration::from_millis(50));
    };
    let revs: Vec<u64> = theirs["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|it| it["revision"].as_u64().unwrap())
        .collect();
    assert_eq!(revs, [1, 2, 3], "{theirs}");
    assert!(theirs["items"]
        .as_array()
        .unwrap()
        .iter()
        .all(|it| it["value"] == json!("9")));
    assert_eq!(
        feed_once(&d),
        mine,
        "another tenant's usage changed this feed"
    );

    // `limit` defaults to 1000: 1,100 buckets in one minute make 3,300 rows.
    let at = param_time(now_ms() - MINUTE);
    let events: Vec<Value> = (0..1100)
        .map(|i| {
            json!({"id": format!("many-{i}"), "contract": "v-2", "lever": "calls",
                   "bucket": format!("b{i}"), "time": at})
        })
        .collect();
    post_accepted(&d, &Value::Array(events));
    let before = mine.len();
    let deadline = Instant::now() + Duration::from_secs(20);
    while feed_once(&d).len() < before + 3300 {
        assert!(Instant::now() < deadline, "1,100 events never flushed");
        thread::sleep(Duration::from_millis(50));
    }
    let (items, next) = feed_page(&d, "");
    assert_eq!(items.len(), 1000, "default page size");
    assert_eq!(
        Some(next),
        items.last().and_then(|it| it["revision"].as_u64())
    );
    let (items, _) = feed_page(&d, "limit=10000");
    assert_eq!(items.len(), before + 3300);
}

fn hex_of(s: &str) -> String {
    s.bytes().map(|b| format!("{b:02x}")).collect()
}
