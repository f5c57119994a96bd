//! The snippets to paste for the known roles (Home Assistant, Zigbee2MQTT, Tasmota,
//! ESPHome, Shelly), each written against that client's own settings names and
//! cited to its source.

use super::*;

// Home Assistant's MQTT config flow (homeassistant/components/mqtt/config_flow.py and
// strings.json): "Advanced options" and with it "Broker certificate validation" and
// "Upload custom CA certificate file" appear only when the user profile has Advanced
// mode on (`if not flow.show_advanced_options: return False`). Without a CA it does not
// use TLS at all (client.py: `if certificate is not None: tls_set(...)`).
pub(super) fn home_assistant(s: &ClientSettings) -> Snippet {
    let mut t = String::new();
    let _ = writeln!(
        t,
        "First turn on Advanced mode in your user profile (click your name, bottom left):\n\
         without it Home Assistant never offers the CA upload, does not use TLS, and\n\
         only says it cannot connect."
    );
    let _ = writeln!(
        t,
        "Settings > Devices & services > Add integration > MQTT >\n\
         Manually enter the MQTT broker connection details:"
    );
    // What users type is the broker's address; a name works only where the LAN's DNS
    // (or mDNS) knows it. Either way it must be one the certificate covers.
    let broker = s
        .hosts
        .iter()
        .find(|h| h.parse::<IpAddr>().is_ok())
        .map_or_else(|| host(s), String::as_str);
    let _ = writeln!(t, "  Broker:     {broker}");
    let _ = writeln!(t, "              ({})", covered_note(s));
    let _ = writeln!(t, "  Port:       {}", s.tls_port);
    let _ = writeln!(t, "  Username:   {}", s.username);
    let _ = writeln!(t, "  Password:   {}", password_note(&s.name));
    let _ = writeln!(t, "  Advanced options: on, then Submit");
    let _ = writeln!(
        t,
        "  Broker certificate validation: Custom, then Next:\n\
         \x20   Upload custom CA certificate file: {}",
        ca_name(s)
    );
    let _ = writeln!(t, "  Ignore broker certificate validation: off");
    let _ = writeln!(t, "  MQTT protocol: 3.1.1");
    let _ = writeln!(t, "  MQTT transport: TCP");
    Snippet {
        client: "homeassistant",
        title: "Home Assistant (MQTT integration)",
        text: t,
    }
}

// Zigbee2MQTT's `mqtt:` settings (lib/util/settings.schema.json, lib/mqtt.ts): `server`,
// `user`, `password`, `ca`, `key`, `cert`, `reject_unauthorized`, `version`.
pub(super) fn zigbee2mqtt(s: &ClientSettings) -> Snippet {
    let mut t = String::new();
    let _ = writeln!(t, "# configuration.yaml ({})", covered_note(s));
    let _ = writeln!(t, "mqtt:");
    let _ = writeln!(t, "  server: mqtts://{}:{}", url_host(s), s.tls_port);
    let _ = writeln!(t, "  ca: {}", s.ca_file.display());
    match (&s.client_certificate, &s.client_key) {
        (Some(cert), Some(key)) => {
            let _ = writeln!(
                t,
                "  # Logs in with its client certificate (the certificate names the user; no password)."
            );
            let _ = writeln!(t, "  cert: {}", cert.display());
            let _ = writeln!(
                t,
                "  key: {}  # secret: keep it on this machine",
                key.display()
            );
        }
        _ => {
            let _ = writeln!(t, "  user: {}", s.username);
            let _ = writeln!(
                t,
                "  password: '!secret.yaml mqtt_password'  # {}",
                password_note(&s.name)
            );
        }
    }
    let _ = writeln!(t, "  reject_unauthorized: true  # check the certificate");
    let _ = writeln!(t, "  version: 5  # MQTT 5; 4 is MQTT 3.1.1");
    Snippet {
        client: "zigbee2mqtt",
        title: "Zigbee2MQTT",
        text: t,
    }
}

/// Tasmota's console commands, as one `Backlog` line: each setting restarts the device,
/// so separate commands would each reconnect with half the settings.
// Sources (arendst/Tasmota): TLS is used only with `SetOption103 1` (xdrv_02_9_mqtt.ino:
// `Mqtt.mqtt_tls = Settings->flag4.mqtt_tls`); `SetOption132 1` validates the server by
// `MqttFingerprint1` (the SHA-1 of the server's RSA public key, see
// `pki::rsa_fingerprint_sha1`) instead of a CA; the TLS client speaks TLS 1.2 with
// ECDHE-RSA-AES128-GCM-SHA256 only (WiFiClientSecureLightBearSSL.cpp), so moat serves
// it the RSA certificate.
pub fn tasmota_backlog(s: &ClientSettings, password: &str) -> String {
    let mut commands = vec![
        format!("MqttHost {}", host(s)),
        format!("MqttPort {}", s.plain_port.unwrap_or(s.tls_port)),
        format!("MqttUser {}", s.username),
        format!("MqttPassword {password}"),
        format!("Topic {}", s.name),
    ];
    if s.plain_port.is_some() {
        commands.push("SetOption103 0".into());
    } else {
        commands.push("SetOption103 1".into());
        commands.push("SetOption132 1".into());
        if let Some(fingerprint) = &s.tasmota_fingerprint {
            commands.push(format!("MqttFingerprint1 {fingerprint}"));
        }
    }
    format!("Backlog {}", commands.join("; "))
}

