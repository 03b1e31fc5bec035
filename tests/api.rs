//! Black-box tests of the public API contract (SPEC 2.1, 5): lever and contract CRUD and
//! validation, list paging, contract end, persistence across a kill -9 restart, every
//! per-event ingest outcome, duplicates, read-after-write and the four aggregations over
//! minute/hour/day/none windows with `group_by=bucket`, and usage query errors.

mod common;

use std::collections::HashSet;

use chrono::{DateTime, SecondsFormat, Utc};
use common::{time_at, Daemon, ADMIN, INGEST, READ};
use serde_json::{json, Value};

const MINUTE: i64 = 60_000;
const HOUR: i64 = 3_600_000;
const DAY: i64 = 86_400_000;

fn now_ms() -> i64 {
    Utc::now().timestamp_millis()
}

/// RFC 3339 in UTC as the server prints it (milliseconds only when non-zero).
fn iso(ms: i64) -> String {
    DateTime::<Utc>::from_timestamp_millis(ms)
        .unwrap()
        .to_rfc3339_opts(SecondsFormat::AutoSi, true)
}

fn floor(t: i64, len: i64) -> i64 {
    t.div_euclid(len) * len
}

fn put(d: &Daemon, path: &str, body: Value) -> (u16, Value) {
    d.req("PUT", path, Some(ADMIN), Some(&body))
}

fn get(d: &Daemon, path: &str) -> (u16, Value) {
    d.req("GET", path, Some(READ), None)
}

/// Asserts an RFC 9457 problem with the given status and code.
#[track_caller]
fn assert_problem(resp: &(u16, Value), status: u16, code: &str) {
    let (s, b) = resp;
    assert_eq!(*s, status, "{b}");
    assert_eq!(b["code"], code, "{b}");
    assert_eq!(b["status"], status, "{b}");
    for f in ["type", "title", "detail"] {
        assert!(b[f].is_string(), "problem without `{f}`: {b}");
    }
}

/// Asserts an invalid_request problem whose detail names `field`.
#[track_caller]
fn assert_invalid_field(resp: &(u16, Value), field: &str) {
    assert_problem(resp, 400, "invalid_request");
    let detail = resp.1["detail"].as_str().unwrap();
    assert!(
        detail.contains(field),
        "detail does not name `{field}`: {detail}"
    );
}

fn ev(id: &str, contract: &str, lever: &str) -> Value {
    json!({"id": id, "contract": contract, "lever": lever})
}

/// Posts events and asserts (accepted, duplicates, rejected).
#[track_caller]
fn post_expect(d: &Daemon, body: Value, counts: (u64, u64, u64)) -> Value {
    let (s, b) = d.post_events(&body);
    assert_eq!(s, 200, "{b}");
    assert_eq!(
        (
            b["accepted"].as_u64().unwrap(),
            b["duplicates"].as_u64().unwrap(),
            b["rejected"].as_u64().unwrap()
        ),
        counts,
        "{b}"
    );
    assert_eq!(
        b["errors"].as_array().unwrap().len() as u64,
        counts.2,
        "{b}"
    );
    b
}

/// The single rejection of a one-event post.
#[track_caller]
fn reject_one(d: &Daemon, event: Value) -> Value {
    let b = post_expect(d, event, (0, 0, 1));
    b["errors"][0].clone()
}

/// Total of `lever` on `contract` over the last two hours (window=none).
fn total(d: &Daemon, contract: &str, lever: &str) -> Option<String> {
    let from = iso(floor(now_ms() - 2 * HOUR, MINUTE));
    let to = iso(floor(now_ms() + HOUR, MINUTE));
    let u = d.usage(
        contract,
        &format!("from={from}&to={to}&window=none&lever={lever}"),
    );
    let items = u["items"].as_array().unwrap();
    assert!(items.len() <= 1, "{u}");
    items
        .first()
        .map(|r| r["value"].as_str().unwrap().to_string())
}

fn ids(items: &Value) -> Vec<String> {
    items
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["id"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn levers_crud() {
    let d = Daemon::start();
    let (s, b) = put(
        &d,
        "/v1/levers/calls",
        json!({"aggregation": "sum", "unit": "requests", "description": "x"}),
    );
    assert_eq!(s, 201, "{b}");
    assert_eq!(b["id"], "calls");
    assert_eq!(b["aggregation"], "sum");
    assert_eq!(b["unit"], "requests");
    assert_eq!(b["status"], "active");
    let created = b["created_at"].as_str().expect("created_at").to_string();
    assert!(b["updated_at"].is_string());

    // Idempotent PUT.
    let (s, b) = put(
        &d,
        "/v1/levers/calls",
        json!({"aggregation": "sum", "unit": "requests", "description": "x"}),
    );
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["created_at"], created.as_str());

    // Replace: the whole definition is the new body.
    let (s, b) = put(
        &d,
        "/v1/levers/calls",
        json!({"aggregation": "sum", "unit": "calls"}),
    );
    assert_eq!(s, 200, "{b}");
    let (s, got) = get(&d, "/v1/levers/calls");
    assert_eq!(s, 200);
    assert_eq!(got["unit"], "calls");
    assert!(
        got.get("description").is_none() || got["description"].is_null(),
        "{got}"
    );
    assert_eq!(got["created_at"], created.as_str());
    // PUT of what GET returned is accepted (server fields are ignored).
    let (s, b) = put(&d, "/v1/levers/calls", got.clone());
    assert_eq!(s, 200, "{b}");

    // The aggregation is immutable.
    for agg in ["count", "max", "latest"] {
        assert_problem(
            &put(
                &d,
                "/v1/levers/calls",
                json!({"aggregation": agg, "unit": "calls"}),
            ),
            409,
            "conflict",
        );
    }
    assert_eq!(get(&d, "/v1/levers/calls").1["aggregation"], "sum");

    // Validation.
    assert_problem(
        &put(&d, "/v1/levers/bad%20name", json!({"aggregation": "sum"})),
        400,
        "invalid_request",
    );
    let long = "l".repeat(65);
    assert_problem(
        &put(
            &d,
            &format!("/v1/levers/{long}"),
            json!({"aggregation": "sum"}),
        ),
        400,
        "invalid_request",
    );
    let (s, b) = put(
        &d,
        &format!("/v1/levers/{}", "l".repeat(64)),
        json!({"aggregation": "sum"}),
    );
    assert_eq!(s, 201, "{b}");
    assert_problem(
        &put(&d, "/v1/levers/x", json!({"aggregation": "median"})),
        400,
        "invalid_request",
    );
    assert_problem(
        &put(&d, "/v1/levers/x", json!({"unit": "u"})),
        400,
        "invalid_request",
    );
    assert_problem(
        &put(
            &d,
            "/v1/levers/x",
            json!({"aggregation": "sum", "colour": "red"}),
        ),
        400,
        "invalid_request",
    );
    assert_invalid_field(
        &put(
            &d,
            "/v1/levers/x",
            json!({"aggregation": "sum", "unit": "u".repeat(65)}),
        ),
        "unit",
    );
    assert_invalid_field(
        &put(
            &d,
            "/v1/levers/x",
            json!({"aggregation": "sum", "value_property": "value"}),
        ),
        "value_property",
    );
    assert_problem(
        &d.req("PUT", "/v1/levers/x", Some(ADMIN), None),
        400,
        "malformed_body",
    );
    let r = d
        .client
        .put(d.url("/v1/levers/x"))
        .bearer_auth(ADMIN)
        .header("content-type", "application/json")
        .body("{\"aggregation\": ")
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);
    assert_eq!(r.json::<Value>().unwrap()["code"], "malformed_body");
    assert_problem(&get(&d, "/v1/levers/x"), 404, "not_found");

    // List.
    let (s, list) = get(&d, "/v1/levers");
    assert_eq!(s, 200, "{list}");
    assert!(ids(&list["items"]).contains(&"calls".to_string()), "{list}");
    assert!(list["next_cursor"].is_null());

    // Delete: 204, then 404; new events are refused; stored usage stays queryable.
    d.contract("ctr_1");
    let t = time_at(-60_000);
    post_expect(
        &d,
        json!({"id": "l1", "contract": "ctr_1", "lever": "calls", "value": 3, "time": t}),
        (1, 0, 0),
    );
    let (s, b) = d.req("DELETE", "/v1/levers/calls", Some(ADMIN), None);
    assert_eq!(s, 204, "{b}");
    assert_eq!(b, Value::Null, "204 has no body");
    assert_problem(&get(&d, "/v1/levers/calls"), 404, "not_found");
    assert_problem(
        &d.req("DELETE", "/v1/levers/calls", Some(ADMIN), None),
        404,
        "not_found",
    );
    assert!(!ids(&get(&d, "/v1/levers").1["items"]).contains(&"calls".to_string()));
    let e = reject_one(&d, ev("l2", "ctr_1", "calls"));
    assert_eq!(e["code"], "unknown_lever", "{e}");
    assert_eq!(e["id"], "l2");
    assert_eq!(e["index"], 0);
    assert_eq!(total(&d, "ctr_1", "calls").as_deref(), Some("3"));

    // Re-create: a different aggregation conflicts with the stored usage, the same is fine.
    assert_problem(
        &put(
            &d,
            "/v1/levers/calls",
            json!({"aggregation": "count", "unit": "calls"}),
        ),
        409,
        "conflict",
    );
    let (s, b) = put(
        &d,
        "/v1/levers/calls",
        json!({"aggregation": "sum", "unit": "calls"}),
    );
    assert_eq!(s, 201, "{b}");
    assert_eq!(b["status"], "active");
    post_expect(
        &d,
        json!({"id": "l3", "contract": "ctr_1", "lever": "calls", "value": 4}),
        (1, 0, 0),
    );
    assert_eq!(total(&d, "ctr_1", "calls").as_deref(), Some("7"));
}

