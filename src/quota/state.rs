//! Quota usage per contract, lever and period, and the atomic quota decision (SPEC 3).
//!
//! Every accepted event adds to the usage of every period that contains its time (day,
//! week, month, billing period, lifetime) of its contract and of each ancestor in the
//! contract's parent chain. A contract and its whole parent chain live in one quota
//! shard, chosen by the root of the chain, so one lock covers every check an event
//! needs: under it the event is checked against every hard limit and, when all have
//! room, its usage is reserved. The reservation is written durably in the same batch as
//! the event's journal and dedupe records (merge operands in the `quota` column family)
//! and rolled back if that write fails. So under any concurrency a hard limit is never
//! exceeded, and usage after a crash equals what was acknowledged.
//!
//! Usage of `sum` and `count` levers adds up; for `max` and `latest` levers the period's
//! usage is the period's maximum or latest value.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use chrono_tz::Tz;

use super::period::{all_periods, PeriodKind};
use crate::counters::agg::AggValue;
use crate::counters::shard_of;
use crate::decimal::Amount;
use crate::registry::{Contract, Lever, Tenant};
use crate::store::keys::{get_str, get_time, put_str, put_time};

/// Longest chain followed: a contract and the most ancestors the admin API allows.
pub const MAX_CHAIN: usize = crate::http::handlers::admin::MAX_PARENT_DEPTH + 1;

/// One period's usage of one contract and lever.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct UsageKey {
    /// Tenant.
    pub tenant: Arc<str>,
    /// Contract id.
    pub contract: Arc<str>,
    /// Lever name.
    pub lever: Arc<str>,
    /// Period kind.
    pub kind: PeriodKind,
    /// Period start (epoch ms).
    pub start: i64,
    /// Period end (epoch ms, exclusive).
    pub end: i64,
}

impl UsageKey {
    /// Key in the `quota` column family.
    pub fn encode(&self) -> Vec<u8> {
        let mut k = Vec::with_capacity(self.tenant.len() + self.contract.len() + 40);
        put_str(&mut k, &self.tenant);
        put_str(&mut k, &self.contract);
        put_str(&mut k, &self.lever);
        k.push(self.kind.code());
        put_time(&mut k, self.start);
        put_time(&mut k, self.end);
        k
    }

    /// Inverse of [`UsageKey::encode`].
    pub fn decode(b: &[u8]) -> Option<UsageKey> {
        let (tenant, b) = get_str(b)?;
        let (contract, b) = get_str(b)?;
        let (lever, b) = get_str(b)?;
        let (&kind, b) = b.split_first()?;
        let (start, b) = get_time(b)?;
        let (end, b) = get_time(b)?;
        if !b.is_empty() {
            return None;
        }
        Some(UsageKey {
            tenant: Arc::from(tenant),
            contract: Arc::from(contract),
            lever: Arc::from(lever),
            kind: PeriodKind::from_code(kind)?,
            start,
            end,
        })
    }
}

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

/// A hard limit that an event would exceed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuotaExceeded {
    /// Contract whose quota it is (the event's own or an ancestor).
    pub contract: String,
    /// Lever.
    pub lever: String,
    /// Period kind.
    pub kind: PeriodKind,
    /// The limit.
    pub limit: Amount,
}

impl std::fmt::Display for QuotaExceeded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {} limit {} reached for {}",
            self.lever,
            self.kind.as_str(),
            self.limit,
            self.contract
        )
    }
}

/// Usage reserved by one event, to be rolled back if its commit fails.
#[derive(Debug, Clone)]
pub struct Reservation {
    shard: usize,
    /// The usage row.
    pub key: UsageKey,
    prev: Option<AggValue>,
    /// The event's contribution.
    pub delta: AggValue,
    new: AggValue,
}

