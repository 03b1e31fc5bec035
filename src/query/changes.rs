//! The changes feed (SPEC 4.2): window rows whose value changed after a revision, in
//! revision order, read in one snapshot (see [`crate::revision`]). In cluster mode
//! ([`changes_partitioned`]) the position is one revision per partition, an opaque
//! [`Cursor`].

use std::collections::BTreeMap;

use serde::Serialize;

use crate::counters::agg::AggValue;
use crate::decimal::Amount;
use crate::error::Error;
use crate::journal::stream::{applied_key, events_seq_range, partition_rev};
use crate::store::keys::decode_window_key;
use crate::store::{PartitionFeed, Store, StoreError};
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
        items.push(change(*rev, key, value)?);
    }
    Ok(Changes { items, next_after })
}

/// Cluster mode's position in the feed: for each partition, the stream sequence of the
/// last revision read through (see [`crate::revision`]). Opaque to clients: encoded as
/// `c1` followed by `.D-S` for each partition read so far, in partition order, where
/// `D` is the partition's distance from the previous one (from -1 for the first) and
/// `S` the sequence, both hexadecimal: 13 bytes per partition while its stream holds under 2^40 messages.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Cursor(pub BTreeMap<u32, u64>);

/// Why a cursor was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadCursor(pub String);

impl Cursor {
    /// Parses `after`: absent, `0` (the beginning) or a `next_after` of this feed.
    pub fn parse(after: Option<&str>, partitions: u32) -> Result<Cursor, BadCursor> {
        let s = match after {
            None | Some("0") => return Ok(Cursor::default()),
            Some(s) => s,
        };
        let bad = || {
            BadCursor(
                "in cluster mode `after` is 0 or the `next_after` of an earlier page (an \
                 opaque string)"
                    .into(),
            )
        };
        let mut parts = s.split('.');
        if parts.next() != Some("c1") {
            return Err(bad());
        }
        let mut out = BTreeMap::new();
        let mut p: i64 = -1;
        for part in parts {
            let (d, seq) = part.split_once('-').ok_or_else(bad)?;
            let d = u32::from_str_radix(d, 16).map_err(|_| bad())?;
            let seq = u64::from_str_radix(seq, 16).map_err(|_| bad())?;
            if d == 0 || seq == 0 || seq >= 1 << 50 {
                return Err(bad());
            }
            p += i64::from(d);
            if p >= i64::from(partitions) {
                return Err(BadCursor(format!(
                    "the cursor names partition {p}, but the cluster has {partitions}"
                )));
            }
            out.insert(p as u32, seq);
        }
        Ok(Cursor(out))
    }

    /// The opaque string form.
    pub fn encode(&self) -> String {
        let mut s = String::from("c1");
        let mut prev: i64 = -1;
        for (p, seq) in &self.0 {
            s.push_str(&format!(".{:x}-{seq:x}", i64::from(*p) - prev));
            prev = i64::from(*p);
        }
        s
    }
}

/// One page of cluster mode's feed.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct PartitionedChanges {
    /// The changed rows, in revision order within each partition.
    pub items: Vec<Change>,
    /// The cursor to ask for the next page after.
    pub next_after: String,
}

/// Cluster mode's [`changes`]: up to `limit` changes of `tenant` after `cursor` over
/// `partitions` partitions (more when the last revision read changed more rows: a page
/// never ends inside a revision).
pub fn changes_partitioned(
    store: &Store,
    tenant: &str,
    cursor: &Cursor,
    partitions: u32,
    limit: usize,
    only: Option<Granularity>,
) -> Result<PartitionedChanges, Error> {
    let parts: Vec<PartitionFeed> = (0..partitions)
        .map(|p| {
            let (lo, hi) = events_seq_range(p);
            PartitionFeed {
                after: cursor.0.get(&p).map_or(lo, |s| partition_rev(p, *s)),
                lo,
                hi,
                applied_key: applied_key(p),
            }
        })
        .collect();
    let (entries, through) = store.changes_partitioned(tenant, &parts, limit, |k| match only {
        None => true,
        Some(g) => decode_window_key(k).is_some_and(|w| w.gran == g),
    })?;
    let mut next = cursor.clone();
    for (p, (part, t)) in parts.iter().zip(through).enumerate() {
        if t > part.lo {
            next.0.insert(p as u32, t - part.lo);
        }
    }
    let mut items = Vec::with_capacity(entries.len());
    for (_, rev, key, value) in &entries {
        // A row removed by retention is no change to report.
        let Some(value) = value else { continue };
        items.push(change(*rev, key, value)?);
    }
    Ok(PartitionedChanges {
        items,
        next_after: next.encode(),
    })
}

