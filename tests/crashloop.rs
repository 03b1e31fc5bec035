//! Crash-loop test: 20 consecutive `kill -9` at random moments under mixed load (SPEC 2.2,
//! 3, 4.2, 4.3).
//!
//! Promises guarded:
//! - a 2xx ingest answer means every accepted event is durable: after each of the 20
//!   `kill -9` restarts every acknowledged event is counted exactly once, and an event
//!   whose request got no answer is counted at most once; re-sending it with the same id
//!   settles its fate (`accepted`: it was lost, `duplicate`: it was kept, `quota_exceeded`:
//!   it was lost and no longer fits) and from then on it is counted exactly once;
//! - a re-sent acknowledged id is always `duplicate` and changes nothing, even with another
//!   body and even when the hard limit is full;
//! - the quota check and the increment are one atomic, durable step: under concurrent
//!   hammering across the restarts, a contract's hard month limit and a reseller pool's
//!   (parent) limit are never exceeded, the quota usage (balance) always equals the
//!   events counted, adjustments do not touch it, and at the end the limits fill exactly
//!   (no event is refused while the limit still has room for it);
//! - adjustments are durable on a 2xx and idempotent by id across restarts: a repeat
//!   returns the stored entry, an adjustment of unknown fate is applied exactly once, and
//!   the audit log lists each exactly once;
//! - the changes feed: a consumer that pages `GET /v1/changes` across all the restarts
//!   (resuming from its last `next_after` after losing its connection) sees strictly
//!   increasing revisions and ends with exactly the stored minute, hour and day rows,
//!   which equal the rows computed from the client-side ledger.
//!
//! How: three ingest clients (single events and batches on a `sum` and a `count` lever,
//! fresh ids mixed with deliberate re-sends of acknowledged ids), two quota hammers
//! (batches against a hard-limited contract and the children and parent of a hard pool,
//! all at one fixed event time), an adjustment client (new ids and repeats) and the feed
//! consumer run concurrently. The main thread kills the daemon with `kill -9` after a
//! random delay, waits until every client has lost its connection (each records the
//! request in flight as of unknown fate and parks), restarts the daemon on the same data
//! dir (`durability = "fsync"`, `flush_interval = "30ms"`, so many kills land mid-flush),
//! checks that the usage and the quota usage are exactly "acknowledged + kept", settles
//! every unknown id by re-sending it, checks again that the totals are exactly the
//! ledger, and lets the clients continue. After the 20th restart it fills the hard limits,
//! re-sends every id ever sent, and compares stored rows, feed and ledger window by
//! window.
//!
//! Seeded (kill delays and client choices); the seed is printed, rerun a failure with
//! `METERD_SEED=<seed>` (thread interleavings still differ from run to run).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use chrono::{DateTime, SecondsFormat, Utc};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use reqwest::blocking::Client;
use serde_json::{json, Value};

use common::{Daemon, ADMIN, INGEST, READ};

// ---------------------------------------------------------------------------------------
// Set-up

const KILLS: usize = 20;
const INGESTERS: usize = 3;
const HAMMERS: usize = 2;
/// Ingest clients, hammers, the adjustment client and the feed consumer.
const WORKERS: usize = INGESTERS + HAMMERS + 2;

/// `sum` lever: the one with quotas.
const CALLS: &str = "calls";
/// `count` lever.
const HITS: &str = "hits";
const BUCKETS: [&str; 3] = ["eu", "us", "ap"];

/// Contracts without quotas (plain ingest).
const PLAIN: [&str; 3] = ["cl-plain-a", "cl-plain-b", "cl-plain-c"];
/// A contract with its own hard month limit on `calls`.
const HARD: &str = "cl-hard";
/// A reseller: hard month limit on `calls` shared with its children.
const POOL: &str = "cl-pool";
/// Child of `POOL` with a smaller hard month limit of its own.
const KID_A: &str = "cl-kid-a";
/// Child of `POOL` without quotas of its own.
const KID_B: &str = "cl-kid-b";
const ALL: [&str; 7] = [PLAIN[0], PLAIN[1], PLAIN[2], HARD, POOL, KID_A, KID_B];

/// Hard month limits on `calls`, in whole units.
const HARD_LIMIT: i128 = 6_000;
const POOL_LIMIT: i128 = 9_000;
const KID_A_LIMIT: i128 = 3_000;

/// Nano-units per whole unit (the daemon's precision).
const UNIT: i128 = 1_000_000_000;
const MINUTE: i64 = 60_000;
const HOUR: i64 = 3_600_000;
const DAY: i64 = 86_400_000;
const WINDOWS: [(&str, i64); 3] = [("minute", MINUTE), ("hour", HOUR), ("day", DAY)];

// ---------------------------------------------------------------------------------------
// Small helpers (copied, not shared: tests/common stays as it is)

fn seed() -> u64 {
    let seed = std::env::var("METERD_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random::<u64>);
    println!("seed = {seed} (rerun with METERD_SEED={seed})");
    seed
}

fn now_ms() -> i64 {
    Utc::now().timestamp_millis()
}

/// A body or query time, always with milliseconds.
fn param_time(ms: i64) -> String {
    DateTime::from_timestamp_millis(ms)
        .expect("time in range")
        .to_rfc3339_opts(SecondsFormat::Millis, true)
}

fn parse_time(s: &str) -> i64 {
    DateTime::parse_from_rfc3339(s)
        .unwrap_or_else(|e| panic!("{s:?} is not RFC 3339: {e}"))
        .timestamp_millis()
}

fn floor(t: i64, len: i64) -> i64 {
    t.div_euclid(len) * len
}

/// Formats nano-units as a decimal string without trailing zeros.
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

/// Nano-units as a JSON value: a decimal string or a JSON number (exact either way).
fn amount_json(nanos: i128, as_string: bool) -> Value {
    if as_string {
        Value::String(fmt_amount(nanos))
    } else if nanos % UNIT == 0 {
        json!((nanos / UNIT) as i64)
    } else {
        // Quarters: exact in binary, printed by serde_json without noise.
        json!(nanos as f64 / UNIT as f64)
    }
}

fn client() -> Client {
    Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client")
}

/// Sends a request; `Err` when no complete answer came back (connection refused or
/// reset, timeout), which after a kill means: fate unknown.
fn send(
    client: &Client,
    method: reqwest::Method,
    url: &str,
    key: &str,
    body: Option<&Value>,
) -> Result<(u16, String), String> {
    let mut rb = client.request(method, url).bearer_auth(key);
    if let Some(b) = body {
        rb = rb
            .header("content-type", "application/json")
            .body(serde_json::to_vec(b).expect("body"));
    }
    rb.send()
        .and_then(|r| {
            let status = r.status().as_u16();
            r.text().map(|t| (status, t))
        })
        .map_err(|e| format!("{e:?}"))
}

fn parse_json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|_| Value::String(text.to_string()))
}

/// `(accepted, duplicates, rejected)` of an ingest answer.
#[track_caller]
fn counts(v: &Value) -> (u64, u64, u64) {
    let n = |k: &str| v[k].as_u64().unwrap_or_else(|| panic!("no `{k}` in {v}"));
    (n("accepted"), n("duplicates"), n("rejected"))
}

/// Starts a daemon with the harness config, `flush_interval = "30ms"` and fsync
/// durability (the default, stated explicitly).
fn start() -> Daemon {
    let dir = Arc::new(tempfile::tempdir().expect("tempdir"));
    let config = dir.path().join("meterd.toml");
    let text = common::config_text("durability = \"fsync\"", "");
    let fast = text.replace("flush_interval = \"200ms\"", "flush_interval = \"30ms\"");
    assert_ne!(
        text, fast,
        "the harness config no longer sets flush_interval"
    );
    std::fs::write(&config, fast).unwrap();
    Daemon::spawn(dir, config)
}

