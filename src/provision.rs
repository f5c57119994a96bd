//! Provisioning the state directory from a compiled policy, the one path `moat serve`
//! (at start and on reload), `moat firstboot` and `moat provision` all take: the PKI
//! plan (the manifest's names and addresses plus what this machine knows about
//! itself), the certificates (`pki::provision`), and the argon2id hashes of
//! `password_file` secrets (`auth::hash_for_secret_file`), with one report of what was
//! created, renewed or kept (firstboot leaves the hashes to serve, see
//! [`PasswordFiles`]). It writes only inside the state directory; it does not
//! print, and knows nothing of the broker.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crate::auth::{SecretFileError, hash_for_secret_file};
use crate::machine::Machine;
use crate::pki::{self, Outcome, PkiError, ProvisionPlan, ProvisionReport, ReportItem};
use crate::policy::{Credential, Policy};

#[derive(Debug, thiserror::Error)]
pub enum ProvisionError {
    #[error("provisioning {}: {source}", .state.display())]
    Pki {
        state: PathBuf,
        #[source]
        source: PkiError,
    },
    #[error("hashing the password file of {name}: {source}")]
    SecretFile {
        name: String,
        #[source]
        source: SecretFileError,
    },
}

/// Whether a run hashes `password_file` secrets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PasswordFiles {
    /// Hash every secret (`serve`, `moat provision`).
    Hash,
    /// Leave them to `serve`: on the appliance they are the broker service's systemd
    /// credentials (`/run/credentials/moat.service/...`), which no other unit can read
    /// (`firstboot`).
    Leave,
}

/// What one provisioning run did and produced.
#[derive(Debug, Clone, Default)]
pub struct Provisioned {
    /// Every file looked after: certificates first, then `hashes/<name>.phc`.
    pub report: ProvisionReport,
    /// The argon2id hash of each `password_file` identity's secret, by name.
    pub file_hashes: HashMap<String, String>,
}

/// What the state directory must contain for `policy`: the server certificate's
/// names and addresses (plus this machine's `.local` name and its current LAN
/// addresses), the RSA server key if a role needs one, and one client bundle per
/// `certificate: true` device. A certificate so follows the address people type even
/// when DHCP gave the appliance one nobody wrote into the manifest (re-issued with
/// the same key, so a pinned fingerprint stays valid).
pub fn plan(policy: &Policy) -> ProvisionPlan {
    let machine = Machine::detect();
    let mut addresses = policy.addresses.clone();
    for address in machine.addresses {
        if !addresses.contains(&address) {
            addresses.push(address);
        }
    }
    ProvisionPlan {
        hostnames: policy.hostnames.clone(),
        machine_name: machine.name,
        addresses,
        rsa_server_key: policy.needs_rsa_server_key(),
        certificate_devices: policy
            .certificate_devices()
            .into_iter()
            .map(str::to_owned)
            .collect(),
    }
}

/// Creates or renews the certificates `policy` needs in `state` for this machine now
/// (its names and addresses, see [`plan`]), and nothing else.
pub fn certificates(state: &Path, policy: &Policy) -> Result<ProvisionReport, ProvisionError> {
    pki::provision(state, &plan(policy)).map_err(|source| ProvisionError::Pki {
        state: state.to_path_buf(),
        source,
    })
}

/// Creates or renews what `policy` needs in `state`: certificates, then (unless told
/// to leave them) the hash of every `password_file` secret, re-hashed only when the
/// secret changed.
pub fn provision(
    state: &Path,
    policy: &Policy,
    password_files: PasswordFiles,
) -> Result<Provisioned, ProvisionError> {
    let mut report = certificates(state, policy)?;
    let mut file_hashes = HashMap::new();
    if password_files == PasswordFiles::Leave {
        return Ok(Provisioned {
            report,
            file_hashes,
        });
    }
    for identity in policy.identities() {
        let Credential::PasswordFile(secret) = &identity.credential else {
            continue;
        };
        let name = &identity.name;
        let relative = PathBuf::from("hashes").join(format!("{name}.phc"));
        let before = std::fs::read(state.join(&relative)).ok();
        let hash = hash_for_secret_file(state, name, secret).map_err(|source| {
            ProvisionError::SecretFile {
                name: name.clone(),
                source,
            }
        })?;
        let after = std::fs::read(state.join(&relative)).ok();
        let outcome = match before {
            None => Outcome::Created,
            Some(before) if Some(&before) != after.as_ref() => Outcome::Renewed,
            Some(_) => Outcome::Kept,
        };
        report.items.push(ReportItem {
            path: relative,
            outcome,
        });
        file_hashes.insert(name.clone(), hash);
    }
    Ok(Provisioned {
        report,
        file_hashes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::{LoadOptions, parse_str};

    fn policy(secret: &Path) -> Policy {
        let text = format!(
            "version: 1\nbroker:\n  hostnames: [moat.home.arpa]\n\
             users:\n  zigbee2mqtt:\n    password_file: {}\n    role: observer\n\
             devices:\n  sensor:\n    certificate: true\n    role: tasmota\n",
            secret.display()
        );
        let loaded = parse_str(&text, "t.yaml", LoadOptions::default()).unwrap();
        Policy::compile(&loaded.manifest).unwrap()
    }

    #[test]
    fn provisions_certificates_and_password_files_and_reports_them() {
        let root = tempfile::tempdir().unwrap();
        let state = root.path().join("state");
        let secret = root.path().join("z2m-secret");
        std::fs::write(&secret, "s3cret\n").unwrap();
        let policy = policy(&secret);

        let first = provision(&state, &policy, PasswordFiles::Hash).unwrap();
        assert_eq!(
            first.report.outcome_of("hashes/zigbee2mqtt.phc"),
            Some(Outcome::Created)
        );
        assert_eq!(
            first.report.outcome_of("server.pem"),
            Some(Outcome::Created)
        );
        assert_eq!(
            first.report.outcome_of("server-rsa.pem"),
            Some(Outcome::Created),
            "{}",
            first.report
        );
        let hash = &first.file_hashes["zigbee2mqtt"];
        assert!(crate::auth::verify_password(hash, b"s3cret").unwrap());

        let second = provision(&state, &policy, PasswordFiles::Hash).unwrap();
        assert!(!second.report.changed(), "{}", second.report);
        assert_eq!(&second.file_hashes["zigbee2mqtt"], hash);

        std::fs::write(&secret, "changed").unwrap();
        let third = provision(&state, &policy, PasswordFiles::Hash).unwrap();
        assert_eq!(
            third.report.outcome_of("hashes/zigbee2mqtt.phc"),
            Some(Outcome::Renewed)
        );
    }

    #[test]
    fn a_missing_password_file_names_the_identity() {
        let root = tempfile::tempdir().unwrap();
        let policy = policy(&root.path().join("nonexistent"));
        let state = root.path().join("state");
        let err = provision(&state, &policy, PasswordFiles::Hash).unwrap_err();
        assert!(
            matches!(&err, ProvisionError::SecretFile { name, .. } if name == "zigbee2mqtt"),
            "{err}"
        );
        // firstboot leaves password files to serve: certificates only, no error.
        let certificates_only = provision(&state, &policy, PasswordFiles::Leave).unwrap();
        assert!(certificates_only.file_hashes.is_empty());
        assert_eq!(
            certificates_only
                .report
                .outcome_of("hashes/zigbee2mqtt.phc"),
            None
        );
    }
}
