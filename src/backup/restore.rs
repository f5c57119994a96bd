//! Restoring an archive into an empty state directory: every entry checked (no
//! unsafe path, no symlink, bounded size and count), modes put back, and on any
//! error everything written so far removed again.

use super::*;

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
pub(super) fn restored_mode(relative: &Path, archived: u32) -> u32 {
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
