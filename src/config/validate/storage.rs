//! Storage: `data_dir`, `durability`, `flush_interval`, `group_commit_interval`, and
//! the online backups (`backup_dir`, `backup_keep`).

use std::path::PathBuf;
use std::time::Duration;

use super::{dur, err};
use crate::config::{ConfigError, Durability, RawConfig, MAX_GROUP_COMMIT_INTERVAL};

/// The validated storage settings.
pub(super) struct Storage {
    pub(super) durability: Durability,
    pub(super) flush_interval: Duration,
    pub(super) group_commit_interval: Duration,
}

/// `data_dir`, `durability`, `flush_interval` and `group_commit_interval`.
pub(super) fn storage(file: &str, raw: &RawConfig) -> Result<Storage, ConfigError> {
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
    let flush_interval = dur(file, "flush_interval", &raw.flush_interval)?;
    if flush_interval < Duration::from_millis(10) || flush_interval > Duration::from_secs(3600) {
        return Err(err(file, "flush_interval", "must be between 10ms and 1h"));
    }
    let group_commit_interval = dur(file, "group_commit_interval", &raw.group_commit_interval)?;
    if group_commit_interval > MAX_GROUP_COMMIT_INTERVAL {
        return Err(err(
            file,
            "group_commit_interval",
            "must be at most 10ms (it adds up to that much to an acknowledgement)",
        ));
    }
    Ok(Storage {
        durability,
        flush_interval,
        group_commit_interval,
    })
}

/// `backup_keep` and `backup_dir` (not the data dir).
pub(super) fn backup(file: &str, raw: &RawConfig) -> Result<Option<PathBuf>, ConfigError> {
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
    Ok(backup_dir)
}

#[cfg(test)]
mod tests {
    use crate::config::Config;
    use crate::config::MAX_GROUP_COMMIT_INTERVAL;
    use std::time::Duration;

    #[test]
    fn refusals_name_the_key() {
        let e = Config::from_toml("f.toml", "durability = \"sometimes\"").unwrap_err();
        assert_eq!(e.key, "durability");
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
    }
}
