//! The message a mailbox holds: one delivery's view of a routed message. Topic,
//! payload, properties and expiry are one body shared by every subscriber of the
//! message; what differs per delivery (QoS, retain flag, subscription identifiers) is
//! small and inline, so a delivery costs no allocation of its own and one reference
//! count. Knows nothing of the wire.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;

use moat_protocol::{Properties, QoS};

/// What every delivery of one routed message shares: topic, payload, properties
/// and expiry, behind one `Arc`, so that a copy costs one reference count and a
/// queue moves a small [`Message`] (issue 16: 1->100 fan-out).
#[derive(Debug)]
pub struct Body {
    pub topic: Arc<str>,
    pub payload: Bytes,
    /// Pass-through properties (content type, correlation data, user properties
    /// ...); `None` when the message carries none, the common case, which then costs
    /// nothing to deliver (see [`shared_properties`]).
    pub properties: Option<Arc<Properties>>,
    pub expires_at: Option<Instant>,
}

/// One message on its way to one subscriber: the shared [`Body`] and what differs
/// per delivery (QoS, retain flag, subscription identifiers, queue position).
#[derive(Clone, Debug)]
pub struct Message {
    pub body: Arc<Body>,
    pub qos: QoS,
    pub retain: bool,
    pub subscription_ids: SubscriptionIds,
    /// Position in a persistent session's durable queue; 0 when not journaled.
    pub seq: u64,
}

impl Message {
    /// A message without properties, expiry or queue position.
    pub fn new(topic: &str, payload: Bytes, qos: QoS, retain: bool) -> Message {
        Message::with_body(
            Body {
                topic: Arc::from(topic),
                payload,
                properties: None,
                expires_at: None,
            },
            qos,
            retain,
        )
    }

    /// A message with its own body, no subscription identifiers or queue position.
    pub fn with_body(body: Body, qos: QoS, retain: bool) -> Message {
        Message {
            body: Arc::new(body),
            qos,
            retain,
            subscription_ids: SubscriptionIds::None,
            seq: 0,
        }
    }

    pub fn topic(&self) -> &Arc<str> {
        &self.body.topic
    }

    pub fn payload(&self) -> &Bytes {
        &self.body.payload
    }

    pub fn properties(&self) -> Option<&Properties> {
        self.body.properties.as_deref()
    }

    pub fn expires_at(&self) -> Option<Instant> {
        self.body.expires_at
    }

    /// Bytes this message counts against a queue's byte cap.
    pub fn cost(&self) -> usize {
        self.body.topic.len() + self.body.payload.len() + 64
    }

    pub fn is_expired(&self, now: Instant) -> bool {
        self.body.expires_at.is_some_and(|t| t <= now)
    }
}

/// A message's properties to share between its deliveries: `None` for an empty set,
/// so that a delivery need not even look at it.
pub fn shared_properties(properties: Properties) -> Option<Arc<Properties>> {
    (properties != Properties::default()).then(|| Arc::new(properties))
}

/// The properties a published message carries to its subscribers, shared as
/// [`shared_properties`] shares them. The common message carries none, and
/// costs one look at five fields.
pub fn forwarded_properties(published: &Properties) -> Option<Arc<Properties>> {
    published
        .forwards_any()
        .then(|| Arc::new(published.forwarded()))
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
    fn a_delivery_is_small_and_shares_its_body() {
        // What a queue moves per delivery (issue 16; 112 bytes with the body inline).
        assert!(
            std::mem::size_of::<Message>() <= 48,
            "{}",
            std::mem::size_of::<Message>()
        );
        let message = Message::new("a/b", Bytes::from_static(b"p"), QoS::AtLeastOnce, false);
        let copy = message.clone();
        assert!(Arc::ptr_eq(&message.body, &copy.body));
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

    #[test]
    fn forwarded_properties_are_those_a_forwarded_set_keeps() {
        let each: [Properties; 6] = [
            Properties {
                payload_format_indicator: Some(1),
                ..Properties::default()
            },
            Properties {
                content_type: Some("text/plain".into()),
                ..Properties::default()
            },
            Properties {
                response_topic: Some("r".into()),
                ..Properties::default()
            },
            Properties {
                correlation_data: Some(Bytes::from_static(b"c")),
                ..Properties::default()
            },
            Properties {
                user_properties: vec![("k".into(), "v".into())],
                ..Properties::default()
            },
            // Nothing a subscriber is given: the publisher's own expiry and alias.
            Properties {
                message_expiry_interval: Some(5),
                topic_alias: Some(1),
                subscription_identifiers: vec![3],
                ..Properties::default()
            },
        ];
        for published in each {
            assert_eq!(
                forwarded_properties(&published),
                shared_properties(published.forwarded()),
                "{published:?}"
            );
        }
        assert!(forwarded_properties(&Properties::default()).is_none());
    }
}
