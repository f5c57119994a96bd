//! Issue 14: disk full, end to end. The broker's database lives on a small tmpfs
//! that a filler file fills up while clients publish (paho-mqtt, MQTT 5, as Home
//! Assistant's library does it). While the disk is full the broker keeps serving
//! QoS 0, refuses new durable data (QoS 1 for a persistent session, retained) with
//! PUBACK reason 0x97 and says so in its log; once the filler is deleted the next
//! durable publish succeeds; and after a restart nothing that was acknowledged with
//! success is missing. Needs root (to mount the tmpfs) and python3-paho-mqtt;
//! without them it prints why and skips.

mod common;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{Moat, have};

const BODY: &str = r##"users:
  writer:
    password_hash: "{HASH}"
    publish: ["disk/#", "state/#", "live/#"]
    subscribe: ["disk/#", "state/#", "live/#"]
"##;

/// Size of the file system that holds the database.
const TMPFS_SIZE: &str = "2m";

/// paho-mqtt v5 clients, one mode per run: `persist` leaves a persistent session
/// subscribed to `disk/#`; `publish TOPIC START COUNT RETAIN` publishes numbered QoS 1
/// messages, one at a time, printing each PUBACK's reason code and stopping at the
/// first refusal; `publish311` (`publish31`) publishes one QoS 1 message over MQTT 3.1.1
/// (3.1) and says whether it was acknowledged or the connection closed; `live` checks that a QoS 0 message reaches an online subscriber;
/// `collect` resumes the persistent session and prints what it receives, then the
/// retained messages under `state/#`.
const CLIENTS: &str = r##"
import sys, time, threading
import paho.mqtt.client as mqtt
from paho.mqtt.properties import Properties
from paho.mqtt.packettypes import PacketTypes
port, ca, password, mode = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
args = sys.argv[5:]

def client(cid, clean_start=True, expiry=0):
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=cid, protocol=mqtt.MQTTv5)
    c.username_pw_set("writer", password)
    c.tls_set(ca_certs=ca)
    c.connected = threading.Event()
    c.on_connect = lambda cl, u, f, rc, p=None: cl.connected.set()
    props = Properties(PacketTypes.CONNECT)
    if expiry:
        props.SessionExpiryInterval = expiry
    c.connect("127.0.0.1", port, 60, clean_start=clean_start, properties=props)
    c.loop_start()
    assert c.connected.wait(10), "no CONNACK"
    return c

def done(c):
    c.disconnect()
    c.loop_stop()

if mode == "persist":
    c = client("keeper", expiry=3600)
    subscribed = threading.Event()
    c.on_subscribe = lambda *a: subscribed.set()
    c.subscribe("disk/#", qos=1)
    assert subscribed.wait(10), "no SUBACK"
    done(c)
    print("persisted")
elif mode == "publish":
    topic, start, count, retain = args[0], int(args[1]), int(args[2]), args[3] == "retain"
    acks, acked = {}, threading.Condition()
    def on_publish(cl, u, mid, rc, props):
        with acked:
            acks[mid] = rc.value
            acked.notify_all()
    c = client("writer-%d" % start)
    c.on_publish = on_publish
    for n in range(start, start + count):
        payload = ("m-%d " % n).encode() + b"x" * 300
        info = c.publish(topic, payload, qos=1, retain=retain)
        with acked:
            if not acked.wait_for(lambda: info.mid in acks, 10):
                print("noack", n, flush=True)
                break
        print("ack", n, acks[info.mid], time.monotonic(), flush=True)
        if acks[info.mid] >= 0x80:
            break
    done(c)
