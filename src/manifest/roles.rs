//! The built-in role presets: grants for the ecosystems a home broker serves, each
//! what the tool uses with its default settings. `docs/manifest.md` lists the same
//! grants with the sources they come from; keep the two in step (the table test below
//! checks each role against the topics its tool uses). Presets are data only;
//! `crate::policy` compiles them.

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
    /// Subscriptions per client; `None` keeps the broker default.
    pub max_subscriptions: Option<usize>,
    /// The device talks TLS only with an RSA server key (ESP8266 Tasmota).
    pub needs_rsa_server_key: bool,
}

const MIB: usize = 1024 * 1024;

/// Subscriptions for the roles that read the whole home. Home Assistant subscribes
/// once per entity topic (`client.py`: one SUBSCRIBE per unique topic) and ignores
/// SUBACK codes, so a cap below its entity count silently freezes entities. Each
/// subscription costs about 200 bytes (the filter kept twice plus its tree node), so
/// 10 000 of them are about 2 MB: affordable for the one or two hubs of a home.
pub const HUB_MAX_SUBSCRIPTIONS: usize = 10_000;

/// Home Assistant's queue: the burst of retained discovery and state messages at
/// start-up (the HA add-on raised mosquitto's queue to 8192 for the same reason,
/// home-assistant/addons PR #3615).
const HA_QUEUED_MESSAGES: usize = 10_000;

/// Home Assistant, the hub; `homeassistant-strict` differs only in what it publishes.
const HOMEASSISTANT: Preset = Preset {
    name: "homeassistant",
    summary: "Home Assistant, the hub: publishes and subscribes every non-$ topic (automations may command anything), with retain",
    publish: &["#"],
    subscribe: &["#"],
    retain: true,
    max_queued_messages: Some(HA_QUEUED_MESSAGES),
    max_queued_bytes: Some(16 * MIB),
    max_packet_size: None,
    max_subscriptions: Some(HUB_MAX_SUBSCRIPTIONS),
    needs_rsa_server_key: false,
};

