//! moat's private PKI in the state directory: an ECDSA P-256 CA, the server
//! certificate (plus an RSA-2048 one for Tasmota-class clients), per-device client
//! certificate bundles, and their renewal. `provision` is idempotent: it creates what is
//! missing, re-issues (with the same key) what is near expiry or no longer matches the
//! plan, and leaves everything else byte-for-byte alone. `load_server_credentials` is
//! what the TLS listener serves. This module knows files and certificates; it does not
//! read the manifest (the caller turns a policy into a `ProvisionPlan`) and it does not
//! configure TLS.
//!
//! Layout of the state directory (0700):
//!
//! ```text
//! ca.pem ca.key                      the CA (key 0600)
//! server.pem server.key              ECDSA P-256 server certificate and key
//! server-rsa.pem server-rsa.key      RSA-2048 server certificate and key (optional)
//! devices/<name>/{cert,key,ca}.pem   client certificate bundles (dirs 0700, keys 0600)
//! hashes/<name>.phc                  password_file hashes (see auth::secret_file)
//! ```

use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::{CertificateParams, PublicKeyData, SerialNumber};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde::Serialize;

mod ca;
mod device;
mod existing;
mod keys;
mod leaf;
mod rsa_key;
mod server;
pub mod state_dir;

pub use device::check_name as check_device_name;
pub use existing::{SubjectName, san_names};
pub use server::subject_names;
pub use state_dir::StateDirError;

pub const CA_CERT: &str = "ca.pem";
pub const CA_KEY: &str = "ca.key";
pub const SERVER_CERT: &str = "server.pem";
pub const SERVER_KEY: &str = "server.key";
pub const SERVER_RSA_CERT: &str = "server-rsa.pem";
pub const SERVER_RSA_KEY: &str = "server-rsa.key";
pub const DEVICES_DIR: &str = "devices";

/// Certificates are backdated by a day: the Pi has no real-time clock, and a device
/// whose clock lags a little must not see a certificate that is "not yet valid".
const BACKDATE: Duration = Duration::from_secs(24 * 60 * 60);

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error(transparent)]
    StateDir(#[from] StateDirError),
    #[error("{what}: {source}")]
    Rcgen {
        what: &'static str,
        #[source]
        source: rcgen::Error,
    },
    #[error("RSA key generation failed: {0}")]
    Rsa(String),
    #[error("{path}: not a usable private key: {reason}")]
    BadKey { path: PathBuf, reason: String },
    #[error("{path}: not a usable certificate: {reason}")]
    BadCertificate { path: PathBuf, reason: String },
    #[error(
        "device name {0:?} cannot be used for a certificate bundle (use [A-Za-z0-9._-], 1-64 characters)"
    )]
    BadDeviceName(String),
    #[error("hostname {0:?} is not a valid DNS name for the server certificate")]
    BadHostname(String),
    #[error("{0} is missing: run `moat provision` first")]
    Missing(PathBuf),
    #[error("the system clock is outside the range certificates can express")]
    Clock,
    #[error("the system random source failed: {0}")]
    Random(String),
}

impl PkiError {
    fn rcgen(what: &'static str) -> impl FnOnce(rcgen::Error) -> PkiError {
        move |source| PkiError::Rcgen { what, source }
    }
}

/// What the state directory must contain, derived from the manifest by the caller.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProvisionPlan {
    /// Names for the server certificate.
    pub hostnames: Vec<String>,
    /// This machine's host name: `<name>.local` (its mDNS name) goes into the server
    /// certificate. `None` adds no `.local` name.
    pub machine_name: Option<String>,
    /// Addresses for the server certificate (loopback is always included).
    pub addresses: Vec<IpAddr>,
    /// Issue an RSA-2048 server certificate as well (Tasmota on ESP8266).
    pub rsa_server_key: bool,
    /// Devices that get a client certificate bundle.
    pub certificate_devices: Vec<String>,
}

/// What happened to one file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Created,
    Renewed,
    Kept,
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(match self {
            Outcome::Created => "created",
            Outcome::Renewed => "renewed",
            Outcome::Kept => "kept",
        })
    }
}

/// One file of the state directory, relative to it, and what happened to it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReportItem {
    pub path: PathBuf,
    pub outcome: Outcome,
}

