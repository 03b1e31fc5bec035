//! Every limit of the configuration and every dependency between keys, each checked at
//! its value (accepted) and just past it (refused, naming the key), and each documented
//! in the configuration table of `docs/configuration.md` and next to the key in
//! `config/meterd.toml`: the tests fail when the validation, that page or the shipped
//! file drifts apart.

use super::Config;

/// One documented limit.
struct Limit {
    /// First cell of the key's row in the configuration table of `docs/configuration.md`.
    row: &'static str,
    /// `[[section]]` of the key in `config/meterd.toml` (`""`: top level) and the key.
    toml: (&'static str, &'static str),
    /// The phrase that documents the limit, in the row and in the key's comment.
    doc: &'static str,
    /// Configurations at the limit: accepted.
    ok: Vec<String>,
    /// Configurations just past it, and the key the refusal names.
    bad: Vec<(String, &'static str)>,
}

fn lim(
    row: &'static str,
    toml: (&'static str, &'static str),
    doc: &'static str,
    ok: &[&str],
    bad: &[(&str, &'static str)],
) -> Limit {
    Limit {
        row,
        toml,
        doc,
        ok: ok.iter().map(|s| s.to_string()).collect(),
        bad: bad.iter().map(|(s, k)| (s.to_string(), *k)).collect(),
    }
}

/// `name` of a `[[tenants]]` table (plus `rest`).
fn tenant(name: &str, rest: &str) -> String {
    format!("[[tenants]]\nname = \"{name}\"\n{rest}")
}

fn api_key(tenant: &str, role: &str, sha: &str) -> String {
    format!("[[api_keys]]\ntenant = \"{tenant}\"\nrole = \"{role}\"\nsha256 = \"{sha}\"\n")
}

fn lever(tenant: &str, name: &str, aggregation: &str) -> String {
    format!(
        "[[levers]]\ntenant = \"{tenant}\"\nname = \"{name}\"\naggregation = \"{aggregation}\"\n"
    )
}

/// A `[cluster]` table with `rest` after the required keys (or instead of one named in
/// `rest`).
fn cluster(rest: &str) -> String {
    let mut s = String::from("[cluster]\n");
    if !rest.contains("node =") {
        s.push_str("node = \"n1\"\n");
    }
    if !rest.contains("nats_urls =") {
        s.push_str("nats_urls = [\"nats://127.0.0.1:4222\"]\n");
    }
    s.push_str(rest);
    s
}

/// The limits of `[cluster]`.
fn cluster_limits() -> Vec<Limit> {
    let c = |r: &str| cluster(r);
    let long = "n".repeat(64);
    let too_long = "n".repeat(65);
    let urls32 = format!("nats_urls = [{}]", vec!["\"nats://h:4222\""; 32].join(", "));
    let urls33 = format!("nats_urls = [{}]", vec!["\"nats://h:4222\""; 33].join(", "));
    let creds = std::env::temp_dir().join("meterd-limits-test.creds");
    std::fs::write(&creds, "creds").unwrap();
    let creds_ok = format!("credentials = {:?}", creds.display().to_string());
    vec![
        lim(
            "`[cluster]` `node`",
            ("cluster", "node"),
            "1 to 64 characters of A-Z a-z 0-9 - _",
            &[&c(&format!("node = \"{long}\"")), &c("node = \"a-B_9\"")],
            &[
                (&c(&format!("node = \"{too_long}\"")), "cluster.node"),
                (&c("node = \"a.b\""), "cluster.node"),
                (&c("node = \"\""), "cluster.node"),
            ],
        ),
        lim(
            "`[cluster]` `nats_urls`",
            ("cluster", "nats_urls"),
            "1 to 32 nats://host:port or tls://host:port URLs",
            &[&c(&urls32), &c("nats_urls = [\"tls://u:p@h:1\"]")],
            &[
                (&c(&urls33), "cluster.nats_urls"),
                (&c("nats_urls = []"), "cluster.nats_urls"),
                (&c("nats_urls = [\"http://h:4222\"]"), "cluster.nats_urls"),
            ],
        ),
        lim(
            "`[cluster]` `credentials`",
            ("cluster", "credentials"),
            "a NATS .creds file that can be read",
            &[&c(&creds_ok)],
            &[(
                &c("credentials = \"/nonexistent/meterd.creds\""),
                "cluster.credentials",
            )],
        ),
        lim(
            "`[cluster]` `partitions`",
            ("cluster", "partitions"),
            "1 to 4096",
            &[&c("partitions = 1"), &c("partitions = 4096")],
            &[
                (&c("partitions = 0"), "cluster.partitions"),
                (&c("partitions = 4097"), "cluster.partitions"),
            ],
        ),
        lim(
            "`[cluster]` `replicas`",
            ("cluster", "replicas"),
            "3 or 5",
            &[&c("replicas = 3"), &c("replicas = 5")],
            &[
                (&c("replicas = 1"), "cluster.replicas"),
                (&c("replicas = 4"), "cluster.replicas"),
            ],
        ),
        lim(
            "`[cluster]` `lease_ttl`",
            ("cluster", "lease_ttl"),
            "2s to 60s",
            &[
                &c("lease_ttl = \"2s\"\nlease_renew = \"600ms\""),
                &c("lease_ttl = \"60s\""),
            ],
            &[
                (
                    &c("lease_ttl = \"1999ms\"\nlease_renew = \"600ms\""),
                    "cluster.lease_ttl",
                ),
                (&c("lease_ttl = \"61s\""), "cluster.lease_ttl"),
            ],
        ),
        lim(
            "`[cluster]` `lease_renew`",
            ("cluster", "lease_renew"),
            "greater than zero and at most a third of lease_ttl",
            &[
                &c("lease_ttl = \"6s\"\nlease_renew = \"2s\""),
                &c("lease_renew = \"1ns\""),
            ],
            &[
                (
                    &c("lease_ttl = \"6s\"\nlease_renew = \"2001ms\""),
                    "cluster.lease_renew",
                ),
                (&c("lease_renew = \"0s\""), "cluster.lease_renew"),
            ],
        ),
        lim(
            "`[cluster]` `append_retry`",
            ("cluster", "append_retry"),
            "1s to 120s",
            &[&c("append_retry = \"1s\""), &c("append_retry = \"120s\"")],
            &[
                (&c("append_retry = \"999ms\""), "cluster.append_retry"),
                (&c("append_retry = \"121s\""), "cluster.append_retry"),
            ],
        ),
        lim(
            "`durability`",
            ("", "durability"),
            "must be fsync in cluster mode",
            &[&format!("durability = \"fsync\"\n{}", c(""))],
            &[(
                &format!("durability = \"buffered\"\n{}", c("")),
                "durability",
            )],
        ),
    ]
}

/// Every limit `validate` enforces.
fn limits() -> Vec<Limit> {
    let top = "";
    let mut v = vec![
        lim(
            "`listen`",
            (top, "listen"),
            "ip:port socket address",
            &["listen = \"127.0.0.1:1\"", "listen = \"[::1]:1\""],
            &[("listen = \"localhost:1\"", "listen")],
        ),
        lim(
            "`metrics_listen`",
            (top, "metrics_listen"),
            "must differ from listen (unless the port is 0)",
            &[
                "listen = \"127.0.0.1:1\"\nmetrics_listen = \"127.0.0.1:2\"",
                "listen = \"127.0.0.1:0\"\nmetrics_listen = \"127.0.0.1:0\"",
            ],
            &[(
                "listen = \"127.0.0.1:1\"\nmetrics_listen = \"127.0.0.1:1\"",
                "metrics_listen",
            )],
        ),
        lim(
            "`data_dir`",
            (top, "data_dir"),
            "not empty",
            &["data_dir = \"d\""],
            &[("data_dir = \" \"", "data_dir")],
        ),
        lim(
            "`durability`",
            (top, "durability"),
            "fsync or buffered",
            &["durability = \"fsync\"", "durability = \"buffered\""],
            &[("durability = \"Fsync\"", "durability")],
        ),
        lim(
            "`flush_interval`",
            (top, "flush_interval"),
            "10ms to 1h",
            &["flush_interval = \"10ms\"", "flush_interval = \"1h\""],
            &[
                ("flush_interval = \"9ms\"", "flush_interval"),
                ("flush_interval = \"3601s\"", "flush_interval"),
            ],
        ),
        lim(
            "`group_commit_interval`",
            (top, "group_commit_interval"),
            "0s to 10ms",
            &[
                "group_commit_interval = \"0s\"",
                "group_commit_interval = \"10ms\"",
            ],
            &[("group_commit_interval = \"10001us\"", "group_commit_interval")],
        ),
        lim(
            "`lateness`",
            (top, "lateness"),
            "at most 366d",
            &["lateness = \"366d\"\ndedupe_retention = \"367d\"\nretention_minute = \"367d\""],
            &[(
                "lateness = \"31622401s\"\ndedupe_retention = \"367d\"\nretention_minute = \"367d\"",
                "lateness",
            )],
        ),
        lim(
            "`lateness`",
            (top, "lateness"),
            "at most dedupe_retention",
            &["lateness = \"7d\"\ndedupe_retention = \"7d\""],
            &[(
                "lateness = \"7d\"\ndedupe_retention = \"604799s\"",
                "dedupe_retention",
            )],
        ),
        lim(
            "`lateness`",
            (top, "lateness"),
            "at most each retention_* that is not forever (so at most 7d with the default retention_minute)",
            &[
                "lateness = \"7d\"",
                "lateness = \"30d\"\nretention_minute = \"forever\"\nretention_hour = \"forever\"",
            ],
            &[("lateness = \"604801s\"", "retention_minute")],
        ),
        lim(
            "`dedupe_retention`",
            (top, "dedupe_retention"),
            "at least 1m",
            &["lateness = \"0s\"\ndedupe_retention = \"1m\""],
            &[("lateness = \"0s\"\ndedupe_retention = \"59s\"", "dedupe_retention")],
        ),
        lim(
            "`dedupe_retention`",
            (top, "dedupe_retention"),
            "at least lateness and every tenant's lateness",
            &[
                "lateness = \"2d\"\ndedupe_retention = \"2d\"",
                &format!("dedupe_retention = \"2d\"\n{}", tenant("a", "lateness = \"2d\"")),
            ],
            &[
                (
                    "lateness = \"2d\"\ndedupe_retention = \"172799s\"",
                    "dedupe_retention",
                ),
                (
                    &format!(
                        "dedupe_retention = \"2d\"\n{}",
                        tenant("a", "lateness = \"172801s\"")
                    ),
                    "tenants[0].lateness",
                ),
            ],
        ),
        lim(
            "`retention_minute`",
            (top, "retention_minute"),
            "forever or at least 1d",
            &["retention_minute = \"1d\"", "retention_minute = \"forever\"\nretention_hour = \"forever\""],
            &[("retention_minute = \"86399s\"", "retention_minute")],
        ),
        lim(
            "`retention_minute`",
            (top, "retention_minute"),
            "at least every lateness (top-level and tenants')",
            &[
                "lateness = \"3d\"\nretention_minute = \"3d\"",
                &tenant("a", "lateness = \"7d\""),
            ],
            &[
                ("lateness = \"3d\"\nretention_minute = \"259199s\"", "retention_minute"),
                (&tenant("a", "lateness = \"604801s\""), "retention_minute"),
            ],
        ),
        lim(
            "`retention_hour`",
            (top, "retention_hour"),
            "at least retention_minute",
            &["retention_minute = \"400d\""],
            &[
                ("retention_minute = \"34560001s\"", "retention_hour"),
                ("retention_minute = \"forever\"", "retention_hour"),
            ],
        ),
        lim(
            "`retention_day`",
            (top, "retention_day"),
            "at least retention_hour",
            &["retention_day = \"400d\""],
            &[
                ("retention_day = \"34559999s\"", "retention_day"),
                (
                    "retention_hour = \"forever\"\nretention_day = \"400d\"",
                    "retention_day",
                ),
            ],
        ),
        lim(
            "`shards`",
            (top, "shards"),
            "1 to 4096",
            &["shards = 1", "shards = 4096"],
            &[("shards = 0", "shards"), ("shards = 4097", "shards")],
        ),
        lim(
            "`max_body_bytes`",
            (top, "max_body_bytes"),
            "1024 to 1073741824",
            &[
                "max_body_bytes = 1024",
                "max_body_bytes = 1073741824\nmemory_limit = \"128GiB\"",
            ],
            &[
                ("max_body_bytes = 1023", "max_body_bytes"),
                (
                    "max_body_bytes = 1073741825\nmemory_limit = \"129GiB\"",
                    "max_body_bytes",
                ),
            ],
        ),
        lim(
            "`max_batch_events`",
            (top, "max_batch_events"),
            "1 to 1000000",
            &["max_batch_events = 1", "max_batch_events = 1000000"],
            &[
                ("max_batch_events = 0", "max_batch_events"),
                ("max_batch_events = 1000001", "max_batch_events"),
            ],
        ),
        lim(
            "`max_in_flight`",
            (top, "max_in_flight"),
            "1 to 1000000",
            &["max_in_flight = 1", "max_in_flight = 1000000"],
            &[
                ("max_in_flight = 0", "max_in_flight"),
                ("max_in_flight = 1000001", "max_in_flight"),
            ],
        ),
        lim(
            "`backup_dir`",
            (top, "backup_dir"),
            "not empty; not the data_dir",
            &["data_dir = \"d\"\nbackup_dir = \"b\""],
            &[
                ("backup_dir = \"\"", "backup_dir"),
                ("data_dir = \"d\"\nbackup_dir = \"d\"", "backup_dir"),
            ],
        ),
        lim(
            "`backup_keep`",
            (top, "backup_keep"),
            "1 to 1000",
            &["backup_keep = 1", "backup_keep = 1000"],
            &[
                ("backup_keep = 0", "backup_keep"),
                ("backup_keep = 1001", "backup_keep"),
            ],
        ),
        lim(
            "`memory_limit`",
            (top, "memory_limit"),
            "256MiB to 1TiB",
            &[
                "max_body_bytes = 2097152\nmemory_limit = \"256MiB\"",
                "memory_limit = \"1TiB\"",
            ],
            &[
                (
                    "max_body_bytes = 2097152\nmemory_limit = \"268435455\"",
                    "memory_limit",
                ),
                ("memory_limit = \"1099511627777\"", "memory_limit"),
            ],
        ),
        lim(
            "`memory_limit`",
            (top, "memory_limit"),
            "at least 128 x max_body_bytes",
            &["max_body_bytes = 4194304\nmemory_limit = \"512MiB\""],
            &[(
                "max_body_bytes = 4194305\nmemory_limit = \"512MiB\"",
                "memory_limit",
            )],
        ),
        lim(
            "`max_body_bytes`",
            (top, "max_body_bytes"),
            "memory_limit must be at least 128 x max_body_bytes",
            &["max_body_bytes = 4194304\nmemory_limit = \"512MiB\""],
            &[(
                "max_body_bytes = 4194305\nmemory_limit = \"512MiB\"",
                "memory_limit",
            )],
        ),
        lim(
            "`max_connections`",
            (top, "max_connections"),
            "1 to 1000000",
            &["max_connections = 1", "max_connections = 1000000"],
            &[
                ("max_connections = 0", "max_connections"),
                ("max_connections = 1000001", "max_connections"),
            ],
        ),
        lim(
            "`webhook_retry_max`",
            (top, "webhook_retry_max"),
            "at least webhook_retry_initial",
            &["webhook_retry_initial = \"10m\""],
            &[("webhook_retry_initial = \"601s\"", "webhook_retry_max")],
        ),
        lim(
            "`webhook_retry_initial`",
            (top, "webhook_retry_initial"),
            "at most webhook_retry_max",
            &["webhook_retry_initial = \"1m\"\nwebhook_retry_max = \"1m\""],
            &[(
                "webhook_retry_initial = \"1m\"\nwebhook_retry_max = \"59s\"",
                "webhook_retry_max",
            )],
        ),
        lim(
            "`[[tenants]]` `name`",
            ("tenants", "name"),
            "1-64 characters of [A-Za-z0-9_.:-]; unique",
            &[&tenant(&format!("Az09_.:-{}", "x".repeat(56)), "")],
            &[
                (&tenant(&"x".repeat(65), ""), "tenants[0].name"),
                (&tenant("a/b", ""), "tenants[0].name"),
                (&format!("{}{}", tenant("a", ""), tenant("a", "")), "tenants[1].name"),
            ],
        ),
        lim(
            "`[[tenants]]` `lateness`",
            ("tenants", "lateness"),
            "at most dedupe_retention",
            &[&format!("dedupe_retention = \"3d\"\n{}", tenant("a", "lateness = \"3d\""))],
            &[(
                &format!(
                    "dedupe_retention = \"3d\"\n{}",
                    tenant("a", "lateness = \"259201s\"")
                ),
                "tenants[0].lateness",
            )],
        ),
        lim(
            "`[[tenants]]` `lateness`",
            ("tenants", "lateness"),
            "at most each retention_* that is not forever",
            &[&tenant("a", "lateness = \"7d\"")],
            &[(&tenant("a", "lateness = \"604801s\""), "retention_minute")],
        ),
        lim(
            "`[[tenants]]` `thresholds`",
            ("tenants", "thresholds"),
            "at most 16 percentages, each 1 to 1000",
            &[
                &tenant("a", &format!("thresholds = {:?}", (985..=1000).collect::<Vec<u32>>())),
                &tenant("a", "thresholds = [1]"),
            ],
            &[
                (
                    &tenant("a", &format!("thresholds = {:?}", (1..=17).collect::<Vec<u32>>())),
                    "tenants[0].thresholds",
                ),
                (&tenant("a", "thresholds = [0]"), "tenants[0].thresholds"),
                (&tenant("a", "thresholds = [1001]"), "tenants[0].thresholds"),
            ],
        ),
    ];
    let secret16 = "webhook_secret = \"0123456789abcdef\"";
    let url = "webhook_url = \"https://h.example/x\"";
    v.extend([
        lim(
            "`[[tenants]]` `webhook_url`",
            ("tenants", "webhook_url"),
            "an absolute http:// or https:// URL with a host; needs webhook_secret",
            &[
                &tenant("a", &format!("{url}\n{secret16}")),
                &tenant(
                    "a",
                    &format!("webhook_url = \"http://127.0.0.1:1\"\n{secret16}"),
                ),
            ],
            &[
                (
                    &tenant(
                        "a",
                        &format!("webhook_url = \"ftp://h.example/x\"\n{secret16}"),
                    ),
                    "tenants[0].webhook_url",
                ),
                (
                    &tenant("a", &format!("webhook_url = \"/x\"\n{secret16}")),
                    "tenants[0].webhook_url",
                ),
                (&tenant("a", url), "tenants[0].webhook_secret"),
            ],
        ),
        lim(
            "`[[tenants]]` `webhook_secret`",
            ("tenants", "webhook_secret"),
            "at least 16 bytes; needs webhook_url",
            &[&tenant("a", &format!("{url}\n{secret16}"))],
            &[
                (
                    &tenant("a", &format!("{url}\nwebhook_secret = \"0123456789abcde\"")),
                    "tenants[0].webhook_secret",
                ),
                (&tenant("a", secret16), "tenants[0].webhook_url"),
            ],
        ),
    ]);
    let sha = "ab".repeat(32);
    v.extend([
        lim(
            "`[[api_keys]]`",
            ("api_keys", "tenant"),
            "tenant: 1-64 characters of [A-Za-z0-9_.:-]",
            &[&api_key(&"t".repeat(64), "admin", &sha)],
            &[(
                &api_key(&"t".repeat(65), "admin", &sha),
                "api_keys[0].tenant",
            )],
        ),
        lim(
            "`[[api_keys]]`",
            ("api_keys", "role"),
            "role: ingest, read or admin",
            &[
                &api_key("t", "ingest", &sha),
                &api_key("t", "read", &sha),
                &api_key("t", "admin", &sha),
            ],
            &[(&api_key("t", "Admin", &sha), "api_keys[0].role")],
        ),
        lim(
            "`[[api_keys]]`",
            ("api_keys", "sha256"),
            "sha256: 64 hex digits, each key once",
            &[&format!(
                "{}{}",
                api_key("t", "read", &sha),
                api_key("t", "read", &"cd".repeat(32))
            )],
            &[
                (&api_key("t", "read", &sha[1..]), "api_keys[0].sha256"),
                (
                    &api_key("t", "read", &format!("{sha}ab")),
                    "api_keys[0].sha256",
                ),
                (
                    &format!(
                        "{}{}",
                        api_key("t", "read", &sha),
                        api_key("u", "admin", &sha)
                    ),
                    "api_keys[1].sha256",
                ),
            ],
        ),
        lim(
            "`[[levers]]`",
            ("levers", "name"),
            "tenant, name: 1-64 characters of [A-Za-z0-9_.:-]; each (tenant, name) once",
            &[
                &lever(&"t".repeat(64), &"n".repeat(64), "sum"),
                &format!("{}{}", lever("t", "n", "sum"), lever("u", "n", "sum")),
            ],
            &[
                (&lever("t", &"n".repeat(65), "sum"), "levers[0].name"),
                (&lever(&"t".repeat(65), "n", "sum"), "levers[0].tenant"),
                (
                    &format!("{}{}", lever("t", "n", "sum"), lever("t", "n", "max")),
                    "levers[1].name",
                ),
            ],
        ),
        lim(
            "`[[levers]]`",
            ("levers", "aggregation"),
            "aggregation: sum, count, max or latest",
            &[
                &lever("t", "a", "sum"),
                &lever("t", "b", "count"),
                &lever("t", "c", "max"),
                &lever("t", "d", "latest"),
            ],
            &[(&lever("t", "a", "avg"), "levers[0].aggregation")],
        ),
    ]);
    v.extend(cluster_limits());
    for key in [
        "header_read_timeout",
        "body_read_timeout",
        "send_timeout",
        "shutdown_grace",
        "webhook_timeout",
        "webhook_retry_initial",
        "webhook_max_age",
    ] {
        let row: &'static str = Box::leak(format!("`{key}`").into_boxed_str());
        v.push(Limit {
            row,
            toml: (top, key),
            doc: "greater than 0",
            ok: vec![format!("{key} = \"1ns\"")],
            bad: vec![(format!("{key} = \"0s\""), key)],
        });
    }
    v
}

/// Lower case, backticks dropped, whitespace collapsed.
fn normal(s: &str) -> String {
    s.replace('`', "")
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .to_lowercase()
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)).unwrap()
}

/// The row of the configuration table in `docs/configuration.md` (the table whose header
/// starts with `| key | default |`) whose first cell starts with `row`.
fn doc_row<'a>(page: &'a str, row: &str) -> &'a str {
    let table = &page[page.find("| key | default |").unwrap()..];
    table
        .lines()
        .take_while(|l| l.starts_with('|'))
        .find(|l| l.starts_with(&format!("| {row} ")))
        .unwrap_or_else(|| panic!("no row for {row} in docs/configuration.md"))
}

