//! Micro-benchmarks of meterd's hot paths (criterion, `harness = false`).
//!
//! Run with `cargo bench --bench micro` (all groups, about 1-2 minutes on 2 cores) or
//! pass a filter, e.g. `cargo bench --bench micro -- flush`. Groups:
//!
//! - `event`: body splitting and per-event parsing ([`split_body`] + [`parse_event`]) of
//!   one event and of a 1,000-event JSON array;
//! - `counters`: [`Counters::apply`] of one event and of a 1,000-event group;
//! - `flush`: [`flush_once`] of 100,000 dirty window counters into a RocksDB store in a
//!   temporary directory (the counters are re-filled outside the timed region);
//! - `keys`: window and dedupe key encoding, id hashing;
//! - `decimal`: [`Amount`] parsing and formatting.

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, SamplingMode, Throughput};
use meterd::counters::Counters;
use meterd::decimal::Amount;
use meterd::event::{parse_event, split_body, BodyFormat};
use meterd::flush::flush_once;
use meterd::registry::Aggregation;
use meterd::store::keys::{dedupe_key, id_hash, window_key};
use meterd::store::records::EventRecord;
use meterd::store::Store;
use meterd::window::Granularity;

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
            counters.apply(shard, seq, &tenant, black_box(events));
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
        counters.apply(*shard, seq as u64, &tenant, events);
    }
    counters
}

fn bench_flush(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = Store::open(dir.path(), Duration::from_secs(35 * 86_400)).expect("open store");
    let revisions = meterd::revision::Revisions::load(&store).expect("revisions");
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
                let rows = flush_once(&store, &counters, &revisions).expect("flush");
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
    targets = bench_event, bench_counters, bench_flush, bench_keys, bench_decimal
}
criterion_main!(micro);
