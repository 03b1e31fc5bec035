//! Billing pull in calendar windows (SPEC 4.1): `GET /v1/contracts/{c}/usage` with
//! `window=day|month|none` and `tz`.
//!
//! Promises guarded:
//! - a `day` / `month` row is the local calendar day / month of the query's zone (the
//!   contract's `timezone` by default, or `tz=`), reported as the UTC instants of its local
//!   midnights: 23-, 24-, 25- (and 23.5-) hour days around DST changes, whole- and
//!   sub-hour offsets (Kolkata +05:30, Kathmandu +05:45, Lord Howe's 30-minute DST);
//! - a row is a window whose start lies in `[from, to)`, its value is the exact decimal
//!   aggregate (sum, count, max, latest) of the events in it, per bucket with
//!   `group_by=bucket`, and `window=none` totals the minute windows starting in
//!   `[from, to)`; all of this holds with data still in memory, after a SIGTERM restart
//!   (read back from RocksDB rollups) and after a `kill -9` restart (journal replay);
//! - `tz` is validated and echoed; `lever` omitted lists every lever, sorted by name;
//! - `final` turns true exactly once `end + lateness` has passed.
//!
//! The randomized model test is seeded; rerun a failure with `METERD_SEED=<seed>`.

mod common;

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Datelike, Months, NaiveDate, Offset, SecondsFormat, TimeZone, Utc};
use chrono_tz::Tz;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

use common::{Daemon, INGEST};

/// Nano-units per whole unit.
const UNIT: i128 = 1_000_000_000;
const SECOND: i64 = 1_000;
const MINUTE: i64 = 60_000;
const HOUR: i64 = 3_600_000;
const DAY: i64 = 86_400_000;

/// Lateness of the model daemon: events up to 60 days old are accepted.
const MODEL_LATENESS_DAYS: i64 = 60;

// ---------------------------------------------------------------------------------------
// Time and decimal helpers.

fn now_ms() -> i64 {
    Utc::now().timestamp_millis()
}

fn datetime(ms: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(ms).expect("time in range")
}

/// Parses an RFC 3339 literal.
fn ms(s: &str) -> i64 {
    DateTime::parse_from_rfc3339(s)
        .unwrap_or_else(|e| panic!("{s}: {e}"))
        .timestamp_millis()
}

/// The server's time format: RFC 3339 UTC, milliseconds only when non-zero.
fn rfc3339(ms: i64) -> String {
    datetime(ms).to_rfc3339_opts(SecondsFormat::AutoSi, true)
}

/// A query parameter time (always with milliseconds).
fn param_time(ms: i64) -> String {
    datetime(ms).to_rfc3339_opts(SecondsFormat::Millis, true)
}

fn floor(t: i64, len: i64) -> i64 {
    t.div_euclid(len) * len
}

fn ceil(t: i64, len: i64) -> i64 {
    let f = floor(t, len);
    if f == t {
        f
    } else {
        f + len
    }
}

/// The server's decimal format: no trailing fractional zeros.
fn fmt_amount(nanos: i128) -> String {
    let int = nanos / UNIT;
    let mut frac = nanos % UNIT;
    if frac == 0 {
        return int.to_string();
    }
    let mut digits = 9;
    while frac % 10 == 0 {
        frac /= 10;
        digits -= 1;
    }
    format!("{int}.{frac:0digits$}")
}

fn quote(s: &str) -> String {
    serde_json::to_string(s).expect("string to JSON")
}

fn zone(name: &str) -> Tz {
    name.parse().unwrap_or_else(|e| panic!("zone {name}: {e}"))
}

/// The instant of local midnight starting `d` in `tz` (the zones used here always have
/// exactly one midnight per day).
fn local_midnight(tz: Tz, d: NaiveDate) -> i64 {
    match tz.from_local_datetime(&d.and_hms_opt(0, 0, 0).expect("midnight")) {
        chrono::LocalResult::Single(t) => t.timestamp_millis(),
        other => panic!("{tz}: midnight of {d} is {other:?}"),
    }
}

/// The local date of instant `t` in `tz`.
fn local_date(tz: Tz, t: i64) -> NaiveDate {
    datetime(t).with_timezone(&tz).date_naive()
}

/// Calendar windows of the model: day or month.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Win {
    Day,
    Month,
    /// One total over `[from, to)`.
    None,
}

impl Win {
    fn name(self) -> &'static str {
        match self {
            Win::Day => "day",
            Win::Month => "month",
            Win::None => "none",
        }
    }
}

/// The local calendar day or month of `tz` containing `t`: `[start, end)` in epoch ms.
fn calendar_window(win: Win, tz: Tz, t: i64) -> (i64, i64) {
    let d = local_date(tz, t);
    let (a, b) = match win {
        Win::Day => (d, d.succ_opt().expect("next day")),
        Win::Month => {
            let first = d.with_day(1).expect("first of month");
            (first, first + Months::new(1))
        }
        Win::None => unreachable!("no calendar window for window=none"),
    };
    let w = (local_midnight(tz, a), local_midnight(tz, b));
    assert!(w.0 <= t && t < w.1, "model window {w:?} of {t} in {tz}");
    w
}

/// UTC offset of `tz` at `t`, in seconds.
fn offset_s(tz: Tz, t: i64) -> i32 {
    datetime(t)
        .with_timezone(&tz)
        .offset()
        .fix()
        .local_minus_utc()
}

fn seed() -> u64 {
    let seed = std::env::var("METERD_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    println!("seed = {seed} (rerun with METERD_SEED={seed})");
    seed
}

/// A key's hex SHA-256, as written in `[[api_keys]]`.
fn sha_hex(k: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(k.as_bytes()))
}

/// GETs a usage query with `key`; returns (status, body).
fn usage_with(d: &Daemon, key: &str, contract: &str, query: &str) -> (u16, Value) {
    d.req(
        "GET",
        &format!("/v1/contracts/{contract}/usage?{query}"),
        Some(key),
        None,
    )
}

/// Creates a contract with an optional `timezone`, with `key` (admin of its tenant).
fn contract_in(d: &Daemon, key: &str, id: &str, tz: Option<&str>) {
    let mut body = json!({"customer": "cus_billing"});
    if let Some(z) = tz {
        body["timezone"] = json!(z);
    }
    let (s, b) = d.req(
        "PUT",
        &format!("/v1/contracts/{id}"),
        Some(key),
        Some(&body),
    );
    assert!(s == 200 || s == 201, "PUT contract {id}: {s} {b}");
}

/// Creates a lever with `key` (admin of its tenant).
fn lever_in(d: &Daemon, key: &str, name: &str, aggregation: &str) {
    let (s, b) = d.req(
        "PUT",
        &format!("/v1/levers/{name}"),
        Some(key),
        Some(&json!({"aggregation": aggregation, "unit": "u"})),
    );
    assert!(s == 200 || s == 201, "PUT lever {name}: {s} {b}");
}

/// Posts events with `key` and asserts that all of them were accepted.
fn post_all(d: &Daemon, key: &str, events: &Value) {
    let n = events.as_array().map_or(1, Vec::len) as u64;
    let (s, v) = d.req("POST", "/v1/events", Some(key), Some(events));
    assert_eq!(s, 200, "POST /v1/events: {v}");
    assert_eq!(
        (v["accepted"].as_u64(), v["rejected"].as_u64()),
        (Some(n), Some(0)),
        "every event must be accepted: {v}"
    );
}