/// Every file `provision` looked after, in the order it did so.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ProvisionReport {
    pub items: Vec<ReportItem>,
}

impl ProvisionReport {
    fn push(&mut self, path: &str, outcome: Outcome) {
        self.items.push(ReportItem {
            path: PathBuf::from(path),
            outcome,
        });
    }

    /// The outcome recorded for `path` (relative to the state directory).
    pub fn outcome_of(&self, path: impl AsRef<Path>) -> Option<Outcome> {
        self.items
            .iter()
            .find(|item| item.path == path.as_ref())
            .map(|item| item.outcome)
    }

    /// True if any file was created or renewed.
    pub fn changed(&self) -> bool {
        self.items.iter().any(|item| item.outcome != Outcome::Kept)
    }
}

impl fmt::Display for ProvisionReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for item in &self.items {
            writeln!(f, "{:<8} {}", item.outcome, item.path.display())?;
        }
        Ok(())
    }
}

/// Creates or renews everything `plan` needs in `state_dir`, as of now.
pub fn provision(state_dir: &Path, plan: &ProvisionPlan) -> Result<ProvisionReport, PkiError> {
    provision_at(state_dir, plan, SystemTime::now())
}

/// `provision` with an explicit clock, so renewal can be tested.
pub fn provision_at(
    state_dir: &Path,
    plan: &ProvisionPlan,
    now: SystemTime,
) -> Result<ProvisionReport, PkiError> {
    let now = unix_seconds(now)?;
    // Check the whole plan before writing anything.
    let server_specs = server::specs(plan)?;
    for name in &plan.certificate_devices {
        device::check_name(name)?;
    }
    state_dir::ensure_private_dir(state_dir)?;

    let mut report = ProvisionReport::default();
    let ca = ca::ensure(state_dir, now, &mut report)?;
    for spec in &server_specs {
        leaf::ensure(state_dir, spec, &ca, now, &mut report)?;
    }
    for name in &plan.certificate_devices {
        device::ensure(state_dir, name, &ca, now, &mut report)?;
    }
    Ok(report)
}

/// What the TLS listener serves: the ECDSA chain and key, the optional RSA ones, and
/// the CA that client certificates must chain to.
pub struct ServerCredentials {
    pub ecdsa_chain: Vec<CertificateDer<'static>>,
    pub ecdsa_key: PrivateKeyDer<'static>,
    pub rsa: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
    pub ca: CertificateDer<'static>,
}

impl fmt::Debug for ServerCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerCredentials")
            .field("ecdsa_chain", &self.ecdsa_chain.len())
            .field("rsa", &self.rsa.is_some())
            .finish_non_exhaustive()
    }
}

/// Loads the server's credentials, checking that each key matches its certificate.
/// The RSA pair is loaded when both of its files exist. Chains hold the leaf only:
/// clients have the CA, and small TLS buffers (Tasmota) prefer short chains.
pub fn load_server_credentials(state_dir: &Path) -> Result<ServerCredentials, PkiError> {
    let ca_path = state_dir.join(CA_CERT);
    if !ca_path.exists() {
        return Err(PkiError::Missing(ca_path));
    }
    state_dir::ensure_private_dir(state_dir)?;
    let ca = read_cert(&ca_path)?;
    let (ecdsa_chain, ecdsa_key) =
        load_pair(state_dir, SERVER_CERT, SERVER_KEY, keys::KeyKind::EcdsaP256)?;
    let rsa_present =
        state_dir.join(SERVER_RSA_CERT).exists() && state_dir.join(SERVER_RSA_KEY).exists();
    let rsa = if rsa_present {
        Some(load_pair(
            state_dir,
            SERVER_RSA_CERT,
            SERVER_RSA_KEY,
            keys::KeyKind::Rsa2048,
        )?)
    } else {
        None
    };
    Ok(ServerCredentials {
        ecdsa_chain,
        ecdsa_key,
        rsa,
        ca,
    })
}

