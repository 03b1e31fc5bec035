//! Usage queries over stored windows plus unflushed in-memory deltas (SPEC 4.1).
//!
//! A row is a window of the requested size whose start lies in `[from, to)`. For
//! `window=none` the total covers the minute windows starting in `[from, to)`, read from
//! the fewest stored rows (whole UTC days, whole hours, minutes at the edges). Stored rows
//! and in-memory deltas are combined under the flush gate, so each delta is counted once
//! whether or not it has been flushed yet: a read after a 2xx sees the event.
//!
//! [`changes`] answers the changes feed; [`contracts`] pages the contracts of a
//! tenant-wide query.

pub mod balance;
pub mod changes;
pub mod contracts;

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::Serialize;

use chrono_tz::Tz;

use crate::counters::agg::AggValue;
use crate::counters::{ContractDeltas, Counters};
use crate::decimal::Amount;
use crate::quota::period::{period_containing, PeriodKind};
use crate::registry::{Aggregation, Lever};
use crate::store::keys::{decode_window_suffix, put_time, window_prefix};
use crate::store::{Store, StoreError};
use crate::window::{cover, rfc3339, Granularity};

/// Requested window size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WindowSpec {
    /// One stored granularity (minute, hour; day in UTC).
    Stored(Granularity),
    /// Calendar days or months in the query's time zone.
    Calendar(PeriodKind),
    /// One total over the range.
    None,
}

impl WindowSpec {
    /// Parses `minute`, `hour`, `day`, `month`, `none` for a query in `tz`.
    pub fn parse(s: &str, tz: Tz) -> Option<WindowSpec> {
        let utc = tz == Tz::UTC || tz == Tz::Etc__UTC;
        match s {
            "minute" => Some(WindowSpec::Stored(Granularity::Minute)),
            "hour" => Some(WindowSpec::Stored(Granularity::Hour)),
            "day" if utc => Some(WindowSpec::Stored(Granularity::Day)),
            "day" => Some(WindowSpec::Calendar(PeriodKind::Day)),
            "month" => Some(WindowSpec::Calendar(PeriodKind::Month)),
            "none" => Some(WindowSpec::None),
            _ => None,
        }
    }

    /// Name in responses.
    pub fn as_str(self) -> &'static str {
        match self {
            WindowSpec::Stored(g) => g.as_str(),
            WindowSpec::Calendar(k) => k.as_str(),
            WindowSpec::None => "none",
        }
    }
}

/// The calendar windows of `kind` in `tz` that start in `[from, to)`.
pub fn calendar_windows(kind: PeriodKind, tz: Tz, from: i64, to: i64) -> Vec<(i64, i64)> {
    let mut out = Vec::new();
    let mut p = period_containing(kind, from, tz, 0);
    if p.start_ms < from {
        p = period_containing(kind, p.end_ms, tz, 0);
    }
    while p.start_ms < to && p.end_ms > p.start_ms {
        out.push((p.start_ms, p.end_ms));
        p = period_containing(kind, p.end_ms, tz, 0);
    }
    out
}

/// A usage query for one contract.
#[derive(Debug, Clone)]
pub struct UsageQuery {
    /// Tenant.
    pub tenant: Arc<str>,
    /// Contract id.
    pub contract: String,
    /// Levers to report, in output order.
    pub levers: Vec<Arc<Lever>>,
    /// Range start (epoch ms, inclusive).
    pub from: i64,
    /// Range end (epoch ms, exclusive).
    pub to: i64,
    /// Window size.
    pub window: WindowSpec,
    /// Time zone of calendar windows.
    pub tz: Tz,
    /// Group rows by bucket.
    pub group_by_bucket: bool,
    /// Lateness used for `final`.
    pub lateness_ms: i64,
    /// Current time for `final`.
    pub now_ms: i64,
}

/// One row of the response.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct UsageRow {
    /// Lever name.
    pub lever: String,
    /// Aggregation.
    pub aggregation: Aggregation,
    /// Bucket (only with `group_by=bucket`; absent for events without bucket).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bucket: Option<String>,
    /// Window start.
    pub start: String,
    /// Window end.
    pub end: String,
    /// Aggregated value.
    pub value: Amount,
    /// True once `end + lateness` has passed.
    #[serde(rename = "final")]
    pub is_final: bool,
}

