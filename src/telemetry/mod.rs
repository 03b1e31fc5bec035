//! Metrics names and descriptions, their registration at 0 ([`zero`]), and logging
//! set-up (SPEC 7).
//!
//! Names follow `meterd_<subsystem>_<name>_<unit>[_total]`. Labels take bounded values
//! only (outcomes, codes, routes, status classes): never a tenant-chosen id.

use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
use metrics_exporter_prometheus::{BuildError, Matcher, PrometheusBuilder, PrometheusHandle};

pub mod zero;

/// Metric names.
pub mod names {
    /// Gauge: open connections by listener (described by `http`).
    pub const OPEN_CONNECTIONS: &str = "meterd_http_open_connections";
    /// Counter: connections refused by the connection cap, by listener (described by
    /// `http`).
    pub const REFUSED_CONNECTIONS_TOTAL: &str = "meterd_http_refused_connections_total";
    /// Events by outcome (`accepted`, `duplicate`, `rejected`).
    pub const INGEST_EVENTS_TOTAL: &str = "meterd_ingest_events_total";
    /// Rejected events by code.
    pub const INGEST_REJECTED_TOTAL: &str = "meterd_ingest_rejected_events_total";
    /// Events per ingest request.
    pub const INGEST_BATCH_EVENTS: &str = "meterd_ingest_batch_size_events";
    /// HTTP requests by route and status.
    pub const HTTP_REQUESTS_TOTAL: &str = "meterd_http_requests_total";
    /// HTTP request latency by route.
    pub const HTTP_REQUEST_SECONDS: &str = "meterd_http_request_duration_seconds";
    /// Requests refused by the in-flight limit.
    pub const HTTP_SHED_TOTAL: &str = "meterd_http_shed_requests_total";
    /// Requests holding an in-flight slot (of `max_in_flight`) now.
    pub const HTTP_IN_FLIGHT: &str = "meterd_http_in_flight_requests";
    /// Requests processed by group commit at once.
    pub const JOURNAL_GROUP_SIZE: &str = "meterd_journal_group_size_requests";
    /// WAL fsync duration.
    pub const JOURNAL_FSYNC_SECONDS: &str = "meterd_journal_fsync_duration_seconds";
    /// WAL write duration of one group.
    pub const JOURNAL_WRITE_SECONDS: &str = "meterd_journal_write_duration_seconds";
    /// Cluster mode: time from a merged write's first append to its resolved ack.
    pub const CLUSTER_PUBLISH_SECONDS: &str = "meterd_cluster_journal_publish_duration_seconds";
    /// Cluster mode: appends re-sent because the stream did not answer.
    pub const CLUSTER_APPEND_RETRIES_TOTAL: &str = "meterd_cluster_journal_append_retries_total";
    /// Cluster mode: stream messages a standby applied into its store.
    pub const CLUSTER_APPLIED_TOTAL: &str = "meterd_cluster_standby_applied_messages_total";
    /// Cluster mode: per partition, the epoch this node owns it with (0: not owned).
    pub const CLUSTER_PARTITION_EPOCH: &str = "meterd_cluster_partition_epoch";
    /// Cluster mode: per partition, stream messages not yet applied by this node.
    pub const CLUSTER_STANDBY_LAG: &str = "meterd_cluster_standby_lag_messages";
    /// Cluster mode: per partition, how old the message a standby is applying is while
    /// it is behind (0 when caught up).
    pub const CLUSTER_STANDBY_LAG_SECONDS: &str = "meterd_cluster_standby_lag_seconds";
    /// Cluster mode: partitions this node took over.
    pub const CLUSTER_TAKEOVERS_TOTAL: &str = "meterd_cluster_takeovers_total";
    /// Cluster mode: partitions this node gave up (fenced, lease lost, handed over).
    pub const CLUSTER_GIVE_UPS_TOTAL: &str = "meterd_cluster_give_ups_total";
    /// Cluster mode: partition leases this node renewed.
    pub const CLUSTER_LEASE_RENEWALS_TOTAL: &str = "meterd_cluster_lease_renewals_total";
    /// Cluster mode: partition leases this node lost (taken, expired, or not renewed in
    /// time).
    pub const CLUSTER_LEASE_LOSSES_TOTAL: &str = "meterd_cluster_lease_losses_total";
    /// Cluster mode: ingest parts forwarded to another node.
    pub const CLUSTER_FORWARDS_TOTAL: &str = "meterd_cluster_forwards_total";
    /// Flush duration.
    pub const FLUSH_SECONDS: &str = "meterd_flush_duration_seconds";
    /// Window rows written by flushes.
    pub const FLUSH_ROWS_TOTAL: &str = "meterd_flush_rows_total";
    /// Failed flushes.
    pub const FLUSH_ERRORS_TOTAL: &str = "meterd_flush_errors_total";
    /// In-memory window entries not yet flushed.
    pub const COUNTERS_PENDING: &str = "meterd_counters_pending_entries";
    /// Ids claimed by in-flight requests.
    pub const DEDUPE_INFLIGHT: &str = "meterd_dedupe_inflight_ids";
    /// Accepted ids whose dedupe records are still in the journal (not yet flushed).
    pub const DEDUPE_UNFLUSHED: &str = "meterd_dedupe_unflushed_ids";
    /// 1 when ready.
    pub const READY: &str = "meterd_ready_state";
    /// Quota decisions by outcome and mode.
    pub const QUOTA_DECISIONS_TOTAL: &str = "meterd_quota_decisions_total";
    /// Threshold crossings recorded in the outbox.
    pub const QUOTA_THRESHOLD_CROSSINGS_TOTAL: &str = "meterd_quota_threshold_crossings_total";
    /// Notifications waiting in the outbox.
    pub const WEBHOOK_OUTBOX_DEPTH: &str = "meterd_webhook_outbox_depth";
    /// Webhook delivery attempts by outcome.
    pub const WEBHOOK_ATTEMPTS_TOTAL: &str = "meterd_webhook_attempts_total";
    /// Notifications dropped after `webhook_max_age`.
    pub const WEBHOOK_DROPPED_TOTAL: &str = "meterd_webhook_dropped_total";
    /// Duration of one delivery attempt.
    pub const WEBHOOK_DELIVERY_SECONDS: &str = "meterd_webhook_delivery_duration_seconds";
    /// Quota usage rows held in memory.
    pub const QUOTA_ROWS: &str = "meterd_quota_rows";
    /// Duration of one fold of the quota log into the quota column family.
    pub const QUOTA_FOLD_SECONDS: &str = "meterd_quota_fold_duration_seconds";
    /// Events answered `duplicate` (idempotency key already counted).
    pub const DEDUPE_HITS_TOTAL: &str = "meterd_dedupe_hits_total";
    /// Seconds since the last successful flush.
    pub const FLUSH_LAG_SECONDS: &str = "meterd_flush_lag_seconds";
    /// Bytes of SST files and memtables.
    pub const STORE_SIZE_BYTES: &str = "meterd_store_size_bytes";
    /// Bytes RocksDB estimates compaction still has to rewrite.
    pub const STORE_PENDING_COMPACTION_BYTES: &str = "meterd_store_pending_compaction_bytes";
    /// RocksDB background jobs running now, by kind (`flush`, `compaction`).
    pub const STORE_BACKGROUND_JOBS: &str = "meterd_store_background_jobs";
    /// Cumulative time RocksDB stalled writes since start.
    pub const STORE_WRITE_STALL_SECONDS: &str = "meterd_store_write_stall_seconds";
    /// 1 while RocksDB stops writes (a write stall), else 0.
    pub const STORE_WRITE_STOPPED: &str = "meterd_store_write_stopped";
    /// Write rate RocksDB throttles to while it delays writes (0: not delayed).
    pub const STORE_DELAYED_WRITE_RATE: &str = "meterd_store_delayed_write_rate_bytes";
    /// Online backups by `outcome` (ok, error).
    pub const BACKUPS_TOTAL: &str = "meterd_backups_total";
    /// Unix time of the last successful online backup.
    pub const BACKUP_LAST_SUCCESS: &str = "meterd_backup_last_success_timestamp_seconds";
    /// RocksDB memory by `kind`: memtables, block_cache, table_readers.
    pub const STORE_MEMORY_BYTES: &str = "meterd_store_memory_bytes";
    /// Resident set size of the process.
    pub const PROCESS_RESIDENT_MEMORY: &str = "meterd_process_resident_memory_bytes";
    /// RocksDB's estimate of stored window rows.
    pub const STORE_WINDOW_ROWS: &str = "meterd_store_window_rows_estimate";
}

