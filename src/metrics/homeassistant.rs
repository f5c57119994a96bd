//! Broker health as Home Assistant entities (`broker.homeassistant: true`), through
//! MQTT discovery: one retained config per sensor under
//! `homeassistant/sensor/moat_<key>/config` (published at start and on reload), and
//! one JSON state on the retained `$SYS/broker/health`, republished every
//! [`SYS_INTERVAL`] from the same counters as `$SYS` and `/metrics`. The state lives
//! under `$SYS` because no client can publish there (so no one can fake the broker's
//! health) and `$SYS` is never written to the store (no SD-card write every ten
//! seconds); Home Assistant's identity needs a grant to read it, which `serve` checks
//! and names. Discovery format: <https://www.home-assistant.io/integrations/mqtt/#mqtt-discovery>
//! (topic `<prefix>/<component>/<object_id>/config`, fields `state_topic`,
//! `value_template`, `unique_id`, `device`, `expire_after`, `entity_category`).

use bytes::Bytes;
use serde_json::{Value, json};

use crate::broker::journal::Reservation;
use crate::broker::mailbox::Message;
use crate::broker::sys::SYS_INTERVAL;
use crate::broker::{Broker, Incoming};
use crate::policy::Policy;
use moat_protocol::QoS;

use super::collect::Sources;

/// Where the health JSON is published.
pub const STATE_TOPIC: &str = "$SYS/broker/health";
/// Home Assistant's default discovery prefix.
pub const DISCOVERY_PREFIX: &str = "homeassistant";

/// One sensor: its key in the state JSON, its name, unit and classes.
struct Entity {
    key: &'static str,
    name: &'static str,
    unit: Option<&'static str>,
    device_class: Option<&'static str>,
    state_class: &'static str,
}

const fn entity(key: &'static str, name: &'static str, state_class: &'static str) -> Entity {
    Entity {
        key,
        name,
        unit: None,
        device_class: None,
        state_class,
    }
}

const ENTITIES: &[Entity] = &[
    entity("clients_connected", "Clients connected", "measurement"),
    entity("sessions", "Sessions", "measurement"),
    entity("retained_messages", "Retained messages", "measurement"),
    entity("messages_received", "Messages received", "total_increasing"),
    entity("messages_sent", "Messages sent", "total_increasing"),
    entity("messages_dropped", "Messages dropped", "total_increasing"),
    entity("denials", "Denials", "total_increasing"),
    entity("login_failures", "Failed logins", "total_increasing"),
    entity(
        "connections_refused",
        "Connections refused",
        "total_increasing",
    ),
    Entity {
        unit: Some("B"),
        device_class: Some("data_size"),
        ..entity("database_bytes", "Database size", "measurement")
    },
    Entity {
        unit: Some("s"),
        device_class: Some("duration"),
        ..entity("uptime", "Uptime", "total_increasing")
    },
];

/// Each sensor's discovery topic and config.
pub fn discovery_configs() -> Vec<(String, String)> {
    let device = json!({
        "identifiers": ["moat"],
        "name": "moat MQTT broker",
        "manufacturer": "moat",
        "model": "moat",
        "sw_version": env!("CARGO_PKG_VERSION"),
    });
    ENTITIES
        .iter()
        .map(|e| {
            let mut config = json!({
                "name": e.name,
                "unique_id": format!("moat_{}", e.key),
                "state_topic": STATE_TOPIC,
                "value_template": format!("{{{{ value_json.{} }}}}", e.key),
                "state_class": e.state_class,
                "entity_category": "diagnostic",
                // Three missed republications: the broker is not reporting.
                "expire_after": SYS_INTERVAL.as_secs() * 3,
                "device": device,
            });
            if let Some(unit) = e.unit {
                config["unit_of_measurement"] = unit.into();
            }
            if let Some(class) = e.device_class {
                config["device_class"] = class.into();
            }
            let topic = format!("{DISCOVERY_PREFIX}/sensor/moat_{}/config", e.key);
            (topic, config.to_string())
        })
        .collect()
}

/// The state JSON now: one field per entity.
pub fn health(sources: &Sources) -> Value {
    let s = sources.broker.stats.snapshot();
    let auth = sources.auth.stats();
    let (sessions, _, retained) = sources.broker.counts();
    let database_bytes = sources.store.as_ref().and_then(|s| s.database_bytes());
    json!({
        "clients_connected": s.connected,
        "sessions": sessions,
        "retained_messages": retained,
        "messages_received": s.messages_received,
        "messages_sent": s.messages_sent,
        "messages_dropped": s.dropped + s.dropped_too_large,
        "denials": s.denials,
        "login_failures": auth.denied + auth.throttled,
        "connections_refused": s.connections_refused,
        "database_bytes": database_bytes,
        "uptime": sources.broker.uptime().as_secs(),
    })
}

fn retained(topic: &str, payload: String) -> Incoming {
    Incoming {
        message: Message::new(topic, Bytes::from(payload), QoS::AtMostOnce, true),
        publisher: None,
        from_session: None,
        retained_quota: usize::MAX,
    }
}

/// Publishes the discovery configs, retained and stored (Home Assistant reads them
/// whenever it subscribes).
pub async fn announce(broker: &Broker) {
    for (topic, config) in discovery_configs() {
        let room = broker.journal().reserve().await;
        let (_, durable) = broker.publish(retained(&topic, config), room);
        durable.settle("Home Assistant discovery config").await;
    }
}

/// Says which identity can read the health topic, or warns that none can.
pub fn check_readers(policy: &Policy) {
    let readers: Vec<&str> = policy
        .identities()
        .filter(|i| i.acl.may_receive(&i.name, "", STATE_TOPIC).allowed)
        .map(|i| i.name.as_str())
        .collect();
    if readers.is_empty() {
        tracing::warn!(
            topic = STATE_TOPIC,
            "broker.homeassistant is on but no identity may read the health topic; add \
             subscribe: [\"{STATE_TOPIC}\"] to your Home Assistant user (`#` never matches $SYS)"
        );
    } else {
        tracing::info!(topic = STATE_TOPIC, readers = %readers.join(","), "Home Assistant health entities on");
    }
}

/// Announces, then republishes the health state every [`SYS_INTERVAL`], forever.
pub async fn run(sources: Sources) {
    announce(&sources.broker).await;
    let mut tick = tokio::time::interval(SYS_INTERVAL);
    loop {
        tick.tick().await;
        let state = health(&sources).to_string();
        // `$SYS` is never stored.
        sources
            .broker
            .publish(retained(STATE_TOPIC, state), Reservation::NONE);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_config_names_a_field_of_the_state_and_a_unique_id() {
        let configs = discovery_configs();
        assert_eq!(configs.len(), ENTITIES.len());
        let mut ids = std::collections::HashSet::new();
        for (topic, config) in &configs {
            let config: Value = serde_json::from_str(config).unwrap();
            let key = config["unique_id"]
                .as_str()
                .unwrap()
                .strip_prefix("moat_")
                .unwrap()
                .to_owned();
            assert_eq!(topic, &format!("homeassistant/sensor/moat_{key}/config"));
            assert_eq!(config["state_topic"], STATE_TOPIC);
            assert_eq!(
                config["value_template"],
                format!("{{{{ value_json.{key} }}}}")
            );
            assert!(ids.insert(key));
        }
    }
}
