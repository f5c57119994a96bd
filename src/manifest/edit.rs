//! In-place text edits of a manifest that keep its comments and layout: today, setting
//! one identity's password hash. It works on lines, not on a re-serialised document,
//! and handles block-style identities (`name:` followed by indented fields); anything
//! else is refused with a message rather than rewritten. Callers re-load the result.

/// Why an edit could not be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EditError {
    #[error("no user or device named {0:?} in the manifest")]
    NotFound(String),
    #[error(
        "{0:?} is written in flow style ({{ ... }}) on one line; rewrite it as an indented block to edit it automatically"
    )]
    FlowStyle(String),
    #[error("{name:?}: the {field} value spans several lines; edit it by hand")]
    MultiLine { name: String, field: String },
}

const CREDENTIAL_KEYS: &[&str] = &["password_hash", "password_file", "password"];

struct Line<'a> {
    /// The text without its line ending.
    body: &'a str,
    /// `\n`, `\r\n` or empty (last line).
    ending: &'a str,
}

impl Line<'_> {
    fn indent(&self) -> usize {
        self.body.len() - self.body.trim_start_matches(' ').len()
    }
    /// Blank or comment-only lines carry no structure.
    fn is_structural(&self) -> bool {
        let t = self.body.trim_start();
        !(t.is_empty() || t.starts_with('#'))
    }
    /// The mapping key this line starts with, unquoted, and the rest after `:`.
    fn key(&self) -> Option<(String, &str)> {
        let t = self.body.trim_start();
        if let Some(quote) = t.chars().next().filter(|c| *c == '"' || *c == '\'') {
            let rest = &t[1..];
            let end = rest.find(quote)?;
            let after = rest[end + 1..].trim_start();
            let value = after.strip_prefix(':')?;
            return Some((rest[..end].to_string(), value));
        }
        let mut search = 0;
        while let Some(pos) = t[search..].find(':') {
            let at = search + pos;
            let next = t[at + 1..].chars().next();
            if next.is_none() || next == Some(' ') || next == Some('\t') {
                return Some((t[..at].trim_end().to_string(), &t[at + 1..]));
            }
            search = at + 1;
        }
        None
    }
}

fn split_lines(text: &str) -> Vec<Line<'_>> {
    text.split_inclusive('\n')
        .map(|raw| {
            let body = raw
                .strip_suffix("\r\n")
                .or_else(|| raw.strip_suffix('\n'))
                .unwrap_or(raw);
            Line {
                body,
                ending: &raw[body.len()..],
            }
        })
        .collect()
}

/// Returns `text` with `name`'s credential set to `password_hash: "<hash>"`. An
/// existing `password_hash:`, `password_file:` or `password:` line is replaced in
/// place (the others are removed); otherwise the line is added as the identity's
/// first field. Everything else is left byte for byte.
pub fn set_password_hash(text: &str, name: &str, hash: &str) -> Result<String, EditError> {
    let lines = split_lines(text);
    let (name_index, name_indent) = find_identity(&lines, name)?;
    let (_, rest) = lines[name_index]
        .key()
        .ok_or_else(|| EditError::NotFound(name.to_string()))?;
    let rest = strip_comment(rest).trim();
    if !rest.is_empty() {
        return Err(EditError::FlowStyle(name.to_string()));
    }
    // The identity's block: every following line indented deeper than its name.
    let mut end = name_index + 1;
    let mut field_indent = None;
    while end < lines.len() {
        let line = &lines[end];
        if line.is_structural() {
            if line.indent() <= name_indent {
                break;
            }
            field_indent.get_or_insert(line.indent());
        }
        end += 1;
    }
    let field_indent = field_indent.unwrap_or(name_indent + 2);
    let new_body = format!("{}password_hash: \"{hash}\"", " ".repeat(field_indent));
    let mut out: Vec<String> = Vec::with_capacity(lines.len() + 1);
    let mut replaced = false;
    for (i, line) in lines.iter().enumerate() {
        let in_block = i > name_index && i < end;
        let credential = in_block
            && line.is_structural()
            && line.indent() == field_indent
            && line
                .key()
                .is_some_and(|(k, _)| CREDENTIAL_KEYS.contains(&k.as_str()));
        if credential {
            let (key, value) = line.key().unwrap_or_default();
            let value = strip_comment(value).trim();
            if value.is_empty() || value.starts_with('|') || value.starts_with('>') {
                return Err(EditError::MultiLine {
                    name: name.to_string(),
                    field: key,
                });
            }
            if !replaced {
                out.push(format!("{new_body}{}", line.ending));
                replaced = true;
            }
            continue;
        }
        out.push(format!("{}{}", line.body, line.ending));
        if i == name_index && !replaced && !has_credential_line(&lines, i + 1, end, field_indent) {
            let ending = if line.ending.is_empty() {
                "\n"
            } else {
                line.ending
            };
            if line.ending.is_empty() {
                // The name was the file's last line without a newline.
                if let Some(last) = out.last_mut() {
                    last.push('\n');
                }
                out.push(new_body.clone());
            } else {
                out.push(format!("{new_body}{ending}"));
            }
            replaced = true;
        }
    }
    Ok(out.concat())
}

