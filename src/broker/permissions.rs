//! What the broker needs to know about a client's rights and limits, as seen from the
//! broker: a small trait the policy layer implements. Keeping it a trait keeps the
//! broker free of manifests, roles and grants.

use std::net::SocketAddr;
use std::sync::Arc;

use moat_protocol::{Connect, ReasonCode, TopicName};

/// Rights of one authenticated identity. Implemented by the policy layer; swapped
/// on reload.
pub trait Permissions: Send + Sync {
    /// May this client publish to `topic`? (Checked already: the topic is valid.)
    fn may_publish(&self, client_id: &str, topic: TopicName<'_>) -> bool;
    /// May this client subscribe to `filter` (with any `$share/<group>/` prefix)?
    fn may_subscribe(&self, client_id: &str, filter: &str) -> bool;
    /// May a message on `topic` be delivered to this client? (re-checked on delivery)
    fn may_receive(&self, client_id: &str, topic: &str) -> bool;
    /// May every message a subscription to `filter` (as subscribed: with any
    /// `$share/<group>/` prefix, stripped once as `may_subscribe` does) can match be
    /// delivered to this client? Then deliveries through it skip
    /// [`Permissions::may_receive`] while these rights are in force. `false`, the
    /// default, keeps the check on every delivery.
    fn may_receive_all(&self, _client_id: &str, _filter: &str) -> bool {
        false
    }
    /// May this client set the retain flag?
    fn may_retain(&self) -> bool;
    /// How many retained messages this identity may hold.
    fn retained_quota(&self) -> usize {
        usize::MAX
    }
    /// Subscriptions one client of this identity may hold; `None` means the broker's
    /// `max_subscriptions`.
    fn max_subscriptions(&self) -> Option<usize> {
        None
    }
}

/// Which rule refused a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PublishDenied {
    /// No publish grant matches the topic (or it is a `$` topic).
    Topic,
    /// The message is retained and the identity may not retain.
    Retain,
}

/// The one check for a message a client sends: a PUBLISH, and its will both at
/// CONNECT and when it is published (rights may have changed by a reload). Clients
/// never publish to `$` topics or to an invalid topic name; a grant must match;
/// retained needs the retain right.
pub fn may_publish_message(
    permissions: &dyn Permissions,
    client_id: &str,
    topic: &str,
    retain: bool,
) -> Result<(), PublishDenied> {
    let topic = TopicName::new(topic).map_err(|_| PublishDenied::Topic)?;
    may_publish_topic(permissions, client_id, topic, retain)
}

/// [`may_publish_message`] for a topic name checked already: a PUBLISH's, whose
/// [`TopicName`] the handler makes once for its limits, this check and routing.
pub fn may_publish_topic(
    permissions: &dyn Permissions,
    client_id: &str,
    topic: TopicName<'_>,
    retain: bool,
) -> Result<(), PublishDenied> {
    if topic.is_dollar() || !permissions.may_publish(client_id, topic) {
        return Err(PublishDenied::Topic);
    }
    if retain && !permissions.may_retain() {
        return Err(PublishDenied::Retain);
    }
    Ok(())
}

/// Per-client limits that depend on who the client is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientLimits {
    pub max_packet_size: u32,
    pub max_queued_messages: usize,
    pub max_queued_bytes: usize,
}

/// Which listener a connection arrived on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListenerKind {
    Tls,
    Plain,
}

/// What the transport layer knows about a peer before MQTT starts.
#[derive(Debug, Clone)]
pub struct PeerInfo {
    pub addr: SocketAddr,
    pub listener: ListenerKind,
    /// The common name of a client certificate that chained to moat's CA.
    pub certificate_name: Option<String>,
}

/// A successful authentication: who the client is, what it may do.
pub struct Admission {
    pub identity: String,
    pub permissions: Arc<dyn Permissions>,
    pub limits: ClientLimits,
}

/// The future `Gatekeeper::admit` returns.
pub type AdmitFuture<'a> =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<Admission, ReasonCode>> + Send + 'a>>;

/// Authenticates a CONNECT. Implemented above the broker (it needs the policy and
/// the password verifier); the error is the CONNACK reason to answer with.
pub trait Gatekeeper: Send + Sync {
    fn admit<'a>(&'a self, connect: &'a Connect, peer: &'a PeerInfo) -> AdmitFuture<'a>;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// May publish under `a/`, retains only if `retain`.
    struct Rights {
        retain: bool,
    }

    impl Permissions for Rights {
        fn may_publish(&self, _: &str, topic: TopicName<'_>) -> bool {
            topic.as_str().starts_with("a/") || topic.as_str().starts_with("$a/")
        }
        fn may_subscribe(&self, _: &str, _: &str) -> bool {
            false
        }
        fn may_receive(&self, _: &str, _: &str) -> bool {
            false
        }
        fn may_retain(&self) -> bool {
            self.retain
        }
    }

    #[test]
    fn one_check_names_the_rule_that_refused() {
        let keeps = Rights { retain: true };
        let no_retain = Rights { retain: false };
        assert_eq!(may_publish_message(&keeps, "c", "a/x", true), Ok(()));
        assert_eq!(may_publish_message(&no_retain, "c", "a/x", false), Ok(()));
        assert_eq!(
            may_publish_message(&no_retain, "c", "a/x", true),
            Err(PublishDenied::Retain)
        );
        assert_eq!(
            may_publish_message(&keeps, "c", "b/x", false),
            Err(PublishDenied::Topic)
        );
        // Clients never publish to `$` topics, whatever a grant says.
        assert_eq!(
            may_publish_message(&keeps, "c", "$a/x", false),
            Err(PublishDenied::Topic)
        );
        // Nor to a topic name the codec would refuse, whatever the grants say.
        for invalid in ["a/+", "a/#", "", "a/\0", "a/\n"] {
            assert_eq!(
                may_publish_message(&keeps, "c", invalid, false),
                Err(PublishDenied::Topic),
                "{invalid:?}"
            );
        }
    }
}
