//! Who should own which partition, and the leases that say who does.
//!
//! Every node heartbeats its name into the `METERD_MEMBERS` KV bucket, whose entries
//! expire after `lease_ttl`; the live members are the keys present. Partition `p`'s
//! preferred owner is the live member with the highest rendezvous score
//! `xxh3(node, p)`, so partitions spread evenly and a node that joins or leaves moves
//! only its share.
//!
//! A lease is the key `p<N>` in the `METERD_LEASES` KV bucket (three replicas), holding
//! the owner's name. It is acquired by a create (which fails if the key exists) and
//! renewed by an update conditioned on the revision the holder last got, so only
//! compare-and-set outcomes count, never a possibly stale read. The bucket's maximum
//! age is `lease_ttl`: a lease its holder stops renewing disappears after it, and a
//! paused holder finds its next renewal refused. The revision a holder got when it
//! acquired the lease is its epoch ([`crate::journal::stream::Term`]): revisions of a
//! bucket only grow, so a later owner always has a larger epoch.
//!
//! Leases decide who tries to own a partition, not what is safe: safety comes from the
//! journal's conditional appends (a new owner's epoch record fences the old owner).

use std::collections::BTreeSet;
use std::time::Duration;

use async_nats::jetstream::{self, kv};
use futures_util::StreamExt;

use crate::journal::stream::nats::EngineError;

/// The lease bucket.
pub const LEASES: &str = "METERD_LEASES";
/// The membership bucket.
pub const MEMBERS: &str = "METERD_MEMBERS";

/// The KV key of partition `p`'s lease.
pub fn lease_key(p: u32) -> String {
    format!("p{p}")
}

/// The live member that should own partition `p` (highest rendezvous score).
pub fn preferred(p: u32, members: &BTreeSet<String>) -> Option<&str> {
    members
        .iter()
        .max_by_key(|m| {
            let mut h = xxhash_rust::xxh3::Xxh3::new();
            h.update(m.as_bytes());
            h.update(&p.to_le_bytes());
            h.digest()
        })
        .map(String::as_str)
}

/// The two KV buckets, created if missing.
#[derive(Clone)]
pub struct Buckets {
    /// Partition leases.
    pub leases: kv::Store,
    /// Live members.
    pub members: kv::Store,
}

impl std::fmt::Debug for Buckets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Buckets")
    }
}

async fn bucket(
    js: &jetstream::Context,
    name: &str,
    ttl: Duration,
    replicas: usize,
) -> Result<kv::Store, EngineError> {
    if let Ok(kv) = js.get_key_value(name).await {
        return Ok(kv);
    }
    // Two nodes creating it at once with the same settings both succeed.
    js.create_key_value(kv::Config {
        bucket: name.to_string(),
        history: 1,
        max_age: ttl,
        num_replicas: replicas,
        storage: jetstream::stream::StorageType::File,
        ..Default::default()
    })
    .await
    .map_err(|e| EngineError::Nats(format!("bucket {name}: {e}")))
}

impl Buckets {
    /// Opens (or creates) the lease and membership buckets with entries expiring after
    /// `ttl`.
    pub async fn open(
        js: &jetstream::Context,
        ttl: Duration,
        replicas: usize,
    ) -> Result<Buckets, EngineError> {
        let leases = bucket(js, LEASES, ttl, replicas).await?;
        let members = bucket(js, MEMBERS, ttl, replicas).await?;
        // A bucket created by a node with another lease_ttl would expire leases early
        // or late: refuse it.
        for (name, b) in [(LEASES, &leases), (MEMBERS, &members)] {
            let status = b
                .status()
                .await
                .map_err(|e| EngineError::Nats(format!("bucket {name}: {e}")))?;
            let age = status.info.config.max_age;
            if age != ttl {
                return Err(EngineError::UnsafeStream {
                    stream: format!("KV_{name}"),
                    why: format!(
                        "its entries expire after {age:?}, but [cluster] lease_ttl is {ttl:?}: \
                         every node must use the same lease_ttl"
                    ),
                });
            }
        }
        Ok(Buckets { leases, members })
    }

    /// Heartbeats `node` and returns the live members (itself included).
    pub async fn heartbeat(&self, node: &str) -> Result<BTreeSet<String>, String> {
        self.members
            .put(node, bytes::Bytes::new())
            .await
            .map_err(|e| e.to_string())?;
        let mut keys = self.members.keys().await.map_err(|e| e.to_string())?;
        let mut live = BTreeSet::new();
        while let Some(k) = keys.next().await {
            live.insert(k.map_err(|e| e.to_string())?);
        }
        live.insert(node.to_string());
        Ok(live)
    }

    /// Leaves the membership at once (a clean stop), instead of after the TTL.
    pub async fn leave(&self, node: &str) {
        let _ = self.members.delete(node).await;
    }

    /// Tries to acquire partition `p`'s lease for `node`: its revision (the epoch) if
    /// this node holds it now. A transport failure after which the lease turns out to
    /// hold `node` counts as acquired (the create was stored, its answer lost).
    pub async fn acquire(&self, p: u32, node: &str) -> Option<u64> {
        let key = lease_key(p);
        match self.leases.create(&key, node.to_string().into()).await {
            Ok(rev) => Some(rev),
            Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => None,
            Err(_) => match self.leases.entry(&key).await {
                Ok(Some(entry))
                    if entry.operation == kv::Operation::Put
                        && &entry.value[..] == node.as_bytes() =>
                {
                    Some(entry.revision)
                }
                _ => None,
            },
        }
    }

    /// Renews a held lease: the new revision, or why not.
    pub async fn renew(&self, p: u32, node: &str, rev: u64) -> Result<u64, Renewal> {
        match self
            .leases
            .update(lease_key(p), node.to_string().into(), rev)
            .await
        {
            Ok(rev) => Ok(rev),
            Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => Err(Renewal::Lost),
            Err(e) => Err(Renewal::Unknown(e.to_string())),
        }
    }

    /// Gives a held lease up (so the next owner need not wait for it to expire).
    pub async fn release(&self, p: u32, rev: u64) {
        let _ = self
            .leases
            .delete_expect_revision(lease_key(p), Some(rev))
            .await;
    }
}

/// Why a renewal failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Renewal {
    /// Another node holds the lease, or it expired: it is lost.
    Lost,
    /// No answer: the lease may still be held until its TTL runs out.
    Unknown(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rendezvous_spreads_partitions_and_moves_only_a_leavers_share() {
        let three: BTreeSet<String> = ["a", "b", "c"].iter().map(|s| s.to_string()).collect();
        let two: BTreeSet<String> = ["a", "b"].iter().map(|s| s.to_string()).collect();
        let mut per = std::collections::BTreeMap::new();
        for p in 0..600 {
            let owner = preferred(p, &three).unwrap();
            *per.entry(owner).or_insert(0) += 1;
            // Removing c moves only c's partitions.
            let after = preferred(p, &two).unwrap();
            if owner != "c" {
                assert_eq!(owner, after, "partition {p} moved needlessly");
            }
        }
        for (node, n) in per {
            assert!((150..=250).contains(&n), "{node} got {n} of 600");
        }
        assert_eq!(preferred(0, &BTreeSet::new()), None);
    }
}
