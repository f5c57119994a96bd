//! Hostile and broken input, one test per class, over raw TCP on the plaintext
//! listener (admission and the codec are the same as behind TLS). Each hostile
//! connection is closed (v5: with the right DISCONNECT reason) and a control client
//! keeps working throughout.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::{Moat, Sub};

const BODY: &str = r##"devices:
  plug:
    password_hash: "{HASH}"
    plaintext: true
    publish: ["home/#"]
    subscribe: ["home/#"]
"##;

fn encode_len(mut n: usize, out: &mut Vec<u8>) {
    loop {
        let mut byte = (n % 128) as u8;
        n /= 128;
        if n > 0 {
            byte |= 0x80;
        }
        out.push(byte);
        if n == 0 {
            break;
        }
    }
}

fn packet(first: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![first];
    encode_len(body.len(), &mut out);
    out.extend_from_slice(body);
    out
}

fn string(s: &[u8]) -> Vec<u8> {
    let mut out = (s.len() as u16).to_be_bytes().to_vec();
    out.extend_from_slice(s);
    out
}

/// A valid CONNECT for the plaintext device, protocol level 4 or 5.
fn connect_packet(level: u8, client_id: &str) -> Vec<u8> {
    let mut body = string(b"MQTT");
    body.push(level);
    body.push(0xC2); // username, password, clean start
    body.extend_from_slice(&60u16.to_be_bytes());
    if level == 5 {
        body.push(0); // no properties
    }
    body.extend(string(client_id.as_bytes()));
    body.extend(string(b"plug"));
    body.extend(string(common::PASSWORD.as_bytes()));
    packet(0x10, &body)
}

fn open(moat: &Moat) -> TcpStream {
    let s = TcpStream::connect(("127.0.0.1", moat.plain_port.unwrap())).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s
}

/// Connects and reads the CONNACK; returns the stream.
fn connected(moat: &Moat, level: u8, client_id: &str) -> TcpStream {
    let mut s = open(moat);
    s.write_all(&connect_packet(level, client_id)).unwrap();
    let mut head = [0u8; 2];
    s.read_exact(&mut head).unwrap();
    assert_eq!(head[0], 0x20, "CONNACK expected");
    let mut rest = vec![0u8; usize::from(head[1])];
    s.read_exact(&mut rest).unwrap();
    let code = rest[1];
    assert_eq!(code, 0, "CONNACK refused: {rest:?}\n{}", moat.log());
    s
}

/// Reads until the broker closes; returns everything it sent.
fn read_to_close(mut s: TcpStream) -> Vec<u8> {
    let mut all = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut buf = [0u8; 1024];
    while Instant::now() < deadline {
        match s.read(&mut buf) {
            Ok(0) => return all,
            Ok(n) => all.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return all,
            Err(e) => panic!("connection not closed: {e}; got {all:?}"),
        }
    }
    panic!("connection not closed within 5 s; got {all:?}");
}

/// Sends `bad` after a v5 CONNECT and expects DISCONNECT with `reason`, then close.
fn expect_disconnect(moat: &Moat, bad: &[u8], reason: u8) {
    let mut s = connected(moat, 5, "hostile");
    s.write_all(bad).unwrap();
    let got = read_to_close(s);
    assert!(
        got.len() >= 3 && got[0] == 0xE0,
        "no DISCONNECT for {bad:02x?}: {got:02x?}"
    );
    assert_eq!(got[2], reason, "reason for {bad:02x?}: {got:02x?}");
}

/// A subscriber and a publisher connected before the hostile traffic starts (so
/// lockout of the shared loopback address cannot touch them): they must keep
/// working throughout.
struct Control {
    sub: Sub,
    publisher: TcpStream,
    n: u32,
}

impl Control {
    fn start(moat: &Moat) -> Control {
        // Ready when each is: the SUBACK has arrived, the CONNACK has been read.
        let sub = moat.sub_plain_subscribed("plug", &["-t", "home/control", "-i", "control-sub"]);
        let publisher = connected(moat, 5, "control-pub");
        Control {
            sub,
            publisher,
            n: 0,
        }
    }

