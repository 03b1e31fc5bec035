//! One partition on one node: a standby that applies the partition's stream, or its
//! owner; and the moves between the two (takeover, giving up).
//!
//! **Standby.** A task follows the stream with an ordered consumer and applies each
//! message ([`Applier`]); the events records it brings are counted at once
//! ([`crate::flush::replay_record`]), as start-up recovery counts what the journal
//! holds. The node's counters, unflushed ids, windows and dedupe records therefore
//! cover the partition, and any node answers usage reads for it.
//!
//! **Takeover** (this node acquired the lease): the standby task stops; the stream is
//! applied to its last sequence; the quota book drops whatever it had of the
//! partition's chains and loads their stored usage; the writer appends its epoch record
//! conditioned on the last sequence applied, which fails if anything was appended
//! meanwhile (then the tail is applied and the epoch tried again). Only then does the
//! partition take batches ([`Partitions::own`]) and forwarded requests.
//!
//! **Giving up** (fenced, lease lost or handed over, stopping): the partition stops
//! taking batches; once every commit already submitted is answered and the writer
//! thread is gone, a standby task resumes after the last sequence the writer applied.
//! (A standby that started earlier could apply a message the writer also writes, and
//! count it twice.)

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::Shared;
use crate::flush::replay_record;
use crate::journal::stream::nats::NatsLog;
use crate::journal::stream::{partition_rev, Applied, Applier, StartError, StreamJournal, Term};
use crate::quota::book::partition_of_root;
use crate::store::StoreError;

/// What a node is for one partition.
pub(super) enum Role {
    /// Applying the stream.
    Standby {
        stop: watch::Sender<bool>,
        task: JoinHandle<Applier>,
    },
    /// Deciding for it.
    Owner {
        journal: Arc<StreamJournal>,
        writer: std::thread::JoinHandle<()>,
        serving: JoinHandle<()>,
    },
    /// Between the two (a takeover or a give-up in progress), or stopped.
    Moving,
}

/// Applies one message and counts the events records it brought.
fn apply_one(
    shared: &Shared,
    applier: &mut Applier,
    seq: u64,
    payload: &[u8],
) -> Result<(), String> {
    let applied = applier.apply(seq, payload).map_err(|e| e.to_string())?;
    if let Applied::Group(events) = applied {
        let st = &shared.state;
        for s in events {
            let record = st.journal.events_record(s).map_err(|e| e.to_string())?;
            // Already flushed by this node is impossible (a record is counted before a
            // flush can take it); a missing one is a bug worth a loud log.
            let Some(record) = record else {
                tracing::error!(seq = s, "an applied events record is missing");
                continue;
            };
            let rev = partition_rev(applier.partition(), seq);
            replay_record(&st.counters, &st.unflushed, &st.registry, s, rev, &record)
                .map_err(|e: StoreError| e.to_string())?;
        }
    }
    Ok(())
}

/// The standby task: follows partition `p`'s stream until told to stop, then returns
/// its applier.
async fn follow(
    shared: Arc<Shared>,
    p: u32,
    mut applier: Applier,
    mut stop: watch::Receiver<bool>,
) -> Applier {
    let log = shared.logs[p as usize].clone();
    let lag =
        metrics::gauge!(crate::telemetry::names::CLUSTER_STANDBY_LAG, "partition" => p.to_string());
    let lag_seconds = metrics::gauge!(
        crate::telemetry::names::CLUSTER_STANDBY_LAG_SECONDS,
        "partition" => p.to_string()
    );
    loop {
        if *stop.borrow() {
            return applier;
        }
        let tail = match log.tail(applier.applied() + 1).await {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!(partition = p, error = %e, "cannot follow the partition's stream; retrying");
                tokio::select! {
                    _ = stop.changed() => return applier,
                    _ = tokio::time::sleep(Duration::from_millis(500)) => continue,
                }
            }
        };
        tokio::pin!(tail);
        loop {
            tokio::select! {
                _ = stop.changed() => return applier,
                next = tail.next() => match next {
                    Some(Ok((seq, pending, published_ms, payload))) => {
                        lag.set(pending as f64);
                        // Caught up: no lag; behind: the age of what it applies now.
                        let age_ms = if pending == 0 { 0 } else { (crate::window::now_ms() - published_ms).max(0) };
                        lag_seconds.set(age_ms as f64 / 1000.0);
                        let r = tokio::task::block_in_place(|| apply_one(&shared, &mut applier, seq, &payload));
                        if let Err(e) = r {
                            tracing::error!(partition = p, seq, error = %e, "applying the partition's stream failed; retrying");
                            tokio::time::sleep(Duration::from_millis(500)).await;
                            break;
                        }
                    }
                    Some(Err(e)) => {
                        tracing::warn!(partition = p, error = %e, "following the partition's stream was interrupted");
                        break;
                    }
                    None => break,
                },
                _ = tokio::time::sleep(Duration::from_secs(1)) => applier.tick(),
            }
        }
    }
}

