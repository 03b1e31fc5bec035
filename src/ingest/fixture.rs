//! Test fixtures shared by the phases' unit tests: a tenant with two levers and three
//! contracts, and events on them.

use std::borrow::Cow;
use std::sync::Arc;

use crate::event::Event;
use crate::registry::{Contract, Lever, LeverBody, Registry, Tenant};

/// A receive time: 2026-11-23T12:00:00Z.
pub const NOW: i64 = 1_795_435_200_000;

/// Tenant `t` with levers `calls` (sum) and `requests` (count) and contracts `c1` (with a
/// hard monthly quota of `limit` calls when given), `c2` (no quota) and `ended` (ended at
/// [`NOW`]).
pub fn tenant(limit: Option<&str>) -> Arc<Tenant> {
    let cfg = crate::config::Config::from_toml("f.toml", "[[tenants]]\nname = \"t\"\n").unwrap();
    let registry = Registry::new(&cfg);
    let t = registry.tenant("t").unwrap().clone();
    for (name, aggregation) in [("calls", "sum"), ("requests", "count")] {
        let body: LeverBody =
            serde_json::from_value(serde_json::json!({ "aggregation": aggregation })).unwrap();
        let at = "2026-01-01T00:00:00Z".to_string();
        t.levers.insert(
            name.to_string(),
            Arc::new(Lever::from_body(name, &body, at.clone(), at)),
        );
    }
    let quotas = match limit {
        Some(l) => serde_json::json!([{"lever": "calls", "period": "month", "limit": l}]),
        None => serde_json::json!([]),
    };
    for (id, quotas, ends_at) in [
        ("c1", quotas, None),
        ("c2", serde_json::json!([]), None),
        (
            "ended",
            serde_json::json!([]),
            Some(crate::window::rfc3339(NOW)),
        ),
    ] {
        let c: Contract = serde_json::from_value(serde_json::json!({
            "id": id,
            "body": {"customer": "cu", "quotas": quotas},
            "status": if ends_at.is_some() { "ended" } else { "active" },
            "ends_at": ends_at,
            "created_at": "2026-01-01T00:00:00Z",
            "updated_at": "2026-01-01T00:00:00Z",
        }))
        .unwrap();
        t.contracts.insert(id.to_string(), Arc::new(c.finish()));
    }
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