/// The comments attached to `key` (or `# key = …`) in `section` of
/// `config/meterd.toml`: its own line's comment and the comment lines right above it,
/// above the keys it is grouped with (`retention_hour` under `retention_minute`).
fn toml_comments(toml: &str, (section, key): (&str, &str)) -> String {
    let lines: Vec<&str> = toml.lines().collect();
    // The section: from its first header (or the top) to the next table of another kind.
    // An array of tables (`[[levers]]`), or a table (`[cluster]`, shipped commented out).
    let header = format!("[[{section}]]");
    let table = format!("[{section}]");
    let is_header = |l: &str| {
        let l = l.trim().trim_start_matches(['#', ' ']);
        l == header || l == table
    };
    let start = if section.is_empty() {
        0
    } else {
        lines.iter().position(|l| is_header(l)).unwrap() + 1
    };
    let end = (start..lines.len())
        .find(|&i| {
            let l = lines[i].trim().trim_start_matches(['#', ' ']);
            l.starts_with('[') && !is_header(lines[i])
        })
        .unwrap_or(lines.len());
    let at = (start..end)
        .find(|&i| {
            lines[i]
                .trim_start_matches(['#', ' '])
                .starts_with(&format!("{key} ="))
        })
        .unwrap_or_else(|| panic!("{key} not in config/meterd.toml [{section}]"));
    let comment = |l: &str| l.trim_start().starts_with('#');
    let mut parts: Vec<&str> = lines[at]
        .split_once('#')
        .map(|(_, c)| c)
        .into_iter()
        .collect();
    let mut j = at;
    // Keys (and the table header) grouped with it, then the comment block above them.
    while j > 0 && !lines[j - 1].trim().is_empty() && !comment(lines[j - 1]) {
        j -= 1;
    }
    while j > 0 && comment(lines[j - 1]) {
        j -= 1;
        parts.push(lines[j].trim_start().trim_start_matches('#'));
    }
    parts.reverse();
    parts.join(" ")
}

