//! Issuing an end-entity certificate (server or device) from the CA: keep it while it
//! is valid, matches its key, names and CA, and has more than a third of its life left;
//! otherwise re-issue it with the SAME key, so fingerprints pinned by devices survive.

use std::collections::BTreeSet;
use std::path::Path;

use rcgen::{
    CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, KeyUsagePurpose,
    PublicKeyData,
};

use super::ca::Ca;
use super::existing::{self, SubjectName};
use super::keys::{self, KeyKind};
use super::{Outcome, PkiError, ProvisionReport, Validity, state_dir};

/// What one end-entity certificate must look like. Paths are relative to the state dir.
pub struct LeafSpec {
    pub cert_file: String,
    pub key_file: String,
    pub key_kind: KeyKind,
    pub common_name: String,
    /// Subject alternative names, in the order they are written.
    pub names: Vec<SubjectName>,
    pub usage: ExtendedKeyUsagePurpose,
    pub lifetime_days: u64,
}

/// Makes sure the key and certificate described by `spec` exist and are current.
pub fn ensure(
    state: &Path,
    spec: &LeafSpec,
    ca: &Ca,
    now: i64,
    report: &mut ProvisionReport,
) -> Result<(), PkiError> {
    let key_path = state.join(&spec.key_file);
    let cert_path = state.join(&spec.cert_file);
    let (key, key_outcome) = keys::load_or_create(&key_path, spec.key_kind)?;
    report.push(&spec.key_file, key_outcome);
    let spki = key.subject_public_key_info();
    let wanted: BTreeSet<SubjectName> = spec.names.iter().cloned().collect();

    let outcome = match state_dir::read_optional(&cert_path)? {
        None => Outcome::Created,
        Some(pem) => {
            // An unreadable certificate is simply re-issued: the key is what matters.
            let reason = match existing::parse_pem(&cert_path, &pem) {
                Ok(cert) => cert.reissue_reason(
                    now,
                    &ca.cert.subject_raw,
                    &spki,
                    &spec.common_name,
                    &wanted,
                ),
                Err(_) => Some("unreadable"),
            };
            match reason {
                None => {
                    report.push(&spec.cert_file, Outcome::Kept);
                    return Ok(());
                }
                Some(reason) => {
                    tracing::info!(cert = %cert_path.display(), reason, "re-issuing certificate");
                    Outcome::Renewed
                }
            }
        }
    };

    let names: Vec<String> = spec
        .names
        .iter()
        .map(SubjectName::to_rcgen_string)
        .collect();
    let mut params = CertificateParams::new(names).map_err(PkiError::rcgen("preparing names"))?;
    params.distinguished_name = DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, spec.common_name.clone());
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![spec.usage.clone()];
    params.use_authority_key_identifier_extension = true;
    Validity::days(now, spec.lifetime_days).apply(&mut params)?;
    let cert = params
        .signed_by(&key, &ca.issuer)
        .map_err(PkiError::rcgen("signing a certificate"))?;
    state_dir::write_public(&cert_path, cert.pem().as_bytes())?;
    report.push(&spec.cert_file, outcome);
    Ok(())
}
