//! The journal's events records: the accepted events of one request that belong to one
//! counter shard, each with its whole dedupe record.
//!
//! Format (version 2): the version byte, the tenant ([`put_str`]), the number of events
//! (u32 LE), then per event the length of its dedupe record (u32 LE) and the record as
//! [`crate::store::records`] encodes it (acceptance time, id, the event, the ancestors it
//! counted toward). Version 1 records (the events only, their dedupe records written
//! separately) are still read.

use crate::store::keys::{get_str, put_str};
use crate::store::records::{decode_dedupe_full, encode_dedupe_into, EventRecord, VERSION};

/// Encodes a journal record of events alone, without dedupe records (the earlier
/// format, still read): cluster mode's adjustments, which carry no event id.
pub fn encode_events_only(tenant: &str, events: &[EventRecord]) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + events.len() * 96);
    out.push(VERSION);
    put_str(&mut out, tenant);
    out.extend_from_slice(&(events.len() as u32).to_le_bytes());
    for e in events {
        e.encode_into(&mut out);
    }
    out
}

/// Format version of a journal record that carries its events' dedupe records.
const JOURNAL_WITH_DEDUPE: u8 = 2;

/// Builds a journal record that carries, per event, its whole dedupe record (as
/// [`encode_dedupe_with`] writes it, the event included), each encoded in place. The
/// flusher writes those records into the `dedupe` column family when it deletes the
/// journal record ([`crate::flush`]), so a request's write holds one record per shard and
/// no dedupe record of its own.
pub struct EventsRecord {
    out: Vec<u8>,
    count_at: usize,
    n: u32,
}

impl EventsRecord {
    /// Starts the record of `tenant`, with room for about `events` events.
    pub fn new(tenant: &str, events: usize) -> EventsRecord {
        let mut out = Vec::with_capacity(8 + tenant.len() + events * 128);
        out.push(JOURNAL_WITH_DEDUPE);
        put_str(&mut out, tenant);
        let count_at = out.len();
        out.extend_from_slice(&[0; 4]);
        EventsRecord {
            out,
            count_at,
            n: 0,
        }
    }

    /// Appends one event's dedupe record.
    pub fn push<S: AsRef<str>>(
        &mut self,
        accepted_ms: i64,
        id: &str,
        event: &EventRecord,
        ancestors: &[S],
    ) {
        let at = self.out.len();
        self.out.extend_from_slice(&[0; 4]);
        encode_dedupe_into(&mut self.out, accepted_ms, id, event, ancestors);
        let len = (self.out.len() - at - 4) as u32;
        self.out[at..at + 4].copy_from_slice(&len.to_le_bytes());
        self.n += 1;
    }

    /// The encoded record.
    pub fn finish(mut self) -> Vec<u8> {
        let at = self.count_at;
        self.out[at..at + 4].copy_from_slice(&self.n.to_le_bytes());
        self.out
    }
}

/// The tenant and the dedupe records a journal record carries: `None` when it is not
/// a valid journal record, no records for a record written before journal records
/// carried them (their dedupe records were written with them).
pub fn dedupe_records(b: &[u8]) -> Option<(&str, Vec<&[u8]>)> {
    let (&v, rest) = b.split_first()?;
    match v {
        VERSION => {
            let (tenant, _) = get_str(rest)?;
            Some((tenant, Vec::new()))
        }
        JOURNAL_WITH_DEDUPE => {
            let (tenant, rest) = get_str(rest)?;
            if rest.len() < 4 {
                return None;
            }
            let n = u32::from_le_bytes(rest[..4].try_into().ok()?) as usize;
            let mut rest = &rest[4..];
            let mut out = Vec::with_capacity(n.min(100_000));
            for _ in 0..n {
                if rest.len() < 4 {
                    return None;
                }
                let len = u32::from_le_bytes(rest[..4].try_into().ok()?) as usize;
                rest = &rest[4..];
                if rest.len() < len {
                    return None;
                }
                out.push(&rest[..len]);
                rest = &rest[len..];
            }
            rest.is_empty().then_some((tenant, out))
        }
        _ => None,
    }
}

/// Decodes a journal record into its tenant and events.
pub fn decode_events(b: &[u8]) -> Option<(String, Vec<EventRecord>)> {
    if b.first() == Some(&JOURNAL_WITH_DEDUPE) {
        let (tenant, records) = dedupe_records(b)?;
        let events = records
            .into_iter()
            .map(|r| decode_dedupe_full(r).map(|d| d.event))
            .collect::<Option<Vec<_>>>()?;
        return Some((tenant.to_string(), events));
    }
    let (&v, b) = b.split_first()?;
    if v != VERSION {
        return None;
    }
    let (tenant, b) = get_str(b)?;
    if b.len() < 4 {
        return None;
    }
    let n = u32::from_le_bytes(b[..4].try_into().ok()?) as usize;
    let mut b = &b[4..];
    let mut events = Vec::with_capacity(n.min(100_000));
    for _ in 0..n {
        let (e, rest) = EventRecord::decode(b)?;
        events.push(e);
        b = rest;
    }
    if !b.is_empty() {
        return None;
    }
    Some((tenant.to_string(), events))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::records::{decode_dedupe_full, dedupe_id, encode_dedupe_with};

    fn ev(i: u64) -> EventRecord {
        EventRecord::varied(i)
    }

    #[test]
    fn journal_roundtrip() {
        let evs: Vec<_> = (0..5).map(ev).collect();
        let enc = encode_events_only("tenant", &evs);
        assert_eq!(decode_events(&enc), Some(("tenant".into(), evs)));
        assert_eq!(decode_events(&enc[..enc.len() - 1]), None);
    }

    #[test]
    fn journal_with_dedupe_records_roundtrip() {
        let evs: Vec<_> = (0..5).map(ev).collect();
        let mut journal = EventsRecord::new("tenant", evs.len());
        let mut recs: Vec<Vec<u8>> = Vec::new();
        for (i, e) in evs.iter().enumerate() {
            let (id, ancestors) = (format!("id-{i}"), &["pool"][..i % 2]);
            journal.push(42, &id, e, ancestors);
            recs.push(encode_dedupe_with(42, &id, e, ancestors));
        }
        let enc = journal.finish();
        assert_eq!(decode_events(&enc), Some(("tenant".into(), evs.clone())));
        let (tenant, back) = dedupe_records(&enc).unwrap();
        assert_eq!(tenant, "tenant");
        assert_eq!(back, recs.iter().map(|r| r.as_slice()).collect::<Vec<_>>());
        assert_eq!(dedupe_id(back[3]), Some("id-3"));
        assert_eq!(decode_dedupe_full(back[1]).unwrap().ancestors, vec!["pool"]);
        for cut in [1, 5, enc.len() - 1] {
            assert_eq!(dedupe_records(&enc[..cut]), None);
            assert_eq!(decode_events(&enc[..cut]), None);
        }
        // A record of the earlier format carries no dedupe records.
        let old = encode_events_only("tenant", &evs);
        assert_eq!(dedupe_records(&old), Some(("tenant", Vec::new())));
        assert_eq!(dedupe_records(&[9, 0]), None);
    }
}
