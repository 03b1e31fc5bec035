//! Black-box tests of corrections (SPEC 4.3): adjustments, retractions and their audit
//! log.
//!
//! Promises guarded:
//! - an adjustment adds its signed value to the minute, hour and day rows that contain its
//!   time, final windows included (days in the past, and up to 5 minutes ahead), so every
//!   window size (minute, hour, day, month, none; UTC and a half-hour zone; grouped by
//!   bucket or not) shows it exactly; it never changes quota periods;
//! - adjustments are idempotent by id within a contract: a repeat (also written
//!   differently: number or string, another offset) returns the stored entry with `200`,
//!   another definition gets `409` and changes nothing, concurrent repeats apply once, and
//!   the same id on another contract is another adjustment;
//! - a retraction removes an accepted event's exact contribution from every window row and
//!   from the quota periods of its contract and of its parent, exactly once even when
//!   several clients retract it at once; a repeat returns the same entry and changes
//!   nothing; the id stays a duplicate; freed hard-quota room can be used again, exactly;
//! - all of this holds while usage is still in memory, after a SIGTERM restart and after a
//!   `kill -9` restart;
//! - the audit log lists both kinds oldest first with who (tenant, role, the key's
//!   configured name, never the key) and when, is per contract and per tenant, pages with
//!   a cursor without gaps or repeats, and survives restarts;
//! - every refusal of SPEC 4.3 and docs/billing.md (roles, other tenants, 404, 409, 400 at and
//!   just past every limit) is answered with its status and code, and changes nothing.
//!
//! The randomized model test keeps an independent model in i128 nano-units. Rerun a
//! failure with `METERD_SEED=<seed>`.

mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Barrier, Mutex};
use std::time::Instant;

use chrono::{DateTime, Datelike, FixedOffset, Months, NaiveDate, NaiveTime, SecondsFormat};
use chrono::{TimeZone, Utc};
use chrono_tz::Tz;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

use common::{Daemon, ADMIN, INGEST, OTHER_ADMIN, OTHER_INGEST, OTHER_READ, READ};

/// Nano-units per whole unit (the daemon's precision).
const UNIT: i128 = 1_000_000_000;
const MINUTE: i64 = 60_000;
const HOUR: i64 = 3_600_000;
const DAY: i64 = 86_400_000;
/// Default lateness: `final` is true once `end + LATENESS` has passed.
const LATENESS: i64 = HOUR;

/// A second admin key of the default tenant, configured with a name.
const NAMED_ADMIN: &str = "corrections-named-admin-key";
/// Its configured name, which audit entries show as `by.key`.
const NAMED_ADMIN_NAME: &str = "dev-admin";

// ---------------------------------------------------------------------------------------
// Helpers

fn sha256_hex(s: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(s.as_bytes()))
}

/// The extra `[[api_keys]]` table of the named admin key.
fn named_admin_table() -> String {
    format!(
        "[[api_keys]]\ntenant = \"default\"\nrole = \"admin\"\nsha256 = \"{}\"\nname = \"{NAMED_ADMIN_NAME}\"\n\n",
        sha256_hex(NAMED_ADMIN)
    )
}

fn now_ms() -> i64 {
    Utc::now().timestamp_millis()
}

fn datetime(ms: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(ms).expect("time in range")
}

/// The server's time format: RFC 3339 UTC, milliseconds only when non-zero.
fn rfc3339(ms: i64) -> String {
    datetime(ms).to_rfc3339_opts(SecondsFormat::AutoSi, true)
}

/// A request time (always with milliseconds).
fn param_time(ms: i64) -> String {
    datetime(ms).to_rfc3339_opts(SecondsFormat::Millis, true)
}

