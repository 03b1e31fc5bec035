//! Levers: create or replace (the aggregation never changes: usage is stored under it),
//! read, list, delete (new events refused; stored usage stays queryable).

use std::sync::Arc;

use super::{Admin, Saved};
use crate::config::valid_name;
use crate::error::{Error, ErrorCode};
use crate::registry::persist::{page, Page, PageRequest};
use crate::registry::{Lever, LeverBody, Tenant};
use crate::store::keys::{admin_prefix, AdminKind};
use crate::window::{now_ms, rfc3339};

/// Checks a lever name from a path.
pub fn check_name(name: &str) -> Result<(), Error> {
    if valid_name(name) {
        Ok(())
    } else {
        Err(Error::new(
            ErrorCode::InvalidRequest,
            "lever names are 1-64 characters of [A-Za-z0-9_.:-]",
        ))
    }
}

/// The lever `name` (deleted ones are not found).
pub fn get(t: &Tenant, name: &str) -> Result<Arc<Lever>, Error> {
    t.lever(name).ok_or_else(|| Error::not_found("lever", name))
}

impl Admin<'_> {
    /// Creates or replaces lever `name`; `conflict` when it would change the
    /// aggregation, an unchanged repeat answers the stored lever.
    pub async fn put_lever(
        &self,
        t: &Tenant,
        name: &str,
        b: &LeverBody,
    ) -> Result<Saved<Arc<Lever>>, Error> {
        check_name(name)?;
        b.validate().map_err(Error::invalid_field)?;
        let _lock = self.lock.lock().await;
        let existing = t.levers.get(name).map(|l| Arc::clone(&l));
        if let Some(old) = &existing {
            if old.aggregation != b.aggregation {
                return Err(Error::conflict(format!(
                    "lever {name:?} aggregates with `{}`; its aggregation cannot change because usage is stored under it",
                    old.aggregation.as_str()
                )));
            }
            if old.same_as(b) {
                return Ok(Saved {
                    value: old.clone(),
                    created: false,
                });
            }
        }
        let now = rfc3339(now_ms());
        let created = existing
            .as_ref()
            .filter(|l| !l.deleted)
            .map(|l| l.created_at.clone())
            .unwrap_or_else(|| now.clone());
        let lever = Lever::from_body(name, b, created, now);
        self.persist(AdminKind::Lever, &t.name, name, &lever)?;
        let created = existing.as_ref().is_none_or(|l| l.deleted);
        let lever = Arc::new(lever);
        t.levers.insert(name.to_string(), lever.clone());
        Ok(Saved {
            value: lever,
            created,
        })
    }

    /// Deletes lever `name`: new events for it are refused; stored usage stays
    /// queryable, and the lever may be re-created with the same aggregation.
    pub async fn delete_lever(&self, t: &Tenant, name: &str) -> Result<(), Error> {
        let _lock = self.lock.lock().await;
        let l = get(t, name)?;
        let mut gone = (*l).clone();
        gone.deleted = true;
        gone.status = "deleted".into();
        gone.updated_at = rfc3339(now_ms());
        self.persist(AdminKind::Lever, &t.name, name, &gone)?;
        t.levers.insert(name.to_string(), Arc::new(gone));
        Ok(())
    }

    /// One page of the tenant's levers in name order.
    pub fn list_levers(&self, t: &Tenant, req: &PageRequest) -> Result<Page<Arc<Lever>>, Error> {
        page(
            self.store,
            admin_prefix(AdminKind::Lever, &t.name),
            req,
            |name, _| t.lever(name),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admin::test_support::fixture;
    use crate::registry::Aggregation;

    fn body(json: &str) -> LeverBody {
        serde_json::from_str(json).unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn a_lever_keeps_its_aggregation() {
        let f = fixture();
        let admin = Admin::new(&f.store, &f.journal, &f.lock, &f.quotas);
        let sum = body(r#"{"aggregation": "sum"}"#);
        let first = admin.put_lever(&f.tenant, "tokens", &sum).await.unwrap();
        assert!(first.created);
        assert_eq!(first.value.aggregation, Aggregation::Sum);
        // A repeat changes nothing; a different aggregation is refused.
        let again = admin.put_lever(&f.tenant, "tokens", &sum).await.unwrap();
        assert!(!again.created);
        assert!(Arc::ptr_eq(&again.value, &first.value));
        let max = body(r#"{"aggregation": "max"}"#);
        let err = admin
            .put_lever(&f.tenant, "tokens", &max)
            .await
            .unwrap_err();
        assert_eq!(err.code(), ErrorCode::Conflict);
        assert!(err.message().contains("cannot change"), "{err}");
        // Not even after a delete: the stored usage is still under `sum`.
        admin.delete_lever(&f.tenant, "tokens").await.unwrap();
        assert_eq!(
            get(&f.tenant, "tokens").unwrap_err().code(),
            ErrorCode::NotFound
        );
        let err = admin
            .put_lever(&f.tenant, "tokens", &max)
            .await
            .unwrap_err();
        assert_eq!(err.code(), ErrorCode::Conflict);
        let back = admin.put_lever(&f.tenant, "tokens", &sum).await.unwrap();
        assert!(back.created);
        // The store has it: a listing reads the records.
        let page = admin
            .list_levers(&f.tenant, &PageRequest::default())
            .unwrap();
        assert_eq!(page.items.len(), 1);
        assert_eq!(page.next_cursor, None);
    }

    #[test]
    fn lever_names_are_checked() {
        assert!(check_name("api.calls").is_ok());
        assert_eq!(
            check_name("a b").unwrap_err().code(),
            ErrorCode::InvalidRequest
        );
    }
}
