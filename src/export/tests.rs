use super::*;
use crate::manifest::{LoadOptions, parse_str};

const HASH: &str =
    "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHRzYWx0$7V0r5nGtU2Ldzj0y+3rqkLNl7GQBrQ8Cqfvx7Ue2jzg";

fn policy(text: &str) -> Policy {
    let loaded = parse_str(text, "test", LoadOptions::default()).unwrap();
    Policy::compile(&loaded.manifest).unwrap()
}

#[test]
fn hosts_leave_out_loopback_unless_nothing_else() {
    let with = policy(&format!(
        "version: 1\nbroker:\n  hostnames: [moat.home.arpa]\nusers:\n  ha:\n    role: homeassistant\n    password_hash: \"{HASH}\"\n"
    ));
    let mut expected = vec!["moat.home.arpa".to_string()];
    // Only this machine's own mDNS name, never `moat.local` for `moat.home.arpa`.
    expected.extend(crate::machine::host_name().map(|n| format!("{n}.local")));
    // And the LAN addresses this machine has now (the certificate covers them).
    let machine = crate::machine::Machine::detect();
    expected.extend(machine.addresses.iter().map(ToString::to_string));
    assert_eq!(broker_hosts(&with).unwrap(), expected);
    let without = policy(&format!(
        "version: 1\nusers:\n  ha:\n    role: homeassistant\n    password_hash: \"{HASH}\"\n"
    ));
    // Without names, this machine's own `.local` name, or else localhost.
    let first = crate::machine::host_name().map_or("localhost".into(), |n| format!("{n}.local"));
    assert_eq!(broker_hosts(&without).unwrap()[0], first);
}

#[test]
fn fills_in_the_name_and_never_a_password() {
    let p = policy(&format!(
        "version: 1\nbroker:\n  hostnames: [moat.home.arpa]\n  listen:\n    plain: {{ port: 1883 }}\ndevices:\n  plug-1:\n    role: tasmota\n    password_hash: \"{HASH}\"\n    plaintext: true\n"
    ));
    let state = tempfile::tempdir().unwrap();
    let s = client_settings(&p, state.path(), "plug-1", None).unwrap();
    assert_eq!(s.plain_port, Some(1883));
    assert!(
        s.publish.contains(&"tele/plug-1/#".to_string()),
        "{:?}",
        s.publish
    );
    let text = render(&s);
    assert!(text.contains("MqttPort 1883"), "{text}");
    assert!(text.contains("Topic plug-1"), "{text}");
    assert!(!text.contains("argon2"), "{text}");
    assert!(matches!(
        client_settings(&p, state.path(), "nobody", None),
        Err(ExportError::UnknownIdentity(_))
    ));
}

// What each tool accepts, from its own source, so a snippet key that the tool would
// reject (or silently ignore) fails here.
// ESPHome: esphome/components/mqtt/__init__.py, CONFIG_SCHEMA.
const ESPHOME_MQTT_KEYS: &[&str] = &[
    "id",
    "broker",
    "enable_on_boot",
    "port",
    "transport",
    "username",
    "password",
    "clean_session",
    "client_id",
    "idf_send_async",
    "certificate_authority",
    "client_certificate",
    "client_certificate_key",
    "skip_cert_cn_check",
    "discovery",
    "discovery_retain",
    "discover_ip",
    "discovery_prefix",
    "discovery_unique_id_generator",
    "discovery_object_id_generator",
    "use_abbreviations",
    "birth_message",
    "will_message",
    "shutdown_message",
    "topic_prefix",
    "log_topic",
    "ssl_fingerprints",
    "keepalive",
    "reboot_timeout",
    "on_connect",
    "on_disconnect",
    "on_message",
    "on_json_message",
    "publish_nan_as_none",
    "wait_for_connection",
];
// Zigbee2MQTT: the `mqtt` options read by lib/mqtt.ts (server, ca, key, cert, user,
// password, client_id, reject_unauthorized, version, keepalive) and declared in
// lib/util/settings.schema.json (plus base_topic, include_device_information,
// force_disable_retain, maximum_packet_size).
const Z2M_MQTT_KEYS: &[&str] = &[
    "base_topic",
    "server",
    "user",
    "password",
    "ca",
    "key",
    "cert",
    "client_id",
    "reject_unauthorized",
    "include_device_information",
    "keepalive",
    "version",
    "force_disable_retain",
    "maximum_packet_size",
];
// Tasmota console commands: kMqttCommands in tasmota/tasmota_xdrv_driver/
// xdrv_02_9_mqtt.ino (MqttHost, MqttPort, MqttUser, MqttPassword, MqttFingerprint<x>,
// Topic) and the SetOption flags in tasmota_types.h (103: mqtt_tls, 132:
// tls_use_fingerprint).
const TASMOTA_COMMANDS: &[&str] = &[
    "MqttHost",
    "MqttPort",
    "MqttUser",
    "MqttPassword",
    "Topic",
    "SetOption103",
    "SetOption132",
    "MqttFingerprint1",
];
// Home Assistant: the broker step's labels in
// homeassistant/components/mqtt/strings.json.
const HA_LABELS: &[&str] = &[
    "Broker:",
    "Port:",
    "Username:",
    "Password:",
    "Advanced options:",
    "Broker certificate validation:",
    "Upload custom CA certificate file:",
    "Ignore broker certificate validation:",
    "MQTT protocol:",
    "MQTT transport:",
];

