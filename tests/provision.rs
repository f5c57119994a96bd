//! Provisioning against real tools: `moat provision` (the real binary, on the starter
//! manifest and on examples/home.yaml) and `moat::pki::provision` must write
//! certificates that satisfy `openssl verify` and show the planned names in
//! `openssl x509 -text`; a second run changes no file; a state directory others can
//! read is refused.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime};

use moat::pki::{self, Outcome, ProvisionPlan};

mod common;

use common::cli::walk;
use common::netns::skip_reason;
use common::{moat_bin, run_bounded};

fn plan() -> ProvisionPlan {
    ProvisionPlan {
        hostnames: vec!["moat.home.arpa".into()],
        // The appliance is called `moat`: its mDNS name is `moat.local`.
        machine_name: Some("moat".into()),
        addresses: vec!["192.168.1.10".parse().unwrap(), "fd00::10".parse().unwrap()],
        rsa_server_key: true,
        certificate_devices: vec!["kitchen-sensor".into(), "plug-1".into()],
    }
}

fn openssl(args: &[&str], dir: &Path) -> String {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl is installed");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "openssl {args:?} failed: {text}");
    text
}

fn snapshot(dir: &Path) -> BTreeMap<PathBuf, (Vec<u8>, SystemTime, u32)> {
    walk(dir)
        .into_iter()
        .filter(|entry| !entry.meta.is_dir())
        .map(|entry| {
            let content = fs::read(&entry.path).unwrap();
            let mode = entry.meta.permissions().mode();
            (entry.path, (content, entry.meta.modified().unwrap(), mode))
        })
        .collect()
}

#[test]
fn openssl_accepts_the_chains_and_shows_the_names() {
    let root = tempfile::tempdir().unwrap();
    let state = root.path().join("state");
    pki::provision(&state, &plan()).unwrap();

    for cert in ["server.pem", "server-rsa.pem"] {
        let out = openssl(
            &["verify", "-CAfile", "ca.pem", "-purpose", "sslserver", cert],
            &state,
        );
        assert!(out.contains(&format!("{cert}: OK")), "{out}");
    }
    for device in ["kitchen-sensor", "plug-1"] {
        let dir = state.join("devices").join(device);
        let out = openssl(
            &[
                "verify",
                "-CAfile",
                "ca.pem",
                "-purpose",
                "sslclient",
                "cert.pem",
            ],
            &dir,
        );
        assert!(out.contains("cert.pem: OK"), "{out}");
        let text = openssl(&["x509", "-noout", "-subject", "-in", "cert.pem"], &dir);
        assert!(text.contains(&format!("CN = {device}")), "{text}");
        // The key in the bundle belongs to the certificate.
        let cert_pub = openssl(&["x509", "-noout", "-pubkey", "-in", "cert.pem"], &dir);
        let key_pub = openssl(&["pkey", "-pubout", "-in", "key.pem"], &dir);
        assert_eq!(cert_pub, key_pub);
    }

    let text = openssl(&["x509", "-noout", "-text", "-in", "server.pem"], &state);
    for san in [
        "DNS:moat.home.arpa",
        "DNS:moat.local",
        "DNS:localhost",
        "IP Address:127.0.0.1",
        "IP Address:0:0:0:0:0:0:0:1",
        "IP Address:192.168.1.10",
        "IP Address:FD00:0:0:0:0:0:0:10",
    ] {
        assert!(text.contains(san), "missing {san} in\n{text}");
    }
    assert!(text.contains("TLS Web Server Authentication"), "{text}");
    assert!(text.contains("ASN1 OID: prime256v1"), "{text}");
    let rsa_text = openssl(
        &["x509", "-noout", "-text", "-in", "server-rsa.pem"],
        &state,
    );
    assert!(rsa_text.contains("Public-Key: (2048 bit)"), "{rsa_text}");
    let ca_text = openssl(&["x509", "-noout", "-text", "-in", "ca.pem"], &state);
    assert!(ca_text.contains("CA:TRUE"), "{ca_text}");
    assert!(ca_text.contains("Certificate Sign, CRL Sign"), "{ca_text}");
    assert!(ca_text.contains("Subject: CN = moat CA "), "{ca_text}");
}

