//! Value encodings of dedupe records and of the events they remember (the journal's
//! events records, which carry dedupe records, are [`crate::journal::record`]).

use super::keys::{get_str, put_str};
use crate::config::Aggregation;

/// Format version byte of both record kinds.
pub const VERSION: u8 = 1;

/// One accepted event as the journal and the dedupe record remember it: enough to
/// replay its counter contribution and, later, to retract it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventRecord {
    /// Contract id.
    pub contract: String,
    /// Lever name.
    pub lever: String,
    /// Lever aggregation at acceptance.
    pub aggregation: Aggregation,
    /// Bucket.
    pub bucket: Option<String>,
    /// Event time.
    pub time_ms: i64,
    /// Value in nano-units.
    pub value: i128,
    /// Arrival ordinal.
    pub ordinal: u64,
}

#[cfg(test)]
impl EventRecord {
    /// A one-unit `sum` event of contract `c`, lever `l`, for tests that need any record.
    pub(crate) fn sample() -> EventRecord {
        EventRecord {
            contract: "c".into(),
            lever: "l".into(),
            aggregation: Aggregation::Sum,
            bucket: None,
            time_ms: 0,
            value: 1,
            ordinal: 0,
        }
    }

    /// The `i`-th of a varied series of `latest` events (bucket on even `i`, negative
    /// values), for encoding round trips.
    pub(crate) fn varied(i: u64) -> EventRecord {
        EventRecord {
            contract: "ctr".into(),
            lever: "api".into(),
            aggregation: Aggregation::Latest,
            bucket: if i.is_multiple_of(2) {
                Some("eu".into())
            } else {
                None
            },
            time_ms: 1_700_000_000_000 + i as i64,
            value: -(i as i128) * 7,
            ordinal: i,
        }
    }
}

impl EventRecord {
    /// Appends the encoding.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        put_str(out, &self.contract);
        put_str(out, &self.lever);
        out.push(self.aggregation.code());
        match &self.bucket {
            None => out.push(0),
            Some(b) => {
                out.push(1);
                put_str(out, b);
            }
        }
        out.extend_from_slice(&self.time_ms.to_le_bytes());
        out.extend_from_slice(&self.value.to_le_bytes());
        out.extend_from_slice(&self.ordinal.to_le_bytes());
    }

    /// Decodes one record, returning it and the rest.
    pub fn decode(b: &[u8]) -> Option<(EventRecord, &[u8])> {
        let (contract, b) = get_str(b)?;
        let (lever, b) = get_str(b)?;
        let (&agg, b) = b.split_first()?;
        let aggregation = Aggregation::from_code(agg)?;
        let (&flag, b) = b.split_first()?;
        let (bucket, b) = match flag {
            0 => (None, b),
            1 => {
                let (s, b) = get_str(b)?;
                (Some(s.to_string()), b)
            }
            _ => return None,
        };
        if b.len() < 32 {
            return None;
        }
        let time_ms = i64::from_le_bytes(b[0..8].try_into().ok()?);
        let value = i128::from_le_bytes(b[8..24].try_into().ok()?);
        let ordinal = u64::from_le_bytes(b[24..32].try_into().ok()?);
        Some((
            EventRecord {
                contract: contract.to_string(),
                lever: lever.to_string(),
                aggregation,
                bucket,
                time_ms,
                value,
                ordinal,
            },
            &b[32..],
        ))
    }
}

/// The id a dedupe record was written for.
pub fn dedupe_id(b: &[u8]) -> Option<&str> {
    dedupe_accepted_ms(b)?;
    get_str(&b[9..]).map(|(id, _)| id)
}

/// Encodes a dedupe record: acceptance time, the id itself (to rule out hash
/// collisions) and the event (tests; the journal's events records encode them in place).
#[cfg(test)]
pub fn encode_dedupe(accepted_ms: i64, id: &str, event: &EventRecord) -> Vec<u8> {
    encode_dedupe_with::<&str>(accepted_ms, id, event, &[])
}

/// Marker of the ancestors section of a dedupe record.
const ANCESTORS: u8 = 2;

