//! Keys of the `quota` column family: a period's usage and its grant-covered part, a
//! grant's consumption and a notified threshold, and their decoding (the retention
//! filter of the store reads period ends from them). The quota book
//! ([`crate::quota::book`]) builds and keeps these keys.

use std::sync::Arc;

use crate::decimal::Amount;
use crate::quota::period::PeriodKind;
use crate::store::keys::{get_str, get_time, put_str, put_time};

/// One period's usage of one contract and lever.
///
/// Hashing a key hashes a 64-bit digest of its (tenant, contract, lever) computed when
/// the key is built (once per event and contract for the five period rows), not the
/// strings themselves: the quota maps hash every row several times per event.
#[derive(Debug, Clone, Eq)]
pub struct UsageKey {
    /// Tenant.
    pub tenant: Arc<str>,
    /// Contract id.
    pub contract: Arc<str>,
    /// Lever name.
    pub lever: Arc<str>,
    /// Period kind.
    pub kind: PeriodKind,
    /// Period start (epoch ms).
    pub start: i64,
    /// Period end (epoch ms, exclusive).
    pub end: i64,
    /// [`UsageKey::family`] of (tenant, contract, lever).
    family: u64,
}

impl PartialEq for UsageKey {
    fn eq(&self, o: &UsageKey) -> bool {
        // The cheap fields first; equal strings are mostly the same `Arc`, which spares
        // comparing their bytes.
        fn same(a: &Arc<str>, b: &Arc<str>) -> bool {
            Arc::ptr_eq(a, b) || a == b
        }
        self.family == o.family
            && self.kind == o.kind
            && self.start == o.start
            && self.end == o.end
            && same(&self.contract, &o.contract)
            && same(&self.lever, &o.lever)
            && same(&self.tenant, &o.tenant)
    }
}

impl std::hash::Hash for UsageKey {
    fn hash<H: std::hash::Hasher>(&self, h: &mut H) {
        h.write_u64(self.family);
        h.write_u8(self.kind.code());
        h.write_i64(self.start);
        h.write_i64(self.end);
    }
}

impl UsageKey {
    /// The key of one period row.
    pub fn new(
        tenant: Arc<str>,
        contract: Arc<str>,
        lever: Arc<str>,
        kind: PeriodKind,
        start: i64,
        end: i64,
    ) -> UsageKey {
        let family = UsageKey::family(&tenant, &contract, &lever);
        UsageKey::with_family(family, tenant, contract, lever, kind, start, end)
    }

    /// The key of one period row whose [`UsageKey::family`] is already known.
    pub fn with_family(
        family: u64,
        tenant: Arc<str>,
        contract: Arc<str>,
        lever: Arc<str>,
        kind: PeriodKind,
        start: i64,
        end: i64,
    ) -> UsageKey {
        debug_assert_eq!(family, UsageKey::family(&tenant, &contract, &lever));
        UsageKey {
            tenant,
            contract,
            lever,
            kind,
            start,
            end,
            family,
        }
    }

    /// Digest of (tenant, contract, lever), the part of a row's hash that comes from
    /// its strings.
    pub fn family(tenant: &str, contract: &str, lever: &str) -> u64 {
        use std::hash::BuildHasher;
        // In memory only (never stored), so any fixed seed does; `str` hashing ends each
        // string with a marker byte.
        foldhash::fast::FixedState::with_seed(0x6d65_7465_7264).hash_one((tenant, contract, lever))
    }

    /// Key of the row's usage in the `quota` column family.
    pub fn encode(&self) -> Vec<u8> {
        self.encode_as(self.kind.code())
    }

    /// Key of the row's grant-covered usage (the period code in upper case).
    pub fn encode_granted(&self) -> Vec<u8> {
        self.encode_as(self.kind.code().to_ascii_uppercase())
    }

    fn encode_as(&self, code: u8) -> Vec<u8> {
        let mut k = Vec::with_capacity(self.tenant.len() + self.contract.len() + 40);
        put_str(&mut k, &self.tenant);
        put_str(&mut k, &self.contract);
        put_str(&mut k, &self.lever);
        k.push(code);
        put_time(&mut k, self.start);
        put_time(&mut k, self.end);
        k
    }
}

/// How much of one grant has been consumed.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct GrantKey {
    /// Tenant.
    pub tenant: Arc<str>,
    /// Contract id.
    pub contract: Arc<str>,
    /// Lever name.
    pub lever: Arc<str>,
    /// Grant id.
    pub id: Arc<str>,
}

/// Marker byte of grant-consumption keys (where usage keys have a period code).
const GRANT_USED: u8 = b'#';

