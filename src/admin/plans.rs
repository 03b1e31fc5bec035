//! Plans: create or replace (contracts on the plan see the new quotas with their next
//! event), read, list.

use std::sync::Arc;

use super::{check_id, Admin, Saved};
use crate::error::Error;
use crate::registry::persist::{page, Page, PageRequest};
use crate::registry::{normalize_quotas, Plan, PlanBody, Tenant};
use crate::store::keys::{admin_prefix, AdminKind};
use crate::window::{now_ms, rfc3339};

/// The plan `id`.
pub fn get(t: &Tenant, id: &str) -> Result<Arc<Plan>, Error> {
    t.plan(id).ok_or_else(|| Error::not_found("plan", id))
}

impl Admin<'_> {
    /// Creates or replaces plan `id`.
    pub async fn put_plan(
        &self,
        t: &Tenant,
        id: &str,
        mut b: PlanBody,
    ) -> Result<Saved<Arc<Plan>>, Error> {
        check_id("plan", id)?;
        b.validate(|l| t.lever(l).is_some())
            .map_err(Error::invalid_field)?;
        normalize_quotas(&mut b.quotas);
        let _lock = self.lock.lock().await;
        let existing = t.plan(id);
        if let Some(old) = &existing {
            if old.body == b {
                return Ok(Saved {
                    value: old.clone(),
                    created: false,
                });
            }
        }
        let now = rfc3339(now_ms());
        let plan = Plan {
            id: id.to_string(),
            body: b,
            created_at: existing
                .as_ref()
                .map(|p| p.created_at.clone())
                .unwrap_or_else(|| now.clone()),
            updated_at: now,
            parsed_quotas: Vec::new(),
        }
        .finish();
        self.persist(AdminKind::Plan, &t.name, id, &plan)?;
        let plan = Arc::new(plan);
        t.plans.insert(id.to_string(), plan.clone());
        Ok(Saved {
            value: plan,
            created: existing.is_none(),
        })
    }

    /// One page of the tenant's plans in id order.
    pub fn list_plans(&self, t: &Tenant, req: &PageRequest) -> Result<Page<Arc<Plan>>, Error> {
        page(
            self.store,
            admin_prefix(AdminKind::Plan, &t.name),
            req,
            |id, _| t.plan(id),
        )
    }
}
