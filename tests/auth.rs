//! Black-box tests of authentication, roles and tenant isolation (SPEC 6): every route and
//! method against no key, a bad key and each role of the own and the other tenant, with
//! exact statuses and no side effects on refusal; same ids in two tenants never mix; API
//! keys never appear in logs or metrics.
//!
//! The matrix's routes are checked against the router's own list
//! ([`meterd::http::router::ROUTES`]): a new authenticated route without matrix cells
//! fails `matrix_covers_every_authenticated_route`.

mod common;

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{time_at, Daemon, ADMIN, INGEST, OTHER_ADMIN, OTHER_INGEST, OTHER_READ, READ};
use meterd::http::router::ROUTES;
use serde_json::{json, Value};

/// Routes answered without an API key, so not part of the matrix: the probes and
/// `/openapi.json` on the API listener, `/metrics` and `POST /backup` on the operator
/// listener. The router checks keys on every path under `/v1/` and `/api/v1/`.
const PUBLIC: &[&str] = &[
    "/healthz",
    "/readyz",
    "/metrics",
    "/backup",
    "/openapi.json",
];

fn authenticated(path: &str) -> bool {
    path.starts_with("/v1/") || path.starts_with("/api/v1/")
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Key {
    None,
    Bad,
    Ingest,
    Read,
    Admin,
}

const KEYS: [Key; 5] = [Key::None, Key::Bad, Key::Ingest, Key::Read, Key::Admin];

impl Key {
    /// The bearer key for the own (`other == false`) or the other tenant.
    fn secret(self, other: bool) -> Option<&'static str> {
        match (self, other) {
            (Key::None, _) => None,
            (Key::Bad, _) => Some("not-a-configured-key"),
            (Key::Ingest, false) => Some(INGEST),
            (Key::Read, false) => Some(READ),
            (Key::Admin, false) => Some(ADMIN),
            (Key::Ingest, true) => Some(OTHER_INGEST),
            (Key::Read, true) => Some(OTHER_READ),
            (Key::Admin, true) => Some(OTHER_ADMIN),
        }
    }
}

/// One route and method. `{l}`, `{c}` and `{p}` are replaced by a fresh lever, contract
/// and plan of the default tenant for every cell of the matrix (`{from}` and `{now}` by
/// timestamps).
struct Case {
    method: &'static str,
    path: &'static str,
    body: Option<Value>,
    /// Lowest role allowed (admin may do everything).
    need: Key,
    /// Status for an allowed key of the default tenant.
    own: u16,
    /// Status for an allowed key of the other tenant.
    other: u16,
    /// True when an allowed own-tenant request changes the default tenant's state.
    mutates: bool,
    /// Problem `code` when `own` or `other` is an error status (401 and 403 have theirs).
    code: &'static str,
}

