//! Configuration: file + environment + flags -> validated [`Config`].
//!
//! Precedence is flags over environment over file over defaults (SPEC 8). The
//! environment is passed in as a map so that tests never mutate the process environment.
//! Every refusal names the file, the key and the reason; the binary exits with code 64.

mod kinds;
#[cfg(test)]
mod limits;
mod raw;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use sha2::{Digest, Sha256};

pub use raw::{RawApiKey, RawConfig, RawLever, RawTenant};

pub use kinds::{Aggregation, Role};

/// Exit code for invalid configuration (EX_USAGE... sysexits' EX_USAGE is 64).
pub const EXIT_CONFIG: i32 = 64;

/// How acknowledgements relate to disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// A 2xx is sent after the write-ahead log is fsynced (group commit).
    Fsync,
    /// A 2xx is sent once the write is in the OS page cache; the WAL is fsynced every
    /// `flush_interval`. Survives `kill -9`; power loss loses at most one interval.
    Buffered,
}

/// A validated API key entry.
#[derive(Debug, Clone)]
pub struct ApiKeyConfig {
    /// Tenant the key belongs to.
    pub tenant: String,
    /// Role granted.
    pub role: Role,
    /// SHA-256 of the key.
    pub sha256: [u8; 32],
    /// Label for logs.
    pub name: String,
}

/// A validated lever declared in the file.
#[derive(Debug, Clone)]
pub struct LeverConfig {
    /// Owning tenant.
    pub tenant: String,
    /// Lever name.
    pub name: String,
    /// Aggregation.
    pub aggregation: Aggregation,
    /// Unit label.
    pub unit: String,
    /// CloudEvents value path.
    pub value_property: Option<String>,
    /// CloudEvents bucket path.
    pub bucket_property: Option<String>,
    /// Free text.
    pub description: Option<String>,
}

/// Per-tenant settings.
#[derive(Debug, Clone)]
pub struct TenantConfig {
    /// Tenant name.
    pub name: String,
    /// Accepted lateness of event times.
    pub lateness: Duration,
    /// Default threshold percentages.
    pub thresholds: Vec<u32>,
    /// Webhook for threshold notifications.
    pub webhook: Option<WebhookConfig>,
}

/// A tenant's webhook.
#[derive(Clone)]
pub struct WebhookConfig {
    /// URL notifications are POSTed to.
    pub url: String,
    /// HMAC-SHA256 key.
    pub secret: String,
}

impl std::fmt::Debug for WebhookConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the secret.
        f.debug_struct("WebhookConfig")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

/// Delivery settings shared by all webhooks.
#[derive(Debug, Clone)]
pub struct WebhookSettings {
    /// Per-attempt timeout.
    pub timeout: Duration,
    /// First retry delay.
    pub retry_initial: Duration,
    /// Largest retry delay.
    pub retry_max: Duration,
    /// Drop notifications older than this.
    pub max_age: Duration,
}

/// The validated configuration the daemon runs with.
#[derive(Debug, Clone)]
pub struct Config {
    /// File it was read from, if any.
    pub source: Option<PathBuf>,
    /// API listen address.
    pub listen: SocketAddr,
    /// Metrics listen address.
    pub metrics_listen: SocketAddr,
    /// Data directory.
    pub data_dir: PathBuf,
    /// Durability mode.
    pub durability: Durability,
    /// Flush interval.
    pub flush_interval: Duration,
    /// Shortest time between two group-commit fsyncs of the journal (fsync durability).
    pub group_commit_interval: Duration,
    /// Default lateness.
    pub lateness: Duration,
    /// Dedupe retention.
    pub dedupe_retention: Duration,
    /// How long window rows are kept, per granularity.
    pub window_retention: crate::window::WindowRetention,
    /// Counter shards.
    pub shards: usize,
    /// Body limit in bytes.
    pub max_body_bytes: usize,
    /// Events per request limit.
    pub max_batch_events: usize,
    /// In-flight request limit.
    pub max_in_flight: usize,
    /// Directory of online backups (RocksDB checkpoints), if enabled.
    pub backup_dir: Option<PathBuf>,
    /// Backups kept in `backup_dir`.
    pub backup_keep: usize,
    /// Planned memory bound in bytes; see [`Config::body_budget_bytes`] and
    /// [`Config::memtable_budget_bytes`].
    pub memory_limit: u64,
    /// Header read timeout.
    pub header_read_timeout: Duration,
    /// Body read timeout.
    pub body_read_timeout: Duration,
    /// Open connections per listener.
    pub max_connections: usize,
    /// Longest time a response may wait for the client to accept more bytes.
    pub send_timeout: Duration,
    /// Shutdown grace period.
    pub shutdown_grace: Duration,
    /// Webhook delivery settings.
    pub webhooks: WebhookSettings,
    /// Tenants (every tenant named by a key, a lever or a `[[tenants]]` table).
    pub tenants: Vec<TenantConfig>,
    /// API keys.
    pub api_keys: Vec<ApiKeyConfig>,
    /// Levers declared in the file.
    pub levers: Vec<LeverConfig>,
    /// True when a well-known development key is configured.
    pub uses_development_keys: bool,
}

