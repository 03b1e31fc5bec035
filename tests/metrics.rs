//! Every metric is exposed from start (SPEC 7): a fresh daemon's `/metrics` has every
//! metric name defined in `src/` (every `"meterd_…"` string literal) and every series of
//! `telemetry::zero::families`, counters at 0 and histograms empty; and a daemon driven
//! through ingest outcomes, rejections, quota decisions, webhook failures and a drop, a
//! backup and error answers exposes no series it did not expose at start.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::{Duration, Instant};

use common::{sample, time_at, Daemon, ADMIN, READ};
use meterd::telemetry::names;
use meterd::telemetry::zero::{families, Kind};
use serde_json::json;

/// Every `"meterd_…"` string literal in the sources under `src/`.
fn names_in_sources() -> BTreeSet<String> {
    fn walk(dir: &Path, out: &mut BTreeSet<String>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(&p, out);
                continue;
            }
            if p.extension().is_none_or(|x| x != "rs") {
                continue;
            }
            let text = std::fs::read_to_string(&p).unwrap();
            for (i, _) in text.match_indices("\"meterd_") {
                let rest = &text[i + 1..];
                let name = &rest[..rest.find('"').unwrap()];
                if name.len() > "meterd_".len()
                    && name
                        .bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
                {
                    out.insert(name.to_string());
                }
            }
        }
    }
    let mut out = BTreeSet::new();
    walk(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src"), &mut out);
    out
}

/// Samples of a scrape: series (name and labels, as exported) -> value.
fn samples(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let (series, v) = l.rsplit_once(' ').unwrap();
            (series.to_string(), v.parse().unwrap())
        })
        .collect()
}

/// `# TYPE` of each metric name in a scrape.
fn types(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .map(|l| {
            let (n, t) = l.split_once(' ').unwrap();
            (n.to_string(), t.to_string())
        })
        .collect()
}

fn series_name(name: &str, labels: &[(&str, &str)], extra: Option<&str>) -> String {
    let mut parts: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
    parts.extend(extra.map(str::to_string));
    if parts.is_empty() {
        name.to_string()
    } else {
        format!("{name}{{{}}}", parts.join(","))
    }
}

#[test]
fn fresh_daemon_exposes_every_metric_at_zero() {
    let d = Daemon::start();
    let text = d.metrics_text();
    let got = samples(&text);
    let typed = types(&text);

    // Every metric name the code defines is exposed, with a sample (cluster mode's
    // `meterd_cluster_*` series only in cluster mode: tests/cluster.rs checks those).
    let defined = names_in_sources();
    assert!(defined.len() >= 40, "{defined:?}");
    for n in defined.iter().filter(|n| !n.starts_with("meterd_cluster_")) {
        assert!(
            typed.contains_key(n),
            "{n} (defined in src/) is not exposed by a fresh daemon:\n{text}"
        );
    }
    // And nothing else is.
    for n in typed.keys() {
        assert!(
            defined.contains(n),
            "{n} is exposed but not defined in src/"
        );
    }

    // Every series of every family, with its type; counters at 0 and histograms
    // without observations, except what the start itself did: the harness polls
    // /readyz, scrapes are open connections, flushes and quota folds run on a timer,
    // and the scrape-time gauges read the store.
    let started = ["readyz"];
    for f in families() {
        let want = match f.kind {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        };
        assert_eq!(
            typed.get(f.name).map(String::as_str),
            Some(want),
            "{}",
            f.name
        );
        for labels in &f.series {
            let touched = labels
                .iter()
                .any(|(k, v)| *k == "route" && started.contains(v));
            match f.kind {
                Kind::Counter => {
                    let s = series_name(f.name, labels, None);
                    let v = got
                        .get(&s)
                        .unwrap_or_else(|| panic!("{s} missing:\n{text}"));
                    if !touched {
                        assert_eq!(*v, 0.0, "{s} on a fresh daemon");
                    }
                }
                Kind::Gauge => {
                    let s = series_name(f.name, labels, None);
                    assert!(got.contains_key(&s), "{s} missing:\n{text}");
                }
                Kind::Histogram => {
                    let count = series_name(&format!("{}_count", f.name), labels, None);
                    let sum = series_name(&format!("{}_sum", f.name), labels, None);
                    let inf =
                        series_name(&format!("{}_bucket", f.name), labels, Some("le=\"+Inf\""));
                    for s in [&count, &sum, &inf] {
                        assert!(got.contains_key(s), "{s} missing:\n{text}");
                    }
                    assert_eq!(got[&count], got[&inf], "{count}");
                }
            }
        }
    }
    // The series of the alerts and of the brief that used to appear only after their
    // first increment, at 0; histograms with no observations are exposed in full.
    for s in [
        "meterd_webhook_dropped_total",
        "meterd_http_shed_requests_total",
        "meterd_flush_errors_total",
        "meterd_backups_total{outcome=\"ok\"}",
        "meterd_backups_total{outcome=\"error\"}",
        "meterd_quota_threshold_crossings_total",
        "meterd_webhook_attempts_total{outcome=\"delivered\"}",
        "meterd_webhook_attempts_total{outcome=\"failed\"}",
        "meterd_quota_rows",
        "meterd_webhook_outbox_depth",
        "meterd_http_requests_total{route=\"events\",status=\"500\"}",
        "meterd_ingest_rejected_events_total{code=\"quota_exceeded\"}",
        "meterd_quota_decisions_total{outcome=\"rejected\",mode=\"hard\"}",
        "meterd_http_refused_connections_total{listener=\"api\"}",
    ] {
        assert_eq!(sample(&text, s), Some(0.0), "{s} in\n{text}");
    }
    for h in [names::WEBHOOK_DELIVERY_SECONDS, names::INGEST_BATCH_EVENTS] {
        let lines: Vec<(&String, &f64)> = got
            .iter()
            .filter(|(k, _)| k.starts_with(&format!("{h}_")))
            .collect();
        assert!(lines.len() >= 8, "{h}: {lines:?}");
        for (k, v) in lines {
            assert_eq!(*v, 0.0, "{k}");
        }
    }
}