/// The last lines of the daemon's log, for failure messages.
fn log_tail(d: &Daemon) -> String {
    let logs = d.logs();
    let lines: Vec<&str> = logs.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

// ---------------------------------------------------------------------------------------
// The client-side ledger

/// What the clients know about an event or an adjustment they sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fate {
    /// Answered 2xx and accepted: must be counted exactly once.
    Acked,
    /// The request got no answer (the daemon was killed): counted at most once until
    /// settled.
    Unknown,
    /// Unknown, then re-sent after the restart and answered `duplicate` (or `200` for an
    /// adjustment): it had been kept.
    Kept,
    /// Unknown, then re-sent and accepted (`201` for an adjustment): it had been lost.
    Lost,
    /// Refused with `quota_exceeded` (when sent, or when re-sent to settle it): never
    /// counted.
    Rejected,
}

impl Fate {
    fn counted(self) -> bool {
        matches!(self, Fate::Acked | Fate::Kept | Fate::Lost)
    }
}

/// An event as sent; its JSON body is rebuilt from these fields, identically.
#[derive(Clone, Debug)]
struct Ev {
    id: String,
    contract: &'static str,
    lever: &'static str,
    /// The value sent, in nano-units (ignored by the `count` lever).
    value: i128,
    value_as_string: bool,
    time: i64,
    bucket: Option<&'static str>,
}

impl Ev {
    fn json(&self) -> Value {
        let mut e = json!({
            "id": self.id,
            "contract": self.contract,
            "lever": self.lever,
            "value": amount_json(self.value, self.value_as_string),
            "time": param_time(self.time),
        });
        if let Some(b) = self.bucket {
            e["bucket"] = json!(b);
        }
        e
    }

    /// The same id with another body: a re-send must still be a duplicate.
    fn altered_json(&self) -> Value {
        let mut e = self.json();
        e["value"] = json!("777.5");
        e["bucket"] = json!("altered");
        e
    }

    /// What the event adds to its windows and quota periods.
    fn contribution(&self) -> i128 {
        if self.lever == HITS {
            UNIT
        } else {
            self.value
        }
    }
}

/// An adjustment as sent.
#[derive(Clone, Debug)]
struct Adj {
    id: String,
    contract: &'static str,
    lever: &'static str,
    value: i128,
    time: i64,
    bucket: Option<&'static str>,
    body: Value,
}

#[derive(Default)]
struct Ledger {
    events: Vec<(Ev, Fate)>,
    adjs: Vec<(Adj, Fate)>,
    /// Kill cycle in which a hammer first saw `quota_exceeded`, per contract.
    first_rejection: BTreeMap<&'static str, usize>,
    /// Deliberate re-sends of acknowledged ids (events, adjustments), all answered as
    /// repeats.
    resent_events: u64,
    resent_adjs: u64,
}

/// `(contract, lever)` -> total in nano-units.
type Totals = BTreeMap<(String, String), i128>;
/// `(contract, lever, bucket, window, start ms)` of a window row.
type RowKey = (String, String, Option<String>, &'static str, i64);
type Rows = BTreeMap<RowKey, i128>;

fn add(t: &mut Totals, contract: &str, lever: &str, v: i128) {
    *t.entry((contract.to_string(), lever.to_string()))
        .or_default() += v;
}

fn nonzero<K: Ord, V: PartialEq + Default>(m: BTreeMap<K, V>) -> BTreeMap<K, V> {
    m.into_iter().filter(|(_, v)| *v != V::default()).collect()
}

impl Ledger {
    /// Usage per contract and lever that the ledger says is counted.
    fn totals(&self) -> Totals {
        let mut t = Totals::new();
        for (e, f) in &self.events {
            if f.counted() {
                add(&mut t, e.contract, e.lever, e.contribution());
            }
        }
        for (a, f) in &self.adjs {
            if f.counted() {
                add(&mut t, a.contract, a.lever, a.value);
            }
        }
        nonzero(t)
    }

    /// Counted `calls` events on `contract` and, for the pool, on its children: the
    /// quota usage of its month (adjustments do not count toward quotas).
    fn quota_used(&self, contract: &str) -> i128 {
        let members: &[&str] = if contract == POOL {
            &[POOL, KID_A, KID_B]
        } else {
            &[contract]
        };
        self.events
            .iter()
            .filter(|(e, f)| f.counted() && e.lever == CALLS && members.contains(&e.contract))
            .map(|(e, _)| e.contribution())
            .sum()
    }

    /// Every minute, hour and day row the ledger implies.
    fn rows(&self) -> Rows {
        let mut rows = Rows::new();
        let mut put = |contract: &str, lever: &str, bucket: Option<&str>, time: i64, v: i128| {
            for (w, len) in WINDOWS {
                let k = (
                    contract.to_string(),
                    lever.to_string(),
                    bucket.map(str::to_string),
                    w,
                    floor(time, len),
                );
                *rows.entry(k).or_default() += v;
            }
        };
        for (e, f) in &self.events {
            if f.counted() {
                put(e.contract, e.lever, e.bucket, e.time, e.contribution());
            }
        }
        for (a, f) in &self.adjs {
            if f.counted() {
                put(a.contract, a.lever, a.bucket, a.time, a.value);
            }
        }
        nonzero(rows)
    }

    fn count(&self, fate: Fate) -> usize {
        self.events.iter().filter(|(_, f)| *f == fate).count()
    }
}

// ---------------------------------------------------------------------------------------
// Shared state of the clients and the kill loop

/// Which daemon the clients talk to.
struct Phase {
    /// Incremented at every restart.
    generation: u64,
    base: String,
    /// Clients that lost their connection to this generation and wait for the next one.
    parked: usize,
    /// Kill cycle in progress (for the ledger's notes).
    cycle: usize,
}

struct Shared {
    phase: Mutex<Phase>,
    changed: Condvar,
    /// Set just before the main thread kills the daemon: a failed request is expected.
    killing: AtomicBool,
    /// The clients stop (at the end, or when the test fails).
    stop: AtomicBool,
    /// Every write is done: the consumer drains the feed and returns.
    finish: AtomicBool,
    ledger: Mutex<Ledger>,
    /// Event time of every quota event (one month period, whatever the wall clock does).
    quota_time: i64,
    /// Workers that returned (normally only after `stop`).
    done: AtomicUsize,
}

impl Shared {
    fn current(&self) -> (u64, String) {
        let p = self.phase.lock().unwrap();
        (p.generation, p.base.clone())
    }

    fn cycle(&self) -> usize {
        self.phase.lock().unwrap().cycle
    }

    fn stopped(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    /// Called after a request to daemon `generation` failed: waits until the next
    /// daemon is up (or the test stops). A failure while the daemon was not being killed
    /// is a daemon crash or hang: the client panics.
    fn park(&self, generation: u64, who: &str, what: &str, err: &str) {
        if self.stopped() {
            return;
        }
        assert!(
            self.killing.load(Ordering::SeqCst),
            "{who}: {what} failed although the daemon was not being killed \
             (generation {generation}): {err}"
        );
        let mut p = self.phase.lock().unwrap();
        if p.generation != generation {
            return;
        }
        p.parked += 1;
        self.changed.notify_all();
        while p.generation == generation && !self.stopped() {
            p = self
                .changed
                .wait_timeout(p, Duration::from_millis(50))
                .unwrap()
                .0;
        }
    }
}

/// Sets `stop` when dropped, also while the main thread unwinds from a failed
/// assertion, so that no client waits forever for a daemon that never comes back.
struct StopOnDrop<'a>(&'a Shared);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.stop.store(true, Ordering::SeqCst);
        self.0.finish.store(true, Ordering::SeqCst);
        self.0.changed.notify_all();
    }
}

