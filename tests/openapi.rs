//! The OpenAPI description (`openapi/openapi.json`, served at `GET /openapi.json`):
//!
//! - it documents exactly the routes the router serves;
//! - schemathesis, run against a live daemon, finds no server error and no response that
//!   contradicts the document (status codes, content types, headers, bodies).
//!
//! The schemathesis run needs Python 3.10+ and PyPI the first time: the pinned version
//! (`tests/schemathesis/requirements.txt`) is installed once into
//! `~/.cache/meterd/pyenv-schemathesis` by `tests/schemathesis/install.sh`. A failed
//! install fails the test. `METERD_SCHEMATHESIS_EXAMPLES` overrides the number of
//! examples per operation (default 20).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Daemon, ADMIN, INGEST};
use meterd::http::router::ROUTES;
use serde_json::{json, Value};

/// Routes answered without an API key.
/// Routes without an API key: health, the spec, and the operator listener's routes.
const PUBLIC: &[&str] = &[
    "/healthz",
    "/readyz",
    "/metrics",
    "/backup",
    "/openapi.json",
];

const METHODS: &[&str] = &[
    "get", "put", "post", "delete", "patch", "head", "options", "trace",
];

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn spec_path() -> PathBuf {
    root().join("openapi").join("openapi.json")
}

fn load_spec() -> Value {
    let path = spec_path();
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()))
}

/// The documented operations: (METHOD, path) -> operation object.
fn operations(spec: &Value) -> BTreeMap<(String, String), Value> {
    let mut out = BTreeMap::new();
    let paths = spec["paths"].as_object().expect("`paths` is an object");
    for (path, item) in paths {
        for m in METHODS {
            if let Some(op) = item.get(*m) {
                out.insert((m.to_uppercase(), path.clone()), op.clone());
            }
        }
    }
    out
}

/// Every `$ref` string in `v`.
fn refs(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                match (k.as_str(), x) {
                    ("$ref", Value::String(r)) => out.push(r.clone()),
                    _ => refs(x, out),
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|x| refs(x, out)),
        _ => {}
    }
}

#[test]
fn openapi_documents_exactly_the_routes() {
    let spec = load_spec();
    assert!(
        spec["openapi"]
            .as_str()
            .is_some_and(|v| v.starts_with("3.1.")),
        "the document must be OpenAPI 3.1"
    );
    let ops = operations(&spec);
    let documented: BTreeSet<(String, String)> = ops.keys().cloned().collect();
    let routed: BTreeSet<(String, String)> = ROUTES
        .iter()
        .map(|(m, p)| (m.to_string(), p.to_string()))
        .collect();
    let missing: Vec<_> = routed.difference(&documented).collect();
    let extra: Vec<_> = documented.difference(&routed).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "openapi/openapi.json and the router disagree.\n  routed but not documented: \
         {missing:?}\n  documented but not routed: {extra:?}"
    );

    // Every internal reference resolves (the file is edited by hand).
    let mut all = Vec::new();
    refs(&spec, &mut all);
    for r in &all {
        let pointer = r
            .strip_prefix('#')
            .unwrap_or_else(|| panic!("external $ref {r:?}: keep the document self-contained"));
        assert!(
            spec.pointer(pointer).is_some(),
            "$ref {r:?} does not resolve"
        );
    }

    let mut ids = BTreeSet::new();
    for ((method, path), op) in &ops {
        let what = format!("{method} {path}");
        let id = op["operationId"]
            .as_str()
            .unwrap_or_else(|| panic!("{what}: no operationId"));
        assert!(
            ids.insert(id.to_string()),
            "{what}: operationId {id:?} is not unique"
        );
        let responses = op["responses"]
            .as_object()
            .unwrap_or_else(|| panic!("{what}: no responses"));
        let public = PUBLIC.contains(&path.as_str());
        assert_eq!(
            op.get("security") == Some(&json!([])),
            public,
            "{what}: only {PUBLIC:?} need no API key"
        );
        if !public {
            for status in ["401", "403", "429", "503"] {
                assert!(
                    responses.contains_key(status),
                    "{what}: {status} is not documented"
                );
            }
        }
        // Error responses are problem documents.
        for (status, resp) in responses {
            if !status.starts_with('4') && !status.starts_with('5') || public {
                continue;
            }
            let resp = match resp.get("$ref").and_then(Value::as_str) {
                Some(r) => spec.pointer(&r[1..]).expect("checked above"),
                None => resp,
            };
            let content = resp["content"].as_object();
            assert!(
                content.is_some_and(|c| c.len() == 1 && c.contains_key("application/problem+json")),
                "{what}: the {status} response must be application/problem+json"
            );
        }
    }
}

/// Installs (once) the pinned schemathesis; returns the venv's `schemathesis` binary.
fn schemathesis() -> PathBuf {
    let script = root().join("tests/schemathesis/install.sh");
    let out = Command::new("bash")
        .arg(&script)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
    assert!(
        out.status.success(),
        "installing schemathesis failed ({}); it needs python3 (3.10+) with venv and pip, and \
         PyPI. Run `bash tests/schemathesis/install.sh` to retry.\n--- stdout\n{}\n--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let venv = std::env::var_os("METERD_SCHEMATHESIS_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let home = std::env::var_os("HOME").expect("HOME is set");
            Path::new(&home).join(".cache/meterd/pyenv-schemathesis")
        });
    venv.join("bin/schemathesis")
}

