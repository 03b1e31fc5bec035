//! Black-box tests of CloudEvents ingest, `POST /api/v1/events` (SPEC 2.3), with real
//! clients nobody here wrote: the CNCF `cloudevents` Python SDK (structured mode, and batch
//! mode built from the SDK's per-event serialization since the SDK has no batch encoder)
//! and the `openmeter` Python SDK's three ingest calls, both pinned in
//! `tests/python/requirements.txt` and installed from PyPI into a virtual environment at
//! `$HOME/.cache/meterd/pyenv-sdk` by this test itself (once, then reused; rebuilt when the
//! requirements or the interpreter change; see `tests/cloudevents_support/`). The driver
//! scripts in `tests/python/` send to a real meterd; the tests then check the usage that
//! meterd reports: exact sums by bucket, `(source, id)` deduplication, partial acceptance
//! with `rejected_events`, values at nested paths and as decimal strings, and hard quotas.
//! Direct requests cover content types, whole-request errors, per-event attribute errors
//! and roles.
//!
//! Without PyPI (or `python3 -m venv`) the SDK tests fail with a message saying so; they
//! never skip. `METERD_TEST_PYTHON` names another base interpreter than `python3`.
//!
//! Binary content mode is tested in `tests/cloudevents_binary.rs`.

mod cloudevents_support;
mod common;

use cloudevents_support::*;
use common::{time_at, Daemon, ADMIN, INGEST, OTHER_INGEST, READ};
use serde_json::{json, Value};

// ---------------------------------------------------------------------------------------
// Tests with the real SDKs.

/// The CloudEvents SDK in structured mode (one request per event) and batch mode: every
/// event counts, by bucket, exactly; re-sending the same (source, id) changes nothing; the
/// same ids from another source are other events; a batch with one bad event gives 400
/// `rejected_events` while its other events count.
#[test]
fn cloudevents_sdk_structured_and_batch() {
    let d = Daemon::start();
    tokens_setup(&d, "ctr-ce");
    let send_ce = |args: &[&str]| send(&d, Sdk::CloudEvents, INGEST, "ctr-ce", "tokens", args);

    let structured = [
        "--mode",
        "structured",
        "--id-prefix",
        "s",
        "--values",
        "3,2.5,10,0.25",
        "--buckets",
        "gpt-a,gpt-b,gpt-a,",
    ];
    let s1 = send_ce(&structured);
    assert_eq!(s1["sdk"], "cloudevents");
    assert_all_204(&s1, "application/cloudevents+json", 4);
    // The SDK stamps `time` itself (microseconds, "+00:00") in this run.
    let batch = [
        "--mode",
        "batch",
        "--id-prefix",
        "b",
        "--values",
        "1,2,4,8,16",
        "--buckets",
        "gpt-b,gpt-c",
        "--sdk-time",
    ];
    let b1 = send_ce(&batch);
    assert_all_204(&b1, "application/cloudevents-batch+json", 1);

    let want = by_bucket(&[
        (None, "0.25"),
        (Some("gpt-a"), "13"),
        (Some("gpt-b"), "23.5"),
        (Some("gpt-c"), "10"),
    ]);
    assert_eq!(sent_totals(&[&s1, &b1], &[]), want);
    assert_eq!(usage(&d, "ctr-ce", "tokens"), want);

    // Re-sent with the same (source, id): success, nothing counted twice.
    assert_all_204(&send_ce(&structured), "application/cloudevents+json", 4);
    assert_all_204(&send_ce(&batch), "application/cloudevents-batch+json", 1);
    assert_eq!(usage(&d, "ctr-ce", "tokens"), want);

    // The same ids from another source are other events.
    let mut other = structured.to_vec();
    other.extend(["--source", "another-producer"]);
    let s2 = send_ce(&other);
    assert_all_204(&s2, "application/cloudevents+json", 4);
    let want = sent_totals(&[&s1, &b1, &s2], &[]);
    assert_eq!(
        want,
        by_bucket(&[
            (None, "0.5"),
            (Some("gpt-a"), "26"),
            (Some("gpt-b"), "26"),
            (Some("gpt-c"), "10"),
        ])
    );
    assert_eq!(usage(&d, "ctr-ce", "tokens"), want);

    // A batch whose event 2 has no value: 400 rejected_events, the other three count.
    let bad = send_ce(&[
        "--mode",
        "batch",
        "--id-prefix",
        "bad",
        "--values",
        "5,6,7,1.5",
        "--buckets",
        "gpt-z",
        "--omit-value",
        "2",
    ]);
    let r = &requests(&bad)[0];
    assert_eq!(r["status"], 400, "{bad}");
    assert_eq!(
        r["response_content_type"], "application/problem+json",
        "{bad}"
    );
    let errors = assert_rejected(&r["body"], 3, 0, 1);
    assert_error(&errors[0], 2, Some("bad-2"), "invalid_event", Some("data"));
    let mut want = want;
    want.insert(Some("gpt-z".into()), "12.5".into());
    assert_eq!(sent_totals(&[&s1, &b1, &s2, &bad], &[]), want);
    assert_eq!(usage(&d, "ctr-ce", "tokens"), want);

    // Sent again: the three accepted ones are duplicates, the bad one is still rejected.
    let again = send_ce(&[
        "--mode",
        "batch",
        "--id-prefix",
        "bad",
        "--values",
        "5,6,7,1.5",
        "--buckets",
        "gpt-z",
        "--omit-value",
        "2",
    ]);
    let errors = assert_rejected(&requests(&again)[0]["body"], 0, 3, 1);
    assert_error(&errors[0], 2, Some("bad-2"), "invalid_event", Some("data"));
    assert_eq!(usage(&d, "ctr-ce", "tokens"), want);
}