elif mode in ("publish311", "publish31"):
    # MQTT 3.1.1 and 3.1 have no negative PUBACK: a refused message must not be acknowledged.
    version = mode[len("publish"):]
    protocol = mqtt.MQTTv311 if version == "311" else mqtt.MQTTv31
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="writer-" + version, protocol=protocol)
    c.username_pw_set("writer", password)
    c.tls_set(ca_certs=ca)
    acked, closed = threading.Event(), threading.Event()
    c.on_publish = lambda *a: acked.set()
    c.on_disconnect = lambda *a: closed.set()
    c.connect("127.0.0.1", port, 60)
    c.loop_start()
    c.publish("disk/n", b"m-5000 " + b"x" * 300, qos=1)
    deadline = time.time() + 10
    while not (acked.is_set() or closed.is_set()) and time.time() < deadline:
        time.sleep(0.02)
    c.loop_stop()
    print("v" + version, "acked" if acked.is_set() else "closed" if closed.is_set() else "nothing")
elif mode == "live":
    got = threading.Event()
    sub = client("live-sub")
    sub.on_message = lambda cl, u, m: m.payload == b"ping" and got.set()
    subscribed = threading.Event()
    sub.on_subscribe = lambda *a: subscribed.set()
    sub.subscribe("live/#", qos=0)
    assert subscribed.wait(10), "no SUBACK"
    pub = client("live-pub")
    pub.publish("live/x", b"ping", qos=0)
    print("live", "delivered" if got.wait(5) else "missing")
    done(pub); done(sub)
elif mode == "collect":
    got, lock = [], threading.Lock()
    def on_message(cl, u, m):
        with lock:
            got.append(m)
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="keeper", protocol=mqtt.MQTTv5)
    c.username_pw_set("writer", password)
    c.tls_set(ca_certs=ca)
    c.on_message = on_message
    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = 3600
    c.connect("127.0.0.1", port, 60, clean_start=False, properties=props)
    c.loop_start()
    # Until the queue has been quiet for a second (bounded).
    deadline, last = time.time() + 20, -1
    while time.time() < deadline:
        time.sleep(1.0)
        with lock:
            if len(got) == last:
                break
            last = len(got)
    c.subscribe("state/#", qos=1)
    time.sleep(1.0)
    done(c)
    for m in got:
        print("msg", m.topic, m.payload.split(b" ")[0].decode())
"##;

/// A tmpfs mounted on a fresh directory; unmounted (lazily) on drop.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(size: &str) -> Tmpfs {
        let dir = tempfile::tempdir().unwrap();
        let status = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(dir.path())
            .status()
            .unwrap();
        assert!(status.success(), "mount -t tmpfs failed");
        Tmpfs { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

/// Writes zeros to `path` until the file system refuses (ENOSPC). Bounded by the
/// file system's size.
fn fill(path: &Path) -> u64 {
    let mut file = std::fs::File::create(path).unwrap();
    let chunk = vec![0u8; 16 * 1024];
    let mut written = 0u64;
    loop {
        match file.write(&chunk) {
            Ok(0) => break,
            Ok(n) => written += n as u64,
            Err(e) => {
                assert_eq!(e.raw_os_error(), Some(28), "filling stopped with {e}");
                break;
            }
        }
        assert!(written < 64 << 20, "the tmpfs never filled up");
    }
    // Whatever is left is smaller than one chunk; take it byte by byte.
    while file.write(&[0]).is_ok_and(|n| n == 1) {
        written += 1;
    }
    written
}

fn clients(moat: &Moat, args: &[&str]) -> String {
    let out = moat.python_tls(CLIENTS, args, Duration::from_secs(60));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "python {args:?} failed: {}\n{stdout}\nbroker log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        moat.log()
    );
    stdout
}

/// When each `ack N RC T` line's PUBACK arrived (CLOCK_MONOTONIC, seconds: the same
/// clock in every process).
fn ack_times(out: &str) -> BTreeMap<u32, f64> {
    out.lines()
        .filter_map(|line| {
            let words: Vec<&str> = line.split_whitespace().collect();
            match words[..] {
                ["ack", n, _, t] => Some((n.parse().ok()?, t.parse().ok()?)),
                _ => None,
            }
        })
        .collect()
}

/// `ack N RC T` lines as N -> RC.
fn acks(out: &str) -> BTreeMap<u32, u8> {
    out.lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            (words.next()? == "ack").then_some(())?;
            Some((words.next()?.parse().ok()?, words.next()?.parse().ok()?))
        })
        .collect()
}