fn cases() -> Vec<Case> {
    let c = |method, path, body, need, own, other, mutates| Case {
        method,
        path,
        body,
        need,
        own,
        other,
        mutates,
        code: "not_found",
    };
    vec![
        c(
            "POST",
            "/v1/events",
            Some(json!({"id": "{c}-ev", "contract": "{c}", "lever": "{l}", "value": 2})),
            Key::Ingest,
            200,
            200,
            true,
        ),
        // CloudEvents: the other tenant has neither the lever nor the contract, so its
        // event is rejected per event (400 `rejected_events`), never counted here.
        Case {
            code: "rejected_events",
            ..c(
                "POST",
                "/api/v1/events",
                Some(
                    json!({"specversion": "1.0", "id": "{c}-ce", "source": "matrix",
                            "type": "{l}", "subject": "{c}", "time": "{now}",
                            "data": {"value": 4}}),
                ),
                Key::Ingest,
                204,
                400,
                true,
            )
        },
        c("GET", "/v1/levers", None, Key::Read, 200, 200, false),
        c(
            "PUT",
            "/v1/levers/{l}",
            Some(json!({"aggregation": "sum", "unit": "changed"})),
            Key::Admin,
            200,
            201,
            true,
        ),
        c("GET", "/v1/levers/{l}", None, Key::Read, 200, 404, false),
        c("DELETE", "/v1/levers/{l}", None, Key::Admin, 204, 404, true),
        c("GET", "/v1/plans", None, Key::Read, 200, 200, false),
        c("GET", "/v1/plans/{p}", None, Key::Read, 200, 404, false),
        // The quota names the default tenant's lever: to the other tenant's admin that
        // lever does not exist, so its PUT is invalid (and creates nothing there).
        Case {
            code: "invalid_request",
            ..c(
                "PUT",
                "/v1/plans/{p}",
                Some(
                    json!({"quotas": [{"lever": "{l}", "period": "month", "limit": 100,
                                        "mode": "soft"}],
                            "description": "changed"}),
                ),
                Key::Admin,
                200,
                400,
                true,
            )
        },
        c("GET", "/v1/contracts", None, Key::Read, 200, 200, false),
        c(
            "PUT",
            "/v1/contracts/{c}",
            Some(json!({"customer": "changed"})),
            Key::Admin,
            200,
            201,
            true,
        ),
        c("GET", "/v1/contracts/{c}", None, Key::Read, 200, 404, false),
        c(
            "POST",
            "/v1/contracts/{c}/end",
            Some(json!({})),
            Key::Admin,
            200,
            404,
            true,
        ),
        c(
            "GET",
            "/v1/contracts/{c}/usage?from={from}",
            None,
            Key::Read,
            200,
            404,
            false,
        ),
        c("GET", "/v1/changes", None, Key::Read, 200, 200, false),
        c(
            "GET",
            "/v1/usage?from={from}",
            None,
            Key::Read,
            200,
            200,
            false,
        ),
        c(
            "GET",
            "/v1/contracts/{c}/adjustments",
            None,
            Key::Read,
            200,
            404,
            false,
        ),
        c(
            "POST",
            "/v1/contracts/{c}/adjustments",
            Some(
                json!({"id": "adj-{c}", "lever": "{l}", "time": "{now}", "value": 3,
                        "reason": "matrix"}),
            ),
            Key::Admin,
            201,
            404,
            true,
        ),
        c(
            "DELETE",
            "/v1/events/{c}-gone",
            None,
            Key::Admin,
            404,
            404,
            false,
        ),
        c(
            "GET",
            "/v1/contracts/{c}/balance",
            None,
            Key::Read,
            200,
            404,
            false,
        ),
        c(
            "GET",
            "/v1/contracts/{c}/grants",
            None,
            Key::Read,
            200,
            404,
            false,
        ),
        c(
            "POST",
            "/v1/contracts/{c}/grants",
            Some(json!({"id": "g-{c}", "lever": "{l}", "amount": 5})),
            Key::Admin,
            201,
            404,
            true,
        ),
    ]
}

fn allowed(have: Key, need: Key) -> bool {
    have == Key::Admin || have == need
}

fn fill(s: &str, n: usize, from: &str) -> String {
    s.replace("{l}", &format!("lv{n}"))
        .replace("{c}", &format!("ct{n}"))
        .replace("{p}", &format!("pl{n}"))
        .replace("{from}", from)
        .replace("{now}", &time_at(-60_000))
}

fn fill_json(v: &Value, n: usize) -> Value {
    serde_json::from_str(&fill(&v.to_string(), n, "")).unwrap()
}

/// Sends a request with an optional bearer key; returns status, content type, the
/// WWW-Authenticate header and the JSON body.
fn send(
    d: &Daemon,
    method: &str,
    path: &str,
    key: Option<&str>,
    body: Option<&Value>,
) -> (u16, String, Option<String>, Value) {
    let m = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
    let mut rb = d.client.request(m, d.url(path));
    if let Some(k) = key {
        rb = rb.bearer_auth(k);
    }
    if let Some(b) = body {
        rb = rb
            .header("content-type", "application/json")
            .body(b.to_string());
    }
    let r = rb.send().expect("request");
    let status = r.status().as_u16();
    let header = |h: &str| r.headers().get(h).map(|v| v.to_str().unwrap().to_string());
    let ct = header("content-type").unwrap_or_default();
    let www = header("www-authenticate");
    let text = r.text().unwrap();
    let body = if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or(Value::String(text))
    };
    (status, ct, www, body)
}

