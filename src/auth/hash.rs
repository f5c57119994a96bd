//! argon2id password hashing with the crate defaults (m=19 MiB, t=2, p=1: OWASP's
//! minimum), and generation of strong random passwords.

use argon2::password_hash::PasswordHasher;

#[derive(Debug, thiserror::Error)]
pub enum HashError {
    #[error("argon2 hashing failed: {0}")]
    Argon2(String),
    #[error("the system random source failed: {0}")]
    Random(String),
}

/// Hashes a password into an argon2id PHC string with a fresh random salt.
pub fn hash_password(password: &[u8]) -> Result<String, HashError> {
    let hash = argon2::Argon2::default()
        .hash_password(password)
        .map_err(|e| HashError::Argon2(e.to_string()))?;
    Ok(hash.to_string())
}

/// Alphabet without look-alikes (0/O, 1/l/I) so a password read off a screen survives.
const PASSWORD_ALPHABET: &[u8] = b"abcdefghijkmnopqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789";

/// A random password of 24 characters (about 140 bits of entropy).
pub fn generate_password() -> Result<String, HashError> {
    let mut bytes = [0u8; 24];
    getrandom::fill(&mut bytes).map_err(|e| HashError::Random(e.to_string()))?;
    // 256 is not a multiple of the alphabet size; the bias is under 1 bit in total.
    Ok(bytes
        .iter()
        .map(|b| PASSWORD_ALPHABET[usize::from(*b) % PASSWORD_ALPHABET.len()] as char)
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_are_argon2id_phc_with_owasp_parameters() {
        let hash = hash_password(b"correct horse").unwrap();
        assert!(
            hash.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"),
            "{hash}"
        );
    }

    #[test]
    fn generated_passwords_differ_and_use_the_alphabet() {
        let a = generate_password().unwrap();
        let b = generate_password().unwrap();
        assert_eq!(a.len(), 24);
        assert_ne!(a, b);
        assert!(a.bytes().all(|c| PASSWORD_ALPHABET.contains(&c)));
    }
}
