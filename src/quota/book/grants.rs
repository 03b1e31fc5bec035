//! Grants (top-up packs) in the book: drawing the part of an event beyond its quotas
//! from the contract's grants in force, earliest expiry first, and reading how much of
//! each grant has been consumed.

use std::sync::Arc;

use super::reserved::GrantTake;
use super::{QuotaBook, Shard};
use crate::decimal::Amount;
use crate::registry::{Contract, Grant, Tenant};
use crate::store::quota_keys::GrantKey;
use crate::sync::lock;

/// Takes up to `need` from the grants of `c` on lever `lever` in force at `time_ms`
/// (earliest expiry first), skipping those used up in `m`. Returns the amount taken and
/// the takes; `m` is not changed (the caller applies the takes once the event is
/// admitted).
pub(super) fn draw(
    m: &Shard,
    tenant: &Tenant,
    c: &Contract,
    lever: &str,
    lever_name: &Arc<str>,
    time_ms: i64,
    need: Amount,
) -> (Amount, Vec<GrantTake>) {
    let contract: &Arc<str> = &c.shared_id;
    let mut takes = Vec::new();
    let mut taken = Amount::ZERO;
    if let Some(grants) = tenant.grants.get(&c.id) {
        for g in grants.active(lever, time_ms) {
            if taken >= need {
                break;
            }
            let key = GrantKey {
                tenant: tenant.name.clone(),
                contract: contract.clone(),
                lever: lever_name.clone(),
                id: Arc::from(g.id.as_str()),
            };
            let used = m.grant_used.get(&key).copied().unwrap_or_default();
            let left = g.amount.saturating_sub(used);
            if left <= Amount::ZERO {
                continue;
            }
            let take = left.min(need.saturating_sub(taken));
            taken = taken.saturating_add(take);
            takes.push(GrantTake { key, amount: take });
        }
    }
    (taken, takes)
}

impl QuotaBook {
    /// How much of each of `grants` (of one contract, whose chain root is `root`) has
    /// been consumed, read under one shard lock.
    pub fn grants_used(&self, tenant: &Tenant, grants: &[&Grant], root: &str) -> Vec<Amount> {
        let s = lock(self.shard_for(&tenant.name, root));
        grants
            .iter()
            .map(|g| {
                let key = GrantKey {
                    tenant: tenant.name.clone(),
                    contract: Arc::from(g.contract.as_str()),
                    lever: Arc::from(g.lever.as_str()),
                    id: Arc::from(g.id.as_str()),
                };
                s.grant_used.get(&key).copied().unwrap_or_default()
            })
            .collect()
    }
}
