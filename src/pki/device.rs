//! Client certificates for devices that authenticate by certificate: an ECDSA P-256
//! key and a certificate with CN = the device name and the clientAuth usage, valid two
//! years, in a bundle `devices/<name>/{cert.pem,key.pem,ca.pem}` ready to copy onto the
//! device.

use std::path::Path;

use rcgen::ExtendedKeyUsagePurpose;

use super::ca::Ca;
use super::keys::KeyKind;
use super::leaf::{self, LeafSpec};
use super::state_dir::{self, WriteOutcome};
use super::{DEVICES_DIR, Outcome, PkiError, ProvisionReport};

pub const DEVICE_LIFETIME_DAYS: u64 = 730;

/// Device names become directory names and certificate CNs: `[A-Za-z0-9._-]{1,64}`,
/// and not `.` or `..`.
pub fn check_name(name: &str) -> Result<(), PkiError> {
    if state_dir::is_safe_entry_name(name) {
        Ok(())
    } else {
        Err(PkiError::BadDeviceName(name.to_owned()))
    }
}

/// Makes sure the bundle of device `name` exists and is current.
pub fn ensure(
    state: &Path,
    name: &str,
    ca: &Ca,
    now: i64,
    report: &mut ProvisionReport,
) -> Result<(), PkiError> {
    check_name(name)?;
    let dir = format!("{DEVICES_DIR}/{name}");
    state_dir::ensure_private_dir(&state.join(DEVICES_DIR))?;
    state_dir::ensure_private_dir(&state.join(&dir))?;
    let spec = LeafSpec {
        cert_file: format!("{dir}/cert.pem"),
        key_file: format!("{dir}/key.pem"),
        key_kind: KeyKind::EcdsaP256,
        common_name: name.to_owned(),
        names: Vec::new(),
        usage: ExtendedKeyUsagePurpose::ClientAuth,
        lifetime_days: DEVICE_LIFETIME_DAYS,
    };
    leaf::ensure(state, &spec, ca, now, report)?;

    let ca_file = format!("{dir}/ca.pem");
    let ca_path = state.join(&ca_file);
    let existed = ca_path.exists();
    let outcome = match state_dir::write_public(&ca_path, ca.pem.as_bytes())? {
        WriteOutcome::Unchanged => Outcome::Kept,
        WriteOutcome::Written if existed => Outcome::Renewed,
        WriteOutcome::Written => Outcome::Created,
    };
    report.push(&ca_file, outcome);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_that_could_escape_the_bundle_directory_are_refused() {
        for bad in ["", ".", "..", "a/b", "../x", "x y", "é", &"a".repeat(65)] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
        for good in ["kitchen-sensor", "plug_1", "esp.32", "A9"] {
            check_name(good).unwrap();
        }
    }
}
