//! Writing to the boot partition (FAT): files replaced only when their content
//! changes (temporary file, fsync, rename), the manifest scrubbed by overwriting it in
//! place, and the backup archive overwritten with zeros before it is deleted. FAT has
//! no permissions, so nothing here sets a mode. Overwriting in place makes the file
//! system reuse the same clusters instead of leaving the old ones (with plaintext
//! passwords or private keys) in free space; it is best effort, not secure erasure:
//! flash wear levelling may still keep old blocks.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::Path;

/// What a write did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CardWrite {
    Written,
    Unchanged,
}

/// Replaces `path` with `contents` unless it already holds exactly that.
pub fn write_if_changed(path: &Path, contents: &[u8]) -> io::Result<CardWrite> {
    match fs::read(path) {
        Ok(existing) if existing == contents => return Ok(CardWrite::Unchanged),
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let dir = parent(path);
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let temp = dir.join(format!(".{name}.tmp"));
    let _ = fs::remove_file(&temp);
    let written = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&temp)?;
        file.write_all(contents)?;
        file.sync_all()?;
        fs::rename(&temp, path)?;
        sync_dir(dir)
    })();
    if written.is_err() {
        let _ = fs::remove_file(&temp);
    }
    written.map(|()| CardWrite::Written)
}

/// Overwrites `path` in place with `contents`: the old bytes are written over (padded
/// with spaces where the new content is shorter), synced, then the file is cut to the
/// new length and synced again.
pub fn overwrite_in_place(path: &Path, contents: &[u8]) -> io::Result<()> {
    let mut file = OpenOptions::new().write(true).open(path)?;
    let old_len = file.metadata()?.len();
    file.write_all(contents)?;
    let new_len = contents.len() as u64;
    if new_len < old_len {
        write_filler(&mut file, old_len - new_len, b' ')?;
    }
    file.sync_all()?;
    file.set_len(new_len)?;
    file.sync_all()
}

/// Overwrites `path` with zeros over its whole length, syncs, then deletes it.
pub fn shred_and_remove(path: &Path) -> io::Result<()> {
    {
        let mut file = OpenOptions::new().write(true).open(path)?;
        let len = file.metadata()?.len();
        write_filler(&mut file, len, 0)?;
        file.sync_all()?;
    }
    fs::remove_file(path)?;
    sync_dir(parent(path))
}

fn write_filler(file: &mut File, mut remaining: u64, byte: u8) -> io::Result<()> {
    let chunk = [byte; 64 * 1024];
    while remaining > 0 {
        let n = usize::try_from(remaining.min(chunk.len() as u64)).unwrap_or(chunk.len());
        file.write_all(&chunk[..n])?;
        remaining -= n as u64;
    }
    Ok(())
}

fn parent(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_only_changed_content() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("moat-ca.pem");
        assert_eq!(write_if_changed(&path, b"a").unwrap(), CardWrite::Written);
        assert_eq!(write_if_changed(&path, b"a").unwrap(), CardWrite::Unchanged);
        assert_eq!(write_if_changed(&path, b"b").unwrap(), CardWrite::Written);
        assert_eq!(fs::read(&path).unwrap(), b"b");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn overwrites_in_place_and_shortens() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("moat.yaml");
        fs::write(&path, "password: hunter2 and more text\n").unwrap();
        overwrite_in_place(&path, b"short\n").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"short\n");
        overwrite_in_place(&path, b"a longer replacement text than before, by far\n").unwrap();
        assert_eq!(
            fs::read(&path).unwrap(),
            b"a longer replacement text than before, by far\n"
        );
    }

    #[test]
    fn shreds_and_removes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("moat-backup.tar");
        fs::write(&path, vec![7u8; 100_000]).unwrap();
        shred_and_remove(&path).unwrap();
        assert!(!path.exists());
    }
}
