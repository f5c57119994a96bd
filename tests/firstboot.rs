//! `moat firstboot` through the real binary, with temporary directories standing in
//! for the SD card's FAT partition and the state directory.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::SystemTime;

use argon2::password_hash::PasswordVerifier;
use argon2::password_hash::phc::PasswordHash;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use sha2::{Digest, Sha256};

mod common;

use common::cli::{ok, run_moat, walk};

const HA_PASSWORD: &str = "correct horse battery staple";
const PLUG_PASSWORD: &str = "plug-Secret-4711";

fn card_manifest() -> String {
    format!(
        "version: 1\n\
         # my home broker\n\
         broker:\n  hostnames: [moat.home.arpa]\n\
         users:\n  homeassistant:\n    role: homeassistant   # the hub\n    password: \"{HA_PASSWORD}\"\n\
         devices:\n  # the kitchen plug\n  plug-1:\n    role: tasmota\n    password: {PLUG_PASSWORD}\n\
         \x20 sensor:\n    certificate: true\n    publish: [\"sensors/kitchen/#\"]\n"
    )
}

struct Appliance {
    _root: tempfile::TempDir,
    card: PathBuf,
    state: PathBuf,
    manifest: PathBuf,
}

impl Appliance {
    /// A card directory and a not-yet-existing state directory (as on a fresh image
    /// the NixOS module's tmpfiles rule would create it empty; both are tested).
    fn new() -> Self {
        let root = tempfile::tempdir().unwrap();
        let card = root.path().join("boot");
        fs::create_dir(&card).unwrap();
        let state = root.path().join("var-lib-moat");
        let manifest = state.join("moat.yaml");
        Appliance {
            _root: root,
            card,
            state,
            manifest,
        }
    }

    fn firstboot(&self) -> Output {
        self.moat(&["firstboot", "--boot", self.card.to_str().unwrap()])
    }

    fn moat(&self, args: &[&str]) -> Output {
        run_moat(&self.manifest, &self.state, args)
    }
}

/// Every file under `dir`: relative path -> (content, mtime).
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, (Vec<u8>, SystemTime)> {
    walk(dir)
        .into_iter()
        .filter(|entry| !entry.meta.is_dir())
        .map(|entry| {
            let content = fs::read(&entry.path).unwrap();
            (entry.relative, (content, entry.meta.modified().unwrap()))
        })
        .collect()
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|window| window == needle.as_bytes())
}

fn verifies(phc: &str, password: &str) -> bool {
    let hash = PasswordHash::new(phc).unwrap();
    argon2::Argon2::default()
        .verify_password(password.as_bytes(), &hash)
        .is_ok()
}

