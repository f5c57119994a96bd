//! Shared pieces of the crash tests (`durability_crash`, `power_cut`): the paho-mqtt
//! publisher that prints what the broker acknowledged, the persistent subscriber that
//! prints what it received, and the tally of lost and duplicated messages. The tests
//! own how the broker dies; this module only drives clients on 127.0.0.1 and counts.

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};

/// A persistent subscriber (clean session off, as Home Assistant's MQTT integration
/// connects with paho) that reconnects forever and prints `msg <payload>` per message.
/// paho hands a QoS 2 message to `on_message` once, at PUBREL (`_handle_pubrel` in
/// paho-mqtt 2.x), so a second `msg` for a QoS 2 number is a real duplicate.
/// argv: port, password, client id.
pub const SUBSCRIBER: &str = r##"
import sys, time, paho.mqtt.client as mqtt
port, password, client_id = int(sys.argv[1]), sys.argv[2], sys.argv[3]
c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=False, protocol=mqtt.MQTTv311)
c.username_pw_set("sub", password)
c.reconnect_delay_set(min_delay=0.1, max_delay=0.3)
def on_connect(cl, u, flags, rc, props=None):
    print("connected", flags.session_present, flush=True)
    if not flags.session_present:
        cl.subscribe("crash/#", qos=2)
c.on_connect = on_connect
c.on_message = lambda cl, u, m: print("msg", m.payload.decode(), flush=True)
while True:
    try:
        c.connect("127.0.0.1", port, 30)
        break
    except OSError:
        time.sleep(0.1)
c.loop_forever(retry_first_connection=True)
"##;

/// Publishes `count` numbered messages from `start`, odd numbers QoS 1 and even QoS 2,
/// and prints `ack <n> <unix time>` when paho reports the flow complete (PUBACK, or
/// PUBCOMP for QoS 2). Stops at the first disconnect: a new round is a new client.
/// argv: port, password, start, count.
pub const PUBLISHER: &str = r##"
import sys, time, paho.mqtt.client as mqtt
port, password, start, count = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="pub-%d" % start, protocol=mqtt.MQTTv311)
c.username_pw_set("pub", password)
pending = {}
def on_publish(cl, u, mid, rc=None, props=None):
    n = pending.pop(mid, None)
    if n is not None:
        print("ack", n, "%.6f" % time.time(), flush=True)
gone = [False]
def on_disconnect(*a):
    gone[0] = True
c.on_publish = on_publish
c.on_disconnect = on_disconnect
c.connect("127.0.0.1", port, 30)
c.loop_start()
for n in range(start, start + count):
    if gone[0]:
        break
    qos = 1 if n % 2 else 2
    info = c.publish("crash/n", ("q%d-%d" % (qos, n)).encode(), qos=qos)
    pending[info.mid] = n
    time.sleep(0.002)
deadline = time.time() + 5
while pending and not gone[0] and time.time() < deadline:
    time.sleep(0.01)
c.loop_stop()
"##;

/// Starts `python3 args…` and appends each stdout line to `sink`, on a thread.
pub fn spawn_lines(args: &[String], sink: Arc<Mutex<Vec<String>>>) -> Child {
    let mut child = Command::new("python3")
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("python3 starts");
    let stdout = child.stdout.take().expect("piped stdout");
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            sink.lock().unwrap().push(line);
        }
    });
    child
}

/// A small deterministic generator for kill moments (no extra crate).
pub fn next_random(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

/// The publisher's `ack <n> <time>` lines: number → acknowledgement time (unix s).
pub fn acked(lines: &[String]) -> BTreeMap<u64, f64> {
    lines
        .iter()
        .filter_map(|l| {
            let mut fields = l.strip_prefix("ack ")?.split(' ');
            let n = fields.next()?.parse().ok()?;
            let at = fields.next().and_then(|t| t.parse().ok()).unwrap_or(0.0);
            Some((n, at))
        })
        .collect()
}

/// The subscriber's `msg q<qos>-<n>` lines: number → times received.
pub fn received(lines: &[String]) -> HashMap<u64, u32> {
    let mut counts: HashMap<u64, u32> = HashMap::new();
    for line in lines {
        if let Some(n) = line
            .strip_prefix("msg ")
            .and_then(|p| p.split('-').nth(1))
            .and_then(|n| n.parse().ok())
        {
            *counts.entry(n).or_default() += 1;
        }
    }
    counts
}

/// What one subscriber got of what was acknowledged.
#[derive(Debug, Default)]
pub struct Tally {
    pub delivered: usize,
    /// Acknowledged and never delivered.
    pub lost: Vec<u64>,
    /// QoS 2 numbers delivered more than once.
    pub qos2_duplicates: Vec<u64>,
    /// Extra deliveries of QoS 1 numbers (allowed by MQTT; reported).
    pub qos1_duplicates: u32,
}

impl Tally {
    pub fn of(acked: &BTreeMap<u64, f64>, counts: &HashMap<u64, u32>) -> Tally {
        Tally {
            delivered: counts.len(),
            lost: acked
                .keys()
                .copied()
                .filter(|n| !counts.contains_key(n))
                .collect(),
            qos2_duplicates: counts
                .iter()
                .filter(|(n, c)| *n % 2 == 0 && **c > 1)
                .map(|(n, _)| *n)
                .collect(),
            qos1_duplicates: counts
                .iter()
                .filter(|(n, _)| *n % 2 == 1)
                .map(|(_, c)| c - 1)
                .sum(),
        }
    }
}
