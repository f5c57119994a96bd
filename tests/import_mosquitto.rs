//! `moat import mosquitto` end to end, on files made by the real tools: users created
//! by Debian's `mosquitto_passwd` (`$7$` PBKDF2 hashes), an acl_file with topic,
//! pattern and deny lines, and a mosquitto.conf with plain, TLS and WebSocket
//! listeners. The imported manifest is served by `moat serve`, and the same
//! mosquitto_pub/mosquitto_sub runs go to a real `mosquitto -c` on the original
//! configuration: every login and delivery must come out the same, except the one
//! grant the report says was left out to stay closed. The Home Assistant add-on's
//! layout (its rendered template, go-auth `PBKDF2$sha512$` password file, options.json
//! logins, `/share` ACL) is imported with `--root`, and the imported users log in.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use common::cli::run_moat;
use common::mosquitto::{RealMosquitto, mosquitto_passwd, run_ok, server_cert};
use common::{Moat, Sub, free_port, have, mosquitto, path_str};

/// Distinct free loopback ports.
fn ports(n: usize) -> Vec<u16> {
    let mut out: Vec<u16> = Vec::new();
    while out.len() < n {
        let p = free_port();
        if !out.contains(&p) {
            out.push(p);
        }
    }
    out
}

fn require_tools() {
    for tool in ["mosquitto", "mosquitto_passwd", "mosquitto_pub", "openssl"] {
        assert!(
            have(tool),
            "{tool} is required (apt-get install mosquitto mosquitto-clients openssl)"
        );
    }
}

