//! Real clients against the real broker over TLS: mosquitto_pub/sub (3.1.1 and 5),
//! paho-mqtt (what Home Assistant uses), rumqttc, and a device with a client
//! certificate. QoS 0/1/2, retained, will, persistent session, shared subscription.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::{Moat, Sub, have, run_bounded};

const BODY: &str = r##"users:
  alice:
    password_hash: "{HASH}"
    publish: ["home/#", "will/alice"]
    subscribe: ["home/#", "will/#"]
  bob:
    password_hash: "{HASH}"
    publish: ["home/#"]
    subscribe: ["home/#", "will/#"]
devices:
  sensor-1:
    certificate: true
    publish: ["home/sensor-1/#"]
    subscribe: ["home/cmd/sensor-1"]
"##;

fn pub_args(moat: &Moat, user: &str, version: &str, extra: &[&str]) -> Vec<String> {
    let mut args = moat.tls_args(user);
    args.extend(["-V".into(), version.into()]);
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

fn publish(moat: &Moat, user: &str, version: &str, extra: &[&str]) {
    let out = run_bounded(
        Command::new("mosquitto_pub").args(pub_args(moat, user, version, extra)),
        Duration::from_secs(10),
    );
    assert!(
        out.status.success(),
        "mosquitto_pub {extra:?} failed: {}\nbroker log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        moat.log()
    );
}

#[test]
fn mosquitto_clients_qos_0_1_2_both_versions() {
    if !have("mosquitto_pub") {
        panic!("mosquitto-clients is required (apt-get install mosquitto-clients)");
    }
    let moat = Moat::start(BODY);
    for version in ["mqttv311", "mqttv5"] {
        for qos in ["0", "1", "2"] {
            let topic = format!("home/{version}/q{qos}");
            let sub = Sub::start_subscribed(&pub_args(
                &moat,
                "bob",
                version,
                &["-t", &topic, "-q", qos, "-C", "1"],
            ));
            let payload = format!("hello-{version}-{qos}");
            publish(
                &moat,
                "alice",
                version,
                &["-t", &topic, "-q", qos, "-m", &payload],
            );
            assert!(
                sub.wait_for(&payload, Duration::from_secs(5)),
                "{version} qos {qos} not delivered\n{}",
                moat.log()
            );
        }
    }
}

#[test]
fn retained_message_set_delivered_and_cleared() {
    let moat = Moat::start(BODY);
    publish(
        &moat,
        "alice",
        "mqttv311",
        &["-t", "home/ret", "-m", "kept", "-r", "-q", "1"],
    );
    let out = run_bounded(
        Command::new("mosquitto_sub").args(pub_args(
            &moat,
            "bob",
            "mqttv5",
            &["-t", "home/ret", "-C", "1", "-v"],
        )),
        Duration::from_secs(10),
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "home/ret kept");
    // An empty retained payload clears it: a new subscriber gets nothing.
    publish(&moat, "alice", "mqttv311", &["-t", "home/ret", "-n", "-r"]);
    let out = run_bounded(
        Command::new("mosquitto_sub").args(pub_args(
            &moat,
            "bob",
            "mqttv5",
            &["-t", "home/ret", "-C", "1", "-W", "2"],
        )),
        Duration::from_secs(10),
    );
    assert!(String::from_utf8_lossy(&out.stdout).trim().is_empty());
}

#[test]
fn client_certificate_device() {
    let moat = Moat::start(BODY);
    let sub = Sub::start_subscribed(&pub_args(
        &moat,
        "bob",
        "mqttv311",
        &["-t", "home/sensor-1/temp", "-C", "1"],
    ));
    let out = common::mosquitto(
        "mosquitto_pub",
        &common::with_extra(
            moat.cert_args("sensor-1"),
            &["-t", "home/sensor-1/temp", "-m", "21.5", "-q", "1"],
        ),
    );
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        moat.log()
    );
    assert!(sub.wait_for("21.5", Duration::from_secs(5)));
    // Outside its rules: refused (v5 PUBACK "not authorized" makes mosquitto_pub fail).
    let out = common::mosquitto(
        "mosquitto_pub",
        &common::with_extra(
            moat.cert_args("sensor-1"),
            &["-V", "mqttv5", "-t", "home/other", "-m", "x", "-q", "1"],
        ),
    );
    let _ = out;
    assert!(
        moat.log().contains("publish denied") && moat.log().contains("home/other"),
        "publish outside the rules was not refused:\n{}",
        moat.log()
    );
}

