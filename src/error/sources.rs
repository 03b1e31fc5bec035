//! How the errors of the lower layers become [`Error`]s: a full disk is `storage_full`,
//! any other store or journal failure `storage_unavailable` (logged, since it is the
//! daemon's problem, not the client's).
//!
//! A child of the leaf `error` module but ranked with the journal in `src/layers.txt`:
//! it names `StoreError` and `CommitError`, which the leaf may not.

use super::{Error, ErrorCode};
use crate::journal::CommitError;
use crate::store::StoreError;

impl From<StoreError> for Error {
    fn from(e: StoreError) -> Error {
        match e {
            StoreError::Full(d) => Error::new(ErrorCode::StorageFull, d),
            other => {
                tracing::error!(error = %other, "store error");
                Error::new(ErrorCode::StorageUnavailable, other.to_string())
            }
        }
    }
}

impl From<CommitError> for Error {
    fn from(c: CommitError) -> Error {
        match c {
            c if c.is_full() => Error::new(ErrorCode::StorageFull, c.to_string()),
            // Cluster mode: another node wrote the registry first; nothing was stored.
            CommitError::Conflict => Error::new(
                ErrorCode::Conflict,
                format!("{c}; nothing was changed, read the current state and retry"),
            ),
            // Cluster mode: the partition is moving between nodes, or its stream did
            // not answer in time.
            CommitError::NotOwner(_) | CommitError::Fenced(_) | CommitError::InDoubt(..) => {
                Error::new(ErrorCode::NotReady, format!("{c}; retry shortly"))
            }
            c => Error::new(ErrorCode::StorageUnavailable, c.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn a_full_disk_is_storage_full_and_the_rest_unavailable() {
        let full = Error::from(StoreError::Full("No space left".into()));
        assert_eq!(full.code(), ErrorCode::StorageFull);
        assert_eq!(full.message(), "No space left");
        let corrupt = Error::from(StoreError::Corrupt("windows"));
        assert_eq!(corrupt.code(), ErrorCode::StorageUnavailable);
        assert_eq!(corrupt.message(), "corrupt record in column family windows");
        let c = CommitError::Store(Arc::new(StoreError::Full("No space left".into())));
        assert_eq!(Error::from(c).code(), ErrorCode::StorageFull);
        assert_eq!(
            Error::from(CommitError::Stopped).code(),
            ErrorCode::StorageUnavailable
        );
    }
}
