//! `[[tenants]]`: names, lateness (at most `dedupe_retention`), thresholds and
//! webhooks; and the default entry of a tenant named only by a key or a lever.

use std::time::Duration;

use super::{dur, err};
use crate::config::{valid_name, ConfigError, RawConfig, TenantConfig, WebhookConfig};

/// The `[[tenants]]` tables; a tenant without its own `lateness` gets `lateness`.
pub(super) fn tenants(
    file: &str,
    raw: &RawConfig,
    lateness: Duration,
    dedupe_retention: Duration,
) -> Result<Vec<TenantConfig>, ConfigError> {
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
            Some(v) => dur(file, &format!("tenants[{i}].lateness"), v)?,
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
    Ok(tenants)
}

/// Adds tenant `name` with the defaults unless it is in `tenants`.
pub(super) fn ensure(tenants: &mut Vec<TenantConfig>, name: &str, lateness: Duration) {
    if !tenants.iter().any(|t| t.name == name) {
        tenants.push(TenantConfig {
            name: name.to_string(),
            lateness,
            thresholds: Vec::new(),
            webhook: None,
        });
    }
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    #[test]
    fn refusals_name_the_key() {
        // A tenant's lateness is bounded by dedupe_retention like the default one.
        let t = |l: &str| {
            format!("dedupe_retention = \"2d\"\n[[tenants]]\nname = \"a\"\nlateness = \"{l}\"\n")
        };
        assert!(Config::from_toml("f.toml", &t("2d")).is_ok());
        let e = Config::from_toml("f.toml", &t("49h")).unwrap_err();
        assert_eq!(e.key, "tenants[0].lateness");
    }
}
