//! MQTT 5 properties (§2.2.2): decoding with the per-packet allowlist of §2.2.2.2,
//! duplicate and value checks, and encoding. Encoding writes only the properties the
//! packet type allows, so a property set by mistake never reaches the wire.

use bytes::{Bytes, BytesMut};

use super::error::{DecodeError, EncodeError};
use super::packet::Properties;
use super::reader::Reader;
use super::sink::{self, Counter, Sink};
use super::topic;
use super::varint::MAX_VARINT;

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

/// Reads a property length and the properties it covers.
pub(crate) fn decode(reader: &mut Reader, context: Context) -> Result<Properties, DecodeError> {
    let len = reader.varint()?;
    let mut body = Reader::new(reader.take(len as usize)?);
    let mut props = Properties::default();
    // One bit per identifier seen; every identifier is below 64.
    let mut seen: u64 = 0;
    let mut user_property_bytes = 0usize;
    while !body.is_empty() {
        let raw_id = body.varint()?;
        let id = u8::try_from(raw_id).map_err(|_| DecodeError::UnknownProperty(raw_id))?;
        if !is_known(id) {
            return Err(DecodeError::UnknownProperty(raw_id));
        }
        if !context.allows(id) {
            return Err(DecodeError::PropertyNotAllowed {
                id,
                packet: context.name(),
            });
        }
        let repeatable = id == USER_PROPERTY
            || (id == SUBSCRIPTION_IDENTIFIER && context == Context::Publish { to_client: true });
        if seen & (1 << id) != 0 && !repeatable {
            return Err(DecodeError::DuplicateProperty(id));
        }
        seen |= 1 << id;
        match id {
            PAYLOAD_FORMAT_INDICATOR => props.payload_format_indicator = Some(flag(&mut body, id)?),
            MESSAGE_EXPIRY_INTERVAL => props.message_expiry_interval = Some(body.u32()?),
            CONTENT_TYPE => props.content_type = Some(body.string()?),
            RESPONSE_TOPIC => {
                let response_topic = body.string()?;
                topic::validate_topic_name(&response_topic)
                    .map_err(DecodeError::InvalidTopicName)?;
                props.response_topic = Some(response_topic);
            }
            CORRELATION_DATA => props.correlation_data = Some(body.binary()?),
            SUBSCRIPTION_IDENTIFIER => {
                // Zero is a Protocol Error (§3.8.2.1.2); the varint caps the maximum.
                let value = body.varint()?;
                if value == 0 {
                    return Err(DecodeError::InvalidPropertyValue(id));
                }
                props.subscription_identifiers.push(value);
            }
            SESSION_EXPIRY_INTERVAL => props.session_expiry_interval = Some(body.u32()?),
            ASSIGNED_CLIENT_IDENTIFIER => props.assigned_client_identifier = Some(body.string()?),
            SERVER_KEEP_ALIVE => props.server_keep_alive = Some(body.u16()?),
            AUTHENTICATION_METHOD => props.authentication_method = Some(body.string()?),
            AUTHENTICATION_DATA => props.authentication_data = Some(body.binary()?),
            REQUEST_PROBLEM_INFORMATION => {
                props.request_problem_information = Some(flag(&mut body, id)?)
            }
            WILL_DELAY_INTERVAL => props.will_delay_interval = Some(body.u32()?),
            REQUEST_RESPONSE_INFORMATION => {
                props.request_response_information = Some(flag(&mut body, id)?)
            }
            RESPONSE_INFORMATION => props.response_information = Some(body.string()?),
            SERVER_REFERENCE => props.server_reference = Some(body.string()?),
            REASON_STRING => props.reason_string = Some(body.string()?),
            RECEIVE_MAXIMUM => props.receive_maximum = Some(non_zero_u16(&mut body, id)?),
            TOPIC_ALIAS_MAXIMUM => props.topic_alias_maximum = Some(body.u16()?),
            TOPIC_ALIAS => {
                let alias = body.u16()?;
                if alias == 0 {
                    return Err(DecodeError::TopicAliasZero);
                }
                props.topic_alias = Some(alias);
            }
            MAXIMUM_QOS => props.maximum_qos = Some(flag(&mut body, id)?),
            RETAIN_AVAILABLE => props.retain_available = Some(flag(&mut body, id)?),
            USER_PROPERTY => {
                let name = body.string()?;
                let value = body.string()?;
                user_property_bytes += name.len() + value.len();
                if props.user_properties.len() >= MAX_USER_PROPERTIES
                    || user_property_bytes > MAX_USER_PROPERTY_BYTES
                {
                    return Err(DecodeError::TooManyUserProperties {
                        max: MAX_USER_PROPERTIES,
                        max_bytes: MAX_USER_PROPERTY_BYTES,
                    });
                }
                props.user_properties.push((name, value));
            }
            MAXIMUM_PACKET_SIZE => {
                let max = body.u32()?;
                if max == 0 {
                    return Err(DecodeError::InvalidPropertyValue(id));
                }
                props.maximum_packet_size = Some(max);
            }
            WILDCARD_SUBSCRIPTION_AVAILABLE => {
                props.wildcard_subscription_available = Some(flag(&mut body, id)?)
            }
            SUBSCRIPTION_IDENTIFIER_AVAILABLE => {
                props.subscription_identifiers_available = Some(flag(&mut body, id)?)
            }
            SHARED_SUBSCRIPTION_AVAILABLE => {
                props.shared_subscription_available = Some(flag(&mut body, id)?)
            }
            _ => return Err(DecodeError::UnknownProperty(raw_id)),
        }
    }
    // §3.1.2.11.10, §3.2.2.3.18, §3.15.2.2.4.
    if props.authentication_data.is_some() && props.authentication_method.is_none() {
        return Err(DecodeError::AuthDataWithoutMethod);
    }
    Ok(props)
}

