//! Black-box tests of quotas and entitlements (SPEC 3).
//!
//! Promises guarded:
//! - the quota check and the usage increment are one atomic step: under heavy concurrency
//!   a hard limit is reached exactly and never exceeded, and no event is rejected while
//!   it still fitted (also for reseller pools shared through `parent`, and across a
//!   `kill -9` restart);
//! - soft limits accept and report overage; `-1` and levers without quotas never reject;
//! - plan and contract quota changes apply to the next event, a contract's quota beats its
//!   plan's, and re-parenting a contract (even under load) keeps the usage it has and
//!   counts each event once;
//! - the deepest parent chain the admin API accepts is enforced up to its root;
//! - periods follow the contract's zone and billing anchor, and late events count toward
//!   the period that contains their time;
//! - duplicates never consume quota.
//!
//! Every balance figure is also checked against the usage API (`window=none`). Rerun a
//! failing concurrent test with `METERD_SEED=<seed>`.

mod common;

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use chrono::{
    DateTime, Datelike, Months, NaiveDate, NaiveDateTime, NaiveTime, SecondsFormat, TimeZone, Utc,
};
use chrono_tz::Tz;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

use common::{time_at, Daemon, ADMIN, INGEST, READ};

const LEVER: &str = "calls";
/// Decimal values are handled as integers of 1e-9 units (the daemon's precision).
const UNIT: i128 = 1_000_000_000;

// ---------------------------------------------------------------------------------------
// Decimal and time helpers

/// Parses a non-negative decimal string into 1e-9 units.
fn dec(s: &str) -> i128 {
    let (int, frac) = s.split_once('.').unwrap_or((s, ""));
    assert!(
        !int.is_empty()
            && frac.len() <= 9
            && int.bytes().chain(frac.bytes()).all(|b| b.is_ascii_digit()),
        "not a plain non-negative decimal: {s:?}"
    );
    int.parse::<i128>().unwrap() * UNIT + format!("{frac:0<9}").parse::<i128>().unwrap()
}

/// Formats 1e-9 units as a decimal string without trailing zeros.
fn fmt_dec(v: i128) -> String {
    assert!(v >= 0);
    let (int, frac) = (v / UNIT, v % UNIT);
    if frac == 0 {
        return int.to_string();
    }
    let f = format!("{frac:09}");
    format!("{int}.{}", f.trim_end_matches('0'))
}

/// A decimal field of a JSON answer, in 1e-9 units.
#[track_caller]
fn dec_field(v: &Value, field: &str) -> i128 {
    dec(v[field]
        .as_str()
        .unwrap_or_else(|| panic!("`{field}` is not a decimal string: {v}")))
}

fn ms(t: &str) -> i64 {
    DateTime::parse_from_rfc3339(t)
        .unwrap_or_else(|e| panic!("bad time {t:?}: {e}"))
        .timestamp_millis()
}

fn iso(ms: i64) -> String {
    DateTime::<Utc>::from_timestamp_millis(ms)
        .unwrap()
        .to_rfc3339_opts(SecondsFormat::Millis, true)
}

fn now_ms() -> i64 {
    Utc::now().timestamp_millis()
}

/// The instant of a local date-time in `tz` (earliest occurrence).
fn at_local(tz: Tz, local: NaiveDateTime) -> i64 {
    tz.from_local_datetime(&local)
        .earliest()
        .unwrap_or_else(|| panic!("{local} does not exist in {tz}"))
        .timestamp_millis()
}

fn local_now(tz: Tz, t_ms: i64) -> NaiveDateTime {
    tz.timestamp_millis_opt(t_ms).unwrap().naive_local()
}

/// Expected `[start, end)` of the calendar period `kind` containing `t_ms` in `tz`, and of
/// `billing_period` for an anchor, computed independently with chrono-tz.
fn expected_period(kind: &str, tz: Tz, anchor_ms: i64, t_ms: i64) -> (i64, i64) {
    let today = local_now(tz, t_ms).date();
    let midnight = |d: NaiveDate| at_local(tz, d.and_time(NaiveTime::MIN));
    match kind {
        "day" => (midnight(today), midnight(today.succ_opt().unwrap())),
        "week" => {
            let monday =
                today - chrono::Days::new(u64::from(today.weekday().num_days_from_monday()));
            (midnight(monday), midnight(monday + chrono::Days::new(7)))
        }
        "month" => {
            let first = today.with_day(1).unwrap();
            (midnight(first), midnight(first + Months::new(1)))
        }
        "billing_period" => {
            // chrono's month addition clamps the day to the month length (31st -> 30th).
            let anchor = local_now(tz, anchor_ms);
            let start = |k: u32| {
                let d = anchor.date().checked_add_months(Months::new(k)).unwrap();
                at_local(tz, d.and_time(anchor.time()))
            };
            assert!(anchor_ms <= t_ms, "test anchors are in the past");
            let k = (0..2400).find(|k| start(k + 1) > t_ms).unwrap();
            (start(k), start(k + 1))
        }
        other => panic!("no expected period for {other}"),
    }
}

// ---------------------------------------------------------------------------------------
// API helpers

#[track_caller]
fn put(d: &Daemon, path: &str, body: Value) -> Value {
    let (s, b) = d.req("PUT", path, Some(ADMIN), Some(&body));
    assert!(s == 200 || s == 201, "PUT {path}: {s} {b}");
    b
}

fn quota(period: &str, limit: impl Into<Value>, mode: &str) -> Value {
    json!({"lever": LEVER, "period": period, "limit": limit.into(), "mode": mode})
}

fn plan(d: &Daemon, name: &str, quotas: Vec<Value>) {
    put(d, &format!("/v1/plans/{name}"), json!({ "quotas": quotas }));
}

/// Creates or replaces a contract with extra body fields (`plan`, `quotas`, ...).
fn contract(d: &Daemon, id: &str, extra: Value) -> Value {
    let mut body = json!({"customer": "cus_quota"});
    for (k, v) in extra.as_object().expect("object") {
        body[k] = v.clone();
    }
    put(d, &format!("/v1/contracts/{id}"), body)
}

fn ev(id: &str, contract: &str, value: impl Into<Value>) -> Value {
    json!({"id": id, "contract": contract, "lever": LEVER, "value": value.into()})
}

/// Posts events (an object or an array); asserts 200 and returns the outcome.
#[track_caller]
fn post(d: &Daemon, body: Value) -> Value {
    let (s, v) = d.post_events(&body);
    assert_eq!(s, 200, "{v}");
    v
}

