//! Client settings for one identity: where to connect (the names in the server
//! certificate, the TLS port, the plaintext port only for `plaintext: true`
//! identities), which CA file to trust, the username and credential kind, the topics
//! the identity may use, and for the known roles a snippet to paste (Home Assistant,
//! Zigbee2MQTT, Tasmota, ESPHome, Shelly). It reads the compiled policy and public
//! files of the state directory; it never prints a password or a private key (a
//! certificate device is told where its key file is, never its content).

use std::fmt::Write as _;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::pki::{self, PkiError, SubjectName};
use crate::policy::{Credential, Identity, Policy};
use crate::provision;

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("no user or device named {0:?} in the manifest")]
    UnknownIdentity(String),
    #[error(transparent)]
    Pki(#[from] PkiError),
}

/// What a client needs to connect as one identity.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ClientSettings {
    pub name: String,
    /// `user` or `device`.
    pub kind: &'static str,
    pub roles: Vec<String>,
    /// Names and addresses the server certificate covers, most useful first.
    pub hosts: Vec<String>,
    pub tls_port: u16,
    /// Only for identities allowed on the plaintext listener.
    pub plain_port: Option<u16>,
    /// The CA certificate to trust.
    pub ca_file: PathBuf,
    pub username: String,
    /// `password_hash`, `password_file` or `certificate`.
    pub credential: &'static str,
    /// For certificate devices: the bundle (the key file is secret; copy it, never share it).
    pub client_certificate: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
    /// Topic filters this identity may publish to / subscribe to (`%u` filled in).
    pub publish: Vec<String>,
    pub subscribe: Vec<String>,
    pub may_retain: bool,
    /// Tasmota's SHA-1 fingerprint of the RSA server key, when there is one.
    pub tasmota_fingerprint: Option<String>,
    /// Ready-to-paste settings for the known client software of this identity's roles.
    pub snippets: Vec<Snippet>,
}

/// Settings in one client's own format.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Snippet {
    /// `homeassistant`, `zigbee2mqtt`, `tasmota`, `esphome` or `shelly`.
    pub client: &'static str,
    pub title: &'static str,
    pub text: String,
}

/// The names a client can reach the broker by and verify: the server certificate's
/// names without the loopback ones (kept only when nothing else is there).
pub fn broker_hosts(policy: &Policy) -> Result<Vec<String>, PkiError> {
    let names = pki::subject_names(&provision::plan(policy))?;
    let shown = |n: &SubjectName| match n {
        SubjectName::Dns(d) => d.clone(),
        SubjectName::Ip(ip) => ip.to_string(),
    };
    let is_loopback = |n: &SubjectName| match n {
        SubjectName::Dns(d) => d == "localhost",
        SubjectName::Ip(ip) => ip.is_loopback(),
    };
    let lan: Vec<String> = names
        .iter()
        .filter(|n| !is_loopback(n))
        .map(shown)
        .collect();
    Ok(if lan.is_empty() {
        names.iter().map(shown).collect()
    } else {
        lan
    })
}

/// Settings for `name`. `ca_file` is where the client finds the CA certificate
/// (default: `<state>/ca.pem`).
pub fn client_settings(
    policy: &Policy,
    state: &Path,
    name: &str,
    ca_file: Option<&Path>,
) -> Result<ClientSettings, ExportError> {
    let identity = policy
        .identity(name)
        .ok_or_else(|| ExportError::UnknownIdentity(name.to_string()))?;
    let hosts = broker_hosts(policy)?;
    let ca_file = ca_file.map_or_else(|| state.join(pki::CA_CERT), Path::to_path_buf);
    let certificate = identity.credential == Credential::Certificate;
    let bundle = pki::device_bundle_dir(state, name);
    let plain_port = policy
        .listen_plain()
        .filter(|_| identity.plaintext)
        .map(|a| a.port());
    let fill = |pattern: &str| {
        pattern
            .split('/')
            .map(|level| if level == "%u" { name } else { level })
            .collect::<Vec<_>>()
            .join("/")
    };
    let mut settings = ClientSettings {
        name: name.to_string(),
        kind: identity.kind.as_str(),
        roles: identity.roles.clone(),
        hosts,
        tls_port: policy.listen_tls().port(),
        plain_port,
        ca_file,
        username: name.to_string(),
        credential: identity.credential.kind(),
        client_certificate: certificate.then(|| bundle.join("cert.pem")),
        client_key: certificate.then(|| bundle.join("key.pem")),
        publish: identity
            .acl
            .publish_grants()
            .iter()
            .map(|g| fill(&g.pattern))
            .collect(),
        subscribe: identity
            .acl
            .subscribe_grants()
            .iter()
            .map(|g| fill(&g.pattern))
            .collect(),
        may_retain: identity.may_retain,
        tasmota_fingerprint: pki::rsa_fingerprint_sha1(state)?,
        snippets: Vec::new(),
    };
    settings.snippets = snippets(&settings, identity, state);
    Ok(settings)
}

fn password_note(name: &str) -> String {
    format!("the password you set with `moat passwd {name}` (or put in moat.yaml on the card)")
}