#[test]
fn contracts_crud_and_validation() {
    let d = Daemon::start();
    d.lever("q", "sum");
    let (s, b) = put(&d, "/v1/contracts/ctr_1", json!({"customer": "cus_1"}));
    assert_eq!(s, 201, "{b}");
    assert_eq!(b["id"], "ctr_1");
    assert_eq!(b["customer"], "cus_1");
    assert_eq!(b["timezone"], "UTC");
    assert_eq!(b["status"], "active");
    let created = b["created_at"].as_str().expect("created_at").to_string();
    assert!(b["updated_at"].is_string());
    assert!(b.get("ends_at").is_none(), "{b}");

    let (s, b) = put(&d, "/v1/contracts/ctr_1", json!({"customer": "cus_1"}));
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["created_at"], created.as_str());
    // A contract's plan must exist.
    let (s, b) = put(
        &d,
        "/v1/contracts/ctr_1",
        json!({"customer": "cus_1", "plan": "pro"}),
    );
    assert_eq!(s, 400, "{b}");
    assert_eq!(put(&d, "/v1/plans/pro", json!({"quotas": []})).0, 201);
    let (s, b) = put(
        &d,
        "/v1/contracts/ctr_1",
        json!({"customer": "cus_1", "plan": "pro", "timezone": "Europe/Berlin"}),
    );
    assert_eq!(s, 200, "{b}");
    let (s, got) = get(&d, "/v1/contracts/ctr_1");
    assert_eq!(s, 200);
    assert_eq!(got["plan"], "pro");
    assert_eq!(got["timezone"], "Europe/Berlin");
    assert_eq!(got["created_at"], created.as_str());
    // PUT of what GET returned is accepted.
    assert_eq!(put(&d, "/v1/contracts/ctr_1", got.clone()).0, 200);
    assert_problem(&get(&d, "/v1/contracts/nope"), 404, "not_found");

    // Field validation.
    for tz in ["Mars/Olympus_Mons", "", "UTC+25", "europe/nowhere"] {
        assert_invalid_field(
            &put(
                &d,
                "/v1/contracts/ctr_tz",
                json!({"customer": "c", "timezone": tz}),
            ),
            "timezone",
        );
    }
    assert_eq!(
        put(
            &d,
            "/v1/contracts/ctr_tz",
            json!({"customer": "c", "timezone": "America/New_York"})
        )
        .0,
        201
    );
    assert_invalid_field(
        &put(
            &d,
            "/v1/contracts/ctr_x",
            json!({"customer": "c", "anchor": "2026-13-01"}),
        ),
        "anchor",
    );
    assert_invalid_field(
        &put(&d, "/v1/contracts/ctr_x", json!({"customer": ""})),
        "customer",
    );
    assert_invalid_field(
        &put(&d, "/v1/contracts/ctr_x", json!({"customer": "a/b"})),
        "customer",
    );
    assert_problem(
        &put(&d, "/v1/contracts/ctr_x", json!({"plan": "pro"})),
        400,
        "invalid_request",
    );
    assert_problem(
        &put(
            &d,
            "/v1/contracts/ctr_x",
            json!({"customer": "c", "colour": 1}),
        ),
        400,
        "invalid_request",
    );
    assert_problem(
        &put(&d, "/v1/contracts/ctr_x", json!("customer")),
        400,
        "invalid_request",
    );
    assert_problem(
        &d.req("PUT", "/v1/contracts/ctr_x", Some(ADMIN), None),
        400,
        "malformed_body",
    );
    let id128 = "c".repeat(128);
    assert_eq!(
        put(
            &d,
            &format!("/v1/contracts/{id128}"),
            json!({"customer": "c"})
        )
        .0,
        201
    );
    assert_eq!(
        get(&d, &format!("/v1/contracts/{id128}")).1["id"],
        id128.as_str()
    );
    let id129 = "c".repeat(129);
    assert_problem(
        &put(
            &d,
            &format!("/v1/contracts/{id129}"),
            json!({"customer": "c"}),
        ),
        400,
        "invalid_request",
    );
    assert_problem(
        &put(&d, "/v1/contracts/a%2Fb", json!({"customer": "c"})),
        400,
        "invalid_request",
    );
    assert_problem(&get(&d, "/v1/contracts/ctr_x"), 404, "not_found");

    // Parents must exist and never form a cycle.
    assert_invalid_field(
        &put(
            &d,
            "/v1/contracts/child",
            json!({"customer": "c", "parent": "nope"}),
        ),
        "parent",
    );
    assert_invalid_field(
        &put(
            &d,
            "/v1/contracts/ctr_1",
            json!({"customer": "cus_1", "parent": "ctr_1"}),
        ),
        "parent",
    );
    assert_eq!(
        put(
            &d,
            "/v1/contracts/child",
            json!({"customer": "c", "parent": "ctr_1"})
        )
        .0,
        201
    );
    assert_eq!(
        put(
            &d,
            "/v1/contracts/grandchild",
            json!({"customer": "c", "parent": "child"})
        )
        .0,
        201
    );
    assert_invalid_field(
        &put(
            &d,
            "/v1/contracts/ctr_1",
            json!({"customer": "cus_1", "parent": "grandchild"}),
        ),
        "parent",
    );
    assert_invalid_field(
        &put(
            &d,
            "/v1/contracts/ctr_1",
            json!({"customer": "cus_1", "parent": "child"}),
        ),
        "parent",
    );
    assert!(
        get(&d, "/v1/contracts/ctr_1").1.get("parent").is_none(),
        "a refused PUT changed the contract"
    );
    assert_eq!(get(&d, "/v1/contracts/grandchild").1["parent"], "child");

    // Quotas.
    let (s, b) = put(
        &d,
        "/v1/contracts/ctr_q",
        json!({"customer": "c", "quotas": [
            {"lever": "q", "period": "month", "limit": 10000, "mode": "hard"},
            {"lever": "q", "period": "day", "limit": "-1", "mode": "soft"},
            {"lever": "q", "period": "billing_period", "limit": "12.5"},
            {"lever": "q", "period": "week", "limit": 0},
            {"lever": "q", "period": "lifetime", "limit": "999999999999999999.999999999"}
        ], "thresholds": [80, 100]}),
    );
    assert_eq!(s, 201, "{b}");
    assert_eq!(b["quotas"].as_array().unwrap().len(), 5, "{b}");
    assert_eq!(b["quotas"][2]["mode"], "hard", "mode defaults to hard: {b}");
    // Semantic checks name `quotas.<field>`; shape errors come from the JSON decoder.
    let bad_quotas = [
        (
            json!({"lever": "nolever", "period": "month", "limit": 1}),
            "quotas.lever",
        ),
        (
            json!({"lever": "q", "period": "year", "limit": 1}),
            "quotas.period",
        ),
        (
            json!({"lever": "q", "period": "month", "limit": 1, "mode": "strict"}),
            "quotas.mode",
        ),
        (
            json!({"lever": "q", "period": "month", "limit": -2}),
            "quotas.limit",
        ),
        (
            json!({"lever": "q", "period": "month", "limit": "abc"}),
            "quotas.limit",
        ),
        (
            json!({"lever": "q", "period": "month", "limit": "0.0000000001"}),
            "quotas.limit",
        ),
        (
            json!({"lever": "q", "period": "month", "limit": "1000000000000000000"}),
            "quotas.limit",
        ),
        (json!({"lever": "q", "period": "month"}), "limit"),
        (
            json!({"lever": "q", "period": "month", "limit": 1, "extra": 1}),
            "extra",
        ),
    ];
    for (q, field) in bad_quotas {
        let r = put(
            &d,
            "/v1/contracts/ctr_bad",
            json!({"customer": "c", "quotas": [q]}),
        );
        assert_invalid_field(&r, field);
    }
    let r = put(
        &d,
        "/v1/contracts/ctr_bad",
        json!({"customer": "c", "quotas": [{"lever": "q", "period": "month", "limit": true}]}),
    );
    assert_problem(&r, 400, "invalid_request");
    for t in [json!([0]), json!([1001]), json!([-1]), json!(["80"])] {
        assert_problem(
            &put(
                &d,
                "/v1/contracts/ctr_bad",
                json!({"customer": "c", "thresholds": t}),
            ),
            400,
            "invalid_request",
        );
    }
    assert_problem(&get(&d, "/v1/contracts/ctr_bad"), 404, "not_found");
}

