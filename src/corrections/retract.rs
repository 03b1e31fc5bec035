//! Retractions: an accepted event's contribution taken back out of its window rows and
//! quota periods.

use super::{window_keys, Actor, AuditEntry, Corrected, Corrections};
use crate::counters::agg::AggValue;
use crate::decimal::Amount;
use crate::error::Error;
use crate::registry::Tenant;
use crate::store::keys::{admin_key, dedupe_key, id_hash, AdminKind};
use crate::store::records::{decode_dedupe_full, mark_retracted};
use crate::store::StoreError;
use crate::window::{now_ms, rfc3339};

/// How long a retraction waits for the flush that writes its id's dedupe record.
const RETRACT_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

fn unknown(id: &str) -> Error {
    Error::not_found_detail(format!(
        "event {id:?} is not remembered (never accepted, or older than dedupe_retention)"
    ))
}

impl Corrections<'_> {
    /// Retracts event `id` on behalf of `by`. A repeat answers the stored entry
    /// (`created: false`).
    pub async fn retract(&self, t: &Tenant, id: &str, by: Actor) -> Result<Corrected, Error> {
        self.refuse_retraction_in_cluster()?;
        // An id accepted since the last flush has its dedupe record in a journal record,
        // which the flusher writes into `dedupe` later: a retraction mark written now
        // would be overwritten then. The flusher is asked to move it at once, and the
        // retraction goes on once it is there.
        let key = (t.index, id_hash(id));
        if self.recent.get(&key).is_some() {
            let deadline = std::time::Instant::now() + RETRACT_WAIT;
            while self.recent.get(&key).is_some() {
                if std::time::Instant::now() > deadline {
                    return Err(Error::unavailable(format!(
                        "event {id:?} is not flushed yet (flushes are failing); retry later"
                    )));
                }
                let _ = self.flush_wake.try_send(());
                tokio::time::sleep(std::time::Duration::from_millis(2)).await;
            }
        }
        tokio::task::block_in_place(|| self.retract_flushed(t, id, by, now_ms()))
    }

    /// Retracts event `id` whose dedupe record is in the store, at `now`.
    fn retract_flushed(
        &self,
        t: &Tenant,
        id: &str,
        by: Actor,
        now: i64,
    ) -> Result<Corrected, Error> {
        let store = self.store;
        let dkey = dedupe_key(&t.name, id_hash(id));
        let mut stamp = self.revisions.begin();
        let record = store.dedupe_get(&dkey)?.ok_or_else(|| unknown(id))?;
        let rec = decode_dedupe_full(&record).ok_or(StoreError::Corrupt("dedupe"))?;
        let (accepted, stored_id, ev, retracted) =
            (rec.accepted_ms, rec.id, rec.event, rec.retracted);
        let retention = self.dedupe_retention.as_millis() as i64;
        if stored_id != id || accepted + retention < now {
            return Err(unknown(id));
        }
        let index = admin_key(AdminKind::RetractionId, &t.name, id);
        if retracted {
            let existing = self.stored_entry(t, &index)?.ok_or_else(|| unknown(id))?;
            return Ok(Corrected {
                entry: existing,
                created: false,
            });
        }
        if !ev.aggregation.is_additive() {
            return Err(Error::conflict(format!(
                "event {id:?} is on lever {:?} aggregating with `{}`, which cannot be reversed",
                ev.lever,
                ev.aggregation.as_str()
            )));
        }
        let value = Amount(ev.value);
        let keys = window_keys(
            &t.name,
            &ev.contract,
            &ev.lever,
            ev.time_ms,
            ev.bucket.as_deref(),
        );
        let mut batch = self.journal.batch(0);
        let minus = AggValue::Sum(-ev.value).encode();
        for k in &keys {
            batch.rows().merge_window(k, &minus);
        }
        // Quota periods of the contract and of the ancestors the event counted toward
        // when it was accepted (recorded with it), whatever the chain is now.
        let members: Vec<_> = std::iter::once(&ev.contract)
            .chain(rec.ancestors.iter())
            .filter_map(|id| t.contract(id))
            .collect();
        let quota_rows = self.quotas.rows_counted(t, &members, &ev.lever, ev.time_ms);
        for k in &quota_rows {
            batch
                .rows()
                .merge_quota(&k.encode(), AggValue::Sum(-ev.value));
        }
        batch.rows().put_dedupe(&dkey, &mark_retracted(&record));
        let mut entry = AuditEntry {
            kind: "retraction".into(),
            id: id.to_string(),
            contract: ev.contract.clone(),
            lever: ev.lever.clone(),
            time: rfc3339(ev.time_ms),
            value: Amount(-ev.value),
            bucket: ev.bucket.clone(),
            reason: None,
            by,
            at: rfc3339(now),
            revision: 0,
        };
        self.commit_audited(
            &mut stamp,
            t,
            batch,
            &keys,
            &mut entry,
            (AdminKind::RetractionId, id),
        )?;
        self.quotas.subtract(t, &quota_rows, value);
        Ok(Corrected {
            entry,
            created: true,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::corrections::test_support::{actor, fixture, Fixture};
    use crate::error::ErrorCode;
    use crate::registry::Aggregation;
    use crate::store::cf;
    use crate::store::records::{encode_dedupe, EventRecord};
    use rocksdb::WriteBatch;

    /// Stores the dedupe record of an accepted event `id` on `lever`.
    fn accepted(f: &Fixture, id: &str, lever: &str, aggregation: Aggregation) {
        let ev = EventRecord {
            contract: "c".into(),
            lever: lever.into(),
            aggregation,
            bucket: None,
            time_ms: now_ms() - 60_000,
            value: 5 * crate::decimal::UNIT,
            ordinal: 0,
        };
        let mut batch = WriteBatch::default();
        batch.put_cf(
            f.store.cf(cf::DEDUPE),
            dedupe_key("t", id_hash(id)),
            encode_dedupe(now_ms(), id, &ev),
        );
        f.store.write(batch, false).unwrap();
    }

    #[test]
    fn a_retraction_of_a_non_additive_lever_is_refused() {
        let f = fixture();
        accepted(&f, "e-max", "peak", Aggregation::Max);
        let err = f
            .corrections()
            .retract_flushed(&f.tenant, "e-max", actor(), now_ms())
            .unwrap_err();
        assert_eq!(err.code(), ErrorCode::Conflict);
        assert!(err.message().contains("cannot be reversed"), "{err}");
        // Nothing was marked: the record is not retracted.
        let rec = f
            .store
            .get(cf::DEDUPE, &dedupe_key("t", id_hash("e-max")))
            .unwrap()
            .unwrap();
        assert!(!decode_dedupe_full(&rec).unwrap().retracted);
    }

    #[test]
    fn a_retraction_is_idempotent_and_unknown_ids_are_not_found() {
        let f = fixture();
        accepted(&f, "e-sum", "tokens", Aggregation::Sum);
        let c = f.corrections();
        let first = c
            .retract_flushed(&f.tenant, "e-sum", actor(), now_ms())
            .unwrap();
        assert!(first.created);
        assert_eq!(first.entry.value, Amount(-5 * crate::decimal::UNIT));
        let again = c
            .retract_flushed(&f.tenant, "e-sum", actor(), now_ms())
            .unwrap();
        assert_eq!((again.created, again.entry), (false, first.entry));
        let err = c
            .retract_flushed(&f.tenant, "never", actor(), now_ms())
            .unwrap_err();
        assert_eq!(err.code(), ErrorCode::NotFound);
    }
}
