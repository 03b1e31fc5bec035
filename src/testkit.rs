//! Fixtures shared by unit tests across modules: a registry with tenant `t`, levers and
//! contracts added to it, and a journal on a temporary store.

#![cfg(test)]

use std::sync::Arc;
use std::time::Duration;

use crate::config::Durability;
use crate::journal::WalJournal;
use crate::registry::{Contract, Lever, LeverBody, Registry, Tenant};
use crate::store::Store;

/// A registry with the one configured tenant `t` (default settings).
pub fn registry() -> Registry {
    let cfg = crate::config::Config::from_toml("f.toml", "[[tenants]]\nname = \"t\"\n").unwrap();
    Registry::new(&cfg)
}

/// Tenant `t` of a fresh [`registry`].
pub fn tenant() -> Arc<Tenant> {
    registry().tenant("t").unwrap().clone()
}

/// Adds lever `name` aggregating with `aggregation` (`sum`, `count`, `max`, ...) to `t`.
pub fn add_lever(t: &Tenant, name: &str, aggregation: &str) -> Arc<Lever> {
    let body: LeverBody =
        serde_json::from_value(serde_json::json!({ "aggregation": aggregation })).unwrap();
    let at = "2026-01-01T00:00:00Z".to_string();
    let lever = Arc::new(Lever::from_body(name, &body, at.clone(), at));
    t.levers.insert(name.to_string(), lever.clone());
    lever
}

/// Adds contract `id` with the contract body `body` (JSON: customer, quotas, ...) to `t`,
/// ended at `ends_at` when given.
pub fn add_contract(
    t: &Tenant,
    id: &str,
    body: serde_json::Value,
    ends_at: Option<String>,
) -> Arc<Contract> {
    let c: Contract = serde_json::from_value(serde_json::json!({
        "id": id,
        "body": body,
        "status": if ends_at.is_some() { "ended" } else { "active" },
        "ends_at": ends_at,
        "created_at": "2026-01-01T00:00:00Z",
        "updated_at": "2026-01-01T00:00:00Z",
    }))
    .unwrap();
    let c = Arc::new(c.finish());
    t.contracts.insert(id.to_string(), c.clone());
    c
}

/// A journal on `store`, unpaced (its writer thread stops when it is dropped).
pub fn journal(store: &Store, durability: Durability) -> WalJournal {
    WalJournal::start(store.clone(), durability, Duration::ZERO, 1)
        .unwrap()
        .0
}
