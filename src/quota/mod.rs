//! Quotas and entitlements (SPEC 3).
//!
//! - [`period`]: the quota periods (day, week, month, billing period, lifetime) that
//!   contain an instant, computed in the contract's time zone.
//! - [`state`]: usage per contract, lever and period; the atomic check-and-reserve of
//!   every event against its contract chain's hard limits.

pub mod period;
pub mod state;
