//! The quota book: usage per contract, lever and period, grants, and the atomic quota
//! decision (SPEC 3).
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
//!
//! # Files
//!
//! - `chain`: a contract's parent chain, the quotas in force on it, and which shard
//!   holds a chain (locking it with the chain re-resolved under the lock).
//! - `periods`: the period rows an event at an instant counts in (memoised).
//! - `reserved`: what a request reserved ([`Reserved`]), the decision and refusal
//!   types, and the per-row merging of a request's reservations.
//! - `decide`: the per-event check-and-reserve ([`QuotaBook::try_reserve`]).
//! - `grants`: drawing an event's excess from grants, and reading grant consumption.
//! - `unlimited`, `bulk`: the grouped paths (a chain with no finite quota; a root's
//!   events in one lock hold), each equal to the per-event decisions.
//! - `rehome`: moving a re-parented subtree's rows between shards.
//! - `rollback`: undoing reservations whose commit failed, and retractions.
//! - `load`: rows read back from the store at start-up.

mod bulk;
mod chain;
mod decide;
mod grants;
mod load;
mod periods;
mod rehome;
mod reserved;
mod rollback;
#[cfg(test)]
mod testkit;
mod unlimited;

use crate::hash::FastHashMap;
use crate::sync::lock;
use std::sync::Mutex;

use crate::counters::agg::AggValue;
use crate::counters::shard_of;
use crate::decimal::Amount;

pub use crate::store::quota_keys::{GrantKey, NotifiedKey, StoredKey, UsageKey};
pub use chain::{
    chain, chain_unlimited, effective_quotas, partition, partition_of_root, thresholds_of,
    EffectiveQuota, MAX_CHAIN,
};
pub use periods::{contract_anchor, contract_tz, periods_at};
pub use reserved::{Crossing, Decision, GrantTake, QuotaExceeded, Reservation, Reserved};

/// One period row in memory: usage and the part of it grants covered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Row {
    /// Usage in the period.
    pub value: AggValue,
    /// Usage covered by grants (additive levers only).
    pub granted: Amount,
}

/// One shard of the book: the rows, grant consumption and notified thresholds of the
/// chains whose root maps to it.
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

    /// One period row (absent when nothing was used), read under the row's shard lock.
    pub fn row(&self, key: &UsageKey, root: &str) -> Option<Row> {
        lock(self.shard_for(&key.tenant, root))
            .rows
            .get(key)
            .copied()
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
