//! The registry stream on this node: every registry change (of any node) applied in
//! stream order into the store, and the in-memory registry reloaded from it
//! ([`crate::registry::persist::load_stored`]). The last sequence applied is published
//! for [`crate::journal::stream::RegistryJournal`], which answers a write once it is
//! applied here.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::journal::stream::nats::{EngineError, NatsLog};
use crate::journal::stream::{Applied, Applier, REGISTRY};
use crate::state::State;

/// Applies one registry message; reloads the registry after a change.
fn apply(state: &State, applier: &mut Applier, seq: u64, payload: &[u8]) -> Result<(), String> {
    if let Applied::Group(_) = applier.apply(seq, payload).map_err(|e| e.to_string())? {
        crate::registry::persist::load_stored(&state.store, &state.registry)
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// Applies the registry stream to its end, then follows it in a task until `stop`.
/// Returns the task and the last sequence applied, as it moves.
pub(super) async fn start(
    state: Arc<State>,
    log: Arc<NatsLog>,
    mut stop: watch::Receiver<bool>,
) -> Result<(JoinHandle<()>, watch::Receiver<u64>), EngineError> {
    let mut applier = Applier::open(state.store.clone(), REGISTRY)
        .map_err(|e| EngineError::Fatal(format!("registry: {e}")))?;
    // Catch up before the node serves anything.
    let last = log
        .last_seq()
        .await
        .map_err(|e| EngineError::Nats(format!("registry stream: {e}")))?;
    if applier.applied() < last {
        let tail = log
            .tail(applier.applied() + 1)
            .await
            .map_err(|e| EngineError::Nats(format!("registry stream: {e}")))?;
        tokio::pin!(tail);
        while applier.applied() < last {
            match tokio::time::timeout(Duration::from_secs(30), tail.next()).await {
                Ok(Some(Ok((seq, _pending, _published, payload)))) => {
                    apply(&state, &mut applier, seq, &payload).map_err(EngineError::Fatal)?
                }
                other => {
                    return Err(EngineError::Nats(format!(
                        "registry stream: not caught up to {last}: {other:?}"
                    )))
                }
            }
        }
    }
    let (tx, rx) = watch::channel(applier.applied());
    let task = tokio::spawn(async move {
        loop {
            let tail = match log.tail(applier.applied() + 1).await {
                Ok(t) => t,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot follow the registry stream; retrying");
                    tokio::select! {
                        _ = stop.changed() => return,
                        _ = tokio::time::sleep(Duration::from_millis(500)) => continue,
                    }
                }
            };
            tokio::pin!(tail);
            loop {
                tokio::select! {
                    _ = stop.changed() => return,
                    next = tail.next() => match next {
                        Some(Ok((seq, _pending, _published, payload))) => {
                            let r = tokio::task::block_in_place(|| apply(&state, &mut applier, seq, &payload));
                            if let Err(e) = r {
                                tracing::error!(seq, error = %e, "applying the registry stream failed; retrying");
                                tokio::time::sleep(Duration::from_millis(500)).await;
                                break;
                            }
                            let _ = tx.send(applier.applied());
                        }
                        _ => break,
                    },
                }
            }
        }
    });
    Ok((task, rx))
}
