//! Grants: extra allowance on one lever of one contract (top-up packs, SPEC 1, 3, 5).
//!
//! A grant adds `amount` to what the contract may use of the lever while it is in force
//! (`effective_at <= t < expires_at`, by event time). It is consumed only by usage beyond
//! the limits of the lever's quotas, earliest expiry first; what it covered stays covered
//! when it expires, what was left of it stops counting exactly at `expires_at`. Grants are
//! immutable once created; `POST` with the same `id` and body is an idempotent repeat.

use serde::{Deserialize, Serialize};

use crate::decimal::Amount;
use crate::window::{parse_rfc3339, rfc3339};

/// Most grants one contract may hold that have not expired yet.
pub const MAX_OPEN_GRANTS: usize = 100;

/// The body of `POST /v1/contracts/{contract}/grants`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct GrantBody {
    /// Idempotency key and name of the grant, unique per contract.
    pub id: String,
    /// Lever the allowance is for (a `sum` or `count` lever).
    pub lever: String,
    /// Extra allowance, a positive decimal.
    #[serde(with = "super::contract::amount_text")]
    pub amount: String,
    /// Start of validity (RFC 3339); default: creation time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub effective_at: Option<String>,
    /// End of validity, exclusive (RFC 3339); default: never.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
    /// Free text (order number, reason).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

/// A stored grant.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Grant {
    /// Grant id (unique per contract).
    pub id: String,
    /// Contract it belongs to.
    pub contract: String,
    /// Lever.
    pub lever: String,
    /// Allowance.
    pub amount: Amount,
    /// Start of validity (epoch ms, inclusive).
    pub effective_ms: i64,
    /// End of validity (epoch ms, exclusive); `None` never expires.
    pub expires_ms: Option<i64>,
    /// Free text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Creation time (RFC 3339).
    pub created_at: String,
}

impl GrantBody {
    /// Checks the body and builds the grant it describes, created at `now_ms`.
    /// `lever_additive` answers whether the lever exists and is `sum` or `count`
    /// (`Err(reason)` otherwise).
    pub fn into_grant(
        self,
        contract: &str,
        now_ms: i64,
        lever_additive: impl Fn(&str) -> Result<(), String>,
    ) -> Result<Grant, (&'static str, String)> {
        if !super::valid_external_id(&self.id) {
            return Err((
                "id",
                "must be 1-128 bytes, no control characters or '/'".into(),
            ));
        }
        lever_additive(&self.lever).map_err(|r| ("lever", r))?;
        let amount = Amount::parse_input(&self.amount).map_err(|e| ("amount", e.to_string()))?;
        if amount <= Amount::ZERO {
            return Err(("amount", "must be greater than 0".into()));
        }
        let time = |field: &'static str, v: &Option<String>| -> Result<Option<i64>, _> {
            match v {
                None => Ok(None),
                Some(t) => parse_rfc3339(t)
                    .map(Some)
                    .ok_or((field, "must be an RFC 3339 time".to_string())),
            }
        };
        let effective_ms = time("effective_at", &self.effective_at)?.unwrap_or(now_ms);
        let expires_ms = time("expires_at", &self.expires_at)?;
        if let Some(x) = expires_ms {
            if x <= effective_ms {
                return Err(("expires_at", "must be after effective_at".into()));
            }
        }
        if self.description.as_ref().is_some_and(|d| d.len() > 1024) {
            return Err(("description", "at most 1024 bytes".into()));
        }
        Ok(Grant {
            id: self.id,
            contract: contract.to_string(),
            lever: self.lever,
            amount,
            effective_ms,
            expires_ms,
            description: self.description,
            created_at: rfc3339(now_ms),
        })
    }
}

impl Grant {
    /// Whether the grant is in force at `t_ms`.
    pub fn active_at(&self, t_ms: i64) -> bool {
        self.effective_ms <= t_ms && self.expires_ms.is_none_or(|x| t_ms < x)
    }

    /// Whether the grant has expired at `t_ms`.
    pub fn expired_at(&self, t_ms: i64) -> bool {
        self.expires_ms.is_some_and(|x| x <= t_ms)
    }

    /// Consumption order: earliest expiry first (never-expiring last), then earliest
    /// start, then id.
    pub fn order_key(&self) -> (i64, i64, &str) {
        (
            self.expires_ms.unwrap_or(i64::MAX),
            self.effective_ms,
            &self.id,
        )
    }

    /// Whether `other` describes the same grant (an idempotent repeat of the POST).
    pub fn same_definition(&self, other: &Grant) -> bool {
        self.id == other.id
            && self.lever == other.lever
            && self.amount == other.amount
            && self.expires_ms == other.expires_ms
            && self.description == other.description
    }