/// Asserts the counts of an outcome.
#[track_caller]
fn assert_counts(out: &Value, accepted: u64, duplicates: u64, rejected: u64) {
    assert_eq!(
        (
            out["accepted"].as_u64(),
            out["duplicates"].as_u64(),
            out["rejected"].as_u64()
        ),
        (Some(accepted), Some(duplicates), Some(rejected)),
        "{out}"
    );
}

/// Asserts that the event at `index` was rejected as `quota_exceeded` with `message`.
#[track_caller]
fn assert_quota_error(out: &Value, index: u64, message: &str) {
    let e = out["errors"]
        .as_array()
        .and_then(|es| es.iter().find(|e| e["index"] == index))
        .unwrap_or_else(|| panic!("no error at index {index}: {out}"));
    assert_eq!(e["code"], "quota_exceeded", "{out}");
    assert_eq!(e["message"], message, "{out}");
}

#[track_caller]
fn balance(d: &Daemon, contract: &str, lever: Option<&str>) -> Value {
    let q = lever.map(|l| format!("?lever={l}")).unwrap_or_default();
    let (s, b) = d.req(
        "GET",
        &format!("/v1/contracts/{contract}/balance{q}"),
        Some(READ),
        None,
    );
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["contract"], contract, "{b}");
    b
}

/// The balance row of `lever` and `period`; panics unless there is exactly one.
#[track_caller]
fn row<'a>(bal: &'a Value, lever: &str, period: &str) -> &'a Value {
    let rows: Vec<&Value> = bal["levers"]
        .as_array()
        .unwrap_or_else(|| panic!("no levers: {bal}"))
        .iter()
        .filter(|r| r["lever"] == lever && r["period"] == period)
        .collect();
    assert_eq!(rows.len(), 1, "one {lever}/{period} row expected: {bal}");
    rows[0]
}

/// Usage of the `period` row of a balance, checking that the row is for the period that
/// contains `t_ms` (`None` if the period rolled over during the test).
#[track_caller]
fn row_usage_at(bal: &Value, period: &str, t_ms: i64) -> Option<i128> {
    let r = row(bal, LEVER, period);
    if period != "lifetime" {
        let start = ms(r["period_start"].as_str().unwrap());
        let end = ms(r["period_end"].as_str().unwrap());
        if !(start <= t_ms && t_ms < end) {
            eprintln!("the {period} period rolled over during the test; not checked: {r}");
            return None;
        }
    }
    Some(dec_field(r, "usage"))
}

/// Total usage from the usage API (`window=none`) over `[from, to)`.
#[track_caller]
fn usage_total(d: &Daemon, contract: &str, lever: &str, from: i64, to: i64) -> i128 {
    let v = d.usage(
        contract,
        &format!(
            "lever={lever}&window=none&from={}&to={}",
            iso(from),
            iso(to)
        ),
    );
    match v["items"].as_array().expect("items").as_slice() {
        [] => 0,
        [r] => dec_field(r, "value"),
        more => panic!("one row expected: {more:?}"),
    }
}

/// Total usage over the hour around `t_ms` (the tests post every event near it).
fn usage_near(d: &Daemon, contract: &str, t_ms: i64) -> i128 {
    let from = t_ms.div_euclid(60_000) * 60_000 - 3_600_000;
    usage_total(d, contract, LEVER, from, t_ms + 3_600_000)
}

fn start(top: &str) -> Daemon {
    let d = Daemon::start_with(top, "");
    d.lever(LEVER, "sum");
    d
}

fn seed() -> u64 {
    let seed = std::env::var("METERD_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random::<u64>);
    println!("seed = {seed} (rerun with METERD_SEED={seed})");
    seed
}

// ---------------------------------------------------------------------------------------
// Concurrent load

/// One event as sent.
#[derive(Debug, Clone)]
struct Sent {
    id: String,
    contract: &'static str,
    /// Value in 1e-9 units (what a `sum` lever adds; a `count` lever adds 1).
    value: i128,
}

/// What one client learned about the events it sent.
#[derive(Debug, Default)]
struct Tally {
    /// Answered 200 and not listed among the errors.
    accepted: Vec<Sent>,
    /// Sum of the `accepted` counts of the answers.
    reported: u64,
    /// Listed among the errors, with the error object.
    rejected: Vec<(Sent, Value)>,
    /// The request failed or got no answer (the daemon was killed).
    unknown: Vec<Sent>,
    /// Requests answered.
    requests: u64,
}

impl Tally {
    fn merge(tallies: Vec<Tally>) -> Tally {
        let mut all = Tally::default();
        for t in tallies {
            all.accepted.extend(t.accepted);
            all.reported += t.reported;
            all.rejected.extend(t.rejected);
            all.unknown.extend(t.unknown);
            all.requests += t.requests;
        }
        all
    }

    fn accepted_value(&self) -> i128 {
        self.accepted.iter().map(|s| s.value).sum()
    }
}

/// A load of fresh ids in batches of 1..=200, spread over `contracts`.
struct Load<'a> {
    base: String,
    contracts: &'a [&'static str],
    /// Draws an event value in 1e-9 units.
    value: fn(&mut StdRng) -> i128,
    /// Event time of every event (fixed, so all fall in the same periods).
    time: String,
    /// A client stops after this many consecutive answers with nothing accepted.
    quiet: usize,
    /// Accepted events so far, over all clients.
    progress: &'a AtomicU64,
    /// Set to stop every client.
    stop: &'a AtomicBool,
}

