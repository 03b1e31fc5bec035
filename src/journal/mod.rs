//! The journal: the one seam between meterd's writers and durable storage.
//!
//! Ingest, corrections and registry changes hand the journal a typed [`Batch`]: the
//! accepted events of a request (an [`EventsRecord`] per counter shard, each carrying its
//! events' dedupe records), quota operands, and rows built through the store's typed
//! [`Writes`] (registry changes, audit entries, usage window deltas, dedupe marks,
//! changes-feed stamps, notifications). They get back a commit result, and acknowledge
//! nothing before it is `Ok`. No writer names a column family or encodes a key.
//!
//! Today's implementation is [`WalJournal`]: group commit into RocksDB's write-ahead log
//! ([`wal`]). A replicated log (cluster mode) is another implementation of [`Journal`].
//!
//! # What any implementation must guarantee
//!
//! - **Atomicity of one batch.** Every row and operand of a batch becomes durable
//!   together or not at all: after any crash, recovery sees all of it or none of it.
//! - **What an acknowledgement means.** A commit answers `Ok` only once the batch
//!   survives the failures the configured durability promises (`fsync`: power loss of
//!   this machine; `buffered`: `kill -9` of the process; a batch marked
//!   [`Batch::durable`] is fsynced whatever the mode). An `Err` means nothing of the
//!   batch was acknowledged; the caller undoes its in-memory reservations and answers
//!   with an error (the batch may still turn up after a crash only if it was written
//!   whole, which is safe because its events' ids are then remembered too).
//! - **Order.** Sequence numbers from [`Journal::reserve`] are unique and never reused,
//!   also across restarts ([`Journal::set_next`] after replay). Batches committed by one
//!   caller one after the other are applied in that order; concurrent batches touch
//!   disjoint ids (their claims, [`crate::dedupe`]) and merge-commutative rows, so their
//!   relative order does not change any count.
//! - **Recovery finds the last applied position.** An events record stays in the journal
//!   until the flusher has merged its deltas into usage windows; the flusher deletes it
//!   ([`Journal::truncate`]) in the same atomic write as those deltas and the high-water
//!   mark of applied sequence numbers. At start every record still present is replayed
//!   into the counters ([`Journal::scan_events`]) and nothing else is: a record is counted
//!   in windows or replayed, never both, never neither.

mod group;
mod quota_log;
pub mod record;
pub mod stream;
mod wal;

use std::sync::Arc;

use tokio::sync::oneshot;

use crate::store::agg::AggValue;
use crate::store::writes::Writes;
use crate::store::{Store, StoreError};

pub use quota_log::{fold_quota_log, fold_quota_log_range, QuotaOperands, QUOTA_FOLD_INTERVAL};
pub use record::EventsRecord;
pub use wal::WalJournal;

/// Why a commit failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CommitError {
    /// The store refused the write or the fsync (shared by every commit of the group
    /// that failed with it).
    #[error("journal write failed: {0}")]
    Store(#[source] Arc<StoreError>),
    /// The writer has stopped (shutdown).
    #[error("journal writer stopped")]
    Stopped,
    /// Cluster mode: another node took the partition over (its epoch record is in the
    /// stream), so this writer's append was refused and nothing of the batch is stored.
    #[error("partition {0} is owned by another node now")]
    Fenced(u32),
    /// Cluster mode: the append could not be confirmed or refused before the writer gave
    /// up (the stream had no leader or did not answer). The batch may or may not be in
    /// the stream; the writer steps down, and a retry with the same event ids is
    /// answered exactly once by whichever node owns the partition next.
    #[error("partition {0}: the replicated journal did not confirm the append: {1}")]
    InDoubt(u32, String),
    /// Cluster mode: this node does not own the partition (any more); nothing of the
    /// batch is stored, and the owner (if any) is the one to ask.
    #[error("partition {0} is not owned by this node")]
    NotOwner(u32),
    /// Cluster mode: another node changed the registry since this node read it; nothing
    /// was stored.
    #[error("another node changed the registry at the same time")]
    Conflict,
    /// Cluster mode: the replicated journal refused the append for good (too large, no
    /// such stream); nothing of the batch is stored and the writer keeps its partition.
    #[error("partition {0}: the replicated journal refused the append: {1}")]
    Rejected(u32, String),
}

