//! The store's error type. It owns no state, and says nothing about MQTT: what a
//! refusal means to a client is the broker's call (`broker::journal::refusal_reason`).

use rusqlite::ErrorCode;

/// Why a store operation failed. `Clone` because one failed commit fails every
/// operation grouped into it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// The disk (or the store's size cap) is full: new durable data is refused; reads
    /// and later writes work again once space is back.
    #[error("disk full: durable state refused")]
    DiskFull,
    /// The write queue is full (only from [`super::Store::try_reserve`]).
    #[error("store busy: write queue full")]
    Busy,
    /// The writer has stopped (after `close`, or it failed to start).
    #[error("store closed")]
    Closed,
    /// The database file could not be opened or prepared (not damage: permissions,
    /// a missing directory, a lock held by another process ...).
    #[error("cannot open store {path}: {reason}")]
    Open { path: String, reason: String },
    /// A file operation around the database failed (moving a damaged file aside).
    #[error("{action} {path}: {reason}")]
    Io {
        action: &'static str,
        path: String,
        reason: String,
    },
    /// Any other SQLite failure.
    #[error("database error: {0}")]
    Database(String),
    /// A stored row holds a value outside its domain.
    #[error("invalid stored record in {table}: {reason}")]
    InvalidRecord { table: &'static str, reason: String },
}

impl StoreError {
    pub fn is_disk_full(&self) -> bool {
        matches!(self, StoreError::DiskFull)
    }

    pub(crate) fn io(action: &'static str, path: &std::path::Path, err: std::io::Error) -> Self {
        StoreError::Io {
            action,
            path: path.display().to_string(),
            reason: err.to_string(),
        }
    }
}

impl From<rusqlite::Error> for StoreError {
    fn from(err: rusqlite::Error) -> Self {
        if sqlite_code(&err) == Some(ErrorCode::DiskFull) {
            StoreError::DiskFull
        } else {
            StoreError::Database(err.to_string())
        }
    }
}

/// The primary SQLite result code behind an error, if it came from SQLite.
pub(crate) fn sqlite_code(err: &rusqlite::Error) -> Option<ErrorCode> {
    match err {
        rusqlite::Error::SqliteFailure(failure, _) => Some(failure.code),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlite_full_is_disk_full() {
        let full = rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_FULL),
            None,
        );
        let err = StoreError::from(full);
        assert_eq!(err, StoreError::DiskFull);
        assert!(err.is_disk_full());
        let other = rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_IOERR),
            None,
        );
        assert!(matches!(StoreError::from(other), StoreError::Database(_)));
    }
}
