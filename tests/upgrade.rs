//! Black-box tests of the on-disk format version, against the real binary.
//!
//! The store records the format it was written in (`meterd::store::FORMAT_VERSION`) and
//! a daemon refuses to start on a data dir of any other format: it exits with status 1
//! (the status of every startup failure; 64 is only for configuration errors) within
//! seconds, before it listens, with a message on stderr that names the data dir, the
//! format found, the format it reads and what to do, and it leaves the data dir as it
//! was, so the matching meterd (or this one, once the dir is stamped back) opens it with
//! every count intact.
//!
//! There is no previous on-disk version: `FORMAT_VERSION` is 1, the first format, so no
//! data dir of an older format exists to open here.
//! `format_is_recorded_and_survives_restarts` fails when the version is bumped, as a
//! reminder to add a data dir written by the previous version (and a test that opens it,
//! or that refuses it with the message above). Until then these tests cover a data dir
//! written by this build: it records format 1 and reopens with its counts and
//! idempotency records after SIGTERM and after `kill -9`.
//!
//! A future format is simulated with `meterd::store::Store::stamp_format_version` on a
//! stopped daemon's data dir. The recorded format is read back with a read-only RocksDB
//! open of the `meta` column family (key `format`), the one store detail these tests
//! rely on.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{read_all, time_at, Daemon, READ};
use meterd::store::{cf, Store, FORMAT_VERSION};
use serde_json::{json, Value};

/// Exit status of a `meterd serve` that fails after loading its configuration
/// (`ExitCode::FAILURE` in src/main.rs).
const EXIT_STARTUP_FAILURE: i32 = 1;

const CONTRACTS: [&str; 2] = ["ctr-a", "ctr-b"];
const BUCKETS: [&str; 3] = ["eu", "us", "ap"];

/// Usage of one contract: (lever, bucket) -> decimal string.
type Usage = BTreeMap<(String, String), String>;

/// The format recorded in the (stopped) daemon's data dir.
fn recorded_format(data: &Path) -> Option<String> {
    let opts = rocksdb::Options::default();
    let names = rocksdb::DB::list_cf(&opts, data).expect("list column families");
    let db = rocksdb::DB::open_cf_for_read_only(&opts, data, &names, false)
        .expect("open the data dir read-only");
    let meta = db.cf_handle(cf::META).expect("meta column family");
    db.get_cf(meta, b"format")
        .expect("read the format")
        .map(|v| String::from_utf8_lossy(&v).into_owned())
}

fn stamp(data: &Path, version: &str) {
    Store::stamp_format_version(data, version)
        .unwrap_or_else(|e| panic!("stamping {} with {version:?}: {e}", data.display()));
}

/// Creates the levers and contracts the events use.
fn define(d: &Daemon) {
    d.lever("calls", "sum");
    d.lever("tokens", "sum");
    for c in CONTRACTS {
        d.contract(c);
    }
}

/// Event `i` of a run: contract, lever, bucket and value all vary with `i`; the time is
/// ten minutes ago, well inside the usage range read back.
fn event(i: usize, time: &str) -> Value {
    json!({
        "id": format!("ev-{i}"),
        "contract": CONTRACTS[i % 2],
        "lever": if i.is_multiple_of(3) { "tokens" } else { "calls" },
        "bucket": BUCKETS[i % 5 % 3],
        "value": format!("{}.{}", i, i % 10),
        "time": time,
    })
}

/// Posts events `range` (batches of 7 and a single one) and checks every one is
/// `accepted` (or, with `again`, a `duplicate`).
fn post(d: &Daemon, range: std::ops::Range<usize>, time: &str, again: bool) {
    let all: Vec<Value> = range.map(|i| event(i, time)).collect();
    let (single, rest) = all.split_first().expect("at least one event");
    let (s, b) = d.post_events(single);
    let want = if again { "duplicates" } else { "accepted" };
    assert_eq!((s, b[want].as_u64()), (200, Some(1)), "{b}");
    for chunk in rest.chunks(7) {
        let (s, b) = d.post_events(&Value::Array(chunk.to_vec()));
        assert_eq!(s, 200, "{b}");
        assert_eq!(b[want].as_u64(), Some(chunk.len() as u64), "{b}");
        assert_eq!(b["rejected"].as_u64(), Some(0), "{b}");
    }
}

