//! `moat backup`, `moat backup --restore` and `moat export` through the real binary.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Output;

mod common;

use common::cli::{ok, run_moat as moat, walk};

const PASSWORDS: [&str; 3] = ["ha-Password-1", "z2m-Password-2", "plug-Password-3"];

const MANIFEST: &str = "version: 1
broker:
  hostnames: [moat.home.arpa]
users:
  homeassistant:
    role: homeassistant
    password: \"ha-Password-1\"
  zigbee2mqtt:
    role: zigbee2mqtt
    password: \"z2m-Password-2\"
devices:
  plug-1:
    role: tasmota
    password: \"plug-Password-3\"
  kitchen-node:
    role: esphome
    certificate: true
";

struct Install {
    root: tempfile::TempDir,
    state: PathBuf,
    manifest: PathBuf,
}

/// An installation made the appliance way (firstboot hashes the passwords and
/// provisions the certificates).
fn install() -> Install {
    let root = tempfile::tempdir().unwrap();
    let card = root.path().join("card");
    fs::create_dir(&card).unwrap();
    fs::write(card.join("moat.yaml"), MANIFEST).unwrap();
    let state = root.path().join("state");
    let manifest = state.join("moat.yaml");
    ok(&moat(
        &manifest,
        &state,
        &["firstboot", "--boot", card.to_str().unwrap()],
    ));
    Install {
        root,
        state,
        manifest,
    }
}

