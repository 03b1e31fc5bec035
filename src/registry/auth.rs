//! API keys and roles (SPEC 6).
//!
//! Keys are known only as SHA-256 hashes. A presented bearer key is hashed and compared
//! against every configured hash in constant time, without an early exit, so neither the
//! key nor which entry matched leaks through timing.

use std::sync::Arc;

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::config::ApiKeyConfig;
pub use crate::config::Role;

/// An authenticated caller.
#[derive(Debug, Clone)]
pub struct Principal {
    /// The key's tenant.
    pub tenant: Arc<str>,
    /// The key's role.
    pub role: Role,
    /// The key's label (never the key).
    pub key_name: Arc<str>,
}

/// The configured keys.
#[derive(Debug)]
pub struct ApiKeys {
    keys: Vec<([u8; 32], Principal)>,
}

impl ApiKeys {
    /// Builds the key table from configuration.
    pub fn new(cfg: &[ApiKeyConfig]) -> ApiKeys {
        ApiKeys {
            keys: cfg
                .iter()
                .map(|k| {
                    (
                        k.sha256,
                        Principal {
                            tenant: Arc::from(k.tenant.as_str()),
                            role: k.role,
                            key_name: Arc::from(k.name.as_str()),
                        },
                    )
                })
                .collect(),
        }
    }

    /// Returns the principal for a presented bearer key, if any.
    pub fn authenticate(&self, presented: &[u8]) -> Option<Principal> {
        let digest: [u8; 32] = Sha256::digest(presented).into();
        let mut found: Option<&Principal> = None;
        for (hash, principal) in &self.keys {
            let eq: bool = hash.ct_eq(&digest).into();
            if eq {
                found = Some(principal);
            }
        }
        found.cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn authenticates_by_hash() {
        let cfg = vec![ApiKeyConfig {
            tenant: "t".into(),
            role: Role::Read,
            sha256: Sha256::digest(b"secret").into(),
            name: "k".into(),
        }];
        let keys = ApiKeys::new(&cfg);
        assert_eq!(keys.authenticate(b"secret").unwrap().role, Role::Read);
        assert!(keys.authenticate(b"secreT").is_none());
        assert!(keys.authenticate(b"").is_none());
    }
}
