//! Reading a manifest file: size budget, UTF-8, strict YAML (serde-saphyr with strict
//! booleans, duplicate keys refused, bounded aliases and depth), then validation.
//! Every problem becomes a `Diagnostic` with a line, a column and the offending source
//! line under a caret; all validation problems are collected, not just the first.

use std::fmt;
use std::io::Read;
use std::path::Path;

use super::schema::Manifest;
use super::validate::{self, Finding, Severity};

/// The largest manifest we read. A real one is a few kilobytes.
pub const MAX_MANIFEST_BYTES: usize = 1024 * 1024;

/// How strictly to load.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LoadOptions {
    /// Accept `password:` (plaintext) values. Only the first-boot import sets this: it
    /// hashes and scrubs them before anything else reads the file.
    pub allow_plaintext_passwords: bool,
}

/// One located problem in a manifest, rendered with its source line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    /// 1-based line.
    pub line: u64,
    /// 1-based column (in characters).
    pub column: u64,
    /// What is wrong, in one sentence.
    pub message: String,
    /// `error: line L column C: ...` followed by the snippet.
    pub rendered: String,
}

/// A problem that does not stop loading (an imported hash, an unused listener ...).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Warning {
    pub line: u64,
    pub column: u64,
    pub message: String,
}

impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "warning: line {} column {}: {}",
            self.line, self.column, self.message
        )
    }
}

/// Why a manifest could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// The file could not be read at all.
    #[error("cannot read manifest {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// The file was read but is not a valid manifest; every problem is listed.
    #[error("{}", render_invalid(.path, .diagnostics))]
    Invalid {
        path: String,
        diagnostics: Vec<Diagnostic>,
    },
}

impl ManifestError {
    /// The located problems (empty for an I/O error).
    pub fn diagnostics(&self) -> &[Diagnostic] {
        match self {
            ManifestError::Io { .. } => &[],
            ManifestError::Invalid { diagnostics, .. } => diagnostics,
        }
    }
}

fn render_invalid(path: &str, diagnostics: &[Diagnostic]) -> String {
    let mut out = String::new();
    for d in diagnostics {
        out.push_str(&d.rendered);
        out.push('\n');
    }
    let n = diagnostics.len();
    out.push_str(&format!(
        "{path}: {n} error{} in the manifest",
        if n == 1 { "" } else { "s" }
    ));
    out
}

/// A parsed and validated manifest, with its non-fatal warnings.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub manifest: Manifest,
    pub warnings: Vec<Warning>,
}

/// Reads, parses and validates the manifest at `path` (plaintext passwords refused).
pub fn load(path: &Path) -> Result<Loaded, ManifestError> {
    load_with(path, LoadOptions::default())
}

/// Like [`load`], but accepts `password:` values; for `moat firstboot` only, which
/// hashes and scrubs them before the broker starts.
pub fn load_for_firstboot(path: &Path) -> Result<Loaded, ManifestError> {
    load_with(
        path,
        LoadOptions {
            allow_plaintext_passwords: true,
        },
    )
}

/// Reads `path` with a size cap, then [`parse_str`].
pub fn load_with(path: &Path, options: LoadOptions) -> Result<Loaded, ManifestError> {
    let text = read_text(path)?;
    parse_str(&text, &path.display().to_string(), options)
}

/// Reads a manifest's text: at most one byte over the budget (so an oversized file is
/// still reported as such by [`parse_str`]), and valid UTF-8.
pub fn read_text(path: &Path) -> Result<String, ManifestError> {
    let name = path.display().to_string();
    let bytes = read_bounded(path).map_err(|source| ManifestError::Io {
        path: name.clone(),
        source,
    })?;
    String::from_utf8(bytes).map_err(|err| {
        let valid = err.utf8_error().valid_up_to();
        let bytes = err.into_bytes();
        let prefix = String::from_utf8_lossy(&bytes[..valid]).into_owned();
        let (line, column) = line_column_at(&prefix, prefix.len());
        invalid(
            &name,
            &prefix,
            vec![(line, column, not_utf8(&bytes, valid))],
        )
    })
}