    /// The control clients still work: a QoS 0 publish arrives.
    fn check(&mut self, moat: &Moat) {
        self.n += 1;
        let payload = format!("alive-{}", self.n);
        let mut body = string(b"home/control");
        body.push(0); // no properties
        body.extend_from_slice(payload.as_bytes());
        self.publisher
            .write_all(&packet(0x30, &body))
            .expect("control publisher still connected");
        assert!(
            self.sub.wait_for(&payload, Duration::from_secs(5)),
            "control client lost\n{}",
            moat.log()
        );
    }
}

fn publish_v5(topic: &[u8], qos: u8, packet_id: Option<u16>, props: &[u8]) -> Vec<u8> {
    let mut body = string(topic);
    if let Some(id) = packet_id {
        body.extend_from_slice(&id.to_be_bytes());
    }
    body.push(props.len() as u8);
    body.extend_from_slice(props);
    body.extend_from_slice(b"payload");
    packet(0x30 | (qos << 1), &body)
}

#[test]
fn huge_declared_length_before_connect_is_refused_without_memory_growth() {
    let moat = Moat::start_with(BODY, true, "");
    let mut control = Control::start(&moat);
    let before = moat.rss_kib();
    for _ in 0..50 {
        let mut s = open(&moat);
        // CONNECT announcing 256 MB.
        s.write_all(&[0x10, 0xFF, 0xFF, 0xFF, 0x7F]).unwrap();
        let _ = s.write_all(&[0u8; 1024]);
        read_to_close(s);
    }
    let after = moat.rss_kib();
    assert!(
        after < before + 8 * 1024,
        "RSS grew from {before} to {after} KiB"
    );
    control.check(&moat);
}

#[test]
fn first_packet_must_be_connect_and_only_one() {
    let moat = Moat::start_with(BODY, true, "");
    let mut control = Control::start(&moat);
    let mut s = open(&moat);
    s.write_all(&[0xC0, 0x00]).unwrap(); // PINGREQ first
    read_to_close(s);
    expect_disconnect(&moat, &connect_packet(5, "again"), 0x82);
    control.check(&moat);
}

#[test]
fn malformed_packets_get_the_right_reason() {
    let moat = Moat::start_with(BODY, true, "");
    let mut control = Control::start(&moat);
    // SUBSCRIBE with reserved flags 0000 instead of 0010.
    let mut sub_body = vec![0x00, 0x01, 0x00];
    sub_body.extend(string(b"home/x"));
    sub_body.push(0x01);
    expect_disconnect(&moat, &packet(0x80, &sub_body), 0x81);
    // QoS 3.
    expect_disconnect(&moat, &publish_v5(b"home/x", 3, Some(1), &[]), 0x81);
    // QoS 1 with packet id 0.
    expect_disconnect(&moat, &publish_v5(b"home/x", 1, Some(0), &[]), 0x81);
    // Wildcards in a topic name.
    let wild = publish_v5(b"home/+", 0, None, &[]);
    let mut s = connected(&moat, 5, "wild");
    s.write_all(&wild).unwrap();
    let got = read_to_close(s);
    assert!(
        matches!(got.get(2), Some(0x81 | 0x90)),
        "wildcard topic: {got:02x?}"
    );
    // Empty topic without an alias.
    let empty = publish_v5(b"", 0, None, &[]);
    let mut s = connected(&moat, 5, "empty");
    s.write_all(&empty).unwrap();
    let got = read_to_close(s);
    assert!(
        matches!(got.get(2), Some(0x81 | 0x82 | 0x90)),
        "empty topic: {got:02x?}"
    );
    // Invalid UTF-8 and U+0000 in the topic.
    expect_disconnect(&moat, &publish_v5(b"home/\xff\xfe", 0, None, &[]), 0x81);
    expect_disconnect(&moat, &publish_v5(b"home/\0", 0, None, &[]), 0x81);
    // Duplicate Message Expiry (a protocol error, MQTT 5 §3.3.2.3.3); Session
    // Expiry (not allowed in PUBLISH: malformed).
    expect_disconnect(
        &moat,
        &publish_v5(b"home/x", 0, None, &[0x02, 0, 0, 0, 5, 0x02, 0, 0, 0, 6]),
        0x82,
    );
    expect_disconnect(
        &moat,
        &publish_v5(b"home/x", 0, None, &[0x11, 0, 0, 0, 5]),
        0x81,
    );
    // Non-minimal remaining length (0 encoded in two bytes).
    expect_disconnect(&moat, &[0xC0, 0x80, 0x00], 0x81);
    // Trailing byte after PINGREQ.
    expect_disconnect(&moat, &[0xC0, 0x01, 0x00], 0x81);
    control.check(&moat);
}