/// Describes every metric once at start.
pub fn describe() {
    use names::*;
    describe_counter!(
        INGEST_EVENTS_TOTAL,
        Unit::Count,
        "Ingested events by outcome (accepted, duplicate, rejected)."
    );
    describe_counter!(
        INGEST_REJECTED_TOTAL,
        Unit::Count,
        "Rejected events by rejection code."
    );
    describe_histogram!(
        INGEST_BATCH_EVENTS,
        Unit::Count,
        "Events per ingest request."
    );
    describe_counter!(
        HTTP_REQUESTS_TOTAL,
        Unit::Count,
        "HTTP requests by route and status code."
    );
    describe_histogram!(
        HTTP_REQUEST_SECONDS,
        Unit::Seconds,
        "HTTP request latency by route."
    );
    describe_counter!(
        HTTP_SHED_TOTAL,
        Unit::Count,
        "Requests answered 429 because the in-flight limit was reached."
    );
    describe_gauge!(
        HTTP_IN_FLIGHT,
        Unit::Count,
        "API requests holding an in-flight slot (of max_in_flight) at scrape time."
    );
    describe_histogram!(
        JOURNAL_GROUP_SIZE,
        Unit::Count,
        "Requests committed together by one group commit."
    );
    describe_histogram!(
        JOURNAL_FSYNC_SECONDS,
        Unit::Seconds,
        "Duration of write-ahead-log fsyncs."
    );
    describe_histogram!(
        CLUSTER_PUBLISH_SECONDS,
        Unit::Seconds,
        "Cluster mode: time from a merged write's append to the stream's resolved acknowledgement (retries included)."
    );
    describe_counter!(
        CLUSTER_APPEND_RETRIES_TOTAL,
        Unit::Count,
        "Cluster mode: journal appends re-sent with the same message id because the stream did not answer."
    );
    describe_counter!(
        CLUSTER_APPLIED_TOTAL,
        Unit::Count,
        "Cluster mode: partition journal messages applied into this node's store as a standby."
    );
    describe_gauge!(
        CLUSTER_PARTITION_EPOCH,
        Unit::Count,
        "Cluster mode: per partition, the epoch this node owns it with; 0 when another node owns it."
    );
    describe_gauge!(
        CLUSTER_STANDBY_LAG,
        Unit::Count,
        "Cluster mode: per partition this node does not own, messages of its stream not yet applied here."
    );
    describe_gauge!(
        CLUSTER_STANDBY_LAG_SECONDS,
        Unit::Seconds,
        "Cluster mode: per partition this node does not own, the age of the message it is applying while behind; 0 when caught up."
    );
    describe_counter!(
        CLUSTER_TAKEOVERS_TOTAL,
        Unit::Count,
        "Cluster mode: partitions this node took over (epoch record appended)."
    );
    describe_counter!(
        CLUSTER_GIVE_UPS_TOTAL,
        Unit::Count,
        "Cluster mode: partitions this node gave up (fenced, lease lost, handed over, stopping)."
    );
    describe_counter!(
        CLUSTER_LEASE_RENEWALS_TOTAL,
        Unit::Count,
        "Cluster mode: partition leases this node renewed (every lease_renew per owned partition)."
    );
    describe_counter!(
        CLUSTER_LEASE_LOSSES_TOTAL,
        Unit::Count,
        "Cluster mode: partition leases this node lost: taken by another node, expired, or not renewed within lease_ttl."
    );
    describe_counter!(
        CLUSTER_FORWARDS_TOTAL,
        Unit::Count,
        "Cluster mode: ingest parts this node sent to their partition's owner."
    );
    describe_histogram!(
        JOURNAL_WRITE_SECONDS,
        Unit::Seconds,
        "Duration of writing one commit group to the WAL (before fsync)."
    );
    describe_histogram!(
        FLUSH_SECONDS,
        Unit::Seconds,
        "Duration of one flush of counters into RocksDB windows."
    );
    describe_counter!(
        FLUSH_ROWS_TOTAL,
        Unit::Count,
        "Window rows (merge operands) written by flushes."
    );
    describe_counter!(
        FLUSH_ERRORS_TOTAL,
        Unit::Count,
        "Flushes that failed and were retried."
    );
    describe_gauge!(
        COUNTERS_PENDING,
        Unit::Count,
        "In-memory window entries not yet flushed."
    );
    describe_gauge!(
        DEDUPE_INFLIGHT,
        Unit::Count,
        "Event ids claimed by in-flight requests."
    );
    describe_gauge!(
        DEDUPE_UNFLUSHED,
        Unit::Count,
        "Accepted event ids whose dedupe records are still carried by journal records; looked up in memory until the next flush writes them to the dedupe column family."
    );
    describe_gauge!(
        READY,
        Unit::Count,
        "1 when recovery is done and the store is writable, else 0."
    );
    describe_counter!(
        QUOTA_DECISIONS_TOTAL,
        Unit::Count,
        "Quota decisions on events by outcome (allowed, rejected, overage) and mode of the \
         strictest finite quota that applied (hard, soft, unlimited)."
    );
    describe_counter!(
        QUOTA_THRESHOLD_CROSSINGS_TOTAL,
        Unit::Count,
        "Quota threshold crossings written to the webhook outbox."
    );
    describe_gauge!(
        WEBHOOK_OUTBOX_DEPTH,
        Unit::Count,
        "Threshold notifications not yet delivered."
    );
    describe_counter!(
        WEBHOOK_ATTEMPTS_TOTAL,
        Unit::Count,
        "Webhook delivery attempts by outcome (delivered, failed)."
    );
    describe_counter!(
        WEBHOOK_DROPPED_TOTAL,
        Unit::Count,
        "Notifications dropped undelivered after webhook_max_age."
    );
    describe_histogram!(
        WEBHOOK_DELIVERY_SECONDS,
        Unit::Seconds,
        "Duration of one webhook delivery attempt."
    );
    describe_gauge!(
        QUOTA_ROWS,
        Unit::Count,
        "Quota usage rows (contract, lever, period) held in memory."
    );
    describe_histogram!(
        QUOTA_FOLD_SECONDS,
        Unit::Seconds,
        "Duration of one fold of the quota log (usage written by recent commits) into the stored quota rows, about once a second."
    );
    describe_counter!(
        DEDUPE_HITS_TOTAL,
        Unit::Count,
        "Events answered duplicate: their id was already counted (or repeated in the request)."
    );
    describe_gauge!(
        FLUSH_LAG_SECONDS,
        Unit::Seconds,
        "Seconds since the last successful flush of counters into RocksDB."
    );
    describe_gauge!(
        STORE_SIZE_BYTES,
        Unit::Bytes,
        "Bytes of RocksDB SST files and memtables, all column families."
    );
    describe_gauge!(
        STORE_PENDING_COMPACTION_BYTES,
        Unit::Bytes,
        "Bytes RocksDB estimates compaction still has to rewrite."
    );
    describe_gauge!(
        STORE_BACKGROUND_JOBS,
        "RocksDB background jobs running now, by kind: flush (memtable to file) or compaction."
    );
    describe_gauge!(
        STORE_WRITE_STALL_SECONDS,
        Unit::Seconds,
        "Cumulative time RocksDB stalled (slowed or stopped) writes since meterd started."
    );
    describe_gauge!(
        STORE_WRITE_STOPPED,
        Unit::Count,
        "1 while RocksDB stops writes (a write stall), else 0."
    );
    describe_gauge!(
        STORE_DELAYED_WRITE_RATE,
        Unit::Bytes,
        "Write rate RocksDB throttles to while it delays writes, in bytes per second (0: not delayed)."
    );
    describe_counter!(
        BACKUPS_TOTAL,
        Unit::Count,
        "Online backups (RocksDB checkpoints, POST /backup) by outcome: ok or error."
    );
    describe_gauge!(
        BACKUP_LAST_SUCCESS,
        Unit::Seconds,
        "Unix time of the last successful online backup (0: none since start)."
    );
    describe_gauge!(
        STORE_MEMORY_BYTES,
        Unit::Bytes,
        "RocksDB memory by kind: memtables (all column families, capped at memory_limit/4), block_cache (shared, memory_limit/8), table_readers (index and filter blocks outside the cache)."
    );
    describe_gauge!(
        PROCESS_RESIDENT_MEMORY,
        Unit::Bytes,
        "Resident set size of the meterd process."
    );
    describe_gauge!(
        STORE_WINDOW_ROWS,
        Unit::Count,
        "RocksDB's estimate of the number of stored window rows."
    );
}

