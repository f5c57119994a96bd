//! The message a mailbox holds: one delivery's view of a routed message. Topic,
//! payload and properties are shared by every subscriber of the message; what differs
//! per delivery (QoS, retain flag, subscription identifiers) is small and inline, so
//! a delivery costs no allocation of its own. Knows nothing of the wire.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;

use moat_protocol::{Properties, QoS};

/// One message on its way to one subscriber. Topic, payload and properties are
/// shared between every subscriber of a message: one copy per message, not per queue.
#[derive(Clone, Debug)]
pub struct Message {
    pub topic: Arc<str>,
    pub payload: Bytes,
    pub qos: QoS,
    pub retain: bool,
    /// Pass-through properties (content type, correlation data, user properties
    /// ...); `None` when the message carries none, the common case, which then costs
    /// nothing to deliver (see [`shared_properties`]).
    pub properties: Option<Arc<Properties>>,
    pub subscription_ids: SubscriptionIds,
    pub expires_at: Option<Instant>,
    /// Position in a persistent session's durable queue; 0 when not journaled.
    pub seq: u64,
}

impl Message {
    /// A message without properties, expiry or queue position.
    pub fn new(topic: &str, payload: Bytes, qos: QoS, retain: bool) -> Message {
        Message {
            topic: Arc::from(topic),
            payload,
            qos,
            retain,
            properties: None,
            subscription_ids: SubscriptionIds::None,
            expires_at: None,
            seq: 0,
        }
    }

    /// Bytes this message counts against a queue's byte cap.
    pub fn cost(&self) -> usize {
        self.topic.len() + self.payload.len() + 64
    }

    pub fn is_expired(&self, now: Instant) -> bool {
        self.expires_at.is_some_and(|t| t <= now)
    }
}

/// A message's properties to share between its deliveries: `None` for an empty set,
/// so that a delivery need not even look at it.
pub fn shared_properties(properties: Properties) -> Option<Arc<Properties>> {
    (properties != Properties::default()).then(|| Arc::new(properties))
}

/// The Subscription Identifiers of one delivery (MQTT 5 §3.3.4): none or one in
/// almost every case, held inline; several only when a session's overlapping
/// subscriptions match the same message.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum SubscriptionIds {
    #[default]
    None,
    One(u32),
    Many(Box<[u32]>),
}

impl SubscriptionIds {
    pub fn as_slice(&self) -> &[u32] {
        match self {
            SubscriptionIds::None => &[],
            SubscriptionIds::One(id) => std::slice::from_ref(id),
            SubscriptionIds::Many(ids) => ids,
        }
    }

    /// Adds one, if there is one.
    pub fn extend(&mut self, id: Option<u32>) {
        let Some(id) = id else { return };
        *self = match std::mem::take(self) {
            SubscriptionIds::None => SubscriptionIds::One(id),
            SubscriptionIds::One(first) => SubscriptionIds::Many(Box::new([first, id])),
            SubscriptionIds::Many(ids) => {
                let mut ids = ids.into_vec();
                ids.push(id);
                SubscriptionIds::Many(ids.into_boxed_slice())
            }
        };
    }
}

impl From<Option<u32>> for SubscriptionIds {
    fn from(id: Option<u32>) -> SubscriptionIds {
        id.map_or(SubscriptionIds::None, SubscriptionIds::One)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_grow_from_none_to_one_to_many_in_order() {
        let mut ids = SubscriptionIds::from(None);
        assert_eq!(ids.as_slice(), &[] as &[u32]);
        ids.extend(None);
        assert_eq!(ids, SubscriptionIds::None);
        ids.extend(Some(4));
        assert_eq!(ids, SubscriptionIds::One(4));
        ids.extend(Some(9));
        ids.extend(Some(2));
        assert_eq!(ids.as_slice(), &[4, 9, 2]);
        assert_eq!(SubscriptionIds::from(Some(7)).as_slice(), &[7]);
    }

    #[test]
    fn an_empty_property_set_is_not_shared() {
        assert!(shared_properties(Properties::default()).is_none());
        let set = Properties {
            content_type: Some("text/plain".into()),
            ..Properties::default()
        };
        assert_eq!(shared_properties(set.clone()).as_deref(), Some(&set));
    }
}
