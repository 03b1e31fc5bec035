//! Cluster mode: a fourth node that joins takes over exactly its share of the partitions
//! (the ones rendezvous hashing prefers it for), and the counts stay exact on every node
//! across the move.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use common::cluster::LocalCluster;
use serde_json::{json, Value};

const PARTITIONS: u32 = 12;

fn client() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(25))
        .build()
        .unwrap()
}

/// Sends events `from..to` for contracts k0..k11 to `url` until each is counted (an
/// `unavailable` event is re-sent with the same id).
fn send(c: &reqwest::blocking::Client, url: &str, key: &str, from: u32, to: u32) {
    let mut pending: Vec<u32> = (from..to).collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !pending.is_empty() {
        assert!(
            Instant::now() < deadline,
            "events {pending:?} never counted"
        );
        let body: Vec<Value> = pending
            .iter()
            .map(|i| json!({"id": format!("e{i}"), "contract": format!("k{}", i % 12), "lever": "calls", "value": 1}))
            .collect();
        let Ok(r) = c
            .post(format!("{url}/v1/events"))
            .bearer_auth(key)
            .json(&body)
            .send()
        else {
            std::thread::sleep(Duration::from_millis(200));
            continue;
        };
        let Ok(v) = r.json::<Value>() else { continue };
        let retry: BTreeSet<usize> = v["errors"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|e| {
                assert_eq!(e["code"], "unavailable", "{e}");
                e["index"].as_u64().unwrap() as usize
            })
            .collect();
        pending = pending
            .iter()
            .enumerate()
            .filter(|(i, _)| retry.contains(i))
            .map(|(_, e)| *e)
            .collect();
        if !pending.is_empty() {
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

#[test]
fn a_joining_node_takes_over_its_share_and_counts_stay_exact() {
    let mut cluster = LocalCluster::up(PARTITIONS, "3s", "1s");
    let (admin, ingest, read) = cluster.keys.clone();
    let c = client();
    let first = cluster.nodes()[0].url.clone();
    let put = |url: String, body: Value| {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let r = c.put(&url).bearer_auth(&admin).json(&body).send();
            if r.is_ok_and(|r| r.status().is_success()) {
                break;
            }
            assert!(Instant::now() < deadline, "{url}");
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    put(
        format!("{first}/v1/levers/calls"),
        json!({"aggregation": "sum"}),
    );
    for k in 0..12 {
        put(
            format!("{first}/v1/contracts/k{k}"),
            json!({"customer": "c"}),
        );
    }
    send(&c, &first, &ingest, 0, 600);
    // The partitions rendezvous hashing prefers meterd-4 for, among four members.
    let members: BTreeSet<String> = (1..=4).map(|i| format!("meterd-{i}")).collect();
    let share: BTreeSet<u32> = (0..PARTITIONS)
        .filter(|p| meterd::cluster::lease::preferred(*p, &members) == Some("meterd-4"))
        .collect();
    assert!(
        !share.is_empty(),
        "meterd-4 is preferred for no partition of {PARTITIONS}"
    );
    let joined = Instant::now();
    cluster.add_node("meterd-4");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let owners = cluster.owners();
        let mine: BTreeSet<u32> = owners
            .iter()
            .filter(|(_, (n, _))| n == "meterd-4")
            .map(|(p, _)| *p)
            .collect();
        if mine == share && owners.len() == PARTITIONS as usize {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "meterd-4 owns {mine:?}, its share is {share:?}; owners {owners:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    eprintln!(
        "meterd-4 owns its share {share:?} {:.1} s after it started",
        joined.elapsed().as_secs_f64()
    );
    // Through the new node, and after the move, counts stay exact on every node.
    let newest = cluster.proc("meterd-4").url.clone();
    send(&c, &newest, &ingest, 0, 1200);
    let from = common::time_at(-3600 * 1000);
    let want: BTreeMap<String, u64> = (0..12).map(|k| (format!("k{k}"), 100)).collect();
    for node in cluster.nodes() {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let got: BTreeMap<String, u64> = (0..12)
                .map(|k| {
                    let v: Value = c
                        .get(format!("{}/v1/contracts/k{k}/usage", node.url))
                        .query(&[("from", from.as_str())])
                        .bearer_auth(&read)
                        .send()
                        .unwrap()
                        .json()
                        .unwrap();
                    let n = v["items"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|i| i["value"].as_str().unwrap().parse::<u64>().unwrap())
                        .sum();
                    (format!("k{k}"), n)
                })
                .collect();
            if got == want {
                break;
            }
            assert!(Instant::now() < deadline, "{}: {got:?}", node.name);
            std::thread::sleep(Duration::from_millis(250));
        }
    }
}
