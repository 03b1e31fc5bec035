//! Operations artefacts in `deploy/`: the Prometheus alert rules and their unit tests
//! (promtool), meterd's live `/metrics` against `promtool check metrics`, a real Prometheus
//! server scraping a real meterd (and firing `MeterdWebhookDropped` on the first dropped
//! notification), and the systemd unit (`systemd-analyze verify`).
//!
//! `promtool` and `prometheus` come from Debian's `prometheus` package, installed with
//! apt-get by the first test that needs them when they are missing.

mod common;

use std::io::Write;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::{Daemon, ADMIN, INGEST};
use serde_json::{json, Value};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Finds an executable on PATH (or in /usr/bin, /usr/sbin).
fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/bin"), PathBuf::from("/usr/sbin")])
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

static INSTALL: Mutex<()> = Mutex::new(());

/// Returns the paths of `promtool` and `prometheus`, installing Debian's `prometheus`
/// package when either is missing. Panics with a clear message when that fails.
fn prometheus_tools() -> (PathBuf, PathBuf) {
    let _guard = INSTALL.lock().unwrap_or_else(|e| e.into_inner());
    if let (Some(t), Some(p)) = (which("promtool"), which("prometheus")) {
        return (t, p);
    }
    eprintln!("promtool/prometheus missing: installing Debian's prometheus package");
    let update = Command::new("apt-get")
        .arg("update")
        .output()
        .expect("running apt-get update (is apt-get available?)");
    assert!(
        update.status.success(),
        "apt-get update failed, cannot install promtool:\n{}",
        String::from_utf8_lossy(&update.stderr)
    );
    let install = Command::new("apt-get")
        .args(["install", "-y", "prometheus"])
        .env("DEBIAN_FRONTEND", "noninteractive")
        .output()
        .expect("running apt-get install prometheus");
    assert!(
        install.status.success(),
        "apt-get install -y prometheus failed, cannot test deploy/prometheus:\n{}\n{}",
        String::from_utf8_lossy(&install.stdout),
        String::from_utf8_lossy(&install.stderr)
    );
    match (which("promtool"), which("prometheus")) {
        (Some(t), Some(p)) => (t, p),
        _ => panic!("the prometheus package is installed but promtool/prometheus not found"),
    }
}

