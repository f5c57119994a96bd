//! Issue 11 acceptance with the smart-home tools' own client libraries, each set up the
//! way the tool sets it up:
//!
//! - mqtt.js from npm (Zigbee2MQTT's library) over TLS with MQTT 5, as Zigbee2MQTT's
//!   `lib/mqtt.ts` connects (CA from `mqtt.ca`, username/password, a retained will on
//!   `bridge/state`, a subscription to `zigbee2mqtt/#`);
//! - a Tasmota-profile TLS client using the settings `moat export` prints;
//! - paho-mqtt as Home Assistant connects (3.1.1, the CA uploaded, hostname checked)
//!   by the broker's LAN address, in network namespaces this test creates.
//!
//! mqtt.js comes from `npm install --prefix $MOAT_NPM_PREFIX mqtt@5` (`.ci/run` does
//! it; default prefix `/opt/moat-npm`). Without node, that package, or root (for the
//! namespaces), the test concerned prints why and skips.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::cli::{ok, run_moat};
use common::netns::{Lab, in_ns, skip_reason};
use common::{Moat, PASSWORD, path_str, run_bounded};

// Zigbee2MQTT's connection (Koenkk/zigbee2mqtt lib/mqtt.ts): `mqtt.connect(server,
// {will: {topic: base/bridge/state, payload 'offline', retain: true, qos: 1},
// protocolVersion: settings.version, ca: readFileSync(settings.ca), username,
// password})`, then `subscribe(base/#)` and a retained `bridge/state` "online". It
// publishes the device list as a large retained `bridge/devices` and Home Assistant
// discovery configs under `homeassistant/`; commands arrive on
// `zigbee2mqtt/<friendly name>/<endpoint>/set` (friendly names may contain `/`).
const Z2M_SCRIPT: &str = r#"
const mqtt = require('mqtt');
const fs = require('fs');
const crypto = require('crypto');
const [port, ca, password] = process.argv.slice(2);
const server = `mqtts://127.0.0.1:${port}`;
const base = (user, extra) => Object.assign({
  protocolVersion: 5, ca: fs.readFileSync(ca), username: user, password,
  reconnectPeriod: 0, connectTimeout: 10000,
}, extra || {});
const fail = (why) => { console.log('FAIL ' + why); process.exit(1); };
setTimeout(() => fail('timeout'), 25000);

// About 300 KB of device list, as a big Zigbee network's bridge/devices is.
const devices = [];
for (let i = 0; devices.length === 0 || JSON.stringify(devices).length < 300000; i++) {
  devices.push({ieee_address: '0x' + i.toString(16).padStart(16, '0'),
    friendly_name: `room${i % 40}/lamp${i}`, type: 'Router', model_id: 'TRADFRI bulb E27',
    definition: {description: 'x'.repeat(200), exposes: [{type: 'light', endpoint: 'l1'}]}});
}
const big = Buffer.from(JSON.stringify(devices));
const digest = (b) => crypto.createHash('sha256').update(b).digest('hex');
const discovery = 'homeassistant/light/0x0000000000000001/light_l1/config';
const command = 'zigbee2mqtt/garden/lamp/l1/set';

const z2m = mqtt.connect(server, base('zigbee2mqtt', {will: {topic: 'zigbee2mqtt/bridge/state',
  payload: Buffer.from('{"state":"offline"}'), retain: true, qos: 1}}));
z2m.on('error', (e) => fail('z2m: ' + e.message));
z2m.on('message', (topic, payload) => {
  if (topic === command) {
    console.log('COMMAND ' + payload.toString());
    readBack();
  }
});
z2m.on('connect', async () => {
  await z2m.subscribeAsync('zigbee2mqtt/#');
  await z2m.publishAsync('zigbee2mqtt/bridge/state', '{"state":"online"}', {retain: true, qos: 0});
  await z2m.publishAsync('zigbee2mqtt/bridge/devices', big, {retain: true, qos: 1});
  await z2m.publishAsync(discovery, JSON.stringify({command_topic: command, schema: 'json'}),
    {retain: true, qos: 1});
  console.log('PUBLISHED ' + big.length);
  const hub = mqtt.connect(server, base('hub'));
  let hubDone = false;
  // After its DISCONNECT the socket may be reset under it: only errors before count.
  hub.on('error', (e) => hubDone || fail('hub: ' + e.message));
  hub.on('connect', async () => {
    await hub.publishAsync(command, '{"state":"ON"}', {qos: 1});
    hubDone = true;
    hub.end();
  });
});