/// The OpenMeter SDK's three ingest calls (`ingest_event`, `ingest_events`,
/// `ingest_events_json`) against meterd: exact usage by bucket, deduplication on re-send,
/// and a batch with a bad event surfacing as the SDK's HttpResponseError with meterd's
/// problem body while the good events count.
#[test]
fn openmeter_sdk_ingest() {
    let d = Daemon::start();
    tokens_setup(&d, "ctr-om");
    let send_om = |args: &[&str]| send(&d, Sdk::OpenMeter, INGEST, "ctr-om", "tokens", args);

    let single = [
        "--mode",
        "single",
        "--id-prefix",
        "one",
        "--values",
        "7,0.5,100",
        "--buckets",
        "gpt-a,,gpt-b",
    ];
    let batch = [
        "--mode",
        "batch",
        "--id-prefix",
        "many",
        "--values",
        "1,2,3,4,5,6",
        "--buckets",
        "gpt-a,gpt-b,gpt-c",
    ];
    let as_json = [
        "--mode",
        "json",
        "--id-prefix",
        "js",
        "--values",
        "0.125,0.875",
        "--buckets",
        "gpt-c",
    ];
    let s = send_om(&single);
    assert_eq!(s["sdk"], "openmeter");
    assert_all_204(&s, "application/cloudevents+json", 3);
    let b = send_om(&batch);
    assert_all_204(&b, "application/cloudevents-batch+json", 1);
    let j = send_om(&as_json);
    assert_all_204(&j, "application/json", 1);

    let want = by_bucket(&[
        (None, "0.5"),
        (Some("gpt-a"), "12"),
        (Some("gpt-b"), "107"),
        (Some("gpt-c"), "10"),
    ]);
    assert_eq!(sent_totals(&[&s, &b, &j], &[]), want);
    assert_eq!(usage(&d, "ctr-om", "tokens"), want);

    // The SDK re-sending the same events: 204, usage unchanged.
    assert_all_204(&send_om(&single), "application/cloudevents+json", 3);
    assert_all_204(&send_om(&batch), "application/cloudevents-batch+json", 1);
    assert_all_204(&send_om(&as_json), "application/json", 1);
    assert_eq!(usage(&d, "ctr-om", "tokens"), want);

    // Bad events in the SDK's batch and JSON calls.
    for (mode, ct) in [
        ("batch", "application/cloudevents-batch+json"),
        ("json", "application/json"),
    ] {
        let prefix = format!("bad-{mode}");
        let bad = send_om(&[
            "--mode",
            mode,
            "--id-prefix",
            &prefix,
            "--values",
            "2,3,4",
            "--buckets",
            "gpt-z",
            "--omit-value",
            "0",
        ]);
        let r = &requests(&bad)[0];
        assert_eq!(r["status"], 400, "{bad}");
        assert_eq!(r["content_type"], ct, "{bad}");
        assert_eq!(r["sdk_error"], "HttpResponseError", "{bad}");
        let errors = assert_rejected(&r["body"], 2, 0, 1);
        let id = format!("{prefix}-0");
        assert_error(&errors[0], 0, Some(&id), "invalid_event", Some("data"));
    }
    let mut want = want;
    want.insert(Some("gpt-z".into()), "14".into());
    assert_eq!(usage(&d, "ctr-om", "tokens"), want);
}

