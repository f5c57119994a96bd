//! End-to-end behaviour of `provision` on a temporary state directory.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;

use super::*;

const DAY: Duration = Duration::from_secs(86_400);

fn plan() -> ProvisionPlan {
    ProvisionPlan {
        hostnames: vec!["moat.home.arpa".into()],
        machine_name: Some("moat".into()),
        addresses: vec!["192.168.1.10".parse().unwrap()],
        rsa_server_key: true,
        certificate_devices: vec!["kitchen-sensor".into()],
    }
}

fn state() -> (tempfile::TempDir, PathBuf) {
    let root = tempfile::tempdir().unwrap();
    let state = root.path().join("state");
    (root, state)
}

/// Every file under `dir` with its content.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut files = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                files.insert(path.clone(), fs::read(&path).unwrap());
            }
        }
    }
    files
}

fn spki_of(state: &Path, cert: &str) -> Vec<u8> {
    let path = state.join(cert);
    existing::parse_pem(&path, &fs::read(&path).unwrap())
        .unwrap()
        .subject_public_key_info
}

#[test]
fn first_run_creates_everything_with_private_modes() {
    let (_root, state) = state();
    let report = provision(&state, &plan()).unwrap();
    for file in [
        CA_KEY,
        CA_CERT,
        SERVER_KEY,
        SERVER_CERT,
        SERVER_RSA_KEY,
        SERVER_RSA_CERT,
        "devices/kitchen-sensor/key.pem",
        "devices/kitchen-sensor/cert.pem",
        "devices/kitchen-sensor/ca.pem",
    ] {
        assert_eq!(report.outcome_of(file), Some(Outcome::Created), "{file}");
    }
    let mode = |p: &str| fs::metadata(state.join(p)).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(""), 0o700);
    assert_eq!(mode("devices"), 0o700);
    assert_eq!(mode("devices/kitchen-sensor"), 0o700);
    for key in [
        CA_KEY,
        SERVER_KEY,
        SERVER_RSA_KEY,
        "devices/kitchen-sensor/key.pem",
    ] {
        assert_eq!(mode(key), 0o600, "{key}");
    }
    assert_eq!(
        fs::read(state.join(CA_CERT)).unwrap(),
        fs::read(state.join("devices/kitchen-sensor/ca.pem")).unwrap()
    );
    let text = report.to_string();
    assert!(text.contains("created  server.pem"), "{text}");
}

#[test]
fn second_run_changes_nothing() {
    let (_root, state) = state();
    provision(&state, &plan()).unwrap();
    let before = snapshot(&state);
    let mtimes: Vec<_> = before
        .keys()
        .map(|p| fs::metadata(p).unwrap().modified().unwrap())
        .collect();
    let report = provision(&state, &plan()).unwrap();
    assert!(!report.changed(), "{report}");
    assert_eq!(snapshot(&state), before);
    let after: Vec<_> = before
        .keys()
        .map(|p| fs::metadata(p).unwrap().modified().unwrap())
        .collect();
    assert_eq!(mtimes, after);
}

#[test]
fn near_expiry_renews_with_the_same_keys() {
    let (_root, state) = state();
    let now = SystemTime::now();
    provision_at(&state, &plan(), now).unwrap();
    let server_key = fs::read(state.join(SERVER_KEY)).unwrap();
    let rsa_key = fs::read(state.join(SERVER_RSA_KEY)).unwrap();
    let server_cert = fs::read(state.join(SERVER_CERT)).unwrap();
    let fingerprint = rsa_fingerprint_sha1(&state).unwrap().unwrap();

    // 300 of 398 days later less than a third is left; devices (730 days) are fine.
    let report = provision_at(&state, &plan(), now + 300 * DAY).unwrap();
    assert_eq!(report.outcome_of(SERVER_CERT), Some(Outcome::Renewed));
    assert_eq!(report.outcome_of(SERVER_RSA_CERT), Some(Outcome::Renewed));
    assert_eq!(report.outcome_of(SERVER_KEY), Some(Outcome::Kept));
    assert_eq!(report.outcome_of(CA_CERT), Some(Outcome::Kept));
    assert_eq!(
        report.outcome_of("devices/kitchen-sensor/cert.pem"),
        Some(Outcome::Kept)
    );
    assert_ne!(fs::read(state.join(SERVER_CERT)).unwrap(), server_cert);
    assert_eq!(fs::read(state.join(SERVER_KEY)).unwrap(), server_key);
    assert_eq!(fs::read(state.join(SERVER_RSA_KEY)).unwrap(), rsa_key);
    assert_eq!(rsa_fingerprint_sha1(&state).unwrap().unwrap(), fingerprint);

    // Renewed certificates have fresh serial numbers.
    let serial = |pem: &[u8]| {
        let der = CertificateDer::from_pem_slice(pem).unwrap();
        let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
        cert.raw_serial().to_vec()
    };
    assert_ne!(
        serial(&server_cert),
        serial(&fs::read(state.join(SERVER_CERT)).unwrap())
    );
}

#[test]
fn ca_renewal_keeps_its_key_and_name_so_leaves_stay_valid() {
    let (_root, state) = state();
    let now = SystemTime::now();
    provision_at(&state, &plan(), now).unwrap();
    let ca_before = existing::parse_pem(
        &state.join(CA_CERT),
        &fs::read(state.join(CA_CERT)).unwrap(),
    )
    .unwrap();
    let report = provision_at(&state, &plan(), now + 2500 * DAY).unwrap();
    assert_eq!(report.outcome_of(CA_CERT), Some(Outcome::Renewed));
    let ca_after = existing::parse_pem(
        &state.join(CA_CERT),
        &fs::read(state.join(CA_CERT)).unwrap(),
    )
    .unwrap();
    assert_eq!(ca_before.subject_raw, ca_after.subject_raw);
    assert_eq!(
        ca_before.subject_public_key_info,
        ca_after.subject_public_key_info
    );
    assert_eq!(
        report.outcome_of("devices/kitchen-sensor/ca.pem"),
        Some(Outcome::Renewed)
    );
}