impl Load<'_> {
    /// Runs `n` clients concurrently until each has seen `quiet` fully rejected answers,
    /// `stop` is set or the daemon stops answering. Fails if that takes more than 30 s
    /// (a limit that is not enforced never stops the clients).
    fn run(&self, n: usize, tag: &str, seed: u64) -> Tally {
        let started = Instant::now();
        let deadline = started + Duration::from_secs(30);
        let t = std::thread::scope(|s| {
            let handles: Vec<_> = (0..n)
                .map(|i| {
                    let tag = format!("{tag}-{i}");
                    s.spawn(move || self.client(&tag, seed.wrapping_add(i as u64), deadline))
                })
                .collect();
            Tally::merge(handles.into_iter().map(|h| h.join().unwrap()).collect())
        });
        println!(
            "{tag}: {n} clients, {} requests, {} accepted, {} rejected, {} unanswered in {:?}",
            t.requests,
            t.accepted.len(),
            t.rejected.len(),
            t.unknown.len(),
            started.elapsed()
        );
        t
    }

    fn client(&self, tag: &str, seed: u64, deadline: Instant) -> Tally {
        let client = reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .expect("client");
        let mut rng = StdRng::seed_from_u64(seed);
        let mut tally = Tally::default();
        let (mut n, mut quiet) = (0u64, 0usize);
        while quiet < self.quiet && !self.stop.load(Ordering::SeqCst) {
            assert!(
                Instant::now() < deadline,
                "{tag}: still accepting events after 30 s ({} accepted so far)",
                self.progress.load(Ordering::SeqCst)
            );
            let size = if rng.random_bool(0.2) {
                rng.random_range(1..=3)
            } else {
                rng.random_range(1..=200)
            };
            let batch: Vec<Sent> = (0..size)
                .map(|_| {
                    n += 1;
                    Sent {
                        id: format!("{tag}-{n}"),
                        contract: self.contracts[rng.random_range(0..self.contracts.len())],
                        value: (self.value)(&mut rng),
                    }
                })
                .collect();
            let body: Vec<Value> = batch
                .iter()
                .map(|e| {
                    // Values go as decimal strings or as JSON numbers.
                    let value = if rng.random_bool(0.5) || e.value % (UNIT / 4) != 0 {
                        Value::String(fmt_dec(e.value))
                    } else {
                        json!(e.value as f64 / UNIT as f64)
                    };
                    json!({"id": e.id, "contract": e.contract, "lever": LEVER,
                           "value": value, "time": self.time})
                })
                .collect();
            let answer = client
                .post(format!("{}/v1/events", self.base))
                .bearer_auth(INGEST)
                .header("content-type", "application/json")
                .body(serde_json::to_vec(&body).expect("body"))
                .send()
                .and_then(|r| {
                    let status = r.status().as_u16();
                    r.text().map(|t| (status, t))
                });
            let text = match answer {
                Ok((200, text)) => text,
                Ok((status, text)) => panic!("unexpected answer {status}: {text}"),
                Err(_) => {
                    tally.unknown.extend(batch);
                    break;
                }
            };
            let out: Value = serde_json::from_str(&text).expect("JSON answer");
            let errors = out["errors"].as_array().expect("errors");
            let accepted = out["accepted"].as_u64().expect("accepted");
            assert_eq!(out["duplicates"], 0, "fresh ids: {text}");
            assert_eq!(
                out["rejected"].as_u64(),
                Some(errors.len() as u64),
                "{text}"
            );
            assert_eq!(
                accepted as usize + errors.len(),
                size,
                "every event must be accounted for: {text}"
            );
            let mut rejected = HashSet::new();
            for e in errors {
                let i = e["index"].as_u64().expect("index") as usize;
                assert!(i < size && rejected.insert(i), "bad index: {text}");
                assert_eq!(e["id"], batch[i].id.as_str(), "{text}");
                tally.rejected.push((batch[i].clone(), e.clone()));
            }
            tally.reported += accepted;
            tally.requests += 1;
            self.progress.fetch_add(accepted, Ordering::SeqCst);
            quiet = if accepted == 0 { quiet + 1 } else { 0 };
            for (i, e) in batch.into_iter().enumerate() {
                if !rejected.contains(&i) {
                    tally.accepted.push(e);
                }
            }
        }
        tally
    }
}

fn value_one(_: &mut StdRng) -> i128 {
    UNIT
}

/// 0.25, 0.5, ..., 5.
fn value_quarters(rng: &mut StdRng) -> i128 {
    rng.random_range(1..=20) * UNIT / 4
}

/// Asserts that every rejection is `quota_exceeded` with exactly `message`.
#[track_caller]
fn assert_rejections(t: &Tally, message: &str) {
    for (e, err) in &t.rejected {
        assert_eq!(err["code"], "quota_exceeded", "{} {err}", e.id);
        assert_eq!(err["message"], message, "{} {err}", e.id);
    }
}

// ---------------------------------------------------------------------------------------
// Tests

/// 8 clients race for a hard month limit with value-1 events (limits 1, 777, 6000 and
/// 60000):
/// exactly the limit is accepted, and balance (every period row) and usage agree with
/// the acknowledgements.
#[test]
fn hammer_value_one_reaches_the_hard_limit_exactly() {
    let d = start("");
    let seed = seed();
    let ids = ["hammer-1", "hammer-777", "hammer-6000", "hammer-60000"];
    for (round, limit) in [1i128, 777, 6_000, 60_000].into_iter().enumerate() {
        let id = ids[round];
        contract(
            &d,
            id,
            json!({"quotas": [
                quota("month", limit as i64, "hard"),
                quota("day", 1_000_000, "hard"),
                quota("lifetime", 100, "soft"),
            ]}),
        );
        let t0 = time_at(0);
        let (progress, stop) = (AtomicU64::new(0), AtomicBool::new(false));
        let load = Load {
            base: d.base.clone(),
            contracts: &[id],
            value: value_one,
            time: t0.clone(),
            quiet: 4,
            progress: &progress,
            stop: &stop,
        };
        let t = load.run(8, id, seed.wrapping_add(round as u64 * 100));
        assert!(
            t.unknown.is_empty(),
            "requests failed: {:?}",
            &t.unknown[..1]
        );
        assert_eq!(t.reported as usize, t.accepted.len());
        assert_eq!(t.accepted.len() as i128, limit, "accepted events of {id}");
        assert!(t.rejected.len() >= 8 * 4, "every client saw rejections");
        assert_rejections(&t, &format!("calls month limit {limit} reached for {id}"));

        let t0_ms = ms(&t0);
        let bal = balance(&d, id, Some(LEVER));
        assert_eq!(bal["levers"].as_array().unwrap().len(), 3, "{bal}");
        let month = row(&bal, LEVER, "month");
        if let Some(u) = row_usage_at(&bal, "month", t0_ms) {
            assert_eq!(u, limit * UNIT, "{month}");
            assert_eq!(month["remaining"], "0", "{month}");
            assert_eq!(month["overage"], "0", "{month}");
            assert_eq!(month["has_access"], false, "{month}");
            assert_eq!(month["mode"], "hard", "{month}");
            assert_eq!(month["limit"], limit.to_string(), "{month}");
        }
        if let Some(u) = row_usage_at(&bal, "day", t0_ms) {
            assert_eq!(u, limit * UNIT, "{bal}");
        }
        let life = row(&bal, LEVER, "lifetime");
        assert_eq!(row_usage_at(&bal, "lifetime", t0_ms), Some(limit * UNIT));
        assert_eq!(
            dec_field(life, "overage"),
            (limit - 100).max(0) * UNIT,
            "{life}"
        );
        assert_eq!(life["has_access"], true, "soft: {life}");
        assert!(life.get("period_end").is_none(), "{life}");
        // The usage API over the whole month agrees.
        let (from, to) = expected_period("month", Tz::UTC, 0, t0_ms);
        assert_eq!(usage_total(&d, id, LEVER, from, to), limit * UNIT);
    }
}

