//! Black-box tests of operations (SPEC 7, 8): health and readiness on both listeners,
//! Prometheus metrics (names, HELP lines, bounded labels, only on the metrics listener),
//! SIGTERM draining and exit 0 with no data loss, `check-config` and `serve` exit codes
//! for valid and invalid configuration, the development-key warning, and logs without
//! colour codes when stderr is not a terminal.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{sample, time_at, unsafe_sigterm, Daemon, ADMIN, INGEST, READ};
use serde_json::{json, Value};

fn shipped_config() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("config/meterd.toml")
}

/// A `meterd` command with no METERD_*, RUST_LOG or NO_COLOR variables inherited.
fn meterd() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_meterd"));
    for v in [
        "METERD_CONFIG",
        "METERD_LISTEN",
        "METERD_METRICS_LISTEN",
        "METERD_DATA_DIR",
        "RUST_LOG",
        "NO_COLOR",
    ] {
        c.env_remove(v);
    }
    c
}

fn run(cmd: &mut Command) -> Output {
    cmd.stdin(Stdio::null()).output().expect("run meterd")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn from_param() -> String {
    time_at(-3_600_000 + 60_000)
}

#[test]
fn health_and_readiness_on_both_listeners() {
    let d = Daemon::start();
    for base in [&d.base, &d.metrics] {
        let r = d.client.get(format!("{base}/healthz")).send().unwrap();
        assert_eq!(r.status().as_u16(), 200, "{base}/healthz");
        assert_eq!(r.json::<Value>().unwrap()["status"], "ok");
        let r = d.client.get(format!("{base}/readyz")).send().unwrap();
        assert_eq!(r.status().as_u16(), 200, "{base}/readyz");
        assert_eq!(r.json::<Value>().unwrap()["status"], "ready");
    }
    // /metrics belongs to the metrics listener only; the API does not leak it.
    let r = d.client.get(d.url("/metrics")).send().unwrap();
    assert_eq!(r.status().as_u16(), 404);
    let r = d
        .client
        .get(d.url("/metrics"))
        .bearer_auth(ADMIN)
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 404);
    // The metrics listener serves no API.
    let r = d
        .client
        .get(format!("{}/v1/levers", d.metrics))
        .bearer_auth(ADMIN)
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 404);
    let r = d
        .client
        .post(format!("{}/v1/events", d.metrics))
        .bearer_auth(INGEST)
        .body("{}")
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 404);
}

