//! Decoded MQTT packets, shared by both protocol versions. Fields that exist only in
//! MQTT 5 (properties, most reason codes) are ignored when encoding for 3.1.1.

use std::sync::Arc;

use bytes::Bytes;

use super::reason::ReasonCode;

/// The protocol version negotiated by CONNECT.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ProtocolVersion {
    /// MQTT 3.1 (protocol name `MQIsdp`, level 3), which old devices speak and Home
    /// Assistant's protocol menu offers. Handled with 3.1.1 semantics; only the wire
    /// differs: no session-present flag in CONNACK, no failure code in SUBACK.
    V31,
    /// MQTT 3.1.1 (`MQTT`, level 4).
    V311,
    /// MQTT 5.0 (`MQTT`, level 5).
    V5,
}

impl ProtocolVersion {
    /// Whether this is MQTT 5, the only version with properties and reason codes.
    pub fn is_v5(self) -> bool {
        self == ProtocolVersion::V5
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum QoS {
    AtMostOnce = 0,
    AtLeastOnce = 1,
    ExactlyOnce = 2,
}

impl QoS {
    pub fn from_u8(value: u8) -> Option<QoS> {
        match value {
            0 => Some(QoS::AtMostOnce),
            1 => Some(QoS::AtLeastOnce),
            2 => Some(QoS::ExactlyOnce),
            _ => None,
        }
    }
}

/// MQTT 5 properties. One struct for every packet type; the codec enforces which
/// properties a packet type may carry and rejects duplicates.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Properties {
    pub payload_format_indicator: Option<u8>,
    pub message_expiry_interval: Option<u32>,
    pub content_type: Option<String>,
    pub response_topic: Option<String>,
    pub correlation_data: Option<Bytes>,
    pub subscription_identifiers: Vec<u32>,
    pub session_expiry_interval: Option<u32>,
    pub assigned_client_identifier: Option<String>,
    pub server_keep_alive: Option<u16>,
    pub authentication_method: Option<String>,
    pub authentication_data: Option<Bytes>,
    pub request_problem_information: Option<u8>,
    pub will_delay_interval: Option<u32>,
    pub request_response_information: Option<u8>,
    pub response_information: Option<String>,
    pub server_reference: Option<String>,
    pub reason_string: Option<String>,
    pub receive_maximum: Option<u16>,
    pub topic_alias_maximum: Option<u16>,
    pub topic_alias: Option<u16>,
    pub maximum_qos: Option<u8>,
    pub retain_available: Option<u8>,
    pub user_properties: Vec<(String, String)>,
    pub maximum_packet_size: Option<u32>,
    pub wildcard_subscription_available: Option<u8>,
    pub subscription_identifiers_available: Option<u8>,
    pub shared_subscription_available: Option<u8>,
}

impl Properties {
    /// The properties a message carries from publisher to subscribers unchanged
    /// (MQTT 5 §3.3.2.3); expiry, aliases and subscription identifiers are the
    /// forwarder's to set.
    pub fn forwarded(&self) -> Properties {
        Properties {
            payload_format_indicator: self.payload_format_indicator,
            content_type: self.content_type.clone(),
            response_topic: self.response_topic.clone(),
            correlation_data: self.correlation_data.clone(),
            user_properties: self.user_properties.clone(),
            ..Properties::default()
        }
    }