/// The OpenAPI path template a matrix path stands for: the query is dropped and a
/// placeholder segment becomes the parameter of its collection.
fn template(path: &str) -> String {
    let path = path.split('?').next().unwrap();
    let segs: Vec<&str> = path.split('/').collect();
    segs.iter()
        .enumerate()
        .map(|(i, s)| {
            if !s.contains('{') {
                return s.to_string();
            }
            match segs[i - 1] {
                "levers" => "{lever}",
                "contracts" => "{contract}",
                "plans" => "{plan}",
                "events" => "{id}",
                parent => panic!("{path}: no template parameter for a segment under {parent}"),
            }
            .to_string()
        })
        .collect::<Vec<_>>()
        .join("/")
}

/// Creates plan `plan` in the default tenant, with a quota on (existing) lever `lever`.
fn plan_fixture(d: &Daemon, plan: &str, lever: &str) {
    let (s, b) = d.req(
        "PUT",
        &format!("/v1/plans/{plan}"),
        Some(ADMIN),
        Some(&json!({"quotas": [{"lever": lever, "period": "day", "limit": 10}]})),
    );
    assert_eq!(s, 201, "{b}");
}

/// The default tenant's view of lever `lv{n}`, contract `ct{n}`, its usage and grants, and
/// plan `pl{n}`.
fn snapshot(d: &Daemon, n: usize, from: &str) -> [Value; 5] {
    let lever = d.req("GET", &format!("/v1/levers/lv{n}"), Some(ADMIN), None);
    let contract = d.req("GET", &format!("/v1/contracts/ct{n}"), Some(ADMIN), None);
    let plan = d.req("GET", &format!("/v1/plans/pl{n}"), Some(ADMIN), None);
    let usage = d.req(
        "GET",
        &format!("/v1/contracts/ct{n}/usage?from={from}"),
        Some(ADMIN),
        None,
    );
    let grants = d.req(
        "GET",
        &format!("/v1/contracts/ct{n}/grants"),
        Some(ADMIN),
        None,
    );
    [
        json!([lever.0, lever.1]),
        json!([contract.0, contract.1]),
        json!([usage.0, usage.1["items"]]),
        json!([grants.0, grants.1["items"]]),
        json!([plan.0, plan.1]),
    ]
}

