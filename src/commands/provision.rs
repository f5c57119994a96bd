//! `moat provision`: provisions the state directory from the manifest (certificates
//! and `password_file` hashes, through `crate::provision`, the same path `serve` and
//! `firstboot` take) and reports per file what was created, renewed or kept, plus the
//! Tasmota fingerprint when an RSA server key exists. `--json` prints the same as one
//! JSON object. This is the CLI edge only.

use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::Serialize;

use crate::cli::GlobalArgs;
use crate::commands::{EXIT_FINDING, EXIT_OK};
use crate::pki::{self, ProvisionReport};
use crate::policy::Policy;
use crate::provision::{self, PasswordFiles};

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
    let summary = provision_state(&global.state, &policy)?;
    if global.json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        print!("{}", summary.human());
    }
    Ok(EXIT_OK)
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

/// Provisions `state` for `policy` and adds the Tasmota fingerprint.
fn provision_state(state: &Path, policy: &Policy) -> anyhow::Result<ProvisionSummary> {
    let report = provision::provision(state, policy, PasswordFiles::Hash)?.report;
    let tasmota_fingerprint = pki::rsa_fingerprint_sha1(state)
        .with_context(|| format!("reading the RSA server key in {}", state.display()))?;
    Ok(ProvisionSummary {
        state: state.to_path_buf(),
        report,
        tasmota_fingerprint,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::{LoadOptions, parse_str};
    use crate::pki::Outcome;

    #[test]
    fn the_summary_names_each_file_and_the_tasmota_fingerprint() {
        let root = tempfile::tempdir().unwrap();
        let state = root.path().join("state");
        let secret = root.path().join("z2m-secret");
        std::fs::write(&secret, "s3cret\n").unwrap();
        let text = format!(
            "version: 1\nusers:\n  zigbee2mqtt:\n    password_file: {}\n    role: observer\n\
             devices:\n  plug:\n    certificate: true\n    role: tasmota\n",
            secret.display()
        );
        let loaded = parse_str(&text, "t.yaml", LoadOptions::default()).unwrap();
        let policy = Policy::compile(&loaded.manifest).unwrap();

        let first = provision_state(&state, &policy).unwrap();
        let human = first.human();
        assert!(human.contains("created  server.pem"), "{human}");
        assert!(human.contains("MqttFingerprint1 "), "{human}");

        let second = provision_state(&state, &policy).unwrap();
        assert!(!second.report.changed(), "{}", second.report);
        let json = serde_json::to_value(&second).unwrap();
        assert_eq!(
            json["tasmota_fingerprint"],
            first.tasmota_fingerprint.unwrap()
        );
        assert_eq!(
            second.report.outcome_of("hashes/zigbee2mqtt.phc"),
            Some(Outcome::Kept)
        );
        assert!(json["items"].as_array().unwrap().len() >= 9);
    }
}