/// In-memory usage of current (and recent) periods, sharded by root contract.
#[derive(Debug)]
pub struct QuotaBook {
    shards: Box<[Mutex<HashMap<UsageKey, AggValue>>]>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Time zone of a contract (UTC when unparseable, which validation prevents).
pub fn contract_tz(c: &Contract) -> Tz {
    c.tz.unwrap_or(Tz::UTC)
}

/// Billing anchor of a contract: its `anchor`, else its creation time.
pub fn contract_anchor(c: &Contract) -> i64 {
    c.anchor_ms
}

type PeriodSet = [(PeriodKind, super::period::Period); 5];
/// Cached periods: valid from, valid to, the set.
type PeriodCache = HashMap<(Tz, i64), (i64, i64, PeriodSet)>;

thread_local! {
    /// Periods per (zone, anchor), valid while `t` stays inside all of them: period
    /// boundaries change rarely, so most events reuse the last computation.
    static PERIODS: std::cell::RefCell<PeriodCache> = std::cell::RefCell::new(HashMap::new());
}

/// [`all_periods`], memoised per thread.
pub fn periods_at(t_ms: i64, tz: Tz, anchor_ms: i64) -> PeriodSet {
    PERIODS.with(|cache| {
        let mut cache = cache.borrow_mut();
        if let Some((lo, hi, set)) = cache.get(&(tz, anchor_ms)) {
            if *lo <= t_ms && t_ms < *hi {
                return *set;
            }
        }
        let set = all_periods(t_ms, tz, anchor_ms);
        let lo = set
            .iter()
            .map(|(_, p)| p.start_ms)
            .max()
            .unwrap_or(i64::MIN);
        let hi = set.iter().map(|(_, p)| p.end_ms).min().unwrap_or(i64::MAX);
        if cache.len() >= 16_384 {
            cache.clear();
        }
        cache.insert((tz, anchor_ms), (lo, hi, set));
        set
    })
}

impl QuotaBook {
    /// Creates `n` empty shards.
    pub fn new(n: usize) -> QuotaBook {
        QuotaBook {
            shards: (0..n.max(1)).map(|_| Mutex::new(HashMap::new())).collect(),
        }
    }

    /// Loads a stored usage row (at start-up).
    pub fn load(&self, key: UsageKey, value: AggValue, root: &str) {
        let s = shard_of(&key.tenant, root, self.shards.len());
        let mut m = lock(&self.shards[s]);
        match m.get_mut(&key) {
            Some(cur) => *cur = cur.merge(value),
            None => {
                m.insert(key, value);
            }
        }
    }

    /// Checks an event against every hard limit of its contract chain and, when all have
    /// room, reserves its usage. On success the reservations are appended to `out`.
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
        out: &mut Vec<Reservation>,
    ) -> Result<(), QuotaExceeded> {
        let mut current = contract.clone();
        let (shard, chain, mut m) = loop {
            let first = chain(tenant, &current);
            let root = &first.last().expect("chain has the contract").id;
            let shard = shard_of(&tenant.name, root, self.shards.len());
            let m = lock(&self.shards[shard]);
            let fresh_contract = tenant
                .contract(&contract.id)
                .unwrap_or_else(|| contract.clone());
            let fresh = chain(tenant, &fresh_contract);
            if fresh.last().map(|c| &c.id) == first.last().map(|c| &c.id) {
                break (shard, fresh, m);
            }
            drop(m);
            current = fresh_contract;
        };
        let chain = chain.as_slice();
        let delta = AggValue::of_event(lever.aggregation, value, time_ms, 0);
        let lever_name: Arc<str> = Arc::from(lever.id.as_str());
        let mut planned: Vec<(UsageKey, Option<AggValue>, AggValue)> =
            Vec::with_capacity(chain.len() * 5);
        for c in chain {
            let quotas = effective_quotas(tenant, c, &lever.id);
            let contract: Arc<str> = Arc::from(c.id.as_str());
            for (kind, period) in periods_at(time_ms, contract_tz(c), contract_anchor(c)) {
                let key = UsageKey {
                    tenant: tenant.name.clone(),
                    contract: contract.clone(),
                    lever: lever_name.clone(),
                    kind,
                    start: period.start_ms,
                    end: period.end_ms,
                };
                let cur = m.get(&key).copied();
                let new = cur.map(|v| v.merge(delta)).unwrap_or(delta);
                if let Some(q) = quotas.iter().find(|q| q.kind == kind && q.hard) {
                    if let Some(limit) = q.limit {
                        if new.amount() > limit {
                            return Err(QuotaExceeded {
                                contract: c.id.clone(),
                                lever: lever.id.clone(),
                                kind,
                                limit,
                            });
                        }
                    }
                }
                planned.push((key, cur, new));
            }
        }
        for (key, prev, new) in planned {
            m.insert(key.clone(), new);
            out.push(Reservation {
                shard,
                key,
                prev,
                delta,
                new,
            });
        }
        Ok(())
    }

