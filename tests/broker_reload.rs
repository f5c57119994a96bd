//! Reload without restart (SIGHUP and `moat reload`): a removed identity is
//! disconnected within a second, a narrowed rule drops the subscription, a broken
//! manifest changes nothing.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::{Moat, Sub, run_bounded};

const BODY: &str = r##"users:
  alice:
    password_hash: "{HASH}"
    publish: ["home/#"]
    subscribe: ["home/#"]
  bob:
    password_hash: "{HASH}"
    subscribe: ["home/#"]
"##;

fn rewrite(moat: &Moat, from: &str, to: &str) {
    let path = moat.manifest_path();
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.contains(from), "manifest lacks {from:?}");
    std::fs::write(&path, text.replacen(from, to, 1)).unwrap();
}

fn publish(moat: &Moat, payload: &str) {
    let out = run_bounded(
        Command::new("mosquitto_pub")
            .args(moat.tls_args("alice"))
            .args(["-t", "home/a", "-m", payload]),
        Duration::from_secs(10),
    );
    assert!(out.status.success(), "{}", moat.log());
}

fn reload(moat: &Moat) {
    let out = Command::new(common::moat_bin())
        .args(["reload", "--pid-file"])
        .arg(moat.dir.path().join("moat.pid"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "moat reload: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn wait_log(moat: &Moat, needle: &str, count: usize) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while moat.log().matches(needle).count() < count {
        assert!(
            Instant::now() < deadline,
            "never logged {needle:?}:\n{}",
            moat.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn removed_user_is_disconnected_within_a_second() {
    let moat = Moat::start(BODY);
    let mut args = moat.tls_args("bob");
    args.extend(["-t", "home/#"].map(String::from));
    // Returns once bob's SUBACK has arrived: he is connected and subscribed.
    let bob = Sub::start_subscribed(&args);
    rewrite(&moat, "  bob:\n", "  bobby:\n");
    let started = Instant::now();
    moat.signal("HUP");
    // mosquitto_sub reconnects forever on its own; what counts is that the broker
    // dropped bob's session and refuses him now.
    wait_log(&moat, "manifest reloaded", 1);
    let took = started.elapsed();
    assert!(took < Duration::from_secs(1), "reload took {took:?}");
    assert!(moat.log().contains("sessions_removed=1"), "{}", moat.log());
    bob.stop();
    let out = run_bounded(
        Command::new("mosquitto_sub")
            .args(&args)
            .args(["-C", "1", "-W", "2"]),
        Duration::from_secs(10),
    );
    assert!(!out.status.success(), "removed user still accepted");
}

#[test]
fn narrowed_rule_drops_the_subscription() {
    let moat = Moat::start(BODY);
    let mut args = moat.tls_args("bob");
    args.extend(["-t", "home/#", "-V", "mqttv311"].map(String::from));
    let bob = Sub::start_subscribed(&args);
    publish(&moat, "before");
    assert!(bob.wait_for("before", Duration::from_secs(5)));
    // bob's only grant becomes home/kitchen/#: his home/# subscription is no longer covered.
    let text = std::fs::read_to_string(moat.manifest_path()).unwrap();
    let bob_block_start = text.find("  bob:").unwrap();
    let (head, tail) = text.split_at(bob_block_start);
    std::fs::write(
        moat.manifest_path(),
        format!("{head}{}", tail.replace("home/#", "home/kitchen/#")),
    )
    .unwrap();
    reload(&moat);
    wait_log(&moat, "manifest reloaded", 1);
    assert!(
        moat.log().contains("subscriptions_dropped=1"),
        "{}",
        moat.log()
    );
    publish(&moat, "after");
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        !bob.output().contains("after"),
        "dropped subscription still delivered"
    );
}

#[test]
fn broken_manifest_keeps_the_old_policy() {
    let moat = Moat::start(BODY);
    std::fs::write(
        moat.manifest_path(),
        "version: 1\nbroker: [this is not a mapping\n",
    )
    .unwrap();
    moat.signal("HUP");
    wait_log(&moat, "reload refused", 1);
    publish(&moat, "still-works");
    let mut args = moat.tls_args("bob");
    args.extend(["-t", "home/#", "-C", "1", "-W", "2"].map(String::from));
    let out = run_bounded(
        Command::new("mosquitto_sub").args(&args),
        Duration::from_secs(10),
    );
    // bob can still connect (timeout exit is fine: no message was sent meanwhile).
    assert!(
        !String::from_utf8_lossy(&out.stderr).contains("not authori"),
        "{}",
        moat.log()
    );
}

/// An argon2id hash of the test password at the cost ceiling login accepts
/// (256 MiB, 10 passes): seconds of verification, so a reload can land during it.
fn slow_hash() -> String {
    use base64ct::{Base64Unpadded, Encoding};
    let params = argon2::Params::new(256 * 1024, 10, 1, Some(32)).unwrap();
    let argon = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
    let salt = b"slow-login-salt!";
    let mut out = [0u8; 32];
    argon
        .hash_password_into(common::PASSWORD.as_bytes(), salt, &mut out)
        .unwrap();
    format!(
        "$argon2id$v=19$m=262144,t=10,p=1${}${}",
        Base64Unpadded::encode_string(salt),
        Base64Unpadded::encode_string(&out)
    )
}

/// A reload that removes an identity while that identity's login is still inside
/// argon2 must not let it attach with the rights it had when it started: the new
/// policy is in force before sessions are re-authorized, and attaching re-resolves
/// the identity's rights under the broker lock.
#[test]
fn an_identity_removed_during_its_slow_login_is_refused() {
    let body = BODY.replace(
        "  bob:\n",
        &format!(
            "  carol:\n    password_hash: \"{}\"\n    subscribe: [\"home/#\"]\n  bob:\n",
            slow_hash()
        ),
    );
    let moat = Moat::start(&body);
    let mut args = moat.tls_args("carol");
    args.extend(["-t", "home/#", "-V", "mqttv311", "-C", "1", "-W", "30"].map(String::from));
    let mut carol = Command::new("mosquitto_sub")
        .args(&args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // The TLS handshake and CONNECT take milliseconds; verification takes seconds.
    std::thread::sleep(Duration::from_millis(300));
    rewrite(&moat, "  carol:\n", "  caroline:\n");
    moat.signal("HUP");
    wait_log(&moat, "manifest reloaded", 1);
    wait_log(&moat, "user=\"carol\"", 1);
    let log = moat.log();
    let reloaded = log.find("manifest reloaded").unwrap();
    let verified = log.find("user=\"carol\"").unwrap();
    assert!(
        reloaded < verified,
        "the reload did not land during carol's login, so this run proves nothing:\n{log}"
    );
    wait_log(&moat, "the identity was removed while it logged in", 1);
    let _ = carol.kill();
    let _ = carol.wait();
    assert!(
        !moat
            .log()
            .lines()
            .any(|l| l.contains("audit: connected ") && l.contains("identity=carol ")),
        "carol attached after her removal:\n{}",
        moat.log()
    );
}