/// The Prometheus exporter with meterd's histogram buckets (every histogram name ends in
/// `_seconds`, `_events` or `_requests`, so none is rendered as a summary).
pub fn builder() -> Result<PrometheusBuilder, BuildError> {
    PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Suffix("_seconds".into()),
            &[
                0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                1.0, 2.5, 5.0,
            ],
        )?
        .set_buckets_for_metric(
            Matcher::Suffix("_events".into()),
            &[1.0, 10.0, 100.0, 1000.0, 10000.0],
        )?
        .set_buckets_for_metric(
            Matcher::Suffix("_requests".into()),
            &[1.0, 2.0, 4.0, 8.0, 16.0, 64.0, 256.0, 1024.0],
        )
}

/// Installs the Prometheus recorder, describes every metric and registers every series
/// at 0 ([`zero::register_all`]); returns the handle that renders `/metrics`.
pub fn install_metrics() -> anyhow::Result<PrometheusHandle> {
    let handle = builder()?.install_recorder()?;
    describe();
    zero::register_all();
    Ok(handle)
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Whether log lines carry ANSI colours: only when stderr is a terminal and `NO_COLOR`
/// is unset or empty (<https://no-color.org>: any non-empty value turns colour off).
pub fn use_ansi(stderr_is_terminal: bool, no_color: Option<&std::ffi::OsStr>) -> bool {
    stderr_is_terminal && no_color.is_none_or(|v| v.is_empty())
}

/// Sets up `tracing` on stderr with `RUST_LOG` (default `info`); colours per
/// [`use_ansi`].
pub fn init_logging(format: LogFormat) {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let ansi = use_ansi(
        std::io::stderr().is_terminal(),
        std::env::var_os("NO_COLOR").as_deref(),
    );
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().flatten_event(true).init(),
        LogFormat::Text => builder.init(),
    }
}

