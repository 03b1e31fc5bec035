//! What the events of one request reserved ([`Reserved`]): one reservation per period
//! row, grant takes and threshold crossings, kept until the commit succeeds or is rolled
//! back; and the types a decision returns ([`Decision`], [`QuotaExceeded`]).

use super::chain::EffectiveQuota;
use super::Row;
use crate::counters::agg::AggValue;
use crate::decimal::Amount;
use crate::hash::FastHashMap;
use crate::quota::period::PeriodKind;
use crate::registry::{Contract, Lever};
use crate::store::quota_keys::{GrantKey, NotifiedKey, UsageKey};

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

/// Usage reserved by one event in one period row, to be rolled back if the commit fails.
#[derive(Debug, Clone)]
pub struct Reservation {
    /// The usage row.
    pub key: UsageKey,
    pub(super) prev: Option<Row>,
    /// The event's contribution.
    pub delta: AggValue,
    /// The part of the contribution taken from grants.
    pub granted: Amount,
    pub(super) new: AggValue,
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
    pub(super) rows: Vec<Reservation>,
    /// Grant consumption.
    pub takes: Vec<GrantTake>,
    /// Threshold crossings.
    pub crossings: Vec<Crossing>,
    /// The ancestors of the last admitted event's contract (its chain at the decision,
    /// nearest first), remembered with the event for retraction.
    pub last_ancestors: Vec<String>,
    /// Position in `rows` of the reservations `rows[..at.len()]`, built once a request
    /// holds more than [`SCAN_ROWS`] rows (fewer are found by scanning).
    pub(super) at: FastHashMap<UsageKey, usize>,
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
    pub(super) fn reserve_row(
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

/// The refusal of an event by quota `q` (limit `limit`) of contract `c`.
pub(super) fn exceeded(
    c: &Contract,
    lever: &Lever,
    q: &EffectiveQuota,
    limit: Amount,
) -> QuotaExceeded {
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
    use std::sync::Arc;

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
}