fn ids(v: &Value) -> Vec<String> {
    v["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["id"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn role_and_tenant_matrix() {
    let d = Daemon::start();
    let from = time_at(-3_600_000 + 60_000).replace('+', "%2B");
    let mut n = 0;
    let mut checked = 0;
    for case in cases() {
        for key in KEYS {
            for other in [false, true] {
                n += 1;
                d.lever(&format!("lv{n}"), "sum");
                d.contract(&format!("ct{n}"));
                plan_fixture(&d, &format!("pl{n}"), &format!("lv{n}"));
                let before = snapshot(&d, n, &from);
                let path = fill(case.path, n, &from);
                let body = case.body.as_ref().map(|b| fill_json(b, n));
                let (status, ct, www, resp) =
                    send(&d, case.method, &path, key.secret(other), body.as_ref());
                let expect = match key {
                    Key::None | Key::Bad => 401,
                    k if !allowed(k, case.need) => 403,
                    _ if other => case.other,
                    _ => case.own,
                };
                let what = format!("{} {path} key={key:?} other_tenant={other}", case.method);
                assert_eq!(status, expect, "{what}: {resp}");
                checked += 1;
                if status >= 400 {
                    assert!(
                        ct.starts_with("application/problem+json"),
                        "{what}: content-type {ct}"
                    );
                    assert_eq!(resp["status"], status, "{what}: {resp}");
                    let code = match status {
                        401 => "unauthorized",
                        403 => "forbidden",
                        _ => case.code,
                    };
                    assert_eq!(resp["code"], code, "{what}: {resp}");
                }
                if status == 401 {
                    assert!(
                        www.as_deref().is_some_and(|w| w.starts_with("Bearer")),
                        "{what}: WWW-Authenticate {www:?}"
                    );
                }
                let after = snapshot(&d, n, &from);
                let own_success = expect < 300 && !other;
                if case.mutates && own_success {
                    assert_ne!(before, after, "{what}: an allowed write changed nothing");
                } else {
                    assert_eq!(before, after, "{what}: the default tenant's state changed");
                }
                // What a successful request of either tenant saw.
                match (case.method, case.path, expect, other) {
                    ("POST", "/v1/events", 200, false) => {
                        assert_eq!(resp["accepted"], 1, "{what}: {resp}")
                    }
                    ("POST", "/v1/events", 200, true) => {
                        assert_eq!(resp["rejected"], 1, "{what}: {resp}");
                        assert_eq!(resp["errors"][0]["code"], "unknown_lever", "{what}: {resp}");
                    }
                    ("GET", "/v1/levers", 200, o) => {
                        assert_eq!(ids(&resp).contains(&format!("lv{n}")), !o, "{what}: {resp}")
                    }
                    ("GET", "/v1/contracts", 200, o) => {
                        assert_eq!(ids(&resp).contains(&format!("ct{n}")), !o, "{what}: {resp}")
                    }
                    ("POST", "/api/v1/events", 204, false) => {
                        assert_eq!(resp, Value::Null, "{what}: 204 with a body");
                        let usage = &after[2][1];
                        assert_eq!(usage[0]["lever"], format!("lv{n}"), "{what}: {usage}");
                        assert_eq!(usage[0]["value"], "4", "{what}: {usage}");
                    }
                    ("POST", "/api/v1/events", 400, true) => {
                        assert_eq!(
                            (&resp["accepted"], &resp["duplicates"], &resp["rejected"]),
                            (&json!(0), &json!(0), &json!(1)),
                            "{what}: {resp}"
                        );
                        assert_eq!(resp["errors"][0]["code"], "unknown_lever", "{what}: {resp}");
                    }
                    ("GET", "/v1/plans", 200, o) => {
                        assert_eq!(ids(&resp).contains(&format!("pl{n}")), !o, "{what}: {resp}")
                    }
                    ("GET", "/v1/plans/{p}", 200, false) => {
                        assert_eq!(resp["id"], format!("pl{n}"), "{what}: {resp}")
                    }
                    ("PUT", "/v1/plans/{p}", 200, false) => {
                        assert_eq!(resp["description"], "changed", "{what}: {resp}");
                        assert_eq!(after[4][1]["quotas"][0]["period"], "month", "{what}");
                    }
                    ("PUT", "/v1/plans/{p}", 400, true) => {
                        // Nothing was created in the other tenant either.
                        let (s, b) =
                            d.req("GET", &format!("/v1/plans/pl{n}"), key.secret(true), None);
                        assert_eq!(s, 404, "{what}: the other tenant got a plan: {b}");
                    }
                    ("GET", "/v1/contracts/{c}/usage?from={from}", 200, false) => {
                        assert_eq!(resp["contract"], format!("ct{n}"))
                    }
                    _ => {}
                }
            }
        }
    }
    assert_eq!(checked, cases().len() * KEYS.len() * 2);
    assert_eq!(checked, 220);

    // Methods a route does not support: 401 without a valid key, 405 for every role.
    d.contract("ct_m");
    d.lever("lv_m", "sum");
    plan_fixture(&d, "pl_m", "lv_m");
    let unsupported = [
        ("DELETE", "/v1/contracts/ct_m"),
        ("PATCH", "/v1/levers/lv_m"),
        ("POST", "/v1/levers/lv_m"),
        ("GET", "/v1/events"),
        ("PUT", "/v1/events"),
        ("POST", "/v1/levers"),
        ("DELETE", "/v1/levers"),
        ("POST", "/v1/contracts"),
        ("GET", "/v1/contracts/ct_m/end"),
        ("PUT", "/v1/contracts/ct_m/end"),
        ("POST", "/v1/contracts/ct_m/usage"),
        ("POST", "/v1/contracts/ct_m/balance"),
        ("POST", "/v1/changes"),
        ("DELETE", "/v1/usage"),
        ("PUT", "/v1/contracts/ct_m/adjustments"),
        ("GET", "/v1/events/some-id"),
        ("POST", "/v1/events/some-id"),
        ("PUT", "/v1/contracts/ct_m/grants"),
        ("DELETE", "/v1/contracts/ct_m/grants"),
        ("GET", "/api/v1/events"),
        ("PUT", "/api/v1/events"),
        ("DELETE", "/api/v1/events"),
        ("POST", "/v1/plans"),
        ("DELETE", "/v1/plans"),
        ("DELETE", "/v1/plans/pl_m"),
        ("POST", "/v1/plans/pl_m"),
        ("PATCH", "/v1/plans/pl_m"),
    ];
    for (method, path) in unsupported {
        for key in KEYS {
            for other in [false, true] {
                let (status, _, _, resp) = send(&d, method, path, key.secret(other), None);
                let expect = if matches!(key, Key::None | Key::Bad) {
                    401
                } else {
                    405
                };
                assert_eq!(
                    status, expect,
                    "{method} {path} {key:?} other={other}: {resp}"
                );
                if expect == 405 {
                    assert_eq!(resp["code"], "method_not_allowed");
                }
            }
        }
    }
    assert_eq!(
        d.req("GET", "/v1/contracts/ct_m", Some(ADMIN), None).0,
        200,
        "405 must not delete"
    );
    assert_eq!(
        d.req("GET", "/v1/plans/pl_m", Some(ADMIN), None).0,
        200,
        "405 must not delete"
    );

    // Unknown routes.
    for path in [
        "/v1/nope",
        "/v1/contracts/ct_m/nope",
        "/v1/levers/lv_m/x",
        "/v1/",
        "/v1/events/x/y",
        "/v1/plans/pl_m/x",
        "/api/v1/nope",
        "/api/v1/events/x",
        "/api/v1/",
    ] {
        assert_eq!(send(&d, "GET", path, None, None).0, 401, "{path}");
        assert_eq!(send(&d, "GET", path, Some(ADMIN), None).0, 404, "{path}");
    }
    for path in [
        "/",
        "/nope",
        "/v1",
        "/v2/levers",
        "/openapi.yaml",
        "/api/v1",
        "/api/v2/events",
    ] {
        assert_eq!(send(&d, "GET", path, None, None).0, 404, "{path}");
    }
}

/// The matrix has cells for exactly the authenticated routes the router serves, once
/// each: a route added to [`ROUTES`] without matrix cells fails here, and so does a new
/// route outside `/v1/` and `/api/v1/` (no key checked) until it is listed in [`PUBLIC`].
#[test]
fn matrix_covers_every_authenticated_route() {
    for (method, path) in ROUTES {
        assert!(
            authenticated(path) || PUBLIC.contains(path),
            "{method} {path} is served without an API key but is not a known public route"
        );
    }
    let routed: BTreeSet<(String, String)> = ROUTES
        .iter()
        .filter(|(_, path)| authenticated(path))
        .map(|(m, p)| (m.to_string(), p.to_string()))
        .collect();
    let mut covered = BTreeSet::new();
    for case in cases() {
        let key = (case.method.to_string(), template(case.path));
        assert!(covered.insert(key.clone()), "{key:?} has two matrix cases");
    }
    let missing: Vec<_> = routed.difference(&covered).collect();
    let extra: Vec<_> = covered.difference(&routed).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "routes without matrix cells: {missing:?}; matrix cases for no route: {extra:?}"
    );
    assert_eq!(covered.len(), 22);
}

