//! The database schema: connection settings, table definitions, and the version check
//! that tells a moat store from any other SQLite file. It knows nothing of recovery
//! policy (see `recover`) or of the writer thread.

use rusqlite::Connection;

/// `PRAGMA application_id`: "MOAT" in ASCII. Marks the file as ours.
pub(crate) const APPLICATION_ID: i32 = 0x4d4f_4154;

/// `PRAGMA user_version` of the schema this code writes. Bump it, and add a migration
/// step in [`prepare`], whenever a table changes.
pub(crate) const SCHEMA_VERSION: i32 = 1;

/// WAL is truncated back to this size after a checkpoint, so it cannot stay large.
const JOURNAL_SIZE_LIMIT: i64 = 4 * 1024 * 1024;

/// Tables and the columns every query relies on. Used to create the schema and to
/// verify an existing one. Small rows live in WITHOUT ROWID tables: one B-tree per
/// table, so a commit touches fewer pages (fewer bytes written to the SD card).
const TABLES: &[(&str, &str)] = &[
    (
        "meta",
        "CREATE TABLE meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID",
    ),
    (
        "retained",
        "CREATE TABLE retained (topic TEXT PRIMARY KEY, publisher TEXT NOT NULL, \
         payload BLOB NOT NULL, qos INTEGER NOT NULL, properties BLOB NOT NULL, \
         expires_at INTEGER) WITHOUT ROWID",
    ),
    (
        "sessions",
        "CREATE TABLE sessions (client_id TEXT PRIMARY KEY, owner TEXT NOT NULL, \
         expiry_secs INTEGER NOT NULL, disconnected_at INTEGER) WITHOUT ROWID",
    ),
    (
        "subscriptions",
        "CREATE TABLE subscriptions (client_id TEXT NOT NULL, filter TEXT NOT NULL, \
         options INTEGER NOT NULL, identifier INTEGER, PRIMARY KEY (client_id, filter)) \
         WITHOUT ROWID",
    ),
    (
        "queued",
        "CREATE TABLE queued (client_id TEXT NOT NULL, seq INTEGER NOT NULL, \
         topic TEXT NOT NULL, payload BLOB NOT NULL, qos INTEGER NOT NULL, \
         retain INTEGER NOT NULL, properties BLOB NOT NULL, expires_at INTEGER, \
         PRIMARY KEY (client_id, seq)) WITHOUT ROWID",
    ),
    (
        "inflight_out",
        "CREATE TABLE inflight_out (client_id TEXT NOT NULL, packet_id INTEGER NOT NULL, \
         released INTEGER NOT NULL, topic TEXT, payload BLOB, qos INTEGER, retain INTEGER, \
         properties BLOB, expires_at INTEGER, PRIMARY KEY (client_id, packet_id)) \
         WITHOUT ROWID",
    ),
    (
        "inflight_in",
        "CREATE TABLE inflight_in (client_id TEXT NOT NULL, packet_id INTEGER NOT NULL, \
         PRIMARY KEY (client_id, packet_id)) WITHOUT ROWID",
    ),
];

/// Columns each table must have, checked on an existing database.
const COLUMNS: &[(&str, &str)] = &[
    ("meta", "key, value"),
    (
        "retained",
        "topic, publisher, payload, qos, properties, expires_at",
    ),
    ("sessions", "client_id, owner, expiry_secs, disconnected_at"),
    ("subscriptions", "client_id, filter, options, identifier"),
    (
        "queued",
        "client_id, seq, topic, payload, qos, retain, properties, expires_at",
    ),
    (
        "inflight_out",
        "client_id, packet_id, released, topic, payload, qos, retain, properties, expires_at",
    ),
    ("inflight_in", "client_id, packet_id"),
];

