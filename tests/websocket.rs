//! MQTT over WebSocket with the real client libraries: paho-mqtt's websockets
//! transport (what Home Assistant's "websockets" option uses: `transport="websockets"`,
//! its path setting defaulting to `/`) and mqtt.js over `wss://` (what browser
//! dashboards and Node-RED use). The same admission, login, ACLs and plaintext rule
//! apply as on the TCP listeners; a request that is not an MQTT WebSocket upgrade
//! gets an HTTP error and a log line.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::Duration;

use common::{Moat, PASSWORD, run_bounded, start_all_transports};

fn start() -> (Moat, u16, u16) {
    let (moat, [_, ws, wss]) = start_all_transports(
        r#"  dashboard:
    password_hash: "{hash}"
    subscribe: ["ws/#"]
    publish: ["ws/js"]
  lamp:
    password_hash: "{hash}"
    plaintext: true
    publish: ["ws/a"]
  tlsonly:
    password_hash: "{hash}"
    publish: ["ws/#"]
"#,
    );
    (moat, ws, wss)
}

// paho 2.x (eclipse/paho.mqtt.python src/paho/mqtt/client.py, `_WebsocketWrapper`):
// `transport="websockets"` sends the upgrade with `Sec-WebSocket-Protocol: mqtt`
// and frames every write as one masked binary frame; `ws_set_options(path=...)`
// defaults to "/mqtt". Home Assistant passes its `ws_path` setting, default "/".
const PAHO_SCRIPT: &str = r#"
import sys, json, threading, time, paho.mqtt.client as mqtt
ws_port, wss_port, ca, password = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
result = {}

def client(cid, user, proto, path, tls):
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=cid, protocol=proto, transport="websockets")
    c.ws_set_options(path=path)
    c.username_pw_set(user, password)
    if tls:
        c.tls_set(ca_certs=ca)
    done = threading.Event()
    codes = []
    def on_connect(cl, u, flags, rc, props=None):
        codes.append(int(getattr(rc, "value", rc)))
        done.set()
    c.on_connect = on_connect
    return c, done, codes

got = []
arrived = threading.Event()
sub, sub_up, _ = client("ws-dashboard", "dashboard", mqtt.MQTTv5, "/mqtt", True)
def on_message(cl, u, m):
    got.append(m.topic)
    arrived.set()
subscribed = threading.Event()
sub.on_message = on_message
sub.on_subscribe = lambda *a: subscribed.set()
sub.connect("localhost", wss_port, 30)
sub.loop_start()
assert sub_up.wait(10), "wss subscriber got no CONNACK"
sub.subscribe("ws/#", 1)
assert subscribed.wait(10), "no SUBACK over wss"

# The lamp: MQTT 3.1.1 over unencrypted ws, path "/" as Home Assistant's default.
pub, pub_up, pub_codes = client("ws-lamp", "lamp", mqtt.MQTTv311, "/", False)
pub.connect("localhost", ws_port, 30)
pub.loop_start()
assert pub_up.wait(10), "ws publisher got no CONNACK"
pub.publish("ws/b", b"denied by the ACL", qos=1).wait_for_publish(10)
pub.publish("ws/a", b"hello over ws", qos=1).wait_for_publish(10)
result["delivered"] = arrived.wait(10)
time.sleep(0.5)
result["topics"] = got

# A TLS-only identity on the unencrypted ws listener is refused, as on plain TCP.
bad, bad_up, bad_codes = client("ws-tlsonly", "tlsonly", mqtt.MQTTv311, "/mqtt", False)
bad.connect("localhost", ws_port, 30)
bad.loop_start()
bad_up.wait(10)
result["tlsonly_on_ws"] = bad_codes
for c in (sub, pub, bad):
    c.disconnect()
    c.loop_stop()
print(json.dumps(result), flush=True)
"#;

