//! The registry's records in the store: levers, contracts, plans, grants and the
//! corrections audit log are admin records (keyed by kind, tenant and name). A record is
//! added to a journal batch (`Writes::put_admin`) that the writer commits durably before the
//! in-memory registry changes; listings page through the records of one kind in name
//! order with an opaque cursor.

use std::collections::HashMap;
use std::sync::Arc;

use serde::Serialize;

use crate::error::Error;
use crate::registry::{Contract, Grant, Grants, Lever, Plan, Registry};
use crate::store::keys::{get_str, AdminKind};
use crate::store::{Store, StoreError};

/// Loads every stored lever, plan, contract and grant into `registry` (at start, and in
/// cluster mode after each registry change another node made). Levers, plans and
/// contracts replace their in-memory versions; each contract's grants are rebuilt from
/// the store, so loading twice changes nothing.
pub fn load_stored(store: &Store, registry: &Registry) -> Result<(), StoreError> {
    let mut grants: HashMap<(String, String), Grants> = HashMap::new();
    store.scan_all_admin(|k, v| {
        let Some((&kind, rest)) = k.split_first() else {
            return Ok(());
        };
        let Some((tenant, rest)) = get_str(rest) else {
            return Err(StoreError::Corrupt("admin"));
        };
        let Ok(name) = std::str::from_utf8(rest) else {
            return Err(StoreError::Corrupt("admin"));
        };
        let Some(t) = registry.tenant(tenant) else {
            tracing::warn!(
                tenant,
                name,
                "stored definition of an unconfigured tenant ignored"
            );
            return Ok(());
        };
        if kind == AdminKind::Lever as u8 {
            let mut l: Lever =
                serde_json::from_slice(v).map_err(|_| StoreError::Corrupt("admin"))?;
            l.deleted = l.status == "deleted";
            t.levers.insert(name.to_string(), Arc::new(l));
        } else if kind == AdminKind::Plan as u8 {
            let p: Plan = serde_json::from_slice(v).map_err(|_| StoreError::Corrupt("admin"))?;
            t.plans.insert(name.to_string(), Arc::new(p.finish()));
        } else if kind == AdminKind::Contract as u8 {
            let c: Contract =
                serde_json::from_slice(v).map_err(|_| StoreError::Corrupt("admin"))?;
            t.contracts.insert(name.to_string(), Arc::new(c.finish()));
        } else if kind == AdminKind::Grant as u8 {
            let g: Grant = serde_json::from_slice(v).map_err(|_| StoreError::Corrupt("admin"))?;
            let key = (tenant.to_string(), g.contract.clone());
            let current = grants.remove(&key).unwrap_or_default();
            grants.insert(key, current.with(g));
        }
        Ok(())
    })?;
    for ((tenant, contract), gs) in grants {
        if let Some(t) = registry.tenant(&tenant) {
            t.grants.insert(contract, Arc::new(gs));
        }
    }
    Ok(())
}

/// Largest and default page size of admin listings.
pub const MAX_PAGE: usize = 1000;
const DEFAULT_PAGE: usize = 100;

/// Encodes a page cursor (opaque to clients): the last name of the page.
pub fn encode_cursor(last: &str) -> String {
    hex::encode(last.as_bytes())
}

/// Decodes a page cursor.
pub fn decode_cursor(c: &str) -> Result<String, Error> {
    hex::decode(c)
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .ok_or_else(|| Error::invalid_query("invalid cursor"))
}

/// Reads a page size (default 100, 1..=1000).
pub fn page_limit(limit: Option<&str>) -> Result<usize, Error> {
    match limit {
        None => Ok(DEFAULT_PAGE),
        Some(v) => match v.parse::<usize>() {
            Ok(n) if (1..=MAX_PAGE).contains(&n) => Ok(n),
            _ => Err(Error::invalid_query(
                "`limit` must be an integer between 1 and 1000",
            )),
        },
    }
}

/// A listing's page request as the client gave it (checked when the listing runs, after
/// the listed resource is found).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PageRequest {
    /// The cursor of the previous page's last item.
    pub cursor: Option<String>,
    /// The page size (text, `1..=1000`).
    pub limit: Option<String>,
}

impl PageRequest {
    /// The `cursor` and `limit` parameters of a query.
    pub fn from_query(q: &HashMap<String, String>) -> PageRequest {
        PageRequest {
            cursor: q.get("cursor").cloned(),
            limit: q.get("limit").cloned(),
        }
    }
}

/// One page of a listing.
#[derive(Debug, Clone, Serialize)]
pub struct Page<T> {
    /// The items.
    pub items: Vec<T>,
    /// Cursor of the next page, `None` on the last one.
    pub next_cursor: Option<String>,
}

impl<T> Page<T> {
    /// The page with its items mapped.
    pub fn map<U>(self, f: impl FnMut(T) -> U) -> Page<U> {
        Page {
            items: self.items.into_iter().map(f).collect(),
            next_cursor: self.next_cursor,
        }
    }
}

/// One page of the admin records under `prefix` (limit first checked, then the
/// cursor); `keep` gets the rest of each key as the record's name, and the record.
pub fn page<T>(
    store: &Store,
    prefix: Vec<u8>,
    req: &PageRequest,
    keep: impl FnMut(&str, &[u8]) -> Option<T>,
) -> Result<Page<T>, Error> {
    let limit = page_limit(req.limit.as_deref())?;
    let after = req.cursor.as_deref().map(decode_cursor).transpose()?;
    Ok(page_after(store, prefix, after.as_deref(), limit, keep)?)
}

/// Up to `limit` records under `prefix` whose names sort strictly after `after`.
pub fn page_after<T>(
    store: &Store,
    prefix: Vec<u8>,
    after: Option<&str>,
    limit: usize,
    mut keep: impl FnMut(&str, &[u8]) -> Option<T>,
) -> Result<Page<T>, StoreError> {
    let start = match after {
        Some(after) => {
            let mut k = prefix.clone();
            k.extend_from_slice(after.as_bytes());
            // Strictly after the cursor's key.
            k.push(0);
            k
        }
        None => prefix.clone(),
    };
    let mut items = Vec::new();
    let mut last: Option<String> = None;
    let mut more = false;
    store.scan_admin(&prefix, &start, |k, v| {
        let Ok(name) = std::str::from_utf8(&k[prefix.len()..]) else {
            return true;
        };
        if let Some(item) = keep(name, v) {
            if items.len() == limit {
                more = true;
                return false;
            }
            items.push(item);
            last = Some(name.to_string());
        }
        true
    })?;
    Ok(Page {
        items,
        next_cursor: if more {
            last.map(|l| encode_cursor(&l))
        } else {
            None
        },
    })
}
