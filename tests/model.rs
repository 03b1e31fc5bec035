//! Model test of exact, exactly-once usage accounting (SPEC 2.1, 2.2, 4.1).
//!
//! Promise guarded: every accepted event is counted exactly once, with its exact decimal
//! value, in every minute / hour / day window and in `window=none` totals (with and
//! without `group_by=bucket`); a duplicate id never changes anything, even with a
//! different body or when two clients race with it; rejected events are reported per
//! event; and all of this holds while data is still in memory, after a SIGTERM restart
//! and after a `kill -9` restart (journal replay).
//!
//! Eight client threads post a seeded random workload; an independent in-test model
//! (i128 nano-units) predicts every usage row. Rerun a failure with `METERD_SEED=<seed>`.
//! Smaller targeted tests pin the `latest` tie rule across a restart and the rule that a
//! rejected occurrence of an id never turns a valid one into an uncounted duplicate.

mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Mutex;
use std::time::Instant;

use chrono::{DateTime, FixedOffset, SecondsFormat, Utc};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

use common::{Daemon, INGEST};

/// Nano-units per whole unit.
const UNIT: i128 = 1_000_000_000;
const MINUTE: i64 = 60_000;
const HOUR: i64 = 3_600_000;
const DAY: i64 = 86_400_000;
/// Default lateness: `final` is true once `end + LATENESS` has passed.
const LATENESS: i64 = HOUR;
/// Concurrent client threads.
const THREADS: usize = 8;

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

/// One lever per aggregation, sorted by name (the server lists levers by name).
const LEVERS: [(&str, Agg); 4] = [
    ("calls", Agg::Sum),
    ("hits", Agg::Count),
    ("peak", Agg::Max),
    ("seats", Agg::Latest),
];
const CONTRACTS: [&str; 4] = ["ctr-a", "ctr-b", "ctr-c", "ctr-d"];
const BUCKETS: [&str; 3] = ["eu-west-1", "us-east-1", "ap-south-1"];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Win {
    Minute,
    Hour,
    Day,
    None,
}

impl Win {
    const ALL: [Win; 4] = [Win::Minute, Win::Hour, Win::Day, Win::None];

    fn name(self) -> &'static str {
        match self {
            Win::Minute => "minute",
            Win::Hour => "hour",
            Win::Day => "day",
            Win::None => "none",
        }
    }

    /// Window length; `None` for `window=none`.
    fn len(self) -> Option<i64> {
        match self {
            Win::Minute => Some(MINUTE),
            Win::Hour => Some(HOUR),
            Win::Day => Some(DAY),
            Win::None => None,
        }
    }
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