/// Values read from a nested path of `data` and sent as decimal strings are counted
/// exactly (nine fractional digits, eighteen integer digits), by both SDKs.
#[test]
fn sdk_nested_and_string_decimal_values_are_exact() {
    let d = Daemon::start();
    lever(&d, "nested", "sum", "$.usage.tokens.total", "$.meta.region");
    contract(&d, "ctr-dec", json!({"customer": "cus_dec"}));
    let values = "0.000000001,123456789.123456789,1.1,7,99999999999999999";
    let shared = [
        "--values",
        values,
        "--value-as",
        "string",
        "--value-path",
        "usage.tokens.total",
        "--bucket-path",
        "meta.region",
        "--buckets",
        "eu-west-1,us-east-1",
    ];
    let run = |sdk: Sdk, mode: &str, prefix: &str| {
        let mut args = vec!["--mode", mode, "--id-prefix", prefix];
        args.extend(shared);
        send(&d, sdk, INGEST, "ctr-dec", "nested", &args)
    };
    let a = run(Sdk::CloudEvents, "batch", "ce");
    assert_all_204(&a, "application/cloudevents-batch+json", 1);
    let want_one = by_bucket(&[
        (Some("eu-west-1"), "100000000000000000.100000001"),
        (Some("us-east-1"), "123456796.123456789"),
    ]);
    assert_eq!(sent_totals(&[&a], &[]), want_one);
    assert_eq!(usage(&d, "ctr-dec", "nested"), want_one);

    let b = run(Sdk::OpenMeter, "single", "om");
    assert_all_204(&b, "application/cloudevents+json", 5);
    let want_two = by_bucket(&[
        (Some("eu-west-1"), "200000000000000000.200000002"),
        (Some("us-east-1"), "246913592.246913578"),
    ]);
    assert_eq!(sent_totals(&[&a, &b], &[]), want_two);
    assert_eq!(usage(&d, "ctr-dec", "nested"), want_two);
}

/// Hard quotas apply to CloudEvents: in an OpenMeter SDK batch the event that would pass
/// the limit is rejected with `quota_exceeded` while the ones that fit (before and after
/// it) count; once at the limit a CloudEvents SDK event is refused; re-sending the
/// accepted events at the limit gives duplicates, not quota rejections.
#[test]
fn hard_quotas_apply_to_cloudevents() {
    let d = Daemon::start();
    quota_setup(&d, "ctr-q");
    let args = [
        "--mode",
        "batch",
        "--id-prefix",
        "q",
        "--values",
        "4,5,2,1",
        "--buckets",
        "gpt-a",
    ];
    let b = send(&d, Sdk::OpenMeter, INGEST, "ctr-q", "tokens", &args);
    let r = &requests(&b)[0];
    assert_eq!(r["status"], 400, "{b}");
    let errors = assert_rejected(&r["body"], 3, 0, 1);
    assert_error(&errors[0], 2, SOME_ID, "quota_exceeded", None);
    let want = by_bucket(&[(Some("gpt-a"), "10")]);
    assert_eq!(sent_totals(&[&b], &["q-2"]), want);
    assert_eq!(usage(&d, "ctr-q", "tokens"), want);

    let c = send(
        &d,
        Sdk::CloudEvents,
        INGEST,
        "ctr-q",
        "tokens",
        &[
            "--mode",
            "structured",
            "--id-prefix",
            "more",
            "--values",
            "0.000000001",
            "--value-as",
            "string",
        ],
    );
    let r = &requests(&c)[0];
    assert_eq!(r["status"], 400, "{c}");
    let errors = assert_rejected(&r["body"], 0, 0, 1);
    assert_error(&errors[0], 0, SOME_ID, "quota_exceeded", None);
    assert_eq!(usage(&d, "ctr-q", "tokens"), want);

    let again = send(&d, Sdk::OpenMeter, INGEST, "ctr-q", "tokens", &args);
    let errors = assert_rejected(&requests(&again)[0]["body"], 0, 3, 1);
    assert_error(&errors[0], 2, SOME_ID, "quota_exceeded", None);
    assert_eq!(usage(&d, "ctr-q", "tokens"), want);

    assert_month_used_up(&d, "ctr-q");
}