#[test]
fn server_only_packet_types_are_refused() {
    let moat = Moat::start_with(BODY, true, "");
    let mut control = Control::start(&moat);
    for bad in [
        vec![0x20, 0x03, 0x00, 0x00, 0x00],       // CONNACK
        vec![0x90, 0x04, 0x00, 0x01, 0x00, 0x00], // SUBACK
        vec![0xB0, 0x04, 0x00, 0x01, 0x00, 0x00], // UNSUBACK
        vec![0xD0, 0x00],                         // PINGRESP
    ] {
        let mut s = connected(&moat, 5, "server-only");
        s.write_all(&bad).unwrap();
        let got = read_to_close(s);
        assert!(
            got.len() >= 3 && got[0] == 0xE0 && got[2] >= 0x80,
            "{bad:02x?} -> {got:02x?}"
        );
    }
    control.check(&moat);
}

#[test]
fn every_truncation_and_bit_flip_of_valid_packets_leaves_the_broker_serving() {
    let moat = Moat::start_with(BODY, true, "");
    let mut control = Control::start(&moat);
    let mut subscribe = vec![0x00, 0x07, 0x00];
    subscribe.extend(string(b"home/#"));
    subscribe.push(0x01);
    let corpus = [
        publish_v5(
            b"home/a",
            1,
            Some(7),
            &[0x01, 0x01, 0x26, 0, 1, b'k', 0, 1, b'v'],
        ),
        packet(0x82, &subscribe),
        vec![0xC0, 0x00],
        vec![0xE0, 0x02, 0x00, 0x00],
    ];
    let mut cases = 0;
    for valid in &corpus {
        let mut variants: Vec<Vec<u8>> = (1..valid.len()).map(|n| valid[..n].to_vec()).collect();
        for byte in 0..valid.len() {
            for bit in 0..8 {
                let mut v = valid.clone();
                v[byte] ^= 1 << bit;
                variants.push(v);
            }
        }
        for v in variants {
            let mut s = connected(&moat, 5, "fuzz");
            let _ = s.write_all(&v);
            cases += 1;
        }
    }
    assert!(cases > 300, "ran {cases} cases");
    control.check(&moat);
    // And the CONNECT itself, mutated before authentication.
    let connect = connect_packet(5, "fuzz-connect");
    for byte in 0..connect.len() {
        for bit in 0..8 {
            let mut v = connect.clone();
            v[byte] ^= 1 << bit;
            let mut s = open(&moat);
            let _ = s.write_all(&v);
        }
    }
    control.check(&moat);
}

#[test]
fn silent_connection_is_closed_at_the_deadline() {
    let moat = Moat::start_with(BODY, true, "  limits: { connect_timeout: 2s }\n");
    let s = open(&moat);
    let started = Instant::now();
    read_to_close(s);
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(1500) && waited < Duration::from_secs(5),
        "closed after {waited:?}"
    );
}

/// Not hostile, but a load a broker must not choke on: a 3.1.1 client (which has no
/// receive maximum) writes CONNECT, 600 QoS 1 PUBLISHes and a PINGREQ at once, then
/// only reads. Every answer must come without the client sending more: packets left
/// in the read buffer after a batch of answers are handled before reading again.
#[test]
fn pipelined_packets_are_all_answered_without_further_input() {
    const PUBLISHES: u16 = 600;
    let moat = Moat::start_with(BODY, true, "");
    let mut burst = connect_packet(4, "pipeliner");
    for id in 1..=PUBLISHES {
        let mut body = string(b"home/pipelined");
        body.extend_from_slice(&id.to_be_bytes());
        body.extend_from_slice(b"payload");
        burst.extend(packet(0x32, &body));
    }
    burst.extend_from_slice(&[0xC0, 0x00]); // PINGREQ
    let mut s = open(&moat);
    s.write_all(&burst).unwrap();

    // CONNACK, a PUBACK per PUBLISH in order, PINGRESP.
    let mut expected = vec![0x20, 0x02, 0x00, 0x00];
    for id in 1..=PUBLISHES {
        expected.extend_from_slice(&[0x40, 0x02]);
        expected.extend_from_slice(&id.to_be_bytes());
    }
    expected.extend_from_slice(&[0xD0, 0x00]);
    let mut got = vec![0u8; expected.len()];
    let read = s.read_exact(&mut got);
    assert!(
        read.is_ok(),
        "answers stopped ({read:?}) before all {} bytes arrived\n{}",
        expected.len(),
        moat.log()
    );
    assert!(
        got == expected,
        "answers differ from CONNACK, PUBACK 1..={PUBLISHES}, PINGRESP"
    );
}

