//! SIGTERM: the server stops accepting, tells every client (MQTT 5: DISCONNECT
//! 0x8B "server shutting down", what paho reports to Home Assistant), waits for
//! their connections to end within a deadline, and exits cleanly.

mod common;

use std::time::Duration;

use common::Moat;

const BODY: &str = r##"users:
  ha:
    password_hash: "{HASH}"
    subscribe: ["home/#"]
"##;

// paho-mqtt 2.x, MQTT 5, TLS with the broker's CA; prints the DISCONNECT reason it
// was given, then exits.
const SCRIPT: &str = r#"
import sys, threading, paho.mqtt.client as mqtt
port, ca, password = int(sys.argv[1]), sys.argv[2], sys.argv[3]
c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="ha-shutdown", protocol=mqtt.MQTTv5)
c.username_pw_set("ha", password)
c.tls_set(ca_certs=ca)
up, gone = threading.Event(), threading.Event()
c.on_connect = lambda *a: up.set()
def on_disconnect(cl, u, flags, rc, props=None):
    print("DISCONNECT", int(getattr(rc, "value", rc)), flush=True)
    gone.set()
c.on_disconnect = on_disconnect
c.connect("localhost", port, 60)
c.loop_start()
assert up.wait(10), "no CONNACK"
print("READY", flush=True)
gone.wait(30)
c.loop_stop()
"#;

#[test]
fn sigterm_tells_clients_and_exits_once_they_are_gone() {
    let mut moat = Moat::start(BODY);
    let port = moat.tls_port.to_string();
    let ca = common::path_str(&moat.ca());
    let client = std::thread::spawn(move || {
        common::run_bounded(
            std::process::Command::new("python3").args([
                "-c",
                SCRIPT,
                &port,
                &ca,
                common::PASSWORD,
            ]),
            Duration::from_secs(40),
        )
    });
    assert!(
        common::wait_for_text(&moat.log, "client_id=ha-shutdown", Duration::from_secs(15)),
        "{}",
        moat.log()
    );
    moat.stop();
    let out = client.join().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("DISCONNECT 139"),
        "{stdout}\n{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        moat.log()
    );
    // Its connection ended, so serve did not give up waiting for it.
    assert!(
        common::wait_for_text(&moat.log, "shutting down", Duration::from_secs(5)),
        "{}",
        moat.log()
    );
    assert!(
        !moat.log().contains("shutdown deadline passed"),
        "{}",
        moat.log()
    );
}