#[test]
fn every_limit_is_enforced_at_its_edge() {
    for l in limits() {
        for ok in &l.ok {
            if let Err(e) = Config::from_toml("f.toml", ok) {
                panic!("{} ({}): refused at the limit: {e}\n{ok}", l.row, l.doc);
            }
        }
        for (bad, key) in &l.bad {
            match Config::from_toml("f.toml", bad) {
                Ok(_) => panic!("{} ({}): accepted past the limit:\n{bad}", l.row, l.doc),
                Err(e) => assert_eq!(e.key, *key, "{} ({}): {e}\n{bad}", l.row, l.doc),
            }
        }
    }
}

#[test]
fn every_limit_is_documented_in_the_docs_and_the_shipped_config() {
    let page = read("docs/configuration.md");
    let toml = read("config/meterd.toml");
    for l in limits() {
        let doc = normal(l.doc);
        let row = doc_row(&page, l.row);
        assert!(
            normal(row).contains(&doc),
            "docs/configuration.md row {} does not say {:?}:\n{row}",
            l.row,
            l.doc
        );
        let comments = toml_comments(&toml, l.toml);
        assert!(
            normal(&comments).contains(&doc),
            "config/meterd.toml does not say {:?} next to {:?}: {comments}",
            l.doc,
            l.toml
        );
    }
}

#[test]
fn every_key_has_a_documented_row() {
    // Every top-level key of the file format has its own row in the docs/configuration.md
    // table.
    let page = read("docs/configuration.md");
    let raw = read("src/config/raw.rs");
    let body = &raw[raw.find("pub struct RawConfig").unwrap()..];
    let body = &body[..body.find("\n}\n").unwrap()];
    for line in body.lines() {
        let Some(rest) = line.trim().strip_prefix("pub ") else {
            continue;
        };
        if rest.starts_with("struct ") {
            continue;
        }
        let key = rest.split(':').next().unwrap();
        if ["tenants", "api_keys", "levers", "cluster"].contains(&key) {
            continue;
        }
        doc_row(&page, &format!("`{key}`"));
    }
}
