//! Taking usage back out of the book: the rollback of reservations whose commit failed
//! ([`QuotaBook::rollback`]), and retractions of committed events
//! ([`QuotaBook::rows_counted`], [`QuotaBook::subtract`]). Rows are looked up in the
//! shard that owns them now, so a re-parenting in between is harmless.

use std::sync::Arc;

use super::periods::{contract_anchor, contract_tz, periods_at};
use super::reserved::Reserved;
use super::{QuotaBook, Row};
use crate::counters::agg::AggValue;
use crate::decimal::Amount;
use crate::registry::{Contract, Tenant};
use crate::store::quota_keys::UsageKey;

impl QuotaBook {
    /// Undoes reservations whose commit failed, newest first. Rows are looked up in the
    /// shard that owns them now, so a re-parenting since the reservation is harmless.
    pub fn rollback(&self, tenant: &Tenant, reserved: &Reserved) {
        for r in reserved.rows.iter().rev() {
            let mut m = self.lock_owner(tenant, &r.key.contract);
            let Some(cur) = m.rows.get(&r.key).copied() else {
                continue;
            };
            let value = match (cur.value, r.delta) {
                (AggValue::Sum(c), AggValue::Sum(d)) => Some(AggValue::Sum(c - d)),
                // Max/latest cannot be subtracted: restore only if nobody moved it since.
                _ if cur.value == r.new => r.prev.map(|p| p.value),
                _ => Some(cur.value),
            };
            match value {
                Some(value) => {
                    m.rows.insert(
                        r.key.clone(),
                        Row {
                            value,
                            granted: cur.granted.saturating_sub(r.granted),
                        },
                    );
                }
                None => {
                    m.rows.remove(&r.key);
                }
            }
        }
        for t in reserved.takes.iter().rev() {
            let mut m = self.lock_owner(tenant, &t.key.contract);
            if let Some(used) = m.grant_used.get_mut(&t.key) {
                *used = used.saturating_sub(t.amount);
            }
        }
        for c in &reserved.crossings {
            let mut m = self.lock_owner(tenant, &c.key.contract);
            m.notified.remove(&c.notified_key());
        }
    }

    /// The period rows an event on `lever` at `time_ms` counted in, for the contracts
    /// `members` (the event's contract and the ancestors recorded with it), keeping
    /// only rows still held: a row the event counted in exists (unless its period ended
    /// before the horizon, when nothing can change it any more).
    pub fn rows_counted(
        &self,
        tenant: &Tenant,
        members: &[Arc<Contract>],
        lever: &str,
        time_ms: i64,
    ) -> Vec<UsageKey> {
        let lever: Arc<str> = Arc::from(lever);
        let mut out = Vec::new();
        for c in members {
            let id: Arc<str> = Arc::from(c.id.as_str());
            for (kind, p) in periods_at(time_ms, contract_tz(c), contract_anchor(c)) {
                let key = UsageKey::new(
                    tenant.name.clone(),
                    id.clone(),
                    lever.clone(),
                    kind,
                    p.start_ms,
                    p.end_ms,
                );
                if self
                    .lock_owner(tenant, &key.contract)
                    .rows
                    .contains_key(&key)
                {
                    out.push(key);
                }
            }
        }
        out
    }

    /// Subtracts `amount` from the usage of `keys` (a retraction that has been
    /// committed). Rows no longer held (periods past the horizon) are left alone.
    pub fn subtract(&self, tenant: &Tenant, keys: &[UsageKey], amount: Amount) {
        for k in keys {
            let mut m = self.lock_owner(tenant, &k.contract);
            if let Some(row) = m.rows.get_mut(k) {
                if let AggValue::Sum(v) = row.value {
                    row.value = AggValue::Sum(v - amount.0);
                }
            }
        }
    }
}
