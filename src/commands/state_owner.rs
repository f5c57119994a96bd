//! Files a command run as root leaves in someone else's state directory go to that
//! directory's owner. On the appliance `/var/lib/moat` belongs to `moat`, and an
//! admin's `moat provision` over SSH as root must not leave a key or a certificate
//! that the broker and its firewall unit, both running as `moat`, cannot read. Only
//! entries owned by root change hands, symlinks are not followed, and only in a
//! directory that holds moat's CA (`ca.pem`), as deep as moat's layout goes (the
//! walk `moat doctor`'s permission check makes): a mistyped `--state` (a home
//! directory, say) is left alone. This is the CLI edge: it knows nothing else of
//! what the files are.

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use crate::doctor::permissions::state_entries;
use crate::pki::CA_CERT;

/// When running as root and `state` belongs to another user, gives every root-owned
/// entry under it to that user and group. Returns what could not be given, as
/// warnings with the fix; nothing when there was nothing to do.
pub fn give_back(state: &Path) -> Vec<String> {
    if !nix::unistd::Uid::effective().is_root() {
        return Vec::new();
    }
    let Ok(meta) = std::fs::symlink_metadata(state) else {
        return Vec::new();
    };
    if !meta.is_dir() || meta.uid() == 0 || !state.join(CA_CERT).is_file() {
        return Vec::new();
    }
    let (uid, gid) = (meta.uid(), meta.gid());
    let mut warnings = Vec::new();
    for (path, entry) in state_entries(state) {
        if entry.uid() == 0
            && let Err(e) = std::os::unix::fs::lchown(&path, Some(uid), Some(gid))
        {
            warnings.push(format!("cannot give {} to uid {uid}: {e}", path.display()));
        }
    }
    if !warnings.is_empty() {
        warnings.push(format!(
            "the broker runs as uid {uid} and may not read these: chown -R {uid}:{gid} {}",
            state.display()
        ));
    }
    warnings
}

#[cfg(test)]
mod tests {
    use super::give_back;
    use std::os::unix::fs::MetadataExt;

    /// Whether the test runs as root: only root can give a file to another user,
    /// and the rule acts only for root, so elsewhere a test says so and passes.
    fn as_root() -> bool {
        let root = nix::unistd::Uid::effective().is_root();
        if !root {
            eprintln!("skipping: only root can give a file to another user");
        }
        root
    }

    fn owner(path: &std::path::Path) -> (u32, u32) {
        let meta = std::fs::symlink_metadata(path).unwrap();
        (meta.uid(), meta.gid())
    }

    /// tests/systemd_units.rs runs `moat provision` as root on the appliance's state.
    #[test]
    fn root_created_files_in_anothers_state_directory_go_to_its_owner() {
        if !as_root() {
            return;
        }
        let root = tempfile::tempdir().unwrap();
        let state = root.path().join("state");
        std::fs::create_dir_all(state.join("devices/plug")).unwrap();
        std::fs::write(state.join("ca.pem"), "c").unwrap();
        std::fs::write(state.join("server.key"), "k").unwrap();
        std::fs::write(state.join("devices/plug/key.pem"), "k").unwrap();
        let outside = root.path().join("outside");
        std::fs::write(&outside, "o").unwrap();
        std::os::unix::fs::symlink(&outside, state.join("link")).unwrap();
        let nobody = 65534;
        std::os::unix::fs::chown(&state, Some(nobody), Some(nobody)).unwrap();

        assert!(give_back(&state).is_empty());
        for inside in [
            "ca.pem",
            "server.key",
            "devices",
            "devices/plug",
            "devices/plug/key.pem",
            "link",
        ] {
            assert_eq!(owner(&state.join(inside)), (nobody, nobody), "{inside}");
        }
        assert_eq!(
            owner(&outside),
            (0, 0),
            "a symlink's target is not followed"
        );
    }

    #[test]
    fn a_directory_without_moats_ca_is_left_alone() {
        if !as_root() {
            return;
        }
        let home = tempfile::tempdir().unwrap();
        std::fs::write(home.path().join("notes.txt"), "n").unwrap();
        std::os::unix::fs::chown(home.path(), Some(65534), Some(65534)).unwrap();
        assert!(give_back(home.path()).is_empty());
        assert_eq!(owner(&home.path().join("notes.txt")), (0, 0));
    }

    #[test]
    fn a_state_directory_of_roots_own_is_left_alone() {
        if !as_root() {
            return;
        }
        let state = tempfile::tempdir().unwrap();
        std::fs::write(state.path().join("ca.pem"), "c").unwrap();
        assert!(give_back(state.path()).is_empty());
        assert_eq!(owner(&state.path().join("ca.pem")), (0, 0));
    }
}
