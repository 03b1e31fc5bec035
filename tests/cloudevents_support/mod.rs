//! Shared by the CloudEvents test crates (`tests/cloudevents.rs`, structured and batch
//! mode; `tests/cloudevents_binary.rs`, binary content mode): the real third-party clients
//! they drive and the checks they make.
//!
//! - The CNCF `cloudevents` and the `openmeter` Python SDKs, pinned in
//!   `tests/python/requirements.txt`, installed from PyPI into a virtual environment at
//!   `$HOME/.cache/meterd/pyenv-sdk` (once, then reused; rebuilt when the requirements or
//!   the interpreter change). `METERD_TEST_PYTHON` names another base interpreter than
//!   `python3`.
//! - The CNCF `cloudevents` JavaScript SDK, pinned in `tests/js/package.json` and
//!   `tests/js/package-lock.json`, installed from the npm registry with `npm ci` into
//!   `$HOME/.cache/meterd/node-sdk` ([`node`]).
//!
//! Installs are fingerprinted and done under a lock across test processes ([`DirLock`]).
//! Without the registries the SDK tests fail with a message saying so; they never skip.
#![allow(dead_code)]

pub mod node;

use std::collections::BTreeMap;
use std::process::Command;

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{json, Value};

use crate::common::{time_at, Daemon, ADMIN, INGEST};

// The SDK virtual environment lives in `common::pyenv` (shared with other tests).
pub use crate::common::pyenv::*;

// ---------------------------------------------------------------------------------------
// Driving the SDK scripts.

#[derive(Clone, Copy, Debug)]
pub enum Sdk {
    /// `send_cloudevents_sdk.py`: modes `structured`, `batch`, `binary`.
    CloudEvents,
    /// `send_openmeter_sdk.py`: modes `single`, `batch`, `json`.
    OpenMeter,
    /// `tests/js/send_cloudevents_js.js` (the JavaScript SDK): modes `emitter`, `binary`,
    /// `structured`.
    JavaScript,
}