// ---------------------------------------------------------------------------------------
// Direct requests.

/// The three accepted media types (parameters allowed), 415 for any other, 400
/// `malformed_body` for a batch type without an array or a body that is not JSON, and
/// roles: ingest and admin keys may send, a read key gets 403, no key 401. Nothing from a
/// refused request is counted.
#[test]
fn content_types_roles_and_whole_request_errors() {
    let d = Daemon::start();
    tokens_setup(&d, "ctr-d");
    let one = |id: &str, v: i64| ce(id, "ctr-d", json!(v), "m");

    assert_204(&post_json(&d, "application/cloudevents+json", &one("a", 1)));
    assert_204(&post_json(
        &d,
        "application/cloudevents+json; charset=utf-8",
        &one("b", 2),
    ));
    assert_204(&post_json(&d, "application/json", &one("c", 4)));
    assert_204(&post_json(
        &d,
        "application/json",
        &json!([one("d", 8), one("e", 16)]),
    ));
    assert_204(&post_json(
        &d,
        "application/cloudevents-batch+json",
        &json!([one("f", 32), one("g", 64)]),
    ));
    assert_204(&post_json(
        &d,
        "Application/CloudEvents-Batch+JSON; charset=UTF-8",
        &json!([one("h", 128)]),
    ));
    let want = by_bucket(&[(Some("m"), "255")]);
    assert_eq!(usage(&d, "ctr-d", "tokens"), want);

    for ct in ["text/plain", "application/x-ndjson", "application/xml"] {
        let r = post_json(&d, ct, &one("x415", 1000));
        assert_problem(&r, 415, "unsupported_media_type");
    }
    // A batch media type needs an array.
    for body in [
        serde_json::to_vec(&one("x1", 1000)).unwrap(),
        b"  \n {\"specversion\": \"1.0\"}".to_vec(),
        b"\"[not an array]\"".to_vec(),
    ] {
        let r = post_ce(
            &d,
            Some(INGEST),
            "application/cloudevents-batch+json",
            &body,
        );
        assert_problem(&r, 400, "malformed_body");
    }
    for (ct, body) in [
        (
            "application/cloudevents+json",
            &b"{\"specversion\": \"1.0\", "[..],
        ),
        ("application/json", &b"[{\"id\": \"x\"},"[..]),
        ("application/cloudevents-batch+json", &b"[1, 2"[..]),
        ("application/json", &b"not json"[..]),
    ] {
        let r = post_ce(&d, Some(INGEST), ct, body);
        assert_problem(&r, 400, "malformed_body");
    }

    // Roles.
    let body = serde_json::to_vec(&one("by-admin", 256)).unwrap();
    assert_204(&post_ce(
        &d,
        Some(ADMIN),
        "application/cloudevents+json",
        &body,
    ));
    let body = serde_json::to_vec(&one("by-read", 1000)).unwrap();
    let r = post_ce(&d, Some(READ), "application/cloudevents+json", &body);
    assert_problem(&r, 403, "forbidden");
    let r = post_ce(&d, None, "application/cloudevents+json", &body);
    assert_problem(&r, 401, "unauthorized");
    let r = post_ce(
        &d,
        Some("no-such-key"),
        "application/cloudevents+json",
        &body,
    );
    assert_problem(&r, 401, "unauthorized");
    // Another tenant's key cannot reach this tenant's contract.
    let r = post_ce(
        &d,
        Some(OTHER_INGEST),
        "application/cloudevents+json",
        &body,
    );
    assert_eq!(r.0, 400, "{}", r.2);
    let errors = assert_rejected(&r.2, 0, 0, 1);
    let code = errors[0]["code"].as_str().unwrap();
    assert!(
        code == "unknown_lever" || code == "unknown_contract",
        "{}",
        r.2
    );

    assert_eq!(
        usage(&d, "ctr-d", "tokens"),
        by_bucket(&[(Some("m"), "511")])
    );
}

