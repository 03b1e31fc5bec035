//! Store failures ([`StoreError`]) and the one place a RocksDB error's text is read to
//! classify it.

use super::FORMAT_VERSION;

/// Store failures.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// RocksDB reported an error.
    #[error("rocksdb: {0}")]
    Rocks(#[from] rocksdb::Error),
    /// The data dir was written by an incompatible version.
    #[error("data dir has on-disk format {found:?}, this meterd reads format {FORMAT_VERSION}; use a matching meterd version")]
    IncompatibleFormat {
        /// Version found on disk.
        found: String,
    },
    /// A stored record could not be decoded.
    #[error("corrupt record in column family {0}")]
    Corrupt(&'static str),
    /// The disk is full.
    #[error("storage full: {0}")]
    Full(String),
}

impl StoreError {
    /// Sorts a RocksDB error into the variant callers match on. RocksDB's C API hands a
    /// failed `Status` over as its text only (rust-rocksdb's own `Error::kind` parses
    /// that text too), so this is the one place meterd reads error text: an I/O error
    /// whose status says "No space left" (RocksDB's `NoSpace` subcode, or the OS's
    /// ENOSPC) is [`StoreError::Full`]. Everything above the store matches the variant.
    pub(super) fn classify(e: rocksdb::Error) -> StoreError {
        let s = e.to_string();
        if s.contains("No space left") || s.contains("ENOSPC") {
            StoreError::Full(s)
        } else {
            StoreError::Rocks(e)
        }
    }
}