/// The development keys shipped in `config/meterd.toml`; the daemon warns when any is used.
pub const DEVELOPMENT_KEYS: [&str; 3] = ["dev-admin-key", "dev-ingest-key", "dev-read-key"];

/// A refused configuration: file, key and reason.
#[derive(Debug, thiserror::Error)]
#[error("{file}: key `{key}`: {reason}")]
pub struct ConfigError {
    /// The file (or `<defaults>`).
    pub file: String,
    /// Dotted key path.
    pub key: String,
    /// Why.
    pub reason: String,
}

/// Overrides from command-line flags.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    /// `--config`.
    pub config: Option<PathBuf>,
    /// `--listen`.
    pub listen: Option<String>,
    /// `--metrics-listen`.
    pub metrics_listen: Option<String>,
    /// `--data-dir`.
    pub data_dir: Option<String>,
}

/// Smallest accepted `memory_limit`.
pub const MIN_MEMORY_LIMIT: u64 = 256 << 20;
/// Largest accepted `memory_limit`.
pub const MAX_MEMORY_LIMIT: u64 = 1 << 40;
/// `memory_limit / REQUEST_SHARE` is the budget for requests in progress.
pub const REQUEST_SHARE: u64 = 4;
/// Memory a request in progress is charged per byte of body: the body itself, the
/// parsed events, dedupe claims, keys and the write batch (measured:
/// about 2 KB per 60-byte event in `tests/overload.rs`).
pub const REQUEST_BYTES_PER_BODY_BYTE: u64 = 32;
/// Smallest charge of a request with a body (connection and task state, buffers).
pub const REQUEST_MIN_CHARGE: u64 = 16 * 1024;
/// `memory_limit / MEMTABLE_SHARE` caps RocksDB's memtables (all column families).
pub const MEMTABLE_SHARE: u64 = 8;
/// `memory_limit / BLOCK_CACHE_SHARE` is RocksDB's block cache.
pub const BLOCK_CACHE_SHARE: u64 = 8;
/// `memory_limit / UNFLUSHED_SHARE` is the budget for accepted ids whose dedupe records
/// the flusher has not yet moved out of the journal.
pub const UNFLUSHED_SHARE: u64 = 32;
/// Memory an unflushed id is charged: its entry in memory and its share of the
/// flusher's buffers while it moves the dedupe record (about 200 bytes).
pub const UNFLUSHED_BYTES_PER_ID: u64 = 256;

impl Config {
    /// Memory that requests in progress (read, parsed, being committed) may use:
    /// `memory_limit / 4`. A request with a body is charged
    /// [`Config::request_charge_bytes`] of it while it runs; one that does not fit in
    /// what is left gets `429 overloaded`.
    pub fn request_budget_bytes(&self) -> u64 {
        self.memory_limit / REQUEST_SHARE
    }

    /// What a request with a body of `body_len` bytes is charged against
    /// [`Config::request_budget_bytes`] (for a chunked body: the bytes received so far).
    pub fn request_charge_bytes(&self, body_len: u64) -> u64 {
        body_len
            .min(self.max_body_bytes as u64)
            .saturating_mul(REQUEST_BYTES_PER_BODY_BYTE)
            .max(REQUEST_MIN_CHARGE)
    }