/// Every required attribute missing or wrong is a per-event `invalid_event` naming the
/// field (with the event's id once it is readable); unknown levers and contracts get
/// their own codes; the valid events of the same request count.
#[test]
fn bad_attributes_are_rejected_per_event() {
    let d = Daemon::start();
    tokens_setup(&d, "ctr-v");
    let good = |id: &str, v: i64| ce(id, "ctr-v", json!(v), "m");
    let without = |id: &str, field: &str| {
        let mut e = good(id, 1000);
        e.as_object_mut().unwrap().remove(field);
        e
    };
    let with = |id: &str, field: &str, v: Value| {
        let mut e = good(id, 1000);
        e[field] = v;
        e
    };
    let batch = json!([
        good("ok-1", 1),
        without("v1", "specversion"),
        with("v2", "specversion", json!("0.3")),
        with("v3", "specversion", json!(1.0)),
        without("", "id"),
        with("", "id", json!("")),
        without("v6", "source"),
        with("v7", "source", json!(17)),
        without("v8", "subject"),
        without("v9", "type"),
        with("v10", "time", json!("yesterday")),
        without("v11", "data"),
        with("v12", "data", json!({"tokens": "many", "model": "m"})),
        with("v13", "data", json!({"tokens": -5, "model": "m"})),
        with("v14", "type", json!("no_such_lever")),
        with("v15", "subject", json!("no-such-contract")),
        json!(42),
        good("ok-2", 2),
        with(
            "v18",
            "data",
            json!({"tokens": 1, "model": {"nested": "object"}})
        ),
    ]);
    let r = post_json(&d, "application/cloudevents-batch+json", &batch);
    assert_eq!(r.0, 400, "{}", r.2);
    assert!(r.1.starts_with("application/problem+json"), "{}", r.1);
    let errors = assert_rejected(&r.2, 2, 0, 17);
    let expect: [(u64, Option<&str>, &str, Option<&str>); 17] = [
        (1, Some("v1"), "invalid_event", Some("specversion")),
        (2, Some("v2"), "invalid_event", Some("specversion")),
        (3, Some("v3"), "invalid_event", Some("specversion")),
        (4, None, "invalid_event", Some("id")),
        (5, None, "invalid_event", Some("id")),
        (6, Some("v6"), "invalid_event", Some("source")),
        (7, Some("v7"), "invalid_event", Some("source")),
        (8, Some("v8"), "invalid_event", Some("subject")),
        (9, Some("v9"), "invalid_event", Some("type")),
        (10, Some("v10"), "invalid_event", Some("time")),
        (11, Some("v11"), "invalid_event", Some("data")),
        (12, Some("v12"), "invalid_event", Some("data")),
        (13, Some("v13"), "invalid_event", Some("data")),
        (14, SOME_ID, "unknown_lever", None),
        (15, SOME_ID, "unknown_contract", None),
        (16, None, "invalid_event", None),
        (18, Some("v18"), "invalid_event", Some("data")),
    ];
    for (e, (index, id, code, field)) in errors.iter().zip(expect) {
        assert_error(e, index, id, code, field);
    }
    assert_eq!(usage(&d, "ctr-v", "tokens"), by_bucket(&[(Some("m"), "3")]));

    // A single event with a missing attribute: 400 with the same per-event shape.
    let r = post_json(
        &d,
        "application/cloudevents+json",
        &without("single", "subject"),
    );
    assert_eq!(r.0, 400, "{}", r.2);
    let errors = assert_rejected(&r.2, 0, 0, 1);
    assert_error(
        &errors[0],
        0,
        Some("single"),
        "invalid_event",
        Some("subject"),
    );
}