pub(super) fn tasmota(s: &ClientSettings) -> Snippet {
    let mut t = String::new();
    let _ = writeln!(
        t,
        "# Tasmota console (Tools > Console): paste this ONE line, with <password>\n\
         # replaced by {}:",
        password_note(&s.name)
    );
    let _ = writeln!(t, "{}", tasmota_backlog(s, "<password>"));
    let _ = writeln!(t, "# MqttHost: {}", covered_note(s));
    if s.plain_port.is_none() {
        if s.tasmota_fingerprint.is_none() {
            let _ = writeln!(
                t,
                "# MqttFingerprint1 is missing: run `moat provision` first (no RSA server key yet)."
            );
        }
        let _ = writeln!(
            t,
            "# TLS is in the tasmota32 (ESP32) builds; an ESP8266 needs a custom build\n\
             # with USE_MQTT_TLS."
        );
    }
    Snippet {
        client: "tasmota",
        title: "Tasmota",
        text: t,
    }
}

// ESPHome's `mqtt:` schema (esphome/components/mqtt/__init__.py, CONFIG_SCHEMA):
// `certificate_authority` is `cv.only_with_esp_idf`; `client_certificate` and
// `client_certificate_key` are `cv.only_on_esp32`; `discover_ip` (default true) makes
// the node use `esphome/discover/...`, which the esphome role allows.
pub(super) fn esphome(s: &ClientSettings, state: &Path) -> Snippet {
    let mut t = String::new();
    let _ = writeln!(t, "mqtt:");
    let _ = writeln!(t, "  broker: {}  # {}", host(s), covered_note(s));
    let port = s.plain_port.unwrap_or(s.tls_port);
    let _ = writeln!(t, "  port: {port}");
    let _ = writeln!(t, "  topic_prefix: {}", s.name);
    let _ = writeln!(
        t,
        "  discovery: true  # Home Assistant discovery under homeassistant/"
    );
    if s.credential != "certificate" {
        let _ = writeln!(t, "  username: {}", s.username);
        let _ = writeln!(
            t,
            "  password: !secret mqtt_password  # {}",
            password_note(&s.name)
        );
    }
    if s.plain_port.is_none() {
        let _ = writeln!(
            t,
            "  # TLS: ESP32 with the esp-idf framework only (certificate_authority is esp-idf only)."
        );
        let ca = std::fs::read_to_string(state.join(pki::CA_CERT)).ok();
        match ca {
            Some(pem) => {
                let _ = writeln!(t, "  certificate_authority: |");
                for line in pem.lines() {
                    let _ = writeln!(t, "    {line}");
                }
            }
            None => {
                let _ = writeln!(
                    t,
                    "  certificate_authority: !secret moat_ca  # the content of {}",
                    s.ca_file.display()
                );
            }
        }
        if let (Some(cert), Some(key)) = (&s.client_certificate, &s.client_key) {
            let _ = writeln!(
                t,
                "  client_certificate: !secret moat_client_cert  # the content of {}",
                cert.display()
            );
            let _ = writeln!(
                t,
                "  client_certificate_key: !secret moat_client_key  # the content of {} (secret)",
                key.display()
            );
        }
    }
    Snippet {
        client: "esphome",
        title: "ESPHome",
        text: t,
    }
}

pub(super) fn shelly(s: &ClientSettings) -> Snippet {
    let mut t = String::new();
    let _ = writeln!(t, "Gen2+ web UI: Settings > MQTT");
    let port = s.plain_port.unwrap_or(s.tls_port);
    let _ = writeln!(t, "  Enable:       on");
    let _ = writeln!(t, "  Server:       {}:{port}", url_host(s));
    let _ = writeln!(t, "  Client ID / MQTT prefix: {}", s.name);
    let _ = writeln!(t, "  Username:     {}", s.username);
    let _ = writeln!(t, "  Password:     {}", password_note(&s.name));
    if s.plain_port.is_none() {
        let _ = writeln!(
            t,
            "  SSL connectivity: User TLS, after uploading {} as the user CA \
             (Settings > TLS configuration, or the Shelly.PutUserCA RPC)",
            ca_name(s)
        );
        let _ = writeln!(
            t,
            "Gen1 devices cannot do TLS: give them `plaintext: true` and a `listen.plain` listener."
        );
    }
    Snippet {
        client: "shelly",
        title: "Shelly",
        text: t,
    }
}
