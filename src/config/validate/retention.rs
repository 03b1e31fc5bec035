//! How late events may be and how long things are kept: `lateness`,
//! `dedupe_retention` and the window retention (`retention_minute`, `retention_hour`,
//! `retention_day`, and the quota periods' derived from the largest lateness).

use std::time::Duration;

use super::{dur, err};
use crate::config::{ConfigError, RawConfig, TenantConfig};
use crate::window::WindowRetention;

/// `lateness` and `dedupe_retention`.
pub(super) fn lateness(file: &str, raw: &RawConfig) -> Result<(Duration, Duration), ConfigError> {
    let lateness = dur(file, "lateness", &raw.lateness)?;
    if lateness > Duration::from_secs(366 * 86400) {
        return Err(err(file, "lateness", "must be at most 366 days"));
    }
    let dedupe_retention = dur(file, "dedupe_retention", &raw.dedupe_retention)?;
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
    Ok((lateness, dedupe_retention))
}

/// The window retention: at least a day and every lateness (of `tenants` and the
/// default `lateness`), coarser windows kept at least as long.
pub(super) fn windows(
    file: &str,
    raw: &RawConfig,
    tenants: &[TenantConfig],
    lateness: Duration,
) -> Result<WindowRetention, ConfigError> {
    let max_lateness = tenants
        .iter()
        .map(|t| t.lateness)
        .chain(std::iter::once(lateness))
        .max()
        .unwrap_or_default();
    let retention = |key: &str, v: &str| -> Result<Option<Duration>, ConfigError> {
        if v == "forever" {
            return Ok(None);
        }
        let d = dur(file, key, v)?;
        if d < Duration::from_secs(86400) || d < max_lateness {
            return Err(err(
                file,
                key,
                "must be \"forever\" or at least 1 day and at least every tenant's lateness",
            ));
        }
        Ok(Some(d))
    };
    let window_retention = WindowRetention {
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
    Ok(window_retention)
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    #[test]
    fn refusals_name_the_key() {
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
}