/// A query parameter time (always with milliseconds).
fn param_time(ms: i64) -> String {
    datetime(ms).to_rfc3339_opts(SecondsFormat::Millis, true)
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

/// One event as sent, with what the model counts if it is accepted.
#[derive(Clone, Debug)]
struct Ev {
    id: String,
    contract: usize,
    lever: usize,
    bucket: Option<usize>,
    time_ms: i64,
    /// Counted value in nano-units (one unit for `count`).
    nanos: i128,
    /// The JSON object text sent.
    json: String,
}

#[derive(Clone, Debug)]
enum Kind {
    /// A new id: must be accepted.
    Fresh,
    /// An id already accepted (earlier batch, earlier in this batch, earlier phase):
    /// must be a duplicate, whatever its body.
    Dup,
    /// An id sent by several threads with different bodies: exactly one send wins.
    Race(usize),
    /// A new id with a body that must be refused.
    Reject {
        code: &'static str,
        field: Option<&'static str>,
    },
}

#[derive(Clone, Debug)]
struct Item {
    kind: Kind,
    ev: Ev,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Format {
    Single,
    Array,
    Ndjson,
}

#[derive(Clone, Debug)]
struct Batch {
    format: Format,
    items: Vec<Item>,
}

impl Batch {
    /// Content type and body.
    fn body(&self) -> (&'static str, String) {
        let objs: Vec<&str> = self.items.iter().map(|i| i.ev.json.as_str()).collect();
        match self.format {
            Format::Single => {
                assert_eq!(objs.len(), 1);
                ("application/json", objs[0].to_string())
            }
            Format::Array => ("application/json", format!("[{}]", objs.join(","))),
            Format::Ndjson => ("application/x-ndjson", format!("{}\n", objs.join("\n"))),
        }
    }
}

/// Seeded workload generator.
struct Gen {
    rng: StdRng,
    /// Reference "now" for event times.
    now: i64,
    /// Times already used by `latest` events (kept distinct so the winner is unambiguous).
    latest_times: HashSet<i64>,
    ids: u64,
    races: usize,
}

impl Gen {
    fn new(seed: u64) -> Gen {
        Gen {
            rng: StdRng::seed_from_u64(seed),
            now: now_ms(),
            latest_times: HashSet::new(),
            ids: 0,
            races: 0,
        }
    }

    fn new_id(&mut self, tag: &str) -> String {
        self.ids += 1;
        let n = self.ids;
        match self.rng.random_range(0..40) {
            0 => {
                let base = format!("{tag}-{n}-");
                format!("{base}{}", "x".repeat(128 - base.len()))
            }
            1 => format!("{tag}/{n} \u{e9}t\u{e9} \"q\""),
            _ => format!("{tag}-{n}-{:08x}", self.rng.random::<u32>()),
        }
    }

    /// A random value: JSON text (None = omitted) and nano-units.
    fn value(&mut self) -> (Option<String>, i128) {
        let r = self.rng.random_range(0..100);
        let (int, digits, frac): (i128, u32, i128) = match r {
            0..5 => return (None, UNIT),
            5..7 => return (Some("null".into()), UNIT),
            7..30 => (self.rng.random_range(0..1000), 0, 0),
            30..60 => {
                let d = self.rng.random_range(1..=3u32);
                (
                    self.rng.random_range(0..10_000),
                    d,
                    self.rng.random_range(0..10i128.pow(d)),
                )
            }
            60..90 => (
                self.rng.random_range(0..1_000_000),
                9,
                self.rng.random_range(0..UNIT),
            ),
            90..97 => (
                self.rng.random_range(0..1_000_000_000_000_000_000),
                9,
                self.rng.random_range(0..UNIT),
            ),
            97 => (0, 9, 1),
            98 => (0, 0, 0),
            _ => (999_999_999_999_999_999, 9, 999_999_999),
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

    /// A random event time in the last ~50 minutes: (JSON text, epoch ms).
    fn time(&mut self, latest: bool) -> (String, i64) {
        let t = loop {
            let t = self.now - self.rng.random_range(1_000..50 * MINUTE);
            if !latest || self.latest_times.insert(t) {
                break t;
            }
        };
        let dt = datetime(t);
        let text = match self.rng.random_range(0..10) {
            0 => dt
                .with_timezone(&FixedOffset::east_opt(5 * 3600 + 1800).expect("offset"))
                .to_rfc3339_opts(SecondsFormat::Millis, false),
            1 => dt
                .with_timezone(&FixedOffset::west_opt(3 * 3600).expect("offset"))
                .to_rfc3339_opts(SecondsFormat::Millis, false),
            2 => dt.to_rfc3339_opts(SecondsFormat::Micros, true),
            _ => dt.to_rfc3339_opts(SecondsFormat::Millis, true),
        };
        (quote(&text), t)
    }

    fn render(&mut self, mut fields: Vec<(&'static str, String)>) -> String {
        fields.shuffle(&mut self.rng);
        let parts: Vec<String> = fields
            .into_iter()
            .map(|(k, v)| format!("\"{k}\":{v}"))
            .collect();
        format!("{{{}}}", parts.join(","))
    }

    /// A random valid event with `id`.
    fn event(&mut self, id: String) -> Ev {
        let contract = self.rng.random_range(0..CONTRACTS.len());
        let lever = self.rng.random_range(0..LEVERS.len());
        let bucket = match self.rng.random_range(0..5) {
            0 => None,
            _ => Some(self.rng.random_range(0..BUCKETS.len())),
        };
        let agg = LEVERS[lever].1;
        let (value, nanos) = self.value();
        let (time, time_ms) = self.time(agg == Agg::Latest);
        let mut fields = vec![
            ("id", quote(&id)),
            ("contract", quote(CONTRACTS[contract])),
            ("lever", quote(LEVERS[lever].0)),
            ("time", time),
        ];
        if let Some(v) = value {
            fields.push(("value", v));
        }
        match bucket {
            Some(b) => fields.push(("bucket", quote(BUCKETS[b]))),
            None if self.rng.random_bool(0.2) => fields.push(("bucket", "null".into())),
            None => {}
        }
        let json = self.render(fields);
        Ev {
            id,
            contract,
            lever,
            bucket,
            time_ms,
            nanos: if agg == Agg::Count { UNIT } else { nanos },
            json,
        }
    }

    /// A new id with a body that must be rejected.
    fn reject(&mut self, tag: &str) -> Item {
        let id = self.new_id(tag);
        let mut ev = self.event(id.clone());
        let (contract, lever) = (quote(CONTRACTS[ev.contract]), quote(LEVERS[ev.lever].0));
        let (fields, code, field): (Vec<(&'static str, String)>, _, _) =
            match self.rng.random_range(0..6) {
                0 => (
                    vec![("contract", quote("ctr-unknown")), ("lever", lever)],
                    "unknown_contract",
                    None,
                ),
                1 => (
                    vec![("contract", contract), ("lever", quote("no-such-lever"))],
                    "unknown_lever",
                    None,
                ),
                2 => (
                    vec![
                        ("contract", contract),
                        ("lever", lever),
                        ("time", quote(&param_time(self.now - 2 * HOUR))),
                    ],
                    "too_late",
                    None,
                ),
                3 => (
                    vec![
                        ("contract", contract),
                        ("lever", lever),
                        ("time", quote(&param_time(self.now + 30 * MINUTE))),
                    ],
                    "too_early",
                    None,
                ),
                4 => (
                    vec![
                        ("contract", contract),
                        ("lever", lever),
                        ("value", quote("1.0000000001")),
                    ],
                    "invalid_event",
                    Some("value"),
                ),
                _ => (
                    vec![
                        ("contract", contract),
                        ("lever", lever),
                        ("time", quote("yesterday")),
                    ],
                    "invalid_event",
                    Some("time"),
                ),
            };
        let mut fields = fields;
        fields.push(("id", quote(&id)));
        ev.json = self.render(fields);
        Item {
            kind: Kind::Reject { code, field },
            ev,
        }
    }

    /// Generates one phase: per thread a list of batches of about `per_thread` events in
    /// total, with ~10% duplicates (re-sends of this thread's earlier ids or of `pool`,
    /// repeats within a batch, half of them with a different body), ~1.5% rejections and
    /// `races` ids each sent by two threads with different bodies.
    fn phase(
        &mut self,
        tag: &str,
        per_thread: usize,
        max_batch: usize,
        pool: &[Ev],
        races: usize,
    ) -> Vec<Vec<Batch>> {
        let mut threads = Vec::with_capacity(THREADS);
        for t in 0..THREADS {
            let ttag = format!("{tag}t{t}");
            let mut batches = Vec::new();
            let mut earlier: Vec<Ev> = Vec::new();
            let mut n = 0;
            while n < per_thread {
                let (format, size) = match self.rng.random_range(0..100) {
                    0..12 => (Format::Single, 1),
                    12..56 => (Format::Array, self.rng.random_range(1..=max_batch)),
                    _ => (Format::Ndjson, self.rng.random_range(1..=max_batch)),
                };
                let mut items: Vec<Item> = Vec::with_capacity(size);
                let mut fresh_here: Vec<usize> = Vec::new();
                for _ in 0..size {
                    let r = self.rng.random_range(0..1000);
                    let can_resend = !(earlier.is_empty() && pool.is_empty());
                    let item = if r < 50 && can_resend {
                        let src = if pool.is_empty()
                            || (!earlier.is_empty() && self.rng.random_bool(0.5))
                        {
                            &earlier[self.rng.random_range(0..earlier.len())]
                        } else {
                            &pool[self.rng.random_range(0..pool.len())]
                        };
                        self.dup_of(src.clone())
                    } else if (50..90).contains(&r) && !fresh_here.is_empty() {
                        let i = fresh_here[self.rng.random_range(0..fresh_here.len())];
                        self.dup_of(items[i].ev.clone())
                    } else if (90..105).contains(&r) {
                        self.reject(&ttag)
                    } else {
                        let id = self.new_id(&ttag);
                        fresh_here.push(items.len());
                        Item {
                            kind: Kind::Fresh,
                            ev: self.event(id),
                        }
                    };
                    items.push(item);
                }
                n += items.len();
                earlier.extend(fresh_here.iter().map(|&i| items[i].ev.clone()));
                batches.push(Batch { format, items });
            }
            threads.push(batches);
        }
        // Races: the same id in batch i of two threads, at most one race per batch.
        let mut raced: HashSet<(usize, usize)> = HashSet::new();
        let mut placed = 0;
        let mut attempts = 0;
        while placed < races && attempts < races * 50 {
            attempts += 1;
            let a = self.rng.random_range(0..THREADS);
            let b = self.rng.random_range(0..THREADS);
            let len = threads[a].len().min(threads[b].len());
            if a == b || len == 0 {
                continue;
            }
            let i = self.rng.random_range(0..len);
            if raced.contains(&(a, i)) || raced.contains(&(b, i)) {
                continue;
            }
            raced.insert((a, i));
            raced.insert((b, i));
            let race = self.races;
            self.races += 1;
            let id = self.new_id(&format!("{tag}race"));
            for t in [a, b] {
                let ev = self.event(id.clone());
                let batch = &mut threads[t][i];
                let at = self.rng.random_range(0..=batch.items.len());
                batch.items.insert(
                    at,
                    Item {
                        kind: Kind::Race(race),
                        ev,
                    },
                );
                if batch.format == Format::Single {
                    batch.format = Format::Array;
                }
            }
            placed += 1;
        }
        threads
    }

    /// `n` ids, each sent by every thread as a single event with its own body, all
    /// threads in the same order: heavy contention on in-flight claims.
    fn race_burst(&mut self, tag: &str, n: usize) -> Vec<Vec<Batch>> {
        let mut threads: Vec<Vec<Batch>> = (0..THREADS).map(|_| Vec::with_capacity(n)).collect();
        for _ in 0..n {
            let race = self.races;
            self.races += 1;
            let id = self.new_id(&format!("{tag}burst"));
            for batches in threads.iter_mut() {
                let ev = self.event(id.clone());
                batches.push(Batch {
                    format: Format::Single,
                    items: vec![Item {
                        kind: Kind::Race(race),
                        ev,
                    }],
                });
            }
        }
        threads
    }

    /// A duplicate of an accepted event: same body or a new random one.
    fn dup_of(&mut self, src: Ev) -> Item {
        let ev = if self.rng.random_bool(0.5) {
            src
        } else {
            self.event(src.id)
        };
        Item {
            kind: Kind::Dup,
            ev,
        }
    }
}

/// Counters of what was sent and what the server answered.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Tally {
    accepted: u64,
    duplicates: u64,
    rejected: u64,
}

impl std::ops::AddAssign for Tally {
    fn add_assign(&mut self, o: Tally) {
        self.accepted += o.accepted;
        self.duplicates += o.duplicates;
        self.rejected += o.rejected;
    }
}

/// The independent model: which body of each id was accepted.
#[derive(Default)]
struct Model {
    accepted: HashMap<String, Ev>,
    /// Per race id, whether each of its two sends was accepted.
    races: HashMap<usize, Vec<bool>>,
    /// What the model predicts (races count once as accepted and once as duplicate).
    expected: Tally,
    /// What the server answered.
    answered: Tally,
}

impl Model {
    fn verify_totals(&self) {
        for (race, outcomes) in &self.races {
            assert_eq!(
                outcomes.iter().filter(|w| **w).count(),
                1,
                "race {race}: exactly one of the concurrent sends must be accepted: {outcomes:?}"
            );
            assert!(outcomes.len() >= 2, "race {race}: {outcomes:?}");
        }
        assert_eq!(self.answered, self.expected, "answered vs model totals");
        assert_eq!(self.accepted.len() as u64, self.expected.accepted);
    }

    fn by_contract(&self) -> Vec<Vec<Ev>> {
        let mut out = vec![Vec::new(); CONTRACTS.len()];
        for e in self.accepted.values() {
            out[e.contract].push(e.clone());
        }
        out
    }

    /// Accepted events sorted by id (a deterministic pool for re-sends).
    fn pool(&self) -> Vec<Ev> {
        let mut v: Vec<Ev> = self.accepted.values().cloned().collect();
        v.sort_by(|a, b| a.id.cmp(&b.id));
        v
    }
}

/// Posts one batch, checks its answer against the model's prediction and records it.
fn post_batch(client: &reqwest::blocking::Client, base: &str, batch: &Batch, model: &Mutex<Model>) {
    let (ct, body) = batch.body();
    let resp = client
        .post(format!("{base}/v1/events"))
        .bearer_auth(INGEST)
        .header("content-type", ct)
        .body(body)
        .send()
        .expect("POST /v1/events");
    let status = resp.status().as_u16();
    let text = resp.text().expect("response body");
    assert_eq!(status, 200, "POST /v1/events: {text}");
    let v: Value = serde_json::from_str(&text).expect("JSON answer");
    let got = Tally {
        accepted: v["accepted"].as_u64().expect("accepted"),
        duplicates: v["duplicates"].as_u64().expect("duplicates"),
        rejected: v["rejected"].as_u64().expect("rejected"),
    };
    let mut want = Tally::default();
    let mut race = None;
    let mut errors = Vec::new();
    for (index, item) in batch.items.iter().enumerate() {
        match &item.kind {
            Kind::Fresh => want.accepted += 1,
            Kind::Dup => want.duplicates += 1,
            Kind::Race(r) => {
                assert!(race.is_none(), "at most one race per batch");
                race = Some((*r, &item.ev));
            }
            Kind::Reject { code, field } => {
                want.rejected += 1;
                let mut e = json!({"index": index, "id": item.ev.id, "code": code});
                if let Some(f) = field {
                    e["field"] = json!(f);
                }
                errors.push(e);
            }
        }
    }
    let won = race.map(|_| got.accepted == want.accepted + 1);
    match won {
        Some(true) => want.accepted += 1,
        Some(false) => want.duplicates += 1,
        None => {}
    }
    assert_eq!(
        got,
        want,
        "batch of {} ({:?}): {text}",
        batch.items.len(),
        batch.format
    );
    // Per-event errors, in input order (messages are free text).
    let mut got_errors = v["errors"].as_array().expect("errors").clone();
    for e in &mut got_errors {
        let msg = e
            .as_object_mut()
            .and_then(|o| o.remove("message"))
            .expect("error message");
        assert!(!msg.as_str().unwrap_or("").is_empty(), "empty message: {e}");
    }
    assert_eq!(got_errors, errors, "per-event errors");

    let mut m = model.lock().expect("model lock");
    m.answered += got;
    m.expected += Tally {
        accepted: want.accepted,
        duplicates: want.duplicates,
        rejected: want.rejected,
    };
    for item in &batch.items {
        if let Kind::Fresh = item.kind {
            let prev = m.accepted.insert(item.ev.id.clone(), item.ev.clone());
            assert!(prev.is_none(), "generator reused id {}", item.ev.id);
        }
    }
    if let (Some((r, ev)), Some(won)) = (race, won) {
        m.races.entry(r).or_default().push(won);
        if won {
            let prev = m.accepted.insert(ev.id.clone(), ev.clone());
            assert!(prev.is_none(), "race id {} accepted twice", ev.id);
        }
    }
}

/// Posts every thread's batches concurrently (one client thread per list).
fn ingest(d: &Daemon, threads: &[Vec<Batch>], model: &Mutex<Model>) {
    std::thread::scope(|s| {
        for batches in threads {
            let client = d.client.clone();
            let base = d.base.clone();
            s.spawn(move || {
                for b in batches {
                    post_batch(&client, &base, b, model);
                }
            });
        }
    });
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
    group: bool,
    from: i64,
    to: i64,
    lever: Option<usize>,
}

impl Query {
    fn text(&self) -> String {
        let mut q = format!(
            "from={}&to={}&window={}",
            param_time(self.from),
            param_time(self.to),
            self.win.name()
        );
        if self.group {
            q.push_str("&group_by=bucket");
        }
        if let Some(l) = self.lever {
            q.push_str(&format!("&lever={}", LEVERS[l].0));
        }
        q
    }

    fn expected(&self, evs: &[Ev], now: i64) -> Vec<Value> {
        let mut rows = Vec::new();
        for (li, (name, agg)) in LEVERS.iter().enumerate() {
            if self.lever.is_some_and(|l| l != li) {
                continue;
            }
            let len = self.win.len().unwrap_or(MINUTE);
            let (lo, hi) = (ceil(self.from, len), ceil(self.to, len));
            let mut acc: BTreeMap<(i64, Option<&str>), Acc> = BTreeMap::new();
            for e in evs.iter().filter(|e| e.lever == li) {
                let start = floor(e.time_ms, len);
                if start < lo || start >= hi {
                    continue;
                }
                let key_start = if self.win == Win::None { 0 } else { start };
                let bucket = if self.group {
                    e.bucket.map(|b| BUCKETS[b])
                } else {
                    None
                };
                let v = Acc::of(*agg, e);
                acc.entry((key_start, bucket))
                    .and_modify(|a| *a = a.merge(v))
                    .or_insert(v);
            }
            for ((start, bucket), a) in acc {
                let (start, end) = match self.win.len() {
                    Some(len) => (start, start + len),
                    None => (self.from, self.to),
                };
                let mut row = json!({
                    "lever": name,
                    "aggregation": agg.as_str(),
                    "start": rfc3339(start),
                    "end": rfc3339(end),
                    "value": fmt_amount(a.nanos()),
                    "final": end + LATENESS <= now,
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
    fn check(&self, d: &Daemon, evs: &[Ev], label: &str) -> usize {
        let text = self.text();
        let now = now_ms();
        let got = d.usage(CONTRACTS[self.contract], &text);
        let ctx = format!("[{label}] {} ?{text}", CONTRACTS[self.contract]);
        assert_eq!(got["contract"], json!(CONTRACTS[self.contract]), "{ctx}");
        assert_eq!(got["window"], json!(self.win.name()), "{ctx}");
        assert_eq!(got["tz"], json!("UTC"), "{ctx}");
        assert_eq!(got["from"], json!(rfc3339(self.from)), "{ctx}");
        assert_eq!(got["to"], json!(rfc3339(self.to)), "{ctx}");
        let items = got["items"].as_array().expect("items");
        let want = self.expected(evs, now);
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

/// Checks every window of every contract and lever (minute, hour, day, none; with and
/// without `group_by=bucket`; all levers and each lever alone) over a range covering all
/// events, plus random sub-ranges with unaligned bounds.
fn check_all(d: &Daemon, model: &Mutex<Model>, rng: &mut StdRng, label: &str) {
    let started = Instant::now();
    let by_contract = model.lock().expect("model lock").by_contract();
    let now = now_ms();
    let (from, to) = (floor(now, DAY) - DAY, now + HOUR);
    let (mut queries, mut rows) = (0, 0);
    for (c, evs) in by_contract.iter().enumerate() {
        for win in Win::ALL {
            for group in [false, true] {
                for lever in [None, Some(0), Some(1), Some(2), Some(3)] {
                    let q = Query {
                        contract: c,
                        win,
                        group,
                        from,
                        to,
                        lever,
                    };
                    rows += q.check(d, evs, label);
                    queries += 1;
                }
                for _ in 0..6 {
                    let mut qfrom = now - rng.random_range(0..56 * MINUTE);
                    let mut qto = qfrom + rng.random_range(1..45 * MINUTE);
                    if rng.random_bool(0.3) {
                        qfrom = floor(qfrom, MINUTE);
                        qto = ceil(qto, MINUTE);
                    }
                    let q = Query {
                        contract: c,
                        win,
                        group,
                        from: qfrom,
                        to: qto,
                        lever: if rng.random_bool(0.2) {
                            Some(rng.random_range(0..LEVERS.len()))
                        } else {
                            None
                        },
                    };
                    rows += q.check(d, evs, label);
                    queries += 1;
                }
            }
        }
    }
    println!(
        "[{label}] {queries} usage queries ({rows} rows) match the model ({} ms)",
        started.elapsed().as_millis()
    );
}

fn seed() -> u64 {
    let seed = std::env::var("METERD_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    println!("seed = {seed} (rerun with METERD_SEED={seed})");
    seed
}

fn setup(d: &Daemon) {
    for (name, agg) in LEVERS {
        d.lever(name, agg.as_str());
    }
    for c in CONTRACTS {
        d.contract(c);
    }
}

fn events_in(w: &[Vec<Batch>]) -> usize {
    w.iter().flatten().map(|b| b.items.len()).sum()
}

/// Eight concurrent clients, ~29,000 events, checked against the model in memory, after
/// SIGTERM + restart and after kill -9 + restart.
#[test]
fn concurrent_ingest_matches_model_in_every_window() {
    let started = Instant::now();
    let seed = seed();
    let mut qrng = StdRng::seed_from_u64(seed ^ 0x9e37_79b9_7f4a_7c15);
    let mut g = Gen::new(seed);
    let model = Mutex::new(Model::default());
    let mut d = Daemon::start();
    setup(&d);

    // Phase 1: concurrent ingest, checked while much of it is still in memory.
    let w1 = g.phase("p1", 3_000, 500, &[], 64);
    let t = Instant::now();
    ingest(&d, &w1, &model);
    println!(
        "phase 1: {} events in {} batches from {THREADS} threads in {} ms",
        events_in(&w1),
        w1.iter().map(Vec::len).sum::<usize>(),
        t.elapsed().as_millis()
    );
    // Every thread sends the same ids at the same time, each with its own body.
    let burst = g.race_burst("p1", 150);
    let t = Instant::now();
    ingest(&d, &burst, &model);
    println!(
        "race burst: 150 ids x {THREADS} threads in {} ms",
        t.elapsed().as_millis()
    );
    model.lock().expect("model lock").verify_totals();
    check_all(&d, &model, &mut qrng, "after ingest, partly unflushed");

    // SIGTERM: drained, flushed, closed; everything read back from RocksDB.
    assert_eq!(
        d.terminate(),
        Some(0),
        "clean exit on SIGTERM: {}",
        d.logs()
    );
    d.restart();
    check_all(&d, &model, &mut qrng, "after SIGTERM + restart");

    // Phase 2: more events (re-sending phase-1 ids as duplicates), then kill -9 at once,
    // so the last acknowledged events exist only in the journal.
    g.now = now_ms();
    let pool = model.lock().expect("model lock").pool();
    let w2 = g.phase("p2", 500, 100, &pool, 24);
    let t = Instant::now();
    ingest(&d, &w2, &model);
    d.kill9();
    println!(
        "phase 2: {} events in {} ms, then kill -9",
        events_in(&w2),
        t.elapsed().as_millis()
    );
    model.lock().expect("model lock").verify_totals();
    d.restart();
    check_all(&d, &model, &mut qrng, "after kill -9 + restart");

    // Every accepted id stays a duplicate after the crash, whatever the new body.
    let mut resend: Vec<Batch> = Vec::new();
    for chunk in pool.chunks(700).step_by(3) {
        let items = chunk.iter().map(|e| g.dup_of(e.clone())).collect();
        resend.push(Batch {
            format: Format::Array,
            items,
        });
    }
    let n = resend.iter().map(|b| b.items.len()).sum::<usize>();
    let per_thread: Vec<Vec<Batch>> = (0..THREADS)
        .map(|t| resend.iter().skip(t).step_by(THREADS).cloned().collect())
        .collect();
    ingest(&d, &per_thread, &model);
    model.lock().expect("model lock").verify_totals();
    check_all(
        &d,
        &model,
        &mut qrng,
        &format!("after re-sending {n} accepted ids"),
    );
    let m = model.lock().expect("model lock");
    println!(
        "totals: {:?}; {} distinct accepted ids; {} races; {} ms in all",
        m.answered,
        m.accepted.len(),
        m.races.len(),
        started.elapsed().as_millis()
    );
}

/// Posts one JSON body and returns the answer's (accepted, duplicates, rejected).
fn post_counts(d: &Daemon, body: &Value) -> (u64, u64, u64) {
    let (s, v) = d.post_events(body);
    assert_eq!(s, 200, "{v}");
    let n = |k: &str| v[k].as_u64().unwrap_or_else(|| panic!("{k} in {v}"));
    (n("accepted"), n("duplicates"), n("rejected"))
}

/// Total of `lever` for `contract` over the last two hours (window=none).
fn total(d: &Daemon, contract: &str, lever: &str) -> String {
    let now = now_ms();
    let q = format!(
        "from={}&to={}&window=none&lever={lever}",
        param_time(now - 2 * HOUR),
        param_time(now + 10 * MINUTE)
    );
    let v = d.usage(contract, &q);
    match v["items"].as_array().expect("items").as_slice() {
        [] => "0".into(),
        [row] => row["value"].as_str().expect("value").to_string(),
        more => panic!("one row expected: {more:?}"),
    }
}

/// The `seats` value of the minute window containing `t`.
fn seats_at(d: &Daemon, t: i64) -> String {
    let start = floor(t, MINUTE);
    let q = format!(
        "from={}&to={}&window=minute&lever=seats",
        param_time(start),
        param_time(start + MINUTE)
    );
    let v = d.usage("ctr-tie", &q);
    v["items"][0]["value"]
        .as_str()
        .expect("one row")
        .to_string()
}

/// `latest` breaks equal event times by arrival: the later-accepted event wins, also
/// when the earlier one was accepted before a restart.
#[test]
fn latest_tie_is_won_by_the_later_event_across_a_restart() {
    let mut d = Daemon::start();
    d.lever("seats", "latest");
    d.lever("calls", "sum");
    d.contract("ctr-tie");
    let ev = |id: &str, lever: &str, value: &str, t: i64| {
        json!({"id": id, "contract": "ctr-tie", "lever": lever, "value": value,
               "time": param_time(t)})
    };
    let t1 = floor(now_ms() - 20 * MINUTE, 1000);
    let t2 = floor(now_ms() - 10 * MINUTE, 1000);
    // Same process: the later of two equal-time events wins.
    assert_eq!(post_counts(&d, &ev("same-1", "seats", "5", t1)), (1, 0, 0));
    assert_eq!(post_counts(&d, &ev("same-2", "seats", "6", t1)), (1, 0, 0));
    assert_eq!(seats_at(&d, t1), "6");
    // Some acknowledged requests, so the journal sequence moves on, then the tie's
    // first event; then a clean restart and the tie's second event.
    for i in 0..5 {
        assert_eq!(
            post_counts(&d, &ev(&format!("pad-{i}"), "calls", "1", t2)),
            (1, 0, 0)
        );
    }
    assert_eq!(post_counts(&d, &ev("tie-1", "seats", "5", t2)), (1, 0, 0));
    assert_eq!(seats_at(&d, t2), "5");
    assert_eq!(d.terminate(), Some(0));
    d.restart();
    assert_eq!(seats_at(&d, t2), "5");
    assert_eq!(post_counts(&d, &ev("tie-2", "seats", "7", t2)), (1, 0, 0));
    assert_eq!(
        seats_at(&d, t2),
        "7",
        "tie-2 has the same time as tie-1 and was accepted later, so it must win"
    );
}

/// An id whose only earlier occurrence was rejected is not a duplicate: a valid event
/// answered `accepted` or `duplicate` is counted exactly once (SPEC 2.2).
#[test]
fn a_rejected_occurrence_never_makes_a_valid_one_a_duplicate() {
    let d = Daemon::start();
    d.lever("calls", "sum");
    d.contract("ctr-x");
    let body = json!([
        {"id": "x-1", "contract": "ctr-x", "lever": "no-such-lever", "value": "2"},
        {"id": "x-1", "contract": "ctr-x", "lever": "calls", "value": "2"},
    ]);
    let (accepted, duplicates, rejected) = post_counts(&d, &body);
    assert_eq!(rejected, 1);
    assert_eq!(accepted + duplicates, 1);
    assert_eq!(
        total(&d, "ctr-x", "calls"),
        "2",
        "the valid occurrence of x-1 was answered accepted={accepted} duplicates={duplicates} \
         but is not counted"
    );
    assert_eq!(
        post_counts(
            &d,
            &json!({"id": "x-1", "contract": "ctr-x", "lever": "calls", "value": "2"})
        ),
        (0, 1, 0)
    );
}

/// Same promise across concurrent requests: a request that rejects its occurrence of an
/// id (while committing other events) must not turn another request's valid occurrence
/// of that id into an uncounted `duplicate`.
#[test]
fn a_concurrently_rejected_occurrence_never_makes_a_valid_one_a_duplicate() {
    let d = Daemon::start();
    d.lever("calls", "sum");
    d.contract("ctr-x");
    d.contract("ctr-pad");
    let mut counted = 0u64;
    let mut dup_answers = 0u64;
    for attempt in 0..24u64 {
        let x = format!("x-{attempt}");
        let mut big = vec![json!({"id": x, "contract": "ctr-x", "lever": "no-such-lever"})];
        big.extend((0..3000).map(|i| {
            json!({"id": format!("pad-{attempt}-{i}"), "contract": "ctr-pad", "lever": "calls"})
        }));
        let big = Value::Array(big);
        let single = json!({"id": x, "contract": "ctr-x", "lever": "calls", "value": 1});
        let (_, (a, dup, r)) = std::thread::scope(|s| {
            let h = s.spawn(|| post_counts(&d, &big));
            std::thread::sleep(std::time::Duration::from_millis(attempt % 12));
            let one = post_counts(&d, &single);
            (h.join().expect("big request"), one)
        });
        assert_eq!(r, 0);
        counted += a + dup;
        dup_answers += dup;
    }
    println!("{dup_answers} of 24 valid single events were answered `duplicate`");
    assert_eq!(
        total(&d, "ctr-x", "calls"),
        counted.to_string(),
        "every valid event answered accepted or duplicate must be counted once \
         ({dup_answers} were answered duplicate)"
    );
}