/// Creates what the document's examples name, so that examples reach existing resources.
fn seed(d: &Daemon) {
    let ok = |method: &str, path: &str, key: &str, body: Value| {
        let (s, b) = d.req(method, path, Some(key), Some(&body));
        assert!((200..300).contains(&s), "seeding {method} {path}: {s} {b}");
        b
    };
    d.lever("api_calls", "sum");
    d.lever("peak", "max");
    d.lever("retired_lever", "sum");
    ok(
        "PUT",
        "/v1/plans/pro",
        ADMIN,
        json!({"quotas": [{"lever": "api_calls", "period": "month", "limit": 10000, "mode": "hard"}]}),
    );
    ok(
        "PUT",
        "/v1/contracts/ctr_42",
        ADMIN,
        json!({"customer": "cus_9", "plan": "pro", "timezone": "Europe/Berlin"}),
    );
    ok(
        "PUT",
        "/v1/contracts/ctr_ending",
        ADMIN,
        json!({"customer": "cus_9"}),
    );
    let b = ok(
        "POST",
        "/v1/events",
        INGEST,
        json!([
            {"id": "evt-1", "contract": "ctr_42", "lever": "api_calls", "value": 3, "bucket": "eu-west-1"},
            {"id": "evt-2", "contract": "ctr_42", "lever": "peak", "value": "7.5"},
        ]),
    );
    assert_eq!(b["accepted"], 2, "{b}");
    ok(
        "POST",
        "/v1/contracts/ctr_42/grants",
        ADMIN,
        json!({"id": "pack-1", "lever": "api_calls", "amount": 500, "expires_at": "2099-01-01T00:00:00Z"}),
    );
    ok(
        "POST",
        "/v1/contracts/ctr_42/adjustments",
        ADMIN,
        json!({"id": "adj-77", "lever": "api_calls", "time": "2026-10-31T12:00:00Z",
               "value": -250, "reason": "outage credit"}),
    );
}

/// Runs schemathesis with `args` in `dir`; returns (success, combined output).
fn run(bin: &Path, dir: &Path, name: &str, args: &[String]) -> (bool, String) {
    let out_path = dir.join(format!("{name}.out"));
    let out = std::fs::File::create(&out_path).unwrap();
    let mut child = Command::new(bin)
        .arg("run")
        .args(args)
        .current_dir(dir)
        .env(
            "SCHEMATHESIS_HOOKS",
            root().join("tests/schemathesis/hooks.py"),
        )
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
    let deadline = Instant::now() + Duration::from_secs(600);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break Some(s);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let text = std::fs::read_to_string(&out_path).unwrap_or_default();
    match status {
        Some(s) => (s.success(), format!("{s}\n{text}")),
        None => (false, format!("timed out after 600 s\n{text}")),
    }
}

#[test]
fn schemathesis_finds_no_server_error_or_schema_violation() {
    let bin = schemathesis();
    let d = Daemon::start();
    seed(&d);

    // The daemon's own copy when it serves one, else the file.
    let served = d.client.get(d.url("/openapi.json")).send().ok();
    let (location, serves_spec) = match served {
        Some(r) if r.status() == 200 => {
            let body: Value = r.json().expect("GET /openapi.json is JSON");
            assert_eq!(
                body,
                load_spec(),
                "GET /openapi.json differs from openapi/openapi.json"
            );
            (d.url("/openapi.json"), true)
        }
        _ => (spec_path().display().to_string(), false),
    };
    let examples = std::env::var("METERD_SCHEMATHESIS_EXAMPLES").unwrap_or_else(|_| "20".into());
    let common = |url: &str| -> Vec<String> {
        [
            location.as_str(),
            "--url",
            url,
            "--checks",
            "not_a_server_error,status_code_conformance,content_type_conformance,\
             response_headers_conformance,response_schema_conformance",
            "--phases",
            "examples,coverage,fuzzing",
            "--max-examples",
            &examples,
            "--seed",
            "20261123",
            "--no-shrink",
            "--workers",
            "1",
            "--request-timeout",
            "30",
            "--generation-database",
            "none",
            "--no-color",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };

    let work = tempfile::tempdir().unwrap();
    let started = Instant::now();
    // The API listener: everything but /metrics (which lives on the metrics listener).
    let mut api = common(&d.base);
    api.extend(
        [
            "-H",
            &format!("Authorization: Bearer {ADMIN}"),
            "--exclude-path",
            "/metrics",
            "--exclude-path",
            "/backup",
        ]
        .map(String::from),
    );
    if !serves_spec {
        api.extend(["--exclude-path", "/openapi.json"].map(String::from));
    }
    let (api_ok, api_out) = run(&bin, work.path(), "api", &api);
    // The metrics listener: /metrics, /backup (off in this daemon: 404), /healthz, /readyz.
    let mut metrics = common(&d.metrics);
    metrics
        .extend(["--include-path-regex", "^/(metrics|backup|healthz|readyz)$"].map(String::from));
    let (metrics_ok, metrics_out) = run(&bin, work.path(), "metrics", &metrics);
    println!(
        "schemathesis ({} examples per operation, {:.0?}, spec from {location})\n\
         === API listener\n{api_out}\n=== metrics listener\n{metrics_out}",
        examples,
        started.elapsed()
    );
    assert!(
        api_ok && metrics_ok,
        "schemathesis found problems (output above; `st replay` ids need the same daemon, so \
         reproduce with the printed curl commands). meterd stderr:\n{}",
        d.logs()
    );
}
