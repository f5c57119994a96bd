//! Property round trips, the allowlist, and the storage blob; `restrict` says what an
//! encode-then-decode round trip keeps (the proptests use it).

use super::*;
use bytes::{Bytes, BytesMut};

/// Clears every property `context` does not allow (and extra Subscription
/// Identifiers in a SUBSCRIBE): what an encode-then-decode round trip keeps.
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
            crate::ReasonCode::ProtocolError,
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

#[test]
fn blobs_round_trip() {
    let props = Properties {
        content_type: Some("text/plain".into()),
        correlation_data: Some(Bytes::from_static(b"c")),
        user_properties: vec![("k".into(), "v".into())],
        ..Properties::default()
    };
    assert_eq!(
        properties_from_blob(&properties_to_blob(&props).unwrap()).unwrap(),
        props
    );
    assert_eq!(
        properties_from_blob(&properties_to_blob(&Properties::default()).unwrap()).unwrap(),
        Properties::default()
    );
}
