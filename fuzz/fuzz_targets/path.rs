//! Request paths of the API listener, routed by `parse_route`. The input is the raw
//! path (what hyper hands the router: the URI path, still percent-encoded).
//!
//! Invariants: no panic; a routed resource id is the non-empty percent-decoding of
//! its segment, and percent-encoding it again routes to the same id; decoding errors
//! are answered as errors, never as a different route.

#![no_main]

use libfuzzer_sys::fuzz_target;
use meterd::http::router::{parse_route, Route};
use meterd::http::util::decode_segment;
use percent_encoding::{utf8_percent_encode, NON_ALPHANUMERIC};

/// The resource id a route carries, if any.
fn id_of(r: &Route) -> Option<&str> {
    match r {
        Route::Lever(s)
        | Route::Contract(s)
        | Route::ContractEnd(s)
        | Route::ContractUsage(s)
        | Route::ContractBalance(s)
        | Route::ContractGrants(s)
        | Route::ContractAdjustments(s)
        | Route::Event(s)
        | Route::Plan(s) => Some(s),
        _ => None,
    }
}

fn same_kind(a: &Route, b: &Route) -> bool {
    std::mem::discriminant(a) == std::mem::discriminant(b)
}

fuzz_target!(|data: &[u8]| {
    let Ok(path) = std::str::from_utf8(data) else {
        return;
    };
    for seg in path.split('/') {
        if let Ok(s) = decode_segment(seg) {
            let enc = utf8_percent_encode(&s, NON_ALPHANUMERIC).to_string();
            assert_eq!(decode_segment(&enc).ok().as_deref(), Some(s.as_str()));
        }
    }
    let Ok(Some(route)) = parse_route(path) else {
        return;
    };
    let Some(id) = id_of(&route) else {
        return;
    };
    assert!(!id.is_empty(), "empty resource id");
    // Every id-carrying route is `/v1/<collection>/<id>[/<action>]`: substitute the
    // re-encoded id for its segment.
    let segs: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    assert_eq!(decode_segment(segs[2]).ok().as_deref(), Some(id));
    let enc = utf8_percent_encode(id, NON_ALPHANUMERIC).to_string();
    let mut rebuilt: Vec<&str> = segs.clone();
    rebuilt[2] = &enc;
    let again = format!("/{}", rebuilt.join("/"));
    match parse_route(&again) {
        Ok(Some(r)) => {
            assert!(same_kind(&r, &route), "{again} routes elsewhere");
            assert_eq!(id_of(&r), Some(id));
        }
        _ => panic!("{again} is not routed"),
    }
});
