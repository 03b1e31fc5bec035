//! Cluster mode's journal: group commit into a partition's replicated stream
//! (a NATS JetStream stream of three replicas, [`nats`]), with this node's RocksDB as a
//! view of it.
//!
//! # The owner's write path ([`StreamJournal`])
//!
//! One writer thread per owned partition drains the queued commits like the WAL journal
//! does, and cuts them into merged writes of up to 1 MiB. Each merged write becomes one
//! stream message ([`message`]: the write batch's bytes and the combined quota
//! operands), appended with
//!
//! - a message id `p.epoch.n`, unique to this owner's term, so a retried append is
//!   stored at most once (the stream answers a re-sent id with the original sequence);
//! - the condition that the stream's last sequence is the last one this node applied,
//!   so an append of a node that is no longer the owner is refused.
//!
//! Only after the stream acknowledged the append (a quorum of replicas has it fsynced)
//! does the writer write the same rows into the local RocksDB, together with the
//! message's sequence number ([`applied_seq`]), and answer the commits. The local write
//! is not fsynced: the stream is the durable copy, and a node that lost its last writes
//! applies them again from the stream.
//!
//! # Fencing
//!
//! A new owner first applies the stream to its end, then appends an epoch record
//! conditioned on the last sequence it applied ([`StreamJournal::start`]). Once that
//! record is in, every append of the previous owner fails its condition. The writer
//! then resolves what happened: if the message after its expected sequence carries its
//! own id, an earlier attempt of this very append was stored (the ack was lost) and the
//! commit succeeded; otherwise the writer is fenced. A fenced writer answers
//! [`CommitError::Fenced`] to that group and every later commit, and acknowledges
//! nothing more.
//!
//! An append that gets no answer (no stream leader during an election, a timeout) is
//! re-sent with the same id and condition until it is confirmed or refused, for at most
//! `retry_for`. If it is still unresolved then, the commits get
//! [`CommitError::InDoubt`] and the writer steps down as if fenced: its in-memory state
//! may disagree with the stream, so the node must give the partition up and rebuild
//! its view from the stream before it owns it again.
//!
//! # Standbys ([`Applier`])
//!
//! A node that does not own a partition applies the partition's messages in order into
//! its own RocksDB, with the same rows and the same [`applied_seq`] in one write. Its
//! RocksDB then holds what the owner's holds (dedupe records included), so a takeover
//! applies only the stream's tail.
//!
//! Quota operands are kept apart per node: each node writes them into its own quota log
//! records, numbered within the partition's range ([`quota_log_range`]), and folds them
//! into `quota` about once a second, as in single-node mode.

mod apply;
pub mod message;
pub mod nats;
mod partitions;
mod registry;

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use rocksdb::WriteBatch;
use tokio::runtime::Handle;
use tokio::sync::oneshot;

use super::group::{combined_quota, segment_end, Commit, MAX_GROUP};
use super::quota_log::{encode_log_record, fold_quota_log_range, QuotaLog};
use super::{Batch, CommitError, Journal, Ticket};
use crate::hash::FastHashMap;
use crate::store::agg::AggValue;
use crate::store::writes::Writes;
use crate::store::{concat_batches, Store, StoreError};
use crate::telemetry::names;

pub use apply::{Applied, Applier, ApplyError};
pub use partitions::Partitions;
pub use registry::{RegistryJournal, REGISTRY};

/// Meta key prefix of the next unused events sequence number of a partition, as the
/// last applied message says (u32 big-endian partition; u64 big-endian value).
const NEXT_SEQ_PREFIX: &[u8] = b"stream_next_seq/";

/// Meta key prefix of a partition's applied stream sequence (`applied/` + partition,
/// u32 big-endian); the value is the sequence, u64 big-endian.
const APPLIED_PREFIX: &[u8] = b"stream_applied/";

use crate::config::MAX_PARTITIONS;