fn show(o: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn promtool(args: &[&str]) -> Output {
    let (tool, _) = prometheus_tools();
    Command::new(tool)
        .args(args)
        .current_dir(root())
        .output()
        .expect("running promtool")
}

#[test]
fn alert_rules_are_valid() {
    let o = promtool(&["check", "rules", "deploy/prometheus/alerts.yml"]);
    assert!(o.status.success(), "promtool check rules: {}", show(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("SUCCESS"), "{}", show(&o));
}

#[test]
fn alert_rule_unit_tests_pass() {
    let o = promtool(&["test", "rules", "deploy/prometheus/alerts_test.yml"]);
    assert!(o.status.success(), "promtool test rules: {}", show(&o));
}

/// Every alert in alerts.yml has a severity and both annotations, and a unit test.
#[test]
fn every_alert_is_documented_and_tested() {
    let rules = std::fs::read_to_string(root().join("deploy/prometheus/alerts.yml")).unwrap();
    let tests = std::fs::read_to_string(root().join("deploy/prometheus/alerts_test.yml")).unwrap();
    let blocks: Vec<&str> = rules.split("- alert: ").skip(1).collect();
    assert!(blocks.len() >= 9, "expected at least 9 alerts");
    for b in blocks {
        let name = b.lines().next().unwrap().trim();
        for key in ["severity:", "summary:", "description:"] {
            assert!(b.contains(key), "alert {name} has no {key}");
        }
        assert!(
            tests.contains(&format!("alertname: {name}\n")),
            "alert {name} has no promtool unit test"
        );
    }
}

/// Drives a few requests (ingest, usage, errors) so counters and histograms exist.
fn exercise(d: &Daemon) {
    d.lever("api_calls", "sum");
    d.contract("ctr_1");
    for i in 0..5 {
        let (s, b) = d.post_events(&json!([{
            "id": format!("ev-{i}"), "contract": "ctr_1", "lever": "api_calls", "value": 1
        }]));
        assert_eq!(s, 200, "{b}");
    }
    // A rejected event and an auth failure, so labelled error series exist too.
    let _ =
        d.post_events(&json!([{"id": "bad", "contract": "ctr_1", "lever": "nope", "value": 1}]));
    let _ = d.req("GET", "/v1/levers", Some("wrong-key"), None);
    let _ = d.req("GET", "/v1/levers", Some(ADMIN), None);
    let _ = d.req("GET", "/v1/levers", Some(INGEST), None);
    let from = common::time_at(-3_600_000);
    let (s, b) = d.req(
        "GET",
        &format!("/v1/contracts/ctr_1/usage?from={from}&window=none"),
        Some(common::READ),
        None,
    );
    assert_eq!(s, 200, "{b}");
    // Let a flush run (flush_interval is 200ms in tests).
    std::thread::sleep(Duration::from_millis(600));
}

#[test]
fn live_metrics_pass_promtool_check_metrics() {
    let (tool, _) = prometheus_tools();
    let d = Daemon::start();
    exercise(&d);
    let text = d.metrics_text();
    for m in [
        "meterd_http_requests_total",
        "meterd_http_request_duration_seconds_bucket",
        "meterd_ready_state",
    ] {
        assert!(text.contains(m), "{m} missing from /metrics:\n{text}");
    }
    let mut child = Command::new(tool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running promtool check metrics");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let o = child.wait_with_output().unwrap();
    let problems = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(
        o.status.success() && problems.trim().is_empty(),
        "promtool check metrics found problems in meterd's /metrics:\n{}\n--- /metrics ---\n{text}",
        show(&o)
    );
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Kills the child on drop.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_prometheus(bin: &Path, dir: &Path, target: &str, port: u16) -> KillOnDrop {
    let config = dir.join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
             rule_files:\n  - {}\n\
             scrape_configs:\n  - job_name: meterd\n    scrape_interval: 1s\n    \
             static_configs:\n      - targets: ['{target}']\n",
            root().join("deploy/prometheus/alerts.yml").display()
        ),
    )
    .unwrap();
    let child = Command::new(bin)
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("tsdb").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("prometheus.log")).unwrap())
        .spawn()
        .expect("starting prometheus");
    KillOnDrop(child)
}

