//! A bridge's local rights, exactly its mappings and nothing more: it may publish
//! (inject) only under the local side of its `in` mappings, and subscribe to and
//! receive only the local side of its `out` mappings. Deny by default holds for a
//! bridge as for any client; `$` topics are never reachable (wildcards do not match
//! them, and no mapping may name one).

use crate::broker::Permissions;
use moat_protocol::{TopicName, topic};

use super::plan::BridgePlan;

pub struct BridgeRights {
    /// Local filters of `in` mappings.
    publish: Vec<String>,
    /// Local filters of `out` mappings.
    subscribe: Vec<String>,
}

impl BridgeRights {
    pub fn new(plan: &BridgePlan) -> BridgeRights {
        let (mut publish, mut subscribe) = (Vec::new(), Vec::new());
        for m in &plan.mappings {
            if m.direction.carries_in() {
                publish.push(m.local_filter());
            }
            if m.direction.carries_out() {
                subscribe.push(m.local_filter());
            }
        }
        BridgeRights { publish, subscribe }
    }
}

impl Permissions for BridgeRights {
    fn may_publish(&self, _client_id: &str, topic_name: TopicName<'_>) -> bool {
        let topic_name = topic_name.as_str();
        self.publish.iter().any(|f| topic::matches(f, topic_name))
    }

    fn may_subscribe(&self, _client_id: &str, filter: &str) -> bool {
        self.subscribe.iter().any(|f| topic::covers(f, filter))
    }

    fn may_receive(&self, _client_id: &str, topic_name: &str) -> bool {
        self.subscribe.iter().any(|f| topic::matches(f, topic_name))
    }

    fn may_retain(&self) -> bool {
        // Per mapping: an `in` mapping with `retain: false` clears the flag before
        // the message is injected.
        true
    }

    fn max_subscriptions(&self) -> Option<usize> {
        Some(self.subscribe.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bridge::plan::{mapping, sample};
    use crate::manifest::bridge::Direction;

    fn name(topic: &str) -> TopicName<'_> {
        TopicName::new(topic).unwrap()
    }

    #[test]
    fn rights_are_exactly_the_mappings() {
        let r = BridgeRights::new(&sample(vec![
            mapping("sensors/#", Direction::Out, "", "home/"),
            mapping("cmd/+", Direction::In, "remote/", "home/"),
        ]));
        assert!(r.may_subscribe("c", "sensors/#"));
        assert!(r.may_receive("c", "sensors/kitchen"));
        assert!(!r.may_subscribe("c", "#"));
        assert!(!r.may_receive("c", "cmd/x"));
        assert!(r.may_publish("c", name("remote/cmd/light")));
        assert!(!r.may_publish("c", name("cmd/light")));
        assert!(!r.may_publish("c", name("sensors/kitchen")));
        assert!(!r.may_receive("c", "$SYS/broker/uptime"));
    }
}
