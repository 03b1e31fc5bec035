//! The bulk decision ([`QuotaBook::reserve_bulk`]): the events of one chain root decided
//! in order in one hold of the root's shard lock, each exactly as the per-event decision
//! would, for the plain case (no webhook, no grants on the lever).

use std::sync::Arc;

use super::chain::{chain, effective_quotas, EffectiveQuota};
use super::decide::Need;
use super::periods::{contract_anchor, contract_tz, periods_at};
use super::reserved::{exceeded, Decision, QuotaExceeded, Reserved};
use super::{QuotaBook, Row};
use crate::counters::agg::AggValue;
use crate::decimal::Amount;
use crate::hash::FastHashMap;
use crate::quota::period::PeriodKind;
use crate::registry::{Contract, Lever, Tenant};
use crate::store::quota_keys::UsageKey;
use crate::sync::lock;

impl QuotaBook {
    /// Decides events on `lever` whose contracts share the chain root `root`, in order,
    /// in one hold of that root's shard lock: each event is checked against every
    /// finite quota of its chain exactly as [`QuotaBook::try_reserve`] checks it, seeing
    /// the usage of the events before it, and the usage of the admitted ones is reserved
    /// with one [`Reservation`] per row. The registry is read once per contract for the
    /// hold (the hold is one atomic step, like a single decision).
    ///
    /// Only for the plain case, where a decision is the limits alone: the tenant records
    /// no threshold crossings (no webhook) and no contract of the chains has a grant on
    /// the lever. Returns `None`, changing nothing, otherwise, or when a contract's chain
    /// no longer ends at `root` (a re-parenting since the caller looked): the caller then
    /// decides the events one by one.
    ///
    /// Per event: `Ok((decision, ancestors))` or the hard limit it would exceed.
    #[allow(clippy::type_complexity)]
    pub fn reserve_bulk(
        &self,
        tenant: &Tenant,
        root: &str,
        lever: &Lever,
        items: &[(Arc<Contract>, Amount, i64)],
        out: &mut Reserved,
    ) -> Option<Vec<Result<(Decision, Arc<[String]>), QuotaExceeded>>> {
        struct Member {
            contract: Arc<Contract>,
            /// The finite quotas in force on the lever.
            quotas: Vec<EffectiveQuota>,
            family: u64,
        }
        struct Local {
            key: UsageKey,
            prev: Option<Row>,
            cur: Option<AggValue>,
            delta: Option<AggValue>,
        }
        if tenant.webhook.is_some() {
            return None;
        }
        let mut guard = lock(self.shard_for(&tenant.name, root));
        let m = &mut *guard;
        let lever_name: Arc<str> = Arc::from(lever.id.as_str());
        // Resolve every contract's chain first: nothing changes unless all qualify.
        let mut members: Vec<Member> = Vec::new();
        let mut member_of: FastHashMap<String, usize> = FastHashMap::default();
        let mut chains: FastHashMap<String, (Vec<usize>, Arc<[String]>)> = FastHashMap::default();
        for (contract, _, _) in items {
            if chains.contains_key(contract.id.as_str()) {
                continue;
            }
            let fresh = tenant
                .contract(&contract.id)
                .unwrap_or_else(|| contract.clone());
            let members_now = chain(tenant, &fresh);
            if members_now.last().map(|c| c.id.as_str()) != Some(root) {
                return None;
            }
            let mut idx = Vec::with_capacity(members_now.len());
            for c in &members_now {
                let i = match member_of.get(c.id.as_str()) {
                    Some(&i) => i,
                    None => {
                        if tenant
                            .grants
                            .get(&c.id)
                            .is_some_and(|g| g.any_for(&lever.id))
                        {
                            return None;
                        }
                        members.push(Member {
                            contract: c.clone(),
                            quotas: effective_quotas(tenant, c, &lever.id)
                                .into_iter()
                                .filter(|q| q.limit.is_some())
                                .collect(),
                            family: UsageKey::family(&tenant.name, &c.shared_id, &lever_name),
                        });
                        member_of.insert(c.id.clone(), members.len() - 1);
                        members.len() - 1
                    }
                };
                idx.push(i);
            }
            let ancestors: Arc<[String]> =
                members_now.iter().skip(1).map(|c| c.id.clone()).collect();
            chains.insert(contract.id.clone(), (idx, ancestors));
        }

        let additive = lever.aggregation.is_additive();
        let mut local: Vec<Local> = Vec::new();
        let mut at: FastHashMap<(usize, PeriodKind, i64, i64), usize> = FastHashMap::default();
        let mut touched: Vec<usize> = Vec::with_capacity(10);
        let mut results = Vec::with_capacity(items.len());
        for (contract, value, time_ms) in items {
            let (idx, ancestors) = &chains[contract.id.as_str()];
            let delta = AggValue::of_event(lever.aggregation, *value, *time_ms, 0);
            let v = delta.amount();
            let mut decision = Decision::Unlimited;
            let mut verdict: Result<(), QuotaExceeded> = Ok(());
            touched.clear();
            'members: for &mi in idx {
                let mb = &members[mi];
                let c = &mb.contract;
                let mut need = Need::new(v, additive);
                for (kind, p) in periods_at(*time_ms, contract_tz(c), contract_anchor(c)) {
                    let li = *at
                        .entry((mi, kind, p.start_ms, p.end_ms))
                        .or_insert_with(|| {
                            let key = UsageKey::with_family(
                                mb.family,
                                tenant.name.clone(),
                                c.shared_id.clone(),
                                lever_name.clone(),
                                kind,
                                p.start_ms,
                                p.end_ms,
                            );
                            let prev = m.rows.get(&key).copied();
                            local.push(Local {
                                key,
                                prev,
                                cur: prev.map(|r| r.value),
                                delta: None,
                            });
                            local.len() - 1
                        });
                    touched.push(li);
                    let Some(q) = mb.quotas.iter().find(|q| q.kind == kind) else {
                        continue;
                    };
                    let limit = q.limit.expect("finite quotas only");
                    let row = &local[li];
                    let new = row.cur.map(|x| x.merge(delta)).unwrap_or(delta);
                    let granted = row.prev.map(|r| r.granted).unwrap_or(Amount::ZERO);
                    if need
                        .add(&mut decision, q, limit, new.amount(), granted)
                        .is_err()
                    {
                        verdict = Err(exceeded(c, lever, q, limit));
                        break 'members;
                    }
                }
                // No grants: nothing covers an excess.
                if let Some((_, q)) = need.hard {
                    verdict = Err(exceeded(c, lever, q, q.limit.unwrap_or_default()));
                    break 'members;
                }
                if need.soft > Amount::ZERO {
                    decision = Decision::Overage;
                }
            }
            match verdict {
                Err(e) => results.push(Err(e)),
                Ok(()) => {
                    for &li in &touched {
                        let l = &mut local[li];
                        l.cur = Some(l.cur.map(|x| x.merge(delta)).unwrap_or(delta));
                        l.delta = Some(l.delta.map(|x| x.merge(delta)).unwrap_or(delta));
                    }
                    results.push(Ok((decision, ancestors.clone())));
                }
            }
        }
        for l in local {
            let (Some(delta), Some(cur)) = (l.delta, l.cur) else {
                continue;
            };
            let granted = l.prev.map(|r| r.granted).unwrap_or_default();
            m.rows.insert(
                l.key.clone(),
                Row {
                    value: cur,
                    granted,
                },
            );
            out.reserve_row(l.key, l.prev, delta, Amount::ZERO, cur);
        }
        Some(results)
    }
}