/// How an append can fail.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AppendError {
    /// The stream's last sequence is not the one the append was conditioned on.
    #[error("the stream's last sequence is not the expected one")]
    WrongLastSequence,
    /// No answer, no leader, a broken connection: the append may or may not be stored.
    #[error("no answer from the stream: {0}")]
    Transient(String),
    /// Refused for good (too large, no such stream): nothing was stored.
    #[error("the stream refused the append: {0}")]
    Refused(String),
}

/// A partition's replicated log, as the writer uses it ([`nats::NatsLog`] in
/// production).
pub trait PartitionLog: Send + Sync + 'static {
    /// Appends `payload` under `msg_id` if the log's last sequence is `expected_last`;
    /// returns the sequence it was stored at (the original one for a re-sent id).
    fn append(
        &self,
        msg_id: &str,
        expected_last: u64,
        payload: Vec<u8>,
    ) -> impl Future<Output = Result<u64, AppendError>> + Send;

    /// The message id of the message stored at `seq` (`None` when there is none).
    fn msg_id_at(
        &self,
        seq: u64,
    ) -> impl Future<Output = Result<Option<String>, AppendError>> + Send;

    /// The largest payload an append may carry.
    fn max_payload(&self) -> usize;
}

/// The quota log record numbers of partition `p`'s writer and applier on a node:
/// `lo..hi`, disjoint from single-node mode's (which start at 0) and from every other
/// partition's.
pub fn quota_log_range(p: u32) -> (u64, u64) {
    let lo = (u64::from(p) + 1) << 40;
    (lo, lo + (1 << 40))
}

/// The events sequence numbers of partition `p`: `lo..hi`, disjoint from every other
/// partition's (and from single-node mode's, which start at 1), so a node applying
/// several partitions keeps their journal rows apart. 2^50 numbers each; the ordering
/// of an event within its partition uses the low 44 bits (see
/// [`crate::store::records::EventRecord::ordinal`]).
pub fn events_seq_range(p: u32) -> (u64, u64) {
    let lo = (u64::from(p) + 1) << 50;
    (lo, lo + (1 << 50))
}

/// The revision of partition `p`'s stream message `stream_seq`: the rows its events
/// change are stamped with it ([`crate::revision`]). Revisions of `p` are in the range
/// of [`events_seq_range`]`(p)`.
pub fn partition_rev(p: u32, stream_seq: u64) -> u64 {
    events_seq_range(p).0 | (stream_seq & ((1 << 50) - 1))
}

/// The meta key of partition `p`'s applied stream sequence.
pub fn applied_key(p: u32) -> Vec<u8> {
    let mut k = APPLIED_PREFIX.to_vec();
    k.extend_from_slice(&p.to_be_bytes());
    k
}

/// The last sequence of partition `p`'s stream that this node's store holds (0 when
/// none).
pub fn applied_seq(store: &Store, p: u32) -> Result<u64, StoreError> {
    match store.meta_get(&applied_key(p))? {
        None => Ok(0),
        Some(v) => <[u8; 8]>::try_from(&v[..])
            .map(u64::from_be_bytes)
            .map_err(|_| StoreError::Corrupt("meta")),
    }
}

/// Adds to `rows` the record that the store holds partition `p`'s stream up to `seq`.
fn put_applied(rows: &mut Writes<'_>, p: u32, seq: u64) {
    rows.put_meta(&applied_key(p), &seq.to_be_bytes());
}

fn next_seq_key(p: u32) -> Vec<u8> {
    let mut k = NEXT_SEQ_PREFIX.to_vec();
    k.extend_from_slice(&p.to_be_bytes());
    k
}

/// The events sequence number a new owner of partition `p` starts from: after every
/// number an earlier owner used, as far as this node's store has applied the stream
/// (the start of the partition's range when nothing was written yet).
pub fn next_events_seq(store: &Store, p: u32) -> Result<u64, StoreError> {
    let lo = events_seq_range(p).0;
    match store.meta_get(&next_seq_key(p))? {
        None => Ok(lo),
        Some(v) => <[u8; 8]>::try_from(&v[..])
            .map(|b| u64::from_be_bytes(b).max(lo))
            .map_err(|_| StoreError::Corrupt("meta")),
    }
}