fn has_credential_line(lines: &[Line<'_>], start: usize, end: usize, indent: usize) -> bool {
    lines[start..end].iter().any(|l| {
        l.is_structural()
            && l.indent() == indent
            && l.key()
                .is_some_and(|(k, _)| CREDENTIAL_KEYS.contains(&k.as_str()))
    })
}

/// Drops a trailing ` # comment` from a plain value (quotes are respected).
fn strip_comment(value: &str) -> &str {
    let mut quote = None;
    let mut prev = ' ';
    for (i, c) in value.char_indices() {
        match (quote, c) {
            (None, '"' | '\'') => quote = Some(c),
            (Some(q), c) if c == q => quote = None,
            (None, '#') if prev == ' ' || prev == '\t' => return &value[..i],
            _ => {}
        }
        prev = c;
    }
    value
}

/// Finds `name:` directly under a top-level `users:` or `devices:`.
fn find_identity(lines: &[Line<'_>], name: &str) -> Result<(usize, usize), EditError> {
    let mut section = false;
    let mut child_indent = None;
    for (i, line) in lines.iter().enumerate() {
        if !line.is_structural() || line.body.trim_start().starts_with("---") {
            continue;
        }
        if line.indent() == 0 {
            section = matches!(line.key(), Some((k, _)) if k == "users" || k == "devices");
            child_indent = None;
            continue;
        }
        if !section {
            continue;
        }
        let indent = *child_indent.get_or_insert(line.indent());
        if line.indent() == indent && line.key().is_some_and(|(k, _)| k == name) {
            return Ok((i, indent));
        }
    }
    Err(EditError::NotFound(name.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "version: 1\n# people\nusers:\n  # the hub\n  homeassistant:\n    role: homeassistant   # preset\n    password_hash: \"$argon2id$old\"  # old\n  bob:\n    publish: [\"a/#\"]\n\ndevices:\n  plug:\n    password: hunter2\n    role: tasmota\n    password_file: /x\n";

    #[test]
    fn replaces_an_existing_hash_and_keeps_everything_else() {
        let out = set_password_hash(TEXT, "homeassistant", "$argon2id$new").unwrap();
        assert_eq!(
            out,
            TEXT.replace(
                "    password_hash: \"$argon2id$old\"  # old\n",
                "    password_hash: \"$argon2id$new\"\n"
            )
        );
    }

    #[test]
    fn inserts_a_hash_where_none_was() {
        let out = set_password_hash(TEXT, "bob", "$argon2id$new").unwrap();
        assert!(
            out.contains("  bob:\n    password_hash: \"$argon2id$new\"\n    publish: [\"a/#\"]\n")
        );
    }

    #[test]
    fn replaces_plaintext_and_drops_other_credentials() {
        let out = set_password_hash(TEXT, "plug", "$argon2id$new").unwrap();
        assert!(
            out.ends_with("  plug:\n    password_hash: \"$argon2id$new\"\n    role: tasmota\n")
        );
    }

    #[test]
    fn refuses_unknown_and_flow_style() {
        assert_eq!(
            set_password_hash(TEXT, "nobody", "h"),
            Err(EditError::NotFound("nobody".into()))
        );
        let flow = "users:\n  bob: { role: observer }\n";
        assert!(matches!(
            set_password_hash(flow, "bob", "h"),
            Err(EditError::FlowStyle(_))
        ));
        // A role of the same name is not an identity.
        assert!(set_password_hash("roles:\n  bob:\n    publish: []\n", "bob", "h").is_err());
    }

    #[test]
    fn handles_crlf_and_a_missing_final_newline() {
        let out = set_password_hash("users:\r\n  bob:", "bob", "H").unwrap();
        assert_eq!(out, "users:\r\n  bob:\n    password_hash: \"H\"");
        let out =
            set_password_hash("users:\r\n  bob:\r\n    role: observer\r\n", "bob", "H").unwrap();
        assert_eq!(
            out,
            "users:\r\n  bob:\r\n    password_hash: \"H\"\r\n    role: observer\r\n"
        );
    }
}

/// Writes `text` to `path` atomically: a temporary file in the same directory, synced,
/// then renamed over `path`. An existing file's permission bits, owner and group are
/// kept; a new file is created 0600 (a manifest holds password hashes).
///
/// The owner matters on the appliance: the manifest in `/var/lib/moat` belongs to
/// `moat`, and root editing it over SSH (`moat passwd NAME --write`) must not leave
/// a root-owned file the broker and its firewall unit can no longer read.
pub fn write_atomically(path: &std::path::Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};

    let existing = match std::fs::metadata(path) {
        Ok(meta) => Some(meta),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(e),
    };
    let mode = existing
        .as_ref()
        .map_or(0o600, |meta| meta.permissions().mode() & 0o7777);
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => std::path::PathBuf::from("."),
    };
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "manifest".to_string());
    let tmp = dir.join(format!(".{file_name}.moat-tmp-{}", std::process::id()));
    let result = (|| {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        if let Some(meta) = &existing {
            keep_owner(&file, meta.uid(), meta.gid(), path)?;
        }
        // `mode` is filtered by the umask on creation (and a change of owner may
        // clear set-ID bits); set it exactly.
        file.set_permissions(std::fs::Permissions::from_mode(mode))?;
        file.write_all(text.as_bytes())?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)?;
        std::fs::File::open(&dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Gives the new `file` the owner and group `path` had, when they are not ours and
/// we are root. Only root can give a file away; and `serve` never tries, since the
/// NixOS unit's SystemCallFilter= (which removes @chown) would kill it for the call.
fn keep_owner(
    file: &std::fs::File,
    uid: u32,
    gid: u32,
    path: &std::path::Path,
) -> std::io::Result<()> {
    if !nix::unistd::Uid::effective().is_root()
        || (uid, gid) == (0, nix::unistd::Gid::effective().as_raw())
    {
        return Ok(());
    }
    std::os::unix::fs::fchown(file, Some(uid), Some(gid)).map_err(|e| {
        std::io::Error::new(
            e.kind(),
            format!(
                "cannot keep the owner of {} (uid {uid}, gid {gid}): {e}",
                path.display()
            ),
        )
    })
}

#[cfg(test)]
mod write_tests {
    use super::write_atomically;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn keeps_the_mode_of_an_existing_file_and_creates_new_ones_private() {
        let dir = tempfile::tempdir().unwrap();
        let fresh = dir.path().join("new.yaml");
        write_atomically(&fresh, "a: 1\n").unwrap();
        let mode = std::fs::metadata(&fresh).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let existing = dir.path().join("old.yaml");
        std::fs::write(&existing, "x").unwrap();
        std::fs::set_permissions(&existing, std::fs::Permissions::from_mode(0o640)).unwrap();
        write_atomically(&existing, "b: 2\n").unwrap();
        assert_eq!(std::fs::read_to_string(&existing).unwrap(), "b: 2\n");
        let mode = std::fs::metadata(&existing).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o640);
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            2,
            "no temp file left"
        );
    }

    /// Root editing the broker's manifest (`moat passwd --write` over SSH) leaves it
    /// the broker's. Only root can give a file away, so elsewhere this says so and
    /// passes; tests/systemd_units.rs checks the same on the appliance's units.
    #[test]
    fn keeps_the_owner_of_an_existing_file_when_root_rewrites_it() {
        use std::os::unix::fs::MetadataExt;
        if !nix::unistd::Uid::effective().is_root() {
            eprintln!("skipping: only root can give a file to another user");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let manifest = dir.path().join("moat.yaml");
        std::fs::write(&manifest, "a: 1\n").unwrap();
        std::fs::set_permissions(&manifest, std::fs::Permissions::from_mode(0o600)).unwrap();
        let nobody = 65534;
        std::os::unix::fs::chown(&manifest, Some(nobody), Some(nobody)).unwrap();
        write_atomically(&manifest, "b: 2\n").unwrap();
        let meta = std::fs::metadata(&manifest).unwrap();
        assert_eq!((meta.uid(), meta.gid()), (nobody, nobody));
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        assert_eq!(std::fs::read_to_string(&manifest).unwrap(), "b: 2\n");
    }
}