/// What events `0..n` add up to, per contract.
fn expected(n: usize) -> BTreeMap<&'static str, Usage> {
    let mut out: BTreeMap<&'static str, BTreeMap<(String, String), u64>> = BTreeMap::new();
    for i in 0..n {
        let e = event(i, "");
        let key = (
            e["lever"].as_str().unwrap().to_string(),
            e["bucket"].as_str().unwrap().to_string(),
        );
        // In tenths, to stay exact.
        *out.entry(CONTRACTS[i % 2])
            .or_default()
            .entry(key)
            .or_default() += (i * 10 + i % 10) as u64;
    }
    out.into_iter()
        .map(|(c, m)| {
            let m = m
                .into_iter()
                .map(|(k, tenths)| {
                    let v = if tenths.is_multiple_of(10) {
                        format!("{}", tenths / 10)
                    } else {
                        format!("{}.{}", tenths / 10, tenths % 10)
                    };
                    (k, v)
                })
                .collect();
            (c, m)
        })
        .collect()
}

/// The usage meterd reports for every contract since `from`, per lever and bucket.
fn usage(d: &Daemon, from: &str) -> BTreeMap<&'static str, Usage> {
    CONTRACTS
        .iter()
        .map(|c| {
            let b = d.usage(c, &format!("from={from}&group_by=bucket"));
            let rows = b["items"]
                .as_array()
                .unwrap_or_else(|| panic!("{b}"))
                .iter()
                .map(|r| {
                    (
                        (
                            r["lever"].as_str().unwrap().to_string(),
                            r["bucket"].as_str().unwrap().to_string(),
                        ),
                        r["value"].as_str().unwrap().to_string(),
                    )
                })
                .collect();
            (*c, rows)
        })
        .collect()
}

/// What a refused start showed.
struct Refused {
    code: Option<i32>,
    took: Duration,
    stdout: String,
    stderr: String,
}