/// 8 clients race for a decimal hard limit with values 0.25..5: usage never exceeds the
/// limit, equals the sum of acknowledged values, and no rejected event would have fitted.
/// One limit is not a multiple of 0.25, the other is (so it must be reached exactly).
#[test]
fn hammer_mixed_values_never_rejects_an_event_that_fits() {
    let d = start("");
    let seed = seed();
    for (round, (id, limit_text)) in [("mixed-a", "4321.1"), ("mixed-b", "123456.75")]
        .into_iter()
        .enumerate()
    {
        let limit = dec(limit_text);
        let plan_id = format!("metered-{round}");
        plan(&d, &plan_id, vec![quota("month", limit_text, "hard")]);
        contract(&d, id, json!({ "plan": plan_id }));
        let t0 = time_at(0);
        let (progress, stop) = (AtomicU64::new(0), AtomicBool::new(false));
        let load = Load {
            base: d.base.clone(),
            contracts: &[id],
            value: value_quarters,
            time: t0.clone(),
            quiet: 4,
            progress: &progress,
            stop: &stop,
        };
        let t = load.run(8, id, seed.wrapping_add(round as u64 * 100));
        assert!(t.unknown.is_empty(), "requests failed");
        assert_eq!(t.reported as usize, t.accepted.len());
        assert_rejections(
            &t,
            &format!("calls month limit {limit_text} reached for {id}"),
        );
        let used = t.accepted_value();
        assert!(used <= limit, "limit exceeded: {}", fmt_dec(used));

        let t0_ms = ms(&t0);
        let bal = balance(&d, id, None);
        let month = row(&bal, LEVER, "month");
        if let Some(u) = row_usage_at(&bal, "month", t0_ms) {
            assert_eq!(u, used, "balance vs acknowledged: {month}");
            assert_eq!(dec_field(month, "remaining"), limit - used, "{month}");
            assert_eq!(month["limit"], limit_text, "{month}");
        }
        assert_eq!(usage_near(&d, id, t0_ms), used, "usage API vs acknowledged");
        let smallest = t.rejected.iter().map(|(e, _)| e.value).min();
        let smallest = smallest.expect("rejections");
        assert!(
            smallest > limit - used,
            "{id}: an event of {} was rejected although {} remained",
            fmt_dec(smallest),
            fmt_dec(limit - used)
        );
    }
}

/// A reseller's hard limit is a pool shared by its children (which have larger or no
/// limits of their own): concurrent clients on the children use exactly the pool, the
/// rejections name the reseller, and every balance and usage figure agrees.
#[test]
fn parent_pool_is_shared_exactly_by_concurrent_children() {
    const POOL: i128 = 5_000;
    let d = Daemon::start();
    d.lever(LEVER, "count");
    plan(&d, "child-plan", vec![quota("lifetime", 1_000_000, "hard")]);
    contract(
        &d,
        "res",
        json!({"quotas": [quota("month", POOL as i64, "hard")]}),
    );
    contract(
        &d,
        "kid-a",
        json!({"parent": "res", "quotas": [quota("month", 10_000, "hard")]}),
    );
    contract(&d, "kid-b", json!({"parent": "res"}));
    contract(&d, "kid-c", json!({"parent": "res", "plan": "child-plan"}));
    let t0 = time_at(0);
    let (progress, stop) = (AtomicU64::new(0), AtomicBool::new(false));
    let kids = ["kid-a", "kid-b", "kid-c"];
    let load = Load {
        base: d.base.clone(),
        contracts: &kids,
        // Values are ignored by a count lever.
        value: value_quarters,
        time: t0.clone(),
        quiet: 4,
        progress: &progress,
        stop: &stop,
    };
    let t = load.run(6, "pool", seed());
    assert!(t.unknown.is_empty(), "requests failed");
    assert_eq!(t.reported as usize, t.accepted.len());
    assert_eq!(t.accepted.len() as i128, POOL, "accepted over all children");
    assert_rejections(&t, "calls month limit 5000 reached for res");

    let t0_ms = ms(&t0);
    let bal = balance(&d, "res", None);
    if let Some(u) = row_usage_at(&bal, "month", t0_ms) {
        assert_eq!(u, POOL * UNIT, "{bal}");
        assert_eq!(row(&bal, LEVER, "month")["has_access"], false, "{bal}");
    }
    let mut total = 0;
    for kid in kids {
        let acked = t.accepted.iter().filter(|e| e.contract == kid).count() as i128;
        assert!(acked > 0, "{kid} got nothing");
        assert_eq!(usage_near(&d, kid, t0_ms), acked * UNIT, "usage of {kid}");
        total += acked;
    }
    assert_eq!(total, POOL);
    // The children's own rows count their own events.
    let a = balance(&d, "kid-a", None);
    let acked_a = t.accepted.iter().filter(|e| e.contract == "kid-a").count() as i128;
    if let Some(u) = row_usage_at(&a, "month", t0_ms) {
        assert_eq!(u, acked_a * UNIT, "{a}");
        assert_eq!(a["levers"].as_array().unwrap().len(), 1, "{a}");
    }
    let acked_c = t.accepted.iter().filter(|e| e.contract == "kid-c").count() as i128;
    let c = balance(&d, "kid-c", None);
    assert_eq!(
        row_usage_at(&c, "lifetime", t0_ms),
        Some(acked_c * UNIT),
        "{c}"
    );
    assert_eq!(balance(&d, "kid-b", None)["levers"], json!([]));
}

