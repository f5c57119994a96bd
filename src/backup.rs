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

mod tar;

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

/// What a backup wrote.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BackupReport {
    pub archive: PathBuf,
    /// Files archived (the marker not counted).
    pub files: usize,
    /// The database that was snapshotted, if one exists.
    pub database: Option<PathBuf>,
    /// The manifest that was archived, if it exists.
    pub manifest: Option<PathBuf>,
    /// Non-fatal notes (e.g. the manifest could not be read for the database path).
    pub notes: Vec<String>,
}

/// Writes a backup archive of `state` (and `manifest`, and the database) to `output`.
pub fn backup(state: &Path, manifest: &Path, output: &Path) -> Result<BackupReport, BackupError> {
    // Absolute paths, so the walk can recognise the manifest and the database.
    let (state, manifest) = (&absolute(state), &absolute(manifest));
    if !state.is_dir() {
        return Err(BackupError::NoState(state.to_path_buf()));
    }
    ensure_private_dir(state)?;
    if inside(state, output) {
        return Err(BackupError::OutputInState(output.to_path_buf()));
    }
    let mut notes = Vec::new();
    let manifest_exists = manifest.is_file();
    let database = absolute(&database_path(state, manifest, manifest_exists, &mut notes));
    let database_in_state = inside(state, &database);
    let manifest_in_state = manifest_exists && inside(state, manifest);

    let parent = parent_dir(output);
    let work = PrivateTempDir::create(&parent, "backup")?;
    let snapshot = if database.is_file() {
        let snapshot = work.path.join("snapshot.sqlite");
        snapshot_database(&database, &snapshot)?;
        Some(snapshot)
    } else {
        None
    };

    let temp_archive = work.path.join("archive.tar");
    let file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&temp_archive)
        .map_err(io_at(&temp_archive))?;
    let mut writer = TarWriter::new(BufWriter::new(file));
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let marker = file_header(
        Path::new(MARKER_ENTRY),
        MARKER_TEXT.len() as u64,
        0o600,
        now,
    );
    writer
        .append_file(&marker, &mut &MARKER_TEXT[..])
        .map_err(tar_at(output))?;

    let mut files = 0;
    let skip = |path: &Path| {
        (database_in_state && is_database_file(path, &database))
            || (manifest_in_state && path == manifest)
    };
    let mut entries = Vec::new();
    walk(state, Path::new(""), &skip, &mut entries)?;
    if entries.len() + 3 > MAX_ENTRIES {
        return Err(tar_at(output)(TarError::TooManyEntries(MAX_ENTRIES)));
    }
    writer
        .append_dir(
            Path::new(STATE_PREFIX),
            0o700,
            mtime_of(&fs::metadata(state).map_err(io_at(state))?),
        )
        .map_err(tar_at(output))?;
    for (relative, meta) in &entries {
        let entry = Path::new(STATE_PREFIX).join(relative);
        let source = state.join(relative);
        if meta.is_dir() {
            writer
                .append_dir(&entry, meta.mode() & 0o7777, mtime_of(meta))
                .map_err(tar_at(output))?;
        } else {
            append_path(&mut writer, &entry, &source, output)?;
            files += 1;
        }
    }
    if let Some(snapshot) = &snapshot {
        let entry = match database.strip_prefix(state) {
            Ok(relative) if database_in_state => Path::new(STATE_PREFIX).join(relative),
            _ => PathBuf::from(DATABASE_ENTRY),
        };
        append_with_mode(&mut writer, &entry, snapshot, 0o600, output)?;
        files += 1;
    }
    if manifest_exists {
        append_path(&mut writer, Path::new(MANIFEST_ENTRY), manifest, output)?;
        files += 1;
    }
    let buffered = writer.finish().map_err(tar_at(output))?;
    let file = buffered
        .into_inner()
        .map_err(|e| io_at(&temp_archive)(e.into_error()))?;
    file.sync_all().map_err(io_at(&temp_archive))?;
    drop(file);
    fs::rename(&temp_archive, output).map_err(io_at(output))?;
    sync_dir(&parent)?;
    Ok(BackupReport {
        archive: output.to_path_buf(),
        files,
        database: snapshot.map(|_| database),
        manifest: manifest_exists.then(|| manifest.to_path_buf()),
        notes,
    })
}

