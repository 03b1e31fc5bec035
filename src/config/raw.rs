//! The configuration file as written: a serde struct with defaults and
//! `deny_unknown_fields`, validated into [`super::Config`] by [`super::validate`].

use serde::Deserialize;

/// Top level of `meterd.toml`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    /// API listen address.
    #[serde(default = "d_listen")]
    pub listen: String,
    /// Metrics (and health) listen address.
    #[serde(default = "d_metrics_listen")]
    pub metrics_listen: String,
    /// RocksDB data directory.
    #[serde(default = "d_data_dir")]
    pub data_dir: String,
    /// `fsync` or `buffered`.
    #[serde(default = "d_durability")]
    pub durability: String,
    /// How often in-memory counters are flushed into RocksDB windows.
    #[serde(default = "d_flush_interval")]
    pub flush_interval: String,
    /// Shortest time between two group-commit fsyncs (`durability = "fsync"`).
    #[serde(default = "d_group_commit_interval")]
    pub group_commit_interval: String,
    /// Default accepted lateness of event times.
    #[serde(default = "d_lateness")]
    pub lateness: String,
    /// How long idempotency keys are remembered.
    #[serde(default = "d_dedupe_retention")]
    pub dedupe_retention: String,
    /// How long minute windows are kept (`forever` keeps them).
    #[serde(default = "d_retention_minute")]
    pub retention_minute: String,
    /// How long hour windows are kept.
    #[serde(default = "d_retention_hour")]
    pub retention_hour: String,
    /// How long day windows are kept.
    #[serde(default = "d_retention_day")]
    pub retention_day: String,
    /// Number of counter shards.
    #[serde(default = "d_shards")]
    pub shards: usize,
    /// Largest accepted request body in bytes.
    #[serde(default = "d_max_body_bytes")]
    pub max_body_bytes: usize,
    /// Largest accepted number of events in one request.
    #[serde(default = "d_max_batch_events")]
    pub max_batch_events: usize,
    /// Requests processed at once; more get 429.
    #[serde(default = "d_max_in_flight")]
    pub max_in_flight: usize,
    /// Directory for online backups (`POST /backup` on the metrics listener); unset:
    /// backups are off.
    #[serde(default)]
    pub backup_dir: Option<String>,
    /// Backups kept in `backup_dir`; older ones are deleted after a new one succeeds.
    #[serde(default = "d_backup_keep")]
    pub backup_keep: usize,
    /// Memory the daemon plans for (e.g. "1GiB"): sizes RocksDB's memtables and the
    /// request bodies in progress.
    #[serde(default = "d_memory_limit")]
    pub memory_limit: String,
    /// Time allowed to receive the request head.
    #[serde(default = "d_header_read_timeout")]
    pub header_read_timeout: String,
    /// Time allowed to receive a whole request body.
    #[serde(default = "d_body_read_timeout")]
    pub body_read_timeout: String,
    /// Open connections per listener; past it a connection gets 429 and is closed.
    #[serde(default = "d_max_connections")]
    pub max_connections: usize,
    /// Time a response may wait for the client to accept more bytes.
    #[serde(default = "d_send_timeout")]
    pub send_timeout: String,
    /// Time allowed for draining and the final flush at shutdown.
    #[serde(default = "d_shutdown_grace")]
    pub shutdown_grace: String,
    /// Time allowed for one webhook delivery attempt.
    #[serde(default = "d_webhook_timeout")]
    pub webhook_timeout: String,
    /// Delay before the first webhook retry; doubles per attempt (with jitter).
    #[serde(default = "d_webhook_retry_initial")]
    pub webhook_retry_initial: String,
    /// Longest delay between webhook retries.
    #[serde(default = "d_webhook_retry_max")]
    pub webhook_retry_max: String,
    /// Age after which an undeliverable notification is dropped.
    #[serde(default = "d_webhook_max_age")]
    pub webhook_max_age: String,
    /// Per-tenant settings.
    #[serde(default)]
    pub tenants: Vec<RawTenant>,
    /// API keys, stored as SHA-256 hashes.
    #[serde(default)]
    pub api_keys: Vec<RawApiKey>,
    /// Levers declared in the file (created at start when absent from the store).
    #[serde(default)]
    pub levers: Vec<RawLever>,
    /// Cluster mode on NATS JetStream (absent: a single node).
    #[serde(default)]
    pub cluster: Option<RawCluster>,
}

