//! Persistence health: the database file (`broker.persistence.path`, default
//! `<state>/moat.db`) exists, is readable and starts with the SQLite header; databases
//! the store moved aside as damaged (`<file>.damaged-*` next to it) are reported with
//! their paths, because what they held is no longer served.

use std::io::Read as _;
use std::path::{Path, PathBuf};

use super::Finding;
use crate::policy::Policy;

const CHECK: &str = "persistence";
const SQLITE_HEADER: &[u8; 16] = b"SQLite format 3\0";
/// Directory entries looked at for damaged copies at most.
const MAX_ENTRIES: usize = 10_000;

/// Where the database lives.
pub fn database_path(policy: &Policy, state_dir: &Path) -> PathBuf {
    policy
        .persistence
        .path
        .clone()
        .unwrap_or_else(|| state_dir.join("moat.db"))
}

/// Files named `<database>.damaged-*` next to the database.
pub fn damaged_copies(database: &Path) -> Vec<PathBuf> {
    let (Some(dir), Some(name)) = (
        database.parent(),
        database.file_name().and_then(|n| n.to_str()),
    ) else {
        return Vec::new();
    };
    let prefix = format!("{name}.damaged-");
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut found: Vec<PathBuf> = entries
        .take(MAX_ENTRIES)
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_str()
                .is_some_and(|n| n.starts_with(&prefix))
        })
        .map(|e| e.path())
        .collect();
    found.sort();
    found
}

pub fn check(policy: &Policy, state_dir: &Path) -> Vec<Finding> {
    let database = database_path(policy, state_dir);
    let mut findings = Vec::new();
    let mut header = [0u8; 16];
    match std::fs::File::open(&database).and_then(|mut f| f.read_exact(&mut header)) {
        Ok(()) if &header == SQLITE_HEADER => findings.push(Finding::pass(
            CHECK,
            format!("the database {} is readable", database.display()),
        )),
        Ok(()) => findings.push(Finding::fail(
            CHECK,
            format!("{} is not an SQLite database", database.display()),
            "stop moat, move the file aside, start moat (it creates a new one)",
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => findings.push(Finding::warn(
            CHECK,
            format!(
                "no database at {} yet: retained and queued messages are not being kept",
                database.display()
            ),
            "start the broker once (`moat serve`); it creates the database",
        )),
        Err(e) => findings.push(Finding::fail(
            CHECK,
            format!("cannot read the database {}: {e}", database.display()),
            "check its owner and mode (the moat user must read and write it)",
        )),
    }
    let damaged = damaged_copies(&database);
    if !damaged.is_empty() {
        let list: Vec<String> = damaged.iter().map(|p| p.display().to_string()).collect();
        findings.push(Finding::warn(
            CHECK,
            format!("damaged database(s) were moved aside: {}", list.join(", ")),
            "inspect them (sqlite3 FILE 'PRAGMA integrity_check'), then delete them; check the SD card's health",
        ));
    }
    findings
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::doctor::Status;
    use crate::manifest::{LoadOptions, parse_str};

    fn policy(path: &Path) -> Policy {
        let text = format!(
            "version: 1\nbroker:\n  persistence: {{ path: \"{}\" }}\n",
            path.display()
        );
        let loaded = parse_str(&text, "t.yaml", LoadOptions::default()).unwrap();
        Policy::compile(&loaded.manifest).unwrap()
    }

    #[test]
    fn missing_warns_garbage_fails_sqlite_passes() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("moat.db");
        let p = policy(&db);
        assert_eq!(check(&p, dir.path())[0].status, Status::Warn);
        std::fs::write(&db, b"not a database at all, no").unwrap();
        assert_eq!(check(&p, dir.path())[0].status, Status::Fail);
        std::fs::remove_file(&db).unwrap();
        let conn = rusqlite::Connection::open(&db).unwrap();
        conn.execute_batch("CREATE TABLE t (x INTEGER);").unwrap();
        drop(conn);
        let findings = check(&p, dir.path());
        assert_eq!(findings.len(), 1);
        assert_eq!(findings[0].status, Status::Pass);
    }

    #[test]
    fn damaged_copies_are_listed() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("moat.db");
        std::fs::write(dir.path().join("moat.db.damaged-1700000000"), b"x").unwrap();
        std::fs::write(dir.path().join("other.db.damaged-1"), b"x").unwrap();
        let findings = check(&policy(&db), dir.path());
        let warn = findings
            .iter()
            .find(|f| f.message.contains("moved aside"))
            .unwrap();
        assert_eq!(warn.status, Status::Warn);
        assert!(warn.message.contains("moat.db.damaged-1700000000"));
        assert!(!warn.message.contains("other.db"));
    }
}