/// Tasmota's SHA-1 public-key fingerprint of the RSA server certificate (what
/// `MqttFingerprint1` wants), or `None` if there is no RSA certificate.
pub fn rsa_fingerprint_sha1(state_dir: &Path) -> Result<Option<String>, PkiError> {
    let path = state_dir.join(SERVER_RSA_CERT);
    let Some(pem) = state_dir::read_optional(&path)? else {
        return Ok(None);
    };
    let cert = existing::parse_pem(&path, &pem)?;
    Ok(rsa_key::tasmota_fingerprint(&cert.subject_public_key_info))
}

/// The directory holding device `name`'s bundle.
pub fn device_bundle_dir(state_dir: &Path, name: &str) -> PathBuf {
    state_dir.join(DEVICES_DIR).join(name)
}

fn load_pair(
    state_dir: &Path,
    cert_file: &str,
    key_file: &str,
    kind: keys::KeyKind,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), PkiError> {
    let cert_path = state_dir.join(cert_file);
    let key_path = state_dir.join(key_file);
    for path in [&cert_path, &key_path] {
        if !path.exists() {
            return Err(PkiError::Missing(path.clone()));
        }
    }
    let cert = read_cert(&cert_path)?;
    let parsed = existing::parse_der(&cert_path, cert.clone())?;
    let key_pair = keys::load(&key_path, kind)?;
    if key_pair.subject_public_key_info() != parsed.subject_public_key_info {
        return Err(PkiError::BadKey {
            path: key_path,
            reason: format!("does not match {}", cert_path.display()),
        });
    }
    let key =
        PrivateKeyDer::try_from(key_pair.serialize_der()).map_err(|reason| PkiError::BadKey {
            path: key_path.clone(),
            reason: reason.to_owned(),
        })?;
    Ok((vec![cert], key))
}

fn read_cert(path: &Path) -> Result<CertificateDer<'static>, PkiError> {
    let pem = std::fs::read(path).map_err(state_dir::io_error(path))?;
    CertificateDer::from_pem_slice(&pem).map_err(|e| PkiError::BadCertificate {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

fn unix_seconds(time: SystemTime) -> Result<i64, PkiError> {
    let secs = time
        .duration_since(UNIX_EPOCH)
        .map_err(|_| PkiError::Clock)?
        .as_secs();
    i64::try_from(secs).map_err(|_| PkiError::Clock)
}

/// `n` random bytes as lowercase hex.
fn random_hex(n: usize) -> Result<String, PkiError> {
    let mut bytes = vec![0u8; n];
    getrandom::fill(&mut bytes).map_err(|e| PkiError::Random(e.to_string()))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// The validity window of a certificate being issued, in Unix seconds.
struct Validity {
    not_before: i64,
    not_after: i64,
}

/// Latest moment X.509 can express (9999-12-31T23:59:59Z).
const MAX_X509_TIME: i64 = 253_402_300_799;

impl Validity {
    /// From a day before `now` (see `BACKDATE`) to `days` days after it.
    fn days(now: i64, days: u64) -> Self {
        let backdate = BACKDATE.as_secs() as i64;
        let span = i64::try_from(days.saturating_mul(86_400)).unwrap_or(i64::MAX);
        Validity {
            not_before: now.saturating_sub(backdate).max(0),
            not_after: now.saturating_add(span),
        }
    }

    /// Sets the validity and a fresh random serial number (rcgen's default serial is
    /// derived from the key, and a renewed certificate keeps its key).
    fn apply(&self, params: &mut CertificateParams) -> Result<(), PkiError> {
        if self.not_after > MAX_X509_TIME {
            return Err(PkiError::Clock);
        }
        let epoch = rcgen::date_time_ymd(1970, 1, 1);
        let at = |secs: i64| -> Result<_, PkiError> {
            let secs = u64::try_from(secs).map_err(|_| PkiError::Clock)?;
            Ok(epoch + Duration::from_secs(secs))
        };
        params.not_before = at(self.not_before)?;
        params.not_after = at(self.not_after)?;
        let mut serial = [0u8; 16];
        getrandom::fill(&mut serial).map_err(|e| PkiError::Random(e.to_string()))?;
        serial[0] &= 0x7f; // positive
        serial[0] |= 0x01; // and minimally encoded at 16 bytes
        params.serial_number = Some(SerialNumber::from_slice(&serial));
        Ok(())
    }
}

#[cfg(test)]
mod tests;