/// Where the database lives: the manifest's `persistence.path`, else `<state>/moat.db`.
fn database_path(state: &Path, manifest: &Path, exists: bool, notes: &mut Vec<String>) -> PathBuf {
    if exists {
        match Policy::load(manifest) {
            Ok((policy, _)) => {
                if let Some(path) = policy.persistence.path {
                    return path;
                }
            }
            Err(e) => notes.push(format!(
                "the manifest could not be loaded ({}); looked for the database at its default place",
                first_line(&e.to_string())
            )),
        }
    }
    state.join(DEFAULT_DATABASE)
}

fn first_line(text: &str) -> &str {
    text.lines().next().unwrap_or("")
}

/// The database or one of SQLite's companion files (`-wal`, `-shm`, `-journal`).
fn is_database_file(path: &Path, database: &Path) -> bool {
    if path == database {
        return true;
    }
    let (Some(name), Some(db_name)) = (path.file_name(), database.file_name()) else {
        return false;
    };
    let (name, db_name) = (name.to_string_lossy(), db_name.to_string_lossy());
    path.parent() == database.parent()
        && ["-wal", "-shm", "-journal"]
            .iter()
            .any(|suffix| name == format!("{db_name}{suffix}"))
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

/// A consistent copy of a live SQLite database, taken in one read transaction.
fn snapshot_database(database: &Path, snapshot: &Path) -> Result<(), BackupError> {
    let db_error = |source| BackupError::Database {
        path: database.to_path_buf(),
        source,
    };
    let connection = rusqlite::Connection::open_with_flags(
        database,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(db_error)?;
    connection
        .busy_timeout(Duration::from_secs(10))
        .map_err(db_error)?;
    let target = snapshot.to_str().ok_or_else(|| {
        io_at(snapshot)(io::Error::new(
            io::ErrorKind::InvalidInput,
            "temporary path is not UTF-8",
        ))
    })?;
    connection
        .execute("VACUUM INTO ?1", [target])
        .map_err(db_error)?;
    fs::set_permissions(snapshot, fs::Permissions::from_mode(0o600)).map_err(io_at(snapshot))
}

/// Every entry under `dir`, sorted, directories before their contents; symlinks and
/// special files are refused.
fn walk(
    root: &Path,
    relative: &Path,
    skip: &dyn Fn(&Path) -> bool,
    out: &mut Vec<(PathBuf, fs::Metadata)>,
) -> Result<(), BackupError> {
    let dir = root.join(relative);
    let mut names: Vec<_> = fs::read_dir(&dir)
        .map_err(io_at(&dir))?
        .map(|entry| entry.map(|e| e.file_name()))
        .collect::<Result<_, _>>()
        .map_err(io_at(&dir))?;
    names.sort();
    for name in names {
        let child = relative.join(&name);
        let full = root.join(&child);
        if skip(&full) {
            continue;
        }
        let meta = fs::symlink_metadata(&full).map_err(io_at(&full))?;
        if meta.is_dir() {
            out.push((child.clone(), meta));
            if out.len() > MAX_ENTRIES {
                return Err(tar_at(root)(TarError::TooManyEntries(MAX_ENTRIES)));
            }
            walk(root, &child, skip, out)?;
        } else if meta.is_file() {
            out.push((child, meta));
        } else {
            return Err(BackupError::Unsupported(full));
        }
        if out.len() > MAX_ENTRIES {
            return Err(tar_at(root)(TarError::TooManyEntries(MAX_ENTRIES)));
        }
    }
    Ok(())
}

fn file_header(path: &Path, size: u64, mode: u32, mtime: u64) -> Header {
    Header {
        path: path.to_path_buf(),
        kind: EntryKind::File,
        mode,
        size,
        mtime,
    }
}

fn mtime_of(meta: &fs::Metadata) -> u64 {
    u64::try_from(meta.mtime()).unwrap_or(0)
}

fn append_path(
    writer: &mut TarWriter<BufWriter<File>>,
    entry: &Path,
    source: &Path,
    archive: &Path,
) -> Result<(), BackupError> {
    let mode = fs::symlink_metadata(source).map_err(io_at(source))?.mode() & 0o7777;
    append_with_mode(writer, entry, source, mode, archive)
}

fn append_with_mode(
    writer: &mut TarWriter<BufWriter<File>>,
    entry: &Path,
    source: &Path,
    mode: u32,
    archive: &Path,
) -> Result<(), BackupError> {
    let file = File::open(source).map_err(io_at(source))?;
    let meta = file.metadata().map_err(io_at(source))?;
    if meta.len() > MAX_ENTRY_BYTES {
        return Err(tar_at(archive)(TarError::TooLarge {
            path: source.display().to_string(),
            size: meta.len(),
            limit: MAX_ENTRY_BYTES,
        }));
    }
    let header = file_header(entry, meta.len(), mode, mtime_of(&meta));
    writer
        .append_file(&header, &mut BufReader::new(file))
        .map_err(tar_at(archive))
}

/// What a restore put where.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RestoreReport {
    pub state: PathBuf,
    /// Files written into the state directory (the database included).
    pub files: usize,
    pub manifest: ManifestRestore,
    /// Where a database kept outside the state directory was restored.
    pub database: Option<PathBuf>,
}

/// What happened to the manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "outcome", content = "path")]
pub enum ManifestRestore {
    /// Restored to this path.
    Restored(PathBuf),
    /// A manifest already existed there and was kept (for example a declared one).
    KeptExisting(PathBuf),
    /// The archive held no manifest.
    NotInArchive,
}

/// Whether `state` is missing or an empty directory (what restore requires).
pub fn state_is_empty(state: &Path) -> Result<bool, BackupError> {
    match fs::read_dir(state) {
        Ok(mut entries) => Ok(entries.next().is_none()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(true),
        Err(e) => Err(io_at(state)(e)),
    }
}

/// Restores `archive` into the empty (or missing) `state` directory, and its manifest
/// to `manifest` unless one exists there. On any error, everything written so far is
/// removed again, leaving the state directory empty.
pub fn restore(
    archive: &Path,
    state: &Path,
    manifest: &Path,
) -> Result<RestoreReport, BackupError> {
    if !state_is_empty(state)? {
        return Err(BackupError::StateNotEmpty(state.to_path_buf()));
    }
    ensure_private_dir(state)?;
    let mut written = Written::default();
    let result = restore_into(archive, state, manifest, &mut written);
    if result.is_err() {
        written.undo(state);
    }
    result
}

/// What a restore created, so a failure can take it back.
#[derive(Default)]
struct Written {
    outside: Vec<PathBuf>,
}

impl Written {
    fn undo(&self, state: &Path) {
        for path in &self.outside {
            let _ = fs::remove_file(path);
        }
        if let Ok(entries) = fs::read_dir(state) {
            for entry in entries.flatten() {
                let path = entry.path();
                let _ = match entry.file_type() {
                    Ok(t) if t.is_dir() => fs::remove_dir_all(&path),
                    _ => fs::remove_file(&path),
                };
            }
        }
    }
}

fn restore_into(
    archive: &Path,
    state: &Path,
    manifest: &Path,
    written: &mut Written,
) -> Result<RestoreReport, BackupError> {
    let file = File::open(archive).map_err(io_at(archive))?;
    let mut reader = TarReader::new(BufReader::new(file), LIMITS);
    let first = reader.next_header().map_err(tar_at(archive))?;
    let mut marker = Vec::new();
    match first {
        Some(h) if h.path == Path::new(MARKER_ENTRY) && h.kind == EntryKind::File => {
            if h.size > 64 {
                return Err(BackupError::NotABackup(archive.to_path_buf()));
            }
            reader.copy_data(&mut marker).map_err(tar_at(archive))?;
        }
        _ => return Err(BackupError::NotABackup(archive.to_path_buf())),
    }
    if marker != MARKER_TEXT {
        return Err(BackupError::NotABackup(archive.to_path_buf()));
    }
    let manifest_in_state = inside(state, manifest);
    let manifest_existed = manifest.exists();
    let mut files = 0;
    let mut manifest_outcome = ManifestRestore::NotInArchive;
    let mut database_entry = None;
    let work = PrivateTempDir::create(state, "restore")?;
    let mut dirs = Vec::new();
    while let Some(header) = reader.next_header().map_err(tar_at(archive))? {
        let unexpected = || BackupError::UnexpectedEntry {
            archive: archive.to_path_buf(),
            entry: header.path.clone(),
        };
        if let Ok(relative) = header.path.strip_prefix(STATE_PREFIX) {
            if relative.as_os_str().is_empty() {
                if header.kind != EntryKind::Dir {
                    return Err(unexpected());
                }
                continue;
            }
            let target = state.join(relative);
            match header.kind {
                EntryKind::Dir => {
                    create_private_dirs(state, relative)?;
                    dirs.push((target, header.mtime));
                }
                EntryKind::File => {
                    if let Some(parent) = relative.parent() {
                        create_private_dirs(state, parent)?;
                    }
                    let mode = restored_mode(relative, header.mode);
                    extract(&mut reader, &target, mode, header.mtime, archive)?;
                    files += 1;
                }
            }
        } else if header.path == Path::new(MANIFEST_ENTRY) && header.kind == EntryKind::File {
            if manifest_existed {
                manifest_outcome = ManifestRestore::KeptExisting(manifest.to_path_buf());
                continue;
            }
            if manifest_in_state
                && let Some(parent) = manifest.parent().and_then(|p| p.strip_prefix(state).ok())
            {
                create_private_dirs(state, parent)?;
            }
            extract(
                &mut reader,
                manifest,
                header.mode & 0o640,
                header.mtime,
                archive,
            )?;
            written.outside.push(manifest.to_path_buf());
            manifest_outcome = ManifestRestore::Restored(manifest.to_path_buf());
        } else if header.path == Path::new(DATABASE_ENTRY) && header.kind == EntryKind::File {
            // Its place comes from the manifest, which may come later in the archive.
            let parked = work.path.join(DATABASE_ENTRY);
            extract(&mut reader, &parked, 0o600, header.mtime, archive)?;
            database_entry = Some(parked);
        } else {
            return Err(unexpected());
        }
    }
    let database = match database_entry {
        Some(parked) => {
            let target = match Policy::load(manifest) {
                Ok((policy, _)) => policy
                    .persistence
                    .path
                    .unwrap_or_else(|| state.join(DEFAULT_DATABASE)),
                Err(e) => {
                    return Err(BackupError::DatabasePlace(
                        manifest.to_path_buf(),
                        first_line(&e.to_string()).to_string(),
                    ));
                }
            };
            if target.exists() {
                return Err(BackupError::Exists(target));
            }
            copy_new(&parked, &target, 0o600)?;
            if !inside(state, &target) {
                written.outside.push(target.clone());
            }
            Some(target)
        }
        None => None,
    };
    drop(work);
    // Directory mtimes last: creating their contents changed them.
    for (dir, mtime) in dirs.iter().rev() {
        set_dir_mtime(dir, *mtime);
    }
    sync_dir(state)?;
    Ok(RestoreReport {
        state: state.to_path_buf(),
        files,
        manifest: manifest_outcome,
        database,
    })
}

/// Keys, hashes and databases are 0600 whatever the archive says; nothing gets an
/// execute bit or group/other write.
fn restored_mode(relative: &Path, archived: u32) -> u32 {
    let private = relative
        .extension()
        .is_some_and(|e| e == "key" || e == "phc")
        || relative.file_name().is_some_and(|n| n == "key.pem")
        || relative.starts_with("hashes")
        || relative
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with(DEFAULT_DATABASE));
    if private { 0o600 } else { archived & 0o644 }
}

/// Creates `relative` (and its parents) under `root` as 0700 directories; an existing
/// component must be a real directory, not a symlink.
fn create_private_dirs(root: &Path, relative: &Path) -> Result<(), BackupError> {
    let mut current = root.to_path_buf();
    for component in relative.components() {
        current.push(component);
        match fs::symlink_metadata(&current) {
            Ok(meta) if meta.is_dir() => {}
            Ok(_) => return Err(BackupError::Unsupported(current)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => DirBuilder::new()
                .mode(0o700)
                .create(&current)
                .map_err(io_at(&current))?,
            Err(e) => return Err(io_at(&current)(e)),
        }
    }
    Ok(())
}

/// Writes the current entry's data to a new file at `target` (`create_new`: never over
/// an existing file, never through a symlink), with `mode` and `mtime`, synced.
fn extract<R: io::Read>(
    reader: &mut TarReader<R>,
    target: &Path,
    mode: u32,
    mtime: u64,
    archive: &Path,
) -> Result<(), BackupError> {
    let file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(target)
        .map_err(|e| match e.kind() {
            io::ErrorKind::AlreadyExists => BackupError::Exists(target.to_path_buf()),
            _ => io_at(target)(e),
        })?;
    let mut out = BufWriter::new(file);
    reader.copy_data(&mut out).map_err(tar_at(archive))?;
    let file = out
        .into_inner()
        .map_err(|e| io_at(target)(e.into_error()))?;
    file.set_permissions(fs::Permissions::from_mode(mode))
        .map_err(io_at(target))?;
    let _ = file.set_modified(UNIX_EPOCH + Duration::from_secs(mtime));
    file.sync_all().map_err(io_at(target))
}

fn copy_new(from: &Path, to: &Path, mode: u32) -> Result<(), BackupError> {
    let mut source = File::open(from).map_err(io_at(from))?;
    let mut target = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(to)
        .map_err(io_at(to))?;
    io::copy(&mut source, &mut target).map_err(io_at(to))?;
    target.sync_all().map_err(io_at(to))
}

fn set_dir_mtime(dir: &Path, mtime: u64) {
    if let Ok(handle) = File::open(dir) {
        let _ = handle.set_modified(UNIX_EPOCH + Duration::from_secs(mtime));
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

#[cfg(test)]
mod tests {
    use super::*;

    fn private_dir(path: &Path) {
        fs::create_dir_all(path).unwrap();
        fs::set_permissions(path, fs::Permissions::from_mode(0o700)).unwrap();
    }

    fn populated_state(root: &Path) -> PathBuf {
        let state = root.join("state");
        private_dir(&state);
        fs::write(state.join("ca.pem"), "CERT").unwrap();
        fs::set_permissions(state.join("ca.pem"), fs::Permissions::from_mode(0o644)).unwrap();
        fs::write(state.join("ca.key"), "KEY").unwrap();
        fs::set_permissions(state.join("ca.key"), fs::Permissions::from_mode(0o600)).unwrap();
        private_dir(&state.join("devices/sensor"));
        fs::write(state.join("devices/sensor/key.pem"), "DEVKEY").unwrap();
        state
    }

    #[test]
    fn snapshots_a_live_database_and_skips_its_wal() {
        let root = tempfile::tempdir().unwrap();
        let state = populated_state(root.path());
        let db = state.join(DEFAULT_DATABASE);
        let live = rusqlite::Connection::open(&db).unwrap();
        live.pragma_update(None, "journal_mode", "WAL").unwrap();
        live.execute_batch("CREATE TABLE t(x); INSERT INTO t VALUES (42);")
            .unwrap();
        // The connection stays open: the WAL file exists while we back up.
        assert!(state.join("moat.db-wal").exists());
        let archive = root.path().join("b.tar");
        let report = backup(&state, &root.path().join("absent.yaml"), &archive).unwrap();
        assert_eq!(report.database, Some(db.clone()));
        assert_eq!(
            fs::metadata(&archive).unwrap().permissions().mode() & 0o777,
            0o600
        );
        drop(live);

        let target = root.path().join("restored");
        let restored = restore(&archive, &target, &root.path().join("absent.yaml")).unwrap();
        assert_eq!(restored.manifest, ManifestRestore::NotInArchive);
        assert!(!target.join("moat.db-wal").exists());
        let copy = rusqlite::Connection::open(target.join(DEFAULT_DATABASE)).unwrap();
        let x: i64 = copy.query_row("SELECT x FROM t", [], |r| r.get(0)).unwrap();
        assert_eq!(x, 42);
        // No scratch directory is left behind.
        let leftovers: Vec<_> = fs::read_dir(root.path())
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with(".moat-"))
            .collect();
        assert!(leftovers.is_empty());
    }

    #[test]
    fn a_failed_restore_leaves_the_state_empty() {
        let root = tempfile::tempdir().unwrap();
        let state = populated_state(root.path());
        let archive = root.path().join("b.tar");
        backup(&state, &root.path().join("none.yaml"), &archive).unwrap();
        let bytes = fs::read(&archive).unwrap();
        // Cut the end-of-archive marker: the restore must fail and take its files back.
        fs::write(&archive, &bytes[..bytes.len() - 1024]).unwrap();
        let target = root.path().join("target");
        let err = restore(&archive, &target, &root.path().join("none.yaml")).unwrap_err();
        assert!(err.to_string().contains("truncated"), "{err}");
        assert!(state_is_empty(&target).unwrap());
    }

    #[test]
    fn refuses_archives_without_the_marker() {
        let root = tempfile::tempdir().unwrap();
        let archive = root.path().join("other.tar");
        let mut writer = TarWriter::new(Vec::new());
        writer
            .append_file(
                &file_header(Path::new("state/x"), 1, 0o600, 0),
                &mut &b"x"[..],
            )
            .unwrap();
        fs::write(&archive, writer.finish().unwrap()).unwrap();
        let err = restore(&archive, &root.path().join("s"), &root.path().join("m")).unwrap_err();
        assert!(matches!(err, BackupError::NotABackup(_)), "{err}");
    }

    #[test]
    fn private_names_are_restored_0600() {
        assert_eq!(restored_mode(Path::new("ca.key"), 0o644), 0o600);
        assert_eq!(restored_mode(Path::new("hashes/x.phc"), 0o644), 0o600);
        assert_eq!(restored_mode(Path::new("moat.db"), 0o644), 0o600);
        assert_eq!(restored_mode(Path::new("devices/x/key.pem"), 0o644), 0o600);
        assert_eq!(restored_mode(Path::new("ca.pem"), 0o777), 0o644);
    }
}
