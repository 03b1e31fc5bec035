//! Routing, authentication, roles, readiness and the in-flight limit.
//!
//! Order of checks for `/v1/*`: key (401), route (404/405), role (403), readiness (503),
//! in-flight permit (429), then the handler. To a key of the right role another tenant's
//! resources do not exist: handlers look everything up inside the key's tenant only.

use std::sync::Arc;
use std::time::Instant;

use hyper::body::Incoming;
use hyper::header::HeaderValue;
use hyper::{header, Method, Request, Response, StatusCode};

use super::error::{ApiError, ErrorCode};
use super::handlers::{
    admin, balance, changes, cloudevents, corrections, events, grants, ops, usage,
};
use super::util::{declared_length, decode_segment, Body, BodyCharge, DrainBound, ReqBody};
use super::Surface;
use crate::registry::{Principal, Role};
use crate::state::State;
use crate::telemetry::{hot, names};

/// An authenticated API request on its way to a handler.
pub struct Ctx {
    /// Shared state.
    pub state: Arc<State>,
    /// The caller.
    pub principal: Principal,
}

impl Ctx {
    /// The caller's tenant.
    pub fn tenant(&self) -> Result<Arc<crate::registry::Tenant>, ApiError> {
        self.state
            .registry
            .tenant(&self.principal.tenant)
            .cloned()
            .ok_or_else(|| ApiError::new(ErrorCode::Internal, "key tenant is not configured"))
    }

    /// The JSON body of an admin or correction request (at most [`MAX_ADMIN_BODY`]
    /// bytes, within `body_read_timeout`).
    pub async fn admin_body(&self, req: Request<ReqBody>) -> Result<bytes::Bytes, ApiError> {
        super::util::require_json(req.headers())?;
        let (parts, b) = req.into_parts();
        super::util::read_body(&parts, b, MAX_ADMIN_BODY, self.state.cfg.body_read_timeout).await
    }
}

/// Largest admin request body.
pub const MAX_ADMIN_BODY: usize = 256 * 1024;

/// A routed `/v1/*` (or `/api/v1/*`) path, with its percent-decoded resource id.
pub enum Route {
    Events,
    CloudEvents,
    Changes,
    Usage,
    Levers,
    Lever(String),
    Contracts,
    Contract(String),
    ContractEnd(String),
    ContractUsage(String),
    ContractBalance(String),
    ContractGrants(String),
    ContractAdjustments(String),
    Event(String),
    Plans,
    Plan(String),
}

impl Route {
    fn label(&self) -> &'static str {
        match self {
            Route::Events => "events",
            Route::CloudEvents => "cloudevents",
            Route::Changes => "changes",
            Route::Usage => "usage",
            Route::Levers => "levers",
            Route::Lever(_) => "lever",
            Route::Contracts => "contracts",
            Route::Contract(_) => "contract",
            Route::ContractEnd(_) => "contract_end",
            Route::ContractUsage(_) => "contract_usage",
            Route::ContractBalance(_) => "contract_balance",
            Route::ContractGrants(_) => "contract_grants",
            Route::ContractAdjustments(_) => "contract_adjustments",
            Route::Event(_) => "event",
            Route::Plans => "plans",
            Route::Plan(_) => "plan",
        }
    }

    /// Role needed for `method`, or `None` when the method is not allowed.
    fn required(&self, method: &Method) -> Option<Role> {
        match (self, method) {
            (Route::Events | Route::CloudEvents, &Method::POST) => Some(Role::Ingest),
            (
                Route::Levers
                | Route::Changes
                | Route::Usage
                | Route::Contracts
                | Route::ContractUsage(_)
                | Route::ContractBalance(_)
                | Route::ContractGrants(_)
                | Route::ContractAdjustments(_)
                | Route::Plans,
                &Method::GET,
            ) => Some(Role::Read),
            (Route::Lever(_), &Method::GET) | (Route::Contract(_), &Method::GET) => {
                Some(Role::Read)
            }
            (Route::Lever(_), &Method::PUT | &Method::DELETE) => Some(Role::Admin),
            (Route::Contract(_), &Method::PUT) => Some(Role::Admin),
            (Route::Plan(_), &Method::GET) => Some(Role::Read),
            (Route::Plan(_), &Method::PUT) => Some(Role::Admin),
            (Route::ContractEnd(_), &Method::POST) => Some(Role::Admin),
            (Route::ContractGrants(_), &Method::POST) => Some(Role::Admin),
            (Route::ContractAdjustments(_), &Method::POST) => Some(Role::Admin),
            (Route::Event(_), &Method::DELETE) => Some(Role::Admin),
            _ => None,
        }
    }
}