/// A cycle of parents is refused however long the chain it closes.
#[test]
fn parent_cycles_are_refused_at_any_depth() {
    let d = Daemon::start();
    assert_eq!(
        put(&d, "/v1/contracts/chain0", json!({"customer": "c"})).0,
        201
    );
    let mut leaf = "chain0".to_string();
    for i in 1..=24 {
        let id = format!("chain{i}");
        let (s, b) = put(
            &d,
            &format!("/v1/contracts/{id}"),
            json!({"customer": "c", "parent": leaf}),
        );
        if s == 400 {
            // A depth limit is an acceptable answer too; the chain stops here.
            assert_invalid_field(&(s, b), "parent");
            break;
        }
        assert_eq!(s, 201, "{b}");
        leaf = id;
    }
    let r = put(
        &d,
        "/v1/contracts/chain0",
        json!({"customer": "c", "parent": leaf}),
    );
    assert_invalid_field(&r, "parent");
    let root = get(&d, "/v1/contracts/chain0").1;
    assert!(
        root.get("parent").is_none(),
        "a parent cycle was stored: {root}"
    );
}

#[test]
fn contract_list_paging_and_filter() {
    let d = Daemon::start();
    let mut all = HashSet::new();
    for i in 0..25 {
        let id = format!("ctr_{i}");
        let cus = if i % 2 == 0 { "cus_a" } else { "cus_b" };
        assert_eq!(
            put(&d, &format!("/v1/contracts/{id}"), json!({"customer": cus})).0,
            201
        );
        all.insert(id);
    }
    let walk = |query: &str, limit: usize| -> (Vec<String>, Vec<usize>) {
        let mut seen = Vec::new();
        let mut sizes = Vec::new();
        let mut cursor: Option<String> = None;
        for _ in 0..100 {
            let mut path = format!("/v1/contracts?limit={limit}{query}");
            if let Some(c) = &cursor {
                path.push_str(&format!("&cursor={c}"));
            }
            let (s, b) = get(&d, &path);
            assert_eq!(s, 200, "{b}");
            let page = ids(&b["items"]);
            sizes.push(page.len());
            seen.extend(page);
            match &b["next_cursor"] {
                Value::Null => return (seen, sizes),
                Value::String(c) => cursor = Some(c.clone()),
                other => panic!("bad next_cursor {other}"),
            }
        }
        panic!("paging never ended");
    };
    let (seen, sizes) = walk("", 10);
    assert_eq!(sizes, vec![10, 10, 5]);
    assert_eq!(seen.len(), 25, "repeats: {seen:?}");
    assert_eq!(seen.iter().cloned().collect::<HashSet<_>>(), all);

    // A limit dividing the total exactly ends with next_cursor null, not an empty page.
    let (seen, sizes) = walk("", 5);
    assert_eq!(sizes, vec![5; 5]);
    assert_eq!(seen.iter().cloned().collect::<HashSet<_>>(), all);
    let (seen, _) = walk("", 1000);
    assert_eq!(seen.len(), 25);

    // Customer filter, paged.
    let (seen, sizes) = walk("&customer=cus_a", 5);
    assert_eq!(sizes, vec![5, 5, 3]);
    let want: HashSet<String> = (0..25)
        .filter(|i| i % 2 == 0)
        .map(|i| format!("ctr_{i}"))
        .collect();
    assert_eq!(seen.iter().cloned().collect::<HashSet<_>>(), want);
    assert_eq!(seen.len(), want.len());
    let (s, b) = get(&d, "/v1/contracts?customer=cus_b&limit=100");
    assert_eq!(s, 200);
    assert!(b["items"]
        .as_array()
        .unwrap()
        .iter()
        .all(|c| c["customer"] == "cus_b"));
    assert_eq!(b["items"].as_array().unwrap().len(), 12);
    let (s, b) = get(&d, "/v1/contracts?customer=nobody");
    assert_eq!(s, 200);
    assert_eq!(b["items"], json!([]));
    assert!(b["next_cursor"].is_null());

    // Query errors.
    for q in [
        "limit=0",
        "limit=1001",
        "limit=ten",
        "cursor=zz",
        "cursor=%FF",
        "limit=1&limit=2",
    ] {
        assert_problem(
            &get(&d, &format!("/v1/contracts?{q}")),
            400,
            "invalid_query",
        );
    }
}