// A second client (Home Assistant's side) gets both retained messages, intact.
let reading = false;
function readBack() {
  if (reading) return;
  reading = true;
  const reader = mqtt.connect(server, base('reader'));
  const got = {};
  reader.on('error', (e) => fail('reader: ' + e.message));
  reader.on('message', (topic, payload, packet) => {
    got[topic] = {payload, retain: packet.retain};
    if (got['zigbee2mqtt/bridge/devices'] && got[discovery]) {
      const d = got['zigbee2mqtt/bridge/devices'];
      console.log(`RETAINED ${d.payload.length} ${digest(d.payload) === digest(big)} ${d.retain}`);
      console.log('DISCOVERY ' + got[discovery].retain);
      reader.end(); z2m.end();
      process.exit(0);
    }
  });
  reader.on('connect', () => reader.subscribe(['zigbee2mqtt/bridge/devices', 'homeassistant/#']));
}
"#;

#[test]
fn mqtt_js_as_zigbee2mqtt_over_tls_v5() {
    let Some(modules) = common::mqtt_js() else {
        return;
    };
    let moat = Moat::start(
        r##"users:
  zigbee2mqtt:
    role: zigbee2mqtt
    password_hash: "{HASH}"
  # Home Assistant's side: sends the endpoint command, reads what Zigbee2MQTT keeps.
  hub:
    password_hash: "{HASH}"
    publish: ["zigbee2mqtt/#"]
  reader:
    password_hash: "{HASH}"
    subscribe: ["zigbee2mqtt/#", "homeassistant/#"]
"##,
    );
    let args = [
        moat.tls_port.to_string(),
        path_str(&moat.ca()),
        PASSWORD.into(),
    ];
    let out = common::node(&modules, Z2M_SCRIPT, &args, Duration::from_secs(40));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let context = format!(
        "{stdout}\n{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        moat.log()
    );
    assert!(out.status.success(), "{context}");
    let published: usize = stdout
        .lines()
        .find_map(|l| l.strip_prefix("PUBLISHED "))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{context}"));
    assert!(published >= 300_000, "{context}");
    assert!(stdout.contains("COMMAND {\"state\":\"ON\"}"), "{context}");
    assert!(
        stdout.contains(&format!("RETAINED {published} true true")),
        "{context}"
    );
    assert!(stdout.contains("DISCOVERY true"), "{context}");
}

// A Tasmota-profile client (arendst/Tasmota lib/lib_ssl/tls_mini/src/
// WiFiClientSecureLightBearSSL.cpp): TLS 1.2 only (`br_ssl_engine_set_versions(BR_TLS12,
// BR_TLS12)`), the single suite ECDHE_RSA_WITH_AES_128_GCM_SHA256, no CA check with
// SetOption132 but the server's RSA public key pinned: SHA-1 over u32be-length-prefixed
// "ssh-rsa", e and n (`pubkeyfingerprint_pubkey_fingerprint`, compat = false). Tasmota's
// PubSubClient speaks MQTT 3.1.1 with client id DVES_XXXXXX and an `LWT` will; it
// writes small TLS records (BearSSL's small buffers), emulated here by writing each
// packet in 64-byte pieces, one record each. What is not emulated: the
// max_fragment_length extension (Python's ssl cannot send it) and reading in small
// buffers (moat already caps its records for RSA clients, src/net/tls.rs).
const TASMOTA_SCRIPT: &str = r##"
import hashlib, socket, ssl, struct, sys, threading
import paho.mqtt.client as mqtt
port, fingerprint, host, user, password, topic, ca = sys.argv[1:8]
port = int(port)

