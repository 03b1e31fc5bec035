//! Crash test of the durability and idempotency promise (SPEC 2.2).
//!
//! Promise guarded: a 2xx answer means every accepted event is durable, so after
//! `kill -9` the restarted daemon counts it exactly once; events whose request got no
//! answer are counted at most once, and re-sending them settles their fate (accepted if
//! they were lost, duplicate if they were kept). Also holds with
//! `durability = "buffered"` (which may lose data only on power loss, not on kill -9).
//!
//! Client threads post unique ids (value 1 on a `sum` lever, a few contracts) until the
//! daemon is killed at a random moment; each keeps a ledger of acknowledged ids and ids
//! of unknown fate, carried over three kill/restart cycles. Rerun a failure with
//! `METERD_SEED=<seed>`.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

use common::{Daemon, INGEST};

const CONTRACTS: [&str; 4] = ["crash-a", "crash-b", "crash-c", "crash-d"];
const LEVER: &str = "calls";
const CLIENTS: usize = 7;

/// Ids sent, by what the client knows about them.
#[derive(Debug, Default)]
struct Ledger {
    /// Answered 200 with the event accepted: must be counted exactly once.
    acked: Vec<(String, usize)>,
    /// The request failed or got no answer: counted at most once.
    unknown: Vec<(String, usize)>,
}

impl Ledger {
    fn per_contract(ids: &[(String, usize)]) -> [u64; CONTRACTS.len()] {
        let mut n = [0; CONTRACTS.len()];
        for (_, c) in ids {
            n[*c] += 1;
        }
        n
    }
}

fn event(id: &str, contract: usize) -> Value {
    json!({"id": id, "contract": CONTRACTS[contract], "lever": LEVER, "value": 1})
}

/// One client: posts single events and small batches of fresh ids until `stop` is set
/// or a request fails (the daemon was killed).
fn client_loop(base: &str, tag: &str, seed: u64, stop: &AtomicBool) -> Ledger {
    let client = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client");
    let mut rng = StdRng::seed_from_u64(seed);
    let mut ledger = Ledger::default();
    let mut n = 0u64;
    while !stop.load(Ordering::SeqCst) {
        let size = if rng.random_bool(0.4) {
            1
        } else {
            rng.random_range(2..=16)
        };
        let evs: Vec<(String, usize)> = (0..size)
            .map(|_| {
                n += 1;
                (format!("{tag}-{n}"), rng.random_range(0..CONTRACTS.len()))
            })
            .collect();
        let objs: Vec<Value> = evs.iter().map(|(id, c)| event(id, *c)).collect();
        let body = if size == 1 && rng.random_bool(0.5) {
            objs[0].clone()
        } else {
            Value::Array(objs)
        };
        let sent = client
            .post(format!("{base}/v1/events"))
            .bearer_auth(INGEST)
            .header("content-type", "application/json")
            .body(serde_json::to_vec(&body).expect("body"))
            .send()
            .and_then(|r| {
                let status = r.status().as_u16();
                r.text().map(|t| (status, t))
            });
        match sent {
            Ok((200, text)) => {
                let v: Value = serde_json::from_str(&text).expect("JSON answer");
                assert_eq!(
                    (
                        v["accepted"].as_u64(),
                        v["duplicates"].as_u64(),
                        v["rejected"].as_u64()
                    ),
                    (Some(size as u64), Some(0), Some(0)),
                    "fresh ids must all be accepted: {text}"
                );
                ledger.acked.extend(evs);
            }
            Ok((status, text)) => panic!("unexpected answer {status}: {text}"),
            Err(_) => {
                ledger.unknown.extend(evs);
                break;
            }
        }
    }
    ledger
}

/// Posts `body` and returns (accepted, duplicates, rejected).
fn post_counts(d: &Daemon, body: &Value) -> (u64, u64, u64) {
    let (s, v) = d.post_events(body);
    assert_eq!(s, 200, "{v}");
    let n = |k: &str| v[k].as_u64().unwrap_or_else(|| panic!("{k} in {v}"));
    (n("accepted"), n("duplicates"), n("rejected"))
}

/// Usage totals per contract since `since_ms` (integers: every value is 1).
fn totals(d: &Daemon, since_ms: i64) -> [u64; CONTRACTS.len()] {
    let fmt = |ms: i64| {
        chrono::DateTime::from_timestamp_millis(ms)
            .expect("time")
            .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
    };
    let now = chrono::Utc::now().timestamp_millis();
    let q = format!(
        "from={}&to={}&window=none&lever={LEVER}",
        fmt(since_ms - 60_000),
        fmt(now + 600_000)
    );
    let mut out = [0; CONTRACTS.len()];
    for (c, name) in CONTRACTS.iter().enumerate() {
        let v = d.usage(name, &q);
        out[c] = match v["items"].as_array().expect("items").as_slice() {
            [] => 0,
            [row] => row["value"]
                .as_str()
                .and_then(|s| s.parse().ok())
                .unwrap_or_else(|| panic!("integer total expected: {row}")),
            more => panic!("one row expected: {more:?}"),
        };
    }
    out
}

