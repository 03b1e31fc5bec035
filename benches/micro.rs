//! Micro-benchmarks of meterd's hot paths (criterion, `harness = false`).
//!
//! Run with `cargo bench --bench micro` (all groups, about 1-2 minutes on 2 cores) or
//! pass a filter, e.g. `cargo bench --bench micro -- flush`. Groups:
//!
//! - `event`: body splitting and per-event parsing ([`split_body`] + [`parse_event`]) of
//!   one event and of a 1,000-event JSON array;
//! - `parse`: the same shapes parsed into meterd's [`Event`] four ways: meterd's
//!   serde_json path, a one-pass serde_json variant, and simd-json (tape and borrowed
//!   value, each on a copy of the body, since simd-json parses in place);
//! - `counters`: [`Counters::apply`] of one event and of a 1,000-event group;
//! - `flush`: [`flush_once`] of 100,000 dirty window counters into a RocksDB store in a
//!   temporary directory (the counters are re-filled outside the timed region);
//! - `quota`: [`QuotaBook::try_reserve`], the per-event quota decision (no quota, a hard
//!   monthly quota, and a hard monthly quota on the contract and its parent);
//! - `keys`: window and dedupe key encoding, id hashing;
//! - `decimal`: [`Amount`] parsing and formatting.

use std::borrow::Cow;
use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{
    criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion, SamplingMode, Throughput,
};
use meterd::counters::Counters;
use meterd::decimal::{Amount, MAX_INPUT, UNIT};
use meterd::event::{amount_field, parse_event, raw_str, split_body, BodyFormat, Event};
use meterd::flush::flush_once;
use meterd::quota::book::{QuotaBook, Reserved};
use meterd::registry::{Aggregation, Contract, Lever, Tenant};
use meterd::store::keys::{dedupe_key, id_hash, window_key};
use meterd::store::records::EventRecord;
use meterd::store::Store;
use meterd::window::{parse_rfc3339, Granularity};
use serde::Deserialize;
use serde_json::value::RawValue;
use simd_json::prelude::*;

/// 2026-01-01T00:00:00Z, a UTC day boundary: fixed so every run builds the same windows.
const BASE_MS: i64 = 1_767_225_600_000;
/// Events per batch in the batch benchmarks (the load test's batch size).
const BATCH: usize = 1_000;
/// Body limit passed to `split_body` (the daemon's default `max_batch_events`).
const LIMIT: usize = 10_000;
/// Counter shards (the daemon's default).
const SHARDS: usize = 64;

const SINGLE: &str = r#"{"id":"run-1-0-42","contract":"c1","lever":"api_calls","value":1}"#;
const SINGLE_FULL: &str = r#"{"id":"run-1-0-42","contract":"c1","lever":"api_calls","value":"12.5","time":"2026-01-01T10:15:30.123Z","bucket":"eu-west"}"#;

/// A JSON array of `n` events shaped like the load test's (no `time`).
fn batch_body(n: usize) -> String {
    let events: Vec<String> = (0..n)
        .map(|i| {
            format!(
                r#"{{"id":"run-1-0-{i}","contract":"c{}","lever":"api_calls","value":1}}"#,
                i % 4
            )
        })
        .collect();
    format!("[{}]", events.join(","))
}

fn record(contract: &str, time_ms: i64, value: i128) -> EventRecord {
    EventRecord {
        contract: contract.to_string(),
        lever: "api_calls".to_string(),
        aggregation: Aggregation::Sum,
        bucket: None,
        time_ms,
        value,
        ordinal: 0,
    }
}

fn parse_all(body: &[u8]) -> usize {
    let elems = split_body(body, BodyFormat::Json, LIMIT).expect("valid body");
    elems.iter().filter(|raw| parse_event(raw).is_ok()).count()
}

/// A field check failure (the bench variants only count failures; meterd's messages are
/// built by its own path).
type Bad = &'static str;