impl CommitError {
    /// True when the failure was a full disk ([`StoreError::Full`]).
    pub fn is_full(&self) -> bool {
        matches!(self, CommitError::Store(e) if matches!(**e, StoreError::Full(_)))
    }
}

/// What one commit makes durable, atomically: rows, quota operands and whether it must
/// be fsynced whatever the durability mode. Built by [`Journal::batch`].
#[derive(Debug)]
pub struct Batch<'j> {
    rows: Writes<'j>,
    quota: QuotaOperands,
    durable: bool,
    /// Cluster mode: the partition whose journal takes the batch (`None`: the registry
    /// journal; single-node mode has one journal and ignores it).
    partition: Option<u32>,
    /// Sequence numbers of the events records added (cluster mode).
    events: Vec<u64>,
}

impl<'j> Batch<'j> {
    /// Adds the events record `record` under sequence number `seq` (one of those
    /// [`Journal::reserve`] handed out).
    pub fn events(&mut self, seq: u64, record: EventsRecord) {
        self.rows.put_journal(seq, &record.finish());
        // Only a partition's journal sends them on (single-node mode skips the vector).
        if self.partition.is_some() {
            self.events.push(seq);
        }
    }

    /// An events record already encoded ([`record::encode_events_only`]).
    pub fn events_encoded(&mut self, seq: u64, record: &[u8]) {
        self.rows.put_journal(seq, record);
        if self.partition.is_some() {
            self.events.push(seq);
        }
    }

    /// Cluster mode: sends the batch to partition `p`'s journal (every row of it must
    /// belong to that partition's contracts). Set before adding events records.
    pub fn set_partition(&mut self, p: u32) {
        self.partition = Some(p);
    }

    /// An empty batch writing into `rows` (for journal implementations).
    fn new(rows: Writes<'j>) -> Batch<'j> {
        Batch {
            rows,
            quota: Vec::new(),
            durable: false,
            partition: None,
            events: Vec::new(),
        }
    }

    /// Adds a quota usage operand for the quota row `key`; the journal may combine it with
    /// the operands of batches committed alongside ([`AggValue::merge`] is associative
    /// and commutative, so the stored rows are the same).
    pub fn quota(&mut self, key: Vec<u8>, delta: AggValue) {
        self.quota.push((key, delta));
    }

    /// Makes room for `n` more quota operands (a request knows how many it reserved: the
    /// vector then grows once instead of doubling from empty, three reallocations for a
    /// single event's five to eight rows).
    pub fn reserve_quota(&mut self, n: usize) {
        self.quota.reserve(n);
    }

    /// The typed rows of this batch (registry, audit, windows, dedupe marks, ...).
    pub fn rows(&mut self) -> &mut Writes<'j> {
        &mut self.rows
    }

    /// Marks the batch as needing an fsync before its acknowledgement even under
    /// `durability = "buffered"` (registry and correction writes, which are rare and must
    /// not be taken back by a power loss once answered).
    pub fn durable(&mut self) {
        self.durable = true;
    }

    /// True when the batch holds nothing.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty() && self.quota.is_empty()
    }
}

/// A visitor of events records: called with each record's sequence number and bytes.
pub type EventsVisitor<'a> = dyn FnMut(u64, &[u8]) -> Result<(), StoreError> + 'a;

/// The pending result of a submitted batch.
#[derive(Debug)]
pub struct Ticket(Result<oneshot::Receiver<Result<(), CommitError>>, CommitError>);

impl Ticket {
    /// A ticket whose answer comes through `rx`.
    fn pending(rx: oneshot::Receiver<Result<(), CommitError>>) -> Ticket {
        Ticket(Ok(rx))
    }

    /// A ticket that failed at submission.
    fn failed(e: CommitError) -> Ticket {
        Ticket(Err(e))
    }

    fn answer(
        r: Result<Result<(), CommitError>, oneshot::error::RecvError>,
    ) -> Result<(), CommitError> {
        match r {
            Ok(r) => r,
            Err(_) => Err(CommitError::Stopped),
        }
    }

    /// Waits until the batch is durable (or failed).
    pub async fn wait(self) -> Result<(), CommitError> {
        match self.0 {
            Ok(rx) => Ticket::answer(rx.await),
            Err(e) => Err(e),
        }
    }

