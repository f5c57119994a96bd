//! Writing a backup archive: the state directory walked in order (symlinks and
//! special files refused), a consistent snapshot of the live database, and the
//! manifest, into a 0600 file renamed into place.

use super::*;

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

pub(super) fn file_header(path: &Path, size: u64, mode: u32, mtime: u64) -> Header {
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
