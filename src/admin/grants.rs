//! Grants (SPEC 3, 5): top-up packs of a contract.
//!
//! A grant is written (fsynced) to the admin column family before it is added to the
//! registry, so the next quota decision sees it and a restart keeps it. Grants are
//! immutable: a repeat with an existing `id` and the same definition answers the stored
//! grant, a different definition is a `conflict`.

use std::sync::Arc;

use super::{Admin, Saved};
use crate::error::Error;
use crate::quota::book::{chain, QuotaBook};
use crate::registry::persist::{page, Page, PageRequest};
use crate::registry::{Grant, GrantBody, Grants, Tenant, MAX_OPEN_GRANTS};
use crate::store::keys::{admin_prefix, grant_name, AdminKind};
use crate::window::{now_ms, rfc3339};

fn root_of(t: &Tenant, contract: &str) -> Option<String> {
    let c = t.contract(contract)?;
    chain(t, &c).last().map(|r| r.id.clone())
}

/// The API views of `grants` (all of one contract), with their consumption.
fn views(
    quotas: &QuotaBook,
    t: &Tenant,
    contract: &str,
    grants: &[&Grant],
) -> Vec<serde_json::Value> {
    let root = root_of(t, contract).unwrap_or_default();
    let used = quotas.grants_used(t, grants, &root);
    let now = now_ms();
    grants
        .iter()
        .zip(used)
        .map(|(g, u)| g.view(u, now))
        .collect()
}

fn view(quotas: &QuotaBook, t: &Tenant, contract: &str, grant: &Grant) -> serde_json::Value {
    views(quotas, t, contract, &[grant])
        .pop()
        .unwrap_or_default()
}

fn grants_of(t: &Tenant, contract: &str) -> Arc<Grants> {
    t.grants
        .get(contract)
        .map(|g| Arc::clone(&g))
        .unwrap_or_default()
}

impl Admin<'_> {
    /// Adds a grant to `contract`; answers its view (with its consumption).
    pub async fn post_grant(
        &self,
        t: &Tenant,
        contract: &str,
        b: GrantBody,
    ) -> Result<Saved<serde_json::Value>, Error> {
        if t.contract(contract).is_none() {
            return Err(Error::not_found("contract", contract));
        }
        let explicit_start = b.effective_at.is_some();
        let now = now_ms();
        let _lock = self.lock.lock().await;
        let current = grants_of(t, contract);
        // A repeat that omits `effective_at` means the stored one (it defaulted to the
        // creation time), also after the grant expired.
        let start_default = current
            .get(&b.id)
            .filter(|_| !explicit_start)
            .map(|g| g.effective_ms)
            .unwrap_or(now);
        let mut grant = b
            .into_grant(contract, start_default, |l| match t.lever(l) {
                None => Err(format!("unknown lever {l:?}")),
                Some(lv) if !lv.aggregation.is_additive() => Err(format!(
                    "lever {l:?} aggregates with `{}`; grants add allowance to sum and count levers",
                    lv.aggregation.as_str()
                )),
                Some(_) => Ok(()),
            })
            .map_err(Error::invalid_field)?;
        grant.created_at = rfc3339(now);
        if let Some(existing) = current.get(&grant.id) {
            let same = existing.same_definition(&grant)
                && (!explicit_start || existing.effective_ms == grant.effective_ms);
            if !same {
                return Err(Error::conflict(format!(
                    "grant {:?} already exists with a different definition; grants are immutable",
                    grant.id
                )));
            }
            return Ok(Saved {
                value: view(self.quotas, t, contract, existing),
                created: false,
            });
        }
        if current.open_count(now) >= MAX_OPEN_GRANTS {
            return Err(Error::limit_reached(format!(
                "contract {contract:?} already has {MAX_OPEN_GRANTS} grants that have not expired"
            )));
        }
        self.persist(
            AdminKind::Grant,
            &t.name,
            &grant_name(contract, &grant.id),
            &grant,
        )?;
        let v = view(self.quotas, t, contract, &grant);
        t.grants
            .insert(contract.to_string(), Arc::new(current.with(grant)));
        Ok(Saved {
            value: v,
            created: true,
        })
    }

    /// One page of the grants of `contract` in id order, with their consumption.
    pub fn list_grants(
        &self,
        t: &Tenant,
        contract: &str,
        req: &PageRequest,
    ) -> Result<Page<serde_json::Value>, Error> {
        if t.contract(contract).is_none() {
            return Err(Error::not_found("contract", contract));
        }
        let grants = grants_of(t, contract);
        let mut prefix = admin_prefix(AdminKind::Grant, &t.name);
        prefix.extend_from_slice(grant_name(contract, "").as_bytes());
        let p = page(self.store, prefix, req, |id, _| {
            grants.get(id).map(Arc::clone)
        })?;
        let refs: Vec<&Grant> = p.items.iter().map(|g| &**g).collect();
        let items = views(self.quotas, t, contract, &refs);
        Ok(Page {
            items,
            next_cursor: p.next_cursor,
        })
    }
}
