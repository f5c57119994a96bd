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
    let holder = Sub::start_subscribed(&pub_args(
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
    ));
    // SIGKILL (once the SUBACK proves it connected): no DISCONNECT is sent, so the
    // will fires.
    holder.stop();
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

/// paho-mqtt as Home Assistant drives it: a subscriber (bob) and a publisher
/// (alice) over TLS. argv: port, CA, password, protocol (`5`, `311` or `31`), then
/// the two client ids. Prints OK, MISSING, or REFUSED with the CONNACK codes.
const PAHO_SCRIPT: &str = r##"
import sys, ssl, time, threading
import paho.mqtt.client as mqtt
port, ca, password, proto = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
sub_id, pub_id = sys.argv[5], sys.argv[6]
version = {"5": mqtt.MQTTv5, "311": mqtt.MQTTv311, "31": mqtt.MQTTv31}[proto]
payload = b"from-paho-" + proto.encode()
got = threading.Event()
refused = []
def on_connect(c, u, flags, rc, props=None):
    if rc != 0:
        refused.append(str(rc))
def on_message(c, u, m):
    if m.payload == payload:
        got.set()
sub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=sub_id, protocol=version)
pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=pub_id, protocol=version)
for c, user in ((sub, "bob"), (pub, "alice")):
    c.on_connect = on_connect
    c.username_pw_set(user, password)
    c.tls_set(ca_certs=ca)
    c.connect("127.0.0.1", port, 30)
    c.loop_start()
sub.on_message = on_message
time.sleep(0.5)
sub.subscribe("home/paho", qos=1)
time.sleep(0.5)
info = pub.publish("home/paho", payload, qos=2)
info.wait_for_publish(5)
ok = got.wait(5)
for c in (sub, pub):
    c.disconnect(); c.loop_stop()
print("REFUSED " + ",".join(refused) if refused else ("OK" if ok else "MISSING"))
"##;

/// Runs [`PAHO_SCRIPT`] and expects OK.
fn paho_round_trip(moat: &Moat, proto: &str, sub_id: &str, pub_id: &str) {
    let out = moat.python_tls(
        PAHO_SCRIPT,
        &[proto, sub_id, pub_id],
        Duration::from_secs(30),
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        stdout.trim(),
        "OK",
        "paho {proto} as {sub_id:?}/{pub_id:?}: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        moat.log()
    );
}

/// paho-mqtt in every version, and clients as they are (issue 11): a client id with
/// a space, `"clean retained"` as in Eclipse Paho's own interoperability suite
/// (paho.mqtt.testing's client_test.py), and MQTT 3.1 (`protocol=MQTTv31`: paho's
/// `_send_connect` writes protocol name "MQIsdp", level 3), which Home Assistant's
/// protocol menu offers.
#[test]
fn paho_mqtt_every_version_and_a_spaced_client_id() {
    let moat = Moat::start(BODY);
    for (proto, sub_id, pub_id) in [
        ("311", "paho-sub-311", "paho-pub-311"),
        ("5", "paho-sub-5", "paho-pub-5"),
        ("311", "clean retained", "clean retained pub"),
        ("31", "clean retained", "clean retained pub"),
    ] {
        paho_round_trip(&moat, proto, sub_id, pub_id);
    }
    let log = moat.log();
    assert!(log.contains(r#"client_id="clean retained""#), "{log}");
    assert!(log.contains("protocol=V31"), "{log}");
}

/// mosquitto_pub/sub `-V mqttv31` (old devices speak 3.1) publish and receive,
/// retained included; a refused 3.1 subscription is still logged and counted,
/// though 3.1's SUBACK has no failure code to say so.
#[test]
fn mosquitto_clients_over_mqtt_3_1() {
    let moat = Moat::start(BODY);
    publish(
        &moat,
        "alice",
        "mqttv31",
        &["-t", "home/v31", "-q", "1", "-r", "-m", "retained-31"],
    );
    let out = common::mosquitto(
        "mosquitto_sub",
        &pub_args(
            &moat,
            "bob",
            "mqttv31",
            &["-t", "home/v31", "-C", "1", "-W", "5"],
        ),
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "retained-31",
        "{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        moat.log()
    );
    let sub = Sub::start_subscribed(&pub_args(
        &moat,
        "bob",
        "mqttv31",
        &["-t", "home/live31", "-q", "2"],
    ));
    publish(
        &moat,
        "alice",
        "mqttv31",
        &["-t", "home/live31", "-q", "2", "-m", "live-31"],
    );
    assert!(
        sub.wait_for("live-31", Duration::from_secs(5)),
        "{}",
        moat.log()
    );
    sub.stop();
    // bob may not subscribe to secret/#: a 3.1 SUBACK can only grant, so the client
    // sees nothing, and the refusal is in the audit log.
    let out = common::mosquitto(
        "mosquitto_sub",
        &pub_args(
            &moat,
            "bob",
            "mqttv31",
            &["-t", "secret/#", "-C", "1", "-W", "2"],
        ),
    );
    assert!(String::from_utf8_lossy(&out.stdout).trim().is_empty());
    assert!(moat.log().contains("subscribe denied"), "{}", moat.log());
}

/// A client id with `/`, `+` or `#` is accepted; it just never fills a `%c` grant,
/// so it cannot reach another client's topics through one.
#[test]
fn client_ids_with_topic_characters_get_no_client_grant() {
    let moat = Moat::start(
        r##"users:
  alice:
    password_hash: "{HASH}"
    publish: ["clients/%c/state"]
    subscribe: ["clients/#"]
"##,
    );
    let sub = Sub::start_subscribed(&pub_args(
        &moat,
        "alice",
        "mqttv5",
        &["-t", "clients/#", "-v"],
    ));
    publish(
        &moat,
        "alice",
        "mqttv5",
        &[
            "-i",
            "hall light",
            "-t",
            "clients/hall light/state",
            "-m",
            "own",
        ],
    );
    for id in ["a/b", "+", "#"] {
        let topic = format!("clients/{id}/state").replace(['+', '#'], "x");
        // The CONNECT succeeds; the QoS 0 publish is denied and audited.
        publish(
            &moat,
            "alice",
            "mqttv5",
            &["-i", id, "-t", &topic, "-m", "stolen"],
        );
    }
    assert!(
        sub.wait_for("clients/hall light/state own", Duration::from_secs(5)),
        "{}",
        moat.log()
    );
    std::thread::sleep(Duration::from_millis(300));
    let got = sub.stop();
    assert!(!got.contains("stolen"), "{got}");
    let log = moat.log();
    assert!(
        log.contains(r#"client_id=a/b"#) && log.contains("publish denied"),
        "{log}"
    );
}