impl GrantKey {
    /// Key in the `quota` column family.
    pub fn encode(&self) -> Vec<u8> {
        let mut k = Vec::with_capacity(self.tenant.len() + self.contract.len() + 40);
        put_str(&mut k, &self.tenant);
        put_str(&mut k, &self.contract);
        put_str(&mut k, &self.lever);
        k.push(GRANT_USED);
        put_str(&mut k, &self.id);
        k
    }
}

/// A decoded key of the `quota` column family.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoredKey {
    /// A period's usage.
    Usage(UsageKey),
    /// The part of a period's usage that grants covered.
    Granted(UsageKey),
    /// A grant's consumption.
    GrantUsed(GrantKey),
    /// A threshold notified in a period.
    Notified(NotifiedKey),
}

impl StoredKey {
    /// Decodes a key written by [`UsageKey::encode`], [`UsageKey::encode_granted`] or
    /// [`GrantKey::encode`].
    pub fn decode(b: &[u8]) -> Option<StoredKey> {
        let (tenant, b) = get_str(b)?;
        let (contract, b) = get_str(b)?;
        let (lever, b) = get_str(b)?;
        let (&code, b) = b.split_first()?;
        let (tenant, contract, lever) = (Arc::from(tenant), Arc::from(contract), Arc::from(lever));
        if code == NOTIFIED {
            let (&kind, b) = b.split_first()?;
            let (start, b) = get_time(b)?;
            let (end, b) = get_time(b)?;
            if b.len() != 20 {
                return None;
            }
            return Some(StoredKey::Notified(NotifiedKey {
                row: UsageKey::new(
                    tenant,
                    contract,
                    lever,
                    PeriodKind::from_code(kind)?,
                    start,
                    end,
                ),
                threshold: u32::from_be_bytes(b[..4].try_into().ok()?),
                limit: Amount(i128::from_be_bytes(b[4..].try_into().ok()?)),
            }));
        }
        if code == GRANT_USED {
            let (id, b) = get_str(b)?;
            if !b.is_empty() {
                return None;
            }
            return Some(StoredKey::GrantUsed(GrantKey {
                tenant,
                contract,
                lever,
                id: Arc::from(id),
            }));
        }
        let (start, b) = get_time(b)?;
        let (end, b) = get_time(b)?;
        if !b.is_empty() {
            return None;
        }
        let granted = code.is_ascii_uppercase();
        let key = UsageKey::new(
            tenant,
            contract,
            lever,
            PeriodKind::from_code(code.to_ascii_lowercase())?,
            start,
            end,
        );
        Some(if granted {
            StoredKey::Granted(key)
        } else {
            StoredKey::Usage(key)
        })
    }
}

/// A threshold already notified in one period, for one limit.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct NotifiedKey {
    /// The period row.
    pub row: UsageKey,
    /// Threshold percentage.
    pub threshold: u32,
    /// The limit it was a percentage of.
    pub limit: Amount,
}

/// Marker byte of notified-threshold keys.
const NOTIFIED: u8 = b'!';

impl NotifiedKey {
    /// Key in the `quota` column family.
    pub fn encode(&self) -> Vec<u8> {
        let r = &self.row;
        let mut k = Vec::with_capacity(r.tenant.len() + r.contract.len() + 64);
        put_str(&mut k, &r.tenant);
        put_str(&mut k, &r.contract);
        put_str(&mut k, &r.lever);
        k.push(NOTIFIED);
        k.push(r.kind.code());
        put_time(&mut k, r.start);
        put_time(&mut k, r.end);
        k.extend_from_slice(&self.threshold.to_be_bytes());
        k.extend_from_slice(&self.limit.0.to_be_bytes());
        k
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_keys_roundtrip() {
        let k = UsageKey::new(
            Arc::from("t"),
            Arc::from("c"),
            Arc::from("l"),
            PeriodKind::BillingPeriod,
            -5,
            i64::MAX,
        );
        assert_eq!(
            StoredKey::decode(&k.encode()),
            Some(StoredKey::Usage(k.clone()))
        );
        assert_eq!(
            StoredKey::decode(&k.encode_granted()),
            Some(StoredKey::Granted(k.clone()))
        );
        let g = GrantKey {
            tenant: Arc::from("t"),
            contract: Arc::from("c"),
            lever: Arc::from("l"),
            id: Arc::from("pack-1"),
        };
        assert_eq!(
            StoredKey::decode(&g.encode()),
            Some(StoredKey::GrantUsed(g))
        );
        assert_eq!(StoredKey::decode(b"\x01t\x01c\x01l?"), None);
        let n = NotifiedKey {
            row: k.clone(),
            threshold: 80,
            limit: Amount::parse_input("12.5").unwrap(),
        };
        assert_eq!(StoredKey::decode(&n.encode()), Some(StoredKey::Notified(n)));
    }
}
