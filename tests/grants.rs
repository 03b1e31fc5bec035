//! Black-box tests of grants (top-up packs, SPEC 1, 3 and 5).
//!
//! Promises guarded:
//! - a grant is consumed only by usage beyond the limits of the contract's quotas on its
//!   lever: exactly `limit + amount` is admitted, the grant stays untouched while usage is
//!   within the limit, and a day/month/lifetime quota binding together charge a unit of
//!   a grant once, not once per period;
//! - grants are consumed earliest expiry first (never-expiring last; ties by
//!   `effective_at`, then id), an event may span several grants, and a grant counts only
//!   while it is in force at the event's time (`effective_at` inclusive, `expires_at`
//!   exclusive); what an expired grant covered stays covered;
//! - the limit plus grants is never exceeded and never refused while it had room, under
//!   8 concurrent clients with mixed batch sizes and decimal values;
//! - grant definitions and consumption survive `kill -9` and SIGTERM restarts, and
//!   enforcement continues exactly afterwards;
//! - a parent's grant extends its pool for all children, a child's grant only its own
//!   limit, and an event the pool refuses takes nothing from the child's grant;
//! - soft quotas take from grants too (an event at most its own value) and report the
//!   overage beyond limit plus grants while keeping access;
//! - the balance reports `granted` = consumed in the period + left of the grants in
//!   force, and `remaining` / `overage` from it; the grant view reports `consumed`,
//!   `remaining` and `status`;
//! - the admin API: validation of every field (status and code), idempotent repeats
//!   (201, then 200 with the stored grant, 409 on a different definition), at most 100
//!   grants not yet expired per contract (also under concurrent creation), paging in id
//!   byte order, roles and tenant isolation.
//!
//! Rerun a failing concurrent test with `METERD_SEED=<seed>`.

mod common;

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

use chrono::{DateTime, SecondsFormat, Utc};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

use common::{time_at, Daemon, ADMIN, INGEST, OTHER_ADMIN, OTHER_READ, READ};

const LEVER: &str = "calls";
/// Decimal values are handled as integers of 1e-9 units (the daemon's precision).
const UNIT: i128 = 1_000_000_000;
const MINUTE: i64 = 60_000;

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

fn seed() -> u64 {
    let seed = std::env::var("METERD_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random::<u64>);
    println!("seed = {seed} (rerun with METERD_SEED={seed})");
    seed
}

// ---------------------------------------------------------------------------------------
// API helpers

fn start() -> Daemon {
    let d = Daemon::start();
    d.lever(LEVER, "sum");
    d
}

#[track_caller]
fn put(d: &Daemon, path: &str, body: Value) -> Value {
    let (s, b) = d.req("PUT", path, Some(ADMIN), Some(&body));
    assert!(s == 200 || s == 201, "PUT {path}: {s} {b}");
    b
}

fn quota(period: &str, limit: impl Into<Value>, mode: &str) -> Value {
    json!({"lever": LEVER, "period": period, "limit": limit.into(), "mode": mode})
}

/// Creates or replaces a contract with extra body fields (`quotas`, `parent`, ...).
fn contract(d: &Daemon, id: &str, extra: Value) -> Value {
    let mut body = json!({"customer": "cus_grants"});
    for (k, v) in extra.as_object().expect("object") {
        body[k] = v.clone();
    }
    put(d, &format!("/v1/contracts/{id}"), body)
}

/// An event of `LEVER` at the receive time.
fn ev(id: &str, contract: &str, value: impl Into<Value>) -> Value {
    json!({"id": id, "contract": contract, "lever": LEVER, "value": value.into()})
}

/// An event of `LEVER` at `time`.
fn ev_at(id: &str, contract: &str, value: impl Into<Value>, time: &str) -> Value {
    json!({"id": id, "contract": contract, "lever": LEVER, "value": value.into(), "time": time})
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

/// Asserts that the event at `index` was rejected as `quota_exceeded` with one of
/// `messages`.
#[track_caller]
fn assert_quota_error(out: &Value, index: u64, messages: &[&str]) {
    let e = out["errors"]
        .as_array()
        .and_then(|es| es.iter().find(|e| e["index"] == index))
        .unwrap_or_else(|| panic!("no error at index {index}: {out}"));
    assert_eq!(e["code"], "quota_exceeded", "{out}");
    let m = e["message"].as_str().unwrap_or_default();
    assert!(messages.contains(&m), "unexpected message {m:?}: {out}");
}

/// Posts one event and asserts that it was accepted.
#[track_caller]
fn accept(d: &Daemon, event: Value) {
    assert_counts(&post(d, event), 1, 0, 0);
}

/// Posts one event and asserts that it was rejected as `quota_exceeded` with one of
/// `messages`.
#[track_caller]
fn refuse(d: &Daemon, event: Value, messages: &[&str]) {
    let out = post(d, event);
    assert_counts(&out, 0, 0, 1);
    assert_quota_error(&out, 0, messages);
}

#[track_caller]
fn balance(d: &Daemon, contract: &str) -> Value {
    let (s, b) = d.req(
        "GET",
        &format!("/v1/contracts/{contract}/balance?lever={LEVER}"),
        Some(READ),
        None,
    );
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["contract"], contract, "{b}");
    b
}

/// The balance row of `period`; panics unless there is exactly one.
#[track_caller]
fn row(bal: &Value, period: &str) -> Value {
    let rows: Vec<&Value> = bal["levers"]
        .as_array()
        .unwrap_or_else(|| panic!("no levers: {bal}"))
        .iter()
        .filter(|r| r["lever"] == LEVER && r["period"] == period)
        .collect();
    assert_eq!(rows.len(), 1, "one {LEVER}/{period} row expected: {bal}");
    rows[0].clone()
}

/// The month row of a balance if its period contains `t_ms` (`None` if the month rolled
/// over during the test).
#[track_caller]
fn month_row(bal: &Value, t_ms: i64) -> Option<Value> {
    let r = row(bal, "month");
    let start = ms(r["period_start"].as_str().unwrap());
    let end = ms(r["period_end"].as_str().unwrap());
    if start <= t_ms && t_ms < end {
        Some(r)
    } else {
        eprintln!("the month rolled over during the test; not checked: {r}");
        None
    }
}

/// Asserts `(usage, granted, remaining, overage, has_access)` of a balance row.
#[track_caller]
fn assert_row(r: &Value, usage: &str, granted: &str, remaining: &str, overage: &str, access: bool) {
    assert_eq!(
        (
            &r["usage"],
            &r["granted"],
            &r["remaining"],
            &r["overage"],
            &r["has_access"]
        ),
        (
            &json!(usage),
            &json!(granted),
            &json!(remaining),
            &json!(overage),
            &json!(access)
        ),
        "(usage, granted, remaining, overage, has_access) of {r}"
    );
}

/// A grant body for `LEVER`.
fn gbody(id: &str, amount: impl Into<Value>) -> Value {
    json!({"id": id, "lever": LEVER, "amount": amount.into()})
}

/// `gbody` with extra fields.
fn gbody_with(id: &str, amount: impl Into<Value>, extra: Value) -> Value {
    let mut b = gbody(id, amount);
    for (k, v) in extra.as_object().expect("object") {
        b[k] = v.clone();
    }
    b
}

fn post_grant(d: &Daemon, contract: &str, key: &str, body: &Value) -> (u16, Value) {
    d.req(
        "POST",
        &format!("/v1/contracts/{contract}/grants"),
        Some(key),
        Some(body),
    )
}

/// Creates a grant; asserts 201 and returns its view.
#[track_caller]
fn grant(d: &Daemon, contract: &str, body: Value) -> Value {
    let (s, v) = post_grant(d, contract, ADMIN, &body);
    assert_eq!(s, 201, "POST grant {body}: {v}");
    v
}

/// Every grant of a contract (following the cursor), with the read key.
#[track_caller]
fn grants(d: &Daemon, contract: &str) -> Vec<Value> {
    let mut out = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut path = format!("/v1/contracts/{contract}/grants?limit=1000");
        if let Some(c) = &cursor {
            path.push_str(&format!("&cursor={c}"));
        }
        let (s, b) = d.req("GET", &path, Some(READ), None);
        assert_eq!(s, 200, "{b}");
        out.extend(b["items"].as_array().expect("items").iter().cloned());
        match b["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => {
                assert!(b["next_cursor"].is_null(), "{b}");
                return out;
            }
        }
    }
}