    /// Whether [`Properties::forwarded`] would carry anything: most messages carry
    /// nothing, and this answers without building and comparing a property set.
    pub fn forwards_any(&self) -> bool {
        self.payload_format_indicator.is_some()
            || self.content_type.is_some()
            || self.response_topic.is_some()
            || self.correlation_data.is_some()
            || !self.user_properties.is_empty()
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Will {
    pub topic: String,
    pub payload: Bytes,
    pub qos: QoS,
    pub retain: bool,
    pub properties: Properties,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connect {
    pub protocol: ProtocolVersion,
    pub clean_start: bool,
    pub keep_alive: u16,
    /// May be empty: the server then assigns one (v5) or refuses (3.1.1 without clean session).
    pub client_id: String,
    pub will: Option<Will>,
    pub username: Option<String>,
    pub password: Option<Bytes>,
    pub properties: Properties,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnAck {
    pub session_present: bool,
    /// Encoded as the v5 reason code, or mapped to a 3.1.1 return code.
    pub reason: ReasonCode,
    pub properties: Properties,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publish {
    pub dup: bool,
    pub qos: QoS,
    pub retain: bool,
    /// Empty only when a v5 topic alias stands for it. Shared: a broker's message
    /// keeps the decoded topic as it is (one copy from the wire).
    pub topic: Arc<str>,
    /// Zero for QoS 0; never zero for QoS 1 and 2.
    pub packet_id: u16,
    pub payload: Bytes,
    pub properties: Properties,
}

/// A PUBLISH to encode from borrowed parts ([`crate::Codec::encode_publish`]): a
/// broker writes each delivery of a message straight from the one copy every
/// subscriber shares, with what differs per delivery given apart.
#[derive(Debug, Clone, Copy)]
pub struct PublishRef<'a> {
    pub dup: bool,
    pub qos: QoS,
    pub retain: bool,
    pub topic: &'a str,
    /// Zero for QoS 0; never zero for QoS 1 and 2.
    pub packet_id: u16,
    pub payload: &'a [u8],
    /// `None` when the message carries no property. Its Subscription Identifiers
    /// and Message Expiry Interval are not written: the two fields below are.
    pub properties: Option<&'a Properties>,
    pub subscription_identifiers: &'a [u32],
    pub message_expiry_interval: Option<u32>,
}

impl<'a> From<&'a Publish> for PublishRef<'a> {
    fn from(publish: &'a Publish) -> PublishRef<'a> {
        PublishRef {
            dup: publish.dup,
            qos: publish.qos,
            retain: publish.retain,
            topic: &publish.topic,
            packet_id: publish.packet_id,
            payload: &publish.payload,
            properties: Some(&publish.properties),
            subscription_identifiers: &publish.properties.subscription_identifiers,
            message_expiry_interval: publish.properties.message_expiry_interval,
        }
    }
}

/// PUBACK, PUBREC, PUBREL and PUBCOMP share one shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ack {
    pub packet_id: u16,
    pub reason: ReasonCode,
    pub properties: Properties,
}

impl Ack {
    pub fn new(packet_id: u16, reason: ReasonCode) -> Ack {
        Ack {
            packet_id,
            reason,
            properties: Properties::default(),
        }
    }
}

/// Which of the four packets of [`Ack`]'s shape: a broker answers every QoS 1/2
/// message with one and encodes it without building a [`Packet`]
/// ([`crate::Codec::encode_ack`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckKind {
    PubAck,
    PubRec,
    PubRel,
    PubComp,
}

impl AckKind {
    /// The packet of this kind that carries `ack`.
    pub fn packet(self, ack: Ack) -> Packet {
        match self {
            AckKind::PubAck => Packet::PubAck(ack),
            AckKind::PubRec => Packet::PubRec(ack),
            AckKind::PubRel => Packet::PubRel(ack),
            AckKind::PubComp => Packet::PubComp(ack),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetainHandling {
    /// 0: send retained messages at subscribe time.
    SendAtSubscribe,
    /// 1: send them only if the subscription did not exist before.
    SendIfNew,
    /// 2: never send retained messages for this subscription.
    DoNotSend,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SubscriptionOptions {
    pub qos: QoS,
    pub no_local: bool,
    pub retain_as_published: bool,
    pub retain_handling: RetainHandling,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscribeFilter {
    pub filter: String,
    pub options: SubscriptionOptions,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscribe {
    pub packet_id: u16,
    pub filters: Vec<SubscribeFilter>,
    pub properties: Properties,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubAck {
    pub packet_id: u16,
    /// One per filter: granted QoS (0x00-0x02) or a failure reason code.
    pub reasons: Vec<ReasonCode>,
    pub properties: Properties,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unsubscribe {
    pub packet_id: u16,
    pub filters: Vec<String>,
    pub properties: Properties,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnsubAck {
    pub packet_id: u16,
    /// One per filter (v5 only; 3.1.1 UNSUBACK carries none).
    pub reasons: Vec<ReasonCode>,
    pub properties: Properties,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Disconnect {
    pub reason: ReasonCode,
    pub properties: Properties,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Auth {
    pub reason: ReasonCode,
    pub properties: Properties,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Packet {
    Connect(Box<Connect>),
    ConnAck(ConnAck),
    Publish(Publish),
    PubAck(Ack),
    PubRec(Ack),
    PubRel(Ack),
    PubComp(Ack),
    Subscribe(Subscribe),
    SubAck(SubAck),
    Unsubscribe(Unsubscribe),
    UnsubAck(UnsubAck),
    PingReq,
    PingResp,
    Disconnect(Disconnect),
    Auth(Auth),
}