// ---------------------------------------------------------------------------------------
// 1. Randomized model test.

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Agg {
    Sum,
    Count,
    Max,
    Latest,
}

impl Agg {
    fn as_str(self) -> &'static str {
        match self {
            Agg::Sum => "sum",
            Agg::Count => "count",
            Agg::Max => "max",
            Agg::Latest => "latest",
        }
    }
}

/// Levers, sorted by name (the order of rows when `lever` is omitted).
const LEVERS: [(&str, Agg); 4] = [
    ("calls", Agg::Sum),
    ("hits", Agg::Count),
    ("peak", Agg::Max),
    ("seats", Agg::Latest),
];

/// Contracts and their `timezone` (`None`: omitted, so UTC).
const CONTRACTS: [(&str, Option<&str>); 6] = [
    ("c-utc", None),
    ("c-berlin", Some("Europe/Berlin")),
    ("c-ny", Some("America/New_York")),
    ("c-kolkata", Some("Asia/Kolkata")),
    ("c-lordhowe", Some("Australia/Lord_Howe")),
    ("c-kathmandu", Some("Asia/Kathmandu")),
];

const ZONES: [&str; 6] = [
    "UTC",
    "Europe/Berlin",
    "America/New_York",
    "Asia/Kolkata",
    "Australia/Lord_Howe",
    "Asia/Kathmandu",
];

/// Sorted (absent bucket sorts first).
const BUCKETS: [&str; 3] = ["ap-south", "eu", "us"];

fn contract_tz(c: usize) -> Tz {
    zone(CONTRACTS[c].1.unwrap_or("UTC"))
}

#[derive(Clone, Debug)]
struct Ev {
    contract: usize,
    lever: usize,
    bucket: Option<usize>,
    time_ms: i64,
    /// Counted value in nano-units (one unit for `count`).
    nanos: i128,
    /// The JSON object sent.
    json: String,
}

/// Seeded workload generator.
struct Gen {
    rng: StdRng,
    /// Oldest and newest event time (exclusive).
    lo: i64,
    hi: i64,
    /// Times already used by `latest` events (distinct, so the winner is unambiguous).
    latest_times: HashSet<i64>,
    /// Ranges around DST transitions of every zone in `[lo, hi)`.
    dst: Vec<(i64, i64)>,
    /// Local midnights of the 1st of each month, every zone, in `[lo, hi)`.
    month_starts: Vec<i64>,
    ids: u64,
}

impl Gen {
    fn new(seed: u64, now: i64) -> Gen {
        let lo = now - 55 * DAY;
        let hi = now - MINUTE;
        let mut dst = Vec::new();
        let mut month_starts = Vec::new();
        for z in ZONES.map(zone) {
            let mut t = floor(lo, 15 * MINUTE);
            while t < hi {
                if offset_s(z, t) != offset_s(z, t + 15 * MINUTE) {
                    dst.push((t - HOUR, t + 2 * HOUR));
                }
                t += 15 * MINUTE;
            }
            let mut d = local_date(z, lo).with_day(1).expect("first");
            loop {
                let m = local_midnight(z, d);
                if m >= hi {
                    break;
                }
                if m > lo {
                    month_starts.push(m);
                }
                d = d + Months::new(1);
            }
        }
        println!(
            "model: {} DST transitions and {} local month starts in the event range",
            dst.len(),
            month_starts.len()
        );
        Gen {
            rng: StdRng::seed_from_u64(seed),
            lo,
            hi,
            latest_times: HashSet::new(),
            dst,
            month_starts,
            ids: 0,
        }
    }

    /// A local midnight of a random zone on a random day in the range.
    fn some_midnight(&mut self) -> i64 {
        let z = zone(ZONES[self.rng.random_range(0..ZONES.len())]);
        let days = self.rng.random_range(0..=56);
        let d = local_date(z, self.hi) - chrono::Days::new(days);
        local_midnight(z, d)
    }

    fn jitter(&mut self, max: i64) -> i64 {
        self.rng.random_range(-max..=max)
    }

    /// A random event time, concentrated around local midnights, month starts and DST
    /// changes.
    fn time(&mut self, latest: bool) -> i64 {
        loop {
            let t = match self.rng.random_range(0..100) {
                0..30 => self.rng.random_range(self.lo..self.hi),
                30..55 => self.some_midnight() + self.jitter(90 * SECOND),
                55..60 => {
                    // Exactly on a midnight or one millisecond before it.
                    self.some_midnight() - self.rng.random_range(0..=1)
                }
                60..68 => self.some_midnight() + self.jitter(3 * HOUR),
                68..85 if !self.dst.is_empty() => {
                    let (a, b) = self.dst[self.rng.random_range(0..self.dst.len())];
                    self.rng.random_range(a..b)
                }
                _ if !self.month_starts.is_empty() => {
                    let m = self.month_starts[self.rng.random_range(0..self.month_starts.len())];
                    m + self.jitter(2 * MINUTE)
                }
                _ => self.rng.random_range(self.lo..self.hi),
            };
            if t < self.lo || t >= self.hi {
                continue;
            }
            if latest && !self.latest_times.insert(t) {
                continue;
            }
            return t;
        }
    }

    /// A random value: JSON text (None: omitted, default 1) and nano-units.
    fn value(&mut self) -> (Option<String>, i128) {
        let (int, digits): (i128, u32) = match self.rng.random_range(0..100) {
            0..5 => return (None, UNIT),
            5..25 => (self.rng.random_range(0..1000), 0),
            25..55 => (
                self.rng.random_range(0..10_000),
                self.rng.random_range(1..=3),
            ),
            55..95 => (self.rng.random_range(0..1_000_000), 9),
            95..98 => (
                self.rng.random_range(0..1_000_000_000_000),
                self.rng.random_range(0..=9),
            ),
            _ => (0, self.rng.random_range(0..=9)),
        };
        let frac = if digits == 0 {
            0
        } else {
            self.rng.random_range(0..10i128.pow(digits))
        };
        let text = if digits == 0 {
            int.to_string()
        } else {
            format!("{int}.{frac:0w$}", w = digits as usize)
        };
        let nanos = int * UNIT + frac * 10i128.pow(9 - digits);
        let json = if self.rng.random_bool(0.5) {
            text
        } else {
            quote(&text)
        };
        (Some(json), nanos)
    }

    fn event(&mut self) -> Ev {
        self.ids += 1;
        let id = format!("ev-{}-{:08x}", self.ids, self.rng.random::<u32>());
        let contract = self.rng.random_range(0..CONTRACTS.len());
        let lever = self.rng.random_range(0..LEVERS.len());
        let agg = LEVERS[lever].1;
        let bucket = match self.rng.random_range(0..4) {
            0 => None,
            _ => Some(self.rng.random_range(0..BUCKETS.len())),
        };
        let time_ms = self.time(agg == Agg::Latest);
        let (value, nanos) = self.value();
        // Event times in UTC, in the contract's zone or in some other zone's offset.
        let dt = datetime(time_ms);
        let time = match self.rng.random_range(0..10) {
            0 => dt
                .with_timezone(&contract_tz(contract))
                .to_rfc3339_opts(SecondsFormat::Millis, false),
            1 => dt
                .with_timezone(&zone(ZONES[self.rng.random_range(0..ZONES.len())]))
                .to_rfc3339_opts(SecondsFormat::Millis, false),
            _ => dt.to_rfc3339_opts(SecondsFormat::Millis, true),
        };
        let mut json = format!(
            "{{\"id\":{},\"contract\":{},\"lever\":{},\"time\":{}",
            quote(&id),
            quote(CONTRACTS[contract].0),
            quote(LEVERS[lever].0),
            quote(&time)
        );
        if let Some(v) = value {
            json.push_str(&format!(",\"value\":{v}"));
        }
        if let Some(b) = bucket {
            json.push_str(&format!(",\"bucket\":{}", quote(BUCKETS[b])));
        }
        json.push('}');
        Ev {
            contract,
            lever,
            bucket,
            time_ms,
            nanos: if agg == Agg::Count { UNIT } else { nanos },
            json,
        }
    }
}

