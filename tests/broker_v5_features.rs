//! MQTT 5 features through paho-mqtt v5: topic aliases, user properties,
//! request/response properties, message expiry, subscription identifiers, no-local,
//! retain-as-published, assigned client ids, server keep alive; and Home Assistant's
//! start-up burst of retained discovery messages arriving complete.

mod common;

use std::time::Duration;

use common::Moat;

const BODY: &str = r##"users:
  v5:
    password_hash: "{HASH}"
    publish: ["v5/#"]
    subscribe: ["v5/#"]
  homeassistant:
    role: homeassistant
    password_hash: "{HASH}"
  zigbee2mqtt:
    role: zigbee2mqtt
    password_hash: "{HASH}"
"##;

fn python(moat: &Moat, script: &str) -> String {
    let out = moat.python_tls(script, &[], Duration::from_secs(60));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "python failed: {}\n{stdout}\nbroker log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        moat.log()
    );
    stdout
}

const PRELUDE: &str = r##"
import sys, time, threading
import paho.mqtt.client as mqtt
from paho.mqtt.properties import Properties
from paho.mqtt.packettypes import PacketTypes
port, ca, password = int(sys.argv[1]), sys.argv[2], sys.argv[3]
def client(user, cid="", version=mqtt.MQTTv5, props=None, keepalive=60):
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=cid, protocol=version)
    c.username_pw_set(user, password)
    c.tls_set(ca_certs=ca)
    c.connack = threading.Event()
    c.connack_props = None
    def on_connect(cl, u, flags, rc, properties=None):
        cl.connack_props = properties
        cl.connack.set()
    c.on_connect = on_connect
    c.connect("127.0.0.1", port, keepalive, clean_start=True, properties=props) if version == mqtt.MQTTv5 else c.connect("127.0.0.1", port, keepalive)
    c.loop_start()
    assert c.connack.wait(10), "no CONNACK"
    return c
"##;

#[test]
fn v5_properties_aliases_and_subscription_options() {
    let moat = Moat::start(BODY);
    let script = format!(
        "{PRELUDE}{}",
        r##"
got = []
lock = threading.Lock()
def on_message(c, u, m):
    with lock:
        got.append(m)
sub = client("v5")
# Assigned client id and server keep alive (asked 1000 s; the cap is 300).
assert sub.connack_props.AssignedClientIdentifier.startswith("moat-"), sub.connack_props
slow = client("v5", cid="slow-keepalive", keepalive=1000)
assert slow.connack_props.ServerKeepAlive == 300, slow.connack_props
slow.disconnect(); slow.loop_stop()
sub.on_message = on_message
sp = Properties(PacketTypes.SUBSCRIBE); sp.SubscriptionIdentifier = 42
sub.subscribe("v5/#", options=mqtt.SubscribeOptions(qos=1, noLocal=True, retainAsPublished=True), properties=sp)
time.sleep(0.5)
pub = client("v5")
p = Properties(PacketTypes.PUBLISH)
p.UserProperty = [("k1", "v1"), ("k2", "v2")]
p.ResponseTopic = "v5/reply"
p.CorrelationData = b"corr-1"
p.ContentType = "text/plain"
p.MessageExpiryInterval = 60
p.TopicAlias = 3
pub.publish("v5/props", b"with-props", qos=1, properties=p).wait_for_publish(5)
# Same alias, empty topic: the broker must map it back to v5/props.
p2 = Properties(PacketTypes.PUBLISH); p2.TopicAlias = 3
pub.publish("", b"via-alias", qos=1, properties=p2).wait_for_publish(5)
# Retained with retain-as-published: the flag reaches us set.
pub.publish("v5/retained", b"kept", qos=1, retain=True).wait_for_publish(5)
# No local: our own publish is not echoed to us.
sub.publish("v5/own", b"echo?", qos=1).wait_for_publish(5)
time.sleep(1.0)
by_payload = {m.payload: m for m in got}
m = by_payload[b"with-props"]
assert m.topic == "v5/props"
assert ("k1", "v1") in m.properties.UserProperty and ("k2", "v2") in m.properties.UserProperty, m.properties
assert m.properties.ResponseTopic == "v5/reply"
assert m.properties.CorrelationData == b"corr-1"
assert m.properties.ContentType == "text/plain"
assert 0 < m.properties.MessageExpiryInterval <= 60
assert m.properties.SubscriptionIdentifier == [42], m.properties.SubscriptionIdentifier
assert by_payload[b"via-alias"].topic == "v5/props"
assert by_payload[b"kept"].retain
assert b"echo?" not in by_payload, "no-local ignored"
pub.publish("v5/retained", b"", qos=1, retain=True).wait_for_publish(5)
for c in (sub, pub):
    c.disconnect(); c.loop_stop()
print("OK")
"##
    );
    assert_eq!(python(&moat, &script).trim(), "OK");
}

#[test]
fn message_expiry_drops_stale_queued_messages() {
    let moat = Moat::start(BODY);
    let script = format!(
        "{PRELUDE}{}",
        r##"
sp = Properties(PacketTypes.CONNECT); sp.SessionExpiryInterval = 300
sub = client("v5", cid="expiry-sub", props=sp)
sub.subscribe("v5/exp", qos=1)
time.sleep(0.3)
sub.disconnect(); sub.loop_stop()
pub = client("v5")
p = Properties(PacketTypes.PUBLISH); p.MessageExpiryInterval = 1
pub.publish("v5/exp", b"short-lived", qos=1, properties=p).wait_for_publish(5)
pub.publish("v5/exp", b"long-lived", qos=1).wait_for_publish(5)
time.sleep(2.2)
got = []
c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="expiry-sub", protocol=mqtt.MQTTv5)
c.username_pw_set("v5", password); c.tls_set(ca_certs=ca)
c.on_message = lambda cl, u, m: got.append(m.payload)
c.connect("127.0.0.1", port, 60, clean_start=False, properties=sp)
c.loop_start()
time.sleep(1.0)
c.disconnect(); c.loop_stop(); pub.disconnect(); pub.loop_stop()
assert got == [b"long-lived"], got
print("OK")
"##
    );
    assert_eq!(python(&moat, &script).trim(), "OK");
}

#[test]
fn home_assistant_start_up_burst_loses_nothing() {
    let moat = Moat::start(BODY);
    let script = format!(
        "{PRELUDE}{}",
        r##"
N = 3000
z2m = client("zigbee2mqtt", version=mqtt.MQTTv311)
for i in range(N):
    z2m.publish("homeassistant/sensor/dev%d/config" % i, b'{"name":"sensor %d","state_topic":"zigbee2mqtt/dev%d"}' % (i, i), qos=1, retain=True)
deadline = time.time() + 30
while z2m._out_messages and time.time() < deadline:
    time.sleep(0.05)
time.sleep(0.5)
got = set()
done = threading.Event()
def on_message(c, u, m):
    got.add(m.topic)
    if len(got) == N:
        done.set()
ha = client("homeassistant", version=mqtt.MQTTv311)
ha.on_message = on_message
ha.subscribe([("homeassistant/#", 1), ("zigbee2mqtt/#", 1)])
done.wait(30)
print(len(got))
for c in (ha, z2m):
    c.disconnect(); c.loop_stop()
"##
    );
    assert_eq!(python(&moat, &script).trim(), "3000", "{}", moat.log());
    assert!(!moat.log().contains("queue full"), "messages were dropped");
}
