//! Key encoding for every column family.
//!
//! Strings are length-prefixed (`len:u8, bytes`), so a prefix of components is a byte
//! prefix of the key and no separator byte needs escaping. Times are big-endian with the
//! sign bit flipped, so keys sort by time. Every user-data key starts with the tenant.
//!
//! | CF | key |
//! |---|---|
//! | `windows` | tenant, contract, lever, granularity:u8, start:i64, bucket? (`0` or `1`+str) |
//! | `dedupe` | tenant, xxh3-128(id):16 |
//! | `journal` | seq:u64 |
//! | `admin` | kind:u8, tenant, name (raw, last) |

use crate::window::Granularity;

/// Longest string component accepted in a key.
pub const MAX_COMPONENT: usize = 255;

/// Appends a length-prefixed string. Callers validate lengths beforehand; longer input
/// is truncated at a character boundary rather than corrupting the key.
pub fn put_str(out: &mut Vec<u8>, s: &str) {
    let mut end = s.len().min(MAX_COMPONENT);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    out.push(end as u8);
    out.extend_from_slice(&s.as_bytes()[..end]);
}

/// Reads a length-prefixed string, returning it and the rest.
pub fn get_str(b: &[u8]) -> Option<(&str, &[u8])> {
    let (&len, rest) = b.split_first()?;
    let len = len as usize;
    if rest.len() < len {
        return None;
    }
    let s = std::str::from_utf8(&rest[..len]).ok()?;
    Some((s, &rest[len..]))
}

/// Encodes a signed time so that byte order is numeric order.
pub fn put_time(out: &mut Vec<u8>, t: i64) {
    out.extend_from_slice(&((t as u64) ^ (1 << 63)).to_be_bytes());
}

/// Inverse of [`put_time`].
pub fn get_time(b: &[u8]) -> Option<(i64, &[u8])> {
    if b.len() < 8 {
        return None;
    }
    let v = u64::from_be_bytes(b[..8].try_into().ok()?) ^ (1 << 63);
    Some((v as i64, &b[8..]))
}

/// Prefix of all window rows of one series (tenant, contract, lever) and granularity.
pub fn window_prefix(tenant: &str, contract: &str, lever: &str, g: Granularity) -> Vec<u8> {
    let mut k = Vec::with_capacity(tenant.len() + contract.len() + lever.len() + 8);
    put_str(&mut k, tenant);
    put_str(&mut k, contract);
    put_str(&mut k, lever);
    k.push(g.code());
    k
}

/// Full key of one window row.
pub fn window_key(
    tenant: &str,
    contract: &str,
    lever: &str,
    g: Granularity,
    start: i64,
    bucket: Option<&str>,
) -> Vec<u8> {
    let mut k = window_prefix(tenant, contract, lever, g);
    put_time(&mut k, start);
    match bucket {
        None => k.push(0),
        Some(b) => {
            k.push(1);
            put_str(&mut k, b);
        }
    }
    k
}

/// The parts of a window key after its series prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WindowSuffix<'a> {
    /// Window start.
    pub start: i64,
    /// Bucket, if any.
    pub bucket: Option<&'a str>,
}

/// Decodes the part of a window key after a `window_prefix` of length `prefix_len`.
pub fn decode_window_suffix(key: &[u8], prefix_len: usize) -> Option<WindowSuffix<'_>> {
    let rest = key.get(prefix_len..)?;
    let (start, rest) = get_time(rest)?;
    let (&flag, rest) = rest.split_first()?;
    let bucket = match flag {
        0 if rest.is_empty() => None,
        1 => {
            let (b, rest) = get_str(rest)?;
            if !rest.is_empty() {
                return None;
            }
            Some(b)
        }
        _ => return None,
    };
    Some(WindowSuffix { start, bucket })
}

/// A decoded window key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WindowKey<'a> {
    /// Tenant.
    pub tenant: &'a str,
    /// Contract id.
    pub contract: &'a str,
    /// Lever name.
    pub lever: &'a str,
    /// Granularity.
    pub gran: Granularity,
    /// Window start.
    pub start: i64,
    /// Bucket, if any.
    pub bucket: Option<&'a str>,
}

/// Decodes a full key written by [`window_key`].
pub fn decode_window_key(key: &[u8]) -> Option<WindowKey<'_>> {
    let (tenant, b) = get_str(key)?;
    let (contract, b) = get_str(b)?;
    let (lever, b) = get_str(b)?;
    let (&g, _) = b.split_first()?;
    let gran = Granularity::from_code(g)?;
    let prefix_len = key.len() - b.len() + 1;
    let s = decode_window_suffix(key, prefix_len)?;
    Some(WindowKey {
        tenant,
        contract,
        lever,
        gran,
        start: s.start,
        bucket: s.bucket,
    })
}

/// Hash of an idempotency key.
pub fn id_hash(id: &str) -> u128 {
    xxhash_rust::xxh3::xxh3_128(id.as_bytes())
}

