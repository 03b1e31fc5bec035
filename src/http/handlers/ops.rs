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