fn is_known(id: u8) -> bool {
    matches!(
        id,
        0x01..=0x03
            | 0x08
            | 0x09
            | 0x0B
            | 0x11..=0x13
            | 0x15..=0x1A
            | 0x1C
            | 0x1F
            | 0x21..=0x2A
    )
}

/// A byte property that may only be 0 or 1.
fn flag(body: &mut Reader, id: u8) -> Result<u8, DecodeError> {
    match body.u8()? {
        value @ (0 | 1) => Ok(value),
        _ => Err(DecodeError::InvalidPropertyValue(id)),
    }
}

fn non_zero_u16(body: &mut Reader, id: u8) -> Result<u16, DecodeError> {
    match body.u16()? {
        0 => Err(DecodeError::InvalidPropertyValue(id)),
        value => Ok(value),
    }
}

/// Writes the property length and the properties `context` allows.
pub(crate) fn encode<S: Sink>(
    sink: &mut S,
    props: &Properties,
    context: Context,
) -> Result<(), EncodeError> {
    // Most packets carry none: one comparison instead of two passes over every
    // property (the profile's largest item per QoS 1 message, see BENCHMARKS.md).
    if *props == EMPTY {
        sink.put_u8(0);
        return Ok(());
    }
    let mut counter = Counter::default();
    encode_body(&mut counter, props, context)?;
    sink::put_varint(sink, "property length", counter.0)?;
    encode_body(sink, props, context)
}

/// No property at all.
const EMPTY: Properties = Properties {
    payload_format_indicator: None,
    message_expiry_interval: None,
    content_type: None,
    response_topic: None,
    correlation_data: None,
    subscription_identifiers: Vec::new(),
    session_expiry_interval: None,
    assigned_client_identifier: None,
    server_keep_alive: None,
    authentication_method: None,
    authentication_data: None,
    request_problem_information: None,
    will_delay_interval: None,
    request_response_information: None,
    response_information: None,
    server_reference: None,
    reason_string: None,
    receive_maximum: None,
    topic_alias_maximum: None,
    topic_alias: None,
    maximum_qos: None,
    retain_available: None,
    user_properties: Vec::new(),
    maximum_packet_size: None,
    wildcard_subscription_available: None,
    subscription_identifiers_available: None,
    shared_subscription_available: None,
};

