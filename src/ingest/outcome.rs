//! Phase "outcome": the answer of a request (accepted, duplicates, per-event
//! rejections in input order) and the ingest metrics it records. The per-event
//! rejection codes are one closed enum, [`RejectCode`], beside the whole-request
//! [`crate::error::ErrorCode`].

use serde::Serialize;

use super::Slot;
pub use crate::error::RejectCode;
use crate::telemetry::{hot, names};

/// A per-event rejection in the response.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Rejection {
    /// Position in the request.
    pub index: usize,
    /// Event id, when readable.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Stable code.
    pub code: RejectCode,
    /// The offending field, for `invalid_event`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<&'static str>,
    /// Human message.
    pub message: String,
}

/// The response of `POST /v1/events`.
#[derive(Debug, Clone, Serialize, Default, PartialEq, Eq)]
pub struct Outcome {
    /// Events counted.
    pub accepted: usize,
    /// Events already counted earlier (or earlier in this request).
    pub duplicates: usize,
    /// Events refused.
    pub rejected: usize,
    /// Rejections in input order.
    pub errors: Vec<Rejection>,
}

/// The answer for `slots`, every one of them decided, in input order.
#[inline]
pub(super) fn outcome(slots: Vec<Slot<'_>>) -> Outcome {
    let mut out = Outcome::default();
    for s in slots {
        match s {
            Slot::Accepted => out.accepted += 1,
            Slot::Duplicate => out.duplicates += 1,
            Slot::Rejected(r) => {
                out.rejected += 1;
                out.errors.push(r);
            }
            Slot::Claimed(..) | Slot::Waiting(..) => unreachable!("every slot is decided"),
        }
    }
    out
}

pub(super) fn record_metrics(out: &Outcome) {
    if out.accepted > 0 {
        hot::count1(
            names::INGEST_EVENTS_TOTAL,
            "outcome",
            "accepted",
            out.accepted as u64,
        );
    }
    if out.duplicates > 0 {
        hot::count1(
            names::INGEST_EVENTS_TOTAL,
            "outcome",
            "duplicate",
            out.duplicates as u64,
        );
        hot::count0(names::DEDUPE_HITS_TOTAL, out.duplicates as u64);
    }
    for r in &out.errors {
        hot::count1(names::INGEST_REJECTED_TOTAL, "code", r.code.as_str(), 1);
    }
    if out.rejected > 0 {
        hot::count1(
            names::INGEST_EVENTS_TOTAL,
            "outcome",
            "rejected",
            out.rejected as u64,
        );
    }
    hot::record0(
        names::INGEST_BATCH_EVENTS,
        (out.accepted + out.duplicates + out.rejected) as f64,
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_distinct_and_serialize_as_their_strings() {
        let strs: std::collections::HashSet<_> =
            RejectCode::ALL.iter().map(|c| c.as_str()).collect();
        assert_eq!(strs.len(), RejectCode::ALL.len());
        assert_eq!(
            serde_json::to_value(RejectCode::QuotaExceeded).unwrap(),
            serde_json::json!("quota_exceeded")
        );
        // The metric's label values are exactly these codes.
        assert_eq!(
            crate::telemetry::zero::labels::REJECTION_CODES,
            RejectCode::ALL.map(RejectCode::as_str)
        );
    }

    #[test]
    fn the_outcome_counts_slots_and_keeps_rejections_in_input_order() {
        let rejection = |index, code| Rejection {
            index,
            id: Some(format!("e{index}")),
            code,
            field: None,
            message: "no".into(),
        };
        let slots = vec![
            Slot::Accepted,
            Slot::Rejected(rejection(1, RejectCode::TooLate)),
            Slot::Duplicate,
            Slot::Accepted,
            Slot::Rejected(rejection(4, RejectCode::QuotaExceeded)),
        ];
        let out = outcome(slots);
        assert_eq!((out.accepted, out.duplicates, out.rejected), (2, 1, 2));
        assert_eq!(
            out.errors
                .iter()
                .map(|r| (r.index, r.code))
                .collect::<Vec<_>>(),
            [(1, RejectCode::TooLate), (4, RejectCode::QuotaExceeded)]
        );
        let json = serde_json::to_value(&out).unwrap();
        assert_eq!(json["errors"][0]["code"], "too_late");
        assert!(json["errors"][0].get("field").is_none());
    }
}
