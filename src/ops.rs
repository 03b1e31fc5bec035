//! Operator services: the store and process gauges `/metrics` reports, and online
//! backups (`POST /backup` on the metrics listener).

use std::sync::Arc;

use serde::Serialize;

use crate::error::{Error, ErrorCode};
use crate::state::State;
use crate::telemetry::names;

/// Sets the gauges read at scrape time: readiness, pending counters, in-flight
/// requests, flush lag, and the store's sizes, background jobs, stalls and memory.
pub fn set_gauges(state: &State) {
    metrics::gauge!(names::READY).set(if state.is_ready() { 1.0 } else { 0.0 });
    metrics::gauge!(names::COUNTERS_PENDING).set(state.counters.pending_entries() as f64);
    metrics::gauge!(names::DEDUPE_INFLIGHT).set(state.claims.len() as f64);
    metrics::gauge!(names::HTTP_IN_FLIGHT).set(
        state
            .cfg
            .max_in_flight
            .saturating_sub(state.inflight.available_permits()) as f64,
    );
    if let Some(v) = state.store.windows_property("rocksdb.estimate-num-keys") {
        metrics::gauge!(names::STORE_WINDOW_ROWS).set(v as f64);
    }
    let now = crate::window::now_ms();
    let last = state
        .last_flush_ms
        .load(std::sync::atomic::Ordering::Relaxed);
    metrics::gauge!(names::FLUSH_LAG_SECONDS).set((now - last).max(0) as f64 / 1000.0);
    let store = &state.store;
    metrics::gauge!(names::STORE_SIZE_BYTES).set(
        (store.property_sum("rocksdb.total-sst-files-size")
            + store.property_sum("rocksdb.cur-size-all-mem-tables")) as f64,
    );
    metrics::gauge!(names::STORE_PENDING_COMPACTION_BYTES)
        .set(store.property_sum("rocksdb.estimate-pending-compaction-bytes") as f64);
    // DB-wide properties: any column family answers for all of them.
    for (kind, property) in [
        ("flush", "rocksdb.num-running-flushes"),
        ("compaction", "rocksdb.num-running-compactions"),
    ] {
        metrics::gauge!(names::STORE_BACKGROUND_JOBS, "kind" => kind)
            .set(store.windows_property(property).unwrap_or(0) as f64);
    }
    metrics::gauge!(names::STORE_WRITE_STOPPED).set(
        store
            .windows_property("rocksdb.is-write-stopped")
            .unwrap_or(0) as f64,
    );
    metrics::gauge!(names::STORE_DELAYED_WRITE_RATE).set(
        store
            .windows_property("rocksdb.actual-delayed-write-rate")
            .unwrap_or(0) as f64,
    );
    if let Some(stall) = store.write_stall_seconds() {
        metrics::gauge!(names::STORE_WRITE_STALL_SECONDS).set(stall);
    }
    metrics::gauge!(names::STORE_MEMORY_BYTES, "kind" => "memtables")
        .set(store.property_sum("rocksdb.cur-size-all-mem-tables") as f64);
    metrics::gauge!(names::STORE_MEMORY_BYTES, "kind" => "block_cache").set(
        store
            .windows_property("rocksdb.block-cache-usage")
            .unwrap_or(0) as f64,
    );
    metrics::gauge!(names::STORE_MEMORY_BYTES, "kind" => "table_readers")
        .set(store.property_sum("rocksdb.estimate-table-readers-mem") as f64);
    if let Some(rss) = resident_bytes() {
        metrics::gauge!(names::PROCESS_RESIDENT_MEMORY).set(rss as f64);
    }
}

/// Resident set size from `/proc/self/status` (Linux), in bytes.
fn resident_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Prefix of the directories `POST /backup` creates in `backup_dir`.
pub const BACKUP_PREFIX: &str = "meterd-backup-";

/// A backup written.
#[derive(Debug, Clone, Serialize)]
pub struct Backup {
    /// Bytes of the checkpoint's files.
    pub bytes: u64,
    /// When it was started (RFC 3339).
    pub created_at: String,
    /// How long it took.
    pub duration_ms: u64,
    /// Files of the checkpoint.
    pub files: usize,
    /// Its directory.
    pub path: String,
}