/// Posts `evs` in random batches from three client threads; every event must be accepted.
fn ingest(d: &Daemon, evs: &[Ev], rng: &mut StdRng, seed: u64) {
    let mut order: Vec<&Ev> = evs.iter().collect();
    order.shuffle(rng);
    let mut batches: Vec<Vec<&Ev>> = Vec::new();
    let mut rest = &order[..];
    while !rest.is_empty() {
        let n = rng.random_range(1..=300).min(rest.len());
        batches.push(rest[..n].to_vec());
        rest = &rest[n..];
    }
    let started = Instant::now();
    std::thread::scope(|s| {
        for part in 0..3 {
            let batches = &batches;
            s.spawn(move || {
                for b in batches.iter().skip(part).step_by(3) {
                    let body: Vec<&str> = b.iter().map(|e| e.json.as_str()).collect();
                    let body = format!("[{}]", body.join(","));
                    let (status, v) =
                        d.raw("/v1/events", INGEST, "application/json", body.into_bytes());
                    assert_eq!(status, 200, "seed {seed}: POST /v1/events: {v}");
                    assert_eq!(
                        (v["accepted"].as_u64(), v["rejected"].as_u64()),
                        (Some(b.len() as u64), Some(0)),
                        "seed {seed}: every event must be accepted: {v}"
                    );
                }
            });
        }
    });
    println!(
        "ingested {} events in {} batches in {} ms",
        evs.len(),
        batches.len(),
        started.elapsed().as_millis()
    );
}

#[derive(Clone, Copy)]
enum Acc {
    Sum(i128),
    Max(i128),
    Latest(i64, i128),
}

impl Acc {
    fn of(agg: Agg, e: &Ev) -> Acc {
        match agg {
            Agg::Sum | Agg::Count => Acc::Sum(e.nanos),
            Agg::Max => Acc::Max(e.nanos),
            Agg::Latest => Acc::Latest(e.time_ms, e.nanos),
        }
    }

    fn merge(self, o: Acc) -> Acc {
        match (self, o) {
            (Acc::Sum(a), Acc::Sum(b)) => Acc::Sum(a + b),
            (Acc::Max(a), Acc::Max(b)) => Acc::Max(a.max(b)),
            (Acc::Latest(ta, va), Acc::Latest(tb, vb)) => {
                assert_ne!(ta, tb, "latest times are distinct by construction");
                if tb > ta {
                    Acc::Latest(tb, vb)
                } else {
                    Acc::Latest(ta, va)
                }
            }
            _ => unreachable!("one aggregation per lever"),
        }
    }

    fn nanos(self) -> i128 {
        match self {
            Acc::Sum(v) | Acc::Max(v) | Acc::Latest(_, v) => v,
        }
    }
}

/// A usage query and the rows the model predicts for it.
struct Query {
    contract: usize,
    win: Win,
    /// Explicit `tz`; `None` uses the contract's zone.
    tz: Option<Tz>,
    from: i64,
    /// `None`: omitted (defaults to now).
    to: Option<i64>,
    group: bool,
    lever: Option<usize>,
}

impl Query {
    fn zone(&self) -> Tz {
        self.tz.unwrap_or_else(|| contract_tz(self.contract))
    }

    fn text(&self) -> String {
        let mut q = format!("from={}&window={}", param_time(self.from), self.win.name());
        if let Some(to) = self.to {
            q.push_str(&format!("&to={}", param_time(to)));
        }
        if let Some(z) = self.tz {
            q.push_str(&format!("&tz={}", z.name()));
        }
        if self.group {
            q.push_str("&group_by=bucket");
        }
        if let Some(l) = self.lever {
            q.push_str(&format!("&lever={}", LEVERS[l].0));
        }
        q
    }

    /// The rows the model predicts; `to` is the effective end of the range.
    fn expected(&self, evs: &[Ev], to: i64, now: i64, lateness: i64) -> Vec<Value> {
        let tz = self.zone();
        let mut rows = Vec::new();
        for (li, (name, agg)) in LEVERS.iter().enumerate() {
            if self.lever.is_some_and(|l| l != li) {
                continue;
            }
            // (start, bucket) -> (end, value)
            let mut acc: BTreeMap<(i64, Option<&str>), (i64, Acc)> = BTreeMap::new();
            for e in evs.iter().filter(|e| e.lever == li) {
                let (start, end) = match self.win {
                    Win::None => {
                        let m = floor(e.time_ms, MINUTE);
                        if m < ceil(self.from, MINUTE) || m >= ceil(to, MINUTE) {
                            continue;
                        }
                        (self.from, to)
                    }
                    w => {
                        let (s, end) = calendar_window(w, tz, e.time_ms);
                        if s < self.from || s >= to {
                            continue;
                        }
                        (s, end)
                    }
                };
                let bucket = if self.group {
                    e.bucket.map(|b| BUCKETS[b])
                } else {
                    None
                };
                let v = Acc::of(*agg, e);
                acc.entry((start, bucket))
                    .and_modify(|a| a.1 = a.1.merge(v))
                    .or_insert((end, v));
            }
            for ((start, bucket), (end, a)) in acc {
                let mut row = json!({
                    "lever": name,
                    "aggregation": agg.as_str(),
                    "start": rfc3339(start),
                    "end": rfc3339(end),
                    "value": fmt_amount(a.nanos()),
                    "final": end + lateness <= now,
                });
                if let Some(b) = bucket {
                    row["bucket"] = json!(b);
                }
                rows.push(row);
            }
        }
        rows
    }

    /// Runs the query and compares the whole answer with the model; returns the number
    /// of rows.
    fn check(&self, d: &Daemon, evs: &[Ev], label: &str, seed: u64) -> usize {
        let text = self.text();
        let contract = CONTRACTS[self.contract].0;
        let before = now_ms();
        let got = d.usage(contract, &text);
        let after = now_ms();
        let ctx = format!("seed {seed} [{label}] {contract} ?{text}");
        assert_eq!(got["contract"], json!(contract), "{ctx}");
        assert_eq!(got["window"], json!(self.win.name()), "{ctx}");
        assert_eq!(got["tz"], json!(self.zone().name()), "{ctx}");
        assert_eq!(got["from"], json!(rfc3339(self.from)), "{ctx}");
        let to = match self.to {
            Some(to) => {
                assert_eq!(got["to"], json!(rfc3339(to)), "{ctx}");
                to
            }
            None => {
                let to = got["to"]
                    .as_str()
                    .map(ms)
                    .unwrap_or_else(|| panic!("{ctx}: `to` missing: {got}"));
                assert!(
                    before <= to && to <= after + 1,
                    "{ctx}: default `to` {} is not the time of the request",
                    rfc3339(to)
                );
                to
            }
        };
        let items = got["items"].as_array().expect("items");
        let want = self.expected(evs, to, before, MODEL_LATENESS_DAYS * DAY);
        if *items != want {
            let i = items
                .iter()
                .zip(&want)
                .position(|(a, b)| a != b)
                .unwrap_or(items.len().min(want.len()));
            panic!(
                "{ctx}: {} rows, model {}; first difference at row {i}:\n  got   {}\n  model {}",
                items.len(),
                want.len(),
                items.get(i).map_or("-".into(), Value::to_string),
                want.get(i).map_or("-".into(), Value::to_string),
            );
        }
        want.len()
    }
}