/// The NixOS module runs the broker with `ProcSubset=pid` and `ProtectProc=invisible`:
/// its `/proc` holds the process directories and nothing else (no `/proc/sys`, no
/// `/proc/net` link). `moat init` and `moat provision` must still find the machine's
/// name and LAN address there, or the certificate loses `<name>.local` and the
/// address DHCP gave. Fresh mount, PID, UTS and network namespaces (`unshare`), a
/// procfs mounted with the options systemd gives such a unit, and a host name and a
/// private address of the test's own.
#[test]
fn the_certificate_names_the_machine_under_the_modules_proc_restriction() {
    if let Some(reason) = skip_reason(&["unshare", "ip", "openssl"]) {
        eprintln!("skipping the /proc restriction test: {reason}");
        return;
    }
    let root = tempfile::tempdir().unwrap();
    let manifest = root.path().join("moat.yaml");
    let state = root.path().join("state");
    // The host name is set through /proc/sys before /proc is restricted (no
    // dependence on the `hostname` tool); a veth pair, not a dummy link, because
    // veth is what the other namespace tests already need from the kernel.
    let script = r#"
        echo proc-subset-test > /proc/sys/kernel/hostname
        ip link add lan0 type veth peer name lan1
        ip addr add 10.77.0.1/24 dev lan0
        ip link set lan0 up
        mount -t proc -o subset=pid,hidepid=invisible proc /proc
        if [ -e /proc/sys/kernel/hostname ] || [ -e /proc/net ]; then
            echo "procfs is not restricted" >&2
            exit 3
        fi
        "$0" init "$1"
        "$0" provision --manifest "$1" --state "$2"
    "#;
    let out = run_bounded(
        Command::new("unshare")
            .args(["--mount", "--pid", "--fork", "--uts", "--net", "sh", "-ec"])
            .arg(script)
            .arg(moat_bin())
            .arg(&manifest)
            .arg(&state),
        Duration::from_secs(60),
    );
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let written = fs::read_to_string(&manifest).unwrap();
    for detected in ["proc-subset-test", "10.77.0.1"] {
        assert!(
            written.contains(detected),
            "{detected} missing in\n{written}"
        );
    }
    let text = openssl(&["x509", "-noout", "-text", "-in", "server.pem"], &state);
    for san in ["DNS:proc-subset-test.local", "IP Address:10.77.0.1"] {
        assert!(text.contains(san), "missing {san} in\n{text}");
    }
}

#[test]
fn second_run_changes_no_file_and_keys_are_private() {
    let root = tempfile::tempdir().unwrap();
    let state = root.path().join("state");
    pki::provision(&state, &plan()).unwrap();
    let before = snapshot(&state);
    for (path, (_, _, mode)) in &before {
        let name = path.file_name().unwrap().to_string_lossy();
        if name.ends_with(".key") || name == "key.pem" {
            assert_eq!(mode & 0o777, 0o600, "{}", path.display());
        }
    }
    let report = pki::provision(&state, &plan()).unwrap();
    assert!(
        report
            .items
            .iter()
            .all(|item| item.outcome == Outcome::Kept)
    );
    assert_eq!(snapshot(&state), before);
}

#[test]
fn renewal_far_in_the_future_keeps_the_key_and_still_verifies() {
    let root = tempfile::tempdir().unwrap();
    let state = root.path().join("state");
    let now = SystemTime::now();
    pki::provision_at(&state, &plan(), now).unwrap();
    let key = fs::read(state.join("server.key")).unwrap();
    let fingerprint = pki::rsa_fingerprint_sha1(&state).unwrap();
    let later = now + Duration::from_secs(300 * 86_400);
    let report = pki::provision_at(&state, &plan(), later).unwrap();
    assert_eq!(report.outcome_of("server.pem"), Some(Outcome::Renewed));
    assert_eq!(fs::read(state.join("server.key")).unwrap(), key);
    assert_eq!(pki::rsa_fingerprint_sha1(&state).unwrap(), fingerprint);
    // openssl checks validity against a given time.
    let epoch = later
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        .to_string();
    openssl(
        &[
            "verify",
            "-attime",
            &epoch,
            "-CAfile",
            "ca.pem",
            "server.pem",
        ],
        &state,
    );
}

#[test]
fn world_readable_state_dir_is_refused() {
    let root = tempfile::tempdir().unwrap();
    let state = root.path().join("state");
    fs::create_dir(&state).unwrap();
    fs::set_permissions(&state, fs::Permissions::from_mode(0o755)).unwrap();
    let err = pki::provision(&state, &plan()).unwrap_err().to_string();
    assert!(err.contains("chmod 700"), "{err}");
    assert!(err.contains(&state.display().to_string()), "{err}");
}

