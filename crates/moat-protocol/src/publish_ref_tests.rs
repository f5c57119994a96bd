//! Unit tests for encoding a PUBLISH from borrowed parts ([`PublishRef`]): the same
//! bytes as the owned [`Publish`] in every version and with or without properties,
//! Subscription Identifiers and expiry, and the same Maximum Packet Size refusal.

use bytes::{Bytes, BytesMut};

use super::codec_tests::frame;
use super::*;

fn server(version: ProtocolVersion) -> Codec {
    let mut codec = Codec::new(Role::Server, 1024 * 1024);
    codec.set_version(version);
    codec
}

fn owned_bytes(version: ProtocolVersion, publish: &Publish) -> Vec<u8> {
    let mut wire = BytesMut::new();
    server(version)
        .encode(&Packet::Publish(publish.clone()), &mut wire)
        .unwrap();
    wire.to_vec()
}

fn borrowed_bytes(version: ProtocolVersion, publish: &PublishRef<'_>) -> Vec<u8> {
    let mut wire = BytesMut::new();
    server(version).encode_publish(publish, &mut wire).unwrap();
    wire.to_vec()
}

fn passthrough() -> Properties {
    Properties {
        content_type: Some("text/plain".into()),
        correlation_data: Some(Bytes::from_static(b"\x01\x02")),
        user_properties: vec![("room".into(), "kitchen".into())],
        ..Properties::default()
    }
}

#[test]
fn a_borrowed_publish_is_byte_identical_to_the_owned_one() {
    let versions = [
        ProtocolVersion::V31,
        ProtocolVersion::V311,
        ProtocolVersion::V5,
    ];
    let sets = [Properties::default(), passthrough()];
    let id_lists: [&[u32]; 3] = [&[], &[7], &[1, 268_435_455]];
    for version in versions {
        for qos in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce] {
            for shared in &sets {
                for ids in id_lists {
                    for expiry in [None, Some(1), Some(3600)] {
                        let packet_id = if qos == QoS::AtMostOnce { 0 } else { 513 };
                        let owned = Publish {
                            dup: qos != QoS::AtMostOnce,
                            qos,
                            retain: true,
                            topic: "home/kitchen/temp".into(),
                            packet_id,
                            payload: Bytes::from_static(b"21.5"),
                            properties: Properties {
                                subscription_identifiers: ids.to_vec(),
                                message_expiry_interval: expiry,
                                ..shared.clone()
                            },
                        };
                        let empty = *shared == Properties::default();
                        let borrowed = PublishRef {
                            dup: owned.dup,
                            qos,
                            retain: true,
                            topic: "home/kitchen/temp",
                            packet_id,
                            payload: b"21.5",
                            properties: (!empty).then_some(shared),
                            subscription_identifiers: ids,
                            message_expiry_interval: expiry,
                        };
                        let case = format!("{version:?} {qos:?} {shared:?} {ids:?} {expiry:?}");
                        let expected = owned_bytes(version, &owned);
                        assert_eq!(borrowed_bytes(version, &borrowed), expected, "{case}");
                        // An empty set given as `Some` is the same as `None`.
                        let some_empty = PublishRef {
                            properties: Some(shared),
                            ..borrowed
                        };
                        assert_eq!(borrowed_bytes(version, &some_empty), expected, "{case}");
                    }
                }
            }
        }
    }
}

#[test]
fn the_shared_sets_own_identifiers_and_expiry_are_not_written() {
    let stale = Properties {
        subscription_identifiers: vec![42],
        message_expiry_interval: Some(999),
        ..Properties::default()
    };
    let publish = PublishRef {
        dup: false,
        qos: QoS::AtMostOnce,
        retain: false,
        topic: "a",
        packet_id: 0,
        payload: b"x",
        properties: Some(&stale),
        subscription_identifiers: &[3],
        message_expiry_interval: None,
    };
    // Topic "a", properties: length 2, Subscription Identifier 3; payload "x".
    let expected = frame(0x30, &[0x00, 0x01, b'a', 0x02, 0x0b, 0x03, b'x']);
    assert_eq!(borrowed_bytes(ProtocolVersion::V5, &publish), expected);
    // 3.1.1 has no properties at all.
    let expected = frame(0x30, &[0x00, 0x01, b'a', b'x']);
    assert_eq!(borrowed_bytes(ProtocolVersion::V311, &publish), expected);
}

#[test]
fn a_borrowed_publish_over_the_peer_maximum_is_refused_and_nothing_written() {
    let props = passthrough();
    let publish = PublishRef {
        dup: false,
        qos: QoS::AtLeastOnce,
        retain: false,
        topic: "sensors/kitchen",
        packet_id: 9,
        payload: &[7u8; 100],
        properties: Some(&props),
        subscription_identifiers: &[5],
        message_expiry_interval: Some(60),
    };
    let size = borrowed_bytes(ProtocolVersion::V5, &publish).len();
    let mut codec = server(ProtocolVersion::V5);
    codec.set_max_outgoing_packet_size(Some(size as u32));
    let mut wire = BytesMut::new();
    codec.encode_publish(&publish, &mut wire).unwrap();
    assert_eq!(wire.len(), size);
    codec.set_max_outgoing_packet_size(Some(size as u32 - 1));
    let mut wire = BytesMut::new();
    let err = codec.encode_publish(&publish, &mut wire).unwrap_err();
    assert!(
        matches!(err, EncodeError::TooLarge { size: s, max } if s == size as u64 && max == size as u32 - 1),
        "{err:?}"
    );
    assert!(wire.is_empty());
}
