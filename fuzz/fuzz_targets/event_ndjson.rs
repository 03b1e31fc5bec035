//! Native event bodies sent as `application/x-ndjson`: one JSON value per line (SPEC
//! 2.1). The input is the raw request body.
//!
//! Invariants: splitting never panics; an accepted body yields one element per
//! non-blank line (at most the batch limit), each exactly the JSON text of that line; every element
//! parses to an event that satisfies the field contracts and reads back unchanged from
//! its own native JSON, or to a per-event error naming a known field.

#![no_main]

use libfuzzer_sys::fuzz_target;
use meterd::event::{parse_body, parse_event, split_body, BodyError, BodyFormat};
use meterd_fuzz::{check_native, BATCH_LIMIT};

fuzz_target!(|body: &[u8]| {
    // The one-pass reader must give exactly what splitting and reading each element gives.
    let one_pass = parse_body(body, BodyFormat::Ndjson, BATCH_LIMIT);
    let two_pass = split_body(body, BodyFormat::Ndjson, BATCH_LIMIT)
        .map(|elems| elems.into_iter().map(parse_event).collect::<Vec<_>>());
    assert_eq!(one_pass, two_pass);
    match split_body(body, BodyFormat::Ndjson, BATCH_LIMIT) {
        Ok(elems) => {
            let text = std::str::from_utf8(body).expect("an accepted body is UTF-8");
            let lines: Vec<&str> = text
                .split('\n')
                .map(|l| l.trim_end_matches('\r'))
                .filter(|l| !l.trim().is_empty())
                .collect();
            assert_eq!(elems.len(), lines.len());
            assert!(!elems.is_empty() && elems.len() <= BATCH_LIMIT);
            for (raw, line) in elems.iter().zip(&lines) {
                let json_ws: &[char] = &[' ', '\t', '\r', '\n'];
                assert_eq!(
                    raw.get(),
                    line.trim_matches(json_ws),
                    "element is not its line"
                );
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
