//! The stream journal's write path, fencing and standby apply, against an in-memory log
//! that behaves like a JetStream stream (message-id dedupe checked before the expected
//! sequence) and can lose acks or answers on demand. tests/cluster_journal.rs runs the
//! same paths against real NATS servers.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::*;
use crate::store::cf;

#[derive(Debug, Default)]
struct Memory {
    /// (message id, payload), at sequence index + 1.
    msgs: Mutex<Vec<(String, Vec<u8>)>>,
    /// The next this many appends are stored but their acks are lost.
    lose_acks: AtomicUsize,
    /// The next this many appends get no answer and are not stored.
    unanswered: AtomicUsize,
}

#[derive(Debug, Clone, Default)]
struct MemoryLog(Arc<Memory>);

impl MemoryLog {
    fn messages(&self) -> Vec<(String, Vec<u8>)> {
        self.0.msgs.lock().unwrap().clone()
    }

    fn last(&self) -> u64 {
        self.0.msgs.lock().unwrap().len() as u64
    }

    fn take(counter: &AtomicUsize) -> bool {
        counter
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
    }
}

impl PartitionLog for MemoryLog {
    async fn append(
        &self,
        msg_id: &str,
        expected_last: u64,
        payload: Vec<u8>,
    ) -> Result<u64, AppendError> {
        if MemoryLog::take(&self.0.unanswered) {
            return Err(AppendError::Transient("no responders".into()));
        }
        let mut msgs = self.0.msgs.lock().unwrap();
        if let Some(i) = msgs.iter().position(|(id, _)| id == msg_id) {
            return Ok(i as u64 + 1);
        }
        if msgs.len() as u64 != expected_last {
            return Err(AppendError::WrongLastSequence);
        }
        msgs.push((msg_id.to_string(), payload));
        let seq = msgs.len() as u64;
        drop(msgs);
        if MemoryLog::take(&self.0.lose_acks) {
            return Err(AppendError::Transient("timed out".into()));
        }
        Ok(seq)
    }

    async fn msg_id_at(&self, seq: u64) -> Result<Option<String>, AppendError> {
        let msgs = self.0.msgs.lock().unwrap();
        Ok(seq
            .checked_sub(1)
            .and_then(|i| msgs.get(i as usize))
            .map(|(id, _)| id.clone()))
    }

    fn max_payload(&self) -> usize {
        8 << 20
    }
}

struct Node {
    _dir: tempfile::TempDir,
    store: Store,
}

fn node() -> Node {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), Duration::from_secs(3600)).unwrap();
    Node { _dir: dir, store }
}

fn term(epoch: u64, node: &str) -> Term {
    Term {
        partition: 3,
        epoch,
        node: node.into(),
    }
}

fn start(
    n: &Node,
    log: &MemoryLog,
    rt: &tokio::runtime::Runtime,
    t: Term,
) -> Result<(StreamJournal, JoinHandle<()>), StartError> {
    StreamJournal::start(
        n.store.clone(),
        log.clone(),
        rt.handle().clone(),
        t,
        Duration::from_millis(300),
    )
}

/// Commits a meta row `key` = `value` with a quota operand of `amount` on row `q`.
fn commit(j: &StreamJournal, key: &str, value: &str, amount: i128) -> Result<(), CommitError> {
    let mut b = j.batch(64);
    b.rows().put_meta(key.as_bytes(), value.as_bytes());
    b.quota(b"q".to_vec(), AggValue::Sum(amount));
    (j as &dyn Journal).commit_blocking(b)
}

fn meta(store: &Store, key: &str) -> Option<String> {
    store
        .meta_get(key.as_bytes())
        .unwrap()
        .map(|v| String::from_utf8(v).unwrap())
}

fn quota(store: &Store) -> Option<AggValue> {
    let (lo, hi) = quota_log_range(3);
    fold_quota_log_range(store, lo, hi).unwrap();
    store
        .get(cf::QUOTA, b"q")
        .unwrap()
        .map(|v| AggValue::decode(&v).unwrap())
}

/// Applies every message of `log` into `n` with a fresh applier.
fn follow(n: &Node, log: &MemoryLog) -> u64 {
    let mut a = Applier::open(n.store.clone(), 3).unwrap();
    for (i, (_, payload)) in log.messages().iter().enumerate() {
        a.apply(i as u64 + 1, payload).unwrap();
    }
    a.finish()
}