/// A random bound for a calendar query in `tz`: arbitrary, exactly a window start, or
/// one millisecond / one minute off it.
fn calendar_bound(rng: &mut StdRng, win: Win, tz: Tz, t: i64) -> i64 {
    let start = calendar_window(win, tz, t).0;
    match rng.random_range(0..6) {
        0 | 1 => t,
        2 | 3 => start,
        4 => start + [-1, 1][rng.random_range(0..2)],
        _ => start + [-MINUTE, MINUTE][rng.random_range(0..2)],
    }
}

/// Checks day and month windows (contract zone and two other zones, with and without
/// buckets, all levers and one lever) over the whole range and random sub-ranges, plus
/// `window=none` totals over random ranges, for every contract.
fn check_all(d: &Daemon, evs: &[Ev], rng: &mut StdRng, label: &str, seed: u64) {
    let started = Instant::now();
    let now = now_ms();
    let full_from = floor(now - 58 * DAY, MINUTE);
    let (mut queries, mut rows) = (0, 0);
    for c in 0..CONTRACTS.len() {
        let cevs: Vec<Ev> = evs.iter().filter(|e| e.contract == c).cloned().collect();
        let ctz = contract_tz(c);
        let mut others: Vec<Tz> = ZONES.map(zone).into_iter().filter(|z| *z != ctz).collect();
        others.shuffle(rng);
        // The contract's zone, UTC (or Berlin for the UTC contract) and a random other.
        let second = if ctz == Tz::UTC {
            zone("Europe/Berlin")
        } else {
            Tz::UTC
        };
        others.retain(|z| *z != second);
        let tzs = [None, Some(second), Some(others[0])];
        for win in [Win::Day, Win::Month] {
            for tz in tzs {
                for group in [false, true] {
                    let lever = rng
                        .random_bool(0.5)
                        .then(|| rng.random_range(0..LEVERS.len()));
                    let full = Query {
                        contract: c,
                        win,
                        tz,
                        from: full_from,
                        to: Some(now + HOUR),
                        group,
                        lever,
                    };
                    rows += full.check(d, &cevs, label, seed);
                    let z = tz.unwrap_or(ctz);
                    for _ in 0..3 {
                        let t = rng.random_range(now - 57 * DAY..now);
                        let from = calendar_bound(rng, win, z, t);
                        let t = (from + rng.random_range(HOUR..40 * DAY)).min(now + HOUR);
                        let to = calendar_bound(rng, win, z, t);
                        if from >= to {
                            continue;
                        }
                        let sub = Query {
                            contract: c,
                            win,
                            tz,
                            from,
                            to: Some(to),
                            group: rng.random_bool(0.5),
                            lever: rng
                                .random_bool(0.3)
                                .then(|| rng.random_range(0..LEVERS.len())),
                        };
                        rows += sub.check(d, &cevs, label, seed);
                        queries += 1;
                    }
                    queries += 1;
                }
            }
        }
        // `to` omitted: it defaults to now.
        let q = Query {
            contract: c,
            win: Win::Day,
            tz: None,
            from: full_from,
            to: None,
            group: true,
            lever: None,
        };
        rows += q.check(d, &cevs, label, seed);
        queries += 1;
        // window=none over arbitrary ranges.
        for _ in 0..20 {
            let (from, to) = match rng.random_range(0..10) {
                0..3 => {
                    // Exactly one local day (or a few) of some zone.
                    let z = zone(ZONES[rng.random_range(0..ZONES.len())]);
                    let (s, _) =
                        calendar_window(Win::Day, z, rng.random_range(now - 56 * DAY..now));
                    let mut e = s;
                    for _ in 0..rng.random_range(1..=3) {
                        e = calendar_window(Win::Day, z, e).1;
                    }
                    (s, e)
                }
                3..9 => {
                    let from = floor(rng.random_range(now - 56 * DAY..now), MINUTE);
                    let len = if rng.random_bool(0.5) {
                        rng.random_range(1..=240) * MINUTE
                    } else {
                        rng.random_range(1..=40 * 24 * 60) * MINUTE
                    };
                    (from, from + len)
                }
                _ => {
                    // Unaligned bounds: minute windows starting in [from, to) count.
                    let from = rng.random_range(now - 56 * DAY..now);
                    (from, from + rng.random_range(1..20 * DAY))
                }
            };
            let q = Query {
                contract: c,
                win: Win::None,
                tz: rng
                    .random_bool(0.3)
                    .then(|| zone(ZONES[rng.random_range(0..ZONES.len())])),
                from,
                to: Some(to),
                group: rng.random_bool(0.5),
                lever: rng
                    .random_bool(0.3)
                    .then(|| rng.random_range(0..LEVERS.len())),
            };
            rows += q.check(d, &cevs, label, seed);
            queries += 1;
        }
    }
    println!(
        "[{label}] {queries} usage queries ({rows} rows) match the model ({} ms)",
        started.elapsed().as_millis()
    );
}

/// Top-level settings accepting events up to `days` old (dedupe and minute rows kept
/// longer than that, as the config requires).
fn late_config(days: i64) -> String {
    format!(
        "lateness = \"{days}d\"\ndedupe_retention = \"{}d\"\nretention_minute = \"{}d\"\n",
        days + 1,
        days + 1
    )
}

/// Starts a daemon like `Daemon::start_with(top, "")` but flushing to RocksDB only every
/// hour, so that until a SIGTERM every accepted event lives in memory (and the journal).
fn start_unflushed(top: &str) -> Daemon {
    let dir = Arc::new(tempfile::tempdir().expect("tempdir"));
    let config = dir.path().join("meterd.toml");
    let default = "flush_interval = \"200ms\"";
    let text = common::config_text(top, "");
    assert!(text.contains(default), "harness config changed: {text}");
    let text = text.replace(default, "flush_interval = \"1h\"");
    std::fs::write(&config, text).expect("write config");
    Daemon::spawn(dir, config)
}

