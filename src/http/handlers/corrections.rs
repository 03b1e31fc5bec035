//! Corrections (SPEC 4.3): adjustments, retractions and their audit log.
//!
//! - `POST /v1/contracts/{contract}/adjustments`: a signed additive correction of one
//!   `sum` or `count` lever at one instant (and bucket). It changes the minute, hour and
//!   day window rows that contain `time`, final ones included, with new revisions, and is
//!   idempotent by `id` within the contract. It corrects billed usage only: quota periods
//!   are not changed (a grant gives allowance back).
//! - `DELETE /v1/events/{id}`: removes a remembered accepted event's contribution from
//!   every window row and from every quota period of its contract chain, and marks its
//!   dedupe record retracted, so a repeat of the DELETE changes nothing and a repost of
//!   the id stays a duplicate. `409` for `max` and `latest` levers, whose aggregates
//!   cannot be reversed; `404` for ids not remembered (never accepted, or older than
//!   `dedupe_retention`).
//! - `GET /v1/contracts/{contract}/adjustments`: both kinds, oldest first, with who
//!   (tenant, role, key name) and when.
//!
//! Each correction is one atomic, fsynced batch (window merges, revisions, quota rows,
//! audit record, idempotency index) written under the revision lock, which also
//! serialises it with flushes.

use crate::http::util::ReqBody;
use hyper::{Request, Response, StatusCode};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::admin::{body, invalid, not_found, page_under};
use crate::counters::agg::AggValue;
use crate::decimal::Amount;
use crate::http::error::{ApiError, ErrorCode};
use crate::http::router::Ctx;
use crate::http::util::{json, only_params, parse_json, query_map, Body};
use crate::ingest::MAX_EARLY_MS;
use crate::registry::{valid_external_id, Aggregation, Tenant};
use crate::store::keys::{admin_key, admin_prefix, dedupe_key, id_hash, window_key, AdminKind};
use crate::store::records::{decode_dedupe_full, mark_retracted};
use crate::window::{now_ms, parse_rfc3339, rfc3339, Granularity};

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

/// Who made a correction.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Actor {
    /// The key's tenant.
    pub tenant: String,
    /// The key's role.
    pub role: String,
    /// The key's configured name (never the key).
    pub key: String,
}

/// One audit log entry.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct AuditEntry {
    /// `adjustment` or `retraction`.
    pub kind: String,
    /// Adjustment id, or the retracted event's id.
    pub id: String,
    /// Contract.
    pub contract: String,
    /// Lever.
    pub lever: String,
    /// Instant of the changed windows.
    pub time: String,
    /// Signed change applied to the windows.
    pub value: Amount,
    /// Bucket.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bucket: Option<String>,
    /// Reason (adjustments).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Who.
    pub by: Actor,
    /// When (RFC 3339).
    pub at: String,
    /// Highest revision the change was stamped with.
    pub revision: u64,
}

/// Audit record name: contract, NUL, zero-padded revision (chronological order).
fn audit_name(contract: &str, revision: u64) -> String {
    format!("{contract}\0{revision:020}")
}

/// Idempotency index name of an adjustment: contract, NUL, id.
fn index_name(contract: &str, id: &str) -> String {
    format!("{contract}\0{id}")
}

fn actor(ctx: &Ctx) -> Actor {
    Actor {
        tenant: ctx.principal.tenant.to_string(),
        role: ctx.principal.role.as_str().to_string(),
        key: ctx.principal.key_name.to_string(),
    }
}

/// The three window rows (minute, hour, day) containing `time_ms`.
fn window_keys(
    tenant: &str,
    contract: &str,
    lever: &str,
    time_ms: i64,
    bucket: Option<&str>,
) -> Vec<Vec<u8>> {
    [Granularity::Minute, Granularity::Hour, Granularity::Day]
        .into_iter()
        .map(|g| window_key(tenant, contract, lever, g, g.floor(time_ms), bucket))
        .collect()
}

fn internal(e: impl std::fmt::Display) -> ApiError {
    ApiError::new(ErrorCode::Internal, e.to_string())
}