/// Polls `f` every 50 ms until it is true or `timeout` passes.
fn until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    f()
}

#[test]
fn no_series_appears_after_start() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let backups = tempfile::tempdir().unwrap();
    let top = format!(
        "webhook_retry_initial = \"50ms\"\nwebhook_retry_max = \"100ms\"\n\
         webhook_timeout = \"1s\"\nwebhook_max_age = \"100ms\"\nbackup_dir = {:?}\n",
        backups.path().join("b").display().to_string()
    );
    let tenants = format!(
        "[[tenants]]\nname = \"default\"\nthresholds = [100]\n\
         webhook_url = \"http://127.0.0.1:{closed}/hook\"\n\
         webhook_secret = \"whsec_test_0123456789abcdef\"\n"
    );
    let d = Daemon::start_with(&top, &tenants);
    let fresh = samples(&d.metrics_text());

    d.lever("calls", "sum");
    d.contract("free");
    for (id, mode) in [("hard", "hard"), ("soft", "soft")] {
        let (s, b) = d.req(
            "PUT",
            &format!("/v1/contracts/{id}"),
            Some(ADMIN),
            Some(&json!({"customer": "cus", "quotas": [
                {"lever": "calls", "period": "month", "limit": 1, "mode": mode}
            ]})),
        );
        assert!(s == 200 || s == 201, "{s} {b}");
    }
    let ev = |id: &str, contract: &str| json!({"id": id, "contract": contract, "lever": "calls", "value": 1});
    let (s, b) = d.post_events(&json!([
        ev("a", "free"),
        ev("a", "free"),
        ev("u", "nope"),
        {"id": "l", "contract": "free", "lever": "nope"},
        {"id": "t1", "contract": "free", "lever": "calls", "time": time_at(-3 * 3_600_000)},
        {"id": "t2", "contract": "free", "lever": "calls", "time": time_at(3_600_000)},
        {"id": "i", "contract": "free"},
        ev("h1", "hard"),
        ev("s1", "soft"),
    ]));
    assert_eq!(s, 200, "{b}");
    let (s, b) = d.post_events(&json!([ev("h2", "hard"), ev("s2", "soft")]));
    assert_eq!(s, 200, "{b}");
    assert_eq!(
        (b["accepted"].as_u64(), b["rejected"].as_u64()),
        (Some(1), Some(1)),
        "{b}"
    );
    let from = time_at(-3_600_000);
    for path in [
        "/v1/levers".to_string(),
        "/v1/levers/calls".to_string(),
        "/v1/contracts".to_string(),
        "/v1/contracts/free".to_string(),
        format!("/v1/contracts/free/usage?from={from}"),
        "/v1/contracts/free/balance".to_string(),
        "/v1/contracts/free/grants".to_string(),
        "/v1/contracts/free/adjustments".to_string(),
        "/v1/changes".to_string(),
        format!("/v1/usage?from={from}"),
        "/v1/plans".to_string(),
        "/v1/nothing".to_string(),
    ] {
        d.req("GET", &path, Some(READ), None);
    }
    d.req("GET", "/v1/levers", Some("wrong"), None);
    d.req("DELETE", "/v1/levers", Some(ADMIN), None);
    d.req("GET", "/openapi.json", None, None);
    let r = d
        .client
        .post(format!("{}/backup", d.metrics))
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 201);
    // Both crossings (hard and soft quota at 100%) are dropped: the receiver refuses.
    assert!(
        until(Duration::from_secs(20), || {
            let t = d.metrics_text();
            sample(&t, "meterd_webhook_dropped_total").is_some_and(|n| n >= 1.0)
                && sample(&t, "meterd_webhook_outbox_depth") == Some(0.0)
        }),
        "the notifications were not dropped:\n{}",
        d.logs()
    );

    let later = samples(&d.metrics_text());
    let new: Vec<&String> = later.keys().filter(|k| !fresh.contains_key(*k)).collect();
    assert!(
        new.is_empty(),
        "series that a fresh daemon did not expose (not registered at 0): {new:?}"
    );
    // The drive reached the series it meant to.
    for s in [
        "meterd_ingest_rejected_events_total{code=\"too_late\"}",
        "meterd_ingest_rejected_events_total{code=\"too_early\"}",
        "meterd_ingest_rejected_events_total{code=\"invalid_event\"}",
        "meterd_ingest_rejected_events_total{code=\"quota_exceeded\"}",
        "meterd_quota_decisions_total{outcome=\"overage\",mode=\"soft\"}",
        "meterd_quota_decisions_total{outcome=\"allowed\",mode=\"hard\"}",
        "meterd_webhook_attempts_total{outcome=\"failed\"}",
        "meterd_backups_total{outcome=\"ok\"}",
        "meterd_http_requests_total{route=\"unauthorized\",status=\"401\"}",
        "meterd_http_requests_total{route=\"levers\",status=\"405\"}",
    ] {
        assert!(
            later.get(s).is_some_and(|v| *v >= 1.0),
            "{s}: {:?}",
            later.get(s)
        );
    }
}
