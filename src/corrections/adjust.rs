//! Adjustments: signed additive corrections of `sum` and `count` levers, idempotent by
//! id within a contract.

use serde::Deserialize;

use super::{window_keys, Actor, AuditEntry, Corrected, Corrections};
use crate::counters::agg::AggValue;
use crate::decimal::Amount;
use crate::error::Error;
use crate::ingest::MAX_EARLY_MS;
use crate::journal::record::encode_events_only;
use crate::quota::book::partition;
use crate::registry::{valid_external_id, Aggregation, Tenant};
use crate::store::keys::{admin_key, AdminKind};
use crate::store::records::EventRecord;
use crate::window::{parse_rfc3339, rfc3339};

/// The body of `POST /v1/contracts/{contract}/adjustments`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdjustmentBody {
    /// Idempotency key, unique per contract.
    pub id: String,
    /// A `sum` or `count` lever.
    pub lever: String,
    /// Instant whose windows change (RFC 3339).
    pub time: String,
    /// Signed amount (JSON number or decimal string).
    #[serde(with = "crate::registry::amount_text")]
    pub value: String,
    /// Bucket.
    #[serde(default)]
    pub bucket: Option<String>,
    /// Why (required, 1-1024 bytes).
    pub reason: String,
}

/// Idempotency index name of an adjustment: contract, NUL, id.
fn index_name(contract: &str, id: &str) -> String {
    format!("{contract}\0{id}")
}

impl Corrections<'_> {
    /// Applies adjustment `b` to `contract` at `now` on behalf of `by`. A repeat of the
    /// same definition answers the stored entry (`created: false`); the same id with a
    /// different definition is a `conflict`, as is a lever that is not additive.
    pub fn adjust(
        &self,
        t: &Tenant,
        contract: &str,
        b: &AdjustmentBody,
        by: Actor,
        now: i64,
    ) -> Result<Corrected, Error> {
        if t.contract(contract).is_none() {
            return Err(Error::not_found("contract", contract));
        }
        if !valid_external_id(&b.id) {
            return Err(Error::invalid(
                "id",
                "must be 1-128 bytes, no control characters or '/'",
            ));
        }
        let lever = t
            .lever(&b.lever)
            .ok_or_else(|| Error::invalid("lever", format!("unknown lever {:?}", b.lever)))?;
        let time_ms = parse_rfc3339(&b.time)
            .ok_or_else(|| Error::invalid("time", "must be an RFC 3339 time"))?;
        if time_ms > now + MAX_EARLY_MS {
            return Err(Error::invalid(
                "time",
                "must not be more than 5 minutes in the future",
            ));
        }
        let value = Amount::parse_signed(&b.value).map_err(|e| Error::invalid("value", e))?;
        if value == Amount::ZERO {
            return Err(Error::invalid("value", "must not be 0"));
        }
        if lever.aggregation == Aggregation::Count && value.0 % crate::decimal::UNIT != 0 {
            return Err(Error::invalid(
                "value",
                "must be a whole number for a count lever",
            ));
        }
        if let Some(bk) = &b.bucket {
            if bk.is_empty() || bk.len() > 64 {
                return Err(Error::invalid("bucket", "must be 1-64 bytes"));
            }
        }
        if b.reason.trim().is_empty() || b.reason.len() > 1024 {
            return Err(Error::invalid("reason", "is required, at most 1024 bytes"));
        }
        if !lever.aggregation.is_additive() {
            return Err(Error::conflict(format!(
                "lever {:?} aggregates with `{}`, which an additive adjustment cannot correct",
                lever.id,
                lever.aggregation.as_str()
            )));
        }
        let mut entry = AuditEntry {
            kind: "adjustment".into(),
            id: b.id.clone(),
            contract: contract.to_string(),
            lever: lever.id.clone(),
            time: rfc3339(time_ms),
            value,
            bucket: b.bucket.clone(),
            reason: Some(b.reason.clone()),
            by,
            at: rfc3339(now),
            revision: 0,
        };
        let index_id = index_name(contract, &b.id);
        let index = admin_key(AdminKind::AdjustmentId, &t.name, &index_id);
        tokio::task::block_in_place(|| {
            let mut stamp = self.revisions.begin();
            if let Some(existing) = self.stored_entry(t, &index)? {
                let same = existing.lever == entry.lever
                    && existing.time == entry.time
                    && existing.value == entry.value
                    && existing.bucket == entry.bucket
                    && existing.reason == entry.reason;
                if !same {
                    return Err(Error::conflict(format!(
                        "adjustment {:?} already exists with a different definition",
                        b.id
                    )));
                }
                return Ok(Corrected {
                    entry: existing,
                    created: false,
                });
            }
            if let Some(cluster) = self.cluster {
                // Held (the revision lock) until the commit answers: a repeat waits for
                // this one and finds its index.
                let _held = stamp;
                let record = EventRecord {
                    contract: contract.to_string(),
                    lever: lever.id.clone(),
                    aggregation: Aggregation::Sum,
                    bucket: b.bucket.clone(),
                    time_ms,
                    value: value.0,
                    ordinal: 0,
                };
                self.adjust_in_partition(t, cluster, record, &mut entry, &index_id)?;
                return Ok(Corrected {
                    entry,
                    created: true,
                });
            }
            let keys = window_keys(&t.name, contract, &lever.id, time_ms, b.bucket.as_deref());
            let mut batch = self.journal.batch(0);
            let delta = AggValue::Sum(value.0).encode();
            for k in &keys {
                batch.rows().merge_window(k, &delta);
            }
            self.commit_audited(
                &mut stamp,
                t,
                batch,
                &keys,
                &mut entry,
                (AdminKind::AdjustmentId, &index_id),
            )?;
            Ok(Corrected {
                entry,
                created: true,
            })
        })
    }
}

