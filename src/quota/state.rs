//! Quota usage per contract, lever and period, grants, and the atomic quota decision
//! (SPEC 3).
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
//!
//! # Grants
//!
//! For additive levers each period row also holds `granted`: how much of the period's
//! usage grants covered. A period with limit `L` admits usage up to `L + granted`; the
//! part of an event beyond that is taken from the contract's grants in force at the
//! event's time, earliest expiry first, and added to `granted` of every period row the
//! event counts in (so a day and a month quota never charge the same unit of a grant
//! twice). An event takes at most its own value from grants. A hard quota rejects the
//! event when the grants cannot cover its excess; a soft quota takes what there is and
//! reports the rest as overage.
//!
//! # Thresholds
//!
//! When the tenant has a webhook, a period whose usage moves from below to at or above
//! `limit * threshold / 100` yields a [`Crossing`], which ingest writes to the outbox in
//! the same batch (see [`crate::notify`]).

use crate::hash::FastHashMap;
use crate::sync::lock;
use std::sync::{Arc, Mutex, MutexGuard};

use chrono_tz::Tz;

use super::period::{all_periods, PeriodKind};
use crate::counters::agg::AggValue;
use crate::counters::shard_of;
use crate::decimal::Amount;
use crate::registry::{Contract, Grant, Lever, Tenant};
pub use crate::store::quota_keys::{GrantKey, NotifiedKey, StoredKey, UsageKey};

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

/// One period row in memory: usage and the part of it grants covered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Row {
    /// Usage in the period.
    pub value: AggValue,
    /// Usage covered by grants (additive levers only).
    pub granted: Amount,
}

/// Usage reserved by one event in one period row, to be rolled back if the commit fails.
#[derive(Debug, Clone)]
pub struct Reservation {
    /// The usage row.
    pub key: UsageKey,
    prev: Option<Row>,
    /// The event's contribution.
    pub delta: AggValue,
    /// The part of the contribution taken from grants.
    pub granted: Amount,
    new: AggValue,
}

/// Allowance taken from one grant by one event.
#[derive(Debug, Clone)]
pub struct GrantTake {
    /// The grant.
    pub key: GrantKey,
    /// Amount taken.
    pub amount: Amount,
}

/// A threshold crossed by an event, to be written to the outbox with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Crossing {
    /// The period row (the event's contract or an ancestor).
    pub key: UsageKey,
    /// Threshold percentage.
    pub threshold: u32,
    /// Usage after the event.
    pub usage: Amount,
    /// The quota's limit.
    pub limit: Amount,
    /// `hard` or `soft`.
    pub hard: bool,
}

impl Crossing {
    /// The record that this threshold was notified.
    pub fn notified_key(&self) -> NotifiedKey {
        NotifiedKey {
            row: self.key.clone(),
            threshold: self.threshold,
            limit: self.limit,
        }
    }
}

/// Everything the events of one request reserved.
#[derive(Debug, Default)]
pub struct Reserved {
    /// Period rows, one per row (see [`Reserved::rows`]).
    rows: Vec<Reservation>,
    /// Grant consumption.
    pub takes: Vec<GrantTake>,
    /// Threshold crossings.
    pub crossings: Vec<Crossing>,
    /// The ancestors of the last admitted event's contract (its chain at the decision,
    /// nearest first), remembered with the event for retraction.
    pub last_ancestors: Vec<String>,
    /// Position in `rows` of the reservations `rows[..at.len()]`, built once a request
    /// holds more than [`SCAN_ROWS`] rows (fewer are found by scanning).
    at: FastHashMap<UsageKey, usize>,
}

/// Reservations up to which [`Reserved`] finds a row by scanning: a single event holds
/// 5 rows per chain member, and a scan of those costs less than hashing the key and
/// building a map for every request.
const SCAN_ROWS: usize = 16;

impl Reserved {
    /// The period rows reserved, one per row, in the order first reserved.
    pub fn rows(&self) -> &[Reservation] {
        &self.rows
    }

    /// Forgets everything reserved (the reservations themselves stay in the book).
    pub fn clear(&mut self) {
        self.rows.clear();
        self.takes.clear();
        self.crossings.clear();
        self.last_ancestors.clear();
        self.at.clear();
    }

