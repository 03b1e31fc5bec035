//! Black-box tests of where accepted ids live before the flusher writes their dedupe
//! records (SPEC 2.2, docs/durability.md).
//!
//! Promises guarded:
//! - an id accepted since the last flush is a duplicate at once, also when the flush
//!   interval is an hour, and stays one after the flush that moves its record and after
//!   a `kill -9` restart that finds it in the journal again;
//! - the unflushed ids wake the flusher once they pass half of their limit
//!   (`memory_limit / 8192`), and not at exactly half, without waiting for the interval;
//! - an unflushed event can be retracted at once: the retraction has the flusher move its
//!   record first, so the record is retracted, not overwritten later.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

const LEVER: &str = "calls";
const CONTRACT: &str = "ctr";
/// `memory_limit = 256MiB`: at most 32,768 unflushed ids, the flusher woken past 16,384.
const HALF_LIMIT: usize = 16_384;

fn events(prefix: &str, from: usize, n: usize) -> Value {
    Value::Array(
        (from..from + n)
            .map(|i| json!({"id": format!("{prefix}-{i}"), "contract": CONTRACT, "lever": LEVER}))
            .collect(),
    )
}

/// Value of an unlabelled series in a /metrics scrape (0 when absent).
fn series(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or(0.0)
}

fn flushes(d: &Daemon) -> f64 {
    series(&d.metrics_text(), "meterd_flush_duration_seconds_count")
}

/// A daemon whose flusher runs every hour unless woken.
fn daemon() -> Daemon {
    let dir = Arc::new(tempfile::tempdir().expect("tempdir"));
    let config = dir.path().join("meterd.toml");
    let default = "flush_interval = \"200ms\"";
    let top = "memory_limit = \"256MiB\"\nmax_body_bytes = 2097152\nmax_batch_events = 20000\n";
    let text = config_text(top, "");
    assert!(text.contains(default), "harness config changed: {text}");
    std::fs::write(&config, text.replace(default, "flush_interval = \"1h\"")).unwrap();
    let d = Daemon::spawn(dir, config);
    d.lever(LEVER, "sum");
    d.contract(CONTRACT);
    d
}

fn post(d: &Daemon, body: &Value) -> Value {
    let (s, b) = d.post_events(body);
    assert_eq!(s, 200, "{b}");
    b
}

#[test]
fn unflushed_ids_wake_the_flusher_past_half_their_limit() {
    let mut d = daemon();
    let b = post(&d, &events("a", 0, HALF_LIMIT));
    assert_eq!(b["accepted"], json!(HALF_LIMIT), "{b}");
    // Duplicates at once, from memory (no flush has run).
    let b = post(&d, &events("a", 0, 100));
    assert_eq!(b["duplicates"], json!(100), "{b}");
    // At exactly half the limit a request does not wake the flusher...
    assert_eq!(post(&d, &events("b", 0, 1))["accepted"], json!(1));
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        flushes(&d),
        0.0,
        "a flush ran at {HALF_LIMIT} unflushed ids"
    );
    // ...one past it does.
    assert_eq!(post(&d, &events("b", 1, 1))["accepted"], json!(1));
    let t0 = Instant::now();
    while flushes(&d) < 1.0 {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "the flusher was not woken"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let t0 = Instant::now();
    while series(&d.metrics_text(), "meterd_dedupe_unflushed_ids") > 1.0 {
        assert!(t0.elapsed() < Duration::from_secs(10), "ids left unflushed");
        std::thread::sleep(Duration::from_millis(20));
    }
    // Moved to the store: still duplicates, every one, and counted once.
    let b = post(&d, &events("a", 0, HALF_LIMIT));
    assert_eq!(b["duplicates"], json!(HALF_LIMIT), "{b}");
    assert_eq!(d.day_total(CONTRACT, LEVER), HALF_LIMIT as u64 + 2);

    // Accepted after that flush, then killed before the next: the restart finds the
    // ids in the journal.
    assert_eq!(post(&d, &events("c", 0, 500))["accepted"], json!(500));
    d.kill9();
    d.restart();
    let b = post(&d, &events("c", 0, 500));
    assert_eq!(b["duplicates"], json!(500), "{b}");
    let b = post(&d, &events("a", 0, 100));
    assert_eq!(b["duplicates"], json!(100), "{b}");
    assert_eq!(d.day_total(CONTRACT, LEVER), HALF_LIMIT as u64 + 502);
}

#[test]
fn an_unflushed_event_is_retracted_at_once() {
    let d = daemon();
    assert_eq!(post(&d, &events("r", 0, 3))["accepted"], json!(3));
    let (s, b) = d.req("DELETE", "/v1/events/r-1", Some(ADMIN), None);
    assert!(s == 200 || s == 201, "{s} {b}");
    assert_eq!(d.day_total(CONTRACT, LEVER), 2);
    // The retraction mark stays: a later flush (woken by the next request, past half
    // the limit) does not write the record back.
    let n = HALF_LIMIT + 1;
    assert_eq!(post(&d, &events("r", 3, n))["accepted"], json!(n));
    assert_eq!(post(&d, &events("r", 0, 1))["duplicates"], json!(1));
    let t0 = Instant::now();
    while series(&d.metrics_text(), "meterd_dedupe_unflushed_ids") > 0.0 || flushes(&d) < 2.0 {
        assert!(t0.elapsed() < Duration::from_secs(10), "no second flush");
        std::thread::sleep(Duration::from_millis(20));
    }
    let (s, again) = d.req("DELETE", "/v1/events/r-1", Some(ADMIN), None);
    assert_eq!((s, &again["id"]), (200, &json!("r-1")), "{again}");
    assert_eq!(post(&d, &events("r", 1, 1))["duplicates"], json!(1));
    assert_eq!(d.day_total(CONTRACT, LEVER), n as u64 + 2);
}