/// Why bytes are not UTF-8, and the fix: a manifest written on a PC may be saved
/// as UTF-16 (Windows Notepad's "Unicode" encodings, with their byte order mark) or
/// in a legacy code page (an `ö` as the single byte 0xF6 in Windows-1252).
fn not_utf8(bytes: &[u8], valid_up_to: usize) -> String {
    if bytes.starts_with(&[0xFF, 0xFE]) || bytes.starts_with(&[0xFE, 0xFF]) {
        return "the manifest is saved as UTF-16 (Notepad's \"Unicode\"); save it as UTF-8"
            .to_string();
    }
    match bytes.get(valid_up_to) {
        Some(byte) => format!(
            "the manifest is not valid UTF-8 (byte 0x{byte:02X}: saved in another encoding?); \
             save it as UTF-8"
        ),
        None => "the manifest is not valid UTF-8 (it ends inside a character)".to_string(),
    }
}

fn read_bounded(path: &Path) -> std::io::Result<Vec<u8>> {
    let file = std::fs::File::open(path)?;
    let mut bytes = Vec::new();
    // One byte more than allowed, so an oversized file is recognised as such.
    file.take(MAX_MANIFEST_BYTES as u64 + 1)
        .read_to_end(&mut bytes)?;
    Ok(bytes)
}

/// Parses and validates manifest text. `source_name` names the file in diagnostics.
pub fn parse_str(
    text: &str,
    source_name: &str,
    options: LoadOptions,
) -> Result<Loaded, ManifestError> {
    // A refusal found before parsing: one error at one place.
    let refuse = |(line, column): (u64, u64), message: String| {
        Err(invalid(source_name, text, vec![(line, column, message)]))
    };
    if text.len() > MAX_MANIFEST_BYTES {
        return refuse(
            line_column_at(text, floor_char_boundary(text, MAX_MANIFEST_BYTES)),
            format!(
                "the manifest is larger than the {} KiB budget",
                MAX_MANIFEST_BYTES / 1024
            ),
        );
    }
    if text.trim().is_empty() {
        return refuse(
            (1, 1),
            "the manifest is empty; it needs at least `version: 1` (run `moat init`)".to_string(),
        );
    }
    if let Some(place) = tab_in_indentation(text) {
        return refuse(
            place,
            "tab character in indentation; YAML indents with spaces only".to_string(),
        );
    }
    if let Some((place, quote)) = smart_quote(text) {
        return refuse(
            place,
            format!(
                "a typographic quote ({quote}), as a text editor's smart quotes write it; YAML \
                 keeps it in the value (a password or topic no client sends). Type straight \
                 quotes (\" or '); for the character itself, write \\u{:04X} inside \"...\"",
                u32::from(quote)
            ),
        );
    }
    let manifest = parse_yaml(text, source_name)?;
    let findings = validate::validate(&manifest, options);
    let mut errors = Vec::new();
    let mut warnings = Vec::new();
    for Finding {
        severity,
        line,
        column,
        message,
    } in findings
    {
        match severity {
            Severity::Error => errors.push((line, column, message)),
            Severity::Warning => warnings.push(Warning {
                line,
                column,
                message,
            }),
        }
    }
    if !errors.is_empty() {
        return Err(invalid(source_name, text, errors));
    }
    warnings.sort_by_key(|w| (w.line, w.column));
    Ok(Loaded { manifest, warnings })
}

fn yaml_options() -> serde_saphyr::Options {
    serde_saphyr::options! {
        strict_booleans: true,
        duplicate_keys: serde_saphyr::DuplicateKeyPolicy::Error,
        budget: serde_saphyr::budget! {
            max_reader_input_bytes: Some(MAX_MANIFEST_BYTES),
            max_depth: 24,
            max_nodes: 100_000,
            max_events: 200_000,
            max_aliases: 256,
            max_anchors: 256,
            max_documents: 1,
            max_total_scalar_bytes: MAX_MANIFEST_BYTES,
            max_merge_keys: 64,
        },
        alias_limits: serde_saphyr::alias_limits! {
            max_total_replayed_events: 10_000,
            max_replay_stack_depth: 8,
            max_alias_expansions_per_anchor: 64,
        },
    }
}

