//! Turning the card's manifest into the installed one: every plaintext `password:`
//! becomes `password_hash: "<argon2id>"` through the manifest's in-place editor
//! (comments and layout kept), and the result must pass the normal, strict loader.
//! It works on text and returns text; writing files is the caller's job.

use zeroize::Zeroizing;

use crate::auth::{HashError, hash_password};
use crate::manifest::{EditError, LoadOptions, ManifestError, parse_str};

#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("{0}")]
    Manifest(#[from] ManifestError),
    #[error("{0}")]
    Edit(#[from] EditError),
    #[error("{0}")]
    Hash(#[from] HashError),
}

/// The manifest text with every plaintext password hashed, and the names whose
/// passwords were hashed (in manifest order).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hashed {
    pub text: String,
    pub hashed: Vec<String>,
}

/// Hashes every `password:` in `text` (read from `source_name`) and validates the
/// result as an ordinary manifest.
pub fn hash_plaintext_passwords(text: &str, source_name: &str) -> Result<Hashed, ImportError> {
    let loaded = parse_str(
        text,
        source_name,
        LoadOptions {
            allow_plaintext_passwords: true,
        },
    )?;
    let mut out = text.to_string();
    let mut hashed = Vec::new();
    let manifest = &loaded.manifest;
    for (name, spec) in manifest.users.iter().chain(manifest.devices.iter()) {
        let Some(password) = &spec.password else {
            continue;
        };
        let password = Zeroizing::new(password.value.clone());
        let hash = hash_password(password.as_bytes())?;
        out = crate::manifest::set_password_hash(&out, &name.value, &hash)?;
        hashed.push(name.value.clone());
    }
    parse_str(&out, source_name, LoadOptions::default())?;
    Ok(Hashed { text: out, hashed })
}

#[cfg(test)]
mod tests {
    use super::*;
    use argon2::password_hash::PasswordVerifier;
    use argon2::password_hash::phc::PasswordHash;

    #[test]
    fn hashes_every_plaintext_password_and_keeps_comments() {
        let text = "version: 1\n# the hub\nusers:\n  homeassistant:\n    role: homeassistant  # preset\n    password: \"first secret\"\ndevices:\n  plug:\n    role: tasmota\n    password: second-secret\n";
        let result = hash_plaintext_passwords(text, "card").unwrap();
        assert_eq!(result.hashed, ["homeassistant", "plug"]);
        assert!(!result.text.contains("first secret"));
        assert!(!result.text.contains("second-secret"));
        assert!(result.text.contains("# the hub\n"));
        assert!(result.text.contains("role: homeassistant  # preset\n"));
        let loaded = parse_str(&result.text, "out", LoadOptions::default()).unwrap();
        let hash = loaded.manifest.users.get("homeassistant").unwrap();
        let phc = hash.password_hash.as_ref().unwrap().value.clone();
        let parsed = PasswordHash::new(&phc).unwrap();
        assert!(
            argon2::Argon2::default()
                .verify_password(b"first secret", &parsed)
                .is_ok()
        );
    }

    #[test]
    fn a_manifest_without_plaintext_is_returned_as_is() {
        let text = "version: 1\nusers:\n  ha:\n    role: homeassistant\n    password_file: /run/secrets/ha\n";
        let result = hash_plaintext_passwords(text, "card").unwrap();
        assert_eq!(result.text, text);
        assert!(result.hashed.is_empty());
    }

    #[test]
    fn an_invalid_manifest_is_refused_with_its_location() {
        let err = hash_plaintext_passwords("version: 1\nusers:\n  ha:\n    bogus: 1\n", "card")
            .unwrap_err()
            .to_string();
        assert!(err.contains("line 4"), "{err}");
    }
}