    /// Cap on RocksDB's memtables across all column families: `memory_limit / 8`.
    pub fn memtable_budget_bytes(&self) -> u64 {
        self.memory_limit / MEMTABLE_SHARE
    }

    /// RocksDB's block cache, shared by all column families: `memory_limit / 8`.
    pub fn block_cache_bytes(&self) -> u64 {
        self.memory_limit / BLOCK_CACHE_SHARE
    }

    /// Accepted ids not yet flushed above which new ingest requests wait for the
    /// flusher: `memory_limit / 32` at [`UNFLUSHED_BYTES_PER_ID`] each (131,072 ids at
    /// the default 1 GiB, 32,768 at 256 MiB).
    pub fn unflushed_ids_limit(&self) -> usize {
        (self.memory_limit / UNFLUSHED_SHARE / UNFLUSHED_BYTES_PER_ID) as usize
    }
}

impl Config {
    /// Loads the configuration: flags, then `METERD_*` from `env`, then the file.
    pub fn load(flags: &Overrides, env: &HashMap<String, String>) -> Result<Config, ConfigError> {
        let path = flags
            .config
            .clone()
            .or_else(|| env.get("METERD_CONFIG").map(PathBuf::from));
        let (file_label, mut raw) = match &path {
            Some(p) => {
                let label = p.display().to_string();
                let text = std::fs::read_to_string(p).map_err(|e| ConfigError {
                    file: label.clone(),
                    key: "-".into(),
                    reason: format!("cannot read file: {e}"),
                })?;
                let raw = parse_toml(&label, &text)?;
                (label, raw)
            }
            None => ("<defaults>".to_string(), parse_toml("<defaults>", "")?),
        };
        let pick = |flag: &Option<String>, var: &str| -> Option<String> {
            flag.clone().or_else(|| env.get(var).cloned())
        };
        if let Some(v) = pick(&flags.listen, "METERD_LISTEN") {
            raw.listen = v;
        }
        if let Some(v) = pick(&flags.metrics_listen, "METERD_METRICS_LISTEN") {
            raw.metrics_listen = v;
        }
        if let Some(v) = pick(&flags.data_dir, "METERD_DATA_DIR") {
            raw.data_dir = v;
        }
        let mut cfg = validate(&file_label, raw)?;
        cfg.source = path;
        Ok(cfg)
    }

    /// Parses and validates configuration text (used by tests and `check-config`).
    pub fn from_toml(label: &str, text: &str) -> Result<Config, ConfigError> {
        validate(label, parse_toml(label, text)?)
    }

    /// Lateness in force for `tenant`.
    pub fn lateness_for(&self, tenant: &str) -> Duration {
        self.tenants
            .iter()
            .find(|t| t.name == tenant)
            .map(|t| t.lateness)
            .unwrap_or(self.lateness)
    }
}

fn parse_toml(label: &str, text: &str) -> Result<RawConfig, ConfigError> {
    let de = toml::Deserializer::parse(text).map_err(|e| ConfigError {
        file: label.into(),
        key: "-".into(),
        reason: e.to_string().trim().replace('\n', " "),
    })?;
    serde_path_to_error::deserialize(de).map_err(|e| {
        let key = e.path().to_string();
        ConfigError {
            file: label.into(),
            key: if key == "." { "-".into() } else { key },
            reason: e.into_inner().message().trim().replace('\n', " "),
        }
    })
}

fn err(file: &str, key: impl Into<String>, reason: impl Into<String>) -> ConfigError {
    ConfigError {
        file: file.into(),
        key: key.into(),
        reason: reason.into(),
    }
}

/// Largest `group_commit_interval`: the pacing can add up to this to an acknowledgement.
pub const MAX_GROUP_COMMIT_INTERVAL: Duration = Duration::from_millis(10);

/// Parses a human duration such as `1s`, `500ms`, `1h`, `35d`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text.trim()).map_err(|e| format!("invalid duration {text:?}: {e}"))
}

/// Validates a resource name (tenant, lever): 1..=64 bytes of `[A-Za-z0-9_.:-]`.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b':'))
}

