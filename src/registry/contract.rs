//! Contracts: what a customer bought (SPEC 1, 5).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// Longest chain of parent contracts above a contract (reseller pools nest shallowly).
/// The admin API refuses deeper chains; the quota book sizes its chains by it.
pub const MAX_PARENT_DEPTH: usize = 8;

/// Lifecycle state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ContractStatus {
    /// Accepting usage.
    Active,
    /// Ended at `ends_at`; later events get `contract_ended`.
    Ended,
}

/// One quota as written in a contract or plan body. Quota enforcement builds on this
/// model; the core pipeline validates and stores it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct QuotaBody {
    /// Lever name.
    pub lever: String,
    /// `day`, `week`, `month`, `billing_period` or `lifetime`.
    pub period: String,
    /// Limit as a decimal string (`-1` = unlimited).
    #[serde(with = "amount_text")]
    pub limit: String,
    /// `hard` or `soft`.
    #[serde(default = "default_mode")]
    pub mode: String,
}

fn default_mode() -> String {
    "hard".into()
}

/// Accepts a JSON number or a decimal string, keeping the exact text.
pub(crate) mod amount_text {
    use serde::{Deserialize, Deserializer, Serializer};
    use serde_json::value::RawValue;

    pub fn serialize<S: Serializer>(v: &str, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(v)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
        let raw: Box<RawValue> = Deserialize::deserialize(d)?;
        let text = raw.get();
        if let Some(inner) = text.strip_prefix('"').and_then(|t| t.strip_suffix('"')) {
            Ok(inner.to_string())
        } else if text.starts_with(|c: char| c == '-' || c.is_ascii_digit()) {
            Ok(text.to_string())
        } else {
            Err(serde::de::Error::custom(
                "expected a number or a decimal string",
            ))
        }
    }
}

/// The body of `PUT /v1/contracts/{contract}`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ContractBody {
    /// Customer id.
    pub customer: String,
    /// Plan name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan: Option<String>,
    /// IANA time zone (default `UTC`).
    #[serde(default = "default_tz")]
    pub timezone: String,
    /// Billing anchor (RFC 3339); default: creation time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub anchor: Option<String>,
    /// Parent contract (reseller pool).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,
    /// Quotas overriding the plan's per lever and period.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub quotas: Vec<QuotaBody>,
    /// Threshold percentages for notifications.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub thresholds: Vec<u32>,
    /// Server field echoed back by clients; ignored.
    #[serde(default, skip_serializing)]
    pub id: Option<serde::de::IgnoredAny>,
    /// Server field; ignored.
    #[serde(default, skip_serializing)]
    pub status: Option<serde::de::IgnoredAny>,
    /// Server field; ignored.
    #[serde(default, skip_serializing)]
    pub ends_at: Option<serde::de::IgnoredAny>,
    /// Server field; ignored.
    #[serde(default, skip_serializing)]
    pub created_at: Option<serde::de::IgnoredAny>,
    /// Server field; ignored.
    #[serde(default, skip_serializing)]
    pub updated_at: Option<serde::de::IgnoredAny>,
}

fn default_tz() -> String {
    "UTC".into()
}

/// Validates an external id (contract, customer, plan, grant, adjustment): 1..=128
/// bytes, no control characters, no `/`, not `.` or `..` (ids appear in URL paths).
pub fn valid_external_id(s: &str) -> bool {
    // `.` and `..` are removed from URL paths by standard clients, even percent-encoded,
    // so resources with those ids could never be reached.
    !s.is_empty()
        && s.len() <= 128
        && s != "."
        && s != ".."
        && !s.chars().any(|c| c.is_control() || c == '/')
}

impl ContractBody {
    /// Checks field contents; returns the offending field and reason. `lever_exists`
    /// answers whether a quota's lever is defined.
    pub fn validate(
        &self,
        lever_exists: impl Fn(&str) -> bool,
    ) -> Result<(), (&'static str, String)> {
        if !valid_external_id(&self.customer) {
            return Err((
                "customer",
                "must be 1-128 bytes, no control characters or '/'".into(),
            ));
        }
        if let Some(p) = &self.plan {
            if !valid_external_id(p) {
                return Err((
                    "plan",
                    "must be 1-128 bytes, no control characters or '/'".into(),
                ));
            }
        }
        if self.timezone.parse::<chrono_tz::Tz>().is_err() {
            return Err((
                "timezone",
                format!("unknown IANA time zone {:?}", self.timezone),
            ));
        }
        if let Some(a) = &self.anchor {
            if DateTime::parse_from_rfc3339(a).is_err() {
                return Err(("anchor", "must be an RFC 3339 time".into()));
            }
        }
        if let Some(p) = &self.parent {
            if !valid_external_id(p) {
                return Err((
                    "parent",
                    "must be 1-128 bytes, no control characters or '/'".into(),
                ));
            }
        }
        validate_quotas(&self.quotas, &self.thresholds, lever_exists)?;
        Ok(())
    }
}

/// Rewrites validated quota limits in canonical decimal form (`10.50` -> `10.5`,
/// `1e-05` -> `0.00001`), keeping `-1`, so stored and returned bodies show the exact
/// value meterd enforces.
pub fn normalize_quotas(quotas: &mut [QuotaBody]) {
    for q in quotas {
        if q.limit.trim() == "-1" {
            q.limit = "-1".into();
        } else if let Ok(a) = crate::decimal::Amount::parse_input(&q.limit) {
            q.limit = a.to_string();
        }
    }
}

