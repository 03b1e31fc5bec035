//! Quotas and entitlements (SPEC 3).
//!
//! - [`period`]: the quota periods (day, week, month, billing period, lifetime) that
//!   contain an instant, computed in the contract's time zone.
//! - [`balance`]: a contract's balance per lever and period (limit, grants, usage,
//!   what is left), answered from the quota book.
//! - [`book`]: the quota book, usage per contract, lever and period; the atomic
//!   check-and-reserve of every event against its contract chain's hard limits.

pub mod balance;
pub mod book;
pub mod period;

/// Oldest period end still relevant at `now`: events older than the largest lateness are
/// refused, so periods that ended before it can no longer change.
pub fn quota_horizon(cfg: &crate::config::Config, now: i64) -> i64 {
    let max_lateness = cfg
        .tenants
        .iter()
        .map(|t| t.lateness)
        .chain(std::iter::once(cfg.lateness))
        .max()
        .unwrap_or_default();
    now - max_lateness.as_millis() as i64 - 10 * 60_000
}