#[test]
fn contract_end_refuses_later_events() {
    let d = Daemon::start();
    d.lever("calls", "sum");
    d.contract("past");
    d.contract("future");
    d.contract("now");
    let now = now_ms();

    // Ended in the past: the boundary instant itself is refused, 1 ms before is fine.
    let end = now - 5 * MINUTE;
    let (s, b) = d.req(
        "POST",
        "/v1/contracts/past/end",
        Some(ADMIN),
        Some(&json!({"ends_at": iso(end)})),
    );
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["status"], "ended");
    assert_eq!(b["ends_at"], iso(end).as_str());
    let mk =
        |id: &str, t: i64| json!({"id": id, "contract": "past", "lever": "calls", "time": iso(t)});
    let b = post_expect(
        &d,
        json!([
            mk("p1", end - 1),
            mk("p2", end),
            mk("p3", end + 1000),
            mk("p4", now - 10 * MINUTE)
        ]),
        (2, 0, 2),
    );
    assert_eq!(b["errors"][0]["code"], "contract_ended");
    assert_eq!(b["errors"][0]["index"], 1);
    assert_eq!(b["errors"][1]["code"], "contract_ended");
    assert_eq!(b["errors"][1]["index"], 2);
    assert_eq!(
        reject_one(&d, ev("p5", "past", "calls"))["code"],
        "contract_ended"
    );
    assert_eq!(total(&d, "past", "calls").as_deref(), Some("2"));
    assert_eq!(get(&d, "/v1/contracts/past").1["status"], "ended");

    // Replacing an ended contract's definition does not revive it.
    assert_eq!(put(&d, "/v1/plans/new", json!({"quotas": []})).0, 201);
    let (s, b) = put(
        &d,
        "/v1/contracts/past",
        json!({"customer": "cus_1", "plan": "new"}),
    );
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["status"], "ended", "{b}");
    assert_eq!(
        reject_one(&d, ev("p6", "past", "calls"))["code"],
        "contract_ended"
    );

    // Scheduled end: still active, events after it are refused.
    let end = now + 2 * MINUTE;
    let (s, b) = d.req(
        "POST",
        "/v1/contracts/future/end",
        Some(ADMIN),
        Some(&json!({"ends_at": iso(end)})),
    );
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["status"], "active", "{b}");
    let f = |id: &str, t: i64| json!({"id": id, "contract": "future", "lever": "calls", "time": iso(t)});
    let b = post_expect(
        &d,
        json!([
            f("f1", now),
            f("f2", end - 1),
            f("f3", end),
            f("f4", end + 60_000)
        ]),
        (2, 0, 2),
    );
    assert_eq!(b["errors"][0]["code"], "contract_ended");
    assert_eq!(b["errors"][1]["code"], "contract_ended");

    // Default ends_at is now (empty body or empty object).
    let (s, b) = d.req("POST", "/v1/contracts/now/end", Some(ADMIN), None);
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["status"], "ended");
    assert_eq!(
        reject_one(&d, ev("n1", "now", "calls"))["code"],
        "contract_ended"
    );
    assert_eq!(
        d.req(
            "POST",
            "/v1/contracts/now/end",
            Some(ADMIN),
            Some(&json!({}))
        )
        .0,
        200
    );

    // Errors.
    assert_problem(
        &d.req("POST", "/v1/contracts/nope/end", Some(ADMIN), None),
        404,
        "not_found",
    );
    assert_problem(
        &d.req(
            "POST",
            "/v1/contracts/future/end",
            Some(ADMIN),
            Some(&json!({"ends_at": "tomorrow"})),
        ),
        400,
        "invalid_request",
    );
    assert_problem(
        &d.req(
            "POST",
            "/v1/contracts/future/end",
            Some(ADMIN),
            Some(&json!({"when": "now"})),
        ),
        400,
        "invalid_request",
    );
    assert_eq!(
        get(&d, "/v1/contracts/future").1["ends_at"],
        iso(end).as_str()
    );
}

#[test]
fn definitions_and_usage_survive_restart() {
    let mut d = Daemon::start();
    d.lever("keep", "sum");
    d.lever("gone", "count");
    d.contract("c_keep");
    d.contract("c_ended");
    let (s, b) = put(
        &d,
        "/v1/contracts/c_child",
        json!({"customer": "cus_2", "parent": "c_keep", "timezone": "Europe/Berlin",
               "quotas": [{"lever": "keep", "period": "month", "limit": 100}]}),
    );
    assert_eq!(s, 201, "{b}");
    let ends_at = iso(now_ms() - MINUTE);
    assert_eq!(
        d.req(
            "POST",
            "/v1/contracts/c_ended/end",
            Some(ADMIN),
            Some(&json!({"ends_at": ends_at}))
        )
        .0,
        200
    );
    post_expect(
        &d,
        json!({"id": "p1", "contract": "c_keep", "lever": "keep", "value": "2.5"}),
        (1, 0, 0),
    );
    post_expect(&d, ev("p2", "c_keep", "gone"), (1, 0, 0));
    assert_eq!(d.req("DELETE", "/v1/levers/gone", Some(ADMIN), None).0, 204);
    let child_before = get(&d, "/v1/contracts/c_child").1;

    d.restart();

    assert_eq!(get(&d, "/v1/levers/keep").1["aggregation"], "sum");
    assert_problem(&get(&d, "/v1/levers/gone"), 404, "not_found");
    let levers = ids(&get(&d, "/v1/levers").1["items"]);
    assert!(
        levers.contains(&"keep".to_string()) && !levers.contains(&"gone".to_string()),
        "{levers:?}"
    );
    assert_eq!(get(&d, "/v1/contracts/c_child").1, child_before);
    let ended = get(&d, "/v1/contracts/c_ended").1;
    assert_eq!(ended["status"], "ended");
    assert_eq!(ended["ends_at"], ends_at.as_str());
    assert_eq!(ids(&get(&d, "/v1/contracts").1["items"]).len(), 3);

    assert_eq!(
        reject_one(&d, ev("p3", "c_keep", "gone"))["code"],
        "unknown_lever"
    );
    assert_eq!(
        reject_one(&d, ev("p4", "c_ended", "keep"))["code"],
        "contract_ended"
    );
    post_expect(
        &d,
        json!({"id": "p1", "contract": "c_keep", "lever": "keep", "value": 9}),
        (0, 1, 0),
    );
    assert_eq!(total(&d, "c_keep", "keep").as_deref(), Some("2.5"));
    assert_eq!(total(&d, "c_keep", "gone").as_deref(), Some("1"));
    // The deleted lever's aggregation is remembered.
    assert_problem(
        &put(&d, "/v1/levers/gone", json!({"aggregation": "sum"})),
        409,
        "conflict",
    );
    assert_eq!(
        put(&d, "/v1/levers/gone", json!({"aggregation": "count"})).0,
        201
    );
    post_expect(
        &d,
        json!({"id": "p5", "contract": "c_keep", "lever": "keep", "value": "0.5"}),
        (1, 0, 0),
    );
    assert_eq!(total(&d, "c_keep", "keep").as_deref(), Some("3"));
}