/// Six contracts in six zones, four levers, 7,000 events over the last 55 days
/// (concentrated on local midnights, month starts and DST changes), checked in day and
/// month windows of the contract's zone and of other zones, and in `window=none` totals:
/// all in memory (no flush yet), after SIGTERM + restart (all read from RocksDB), with
/// more events in memory on top, and after kill -9 + restart (journal replay).
#[test]
fn calendar_windows_match_the_model_in_every_zone() {
    let started = Instant::now();
    let seed = seed();
    let mut rng = StdRng::seed_from_u64(seed ^ 0x5eed_b111);
    let mut d = start_unflushed(&late_config(MODEL_LATENESS_DAYS));
    for (name, agg) in LEVERS {
        d.lever(name, agg.as_str());
    }
    for (id, tz) in CONTRACTS {
        contract_in(&d, common::ADMIN, id, tz);
    }
    let mut g = Gen::new(seed, now_ms());
    let mut evs: Vec<Ev> = (0..6000).map(|_| g.event()).collect();
    ingest(&d, &evs, &mut rng, seed);
    check_all(&d, &evs, &mut rng, "in memory, unflushed", seed);

    // SIGTERM: final flush; everything is read back from RocksDB.
    assert_eq!(
        d.terminate(),
        Some(0),
        "clean exit on SIGTERM: {}",
        d.logs()
    );
    d.restart();
    check_all(&d, &evs, &mut rng, "after SIGTERM + restart", seed);

    // More events on top of the stored ones (in memory), then kill -9: they exist only
    // in the journal.
    let more: Vec<Ev> = (0..1000).map(|_| g.event()).collect();
    ingest(&d, &more, &mut rng, seed);
    evs.extend(more);
    check_all(&d, &evs, &mut rng, "stored + in memory", seed);
    d.kill9();
    d.restart();
    check_all(&d, &evs, &mut rng, "after kill -9 + restart", seed);
    println!("model test: {} ms in all", started.elapsed().as_millis());
}

// ---------------------------------------------------------------------------------------
// 2. Explicit calendar windows.

/// The rows of a usage answer as (start, end, value), after checking `window` and `tz`.
fn rows_of(v: &Value, window: &str, tz: &str) -> Vec<(String, String, String)> {
    assert_eq!(v["window"], json!(window), "{v}");
    assert_eq!(v["tz"], json!(tz), "{v}");
    v["items"]
        .as_array()
        .unwrap_or_else(|| panic!("items: {v}"))
        .iter()
        .map(|r| {
            let s = |k: &str| {
                r[k].as_str()
                    .unwrap_or_else(|| panic!("{k}: {r}"))
                    .to_string()
            };
            (s("start"), s("end"), s("value"))
        })
        .collect()
}

fn row(start: &str, end: &str, value: &str) -> (String, String, String) {
    (start.into(), end.into(), value.into())
}

/// Asserts that the test's literal window `[start, end)` is what chrono-tz says the
/// calendar `win` of `zone` containing `start` is (a check of the test itself).
fn literal_is_calendar(win: Win, zone_name: &str, start: &str, end: &str) {
    assert_eq!(
        calendar_window(win, zone(zone_name), ms(start)),
        (ms(start), ms(end)),
        "test literal: {zone_name} {win:?} [{start}, {end})"
    );
}

/// Posts `(contract, time, value)` events on lever `calls` (sum).
fn post_sums(d: &Daemon, tag: &str, evs: &[(&str, &str, &str)]) {
    let body: Vec<Value> = evs
        .iter()
        .enumerate()
        .map(|(i, (c, t, v))| {
            json!({"id": format!("{tag}-{i}"), "contract": c, "lever": "calls",
                   "time": t, "value": v})
        })
        .collect();
    post_all(d, INGEST, &Value::Array(body));
}

/// Checks every explicit window; run before and after a restart.
fn check_explicit(d: &Daemon, label: &str) {
    let q = |c: &str, query: &str| d.usage(c, &format!("{query}&lever=calls"));
    // Berlin leaves DST on 2026-10-25: a 25-hour day, 2026-10-24T22:00Z..2026-10-25T23:00Z.
    let day = "window=day&from=2026-10-24T22:00:00Z&to=2026-10-25T23:00:00Z";
    assert_eq!(
        rows_of(&q("berlin", day), "day", "Europe/Berlin"),
        [row("2026-10-24T22:00:00Z", "2026-10-25T23:00:00Z", "11.75")],
        "[{label}] Berlin's 25-hour day 2026-10-25"
    );
    // The day of 2026-10-24 starts before `from` (2026-10-23T22:00Z): not listed.
    let days = "window=day&from=2026-10-24T00:00:00Z&to=2026-10-27T00:00:00Z";
    assert_eq!(
        rows_of(&q("berlin", days), "day", "Europe/Berlin"),
        [
            row("2026-10-24T22:00:00Z", "2026-10-25T23:00:00Z", "11.75"),
            row("2026-10-25T23:00:00Z", "2026-10-26T23:00:00Z", "16"),
        ],
        "[{label}] Berlin days around 2026-10-25"
    );
    assert_eq!(
        rows_of(&q("berlin", &format!("{days}&tz=UTC")), "day", "UTC"),
        [
            row("2026-10-24T00:00:00Z", "2026-10-25T00:00:00Z", "12"),
            row("2026-10-25T00:00:00Z", "2026-10-26T00:00:00Z", "19.75"),
        ],
        "[{label}] the same events in UTC days (tz=UTC)"
    );
    assert_eq!(
        rows_of(
            &q(
                "berlin",
                "window=none&from=2026-10-24T22:00:00Z&to=2026-10-25T23:00:00Z"
            ),
            "none",
            "Europe/Berlin"
        ),
        [row("2026-10-24T22:00:00Z", "2026-10-25T23:00:00Z", "11.75")],
        "[{label}] window=none over Berlin's 2026-10-25"
    );

    // 2026-10-31T23:30Z is local 00:30 on Nov 1 in Berlin: November there, October in UTC.
    let months = "window=month&from=2026-09-01T00:00:00Z&to=2026-12-01T00:00:00Z";
    assert_eq!(
        rows_of(&q("berlin-m", months), "month", "Europe/Berlin"),
        [
            row("2026-09-30T22:00:00Z", "2026-10-31T23:00:00Z", "1"),
            row("2026-10-31T23:00:00Z", "2026-11-30T23:00:00Z", "7"),
        ],
        "[{label}] Berlin months"
    );
    assert_eq!(
        rows_of(&q("berlin-m", &format!("{months}&tz=UTC")), "month", "UTC"),
        [row("2026-10-01T00:00:00Z", "2026-11-01T00:00:00Z", "8")],
        "[{label}] the Berlin contract's events in UTC months"
    );
    assert_eq!(
        rows_of(&q("utc-m", months), "month", "UTC"),
        [row("2026-10-01T00:00:00Z", "2026-11-01T00:00:00Z", "7")],
        "[{label}] UTC months"
    );
    assert_eq!(
        rows_of(
            &q("utc-m", &format!("{months}&tz=Europe/Berlin")),
            "month",
            "Europe/Berlin"
        ),
        [row("2026-10-31T23:00:00Z", "2026-11-30T23:00:00Z", "7")],
        "[{label}] the UTC contract's event in Berlin months (tz=Europe/Berlin)"
    );
    assert_eq!(
        rows_of(
            &q(
                "berlin-m",
                "window=day&from=2026-10-31T00:00:00Z&to=2026-11-02T00:00:00Z"
            ),
            "day",
            "Europe/Berlin"
        ),
        [row("2026-10-31T23:00:00Z", "2026-11-01T23:00:00Z", "7")],
        "[{label}] Berlin day of 2026-11-01"
    );

    // New York: November 2026 runs 2026-11-01T04:00Z..2026-12-01T05:00Z; Nov 1 is 25 h.
    let months = "window=month&from=2026-10-01T00:00:00Z&to=2026-12-01T00:00:00Z";
    assert_eq!(
        rows_of(&q("ny", months), "month", "America/New_York"),
        [
            row("2026-10-01T04:00:00Z", "2026-11-01T04:00:00Z", "5"),
            row("2026-11-01T04:00:00Z", "2026-12-01T05:00:00Z", "103.626"),
        ],
        "[{label}] New York months"
    );
    let days = "window=day&from=2026-11-01T04:00:00Z&to=2026-11-02T05:00:00.001Z";
    assert_eq!(
        rows_of(&q("ny", days), "day", "America/New_York"),
        [
            row("2026-11-01T04:00:00Z", "2026-11-02T05:00:00Z", "3.626"),
            row("2026-11-02T05:00:00Z", "2026-11-03T05:00:00Z", "100"),
        ],
        "[{label}] New York's 25-hour day 2026-11-01"
    );

    // Lord Howe enters DST (+10:30 -> +11:00) on 2026-10-04: a 23.5-hour day.
    assert_eq!(
        rows_of(
            &q(
                "lhw",
                "window=day&from=2026-10-03T13:30:00Z&to=2026-10-04T13:00:00Z"
            ),
            "day",
            "Australia/Lord_Howe"
        ),
        [row("2026-10-03T13:30:00Z", "2026-10-04T13:00:00Z", "30")],
        "[{label}] Lord Howe's 23.5-hour day 2026-10-04"
    );
    // Kathmandu (+05:45) days start at 18:15Z.
    assert_eq!(
        rows_of(
            &q(
                "ktm",
                "window=day&from=2026-11-09T18:00:00Z&to=2026-11-10T18:15:00Z"
            ),
            "day",
            "Asia/Kathmandu"
        ),
        [row("2026-11-09T18:15:00Z", "2026-11-10T18:15:00Z", "6")],
        "[{label}] Kathmandu day 2026-11-10"
    );
    // Kolkata (+05:30) months start at 18:30Z.
    assert_eq!(
        rows_of(
            &q(
                "kol",
                "window=month&from=2026-10-31T18:30:00Z&to=2026-11-30T18:30:00Z"
            ),
            "month",
            "Asia/Kolkata"
        ),
        [row("2026-10-31T18:30:00Z", "2026-11-30T18:30:00Z", "6")],
        "[{label}] Kolkata November"
    );
}