/// Every route the API listener serves, as `(method, OpenAPI path template)`: the list
/// the OpenAPI document is checked against. `/metrics` and `/backup` are served on the
/// metrics (operator) listener, which also answers `/healthz` and `/readyz`.
pub const ROUTES: &[(&str, &str)] = &[
    ("GET", "/healthz"),
    ("GET", "/readyz"),
    ("GET", "/metrics"),
    ("POST", "/backup"),
    ("GET", "/openapi.json"),
    ("POST", "/v1/events"),
    ("POST", "/api/v1/events"),
    ("DELETE", "/v1/events/{id}"),
    ("GET", "/v1/changes"),
    ("GET", "/v1/usage"),
    ("GET", "/v1/levers"),
    ("GET", "/v1/levers/{lever}"),
    ("PUT", "/v1/levers/{lever}"),
    ("DELETE", "/v1/levers/{lever}"),
    ("GET", "/v1/plans"),
    ("GET", "/v1/plans/{plan}"),
    ("PUT", "/v1/plans/{plan}"),
    ("GET", "/v1/contracts"),
    ("GET", "/v1/contracts/{contract}"),
    ("PUT", "/v1/contracts/{contract}"),
    ("POST", "/v1/contracts/{contract}/end"),
    ("GET", "/v1/contracts/{contract}/usage"),
    ("GET", "/v1/contracts/{contract}/balance"),
    ("GET", "/v1/contracts/{contract}/grants"),
    ("POST", "/v1/contracts/{contract}/grants"),
    ("GET", "/v1/contracts/{contract}/adjustments"),
    ("POST", "/v1/contracts/{contract}/adjustments"),
];

/// Routes an API path (public for the fuzz targets): `Ok(None)` when no route matches,
/// `Err` (404) when an id segment is empty or is not UTF-8 once percent-decoded.
pub fn parse_route(path: &str) -> Result<Option<Route>, ApiError> {
    let segs: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let d = |s: &str| -> Result<String, ApiError> {
        let v = decode_segment(s)?;
        if v.is_empty() {
            return Err(ApiError::new(ErrorCode::NotFound, "empty path segment"));
        }
        Ok(v)
    };
    Ok(Some(match segs.as_slice() {
        ["v1", "events"] => Route::Events,
        ["api", "v1", "events"] => Route::CloudEvents,
        ["v1", "changes"] => Route::Changes,
        ["v1", "usage"] => Route::Usage,
        ["v1", "levers"] => Route::Levers,
        ["v1", "levers", l] => Route::Lever(d(l)?),
        ["v1", "contracts"] => Route::Contracts,
        ["v1", "contracts", c] => Route::Contract(d(c)?),
        ["v1", "contracts", c, "end"] => Route::ContractEnd(d(c)?),
        ["v1", "contracts", c, "usage"] => Route::ContractUsage(d(c)?),
        ["v1", "contracts", c, "balance"] => Route::ContractBalance(d(c)?),
        ["v1", "contracts", c, "grants"] => Route::ContractGrants(d(c)?),
        ["v1", "contracts", c, "adjustments"] => Route::ContractAdjustments(d(c)?),
        ["v1", "events", id] => Route::Event(d(id)?),
        ["v1", "plans"] => Route::Plans,
        ["v1", "plans", p] => Route::Plan(d(p)?),
        _ => return Ok(None),
    }))
}

fn allows(have: Role, need: Role) -> bool {
    have == Role::Admin || have == need
}

fn bearer(req: &Request<ReqBody>) -> Option<&[u8]> {
    let v = req.headers().get(header::AUTHORIZATION)?.as_bytes();
    let rest = v
        .strip_prefix(b"Bearer ")
        .or_else(|| v.strip_prefix(b"bearer "))?;
    let rest = rest.trim_ascii();
    (!rest.is_empty()).then_some(rest)
}

