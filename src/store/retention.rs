//! What compaction removes: window rows past their granularity's retention (and their
//! changes-feed index with them), dedupe records past `dedupe_retention`, and quota rows
//! of periods that ended longer ago than any event can be late. Each rule is a
//! compaction filter that [`super::options`] sets on its column family.

use std::time::Duration;

use rocksdb::CompactionDecision;

use super::{keys, quota_keys, records};
use crate::window::WindowRetention;

/// Expiry of window rows under a [`WindowRetention`] (the type sits in
/// [`crate::window`], where the configuration also takes it from; reading the row's key
/// is the store's part).
impl WindowRetention {
    /// Whether the window row with key `k` ended longer than its retention before `now`.
    pub fn expired(&self, k: &[u8], now_ms: i64) -> bool {
        use crate::window::Granularity;
        let parse = || -> Option<(Granularity, i64)> {
            let (_, b) = keys::get_str(k)?;
            let (_, b) = keys::get_str(b)?;
            let (_, b) = keys::get_str(b)?;
            let (&g, b) = b.split_first()?;
            let (start, _) = keys::get_time(b)?;
            Some((Granularity::from_code(g)?, start))
        };
        let Some((g, start)) = parse() else {
            return false;
        };
        let keep = match g {
            Granularity::Minute => self.minute,
            Granularity::Hour => self.hour,
            Granularity::Day => self.day,
        };
        keep.is_some_and(|d| start + g.len_ms() + d.as_millis() as i64 <= now_ms)
    }
}

/// Filter of a column family whose keys are window keys (`windows`, `rowrev`): removes
/// rows past their retention.
pub(super) fn window_keys(
    retention: WindowRetention,
) -> impl FnMut(u32, &[u8], &[u8]) -> CompactionDecision + Send + 'static {
    move |_lvl: u32, k: &[u8], _v: &[u8]| {
        if retention.expired(k, crate::window::now_ms()) {
            CompactionDecision::Remove
        } else {
            CompactionDecision::Keep
        }
    }
}

/// Filter of a column family whose values are window keys (`changes`): removes the feed
/// entries of rows past their retention.
pub(super) fn window_values(
    retention: WindowRetention,
) -> impl FnMut(u32, &[u8], &[u8]) -> CompactionDecision + Send + 'static {
    move |_lvl: u32, _k: &[u8], v: &[u8]| {
        if retention.expired(v, crate::window::now_ms()) {
            CompactionDecision::Remove
        } else {
            CompactionDecision::Keep
        }
    }
}

/// Filter of `dedupe`: removes records accepted more than `retention` ago.
pub(super) fn dedupe(
    retention: Duration,
) -> impl FnMut(u32, &[u8], &[u8]) -> CompactionDecision + Send + 'static {
    let retention_ms = retention.as_millis() as i64;
    move |_lvl: u32, _k: &[u8], v: &[u8]| match records::dedupe_accepted_ms(v) {
        Some(at) if at + retention_ms < crate::window::now_ms() => CompactionDecision::Remove,
        _ => CompactionDecision::Keep,
    }
}

