//! The closed sets of names the configuration (and the admin API) uses: a lever's
//! aggregation and an API key's role. They sit here, below the registry and the store,
//! because the configuration parses them and the store encodes aggregations in its
//! records; [`crate::registry`] re-exports both.

use serde::{Deserialize, Serialize};

/// How a lever's events combine within a window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Aggregation {
    /// Sum of values.
    Sum,
    /// Number of events (values are ignored).
    Count,
    /// Largest value.
    Max,
    /// Value of the event with the latest time (ties: the later arrival).
    Latest,
}

impl Aggregation {
    /// Whether values add up (`sum`, `count`): only those can take grants, adjustments
    /// and retractions.
    pub fn is_additive(self) -> bool {
        matches!(self, Aggregation::Sum | Aggregation::Count)
    }

    /// Parses `sum`, `count`, `max`, `latest`.
    pub fn parse(s: &str) -> Option<Aggregation> {
        match s {
            "sum" => Some(Aggregation::Sum),
            "count" => Some(Aggregation::Count),
            "max" => Some(Aggregation::Max),
            "latest" => Some(Aggregation::Latest),
            _ => None,
        }
    }

    /// The aggregation's name.
    pub fn as_str(self) -> &'static str {
        match self {
            Aggregation::Sum => "sum",
            Aggregation::Count => "count",
            Aggregation::Max => "max",
            Aggregation::Latest => "latest",
        }
    }

    /// Wire code used in journal records.
    pub fn code(self) -> u8 {
        match self {
            Aggregation::Sum => 1,
            Aggregation::Count => 2,
            Aggregation::Max => 3,
            Aggregation::Latest => 4,
        }
    }

    /// Inverse of [`Aggregation::code`].
    pub fn from_code(c: u8) -> Option<Aggregation> {
        match c {
            1 => Some(Aggregation::Sum),
            2 => Some(Aggregation::Count),
            3 => Some(Aggregation::Max),
            4 => Some(Aggregation::Latest),
            _ => None,
        }
    }
}

/// What a key may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    /// POST events only.
    Ingest,
    /// Every GET.
    Read,
    /// Everything.
    Admin,
}

impl Role {
    /// Parses `ingest`, `read` or `admin`.
    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "ingest" => Some(Role::Ingest),
            "read" => Some(Role::Read),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }

    /// The role's name.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Ingest => "ingest",
            Role::Read => "read",
            Role::Admin => "admin",
        }
    }
}