fn parse_yaml(text: &str, source_name: &str) -> Result<Manifest, ManifestError> {
    // A first pass over the whole document enforces the budget (alias bombs, depth)
    // before any typed deserialisation can stop early on an unrelated error.
    let walked: Result<serde::de::IgnoredAny, _> =
        serde_saphyr::from_str_with_options(text, yaml_options());
    let parsed = walked.and_then(|_| serde_saphyr::from_str_with_options(text, yaml_options()));
    parsed.map_err(|err| {
        let (line, column) = err
            .location()
            .map(|l| (l.line().max(1), l.column().max(1)))
            .unwrap_or((1, 1));
        let message = err.without_snippet().to_string();
        let rendered = err.render_with_options(serde_saphyr::render_options! {
            source_name: Some(source_name),
        });
        // Guarantee the `line L column C` prefix even when the library has no snippet.
        let rendered = if rendered.contains(&format!("line {line} column {column}")) {
            rendered
        } else {
            format!(
                "error: line {line} column {column}: {message}\n{}",
                snippet(source_name, text, line, column)
            )
        };
        ManifestError::Invalid {
            path: source_name.to_string(),
            diagnostics: vec![Diagnostic {
                line,
                column,
                message,
                rendered,
            }],
        }
    })
}

/// Builds an `Invalid` error from located messages, rendering each with its snippet.
pub(crate) fn invalid(
    source_name: &str,
    text: &str,
    mut errors: Vec<(u64, u64, String)>,
) -> ManifestError {
    errors.sort_by_key(|(line, column, _)| (*line, *column));
    let diagnostics = errors
        .into_iter()
        .map(|(line, column, message)| Diagnostic {
            line,
            column,
            rendered: format!(
                "error: line {line} column {column}: {message}\n{}",
                snippet(source_name, text, line, column)
            ),
            message,
        })
        .collect();
    ManifestError::Invalid {
        path: source_name.to_string(),
        diagnostics,
    }
}

/// ` --> file:L:C`, the source line and a caret under column C.
pub(crate) fn snippet(source_name: &str, text: &str, line: u64, column: u64) -> String {
    let source_line = usize::try_from(line)
        .ok()
        .and_then(|l| text.lines().nth(l.saturating_sub(1)))
        .unwrap_or("");
    // Keep a hostile very long line readable.
    let shown: String = source_line.chars().take(200).collect();
    let number = line.to_string();
    let pad = " ".repeat(number.len());
    let caret_at = usize::try_from(column.saturating_sub(1)).unwrap_or(0);
    let caret_pad: String = shown
        .chars()
        .take(caret_at)
        .map(|c| if c == '\t' { '\t' } else { ' ' })
        .collect();
    format!(
        " --> {source_name}:{line}:{column}\n{pad} |\n{number} | {shown}\n{pad} | {caret_pad}^\n"
    )
}

/// 1-based line and column (in characters) of byte offset `at`.
pub(crate) fn line_column_at(text: &str, at: usize) -> (u64, u64) {
    let before = &text[..floor_char_boundary(text, at)];
    let line = before.matches('\n').count() as u64 + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before[line_start..].chars().count() as u64 + 1;
    (line, column)
}

fn floor_char_boundary(text: &str, at: usize) -> usize {
    let mut at = at.min(text.len());
    while !text.is_char_boundary(at) {
        at -= 1;
    }
    at
}

/// The first tab found in a line's leading whitespace, as (line, column).
fn tab_in_indentation(text: &str) -> Option<(u64, u64)> {
    for (index, line) in text.lines().enumerate() {
        for (col, c) in line.chars().enumerate() {
            match c {
                ' ' => continue,
                '\t' => return Some((index as u64 + 1, col as u64 + 1)),
                _ => break,
            }
        }
    }
    None
}

/// The typographic quotes that "smart quotes" (macOS and iOS text editing, word
/// processors) put where `"` or `'` was typed.
const SMART_QUOTES: [char; 5] = ['\u{201C}', '\u{201D}', '\u{201E}', '\u{2018}', '\u{2019}'];