/// The idempotency key is the (source, id) pair, unambiguously: sources and ids that
/// concatenate alike are different events, long ones still deduplicate, a re-sent event
/// with another body is a duplicate, and native ids never collide with CloudEvents ones.
#[test]
fn idempotency_is_by_source_and_id() {
    let d = Daemon::start();
    tokens_setup(&d, "ctr-i");
    let ev = |source: &str, id: &str, v: i64| {
        let mut e = ce(id, "ctr-i", json!(v), "m");
        e["source"] = json!(source);
        e
    };
    let long_source = "s".repeat(256);
    let long_id = "i".repeat(128);
    let batch = json!([
        ev("a:b", "c", 1),
        ev("a", "b:c", 2),
        ev("a:b:c", "", 1000), // empty id: rejected
        ev(&long_source, &long_id, 4),
        ev(&long_source, &format!("{}j", "i".repeat(127)), 8),
        ev("a", "b:c", 1000), // repeat inside the request
    ]);
    let r = post_json(&d, "application/cloudevents-batch+json", &batch);
    let errors = assert_rejected(&r.2, 4, 1, 1);
    assert_error(&errors[0], 2, None, "invalid_event", Some("id"));
    assert_eq!(
        usage(&d, "ctr-i", "tokens"),
        by_bucket(&[(Some("m"), "15")])
    );

    // Re-sent with other values: all duplicates.
    let r = post_json(
        &d,
        "application/cloudevents-batch+json",
        &json!([
            ev("a:b", "c", 100),
            ev("a", "b:c", 100),
            ev(&long_source, &long_id, 100)
        ]),
    );
    assert_204(&r);
    assert_eq!(
        usage(&d, "ctr-i", "tokens"),
        by_bucket(&[(Some("m"), "15")])
    );

    // A native event whose id equals a CloudEvent's id is a different event.
    let (s, b) = d.post_events(&json!({
        "id": "c", "contract": "ctr-i", "lever": "tokens", "value": 16, "bucket": "m"
    }));
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["accepted"], 1, "{b}");
    assert_eq!(
        usage(&d, "ctr-i", "tokens"),
        by_bucket(&[(Some("m"), "31")])
    );
}

/// Each per-event error names the event by the CloudEvent `id` its sender gave, whatever
/// the rejection: the same for `invalid_event` (decided while reading the event) as for
/// the codes decided later (`unknown_lever`, `unknown_contract`, `too_late`, `too_early`,
/// `quota_exceeded`), never by meterd's internal idempotency key.
#[test]
fn rejection_ids_are_the_cloudevent_ids() {
    let d = Daemon::start();
    lever(&d, "tokens", "sum", "$.tokens", "$.model");
    contract(
        &d,
        "ctr-e",
        json!({"customer": "x", "quotas": [
            {"lever": "tokens", "period": "month", "limit": 10, "mode": "hard"}
        ]}),
    );
    let ev = |id: &str, v: i64| ce(id, "ctr-e", json!(v), "m");
    let mut late = ev("late", 1);
    late["time"] = json!(time_at(-3 * 3_600_000));
    let mut early = ev("early", 1);
    early["time"] = json!(time_at(3_600_000));
    let mut no_lever = ev("no-lever", 1);
    no_lever["type"] = json!("no_such_lever");
    let mut no_contract = ev("no-contract", 1);
    no_contract["subject"] = json!("no-such-contract");
    let mut bad = ev("bad", 1);
    bad["data"] = json!({"model": "m"});
    let r = post_json(
        &d,
        "application/cloudevents-batch+json",
        &json!([
            ev("fits", 10),
            ev("over", 1),
            no_lever,
            no_contract,
            late,
            early,
            bad
        ]),
    );
    assert_eq!(r.0, 400, "{}", r.2);
    let errors = assert_rejected(&r.2, 1, 0, 6);
    let got: Vec<(u64, String, String)> = errors
        .iter()
        .map(|e| {
            (
                e["index"].as_u64().unwrap(),
                e["code"].as_str().unwrap().to_string(),
                e["id"].as_str().unwrap_or("<none>").to_string(),
            )
        })
        .collect();
    let want: Vec<(u64, String, String)> = [
        (1, "quota_exceeded", "over"),
        (2, "unknown_lever", "no-lever"),
        (3, "unknown_contract", "no-contract"),
        (4, "too_late", "late"),
        (5, "too_early", "early"),
        (6, "invalid_event", "bad"),
    ]
    .iter()
    .map(|(i, c, id)| (*i, c.to_string(), id.to_string()))
    .collect();
    assert_eq!(
        got, want,
        "per-event errors must carry the CloudEvent id the client sent: {}",
        r.2
    );
}

