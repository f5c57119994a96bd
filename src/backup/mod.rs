//! Backup and restore of a moat installation: one ustar archive (see `tar`) holding
//! the state directory (keys, certificates, hashes), a consistent snapshot of the
//! SQLite database (`VACUUM INTO`, so a running broker may keep writing) and the
//! installed manifest. The archive holds private keys: it is written 0600 and
//! atomically. Restore only ever writes into an empty state directory, never follows
//! or creates a symlink, refuses unsafe paths and oversized entries, and puts modes
//! back (directories 0700, keys and hashes 0600). It knows files, not certificates or
//! the broker.
//!
//! Archive layout:
//!
//! ```text
//! MOAT-BACKUP          "moat backup 1": what this is (restore refuses other archives)
//! state/...            the state directory; the database snapshot at its usual place
//! manifest.yaml        the installed manifest (also when it lives in the state directory,
//!                      so an archive restores into any layout)
//! database.sqlite      the database snapshot, when it lives outside the state directory
//! ```
//!
//! Writing an archive is `create`, restoring one `restore`, the ustar format `tar`.

mod create;
mod restore;
mod tar;
#[cfg(test)]
mod tests;

use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, BufReader, BufWriter};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;

pub use tar::TarError;
use tar::{EntryKind, Header, ReadLimits, TarReader, TarWriter};

use crate::pki::state_dir::{StateDirError, ensure_private_dir};
use crate::policy::Policy;

pub use create::{BackupReport, backup};
pub use restore::{ManifestRestore, RestoreReport, restore, state_is_empty};

/// The first entry of every moat backup archive, and its content.
pub const MARKER_ENTRY: &str = "MOAT-BACKUP";
const MARKER_TEXT: &[u8] = b"moat backup 1\n";
const STATE_PREFIX: &str = "state";
const MANIFEST_ENTRY: &str = "manifest.yaml";
const DATABASE_ENTRY: &str = "database.sqlite";
/// The database file when the manifest names none (see `policy::Persistence`).
pub const DEFAULT_DATABASE: &str = "moat.db";

/// At most this many entries (a state directory holds a few per device).
pub const MAX_ENTRIES: usize = 10_000;
/// At most this large per entry: bigger than any database the default retained
/// limits allow, small enough that a crafted archive cannot fill the card.
pub const MAX_ENTRY_BYTES: u64 = 256 * 1024 * 1024;

const LIMITS: ReadLimits = ReadLimits {
    max_entries: MAX_ENTRIES,
    max_entry_bytes: MAX_ENTRY_BYTES,
};

#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path}: {source}")]
    Archive {
        path: PathBuf,
        #[source]
        source: TarError,
    },
    #[error(transparent)]
    StateDir(#[from] StateDirError),
    #[error("the state directory {0} does not exist: nothing to back up")]
    NoState(PathBuf),
    #[error("{0} is neither a regular file nor a directory (symlinks are not backed up)")]
    Unsupported(PathBuf),
    #[error("snapshot of the database {path}: {source}")]
    Database {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    #[error(
        "the state directory {0} is not empty; restore only fills an empty one \
         (move it aside first)"
    )]
    StateNotEmpty(PathBuf),
    #[error("{0} is not a moat backup archive (no {MARKER_ENTRY} entry first)")]
    NotABackup(PathBuf),
    #[error("{archive}: unexpected entry {entry:?}")]
    UnexpectedEntry { archive: PathBuf, entry: PathBuf },
    #[error("the archive {0} would be written inside the state directory it backs up")]
    OutputInState(PathBuf),
    #[error("{0} already exists; restore does not overwrite it")]
    Exists(PathBuf),
    #[error(
        "the archive holds a database kept outside the state directory, but the \
         restored manifest {0} cannot be read to say where it goes: {1}"
    )]
    DatabasePlace(PathBuf, String),
}

fn io_at(path: &Path) -> impl FnOnce(io::Error) -> BackupError + '_ {
    move |source| BackupError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn tar_at(path: &Path) -> impl FnOnce(TarError) -> BackupError + '_ {
    move |source| BackupError::Archive {
        path: path.to_path_buf(),
        source,
    }
}

fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

fn sync_dir(dir: &Path) -> Result<(), BackupError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_at(dir))
}

/// A 0700 scratch directory next to where the result goes (same file system, so the
/// result can be renamed into place), removed when dropped.
struct PrivateTempDir {
    path: PathBuf,
}

impl PrivateTempDir {
    fn create(parent: &Path, purpose: &str) -> Result<Self, BackupError> {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let path = parent.join(format!(".moat-{purpose}-{}-{nanos}", std::process::id()));
        DirBuilder::new()
            .mode(0o700)
            .create(&path)
            .map_err(io_at(&path))?;
        Ok(PrivateTempDir { path })
    }
}

impl Drop for PrivateTempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.path);
    }
}

fn first_line(text: &str) -> &str {
    text.lines().next().unwrap_or("")
}

/// `path` made absolute and lexically normalised (no `.` components).
fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path)
        .map(|p| p.components().collect::<PathBuf>())
        .unwrap_or_else(|_| path.to_path_buf())
}

/// Whether `path` lies inside `dir` (lexically, after making both absolute).
fn inside(dir: &Path, path: &Path) -> bool {
    absolute(path).starts_with(absolute(dir))
}
