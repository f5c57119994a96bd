//! A minimal POSIX ustar writer and a strict reader, just enough for moat's backup
//! archives: regular files and directories, paths up to 255 bytes (prefix + name),
//! sizes in octal. The reader accepts nothing else: no symlinks, hard links, devices,
//! pax or GNU extension headers, no absolute paths, no `.` or `..` components, no
//! entry larger than its limit, no more entries than its limit, and an archive must
//! end with its end-of-archive marker (a truncated archive is an error, not a short
//! restore). It knows bytes and paths; what the entries mean is `crate::backup`'s job.

use std::io::{self, Read, Write};
use std::path::{Component, Path, PathBuf};

const BLOCK: usize = 512;
const NAME_LEN: usize = 100;
const PREFIX_LEN: usize = 155;
/// The largest size an 11-digit octal field holds (8 GiB - 1).
const MAX_OCTAL_SIZE: u64 = 0o77777777777;

/// What an entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryKind {
    File,
    Dir,
}

/// One entry's header, as read or to be written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// Relative, normal components only (checked by the reader).
    pub path: PathBuf,
    pub kind: EntryKind,
    /// Permission bits only (`& 0o7777`).
    pub mode: u32,
    /// Data length (0 for directories).
    pub size: u64,
    /// Modification time, Unix seconds.
    pub mtime: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum TarError {
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("entry {path:?}: {reason}")]
    BadPath { path: String, reason: &'static str },
    #[error("entry {path:?} is {size} bytes, more than the {limit}-byte limit")]
    TooLarge { path: String, size: u64, limit: u64 },
    #[error("more than {0} entries")]
    TooManyEntries(usize),
    #[error("entry {path:?} has type {flag:?}; only regular files and directories are accepted")]
    UnsupportedType { path: String, flag: char },
    #[error("not a ustar archive (header {0}): {1}")]
    BadHeader(usize, &'static str),
    #[error("the archive is truncated (no end-of-archive marker)")]
    Truncated,
    #[error("entry {path:?}: the file changed size while it was archived")]
    SizeChanged { path: String },
}

/// Limits the reader enforces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadLimits {
    pub max_entries: usize,
    pub max_entry_bytes: u64,
}

/// Writes ustar entries to `inner`.
pub struct TarWriter<W: Write> {
    inner: W,
}

impl<W: Write> TarWriter<W> {
    pub fn new(inner: W) -> Self {
        TarWriter { inner }
    }

    /// Appends a directory entry.
    pub fn append_dir(&mut self, path: &Path, mode: u32, mtime: u64) -> Result<(), TarError> {
        let header = Header {
            path: path.to_path_buf(),
            kind: EntryKind::Dir,
            mode,
            size: 0,
            mtime,
        };
        self.inner.write_all(&encode_header(&header)?)?;
        Ok(())
    }

    /// Appends a file of `header.size` bytes read from `data`; fewer or more bytes
    /// than announced is an error (the file changed while it was read).
    pub fn append_file(&mut self, header: &Header, data: &mut dyn Read) -> Result<(), TarError> {
        self.inner.write_all(&encode_header(header)?)?;
        let copied = io::copy(&mut data.take(header.size), &mut self.inner)?;
        let mut probe = [0u8; 1];
        if copied != header.size || data.read(&mut probe)? != 0 {
            return Err(TarError::SizeChanged {
                path: header.path.display().to_string(),
            });
        }
        self.pad(header.size)?;
        Ok(())
    }

    /// Writes the end-of-archive marker (two zero blocks) and returns the writer.
    pub fn finish(mut self) -> Result<W, TarError> {
        self.inner.write_all(&[0u8; 2 * BLOCK])?;
        self.inner.flush()?;
        Ok(self.inner)
    }

    fn pad(&mut self, size: u64) -> io::Result<()> {
        let rest = padding(size);
        self.inner.write_all(&[0u8; BLOCK][..rest])
    }
}

fn padding(size: u64) -> usize {
    // The remainder of a division by 512 fits in usize.
    let tail = (size % BLOCK as u64) as usize;
    if tail == 0 { 0 } else { BLOCK - tail }
}

