//! The built-in roles against real clients behaving as the tools do by default:
//! Home Assistant (paho-mqtt, its library) with thousands of single-topic
//! subscriptions and commands to ecosystems no role knows; ESPHome and Shelly
//! profiles never denied; denials visible in `moat denials`; and a retained will
//! that lost its retain right in a reload.

mod common;

use std::time::{Duration, Instant};

use common::cli::{ok, run_moat};
use common::{Moat, Sub, mosquitto, run_bounded, wait_for_text, with_extra};

/// Home Assistant as it behaves by default: MQTT 3.1.1 (`const.py`:
/// `DEFAULT_PROTOCOL = PROTOCOL_311`), TLS with the uploaded CA (`client.py`:
/// `tls_set(...)` when a certificate is configured), one SUBSCRIBE per unique topic
/// with reason codes ignored (`client.py`), commands published at QoS 1 wherever
/// an automation points them.
const HA_SCRIPT: &str = r##"
import sys, time, threading
import paho.mqtt.client as mqtt
port, ca, password, count = int(sys.argv[1]), sys.argv[2], sys.argv[3], int(sys.argv[4])
acks = {}
done = threading.Event()
def on_subscribe(c, u, mid, reason_codes, props):
    acks[mid] = [rc.value for rc in reason_codes]
    if len(acks) >= count:
        done.set()
ha = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="home-assistant-1", protocol=mqtt.MQTTv311)
ha.username_pw_set("ha", password)
ha.tls_set(ca_certs=ca)
ha.on_subscribe = on_subscribe
ha.connect("127.0.0.1", port, 60)
ha.loop_start()
time.sleep(0.5)
kinds = ["zigbee2mqtt/lamp-{}", "tele/plug-{}/STATE", "node-{}/sensor/temperature/state",
         "shellies/shelly1-{}/relay/0", "frigate/cam-{}/motion"]
for i in range(count):
    topic = kinds[i % len(kinds)].format(i)
    result, _mid = ha.subscribe(topic, qos=0)
    if result != mqtt.MQTT_ERR_SUCCESS:
        print("SUBSCRIBE-ERROR", result)
done.wait(120)
codes = [rc for v in acks.values() for rc in v]
print("SUBACKS", len(acks), "GRANTED", sum(1 for rc in codes if rc < 0x80))
for topic in ["frigate/front_door/detect/set", "zwave/living/switch_binary/endpoint_0/targetValue/set",
              "valetudo/robot/BasicControlCapability/operation/set"]:
    ha.publish(topic, b"ON", qos=1).wait_for_publish(10)
print("PUBLISHED")
ha.disconnect(); ha.loop_stop()
"##;

#[test]
fn home_assistant_subscribes_thousands_of_topics_and_commands_anything() {
    let moat = Moat::start(
        "users:
  ha:
    role: homeassistant
    password_hash: \"{HASH}\"
  watch:
    role: observer
    password_hash: \"{HASH}\"
",
    );
    let watch = Sub::start_subscribed(&with_extra(
        moat.tls_args("watch"),
        &["-v", "-t", "frigate/#", "-t", "zwave/#", "-t", "valetudo/#"],
    ));
    let out = moat.python_tls(HA_SCRIPT, &["2000"], Duration::from_secs(150));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("SUBACKS 2000 GRANTED 2000") && stdout.contains("PUBLISHED"),
        "{stdout}\n{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        moat.log()
    );
    for topic in [
        "frigate/front_door/detect/set",
        "zwave/living/switch_binary/endpoint_0/targetValue/set",
        "valetudo/robot/BasicControlCapability/operation/set",
    ] {
        assert!(
            watch.wait_for(&format!("{topic} ON"), Duration::from_secs(5)),
            "{topic} not delivered: {}",
            watch.output()
        );
    }
    assert!(!moat.log().contains("denied"), "{}", moat.log());
}

/// One device profile: its client id, its will, the filters it subscribes and the
/// topics it publishes (`topic` or `topic|retain`), all at QoS 1 over MQTT 3.1.1.
const DEVICE_SCRIPT: &str = r##"
import sys, time, threading
import paho.mqtt.client as mqtt
port, ca, password, user, will, subs, pubs = sys.argv[1:8]
acks = []
done = threading.Event()
subs = [s for s in subs.split(",") if s]
def on_subscribe(c, u, mid, reason_codes, props):
    acks.extend(rc.value for rc in reason_codes)
    if len(acks) >= len(subs):
        done.set()
c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=user + "-dev", protocol=mqtt.MQTTv311)
c.username_pw_set(user, password)
c.tls_set(ca_certs=ca)
c.will_set(will, b"offline", qos=1, retain=True)
c.on_subscribe = on_subscribe
c.connect("127.0.0.1", int(port), 60)
c.loop_start()
for s in subs:
    c.subscribe(s, qos=1)