fn snippets(s: &ClientSettings, identity: &Identity, state: &Path) -> Vec<Snippet> {
    let mut out = Vec::new();
    for role in &identity.roles {
        let snippet = match role.as_str() {
            "homeassistant" | "homeassistant-strict" => home_assistant(s),
            "zigbee2mqtt" => zigbee2mqtt(s),
            "tasmota" => tasmota(s),
            "esphome" => esphome(s, state),
            "shelly" => shelly(s),
            _ => continue,
        };
        if !out.iter().any(|o: &Snippet| o.client == snippet.client) {
            out.push(snippet);
        }
    }
    out
}

fn host(s: &ClientSettings) -> &str {
    s.hosts.first().map_or("localhost", String::as_str)
}

/// A host for a URL: IPv6 literals in brackets.
fn url_host(s: &ClientSettings) -> String {
    match host(s).parse::<IpAddr>() {
        Ok(IpAddr::V6(v6)) => format!("[{v6}]"),
        _ => host(s).to_string(),
    }
}

fn ca_name(s: &ClientSettings) -> String {
    s.ca_file.file_name().map_or_else(
        || s.ca_file.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    )
}

/// The other names and addresses, for a note under the one a snippet uses.
fn covered_note(s: &ClientSettings) -> String {
    format!(
        "the certificate covers only {}: use one of them, nothing else",
        s.hosts.join(", ")
    )
}

// Home Assistant's MQTT config flow (homeassistant/components/mqtt/config_flow.py and
// strings.json): "Advanced options" and with it "Broker certificate validation" and
// "Upload custom CA certificate file" appear only when the user profile has Advanced
// mode on (`if not flow.show_advanced_options: return False`). Without a CA it does not
// use TLS at all (client.py: `if certificate is not None: tls_set(...)`).
fn home_assistant(s: &ClientSettings) -> Snippet {
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
fn zigbee2mqtt(s: &ClientSettings) -> Snippet {
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

fn tasmota(s: &ClientSettings) -> Snippet {
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
fn esphome(s: &ClientSettings, state: &Path) -> Snippet {
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

fn shelly(s: &ClientSettings) -> Snippet {
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

/// The human-readable form `moat export NAME` prints.
pub fn render(s: &ClientSettings) -> String {
    let mut t = String::new();
    let roles = if s.roles.is_empty() {
        String::new()
    } else {
        format!(" (roles: {})", s.roles.join(", "))
    };
    let _ = writeln!(t, "{} {}{roles}", s.kind, s.name);
    let _ = writeln!(t, "  host:      {}", host(s));
    if s.hosts.len() > 1 {
        let _ = writeln!(t, "  also:      {}", s.hosts[1..].join(", "));
    }
    let _ = writeln!(t, "  port:      {} (TLS)", s.tls_port);
    if let Some(port) = s.plain_port {
        let _ = writeln!(t, "  plain:     {port} (no TLS; this identity only)");
    }
    let _ = writeln!(t, "  CA file:   {}", s.ca_file.display());
    let _ = writeln!(t, "  username:  {}", s.username);
    match (&s.client_certificate, &s.client_key) {
        (Some(cert), Some(key)) => {
            let _ = writeln!(t, "  client certificate: {}", cert.display());
            let _ = writeln!(t, "  client key:         {} (secret)", key.display());
        }
        _ if s.credential == "password_file" => {
            let _ = writeln!(t, "  password:  the content of its password_file");
        }
        _ => {
            let _ = writeln!(t, "  password:  {}", password_note(&s.name));
        }
    }
    let list = |v: &[String]| {
        if v.is_empty() {
            "(nothing)".to_string()
        } else {
            v.join(" ")
        }
    };
    let _ = writeln!(t, "  publish:   {}", list(&s.publish));
    let _ = writeln!(t, "  subscribe: {}", list(&s.subscribe));
    let _ = writeln!(
        t,
        "  retain:    {}",
        if s.may_retain { "allowed" } else { "no" }
    );
    if let Some(fingerprint) = &s.tasmota_fingerprint
        && s.roles.iter().any(|r| r == "tasmota")
    {
        let _ = writeln!(t, "  RSA key fingerprint (Tasmota): {fingerprint}");
    }
    for snippet in &s.snippets {
        let _ = writeln!(t, "\n{}\n{}", snippet.title, snippet.text.trim_end());
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::{LoadOptions, parse_str};

    const HASH: &str = "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHRzYWx0$7V0r5nGtU2Ldzj0y+3rqkLNl7GQBrQ8Cqfvx7Ue2jzg";

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
        let machine = crate::machine::Machine::detect(std::path::Path::new("/proc"));
        expected.extend(machine.addresses.iter().map(ToString::to_string));
        assert_eq!(broker_hosts(&with).unwrap(), expected);
        let without = policy(&format!(
            "version: 1\nusers:\n  ha:\n    role: homeassistant\n    password_hash: \"{HASH}\"\n"
        ));
        // Without names, this machine's own `.local` name, or else localhost.
        let first =
            crate::machine::host_name().map_or("localhost".into(), |n| format!("{n}.local"));
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
}