/// Counts a worker as done when it returns or panics.
struct DoneOnDrop<'a>(&'a Shared);

impl Drop for DoneOnDrop<'_> {
    fn drop(&mut self) {
        self.0.done.fetch_add(1, Ordering::SeqCst);
        self.0.changed.notify_all();
    }
}

// ---------------------------------------------------------------------------------------
// Clients

/// Plain ingest: single events (as an object or a one-element array) and batches of up to
/// 20 on the `PLAIN` contracts, both levers, some with a bucket, event times up to two
/// minutes back; about one event in seven is a re-send of an acknowledged id, half of them
/// with another body. Every answer must account for each event exactly.
fn ingester(shared: &Shared, w: usize, seed: u64) {
    let _done = DoneOnDrop(shared);
    let who = format!("ingester {w}");
    let client = client();
    let mut rng = StdRng::seed_from_u64(seed);
    let mut acked: Vec<Ev> = Vec::new();
    let mut n = 0u64;
    while !shared.stopped() {
        let (generation, base) = shared.current();
        let size = if rng.random_bool(0.4) {
            1
        } else {
            rng.random_range(2..=20)
        };
        let mut fresh: Vec<Ev> = Vec::new();
        let mut items: Vec<Value> = Vec::new();
        let mut resent: Vec<String> = Vec::new();
        for _ in 0..size {
            if !acked.is_empty() && rng.random_bool(0.15) {
                let e = &acked[rng.random_range(0..acked.len())];
                items.push(if rng.random_bool(0.5) {
                    e.altered_json()
                } else {
                    e.json()
                });
                resent.push(e.id.clone());
                continue;
            }
            n += 1;
            let lever = if rng.random_bool(0.6) { CALLS } else { HITS };
            let e = Ev {
                id: format!("cl-i{w}-{n}"),
                contract: PLAIN[rng.random_range(0..PLAIN.len())],
                lever,
                value: rng.random_range(1..=40) * UNIT / 4,
                value_as_string: rng.random_bool(0.5),
                time: now_ms() - rng.random_range(0..2 * MINUTE),
                bucket: rng
                    .random_bool(0.7)
                    .then(|| BUCKETS[rng.random_range(0..BUCKETS.len())]),
            };
            items.push(e.json());
            fresh.push(e);
        }
        // A re-send of an id already in this batch never happens: ids are distinct.
        let mut ids: Vec<&str> = items.iter().map(|i| i["id"].as_str().unwrap()).collect();
        ids.sort_unstable();
        ids.dedup();
        if ids.len() != items.len() {
            continue;
        }
        let body = if size == 1 && rng.random_bool(0.5) {
            items[0].clone()
        } else {
            Value::Array(items)
        };
        let url = format!("{base}/v1/events");
        match send(&client, reqwest::Method::POST, &url, INGEST, Some(&body)) {
            Ok((200, text)) => {
                let v = parse_json(&text);
                assert_eq!(
                    counts(&v),
                    (fresh.len() as u64, resent.len() as u64, 0),
                    "{who}: fresh ids must be accepted and re-sent acknowledged ids must be \
                     duplicates (an `accepted` re-send means an acknowledged event was lost); \
                     re-sent {resent:?}; answer {text}"
                );
                let mut l = shared.ledger.lock().unwrap();
                l.resent_events += resent.len() as u64;
                l.events
                    .extend(fresh.iter().map(|e| (e.clone(), Fate::Acked)));
                drop(l);
                acked.extend(fresh);
            }
            Ok((status, text)) => {
                panic!("{who}: unexpected answer {status} to {body}: {text}")
            }
            Err(err) => {
                let mut l = shared.ledger.lock().unwrap();
                l.events
                    .extend(fresh.into_iter().map(|e| (e, Fate::Unknown)));
                drop(l);
                shared.park(generation, &who, "POST /v1/events", &err);
            }
        }
        thread::sleep(Duration::from_millis(rng.random_range(0..6)));
    }
}

/// Quota hammering: batches of 1 to 30 `calls` events of value 2 to 4 against the
/// hard-limited contract and the pool (its children and itself), all at the fixed quota
/// time; about one in ten is a re-send of an acknowledged id, which must be a duplicate
/// even when the limit is full. Every `quota_exceeded` must name a fresh event.
fn hammer(shared: &Shared, w: usize, seed: u64) {
    let _done = DoneOnDrop(shared);
    let who = format!("hammer {w}");
    let client = client();
    let mut rng = StdRng::seed_from_u64(seed);
    let mut acked: Vec<Ev> = Vec::new();
    let mut n = 0u64;
    while !shared.stopped() {
        let (generation, base) = shared.current();
        let size = rng.random_range(1..=30);
        // Index into `fresh` of each body item, `None` for a re-sent acknowledged id.
        let mut slots: Vec<Option<usize>> = Vec::new();
        let mut fresh: Vec<Ev> = Vec::new();
        let mut items: Vec<Value> = Vec::new();
        for _ in 0..size {
            if !acked.is_empty() && rng.random_bool(0.1) {
                let e = &acked[rng.random_range(0..acked.len())];
                if items.iter().any(|i| i["id"] == e.id.as_str()) {
                    continue;
                }
                items.push(e.json());
                slots.push(None);
                continue;
            }
            n += 1;
            let contract = match rng.random_range(0..20) {
                0..=7 => HARD,
                8..=12 => KID_A,
                13..=17 => KID_B,
                _ => POOL,
            };
            let e = Ev {
                id: format!("cl-h{w}-{n}"),
                contract,
                lever: CALLS,
                // At least 2: the limits end up full or with one unit of room, which
                // the value-1 top-off at the end must then be able to use.
                value: rng.random_range(2..=4) * UNIT,
                value_as_string: rng.random_bool(0.5),
                time: shared.quota_time,
                bucket: rng
                    .random_bool(0.5)
                    .then(|| BUCKETS[rng.random_range(0..BUCKETS.len())]),
            };
            items.push(e.json());
            slots.push(Some(fresh.len()));
            fresh.push(e);
        }
        let resent = slots.iter().filter(|s| s.is_none()).count() as u64;
        let body = Value::Array(items);
        let url = format!("{base}/v1/events");
        match send(&client, reqwest::Method::POST, &url, INGEST, Some(&body)) {
            Ok((200, text)) => {
                let v = parse_json(&text);
                let (accepted, duplicates, rejected) = counts(&v);
                assert_eq!(
                    (duplicates, accepted + rejected),
                    (resent, fresh.len() as u64),
                    "{who}: re-sent acknowledged ids must be duplicates, fresh ids accepted \
                     or rejected: {text}"
                );
                let errors = v["errors"].as_array().expect("errors array");
                assert_eq!(errors.len() as u64, rejected, "{who}: {text}");
                let mut refused = vec![false; fresh.len()];
                for err in errors {
                    let i = err["index"].as_u64().expect("index") as usize;
                    let f = slots.get(i).copied().flatten().unwrap_or_else(|| {
                        panic!(
                            "{who}: error at index {i}, which is not a fresh event \
                             (a re-sent acknowledged id must be a duplicate): {text}"
                        )
                    });
                    assert_eq!(err["code"], "quota_exceeded", "{who}: {text}");
                    assert_eq!(err["id"], fresh[f].id.as_str(), "{who}: {text}");
                    assert!(!refused[f], "{who}: index {i} listed twice: {text}");
                    refused[f] = true;
                }
                let cycle = shared.cycle();
                let mut l = shared.ledger.lock().unwrap();
                l.resent_events += resent;
                for (e, refused) in fresh.into_iter().zip(refused) {
                    if refused {
                        l.first_rejection.entry(e.contract).or_insert(cycle);
                        l.events.push((e, Fate::Rejected));
                    } else {
                        acked.push(e.clone());
                        l.events.push((e, Fate::Acked));
                    }
                }
            }
            Ok((status, text)) => {
                panic!("{who}: unexpected answer {status} to {body}: {text}")
            }
            Err(err) => {
                let mut l = shared.ledger.lock().unwrap();
                l.events
                    .extend(fresh.into_iter().map(|e| (e, Fate::Unknown)));
                drop(l);
                shared.park(generation, &who, "POST /v1/events", &err);
            }
        }
        // Throttled, so that the limits fill during the first quarter or so of the run on
        // an idle machine (and still well before its end on a busy one).
        thread::sleep(Duration::from_millis(rng.random_range(5..30)));
    }
}