done.wait(10)
print("GRANTED", sum(1 for rc in acks if rc < 0x80), "OF", len(subs))
for p in pubs.split(","):
    topic, _, retain = p.partition("|")
    c.publish(topic, b"1", qos=1, retain=bool(retain)).wait_for_publish(10)
print("PUBLISHED")
c.disconnect(); c.loop_stop()
"##;

struct Profile {
    user: &'static str,
    will: &'static str,
    subscribe: &'static [&'static str],
    publish: &'static [&'static str],
}

/// The default topics of each tool with the identity name substituted.
const PROFILES: &[Profile] = &[
    // ESPHome, components/mqtt: birth/will `<node>/status` (retained), log
    // `<node>/debug`, state `<node>/<component>/<object>/state`, discovery
    // `homeassistant/<component>/<node>/<object>/config` (retained); with
    // `discover_ip: true` (the default, `__init__.py`) it subscribes
    // `esphome/discover` and `esphome/ping/<node>` and publishes the retained
    // `esphome/discover/<node>` (`mqtt_client.cpp`: `send_device_info_`); it
    // subscribes `homeassistant/status` to re-send discovery.
    Profile {
        user: "kitchen-node",
        will: "kitchen-node/status",
        subscribe: &[
            "kitchen-node/switch/relay/command",
            "homeassistant/status",
            "esphome/discover",
            "esphome/ping/kitchen-node",
        ],
        publish: &[
            "kitchen-node/status|r",
            "kitchen-node/debug",
            "kitchen-node/sensor/temperature/state|r",
            "homeassistant/sensor/kitchen-node/temperature/config|r",
            "esphome/discover/kitchen-node|r",
        ],
    },
    // Shelly Gen1 (shelly-api-docs gen1 #mqtt): `shellies/<id>/online` (will),
    // `shellies/<id>/relay/0`, `shellies/<id>/announce`, `shellies/announce`;
    // commands `shellies/<id>/relay/0/command`, `shellies/command`.
    Profile {
        user: "shelly1-ab12cd",
        will: "shellies/shelly1-ab12cd/online",
        subscribe: &[
            "shellies/shelly1-ab12cd/relay/0/command",
            "shellies/shelly1-ab12cd/command",
            "shellies/command",
        ],
        publish: &[
            "shellies/shelly1-ab12cd/online|r",
            "shellies/shelly1-ab12cd/relay/0|r",
            "shellies/shelly1-ab12cd/announce",
            "shellies/announce",
        ],
    },
    // Shelly Gen2+ (shelly-api-docs gen2 Mqtt): `<id>/online` (will), RPC on
    // `<id>/rpc`, notifications `<id>/events/rpc`, status `<id>/status/<component>`,
    // MQTT control `<id>/command` and `<id>/command/<component>`.
    Profile {
        user: "shellyplus1-ab12cd",
        will: "shellyplus1-ab12cd/online",
        subscribe: &[
            "shellyplus1-ab12cd/rpc",
            "shellyplus1-ab12cd/command",
            "shellyplus1-ab12cd/command/switch:0",
        ],
        publish: &[
            "shellyplus1-ab12cd/online|r",
            "shellyplus1-ab12cd/events/rpc",
            "shellyplus1-ab12cd/status/switch:0|r",
        ],
    },
];

