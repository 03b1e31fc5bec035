//! Rows read back from the store's `quota` column family at start-up
//! ([`QuotaBook::load`]).

use super::{QuotaBook, Row};
use crate::counters::agg::AggValue;
use crate::decimal::Amount;
use crate::store::quota_keys::StoredKey;
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
}
