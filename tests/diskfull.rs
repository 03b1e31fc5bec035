//! Disk-full test (SPEC 2.1, 2.2, 7): the data dir sits on a small tmpfs made by the
//! test, and ingest runs until the filesystem is full.
//!
//! Promises guarded:
//! - a full disk answers 503 problem+json with code `storage_full`, and nothing in a
//!   refused request is counted: every event acknowledged before, during and after the
//!   full period is counted exactly once, and nothing else is;
//! - while full, reads (usage, balance), `/healthz` and `/metrics` keep answering and
//!   `/readyz` answers 503 with `storage_writable: false`;
//! - when space is freed, meterd resumes on its own (no restart, no operator action):
//!   `/readyz` turns 200 again without any ingest traffic, and ingest succeeds;
//! - counts stay exact after a SIGTERM restart and after a `kill -9` restart.
//!
//! Needs root (it mounts a tmpfs); it fails, rather than passing vacuously, without it.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use common::{Daemon, ADMIN, INGEST, READ};

/// Size of the tmpfs holding the data dir.
const FS_MIB: u64 = 200;
/// Space left free by the filler file before ingest starts.
const LEFT_MIB: u64 = 6;
const CONTRACT: &str = "disk-c";
const LEVER: &str = "calls";

/// A tmpfs mounted on a path; unmounted on drop.
struct Mount(PathBuf);

