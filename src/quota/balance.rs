//! The balance of a contract (SPEC 3): per lever and quota period, the limit, the
//! allowance from grants, the usage and what is left, answered from the quota book in
//! memory.

use std::sync::Arc;

use serde::Serialize;

use crate::decimal::Amount;
use crate::error::Error;
use crate::quota::book::{
    chain, contract_anchor, contract_tz, effective_quotas, QuotaBook, UsageKey,
};
use crate::quota::period::period_containing;
use crate::registry::{Grant, Tenant};
use crate::window::rfc3339;

/// One lever and period of a balance.
#[derive(Debug, Serialize)]
pub struct BalanceRow {
    /// Lever.
    pub lever: String,
    /// Period kind.
    pub period: &'static str,
    /// Current period start.
    pub period_start: String,
    /// Current period end (absent for lifetime).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub period_end: Option<String>,
    /// Limit (`-1` = unlimited).
    pub limit: String,
    /// Extra allowance from grants.
    pub granted: Amount,
    /// Usage in the current period.
    pub usage: Amount,
    /// What is left before the limit (`null` when unlimited).
    pub remaining: Option<Amount>,
    /// Usage beyond limit plus grants.
    pub overage: Amount,
    /// `hard` or `soft`.
    pub mode: &'static str,
    /// Whether the contract may still use the lever (soft quotas always may).
    pub has_access: bool,
}

/// The balance of one contract.
#[derive(Debug, Serialize)]
pub struct Balance {
    /// The contract.
    pub contract: String,
    /// One row per lever and quota period.
    pub levers: Vec<BalanceRow>,
}

/// What is left of the grants of `contract` on `lever` in force at `now`.
fn grants_left(
    quotas: &QuotaBook,
    tenant: &Tenant,
    contract: &Arc<str>,
    lever: &str,
    now: i64,
    root: &str,
) -> Amount {
    let Some(grants) = tenant.grants.get(&**contract).map(|g| Arc::clone(&g)) else {
        return Amount::ZERO;
    };
    if !tenant
        .lever(lever)
        .is_some_and(|l| l.aggregation.is_additive())
    {
        return Amount::ZERO;
    }
    let active: Vec<&Grant> = grants.active(lever, now).collect();
    let used = quotas.grants_used(tenant, &active, root);
    active.iter().zip(used).fold(Amount::ZERO, |acc, (g, u)| {
        acc.saturating_add(g.amount.saturating_sub(u).max(Amount::ZERO))
    })
}

/// The balance of `contract` at `now`, of one lever or (`None`) of every lever in name
/// order. `not_found` for an unknown contract or lever.
pub fn balance(
    quotas: &QuotaBook,
    tenant: &Tenant,
    contract: &str,
    lever: Option<&str>,
    now: i64,
) -> Result<Balance, Error> {
    let c = tenant
        .contract(contract)
        .ok_or_else(|| Error::not_found("contract", contract))?;
    let levers: Vec<String> = match lever {
        Some(l) => {
            if tenant.levers.get(l).is_none() {
                return Err(Error::not_found("lever", l));
            }
            vec![l.to_string()]
        }
        None => {
            let mut names: Vec<String> = tenant.levers.iter().map(|l| l.key().clone()).collect();
            names.sort();
            names
        }
    };
    let root = chain(tenant, &c)
        .last()
        .map(|r| r.id.clone())
        .unwrap_or_default();
    let tz = contract_tz(&c);
    let anchor = contract_anchor(&c);
    let contract_id: Arc<str> = Arc::from(c.id.as_str());
    let mut rows = Vec::new();
    for lever in levers {
        for eq in effective_quotas(tenant, &c, &lever) {
            let period = period_containing(eq.kind, now, tz, anchor);
            let key = UsageKey::new(
                tenant.name.clone(),
                contract_id.clone(),
                Arc::from(lever.as_str()),
                eq.kind,
                period.start_ms,
                period.end_ms,
            );
            let row = quotas.row(&key, &root);
            let usage = row.map(|r| r.value.amount()).unwrap_or(Amount::ZERO);
            // Allowance from grants: what they covered in this period plus what is left
            // of the grants in force now.
            let granted = row
                .map(|r| r.granted)
                .unwrap_or(Amount::ZERO)
                .saturating_add(grants_left(
                    quotas,
                    tenant,
                    &contract_id,
                    &lever,
                    now,
                    &root,
                ));
            let (limit, remaining, overage, has_access) = match eq.limit {
                None => ("-1".to_string(), None, Amount::ZERO, true),
                Some(l) => {
                    let allowance = l.saturating_add(granted);
                    let remaining = if usage >= allowance {
                        Amount::ZERO
                    } else {
                        allowance.saturating_sub(usage)
                    };
                    let overage = if usage > allowance {
                        usage.saturating_sub(allowance)
                    } else {
                        Amount::ZERO
                    };
                    let access = !eq.hard || remaining > Amount::ZERO;
                    (l.to_string(), Some(remaining), overage, access)
                }
            };
            let lifetime = period.end_ms == i64::MAX;
            rows.push(BalanceRow {
                lever: lever.clone(),
                period: eq.kind.as_str(),
                period_start: if lifetime {
                    c.created_at.clone()
                } else {
                    rfc3339(period.start_ms)
                },
                period_end: (!lifetime).then(|| rfc3339(period.end_ms)),
                limit,
                granted,
                usage,
                remaining,
                overage,
                mode: if eq.hard { "hard" } else { "soft" },
                has_access,
            });
        }
    }
    Ok(Balance {
        contract: c.id.clone(),
        levers: rows,
    })
}
