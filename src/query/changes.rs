//! The changes feed (SPEC 4.2): window rows whose value changed after a revision, in
//! revision order, read in one snapshot (see [`crate::revision`]).

use serde::Serialize;

use crate::counters::agg::AggValue;
use crate::decimal::Amount;
use crate::error::Error;
use crate::store::keys::decode_window_key;
use crate::store::{Store, StoreError};
use crate::window::{rfc3339, Granularity};

/// One changed window row (fields in name order, as the feed has always listed them).
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Change {
    /// Bucket, for rows of a bucket.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bucket: Option<String>,
    /// Contract.
    pub contract: String,
    /// Window end.
    pub end: String,
    /// Lever.
    pub lever: String,
    /// Revision of the change.
    pub revision: u64,
    /// Window start.
    pub start: String,
    /// The row's value now.
    pub value: Amount,
    /// `minute`, `hour` or `day`.
    pub window: &'static str,
}

/// One page of the feed.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Changes {
    /// The changed rows.
    pub items: Vec<Change>,
    /// The revision to ask for the next page after.
    pub next_after: u64,
}

/// Up to `limit` changes of `tenant` after revision `after`, of one granularity or
/// (`None`) all.
pub fn changes(
    store: &Store,
    tenant: &str,
    after: u64,
    limit: usize,
    only: Option<Granularity>,
) -> Result<Changes, Error> {
    let entries = store.changes_after(tenant, after, limit, |k| match only {
        None => true,
        Some(g) => decode_window_key(k).is_some_and(|w| w.gran == g),
    })?;
    let mut next_after = after;
    let mut items = Vec::with_capacity(entries.len());
    for (rev, key, value) in &entries {
        next_after = next_after.max(*rev);
        // A row removed by retention is no change to report.
        let Some(value) = value else { continue };
        let w = decode_window_key(key).ok_or(StoreError::Corrupt("changes"))?;
        let v = AggValue::decode(value).ok_or(StoreError::Corrupt("windows"))?;
        items.push(Change {
            bucket: w.bucket.map(str::to_string),
            contract: w.contract.to_string(),
            end: rfc3339(w.start + w.gran.len_ms()),
            lever: w.lever.to_string(),
            revision: *rev,
            start: rfc3339(w.start),
            value: v.amount(),
            window: w.gran.as_str(),
        });
    }
    Ok(Changes { items, next_after })
}
