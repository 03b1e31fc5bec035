//! The JetStream behaviours meterd's cluster mode is to rely on, pinned against the
//! server version the project ships (scripts/nats.sh: NATS 2.15.1, three servers, R=3 file
//! streams, `sync_interval: always`). If an upgrade changes one of them, this fails before
//! any meterd code does.
//!
//! - A conditional append (`Nats-Expected-Last-Sequence`) fences a writer whose view of
//!   the stream is stale: a new owner's epoch append makes every later append of the old
//!   owner fail, and the old owner learns it (WrongLastSequence) instead of being acked.
//! - A re-sent append with the same `Nats-Msg-Id` (an ambiguous timeout, retried) is not
//!   stored twice: the server answers `duplicate` with the original sequence.
//! - `kill -9` of the stream's Raft leader loses no acknowledged append: writers retry
//!   with the same ids until a new leader acks, and the stream then holds every
//!   acknowledged id exactly once.
//! - A lease in a KV bucket is won by exactly one of two racing nodes, renewed only by
//!   compare-and-set on the revision its holder got, and free again once the holder
//!   stops renewing (the bucket's max age is the lease TTL).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;
use std::time::{Duration, Instant};

use common::nats::{connect, until_led, Cluster};

use async_nats::jetstream::{self, context::PublishErrorKind, message::PublishMessage, stream};

/// The per-partition journal stream as cluster mode is to create it.
async fn journal_stream(js: &jetstream::Context, name: &str, subject: &str) -> stream::Stream {
    js.create_stream(stream::Config {
        name: name.to_string(),
        subjects: vec![subject.to_string()],
        num_replicas: 3,
        storage: stream::StorageType::File,
        duplicate_window: Duration::from_secs(300),
        ..Default::default()
    })
    .await
    .expect("create the stream")
}