/// The `[cluster]` table.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCluster {
    /// This node's name, unique in the cluster.
    pub node: String,
    /// NATS server URLs (`nats://host:port` or `tls://host:port`).
    pub nats_urls: Vec<String>,
    /// NATS credentials file (`.creds`), when the servers require one.
    pub credentials: Option<String>,
    /// Number of partitions (every node must use the same).
    #[serde(default = "d_partitions")]
    pub partitions: u32,
    /// Replicas of each journal stream.
    #[serde(default = "d_replicas")]
    pub replicas: usize,
    /// How long a partition lease lasts without renewal.
    #[serde(default = "d_lease_ttl")]
    pub lease_ttl: String,
    /// How often an owner renews its leases.
    #[serde(default = "d_lease_renew")]
    pub lease_renew: String,
    /// How long an owner re-sends an unanswered journal append before it gives the
    /// partition up.
    #[serde(default = "d_append_retry")]
    pub append_retry: String,
}

fn d_partitions() -> u32 {
    64
}
fn d_replicas() -> usize {
    3
}
fn d_lease_ttl() -> String {
    "6s".into()
}
fn d_lease_renew() -> String {
    "2s".into()
}
fn d_append_retry() -> String {
    "10s".into()
}

/// One `[[tenants]]` table.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTenant {
    /// Tenant name.
    pub name: String,
    /// Lateness override for this tenant.
    pub lateness: Option<String>,
    /// Default threshold percentages for quota notifications.
    #[serde(default)]
    pub thresholds: Vec<u32>,
    /// Where threshold notifications are POSTed (`http` or `https`).
    pub webhook_url: Option<String>,
    /// HMAC-SHA256 key signing the notifications (at least 16 bytes).
    pub webhook_secret: Option<String>,
}

/// One `[[api_keys]]` table.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawApiKey {
    /// Tenant the key belongs to.
    pub tenant: String,
    /// `ingest`, `read` or `admin`.
    pub role: String,
    /// Hex SHA-256 of the key.
    pub sha256: String,
    /// Optional label shown in logs instead of the key.
    pub name: Option<String>,
}

/// One `[[levers]]` table.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLever {
    /// Tenant owning the lever.
    pub tenant: String,
    /// Lever name.
    pub name: String,
    /// `sum`, `count`, `max` or `latest`.
    pub aggregation: String,
    /// Unit label.
    #[serde(default)]
    pub unit: String,
    /// JSON path of the value in CloudEvents data.
    pub value_property: Option<String>,
    /// JSON path of the bucket in CloudEvents data.
    pub bucket_property: Option<String>,
    /// Free text.
    pub description: Option<String>,
}

fn d_listen() -> String {
    "127.0.0.1:8080".into()
}
fn d_metrics_listen() -> String {
    "127.0.0.1:9090".into()
}
fn d_data_dir() -> String {
    "./data".into()
}
fn d_durability() -> String {
    "fsync".into()
}
fn d_flush_interval() -> String {
    "1s".into()
}
fn d_group_commit_interval() -> String {
    "1ms".into()
}
fn d_lateness() -> String {
    "1h".into()
}
fn d_dedupe_retention() -> String {
    "35d".into()
}
fn d_shards() -> usize {
    64
}
fn d_max_body_bytes() -> usize {
    8 * 1024 * 1024
}
fn d_max_batch_events() -> usize {
    10_000
}
fn d_max_in_flight() -> usize {
    1024
}
fn d_backup_keep() -> usize {
    7
}
fn d_memory_limit() -> String {
    "1GiB".into()
}
fn d_header_read_timeout() -> String {
    "10s".into()
}
fn d_body_read_timeout() -> String {
    "30s".into()
}
fn d_max_connections() -> usize {
    10_000
}
fn d_send_timeout() -> String {
    "30s".into()
}
fn d_shutdown_grace() -> String {
    "30s".into()
}
fn d_webhook_timeout() -> String {
    "10s".into()
}
fn d_webhook_retry_initial() -> String {
    "1s".into()
}
fn d_webhook_retry_max() -> String {
    "10m".into()
}
fn d_webhook_max_age() -> String {
    "72h".into()
}
fn d_retention_minute() -> String {
    "7d".into()
}
fn d_retention_hour() -> String {
    "400d".into()
}
fn d_retention_day() -> String {
    "forever".into()
}