/// Settings of the writing connection: WAL, an fsync per commit, a bounded WAL, and
/// optionally a cap on the database size (reached, it reports SQLITE_FULL).
pub(crate) fn configure_writer(
    conn: &Connection,
    max_page_count: Option<u64>,
    in_memory: bool,
) -> rusqlite::Result<()> {
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    if !in_memory {
        let mode: String =
            conn.pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(rusqlite::Error::SqliteFailure(
                rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_CANTOPEN),
                Some(format!("journal_mode stayed {mode}, WAL refused")),
            ));
        }
    }
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "journal_size_limit", JOURNAL_SIZE_LIMIT)?;
    conn.pragma_update(None, "foreign_keys", false)?;
    if let Some(pages) = max_page_count {
        let pages = i64::try_from(pages).unwrap_or(i64::MAX);
        conn.pragma_update(None, "max_page_count", pages)?;
    }
    Ok(())
}

/// Result of checking the database's schema.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum SchemaCheck {
    /// The schema is ours and current (possibly just created).
    Ready,
    /// The file is a valid SQLite database but not a moat store of a version this code
    /// understands.
    Mismatch(String),
}

/// Creates the schema in an empty database, or verifies an existing one.
pub(crate) fn prepare(conn: &mut Connection) -> rusqlite::Result<SchemaCheck> {
    let app_id: i32 = conn.pragma_query_value(None, "application_id", |row| row.get(0))?;
    let version: i32 = conn.pragma_query_value(None, "user_version", |row| row.get(0))?;
    let objects: i64 =
        conn.query_row("SELECT count(*) FROM sqlite_schema", [], |row| row.get(0))?;

    if app_id == 0 && version == 0 && objects == 0 {
        create(conn)?;
        return Ok(SchemaCheck::Ready);
    }
    if app_id != APPLICATION_ID {
        return Ok(SchemaCheck::Mismatch(format!(
            "not a moat store (application_id {app_id:#x})"
        )));
    }
    if version != SCHEMA_VERSION {
        return Ok(SchemaCheck::Mismatch(format!(
            "schema version {version}, this moat reads version {SCHEMA_VERSION}"
        )));
    }
    for (table, columns) in COLUMNS {
        if let Err(err) = conn.prepare(&format!("SELECT {columns} FROM {table} LIMIT 0")) {
            return Ok(SchemaCheck::Mismatch(format!("table {table}: {err}")));
        }
    }
    Ok(SchemaCheck::Ready)
}

fn create(conn: &mut Connection) -> rusqlite::Result<()> {
    let tx = conn.transaction()?;
    for (_, ddl) in TABLES {
        tx.execute_batch(ddl)?;
    }
    tx.pragma_update(None, "application_id", APPLICATION_ID)?;
    tx.pragma_update(None, "user_version", SCHEMA_VERSION)?;
    tx.commit()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creates_then_accepts_its_own_schema() {
        let mut conn = Connection::open_in_memory().unwrap();
        assert_eq!(prepare(&mut conn).unwrap(), SchemaCheck::Ready);
        assert_eq!(prepare(&mut conn).unwrap(), SchemaCheck::Ready);
        let version: i32 = conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .unwrap();
        assert_eq!(version, SCHEMA_VERSION);
    }

    #[test]
    fn refuses_foreign_and_future_schemas() {
        let mut foreign = Connection::open_in_memory().unwrap();
        foreign.execute_batch("CREATE TABLE t (x)").unwrap();
        assert!(matches!(
            prepare(&mut foreign).unwrap(),
            SchemaCheck::Mismatch(reason) if reason.contains("not a moat store")
        ));

        let mut future = Connection::open_in_memory().unwrap();
        prepare(&mut future).unwrap();
        future
            .pragma_update(None, "user_version", SCHEMA_VERSION + 1)
            .unwrap();
        assert!(matches!(
            prepare(&mut future).unwrap(),
            SchemaCheck::Mismatch(reason) if reason.contains("schema version")
        ));

        let mut altered = Connection::open_in_memory().unwrap();
        prepare(&mut altered).unwrap();
        altered.execute_batch("DROP TABLE queued").unwrap();
        assert!(matches!(
            prepare(&mut altered).unwrap(),
            SchemaCheck::Mismatch(reason) if reason.contains("queued")
        ));
    }
}