#[test]
fn malformed_credentials_are_refused() {
    let d = Daemon::start();
    let hash = {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(ADMIN.as_bytes()))
    };
    let bad = [
        "Bearer wrong-key".to_string(),
        format!("Bearer {hash}"),
        format!("Bearer {}", hash.to_uppercase()),
        format!("Basic {ADMIN}"),
        ADMIN.to_string(),
        format!("Bearer{ADMIN}"),
        format!("Bearer {ADMIN}x"),
        format!("Bearer {}", &ADMIN[..ADMIN.len() - 1]),
        format!("Bearer {}", ADMIN.to_uppercase()),
        format!("Bearer {ADMIN} {ADMIN}"),
        "Bearer ".to_string(),
        "Bearer".to_string(),
        String::new(),
    ];
    for h in &bad {
        let r = d
            .client
            .get(d.url("/v1/levers"))
            .header("authorization", h.as_str())
            .send()
            .unwrap();
        assert_eq!(r.status().as_u16(), 401, "Authorization: {h:?}");
        assert_eq!(r.headers()["www-authenticate"].to_str().unwrap(), "Bearer");
        let b: Value = r.json().unwrap();
        assert_eq!(b["code"], "unauthorized");
    }
    // Invalid UTF-8 / odd bytes in the header value are refused, not a 5xx.
    let r = d
        .client
        .get(d.url("/v1/levers"))
        .header(
            "authorization",
            reqwest::header::HeaderValue::from_bytes(b"Bearer \xff\xfe").unwrap(),
        )
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    // The scheme is case-insensitive (RFC 9110 11.1) and surrounding blanks are ignored.
    for h in [format!("bearer {ADMIN}"), format!("Bearer  {ADMIN} ")] {
        let r = d
            .client
            .get(d.url("/v1/levers"))
            .header("authorization", h.as_str())
            .send()
            .unwrap();
        assert_eq!(r.status().as_u16(), 200, "Authorization: {h:?}");
    }
    // A refused write stays refused even with a body that would be valid.
    let (s, _) = d.req(
        "PUT",
        "/v1/levers/x",
        Some("wrong"),
        Some(&json!({"aggregation": "sum"})),
    );
    assert_eq!(s, 401);
    assert_eq!(d.req("GET", "/v1/levers/x", Some(ADMIN), None).0, 404);
}