#[test]
fn esphome_and_shelly_profiles_are_never_denied() {
    let moat = Moat::start(
        "users:
  watch:
    role: observer
    password_hash: \"{HASH}\"
devices:
  kitchen-node:
    role: esphome
    password_hash: \"{HASH}\"
  shelly1-ab12cd:
    role: shelly
    password_hash: \"{HASH}\"
  shellyplus1-ab12cd:
    role: shelly
    password_hash: \"{HASH}\"
",
    );
    let watch = Sub::start_subscribed(&with_extra(moat.tls_args("watch"), &["-v", "-t", "#"]));
    for p in PROFILES {
        let out = moat.python_tls(
            DEVICE_SCRIPT,
            &[p.user, p.will, &p.subscribe.join(","), &p.publish.join(",")],
            Duration::from_secs(30),
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        let n = p.subscribe.len();
        assert!(
            stdout.contains(&format!("GRANTED {n} OF {n}")) && stdout.contains("PUBLISHED"),
            "{}: {stdout}\n{}\n{}",
            p.user,
            String::from_utf8_lossy(&out.stderr),
            moat.log()
        );
        // Under 3.1.1 a denied PUBLISH is still acknowledged: delivery is the proof.
        for topic in p.publish {
            let topic = topic.trim_end_matches("|r");
            assert!(
                watch.wait_for(&format!("{topic} 1"), Duration::from_secs(5)),
                "{}: {topic} was not delivered: {}",
                p.user,
                watch.output()
            );
        }
    }
    assert!(!moat.log().contains("denied"), "{}", moat.log());
}

/// Waits until `moat denials` shows `needle` (the broker writes every few seconds).
fn denials_until(moat: &Moat, needle: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let out = run_moat(&moat.manifest_path(), &moat.state(), &["denials"]);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        if text.contains(needle) {
            return text;
        }
        if Instant::now() > deadline {
            panic!(
                "`moat denials` never showed {needle}:\n{text}\n{}\n{}",
                String::from_utf8_lossy(&out.stderr),
                moat.log()
            );
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

#[test]
fn denials_are_logged_counted_and_shown_with_the_grant_that_would_allow_them() {
    let moat = Moat::start(
        "devices:
  cam:
    password_hash: \"{HASH}\"
    publish: [\"cam/#\"]
    subscribe: [\"cam/#\"]
    limits: { max_subscriptions: 2 }
users:
  sysmon:
    password_hash: \"{HASH}\"
    subscribe: [\"$SYS/#\"]
",
    );
    // MQTT 3.1.1 QoS 1: the PUBACK cannot refuse, so mosquitto_pub succeeds.
    let out = mosquitto(
        "mosquitto_pub",
        &with_extra(
            moat.tls_args("cam"),
            &["-t", "frigate/front_door/detect/set", "-m", "ON", "-q", "1"],
        ),
    );
    assert!(out.status.success(), "{out:?}");
    // One SUBSCRIBE: two granted, one past the limit, one not granted.
    let out = mosquitto(
        "mosquitto_sub",
        &with_extra(
            moat.tls_args("cam"),
            &[
                "-t", "cam/a", "-t", "cam/b", "-t", "cam/c", "-t", "other/x", "-W", "1",
            ],
        ),
    );
    let _ = out;
    let text = denials_until(&moat, "devices.cam.publish: [\"frigate/front_door/#\"]");
    assert!(
        text.contains("devices.cam.subscribe: [\"other/x\"]"),
        "{text}"
    );
    assert!(
        text.contains("devices.cam.limits.max_subscriptions: 1000"),
        "{text}"
    );
    let log = moat.log();
    assert!(
        log.contains("publish denied") && log.contains("client_told=false"),
        "{log}"
    );
    assert!(
        log.contains("subscribe denied") && log.contains("QuotaExceeded"),
        "{log}"
    );
    let json = ok(&run_moat(
        &moat.manifest_path(),
        &moat.state(),
        &["--json", "denials"],
    ));
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["total"], 3, "{json}");
    // `$SYS` says the same (republished every 10 s; the retained value may be older).
    let out = run_bounded(
        std::process::Command::new("mosquitto_sub").args(with_extra(
            moat.tls_args("sysmon"),
            &[
                "-v",
                "-t",
                "$SYS/broker/denials/count",
                "-C",
                "2",
                "-W",
                "25",
            ],
        )),
        Duration::from_secs(30),
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("$SYS/broker/denials/count 3"), "{text}");
}

#[test]
fn a_retained_will_is_not_retained_once_a_reload_took_the_retain_right() {
    let body = "users:
  watch:
    role: observer
    password_hash: \"{HASH}\"
devices:
  plug:
    password_hash: \"{HASH}\"
    publish: [\"plug/#\"]
    subscribe: [\"plug/#\"]
";
    let moat = Moat::start(body);
    let live = Sub::start(&with_extra(
        moat.tls_args("watch"),
        &["-v", "-t", "plug/status"],
    ));
    let plug = Sub::start(&with_extra(
        moat.tls_args("plug"),
        &[
            "-i",
            "plug-will",
            "-t",
            "plug/cmd",
            "--will-topic",
            "plug/status",
            "--will-payload",
            "offline",
            "--will-retain",
            "--will-qos",
            "1",
        ],
    ));
    assert!(
        wait_for_text(&moat.log, "plug-will", Duration::from_secs(10)),
        "{}",
        moat.log()
    );
    let manifest = std::fs::read_to_string(moat.manifest_path()).unwrap();
    let revoked = manifest.replace(
        "    publish: [\"plug/#\"]\n",
        "    publish: [\"plug/#\"]\n    retain: false\n",
    );
    assert_ne!(manifest, revoked);
    std::fs::write(moat.manifest_path(), revoked).unwrap();
    moat.signal("HUP");
    assert!(
        wait_for_text(&moat.log, "manifest reloaded", Duration::from_secs(10)),
        "{}",
        moat.log()
    );
    // SIGKILL: the connection ends without DISCONNECT, so the will is due.
    plug.stop();
    assert!(
        wait_for_text(&moat.log, "will denied", Duration::from_secs(10)),
        "{}",
        moat.log()
    );
    // Denied outright, as a retained PUBLISH from it would be: not even delivered.
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(live.stop(), "", "the will was delivered");
    let out = mosquitto(
        "mosquitto_sub",
        &with_extra(
            moat.tls_args("watch"),
            &["-t", "plug/status", "-C", "1", "-W", "2"],
        ),
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).trim().is_empty(),
        "the will was retained: {out:?}"
    );
    denials_until(&moat, "devices.plug.retain: true");
}