/// Looks up a stored audit entry through an index record.
fn stored_entry(ctx: &Ctx, t: &Tenant, index: &[u8]) -> Result<Option<AuditEntry>, ApiError> {
    let Some(name) = ctx.state.store.admin_get_key(index)? else {
        return Ok(None);
    };
    let key = admin_key(
        AdminKind::Audit,
        &t.name,
        std::str::from_utf8(&name).map_err(internal)?,
    );
    match ctx.state.store.admin_get_key(&key)? {
        Some(v) => Ok(Some(serde_json::from_slice(&v).map_err(internal)?)),
        None => Ok(None),
    }
}

/// `POST /v1/contracts/{contract}/adjustments`.
pub async fn post_adjustment(
    ctx: &Ctx,
    contract: &str,
    req: Request<ReqBody>,
) -> Result<Response<Body>, ApiError> {
    let bytes = body(ctx, req).await?;
    let b: AdjustmentBody = parse_json(&bytes)?;
    let t = ctx.tenant()?;
    if t.contract(contract).is_none() {
        return Err(not_found("contract", contract));
    }
    if !valid_external_id(&b.id) {
        return Err(invalid((
            "id",
            "must be 1-128 bytes, no control characters or '/'".into(),
        )));
    }
    let lever = t
        .lever(&b.lever)
        .ok_or_else(|| invalid(("lever", format!("unknown lever {:?}", b.lever))))?;
    let now = now_ms();
    let time_ms = parse_rfc3339(&b.time)
        .ok_or_else(|| invalid(("time", "must be an RFC 3339 time".into())))?;
    if time_ms > now + MAX_EARLY_MS {
        return Err(invalid((
            "time",
            "must not be more than 5 minutes in the future".into(),
        )));
    }
    let value = Amount::parse_signed(&b.value).map_err(|e| invalid(("value", e.to_string())))?;
    if value == Amount::ZERO {
        return Err(invalid(("value", "must not be 0".into())));
    }
    if lever.aggregation == Aggregation::Count && value.0 % crate::decimal::UNIT != 0 {
        return Err(invalid((
            "value",
            "must be a whole number for a count lever".into(),
        )));
    }
    if let Some(bk) = &b.bucket {
        if bk.is_empty() || bk.len() > 64 {
            return Err(invalid(("bucket", "must be 1-64 bytes".into())));
        }
    }
    if b.reason.trim().is_empty() || b.reason.len() > 1024 {
        return Err(invalid((
            "reason",
            "is required, at most 1024 bytes".into(),
        )));
    }
    if !lever.aggregation.is_additive() {
        return Err(ApiError::new(
            ErrorCode::Conflict,
            format!(
                "lever {:?} aggregates with `{}`, which an additive adjustment cannot correct",
                lever.id,
                lever.aggregation.as_str()
            ),
        ));
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
        by: actor(ctx),
        at: rfc3339(now),
        revision: 0,
    };
    let index_id = index_name(contract, &b.id);
    let index = admin_key(AdminKind::AdjustmentId, &t.name, &index_id);
    let state = ctx.state.clone();
    tokio::task::block_in_place(|| {
        let mut stamp = state.revisions.begin();
        if let Some(existing) = stored_entry(ctx, &t, &index)? {
            let same = existing.lever == entry.lever
                && existing.time == entry.time
                && existing.value == entry.value
                && existing.bucket == entry.bucket
                && existing.reason == entry.reason;
            if !same {
                return Err(ApiError::new(
                    ErrorCode::Conflict,
                    format!(
                        "adjustment {:?} already exists with a different definition",
                        b.id
                    ),
                ));
            }
            return Ok(json(StatusCode::OK, &existing));
        }
        let keys = window_keys(&t.name, contract, &lever.id, time_ms, b.bucket.as_deref());
        let mut batch = state.journal.batch(0);
        let delta = AggValue::Sum(value.0).encode();
        for k in &keys {
            batch.rows().merge_window(k, &delta);
        }
        entry.revision = stamp.stamp(&state.store, batch.rows(), &keys)?;
        let name = audit_name(contract, entry.revision);
        let audit = serde_json::to_vec(&entry).map_err(internal)?;
        batch
            .rows()
            .put_admin(AdminKind::Audit, &t.name, &name, &audit);
        batch
            .rows()
            .put_admin(AdminKind::AdjustmentId, &t.name, &index_id, name.as_bytes());
        batch.durable();
        state.journal.commit_blocking(batch)?;
        Ok(json(StatusCode::CREATED, &entry))
    })
}