#[test]
fn tenants_never_mix() {
    let d = Daemon::start();
    let from = time_at(-3_600_000 + 60_000).replace('+', "%2B");
    for (admin, customer) in [(ADMIN, "cus_default"), (OTHER_ADMIN, "cus_other")] {
        let (s, b) = d.req(
            "PUT",
            "/v1/levers/calls",
            Some(admin),
            Some(&json!({"aggregation": "sum", "unit": customer})),
        );
        assert_eq!(s, 201, "{b}");
        let (s, b) = d.req(
            "PUT",
            "/v1/contracts/shared",
            Some(admin),
            Some(&json!({"customer": customer})),
        );
        assert_eq!(s, 201, "each tenant creates its own contract: {b}");
    }
    d.contract("default_only");
    // An identical PUT is idempotent within the other tenant too.
    let (s, _) = d.req(
        "PUT",
        "/v1/levers/calls",
        Some(OTHER_ADMIN),
        Some(&json!({"aggregation": "sum", "unit": "cus_other"})),
    );
    assert_eq!(s, 200);

    // Same event id in both tenants: both accepted, each counted in its own tenant.
    let ev =
        |value: u32| json!({"id": "e1", "contract": "shared", "lever": "calls", "value": value});
    let (s, b) = d.req("POST", "/v1/events", Some(INGEST), Some(&ev(5)));
    assert_eq!((s, b["accepted"].as_u64()), (200, Some(1)), "{b}");
    let (s, b) = d.req("POST", "/v1/events", Some(OTHER_INGEST), Some(&ev(7)));
    assert_eq!(
        (s, b["accepted"].as_u64()),
        (200, Some(1)),
        "same id in another tenant: {b}"
    );
    let (s, b) = d.req("POST", "/v1/events", Some(OTHER_INGEST), Some(&ev(9)));
    assert_eq!((s, b["duplicates"].as_u64()), (200, Some(1)), "{b}");
    let usage = |key: &str, contract: &str| {
        let (s, b) = d.req(
            "GET",
            &format!("/v1/contracts/{contract}/usage?from={from}"),
            Some(key),
            None,
        );
        (s, b["items"].clone())
    };
    let (s, items) = usage(READ, "shared");
    assert_eq!(s, 200);
    assert_eq!(items.as_array().unwrap().len(), 1, "{items}");
    assert_eq!(items[0]["value"], "5");
    let (s, items) = usage(OTHER_READ, "shared");
    assert_eq!(s, 200);
    assert_eq!(items[0]["value"], "7", "{items}");

    // Definitions are per tenant.
    assert_eq!(
        d.req("GET", "/v1/contracts/shared", Some(READ), None).1["customer"],
        "cus_default"
    );
    assert_eq!(
        d.req("GET", "/v1/contracts/shared", Some(OTHER_READ), None)
            .1["customer"],
        "cus_other"
    );
    assert_eq!(
        d.req("GET", "/v1/levers/calls", Some(OTHER_READ), None).1["unit"],
        "cus_other"
    );
    assert_eq!(
        d.req("GET", "/v1/levers/calls", Some(READ), None).1["unit"],
        "cus_default"
    );
    assert_eq!(
        d.req("GET", "/v1/contracts/default_only", Some(OTHER_ADMIN), None)
            .0,
        404
    );
    assert_eq!(usage(OTHER_READ, "default_only").0, 404);
    assert_eq!(
        d.req(
            "GET",
            "/v1/contracts?customer=cus_default",
            Some(OTHER_READ),
            None
        )
        .1["items"],
        json!([])
    );
    let (_, list) = d.req("GET", "/v1/contracts", Some(OTHER_READ), None);
    assert_eq!(ids(&list), vec!["shared".to_string()]);
    let (_, list) = d.req("GET", "/v1/levers", Some(OTHER_READ), None);
    assert_eq!(ids(&list), vec!["calls".to_string()]);

    // The other tenant's events never reach the default tenant's contracts.
    let (s, b) = d.req(
        "POST",
        "/v1/events",
        Some(OTHER_INGEST),
        Some(&json!({"id": "x1", "contract": "default_only", "lever": "calls"})),
    );
    assert_eq!(s, 200);
    assert_eq!(b["errors"][0]["code"], "unknown_contract", "{b}");
    assert_eq!(usage(READ, "default_only").1, json!([]));

    // The other tenant's writes to its own namesakes leave the default tenant's alone.
    assert_eq!(
        d.req("POST", "/v1/contracts/shared/end", Some(OTHER_ADMIN), None)
            .0,
        200
    );
    assert_eq!(
        d.req("DELETE", "/v1/levers/calls", Some(OTHER_ADMIN), None)
            .0,
        204
    );
    assert_eq!(
        d.req("GET", "/v1/contracts/shared", Some(READ), None).1["status"],
        "active"
    );
    assert_eq!(d.req("GET", "/v1/levers/calls", Some(READ), None).0, 200);
    let (s, b) = d.req(
        "POST",
        "/v1/events",
        Some(INGEST),
        Some(&json!({"id": "e2", "contract": "shared", "lever": "calls"})),
    );
    assert_eq!((s, b["accepted"].as_u64()), (200, Some(1)), "{b}");
    let (s, b) = d.req(
        "POST",
        "/v1/events",
        Some(OTHER_INGEST),
        Some(&json!({"id": "e2", "contract": "shared", "lever": "calls"})),
    );
    assert_eq!(
        (s, b["errors"][0]["code"].as_str()),
        (200, Some("unknown_lever")),
        "{b}"
    );
    assert_eq!(usage(READ, "shared").1[0]["value"], "6");
    assert_eq!(usage(OTHER_READ, "shared").1[0]["value"], "7");
}