/// A v5 CONNECT with the test password for `user`, with the given client id and,
/// if `will` names a topic, a will to it.
fn connect_v5_with(client_id: &[u8], user: &[u8], will: Option<&[u8]>) -> Vec<u8> {
    let mut body = string(b"MQTT");
    body.push(5);
    body.push(if will.is_some() { 0xC6 } else { 0xC2 });
    body.extend_from_slice(&60u16.to_be_bytes());
    body.push(0); // no properties
    body.extend(string(client_id));
    if let Some(topic) = will {
        body.push(0); // no will properties
        body.extend(string(topic));
        body.extend(string(b"gone"));
    }
    body.extend(string(user));
    body.extend(string(common::PASSWORD.as_bytes()));
    packet(0x10, &body)
}

/// Sends a CONNECT and returns the CONNACK reason code (or `None` if the broker
/// closed without one), reading until the connection closes if it was refused.
fn connack_code(moat: &Moat, connect: &[u8]) -> (Option<u8>, TcpStream) {
    let mut s = open(moat);
    s.write_all(connect).unwrap();
    let mut head = [0u8; 2];
    if s.read_exact(&mut head).is_err() {
        return (None, s);
    }
    assert_eq!(head[0], 0x20, "CONNACK expected: {head:02x?}");
    let mut rest = vec![0u8; usize::from(head[1])];
    s.read_exact(&mut rest).unwrap();
    (rest.get(1).copied(), s)
}

/// MQTT 5 §1.5.4 lets a server treat control characters and non-characters in any
/// string as a Malformed Packet; moat does (0x81), as Mosquitto does for control
/// characters. Only the offending connection closes.
#[test]
fn control_characters_in_any_string_close_only_that_connection() {
    let moat = Moat::start_with(BODY, true, "");
    let mut control = Control::start(&moat);
    let forged = "x\n2026-12-02T00:00:00Z  INFO moat::audit: connected identity=admin FORGED";
    for topic in [
        format!("home/{forged}"),
        "home/next\u{85}line".to_string(),
        "home/\u{1b}[2J".to_string(),
        "home/\u{fffe}".to_string(),
    ] {
        expect_disconnect(&moat, &publish_v5(topic.as_bytes(), 0, None, &[]), 0x81);
    }
    // Content type and a user property value.
    let mut content_type = vec![0x03];
    content_type.extend(string(forged.as_bytes()));
    expect_disconnect(&moat, &publish_v5(b"home/x", 0, None, &content_type), 0x81);
    let mut user_property = vec![0x26];
    user_property.extend(string(b"k"));
    user_property.extend(string("v\u{9b}".as_bytes()));
    expect_disconnect(&moat, &publish_v5(b"home/x", 0, None, &user_property), 0x81);
    // A filter, and a DISCONNECT reason string.
    let mut sub_body = vec![0x00, 0x01, 0x00];
    sub_body.extend(string(forged.as_bytes()));
    sub_body.push(0x00);
    expect_disconnect(&moat, &packet(0x82, &sub_body), 0x81);
    let mut disconnect = vec![0x00];
    let mut reason_string = vec![0x1F];
    reason_string.extend(string(forged.as_bytes()));
    disconnect.push(reason_string.len() as u8);
    disconnect.extend(reason_string);
    expect_disconnect(&moat, &packet(0xE0, &disconnect), 0x81);
    // In CONNECT, v5 gets CONNACK 0x81 (MQTT 5 §4.13.1), 3.1.1 is just closed.
    for connect in [
        connect_v5_with(forged.as_bytes(), b"plug", None),
        connect_v5_with(b"c", forged.as_bytes(), None),
        connect_v5_with(b"c", b"plug", Some(format!("home/{forged}").as_bytes())),
    ] {
        let (code, s) = connack_code(&moat, &connect);
        assert_eq!(code, Some(0x81), "{}", moat.log());
        read_to_close(s);
    }
    let (code, s) = connack_code(&moat, &connect_packet(4, forged));
    assert_eq!(
        code, None,
        "3.1.1 has no code for it: closed without CONNACK"
    );
    read_to_close(s);
    control.check(&moat);
    assert!(moat.log().contains("U+000A"), "{}", moat.log());
}