fn encode_header(header: &Header) -> Result<[u8; BLOCK], TarError> {
    let shown = header.path.display().to_string();
    let mut path = path_text(&header.path).ok_or_else(|| TarError::BadPath {
        path: shown.clone(),
        reason: "not a relative UTF-8 path of normal components",
    })?;
    if header.kind == EntryKind::Dir {
        path.push('/');
    }
    if header.size > MAX_OCTAL_SIZE {
        return Err(TarError::TooLarge {
            path: shown,
            size: header.size,
            limit: MAX_OCTAL_SIZE,
        });
    }
    let (prefix, name) = split_path(&path).ok_or(TarError::BadPath {
        path: shown,
        reason: "too long for a ustar header",
    })?;
    let mut block = [0u8; BLOCK];
    block[..name.len()].copy_from_slice(name.as_bytes());
    put_octal(&mut block[100..108], u64::from(header.mode & 0o7777));
    put_octal(&mut block[108..116], 0); // uid: restored files belong to whoever restores
    put_octal(&mut block[116..124], 0); // gid
    put_octal(&mut block[124..136], header.size);
    put_octal(&mut block[136..148], header.mtime.min(MAX_OCTAL_SIZE));
    block[156] = match header.kind {
        EntryKind::File => b'0',
        EntryKind::Dir => b'5',
    };
    block[257..263].copy_from_slice(b"ustar\0");
    block[263..265].copy_from_slice(b"00");
    block[345..345 + prefix.len()].copy_from_slice(prefix.as_bytes());
    block[148..156].fill(b' ');
    let sum: u64 = block.iter().map(|b| u64::from(*b)).sum();
    put_octal(&mut block[148..155], sum);
    block[155] = b' ';
    Ok(block)
}

/// `path` as `/`-separated text if it is relative, UTF-8 and only normal components.
fn path_text(path: &Path) -> Option<String> {
    let mut parts = Vec::new();
    for component in path.components() {
        match component {
            Component::Normal(part) => parts.push(part.to_str()?),
            _ => return None,
        }
    }
    (!parts.is_empty()).then(|| parts.join("/"))
}

/// Splits `path` into ustar (prefix, name) at a `/`, or `None` if it cannot fit.
fn split_path(path: &str) -> Option<(&str, &str)> {
    if path.len() <= NAME_LEN {
        return Some(("", path));
    }
    // Split at the first `/` that leaves a name short enough (excluding a trailing `/`
    // of a directory, which belongs to the name).
    let search = path.strip_suffix('/').unwrap_or(path);
    search
        .match_indices('/')
        .map(|(i, _)| (&path[..i], &path[i + 1..]))
        .find(|(prefix, name)| prefix.len() <= PREFIX_LEN && name.len() <= NAME_LEN)
}

/// Writes `value` as zero-padded octal followed by NUL, filling `field`.
fn put_octal(field: &mut [u8], value: u64) {
    let digits = field.len() - 1;
    let text = format!("{value:0digits$o}");
    field[..digits].copy_from_slice(&text.as_bytes()[text.len() - digits..]);
    field[digits] = 0;
}

/// Reads entries one by one; the caller copies or skips each entry's data.
pub struct TarReader<R: Read> {
    inner: R,
    limits: ReadLimits,
    entries: usize,
    /// Bytes of the current entry's data not yet consumed, and its padding.
    pending_data: u64,
    pending_padding: usize,
    headers: usize,
}

impl<R: Read> TarReader<R> {
    pub fn new(inner: R, limits: ReadLimits) -> Self {
        TarReader {
            inner,
            limits,
            entries: 0,
            pending_data: 0,
            pending_padding: 0,
            headers: 0,
        }
    }

    /// The next entry's header, or `None` at the end-of-archive marker. Unread data of
    /// the previous entry is skipped.
    pub fn next_header(&mut self) -> Result<Option<Header>, TarError> {
        self.skip_pending()?;
        let mut block = [0u8; BLOCK];
        if !read_block(&mut self.inner, &mut block)? {
            return Err(TarError::Truncated);
        }
        self.headers += 1;
        if block.iter().all(|b| *b == 0) {
            // The marker is two zero blocks; one alone means the archive was cut.
            if !read_block(&mut self.inner, &mut block)? || block.iter().any(|b| *b != 0) {
                return Err(TarError::Truncated);
            }
            return Ok(None);
        }
        self.entries += 1;
        if self.entries > self.limits.max_entries {
            return Err(TarError::TooManyEntries(self.limits.max_entries));
        }
        let header = decode_header(&block, self.headers, self.limits)?;
        self.pending_data = header.size;
        self.pending_padding = padding(header.size);
        Ok(Some(header))
    }

    /// Copies the current entry's data to `out`; returns the number of bytes.
    pub fn copy_data(&mut self, out: &mut dyn Write) -> Result<u64, TarError> {
        let want = self.pending_data;
        let copied = io::copy(&mut (&mut self.inner).take(want), out)?;
        self.pending_data -= copied;
        if copied != want {
            return Err(TarError::Truncated);
        }
        self.skip_pending()?;
        Ok(copied)
    }

    fn skip_pending(&mut self) -> Result<(), TarError> {
        let skip = self.pending_data + self.pending_padding as u64;
        if skip > 0 {
            let skipped = io::copy(&mut (&mut self.inner).take(skip), &mut io::sink())?;
            if skipped != skip {
                return Err(TarError::Truncated);
            }
        }
        self.pending_data = 0;
        self.pending_padding = 0;
        Ok(())
    }
}

