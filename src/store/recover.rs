//! Opening the database file, and what happens when it is damaged.
//!
//! A truncated, zeroed or garbage file, one that fails `PRAGMA quick_check`, or a
//! SQLite file that is not a moat store of a known version is renamed to
//! `<name>.damaged-<UTC timestamp>` (its `-wal`/`-shm` files follow, so the copy can
//! still be opened for forensics) and a fresh store is created: the broker starts
//! rather than refusing to (mosquitto #3160). Errors that are not damage (permissions,
//! a lock, a missing disk) are returned and nothing is moved. This module owns the
//! open-time decisions only; it knows nothing of the writer or of records.

use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use rusqlite::{Connection, ErrorCode};

use super::error::{StoreError, sqlite_code};
use super::schema::{self, SchemaCheck};

/// What `Store::open` had to do to the file it found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Recovery {
    /// Where the damaged database was moved, when it was.
    pub moved_aside: Option<PathBuf>,
    /// Why it was judged damaged.
    pub reason: Option<String>,
}

impl Recovery {
    /// True when the existing database (or a new one) opened without recovery.
    pub fn is_clean(&self) -> bool {
        self.moved_aside.is_none()
    }
}

/// Why one attempt to open failed.
enum Failure {
    /// The file is damaged or foreign: move it aside and start fresh.
    Damaged(String),
    /// Anything else: report and leave the file alone.
    Fatal(StoreError),
}

/// Opens (creating if needed) the database at `path` as the writing connection,
/// recovering from damage by moving the file aside.
pub(crate) fn open_file(
    path: &Path,
    max_page_count: Option<u64>,
) -> Result<(Connection, Recovery), StoreError> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        fs::create_dir_all(dir).map_err(|e| StoreError::io("create directory", dir, e))?;
    }
    match attempt(path, max_page_count) {
        Ok(conn) => Ok((conn, Recovery::default())),
        Err(Failure::Fatal(err)) => Err(err),
        Err(Failure::Damaged(reason)) => {
            let aside = move_aside(path)?;
            tracing::error!(
                database = %path.display(),
                moved_to = %aside.display(),
                %reason,
                "store database is damaged: moved it aside and started a fresh one; \
                 retained messages, sessions and queued messages in it are not restored"
            );
            match attempt(path, max_page_count) {
                Ok(conn) => Ok((
                    conn,
                    Recovery {
                        moved_aside: Some(aside),
                        reason: Some(reason),
                    },
                )),
                Err(Failure::Fatal(err)) => Err(err),
                Err(Failure::Damaged(again)) => Err(StoreError::Open {
                    path: path.display().to_string(),
                    reason: format!("fresh database is damaged too: {again}"),
                }),
            }
        }
    }
}

fn attempt(path: &Path, max_page_count: Option<u64>) -> Result<Connection, Failure> {
    create_private(path)?;
    let classify = |err: rusqlite::Error| match sqlite_code(&err) {
        Some(ErrorCode::NotADatabase | ErrorCode::DatabaseCorrupt) => {
            Failure::Damaged(err.to_string())
        }
        _ => Failure::Fatal(StoreError::Open {
            path: path.display().to_string(),
            reason: err.to_string(),
        }),
    };
    let mut conn = Connection::open(path).map_err(classify)?;
    schema::configure_writer(&conn, max_page_count, false).map_err(classify)?;
    let problems = quick_check(&conn).map_err(classify)?;
    if !problems.is_empty() {
        return Err(Failure::Damaged(format!(
            "quick_check: {}",
            problems.join("; ")
        )));
    }
    match schema::prepare(&mut conn).map_err(classify)? {
        SchemaCheck::Ready => Ok(conn),
        SchemaCheck::Mismatch(reason) => Err(Failure::Damaged(reason)),
    }
}

/// Creates the database file owner-only before SQLite does (SQLite would use 0644,
/// and its -wal/-shm copy the main file's mode). An existing file is left as is.
fn create_private(path: &Path) -> Result<(), Failure> {
    OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path)
        .map(drop)
        .map_err(|e| Failure::Fatal(StoreError::io("create", path, e)))
}

/// First few problems `PRAGMA quick_check` reports; empty when the file is sound.
fn quick_check(conn: &Connection) -> rusqlite::Result<Vec<String>> {
    let mut stmt = conn.prepare("PRAGMA quick_check(5)")?;
    let rows = stmt.query_map([], |row| row.get::<_, String>(0))?;
    let mut problems = Vec::new();
    for row in rows {
        let line = row?;
        if line != "ok" {
            problems.push(line);
        }
    }
    Ok(problems)
}