/// Adjustments: new ids on every contract (signed quarters on `calls`, signed whole
/// numbers on `hits`, up to two hours back, so also in final windows), and repeats of
/// acknowledged ones, which must return the stored entry unchanged.
fn adjuster(shared: &Shared, seed: u64) {
    let _done = DoneOnDrop(shared);
    let who = "adjuster";
    let client = client();
    let mut rng = StdRng::seed_from_u64(seed);
    let mut acked: Vec<(Adj, Value)> = Vec::new();
    let mut n = 0u64;
    while !shared.stopped() {
        let (generation, base) = shared.current();
        if !acked.is_empty() && rng.random_bool(0.15) {
            let (a, entry) = &acked[rng.random_range(0..acked.len())];
            let url = format!("{base}/v1/contracts/{}/adjustments", a.contract);
            match send(&client, reqwest::Method::POST, &url, ADMIN, Some(&a.body)) {
                Ok((200, text)) => {
                    assert_eq!(
                        &parse_json(&text),
                        entry,
                        "{who}: a repeated adjustment must return the stored entry"
                    );
                    shared.ledger.lock().unwrap().resent_adjs += 1;
                }
                Ok((status, text)) => panic!(
                    "{who}: repeat of acknowledged adjustment {} answered {status} \
                     (expected 200 with the stored entry): {text}",
                    a.body
                ),
                Err(err) => shared.park(generation, who, "repeated adjustment", &err),
            }
        } else {
            n += 1;
            let contract = ALL[rng.random_range(0..ALL.len())];
            let (lever, value) = loop {
                let (lever, v) = if rng.random_bool(0.6) {
                    (CALLS, rng.random_range(-20..=40) * UNIT / 4)
                } else {
                    (HITS, rng.random_range(-5..=10) * UNIT)
                };
                if v != 0 {
                    break (lever, v);
                }
            };
            let time = if rng.random_bool(0.3) {
                now_ms() - rng.random_range(HOUR..2 * HOUR)
            } else {
                now_ms() - rng.random_range(0..10 * MINUTE)
            };
            let bucket = rng
                .random_bool(0.5)
                .then(|| BUCKETS[rng.random_range(0..BUCKETS.len())]);
            let mut body = json!({
                "id": format!("cl-adj-{n}"),
                "lever": lever,
                "time": param_time(time),
                "value": fmt_amount(value),
                "reason": format!("crash loop correction {n}"),
            });
            if let Some(b) = bucket {
                body["bucket"] = json!(b);
            }
            let a = Adj {
                id: format!("cl-adj-{n}"),
                contract,
                lever,
                value,
                time,
                bucket,
                body,
            };
            let url = format!("{base}/v1/contracts/{contract}/adjustments");
            match send(&client, reqwest::Method::POST, &url, ADMIN, Some(&a.body)) {
                Ok((201, text)) => {
                    let entry = parse_json(&text);
                    assert!(
                        entry["revision"].as_u64().unwrap_or(0) > 0 && entry["id"] == a.id.as_str(),
                        "{who}: adjustment entry without revision or id: {text}"
                    );
                    shared
                        .ledger
                        .lock()
                        .unwrap()
                        .adjs
                        .push((a.clone(), Fate::Acked));
                    acked.push((a, entry));
                }
                Ok((status, text)) => panic!(
                    "{who}: new adjustment {} answered {status} (expected 201): {text}",
                    a.body
                ),
                Err(err) => {
                    shared.ledger.lock().unwrap().adjs.push((a, Fate::Unknown));
                    shared.park(generation, who, "new adjustment", &err);
                }
            }
        }
        thread::sleep(Duration::from_millis(rng.random_range(5..25)));
    }
}

/// What the feed consumer ended with.
#[derive(Default)]
struct Consumed {
    rows: Rows,
    /// Last revision applied and the cursor (`next_after`) it stores.
    last_rev: u64,
    after: u64,
    pages: usize,
    items: usize,
    /// Daemon generations it read at least one item from.
    generations: BTreeSet<u64>,
}

/// Decodes one feed item into a row key and value, checking its shape.
#[track_caller]
fn feed_item(it: &Value) -> (u64, RowKey, i128) {
    let s = |f: &str| -> &str {
        it[f]
            .as_str()
            .unwrap_or_else(|| panic!("feed item without string `{f}`: {it}"))
    };
    let rev = it["revision"]
        .as_u64()
        .unwrap_or_else(|| panic!("feed item without revision: {it}"));
    let window = match s("window") {
        "minute" => "minute",
        "hour" => "hour",
        "day" => "day",
        other => panic!("unknown window {other:?}: {it}"),
    };
    let len = WINDOWS.iter().find(|(w, _)| *w == window).unwrap().1;
    let (start, end) = (parse_time(s("start")), parse_time(s("end")));
    assert!(
        end - start == len && start == floor(start, len),
        "bad window bounds: {it}"
    );
    let bucket = match it.get("bucket") {
        None | Some(Value::Null) => None,
        Some(Value::String(b)) => Some(b.clone()),
        Some(other) => panic!("bucket is not a string: {other} in {it}"),
    };
    let key = (
        s("contract").to_string(),
        s("lever").to_string(),
        bucket,
        window,
        start,
    );
    (rev, key, parse_amount(s("value")))
}

