//! Levers: metered features with an aggregation (SPEC 1, 5).

use serde::{Deserialize, Serialize};

pub use crate::config::Aggregation;

/// The body of `PUT /v1/levers/{lever}`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LeverBody {
    /// Aggregation; immutable once the lever exists.
    pub aggregation: Aggregation,
    /// Unit label, e.g. `requests`.
    #[serde(default)]
    pub unit: String,
    /// JSON path of the value in CloudEvents `data` (default `$.value`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value_property: Option<String>,
    /// JSON path of the bucket in CloudEvents `data`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bucket_property: Option<String>,
    /// Free text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Server field echoed back by clients that PUT what they GOT; ignored.
    #[serde(default, skip_serializing)]
    pub id: Option<serde::de::IgnoredAny>,
    /// Server field; ignored.
    #[serde(default, skip_serializing)]
    pub status: Option<serde::de::IgnoredAny>,
    /// Server field; ignored.
    #[serde(default, skip_serializing)]
    pub created_at: Option<serde::de::IgnoredAny>,
    /// Server field; ignored.
    #[serde(default, skip_serializing)]
    pub updated_at: Option<serde::de::IgnoredAny>,
}

impl LeverBody {
    /// Checks field contents; returns the offending field and reason.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        if self.unit.len() > 64 {
            return Err(("unit", "at most 64 bytes".into()));
        }
        for (field, v) in [
            ("value_property", &self.value_property),
            ("bucket_property", &self.bucket_property),
        ] {
            if let Some(p) = v {
                if !p.starts_with("$.") || p.len() < 3 || p.len() > 256 {
                    return Err((field, "must be a JSON path like $.field or $.a.b".into()));
                }
            }
        }
        if self.description.as_ref().is_some_and(|d| d.len() > 1024) {
            return Err(("description", "at most 1024 bytes".into()));
        }
        Ok(())
    }
}

/// A stored lever.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Lever {
    /// Lever name.
    pub id: String,
    /// Definition.
    pub aggregation: Aggregation,
    /// Unit label.
    pub unit: String,
    /// CloudEvents value path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value_property: Option<String>,
    /// CloudEvents bucket path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bucket_property: Option<String>,
    /// Free text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// `active` or `deleted`.
    pub status: String,
    /// Creation time (RFC 3339).
    pub created_at: String,
    /// Last change (RFC 3339).
    pub updated_at: String,
    /// Deleted levers are kept so their aggregation cannot change under stored usage.
    #[serde(skip)]
    pub deleted: bool,
}

impl Lever {
    /// Builds a lever from its body and server fields.
    pub fn from_body(id: &str, body: &LeverBody, created_at: String, updated_at: String) -> Lever {
        Lever {
            id: id.to_string(),
            aggregation: body.aggregation,
            unit: body.unit.clone(),
            value_property: body.value_property.clone(),
            bucket_property: body.bucket_property.clone(),
            description: body.description.clone(),
            status: "active".into(),
            created_at,
            updated_at,
            deleted: false,
        }
    }

    /// True when the definition equals `body` (an idempotent PUT).
    pub fn same_as(&self, body: &LeverBody) -> bool {
        !self.deleted
            && self.aggregation == body.aggregation
            && self.unit == body.unit
            && self.value_property == body.value_property
            && self.bucket_property == body.bucket_property
            && self.description == body.description
    }
}
