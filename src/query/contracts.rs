//! The contracts a tenant-wide usage query covers, in id order, paged by contract.

use std::sync::Arc;

use crate::error::Error;
use crate::registry::persist::{decode_cursor, page_after, Page, MAX_PAGE};
use crate::registry::{Contract, Tenant};
use crate::store::keys::{admin_prefix, AdminKind};
use crate::store::Store;

/// The contracts of `tenant` after `cursor` (an opaque page cursor), `limit` of them or
/// (`None`) all; the page's `next_cursor` is set when contracts are left.
pub fn contract_page(
    store: &Store,
    tenant: &Tenant,
    cursor: Option<&str>,
    limit: Option<usize>,
) -> Result<Page<Arc<Contract>>, Error> {
    let mut after = cursor.map(decode_cursor).transpose()?;
    let prefix = admin_prefix(AdminKind::Contract, &tenant.name);
    if let Some(limit) = limit {
        return Ok(page_after(
            store,
            prefix,
            after.as_deref(),
            limit,
            |id, _| tenant.contract(id),
        )?);
    }
    // All of them: walk pages of 1000.
    let mut all = Vec::new();
    loop {
        let page = page_after(
            store,
            prefix.clone(),
            after.as_deref(),
            MAX_PAGE,
            |id, _| tenant.contract(id),
        )?;
        all.extend(page.items);
        match page.next_cursor {
            Some(n) => after = Some(decode_cursor(&n)?),
            None => {
                return Ok(Page {
                    items: all,
                    next_cursor: None,
                })
            }
        }
    }
}