fn login(port: u16, user: &str, password: &str) -> Vec<String> {
    [
        "-h",
        "127.0.0.1",
        "-p",
        &port.to_string(),
        "-u",
        user,
        "-P",
        password,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

fn with(mut args: Vec<String>, extra: &[&str]) -> Vec<String> {
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

/// `moat import mosquitto CONF EXTRA...` into `moat.yaml` in a new directory.
fn import_into(conf: &Path, extra: &[&str]) -> (tempfile::TempDir, PathBuf, Output) {
    let target = tempfile::tempdir().unwrap();
    let manifest = target.path().join("moat.yaml");
    let conf = path_str(conf);
    let args = [&["import", "mosquitto", conf.as_str()][..], extra].concat();
    let out = run_moat(&manifest, &target.path().join("state"), &args);
    (target, manifest, out)
}

/// One access question: does `publisher`'s message on `topic` reach `subscriber`'s
/// subscription to `filter`?
struct Case {
    name: &'static str,
    subscriber: (&'static str, &'static str),
    filter: &'static str,
    publisher: (&'static str, &'static str),
    topic: &'static str,
}

/// Runs each case against a broker's plaintext port with mosquitto_sub/_pub at QoS 1
/// (a denied publish may be acknowledged and dropped, so only delivery tells). A
/// delivery is waited for 4 s, which is also how long "not delivered" waits.
fn outcomes(port: u16, cases: &[Case], tag: &str) -> Vec<(&'static str, bool)> {
    cases
        .iter()
        .map(|case| {
            let (sub_user, sub_pass) = case.subscriber;
            let sub = subscribed(login(port, sub_user, sub_pass), case.filter);
            let payload = format!("{tag}-{}", case.name);
            let (pub_user, pub_pass) = case.publisher;
            mosquitto(
                "mosquitto_pub",
                &with(
                    login(port, pub_user, pub_pass),
                    &["-t", case.topic, "-q", "1", "-m", &payload],
                ),
            );
            let delivered = sub.wait_for(&payload, Duration::from_secs(4));
            sub.stop();
            (case.name, delivered)
        })
        .collect()
}

/// A background `mosquitto_sub -d -v -q 1 -t FILTER` that has its SUBACK (a password
/// check can take a while in a debug build; mosquitto grants and filters later, moat
/// refuses in the SUBACK: either way the subscription request is done).
fn subscribed(args: Vec<String>, filter: &str) -> Sub {
    let sub = Sub::start_line_buffered(&with(args, &["-d", "-v", "-q", "1", "-t", filter]));
    assert!(
        sub.wait_for("received SUBACK", Duration::from_secs(20)),
        "no SUBACK for {filter}: {}",
        sub.output()
    );
    sub
}

/// Whether a login with these credentials is accepted (a publish to a topic it owns).
fn logs_in(port: u16, user: &str, password: &str, topic: &str) -> bool {
    mosquitto(
        "mosquitto_pub",
        &with(
            login(port, user, password),
            &["-t", topic, "-m", "x", "-q", "1"],
        ),
    )
    .status
    .success()
}

const ACL: &str = "\
# Before any user line: anonymous clients (moat has none; reported).
topic read public/#

user alice
topic readwrite home/alice/#
topic read home/shared/#

user bob
topic write home/shared/bob
topic read home/alice/status
topic readwrite garage/#
topic deny garage/door

# Every user: their own subtree.
pattern readwrite users/%u/#
";

const CONF: &str = "\
# A typical hand-written mosquitto 2 configuration. (`user root`: the test runs as
# root, and mosquitto would otherwise drop to a user that cannot read the temp dir.)
user root
per_listener_settings false
allow_anonymous false
password_file {DIR}/passwd
acl_file acl

listener {PLAIN} 127.0.0.1

listener {TLS} 127.0.0.1
cafile server.pem
certfile server.pem
keyfile server.key

listener {WS} 127.0.0.1
protocol websockets

persistence false
log_dest stderr
max_queued_messages 500
sys_interval 10
";

fn conf_text(dir: &Path, plain: u16, tls: u16, ws: u16) -> String {
    CONF.replace("{DIR}", &path_str(dir))
        .replace("{PLAIN}", &plain.to_string())
        .replace("{TLS}", &tls.to_string())
        .replace("{WS}", &ws.to_string())
}

#[test]
fn imported_users_keep_their_passwords_and_rights_like_real_mosquitto() {
    require_tools();
    let src = tempfile::tempdir().unwrap();
    let pw = src.path().join("passwd");
    mosquitto_passwd(&pw, "alice", "alice-old-pass", true);
    mosquitto_passwd(&pw, "bob", "bob old pass", false);
    mosquitto_passwd(&pw, "carol+admin", "carol-pass", false);
    assert!(std::fs::read_to_string(&pw).unwrap().contains("alice:$7$"));
    std::fs::write(src.path().join("acl"), ACL).unwrap();
    server_cert(src.path());
    let [plain, tls, ws, real_plain, real_tls, real_ws] = ports(6)[..] else {
        unreachable!()
    };
    let conf = src.path().join("mosquitto.conf");
    std::fs::write(&conf, conf_text(src.path(), plain, tls, ws)).unwrap();
    let real_conf = src.path().join("real.conf");
    std::fs::write(
        &real_conf,
        conf_text(src.path(), real_plain, real_tls, real_ws),
    )
    .unwrap();

    let (target, manifest, out) = import_into(&conf, &["--json"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let report = &json["report"];
    assert_eq!(report["users"], serde_json::json!(["alice", "bob"]));
    let not_carried = report["not_carried"].to_string();
    for expected in [
        "carol+admin",
        "topic read public/#",
        "topic readwrite garage/# (user bob)",
        "protocol websockets",
        "persistence false",
        "log_dest stderr",
    ] {
        assert!(
            not_carried.contains(expected),
            "{expected} missing: {not_carried}"
        );
    }
    let changed = report["changed"].to_string();
    for expected in [
        "kept as broker.listen.tls",
        "kept as broker.listen.plain",
        "wider than a user's read rules",
    ] {
        assert!(changed.contains(expected), "{expected} missing: {changed}");
    }
    let yaml = std::fs::read_to_string(&manifest).unwrap();
    assert!(yaml.contains("plaintext: true"), "{yaml}");
    assert!(yaml.contains("max_queued_messages: 500"), "{yaml}");
    assert!(
        !yaml.contains("garage"),
        "a grant overlapping a deny must be left out:\n{yaml}"
    );

    let moat = Moat::start_in(target, tls, Some(plain));
    let real = RealMosquitto::start(&real_conf, real_plain);

    let alice = ("alice", "alice-old-pass");
    let bob = ("bob", "bob old pass");
    let cases = [
        Case {
            name: "alice-own-subtree",
            subscriber: alice,
            filter: "home/alice/#",
            publisher: alice,
            topic: "home/alice/lamp",
        },
        Case {
            name: "bob-reads-alice-status",
            subscriber: bob,
            filter: "home/alice/status",
            publisher: alice,
            topic: "home/alice/status",
        },
        Case {
            name: "bob-may-not-write-alice",
            subscriber: alice,
            filter: "home/alice/#",
            publisher: bob,
            topic: "home/alice/lamp",
        },
        Case {
            name: "bob-writes-shared",
            subscriber: alice,
            filter: "home/shared/#",
            publisher: bob,
            topic: "home/shared/bob",
        },
        Case {
            name: "pattern-own",
            subscriber: bob,
            filter: "users/bob/#",
            publisher: bob,
            topic: "users/bob/x",
        },
        Case {
            name: "pattern-not-others",
            subscriber: bob,
            filter: "users/bob/#",
            publisher: alice,
            topic: "users/bob/x",
        },
        Case {
            name: "alice-may-not-read-bobs",
            subscriber: alice,
            filter: "users/bob/#",
            publisher: bob,
            topic: "users/bob/y",
        },
        Case {
            name: "bob-subscribes-wider-than-his-read",
            subscriber: bob,
            filter: "home/alice/#",
            publisher: alice,
            topic: "home/alice/status",
        },
        Case {
            name: "garage-next-to-deny",
            subscriber: bob,
            filter: "garage/light",
            publisher: bob,
            topic: "garage/light",
        },
    ];
    let on_moat = outcomes(plain, &cases, "moat");
    let on_real = outcomes(real_plain, &cases, "real");
    // The differences the report announced: mosquitto subtracts a deny from a grant,
    // moat cannot, so the whole grant was left out; mosquitto accepts a subscription
    // wider than the read rules and filters each message, moat refuses it.
    let announced = ["garage-next-to-deny", "bob-subscribes-wider-than-his-read"];
    for ((name, moat_says), (_, real_says)) in on_moat.iter().zip(&on_real) {
        if announced.contains(name) {
            assert!(
                *real_says && !*moat_says,
                "{name}: mosquitto {real_says}, moat {moat_says}"
            );
        } else {
            assert_eq!(
                moat_says,
                real_says,
                "{name}: moat {moat_says}, mosquitto {real_says}\nmoat log:\n{}\nmosquitto log:\n{}",
                moat.log(),
                real.log.lock().unwrap()
            );
        }
    }
    // The expected answers, so "the same" is not "both broken".
    let delivered: Vec<bool> = on_real.iter().map(|(_, d)| *d).collect();
    assert_eq!(
        delivered,
        [true, true, false, true, true, false, false, true, true]
    );

    // Old passwords log in, wrong ones do not, on both.
    for port in [plain, real_plain] {
        assert!(logs_in(port, "alice", "alice-old-pass", "home/alice/x"));
        assert!(!logs_in(port, "alice", "alice-new-pass", "home/alice/x"));
    }
    // The user whose name moat refuses (reported above) is not there.
    assert!(!logs_in(
        plain,
        "carol+admin",
        "carol-pass",
        "users/carol/x"
    ));
    // And over TLS with moat's own CA.
    let sub = subscribed(login(plain, "alice", "alice-old-pass"), "home/alice/#");
    let tls_pub = mosquitto(
        "mosquitto_pub",
        &with(
            login(tls, "alice", "alice-old-pass"),
            &[
                "--cafile",
                &path_str(&moat.ca()),
                "-t",
                "home/alice/tls",
                "-m",
                "over-tls",
                "-q",
                "1",
            ],
        ),
    );
    assert!(
        tls_pub.status.success(),
        "{}",
        String::from_utf8_lossy(&tls_pub.stderr)
    );
    assert!(
        sub.wait_for("over-tls", Duration::from_secs(5)),
        "{}",
        moat.log()
    );
}

#[test]
fn allow_anonymous_true_is_refused_with_the_fix_and_nothing_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("mosquitto.conf");
    std::fs::write(
        &conf,
        "listener 1883\r\n# open broker\r\nallow_anonymous true\r\n",
    )
    .unwrap();
    let manifest = dir.path().join("moat.yaml");
    let out = run_moat(
        &manifest,
        &dir.path().join("state"),
        &["import", "mosquitto", &path_str(&conf)],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("mosquitto.conf:3: allow_anonymous true"),
        "{stderr}"
    );
    assert!(
        stderr.contains("mosquitto_passwd") && stderr.contains("import again"),
        "{stderr}"
    );
    assert!(!manifest.exists());
}

#[test]
fn an_existing_manifest_is_kept_unless_forced_and_missing_files_name_the_line() {
    let dir = tempfile::tempdir().unwrap();
    let pw = dir.path().join("passwd");
    std::fs::write(&pw, "").unwrap();
    let conf = dir.path().join("mosquitto.conf");
    std::fs::write(&conf, "listener 1883\npassword_file passwd\n").unwrap();
    let manifest = dir.path().join("moat.yaml");
    std::fs::write(&manifest, "keep me").unwrap();
    let state = dir.path().join("state");
    let args = ["import", "mosquitto", &path_str(&conf)];
    let out = run_moat(&manifest, &state, &args);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(std::fs::read_to_string(&manifest).unwrap(), "keep me");
    let out = run_moat(&manifest, &state, &[&args[..], &["--force"]].concat());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        std::fs::read_to_string(&manifest)
            .unwrap()
            .starts_with("# Imported from")
    );

    std::fs::write(&conf, "listener 1883\n\nacl_file /nonexistent/moat-acl\n").unwrap();
    let out = run_moat(&manifest, &state, &[&args[..], &["--force"]].concat());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr.contains("mosquitto.conf:3: cannot read acl_file /nonexistent/moat-acl"),
        "{stderr}"
    );
}

/// The add-on's mosquitto.conf as its tempio template renders it with TLS on and
/// `customize.active: true` (home-assistant/addons mosquitto/rootfs/usr/share/tempio/
/// mosquitto.gtpl), listeners moved to free loopback ports.
const ADDON_CONF: &str = "\
user root
log_dest stdout
log_type error
log_timestamp_format %Y-%m-%d %H:%M:%S
persistence true
persistence_location /data/

# Limits
max_queued_messages 8192

# Authentication plugin
auth_plugin /usr/share/mosquitto/go-auth.so
auth_plugin_deny_special_chars false
auth_opt_backends files,http
auth_opt_hasher pbkdf2
auth_opt_cache true
auth_opt_files_password_path /etc/mosquitto/pw
auth_opt_files_acl_path /etc/mosquitto/acl
auth_opt_http_host 127.0.0.1
auth_opt_http_port 80

listener {PLAIN} 127.0.0.1
protocol mqtt

listener {WS} 127.0.0.1
protocol websockets

listener {TLS} 127.0.0.1
protocol mqtt
cafile /ssl/fullchain.pem
certfile /ssl/fullchain.pem
keyfile /ssl/privkey.pem
require_certificate false

include_dir /share/mosquitto
";

/// A go-auth `PBKDF2$sha512$100000$salt$hash` line as the add-on's `pw -p` writes it
/// (iegomez/mosquitto-go-auth hashing/pbkdf2.go), computed by Python's hashlib.
fn go_auth_hash(password: &str) -> String {
    let script = "import base64,hashlib,os,sys\nsalt=os.urandom(16)\nkey=hashlib.pbkdf2_hmac('sha512',sys.argv[1].encode(),salt,100000,64)\nprint('PBKDF2$sha512$100000$'+base64.b64encode(salt).decode()+'$'+base64.b64encode(key).decode())";
    run_ok(Command::new("python3").args(["-c", script, password]))
        .trim()
        .to_string()
}

#[test]
fn home_assistant_addon_layout_imports_and_its_users_log_in() {
    require_tools();
    let root = tempfile::tempdir().unwrap();
    let r = root.path();
    for dir in ["etc/mosquitto", "data", "ssl", "share/mosquitto"] {
        std::fs::create_dir_all(r.join(dir)).unwrap();
    }
    let [plain, tls, ws] = ports(3)[..] else {
        unreachable!()
    };
    let conf = r.join("etc/mosquitto/mosquitto.conf");
    std::fs::write(
        &conf,
        ADDON_CONF
            .replace("{PLAIN}", &plain.to_string())
            .replace("{TLS}", &tls.to_string())
            .replace("{WS}", &ws.to_string()),
    )
    .unwrap();
    // What the add-on's cont-init script writes: system users, then each login.
    let ha_password = "ha-system-password-from-system_user.json";
    let mut pw = std::fs::File::create(r.join("etc/mosquitto/pw")).unwrap();
    writeln!(pw, "homeassistant:{}", go_auth_hash(ha_password)).unwrap();
    writeln!(pw, "addons:{}", go_auth_hash("addons-password")).unwrap();
    for (path, text) in [
        (
            "etc/mosquitto/acl",
            "user homeassistant\nuser addons\nuser plug\n",
        ),
        (
            "data/options.json",
            r#"{"logins":[{"username":"plug","password":"plug-pass"}],"customize":{"active":true,"folder":"mosquitto"},"certfile":"fullchain.pem","keyfile":"privkey.pem","require_certificate":false}"#,
        ),
        // DOCS.md's recipe for ACLs in the customize folder.
        (
            "share/mosquitto/acl.conf",
            "acl_file /share/mosquitto/accesscontrollist\n",
        ),
        (
            "share/mosquitto/accesscontrollist",
            "user addons\ntopic readwrite #\n\nuser homeassistant\ntopic readwrite #\n\nuser plug\ntopic readwrite tele/plug/#\n",
        ),
    ] {
        std::fs::write(r.join(path), text).unwrap();
    }

    let (target, manifest, out) = import_into(
        &conf,
        &[
            "--root",
            &path_str(r),
            "--addon-options",
            &path_str(&r.join("data/options.json")),
        ],
    );
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("3 users (homeassistant, addons, plug)"),
        "{stdout}"
    );
    for expected in [
        "auth_opt_backends files,http",
        "Supervisor",
        "protocol websockets",
        "listener",
    ] {
        assert!(stdout.contains(expected), "{expected} missing:\n{stdout}");
    }
    let yaml = std::fs::read_to_string(&manifest).unwrap();
    assert!(yaml.contains("password_hash: \"$7$100000$"), "{yaml}");
    assert!(
        yaml.contains("$argon2id$"),
        "the plaintext login is hashed:\n{yaml}"
    );
    assert!(!yaml.contains("plug-pass"), "{yaml}");

    let moat = Moat::start_in(target, tls, Some(plain));
    let ha = ("homeassistant", ha_password);
    let plug = ("plug", "plug-pass");
    let cases = [
        Case {
            name: "plug-state-reaches-ha",
            subscriber: ha,
            filter: "tele/#",
            publisher: plug,
            topic: "tele/plug/STATE",
        },
        Case {
            name: "plug-outside-its-acl",
            subscriber: ha,
            filter: "other/#",
            publisher: plug,
            topic: "other/x",
        },
        Case {
            name: "addons-user-writes-anything",
            subscriber: ha,
            filter: "zigbee2mqtt/#",
            publisher: ("addons", "addons-password"),
            topic: "zigbee2mqtt/bridge/state",
        },
    ];
    let got: Vec<bool> = outcomes(plain, &cases, "addon")
        .into_iter()
        .map(|(_, d)| d)
        .collect();
    assert_eq!(got, [true, false, true], "{}", moat.log());
    assert!(!logs_in(plain, "plug", "wrong", "tele/plug/x"));
}