fn ca_fingerprint(pem: &[u8]) -> String {
    let der = CertificateDer::from_pem_slice(pem).unwrap();
    Sha256::digest(der.as_ref())
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// The `password_hash` value of `name` in manifest text.
fn hash_of(text: &str, name: &str) -> String {
    let after = &text[text.find(&format!("  {name}:\n")).unwrap()..];
    let line = after
        .lines()
        .find(|l| l.trim_start().starts_with("password_hash:"))
        .unwrap();
    line.split('"').nth(1).unwrap().to_string()
}

#[test]
fn imports_hashes_scrubs_provisions_and_is_idempotent() {
    let app = Appliance::new();
    fs::write(app.card.join("moat.yaml"), card_manifest()).unwrap();
    fs::write(app.card.join("config.txt"), "arm_64bit=1\n").unwrap();

    let stdout = ok(&app.firstboot());
    assert!(stdout.contains("homeassistant, plug-1"), "{stdout}");

    // No plaintext left anywhere on the card.
    let card = snapshot(&app.card);
    for (path, (bytes, _)) in &card {
        for password in [HA_PASSWORD, PLUG_PASSWORD] {
            assert!(
                !contains(bytes, password),
                "{} still holds a password",
                path.display()
            );
        }
    }
    // Nor in the state directory.
    for (path, (bytes, _)) in snapshot(&app.state) {
        for password in [HA_PASSWORD, PLUG_PASSWORD] {
            assert!(!contains(&bytes, password), "{}", path.display());
        }
    }

    // The installed manifest: argon2id hashes of the original passwords, comments kept.
    let installed = fs::read_to_string(&app.manifest).unwrap();
    let ha_hash = hash_of(&installed, "homeassistant");
    let plug_hash = hash_of(&installed, "plug-1");
    assert!(ha_hash.starts_with("$argon2id$"), "{ha_hash}");
    assert!(verifies(&ha_hash, HA_PASSWORD));
    assert!(verifies(&plug_hash, PLUG_PASSWORD));
    assert!(!verifies(&plug_hash, HA_PASSWORD));
    for comment in [
        "# my home broker\n",
        "role: homeassistant   # the hub\n",
        "  # the kitchen plug\n",
    ] {
        assert!(
            installed.contains(comment),
            "{comment:?} lost:\n{installed}"
        );
    }
    use std::os::unix::fs::PermissionsExt;
    let mode = fs::metadata(&app.manifest).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    // The card keeps the hashed manifest (so the user can edit it again).
    assert_eq!(
        fs::read_to_string(app.card.join("moat.yaml")).unwrap(),
        installed
    );
    // The normal, strict loader accepts what was installed.
    ok(&app.moat(&["check"]));

    // CA and setup report on the card.
    let ca = fs::read(app.state.join("ca.pem")).unwrap();
    assert_eq!(fs::read(app.card.join("moat-ca.pem")).unwrap(), ca);
    let setup = fs::read_to_string(app.card.join("moat-setup.txt")).unwrap();
    assert!(setup.contains(&ca_fingerprint(&ca)), "{setup}");
    assert!(setup.contains("moat.home.arpa"), "{setup}");
    assert!(setup.contains("8883"), "{setup}");
    assert!(setup.contains("MqttFingerprint1 "), "{setup}");
    assert!(setup.contains("3.1.1"), "{setup}");
    assert!(!setup.contains("$argon2"), "{setup}");
    assert!(!setup.contains("PRIVATE KEY"), "{setup}");
    assert!(!app.card.join("moat-error.txt").exists());

    // A second run changes nothing at all.
    let state_before = snapshot(&app.state);
    let card_before = snapshot(&app.card);
    let stdout = ok(&app.firstboot());
    assert!(stdout.contains("nothing changed"), "{stdout}");
    assert_eq!(snapshot(&app.card), card_before);
    assert_eq!(snapshot(&app.state), state_before);
}

#[test]
fn a_later_edit_on_the_card_is_imported_but_an_unchanged_card_never_overrides() {
    let app = Appliance::new();
    fs::write(app.card.join("moat.yaml"), card_manifest()).unwrap();
    ok(&app.firstboot());

    // An edit of the installed manifest (as `moat passwd --write` over SSH would do)
    // survives a reboot with the old card.
    let installed = fs::read_to_string(&app.manifest).unwrap();
    let edited = installed.replace("# my home broker", "# edited on the device");
    fs::write(&app.manifest, &edited).unwrap();
    ok(&app.firstboot());
    assert_eq!(fs::read_to_string(&app.manifest).unwrap(), edited);

    // A new plaintext password put on the card is imported and scrubbed.
    let card_text = fs::read_to_string(app.card.join("moat.yaml")).unwrap();
    let old_hash = hash_of(&card_text, "plug-1");
    let new_card = card_text.replace(
        &format!("password_hash: \"{old_hash}\""),
        "password: \"a-new-plug-password\"",
    );
    fs::write(app.card.join("moat.yaml"), new_card).unwrap();
    ok(&app.firstboot());
    let installed = fs::read_to_string(&app.manifest).unwrap();
    assert!(verifies(
        &hash_of(&installed, "plug-1"),
        "a-new-plug-password"
    ));
    let card_text = fs::read_to_string(app.card.join("moat.yaml")).unwrap();
    assert!(!card_text.contains("a-new-plug-password"));
}

#[test]
fn a_backup_on_the_card_restores_the_same_ca_and_is_removed() {
    let old = Appliance::new();
    fs::write(old.card.join("moat.yaml"), card_manifest()).unwrap();
    ok(&old.firstboot());
    let old_ca = fs::read(old.state.join("ca.pem")).unwrap();

    // A fresh card and an empty state directory (as tmpfiles creates it).
    let new = Appliance::new();
    fs::create_dir(&new.state).unwrap();
    fs::set_permissions(
        &new.state,
        std::os::unix::fs::PermissionsExt::from_mode(0o700),
    )
    .unwrap();
    let archive = new.card.join("moat-backup.tar");
    ok(&old.moat(&["backup", archive.to_str().unwrap()]));
    let stdout = ok(&new.firstboot());
    assert!(stdout.contains("restored"), "{stdout}");

    assert_eq!(fs::read(new.state.join("ca.pem")).unwrap(), old_ca);
    assert_eq!(fs::read(new.card.join("moat-ca.pem")).unwrap(), old_ca);
    assert_eq!(
        fs::read(new.state.join("ca.key")).unwrap(),
        fs::read(old.state.join("ca.key")).unwrap()
    );
    assert!(
        !archive.exists(),
        "the archive with private keys stays on the card"
    );
    assert_eq!(
        fs::read_to_string(&new.manifest).unwrap(),
        fs::read_to_string(&old.manifest).unwrap()
    );
    // Nothing on the card holds a private key.
    for (path, (bytes, _)) in snapshot(&new.card) {
        assert!(!contains(&bytes, "PRIVATE KEY"), "{}", path.display());
    }
}

#[test]
fn a_backup_is_not_restored_over_an_existing_installation() {
    let app = Appliance::new();
    fs::write(app.card.join("moat.yaml"), card_manifest()).unwrap();
    ok(&app.firstboot());
    let ca = fs::read(app.state.join("ca.pem")).unwrap();
    let archive = app.card.join("moat-backup.tar");
    ok(&app.moat(&["backup", archive.to_str().unwrap()]));

    let output = app.firstboot();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("not empty"), "{stderr}");
    // Where a user without a console looks.
    let note = fs::read_to_string(app.card.join("moat-error.txt")).unwrap();
    assert!(note.contains("not empty"), "{note}");
    assert!(archive.exists(), "the user's archive is left alone");
    assert_eq!(fs::read(app.state.join("ca.pem")).unwrap(), ca);
}