/// Starts following partition `p` (after the last sequence the store holds).
pub(super) fn start_standby(shared: &Arc<Shared>, p: u32) -> Result<Role, StoreError> {
    let applier = Applier::open(shared.state.store.clone(), p)?;
    let (stop, rx) = watch::channel(false);
    let task = tokio::spawn(follow(shared.clone(), p, applier, rx));
    Ok(Role::Standby { stop, task })
}

/// Applies partition `p`'s stream up to its last sequence (the takeover's catch-up).
async fn catch_up(shared: &Arc<Shared>, p: u32, applier: &mut Applier) -> Result<(), String> {
    let log = &shared.logs[p as usize];
    let last = log.last_seq().await.map_err(|e| e.to_string())?;
    if applier.applied() >= last {
        return Ok(());
    }
    let tail = log
        .tail(applier.applied() + 1)
        .await
        .map_err(|e| e.to_string())?;
    tokio::pin!(tail);
    let deadline = Instant::now() + shared.cfg.append_retry.max(Duration::from_secs(10));
    while applier.applied() < last {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, tail.next()).await {
            Ok(Some(Ok((seq, _pending, _published, payload)))) => {
                tokio::task::block_in_place(|| apply_one(shared, applier, seq, &payload))?;
            }
            Ok(Some(Err(e))) => return Err(e.to_string()),
            Ok(None) => return Err("the stream's consumer ended".into()),
            Err(_) => return Err(format!("not caught up to {last} in time")),
        }
    }
    Ok(())
}

/// True for the chains of `tenant` rooted at `root` that live in partition `p`.
fn in_partition(shared: &Shared, p: u32) -> impl Fn(&str, &str) -> bool + '_ {
    let n = shared.cfg.partitions;
    move |tenant, root| partition_of_root(tenant, root, n) == p
}

