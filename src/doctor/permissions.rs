//! File modes: the state directory must be 0700 (no group or other access); private
//! keys and password hashes in it (`*.key`, `devices/*/key.pem`, `hashes/*.phc`) must
//! be readable by their owner only (world-readable: FAIL; group-readable: FAIL too,
//! since nothing but moat needs them); the manifest must not be writable by others
//! (FAIL) or the group (WARN), because whoever writes it decides who gets in. Every
//! entry in the state directory must belong to the directory's owner, the user the
//! broker runs as (FAIL otherwise: a file root left there is one the broker cannot
//! read, and its next reload or start fails).

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::Finding;

const CHECK: &str = "permissions";
/// Files looked at in the state directory at most (devices included).
const MAX_FILES: usize = 10_000;

/// Whether a file in the state directory holds a secret.
pub fn is_secret(path: &Path) -> bool {
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default();
    name.ends_with(".key") || name == "key.pem" || name.ends_with(".phc")
}

/// The entries of the state directory `dir` as deep as moat's layout goes
/// (`devices/<name>/key.pem`, `hashes/*.phc`), at most `MAX_FILES`, each with its own
/// metadata: symlinks are listed, not followed. `commands::state_owner` walks the
/// same entries.
pub fn state_entries(dir: &Path) -> Vec<(PathBuf, std::fs::Metadata)> {
    let mut found = Vec::new();
    let mut pending = vec![(dir.to_path_buf(), 0u8)];
    let mut seen = 0usize;
    while let Some((current, depth)) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&current) else {
            continue;
        };
        for entry in entries.flatten() {
            seen += 1;
            if seen > MAX_FILES {
                return found;
            }
            let path = entry.path();
            // DirEntry::metadata does not follow a symlink.
            let Ok(meta) = entry.metadata() else {
                continue;
            };
            if meta.is_dir() && depth < 2 {
                pending.push((path.clone(), depth + 1));
            }
            found.push((path, meta));
        }
    }
    found.sort_by(|a, b| a.0.cmp(&b.0));
    found
}

/// A user's name, or its number when it has none here.
fn user_name(uid: u32) -> String {
    nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
        .ok()
        .flatten()
        .map_or_else(|| uid.to_string(), |user| user.name)
}

/// Whether everything in the state directory belongs to the directory's owner.
fn ownership(state_dir: &Path, entries: &[(PathBuf, std::fs::Metadata)]) -> Option<Finding> {
    let owner = std::fs::symlink_metadata(state_dir).ok()?;
    let strangers: Vec<String> = entries
        .iter()
        .filter(|(_, meta)| meta.uid() != owner.uid())
        .map(|(path, meta)| format!("{} ({})", path.display(), user_name(meta.uid())))
        .collect();
    let name = user_name(owner.uid());
    Some(if strangers.is_empty() {
        Finding::pass(
            CHECK,
            format!("everything in {} belongs to {name}", state_dir.display()),
        )
    } else {
        Finding::fail(
            CHECK,
            format!(
                "{} file(s) in {} belong to another user than {name}, who runs the broker and may not read them: {}",
                strangers.len(),
                state_dir.display(),
                strangers.join(", ")
            ),
            format!("chown -R {name}:{} {}", owner.gid(), state_dir.display()),
        )
    })
}

fn mode(path: &Path) -> Option<u32> {
    std::fs::metadata(path)
        .ok()
        .map(|m| m.permissions().mode() & 0o7777)
}