fn put_next_seq(rows: &mut Writes<'_>, p: u32, next: u64) {
    rows.put_meta(&next_seq_key(p), &next.to_be_bytes());
}

/// Who owns a partition, for one term.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Term {
    /// The partition.
    pub partition: u32,
    /// The term's epoch: strictly larger than every earlier owner's (the lease
    /// revision).
    pub epoch: u64,
    /// This node's name (written into the epoch record).
    pub node: String,
}

/// Why a writer could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The stream holds messages this node has not applied (or another node appended
    /// its epoch first): apply the tail and try again, if the lease is still held.
    #[error("partition {0}: the stream has moved past what this node applied")]
    Behind(u32),
    /// The epoch record could not be appended.
    #[error(transparent)]
    Commit(#[from] CommitError),
    /// The local store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What the writer and the node share: whether the writer still owns its partition.
#[derive(Debug)]
struct Shared {
    partition: u32,
    applied: AtomicU64,
    /// The next unused events sequence number.
    next_seq: AtomicU64,
    stepped_down: AtomicBool,
    reason: Mutex<Option<CommitError>>,
}

impl Shared {
    fn step_down(&self, why: CommitError) {
        let mut r = crate::sync::lock(&self.reason);
        if r.is_none() {
            tracing::warn!(partition = self.partition, reason = %why, "journal writer steps down");
            *r = Some(why);
        }
        self.stepped_down.store(true, Ordering::SeqCst);
    }

    fn reason(&self) -> CommitError {
        crate::sync::lock(&self.reason)
            .clone()
            .unwrap_or(CommitError::Fenced(self.partition))
    }
}

/// Group commit into a partition's replicated stream (see the module note).
#[derive(Debug)]
pub struct StreamJournal {
    store: Store,
    tx: Sender<Commit>,
    shared: Arc<Shared>,
}

/// Appends `payload` under `msg_id` on `expected_last` and resolves the outcome: the
/// sequence it is stored at, [`CommitError::Fenced`] when another append took that
/// place, [`CommitError::InDoubt`] when neither was known within `retry_for`.
async fn append_resolved<L: PartitionLog>(
    log: &L,
    p: u32,
    msg_id: &str,
    expected_last: u64,
    payload: Vec<u8>,
    retry_for: Duration,
) -> Result<u64, CommitError> {
    let deadline = Instant::now() + retry_for;
    let mut pause = Duration::from_millis(20);
    let mut attempts = 0u32;
    loop {
        attempts += 1;
        let last_error = match log.append(msg_id, expected_last, payload.clone()).await {
            Ok(seq) if seq == expected_last + 1 => return Ok(seq),
            Ok(seq) => {
                // Stored, but not where the condition put it: only possible if the
                // stream is not the one this node applied. Nothing more is safe.
                return Err(CommitError::InDoubt(
                    p,
                    format!("stored at {seq}, expected {}", expected_last + 1),
                ));
            }
            Err(AppendError::WrongLastSequence) => match log.msg_id_at(expected_last + 1).await {
                // An earlier attempt of this append was stored; its ack was lost.
                Ok(Some(id)) if id == msg_id => return Ok(expected_last + 1),
                Ok(_) => return Err(CommitError::Fenced(p)),
                Err(e) => e.to_string(),
            },
            Err(AppendError::Refused(e)) if attempts == 1 => {
                return Err(CommitError::Rejected(p, e));
            }
            Err(e) => e.to_string(),
        };
        metrics::counter!(names::CLUSTER_APPEND_RETRIES_TOTAL).increment(1);
        tracing::debug!(partition = p, attempts, error = %last_error, "append not answered; re-sending");
        if Instant::now() + pause > deadline {
            return Err(CommitError::InDoubt(p, last_error));
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(500));
    }
}

impl StreamJournal {
    /// Starts owning `term.partition`: appends the epoch record on the last sequence
    /// this node applied (so the store must hold the whole stream: apply it with an
    /// [`Applier`] first, and drop the applier), folds the partition's quota log, and
    /// starts the writer thread. Events sequence numbers continue after the last one
    /// the stream recorded ([`next_events_seq`]). Appends are retried for up to
    /// `retry_for`.
    pub fn start<L: PartitionLog>(
        store: Store,
        log: L,
        rt: Handle,
        term: Term,
        retry_for: Duration,
    ) -> Result<(StreamJournal, JoinHandle<()>), StartError> {
        let p = term.partition;
        assert!(p < MAX_PARTITIONS, "partition {p} out of range");
        let applied = applied_seq(&store, p)?;
        let first_seq = next_events_seq(&store, p)?;
        let (lo, hi) = quota_log_range(p);
        let qlog = QuotaLog::new(fold_quota_log_range(&store, lo, hi)?);
        let id = format!("{p}.{}.epoch", term.epoch);
        let payload = message::encode_epoch(term.epoch, &term.node);
        let seq = match rt.block_on(append_resolved(&log, p, &id, applied, payload, retry_for)) {
            Ok(seq) => seq,
            Err(CommitError::Fenced(_)) => return Err(StartError::Behind(p)),
            Err(e) => return Err(e.into()),
        };
        let mut rows = store.writes(64);
        put_applied(&mut rows, p, seq);
        store.apply(rows, false)?;
        tracing::info!(
            partition = p,
            epoch = term.epoch,
            seq,
            "partition owned: epoch record appended"
        );
        let shared = Arc::new(Shared {
            partition: p,
            applied: AtomicU64::new(seq),
            next_seq: AtomicU64::new(first_seq),
            stepped_down: AtomicBool::new(false),
            reason: Mutex::new(None),
        });
        let (tx, rx) = crossbeam_channel::bounded::<Commit>(65_536);
        let writer = Writer {
            store: store.clone(),
            log,
            rt,
            term,
            n: 0,
            applied: seq,
            qlog,
            shared: shared.clone(),
            retry_for,
        };
        let handle = std::thread::Builder::new()
            .name(format!("meterd-journal-{p}"))
            .spawn(move || writer.run(rx))
            .expect("spawn journal writer");
        Ok((StreamJournal { store, tx, shared }, handle))
    }

    /// The last stream sequence this writer appended and applied.
    pub fn applied(&self) -> u64 {
        self.shared.applied.load(Ordering::SeqCst)
    }

    /// `None` while this writer owns its partition; else why it stepped down (fenced,
    /// an unresolved append, a failed local write).
    pub fn stepped_down(&self) -> Option<CommitError> {
        self.shared
            .stepped_down
            .load(Ordering::SeqCst)
            .then(|| self.shared.reason())
    }
}

impl Journal for StreamJournal {
    fn batch(&self, bytes: usize) -> Batch<'_> {
        Batch::new(self.store.writes(bytes))
    }

    fn submit(&self, batch: Batch<'_>) -> Ticket {
        if self.shared.stepped_down.load(Ordering::SeqCst) {
            return Ticket::failed(self.shared.reason());
        }
        // Numbers reserved while this node did not own the partition yet are not in its
        // range: such a batch is refused whole.
        let (lo, hi) = events_seq_range(self.shared.partition);
        if batch.events.iter().any(|s| !(lo..hi).contains(s)) {
            return Ticket::failed(CommitError::NotOwner(self.shared.partition));
        }
        let (done, wait) = oneshot::channel();
        match self.tx.send(Commit::new(batch, done)) {
            Ok(()) => Ticket::pending(wait),
            Err(_) => Ticket::failed(CommitError::Stopped),
        }
    }

    fn reserve(&self, n: u64) -> u64 {
        self.shared.next_seq.fetch_add(n, Ordering::SeqCst)
    }

    fn set_next(&self, seq: u64) {
        self.shared.next_seq.fetch_max(seq, Ordering::SeqCst);
    }

    fn local(&self) -> &Store {
        &self.store
    }

    fn fsyncs(&self) -> u64 {
        0
    }
}

