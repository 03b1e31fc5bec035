//! The listeners (`listen`, `metrics_listen`) and the connection settings
//! (`header_read_timeout`, `body_read_timeout`, `max_connections`, `send_timeout`,
//! `shutdown_grace`).

use std::net::SocketAddr;
use std::time::Duration;

use super::{dur, err};
use crate::config::{ConfigError, RawConfig};

/// The API and metrics listen addresses.
pub(super) fn listeners(
    file: &str,
    raw: &RawConfig,
) -> Result<(SocketAddr, SocketAddr), ConfigError> {
    let addr = |key: &str, v: &str| -> Result<SocketAddr, ConfigError> {
        v.parse()
            .map_err(|_| err(file, key, format!("not a socket address: {v:?}")))
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
    Ok((listen, metrics_listen))
}

/// The connection timeouts (parsed, not yet checked against zero: see
/// [`check_connections`]).
pub(super) struct Connections {
    pub(super) header_read_timeout: Duration,
    pub(super) body_read_timeout: Duration,
    pub(super) send_timeout: Duration,
    pub(super) shutdown_grace: Duration,
}

/// The connection timeouts and `max_connections`.
pub(super) fn connections(file: &str, raw: &RawConfig) -> Result<Connections, ConfigError> {
    let header_read_timeout = dur(file, "header_read_timeout", &raw.header_read_timeout)?;
    let body_read_timeout = dur(file, "body_read_timeout", &raw.body_read_timeout)?;
    if raw.max_connections == 0 || raw.max_connections > 1_000_000 {
        return Err(err(
            file,
            "max_connections",
            "must be between 1 and 1000000",
        ));
    }
    let send_timeout = dur(file, "send_timeout", &raw.send_timeout)?;
    let shutdown_grace = dur(file, "shutdown_grace", &raw.shutdown_grace)?;
    Ok(Connections {
        header_read_timeout,
        body_read_timeout,
        send_timeout,
        shutdown_grace,
    })
}

/// Refuses a zero connection timeout.
pub(super) fn check_connections(file: &str, c: &Connections) -> Result<(), ConfigError> {
    for (k, d) in [
        ("header_read_timeout", c.header_read_timeout),
        ("body_read_timeout", c.body_read_timeout),
        ("send_timeout", c.send_timeout),
        ("shutdown_grace", c.shutdown_grace),
    ] {
        if d.is_zero() {
            return Err(err(file, k, "must be greater than zero"));
        }
    }
    Ok(())
}
