//! Corrections of stored usage (SPEC 4.3): adjustments, retractions and their audit log.
//! With the flusher ([`crate::flush`]) these are the writers of usage windows.
//!
//! - [`Corrections::adjust`]: a signed additive correction of one `sum` or `count` lever
//!   at one instant (and bucket). It changes the minute, hour and day window rows that
//!   contain `time`, final ones included, with new revisions, and is idempotent by `id`
//!   within the contract. It corrects billed usage only: quota periods are not changed
//!   (a grant gives allowance back).
//! - [`Corrections::retract`]: removes a remembered accepted event's contribution from
//!   every window row and from every quota period of its contract chain, and marks its
//!   dedupe record retracted, so a repeat changes nothing and a repost of the id stays a
//!   duplicate. `conflict` for `max` and `latest` levers, whose aggregates cannot be
//!   reversed; `not_found` for ids not remembered (never accepted, or older than
//!   `dedupe_retention`).
//! - [`Corrections::list`]: both kinds, oldest first, with who (tenant, role, key name)
//!   and when.
//!
//! Each correction is one atomic journal batch marked durable (fsynced whatever the
//! durability mode): window merges, revisions, quota rows, audit record, idempotency
//! index. It is committed under the revision lock, held until the commit answers:
//! revisions must reach the store in the order they are issued (a changes-feed reader
//! must never see revision n + 1 before n), and the lock also serialises corrections
//! with flushes (lock order: docs/design.md).

mod adjust;
pub mod forward;
mod retract;

use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use adjust::AdjustmentBody;

use crate::counters::Counters;
use crate::decimal::Amount;
use crate::dedupe::Unflushed;
use crate::error::Error;
use crate::journal::{Batch, Journal};
use crate::quota::book::QuotaBook;
use crate::registry::persist::{page, Page, PageRequest};
use crate::registry::Tenant;
use crate::revision::{Revisions, Stamp};
use crate::state::State;
use crate::store::keys::{admin_key, admin_prefix, window_key, AdminKind};
use crate::store::Store;
use crate::window::Granularity;

/// Who made a correction.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Actor {
    /// The key's tenant.
    pub tenant: String,
    /// The key's role.
    pub role: String,
    /// The key's configured name (never the key).
    pub key: String,
}

/// One audit log entry.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct AuditEntry {
    /// `adjustment` or `retraction`.
    pub kind: String,
    /// Adjustment id, or the retracted event's id.
    pub id: String,
    /// Contract.
    pub contract: String,
    /// Lever.
    pub lever: String,
    /// Instant of the changed windows.
    pub time: String,
    /// Signed change applied to the windows.
    pub value: Amount,
    /// Bucket.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bucket: Option<String>,
    /// Reason (adjustments).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Who.
    pub by: Actor,
    /// When (RFC 3339).
    pub at: String,
    /// Highest revision the change was stamped with.
    pub revision: u64,
}

/// The result of a correction: the audit entry, and whether this call made it (`false`
/// for an idempotent repeat answering the stored entry).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Corrected {
    /// The audit entry of the correction.
    pub entry: AuditEntry,
    /// True when this call wrote it.
    pub created: bool,
}

/// The handles corrections use.
#[derive(Clone, Copy)]
pub struct Corrections<'a> {
    store: &'a Store,
    journal: &'a dyn Journal,
    revisions: &'a Revisions,
    quotas: &'a QuotaBook,
    recent: &'a Unflushed,
    flush_wake: &'a crossbeam_channel::Sender<()>,
    dedupe_retention: Duration,
    cluster: Option<Cluster<'a>>,
}

/// Cluster mode: an adjustment is an events record of its contract's partition, counted
/// like accepted events ([`Corrections::adjust`]).
#[derive(Clone, Copy)]
struct Cluster<'a> {
    counters: &'a Counters,
    partitions: u32,
}

impl<'a> Corrections<'a> {
    /// Corrections on these handles: `recent` and `flush_wake` are the flusher's table of
    /// ids not yet moved to the store and its wake-up (a retraction waits for its id).
    pub fn new(
        store: &'a Store,
        journal: &'a dyn Journal,
        revisions: &'a Revisions,
        quotas: &'a QuotaBook,
        recent: &'a Unflushed,
        flush_wake: &'a crossbeam_channel::Sender<()>,
        dedupe_retention: Duration,
    ) -> Self {
        Corrections {
            store,
            journal,
            revisions,
            quotas,
            recent,
            flush_wake,
            dedupe_retention,
            cluster: None,
        }
    }

    /// Cluster mode's corrections: adjustments go into their contract's partition
    /// stream as events records that `counters` count (see [`Corrections::adjust`]).
    pub fn in_cluster(self, counters: &'a Counters, partitions: u32) -> Self {
        Corrections {
            cluster: Some(Cluster {
                counters,
                partitions,
            }),
            ..self
        }
    }

    /// Corrections on the daemon's state.
    pub fn of(state: &'a State) -> Self {
        let c = Corrections::new(
            &state.store,
            &*state.journal,
            &state.revisions,
            &state.quotas,
            &state.unflushed,
            &state.flush_wake,
            state.cfg.dedupe_retention,
        );
        match &state.cfg.cluster {
            Some(cluster) => c.in_cluster(&state.counters, cluster.partitions),
            None => c,
        }
    }

    /// Looks up a stored audit entry through an index record.
    fn stored_entry(&self, t: &Tenant, index: &[u8]) -> Result<Option<AuditEntry>, Error> {
        let Some(name) = self.store.admin_get_key(index)? else {
            return Ok(None);
        };
        let key = admin_key(
            AdminKind::Audit,
            &t.name,
            std::str::from_utf8(&name).map_err(Error::internal)?,
        );
        match self.store.admin_get_key(&key)? {
            Some(v) => Ok(Some(serde_json::from_slice(&v).map_err(Error::internal)?)),
            None => Ok(None),
        }
    }

