use super::*;
use crate::broker::BrokerConfig;
use crate::manifest::{LoadOptions, parse_str};

const HASH: &str =
    "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaGhhc2hoYXNoaGFzaGhhc2g";

fn compile(text: &str) -> Policy {
    let loaded = parse_str(text, "test.yaml", LoadOptions::default()).unwrap();
    Policy::compile(&loaded.manifest).unwrap()
}

/// `docs/manifest.md`'s limits table says what the code does: a manifest that
/// sets every limit to its documented default compiles to `Limits::default()`.
#[test]
fn the_documented_limit_defaults_are_the_defaults() {
    let docs = include_str!("../../docs/manifest.md");
    let table = docs
        .split("### `broker.limits`")
        .nth(1)
        .and_then(|rest| rest.split("\n### ").next())
        .unwrap();
    let mut yaml = String::from("version: 1\nbroker:\n  limits:\n");
    let mut rows = 0;
    for row in table.lines().filter(|l| l.starts_with("| `")) {
        let cells: Vec<&str> = row.split('|').map(str::trim).collect();
        let (field, default) = (cells[1].trim_matches('`'), cells[3]);
        yaml.push_str(&format!("    {field}: {default}\n"));
        rows += 1;
    }
    assert_eq!(rows, 20, "the table has one row per limit:\n{table}");
    yaml.push_str(&format!(
        "users:\n  ha:\n    role: observer\n    password_hash: \"{HASH}\"\n"
    ));
    assert_eq!(compile(&yaml).limits, Limits::default(), "{yaml}");
}

/// Every `broker.limits` key lands in its own field, and the broker-core ones in
/// the `BrokerConfig` the server hands the broker as is.
#[test]
fn every_limit_reaches_its_field() {
    let p = compile(&format!(
        "version: 1
broker:
  limits:
    max_connections: 101
    max_connections_per_ip: 11
    max_packet_size: 512KiB
    max_packet_size_before_auth: 3KiB
    connect_timeout: 7s
    max_keepalive: 61
    max_inflight: 9
    max_queued_messages: 77
    max_queued_bytes: 5KiB
    max_subscriptions: 13
    max_user_properties: 4
    max_user_property_bytes: 2KiB
    max_client_id_length: 33
    max_topic_length: 99
    max_topic_levels: 6
    max_retained_messages: 55
    max_retained_bytes: 6KiB
    auth_concurrency: 3
    auth_queue: 5
    max_sessions_per_identity: 8
users:
  ha:
    role: observer
    password_hash: \"{HASH}\"
"
    ));
    let defaults = BrokerConfig::default();
    let expected = Limits {
        broker: BrokerConfig {
            max_packet_size_before_auth: 3 * 1024,
            connect_timeout: Duration::from_secs(7),
            max_keepalive: 61,
            max_inflight: 9,
            max_subscriptions: 13,
            max_user_properties: 4,
            max_user_property_bytes: 2 * 1024,
            max_client_id_length: 33,
            max_topic_length: 99,
            max_topic_levels: 6,
            max_retained_messages: 55,
            max_retained_bytes: 6 * 1024,
            max_sessions_per_identity: 8,
            topic_alias_maximum: defaults.topic_alias_maximum,
            max_session_expiry: defaults.max_session_expiry,
        },
        max_connections: 101,
        max_connections_per_ip: 11,
        max_packet_size: 512 * 1024,
        max_queued_messages: 77,
        max_queued_bytes: 5 * 1024,
        auth_concurrency: 3,
        auth_queue: 5,
    };
    assert_eq!(p.limits, expected);
}

#[test]
fn every_transport_is_one_listener_with_its_defaults() {
    let p = compile(&format!(
        "version: 1\nbroker:\n  listen:\n    plain: {{}}\n    ws: {{}}\n    wss: {{ port: 9001 }}\nusers:\n  lamp:\n    password_hash: \"{HASH}\"\n    plaintext: true\n"
    ));
    let plan: Vec<(Transport, String)> = p
        .listeners
        .iter()
        .map(|l| (l.transport, l.address.to_string()))
        .collect();
    assert_eq!(
        plan,
        [
            (Transport::Tls, "[::]:8883".to_string()),
            (Transport::Plain, "0.0.0.0:1883".to_string()),
            (Transport::WebSocket, "0.0.0.0:1884".to_string()),
            (Transport::WebSocketTls, "[::]:9001".to_string()),
        ]
    );
    assert_eq!(p.listener_ports(), [8883, 1883, 1884, 9001]);
}