/// Writes an online backup, a RocksDB checkpoint, to
/// `backup_dir/meterd-backup-<UTC time>` and keeps the newest `backup_keep` of them.
/// The checkpoint is written under a temporary name and renamed when complete, so every
/// directory with the prefix is a whole, consistent data dir. `not_found` when
/// `backup_dir` is not set; `conflict` while another backup runs; `storage_full` or
/// `storage_unavailable` when the store or the file system cannot write it.
pub async fn backup(state: &Arc<State>) -> Result<Backup, Error> {
    let Some(dir) = state.cfg.backup_dir.clone() else {
        return Err(Error::new(
            ErrorCode::NotFound,
            "online backups are off: set backup_dir in the configuration",
        ));
    };
    let Ok(_guard) = state.backup_lock.try_lock() else {
        return Err(Error::conflict("a backup is already running"));
    };
    let started = std::time::Instant::now();
    let now = chrono::Utc::now();
    let name = format!("{BACKUP_PREFIX}{}", now.format("%Y%m%dT%H%M%S%.3fZ"));
    let st = state.clone();
    let keep = state.cfg.backup_keep;
    // A full disk is `storage_full`, any other failure `storage_unavailable`.
    let fs_error = |what: String, e: std::io::Error| {
        let code = if e.kind() == std::io::ErrorKind::StorageFull {
            ErrorCode::StorageFull
        } else {
            ErrorCode::StorageUnavailable
        };
        Error::new(code, format!("backup failed: {what}: {e}"))
    };
    let result = tokio::task::spawn_blocking(move || -> Result<_, Error> {
        std::fs::create_dir_all(&dir).map_err(|e| fs_error(format!("cannot create {dir:?}"), e))?;
        let tmp = dir.join(format!(".tmp-{name}"));
        let fin = dir.join(&name);
        let (bytes, files) = st
            .store
            .checkpoint(&tmp)
            .inspect_err(|_| {
                let _ = std::fs::remove_dir_all(&tmp);
            })
            .map_err(Error::from)?;
        std::fs::rename(&tmp, &fin).map_err(|e| fs_error(format!("cannot rename {tmp:?}"), e))?;
        prune_backups(&dir, keep);
        Ok((fin, bytes, files))
    })
    .await
    .unwrap_or_else(|e| {
        Err(Error::new(
            ErrorCode::Internal,
            format!("backup task failed: {e}"),
        ))
    });
    match result {
        Ok((path, bytes, files)) => {
            metrics::counter!(names::BACKUPS_TOTAL, "outcome" => "ok").increment(1);
            metrics::gauge!(names::BACKUP_LAST_SUCCESS).set(now.timestamp() as f64);
            let ms = started.elapsed().as_millis() as u64;
            tracing::info!(path = %path.display(), bytes, files, duration_ms = ms, "backup written");
            Ok(Backup {
                bytes,
                created_at: now.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
                duration_ms: ms,
                files,
                path: path.display().to_string(),
            })
        }
        Err(e) => {
            metrics::counter!(names::BACKUPS_TOTAL, "outcome" => "error").increment(1);
            tracing::error!(error = ?e, "backup failed");
            Err(e)
        }
    }
}

/// Deletes all but the newest `keep` backups (names sort by time) and leftovers of
/// interrupted ones.
fn prune_backups(dir: &std::path::Path, keep: usize) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut done: Vec<String> = Vec::new();
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        if name.starts_with(BACKUP_PREFIX) {
            done.push(name);
        } else if name.starts_with(&format!(".tmp-{BACKUP_PREFIX}")) {
            // Runs one at a time: any other temporary directory is from a crash.
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
    done.sort();
    let excess = done.len().saturating_sub(keep);
    for name in &done[..excess] {
        if let Err(e) = std::fs::remove_dir_all(dir.join(name)) {
            tracing::warn!(error = %e, backup = %name, "cannot delete an old backup");
        }
    }
}