/// meterd's string field rules: 1..=max bytes, no control characters.
fn check_str(s: &str, max: usize) -> Result<(), Bad> {
    if s.is_empty() || s.len() > max || s.chars().any(char::is_control) {
        return Err("bad string");
    }
    Ok(())
}

fn required<'a>(s: Option<Cow<'a, str>>, max: usize) -> Result<Cow<'a, str>, Bad> {
    let s = s.ok_or("missing")?;
    check_str(&s, max)?;
    Ok(s)
}

fn optional<'a>(s: Option<Cow<'a, str>>, max: usize) -> Result<Option<Cow<'a, str>>, Bad> {
    if let Some(s) = &s {
        check_str(s, max)?;
    }
    Ok(s)
}

/// The one-pass serde_json variant: the array is read straight into these (no second
/// parse per element); fields stay raw so a wrongly typed field is still a per-event
/// error, as in meterd.
#[derive(Deserialize)]
struct RawFields<'a> {
    #[serde(borrow, default)]
    id: Option<&'a RawValue>,
    #[serde(borrow, default)]
    contract: Option<&'a RawValue>,
    #[serde(borrow, default)]
    lever: Option<&'a RawValue>,
    #[serde(borrow, default)]
    value: Option<&'a RawValue>,
    #[serde(borrow, default)]
    time: Option<&'a RawValue>,
    #[serde(borrow, default)]
    bucket: Option<&'a RawValue>,
}

fn raw_string(r: Option<&RawValue>) -> Result<Option<Cow<'_, str>>, Bad> {
    match r {
        None => Ok(None),
        Some(r) if r.get() == "null" => Ok(None),
        Some(r) => raw_str(r).map(Some).ok_or("not a string"),
    }
}

fn serde_fields(f: RawFields<'_>) -> Result<Event<'_>, Bad> {
    let value = match f.value.filter(|r| r.get() != "null") {
        None => None,
        Some(r) => Some(amount_field(r).map_err(|_| "bad value")?),
    };
    let time_ms = match raw_string(f.time)? {
        None => None,
        Some(t) => Some(parse_rfc3339(&t).ok_or("bad time")?),
    };
    Ok(Event {
        id: required(raw_string(f.id)?, 128)?,
        contract: required(raw_string(f.contract)?, 128)?,
        lever: required(raw_string(f.lever)?, 64)?,
        value,
        time_ms,
        bucket: optional(raw_string(f.bucket)?, 64)?,
        shown_id: None,
    })
}

/// One pass of serde_json over the whole body.
fn parse_serde_one_pass(body: &[u8]) -> Vec<Result<Event<'_>, Bad>> {
    let text = std::str::from_utf8(body).expect("UTF-8");
    if text.trim_start().starts_with('[') {
        let all: Vec<RawFields<'_>> = serde_json::from_str(text).expect("valid body");
        all.into_iter().map(serde_fields).collect()
    } else {
        vec![serde_fields(
            serde_json::from_str(text).expect("valid body"),
        )]
    }
}

/// meterd's path: [`split_body`] then [`parse_event`] per element.
fn parse_meterd(body: &[u8]) -> Vec<Result<Event<'_>, Bad>> {
    let elems = split_body(body, BodyFormat::Json, LIMIT).expect("valid body");
    elems
        .into_iter()
        .map(|raw| parse_event(raw).map_err(|_| "invalid"))
        .collect()
}

/// An exact amount from a simd-json number: integers convert exactly; a fractional JSON
/// number has already been rounded to `f64` by simd-json, so it cannot be counted exactly
/// and is refused here (meterd would need the number's text, which simd-json drops).
fn simd_amount(n: simd_json::StaticNode) -> Result<Amount, Bad> {
    let v: i128 = match n {
        simd_json::StaticNode::I64(v) => v.into(),
        simd_json::StaticNode::U64(v) => v.into(),
        _ => return Err("not an exact number"),
    };
    let nanos = v.checked_mul(UNIT).ok_or("too large")?;
    if !(0..=MAX_INPUT).contains(&nanos) {
        return Err("out of range");
    }
    Ok(Amount(nanos))
}

