//! Credentials to import: mosquitto's `password_file` (`name:hash` lines as
//! `mosquitto_passwd` writes them), the same file as the Home Assistant add-on's
//! go-auth plugin writes it (`PBKDF2$sha512$iterations$salt$hash`), and the add-on's
//! `logins` option (options.json). A hash is carried as it is when moat can verify it
//! (`$7$`, `$6$`, `$argon2id$`, checked by `crate::auth::check_stored_hash`); a go-auth
//! PBKDF2-SHA512 hash is rewritten to the `$7$` form, which is the same function; a
//! plaintext login from options.json is hashed with argon2id. Nothing here prints a
//! password or a hash.

use std::path::Path;

use serde::Deserialize;

use super::ImportError;
use super::source::{self, Origin};
use crate::auth::{check_stored_hash, hash_password};

/// One credential found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub origin: Origin,
    pub name: String,
    /// The hash to put into the manifest, or why there is none.
    pub hash: Result<String, String>,
}

/// Reads a password file named at `at`.
pub fn read(path: &Path, at: &Origin) -> Result<Vec<Entry>, ImportError> {
    let text = source::read_text(path, "password file", Some(at))?;
    parse(path, &text)
}

/// Parses `name:hash` lines (blank lines and `#` comments skipped, as mosquitto does).
pub fn parse(path: &Path, text: &str) -> Result<Vec<Entry>, ImportError> {
    source::lines_of(path, text)
        .into_iter()
        .map(|line| {
            let Some((name, stored)) = line.text.split_once(':') else {
                return Err(ImportError::Invalid {
                    at: Some(line.origin),
                    message: "a password file line must be name:hash".into(),
                });
            };
            Ok(Entry {
                hash: import_hash(stored.trim()),
                name: name.trim().to_string(),
                origin: line.origin,
            })
        })
        .collect()
}

/// The manifest form of a stored hash, or why it cannot be imported.
pub fn import_hash(stored: &str) -> Result<String, String> {
    let candidate = if let Some(rest) = stored.strip_prefix("PBKDF2$sha512$") {
        // go-auth's PBKDF2 (iegomez/mosquitto-go-auth hashing/pbkdf2.go: base64 salt,
        // key length = hash length) is mosquitto's $7$ PBKDF2-HMAC-SHA512.
        format!("$7${rest}")
    } else if stored.starts_with("PBKDF2$") {
        return Err("a go-auth PBKDF2 hash with a digest other than SHA-512; moat verifies only PBKDF2-SHA512: set a new password with `moat passwd NAME --write`".into());
    } else if !stored.starts_with('$') {
        return Err("not a hash (a plaintext password file?); hash it first with `mosquitto_passwd -U FILE`, or set a new password with `moat passwd NAME --write`".into());
    } else {
        stored.to_string()
    };
    check_stored_hash(&candidate)
        .map(|_| candidate)
        .map_err(|e| format!("{e}; set a new password with `moat passwd NAME --write`"))
}

#[derive(Deserialize)]
struct AddonOptions {
    #[serde(default)]
    logins: Vec<AddonLogin>,
}

#[derive(Deserialize)]
struct AddonLogin {
    username: String,
    password: String,
    #[serde(default)]
    password_pre_hashed: bool,
}

/// The `logins` of the Home Assistant add-on's options (its `/data/options.json`):
/// plaintext passwords are hashed with argon2id here, pre-hashed ones imported.
pub fn read_addon_logins(path: &Path) -> Result<Vec<Entry>, ImportError> {
    let text = source::read_text(path, "add-on options file", None)?;
    let options: AddonOptions = serde_json::from_str(&text).map_err(|e| ImportError::Invalid {
        at: Some(Origin {
            file: path.to_path_buf(),
            line: e.line(),
        }),
        message: format!("not the add-on's options.json: {e}"),
    })?;
    options
        .logins
        .into_iter()
        .enumerate()
        .map(|(i, login)| {
            let hash = if login.password_pre_hashed {
                import_hash(&login.password)
            } else if login.password.is_empty() {
                Err("empty password".into())
            } else {
                Ok(hash_password(login.password.as_bytes())
                    .map_err(|e| ImportError::Hash(e.to_string()))?)
            };
            Ok(Entry {
                origin: Origin {
                    file: path.join(format!("logins[{i}]")),
                    line: 0,
                },
                name: login.username,
                hash,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::verify_password;

    /// The go-auth vector in the add-on's DOCS.md (`pw -p "foo"`).
    const GO_AUTH_FOO: &str = "PBKDF2$sha512$100000$qsU7xQ8YCV/9nRuBBJVTxA==$jqw94Ej3aEr97UofY6rClmVCRkTdDiubQW0A6ZYmUI+pZjW9Hax+2w2FeYB3y5ut1SliB7+HAwIl2iONLKkohw==";

    #[test]
    fn go_auth_pbkdf2_becomes_a_verifiable_7_hash() {
        let hash = import_hash(GO_AUTH_FOO).unwrap();
        assert!(hash.starts_with("$7$100000$"), "{hash}");
        assert_eq!(verify_password(&hash, b"foo"), Ok(true));
        assert_eq!(verify_password(&hash, b"bar"), Ok(false));
    }

    #[test]
    fn lines_parse_and_bad_hashes_say_why() {
        let entries = parse(
            Path::new("pw"),
            "# users\r\nalice:$6$c2FsdHNhbHQ=$aGFzaA==\nbob:hunter2\ncarol:$2b$10$xyz\n",
        )
        .unwrap();
        assert_eq!(entries.len(), 3);
        assert_eq!(entries[0].origin.line, 2);
        assert!(entries[0].hash.is_err(), "a 4-byte $6$ digest is malformed");
        let bob = entries[1].hash.as_ref().unwrap_err();
        assert!(
            bob.contains("not a hash") && !bob.contains("hunter2"),
            "{bob}"
        );
        assert!(entries[2].hash.is_err());
        let err = parse(Path::new("pw"), "\nnocolon\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("pw:2"), "{err}");
    }

    #[test]
    fn addon_logins_are_hashed_or_imported() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("options.json");
        let json = serde_json::json!({
            "logins": [
                {"username": "plug", "password": "plugpass"},
                {"username": "pre", "password": GO_AUTH_FOO, "password_pre_hashed": true},
            ],
            "customize": {"active": false, "folder": "mosquitto"}
        });
        std::fs::write(&path, json.to_string()).unwrap();
        let logins = read_addon_logins(&path).unwrap();
        let plug = logins[0].hash.as_ref().unwrap();
        assert!(plug.starts_with("$argon2id$"));
        assert_eq!(verify_password(plug, b"plugpass"), Ok(true));
        assert_eq!(
            verify_password(logins[1].hash.as_ref().unwrap(), b"foo"),
            Ok(true)
        );
        std::fs::write(&path, "{\"logins\": [ {\"username\": 1} ]}").unwrap();
        assert!(read_addon_logins(&path).is_err());
    }
}