/// kill -9 in the middle of a race for a hard limit, restart, race on: the usage equals
/// the limit exactly (balance and usage API), acknowledged events never exceed it, and
/// re-sending the ids of unanswered requests settles them exactly up to the limit.
#[test]
fn hard_limit_holds_exactly_across_kill9() {
    const LIMIT: i128 = 20_000;
    let seed = seed();
    let mut d = start("");
    // From a plan, so that the restarted daemon must also reload the plan's quotas.
    plan(&d, "crash-plan", vec![quota("month", LIMIT as i64, "hard")]);
    contract(&d, "crashy", json!({"plan": "crash-plan"}));
    let t0 = time_at(0);
    let t0_ms = ms(&t0);
    let (progress, stop) = (AtomicU64::new(0), AtomicBool::new(false));
    let mut load = Load {
        base: d.base.clone(),
        contracts: &["crashy"],
        value: value_one,
        time: t0.clone(),
        quiet: usize::MAX,
        progress: &progress,
        stop: &stop,
    };
    let first = std::thread::scope(|s| {
        let h = s.spawn(|| load.run(6, "c1", seed));
        let deadline = Instant::now() + Duration::from_secs(20);
        while progress.load(Ordering::SeqCst) < 6_000 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(2));
        }
        d.kill9();
        stop.store(true, Ordering::SeqCst);
        h.join().unwrap()
    });
    let acked1 = first.accepted.len() as i128;
    assert!(acked1 < LIMIT, "the kill came too late: {acked1} accepted");
    assert!(first.rejected.is_empty(), "rejected before the limit");
    d.restart();
    // Recovered usage: every acknowledged event, plus some of the unanswered ones.
    let bal = balance(&d, "crashy", None);
    let recovered = row_usage_at(&bal, "month", t0_ms);
    let recovered_usage = usage_near(&d, "crashy", t0_ms);
    let span = acked1 * UNIT..=(acked1 + first.unknown.len() as i128) * UNIT;
    assert!(
        span.contains(&recovered_usage),
        "usage API after restart: {recovered_usage}"
    );
    if let Some(u) = recovered {
        assert_eq!(u, recovered_usage, "balance vs usage API after restart");
    }

    stop.store(false, Ordering::SeqCst);
    load.base = d.base.clone();
    load.quiet = 4;
    let second = load.run(6, "c2", seed ^ 0x5eed);
    assert!(second.unknown.is_empty(), "requests failed after restart");
    assert_rejections(&second, "calls month limit 20000 reached for crashy");
    let acked = acked1 + second.accepted.len() as i128;
    assert!(acked <= LIMIT, "acknowledged {acked} > limit");
    let bal = balance(&d, "crashy", None);
    if let Some(u) = row_usage_at(&bal, "month", t0_ms) {
        assert_eq!(u, LIMIT * UNIT, "{bal}");
    }
    assert_eq!(usage_near(&d, "crashy", t0_ms), LIMIT * UNIT);

    // Unanswered ids are now duplicates (they were counted) or rejected (they were not):
    // together with the acknowledged ones they make up the limit exactly.
    let mut counted = 0i128;
    for chunk in first.unknown.chunks(500) {
        let body: Vec<Value> = chunk
            .iter()
            .map(|e| json!({"id": e.id, "contract": e.contract, "lever": LEVER, "value": 1, "time": t0}))
            .collect();
        let out = post(&d, Value::Array(body));
        assert_eq!(out["accepted"], 0, "{out}");
        counted += out["duplicates"].as_u64().unwrap() as i128;
    }
    assert_eq!(
        acked + counted,
        LIMIT,
        "acknowledged + recovered unanswered"
    );
}

/// A soft limit accepts beyond the limit and reports the overage; a hard limit on
/// another period of the same lever still rejects; a reseller's soft limit does not
/// block its children.
#[test]
fn soft_limits_accept_and_report_overage() {
    let d = start("");
    contract(
        &d,
        "soft",
        json!({"quotas": [quota("month", 10, "soft"), quota("lifetime", 13, "hard")]}),
    );
    let events: Vec<Value> = (0..13).map(|i| ev(&format!("s{i}"), "soft", 1)).collect();
    assert_counts(&post(&d, Value::Array(events)), 13, 0, 0);
    let out = post(&d, json!([ev("s13", "soft", 1)]));
    assert_counts(&out, 0, 0, 1);
    assert_quota_error(&out, 0, "calls lifetime limit 13 reached for soft");
    let bal = balance(&d, "soft", Some(LEVER));
    let m = row(&bal, LEVER, "month");
    assert_eq!(
        (&m["usage"], &m["limit"], &m["remaining"], &m["overage"]),
        (&json!("13"), &json!("10"), &json!("0"), &json!("3")),
        "{m}"
    );
    assert_eq!(
        (&m["mode"], &m["has_access"]),
        (&json!("soft"), &json!(true)),
        "{m}"
    );
    assert_eq!(m["granted"], "0", "{m}");
    let l = row(&bal, LEVER, "lifetime");
    assert_eq!(
        (&l["usage"], &l["remaining"]),
        (&json!("13"), &json!("0")),
        "{l}"
    );
    assert_eq!(
        (&l["overage"], &l["has_access"]),
        (&json!("0"), &json!(false)),
        "{l}"
    );

    // A soft pool: the children go past it, the parent reports the overage.
    contract(
        &d,
        "soft-res",
        json!({"quotas": [quota("month", "2.5", "soft")]}),
    );
    contract(&d, "soft-kid", json!({"parent": "soft-res"}));
    let out = post(
        &d,
        json!([
            ev("k1", "soft-kid", "1.5"),
            ev("k2", "soft-kid", 2),
            ev("k3", "soft-kid", "0.25")
        ]),
    );
    assert_counts(&out, 3, 0, 0);
    let m = row(&balance(&d, "soft-res", None), LEVER, "month").clone();
    assert_eq!(
        (
            &m["usage"],
            &m["overage"],
            &m["remaining"],
            &m["has_access"]
        ),
        (&json!("3.75"), &json!("1.25"), &json!("0"), &json!(true)),
        "{m}"
    );
}

/// `-1` is unlimited (number or string, in a plan or as a contract override of a plan's
/// hard limit) and a lever without quotas is never limited.
#[test]
fn unlimited_and_unquoted_levers_never_reject() {
    let d = start("");
    d.lever("free", "count");
    plan(
        &d,
        "unl",
        vec![quota("month", -1, "hard"), quota("lifetime", "-1", "hard")],
    );
    plan(&d, "tiny", vec![quota("month", 1, "hard")]);
    contract(&d, "unl", json!({"plan": "unl"}));
    contract(
        &d,
        "lifted",
        json!({"plan": "tiny", "quotas": [quota("month", -1, "hard")]}),
    );
    let big = "123456789012.5";
    for c in ["unl", "lifted"] {
        let mut events: Vec<Value> = (0..300).map(|i| ev(&format!("{c}-{i}"), c, big)).collect();
        events.extend((0..300).map(
            |i| json!({"id": format!("{c}-free-{i}"), "contract": c, "lever": "free", "value": 9}),
        ));
        assert_counts(&post(&d, Value::Array(events)), 600, 0, 0);
        let bal = balance(&d, c, None);
        let periods: &[&str] = if c == "unl" {
            &["month", "lifetime"]
        } else {
            &["month"]
        };
        assert_eq!(
            bal["levers"].as_array().unwrap().len(),
            periods.len(),
            "{bal}"
        );
        for p in periods {
            let r = row(&bal, LEVER, p);
            assert_eq!(r["limit"], "-1", "{r}");
            assert!(r["remaining"].is_null(), "{r}");
            assert_eq!(
                (&r["overage"], &r["has_access"]),
                (&json!("0"), &json!(true)),
                "{r}"
            );
            assert_eq!(dec_field(r, "usage"), 300 * dec(big), "{r}");
        }
        assert_eq!(balance(&d, c, Some("free"))["levers"], json!([]));
        let now = now_ms();
        assert_eq!(
            usage_total(&d, c, "free", now - 3_600_000, now + 60_000),
            300 * UNIT
        );
    }
}