    /// Records that the events of this request moved `key` from `prev` to `new`, adding
    /// `delta` (of which `granted` came from grants). One reservation per row: a row's
    /// later events merge into it (keeping the first `prev`), so the batch writes one
    /// merge operand per row and a rollback undoes the request's whole change at once.
    fn reserve_row(
        &mut self,
        key: UsageKey,
        prev: Option<Row>,
        delta: AggValue,
        granted: Amount,
        new: AggValue,
    ) {
        let found = if self.rows.len() <= SCAN_ROWS {
            self.rows.iter().position(|r| r.key == key)
        } else {
            // Index the rows reserved since the map was last extended (rows are only
            // appended, so the map always covers a prefix).
            for i in self.at.len()..self.rows.len() {
                self.at.insert(self.rows[i].key.clone(), i);
            }
            self.at.get(&key).copied()
        };
        match found {
            Some(i) => {
                let r = &mut self.rows[i];
                r.delta = r.delta.merge(delta);
                r.granted = r.granted.saturating_add(granted);
                r.new = new;
            }
            None => {
                self.rows.push(Reservation {
                    key,
                    prev,
                    delta,
                    granted,
                    new,
                });
            }
        }
    }
}

/// How an admitted event related to its quotas (for metrics).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// No finite quota applies.
    Unlimited,
    /// Within every limit; at least one hard quota applies.
    WithinHard,
    /// Within every limit; only soft quotas apply.
    WithinSoft,
    /// Accepted beyond a soft limit (and the grants).
    Overage,
}

impl Decision {
    /// `(outcome, mode)` metric labels.
    pub fn labels(self) -> (&'static str, &'static str) {
        match self {
            Decision::Unlimited => ("allowed", "unlimited"),
            Decision::WithinHard => ("allowed", "hard"),
            Decision::WithinSoft => ("allowed", "soft"),
            Decision::Overage => ("overage", "soft"),
        }
    }
}

#[derive(Debug, Default)]
struct Shard {
    rows: FastHashMap<UsageKey, Row>,
    grant_used: FastHashMap<GrantKey, Amount>,
    /// Thresholds notified per period and limit: each notifies once.
    notified: std::collections::HashSet<NotifiedKey>,
}

