//! Contracts: create or replace (with parent chains checked and quota rows moved when a
//! contract changes chains), read, list, end.

use std::collections::HashSet;
use std::sync::Arc;

use super::{check_id, Admin, Saved};
use crate::error::{Error, ErrorCode};
use crate::quota::book::{chain, partition_of_root};
use crate::registry::persist::{page, Page, PageRequest};
use crate::registry::{
    normalize_quotas, Contract, ContractBody, ContractStatus, Tenant, MAX_PARENT_DEPTH,
};
use crate::store::keys::{admin_prefix, AdminKind};
use crate::window::{now_ms, parse_rfc3339, rfc3339};

/// Root of a contract's parent chain, with `contract` standing in for its stored version.
fn root_of(t: &Tenant, contract: &Arc<Contract>) -> String {
    chain(t, contract)
        .last()
        .map(|c| c.id.clone())
        .unwrap_or_default()
}

/// The contract `id`.
pub fn get(t: &Tenant, id: &str) -> Result<Arc<Contract>, Error> {
    t.contract(id)
        .ok_or_else(|| Error::not_found("contract", id))
}

/// Checks that `parent` may be the parent of `id`: it exists, the chain does not come
/// back to `id`, and neither it nor the contracts under `id` get deeper than
/// [`MAX_PARENT_DEPTH`].
fn check_parent(t: &Tenant, id: &str, parent: &str) -> Result<(), Error> {
    let mut at = parent.to_string();
    let mut depth = 1;
    loop {
        if at == id {
            return Err(Error::invalid(
                "parent",
                "would create a cycle of parent contracts",
            ));
        }
        let Some(p) = t.contract(&at) else {
            return Err(Error::invalid(
                "parent",
                format!("contract {at:?} does not exist"),
            ));
        };
        match &p.body.parent {
            Some(next) if depth < MAX_PARENT_DEPTH => {
                at = next.clone();
                depth += 1;
            }
            Some(_) => {
                return Err(Error::invalid(
                    "parent",
                    format!("parent chains may be at most {MAX_PARENT_DEPTH} contracts deep"),
                ))
            }
            None => break,
        }
    }
    // The contract's descendants move with it: none may end up deeper than allowed.
    let below = t
        .contracts
        .iter()
        .map(|c| Arc::clone(c.value()))
        .collect::<Vec<_>>()
        .iter()
        .filter_map(|c| chain(t, c).iter().position(|a| a.id == id))
        .max()
        .unwrap_or(0);
    if depth + below > MAX_PARENT_DEPTH {
        return Err(Error::invalid(
            "parent",
            format!("contracts under {id:?} would have more than {MAX_PARENT_DEPTH} ancestors"),
        ));
    }
    Ok(())
}

