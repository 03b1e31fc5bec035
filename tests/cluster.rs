//! Cluster mode end to end: 3 NATS + 3 meterd from scripts/cluster.sh, 6 partitions, a
//! client-side ledger at a steady rate (re-sending acknowledged and in-doubt ids),
//! contracts with hard quotas near their limits (a reseller pool with three children,
//! a tight contract), through faults: `kill -9` of a partition owner, `kill -9` of the
//! JetStream leader of a busy stream, SIGSTOP of an owner past its lease then SIGCONT,
//! the loss of a machine (a meterd node with its NATS server), and a node leaving
//! (SIGTERM), whose partitions are handed over.
//!
//! Pass: every acknowledged event counted exactly once, on every node; no hard limit
//! exceeded; no event refused while its limit had room; a changes-feed consumer that
//! reads each page from a random node (through every fault) converges to the rows of
//! every node, and to the ledger; per-partition unavailability measured and printed.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::cluster::LocalCluster;
use serde_json::{json, Value};

const PARTITIONS: u32 = 6;

/// Contracts, their parent and hard month limit on `calls`.
const CONTRACTS: &[(&str, Option<&str>, u64)] = &[
    ("pool", None, 400),
    ("kid1", Some("pool"), 200),
    ("kid2", Some("pool"), 200),
    ("kid3", Some("pool"), 200),
    ("tight", None, 150),
    ("c1", None, 1_000_000),
    ("c2", None, 1_000_000),
    ("c3", None, 1_000_000),
    ("c4", None, 1_000_000),
];

/// Where one event id stands in the client's ledger.
#[derive(Debug, Clone, PartialEq)]
enum State {
    /// Sent, outcome unknown (no answer, unavailable): to be re-sent with the same id.
    InDoubt,
    /// Counted (accepted, or answered duplicate after an unanswered attempt).
    Counted,
    /// Refused because a hard quota had no room.
    Refused,
}

#[derive(Debug, Clone)]
struct Entry {
    contract: &'static str,
    value: u64,
    state: State,
}

#[derive(Default)]
struct Ledger {
    entries: HashMap<String, Entry>,
    /// Violations seen by the clients (a re-sent counted id accepted again, ...).
    violations: Vec<String>,
    /// Per contract: when it last got an answer, and the longest time without one
    /// while events for it were being sent.
    last_ok: HashMap<&'static str, Instant>,
    longest_gap: HashMap<&'static str, Duration>,
}

fn http() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(25))
        .pool_max_idle_per_host(4)
        .build()
        .unwrap()
}

fn admin_put(c: &reqwest::blocking::Client, url: &str, key: &str, body: Value) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let r = c.put(url).bearer_auth(key).json(&body).send();
        match r {
            Ok(r) if r.status().is_success() => return,
            Ok(r) if Instant::now() > deadline => panic!("{url}: {} {:?}", r.status(), r.text()),
            Err(e) if Instant::now() > deadline => panic!("{url}: {e}"),
            _ => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}