#[test]
fn will_is_published_when_a_client_vanishes() {
    let moat = Moat::start(BODY);
    let sub = Sub::start_subscribed(&pub_args(&moat, "bob", "mqttv311", &["-t", "will/#", "-v"]));
    let mut holder = Command::new("mosquitto_sub")
        .args(pub_args(
            &moat,
            "alice",
            "mqttv311",
            &[
                "-t",
                "home/x",
                "--will-topic",
                "will/alice",
                "--will-payload",
                "gone",
                "-k",
                "5",
            ],
        ))
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    // SIGKILL: no DISCONNECT is sent, so the will fires.
    holder.kill().unwrap();
    holder.wait().unwrap();
    assert!(
        sub.wait_for("will/alice gone", Duration::from_secs(5)),
        "will not delivered\n{}",
        moat.log()
    );
}

#[test]
fn persistent_session_receives_what_was_sent_while_offline() {
    let moat = Moat::start(BODY);
    let session = |extra: &[&str]| {
        let mut args = pub_args(
            &moat,
            "bob",
            "mqttv311",
            &["-t", "home/offline", "-q", "1", "-i", "bob-persist", "-c"],
        );
        args.extend(extra.iter().map(|s| s.to_string()));
        args
    };
    // Create the session, wait for its SUBACK, then leave.
    Sub::start_subscribed(&session(&[])).stop();
    publish(
        &moat,
        "alice",
        "mqttv311",
        &["-t", "home/offline", "-q", "1", "-m", "while-away"],
    );
    let out = run_bounded(
        Command::new("mosquitto_sub").args(session(&["-C", "1", "-W", "5"])),
        Duration::from_secs(10),
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "while-away",
        "{}",
        moat.log()
    );
}

#[test]
fn shared_subscription_splits_messages() {
    let moat = Moat::start(BODY);
    let a = Sub::start_subscribed(&pub_args(
        &moat,
        "alice",
        "mqttv5",
        &["-t", "$share/g/home/shared", "-q", "1"],
    ));
    let b = Sub::start_subscribed(&pub_args(
        &moat,
        "alice",
        "mqttv5",
        &["-t", "$share/g/home/shared", "-q", "1"],
    ));
    for i in 0..10 {
        publish(
            &moat,
            "bob",
            "mqttv5",
            &["-t", "home/shared", "-q", "1", "-m", &format!("m{i}")],
        );
    }
    // Bounded wait for all ten (delivery is slower under emulation), then a moment
    // for any duplicate to show up.
    let deadline = Instant::now() + Duration::from_secs(10);
    while a.output().lines().count() + b.output().lines().count() < 10 && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(300));
    let (a, b) = (a.stop(), b.stop());
    let (na, nb) = (a.lines().count(), b.lines().count());
    assert_eq!(
        na + nb,
        10,
        "each message exactly once across the group: {a:?} {b:?}"
    );
    assert!(na > 0 && nb > 0, "both members get a share: {na} {nb}");
}

#[test]
fn paho_mqtt_both_versions() {
    let moat = Moat::start(BODY);
    let script = r##"
import sys, ssl, time, threading
import paho.mqtt.client as mqtt
port, ca, password, proto = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
version = mqtt.MQTTv5 if proto == "5" else mqtt.MQTTv311
got = threading.Event()
def on_message(c, u, m):
    if m.payload == b"from-paho":
        got.set()
sub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="paho-sub-" + proto, protocol=version)
pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="paho-pub-" + proto, protocol=version)
for c, user in ((sub, "bob"), (pub, "alice")):
    c.username_pw_set(user, password)
    c.tls_set(ca_certs=ca)
    c.connect("127.0.0.1", port, 30)
    c.loop_start()
sub.on_message = on_message
time.sleep(0.5)
sub.subscribe("home/paho", qos=1)
time.sleep(0.5)
info = pub.publish("home/paho", b"from-paho", qos=2)
info.wait_for_publish(5)
ok = got.wait(5)
for c in (sub, pub):
    c.disconnect(); c.loop_stop()
print("OK" if ok else "MISSING")
"##;
    for proto in ["3", "5"] {
        let out = moat.python_tls(script, &[proto], Duration::from_secs(30));
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(
            stdout.trim(),
            "OK",
            "paho v{proto}: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            moat.log()
        );
    }
}
