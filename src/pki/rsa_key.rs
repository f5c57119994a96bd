//! The optional RSA-2048 server key for clients that cannot do ECDSA (Tasmota on
//! ESP8266 speaks only ECDHE-RSA), and the SHA-1 public-key fingerprint Tasmota pins.
//! ring (rcgen's backend) cannot generate RSA keys, so the `rsa` crate does, once; the
//! key is handed to rcgen and rustls as PKCS#8 and signing is done by ring.

use rsa::pkcs8::{EncodePrivateKey, LineEnding};
use sha1::{Digest, Sha1};
use x509_parser::prelude::FromDer;
use x509_parser::public_key::PublicKey;
use x509_parser::x509::SubjectPublicKeyInfo;
use zeroize::Zeroizing;

use super::PkiError;

/// Modulus size: Tasmota on ESP8266 handles at most 2048 bits by default.
pub const RSA_BITS: usize = 2048;

/// A fresh RSA-2048 private key as a PKCS#8 PEM string.
pub fn generate_pkcs8_pem() -> Result<Zeroizing<String>, PkiError> {
    let key = rsa::PrivateKey::new(&mut getrandom::SysRng, RSA_BITS)
        .map_err(|e| PkiError::Rsa(e.to_string()))?;
    key.to_pkcs8_pem(LineEnding::LF)
        .map_err(|e| PkiError::Rsa(e.to_string()))
}

/// Tasmota's "v2" fingerprint of an RSA public key, from its SubjectPublicKeyInfo DER:
/// SHA-1 over `len || "ssh-rsa" || len || e || len || n` (32-bit big-endian lengths,
/// integers without leading zeros), printed as Tasmota shows it (`AB CD ...`).
/// `None` if the key is not RSA.
pub fn tasmota_fingerprint(subject_public_key_info: &[u8]) -> Option<String> {
    let (_, spki) = SubjectPublicKeyInfo::from_der(subject_public_key_info).ok()?;
    let PublicKey::RSA(rsa) = spki.parsed().ok()? else {
        return None;
    };
    let mut sha = Sha1::new();
    for field in [
        b"ssh-rsa".as_slice(),
        trim_leading_zeros(rsa.exponent),
        trim_leading_zeros(rsa.modulus),
    ] {
        sha.update(u32::try_from(field.len()).ok()?.to_be_bytes());
        sha.update(field);
    }
    let digest = sha.finalize();
    Some(
        digest
            .iter()
            .map(|b| format!("{b:02X}"))
            .collect::<Vec<_>>()
            .join(" "),
    )
}

fn trim_leading_zeros(bytes: &[u8]) -> &[u8] {
    let start = bytes.iter().position(|b| *b != 0).unwrap_or(bytes.len());
    &bytes[start..]
}

#[cfg(test)]
mod tests {
    use super::*;
    use rsa::traits::PublicKeyParts;

    #[test]
    fn fingerprint_matches_an_independent_computation() {
        let pem = generate_pkcs8_pem().unwrap();
        let key =
            rcgen::KeyPair::from_pkcs8_pem_and_sign_algo(&pem, &rcgen::PKCS_RSA_SHA256).unwrap();
        let spki = rcgen::PublicKeyData::subject_public_key_info(&key);
        let fingerprint = tasmota_fingerprint(&spki).unwrap();

        // Recompute from the rsa crate's view of the same key.
        let private =
            <rsa::PrivateKey as rsa::pkcs8::DecodePrivateKey>::from_pkcs8_pem(&pem).unwrap();
        let (e, n) = (private.e_bytes(), private.n_bytes());
        assert_eq!(n.len(), 256);
        assert_eq!(&*e, &[1, 0, 1]);
        let mut data = Vec::new();
        for field in [b"ssh-rsa".as_slice(), &e, &n] {
            data.extend_from_slice(&(field.len() as u32).to_be_bytes());
            data.extend_from_slice(field);
        }
        let expected: Vec<String> = Sha1::digest(&data)
            .iter()
            .map(|b| format!("{b:02X}"))
            .collect();
        assert_eq!(fingerprint, expected.join(" "));
        assert_eq!(fingerprint.len(), 20 * 3 - 1);
    }

    #[test]
    fn ecdsa_keys_have_no_tasmota_fingerprint() {
        let key = rcgen::KeyPair::generate().unwrap();
        let spki = rcgen::PublicKeyData::subject_public_key_info(&key);
        assert_eq!(tasmota_fingerprint(&spki), None);
    }
}