/// The feed's item for window row `key` with stored `value` at `rev`.
fn change(rev: u64, key: &[u8], value: &[u8]) -> Result<Change, Error> {
    let w = decode_window_key(key).ok_or(StoreError::Corrupt("changes"))?;
    let v = AggValue::decode(value).ok_or(StoreError::Corrupt("windows"))?;
    Ok(Change {
        bucket: w.bucket.map(str::to_string),
        contract: w.contract.to_string(),
        end: rfc3339(w.start + w.gran.len_ms()),
        lever: w.lever.to_string(),
        revision: rev,
        start: rfc3339(w.start),
        value: v.amount(),
        window: w.gran.as_str(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::revision::Revisions;
    use crate::store::keys::window_key;
    use std::time::Duration;

    const MIN: i64 = 60_000;

    fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), Duration::from_secs(3600)).unwrap();
        (dir, store)
    }

    fn key(contract: &str, minute: i64) -> Vec<u8> {
        window_key("t", contract, "l", Granularity::Minute, minute * MIN, None)
    }

    /// What a node's stream applier does with message `stream_seq` of partition `p`
    /// carrying events record `record`: the record's revision and the applied sequence.
    fn apply(store: &Store, p: u32, stream_seq: u64, record: u64) {
        let mut w = store.writes(0);
        w.put_record_rev(record, partition_rev(p, stream_seq));
        w.put_meta(&applied_key(p), &stream_seq.to_be_bytes());
        store.apply(w, false).unwrap();
    }

    /// What a flush does: adds `rows` (key, value, revision), stamps them and deletes
    /// the flushed records' revisions.
    fn flush(store: &Store, revs: &Revisions, rows: &[(Vec<u8>, i128, u64)], records: &[u64]) {
        let mut w = store.writes(0);
        let mut keys = Vec::new();
        for (k, v, rev) in rows {
            w.merge_window(k, &AggValue::Sum(*v * crate::decimal::UNIT).encode());
            keys.push((k.clone(), *rev));
        }
        for r in records {
            w.delete_record_revs(*r, *r);
        }
        revs.begin().stamp_rows(store, &mut w, &keys).unwrap();
        store.apply(w, false).unwrap();
    }

    fn read(store: &Store, cursor: &Cursor, limit: usize) -> PartitionedChanges {
        changes_partitioned(store, "t", cursor, 4, limit, None).unwrap()
    }

    fn values(page: &PartitionedChanges) -> Vec<(String, u64, String)> {
        page.items
            .iter()
            .map(|c| (c.contract.clone(), c.revision, c.value.to_string()))
            .collect()
    }

    #[test]
    fn cursors_round_trip_and_bad_ones_are_refused() {
        let c = Cursor(
            [(0, 5), (3, 0x1_0000_0000), (4095, 1)]
                .into_iter()
                .collect(),
        );
        let s = c.encode();
        assert_eq!(s, "c1.1-5.3-100000000.ffc-1");
        assert_eq!(Cursor::parse(Some(&s), 4096).unwrap(), c);
        assert_eq!(Cursor::parse(None, 4).unwrap(), Cursor::default());
        assert_eq!(Cursor::parse(Some("0"), 4).unwrap(), Cursor::default());
        assert_eq!(Cursor::parse(Some("c1"), 4).unwrap(), Cursor::default());
        for bad in [
            "7",
            "c2.1-5",
            "c1.0-5",
            "c1.1-0",
            "c1.1",
            "c1.x-1",
            "c1.1-5.0-6",
        ] {
            assert!(Cursor::parse(Some(bad), 4096).is_err(), "{bad}");
        }
        // Partition 4 of a 4-partition cluster does not exist.
        assert!(Cursor::parse(Some("c1.5-1"), 4).is_err());
        assert!(Cursor::parse(Some("c1.4-1"), 4).is_ok());
    }

    #[test]
    fn a_row_is_shown_only_once_every_earlier_message_of_its_partition_is_flushed() {
        let (_d, store) = store();
        let revs = Revisions::load(&store).unwrap().partitioned();
        let (lo, _) = events_seq_range(1);
        let (r1, r2) = (partition_rev(1, 1), partition_rev(1, 2));
        // Messages 1 and 2 of partition 1 both change row a; 2 is flushed first.
        apply(&store, 1, 1, lo);
        apply(&store, 1, 2, lo + 1);
        flush(
            &store,
            &revs,
            &[(key("a", 0), 5, r2), (key("b", 0), 1, r2)],
            &[lo + 1],
        );
        let page = read(&store, &Cursor::default(), 100);
        assert!(page.items.is_empty(), "{page:?}");
        assert_eq!(page.next_after, "c1");
        // Once message 1's record is flushed too, row a shows once, at revision 2, with
        // both messages' value.
        flush(&store, &revs, &[(key("a", 0), 3, r1)], &[lo]);
        let page = read(&store, &Cursor::default(), 100);
        assert_eq!(
            values(&page),
            vec![("a".into(), r2, "8".into()), ("b".into(), r2, "1".into())]
        );
        assert_eq!(page.next_after, "c1.2-2");
        let next = Cursor::parse(Some(&page.next_after), 4).unwrap();
        assert!(read(&store, &next, 100).items.is_empty());
    }

    #[test]
    fn nodes_flushing_in_different_orders_show_the_same_rows_at_the_same_revisions() {
        let (_a, fast) = store();
        let (_b, slow) = store();
        let ra = Revisions::load(&fast).unwrap().partitioned();
        let rb = Revisions::load(&slow).unwrap().partitioned();
        let (lo0, _) = events_seq_range(0);
        let (lo2, _) = events_seq_range(2);
        // Partition 0: three messages; partition 2: one.
        let msgs0 = [
            (1, lo0, vec![("a", 0, 1)]),
            (2, lo0 + 1, vec![("a", 0, 2), ("a", 1, 4)]),
            (3, lo0 + 2, vec![("c", 0, 8)]),
        ];
        for node in [&fast, &slow] {
            for (s, rec, _) in &msgs0 {
                apply(node, 0, *s, *rec);
            }
            apply(node, 2, 1, lo2);
        }
        let rows = |m: &(u64, u64, Vec<(&str, i64, i128)>)| -> Vec<(Vec<u8>, i128, u64)> {
            m.2.iter()
                .map(|(c, min, v)| (key(c, *min), *v, partition_rev(0, m.0)))
                .collect()
        };
        // `fast` flushes everything at once, `slow` one message at a time, in reverse.
        let all: Vec<_> = msgs0.iter().flat_map(rows).collect();
        flush(&fast, &ra, &all, &[lo0, lo0 + 1, lo0 + 2]);
        flush(
            &fast,
            &ra,
            &[(key("d", 0), 16, partition_rev(2, 1))],
            &[lo2],
        );
        for m in msgs0.iter().rev() {
            flush(&slow, &rb, &rows(m), &[m.1]);
        }
        flush(
            &slow,
            &rb,
            &[(key("d", 0), 16, partition_rev(2, 1))],
            &[lo2],
        );
        // Read both in pages of one: a page never ends inside a revision.
        let drain = |store: &Store| {
            let mut cursor = Cursor::default();
            let mut got = Vec::new();
            let mut pages = 0;
            loop {
                let page = read(store, &cursor, 1);
                if page.items.is_empty() {
                    return (got, pages, cursor);
                }
                pages += 1;
                got.extend(values(&page));
                cursor = Cursor::parse(Some(&page.next_after), 4).unwrap();
            }
        };
        let (a, pages_a, end_a) = drain(&fast);
        let (b, pages_b, end_b) = drain(&slow);
        assert_eq!(a, b);
        assert_eq!((pages_a, pages_b), (3, 3));
        assert_eq!(end_a, end_b);
        assert_eq!(
            a,
            vec![
                ("a".into(), partition_rev(0, 2), "3".into()),
                ("a".into(), partition_rev(0, 2), "4".into()),
                ("c".into(), partition_rev(0, 3), "8".into()),
                ("d".into(), partition_rev(2, 1), "16".into()),
            ]
        );
    }
}