fn encode_body<S: Sink>(
    sink: &mut S,
    props: &Properties,
    context: Context,
) -> Result<(), EncodeError> {
    let byte = |sink: &mut S, id: u8, value: Option<u8>| {
        if let Some(value) = value
            && context.allows(id)
        {
            sink.put_u8(id);
            sink.put_u8(value);
        }
    };
    byte(
        sink,
        PAYLOAD_FORMAT_INDICATOR,
        props.payload_format_indicator,
    );
    byte(
        sink,
        REQUEST_PROBLEM_INFORMATION,
        props.request_problem_information,
    );
    byte(
        sink,
        REQUEST_RESPONSE_INFORMATION,
        props.request_response_information,
    );
    byte(sink, MAXIMUM_QOS, props.maximum_qos);
    byte(sink, RETAIN_AVAILABLE, props.retain_available);
    byte(
        sink,
        WILDCARD_SUBSCRIPTION_AVAILABLE,
        props.wildcard_subscription_available,
    );
    byte(
        sink,
        SUBSCRIPTION_IDENTIFIER_AVAILABLE,
        props.subscription_identifiers_available,
    );
    byte(
        sink,
        SHARED_SUBSCRIPTION_AVAILABLE,
        props.shared_subscription_available,
    );

    let two = |sink: &mut S, id: u8, value: Option<u16>| {
        if let Some(value) = value
            && context.allows(id)
        {
            sink.put_u8(id);
            sink.put_u16(value);
        }
    };
    two(sink, SERVER_KEEP_ALIVE, props.server_keep_alive);
    two(sink, RECEIVE_MAXIMUM, props.receive_maximum);
    two(sink, TOPIC_ALIAS_MAXIMUM, props.topic_alias_maximum);
    two(sink, TOPIC_ALIAS, props.topic_alias);

    let four = |sink: &mut S, id: u8, value: Option<u32>| {
        if let Some(value) = value
            && context.allows(id)
        {
            sink.put_u8(id);
            sink.put_u32(value);
        }
    };
    four(sink, MESSAGE_EXPIRY_INTERVAL, props.message_expiry_interval);
    four(sink, SESSION_EXPIRY_INTERVAL, props.session_expiry_interval);
    four(sink, WILL_DELAY_INTERVAL, props.will_delay_interval);
    four(sink, MAXIMUM_PACKET_SIZE, props.maximum_packet_size);

    let strings = [
        (CONTENT_TYPE, "content type", &props.content_type),
        (RESPONSE_TOPIC, "response topic", &props.response_topic),
        (
            ASSIGNED_CLIENT_IDENTIFIER,
            "assigned client identifier",
            &props.assigned_client_identifier,
        ),
        (
            AUTHENTICATION_METHOD,
            "authentication method",
            &props.authentication_method,
        ),
        (
            RESPONSE_INFORMATION,
            "response information",
            &props.response_information,
        ),
        (
            SERVER_REFERENCE,
            "server reference",
            &props.server_reference,
        ),
        (REASON_STRING, "reason string", &props.reason_string),
    ];
    for (id, field, value) in strings {
        if let Some(value) = value
            && context.allows(id)
        {
            sink.put_u8(id);
            sink::put_str(sink, field, value)?;
        }
    }

    let binaries = [
        (
            CORRELATION_DATA,
            "correlation data",
            &props.correlation_data,
        ),
        (
            AUTHENTICATION_DATA,
            "authentication data",
            &props.authentication_data,
        ),
    ];
    for (id, field, value) in binaries {
        if let Some(value) = value
            && context.allows(id)
        {
            sink.put_u8(id);
            sink::put_binary(sink, field, value)?;
        }
    }

    if context.allows(SUBSCRIPTION_IDENTIFIER) {
        // A SUBSCRIBE carries at most one (§3.8.2.1.2).
        let limit = if context == Context::Subscribe {
            1
        } else {
            usize::MAX
        };
        for &id in props.subscription_identifiers.iter().take(limit) {
            if id == 0 || id > MAX_VARINT {
                return Err(EncodeError::FieldTooLong {
                    field: "subscription identifier",
                    len: id as usize,
                });
            }
            sink.put_u8(SUBSCRIPTION_IDENTIFIER);
            sink::put_varint(sink, "subscription identifier", id as usize)?;
        }
    }

    for (name, value) in &props.user_properties {
        sink.put_u8(USER_PROPERTY);
        sink::put_str(sink, "user property name", name)?;
        sink::put_str(sink, "user property value", value)?;
    }
    Ok(())
}

