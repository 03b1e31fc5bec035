//! `GET /v1/contracts/{contract}/balance[?lever=]` (SPEC 3), answered from memory.

use std::sync::Arc;

use crate::http::util::ReqBody;
use hyper::{Request, Response, StatusCode};
use serde::Serialize;

use crate::decimal::Amount;
use crate::http::error::{ApiError, ErrorCode};
use crate::http::router::Ctx;
use crate::http::util::{json, only_params, query_map, Body};
use crate::quota::book::{chain, contract_anchor, contract_tz, effective_quotas, UsageKey};
use crate::quota::period::period_containing;
use crate::window::{now_ms, rfc3339};

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

/// What is left of the grants of `contract` on `lever` in force at `now`.
fn grants_left(
    ctx: &Ctx,
    tenant: &crate::registry::Tenant,
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
    let active: Vec<&crate::registry::Grant> = grants.active(lever, now).collect();
    let used = ctx.state.quotas.grants_used(tenant, &active, root);
    active.iter().zip(used).fold(Amount::ZERO, |acc, (g, u)| {
        acc.saturating_add(g.amount.saturating_sub(u).max(Amount::ZERO))
    })
}

/// Answers the balance of one contract.
pub fn get(ctx: &Ctx, contract: &str, req: &Request<ReqBody>) -> Result<Response<Body>, ApiError> {
    let q = query_map(req.uri().query())?;
    only_params(&q, &["lever"])?;
    let tenant = ctx.tenant()?;
    let c = tenant.contract(contract).ok_or_else(|| {
        ApiError::new(
            ErrorCode::NotFound,
            format!("contract {contract:?} does not exist"),
        )
    })?;
    let levers: Vec<String> = match q.get("lever") {
        Some(l) => {
            if tenant.levers.get(l.as_str()).is_none() {
                return Err(ApiError::new(
                    ErrorCode::NotFound,
                    format!("lever {l:?} does not exist"),
                ));
            }
            vec![l.clone()]
        }
        None => {
            let mut names: Vec<String> = tenant.levers.iter().map(|l| l.key().clone()).collect();
            names.sort();
            names
        }
    };
    let now = now_ms();
    let root = chain(&tenant, &c)
        .last()
        .map(|r| r.id.clone())
        .unwrap_or_default();
    let tz = contract_tz(&c);
    let anchor = contract_anchor(&c);
    let contract_id: Arc<str> = Arc::from(c.id.as_str());
    let mut rows = Vec::new();
    for lever in levers {
        for eq in effective_quotas(&tenant, &c, &lever) {
            let period = period_containing(eq.kind, now, tz, anchor);
            let key = UsageKey::new(
                tenant.name.clone(),
                contract_id.clone(),
                Arc::from(lever.as_str()),
                eq.kind,
                period.start_ms,
                period.end_ms,
            );
            let row = ctx.state.quotas.row(&key, &root);
            let usage = row.map(|r| r.value.amount()).unwrap_or(Amount::ZERO);
            // Allowance from grants: what they covered in this period plus what is left
            // of the grants in force now.
            let granted = row
                .map(|r| r.granted)
                .unwrap_or(Amount::ZERO)
                .saturating_add(grants_left(ctx, &tenant, &contract_id, &lever, now, &root));
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
    Ok(json(
        StatusCode::OK,
        &serde_json::json!({"contract": c.id, "levers": rows}),
    ))
}
