//! Capacity: `shards`, the request limits (`max_body_bytes`, `max_batch_events`,
//! `max_in_flight`) and `memory_limit`, which must hold a request of the largest size
//! in the request budget.

use super::err;
use crate::config::{
    ConfigError, RawConfig, MAX_MEMORY_LIMIT, MIN_MEMORY_LIMIT, REQUEST_BYTES_PER_BODY_BYTE,
    REQUEST_MIN_CHARGE, REQUEST_SHARE,
};

/// `shards`, `max_body_bytes`, `max_batch_events` and `max_in_flight`.
pub(super) fn requests(file: &str, raw: &RawConfig) -> Result<(), ConfigError> {
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
    Ok(())
}

/// `memory_limit`, in bytes.
pub(super) fn memory(file: &str, raw: &RawConfig) -> Result<u64, ConfigError> {
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
    Ok(memory_limit)
}

#[cfg(test)]
mod tests {
    use crate::config::Config;
    use crate::config::REQUEST_MIN_CHARGE;

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
}
