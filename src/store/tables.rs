//! Typed reads: the one way code outside `store/` and [`crate::journal`] reads the
//! column families. Each method names the data it reads (registry rows, dedupe records,
//! usage windows, quota rows, notifications, revisions); the column family behind it
//! stays the store's business.

use super::{cf, Store, StoreError};

impl Store {
    /// The registry row under a full key ([`super::keys::admin_key`]).
    pub fn admin_get_key(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.get(cf::ADMIN, key)
    }

    /// Registry rows whose key starts with `prefix` ([`super::keys::admin_prefix`]),
    /// from `start` on, in key order, until `f` returns false.
    pub fn scan_admin(
        &self,
        prefix: &[u8],
        start: &[u8],
        f: impl FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<(), StoreError> {
        self.scan_prefix(cf::ADMIN, prefix, start, f)
    }

    /// Every registry row (start-up).
    pub fn scan_all_admin(
        &self,
        f: impl FnMut(&[u8], &[u8]) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        self.scan_all(cf::ADMIN, f)
    }

    /// The dedupe record stored under `key` ([`super::keys::dedupe_key`]).
    pub fn dedupe_get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.get(cf::DEDUPE, key)
    }

    /// The dedupe records of `keys`, given in ascending order, without filling the
    /// block cache ([`Store::multi_get_sorted`]).
    pub fn dedupe_get_sorted(&self, keys: &[Vec<u8>]) -> Result<Vec<Option<Vec<u8>>>, StoreError> {
        self.multi_get_sorted(cf::DEDUPE, keys)
    }

    /// Usage window rows with keys in `[from, to)`, in key order.
    pub fn scan_windows(
        &self,
        from: &[u8],
        to: &[u8],
        f: impl FnMut(&[u8], &[u8]),
    ) -> Result<(), StoreError> {
        self.scan_range(cf::WINDOWS, from, to, true, f)
    }

    /// A RocksDB integer property of the usage windows' column family (for metrics).
    pub fn windows_property(&self, name: &str) -> Option<u64> {
        self.property_int(cf::WINDOWS, name)
    }

    /// Every quota row (start-up).
    pub fn scan_all_quota(
        &self,
        f: impl FnMut(&[u8], &[u8]) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        self.scan_all(cf::QUOTA, f)
    }

    /// Every undelivered notification as (outbox number, record) (start-up).
    pub fn scan_all_outbox(
        &self,
        mut f: impl FnMut(u64, &[u8]) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        self.scan_all(cf::OUTBOX, |k, v| {
            let seq = u64::from_be_bytes(
                k.try_into()
                    .map_err(|_| StoreError::Corrupt("outbox key"))?,
            );
            f(seq, v)
        })
    }

    /// A row of the `meta` family.
    pub fn meta_get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.get(cf::META, key)
    }

    /// Rows of the `meta` family whose key starts with `prefix`, until `f` returns false.
    pub fn scan_meta(
        &self,
        prefix: &[u8],
        f: impl FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<(), StoreError> {
        self.scan_prefix(cf::META, prefix, prefix, f)
    }

    /// The revision of unflushed events record `seq` (cluster mode; `None` otherwise).
    pub fn record_rev(&self, seq: u64) -> Result<Option<u64>, StoreError> {
        Ok(self
            .meta_get(&super::keys::record_rev_key(seq))?
            .and_then(|v| <[u8; 8]>::try_from(&v[..]).ok())
            .map(u64::from_be_bytes))
    }

    /// The latest revision of each window row of `keys` (`None` for a row never
    /// stamped).
    pub fn row_revisions<K: AsRef<[u8]>>(
        &self,
        keys: &[K],
    ) -> Result<Vec<Option<u64>>, StoreError> {
        Ok(self
            .multi_get(cf::ROWREV, keys)?
            .into_iter()
            .map(|v| {
                v.as_deref()
                    .and_then(|p| <[u8; 8]>::try_from(p).ok())
                    .map(u64::from_be_bytes)
            })
            .collect())
    }
}