/// Handles one request on a listener of the given surface.
///
/// Every answer leaves the connection usable for the next request, or says
/// `Connection: close` (and hyper then closes it): a body the handler did not read is
/// read and discarded first, up to `max_body_bytes` and within `body_read_timeout`
/// ([`super::util::BodyLeft::settle`]), whatever the answer was (401, 403, 404, 405,
/// 415, 429, 503, ...); a body read partway (413, 408, 429 on the memory budget) or past
/// that bound closes the connection. (An answer while meterd stops says
/// `Connection: close` too: hyper's graceful shutdown adds it.)
pub async fn route(state: Arc<State>, surface: Surface, req: Request<Incoming>) -> Response<Body> {
    let started = Instant::now();
    let request_id = request_id(&req);
    let method = req.method().clone();
    let (parts, incoming) = req.into_parts();
    let (body, left) = ReqBody::new(incoming, &parts.headers);
    let req = Request::from_parts(parts, body);
    // Filled in once the key is checked; the key itself is never logged.
    let mut tenant: Option<Arc<str>> = None;
    let bound = DrainBound {
        bytes: state.cfg.max_body_bytes as u64,
        time: state.cfg.body_read_timeout,
    };
    let (label, mut resp) = dispatch(state, surface, req, &mut tenant).await;
    if let Some((left, head)) = left {
        // A 413 says the body is too large: reading it anyway would be pointless (and
        // a handler's own limit can be below `max_body_bytes`).
        let drain = resp.status() != StatusCode::PAYLOAD_TOO_LARGE;
        if !left.settle(head, bound, drain).await {
            resp.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
    }
    let status = resp.status().as_u16();
    let elapsed = started.elapsed();
    hot::count2(
        names::HTTP_REQUESTS_TOTAL,
        ("route", label),
        ("status", status_label(status)),
        1,
    );
    hot::record1(
        names::HTTP_REQUEST_SECONDS,
        "route",
        label,
        elapsed.as_secs_f64(),
    );
    // Access log: one line per request under target `meterd::access` (silence it with
    // RUST_LOG=info,meterd::access=off). No keys, no bodies, no paths (they hold ids).
    tracing::info!(
        target: "meterd::access",
        request_id = %request_id.to_str().unwrap_or("-"),
        method = %method,
        route = label,
        tenant = tenant.as_deref().unwrap_or("-"),
        status,
        latency_us = elapsed.as_micros() as u64,
        "request"
    );
    resp.headers_mut().insert("x-request-id", request_id);
    resp
}

/// The caller's `X-Request-Id` when it is short and printable, else a fresh random id
/// (16 hex digits).
fn request_id(req: &Request<Incoming>) -> HeaderValue {
    if let Some(v) = req.headers().get("x-request-id").filter(|v| {
        let b = v.as_bytes();
        !b.is_empty()
            && b.len() <= 64
            && b.iter()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(b))
    }) {
        return v.clone();
    }
    let mut id = [0u8; 16];
    // 8 bytes always fit 16 hex digits, which are always a valid header value.
    let _ = hex::encode_to_slice(rand::random::<u64>().to_be_bytes(), &mut id);
    HeaderValue::from_bytes(&id).unwrap_or_else(|_| HeaderValue::from_static("-"))
}

fn status_label(s: u16) -> &'static str {
    match s {
        200 => "200",
        201 => "201",
        204 => "204",
        400 => "400",
        401 => "401",
        403 => "403",
        404 => "404",
        405 => "405",
        408 => "408",
        409 => "409",
        413 => "413",
        415 => "415",
        429 => "429",
        500 => "500",
        503 => "503",
        s if s < 300 => "2xx",
        s if s < 500 => "4xx",
        _ => "5xx",
    }
}