    /// Moves the usage rows of `moved` contracts (a re-parented contract and its
    /// descendants) from the old root's shard to the new root's, and runs `update` (the
    /// registry change) while holding both shards, so no decision sees a half-moved chain.
    /// Lock order: lower shard index first (ingest holds one shard at a time).
    pub fn rehome<R>(
        &self,
        tenant: &str,
        moved: &std::collections::HashSet<String>,
        old_root: &str,
        new_root: &str,
        update: impl FnOnce() -> R,
    ) -> R {
        let a = shard_of(tenant, old_root, self.shards.len());
        let b = shard_of(tenant, new_root, self.shards.len());
        if a == b {
            let _g = lock(&self.shards[a]);
            return update();
        }
        let (lo, hi) = (a.min(b), a.max(b));
        let mut g_lo = lock(&self.shards[lo]);
        let mut g_hi = lock(&self.shards[hi]);
        let (from, to) = if a == lo {
            (&mut *g_lo, &mut *g_hi)
        } else {
            (&mut *g_hi, &mut *g_lo)
        };
        let keys: Vec<UsageKey> = from
            .keys()
            .filter(|k| &*k.tenant == tenant && moved.contains(&*k.contract))
            .cloned()
            .collect();
        for k in keys {
            if let Some(v) = from.remove(&k) {
                match to.get_mut(&k) {
                    Some(cur) => *cur = cur.merge(v),
                    None => {
                        to.insert(k, v);
                    }
                }
            }
        }
        update()
    }

    /// Undoes reservations whose commit failed, newest first.
    pub fn rollback(&self, reservations: &[Reservation]) {
        for r in reservations.iter().rev() {
            let mut m = lock(&self.shards[r.shard]);
            let Some(cur) = m.get(&r.key).copied() else {
                continue;
            };
            let restored = match (cur, r.delta) {
                (AggValue::Sum(c), AggValue::Sum(d)) => Some(AggValue::Sum(c - d)),
                // Max/latest cannot be subtracted: restore only if nobody moved it since.
                _ if cur == r.new => r.prev,
                _ => Some(cur),
            };
            match restored {
                Some(v) => {
                    m.insert(r.key.clone(), v);
                }
                None => {
                    m.remove(&r.key);
                }
            }
        }
    }

    /// Usage of one period row (zero when absent), read under the row's shard lock.
    pub fn usage(&self, key: &UsageKey, root: &str) -> Option<AggValue> {
        let s = shard_of(&key.tenant, root, self.shards.len());
        lock(&self.shards[s]).get(key).copied()
    }

    /// Drops rows of periods that ended before `before_ms` (events that old are refused
    /// as too late, so their rows can no longer change).
    pub fn prune(&self, before_ms: i64) {
        for s in self.shards.iter() {
            lock(s).retain(|k, _| k.end >= before_ms);
        }
    }

    /// Number of rows held (a gauge).
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| lock(s).len()).sum()
    }

    /// True when no row is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
