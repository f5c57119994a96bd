//! Nobody gets in without credentials, and nobody gets more than their rules:
//! anonymous and wrong-password CONNECTs, plaintext for identities not marked for
//! it, unauthorized publish/subscribe, `#` never delivering `$SYS`, and client-id
//! takeover by another identity.

mod common;

use std::process::Command;
use std::time::Duration;

use common::{Moat, Sub, run_bounded};

const BODY: &str = r##"users:
  alice:
    password_hash: "{HASH}"
    publish: ["home/#"]
    subscribe: ["#"]
  admin:
    password_hash: "{HASH}"
    subscribe: ["$SYS/#"]
  eve:
    password_hash: "{HASH}"
    publish: ["eve/#"]
    subscribe: ["eve/#"]
devices:
  plug:
    password_hash: "{HASH}"
    plaintext: true
    publish: ["home/plug/#"]
"##;

fn sub_once(moat: &Moat, args: Vec<String>) -> (bool, String, String) {
    let out = run_bounded(
        Command::new("mosquitto_sub").args(args),
        Duration::from_secs(10),
    );
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned() + &moat.log(),
    )
}

fn tls(moat: &Moat, user: Option<(&str, &str)>, version: &str, extra: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = vec![
        "-h".into(),
        "127.0.0.1".into(),
        "-p".into(),
        moat.tls_port.to_string(),
        "--cafile".into(),
        common::path_str(&moat.ca()),
        "-V".into(),
        version.into(),
    ];
    if let Some((u, p)) = user {
        args.extend(["-u".into(), u.into(), "-P".into(), p.into()]);
    }
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

#[test]
fn anonymous_and_wrong_password_are_refused_on_every_listener() {
    let moat = Moat::start_with(BODY, true, "");
    for version in ["mqttv311", "mqttv5"] {
        let (ok, _, log) = sub_once(
            &moat,
            tls(
                &moat,
                None,
                version,
                &["-t", "home/x", "-C", "1", "-W", "3"],
            ),
        );
        assert!(!ok, "anonymous TLS accepted ({version})\n{log}");
        let (ok, _, log) = sub_once(
            &moat,
            tls(
                &moat,
                Some(("alice", "wrong")),
                version,
                &["-t", "home/x", "-C", "1", "-W", "3"],
            ),
        );
        assert!(!ok, "wrong password accepted ({version})\n{log}");
        let (ok, _, log) = sub_once(
            &moat,
            tls(
                &moat,
                Some(("nobody", "x")),
                version,
                &["-t", "home/x", "-C", "1", "-W", "3"],
            ),
        );
        assert!(!ok, "unknown user accepted ({version})\n{log}");
        let plain = moat.plain_port.unwrap().to_string();
        let (ok, _, log) = sub_once(
            &moat,
            vec![
                "-h".into(),
                "127.0.0.1".into(),
                "-p".into(),
                plain.clone(),
                "-V".into(),
                version.into(),
                "-t".into(),
                "home/x".into(),
                "-C".into(),
                "1".into(),
                "-W".into(),
                "3".into(),
            ],
        );
        assert!(!ok, "anonymous plaintext accepted ({version})\n{log}");
    }
    assert!(moat.log().contains("anonymous"), "the refusal is audited");
}

#[test]
fn plaintext_only_for_identities_marked_for_it() {
    let moat = Moat::start_with(BODY, true, "");
    let publish =
        |user: &str| moat.publish_plain(user, &["-t", "home/plug/state", "-m", "on", "-q", "1"]);
    let out = publish("plug");
    assert!(
        out.status.success(),
        "plug on plaintext: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        moat.log()
    );
    let out = publish("alice");
    assert!(!out.status.success(), "alice is not marked plaintext: true");
}

#[test]
fn unauthorized_publish_and_subscribe_deliver_nothing() {
    let moat = Moat::start_with(BODY, true, "");
    let pw = common::PASSWORD;
    // eve may not subscribe to home/#: SUBACK failure (v5 exits non-zero).
    let (_, out, _) = sub_once(
        &moat,
        tls(
            &moat,
            Some(("eve", pw)),
            "mqttv5",
            &["-t", "home/#", "-C", "1", "-W", "3"],
        ),
    );
    assert!(out.trim().is_empty());
    // alice subscribes to everything; eve publishes outside her rules: nothing arrives.
    let watcher = Sub::start_subscribed(&tls(
        &moat,
        Some(("alice", pw)),
        "mqttv311",
        &["-t", "#", "-v"],
    ));
    let out = run_bounded(
        Command::new("mosquitto_pub").args(tls(
            &moat,
            Some(("eve", pw)),
            "mqttv5",
            &["-t", "home/door", "-m", "open", "-q", "1"],
        )),
        Duration::from_secs(10),
    );
    // The v5 PUBACK says "not authorized"; mosquitto_pub reports it on stderr.
    let _ = out;
    let out = run_bounded(
        Command::new("mosquitto_pub").args(tls(
            &moat,
            Some(("eve", pw)),
            "mqttv311",
            &["-t", "home/door", "-m", "open311", "-q", "0"],
        )),
        Duration::from_secs(10),
    );
    assert!(
        out.status.success(),
        "3.1.1 cannot signal the refusal; the message is dropped"
    );
    let out = run_bounded(
        Command::new("mosquitto_pub").args(tls(
            &moat,
            Some(("eve", pw)),
            "mqttv311",
            &["-t", "eve/ok", "-m", "allowed"],
        )),
        Duration::from_secs(10),
    );
    assert!(out.status.success());
    // eve's allowed publish comes after the denied ones: once it has arrived, a
    // denied one that was going to be delivered would have been.
    assert!(
        watcher.wait_for("eve/ok allowed", Duration::from_secs(10)),
        "{}",
        moat.log()
    );
    let seen = watcher.stop();
    assert!(
        !seen.contains("open"),
        "denied publish was delivered: {seen}"
    );
    // `#` never delivers $SYS (which is published every 10 s, retained).
    assert!(!seen.contains("$SYS"), "# delivered $SYS: {seen}");
    assert!(moat.log().contains("publish denied"));
}

#[test]
fn sys_topics_only_for_identities_granted_them() {
    let moat = Moat::start_with(BODY, true, "");
    let (_, out, log) = sub_once(
        &moat,
        tls(
            &moat,
            Some(("admin", common::PASSWORD)),
            "mqttv311",
            &["-t", "$SYS/broker/version", "-C", "1", "-W", "12"],
        ),
    );
    assert!(out.contains("moat"), "admin reads $SYS: {out}\n{log}");
    let (_, out, _) = sub_once(
        &moat,
        tls(
            &moat,
            Some(("alice", common::PASSWORD)),
            "mqttv311",
            &["-t", "$SYS/#", "-C", "1", "-W", "3"],
        ),
    );
    assert!(out.trim().is_empty(), "alice got $SYS: {out}");
}

#[test]
fn client_id_takeover_by_another_identity_is_refused() {
    let moat = Moat::start_with(BODY, true, "");
    let pw = common::PASSWORD;
    let owner = Sub::start_subscribed(&tls(
        &moat,
        Some(("alice", pw)),
        "mqttv311",
        &["-t", "home/t", "-i", "shared-id"],
    ));
    let (ok, _, log) = sub_once(
        &moat,
        tls(
            &moat,
            Some(("eve", pw)),
            "mqttv311",
            &["-t", "eve/t", "-i", "shared-id", "-C", "1", "-W", "3"],
        ),
    );
    assert!(!ok, "eve took alice's client id\n{log}");
    // alice's connection is still alive and receiving.
    let out = run_bounded(
        Command::new("mosquitto_pub").args(tls(
            &moat,
            Some(("alice", pw)),
            "mqttv311",
            &["-t", "home/t", "-m", "still-here"],
        )),
        Duration::from_secs(10),
    );
    assert!(out.status.success());
    assert!(
        owner.wait_for("still-here", Duration::from_secs(5)),
        "{}",
        moat.log()
    );
}

#[test]
fn persistent_sessions_per_identity_are_capped_by_the_manifest() {
    let moat = Moat::start_with(BODY, true, "  limits: { max_sessions_per_identity: 1 }\n");
    let session = |id: &str| {
        let args = common::with_extra(
            moat.tls_args("eve"),
            &["-t", "eve/x", "-q", "1", "-c", "-i", id, "-W", "1"],
        );
        let out = common::mosquitto("mosquitto_sub", &args);
        String::from_utf8_lossy(&out.stderr).to_lowercase()
    };
    let first = session("eve-a");
    assert!(
        !first.contains("refused") && !first.contains("denied"),
        "first session: {first}"
    );
    // A second client id with a session of its own is over the quota ...
    let second = session("eve-b");
    assert!(
        second.contains("refused"),
        "second persistent session accepted: {second}\n{}",
        moat.log()
    );
    // ... while the first one resumes as before.
    let again = session("eve-a");
    assert!(!again.contains("refused"), "first session lost: {again}");
}
