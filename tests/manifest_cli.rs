//! End-to-end tests of `moat init`, `moat passwd` and `moat check` against the real
//! binary, on temporary copies of the starter and of `examples/`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use argon2::password_hash::{PasswordVerifier, phc::PasswordHash};

const HASH: &str =
    "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaGhhc2hoYXNoaGFzaGhhc2g";

fn moat(manifest: &Path, args: &[&str]) -> Output {
    moat_with_stdin(manifest, args, None)
}

fn moat_with_stdin(manifest: &Path, args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_moat"))
        .arg("--manifest")
        .arg(manifest)
        .args(args)
        .env_remove("MOAT_MANIFEST")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        let mut input = child.stdin.take().unwrap();
        if let Some(text) = stdin {
            input.write_all(text.as_bytes()).unwrap();
        }
    }
    child.wait_with_output().unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn example(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("examples")
        .join(name)
}

fn copy_example(dir: &Path, name: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::copy(example(name), &path).unwrap();
    path
}

/// The `password_hash` of `name` in a block-style manifest.
fn hash_of(text: &str, name: &str) -> String {
    let mut lines = text
        .lines()
        .skip_while(|l| !l.trim_start().starts_with(&format!("{name}:")));
    lines.next().expect("identity present");
    let line = lines
        .find(|l| l.trim_start().starts_with("password_hash:"))
        .expect("a password_hash line");
    line.split('"').nth(1).unwrap().to_string()
}

fn verifies(password: &str, hash: &str) -> bool {
    let parsed = PasswordHash::new(hash).unwrap();
    argon2::Argon2::default()
        .verify_password(password.as_bytes(), &parsed)
        .is_ok()
}