/// Validates quotas and thresholds of a contract or plan body.
pub fn validate_quotas(
    quotas: &[QuotaBody],
    thresholds: &[u32],
    lever_exists: impl Fn(&str) -> bool,
) -> Result<(), (&'static str, String)> {
    if quotas.len() > 256 {
        return Err(("quotas", "at most 256 quotas".into()));
    }
    for (i, q) in quotas.iter().enumerate() {
        if !lever_exists(&q.lever) {
            return Err(("quotas.lever", format!("unknown lever {:?}", q.lever)));
        }
        if !matches!(
            q.period.as_str(),
            "day" | "week" | "month" | "billing_period" | "lifetime"
        ) {
            return Err((
                "quotas.period",
                "must be day, week, month, billing_period or lifetime".into(),
            ));
        }
        if q.limit != "-1" {
            crate::decimal::Amount::parse_input(&q.limit)
                .map_err(|e| ("quotas.limit", format!("{e} (or -1 for unlimited)")))?;
        }
        if !matches!(q.mode.as_str(), "hard" | "soft") {
            return Err(("quotas.mode", "must be hard or soft".into()));
        }
        if quotas[..i]
            .iter()
            .any(|o| o.lever == q.lever && o.period == q.period)
        {
            return Err((
                "quotas",
                format!("two quotas for lever {:?} and period {}", q.lever, q.period),
            ));
        }
    }
    if thresholds.len() > 16 || thresholds.iter().any(|t| *t == 0 || *t > 1000) {
        return Err((
            "thresholds",
            "at most 16 percentages between 1 and 1000".into(),
        ));
    }
    Ok(())
}

/// A stored contract.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Contract {
    /// External id.
    pub id: String,
    /// The caller's definition (stored nested; see [`Contract::view`] for the API shape).
    pub body: ContractBody,
    /// Lifecycle state.
    pub status: ContractStatus,
    /// End instant (RFC 3339) once ended or scheduled to end.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ends_at: Option<String>,
    /// Creation time.
    pub created_at: String,
    /// Last change.
    pub updated_at: String,
    /// `ends_at` in epoch milliseconds, for the ingest check.
    #[serde(skip)]
    pub ends_at_ms: Option<i64>,
    /// Parsed time zone (derived).
    #[serde(skip)]
    pub tz: Option<chrono_tz::Tz>,
    /// Billing anchor in epoch ms: `anchor`, else `created_at` (derived).
    #[serde(skip)]
    pub anchor_ms: i64,
    /// Parsed quotas (derived).
    #[serde(skip)]
    pub parsed_quotas: Vec<ParsedQuota>,
    /// `id` as a shared string (derived), for the quota rows' keys: one allocation per
    /// definition instead of one per event, and equal keys compare by pointer first.
    #[serde(skip)]
    pub shared_id: Arc<str>,
}

/// A quota with its fields parsed, for the per-event decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedQuota {
    /// Lever name.
    pub lever: String,
    /// Period kind.
    pub kind: crate::quota::period::PeriodKind,
    /// Limit; `None` is unlimited.
    pub limit: Option<crate::decimal::Amount>,
    /// Hard or soft.
    pub hard: bool,
}

/// Parses validated quota bodies (invalid entries, which validation prevents, are
/// skipped).
pub fn parse_quotas(quotas: &[QuotaBody]) -> Vec<ParsedQuota> {
    quotas
        .iter()
        .filter_map(|q| {
            let kind = crate::quota::period::PeriodKind::parse(&q.period)?;
            let limit = if q.limit == "-1" {
                None
            } else {
                Some(crate::decimal::Amount::parse_input(&q.limit).ok()?)
            };
            Some(ParsedQuota {
                lever: q.lever.clone(),
                kind,
                limit,
                hard: q.mode != "soft",
            })
        })
        .collect()
}

impl Contract {
    /// Recomputes derived fields after loading or changing.
    pub fn finish(mut self) -> Contract {
        self.ends_at_ms = self
            .ends_at
            .as_deref()
            .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
            .map(|t| t.with_timezone(&Utc).timestamp_millis());
        self.tz = self.body.timezone.parse().ok();
        self.anchor_ms = self
            .body
            .anchor
            .as_deref()
            .or(Some(self.created_at.as_str()))
            .and_then(crate::window::parse_rfc3339)
            .unwrap_or(0);
        self.parsed_quotas = parse_quotas(&self.body.quotas);
        self.shared_id = Arc::from(self.id.as_str());
        self
    }

    /// The API representation at `now_ms`: the stored body plus `id` and the server
    /// fields `status`, `ends_at`, `created_at`, `updated_at`.
    pub fn view(&self, now_ms: i64) -> serde_json::Value {
        let mut v = serde_json::to_value(&self.body).unwrap_or_else(|_| serde_json::json!({}));
        if let Some(obj) = v.as_object_mut() {
            obj.insert("id".into(), self.id.clone().into());
            let status = match self.status_at(now_ms) {
                ContractStatus::Active => "active",
                ContractStatus::Ended => "ended",
            };
            obj.insert("status".into(), status.into());
            if let Some(e) = &self.ends_at {
                obj.insert("ends_at".into(), e.clone().into());
            }
            obj.insert("created_at".into(), self.created_at.clone().into());
            obj.insert("updated_at".into(), self.updated_at.clone().into());
        }
        v
    }

    /// Status as seen at `now_ms`: a contract whose `ends_at` has passed is ended.
    pub fn status_at(&self, now_ms: i64) -> ContractStatus {
        match self.ends_at_ms {
            Some(end) if end <= now_ms => ContractStatus::Ended,
            _ => ContractStatus::Active,
        }
    }
}
