//! The per-event decision ([`QuotaBook::try_reserve`]): an event is checked against
//! every finite quota of its contract chain under the chain's shard lock and, when all
//! have room (counting grants), its usage is reserved; and [`Need`], the rule for what
//! an event needs from grants, shared with the bulk decision.

use std::sync::Arc;

use super::chain::{effective_quotas, thresholds_of, EffectiveQuota};
use super::periods::{contract_anchor, contract_tz, periods_at};
use super::reserved::{exceeded, Crossing, Decision, GrantTake, QuotaExceeded, Reserved};
use super::{QuotaBook, Row};
use crate::counters::agg::AggValue;
use crate::decimal::Amount;
use crate::registry::{Contract, Lever, Tenant};
use crate::store::quota_keys::{NotifiedKey, UsageKey};

/// `limit * pct / 100`, rounded up to the nano-unit: usage at the level has really
/// reached the threshold, and a positive threshold of a positive limit is never 0.
fn percent_of(limit: Amount, pct: u32) -> Amount {
    let x = limit.0.saturating_mul(pct as i128);
    Amount(x / 100 + i128::from(x % 100 > 0))
}

/// One planned row change of an event, before it is known to be admitted.
struct Planned {
    key: UsageKey,
    prev: Option<Row>,
    new: AggValue,
}

/// What an event needs from grants on one chain member, gathered over the member's finite
/// quotas. One rule for the per-event ([`QuotaBook::try_reserve`]) and the bulk
/// ([`QuotaBook::reserve_bulk`]) decision.
pub(super) struct Need<'q> {
    /// The event's value (its contribution to an additive row).
    value: Amount,
    /// Whether the lever adds up (only then can grants cover an excess).
    additive: bool,
    /// Largest excess over a hard quota that grants could still cover, and that quota.
    pub(super) hard: Option<(Amount, &'q EffectiveQuota)>,
    /// Largest excess over a soft quota (the event's whole value when grants cannot
    /// cover it).
    pub(super) soft: Amount,
}

impl<'q> Need<'q> {
    pub(super) fn new(value: Amount, additive: bool) -> Need<'q> {
        Need {
            value,
            additive,
            hard: None,
            soft: Amount::ZERO,
        }
    }

    /// Accounts quota `q` (limit `limit`) on a row the event takes to `new`, whose
    /// allowance already holds `granted`, and updates `decision`. `Err` when a hard quota
    /// is exceeded by more than grants may cover (more than the event's own value, or on
    /// a lever that does not add up).
    pub(super) fn add(
        &mut self,
        decision: &mut Decision,
        q: &'q EffectiveQuota,
        limit: Amount,
        new: Amount,
        granted: Amount,
    ) -> Result<(), ()> {
        *decision = match (*decision, q.hard) {
            (_, true) => Decision::WithinHard,
            (Decision::Unlimited, false) => Decision::WithinSoft,
            (d, false) => d,
        };
        let excess = new.saturating_sub(limit.saturating_add(granted));
        if excess > Amount::ZERO {
            let coverable = self.additive && excess <= self.value;
            if q.hard {
                if !coverable {
                    return Err(());
                }
                if self.hard.is_none_or(|(n, _)| excess > n) {
                    self.hard = Some((excess, q));
                }
            } else {
                self.soft = self.soft.max(if coverable { excess } else { self.value });
            }
        }
        Ok(())
    }
}

