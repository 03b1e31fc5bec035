//! Phase "validate": what a parsed, not-yet-counted event must satisfy before its quota
//! is decided: a known lever and contract, a time inside the tenant's accepted lateness
//! and at most [`MAX_EARLY_MS`] ahead, and before the contract's end (SPEC 2.2).

use std::sync::Arc;

use super::outcome::RejectCode;
use crate::config::Aggregation;
use crate::decimal::Amount;
use crate::event::Event;
use crate::registry::{Contract, Lever, Tenant};
use crate::store::records::EventRecord;

/// How far in the future an event time may be (SPEC 2.2).
pub const MAX_EARLY_MS: i64 = 5 * 60_000;

/// A valid event: its lever and contract, the record the journal will keep, the value
/// it counts (1 on a `count` lever) and its time.
pub(super) struct Valid {
    pub(super) lever: Arc<Lever>,
    pub(super) contract: Arc<Contract>,
    pub(super) record: EventRecord,
    pub(super) value: Amount,
    pub(super) time_ms: i64,
}

/// Checks `ev` for `tenant` at receive time `now_ms` (an event without a time happens
/// now); the rejection code and message when it fails.
#[inline]
pub(super) fn validate(
    tenant: &Tenant,
    ev: &Event<'_>,
    now_ms: i64,
) -> Result<Valid, (RejectCode, String)> {
    let Some(lever) = tenant.lever(&ev.lever) else {
        return Err((
            RejectCode::UnknownLever,
            format!("lever {:?} does not exist", ev.lever),
        ));
    };
    let Some(contract) = tenant.contract(&ev.contract) else {
        return Err((
            RejectCode::UnknownContract,
            format!("contract {:?} does not exist", ev.contract),
        ));
    };
    let time_ms = ev.time_ms.unwrap_or(now_ms);
    let lateness_ms = tenant.lateness.as_millis() as i64;
    if time_ms < now_ms - lateness_ms {
        return Err((
            RejectCode::TooLate,
            format!(
                "event time {} is older than the accepted lateness of {}; use an adjustment",
                crate::window::rfc3339(time_ms),
                humantime::format_duration(tenant.lateness)
            ),
        ));
    }
    if time_ms > now_ms + MAX_EARLY_MS {
        return Err((
            RejectCode::TooEarly,
            format!(
                "event time {} is more than 5 minutes in the future",
                crate::window::rfc3339(time_ms)
            ),
        ));
    }
    if let Some(end) = contract.ends_at_ms {
        if time_ms >= end {
            return Err((
                RejectCode::ContractEnded,
                format!(
                    "contract {:?} ended at {}",
                    ev.contract,
                    contract.ends_at.as_deref().unwrap_or("")
                ),
            ));
        }
    }
    let value = match lever.aggregation {
        Aggregation::Count => Amount::ONE,
        _ => ev.value.unwrap_or(Amount::ONE),
    };
    let record = EventRecord {
        contract: contract.id.clone(),
        lever: lever.id.clone(),
        aggregation: lever.aggregation,
        bucket: ev.bucket.as_ref().map(|b| b.to_string()),
        time_ms,
        value: value.0,
        ordinal: 0,
    };
    Ok(Valid {
        lever,
        contract,
        record,
        value,
        time_ms,
    })
}

#[cfg(test)]
mod tests {
    use super::super::fixture::{event, tenant, NOW};
    use super::*;

    fn code(r: Result<Valid, (RejectCode, String)>) -> Option<RejectCode> {
        r.err().map(|(c, _)| c)
    }

    #[test]
    fn each_rule_has_its_code() {
        let t = tenant(None);
        let ok = event("e1", "c1", "calls", Some(NOW));
        assert_eq!(code(validate(&t, &ok, NOW)), None);
        let unknown_lever = event("e2", "c1", "nope", Some(NOW));
        assert_eq!(
            code(validate(&t, &unknown_lever, NOW)),
            Some(RejectCode::UnknownLever)
        );
        let unknown_contract = event("e3", "zz", "calls", Some(NOW));
        assert_eq!(
            code(validate(&t, &unknown_contract, NOW)),
            Some(RejectCode::UnknownContract)
        );
        let lateness = t.lateness.as_millis() as i64;
        let late = event("e4", "c1", "calls", Some(NOW - lateness - 1));
        assert_eq!(code(validate(&t, &late, NOW)), Some(RejectCode::TooLate));
        let just_in_time = event("e5", "c1", "calls", Some(NOW - lateness));
        assert_eq!(code(validate(&t, &just_in_time, NOW)), None);
        let early = event("e6", "c1", "calls", Some(NOW + MAX_EARLY_MS + 1));
        assert_eq!(code(validate(&t, &early, NOW)), Some(RejectCode::TooEarly));
        let at_the_edge = event("e7", "c1", "calls", Some(NOW + MAX_EARLY_MS));
        assert_eq!(code(validate(&t, &at_the_edge, NOW)), None);
    }

    #[test]
    fn an_event_at_or_after_the_contract_end_is_refused() {
        let t = tenant(None);
        let ended = t.contract("ended").unwrap();
        let end = ended.ends_at_ms.unwrap();
        let before = event("e1", "ended", "calls", Some(end - 1));
        assert_eq!(code(validate(&t, &before, end)), None);
        let at = event("e2", "ended", "calls", Some(end));
        assert_eq!(
            code(validate(&t, &at, end)),
            Some(RejectCode::ContractEnded)
        );
    }

    #[test]
    fn a_count_lever_counts_one_and_an_event_without_time_happens_now() {
        let t = tenant(None);
        let mut ev = event("e1", "c1", "requests", None);
        ev.value = Some(Amount::parse_input("7").unwrap());
        let v = validate(&t, &ev, NOW).ok().unwrap();
        assert_eq!((v.value, v.time_ms), (Amount::ONE, NOW));
        assert_eq!(v.record.aggregation, Aggregation::Count);
        let mut sum = event("e2", "c1", "calls", Some(NOW));
        sum.value = Some(Amount::parse_input("7").unwrap());
        let v = validate(&t, &sum, NOW).ok().unwrap();
        assert_eq!(v.value, Amount::parse_input("7").unwrap());
    }
}
