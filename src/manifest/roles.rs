//! The built-in role presets: least-privilege grants for the ecosystems a home broker
//! serves. `docs/manifest.md` lists the same grants with the sources they come from;
//! keep the two in step. Presets are data only; `crate::policy` compiles them.

/// A built-in role.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Preset {
    pub name: &'static str,
    /// One line on what it is for.
    pub summary: &'static str,
    pub publish: &'static [&'static str],
    pub subscribe: &'static [&'static str],
    /// Whether identities with this role may publish retained messages.
    pub retain: bool,
    pub max_queued_messages: Option<usize>,
    pub max_queued_bytes: Option<usize>,
    pub max_packet_size: Option<u32>,
    /// The device talks TLS only with an RSA server key (ESP8266 Tasmota).
    pub needs_rsa_server_key: bool,
}

const MIB: usize = 1024 * 1024;

/// Every built-in role, in documentation order.
pub const PRESETS: &[Preset] = &[
    Preset {
        name: "homeassistant",
        summary: "Home Assistant's MQTT integration: reads every non-$ topic (discovery may point anywhere), commands the known ecosystems",
        publish: &[
            "homeassistant/#",
            "zigbee2mqtt/bridge/request/#",
            "zigbee2mqtt/+/set",
            "zigbee2mqtt/+/set/#",
            "zigbee2mqtt/+/get",
            "zigbee2mqtt/+/get/#",
            "zigbee2mqtt/+/+/set",
            "zigbee2mqtt/+/+/set/#",
            "zigbee2mqtt/+/+/get",
            "zigbee2mqtt/+/+/get/#",
            "cmnd/#",
            "tasmota/discovery/#",
            "+/+/+/command",
            "+/+/+/+/command",
            "shellies/command",
            "+/rpc",
        ],
        subscribe: &["#"],
        retain: true,
        max_queued_messages: Some(10_000),
        max_queued_bytes: Some(16 * MIB),
        max_packet_size: None,
        needs_rsa_server_key: false,
    },
    Preset {
        name: "zigbee2mqtt",
        summary: "Zigbee2MQTT with its default base topic and Home Assistant discovery",
        publish: &["zigbee2mqtt/#", "homeassistant/#"],
        subscribe: &["zigbee2mqtt/#", "homeassistant/#"],
        retain: true,
        max_queued_messages: None,
        max_queued_bytes: Some(4 * MIB),
        max_packet_size: Some(MIB as u32),
        needs_rsa_server_key: false,
    },
    Preset {
        name: "tasmota",
        summary: "a Tasmota device whose MQTT Topic is the identity name",
        publish: &[
            "tele/%u/#",
            "stat/%u/#",
            "tasmota/discovery/+/config",
            "tasmota/discovery/+/sensors",
        ],
        subscribe: &["cmnd/%u/#", "cmnd/tasmotas/#"],
        retain: true,
        max_queued_messages: None,
        max_queued_bytes: None,
        max_packet_size: None,
        needs_rsa_server_key: true,
    },
    Preset {
        name: "esphome",
        summary: "an ESPHome node whose topic_prefix is its name (the default)",
        publish: &["%u/#", "homeassistant/+/%u/#"],
        subscribe: &["%u/#", "homeassistant/status"],
        retain: true,
        max_queued_messages: None,
        max_queued_bytes: None,
        max_packet_size: None,
        needs_rsa_server_key: false,
    },
    Preset {
        name: "shelly",
        summary: "a Shelly device (Gen1 `shellies/<id>/...`, Gen2+ `<id>/...`) whose id is the identity name",
        publish: &["shellies/%u/#", "shellies/announce", "%u/#"],
        subscribe: &["shellies/%u/#", "shellies/command", "%u/rpc", "%u/command"],
        retain: true,
        max_queued_messages: None,
        max_queued_bytes: None,
        max_packet_size: None,
        needs_rsa_server_key: false,
    },
    Preset {
        name: "observer",
        summary: "read-only: may subscribe to every non-$ topic, may publish nothing",
        publish: &[],
        subscribe: &["#"],
        retain: false,
        max_queued_messages: None,
        max_queued_bytes: None,
        max_packet_size: None,
        needs_rsa_server_key: false,
    },
];

/// The built-in role called `name`.
pub fn preset(name: &str) -> Option<&'static Preset> {
    PRESETS.iter().find(|p| p.name == name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::topic::validate_topic_filter;

    #[test]
    fn every_preset_grant_is_a_valid_filter() {
        for p in PRESETS {
            for f in p.publish.iter().chain(p.subscribe) {
                assert!(validate_topic_filter(f).is_ok(), "{}: {f}", p.name);
            }
        }
    }

    #[test]
    fn observer_cannot_publish_and_only_tasmota_needs_rsa() {
        assert!(preset("observer").is_some_and(|p| p.publish.is_empty()));
        let rsa: Vec<_> = PRESETS
            .iter()
            .filter(|p| p.needs_rsa_server_key)
            .map(|p| p.name)
            .collect();
        assert_eq!(rsa, ["tasmota"]);
    }
}