# Home Assistant's side, subscribed (SUBACK seen) before the device connects.
got, subscribed = [], threading.Event()
ha = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv311)
ha.username_pw_set("ha", password)
ha.tls_set(ca_certs=ca)
ha.on_subscribe = lambda *a: subscribed.set()
ha.on_message = lambda c, u, m: got.append("%s %s" % (m.topic, m.payload.decode()))
ha.on_connect = lambda c, *a: c.subscribe("tele/%s/#" % topic)
ha.connect("127.0.0.1", port, 30)
ha.loop_start()
if not subscribed.wait(10):
    print("HA NOT SUBSCRIBED")
    sys.exit(1)

def der(buf, i):
    tag, n = buf[i], buf[i + 1]
    i += 2
    if n & 0x80:
        k = n & 0x7f
        n = int.from_bytes(buf[i:i + k], "big")
        i += k
    return tag, buf[i:i + n], i + n

def children(buf):
    out, i = [], 0
    while i < len(buf):
        tag, body, i = der(buf, i)
        out.append((tag, body))
    return out

def rsa_key(cert):
    tbs = children(children(der(cert, 0)[1])[0][1])
    fields = tbs[1:] if tbs[0][0] == 0xa0 else tbs
    spki = children(fields[5][1])
    n, e = children(der(spki[1][1][1:], 0)[1])
    return n[1], e[1]

def tasmota_fingerprint(cert):
    n, e = rsa_key(cert)
    sha = hashlib.sha1()
    for part in (b"ssh-rsa", e.lstrip(b"\0"), n.lstrip(b"\0")):
        sha.update(struct.pack(">I", len(part)) + part)
    return " ".join("%02X" % b for b in sha.digest())

ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE  # SetOption132: the fingerprint is the check
ctx.minimum_version = ssl.TLSVersion.TLSv1_2
ctx.maximum_version = ssl.TLSVersion.TLSv1_2
ctx.set_ciphers("ECDHE-RSA-AES128-GCM-SHA256")
raw = socket.create_connection(("127.0.0.1", port), timeout=10)
tls = ctx.wrap_socket(raw, server_hostname=host)
print("TLS", tls.version(), tls.cipher()[0])
seen = tasmota_fingerprint(tls.getpeercert(binary_form=True))
if seen != fingerprint:
    print("FINGERPRINT MISMATCH", seen)
    sys.exit(1)
print("FINGERPRINT OK")

def s(b): return struct.pack(">H", len(b)) + b
def packet(kind, body):
    n, length = len(body), b""
    while True:
        d, n = n % 128, n // 128
        length += bytes([d | (0x80 if n else 0)])
        if not n: break
    return bytes([kind]) + length + body
def send(p):
    for i in range(0, len(p), 64):
        tls.sendall(p[i:i + 64])

lwt = ("tele/%s/LWT" % topic).encode()
flags = 0x80 | 0x40 | 0x20 | 0x04 | 0x02  # user, password, will retain, will, clean
connect = s(b"MQTT") + bytes([4, flags]) + struct.pack(">H", 30) + s(b"DVES_1A2B3C") \
    + s(lwt) + s(b"Offline") + s(user.encode()) + s(password.encode())
send(packet(0x10, connect))
connack = tls.recv(4)
print("CONNACK", connack.hex())
if connack[:2] != b"\x20\x02" or connack[3] != 0:
    sys.exit(1)
send(packet(0x31, s(lwt) + b"Online"))
state = b'{"Time":"2026-12-02T06:00:00","POWER":"ON","Wifi":{"RSSI":80}}'
send(packet(0x30, s(("tele/%s/STATE" % topic).encode()) + state))
send(packet(0xe0, b""))
tls.close()
print("SENT")
for _ in range(100):
    if len(got) >= 2:
        break
    threading.Event().wait(0.1)
ha.disconnect()
ha.loop_stop()
for line in got:
    print("RECEIVED", line)
"##;