impl Corrections<'_> {
    /// Cluster mode's adjustment, on the owner of `record`'s partition: one events
    /// record (without dedupe records) of the partition, with the audit entry and its
    /// index, appended to the partition's stream like accepted events. Every node counts
    /// it like them, so a flush stamps the rows with the revision of its message and the
    /// changes feed reports them on every node ([`crate::revision`]). The entry's
    /// `revision` is the events record's number.
    fn adjust_in_partition(
        &self,
        t: &Tenant,
        cluster: super::Cluster<'_>,
        record: EventRecord,
        entry: &mut AuditEntry,
        index_id: &str,
    ) -> Result<(), Error> {
        let p = partition(t, &record.contract, cluster.partitions);
        let seq = self.journal.reserve_in(Some(p), 1);
        let mut batch = self.journal.batch(0);
        batch.set_partition(p);
        let events = [record];
        batch.events_encoded(seq, &encode_events_only(&t.name, &events));
        entry.revision = seq;
        self.commit_with_audit(t, batch, entry, (AdminKind::AdjustmentId, index_id))?;
        // Counted here as the standbys count it when they apply the message.
        let shard = cluster.counters.shard_of(&t.name, &events[0].contract);
        cluster
            .counters
            .apply(shard, seq, self.journal.revision_of(seq), &t.name, &events);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::corrections::test_support::{actor, fixture};
    use crate::error::ErrorCode;
    use crate::registry::persist::PageRequest;
    use crate::store::cf;
    use crate::store::keys::window_key;
    use crate::window::{now_ms, Granularity};

    fn body(id: &str, lever: &str, value: &str, reason: &str) -> AdjustmentBody {
        serde_json::from_value(serde_json::json!({
            "id": id,
            "lever": lever,
            "time": "2026-01-02T03:04:05Z",
            "value": value,
            "reason": reason,
        }))
        .unwrap()
    }

    fn stored_minute(f: &crate::corrections::test_support::Fixture) -> Option<AggValue> {
        let t = parse_rfc3339("2026-01-02T03:04:05Z").unwrap();
        let g = Granularity::Minute;
        let k = window_key("t", "c", "tokens", g, g.floor(t), None);
        f.store
            .get(cf::WINDOWS, &k)
            .unwrap()
            .and_then(|v| AggValue::decode(&v))
    }

    #[test]
    fn an_adjustment_is_idempotent_by_id_and_conflicts_when_redefined() {
        let f = fixture();
        let c = f.corrections();
        let now = now_ms();
        let b = body("adj-1", "tokens", "-2.5", "refund");
        let first = c.adjust(&f.tenant, "c", &b, actor(), now).unwrap();
        assert!(first.created);
        assert_eq!(first.entry.value, Amount::parse_signed("-2.5").unwrap());
        assert!(first.entry.revision > 0);
        assert_eq!(
            stored_minute(&f).map(|v| v.amount()),
            Some(first.entry.value)
        );
        // The same definition again: the stored entry, nothing written twice.
        let again = c.adjust(&f.tenant, "c", &b, actor(), now + 1000).unwrap();
        assert!(!again.created);
        assert_eq!(again.entry, first.entry);
        assert_eq!(
            stored_minute(&f).map(|v| v.amount()),
            Some(first.entry.value)
        );
        // The same id with another value or reason: conflict, and still nothing written.
        for other in [
            body("adj-1", "tokens", "-3", "refund"),
            body("adj-1", "tokens", "-2.5", "another reason"),
        ] {
            let err = c.adjust(&f.tenant, "c", &other, actor(), now).unwrap_err();
            assert_eq!(err.code(), ErrorCode::Conflict, "{err}");
        }
        assert_eq!(
            stored_minute(&f).map(|v| v.amount()),
            Some(first.entry.value)
        );
        // One audit entry.
        let log = c.list(&f.tenant, "c", &PageRequest::default()).unwrap();
        assert_eq!(log.items, vec![first.entry]);
    }

    #[test]
    fn an_adjustment_is_refused_for_levers_it_cannot_correct() {
        let f = fixture();
        let c = f.corrections();
        let now = now_ms();
        let err = c
            .adjust(&f.tenant, "c", &body("a", "peak", "1", "r"), actor(), now)
            .unwrap_err();
        assert_eq!(err.code(), ErrorCode::Conflict);
        let err = c
            .adjust(&f.tenant, "c", &body("a", "nope", "1", "r"), actor(), now)
            .unwrap_err();
        assert_eq!(err.code(), ErrorCode::InvalidRequest);
        assert_eq!(err.message(), "`lever`: unknown lever \"nope\"");
        let err = c
            .adjust(&f.tenant, "x", &body("a", "tokens", "1", "r"), actor(), now)
            .unwrap_err();
        assert_eq!(err.code(), ErrorCode::NotFound);
        let err = c
            .adjust(&f.tenant, "c", &body("a", "tokens", "0", "r"), actor(), now)
            .unwrap_err();
        assert_eq!(err.message(), "`value`: must not be 0");
    }
}
