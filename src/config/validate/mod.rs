//! Validation of the raw configuration, one validator per section of the README's
//! configuration table: [`server`] (listeners, connections), [`storage`] (data dir,
//! durability, backups), [`retention`] (lateness, dedupe and window retention),
//! [`capacity`] (shards, request limits, memory), [`webhooks`], [`tenants`], [`keys`]
//! (`[[api_keys]]`), [`levers`] and [`cluster`]. [`validate`] runs them in the order the checks
//! have always run in, so a configuration with several problems is refused for the
//! same one as before.

mod capacity;
mod cluster;
mod keys;
mod levers;
mod retention;
mod server;
mod storage;
mod tenants;
mod webhooks;

use std::path::PathBuf;
use std::time::Duration;

use super::{parse_duration, Config, ConfigError, RawConfig};

/// Validates `raw`, read from `file`.
pub(super) fn validate(file: &str, raw: RawConfig) -> Result<Config, ConfigError> {
    let (listen, metrics_listen) = server::listeners(file, &raw)?;
    let storage = storage::storage(file, &raw)?;
    let (lateness, dedupe_retention) = retention::lateness(file, &raw)?;
    capacity::requests(file, &raw)?;
    let backup_dir = storage::backup(file, &raw)?;
    let memory_limit = capacity::memory(file, &raw)?;
    let connections = server::connections(file, &raw)?;
    let webhooks = webhooks::settings(file, &raw)?;
    // Durations that must not be zero are checked once all of them parsed.
    server::check_connections(file, &connections)?;
    webhooks::check(file, &webhooks)?;
    let mut tenants = tenants::tenants(file, &raw, lateness, dedupe_retention)?;
    let window_retention = retention::windows(file, &raw, &tenants, lateness)?;
    let (api_keys, uses_development_keys) = keys::api_keys(file, &raw, &mut tenants, lateness)?;
    let levers = levers::levers(file, &raw, &mut tenants, lateness)?;
    let cluster = cluster::cluster(file, raw.cluster.as_ref(), storage.durability)?;

    Ok(Config {
        source: None,
        listen,
        metrics_listen,
        data_dir: PathBuf::from(raw.data_dir),
        durability: storage.durability,
        flush_interval: storage.flush_interval,
        group_commit_interval: storage.group_commit_interval,
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
        header_read_timeout: connections.header_read_timeout,
        body_read_timeout: connections.body_read_timeout,
        max_connections: raw.max_connections,
        send_timeout: connections.send_timeout,
        shutdown_grace: connections.shutdown_grace,
        webhooks,
        tenants,
        api_keys,
        levers,
        uses_development_keys,
        cluster,
    })
}

fn err(file: &str, key: impl Into<String>, reason: impl Into<String>) -> ConfigError {
    ConfigError {
        file: file.into(),
        key: key.into(),
        reason: reason.into(),
    }
}

/// The duration at `key`, or a refusal naming it.
fn dur(file: &str, key: &str, v: &str) -> Result<Duration, ConfigError> {
    parse_duration(v).map_err(|r| err(file, key, r))
}