#[test]
fn request_path_metrics_count_every_request() {
    // The request path's metric handles are cached per worker thread: every request
    // must still count once, whichever thread serves it.
    let d = Daemon::start();
    d.lever("calls", "sum");
    d.contract("ctr");
    let rounds = 40;
    for i in 0..rounds {
        let (s, b) = d.post_events(&json!([
            {"id": format!("e-{i}"), "contract": "ctr", "lever": "calls"},
            {"id": format!("e-{i}"), "contract": "ctr", "lever": "calls"},
            {"id": format!("u-{i}"), "contract": "nope", "lever": "calls"}
        ]));
        assert_eq!(
            (s, &b["accepted"], &b["rejected"]),
            (200, &json!(1), &json!(1)),
            "{b}"
        );
        assert_eq!(
            d.req("GET", "/v1/contracts/ctr/balance", Some(READ), None)
                .0,
            200
        );
    }
    let t = d.metrics_text();
    let n = f64::from(rounds);
    for (series, want) in [
        (r#"meterd_ingest_events_total{outcome="accepted"}"#, n),
        (r#"meterd_ingest_events_total{outcome="duplicate"}"#, n),
        (r#"meterd_ingest_events_total{outcome="rejected"}"#, n),
        (
            r#"meterd_ingest_rejected_events_total{code="unknown_contract"}"#,
            n,
        ),
        ("meterd_dedupe_hits_total", n),
        ("meterd_ingest_batch_size_events_count", n),
        ("meterd_ingest_batch_size_events_sum", 3.0 * n),
        (
            r#"meterd_http_requests_total{route="events",status="200"}"#,
            n,
        ),
        (
            r#"meterd_http_requests_total{route="contract_balance",status="200"}"#,
            n,
        ),
        (
            r#"meterd_http_request_duration_seconds_count{route="events"}"#,
            n,
        ),
        (
            r#"meterd_quota_decisions_total{outcome="allowed",mode="unlimited"}"#,
            n,
        ),
    ] {
        assert_eq!(sample(&t, series), Some(want), "{series} in\n{t}");
    }
}

#[test]
fn request_ids_are_echoed_or_generated() {
    let d = Daemon::start();
    let get = |id: Option<&str>| {
        let mut rb = d.client.get(d.url("/v1/levers")).bearer_auth(READ);
        if let Some(id) = id {
            rb = rb.header("x-request-id", id);
        }
        let r = rb.send().unwrap();
        assert_eq!(r.status().as_u16(), 200);
        r.headers()["x-request-id"].to_str().unwrap().to_string()
    };
    let fresh = |v: &str| v.len() == 16 && v.bytes().all(|b| b.is_ascii_hexdigit());
    let a = get(None);
    let b = get(None);
    assert!(fresh(&a) && fresh(&b) && a != b, "{a} {b}");
    // Echoed when 1-64 characters of [A-Za-z0-9-_.:], replaced otherwise.
    let longest = "a".repeat(64);
    for id in ["x", "trace-1_2.3:4", longest.as_str()] {
        assert_eq!(get(Some(id)), id);
    }
    for id in ["a".repeat(65), "has space".into(), "semi;colon".into()] {
        let v = get(Some(&id));
        assert!(fresh(&v), "{id:?} -> {v:?}");
    }
}

#[test]
fn metrics_are_named_described_and_bounded() {
    let d = Daemon::start();
    let contract = "ctr-7f3a9c-secret";
    let customer = "cus-9b2c41-secret";
    let event = "evt-51d0e8-secret";
    let bucket = "bkt-a4e6f2-secret";
    let unknown = "nope-c3d9b7-secret";
    d.lever("calls", "sum");
    let (s, _) = d.req(
        "PUT",
        &format!("/v1/contracts/{contract}"),
        Some(ADMIN),
        Some(&json!({"customer": customer})),
    );
    assert_eq!(s, 201);
    let (s, b) = d.post_events(&json!([
        {"id": event, "contract": contract, "lever": "calls", "bucket": bucket},
        {"id": format!("{event}-2"), "contract": unknown, "lever": "calls"},
        {"id": event, "contract": contract, "lever": "calls"}
    ]));
    assert_eq!(s, 200, "{b}");
    assert_eq!(
        (
            b["accepted"].as_u64(),
            b["duplicates"].as_u64(),
            b["rejected"].as_u64()
        ),
        (Some(1), Some(1), Some(1))
    );
    let from = from_param();
    assert_eq!(
        d.req(
            "GET",
            &format!("/v1/contracts/{contract}/usage?from={from}"),
            Some(READ),
            None
        )
        .0,
        200
    );
    assert_eq!(
        d.req(
            "GET",
            &format!("/v1/contracts/{unknown}/usage?from={from}"),
            Some(READ),
            None
        )
        .0,
        404
    );
    assert_eq!(
        d.req("GET", &format!("/v1/contracts/{unknown}"), Some(READ), None)
            .0,
        404
    );
    assert_eq!(
        d.req("GET", &format!("/v1/{unknown}"), Some(READ), None).0,
        404
    );
    assert_eq!(d.req("GET", &format!("/{unknown}"), None, None).0, 404);

    let names = [
        "meterd_ingest_events_total",
        "meterd_http_requests_total",
        "meterd_journal_fsync_duration_seconds",
        "meterd_flush_duration_seconds",
        "meterd_quota_fold_duration_seconds",
        "meterd_store_background_jobs",
    ];
    // The flush histogram appears after the first flush (every 200 ms in tests), the
    // quota fold's about a second after the first accepted event.
    let deadline = Instant::now() + Duration::from_secs(10);
    let text = loop {
        let r = d
            .client
            .get(format!("{}/metrics", d.metrics))
            .send()
            .unwrap();
        assert_eq!(r.status().as_u16(), 200);
        let ct = r.headers()["content-type"].to_str().unwrap().to_string();
        assert!(ct.starts_with("text/plain"), "{ct}");
        let text = r.text().unwrap();
        if names.iter().all(|n| text.contains(n)) || Instant::now() > deadline {
            break text;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    for n in names {
        assert!(
            text.lines().any(|l| l.starts_with(&format!("# HELP {n} "))),
            "no HELP line for {n}:\n{text}"
        );
        assert!(
            text.lines().any(|l| l.starts_with(&format!("# TYPE {n} "))),
            "no TYPE line for {n}:\n{text}"
        );
        assert!(
            text.lines()
                .any(|l| l.starts_with(n) && !l.starts_with('#')),
            "no sample of {n}"
        );
    }
    assert!(
        text.lines()
            .any(|l| l.starts_with("meterd_ingest_events_total{")
                && l.contains("outcome=\"accepted\"")),
        "{text}"
    );
    for kind in ["flush", "compaction"] {
        let line = format!("meterd_store_background_jobs{{kind=\"{kind}\"}} ");
        let v = text
            .lines()
            .find_map(|l| l.strip_prefix(&line))
            .unwrap_or_else(|| panic!("no {line}in\n{text}"));
        let v: f64 = v.trim().parse().unwrap();
        assert!((0.0..=2.0).contains(&v), "{line}{v}");
    }
    // Bounded label values only: no tenant-chosen identifier anywhere.
    for secret in [contract, customer, event, bucket, unknown] {
        assert!(
            !text.contains(secret),
            "{secret:?} appears in /metrics:\n{text}"
        );
    }
    // Every meterd metric follows the naming scheme and is described.
    for line in text.lines().filter(|l| l.starts_with("# TYPE ")) {
        let name = line.split_whitespace().nth(2).unwrap();
        assert!(name.starts_with("meterd_"), "{line}");
        assert!(
            text.contains(&format!("# HELP {name} ")),
            "metric {name} is not described"
        );
    }
}

#[test]
fn sigterm_drains_and_loses_nothing() {
    let mut d = Daemon::start();
    d.lever("calls", "sum");
    d.contract("ctr");
    for i in 0..20 {
        let (s, b) = d.post_events(
            &json!({"id": format!("t{i}"), "contract": "ctr", "lever": "calls", "value": i}),
        );
        assert_eq!(s, 200, "{b}");
    }
    // A request whose body is still arriving when SIGTERM comes is drained, not dropped.
    let body =
        json!({"id": "inflight", "contract": "ctr", "lever": "calls", "value": 1000}).to_string();
    let mut s = TcpStream::connect(d.base.trim_start_matches("http://")).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let head = format!(
        "POST /v1/events HTTP/1.1\r\nHost: m\r\nAuthorization: Bearer {INGEST}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).unwrap();
    s.write_all(&body.as_bytes()[..10]).unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let mut child = d.child.take().unwrap();
    unsafe_sigterm(child.id());
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        child.try_wait().unwrap().is_none(),
        "exited before draining the open request"
    );
    s.write_all(&body.as_bytes()[10..]).unwrap();
    let mut resp = String::new();
    let _ = s.read_to_string(&mut resp);
    assert!(
        resp.starts_with("HTTP/1.1 200"),
        "in-flight request during shutdown: {resp}"
    );
    assert!(resp.contains("\"accepted\":1"), "{resp}");
    let deadline = Instant::now() + Duration::from_secs(30);
    let code = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st.code();
        }
        assert!(
            Instant::now() < deadline,
            "meterd did not exit after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(
        code,
        Some(0),
        "exit code after SIGTERM; logs:\n{}",
        d.logs()
    );

    d.restart();
    let from = from_param();
    let u = d.usage("ctr", &format!("from={from}&lever=calls"));
    assert_eq!(u["items"][0]["value"], "1190", "{u}");
    let (s, b) = d.post_events(&json!([
        {"id": "t0", "contract": "ctr", "lever": "calls"},
        {"id": "inflight", "contract": "ctr", "lever": "calls"}
    ]));
    assert_eq!((s, b["duplicates"].as_u64()), (200, Some(2)), "{b}");

    // A plain SIGTERM right after acknowledged writes: exit 0, everything kept.
    for i in 0..10 {
        let (s, _) = d.post_events(
            &json!({"id": format!("u{i}"), "contract": "ctr", "lever": "calls", "value": "0.5"}),
        );
        assert_eq!(s, 200);
    }
    assert_eq!(d.terminate(), Some(0));
    d.restart();
    let u = d.usage("ctr", &format!("from={from}&lever=calls"));
    assert_eq!(u["items"][0]["value"], "1195", "{u}");
}

/// A request that never completes cannot hold shutdown beyond `shutdown_grace`.
#[test]
fn sigterm_exits_within_the_grace_period() {
    let mut d = Daemon::start_with("shutdown_grace = \"1s\"\nbody_read_timeout = \"60s\"\n", "");
    d.lever("calls", "sum");
    d.contract("ctr");
    let (s, _) = d.post_events(&json!({"id": "g1", "contract": "ctr", "lever": "calls"}));
    assert_eq!(s, 200);
    let mut stuck = TcpStream::connect(d.base.trim_start_matches("http://")).unwrap();
    let head = format!(
        "POST /v1/events HTTP/1.1\r\nHost: m\r\nAuthorization: Bearer {INGEST}\r\nContent-Length: 100\r\n\r\n{{\"id\""
    );
    stuck.write_all(head.as_bytes()).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let started = Instant::now();
    assert_eq!(d.terminate(), Some(0), "logs:\n{}", d.logs());
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(8),
        "shutdown took {took:?} with a 1s grace period"
    );
    drop(stuck);
    d.restart();
    let u = d.usage("ctr", &format!("from={}&lever=calls", from_param()));
    assert_eq!(u["items"][0]["value"], "1", "{u}");
}

/// SIGINT (Ctrl-C) stops as gracefully as SIGTERM.
#[test]
fn sigint_is_a_graceful_stop_too() {
    let mut d = Daemon::start();
    d.lever("calls", "sum");
    d.contract("ctr");
    let (s, _) =
        d.post_events(&json!({"id": "i1", "contract": "ctr", "lever": "calls", "value": 3}));
    assert_eq!(s, 200);
    let mut child = d.child.take().unwrap();
    let _ = Command::new("kill")
        .arg("-INT")
        .arg(child.id().to_string())
        .status();
    let deadline = Instant::now() + Duration::from_secs(30);
    let code = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st.code();
        }
        assert!(
            Instant::now() < deadline,
            "meterd did not exit after SIGINT"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(code, Some(0), "logs:\n{}", d.logs());
    d.restart();
    let u = d.usage("ctr", &format!("from={}&lever=calls", from_param()));
    assert_eq!(u["items"][0]["value"], "3", "{u}");
}

#[test]
fn check_config_exit_codes() {
    let o = run(meterd()
        .args(["check-config", "--config"])
        .arg(shipped_config()));
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("valid"));

    let dir = tempfile::tempdir().unwrap();
    let cases = [
        ("durability = \"sometimes\"\n", "durability"),
        ("bogus_key = 1\n", "bogus_key"),
        ("flush_interval = \"soon\"\n", "flush_interval"),
        (
            "lateness = \"2h\"\ndedupe_retention = \"1h\"\n",
            "dedupe_retention",
        ),
        ("shards = \"many\"\n", "shards"),
        ("max_body_bytes = 10\n", "max_body_bytes"),
        ("listen = \"nowhere\"\n", "listen"),
        (
            "[[api_keys]]\ntenant = \"t\"\nrole = \"root\"\nsha256 = \"00\"\n",
            "api_keys[0].role",
        ),
        (
            "[[api_keys]]\ntenant = \"t\"\nrole = \"admin\"\nsha256 = \"dev-admin-key\"\n",
            "api_keys[0].sha256",
        ),
        (
            "[[levers]]\ntenant = \"t\"\nname = \"x\"\naggregation = \"median\"\n",
            "levers[0].aggregation",
        ),
        ("listen = \n", "bad10.toml"),
        ("[[levers]\n", "bad11.toml"),
    ];
    for (i, (text, key)) in cases.iter().enumerate() {
        let path = dir.path().join(format!("bad{i}.toml"));
        std::fs::write(&path, text).unwrap();
        let o = run(meterd().args(["check-config", "--config"]).arg(&path));
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(64), "{text:?}: {err}");
        assert!(
            err.contains(key),
            "{text:?}: stderr does not name `{key}`: {err}"
        );
        assert!(
            err.contains(&format!("bad{i}.toml")),
            "{text:?}: stderr does not name the file: {err}"
        );
    }
    let o = run(meterd()
        .args(["check-config", "--config"])
        .arg(dir.path().join("missing.toml")));
    assert_eq!(o.status.code(), Some(64), "{}", stderr(&o));
    // METERD_CONFIG is read when no flag is given.
    let o = run(meterd()
        .arg("check-config")
        .env("METERD_CONFIG", dir.path().join("bad0.toml")));
    assert_eq!(o.status.code(), Some(64), "{}", stderr(&o));
    let o = run(meterd()
        .arg("check-config")
        .env("METERD_CONFIG", shipped_config()));
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
}

#[test]
fn serve_refuses_invalid_config() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "durability = \"eventually\"\n").unwrap();
    let data = dir.path().join("data");
    let o = run(meterd()
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "127.0.0.1:0",
            "--config",
        ])
        .arg(&bad)
        .arg("--data-dir")
        .arg(&data));
    assert_eq!(o.status.code(), Some(64), "{}", stderr(&o));
    assert!(stderr(&o).contains("durability"), "{}", stderr(&o));
    // A flag value is validated too.
    let o = run(meterd()
        .args([
            "serve",
            "--listen",
            "not-an-address",
            "--metrics-listen",
            "127.0.0.1:0",
            "--config",
        ])
        .arg(shipped_config())
        .arg("--data-dir")
        .arg(&data));
    assert_eq!(o.status.code(), Some(64), "{}", stderr(&o));
    assert!(stderr(&o).contains("listen"), "{}", stderr(&o));
    // And an environment value.
    let o = run(meterd()
        .args(["serve", "--config"])
        .arg(shipped_config())
        .env("METERD_METRICS_LISTEN", "nowhere")
        .env("METERD_LISTEN", "127.0.0.1:0")
        .env("METERD_DATA_DIR", &data));
    assert_eq!(o.status.code(), Some(64), "{}", stderr(&o));
    assert!(stderr(&o).contains("metrics_listen"), "{}", stderr(&o));
}