/// Sends `events` (id, contract, value) to `node`, and records the outcome.
fn send(
    c: &reqwest::blocking::Client,
    node: &str,
    key: &str,
    events: &[(String, &'static str, u64)],
    resend_counted: bool,
    ledger: &Mutex<Ledger>,
) {
    let now = chrono_now();
    let body: Vec<Value> = events
        .iter()
        .map(|(id, c, v)| json!({"id": id, "contract": c, "lever": "calls", "value": v, "time": now}))
        .collect();
    let answer = c
        .post(format!("{node}/v1/events"))
        .bearer_auth(key)
        .json(&body)
        .send()
        .ok()
        .filter(|r| r.status() == 200)
        .and_then(|r| r.json::<Value>().ok());
    let mut l = ledger.lock().unwrap();
    let Some(a) = answer else {
        // No answer: every event is in doubt (unless already counted).
        for (id, _, _) in events {
            let e = l.entries.get_mut(id).unwrap();
            if e.state != State::Counted {
                e.state = State::InDoubt;
            }
        }
        return;
    };
    let mut errors: HashMap<usize, String> = HashMap::new();
    for e in a["errors"].as_array().unwrap() {
        errors.insert(
            e["index"].as_u64().unwrap() as usize,
            e["code"].as_str().unwrap().to_string(),
        );
    }
    if resend_counted {
        let accepted = a["accepted"].as_u64().unwrap();
        if accepted > 0 {
            l.violations.push(format!(
                "{accepted} already counted ids accepted again: {events:?} -> {a}"
            ));
        }
    }
    let now = Instant::now();
    for (i, (id, contract, _)) in events.iter().enumerate() {
        let code = errors.get(&i).map(String::as_str);
        let e = l.entries.get_mut(id).unwrap();
        match code {
            None => e.state = State::Counted,
            Some("quota_exceeded") if e.state != State::Counted => e.state = State::Refused,
            Some("unavailable") => {
                if e.state != State::Counted {
                    e.state = State::InDoubt;
                }
                continue;
            }
            Some(other) => {
                let msg = format!("{id} ({contract}): unexpected {other}");
                l.violations.push(msg);
                continue;
            }
        }
        if let Some(prev) = l.last_ok.insert(contract, now) {
            let gap = now - prev;
            let longest = l.longest_gap.entry(contract).or_default();
            *longest = (*longest).max(gap);
        }
    }
}

/// A billing job's copy of the window rows, by (contract, lever, window, start).
type Rows = BTreeMap<(String, String, String, String), String>;

/// Reads pages of the changes feed of `url` after `cursor` into `rows` until a page is
/// empty (or `max_pages`), setting each row to the value read. Returns the cursor, or
/// `None` when the node did not answer.
fn drain(
    c: &reqwest::blocking::Client,
    url: &str,
    key: &str,
    cursor: &str,
    rows: &mut Rows,
    max_pages: usize,
) -> Option<String> {
    let mut cursor = cursor.to_string();
    for _ in 0..max_pages {
        let r = c
            .get(format!("{url}/v1/changes"))
            .query(&[("after", cursor.as_str()), ("limit", "40")])
            .bearer_auth(key)
            .send()
            .ok()?;
        assert!(
            r.status().is_success() || r.status().as_u16() == 503,
            "changes: {}",
            r.status()
        );
        let page: Value = r.json().ok()?;
        let items = page["items"].as_array()?;
        for i in items {
            let k = (
                i["contract"].as_str().unwrap().to_string(),
                i["lever"].as_str().unwrap().to_string(),
                i["window"].as_str().unwrap().to_string(),
                i["start"].as_str().unwrap().to_string(),
            );
            rows.insert(k, i["value"].as_str().unwrap().to_string());
        }
        cursor = page["next_after"].as_str().unwrap().to_string();
        if items.is_empty() {
            break;
        }
    }
    Some(cursor)
}

fn chrono_now() -> String {
    common::time_at(0)
}

/// The JetStream leader of partition `p`'s stream, from the NATS monitoring endpoints.
fn stream_leader(cluster: &LocalCluster, p: u32) -> Option<String> {
    let c = http();
    let name = format!("METERD_J_{p}");
    for n in cluster.procs.iter().filter(|p| p.kind == "nats") {
        let url = format!("{}/jsz?streams=true", n.side_url);
        let Ok(v) = c.get(url).send().and_then(|r| r.json::<Value>()) else {
            continue;
        };
        for acc in v["account_details"].as_array().into_iter().flatten() {
            for s in acc["stream_detail"].as_array().into_iter().flatten() {
                if s["name"] == name {
                    if let Some(l) = s["cluster"]["leader"].as_str() {
                        return Some(l.to_string());
                    }
                }
            }
        }
    }
    None
}

fn partition_of(contract: &str) -> u32 {
    let root = CONTRACTS
        .iter()
        .find(|(c, _, _)| *c == contract)
        .and_then(|(_, parent, _)| *parent)
        .unwrap_or(contract);
    meterd::quota::book::partition_of_root("default", root, PARTITIONS)
}

/// Waits until some node owns partition `p` and returns it.
fn owner_of(cluster: &LocalCluster, p: u32) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some((n, _)) = cluster.owners().get(&p) {
            return n.clone();
        }
        assert!(Instant::now() < deadline, "partition {p} has no owner");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn every_acknowledged_event_is_counted_once_through_owner_leader_and_machine_faults() {
    let mut cluster = LocalCluster::up(PARTITIONS, "3s", "1s");
    let (admin, ingest, read) = cluster.keys.clone();
    let c = http();
    let first = cluster.nodes()[0].url.clone();
    admin_put(
        &c,
        &format!("{first}/v1/levers/calls"),
        &admin,
        json!({"aggregation": "sum", "unit": "calls"}),
    );
    for (i, (name, parent, limit)) in CONTRACTS.iter().enumerate() {
        // Registry writes from every node.
        let node = cluster.nodes()[i % 3].url.clone();
        let mut body = json!({"customer": "acme",
            "quotas": [{"lever": "calls", "period": "month", "limit": limit, "mode": "hard"}]});
        if let Some(p) = parent {
            body["parent"] = json!(p);
        }
        admin_put(&c, &format!("{node}/v1/contracts/{name}"), &admin, body);
    }
    // A cluster node exposes cluster mode's series from the start, one per partition
    // where they are per partition.
    let text = c
        .get(format!("{}/metrics", cluster.nodes()[0].side_url))
        .send()
        .unwrap()
        .text()
        .unwrap();
    for name in [
        "meterd_cluster_takeovers_total",
        "meterd_cluster_give_ups_total",
        "meterd_cluster_lease_renewals_total",
        "meterd_cluster_lease_losses_total",
        "meterd_cluster_forwards_total",
        "meterd_cluster_journal_append_retries_total",
        "meterd_cluster_standby_applied_messages_total",
        "meterd_cluster_journal_publish_duration_seconds",
    ] {
        assert!(
            text.contains(&format!("# TYPE {name} ")),
            "{name} missing:\n{text}"
        );
    }
    for p in 0..PARTITIONS {
        for name in [
            "meterd_cluster_partition_epoch",
            "meterd_cluster_standby_lag_messages",
            "meterd_cluster_standby_lag_seconds",
        ] {
            let series = format!("{name}{{partition=\"{p}\"}}");
            assert!(text.contains(&series), "{series} missing");
        }
    }
    let started = Instant::now();
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let urls: Arc<Vec<String>> = Arc::new(cluster.nodes().iter().map(|n| n.url.clone()).collect());
    // Two clients, each about 150 events/s in batches of 10, to random nodes.
    let workers: Vec<_> = (0..2)
        .map(|w| {
            let (ledger, stop, urls, ingest) =
                (ledger.clone(), stop.clone(), urls.clone(), ingest.clone());
            std::thread::spawn(move || {
                let c = http();
                let mut n = 0u64;
                let mut rng = 0x9e3779b97f4a7c15u64 ^ w;
                let mut next = || {
                    rng ^= rng << 13;
                    rng ^= rng >> 7;
                    rng ^= rng << 17;
                    rng
                };
                while !stop.load(Ordering::SeqCst) {
                    let node = &urls[(next() % urls.len() as u64) as usize];
                    n += 1;
                    // Every 4th batch re-sends in-doubt ids; every 7th, counted ones.
                    let (batch, counted): (Vec<(String, &'static str, u64)>, bool) = {
                        let l = ledger.lock().unwrap();
                        let pick = |want: State| -> Vec<(String, &'static str, u64)> {
                            l.entries
                                .iter()
                                .filter(|(id, e)| {
                                    e.state == want && id.starts_with(&format!("w{w}-"))
                                })
                                .take(10)
                                .map(|(id, e)| (id.clone(), e.contract, e.value))
                                .collect()
                        };
                        if n.is_multiple_of(4) {
                            (pick(State::InDoubt), false)
                        } else if n.is_multiple_of(7) {
                            (pick(State::Counted), true)
                        } else {
                            (Vec::new(), false)
                        }
                    };
                    let (batch, counted) = if batch.is_empty() {
                        let mut l = ledger.lock().unwrap();
                        let fresh: Vec<(String, &'static str, u64)> = (0..10)
                            .map(|i| {
                                let contract =
                                    CONTRACTS[(next() % CONTRACTS.len() as u64) as usize].0;
                                (format!("w{w}-{n}-{i}"), contract, 1 + next() % 4)
                            })
                            .collect();
                        for (id, contract, value) in &fresh {
                            l.entries.insert(
                                id.clone(),
                                Entry {
                                    contract,
                                    value: *value,
                                    state: State::InDoubt,
                                },
                            );
                        }
                        (fresh, false)
                    } else {
                        (batch, counted)
                    };
                    send(&c, node, &ingest, &batch, counted, &ledger);
                    std::thread::sleep(Duration::from_millis(60));
                }
            })
        })
        .collect();
    // A billing job: every 300 ms a few pages of the changes feed from a random node,
    // keeping its cursor across nodes and faults.
    let feed = {
        let (stop, urls, read) = (stop.clone(), urls.clone(), read.clone());
        std::thread::spawn(move || {
            let c = http();
            let mut rows = Rows::new();
            let mut cursor = "0".to_string();
            let mut n = 0usize;
            while !stop.load(Ordering::SeqCst) {
                n += 1;
                let url = &urls[(n * 7 + n / 3) % urls.len()];
                if let Some(next) = drain(&c, url, &read, &cursor, &mut rows, 3) {
                    cursor = next;
                }
                std::thread::sleep(Duration::from_millis(300));
            }
            (rows, cursor)
        })
    };
    let at = |s: u64| {
        let t = started + Duration::from_secs(s);
        if let Some(d) = t.checked_duration_since(Instant::now()) {
            std::thread::sleep(d);
        }
    };
    let pool_p = partition_of("pool");
    let tight_p = partition_of("tight");
    let c1_p = partition_of("c1");
    // 1. kill -9 the owner of the reseller pool's partition; restart it later.
    at(8);
    let victim = owner_of(&cluster, pool_p);
    eprintln!(
        "{:>5.1}s kill -9 {victim} (owner of partition {pool_p})",
        started.elapsed().as_secs_f64()
    );
    cluster.kill9(&victim);
    at(16);
    cluster.restart(&victim);
    // 2. kill -9 the JetStream leader of the pool partition's stream; restart it.
    at(24);
    if let Some(leader) = stream_leader(&cluster, pool_p) {
        eprintln!(
            "{:>5.1}s kill -9 NATS {leader} (leader of METERD_J_{pool_p})",
            started.elapsed().as_secs_f64()
        );
        cluster.kill9(&leader);
        at(32);
        cluster.restart(&leader);
    }
    // 3. SIGSTOP the owner of the tight contract's partition past its lease, then
    // SIGCONT: it must acknowledge nothing it decided after losing the lease.
    at(38);
    let paused = owner_of(&cluster, tight_p);
    eprintln!(
        "{:>5.1}s SIGSTOP {paused} (owner of partition {tight_p})",
        started.elapsed().as_secs_f64()
    );
    cluster.signal(&paused, "STOP");
    at(46);
    cluster.signal(&paused, "CONT");
    eprintln!("{:>5.1}s SIGCONT {paused}", started.elapsed().as_secs_f64());
    // 4. Machine loss: a meterd node and its NATS server together.
    at(54);
    let lost = owner_of(&cluster, c1_p);
    let lost_nats = format!("n{}", lost.trim_start_matches("meterd-"));
    eprintln!(
        "{:>5.1}s machine loss: kill -9 {lost} and NATS {lost_nats}",
        started.elapsed().as_secs_f64()
    );
    cluster.kill9(&lost);
    cluster.kill9(&lost_nats);
    at(64);
    cluster.restart(&lost_nats);
    cluster.restart(&lost);
    // 5. A node that leaves (SIGTERM) hands its partitions over at once: their leases
    // are released, not left to expire.
    at(70);
    let c2_p = partition_of("c2");
    let leaving = owner_of(&cluster, c2_p);
    eprintln!(
        "{:>5.1}s SIGTERM {leaving} (owner of partition {c2_p})",
        started.elapsed().as_secs_f64()
    );
    let left_at = Instant::now();
    cluster.signal(&leaving, "TERM");
    let handed = loop {
        if let Some((n, _)) = cluster.owners().get(&c2_p) {
            if *n != leaving {
                break left_at.elapsed();
            }
        }
        assert!(
            left_at.elapsed() < Duration::from_secs(30),
            "partition {c2_p} not handed over"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    eprintln!(
        "partition {c2_p} handed over {:.1} s after SIGTERM",
        handed.as_secs_f64()
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while Path::new(&format!("/proc/{}", cluster.proc(&leaving).pid)).exists()
        && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(100));
    }
    cluster.restart(&leaving);
    at(80);
    stop.store(true, Ordering::SeqCst);
    for w in workers {
        w.join().unwrap();
    }
    // Resolve every in-doubt id: re-send until each is counted or refused.
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let pending: Vec<(String, &'static str, u64)> = {
            let l = ledger.lock().unwrap();
            l.entries
                .iter()
                .filter(|(_, e)| e.state == State::InDoubt)
                .map(|(id, e)| (id.clone(), e.contract, e.value))
                .collect()
        };
        if pending.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{} ids still in doubt after 90 s",
            pending.len()
        );
        for chunk in pending.chunks(50) {
            let node = &urls[(chunk.len() + pending.len()) % urls.len()];
            send(&c, node, &ingest, chunk, false, &ledger);
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    let l = ledger.lock().unwrap();
    assert!(l.violations.is_empty(), "violations: {:#?}", l.violations);
    let mut counted: BTreeMap<&str, u64> = BTreeMap::new();
    let mut refused: Vec<(&str, u64)> = Vec::new();
    for e in l.entries.values() {
        match e.state {
            State::Counted => *counted.entry(e.contract).or_default() += e.value,
            State::Refused => refused.push((e.contract, e.value)),
            State::InDoubt => unreachable!(),
        }
    }
    eprintln!(
        "{} events: {} counted, {} refused; per contract: {counted:?}",
        l.entries.len(),
        l.entries
            .values()
            .filter(|e| e.state == State::Counted)
            .count(),
        refused.len()
    );
    // Adjustments, sent to a node that does not own the contract's partition (decided
    // by the owner, through its stream), and repeated through another node.
    let mut adjusted: BTreeMap<&str, i64> = BTreeMap::new();
    for (contract, value) in [("c3", 5i64), ("c4", -2)] {
        let owner = owner_of(&cluster, partition_of(contract));
        let others: Vec<String> = cluster
            .nodes()
            .iter()
            .filter(|n| n.name != owner)
            .map(|n| n.url.clone())
            .collect();
        let body = json!({"id": format!("adj-{contract}"), "lever": "calls", "time": chrono_now(),
            "value": value, "reason": "cluster test"});
        let post = |url: &str| {
            c.post(format!("{url}/v1/contracts/{contract}/adjustments"))
                .bearer_auth(&admin)
                .json(&body)
                .send()
                .unwrap()
        };
        let first = post(&others[0]);
        assert_eq!(first.status(), 201, "{contract}: {:?}", first.text());
        let again = post(&others[1]);
        assert_eq!(again.status(), 200, "{contract}: repeat {:?}", again.text());
        adjusted.insert(contract, value);
    }
    // Retractions are not available in cluster mode: refused whole.
    let r = c
        .delete(format!("{first}/v1/events/w0-1-0"))
        .bearer_auth(&admin)
        .send()
        .unwrap();
    assert_eq!(r.status(), 409);
    let want_usage = |contract: &str| -> i64 {
        counted.get(contract).copied().unwrap_or(0) as i64
            + adjusted.get(contract).copied().unwrap_or(0)
    };
    // Every node converges on exactly the ledger's counts (and the adjustments).
    let from = common::time_at(-2 * 3600 * 1000);
    for node in cluster.nodes() {
        let deadline = Instant::now() + Duration::from_secs(30);
        for (contract, _, _) in CONTRACTS {
            let want = want_usage(contract);
            loop {
                let got = c
                    .get(format!("{}/v1/contracts/{contract}/usage", node.url))
                    .query(&[("from", from.as_str()), ("lever", "calls")])
                    .bearer_auth(&read)
                    .send()
                    .ok()
                    .and_then(|r| r.json::<Value>().ok())
                    .and_then(|v| {
                        v["items"].as_array().map(|items| {
                            items
                                .iter()
                                .map(|i| i["value"].as_str().unwrap().parse::<i64>().unwrap())
                                .sum::<i64>()
                        })
                    });
                if got == Some(want) {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "{}: {contract} usage {got:?}, the ledger counted {want}",
                    node.name
                );
                std::thread::sleep(Duration::from_millis(250));
            }
        }
    }
    // The billing job converges: reading on from its cursor, from each node in turn,
    // gives every node's rows (a full read of its feed from the start), whose minute
    // rows add up to the ledger and the adjustments (once flushed: usage reads include
    // unflushed deltas, the feed shows flushed rows).
    let (mut rows, mut cursor) = feed.join().unwrap();
    eprintln!(
        "changes feed: {} rows read during the run, cursor {cursor}",
        rows.len()
    );
    let mut want: BTreeMap<&str, i64> = CONTRACTS.iter().map(|c| (c.0, want_usage(c.0))).collect();
    want.retain(|_, v| *v != 0);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        for node in cluster.nodes() {
            if let Some(next) = drain(&c, &node.url, &read, &cursor, &mut rows, 1000) {
                cursor = next;
            }
        }
        let mut differs = None;
        for node in cluster.nodes() {
            let mut fresh = Rows::new();
            drain(&c, &node.url, &read, "0", &mut fresh, 1000).expect("a full read");
            if fresh != rows {
                let diff: Vec<_> = fresh
                    .iter()
                    .filter(|(k, v)| rows.get(*k) != Some(*v))
                    .chain(rows.iter().filter(|(k, v)| fresh.get(*k) != Some(*v)))
                    .take(10)
                    .map(|(k, v)| format!("{k:?}={v}"))
                    .collect();
                differs = Some(format!(
                    "{}: the billing job's {} rows differ from the node's {}: {diff:?}",
                    node.name,
                    rows.len(),
                    fresh.len()
                ));
            }
        }
        let mut from_feed: BTreeMap<&str, i64> = BTreeMap::new();
        for ((contract, _, window, _), v) in &rows {
            if window == "minute" {
                let k = CONTRACTS.iter().find(|c| c.0 == contract).unwrap().0;
                *from_feed.entry(k).or_default() += v.parse::<i64>().unwrap();
            }
        }
        from_feed.retain(|_, v| *v != 0);
        if differs.is_none() && from_feed == want {
            break;
        }
        assert!(Instant::now() < deadline, "{differs:?}");
        assert!(
            Instant::now() < deadline,
            "the changes feed's minute rows {from_feed:?}, the ledger and the adjustments {want:?}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    // Balances come from the partition owner's quota book, whichever node is asked.
    for node in cluster.nodes() {
        for (contract, _, _) in CONTRACTS {
            let want = counted.get(contract).copied().unwrap_or(0);
            let b: Value = c
                .get(format!(
                    "{}/v1/contracts/{contract}/balance?lever=calls",
                    node.url
                ))
                .bearer_auth(&read)
                .send()
                .unwrap()
                .json()
                .unwrap();
            let usage: u64 = b["levers"][0]["usage"].as_str().unwrap().parse().unwrap();
            // A pool's usage includes its children's.
            let want = if *contract == "pool" {
                ["pool", "kid1", "kid2", "kid3"]
                    .iter()
                    .map(|k| counted.get(k).copied().unwrap_or(0))
                    .sum()
            } else {
                want
            };
            assert_eq!(usage, want, "{}: balance of {contract}: {b}", node.name);
        }
    }
    // No hard limit exceeded, and no refusal while the limit had room.
    let limit = |k: &str| CONTRACTS.iter().find(|c| c.0 == k).unwrap().2;
    // The pool's limit covers its own events and its children's.
    let pooled: u64 = ["pool", "kid1", "kid2", "kid3"]
        .iter()
        .map(|k| counted.get(k).copied().unwrap_or(0))
        .sum();
    assert!(
        pooled <= limit("pool"),
        "the pool and its children used {pooled}"
    );
    for (k, used) in &counted {
        assert!(*used <= limit(k), "{k} used {used} of {}", limit(k));
    }
    for (k, v) in &refused {
        let own = counted.get(k).copied().unwrap_or(0) + v > limit(k);
        let in_pool = (k.starts_with("kid") || *k == "pool") && pooled + v > limit("pool");
        assert!(
            own || in_pool,
            "{k}: an event of {v} refused while its limit had room"
        );
    }
    // Unavailability per partition (client-side: longest time between answers).
    let mut per_partition: BTreeMap<u32, Duration> = BTreeMap::new();
    for (k, gap) in &l.longest_gap {
        let p = partition_of(k);
        let e = per_partition.entry(p).or_default();
        *e = (*e).max(*gap);
    }
    for (p, gap) in &per_partition {
        eprintln!(
            "partition {p}: longest time without an answer {:.1} s",
            gap.as_secs_f64()
        );
    }
}