/// Encodes a dedupe record that also remembers the ancestors whose quotas the event
/// counted toward (its parent chain at acceptance), so a retraction gives back exactly
/// what was taken even after a re-parenting.
pub fn encode_dedupe_with<S: AsRef<str>>(
    accepted_ms: i64,
    id: &str,
    event: &EventRecord,
    ancestors: &[S],
) -> Vec<u8> {
    let mut out = Vec::with_capacity(id.len() + 128);
    encode_dedupe_into(&mut out, accepted_ms, id, event, ancestors);
    out
}

/// Appends the encoding of [`encode_dedupe_with`] to `out`.
pub fn encode_dedupe_into<S: AsRef<str>>(
    out: &mut Vec<u8>,
    accepted_ms: i64,
    id: &str,
    event: &EventRecord,
    ancestors: &[S],
) {
    out.push(VERSION);
    out.extend_from_slice(&accepted_ms.to_le_bytes());
    put_str(out, id);
    event.encode_into(out);
    if !ancestors.is_empty() {
        out.push(ANCESTORS);
        out.push(ancestors.len().min(255) as u8);
        for a in ancestors.iter().take(255) {
            put_str(out, a.as_ref());
        }
    }
}

/// A decoded dedupe record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DedupeRecord {
    /// Acceptance time.
    pub accepted_ms: i64,
    /// The event id.
    pub id: String,
    /// The event.
    pub event: EventRecord,
    /// Ancestors whose quotas the event counted toward, nearest first.
    pub ancestors: Vec<String>,
    /// Whether the event was retracted.
    pub retracted: bool,
}

/// Acceptance time of a dedupe record (what the retention compaction filter reads).
pub fn dedupe_accepted_ms(b: &[u8]) -> Option<i64> {
    if b.len() < 9 || b[0] != VERSION {
        return None;
    }
    Some(i64::from_le_bytes(b[1..9].try_into().ok()?))
}

/// Decodes a dedupe record into acceptance time, id and event.
pub fn decode_dedupe(b: &[u8]) -> Option<(i64, String, EventRecord)> {
    decode_dedupe_full(b).map(|r| (r.accepted_ms, r.id, r.event))
}

/// Marker byte appended to the dedupe record of a retracted event.
const RETRACTED: u8 = 1;

/// The dedupe record of a retracted event: still a duplicate for its id, no longer
/// retractable.
pub fn mark_retracted(record: &[u8]) -> Vec<u8> {
    let mut out = record.to_vec();
    out.push(RETRACTED);
    out
}

/// Decodes a dedupe record with every section.
pub fn decode_dedupe_full(b: &[u8]) -> Option<DedupeRecord> {
    let accepted_ms = dedupe_accepted_ms(b)?;
    let (id, rest) = get_str(&b[9..])?;
    let (event, mut rest) = EventRecord::decode(rest)?;
    let mut ancestors = Vec::new();
    if let [ANCESTORS, n, tail @ ..] = rest {
        rest = tail;
        for _ in 0..*n {
            let (a, tail) = get_str(rest)?;
            ancestors.push(a.to_string());
            rest = tail;
        }
    }
    let retracted = match rest {
        [] => false,
        [RETRACTED] => true,
        _ => return None,
    };
    Some(DedupeRecord {
        accepted_ms,
        id: id.to_string(),
        event,
        ancestors,
        retracted,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(i: u64) -> EventRecord {
        EventRecord::varied(i)
    }

    #[test]
    fn dedupe_roundtrip() {
        let enc = encode_dedupe(42, "req-1", &ev(3));
        assert_eq!(dedupe_accepted_ms(&enc), Some(42));
        assert_eq!(decode_dedupe(&enc), Some((42, "req-1".into(), ev(3))));
        let gone = mark_retracted(&enc);
        assert_eq!(dedupe_accepted_ms(&gone), Some(42));
        assert_eq!(decode_dedupe(&gone), Some((42, "req-1".into(), ev(3))));
        let full = decode_dedupe_full(&gone).unwrap();
        assert!(full.retracted && full.ancestors.is_empty());
        assert_eq!(decode_dedupe_full(&mark_retracted(&gone)), None);
        let with = encode_dedupe_with(42, "req-2", &ev(4), &["pool", "top"]);
        let full = decode_dedupe_full(&mark_retracted(&with)).unwrap();
        assert_eq!(full.ancestors, ["pool", "top"]);
        assert!(full.retracted);
        assert_eq!(full.event, ev(4));
        assert_eq!(decode_dedupe(&with), Some((42, "req-2".into(), ev(4))));
    }
}