#[test]
fn an_owner_appends_before_it_answers_and_a_standby_ends_with_the_same_rows() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let log = MemoryLog::default();
    let owner = node();
    let (j, thread) = start(&owner, &log, &rt, term(1, "a")).unwrap();
    assert_eq!(log.last(), 1, "the epoch record comes first");
    for i in 0..20 {
        commit(&j, &format!("k{i}"), &format!("v{i}"), 2).unwrap();
        // Answered only once appended, and the local view records the sequence.
        assert_eq!(log.last(), i + 2);
        assert_eq!(applied_seq(&owner.store, 3).unwrap(), i + 2);
    }
    assert!(j.stepped_down().is_none());
    drop(j);
    thread.join().unwrap();
    let standby = node();
    assert_eq!(follow(&standby, &log), 21);
    for n in [&owner, &standby] {
        for i in 0..20 {
            assert_eq!(
                meta(&n.store, &format!("k{i}")).as_deref(),
                Some(&*format!("v{i}"))
            );
        }
        assert_eq!(quota(&n.store), Some(AggValue::Sum(40)));
        assert_eq!(applied_seq(&n.store, 3).unwrap(), 21);
    }
    // Applying again (a redelivery) changes nothing.
    assert_eq!(follow(&standby, &log), 21);
    assert_eq!(quota(&standby.store), Some(AggValue::Sum(40)));
}

#[test]
fn a_lost_ack_is_resolved_by_resending_the_same_id_and_counted_once() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let log = MemoryLog::default();
    let owner = node();
    let (j, _thread) = start(&owner, &log, &rt, term(1, "a")).unwrap();
    log.0.lose_acks.store(1, Ordering::SeqCst);
    log.0.unanswered.store(2, Ordering::SeqCst);
    commit(&j, "k", "v", 5).unwrap();
    assert_eq!(log.last(), 2, "stored once");
    commit(&j, "k2", "v2", 1).unwrap();
    assert_eq!(log.last(), 3);
    let standby = node();
    follow(&standby, &log);
    assert_eq!(quota(&standby.store), Some(AggValue::Sum(6)));
    assert_eq!(quota(&owner.store), Some(AggValue::Sum(6)));
}

#[test]
fn a_new_owners_epoch_fences_the_old_one_which_acknowledges_nothing_more() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let log = MemoryLog::default();
    let (a, b) = (node(), node());
    let (ja, _ta) = start(&a, &log, &rt, term(1, "a")).unwrap();
    commit(&ja, "a1", "x", 1).unwrap();
    // Node b applied the stream to its end and takes over with a higher epoch.
    follow(&b, &log);
    let (jb, _tb) = start(&b, &log, &rt, term(2, "b")).unwrap();
    let at_takeover = log.last();
    // The old owner, unaware, commits: refused, and so is everything after.
    assert!(matches!(
        commit(&ja, "a2", "y", 100),
        Err(CommitError::Fenced(3))
    ));
    assert!(matches!(ja.stepped_down(), Some(CommitError::Fenced(3))));
    assert!(matches!(
        commit(&ja, "a3", "z", 100),
        Err(CommitError::Fenced(3))
    ));
    assert_eq!(
        log.last(),
        at_takeover,
        "nothing of the old owner after the epoch"
    );
    commit(&jb, "b1", "w", 2).unwrap();
    let standby = node();
    follow(&standby, &log);
    assert_eq!(quota(&standby.store), Some(AggValue::Sum(3)));
    assert_eq!(meta(&standby.store, "a2"), None);
    // A node whose view is behind cannot start: it must apply the tail first.
    let behind = node();
    assert!(matches!(
        start(&behind, &log, &rt, term(3, "c")),
        Err(StartError::Behind(3))
    ));
}

#[test]
fn an_append_the_stream_never_answers_is_in_doubt_and_the_writer_steps_down() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let log = MemoryLog::default();
    let owner = node();
    let (j, _thread) = start(&owner, &log, &rt, term(1, "a")).unwrap();
    log.0.unanswered.store(usize::MAX, Ordering::SeqCst);
    assert!(matches!(
        commit(&j, "k", "v", 1),
        Err(CommitError::InDoubt(3, _))
    ));
    log.0.unanswered.store(0, Ordering::SeqCst);
    // Even with the stream back, this term is over.
    assert!(matches!(
        commit(&j, "k2", "v", 1),
        Err(CommitError::InDoubt(3, _))
    ));
    assert_eq!(log.last(), 1);
}

#[test]
fn a_standby_refuses_a_gap_and_a_damaged_message_without_applying_them() {
    let standby = node();
    let mut a = Applier::open(standby.store.clone(), 3).unwrap();
    let m = message::encode_group(
        WriteBatch::default().data(),
        &[],
        0,
        &[(b"q".to_vec(), AggValue::Sum(1))],
    );
    assert!(matches!(
        a.apply(2, &m),
        Err(ApplyError::Gap {
            expected: 1,
            got: 2,
            ..
        })
    ));
    let mut bad = m.clone();
    *bad.last_mut().unwrap() ^= 1;
    assert!(matches!(a.apply(1, &bad), Err(ApplyError::Decode(3, 1, _))));
    assert_eq!(a.applied(), 0);
    a.apply(1, &m).unwrap();
    assert_eq!(a.finish(), 1);
    assert_eq!(quota(&standby.store), Some(AggValue::Sum(1)));
}
