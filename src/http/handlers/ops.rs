//! Health, readiness and metrics (SPEC 7).

use hyper::{header, Response, StatusCode};
use metrics_exporter_prometheus::PrometheusHandle;
use serde_json::json;

use crate::http::error::ApiError;
use crate::http::util::{json, Body};
use crate::state::State;

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

/// `GET /metrics`: Prometheus text format (the gauges are set first, see
/// [`crate::ops::set_gauges`]).
pub fn metrics(state: &State, handle: &PrometheusHandle) -> Response<Body> {
    crate::ops::set_gauges(state);
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

/// `POST /backup` (metrics listener only), written by [`crate::ops::backup`]: 201 with
/// `{path, created_at, bytes, files, duration_ms}`; 404 `not_found` when `backup_dir` is
/// not set; 409 `conflict` while another backup runs; 503 when the store cannot write
/// it.
pub async fn backup(state: &std::sync::Arc<State>) -> Response<Body> {
    match crate::ops::backup(state).await {
        Ok(b) => json(StatusCode::CREATED, &b),
        Err(e) => ApiError::from(e).into_response(),
    }
}
