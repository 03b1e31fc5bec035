//! The messages of a partition's journal stream (cluster mode).
//!
//! Every message starts with a header: the magic `MJ`, the format version (1), the kind,
//! and an xxh3 checksum of what follows (seeded with the kind), so a damaged or foreign message is refused
//! before any of it reaches RocksDB. Then, by kind:
//!
//! - **group** (1): one merged write of the owner's group commit. The length (u32 LE) of
//!   the rows, the rows as the bytes of a RocksDB write batch (column families are
//!   referred to by id, the same on every node because every node creates them in the
//!   same order); the number (u32 LE) and sequence numbers (u64 LE each) of the events
//!   records among the rows, so a standby counts them without scanning the batch; the
//!   writer's next unused events sequence number (u64 LE), so a new owner continues
//!   after it; then the combined quota operands as one quota log record.
//! - **epoch** (2): a new owner's first append: its epoch (u64 LE) and its node name.
//!   Appended on the last sequence the new owner applied, so it proves that owner's view
//!   is complete, and every later append of the previous owner is refused.

use xxhash_rust::xxh3::xxh3_64_with_seed;

use crate::journal::quota_log::{decode_log_record, encode_log_record, QuotaOperands};
use crate::store::agg::AggValue;

const MAGIC: &[u8; 2] = b"MJ";
const VERSION: u8 = 1;
const KIND_GROUP: u8 = 1;
const KIND_EPOCH: u8 = 2;
/// Magic, version, kind and checksum.
const HEADER: usize = 2 + 1 + 1 + 8;

/// A decoded stream message, borrowing from its bytes.
#[derive(Debug, PartialEq, Eq)]
pub enum Message<'a> {
    /// One merged write of a group commit.
    Group {
        /// The bytes of a RocksDB write batch.
        rows: &'a [u8],
        /// Sequence numbers of the events records among the rows.
        events: Vec<u64>,
        /// The writer's next unused events sequence number.
        next_seq: u64,
        /// The combined quota operands, one quota log record (possibly empty).
        quota: &'a [u8],
    },
    /// A new owner's first append.
    Epoch {
        /// The owner's epoch (its lease revision).
        epoch: u64,
        /// The owner's node name.
        node: &'a str,
    },
}

/// Why a message was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Not a meterd journal message, or damaged (checksum, lengths).
    #[error("not a valid journal message: {0}")]
    Corrupt(&'static str),
    /// Written by a newer meterd with a format this one does not know.
    #[error("journal message format {0} is newer than this meterd's ({VERSION})")]
    Version(u8),
}

fn seal(kind: u8, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER + body.len());
    out.extend_from_slice(MAGIC);
    out.push(VERSION);
    out.push(kind);
    out.extend_from_slice(&xxh3_64_with_seed(body, u64::from(kind)).to_le_bytes());
    out.extend_from_slice(body);
    out
}

/// The message of a merged write: its rows (a write batch's bytes), the events records'
/// sequence numbers among them, the writer's next events sequence number, and the
/// quota operands.
pub fn encode_group(
    rows: &[u8],
    events: &[u64],
    next_seq: u64,
    quota: &[(Vec<u8>, AggValue)],
) -> Vec<u8> {
    let len = u32::try_from(rows.len()).expect("a merged write is far below 4 GiB");
    let mut body = Vec::with_capacity(16 + rows.len() + events.len() * 8 + quota.len() * 64);
    body.extend_from_slice(&len.to_le_bytes());
    body.extend_from_slice(rows);
    body.extend_from_slice(&(events.len() as u32).to_le_bytes());
    for seq in events {
        body.extend_from_slice(&seq.to_le_bytes());
    }
    body.extend_from_slice(&next_seq.to_le_bytes());
    encode_log_record(quota, &mut body);
    seal(KIND_GROUP, &body)
}

/// The epoch record of a new owner.
pub fn encode_epoch(epoch: u64, node: &str) -> Vec<u8> {
    let mut body = Vec::with_capacity(8 + node.len());
    body.extend_from_slice(&epoch.to_le_bytes());
    body.extend_from_slice(node.as_bytes());
    seal(KIND_EPOCH, &body)
}