    /// Same as [`Ticket::wait`], for blocking callers (inside `block_in_place`,
    /// recovery, tests).
    pub fn wait_blocking(self) -> Result<(), CommitError> {
        match self.0 {
            Ok(rx) => Ticket::answer(rx.blocking_recv()),
            Err(e) => Err(e),
        }
    }
}

/// The journal seam (see the module note for what an implementation guarantees).
pub trait Journal: Send + Sync + std::fmt::Debug {
    /// An empty batch with room for about `bytes` bytes of rows.
    fn batch(&self, bytes: usize) -> Batch<'_>;

    /// Hands `batch` to the journal; the ticket answers once it is durable.
    fn submit(&self, batch: Batch<'_>) -> Ticket;

    /// Reserves `n` consecutive sequence numbers for events records and returns the
    /// first.
    fn reserve(&self, n: u64) -> u64;

    /// Same as [`Journal::reserve`], for a batch of partition `p` (cluster mode: from
    /// that partition's range of numbers).
    fn reserve_in(&self, p: Option<u32>, n: u64) -> u64 {
        let _ = p;
        self.reserve(n)
    }

    /// Sets the next sequence number (after replay).
    fn set_next(&self, seq: u64);

    /// The store whose `journal` column family holds this node's events records (every
    /// implementation keeps them there until the flusher truncates them).
    fn local(&self) -> &Store;

    /// The events record `seq`, while it is in the journal (`None` once truncated).
    fn events_record(&self, seq: u64) -> Result<Option<Vec<u8>>, StoreError> {
        wal::events_record(self.local(), seq)
    }

    /// Calls `f` with every events record numbered `first..=last` still in the journal,
    /// in order. With `one_time` the read does not fill caches (a read before deletion).
    fn scan_events(
        &self,
        first: u64,
        last: u64,
        one_time: bool,
        f: &mut EventsVisitor<'_>,
    ) -> Result<(), StoreError> {
        wal::scan_events(self.local(), first, last, one_time, f)
    }

    /// Adds to `rows` (the flusher's write of the windows the records were applied to)
    /// the deletion of events records `first..=last`.
    fn truncate(&self, rows: &mut Writes<'_>, first: u64, last: u64) {
        rows.delete_journal(first, last);
    }

    /// The revision of committed events record `seq` that the rows it changes are
    /// stamped with ([`crate::revision`]): `seq` itself, except in cluster mode, where it
    /// is the revision of the stream message that carried it.
    fn revision_of(&self, seq: u64) -> u64 {
        seq
    }

    /// Durability fsyncs made so far (for tests and metrics).
    fn fsyncs(&self) -> u64;
}

/// A shared journal is a journal (cluster mode: the node's [`stream::Partitions`] is
/// both the state's journal and the cluster runtime's).
impl<J: Journal + ?Sized> Journal for Arc<J> {
    fn batch(&self, bytes: usize) -> Batch<'_> {
        (**self).batch(bytes)
    }
    fn submit(&self, batch: Batch<'_>) -> Ticket {
        (**self).submit(batch)
    }
    fn reserve(&self, n: u64) -> u64 {
        (**self).reserve(n)
    }
    fn reserve_in(&self, p: Option<u32>, n: u64) -> u64 {
        (**self).reserve_in(p, n)
    }
    fn set_next(&self, seq: u64) {
        (**self).set_next(seq)
    }
    fn local(&self) -> &Store {
        (**self).local()
    }
    fn truncate(&self, rows: &mut Writes<'_>, first: u64, last: u64) {
        (**self).truncate(rows, first, last)
    }
    fn revision_of(&self, seq: u64) -> u64 {
        (**self).revision_of(seq)
    }
    fn fsyncs(&self) -> u64 {
        (**self).fsyncs()
    }
}

impl dyn Journal + '_ {
    /// Submits `batch` and waits until it is durable.
    pub async fn commit(&self, batch: Batch<'_>) -> Result<(), CommitError> {
        // The ticket's receiver is awaited here directly (one future, not two nested).
        match self.submit(batch).0 {
            Ok(rx) => Ticket::answer(rx.await),
            Err(e) => Err(e),
        }
    }

    /// Same as [`commit`](Self::commit), for blocking callers.
    pub fn commit_blocking(&self, batch: Batch<'_>) -> Result<(), CommitError> {
        self.submit(batch).wait_blocking()
    }
}
