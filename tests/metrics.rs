//! The Prometheus endpoint (`broker.metrics`) end to end: the real `moat serve`, real
//! `mosquitto_pub`/`mosquitto_sub` clients, scrapes over a raw TCP socket, and the
//! exposition parsed by the Prometheus project's own Python parser
//! (`prometheus_client.parser`). The counters must move by exactly what the clients
//! did: connections, messages by QoS, a failed login, a denied publish, a retained
//! message committed to the store. The endpoint answers 401 without the token, 404
//! and 405 off its one path and method, 431 to an oversized request, and nothing to
//! an address outside the allowed networks.

mod common;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Moat, free_ports, mosquitto, password_hash, with_extra};

const TOKEN: &str = "scrape-Token-42";

/// The Prometheus client library's text parser, turning an exposition into
/// `{"name{label=value,...}": value}`.
const PARSER: &str = r#"
import json, sys
from prometheus_client.parser import text_string_to_metric_families
out = {}
for family in text_string_to_metric_families(sys.stdin.read()):
    for s in family.samples:
        labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
        out[f"{s.name}{{{labels}}}"] = s.value
print(json.dumps(out))
"#;

fn python_parser_available() -> bool {
    let ok = Command::new("python3")
        .args(["-c", "import prometheus_client.parser"])
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok || std::env::var_os("CI").is_none(),
        "CI must install the Prometheus parser: pip install prometheus-client"
    );
    ok
}

/// One HTTP exchange: `request` sent as is, the whole answer read until close.
fn exchange(port: u16, request: &[u8]) -> (u16, String) {
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let mut tcp = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    tcp.write_all(request).unwrap();
    let mut answer = Vec::new();
    tcp.read_to_end(&mut answer).unwrap();
    let text = String::from_utf8(answer).unwrap();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP answer: {text:?}"));
    (status, text)
}

fn get(port: u16, path: &str, authorization: Option<&str>) -> (u16, String) {
    let auth = authorization
        .map(|a| format!("Authorization: {a}\r\n"))
        .unwrap_or_default();
    let request = format!("GET {path} HTTP/1.1\r\nHost: moat\r\n{auth}Accept: */*\r\n\r\n");
    exchange(port, request.as_bytes())
}