/// Starts a daemon like [`Daemon::start`] but with `RUST_LOG=trace`, so the key check sees
/// every log line the daemon and its libraries can produce.
fn start_verbose() -> Daemon {
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let config = dir.path().join("meterd.toml");
    std::fs::write(&config, common::config_text("", "")).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_meterd"))
        .args(["serve", "--config"])
        .arg(&config)
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .env("RUST_LOG", "trace")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let log = Arc::new(Mutex::new(String::new()));
    let (tx, rx) = std::sync::mpsc::channel();
    for (pipe, is_stdout) in [
        (
            Box::new(child.stderr.take().unwrap()) as Box<dyn std::io::Read + Send>,
            false,
        ),
        (Box::new(child.stdout.take().unwrap()), true),
    ] {
        let log = log.clone();
        let tx = tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines() {
                let Ok(line) = line else { break };
                if is_stdout && line.contains("listening on") {
                    let _ = tx.send(line.clone());
                }
                let mut l = log.lock().unwrap();
                l.push_str(&line);
                l.push('\n');
            }
        });
    }
    let line = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("meterd did not start");
    let mut urls = line
        .split_whitespace()
        .filter(|w| w.contains("http://"))
        .map(|w| w.trim_matches(|c| c == '(' || c == ')').to_string());
    let d = Daemon {
        child: Some(child),
        dir,
        config,
        base: urls.next().unwrap(),
        metrics: urls.next().unwrap(),
        client: reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()
            .unwrap(),
        stderr: log,
    };
    d.wait_ready();
    d
}