/// The grants of a contract by id.
#[track_caller]
fn grants_by_id(d: &Daemon, contract: &str) -> BTreeMap<String, Value> {
    grants(d, contract)
        .into_iter()
        .map(|g| (g["id"].as_str().expect("id").to_string(), g))
        .collect()
}

/// Asserts `(consumed, remaining)` of grant `id`.
#[track_caller]
fn assert_grant(d: &Daemon, contract: &str, id: &str, consumed: &str, remaining: &str) {
    let all = grants_by_id(d, contract);
    let g = all
        .get(id)
        .unwrap_or_else(|| panic!("no grant {id} in {all:?}"));
    assert_eq!(
        (&g["consumed"], &g["remaining"]),
        (&json!(consumed), &json!(remaining)),
        "(consumed, remaining) of {g}"
    );
}

/// Asserts an RFC 9457 problem with the given status and code.
#[track_caller]
fn assert_problem(resp: &(u16, Value), status: u16, code: &str) {
    let (s, b) = resp;
    assert_eq!(*s, status, "{b}");
    assert_eq!(b["code"], code, "{b}");
    assert_eq!(b["status"], status, "{b}");
    for f in ["type", "title", "detail"] {
        assert!(b[f].is_string(), "problem without `{f}`: {b}");
    }
}

/// A whole-hour zone whose local midnight was 5-125 minutes ago, and that midnight (epoch
/// ms). With a 3 h lateness, events of the previous local day are still accepted.
fn recent_midnight() -> (String, i64) {
    const HOUR: i64 = 3_600_000;
    const DAY: i64 = 24 * HOUR;
    let now = now_ms();
    // Local time is UTC + `offset` hours; `Etc/GMT-5` is UTC+5.
    (-12i64..=14)
        .map(|offset| {
            let midnight = (now + offset * HOUR).div_euclid(DAY) * DAY - offset * HOUR;
            let zone = match offset {
                0 => "Etc/GMT".to_string(),
                o if o > 0 => format!("Etc/GMT-{o}"),
                o => format!("Etc/GMT+{}", -o),
            };
            (zone, midnight)
        })
        .find(|(_, m)| (5 * MINUTE..125 * MINUTE).contains(&(now - m)))
        .expect("some zone's midnight was 5-125 minutes ago")
}

// ---------------------------------------------------------------------------------------
// Tests

/// Exactly `limit + amount` is admitted; the grant is untouched while usage is within
/// the limit; a month and a lifetime quota binding at once charge each unit once; the
/// balance and the grant view agree at every step; the brief's worked example (values of
/// 2) and nano-unit grants.
#[test]
fn grant_is_consumed_only_beyond_the_limit() {
    let d = start();
    contract(
        &d,
        "topup",
        json!({"quotas": [quota("month", 10, "hard"), quota("lifetime", 10, "hard")]}),
    );
    let v = grant(
        &d,
        "topup",
        gbody_with("pack", 5, json!({"description": "order 42"})),
    );
    assert_eq!(
        (&v["contract"], &v["lever"], &v["amount"], &v["status"]),
        (
            &json!("topup"),
            &json!(LEVER),
            &json!("5"),
            &json!("active")
        ),
        "{v}"
    );
    assert_eq!(
        (&v["consumed"], &v["remaining"], &v["description"]),
        (&json!("0"), &json!("5"), &json!("order 42")),
        "{v}"
    );
    assert!(v.get("expires_at").is_none(), "never expires: {v}");
    assert!(
        (ms(v["effective_at"].as_str().unwrap()) - now_ms()).abs() < 60_000,
        "effective_at defaults to now: {v}"
    );
    // Events are timed after the grant's default start (its creation).
    let t0 = time_at(0);
    let t0_ms = ms(&t0);
    let full = [
        "calls month limit 10 reached for topup",
        "calls lifetime limit 10 reached for topup",
    ];
    for i in 0..10 {
        accept(&d, ev_at(&format!("topup-{i}"), "topup", 1, &t0));
        assert_grant(&d, "topup", "pack", "0", "5");
    }
    let bal = balance(&d, "topup");
    assert_row(&row(&bal, "lifetime"), "10", "5", "5", "0", true);
    if let Some(m) = month_row(&bal, t0_ms) {
        assert_row(&m, "10", "5", "5", "0", true);
    }
    for i in 10..15 {
        accept(&d, ev_at(&format!("topup-{i}"), "topup", 1, &t0));
        let used = (i - 9).to_string();
        let left = (14 - i).to_string();
        assert_grant(&d, "topup", "pack", &used, &left);
        let bal = balance(&d, "topup");
        // granted = consumed in the period + left of the grants in force = 5.
        assert_row(
            &row(&bal, "lifetime"),
            &(i + 1).to_string(),
            "5",
            &left,
            "0",
            i < 14,
        );
    }
    refuse(&d, ev_at("topup-15", "topup", 1, &t0), &full);
    refuse(&d, ev_at("topup-16", "topup", "0.000000001", &t0), &full);
    let bal = balance(&d, "topup");
    assert_row(&row(&bal, "lifetime"), "15", "5", "0", "0", false);
    if let Some(m) = month_row(&bal, t0_ms) {
        assert_row(&m, "15", "5", "0", "0", false);
    }
    let g = &grants(&d, "topup")[0];
    assert_eq!(
        (&g["consumed"], &g["remaining"], &g["status"]),
        (&json!("5"), &json!("0"), &json!("active")),
        "{g}"
    );

    // The worked example: month limit 10, grant 5, values of 2.
    contract(
        &d,
        "example",
        json!({"quotas": [quota("month", 10, "hard")]}),
    );
    grant(&d, "example", gbody("pack", "5"));
    let t0 = time_at(0);
    let events: Vec<Value> = (0..8)
        .map(|i| ev_at(&format!("ex-{i}"), "example", 2, &t0))
        .collect();
    let out = post(&d, Value::Array(events));
    assert_counts(&out, 7, 0, 1);
    let full = ["calls month limit 10 reached for example"];
    assert_quota_error(&out, 7, &full);
    assert_grant(&d, "example", "pack", "4", "1");
    if let Some(m) = month_row(&balance(&d, "example"), t0_ms) {
        assert_row(&m, "14", "5", "1", "0", true);
    }
    accept(&d, ev_at("ex-8", "example", 1, &t0));
    refuse(&d, ev_at("ex-9", "example", "0.5", &t0), &full);
    assert_grant(&d, "example", "pack", "5", "0");
    // A nano-unit grant admits exactly one nano-unit more.
    grant(&d, "example", gbody("dust", "0.000000001"));
    let t0 = time_at(0);
    let t0_ms = ms(&t0);
    refuse(&d, ev_at("ex-10", "example", "0.000000002", &t0), &full);
    accept(&d, ev_at("ex-11", "example", "0.000000001", &t0));
    refuse(&d, ev_at("ex-12", "example", "0.000000001", &t0), &full);
    assert_grant(&d, "example", "dust", "0.000000001", "0");
    if let Some(m) = month_row(&balance(&d, "example"), t0_ms) {
        assert_row(&m, "15.000000001", "5.000000001", "0", "0", false);
    }

    // A count lever: each event counts 1 whatever its value, against limit and grant.
    d.lever("hits", "count");
    contract(
        &d,
        "counted",
        json!({"quotas": [{"lever": "hits", "period": "lifetime", "limit": 3, "mode": "hard"}]}),
    );
    grant(
        &d,
        "counted",
        json!({"id": "pack", "lever": "hits", "amount": 2}),
    );
    let hit = |i: u32| json!({"id": format!("hit-{i}"), "contract": "counted", "lever": "hits", "value": 7});
    let out = post(&d, Value::Array((0..6).map(hit).collect()));
    assert_counts(&out, 5, 0, 1);
    assert_quota_error(&out, 5, &["hits lifetime limit 3 reached for counted"]);
    let g = &grants(&d, "counted")[0];
    assert_eq!(
        (&g["consumed"], &g["remaining"]),
        (&json!("2"), &json!("0")),
        "{g}"
    );
}