#[test]
fn changed_hostnames_reissue_the_server_certificate_with_the_same_key() {
    let (_root, state) = state();
    provision(&state, &plan()).unwrap();
    let spki = spki_of(&state, SERVER_CERT);
    let mut changed = plan();
    changed.hostnames.push("broker.lan".into());
    // The machine was renamed: its mDNS name follows.
    changed.machine_name = Some("broker".into());
    let report = provision(&state, &changed).unwrap();
    assert_eq!(report.outcome_of(SERVER_CERT), Some(Outcome::Renewed));
    assert_eq!(
        report.outcome_of("devices/kitchen-sensor/cert.pem"),
        Some(Outcome::Kept)
    );
    assert_eq!(spki_of(&state, SERVER_CERT), spki);
    let path = state.join(SERVER_CERT);
    let names = existing::parse_pem(&path, &fs::read(&path).unwrap())
        .unwrap()
        .names;
    assert!(names.contains(&SubjectName::Dns("broker.lan".into())));
    assert!(names.contains(&SubjectName::Dns("broker.local".into())));
    assert!(!names.contains(&SubjectName::Dns("moat.local".into())));
    // And back to the same state on the next run.
    assert!(!provision(&state, &changed).unwrap().changed());
}

#[test]
fn a_new_ca_reissues_every_leaf() {
    let (_root, state) = state();
    provision(&state, &plan()).unwrap();
    let server_spki = spki_of(&state, SERVER_CERT);
    fs::remove_file(state.join(CA_KEY)).unwrap();
    let report = provision(&state, &plan()).unwrap();
    assert_eq!(report.outcome_of(CA_KEY), Some(Outcome::Created));
    assert_eq!(report.outcome_of(CA_CERT), Some(Outcome::Created));
    assert_eq!(report.outcome_of(SERVER_CERT), Some(Outcome::Renewed));
    assert_eq!(
        report.outcome_of("devices/kitchen-sensor/cert.pem"),
        Some(Outcome::Renewed)
    );
    assert_eq!(spki_of(&state, SERVER_CERT), server_spki);
}

#[test]
fn refuses_a_state_dir_others_can_read() {
    let (_root, state) = state();
    fs::create_dir(&state).unwrap();
    fs::set_permissions(&state, fs::Permissions::from_mode(0o755)).unwrap();
    let err = provision(&state, &plan()).unwrap_err();
    assert!(matches!(
        err,
        PkiError::StateDir(StateDirError::TooOpen { .. })
    ));
    assert!(err.to_string().contains("chmod 700"), "{err}");
    assert_eq!(fs::read_dir(&state).unwrap().count(), 0, "nothing written");
}

#[test]
fn bad_plans_are_refused_before_anything_is_written() {
    let (_root, state) = state();
    let mut bad = plan();
    bad.certificate_devices.push("../escape".into());
    assert!(matches!(
        provision(&state, &bad),
        Err(PkiError::BadDeviceName(_))
    ));
    let mut bad = plan();
    bad.hostnames.push("not a host".into());
    assert!(matches!(
        provision(&state, &bad),
        Err(PkiError::BadHostname(_))
    ));
    assert!(!state.exists());
}

#[test]
fn a_corrupt_key_is_an_error_not_a_silent_replacement() {
    let (_root, state) = state();
    provision(&state, &plan()).unwrap();
    fs::write(state.join(SERVER_KEY), "garbage").unwrap();
    let err = provision(&state, &plan()).unwrap_err();
    assert!(matches!(err, PkiError::BadKey { .. }), "{err}");
    assert_eq!(fs::read(state.join(SERVER_KEY)).unwrap(), b"garbage");
}

#[test]
fn server_credentials_load_and_match() {
    let (_root, state) = state();
    assert!(matches!(
        load_server_credentials(&state),
        Err(PkiError::Missing(_))
    ));
    let mut no_rsa = plan();
    no_rsa.rsa_server_key = false;
    provision(&state, &no_rsa).unwrap();
    assert_eq!(rsa_fingerprint_sha1(&state).unwrap(), None);
    let creds = load_server_credentials(&state).unwrap();
    assert_eq!(creds.ecdsa_chain.len(), 1);
    assert!(creds.rsa.is_none());
    assert!(matches!(creds.ecdsa_key, PrivateKeyDer::Pkcs8(_)));

    provision(&state, &plan()).unwrap();
    let creds = load_server_credentials(&state).unwrap();
    assert!(creds.rsa.is_some());
    // The key must belong to the certificate.
    fs::copy(state.join(CA_KEY), state.join(SERVER_KEY)).unwrap();
    assert!(matches!(
        load_server_credentials(&state),
        Err(PkiError::BadKey { .. })
    ));
}

#[test]
fn report_serialises_for_json_output() {
    let (_root, state) = state();
    let report = provision(&state, &plan()).unwrap();
    let json = serde_json::to_value(&report).unwrap();
    assert_eq!(json["items"][0]["path"], "ca.key");
    assert_eq!(json["items"][0]["outcome"], "created");
}