/// The writer thread of one owned partition.
struct Writer<L> {
    store: Store,
    log: L,
    rt: Handle,
    term: Term,
    /// Messages appended in this term (the last part of their ids).
    n: u64,
    /// The last sequence appended and applied.
    applied: u64,
    qlog: QuotaLog,
    shared: Arc<Shared>,
    retry_for: Duration,
}

impl<L: PartitionLog> Writer<L> {
    fn run(mut self, rx: Receiver<Commit>) {
        let group_size = metrics::histogram!(names::JOURNAL_GROUP_SIZE);
        let publish_secs = metrics::histogram!(names::CLUSTER_PUBLISH_SECONDS);
        let mut group: Vec<Commit> = Vec::with_capacity(MAX_GROUP);
        let mut scratch: FastHashMap<Vec<u8>, AggValue> = FastHashMap::default();
        loop {
            let Some(first) = self.qlog.wait_for(&self.store, &rx) else {
                break;
            };
            group.push(first);
            while group.len() < MAX_GROUP {
                match rx.try_recv() {
                    Ok(c) => group.push(c),
                    Err(_) => break,
                }
            }
            group_size.record(group.len() as f64);
            while !group.is_empty() {
                let end = segment_end(&group, 0);
                let result = if self.shared.stepped_down.load(Ordering::SeqCst) {
                    Err(self.shared.reason())
                } else {
                    let t = Instant::now();
                    let r = self.commit(&mut group[..end], &mut scratch);
                    publish_secs.record(t.elapsed().as_secs_f64());
                    r
                };
                for c in group.drain(..end) {
                    let _ = c.done.send(result.clone());
                }
            }
            if self.qlog.due_in() == Some(Duration::ZERO) {
                self.qlog.fold(&self.store);
            }
        }
        self.qlog.fold(&self.store);
    }