/// Grants are consumed earliest expiry first, never-expiring last, ties by
/// `effective_at` then id; one event can span two grants; a grant that is not yet in
/// force at the event's time is skipped, and used by an event whose time is inside it.
/// The list is in id byte order, not consumption order.
#[test]
fn earliest_expiry_is_consumed_first() {
    let d = start();
    contract(
        &d,
        "order",
        json!({"quotas": [quota("lifetime", 1, "hard")]}),
    );
    let base = now_ms() / 1000 * 1000;
    let (t1, t2) = (iso(base + 60 * MINUTE), iso(base + 120 * MINUTE));
    let pending_from = base + 2 * MINUTE;
    // Created in an order that is neither the id order nor the consumption order.
    grant(&d, "order", gbody("a-last", 2));
    grant(
        &d,
        "order",
        gbody_with(
            "p-third",
            2,
            json!({"effective_at": iso(base - 20 * MINUTE), "expires_at": t1}),
        ),
    );
    grant(
        &d,
        "order",
        gbody_with("c-fourth", 2, json!({"expires_at": t2})),
    );
    grant(
        &d,
        "order",
        gbody_with(
            "z-first",
            2,
            json!({"effective_at": iso(base - 30 * MINUTE), "expires_at": t1}),
        ),
    );
    grant(
        &d,
        "order",
        gbody_with(
            "k-second",
            2,
            json!({"effective_at": iso(base - 20 * MINUTE), "expires_at": t1}),
        ),
    );
    // Expires first of all, but is not in force yet.
    let pending = grant(
        &d,
        "order",
        gbody_with(
            "b-pending",
            5,
            json!({"effective_at": iso(pending_from), "expires_at": iso(pending_from + 10 * MINUTE)}),
        ),
    );
    assert_eq!(pending["status"], "pending", "{pending}");
    let ids = [
        "a-last",
        "b-pending",
        "c-fourth",
        "k-second",
        "p-third",
        "z-first",
    ];
    let check = |step: &str, want: [&str; 6]| {
        let list = grants(&d, "order");
        let got: Vec<&str> = list.iter().map(|g| g["id"].as_str().unwrap()).collect();
        assert_eq!(got, ids, "id order");
        for (g, w) in list.iter().zip(want) {
            assert_eq!(g["consumed"], w, "{step}: consumed of {g}");
        }
    };
    accept(&d, ev("o-0", "order", 1));
    check("within the limit", ["0", "0", "0", "0", "0", "0"]);
    let out = post(
        &d,
        json!([
            ev("o-1", "order", 1),
            ev("o-2", "order", 1),
            ev("o-3", "order", 1)
        ]),
    );
    assert_counts(&out, 3, 0, 0);
    check("3 beyond the limit", ["0", "0", "0", "1", "0", "2"]);
    accept(&d, ev("o-4", "order", 2));
    check(
        "an event spanning two grants",
        ["0", "0", "0", "2", "1", "2"],
    );
    accept(&d, ev("o-5", "order", 3));
    check("into the later expiry", ["0", "0", "2", "2", "2", "2"]);
    accept(&d, ev("o-6", "order", 2));
    check("never-expiring last", ["2", "0", "2", "2", "2", "2"]);
    let full = ["calls lifetime limit 1 reached for order"];
    refuse(&d, ev("o-7", "order", 1), &full);
    // Inside the pending grant's validity (2 minutes ahead), it is used.
    accept(&d, ev_at("o-8", "order", 1, &iso(pending_from + 1000)));
    check(
        "the pending grant at its time",
        ["2", "1", "2", "2", "2", "2"],
    );
    refuse(&d, ev("o-9", "order", 1), &full);
    let list = grants_by_id(&d, "order");
    assert_eq!(list["b-pending"]["status"], "pending");
    assert_eq!(list["b-pending"]["remaining"], "4");
    assert_eq!(list["z-first"]["status"], "active");
    assert_eq!(list["z-first"]["remaining"], "0");
    // granted = 11 consumed + 0 left of the grants in force now (the pending one is not).
    assert_row(
        &row(&balance(&d, "order"), "lifetime"),
        "12",
        "11",
        "0",
        "0",
        false,
    );
}

/// A grant counts only for events whose time is inside `[effective_at, expires_at)`:
/// not before, from its first millisecond, not from `expires_at` on; what it covered
/// stays covered after it expired, while what was left of it stops counting.
#[test]
fn grant_counts_only_while_in_force_by_event_time() {
    let d = start();
    contract(
        &d,
        "expiry",
        json!({"quotas": [quota("lifetime", 2, "hard")]}),
    );
    let base = now_ms() / 1000 * 1000;
    let (from, until) = (base - 30 * MINUTE, base - 10 * MINUTE);
    let v = grant(
        &d,
        "expiry",
        gbody_with(
            "window",
            3,
            json!({"effective_at": iso(from), "expires_at": iso(until)}),
        ),
    );
    assert_eq!(ms(v["effective_at"].as_str().unwrap()), from, "{v}");
    assert_eq!(ms(v["expires_at"].as_str().unwrap()), until, "{v}");
    assert_eq!(v["status"], "expired", "{v}");
    let full = ["calls lifetime limit 2 reached for expiry"];
    let at = |id: &str, t: i64| ev_at(id, "expiry", 1, &iso(t));

    // Before: only the limit.
    accept(&d, at("x-1", base - 40 * MINUTE));
    accept(&d, at("x-2", base - 40 * MINUTE));
    refuse(&d, at("x-3", base - 40 * MINUTE), &full);
    refuse(&d, at("x-4", from - 1), &full);
    assert_grant(&d, "expiry", "window", "0", "0");
    // During: from the first millisecond.
    accept(&d, at("x-5", from));
    accept(&d, at("x-6", base - 20 * MINUTE));
    assert_grant(&d, "expiry", "window", "2", "0");
    // From expires_at on, the 1 left of it no longer counts.
    refuse(&d, at("x-7", until), &full);
    refuse(&d, at("x-8", until + 1), &full);
    refuse(&d, at("x-9", base - 5 * MINUTE), &full);
    refuse(&d, ev("x-10", "expiry", 1), &full);
    // Its last millisecond still counts.
    accept(&d, at("x-11", until - 1));
    refuse(&d, at("x-12", until - 2), &full);
    let g = &grants(&d, "expiry")[0];
    assert_eq!(
        (&g["consumed"], &g["remaining"], &g["status"]),
        (&json!("3"), &json!("0"), &json!("expired")),
        "{g}"
    );
    // granted = 3 covered by the expired grant + nothing in force.
    assert_row(
        &row(&balance(&d, "expiry"), "lifetime"),
        "5",
        "3",
        "0",
        "0",
        false,
    );

    // A new grant in force from now: it does not cover an event before its start, and
    // what the expired grant covered stays covered (5 used <= 2 + 3 + 1).
    grant(&d, "expiry", gbody("later", 1));
    refuse(&d, at("x-13", base - 20 * MINUTE), &full);
    assert_row(
        &row(&balance(&d, "expiry"), "lifetime"),
        "5",
        "4",
        "1",
        "0",
        true,
    );
    accept(&d, ev("x-14", "expiry", 1));
    refuse(&d, ev("x-15", "expiry", 1), &full);
    assert_grant(&d, "expiry", "later", "1", "0");
    assert_grant(&d, "expiry", "window", "3", "0");
    assert_row(
        &row(&balance(&d, "expiry"), "lifetime"),
        "6",
        "4",
        "0",
        "0",
        false,
    );
}

