//! Phase "claim": every parsed event's id is claimed in memory ([`Claims`]) before
//! anything is looked up, so two requests never decide one id at once. Ids another
//! request holds wait for that request's fate, then are claimed again: whatever that
//! request did with the event, the dedupe record it wrote before releasing the claim is
//! what decides. Before claiming, a request waits while the flusher is far behind
//! (the unflushed ids' memory stays bounded).

use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::outcome::{RejectCode, Rejection};
use super::{IngestError, Slot};
use crate::dedupe::{Claim, ClaimKey, Claims, Owner};
use crate::event::Parsed;
use crate::state::State;
use crate::store::keys::id_hash;

/// Longest a request waits for the unflushed ids to fall under their limit.
pub const BACKLOG_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// Wakes the flusher when the accepted ids not yet flushed ([`crate::dedupe::Unflushed`])
/// pass half of [`crate::config::Config::unflushed_ids_limit`], and waits while they are
/// over it: when requests come faster than the flusher moves their dedupe records, the
/// ids' memory stays bounded and requests slow to the flusher's pace.
pub(super) async fn wait_for_backlog(state: &State) -> Result<(), IngestError> {
    let limit = state.cfg.unflushed_ids_limit();
    let mut n = state.unflushed.len();
    // The wait is for a slow flusher, not a failing store: while flushes fail (a full
    // disk), requests go on to their commit, which answers with the store's own error.
    if n <= limit / 2 || !state.storage_ok.load(Ordering::SeqCst) {
        return Ok(());
    }
    let _ = state.flush_wake.try_send(());
    let deadline = std::time::Instant::now() + BACKLOG_WAIT;
    while n > limit && state.storage_ok.load(Ordering::SeqCst) {
        if std::time::Instant::now() > deadline {
            return Err(IngestError::Backlog(n));
        }
        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        let _ = state.flush_wake.try_send(());
        n = state.unflushed.len();
    }
    Ok(())
}

/// The slots of `parsed` for tenant `tenant_index`: invalid elements rejected, the
/// others claimed by `owner` (their keys pushed to `held`), or waiting for the request
/// that holds them. A repeat within the request is claimed again (decided after
/// validation, so a rejected first occurrence cannot swallow a valid repeat).
#[inline]
pub(super) fn claim_all<'a>(
    claims: &Claims,
    tenant_index: u32,
    owner: &Arc<Owner>,
    parsed: Vec<Parsed<'a>>,
    held: &mut Vec<ClaimKey>,
) -> Vec<Slot<'a>> {
    parsed
        .into_iter()
        .enumerate()
        .map(|(i, p)| match p {
            Err((id, e)) => Slot::Rejected(Rejection {
                index: i,
                id,
                code: RejectCode::InvalidEvent,
                field: Some(e.field),
                message: e.message,
            }),
            Ok(ev) => {
                let key = (tenant_index, id_hash(&ev.id));
                match claims.claim(key, owner) {
                    Claim::Claimed => {
                        held.push(key);
                        Slot::Claimed(ev, key)
                    }
                    Claim::OwnDuplicate => Slot::Claimed(ev, key),
                    Claim::Busy(other) => Slot::Waiting(ev, key, other),
                }
            }
        })
        .collect()
}

/// Waits for the requests holding the ids of waiting slots, then claims those ids.
pub(super) async fn claim_waiting(
    claims: &Claims,
    owner: &Arc<Owner>,
    slots: &mut [Slot<'_>],
    held: &mut Vec<ClaimKey>,
) {
    loop {
        let mut waited = false;
        for slot in slots.iter_mut() {
            if let Slot::Waiting(_, key, other) = slot {
                let key = *key;
                other.outcome().await;
                waited = true;
                let Slot::Waiting(ev, _, _) = std::mem::replace(slot, Slot::Duplicate) else {
                    unreachable!()
                };
                *slot = match claims.claim(key, owner) {
                    Claim::Claimed => {
                        held.push(key);
                        Slot::Claimed(ev, key)
                    }
                    Claim::OwnDuplicate => Slot::Claimed(ev, key),
                    Claim::Busy(o) => Slot::Waiting(ev, key, o),
                };
            }
        }
        if !waited {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::fixture::event;
    use super::*;
    use crate::dedupe::Fate;
    use crate::event::EventError;

    #[test]
    fn ids_are_claimed_once_and_repeats_and_held_ids_are_told_apart() {
        let claims = Claims::new();
        let (first, second) = (Owner::new(), Owner::new());
        let mut held = Vec::new();
        let parsed: Vec<Parsed<'_>> = vec![
            Ok(event("a", "c1", "calls", None)),
            Err((
                Some("bad".into()),
                EventError {
                    field: "value",
                    message: "not a number".into(),
                },
            )),
            Ok(event("a", "c1", "calls", None)),
        ];
        let slots = claim_all(&claims, 0, &first, parsed, &mut held);
        assert!(matches!(slots[0], Slot::Claimed(..)));
        assert!(
            matches!(&slots[1], Slot::Rejected(r) if r.code == RejectCode::InvalidEvent && r.field == Some("value"))
        );
        assert!(
            matches!(slots[2], Slot::Claimed(..)),
            "a repeat is decided later"
        );
        assert_eq!(held, vec![(0, id_hash("a"))], "held once");
        // Another request finds the id busy until the first releases it.
        let mut held2 = Vec::new();
        let mut slots2 = claim_all(
            &claims,
            0,
            &second,
            vec![Ok(event("a", "c1", "calls", None))],
            &mut held2,
        );
        assert!(matches!(slots2[0], Slot::Waiting(..)));
        claims.release(&first, &held, Fate::Committed);
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(claim_waiting(&claims, &second, &mut slots2, &mut held2));
        assert!(matches!(slots2[0], Slot::Claimed(..)));
        assert_eq!(held2, vec![(0, id_hash("a"))]);
    }
}