/// Plan and contract quota changes apply to the very next event: raising a plan's limit
/// admits it, a contract override beats the plan (lower or higher), lowering an override
/// below the usage rejects and reports the overage, removing it restores the plan's.
#[test]
fn quota_changes_take_effect_on_the_next_event() {
    let d = start("");
    plan(&d, "basic", vec![quota("month", 3, "hard")]);
    contract(&d, "chg", json!({"plan": "basic"}));
    let mut n = 0;
    let mut send = |d: &Daemon| {
        n += 1;
        post(d, ev(&format!("chg-{n}"), "chg", 1))
    };
    for _ in 0..3 {
        assert_counts(&send(&d), 1, 0, 0);
    }
    let out = send(&d);
    assert_counts(&out, 0, 0, 1);
    assert_quota_error(&out, 0, "calls month limit 3 reached for chg");

    // Raise the plan's limit: the next event fits.
    plan(&d, "basic", vec![quota("month", 5, "hard")]);
    assert_counts(&send(&d), 1, 0, 0);
    let m = row(&balance(&d, "chg", None), LEVER, "month").clone();
    assert_eq!(
        (&m["limit"], &m["usage"], &m["remaining"]),
        (&json!("5"), &json!("4"), &json!("1")),
        "{m}"
    );

    // A contract override lower than the plan's wins.
    contract(
        &d,
        "chg",
        json!({"plan": "basic", "quotas": [quota("month", 4, "hard")]}),
    );
    let out = send(&d);
    assert_counts(&out, 0, 0, 1);
    assert_quota_error(&out, 0, "calls month limit 4 reached for chg");
    plan(
        &d,
        "basic",
        vec![quota("month", 200, "hard"), quota("lifetime", 100, "hard")],
    );
    let out = send(&d);
    assert_counts(&out, 0, 0, 1);
    assert_quota_error(&out, 0, "calls month limit 4 reached for chg");
    let bal = balance(&d, "chg", None);
    assert_eq!(bal["levers"].as_array().unwrap().len(), 2, "{bal}");
    assert_eq!(row(&bal, LEVER, "month")["limit"], "4", "{bal}");
    assert_eq!(row(&bal, LEVER, "lifetime")["usage"], "4", "{bal}");

    // Lowered below the usage: rejected, overage reported, no access.
    contract(
        &d,
        "chg",
        json!({"plan": "basic", "quotas": [quota("month", "2.5", "hard")]}),
    );
    let out = send(&d);
    assert_quota_error(&out, 0, "calls month limit 2.5 reached for chg");
    let m = row(&balance(&d, "chg", None), LEVER, "month").clone();
    assert_eq!(
        (
            &m["usage"],
            &m["remaining"],
            &m["overage"],
            &m["has_access"]
        ),
        (&json!("4"), &json!("0"), &json!("1.5"), &json!(false)),
        "{m}"
    );

    // A higher override also wins over the plan; removing it restores the plan's.
    contract(
        &d,
        "chg",
        json!({"plan": "basic", "quotas": [quota("month", 1000, "hard")]}),
    );
    assert_counts(&send(&d), 1, 0, 0);
    contract(&d, "chg", json!({"plan": "basic"}));
    let m = row(&balance(&d, "chg", None), LEVER, "month").clone();
    assert_eq!(
        (&m["limit"], &m["usage"]),
        (&json!("200"), &json!("5")),
        "{m}"
    );
    // The plan's lifetime limit of 100 binds after 95 more.
    let events: Vec<Value> = (0..96)
        .map(|i| ev(&format!("chg-bulk-{i}"), "chg", 1))
        .collect();
    let out = post(&d, Value::Array(events));
    assert_counts(&out, 95, 0, 1);
    assert_quota_error(&out, 95, "calls lifetime limit 100 reached for chg");
}

/// Re-parenting a contract keeps the usage it already has: its own hard limit still
/// counts the events accepted before the change, also when a reseller with pooled usage
/// gets a parent or a child leaves and rejoins it, and across a restart.
#[test]
fn reparenting_keeps_the_usage_of_a_contract() {
    let mut d = start("");
    contract(&d, "new-parent", json!({}));
    for c in ["orphan-1", "orphan-2", "orphan-3"] {
        let quotas = json!([quota("lifetime", 10, "hard")]);
        contract(&d, c, json!({ "quotas": quotas }));
        let events: Vec<Value> = (0..6).map(|i| ev(&format!("{c}-{i}"), c, 1)).collect();
        assert_counts(&post(&d, Value::Array(events)), 6, 0, 0);
        contract(&d, c, json!({"quotas": quotas, "parent": "new-parent"}));
        let l = row(&balance(&d, c, None), LEVER, "lifetime").clone();
        assert_eq!(
            l["usage"], "6",
            "{c} lost its usage when it got a parent: {l}"
        );
        let events: Vec<Value> = (6..11).map(|i| ev(&format!("{c}-{i}"), c, 1)).collect();
        let out = post(&d, Value::Array(events));
        assert_counts(&out, 4, 0, 1);
        assert_quota_error(&out, 4, &format!("calls lifetime limit 10 reached for {c}"));
    }

    // A reseller with pooled usage gets a parent itself, then a child leaves it: the
    // pool and the child keep their usage, across a restart too.
    let pool = json!([quota("lifetime", 10, "hard")]);
    contract(&d, "pool-1", json!({ "quotas": pool }));
    contract(&d, "grand-1", json!({}));
    contract(&d, "pool-kid", json!({"parent": "pool-1", "quotas": pool}));
    let events: Vec<Value> = (0..6)
        .map(|i| ev(&format!("pk-{i}"), "pool-kid", 1))
        .collect();
    assert_counts(&post(&d, Value::Array(events)), 6, 0, 0);
    contract(&d, "pool-1", json!({"quotas": pool, "parent": "grand-1"}));
    contract(&d, "pool-kid", json!({ "quotas": pool }));
    d.restart();
    for c in ["pool-1", "pool-kid"] {
        let l = row(&balance(&d, c, None), LEVER, "lifetime").clone();
        assert_eq!(l["usage"], "6", "{c} after re-parenting and restart: {l}");
    }
    contract(&d, "pool-kid", json!({"parent": "pool-1", "quotas": pool}));
    let events: Vec<Value> = (6..11)
        .map(|i| ev(&format!("pk-{i}"), "pool-kid", 1))
        .collect();
    let out = post(&d, Value::Array(events));
    assert_counts(&out, 4, 0, 1);
    let l = row(&balance(&d, "pool-1", None), LEVER, "lifetime").clone();
    assert_eq!(l["usage"], "10", "{l}");
}

