//! Health, readiness and metrics (SPEC 7).

use hyper::{header, Response, StatusCode};
use metrics_exporter_prometheus::PrometheusHandle;
use serde_json::json;

use crate::http::util::{json, Body};
use crate::state::State;
use crate::store::cf;
use crate::telemetry::names;

/// `GET /healthz`: the process is alive.
pub fn healthz() -> Response<Body> {
    json(StatusCode::OK, &json!({"status": "ok"}))
}

/// `GET /readyz`: recovery is done and the store is writable.
pub fn readyz(state: &State) -> Response<Body> {
    let recovered = state.ready.load(std::sync::atomic::Ordering::SeqCst);
    let storage = state.storage_ok.load(std::sync::atomic::Ordering::SeqCst);
    let ok = recovered && storage;
    let status = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let mut r = json(
        status,
        &json!({
            "status": if ok { "ready" } else { "not_ready" },
            "recovered": recovered,
            "storage_writable": storage,
        }),
    );
    if !ok {
        r.headers_mut()
            .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
    }
    r
}

/// `GET /metrics`: Prometheus text format.
pub fn metrics(state: &State, handle: &PrometheusHandle) -> Response<Body> {
    metrics::gauge!(names::READY).set(if state.is_ready() { 1.0 } else { 0.0 });
    metrics::gauge!(names::COUNTERS_PENDING).set(state.counters.pending_entries() as f64);
    metrics::gauge!(names::DEDUPE_INFLIGHT).set(state.claims.len() as f64);
    metrics::gauge!(names::HTTP_IN_FLIGHT).set(
        state
            .cfg
            .max_in_flight
            .saturating_sub(state.inflight.available_permits()) as f64,
    );
    if let Some(v) = state
        .store
        .property_int(cf::WINDOWS, "rocksdb.estimate-num-keys")
    {
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
            .set(store.property_int(cf::WINDOWS, property).unwrap_or(0) as f64);
    }
    metrics::gauge!(names::STORE_WRITE_STOPPED).set(
        store
            .property_int(cf::WINDOWS, "rocksdb.is-write-stopped")
            .unwrap_or(0) as f64,
    );
    metrics::gauge!(names::STORE_DELAYED_WRITE_RATE).set(
        store
            .property_int(cf::WINDOWS, "rocksdb.actual-delayed-write-rate")
            .unwrap_or(0) as f64,
    );
    if let Some(stall) = store.write_stall_seconds() {
        metrics::gauge!(names::STORE_WRITE_STALL_SECONDS).set(stall);
    }
    metrics::gauge!(names::STORE_MEMORY_BYTES, "kind" => "memtables")
        .set(store.property_sum("rocksdb.cur-size-all-mem-tables") as f64);
    metrics::gauge!(names::STORE_MEMORY_BYTES, "kind" => "block_cache").set(
        store
            .property_int(cf::WINDOWS, "rocksdb.block-cache-usage")
            .unwrap_or(0) as f64,
    );
    metrics::gauge!(names::STORE_MEMORY_BYTES, "kind" => "table_readers")
        .set(store.property_sum("rocksdb.estimate-table-readers-mem") as f64);
    if let Some(rss) = resident_bytes() {
        metrics::gauge!(names::PROCESS_RESIDENT_MEMORY).set(rss as f64);
    }
    let body = handle.render();
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "text/plain; version=0.0.4")
        .body(crate::http::util::full(body))
        .expect("static response parts are valid")
}

/// The OpenAPI 3.1 description of the API (`openapi/openapi.json`, compiled in).
pub const OPENAPI: &str = include_str!("../../../openapi/openapi.json");

/// `GET /openapi.json`.
pub fn openapi() -> Response<Body> {
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/json")
        .body(crate::http::util::full(OPENAPI))
        .expect("static response parts are valid")
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

/// `POST /backup` (metrics listener only): writes an online backup, a RocksDB
/// checkpoint, to `backup_dir/meterd-backup-<UTC time>` and keeps the newest
/// `backup_keep` of them. The checkpoint is written under a temporary name and renamed
/// when complete, so every directory with the prefix is a whole, consistent data dir.
/// 201 with `{path, created_at, bytes, files, duration_ms}`; 404 `not_found` when
/// `backup_dir` is not set; 409 `conflict` while another backup runs; 503 when the
/// store cannot write it.
pub async fn backup(state: &std::sync::Arc<State>) -> Response<Body> {
    use crate::http::error::{ApiError, ErrorCode};
    let Some(dir) = state.cfg.backup_dir.clone() else {
        return ApiError::new(
            ErrorCode::NotFound,
            "online backups are off: set backup_dir in the configuration",
        )
        .into_response();
    };
    let Ok(_guard) = state.backup_lock.try_lock() else {
        return ApiError::new(ErrorCode::Conflict, "a backup is already running").into_response();
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
        ApiError::new(code, format!("backup failed: {what}: {e}"))
    };
    let result = tokio::task::spawn_blocking(move || -> Result<_, ApiError> {
        std::fs::create_dir_all(&dir).map_err(|e| fs_error(format!("cannot create {dir:?}"), e))?;
        let tmp = dir.join(format!(".tmp-{name}"));
        let fin = dir.join(&name);
        let (bytes, files) = st
            .store
            .checkpoint(&tmp)
            .inspect_err(|_| {
                let _ = std::fs::remove_dir_all(&tmp);
            })
            .map_err(crate::error::Error::from)?;
        std::fs::rename(&tmp, &fin).map_err(|e| fs_error(format!("cannot rename {tmp:?}"), e))?;
        prune_backups(&dir, keep);
        Ok((fin, bytes, files))
    })
    .await
    .unwrap_or_else(|e| {
        Err(ApiError::new(
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
            json(
                StatusCode::CREATED,
                &json!({
                    "path": path.display().to_string(),
                    "created_at": now.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
                    "bytes": bytes,
                    "files": files,
                    "duration_ms": ms,
                }),
            )
        }
        Err(e) => {
            metrics::counter!(names::BACKUPS_TOTAL, "outcome" => "error").increment(1);
            tracing::error!(error = ?e, "backup failed");
            e.into_response()
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