/// A billing job: pages the feed with random page sizes, *sets* each row to the value it
/// receives and keeps `next_after` as its cursor. When the daemon is killed under it, it
/// parks and resumes from its cursor. Revisions must increase strictly over all pages and
/// restarts. Returns once `finish` is set and the feed has been quiet for 600 ms (it
/// ignores `stop`, which stops the writers first).
fn consumer(shared: &Shared, seed: u64) -> Consumed {
    let _done = DoneOnDrop(shared);
    let who = "feed consumer";
    let client = client();
    let mut rng = StdRng::seed_from_u64(seed);
    let mut c = Consumed::default();
    let mut last_new = Instant::now();
    let mut finish_seen: Option<Instant> = None;
    loop {
        if finish_seen.is_none() && shared.finish.load(Ordering::SeqCst) {
            finish_seen = Some(Instant::now());
        }
        let (generation, base) = shared.current();
        let limit = rng.random_range(1..=300);
        let url = format!("{base}/v1/changes?after={}&limit={limit}", c.after);
        let v = match send(&client, reqwest::Method::GET, &url, READ, None) {
            Ok((200, text)) => parse_json(&text),
            Ok((status, text)) => panic!("{who}: GET {url}: {status} {text}"),
            Err(err) => {
                if shared.stopped() {
                    // The test is failing and the daemon may be gone: give up.
                    return c;
                }
                shared.park(generation, who, "GET /v1/changes", &err);
                continue;
            }
        };
        let items = v["items"]
            .as_array()
            .unwrap_or_else(|| panic!("{who}: no items: {v}"));
        let next = v["next_after"]
            .as_u64()
            .unwrap_or_else(|| panic!("{who}: no next_after: {v}"));
        assert!(
            items.len() <= limit,
            "{who}: page longer than limit {limit}"
        );
        for it in items {
            let (rev, key, value) = feed_item(it);
            assert!(
                rev > c.last_rev && rev > c.after,
                "{who}: revision {rev} after {} (cursor {}, daemon generation \
                 {generation}): revisions must increase strictly, also across restarts: {it}",
                c.last_rev,
                c.after
            );
            c.last_rev = rev;
            c.rows.insert(key, value);
            c.items += 1;
            c.generations.insert(generation);
        }
        assert!(
            next >= c.last_rev && next >= c.after,
            "{who}: next_after {next} went back (cursor {}, last revision {}): {v}",
            c.after,
            c.last_rev
        );
        c.pages += 1;
        if items.is_empty() && next == c.after {
            if let Some(f) = finish_seen {
                let quiet = Duration::from_millis(600);
                if last_new.elapsed() >= quiet && f.elapsed() >= quiet {
                    return c;
                }
            }
            thread::sleep(Duration::from_millis(15));
        } else {
            last_new = Instant::now();
        }
        c.after = next;
    }
}

// ---------------------------------------------------------------------------------------
// Checks against the daemon

/// Time range covering every event and adjustment of the test.
#[derive(Clone, Copy)]
struct Range {
    from: i64,
    to: i64,
}

impl Range {
    fn query(&self) -> String {
        format!("from={}&to={}", param_time(self.from), param_time(self.to))
    }
}

/// Usage per contract and lever (`window=none`) over the range.
fn stored_totals(d: &Daemon, range: Range) -> Totals {
    let mut t = Totals::new();
    for c in ALL {
        let v = d.usage(c, &format!("{}&window=none", range.query()));
        for row in v["items"].as_array().expect("items") {
            let lever = row["lever"].as_str().expect("lever");
            let value = parse_amount(row["value"].as_str().expect("value"));
            add(&mut t, c, lever, value);
        }
    }
    nonzero(t)
}

/// Every stored minute, hour and day row, through the usage API grouped by bucket.
fn stored_rows(d: &Daemon, range: Range) -> Rows {
    let mut rows = Rows::new();
    for c in ALL {
        for (w, _) in WINDOWS {
            let v = d.usage(c, &format!("{}&window={w}&group_by=bucket", range.query()));
            for it in v["items"].as_array().expect("items") {
                let bucket = match it.get("bucket") {
                    None | Some(Value::Null) => None,
                    Some(b) => Some(b.as_str().expect("bucket").to_string()),
                };
                let key = (
                    c.to_string(),
                    it["lever"].as_str().unwrap().to_string(),
                    bucket,
                    w,
                    parse_time(it["start"].as_str().unwrap()),
                );
                let value = parse_amount(it["value"].as_str().unwrap());
                assert!(
                    rows.insert(key.clone(), value).is_none(),
                    "usage lists {key:?} twice"
                );
            }
        }
    }
    nonzero(rows)
}

/// Quota usage of the `calls` month period containing the quota time, from the balance
/// (`None` if the wall clock has left that month: the balance shows the current period).
fn quota_balance(d: &Daemon, contract: &str, quota_time: i64) -> Option<i128> {
    let (s, v) = d.req(
        "GET",
        &format!("/v1/contracts/{contract}/balance?lever={CALLS}"),
        Some(READ),
        None,
    );
    assert_eq!(s, 200, "balance of {contract}: {v}");
    let row = v["levers"]
        .as_array()
        .expect("levers")
        .iter()
        .find(|r| r["lever"] == CALLS && r["period"] == "month")
        .unwrap_or_else(|| panic!("no calls/month row in the balance of {contract}: {v}"));
    let start = parse_time(row["period_start"].as_str().expect("period_start"));
    let end = parse_time(row["period_end"].as_str().expect("period_end"));
    (start <= quota_time && quota_time < end)
        .then(|| parse_amount(row["usage"].as_str().expect("usage")))
}

/// Describes the differences of two maps (at most 25 lines).
fn diff<K: Ord + std::fmt::Debug>(
    got: &BTreeMap<K, i128>,
    want: &BTreeMap<K, i128>,
    got_name: &str,
    want_name: &str,
) -> String {
    let mut out = Vec::new();
    for (k, w) in want {
        match got.get(k) {
            None => out.push(format!(
                "{k:?}: {want_name} {}, {got_name} none",
                fmt_amount(*w)
            )),
            Some(g) if g != w => out.push(format!(
                "{k:?}: {got_name} {} but {want_name} {} (difference {})",
                fmt_amount(*g),
                fmt_amount(*w),
                fmt_amount(g - w)
            )),
            _ => {}
        }
    }
    for (k, g) in got {
        if !want.contains_key(k) {
            out.push(format!(
                "{k:?}: {got_name} {}, {want_name} none",
                fmt_amount(*g)
            ));
        }
    }
    let n = out.len();
    out.truncate(25);
    format!("{n} differences:\n  {}", out.join("\n  "))
}