/// How long a retraction waits for the flush that writes its id's dedupe record.
const RETRACT_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// `DELETE /v1/events/{id}`.
pub async fn retract(ctx: &Ctx, id: &str) -> Result<Response<Body>, ApiError> {
    let t = ctx.tenant()?;
    let state = ctx.state.clone();
    let dkey = dedupe_key(&t.name, id_hash(id));
    let unknown = || {
        ApiError::new(
            ErrorCode::NotFound,
            format!(
                "event {id:?} is not remembered (never accepted, or older than dedupe_retention)"
            ),
        )
    };
    // An id accepted since the last flush has its dedupe record in a journal record,
    // which the flusher writes into `dedupe` later: a retraction mark written now would be
    // overwritten then. The flusher is asked to move it at once, and the retraction goes
    // on once it is there.
    let key = (t.index, id_hash(id));
    if state.recent.get(&key).is_some() {
        let deadline = std::time::Instant::now() + RETRACT_WAIT;
        while state.recent.get(&key).is_some() {
            if std::time::Instant::now() > deadline {
                return Err(ApiError::new(
                    ErrorCode::StorageUnavailable,
                    format!("event {id:?} is not flushed yet (flushes are failing); retry later"),
                ));
            }
            let _ = state.flush_wake.try_send(());
            tokio::time::sleep(std::time::Duration::from_millis(2)).await;
        }
    }
    tokio::task::block_in_place(|| {
        let mut stamp = state.revisions.begin();
        let record = state.store.dedupe_get(&dkey)?.ok_or_else(unknown)?;
        let rec = decode_dedupe_full(&record).ok_or(crate::store::StoreError::Corrupt("dedupe"))?;
        let (accepted, stored_id, ev, retracted) =
            (rec.accepted_ms, rec.id, rec.event, rec.retracted);
        let now = now_ms();
        let retention = state.cfg.dedupe_retention.as_millis() as i64;
        if stored_id != id || accepted + retention < now {
            return Err(unknown());
        }
        let index = admin_key(AdminKind::RetractionId, &t.name, id);
        if retracted {
            let existing = stored_entry(ctx, &t, &index)?.ok_or_else(unknown)?;
            return Ok(json(StatusCode::OK, &existing));
        }
        if !ev.aggregation.is_additive() {
            return Err(ApiError::new(
                ErrorCode::Conflict,
                format!(
                    "event {id:?} is on lever {:?} aggregating with `{}`, which cannot be reversed",
                    ev.lever,
                    ev.aggregation.as_str()
                ),
            ));
        }
        let value = Amount(ev.value);
        let keys = window_keys(
            &t.name,
            &ev.contract,
            &ev.lever,
            ev.time_ms,
            ev.bucket.as_deref(),
        );
        let mut batch = state.journal.batch(0);
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
        let quota_rows = state
            .quotas
            .rows_counted(&t, &members, &ev.lever, ev.time_ms);
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
            by: actor(ctx),
            at: rfc3339(now),
            revision: 0,
        };
        entry.revision = stamp.stamp(&state.store, batch.rows(), &keys)?;
        let name = audit_name(&ev.contract, entry.revision);
        let audit = serde_json::to_vec(&entry).map_err(internal)?;
        batch
            .rows()
            .put_admin(AdminKind::Audit, &t.name, &name, &audit);
        batch
            .rows()
            .put_admin(AdminKind::RetractionId, &t.name, id, name.as_bytes());
        batch.durable();
        state.journal.commit_blocking(batch)?;
        state.quotas.subtract(&t, &quota_rows, value);
        Ok(json(StatusCode::OK, &entry))
    })
}

/// `GET /v1/contracts/{contract}/adjustments?cursor=&limit=`: the audit log, oldest first.
pub fn list(ctx: &Ctx, contract: &str, req: &Request<ReqBody>) -> Result<Response<Body>, ApiError> {
    let q = query_map(req.uri().query())?;
    only_params(&q, &["cursor", "limit"])?;
    let t = ctx.tenant()?;
    if t.contract(contract).is_none() {
        return Err(not_found("contract", contract));
    }
    let mut prefix = admin_prefix(AdminKind::Audit, &t.name);
    prefix.extend_from_slice(format!("{contract}\0").as_bytes());
    let (items, next) = page_under(&ctx.state, prefix, &q, |_, v| {
        serde_json::from_slice::<AuditEntry>(v).ok()
    })?;
    Ok(json(
        StatusCode::OK,
        &json!({"items": items, "next_cursor": next}),
    ))
}