/// A contract moves back and forth between two reseller pools while 6 clients post to
/// it: every event counts exactly once toward the contract and toward exactly one pool,
/// both pools fill up exactly, and that survives a restart.
#[test]
fn reparenting_under_load_counts_each_event_once() {
    let mut d = start("");
    let own = json!([quota("lifetime", 1_000_000, "hard")]);
    contract(
        &d,
        "pool-x",
        json!({"quotas": [quota("month", 3_000, "hard")]}),
    );
    contract(
        &d,
        "pool-y",
        json!({"quotas": [quota("month", 5_000, "hard")]}),
    );
    contract(&d, "roam", json!({"parent": "pool-x", "quotas": own}));
    let t0 = time_at(0);
    let t0_ms = ms(&t0);
    let (progress, stop, moving) = (
        AtomicU64::new(0),
        AtomicBool::new(false),
        AtomicBool::new(true),
    );
    let load = Load {
        base: d.base.clone(),
        contracts: &["roam"],
        value: value_one,
        time: t0.clone(),
        // Generous: a client must not give up while the other pool still has room.
        quiet: 40,
        progress: &progress,
        stop: &stop,
    };
    let (t, moves) = std::thread::scope(|s| {
        let mover = s.spawn(|| {
            let mut moves = 0u32;
            while moving.load(Ordering::SeqCst) {
                let parent = ["pool-y", "pool-x"][moves as usize % 2];
                contract(&d, "roam", json!({"parent": parent, "quotas": own}));
                moves += 1;
                std::thread::sleep(Duration::from_millis(2));
            }
            moves
        });
        let t = load.run(6, "roam", seed());
        moving.store(false, Ordering::SeqCst);
        (t, mover.join().unwrap())
    });
    println!("{moves} re-parentings");
    assert!(moves > 10, "only {moves} re-parentings");
    assert!(t.unknown.is_empty(), "requests failed");
    for (e, err) in &t.rejected {
        let m = err["message"].as_str().unwrap_or_default();
        assert!(
            m == "calls month limit 3000 reached for pool-x"
                || m == "calls month limit 5000 reached for pool-y",
            "{}: {err}",
            e.id
        );
    }
    assert_eq!(t.accepted.len(), 8_000, "accepted events");
    let check = |d: &Daemon, when: &str| {
        for (c, want) in [("pool-x", 3_000), ("pool-y", 5_000)] {
            if let Some(u) = row_usage_at(&balance(d, c, None), "month", t0_ms) {
                assert_eq!(u, want * UNIT, "{c} {when}");
            }
        }
        let l = row(&balance(d, "roam", None), LEVER, "lifetime").clone();
        assert_eq!(l["usage"], "8000", "roam {when}: {l}");
        assert_eq!(
            usage_near(d, "roam", t0_ms),
            8_000 * UNIT,
            "usage API {when}"
        );
    };
    check(&d, "after the load");
    d.restart();
    check(&d, "after a restart");
}

/// The deepest parent chain the admin API accepts (a contract under 8 ancestors) is
/// enforced up to its root, and every ancestor counts the leaf's events.
#[test]
fn deepest_parent_chain_enforces_the_root_limit() {
    let d = start("");
    contract(
        &d,
        "anc-8",
        json!({"quotas": [quota("lifetime", 5, "hard")]}),
    );
    for i in (1..8).rev() {
        let parent = format!("anc-{}", i + 1);
        let quotas = json!([quota("lifetime", 1000, "soft")]);
        contract(
            &d,
            &format!("anc-{i}"),
            json!({"parent": parent, "quotas": quotas}),
        );
    }
    contract(&d, "leaf", json!({"parent": "anc-1"}));
    let out = post(&d, ev("leaf-1", "leaf", 6));
    assert_eq!(
        out["rejected"], 1,
        "the root's limit was not applied to the leaf: {out}"
    );
    assert_quota_error(&out, 0, "calls lifetime limit 5 reached for anc-8");
    assert_counts(&post(&d, ev("leaf-2", "leaf", 3)), 1, 0, 0);
    for i in 1..=8 {
        let c = format!("anc-{i}");
        let l = row(&balance(&d, &c, None), LEVER, "lifetime").clone();
        assert_eq!(l["usage"], "3", "{c} does not count the leaf's event: {l}");
    }
    let out = post(&d, ev("anc-1-1", "anc-1", 3));
    assert_quota_error(&out, 0, "calls lifetime limit 5 reached for anc-8");
}

/// Re-parenting a contract that has children under a long chain must not make its
/// descendants escape the root's limit: either the admin API refuses the change (the
/// descendants would be deeper than allowed) or the root's limit still applies to them.
#[test]
fn reparenting_a_subtree_keeps_it_under_the_root_limit() {
    let d = start("");
    contract(
        &d,
        "top-8",
        json!({"quotas": [quota("lifetime", 5, "hard")]}),
    );
    for i in (1..8).rev() {
        let parent = format!("top-{}", i + 1);
        contract(&d, &format!("top-{i}"), json!({ "parent": parent }));
    }
    contract(&d, "sub", json!({}));
    contract(&d, "sub-leaf", json!({"parent": "sub"}));
    // `sub` gets 8 ancestors, which is allowed; `sub-leaf` would get 9.
    let (s, b) = d.req(
        "PUT",
        "/v1/contracts/sub",
        Some(ADMIN),
        Some(&json!({"customer": "cus_quota", "parent": "top-1"})),
    );
    if s == 400 {
        assert_eq!(b["code"], "invalid_request", "{b}");
        return;
    }
    assert_eq!(s, 200, "{b}");
    let out = post(&d, ev("sub-leaf-1", "sub-leaf", 6));
    assert_eq!(
        out["rejected"], 1,
        "sub-leaf (9 ancestors after re-parenting `sub`) escaped the root's limit: {out}"
    );
    assert_quota_error(&out, 0, "calls lifetime limit 5 reached for top-8");
}

