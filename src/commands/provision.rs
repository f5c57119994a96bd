//! `moat provision`: turn the manifest into a `ProvisionPlan`, create or renew the
//! certificates (`pki::provision`), hash `password_file` secrets into the state
//! directory (`auth::secret_file`), and report per file what was created, renewed or
//! kept, plus the Tasmota fingerprint when an RSA server key exists. `--json` prints
//! the same as one JSON object.

use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::Serialize;

use crate::auth::hash_for_secret_file;
use crate::cli::GlobalArgs;
use crate::commands::{EXIT_FINDING, EXIT_OK};
use crate::pki::{self, Outcome, ProvisionPlan, ProvisionReport, ReportItem};
use crate::policy::{Credential, Policy, provision_plan};

/// What provisioning needs from the manifest.
#[derive(Debug, Clone, Default)]
pub struct ProvisionInputs {
    pub plan: ProvisionPlan,
    /// `(identity name, secret file)` for every `password_file` identity.
    pub password_files: Vec<(String, PathBuf)>,
}

pub fn run(global: &GlobalArgs) -> anyhow::Result<u8> {
    let (policy, warnings) = match Policy::load(&global.manifest) {
        Ok(loaded) => loaded,
        Err(err) => {
            eprintln!("{err}");
            return Ok(EXIT_FINDING);
        }
    };
    for warning in &warnings {
        eprintln!("{}: {warning}", global.manifest.display());
    }
    let summary = provision_state(&global.state, &ProvisionInputs::from_policy(&policy))?;
    if global.json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        print!("{}", summary.human());
    }
    Ok(EXIT_OK)
}

impl ProvisionInputs {
    /// What a compiled manifest asks of the state directory.
    pub fn from_policy(policy: &Policy) -> Self {
        let plan = provision_plan(policy);
        let password_files = policy
            .identities()
            .filter_map(|identity| match &identity.credential {
                Credential::PasswordFile(path) => Some((identity.name.clone(), path.clone())),
                _ => None,
            })
            .collect();
        ProvisionInputs {
            plan,
            password_files,
        }
    }
}

/// The result of a provisioning run, as printed.
#[derive(Debug, Serialize)]
pub struct ProvisionSummary {
    pub state: PathBuf,
    #[serde(flatten)]
    pub report: ProvisionReport,
    /// Tasmota's SHA-1 public-key fingerprint of the RSA server key, if there is one.
    pub tasmota_fingerprint: Option<String>,
}

impl ProvisionSummary {
    fn human(&self) -> String {
        let mut out = format!("state directory {}\n{}", self.state.display(), self.report);
        if let Some(fingerprint) = &self.tasmota_fingerprint {
            out.push_str(&format!(
                "\nTasmota devices pin the RSA server key (`moat export NAME` prints the whole\n\
                 Backlog line):\n  SetOption103 1; SetOption132 1; MqttFingerprint1 {fingerprint}\n"
            ));
        }
        out
    }
}

/// Provisions certificates and password-file hashes in `state` for `inputs`.
pub fn provision_state(state: &Path, inputs: &ProvisionInputs) -> anyhow::Result<ProvisionSummary> {
    let mut report = pki::provision(state, &inputs.plan)
        .with_context(|| format!("provisioning {}", state.display()))?;
    for (name, secret) in &inputs.password_files {
        let relative = PathBuf::from("hashes").join(format!("{name}.phc"));
        let before = std::fs::read(state.join(&relative)).ok();
        hash_for_secret_file(state, name, secret)
            .with_context(|| format!("hashing the password file of {name}"))?;
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
    }
    let tasmota_fingerprint = pki::rsa_fingerprint_sha1(state)?;
    Ok(ProvisionSummary {
        state: state.to_path_buf(),
        report,
        tasmota_fingerprint,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn provisions_certificates_and_password_files_and_reports_them() {
        let root = tempfile::tempdir().unwrap();
        let state = root.path().join("state");
        let secret = root.path().join("z2m-secret");
        std::fs::write(&secret, "s3cret\n").unwrap();
        let inputs = ProvisionInputs {
            plan: ProvisionPlan {
                hostnames: vec!["moat.home.arpa".into()],
                rsa_server_key: true,
                certificate_devices: vec!["sensor".into()],
                ..ProvisionPlan::default()
            },
            password_files: vec![("zigbee2mqtt".into(), secret.clone())],
        };
        let first = provision_state(&state, &inputs).unwrap();
        assert_eq!(
            first.report.outcome_of("hashes/zigbee2mqtt.phc"),
            Some(Outcome::Created)
        );
        let human = first.human();
        assert!(human.contains("created  server.pem"), "{human}");
        assert!(human.contains("MqttFingerprint1 "), "{human}");

        let second = provision_state(&state, &inputs).unwrap();
        assert!(!second.report.changed(), "{}", second.report);

        std::fs::write(&secret, "changed").unwrap();
        let third = provision_state(&state, &inputs).unwrap();
        assert_eq!(
            third.report.outcome_of("hashes/zigbee2mqtt.phc"),
            Some(Outcome::Renewed)
        );

        let json = serde_json::to_value(&third).unwrap();
        assert_eq!(
            json["tasmota_fingerprint"],
            second.tasmota_fingerprint.unwrap()
        );
        assert!(json["items"].as_array().unwrap().len() >= 9);
    }
}