/// 8 clients post batches of 1..50 events with values 0.5..2.5 to one contract with a
/// month and a lifetime hard limit of 20000 and two grants (6000 expiring, 8000.5
/// never): exactly 34000.5 is accepted, every event is accounted for, both grants are used up
/// exactly, and balance, grant views and usage agree.
#[test]
fn concurrent_clients_use_limit_plus_grants_exactly() {
    const CLIENTS: u64 = 8;
    let d = start();
    let seed = seed();
    contract(
        &d,
        "race",
        json!({"quotas": [quota("month", 20_000, "hard"), quota("lifetime", "20000", "hard")]}),
    );
    grant(
        &d,
        "race",
        gbody_with("soon", 6_000, json!({"expires_at": time_at(3_600_000)})),
    );
    grant(&d, "race", gbody("never", "8000.5"));
    let total = dec("34000.5");
    let t0 = time_at(0);
    let t0_ms = ms(&t0);
    let messages = [
        "calls month limit 20000 reached for race",
        "calls lifetime limit 20000 reached for race",
    ];
    let started = Instant::now();
    let deadline = started + Duration::from_secs(40);
    // Per client: (sent, accepted value, accepted count, rejected count, requests).
    let tallies: Vec<(u64, i128, u64, u64, u64)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..CLIENTS)
            .map(|c| {
                let (d, t0, messages) = (&d, &t0, &messages);
                s.spawn(move || {
                    let mut rng = StdRng::seed_from_u64(seed.wrapping_add(c));
                    let (mut sent, mut value, mut accepted, mut rejected, mut requests) =
                        (0u64, 0i128, 0u64, 0u64, 0u64);
                    let mut n = 0u64;
                    // Values are multiples of 0.5, as are the limit and the grants: once
                    // a 0.5 is refused, nothing is left.
                    let mut smallest_refused = false;
                    while !smallest_refused {
                        assert!(
                            Instant::now() < deadline,
                            "client {c}: still accepting after 40 s"
                        );
                        let size = rng.random_range(1..=50usize);
                        let halves: Vec<i128> =
                            (0..size).map(|_| rng.random_range(1..=5i128)).collect();
                        let body: Vec<Value> = halves
                            .iter()
                            .map(|h| {
                                n += 1;
                                let v = if rng.random_bool(0.5) {
                                    json!(fmt_dec(h * UNIT / 2))
                                } else {
                                    json!(*h as f64 / 2.0)
                                };
                                ev_at(&format!("race-{c}-{n}"), "race", v, t0)
                            })
                            .collect();
                        let out = post(d, Value::Array(body));
                        requests += 1;
                        sent += size as u64;
                        let errors = out["errors"].as_array().expect("errors");
                        let acc = out["accepted"].as_u64().expect("accepted");
                        assert_eq!(out["duplicates"], 0, "{out}");
                        assert_eq!(out["rejected"].as_u64(), Some(errors.len() as u64), "{out}");
                        assert_eq!(
                            acc as usize + errors.len(),
                            size,
                            "every event must be accounted for: {out}"
                        );
                        let mut refused = HashSet::new();
                        for e in errors {
                            let i = e["index"].as_u64().expect("index") as usize;
                            assert!(i < size && refused.insert(i), "bad index: {out}");
                            assert_eq!(e["code"], "quota_exceeded", "{out}");
                            let m = e["message"].as_str().unwrap_or_default();
                            assert!(messages.contains(&m), "{out}");
                            smallest_refused |= halves[i] == 1;
                        }
                        for (i, h) in halves.iter().enumerate() {
                            if !refused.contains(&i) {
                                value += h * UNIT / 2;
                            }
                        }
                        accepted += acc;
                        rejected += errors.len() as u64;
                    }
                    (sent, value, accepted, rejected, requests)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let sent: u64 = tallies.iter().map(|t| t.0).sum();
    let value: i128 = tallies.iter().map(|t| t.1).sum();
    let accepted: u64 = tallies.iter().map(|t| t.2).sum();
    let rejected: u64 = tallies.iter().map(|t| t.3).sum();
    let requests: u64 = tallies.iter().map(|t| t.4).sum();
    println!(
        "{requests} requests, {sent} events: {accepted} accepted ({}), {rejected} rejected in {:?}",
        fmt_dec(value),
        started.elapsed()
    );
    assert_eq!(accepted + rejected, sent);
    assert_eq!(fmt_dec(value), fmt_dec(total), "accepted value");

    let bal = balance(&d, "race");
    assert_row(
        &row(&bal, "lifetime"),
        "34000.5",
        "14000.5",
        "0",
        "0",
        false,
    );
    if let Some(m) = month_row(&bal, t0_ms) {
        assert_row(&m, "34000.5", "14000.5", "0", "0", false);
    }
    assert_grant(&d, "race", "soon", "6000", "0");
    assert_grant(&d, "race", "never", "8000.5", "0");
    let u = d.usage(
        "race",
        &format!(
            "lever={LEVER}&window=none&from={}&to={}",
            iso(t0_ms / MINUTE * MINUTE - 60 * MINUTE),
            iso((t0_ms / MINUTE + 61) * MINUTE)
        ),
    );
    assert_eq!(u["items"][0]["value"], "34000.5", "usage API: {u}");
}

/// kill -9 after part of the grants was consumed, and right after a grant was created;
/// then SIGTERM: grant definitions, consumption and balance are unchanged by each
/// restart, and enforcement continues exactly (no over-admission, no lost allowance).
#[test]
fn grants_and_consumption_survive_restarts() {
    let mut d = start();
    contract(
        &d,
        "durable",
        json!({"quotas": [quota("month", 10, "hard"), quota("lifetime", 10, "hard")]}),
    );
    grant(
        &d,
        "durable",
        gbody_with("soon", 3, json!({"expires_at": time_at(3_600_000)})),
    );
    grant(
        &d,
        "durable",
        gbody_with("never", 4, json!({"description": "order 7"})),
    );
    let full = [
        "calls month limit 10 reached for durable",
        "calls lifetime limit 10 reached for durable",
    ];
    // Events are timed after the grants' default start (their creation).
    let t0 = time_at(0);
    let t0_ms = ms(&t0);
    let mut n = 0;
    let mut batch = |k: usize, t: &str| -> Value {
        let events: Vec<Value> = (0..k)
            .map(|_| {
                n += 1;
                ev_at(&format!("dur-{n}"), "durable", 1, t)
            })
            .collect();
        Value::Array(events)
    };
    assert_counts(&post(&d, batch(12, &t0)), 12, 0, 0);
    let before = (grants(&d, "durable"), balance(&d, "durable"));
    assert_grant(&d, "durable", "soon", "2", "1");
    assert_row(&row(&before.1, "lifetime"), "12", "7", "5", "0", true);

    d.kill9();
    d.restart();
    assert_eq!(grants(&d, "durable"), before.0, "grants after kill -9");
    assert_eq!(balance(&d, "durable"), before.1, "balance after kill -9");
    let out = post(&d, batch(6, &t0));
    assert_counts(&out, 5, 0, 1);
    assert_quota_error(&out, 5, &full);
    assert_grant(&d, "durable", "soon", "3", "0");
    assert_grant(&d, "durable", "never", "4", "0");

    // A grant acknowledged with 201 survives a kill -9 that follows at once.
    let late = grant(&d, "durable", gbody("late", 2));
    d.kill9();
    d.restart();
    let all = grants_by_id(&d, "durable");
    assert_eq!(all["late"], late, "grant created just before kill -9");
    let t1 = time_at(0);
    let out = post(&d, batch(3, &t1));
    assert_counts(&out, 2, 0, 1);
    assert_quota_error(&out, 2, &full);
    let before = (grants(&d, "durable"), balance(&d, "durable"));
    assert_row(&row(&before.1, "lifetime"), "19", "9", "0", "0", false);
    if let Some(m) = month_row(&before.1, t0_ms) {
        assert_row(&m, "19", "9", "0", "0", false);
    }

    assert_eq!(d.terminate(), Some(0), "exit code after SIGTERM");
    d.restart();
    assert_eq!(grants(&d, "durable"), before.0, "grants after SIGTERM");
    assert_eq!(balance(&d, "durable"), before.1, "balance after SIGTERM");
    refuse(&d, ev_at("dur-extra", "durable", "0.5", &t0), &full);
    // Still immutable and idempotent after the restarts.
    let (s, v) = post_grant(
        &d,
        "durable",
        ADMIN,
        &gbody_with("never", 4, json!({"description": "order 7"})),
    );
    assert_eq!(s, 200, "{v}");
    assert_eq!(v, before.0[1], "the stored grant");
    let (s, v) = post_grant(&d, "durable", ADMIN, &gbody("never", 5));
    assert_problem(&(s, v), 409, "conflict");
}

/// A parent's grant extends the pool its children share; a child's grant extends only
/// the child's own limit; an event the pool refuses takes nothing from the child's grant.
#[test]
fn parent_grant_extends_the_shared_pool() {
    let d = start();
    contract(
        &d,
        "reseller",
        json!({"quotas": [quota("lifetime", 10, "hard")]}),
    );
    contract(&d, "kid-a", json!({"parent": "reseller"}));
    contract(
        &d,
        "kid-b",
        json!({"parent": "reseller", "quotas": [quota("lifetime", 4, "hard")]}),
    );
    contract(
        &d,
        "kid-c",
        json!({"parent": "reseller", "quotas": [quota("lifetime", 1, "hard")]}),
    );
    grant(&d, "reseller", gbody("pool-pack", 5));
    grant(&d, "kid-b", gbody("b-pack", 3));
    grant(&d, "kid-c", gbody("c-pack", 5));

    // kid-b: 4 of its own limit + 3 of its grant; the pool (7 <= 10) needs no grant.
    let events: Vec<Value> = (0..8).map(|i| ev(&format!("b-{i}"), "kid-b", 1)).collect();
    let out = post(&d, Value::Array(events));
    assert_counts(&out, 7, 0, 1);
    assert_quota_error(&out, 7, &["calls lifetime limit 4 reached for kid-b"]);
    assert_grant(&d, "kid-b", "b-pack", "3", "0");
    assert_grant(&d, "reseller", "pool-pack", "0", "5");

    // kid-a: 3 more within the pool, then 5 from the parent's grant.
    let events: Vec<Value> = (0..10).map(|i| ev(&format!("a-{i}"), "kid-a", 1)).collect();
    let out = post(&d, Value::Array(events));
    assert_counts(&out, 8, 0, 2);
    let pool_full = ["calls lifetime limit 10 reached for reseller"];
    assert_quota_error(&out, 8, &pool_full);
    assert_quota_error(&out, 9, &pool_full);
    assert_grant(&d, "reseller", "pool-pack", "5", "0");

    // kid-c would take 1 of its own grant, but the pool refuses: nothing is taken.
    refuse(&d, ev("c-0", "kid-c", 2), &pool_full);
    assert_grant(&d, "kid-c", "c-pack", "0", "5");
    assert_row(
        &row(&balance(&d, "kid-c"), "lifetime"),
        "0",
        "5",
        "6",
        "0",
        true,
    );

    assert_row(
        &row(&balance(&d, "reseller"), "lifetime"),
        "15",
        "5",
        "0",
        "0",
        false,
    );
    assert_row(
        &row(&balance(&d, "kid-b"), "lifetime"),
        "7",
        "3",
        "0",
        "0",
        false,
    );
    assert_eq!(balance(&d, "kid-a")["levers"], json!([]));

    // A new grant on the parent opens the pool again for every child.
    grant(&d, "reseller", gbody("pool-pack-2", 2));
    accept(&d, ev("a-10", "kid-a", 1));
    // The pool has 1 left: kid-c's event of 2 is refused (taking nothing from c-pack),
    // one of 1 fits (within kid-c's own limit, so c-pack is not needed).
    refuse(&d, ev("c-1", "kid-c", 2), &pool_full);
    accept(&d, ev("c-2", "kid-c", 1));
    refuse(&d, ev("a-11", "kid-a", 1), &pool_full);
    assert_grant(&d, "kid-c", "c-pack", "0", "5");
    assert_grant(&d, "reseller", "pool-pack-2", "2", "0");
    assert_row(
        &row(&balance(&d, "reseller"), "lifetime"),
        "17",
        "7",
        "0",
        "0",
        false,
    );
}

/// Each day period keeps its own grant consumption: a day that used part of a grant does
/// not lend its `granted` to the next day, whose limit comes first again, while the
/// lifetime row counts every unit taken once. Uses a whole-hour zone whose midnight was
/// 5-125 minutes ago and a 3 h lateness, so both days are reachable with event times.
#[test]
fn each_day_period_keeps_its_own_grant_consumption() {
    let d = Daemon::start_with("lateness = \"3h\"", "");
    d.lever(LEVER, "sum");
    let (zone, midnight) = recent_midnight();
    contract(
        &d,
        "daily",
        json!({"timezone": zone, "quotas": [quota("day", 2, "hard"), quota("lifetime", 100, "hard")]}),
    );
    grant(
        &d,
        "daily",
        gbody_with(
            "pack",
            3,
            json!({"effective_at": iso(midnight - 60 * MINUTE)}),
        ),
    );
    let full = ["calls day limit 2 reached for daily"];
    let at = |id: &str, t: i64| ev_at(id, "daily", 1, &iso(t));
    // Yesterday: 2 within the limit, 2 from the grant.
    for i in 0..4 {
        accept(&d, at(&format!("y-{i}"), midnight - 30 * MINUTE));
    }
    assert_grant(&d, "daily", "pack", "2", "1");
    // Today: the day's own limit first, the grant untouched.
    accept(&d, at("t-0", midnight));
    accept(&d, at("t-1", midnight + 1));
    assert_grant(&d, "daily", "pack", "2", "1");
    accept(&d, at("t-2", midnight + 2));
    assert_grant(&d, "daily", "pack", "3", "0");
    refuse(&d, at("t-3", midnight + 3), &full);
    refuse(&d, at("y-4", midnight - 1), &full);
    let bal = balance(&d, "daily");
    let day = row(&bal, "day");
    assert_eq!(
        ms(day["period_start"].as_str().unwrap()),
        midnight,
        "{zone}: {day}"
    );
    // Today: 1 covered today + nothing left.
    assert_row(&day, "3", "1", "0", "0", false);
    // Lifetime: 3 covered + nothing left; the limit is far.
    assert_row(&row(&bal, "lifetime"), "7", "3", "96", "0", true);
}

/// Retracting an event (`DELETE /v1/events/{id}`, SPEC 4.3) removes its contribution
/// from every period, but grant allowance it consumed is not given back (documented in
/// docs/billing.md: the event's record does not keep which grants covered it). This pins the
/// documented behaviour: the period's usage drops, the grant stays consumed.
#[test]
fn retracting_a_covered_event_keeps_its_grant_consumption() {
    let d = Daemon::start_with("lateness = \"3h\"", "");
    d.lever(LEVER, "sum");
    let (zone, midnight) = recent_midnight();
    contract(
        &d,
        "retract",
        json!({"timezone": zone, "quotas": [quota("day", 2, "hard")]}),
    );
    grant(
        &d,
        "retract",
        gbody_with(
            "pack",
            5,
            json!({"effective_at": iso(midnight - 60 * MINUTE)}),
        ),
    );
    // Yesterday: 2 within the limit, the third from the grant; then the third is retracted.
    for i in 0..3 {
        accept(
            &d,
            ev_at(
                &format!("r-{i}"),
                "retract",
                1,
                &iso(midnight - 30 * MINUTE),
            ),
        );
    }
    assert_grant(&d, "retract", "pack", "1", "4");
    let (s, b) = d.req("DELETE", "/v1/events/r-2", Some(ADMIN), None);
    assert_eq!(s, 200, "{b}");
    // The grant keeps the unit it covered: today has 2 of the day's limit and the 4
    // units left of the grant.
    assert_grant(&d, "retract", "pack", "1", "4");
    let events: Vec<Value> = (0..8)
        .map(|i| ev_at(&format!("t-{i}"), "retract", 1, &iso(midnight + i)))
        .collect();
    let out = post(&d, Value::Array(events));
    let consumed = grants(&d, "retract")[0]["consumed"].clone();
    assert_eq!(
        out["accepted"], 6,
        "today got {} of 2 + 4 (grant consumed {consumed}): {out}",
        out["accepted"]
    );
    assert_counts(&out, 6, 0, 2);
    assert_quota_error(&out, 6, &["calls day limit 2 reached for retract"]);
    assert_grant(&d, "retract", "pack", "5", "0");
}

/// A soft quota takes from grants and reports the overage beyond limit plus grants,
/// keeping access; an event takes at most its own value from grants.
#[test]
fn soft_quota_takes_grants_and_reports_overage() {
    let d = start();
    contract(
        &d,
        "soft",
        json!({"quotas": [quota("lifetime", 10, "soft")]}),
    );
    grant(&d, "soft", gbody("pack", 5));
    let events: Vec<Value> = (0..12).map(|i| ev(&format!("s-{i}"), "soft", 1)).collect();
    assert_counts(&post(&d, Value::Array(events)), 12, 0, 0);
    assert_grant(&d, "soft", "pack", "2", "3");
    assert_row(
        &row(&balance(&d, "soft"), "lifetime"),
        "12",
        "5",
        "3",
        "0",
        true,
    );
    let events: Vec<Value> = (12..20).map(|i| ev(&format!("s-{i}"), "soft", 1)).collect();
    assert_counts(&post(&d, Value::Array(events)), 8, 0, 0);
    assert_grant(&d, "soft", "pack", "5", "0");
    let r = row(&balance(&d, "soft"), "lifetime");
    assert_row(&r, "20", "5", "0", "5", true);
    assert_eq!(
        (&r["mode"], &r["limit"]),
        (&json!("soft"), &json!("10")),
        "{r}"
    );

    // Already 10 over the limit when a grant arrives: each event takes at most its own
    // value from it.
    contract(
        &d,
        "soft-late",
        json!({"quotas": [quota("lifetime", 10, "soft")]}),
    );
    accept(&d, ev("sl-0", "soft-late", 20));
    assert_row(
        &row(&balance(&d, "soft-late"), "lifetime"),
        "20",
        "0",
        "0",
        "10",
        true,
    );
    grant(&d, "soft-late", gbody("pack", 5));
    accept(&d, ev("sl-1", "soft-late", "1.5"));
    assert_grant(&d, "soft-late", "pack", "1.5", "3.5");
    accept(&d, ev("sl-2", "soft-late", 10));
    assert_grant(&d, "soft-late", "pack", "5", "0");
    assert_row(
        &row(&balance(&d, "soft-late"), "lifetime"),
        "31.5",
        "5",
        "0",
        "16.5",
        true,
    );
}

/// Every invalid body is refused with its status and code and creates nothing; the valid
/// edges are accepted.
#[test]
fn invalid_grants_are_refused() {
    let d = start();
    d.lever("hits", "count");
    d.lever("peak", "max");
    d.lever("last", "latest");
    contract(&d, "val", json!({}));
    let now = now_ms();
    let long = |n: usize| "x".repeat(n);
    let at = |field: &str, t: Value| gbody_with("g", 1, json!({ field: t }));
    let times = |eff: i64, exp: i64| {
        gbody_with(
            "g",
            1,
            json!({"effective_at": iso(eff), "expires_at": iso(exp)}),
        )
    };
    // Every invalid body is a 400 `invalid_request`.
    let cases: Vec<(&str, Value)> = vec![
        (
            "unknown lever",
            json!({"id": "g", "lever": "nope", "amount": 1}),
        ),
        (
            "max lever",
            json!({"id": "g", "lever": "peak", "amount": 1}),
        ),
        (
            "latest lever",
            json!({"id": "g", "lever": "last", "amount": 1}),
        ),
        ("amount 0", gbody("g", 0)),
        ("amount \"0\"", gbody("g", "0")),
        ("amount \"0.000\"", gbody("g", "0.000")),
        ("amount -1", gbody("g", -1)),
        ("amount \"-0.5\"", gbody("g", "-0.5")),
        ("amount garbage", gbody("g", "abc")),
        ("amount empty", gbody("g", "")),
        ("amount too precise", gbody("g", "0.0000000001")),
        ("amount of 19 digits", gbody("g", "1234567890123456789")),
        ("amount null", gbody("g", Value::Null)),
        ("amount bool", gbody("g", true)),
        ("amount missing", json!({"id": "g", "lever": LEVER})),
        ("lever missing", json!({"id": "g", "amount": 1})),
        ("id missing", json!({"lever": LEVER, "amount": 1})),
        ("id empty", gbody("", 1)),
        ("id with /", gbody("a/b", 1)),
        ("id with control", gbody("a\nb", 1)),
        ("id of 129 bytes", gbody(&long(129), 1)),
        (
            "effective_at garbage",
            at("effective_at", json!("yesterday")),
        ),
        (
            "effective_at date only",
            at("effective_at", json!("2030-01-01")),
        ),
        (
            "effective_at no offset",
            at("effective_at", json!("2030-01-01T00:00:00")),
        ),
        (
            "effective_at number",
            at("effective_at", json!(1_700_000_000)),
        ),
        ("expires_at garbage", at("expires_at", json!("tomorrow"))),
        (
            "expires_at == effective_at",
            times(now + MINUTE, now + MINUTE),
        ),
        ("expires_at < effective_at", times(now + MINUTE, now)),
        (
            "expires_at past, default start",
            at("expires_at", json!(iso(now - MINUTE))),
        ),
        (
            "description of 1025 bytes",
            at("description", json!(long(1025))),
        ),
        // 513 characters, 1026 bytes.
        (
            "description of 1026 UTF-8 bytes",
            at("description", json!("\u{e9}".repeat(513))),
        ),
        ("description number", at("description", json!(5))),
        ("unknown field", at("expires", json!(iso(now + MINUTE)))),
        ("array body", json!([gbody("g", 1)])),
        ("string body", json!("g")),
    ];
    for (name, body) in &cases {
        let resp = post_grant(&d, "val", ADMIN, body);
        assert_eq!(resp.0, 400, "{name}: {}", resp.1);
        assert_problem(&resp, 400, "invalid_request");
    }
    // Malformed JSON and wrong content types.
    for raw in [&b"{"[..], b"", b"{\"id\": \"g\",}", b"nul"] {
        let resp = d.raw(
            "/v1/contracts/val/grants",
            ADMIN,
            "application/json",
            raw.to_vec(),
        );
        assert_problem(&resp, 400, "malformed_body");
    }
    let body = serde_json::to_vec(&gbody("g", 1)).unwrap();
    let resp = d.raw(
        "/v1/contracts/val/grants",
        ADMIN,
        "text/plain",
        body.clone(),
    );
    assert_problem(&resp, 415, "unsupported_media_type");
    // Unknown contract, also for GET.
    let resp = post_grant(&d, "nope", ADMIN, &gbody("g", 1));
    assert_problem(&resp, 404, "not_found");
    let resp = d.req("GET", "/v1/contracts/nope/grants", Some(READ), None);
    assert_problem(&resp, 404, "not_found");
    assert!(grants(&d, "val").is_empty(), "a refused grant was stored");

    // The valid edges.
    grant(
        &d,
        "val",
        json!({"id": "count-lever", "lever": "hits", "amount": 1}),
    );
    grant(&d, "val", gbody(&long(128), "0.000000001"));
    grant(
        &d,
        "val",
        gbody("max-amount", "999999999999999999.999999999"),
    );
    grant(
        &d,
        "val",
        gbody_with("desc", 1, json!({"description": long(1024)})),
    );
    grant(
        &d,
        "val",
        gbody_with("desc-utf8", 1, json!({"description": "é".repeat(512)})),
    );
    let v = grant(
        &d,
        "val",
        gbody_with(
            "one-ms",
            1,
            json!({"effective_at": iso(now + MINUTE), "expires_at": iso(now + MINUTE + 1)}),
        ),
    );
    assert_eq!(v["status"], "pending", "{v}");
    let v = grant(
        &d,
        "val",
        gbody_with(
            "zoned",
            "2.50",
            json!({"effective_at": "2030-01-01T02:00:00+02:00"}),
        ),
    );
    assert_eq!(v["amount"], "2.5", "{v}");
    assert_eq!(
        ms(v["effective_at"].as_str().unwrap()),
        ms("2030-01-01T00:00:00Z"),
        "{v}"
    );
    assert!(v["effective_at"].as_str().unwrap().ends_with('Z'), "{v}");
    assert_eq!(grants(&d, "val").len(), 7);
    // Query parameters of the list.
    for q in [
        "limit=0",
        "limit=abc",
        "limit=1001",
        "cursor=%25%25",
        "foo=1",
    ] {
        let resp = d.req(
            "GET",
            &format!("/v1/contracts/val/grants?{q}"),
            Some(READ),
            None,
        );
        assert_problem(&resp, 400, "invalid_query");
    }
}

/// The same id and definition answers 200 with the stored grant (also without
/// `effective_at`, with an equal amount spelled differently, or with the stored
/// `effective_at`); any other definition is a 409 conflict and changes nothing; ids are
/// per contract.
#[test]
fn grant_posts_are_idempotent_and_grants_immutable() {
    let d = start();
    d.lever("other", "sum");
    contract(&d, "idem", json!({}));
    contract(&d, "idem-2", json!({}));
    let expires = iso(now_ms() / 1000 * 1000 + 60 * MINUTE);
    let body = gbody_with(
        "pack",
        5,
        json!({"expires_at": expires, "description": "d"}),
    );
    let first = grant(&d, "idem", body.clone());
    assert_eq!(
        ms(first["expires_at"].as_str().unwrap()),
        ms(&expires),
        "{first}"
    );
    assert_eq!(
        first["created_at"].as_str().map(ms),
        first["effective_at"].as_str().map(ms)
    );
    let same = |b: Value| {
        let (s, v) = post_grant(&d, "idem", ADMIN, &b);
        assert_eq!(s, 200, "{b}: {v}");
        assert_eq!(v, first, "the stored grant for {b}");
    };
    same(body.clone());
    same(gbody_with(
        "pack",
        "5",
        json!({"expires_at": expires, "description": "d"}),
    ));
    same(gbody_with(
        "pack",
        "5.000",
        json!({"expires_at": expires, "description": "d"}),
    ));
    same(gbody_with(
        "pack",
        5,
        json!({"expires_at": expires, "description": "d", "effective_at": first["effective_at"]}),
    ));
    let effective = ms(first["effective_at"].as_str().unwrap());
    let conflicts = [
        gbody_with(
            "pack",
            6,
            json!({"expires_at": expires, "description": "d"}),
        ),
        gbody_with(
            "pack",
            "5.000000001",
            json!({"expires_at": expires, "description": "d"}),
        ),
        json!({"id": "pack", "lever": "other", "amount": 5, "expires_at": expires, "description": "d"}),
        gbody_with(
            "pack",
            5,
            json!({"expires_at": iso(ms(&expires) + 1), "description": "d"}),
        ),
        gbody_with("pack", 5, json!({"description": "d"})),
        gbody_with(
            "pack",
            5,
            json!({"expires_at": expires, "description": "e"}),
        ),
        gbody_with("pack", 5, json!({"expires_at": expires})),
        gbody_with(
            "pack",
            5,
            json!({"expires_at": expires, "description": "d", "effective_at": iso(effective + 1000)}),
        ),
    ];
    for b in conflicts {
        let resp = post_grant(&d, "idem", ADMIN, &b);
        assert_problem(&resp, 409, "conflict");
    }
    let list = grants(&d, "idem");
    assert_eq!(
        list,
        vec![first.clone()],
        "conflicting posts changed the grant"
    );
    // An invalid body with an existing id is still invalid, not a conflict.
    let resp = post_grant(&d, "idem", ADMIN, &gbody("pack", 0));
    assert_problem(&resp, 400, "invalid_request");
    // Ids are per contract.
    let other = grant(&d, "idem-2", gbody("pack", 1));
    assert_eq!(other["amount"], "1");
    assert_eq!(grants(&d, "idem"), vec![first]);
}

/// An identical repeat of a POST stays idempotent (200 with the stored grant) after the
/// grant expired, also when `effective_at` is omitted in the repeat.
#[test]
fn identical_repeat_after_expiry_is_idempotent() {
    let d = start();
    contract(&d, "gone", json!({}));
    // Created in force, expires 1.5 s later, repeated identically afterwards.
    let body = gbody_with("short", 1, json!({"expires_at": time_at(1_500)}));
    let first = grant(&d, "gone", body.clone());
    // Created already expired, repeated without `effective_at`.
    let base = now_ms();
    let past = gbody_with(
        "past",
        1,
        json!({"effective_at": iso(base - 20 * MINUTE), "expires_at": iso(base - 10 * MINUTE)}),
    );
    let stored_past = grant(&d, "gone", past);
    std::thread::sleep(Duration::from_millis(2_000));
    let (s, v) = post_grant(&d, "gone", ADMIN, &body);
    assert_eq!(s, 200, "identical repeat after expiry: {v}");
    assert_eq!(v["created_at"], first["created_at"], "{v}");
    assert_eq!(v["status"], "expired", "{v}");
    let repeat = gbody_with("past", 1, json!({"expires_at": iso(base - 10 * MINUTE)}));
    let (s, v) = post_grant(&d, "gone", ADMIN, &repeat);
    assert_eq!(s, 200, "repeat without effective_at: {v}");
    assert_eq!(v, stored_past, "{v}");
}

/// At most 100 grants that have not expired per contract: expired grants do not count,
/// pending ones do; concurrent creation stops at exactly 100; a repeat of an existing
/// grant is still answered at the limit; a grant that expires frees its slot.
#[test]
fn at_most_100_open_grants_per_contract() {
    let d = start();
    contract(&d, "many", json!({}));
    let base = now_ms();
    // Already expired: does not count.
    grant(
        &d,
        "many",
        gbody_with(
            "expired",
            1,
            json!({"effective_at": iso(base - 20 * MINUTE), "expires_at": iso(base - 10 * MINUTE)}),
        ),
    );
    // Expires in 6 s: counts until then.
    let brief = grant(
        &d,
        "many",
        gbody_with("brief", 1, json!({"expires_at": time_at(6_000)})),
    );
    let brief_end = ms(brief["expires_at"].as_str().unwrap());
    // 8 clients race for the 99 slots left with 13 grants each (some pending).
    let results: Vec<(u16, Value)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..8)
            .map(|c| {
                let d = &d;
                s.spawn(move || {
                    (0..13)
                        .map(|i| {
                            let b = if i % 3 == 0 {
                                gbody_with(
                                    &format!("race-{c}-{i:02}"),
                                    1,
                                    json!({"effective_at": time_at(3_600_000)}),
                                )
                            } else {
                                gbody(&format!("race-{c}-{i:02}"), 1)
                            };
                            post_grant(d, "many", ADMIN, &b)
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    });
    assert!(
        now_ms() < brief_end - 500,
        "the race took too long to check the limit"
    );
    let created = results.iter().filter(|(s, _)| *s == 201).count();
    for r in results.iter().filter(|(s, _)| *s != 201) {
        assert_problem(r, 409, "limit_reached");
    }
    assert_eq!(created, 99, "grants created by the race");
    let all = grants(&d, "many");
    assert_eq!(all.len(), 101, "99 + brief + expired");
    let resp = post_grant(&d, "many", ADMIN, &gbody("one-more", 1));
    assert_problem(&resp, 409, "limit_reached");
    // A repeat of an existing grant (pending or active) is answered, not refused.
    for status in ["pending", "active"] {
        let existing = all
            .iter()
            .find(|g| g["status"] == status && g["id"].as_str().unwrap().starts_with("race-"))
            .unwrap_or_else(|| panic!("no {status} grant was created"));
        let (s, v) = post_grant(
            &d,
            "many",
            ADMIN,
            &gbody(existing["id"].as_str().unwrap(), 1),
        );
        assert_eq!(s, 200, "repeat at the limit: {v}");
        assert_eq!(&v, existing);
    }
    // Once `brief` expired, its slot is free.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (s, v) = post_grant(&d, "many", ADMIN, &gbody("one-more", 1));
        if s == 201 {
            assert!(
                now_ms() >= brief_end,
                "a slot was freed before `brief` expired"
            );
            break;
        }
        assert_problem(&(s, v), 409, "limit_reached");
        assert!(
            Instant::now() < deadline,
            "the slot of an expired grant was not freed"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let resp = post_grant(&d, "many", ADMIN, &gbody("two-more", 1));
    assert_problem(&resp, 409, "limit_reached");
    assert_eq!(grants(&d, "many").len(), 102);
    // Another contract has its own 100.
    contract(&d, "many-2", json!({}));
    grant(&d, "many-2", gbody("first", 1));
}

/// The list is in id byte order; `limit=2` with the cursor walks every grant once; grants
/// of contracts whose ids share a prefix are not mixed in.
#[test]
fn grants_list_pages_in_id_order() {
    let d = start();
    for c in ["pages", "page", "pages-2", "pagesx"] {
        contract(&d, c, json!({}));
    }
    let ids = ["b", "\u{fc}", "a-2", "A", "a-10", "_x"];
    for id in ids {
        grant(&d, "pages", gbody(id, 1));
    }
    for c in ["page", "pages-2", "pagesx"] {
        grant(&d, c, gbody("a-2", 2));
        grant(&d, c, gbody(&format!("{c}-only"), 2));
    }
    // Byte order: 'A' < '_' < 'a' < 'b' < "\u{fc}" (0xC3 0xBC).
    let want = ["A", "_x", "a-10", "a-2", "b", "\u{fc}"];
    let all = grants(&d, "pages");
    let got: Vec<&str> = all.iter().map(|g| g["id"].as_str().unwrap()).collect();
    assert_eq!(got, want);
    for g in &all {
        assert_eq!(
            (&g["contract"], &g["amount"]),
            (&json!("pages"), &json!("1")),
            "{g}"
        );
    }
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let path = match &cursor {
            Some(c) => format!("/v1/contracts/pages/grants?limit=2&cursor={c}"),
            None => "/v1/contracts/pages/grants?limit=2".to_string(),
        };
        let (s, b) = d.req("GET", &path, Some(ADMIN), None);
        assert_eq!(s, 200, "{b}");
        pages += 1;
        let items = b["items"].as_array().unwrap();
        assert!(items.len() <= 2, "{b}");
        seen.extend(items.iter().map(|g| g["id"].as_str().unwrap().to_string()));
        match b["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => {
                assert!(b["next_cursor"].is_null(), "{b}");
                break;
            }
        }
        assert!(pages < 10, "the cursor does not advance: {seen:?}");
    }
    assert_eq!(seen, want, "walked with limit=2");
    assert_eq!(pages, 3);
    let (s, b) = d.req("GET", "/v1/contracts/page/grants", Some(READ), None);
    assert_eq!(s, 200, "{b}");
    let got: Vec<&str> = b["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["id"].as_str().unwrap())
        .collect();
    assert_eq!(got, ["a-2", "page-only"]);
    assert!(b["next_cursor"].is_null(), "{b}");
    let page = |q: &str| {
        let (s, b) = d.req(
            "GET",
            &format!("/v1/contracts/pages/grants?{q}"),
            Some(READ),
            None,
        );
        assert_eq!(s, 200, "{b}");
        b
    };
    let b = page("limit=6");
    assert_eq!(b["items"].as_array().unwrap().len(), 6);
    assert!(b["next_cursor"].is_null(), "exactly one full page: {b}");
    let b = page("limit=5");
    assert_eq!(b["items"].as_array().unwrap().len(), 5);
    let cursor = b["next_cursor"].as_str().expect("a cursor after 5 of 6");
    let b = page(&format!("limit=5&cursor={cursor}"));
    assert_eq!(b["items"].as_array().unwrap().len(), 1, "{b}");
    assert_eq!(b["items"][0]["id"], "\u{fc}", "{b}");
    assert!(b["next_cursor"].is_null(), "{b}");
}

/// Roles: ingest keys may neither list nor create, read keys may only list, no key is
/// 401. Another tenant's keys see no such contract, and a same-named contract of their
/// own shows none of these grants.
#[test]
fn grant_roles_and_tenant_isolation() {
    let d = start();
    contract(&d, "mine", json!({}));
    let stored = grant(&d, "mine", gbody("pack", 3));
    let path = "/v1/contracts/mine/grants";
    let body = gbody("new", 1);
    assert_problem(&d.req("GET", path, Some(INGEST), None), 403, "forbidden");
    assert_problem(
        &d.req("POST", path, Some(INGEST), Some(&body)),
        403,
        "forbidden",
    );
    assert_problem(
        &d.req("POST", path, Some(READ), Some(&body)),
        403,
        "forbidden",
    );
    assert_problem(&d.req("GET", path, None, None), 401, "unauthorized");
    assert_problem(&d.req("POST", path, None, Some(&body)), 401, "unauthorized");
    let (s, b) = d.req("GET", path, Some(READ), None);
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["items"], json!([stored]));
    let (s, b) = d.req("GET", path, Some(ADMIN), None);
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["items"], json!([stored]));

    // The other tenant: no such contract, for reads and writes.
    assert_problem(
        &d.req("GET", path, Some(OTHER_READ), None),
        404,
        "not_found",
    );
    assert_problem(
        &d.req("GET", path, Some(OTHER_ADMIN), None),
        404,
        "not_found",
    );
    let other = json!({"id": "pack", "lever": LEVER, "amount": 99});
    assert_problem(
        &d.req("POST", path, Some(OTHER_ADMIN), Some(&other)),
        404,
        "not_found",
    );
    // With a contract and lever of the same names of its own, its grants are its own.
    let (s, b) = d.req(
        "PUT",
        "/v1/contracts/mine",
        Some(OTHER_ADMIN),
        Some(&json!({"customer": "cus_other"})),
    );
    assert!(s == 200 || s == 201, "{b}");
    let (s, b) = d.req("GET", path, Some(OTHER_READ), None);
    assert_eq!((s, &b["items"]), (200, &json!([])), "{b}");
    // Its tenant has no lever `calls` yet.
    assert_problem(
        &d.req("POST", path, Some(OTHER_ADMIN), Some(&other)),
        400,
        "invalid_request",
    );
    let (s, b) = d.req(
        "PUT",
        &format!("/v1/levers/{LEVER}"),
        Some(OTHER_ADMIN),
        Some(&json!({"aggregation": "sum", "unit": "u"})),
    );
    assert!(s == 200 || s == 201, "{b}");
    let (s, b) = d.req("POST", path, Some(OTHER_ADMIN), Some(&other));
    assert_eq!(s, 201, "same grant id in another tenant: {b}");
    assert_eq!(b["amount"], "99");
    let (_, b) = d.req("GET", path, Some(READ), None);
    assert_eq!(
        b["items"],
        json!([stored]),
        "the other tenant's grant leaked"
    );
}