/// Key of a dedupe record.
pub fn dedupe_key(tenant: &str, id_hash: u128) -> Vec<u8> {
    let mut k = Vec::with_capacity(tenant.len() + 17);
    put_str(&mut k, tenant);
    k.extend_from_slice(&id_hash.to_be_bytes());
    k
}

/// Key of a journal record.
pub fn journal_key(seq: u64) -> [u8; 8] {
    seq.to_be_bytes()
}

/// Kinds of admin records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdminKind {
    /// A lever definition.
    Lever = 1,
    /// A contract.
    Contract = 2,
    /// A plan.
    Plan = 3,
    /// A grant; its name is `contract`, a NUL byte, then the grant id.
    Grant = 4,
    /// An audit log entry (adjustment or retraction); its name is `contract`, a NUL
    /// byte, then its revision as 20 decimal digits.
    Audit = 5,
    /// Adjustment idempotency index: `contract`, NUL, id -> audit entry name.
    AdjustmentId = 6,
    /// Retraction index: event id -> audit entry name.
    RetractionId = 7,
}

/// Admin record name of grant `id` of `contract` (ids cannot contain NUL).
pub fn grant_name(contract: &str, id: &str) -> String {
    format!("{contract}\0{id}")
}

/// Key of an admin record. The name is the last component and is stored raw, so records
/// list in byte order of their names.
pub fn admin_key(kind: AdminKind, tenant: &str, name: &str) -> Vec<u8> {
    let mut k = admin_prefix(kind, tenant);
    k.extend_from_slice(name.as_bytes());
    k
}

/// Prefix of all admin records of one kind and tenant.
pub fn admin_prefix(kind: AdminKind, tenant: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(tenant.len() + 2);
    k.push(kind as u8);
    put_str(&mut k, tenant);
    k
}

/// Key of a `changes` entry.
pub fn changes_key(tenant: &str, rev: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(tenant.len() + 9);
    put_str(&mut k, tenant);
    k.extend_from_slice(&rev.to_be_bytes());
    k
}

/// Decodes the revision of a `changes` key whose tenant prefix has length `prefix_len`
/// (the 8 bytes after it: cluster mode's keys go on with the window key).
pub fn changes_rev(key: &[u8], prefix_len: usize) -> Option<u64> {
    Some(u64::from_be_bytes(
        key.get(prefix_len..prefix_len + 8)?.try_into().ok()?,
    ))
}

/// Cluster mode's `changes` key: tenant, revision, window key. Rows changed by one
/// stream message share its revision ([`crate::revision`]), so the window key makes the
/// entry unique.
pub fn changes_row_key(tenant: &str, rev: u64, window_key: &[u8]) -> Vec<u8> {
    let mut k = changes_key(tenant, rev);
    k.extend_from_slice(window_key);
    k
}

/// Meta key prefix of the revisions of unflushed events records (cluster mode).
pub const RECORD_REV_PREFIX: &[u8] = b"srev/";

/// Meta key of the revision of events record `seq` (cluster mode: the revision of the
/// stream message that carried it), kept until a flush counts the record.
pub fn record_rev_key(seq: u64) -> Vec<u8> {
    let mut k = RECORD_REV_PREFIX.to_vec();
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn window_keys_roundtrip_and_sort(
            a in -10_000_000_000_000i64..10_000_000_000_000,
            b in -10_000_000_000_000i64..10_000_000_000_000,
            bucket in proptest::option::of("[a-z0-9-]{1,64}"),
        ) {
            let ka = window_key("t", "c", "l", Granularity::Minute, a, bucket.as_deref());
            let kb = window_key("t", "c", "l", Granularity::Minute, b, bucket.as_deref());
            let plen = window_prefix("t", "c", "l", Granularity::Minute).len();
            let sa = decode_window_suffix(&ka, plen).unwrap();
            prop_assert_eq!(sa.start, a);
            prop_assert_eq!(sa.bucket, bucket.as_deref());
            if a < b { prop_assert!(ka < kb); }
        }

        #[test]
        fn prefixes_do_not_collide(x in "[a-z]{1,8}", y in "[a-z]{1,8}") {
            // ("ab","c") and ("a","bc") must not share a series prefix.
            let p1 = window_prefix("t", &x, &y, Granularity::Hour);
            let p2 = window_prefix("t", &format!("{x}{y}"), "", Granularity::Hour);
            prop_assert!(!p1.starts_with(&p2) && !p2.starts_with(&p1));
        }
    }

    #[test]
    fn full_window_keys_roundtrip() {
        let k = window_key("t", "c", "l", Granularity::Day, -86_400_000, Some("eu"));
        let d = decode_window_key(&k).unwrap();
        assert_eq!(
            (d.tenant, d.contract, d.lever, d.gran, d.start, d.bucket),
            ("t", "c", "l", Granularity::Day, -86_400_000, Some("eu"))
        );
        assert!(decode_window_key(&k[..k.len() - 1]).is_none());
    }

    #[test]
    fn decode_rejects_garbage() {
        assert!(decode_window_suffix(b"", 0).is_none());
        assert!(decode_window_suffix(&[0u8; 10][..], 0).is_none());
        assert!(decode_window_suffix(&[0u8; 9][..], 0).is_some());
    }
}
