//! `[cluster]`: cluster mode on NATS JetStream (docs/cluster.md). Absent, meterd runs as
//! a single node and none of this applies.

use std::path::PathBuf;
use std::time::Duration;

use super::{dur, err};
use crate::config::{ClusterConfig, ConfigError, Durability, RawCluster, MAX_PARTITIONS};

/// Shortest and longest `lease_ttl`.
const LEASE_TTL: (Duration, Duration) = (Duration::from_secs(2), Duration::from_secs(60));
/// Shortest and longest `append_retry` (the longest stays well inside the journal
/// streams' 5-minute duplicate window, so a late re-send is still recognised).
const APPEND_RETRY: (Duration, Duration) = (Duration::from_secs(1), Duration::from_secs(120));

/// A node name: 1 to 64 of `A-Z a-z 0-9 - _` (it is a NATS subject token and KV key).
fn valid_node(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// A NATS URL: `nats://` or `tls://`, then `host:port` (user info allowed).
fn valid_url(url: &str) -> bool {
    let Some(rest) = url
        .strip_prefix("nats://")
        .or_else(|| url.strip_prefix("tls://"))
    else {
        return false;
    };
    let hostport = rest.rsplit('@').next().unwrap_or(rest);
    match hostport.rsplit_once(':') {
        Some((host, port)) => !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0),
        None => false,
    }
}

/// The validated `[cluster]` table, if there is one.
pub(super) fn cluster(
    file: &str,
    raw: Option<&RawCluster>,
    durability: Durability,
) -> Result<Option<ClusterConfig>, ConfigError> {
    let Some(c) = raw else {
        return Ok(None);
    };
    if !valid_node(&c.node) {
        return Err(err(
            file,
            "cluster.node",
            "must be 1 to 64 characters of A-Z a-z 0-9 - _",
        ));
    }
    if c.nats_urls.is_empty() || c.nats_urls.len() > 32 {
        return Err(err(
            file,
            "cluster.nats_urls",
            "must list 1 to 32 NATS server URLs",
        ));
    }
    if let Some(bad) = c.nats_urls.iter().find(|u| !valid_url(u)) {
        return Err(err(
            file,
            "cluster.nats_urls",
            format!("{bad:?} is not a nats://host:port or tls://host:port URL"),
        ));
    }
    let credentials = match &c.credentials {
        None => None,
        Some(path) => {
            if std::fs::File::open(path).is_err() {
                return Err(err(
                    file,
                    "cluster.credentials",
                    format!("{path:?} cannot be read"),
                ));
            }
            Some(PathBuf::from(path))
        }
    };
    if !(1..=MAX_PARTITIONS).contains(&c.partitions) {
        return Err(err(
            file,
            "cluster.partitions",
            format!("must be 1 to {MAX_PARTITIONS}"),
        ));
    }
    if c.replicas != 3 && c.replicas != 5 {
        return Err(err(file, "cluster.replicas", "must be 3 or 5"));
    }
    let lease_ttl = dur(file, "cluster.lease_ttl", &c.lease_ttl)?;
    if lease_ttl < LEASE_TTL.0 || lease_ttl > LEASE_TTL.1 {
        return Err(err(file, "cluster.lease_ttl", "must be 2s to 60s"));
    }
    let lease_renew = dur(file, "cluster.lease_renew", &c.lease_renew)?;
    if lease_renew.is_zero() || lease_renew * 3 > lease_ttl {
        return Err(err(
            file,
            "cluster.lease_renew",
            "must be greater than zero and at most a third of lease_ttl",
        ));
    }
    let append_retry = dur(file, "cluster.append_retry", &c.append_retry)?;
    if append_retry < APPEND_RETRY.0 || append_retry > APPEND_RETRY.1 {
        return Err(err(file, "cluster.append_retry", "must be 1s to 120s"));
    }
    if durability == Durability::Buffered {
        return Err(err(
            file,
            "durability",
            "must be fsync in cluster mode: an acknowledgement there always waits for the \
             journal stream's quorum of fsynced replicas, so buffered would promise nothing",
        ));
    }
    Ok(Some(ClusterConfig {
        node: c.node.clone(),
        nats_urls: c.nats_urls.clone(),
        credentials,
        partitions: c.partitions,
        replicas: c.replicas,
        lease_ttl,
        lease_renew,
        append_retry,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_names_and_urls() {
        assert!(valid_node("node-1_A"));
        assert!(!valid_node(""));
        assert!(!valid_node("a.b"));
        assert!(!valid_node(&"n".repeat(65)));
        assert!(valid_node(&"n".repeat(64)));
        assert!(valid_url("nats://127.0.0.1:4222"));
        assert!(valid_url("tls://user:pw@nats.example:4222"));
        assert!(!valid_url("http://127.0.0.1:4222"));
        assert!(!valid_url("nats://127.0.0.1"));
        assert!(!valid_url("nats://:4222"));
        assert!(!valid_url("nats://h:0"));
    }
}
