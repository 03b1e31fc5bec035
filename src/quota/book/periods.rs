//! The period rows an event counts in: a contract's time zone and billing anchor, and
//! the periods (day, week, month, billing period, lifetime) containing an instant,
//! memoised per thread.

use chrono_tz::Tz;

use crate::hash::FastHashMap;
use crate::quota::period::{all_periods, Period, PeriodKind};
use crate::registry::Contract;

/// Time zone of a contract (UTC when unparseable, which validation prevents).
pub fn contract_tz(c: &Contract) -> Tz {
    c.tz.unwrap_or(Tz::UTC)
}

/// Billing anchor of a contract: its `anchor`, else its creation time.
pub fn contract_anchor(c: &Contract) -> i64 {
    c.anchor_ms
}

/// The five periods containing an instant, one per kind.
pub(super) type PeriodSet = [(PeriodKind, Period); 5];
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