impl Admin<'_> {
    /// Creates or replaces contract `id`. Re-parenting moves the quota rows of the
    /// contract and its descendants to the new root's shard, atomically with the
    /// registry change.
    pub async fn put_contract(
        &self,
        t: &Tenant,
        id: &str,
        mut b: ContractBody,
    ) -> Result<Saved<Arc<Contract>>, Error> {
        check_id("contract", id)?;
        b.validate(|l| t.lever(l).is_some())
            .map_err(Error::invalid_field)?;
        normalize_quotas(&mut b.quotas);
        if let Some(a) = b.anchor.as_deref().and_then(parse_rfc3339) {
            b.anchor = Some(rfc3339(a));
        }
        if let Some(p) = &b.plan {
            if t.plan(p).is_none() {
                return Err(Error::invalid("plan", format!("plan {p:?} does not exist")));
            }
        }
        let _lock = self.lock.lock().await;
        if let Some(parent) = &b.parent {
            check_parent(t, id, parent)?;
        }
        let existing = t.contract(id);
        if let Some(old) = &existing {
            if old.body == b {
                return Ok(Saved {
                    value: old.clone(),
                    created: false,
                });
            }
        }
        let now = rfc3339(now_ms());
        let contract = Contract {
            id: id.to_string(),
            body: b,
            status: existing
                .as_ref()
                .map(|c| c.status)
                .unwrap_or(ContractStatus::Active),
            ends_at: existing.as_ref().and_then(|c| c.ends_at.clone()),
            created_at: existing
                .as_ref()
                .map(|c| c.created_at.clone())
                .unwrap_or_else(|| now.clone()),
            updated_at: now,
            ends_at_ms: None,
            tz: None,
            anchor_ms: 0,
            parsed_quotas: Vec::new(),
            shared_id: Default::default(),
        }
        .finish();
        let contract = Arc::new(contract);
        let old_root = existing.as_ref().map(|c| root_of(t, c));
        let new_root = root_of(t, &contract);
        // Cluster mode: a chain's quota rows live in its partition owner's quota book,
        // keyed by the chain root, and this node may not be that owner. A change of a
        // contract's root (re-parenting) is refused rather than split from that state.
        if let Some(old_root) = &old_root {
            if self.partitions > 1 && *old_root != new_root {
                let other = partition_of_root(&t.name, old_root, self.partitions)
                    != partition_of_root(&t.name, &new_root, self.partitions);
                return Err(Error::new(
                    ErrorCode::Conflict,
                    format!(
                        "cluster mode: this change moves contract {id:?} from the chain of \
                         {old_root:?} to the chain of {new_root:?}{}; cluster mode does not \
                         move a chain's quota state. Create a new contract under the new \
                         parent instead",
                        if other { ", in another partition" } else { "" }
                    ),
                ));
            }
        }
        self.persist(AdminKind::Contract, &t.name, id, &*contract)?;
        match old_root {
            Some(old_root) if old_root != new_root => {
                // Snapshot first: no registry lookups while a map iterator holds a shard.
                let all: Vec<Arc<Contract>> =
                    t.contracts.iter().map(|c| Arc::clone(c.value())).collect();
                let moved: HashSet<String> = all
                    .iter()
                    .filter(|c| chain(t, c).iter().any(|a| a.id == id))
                    .map(|c| c.id.clone())
                    .chain(std::iter::once(id.to_string()))
                    .collect();
                self.quotas
                    .rehome(&t.name, &moved, &old_root, &new_root, || {
                        t.contracts.insert(id.to_string(), contract.clone())
                    });
            }
            _ => {
                t.contracts.insert(id.to_string(), contract.clone());
            }
        }
        Ok(Saved {
            value: contract,
            created: existing.is_none(),
        })
    }

    /// Ends contract `id` at `ends_at` (RFC 3339; default now): events at or after it
    /// get `contract_ended`.
    pub async fn end_contract(
        &self,
        t: &Tenant,
        id: &str,
        ends_at: Option<&str>,
    ) -> Result<Arc<Contract>, Error> {
        let now = now_ms();
        let ends_ms = match ends_at {
            Some(e) => parse_rfc3339(e)
                .ok_or_else(|| Error::invalid("ends_at", "must be an RFC 3339 time"))?,
            None => now,
        };
        let _lock = self.lock.lock().await;
        let c = get(t, id)?;
        let mut updated = (*c).clone();
        updated.ends_at = Some(rfc3339(ends_ms));
        updated.status = if ends_ms <= now {
            ContractStatus::Ended
        } else {
            ContractStatus::Active
        };
        updated.updated_at = rfc3339(now);
        let updated = Arc::new(updated.finish());
        self.persist(AdminKind::Contract, &t.name, id, &*updated)?;
        t.contracts.insert(id.to_string(), updated.clone());
        Ok(updated)
    }

    /// One page of the tenant's contracts in id order, of one customer or all.
    pub fn list_contracts(
        &self,
        t: &Tenant,
        customer: Option<&str>,
        req: &PageRequest,
    ) -> Result<Page<Arc<Contract>>, Error> {
        page(
            self.store,
            admin_prefix(AdminKind::Contract, &t.name),
            req,
            |id, _| {
                t.contract(id)
                    .filter(|c| customer.is_none_or(|cu| c.body.customer == cu))
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admin::test_support::fixture;

    fn body(json: serde_json::Value) -> ContractBody {
        serde_json::from_value(json).unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn cluster_mode_refuses_a_reparenting_that_changes_a_chain_root() {
        let f = fixture();
        let mut admin = Admin::new(&f.store, &f.journal, &f.lock, &f.quotas);
        admin.partitions = 64;
        let t = &f.tenant;
        let c = |json| body(json);
        for id in ["pool", "kid"] {
            admin
                .put_contract(t, id, c(serde_json::json!({"customer": "c"})))
                .await
                .unwrap();
        }
        // A new contract may name any parent.
        admin
            .put_contract(
                t,
                "new",
                c(serde_json::json!({"customer": "c", "parent": "pool"})),
            )
            .await
            .unwrap();
        // Moving an existing one onto another chain: refused, nothing changed.
        let err = admin
            .put_contract(
                t,
                "kid",
                c(serde_json::json!({"customer": "c", "parent": "pool"})),
            )
            .await
            .unwrap_err();
        assert_eq!(err.code(), ErrorCode::Conflict, "{err}");
        assert!(err.message().contains("does not move"), "{err}");
        assert_eq!(get(t, "kid").unwrap().body.parent, None);
        // Other changes are fine.
        admin
            .put_contract(t, "kid", c(serde_json::json!({"customer": "d"})))
            .await
            .unwrap();
        // On a single node the same move is carried out.
        admin.partitions = 1;
        let moved = admin
            .put_contract(
                t,
                "kid",
                c(serde_json::json!({"customer": "d", "parent": "pool"})),
            )
            .await
            .unwrap();
        assert_eq!(moved.value.body.parent.as_deref(), Some("pool"));
    }
}