fn simd_tape_event<'i>(v: simd_json::tape::Value<'_, 'i>) -> Result<Event<'i>, Bad> {
    let o = v.as_object().ok_or("not an object")?;
    let string = |k: &str| -> Result<Option<Cow<'i, str>>, Bad> {
        match o.get(k) {
            None => Ok(None),
            Some(x) if x.is_null() => Ok(None),
            Some(x) => x
                .into_string()
                .map(|s| Some(Cow::Borrowed(s)))
                .ok_or("not a string"),
        }
    };
    let value = match o.get("value") {
        None => None,
        Some(x) if x.is_null() => None,
        Some(x) => Some(match x.into_string() {
            Some(s) => Amount::parse_input(s).map_err(|_| "bad value")?,
            None => match (x.as_u64(), x.as_i64()) {
                (Some(u), _) => simd_amount(simd_json::StaticNode::U64(u))?,
                (None, Some(i)) => simd_amount(simd_json::StaticNode::I64(i))?,
                _ => return Err("not an exact number"),
            },
        }),
    };
    let time_ms = match string("time")? {
        None => None,
        Some(t) => Some(parse_rfc3339(&t).ok_or("bad time")?),
    };
    Ok(Event {
        id: required(string("id")?, 128)?,
        contract: required(string("contract")?, 128)?,
        lever: required(string("lever")?, 64)?,
        value,
        time_ms,
        bucket: optional(string("bucket")?, 64)?,
        shown_id: None,
    })
}

/// simd-json to a tape (buffers reused, as a per-worker parser would).
fn parse_simd_tape<'i>(
    buf: &'i mut [u8],
    buffers: &mut simd_json::Buffers,
) -> Vec<Result<Event<'i>, Bad>> {
    let tape = simd_json::to_tape_with_buffers(buf, buffers).expect("valid body");
    let root = tape.as_value();
    match root.as_array() {
        Some(a) => a.iter().map(simd_tape_event).collect(),
        None => vec![simd_tape_event(root)],
    }
}

fn simd_value_event<'i>(v: simd_json::BorrowedValue<'i>) -> Result<Event<'i>, Bad> {
    let simd_json::BorrowedValue::Object(mut o) = v else {
        return Err("not an object");
    };
    let mut string = |k: &str| -> Result<Option<Cow<'i, str>>, Bad> {
        match o.remove(k) {
            None | Some(simd_json::BorrowedValue::Static(simd_json::StaticNode::Null)) => Ok(None),
            Some(simd_json::BorrowedValue::String(s)) => Ok(Some(s)),
            Some(_) => Err("not a string"),
        }
    };
    let id = required(string("id")?, 128)?;
    let contract = required(string("contract")?, 128)?;
    let lever = required(string("lever")?, 64)?;
    let bucket = optional(string("bucket")?, 64)?;
    let time_ms = match string("time")? {
        None => None,
        Some(t) => Some(parse_rfc3339(&t).ok_or("bad time")?),
    };
    let value = match o.remove("value") {
        None | Some(simd_json::BorrowedValue::Static(simd_json::StaticNode::Null)) => None,
        Some(simd_json::BorrowedValue::String(s)) => {
            Some(Amount::parse_input(&s).map_err(|_| "bad value")?)
        }
        Some(simd_json::BorrowedValue::Static(n)) => Some(simd_amount(n)?),
        Some(_) => return Err("bad value"),
    };
    Ok(Event {
        id,
        contract,
        lever,
        value,
        time_ms,
        bucket,
        shown_id: None,
    })
}

/// simd-json to a borrowed DOM (`BorrowedValue`).
fn parse_simd_value(buf: &mut [u8]) -> Vec<Result<Event<'_>, Bad>> {
    match simd_json::to_borrowed_value(buf).expect("valid body") {
        simd_json::BorrowedValue::Array(a) => a.into_iter().map(simd_value_event).collect(),
        v => vec![simd_value_event(v)],
    }
}

fn ok_count<T>(v: &[Result<T, Bad>]) -> usize {
    v.iter().filter(|e| e.is_ok()).count()
}