    /// The API representation, with `consumed` taken from the quota book at `now_ms`.
    pub fn view(&self, consumed: Amount, now_ms: i64) -> serde_json::Value {
        let status = if self.expired_at(now_ms) {
            "expired"
        } else if self.effective_ms > now_ms {
            "pending"
        } else {
            "active"
        };
        let left = self.amount.saturating_sub(consumed);
        let mut v = serde_json::json!({
            "id": self.id,
            "contract": self.contract,
            "lever": self.lever,
            "amount": self.amount,
            "effective_at": rfc3339(self.effective_ms),
            "consumed": consumed,
            "remaining": if self.expired_at(now_ms) { Amount::ZERO } else { left },
            "status": status,
            "created_at": self.created_at,
        });
        if let Some(obj) = v.as_object_mut() {
            if let Some(x) = self.expires_ms {
                obj.insert("expires_at".into(), rfc3339(x).into());
            }
            if let Some(d) = &self.description {
                obj.insert("description".into(), d.clone().into());
            }
        }
        v
    }
}

/// The grants of one contract, in consumption order.
#[derive(Debug, Clone, Default)]
pub struct Grants {
    /// Sorted by [`Grant::order_key`].
    pub items: Vec<std::sync::Arc<Grant>>,
}

impl Grants {
    /// A copy with `g` added in order.
    pub fn with(&self, g: Grant) -> Grants {
        let mut items = self.items.clone();
        items.push(std::sync::Arc::new(g));
        items.sort_by(|a, b| a.order_key().cmp(&b.order_key()));
        Grants { items }
    }

    /// Grants of `lever` in force at `t_ms`, in consumption order.
    pub fn active<'a>(&'a self, lever: &'a str, t_ms: i64) -> impl Iterator<Item = &'a Grant> {
        // Grants that expired before t sort first: skip them without looking at each.
        let from = self
            .items
            .partition_point(|g| g.expires_ms.is_some_and(|x| x <= t_ms));
        self.items[from..]
            .iter()
            .map(|g| &**g)
            .filter(move |g| g.lever == lever && g.active_at(t_ms))
    }

    /// Grants that have not expired at `t_ms`.
    pub fn open_count(&self, t_ms: i64) -> usize {
        self.items.iter().filter(|g| !g.expired_at(t_ms)).count()
    }

    /// Whether any grant (past, present or future) is for `lever`.
    pub fn any_for(&self, lever: &str) -> bool {
        self.items.iter().any(|g| g.lever == lever)
    }

    /// The grant `id`.
    pub fn get(&self, id: &str) -> Option<&std::sync::Arc<Grant>> {
        self.items.iter().find(|g| g.id == id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn g(id: &str, eff: i64, exp: Option<i64>) -> Grant {
        Grant {
            id: id.into(),
            contract: "c".into(),
            lever: "l".into(),
            amount: Amount::ONE,
            effective_ms: eff,
            expires_ms: exp,
            description: None,
            created_at: String::new(),
        }
    }

    #[test]
    fn active_is_half_open_and_ordered_by_expiry() {
        let gs = Grants::default()
            .with(g("never", 0, None))
            .with(g("late", 0, Some(300)))
            .with(g("early", 0, Some(200)))
            .with(g("future", 150, Some(250)));
        let ids = |t| gs.active("l", t).map(|g| g.id.clone()).collect::<Vec<_>>();
        assert_eq!(ids(100), ["early", "late", "never"]);
        assert_eq!(ids(150), ["early", "future", "late", "never"]);
        assert_eq!(ids(199), ["early", "future", "late", "never"]);
        assert_eq!(ids(200), ["future", "late", "never"]);
        assert_eq!(ids(250), ["late", "never"]);
        assert_eq!(ids(300), ["never"]);
        assert!(gs.active("other", 100).next().is_none());
        assert_eq!(gs.open_count(250), 2);
    }

    #[test]
    fn body_validation() {
        let ok = |_: &str| Ok(());
        let body = |amount: &str, eff: Option<&str>, exp: Option<&str>| GrantBody {
            id: "p".into(),
            lever: "l".into(),
            amount: amount.into(),
            effective_at: eff.map(Into::into),
            expires_at: exp.map(Into::into),
            description: None,
        };
        assert!(body("5", None, None).into_grant("c", 0, ok).is_ok());
        assert_eq!(
            body("0", None, None).into_grant("c", 0, ok).unwrap_err().0,
            "amount"
        );
        assert_eq!(
            body("-1", None, None).into_grant("c", 0, ok).unwrap_err().0,
            "amount"
        );
        let e = body(
            "1",
            Some("2026-01-02T00:00:00Z"),
            Some("2026-01-02T00:00:00Z"),
        );
        assert_eq!(e.into_grant("c", 0, ok).unwrap_err().0, "expires_at");
        let e = body("1", Some("yesterday"), None);
        assert_eq!(e.into_grant("c", 0, ok).unwrap_err().0, "effective_at");
        let no = |_: &str| Err("nope".to_string());
        assert_eq!(
            body("1", None, None).into_grant("c", 0, no).unwrap_err().0,
            "lever"
        );
    }
}
