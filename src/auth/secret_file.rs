//! Hashes for `password_file` identities. The secret stays in its file (where systemd
//! credentials, agenix or sops put it); moat keeps only its argon2id hash in
//! `<state>/hashes/<name>.phc` (0600), next to a stamp that says which secret it was
//! made from: SHA-256 over a per-state random key and the (name, secret), so the file
//! is re-hashed only when the secret changed, and the stamp alone cannot be used to
//! test guesses without the key. It knows files and hashes, not the manifest.

use std::io::Read;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use super::hash::{HashError, hash_password};
use super::verify::{HashKind, check_stored_hash};
use crate::pki::state_dir::{self, StateDirError};

/// Largest secret file read.
const MAX_SECRET_LEN: u64 = 4096;
/// Subdirectory of the state directory holding the hashes.
const HASHES_DIR: &str = "hashes";
/// The per-state stamp key, inside `hashes/`.
const STAMP_KEY_FILE: &str = ".stamp-key";

#[derive(Debug, thiserror::Error)]
pub enum SecretFileError {
    #[error("identity name {0:?} cannot name a hash file (use [A-Za-z0-9._-], not . or ..)")]
    BadName(String),
    #[error("cannot read the password file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the password file {0} is empty")]
    Empty(PathBuf),
    #[error("the password file {0} is larger than {MAX_SECRET_LEN} bytes")]
    TooLarge(PathBuf),
    #[error(transparent)]
    StateDir(#[from] StateDirError),
    #[error(transparent)]
    Hash(#[from] HashError),
}

/// The argon2id hash of the secret in `secret_path` for identity `name`, reusing the
/// stored one when the secret has not changed.
pub fn hash_for_secret_file(
    state_dir: &Path,
    name: &str,
    secret_path: &Path,
) -> Result<String, SecretFileError> {
    check_name(name)?;
    let secret = read_secret(secret_path)?;
    state_dir::ensure_private_dir(state_dir)?;
    let hashes = state_dir.join(HASHES_DIR);
    state_dir::ensure_private_dir(&hashes)?;
    let key = stamp_key(&hashes)?;
    let stamp = stamp(&key, name, &secret);
    let hash_path = hashes.join(format!("{name}.phc"));

    if let Some(existing) = state_dir::read_optional(&hash_path)?
        && let Some(phc) = reusable(&existing, &stamp)
    {
        return Ok(phc);
    }
    let phc = hash_password(&secret)?;
    let contents = format!("{phc}\n{}\n", hex(&stamp));
    state_dir::write_private(&hash_path, contents.as_bytes())?;
    Ok(phc)
}

/// The stored hash if the file is ours, well-formed, and stamped for this secret.
fn reusable(contents: &[u8], stamp: &[u8; 32]) -> Option<String> {
    let text = std::str::from_utf8(contents).ok()?;
    let mut lines = text.lines();
    let phc = lines.next()?;
    let stored_stamp = lines.next()?;
    let matches: bool = stored_stamp.as_bytes().ct_eq(hex(stamp).as_bytes()).into();
    (matches && check_stored_hash(phc) == Ok(HashKind::Argon2id)).then(|| phc.to_owned())
}

fn check_name(name: &str) -> Result<(), SecretFileError> {
    if state_dir::is_safe_entry_name(name) {
        Ok(())
    } else {
        Err(SecretFileError::BadName(name.to_owned()))
    }
}

/// The secret without one trailing newline (`echo pw > file` writes one).
fn read_secret(path: &Path) -> Result<Zeroizing<Vec<u8>>, SecretFileError> {
    let read_error = |source| SecretFileError::Read {
        path: path.to_path_buf(),
        source,
    };
    let file = std::fs::File::open(path).map_err(read_error)?;
    let mut secret = Zeroizing::new(Vec::new());
    file.take(MAX_SECRET_LEN + 1)
        .read_to_end(&mut secret)
        .map_err(read_error)?;
    if secret.len() as u64 > MAX_SECRET_LEN {
        return Err(SecretFileError::TooLarge(path.to_path_buf()));
    }
    if secret.last() == Some(&b'\n') {
        secret.pop();
        if secret.last() == Some(&b'\r') {
            secret.pop();
        }
    }
    if secret.is_empty() {
        return Err(SecretFileError::Empty(path.to_path_buf()));
    }
    Ok(secret)
}

/// The per-state random key, created on first use.
fn stamp_key(hashes: &Path) -> Result<Zeroizing<[u8; 32]>, SecretFileError> {
    let path = hashes.join(STAMP_KEY_FILE);
    let mut key = Zeroizing::new([0u8; 32]);
    if let Some(existing) = state_dir::read_optional(&path)?
        && existing.len() == key.len()
    {
        key.copy_from_slice(&existing);
        return Ok(key);
    }
    getrandom::fill(key.as_mut()).map_err(|e| HashError::Random(e.to_string()))?;
    state_dir::write_private(&path, key.as_ref())?;
    Ok(key)
}

fn stamp(key: &[u8; 32], name: &str, secret: &[u8]) -> [u8; 32] {
    let mut hasher = Sha256::new();
    hasher.update(key);
    for field in [name.as_bytes(), secret] {
        hasher.update((field.len() as u64).to_be_bytes());
        hasher.update(field);
    }
    hasher.finalize().into()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::verify_password;
    use std::os::unix::fs::PermissionsExt;

    fn setup() -> (tempfile::TempDir, PathBuf, PathBuf) {
        let root = tempfile::tempdir().unwrap();
        let state = root.path().join("state");
        let secret = root.path().join("secret");
        std::fs::write(&secret, "hunter2\n").unwrap();
        (root, state, secret)
    }

    #[test]
    fn hashes_once_and_reuses_until_the_secret_changes() {
        let (_root, state, secret) = setup();
        let first = hash_for_secret_file(&state, "zigbee2mqtt", &secret).unwrap();
        assert_eq!(verify_password(&first, b"hunter2"), Ok(true));
        let hash_file = state.join("hashes/zigbee2mqtt.phc");
        let mtime = std::fs::metadata(&hash_file).unwrap().modified().unwrap();

        let again = hash_for_secret_file(&state, "zigbee2mqtt", &secret).unwrap();
        assert_eq!(first, again);
        assert_eq!(
            std::fs::metadata(&hash_file).unwrap().modified().unwrap(),
            mtime
        );

        std::fs::write(&secret, "hunter3").unwrap();
        let changed = hash_for_secret_file(&state, "zigbee2mqtt", &secret).unwrap();
        assert_ne!(first, changed);
        assert_eq!(verify_password(&changed, b"hunter3"), Ok(true));
    }

    #[test]
    fn the_hash_file_is_private_and_holds_no_secret() {
        let (_root, state, secret) = setup();
        hash_for_secret_file(&state, "z", &secret).unwrap();
        let hash_file = state.join("hashes/z.phc");
        let meta = std::fs::metadata(&hash_file).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        let contents = std::fs::read_to_string(&hash_file).unwrap();
        assert!(!contents.contains("hunter2"));
        let unsalted = hex(&Sha256::digest(b"hunter2"));
        assert!(!contents.contains(&unsalted));
        let key_mode = std::fs::metadata(state.join("hashes/.stamp-key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(key_mode & 0o777, 0o600);
    }

    #[test]
    fn same_secret_for_two_names_gets_distinct_stamps() {
        let key = [1u8; 32];
        assert_ne!(stamp(&key, "a", b"pw"), stamp(&key, "b", b"pw"));
        assert_ne!(stamp(&key, "ab", b"c"), stamp(&key, "a", b"bc"));
    }

    #[test]
    fn a_tampered_hash_file_is_replaced() {
        let (_root, state, secret) = setup();
        hash_for_secret_file(&state, "z", &secret).unwrap();
        let hash_file = state.join("hashes/z.phc");
        std::fs::write(&hash_file, "garbage\nnot-a-stamp\n").unwrap();
        let phc = hash_for_secret_file(&state, "z", &secret).unwrap();
        assert_eq!(verify_password(&phc, b"hunter2"), Ok(true));
    }

    #[test]
    fn only_one_trailing_newline_is_trimmed() {
        let (_root, state, secret) = setup();
        std::fs::write(&secret, "pw\n\n").unwrap();
        let phc = hash_for_secret_file(&state, "z", &secret).unwrap();
        assert_eq!(verify_password(&phc, b"pw\n"), Ok(true));
    }

    #[test]
    fn bad_inputs_are_refused() {
        let (root, state, secret) = setup();
        for name in ["", ".", "..", "a/b", "x$", &"n".repeat(65)] {
            assert!(matches!(
                hash_for_secret_file(&state, name, &secret),
                Err(SecretFileError::BadName(_))
            ));
        }
        let empty = root.path().join("empty");
        std::fs::write(&empty, "\n").unwrap();
        assert!(matches!(
            hash_for_secret_file(&state, "z", &empty),
            Err(SecretFileError::Empty(_))
        ));
        let big = root.path().join("big");
        std::fs::write(&big, vec![b'a'; 5000]).unwrap();
        assert!(matches!(
            hash_for_secret_file(&state, "z", &big),
            Err(SecretFileError::TooLarge(_))
        ));
        let missing = root.path().join("missing");
        let err = hash_for_secret_file(&state, "z", &missing).unwrap_err();
        assert!(err.to_string().contains("missing"), "{err}");
    }
}