/// The limits: `(contract, limit in nano-units)`.
fn limits() -> [(&'static str, i128); 3] {
    [
        (HARD, HARD_LIMIT * UNIT),
        (POOL, POOL_LIMIT * UNIT),
        (KID_A, KID_A_LIMIT * UNIT),
    ]
}

/// Quota usage per limited contract from the balance, compared with the ledger.
#[track_caller]
fn check_quotas(d: &Daemon, shared: &Shared, ledger: &Ledger, label: &str) {
    for (c, limit) in limits() {
        let want = ledger.quota_used(c);
        assert!(
            want <= limit,
            "{label}: the events counted on {c} (and its children) add up to {} > its \
             hard limit {}",
            fmt_amount(want),
            fmt_amount(limit)
        );
        if let Some(got) = quota_balance(d, c, shared.quota_time) {
            assert!(
                got <= limit,
                "{label}: balance usage of {c} is {} > its hard limit {}",
                fmt_amount(got),
                fmt_amount(limit)
            );
            assert_eq!(
                got,
                want,
                "{label}: balance usage of {c} ({}) != events counted on it per the ledger \
                 ({})",
                fmt_amount(got),
                fmt_amount(want)
            );
        }
    }
}

/// What settling the ids of unknown fate found.
#[derive(Debug, Default)]
struct Settled {
    kept: usize,
    lost: usize,
    rejected: usize,
    adj_kept: usize,
    adj_lost: usize,
}

/// Re-sends every event and adjustment of unknown fate (one per request, from several
/// threads so that they share fsyncs) and records what they turned out to be.
fn settle(d: &Daemon, ledger: &mut Ledger, label: &str) -> Settled {
    let evs: Vec<usize> = (0..ledger.events.len())
        .filter(|&i| ledger.events[i].1 == Fate::Unknown)
        .collect();
    let adjs: Vec<usize> = (0..ledger.adjs.len())
        .filter(|&i| ledger.adjs[i].1 == Fate::Unknown)
        .collect();
    let next = AtomicUsize::new(0);
    let l: &Ledger = ledger;
    let outcomes: Vec<(bool, usize, Fate)> = thread::scope(|s| {
        let handles: Vec<_> = (0..6)
            .map(|_| {
                s.spawn(|| {
                    let mut out = Vec::new();
                    loop {
                        let k = next.fetch_add(1, Ordering::SeqCst);
                        if let Some(&i) = evs.get(k) {
                            let e = &l.events[i].0;
                            let (s, v) = d.post_events(&e.json());
                            assert_eq!(s, 200, "{label}: re-sending {}: {v}", e.id);
                            let fate = match counts(&v) {
                                (1, 0, 0) => Fate::Lost,
                                (0, 1, 0) => Fate::Kept,
                                (0, 0, 1)
                                    if v["errors"][0]["code"] == "quota_exceeded"
                                        && !PLAIN.contains(&e.contract) =>
                                {
                                    Fate::Rejected
                                }
                                _ => panic!(
                                    "{label}: re-sent event of unknown fate {}: {v}",
                                    e.json()
                                ),
                            };
                            out.push((true, i, fate));
                        } else if let Some(&i) = adjs.get(k - evs.len()) {
                            let a = &l.adjs[i].0;
                            let (s, v) = d.req(
                                "POST",
                                &format!("/v1/contracts/{}/adjustments", a.contract),
                                Some(ADMIN),
                                Some(&a.body),
                            );
                            let fate = match s {
                                201 => Fate::Lost,
                                200 => Fate::Kept,
                                _ => panic!(
                                    "{label}: re-sent adjustment of unknown fate {}: {s} {v}",
                                    a.body
                                ),
                            };
                            assert_eq!(v["id"], a.id.as_str(), "{label}: {v}");
                            out.push((false, i, fate));
                        } else {
                            return out;
                        }
                    }
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("settling thread"))
            .collect()
    });
    let mut st = Settled::default();
    for (is_event, i, fate) in outcomes {
        if is_event {
            ledger.events[i].1 = fate;
            match fate {
                Fate::Kept => st.kept += 1,
                Fate::Lost => st.lost += 1,
                _ => st.rejected += 1,
            }
        } else {
            ledger.adjs[i].1 = fate;
            match fate {
                Fate::Kept => st.adj_kept += 1,
                _ => st.adj_lost += 1,
            }
        }
    }
    st
}

/// After a restart, with every client parked: the stored usage must be exactly the
/// acknowledged events and adjustments plus those of unknown fate that re-sending shows
/// were kept; after settling, exactly the ledger. Same for the quota usage.
fn check_after_restart(
    d: &Daemon,
    shared: &Shared,
    range: Range,
    label: &str,
    killed_log: &str,
) -> Settled {
    let logs = || {
        format!(
            "\nlast log lines of the killed daemon:\n{killed_log}\nof the restarted one:\n{}",
            log_tail(d)
        )
    };
    let mut ledger = shared.ledger.lock().unwrap();
    let before = stored_totals(d, range);
    let mut quota_before = Vec::new();
    for (c, _) in limits() {
        quota_before.push((c, quota_balance(d, c, shared.quota_time)));
    }
    let unknown: Vec<usize> = (0..ledger.events.len())
        .filter(|&i| ledger.events[i].1 == Fate::Unknown)
        .collect();
    let unknown_adjs: Vec<usize> = (0..ledger.adjs.len())
        .filter(|&i| ledger.adjs[i].1 == Fate::Unknown)
        .collect();
    let settled = settle(d, &mut ledger, label);

    // Before settling, the store held exactly: counted before + kept now. Recompute that
    // from the ledger by treating the ids settled as lost as not (yet) counted.
    let mut lost_now = Totals::new();
    for &i in &unknown {
        let (e, f) = &ledger.events[i];
        if *f == Fate::Lost {
            add(&mut lost_now, e.contract, e.lever, e.contribution());
        }
    }
    for &i in &unknown_adjs {
        let (a, f) = &ledger.adjs[i];
        if *f == Fate::Lost {
            add(&mut lost_now, a.contract, a.lever, a.value);
        }
    }
    let after_ledger = ledger.totals();
    let mut want_before = after_ledger.clone();
    for (k, v) in &lost_now {
        *want_before.entry(k.clone()).or_default() -= v;
    }
    let want_before = nonzero(want_before);
    let unknown_total: BTreeMap<(String, String), String> = {
        let mut t = Totals::new();
        for &i in &unknown {
            let e = &ledger.events[i].0;
            add(&mut t, e.contract, e.lever, e.contribution());
        }
        t.into_iter().map(|(k, v)| (k, fmt_amount(v))).collect()
    };
    assert!(
        before == want_before,
        "{label}: usage right after the restart != acknowledged + kept (a difference means an \
         acknowledged event or adjustment was lost or counted twice, or an id the daemon \
         reports as lost was counted). {} unknown events ({settled:?}), unknown totals \
         {unknown_total:?}. {}{}",
        unknown.len(),
        diff(&before, &want_before, "stored", "acked+kept"),
        logs()
    );
    for (c, got) in quota_before {
        let Some(got) = got else { continue };
        let members: &[&str] = if c == POOL {
            &[POOL, KID_A, KID_B]
        } else {
            &[c]
        };
        let lost: i128 = unknown
            .iter()
            .map(|&i| &ledger.events[i])
            .filter(|(e, f)| *f == Fate::Lost && e.lever == CALLS && members.contains(&e.contract))
            .map(|(e, _)| e.contribution())
            .sum();
        let want = ledger.quota_used(c) - lost;
        assert!(
            got == want,
            "{label}: quota usage of {c} right after the restart ({}) != acknowledged + kept \
             events ({}){}",
            fmt_amount(got),
            fmt_amount(want),
            logs()
        );
    }

    let after = stored_totals(d, range);
    assert!(
        after == after_ledger,
        "{label}: usage after settling the unknown ids != the ledger: {}{}",
        diff(&after, &after_ledger, "stored", "ledger"),
        logs()
    );
    check_quotas(d, shared, &ledger, label);
    settled
}

/// Fills the `calls` month limit of `contract` with value-1 events at the quota time:
/// exactly `room` units must be accepted, in batches, and one more must be refused.
fn top_off(d: &Daemon, shared: &Shared, contract: &'static str, room: i128) -> usize {
    let mut ledger = shared.ledger.lock().unwrap();
    let units = (room / UNIT) as usize;
    assert_eq!(room % UNIT, 0, "room on {contract} is not whole: {room}");
    let mut sent = 0;
    while sent <= units {
        let n = (units - sent).clamp(1, 5_000);
        let evs: Vec<Ev> = (0..n)
            .map(|k| Ev {
                id: format!("cl-top-{contract}-{}", sent + k),
                contract,
                lever: CALLS,
                value: UNIT,
                value_as_string: false,
                time: shared.quota_time,
                bucket: None,
            })
            .collect();
        let (s, v) = d.post_events(&Value::Array(evs.iter().map(Ev::json).collect()));
        assert_eq!(s, 200, "top-off of {contract}: {v}");
        if sent < units {
            assert_eq!(
                counts(&v),
                (n as u64, 0, 0),
                "{contract}: {units} units of room left per the ledger, but an event that fit \
                 was refused (the daemon counts more quota usage than was acknowledged): {v}"
            );
            ledger
                .events
                .extend(evs.into_iter().map(|e| (e, Fate::Acked)));
        } else {
            assert_eq!(
                (counts(&v), v["errors"][0]["code"].as_str()),
                ((0, 0, 1), Some("quota_exceeded")),
                "{contract}: the limit is full per the ledger, yet one more event was not \
                 refused (a hard limit was exceeded): {v}"
            );
            ledger
                .events
                .extend(evs.into_iter().map(|e| (e, Fate::Rejected)));
        }
        sent += n;
    }
    units
}

/// The audit log of a contract: every entry's id, in order.
fn audit_ids(d: &Daemon, contract: &str) -> Vec<String> {
    let mut ids = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut q = "limit=1000".to_string();
        if let Some(c) = &cursor {
            q.push_str(&format!(
                "&cursor={}",
                percent_encoding::utf8_percent_encode(c, percent_encoding::NON_ALPHANUMERIC)
            ));
        }
        let (s, v) = d.req(
            "GET",
            &format!("/v1/contracts/{contract}/adjustments?{q}"),
            Some(READ),
            None,
        );
        assert_eq!(s, 200, "audit log of {contract}: {v}");
        for it in v["items"].as_array().expect("items") {
            assert_eq!(it["kind"], "adjustment", "{it}");
            ids.push(it["id"].as_str().expect("id").to_string());
        }
        match v["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => return ids,
        }
    }
}

// ---------------------------------------------------------------------------------------
// The test

#[test]
fn twenty_kill9_under_mixed_load_count_every_acknowledged_event_once() {
    let started = Instant::now();
    let seed = seed();
    let mut rng = StdRng::seed_from_u64(seed);
    let mut d = start();
    d.lever(CALLS, "sum");
    d.lever(HITS, "count");
    let month = |limit: i128| json!([{"lever": CALLS, "period": "month", "limit": limit as i64, "mode": "hard"}]);
    let put = |d: &Daemon, c: &str, body: Value| {
        let (s, v) = d.req(
            "PUT",
            &format!("/v1/contracts/{c}"),
            Some(ADMIN),
            Some(&body),
        );
        assert!(s == 200 || s == 201, "PUT contract {c}: {s} {v}");
    };
    for c in PLAIN {
        put(&d, c, json!({"customer": "cus-plain"}));
    }
    put(
        &d,
        HARD,
        json!({"customer": "cus-hard", "quotas": month(HARD_LIMIT)}),
    );
    put(
        &d,
        POOL,
        json!({"customer": "cus-pool", "quotas": month(POOL_LIMIT)}),
    );
    put(
        &d,
        KID_A,
        json!({"customer": "cus-pool", "parent": POOL, "quotas": month(KID_A_LIMIT)}),
    );
    put(&d, KID_B, json!({"customer": "cus-pool", "parent": POOL}));

    let t_begin = now_ms();
    let shared = Shared {
        phase: Mutex::new(Phase {
            generation: 0,
            base: d.base.clone(),
            parked: 0,
            cycle: 0,
        }),
        changed: Condvar::new(),
        killing: AtomicBool::new(false),
        stop: AtomicBool::new(false),
        finish: AtomicBool::new(false),
        ledger: Mutex::new(Ledger::default()),
        quota_time: t_begin,
        done: AtomicUsize::new(0),
    };
    let range = Range {
        // Day-aligned: a row is listed when its start is in [from, to).
        from: floor(t_begin - 3 * HOUR, DAY),
        to: t_begin + DAY,
    };
    let seeds: Vec<u64> = (0..WORKERS).map(|_| rng.random()).collect();
    let mut restart_ms = Vec::new();
    let mut settled_all = Settled::default();

    let consumed = thread::scope(|s| {
        let shared = &shared;
        let guard = StopOnDrop(shared);
        for (w, &seed) in seeds.iter().enumerate().take(INGESTERS) {
            s.spawn(move || ingester(shared, w, seed));
        }
        for (w, &seed) in seeds.iter().skip(INGESTERS).take(HAMMERS).enumerate() {
            s.spawn(move || hammer(shared, w, seed));
        }
        let adjuster_seed = seeds[WORKERS - 2];
        s.spawn(move || adjuster(shared, adjuster_seed));
        let consumer_seed = seeds[WORKERS - 1];
        let consumer_h = s.spawn(move || consumer(shared, consumer_seed));
        let workers_failed = || shared.done.load(Ordering::SeqCst) > 0;

        for cycle in 0..KILLS {
            let delay = if rng.random_bool(0.2) {
                rng.random_range(20..=300)
            } else {
                rng.random_range(300..=2_000)
            };
            let until = Instant::now() + Duration::from_millis(delay);
            while Instant::now() < until {
                assert!(
                    !workers_failed(),
                    "cycle {cycle}: a client failed (its panic message is above); seed {seed}; \
                     daemon log:\n{}",
                    log_tail(&d)
                );
                thread::sleep(Duration::from_millis(10));
            }
            if let Some(Ok(Some(status))) = d.child.as_mut().map(|c| c.try_wait()) {
                panic!(
                    "cycle {cycle}: meterd exited on its own ({status}) before the kill:\n{}",
                    log_tail(&d)
                );
            }
            shared.killing.store(true, Ordering::SeqCst);
            d.kill9();

            // Every client notices (a request in flight fails; an idle one fails on its
            // next request) and parks.
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                let parked = shared.phase.lock().unwrap().parked;
                if parked == WORKERS {
                    break;
                }
                assert!(
                    !workers_failed(),
                    "cycle {cycle}: a client failed (its panic message is above); seed {seed}; \
                     daemon log:\n{}",
                    log_tail(&d)
                );
                assert!(
                    Instant::now() < deadline,
                    "cycle {cycle}: only {parked} of {WORKERS} clients noticed the kill in 30 s"
                );
                thread::sleep(Duration::from_millis(5));
            }
            let killed_log = log_tail(&d);
            let t = Instant::now();
            d.restart();
            restart_ms.push(t.elapsed().as_millis() as u64);
            let t = Instant::now();

            let label = format!("cycle {cycle} (seed {seed})");
            let st = check_after_restart(&d, shared, range, &label, &killed_log);
            {
                let l = shared.ledger.lock().unwrap();
                println!(
                    "cycle {cycle:2}: killed after {delay:4} ms, restart {:4} ms, checks {:4} ms; \
                     events: {} acked, {} rejected; unknown settled: {} kept, {} lost, {} \
                     rejected; adjustments: {} ({} kept, {} lost); quota used hard \
                     {}/{HARD_LIMIT} pool {}/{POOL_LIMIT} kid-a {}/{KID_A_LIMIT}",
                    restart_ms.last().unwrap(),
                    t.elapsed().as_millis(),
                    l.count(Fate::Acked),
                    l.count(Fate::Rejected),
                    st.kept,
                    st.lost,
                    st.rejected,
                    l.adjs.len(),
                    st.adj_kept,
                    st.adj_lost,
                    fmt_amount(l.quota_used(HARD)),
                    fmt_amount(l.quota_used(POOL)),
                    fmt_amount(l.quota_used(KID_A)),
                );
            }
            settled_all.kept += st.kept;
            settled_all.lost += st.lost;
            settled_all.rejected += st.rejected;
            settled_all.adj_kept += st.adj_kept;
            settled_all.adj_lost += st.adj_lost;

            // Resume the clients on the new daemon.
            shared.killing.store(false, Ordering::SeqCst);
            let mut p = shared.phase.lock().unwrap();
            p.generation += 1;
            p.base = d.base.clone();
            p.parked = 0;
            p.cycle = cycle + 1;
            drop(p);
            shared.changed.notify_all();
        }

        // A last stretch of load on the final daemon, then stop the writers (each finishes
        // its request in flight normally).
        thread::sleep(Duration::from_millis(800));
        assert!(
            !workers_failed(),
            "a client failed after the last restart (its panic message is above); seed \
             {seed}; daemon log:\n{}",
            log_tail(&d)
        );
        shared.stop.store(true, Ordering::SeqCst);
        while shared.done.load(Ordering::SeqCst) < WORKERS - 1 {
            thread::sleep(Duration::from_millis(5));
        }

        final_checks(&d, shared, range, seed);

        // Every write is done: the consumer drains the feed and returns.
        shared.finish.store(true, Ordering::SeqCst);
        let consumed = consumer_h.join().expect("feed consumer");
        drop(guard);
        consumed
    });

    // The feed consumer's view is exactly the stored rows, which are exactly the ledger.
    let stored = stored_rows(&d, range);
    let want = shared.ledger.lock().unwrap().rows();
    assert!(
        stored == want,
        "stored window rows != ledger (seed {seed}): {}",
        diff(&stored, &want, "stored", "ledger")
    );
    let got = nonzero(consumed.rows.clone());
    assert!(
        got == stored,
        "feed consumer's rows != stored rows (seed {seed}; the feed missed a change or \
         reported a stale value across a restart): {}",
        diff(&got, &stored, "feed", "stored")
    );
    let (s, rest) = d.req(
        "GET",
        &format!("/v1/changes?after={}&limit=10", consumed.after),
        Some(READ),
        None,
    );
    assert_eq!(s, 200, "{rest}");
    assert_eq!(
        rest["items"],
        json!([]),
        "items after the consumer's final cursor {}",
        consumed.after
    );
    assert!(
        consumed.generations.len() >= KILLS / 2,
        "the consumer read items from only {} of {} daemons",
        consumed.generations.len(),
        KILLS + 1
    );

    let l = shared.ledger.lock().unwrap();
    check_audit_logs(&d, &l, seed);
    restart_ms.sort_unstable();
    println!(
        "done in {} ms: {} events sent ({} counted, {} rejected), {} acknowledged ids \
         re-sent as duplicates, {} adjustments ({} repeats); unknown fate over all restarts: \
         {settled_all:?}; feed: {} pages, {} items, {} rows, last revision {} read from {} \
         daemons; restart ms median {} max {}; first quota_exceeded per contract (cycle): \
         {:?}",
        started.elapsed().as_millis(),
        l.events.len(),
        l.events.iter().filter(|(_, f)| f.counted()).count(),
        l.count(Fate::Rejected),
        l.resent_events,
        l.adjs.len(),
        l.resent_adjs,
        consumed.pages,
        consumed.items,
        got.len(),
        consumed.last_rev,
        consumed.generations.len(),
        restart_ms[restart_ms.len() / 2],
        restart_ms.last().unwrap(),
        l.first_rejection,
    );
}

/// After the last restart, with the writers stopped: the hard limits fill exactly, every
/// id ever sent has the fate the ledger says, and the usage per contract and lever is
/// exactly the ledger.
fn final_checks(d: &Daemon, shared: &Shared, range: Range, seed: u64) {
    let label = format!("final (seed {seed})");
    {
        let l = shared.ledger.lock().unwrap();
        assert_eq!(
            l.count(Fate::Unknown),
            0,
            "{label}: events of unknown fate without a kill"
        );
        assert!(
            l.adjs.iter().all(|(_, f)| *f != Fate::Unknown),
            "{label}: adjustments of unknown fate without a kill"
        );
        assert!(
            l.first_rejection.contains_key(HARD),
            "{label}: the hammers never reached the hard limit of {HARD} \
             ({} of {HARD_LIMIT} used): lower HARD_LIMIT",
            fmt_amount(l.quota_used(HARD))
        );
        check_quotas(d, shared, &l, &label);
    }

    // The limits fill exactly: no event is refused while there is room, none accepted
    // beyond it.
    let room = |c: &str, limit: i128| limit * UNIT - shared.ledger.lock().unwrap().quota_used(c);
    let hard = top_off(d, shared, HARD, room(HARD, HARD_LIMIT));
    let kid_a_room = room(KID_A, KID_A_LIMIT).min(room(POOL, POOL_LIMIT));
    let kid_a = top_off(d, shared, KID_A, kid_a_room);
    let pool = top_off(d, shared, KID_B, room(POOL, POOL_LIMIT));
    println!("top-off: {hard} units on {HARD}, {kid_a} on {KID_A}, {pool} on {KID_B}");
    let l = shared.ledger.lock().unwrap();
    check_quotas(d, shared, &l, &label);
    for (c, limit) in [(HARD, HARD_LIMIT), (POOL, POOL_LIMIT)] {
        assert_eq!(
            l.quota_used(c),
            limit * UNIT,
            "{label}: {c} must be exactly full"
        );
    }

    // Every id ever sent, once more: counted ones are duplicates, refused ones are refused
    // again (the limits are full, so they still do not fit).
    for fate in [Fate::Acked, Fate::Kept, Fate::Lost, Fate::Rejected] {
        let evs: Vec<&Ev> = l
            .events
            .iter()
            .filter(|(_, f)| *f == fate)
            .map(|(e, _)| e)
            .collect();
        for chunk in evs.chunks(5_000) {
            let body = Value::Array(chunk.iter().map(|e| e.json()).collect());
            let (s, v) = d.post_events(&body);
            assert_eq!(s, 200, "{label}: {v}");
            let n = chunk.len() as u64;
            let want = if fate == Fate::Rejected {
                (0, 0, n)
            } else {
                (0, n, 0)
            };
            let got = counts(&v);
            if got != want {
                // Find the culprits, one by one.
                let mut culprits = Vec::new();
                for e in chunk {
                    let (_, v) = d.post_events(&e.json());
                    let c = counts(&v);
                    let ok = if fate == Fate::Rejected {
                        c == (0, 0, 1)
                    } else {
                        c == (0, 1, 0)
                    };
                    if !ok {
                        culprits.push(format!("{} -> {v}", e.json()));
                    }
                    if culprits.len() >= 10 {
                        break;
                    }
                }
                panic!(
                    "{label}: re-sending {n} {fate:?} ids answered {got:?}, expected {want:?} \
                     (an accepted re-send of a counted id means it had been lost; a duplicate \
                     of a refused id means it was counted). First culprits:\n{}",
                    culprits.join("\n")
                );
            }
        }
    }

    // Usage per contract and lever is exactly the ledger.
    let stored = stored_totals(d, range);
    let want = l.totals();
    assert!(
        stored == want,
        "{label}: usage != ledger: {}",
        diff(&stored, &want, "stored", "ledger")
    );
}

/// The audit log of each contract lists each of its counted adjustments exactly once (and
/// none of unknown fate that re-sending showed were lost twice).
fn check_audit_logs(d: &Daemon, ledger: &Ledger, seed: u64) {
    for c in ALL {
        let mut got = audit_ids(d, c);
        let n = got.len();
        got.sort();
        got.dedup();
        assert_eq!(
            got.len(),
            n,
            "seed {seed}: an adjustment id is listed twice in the audit log of {c}"
        );
        let mut want: Vec<String> = ledger
            .adjs
            .iter()
            .filter(|(a, f)| a.contract == c && f.counted())
            .map(|(a, _)| a.id.clone())
            .collect();
        want.sort();
        if got != want {
            let missing: Vec<&String> = want.iter().filter(|w| !got.contains(w)).collect();
            let extra: Vec<&String> = got.iter().filter(|g| !want.contains(g)).collect();
            panic!(
                "seed {seed}: audit log of {c}: {} entries, the ledger has {}; missing \
                 {missing:?}, not in the ledger {extra:?}",
                got.len(),
                want.len()
            );
        }
    }
}