/// The oldest event time used by the explicit test.
const EXPLICIT_OLDEST: &str = "2026-09-30T00:00:00Z";

/// Day and month windows with known UTC limits: DST days of 25 and 23.5 hours, month
/// starts in Berlin and New York, sub-hour zones; in memory and after a restart.
#[test]
fn calendar_windows_have_the_local_limits() {
    for (win, z, s, e) in [
        (
            Win::Day,
            "Europe/Berlin",
            "2026-10-24T22:00:00Z",
            "2026-10-25T23:00:00Z",
        ),
        (
            Win::Month,
            "Europe/Berlin",
            "2026-10-31T23:00:00Z",
            "2026-11-30T23:00:00Z",
        ),
        (
            Win::Month,
            "America/New_York",
            "2026-11-01T04:00:00Z",
            "2026-12-01T05:00:00Z",
        ),
        (
            Win::Day,
            "America/New_York",
            "2026-11-01T04:00:00Z",
            "2026-11-02T05:00:00Z",
        ),
        (
            Win::Day,
            "Australia/Lord_Howe",
            "2026-10-03T13:30:00Z",
            "2026-10-04T13:00:00Z",
        ),
        (
            Win::Day,
            "Asia/Kathmandu",
            "2026-11-09T18:15:00Z",
            "2026-11-10T18:15:00Z",
        ),
        (
            Win::Month,
            "Asia/Kolkata",
            "2026-10-31T18:30:00Z",
            "2026-11-30T18:30:00Z",
        ),
    ] {
        literal_is_calendar(win, z, s, e);
    }
    // Lateness covering the oldest event (at least 60 days).
    let now = now_ms();
    assert!(
        now > ms("2026-11-03T06:00:00Z"),
        "this test needs the clock after its fixed dates"
    );
    let days = ((now - ms(EXPLICIT_OLDEST)) / DAY + 2).max(60);
    assert!(days <= 365, "the fixed dates are too old for `lateness`");
    let mut d = start_unflushed(&late_config(days));
    d.lever("calls", "sum");
    for (id, tz) in [
        ("berlin", Some("Europe/Berlin")),
        ("berlin-m", Some("Europe/Berlin")),
        ("utc-m", None),
        ("ny", Some("America/New_York")),
        ("lhw", Some("Australia/Lord_Howe")),
        ("ktm", Some("Asia/Kathmandu")),
        ("kol", Some("Asia/Kolkata")),
    ] {
        contract_in(&d, common::ADMIN, id, tz);
    }
    post_sums(
        &d,
        "berlin",
        &[
            // Local 2026-10-24 23:59:59.999 CEST (the previous day).
            ("berlin", "2026-10-24T21:59:59.999Z", "4"),
            // Local 2026-10-25 00:00 CEST.
            ("berlin", "2026-10-24T22:00:00Z", "8"),
            // 02:30 CEST, then 02:30 CET (local time occurring twice).
            ("berlin", "2026-10-25T00:30:00Z", "1.5"),
            ("berlin", "2026-10-25T01:30:00+00:00", "0.25"),
            // Local 23:59:59.999 CET, then 2026-10-26 00:00 CET.
            ("berlin", "2026-10-25T23:59:59.999+01:00", "2"),
            ("berlin", "2026-10-25T23:00:00Z", "16"),
        ],
    );
    post_sums(
        &d,
        "month",
        &[
            ("berlin-m", "2026-10-31T22:59:59Z", "1"),
            ("berlin-m", "2026-10-31T23:30:00Z", "7"),
            ("utc-m", "2026-10-31T23:30:00Z", "7"),
        ],
    );
    post_sums(
        &d,
        "ny",
        &[
            // Local 2026-10-31 23:59:59.999 EDT.
            ("ny", "2026-11-01T03:59:59.999Z", "5"),
            ("ny", "2026-11-01T00:00:00-04:00", "3"),
            // 01:30 EDT, then 01:30 EST.
            ("ny", "2026-11-01T05:30:00Z", "0.5"),
            ("ny", "2026-11-01T06:30:00Z", "0.125"),
            // Local 2026-11-01 23:59:59.999 EST, then Nov 2 00:00 EST.
            ("ny", "2026-11-02T04:59:59.999Z", "0.001"),
            ("ny", "2026-11-02T05:00:00Z", "100"),
        ],
    );
    post_sums(
        &d,
        "sub-hour",
        &[
            // Lord Howe: 23:59:59.999 LHST, 00:00, 01:59 LHST, 03:00 LHDT, 23:59:59.999
            // LHDT, then Oct 5 00:00.
            ("lhw", "2026-10-03T13:29:59.999Z", "1"),
            ("lhw", "2026-10-03T13:30:00Z", "2"),
            ("lhw", "2026-10-03T15:29:00Z", "4"),
            ("lhw", "2026-10-03T15:30:00Z", "8"),
            ("lhw", "2026-10-04T12:59:59.999Z", "16"),
            ("lhw", "2026-10-04T13:00:00Z", "32"),
            ("ktm", "2026-11-09T18:14:59.999Z", "1"),
            ("ktm", "2026-11-09T18:15:00Z", "2"),
            ("ktm", "2026-11-10T18:14:59Z", "4"),
            ("ktm", "2026-11-10T18:15:00Z", "8"),
            ("kol", "2026-10-31T18:29:59.999Z", "1"),
            ("kol", "2026-10-31T18:30:00Z", "2"),
            ("kol", "2026-11-20T10:00:00+05:30", "4"),
        ],
    );
    check_explicit(&d, "in memory");
    assert_eq!(d.terminate(), Some(0), "clean exit: {}", d.logs());
    d.restart();
    check_explicit(&d, "after SIGTERM + restart");
}