/// Clears every property `context` does not allow (and extra Subscription
/// Identifiers in a SUBSCRIBE): what an encode-then-decode round trip keeps.
#[cfg(test)]
pub(crate) fn restrict(props: &mut Properties, context: Context) {
    fn keep<T>(value: &mut Option<T>, context: Context, id: u8) {
        if !context.allows(id) {
            *value = None;
        }
    }
    keep(
        &mut props.payload_format_indicator,
        context,
        PAYLOAD_FORMAT_INDICATOR,
    );
    keep(
        &mut props.message_expiry_interval,
        context,
        MESSAGE_EXPIRY_INTERVAL,
    );
    keep(&mut props.content_type, context, CONTENT_TYPE);
    keep(&mut props.response_topic, context, RESPONSE_TOPIC);
    keep(&mut props.correlation_data, context, CORRELATION_DATA);
    keep(
        &mut props.session_expiry_interval,
        context,
        SESSION_EXPIRY_INTERVAL,
    );
    keep(
        &mut props.assigned_client_identifier,
        context,
        ASSIGNED_CLIENT_IDENTIFIER,
    );
    keep(&mut props.server_keep_alive, context, SERVER_KEEP_ALIVE);
    keep(
        &mut props.authentication_method,
        context,
        AUTHENTICATION_METHOD,
    );
    keep(&mut props.authentication_data, context, AUTHENTICATION_DATA);
    keep(
        &mut props.request_problem_information,
        context,
        REQUEST_PROBLEM_INFORMATION,
    );
    keep(&mut props.will_delay_interval, context, WILL_DELAY_INTERVAL);
    keep(
        &mut props.request_response_information,
        context,
        REQUEST_RESPONSE_INFORMATION,
    );
    keep(
        &mut props.response_information,
        context,
        RESPONSE_INFORMATION,
    );
    keep(&mut props.server_reference, context, SERVER_REFERENCE);
    keep(&mut props.reason_string, context, REASON_STRING);
    keep(&mut props.receive_maximum, context, RECEIVE_MAXIMUM);
    keep(&mut props.topic_alias_maximum, context, TOPIC_ALIAS_MAXIMUM);
    keep(&mut props.topic_alias, context, TOPIC_ALIAS);
    keep(&mut props.maximum_qos, context, MAXIMUM_QOS);
    keep(&mut props.retain_available, context, RETAIN_AVAILABLE);
    keep(&mut props.maximum_packet_size, context, MAXIMUM_PACKET_SIZE);
    keep(
        &mut props.wildcard_subscription_available,
        context,
        WILDCARD_SUBSCRIPTION_AVAILABLE,
    );
    keep(
        &mut props.subscription_identifiers_available,
        context,
        SUBSCRIPTION_IDENTIFIER_AVAILABLE,
    );
    keep(
        &mut props.shared_subscription_available,
        context,
        SHARED_SUBSCRIPTION_AVAILABLE,
    );
    if !context.allows(SUBSCRIPTION_IDENTIFIER) {
        props.subscription_identifiers.clear();
    } else if context == Context::Subscribe {
        props.subscription_identifiers.truncate(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::{Bytes, BytesMut};

    fn decode_bytes(wire: &[u8], context: Context) -> Result<Properties, DecodeError> {
        let mut reader = Reader::new(Bytes::copy_from_slice(wire));
        let props = decode(&mut reader, context)?;
        reader.finish()?;
        Ok(props)
    }

    #[test]
    fn duplicates_are_refused_except_user_properties() {
        // Vector I: Message Expiry Interval twice.
        let wire = [10, 0x02, 0, 0, 0, 1, 0x02, 0, 0, 0, 2];
        assert!(matches!(
            decode_bytes(&wire, Context::Publish { to_client: false }),
            Err(DecodeError::DuplicateProperty(0x02))
        ));
        let wire = [12, 0x26, 0, 1, b'a', 0, 0, 0x26, 0, 1, b'a', 0, 0];
        let props = decode_bytes(&wire, Context::Publish { to_client: false }).unwrap();
        assert_eq!(props.user_properties.len(), 2);
    }

    #[test]
    fn subscription_identifiers_depend_on_direction_and_packet() {
        let wire = [4, 0x0B, 1, 0x0B, 2];
        let props = decode_bytes(&wire, Context::Publish { to_client: true }).unwrap();
        assert_eq!(props.subscription_identifiers, vec![1, 2]);
        assert!(matches!(
            decode_bytes(&[2, 0x0B, 1], Context::Publish { to_client: false }),
            Err(DecodeError::PropertyNotAllowed { id: 0x0B, .. })
        ));
        assert!(matches!(
            decode_bytes(&wire, Context::Subscribe),
            Err(DecodeError::DuplicateProperty(0x0B))
        ));
        assert!(matches!(
            decode_bytes(&[2, 0x0B, 0], Context::Subscribe),
            Err(DecodeError::InvalidPropertyValue(0x0B))
        ));
        assert_eq!(
            decode_bytes(&[5, 0x0B, 0xff, 0xff, 0xff, 0x7f], Context::Subscribe)
                .unwrap()
                .subscription_identifiers,
            vec![MAX_VARINT]
        );
    }

    #[test]
    fn properties_outside_the_allowlist_are_refused() {
        // Vector Q: Session Expiry Interval in PUBLISH.
        assert!(matches!(
            decode_bytes(
                &[5, 0x11, 0, 0, 0, 1],
                Context::Publish { to_client: false }
            ),
            Err(DecodeError::PropertyNotAllowed { id: 0x11, .. })
        ));
        assert!(matches!(
            decode_bytes(&[2, 0x24, 1], Context::Connect),
            Err(DecodeError::PropertyNotAllowed { id: 0x24, .. })
        ));
        assert!(matches!(
            decode_bytes(&[2, 0x07, 1], Context::Connect),
            Err(DecodeError::UnknownProperty(0x07))
        ));
    }

    #[test]
    fn value_rules() {
        let cases: [(&[u8], Context); 6] = [
            (&[2, 0x01, 2], Context::Publish { to_client: false }),
            (&[2, 0x17, 2], Context::Connect),
            (&[3, 0x21, 0, 0], Context::Connect),
            (&[5, 0x27, 0, 0, 0, 0], Context::Connect),
            (&[2, 0x25, 7], Context::ConnAck),
            (&[5, 0x16, 0, 2, 1, 2], Context::Connect),
        ];
        for (wire, context) in cases {
            let err = decode_bytes(wire, context).unwrap_err();
            assert_eq!(
                err.reason_code(),
                crate::protocol::ReasonCode::ProtocolError,
                "{wire:?}: {err}"
            );
        }
        assert!(matches!(
            decode_bytes(&[3, 0x23, 0, 0], Context::Publish { to_client: false }),
            Err(DecodeError::TopicAliasZero)
        ));
        assert!(matches!(
            decode_bytes(&[6, 0x08, 0, 3, b'a', b'/', b'#'], Context::Will),
            Err(DecodeError::InvalidTopicName(_))
        ));
    }

    #[test]
    fn property_length_must_stay_inside_the_packet() {
        assert!(matches!(
            decode_bytes(&[9, 0x01, 1], Context::Will),
            Err(DecodeError::Truncated)
        ));
        // A string that runs past the property length but not past the packet.
        assert!(matches!(
            decode_bytes(&[3, 0x03, 0, 2, b'a', b'b'], Context::Will),
            Err(DecodeError::Truncated)
        ));
    }

    #[test]
    fn user_properties_are_bounded() {
        let mut props = Properties::default();
        for i in 0..=MAX_USER_PROPERTIES {
            props.user_properties.push((format!("k{i}"), String::new()));
        }
        let mut wire = BytesMut::new();
        encode(&mut wire, &props, Context::Connect).unwrap();
        assert!(matches!(
            decode_bytes(&wire, Context::Connect),
            Err(DecodeError::TooManyUserProperties { .. })
        ));
        props.user_properties.pop();
        let mut wire = BytesMut::new();
        encode(&mut wire, &props, Context::Connect).unwrap();
        assert_eq!(decode_bytes(&wire, Context::Connect).unwrap(), props);
    }

    #[test]
    fn encoding_drops_properties_the_packet_may_not_carry() {
        let props = Properties {
            topic_alias: Some(3),
            reason_string: Some("why".into()),
            subscription_identifiers: vec![4, 5],
            ..Properties::default()
        };
        let mut wire = BytesMut::new();
        encode(&mut wire, &props, Context::Publish { to_client: false }).unwrap();
        let decoded = decode_bytes(&wire, Context::Publish { to_client: false }).unwrap();
        assert_eq!(
            decoded,
            Properties {
                topic_alias: Some(3),
                ..Properties::default()
            }
        );
        let mut wire = BytesMut::new();
        encode(&mut wire, &props, Context::Subscribe).unwrap();
        let decoded = decode_bytes(&wire, Context::Subscribe).unwrap();
        assert_eq!(decoded.subscription_identifiers, vec![4]);
    }
}

/// Message properties as bytes for storage: the MQTT 5 wire encoding of the
/// properties a PUBLISH carries (length-prefixed). The store keeps them opaque.
pub fn to_blob(props: &Properties) -> Result<Vec<u8>, EncodeError> {
    let mut out = BytesMut::new();
    encode(&mut out, props, Context::Publish { to_client: true })?;
    Ok(out.to_vec())
}

/// Reads back what [`to_blob`] wrote, with the codec's own checks.
pub fn from_blob(blob: &[u8]) -> Result<Properties, DecodeError> {
    let mut reader = Reader::new(Bytes::copy_from_slice(blob));
    decode(&mut reader, Context::Publish { to_client: true })
}

#[cfg(test)]
mod blob_tests {
    use super::*;

    #[test]
    fn blobs_round_trip() {
        let props = Properties {
            content_type: Some("text/plain".into()),
            correlation_data: Some(Bytes::from_static(b"c")),
            user_properties: vec![("k".into(), "v".into())],
            ..Properties::default()
        };
        assert_eq!(from_blob(&to_blob(&props).unwrap()).unwrap(), props);
        assert_eq!(
            from_blob(&to_blob(&Properties::default()).unwrap()).unwrap(),
            Properties::default()
        );
    }
}