/// A `count` lever ignores `data` (an event without it counts 1); the bucket still comes
/// from `bucket_property`, and a lever without one records no bucket.
#[test]
fn count_levers_ignore_the_value() {
    let d = Daemon::start();
    lever(&d, "calls", "count", "$.value", "$.route");
    contract(&d, "ctr-c", json!({"customer": "cus_c"}));
    let ev = |id: &str, data: Option<Value>| {
        let mut e = json!({
            "specversion": "1.0", "id": id, "source": "svc", "type": "calls",
            "subject": "ctr-c"
        });
        if let Some(data) = data {
            e["data"] = data;
        }
        e
    };
    let r = post_json(
        &d,
        "application/json",
        &json!([
            ev("1", None),
            ev("2", Some(json!({"route": "/a", "value": 50}))),
            ev("3", Some(json!({"route": "/a"}))),
            ev("4", Some(json!({"route": 7}))),
        ]),
    );
    assert_204(&r);
    assert_eq!(
        usage(&d, "ctr-c", "calls"),
        by_bucket(&[(None, "1"), (Some("/a"), "2"), (Some("7"), "1")])
    );
}

/// Values are exact decimals "given as a JSON number or a decimal string" (SPEC 1): a
/// JSON number in `data` with more significant digits than a binary double holds must
/// be counted exactly, as on the native path.
#[test]
fn json_number_values_in_data_are_exact() {
    let d = Daemon::start();
    lever(&d, "nested", "sum", "$.usage.tokens.total", "$.meta.region");
    contract(&d, "ctr-n", json!({"customer": "cus_n"}));
    // Raw text so that no client-side float ever touches the numbers.
    let body = format!(
        r#"[
          {{"specversion":"1.0","id":"n1","source":"svc","type":"nested","subject":"ctr-n",
            "time":"{t}","data":{{"usage":{{"tokens":{{"total":123456789.123456789}}}},"meta":{{"region":"eu"}}}}}},
          {{"specversion":"1.0","id":"n2","source":"svc","type":"nested","subject":"ctr-n",
            "time":"{t}","data":{{"usage":{{"tokens":{{"total":0.000000002}}}},"meta":{{"region":"eu"}}}}}},
          {{"specversion":"1.0","id":"n3","source":"svc","type":"nested","subject":"ctr-n",
            "time":"{t}","data":{{"usage":{{"tokens":{{"total":99999999999999999}}}},"meta":{{"region":"us"}}}}}}
        ]"#,
        t = time_at(0)
    );
    let r = post_ce(
        &d,
        Some(INGEST),
        "application/cloudevents-batch+json",
        body.as_bytes(),
    );
    assert_204(&r);
    // The native path with the same number, for comparison.
    let (s, b) = d.post_events(&json!({
        "id": "native", "contract": "ctr-n", "lever": "nested", "bucket": "native",
        "value": 1
    }));
    assert_eq!(s, 200, "{b}");
    let native = r#"{"id":"native-2","contract":"ctr-n","lever":"nested","bucket":"native",
                     "value":123456789.123456789}"#;
    let (s, b) = d.raw(
        "/v1/events",
        INGEST,
        "application/json",
        native.as_bytes().to_vec(),
    );
    assert_eq!(s, 200, "{b}");
    assert_eq!(
        usage(&d, "ctr-n", "nested"),
        by_bucket(&[
            (Some("eu"), "123456789.123456791"),
            (Some("native"), "123456790.123456789"),
            (Some("us"), "99999999999999999"),
        ]),
        "a JSON number in CloudEvents `data` lost digits (the native path keeps them)"
    );
}