// ---------------------------------------------------------------------------------------
// 3. Parameter validation.

/// `tz` must be an IANA zone (else 400 `invalid_query`); `window=month` is accepted; the
/// answer's `tz` is the contract's zone when `tz` is omitted, else the given one.
#[test]
fn tz_is_validated_and_echoed() {
    let d = Daemon::start();
    d.lever("calls", "sum");
    contract_in(&d, common::ADMIN, "kol", Some("Asia/Kolkata"));
    contract_in(&d, common::ADMIN, "plain", None);
    post_all(
        &d,
        INGEST,
        &json!([{"id": "v-1", "contract": "kol", "lever": "calls", "value": "2.5"}]),
    );
    let from = param_time(now_ms() - 2 * DAY);
    for tz in [
        "Mars/Olympus_Mons",
        "",
        "%2B01:00",
        "Europe%2FNowhere",
        "CEST",
        "UTC%2B1",
    ] {
        for window in ["day", "month", "minute", "none"] {
            let (s, b) = usage_with(
                &d,
                common::READ,
                "kol",
                &format!("from={from}&window={window}&tz={tz}"),
            );
            assert_eq!(
                (s, &b["code"]),
                (400, &json!("invalid_query")),
                "tz={tz:?} window={window}: {b}"
            );
        }
    }
    let (s, b) = usage_with(&d, common::READ, "kol", &format!("from={from}&window=week"));
    assert_eq!((s, &b["code"]), (400, &json!("invalid_query")), "{b}");

    // `tz` omitted: the contract's zone; month windows accepted.
    let v = d.usage("kol", &format!("from={from}&window=month"));
    assert_eq!(v["tz"], json!("Asia/Kolkata"), "{v}");
    assert_eq!(v["window"], json!("month"), "{v}");
    let kol = zone("Asia/Kolkata");
    let (ws, we) = calendar_window(Win::Month, kol, now_ms());
    let from_month = param_time(ws);
    let v = d.usage("kol", &format!("from={from_month}&window=month"));
    assert_eq!(
        v["items"],
        json!([{"lever": "calls", "aggregation": "sum", "start": rfc3339(ws),
                "end": rfc3339(we), "value": "2.5", "final": false}]),
        "{v}"
    );
    let v = d.usage("kol", &format!("from={from}&window=day"));
    assert_eq!(v["tz"], json!("Asia/Kolkata"), "{v}");
    let v = d.usage("plain", &format!("from={from}&window=day"));
    assert_eq!(v["tz"], json!("UTC"), "{v}");
    let v = d.usage("plain", &format!("from={from}&window=month"));
    assert_eq!((&v["tz"], &v["window"]), (&json!("UTC"), &json!("month")));
    for z in [
        "America/New_York",
        "Asia/Kathmandu",
        "UTC",
        "Australia/Lord_Howe",
    ] {
        let v = d.usage("kol", &format!("from={from}&window=day&tz={z}"));
        assert_eq!(v["tz"], json!(z), "{v}");
        let v = d.usage("plain", &format!("from={from}&window=month&tz={z}"));
        assert_eq!(v["tz"], json!(z), "{v}");
    }
}

// ---------------------------------------------------------------------------------------
// 4. `final`.