/// Takes partition `p` over with epoch `epoch` (this node holds its lease). On failure
/// the node stays (or becomes again) a standby and returns `false`.
pub(super) async fn take_over(shared: &Arc<Shared>, p: u32, epoch: u64) -> bool {
    let started = Instant::now();
    let mut slot = shared.roles[p as usize].lock().await;
    let applier = match std::mem::replace(&mut *slot, Role::Moving) {
        Role::Standby { stop, task } => {
            let _ = stop.send(true);
            match task.await {
                Ok(a) => a,
                Err(e) => {
                    tracing::error!(partition = p, error = %e, "the standby task failed");
                    match Applier::open(shared.state.store.clone(), p) {
                        Ok(a) => a,
                        Err(_) => return false,
                    }
                }
            }
        }
        owner @ Role::Owner { .. } => {
            *slot = owner;
            return true;
        }
        Role::Moving => match Applier::open(shared.state.store.clone(), p) {
            Ok(a) => a,
            Err(_) => return false,
        },
    };
    let mut applier = Some(applier);
    for attempt in 0..5 {
        let mut a = match applier.take() {
            Some(a) => a,
            None => match Applier::open(shared.state.store.clone(), p) {
                Ok(a) => a,
                Err(e) => {
                    tracing::error!(partition = p, error = %e, "cannot reopen the partition");
                    break;
                }
            },
        };
        if let Err(e) = catch_up(shared, p, &mut a).await {
            tracing::warn!(partition = p, attempt, error = %e, "takeover: catching up failed");
            applier = Some(a);
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        }
        let applied = a.finish();
        let st = &shared.state;
        st.quotas.forget(&st.registry, in_partition(shared, p));
        let horizon = crate::quota::quota_horizon(&st.cfg, crate::window::now_ms());
        if let Err(e) =
            st.quotas
                .load_stored(&st.store, &st.registry, horizon, in_partition(shared, p))
        {
            tracing::error!(partition = p, error = %e, "takeover: loading quota usage failed");
            break;
        }
        let term = Term {
            partition: p,
            epoch,
            node: shared.cfg.node.clone(),
        };
        let store = st.store.clone();
        let log: NatsLog = shared.logs[p as usize].clone();
        let rt = tokio::runtime::Handle::current();
        let retry = shared.cfg.append_retry;
        let started_writer =
            tokio::task::spawn_blocking(move || StreamJournal::start(store, log, rt, term, retry))
                .await;
        match started_writer {
            Ok(Ok((journal, writer))) => {
                let journal = Arc::new(journal);
                shared.journals.own(p, journal.clone());
                let serving = super::serve_forwarded(shared.clone(), p).await;
                *slot = Role::Owner {
                    journal,
                    writer,
                    serving,
                };
                let ms = started.elapsed().as_millis() as u64;
                tracing::info!(
                    partition = p,
                    epoch,
                    applied,
                    took_ms = ms,
                    "partition taken over"
                );
                metrics::counter!(crate::telemetry::names::CLUSTER_TAKEOVERS_TOTAL).increment(1);
                metrics::gauge!(crate::telemetry::names::CLUSTER_PARTITION_EPOCH, "partition" => p.to_string())
                    .set(epoch as f64);
                return true;
            }
            Ok(Err(StartError::Behind(_))) => {
                tracing::info!(
                    partition = p,
                    attempt,
                    "takeover: the stream moved on; catching up again"
                );
                continue;
            }
            Ok(Err(e)) => {
                tracing::warn!(partition = p, error = %e, "takeover: the epoch record was not appended");
                break;
            }
            Err(e) => {
                tracing::error!(partition = p, error = %e, "takeover task failed");
                break;
            }
        }
    }
    shared
        .state
        .quotas
        .forget(&shared.state.registry, in_partition(shared, p));
    match start_standby(shared, p) {
        Ok(role) => *slot = role,
        Err(e) => tracing::error!(partition = p, error = %e, "cannot follow the partition"),
    }
    false
}

/// Stops owning partition `p` and follows it as a standby again.
pub(super) async fn give_up(shared: &Arc<Shared>, p: u32, why: &str) {
    let mut slot = shared.roles[p as usize].lock().await;
    let Role::Owner {
        journal,
        writer,
        serving,
    } = std::mem::replace(&mut *slot, Role::Moving)
    else {
        return;
    };
    tracing::warn!(partition = p, reason = why, "giving the partition up");
    shared.journals.release(p);
    serving.abort();
    metrics::gauge!(crate::telemetry::names::CLUSTER_PARTITION_EPOCH, "partition" => p.to_string())
        .set(0.0);
    // Commits already handed to the writer are answered before it goes: wait until no
    // request holds the journal, then for the writer thread.
    let deadline = Instant::now() + Duration::from_secs(30);
    while Arc::strong_count(&journal) > 1 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    drop(journal);
    let _ = tokio::task::spawn_blocking(move || writer.join()).await;
    shared
        .state
        .quotas
        .forget(&shared.state.registry, in_partition(shared, p));
    metrics::counter!(crate::telemetry::names::CLUSTER_GIVE_UPS_TOTAL).increment(1);
    match start_standby(shared, p) {
        Ok(role) => *slot = role,
        Err(e) => tracing::error!(partition = p, error = %e, "cannot follow the partition"),
    }
}
