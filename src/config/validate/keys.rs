//! `[[api_keys]]`: tenant, role and SHA-256 of each key (each key once), and whether a
//! shipped development key is among them.

use std::time::Duration;

use sha2::{Digest, Sha256};

use super::{err, tenants};
use crate::config::{
    valid_name, ApiKeyConfig, ConfigError, RawConfig, Role, TenantConfig, DEVELOPMENT_KEYS,
};

/// The API keys, and whether any is a development key. Tenants named by a key are added
/// to `tenants` (with `lateness`) when missing.
pub(super) fn api_keys(
    file: &str,
    raw: &RawConfig,
    tenants: &mut Vec<TenantConfig>,
    lateness: Duration,
) -> Result<(Vec<ApiKeyConfig>, bool), ConfigError> {
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
        tenants::ensure(tenants, &k.tenant, lateness);
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
    Ok((api_keys, uses_development_keys))
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    #[test]
    fn refusals_name_the_key() {
        let e = Config::from_toml(
            "f.toml",
            "[[api_keys]]\ntenant = \"t\"\nrole = \"root\"\nsha256 = \"00\"\n",
        )
        .unwrap_err();
        assert_eq!(e.key, "api_keys[0].role");
    }
}