/// Handles of the request path's metrics, cached per thread.
///
/// The `metrics` macros build a key and look it up in the recorder's registry on every
/// call: about 2k instructions over the five metrics a single event records (callgrind).
/// A cached handle costs one small hash lookup on the addresses of the name and label
/// values, which must be `&'static str` and, for a given name, always under the same
/// label keys. The same text at two addresses only makes two cache entries for one
/// metric; different texts never share an entry (the key holds address and length).
/// A thread caches the handles of the recorder installed when it first asks for a key,
/// so the recorder must be installed before serving, as `app::run` does.
pub mod hot {
    use std::cell::RefCell;

    use metrics::{Counter, Histogram};

    use crate::hash::FastHashMap;

    /// Address and length of the name and of the label values.
    type Key = [usize; 6];

    thread_local! {
        static COUNTERS: RefCell<FastHashMap<Key, Counter>> = RefCell::new(FastHashMap::default());
        static HISTOGRAMS: RefCell<FastHashMap<Key, Histogram>> = RefCell::new(FastHashMap::default());
    }

    fn key(name: &'static str, v1: &'static str, v2: &'static str) -> Key {
        [
            name.as_ptr() as usize,
            name.len(),
            v1.as_ptr() as usize,
            v1.len(),
            v2.as_ptr() as usize,
            v2.len(),
        ]
    }

