//! Wiring and shutdown order.
//!
//! Start: metrics -> store -> registry (stored definitions, then config levers) ->
//! journal writer -> listeners (health answers at once, API answers 503 `not_ready`) ->
//! journal replay -> ready -> flusher.
//!
//! Stop (SIGTERM/SIGINT): not ready -> listeners stop accepting and drain in-flight
//! requests (bounded by `shutdown_grace`) -> flusher's final flush -> journal writer
//! stops -> store flushed and closed -> exit 0.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};

use crate::config::Config;
use crate::counters::Counters;
use crate::dedupe::Claims;
use crate::flush;
use crate::http::{self, Surface};
use crate::journal::stream::Partitions;
use crate::journal::{Journal, WalJournal};
use crate::notify::Outbox;
use crate::quota::book::QuotaBook;
use crate::quota::quota_horizon;
use crate::registry::{ApiKeys, Lever, LeverBody, Registry};
use crate::revision::Revisions;
use crate::state::State;
use crate::store::keys::AdminKind;
use crate::store::{Store, StoreError};
use crate::telemetry;
use crate::window::{now_ms, rfc3339};

/// Loads stored levers and contracts into the registry, then creates the levers the
/// configuration declares but the store lacks.
pub fn load_registry(store: &Store, registry: &Registry, cfg: &Config) -> Result<(), StoreError> {
    crate::registry::persist::load_stored(store, registry)?;
    for l in &cfg.levers {
        let Some(t) = registry.tenant(&l.tenant) else {
            continue;
        };
        if let Some(existing) = t.levers.get(&l.name) {
            if existing.aggregation != l.aggregation {
                tracing::warn!(
                    tenant = %l.tenant, lever = %l.name,
                    stored = existing.aggregation.as_str(), configured = l.aggregation.as_str(),
                    "configured lever differs from the stored one; the stored definition is kept"
                );
            }
            continue;
        }
        let body = LeverBody {
            aggregation: l.aggregation,
            unit: l.unit.clone(),
            value_property: l.value_property.clone(),
            bucket_property: l.bucket_property.clone(),
            description: l.description.clone(),
            id: None,
            status: None,
            created_at: None,
            updated_at: None,
        };
        let now = rfc3339(now_ms());
        let lever = Lever::from_body(&l.name, &body, now.clone(), now);
        let enc = serde_json::to_vec(&lever).map_err(|_| StoreError::Corrupt("admin"))?;
        let mut batch = store.writes(enc.len() + 64);
        batch.put_admin(AdminKind::Lever, &l.tenant, &l.name, &enc);
        store.apply(batch, true)?;
        t.levers.insert(l.name.clone(), Arc::new(lever));
    }
    Ok(())
}

/// Loads the usage rows of periods that can still change into the quota book.
pub fn load_quotas(
    store: &Store,
    registry: &Registry,
    book: &QuotaBook,
    horizon_ms: i64,
) -> Result<(), StoreError> {
    book.load_stored(store, registry, horizon_ms, |_, _| true)
}

/// SIGTERM and SIGINT, listened for from the start of [`run`]: a signal that arrives
/// while meterd is still starting (after it printed its addresses, during recovery) is
/// kept and stops it gracefully once it is up, instead of killing it with the signal's
/// default action.
struct StopSignals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl StopSignals {
    fn install() -> std::io::Result<StopSignals> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(StopSignals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
        })
    }

    /// Waits for the first of them.
    async fn recv(&mut self) {
        tokio::select! {
            _ = self.term.recv() => tracing::info!("SIGTERM received"),
            _ = self.int.recv() => tracing::info!("SIGINT received"),
        }
    }
}

/// What is left after [`run`] returned: call [`Stopped::finish`] once the runtime has
/// been shut down.
#[must_use]
pub struct Stopped {
    /// The journal thread, when a request outlived the shutdown grace period and still
    /// held the store as `run` returned.
    journal: Option<std::thread::JoinHandle<()>>,
}