impl QuotaBook {
    /// Checks an event against every hard limit of its contract chain and, when all have
    /// room (counting the grants in force at the event's time), reserves its usage and
    /// the grant allowance it takes. On success the reservations and any threshold
    /// crossings are appended to `out`.
    ///
    /// The chain is resolved again under the shard lock: a concurrent re-parenting
    /// ([`QuotaBook::rehome`]) changes the registry while holding the old and new root
    /// shards, so a decision always sees the chain that owns its shard.
    pub fn try_reserve(
        &self,
        tenant: &Tenant,
        contract: &Arc<Contract>,
        lever: &Lever,
        value: Amount,
        time_ms: i64,
        out: &mut Reserved,
    ) -> Result<Decision, QuotaExceeded> {
        let (chain, mut guard) = self.lock_chain(tenant, contract);
        let m = &mut *guard;
        let additive = lever.aggregation.is_additive();
        let delta = AggValue::of_event(lever.aggregation, value, time_ms, 0);
        let v = delta.amount();
        let lever_name: Arc<str> = Arc::from(lever.id.as_str());
        let notify = tenant.webhook.is_some();
        let mut decision = Decision::Unlimited;
        // Per chain member: its rows, the grant allowance the event takes, and crossings.
        let mut planned: Vec<(Vec<Planned>, Amount, Vec<GrantTake>)> =
            Vec::with_capacity(chain.len());
        let mut crossings: Vec<Crossing> = Vec::new();
        for c in &chain {
            let quotas = effective_quotas(tenant, c, &lever.id);
            // Looked up once per chain member, and only when crossings are recorded.
            let thresholds = if notify && !quotas.is_empty() {
                thresholds_of(tenant, c)
            } else {
                Vec::new()
            };
            let contract: Arc<str> = c.shared_id.clone();
            let family = UsageKey::family(&tenant.name, &contract, &lever_name);
            let mut rows: Vec<Planned> = Vec::with_capacity(5);
            // Allowance the hard and soft quotas need from grants.
            let mut need = Need::new(v, additive);
            for (kind, period) in periods_at(time_ms, contract_tz(c), contract_anchor(c)) {
                let key = UsageKey::with_family(
                    family,
                    tenant.name.clone(),
                    contract.clone(),
                    lever_name.clone(),
                    kind,
                    period.start_ms,
                    period.end_ms,
                );
                let prev = m.rows.get(&key).copied();
                let new = prev.map(|r| r.value.merge(delta)).unwrap_or(delta);
                let granted = prev.map(|r| r.granted).unwrap_or(Amount::ZERO);
                if let Some(q) = quotas.iter().find(|q| q.kind == kind) {
                    if let Some(limit) = q.limit {
                        if need
                            .add(&mut decision, q, limit, new.amount(), granted)
                            .is_err()
                        {
                            return Err(exceeded(c, lever, q, limit));
                        }
                        if notify {
                            let prev_amount = prev.map(|r| r.value.amount()).unwrap_or_default();
                            for &t in &thresholds {
                                let level = percent_of(limit, t);
                                let done = || {
                                    m.notified.contains(&NotifiedKey {
                                        row: key.clone(),
                                        threshold: t,
                                        limit,
                                    })
                                };
                                if prev_amount < level && new.amount() >= level && !done() {
                                    crossings.push(Crossing {
                                        key: key.clone(),
                                        threshold: t,
                                        usage: new.amount(),
                                        limit,
                                        hard: q.hard,
                                    });
                                }
                            }
                        }
                    }
                }
                rows.push(Planned { key, prev, new });
            }
            let (need_hard, need_soft) = (need.hard, need.soft);
            let need = need_hard.map(|(n, _)| n).unwrap_or_default().max(need_soft);
            let (taken, takes) = if additive && need > Amount::ZERO {
                super::grants::draw(m, tenant, c, &lever.id, &lever_name, time_ms, need)
            } else {
                (Amount::ZERO, Vec::new())
            };
            if let Some((n, q)) = need_hard {
                if taken < n {
                    return Err(exceeded(c, lever, q, q.limit.unwrap_or_default()));
                }
            }
            if need_soft > taken {
                decision = Decision::Overage;
            }
            planned.push((rows, taken, takes));
        }
        for (rows, taken, takes) in planned {
            for p in rows {
                let granted = p.prev.map(|r| r.granted).unwrap_or_default();
                m.rows.insert(
                    p.key.clone(),
                    Row {
                        value: p.new,
                        granted: granted.saturating_add(taken),
                    },
                );
                out.reserve_row(p.key, p.prev, delta, taken, p.new);
            }
            for t in takes {
                let used = m.grant_used.entry(t.key.clone()).or_default();
                *used = used.saturating_add(t.amount);
                out.takes.push(t);
            }
        }
        for c in &crossings {
            m.notified.insert(c.notified_key());
        }
        out.crossings.extend(crossings);
        out.last_ancestors.clear();
        out.last_ancestors
            .extend(chain.iter().skip(1).map(|c| c.id.clone()));
        Ok(decision)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_is_exact() {
        let l = Amount::parse_input("10000").unwrap();
        assert_eq!(percent_of(l, 80).to_string(), "8000");
        let l = Amount::parse_input("0.000000003").unwrap();
        assert_eq!(percent_of(l, 50).to_string(), "0.000000002");
        let l = Amount::parse_input("0.000000001").unwrap();
        assert_eq!(percent_of(l, 50).to_string(), "0.000000001");
        assert_eq!(percent_of(l, 100).to_string(), "0.000000001");
    }
}
