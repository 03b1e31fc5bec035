//! Query strings of the read endpoints (SPEC 4), parsed the way the usage handlers do:
//! `query_map`, the parameter allow-list, `limit`, `cursor`, `tz`, `window`, `from` /
//! `to` (RFC 3339), then the windows the range splits into (`calendar_windows` for
//! calendar windows in a zone, `cover` for stored ones). The input is the raw query
//! string (what follows `?`).
//!
//! Invariants: no panic or hang; an accepted query map survives re-encoding; `limit`
//! is 1-1000; a cursor decodes to text that encodes back; a window name reads back;
//! calendar windows are contiguous, non-empty and start in `[from, to)`; stored cover
//! ranges are aligned to their granularity and tile `[from, to)` minute-aligned.

#![no_main]

use chrono_tz::Tz;
use libfuzzer_sys::fuzz_target;
use meterd::http::util::{decode_cursor, encode_cursor, only_params, page_limit, query_map};
use meterd::query::{calendar_windows, WindowSpec};
use meterd::window::{cover, parse_rfc3339, Granularity, DAY_MS};

const ALLOWED: &[&str] = &[
    "lever", "from", "to", "window", "tz", "group_by", "cursor", "limit",
];

/// The usage handlers' longest range per window size.
fn max_range_ms(w: WindowSpec) -> i64 {
    match w {
        WindowSpec::Stored(Granularity::Minute) => 31 * DAY_MS,
        WindowSpec::Stored(Granularity::Hour) => 400 * DAY_MS,
        _ => 100 * 366 * DAY_MS,
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(qs) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(q) = query_map(Some(qs)) else {
        return;
    };
    // Re-encoding the map gives a query string that parses to the same map.
    let mut ser = form_urlencoded::Serializer::new(String::new());
    for (k, v) in &q {
        ser.append_pair(k, v);
    }
    let again = ser.finish();
    if again.len() <= 8192 {
        assert_eq!(query_map(Some(&again)).ok().as_ref(), Some(&q), "{again}");
    }
    let _ = only_params(&q, ALLOWED);
    if let Ok(n) = page_limit(&q) {
        assert!((1..=1000).contains(&n));
    }
    if let Some(c) = q.get("cursor") {
        if let Ok(last) = decode_cursor(c) {
            assert_eq!(decode_cursor(&encode_cursor(&last)).ok(), Some(last));
        }
    }
    let tz: Tz = match q.get("tz") {
        None => Tz::UTC,
        Some(z) => match z.parse() {
            Ok(tz) => tz,
            Err(_) => return,
        },
    };
    let Some(window) = WindowSpec::parse(q.get("window").map_or("none", String::as_str), tz) else {
        return;
    };
    assert_eq!(WindowSpec::parse(window.as_str(), tz), Some(window));
    let (Some(from), Some(to)) = (
        q.get("from").and_then(|t| parse_rfc3339(t)),
        q.get("to").and_then(|t| parse_rfc3339(t)),
    ) else {
        return;
    };
    if from >= to || to - from > max_range_ms(window) {
        return;
    }
    match window {
        WindowSpec::Calendar(kind) => {
            let w = calendar_windows(kind, tz, from, to);
            for (i, &(s, e)) in w.iter().enumerate() {
                assert!(
                    from <= s && s < to && s < e,
                    "window {s}..{e} for {from}..{to}"
                );
                if let Some(&(next, _)) = w.get(i + 1) {
                    assert_eq!(e, next, "calendar windows are not contiguous");
                }
            }
        }
        WindowSpec::Stored(_) | WindowSpec::None => {
            let s = Granularity::Minute.ceil(from);
            let e = Granularity::Minute.ceil(to);
            let mut at = s;
            for (g, ps, pe) in cover(s, e) {
                assert_eq!(ps, at, "cover leaves a gap or overlaps");
                assert!(ps < pe);
                assert_eq!(g.floor(ps), ps, "{g:?} range starts unaligned");
                assert_eq!(g.floor(pe), pe, "{g:?} range ends unaligned");
                at = pe;
            }
            assert_eq!(at, e.max(s), "cover does not reach the end");
        }
    }
});