pub fn check(manifest: &Path, state_dir: &Path) -> Vec<Finding> {
    let mut findings = Vec::new();
    match mode(state_dir) {
        None => findings.push(Finding::fail(
            CHECK,
            format!("the state directory {} does not exist", state_dir.display()),
            "run `moat provision`",
        )),
        Some(m) if m & 0o077 != 0 => findings.push(Finding::fail(
            CHECK,
            format!(
                "the state directory {} is mode {m:04o}: others can reach the keys",
                state_dir.display()
            ),
            format!("chmod 700 {}", state_dir.display()),
        )),
        Some(_) => findings.push(Finding::pass(
            CHECK,
            format!(
                "the state directory {} is private (0700)",
                state_dir.display()
            ),
        )),
    }

    let entries = state_entries(state_dir);
    // Regular files only: a symlink's metadata says it is none.
    let keys: Vec<(&PathBuf, u32)> = entries
        .iter()
        .filter(|(path, meta)| meta.is_file() && is_secret(path))
        .map(|(path, meta)| (path, meta.permissions().mode() & 0o7777))
        .collect();
    let exposed: Vec<String> = keys
        .iter()
        .filter(|(_, m)| m & 0o077 != 0)
        .map(|(k, m)| format!("{} ({m:04o})", k.display()))
        .collect();
    if !exposed.is_empty() {
        let world = keys.iter().any(|(_, m)| m & 0o004 != 0);
        findings.push(Finding::fail(
            CHECK,
            format!(
                "{} private key or hash file(s) readable by {}: {}",
                exposed.len(),
                if world { "everyone" } else { "the group" },
                exposed.join(", ")
            ),
            "chmod 600 each listed file, then consider the key compromised: move it away and run `moat provision`",
        ));
    } else if !keys.is_empty() {
        findings.push(Finding::pass(
            CHECK,
            format!("{} private key and hash file(s) are owner-only", keys.len()),
        ));
    }

    match mode(manifest) {
        None => findings.push(Finding::warn(
            CHECK,
            format!("cannot read the mode of {}", manifest.display()),
            "check that the manifest path is right",
        )),
        Some(m) if m & 0o002 != 0 => findings.push(Finding::fail(
            CHECK,
            format!("the manifest {} is writable by everyone ({m:04o}): anyone can grant themselves access", manifest.display()),
            format!("chmod o-w {}", manifest.display()),
        )),
        Some(m) if m & 0o020 != 0 => findings.push(Finding::warn(
            CHECK,
            format!("the manifest {} is writable by its group ({m:04o})", manifest.display()),
            format!("chmod g-w {} unless the group is meant to administer moat", manifest.display()),
        )),
        Some(_) => findings.push(Finding::pass(
            CHECK,
            format!("the manifest {} is writable by its owner only", manifest.display()),
        )),
    }
    findings.extend(ownership(state_dir, &entries));
    findings
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::doctor::Status;

    fn chmod(path: &Path, mode: u32) {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    fn layout() -> (tempfile::TempDir, PathBuf, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        std::fs::create_dir_all(state.join("devices/cam")).unwrap();
        chmod(&state, 0o700);
        for file in [
            "ca.key",
            "server.key",
            "ca.pem",
            "devices/cam/key.pem",
            "devices/cam/cert.pem",
        ] {
            let path = state.join(file);
            std::fs::write(&path, "x").unwrap();
            chmod(&path, if is_secret(&path) { 0o600 } else { 0o644 });
        }
        let manifest = dir.path().join("moat.yaml");
        std::fs::write(&manifest, "version: 1\n").unwrap();
        chmod(&manifest, 0o644);
        (dir, state, manifest)
    }

    fn statuses(manifest: &Path, state: &Path) -> Vec<Status> {
        check(manifest, state).iter().map(|f| f.status).collect()
    }

    #[test]
    fn a_tidy_layout_passes() {
        let (_dir, state, manifest) = layout();
        let findings = check(&manifest, &state);
        assert!(
            findings.iter().all(|f| f.status == Status::Pass),
            "{findings:?}"
        );
        assert!(findings[1].message.contains("3 private key"));
    }

    #[test]
    fn a_world_readable_device_key_fails() {
        let (_dir, state, manifest) = layout();
        chmod(&state.join("devices/cam/key.pem"), 0o644);
        let findings = check(&manifest, &state);
        assert_eq!(findings[1].status, Status::Fail);
        assert!(findings[1].message.contains("everyone"));
        assert!(findings[1].message.contains("devices/cam/key.pem"));
    }

    #[test]
    fn an_open_state_dir_and_a_world_writable_manifest_fail() {
        let (_dir, state, manifest) = layout();
        chmod(&state, 0o755);
        chmod(&manifest, 0o666);
        assert_eq!(
            statuses(&manifest, &state),
            vec![Status::Fail, Status::Pass, Status::Fail, Status::Pass]
        );
        chmod(&manifest, 0o664);
        assert_eq!(statuses(&manifest, &state)[2], Status::Warn);
    }

    /// A file root left in the broker's state directory fails, with the chown that
    /// fixes it. Only root can make such a file, so elsewhere this says so and passes.
    #[test]
    fn a_file_of_another_user_in_the_state_directory_fails() {
        if !nix::unistd::Uid::effective().is_root() {
            eprintln!("skipping: only root can give a file to another user");
            return;
        }
        let (_dir, state, manifest) = layout();
        let nobody = 65534;
        std::os::unix::fs::chown(&state, Some(nobody), Some(nobody)).unwrap();
        for file in ["ca.key", "server.key", "ca.pem", "devices", "devices/cam"] {
            std::os::unix::fs::chown(state.join(file), Some(nobody), Some(nobody)).unwrap();
        }
        // devices/cam/key.pem and cert.pem stay root's, as `moat provision` as root
        // left them before commands::state_owner.
        let findings = check(&manifest, &state);
        let owned = findings.last().unwrap();
        assert_eq!(owned.status, Status::Fail, "{owned:?}");
        assert!(owned.message.starts_with("2 file(s)"), "{owned:?}");
        assert!(
            owned.message.contains("devices/cam/key.pem (root)"),
            "{owned:?}"
        );
        let fix = &owned.fix;
        assert!(
            fix.starts_with("chown -R ") && fix.ends_with(&state.display().to_string()),
            "{fix}"
        );
    }
}
