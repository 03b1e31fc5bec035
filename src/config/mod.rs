//! Configuration: file + environment + flags -> validated [`Config`].
//!
//! Precedence is flags over environment over file over defaults (SPEC 8). The
//! environment is passed in as a map so that tests never mutate the process environment.
//! Every refusal names the file, the key and the reason; the binary exits with code 64.

mod kinds;
#[cfg(test)]
mod limits;
mod raw;
mod validate;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

pub use raw::{RawApiKey, RawCluster, RawConfig, RawLever, RawTenant};

pub use kinds::{Aggregation, Role};
use validate::validate;

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
    /// Cluster mode (`[cluster]`); `None` runs a single node.
    pub cluster: Option<ClusterConfig>,
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

/// Validated `[cluster]` settings (docs/cluster.md).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterConfig {
    /// This node's name: 1 to 64 of `A-Z a-z 0-9 - _`, unique in the cluster.
    pub node: String,
    /// NATS server URLs.
    pub nats_urls: Vec<String>,
    /// NATS credentials file, when the servers require one.
    pub credentials: Option<PathBuf>,
    /// Number of partitions, 1 to [`MAX_PARTITIONS`].
    pub partitions: u32,
    /// Replicas of each journal stream: 3 or 5.
    pub replicas: usize,
    /// How long a partition lease lasts without renewal.
    pub lease_ttl: Duration,
    /// How often an owner renews its leases (at most a third of `lease_ttl`).
    pub lease_renew: Duration,
    /// How long an owner re-sends an unanswered journal append before it gives the
    /// partition up.
    pub append_retry: Duration,
}

/// Largest `[cluster] partitions`.
pub const MAX_PARTITIONS: u32 = 4096;

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
    fn refusals_of_the_file_name_the_key() {
        let e = Config::from_toml("f.toml", "bogus = 1").unwrap_err();
        assert!(e.reason.contains("bogus"), "{e}");
        let e = Config::from_toml("f.toml", "shards = \"many\"").unwrap_err();
        assert_eq!(e.key, "shards");
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
