//! MQTT 5 properties (§2.2.2): the identifiers, the per-packet allowlist of
//! §2.2.2.2 that both directions apply, and the storage blob. Decoding (duplicate and
//! value checks) is in `decode`, encoding in `encode`: encoding writes only the
//! properties the packet type allows, so a property set by mistake never reaches the
//! wire.

mod decode;
mod encode;
#[cfg(test)]
mod tests;

use bytes::{Bytes, BytesMut};

use crate::error::{DecodeError, EncodeError};
use crate::packet::Properties;
use crate::reader::Reader;
use crate::varint::MAX_VARINT;

pub(crate) use decode::decode;
pub(crate) use encode::{PerDelivery, encode, encode_with};
#[cfg(test)]
pub(crate) use tests::restrict;

/// At most this many User Properties per packet (DESIGN.md limits).
pub const MAX_USER_PROPERTIES: usize = 32;
/// At most this many bytes of User Property names and values per packet.
pub const MAX_USER_PROPERTY_BYTES: usize = 8 * 1024;

const PAYLOAD_FORMAT_INDICATOR: u8 = 0x01;
const MESSAGE_EXPIRY_INTERVAL: u8 = 0x02;
const CONTENT_TYPE: u8 = 0x03;
const RESPONSE_TOPIC: u8 = 0x08;
const CORRELATION_DATA: u8 = 0x09;
const SUBSCRIPTION_IDENTIFIER: u8 = 0x0B;
const SESSION_EXPIRY_INTERVAL: u8 = 0x11;
const ASSIGNED_CLIENT_IDENTIFIER: u8 = 0x12;
const SERVER_KEEP_ALIVE: u8 = 0x13;
const AUTHENTICATION_METHOD: u8 = 0x15;
const AUTHENTICATION_DATA: u8 = 0x16;
const REQUEST_PROBLEM_INFORMATION: u8 = 0x17;
const WILL_DELAY_INTERVAL: u8 = 0x18;
const REQUEST_RESPONSE_INFORMATION: u8 = 0x19;
const RESPONSE_INFORMATION: u8 = 0x1A;
const SERVER_REFERENCE: u8 = 0x1C;
const REASON_STRING: u8 = 0x1F;
const RECEIVE_MAXIMUM: u8 = 0x21;
const TOPIC_ALIAS_MAXIMUM: u8 = 0x22;
const TOPIC_ALIAS: u8 = 0x23;
const MAXIMUM_QOS: u8 = 0x24;
const RETAIN_AVAILABLE: u8 = 0x25;
const USER_PROPERTY: u8 = 0x26;
const MAXIMUM_PACKET_SIZE: u8 = 0x27;
const WILDCARD_SUBSCRIPTION_AVAILABLE: u8 = 0x28;
const SUBSCRIPTION_IDENTIFIER_AVAILABLE: u8 = 0x29;
const SHARED_SUBSCRIPTION_AVAILABLE: u8 = 0x2A;

/// Which property set is being read or written: each allows different identifiers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Context {
    Connect,
    Will,
    ConnAck,
    /// `to_client`: only a server-to-client PUBLISH may carry Subscription
    /// Identifiers (MQTT-3.3.4-6), and then several of them.
    Publish {
        to_client: bool,
    },
    /// PUBACK, PUBREC, PUBREL, PUBCOMP.
    Ack,
    Subscribe,
    SubAck,
    Unsubscribe,
    UnsubAck,
    Disconnect,
    Auth,
}

impl Context {
    fn name(self) -> &'static str {
        match self {
            Context::Connect => "CONNECT",
            Context::Will => "will properties",
            Context::ConnAck => "CONNACK",
            Context::Publish { .. } => "PUBLISH",
            Context::Ack => "PUBACK/PUBREC/PUBREL/PUBCOMP",
            Context::Subscribe => "SUBSCRIBE",
            Context::SubAck => "SUBACK",
            Context::Unsubscribe => "UNSUBSCRIBE",
            Context::UnsubAck => "UNSUBACK",
            Context::Disconnect => "DISCONNECT",
            Context::Auth => "AUTH",
        }
    }

    /// The allowlist of MQTT 5 §2.2.2.2.
    pub(crate) fn allows(self, id: u8) -> bool {
        use Context::*;
        match id {
            PAYLOAD_FORMAT_INDICATOR
            | MESSAGE_EXPIRY_INTERVAL
            | CONTENT_TYPE
            | RESPONSE_TOPIC
            | CORRELATION_DATA => matches!(self, Publish { .. } | Will),
            SUBSCRIPTION_IDENTIFIER => matches!(self, Publish { to_client: true } | Subscribe),
            SESSION_EXPIRY_INTERVAL => matches!(self, Connect | ConnAck | Disconnect),
            ASSIGNED_CLIENT_IDENTIFIER
            | SERVER_KEEP_ALIVE
            | RESPONSE_INFORMATION
            | MAXIMUM_QOS
            | RETAIN_AVAILABLE
            | WILDCARD_SUBSCRIPTION_AVAILABLE
            | SUBSCRIPTION_IDENTIFIER_AVAILABLE
            | SHARED_SUBSCRIPTION_AVAILABLE => self == ConnAck,
            AUTHENTICATION_METHOD | AUTHENTICATION_DATA => matches!(self, Connect | ConnAck | Auth),
            REQUEST_PROBLEM_INFORMATION | REQUEST_RESPONSE_INFORMATION => self == Connect,
            WILL_DELAY_INTERVAL => self == Will,
            SERVER_REFERENCE => matches!(self, ConnAck | Disconnect),
            REASON_STRING => matches!(self, ConnAck | Ack | SubAck | UnsubAck | Disconnect | Auth),
            RECEIVE_MAXIMUM | TOPIC_ALIAS_MAXIMUM | MAXIMUM_PACKET_SIZE => {
                matches!(self, Connect | ConnAck)
            }
            TOPIC_ALIAS => matches!(self, Publish { .. }),
            USER_PROPERTY => true,
            _ => false,
        }
    }
}

/// Message properties as bytes for storage: the MQTT 5 wire encoding of the
/// properties a PUBLISH carries (length-prefixed). The store keeps them opaque.
pub fn properties_to_blob(props: &Properties) -> Result<Vec<u8>, EncodeError> {
    let mut out = BytesMut::new();
    encode(&mut out, props, Context::Publish { to_client: true })?;
    Ok(out.to_vec())
}

/// Reads back what [`properties_to_blob`] wrote, with the codec's own checks.
pub fn properties_from_blob(blob: &[u8]) -> Result<Properties, DecodeError> {
    let mut reader = Reader::new(Bytes::copy_from_slice(blob));
    decode(&mut reader, Context::Publish { to_client: true })
}