/// Every built-in role, in documentation order.
pub const PRESETS: &[Preset] = &[
    HOMEASSISTANT,
    Preset {
        name: "homeassistant-strict",
        summary: "Home Assistant limited to the known ecosystems' command topics (opt-in): reads every non-$ topic",
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
            "zigbee2mqtt/+/+/+/set",
            "zigbee2mqtt/+/+/+/get",
            "cmnd/#",
            "tasmota/discovery/#",
            "+/+/+/command",
            "+/+/+/+/command",
            "shellies/command",
            "shellies/+/command",
            "shellies/+/+/+/command/+",
            "shellies/+/+/+/set",
            "+/rpc",
            "+/command",
            "+/command/+",
        ],
        ..HOMEASSISTANT
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
        max_subscriptions: None,
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
        max_subscriptions: None,
        needs_rsa_server_key: true,
    },
    Preset {
        name: "esphome",
        summary: "an ESPHome node whose name is the identity name (default topic_prefix, discovery and discover_ip)",
        publish: &["%u/#", "homeassistant/+/%u/#", "esphome/discover/%u"],
        subscribe: &[
            "%u/#",
            "homeassistant/status",
            "esphome/discover",
            "esphome/ping/%u",
        ],
        retain: true,
        max_queued_messages: None,
        max_queued_bytes: None,
        max_packet_size: None,
        max_subscriptions: None,
        needs_rsa_server_key: false,
    },
    Preset {
        name: "shelly",
        summary: "a Shelly device (Gen1 `shellies/<id>/...`, Gen2+ `<id>/...`) whose id is the identity name",
        publish: &[
            "shellies/%u/#",
            "shellies/announce",
            "%u/online",
            "%u/events/rpc",
            "%u/status/#",
        ],
        subscribe: &[
            "shellies/%u/#",
            "shellies/command",
            "%u/rpc",
            "%u/command",
            "%u/command/#",
        ],
        retain: true,
        max_queued_messages: None,
        max_queued_bytes: None,
        max_packet_size: None,
        max_subscriptions: None,
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
        max_subscriptions: Some(HUB_MAX_SUBSCRIPTIONS),
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
    use crate::acl::{Acl, Grant};
    use moat_protocol::topic::{covers, matches, validate_topic_filter};

    /// The topics a tool uses with its default settings, `{n}` standing for the
    /// identity name. Sources are in `docs/manifest.md`, one per role.
    struct Uses {
        role: &'static str,
        publish: &'static [&'static str],
        subscribe: &'static [&'static str],
    }

    /// Commands Home Assistant sends to what it controls: every ecosystem's own
    /// command topics, including the ones no built-in role knows.
    const HA_PUBLISH: &[&str] = &[
        "homeassistant/status",
        "homeassistant/light/kitchen/config",
        "zigbee2mqtt/lamp/set",
        "zigbee2mqtt/kitchen/lamp/l1/set",
        "cmnd/plug-1/POWER",
        "shellies/shelly1-AB12/relay/0/command",
        "shellyplus1-AB12/rpc",
        "esphome-node/switch/relay/command",
        "frigate/front_door/detect/set",
        "zwave/living/switch_binary/endpoint_0/targetValue/set",
        "valetudo/robot/BasicControlCapability/operation/set",
        "home/porch/light/set",
    ];

    const USES: &[Uses] = &[
        Uses {
            role: "homeassistant",
            publish: HA_PUBLISH,
            subscribe: &["#", "homeassistant/status", "zigbee2mqtt/lamp"],
        },
        Uses {
            role: "homeassistant-strict",
            publish: &[
                "homeassistant/status",
                "zigbee2mqtt/bridge/request/permit_join",
                "zigbee2mqtt/lamp/set",
                "zigbee2mqtt/lamp/set/brightness",
                "zigbee2mqtt/lamp/get",
                "zigbee2mqtt/lamp/get/state",
                "zigbee2mqtt/kitchen/lamp/set",
                "zigbee2mqtt/kitchen/lamp/set/brightness",
                "zigbee2mqtt/kitchen/lamp/get",
                "zigbee2mqtt/kitchen/lamp/get/state",
                "zigbee2mqtt/kitchen/lamp/l1/set",
                "zigbee2mqtt/kitchen/lamp/l1/get",
                "cmnd/plug-1/POWER",
                "tasmota/discovery/AABBCCDDEEFF/config",
                "esphome-node/switch/relay/command",
                "esphome-node/climate/heat/mode/command",
                "shellies/command",
                "shellies/shelly1-AB12/command",
                "shellies/shelly25-AB12/roller/0/command/pos",
                "shellies/shellybulb-AB12/color/0/set",
                "shellyplus1-AB12/rpc",
                "shellyplus1-AB12/command",
                "shellyplus1-AB12/command/switch:0",
            ],
            subscribe: &["#"],
        },
        Uses {
            role: "zigbee2mqtt",
            publish: &[
                "zigbee2mqtt/bridge/state",
                "zigbee2mqtt/bridge/devices",
                "zigbee2mqtt/lamp",
                "homeassistant/light/0x00158d0001/light/config",
            ],
            subscribe: &["zigbee2mqtt/#", "homeassistant/#"],
        },
        Uses {
            role: "tasmota",
            publish: &[
                "tele/{n}/LWT",
                "tele/{n}/STATE",
                "stat/{n}/RESULT",
                "tasmota/discovery/AABBCCDDEEFF/config",
                "tasmota/discovery/AABBCCDDEEFF/sensors",
            ],
            subscribe: &["cmnd/{n}/#", "cmnd/tasmotas/#"],
        },
        Uses {
            role: "esphome",
            publish: &[
                "{n}/status",
                "{n}/debug",
                "{n}/sensor/temperature/state",
                "homeassistant/sensor/{n}/temperature/config",
                "esphome/discover/{n}",
            ],
            subscribe: &[
                "{n}/switch/relay/command",
                "homeassistant/status",
                "esphome/discover",
                "esphome/ping/{n}",
            ],
        },
        Uses {
            role: "shelly",
            publish: &[
                "shellies/{n}/online",
                "shellies/{n}/relay/0",
                "shellies/{n}/announce",
                "shellies/announce",
                "{n}/online",
                "{n}/events/rpc",
                "{n}/status/switch:0",
            ],
            subscribe: &[
                "shellies/{n}/relay/0/command",
                "shellies/{n}/color/0/set",
                "shellies/command",
                "{n}/rpc",
                "{n}/command",
                "{n}/command/switch:0",
            ],
        },
        Uses {
            role: "observer",
            publish: &[],
            subscribe: &["#", "zigbee2mqtt/lamp"],
        },
    ];

    const NAME: &str = "node-1";
    const OTHER: &str = "node-2";

    fn acl_of(p: &Preset) -> Acl {
        let mut acl = Acl::new();
        for f in p.publish {
            acl.allow_publish(Grant::new(*f, *f));
        }
        for f in p.subscribe {
            acl.allow_subscribe(Grant::new(*f, *f));
        }
        acl
    }

    fn named(topic: &str, name: &str) -> String {
        topic.replace("{n}", name)
    }

    #[test]
    fn every_preset_grant_is_a_valid_filter() {
        for p in PRESETS {
            for f in p.publish.iter().chain(p.subscribe) {
                assert!(validate_topic_filter(f).is_ok(), "{}: {f}", p.name);
            }
        }
    }

    #[test]
    fn every_role_has_a_table_of_what_its_tool_uses() {
        let tabled: Vec<&str> = USES.iter().map(|u| u.role).collect();
        let presets: Vec<&str> = PRESETS.iter().map(|p| p.name).collect();
        assert_eq!(tabled, presets);
    }

    /// One direction: everything the tool does by default is allowed.
    #[test]
    fn every_default_topic_is_allowed() {
        for uses in USES {
            let acl = acl_of(preset(uses.role).unwrap());
            for t in uses.publish {
                let t = named(t, NAME);
                assert!(
                    acl.may_publish(NAME, "c", &t).allowed,
                    "{}: publish {t}",
                    uses.role
                );
            }
            for f in uses.subscribe {
                let f = named(f, NAME);
                assert!(
                    acl.may_subscribe(NAME, "c", &f).allowed,
                    "{}: subscribe {f}",
                    uses.role
                );
                if !f.contains(['+', '#']) {
                    assert!(
                        acl.may_receive(NAME, "c", &f).allowed,
                        "{}: receive {f}",
                        uses.role
                    );
                }
            }
        }
    }

    /// The other direction: every grant is there for a topic of the table, a device
    /// role reaches no other device's topics, and nothing reaches `$` topics.
    #[test]
    fn nothing_is_granted_beyond_the_table() {
        for uses in USES {
            let p = preset(uses.role).unwrap();
            let acl = acl_of(p);
            for g in p.publish {
                let g = g.replace("%u", NAME);
                assert!(
                    uses.publish.iter().any(|t| matches(&g, &named(t, NAME))),
                    "{}: publish grant {g} is used by no default topic",
                    uses.role
                );
            }
            for g in p.subscribe {
                let g = g.replace("%u", NAME);
                assert!(
                    uses.subscribe.iter().any(|f| covers(&g, &named(f, NAME))),
                    "{}: subscribe grant {g} is used by no default filter",
                    uses.role
                );
            }
            let own = |t: &&&str| t.contains("{n}");
            for t in uses.publish.iter().filter(own) {
                let t = named(t, OTHER);
                assert!(
                    !acl.may_publish(NAME, "c", &t).allowed,
                    "{}: publish {t}",
                    uses.role
                );
            }
            for f in uses.subscribe.iter().filter(own) {
                let f = named(f, OTHER);
                assert!(
                    !acl.may_subscribe(NAME, "c", &f).allowed,
                    "{}: subscribe {f}",
                    uses.role
                );
            }
            assert!(!acl.may_publish(NAME, "c", "$SYS/broker/load").allowed);
            assert!(!acl.may_subscribe(NAME, "c", "$SYS/#").allowed);
        }
    }

    #[test]
    fn device_roles_cannot_command_other_ecosystems() {
        for role in ["tasmota", "esphome", "shelly", "observer"] {
            let acl = acl_of(preset(role).unwrap());
            for t in [
                "cmnd/plug-9/POWER",
                "zigbee2mqtt/lamp/set",
                "homeassistant/status",
            ] {
                assert!(!acl.may_publish(NAME, "c", t).allowed, "{role}: {t}");
            }
        }
    }

    #[test]
    fn the_hubs_get_room_for_thousands_of_subscriptions_and_only_tasmota_needs_rsa() {
        for role in ["homeassistant", "homeassistant-strict", "observer"] {
            assert_eq!(
                preset(role).unwrap().max_subscriptions,
                Some(HUB_MAX_SUBSCRIPTIONS)
            );
        }
        assert!(preset("observer").is_some_and(|p| p.publish.is_empty() && !p.retain));
        let rsa: Vec<_> = PRESETS
            .iter()
            .filter(|p| p.needs_rsa_server_key)
            .map(|p| p.name)
            .collect();
        assert_eq!(rsa, ["tasmota"]);
    }
}