type Acc = BTreeMap<(i64, Option<String>), AggValue>;

fn add(acc: &mut Acc, key: (i64, Option<String>), v: AggValue) {
    match acc.get_mut(&key) {
        Some(cur) => *cur = cur.merge(v),
        None => {
            acc.insert(key, v);
        }
    }
}

/// Reads stored rows of one series and granularity with start in `[s, e)`, plus the
/// matching in-memory deltas, into `acc` keyed by `(row_start(start), bucket)`.
#[allow(clippy::too_many_arguments)]
fn collect(
    store: &Store,
    deltas: &ContractDeltas,
    q: &UsageQuery,
    lever: &str,
    g: Granularity,
    s: i64,
    e: i64,
    row_start: impl Fn(i64) -> i64,
    acc: &mut Acc,
) -> Result<(), StoreError> {
    let prefix = window_prefix(&q.tenant, &q.contract, lever, g);
    let mut from_key = prefix.clone();
    put_time(&mut from_key, s);
    let mut to_key = prefix.clone();
    put_time(&mut to_key, e);
    let mut corrupt = false;
    store.scan_windows(&from_key, &to_key, |k, v| {
        match (decode_window_suffix(k, prefix.len()), AggValue::decode(v)) {
            (Some(suffix), Some(val)) => {
                let b = if q.group_by_bucket {
                    suffix.bucket.map(str::to_string)
                } else {
                    None
                };
                add(acc, (row_start(suffix.start), b), val);
            }
            _ => corrupt = true,
        }
    })?;
    if corrupt {
        return Err(StoreError::Corrupt("windows"));
    }
    for (sw, v) in deltas {
        if sw.gran == g && &*sw.lever == lever && sw.start >= s && sw.start < e {
            let b = if q.group_by_bucket {
                sw.bucket.as_deref().map(str::to_string)
            } else {
                None
            };
            add(acc, (row_start(sw.start), b), *v);
        }
    }
    Ok(())
}

/// Runs a usage query.
pub fn usage(
    store: &Store,
    counters: &Counters,
    q: &UsageQuery,
) -> Result<Vec<UsageRow>, StoreError> {
    let _gate = counters.gate_read();
    let deltas = counters.contract_deltas(&q.tenant, &q.contract);
    let mut rows = Vec::new();
    for lever in &q.levers {
        let mut acc = Acc::new();
        // Row start -> row end, for windows of varying length.
        let mut ends: BTreeMap<i64, i64> = BTreeMap::new();
        let len: Option<i64> = match q.window {
            WindowSpec::Calendar(kind) => {
                for (ws, we) in calendar_windows(kind, q.tz, q.from, q.to) {
                    ends.insert(ws, we);
                    // Minute-aligned edges (zones with sub-hour offsets), then the fewest
                    // stored rows.
                    let s = Granularity::Minute.ceil(ws);
                    let e = Granularity::Minute.ceil(we);
                    for (g, ps, pe) in cover(s, e) {
                        collect(store, &deltas, q, &lever.id, g, ps, pe, |_| ws, &mut acc)?;
                    }
                }
                Some(0)
            }
            WindowSpec::Stored(g) => {
                let s = g.ceil(q.from);
                let e = g.ceil(q.to);
                collect(store, &deltas, q, &lever.id, g, s, e, |t| t, &mut acc)?;
                Some(g.len_ms())
            }
            WindowSpec::None => {
                let s = Granularity::Minute.ceil(q.from);
                let e = Granularity::Minute.ceil(q.to);
                for (g, ps, pe) in cover(s, e) {
                    collect(store, &deltas, q, &lever.id, g, ps, pe, |_| 0, &mut acc)?;
                }
                None
            }
        };
        for ((start, bucket), v) in acc {
            let (start, end) = match len {
                Some(0) => (start, ends.get(&start).copied().unwrap_or(start)),
                Some(l) => (start, start + l),
                None => (q.from, q.to),
            };
            rows.push(UsageRow {
                lever: lever.id.clone(),
                aggregation: lever.aggregation,
                bucket,
                start: rfc3339(start),
                end: rfc3339(end),
                value: v.amount(),
                is_final: end + q.lateness_ms <= q.now_ms,
            });
        }
    }
    // Order: lever, start, bucket.
    Ok(rows)
}
