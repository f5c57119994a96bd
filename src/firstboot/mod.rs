//! The appliance's first boot (and every boot after: it is idempotent). From the SD
//! card's FAT partition it restores a `moat backup` archive into an empty state
//! directory (then overwrites and deletes the archive: it holds private keys), imports
//! `moat.yaml` (plaintext `password:` values hashed, the result validated, installed
//! atomically, and the card's copy overwritten in place with the hashed text), then
//! provisions the PKI and writes the CA certificate and a setup report back to the
//! card. A run with nothing new on the card writes nothing. If a step fails, the error
//! is written to `moat-error.txt` on the card, where a user without a console can
//! read it, and so is what a finished run needs the user for (a backup it would not
//! restore, a card file under a near-miss name such as `moat.yaml.txt`). It does not
//! touch Wi-Fi settings (a shell step of the NixOS module does) and does not start
//! the broker.
//!
//! Card files: `moat.yaml` (in), `moat-backup.tar` (in, deleted after restore),
//! `moat-ca.pem`, `moat-setup.txt` and `moat-error.txt` (out).

mod card;
mod import;
mod names;
mod setup;

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use serde::Serialize;
use sha2::{Digest, Sha256};

pub use card::{CardWrite, overwrite_in_place, shred_and_remove, write_if_changed};
pub use import::{Hashed, ImportError, hash_plaintext_passwords};
pub use names::Misnamed;

use crate::backup::{self, BackupError, RestoreReport};
use crate::export::ExportError;
use crate::manifest::{ManifestError, Warning, read_text, write_atomically};
use crate::pki::state_dir::{StateDirError, ensure_private_dir, read_optional, write_private};
use crate::pki::{self, PkiError, ProvisionReport};
use crate::policy::Policy;
use crate::provision::{self, PasswordFiles, ProvisionError};

/// The manifest the user puts on the card.
pub const CARD_MANIFEST: &str = "moat.yaml";
/// A `moat backup` archive to restore on a fresh card.
pub const CARD_BACKUP: &str = "moat-backup.tar";
/// The CA certificate, for clients to trust.
pub const CARD_CA: &str = "moat-ca.pem";
/// The setup report.
pub const CARD_SETUP: &str = "moat-setup.txt";
/// Why the last run failed, or what it needs the user for (removed again by a run
/// that needs nothing).
pub const CARD_ERROR: &str = "moat-error.txt";
/// The Wi-Fi settings, which the NixOS module's own step moves off the card; named
/// here only to recognise a near miss of the name.
pub const CARD_WIFI: &str = "wpa_supplicant.conf";
/// In the state directory: the SHA-256 of the card manifest last imported, so a card
/// left unchanged never overrides later edits of the installed manifest.
pub const IMPORT_STAMP: &str = "firstboot-import.sha256";