fn refused(output: &Output) -> String {
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Every entry under `dir`: relative path -> (mode, content; empty for directories).
fn tree(dir: &Path) -> BTreeMap<PathBuf, (u32, Vec<u8>)> {
    walk(dir)
        .into_iter()
        .map(|entry| {
            let mode = entry.meta.permissions().mode() & 0o7777;
            let content = if entry.meta.is_dir() {
                Vec::new()
            } else {
                fs::read(&entry.path).unwrap()
            };
            (entry.relative, (mode, content))
        })
        .collect()
}

#[test]
fn backup_then_restore_gives_identical_files_and_modes() {
    let install = install();
    let archive = install.root.path().join("backup.tar");
    let stdout = ok(&moat(
        &install.manifest,
        &install.state,
        &["backup", archive.to_str().unwrap()],
    ));
    assert!(stdout.contains("private keys"), "{stdout}");
    assert_eq!(
        fs::metadata(&archive).unwrap().permissions().mode() & 0o777,
        0o600
    );

    let target = install.root.path().join("restored");
    let target_manifest = target.join("moat.yaml");
    ok(&moat(
        &target_manifest,
        &target,
        &["backup", "--restore", archive.to_str().unwrap()],
    ));
    let before = tree(&install.state);
    let after = tree(&target);
    assert_eq!(
        before.keys().collect::<Vec<_>>(),
        after.keys().collect::<Vec<_>>()
    );
    assert_eq!(before, after);
    assert_eq!(
        fs::metadata(&target).unwrap().permissions().mode() & 0o777,
        0o700
    );
    assert_eq!(after[Path::new("ca.key")].0, 0o600);
    assert_eq!(after[Path::new("devices/kitchen-node/key.pem")].0, 0o600);
    assert_eq!(after[Path::new("devices")].0, 0o700);

    // The restored installation works: the broker's own loader accepts it.
    ok(&moat(&target_manifest, &target, &["check"]));

    // A second restore into the now non-empty directory is refused, nothing changes.
    let stderr = refused(&moat(
        &target_manifest,
        &target,
        &["backup", "--restore", archive.to_str().unwrap()],
    ));
    assert!(stderr.contains("not empty"), "{stderr}");
    assert_eq!(tree(&target), after);
}

/// A ustar header for `path` (no validation: the point is to craft bad ones).
fn header(path: &str, size: u64, flag: u8) -> [u8; 512] {
    let mut block = [0u8; 512];
    block[..path.len()].copy_from_slice(path.as_bytes());
    block[100..107].copy_from_slice(b"0000600");
    block[108..115].copy_from_slice(b"0000000");
    block[116..123].copy_from_slice(b"0000000");
    block[124..135].copy_from_slice(format!("{size:011o}").as_bytes());
    block[136..147].copy_from_slice(b"00000000000");
    block[156] = flag;
    block[257..263].copy_from_slice(b"ustar\0");
    block[263..265].copy_from_slice(b"00");
    block[148..156].fill(b' ');
    let sum: u32 = block.iter().map(|b| u32::from(*b)).sum();
    block[148..155].copy_from_slice(format!("{sum:06o}\0").as_bytes());
    block
}

fn crafted(entries: &[(&str, &[u8], u8)]) -> Vec<u8> {
    let mut out = Vec::new();
    let marker = b"moat backup 1\n";
    out.extend_from_slice(&header("MOAT-BACKUP", marker.len() as u64, b'0'));
    out.extend_from_slice(marker);
    out.resize(out.len().div_ceil(512) * 512, 0);
    for (path, data, flag) in entries {
        out.extend_from_slice(&header(path, data.len() as u64, *flag));
        out.extend_from_slice(data);
        out.resize(out.len().div_ceil(512) * 512, 0);
    }
    out.extend_from_slice(&[0u8; 1024]);
    out
}

#[test]
fn restore_rejects_traversal_links_and_oversized_entries() {
    let root = tempfile::tempdir().unwrap();
    let work = root.path().join("a/b");
    fs::create_dir_all(&work).unwrap();
    let state = work.join("state");
    let manifest = state.join("moat.yaml");
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "dotdot",
            crafted(&[("state/ok.pem", b"fine", b'0'), ("../evil", b"owned", b'0')]),
            "..",
        ),
        (
            "nested-dotdot",
            crafted(&[("state/../../evil", b"owned", b'0')]),
            "..",
        ),
        (
            "absolute",
            crafted(&[("/tmp/evil", b"owned", b'0')]),
            "absolute",
        ),
        (
            "symlink",
            crafted(&[("state/link", b"", b'2')]),
            "only regular files",
        ),
    ];
    for (name, bytes, expected) in cases {
        let archive = root.path().join(format!("{name}.tar"));
        fs::write(&archive, bytes).unwrap();
        let stderr = refused(&moat(
            &manifest,
            &state,
            &["backup", "--restore", archive.to_str().unwrap()],
        ));
        assert!(stderr.contains(expected), "{name}: {stderr}");
        assert!(!work.join("evil").exists() && !root.path().join("a/evil").exists());
        // Whatever was written before the bad entry is taken back.
        let leftovers: Vec<_> = fs::read_dir(&state)
            .map(|d| d.count())
            .into_iter()
            .collect();
        assert!(leftovers.iter().all(|n| *n == 0), "{name}: {leftovers:?}");
    }

    // An entry that declares more than the limit is refused before anything is read.
    let mut oversized = crafted(&[]);
    oversized.truncate(1024);
    oversized.extend_from_slice(&header("state/huge", 300 * 1024 * 1024, b'0'));
    oversized.extend_from_slice(&[0u8; 4096]);
    let archive = root.path().join("huge.tar");
    fs::write(&archive, oversized).unwrap();
    let stderr = refused(&moat(
        &manifest,
        &state,
        &["backup", "--restore", archive.to_str().unwrap()],
    ));
    assert!(stderr.contains("limit"), "{stderr}");

    // Not a moat archive at all.
    let archive = root.path().join("plain.tar");
    let mut plain = header("state/x", 1, b'0').to_vec();
    plain.extend_from_slice(&[b'x'; 512]);
    plain.extend_from_slice(&[0u8; 1024]);
    fs::write(&archive, plain).unwrap();
    let stderr = refused(&moat(
        &manifest,
        &state,
        &["backup", "--restore", archive.to_str().unwrap()],
    ));
    assert!(stderr.contains("not a moat backup"), "{stderr}");
}

fn assert_no_secret(text: &str) {
    for password in PASSWORDS {
        assert!(!text.contains(password), "a password was printed:\n{text}");
    }
    assert!(!text.contains("$argon2"), "a hash was printed:\n{text}");
    assert!(!text.contains("PRIVATE KEY"), "a key was printed:\n{text}");
}

