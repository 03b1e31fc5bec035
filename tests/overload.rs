//! Overload test (SPEC 2.4): far more load than the daemon can absorb, for a minute.
//!
//! Promises guarded:
//! - memory stays bounded: the daemon's peak RSS (`VmHWM`) over the whole run stays
//!   under the configured `memory_limit` plus what docs/durability.md's Memory section says
//!   remembered ids cost on top of it (about 1.6 bytes per id, the dedupe files' pinned
//!   filters and indexes; allowed here: 2 bytes per id accepted by the time the peak
//!   is read);
//! - excess requests get `429 overloaded` problem+json with `Retry-After`, and nothing of
//!   a refused request is counted: clients re-send a refused batch unchanged, and when
//!   it is finally accepted every event in it is new (none a duplicate);
//! - every accepted event is counted exactly once;
//! - when the load drops, the daemon serves normally again: no 429 and no error at the
//!   sustainable load.
//!
//! The sustainable rate is measured first with a few closed-loop clients; the overload
//! phase then runs many clients with no pause at all. The figures (sustainable rate,
//! offered and accepted rates, peak RSS) are printed; no assertion depends on timing.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;

use common::{Daemon, INGEST};

const CONTRACT: &str = "load-c";
const LEVER: &str = "calls";
const MEMORY_LIMIT_MIB: u64 = 256;
/// Events per request in the overload phase (about 60 KB bodies).
const BATCH: usize = 800;
const OVERLOAD_SECS: u64 = 60;
const OVERLOAD_CLIENTS: usize = 64;
/// What a remembered id may cost on top of `memory_limit` (docs/durability.md documents about
/// 1.6 bytes: pinned filter and index blocks of the dedupe files).
const ID_BYTES: u64 = 2;

fn body(tag: &str, from: u64, n: usize) -> String {
    let mut s = String::with_capacity(n * 80);
    s.push('[');
    for i in 0..n as u64 {
        if i > 0 {
            s.push(',');
        }
        s.push_str(&format!(
            r#"{{"id":"{tag}-{:09}","contract":"{CONTRACT}","lever":"{LEVER}","value":1}}"#,
            from + i
        ));
    }
    s.push(']');
    s
}

/// What one client saw.
#[derive(Default)]
struct Tally {
    requests: u64,
    accepted: u64,
    shed: u64,
    errors: Vec<String>,
}

/// Posts batches in a closed loop until `stop`; counts outcomes.
fn client(base: String, tag: String, batch: usize, stop: Arc<AtomicBool>) -> Tally {
    let http = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap();
    let mut t = Tally::default();
    let mut next = 0u64;
    // A refused batch is re-sent at once, unchanged (an impatient client that ignores
    // Retry-After): when it is finally accepted, all of it must be new.
    let mut b = body(&tag, next, batch);
    while !stop.load(Ordering::Relaxed) {
        let r = http
            .post(format!("{base}/v1/events"))
            .bearer_auth(INGEST)
            .header("content-type", "application/json")
            .body(b.clone())
            .send();
        t.requests += 1;
        match r {
            Ok(r) => {
                let status = r.status().as_u16();
                let retry_after = r
                    .headers()
                    .get("retry-after")
                    .map(|v| v.to_str().unwrap_or("").to_string());
                let v: Value = r.json().unwrap_or(Value::Null);
                match status {
                    200 => {
                        let a = v["accepted"].as_u64().unwrap_or(0);
                        if a != batch as u64 {
                            t.errors.push(format!("partial accept: {v}"));
                        }
                        t.accepted += a;
                        next += batch as u64;
                        b = body(&tag, next, batch);
                    }
                    429 => {
                        if v["code"] != "overloaded" || retry_after.is_none() {
                            t.errors
                                .push(format!("429 without code/Retry-After: {v} {retry_after:?}"));
                        }
                        t.shed += 1;
                    }
                    s => t.errors.push(format!("status {s}: {v}")),
                }
            }
            Err(e) => t.errors.push(format!("transport: {e}")),
        }
    }
    t
}

/// Runs `n` clients for `secs`; returns their tallies.
fn phase(d: &Daemon, name: &str, n: usize, batch: usize, secs: u64) -> (Vec<Tally>, Duration) {
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let handles: Vec<_> = (0..n)
        .map(|i| {
            let base = d.base.clone();
            let stop = stop.clone();
            let tag = format!("{name}{i}");
            std::thread::spawn(move || client(base, tag, batch, stop))
        })
        .collect();
    std::thread::sleep(Duration::from_secs(secs));
    stop.store(true, Ordering::Relaxed);
    let tallies = handles.into_iter().map(|h| h.join().unwrap()).collect();
    (tallies, started.elapsed())
}

