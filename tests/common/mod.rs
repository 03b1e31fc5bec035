//! Test harness: runs the real `meterd` binary on 127.0.0.1:0 with a temporary data dir.
#![allow(dead_code)]

pub mod cluster;
pub mod nats;
pub mod pyenv;

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

/// Development keys of the default tenant (see config/meterd.toml).
pub const ADMIN: &str = "dev-admin-key";
/// Ingest key of the default tenant.
pub const INGEST: &str = "dev-ingest-key";
/// Read key of the default tenant.
pub const READ: &str = "dev-read-key";
/// Admin key of the second tenant ("other").
pub const OTHER_ADMIN: &str = "other-admin-key";
/// Ingest key of the second tenant.
pub const OTHER_INGEST: &str = "other-ingest-key";
/// Read key of the second tenant.
pub const OTHER_READ: &str = "other-read-key";

fn sha(k: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(k.as_bytes()))
}

/// Builds a config with two tenants (`default`, `other`), three keys each, and `extra`
/// appended (top-level keys must come first, so `top` is inserted before the tables).
pub fn config_text(top: &str, extra: &str) -> String {
    let mut s = String::new();
    s.push_str("listen = \"127.0.0.1:0\"\nmetrics_listen = \"127.0.0.1:0\"\n");
    s.push_str("flush_interval = \"200ms\"\n");
    s.push_str(top);
    s.push('\n');
    for (tenant, keys) in [
        (
            "default",
            [(ADMIN, "admin"), (INGEST, "ingest"), (READ, "read")],
        ),
        (
            "other",
            [
                (OTHER_ADMIN, "admin"),
                (OTHER_INGEST, "ingest"),
                (OTHER_READ, "read"),
            ],
        ),
    ] {
        for (k, role) in keys {
            s.push_str(&format!(
                "[[api_keys]]\ntenant = \"{tenant}\"\nrole = \"{role}\"\nsha256 = \"{}\"\n\n",
                sha(k)
            ));
        }
    }
    s.push_str(extra);
    s
}

/// A running daemon.
pub struct Daemon {
    pub child: Option<Child>,
    pub dir: Arc<tempfile::TempDir>,
    pub config: PathBuf,
    pub base: String,
    pub metrics: String,
    pub client: reqwest::blocking::Client,
    pub stderr: Arc<Mutex<String>>,
}

impl Daemon {
    /// Starts a daemon with the default test config.
    pub fn start() -> Daemon {
        Self::start_with("", "")
    }

    /// Starts a daemon with extra top-level settings and tables.
    pub fn start_with(top: &str, extra: &str) -> Daemon {
        let dir = Arc::new(tempfile::tempdir().expect("tempdir"));
        let config = dir.path().join("meterd.toml");
        std::fs::write(&config, config_text(top, extra)).unwrap();
        Self::spawn(dir, config)
    }