    /// Appends one merged write of `commits` and applies it locally.
    fn commit(
        &mut self,
        commits: &mut [Commit],
        scratch: &mut FastHashMap<Vec<u8>, AggValue>,
    ) -> Result<(), CommitError> {
        let p = self.term.partition;
        let batches: Vec<WriteBatch> = commits
            .iter_mut()
            .map(|c| std::mem::take(&mut c.batch))
            .collect();
        let rows = concat_batches(&batches);
        drop(batches);
        let ops = combined_quota(commits, scratch);
        let events: Vec<u64> = commits
            .iter()
            .flat_map(|c| c.events.iter().copied())
            .collect();
        // Every number a commit of this write holds was reserved before it was
        // submitted, so it is below this.
        let next_seq = self.shared.next_seq.load(Ordering::SeqCst);
        let payload = message::encode_group(rows.data(), &events, next_seq, &ops);
        if payload.len() > self.log.max_payload() {
            return Err(CommitError::Rejected(
                p,
                format!(
                    "a merged write of {} bytes exceeds the stream's largest message ({} bytes)",
                    payload.len(),
                    self.log.max_payload()
                ),
            ));
        }
        self.n += 1;
        let id = format!("{p}.{}.{}", self.term.epoch, self.n);
        let appended = self.rt.block_on(append_resolved(
            &self.log,
            p,
            &id,
            self.applied,
            payload,
            self.retry_for,
        ));
        let seq = match appended {
            Ok(seq) => seq,
            Err(CommitError::Rejected(p, e)) => return Err(CommitError::Rejected(p, e)),
            Err(e) => {
                self.shared.step_down(e.clone());
                return Err(e);
            }
        };
        self.applied = seq;
        self.shared.applied.store(seq, Ordering::SeqCst);
        // The append is durable in the stream: the commits succeeded whatever happens to
        // the local write below.
        let mut local = self.store.writes(64);
        if !ops.is_empty() {
            let mut record = Vec::new();
            encode_log_record(&ops, &mut record);
            local.put_quota_log(self.qlog.next, &record);
        }
        put_applied(&mut local, p, seq);
        put_next_seq(&mut local, p, next_seq);
        for &s in &events {
            local.put_record_rev(s, partition_rev(p, seq));
        }
        match self.store.write_all(vec![rows, local.into_batch()], false) {
            Ok(()) => self.qlog.written(ops),
            Err(e) => {
                // This node's view now lacks an acknowledged append: it must not go on
                // deciding for the partition.
                self.shared
                    .step_down(CommitError::Store(std::sync::Arc::new(e)));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