/// What one run saw: the messages acknowledged with success before the first
/// refusal, in order, and the acknowledged messages missing after the restart.
struct Outcome {
    acknowledged_before_refusal: Vec<u32>,
    lost: Vec<u32>,
    /// From the first lost message's PUBACK to the last one's.
    lost_span: Duration,
}

/// Fills the disk under a running broker with `persistence` settings `durability`
/// (manifest lines), checks refusal, QoS 0, recovery and the retained messages, and
/// returns what was lost across a restart. `None` when the test cannot run here.
fn fill_publish_free_restart(durability: &str) -> Option<Outcome> {
    let skip = if !nix::unistd::Uid::effective().is_root() {
        Some("not root (mounting a tmpfs needs CAP_SYS_ADMIN)".to_owned())
    } else if !have("mount") || !have("python3") {
        Some("`mount` or `python3` is missing".to_owned())
    } else if !Command::new("python3")
        .args(["-c", "import paho.mqtt"])
        .status()
        .is_ok_and(|s| s.success())
    {
        Some("python3-paho-mqtt is not installed".to_owned())
    } else {
        None
    };
    if let Some(reason) = skip {
        eprintln!("skipping disk_full: {reason}");
        return None;
    }
    let tmpfs = Tmpfs::mount(TMPFS_SIZE);
    let db: PathBuf = tmpfs.path().join("moat.db");
    let filler = tmpfs.path().join("filler");
    let mut moat = Moat::start_with(
        BODY,
        false,
        &format!(
            "  persistence:\n    path: \"{}\"\n{durability}",
            db.display()
        ),
    );
    assert_eq!(clients(&moat, &["persist"]).trim(), "persisted");

    // Room on the disk: everything is acknowledged with success (a retained message
    // nobody subscribes to gets 0x10, "no matching subscribers", also a success).
    let before = acks(&clients(
        &moat,
        &["publish", "state/before", "1", "1", "retain"],
    ));
    assert_eq!(
        before,
        BTreeMap::from([(1, 0x10)]),
        "retained before the fill"
    );
    let first_out = clients(&moat, &["publish", "disk/n", "1", "20", "-"]);
    let first = acks(&first_out);
    assert_eq!(first.len(), 20);
    assert!(first.values().all(|&rc| rc == 0x00), "{first:?}");

    // The disk fills up; publishing goes on until the broker refuses.
    let filled = fill(&filler);
    assert!(filled > 0);
    let during_out = clients(&moat, &["publish", "disk/n", "21", "300", "-"]);
    let during = acks(&during_out);
    let (&last, &refusal) = during.iter().next_back().expect("some PUBACKs");
    assert_eq!(
        refusal,
        0x97,
        "no refusal with 0x97 (quota exceeded) within 300 messages on a full disk: {during:?}\n{}",
        moat.log()
    );
    assert!(
        during.iter().all(|(&n, &rc)| rc == 0x00 || n == last),
        "only success before the refusal: {during:?}"
    );
    let retained = acks(&clients(
        &moat,
        &["publish", "state/during", "1", "1", "retain"],
    ));
    assert_eq!(
        retained,
        BTreeMap::from([(1, 0x97)]),
        "a retained message on a full disk"
    );
    let log = moat.log();
    assert!(
        log.contains("store: disk full"),
        "no disk-full log line:\n{log}"
    );
    assert!(
        log.contains("durable write refused"),
        "no refusal log line:\n{log}"
    );
    // A 3.1.1 or 3.1 client cannot be told 0x97: no PUBACK, the connection closes
    // instead.
    for (mode, expected) in [("publish311", "v311 closed"), ("publish31", "v31 closed")] {
        assert_eq!(clients(&moat, &[mode]).trim(), expected, "{}", moat.log());
    }
    // QoS 0 between online clients needs no disk and is still served.
    assert_eq!(clients(&moat, &["live"]).trim(), "live delivered");

    // Space is freed: the next durable publish is acknowledged with success.
    std::fs::remove_file(&filler).unwrap();
    let after = acks(&clients(&moat, &["publish", "disk/n", "1000", "5", "-"]));
    assert_eq!(
        after,
        (1000..1005).map(|n| (n, 0x00)).collect(),
        "durable publishes once space is back\n{}",
        moat.log()
    );
    let retained = acks(&clients(
        &moat,
        &["publish", "state/after", "1", "1", "retain"],
    ));
    assert_eq!(retained, BTreeMap::from([(1, 0x10)]));
    assert!(
        moat.log().contains("store: writes succeed again"),
        "no recovery log line:\n{}",
        moat.log()
    );

    // After a restart, every message acknowledged with success is there.
    moat.stop();
    moat.spawn();
    let collected = clients(&moat, &["collect"]);
    let received: Vec<(&str, &str)> = collected
        .lines()
        .filter_map(|l| l.strip_prefix("msg "))
        .filter_map(|l| l.split_once(' '))
        .collect();
    let lost: Vec<u32> = first
        .iter()
        .chain(&during)
        .chain(&after)
        .filter(|&(n, &rc)| {
            rc == 0x00 && !received.contains(&("disk/n", format!("m-{n}").as_str()))
        })
        .map(|(&n, _)| n)
        .collect();
    // Retained: what was acknowledged survives; what was refused is not there.
    assert!(received.contains(&("state/before", "m-1")), "{collected}");
    assert!(received.contains(&("state/after", "m-1")), "{collected}");
    assert!(
        !received.iter().any(|(topic, _)| *topic == "state/during"),
        "a refused retained message came back after the restart: {collected}"
    );
    eprintln!(
        "disk_full ({}): filler {filled} bytes; {} acknowledged after the fill before the refusal at message {last}; {} messages after the restart; lost {} ({:?})",
        if durability.is_empty() {
            "full"
        } else {
            "batched"
        },
        during.len() - 1,
        received.len(),
        lost.len(),
        lost.first().zip(lost.last()),
    );
    Some(Outcome {
        acknowledged_before_refusal: first
            .iter()
            .chain(&during)
            .filter(|&(_, &rc)| rc == 0x00)
            .map(|(&n, _)| n)
            .collect(),
        lost_span: {
            let times = ack_times(&format!("{first_out}{during_out}"));
            let at = |n: Option<&u32>| n.and_then(|n| times.get(n)).copied().unwrap_or(0.0);
            Duration::from_secs_f64((at(lost.last()) - at(lost.first())).max(0.0))
        },
        lost,
    })
}

