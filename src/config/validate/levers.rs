//! `[[levers]]` declared in the file: tenant, name (each pair once) and aggregation.

use std::time::Duration;

use super::{err, tenants};
use crate::config::{valid_name, Aggregation, ConfigError, LeverConfig, RawConfig, TenantConfig};

/// The levers. Tenants named by a lever are added to `tenants` (with `lateness`) when
/// missing.
pub(super) fn levers(
    file: &str,
    raw: &RawConfig,
    tenants: &mut Vec<TenantConfig>,
    lateness: Duration,
) -> Result<Vec<LeverConfig>, ConfigError> {
    let mut levers: Vec<LeverConfig> = Vec::new();
    for (i, l) in raw.levers.iter().enumerate() {
        if !valid_name(&l.tenant) {
            return Err(err(
                file,
                format!("levers[{i}].tenant"),
                "must be 1-64 characters of [A-Za-z0-9_.:-]",
            ));
        }
        if !valid_name(&l.name) {
            return Err(err(
                file,
                format!("levers[{i}].name"),
                "must be 1-64 characters of [A-Za-z0-9_.:-]",
            ));
        }
        let aggregation = Aggregation::parse(&l.aggregation).ok_or_else(|| {
            err(
                file,
                format!("levers[{i}].aggregation"),
                format!("must be sum, count, max or latest, not {:?}", l.aggregation),
            )
        })?;
        if levers
            .iter()
            .any(|x| x.tenant == l.tenant && x.name == l.name)
        {
            return Err(err(file, format!("levers[{i}].name"), "duplicate lever"));
        }
        tenants::ensure(tenants, &l.tenant, lateness);
        levers.push(LeverConfig {
            tenant: l.tenant.clone(),
            name: l.name.clone(),
            aggregation,
            unit: l.unit.clone(),
            value_property: l.value_property.clone(),
            bucket_property: l.bucket_property.clone(),
            description: l.description.clone(),
        });
    }
    Ok(levers)
}