/// Periods are computed in the contract's zone: day, week and month start at local
/// midnight, billing periods follow an anchor on the 31st (clamped to shorter months),
/// and an event late by less than the lateness counts toward the previous local day, not
/// today's.
#[test]
fn periods_follow_the_zone_and_the_anchor() {
    // A 3 h lateness lets an event land in the previous local day of a zone whose
    // midnight was a few minutes ago, whatever the time of the test.
    let d = start("lateness = \"3h\"");
    let high = |p: &str| quota(p, 1_000_000, "soft");
    let zones = [
        ("zoned-kol", "Asia/Kolkata", "2025-01-31T12:00:00+05:30"),
        ("zoned-akl", "Pacific/Auckland", "2024-10-31T00:00:00+13:00"),
        ("zoned-ny", "America/New_York", "2023-12-31T23:30:00-05:00"),
    ];
    for (id, tz, anchor) in zones {
        let c = contract(
            &d,
            id,
            json!({"timezone": tz, "anchor": anchor, "quotas": [
                high("day"), high("week"), high("month"), high("billing_period"), high("lifetime"),
            ]}),
        );
        let tz: Tz = tz.parse().unwrap();
        // Retry once if a boundary passes between the event and the balance.
        let mut checked = false;
        for attempt in 0..2 {
            let before = now_ms();
            assert_eq!(
                post(&d, ev(&format!("{id}-{attempt}"), id, 1))["accepted"],
                1
            );
            let bal = balance(&d, id, None);
            let after = now_ms();
            let expect = |k: &str, t: i64| expected_period(k, tz, ms(anchor), t);
            let kinds = ["day", "week", "month", "billing_period"];
            if kinds.iter().any(|k| expect(k, before) != expect(k, after)) {
                continue;
            }
            for k in kinds {
                let r = row(&bal, LEVER, k);
                let got = (
                    ms(r["period_start"].as_str().unwrap()),
                    ms(r["period_end"].as_str().unwrap()),
                );
                let want = expect(k, before);
                assert_eq!(
                    got,
                    want,
                    "{k} in {tz}: want {} {}: {r}",
                    iso(want.0),
                    iso(want.1)
                );
                assert!(r["period_start"].as_str().unwrap().ends_with('Z'), "{r}");
                if attempt == 0 {
                    assert_eq!(r["usage"], "1", "{r}");
                }
            }
            let life = row(&bal, LEVER, "lifetime");
            assert_eq!(life["period_start"], c["created_at"], "{life}");
            assert_eq!(dec_field(life, "usage"), (attempt + 1) * UNIT, "{life}");
            checked = true;
            break;
        }
        assert!(checked, "period boundaries kept moving");
    }

    // A whole-hour zone whose local midnight was 5 to 125 minutes ago.
    let now = now_ms();
    let (zone, midnight) = (-14..=12)
        .map(|h: i32| {
            let name = match h {
                0 => "Etc/GMT".to_string(),
                h if h < 0 => format!("Etc/GMT{h}"),
                h => format!("Etc/GMT+{h}"),
            };
            let tz: Tz = name.parse().unwrap();
            (name, expected_period("day", tz, 0, now).0)
        })
        .find(|(_, m)| (5 * 60_000..125 * 60_000).contains(&(now - m)))
        .expect("some zone's midnight was 5-125 minutes ago");
    contract(
        &d,
        "late",
        json!({"timezone": zone, "quotas": [quota("day", 5, "hard"), high("lifetime")]}),
    );
    let at = |id: &str, t: i64, v: i64| json!({"id": id, "contract": "late", "lever": LEVER, "value": v, "time": iso(t)});
    // Yesterday's period fills up on its own...
    assert_counts(
        &post(
            &d,
            json!([
                at("y1", midnight - 60_000, 3),
                at("y2", midnight - 30_000, 2)
            ]),
        ),
        2,
        0,
        0,
    );
    let out = post(&d, at("y3", midnight - 1, 1));
    assert_quota_error(&out, 0, "calls day limit 5 reached for late");
    let day = row(&balance(&d, "late", None), LEVER, "day").clone();
    assert_eq!(
        ms(day["period_start"].as_str().unwrap()),
        midnight,
        "{zone}: {day}"
    );
    assert_eq!(
        (&day["usage"], &day["remaining"]),
        (&json!("0"), &json!("5")),
        "{day}"
    );
    // ...and today's has its whole limit.
    let events: Vec<Value> = (0..6)
        .map(|i| at(&format!("t{i}"), midnight + i, 1))
        .collect();
    let out = post(&d, Value::Array(events));
    assert_counts(&out, 5, 0, 1);
    assert_quota_error(&out, 5, "calls day limit 5 reached for late");
    let bal = balance(&d, "late", None);
    assert_eq!(row(&bal, LEVER, "day")["usage"], "5", "{bal}");
    assert_eq!(row(&bal, LEVER, "lifetime")["usage"], "10", "{bal}");
}

/// Duplicates never consume quota, even with a different value, inside one request,
/// or when the limit is reached; a rejected id is not burnt.
#[test]
fn duplicates_never_consume_quota() {
    let d = start("");
    contract(&d, "dup", json!({"quotas": [quota("month", 10, "hard")]}));
    let first: Vec<Value> = (0..6).map(|i| ev(&format!("d{i}"), "dup", 1)).collect();
    assert_counts(&post(&d, Value::Array(first)), 6, 0, 0);
    let again: Vec<Value> = (0..6).map(|i| ev(&format!("d{i}"), "dup", 100)).collect();
    assert_counts(&post(&d, Value::Array(again.clone())), 0, 6, 0);
    let usage = |d: &Daemon| row(&balance(d, "dup", None), LEVER, "month")["usage"].clone();
    assert_eq!(usage(&d), "6");

    // A duplicate and a repeated id inside one request take nothing.
    let out = post(
        &d,
        json!([
            ev("d0", "dup", 4),
            ev("n1", "dup", 2),
            ev("n1", "dup", 2),
            ev("n2", "dup", 2)
        ]),
    );
    assert_counts(&out, 2, 2, 0);
    assert_eq!(usage(&d), "10");

    // Full: duplicates are still duplicates, not rejections, and change nothing.
    assert_counts(&post(&d, Value::Array(again)), 0, 6, 0);
    assert_counts(
        &post(&d, json!([ev("n1", "dup", 1), ev("n2", "dup", 0)])),
        0,
        2,
        0,
    );
    let out = post(&d, ev("n3", "dup", 1));
    assert_quota_error(&out, 0, "calls month limit 10 reached for dup");
    assert_eq!(usage(&d), "10");
    let now = now_ms();
    assert_eq!(usage_near(&d, "dup", now), 10 * UNIT);

    // The rejected id was not recorded: it is accepted once there is room.
    contract(&d, "dup", json!({"quotas": [quota("month", 11, "hard")]}));
    assert_counts(&post(&d, ev("n3", "dup", 1)), 1, 0, 0);
    assert_counts(&post(&d, ev("n3", "dup", 1)), 0, 1, 0);
    assert_eq!(usage(&d), "11");
    assert_eq!(usage_near(&d, "dup", now), 11 * UNIT);
}
