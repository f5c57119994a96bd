use super::create::file_header;
use super::restore::restored_mode;
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