#[test]
fn prometheus_scrapes_meterd() {
    let (_, bin) = prometheus_tools();
    let d = Daemon::start();
    exercise(&d);
    let target = d.metrics.trim_start_matches("http://").to_string();
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut prom = start_prometheus(&bin, dir.path(), &target, port);
    let client = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let url = format!("http://127.0.0.1:{port}/api/v1/query?query=meterd_ready_state");
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut last = String::new();
    loop {
        if let Ok(Some(st)) = prom.0.try_wait() {
            panic!(
                "prometheus exited early ({st}):\n{}",
                std::fs::read_to_string(dir.path().join("prometheus.log")).unwrap_or_default()
            );
        }
        if let Ok(r) = client.get(&url).send() {
            last = r.text().unwrap_or_default();
            if let Ok(v) = serde_json::from_str::<Value>(&last) {
                let result = &v["data"]["result"];
                if let Some(first) = result.as_array().and_then(|a| a.first()) {
                    assert_eq!(first["metric"]["job"], "meterd", "{last}");
                    assert_eq!(first["metric"]["instance"], target.as_str(), "{last}");
                    if first["value"][1] == "1" {
                        break;
                    }
                }
            }
        }
        if Instant::now() > deadline {
            panic!(
                "prometheus did not report meterd_ready_state 1 within 30 s; last answer: {last}\n{}",
                std::fs::read_to_string(dir.path().join("prometheus.log")).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    // The rules loaded into the real server too, and none of them fires on a healthy meterd.
    let rules: Value = client
        .get(format!("http://127.0.0.1:{port}/api/v1/rules"))
        .send()
        .unwrap()
        .json()
        .unwrap();
    let groups = rules["data"]["groups"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(groups.len(), 1, "{rules}");
    let firing: Vec<&Value> = groups[0]["rules"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["state"] == "firing")
        .collect();
    assert!(
        firing.is_empty(),
        "alerts firing on a healthy meterd: {firing:?}"
    );
    drop(prom);
}

/// Runs a Prometheus query; the `result` array of the answer (empty on any failure).
fn prom_query(client: &reqwest::blocking::Client, port: u16, query: &str) -> Vec<Value> {
    client
        .get(format!("http://127.0.0.1:{port}/api/v1/query"))
        .query(&[("query", query)])
        .send()
        .ok()
        .and_then(|r| r.json::<Value>().ok())
        .and_then(|v| v["data"]["result"].as_array().cloned())
        .unwrap_or_default()
}

/// The value of the first sample of a query result, as a number.
fn first_value(result: &[Value]) -> Option<f64> {
    result.first()?["value"][1].as_str()?.parse().ok()
}

/// The shipped `MeterdWebhookDropped` rule, unchanged (`increase(...[1h]) > 0`, no
/// `for:`), fires in a real Prometheus on the first notification a real meterd drops:
/// the counter is exposed at 0 from start, so the first drop is a step from 0 to 1 that
/// `increase()` sees. (A counter that first appeared at 1 would never fire this alert.)
#[test]
fn webhook_dropped_alert_fires_on_the_first_drop() {
    let (_, bin) = prometheus_tools();
    // A webhook to a closed port: every attempt is refused at once; the notification is
    // dropped at the first failure past webhook_max_age (100ms), within about 150ms.
    let hook = format!(
        "[[tenants]]\nname = \"default\"\nthresholds = [100]\n\
         webhook_url = \"http://127.0.0.1:{}/hook\"\n\
         webhook_secret = \"whsec_test_0123456789abcdef\"\n",
        free_port()
    );
    let top = "webhook_retry_initial = \"50ms\"\nwebhook_retry_max = \"100ms\"\n\
               webhook_timeout = \"1s\"\nwebhook_max_age = \"100ms\"\n";
    let d = Daemon::start_with(top, &hook);
    d.lever("api_calls", "sum");
    let (s, b) = d.req(
        "PUT",
        "/v1/contracts/ctr_q",
        Some(ADMIN),
        Some(&json!({"customer": "cus_q", "quotas": [
            {"lever": "api_calls", "period": "month", "limit": 1, "mode": "hard"}
        ]})),
    );
    assert!(s == 200 || s == 201, "{s} {b}");

    let target = d.metrics.trim_start_matches("http://").to_string();
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut prom = start_prometheus(&bin, dir.path(), &target, port);
    let prom_log =
        || std::fs::read_to_string(dir.path().join("prometheus.log")).unwrap_or_default();
    let client = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    // At least two scrapes before the drop, so the series has samples at 0 whatever
    // meterd exposes (the alert then shows whether the first drop is seen).
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(Some(st)) = prom.0.try_wait() {
            panic!("prometheus exited early ({st}):\n{}", prom_log());
        }
        let up = prom_query(&client, port, "count_over_time(up{job=\"meterd\"}[1m])");
        if first_value(&up).is_some_and(|n| n >= 2.0) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "prometheus did not scrape meterd twice within 30 s:\n{}",
            prom_log()
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    let before = prom_query(&client, port, "meterd_webhook_dropped_total");

    // One crossing of the 100% threshold -> one notification -> one drop.
    let (s, b) = d.post_events(&json!([{
        "id": "q-1", "contract": "ctr_q", "lever": "api_calls", "value": 1
    }]));
    assert_eq!((s, b["accepted"].as_u64()), (200, Some(1)), "{b}");
    let deadline = Instant::now() + Duration::from_secs(20);
    while common::sample(&d.metrics_text(), "meterd_webhook_dropped_total") != Some(1.0) {
        assert!(
            Instant::now() < deadline,
            "the notification was not dropped:\n{}",
            d.logs()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let dropped = Instant::now();

    let deadline = dropped + Duration::from_secs(30);
    let alert = loop {
        let alerts: Value = client
            .get(format!("http://127.0.0.1:{port}/api/v1/alerts"))
            .send()
            .and_then(|r| r.json())
            .unwrap_or(Value::Null);
        let found = alerts["data"]["alerts"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|a| a["labels"]["alertname"] == "MeterdWebhookDropped" && a["state"] == "firing")
            .cloned();
        if let Some(a) = found {
            break a;
        }
        if Instant::now() > deadline {
            let history = prom_query(&client, port, "meterd_webhook_dropped_total[1m]");
            panic!(
                "MeterdWebhookDropped did not fire within 30 s of the first drop.\n\
                 meterd_webhook_dropped_total before the drop: {before:?}\n\
                 its samples over the last minute: {history:?}\nalerts: {alerts}"
            );
        }
        std::thread::sleep(Duration::from_millis(250));
    };
    eprintln!(
        "MeterdWebhookDropped fired {:.1} s after the drop (scrape and evaluation every 1 s)",
        dropped.elapsed().as_secs_f64()
    );
    assert_eq!(alert["labels"]["instance"], target.as_str(), "{alert}");
    assert_eq!(alert["labels"]["severity"], "warning", "{alert}");
    let value: f64 = alert["value"].as_str().unwrap().parse().unwrap();
    assert!(
        (1.0..2.0).contains(&value),
        "increase over the window: {alert}"
    );
    // Exactly one notification was dropped, and Prometheus saw it start at 0.
    assert_eq!(
        common::sample(&d.metrics_text(), "meterd_webhook_dropped_total"),
        Some(1.0)
    );
    assert_eq!(first_value(&before), Some(0.0), "{before:?}");
    drop(prom);
}

#[test]
fn systemd_unit_verifies() {
    let Some(analyze) = which("systemd-analyze") else {
        eprintln!("note: systemd-analyze not found; skipping the check of deploy/meterd.service");
        return;
    };
    // The unit runs /usr/local/bin/meterd, which is not installed here: verify a copy
    // whose ExecStart points at the binary under test, everything else unchanged.
    let unit = std::fs::read_to_string(root().join("deploy/meterd.service")).unwrap();
    assert!(unit.contains("ExecStart=/usr/local/bin/meterd "), "{unit}");
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("meterd.service");
    std::fs::write(
        &copy,
        unit.replace("/usr/local/bin/meterd", env!("CARGO_BIN_EXE_meterd")),
    )
    .unwrap();
    let o = Command::new(analyze)
        .arg("verify")
        .arg(&copy)
        .output()
        .expect("running systemd-analyze");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        o.status.success() && !err.contains("meterd.service"),
        "systemd-analyze verify deploy/meterd.service: {}",
        show(&o)
    );
}

/// Static checks of the container artefacts (they are not built here: no image registry).
#[test]
fn container_artefacts_are_consistent() {
    let docker = std::fs::read_to_string(root().join("deploy/Dockerfile")).unwrap();
    for want in [
        "FROM rust:1.88-bookworm AS builder",
        "libclang-dev",
        // The build flags of .cargo/config.toml reach the image's build too.
        "COPY .cargo ./.cargo",
        "FROM debian:bookworm-slim",
        "USER 10001",
        "HEALTHCHECK",
        "/healthz",
        "EXPOSE 8080 9090",
        "VOLUME [\"/var/lib/meterd\"]",
    ] {
        assert!(docker.contains(want), "deploy/Dockerfile lacks {want}");
    }
    let k8s = std::fs::read_to_string(root().join("deploy/kubernetes/meterd.yaml")).unwrap();
    for want in [
        "kind: StatefulSet",
        "volumeClaimTemplates:",
        "path: /readyz",
        "path: /healthz",
        "kind: Service\n",
        "kind: PodDisruptionBudget",
        "kind: ServiceMonitor",
    ] {
        assert!(
            k8s.contains(want),
            "deploy/kubernetes/meterd.yaml lacks {want:?}"
        );
    }
    // The grace period must exceed shutdown_grace (30s) so SIGTERM can drain and flush.
    let grace: u64 = k8s
        .lines()
        .find_map(|l| l.trim().strip_prefix("terminationGracePeriodSeconds:"))
        .expect("terminationGracePeriodSeconds")
        .trim()
        .parse()
        .unwrap();
    assert!(grace > 30, "terminationGracePeriodSeconds {grace} <= 30");
}

/// Every metric the Grafana dashboard queries exists in a live meterd's `/metrics`.
#[test]
fn grafana_dashboard_uses_only_real_metrics() {
    let text = std::fs::read_to_string(root().join("deploy/grafana/meterd.json")).unwrap();
    let dash: Value = serde_json::from_str(&text).expect("meterd.json is valid JSON");
    assert!(
        dash["uid"].as_str().is_some_and(|u| !u.is_empty()),
        "dashboard has no uid"
    );
    assert_eq!(dash["title"], "meterd");
    let panels = dash["panels"].as_array().expect("dashboard has panels");
    assert!(panels.len() >= 12, "expected at least 12 panels");

    let mut names = std::collections::BTreeSet::new();
    for p in panels {
        for t in p["targets"].as_array().into_iter().flatten() {
            let Some(expr) = t["expr"].as_str() else {
                continue;
            };
            let bytes = expr.as_bytes();
            let ident = |c: u8| c.is_ascii_alphanumeric() || c == b'_' || c == b':';
            let mut i = 0;
            while i < bytes.len() {
                if ident(bytes[i]) {
                    let start = i;
                    while i < bytes.len() && ident(bytes[i]) {
                        i += 1;
                    }
                    let word = &expr[start..i];
                    if word.starts_with("meterd_") {
                        let base = ["_bucket", "_sum", "_count"]
                            .iter()
                            .find_map(|s| word.strip_suffix(s))
                            .unwrap_or(word);
                        names.insert(base.to_string());
                    }
                } else {
                    i += 1;
                }
            }
        }
    }
    assert!(
        !names.is_empty(),
        "no meterd_ metrics found in the dashboard"
    );

    // A webhook to a closed port (attempts fail, then drop after 1s) and a small in-flight
    // limit, so the labelled webhook and shed counters exist too.
    let hook = format!(
        "[[tenants]]\nname = \"default\"\nthresholds = [100]\n\
         webhook_url = \"http://127.0.0.1:{}/hook\"\n\
         webhook_secret = \"whsec_test_0123456789abcdef\"\n",
        free_port()
    );
    let top = "webhook_retry_initial = \"50ms\"\nwebhook_retry_max = \"200ms\"\n\
               webhook_timeout = \"1s\"\nwebhook_max_age = \"1s\"\n\
               max_in_flight = 2\nbody_read_timeout = \"20s\"\n";
    let d = Daemon::start_with(top, &hook);
    exercise(&d);
    let (s, b) = d.req(
        "PUT",
        "/v1/contracts/ctr_q",
        Some(ADMIN),
        Some(&json!({"customer": "cus_q", "quotas": [
            {"lever": "api_calls", "period": "month", "limit": 1, "mode": "hard"}
        ]})),
    );
    assert!(s == 200 || s == 201, "{s} {b}");
    let (s, b) = d.post_events(&json!([{
        "id": "q-1", "contract": "ctr_q", "lever": "api_calls", "value": 1
    }]));
    assert_eq!(s, 200, "{b}");
    // Hold two ingest requests open mid-body so the next request is shed with 429.
    let addr = d.base.trim_start_matches("http://").to_string();
    let held: Vec<std::net::TcpStream> = (0..2)
        .map(|_| {
            let mut s = std::net::TcpStream::connect(&addr).unwrap();
            let head = format!(
                "POST /v1/events HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {INGEST}\r\n\
                 Content-Type: application/json\r\nContent-Length: 100\r\n\r\n["
            );
            s.write_all(head.as_bytes()).unwrap();
            s
        })
        .collect();
    // Wait on the metrics listener (no in-flight slot) until both are held: a probe on
    // the API would hold a slot for a moment, and a held request arriving then would be
    // shed instead of held.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !d
        .metrics_text()
        .lines()
        .any(|l| l == "meterd_http_in_flight_requests 2")
    {
        assert!(Instant::now() < deadline, "requests were never held");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        d.req("GET", "/v1/levers", Some(common::READ), None).0,
        429,
        "a request past max_in_flight was not shed"
    );
    drop(held);
    let deadline = Instant::now() + Duration::from_secs(20);
    let live = loop {
        let live = d.metrics_text();
        let dropped = common::sample(&live, "meterd_webhook_dropped_total");
        if dropped.is_some_and(|n| n >= 1.0) || Instant::now() > deadline {
            break live;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let exposed: std::collections::BTreeSet<&str> = live
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| l.split(['{', ' ']).next())
        .collect();
    let missing: Vec<&String> = names
        .iter()
        .filter(|n| {
            ![n.to_string(), format!("{n}_bucket"), format!("{n}_count")]
                .iter()
                .any(|m| exposed.contains(m.as_str()))
        })
        .collect();
    assert!(
        missing.is_empty(),
        "dashboard queries metrics meterd does not expose: {missing:?}\n--- /metrics ---\n{live}"
    );
}