fn status_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

fn counted(d: &Daemon) -> u64 {
    d.day_total(CONTRACT, LEVER)
}

#[test]
fn overload_is_shed_with_bounded_memory_and_nothing_lost() {
    let d = Daemon::start_with(
        &format!("memory_limit = \"{MEMORY_LIMIT_MIB}MiB\"\nmax_body_bytes = 1048576\n"),
        "",
    );
    d.lever(LEVER, "sum");
    d.contract(CONTRACT);
    let pid = d.child.as_ref().unwrap().id();
    let limit_kib = MEMORY_LIMIT_MIB * 1024;

    // Sustainable rate: a few closed-loop clients.
    let (base_tallies, base_time) = phase(&d, "base", 3, BATCH, 4);
    for t in &base_tallies {
        assert!(t.errors.is_empty(), "baseline errors: {:?}", t.errors);
    }
    let base_events: u64 = base_tallies.iter().map(|t| t.accepted).sum();
    let sustainable = base_events as f64 / base_time.as_secs_f64();

    // Overload: many clients with no pause, while sampling RSS.
    let sampling = Arc::new(AtomicBool::new(true));
    let peak_sampled = Arc::new(AtomicU64::new(0));
    let sampler = {
        let sampling = sampling.clone();
        let peak = peak_sampled.clone();
        std::thread::spawn(move || {
            while sampling.load(Ordering::Relaxed) {
                peak.fetch_max(status_kib(pid, "VmRSS:"), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(100));
            }
        })
    };
    let (tallies, over_time) = phase(&d, "over", OVERLOAD_CLIENTS, BATCH, OVERLOAD_SECS);
    sampling.store(false, Ordering::Relaxed);
    sampler.join().unwrap();

    let errors: Vec<&String> = tallies.iter().flat_map(|t| &t.errors).collect();
    assert!(
        errors.is_empty(),
        "{} unexpected outcomes under overload, e.g. {:?}",
        errors.len(),
        &errors[..errors.len().min(5)]
    );
    let requests: u64 = tallies.iter().map(|t| t.requests).sum();
    let shed: u64 = tallies.iter().map(|t| t.shed).sum();
    let over_events: u64 = tallies.iter().map(|t| t.accepted).sum();
    let offered = (requests * BATCH as u64) as f64 / over_time.as_secs_f64();
    let accepted_rate = over_events as f64 / over_time.as_secs_f64();
    let peak_kib = status_kib(pid, "VmHWM:");
    // Remembered ids are planned on top of memory_limit (docs/durability.md, Memory).
    let ids_kib = (base_events + over_events) * ID_BYTES / 1024;
    println!(
        "sustainable {sustainable:.0} events/s; overload: offered {offered:.0} events/s ({:.1}x), \
         accepted {accepted_rate:.0} events/s, {shed} of {requests} requests shed; \
         peak RSS {} MiB (sampled {} MiB) of memory_limit {MEMORY_LIMIT_MIB} MiB + {} MiB \
         for {} remembered ids",
        offered / sustainable,
        peak_kib / 1024,
        peak_sampled.load(Ordering::Relaxed) / 1024,
        ids_kib / 1024,
        base_events + over_events
    );
    assert!(
        shed > 0,
        "no request was shed: the test did not overload meterd"
    );
    assert!(over_events > 0, "nothing was accepted under overload");
    assert!(
        peak_kib < limit_kib + ids_kib,
        "peak RSS {peak_kib} KiB is over memory_limit {limit_kib} KiB + {ids_kib} KiB for the ids"
    );

    // Load drops: the sustainable load is served again without refusals.
    let (after, after_time) = phase(&d, "after", 3, BATCH, 4);
    let after_events: u64 = after.iter().map(|t| t.accepted).sum();
    for t in &after {
        assert!(t.errors.is_empty(), "after overload: {:?}", t.errors);
        assert_eq!(t.shed, 0, "still shedding after the load dropped");
    }
    println!(
        "after overload: {:.0} events/s ({:.2}x the sustainable rate)",
        after_events as f64 / after_time.as_secs_f64(),
        after_events as f64 / after_time.as_secs_f64() / sustainable
    );
    assert!(after_events > 0);

    // Every accepted event counted exactly once.
    let total = base_events + over_events + after_events;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let c = counted(&d);
        if c == total {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "counted {c}, acknowledged {total}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}
