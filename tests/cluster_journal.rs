//! Cluster mode's journal (`meterd::journal::stream`) against three real NATS servers
//! (scripts/nats.sh): what an owner acknowledges survives `kill -9` of the stream's
//! leader and reaches a standby exactly once, and a new owner's epoch fences the old one.

mod common;

use std::collections::BTreeSet;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use meterd::journal::stream::nats::{self, NatsLog};
use meterd::journal::stream::{applied_seq, Applier, StreamJournal, Term};
use meterd::journal::{CommitError, Journal};
use meterd::store::agg::AggValue;
use meterd::store::Store;

use common::nats::{connect, until_led, Cluster};

struct Node {
    _dir: tempfile::TempDir,
    store: Store,
}

fn node() -> Node {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), Duration::from_secs(3600)).unwrap();
    Node { _dir: dir, store }
}

fn start(n: &Node, log: NatsLog, rt: &tokio::runtime::Runtime, epoch: u64) -> StreamJournal {
    let (journal, _thread) = StreamJournal::start(
        n.store.clone(),
        log,
        rt.handle().clone(),
        Term {
            partition: 0,
            epoch,
            node: format!("node-{epoch}"),
        },
        Duration::from_secs(30),
    )
    .expect("start owning partition 0");
    journal
}

fn commit(j: &StreamJournal, key: &str) -> Result<(), CommitError> {
    let mut b = j.batch(64);
    b.rows().put_meta(key.as_bytes(), b"acked");
    b.quota(b"q".to_vec(), AggValue::Sum(1));
    (j as &dyn Journal).commit_blocking(b)
}

/// Applies partition 0's stream into `n` until it holds sequence `upto`.
fn follow(rt: &tokio::runtime::Runtime, log: &NatsLog, n: &Node, upto: u64) -> u64 {
    let mut applier = Applier::open(n.store.clone(), 0).unwrap();
    rt.block_on(async {
        let deadline = Instant::now() + Duration::from_secs(60);
        // Creating the consumer can time out while the stream settles after its leader
        // was killed: retried, as a node's standby does.
        let mut tail = loop {
            match log.tail(applier.applied() + 1).await {
                Ok(t) => break t,
                Err(e) => {
                    assert!(Instant::now() < deadline, "cannot follow the stream: {e}");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        };
        while applier.applied() < upto {
            let next = tokio::time::timeout(Duration::from_secs(5), tail.next()).await;
            assert!(Instant::now() < deadline, "the standby did not catch up");
            if let Ok(Some(Ok((seq, _pending, _published, payload)))) = next {
                applier.apply(seq, &payload).unwrap();
            }
        }
    });
    applier.finish()
}

fn quota(store: &Store) -> i128 {
    meterd::journal::fold_quota_log(store).unwrap();
    match store.get("quota", b"q").unwrap() {
        Some(v) => match AggValue::decode(&v).unwrap() {
            AggValue::Sum(n) => n,
            other => panic!("{other:?}"),
        },
        None => 0,
    }
}

#[test]
fn what_an_owner_acknowledged_survives_a_leader_kill_and_reaches_a_standby_once() {
    let cluster = Cluster::up(3);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (js, log) = rt.block_on(async {
        let js = connect(&cluster).await;
        nats::check_server(&js.client())
            .await
            .expect("the pinned server passes the checks");
        let log = NatsLog::open(&js, 0, 3).await.unwrap();
        until_led(&js, &nats::stream_name(0)).await;
        (js, log)
    });
    let owner = node();
    let journal = Arc::new(start(&owner, log.clone(), &rt, 1));
    // Four writers commit 100 batches each (so groups form); the stream's leader is
    // killed once 120 are acknowledged.
    let acked = Arc::new(Mutex::new(BTreeSet::new()));
    let leader = rt.block_on(async {
        let mut s = js.get_stream(nats::stream_name(0)).await.unwrap();
        s.info()
            .await
            .unwrap()
            .cluster
            .clone()
            .unwrap()
            .leader
            .unwrap()
    });
    let started = Instant::now();
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let (j, acked) = (journal.clone(), acked.clone());
            std::thread::spawn(move || {
                for i in 0..100 {
                    let key = format!("w{w}/{i}");
                    commit(&j, &key).unwrap_or_else(|e| panic!("{key}: {e}"));
                    acked.lock().unwrap().insert(key);
                }
            })
        })
        .collect();
    while acked.lock().unwrap().len() < 120 {
        std::thread::sleep(Duration::from_millis(5));
    }
    let pid = cluster.pid_of(&leader);
    assert!(Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()
        .unwrap()
        .success());
    for w in writers {
        w.join().unwrap();
    }
    eprintln!(
        "400 commits, stream leader {leader} killed after 120: {:.1} s, {} messages",
        started.elapsed().as_secs_f64(),
        journal.applied()
    );
    assert!(journal.stepped_down().is_none());
    let acked = acked.lock().unwrap().clone();
    assert_eq!(acked.len(), 400);
    let last = journal.applied();
    assert_eq!(applied_seq(&owner.store, 0).unwrap(), last);
    // A standby that follows the stream holds every acknowledged commit, once.
    let standby = node();
    assert_eq!(follow(&rt, &log, &standby, last), last);
    for n in [&owner, &standby] {
        for key in &acked {
            assert_eq!(
                n.store.meta_get(key.as_bytes()).unwrap().as_deref(),
                Some(&b"acked"[..]),
                "{key}"
            );
        }
        assert_eq!(quota(&n.store), 400, "each commit's quota counted once");
    }
}

#[test]
fn a_new_owners_epoch_fences_the_old_owner_on_the_real_stream() {
    let cluster = Cluster::up(3);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let log = rt.block_on(async {
        let js = connect(&cluster).await;
        let log = NatsLog::open(&js, 0, 3).await.unwrap();
        until_led(&js, &nats::stream_name(0)).await;
        log
    });
    let (a, b) = (node(), node());
    let ja = start(&a, log.clone(), &rt, 1);
    for i in 0..10 {
        commit(&ja, &format!("a{i}")).unwrap();
    }
    // Node b applies the stream to its end, then takes over.
    follow(&rt, &log, &b, ja.applied());
    let jb = start(&b, log.clone(), &rt, 2);
    let err = commit(&ja, "a-late").expect_err("the old owner is fenced");
    assert!(matches!(err, CommitError::Fenced(0)), "{err}");
    assert!(matches!(
        commit(&ja, "a-later"),
        Err(CommitError::Fenced(0))
    ));
    commit(&jb, "b0").unwrap();
    let c = node();
    follow(&rt, &log, &c, jb.applied());
    assert_eq!(quota(&c.store), 11);
    assert!(c.store.meta_get(b"a-late").unwrap().is_none());
    assert!(c.store.meta_get(b"b0").unwrap().is_some());
}

#[test]
fn an_unsafe_existing_stream_is_refused_with_what_to_change() {
    let cluster = Cluster::up(3);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let js = connect(&cluster).await;
        js.create_stream(async_nats::jetstream::stream::Config {
            name: nats::stream_name(5),
            subjects: vec![nats::subject(5)],
            num_replicas: 1,
            storage: async_nats::jetstream::stream::StorageType::File,
            duplicate_window: nats::DUPLICATE_WINDOW,
            ..Default::default()
        })
        .await
        .unwrap();
        let err = NatsLog::open(&js, 5, 3).await.expect_err("R=1 is unsafe");
        let text = err.to_string();
        assert!(
            text.contains("METERD_J_5") && text.contains("1 replica"),
            "{text}"
        );
    });
}
