//! Reading the files an import looks at: a size cap, UTF-8, CRLF or LF line ends,
//! and the `--root` prefix for absolute paths (a copy of the Home Assistant add-on's
//! `/etc/mosquitto` taken out of its container). Every line keeps its origin
//! (`file:line`) so the report and the errors can point at it. It knows no syntax.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::ImportError;

/// The largest file an import reads (a real `mosquitto.conf` or ACL is a few KiB).
pub const MAX_FILE_BYTES: u64 = 4 * 1024 * 1024;

/// Where a line came from: `file:line` (1-based).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Origin {
    pub file: PathBuf,
    pub line: usize,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Line 0: an item of a structured file (`options.json/logins[0]`), not a line.
        if self.line == 0 {
            write!(f, "{}", self.file.display())
        } else {
            write!(f, "{}:{}", self.file.display(), self.line)
        }
    }
}

/// One meaningful line: not blank, not a `#` comment, trimmed, with its origin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    pub origin: Origin,
    pub text: String,
}

/// Maps paths written in mosquitto's files to files on this machine.
#[derive(Debug, Clone, Default)]
pub struct Paths {
    /// Absolute paths are read under this directory (`--root`).
    pub root: Option<PathBuf>,
}

impl Paths {
    /// Resolves `written` (as it appears at `origin`). Absolute paths go under the
    /// root, if any; relative ones are taken from the directory of the file that names
    /// them (mosquitto itself uses its working directory, which an import cannot know).
    pub fn resolve(&self, written: &str, origin: &Origin) -> PathBuf {
        let path = Path::new(written);
        if path.is_absolute() {
            match &self.root {
                Some(root) => root.join(path.strip_prefix("/").unwrap_or(path)),
                None => path.to_path_buf(),
            }
        } else {
            origin
                .file
                .parent()
                .map_or_else(|| path.to_path_buf(), |dir| dir.join(path))
        }
    }
}

/// Reads `path` (named at `at`, if another file named it) into its meaningful lines.
/// `what` says what the file is for, in errors.
pub fn read_lines(
    path: &Path,
    what: &'static str,
    at: Option<&Origin>,
) -> Result<Vec<Line>, ImportError> {
    let text = read_text(path, what, at)?;
    Ok(lines_of(path, &text))
}

/// Reads a whole file with the size cap, as UTF-8.
pub fn read_text(
    path: &Path,
    what: &'static str,
    at: Option<&Origin>,
) -> Result<String, ImportError> {
    let fail = |message: String| ImportError::Read {
        at: at.cloned(),
        what,
        path: path.to_path_buf(),
        message,
    };
    let meta = std::fs::metadata(path).map_err(|e| fail(e.to_string()))?;
    if !meta.is_file() {
        return Err(fail("not a regular file".into()));
    }
    if meta.len() > MAX_FILE_BYTES {
        return Err(fail(format!(
            "{} bytes is more than the {MAX_FILE_BYTES} an import reads",
            meta.len()
        )));
    }
    let bytes = std::fs::read(path).map_err(|e| fail(e.to_string()))?;
    String::from_utf8(bytes).map_err(|e| fail(format!("not UTF-8 ({e})")))
}

/// Splits text into meaningful lines: CRLF and LF both end a line, surrounding
/// whitespace is dropped, and blank lines and `#` comments are skipped (mosquitto
/// treats `#` as a comment only at the start of a line, as here).
pub fn lines_of(path: &Path, text: &str) -> Vec<Line> {
    text.split('\n')
        .enumerate()
        .filter_map(|(i, raw)| {
            let trimmed = raw.trim_end_matches('\r').trim();
            (!trimmed.is_empty() && !trimmed.starts_with('#')).then(|| Line {
                origin: Origin {
                    file: path.to_path_buf(),
                    line: i + 1,
                },
                text: trimmed.to_string(),
            })
        })
        .collect()
}

/// Splits a line into its first word and the trimmed rest.
pub fn split_key(text: &str) -> (&str, &str) {
    match text.split_once(|c: char| c.is_ascii_whitespace()) {
        Some((key, rest)) => (key, rest.trim()),
        None => (text, ""),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_skip_comments_and_blanks_and_accept_crlf() {
        let lines = lines_of(
            Path::new("x.conf"),
            "# comment\r\n\r\n  listener 1883  \r\n\t# indented comment\nport 1884",
        );
        let texts: Vec<(&str, usize)> = lines
            .iter()
            .map(|l| (l.text.as_str(), l.origin.line))
            .collect();
        assert_eq!(texts, vec![("listener 1883", 3), ("port 1884", 5)]);
        assert_eq!(lines[0].origin.to_string(), "x.conf:3");
    }

    #[test]
    fn paths_resolve_under_root_and_next_to_the_naming_file() {
        let origin = Origin {
            file: PathBuf::from("/copy/etc/mosquitto/mosquitto.conf"),
            line: 1,
        };
        let plain = Paths::default();
        assert_eq!(plain.resolve("/etc/pw", &origin), PathBuf::from("/etc/pw"));
        assert_eq!(
            plain.resolve("acl", &origin),
            PathBuf::from("/copy/etc/mosquitto/acl")
        );
        let rooted = Paths {
            root: Some(PathBuf::from("/copy")),
        };
        assert_eq!(
            rooted.resolve("/etc/mosquitto/pw", &origin),
            PathBuf::from("/copy/etc/mosquitto/pw")
        );
    }

    #[test]
    fn oversized_binary_and_odd_files_are_refused_with_the_naming_line() {
        let dir = tempfile::tempdir().unwrap();
        let at = Origin {
            file: PathBuf::from("mosquitto.conf"),
            line: 7,
        };
        let big = dir.path().join("big");
        std::fs::File::create(&big)
            .unwrap()
            .set_len(MAX_FILE_BYTES + 1)
            .unwrap();
        let binary = dir.path().join("binary");
        std::fs::write(&binary, b"user \xff\xfe\n").unwrap();
        for (path, needle) in [
            (big.as_path(), "more than"),
            (binary.as_path(), "not UTF-8"),
            (dir.path(), "not a regular file"),
        ] {
            let err = read_lines(path, "acl_file", Some(&at))
                .unwrap_err()
                .to_string();
            assert!(
                err.starts_with("mosquitto.conf:7: cannot read acl_file"),
                "{err}"
            );
            assert!(err.contains(needle), "{err}");
        }
    }

    #[test]
    fn keys_split_from_their_rest() {
        assert_eq!(split_key("acl_file  /a b/c "), ("acl_file", "/a b/c"));
        assert_eq!(split_key("user"), ("user", ""));
    }
}
