//! The `moat` command line on a manifest and a state directory (no broker running),
//! and a walk over the files such a command writes, for tests that compare trees.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use super::moat_bin;

/// Runs `moat --manifest MANIFEST --state STATE ARGS`, ignoring the caller's
/// `MOAT_MANIFEST` and `MOAT_STATE`.
pub fn run_moat(manifest: &Path, state: &Path, args: &[&str]) -> Output {
    Command::new(moat_bin())
        .arg("--manifest")
        .arg(manifest)
        .arg("--state")
        .arg(state)
        .args(args)
        .env_remove("MOAT_MANIFEST")
        .env_remove("MOAT_STATE")
        .output()
        .unwrap()
}

/// Asserts that the command succeeded and returns its stdout.
pub fn ok(output: &Output) -> String {
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "exit {:?}\nstdout:\n{stdout}\nstderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

/// One entry found by `walk`.
pub struct Entry {
    pub path: PathBuf,
    /// `path` relative to the walked directory.
    pub relative: PathBuf,
    /// Of the entry itself (links are not followed).
    pub meta: fs::Metadata,
}

/// Every entry under `dir`, directories included, at any depth.
pub fn walk(dir: &Path) -> Vec<Entry> {
    let mut entries = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(current) = stack.pop() {
        for entry in fs::read_dir(&current).unwrap() {
            let path = entry.unwrap().path();
            let meta = fs::symlink_metadata(&path).unwrap();
            if meta.is_dir() {
                stack.push(path.clone());
            }
            let relative = path.strip_prefix(dir).unwrap().to_path_buf();
            entries.push(Entry {
                path,
                relative,
                meta,
            });
        }
    }
    entries
}