#[test]
fn export_prints_client_settings_and_never_a_secret() {
    let install = install();
    let export = |name: &str| ok(&moat(&install.manifest, &install.state, &["export", name]));
    let ca = install.state.join("ca.pem").display().to_string();

    let ha = export("homeassistant");
    assert_no_secret(&ha);
    for expected in [
        "host:      moat.home.arpa",
        "port:      8883 (TLS)",
        "username:  homeassistant",
        &format!("CA file:   {ca}"),
        "MQTT protocol: 3.1.1",
        "moat passwd homeassistant",
        "subscribe: #",
    ] {
        assert!(ha.contains(expected), "{expected:?} missing:\n{ha}");
    }
    // What Home Assistant's Broker field gets is a name or address the certificate
    // covers: an IP when this machine has a LAN address (it is in the certificate),
    // else the host name.
    let field = |prefix: &str| {
        ha.lines()
            .find_map(|l| l.trim().strip_prefix(prefix))
            .map(str::trim)
            .unwrap_or_default()
            .to_owned()
    };
    let broker = field("Broker:");
    let covered = format!("{}, {}", field("host:"), field("also:"));
    assert!(
        !broker.is_empty() && covered.split(", ").any(|c| c == broker),
        "Broker {broker:?} is not among {covered:?}:\n{ha}"
    );

    let z2m = export("zigbee2mqtt");
    assert_no_secret(&z2m);
    assert!(z2m.contains("server: mqtts://moat.home.arpa:8883"), "{z2m}");
    assert!(z2m.contains(&format!("ca: {ca}")), "{z2m}");
    assert!(z2m.contains("user: zigbee2mqtt"), "{z2m}");

    let plug = export("plug-1");
    assert_no_secret(&plug);
    let fingerprint = plug
        .lines()
        .find_map(|l| l.split("MqttFingerprint1 ").nth(1))
        .map(|rest| rest.split(';').next().unwrap_or(rest).trim())
        .unwrap_or_else(|| panic!("no fingerprint:\n{plug}"));
    assert_eq!(fingerprint.split(' ').count(), 20, "{fingerprint}");
    for expected in [
        "MqttHost moat.home.arpa",
        "MqttPort 8883",
        "MqttUser plug-1",
        "SetOption103 1",
        "SetOption132 1",
        "Topic plug-1",
        "Backlog MqttHost moat.home.arpa; ",
        "publish:   tele/plug-1/# stat/plug-1/#",
        "subscribe: cmnd/plug-1/#",
    ] {
        assert!(plug.contains(expected), "{expected:?} missing:\n{plug}");
    }

    let node = export("kitchen-node");
    assert_no_secret(&node);
    let bundle = install.state.join("devices/kitchen-node");
    for expected in [
        "broker: moat.home.arpa".to_string(),
        "port: 8883".to_string(),
        "certificate_authority: |".to_string(),
        "-----BEGIN CERTIFICATE-----".to_string(),
        format!("client certificate: {}", bundle.join("cert.pem").display()),
        format!(
            "client_certificate_key: !secret moat_client_key  # the content of {}",
            bundle.join("key.pem").display()
        ),
    ] {
        assert!(node.contains(&expected), "{expected:?} missing:\n{node}");
    }
    assert!(!node.contains("password:"), "{node}");

    // --json, for machines.
    let json = ok(&moat(
        &install.manifest,
        &install.state,
        &["--json", "export", "plug-1"],
    ));
    assert_no_secret(&json);
    let value: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(value["tls_port"], 8883);
    assert_eq!(value["username"], "plug-1");
    assert_eq!(value["hosts"][0], "moat.home.arpa");
    assert_eq!(value["snippets"][0]["client"], "tasmota");

    // An unknown name is a refusal, not a crash.
    let stderr = refused(&moat(
        &install.manifest,
        &install.state,
        &["export", "nobody"],
    ));
    assert!(stderr.contains("nobody"), "{stderr}");
}
