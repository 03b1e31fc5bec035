//! A contract's parent chain and the quotas in force on it, and the shard that holds a
//! chain: every member of a chain lives in the shard of its root, so one lock covers an
//! event's whole decision.

use std::sync::{Arc, MutexGuard};

use super::{QuotaBook, Shard};
use crate::counters::shard_of;
use crate::decimal::Amount;
use crate::quota::period::PeriodKind;
use crate::registry::{Contract, Tenant};
use crate::sync::lock;

/// Longest chain followed: a contract and the most ancestors the admin API allows.
pub const MAX_CHAIN: usize = crate::registry::MAX_PARENT_DEPTH + 1;

/// A quota in force for one contract, lever and period kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EffectiveQuota {
    /// Period kind.
    pub kind: PeriodKind,
    /// Limit; `None` is unlimited (`-1`).
    pub limit: Option<Amount>,
    /// Hard (reject) or soft (accept, report overage).
    pub hard: bool,
}

/// The quotas in force for `lever` on `contract`: its plan's, overridden per period by
/// the contract's own.
pub fn effective_quotas(tenant: &Tenant, contract: &Contract, lever: &str) -> Vec<EffectiveQuota> {
    let mut out: Vec<EffectiveQuota> = Vec::new();
    let plan = contract.body.plan.as_deref().and_then(|p| tenant.plan(p));
    let plan_quotas = plan
        .as_ref()
        .map(|p| p.parsed_quotas.as_slice())
        .unwrap_or(&[]);
    for q in plan_quotas.iter().chain(contract.parsed_quotas.iter()) {
        if q.lever != lever {
            continue;
        }
        let eq = EffectiveQuota {
            kind: q.kind,
            limit: q.limit,
            hard: q.hard,
        };
        // Later entries (the contract's) override earlier ones (the plan's).
        match out.iter_mut().find(|e| e.kind == q.kind) {
            Some(e) => *e = eq,
            None => out.push(eq),
        }
    }
    out
}

/// The contract and its ancestors, nearest first (at most [`MAX_CHAIN`] entries).
pub fn chain(tenant: &Tenant, contract: &Arc<Contract>) -> Vec<Arc<Contract>> {
    let mut out = vec![contract.clone()];
    while out.len() < MAX_CHAIN {
        let Some(parent) = out.last().and_then(|c| c.body.parent.clone()) else {
            break;
        };
        match tenant.contract(&parent) {
            Some(p) if !out.iter().any(|c| c.id == p.id) => out.push(p),
            _ => break,
        }
    }
    out
}

/// Cluster mode: the partition of an event of `tenant` for contract `contract`, out of
/// `partitions`. A pure function of the tenant and the root of the contract's parent
/// chain (the contract itself when it has no parent, or is unknown), so a reseller pool
/// and all its children share a partition and every quota decision stays in one place.
pub fn partition(tenant: &Tenant, contract: &str, partitions: u32) -> u32 {
    if partitions <= 1 {
        return 0;
    }
    let root = match tenant.contract(contract) {
        Some(c) => chain(tenant, &c)
            .last()
            .map(|r| r.id.clone())
            .unwrap_or_else(|| contract.to_string()),
        None => contract.to_string(),
    };
    partition_of_root(&tenant.name, &root, partitions)
}

/// The partition of the chain rooted at `root` in `tenant` (see [`partition`]).
pub fn partition_of_root(tenant: &str, root: &str, partitions: u32) -> u32 {
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    h.update(tenant.as_bytes());
    h.update(&[0]);
    h.update(root.as_bytes());
    (h.digest() % u64::from(partitions.max(1))) as u32
}

/// Whether no member of `chain` has a finite quota on `lever`: its events then only add
/// to their period rows (see [`QuotaBook::reserve_unlimited`]).
pub fn chain_unlimited(tenant: &Tenant, chain: &[Arc<Contract>], lever: &str) -> bool {
    chain.iter().all(|c| {
        effective_quotas(tenant, c, lever)
            .iter()
            .all(|q| q.limit.is_none())
    })
}

/// Threshold percentages in force for a contract: its own, else its plan's, else the
/// tenant's.
pub fn thresholds_of(tenant: &Tenant, c: &Contract) -> Vec<u32> {
    if !c.body.thresholds.is_empty() {
        return c.body.thresholds.clone();
    }
    if let Some(p) = c.body.plan.as_deref().and_then(|p| tenant.plan(p)) {
        if !p.body.thresholds.is_empty() {
            return p.body.thresholds.clone();
        }
    }
    tenant.thresholds.clone()
}

impl QuotaBook {
    /// Locks the shard of `contract`'s chain and resolves the chain again under the lock:
    /// a concurrent re-parenting ([`QuotaBook::rehome`]) changes the registry while
    /// holding the old and new root shards, so the chain returned owns the locked shard.
    pub(super) fn lock_chain(
        &self,
        tenant: &Tenant,
        contract: &Arc<Contract>,
    ) -> (Vec<Arc<Contract>>, MutexGuard<'_, Shard>) {
        // A contract without a parent is its own root: one lookup under the lock says
        // whether it still has none (a re-parenting holds this shard while it changes).
        if contract.body.parent.is_none() {
            let m = lock(self.shard_for(&tenant.name, &contract.id));
            match tenant.contract(&contract.id) {
                Some(fresh) if fresh.body.parent.is_none() => return (vec![fresh], m),
                None => return (vec![contract.clone()], m),
                Some(_) => drop(m),
            }
        }
        let mut current = contract.clone();
        loop {
            let first = chain(tenant, &current);
            let root = &first.last().expect("chain has the contract").id;
            let shard = shard_of(&tenant.name, root, self.shards.len());
            let m = lock(&self.shards[shard]);
            let fresh_contract = tenant
                .contract(&contract.id)
                .unwrap_or_else(|| contract.clone());
            let fresh = chain(tenant, &fresh_contract);
            if fresh.last().map(|c| &c.id) == first.last().map(|c| &c.id) {
                return (fresh, m);
            }
            drop(m);
            current = fresh_contract;
        }
    }

    /// Locks the shard that owns `contract`'s rows now: the shard of its chain's root,
    /// re-checked under the lock (a concurrent [`QuotaBook::rehome`] may move them).
    pub(super) fn lock_owner(&self, tenant: &Tenant, contract: &str) -> MutexGuard<'_, Shard> {
        let root_now = || {
            tenant
                .contract(contract)
                .and_then(|c| chain(tenant, &c).last().map(|r| r.id.clone()))
                .unwrap_or_else(|| contract.to_string())
        };
        loop {
            let root = root_now();
            let guard = lock(self.shard_for(&tenant.name, &root));
            if root_now() == root {
                return guard;
            }
        }
    }
}