impl Mount {
    fn tmpfs(at: &Path, mib: u64) -> Mount {
        std::fs::create_dir_all(at).unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o"])
            .arg(format!("size={mib}m,mode=0755"))
            .arg("tmpfs")
            .arg(at)
            .output()
            .expect("run mount");
        assert!(
            out.status.success(),
            "mounting a {mib} MiB tmpfs on {at:?} failed (this test needs root): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Mount(at.to_path_buf())
    }

    /// Free bytes on the filesystem (statvfs through `df`, no libc in tests).
    fn free_bytes(&self) -> u64 {
        let out = Command::new("df")
            .args(["--output=avail", "-B1"])
            .arg(&self.0)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .nth(1)
            .and_then(|l| l.trim().parse().ok())
            .unwrap_or(0)
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Writes a filler file that leaves about `left` bytes free.
fn fill(mount: &Mount, path: &Path, left: u64) {
    let free = mount.free_bytes();
    let size = free.saturating_sub(left);
    let f = std::fs::File::create(path).unwrap();
    // Real blocks, not a sparse file: tmpfs charges written pages only.
    let chunk = vec![0xA5u8; 1 << 20];
    let mut w = std::io::BufWriter::new(f);
    let mut written = 0u64;
    while written < size {
        let n = chunk.len().min((size - written) as usize);
        std::io::Write::write_all(&mut w, &chunk[..n]).unwrap();
        written += n as u64;
    }
    std::io::Write::flush(&mut w).unwrap();
}

/// The error and recovery lines of RocksDB's own log, for diagnostics.
fn rocksdb_log_errors(data: &Path) -> String {
    std::fs::read_to_string(data.join("LOG"))
        .unwrap_or_default()
        .lines()
        .filter(|l| {
            l.contains("rror")
                || l.contains("ecover")
                || l.contains("space")
                || l.contains("Resume")
        })
        .map(|l| format!("{l}\n"))
        .collect()
}

fn batch(tag: &str, from: u64, n: u64) -> Value {
    Value::Array(
        (from..from + n)
            .map(|i| {
                json!({"id": format!("{tag}-{i:08}-{}", "x".repeat(40)),
                       "contract": CONTRACT, "lever": LEVER, "value": 1})
            })
            .collect(),
    )
}

/// Sends `POST /v1/events` with `body` twice, then `GET /v1/levers`, on one kept-alive
/// connection; returns the three statuses (0 where no answer came).
fn one_connection(d: &Daemon, body: &Value) -> Vec<u16> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(d.base.trim_start_matches("http://")).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let body = serde_json::to_vec(body).unwrap();
    let post = format!(
        "POST /v1/events HTTP/1.1\r\nHost: meterd\r\nAuthorization: Bearer {INGEST}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    let get =
        format!("GET /v1/levers HTTP/1.1\r\nHost: meterd\r\nAuthorization: Bearer {READ}\r\n\r\n");
    let mut statuses = Vec::new();
    let mut buf: Vec<u8> = Vec::new();
    for req in [&post, &post, &get] {
        if s.write_all(req.as_bytes()).is_err() || (req == &post && s.write_all(&body).is_err()) {
            statuses.push(0);
            continue;
        }
        // One answer: the head, then its content-length body.
        let mut chunk = [0u8; 8192];
        let status = loop {
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                let len: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .and_then(|v| v.trim().parse().ok())
                    .unwrap_or(0);
                while buf.len() < end + 4 + len {
                    match s.read(&mut chunk) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                let status = head
                    .split_whitespace()
                    .nth(1)
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0);
                buf.drain(..(end + 4 + len).min(buf.len()));
                break status;
            }
            match s.read(&mut chunk) {
                Ok(0) | Err(_) => break 0,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        statuses.push(status);
    }
    statuses
}

/// Total of the contract's lever over all time, from the API.
fn counted(d: &Daemon) -> u64 {
    d.day_total(CONTRACT, LEVER)
}

fn status(d: &Daemon, path: &str) -> (u16, Value) {
    let r = d.client.get(d.url(path)).send().expect("request");
    let s = r.status().as_u16();
    (
        s,
        serde_json::from_str(&r.text().unwrap()).unwrap_or(Value::Null),
    )
}

#[test]
fn full_disk_refuses_cleanly_and_resumes_on_its_own() {
    let dir = std::sync::Arc::new(tempfile::tempdir().unwrap());
    let mount = Mount::tmpfs(&dir.path().join("data"), FS_MIB);
    let config = dir.path().join("meterd.toml");
    // Small memtables so RocksDB flushes SST files into the small filesystem too.
    std::fs::write(&config, common::config_text("", "")).unwrap();
    let mut d = Daemon::spawn(dir.clone(), config.clone());
    d.lever(LEVER, "sum");
    d.contract(CONTRACT);

    let filler = mount.0.join("filler");
    fill(&mount, &filler, LEFT_MIB << 20);

    // Ingest 500-event batches until the disk refuses.
    let mut acked = 0u64;
    let mut next = 0u64;
    let mut refused: Option<Value> = None;
    let mut refused_batch = None;
    let deadline = Instant::now() + Duration::from_secs(120);
    while Instant::now() < deadline {
        let body = batch("fill", next, 500);
        let (s, b) = d.post_events(&body);
        match s {
            200 => {
                let accepted = b["accepted"].as_u64().unwrap_or_else(|| panic!("{b}"));
                assert_eq!(accepted, 500, "{b}");
                acked += accepted;
                next += 500;
            }
            503 => {
                refused = Some(b);
                refused_batch = Some(body);
                break;
            }
            other => panic!("unexpected status {other} while filling: {b}"),
        }
    }
    let refused = refused.expect("the disk never filled");
    assert_eq!(refused["code"], "storage_full", "{refused}");
    assert_eq!(refused["status"], 503, "{refused}");
    assert!(acked > 0, "nothing was accepted before the disk filled");
    let refused_batch = refused_batch.unwrap();

    // While full: more refusals, reads, health, metrics; not ready.
    for _ in 0..5 {
        let (s, b) = d.post_events(&batch("more", next, 10));
        assert_eq!(s, 503, "{b}");
        assert_eq!(b["code"], "storage_full", "{b}");
    }
    // A 503 leaves a kept-alive connection usable: two refusals and a read on one.
    let answers = one_connection(&d, &batch("kept", next, 10));
    assert_eq!(answers, [503, 503, 200], "answers on one connection");
    assert_eq!(counted(&d), acked, "refused events were counted");
    let (s, b) = d.req(
        "GET",
        &format!("/v1/contracts/{CONTRACT}/balance"),
        Some(READ),
        None,
    );
    assert_eq!(s, 200, "{b}");
    let (s, b) = d.req("GET", &format!("/v1/levers/{LEVER}"), Some(READ), None);
    assert_eq!(s, 200, "{b}");
    assert_eq!(status(&d, "/healthz").0, 200);
    let (s, b) = status(&d, "/readyz");
    assert_eq!(s, 503, "{b}");
    assert_eq!(b["storage_writable"], false, "{b}");
    assert!(d.metrics_text().contains("meterd_ingest"));
    // An admin write fails cleanly too (problem+json, no panic).
    let (s, b) = d.req(
        "PUT",
        "/v1/contracts/disk-new",
        Some(ADMIN),
        Some(&json!({"customer": "c"})),
    );
    assert!(s == 503 || s == 201, "{s} {b}");

    // Free the space; with no traffic at all, meterd must become ready again.
    std::fs::remove_file(&filler).unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (s, b) = status(&d, "/readyz");
        if s == 200 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not ready 60 s after space was freed: {b}\n{}\nRocksDB LOG (errors):\n{}",
            d.logs(),
            rocksdb_log_errors(&mount.0)
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    // The refused batch, re-sent, is accepted in full (none of it was kept).
    let (s, b) = d.post_events(&refused_batch);
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["accepted"], 500, "{b}");
    acked += 500;
    next += 500;
    for _ in 0..10 {
        let (s, b) = d.post_events(&batch("after", next, 500));
        assert_eq!(s, 200, "{b}");
        assert_eq!(b["accepted"], 500, "{b}");
        acked += 500;
        next += 500;
    }
    assert_eq!(counted(&d), acked);

    // Exact across a clean restart and a crash.
    assert_eq!(d.terminate(), Some(0), "{}", d.logs());
    d = Daemon::spawn(dir.clone(), config.clone());
    assert_eq!(counted(&d), acked);
    let (s, b) = d.post_events(&batch("crash", 0, 500));
    assert_eq!(s, 200, "{b}");
    acked += 500;
    d.kill9();
    d = Daemon::spawn(dir.clone(), config);
    assert_eq!(counted(&d), acked);
    // Re-sending everything is all duplicates.
    let (s, b) = d.post_events(&refused_batch);
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["duplicates"], 500, "{b}");
    assert_eq!(counted(&d), acked);
    drop(d);
    drop(mount);
}
