//! Reads: point lookups (one key, several, several in key order without filling the
//! block cache), the changes feed in one snapshot, and scans by prefix, range or whole
//! column family.

use rocksdb::{Direction, IteratorMode, ReadOptions};

use super::{cf, keys, Store, StoreError};

/// One partition's part of [`Store::changes_partitioned`].
#[derive(Debug, Clone)]
pub struct PartitionFeed {
    /// The revision read through so far.
    pub after: u64,
    /// The partition's revisions (and events record numbers) are `lo..hi`.
    pub lo: u64,
    /// See `lo`.
    pub hi: u64,
    /// The meta key of the partition's applied stream sequence.
    pub applied_key: Vec<u8>,
}

impl Store {
    /// Point lookups of several keys in one column family.
    pub fn multi_get<K: AsRef<[u8]>>(
        &self,
        cf_name: &str,
        keys: &[K],
    ) -> Result<Vec<Option<Vec<u8>>>, StoreError> {
        let cf = self.cf(cf_name);
        self.db
            .multi_get_cf(keys.iter().map(|k| (cf, k.as_ref())))
            .into_iter()
            .map(|r| r.map_err(StoreError::from))
            .collect()
    }

    /// Point lookups of several keys, given in ascending order (RocksDB then skips its
    /// own sort of the keys), without filling the block cache.
    pub fn multi_get_sorted(
        &self,
        cf_name: &str,
        keys: &[Vec<u8>],
    ) -> Result<Vec<Option<Vec<u8>>>, StoreError> {
        debug_assert!(keys.windows(2).all(|w| w[0] <= w[1]), "keys must be sorted");
        let cf = self.cf(cf_name);
        // Lookups of (mostly new) random ids have no locality: caching the data blocks
        // they touch would only push useful blocks out of the shared cache.
        let mut ro = ReadOptions::default();
        ro.fill_cache(false);
        if let [key] = keys {
            // One key (a single-event request): a plain lookup skips MultiGet's set-up.
            return Ok(vec![self
                .db
                .get_pinned_cf_opt(cf, key, &ro)?
                .map(|v| v.to_vec())]);
        }
        self.db
            .batched_multi_get_cf_opt(cf, keys, true, &ro)
            .into_iter()
            .map(|r| r.map(|v| v.map(|v| v.to_vec())).map_err(StoreError::from))
            .collect()
    }

    /// Reads up to `limit` entries of the changes feed of `tenant` after revision `after`
    /// whose window key passes `keep`, each with its window row's value, all in one
    /// snapshot. Returns `(revision, window key, value)`; the value is `None` for a row
    /// removed by retention.
    #[allow(clippy::type_complexity)]
    pub fn changes_after(
        &self,
        tenant: &str,
        after: u64,
        limit: usize,
        mut keep: impl FnMut(&[u8]) -> bool,
    ) -> Result<Vec<(u64, Vec<u8>, Option<Vec<u8>>)>, StoreError> {
        let snap = self.db.snapshot();
        let prefix = keys::changes_key(tenant, 0);
        let prefix = &prefix[..prefix.len() - 8];
        let start = keys::changes_key(tenant, after.saturating_add(1));
        let mut ro = ReadOptions::default();
        ro.set_snapshot(&snap);
        ro.set_iterate_lower_bound(start.clone());
        if let Some(upper) = prefix_successor(prefix) {
            ro.set_iterate_upper_bound(upper);
        }
        let windows = self.cf(cf::WINDOWS);
        let mut out = Vec::new();
        let it = self.db.iterator_cf_opt(
            self.cf(cf::CHANGES),
            ro,
            IteratorMode::From(&start, Direction::Forward),
        );
        for item in it {
            let (k, v) = item?;
            let rev = keys::changes_rev(&k, prefix.len()).ok_or(StoreError::Corrupt("changes"))?;
            if !keep(&v) {
                continue;
            }
            let value = snap.get_cf(windows, &v)?;
            out.push((rev, v.to_vec(), value));
            if out.len() >= limit {
                break;
            }
        }
        Ok(out)
    }

