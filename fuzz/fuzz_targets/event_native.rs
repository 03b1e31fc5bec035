//! Native event bodies sent as `application/json`: one object or an array of them
//! (SPEC 2.1). The input is the raw request body.
//!
//! Invariants: splitting never panics and never returns more than the batch limit; a
//! body it accepts is valid JSON with as many elements as it returned; every element
//! parses to an event that satisfies the field contracts and reads back unchanged from
//! its own native JSON, or to a per-event error naming a known field.

#![no_main]

use libfuzzer_sys::fuzz_target;
use meterd::event::{parse_body, parse_event, split_body, BodyError, BodyFormat};
use meterd_fuzz::{check_native, BATCH_LIMIT};
use serde::de::IgnoredAny;

fuzz_target!(|body: &[u8]| {
    // The one-pass reader must give exactly what splitting and reading each element gives.
    let one_pass = parse_body(body, BodyFormat::Json, BATCH_LIMIT);
    let two_pass = split_body(body, BodyFormat::Json, BATCH_LIMIT)
        .map(|elems| elems.into_iter().map(parse_event).collect::<Vec<_>>());
    assert_eq!(one_pass, two_pass);
    match split_body(body, BodyFormat::Json, BATCH_LIMIT) {
        Ok(elems) => {
            assert!(!elems.is_empty() && elems.len() <= BATCH_LIMIT);
            // `IgnoredAny` reads JSON as leniently as `RawValue` does (lone surrogate
            // escapes, numbers beyond f64): the count must agree.
            let text = std::str::from_utf8(body).expect("an accepted body is UTF-8");
            let expected = if text.trim_start().starts_with('[') {
                serde_json::from_str::<Vec<IgnoredAny>>(text)
                    .expect("an accepted array is JSON")
                    .len()
            } else {
                assert!(text.trim_start().starts_with('{'), "accepted {text:?}");
                serde_json::from_str::<IgnoredAny>(text).expect("an accepted object is JSON");
                1
            };
            assert_eq!(elems.len(), expected);
            for raw in elems {
                check_native(&parse_event(raw));
            }
        }
        Err(BodyError::TooMany { count, limit }) => {
            assert_eq!(limit, BATCH_LIMIT);
            assert!(count > limit);
        }
        Err(BodyError::Malformed(m)) => assert!(!m.is_empty()),
        Err(BodyError::Empty) => {}
    }
});
