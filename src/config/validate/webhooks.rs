//! Webhook delivery settings shared by every tenant's webhook: `webhook_timeout`,
//! `webhook_retry_initial`, `webhook_retry_max`, `webhook_max_age`.

use super::{dur, err};
use crate::config::{ConfigError, RawConfig, WebhookSettings};

/// The webhook durations (parsed, not yet checked: see [`check`]).
pub(super) fn settings(file: &str, raw: &RawConfig) -> Result<WebhookSettings, ConfigError> {
    Ok(WebhookSettings {
        timeout: dur(file, "webhook_timeout", &raw.webhook_timeout)?,
        retry_initial: dur(file, "webhook_retry_initial", &raw.webhook_retry_initial)?,
        retry_max: dur(file, "webhook_retry_max", &raw.webhook_retry_max)?,
        max_age: dur(file, "webhook_max_age", &raw.webhook_max_age)?,
    })
}

/// Refuses a zero webhook duration, and a largest retry delay below the first.
pub(super) fn check(file: &str, webhooks: &WebhookSettings) -> Result<(), ConfigError> {
    for (k, d) in [
        ("webhook_timeout", webhooks.timeout),
        ("webhook_retry_initial", webhooks.retry_initial),
        ("webhook_retry_max", webhooks.retry_max),
        ("webhook_max_age", webhooks.max_age),
    ] {
        if d.is_zero() {
            return Err(err(file, k, "must be greater than zero"));
        }
    }
    if webhooks.retry_max < webhooks.retry_initial {
        return Err(err(
            file,
            "webhook_retry_max",
            "must be at least webhook_retry_initial",
        ));
    }
    Ok(())
}