#[track_caller]
fn ms(t: &str) -> i64 {
    DateTime::parse_from_rfc3339(t)
        .unwrap_or_else(|e| panic!("bad time {t:?}: {e}"))
        .timestamp_millis()
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

/// The server's decimal format: no trailing fractional zeros, `-` for negatives.
fn fmt_amount(nanos: i128) -> String {
    let sign = if nanos < 0 { "-" } else { "" };
    let a = nanos.unsigned_abs();
    let (int, frac) = (a / UNIT as u128, a % UNIT as u128);
    if frac == 0 {
        return format!("{sign}{int}");
    }
    let f = format!("{frac:09}");
    format!("{sign}{int}.{}", f.trim_end_matches('0'))
}

/// Parses a signed decimal string into nano-units.
#[track_caller]
fn parse_amount(s: &str) -> i128 {
    let (neg, body) = match s.strip_prefix('-') {
        Some(b) => (true, b),
        None => (false, s),
    };
    let (int, frac) = body.split_once('.').unwrap_or((body, ""));
    assert!(
        !int.is_empty()
            && frac.len() <= 9
            && int.bytes().chain(frac.bytes()).all(|b| b.is_ascii_digit()),
        "not a plain decimal: {s:?}"
    );
    let v = int.parse::<i128>().unwrap() * UNIT + format!("{frac:0<9}").parse::<i128>().unwrap();
    if neg {
        -v
    } else {
        v
    }
}

fn quote(s: &str) -> String {
    serde_json::to_string(s).expect("string to JSON")
}

/// Percent-encodes a path segment.
fn pct(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Renders a JSON object from field names and raw JSON texts.
fn object(fields: &[(&str, String)]) -> String {
    let parts: Vec<String> = fields
        .iter()
        .map(|(k, v)| format!("{}:{v}", quote(k)))
        .collect();
    format!("{{{}}}", parts.join(","))
}

fn seed() -> u64 {
    let seed = std::env::var("METERD_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    println!("seed = {seed} (rerun with METERD_SEED={seed})");
    seed
}

// ---------------------------------------------------------------------------------------
// API helpers

#[track_caller]
fn put(d: &Daemon, path: &str, body: Value) {
    let (s, b) = d.req("PUT", path, Some(ADMIN), Some(&body));
    assert!(s == 200 || s == 201, "PUT {path}: {s} {b}");
}

/// `POST /v1/contracts/{contract}/adjustments` with a raw JSON body.
fn adjust(d: &Daemon, key: Option<&str>, contract: &str, body: &str) -> (u16, Value) {
    let path = format!("/v1/contracts/{}/adjustments", pct(contract));
    match key {
        Some(k) => d.raw(&path, k, "application/json", body.as_bytes().to_vec()),
        None => {
            let r = d
                .client
                .post(d.url(&path))
                .header("content-type", "application/json")
                .body(body.to_string())
                .send()
                .expect("request");
            let status = r.status().as_u16();
            let text = r.text().unwrap_or_default();
            (
                status,
                serde_json::from_str(&text).unwrap_or(Value::String(text)),
            )
        }
    }
}

/// `DELETE /v1/events/{id}`.
fn retract(d: &Daemon, key: Option<&str>, id: &str) -> (u16, Value) {
    d.req("DELETE", &format!("/v1/events/{}", pct(id)), key, None)
}

/// Posts raw event JSON with the ingest key; asserts `200`.
#[track_caller]
fn post_raw(d: &Daemon, body: &str) -> Value {
    let (s, v) = d.raw(
        "/v1/events",
        INGEST,
        "application/json",
        body.as_bytes().to_vec(),
    );
    assert_eq!(s, 200, "POST /v1/events {body}: {v}");
    v
}

/// Asserts the counts of an ingest outcome.
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

/// Asserts a problem answer: status and `code`.
#[track_caller]
fn assert_problem(what: &str, got: (u16, Value), status: u16, code: &str) {
    assert_eq!(
        (got.0, got.1["code"].as_str()),
        (status, Some(code)),
        "{what}: {}",
        got.1
    );
}

/// `GET /v1/contracts/{contract}/adjustments?query`.
fn audit_page(d: &Daemon, key: Option<&str>, contract: &str, query: &str) -> (u16, Value) {
    d.req(
        "GET",
        &format!("/v1/contracts/{}/adjustments?{query}", pct(contract)),
        key,
        None,
    )
}

/// The whole audit log of a contract, walked with pages of `limit`. Checks the paging
/// contract: full pages while a cursor is returned, then one last page without it.
#[track_caller]
fn audit_log(d: &Daemon, contract: &str, limit: usize) -> Vec<Value> {
    let mut out: Vec<Value> = Vec::new();
    let mut cursor: Option<String> = None;
    for _ in 0..10_000 {
        let mut q = format!("limit={limit}");
        if let Some(c) = &cursor {
            q.push_str(&format!("&cursor={}", pct(c)));
        }
        let (s, b) = audit_page(d, Some(READ), contract, &q);
        assert_eq!(s, 200, "audit log of {contract} ({q}): {b}");
        let items = b["items"].as_array().expect("items").clone();
        assert!(items.len() <= limit, "page longer than limit {limit}: {b}");
        match b["next_cursor"].as_str() {
            Some(c) => {
                assert_eq!(items.len(), limit, "a page with a cursor is full: {b}");
                cursor = Some(c.to_string());
                out.extend(items);
            }
            None => {
                assert_eq!(b["next_cursor"], Value::Null, "{b}");
                assert!(
                    !items.is_empty() || out.is_empty(),
                    "an empty last page after a cursor ({contract}, limit {limit})"
                );
                out.extend(items);
                return out;
            }
        }
    }
    panic!("audit log of {contract} does not end");
}

/// Checks that a key label shown in `by.key` is a name, never the key or its hash.
#[track_caller]
fn assert_label(name: &str) {
    assert!(!name.is_empty(), "empty key name");
    for secret in [ADMIN, NAMED_ADMIN] {
        assert!(
            !name.contains(secret) && !name.contains(&sha256_hex(secret)),
            "by.key shows a key: {name:?}"
        );
    }
}

/// Checks a correction entry: every field of `want` exactly, no other fields than those
/// plus `by`, `at` and `revision`; `by` is the default tenant's admin key `key_name`; `at`
/// lies within the request. Returns the revision.
#[track_caller]
fn check_entry(got: &Value, want: &Value, key_name: &str, before: i64, after: i64) -> u64 {
    let g = got
        .as_object()
        .unwrap_or_else(|| panic!("entry is not an object: {got}"));
    let w = want.as_object().expect("want is an object");
    let mut keys: Vec<&str> = g.keys().map(String::as_str).collect();
    keys.sort_unstable();
    let mut want_keys: Vec<&str> = w
        .keys()
        .map(String::as_str)
        .chain(["at", "by", "revision"])
        .collect();
    want_keys.sort_unstable();
    assert_eq!(keys, want_keys, "fields of {got}");
    for (k, v) in w {
        assert_eq!(&g[k], v, "`{k}` of {got}");
    }
    assert_eq!(
        got["by"],
        json!({"tenant": "default", "role": "admin", "key": key_name}),
        "by of {got}"
    );
    assert_label(key_name);
    let at = ms(got["at"].as_str().expect("at is a string"));
    assert!(
        before - 1_000 <= at && at <= after + 1_000,
        "at {at} not within the request [{before}, {after}]: {got}"
    );
    let rev = got["revision"].as_u64().expect("revision is a number");
    assert!(rev > 0, "{got}");
    rev
}

// ---------------------------------------------------------------------------------------
// The model test

const CONTRACTS: [&str; 3] = ["ctr-root", "ctr-kid", "ctr-solo"];
/// Parent of each contract.
const PARENT: [Option<usize>; 3] = [None, Some(0), None];
/// Levers by name (the server lists levers by name), and whether each one counts.
const LEVERS: [(&str, bool); 2] = [("bytes", false), ("reqs", true)];
/// Levers with a month quota, per contract.
const QUOTA_LEVERS: [&[usize]; 3] = [&[0, 1], &[0, 1], &[0]];
/// Buckets, sorted (the server orders rows by bucket).
const BUCKETS: [&str; 3] = ["ap-south-1", "eu-west-1", "us-east-1"];
const KOLKATA: Tz = chrono_tz::Asia::Kolkata;

/// One signed contribution to a window row or a quota period.
#[derive(Clone, Copy, Debug)]
struct Point {
    contract: usize,
    lever: usize,
    bucket: Option<usize>,
    time_ms: i64,
    nanos: i128,
}

/// An accepted event.
#[derive(Clone, Debug)]
struct Ev {
    id: String,
    p: Point,
    json: String,
}

/// An adjustment the server stored.
#[derive(Clone, Debug)]
struct Adj {
    p: Point,
    id: String,
    reason: String,
    entry: Value,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Cal {
    Day,
    Month,
}

#[derive(Clone, Copy, Debug)]
enum Win {
    Minute,
    Hour,
    Day,
    None,
    Calendar(Cal, Tz),
}

impl Win {
    fn name(self) -> &'static str {
        match self {
            Win::Minute => "minute",
            Win::Hour => "hour",
            Win::Day | Win::Calendar(Cal::Day, _) => "day",
            Win::None => "none",
            Win::Calendar(Cal::Month, _) => "month",
        }
    }

    fn stored_len(self) -> Option<i64> {
        match self {
            Win::Minute => Some(MINUTE),
            Win::Hour => Some(HOUR),
            Win::Day => Some(DAY),
            _ => None,
        }
    }
}

fn midnight(tz: Tz, d: NaiveDate) -> i64 {
    tz.from_local_datetime(&d.and_time(NaiveTime::MIN))
        .earliest()
        .expect("midnight exists")
        .timestamp_millis()
}

/// The calendar day or month in `tz` containing `t`.
fn calendar(kind: Cal, tz: Tz, t: i64) -> (i64, i64) {
    let date = tz.timestamp_millis_opt(t).unwrap().date_naive();
    let (s, e) = match kind {
        Cal::Day => (date, date.succ_opt().unwrap()),
        Cal::Month => {
            let first = date.with_day(1).unwrap();
            (first, first + Months::new(1))
        }
    };
    (midnight(tz, s), midnight(tz, e))
}

/// A usage query and what the model predicts for it.
struct Query {
    contract: usize,
    win: Win,
    group: bool,
    lever: Option<usize>,
    from: i64,
    to: i64,
}

impl Query {
    fn text(&self) -> String {
        let mut q = format!(
            "from={}&to={}&window={}",
            param_time(self.from),
            param_time(self.to),
            self.win.name()
        );
        if let Win::Calendar(_, tz) = self.win {
            if tz != Tz::UTC {
                q.push_str(&format!("&tz={}", tz.name()));
            }
        }
        if self.group {
            q.push_str("&group_by=bucket");
        }
        if let Some(l) = self.lever {
            q.push_str(&format!("&lever={}", LEVERS[l].0));
        }
        q
    }

    /// The window row of a contribution at `t`, if the query reports it.
    fn window_of(&self, t: i64) -> Option<(i64, i64)> {
        match self.win {
            Win::Minute | Win::Hour | Win::Day => {
                let len = self.win.stored_len().unwrap();
                let s = floor(t, len);
                (ceil(self.from, len) <= s && s < ceil(self.to, len)).then_some((s, s + len))
            }
            Win::None => {
                let s = floor(t, MINUTE);
                (ceil(self.from, MINUTE) <= s && s < ceil(self.to, MINUTE))
                    .then_some((self.from, self.to))
            }
            Win::Calendar(kind, tz) => {
                let (ws, we) = calendar(kind, tz, t);
                (self.from <= ws && ws < self.to).then_some((ws, we))
            }
        }
    }

    /// Predicted rows (without `final`) with their end.
    fn expected(&self, points: &[Point]) -> Vec<(Value, i64)> {
        let mut out = Vec::new();
        for (li, (name, count)) in LEVERS.iter().enumerate() {
            if self.lever.is_some_and(|l| l != li) {
                continue;
            }
            let mut acc: BTreeMap<(i64, Option<&str>), (i64, i128)> = BTreeMap::new();
            for p in points
                .iter()
                .filter(|p| p.contract == self.contract && p.lever == li)
            {
                let Some((start, end)) = self.window_of(p.time_ms) else {
                    continue;
                };
                let bucket = if self.group {
                    p.bucket.map(|b| BUCKETS[b])
                } else {
                    None
                };
                acc.entry((start, bucket)).or_insert((end, 0)).1 += p.nanos;
            }
            for ((start, bucket), (end, v)) in acc {
                let mut row = json!({
                    "lever": name,
                    "aggregation": if *count { "count" } else { "sum" },
                    "start": rfc3339(start),
                    "end": rfc3339(end),
                    "value": fmt_amount(v),
                });
                if let Some(b) = bucket {
                    row["bucket"] = json!(b);
                }
                out.push((row, end));
            }
        }
        out
    }

    /// Runs the query and compares the answer with the model; returns the row count.
    fn check(&self, d: &Daemon, points: &[Point], label: &str) -> usize {
        let text = self.text();
        let before = now_ms();
        let got = d.usage(CONTRACTS[self.contract], &text);
        let after = now_ms();
        let ctx = format!("[{label}] {} ?{text}", CONTRACTS[self.contract]);
        assert_eq!(got["window"], json!(self.win.name()), "{ctx}");
        let tz = match self.win {
            Win::Calendar(_, tz) => tz.name(),
            _ => "UTC",
        };
        assert_eq!(got["tz"], json!(tz), "{ctx}");
        let items = got["items"].as_array().expect("items");
        let want = self.expected(points);
        let mut differ = items.len() != want.len();
        for (g, (w, end)) in items.iter().zip(&want) {
            let mut g = g.clone();
            let fin = g
                .as_object_mut()
                .and_then(|o| o.remove("final"))
                .unwrap_or(Value::Null);
            // `final` may flip while the request runs; both answers are right then.
            let fin_ok = match fin.as_bool() {
                Some(f) if end + LATENESS <= before => f,
                Some(f) if end + LATENESS > after => !f,
                Some(_) => true,
                None => false,
            };
            if g != *w || !fin_ok {
                differ = true;
            }
        }
        if differ {
            // The first differing row, with a few rows around it.
            let first = items
                .iter()
                .zip(&want)
                .position(|(g, (w, _))| {
                    let mut g = g.clone();
                    g.as_object_mut().map(|o| o.remove("final"));
                    g != *w
                })
                .unwrap_or(items.len().min(want.len()));
            let (lo, hi) = (first.saturating_sub(3), first + 4);
            let got_rows: Vec<String> = items
                .iter()
                .enumerate()
                .skip(lo)
                .take(hi - lo)
                .map(|(i, r)| format!("{i}: {r}"))
                .collect();
            let want_rows: Vec<String> = want
                .iter()
                .enumerate()
                .skip(lo)
                .take(hi - lo)
                .map(|(i, (r, end))| format!("{i}: {r} final={}", end + LATENESS <= before))
                .collect();
            panic!(
                "{ctx}: {} rows, model {}; first difference at row {first}\n  got:\n    {}\n  \
                 model:\n    {}",
                items.len(),
                want.len(),
                got_rows.join("\n    "),
                want_rows.join("\n    "),
            );
        }
        want.len()
    }
}

/// The workload generator and the independent model.
struct World {
    rng: StdRng,
    seq: u64,
    /// Window contributions: events, retractions (negated) and adjustments.
    windows: Vec<Point>,
    /// Quota contributions: events and retractions only.
    quota: Vec<Point>,
    accepted: HashMap<String, Ev>,
    /// Accepted ids in acceptance order.
    order: Vec<String>,
    /// Accepted ids not retracted.
    live: Vec<String>,
    /// Retracted ids and their audit entries.
    retracted: HashMap<String, Value>,
    retracted_order: Vec<String>,
    adjustments: Vec<Adj>,
    adjustment_ids: HashSet<(usize, String)>,
    /// Audit log per contract, oldest first.
    audit: Vec<Vec<Value>>,
    last_revision: u64,
    /// `by.key` of the unnamed harness admin key, learnt from its first correction.
    admin_name: Option<String>,
    ops: BTreeMap<&'static str, usize>,
}

impl World {
    fn new(seed: u64) -> World {
        World {
            rng: StdRng::seed_from_u64(seed),
            seq: 0,
            windows: Vec::new(),
            quota: Vec::new(),
            accepted: HashMap::new(),
            order: Vec::new(),
            live: Vec::new(),
            retracted: HashMap::new(),
            retracted_order: Vec::new(),
            adjustments: Vec::new(),
            adjustment_ids: HashSet::new(),
            audit: vec![Vec::new(); CONTRACTS.len()],
            last_revision: 0,
            admin_name: None,
            ops: BTreeMap::new(),
        }
    }

    fn count(&mut self, op: &'static str) {
        *self.ops.entry(op).or_default() += 1;
    }

    fn next(&mut self) -> u64 {
        self.seq += 1;
        self.seq
    }

    fn admin_key(&mut self) -> &'static str {
        if self.rng.random_bool(0.5) {
            NAMED_ADMIN
        } else {
            ADMIN
        }
    }

    /// The `by.key` expected for `key`; the unnamed key's label is learnt once and must
    /// then stay the same.
    fn key_name(&mut self, key: &str, got: &Value) -> String {
        if key == NAMED_ADMIN {
            return NAMED_ADMIN_NAME.to_string();
        }
        if let Some(n) = &self.admin_name {
            return n.clone();
        }
        let n = got["by"]["key"]
            .as_str()
            .unwrap_or_else(|| panic!("no by.key: {got}"))
            .to_string();
        assert_label(&n);
        assert_ne!(n, NAMED_ADMIN_NAME, "two keys with one label: {got}");
        self.admin_name = Some(n.clone());
        n
    }

    /// Records a new entry's revision: strictly above every earlier correction's.
    #[track_caller]
    fn revision(&mut self, rev: u64, got: &Value) {
        assert!(
            rev > self.last_revision,
            "revision {rev} not above the previous correction's {}: {got}",
            self.last_revision
        );
        self.last_revision = rev;
    }

    /// A non-negative decimal: nano-units and its JSON text (number or string, sometimes
    /// with trailing zeros).
    fn decimal(&mut self, max_int: i128) -> i128 {
        let digits = self.rng.random_range(0..=9u32);
        let int = self.rng.random_range(0..max_int);
        let frac = if digits == 0 {
            0
        } else {
            self.rng.random_range(0..10i128.pow(digits))
        };
        int * UNIT + frac * 10i128.pow(9 - digits)
    }

    /// JSON text of an amount: number or string, sometimes with trailing zeros.
    fn amount_json(&mut self, nanos: i128, whole_only: bool) -> String {
        let mut text = fmt_amount(nanos);
        if !whole_only && self.rng.random_bool(0.2) {
            if !text.contains('.') {
                text.push('.');
            }
            text.push_str("00");
        }
        if self.rng.random_bool(0.5) {
            text
        } else {
            quote(&text)
        }
    }

    /// JSON text of an instant, in UTC or with an offset.
    fn time_json(&mut self, t: i64) -> String {
        let dt = datetime(t);
        let text = match self.rng.random_range(0..6) {
            0 => dt
                .with_timezone(&FixedOffset::east_opt(5 * 3600 + 1800).unwrap())
                .to_rfc3339_opts(SecondsFormat::Millis, false),
            1 => dt
                .with_timezone(&FixedOffset::west_opt(3 * 3600).unwrap())
                .to_rfc3339_opts(SecondsFormat::Millis, false),
            _ => dt.to_rfc3339_opts(SecondsFormat::Millis, true),
        };
        quote(&text)
    }

    fn event_id(&mut self) -> String {
        let n = self.next();
        match self.rng.random_range(0..30) {
            0 => {
                let base = format!("ev-{n}-");
                format!("{base}{}", "x".repeat(128 - base.len()))
            }
            1 | 2 => format!("ev {n} \u{e9}t\u{e9}/\u{fc}"),
            _ => format!("ev-{n}-{:06x}", self.rng.random::<u32>() & 0xff_ffff),
        }
    }

    fn adjustment_id(&mut self) -> String {
        let n = self.next();
        match self.rng.random_range(0..20) {
            0 => {
                let base = format!("adj-{n}-");
                format!("{base}{}", "y".repeat(128 - base.len()))
            }
            1 => format!("adj {n} \u{e9}"),
            _ => format!("adj-{n}"),
        }
    }

    /// A random valid event with `id`, at most 50 minutes old.
    fn event(&mut self, id: String) -> Ev {
        let contract = self.rng.random_range(0..CONTRACTS.len());
        let lever = self.rng.random_range(0..LEVERS.len());
        let bucket = match self.rng.random_range(0..4) {
            0 => None,
            _ => Some(self.rng.random_range(0..BUCKETS.len())),
        };
        let time_ms = now_ms() - self.rng.random_range(1_000..50 * MINUTE);
        let mut fields = vec![
            ("id", quote(&id)),
            ("contract", quote(CONTRACTS[contract])),
            ("lever", quote(LEVERS[lever].0)),
        ];
        let time = self.time_json(time_ms);
        fields.push(("time", time));
        let counts = LEVERS[lever].1;
        let nanos = if counts {
            if self.rng.random_bool(0.3) {
                let v = self.decimal(100);
                let text = self.amount_json(v, false);
                fields.push(("value", text));
            }
            UNIT
        } else if self.rng.random_bool(0.1) {
            UNIT
        } else {
            let v = if self.rng.random_bool(0.03) {
                0
            } else {
                self.decimal(1_000_000)
            };
            let text = self.amount_json(v, false);
            fields.push(("value", text));
            v
        };
        match bucket {
            Some(b) => fields.push(("bucket", quote(BUCKETS[b]))),
            None if self.rng.random_bool(0.2) => fields.push(("bucket", "null".into())),
            None => {}
        }
        fields.shuffle(&mut self.rng);
        Ev {
            id,
            p: Point {
                contract,
                lever,
                bucket,
                time_ms,
                nanos,
            },
            json: object(&fields),
        }
    }

    /// Posts a batch of fresh events and duplicates; sometimes retracts one of the fresh
    /// events at once (while it is still in memory).
    fn post_batch(&mut self, d: &Daemon) {
        self.count("event batches");
        let size = self.rng.random_range(1..=12);
        let mut objs: Vec<String> = Vec::with_capacity(size);
        let mut fresh: Vec<Ev> = Vec::new();
        let mut dups = 0;
        for _ in 0..size {
            let r = self.rng.random_range(0..100);
            if r < 8 && !self.order.is_empty() {
                // An id accepted earlier (possibly retracted), same or another body.
                let id = self.order[self.rng.random_range(0..self.order.len())].clone();
                let json = if self.rng.random_bool(0.5) {
                    self.accepted[&id].json.clone()
                } else {
                    self.event(id).json
                };
                objs.push(json);
                dups += 1;
            } else if r < 13 && !fresh.is_empty() {
                let id = fresh[self.rng.random_range(0..fresh.len())].id.clone();
                objs.push(self.event(id).json);
                dups += 1;
            } else {
                let id = self.event_id();
                let ev = self.event(id);
                objs.push(ev.json.clone());
                fresh.push(ev);
            }
        }
        let body = if objs.len() == 1 && self.rng.random_bool(0.5) {
            objs[0].clone()
        } else {
            format!("[{}]", objs.join(","))
        };
        let out = post_raw(d, &body);
        assert_counts(&out, fresh.len() as u64, dups, 0);
        let had_fresh = !fresh.is_empty();
        for ev in fresh {
            self.windows.push(ev.p);
            self.quota.push(ev.p);
            self.order.push(ev.id.clone());
            self.live.push(ev.id.clone());
            let prev = self.accepted.insert(ev.id.clone(), ev);
            assert!(prev.is_none(), "generator reused an id");
            self.count("events accepted");
        }
        if had_fresh && self.rng.random_bool(0.3) {
            let i = self.live.len() - 1;
            self.retract_at(d, i);
        }
    }

    /// Retracts the live event at index `i` of `live`.
    fn retract_at(&mut self, d: &Daemon, i: usize) {
        self.count("retractions");
        let id = self.live.swap_remove(i);
        let ev = self.accepted[&id].clone();
        let key = self.admin_key();
        let before = now_ms();
        let (s, got) = retract(d, Some(key), &id);
        let after = now_ms();
        assert_eq!(s, 200, "DELETE /v1/events/{id}: {got}");
        let mut want = json!({
            "kind": "retraction",
            "id": id,
            "contract": CONTRACTS[ev.p.contract],
            "lever": LEVERS[ev.p.lever].0,
            "time": rfc3339(ev.p.time_ms),
            "value": fmt_amount(-ev.p.nanos),
        });
        if let Some(b) = ev.p.bucket {
            want["bucket"] = json!(BUCKETS[b]);
        }
        let name = self.key_name(key, &got);
        let rev = check_entry(&got, &want, &name, before, after);
        self.revision(rev, &got);
        let minus = Point {
            nanos: -ev.p.nanos,
            ..ev.p
        };
        self.windows.push(minus);
        self.quota.push(minus);
        self.audit[ev.p.contract].push(got.clone());
        self.retracted.insert(id.clone(), got);
        self.retracted_order.push(id);
    }

    fn retract_new(&mut self, d: &Daemon) {
        if self.live.is_empty() {
            return;
        }
        let i = self.rng.random_range(0..self.live.len());
        self.retract_at(d, i);
    }

    /// Repeats a retraction: the same entry, nothing changes.
    fn retract_again(&mut self, d: &Daemon) {
        if self.retracted_order.is_empty() {
            return;
        }
        self.count("repeated retractions");
        let id = self.retracted_order[self.rng.random_range(0..self.retracted_order.len())].clone();
        let key = self.admin_key();
        let (s, got) = retract(d, Some(key), &id);
        assert_eq!(
            (s, &got),
            (200, &self.retracted[&id]),
            "repeated DELETE of {id}"
        );
    }

    /// Re-posts a retracted id: still a duplicate.
    fn repost_retracted(&mut self, d: &Daemon) {
        if self.retracted_order.is_empty() {
            return;
        }
        self.count("re-posted retracted ids");
        let id = self.retracted_order[self.rng.random_range(0..self.retracted_order.len())].clone();
        let json = if self.rng.random_bool(0.5) {
            self.accepted[&id].json.clone()
        } else {
            self.event(id.clone()).json
        };
        let out = post_raw(d, &json);
        assert_counts(&out, 0, 1, 0);
    }

    /// Renders an adjustment body (representation chosen at random).
    fn adjustment_body(&mut self, id: &str, p: &Point, reason: &str) -> String {
        let value = self.amount_json(p.nanos, LEVERS[p.lever].1);
        let time = self.time_json(p.time_ms);
        let mut fields = vec![
            ("id", quote(id)),
            ("lever", quote(LEVERS[p.lever].0)),
            ("time", time),
            ("value", value),
            ("reason", quote(reason)),
        ];
        if let Some(b) = p.bucket {
            fields.push(("bucket", quote(BUCKETS[b])));
        }
        fields.shuffle(&mut self.rng);
        object(&fields)
    }

    fn adjust_new(&mut self, d: &Daemon) {
        self.count("adjustments");
        let contract = self.rng.random_range(0..CONTRACTS.len());
        // Sometimes an id already used on another contract: another adjustment.
        let reuse = self
            .adjustments
            .iter()
            .map(|a| a.id.clone())
            .filter(|id| !self.adjustment_ids.contains(&(contract, id.clone())))
            .collect::<Vec<_>>();
        let id = if !reuse.is_empty() && self.rng.random_bool(0.1) {
            self.count("ids reused on another contract");
            reuse[self.rng.random_range(0..reuse.len())].clone()
        } else {
            self.adjustment_id()
        };
        let lever = self.rng.random_range(0..LEVERS.len());
        let now = now_ms();
        let time_ms = match self.rng.random_range(0..10) {
            0..=3 => now - self.rng.random_range(0..50 * MINUTE),
            4..=5 => now - 3 * DAY + self.rng.random_range(-2 * HOUR..2 * HOUR),
            6..=7 => now - self.rng.random_range(HOUR..5 * DAY),
            8 => now - 2 * HOUR,
            _ => now + self.rng.random_range(0..3 * MINUTE),
        };
        let nanos = loop {
            let v = if LEVERS[lever].1 {
                self.rng.random_range(1..50) * UNIT
            } else {
                self.decimal(100_000)
            };
            if v != 0 {
                break if self.rng.random_bool(0.5) { -v } else { v };
            }
        };
        let bucket = self
            .rng
            .random_bool(0.4)
            .then(|| self.rng.random_range(0..BUCKETS.len()));
        let reason = match self.rng.random_range(0..12) {
            0 => "r".repeat(1024),
            1 => format!("Gutschrift f\u{fc}r Ausfall \u{2713} #{}", self.seq),
            2 => format!("  late usage from the EU gateway #{}  ", self.seq),
            _ => format!("correction #{}", self.seq),
        };
        let p = Point {
            contract,
            lever,
            bucket,
            time_ms,
            nanos,
        };
        let body = self.adjustment_body(&id, &p, &reason);
        let key = self.admin_key();
        let before = now_ms();
        let (s, got) = adjust(d, Some(key), CONTRACTS[contract], &body);
        let after = now_ms();
        assert_eq!(s, 201, "POST adjustment {body}: {got}");
        let mut want = json!({
            "kind": "adjustment",
            "id": id,
            "contract": CONTRACTS[contract],
            "lever": LEVERS[lever].0,
            "time": rfc3339(time_ms),
            "value": fmt_amount(nanos),
            "reason": reason,
        });
        if let Some(b) = bucket {
            want["bucket"] = json!(BUCKETS[b]);
        }
        let name = self.key_name(key, &got);
        let rev = check_entry(&got, &want, &name, before, after);
        self.revision(rev, &got);
        self.windows.push(p);
        self.audit[contract].push(got.clone());
        self.adjustment_ids.insert((contract, id.clone()));
        self.adjustments.push(Adj {
            p,
            id,
            reason,
            entry: got,
        });
    }

    /// Repeats an adjustment (possibly written differently, with another key): `200` and
    /// the stored entry.
    fn adjust_repeat(&mut self, d: &Daemon) {
        if self.adjustments.is_empty() {
            return;
        }
        self.count("repeated adjustments");
        let a = self.adjustments[self.rng.random_range(0..self.adjustments.len())].clone();
        let body = self.adjustment_body(&a.id, &a.p, &a.reason);
        let key = self.admin_key();
        let (s, got) = adjust(d, Some(key), CONTRACTS[a.p.contract], &body);
        assert_eq!(
            (s, &got),
            (200, &a.entry),
            "repeated adjustment {body} on {}",
            CONTRACTS[a.p.contract]
        );
    }

    /// Reuses an adjustment id with another definition: `409`, nothing changes.
    fn adjust_conflict(&mut self, d: &Daemon) {
        if self.adjustments.is_empty() {
            return;
        }
        self.count("conflicting adjustments");
        let a = self.adjustments[self.rng.random_range(0..self.adjustments.len())].clone();
        let mut p = a.p;
        let mut reason = a.reason.clone();
        match self.rng.random_range(0..4) {
            0 => {
                let step = if LEVERS[p.lever].1 { UNIT } else { 1 };
                p.nanos += if p.nanos == -step { 2 * step } else { step };
            }
            1 => reason = format!("{} (edited)", &reason[..reason.len().min(900)]),
            2 => {
                p.bucket = match p.bucket {
                    None => Some(0),
                    Some(2) => None,
                    Some(b) => Some(b + 1),
                }
            }
            _ => p.time_ms -= MINUTE,
        }
        let body = self.adjustment_body(&a.id, &p, &reason);
        let got = adjust(d, Some(ADMIN), CONTRACTS[p.contract], &body);
        assert_problem(
            &format!("conflicting adjustment {body}"),
            got,
            409,
            "conflict",
        );
    }

    fn step(&mut self, d: &Daemon) {
        match self.rng.random_range(0..100) {
            0..35 => self.post_batch(d),
            35..60 => self.adjust_new(d),
            60..68 => self.adjust_repeat(d),
            68..73 => self.adjust_conflict(d),
            73..90 => self.retract_new(d),
            90..95 => self.retract_again(d),
            _ => self.repost_retracted(d),
        }
    }

    /// Compares every window size, the balances and the audit logs with the model.
    fn check(&mut self, d: &Daemon, label: &str) {
        let started = Instant::now();
        let now = now_ms();
        let from = floor(now, DAY) - 7 * DAY;
        let to = now + 2 * HOUR;
        let (month_from, _) = calendar(Cal::Month, Tz::UTC, from);
        let month_from = month_from - DAY;
        let (mut queries, mut rows) = (0, 0);
        for c in 0..CONTRACTS.len() {
            for group in [false, true] {
                for (win, qfrom) in [
                    (Win::Minute, from),
                    (Win::Hour, from),
                    (Win::Day, from),
                    (Win::None, from),
                    (Win::Calendar(Cal::Month, Tz::UTC), month_from),
                    (Win::Calendar(Cal::Day, KOLKATA), from),
                    (Win::Calendar(Cal::Month, KOLKATA), month_from),
                ] {
                    let q = Query {
                        contract: c,
                        win,
                        group,
                        lever: None,
                        from: qfrom,
                        to,
                    };
                    rows += q.check(d, &self.windows, label);
                    queries += 1;
                }
            }
            for _ in 0..4 {
                let qfrom = now - self.rng.random_range(0..6 * DAY);
                let q = Query {
                    contract: c,
                    win: if self.rng.random_bool(0.7) {
                        Win::None
                    } else {
                        Win::Hour
                    },
                    group: self.rng.random_bool(0.5),
                    lever: self
                        .rng
                        .random_bool(0.5)
                        .then(|| self.rng.random_range(0..LEVERS.len())),
                    from: qfrom,
                    to: qfrom + self.rng.random_range(MINUTE..3 * DAY),
                };
                rows += q.check(d, &self.windows, label);
                queries += 1;
            }
        }

        // Balances: events minus retractions in the current month, pooled into the parent.
        for (c, levers) in QUOTA_LEVERS.iter().enumerate() {
            let (s, b) = d.req(
                "GET",
                &format!("/v1/contracts/{}/balance", CONTRACTS[c]),
                Some(READ),
                None,
            );
            assert_eq!(s, 200, "[{label}] balance: {b}");
            let months: Vec<&Value> = b["levers"]
                .as_array()
                .expect("levers")
                .iter()
                .filter(|r| r["period"] == "month")
                .collect();
            assert_eq!(months.len(), levers.len(), "[{label}] {b}");
            for (r, &li) in months.iter().zip(levers.iter()) {
                assert_eq!(r["lever"], LEVERS[li].0, "[{label}] {b}");
                let ps = ms(r["period_start"].as_str().expect("period_start"));
                let pe = ms(r["period_end"].as_str().expect("period_end"));
                let want: i128 = self
                    .quota
                    .iter()
                    .filter(|p| {
                        p.lever == li
                            && (p.contract == c || PARENT[p.contract] == Some(c))
                            && ps <= p.time_ms
                            && p.time_ms < pe
                    })
                    .map(|p| p.nanos)
                    .sum();
                assert_eq!(
                    r["usage"],
                    json!(fmt_amount(want)),
                    "[{label}] {} balance usage of {} (events minus retractions, \
                     adjustments excluded): {r}",
                    CONTRACTS[c],
                    LEVERS[li].0
                );
            }
        }

        // Audit logs, walked with a random page size.
        for (c, name) in CONTRACTS.iter().enumerate() {
            let limit = self.rng.random_range(1..=9);
            let got = audit_log(d, name, limit);
            if got != self.audit[c] {
                let first = got
                    .iter()
                    .zip(&self.audit[c])
                    .position(|(a, b)| a != b)
                    .unwrap_or(got.len().min(self.audit[c].len()));
                panic!(
                    "[{label}] audit log of {} (limit {limit}): {} entries, model {}; first \
                     difference at {first}:\n  got   {}\n  model {}",
                    name,
                    got.len(),
                    self.audit[c].len(),
                    got.get(first).map_or("-".into(), Value::to_string),
                    self.audit[c]
                        .get(first)
                        .map_or("-".into(), Value::to_string),
                );
            }
        }

        // Accepted ids (retracted or not) stay duplicates.
        let mut sample: Vec<String> = Vec::new();
        for _ in 0..3 {
            if !self.live.is_empty() {
                sample.push(self.live[self.rng.random_range(0..self.live.len())].clone());
            }
            if !self.retracted_order.is_empty() {
                let n = self.retracted_order.len();
                sample.push(self.retracted_order[self.rng.random_range(0..n)].clone());
            }
        }
        if !sample.is_empty() {
            let objs: Vec<String> = sample
                .iter()
                .map(|id| self.accepted[id].json.clone())
                .collect();
            let out = post_raw(d, &format!("[{}]", objs.join(",")));
            assert_counts(&out, 0, sample.len() as u64, 0);
        }
        println!(
            "[{label}] {queries} usage queries ({rows} rows), balances and audit logs match \
             the model ({} ms)",
            started.elapsed().as_millis()
        );
    }
}

fn quota_json(lever: &str, limit: impl Into<Value>) -> Value {
    json!({"lever": lever, "period": "month", "limit": limit.into(), "mode": "hard"})
}

fn setup_model(d: &Daemon) {
    for (name, counts) in LEVERS {
        d.lever(name, if counts { "count" } else { "sum" });
    }
    put(
        d,
        "/v1/contracts/ctr-root",
        json!({"customer": "cus_root", "quotas": [quota_json("bytes", -1), quota_json("reqs", -1)]}),
    );
    put(
        d,
        "/v1/contracts/ctr-kid",
        json!({"customer": "cus_kid", "parent": "ctr-root",
               "quotas": [quota_json("bytes", -1), quota_json("reqs", -1)]}),
    );
    put(
        d,
        "/v1/contracts/ctr-solo",
        json!({"customer": "cus_solo", "quotas": [quota_json("bytes", "1000000000000000")]}),
    );
}

/// Random events (batches, duplicates), adjustments (signed, old and future times,
/// buckets, repeats, conflicts) and retractions (repeated, re-posted) against an exact
/// model: every window size, balances and audit logs, in memory, after SIGTERM + restart,
/// after kill -9 + restart, and after more corrections on recovered data.
#[test]
fn corrections_match_the_model_in_every_window_across_restarts() {
    let started = Instant::now();
    let seed = seed();
    let mut w = World::new(seed);
    let mut d = Daemon::start_with("", &named_admin_table());
    setup_model(&d);

    // Phase 1: checked at once, much of it still in memory.
    for _ in 0..300 {
        w.step(&d);
    }
    w.check(&d, "phase 1, partly unflushed");

    // Phase 2, then SIGTERM.
    for _ in 0..200 {
        w.step(&d);
    }
    assert_eq!(
        d.terminate(),
        Some(0),
        "clean exit on SIGTERM: {}",
        d.logs()
    );
    d.restart();
    w.check(&d, "after SIGTERM + restart");

    // Phase 3, ending with events retracted while unflushed, then kill -9 at once.
    for _ in 0..200 {
        w.step(&d);
    }
    for _ in 0..3 {
        w.post_batch(&d);
        if let Some(i) = w.live.len().checked_sub(1) {
            w.retract_at(&d, i);
        }
    }
    w.adjust_new(&d);
    d.kill9();
    d.restart();
    w.check(&d, "after kill -9 + restart");

    // Phase 4: corrections of recovered data (repeats of pre-crash ones included).
    for _ in 0..150 {
        w.step(&d);
    }
    for _ in 0..5 {
        w.retract_again(&d);
        w.adjust_repeat(&d);
    }
    w.check(&d, "phase 4, after recovery");
    println!(
        "operations: {:?}; {} ms in all",
        w.ops,
        started.elapsed().as_millis()
    );
    for op in [
        "retractions",
        "adjustments",
        "repeated adjustments",
        "events accepted",
    ] {
        assert!(w.ops.get(op).copied().unwrap_or(0) >= 5, "too few {op}");
    }
}

// ---------------------------------------------------------------------------------------
// Concurrency

/// Usage total of one lever over `[from, to)` (`window=none`).
#[track_caller]
fn total(d: &Daemon, contract: &str, lever: &str, from: i64, to: i64) -> i128 {
    let v = d.usage(
        contract,
        &format!(
            "lever={lever}&window=none&from={}&to={}",
            param_time(from),
            param_time(to)
        ),
    );
    match v["items"].as_array().expect("items").as_slice() {
        [] => 0,
        [r] => parse_amount(r["value"].as_str().expect("value")),
        more => panic!("one row expected: {more:?}"),
    }
}

/// The usage of the `lever` / `period` balance row of a contract.
#[track_caller]
fn balance_usage(d: &Daemon, contract: &str, lever: &str, period: &str) -> i128 {
    let (s, b) = d.req(
        "GET",
        &format!("/v1/contracts/{contract}/balance?lever={lever}"),
        Some(READ),
        None,
    );
    assert_eq!(s, 200, "{b}");
    let rows: Vec<&Value> = b["levers"]
        .as_array()
        .expect("levers")
        .iter()
        .filter(|r| r["period"] == period)
        .collect();
    assert_eq!(rows.len(), 1, "one {lever}/{period} row: {b}");
    parse_amount(rows[0]["usage"].as_str().expect("usage"))
}

/// Eight threads retract the same ids at the same time (every id by every thread) while
/// events keep arriving and the same adjustment is posted by all threads at once: each
/// contribution is removed exactly once, every DELETE answers 200 with the same entry,
/// the adjustment applies once, and the audit log holds one entry per correction; also
/// after kill -9 + restart.
#[test]
fn concurrent_retractions_of_the_same_ids_apply_once() {
    const THREADS: usize = 8;
    let seed = seed();
    let mut rng = StdRng::seed_from_u64(seed);
    let mut d = Daemon::start();
    d.lever("calls", "sum");
    put(
        &d,
        "/v1/contracts/conc",
        json!({"customer": "cus_conc", "quotas": [quota_json("calls", -1)]}),
    );
    let t0 = now_ms();
    let mut values: HashMap<String, i128> = HashMap::new();
    for b in 0..6 {
        let mut objs = Vec::new();
        for i in 0..40 {
            let id = format!("c-{b}-{i}");
            let v = rng.random_range(1..10_000_000_000i128);
            objs.push(format!(
                r#"{{"id":{},"contract":"conc","lever":"calls","value":"{}","time":"{}"}}"#,
                quote(&id),
                fmt_amount(v),
                param_time(t0 - rng.random_range(1_000..40 * MINUTE))
            ));
            values.insert(id, v);
        }
        assert_counts(&post_raw(&d, &format!("[{}]", objs.join(","))), 40, 0, 0);
    }
    let posted: i128 = values.values().sum();
    let mut ids: Vec<String> = values.keys().cloned().collect();
    ids.sort();
    ids.shuffle(&mut rng);
    let targets: Vec<String> = ids[..80].to_vec();
    let retracted: i128 = targets.iter().map(|id| values[id]).sum();

    let barrier = Barrier::new(THREADS + 1);
    let answers: Mutex<Vec<(String, u16, Value)>> = Mutex::new(Vec::new());
    let adjustments: Mutex<Vec<(u16, Value)>> = Mutex::new(Vec::new());
    let late: Mutex<i128> = Mutex::new(0);
    let orders: Vec<Vec<String>> = (0..THREADS)
        .map(|_| {
            let mut o = targets.clone();
            o.shuffle(&mut rng);
            o
        })
        .collect();
    std::thread::scope(|s| {
        for order in &orders {
            let (d, barrier, answers, adjustments) = (&d, &barrier, &answers, &adjustments);
            s.spawn(move || {
                barrier.wait();
                let body = r#"{"id":"adj-race","lever":"calls","time":"TIME","value":"-7.5","reason":"race"}"#
                    .replace("TIME", &rfc3339(floor(t0, MINUTE)));
                let a = adjust(d, Some(ADMIN), "conc", &body);
                adjustments.lock().unwrap().push(a);
                for id in order {
                    let (st, v) = retract(d, Some(ADMIN), id);
                    answers.lock().unwrap().push((id.clone(), st, v));
                }
            });
        }
        // Meanwhile, new events on the same contract (flushes run concurrently).
        let (d, barrier, late) = (&d, &barrier, &late);
        s.spawn(move || {
            barrier.wait();
            for b in 0..20 {
                let mut objs = Vec::new();
                let mut sum = 0;
                for i in 0..5 {
                    let v = (b * 5 + i + 1) as i128 * UNIT / 4;
                    sum += v;
                    objs.push(format!(
                        r#"{{"id":"late-{b}-{i}","contract":"conc","lever":"calls","value":"{}"}}"#,
                        fmt_amount(v)
                    ));
                }
                assert_counts(&post_raw(d, &format!("[{}]", objs.join(","))), 5, 0, 0);
                *late.lock().unwrap() += sum;
            }
        });
    });
    let late = late.into_inner().unwrap();

    // The adjustment: exactly one 201, every other answer 200 with the same entry.
    let adjustments = adjustments.into_inner().unwrap();
    let created: Vec<&Value> = adjustments
        .iter()
        .filter(|(s, _)| *s == 201)
        .map(|(_, v)| v)
        .collect();
    assert_eq!(created.len(), 1, "one 201 among {adjustments:?}");
    for (s, v) in &adjustments {
        assert!(*s == 200 || *s == 201, "{s} {v}");
        assert_eq!(v, created[0], "every answer is the stored entry");
    }

    // Retractions: all 200, one entry per id.
    let answers = answers.into_inner().unwrap();
    assert_eq!(answers.len(), THREADS * targets.len());
    let mut by_id: HashMap<&str, &Value> = HashMap::new();
    for (id, s, v) in &answers {
        assert_eq!(*s, 200, "DELETE {id}: {v}");
        assert_eq!(v["id"], json!(id), "{v}");
        assert_eq!(v["value"], json!(fmt_amount(-values[id])), "{v}");
        match by_id.get(id.as_str()) {
            Some(first) => assert_eq!(*first, v, "every DELETE of {id} answers one entry"),
            None => {
                by_id.insert(id, v);
            }
        }
    }
    assert_eq!(by_id.len(), targets.len());

    let check = |d: &Daemon, label: &str| {
        let now = now_ms();
        let want = posted + late - retracted - 7_500_000_000;
        let from = floor(t0, DAY) - DAY;
        assert_eq!(
            fmt_amount(total(d, "conc", "calls", from, now + HOUR)),
            fmt_amount(want),
            "[{label}] usage total: posted {} + late {} - retracted once {} - 7.5",
            fmt_amount(posted),
            fmt_amount(late),
            fmt_amount(retracted)
        );
        // The same through hour rows.
        let v = d.usage(
            "conc",
            &format!(
                "lever=calls&window=hour&from={}&to={}",
                param_time(from),
                param_time(now + HOUR)
            ),
        );
        let hours: i128 = v["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| parse_amount(r["value"].as_str().unwrap()))
            .sum();
        assert_eq!(
            fmt_amount(hours),
            fmt_amount(want),
            "[{label}] hour rows: {v}"
        );
        let month = balance_usage(d, "conc", "calls", "month");
        let mut in_month = late - retracted;
        let (ms0, me0) = calendar(Cal::Month, Tz::UTC, now);
        if (ms0..me0).contains(&t0) && (ms0..me0).contains(&(t0 - 40 * MINUTE)) {
            in_month += posted;
            assert_eq!(
                fmt_amount(month),
                fmt_amount(in_month),
                "[{label}] balance usage: adjustments excluded, retractions once"
            );
        }
        let log = audit_log(d, "conc", 1000);
        assert_eq!(
            log.len(),
            targets.len() + 1,
            "[{label}] audit entries: {log:?}"
        );
        let mut seen: HashSet<String> = HashSet::new();
        let mut last = 0;
        for e in &log {
            let rev = e["revision"].as_u64().unwrap();
            assert!(rev > last, "[{label}] oldest first: {log:?}");
            last = rev;
            if e["kind"] == "adjustment" {
                assert_eq!(e, created[0]);
                continue;
            }
            assert_eq!(e["kind"], "retraction", "{e}");
            let id = e["id"].as_str().unwrap().to_string();
            assert_eq!(&e, by_id.get(id.as_str()).unwrap(), "[{label}]");
            assert!(seen.insert(id), "[{label}] two retractions of one id: {e}");
        }
    };
    check(&d, "after the race");
    d.kill9();
    d.restart();
    check(&d, "after kill -9 + restart");
    // Repeats after the restart still change nothing.
    for id in targets.iter().take(10) {
        let (s, v) = retract(&d, Some(ADMIN), id);
        assert_eq!((s, &v), (200, by_id[id.as_str()]));
    }
    check(&d, "after repeats");
}

// ---------------------------------------------------------------------------------------
// Hard quotas

fn unit_event(id: &str, contract: &str) -> String {
    format!(
        r#"{{"id":{},"contract":"{contract}","lever":"calls","value":1}}"#,
        quote(id)
    )
}

/// Posts one value-1 event; returns whether it was accepted (else `quota_exceeded`).
#[track_caller]
fn post_unit(d: &Daemon, id: &str, contract: &str) -> bool {
    let out = post_raw(d, &unit_event(id, contract));
    if out["accepted"] == 1 {
        return true;
    }
    assert_counts(&out, 0, 0, 1);
    assert_eq!(out["errors"][0]["code"], "quota_exceeded", "{out}");
    false
}

/// A hard limit of 10 filled, 3 events retracted: exactly 3 more value-1 events fit, the
/// 4th is refused; an adjustment gives no room; a rejected id cannot be retracted; the
/// same through a parent's pool; and the freed room survives kill -9.
#[test]
fn retractions_free_exactly_their_hard_quota_room() {
    let mut d = Daemon::start();
    d.lever("calls", "sum");
    let lifetime = |limit: i64| json!([{"lever": "calls", "period": "lifetime", "limit": limit, "mode": "hard"}]);
    put(
        &d,
        "/v1/contracts/hard",
        json!({"customer": "c", "quotas": lifetime(10)}),
    );
    put(
        &d,
        "/v1/contracts/pool",
        json!({"customer": "c", "quotas": lifetime(10)}),
    );
    put(
        &d,
        "/v1/contracts/kid",
        json!({"customer": "c", "parent": "pool"}),
    );

    for (contract, quota_holder) in [("hard", "hard"), ("kid", "pool")] {
        let p = |s: &str| format!("{contract}-{s}");
        let objs: Vec<String> = (0..10)
            .map(|i| unit_event(&p(&format!("f{i}")), contract))
            .collect();
        assert_counts(&post_raw(&d, &format!("[{}]", objs.join(","))), 10, 0, 0);
        assert!(
            !post_unit(&d, &p("over"), contract),
            "{contract}: the 11th fits"
        );
        assert_eq!(
            balance_usage(&d, quota_holder, "calls", "lifetime"),
            10 * UNIT
        );
        // A rejected event was never accepted: nothing to retract.
        assert_problem(
            "DELETE of a rejected id",
            retract(&d, Some(ADMIN), &p("over")),
            404,
            "not_found",
        );
        for i in [1, 4, 7] {
            let (s, v) = retract(&d, Some(ADMIN), &p(&format!("f{i}")));
            assert_eq!((s, v["value"].as_str()), (200, Some("-1")), "{v}");
        }
        assert_eq!(
            balance_usage(&d, quota_holder, "calls", "lifetime"),
            7 * UNIT,
            "{contract}: retractions leave the period"
        );
        // An adjustment changes billed usage, not the quota.
        let body = format!(
            r#"{{"id":"credit","lever":"calls","time":"{}","value":-5,"reason":"credit"}}"#,
            param_time(now_ms() - MINUTE)
        );
        let (s, v) = adjust(&d, Some(ADMIN), contract, &body);
        assert_eq!(s, 201, "{v}");
        assert_eq!(
            balance_usage(&d, quota_holder, "calls", "lifetime"),
            7 * UNIT
        );
        // Re-posting a retracted id is a duplicate: it takes no room.
        assert_counts(&post_raw(&d, &unit_event(&p("f1"), contract)), 0, 1, 0);
        let fits: Vec<bool> = (0..4)
            .map(|i| post_unit(&d, &p(&format!("n{i}")), contract))
            .collect();
        assert_eq!(
            fits,
            [true, true, true, false],
            "{contract}: exactly the freed room"
        );
        assert_eq!(
            balance_usage(&d, quota_holder, "calls", "lifetime"),
            10 * UNIT
        );
        let now = now_ms();
        assert_eq!(
            total(&d, contract, "calls", floor(now, DAY) - DAY, now + HOUR),
            5 * UNIT,
            "{contract}: 13 accepted - 3 retracted - 5 credited"
        );
    }

    d.kill9();
    d.restart();
    for (contract, holder) in [("hard", "hard"), ("kid", "pool")] {
        assert_eq!(
            balance_usage(&d, holder, "calls", "lifetime"),
            10 * UNIT,
            "{holder}"
        );
        assert!(
            !post_unit(&d, &format!("{contract}-r0"), contract),
            "{contract} full"
        );
        let (s, v) = retract(&d, Some(ADMIN), &format!("{contract}-n0"));
        assert_eq!(s, 200, "{v}");
        assert!(post_unit(&d, &format!("{contract}-r1"), contract));
        assert!(!post_unit(&d, &format!("{contract}-r2"), contract));
        assert_eq!(
            balance_usage(&d, holder, "calls", "lifetime"),
            10 * UNIT,
            "{holder}"
        );
    }
}

/// A retraction removes the event from the quota periods it counted in: those of its
/// contract and of the parent it had when it was accepted. After the contract moved to
/// another parent, the new parent's usage must not drop (it never counted the event), so
/// its hard limit still holds; the old parent gets the room back; and what the balance
/// shows is the same before and after a restart.
#[test]
fn retraction_after_reparenting_changes_only_the_periods_that_counted_the_event() {
    let mut d = Daemon::start();
    d.lever("calls", "sum");
    let lifetime = |limit: i64| json!([{"lever": "calls", "period": "lifetime", "limit": limit, "mode": "hard"}]);
    for c in ["old-pool", "new-pool", "empty-pool"] {
        put(
            &d,
            &format!("/v1/contracts/{c}"),
            json!({"customer": "c", "quotas": lifetime(10)}),
        );
    }
    put(
        &d,
        "/v1/contracts/mover",
        json!({"customer": "c", "parent": "old-pool", "quotas": lifetime(100)}),
    );
    put(
        &d,
        "/v1/contracts/mover-2",
        json!({"customer": "c", "parent": "old-pool", "quotas": lifetime(100)}),
    );
    let objs: Vec<String> = (0..3)
        .map(|i| unit_event(&format!("mv-{i}"), "mover"))
        .chain((0..2).map(|i| unit_event(&format!("mv2-{i}"), "mover-2")))
        .collect();
    assert_counts(&post_raw(&d, &format!("[{}]", objs.join(","))), 5, 0, 0);
    assert_eq!(balance_usage(&d, "old-pool", "calls", "lifetime"), 5 * UNIT);

    // `mover` joins a full pool; `mover-2` joins a pool without usage.
    put(
        &d,
        "/v1/contracts/mover",
        json!({"customer": "c", "parent": "new-pool", "quotas": lifetime(100)}),
    );
    put(
        &d,
        "/v1/contracts/mover-2",
        json!({"customer": "c", "parent": "empty-pool", "quotas": lifetime(100)}),
    );
    let objs: Vec<String> = (0..10)
        .map(|i| unit_event(&format!("np-{i}"), "new-pool"))
        .collect();
    assert_counts(&post_raw(&d, &format!("[{}]", objs.join(","))), 10, 0, 0);
    assert!(!post_unit(&d, "np-over-1", "new-pool"), "new-pool is full");

    // Retract events accepted under the old parent.
    for id in ["mv-0", "mv2-0"] {
        let (s, v) = retract(&d, Some(ADMIN), id);
        assert_eq!(s, 200, "{v}");
    }
    let check = |d: &Daemon, label: &str| {
        let got: Vec<(&str, String)> = ["new-pool", "empty-pool", "old-pool", "mover", "mover-2"]
            .into_iter()
            .map(|c| (c, fmt_amount(balance_usage(d, c, "calls", "lifetime"))))
            .collect();
        let want: Vec<(&str, String)> = vec![
            // Never counted the retracted events.
            ("new-pool", "10".into()),
            ("empty-pool", "0".into()),
            // Counted them: 5 - 2.
            ("old-pool", "3".into()),
            ("mover", "2".into()),
            ("mover-2", "1".into()),
        ];
        assert_eq!(
            got, want,
            "[{label}] lifetime usage per contract after retracting mv-0 (mover, accepted \
             under old-pool) and mv2-0 (mover-2, accepted under old-pool)"
        );
    };
    check(&d, "live");
    // The new pool's hard limit still holds: its own 11th event is refused.
    assert!(
        !post_unit(&d, "np-over-2", "new-pool"),
        "new-pool accepted an 11th unit of its own after the retraction"
    );
    d.kill9();
    d.restart();
    check(&d, "after kill -9 + restart");
}

// ---------------------------------------------------------------------------------------
// Audit log

/// The audit log lists adjustments and retractions of one contract oldest first with
/// every field, `by` naming the key (its configured name, never the key), pages with
/// `limit=2` (and every other size) without gaps or repeats, is readable by read keys
/// only in its tenant, and is the same after SIGTERM and kill -9 restarts.
#[test]
fn audit_log_is_ordered_attributed_paged_and_durable() {
    let mut d = Daemon::start_with("", &named_admin_table());
    d.lever("bytes", "sum");
    d.lever("reqs", "count");
    d.contract("aud-a");
    d.contract("aud-b");
    let t = now_ms() - 5 * MINUTE;
    let mut objs = Vec::new();
    for (i, (c, l, b)) in [
        ("aud-a", "bytes", Some("eu")),
        ("aud-a", "reqs", None),
        ("aud-a", "bytes", None),
        ("aud-a", "reqs", Some("us")),
        ("aud-b", "bytes", Some("eu")),
        ("aud-b", "reqs", None),
    ]
    .iter()
    .enumerate()
    {
        let bucket = b.map(|b| format!(r#","bucket":"{b}""#)).unwrap_or_default();
        objs.push(format!(
            r#"{{"id":"a-ev-{i}","contract":"{c}","lever":"{l}","value":"{}.25","time":"{}"{bucket}}}"#,
            i + 1,
            param_time(t + i as i64 * 1_001)
        ));
    }
    assert_counts(&post_raw(&d, &format!("[{}]", objs.join(","))), 6, 0, 0);

    // Corrections alternating kinds, keys and contracts.
    let long_reason = "\u{e9}".repeat(512);
    let old = now_ms() - 3 * DAY;
    let mut want: HashMap<String, Vec<Value>> = HashMap::new();
    let mut last_rev = 0;
    let named = |k: &str| k == NAMED_ADMIN;
    let mut admin_name: Option<String> = None;
    enum Op<'a> {
        Adj(&'a str, Value, Value),
        Ret(&'a str, Value),
    }
    let ops: Vec<(&str, Op)> = vec![
        (
            NAMED_ADMIN,
            Op::Adj(
                "aud-a",
                json!({"id": "adj-1", "lever": "bytes", "time": param_time(old), "value": "12.5", "bucket": "eu", "reason": "late gateway usage"}),
                json!({"kind": "adjustment", "id": "adj-1", "contract": "aud-a", "lever": "bytes", "time": rfc3339(old), "value": "12.5", "bucket": "eu", "reason": "late gateway usage"}),
            ),
        ),
        (
            ADMIN,
            Op::Ret(
                "a-ev-0",
                json!({"kind": "retraction", "id": "a-ev-0", "contract": "aud-a", "lever": "bytes", "time": rfc3339(t), "value": "-1.25", "bucket": "eu"}),
            ),
        ),
        (
            NAMED_ADMIN,
            Op::Adj(
                "aud-b",
                json!({"id": "adj-1", "lever": "reqs", "time": param_time(t), "value": -2, "reason": "dup calls"}),
                json!({"kind": "adjustment", "id": "adj-1", "contract": "aud-b", "lever": "reqs", "time": rfc3339(t), "value": "-2", "reason": "dup calls"}),
            ),
        ),
        (
            NAMED_ADMIN,
            Op::Ret(
                "a-ev-1",
                json!({"kind": "retraction", "id": "a-ev-1", "contract": "aud-a", "lever": "reqs", "time": rfc3339(t + 1_001), "value": "-1"}),
            ),
        ),
        (
            ADMIN,
            Op::Adj(
                "aud-a",
                json!({"id": "adj-2", "lever": "bytes", "time": param_time(t), "value": "-0.000000001", "reason": long_reason}),
                json!({"kind": "adjustment", "id": "adj-2", "contract": "aud-a", "lever": "bytes", "time": rfc3339(t), "value": "-0.000000001", "reason": long_reason}),
            ),
        ),
        (
            NAMED_ADMIN,
            Op::Ret(
                "a-ev-4",
                json!({"kind": "retraction", "id": "a-ev-4", "contract": "aud-b", "lever": "bytes", "time": rfc3339(t + 4 * 1_001), "value": "-5.25", "bucket": "eu"}),
            ),
        ),
        (
            NAMED_ADMIN,
            Op::Ret(
                "a-ev-3",
                json!({"kind": "retraction", "id": "a-ev-3", "contract": "aud-a", "lever": "reqs", "time": rfc3339(t + 3 * 1_001), "value": "-1", "bucket": "us"}),
            ),
        ),
        (
            NAMED_ADMIN,
            Op::Adj(
                "aud-a",
                json!({"id": "adj-3", "lever": "reqs", "time": param_time(t), "value": "4", "bucket": "us", "reason": "r"}),
                json!({"kind": "adjustment", "id": "adj-3", "contract": "aud-a", "lever": "reqs", "time": rfc3339(t), "value": "4", "bucket": "us", "reason": "r"}),
            ),
        ),
    ];
    let mut requests: Vec<(&str, String, String, Value)> = Vec::new();
    for (key, op) in ops {
        let before = now_ms();
        let (contract, got, expected, repeat) = match &op {
            Op::Adj(c, body, w) => {
                let (s, v) = d.req(
                    "POST",
                    &format!("/v1/contracts/{c}/adjustments"),
                    Some(key),
                    Some(body),
                );
                assert_eq!(s, 201, "{body}: {v}");
                (c.to_string(), v, w.clone(), format!("POST {c} {body}"))
            }
            Op::Ret(id, w) => {
                let (s, v) = retract(&d, Some(key), id);
                assert_eq!(s, 200, "DELETE {id}: {v}");
                let c = w["contract"].as_str().unwrap().to_string();
                (c, v, w.clone(), format!("DELETE {id}"))
            }
        };
        let after = now_ms();
        let name = if named(key) {
            NAMED_ADMIN_NAME.to_string()
        } else {
            let n = got["by"]["key"].as_str().expect("by.key").to_string();
            assert_ne!(n, NAMED_ADMIN_NAME, "{got}");
            admin_name.get_or_insert(n).clone()
        };
        let rev = check_entry(&got, &expected, &name, before, after);
        assert!(rev > last_rev, "revisions increase: {got}");
        last_rev = rev;
        want.entry(contract.clone()).or_default().push(got.clone());
        requests.push((key, contract, repeat, got));
    }

    let check = |d: &Daemon, want: &HashMap<String, Vec<Value>>, label: &str| {
        // adj-1 changed the minute, hour and day rows of 3 days ago (bucket eu), and
        // nothing else touched them: the changes feed shows each with its value, the
        // highest at the entry's revision.
        let rev1 = want["aud-a"][0]["revision"].as_u64().unwrap();
        let (s, feed) = d.req("GET", "/v1/changes?after=0&limit=10000", Some(READ), None);
        assert_eq!(s, 200, "{feed}");
        let mut revs = Vec::new();
        for (window, len) in [("minute", MINUTE), ("hour", HOUR), ("day", DAY)] {
            let start = floor(old, len);
            let rows: Vec<&Value> = feed["items"]
                .as_array()
                .expect("items")
                .iter()
                .filter(|r| {
                    r["contract"] == "aud-a"
                        && r["lever"] == "bytes"
                        && r["window"] == window
                        && r["start"] == rfc3339(start)
                        && r["bucket"] == "eu"
                })
                .collect();
            assert_eq!(
                rows.len(),
                1,
                "[{label}] the adj-1 {window} row in the feed: {feed}"
            );
            assert_eq!(rows[0]["value"], "12.5", "[{label}] {}", rows[0]);
            assert_eq!(
                rows[0]["end"],
                json!(rfc3339(start + len)),
                "[{label}] {}",
                rows[0]
            );
            revs.push(rows[0]["revision"].as_u64().expect("revision"));
        }
        assert_eq!(
            revs.iter().max(),
            Some(&rev1),
            "[{label}] adj-1 (revision {rev1}) stamped its rows {revs:?}"
        );
        for c in ["aud-a", "aud-b"] {
            let w = &want[c];
            // Default page, then every page size; limit=2 walks each entry once.
            let (s, b) = audit_page(d, Some(READ), c, "");
            assert_eq!(s, 200, "{b}");
            assert_eq!(
                b["items"],
                json!(w),
                "[{label}] {c}: oldest first, all fields"
            );
            assert_eq!(b["next_cursor"], Value::Null, "{b}");
            let (s, b) = audit_page(d, Some(ADMIN), c, "limit=1000");
            assert_eq!((s, &b["items"]), (200, &json!(w)), "[{label}] admin read");
            for limit in 1..=w.len() + 1 {
                assert_eq!(&audit_log(d, c, limit), w, "[{label}] {c} limit={limit}");
            }
            let mut cursor: Option<String> = None;
            let mut pages = 0;
            let mut walked: Vec<Value> = Vec::new();
            loop {
                let q = match &cursor {
                    Some(cur) => format!("limit=2&cursor={}", pct(cur)),
                    None => "limit=2".to_string(),
                };
                let (s, b) = audit_page(d, Some(READ), c, &q);
                assert_eq!(s, 200, "{b}");
                pages += 1;
                walked.extend(b["items"].as_array().unwrap().iter().cloned());
                match b["next_cursor"].as_str() {
                    Some(next) => cursor = Some(next.to_string()),
                    None => break,
                }
            }
            assert_eq!(&walked, w, "[{label}] {c}: limit=2 walks every entry once");
            assert_eq!(pages, w.len().div_ceil(2), "[{label}] {c}: pages of 2");
            let text = serde_json::to_string(&walked).unwrap();
            for secret in [ADMIN, NAMED_ADMIN] {
                assert!(
                    !text.contains(secret) && !text.contains(&sha256_hex(secret)),
                    "[{label}] the audit log shows a key"
                );
            }
        }
        // Other tenants see nothing; ingest keys may not read it.
        for (key, status, code) in [
            (OTHER_READ, 404, "not_found"),
            (OTHER_ADMIN, 404, "not_found"),
            (INGEST, 403, "forbidden"),
        ] {
            assert_problem(
                &format!("[{label}] GET audit log with {key}"),
                audit_page(d, Some(key), "aud-a", ""),
                status,
                code,
            );
        }
    };
    assert_eq!(want["aud-a"].len(), 6);
    assert_eq!(want["aud-b"].len(), 2);
    check(&d, &want, "live");

    assert_eq!(d.terminate(), Some(0), "{}", d.logs());
    d.restart();
    check(&d, &want, "after SIGTERM + restart");
    // Repeats answer the stored entries and add nothing.
    for (key, contract, repeat, entry) in &requests {
        let (s, v) = if let Some(id) = repeat.strip_prefix("DELETE ") {
            retract(&d, Some(key), id)
        } else {
            let body: Value = serde_json::from_str(repeat.splitn(3, ' ').nth(2).unwrap()).unwrap();
            d.req(
                "POST",
                &format!("/v1/contracts/{contract}/adjustments"),
                Some(key),
                Some(&body),
            )
        };
        assert_eq!((s, &v), (200, entry), "repeat of {repeat} after restart");
    }
    check(&d, &want, "after repeats");

    // A correction right before kill -9 is durable and comes last.
    let before = now_ms();
    let (s, v) = retract(&d, Some(NAMED_ADMIN), "a-ev-2");
    let after = now_ms();
    assert_eq!(s, 200, "{v}");
    let rev = check_entry(
        &v,
        &json!({"kind": "retraction", "id": "a-ev-2", "contract": "aud-a", "lever": "bytes",
                "time": rfc3339(t + 2 * 1_001), "value": "-3.25"}),
        NAMED_ADMIN_NAME,
        before,
        after,
    );
    assert!(
        rev > last_rev,
        "revisions keep increasing across restarts: {v}"
    );
    want.get_mut("aud-a").unwrap().push(v);
    d.kill9();
    d.restart();
    check(&d, &want, "after kill -9 + restart");
}

// ---------------------------------------------------------------------------------------
// Validation

/// Every refusal of the three endpoints, at and just past each limit, with its status
/// and code; accepted cases are counted exactly once and refused ones change nothing.
#[test]
fn corrections_refuse_invalid_requests_and_accept_the_limits() {
    let d = Daemon::start();
    for (name, agg) in [
        ("bytes", "sum"),
        ("reqs", "count"),
        ("peak", "max"),
        ("seats", "latest"),
    ] {
        d.lever(name, agg);
    }
    d.contract("val");
    put(
        &d,
        "/v1/contracts/val-hard",
        json!({"customer": "c", "quotas": [{"lever": "bytes", "period": "lifetime", "limit": 1, "mode": "hard"}]}),
    );
    // The other tenant has a contract of the same name: its keys still see only theirs.
    let (s, v) = d.req(
        "PUT",
        "/v1/contracts/other-val",
        Some(OTHER_ADMIN),
        Some(&json!({"customer": "c"})),
    );
    assert!(s == 200 || s == 201, "{v}");

    let now = now_ms();
    let base = |id: &str| -> Vec<(&'static str, String)> {
        vec![
            ("id", quote(id)),
            ("lever", quote("bytes")),
            ("time", quote(&param_time(now - 10 * MINUTE))),
            ("value", "1".to_string()),
            ("reason", quote("ok")),
        ]
    };
    let with = |id: &str, field: &'static str, raw: &str| -> String {
        let mut f = base(id);
        match f.iter_mut().find(|(k, _)| *k == field) {
            Some(e) => e.1 = raw.to_string(),
            None => f.push((field, raw.to_string())),
        }
        object(&f)
    };
    let without = |id: &str, field: &str| -> String {
        let f: Vec<(&str, String)> = base(id).into_iter().filter(|(k, _)| *k != field).collect();
        object(&f)
    };
    let lever = |id: &str, lever: &str, value: &str| -> String {
        let mut f = base(id);
        f[1].1 = quote(lever);
        f[3].1 = value.to_string();
        object(&f)
    };
    let s = |n: usize, c: &str| quote(&c.repeat(n));
    let time_in = |offset: i64| quote(&param_time(now_ms() + offset));

    // (description, key, contract, body, status, code; accepted: lever and value)
    type Case = (
        String,
        Option<&'static str>,
        &'static str,
        String,
        u16,
        &'static str,
        Option<(&'static str, i128)>,
    );
    let mut cases: Vec<Case> = Vec::new();
    let mut ok = |what: &str, body: String, lever: &'static str, nanos: i128| {
        cases.push((
            what.to_string(),
            Some(ADMIN),
            "val",
            body,
            201,
            "",
            Some((lever, nanos)),
        ));
    };
    ok("baseline", object(&base("ok-base")), "bytes", UNIT);
    ok(
        "reason of 1024 bytes",
        with("ok-r1024", "reason", &s(1024, "r")),
        "bytes",
        UNIT,
    );
    ok(
        "reason of 1024 bytes in 512 two-byte chars",
        with("ok-r512", "reason", &s(512, "\u{e9}")),
        "bytes",
        UNIT,
    );
    ok(
        "bucket of 64 bytes",
        with("ok-b64", "bucket", &s(64, "b")),
        "bytes",
        UNIT,
    );
    ok(
        "bucket of 1 byte",
        with("ok-b1", "bucket", &s(1, "b")),
        "bytes",
        UNIT,
    );
    ok(
        "bucket null",
        with("ok-bnull", "bucket", "null"),
        "bytes",
        UNIT,
    );
    ok(
        "id of 128 bytes",
        object(&base(&"i".repeat(128))),
        "bytes",
        UNIT,
    );
    ok(
        "time now+4min",
        with("ok-t4", "time", &time_in(4 * MINUTE)),
        "bytes",
        UNIT,
    );
    ok(
        "time 3 days ago (final)",
        with("ok-t3d", "time", &time_in(-3 * DAY)),
        "bytes",
        UNIT,
    );
    ok(
        "time 40 days ago",
        with("ok-t40d", "time", &time_in(-40 * DAY)),
        "bytes",
        UNIT,
    );
    ok(
        "time in the year 2000",
        with("ok-t2000", "time", &quote("2000-02-29T23:59:59.999+01:00")),
        "bytes",
        UNIT,
    );
    ok(
        "negative string value",
        with("ok-neg", "value", &quote("-12.345678901")),
        "bytes",
        -12_345_678_901,
    );
    ok(
        "negative number value",
        with("ok-negn", "value", "-3.25"),
        "bytes",
        -3_250_000_000,
    );
    ok(
        "smallest value",
        with("ok-tiny", "value", &quote("0.000000001")),
        "bytes",
        1,
    );
    ok(
        "largest value",
        with("ok-max", "value", &quote("999999999999999999.999999999")),
        "bytes",
        999_999_999_999_999_999_999_999_999,
    );
    ok(
        "most negative value",
        with("ok-min", "value", "-999999999999999999.999999999"),
        "bytes",
        -999_999_999_999_999_999_999_999_999,
    );
    ok(
        "count lever, negative whole",
        lever("ok-cnt", "reqs", "-2"),
        "reqs",
        -2 * UNIT,
    );
    ok(
        "count lever, whole string",
        lever("ok-cnt2", "reqs", &quote("3")),
        "reqs",
        3 * UNIT,
    );

    let mut bad = |what: &str,
                   key: Option<&'static str>,
                   contract: &'static str,
                   body: String,
                   status: u16,
                   code: &'static str| {
        cases.push((what.to_string(), key, contract, body, status, code, None));
    };
    let b = |id: &str| object(&base(id));
    bad(
        "ingest key",
        Some(INGEST),
        "val",
        b("x-ingest"),
        403,
        "forbidden",
    );
    bad("read key", Some(READ), "val", b("x-read"), 403, "forbidden");
    bad(
        "other tenant's ingest key",
        Some(OTHER_INGEST),
        "val",
        b("x-oingest"),
        403,
        "forbidden",
    );
    bad("no key", None, "val", b("x-nokey"), 401, "unauthorized");
    bad(
        "other tenant's admin key",
        Some(OTHER_ADMIN),
        "val",
        b("x-other"),
        404,
        "not_found",
    );
    bad(
        "unknown contract",
        Some(ADMIN),
        "nope",
        b("x-nope"),
        404,
        "not_found",
    );
    bad(
        "other tenant's contract",
        Some(ADMIN),
        "other-val",
        b("x-oval"),
        404,
        "not_found",
    );
    bad(
        "unknown field",
        Some(ADMIN),
        "val",
        with("x-field", "note", "1"),
        400,
        "invalid_request",
    );
    bad(
        "malformed JSON",
        Some(ADMIN),
        "val",
        "{\"id\":".into(),
        400,
        "malformed_body",
    );
    bad(
        "empty body",
        Some(ADMIN),
        "val",
        String::new(),
        400,
        "malformed_body",
    );
    bad(
        "not an object",
        Some(ADMIN),
        "val",
        "[1]".into(),
        400,
        "invalid_request",
    );
    for f in ["id", "lever", "time", "value", "reason"] {
        bad(
            &format!("missing {f}"),
            Some(ADMIN),
            "val",
            without("x-miss", f),
            400,
            "invalid_request",
        );
    }
    bad(
        "unknown lever",
        Some(ADMIN),
        "val",
        lever("x-lev", "nope", "1"),
        400,
        "invalid_request",
    );
    bad(
        "max lever",
        Some(ADMIN),
        "val",
        lever("x-max", "peak", "1"),
        409,
        "conflict",
    );
    bad(
        "latest lever",
        Some(ADMIN),
        "val",
        lever("x-lat", "seats", "1"),
        409,
        "conflict",
    );
    bad(
        "count lever, fraction",
        Some(ADMIN),
        "val",
        lever("x-cntf", "reqs", "1.5"),
        400,
        "invalid_request",
    );
    bad(
        "count lever, fraction string",
        Some(ADMIN),
        "val",
        lever("x-cntfs", "reqs", &quote("-0.5")),
        400,
        "invalid_request",
    );
    for (what, raw) in [
        ("value 0", "0"),
        ("value \"0\"", "\"0\""),
        ("value -0.000", "\"-0.000\""),
        ("value 0.0", "0.0"),
        ("value text", "\"abc\""),
        ("value true", "true"),
        ("value null", "null"),
        ("value empty", "\"\""),
        ("value with 10 decimals", "\"1.0000000001\""),
        ("value with 19 integer digits", "\"1000000000000000000\""),
        ("value -19 integer digits", "-1000000000000000000"),
    ] {
        bad(
            what,
            Some(ADMIN),
            "val",
            with("x-val", "value", raw),
            400,
            "invalid_request",
        );
    }
    bad(
        "reason empty",
        Some(ADMIN),
        "val",
        with("x-r0", "reason", "\"\""),
        400,
        "invalid_request",
    );
    bad(
        "reason blank",
        Some(ADMIN),
        "val",
        with("x-rb", "reason", "\"  \\t \""),
        400,
        "invalid_request",
    );
    bad(
        "reason null",
        Some(ADMIN),
        "val",
        with("x-rn", "reason", "null"),
        400,
        "invalid_request",
    );
    bad(
        "reason of 1025 bytes",
        Some(ADMIN),
        "val",
        with("x-r1025", "reason", &s(1025, "r")),
        400,
        "invalid_request",
    );
    bad(
        "reason of 513 two-byte chars",
        Some(ADMIN),
        "val",
        with("x-r513", "reason", &s(513, "\u{e9}")),
        400,
        "invalid_request",
    );
    bad(
        "bucket empty",
        Some(ADMIN),
        "val",
        with("x-b0", "bucket", "\"\""),
        400,
        "invalid_request",
    );
    bad(
        "bucket of 65 bytes",
        Some(ADMIN),
        "val",
        with("x-b65", "bucket", &s(65, "b")),
        400,
        "invalid_request",
    );
    bad(
        "id empty",
        Some(ADMIN),
        "val",
        object(&base("")),
        400,
        "invalid_request",
    );
    bad(
        "id of 129 bytes",
        Some(ADMIN),
        "val",
        object(&base(&"i".repeat(129))),
        400,
        "invalid_request",
    );
    bad(
        "time now+6min",
        Some(ADMIN),
        "val",
        with("x-t6", "time", &time_in(6 * MINUTE)),
        400,
        "invalid_request",
    );
    bad(
        "time text",
        Some(ADMIN),
        "val",
        with("x-tt", "time", "\"yesterday\""),
        400,
        "invalid_request",
    );
    bad(
        "time without zone",
        Some(ADMIN),
        "val",
        with("x-tz", "time", "\"2026-01-01T00:00:00\""),
        400,
        "invalid_request",
    );
    bad(
        "time month 13",
        Some(ADMIN),
        "val",
        with("x-t13", "time", "\"2026-13-01T00:00:00Z\""),
        400,
        "invalid_request",
    );
    bad(
        "time number",
        Some(ADMIN),
        "val",
        with("x-tn", "time", "1700000000000"),
        400,
        "invalid_request",
    );
    // Idempotency: the same id with another definition.
    bad(
        "baseline id, other value",
        Some(ADMIN),
        "val",
        with("ok-base", "value", "2"),
        409,
        "conflict",
    );
    bad(
        "baseline id, other reason",
        Some(ADMIN),
        "val",
        with("ok-base", "reason", "\"other\""),
        409,
        "conflict",
    );
    bad(
        "baseline id, with a bucket",
        Some(ADMIN),
        "val",
        with("ok-base", "bucket", "\"eu\""),
        409,
        "conflict",
    );
    bad(
        "baseline id, other lever",
        Some(ADMIN),
        "val",
        lever("ok-base", "reqs", "1"),
        409,
        "conflict",
    );

    let mut accepted: BTreeMap<&str, i128> = BTreeMap::new();
    let mut entries: Vec<Value> = Vec::new();
    let mut failures: Vec<String> = Vec::new();
    for (what, key, contract, body, status, code, adds) in &cases {
        let (s, v) = adjust(&d, *key, contract, body);
        let good = match adds {
            Some(_) => s == *status && v["kind"] == "adjustment",
            None => s == *status && v["code"] == *code,
        };
        if !good {
            failures.push(format!(
                "{what}: want {status} {code}, got {s} {}",
                v.to_string().chars().take(300).collect::<String>()
            ));
            continue;
        }
        if let Some((l, n)) = adds {
            *accepted.entry(l).or_default() += n;
            assert_eq!(v["value"], json!(fmt_amount(*n)), "{what}: {v}");
            entries.push(v);
        }
    }
    // The idempotent repeat of the baseline: 200, the stored entry.
    let (s, v) = adjust(&d, Some(ADMIN), "val", &object(&base("ok-base")));
    assert_eq!((s, &v), (200, &entries[0]), "repeat of the baseline");
    assert!(
        failures.is_empty(),
        "POST adjustments:\n  {}",
        failures.join("\n  ")
    );

    // Exactly the accepted adjustments are counted, once (whole days: day rows only).
    let from = ms("1999-01-01T00:00:00Z");
    let to = floor(now_ms(), DAY) + 2 * DAY;
    for l in ["bytes", "reqs"] {
        assert_eq!(
            fmt_amount(total(&d, "val", l, from, to)),
            fmt_amount(accepted[l]),
            "{l}: the accepted adjustments, once"
        );
    }
    assert_eq!(
        audit_log(&d, "val", 1000),
        entries,
        "audit log of the accepted ones"
    );

    // DELETE /v1/events/{id}.
    let t = param_time(now_ms() - MINUTE);
    let events = format!(
        r#"[{{"id":"d-sum","contract":"val","lever":"bytes","value":"5","time":"{t}"}},
            {{"id":"d-cnt","contract":"val","lever":"reqs","time":"{t}"}},
            {{"id":"d-max","contract":"val","lever":"peak","value":7,"time":"{t}"}},
            {{"id":"d-lat","contract":"val","lever":"seats","value":3,"time":"{t}"}},
            {{"id":"d weird/\u00e9 ?#%","contract":"val","lever":"bytes","value":"0.5","time":"{t}"}},
            {{"id":"d-hard-1","contract":"val-hard","lever":"bytes","value":1}},
            {{"id":"d-hard-2","contract":"val-hard","lever":"bytes","value":1}},
            {{"id":"d-late","contract":"val","lever":"bytes","time":"{}"}},
            {{"id":"d-bad","contract":"val","lever":"bytes","value":"x"}},
            {{"id":"d-nolever","contract":"val","lever":"nope"}}]"#,
        param_time(now_ms() - 2 * HOUR)
    );
    let out = post_raw(&d, &events);
    assert_counts(&out, 6, 0, 4);
    let codes: Vec<&str> = out["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["code"].as_str().unwrap())
        .collect();
    assert_eq!(
        codes,
        [
            "quota_exceeded",
            "too_late",
            "invalid_event",
            "unknown_lever"
        ],
        "{out}"
    );
    let n = now_ms();
    let recent = |d: &Daemon| -> Value {
        d.usage(
            "val",
            &format!(
                "window=none&from={}&to={}",
                param_time(n - 30 * MINUTE),
                param_time(n + HOUR)
            ),
        )["items"]
            .clone()
    };
    let before = recent(&d);
    let mut failures: Vec<String> = Vec::new();
    for (what, key, id, status, code) in [
        ("ingest key", Some(INGEST), "d-sum", 403, "forbidden"),
        ("read key", Some(READ), "d-sum", 403, "forbidden"),
        ("no key", None, "d-sum", 401, "unauthorized"),
        (
            "other tenant's ingest key",
            Some(OTHER_INGEST),
            "d-sum",
            403,
            "forbidden",
        ),
        (
            "other tenant's admin key",
            Some(OTHER_ADMIN),
            "d-sum",
            404,
            "not_found",
        ),
        ("unknown id", Some(ADMIN), "never-seen", 404, "not_found"),
        ("max lever", Some(ADMIN), "d-max", 409, "conflict"),
        ("max lever, again", Some(ADMIN), "d-max", 409, "conflict"),
        ("latest lever", Some(ADMIN), "d-lat", 409, "conflict"),
        (
            "quota_exceeded id",
            Some(ADMIN),
            "d-hard-2",
            404,
            "not_found",
        ),
        ("too_late id", Some(ADMIN), "d-late", 404, "not_found"),
        ("invalid_event id", Some(ADMIN), "d-bad", 404, "not_found"),
        (
            "unknown_lever id",
            Some(ADMIN),
            "d-nolever",
            404,
            "not_found",
        ),
        (
            "an adjustment's id",
            Some(ADMIN),
            "ok-base",
            404,
            "not_found",
        ),
    ] {
        let (s, v) = retract(&d, key, id);
        if s != status || v["code"] != code {
            failures.push(format!("{what} ({id}): want {status} {code}, got {s} {v}"));
        }
    }
    assert!(
        failures.is_empty(),
        "DELETE /v1/events:\n  {}",
        failures.join("\n  ")
    );
    assert_eq!(recent(&d), before, "refused retractions change nothing");
    assert_eq!(balance_usage(&d, "val-hard", "bytes", "lifetime"), UNIT);
    for (id, value) in [
        ("d-sum", "-5"),
        ("d-cnt", "-1"),
        ("d weird/\u{e9} ?#%", "-0.5"),
        ("d-hard-1", "-1"),
    ] {
        let (s, v) = retract(&d, Some(ADMIN), id);
        assert_eq!(
            (s, v["value"].as_str(), v["id"].as_str()),
            (200, Some(value), Some(id)),
            "{v}"
        );
        let (s2, v2) = retract(&d, Some(ADMIN), id);
        assert_eq!((s2, &v2), (200, &v), "repeated DELETE of {id}");
    }
    assert_eq!(balance_usage(&d, "val-hard", "bytes", "lifetime"), 0);
    let after = recent(&d);
    let value_of = |rows: &Value, lever: &str| -> String {
        rows.as_array()
            .unwrap()
            .iter()
            .find(|r| r["lever"] == lever)
            .map(|r| r["value"].as_str().unwrap().to_string())
            .unwrap_or_default()
    };
    assert_eq!(value_of(&after, "peak"), "7", "{after}");
    assert_eq!(value_of(&after, "seats"), "3", "{after}");
    assert_eq!(
        parse_amount(&value_of(&before, "bytes")) - parse_amount(&value_of(&after, "bytes")),
        5_500_000_000,
        "{before} -> {after}"
    );
    assert_eq!(
        parse_amount(&value_of(&before, "reqs")) - parse_amount(&value_of(&after, "reqs")),
        UNIT,
        "{before} -> {after}"
    );
    // Unreversible events stay duplicates.
    let out = post_raw(
        &d,
        r#"[{"id":"d-max","contract":"val","lever":"peak","value":1}]"#,
    );
    assert_counts(&out, 0, 1, 0);

    // GET /v1/contracts/{contract}/adjustments.
    let mut failures: Vec<String> = Vec::new();
    for (what, key, contract, query, status, code) in [
        ("read key", Some(READ), "val", "", 200, ""),
        ("admin key", Some(ADMIN), "val", "limit=1000", 200, ""),
        ("ingest key", Some(INGEST), "val", "", 403, "forbidden"),
        ("no key", None, "val", "", 401, "unauthorized"),
        (
            "other tenant's read key",
            Some(OTHER_READ),
            "val",
            "",
            404,
            "not_found",
        ),
        (
            "other tenant's admin key",
            Some(OTHER_ADMIN),
            "val",
            "",
            404,
            "not_found",
        ),
        ("unknown contract", Some(READ), "nope", "", 404, "not_found"),
        (
            "unknown parameter",
            Some(READ),
            "val",
            "foo=1",
            400,
            "invalid_query",
        ),
        (
            "limit 0",
            Some(READ),
            "val",
            "limit=0",
            400,
            "invalid_query",
        ),
        (
            "limit 1001",
            Some(READ),
            "val",
            "limit=1001",
            400,
            "invalid_query",
        ),
        (
            "limit text",
            Some(READ),
            "val",
            "limit=ten",
            400,
            "invalid_query",
        ),
        (
            "bad cursor",
            Some(READ),
            "val",
            "cursor=zz",
            400,
            "invalid_query",
        ),
    ] {
        let (s, v) = audit_page(&d, key, contract, query);
        let good = if status == 200 {
            s == 200 && v["items"].is_array()
        } else {
            s == status && v["code"] == code
        };
        if !good {
            failures.push(format!("{what}: want {status} {code}, got {s} {v}"));
        }
    }
    assert!(
        failures.is_empty(),
        "GET adjustments:\n  {}",
        failures.join("\n  ")
    );
    // The other tenant's own contract has an empty log of its own.
    let (s, v) = audit_page(&d, Some(OTHER_READ), "other-val", "");
    assert_eq!((s, &v["items"]), (200, &json!([])), "{v}");
}