#[test]
fn ingest_shapes_and_rejection_codes() {
    let d = Daemon::start();
    d.lever("calls", "sum");
    d.contract("ctr");
    d.contract("ended");
    assert_eq!(
        d.req("POST", "/v1/contracts/ended/end", Some(ADMIN), None)
            .0,
        200
    );

    // Shapes: one object, an array, NDJSON (blank lines and CRLF tolerated).
    post_expect(
        &d,
        json!({"id": "s1", "contract": "ctr", "lever": "calls", "value": 1}),
        (1, 0, 0),
    );
    post_expect(
        &d,
        json!([
            ev("a1", "ctr", "calls"),
            ev("a2", "ctr", "calls"),
            ev("a3", "ctr", "calls")
        ]),
        (3, 0, 0),
    );
    let nd = "{\"id\":\"n1\",\"contract\":\"ctr\",\"lever\":\"calls\"}\n\n{\"id\":\"n2\",\"contract\":\"ctr\",\"lever\":\"calls\",\"value\":\"2\"}\r\n{\"id\":\"n3\"}\n";
    let (s, b) = d.raw(
        "/v1/events",
        INGEST,
        "application/x-ndjson",
        nd.as_bytes().to_vec(),
    );
    assert_eq!(s, 200, "{b}");
    assert_eq!(
        (b["accepted"].as_u64(), b["rejected"].as_u64()),
        (Some(2), Some(1)),
        "{b}"
    );
    assert_eq!(
        b["errors"][0]["index"], 2,
        "index counts events, not lines: {b}"
    );
    assert_eq!(b["errors"][0]["field"], "contract");
    assert_eq!(b["errors"][0]["id"], "n3");
    // A malformed NDJSON line fails the whole request: the good line before it is not kept.
    let nd = "{\"id\":\"n4\",\"contract\":\"ctr\",\"lever\":\"calls\"}\nnot json\n";
    assert_problem(
        &d.raw(
            "/v1/events",
            INGEST,
            "application/x-ndjson",
            nd.as_bytes().to_vec(),
        ),
        400,
        "malformed_body",
    );
    post_expect(&d, ev("n4", "ctr", "calls"), (1, 0, 0));
    assert_eq!(total(&d, "ctr", "calls").as_deref(), Some("8"));

    // invalid_event names its field; the id is reported when readable.
    let good = || json!({"id": "x", "contract": "ctr", "lever": "calls"});
    let with = |k: &str, v: Value| {
        let mut e = good();
        e[k] = v;
        e
    };
    let without = |k: &str| {
        let mut e = good();
        e.as_object_mut().unwrap().remove(k);
        e
    };
    let cases: Vec<(Value, &str, Option<&str>)> = vec![
        (without("id"), "id", None),
        (with("id", json!("")), "id", None),
        (with("id", json!(5)), "id", None),
        (with("id", json!("i".repeat(129))), "id", None),
        (with("id", json!("a\u{1}b")), "id", None),
        (without("contract"), "contract", Some("x")),
        (with("contract", json!(7)), "contract", Some("x")),
        (
            with("contract", json!("c".repeat(129))),
            "contract",
            Some("x"),
        ),
        (without("lever"), "lever", Some("x")),
        (with("lever", json!(["calls"])), "lever", Some("x")),
        (with("lever", json!("l".repeat(65))), "lever", Some("x")),
        (with("value", json!(-1)), "value", Some("x")),
        (with("value", json!("-0.5")), "value", Some("x")),
        (with("value", json!("abc")), "value", Some("x")),
        (with("value", json!(true)), "value", Some("x")),
        (with("value", json!({"v": 1})), "value", Some("x")),
        (with("value", json!("1e400")), "value", Some("x")),
        (with("time", json!("yesterday")), "time", Some("x")),
        (with("time", json!(1_700_000_000_000i64)), "time", Some("x")),
        (with("time", json!("2026-11-23")), "time", Some("x")),
        (with("bucket", json!("")), "bucket", Some("x")),
        (with("bucket", json!(3)), "bucket", Some("x")),
        (with("bucket", json!("b".repeat(65))), "bucket", Some("x")),
    ];
    for (event, field, id) in cases {
        let e = reject_one(&d, event.clone());
        assert_eq!(e["code"], "invalid_event", "{event} -> {e}");
        assert_eq!(e["field"], field, "{event} -> {e}");
        assert_eq!(e["index"], 0);
        assert!(e["message"].is_string(), "{e}");
        match id {
            Some(id) => assert_eq!(e["id"], id, "{event} -> {e}"),
            None => assert!(e.get("id").is_none() || e["id"].is_null(), "{event} -> {e}"),
        }
    }
    // Non-object elements are invalid events too.
    let b = post_expect(&d, json!([1, "x", null, [], true]), (0, 0, 5));
    for (i, e) in b["errors"].as_array().unwrap().iter().enumerate() {
        assert_eq!(e["code"], "invalid_event", "{e}");
        assert_eq!(e["index"], i, "{e}");
    }

    // Registry and time rejections.
    let t = |id: &str, ms: i64| json!({"id": id, "contract": "ctr", "lever": "calls", "time": time_at(ms)});
    let cases = [
        (ev("r1", "nope", "calls"), "unknown_contract"),
        (ev("r2", "ctr", "nope"), "unknown_lever"),
        (ev("r3", "ended", "calls"), "contract_ended"),
        (t("r4", -2 * HOUR), "too_late"),
        (t("r5", -HOUR - 60_000), "too_late"),
        (t("r6", 10 * MINUTE), "too_early"),
        (t("r7", 5 * MINUTE + 60_000), "too_early"),
    ];
    for (event, code) in cases {
        let e = reject_one(&d, event.clone());
        assert_eq!(e["code"], code, "{event} -> {e}");
        assert_eq!(e["id"], event["id"], "{e}");
        assert!(e["message"].as_str().is_some_and(|m| !m.is_empty()), "{e}");
    }
    // Edges that are accepted: just inside the lateness and the early limit.
    post_expect(
        &d,
        json!([t("ok1", -HOUR + 60_000), t("ok2", 5 * MINUTE - 60_000)]),
        (2, 0, 0),
    );

    // Mixed batch: outcomes per event, errors in input order, a repeated id is a duplicate.
    let b = post_expect(
        &d,
        json!([
            ev("m1", "ctr", "calls"),
            {"contract": "ctr", "lever": "calls"},
            ev("m2", "nope", "calls"),
            ev("m1", "ctr", "calls"),
            t("m3", 20 * MINUTE),
            ev("m4", "ctr", "calls")
        ]),
        (2, 1, 3),
    );
    let errs: Vec<(u64, &str)> = b["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["index"].as_u64().unwrap(), e["code"].as_str().unwrap()))
        .collect();
    assert_eq!(
        errs,
        vec![
            (1, "invalid_event"),
            (2, "unknown_contract"),
            (4, "too_early")
        ]
    );
    // Rejected ids were not consumed: they can be sent again once fixed.
    post_expect(&d, ev("m2", "ctr", "calls"), (1, 0, 0));
    post_expect(&d, ev("r4", "ctr", "calls"), (1, 0, 0));
    assert_eq!(total(&d, "ctr", "calls").as_deref(), Some("14"));
}

/// A repeated id whose first occurrence is rejected is not a duplicate of anything: the
/// valid occurrence must be counted (or at least never be reported as already counted).
#[test]
fn duplicate_of_a_rejected_event_is_not_lost() {
    let d = Daemon::start();
    d.lever("calls", "sum");
    d.contract("ctr");
    let cases = [
        (
            "x1",
            json!({"id": "x1", "contract": "nope", "lever": "calls"}),
        ),
        (
            "x2",
            json!({"id": "x2", "contract": "ctr", "lever": "nope"}),
        ),
        (
            "x3",
            json!({"id": "x3", "contract": "ctr", "lever": "calls", "time": time_at(-2 * HOUR)}),
        ),
    ];
    for (n, (id, bad)) in cases.into_iter().enumerate() {
        let good = json!({"id": id, "contract": "ctr", "lever": "calls"});
        let (s, b) = d.post_events(&json!([bad, good]));
        assert_eq!(s, 200, "{b}");
        assert_eq!(b["rejected"], 1, "{b}");
        let counted = total(&d, "ctr", "calls").unwrap_or_else(|| "0".into());
        assert_eq!(
            (
                b["accepted"].as_u64(),
                b["duplicates"].as_u64(),
                counted.as_str()
            ),
            (Some(1), Some(0), (n + 1).to_string().as_str()),
            "the valid event {id} after a rejected one with the same id: {b}"
        );
    }
}

#[test]
fn duplicates_change_nothing() {
    let d = Daemon::start();
    d.lever("calls", "sum");
    d.lever("peak", "max");
    d.contract("ctr");
    d.contract("other");
    let t = time_at(-MINUTE);
    post_expect(
        &d,
        json!({"id": "d1", "contract": "ctr", "lever": "calls", "value": 5, "time": t, "bucket": "eu"}),
        (1, 0, 0),
    );
    post_expect(
        &d,
        json!({"id": "d2", "contract": "ctr", "lever": "peak", "value": 5}),
        (1, 0, 0),
    );
    // Same id, different value / bucket / time / contract / lever: still a duplicate.
    for body in [
        json!({"id": "d1", "contract": "ctr", "lever": "calls", "value": 5, "time": t, "bucket": "eu"}),
        json!({"id": "d1", "contract": "ctr", "lever": "calls", "value": 100}),
        json!({"id": "d1", "contract": "ctr", "lever": "calls", "value": 5, "bucket": "us"}),
        json!({"id": "d1", "contract": "other", "lever": "calls", "value": 5}),
        json!({"id": "d1", "contract": "ctr", "lever": "peak", "value": 50}),
        json!({"id": "d2", "contract": "ctr", "lever": "peak", "value": 500}),
    ] {
        post_expect(&d, body, (0, 1, 0));
    }
    let b = post_expect(
        &d,
        json!([
            ev("d3", "ctr", "calls"),
            ev("d3", "ctr", "calls"),
            ev("d1", "ctr", "calls")
        ]),
        (1, 2, 0),
    );
    assert!(b["errors"].as_array().unwrap().is_empty());
    assert_eq!(total(&d, "ctr", "calls").as_deref(), Some("6"));
    assert_eq!(total(&d, "ctr", "peak").as_deref(), Some("5"));
    assert_eq!(total(&d, "other", "calls"), None);
    let from = iso(floor(now_ms() - 2 * HOUR, MINUTE));
    let u = d.usage(
        "ctr",
        &format!("from={from}&window=none&lever=calls&group_by=bucket"),
    );
    let mut rows: Vec<(Option<String>, String)> = u["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            let bucket = r.get("bucket").and_then(Value::as_str).map(str::to_string);
            (bucket, r["value"].as_str().unwrap().to_string())
        })
        .collect();
    rows.sort();
    assert_eq!(
        rows,
        vec![
            (None, "1".to_string()),
            (Some("eu".to_string()), "5".to_string())
        ],
        "{u}"
    );
}