#[test]
fn defaults_match_the_design_table() {
    let p = compile(&format!(
        "version: 1\nusers:\n  ha:\n    role: homeassistant\n    password_hash: \"{HASH}\"\n"
    ));
    assert_eq!(p.limits, Limits::default());
    assert_eq!(p.listen_tls(), "[::]:8883".parse().unwrap());
    assert_eq!(p.listen_plain(), None);
    assert_eq!(p.persistence.durability, Durability::Full);
    assert!(p.networks.allows("192.168.1.20".parse().unwrap()));
    assert!(p.networks.allows("::ffff:10.0.0.1".parse().unwrap()));
    assert!(p.networks.allows("::1".parse().unwrap()));
    assert!(p.networks.allows("fe80::1".parse().unwrap()));
    assert!(!p.networks.allows("8.8.8.8".parse().unwrap()));
    assert!(!p.networks.allows("::ffff:8.8.8.8".parse().unwrap()));
    assert!(!p.networks.allows("2001:db8::1".parse().unwrap()));
    let mapped = Networks::new(vec!["::ffff:203.0.113.0/120".parse().unwrap()]);
    assert_eq!(
        mapped.cidrs(),
        &["203.0.113.0/24".parse::<IpNet>().unwrap()]
    );
    assert!(mapped.allows("203.0.113.9".parse().unwrap()));
    assert!(mapped.allows("::ffff:203.0.113.9".parse().unwrap()));
    let ha = p.identity("ha").unwrap();
    assert_eq!(ha.max_queued_messages, 10_000);
    assert_eq!(ha.max_queued_bytes, 16 * 1024 * 1024);
    assert_eq!(ha.max_subscriptions, roles::HUB_MAX_SUBSCRIPTIONS);
    assert!(
        ha.acl
            .may_publish("ha", "c", "frigate/front/detect/set")
            .allowed
    );
    assert_eq!(ha.kind, IdentityKind::User);
    assert!(!p.needs_rsa_server_key());
}

#[test]
fn limits_overrides_and_roles_compose() {
    let p = compile(&format!(
        "version: 1
broker:
  listen:
    plain: {{ port: 1884 }}
  limits: {{ max_packet_size: 256KiB, connect_timeout: 5s, max_queued_bytes: 2MiB }}
  persistence: {{ durability: batched, commit_interval_ms: 20 }}
roles:
  quiet:
    publish: [\"q/%u\"]
    retain: false
    limits: {{ max_queued_messages: 50, max_subscriptions: 20 }}
devices:
  plug:
    roles: [tasmota, quiet]
    password_hash: \"{HASH}\"
    plaintext: true
    limits: {{ max_packet_size: 1MiB, max_subscriptions: 500 }}
  cam:
    certificate: true
    role: quiet
"
    ));
    assert_eq!(p.limits.max_packet_size, 256 * 1024);
    assert_eq!(p.limits.broker.connect_timeout, Duration::from_secs(5));
    assert_eq!(p.listen_plain(), Some("0.0.0.0:1884".parse().unwrap()));
    assert_eq!(
        p.persistence.durability,
        Durability::Batched {
            commit_interval: Duration::from_millis(20)
        }
    );
    let plug = p.identity("plug").unwrap();
    assert!(plug.plaintext && plug.may_retain);
    assert_eq!(
        plug.max_packet_size,
        256 * 1024,
        "capped at the broker limit"
    );
    assert_eq!(plug.max_queued_messages, 50);
    assert_eq!(plug.max_queued_bytes, 2 * 1024 * 1024);
    assert_eq!(plug.max_subscriptions, 500, "the identity's own value wins");
    assert!(plug.acl.may_publish("plug", "x", "tele/plug/STATE").allowed);
    assert!(plug.acl.may_publish("plug", "x", "q/plug").allowed);
    let cam = p.identity("cam").unwrap();
    assert!(!cam.may_retain);
    assert_eq!(cam.max_subscriptions, 20, "the role's value applies");
    assert_eq!(cam.credential, Credential::Certificate);
    assert_eq!(p.certificate_devices(), ["cam"]);
    assert!(p.needs_rsa_server_key());
    let names: Vec<_> = p.identities().map(|i| i.name.as_str()).collect();
    assert_eq!(names, ["plug", "cam"]);
}

#[test]
fn grant_sources_name_their_origin() {
    let p = compile(&format!(
        "version: 1\nusers:\n  bob:\n    password_hash: \"{HASH}\"\n    publish: [\"a/#\"]\n    role: observer\n"
    ));
    let bob = p.identity("bob").unwrap();
    let d = bob.acl.may_publish("bob", "c", "a/b");
    assert_eq!(
        d.rule.as_deref(),
        Some("users.bob.publish[0] (line 5): a/#")
    );
    let d = bob.acl.may_subscribe("bob", "c", "x/#");
    assert_eq!(
        d.rule.as_deref(),
        Some("role observer (built-in): subscribe #")
    );
}
