//! Online backups (docs/operations.md): `POST /backup` on the metrics listener writes a
//! RocksDB checkpoint of the running daemon into `backup_dir`.
//!
//! Promises guarded:
//! - a backup is a consistent point in time, taken while ingest runs: a daemon started
//!   on a copy of it counts every event acknowledged before the backup was requested,
//!   nothing acknowledged after it answered, and each event it has exactly once; its
//!   dedupe records match its counts (re-sending every id afterwards counts each id
//!   exactly once in total);
//! - only the newest `backup_keep` backups are kept, and each is a complete data dir;
//! - the route exists only on the metrics listener, and answers 404 `not_found` when
//!   `backup_dir` is not set.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};

use common::{Daemon, INGEST};

const CONTRACT: &str = "bk-c";
const LEVER: &str = "calls";

fn counted(d: &Daemon) -> u64 {
    d.day_total(CONTRACT, LEVER)
}

fn events(ids: &[String]) -> Value {
    Value::Array(
        ids.iter()
            .map(|id| json!({"id": id, "contract": CONTRACT, "lever": LEVER, "value": 1}))
            .collect(),
    )
}

fn backup(d: &Daemon) -> (u16, Value) {
    let r = d
        .client
        .post(format!("{}/backup", d.metrics))
        .send()
        .expect("backup request");
    let s = r.status().as_u16();
    (s, r.json().unwrap_or(Value::Null))
}

fn backups_in(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .collect();
    v.sort();
    v
}

/// Starts a daemon on a copy of a backup directory.
fn restore(backup: &Path) -> Daemon {
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let st = Command::new("cp")
        .arg("-a")
        .arg(backup)
        .arg(dir.path().join("data"))
        .status()
        .unwrap();
    assert!(st.success());
    let config = dir.path().join("meterd.toml");
    std::fs::write(&config, common::config_text("", "")).unwrap();
    Daemon::spawn(dir, config)
}

#[test]
fn backups_are_consistent_points_in_time_taken_under_load() {
    let root = tempfile::tempdir().unwrap();
    let bdir: PathBuf = root.path().join("backups");
    let d = Daemon::start_with(
        &format!(
            "backup_dir = {:?}\nbackup_keep = 2\n",
            bdir.display().to_string()
        ),
        "",
    );
    d.lever(LEVER, "sum");
    d.contract(CONTRACT);

    // A: acknowledged before any backup.
    let a: Vec<String> = (0..3000).map(|i| format!("a-{i}")).collect();
    let (s, b) = d.post_events(&events(&a));
    assert_eq!((s, b["accepted"].as_u64()), (200, Some(3000)), "{b}");
    let (s, first) = backup(&d);
    assert_eq!(s, 201, "{first}");
    assert!(first["bytes"].as_u64().unwrap() > 0, "{first}");

    // B: a writer keeps ingesting while the second backup is taken.
    let stop = Arc::new(AtomicBool::new(false));
    let acked: Arc<Mutex<Vec<String>>> = Arc::default();
    let sent: Arc<Mutex<Vec<String>>> = Arc::default();
    let writer = {
        let (stop, acked, sent) = (stop.clone(), acked.clone(), sent.clone());
        let base = d.base.clone();
        std::thread::spawn(move || {
            let http = reqwest::blocking::Client::new();
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                let ids: Vec<String> = (0..50).map(|i| format!("b-{n}-{i}")).collect();
                n += 1;
                sent.lock().unwrap().extend(ids.iter().cloned());
                let r = http
                    .post(format!("{base}/v1/events"))
                    .bearer_auth(INGEST)
                    .json(&events(&ids))
                    .send()
                    .unwrap();
                assert_eq!(r.status(), 200);
                acked.lock().unwrap().extend(ids);
            }
        })
    };
    std::thread::sleep(Duration::from_millis(300));
    let acked_before = acked.lock().unwrap().len() as u64;
    let (s, second) = backup(&d);
    let sent_after = sent.lock().unwrap().len() as u64;
    assert_eq!(s, 201, "{second}");
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    writer.join().unwrap();
    let b_ids = acked.lock().unwrap().clone();

    // C: after the second backup.
    let c: Vec<String> = (0..500).map(|i| format!("c-{i}")).collect();
    let (s, b) = d.post_events(&events(&c));
    assert_eq!((s, b["accepted"].as_u64()), (200, Some(500)), "{b}");
    let (s, third) = backup(&d);
    assert_eq!(s, 201, "{third}");
    let live_total = counted(&d);
    assert_eq!(live_total, 3000 + b_ids.len() as u64 + 500);

    // Only the newest two are kept; no temporary directories are left.
    let names = backups_in(&bdir);
    let path_name = |v: &Value| {
        Path::new(v["path"].as_str().unwrap())
            .file_name()
            .unwrap()
            .to_string_lossy()
            .to_string()
    };
    assert_eq!(
        names,
        vec![path_name(&second), path_name(&third)],
        "{names:?}"
    );

    // The second backup is a point in time between A+acked_before and A+sent_after.
    let r = restore(Path::new(second["path"].as_str().unwrap()));
    let in_backup = counted(&r);
    assert!(
        in_backup >= 3000 + acked_before && in_backup <= 3000 + sent_after,
        "backup counts {in_backup}, expected between {} and {}",
        3000 + acked_before,
        3000 + sent_after
    );
    // Its dedupe records match its counts: re-sending everything counts each id once.
    let mut all = a.clone();
    all.extend(b_ids.iter().cloned());
    all.extend(c.iter().cloned());
    let mut dup = 0;
    let mut acc = 0;
    for chunk in all.chunks(1000) {
        let (s, b) = r.post_events(&events(chunk));
        assert_eq!(s, 200, "{b}");
        acc += b["accepted"].as_u64().unwrap();
        dup += b["duplicates"].as_u64().unwrap();
    }
    assert_eq!(dup, in_backup, "duplicates = what the backup had counted");
    assert_eq!(acc + dup, all.len() as u64);
    assert_eq!(counted(&r), all.len() as u64);
    drop(r);

    // The third backup has everything, exactly.
    let r = restore(Path::new(third["path"].as_str().unwrap()));
    assert_eq!(counted(&r), live_total);
}

#[test]
fn backup_route_is_operator_only_and_off_unless_configured() {
    let d = Daemon::start();
    let (s, b) = backup(&d);
    assert_eq!(s, 404, "{b}");
    assert_eq!(b["code"], "not_found", "{b}");
    assert!(b["detail"].as_str().unwrap().contains("backup_dir"), "{b}");
    // Not on the API listener, whatever the key.
    let r = d
        .client
        .post(d.url("/backup"))
        .bearer_auth(common::ADMIN)
        .send()
        .unwrap();
    assert_eq!(r.status(), 404);
    // Config edges.
    let bad = |top: &str| {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("m.toml");
        std::fs::write(&cfg, common::config_text(top, "")).unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_meterd"))
            .args(["check-config", "--config"])
            .arg(&cfg)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    assert_eq!(bad("backup_keep = 1\nbackup_dir = \"/tmp/x\"\n").0, Some(0));
    assert_eq!(bad("backup_keep = 1000\n").0, Some(0));
    let (code, err) = bad("backup_keep = 0\n");
    assert_eq!(code, Some(64), "{err}");
    assert!(err.contains("backup_keep"), "{err}");
    let (code, err) = bad("backup_keep = 1001\n");
    assert_eq!(code, Some(64), "{err}");
    let (code, err) = bad("backup_dir = \"\"\n");
    assert_eq!(code, Some(64), "{err}");
    assert!(err.contains("backup_dir"), "{err}");
}
