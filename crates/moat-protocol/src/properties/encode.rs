//! Writing a property set: the length (counted by a first pass; an empty set is one
//! zero byte), then the properties the packet's context allows, in identifier order.
//! A delivery's PUBLISH writes the message's shared set with its own Subscription
//! Identifiers and remaining expiry ([`PerDelivery`]), without copying the set.

use super::*;
use crate::sink::{self, Counter, Sink};

/// The two PUBLISH properties that differ per delivery of one message: they are
/// written from here, and the same fields of the property set are ignored.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct PerDelivery<'a> {
    pub subscription_identifiers: &'a [u32],
    pub message_expiry_interval: Option<u32>,
}

impl<'a> PerDelivery<'a> {
    /// The set's own values: what a packet that is not a delivery carries.
    pub(crate) fn of(props: &'a Properties) -> PerDelivery<'a> {
        PerDelivery {
            subscription_identifiers: &props.subscription_identifiers,
            message_expiry_interval: props.message_expiry_interval,
        }
    }

    fn is_empty(&self) -> bool {
        self.subscription_identifiers.is_empty() && self.message_expiry_interval.is_none()
    }
}

/// Writes the property length and the properties `context` allows.
pub(crate) fn encode<S: Sink>(
    sink: &mut S,
    props: &Properties,
    context: Context,
) -> Result<(), EncodeError> {
    encode_with(sink, Some(props), PerDelivery::of(props), context)
}

/// [`encode`] for a set that may be absent (`None`: no property but `per`'s), with
/// the per-delivery values taken from `per`.
pub(crate) fn encode_with<S: Sink>(
    sink: &mut S,
    props: Option<&Properties>,
    per: PerDelivery<'_>,
    context: Context,
) -> Result<(), EncodeError> {
    // Most packets carry none: one zero byte, without two passes over every
    // property (the profile's largest item per QoS 1 message, see BENCHMARKS.md).
    // An absent set costs nothing; a present one is compared once.
    let props = match props {
        Some(props) if *props != EMPTY => props,
        _ if per.is_empty() => {
            sink.put_u8(0);
            return Ok(());
        }
        _ => &EMPTY_SET,
    };
    let mut counter = Counter::default();
    encode_body(&mut counter, props, per, context)?;
    sink::put_varint(sink, "property length", counter.0)?;
    encode_body(sink, props, per, context)
}

/// [`EMPTY`] with an address, for a delivery whose message carries no property.
static EMPTY_SET: Properties = EMPTY;

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
    per: PerDelivery<'_>,
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
    four(sink, MESSAGE_EXPIRY_INTERVAL, per.message_expiry_interval);
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
        for &id in per.subscription_identifiers.iter().take(limit) {
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