    /// Starts a daemon on an existing data dir and config (a restart).
    pub fn spawn(dir: Arc<tempfile::TempDir>, config: PathBuf) -> Daemon {
        let data = dir.path().join("data");
        let mut child = Command::new(env!("CARGO_BIN_EXE_meterd"))
            .arg("serve")
            .arg("--config")
            .arg(&config)
            .arg("--data-dir")
            .arg(&data)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn meterd");
        let stdout = child.stdout.take().unwrap();
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(String::new()));
        {
            let log = log.clone();
            std::thread::spawn(move || {
                let mut r = BufReader::new(stderr);
                let mut line = String::new();
                while r.read_line(&mut line).map(|n| n > 0).unwrap_or(false) {
                    log.lock().unwrap().push_str(&line);
                    line.clear();
                }
            });
        }
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut r = BufReader::new(stdout);
            let mut line = String::new();
            while r.read_line(&mut line).map(|n| n > 0).unwrap_or(false) {
                if line.contains("listening on") {
                    let _ = tx.send(line.clone());
                }
                line.clear();
            }
        });
        let line = match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(l) => l,
            Err(_) => {
                let _ = child.kill();
                panic!("meterd did not start: {}", log.lock().unwrap());
            }
        };
        // "meterd listening on http://A (metrics on http://B)"
        let mut urls = line
            .split_whitespace()
            .filter(|w| w.contains("http://"))
            .map(|w| w.trim_matches(|c| c == '(' || c == ')').to_string());
        let base = urls.next().unwrap();
        let metrics = urls.next().unwrap();
        let client = reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(60))
            .pool_max_idle_per_host(64)
            .build()
            .unwrap();
        let d = Daemon {
            child: Some(child),
            dir,
            config,
            base,
            metrics,
            client,
            stderr: log,
        };
        d.wait_ready();
        d
    }

    /// Waits for /readyz to answer 200.
    pub fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if let Ok(r) = self.client.get(format!("{}/readyz", self.base)).send() {
                if r.status() == 200 {
                    return;
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("meterd not ready: {}", self.stderr.lock().unwrap());
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// Sends a request with a key and optional JSON body; returns (status, JSON body).
    pub fn req(
        &self,
        method: &str,
        path: &str,
        key: Option<&str>,
        body: Option<&Value>,
    ) -> (u16, Value) {
        let m = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let mut rb = self.client.request(m, self.url(path));
        if let Some(k) = key {
            rb = rb.bearer_auth(k);
        }
        if let Some(b) = body {
            rb = rb
                .header("content-type", "application/json")
                .body(serde_json::to_vec(b).unwrap());
        }
        let r = rb.send().expect("request");
        let status = r.status().as_u16();
        let text = r.text().unwrap_or_default();
        let v = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        (status, v)
    }

    /// Sends a raw body with a content type.
    pub fn raw(&self, path: &str, key: &str, content_type: &str, body: Vec<u8>) -> (u16, Value) {
        let r = self
            .client
            .post(self.url(path))
            .bearer_auth(key)
            .header("content-type", content_type)
            .body(body)
            .send()
            .expect("request");
        let status = r.status().as_u16();
        let text = r.text().unwrap_or_default();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    /// POSTs events (a JSON value: object or array) with the ingest key.
    pub fn post_events(&self, body: &Value) -> (u16, Value) {
        self.req("POST", "/v1/events", Some(INGEST), Some(body))
    }

    /// Creates a lever in the default tenant.
    pub fn lever(&self, name: &str, aggregation: &str) {
        let (s, b) = self.req(
            "PUT",
            &format!("/v1/levers/{name}"),
            Some(ADMIN),
            Some(&serde_json::json!({"aggregation": aggregation, "unit": "u"})),
        );
        assert!(s == 200 || s == 201, "{s} {b}");
    }

    /// Creates a contract in the default tenant.
    pub fn contract(&self, id: &str) {
        let (s, b) = self.req(
            "PUT",
            &format!("/v1/contracts/{id}"),
            Some(ADMIN),
            Some(&serde_json::json!({"customer": "cus_1"})),
        );
        assert!(s == 200 || s == 201, "{s} {b}");
    }

    /// GETs usage with the read key.
    pub fn usage(&self, contract: &str, query: &str) -> Value {
        let (s, b) = self.req(
            "GET",
            &format!("/v1/contracts/{contract}/usage?{query}"),
            Some(READ),
            None,
        );
        assert_eq!(s, 200, "{b}");
        b
    }

    /// Whole-number total of a `sum` lever of a contract over the last two days (day
    /// rows, stored plus unflushed), with the read key.
    pub fn day_total(&self, contract: &str, lever: &str) -> u64 {
        let from = time_at(-2 * 86_400_000);
        let v = self.usage(contract, &format!("lever={lever}&window=day&from={from}"));
        v["items"]
            .as_array()
            .unwrap_or_else(|| panic!("unexpected usage body {v}"))
            .iter()
            .map(|r| {
                let s = r["value"].as_str().unwrap_or_else(|| panic!("{r}"));
                s.parse::<u64>()
                    .unwrap_or_else(|_| panic!("not a whole number: {r}"))
            })
            .sum()
    }

    /// Scrapes /metrics.
    pub fn metrics_text(&self) -> String {
        self.client
            .get(format!("{}/metrics", self.metrics))
            .send()
            .unwrap()
            .text()
            .unwrap()
    }

    /// Kills the daemon with SIGKILL.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Sends SIGTERM and waits for exit; returns the exit code.
    pub fn terminate(&mut self) -> Option<i32> {
        let mut c = self.child.take()?;
        unsafe_sigterm(c.id());
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(Some(st)) = c.try_wait() {
                return st.code();
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                panic!("meterd did not stop after SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Restarts on the same data dir and config (after kill9 or terminate).
    pub fn restart(&mut self) {
        self.kill9();
        let d = Daemon::spawn(self.dir.clone(), self.config.clone());
        *self = d;
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub fn dir_path(&self) -> &Path {
        self.dir.path()
    }

    pub fn logs(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Sends SIGTERM using the `kill` command (no libc dependency in tests).
pub fn unsafe_sigterm(pid: u32) {
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(pid.to_string())
        .status();
}

/// Reads a whole child pipe.
pub fn read_all(mut r: impl Read) -> String {
    let mut s = String::new();
    let _ = r.read_to_string(&mut s);
    s
}

/// Current time as RFC 3339 (UTC), shifted by `offset_ms`.
pub fn time_at(offset_ms: i64) -> String {
    let t = chrono::Utc::now() + chrono::Duration::milliseconds(offset_ms);
    t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// Value of the sample `series` (name with labels, exactly as exported) in a /metrics
/// text.
pub fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        let rest = l.strip_prefix(series)?;
        rest.strip_prefix(' ')?.trim().parse().ok()
    })
}