    /// Cluster mode's changes feed of `tenant`, read in one snapshot: for each partition
    /// in `parts`, the entries after its position that the feed may show (see
    /// [`crate::revision`]: revisions below the first unflushed events record of the
    /// partition, or up to its applied stream sequence when none is unflushed), until
    /// `limit` entries are taken, always finishing the revision of the last one (rows
    /// changed by one message share a revision). Returns, per entry, the index of its
    /// part in `parts`, its revision, window key and the row's value (`None` when
    /// removed by retention); and per part the highest revision it was read through.
    #[allow(clippy::type_complexity)]
    pub fn changes_partitioned(
        &self,
        tenant: &str,
        parts: &[PartitionFeed],
        limit: usize,
        mut keep: impl FnMut(&[u8]) -> bool,
    ) -> Result<(Vec<(usize, u64, Vec<u8>, Option<Vec<u8>>)>, Vec<u64>), StoreError> {
        let snap = self.db.snapshot();
        let windows = self.cf(cf::WINDOWS);
        let meta = self.cf(cf::META);
        let prefix = keys::changes_key(tenant, 0);
        let prefix = &prefix[..prefix.len() - 8];
        let mut out = Vec::new();
        let mut through: Vec<u64> = parts.iter().map(|p| p.after).collect();
        // The first unflushed events record of a partition bounds what may be shown;
        // with none, everything applied may. Read only for partitions with entries.
        let visible_bound = |part: &PartitionFeed| -> Result<u64, StoreError> {
            let mut ro = ReadOptions::default();
            ro.set_snapshot(&snap);
            let lo_key = keys::record_rev_key(part.lo);
            ro.set_iterate_upper_bound(keys::record_rev_key(part.hi));
            let mut first_unflushed: Option<u64> = None;
            for item in
                self.db
                    .iterator_cf_opt(meta, ro, IteratorMode::From(&lo_key, Direction::Forward))
            {
                let (_, v) = item?;
                let rev = <[u8; 8]>::try_from(&v[..])
                    .map(u64::from_be_bytes)
                    .map_err(|_| StoreError::Corrupt("meta"))?;
                first_unflushed = Some(first_unflushed.map_or(rev, |f: u64| f.min(rev)));
            }
            let bound = match first_unflushed {
                Some(f) => f.saturating_sub(1),
                None => match snap.get_cf(meta, &part.applied_key)? {
                    Some(v) => <[u8; 8]>::try_from(&v[..])
                        .map(|b| part.lo + u64::from_be_bytes(b))
                        .map_err(|_| StoreError::Corrupt("meta"))?,
                    None => part.lo,
                },
            };
            Ok(bound.min(part.hi - 1))
        };
        for (i, part) in parts.iter().enumerate() {
            let from = part.after.saturating_add(1).max(part.lo);
            if from >= part.hi {
                continue;
            }
            let start = keys::changes_key(tenant, from);
            let mut ro = ReadOptions::default();
            ro.set_snapshot(&snap);
            ro.set_iterate_upper_bound(keys::changes_key(tenant, part.hi));
            let mut bound: Option<u64> = None;
            let mut last: Option<u64> = None;
            for item in self.db.iterator_cf_opt(
                self.cf(cf::CHANGES),
                ro,
                IteratorMode::From(&start, Direction::Forward),
            ) {
                let (k, v) = item?;
                let rev =
                    keys::changes_rev(&k, prefix.len()).ok_or(StoreError::Corrupt("changes"))?;
                let b = match bound {
                    Some(b) => b,
                    None => *bound.insert(visible_bound(part)?),
                };
                // Past what may be shown; or `last` is read through and this revision
                // is not.
                if rev > b || (out.len() >= limit && last != Some(rev)) {
                    break;
                }
                last = Some(rev);
                if keep(&v) {
                    let value = snap.get_cf(windows, &v)?;
                    out.push((i, rev, v.to_vec(), value));
                }
            }
            if let Some(l) = last {
                through[i] = through[i].max(l);
            }
            if out.len() >= limit {
                break;
            }
        }
        Ok((out, through))
    }

    /// Point lookup.
    pub fn get(&self, cf_name: &str, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.db.get_cf(self.cf(cf_name), key)?)
    }

    /// Calls `f` for every `(key, value)` whose key starts with `prefix`, starting at
    /// `start` (which must itself start with `prefix`), in key order, until `f` returns
    /// false.
    pub fn scan_prefix(
        &self,
        cf_name: &str,
        prefix: &[u8],
        start: &[u8],
        mut f: impl FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<(), StoreError> {
        let mut ro = ReadOptions::default();
        ro.set_iterate_lower_bound(start.to_vec());
        if let Some(upper) = prefix_successor(prefix) {
            ro.set_iterate_upper_bound(upper);
        }
        let it = self.db.iterator_cf_opt(
            self.cf(cf_name),
            ro,
            IteratorMode::From(start, Direction::Forward),
        );
        for item in it {
            let (k, v) = item?;
            if !k.starts_with(prefix) {
                break;
            }
            if !f(&k, &v) {
                break;
            }
        }
        Ok(())
    }

    /// Calls `f` for every key in `[from, to)` of a column family. With `fill_cache`
    /// false the blocks read do not enter the block cache (a one-time read, such as the
    /// flusher's of the journal records it deletes, would only evict useful blocks).
    pub fn scan_range(
        &self,
        cf_name: &str,
        from: &[u8],
        to: &[u8],
        fill_cache: bool,
        mut f: impl FnMut(&[u8], &[u8]),
    ) -> Result<(), StoreError> {
        let mut ro = ReadOptions::default();
        ro.fill_cache(fill_cache);
        ro.set_iterate_lower_bound(from.to_vec());
        ro.set_iterate_upper_bound(to.to_vec());
        let it = self.db.iterator_cf_opt(
            self.cf(cf_name),
            ro,
            IteratorMode::From(from, Direction::Forward),
        );
        for item in it {
            let (k, v) = item?;
            f(&k, &v);
        }
        Ok(())
    }

    /// Iterates over a whole column family.
    pub fn scan_all(
        &self,
        cf_name: &str,
        mut f: impl FnMut(&[u8], &[u8]) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        for item in self.db.iterator_cf(self.cf(cf_name), IteratorMode::Start) {
            let (k, v) = item?;
            f(&k, &v)?;
        }
        Ok(())
    }
}

/// Smallest byte string greater than every string with prefix `p`, if one exists.
pub fn prefix_successor(p: &[u8]) -> Option<Vec<u8>> {
    let mut v = p.to_vec();
    while let Some(last) = v.pop() {
        if last < 0xff {
            v.push(last + 1);
            return Some(v);
        }
    }
    None
}
