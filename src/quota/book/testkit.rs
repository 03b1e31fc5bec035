//! Fixtures shared by the book's unit tests: a tenant, contracts, a lever, and a
//! sorted dump of every row.

use std::sync::Arc;

use super::{QuotaBook, Row};
use crate::registry::{Contract, Lever, Tenant};
use crate::sync::lock;

pub(super) fn tenant() -> Tenant {
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

pub(super) fn contract(t: &Tenant, id: &str, quotas: &str, parent: Option<&str>) -> Arc<Contract> {
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

pub(super) fn lever(agg: &str) -> Lever {
    serde_json::from_str(&format!(
        r#"{{"id":"l","aggregation":"{agg}","unit":"u","status":"active",
            "created_at":"2025-12-15T00:00:00Z","updated_at":"2025-12-15T00:00:00Z"}}"#
    ))
    .expect("lever JSON")
}

pub(super) fn all_rows(b: &QuotaBook) -> Vec<(Vec<u8>, Row)> {
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
