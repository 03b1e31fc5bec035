//! Rows read back from the store's `quota` column family at start-up
//! ([`QuotaBook::load`]).

use super::{chain, QuotaBook, Row};
use crate::counters::agg::AggValue;
use crate::decimal::Amount;
use crate::registry::Registry;
use crate::store::quota_keys::StoredKey;
use crate::store::{Store, StoreError};
use crate::sync::lock;

impl QuotaBook {
    /// Loads a stored row (at start-up).
    pub fn load(&self, key: StoredKey, value: AggValue, root: &str) {
        match key {
            StoredKey::Usage(k) => {
                let mut s = lock(self.shard_for(&k.tenant, root));
                match s.rows.get_mut(&k) {
                    Some(cur) => cur.value = cur.value.merge(value),
                    None => {
                        s.rows.insert(
                            k,
                            Row {
                                value,
                                granted: Amount::ZERO,
                            },
                        );
                    }
                }
            }
            StoredKey::Granted(k) => {
                let mut s = lock(self.shard_for(&k.tenant, root));
                let zero = AggValue::Sum(0);
                let row = s.rows.entry(k).or_insert(Row {
                    value: zero,
                    granted: Amount::ZERO,
                });
                row.granted = row.granted.saturating_add(value.amount());
            }
            StoredKey::GrantUsed(k) => {
                let mut s = lock(self.shard_for(&k.tenant, root));
                let used = s.grant_used.entry(k).or_insert(Amount::ZERO);
                *used = used.saturating_add(value.amount());
            }
            StoredKey::Notified(k) => {
                lock(self.shard_for(&k.row.tenant, root)).notified.insert(k);
            }
        }
    }

    /// Loads the usage rows of periods that end at or after `horizon_ms` from `store`,
    /// for the chains `only` keeps (called with the tenant and the chain root): at
    /// start-up every chain, in cluster mode the chains of a partition taken over.
    pub fn load_stored(
        &self,
        store: &Store,
        registry: &Registry,
        horizon_ms: i64,
        only: impl Fn(&str, &str) -> bool,
    ) -> Result<(), StoreError> {
        store.scan_all_quota(|k, v| {
            let key = StoredKey::decode(k).ok_or(StoreError::Corrupt("quota"))?;
            let value = AggValue::decode(v).ok_or(StoreError::Corrupt("quota"))?;
            let (tenant, contract) = match &key {
                StoredKey::Usage(u) | StoredKey::Granted(u) => {
                    if u.end < horizon_ms {
                        return Ok(());
                    }
                    (&u.tenant, &u.contract)
                }
                StoredKey::GrantUsed(g) => (&g.tenant, &g.contract),
                StoredKey::Notified(n) => {
                    if n.row.end < horizon_ms {
                        return Ok(());
                    }
                    (&n.row.tenant, &n.row.contract)
                }
            };
            let Some(t) = registry.tenant(tenant) else {
                return Ok(());
            };
            let Some(c) = t.contract(contract) else {
                return Ok(());
            };
            let root = chain(t, &c)
                .last()
                .map(|r| r.id.clone())
                .unwrap_or_default();
            if only(tenant, &root) {
                self.load(key, value, &root);
            }
            Ok(())
        })
    }

    /// Drops every row of the chains `gone` names (called with the tenant and the chain
    /// root): cluster mode, when this node stops deciding for their partition.
    pub fn forget(&self, registry: &Registry, gone: impl Fn(&str, &str) -> bool) {
        let root_of = |tenant: &str, contract: &str| -> String {
            registry
                .tenant(tenant)
                .and_then(|t| {
                    t.contract(contract)
                        .and_then(|c| chain(t, &c).last().map(|r| r.id.clone()))
                })
                .unwrap_or_else(|| contract.to_string())
        };
        for shard in self.shards.iter() {
            let mut s = lock(shard);
            s.rows
                .retain(|k, _| !gone(&k.tenant, &root_of(&k.tenant, &k.contract)));
            s.grant_used
                .retain(|k, _| !gone(&k.tenant, &root_of(&k.tenant, &k.contract)));
            s.notified
                .retain(|k| !gone(&k.row.tenant, &root_of(&k.row.tenant, &k.row.contract)));
        }
    }
}
