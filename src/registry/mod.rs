//! In-memory registry of tenants, levers and contracts, backed by the store.
//!
//! Lookups on the ingest path are lock-free reads of `DashMap`s holding `Arc`s; writes
//! (admin PUTs) go to the store first and then replace the `Arc` here, so a lookup
//! sees either the old or the new definition, never a half-written one.

mod auth;
mod contract;
mod grant;
mod lever;
pub mod persist;
mod plan;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use dashmap::DashMap;

/// A registry table: id -> definition, hashed with foldhash (seeded per process like
/// std's SipHash, at a fraction of the cost: the ingest path looks up a lever and a
/// contract per event).
pub type RegistryMap<T> = DashMap<String, Arc<T>, foldhash::fast::RandomState>;

pub use auth::{ApiKeys, Principal, Role};
pub(crate) use contract::amount_text;
pub use contract::{
    normalize_quotas, parse_quotas, valid_external_id, Contract, ContractBody, ContractStatus,
    ParsedQuota, QuotaBody, MAX_PARENT_DEPTH,
};
pub use grant::{Grant, GrantBody, Grants, MAX_OPEN_GRANTS};
pub use lever::{Aggregation, Lever, LeverBody};
pub use plan::{Plan, PlanBody};

use crate::config::Config;

/// One tenant: its settings and its levers and contracts.
#[derive(Debug)]
pub struct Tenant {
    /// Tenant name (key prefix in the store).
    pub name: Arc<str>,
    /// Dense index, used in in-memory keys.
    pub index: u32,
    /// Accepted lateness of event times.
    pub lateness: Duration,
    /// Levers by name.
    pub levers: RegistryMap<Lever>,
    /// Contracts by external id.
    pub contracts: RegistryMap<Contract>,
    /// Plans by name.
    pub plans: RegistryMap<Plan>,
    /// Grants by contract id.
    pub grants: RegistryMap<Grants>,
    /// Default threshold percentages (contracts and plans may set their own).
    pub thresholds: Vec<u32>,
    /// Where threshold crossings are delivered; none: crossings are not recorded.
    pub webhook: Option<Arc<crate::config::WebhookConfig>>,
}

/// All tenants known to this daemon (fixed by the configuration).
#[derive(Debug)]
pub struct Registry {
    tenants: HashMap<String, Arc<Tenant>>,
}

impl Registry {
    /// Builds the (empty) registry for the configured tenants.
    pub fn new(cfg: &Config) -> Registry {
        let mut tenants = HashMap::new();
        for (i, t) in cfg.tenants.iter().enumerate() {
            tenants.insert(
                t.name.clone(),
                Arc::new(Tenant {
                    name: Arc::from(t.name.as_str()),
                    index: i as u32,
                    lateness: t.lateness,
                    levers: RegistryMap::default(),
                    contracts: RegistryMap::default(),
                    plans: RegistryMap::default(),
                    grants: RegistryMap::default(),
                    thresholds: t.thresholds.clone(),
                    webhook: t.webhook.clone().map(Arc::new),
                }),
            );
        }
        Registry { tenants }
    }

    /// Returns the tenant named `name`.
    pub fn tenant(&self, name: &str) -> Option<&Arc<Tenant>> {
        self.tenants.get(name)
    }

    /// Iterates over all tenants.
    pub fn tenants(&self) -> impl Iterator<Item = &Arc<Tenant>> {
        self.tenants.values()
    }
}

impl Tenant {
    /// Returns the live (not deleted) lever `name`.
    pub fn lever(&self, name: &str) -> Option<Arc<Lever>> {
        self.levers
            .get(name)
            .filter(|l| !l.deleted)
            .map(|l| Arc::clone(&l))
    }

    /// Returns the plan `id`.
    pub fn plan(&self, id: &str) -> Option<Arc<Plan>> {
        self.plans.get(id).map(|p| Arc::clone(&p))
    }

    /// Returns the contract `id`.
    pub fn contract(&self, id: &str) -> Option<Arc<Contract>> {
        self.contracts.get(id).map(|c| Arc::clone(&c))
    }
}
