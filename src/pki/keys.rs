//! Private keys in the state directory: loaded if present (never silently replaced,
//! because devices pin them), generated if absent, always PKCS#8 PEM at mode 0600.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use rcgen::{KeyPair, PKCS_ECDSA_P256_SHA256, PKCS_RSA_SHA256, SignatureAlgorithm};
use zeroize::Zeroizing;

use super::state_dir::{self, io_error};
use super::{Outcome, PkiError, rsa_key};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    EcdsaP256,
    Rsa2048,
}

impl KeyKind {
    fn algorithm(self) -> &'static SignatureAlgorithm {
        match self {
            KeyKind::EcdsaP256 => &PKCS_ECDSA_P256_SHA256,
            KeyKind::Rsa2048 => &PKCS_RSA_SHA256,
        }
    }
}

/// The key at `path`, generating and writing it first if there is none.
pub fn load_or_create(path: &Path, kind: KeyKind) -> Result<(KeyPair, Outcome), PkiError> {
    if let Some(pem) = state_dir::read_optional(path)? {
        let pem = Zeroizing::new(pem);
        tighten_mode(path)?;
        return Ok((parse(path, &pem, kind)?, Outcome::Kept));
    }
    let pem = match kind {
        KeyKind::EcdsaP256 => Zeroizing::new(
            KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)
                .map_err(PkiError::rcgen("generating an ECDSA key"))?
                .serialize_pem(),
        ),
        KeyKind::Rsa2048 => rsa_key::generate_pkcs8_pem()?,
    };
    state_dir::write_private(path, pem.as_bytes())?;
    Ok((parse(path, pem.as_bytes(), kind)?, Outcome::Created))
}

/// Loads an existing key; a missing file is an error.
pub fn load(path: &Path, kind: KeyKind) -> Result<KeyPair, PkiError> {
    let pem = Zeroizing::new(fs::read(path).map_err(io_error(path))?);
    parse(path, &pem, kind)
}

fn parse(path: &Path, pem: &[u8], kind: KeyKind) -> Result<KeyPair, PkiError> {
    let bad = |reason: String| PkiError::BadKey {
        path: path.to_path_buf(),
        reason,
    };
    let text = std::str::from_utf8(pem).map_err(|_| bad("not PEM text".into()))?;
    KeyPair::from_pkcs8_pem_and_sign_algo(text, kind.algorithm()).map_err(|e| {
        bad(format!(
            "not a PKCS#8 {} key: {e}",
            match kind {
                KeyKind::EcdsaP256 => "ECDSA P-256",
                KeyKind::Rsa2048 => "RSA",
            }
        ))
    })
}

/// A key file someone loosened is made private again rather than served as is.
fn tighten_mode(path: &Path) -> Result<(), PkiError> {
    let mode = fs::metadata(path)
        .map_err(io_error(path))?
        .permissions()
        .mode();
    if mode & 0o077 != 0 {
        fs::set_permissions(path, fs::Permissions::from_mode(0o600)).map_err(io_error(path))?;
    }
    Ok(())
}