/// Renames the database and its companions to `<name>.damaged-<timestamp>[-wal|-shm]`
/// and makes the renames durable. Returns the new path of the main file.
fn move_aside(path: &Path) -> Result<PathBuf, StoreError> {
    let stamp = utc_stamp(SystemTime::now());
    let mut aside = suffixed(path, &format!(".damaged-{stamp}"));
    let mut n = 1;
    while aside.exists() {
        aside = suffixed(path, &format!(".damaged-{stamp}-{n}"));
        n += 1;
    }
    for companion in ["-wal", "-shm", "-journal"] {
        let from = suffixed(path, companion);
        if from.exists() {
            let to = suffixed(&aside, companion);
            fs::rename(&from, &to).map_err(|e| StoreError::io("move aside", &from, e))?;
        }
    }
    fs::rename(path, &aside).map_err(|e| StoreError::io("move aside", path, e))?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| StoreError::io("sync directory", dir, e))?;
    }
    Ok(aside)
}

fn suffixed(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

/// `YYYYMMDDTHHMMSSZ` for a wall-clock time. Only names a file: a wrong clock (no RTC)
/// gives a wrong name, never a wrong decision.
fn utc_stamp(time: SystemTime) -> String {
    let secs = time
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let (days, rest) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}{month:02}{day:02}T{:02}{:02}{:02}Z",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    )
}

/// Gregorian date of a day count since 1970-01-01 (Howard Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn timestamps_are_utc_and_sortable() {
        assert_eq!(utc_stamp(UNIX_EPOCH), "19700101T000000Z");
        let t = UNIX_EPOCH + Duration::from_secs(1_795_000_000);
        assert_eq!(utc_stamp(t), "20261118T110640Z");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29
        assert_eq!(utc_stamp(leap), "20000229T000000Z");
    }

    #[test]
    fn a_fresh_file_is_created_owner_only() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/moat.db");
        let (_conn, recovery) = open_file(&path, None).unwrap();
        assert!(recovery.is_clean());
        let mode = fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn a_foreign_database_is_moved_aside_and_stays_readable() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("moat.db");
        {
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch("CREATE TABLE other (x); INSERT INTO other VALUES (1);")
                .unwrap();
        }
        let (conn, recovery) = open_file(&path, None).unwrap();
        let aside = recovery.moved_aside.clone().unwrap();
        assert!(
            aside
                .file_name()
                .unwrap()
                .to_str()
                .unwrap()
                .starts_with("moat.db.damaged-")
        );
        assert!(recovery.reason.unwrap().contains("not a moat store"));
        let old = Connection::open(&aside).unwrap();
        let x: i64 = old
            .query_row("SELECT x FROM other", [], |r| r.get(0))
            .unwrap();
        assert_eq!(x, 1);
        let tables: i64 = conn
            .query_row(
                "SELECT count(*) FROM sqlite_schema WHERE name='retained'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(tables, 1);
    }

    #[test]
    fn garbage_moves_aside_with_its_companions() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("moat.db");
        fs::write(&path, vec![0xA5; 8192]).unwrap();
        fs::write(suffixed(&path, "-wal"), b"not a wal").unwrap();
        fs::write(suffixed(&path, "-shm"), b"not a shm").unwrap();
        let (_conn, recovery) = open_file(&path, None).unwrap();
        let aside = recovery.moved_aside.unwrap();
        assert_eq!(fs::read(&aside).unwrap(), vec![0xA5; 8192]);
        // SQLite may discard a WAL it cannot use; whatever is left follows the file,
        // and nothing of the old one leaks into the fresh database.
        for (companion, old) in [("-wal", &b"not a wal"[..]), ("-shm", &b"not a shm"[..])] {
            if let Ok(kept) = fs::read(suffixed(&aside, companion)) {
                assert_eq!(kept, old);
            }
            let fresh = fs::read(suffixed(&path, companion)).unwrap_or_default();
            assert_ne!(fresh, old);
        }
    }

    #[test]
    fn a_directory_in_the_way_is_an_error_not_damage() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("moat.db");
        fs::create_dir(&path).unwrap();
        assert!(open_file(&path, None).is_err());
        assert!(path.is_dir(), "nothing was moved");
    }
}