/// Reads one full block; `false` at a clean end of input before the first byte.
fn read_block(reader: &mut dyn Read, block: &mut [u8; BLOCK]) -> Result<bool, TarError> {
    let mut filled = 0;
    while filled < BLOCK {
        match reader.read(&mut block[filled..]) {
            Ok(0) if filled == 0 => return Ok(false),
            Ok(0) => return Err(TarError::Truncated),
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(true)
}

fn decode_header(
    block: &[u8; BLOCK],
    index: usize,
    limits: ReadLimits,
) -> Result<Header, TarError> {
    let bad = |why| TarError::BadHeader(index, why);
    if &block[257..263] != b"ustar\0" || &block[263..265] != b"00" {
        return Err(bad("missing the POSIX ustar magic"));
    }
    let stored = parse_octal(&block[148..156]).ok_or(bad("unreadable checksum"))?;
    let mut summed = *block;
    summed[148..156].fill(b' ');
    let sum: u64 = summed.iter().map(|b| u64::from(*b)).sum();
    if sum != stored {
        return Err(bad("checksum mismatch"));
    }
    let name = field_text(&block[..100]).ok_or(bad("name is not UTF-8"))?;
    let prefix = field_text(&block[345..500]).ok_or(bad("prefix is not UTF-8"))?;
    let raw_path = if prefix.is_empty() {
        name.to_string()
    } else {
        format!("{prefix}/{name}")
    };
    let flag = block[156];
    let kind = match flag {
        b'0' | 0 => EntryKind::File,
        b'5' => EntryKind::Dir,
        other => {
            return Err(TarError::UnsupportedType {
                path: raw_path,
                flag: char::from(other),
            });
        }
    };
    let path = checked_path(&raw_path, kind)?;
    let mode = parse_octal(&block[100..108]).ok_or(bad("unreadable mode"))?;
    let size = parse_octal(&block[124..136]).ok_or(bad("unreadable size"))?;
    let mtime = parse_octal(&block[136..148]).ok_or(bad("unreadable mtime"))?;
    if kind == EntryKind::Dir && size != 0 {
        return Err(bad("a directory entry with data"));
    }
    if size > limits.max_entry_bytes {
        return Err(TarError::TooLarge {
            path: raw_path,
            size,
            limit: limits.max_entry_bytes,
        });
    }
    Ok(Header {
        path,
        kind,
        mode: u32::try_from(mode & 0o7777).unwrap_or(0),
        size,
        mtime,
    })
}

/// A header text field up to its first NUL.
fn field_text(field: &[u8]) -> Option<&str> {
    let end = field.iter().position(|b| *b == 0).unwrap_or(field.len());
    std::str::from_utf8(&field[..end]).ok()
}

/// Octal digits, optionally surrounded by spaces and ended by NUL or space.
fn parse_octal(field: &[u8]) -> Option<u64> {
    let text = field_text(field)?.trim_matches(' ');
    if text.is_empty() || text.len() > 12 || !text.bytes().all(|b| (b'0'..=b'7').contains(&b)) {
        return None;
    }
    u64::from_str_radix(text, 8).ok()
}

/// The entry path if it is relative and made only of normal components.
fn checked_path(raw: &str, kind: EntryKind) -> Result<PathBuf, TarError> {
    let bad = |reason| TarError::BadPath {
        path: raw.to_string(),
        reason,
    };
    let text = match kind {
        EntryKind::Dir => raw.strip_suffix('/').unwrap_or(raw),
        EntryKind::File => raw,
    };
    if text.is_empty() {
        return Err(bad("empty path"));
    }
    if text.starts_with('/') {
        return Err(bad("absolute path"));
    }
    if text.contains('\\') {
        return Err(bad("backslash in path"));
    }
    let mut path = PathBuf::new();
    for part in text.split('/') {
        match part {
            "" => return Err(bad("empty path component")),
            "." | ".." => return Err(bad("`.` or `..` component")),
            normal => path.push(normal),
        }
    }
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: ReadLimits = ReadLimits {
        max_entries: 16,
        max_entry_bytes: 4096,
    };

    fn file(path: &str, data: &[u8]) -> (Header, Vec<u8>) {
        (
            Header {
                path: PathBuf::from(path),
                kind: EntryKind::File,
                mode: 0o600,
                size: data.len() as u64,
                mtime: 1_700_000_000,
            },
            data.to_vec(),
        )
    }

    fn archive(files: &[(Header, Vec<u8>)]) -> Vec<u8> {
        let mut writer = TarWriter::new(Vec::new());
        writer.append_dir(Path::new("state"), 0o700, 5).unwrap();
        for (header, data) in files {
            writer.append_file(header, &mut data.as_slice()).unwrap();
        }
        writer.finish().unwrap()
    }

    fn read_all(bytes: &[u8]) -> Result<Vec<(Header, Vec<u8>)>, TarError> {
        let mut reader = TarReader::new(bytes, LIMITS);
        let mut out = Vec::new();
        while let Some(header) = reader.next_header()? {
            let mut data = Vec::new();
            reader.copy_data(&mut data)?;
            out.push((header, data));
        }
        Ok(out)
    }

    #[test]
    fn round_trips_files_dirs_and_long_paths() {
        let long = format!("state/{}/{}", "d".repeat(120), "f".repeat(90));
        let files = vec![
            file("state/ca.pem", b"cert"),
            file("state/empty", b""),
            file(&long, &[7u8; 1000]),
        ];
        let bytes = archive(&files);
        assert_eq!(bytes.len() % BLOCK, 0);
        let read = read_all(&bytes).unwrap();
        assert_eq!(read[0].0.kind, EntryKind::Dir);
        assert_eq!(read[0].0.path, PathBuf::from("state"));
        assert_eq!(read[0].0.mode, 0o700);
        assert_eq!(&read[1..], &files[..]);
    }

    #[test]
    fn system_tar_reads_what_we_write() {
        let Ok(out) = std::process::Command::new("tar").arg("--version").output() else {
            return; // no tar on this machine: the round trip above still holds
        };
        assert!(out.status.success());
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.tar");
        std::fs::write(&path, archive(&[file("state/x/y.txt", b"hello")])).unwrap();
        let listing = std::process::Command::new("tar")
            .arg("-tvf")
            .arg(&path)
            .output()
            .unwrap();
        assert!(listing.status.success(), "{listing:?}");
        let text = String::from_utf8_lossy(&listing.stdout);
        assert!(text.contains("state/x/y.txt"), "{text}");
    }

    #[test]
    fn rejects_traversal_absolute_and_links() {
        for bad in ["../evil", "state/../../evil", "/etc/passwd", "a//b", "./x"] {
            let mut block = encode_header(&file("placeholder", b"").0).unwrap();
            block[..100].fill(0);
            block[..bad.len()].copy_from_slice(bad.as_bytes());
            fix_checksum(&mut block);
            let mut bytes = block.to_vec();
            bytes.extend_from_slice(&[0u8; 1024]);
            assert!(
                matches!(read_all(&bytes), Err(TarError::BadPath { .. })),
                "{bad}"
            );
        }
        let mut block = encode_header(&file("link", b"").0).unwrap();
        block[156] = b'2';
        fix_checksum(&mut block);
        let mut bytes = block.to_vec();
        bytes.extend_from_slice(&[0u8; 1024]);
        assert!(matches!(
            read_all(&bytes),
            Err(TarError::UnsupportedType { flag: '2', .. })
        ));
    }

    #[test]
    fn rejects_oversized_truncated_and_corrupt_archives() {
        let big = archive(&[file("state/big", &[0u8; 5000])]);
        assert!(matches!(read_all(&big), Err(TarError::TooLarge { .. })));
        let good = archive(&[file("state/a", b"abc")]);
        for cut in [good.len() - 1024, good.len() - 512, 700, 100] {
            assert!(
                matches!(read_all(&good[..cut]), Err(TarError::Truncated)),
                "cut at {cut}"
            );
        }
        let mut corrupt = good.clone();
        corrupt[BLOCK + 5] ^= 1;
        assert!(matches!(
            read_all(&corrupt),
            Err(TarError::BadHeader(_, "checksum mismatch"))
        ));
        let many: Vec<_> = (0..20).map(|i| file(&format!("f{i}"), b"x")).collect();
        assert!(matches!(
            read_all(&archive(&many)),
            Err(TarError::TooManyEntries(16))
        ));
    }

    #[test]
    fn writer_refuses_bad_paths_and_short_reads() {
        let mut writer = TarWriter::new(Vec::new());
        let (mut header, _) = file("../x", b"");
        assert!(matches!(
            writer.append_file(&header, &mut &b""[..]),
            Err(TarError::BadPath { .. })
        ));
        header.path = PathBuf::from("ok");
        header.size = 10;
        assert!(matches!(
            writer.append_file(&header, &mut &b"short"[..]),
            Err(TarError::SizeChanged { .. })
        ));
    }

    fn fix_checksum(block: &mut [u8; BLOCK]) {
        block[148..156].fill(b' ');
        let sum: u64 = block.iter().map(|b| u64::from(*b)).sum();
        put_octal(&mut block[148..155], sum);
        block[155] = b' ';
    }
}
