//! Reading what a previous run left: a certificate's validity, names, issuer and public
//! key (x509-parser), and the decision whether it must be re-issued. It never writes.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::path::Path;

use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use x509_parser::extensions::{GeneralName, SubjectAlternativeName};

use super::PkiError;

/// The facts about an existing certificate that decide renewal.
#[derive(Debug, Clone)]
pub struct ExistingCert {
    pub der: CertificateDer<'static>,
    pub not_before: i64,
    pub not_after: i64,
    pub subject_public_key_info: Vec<u8>,
    pub issuer_raw: Vec<u8>,
    pub subject_raw: Vec<u8>,
    pub common_name: Option<String>,
    pub names: BTreeSet<SubjectName>,
}

/// A subject alternative name, normalised for comparison.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum SubjectName {
    Dns(String),
    Ip(IpAddr),
}

impl SubjectName {
    /// The string rcgen turns back into this SAN (IP literals become IP SANs).
    pub fn to_rcgen_string(&self) -> String {
        match self {
            SubjectName::Dns(name) => name.clone(),
            SubjectName::Ip(ip) => ip.to_string(),
        }
    }
}

impl std::fmt::Display for SubjectName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SubjectName::Dns(name) => write!(f, "DNS:{name}"),
            SubjectName::Ip(ip) => write!(f, "IP:{ip}"),
        }
    }
}

/// Parses the first certificate of a PEM file.
pub fn parse_pem(path: &Path, pem: &[u8]) -> Result<ExistingCert, PkiError> {
    let der = CertificateDer::from_pem_slice(pem).map_err(|e| PkiError::BadCertificate {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    parse_der(path, der)
}

pub fn parse_der(path: &Path, der: CertificateDer<'static>) -> Result<ExistingCert, PkiError> {
    let bad = |reason: String| PkiError::BadCertificate {
        path: path.to_path_buf(),
        reason,
    };
    let (_, cert) = x509_parser::parse_x509_certificate(&der).map_err(|e| bad(e.to_string()))?;
    let names = cert
        .subject_alternative_name()
        .map_err(|e| bad(e.to_string()))?
        .map(|san| san_names(san.value))
        .unwrap_or_default();
    let common_name = cert
        .subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .map(str::to_owned);
    let not_before = cert.validity().not_before.timestamp();
    let not_after = cert.validity().not_after.timestamp();
    let subject_public_key_info = cert.public_key().raw.to_vec();
    let issuer_raw = cert.issuer().as_raw().to_vec();
    let subject_raw = cert.subject().as_raw().to_vec();
    Ok(ExistingCert {
        der,
        not_before,
        not_after,
        subject_public_key_info,
        issuer_raw,
        subject_raw,
        common_name,
        names,
    })
}

/// The DNS and IP names of a subject alternative name extension, normalised (DNS
/// names lowercased); other kinds of name are left out.
pub fn san_names(san: &SubjectAlternativeName<'_>) -> BTreeSet<SubjectName> {
    san.general_names
        .iter()
        .filter_map(|name| match name {
            GeneralName::DNSName(dns) => Some(SubjectName::Dns(dns.to_ascii_lowercase())),
            GeneralName::IPAddress(bytes) => ip_from_bytes(bytes).map(SubjectName::Ip),
            _ => None,
        })
        .collect()
}

fn ip_from_bytes(bytes: &[u8]) -> Option<IpAddr> {
    match bytes.len() {
        4 => <[u8; 4]>::try_from(bytes).ok().map(IpAddr::from),
        16 => <[u8; 16]>::try_from(bytes).ok().map(IpAddr::from),
        _ => None,
    }
}

impl ExistingCert {
    /// Less than a third of the lifetime left (or already expired, or not yet valid).
    pub fn in_last_third(&self, now: i64) -> bool {
        let lifetime = self.not_after.saturating_sub(self.not_before);
        let left = self.not_after.saturating_sub(now);
        now < self.not_before || left.saturating_mul(3) < lifetime
    }

    /// Why this certificate must be re-issued for the wanted issuer, key and names,
    /// or `None` if it can stay.
    pub fn reissue_reason(
        &self,
        now: i64,
        issuer_subject_raw: &[u8],
        subject_public_key_info: &[u8],
        common_name: &str,
        names: &BTreeSet<SubjectName>,
    ) -> Option<&'static str> {
        if self.issuer_raw != issuer_subject_raw {
            Some("issued by another CA")
        } else if self.subject_public_key_info != subject_public_key_info {
            Some("does not match its key")
        } else if self.common_name.as_deref() != Some(common_name) {
            Some("common name changed")
        } else if &self.names != names {
            Some("names changed")
        } else if self.in_last_third(now) {
            Some("less than a third of its lifetime left")
        } else {
            None
        }
    }
}