    /// One page of the audit log of `contract`, oldest first.
    pub fn list(
        &self,
        t: &Tenant,
        contract: &str,
        req: &PageRequest,
    ) -> Result<Page<AuditEntry>, Error> {
        if t.contract(contract).is_none() {
            return Err(Error::not_found("contract", contract));
        }
        let mut prefix = admin_prefix(AdminKind::Audit, &t.name);
        prefix.extend_from_slice(format!("{contract}\0").as_bytes());
        page(self.store, prefix, req, |_, v| {
            serde_json::from_slice::<AuditEntry>(v).ok()
        })
    }
}

/// Audit record name: contract, NUL, zero-padded revision (chronological order).
impl Corrections<'_> {
    /// Retractions are refused in cluster mode, whole, before anything is changed: the
    /// retraction mark of an id a standby has not flushed yet would be overwritten by
    /// that flush (docs/cluster.md, "Differences").
    fn refuse_retraction_in_cluster(&self) -> Result<(), Error> {
        if self.cluster.is_some() {
            return Err(Error::conflict(
                "retractions are not available in cluster mode yet; correct the usage \
                 with a negative adjustment (POST /v1/contracts/{contract}/adjustments)",
            ));
        }
        Ok(())
    }

    /// Stamps the window rows `keys` with new revisions (the entry keeps the highest),
    /// adds the audit entry and its idempotency index `index` (kind and name) to `batch`,
    /// and commits the batch durably. The caller holds `stamp` until this returns (see
    /// the module note).
    fn commit_audited(
        &self,
        stamp: &mut Stamp<'_>,
        t: &Tenant,
        mut batch: Batch<'_>,
        keys: &[Vec<u8>],
        entry: &mut AuditEntry,
        index: (AdminKind, &str),
    ) -> Result<(), Error> {
        entry.revision = stamp.stamp(self.store, batch.rows(), keys)?;
        self.commit_with_audit(t, batch, entry, index)
    }

    /// Adds the audit entry (named by its revision) and its idempotency index `index`
    /// to `batch`, and commits the batch durably.
    fn commit_with_audit(
        &self,
        t: &Tenant,
        mut batch: Batch<'_>,
        entry: &AuditEntry,
        index: (AdminKind, &str),
    ) -> Result<(), Error> {
        let name = audit_name(&entry.contract, entry.revision);
        let audit = serde_json::to_vec(entry).map_err(Error::internal)?;
        batch
            .rows()
            .put_admin(AdminKind::Audit, &t.name, &name, &audit);
        batch
            .rows()
            .put_admin(index.0, &t.name, index.1, name.as_bytes());
        batch.durable();
        self.journal.commit_blocking(batch)?;
        Ok(())
    }
}

fn audit_name(contract: &str, revision: u64) -> String {
    format!("{contract}\0{revision:020}")
}

/// The three window rows (minute, hour, day) containing `time_ms`.
fn window_keys(
    tenant: &str,
    contract: &str,
    lever: &str,
    time_ms: i64,
    bucket: Option<&str>,
) -> Vec<Vec<u8>> {
    [Granularity::Minute, Granularity::Hour, Granularity::Day]
        .into_iter()
        .map(|g| window_key(tenant, contract, lever, g, g.floor(time_ms), bucket))
        .collect()
}

#[cfg(test)]
pub(crate) mod test_support {
    use std::sync::Arc;
    use std::time::Duration;

    use crate::dedupe::Unflushed;
    use crate::quota::book::QuotaBook;
    use crate::registry::Tenant;
    use crate::revision::Revisions;
    use crate::store::Store;
    use crate::testkit;

    use super::{Actor, Corrections};

    /// A store in a temporary directory with tenant `t`, contract `c`, a `sum` lever
    /// `tokens` and a `max` lever `peak`.
    pub struct Fixture {
        pub _dir: tempfile::TempDir,
        pub store: Store,
        pub journal: crate::journal::WalJournal,
        pub revisions: Revisions,
        pub quotas: QuotaBook,
        pub recent: Unflushed,
        pub wake: crossbeam_channel::Sender<()>,
        pub _wake_rx: crossbeam_channel::Receiver<()>,
        pub tenant: Arc<Tenant>,
    }

    impl Fixture {
        pub fn corrections(&self) -> Corrections<'_> {
            Corrections::new(
                &self.store,
                &self.journal,
                &self.revisions,
                &self.quotas,
                &self.recent,
                &self.wake,
                Duration::from_secs(3600),
            )
        }
    }

    pub fn actor() -> Actor {
        Actor {
            tenant: "t".into(),
            role: "admin".into(),
            key: "ops".into(),
        }
    }

    pub fn fixture() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), Duration::from_secs(3600)).unwrap();
        let tenant = testkit::tenant();
        testkit::add_lever(&tenant, "tokens", "sum");
        testkit::add_lever(&tenant, "peak", "max");
        testkit::add_contract(&tenant, "c", serde_json::json!({"customer": "acme"}), None);
        let (wake, wake_rx) = crossbeam_channel::bounded(1);
        let journal = testkit::journal(&store, crate::config::Durability::Fsync);
        Fixture {
            journal,
            revisions: Revisions::load(&store).unwrap(),
            _dir: dir,
            store,
            quotas: QuotaBook::new(2),
            recent: Unflushed::new(),
            wake,
            _wake_rx: wake_rx,
            tenant,
        }
    }
}