/// Runs a driver script against `d` and returns its JSON summary: the events it sent
/// (`id`, `source`, `subject`, `type`, `value`, `bucket`) and per request the `status`,
/// the `content_type` sent and the response `body`.
pub fn send(d: &Daemon, sdk: Sdk, key: &str, contract: &str, lever: &str, args: &[&str]) -> Value {
    let (script, mut c) = match sdk {
        Sdk::CloudEvents | Sdk::OpenMeter => {
            let script = match sdk {
                Sdk::CloudEvents => "send_cloudevents_sdk.py",
                _ => "send_openmeter_sdk.py",
            };
            let mut c = clean(Command::new(sdk_python()));
            c.arg(python_dir().join(script));
            (script, c)
        }
        Sdk::JavaScript => {
            let script = "send_cloudevents_js.js";
            (script, node::command(&node::js_dir().join(script)))
        }
    };
    c.args(["--url", &d.base, "--key", key])
        .args(["--contract", contract, "--lever", lever])
        .args(args);
    let out = c.output().expect("run the SDK script");
    assert!(
        out.status.success(),
        "{script} {args:?} failed ({}):\nstdout:\n{}\nstderr:\n{}",
        out.status,
        tail(&out.stdout, 4000),
        tail(&out.stderr, 8000)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .unwrap_or_else(|| panic!("{script} printed no summary:\n{stdout}"));
    let v: Value = serde_json::from_str(line).expect("summary JSON");
    assert_eq!(
        v["events"].as_array().map(Vec::len),
        Some(args_count(args)),
        "{v}"
    );
    v
}

pub fn args_count(args: &[&str]) -> usize {
    let i = args.iter().position(|a| *a == "--values").unwrap();
    args[i + 1].split(',').count()
}

pub fn requests(summary: &Value) -> &Vec<Value> {
    summary["requests"].as_array().expect("requests")
}

/// Asserts every request of a run got 204 with no body, sent with `content_type`.
#[track_caller]
pub fn assert_all_204(summary: &Value, content_type: &str, n_requests: usize) {
    let reqs = requests(summary);
    assert_eq!(reqs.len(), n_requests, "{summary}");
    for r in reqs {
        assert_eq!(r["status"], 204, "{summary}");
        assert_eq!(r["content_type"], content_type, "{summary}");
        assert!(r["body"].is_null(), "a 204 with a body: {summary}");
    }
}

/// Asserts a `rejected_events` problem with these counts; returns its errors.
#[track_caller]
pub fn assert_rejected(body: &Value, accepted: u64, duplicates: u64, rejected: u64) -> Vec<Value> {
    assert_eq!(body["code"], "rejected_events", "{body}");
    assert_eq!(body["status"], 400, "{body}");
    for f in ["type", "title", "detail"] {
        assert!(body[f].is_string(), "problem without `{f}`: {body}");
    }
    assert_eq!(
        (
            body["accepted"].as_u64(),
            body["duplicates"].as_u64(),
            body["rejected"].as_u64()
        ),
        (Some(accepted), Some(duplicates), Some(rejected)),
        "{body}"
    );
    let errors = body["errors"].as_array().expect("errors").clone();
    assert_eq!(errors.len() as u64, rejected, "{body}");
    errors
}

/// For [`assert_error`]: the event has an id, but which text it is goes unchecked. Used
/// for rejections decided after parsing (`unknown_*`, `quota_exceeded`), whose `id` is
/// checked by `rejection_ids_are_the_cloudevent_ids` alone, so that a wrong id there fails
/// that one test rather than every test.
pub const SOME_ID: Option<&str> = Some("\u{0}some id");

/// Asserts one per-event error: index, id, code and (for `invalid_event`) field.
#[track_caller]
pub fn assert_error(e: &Value, index: u64, id: Option<&str>, code: &str, field: Option<&str>) {
    assert_eq!(e["index"].as_u64(), Some(index), "{e}");
    if id == SOME_ID {
        assert!(e["id"].as_str().is_some_and(|i| !i.is_empty()), "{e}");
    } else {
        assert_eq!(e["id"].as_str(), id, "{e}");
    }
    assert_eq!(e["code"], code, "{e}");
    if let Some(f) = field {
        assert_eq!(e["field"], f, "{e}");
    }
    assert!(e["message"].as_str().is_some_and(|m| !m.is_empty()), "{e}");
}

// ---------------------------------------------------------------------------------------
// Exact decimals (meterd's scale: 9 fractional digits) and usage.

pub fn dec(s: &str) -> i128 {
    let (int, frac) = s.split_once('.').unwrap_or((s, ""));
    assert!(frac.len() <= 9, "{s}");
    let int: i128 = int.parse().unwrap_or_else(|_| panic!("decimal {s:?}"));
    let frac: i128 = format!("{frac:0<9}").parse().unwrap();
    int * 1_000_000_000 + frac
}

/// Canonical text, as meterd prints amounts (no trailing fractional zeros).
pub fn dec_text(v: i128) -> String {
    let (int, frac) = (v / 1_000_000_000, v % 1_000_000_000);
    if frac == 0 {
        return int.to_string();
    }
    let f = format!("{frac:09}");
    format!("{int}.{}", f.trim_end_matches('0'))
}

pub type ByBucket = BTreeMap<Option<String>, String>;

/// What the events of SDK runs add up to, by bucket (events without a value excluded;
/// `skip` lists ids meterd is expected to have rejected).
pub fn sent_totals(summaries: &[&Value], skip: &[&str]) -> ByBucket {
    let mut sums: BTreeMap<Option<String>, i128> = BTreeMap::new();
    for s in summaries {
        for e in s["events"].as_array().unwrap() {
            let Some(v) = e["value"].as_str() else {
                continue;
            };
            if skip.contains(&e["id"].as_str().unwrap()) {
                continue;
            }
            let b = e["bucket"].as_str().map(str::to_string);
            *sums.entry(b).or_default() += dec(v);
        }
    }
    sums.into_iter().map(|(b, v)| (b, dec_text(v))).collect()
}

pub fn by_bucket(pairs: &[(Option<&str>, &str)]) -> ByBucket {
    pairs
        .iter()
        .map(|(b, v)| (b.map(str::to_string), v.to_string()))
        .collect()
}

pub fn iso(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// Usage of one lever of a contract over the last two hours (and the next ten minutes),
/// one total per bucket, as reported by meterd with the read key.
pub fn usage(d: &Daemon, contract: &str, lever: &str) -> ByBucket {
    let now = Utc::now().timestamp();
    let from = DateTime::from_timestamp((now - 7200) / 60 * 60, 0).unwrap();
    let to = DateTime::from_timestamp((now + 600) / 60 * 60, 0).unwrap();
    let u = d.usage(
        contract,
        &format!(
            "lever={lever}&from={}&to={}&window=none&group_by=bucket",
            iso(from),
            iso(to)
        ),
    );
    let mut out = ByBucket::new();
    for row in u["items"].as_array().expect("items") {
        assert_eq!(row["lever"], lever, "{u}");
        let b = row
            .get("bucket")
            .and_then(Value::as_str)
            .map(str::to_string);
        let v = row["value"].as_str().expect("value as a decimal string");
        assert!(out.insert(b, v.to_string()).is_none(), "two rows: {u}");
    }
    out
}

// ---------------------------------------------------------------------------------------
// Setup and direct requests.

/// Creates a lever with CloudEvents paths.
pub fn lever(
    d: &Daemon,
    name: &str,
    aggregation: &str,
    value_property: &str,
    bucket_property: &str,
) {
    let (s, b) = d.req(
        "PUT",
        &format!("/v1/levers/{name}"),
        Some(ADMIN),
        Some(&json!({
            "aggregation": aggregation,
            "unit": "t",
            "value_property": value_property,
            "bucket_property": bucket_property
        })),
    );
    assert!(s == 200 || s == 201, "{s} {b}");
}

pub fn contract(d: &Daemon, id: &str, body: Value) {
    let (s, b) = d.req(
        "PUT",
        &format!("/v1/contracts/{id}"),
        Some(ADMIN),
        Some(&body),
    );
    assert!(s == 200 || s == 201, "{s} {b}");
}

/// Posts a raw CloudEvents body; returns (status, response content type, JSON body).
pub fn post_ce(
    d: &Daemon,
    key: Option<&str>,
    content_type: &str,
    body: &[u8],
) -> (u16, String, Value) {
    let mut rb = d
        .client
        .post(d.url("/api/v1/events"))
        .header("content-type", content_type)
        .body(body.to_vec());
    if let Some(k) = key {
        rb = rb.bearer_auth(k);
    }
    answer(rb)
}

/// Sends a request; returns (status, response content type, JSON body or `null`).
pub fn answer(rb: reqwest::blocking::RequestBuilder) -> (u16, String, Value) {
    let r = rb.send().expect("request");
    let status = r.status().as_u16();
    let ct = r
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let text = r.text().unwrap_or_default();
    let v = if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or(Value::String(text))
    };
    (status, ct, v)
}

/// A `tokens` lever and `contract` with a hard monthly quota of 10 tokens.
pub fn quota_setup(d: &Daemon, contract_id: &str) {
    lever(d, "tokens", "sum", "$.tokens", "$.model");
    contract(
        d,
        contract_id,
        json!({"customer": "x", "quotas": [
            {"lever": "tokens", "period": "month", "limit": 10, "mode": "hard"}
        ]}),
    );
}

/// Checks that `contract`'s monthly `tokens` quota of 10 is used up, exactly.
pub fn assert_month_used_up(d: &Daemon, contract: &str) {
    let (s, bal) = d.req(
        "GET",
        &format!("/v1/contracts/{contract}/balance"),
        Some(crate::common::READ),
        None,
    );
    assert_eq!(s, 200, "{bal}");
    let month = bal["levers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["lever"] == "tokens" && l["period"] == "month")
        .unwrap_or_else(|| panic!("{bal}"));
    assert_eq!(month["usage"], "10", "{bal}");
    assert_eq!(month["remaining"], "0", "{bal}");
}

pub fn post_json(d: &Daemon, content_type: &str, body: &Value) -> (u16, String, Value) {
    post_ce(
        d,
        Some(INGEST),
        content_type,
        &serde_json::to_vec(body).unwrap(),
    )
}

/// A valid CloudEvent for the `tokens` lever.
pub fn ce(id: &str, subject: &str, tokens: Value, model: &str) -> Value {
    json!({
        "specversion": "1.0",
        "id": id,
        "source": "direct-tests",
        "type": "tokens",
        "subject": subject,
        "time": time_at(0),
        "data": {"tokens": tokens, "model": model}
    })
}

#[track_caller]
pub fn assert_problem(resp: &(u16, String, Value), status: u16, code: &str) {
    let (s, ct, b) = resp;
    assert_eq!(*s, status, "{b}");
    assert_eq!(b["code"], code, "{b}");
    assert_eq!(b["status"], status, "{b}");
    assert!(ct.starts_with("application/problem+json"), "{ct}: {b}");
}

#[track_caller]
pub fn assert_204(resp: &(u16, String, Value)) {
    assert_eq!(resp.0, 204, "{}", resp.2);
    assert!(resp.2.is_null(), "a 204 with a body: {}", resp.2);
}

pub fn tokens_setup(d: &Daemon, contract_id: &str) {
    lever(d, "tokens", "sum", "$.tokens", "$.model");
    contract(d, contract_id, json!({"customer": "cus_ce"}));
}