/// In-memory usage of current (and recent) periods and grant consumption, sharded by
/// root contract.
#[derive(Debug)]
pub struct QuotaBook {
    shards: Box<[Mutex<Shard>]>,
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
type PeriodCache = FastHashMap<(Tz, i64), (i64, i64, PeriodSet)>;

thread_local! {
    /// Periods per (zone, anchor), valid while `t` stays inside all of them: period
    /// boundaries change rarely, so most events reuse the last computation.
    static PERIODS: std::cell::RefCell<PeriodCache> = std::cell::RefCell::new(FastHashMap::default());
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
struct Need<'q> {
    /// The event's value (its contribution to an additive row).
    value: Amount,
    /// Whether the lever adds up (only then can grants cover an excess).
    additive: bool,
    /// Largest excess over a hard quota that grants could still cover, and that quota.
    hard: Option<(Amount, &'q EffectiveQuota)>,
    /// Largest excess over a soft quota (the event's whole value when grants cannot
    /// cover it).
    soft: Amount,
}

impl<'q> Need<'q> {
    fn new(value: Amount, additive: bool) -> Need<'q> {
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
    fn add(
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
    /// Creates `n` empty shards.
    pub fn new(n: usize) -> QuotaBook {
        QuotaBook {
            shards: (0..n.max(1))
                .map(|_| Mutex::new(Shard::default()))
                .collect(),
        }
    }

    fn shard_for(&self, tenant: &str, root: &str) -> &Mutex<Shard> {
        &self.shards[shard_of(tenant, root, self.shards.len())]
    }

    /// Loads a stored row (at start-up).
    pub fn load(&self, key: StoredKey, value: AggValue, root: &str) {
        match key {
            StoredKey::Usage(k) => {
                let mut s = lock(self.shard_for(&k.tenant, root));
                match s.rows.get_mut(&k) {
                    Some(cur) => cur.value = cur.value.merge(value),
                    None => {
                        s.rows.insert(
                            k,
                            Row {
                                value,
                                granted: Amount::ZERO,
                            },
                        );
                    }
                }
            }
            StoredKey::Granted(k) => {
                let mut s = lock(self.shard_for(&k.tenant, root));
                let zero = AggValue::Sum(0);
                let row = s.rows.entry(k).or_insert(Row {
                    value: zero,
                    granted: Amount::ZERO,
                });
                row.granted = row.granted.saturating_add(value.amount());
            }
            StoredKey::GrantUsed(k) => {
                let mut s = lock(self.shard_for(&k.tenant, root));
                let used = s.grant_used.entry(k).or_insert(Amount::ZERO);
                *used = used.saturating_add(value.amount());
            }
            StoredKey::Notified(k) => {
                lock(self.shard_for(&k.row.tenant, root)).notified.insert(k);
            }
        }
    }

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
            let mut takes = Vec::new();
            let mut taken = Amount::ZERO;
            if additive && need > Amount::ZERO {
                if let Some(grants) = tenant.grants.get(&c.id) {
                    for g in grants.active(&lever.id, time_ms) {
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
            }
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

    /// Locks the shard of `contract`'s chain and resolves the chain again under the lock:
    /// a concurrent re-parenting ([`QuotaBook::rehome`]) changes the registry while
    /// holding the old and new root shards, so the chain returned owns the locked shard.
    fn lock_chain(
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

    /// Moves the rows of `moved` contracts (a re-parented contract and its descendants)
    /// from the old root's shard to the new root's, and runs `update` (the registry
    /// change) while holding both shards, so no decision sees a half-moved chain.
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
            .rows
            .keys()
            .filter(|k| &*k.tenant == tenant && moved.contains(&*k.contract))
            .cloned()
            .collect();
        for k in keys {
            if let Some(v) = from.rows.remove(&k) {
                match to.rows.get_mut(&k) {
                    Some(cur) => {
                        cur.value = cur.value.merge(v.value);
                        cur.granted = cur.granted.saturating_add(v.granted);
                    }
                    None => {
                        to.rows.insert(k, v);
                    }
                }
            }
        }
        let keys: Vec<GrantKey> = from
            .grant_used
            .keys()
            .filter(|k| &*k.tenant == tenant && moved.contains(&*k.contract))
            .cloned()
            .collect();
        for k in keys {
            if let Some(v) = from.grant_used.remove(&k) {
                let cur = to.grant_used.entry(k).or_default();
                *cur = cur.saturating_add(v);
            }
        }
        let keys: Vec<NotifiedKey> = from
            .notified
            .iter()
            .filter(|k| &*k.row.tenant == tenant && moved.contains(&*k.row.contract))
            .cloned()
            .collect();
        for k in keys {
            from.notified.remove(&k);
            to.notified.insert(k);
        }
        update()
    }

    /// Locks the shard that owns `contract`'s rows now: the shard of its chain's root,
    /// re-checked under the lock (a concurrent [`QuotaBook::rehome`] may move them).
    fn lock_owner(&self, tenant: &Tenant, contract: &str) -> MutexGuard<'_, Shard> {
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

    /// One period row (absent when nothing was used), read under the row's shard lock.
    pub fn row(&self, key: &UsageKey, root: &str) -> Option<Row> {
        lock(self.shard_for(&key.tenant, root))
            .rows
            .get(key)
            .copied()
    }

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

    /// Drops rows of periods that ended before `before_ms` (events that old are refused
    /// as too late, so their rows can no longer change).
    pub fn prune(&self, before_ms: i64) {
        for s in self.shards.iter() {
            let mut s = lock(s);
            s.rows.retain(|k, _| k.end >= before_ms);
            s.notified.retain(|k| k.row.end >= before_ms);
        }
    }

    /// Number of period rows held (a gauge).
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| lock(s).rows.len()).sum()
    }

    /// True when no row is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn exceeded(c: &Contract, lever: &Lever, q: &EffectiveQuota, limit: Amount) -> QuotaExceeded {
    QuotaExceeded {
        contract: c.id.clone(),
        lever: lever.id.clone(),
        kind: q.kind,
        limit,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_holds_one_reservation_per_row_below_and_above_the_scan_limit() {
        for distinct in [1, SCAN_ROWS, SCAN_ROWS + 1, 4 * SCAN_ROWS] {
            let key = |i: usize| {
                UsageKey::new(
                    Arc::from("t"),
                    Arc::from(format!("c{}", i % 3).as_str()),
                    Arc::from("l"),
                    PeriodKind::Day,
                    i as i64,
                    i as i64 + 1,
                )
            };
            let mut r = Reserved::default();
            // Three passes over the rows, interleaved, each adding i + 1 (and 1 granted).
            for _pass in 0..3 {
                for i in 0..distinct {
                    let d = AggValue::Sum(i as i128 + 1);
                    r.reserve_row(key(i), None, d, Amount(1), d);
                }
            }
            assert_eq!(r.rows().len(), distinct, "{distinct} rows");
            for (i, row) in r.rows().iter().enumerate() {
                assert_eq!(row.key, key(i), "first-reserved order");
                assert_eq!(row.delta, AggValue::Sum(3 * (i as i128 + 1)));
                assert_eq!(row.granted, Amount(3));
            }
            r.clear();
            assert!(r.rows().is_empty() && r.at.is_empty());
        }
    }

    #[test]
    fn stored_keys_roundtrip() {
        let k = UsageKey::new(
            Arc::from("t"),
            Arc::from("c"),
            Arc::from("l"),
            PeriodKind::BillingPeriod,
            -5,
            i64::MAX,
        );
        assert_eq!(
            StoredKey::decode(&k.encode()),
            Some(StoredKey::Usage(k.clone()))
        );
        assert_eq!(
            StoredKey::decode(&k.encode_granted()),
            Some(StoredKey::Granted(k.clone()))
        );
        let g = GrantKey {
            tenant: Arc::from("t"),
            contract: Arc::from("c"),
            lever: Arc::from("l"),
            id: Arc::from("pack-1"),
        };
        assert_eq!(
            StoredKey::decode(&g.encode()),
            Some(StoredKey::GrantUsed(g))
        );
        assert_eq!(StoredKey::decode(b"\x01t\x01c\x01l?"), None);
        let n = NotifiedKey {
            row: k.clone(),
            threshold: 80,
            limit: Amount::parse_input("12.5").unwrap(),
        };
        assert_eq!(StoredKey::decode(&n.encode()), Some(StoredKey::Notified(n)));
    }

    fn tenant() -> Tenant {
        Tenant {
            name: Arc::from("t"),
            index: 0,
            lateness: std::time::Duration::from_secs(3600),
            levers: Default::default(),
            contracts: Default::default(),
            plans: Default::default(),
            grants: Default::default(),
            thresholds: Vec::new(),
            webhook: None,
        }
    }

    fn contract(t: &Tenant, id: &str, quotas: &str, parent: Option<&str>) -> Arc<Contract> {
        let parent = parent
            .map(|p| format!(r#","parent":"{p}""#))
            .unwrap_or_default();
        let json = format!(
            r#"{{"id":"{id}","body":{{"customer":"cus","quotas":{quotas}{parent},
                "timezone":"Europe/Paris"}},
                "status":"active","created_at":"2025-12-15T00:00:00Z",
                "updated_at":"2025-12-15T00:00:00Z"}}"#
        );
        let c: Contract = serde_json::from_str(&json).expect("contract JSON");
        let c = Arc::new(c.finish());
        t.contracts.insert(id.to_string(), c.clone());
        c
    }

    fn lever(agg: &str) -> Lever {
        serde_json::from_str(&format!(
            r#"{{"id":"l","aggregation":"{agg}","unit":"u","status":"active",
                "created_at":"2025-12-15T00:00:00Z","updated_at":"2025-12-15T00:00:00Z"}}"#
        ))
        .expect("lever JSON")
    }

    fn all_rows(b: &QuotaBook) -> Vec<(Vec<u8>, Row)> {
        let mut out: Vec<(Vec<u8>, Row)> = b
            .shards
            .iter()
            .flat_map(|s| {
                lock(s)
                    .rows
                    .iter()
                    .map(|(k, r)| (k.encode(), *r))
                    .collect::<Vec<_>>()
            })
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

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