/// Where things are.
#[derive(Debug, Clone)]
pub struct Paths {
    /// The mounted FAT partition.
    pub boot: PathBuf,
    /// The state directory.
    pub state: PathBuf,
    /// The installed manifest.
    pub manifest: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum FirstbootError {
    #[error("restoring {}: {source}", .archive.display())]
    Restore {
        archive: PathBuf,
        #[source]
        source: BackupError,
    },
    #[error("importing {}:\n{source}", .card.display())]
    Import {
        card: PathBuf,
        #[source]
        source: ImportError,
    },
    #[error("{0}")]
    Manifest(#[from] ManifestError),
    #[error(transparent)]
    StateDir(#[from] StateDirError),
    #[error("{0}")]
    Provision(#[from] ProvisionError),
    #[error("provisioning: {0}")]
    Pki(#[from] PkiError),
    #[error("writing the setup report: {0}")]
    Export(#[from] ExportError),
    #[error("{}: {source}", .path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "no manifest: put a moat.yaml on the boot partition ({}) and boot again{}",
        .boot.display(),
        .misnamed.iter().map(|m| format!("\n{m}")).collect::<String>()
    )]
    NoManifest {
        boot: PathBuf,
        misnamed: Vec<Misnamed>,
    },
}

fn io_at(path: &Path) -> impl FnOnce(io::Error) -> FirstbootError + '_ {
    move |source| FirstbootError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// What happened to the card's manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "outcome")]
pub enum Import {
    /// The card holds no `moat.yaml`; the installed manifest is used as it is.
    NothingOnCard,
    /// The card's `moat.yaml` is the one imported last time.
    AlreadyImported,
    /// Imported: these identities' plaintext passwords were hashed (and scrubbed from
    /// the card); `installed` says whether the installed manifest changed.
    Imported {
        hashed: Vec<String>,
        installed: bool,
    },
}

/// Everything one run did.
#[derive(Debug, Clone, Serialize)]
pub struct FirstbootReport {
    pub restored: Option<RestoreReport>,
    pub import: Import,
    pub provisioned: ProvisionReport,
    pub ca_fingerprint_sha256: String,
    pub ca_written: bool,
    pub setup_written: bool,
    /// Non-fatal manifest warnings.
    pub warnings: Vec<String>,
    /// Things left undone that need the user (the command exits 1).
    pub refusals: Vec<String>,
}

impl FirstbootReport {
    /// True if this run changed no file.
    pub fn changed_nothing(&self) -> bool {
        self.restored.is_none()
            && !matches!(self.import, Import::Imported { .. })
            && !self.provisioned.changed()
            && !self.ca_written
            && !self.setup_written
    }
}

/// Runs the first-boot import. On failure the error is also written to the card, and
/// so are the refusals of a run that finished.
pub fn run(paths: &Paths) -> Result<FirstbootReport, FirstbootError> {
    let result = run_steps(paths);
    let error_file = paths.boot.join(CARD_ERROR);
    let text = match &result {
        Ok(report) if report.refusals.is_empty() => None,
        Ok(report) => Some(format!(
            "moat firstboot finished, but needs you:\n\n{}",
            report
                .refusals
                .iter()
                .map(|refusal| format!("- {refusal}\n"))
                .collect::<String>()
        )),
        Err(e) => Some(format!("moat firstboot failed:\n\n{e}\n")),
    };
    // Best effort: the same text also goes to the journal through the caller.
    match text {
        Some(text) => {
            let _ = write_if_changed(&error_file, text.as_bytes());
        }
        None if error_file.exists() => {
            let _ = fs::remove_file(&error_file);
        }
        None => {}
    }
    result
}

fn run_steps(paths: &Paths) -> Result<FirstbootReport, FirstbootError> {
    let mut refusals = Vec::new();
    let restored = restore_from_card(paths, &mut refusals)?;
    ensure_private_dir(&paths.state)?;
    let import = import_card_manifest(paths)?;
    let misnamed = names::misnamed(&paths.boot).map_err(io_at(&paths.boot))?;
    if !paths.manifest.exists() {
        return Err(FirstbootError::NoManifest {
            boot: paths.boot.clone(),
            misnamed,
        });
    }
    refusals.extend(misnamed.iter().map(ToString::to_string));
    let (policy, warnings) = Policy::load(&paths.manifest)?;
    // Secret files are the broker service's credentials, unreadable here.
    let provisioned = provision::provision(&paths.state, &policy, PasswordFiles::Leave)?.report;

    let ca_path = paths.state.join(pki::CA_CERT);
    let ca_pem = fs::read(&ca_path).map_err(io_at(&ca_path))?;
    let ca_fingerprint_sha256 = sha256_fingerprint(&ca_path, &ca_pem)?;
    let card_ca = paths.boot.join(CARD_CA);
    let ca_written = write_if_changed(&card_ca, &ca_pem).map_err(io_at(&card_ca))?;
    let setup_text = setup::render(
        &policy,
        &paths.state,
        CARD_CA,
        &ca_fingerprint_sha256,
        &warnings,
    )?;
    let card_setup = paths.boot.join(CARD_SETUP);
    let setup_written =
        write_if_changed(&card_setup, setup_text.as_bytes()).map_err(io_at(&card_setup))?;
    Ok(FirstbootReport {
        restored,
        import,
        provisioned,
        ca_fingerprint_sha256,
        ca_written: ca_written == CardWrite::Written,
        setup_written: setup_written == CardWrite::Written,
        warnings: warnings.iter().map(Warning::to_string).collect(),
        refusals,
    })
}

/// Restores the card's backup archive into an empty state directory, then overwrites
/// and deletes the archive. With a non-empty state directory nothing is restored and
/// the archive stays (it is the user's), with a refusal saying so.
fn restore_from_card(
    paths: &Paths,
    refusals: &mut Vec<String>,
) -> Result<Option<RestoreReport>, FirstbootError> {
    let archive = paths.boot.join(CARD_BACKUP);
    if !archive.is_file() {
        return Ok(None);
    }
    let restore_error = |source| FirstbootError::Restore {
        archive: archive.clone(),
        source,
    };
    if !backup::state_is_empty(&paths.state).map_err(restore_error)? {
        refusals.push(format!(
            "{} was not restored: the state directory {} is not empty (a backup is only \
             restored onto a fresh installation). The archive holds private keys: delete \
             it from the card.",
            archive.display(),
            paths.state.display()
        ));
        return Ok(None);
    }
    let report = backup::restore(&archive, &paths.state, &paths.manifest).map_err(restore_error)?;
    shred_and_remove(&archive).map_err(io_at(&archive))?;
    Ok(Some(report))
}

/// Imports the card's `moat.yaml` unless it is the one imported last time (and the
/// installed manifest exists).
fn import_card_manifest(paths: &Paths) -> Result<Import, FirstbootError> {
    let card = paths.boot.join(CARD_MANIFEST);
    let text = match read_text(&card) {
        Ok(text) => text,
        Err(ManifestError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
            return Ok(Import::NothingOnCard);
        }
        Err(e) => return Err(e.into()),
    };
    let stamp_path = paths.state.join(IMPORT_STAMP);
    let stamp = read_optional(&stamp_path)?;
    if paths.manifest.exists() && stamp.as_deref() == Some(stamp_line(&text).as_bytes()) {
        return Ok(Import::AlreadyImported);
    }
    let hashed =
        hash_plaintext_passwords(&text, &card.display().to_string()).map_err(|source| {
            FirstbootError::Import {
                card: card.clone(),
                source,
            }
        })?;
    let installed_now = fs::read_to_string(&paths.manifest).ok();
    let installed = installed_now.as_deref() != Some(hashed.text.as_str());
    if installed {
        write_atomically(&paths.manifest, &hashed.text).map_err(io_at(&paths.manifest))?;
    }
    // Scrub: the card's copy becomes the hashed text, written over the same clusters.
    if hashed.text != text {
        overwrite_in_place(&card, hashed.text.as_bytes()).map_err(io_at(&card))?;
    }
    write_private(&stamp_path, stamp_line(&hashed.text).as_bytes())?;
    Ok(Import::Imported {
        hashed: hashed.hashed,
        installed,
    })
}

fn stamp_line(text: &str) -> String {
    format!("{}\n", hex(&Sha256::digest(text.as_bytes()), ""))
}

fn hex(bytes: &[u8], separator: &str) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(separator)
}

/// The SHA-256 fingerprint of a PEM certificate as `AB:CD:...` (what
/// `openssl x509 -noout -fingerprint -sha256` prints).
pub fn sha256_fingerprint(path: &Path, pem: &[u8]) -> Result<String, PkiError> {
    let der = CertificateDer::from_pem_slice(pem).map_err(|e| PkiError::BadCertificate {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    Ok(hex(&Sha256::digest(der.as_ref()), ":"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_are_colon_separated_uppercase_sha256() {
        let root = tempfile::tempdir().unwrap();
        let state = root.path().join("state");
        pki::provision(&state, &pki::ProvisionPlan::default()).unwrap();
        let pem = fs::read(state.join(pki::CA_CERT)).unwrap();
        let fp = sha256_fingerprint(Path::new("ca.pem"), &pem).unwrap();
        assert_eq!(fp.len(), 32 * 3 - 1);
        assert!(
            fp.split(':').all(|b| b.len() == 2
                && b.chars()
                    .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_lowercase())),
            "{fp}"
        );
        assert!(sha256_fingerprint(Path::new("x"), b"not pem").is_err());
    }

    #[test]
    fn the_stamp_is_the_sha256_of_the_text() {
        assert_eq!(
            stamp_line(""),
            "E3B0C44298FC1C149AFBF4C8996FB92427AE41E4649B934CA495991B7852B855\n"
        );
    }
}