#[cfg(test)]
mod tests {
    use super::super::testkit::{all_rows, contract, lever, tenant};
    use super::*;

    /// The bulk decision of a root's events gives exactly the per-event decisions (same
    /// admissions, same decision kinds, same exceeded quota) and the same rows, with
    /// hard and soft quotas on a pool and its children, every aggregation, limits that
    /// are reached mid-sequence, and prior usage.
    #[test]
    fn bulk_decisions_equal_event_by_event() {
        let mut x = 0x9E3779B97F4A7C15u64;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let base = 1_769_889_600_000i64;
        // Rejections, overages, admissions under a hard limit, others.
        let mut seen = [0usize; 4];
        for agg in ["sum", "count", "max", "latest"] {
            let lever = lever(agg);
            for round in 0..30 {
                let t = tenant();
                let q = |period: &str, limit: u64, hard: bool| {
                    format!(
                        r#"{{"lever":"l","period":"{period}","limit":"{limit}","mode":"{}"}}"#,
                        if hard { "hard" } else { "soft" }
                    )
                };
                let periods = ["day", "week", "month", "billing_period", "lifetime"];
                let mut pick = |n: u64| -> String {
                    let k = next() % 3;
                    let list: Vec<String> = (0..k)
                        .map(|_| {
                            q(
                                periods[(next() % 5) as usize],
                                1 + next() % n,
                                next() % 2 == 0,
                            )
                        })
                        .collect();
                    format!("[{}]", list.join(","))
                };
                let pool_q = pick(4000);
                contract(&t, "pool", &pool_q, None);
                let kids: Vec<Arc<Contract>> = (0..3)
                    .map(|k| {
                        let qs = pick(2000);
                        contract(&t, &format!("kid{k}"), &qs, Some("pool"))
                    })
                    .collect();
                let pool = t.contract("pool").expect("pool");
                let n = 1 + (next() % 200) as usize;
                let items: Vec<(Arc<Contract>, Amount, i64)> = (0..n)
                    .map(|_| {
                        let c = if next() % 5 == 0 {
                            pool.clone()
                        } else {
                            kids[(next() % 3) as usize].clone()
                        };
                        let time = base - 2 * 86_400_000 + (next() % (4 * 86_400_000)) as i64;
                        let v = if agg == "count" {
                            Amount::ONE
                        } else {
                            Amount((next() % 60) as i128 * 1_000_000_000)
                        };
                        (c, v, time)
                    })
                    .collect();
                let (a, b) = (QuotaBook::new(4), QuotaBook::new(4));
                // Some usage before.
                for book in [&a, &b] {
                    let mut pre = Reserved::default();
                    let _ = book.try_reserve(&t, &kids[0], &lever, Amount::ONE, base, &mut pre);
                }
                let mut ra = Reserved::default();
                let expected: Vec<_> = items
                    .iter()
                    .map(|(c, v, time)| {
                        a.try_reserve(&t, c, &lever, *v, *time, &mut ra)
                            .map(|d| (d, ra.last_ancestors.clone()))
                    })
                    .collect();
                let mut rb = Reserved::default();
                let got = b
                    .reserve_bulk(&t, "pool", &lever, &items, &mut rb)
                    .expect("no grants, no webhook");
                let got: Vec<_> = got
                    .into_iter()
                    .map(|r| r.map(|(d, anc)| (d, anc.to_vec())))
                    .collect();
                assert_eq!(got, expected, "{agg} round {round}: {pool_q}");
                for r in &got {
                    match r {
                        Err(_) => seen[0] += 1,
                        Ok((Decision::Overage, _)) => seen[1] += 1,
                        Ok((Decision::WithinHard, _)) => seen[2] += 1,
                        Ok(_) => seen[3] += 1,
                    }
                }
                assert_eq!(all_rows(&a), all_rows(&b), "{agg} round {round}");
                if agg == "sum" || agg == "count" {
                    // One reservation per row, holding the whole change of the row.
                    let sum =
                        |r: &Reserved| -> i128 { r.rows.iter().map(|x| x.delta.amount().0).sum() };
                    assert_eq!(sum(&ra), sum(&rb));
                }
            }
        }
        assert!(
            seen.iter().all(|&n| n > 50),
            "every kind of decision occurs: {seen:?}"
        );
    }

    /// A chain that no longer ends at the given root makes the bulk path decline,
    /// changing nothing.
    #[test]
    fn bulk_declines_a_moved_root() {
        let t = tenant();
        let pool = contract(&t, "pool", "[]", None);
        let lever = lever("sum");
        let book = QuotaBook::new(4);
        let items = vec![(pool.clone(), Amount::ONE, 1_769_889_600_000i64)];
        let mut r = Reserved::default();
        assert!(book
            .reserve_bulk(&t, "pool", &lever, &items, &mut r)
            .is_some());
        assert_eq!(r.rows.len(), 5);
        // A chain that no longer ends at the given root.
        let mut r = Reserved::default();
        assert!(book
            .reserve_bulk(&t, "other", &lever, &items, &mut r)
            .is_none());
        assert!(r.rows.is_empty());
    }
}