async fn dispatch(
    state: Arc<State>,
    surface: Surface,
    req: Request<ReqBody>,
    tenant: &mut Option<Arc<str>>,
) -> (&'static str, Response<Body>) {
    let path = req.uri().path().to_string();
    match (&surface, req.method(), path.as_str()) {
        (_, &Method::GET, "/healthz") => return ("healthz", ops::healthz()),
        (_, &Method::GET, "/readyz") => return ("readyz", ops::readyz(&state)),
        (Surface::Api, &Method::GET, "/openapi.json") => return ("openapi", ops::openapi()),
        (_, _, "/healthz" | "/readyz") | (Surface::Api, _, "/openapi.json") => {
            let mut r = ApiError::new(
                ErrorCode::MethodNotAllowed,
                format!("{} is not supported on this route", req.method()),
            )
            .into_response();
            *r.status_mut() = StatusCode::METHOD_NOT_ALLOWED;
            r.headers_mut().insert(
                header::ALLOW,
                hyper::header::HeaderValue::from_static("GET"),
            );
            return ("other", r);
        }
        (Surface::Metrics(h), &Method::GET, "/metrics") => {
            return ("metrics", ops::metrics(&state, h))
        }
        (Surface::Metrics(_), &Method::POST, "/backup") => {
            return ("backup", ops::backup(&state).await)
        }
        (Surface::Metrics(_), _, _) => {
            return (
                "other",
                ApiError::new(ErrorCode::NotFound, "no such route").into_response(),
            )
        }
        _ => {}
    }
    if !path.starts_with("/v1/") && !path.starts_with("/api/v1/") {
        return (
            "other",
            ApiError::new(ErrorCode::NotFound, "no such route").into_response(),
        );
    }
    let principal = match bearer(&req).and_then(|k| state.keys.authenticate(k)) {
        Some(p) => p,
        None => {
            return (
                "unauthorized",
                ApiError::new(
                    ErrorCode::Unauthorized,
                    "send an API key as `Authorization: Bearer <key>`",
                )
                .into_response(),
            )
        }
    };
    *tenant = Some(principal.tenant.clone());
    let route = match parse_route(&path) {
        Ok(Some(r)) => r,
        Ok(None) => {
            return (
                "other",
                ApiError::new(ErrorCode::NotFound, "no such route").into_response(),
            )
        }
        Err(e) => return ("other", e.into_response()),
    };
    let label = route.label();
    let Some(need) = route.required(req.method()) else {
        let mut r = ApiError::new(
            ErrorCode::MethodNotAllowed,
            format!("{} is not supported on this route", req.method()),
        )
        .into_response();
        *r.status_mut() = StatusCode::METHOD_NOT_ALLOWED;
        let allow: Vec<&str> = [Method::GET, Method::PUT, Method::POST, Method::DELETE]
            .iter()
            .filter(|m| route.required(m).is_some())
            .map(Method::as_str)
            .collect();
        if let Ok(v) = hyper::header::HeaderValue::from_str(&allow.join(", ")) {
            r.headers_mut().insert(header::ALLOW, v);
        }
        return (label, r);
    };
    if !allows(principal.role, need) {
        return (
            label,
            ApiError::new(
                ErrorCode::Forbidden,
                if need == Role::Admin {
                    format!(
                        "a key with role `{}` cannot do this; it needs role `admin`",
                        principal.role.as_str()
                    )
                } else {
                    format!(
                        "a key with role `{}` cannot do this; it needs role `{}` or `admin`",
                        principal.role.as_str(),
                        need.as_str()
                    )
                },
            )
            .into_response(),
        );
    }
    if !state.ready.load(std::sync::atomic::Ordering::SeqCst) {
        return (
            label,
            ApiError::new(ErrorCode::NotReady, "meterd is starting or stopping").into_response(),
        );
    }
    let permit = match state.inflight.clone().try_acquire_owned() {
        Ok(p) => p,
        Err(_) => {
            return (
                label,
                shed("too many requests in flight; retry after the indicated delay"),
            );
        }
    };
    let mut req = req;
    let body_permit = match request_permits(&state, &mut req) {
        Ok(p) => p,
        Err(()) => {
            drop(permit);
            return (
                label,
                shed(
                    "too much request data in progress for memory_limit; retry after the indicated delay",
                ),
            );
        }
    };
    // The handler runs as its own task, holding the in-flight permit, so a client that
    // disconnects cannot cancel it halfway (e.g. after its events are committed but
    // before they are counted and their ids released).
    // Boxed before spawning: the handler's future is several KiB (the largest of every
    // route's), and tokio moves a spawned future by value a few times on its way into
    // the task; a box moves as a pointer (memcpy was 4.7% of the server's CPU).
    let ctx = Ctx { state, principal };
    let task = tokio::spawn(Box::pin(async move {
        let _permits = (permit, body_permit);
        handle(ctx, route, req).await
    }));
    let resp = match task.await {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(error = %e, "request handler failed");
            ApiError::new(ErrorCode::Internal, "the request handler failed").into_response()
        }
    };
    (label, resp)
}

/// Answers `429 overloaded` to a request refused by the load shield. Its body is read
/// and discarded by [`route`] like any unread body, holding no budget, so the client
/// sees the 429 rather than a reset and the connection stays usable.
fn shed(detail: &str) -> Response<Body> {
    metrics::counter!(names::HTTP_SHED_TOTAL).increment(1);
    ApiError::new(ErrorCode::Overloaded, detail).into_response()
}