/// The top-level keys under `section` of a YAML snippet, parsed for real.
fn yaml_keys(text: &str, section: &str) -> Vec<String> {
    use std::collections::BTreeMap;
    let doc: BTreeMap<String, BTreeMap<String, serde::de::IgnoredAny>> =
        serde_saphyr::from_str(text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    doc.get(section)
        .unwrap_or_else(|| panic!("no {section}:\n{text}"))
        .keys()
        .cloned()
        .collect()
}

fn snippet<'a>(s: &'a ClientSettings, client: &str) -> &'a str {
    &s.snippets
        .iter()
        .find(|x| x.client == client)
        .unwrap_or_else(|| panic!("no {client} snippet"))
        .text
}

fn provisioned(text: &str) -> (Policy, tempfile::TempDir, PathBuf) {
    let p = policy(text);
    let root = tempfile::tempdir().unwrap();
    let state = root.path().join("state");
    provision::provision(&state, &p, provision::PasswordFiles::Leave).unwrap();
    (p, root, state)
}

#[test]
fn snippets_parse_back_with_only_keys_each_tool_knows() {
    let (p, _root, state) = provisioned(&format!(
        "version: 1\nbroker:\n  hostnames: [moat.home.arpa]\n  addresses: [\"192.168.1.10\"]\n\
         users:\n  ha:\n    role: homeassistant\n    password_hash: \"{HASH}\"\n\
         \x20 z2m:\n    role: zigbee2mqtt\n    password_hash: \"{HASH}\"\n\
         devices:\n  plug-1:\n    role: tasmota\n    password_hash: \"{HASH}\"\n\
         \x20 z2m-cert:\n    role: zigbee2mqtt\n    certificate: true\n\
         \x20 node-1:\n    role: esphome\n    password_hash: \"{HASH}\"\n"
    ));
    let settings = |name| client_settings(&p, &state, name, None).unwrap();

    let esp = settings("node-1");
    let keys = yaml_keys(snippet(&esp, "esphome"), "mqtt");
    for key in &keys {
        assert!(ESPHOME_MQTT_KEYS.contains(&key.as_str()), "esphome: {key}");
    }
    for key in [
        "broker",
        "port",
        "username",
        "password",
        "topic_prefix",
        "certificate_authority",
    ] {
        assert!(
            keys.iter().any(|k| k == key),
            "esphome lacks {key}: {keys:?}"
        );
    }
    assert!(snippet(&esp, "esphome").contains("esp-idf"));

    for (name, credential_keys, absent) in [
        ("z2m", &["user", "password"][..], &["key", "cert"][..]),
        ("z2m-cert", &["key", "cert"][..], &["user", "password"][..]),
    ] {
        let s = settings(name);
        let text = snippet(&s, "zigbee2mqtt");
        let keys = yaml_keys(text, "mqtt");
        for key in &keys {
            assert!(Z2M_MQTT_KEYS.contains(&key.as_str()), "zigbee2mqtt: {key}");
        }
        for key in credential_keys.iter().chain(&["server", "ca", "version"]) {
            assert!(
                keys.iter().any(|k| k == key),
                "{name} lacks {key}: {keys:?}"
            );
        }
        for key in absent {
            assert!(!keys.iter().any(|k| k == key), "{name} has {key}: {keys:?}");
        }
        // The comments match the credential kind too.
        assert_eq!(text.contains("moat passwd"), name == "z2m", "{text}");
        assert_eq!(
            text.contains("client certificate"),
            name == "z2m-cert",
            "{text}"
        );
    }

    let plug = settings("plug-1");
    let text = snippet(&plug, "tasmota");
    let lines: Vec<&str> = text.lines().filter(|l| !l.starts_with('#')).collect();
    assert_eq!(lines.len(), 1, "one line to paste: {text}");
    let backlog = lines[0].strip_prefix("Backlog ").expect("a Backlog line");
    let commands: Vec<(&str, &str)> = backlog
        .split(';')
        .map(|c| c.trim().split_once(' ').unwrap_or((c.trim(), "")))
        .collect();
    for (command, _) in &commands {
        assert!(TASMOTA_COMMANDS.contains(command), "tasmota: {command}");
    }
    let value = |name: &str| {
        commands
            .iter()
            .find(|(c, _)| *c == name)
            .map(|(_, v)| *v)
            .unwrap_or_else(|| panic!("no {name} in {backlog}"))
    };
    assert_eq!(value("SetOption103"), "1");
    assert_eq!(value("SetOption132"), "1");
    assert_eq!(value("Topic"), "plug-1");
    assert_eq!(value("MqttPort"), p.listen_tls().port().to_string());
    assert!(plug.hosts.contains(&value("MqttHost").to_string()));
    let fingerprint = pki::rsa_fingerprint_sha1(&state).unwrap().unwrap();
    assert_eq!(value("MqttFingerprint1"), fingerprint);
    assert!(text.contains("tasmota32"), "{text}");

    let ha = settings("ha");
    let text = snippet(&ha, "homeassistant");
    for label in HA_LABELS {
        assert!(text.contains(label), "homeassistant lacks {label}: {text}");
    }
    assert!(text.contains("Advanced mode"), "{text}");
    let broker = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("Broker:"))
        .unwrap()
        .trim();
    // The address the user types is one the certificate covers.
    let covered: Vec<String> = pki::subject_names(&provision::plan(&p))
        .unwrap()
        .iter()
        .map(|n| match n {
            SubjectName::Dns(d) => d.clone(),
            SubjectName::Ip(ip) => ip.to_string(),
        })
        .collect();
    assert!(
        covered.iter().any(|c| c == broker),
        "{broker} not in {covered:?}"
    );
}