/// Scrapes with the token and parses the body with the real parser.
fn scrape(port: u16) -> BTreeMap<String, f64> {
    let (status, answer) = get(port, "/metrics", Some(&format!("Bearer {TOKEN}")));
    assert_eq!(status, 200, "{answer}");
    assert!(
        answer.contains("Content-Type: text/plain; version=0.0.4; charset=utf-8\r\n"),
        "{answer}"
    );
    assert!(answer.contains("Connection: close\r\n"), "{answer}");
    let body = answer.split_once("\r\n\r\n").unwrap().1;
    let mut child = Command::new("python3")
        .args(["-c", PARSER])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(body.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the Prometheus parser refused the exposition: {}\n{body}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Scrapes once no MQTT connection is open any more (within 10 s).
fn scrape_when_idle(port: u16) -> BTreeMap<String, f64> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let now = scrape(port);
        if value(&now, "moat_connections_open{}") == 0.0 || Instant::now() > deadline {
            return now;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn value(samples: &BTreeMap<String, f64>, key: &str) -> f64 {
    *samples
        .get(key)
        .unwrap_or_else(|| panic!("no sample {key} in {:?}", samples.keys()))
}

/// `after - before` for every key named.
fn moved(
    before: &BTreeMap<String, f64>,
    after: &BTreeMap<String, f64>,
    keys: &[&str],
) -> Vec<(String, f64)> {
    keys.iter()
        .map(|k| (k.to_string(), value(after, k) - value(before, k)))
        .collect()
}

/// moat with plaintext and TLS listeners and the metrics endpoint, all on 127.0.0.1,
/// allowing 127.0.0.1 alone (127.0.0.2 plays a stranger).
fn start() -> (Moat, u16) {
    start_with("", "")
}

/// [`start`] with more lines in `broker:` and `users:`.
fn start_with(broker_extra: &str, users_extra: &str) -> (Moat, u16) {
    let [tls, plain, metrics] = free_ports();
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("metrics-token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
    std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let hash = password_hash();
    let manifest = format!(
        r#"version: 1
broker:
  hostnames: [moat.test]
  listen:
    tls: {{ address: "127.0.0.1", port: {tls} }}
    plain: {{ address: "127.0.0.1", port: {plain} }}
  networks: ["127.0.0.1/32"]
  metrics: {{ address: "127.0.0.1", port: {metrics}, token_file: "{token}" }}
{broker_extra}users:
  sensor:
    password_hash: "{hash}"
    plaintext: true
    retain: true
    publish: ["sensors/#"]
  watcher:
    password_hash: "{hash}"
    plaintext: true
    subscribe: ["sensors/#"]
{users_extra}"#,
        token = token_file.display(),
        users_extra = users_extra.replace("{hash}", &hash),
    );
    std::fs::write(dir.path().join("moat.yaml"), manifest).unwrap();
    let moat = Moat::start_in(dir, tls, Some(plain));
    assert!(
        moat.log().contains("metrics endpoint listening"),
        "{}",
        moat.log()
    );
    (moat, metrics)
}

#[test]
fn counters_move_by_exactly_what_the_clients_did() {
    if !python_parser_available() {
        eprintln!("skipping: pip install prometheus-client");
        return;
    }
    let (moat, port) = start();
    // The harness's readiness probe (a bare TCP connect to the TLS port) must be over
    // before the baseline, or its refusal could land in the middle: wait (bounded)
    // until the broker has accepted it, not only until nothing is open (on a busy
    // machine it can still sit in the listen backlog, counted after the baseline).
    let deadline = Instant::now() + Duration::from_secs(10);
    let before = loop {
        let now = scrape_when_idle(port);
        if value(&now, "moat_connections_accepted_total{}") >= 1.0 || Instant::now() > deadline {
            break now;
        }
        std::thread::sleep(Duration::from_millis(50));
    };

    let watcher = common::Sub::start_subscribed(&with_extra(
        moat.plain_args("watcher"),
        &["-t", "sensors/#", "-q", "1", "-C", "3", "-v"],
    ));
    let publish = |extra: &[&str]| {
        mosquitto(
            "mosquitto_pub",
            &with_extra(moat.plain_args("sensor"), extra),
        )
    };
    assert!(
        publish(&["-t", "sensors/a", "-m", "0", "-q", "0"])
            .status
            .success()
    );
    assert!(
        publish(&["-t", "sensors/b", "-m", "1", "-q", "1"])
            .status
            .success()
    );
    assert!(
        publish(&["-t", "sensors/r", "-m", "r", "-q", "0", "-r"])
            .status
            .success()
    );
    assert!(
        watcher.wait_for("sensors/r r", Duration::from_secs(10)),
        "{}",
        watcher.output()
    );
    // A publish outside the grants: refused (and counted), not delivered.
    let _ = publish(&["-t", "lights/kitchen", "-m", "on", "-q", "1"]);
    // A wrong password.
    let wrong = mosquitto(
        "mosquitto_pub",
        &[
            "-h",
            "127.0.0.1",
            "-p",
            &moat.plain_port.unwrap().to_string(),
            "-u",
            "sensor",
            "-P",
            "not-the-password",
            "-t",
            "sensors/a",
            "-m",
            "x",
        ]
        .map(String::from),
    );
    assert!(!wrong.status.success());
    // A peer that connects and leaves without a CONNECT, and one whose first packet
    // is not a CONNECT (a PINGREQ).
    let plain: SocketAddr = ([127, 0, 0, 1], moat.plain_port.unwrap()).into();
    drop(TcpStream::connect(plain).unwrap());
    let mut ping = TcpStream::connect(plain).unwrap();
    ping.write_all(&[0xC0, 0x00]).unwrap();
    ping.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let _ = ping.read_to_end(&mut Vec::new());
    drop(watcher);

    let exact = [
        // watcher, three publishers, the denied publisher, the wrong password, the
        // silent peer, the PINGREQ
        ("moat_connections_accepted_total{}", 8.0),
        ("moat_connections_refused_total{reason=connect}", 1.0),
        ("moat_connections_refused_total{reason=no-connect}", 1.0),
        ("moat_connections_refused_total{reason=malformed}", 1.0),
        ("moat_connections_refused_total{reason=network}", 0.0),
        ("moat_connections_open{}", 0.0),
        ("moat_clients_connected{}", 0.0),
        ("moat_messages_received_total{qos=0}", 2.0),
        ("moat_messages_received_total{qos=1}", 1.0),
        ("moat_messages_received_total{qos=2}", 0.0),
        // QoS 1 subscription: each message at the publisher's QoS
        ("moat_messages_sent_total{qos=0}", 2.0),
        ("moat_messages_sent_total{qos=1}", 1.0),
        ("moat_denials_total{kind=publish}", 1.0),
        ("moat_denials_total{kind=subscribe}", 0.0),
        ("moat_auth_attempts_total{outcome=accepted}", 5.0),
        ("moat_auth_attempts_total{outcome=denied}", 1.0),
        ("moat_auth_attempts_total{outcome=throttled}", 0.0),
        ("moat_retained_messages{}", 1.0),
        ("moat_messages_dropped_total{reason=queue-full}", 0.0),
    ];
    let keys: Vec<&str> = exact.iter().map(|(k, _)| *k).collect();
    let want: Vec<(String, f64)> = exact.iter().map(|(k, v)| (k.to_string(), *v)).collect();
    // Connection tasks end on their own time: wait (bounded) until the counts settle,
    // then they must be exactly these.
    let deadline = Instant::now() + Duration::from_secs(10);
    let (after, got) = loop {
        let after = scrape_when_idle(port);
        let got = moved(&before, &after, &keys);
        if got == want || Instant::now() > deadline {
            break (after, got);
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(got, want, "\n{}", moat.log());

    // Logins that hashed: the watcher's, the sensor's first and the wrong password;
    // each waited for a verification slot once. The others came from the cache.
    let hashed = value(&after, "moat_auth_verifications_total{}")
        - value(&before, "moat_auth_verifications_total{}");
    let cached = value(&after, "moat_auth_cache_hits_total{}")
        - value(&before, "moat_auth_cache_hits_total{}");
    assert_eq!((hashed, cached), (3.0, 3.0));
    assert_eq!(
        value(&after, "moat_auth_queue_wait_seconds_count{}")
            - value(&before, "moat_auth_queue_wait_seconds_count{}"),
        hashed
    );
    // One source of truth: the histogram counts each commit once.
    let commits = value(&after, "moat_store_commits_total{}");
    assert!(commits > value(&before, "moat_store_commits_total{}"));
    assert_eq!(value(&after, "moat_store_commit_seconds_count{}"), commits);
    assert_eq!(
        value(&after, "moat_store_commit_seconds_bucket{le=+Inf}"),
        commits
    );
    assert!(value(&after, "moat_store_database_bytes{}") > 0.0);
    assert_eq!(value(&after, "moat_store_disk_full{}"), 0.0);
    assert!(value(&after, "moat_uptime_seconds{}") >= 0.0);
    assert_eq!(value(&after, "moat_sessions{}"), 0.0, "clean sessions end");
}

#[test]
fn the_endpoint_answers_only_get_metrics_with_the_token_and_only_to_the_lan() {
    let (moat, port) = start();
    let (status, answer) = get(port, "/metrics", None);
    assert_eq!(status, 401, "{answer}");
    assert!(answer.contains("WWW-Authenticate: Bearer"), "{answer}");
    assert_eq!(get(port, "/metrics", Some("Bearer wrong")).0, 401);
    assert_eq!(get(port, "/metrics", Some(TOKEN)).0, 401, "scheme required");
    assert_eq!(get(port, "/", Some(&format!("Bearer {TOKEN}"))).0, 404);
    let post = format!("POST /metrics HTTP/1.1\r\nAuthorization: Bearer {TOKEN}\r\n\r\n");
    let (status, answer) = exchange(port, post.as_bytes());
    assert_eq!(status, 405);
    assert!(answer.contains("Allow: GET\r\n"), "{answer}");
    let huge = format!(
        "GET /metrics HTTP/1.1\r\nX-Pad: {}\r\n\r\n",
        "a".repeat(10_000)
    );
    assert_eq!(exchange(port, huge.as_bytes()).0, 431);
    assert_eq!(exchange(port, b"BREW /metrics HTCPCP/1.0\r\n\r\n").0, 400);
    let (status, body) = get(port, "/metrics", Some(&format!("Bearer {TOKEN}")));
    assert_eq!(status, 200);
    assert!(
        body.contains("moat_metrics_responses_total{code=\"401\"} 3\n"),
        "{body}"
    );

    // From 127.0.0.2, outside the allowed 127.0.0.1: no answer (the kernel's SYN
    // filter drops the handshake; if it could not be installed, admission closes
    // the connection before reading).
    let stranger =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    stranger
        .bind(&SocketAddr::from(([127, 0, 0, 2], 0)).into())
        .unwrap();
    let target: SocketAddr = ([127, 0, 0, 1], port).into();
    let connected = stranger
        .connect_timeout(&target.into(), Duration::from_secs(2))
        .is_ok();
    if connected {
        let mut tcp: TcpStream = stranger.into();
        tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let request = format!("GET /metrics HTTP/1.1\r\nAuthorization: Bearer {TOKEN}\r\n\r\n");
        let _ = tcp.write_all(request.as_bytes());
        let mut answer = Vec::new();
        let _ = tcp.read_to_end(&mut answer);
        assert!(
            answer.is_empty(),
            "a stranger got {:?}",
            String::from_utf8_lossy(&answer)
        );
    }
    let (_, body) = get(port, "/metrics", Some(&format!("Bearer {TOKEN}")));
    let refused = if connected { 1 } else { 0 };
    assert!(
        body.contains(&format!("moat_metrics_refused_total {refused}\n")),
        "connected: {connected}\n{body}"
    );

    // A reload re-reads the token file: the old token stops working.
    let token_file = moat.dir.path().join("metrics-token");
    std::fs::write(&token_file, "rotated-token\n").unwrap();
    moat.signal("HUP");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !moat.log().contains("manifest reloaded") && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        get(port, "/metrics", Some(&format!("Bearer {TOKEN}"))).0,
        401
    );
    assert_eq!(get(port, "/metrics", Some("Bearer rotated-token")).0, 200);
}

#[test]
fn home_assistant_discovers_the_broker_health() {
    let (moat, _) = start_with(
        "  homeassistant: true\n",
        "  ha:\n    password_hash: \"{hash}\"\n    role: homeassistant\n    subscribe: [\"$SYS/broker/health\"]\n",
    );
    assert!(
        moat.log().contains("readers=ha"),
        "the log names who reads the health topic:\n{}",
        moat.log()
    );
    let configs = mosquitto(
        "mosquitto_sub",
        &with_extra(
            moat.tls_args("ha"),
            &[
                "-t",
                "homeassistant/sensor/+/config",
                "-v",
                "-C",
                "11",
                "-W",
                "15",
            ],
        ),
    );
    let text = String::from_utf8_lossy(&configs.stdout).to_string();
    let mut keys = Vec::new();
    for line in text.lines() {
        let (topic, config) = line.split_once(' ').unwrap();
        let config: serde_json::Value = serde_json::from_str(config).unwrap();
        let id = config["unique_id"].as_str().unwrap();
        assert_eq!(topic, format!("homeassistant/sensor/{id}/config"));
        assert_eq!(config["state_topic"], "$SYS/broker/health");
        assert_eq!(config["device"]["identifiers"][0], "moat");
        let template = config["value_template"].as_str().unwrap();
        let key = template
            .strip_prefix("{{ value_json.")
            .and_then(|t| t.strip_suffix(" }}"))
            .unwrap();
        keys.push(key.to_owned());
    }
    assert_eq!(keys.len(), 11, "{text}");

    let state = mosquitto(
        "mosquitto_sub",
        &with_extra(
            moat.tls_args("ha"),
            &["-t", "$SYS/broker/health", "-C", "1", "-W", "15"],
        ),
    );
    let state: serde_json::Value = serde_json::from_slice(&state.stdout).unwrap();
    for key in &keys {
        assert!(
            state[key].is_u64() || state[key].is_i64(),
            "{key} in {state}"
        );
    }
    assert_eq!(state["login_failures"], 0);
    assert!(state["database_bytes"].as_u64().unwrap() > 0);
    assert!(
        state["retained_messages"].as_u64().unwrap() >= 11,
        "{state}"
    );

    // `#` never matches $SYS: the sensor user cannot read it.
    let denied = mosquitto(
        "mosquitto_sub",
        &with_extra(
            moat.plain_args("watcher"),
            &["-t", "$SYS/broker/health", "-C", "1", "-W", "3"],
        ),
    );
    assert!(denied.stdout.is_empty());
}
