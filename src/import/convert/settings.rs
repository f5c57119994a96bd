//! Mosquitto settings that are not listeners or ACLs: the limits that map onto
//! `broker.limits`, and every other directive reported with why it does not carry
//! over.

use super::listeners::Picked;
use super::*;

/// `broker.limits` entries (name, YAML value) from mosquitto's limits.
pub(super) fn limits(
    conf: &Conf,
    listeners: &Picked,
    report: &mut Report,
) -> Vec<(&'static str, u64)> {
    let mut out: Vec<(&'static str, u64)> = Vec::new();
    let mut set = |key: &'static str, value: u64| {
        out.retain(|(k, _)| *k != key);
        out.push((key, value));
    };
    let declared: Vec<_> = [listeners.tls, listeners.plain]
        .into_iter()
        .flatten()
        .filter_map(|l| l.max_connections.as_ref())
        .collect();
    for m in declared.iter().filter(|m| m.value <= 0) {
        report.dropped(
            Some(&m.origin),
            format!("max_connections {}", m.value),
            "unlimited in mosquitto; moat keeps its bounded default (broker.limits.max_connections)",
        );
    }
    let connections = declared
        .into_iter()
        .filter(|m| m.value > 0)
        .max_by_key(|m| m.value);
    if let Some(m) = connections {
        set("max_connections", m.value.unsigned_abs());
        report.changed(
            Some(&m.origin),
            format!("max_connections {}", m.value),
            "moat counts connections across its listeners: this is broker.limits.max_connections",
        );
    }
    for limit in &conf.limits {
        let (key, value) = (&limit.value.0, limit.value.1);
        let item = format!("{key} {value}");
        let at = Some(&limit.origin);
        let (moat_key, range): (&'static str, (i64, i64)) = match key.as_str() {
            "max_inflight_messages" => ("max_inflight", (1, 65_535)),
            "max_queued_messages" => ("max_queued_messages", (1, i64::MAX)),
            "max_queued_bytes" => ("max_queued_bytes", (1024, i64::from(u32::MAX))),
            "max_packet_size" => ("max_packet_size", (128, MQTT_MAX_PACKET_SIZE as i64)),
            _ => ("max_keepalive", (1, 65_535)),
        };
        if value <= 0 {
            report.dropped(at, item, format!("0 means unlimited in mosquitto; moat keeps its bounded default for {moat_key} (docs/manifest.md)"));
        } else if value < range.0 || value > range.1 {
            report.dropped(
                at,
                item,
                format!(
                    "moat's {moat_key} must be between {} and {}; its default stays",
                    range.0, range.1
                ),
            );
        } else {
            set(moat_key, value.unsigned_abs());
            if moat_key == "max_packet_size" && value < 65_536 {
                // The pre-authentication cap (64 KiB by default) may not exceed it.
                set("max_packet_size_before_auth", value.unsigned_abs());
            }
        }
    }
    out
}

/// Reports every directive moat has no place for, with the reason.
pub(super) fn other_directives(conf: &Conf, report: &mut Report) {
    for line in &conf.other {
        let (key, rest) = split_key(&line.text);
        let reason = if key == "auth_opt_backends" && rest.contains("http") {
            "the add-on's HTTP backend logs in Home Assistant users through the Supervisor; moat cannot ask it: give those clients users (or add-on logins) and import again".to_string()
        } else {
            reason_for(key)
        };
        report.dropped(Some(&line.origin), line.text.clone(), reason);
    }
}

const PERSISTENCE_KEYS: &[&str] = &[
    "persistence",
    "persistence_file",
    "persistence_location",
    "autosave_interval",
    "autosave_on_changes",
    "persistent_client_expiration",
];
const LOG_KEYS: &[&str] = &[
    "log_dest",
    "log_type",
    "log_timestamp",
    "log_timestamp_format",
    "log_facility",
    "connection_messages",
    "websockets_log_level",
];
const BRIDGE_KEYS: &[&str] = &[
    "connection",
    "address",
    "addresses",
    "topic",
    "cleansession",
    "clientid",
    "keepalive_interval",
    "idle_timeout",
    "local_clientid",
    "local_password",
    "local_username",
    "notifications",
    "notifications_local_only",
    "notification_topic",
    "remote_clientid",
    "remote_password",
    "remote_username",
    "restart_timeout",
    "round_robin",
    "start_type",
    "threshold",
    "try_private",
];
const OTHER_MOSQUITTO_KEYS: &[&str] = &[
    "allow_duplicate_messages",
    "allow_zero_length_clientid",
    "auto_id_prefix",
    "check_retain_source",
    "max_inflight_bytes",
    "max_qos",
    "max_topic_alias",
    "memory_limit",
    "message_size_limit",
    "queue_qos0_messages",
    "retain_available",
    "set_tcp_nodelay",
    "sys_interval",
    "upgrade_outgoing_qos",
];

pub(super) fn reason_for(key: &str) -> String {
    let text = if PERSISTENCE_KEYS.contains(&key) {
        "moat always keeps retained messages and sessions in its own database (broker.persistence); mosquitto's are not migrated"
    } else if LOG_KEYS.contains(&key) {
        "moat logs to stderr (the journal under systemd); `RUST_LOG` sets the level"
    } else if matches!(key, "user" | "pid_file") {
        "not needed: the service manager runs moat as its own user (`moat serve --pid-file` writes a PID file)"
    } else if key.starts_with("bridge_") || BRIDGE_KEYS.contains(&key) {
        "bridges are not imported"
    } else if key.starts_with("auth_opt_")
        || key.starts_with("plugin_opt_")
        || matches!(
            key,
            "auth_plugin" | "plugin" | "auth_plugin_deny_special_chars"
        )
    {
        "moat has no plugins; users and rights come from the manifest"
    } else if matches!(key, "psk_file" | "psk_hint") {
        "moat has no TLS-PSK; give these clients users or certificates"
    } else if key == "clientid_prefixes" {
        "moat cannot require client id prefixes; rights follow the user name (and %c in grants)"
    } else if key == "mount_point" {
        "moat has no mount points: topics are used as the client sends them, so grants that relied on the prefix must be rewritten"
    } else if key == "message_size_limit" {
        "moat limits whole packets: broker.limits.max_packet_size"
    } else if OTHER_MOSQUITTO_KEYS.contains(&key) {
        "moat has no such setting; its behaviour here is fixed or bounded by default (docs/manifest.md)"
    } else if key.starts_with("tls_")
        || matches!(
            key,
            "capath" | "ciphers" | "ciphers_tls1.3" | "crlfile" | "dhparamfile"
        )
    {
        "moat's TLS settings are fixed (TLS 1.2 and 1.3, rustls' safe defaults)"
    } else if matches!(
        key,
        "bind_interface"
            | "socket_domain"
            | "http_dir"
            | "websockets_headers_size"
            | "use_username_as_clientid"
    ) {
        "moat has no such listener setting"
    } else {
        "unknown directive: not in mosquitto.conf(5), so mosquitto would not start with it either"
    };
    text.to_string()
}