/// Reserves the request's charge against the request memory budget
/// (`memory_limit / 4`, in KiB), computed from its declared `content-length`. A body
/// whose length is not declared (chunked) starts at the smallest charge and grows as
/// its bytes arrive ([`BodyCharge`], read by `read_body`), so a slow chunked upload
/// holds only what it has sent. Requests without a body (GET, HEAD,
/// `content-length: 0`) need none. `Err` when the budget is exhausted: the caller
/// answers 429.
fn request_permits(
    state: &State,
    req: &mut Request<ReqBody>,
) -> Result<Option<tokio::sync::OwnedSemaphorePermit>, ()> {
    if matches!(*req.method(), Method::GET | Method::HEAD) {
        return Ok(None);
    }
    let declared = declared_length(req.headers());
    let body = match declared {
        Some(0) => return Ok(None),
        // Longer than the limit: the handler answers 413 without reading it.
        Some(n) => n,
        None => 0,
    };
    let kib = state
        .cfg
        .request_charge_bytes(body)
        .div_ceil(1024)
        .clamp(1, u32::MAX as u64) as u32;
    let permit = state
        .request_budget
        .clone()
        .try_acquire_many_owned(kib)
        .map_err(|_| ())?;
    if declared.is_some() {
        return Ok(Some(permit));
    }
    let charge = Arc::new(BodyCharge::new(
        state.request_budget.clone(),
        crate::config::REQUEST_BYTES_PER_BODY_BYTE,
        permit,
    ));
    req.extensions_mut().insert(charge);
    Ok(None)
}

async fn handle(ctx: Ctx, route: Route, req: Request<ReqBody>) -> Response<Body> {
    let method = req.method().clone();
    let result = match route {
        Route::Events => events::post(&ctx, req).await,
        Route::CloudEvents => cloudevents::post(&ctx, req).await,
        Route::Changes => changes::get(&ctx, &req),
        Route::Usage => usage::list(&ctx, &req),
        Route::Levers => admin::list_levers(&ctx, &req),
        Route::Lever(name) => match method {
            Method::GET => admin::get_lever(&ctx, &name),
            Method::DELETE => admin::delete_lever(&ctx, &name).await,
            _ => admin::put_lever(&ctx, &name, req).await,
        },
        Route::Contracts => admin::list_contracts(&ctx, &req),
        Route::Contract(id) => match method {
            Method::GET => admin::get_contract(&ctx, &id),
            _ => admin::put_contract(&ctx, &id, req).await,
        },
        Route::ContractEnd(id) => admin::end_contract(&ctx, &id, req).await,
        Route::ContractUsage(id) => usage::get(&ctx, &id, &req),
        Route::ContractBalance(id) => balance::get(&ctx, &id, &req).await,
        Route::ContractGrants(id) => match method {
            Method::GET => grants::list(&ctx, &id, &req),
            _ => grants::post(&ctx, &id, req).await,
        },
        Route::ContractAdjustments(id) => match method {
            Method::GET => corrections::list(&ctx, &id, &req),
            _ => corrections::post_adjustment(&ctx, &id, req).await,
        },
        Route::Event(id) => corrections::retract(&ctx, &id).await,
        Route::Plans => admin::list_plans(&ctx, &req),
        Route::Plan(id) => match method {
            Method::GET => admin::get_plan(&ctx, &id),
            _ => admin::put_plan(&ctx, &id, req).await,
        },
    };
    result.unwrap_or_else(ApiError::into_response)
}

#[cfg(test)]
mod tests {
    use super::*;

    const METHODS: [Method; 5] = [
        Method::GET,
        Method::PUT,
        Method::POST,
        Method::DELETE,
        Method::PATCH,
    ];
    const UNAUTHENTICATED: [&str; 5] = [
        "/healthz",
        "/readyz",
        "/metrics",
        "/backup",
        "/openapi.json",
    ];

    fn sample(template: &str) -> String {
        template
            .split('/')
            .map(|s| if s.starts_with('{') { "x1" } else { s })
            .collect::<Vec<_>>()
            .join("/")
    }

    /// `ROUTES` lists exactly the (method, path) pairs the router serves.
    #[test]
    fn route_table_matches_the_router() {
        for (method, template) in ROUTES {
            if UNAUTHENTICATED.contains(template) {
                continue;
            }
            let route = parse_route(&sample(template))
                .unwrap()
                .unwrap_or_else(|| panic!("{template} is not routed"));
            let m = Method::from_bytes(method.as_bytes()).unwrap();
            assert!(
                route.required(&m).is_some(),
                "{method} {template} is refused"
            );
        }
        for (_, template) in ROUTES {
            if UNAUTHENTICATED.contains(template) {
                continue;
            }
            let route = parse_route(&sample(template)).unwrap().unwrap();
            for m in METHODS {
                if route.required(&m).is_some() {
                    assert!(
                        ROUTES.contains(&(m.as_str(), template)),
                        "{m} {template} is served but not in ROUTES"
                    );
                }
            }
        }
    }
}
