//! The endpoint's optional bearer token: read from a secret file (like
//! `password_file`: never in the manifest), refused when the group or others may read
//! it (the rule `moat doctor` applies to every secret), and compared in constant time
//! (`subtle`), so the answer's timing says nothing of how much of a guess was right.

use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

/// Longest token read (a scraper config holds it; 4 KiB is plenty).
const MAX_TOKEN_LEN: u64 = 4096;

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("cannot read the metrics token file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "the metrics token file {path} may be read by its group or others (mode {mode:04o}); \
         run `chmod 600 {path}`"
    )]
    Readable { path: PathBuf, mode: u32 },
    #[error("the metrics token file {0} is empty")]
    Empty(PathBuf),
    #[error("the metrics token file {0} is larger than {MAX_TOKEN_LEN} bytes")]
    TooLarge(PathBuf),
    #[error(
        "the metrics token in {0} has characters a bearer token cannot carry (use letters, digits and -._~+/=)"
    )]
    BadCharacters(PathBuf),
}

/// A bearer token, wiped from memory when dropped.
pub struct Token(Zeroizing<Vec<u8>>);

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(..)")
    }
}

impl Token {
    /// Reads the token in `path`, without one trailing newline.
    pub fn read(path: &Path) -> Result<Token, TokenError> {
        let read_error = |source| TokenError::Read {
            path: path.to_path_buf(),
            source,
        };
        let file = std::fs::File::open(path).map_err(read_error)?;
        let mode = file.metadata().map_err(read_error)?.permissions().mode() & 0o7777;
        if mode & 0o077 != 0 {
            return Err(TokenError::Readable {
                path: path.to_path_buf(),
                mode,
            });
        }
        let mut token = Zeroizing::new(Vec::new());
        file.take(MAX_TOKEN_LEN + 1)
            .read_to_end(&mut token)
            .map_err(read_error)?;
        if token.len() as u64 > MAX_TOKEN_LEN {
            return Err(TokenError::TooLarge(path.to_path_buf()));
        }
        while token.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
            token.pop();
        }
        if token.is_empty() {
            return Err(TokenError::Empty(path.to_path_buf()));
        }
        // RFC 6750's b64token: what a scraper can put after "Bearer ".
        let b64token = |b: &u8| b.is_ascii_alphanumeric() || b"-._~+/=".contains(b);
        if !token.iter().all(b64token) {
            return Err(TokenError::BadCharacters(path.to_path_buf()));
        }
        Ok(Token(token))
    }

    /// Whether an `Authorization` header value carries this token. The scheme is
    /// case-insensitive (RFC 7235); the token is compared in constant time.
    pub fn admits(&self, authorization: Option<&[u8]>) -> bool {
        let Some(value) = authorization else {
            return false;
        };
        let Some((scheme, credentials)) = split_once(value, b' ') else {
            return false;
        };
        // `ct_eq` answers at once for a different length: the length is not secret.
        scheme.eq_ignore_ascii_case(b"bearer") && bool::from(credentials.ct_eq(&self.0))
    }
}

fn split_once(value: &[u8], at: u8) -> Option<(&[u8], &[u8])> {
    let i = value.iter().position(|b| *b == at)?;
    Some((&value[..i], value[i + 1..].trim_ascii()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, contents: &str, mode: u32) -> PathBuf {
        let path = dir.join("token");
        std::fs::write(&path, contents).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        path
    }

    #[test]
    fn a_private_token_admits_only_its_own_bearer_header() {
        let dir = tempfile::tempdir().unwrap();
        let token = Token::read(&write(dir.path(), "s3cret-Token\n", 0o600)).unwrap();
        assert!(token.admits(Some(b"Bearer s3cret-Token")));
        assert!(token.admits(Some(b"bearer s3cret-Token")));
        assert!(!token.admits(Some(b"Bearer s3cret-Toke")));
        assert!(!token.admits(Some(b"Bearer s3cret-Token2")));
        assert!(!token.admits(Some(b"Basic s3cret-Token")));
        assert!(!token.admits(Some(b"s3cret-Token")));
        assert!(!token.admits(None));
    }

    #[test]
    fn readable_empty_or_odd_token_files_are_refused_with_the_fix() {
        let dir = tempfile::tempdir().unwrap();
        let err = Token::read(&write(dir.path(), "abc", 0o644)).unwrap_err();
        assert!(err.to_string().contains("chmod 600"), "{err}");
        assert!(matches!(
            Token::read(&write(dir.path(), "\n", 0o600)),
            Err(TokenError::Empty(_))
        ));
        assert!(matches!(
            Token::read(&write(dir.path(), "two words", 0o400)),
            Err(TokenError::BadCharacters(_))
        ));
        assert!(matches!(
            Token::read(&dir.path().join("missing")),
            Err(TokenError::Read { .. })
        ));
    }
}