#[test]
fn tasmota_profile_client_with_exported_settings() {
    let moat = Moat::start(
        r##"users:
  ha:
    password_hash: "{HASH}"
    subscribe: ["tele/#"]
devices:
  plug-1:
    role: tasmota
    password_hash: "{HASH}"
"##,
    );
    let exported = ok(&run_moat(
        &moat.manifest_path(),
        &moat.state(),
        &["--json", "export", "plug-1"],
    ));
    let settings: serde_json::Value = serde_json::from_str(&exported).unwrap();
    let snippet = settings["snippets"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["client"] == "tasmota")
        .unwrap()["text"]
        .as_str()
        .unwrap()
        .to_owned();
    let backlog = snippet
        .lines()
        .find_map(|l| l.strip_prefix("Backlog "))
        .unwrap_or_else(|| panic!("{snippet}"));
    let value = |name: &str| {
        backlog
            .split(';')
            .find_map(|c| c.trim().strip_prefix(name)?.strip_prefix(' '))
            .unwrap_or_else(|| panic!("no {name} in {backlog}"))
            .trim()
            .to_owned()
    };
    assert_eq!(value("SetOption103"), "1");
    assert_eq!(value("SetOption132"), "1");
    assert_eq!(value("MqttPort"), moat.tls_port.to_string());
    let out = run_bounded(
        Command::new("python3")
            .args(["-c", TASMOTA_SCRIPT])
            .args(["MqttPort", "MqttFingerprint1", "MqttHost", "MqttUser"].map(value))
            .arg(PASSWORD)
            .arg(value("Topic"))
            .arg(moat.ca()),
        Duration::from_secs(30),
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let context = format!(
        "{stdout}\n{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        moat.log()
    );
    assert!(out.status.success(), "{context}");
    assert!(
        stdout.contains("TLS TLSv1.2 ECDHE-RSA-AES128-GCM-SHA256"),
        "{context}"
    );
    assert!(stdout.contains("FINGERPRINT OK"), "{context}");
    assert!(stdout.contains("CONNACK 20020000"), "{context}");
    assert!(
        stdout.contains("RECEIVED tele/plug-1/LWT Online"),
        "{context}"
    );
    assert!(
        stdout.contains("RECEIVED tele/plug-1/STATE {\"Time\""),
        "{context}"
    );
}

// Home Assistant's MQTT client (homeassistant/components/mqtt/client.py): paho-mqtt,
// protocol 3.1.1 by default, `tls_set(ca_certs=certificate, ...)` when a CA was
// uploaded, and the hostname checked unless "Ignore broker certificate validation" is
// ticked (`tls_insecure_set(False)`). The broker address is what the user typed.
const HA_SCRIPT: &str = r##"
import ssl, sys, threading
import paho.mqtt.client as mqtt
host, port, ca, user, password = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
source = sys.argv[6] if len(sys.argv) > 6 else ""
c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv311)
c.username_pw_set(user, password)
c.tls_set(ca_certs=ca, cert_reqs=ssl.CERT_REQUIRED)
c.tls_insecure_set(False)
done = threading.Event()
result = {}
c.on_connect = lambda cl, u, f, rc, p=None: (result.__setitem__("rc", str(rc)), done.set())
try:
    c.connect(host, port, 10, bind_address=source)
except ssl.SSLCertVerificationError as e:
    print("CERT ERROR", e.verify_message)
    sys.exit(0)
c.loop_start()
done.wait(10)
c.disconnect()
c.loop_stop()
print("CONNECTED", result.get("rc"))
"##;