/// Decodes and checks a message.
pub fn decode(b: &[u8]) -> Result<Message<'_>, DecodeError> {
    if b.len() < HEADER || &b[..2] != MAGIC {
        return Err(DecodeError::Corrupt("no journal header"));
    }
    if b[2] != VERSION {
        return Err(DecodeError::Version(b[2]));
    }
    let sum = u64::from_le_bytes(b[4..HEADER].try_into().expect("8 bytes"));
    let body = &b[HEADER..];
    if xxh3_64_with_seed(body, u64::from(b[3])) != sum {
        return Err(DecodeError::Corrupt("checksum mismatch"));
    }
    match b[3] {
        KIND_GROUP => {
            let (len, rest) = body
                .split_first_chunk::<4>()
                .ok_or(DecodeError::Corrupt("short group"))?;
            let len = u32::from_le_bytes(*len) as usize;
            // A write batch has at least its 12-byte header (sequence and count).
            if rest.len() < len || len < 12 {
                return Err(DecodeError::Corrupt("short rows"));
            }
            let (rows, rest) = rest.split_at(len);
            let (n, mut rest) = rest
                .split_first_chunk::<4>()
                .ok_or(DecodeError::Corrupt("short events"))?;
            let n = u32::from_le_bytes(*n) as usize;
            if rest.len() < n.saturating_mul(8) {
                return Err(DecodeError::Corrupt("short events"));
            }
            let mut events = Vec::with_capacity(n);
            for _ in 0..n {
                let (seq, r) = rest.split_first_chunk::<8>().expect("length checked");
                events.push(u64::from_le_bytes(*seq));
                rest = r;
            }
            let (next_seq, quota) = rest
                .split_first_chunk::<8>()
                .ok_or(DecodeError::Corrupt("short group"))?;
            if decode_log_record(quota, |_, _| {}).is_none() {
                return Err(DecodeError::Corrupt("quota operands"));
            }
            Ok(Message::Group {
                rows,
                events,
                next_seq: u64::from_le_bytes(*next_seq),
                quota,
            })
        }
        KIND_EPOCH => {
            let (epoch, node) = body
                .split_first_chunk::<8>()
                .ok_or(DecodeError::Corrupt("short epoch"))?;
            let node = std::str::from_utf8(node).map_err(|_| DecodeError::Corrupt("node name"))?;
            Ok(Message::Epoch {
                epoch: u64::from_le_bytes(*epoch),
                node,
            })
        }
        _ => Err(DecodeError::Corrupt("unknown kind")),
    }
}

/// The quota operands of a group message's `quota` part.
pub fn quota_operands(quota: &[u8]) -> QuotaOperands {
    let mut ops = Vec::new();
    decode_log_record(quota, |k, v| ops.push((k.to_vec(), v)));
    ops
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip_and_damage_is_refused() {
        let ops = vec![
            (b"q1".to_vec(), AggValue::Sum(5)),
            (b"q2".to_vec(), AggValue::Max(-3)),
        ];
        let m = encode_group(b"rows-bytes-of-a-batch", &[7, 9], 12, &ops);
        let Message::Group {
            rows,
            events,
            next_seq,
            quota,
        } = decode(&m).unwrap()
        else {
            panic!("a group")
        };
        assert_eq!(rows, b"rows-bytes-of-a-batch");
        assert_eq!(events, vec![7, 9]);
        assert_eq!(next_seq, 12);
        assert_eq!(quota_operands(quota), ops);
        let e = encode_epoch(7, "node-b");
        assert_eq!(
            decode(&e).unwrap(),
            Message::Epoch {
                epoch: 7,
                node: "node-b"
            }
        );
        // Every single flipped bit is caught (header or body).
        for i in 0..m.len() {
            let mut bad = m.clone();
            bad[i] ^= 0x10;
            assert!(decode(&bad).is_err(), "flipped byte {i} was accepted");
        }
        assert_eq!(
            decode(b"").unwrap_err(),
            DecodeError::Corrupt("no journal header")
        );
        let mut newer = e.clone();
        newer[2] = 9;
        assert_eq!(decode(&newer).unwrap_err(), DecodeError::Version(9));
        // A truncated message fails its checksum, not a bounds check.
        assert!(decode(&m[..m.len() - 1]).is_err());
    }
}