#[test]
fn init_writes_a_starter_that_checks_and_whose_password_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("moat.yaml");
    let out = moat(&path, &["init"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let password = stdout(&out).trim().to_string();
    assert!(password.len() >= 20, "{password:?}");
    assert_eq!(
        stdout(&out).lines().count(),
        1,
        "only the password on stdout"
    );
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(
        !text.contains(&password),
        "the password must not be written"
    );
    assert!(text.contains("# moat manifest"), "the starter is commented");
    assert!(verifies(&password, &hash_of(&text, "homeassistant")));
    let check = moat(&path, &["check"]);
    assert_eq!(check.status.code(), Some(0), "{}", stderr(&check));
    assert!(stdout(&check).contains("homeassistant (user, password_hash"));
}

#[test]
fn init_refuses_to_overwrite_without_force() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("moat.yaml");
    std::fs::write(&path, "keep me\n").unwrap();
    let out = moat(&path, &["init"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("already exists"), "{}", stderr(&out));
    assert!(
        stdout(&out).is_empty(),
        "no password printed when nothing was written"
    );
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "keep me\n");
    let out = moat(&path, &["init", "--force"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        std::fs::read_to_string(&path)
            .unwrap()
            .contains("homeassistant")
    );
}

#[test]
fn init_takes_an_explicit_path() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("other.yaml");
    let out = moat(
        &dir.path().join("unused.yaml"),
        &["init", path.to_str().unwrap()],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(path.exists());
    assert!(!dir.path().join("unused.yaml").exists());
}

#[test]
fn the_examples_check_cleanly() {
    for name in ["home.yaml", "minimal.yaml", "bridge.yaml"] {
        let out = moat(&example(name), &["check"]);
        assert_eq!(out.status.code(), Some(0), "{name}: {}", stderr(&out));
        assert!(stdout(&out).contains("valid"), "{name}");
        assert!(
            !stderr(&out).contains("warning"),
            "{name}: {}",
            stderr(&out)
        );
    }
    let bridge = stdout(&moat(&example("bridge.yaml"), &["check"]));
    for line in [
        "bridge vps -> mqtt.example.net:8883 (tls, CA /etc/moat/vps-ca.pem",
        "  sensors/# -> home/sensors/# (qos 1, retain kept)",
        "  cmd/# <- home/cmd/# (qos 1, retain kept)",
    ] {
        assert!(bridge.contains(line), "missing {line:?} in:\n{bridge}");
    }
    let out = moat(&example("home.yaml"), &["check"]);
    let text = stdout(&out);
    for line in [
        "homeassistant (user, password_hash, plaintext: no",
        "zigbee2mqtt (user, password_file",
        "dashboard (user, password_hash, plaintext: no, retain: no, roles: observer)",
        "plug-1 (device, password_hash, plaintext: yes, retain: yes, roles: tasmota)",
        "kitchen-sensor (device, certificate, plaintext: no",
    ] {
        assert!(text.contains(line), "missing {line:?} in:\n{text}");
    }
}

#[test]
fn check_json_lists_identities_and_their_grants() {
    let out = moat(&example("home.yaml"), &["check", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["valid"], true);
    let ids = v["identities"].as_array().unwrap();
    assert_eq!(ids.len(), 5);
    let plug = ids.iter().find(|i| i["name"] == "plug-1").unwrap();
    assert_eq!(plug["plaintext"], true);
    assert_eq!(plug["publish"][0]["filter"], "tele/%u/#");
}

fn explain(manifest: &Path, name: &str, topic: &str) -> (Option<i32>, String) {
    let out = moat(manifest, &["check", "--explain", name, topic]);
    (out.status.code(), stdout(&out) + &stderr(&out))
}

#[test]
fn explain_names_the_deciding_rule() {
    let home = example("home.yaml");
    let (code, text) = explain(&home, "plug-1", "tele/plug-1/STATE");
    assert_eq!(code, Some(0));
    assert!(
        text.contains("plug-1 publish tele/plug-1/STATE: ALLOWED by role tasmota (built-in): publish tele/%u/#"),
        "{text}"
    );
    assert!(
        text.contains(
            "plug-1 subscribe tele/plug-1/STATE: DENIED: no rule grants it: denied by default"
        ),
        "{text}"
    );
    let (_, text) = explain(&home, "plug-1", "cmnd/plug-1/POWER");
    assert!(
        text.contains(
            "subscribe cmnd/plug-1/POWER: ALLOWED by role tasmota (built-in): subscribe cmnd/%u/#"
        ),
        "{text}"
    );
    let (_, text) = explain(&home, "kitchen-sensor", "sensors/kitchen/temp");
    assert!(
        text.contains(
            "publish sensors/kitchen/temp: ALLOWED by devices.kitchen-sensor.publish[0] (line"
        ),
        "{text}"
    );
}

#[test]
fn explain_denies_what_nobody_granted() {
    let home = example("home.yaml");
    // Another device's topic.
    let (code, text) = explain(&home, "plug-1", "tele/plug-2/STATE");
    assert_eq!(code, Some(0));
    assert!(
        text.contains("publish tele/plug-2/STATE: DENIED: no rule grants it: denied by default"),
        "{text}"
    );
    // `#` never reaches $SYS.
    let (_, text) = explain(&home, "dashboard", "$SYS/broker/load");
    assert!(
        text.contains("subscribe $SYS/broker/load: DENIED"),
        "{text}"
    );
    // The observer reads everything else and publishes nothing.
    let (_, text) = explain(&home, "dashboard", "zigbee2mqtt/lamp");
    assert!(text.contains("publish zigbee2mqtt/lamp: DENIED"), "{text}");
    assert!(
        text.contains("subscribe zigbee2mqtt/lamp: ALLOWED by role observer"),
        "{text}"
    );
    // A subscription wider than the grant is refused.
    let (_, text) = explain(&home, "plug-1", "cmnd/#");
    assert!(text.contains("subscribe cmnd/#: DENIED"), "{text}");
    assert!(text.contains("publish cmnd/#: DENIED"), "{text}");
}

#[test]
fn explain_of_an_unknown_identity_fails() {
    let (code, text) = explain(&example("home.yaml"), "mallory", "a/b");
    assert_eq!(code, Some(1));
    assert!(
        text.contains("no user or device named \"mallory\""),
        "{text}"
    );
}

#[test]
fn passwd_write_keeps_comments_and_the_new_password_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let path = copy_example(dir.path(), "home.yaml");
    let before = std::fs::read_to_string(&path).unwrap();
    let out = moat(&path, &["passwd", "plug-1", "--write"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let printed = stdout(&out);
    let password = printed
        .lines()
        .find_map(|l| l.strip_prefix("password: "))
        .expect("generated password printed")
        .to_string();
    let after = std::fs::read_to_string(&path).unwrap();
    let new_hash = hash_of(&after, "plug-1");
    assert!(verifies(&password, &new_hash));
    assert!(printed.contains(&new_hash));
    // Only plug-1's hash line changed; every comment and other line is intact.
    let old_hash = hash_of(&before, "plug-1");
    assert_eq!(after, before.replace(&old_hash, &new_hash));
    assert!(after.contains("# Tasmota on an ESP8266: its MQTT Topic is `plug-1`."));
    assert_eq!(moat(&path, &["check"]).status.code(), Some(0));
}

#[test]
fn passwd_reads_stdin_and_inserts_a_hash_replacing_a_password_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = copy_example(dir.path(), "home.yaml");
    let out = moat_with_stdin(
        &path,
        &["passwd", "zigbee2mqtt", "--stdin", "--write"],
        Some("correct horse battery staple\n"),
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        !stdout(&out).contains("password: "),
        "a given password is not echoed"
    );
    let after = std::fs::read_to_string(&path).unwrap();
    assert!(!after.contains("password_file: /run/secrets/zigbee2mqtt"));
    assert!(verifies(
        "correct horse battery staple",
        &hash_of(&after, "zigbee2mqtt")
    ));
    assert_eq!(moat(&path, &["check"]).status.code(), Some(0));
}

#[test]
fn passwd_replaces_a_plaintext_password() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("moat.yaml");
    std::fs::write(
        &path,
        "version: 1\nusers:\n  bob:   # Bob's laptop\n    role: observer\n    password: hunter2\n",
    )
    .unwrap();
    assert_eq!(moat(&path, &["check"]).status.code(), Some(1));
    let out = moat_with_stdin(
        &path,
        &["passwd", "bob", "--stdin", "--write"],
        Some("hunter2\n"),
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let after = std::fs::read_to_string(&path).unwrap();
    assert!(!after.contains("hunter2"));
    assert!(after.contains("  bob:   # Bob's laptop\n"));
    assert!(verifies("hunter2", &hash_of(&after, "bob")));
    assert_eq!(moat(&path, &["check"]).status.code(), Some(0));
}

#[test]
fn passwd_for_an_unknown_name_fails_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = copy_example(dir.path(), "home.yaml");
    let before = std::fs::read_to_string(&path).unwrap();
    for args in [
        &["passwd", "mallory", "--write"][..],
        &["passwd", "mallory"][..],
        &["passwd", "sensor", "--write"][..],
    ] {
        let out = moat(&path, args);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        assert!(
            stderr(&out).contains("no user or device named"),
            "{}",
            stderr(&out)
        );
        assert!(stdout(&out).is_empty());
    }
    assert_eq!(std::fs::read_to_string(&path).unwrap(), before);
}

#[test]
fn passwd_refuses_an_edit_that_would_not_validate() {
    let dir = tempfile::tempdir().unwrap();
    let path = copy_example(dir.path(), "home.yaml");
    let before = std::fs::read_to_string(&path).unwrap();
    // kitchen-sensor authenticates with a certificate: a hash would be a second credential.
    let out = moat(&path, &["passwd", "kitchen-sensor", "--write"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("more than one credential"),
        "{}",
        stderr(&out)
    );
    assert!(stderr(&out).contains("was not modified"));
    assert_eq!(std::fs::read_to_string(&path).unwrap(), before);
}

#[test]
fn passwd_without_write_prints_a_verifiable_hash() {
    let dir = tempfile::tempdir().unwrap();
    let path = copy_example(dir.path(), "home.yaml");
    let out = moat_with_stdin(
        &path,
        &["passwd", "plug-1", "--stdin"],
        Some("s3cret-plug\n"),
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let hash = stdout(&out)
        .lines()
        .find_map(|l| l.strip_prefix("password_hash: "))
        .unwrap()
        .trim_matches('"')
        .to_string();
    assert!(verifies("s3cret-plug", &hash));
}

fn write(dir: &Path, text: &str) -> PathBuf {
    let path = dir.join("moat.yaml");
    std::fs::write(&path, text.replace("HASH", HASH)).unwrap();
    path
}

#[test]
fn warnings_are_printed_but_do_not_fail() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        dir.path(),
        "version: 1\nbroker:\n  listen:\n    plain: { port: 1883 }\n  networks: [private, 203.0.113.0/24]\n  allow_public: true\nusers:\n  old:\n    role: observer\n    password_hash: \"$7$101$HCThYiheYqjjiGZ7$YeoFJAvMssLj5W3GxGg0L4cBzWywtioCBdn2YoryXYgq4w8PXIGEIP4Bo+w9UkUgElZIJfzpmQ/57uoMemKCtg==\"\n",
    );
    let out = moat(&path, &["check"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("warning: line 4 column 12: broker.listen.plain is declared but no identity has plaintext: true"), "{err}");
    assert!(
        err.contains("warning: line 5 column 23: PUBLIC network 203.0.113.0/24"),
        "{err}"
    );
    assert!(
        err.contains("warning: line 10 column 20: users.old: imported mosquitto PBKDF2"),
        "{err}"
    );
}

#[test]
fn invalid_manifest_with_json_reports_errors_on_stdout_too() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        dir.path(),
        "version: 1\nusers:\n  bob:\n    role: ghost\n    password_hash: \"HASH\"\n",
    );
    let out = moat(&path, &["check", "--json"]);
    assert_eq!(out.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["valid"], false);
    assert_eq!(v["errors"][0]["line"], 4);
    assert!(stderr(&out).contains("line 4 column 11"));
}

#[test]
fn check_of_a_missing_manifest_fails() {
    let dir = tempfile::tempdir().unwrap();
    let out = moat(&dir.path().join("nope.yaml"), &["check"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("cannot read manifest"),
        "{}",
        stderr(&out)
    );
}
