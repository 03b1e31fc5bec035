//! The grouped reservation of events whose chain has no finite quota on their lever
//! ([`QuotaBook::reserve_unlimited`]): nothing to decide, so the events only add to
//! their period rows, in one step under the chain's shard lock.

use std::sync::Arc;

use super::chain::chain_unlimited;
use super::periods::{contract_anchor, contract_tz, periods_at, PeriodSet};
use super::reserved::Reserved;
use super::{QuotaBook, Row};
use crate::counters::agg::AggValue;
use crate::decimal::Amount;
use crate::quota::period::PeriodKind;
use crate::registry::{Contract, Lever, Tenant};
use crate::store::quota_keys::UsageKey;

impl QuotaBook {
    /// Reserves the usage of events on `lever` of `contract` (each `(time_ms, value)`)
    /// whose chain has no finite quota on the lever, in one step under the chain's shard
    /// lock: with no limit there is nothing to decide, no grant to take and no threshold
    /// to cross, so the events only add to their period rows, and adding them together
    /// gives the rows the per-event path ([`QuotaBook::try_reserve`]) would (every
    /// [`AggValue::merge`] is associative). One [`Reservation`] per row is appended to
    /// `out`.
    ///
    /// Returns the ancestors the events counted toward (nearest first), or `None`,
    /// changing nothing, when a member of the chain has a finite quota on the lever now
    /// (the registry changed since the caller looked): the caller must then decide the
    /// events one by one.
    pub fn reserve_unlimited(
        &self,
        tenant: &Tenant,
        contract: &Arc<Contract>,
        lever: &Lever,
        events: &[(i64, Amount)],
        out: &mut Reserved,
    ) -> Option<Vec<String>> {
        let (chain, mut guard) = self.lock_chain(tenant, contract);
        if !chain_unlimited(tenant, &chain, &lever.id) {
            return None;
        }
        let m = &mut *guard;
        let lever_name: Arc<str> = Arc::from(lever.id.as_str());
        // The rows of one chain member: (kind, start, end, merged delta).
        let mut acc: Vec<(PeriodKind, i64, i64, AggValue)> = Vec::new();
        for c in &chain {
            acc.clear();
            let (tz, anchor) = (contract_tz(c), contract_anchor(c));
            // Consecutive events mostly share their periods: remember where the last
            // set's rows are.
            let mut last: Option<(PeriodSet, [usize; 5])> = None;
            for &(t, value) in events {
                let delta = AggValue::of_event(lever.aggregation, value, t, 0);
                let set = periods_at(t, tz, anchor);
                if let Some((s, at)) = &last {
                    if *s == set {
                        for &x in at {
                            acc[x].3 = acc[x].3.merge(delta);
                        }
                        continue;
                    }
                }
                let mut at = [0usize; 5];
                for (j, (kind, p)) in set.iter().enumerate() {
                    let found = acc
                        .iter()
                        .position(|(k, s, e, _)| *k == *kind && *s == p.start_ms && *e == p.end_ms);
                    at[j] = match found {
                        Some(x) => {
                            acc[x].3 = acc[x].3.merge(delta);
                            x
                        }
                        None => {
                            acc.push((*kind, p.start_ms, p.end_ms, delta));
                            acc.len() - 1
                        }
                    };
                }
                last = Some((set, at));
            }
            let contract_id: Arc<str> = c.shared_id.clone();
            let family = UsageKey::family(&tenant.name, &contract_id, &lever_name);
            for &(kind, start, end, delta) in &acc {
                let key = UsageKey::with_family(
                    family,
                    tenant.name.clone(),
                    contract_id.clone(),
                    lever_name.clone(),
                    kind,
                    start,
                    end,
                );
                let prev = m.rows.get(&key).copied();
                let new = prev.map(|r| r.value.merge(delta)).unwrap_or(delta);
                let granted = prev.map(|r| r.granted).unwrap_or_default();
                m.rows.insert(
                    key.clone(),
                    Row {
                        value: new,
                        granted,
                    },
                );
                out.reserve_row(key, prev, delta, Amount::ZERO, new);
            }
        }
        Some(chain.iter().skip(1).map(|c| c.id.clone()).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::super::chain::chain;
    use super::super::reserved::Decision;
    use super::super::testkit::{all_rows, contract, lever, tenant};
    use super::*;

    /// The grouped reservation of unlimited levers gives exactly the rows the per-event
    /// decision gives, for every aggregation, across day, week, month and billing-period
    /// boundaries, for a contract and its parent; its rollback undoes it.
    #[test]
    fn grouped_reservation_equals_event_by_event() {
        let t = tenant();
        // The parent has an explicit unlimited (-1) entry: still no finite quota.
        let unlimited = r#"[{"lever":"l","period":"month","limit":"-1","mode":"hard"}]"#;
        contract(&t, "pool", unlimited, None);
        let child = contract(&t, "child", "[]", Some("pool"));
        // 2026-01-31T20:00:00Z: month, week and day boundaries within the events' spread.
        let base = 1_769_889_600_000i64;
        let mut x = 0x2545F4914F6CDD1Du64;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for agg in ["sum", "count", "max", "latest"] {
            let lever = lever(agg);
            for _ in 0..20 {
                let n = 1 + (next() % 300) as usize;
                let events: Vec<(i64, Amount)> = (0..n)
                    .map(|_| {
                        let t = base - 2 * 86_400_000 + (next() % (4 * 86_400_000)) as i64;
                        let v = Amount((next() % 5_000) as i128 * 1_000_000);
                        let v = if agg == "count" { Amount::ONE } else { v };
                        (t, v)
                    })
                    .collect();
                let (a, b) = (QuotaBook::new(4), QuotaBook::new(4));
                // Some usage before, so rows have a previous value.
                let mut pre = Reserved::default();
                for book in [&a, &b] {
                    book.try_reserve(&t, &child, &lever, Amount::ONE, base, &mut pre)
                        .expect("no limit");
                }
                let mut ra = Reserved::default();
                for &(time, v) in &events {
                    let d = a.try_reserve(&t, &child, &lever, v, time, &mut ra);
                    assert_eq!(d, Ok(Decision::Unlimited));
                }
                let before = all_rows(&b);
                let mut rb = Reserved::default();
                let anc = b.reserve_unlimited(&t, &child, &lever, &events, &mut rb);
                assert_eq!(anc, Some(vec!["pool".to_string()]));
                assert_eq!(all_rows(&a), all_rows(&b), "{agg}, {n} events");
                assert!(rb.rows.len() <= ra.rows.len());
                b.rollback(&t, &rb);
                if agg == "sum" || agg == "count" {
                    // Rows the events created are left at zero, as by the per-event path.
                    let after: Vec<_> = all_rows(&b)
                        .into_iter()
                        .filter(|(_, r)| r.value != AggValue::Sum(0))
                        .collect();
                    assert_eq!(after, before, "{agg}: rollback restores the rows");
                }
            }
        }
    }

    /// A finite quota anywhere in the chain (here on the parent, added after the caller
    /// looked) makes the grouped reservation refuse and change nothing.
    #[test]
    fn grouped_reservation_refuses_when_a_quota_applies() {
        let t = tenant();
        contract(&t, "pool", "[]", None);
        let child = contract(&t, "child", "[]", Some("pool"));
        let lever = lever("sum");
        let book = QuotaBook::new(4);
        let events = [(1_769_889_600_000i64, Amount::ONE)];
        let mut r = Reserved::default();
        assert!(chain_unlimited(&t, &chain(&t, &child), "l"));
        let finite = r#"[{"lever":"l","period":"lifetime","limit":"5","mode":"soft"}]"#;
        contract(&t, "pool", finite, None);
        assert!(!chain_unlimited(&t, &chain(&t, &child), "l"));
        assert_eq!(
            book.reserve_unlimited(&t, &child, &lever, &events, &mut r),
            None
        );
        assert!(r.rows.is_empty());
        assert!(book.is_empty());
        // Another lever's quota does not count.
        let other = r#"[{"lever":"other","period":"day","limit":"5","mode":"hard"}]"#;
        contract(&t, "pool", other, None);
        assert!(book
            .reserve_unlimited(&t, &child, &lever, &events, &mut r)
            .is_some());
        assert_eq!(r.rows.len(), 10);
    }
}