/// The log line a forged value would fake, and a timestamp the broker never writes
/// (tests run long after midnight UTC... or they fail loudly, not silently).
const FORGED_LINE: &str = "2026-12-02T00:00:00Z  INFO moat::audit: connected identity=admin FORGED";

/// Every line of `log` is one event the broker wrote: it starts with the
/// subscriber's RFC 3339 timestamp, never the forged one, and holds no raw control
/// character, line separator or bidi override.
fn assert_one_line_per_event(log: &str) {
    for line in log.lines() {
        let stamp = line.split(' ').next().unwrap_or_default();
        let real = stamp.len() > 20
            && stamp.as_bytes()[4] == b'-'
            && stamp.as_bytes()[10] == b'T'
            && stamp.ends_with('Z')
            && stamp[..4].bytes().all(|b| b.is_ascii_digit());
        assert!(
            real,
            "a line that is not an event of its own: {line:?}\n{log}"
        );
        assert!(
            !line.starts_with("2026-12-02T00:00:00Z"),
            "forged line: {line:?}"
        );
        assert!(
            !line.contains(
                |c: char| c.is_control() || matches!(c, '\u{2028}' | '\u{2029}' | '\u{202e}')
            ),
            "raw control character in {line:?}"
        );
    }
}

/// Lines whose event (after timestamp and level) is the audit message `message`.
fn audit_events(log: &str, message: &str) -> usize {
    let prefix = format!("moat::audit: {message}");
    log.lines()
        .filter(|line| {
            let mut parts = line.split_whitespace();
            let _stamp = parts.next();
            let _level = parts.next();
            let rest = parts.collect::<Vec<_>>().join(" ");
            rest == prefix || rest.starts_with(&format!("{prefix} "))
        })
        .count()
}

/// A peer feeds a forged log line into every field it controls. Those with a
/// newline are refused by the codec (above); what the codec lets through (quotes,
/// `=`, spaces, U+2028, a bidi override) reaches the log only escaped and quoted, so
/// the log keeps exactly one line per event and no field can fake another.
#[test]
fn peer_controlled_fields_cannot_forge_log_lines() {
    let moat = Moat::start_with(BODY, true, "");
    let mut control = Control::start(&moat);
    let through = format!("x\u{2028}{FORGED_LINE} \" outcome=\"accepted\" \u{202e}");
    let newline = format!("x\n{FORGED_LINE}");

    // A user name that fails authentication: logged by the audit of the attempt.
    for user in [through.as_str(), newline.as_str()] {
        let (code, s) = connack_code(&moat, &connect_v5_with(b"c", user.as_bytes(), None));
        assert!(matches!(code, Some(0x86 | 0x81)), "{code:?}");
        read_to_close(s);
    }
    // A will topic the identity may not publish to.
    let will = format!("secret/{through}");
    let (code, s) = connack_code(
        &moat,
        &connect_v5_with(b"w", b"plug", Some(will.as_bytes())),
    );
    assert_eq!(code, Some(0x87), "{}", moat.log());
    read_to_close(s);
    // A client id, then a denied topic, a denied filter and a DISCONNECT reason string.
    let mut s = connected(&moat, 5, &through);
    let denied = format!("secret/{through}");
    s.write_all(&publish_v5(denied.as_bytes(), 1, Some(1), &[]))
        .unwrap();
    let mut puback = [0u8; 6];
    s.read_exact(&mut puback).unwrap();
    assert_eq!(puback[..2], [0x40, 0x04], "PUBACK: {puback:02x?}");
    assert_eq!(puback[4], 0x87, "not authorized: {puback:02x?}");
    let mut sub_body = vec![0x00, 0x02, 0x00];
    sub_body.extend(string(denied.as_bytes()));
    sub_body.push(0x00);
    s.write_all(&packet(0x82, &sub_body)).unwrap();
    let mut suback = [0u8; 6];
    s.read_exact(&mut suback).unwrap();
    assert_eq!(
        (suback[0], suback[5]),
        (0x90, 0x87),
        "SUBACK: {suback:02x?}"
    );
    let mut reason_string = vec![0x1F];
    reason_string.extend(string(through.as_bytes()));
    let mut disconnect = vec![0x00, reason_string.len() as u8];
    disconnect.extend(reason_string);
    s.write_all(&packet(0xE0, &disconnect)).unwrap();
    read_to_close(s);
    // And the newline versions of the same fields, which the codec refuses.
    expect_disconnect(
        &moat,
        &publish_v5(format!("secret/{newline}").as_bytes(), 0, None, &[]),
        0x81,
    );
    control.check(&moat);
    // The audit lines are written after the disconnect; give them a moment.
    let deadline = Instant::now() + Duration::from_secs(5);
    while audit_events(&moat.log(), "disconnected") < 2 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }

    let log = moat.log();
    assert_one_line_per_event(&log);
    // Each event that logged a forged value did so once, escaped and quoted.
    let escaped = r#"x\u20282026-12-02T00:00:00Z  INFO moat::audit: connected identity=admin FORGED \" outcome=\"accepted\" \u202e"#;
    for (field, what) in [
        ("user", "failed login"),
        ("topic", "will topic and denied publish"),
        ("filter", "denied subscribe"),
        ("client_id", "connected"),
    ] {
        let needle = format!(
            "{field}=\"{}",
            if field == "user" || field == "client_id" {
                escaped.to_string()
            } else {
                format!("secret/{escaped}")
            }
        );
        assert!(log.contains(&needle), "{what}: no {needle:?} in\n{log}");
    }
    // Four clients connected (two control clients, the forger, the newline
    // publisher): four `connected` events, whatever the fields claimed.
    assert_eq!(audit_events(&log, "connected"), 4, "{log}");
}