/// Runs `meterd serve` on `dir`'s config and data dir, expecting it to exit by itself;
/// kills it and fails if it is still running after 20 s.
fn serve_expecting_exit(dir: &Path) -> Refused {
    let started = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_meterd"))
        .arg("serve")
        .arg("--config")
        .arg(dir.join("meterd.toml"))
        .arg("--data-dir")
        .arg(dir.join("data"))
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn meterd");
    let status = loop {
        if let Some(st) = child.try_wait().expect("wait for meterd") {
            break st;
        }
        if started.elapsed() > Duration::from_secs(20) {
            let _ = child.kill();
            let _ = child.wait();
            let out = read_all(child.stdout.take().unwrap());
            let err = read_all(child.stderr.take().unwrap());
            panic!("meterd started on an incompatible data dir:\nstdout:\n{out}\nstderr:\n{err}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Refused {
        code: status.code(),
        took: started.elapsed(),
        stdout: read_all(child.stdout.take().unwrap()),
        stderr: read_all(child.stderr.take().unwrap()),
    }
}

/// Checks a refusal of a data dir stamped `found`.
#[track_caller]
fn assert_refused(r: &Refused, data: &Path, found: &str) {
    let all = format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        r.code, r.stdout, r.stderr
    );
    assert_eq!(r.code, Some(EXIT_STARTUP_FAILURE), "{all}");
    assert!(r.took < Duration::from_secs(10), "took {:?}: {all}", r.took);
    assert!(!r.stdout.contains("listening on"), "{all}");
    let line = r
        .stderr
        .lines()
        .find(|l| l.starts_with("meterd: "))
        .unwrap_or_else(|| panic!("no `meterd: ...` error line: {all}"));
    // The found version bare or quoted (quoting would show "" and " 1" better).
    assert!(
        line.contains(&format!("on-disk format {found},"))
            || line.contains(&format!("on-disk format {found:?},")),
        "the found format {found:?} is not named in {line:?}\n{all}"
    );
    for want in [
        data.display().to_string(),
        format!("this meterd reads format {FORMAT_VERSION}"),
        "use a matching meterd version".to_string(),
    ] {
        assert!(
            line.contains(&want),
            "{want:?} missing from {line:?}\n{all}"
        );
    }
}

/// A daemon with the default test config, its events `0..n` ingested; returns it and the
/// `from` of the usage range (percent-encoded).
fn ingested(n: usize) -> (Daemon, String) {
    let from = time_at(-3_600_000).replace('+', "%2B");
    let d = Daemon::start();
    define(&d);
    post(&d, 0..n, &time_at(-600_000), false);
    assert_eq!(usage(&d, &from), expected(n));
    (d, from)
}

/// The levers and contracts, as listed with the read key.
fn definitions(d: &Daemon) -> Value {
    let list = |path: &str| {
        let (s, b) = d.req("GET", path, Some(READ), None);
        assert_eq!(s, 200, "{b}");
        b["items"].clone()
    };
    let v = json!([list("/v1/levers"), list("/v1/contracts")]);
    assert_eq!(v[0].as_array().map(Vec::len), Some(2), "{v}");
    assert_eq!(v[1].as_array().map(Vec::len), Some(CONTRACTS.len()), "{v}");
    v
}

fn restart(d: &Daemon) -> Daemon {
    Daemon::spawn(Arc::clone(&d.dir), d.config.clone())
}

#[test]
fn a_future_format_is_refused_and_left_untouched() {
    let (mut d, from) = ingested(40);
    let before = usage(&d, &from);
    let defined = definitions(&d);
    assert_eq!(d.terminate(), Some(0));
    let data = d.data_dir();
    assert_eq!(recorded_format(&data).as_deref(), Some("1"));

    stamp(&data, "2");
    // Refused twice: the first refusal does not "repair" the stamp either.
    for _ in 0..2 {
        let r = serve_expecting_exit(d.dir_path());
        assert_refused(&r, &data, "2");
        assert_eq!(recorded_format(&data).as_deref(), Some("2"));
    }

    // Stamped back, the same data opens with every count and idempotency record.
    stamp(&data, "1");
    let d = restart(&d);
    assert_eq!(usage(&d, &from), before);
    assert_eq!(usage(&d, &from), expected(40));
    post(&d, 0..40, &time_at(-600_000), true);
    assert_eq!(usage(&d, &from), expected(40));
    assert_eq!(definitions(&d), defined);
}

#[test]
fn a_garbage_format_is_refused() {
    let (mut d, from) = ingested(12);
    assert_eq!(d.terminate(), Some(0));
    let data = d.data_dir();
    for garbage in ["x", "0", "1.0", "01", " 1", "18446744073709551617", ""] {
        stamp(&data, garbage);
        let r = serve_expecting_exit(d.dir_path());
        assert_refused(&r, &data, garbage);
        assert_eq!(recorded_format(&data).as_deref(), Some(garbage));
    }
    stamp(&data, "1");
    let d = restart(&d);
    assert_eq!(usage(&d, &from), expected(12));
}

#[test]
fn format_is_recorded_and_survives_restarts() {
    // The first on-disk format: no data dir of a previous version exists (see the module
    // doc). Bumping it needs such a data dir and a test that opens it.
    assert_eq!(FORMAT_VERSION, 1);

    let (mut d, from) = ingested(30);
    assert_eq!(d.terminate(), Some(0));
    let data = d.data_dir();
    assert_eq!(recorded_format(&data).as_deref(), Some("1"));

    // After SIGTERM.
    let mut d = restart(&d);
    assert_eq!(usage(&d, &from), expected(30));
    post(&d, 0..30, &time_at(-600_000), true);
    post(&d, 30..60, &time_at(-600_000), false);
    assert_eq!(usage(&d, &from), expected(60));

    // After kill -9: every acknowledged event is still there, once.
    d.kill9();
    assert_eq!(recorded_format(&data).as_deref(), Some("1"));
    let mut d = restart(&d);
    assert_eq!(usage(&d, &from), expected(60));
    post(&d, 0..60, &time_at(-600_000), true);
    assert_eq!(usage(&d, &from), expected(60));

    assert_eq!(d.terminate(), Some(0));
    assert_eq!(recorded_format(&data).as_deref(), Some("1"));
}
