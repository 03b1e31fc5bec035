//! Every metric series meterd exposes, with its closed label sets, registered at 0 when
//! the recorder is installed.
//!
//! A series that first appears with the value 1 hides its first increment from
//! Prometheus' `increase()` and `rate()` (they need two samples), so an alert such as
//! `increase(meterd_webhook_dropped_total[1h]) > 0` would miss the first dropped
//! notification. [`register_all`] therefore registers every counter, gauge and
//! histogram, for every value of its labels, before the daemon serves: counters and
//! gauges at 0, histograms with no observations (count 0, sum 0, every bucket 0; the
//! Prometheus exporter renders a registered histogram even when nothing was recorded).
//!
//! No metric has an unbounded label (tenant, contract, customer or event ids are never
//! labels), so nothing is left out. The label values below are the closed sets the code
//! uses; the tests of this module check them against the sources, and `tests/metrics.rs`
//! checks a fresh daemon's `/metrics` against [`families`] and against every `meterd_`
//! name in `src/`.

use super::names;

/// The closed sets of label values.
pub mod labels {
    use crate::error::RejectCode;

    /// `route` of the HTTP metrics: the API routes (`Route::label` in
    /// `src/http/router.rs`), then the fixed labels `dispatch` gives the other requests.
    pub const ROUTES: &[&str] = &[
        "events",
        "cloudevents",
        "changes",
        "usage",
        "levers",
        "lever",
        "contracts",
        "contract",
        "contract_end",
        "contract_usage",
        "contract_balance",
        "contract_grants",
        "contract_adjustments",
        "event",
        "plans",
        "plan",
        "healthz",
        "readyz",
        "openapi",
        "metrics",
        "backup",
        "unauthorized",
        "other",
    ];
    /// `status` of `meterd_http_requests_total` (`status_label` in
    /// `src/http/router.rs`): the statuses meterd answers, then classes for any other.
    pub const STATUSES: &[&str] = &[
        "200", "201", "204", "400", "401", "403", "404", "405", "408", "409", "413", "415", "429",
        "500", "503", "2xx", "4xx", "5xx",
    ];
    /// `outcome` of `meterd_ingest_events_total`.
    pub const INGEST_OUTCOMES: &[&str] = &["accepted", "duplicate", "rejected"];
    /// `code` of `meterd_ingest_rejected_events_total`: the per-event rejection codes
    /// ([`RejectCode`], in its order).
    pub const REJECTION_CODES: &[&str] = &{
        let mut out = [""; RejectCode::ALL.len()];
        let mut i = 0;
        while i < out.len() {
            out[i] = RejectCode::ALL[i].as_str();
            i += 1;
        }
        out
    };
    /// `(outcome, mode)` of `meterd_quota_decisions_total`: the pairs that occur
    /// (`Decision::labels`, and `rejected` by a hard quota).
    pub const QUOTA_DECISIONS: &[(&str, &str)] = &[
        ("allowed", "unlimited"),
        ("allowed", "hard"),
        ("allowed", "soft"),
        ("overage", "soft"),
        ("rejected", "hard"),
    ];
    /// `outcome` of `meterd_webhook_attempts_total`.
    pub const WEBHOOK_OUTCOMES: &[&str] = &["delivered", "failed"];
    /// `outcome` of `meterd_backups_total`.
    pub const BACKUP_OUTCOMES: &[&str] = &["ok", "error"];
    /// `kind` of `meterd_store_background_jobs`.
    pub const STORE_JOB_KINDS: &[&str] = &["flush", "compaction"];
    /// `kind` of `meterd_store_memory_bytes`.
    pub const STORE_MEMORY_KINDS: &[&str] = &["memtables", "block_cache", "table_readers"];
    /// `listener` of the connection metrics.
    pub const LISTENERS: &[&str] = &["api", "metrics"];
}

/// The type of a metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Only goes up.
    Counter,
    /// Set to the current value.
    Gauge,
    /// Observations in buckets.
    Histogram,
}

/// One label set: `(key, value)` pairs in the order the code records them.
pub type Labels = Vec<(&'static str, &'static str)>;

/// A metric and every label set it is exposed with.
#[derive(Debug, Clone)]
pub struct Family {
    /// Metric name.
    pub name: &'static str,
    /// Its type.
    pub kind: Kind,
    /// Every label set (one empty set for a metric without labels).
    pub series: Vec<Labels>,
}