fn validate(file: &str, raw: RawConfig) -> Result<Config, ConfigError> {
    let addr = |key: &str, v: &str| -> Result<SocketAddr, ConfigError> {
        v.parse()
            .map_err(|_| err(file, key, format!("not a socket address: {v:?}")))
    };
    let dur = |key: &str, v: &str| -> Result<Duration, ConfigError> {
        parse_duration(v).map_err(|r| err(file, key, r))
    };
    let listen = addr("listen", &raw.listen)?;
    let metrics_listen = addr("metrics_listen", &raw.metrics_listen)?;
    if listen == metrics_listen && listen.port() != 0 {
        return Err(err(
            file,
            "metrics_listen",
            "must differ from `listen` (metrics are served on their own listener)",
        ));
    }
    if raw.data_dir.trim().is_empty() {
        return Err(err(file, "data_dir", "must not be empty"));
    }
    let durability = match raw.durability.as_str() {
        "fsync" => Durability::Fsync,
        "buffered" => Durability::Buffered,
        other => {
            return Err(err(
                file,
                "durability",
                format!("must be \"fsync\" or \"buffered\", not {other:?}"),
            ))
        }
    };
    let flush_interval = dur("flush_interval", &raw.flush_interval)?;
    if flush_interval < Duration::from_millis(10) || flush_interval > Duration::from_secs(3600) {
        return Err(err(file, "flush_interval", "must be between 10ms and 1h"));
    }
    let group_commit_interval = dur("group_commit_interval", &raw.group_commit_interval)?;
    if group_commit_interval > MAX_GROUP_COMMIT_INTERVAL {
        return Err(err(
            file,
            "group_commit_interval",
            "must be at most 10ms (it adds up to that much to an acknowledgement)",
        ));
    }
    let lateness = dur("lateness", &raw.lateness)?;
    if lateness > Duration::from_secs(366 * 86400) {
        return Err(err(file, "lateness", "must be at most 366 days"));
    }
    let dedupe_retention = dur("dedupe_retention", &raw.dedupe_retention)?;
    if dedupe_retention < Duration::from_secs(60) {
        return Err(err(file, "dedupe_retention", "must be at least 1 minute"));
    }
    if dedupe_retention < lateness {
        return Err(err(
            file,
            "dedupe_retention",
            "must be at least `lateness`, or a late retry could be counted twice",
        ));
    }
    if raw.shards == 0 || raw.shards > 4096 {
        return Err(err(file, "shards", "must be between 1 and 4096"));
    }
    if raw.max_body_bytes < 1024 || raw.max_body_bytes > 1 << 30 {
        return Err(err(
            file,
            "max_body_bytes",
            "must be between 1024 and 1073741824",
        ));
    }
    if raw.max_batch_events == 0 || raw.max_batch_events > 1_000_000 {
        return Err(err(
            file,
            "max_batch_events",
            "must be between 1 and 1000000",
        ));
    }
    if raw.max_in_flight == 0 || raw.max_in_flight > 1_000_000 {
        return Err(err(file, "max_in_flight", "must be between 1 and 1000000"));
    }
    if raw.backup_keep == 0 || raw.backup_keep > 1000 {
        return Err(err(file, "backup_keep", "must be between 1 and 1000"));
    }
    let backup_dir = match raw.backup_dir.as_deref().map(str::trim) {
        None => None,
        Some("") => return Err(err(file, "backup_dir", "must not be empty")),
        Some(d) => Some(PathBuf::from(d)),
    };
    if let Some(b) = &backup_dir {
        if b == &PathBuf::from(raw.data_dir.trim()) {
            return Err(err(file, "backup_dir", "must not be the data dir"));
        }
    }
    let memory_limit = raw
        .memory_limit
        .trim()
        .parse::<bytesize::ByteSize>()
        .map_err(|e| {
            err(
                file,
                "memory_limit",
                format!("not a size like \"1GiB\" or \"512MiB\": {e}"),
            )
        })?
        .as_u64();
    if !(MIN_MEMORY_LIMIT..=MAX_MEMORY_LIMIT).contains(&memory_limit) {
        return Err(err(file, "memory_limit", "must be between 256MiB and 1TiB"));
    }
    let largest_request = (raw.max_body_bytes as u64)
        .saturating_mul(REQUEST_BYTES_PER_BODY_BYTE)
        .max(REQUEST_MIN_CHARGE);
    if largest_request.saturating_mul(REQUEST_SHARE) > memory_limit {
        return Err(err(
            file,
            "memory_limit",
            format!(
                "must be at least {} x max_body_bytes ({} bytes), so that a request of the largest size fits in the request budget (memory_limit / {REQUEST_SHARE})",
                REQUEST_SHARE * REQUEST_BYTES_PER_BODY_BYTE,
                raw.max_body_bytes
            ),
        ));
    }
    let header_read_timeout = dur("header_read_timeout", &raw.header_read_timeout)?;
    let body_read_timeout = dur("body_read_timeout", &raw.body_read_timeout)?;
    if raw.max_connections == 0 || raw.max_connections > 1_000_000 {
        return Err(err(
            file,
            "max_connections",
            "must be between 1 and 1000000",
        ));
    }
    let send_timeout = dur("send_timeout", &raw.send_timeout)?;
    let shutdown_grace = dur("shutdown_grace", &raw.shutdown_grace)?;
    let webhooks = WebhookSettings {
        timeout: dur("webhook_timeout", &raw.webhook_timeout)?,
        retry_initial: dur("webhook_retry_initial", &raw.webhook_retry_initial)?,
        retry_max: dur("webhook_retry_max", &raw.webhook_retry_max)?,
        max_age: dur("webhook_max_age", &raw.webhook_max_age)?,
    };
    for (k, d) in [
        ("header_read_timeout", header_read_timeout),
        ("body_read_timeout", body_read_timeout),
        ("send_timeout", send_timeout),
        ("shutdown_grace", shutdown_grace),
        ("webhook_timeout", webhooks.timeout),
        ("webhook_retry_initial", webhooks.retry_initial),
        ("webhook_retry_max", webhooks.retry_max),
        ("webhook_max_age", webhooks.max_age),
    ] {
        if d.is_zero() {
            return Err(err(file, k, "must be greater than zero"));
        }
    }
    if webhooks.retry_max < webhooks.retry_initial {
        return Err(err(
            file,
            "webhook_retry_max",
            "must be at least webhook_retry_initial",
        ));
    }

    let mut tenants: Vec<TenantConfig> = Vec::new();
    for (i, t) in raw.tenants.iter().enumerate() {
        if !valid_name(&t.name) {
            return Err(err(
                file,
                format!("tenants[{i}].name"),
                "must be 1-64 characters of [A-Za-z0-9_.:-]",
            ));
        }
        if tenants.iter().any(|x| x.name == t.name) {
            return Err(err(file, format!("tenants[{i}].name"), "duplicate tenant"));
        }
        let lateness = match &t.lateness {
            Some(v) => dur(&format!("tenants[{i}].lateness"), v)?,
            None => lateness,
        };
        if t.thresholds.len() > 16 || t.thresholds.iter().any(|p| *p == 0 || *p > 1000) {
            return Err(err(
                file,
                format!("tenants[{i}].thresholds"),
                "at most 16 percentages between 1 and 1000",
            ));
        }
        let webhook = match (&t.webhook_url, &t.webhook_secret) {
            (None, None) => None,
            (Some(url), Some(secret)) => {
                let ok = reqwest::Url::parse(url)
                    .map(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some())
                    .unwrap_or(false);
                if !ok {
                    return Err(err(
                        file,
                        format!("tenants[{i}].webhook_url"),
                        "must be an absolute http:// or https:// URL",
                    ));
                }
                if secret.len() < 16 {
                    return Err(err(
                        file,
                        format!("tenants[{i}].webhook_secret"),
                        "must be at least 16 bytes",
                    ));
                }
                Some(WebhookConfig {
                    url: url.clone(),
                    secret: secret.clone(),
                })
            }
            (Some(_), None) => {
                return Err(err(
                    file,
                    format!("tenants[{i}].webhook_secret"),
                    "is required with webhook_url",
                ))
            }
            (None, Some(_)) => {
                return Err(err(
                    file,
                    format!("tenants[{i}].webhook_url"),
                    "is required with webhook_secret",
                ))
            }
        };
        tenants.push(TenantConfig {
            name: t.name.clone(),
            lateness,
            thresholds: t.thresholds.clone(),
            webhook,
        });
    }
    for (i, t) in tenants.iter().enumerate() {
        if t.lateness > dedupe_retention {
            return Err(err(
                file,
                format!("tenants[{i}].lateness"),
                "must be at most dedupe_retention, or a late retry could be counted twice",
            ));
        }
    }
    let retention = |key: &str, v: &str| -> Result<Option<Duration>, ConfigError> {
        if v == "forever" {
            return Ok(None);
        }
        let d = dur(key, v)?;
        let max_lateness = tenants
            .iter()
            .map(|t| t.lateness)
            .chain(std::iter::once(lateness))
            .max()
            .unwrap_or_default();
        if d < Duration::from_secs(86400) || d < max_lateness {
            return Err(err(
                file,
                key,
                "must be \"forever\" or at least 1 day and at least every tenant's lateness",
            ));
        }
        Ok(Some(d))
    };
    let max_lateness = tenants
        .iter()
        .map(|t| t.lateness)
        .chain(std::iter::once(lateness))
        .max()
        .unwrap_or_default();
    let window_retention = crate::window::WindowRetention {
        minute: retention("retention_minute", &raw.retention_minute)?,
        hour: retention("retention_hour", &raw.retention_hour)?,
        day: retention("retention_day", &raw.retention_day)?,
        // A day more than any event can be late: such rows are never loaded again.
        quota_periods: Some(max_lateness + Duration::from_secs(86_400)),
    };
    let longer = |a: Option<Duration>, b: Option<Duration>| match (a, b) {
        (None, _) => true,
        (Some(_), None) => false,
        (Some(a), Some(b)) => a >= b,
    };
    if !longer(window_retention.hour, window_retention.minute) {
        return Err(err(
            file,
            "retention_hour",
            "must be at least retention_minute (coarser windows are kept at least as long)",
        ));
    }
    if !longer(window_retention.day, window_retention.hour) {
        return Err(err(
            file,
            "retention_day",
            "must be at least retention_hour (coarser windows are kept at least as long)",
        ));
    }
    let mut ensure_tenant = |name: &str| {
        if !tenants.iter().any(|t| t.name == name) {
            tenants.push(TenantConfig {
                name: name.to_string(),
                lateness,
                thresholds: Vec::new(),
                webhook: None,
            });
        }
    };

    let dev_hashes: Vec<[u8; 32]> = DEVELOPMENT_KEYS
        .iter()
        .map(|k| Sha256::digest(k.as_bytes()).into())
        .collect();
    let mut api_keys = Vec::new();
    let mut uses_development_keys = false;
    for (i, k) in raw.api_keys.iter().enumerate() {
        if !valid_name(&k.tenant) {
            return Err(err(
                file,
                format!("api_keys[{i}].tenant"),
                "must be 1-64 characters of [A-Za-z0-9_.:-]",
            ));
        }
        let role = Role::parse(&k.role).ok_or_else(|| {
            err(
                file,
                format!("api_keys[{i}].role"),
                format!("must be ingest, read or admin, not {:?}", k.role),
            )
        })?;
        let bytes = hex::decode(k.sha256.trim()).map_err(|_| {
            err(
                file,
                format!("api_keys[{i}].sha256"),
                "must be 64 hex digits (the SHA-256 of the key, never the key itself)",
            )
        })?;
        let sha256: [u8; 32] = bytes.try_into().map_err(|_| {
            err(
                file,
                format!("api_keys[{i}].sha256"),
                "must be 64 hex digits (the SHA-256 of the key, never the key itself)",
            )
        })?;
        if api_keys.iter().any(|x: &ApiKeyConfig| x.sha256 == sha256) {
            return Err(err(file, format!("api_keys[{i}].sha256"), "duplicate key"));
        }
        if dev_hashes.contains(&sha256) {
            uses_development_keys = true;
        }
        ensure_tenant(&k.tenant);
        api_keys.push(ApiKeyConfig {
            tenant: k.tenant.clone(),
            role,
            sha256,
            name: k
                .name
                .clone()
                .unwrap_or_else(|| format!("{}/{}#{i}", k.tenant, role.as_str())),
        });
    }

    let mut levers: Vec<LeverConfig> = Vec::new();
    for (i, l) in raw.levers.iter().enumerate() {
        if !valid_name(&l.tenant) {
            return Err(err(
                file,
                format!("levers[{i}].tenant"),
                "must be 1-64 characters of [A-Za-z0-9_.:-]",
            ));
        }
        if !valid_name(&l.name) {
            return Err(err(
                file,
                format!("levers[{i}].name"),
                "must be 1-64 characters of [A-Za-z0-9_.:-]",
            ));
        }
        let aggregation = Aggregation::parse(&l.aggregation).ok_or_else(|| {
            err(
                file,
                format!("levers[{i}].aggregation"),
                format!("must be sum, count, max or latest, not {:?}", l.aggregation),
            )
        })?;
        if levers
            .iter()
            .any(|x| x.tenant == l.tenant && x.name == l.name)
        {
            return Err(err(file, format!("levers[{i}].name"), "duplicate lever"));
        }
        ensure_tenant(&l.tenant);
        levers.push(LeverConfig {
            tenant: l.tenant.clone(),
            name: l.name.clone(),
            aggregation,
            unit: l.unit.clone(),
            value_property: l.value_property.clone(),
            bucket_property: l.bucket_property.clone(),
            description: l.description.clone(),
        });
    }

    Ok(Config {
        source: None,
        listen,
        metrics_listen,
        data_dir: PathBuf::from(raw.data_dir),
        durability,
        flush_interval,
        group_commit_interval,
        lateness,
        dedupe_retention,
        window_retention,
        shards: raw.shards,
        max_body_bytes: raw.max_body_bytes,
        max_batch_events: raw.max_batch_events,
        max_in_flight: raw.max_in_flight,
        backup_dir,
        backup_keep: raw.backup_keep,
        memory_limit,
        header_read_timeout,
        body_read_timeout,
        max_connections: raw.max_connections,
        send_timeout,
        shutdown_grace,
        webhooks,
        tenants,
        api_keys,
        levers,
        uses_development_keys,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_config_is_valid() {
        let text = include_str!("../../config/meterd.toml");
        let cfg = Config::from_toml("config/meterd.toml", text).unwrap();
        assert!(cfg.uses_development_keys);
        assert_eq!(cfg.durability, Durability::Fsync);
        assert_eq!(cfg.dedupe_retention, Duration::from_secs(35 * 86400));
    }

    #[test]
    fn refusals_name_the_key() {
        let e = Config::from_toml("f.toml", "durability = \"sometimes\"").unwrap_err();
        assert_eq!(e.key, "durability");
        let e = Config::from_toml("f.toml", "bogus = 1").unwrap_err();
        assert!(e.reason.contains("bogus"), "{e}");
        let e = Config::from_toml(
            "f.toml",
            "[[api_keys]]\ntenant = \"t\"\nrole = \"root\"\nsha256 = \"00\"\n",
        )
        .unwrap_err();
        assert_eq!(e.key, "api_keys[0].role");
        let e = Config::from_toml("f.toml", "flush_interval = \"soon\"").unwrap_err();
        assert_eq!(e.key, "flush_interval");
        // group_commit_interval: 1ms by default, 0 (no pacing) up to 10ms, not past it.
        let gci =
            |v: &str| Config::from_toml("f.toml", &format!("group_commit_interval = \"{v}\""));
        assert_eq!(
            Config::from_toml("f.toml", "")
                .unwrap()
                .group_commit_interval,
            Duration::from_millis(1)
        );
        assert_eq!(gci("0s").unwrap().group_commit_interval, Duration::ZERO);
        assert_eq!(
            gci("250us").unwrap().group_commit_interval,
            Duration::from_micros(250)
        );
        assert_eq!(
            gci("10ms").unwrap().group_commit_interval,
            MAX_GROUP_COMMIT_INTERVAL
        );
        let e = gci("10001us").unwrap_err();
        assert_eq!(e.key, "group_commit_interval");
        assert_eq!(gci("soon").unwrap_err().key, "group_commit_interval");
        let e = Config::from_toml("f.toml", "shards = \"many\"").unwrap_err();
        assert_eq!(e.key, "shards");
        // A tenant's lateness is bounded by dedupe_retention like the default one.
        let t = |l: &str| {
            format!("dedupe_retention = \"2d\"\n[[tenants]]\nname = \"a\"\nlateness = \"{l}\"\n")
        };
        assert!(Config::from_toml("f.toml", &t("2d")).is_ok());
        let e = Config::from_toml("f.toml", &t("49h")).unwrap_err();
        assert_eq!(e.key, "tenants[0].lateness");
        // Window retention: at least a day and every lateness; coarser at least as long.
        let e = Config::from_toml("f.toml", "retention_minute = \"23h\"").unwrap_err();
        assert_eq!(e.key, "retention_minute");
        assert!(Config::from_toml("f.toml", "retention_minute = \"1d\"").is_ok());
        let e = Config::from_toml("f.toml", "retention_minute = \"500d\"").unwrap_err();
        assert_eq!(e.key, "retention_hour");
        let e = Config::from_toml("f.toml", "retention_day = \"300d\"").unwrap_err();
        assert_eq!(e.key, "retention_day");
        let e = Config::from_toml("f.toml", "retention_minute = \"forever\"").unwrap_err();
        assert_eq!(e.key, "retention_hour");
    }

    #[test]
    fn memory_limit_edges() {
        let cfg = |t: &str| Config::from_toml("f.toml", t);
        // Default: 1 GiB, enough for the default 8 MiB bodies (128 x 8 MiB = 1 GiB).
        let c = cfg("").unwrap();
        assert_eq!(c.memory_limit, 1 << 30);
        assert_eq!(c.memtable_budget_bytes(), 128 << 20);
        assert_eq!(c.block_cache_bytes(), 128 << 20);
        assert_eq!(c.request_budget_bytes(), 256 << 20);
        assert_eq!(c.request_charge_bytes(0), REQUEST_MIN_CHARGE);
        assert_eq!(c.request_charge_bytes(1000), 32_000);
        assert_eq!(c.request_charge_bytes(u64::MAX), 32 * (8 << 20));
        // Smallest and one below.
        let small = "max_body_bytes = 2097152\nmemory_limit = ";
        assert!(cfg(&format!("{small}\"256MiB\"")).is_ok());
        assert!(cfg(&format!("{small}\"268435456\"")).is_ok());
        let e = cfg(&format!("{small}\"268435455\"")).unwrap_err();
        assert_eq!(e.key, "memory_limit");
        // 128 x max_body_bytes, and one byte of body more.
        assert!(cfg("max_body_bytes = 4194304\nmemory_limit = \"512MiB\"").is_ok());
        let e = cfg("max_body_bytes = 4194305\nmemory_limit = \"512MiB\"").unwrap_err();
        assert_eq!(e.key, "memory_limit");
        assert!(e.reason.contains("128 x max_body_bytes"), "{e}");
        let e = cfg("memory_limit = \"512MiB\"").unwrap_err();
        assert_eq!(e.key, "memory_limit");
        // Largest and past it; not a size.
        assert!(cfg("memory_limit = \"1TiB\"").is_ok());
        assert_eq!(
            cfg("memory_limit = \"1025GiB\"").unwrap_err().key,
            "memory_limit"
        );
        assert_eq!(
            cfg("memory_limit = \"lots\"").unwrap_err().key,
            "memory_limit"
        );
    }

    #[test]
    fn precedence_flags_env_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("m.toml");
        std::fs::write(&p, "listen = \"127.0.0.1:1111\"\ndata_dir = \"/file\"\n").unwrap();
        let mut env = HashMap::new();
        env.insert("METERD_LISTEN".to_string(), "127.0.0.1:2222".to_string());
        env.insert("METERD_DATA_DIR".to_string(), "/env".to_string());
        let flags = Overrides {
            config: Some(p),
            data_dir: Some("/flag".into()),
            ..Default::default()
        };
        let cfg = Config::load(&flags, &env).unwrap();
        assert_eq!(cfg.listen.port(), 2222);
        assert_eq!(cfg.data_dir, PathBuf::from("/flag"));
    }
}
