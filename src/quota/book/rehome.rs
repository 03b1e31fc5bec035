//! Re-parenting in the book ([`QuotaBook::rehome`]): a re-parented contract and its
//! descendants move to the new root's shard, their rows, grant consumption and notified
//! thresholds with them, while the registry changes under both shard locks.

use super::QuotaBook;
use crate::counters::shard_of;
use crate::store::quota_keys::{GrantKey, NotifiedKey, UsageKey};
use crate::sync::lock;

impl QuotaBook {
    /// Moves the rows of `moved` contracts (a re-parented contract and its descendants)
    /// from the old root's shard to the new root's, and runs `update` (the registry
    /// change) while holding both shards, so no decision sees a half-moved chain.
    /// Lock order: lower shard index first (ingest holds one shard at a time).
    pub fn rehome<R>(
        &self,
        tenant: &str,
        moved: &std::collections::HashSet<String>,
        old_root: &str,
        new_root: &str,
        update: impl FnOnce() -> R,
    ) -> R {
        let a = shard_of(tenant, old_root, self.shards.len());
        let b = shard_of(tenant, new_root, self.shards.len());
        if a == b {
            let _g = lock(&self.shards[a]);
            return update();
        }
        let (lo, hi) = (a.min(b), a.max(b));
        let mut g_lo = lock(&self.shards[lo]);
        let mut g_hi = lock(&self.shards[hi]);
        let (from, to) = if a == lo {
            (&mut *g_lo, &mut *g_hi)
        } else {
            (&mut *g_hi, &mut *g_lo)
        };
        let keys: Vec<UsageKey> = from
            .rows
            .keys()
            .filter(|k| &*k.tenant == tenant && moved.contains(&*k.contract))
            .cloned()
            .collect();
        for k in keys {
            if let Some(v) = from.rows.remove(&k) {
                match to.rows.get_mut(&k) {
                    Some(cur) => {
                        cur.value = cur.value.merge(v.value);
                        cur.granted = cur.granted.saturating_add(v.granted);
                    }
                    None => {
                        to.rows.insert(k, v);
                    }
                }
            }
        }
        let keys: Vec<GrantKey> = from
            .grant_used
            .keys()
            .filter(|k| &*k.tenant == tenant && moved.contains(&*k.contract))
            .cloned()
            .collect();
        for k in keys {
            if let Some(v) = from.grant_used.remove(&k) {
                let cur = to.grant_used.entry(k).or_default();
                *cur = cur.saturating_add(v);
            }
        }
        let keys: Vec<NotifiedKey> = from
            .notified
            .iter()
            .filter(|k| &*k.row.tenant == tenant && moved.contains(&*k.row.contract))
            .cloned()
            .collect();
        for k in keys {
            from.notified.remove(&k);
            to.notified.insert(k);
        }
        update()
    }
}
