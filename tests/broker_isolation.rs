//! A slow or stuck subscriber costs only itself. Real paho-mqtt clients over TLS: a
//! subscriber whose message handler blocks forever (as a Python consumer stuck in
//! its callback does: paho's network loop stops reading and acknowledging) shares a
//! filter with a healthy subscriber, while a publisher sends numbered QoS 1
//! messages. The healthy subscriber must get every message; the stuck one's queue
//! overflows and only its copies are dropped and logged; and the publisher is paused
//! for the stuck subscriber once (`$SYS/broker/publishers/paused`), not once per
//! dropped message as when every overflow paused it.

mod common;

use std::time::Duration;

use common::Moat;

const BODY: &str = r##"users:
  app:
    password_hash: "{HASH}"
    publish: ["iso/#"]
    subscribe: ["iso/#", "$SYS/broker/#"]
"##;

/// Counted messages; bounded so the whole run stays a few seconds.
const MESSAGES: usize = 2000;

const SCRIPT: &str = r##"
import sys, json, threading, time, paho.mqtt.client as mqtt
port, ca, password, n = int(sys.argv[1]), sys.argv[2], sys.argv[3], int(sys.argv[4])

def client(cid):
    # Home Assistant's profile: paho, MQTT 3.1.1, TLS with the broker's CA.
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=cid, protocol=mqtt.MQTTv311)
    c.username_pw_set("app", password)
    c.tls_set(ca_certs=ca)
    return c

def connect(c):
    done = threading.Event()
    c.on_connect = lambda *a: done.set()
    c.connect("localhost", port, 60)
    c.loop_start()
    assert done.wait(10), "no CONNACK"

def subscribe(c, topic, qos):
    done = threading.Event()
    granted = []
    def on_subscribe(cl, u, mid, codes, props=None):
        granted.extend(int(getattr(x, "value", x)) for x in codes)
        done.set()
    c.on_subscribe = on_subscribe
    c.subscribe(topic, qos)
    assert done.wait(10), "no SUBACK"
    assert granted == [qos], granted

# The stuck consumer: its handler never returns, so paho neither reads nor acks.
stuck = client("stuck-consumer")
block = threading.Event()
stuck.on_message = lambda *a: block.wait()
connect(stuck)
subscribe(stuck, "iso/#", 1)

fast = client("healthy-consumer")
seen = set()
all_in = threading.Event()
def on_fast(cl, u, m):
    seen.add(int(m.payload.split(b" ")[0]))
    if len(seen) == n:
        all_in.set()
fast.on_message = on_fast
connect(fast)
subscribe(fast, "iso/#", 1)

pub = client("publisher")
connect(pub)
filler = b"x" * 200
infos = [pub.publish("iso/n", b"%d " % i + filler, qos=1) for i in range(n)]
for info in infos:
    info.wait_for_publish(60)
acked = sum(1 for i in infos if i.is_published())
all_in.wait(30)

# $SYS is republished every 10 s: wait for a live (not retained) value.
sys_values = {}
live = threading.Event()
def on_sys(cl, u, m):
    if not m.retain:
        sys_values[m.topic] = int(m.payload)
        if len(sys_values) == 2:
            live.set()
watcher = client("sys-watcher")
watcher.on_message = on_sys
connect(watcher)
watcher.subscribe([("$SYS/broker/publishers/paused", 0), ("$SYS/broker/messages/dropped", 0)])
live.wait(25)
print(json.dumps({"acked": acked, "received": len(seen), "sys": sys_values}), flush=True)
block.set()
for c in (stuck, fast, pub, watcher):
    c.disconnect()
    c.loop_stop()
"##;

#[test]
fn a_stuck_subscriber_costs_only_itself() {
    if !common::have("python3") {
        eprintln!("skipped: python3 with paho-mqtt is needed");
        return;
    }
    let limits = "  limits: { max_queued_messages: 200 }\n";
    let moat = Moat::start_with(BODY, false, limits);
    let out = moat.python_tls(SCRIPT, &[&MESSAGES.to_string()], Duration::from_secs(120));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "client script failed: {}\n{stdout}\nbroker log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        moat.log()
    );
    let report: serde_json::Value =
        serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("not JSON ({e}): {stdout}"));
    let field = |path: &[&str]| {
        path.iter()
            .fold(&report, |v, k| &v[*k])
            .as_u64()
            .unwrap_or_else(|| panic!("{path:?} missing in {report}"))
    };
    assert_eq!(field(&["acked"]), MESSAGES as u64, "{report}");
    assert_eq!(field(&["received"]), MESSAGES as u64, "{report}");
    // The stuck consumer holds 20 in flight and 200 queued; the rest of its copies
    // were dropped, counted and logged. The healthy one lost nothing (above): it
    // paused the publisher before its queue overflowed.
    let dropped = field(&["sys", "$SYS/broker/messages/dropped"]);
    assert_eq!(dropped, (MESSAGES - 220) as u64, "{report}");
    assert!(
        moat.log().contains("queue full: message dropped"),
        "{}",
        moat.log()
    );
    // One wait in vain marks the stuck one stalled: the publisher is not paused per
    // dropped message (before, each of its 1 780 drops paused it). The healthy one
    // may pause it at most once per quarter queue it falls behind.
    let paused = field(&["sys", "$SYS/broker/publishers/paused"]);
    assert!(
        paused <= (MESSAGES / 50) as u64,
        "publisher paused {paused} times: {report}"
    );
}