/// Tries to create the lease `key` for `node`, the way a node must: a transport failure
/// (no responders during an election, a timeout) is retried, and an `AlreadyExists`
/// after such a failure is resolved by reading who holds the lease, since the failed
/// attempt may have been stored. Returns the revision when `node` holds the lease.
async fn acquire(
    kv: &async_nats::jetstream::kv::Store,
    key: &str,
    node: &str,
) -> Result<u64, String> {
    use async_nats::jetstream::kv::CreateErrorKind;
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut ambiguous = false;
    loop {
        match kv.create(key, node.to_string().into()).await {
            Ok(rev) => return Ok(rev),
            Err(e) if e.kind() == CreateErrorKind::AlreadyExists && !ambiguous => {
                return Err(e.to_string())
            }
            Err(e) => {
                if let Ok(Some(entry)) = kv.entry(key).await {
                    if entry.operation == async_nats::jetstream::kv::Operation::Put {
                        return if &entry.value[..] == node.as_bytes() {
                            Ok(entry.revision)
                        } else {
                            Err(format!("held by another node ({e})"))
                        };
                    }
                }
                assert!(Instant::now() < deadline, "lease {key}: {e}");
                ambiguous = true;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

fn append(id: &str, expected_last: u64, payload: &'static [u8]) -> PublishMessage {
    PublishMessage::build()
        .payload(payload.into())
        .message_id(id)
        .expected_last_sequence(expected_last)
}

#[test]
fn conditional_appends_fence_a_stale_writer_and_retries_are_not_stored_twice() {
    let cluster = Cluster::up(3);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let old = connect(&cluster).await;
        let new = connect(&cluster).await;
        let mut s = journal_stream(&old, "MJ_0", "mj.0").await;
        until_led(&old, "MJ_0").await;
        // The old owner appends two group commits, each fenced on the one before.
        let a1 = old
            .send_publish("mj.0", append("p0/e1/1", 0, b"g1"))
            .await
            .unwrap();
        assert_eq!(a1.await.unwrap().sequence, 1);
        let a2 = old
            .send_publish("mj.0", append("p0/e1/2", 1, b"g2"))
            .await
            .unwrap();
        assert_eq!(a2.await.unwrap().sequence, 2);
        // Its ack timed out, say, and it re-sends the same message: not stored again.
        let again = old
            .send_publish("mj.0", append("p0/e1/2", 1, b"g2"))
            .await
            .unwrap();
        let again = again.await.unwrap();
        assert!(again.duplicate, "a re-sent id is reported as a duplicate");
        assert_eq!(again.sequence, 2, "with the original sequence");
        // A new owner read the stream to its end (sequence 2) and appends its epoch.
        let epoch = new
            .send_publish("mj.0", append("p0/e2/epoch", 2, b"epoch 2"))
            .await
            .unwrap();
        assert_eq!(epoch.await.unwrap().sequence, 3);
        // The old owner, unaware, appends on its stale view: refused, never acked.
        let stale = old
            .send_publish("mj.0", append("p0/e1/3", 2, b"g3"))
            .await
            .unwrap();
        let err = stale.await.expect_err("a stale append must not be acked");
        assert_eq!(err.kind(), PublishErrorKind::WrongLastSequence, "{err}");
        // The stream holds exactly the three accepted appends.
        let info = s.info().await.unwrap();
        assert_eq!(info.state.messages, 3);
        assert_eq!(info.state.last_sequence, 3);
        let third = s.get_raw_message(3).await.unwrap();
        assert_eq!(&third.payload[..], b"epoch 2");
    });
}

#[test]
fn kill_9_of_the_stream_leader_loses_no_acknowledged_append() {
    let cluster = Cluster::up(3);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let js = connect(&cluster).await;
        let mut s = journal_stream(&js, "MJ_1", "mj.1").await;
        until_led(&js, "MJ_1").await;
        let leader = s
            .info()
            .await
            .unwrap()
            .cluster
            .as_ref()
            .and_then(|c| c.leader.clone())
            .expect("the stream has a leader");
        // One writer appends ids in order; each is retried with the same id until acked
        // (an ack timeout is ambiguous), and its ack's sequence recorded.
        let mut acked: BTreeMap<String, u64> = BTreeMap::new();
        let total = 400;
        let kill_at = 100;
        let started = Instant::now();
        for i in 0..total {
            if i == kill_at {
                let pid = cluster.pid_of(&leader);
                let killed = Command::new("kill")
                    .args(["-KILL", &pid.to_string()])
                    .status()
                    .unwrap();
                assert!(killed.success(), "kill -9 {leader}");
            }
            let id = format!("w/{i}");
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                let msg = PublishMessage::build()
                    .payload(format!("event {i}").into_bytes().into())
                    .message_id(&id);
                let ack = match js.send_publish("mj.1", msg).await {
                    Ok(f) => f.await,
                    Err(e) => Err(e),
                };
                match ack {
                    Ok(a) => {
                        acked.insert(id.clone(), a.sequence);
                        break;
                    }
                    Err(e) => {
                        assert!(
                            Instant::now() < deadline,
                            "append {i} not acked within 60 s of retries: {e}"
                        );
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
        }
        assert_eq!(acked.len(), total);
        // Every acknowledged id is in the stream exactly once, at its acked sequence.
        let info = s.info().await.unwrap();
        assert_eq!(
            info.state.messages, total as u64,
            "the stream holds each acknowledged append once"
        );
        let mut seen = BTreeSet::new();
        for seq in 1..=info.state.last_sequence {
            let m = s.get_raw_message(seq).await.unwrap();
            let id = m
                .headers
                .get("Nats-Msg-Id")
                .map(|v| v.as_str().to_string())
                .expect("every append carries its id");
            assert_eq!(acked.get(&id), Some(&seq), "{id} at {seq}");
            assert!(seen.insert(id), "an id stored twice");
        }
        eprintln!(
            "{total} appends with the leader {leader} killed at {kill_at}: {:.1} s",
            started.elapsed().as_secs_f64()
        );
    });
}

#[test]
fn a_lease_is_won_by_one_node_kept_by_revision_and_free_again_after_its_ttl() {
    use async_nats::jetstream::kv;
    let cluster = Cluster::up(3);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let a = connect(&cluster).await;
        let b = connect(&cluster).await;
        let leases = a
            .create_key_value(kv::Config {
                bucket: "leases".into(),
                history: 1,
                num_replicas: 3,
                storage: stream::StorageType::File,
                // The lease TTL. async-nats 0.52's `update` cannot carry a per-key TTL
                // (only `create_with_ttl` can), so a renewal would make a per-key TTL
                // lease permanent: the bucket's max age expires a lease instead, counted
                // from its last renewal.
                max_age: Duration::from_secs(3),
                ..Default::default()
            })
            .await
            .expect("create the lease bucket");
        until_led(&a, "KV_leases").await;
        let leases_b = b.get_key_value("leases").await.unwrap();
        // Two nodes race for partition 0: exactly one creates the lease.
        let (ra, rb) = tokio::join!(
            acquire(&leases, "p0", "node-a"),
            acquire(&leases_b, "p0", "node-b"),
        );
        // (The loser's error kind depends on where the race is lost: `AlreadyExists`, or
        // the server's wrong-last-sequence answer to the conditional create, which the
        // client reports as `Other`; `acquire` then reads who holds it. Only the
        // compare-and-set outcome counts.)
        let (winner, loser, rev) = match (ra, rb) {
            (Ok(rev), Err(_)) => (&leases, &leases_b, rev),
            (Err(_), Ok(rev)) => (&leases_b, &leases, rev),
            other => panic!("exactly one node must win the lease: {other:?}"),
        };
        // The holder renews by compare-and-set on its revision; the other node cannot
        // renew (or steal) with a revision it does not hold.
        let renewed = winner.update("p0", "renewed".into(), rev).await.unwrap();
        assert!(renewed > rev);
        let stale = loser
            .update("p0", "stolen".into(), rev)
            .await
            .expect_err("an update on a stale revision must fail");
        assert_eq!(
            stale.kind(),
            kv::UpdateErrorKind::WrongLastRevision,
            "{stale}"
        );
        // A holder that stops renewing loses the lease once the bucket's max age passed.
        let renewed = winner
            .update("p0", "renewed".into(), renewed)
            .await
            .unwrap();
        let _ = renewed;
        assert!(
            loser.create("p0", "early".into()).await.is_err(),
            "a freshly renewed lease is held"
        );
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            match loser.create("p0", "node-next".into()).await {
                Ok(_) => break,
                Err(e) => {
                    assert!(
                        Instant::now() < deadline,
                        "the lease never expired after its holder stopped renewing: {e}"
                    );
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
            }
        }
        let entry = winner.entry("p0").await.unwrap().expect("the new lease");
        assert_eq!(&entry.value[..], b"node-next");
    });
}
