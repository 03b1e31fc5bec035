//! [`Applier`]: a standby's side of a partition's journal stream. It writes each message
//! into this node's store, in stream order, atomically with the message's sequence.

use std::time::Duration;

use rocksdb::WriteBatch;

use super::message::{self, DecodeError, Message};
use super::{
    applied_seq, next_events_seq, partition_rev, put_applied, put_next_seq, quota_log_range,
};
use crate::journal::quota_log::{fold_quota_log_range, QuotaLog};
use crate::store::{Store, StoreError};
use crate::telemetry::names;

/// Why a message could not be applied.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// The message after the last applied one is missing (the stream's retention
    /// dropped it): this node must restore a snapshot before it can follow the stream.
    #[error("partition {partition}: message {expected} is gone (next held: {got})")]
    Gap {
        /// The partition.
        partition: u32,
        /// The sequence the store needs next.
        expected: u64,
        /// The sequence offered.
        got: u64,
    },
    /// The message is damaged or of an unknown format: nothing of it was applied.
    #[error("partition {0}, message {1}: {2}")]
    Decode(u32, u64, #[source] DecodeError),
    /// The local store failed: nothing of the message was applied.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What applying one message did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied {
    /// Already applied earlier (a redelivery): nothing changed.
    Skipped,
    /// A group commit: its rows are in the store; these events records among them are
    /// now in the store's journal, to be counted.
    Group(Vec<u64>),
    /// A new owner's epoch record.
    Epoch {
        /// Its epoch.
        epoch: u64,
        /// Its node.
        node: String,
    },
}

/// Applies one partition's stream messages into a store (see the module note).
#[derive(Debug)]
pub struct Applier {
    store: Store,
    partition: u32,
    applied: u64,
    /// The largest next events sequence number recorded so far.
    next_seq: u64,
    qlog: QuotaLog,
    /// The epoch and node of the last epoch record applied.
    owner: Option<(u64, String)>,
}

impl Applier {
    /// An applier for partition `p`, resuming after the last sequence `store` holds.
    pub fn open(store: Store, p: u32) -> Result<Applier, StoreError> {
        let applied = applied_seq(&store, p)?;
        let next_seq = next_events_seq(&store, p)?;
        let (lo, hi) = quota_log_range(p);
        let qlog = QuotaLog::new(fold_quota_log_range(&store, lo, hi)?);
        Ok(Applier {
            store,
            partition: p,
            applied,
            next_seq,
            qlog,
            owner: None,
        })
    }

    /// The partition it applies.
    pub fn partition(&self) -> u32 {
        self.partition
    }

    /// The last sequence applied.
    pub fn applied(&self) -> u64 {
        self.applied
    }

    /// The epoch and node name of the last epoch record applied since opening.
    pub fn owner(&self) -> Option<&(u64, String)> {
        self.owner.as_ref()
    }

    /// Applies the message stored at `seq`. A sequence already applied is skipped (a
    /// redelivery); one past the next is a [`ApplyError::Gap`].
    pub fn apply(&mut self, seq: u64, payload: &[u8]) -> Result<Applied, ApplyError> {
        let p = self.partition;
        if seq <= self.applied {
            return Ok(Applied::Skipped);
        }
        if seq != self.applied + 1 {
            return Err(ApplyError::Gap {
                partition: p,
                expected: self.applied + 1,
                got: seq,
            });
        }
        let msg = message::decode(payload).map_err(|e| ApplyError::Decode(p, seq, e))?;
        let applied = match msg {
            Message::Group {
                rows,
                events,
                next_seq,
                quota,
            } => {
                let ops = message::quota_operands(quota);
                let mut local = self.store.writes(quota.len() + 96);
                if !ops.is_empty() {
                    local.put_quota_log(self.qlog.next, quota);
                }
                put_applied(&mut local, p, seq);
                for &s in &events {
                    local.put_record_rev(s, partition_rev(p, seq));
                }
                if next_seq > self.next_seq {
                    put_next_seq(&mut local, p, next_seq);
                    self.next_seq = next_seq;
                }
                self.store
                    .write_all(vec![WriteBatch::from_data(rows), local.into_batch()], false)?;
                self.qlog.written(ops);
                Applied::Group(events)
            }
            Message::Epoch { epoch, node } => {
                let mut local = self.store.writes(64);
                put_applied(&mut local, p, seq);
                self.store.apply(local, false)?;
                tracing::info!(partition = p, epoch, node, seq, "partition has a new owner");
                self.owner = Some((epoch, node.to_string()));
                Applied::Epoch {
                    epoch,
                    node: node.to_string(),
                }
            }
        };
        self.applied = seq;
        metrics::counter!(names::CLUSTER_APPLIED_TOTAL).increment(1);
        if self.qlog.due_in() == Some(Duration::ZERO) {
            self.qlog.fold(&self.store);
        }
        Ok(applied)
    }

    /// Folds the quota log if it is due (call when idle).
    pub fn tick(&mut self) {
        if self.qlog.due_in() == Some(Duration::ZERO) {
            self.qlog.fold(&self.store);
        }
    }

    /// Folds what is left of the quota log (before a writer takes the partition over).
    pub fn finish(mut self) -> u64 {
        self.qlog.fold(&self.store);
        self.applied
    }
}