#[test]
fn a_broken_card_manifest_is_reported_on_the_card_and_changes_nothing() {
    let app = Appliance::new();
    fs::write(
        app.card.join("moat.yaml"),
        "version: 1\nusers:\n  ha:\n    role: homeassistant\n    pasword: x\n",
    )
    .unwrap();
    let output = app.firstboot();
    assert_eq!(output.status.code(), Some(1));
    let error = fs::read_to_string(app.card.join("moat-error.txt")).unwrap();
    assert!(error.contains("line 5"), "{error}");
    assert!(!app.manifest.exists());
    assert!(!app.card.join("moat-ca.pem").exists());

    // Fixed: the next boot imports it and removes the error file.
    fs::write(
        app.card.join("moat.yaml"),
        "version: 1\nusers:\n  ha:\n    role: homeassistant\n    password: fixed-it-now\n",
    )
    .unwrap();
    ok(&app.firstboot());
    assert!(!app.card.join("moat-error.txt").exists());
    assert!(app.card.join("moat-ca.pem").exists());
}

#[test]
fn no_manifest_anywhere_is_an_error() {
    let app = Appliance::new();
    let output = app.firstboot();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("no manifest"), "{stderr}");
}

#[test]
fn a_card_file_under_a_near_miss_name_is_named_on_the_card_with_the_fix() {
    let app = Appliance::new();
    // Notepad's "Save as type: Text Documents" adds .txt, and Windows hides it.
    fs::write(app.card.join("moat.yaml.txt"), card_manifest()).unwrap();
    let output = app.firstboot();
    assert_eq!(output.status.code(), Some(1));
    let error = fs::read_to_string(app.card.join("moat-error.txt")).unwrap();
    assert!(
        error.contains("no manifest")
            && error.contains("moat.yaml.txt on the card was not read: rename it to moat.yaml"),
        "{error}"
    );
    assert!(!app.manifest.exists());

    // Renamed, it is imported; a Wi-Fi file under a near-miss name is named on the
    // card and in the log, and the run still finishes (exit 1: it needs the user).
    fs::rename(app.card.join("moat.yaml.txt"), app.card.join("moat.yaml")).unwrap();
    fs::write(app.card.join("wpa_supplicant.conf.txt"), "network={\n}\n").unwrap();
    let output = app.firstboot();
    assert_eq!(output.status.code(), Some(1));
    assert!(app.manifest.exists());
    assert!(app.card.join("moat-ca.pem").exists());
    let wifi = "wpa_supplicant.conf.txt on the card was not read: rename it to wpa_supplicant.conf";
    let error = fs::read_to_string(app.card.join("moat-error.txt")).unwrap();
    assert!(
        error.contains("needs you") && error.contains(wifi),
        "{error}"
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains(wifi), "{stderr}");

    // Dealt with, the next boot needs nothing and removes the note.
    fs::remove_file(app.card.join("wpa_supplicant.conf.txt")).unwrap();
    ok(&app.firstboot());
    assert!(!app.card.join("moat-error.txt").exists());
}

#[test]
fn the_manifests_warnings_are_in_the_setup_report_on_the_card() {
    let app = Appliance::new();
    // A user with no role and no grants is valid, and a warning.
    let manifest = card_manifest().replace(
        "devices:\n",
        "  idle:\n    password: idle-Secret-0815\ndevices:\n",
    );
    assert_ne!(manifest, card_manifest());
    fs::write(app.card.join("moat.yaml"), &manifest).unwrap();
    ok(&app.firstboot());
    let setup = fs::read_to_string(app.card.join("moat-setup.txt")).unwrap();
    assert!(
        setup.contains("Warnings from moat.yaml")
            && setup.contains("idle")
            && setup.contains("has no role and no grants"),
        "{setup}"
    );
}