#[test]
fn paho_over_ws_and_wss_with_the_same_rules() {
    let (moat, ws, wss) = start();
    let out = run_bounded(
        Command::new("python3").args([
            "-c",
            PAHO_SCRIPT,
            &ws.to_string(),
            &wss.to_string(),
            &common::path_str(&moat.ca()),
            PASSWORD,
        ]),
        Duration::from_secs(60),
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let context = format!(
        "{stdout}\n{}\nbroker log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        moat.log()
    );
    assert!(out.status.success(), "{context}");
    let report: serde_json::Value =
        serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{e}: {context}"));
    assert_eq!(report["delivered"], true, "{context}");
    // The ACL holds over WebSocket: only the granted topic arrived.
    assert_eq!(report["topics"], serde_json::json!(["ws/a"]), "{context}");
    // CONNACK "not authorized" (3.1.1 code 5, which paho 2 reports as reason 135): a
    // TLS-only identity on a plaintext listener.
    assert_eq!(
        report["tlsonly_on_ws"],
        serde_json::json!([135]),
        "{context}"
    );
    assert!(moat.log().contains("publish denied"), "{context}");
}

// mqtt.js (mqttjs/MQTT.js, lib/connect/ws.ts): `wss://host:port/path` opens a
// WebSocket with subprotocol "mqtt" (or "mqttv3.1" for protocolId MQIsdp), TLS
// options such as `ca` passed through; here MQTT 5, as a dashboard would.
const MQTT_JS_SCRIPT: &str = r#"
const mqtt = require('mqtt');
const fs = require('fs');
const [port, ca, password] = process.argv.slice(2);
const fail = (why) => { console.log('FAIL ' + why); process.exit(1); };
setTimeout(() => fail('timeout'), 20000);
// The WebSocket is made here (as mqtt.js would, with its TLS options) to see the
// close code it ends with: 1000 when the broker answered with a Close frame, 1006
// when the TCP connection ended without one.
const WebSocket = require('ws');
let closeCode = null;
const c = mqtt.connect(`wss://localhost:${port}/mqtt`, {
  protocolVersion: 5, ca: fs.readFileSync(ca), username: 'dashboard', password,
  reconnectPeriod: 0, connectTimeout: 10000,
  createWebsocket: (url, protocols, opts) => {
    const socket = new WebSocket(url, protocols, opts.wsOptions);
    socket.on('close', (code) => { closeCode = code; });
    return socket;
  },
});
// Any error fails, including one after end(): the broker waits for mqtt.js's
// WebSocket Close before it closes the socket (RFC 6455 section 7.1.1).
c.on('error', (e) => fail(e.message));
c.on('connect', () => {
  c.subscribe('ws/#', {qos: 1}, (err, granted) => {
    if (err) fail(err.message);
    console.log('GRANTED ' + granted.map((g) => g.qos).join(','));
    c.publish('ws/js', 'x'.repeat(100000), {qos: 1});
  });
});
c.on('message', (topic, payload) => {
  console.log(`MESSAGE ${topic} ${payload.length}`);
  // Stay a moment after end() so an error on the closed socket would be seen.
  c.end(false, {}, () => setTimeout(() => {
    console.log('ENDED WS-CLOSE ' + closeCode);
    process.exit(0);
  }, 1500));
});
"#;

#[test]
fn mqtt_js_over_wss_v5() {
    let Some(modules) = common::mqtt_js() else {
        return;
    };
    let (moat, _, wss) = start();
    let args = [
        wss.to_string(),
        common::path_str(&moat.ca()),
        PASSWORD.into(),
    ];
    let out = common::node(&modules, MQTT_JS_SCRIPT, &args, Duration::from_secs(30));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let context = format!(
        "{stdout}\n{}\nbroker log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        moat.log()
    );
    assert!(out.status.success(), "{context}");
    assert!(stdout.contains("GRANTED 1"), "{context}");
    // A 100 KB message crosses several frames each way.
    assert!(stdout.contains("MESSAGE ws/js 100000"), "{context}");
    // The closing handshake completed: mqtt.js's Close was answered, not reset.
    assert!(stdout.contains("ENDED WS-CLOSE 1000"), "{context}");
}

#[test]
fn a_request_that_is_not_an_mqtt_upgrade_gets_an_http_error_and_a_log_line() {
    let (moat, ws, _) = start();
    for (request, status) in [
        // No subprotocol: a browser page that forgot `mqtt`.
        (
            "GET /mqtt HTTP/1.1\r\nHost: moat\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
            "HTTP/1.1 400 ",
        ),
        // Plain HTTP.
        ("GET / HTTP/1.1\r\nHost: moat\r\n\r\n", "HTTP/1.1 400 "),
    ] {
        let mut tcp = TcpStream::connect(("127.0.0.1", ws)).unwrap();
        tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        tcp.write_all(request.as_bytes()).unwrap();
        let mut response = String::new();
        let _ = tcp.read_to_string(&mut response);
        assert!(response.starts_with(status), "{response:?}");
    }
    // The refusal is logged just after the response is sent.
    assert!(
        common::wait_for_text(&moat.log, "no `mqtt` subprotocol", Duration::from_secs(5)),
        "{}",
        moat.log()
    );
    assert!(moat.log().contains("WebSocket upgrade refused"));
}