impl Stopped {
    /// Waits (up to 10 s) for the journal thread to close the store. Shutting the runtime
    /// down drops the requests that outlived the grace period and with them the last
    /// handles on the store, so the store is closed here, before the process exits, and
    /// never on another thread while the exit tears RocksDB's globals down (which can
    /// abort).
    pub fn finish(self) {
        let Some(journal) = self.journal else {
            return;
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !journal.is_finished() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        if journal.is_finished() {
            let _ = journal.join();
        }
    }
}

/// Runs the daemon until SIGTERM/SIGINT.
pub async fn run(cfg: Config) -> anyhow::Result<Stopped> {
    let mut signals = StopSignals::install().context("installing the signal handlers")?;
    let prom = telemetry::install_metrics().context("installing the metrics recorder")?;
    if cfg.uses_development_keys {
        let banner = "!".repeat(78);
        tracing::warn!("{banner}");
        tracing::warn!(
            "DEVELOPMENT API KEYS ARE CONFIGURED (the well-known keys of config/meterd.toml)."
        );
        tracing::warn!("Anyone can read and write this meterd. Replace them before real use.");
        tracing::warn!("{banner}");
        eprintln!("WARNING: meterd is running with the well-known development API keys; do not use them in production");
    }

    let store = {
        let path = cfg.data_dir.clone();
        let retention = cfg.dedupe_retention;
        let windows = cfg.window_retention;
        let memory = crate::store::MemoryBudget {
            memtables: cfg.memtable_budget_bytes(),
            block_cache: cfg.block_cache_bytes(),
        };
        tokio::task::spawn_blocking(move || {
            Store::open_with(&path, retention, windows, Some(memory))
        })
        .await?
        .with_context(|| format!("opening the store in {}", cfg.data_dir.display()))?
    };
    let registry = Registry::new(&cfg);
    load_registry(&store, &registry, &cfg).context("loading levers and contracts")?;
    // Starting the journal folds the quota usage a killed process left in the quota
    // log into the stored rows, which the quota book is loaded from next.
    let quotas = QuotaBook::new(cfg.shards);
    let (journal, journal_thread, partitions): (Box<dyn Journal>, _, _) = if cfg.cluster.is_some() {
        // Cluster mode: each partition's journal is its stream, owned by one node at
        // a time; the quota book is loaded per partition when this node takes one
        // over (crate::cluster).
        crate::journal::fold_quota_log(&store).context("folding the quota log")?;
        let partitions = Arc::new(Partitions::new(store.clone()));
        (Box::new(partitions.clone()), None, Some(partitions))
    } else {
        let (journal, thread) =
            WalJournal::start(store.clone(), cfg.durability, cfg.group_commit_interval, 1)
                .context("folding the quota log")?;
        load_quotas(&store, &registry, &quotas, quota_horizon(&cfg, now_ms()))
            .context("loading quota usage")?;
        (Box::new(journal), Some(thread), None)
    };
    let outbox = Arc::new(Outbox::load(&store).context("loading the webhook outbox")?);
    let mut revisions = Revisions::load(&store).context("loading revisions")?;
    if cfg.cluster.is_some() {
        revisions = revisions.partitioned();
    }
    let (flush_wake, flush_wake_rx) = crossbeam_channel::bounded::<()>(1);
    let state = Arc::new(State {
        outbox,
        revisions,
        keys: ApiKeys::new(&cfg.api_keys),
        counters: Counters::new(cfg.shards),
        quotas,
        claims: Claims::new(),
        unflushed: crate::dedupe::Unflushed::new(),
        flush_wake,
        inflight: Arc::new(Semaphore::new(cfg.max_in_flight)),
        backup_lock: tokio::sync::Mutex::new(()),
        request_budget: Arc::new(Semaphore::new(
            (cfg.request_budget_bytes() / 1024).min(u32::MAX as u64) as usize,
        )),
        ready: AtomicBool::new(false),
        storage_ok: AtomicBool::new(true),
        admin_lock: tokio::sync::Mutex::new(()),
        peers: std::sync::OnceLock::new(),
        last_flush_ms: std::sync::atomic::AtomicI64::new(now_ms()),
        registry,
        journal,
        store,
        cfg,
    });

    let api = TcpListener::bind(state.cfg.listen)
        .await
        .with_context(|| format!("binding listen address {}", state.cfg.listen))?;
    let metrics_l = TcpListener::bind(state.cfg.metrics_listen)
        .await
        .with_context(|| {
            format!(
                "binding metrics_listen address {}",
                state.cfg.metrics_listen
            )
        })?;
    let api_addr = api.local_addr()?;
    let metrics_addr = metrics_l.local_addr()?;
    println!("meterd listening on http://{api_addr} (metrics on http://{metrics_addr})");
    tracing::info!(%api_addr, %metrics_addr, data_dir = %state.cfg.data_dir.display(), "listening");

    let (stop_tx, stop_rx) = watch::channel(false);
    let wait_stop = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let grace = state.cfg.shutdown_grace;
    let anchor = tokio::spawn(timer_anchor(
        anchor_period(&[
            state.cfg.header_read_timeout,
            state.cfg.body_read_timeout,
            state.cfg.send_timeout,
        ]),
        wait_stop(stop_rx.clone()),
    ));
    let reads = ReadsRuntime::start()?;
    let api_task = tokio::spawn(http::serve(
        api,
        state.clone(),
        Surface::Api,
        Some(reads.handle()),
        wait_stop(stop_rx.clone()),
        grace,
    ));
    let metrics_task = tokio::spawn(http::serve(
        metrics_l,
        state.clone(),
        Surface::Metrics(prom),
        None,
        wait_stop(stop_rx.clone()),
        grace,
    ));

    // Recovery: replay the journal before accepting traffic.
    let started = Instant::now();
    let (next_seq, replayed) = {
        let st = state.clone();
        tokio::task::spawn_blocking(move || {
            flush::recover(
                &st.store,
                &*st.journal,
                &st.counters,
                &st.unflushed,
                &st.registry,
            )
        })
        .await?
        .context("replaying the journal")?
    };
    state.journal.set_next(next_seq);
    let node = match (&state.cfg.cluster, partitions) {
        (Some(cc), Some(partitions)) => Some(
            crate::cluster::Node::start(state.clone(), partitions, cc.clone())
                .await
                .context("joining the cluster")?,
        ),
        _ => None,
    };
    state.ready.store(true, Ordering::SeqCst);
    tracing::info!(
        replayed,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "ready"
    );
    let (flush_stop, flush_stop_rx) = crossbeam_channel::bounded::<()>(1);
    let flusher = flush::start(state.clone(), flush_stop_rx, flush_wake_rx);
    let notifier = {
        let lookup = state.clone();
        tokio::spawn(state.outbox.clone().run(
            state.cfg.webhooks.clone(),
            state.store.clone(),
            move |tenant: &str| {
                lookup
                    .registry
                    .tenant(tenant)
                    .and_then(|t| t.webhook.clone())
            },
            wait_stop(stop_rx.clone()),
        ))
    };

    signals.recv().await;
    state.ready.store(false, Ordering::SeqCst);
    if let Some(node) = node {
        // Hand the partitions over before draining: requests still arriving are
        // answered by their new owners.
        node.stop().await;
    }
    let _ = stop_tx.send(true);
    let deadline = tokio::time::sleep(grace);
    tokio::pin!(deadline);
    let servers = async {
        let _ = api_task.await;
        let _ = metrics_task.await;
    };
    tokio::select! {
        _ = servers => {}
        _ = &mut deadline => tracing::warn!("shutdown grace period exceeded while draining"),
    }
    // Undelivered notifications stay in the outbox for the next start.
    let _ = notifier.await;
    let _ = anchor.await;
    drop(flush_stop);
    let st = state.clone();
    tokio::task::spawn_blocking(move || {
        let _ = flusher.join();
        // Final flush of anything applied after the flusher's last pass.
        if let Err(e) = flush::flush_once(
            &st.store,
            &*st.journal,
            &st.counters,
            &st.revisions,
            &st.unflushed,
            &st.registry,
            false,
        ) {
            tracing::error!(error = %e, "final flush failed; the journal keeps the events");
        }
        st.store.close()
    })
    .await?
    .context("closing the store")?;
    // The journal writer stops once the last State handle is gone.
    let state = match Arc::try_unwrap(state) {
        Ok(s) => s,
        Err(_) => {
            // A request outlived the grace period and still holds the store: the
            // caller joins the journal thread after shutting the runtime down.
            tracing::info!("stopped");
            return Ok(Stopped {
                journal: journal_thread,
            });
        }
    };
    drop(state);
    if let Some(journal_thread) = journal_thread {
        let _ = tokio::task::spawn_blocking(move || journal_thread.join()).await;
    }
    tracing::info!("stopped");
    Ok(Stopped { journal: None })
}

/// Longest period of [`timer_anchor`]: an idle daemon wakes at most this often for it.
const ANCHOR_MAX_PERIOD: Duration = Duration::from_millis(500);

/// The runtime that serves connections whose first request is a read (`GET`, `HEAD`:
/// balances, usage, the registry) on a thread of its own, so that a read does not queue
/// behind the ingest requests on the main worker (SPEC's read paths are the ones billing
/// jobs and quota checks wait on). Shut down without blocking when dropped.
struct ReadsRuntime(Option<tokio::runtime::Runtime>);

impl ReadsRuntime {
    fn start() -> anyhow::Result<ReadsRuntime> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .thread_name("meterd-reads")
            .max_blocking_threads(16)
            .on_thread_start(|| {
                if let Err(e) = crate::sched::shorten_slice(crate::sched::READS_SLICE) {
                    tracing::debug!(error = %e, "reads thread keeps the default slice");
                }
            })
            .build()
            .context("cannot start the reads runtime")?;
        Ok(ReadsRuntime(Some(rt)))
    }

