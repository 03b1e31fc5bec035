//! Plans: named templates of quotas (SPEC 1, 5). A contract's own quotas override its
//! plan's per lever and period.

use serde::{Deserialize, Serialize};

use super::contract::{parse_quotas, validate_quotas, ParsedQuota, QuotaBody};

/// The body of `PUT /v1/plans/{plan}`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PlanBody {
    /// Quotas of the plan.
    #[serde(default)]
    pub quotas: Vec<QuotaBody>,
    /// Threshold percentages for notifications.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub thresholds: Vec<u32>,
    /// Free text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Server field echoed back by clients; ignored.
    #[serde(default, skip_serializing)]
    pub id: Option<serde::de::IgnoredAny>,
    /// Server field; ignored.
    #[serde(default, skip_serializing)]
    pub created_at: Option<serde::de::IgnoredAny>,
    /// Server field; ignored.
    #[serde(default, skip_serializing)]
    pub updated_at: Option<serde::de::IgnoredAny>,
}

impl PlanBody {
    /// Checks field contents; returns the offending field and reason.
    pub fn validate(
        &self,
        lever_exists: impl Fn(&str) -> bool,
    ) -> Result<(), (&'static str, String)> {
        validate_quotas(&self.quotas, &self.thresholds, lever_exists)?;
        if self.description.as_ref().is_some_and(|d| d.len() > 1024) {
            return Err(("description", "at most 1024 bytes".into()));
        }
        Ok(())
    }
}

/// A stored plan.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Plan {
    /// Plan name.
    pub id: String,
    /// The caller's definition.
    pub body: PlanBody,
    /// Creation time.
    pub created_at: String,
    /// Last change.
    pub updated_at: String,
    /// Parsed quotas (derived).
    #[serde(skip)]
    pub parsed_quotas: Vec<ParsedQuota>,
}

impl Plan {
    /// Recomputes derived fields after loading or changing.
    pub fn finish(mut self) -> Plan {
        self.parsed_quotas = parse_quotas(&self.body.quotas);
        self
    }

    /// The API representation: the stored body plus `id`, `created_at`, `updated_at`.
    pub fn view(&self) -> serde_json::Value {
        let mut v = serde_json::to_value(&self.body).unwrap_or_else(|_| serde_json::json!({}));
        if let Some(obj) = v.as_object_mut() {
            obj.insert("id".into(), self.id.clone().into());
            obj.insert("created_at".into(), self.created_at.clone().into());
            obj.insert("updated_at".into(), self.updated_at.clone().into());
        }
        v
    }
}