#[test]
fn paho_as_home_assistant_by_the_lan_address() {
    if let Some(reason) = skip_reason(&["ip"]) {
        eprintln!("skipping paho_as_home_assistant_by_the_lan_address: {reason}");
        return;
    }
    let (broker_v4, broker_ula) = ("192.168.79.1", "fd00:79::1");
    let mut lab = Lab::new("mcerts");
    let broker = lab.netns("broker");
    let ha = lab.netns("ha");
    // 203.0.113.1 is the broker's too, but not a LAN address (a documentation-range
    // stand-in for a public one): nothing puts it in the certificate.
    lab.link(
        (
            &broker,
            "veth-b",
            &["192.168.79.1/24", "fd00:79::1/64", "203.0.113.1/24"],
        ),
        (
            &ha,
            "veth-h",
            &["192.168.79.2/24", "fd00:79::2/64", "203.0.113.2/24"],
        ),
    );
    lab.wait_ipv6_ready();
    let dir = tempfile::tempdir().unwrap();

    // `moat init` inside the broker's namespace finds its LAN addresses itself.
    let detected = dir.path().join("detected.yaml");
    let init = in_ns(
        &broker,
        &[common::moat_bin(), "init", &path_str(&detected)],
        Duration::from_secs(30),
    );
    let password = String::from_utf8_lossy(&init.stdout).trim().to_owned();
    let manifest = std::fs::read_to_string(&detected).unwrap_or_default();
    assert!(
        init.status.success() && !password.is_empty(),
        "moat init: {}\n{manifest}",
        String::from_utf8_lossy(&init.stderr)
    );
    assert!(
        manifest.contains(&format!("addresses: [\"{broker_v4}\", \"{broker_ula}\"]")),
        "{manifest}"
    );
    // The default TLS listener: `::`, both families.
    assert!(manifest.contains("address: \"::\""), "{manifest}");
    let detected_state = dir.path().join("detected-state");
    let detected_log = lab.serve(&broker, &detected, &detected_state);

    // The same setup without the addresses, on another port, as a manifest written
    // elsewhere (a flashed card's) has it: `serve` adds the machine's LAN addresses.
    let named = dir.path().join("named.yaml");
    let named_text = manifest
        .replace(
            &format!("addresses: [\"{broker_v4}\", \"{broker_ula}\"]"),
            "addresses: []",
        )
        .replace("port: 8883", "port: 8884");
    assert_ne!(named_text, manifest);
    std::fs::write(&named, named_text).unwrap();
    let named_state = dir.path().join("named-state");
    lab.serve(&broker, &named, &named_state);

    let connect_from = |host: &str, port: &str, state: &Path, source: &str| {
        let ca = path_str(&state.join("ca.pem"));
        let out = in_ns(
            &ha,
            &[
                "python3",
                "-c",
                HA_SCRIPT,
                host,
                port,
                &ca,
                "homeassistant",
                &password,
                source,
            ],
            Duration::from_secs(30),
        );
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    };
    let connect = |host: &str, port: &str, state: &Path| connect_from(host, port, state, "");
    // By IPv4 and by ULA: the certificate covers both, the listener takes both.
    for host in [broker_v4, broker_ula] {
        let out = connect(host, "8883", &detected_state);
        assert!(out.contains("CONNECTED Success"), "{host}: {out}");
    }
    // The IPv4 client came through the dual-stack socket and is logged as IPv4.
    assert!(
        common::wait_for_text(&detected_log, "peer=192.168.79.2:", Duration::from_secs(5)),
        "{}",
        detected_log.lock().unwrap()
    );
    assert!(
        !detected_log.lock().unwrap().contains("::ffff:"),
        "{}",
        detected_log.lock().unwrap()
    );
    for host in [broker_v4, broker_ula] {
        let out = connect(host, "8884", &named_state);
        assert!(out.contains("CONNECTED Success"), "{host}: {out}");
    }
    // An address of the broker's that is not a LAN address is not in the
    // certificate, and Home Assistant's check refuses it: the check is real.
    // (From the client's LAN address: the broker answers no SYN from elsewhere.)
    let out = connect_from("203.0.113.1", "8884", &named_state, "192.168.79.2");
    assert!(out.contains("CERT ERROR IP address mismatch"), "{out}");

    // A certificate provisioned where the LAN addresses were not (outside the
    // namespace: the addresses changed since) makes `moat doctor` warn; the one
    // `serve` provisioned here does not.
    let elsewhere = dir.path().join("elsewhere-state");
    let provisioned = run_bounded(
        Command::new(common::moat_bin())
            .arg("--manifest")
            .arg(&named)
            .arg("--state")
            .arg(&elsewhere)
            .arg("provision"),
        Duration::from_secs(30),
    );
    assert!(
        provisioned.status.success(),
        "{}",
        String::from_utf8_lossy(&provisioned.stderr)
    );
    let doctor = |manifest: &Path, state: &Path| {
        let out = in_ns(
            &broker,
            &[
                common::moat_bin(),
                "--manifest",
                &path_str(manifest),
                "--state",
                &path_str(state),
                "doctor",
            ],
            Duration::from_secs(30),
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let named_report = doctor(&named, &elsewhere);
    assert!(
        named_report.contains(&format!("does not cover {broker_v4}, {broker_ula}")),
        "{named_report}"
    );
    let detected_report = doctor(&detected, &detected_state);
    assert!(
        !detected_report.contains("does not cover"),
        "{detected_report}"
    );
}