/// Parses every shape every way and checks the four produce the same events.
fn check_parsers_agree(body: &[u8]) -> usize {
    let reference = parse_meterd(body);
    assert!(reference.iter().all(|e| e.is_ok()));
    assert_eq!(parse_serde_one_pass(body), reference);
    let mut copy = body.to_vec();
    assert_eq!(
        parse_simd_tape(&mut copy, &mut simd_json::Buffers::default()),
        reference
    );
    let mut copy = body.to_vec();
    assert_eq!(parse_simd_value(&mut copy), reference);
    reference.len()
}

fn bench_parse(c: &mut Criterion) {
    let mut g = c.benchmark_group("parse");
    let batch = batch_body(BATCH);
    for (shape, body) in [
        ("single", SINGLE.to_string()),
        ("single_full", SINGLE_FULL.to_string()),
        ("batch_1000", batch),
    ] {
        let n = check_parsers_agree(body.as_bytes());
        let body = body.as_bytes();
        g.throughput(Throughput::Elements(n as u64));
        g.bench_with_input(
            BenchmarkId::new("serde_json_meterd", shape),
            body,
            |b, body| b.iter(|| ok_count(&parse_meterd(black_box(body)))),
        );
        g.bench_with_input(
            BenchmarkId::new("serde_json_one_pass", shape),
            body,
            |b, body| b.iter(|| ok_count(&parse_serde_one_pass(black_box(body)))),
        );
        let mut buffers = simd_json::Buffers::new(body.len());
        g.bench_with_input(
            BenchmarkId::new("simd_json_tape", shape),
            body,
            |b, body| {
                b.iter(|| {
                    let mut copy = black_box(body).to_vec();
                    ok_count(&parse_simd_tape(&mut copy, &mut buffers))
                })
            },
        );
        g.bench_with_input(
            BenchmarkId::new("simd_json_value", shape),
            body,
            |b, body| {
                b.iter(|| {
                    let mut copy = black_box(body).to_vec();
                    ok_count(&parse_simd_value(&mut copy))
                })
            },
        );
    }
    g.finish();
}

fn bench_event(c: &mut Criterion) {
    let mut g = c.benchmark_group("event");
    g.throughput(Throughput::Elements(1));
    g.bench_function("parse_single", |b| {
        b.iter(|| parse_all(black_box(SINGLE.as_bytes())))
    });
    g.bench_function("parse_single_full", |b| {
        b.iter(|| parse_all(black_box(SINGLE_FULL.as_bytes())))
    });
    let body = batch_body(BATCH);
    assert_eq!(parse_all(body.as_bytes()), BATCH);
    g.throughput(Throughput::Elements(BATCH as u64));
    g.bench_function("parse_batch_1000", |b| {
        b.iter(|| parse_all(black_box(body.as_bytes())))
    });
    g.finish();
}

/// Times `iters` calls of `apply` on one `Counters`, draining it (untimed) every `chunk`
/// calls so the pending journal list and maps stay at a realistic size.
fn timed_applies(iters: u64, chunk: u64, events: &[EventRecord]) -> Duration {
    let counters = Counters::new(SHARDS);
    let tenant: Arc<str> = Arc::from("default");
    let shard = counters.shard_of(&tenant, &events[0].contract);
    let mut total = Duration::ZERO;
    let mut done = 0u64;
    while done < iters {
        let n = (iters - done).min(chunk);
        let start = Instant::now();
        for seq in done..done + n {
            counters.apply(shard, seq, seq, &tenant, black_box(events));
        }
        total += start.elapsed();
        drop(counters.begin_flush());
        counters.end_flush();
        done += n;
    }
    total
}