#[test]
fn a_full_disk_refuses_durable_data_with_0x97_keeps_qos0_and_loses_nothing_acknowledged() {
    if let Some(outcome) = fill_publish_free_restart("") {
        assert_eq!(
            outcome.lost,
            Vec::<u32>::new(),
            "acknowledged but lost (durability: full)"
        );
    }
}

/// `batched` acknowledges before committing, so what it acknowledged for the commit
/// that hit the full disk (at most one `commit_interval` of messages) is lost, as on
/// a power cut: the loss window the docs promise. After that failure it waits for
/// each commit and refuses, and nothing acknowledged afterwards is lost.
#[test]
fn a_full_disk_with_batched_durability_loses_at_most_the_last_interval() {
    let batched = "    durability: batched\n    commit_interval_ms: 50\n";
    if let Some(outcome) = fill_publish_free_restart(batched) {
        let window = &outcome.acknowledged_before_refusal;
        assert!(
            window.ends_with(&outcome.lost),
            "lost {:?} is not the tail of what was acknowledged before the refusal ({window:?})",
            outcome.lost
        );
        eprintln!(
            "disk_full (batched): lost messages span {:?}",
            outcome.lost_span
        );
        // One commit interval (50 ms) plus the commit in progress, with room for a
        // loaded test machine.
        assert!(
            outcome.lost_span < Duration::from_millis(500),
            "lost messages span {:?} of acknowledgements",
            outcome.lost_span
        );
    }
}