    fn handle(&self) -> tokio::runtime::Handle {
        self.0
            .as_ref()
            .expect("running until dropped")
            .handle()
            .clone()
    }
}

impl Drop for ReadsRuntime {
    fn drop(&mut self) {
        // Its connections have drained by then (they are watched like the others).
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
}

/// Period of [`timer_anchor`]: half the shortest of the `timeouts` requests arm (so a
/// request's timer is never due before the anchor's), at most [`ANCHOR_MAX_PERIOD`] and
/// at least 1 ms.
fn anchor_period(timeouts: &[Duration]) -> Duration {
    let shortest = timeouts
        .iter()
        .copied()
        .min()
        .unwrap_or(ANCHOR_MAX_PERIOD * 2);
    (shortest / 2).clamp(Duration::from_millis(1), ANCHOR_MAX_PERIOD)
}

/// Keeps a deadline at most `period` ahead in the runtime's timer wheel until `stop`.
///
/// Every request arms timers (hyper's `header_read_timeout` for each head on a
/// keep-alive connection, `body_read_timeout`) and almost always cancels them before they
/// fire. Tokio's timer wakes the I/O driver (a write to its eventfd) whenever a timer is
/// armed that is due before the earliest deadline the driver last saw, and with every
/// request's timer cancelled the wheel is mostly empty, so nearly every head armed one
/// wake-up: about 0.2 eventfd writes per single-event request under load, each one a
/// syscall and an extra return from `epoll_wait` on the worker (benches/analysis.md).
/// A standing deadline no further away than any request's timeout makes those arms
/// silent; it costs one wake-up per `period`.
async fn timer_anchor(period: Duration, stop: impl std::future::Future<Output = ()>) {
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tokio::pin!(stop);
    loop {
        tokio::select! {
            _ = &mut stop => return,
            _ = tick.tick() => {}
        }
    }
}

/// Environment as a map (so configuration loading never reads globals in tests).
pub fn env_map() -> HashMap<String, String> {
    std::env::vars().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn anchor_period_is_half_the_shortest_timeout_within_bounds() {
        let ms = Duration::from_millis;
        // The shipped defaults (10 s, 30 s, 30 s): the cap.
        assert_eq!(
            anchor_period(&[ms(10_000), ms(30_000), ms(30_000)]),
            ms(500)
        );
        // At the cap exactly, and just below it.
        assert_eq!(anchor_period(&[ms(1_000), ms(30_000)]), ms(500));
        assert_eq!(anchor_period(&[ms(998), ms(30_000)]), ms(499));
        // The shortest timeout decides, wherever it is.
        assert_eq!(anchor_period(&[ms(30_000), ms(300), ms(10_000)]), ms(150));
        // Never below 1 ms (timeouts are at least 1 ms: zero is refused by the config).
        assert_eq!(anchor_period(&[ms(1)]), ms(1));
        assert_eq!(anchor_period(&[]), ms(500));
    }

    #[tokio::test]
    async fn timer_anchor_ticks_until_stopped() {
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(timer_anchor(Duration::from_millis(1), async {
            let _ = rx.await;
        }));
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!task.is_finished(), "the anchor runs until stopped");
        tx.send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("the anchor stops when told")
            .unwrap();
    }
}
