//! Aggregate values, their encoding and the RocksDB merge operator over them.
//!
//! Every aggregation is associative and commutative over [`AggValue::merge`], which is
//! what lets the flusher write coalesced deltas as RocksDB merge operands (no
//! read-modify-write) and lets queries add unflushed deltas on top of stored rows.
//!
//! Encoding (little endian): `kind:u8` then
//! - `S` (sum, also used for count): `value:i128`
//! - `M` (max): `value:i128`
//! - `L` (latest): `time_ms:i64, ordinal:u64, value:i128`

use crate::decimal::Amount;

/// An aggregated value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AggValue {
    /// Sum of values (or of event counts).
    Sum(i128),
    /// Largest value.
    Max(i128),
    /// Value of the latest event; ties on time are broken by arrival ordinal.
    Latest {
        /// Event time.
        time_ms: i64,
        /// Arrival order (journal sequence and position).
        ordinal: u64,
        /// Value.
        value: i128,
    },
}

impl AggValue {
    /// Combines two values of the same aggregation. Mismatched kinds keep `other`
    /// (cannot happen: a lever's aggregation is immutable).
    pub fn merge(self, other: AggValue) -> AggValue {
        match (self, other) {
            (AggValue::Sum(a), AggValue::Sum(b)) => AggValue::Sum(a.saturating_add(b)),
            (AggValue::Max(a), AggValue::Max(b)) => AggValue::Max(a.max(b)),
            (
                AggValue::Latest {
                    time_ms: ta,
                    ordinal: oa,
                    ..
                },
                AggValue::Latest {
                    time_ms: tb,
                    ordinal: ob,
                    ..
                },
            ) => {
                if (tb, ob) >= (ta, oa) {
                    other
                } else {
                    self
                }
            }
            _ => other,
        }
    }

    /// The value as an exact decimal.
    pub fn amount(self) -> Amount {
        match self {
            AggValue::Sum(v) | AggValue::Max(v) | AggValue::Latest { value: v, .. } => Amount(v),
        }
    }

    /// Appends the encoding to `out`.
    pub fn encode_into(self, out: &mut Vec<u8>) {
        match self {
            AggValue::Sum(v) => {
                out.push(b'S');
                out.extend_from_slice(&v.to_le_bytes());
            }
            AggValue::Max(v) => {
                out.push(b'M');
                out.extend_from_slice(&v.to_le_bytes());
            }
            AggValue::Latest {
                time_ms,
                ordinal,
                value,
            } => {
                out.push(b'L');
                out.extend_from_slice(&time_ms.to_le_bytes());
                out.extend_from_slice(&ordinal.to_le_bytes());
                out.extend_from_slice(&value.to_le_bytes());
            }
        }
    }

    /// Encodes to a new buffer.
    pub fn encode(self) -> Vec<u8> {
        let mut v = Vec::with_capacity(33);
        self.encode_into(&mut v);
        v
    }

    /// Decodes an encoding; `None` for corrupt input.
    pub fn decode(b: &[u8]) -> Option<AggValue> {
        let (&kind, rest) = b.split_first()?;
        match kind {
            b'S' => Some(AggValue::Sum(i128::from_le_bytes(rest.try_into().ok()?))),
            b'M' => Some(AggValue::Max(i128::from_le_bytes(rest.try_into().ok()?))),
            b'L' if rest.len() == 32 => Some(AggValue::Latest {
                time_ms: i64::from_le_bytes(rest[0..8].try_into().ok()?),
                ordinal: u64::from_le_bytes(rest[8..16].try_into().ok()?),
                value: i128::from_le_bytes(rest[16..32].try_into().ok()?),
            }),
            _ => None,
        }
    }
}

/// RocksDB merge operator over [`AggValue`] encodings (full and partial merge alike).
/// Corrupt operands are skipped rather than poisoning the key.
pub fn merge_operator(
    _key: &[u8],
    existing: Option<&[u8]>,
    operands: &rocksdb::MergeOperands,
) -> Option<Vec<u8>> {
    let mut acc = existing.and_then(AggValue::decode);
    for op in operands {
        if let Some(v) = AggValue::decode(op) {
            acc = Some(match acc {
                Some(a) => a.merge(v),
                None => v,
            });
        }
    }
    Some(acc.unwrap_or(AggValue::Sum(0)).encode())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn roundtrip() {
        for v in [
            AggValue::Sum(-5),
            AggValue::Max(i128::MAX),
            AggValue::Latest {
                time_ms: -1,
                ordinal: 7,
                value: 3,
            },
        ] {
            assert_eq!(AggValue::decode(&v.encode()), Some(v));
        }
        assert_eq!(AggValue::decode(b"S12"), None);
        assert_eq!(AggValue::decode(b""), None);
    }

    proptest! {
        #[test]
        fn latest_is_order_independent(mut evs in proptest::collection::vec((0i64..100, 0i128..1000), 1..20)) {
            let vals: Vec<AggValue> = evs.iter().enumerate().map(|(i, (t, v))| AggValue::Latest { time_ms: *t, ordinal: i as u64, value: *v }).collect();
            let fwd = vals.iter().copied().reduce(AggValue::merge).unwrap();
            let rev = vals.iter().rev().copied().reduce(AggValue::merge).unwrap();
            prop_assert_eq!(fwd, rev);
            evs.sort();
            let _ = evs;
        }
    }
}
