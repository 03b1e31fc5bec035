//! Shared pieces of meterd's fuzz targets (`fuzz_targets/*.rs`): an allocation guard and
//! the invariants every parsed event must satisfy.
//!
//! Each target is a libFuzzer binary (`libfuzzer-sys`); `scripts/fuzz.sh` builds and runs
//! them, `fuzz/README.md` says how to run them longer and how to reproduce a crash.

use std::alloc::{GlobalAlloc, Layout, System};
use std::io::Write;

use meterd::decimal::{Amount, MAX_INPUT};
use meterd::event::{Event, EventError, Parsed};
use meterd::window::{parse_rfc3339, rfc3339};

/// Largest single allocation a target may make. Inputs are at most a few tens of KiB
/// (`-max_len`), so anything near this size is an allocation sized by a number read from
/// the input rather than by the input itself: the guard aborts, and libFuzzer saves the
/// input as a crash. (Growth in total memory is caught by libFuzzer's `-rss_limit_mb`.)
pub const MAX_ALLOC_BYTES: usize = 64 << 20;

/// The system allocator, refusing any single allocation above [`MAX_ALLOC_BYTES`].
pub struct GuardedAlloc;

#[cold]
fn too_big(size: usize) -> ! {
    // No allocation here: we are inside the allocator. Stderr is unbuffered.
    let mut buf = [0u8; 20];
    let mut n = size;
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    let mut err = std::io::stderr().lock();
    let _ = err.write_all(b"\n==meterd-fuzz== allocation of ");
    let _ = err.write_all(&buf[i..]);
    let _ = err.write_all(b" bytes exceeds the fuzz limit (MAX_ALLOC_BYTES)\n");
    std::process::abort()
}

unsafe impl GlobalAlloc for GuardedAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if layout.size() > MAX_ALLOC_BYTES {
            too_big(layout.size());
        }
        System.alloc(layout)
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if layout.size() > MAX_ALLOC_BYTES {
            too_big(layout.size());
        }
        System.alloc_zeroed(layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if new_size > MAX_ALLOC_BYTES {
            too_big(new_size);
        }
        System.realloc(ptr, layout, new_size)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }
}

#[global_allocator]
static ALLOC: GuardedAlloc = GuardedAlloc;

/// The largest batch the targets split (a valid `max_batch_events`, small enough for
/// inputs of `-max_len` to exceed it).
pub const BATCH_LIMIT: usize = 1000;

/// Per-event error fields a native event can name.
const NATIVE_FIELDS: [&str; 7] = ["", "id", "contract", "lever", "value", "time", "bucket"];
/// Per-event error fields a CloudEvent can name.
const CLOUDEVENT_FIELDS: [&str; 8] = [
    "",
    "id",
    "source",
    "specversion",
    "type",
    "subject",
    "time",
    "data",
];

/// Asserts a string field's contract: 1..=max bytes, no control characters.
pub fn check_text(what: &str, s: &str, max: usize) {
    assert!(
        !s.is_empty() && s.len() <= max,
        "{what} {s:?} has {} bytes, outside 1-{max}",
        s.len()
    );
    assert!(
        !s.chars().any(char::is_control),
        "{what} {s:?} holds a control character"
    );
}

/// Asserts a value is a valid input amount: non-negative, at most 18 integer digits and
/// 9 fractional digits, and its decimal text reads back to itself.
pub fn check_amount(a: Amount) {
    assert!(
        (0..=MAX_INPUT).contains(&a.0),
        "amount {a:?} is outside the input range"
    );
    let text = a.to_string();
    assert_eq!(
        Amount::parse_input(&text),
        Ok(a),
        "{text} does not read back"
    );
}

/// Asserts an event time is in the accepted range and its RFC 3339 text reads back.
pub fn check_time(ms: i64) {
    let text = rfc3339(ms);
    assert_eq!(
        parse_rfc3339(&text),
        Some(ms),
        "time {ms} ({text}) does not read back"
    );
}

/// Asserts a per-event error names a known field and says something.
pub fn check_error(e: &EventError, cloudevent: bool) {
    let fields: &[&str] = if cloudevent {
        &CLOUDEVENT_FIELDS
    } else {
        &NATIVE_FIELDS
    };
    assert!(
        fields.contains(&e.field),
        "unknown error field {:?}",
        e.field
    );
    assert!(
        !e.message.is_empty(),
        "empty error message for {:?}",
        e.field
    );
}

/// The native JSON text of an event, the way a client would send it.
pub fn native_json(e: &Event<'_>) -> String {
    let mut obj = serde_json::Map::new();
    obj.insert("id".into(), e.id.as_ref().into());
    obj.insert("contract".into(), e.contract.as_ref().into());
    obj.insert("lever".into(), e.lever.as_ref().into());
    if let Some(v) = e.value {
        obj.insert("value".into(), v.to_string().into());
    }
    if let Some(t) = e.time_ms {
        obj.insert("time".into(), rfc3339(t).into());
    }
    if let Some(b) = &e.bucket {
        obj.insert("bucket".into(), b.as_ref().into());
    }
    serde_json::Value::Object(obj).to_string()
}

/// Checks one parsed native event: field contracts, and that writing it back as native
/// JSON and parsing that gives the same event.
pub fn check_native(p: &Parsed<'_>) {
    match p {
        Ok(e) => {
            check_common(e);
            assert!(e.shown_id.is_none(), "native event with a shown id");
            let text = native_json(e);
            let raw: Box<serde_json::value::RawValue> =
                serde_json::from_str(&text).expect("native_json writes JSON");
            let again = meterd::event::parse_event(&raw);
            assert_eq!(
                again.as_ref().ok(),
                Some(e),
                "{text} reads back differently"
            );
        }
        Err((id, e)) => {
            check_error(e, false);
            if let Some(id) = id {
                check_text("id of a refused event", id, 128);
            }
        }
    }
}

/// Checks the fields every accepted event, native or CloudEvent, satisfies.
pub fn check_common(e: &Event<'_>) {
    check_text("id", &e.id, 128);
    check_text("contract", &e.contract, 128);
    check_text("lever", &e.lever, 64);
    if let Some(b) = &e.bucket {
        check_text("bucket", b, 64);
    }
    if let Some(v) = e.value {
        check_amount(v);
    }
    if let Some(t) = e.time_ms {
        check_time(t);
    }
}