fn plain(name: &'static str, kind: Kind) -> Family {
    Family {
        name,
        kind,
        series: vec![Vec::new()],
    }
}

fn by(name: &'static str, kind: Kind, key: &'static str, values: &[&'static str]) -> Family {
    Family {
        name,
        kind,
        series: values.iter().map(|v| vec![(key, *v)]).collect(),
    }
}

/// Every metric meterd exposes, with all its label sets.
pub fn families() -> Vec<Family> {
    use names::*;
    use Kind::{Counter, Gauge, Histogram};
    let requests = labels::ROUTES
        .iter()
        .flat_map(|r| {
            labels::STATUSES
                .iter()
                .map(move |s| vec![("route", *r), ("status", *s)])
        })
        .collect();
    let decisions = labels::QUOTA_DECISIONS
        .iter()
        .map(|(o, m)| vec![("outcome", *o), ("mode", *m)])
        .collect();
    vec![
        by(
            INGEST_EVENTS_TOTAL,
            Counter,
            "outcome",
            labels::INGEST_OUTCOMES,
        ),
        by(
            INGEST_REJECTED_TOTAL,
            Counter,
            "code",
            labels::REJECTION_CODES,
        ),
        plain(INGEST_BATCH_EVENTS, Histogram),
        Family {
            name: HTTP_REQUESTS_TOTAL,
            kind: Counter,
            series: requests,
        },
        by(HTTP_REQUEST_SECONDS, Histogram, "route", labels::ROUTES),
        plain(HTTP_SHED_TOTAL, Counter),
        plain(HTTP_IN_FLIGHT, Gauge),
        by(OPEN_CONNECTIONS, Gauge, "listener", labels::LISTENERS),
        by(
            REFUSED_CONNECTIONS_TOTAL,
            Counter,
            "listener",
            labels::LISTENERS,
        ),
        plain(JOURNAL_GROUP_SIZE, Histogram),
        plain(JOURNAL_FSYNC_SECONDS, Histogram),
        plain(JOURNAL_WRITE_SECONDS, Histogram),
        plain(FLUSH_SECONDS, Histogram),
        plain(FLUSH_ROWS_TOTAL, Counter),
        plain(FLUSH_ERRORS_TOTAL, Counter),
        plain(COUNTERS_PENDING, Gauge),
        plain(DEDUPE_INFLIGHT, Gauge),
        plain(DEDUPE_UNFLUSHED, Gauge),
        plain(READY, Gauge),
        Family {
            name: QUOTA_DECISIONS_TOTAL,
            kind: Counter,
            series: decisions,
        },
        plain(QUOTA_THRESHOLD_CROSSINGS_TOTAL, Counter),
        plain(WEBHOOK_OUTBOX_DEPTH, Gauge),
        by(
            WEBHOOK_ATTEMPTS_TOTAL,
            Counter,
            "outcome",
            labels::WEBHOOK_OUTCOMES,
        ),
        plain(WEBHOOK_DROPPED_TOTAL, Counter),
        plain(WEBHOOK_DELIVERY_SECONDS, Histogram),
        plain(QUOTA_ROWS, Gauge),
        plain(QUOTA_FOLD_SECONDS, Histogram),
        plain(DEDUPE_HITS_TOTAL, Counter),
        plain(FLUSH_LAG_SECONDS, Gauge),
        plain(STORE_SIZE_BYTES, Gauge),
        plain(STORE_PENDING_COMPACTION_BYTES, Gauge),
        by(
            STORE_BACKGROUND_JOBS,
            Gauge,
            "kind",
            labels::STORE_JOB_KINDS,
        ),
        plain(STORE_WRITE_STALL_SECONDS, Gauge),
        plain(STORE_WRITE_STOPPED, Gauge),
        plain(STORE_DELAYED_WRITE_RATE, Gauge),
        by(BACKUPS_TOTAL, Counter, "outcome", labels::BACKUP_OUTCOMES),
        plain(BACKUP_LAST_SUCCESS, Gauge),
        by(
            STORE_MEMORY_BYTES,
            Gauge,
            "kind",
            labels::STORE_MEMORY_KINDS,
        ),
        plain(PROCESS_RESIDENT_MEMORY, Gauge),
        plain(STORE_WINDOW_ROWS, Gauge),
    ]
}

/// The families only cluster mode records (registered by [`register_cluster`]).
pub fn cluster_families() -> Vec<Family> {
    use names::*;
    use Kind::{Counter, Gauge, Histogram};
    vec![
        // One series per partition, registered by `register_cluster`.
        by(CLUSTER_PARTITION_EPOCH, Gauge, "partition", &[]),
        by(CLUSTER_STANDBY_LAG, Gauge, "partition", &[]),
        by(CLUSTER_STANDBY_LAG_SECONDS, Gauge, "partition", &[]),
        plain(CLUSTER_PUBLISH_SECONDS, Histogram),
        plain(CLUSTER_APPEND_RETRIES_TOTAL, Counter),
        plain(CLUSTER_APPLIED_TOTAL, Counter),
        plain(CLUSTER_TAKEOVERS_TOTAL, Counter),
        plain(CLUSTER_GIVE_UPS_TOTAL, Counter),
        plain(CLUSTER_LEASE_RENEWALS_TOTAL, Counter),
        plain(CLUSTER_LEASE_LOSSES_TOTAL, Counter),
        plain(CLUSTER_FORWARDS_TOTAL, Counter),
    ]
}

/// Registers the series of [`cluster_families`] at 0, with one series per partition of
/// the per-partition gauges (cluster mode only: a single node does not show them).
pub fn register_cluster(partitions: u32) {
    register(cluster_families());
    for p in 0..partitions {
        let p = p.to_string();
        metrics::gauge!(names::CLUSTER_PARTITION_EPOCH, "partition" => p.clone()).set(0.0);
        metrics::gauge!(names::CLUSTER_STANDBY_LAG, "partition" => p.clone()).set(0.0);
        metrics::gauge!(names::CLUSTER_STANDBY_LAG_SECONDS, "partition" => p).set(0.0);
    }
}

/// Registers every series of [`families`] with the installed recorder without changing
/// any value: counters and gauges read 0 until first changed, histograms have no
/// observations. Idempotent; called once at start, before anything is recorded.
pub fn register_all() {
    register(families());
}

fn register(families: Vec<Family>) {
    for f in families {
        for labels in &f.series {
            match f.kind {
                Kind::Counter => metrics::counter!(f.name, labels).increment(0),
                Kind::Gauge => metrics::gauge!(f.name, labels).increment(0.0),
                Kind::Histogram => {
                    let _ = metrics::histogram!(f.name, labels);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};
    use std::path::Path;

    use super::*;
    use crate::quota::book::Decision;

    fn source(rel: &str) -> String {
        let p = Path::new(env!("CARGO_MANIFEST_DIR")).join(rel);
        std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
    }

    fn sources(dir: &Path, out: &mut Vec<(String, String)>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                sources(&p, out);
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push((
                    p.display().to_string(),
                    std::fs::read_to_string(&p).unwrap(),
                ));
            }
        }
    }

    /// Every `"meterd_…"` string literal in `src/` (the metric names the code defines).
    fn names_in_sources() -> BTreeSet<String> {
        let mut files = Vec::new();
        sources(
            &Path::new(env!("CARGO_MANIFEST_DIR")).join("src"),
            &mut files,
        );
        let mut found = BTreeSet::new();
        for (_, text) in files {
            for (i, _) in text.match_indices("\"meterd_") {
                let rest = &text[i + 1..];
                let end = rest.find('"').unwrap();
                let name = &rest[..end];
                if name.len() > "meterd_".len()
                    && name
                        .bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
                {
                    found.insert(name.to_string());
                }
            }
        }
        found
    }

    /// The body of the function whose signature starts with `sig` (up to the first line
    /// that is a lone `}` at the signature's indentation).
    fn body<'a>(text: &'a str, sig: &str) -> &'a str {
        let start = text.find(sig).unwrap_or_else(|| panic!("{sig} not found"));
        let indent = text[..start].rsplit('\n').next().unwrap().len();
        let close = format!("\n{}}}\n", " ".repeat(indent));
        let end = text[start..].find(&close).unwrap();
        &text[start..start + end]
    }

    /// String literals of lowercase letters, digits and `_` in `text` that are followed
    /// (after optional spaces/newlines) by one of `after`, and preceded by one of `before`.
    fn literals(text: &str, before: &[&str], after: &[&str]) -> BTreeSet<String> {
        let mut out = BTreeSet::new();
        let mut pos = 0;
        while let Some(i) = text[pos..].find('"').map(|i| pos + i) {
            let tail = &text[i + 1..];
            let Some(j) = closing_quote(tail) else { break };
            let lit = &tail[..j];
            let head = text[..i].trim_end();
            let next = tail[j + 1..].trim_start();
            if !lit.is_empty()
                && lit
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
                && before.iter().any(|b| head.ends_with(b))
                && after.iter().any(|a| next.starts_with(a))
            {
                out.insert(lit.to_string());
            }
            pos = i + 1 + j + 1;
        }
        out
    }

    /// Index of the quote closing a string literal whose text starts `tail`.
    fn closing_quote(tail: &str) -> Option<usize> {
        let b = tail.as_bytes();
        let mut k = 0;
        while k < b.len() {
            match b[k] {
                b'\\' => k += 2,
                b'"' => return Some(k),
                _ => k += 1,
            }
        }
        None
    }

    fn set(values: &[&str]) -> BTreeSet<String> {
        values.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn every_metric_name_in_the_sources_is_registered() {
        let all: Vec<Family> = families().into_iter().chain(cluster_families()).collect();
        let registered: BTreeSet<String> = all.iter().map(|f| f.name.to_string()).collect();
        let in_sources = names_in_sources();
        assert!(in_sources.len() >= 40, "{in_sources:?}");
        let missing: Vec<&String> = in_sources.difference(&registered).collect();
        assert!(
            missing.is_empty(),
            "metrics defined in src/ but not registered at 0 by telemetry::zero::families: \
             {missing:?}"
        );
        assert_eq!(all.len(), registered.len(), "a family is listed twice");
    }

    #[test]
    fn route_and_status_labels_match_the_router() {
        let router = source("src/http/router.rs");
        let mut routes = literals(body(&router, "fn label(&self)"), &["=>"], &[","]);
        routes.extend(literals(
            body(&router, "async fn dispatch("),
            &["(", "return ("],
            &[","],
        ));
        assert_eq!(routes, set(labels::ROUTES), "route labels in the router");
        let statuses = literals(body(&router, "fn status_label("), &["=>"], &[","]);
        assert_eq!(
            statuses,
            set(labels::STATUSES),
            "status labels in the router"
        );
    }

    #[test]
    fn rejection_codes_are_in_the_openapi() {
        // That they are exactly the closed enum of per-event codes is checked beside it
        // (`ingest::outcome`'s tests); here: the API documents the same codes.
        let openapi = source("openapi/openapi.json");
        for c in labels::REJECTION_CODES {
            assert!(
                openapi.contains(&format!("\"{c}\"")),
                "{c} not in the OpenAPI"
            );
        }
    }

    #[test]
    fn quota_decision_labels_match_ingest() {
        // An exhaustive match: a new variant fails to compile here until it is listed.
        let all = [
            Decision::Unlimited,
            Decision::WithinHard,
            Decision::WithinSoft,
            Decision::Overage,
        ];
        for d in all {
            match d {
                Decision::Unlimited
                | Decision::WithinHard
                | Decision::WithinSoft
                | Decision::Overage => {}
            }
        }
        let mut pairs: BTreeSet<(String, String)> = all
            .iter()
            .map(|d| {
                let (o, m) = d.labels();
                (o.to_string(), m.to_string())
            })
            .collect();
        // Literal pairs tallied in ingest (`tally.entry(("rejected", "hard"))`).
        let ingest = source("src/ingest/decide.rs");
        for (i, _) in ingest.match_indices("tally.entry((\"") {
            let rest = &ingest[i + "tally.entry((".len()..];
            let pair = &rest[..rest.find(')').unwrap()];
            let mut parts = pair
                .split(',')
                .map(|p| p.trim().trim_matches('"').to_string());
            pairs.insert((parts.next().unwrap(), parts.next().unwrap()));
        }
        let listed: BTreeSet<(String, String)> = labels::QUOTA_DECISIONS
            .iter()
            .map(|(o, m)| (o.to_string(), m.to_string()))
            .collect();
        assert_eq!(pairs, listed);
    }

    #[test]
    fn literal_labels_in_the_sources_are_listed() {
        // `"key" => "value"` in metric macros, and `("kind", "rocksdb.…")` pairs.
        let mut files = Vec::new();
        sources(
            &Path::new(env!("CARGO_MANIFEST_DIR")).join("src"),
            &mut files,
        );
        let mut by_key: BTreeMap<&str, BTreeSet<String>> = BTreeMap::new();
        for (path, text) in &files {
            if path.ends_with("telemetry/zero.rs") {
                continue;
            }
            for key in ["outcome", "kind", "listener"] {
                let vals = literals(text, &[&format!("\"{key}\" =>")], &[")", ","]);
                by_key.entry(key).or_default().extend(vals);
            }
        }
        let ops = source("src/ops.rs");
        let jobs = body(&ops, "pub fn set_gauges(");
        by_key
            .entry("kind")
            .or_default()
            .extend(literals(jobs, &["("], &[", \"rocksdb."]));
        let allowed: BTreeMap<&str, BTreeSet<String>> = [
            (
                "outcome",
                [labels::WEBHOOK_OUTCOMES, labels::BACKUP_OUTCOMES].concat(),
            ),
            (
                "kind",
                [labels::STORE_JOB_KINDS, labels::STORE_MEMORY_KINDS].concat(),
            ),
            ("listener", labels::LISTENERS.to_vec()),
        ]
        .into_iter()
        .map(|(k, v)| (k, set(&v)))
        .collect();
        for (key, vals) in &by_key {
            let extra: Vec<&String> = vals.difference(&allowed[key]).collect();
            assert!(extra.is_empty(), "{key} values not listed: {extra:?}");
        }
        assert_eq!(by_key["kind"], allowed["kind"]);
        assert_eq!(by_key["outcome"], allowed["outcome"]);
    }

    /// Renders what [`register_all`] registers, with meterd's exporter settings.
    fn render_fresh() -> String {
        let recorder = super::super::builder().unwrap().build_recorder();
        let handle = recorder.handle();
        metrics::with_local_recorder(&recorder, register_all);
        handle.render()
    }

    #[test]
    fn fresh_registry_renders_every_series_at_zero() {
        let text = render_fresh();
        let samples: BTreeMap<&str, &str> = text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
            .map(|l| l.rsplit_once(' ').unwrap())
            .collect();
        for (series, value) in &samples {
            assert_eq!(*value, "0", "{series} is not 0");
        }
        for f in families() {
            let kind = match f.kind {
                Kind::Counter => "counter",
                Kind::Gauge => "gauge",
                Kind::Histogram => "histogram",
            };
            assert!(
                text.contains(&format!("# TYPE {} {kind}\n", f.name)),
                "{} is not a {kind}:\n{text}",
                f.name
            );
            for labels in &f.series {
                let inner: Vec<String> =
                    labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
                let wrap = |extra: Option<&str>| {
                    let mut all = inner.clone();
                    all.extend(extra.map(str::to_string));
                    if all.is_empty() {
                        String::new()
                    } else {
                        format!("{{{}}}", all.join(","))
                    }
                };
                let want: Vec<String> = match f.kind {
                    Kind::Histogram => vec![
                        format!("{}_bucket{}", f.name, wrap(Some("le=\"+Inf\""))),
                        format!("{}_sum{}", f.name, wrap(None)),
                        format!("{}_count{}", f.name, wrap(None)),
                    ],
                    _ => vec![format!("{}{}", f.name, wrap(None))],
                };
                for w in want {
                    assert!(samples.contains_key(w.as_str()), "{w} missing:\n{text}");
                }
                if f.kind == Kind::Histogram {
                    let buckets = samples
                        .keys()
                        .filter(|k| {
                            k.starts_with(&format!("{}_bucket{{", f.name))
                                && inner.iter().all(|l| k.contains(l.as_str()))
                        })
                        .count();
                    assert!(buckets >= 6, "{} {labels:?}: {buckets} buckets", f.name);
                }
            }
        }
    }

    #[test]
    fn registering_keeps_recorded_values() {
        let recorder = super::super::builder().unwrap().build_recorder();
        let handle = recorder.handle();
        metrics::with_local_recorder(&recorder, || {
            register_all();
            metrics::counter!(names::WEBHOOK_DROPPED_TOTAL).increment(2);
            metrics::gauge!(names::QUOTA_ROWS).set(5.0);
            register_all();
        });
        let text = handle.render();
        assert!(
            text.contains("\nmeterd_webhook_dropped_total 2\n"),
            "{text}"
        );
        assert!(text.contains("\nmeterd_quota_rows 5\n"), "{text}");
    }
}
