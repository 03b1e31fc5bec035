//! Admin writes and reads of the registry (SPEC 5): levers, plans, contracts and grants.
//!
//! A write validates against the tenant's registry, is persisted (fsynced, see
//! [`crate::registry::persist`]) before the in-memory registry changes, and writes are
//! serialised by one admin lock, so a lookup never sees a definition that a crash could
//! take back. Moving a contract to another parent chain also moves its quota rows
//! ([`crate::quota::book::QuotaBook::rehome`]).
//!
//! Every function takes plain values and returns `Result<T, crate::error::Error>`; the
//! HTTP handlers parse, authorize, call one of them and render the result.

pub mod contracts;
pub mod grants;
pub mod levers;
pub mod plans;

use serde::Serialize;

use crate::error::Error;
use crate::journal::Journal;
use crate::quota::book::QuotaBook;
use crate::state::State;
use crate::store::keys::AdminKind;
use crate::store::Store;

/// The handles admin writes use.
#[derive(Clone, Copy)]
pub struct Admin<'a> {
    store: &'a Store,
    journal: &'a dyn Journal,
    lock: &'a tokio::sync::Mutex<()>,
    quotas: &'a QuotaBook,
    /// Cluster mode's partition count (1 on a single node): a change that would move a
    /// chain to another partition is refused.
    partitions: u32,
}

/// The result of a create-or-replace: the stored value, and whether it is new.
#[derive(Debug, Clone, PartialEq)]
pub struct Saved<T> {
    /// The definition now in force.
    pub value: T,
    /// True when nothing was there before (`201`), false for a replacement or an
    /// unchanged repeat (`200`).
    pub created: bool,
}

impl<'a> Admin<'a> {
    /// Admin writes on these handles (`lock` serialises them).
    pub fn new(
        store: &'a Store,
        journal: &'a dyn Journal,
        lock: &'a tokio::sync::Mutex<()>,
        quotas: &'a QuotaBook,
    ) -> Self {
        Admin {
            store,
            journal,
            lock,
            quotas,
            partitions: 1,
        }
    }

    /// Admin writes on the daemon's state.
    pub fn of(state: &'a State) -> Self {
        let mut a = Admin::new(
            &state.store,
            &*state.journal,
            &state.admin_lock,
            &state.quotas,
        );
        a.partitions = state.peers.get().map_or(1, |p| p.partitions());
        a
    }

    /// Persists one record (JSON): one journal batch marked durable (fsynced whatever the
    /// durability mode), committed while the caller holds the admin lock.
    fn persist<T: Serialize>(
        &self,
        kind: AdminKind,
        tenant: &str,
        name: &str,
        value: &T,
    ) -> Result<(), Error> {
        let enc = serde_json::to_vec(value).map_err(Error::internal)?;
        let mut batch = self.journal.batch(enc.len() + 64);
        batch.rows().put_admin(kind, tenant, name, &enc);
        batch.durable();
        tokio::task::block_in_place(|| self.journal.commit_blocking(batch))?;
        Ok(())
    }
}

/// Checks an external id (contract, plan) from a path: `invalid_request` naming `what`.
pub fn check_id(what: &str, id: &str) -> Result<(), Error> {
    if crate::registry::valid_external_id(id) {
        Ok(())
    } else {
        Err(Error::new(
            crate::error::ErrorCode::InvalidRequest,
            format!("{what} ids are 1-128 bytes without control characters or '/'"),
        ))
    }
}

#[cfg(test)]
pub(crate) mod test_support {
    use std::sync::Arc;
    use std::time::Duration;

    use crate::quota::book::QuotaBook;
    use crate::registry::Tenant;
    use crate::store::Store;
    use crate::testkit;

    /// A store in a temporary directory, a quota book and a registry with tenant `t`.
    pub struct Fixture {
        pub _dir: tempfile::TempDir,
        pub store: Store,
        pub journal: crate::journal::WalJournal,
        pub quotas: QuotaBook,
        pub lock: tokio::sync::Mutex<()>,
        pub tenant: Arc<Tenant>,
    }

    pub fn fixture() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), Duration::from_secs(3600)).unwrap();
        let journal = testkit::journal(&store, crate::config::Durability::Fsync);
        Fixture {
            _dir: dir,
            store,
            journal,
            quotas: QuotaBook::new(2),
            lock: tokio::sync::Mutex::new(()),
            tenant: testkit::tenant(),
        }
    }
}