#[test]
fn the_tls_stack_accepts_the_served_credentials() {
    let root = tempfile::tempdir().unwrap();
    let state = root.path().join("state");
    pki::provision(&state, &plan()).unwrap();
    let creds = pki::load_server_credentials(&state).unwrap();
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let rsa = creds.rsa.expect("the plan asks for an RSA key");
    for (chain, key) in [(creds.ecdsa_chain, creds.ecdsa_key), rsa] {
        rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .unwrap();
    }
    let mut roots = rustls::RootCertStore::empty();
    roots.add(creds.ca).unwrap();
    assert_eq!(roots.len(), 1);
}

fn moat(args: &[&str], dir: &Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_moat"))
        .args(args)
        .current_dir(dir)
        .env_remove("MOAT_MANIFEST")
        .env_remove("MOAT_STATE")
        .output()
        .unwrap()
}

fn text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn moat_provision_on_the_starter_manifest() {
    let root = tempfile::tempdir().unwrap();
    let out = moat(&["init"], root.path());
    assert!(out.status.success(), "{}", text(&out));
    let out = moat(&["provision"], root.path());
    assert!(out.status.success(), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("created  server.pem"), "{stdout}");
    let state = root.path().join("moat-state");
    openssl(&["verify", "-CAfile", "ca.pem", "server.pem"], &state);

    let before = snapshot(&state);
    let out = moat(&["provision"], root.path());
    assert!(out.status.success(), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        !stdout.contains("created") && !stdout.contains("renewed"),
        "{stdout}"
    );
    assert_eq!(snapshot(&state), before);
}

#[test]
fn moat_provision_on_the_home_example() {
    let root = tempfile::tempdir().unwrap();
    let secret = root.path().join("z2m-secret");
    fs::write(&secret, "zigbee-secret\n").unwrap();
    let example = fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/examples/home.yaml"))
        .unwrap()
        .replace("/run/secrets/zigbee2mqtt", &secret.display().to_string());
    let manifest = root.path().join("home.yaml");
    fs::write(&manifest, example).unwrap();
    let manifest_arg = manifest.display().to_string();
    let state = root.path().join("state");
    let state_arg = state.display().to_string();
    let args = [
        "--manifest",
        &manifest_arg,
        "--state",
        &state_arg,
        "provision",
    ];

    let out = moat(&args, root.path());
    assert!(out.status.success(), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    for line in [
        "created  ca.pem",
        "created  server-rsa.pem",
        "created  devices/kitchen-sensor/cert.pem",
        "created  hashes/zigbee2mqtt.phc",
        "MqttFingerprint1 ",
    ] {
        assert!(stdout.contains(line), "missing {line:?} in\n{stdout}");
    }
    openssl(&["verify", "-CAfile", "ca.pem", "server-rsa.pem"], &state);
    let device = state.join("devices/kitchen-sensor");
    openssl(&["verify", "-CAfile", "ca.pem", "cert.pem"], &device);
    let hash = fs::read_to_string(state.join("hashes/zigbee2mqtt.phc")).unwrap();
    let phc = hash.lines().next().unwrap();
    assert_eq!(moat::auth::verify_password(phc, b"zigbee-secret"), Ok(true));

    let before = snapshot(&state);
    let mut json_args = vec!["--json"];
    json_args.extend_from_slice(&args);
    let out = moat(&json_args, root.path());
    assert!(out.status.success(), "{}", text(&out));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let items = json["items"].as_array().unwrap();
    assert!(items.len() >= 10, "{json}");
    assert!(items.iter().all(|i| i["outcome"] == "kept"), "{json}");
    let fingerprint = json["tasmota_fingerprint"].as_str().unwrap();
    assert_eq!(fingerprint.split(' ').count(), 20, "{fingerprint}");
    assert_eq!(snapshot(&state), before);
}

#[test]
fn moat_provision_refuses_an_open_state_dir_and_a_bad_manifest() {
    let root = tempfile::tempdir().unwrap();
    assert!(moat(&["init"], root.path()).status.success());
    let state = root.path().join("moat-state");
    fs::create_dir(&state).unwrap();
    fs::set_permissions(&state, fs::Permissions::from_mode(0o755)).unwrap();
    let out = moat(&["provision"], root.path());
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out).contains("chmod 700"), "{}", text(&out));
    assert_eq!(fs::read_dir(&state).unwrap().count(), 0);

    fs::write(root.path().join("moat.yaml"), "version: 1\nbogus: yes\n").unwrap();
    fs::set_permissions(&state, fs::Permissions::from_mode(0o700)).unwrap();
    let out = moat(&["provision"], root.path());
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out).contains("line 2"), "{}", text(&out));
    assert_eq!(fs::read_dir(&state).unwrap().count(), 0);
}
