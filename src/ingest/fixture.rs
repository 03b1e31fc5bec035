//! Test fixtures shared by the phases' unit tests: a tenant with two levers and three
//! contracts, and events on them.

#![cfg(test)]

use std::borrow::Cow;
use std::sync::Arc;

use crate::event::Event;
use crate::registry::Tenant;
use crate::testkit;

/// A receive time: 2026-11-23T12:00:00Z.
pub const NOW: i64 = 1_795_435_200_000;

/// Tenant `t` with levers `calls` (sum) and `requests` (count) and contracts `c1` (with a
/// hard monthly quota of `limit` calls when given), `c2` (no quota) and `ended` (ended at
/// [`NOW`]).
pub fn tenant(limit: Option<&str>) -> Arc<Tenant> {
    let t = testkit::tenant();
    testkit::add_lever(&t, "calls", "sum");
    testkit::add_lever(&t, "requests", "count");
    let quotas = match limit {
        Some(l) => serde_json::json!([{"lever": "calls", "period": "month", "limit": l}]),
        None => serde_json::json!([]),
    };
    let body = |quotas| serde_json::json!({"customer": "cu", "quotas": quotas});
    testkit::add_contract(&t, "c1", body(quotas), None);
    testkit::add_contract(&t, "c2", body(serde_json::json!([])), None);
    let end = Some(crate::window::rfc3339(NOW));
    testkit::add_contract(&t, "ended", body(serde_json::json!([])), end);
    t
}

/// An event with value 1 (unless set later) at `time_ms`.
pub fn event(id: &str, contract: &str, lever: &str, time_ms: Option<i64>) -> Event<'static> {
    Event {
        id: Cow::Owned(id.to_string()),
        contract: Cow::Owned(contract.to_string()),
        lever: Cow::Owned(lever.to_string()),
        value: None,
        time_ms,
        bucket: None,
        shown_id: None,
    }
}