/// Filter of `quota`: removes the usage, grant-covered and notified rows of periods that
/// ended more than `keep` ago (lifetime rows and grant consumption have no end).
pub(super) fn quota_periods(
    keep: Duration,
) -> impl FnMut(u32, &[u8], &[u8]) -> CompactionDecision + Send + 'static {
    let keep_ms = keep.as_millis() as i64;
    move |_lvl: u32, k: &[u8], _v: &[u8]| {
        use quota_keys::StoredKey;
        let end = match StoredKey::decode(k) {
            Some(StoredKey::Usage(u) | StoredKey::Granted(u)) => u.end,
            Some(StoredKey::Notified(n)) => n.row.end,
            _ => i64::MAX,
        };
        if end != i64::MAX && end.saturating_add(keep_ms) < crate::window::now_ms() {
            CompactionDecision::Remove
        } else {
            CompactionDecision::Keep
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use rocksdb::WriteBatch;

    use crate::store::keys::{self, dedupe_key, id_hash};
    use crate::store::records::{encode_dedupe, EventRecord};
    use crate::store::{cf, Store};
    use crate::window::WindowRetention;

    #[test]
    fn expired_dedupe_records_are_removed_by_compaction() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), Duration::from_secs(3600)).unwrap();
        let ev = EventRecord::sample();
        let now = crate::window::now_ms();
        let old = dedupe_key("t", id_hash("old"));
        let fresh = dedupe_key("t", id_hash("fresh"));
        let mut b = WriteBatch::default();
        b.put_cf(
            store.cf(cf::DEDUPE),
            &old,
            encode_dedupe(now - 7_200_000, "old", &ev),
        );
        b.put_cf(
            store.cf(cf::DEDUPE),
            &fresh,
            encode_dedupe(now - 60_000, "fresh", &ev),
        );
        store.write(b, true).unwrap();
        store.compact(cf::DEDUPE).unwrap();
        assert!(store.get(cf::DEDUPE, &old).unwrap().is_none());
        assert!(store.get(cf::DEDUPE, &fresh).unwrap().is_some());
    }

    #[test]
    fn old_window_rows_are_removed_by_compaction_per_granularity() {
        use crate::store::agg::AggValue;
        use crate::store::keys::window_key;
        use crate::window::{Granularity, DAY_MS};
        let dir = tempfile::tempdir().unwrap();
        let day = Duration::from_secs(86_400);
        let retention = WindowRetention {
            minute: Some(7 * day),
            hour: Some(30 * day),
            day: None,
            quota_periods: Some(2 * day),
        };
        let store =
            Store::open_with(dir.path(), Duration::from_secs(3600), retention, None).unwrap();
        let now = crate::window::now_ms();
        let key = |g: Granularity, age_days: i64| {
            window_key("t", "c", "l", g, g.floor(now - age_days * DAY_MS), None)
        };
        // (granularity, age in days, kept?)
        let cases = [
            (Granularity::Minute, 1, true),
            (Granularity::Minute, 6, true),
            (Granularity::Minute, 8, false),
            (Granularity::Hour, 8, true),
            (Granularity::Hour, 29, true),
            (Granularity::Hour, 31, false),
            (Granularity::Day, 31, true),
            (Granularity::Day, 5000, true),
        ];
        let mut b = WriteBatch::default();
        for (g, age, _) in cases {
            b.merge_cf(
                store.cf(cf::WINDOWS),
                key(g, age),
                AggValue::Sum(1).encode(),
            );
        }
        store.write(b, true).unwrap();
        // Merge operands become values in the first compaction; the filter sees values.
        store.compact(cf::WINDOWS).unwrap();
        store.compact(cf::WINDOWS).unwrap();
        for (g, age, kept) in cases {
            let present = store.get(cf::WINDOWS, &key(g, age)).unwrap().is_some();
            assert_eq!(present, kept, "{g:?} row {age} days old");
        }
        // Keys that are not window keys are never removed.
        assert!(!retention.expired(b"garbage", now));
        // The changes-feed index of removed rows goes too.
        let old = key(Granularity::Minute, 8);
        let fresh = key(Granularity::Minute, 1);
        let mut b = WriteBatch::default();
        for (i, k) in [&old, &fresh].into_iter().enumerate() {
            b.put_cf(
                store.cf(cf::CHANGES),
                keys::changes_key("t", i as u64 + 1),
                k,
            );
            b.put_cf(store.cf(cf::ROWREV), k, (i as u64 + 1).to_be_bytes());
        }
        store.write(b, true).unwrap();
        store.compact(cf::CHANGES).unwrap();
        store.compact(cf::ROWREV).unwrap();
        let changes_1 = keys::changes_key("t", 1);
        let changes_2 = keys::changes_key("t", 2);
        assert!(store.get(cf::CHANGES, &changes_1).unwrap().is_none());
        assert!(store.get(cf::CHANGES, &changes_2).unwrap().is_some());
        assert!(store.get(cf::ROWREV, &old).unwrap().is_none());
        assert!(store.get(cf::ROWREV, &fresh).unwrap().is_some());
        // Quota period rows: ended more than 2 days ago -> removed; lifetime and grant
        // consumption rows are kept.
        use crate::quota::period::PeriodKind;
        use crate::store::quota_keys::{GrantKey, UsageKey};
        let row = |kind: PeriodKind, end: i64| {
            UsageKey::new("t".into(), "c".into(), "l".into(), kind, end - DAY_MS, end)
        };
        let ended = row(PeriodKind::Day, now - 3 * DAY_MS);
        let recent = row(PeriodKind::Day, now - DAY_MS);
        let lifetime = row(PeriodKind::Lifetime, i64::MAX);
        let grant = GrantKey {
            tenant: "t".into(),
            contract: "c".into(),
            lever: "l".into(),
            id: "g".into(),
        };
        let mut b = WriteBatch::default();
        for k in [
            ended.encode(),
            ended.encode_granted(),
            recent.encode(),
            lifetime.encode(),
            grant.encode(),
        ] {
            b.merge_cf(store.cf(cf::QUOTA), k, AggValue::Sum(1).encode());
        }
        store.write(b, true).unwrap();
        store.compact(cf::QUOTA).unwrap();
        store.compact(cf::QUOTA).unwrap();
        let has = |k: Vec<u8>| store.get(cf::QUOTA, &k).unwrap().is_some();
        assert!(!has(ended.encode()) && !has(ended.encode_granted()));
        assert!(has(recent.encode()) && has(lifetime.encode()) && has(grant.encode()));
    }
}