/// Runs `cycles` rounds of: concurrent posting, kill -9 after 1-3 s, restart, checks.
fn crash_cycles(top: &str, cycles: usize) {
    let seed = std::env::var("METERD_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random::<u64>);
    println!("seed = {seed} (rerun with METERD_SEED={seed})");
    let mut rng = StdRng::seed_from_u64(seed);
    let since = chrono::Utc::now().timestamp_millis();
    let mut d = Daemon::start_with(top, "");
    d.lever(LEVER, "sum");
    for c in CONTRACTS {
        d.contract(c);
    }
    let mut ledger = Ledger::default();
    for cycle in 0..cycles {
        // Load, then kill -9 at a random moment.
        let stop = AtomicBool::new(false);
        let base = d.base.clone();
        let kill_after = Duration::from_millis(rng.random_range(1_000..=3_000));
        let seeds: Vec<u64> = (0..CLIENTS).map(|_| rng.random()).collect();
        let ledgers: Vec<Ledger> = std::thread::scope(|s| {
            let handles: Vec<_> = seeds
                .iter()
                .enumerate()
                .map(|(t, &seed)| {
                    let (base, stop) = (&base, &stop);
                    s.spawn(move || client_loop(base, &format!("c{cycle}-t{t}"), seed, stop))
                })
                .collect();
            std::thread::sleep(kill_after);
            d.kill9();
            stop.store(true, Ordering::SeqCst);
            handles
                .into_iter()
                .map(|h| h.join().expect("client thread"))
                .collect()
        });
        let mut unknown = Vec::new();
        let mut acked_now = 0;
        for l in ledgers {
            acked_now += l.acked.len();
            ledger.acked.extend(l.acked);
            unknown.extend(l.unknown);
        }
        let t = Instant::now();
        d.restart();
        println!(
            "cycle {cycle}: killed after {} ms; {acked_now} ids acknowledged, {} unknown; \
             restart took {} ms",
            kill_after.as_millis(),
            unknown.len(),
            t.elapsed().as_millis()
        );
        assert!(acked_now > 0, "no request was acknowledged before the kill");

        // (a) acknowledged <= counted <= acknowledged + unknown, per contract.
        let acked = Ledger::per_contract(&ledger.acked);
        let unk = Ledger::per_contract(&unknown);
        let before = totals(&d, since);
        for c in 0..CONTRACTS.len() {
            assert!(
                acked[c] <= before[c] && before[c] <= acked[c] + unk[c],
                "cycle {cycle}, {}: counted {} but acknowledged {} and unknown {}",
                CONTRACTS[c],
                before[c],
                acked[c],
                unk[c]
            );
        }

        // (b) every acknowledged id (of every cycle so far) is a duplicate now.
        for chunk in ledger.acked.chunks(5_000) {
            let body = Value::Array(chunk.iter().map(|(id, c)| event(id, *c)).collect());
            assert_eq!(
                post_counts(&d, &body),
                (0, chunk.len() as u64, 0),
                "cycle {cycle}: re-sent acknowledged ids must all be duplicates"
            );
        }

        // (c) every unknown id is accepted (it was lost) or a duplicate (it was kept);
        // the kept ones are exactly the surplus counted in (a).
        let mut kept = [0u64; CONTRACTS.len()];
        for (id, c) in &unknown {
            match post_counts(&d, &event(id, *c)) {
                (1, 0, 0) => {}
                (0, 1, 0) => kept[*c] += 1,
                other => panic!("cycle {cycle}: re-sent unknown id {id}: {other:?}"),
            }
        }
        ledger.acked.extend(unknown);
        let after = totals(&d, since);
        let all = Ledger::per_contract(&ledger.acked);
        for c in 0..CONTRACTS.len() {
            assert_eq!(
                before[c],
                acked[c] + kept[c],
                "cycle {cycle}, {}: counted before re-sending vs acknowledged + kept",
                CONTRACTS[c]
            );
            assert_eq!(
                after[c], all[c],
                "cycle {cycle}, {}: total must equal the distinct ids ever sent",
                CONTRACTS[c]
            );
        }
        println!(
            "cycle {cycle}: ok; {} of the unknown ids had been kept; {} distinct ids \
             counted exactly once ({after:?})",
            kept.iter().sum::<u64>(),
            ledger.acked.len(),
        );
    }
}

/// Three kill -9 / restart cycles with the default `durability = "fsync"`.
#[test]
fn kill9_loses_no_acknowledged_event_and_counts_each_once() {
    let t = Instant::now();
    crash_cycles("", 3);
    println!("done in {} ms", t.elapsed().as_millis());
}

/// With `durability = "buffered"` a process crash (not a power loss) loses nothing
/// acknowledged either: acknowledged writes are in the OS page cache.
#[test]
fn kill9_with_buffered_durability_loses_no_acknowledged_event() {
    let t = Instant::now();
    crash_cycles("durability = \"buffered\"", 2);
    println!("done in {} ms", t.elapsed().as_millis());
}