/// A raw MQTT 3.1 CONNECT (`MQIsdp`, level 3) for the plaintext device, as paho's
/// `_send_connect` writes it with `protocol=MQTTv31`.
fn connect_v31(client_id: &str, clean: bool) -> Vec<u8> {
    let mut body = string(b"MQIsdp");
    body.push(3);
    body.push(if clean { 0xC2 } else { 0xC0 });
    body.extend_from_slice(&60u16.to_be_bytes());
    body.extend(string(client_id.as_bytes()));
    body.extend(string(b"plug"));
    body.extend(string(common::PASSWORD.as_bytes()));
    packet(0x10, &body)
}

/// MQTT 3.1 on the wire: an id is required (Mosquitto refuses an empty one too,
/// return code 2), and CONNACK's first byte stays 0 for a resumed session, where
/// 3.1.1 would set session-present.
#[test]
fn mqtt_3_1_connack_has_no_session_flag_and_needs_a_client_id() {
    let moat = Moat::start_with(BODY, true, "");
    let (code, s) = connack_code(&moat, &connect_v31("", true));
    assert_eq!(code, Some(2), "{}", moat.log());
    read_to_close(s);
    for round in 0..2 {
        let mut s = open(&moat);
        s.write_all(&connect_v31("old device", false)).unwrap();
        let mut connack = [0u8; 4];
        s.read_exact(&mut connack).unwrap();
        assert_eq!(connack, [0x20, 0x02, 0x00, 0x00], "round {round}");
        s.write_all(&[0xE0, 0x00]).unwrap(); // DISCONNECT
        read_to_close(s);
    }
    // The same resumption over 3.1.1 says the session is present.
    for expected in [0x00, 0x01] {
        let mut s = open(&moat);
        let mut connect = connect_packet(4, "new device");
        // The flags byte follows the protocol name and level: drop clean session.
        let flags_at = connect.windows(4).position(|w| w == b"MQTT").unwrap() + 5;
        connect[flags_at] = 0xC0;
        s.write_all(&connect).unwrap();
        let mut connack = [0u8; 4];
        s.read_exact(&mut connack).unwrap();
        assert_eq!(connack, [0x20, 0x02, expected, 0x00]);
        s.write_all(&[0xE0, 0x00]).unwrap();
        read_to_close(s);
    }
}
