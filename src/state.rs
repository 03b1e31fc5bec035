//! Shared daemon state, built once by [`crate::app`] and handed to every handler.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tokio::sync::Semaphore;

use crate::config::Config;
use crate::counters::Counters;
use crate::dedupe::Claims;
use crate::journal::Journal;
use crate::registry::{ApiKeys, Registry};
use crate::store::Store;

/// Why a request to a partition's owner failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum PeerError {
    /// No node answers for the partition (none owns it at the moment).
    #[error("partition {0} has no owner at the moment")]
    NoOwner(u32),
    /// The owner did not answer in time; the request may or may not have been applied.
    #[error("partition {0}: no answer from its owner in time")]
    Timeout(u32),
    /// Anything else on the way (connection, encoding).
    #[error("partition {0}: {1}")]
    Other(u32, String),
}

/// Cluster mode as the domain services see it: the partitions, which of them this node
/// owns, and a way to ask the owner of another.
pub trait Peers: Send + Sync + std::fmt::Debug {
    /// The number of partitions.
    fn partitions(&self) -> u32;
    /// True while this node owns partition `p`.
    fn owns(&self, p: u32) -> bool;
    /// Sends `request` of `kind` (`ingest`, `balance`, `adjust`) to the owner of partition `p` and
    /// returns its reply.
    fn request(
        &self,
        kind: &'static str,
        p: u32,
        request: Vec<u8>,
    ) -> futures_util::future::BoxFuture<'_, Result<bytes::Bytes, PeerError>>;
}

/// Everything a request needs.
#[derive(Debug)]
pub struct State {
    /// Validated configuration.
    pub cfg: Config,
    /// The store.
    pub store: Store,
    /// Tenants, levers, contracts.
    pub registry: Registry,
    /// API keys.
    pub keys: ApiKeys,
    /// In-memory counters.
    pub counters: Counters,
    /// In-flight dedupe claims.
    pub claims: Claims,
    /// Accepted ids whose dedupe records the flusher has not yet moved to the store.
    pub unflushed: crate::dedupe::Unflushed,
    /// Asks the flusher for a flush now (a retraction waits for its id's record).
    pub flush_wake: crossbeam_channel::Sender<()>,
    /// Quota usage and decisions.
    pub quotas: crate::quota::book::QuotaBook,
    /// Undelivered threshold notifications.
    pub outbox: Arc<crate::notify::Outbox>,
    /// Revisions; its lock serialises writes to stored usage rows.
    pub revisions: crate::revision::Revisions,
    /// Group-commit writer.
    pub journal: Box<dyn Journal>,
    /// True once recovery is done (and until shutdown starts).
    pub ready: AtomicBool,
    /// False after a failed journal write, until the next successful one.
    pub storage_ok: AtomicBool,
    /// Permits for concurrently processed API requests.
    pub inflight: Arc<Semaphore>,
    /// Request memory budget in KiB (`memory_limit / 4`): a request with a body holds
    /// [`crate::config::Config::request_charge_bytes`] of it while it runs.
    pub request_budget: Arc<Semaphore>,
    /// Held while an online backup runs (one at a time).
    pub backup_lock: tokio::sync::Mutex<()>,
    /// Time of the last successful flush (epoch ms).
    pub last_flush_ms: std::sync::atomic::AtomicI64,
    /// Serialises admin writes (levers, contracts).
    pub admin_lock: tokio::sync::Mutex<()>,
    /// Cluster mode: the other nodes (set once at start; empty on a single node).
    pub peers: std::sync::OnceLock<Arc<dyn Peers>>,
}

impl State {
    /// True when the daemon should receive traffic.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst) && self.storage_ok.load(Ordering::SeqCst)
    }
}
