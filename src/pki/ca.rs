//! moat's own certificate authority: an ECDSA P-256 key and a self-signed CA
//! certificate valid for ten years, named "moat CA <random suffix>" so a regenerated CA
//! never shares a name with an old one. Renewal re-signs the same key under the same
//! name, so certificates issued before stay valid.

use std::path::Path;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, PublicKeyData,
};

use super::existing::{self, ExistingCert};
use super::keys::{self, KeyKind};
use super::{CA_CERT, CA_KEY, Outcome, PkiError, ProvisionReport, Validity, state_dir};

/// Ten years.
pub const CA_LIFETIME_DAYS: u64 = 3650;

/// The CA, ready to sign.
pub struct Ca {
    pub issuer: Issuer<'static, KeyPair>,
    pub cert: ExistingCert,
    /// The CA certificate as written to `ca.pem` (and copied into device bundles).
    pub pem: String,
}

/// Loads the CA from the state directory, creating or renewing it as needed.
pub fn ensure(state: &Path, now: i64, report: &mut ProvisionReport) -> Result<Ca, PkiError> {
    let key_path = state.join(CA_KEY);
    let cert_path = state.join(CA_CERT);
    let (key, key_outcome) = keys::load_or_create(&key_path, KeyKind::EcdsaP256)?;
    report.push(CA_KEY, key_outcome);

    // A certificate next to a freshly generated key belongs to a key that is gone.
    let existing_pem = match key_outcome {
        Outcome::Kept => state_dir::read_optional(&cert_path)?,
        _ => None,
    };
    let mut keep_name = None;
    if let Some(pem) = existing_pem {
        let cert = existing::parse_pem(&cert_path, &pem)?;
        if cert.subject_public_key_info != key.subject_public_key_info() {
            return Err(PkiError::BadCertificate {
                path: cert_path,
                reason: format!("does not match the CA key {}", key_path.display()),
            });
        }
        if !cert.in_last_third(now) {
            report.push(CA_CERT, Outcome::Kept);
            let pem = String::from_utf8(pem).map_err(|_| PkiError::BadCertificate {
                path: cert_path.clone(),
                reason: "not PEM text".into(),
            })?;
            return ca(key, cert, pem);
        }
        keep_name = Some(cert.common_name.unwrap_or_default());
    }

    let outcome = if keep_name.is_some() {
        Outcome::Renewed
    } else {
        Outcome::Created
    };
    let name = match keep_name {
        Some(name) if !name.is_empty() => name,
        _ => format!("moat CA {}", super::random_hex(4)?),
    };
    let mut params = CertificateParams::new(Vec::<String>::new())
        .map_err(PkiError::rcgen("preparing the CA certificate"))?;
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    Validity::days(now, CA_LIFETIME_DAYS).apply(&mut params)?;
    let cert = params
        .self_signed(&key)
        .map_err(PkiError::rcgen("signing the CA certificate"))?;
    let pem = cert.pem();
    state_dir::write_public(&cert_path, pem.as_bytes())?;
    report.push(CA_CERT, outcome);
    let parsed = existing::parse_der(&cert_path, cert.der().clone())?;
    ca(key, parsed, pem)
}

fn ca(key: KeyPair, cert: ExistingCert, pem: String) -> Result<Ca, PkiError> {
    let issuer = Issuer::from_ca_cert_der(&cert.der, key)
        .map_err(PkiError::rcgen("reading the CA certificate"))?;
    Ok(Ca { issuer, cert, pem })
}