/// A `serve` process whose stdout and stderr are collected in the background.
struct Served {
    child: Child,
    out: Arc<Mutex<String>>,
    err: Arc<Mutex<String>>,
}

impl Served {
    fn start(config: &std::path::Path, data: &std::path::Path, extra: &[&str]) -> Served {
        let mut child = meterd()
            .args(extra)
            .args([
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--metrics-listen",
                "127.0.0.1:0",
                "--config",
            ])
            .arg(config)
            .arg("--data-dir")
            .arg(data)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let collect = |pipe: Box<dyn Read + Send>| {
            let buf = Arc::new(Mutex::new(String::new()));
            let b = buf.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines() {
                    let Ok(line) = line else { break };
                    let mut b = b.lock().unwrap();
                    b.push_str(&line);
                    b.push('\n');
                }
            });
            buf
        };
        let out = collect(Box::new(child.stdout.take().unwrap()));
        let err = collect(Box::new(child.stderr.take().unwrap()));
        Served { child, out, err }
    }

    /// Waits until stdout announces the listeners.
    fn wait_listening(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !self.out.lock().unwrap().contains("listening on") {
            if let Some(st) = self.child.try_wait().unwrap() {
                panic!("meterd exited with {st}: {}", self.err.lock().unwrap());
            }
            assert!(Instant::now() < deadline, "meterd did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        // Let start-up logging settle.
        std::thread::sleep(Duration::from_millis(300));
    }

    fn stderr(&self) -> String {
        self.err.lock().unwrap().clone()
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn development_keys_are_warned_about() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = Served::start(&shipped_config(), &dir.path().join("data"), &[]);
    s.wait_listening();
    let err = s.stderr();
    assert!(
        err.to_lowercase().contains("development") && err.contains("WARN"),
        "no development-key warning on stderr:\n{err}"
    );
    drop(s);

    // With a real key there is no such warning.
    let cfg = dir.path().join("prod.toml");
    let key_hash = {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(b"a-real-production-key-0c8f3e"))
    };
    std::fs::write(
        &cfg,
        format!("[[api_keys]]\ntenant = \"default\"\nrole = \"admin\"\nsha256 = \"{key_hash}\"\n"),
    )
    .unwrap();
    let mut s = Served::start(&cfg, &dir.path().join("data2"), &[]);
    s.wait_listening();
    let err = s.stderr();
    assert!(
        !err.to_lowercase().contains("development"),
        "unexpected warning:\n{err}"
    );
    drop(s);

    // With --log-format json the warning is a JSON log record.
    let mut s = Served::start(
        &shipped_config(),
        &dir.path().join("data3"),
        &["--log-format", "json"],
    );
    s.wait_listening();
    let err = s.stderr();
    let records: Vec<Value> = err
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    assert!(
        records
            .iter()
            .any(|r| r["level"] == "WARN" && r.to_string().to_lowercase().contains("development")),
        "no JSON development-key warning:\n{err}"
    );
}

/// Logs written to a pipe or a file carry no ANSI colour codes (NO_COLOR unset: the
/// decision is stderr not being a terminal; `telemetry::use_ansi` has the unit test).
#[test]
fn logs_to_a_pipe_or_a_file_have_no_colour_codes() {
    let dir = tempfile::tempdir().unwrap();
    // A pipe (with the development-key warnings, which a terminal shows in colour).
    let mut s = Served::start(&shipped_config(), &dir.path().join("data"), &[]);
    s.wait_listening();
    let piped = s.stderr();
    drop(s);
    assert!(
        piped.contains("WARN") && piped.contains("INFO"),
        "expected warnings and info lines:\n{piped}"
    );
    assert!(
        !piped.contains("\x1b["),
        "ANSI codes in piped logs:\n{piped:?}"
    );

    // A file.
    let log = dir.path().join("meterd.log");
    let mut child = meterd()
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "127.0.0.1:0",
        ])
        .arg("--config")
        .arg(shipped_config())
        .arg("--data-dir")
        .arg(dir.path().join("data2"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    while !line.contains("listening on") {
        line.clear();
        if out.read_line(&mut line).unwrap_or(0) == 0 {
            break;
        }
    }
    unsafe_sigterm(child.id());
    let st = child.wait().unwrap();
    let text = std::fs::read_to_string(&log).unwrap();
    assert_eq!(st.code(), Some(0), "{text}");
    assert!(
        text.contains("WARN") && text.contains("INFO"),
        "expected warnings and info lines:\n{text}"
    );
    assert!(
        !text.contains("\x1b["),
        "ANSI codes in the log file:\n{text:?}"
    );
}
