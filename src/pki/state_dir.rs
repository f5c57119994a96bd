//! The state directory on disk: created 0700, refused when group or others can reach
//! it, and files written atomically (temporary file, fsync, rename, fsync of the
//! directory) with private files at 0600. Writes that would not change a file's content
//! are skipped, so an idempotent run leaves every mtime alone. It knows nothing of what
//! the files contain.

use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// File or directory problems in the state directory, always naming the path.
#[derive(Debug, thiserror::Error)]
pub enum StateDirError {
    #[error(
        "{path} is accessible to group or others (mode {mode:o}); \
         private keys live there: run `chmod 700 {path}`"
    )]
    TooOpen { path: PathBuf, mode: u32 },
    #[error("{path} exists but is not a directory")]
    NotADirectory { path: PathBuf },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

pub(crate) fn io_error(path: &Path) -> impl FnOnce(io::Error) -> StateDirError + '_ {
    move |source| StateDirError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Whether `name` may name one entry of the state directory (a device bundle, a
/// secret file's hash): `[A-Za-z0-9._-]{1,64}`, and not `.` or `..`.
pub fn is_safe_entry_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// Creates `dir` (and missing parents) with mode 0700, or checks an existing one:
/// it must be a directory that neither group nor others can read, write or enter.
pub fn ensure_private_dir(dir: &Path) -> Result<(), StateDirError> {
    match fs::metadata(dir) {
        Ok(meta) => {
            if !meta.is_dir() {
                return Err(StateDirError::NotADirectory {
                    path: dir.to_path_buf(),
                });
            }
            let mode = meta.permissions().mode() & 0o7777;
            if mode & 0o077 != 0 {
                return Err(StateDirError::TooOpen {
                    path: dir.to_path_buf(),
                    mode,
                });
            }
            Ok(())
        }
        Err(err) if err.kind() == io::ErrorKind::NotFound => DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(io_error(dir)),
        Err(err) => Err(io_error(dir)(err)),
    }
}

/// What a write did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteOutcome {
    Written,
    Unchanged,
}

/// Writes a secret (a private key, a hash) with mode 0600, atomically.
pub fn write_private(path: &Path, contents: &[u8]) -> Result<WriteOutcome, StateDirError> {
    write_atomic(path, contents, 0o600)
}

/// Writes a public file (a certificate) with mode 0644, atomically.
pub fn write_public(path: &Path, contents: &[u8]) -> Result<WriteOutcome, StateDirError> {
    write_atomic(path, contents, 0o644)
}

/// Reads a file, `None` if it does not exist.
pub fn read_optional(path: &Path) -> Result<Option<Vec<u8>>, StateDirError> {
    match fs::read(path) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(err) => Err(io_error(path)(err)),
    }
}

fn write_atomic(path: &Path, contents: &[u8], mode: u32) -> Result<WriteOutcome, StateDirError> {
    if let Some(existing) = read_optional(path)?
        && existing == contents
    {
        let current = fs::metadata(path).map_err(io_error(path))?;
        if current.permissions().mode() & 0o777 == mode {
            return Ok(WriteOutcome::Unchanged);
        }
        fs::set_permissions(path, fs::Permissions::from_mode(mode)).map_err(io_error(path))?;
        return Ok(WriteOutcome::Written);
    }
    let dir = path.parent().unwrap_or(Path::new("."));
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let temp = dir.join(format!(".{file_name}.tmp"));
    // A stale temporary file from a crash is simply replaced.
    let _ = fs::remove_file(&temp);
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&temp)
        .map_err(io_error(&temp))?;
    let written = file
        .write_all(contents)
        .and_then(|()| file.sync_all())
        .map_err(io_error(&temp));
    drop(file);
    if let Err(err) = written {
        let _ = fs::remove_file(&temp);
        return Err(err);
    }
    fs::rename(&temp, path).map_err(io_error(path))?;
    // Make the rename itself durable.
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_error(dir))?;
    Ok(WriteOutcome::Written)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creates_a_0700_directory() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("state/nested");
        ensure_private_dir(&dir).unwrap();
        let mode = fs::metadata(&dir).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
        ensure_private_dir(&dir).unwrap();
    }

    #[test]
    fn refuses_group_or_world_access_and_names_the_fix() {
        let root = tempfile::tempdir().unwrap();
        for mode in [0o755, 0o750, 0o701, 0o770] {
            fs::set_permissions(root.path(), fs::Permissions::from_mode(mode)).unwrap();
            let err = ensure_private_dir(root.path()).unwrap_err().to_string();
            assert!(err.contains("chmod 700"), "{err}");
            assert!(err.contains(&root.path().display().to_string()), "{err}");
        }
        fs::set_permissions(root.path(), fs::Permissions::from_mode(0o700)).unwrap();
    }

    #[test]
    fn refuses_a_file_in_place_of_the_directory() {
        let root = tempfile::tempdir().unwrap();
        let file = root.path().join("state");
        fs::write(&file, b"x").unwrap();
        assert!(matches!(
            ensure_private_dir(&file),
            Err(StateDirError::NotADirectory { .. })
        ));
    }

    #[test]
    fn private_writes_are_0600_and_idempotent() {
        let root = tempfile::tempdir().unwrap();
        let path = root.path().join("key.pem");
        assert_eq!(
            write_private(&path, b"secret").unwrap(),
            WriteOutcome::Written
        );
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(
            write_private(&path, b"secret").unwrap(),
            WriteOutcome::Unchanged
        );
        assert_eq!(
            write_private(&path, b"other").unwrap(),
            WriteOutcome::Written
        );
        assert_eq!(fs::read(&path).unwrap(), b"other");
        // A loosened mode is tightened again.
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        assert_eq!(
            write_private(&path, b"other").unwrap(),
            WriteOutcome::Written
        );
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        // No temporary file is left behind.
        assert_eq!(fs::read_dir(root.path()).unwrap().count(), 1);
    }
}