/// The first typographic quote outside a comment, as ((line, column), the quote).
/// YAML takes it as an ordinary character: `password: “x”` is a password with the
/// quotes in it. Comments may hold any (`# Peter’s lamp`); a `#` starts one after
/// whitespace, outside a straight-quoted scalar.
fn smart_quote(text: &str) -> Option<((u64, u64), char)> {
    for (index, line) in text.lines().enumerate() {
        let mut quoted: Option<char> = None;
        let mut previous = ' ';
        for (col, c) in line.chars().enumerate() {
            if SMART_QUOTES.contains(&c) {
                return Some(((index as u64 + 1, col as u64 + 1), c));
            }
            match (quoted, c) {
                (None, '#') if previous.is_whitespace() => break,
                (None, '"' | '\'')
                    if previous.is_whitespace() || matches!(previous, '[' | '{' | ',') =>
                {
                    quoted = Some(c)
                }
                (Some('"'), '"') if previous != '\\' => quoted = None,
                (Some('\''), '\'') => quoted = None,
                _ => {}
            }
            previous = c;
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smart_quotes_are_found_outside_comments() {
        let found = |text: &str| smart_quote(text).map(|(place, _)| place);
        assert_eq!(
            found("users:\n  a:\n    password: \u{201C}x\u{201D}\n"),
            Some((3, 15))
        );
        assert_eq!(found("publish: [\u{2018}a/#\u{2019}]\n"), Some((1, 11)));
        assert_eq!(found("a: \"it\u{2019}s\"\n"), Some((1, 7)));
        // Comments, whole-line and trailing, and a `#` inside straight quotes.
        assert_eq!(found("# Peter\u{2019}s lamp\nversion: 1\n"), None);
        assert_eq!(found("version: 1  # the hub\u{2019}s\n"), None);
        assert_eq!(found("a: \"x # y\" # \u{201C}z\u{201D}\n"), None);
        assert_eq!(found("a: 'it''s' # \u{2019}\n"), None);
        assert_eq!(found("a: \"say \\\" # \u{201C}\"\n"), Some((1, 14)));
        assert_eq!(found("version: 1\n"), None);
    }

    #[test]
    fn line_and_column_are_one_based() {
        assert_eq!(line_column_at("ab\ncd", 0), (1, 1));
        assert_eq!(line_column_at("ab\ncd", 4), (2, 2));
    }

    #[test]
    fn tabs_in_indentation_are_found() {
        assert_eq!(tab_in_indentation("a: 1\n  \tb: 2\n"), Some((2, 3)));
        assert_eq!(tab_in_indentation("a: \"x\ty\"\n"), None);
    }

    #[test]
    fn a_manifest_saved_in_another_encoding_is_named_with_the_fix() {
        let dir = tempfile::tempdir().unwrap();
        let message = |name: &str, bytes: &[u8]| {
            let path = dir.path().join(name);
            std::fs::write(&path, bytes).unwrap();
            let err = read_text(&path).unwrap_err();
            let diagnostic = &err.diagnostics()[0];
            (
                diagnostic.line,
                diagnostic.column,
                diagnostic.message.clone(),
            )
        };
        // "version: 1" as Notepad's "Unicode" (UTF-16 LE with its byte order mark).
        let utf16: Vec<u8> = [0xFF, 0xFE]
            .into_iter()
            .chain("version: 1\r\n".encode_utf16().flat_map(u16::to_le_bytes))
            .collect();
        let (line, column, text) = message("utf16.yaml", &utf16);
        assert_eq!((line, column), (1, 1));
        assert!(
            text.contains("UTF-16") && text.contains("save it as UTF-8"),
            "{text}"
        );
        // An `ö` in Windows-1252 on line 3.
        let (line, column, text) = message("latin1.yaml", b"version: 1\nusers:\n  b\xF6b: {}\n");
        assert_eq!((line, column), (3, 4));
        assert!(
            text.contains("byte 0xF6") && text.contains("save it as UTF-8"),
            "{text}"
        );
    }

    #[test]
    fn snippet_points_at_the_column() {
        let s = snippet("m.yaml", "a: 1\nbb: 2\n", 2, 5);
        assert!(s.contains("m.yaml:2:5"));
        assert!(s.contains("2 | bb: 2"));
        assert!(s.contains("  |     ^"));
    }
}