fn bench_counters(c: &mut Criterion) {
    let mut g = c.benchmark_group("counters");
    let one = [record("c1", BASE_MS + 12_345, 1_000_000_000)];
    g.throughput(Throughput::Elements(1));
    g.bench_function("apply_1_event", |b| {
        b.iter_custom(|iters| timed_applies(iters, 10_000, &one))
    });
    // One request's group: same contract and lever, times spread over one minute (three
    // windows, merged into 1,000 times each).
    let batch: Vec<EventRecord> = (0..BATCH as i64)
        .map(|i| record("c1", BASE_MS + i * 60, 1_000_000_000))
        .collect();
    g.throughput(Throughput::Elements(BATCH as u64));
    g.bench_function("apply_1000_events", |b| {
        b.iter_custom(|iters| timed_applies(iters, 100, &batch))
    });
    g.finish();
}

/// Contracts and minutes per contract that give exactly 100,000 dirty windows: 97
/// consecutive minutes from a day boundary span 2 hours and 1 day, so each contract has
/// 97 + 2 + 1 = 100 windows.
const FLUSH_CONTRACTS: usize = 1_000;
const FLUSH_MINUTES: i64 = 97;
const FLUSH_WINDOWS: usize = 100_000;

/// Per contract: its shard and its 97 events.
type FlushInput = Vec<(usize, Vec<EventRecord>)>;

fn flush_input(counters: &Counters) -> FlushInput {
    (0..FLUSH_CONTRACTS)
        .map(|n| {
            let contract = format!("contract-{n:05}");
            let shard = counters.shard_of("default", &contract);
            let events = (0..FLUSH_MINUTES)
                .map(|m| record(&contract, BASE_MS + m * 60_000 + 7, 1_000_000_000))
                .collect();
            (shard, events)
        })
        .collect()
}

fn filled(input: &FlushInput) -> Counters {
    let counters = Counters::new(SHARDS);
    let tenant: Arc<str> = Arc::from("default");
    for (seq, (shard, events)) in input.iter().enumerate() {
        counters.apply(*shard, seq as u64, seq as u64, &tenant, events);
    }
    counters
}

fn bench_flush(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = Store::open(dir.path(), Duration::from_secs(35 * 86_400)).expect("open store");
    let revisions = meterd::revision::Revisions::load(&store).expect("revisions");
    let cfg = meterd::config::Config::from_toml("bench.toml", "[[tenants]]\nname = \"default\"\n")
        .expect("config");
    let registry = meterd::registry::Registry::new(&cfg);
    let recent = meterd::dedupe::Unflushed::new();
    let (journal, _writer) = meterd::journal::WalJournal::start(
        store.clone(),
        meterd::config::Durability::Buffered,
        Duration::ZERO,
        1,
    )
    .expect("journal");
    let input = flush_input(&Counters::new(SHARDS));
    assert_eq!(filled(&input).pending_entries(), FLUSH_WINDOWS);

    let mut g = c.benchmark_group("flush");
    g.sampling_mode(SamplingMode::Flat)
        .sample_size(10)
        .measurement_time(Duration::from_secs(8))
        .throughput(Throughput::Elements(FLUSH_WINDOWS as u64));
    g.bench_function("flush_once_100k_windows", |b| {
        b.iter_batched(
            || filled(&input),
            |counters| {
                let rows = flush_once(
                    &store, &journal, &counters, &revisions, &recent, &registry, false,
                )
                .expect("flush");
                assert_eq!(rows, FLUSH_WINDOWS);
                // Returned so that dropping the drained counters is not timed.
                counters
            },
            BatchSize::PerIteration,
        )
    });
    g.finish();
    drop(store);
}

fn quota_tenant() -> Arc<Tenant> {
    Arc::new(Tenant {
        name: Arc::from("default"),
        index: 0,
        lateness: Duration::from_secs(3600),
        levers: Default::default(),
        contracts: Default::default(),
        plans: Default::default(),
        grants: Default::default(),
        thresholds: Vec::new(),
        webhook: None,
    })
}