    /// Adds `n` to the counter `name` without labels.
    pub fn count0(name: &'static str, n: u64) {
        count(key(name, "", ""), n, || metrics::counter!(name));
    }

    /// Adds `n` to the counter `name{k1=v1}`.
    pub fn count1(name: &'static str, k1: &'static str, v1: &'static str, n: u64) {
        count(key(name, v1, ""), n, || metrics::counter!(name, k1 => v1));
    }

    /// Adds `n` to the counter `name{k1=v1,k2=v2}`.
    pub fn count2(
        name: &'static str,
        (k1, v1): (&'static str, &'static str),
        (k2, v2): (&'static str, &'static str),
        n: u64,
    ) {
        count(
            key(name, v1, v2),
            n,
            || metrics::counter!(name, k1 => v1, k2 => v2),
        );
    }

    /// Records `value` in the histogram `name` without labels.
    pub fn record0(name: &'static str, value: f64) {
        record(key(name, "", ""), value, || metrics::histogram!(name));
    }

    /// Records `value` in the histogram `name{k1=v1}`.
    pub fn record1(name: &'static str, k1: &'static str, v1: &'static str, value: f64) {
        record(
            key(name, v1, ""),
            value,
            || metrics::histogram!(name, k1 => v1),
        );
    }

    fn count(k: Key, n: u64, make: impl FnOnce() -> Counter) {
        COUNTERS.with(|c| c.borrow_mut().entry(k).or_insert_with(make).increment(n));
    }

    fn record(k: Key, value: f64, make: impl FnOnce() -> Histogram) {
        HISTOGRAMS.with(|h| h.borrow_mut().entry(k).or_insert_with(make).record(value));
    }
}

#[cfg(test)]
mod tests {
    use std::ffi::OsStr;

    use super::use_ansi;

    #[test]
    fn colour_only_on_a_terminal_without_no_color() {
        for (terminal, no_color, want) in [
            (true, None, true),
            (true, Some(""), true),
            (true, Some("1"), false),
            (true, Some("0"), false),
            (false, None, false),
            (false, Some(""), false),
            (false, Some("1"), false),
        ] {
            assert_eq!(
                use_ansi(terminal, no_color.map(OsStr::new)),
                want,
                "terminal {terminal}, NO_COLOR {no_color:?}"
            );
        }
    }
}