/// Uses every key (valid, wrong role, other tenant, unknown) on every kind of route.
fn exercise_keys(d: &Daemon, keys: &[&str]) {
    d.lever("calls", "sum");
    d.contract("ctr");
    let from = time_at(-1_800_000).replace('+', "%2B");
    let usage = format!("/v1/contracts/ctr/usage?from={from}");
    for key in keys {
        for (method, path, body) in [
            (
                "POST",
                "/v1/events",
                Some(json!({"id": format!("ev-{key}"), "contract": "ctr", "lever": "calls"})),
            ),
            ("POST", "/v1/events", Some(json!({"id": 5}))),
            ("POST", "/v1/events", Some(json!("not an event"))),
            ("GET", "/v1/levers", None),
            (
                "PUT",
                "/v1/levers/calls",
                Some(json!({"aggregation": "max"})),
            ),
            ("GET", "/v1/contracts/nope", None),
            ("GET", usage.as_str(), None),
            ("DELETE", "/v1/contracts/ctr", None),
        ] {
            let _ = d.req(method, path, Some(key), body.as_ref());
        }
    }
    // Wait for a flush so flush-time logging happens too.
    std::thread::sleep(Duration::from_millis(500));
}

#[track_caller]
fn assert_absent(d: &Daemon, keys: &[&str]) {
    let logs = d.logs();
    let metrics = d.metrics_text();
    assert!(logs.len() > 1000, "expected verbose logs, got: {logs}");
    for key in keys {
        let leaks: Vec<&str> = logs.lines().filter(|l| l.contains(key)).collect();
        assert!(
            leaks.is_empty(),
            "key {key:?} appears in the logs:\n{}",
            leaks.join("\n")
        );
        assert!(!metrics.contains(key), "key {key:?} appears in /metrics");
    }
}

#[test]
fn presented_keys_never_appear_in_logs_or_metrics() {
    let d = start_verbose();
    let keys = [
        OTHER_ADMIN,
        OTHER_INGEST,
        OTHER_READ,
        "unknown-key-5b1f0e",
        "Zm9vYmFyLXNlY3JldA",
    ];
    exercise_keys(&d, &keys);
    assert_absent(&d, &keys);
}

/// The development keys are keys too: SPEC 6 says a key never appears in logs.
#[test]
fn development_keys_never_appear_in_logs_or_metrics() {
    let d = start_verbose();
    let keys = [ADMIN, INGEST, READ];
    exercise_keys(&d, &keys);
    assert_absent(&d, &keys);
}