/// A stored contract as the registry holds it, with `quotas` (JSON) and `parent`.
fn quota_contract(t: &Tenant, id: &str, quotas: &str, parent: Option<&str>) -> Arc<Contract> {
    let parent = parent
        .map(|p| format!(r#","parent":"{p}""#))
        .unwrap_or_default();
    let json = format!(
        r#"{{"id":"{id}","body":{{"customer":"cus","quotas":{quotas}{parent}}},
            "status":"active","created_at":"2025-12-15T00:00:00Z",
            "updated_at":"2025-12-15T00:00:00Z"}}"#
    );
    let c: Contract = serde_json::from_str(&json).expect("contract JSON");
    let c = Arc::new(c.finish());
    t.contracts.insert(id.to_string(), c.clone());
    c
}

fn bench_quota(c: &mut Criterion) {
    let tenant = quota_tenant();
    let lever: Lever = serde_json::from_str(
        r#"{"id":"api_calls","aggregation":"sum","unit":"requests","status":"active",
            "created_at":"2025-12-15T00:00:00Z","updated_at":"2025-12-15T00:00:00Z"}"#,
    )
    .expect("lever JSON");
    tenant
        .levers
        .insert(lever.id.clone(), Arc::new(lever.clone()));
    let month = r#"[{"lever":"api_calls","period":"month","limit":"1000000000000","mode":"hard"}]"#;
    let cases = [
        ("unlimited", quota_contract(&tenant, "c-free", "[]", None)),
        (
            "hard_month",
            quota_contract(&tenant, "c-month", month, None),
        ),
        ("hard_month_parent", {
            quota_contract(&tenant, "c-pool", month, None);
            quota_contract(&tenant, "c-child", month, Some("c-pool"))
        }),
    ];
    let book = QuotaBook::new(SHARDS);
    let mut g = c.benchmark_group("quota");
    g.throughput(Throughput::Elements(1));
    for (name, contract) in cases {
        let mut out = Reserved::default();
        let mut t = BASE_MS + 86_400_000;
        g.bench_function(format!("try_reserve_{name}"), |b| {
            b.iter(|| {
                t += 1;
                let d = book.try_reserve(
                    &tenant,
                    black_box(&contract),
                    &lever,
                    Amount::ONE,
                    t,
                    &mut out,
                );
                out.clear();
                d.is_ok()
            })
        });
    }
    g.finish();
}

fn bench_keys(c: &mut Criterion) {
    let mut g = c.benchmark_group("keys");
    g.throughput(Throughput::Elements(1));
    g.bench_function("window_key", |b| {
        b.iter(|| {
            window_key(
                black_box("default"),
                black_box("contract-00042"),
                black_box("api_calls"),
                Granularity::Minute,
                black_box(BASE_MS),
                None,
            )
        })
    });
    g.bench_function("window_key_bucket", |b| {
        b.iter(|| {
            window_key(
                black_box("default"),
                black_box("contract-00042"),
                black_box("api_calls"),
                Granularity::Hour,
                black_box(BASE_MS),
                Some(black_box("eu-west")),
            )
        })
    });
    g.bench_function("id_hash", |b| {
        b.iter(|| id_hash(black_box("k3x9-1-12-123456")))
    });
    g.bench_function("dedupe_key", |b| {
        b.iter(|| dedupe_key(black_box("default"), id_hash(black_box("k3x9-1-12-123456"))))
    });
    g.finish();
}

fn bench_decimal(c: &mut Criterion) {
    let mut g = c.benchmark_group("decimal");
    g.throughput(Throughput::Elements(1));
    for (name, text) in [
        ("parse_int", "1"),
        ("parse_frac", "12.345678901"),
        ("parse_exp", "2.5e3"),
    ] {
        assert!(Amount::parse_input(text).is_ok());
        g.bench_function(name, |b| b.iter(|| Amount::parse_input(black_box(text))));
    }
    for (name, a) in [
        ("format_int", Amount(42 * 1_000_000_000)),
        ("format_frac", Amount(12_345_678_901)),
    ] {
        g.bench_function(name, |b| b.iter(|| black_box(a).to_string()));
    }
    g.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
}

criterion_group! {
    name = micro;
    config = config();
    targets = bench_event, bench_parse, bench_counters, bench_quota, bench_flush, bench_keys,
        bench_decimal
}
criterion_main!(micro);
