//! Black-box tests of authentication, roles and tenant isolation (SPEC 6): every route and
//! method against no key, a bad key and each role of the own and the other tenant, with
//! exact statuses and no side effects on refusal; same ids in two tenants never mix; API
//! keys never appear in logs or metrics.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{time_at, Daemon, ADMIN, INGEST, OTHER_ADMIN, OTHER_INGEST, OTHER_READ, READ};
use serde_json::{json, Value};

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

/// One route and method. `{l}` and `{c}` are replaced by a fresh lever and contract of the
/// default tenant for every cell of the matrix.
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

/// The default tenant's view of lever `lv{n}`, contract `ct{n}`, its usage and grants.
fn snapshot(d: &Daemon, n: usize, from: &str) -> (Value, Value, Value, Value) {
    let lever = d.req("GET", &format!("/v1/levers/lv{n}"), Some(ADMIN), None);
    let contract = d.req("GET", &format!("/v1/contracts/ct{n}"), Some(ADMIN), None);
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
    (
        json!([lever.0, lever.1]),
        json!([contract.0, contract.1]),
        json!([usage.0, usage.1["items"]]),
        json!([grants.0, grants.1["items"]]),
    )
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
                        _ => "not_found",
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
                    ("GET", "/v1/contracts/{c}/usage?from={from}", 200, false) => {
                        assert_eq!(resp["contract"], format!("ct{n}"))
                    }
                    _ => {}
                }
            }
        }
    }
    assert_eq!(checked, 180);

    // Methods a route does not support: 401 without a valid key, 405 for every role.
    d.contract("ct_m");
    d.lever("lv_m", "sum");
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

    // Unknown routes.
    for path in [
        "/v1/nope",
        "/v1/contracts/ct_m/nope",
        "/v1/levers/lv_m/x",
        "/v1/",
        "/v1/events/x/y",
    ] {
        assert_eq!(send(&d, "GET", path, None, None).0, 401, "{path}");
        assert_eq!(send(&d, "GET", path, Some(ADMIN), None).0, 404, "{path}");
    }
    for path in ["/", "/nope", "/v1", "/v2/levers", "/openapi.yaml"] {
        assert_eq!(send(&d, "GET", path, None, None).0, 404, "{path}");
    }
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
