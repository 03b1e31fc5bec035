//! CloudEvents bodies (`POST /api/v1/events`, SPEC 2.3): one structured-mode event or a
//! batch array. The input is the raw request body; the tenant has a lever of each
//! aggregation, with default and nested `value_property` / `bucket_property` paths.
//!
//! Invariants: no panic; an accepted event has a bounded `ce:` idempotency key derived
//! from its `(source, id)`, keeps its own id as the shown id, satisfies the field
//! contracts, has a value exactly for non-`count` levers (none for unknown levers);
//! a refused one names a known field. `lookup` is also run with each event's `subject`
//! as the path, so arbitrary paths meet arbitrary data.

#![no_main]

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use meterd::event::cloudevents::{lookup, parse_cloudevent};
use meterd::event::{split_body, BodyFormat};
use meterd::registry::{Aggregation, Lever, Tenant};
use meterd_fuzz::{check_common, check_error, BATCH_LIMIT};
use serde_json::value::RawValue;

/// `(name, aggregation, value_property, bucket_property)`.
const LEVERS: &[(&str, &str, Option<&str>, Option<&str>)] = &[
    ("api_calls", "count", None, None),
    ("tokens", "sum", None, Some("$.model")),
    ("storage_gb", "max", Some("$.usage.gb"), Some("$.region")),
    ("seats", "latest", Some("$.a.b.c.d"), Some("$.a.b.zone")),
];

fn tenant() -> &'static Tenant {
    static T: OnceLock<Tenant> = OnceLock::new();
    T.get_or_init(|| {
        let t = Tenant {
            name: Arc::from("fuzz"),
            index: 0,
            lateness: Duration::from_secs(3600),
            levers: Default::default(),
            contracts: Default::default(),
            plans: Default::default(),
            grants: Default::default(),
            thresholds: Vec::new(),
            webhook: None,
        };
        for (name, agg, value, bucket) in LEVERS {
            let mut body = serde_json::json!({
                "id": name, "aggregation": agg, "unit": "u", "status": "active",
                "created_at": "2026-01-01T00:00:00Z", "updated_at": "2026-01-01T00:00:00Z",
            });
            if let Some(p) = value {
                body["value_property"] = (*p).into();
            }
            if let Some(p) = bucket {
                body["bucket_property"] = (*p).into();
            }
            let lever: Lever = serde_json::from_value(body).expect("lever JSON");
            t.levers.insert(name.to_string(), Arc::new(lever));
        }
        t
    })
}

fuzz_target!(|body: &[u8]| {
    let t = tenant();
    let Ok(elems) = split_body(body, BodyFormat::Json, BATCH_LIMIT) else {
        return;
    };
    for raw in elems {
        match parse_cloudevent(t, raw) {
            Ok(e) => {
                check_common(&e);
                assert!(e.id.starts_with("ce:"), "key {:?}", e.id);
                let shown = e.shown_id.as_deref().expect("a CloudEvent keeps its id");
                meterd_fuzz::check_text("CloudEvent id", shown, 128);
                match t.lever(&e.lever) {
                    None => assert!(e.value.is_none() && e.bucket.is_none()),
                    Some(l) if l.aggregation == Aggregation::Count => {
                        assert!(e.value.is_none())
                    }
                    Some(_) => assert!(e.value.is_some(), "no value for {:?}", e.lever),
                }
                // The key is the one derived from the event's own source and id.
                let f: Fields<'_> = serde_json::from_str(raw.get()).expect("an object");
                let source = f.source.expect("an accepted event has a source");
                assert_eq!(
                    e.id,
                    meterd::event::cloudevents::idempotency_key(&source, shown)
                );
            }
            Err((id, e)) => {
                check_error(&e, true);
                if let Some(id) = id {
                    meterd_fuzz::check_text("id of a refused CloudEvent", &id, 128);
                }
            }
        }
        // Arbitrary paths over arbitrary data: the event's `subject` as the path.
        if let Ok(f) = serde_json::from_str::<Fields<'_>>(raw.get()) {
            if let (Some(data), Some(path)) = (f.data, f.subject) {
                if let Some(found) = lookup(data, &path) {
                    let _: serde::de::IgnoredAny =
                        serde_json::from_str(found.get()).expect("lookup returns JSON");
                }
            }
        }
    }
});

#[derive(serde::Deserialize)]
struct Fields<'a> {
    #[serde(borrow, default)]
    data: Option<&'a RawValue>,
    #[serde(default)]
    subject: Option<String>,
    #[serde(default)]
    source: Option<String>,
}