#[test]
fn usage_reads_its_own_writes() {
    let d = Daemon::start();
    d.lever("calls", "sum");
    d.contract("ctr");
    let from = iso(floor(now_ms() - HOUR, MINUTE));
    let mut want: u64 = 0;
    for i in 1..=60u64 {
        post_expect(
            &d,
            json!({"id": format!("rw{i}"), "contract": "ctr", "lever": "calls", "value": i}),
            (1, 0, 0),
        );
        want += i;
        let u = d.usage("ctr", &format!("from={from}&window=none&lever=calls"));
        assert_eq!(
            u["items"][0]["value"],
            want.to_string(),
            "after event {i}: {u}"
        );
        if i % 10 == 0 {
            let u = d.usage("ctr", &format!("from={from}&window=minute"));
            let sum: u64 = u["items"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| r["value"].as_str().unwrap().parse::<u64>().unwrap())
                .sum();
            assert_eq!(sum, want, "minute rows after event {i}: {u}");
        }
        if i % 20 == 0 {
            // Let a flush (every 200 ms) move the deltas into the store between reads.
            std::thread::sleep(std::time::Duration::from_millis(250));
        }
    }
}

/// One expected usage row: (lever, start, end, bucket, value).
type Row = (String, String, String, Option<String>, String);

fn rows(u: &Value) -> Vec<Row> {
    let mut out: Vec<Row> = u["items"]
        .as_array()
        .unwrap_or_else(|| panic!("no items: {u}"))
        .iter()
        .map(|r| {
            assert!(r["final"].is_boolean(), "{r}");
            (
                r["lever"].as_str().unwrap().to_string(),
                r["start"].as_str().unwrap().to_string(),
                r["end"].as_str().unwrap().to_string(),
                r.get("bucket").and_then(Value::as_str).map(str::to_string),
                r["value"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    out.sort();
    out
}

fn row(lever: &str, start: i64, end: i64, bucket: Option<&str>, value: &str) -> Row {
    (
        lever.into(),
        iso(start),
        iso(end),
        bucket.map(str::to_string),
        value.into(),
    )
}

fn sorted(mut v: Vec<Row>) -> Vec<Row> {
    v.sort();
    v
}

#[test]
fn aggregations_over_windows() {
    let mut d = Daemon::start();
    for (l, agg) in [("s", "sum"), ("c", "count"), ("m", "max"), ("l", "latest")] {
        d.lever(l, agg);
    }
    d.contract("agg");
    // m0: a minute 30-40 minutes ago whose next 3 minutes stay inside one UTC hour.
    let mut m0 = floor(now_ms() - 30 * MINUTE, MINUTE);
    if m0 - floor(m0, HOUR) > 50 * MINUTE {
        m0 -= 10 * MINUTE;
    }
    let h0 = floor(m0, HOUR);
    let d0 = floor(m0, DAY);
    let at = |s: i64| iso(m0 + s * 1000);
    let e = |id: &str, lever: &str, secs: i64, value: Value, bucket: Option<&str>| {
        let mut v =
            json!({"id": id, "contract": "agg", "lever": lever, "time": at(secs), "value": value});
        if let Some(b) = bucket {
            v["bucket"] = json!(b);
        }
        v
    };
    // sum: minute m0 = 1.5 (eu) + 2.25 (us); m0+1 = 0.000000001 (no bucket); m0+2 = 10 (eu).
    post_expect(
        &d,
        json!([
            e("s1", "s", 10, json!(1.5), Some("eu")),
            e("s2", "s", 50, json!("2.25"), Some("us")),
            e("s3", "s", 70, json!("0.000000001"), None),
            e("s4", "s", 125, json!(10), Some("eu")),
        ]),
        (4, 0, 0),
    );
    // count ignores values: 2, 1, 1.
    post_expect(
        &d,
        json!([
            e("c1", "c", 10, json!(100), Some("eu")),
            e("c2", "c", 50, json!("0.5"), Some("eu")),
            e("c3", "c", 70, json!(7), None),
            e("c4", "c", 125, Value::Null, Some("us")),
        ]),
        (4, 0, 0),
    );
    // max: 7.5, 2, 7.49.
    post_expect(
        &d,
        json!([
            e("m1", "m", 10, json!(3), None),
            e("m2", "m", 50, json!("7.5"), None),
            e("m3", "m", 70, json!(2), None),
            e("m4", "m", 125, json!("7.49"), None),
        ]),
        (4, 0, 0),
    );
    // latest: by event time, not arrival; a tie on time goes to the later arrival.
    // minute m0 -> 5 (t=50 beats the later-arriving t=10), m0+1 -> 8, m0+2 -> 6 (tie).
    for (id, secs, v) in [
        ("l1", 50, 5),
        ("l2", 10, 9),
        ("l3", 125, 4),
        ("l4", 70, 8),
        ("l5", 125, 6),
    ] {
        post_expect(&d, e(id, "l", secs, json!(v), None), (1, 0, 0));
    }

    let expected_minutes = sorted(vec![
        row("s", m0, m0 + MINUTE, None, "3.75"),
        row("s", m0 + MINUTE, m0 + 2 * MINUTE, None, "0.000000001"),
        row("s", m0 + 2 * MINUTE, m0 + 3 * MINUTE, None, "10"),
        row("c", m0, m0 + MINUTE, None, "2"),
        row("c", m0 + MINUTE, m0 + 2 * MINUTE, None, "1"),
        row("c", m0 + 2 * MINUTE, m0 + 3 * MINUTE, None, "1"),
        row("m", m0, m0 + MINUTE, None, "7.5"),
        row("m", m0 + MINUTE, m0 + 2 * MINUTE, None, "2"),
        row("m", m0 + 2 * MINUTE, m0 + 3 * MINUTE, None, "7.49"),
        row("l", m0, m0 + MINUTE, None, "5"),
        row("l", m0 + MINUTE, m0 + 2 * MINUTE, None, "8"),
        row("l", m0 + 2 * MINUTE, m0 + 3 * MINUTE, None, "6"),
    ]);
    let totals = |start: i64, end: i64| {
        sorted(vec![
            row("s", start, end, None, "13.750000001"),
            row("c", start, end, None, "4"),
            row("m", start, end, None, "7.5"),
            row("l", start, end, None, "6"),
        ])
    };
    let check = |d: &Daemon| {
        let q = |query: String| rows(&d.usage("agg", &query));
        let (hf, ht) = (iso(h0), iso(h0 + HOUR));
        let u = d.usage("agg", &format!("from={hf}&to={ht}&window=minute"));
        assert_eq!(u["contract"], "agg");
        assert_eq!(u["window"], "minute");
        assert_eq!(rows(&u), expected_minutes, "minute windows");
        assert_eq!(
            q(format!("from={hf}&to={ht}&window=hour")),
            totals(h0, h0 + HOUR),
            "hour"
        );
        assert_eq!(
            q(format!("from={}&to={}&window=day", iso(d0), iso(d0 + DAY))),
            totals(d0, d0 + DAY),
            "day"
        );
        // window=none over ranges read from minute, hour and day rows.
        assert_eq!(
            q(format!("from={hf}&to={ht}&window=none")),
            totals(h0, h0 + HOUR),
            "none, one hour"
        );
        let (f, t) = (d0 - DAY, d0 + DAY);
        assert_eq!(
            q(format!("from={}&to={}&window=none", iso(f), iso(t))),
            totals(f, t),
            "none, days"
        );
        let (f, t) = (h0 - 2 * HOUR, h0 + 2 * HOUR);
        assert_eq!(
            q(format!("from={}&to={}", iso(f), iso(t))),
            totals(f, t),
            "none is the default"
        );
        let (f, t) = (m0, m0 + 2 * MINUTE);
        assert_eq!(
            q(format!("from={}&to={}&window=none", iso(f), iso(t))),
            sorted(vec![
                row("s", f, t, None, "3.750000001"),
                row("c", f, t, None, "3"),
                row("m", f, t, None, "7.5"),
                row("l", f, t, None, "8"),
            ]),
            "none, first two minutes"
        );
        let (f, t) = (m0 + MINUTE, m0 + 3 * MINUTE);
        assert_eq!(
            q(format!("from={}&to={}&window=none", iso(f), iso(t))),
            sorted(vec![
                row("s", f, t, None, "10.000000001"),
                row("c", f, t, None, "2"),
                row("m", f, t, None, "7.49"),
                row("l", f, t, None, "6"),
            ]),
            "none, last two minutes"
        );
        // Empty range: no rows.
        let (f, t) = (m0 + 3 * MINUTE, m0 + 10 * MINUTE);
        assert_eq!(
            q(format!("from={}&to={}&window=minute", iso(f), iso(t))),
            vec![]
        );
        // lever filter.
        assert_eq!(
            q(format!("from={hf}&to={ht}&window=hour&lever=m")),
            vec![row("m", h0, h0 + HOUR, None, "7.5")]
        );
        // group_by=bucket.
        assert_eq!(
            q(format!(
                "from={hf}&to={ht}&window=minute&lever=s&group_by=bucket"
            )),
            sorted(vec![
                row("s", m0, m0 + MINUTE, Some("eu"), "1.5"),
                row("s", m0, m0 + MINUTE, Some("us"), "2.25"),
                row("s", m0 + MINUTE, m0 + 2 * MINUTE, None, "0.000000001"),
                row("s", m0 + 2 * MINUTE, m0 + 3 * MINUTE, Some("eu"), "10"),
            ]),
            "sum by bucket"
        );
        assert_eq!(
            q(format!(
                "from={hf}&to={ht}&window=none&lever=c&group_by=bucket"
            )),
            sorted(vec![
                row("c", h0, h0 + HOUR, None, "1"),
                row("c", h0, h0 + HOUR, Some("eu"), "2"),
                row("c", h0, h0 + HOUR, Some("us"), "1"),
            ]),
            "count by bucket"
        );
        assert_eq!(
            q(format!(
                "from={}&to={}&window=day&lever=s&group_by=bucket",
                iso(d0),
                iso(d0 + DAY)
            )),
            sorted(vec![
                row("s", d0, d0 + DAY, None, "0.000000001"),
                row("s", d0, d0 + DAY, Some("eu"), "11.5"),
                row("s", d0, d0 + DAY, Some("us"), "2.25"),
            ]),
            "sum by bucket per day"
        );
    };
    // Straight from memory, after flushes, and after a kill -9 restart.
    check(&d);
    std::thread::sleep(std::time::Duration::from_millis(600));
    check(&d);
    d.restart();
    check(&d);
    // Later arrivals still merge with stored rows.
    post_expect(&d, e("l6", "l", 126, json!(1), None), (1, 0, 0));
    post_expect(&d, e("m5", "m", 130, json!("7.6"), None), (1, 0, 0));
    post_expect(&d, e("s5", "s", 130, json!("0.25"), Some("us")), (1, 0, 0));
    let q = |lever: &str| {
        rows(&d.usage(
            "agg",
            &format!("from={}&to={}&lever={lever}", iso(h0), iso(h0 + HOUR)),
        ))
    };
    assert_eq!(q("l"), vec![row("l", h0, h0 + HOUR, None, "1")]);
    assert_eq!(q("m"), vec![row("m", h0, h0 + HOUR, None, "7.6")]);
    assert_eq!(q("s"), vec![row("s", h0, h0 + HOUR, None, "14.000000001")]);
}

/// `latest` breaks ties on event time by arrival order, also across a restart.
#[test]
fn latest_tie_goes_to_later_arrival_across_restart() {
    let mut d = Daemon::start();
    d.lever("l", "latest");
    d.contract("ctr");
    let t = iso(floor(now_ms() - 10 * MINUTE, MINUTE) + 30_000);
    let from = iso(floor(now_ms() - HOUR, HOUR));
    let value =
        |d: &Daemon| d.usage("ctr", &format!("from={from}&lever=l"))["items"][0]["value"].clone();
    post_expect(
        &d,
        json!({"id": "t1", "contract": "ctr", "lever": "l", "time": t, "value": 4}),
        (1, 0, 0),
    );
    post_expect(
        &d,
        json!({"id": "t2", "contract": "ctr", "lever": "l", "time": t, "value": 6}),
        (1, 0, 0),
    );
    assert_eq!(value(&d), "6");
    // Wait for the flush (the journal records are then deleted), restart, send a tie.
    std::thread::sleep(std::time::Duration::from_millis(600));
    d.restart();
    assert_eq!(value(&d), "6");
    post_expect(
        &d,
        json!({"id": "t3", "contract": "ctr", "lever": "l", "time": t, "value": 1}),
        (1, 0, 0),
    );
    assert_eq!(
        value(&d),
        "1",
        "a later arrival with the same time must win after a restart"
    );
}

#[test]
fn usage_query_errors() {
    let d = Daemon::start();
    d.lever("calls", "sum");
    d.contract("ctr");
    let from = iso(floor(now_ms() - HOUR, MINUTE));
    let to = iso(floor(now_ms(), MINUTE));
    assert_eq!(
        get(&d, &format!("/v1/contracts/ctr/usage?from={from}")).0,
        200
    );
    let u = |q: &str| get(&d, &format!("/v1/contracts/ctr/usage?{q}"));
    for q in [
        String::new(),
        "window=hour".to_string(),
        format!("to={to}"),
        "from=yesterday".to_string(),
        "from=2026-11-23".to_string(),
        format!("from={from}&to=later"),
        format!("from={to}&to={from}"),
        format!("from={from}&to={from}"),
        format!("from={from}&window=week"),
        format!("from={from}&window=MINUTE"),
        format!("from={from}&window="),
        format!("from={from}&group_by=lever"),
        format!("from={from}&colour=red"),
        format!("from={from}&from={from}"),
        format!(
            "from={}&to={to}&window=minute",
            iso(floor(now_ms(), MINUTE) - 40 * DAY)
        ),
    ] {
        assert_problem(&u(&q), 400, "invalid_query");
    }
    assert_problem(
        &get(&d, &format!("/v1/contracts/nope/usage?from={from}")),
        404,
        "not_found",
    );
    assert_problem(&u(&format!("from={from}&lever=nope")), 404, "not_found");
}

/// Plans: create, idempotent replace, validation, listing, persistence.
#[test]
fn plans_crud_and_validation() {
    let mut d = Daemon::start();
    d.lever("calls", "sum");
    let quota = json!({"lever": "calls", "period": "month", "limit": 1000, "mode": "hard"});
    let (s, b) = put(&d, "/v1/plans/pro", json!({"quotas": [quota]}));
    assert_eq!(s, 201, "{b}");
    assert_eq!(b["id"], "pro");
    assert_eq!(b["quotas"][0]["limit"], "1000");
    let created = b["created_at"].clone();
    // The same body again, and the body GET returned, are idempotent.
    let (s, b) = put(&d, "/v1/plans/pro", json!({"quotas": [quota]}));
    assert_eq!(s, 200, "{b}");
    let (_, got) = get(&d, "/v1/plans/pro");
    assert_eq!(put(&d, "/v1/plans/pro", got.clone()).0, 200);
    assert_eq!(got["created_at"], created);
    // Validation names the field.
    for bad in [
        json!({"quotas": [{"lever": "nope", "period": "month", "limit": 1}]}),
        json!({"quotas": [{"lever": "calls", "period": "year", "limit": 1}]}),
        json!({"quotas": [{"lever": "calls", "period": "day", "limit": "-2"}]}),
        json!({"quotas": [{"lever": "calls", "period": "day", "limit": 1, "mode": "firm"}]}),
        json!({"quotas": [quota, quota]}),
        json!({"thresholds": [0]}),
        json!({"quotas": [], "bogus": 1}),
    ] {
        let (s, b) = put(&d, "/v1/plans/bad", bad.clone());
        assert_eq!(s, 400, "{bad} -> {b}");
    }
    assert_eq!(get(&d, "/v1/plans/bad").0, 404);
    assert_eq!(put(&d, "/v1/plans/basic", json!({})).0, 201);
    let (s, list) = get(&d, "/v1/plans");
    assert_eq!(s, 200);
    let ids: Vec<&str> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["basic", "pro"]);
    // Plans survive a restart, and contracts can reference them.
    d.restart();
    assert_eq!(get(&d, "/v1/plans/pro").1["quotas"][0]["limit"], "1000");
    let (s, b) = put(
        &d,
        "/v1/contracts/c1",
        json!({"customer": "x", "plan": "pro"}),
    );
    assert_eq!(s, 201, "{b}");
    // Another tenant does not see them.
    let (s, _) = d.req("GET", "/v1/plans/pro", Some(common::OTHER_READ), None);
    assert_eq!(s, 404);
}