/// `final` turns true exactly when `end + lateness` passes: one tenant per window kind,
/// each with a lateness chosen so that the window before the current one (holding an
/// event 1 ms before its end, accepted as just within lateness) becomes final about 20
/// seconds after the test starts; the current window never is.
#[test]
fn final_turns_true_once_end_plus_lateness_has_passed() {
    let n0 = now_ms();
    // Every previous window becomes final at `deadline`.
    let deadline = ceil(n0 + 20 * SECOND, SECOND);
    let berlin = zone("Europe/Berlin");
    let ny = zone("America/New_York");
    // (tenant, zone, window, end of the previous window = start of the current one)
    let cases: [(&str, Option<&str>, &str, i64); 4] = [
        ("fin-minute", None, "minute", floor(n0, MINUTE)),
        ("fin-day-utc", None, "day", floor(n0, DAY)),
        (
            "fin-day-berlin",
            Some("Europe/Berlin"),
            "day",
            calendar_window(Win::Day, berlin, n0).0,
        ),
        (
            "fin-month-ny",
            Some("America/New_York"),
            "month",
            calendar_window(Win::Month, ny, n0).0,
        ),
    ];
    let key = |t: &str| format!("{t}-admin-key");
    let mut extra = String::new();
    for (tenant, _, _, end) in cases {
        extra.push_str(&format!(
            "[[tenants]]\nname = \"{tenant}\"\nlateness = \"{}ms\"\n\n\
             [[api_keys]]\ntenant = \"{tenant}\"\nrole = \"admin\"\nsha256 = \"{}\"\n\n",
            deadline - end,
            sha_hex(&key(tenant))
        ));
    }
    let d = Daemon::start_with(
        "dedupe_retention = \"40d\"\nretention_minute = \"40d\"\n",
        &extra,
    );
    // (prev window, current window) per tenant, from the events actually posted.
    let mut expect = Vec::new();
    for (tenant, tz, window, end) in cases {
        let k = key(tenant);
        lever_in(&d, &k, "calls", "sum");
        contract_in(&d, &k, "c", tz);
        let cur_t = now_ms();
        assert!(
            cur_t < deadline - 2 * SECOND,
            "the daemon took too long to start; the event at {} would be too late",
            rfc3339(end - 1)
        );
        let body = json!([
            {"id": "prev", "contract": "c", "lever": "calls", "value": 1,
             "time": param_time(end - 1)},
            {"id": "cur", "contract": "c", "lever": "calls", "value": 2,
             "time": param_time(cur_t)},
        ]);
        post_all(&d, &k, &body);
        let win = |t: i64| match (window, tz) {
            ("minute", _) => (floor(t, MINUTE), floor(t, MINUTE) + MINUTE),
            ("day", None) => (floor(t, DAY), floor(t, DAY) + DAY),
            ("day", Some(z)) => calendar_window(Win::Day, zone(z), t),
            (_, z) => calendar_window(Win::Month, zone(z.unwrap_or("UTC")), t),
        };
        let prev = win(end - 1);
        assert_eq!(prev.1, end);
        expect.push((tenant, tz, window, prev, win(cur_t)));
    }
    let mut saw_not_final = 0;
    let mut polls = 0;
    loop {
        let before = now_ms();
        for (tenant, tz, window, prev, cur) in &expect {
            let q = format!(
                "window={window}&from={}&to={}",
                param_time(prev.0),
                param_time(cur.1)
            );
            let (s, v) = usage_with(&d, &key(tenant), "c", &q);
            let after = now_ms();
            assert_eq!(s, 200, "{tenant} ?{q}: {v}");
            assert_eq!(v["tz"], json!(tz.unwrap_or("UTC")), "{v}");
            let items = v["items"].as_array().expect("items");
            assert_eq!(items.len(), 2, "{tenant} ?{q}: {v}");
            let (p, c) = (&items[0], &items[1]);
            assert_eq!(
                (&p["start"], &p["end"], &p["value"]),
                (
                    &json!(rfc3339(prev.0)),
                    &json!(rfc3339(prev.1)),
                    &json!("1")
                ),
                "{tenant}: {v}"
            );
            assert_eq!(
                (&c["start"], &c["end"], &c["value"]),
                (&json!(rfc3339(cur.0)), &json!(rfc3339(cur.1)), &json!("2")),
                "{tenant}: {v}"
            );
            assert_eq!(
                c["final"],
                json!(false),
                "{tenant}: the current window is never final: {v}"
            );
            if after < deadline {
                assert_eq!(
                    p["final"],
                    json!(false),
                    "{tenant}: {} + lateness is {} (now {}): not final yet: {v}",
                    rfc3339(prev.1),
                    rfc3339(deadline),
                    rfc3339(after)
                );
                saw_not_final += 1;
            } else if before >= deadline {
                assert_eq!(
                    p["final"],
                    json!(true),
                    "{tenant}: {} + lateness is {} (now {}): final: {v}",
                    rfc3339(prev.1),
                    rfc3339(deadline),
                    rfc3339(before)
                );
            }
            // window=none: `end` is `to`.
            if *window == "minute" {
                let q = format!(
                    "window=none&from={}&to={}",
                    param_time(prev.0),
                    param_time(prev.1)
                );
                let (s, v) = usage_with(&d, &key(tenant), "c", &q);
                assert_eq!(s, 200, "{v}");
                let r = &v["items"][0];
                assert_eq!(r["value"], json!("1"), "{v}");
                if now_ms() < deadline {
                    assert_eq!(r["final"], json!(false), "window=none before: {v}");
                } else if before >= deadline {
                    assert_eq!(r["final"], json!(true), "window=none after: {v}");
                }
            }
        }
        polls += 1;
        if before >= deadline {
            break;
        }
        assert!(
            now_ms() < deadline + 30 * SECOND,
            "polling did not reach the deadline"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    assert!(
        saw_not_final >= expect.len(),
        "every previous window must be seen not final before the deadline \
         ({saw_not_final} observations in {polls} polls)"
    );
}

// ---------------------------------------------------------------------------------------
// 5. All levers.

/// `lever` omitted: rows for every lever of the tenant with usage, ordered by lever name,
/// then start, then bucket (absent bucket first); levers without usage have no rows.
#[test]
fn lever_omitted_lists_every_lever_sorted_by_name() {
    let d = Daemon::start();
    // Created out of order.
    let levers = [
        ("zeta", "sum"),
        ("mid", "max"),
        ("alpha2", "count"),
        ("unused", "sum"),
        ("beta", "latest"),
        ("alpha", "sum"),
    ];
    for (name, agg) in levers {
        d.lever(name, agg);
    }
    d.contract("c");
    d.contract("c-other");
    let now = now_ms();
    let m0 = floor(now - 20 * MINUTE, MINUTE);
    let m1 = m0 + 7 * MINUTE;
    let mut body = Vec::new();
    // (lever, minute, bucket, value)
    let evs: [(&str, i64, Option<&str>, &str); 12] = [
        ("zeta", m1, Some("us"), "1.5"),
        ("zeta", m0, None, "2"),
        ("zeta", m0, Some("eu"), "3"),
        ("mid", m1, None, "7.25"),
        ("mid", m1, None, "9.125"),
        ("alpha2", m0, Some("us"), "100"),
        ("alpha2", m0, Some("us"), "100"),
        ("alpha2", m1, Some("eu"), "1"),
        ("beta", m0, None, "4"),
        ("beta", m0, Some("eu"), "5"),
        ("alpha", m1, Some("eu"), "0.000000001"),
        ("alpha", m1, Some("ap"), "6"),
    ];
    for (i, (lever, m, bucket, value)) in evs.iter().enumerate() {
        let mut e = json!({"id": format!("l-{i}"), "contract": "c", "lever": lever,
                           "value": value, "time": param_time(m + (i as i64) * SECOND)});
        if let Some(b) = bucket {
            e["bucket"] = json!(b);
        }
        body.push(e);
    }
    body.push(json!({"id": "other-1", "contract": "c-other", "lever": "unused"}));
    post_all(&d, INGEST, &Value::Array(body));
    let (s0, s1) = (rfc3339(m0), rfc3339(m1));
    let (e0, e1) = (rfc3339(m0 + MINUTE), rfc3339(m1 + MINUTE));
    let r = |lever: &str, agg: &str, bucket: Option<&str>, first: bool, value: &str| {
        let (s, e) = if first { (&s0, &e0) } else { (&s1, &e1) };
        let mut v = json!({"lever": lever, "aggregation": agg, "start": s, "end": e,
                           "value": value, "final": false});
        if let Some(b) = bucket {
            v["bucket"] = json!(b);
        }
        v
    };
    let range = format!(
        "from={}&to={}",
        param_time(m0 - HOUR),
        param_time(now + MINUTE)
    );
    let v = d.usage("c", &format!("{range}&window=minute&group_by=bucket"));
    assert_eq!(
        v["items"],
        json!([
            r("alpha", "sum", Some("ap"), false, "6"),
            r("alpha", "sum", Some("eu"), false, "0.000000001"),
            r("alpha2", "count", Some("us"), true, "2"),
            r("alpha2", "count", Some("eu"), false, "1"),
            r("beta", "latest", None, true, "4"),
            r("beta", "latest", Some("eu"), true, "5"),
            r("mid", "max", None, false, "9.125"),
            r("zeta", "sum", None, true, "2"),
            r("zeta", "sum", Some("eu"), true, "3"),
            r("zeta", "sum", Some("us"), false, "1.5"),
        ]),
        "window=minute, group_by=bucket, all levers"
    );
    let v = d.usage("c", &format!("{range}&window=minute"));
    assert_eq!(
        v["items"],
        json!([
            r("alpha", "sum", None, false, "6.000000001"),
            r("alpha2", "count", None, true, "2"),
            r("alpha2", "count", None, false, "1"),
            r("beta", "latest", None, true, "5"),
            r("mid", "max", None, false, "9.125"),
            r("zeta", "sum", None, true, "5"),
            r("zeta", "sum", None, false, "1.5"),
        ]),
        "window=minute, all levers"
    );
    let v = d.usage("c", &format!("{range}&window=none"));
    let names: Vec<&str> = v["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|r| r["lever"].as_str().expect("lever"))
        .collect();
    assert_eq!(names, ["alpha", "alpha2", "beta", "mid", "zeta"], "{v}");
    let values: Vec<&str> = v["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|r| r["value"].as_str().expect("value"))
        .collect();
    assert_eq!(values, ["6.000000001", "3", "5", "9.125", "6.5"], "{v}");
    // Day and month windows list every lever too, in the same order.
    for w in ["day", "month"] {
        // Windows starting in the range: from 40 days back.
        let q = format!(
            "from={}&to={}&window={w}&tz=Asia/Kathmandu",
            param_time(now - 40 * DAY),
            param_time(now + MINUTE)
        );
        let v = d.usage("c", &q);
        let names: Vec<&str> = v["items"]
            .as_array()
            .expect("items")
            .iter()
            .map(|r| r["lever"].as_str().expect("lever"))
            .collect();
        let mut sorted = names.clone();
        sorted.sort();
        assert_eq!(names, sorted, "window={w}: {v}");
        let mut distinct = names.clone();
        distinct.dedup();
        assert_eq!(distinct, ["alpha", "alpha2", "beta", "mid", "zeta"], "{v}");
    }
}
