//! Property tests for the codec: arbitrary valid packets round-trip in both versions
//! and both directions; every truncation and every single-bit flip of a corpus of
//! valid packets either decodes (to something that re-encodes stably) or fails,
//! never panics; and a stream split at arbitrary points frames the same packets.

use bytes::{Bytes, BytesMut};
use proptest::prelude::*;
use proptest::sample::select;

use super::codec_tests::{connect_bytes, connected_server};
use super::decode::reason_allowed;
use super::header::PacketType;
use super::properties::{self, Context};
use super::varint::MAX_VARINT;
use super::*;

const MIB: u32 = 1024 * 1024;

// ---- Strategies ------------------------------------------------------------------

fn text() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9 _.é€-]{0,8}"
}

fn topic_name() -> impl Strategy<Value = String> {
    "\\$?[a-zA-Z0-9é_-]{1,6}(/[a-zA-Z0-9é_-]{0,6}){0,3}"
}

fn topic_filter() -> impl Strategy<Value = String> {
    let level = prop_oneof!["[a-z0-9]{0,4}", Just("+".to_string())];
    (
        proptest::collection::vec(level, 1..4),
        any::<bool>(),
        proptest::option::weighted(0.2, "[a-z]{1,4}"),
    )
        .prop_map(|(levels, multi, share)| {
            let mut filter = levels.join("/");
            if multi {
                filter.push_str("/#");
            }
            if filter.is_empty() {
                filter.push('#');
            }
            match share {
                Some(group) => format!("$share/{group}/{filter}"),
                None => filter,
            }
        })
}

fn binary(max: usize) -> impl Strategy<Value = Bytes> {
    proptest::collection::vec(any::<u8>(), 0..max).prop_map(Bytes::from)
}

fn flag() -> impl Strategy<Value = Option<u8>> {
    proptest::option::of(0u8..=1)
}

fn qos() -> impl Strategy<Value = QoS> {
    prop_oneof![
        Just(QoS::AtMostOnce),
        Just(QoS::AtLeastOnce),
        Just(QoS::ExactlyOnce)
    ]
}

/// Valid properties for `context` in `version` (none in 3.1.1).
fn properties(version: ProtocolVersion, context: Context) -> BoxedStrategy<Properties> {
    if !version.is_v5() {
        return Just(Properties::default()).boxed();
    }
    use proptest::option::of;
    let group1 = (
        flag(),
        of(any::<u32>()),
        of(text()),
        of(topic_name()),
        of(binary(8)),
        proptest::collection::vec(1..=MAX_VARINT, 0..3),
    );
    let group2 = (
        of(any::<u32>()),
        of(text()),
        of(any::<u16>()),
        of(text()),
        of(binary(8)),
        flag(),
    );
    let group3 = (
        of(any::<u32>()),
        flag(),
        of(text()),
        of(text()),
        of(text()),
        of(1..=u16::MAX),
    );
    let group4 = (
        of(any::<u16>()),
        of(1..=u16::MAX),
        flag(),
        flag(),
        proptest::collection::vec((text(), text()), 0..3),
        of(1..=u32::MAX),
    );
    let group5 = (flag(), flag(), flag());
    (group1, group2, group3, group4, group5)
        .prop_map(move |(g1, g2, g3, g4, g5)| {
            let mut props = Properties {
                payload_format_indicator: g1.0,
                message_expiry_interval: g1.1,
                content_type: g1.2,
                response_topic: g1.3,
                correlation_data: g1.4,
                subscription_identifiers: g1.5,
                session_expiry_interval: g2.0,
                assigned_client_identifier: g2.1,
                server_keep_alive: g2.2,
                authentication_method: g2.3,
                authentication_data: g2.4,
                request_problem_information: g2.5,
                will_delay_interval: g3.0,
                request_response_information: g3.1,
                response_information: g3.2,
                server_reference: g3.3,
                reason_string: g3.4,
                receive_maximum: g3.5,
                topic_alias_maximum: g4.0,
                topic_alias: g4.1,
                maximum_qos: g4.2,
                retain_available: g4.3,
                user_properties: g4.4,
                maximum_packet_size: g4.5,
                wildcard_subscription_available: g5.0,
                subscription_identifiers_available: g5.1,
                shared_subscription_available: g5.2,
            };
            properties::restrict(&mut props, context);
            if props.authentication_data.is_some() && props.authentication_method.is_none() {
                props.authentication_method = Some("method".into());
            }
            props
        })
        .boxed()
}

/// A reason code MQTT 5 allows in `packet_type`, or the 3.1.1 canonical ones.
fn reason(version: ProtocolVersion, packet_type: PacketType) -> BoxedStrategy<ReasonCode> {
    let codes: Vec<ReasonCode> = match (version, packet_type) {
        (ProtocolVersion::V311 | ProtocolVersion::V31, PacketType::ConnAck) => vec![
            ReasonCode::Success,
            ReasonCode::UnsupportedProtocolVersion,
            ReasonCode::ClientIdentifierNotValid,
            ReasonCode::ServerUnavailable,
            ReasonCode::BadUserNameOrPassword,
            ReasonCode::NotAuthorized,
        ],
        (ProtocolVersion::V311 | ProtocolVersion::V31, PacketType::SubAck) => vec![
            ReasonCode::Success,
            ReasonCode::GrantedQoS1,
            ReasonCode::GrantedQoS2,
            ReasonCode::UnspecifiedError,
        ],
        (ProtocolVersion::V311 | ProtocolVersion::V31, _) => vec![ReasonCode::Success],
        (ProtocolVersion::V5, _) => (0u8..=255)
            .filter(|&code| reason_allowed(packet_type, code))
            .filter_map(ReasonCode::from_u8)
            .collect(),
    };
    select(codes).boxed()
}

/// Every version a client may speak.
fn version() -> impl Strategy<Value = ProtocolVersion> {
    prop_oneof![
        Just(ProtocolVersion::V31),
        Just(ProtocolVersion::V311),
        Just(ProtocolVersion::V5)
    ]
}

/// The versions whose server packets round-trip exactly (3.1 has no session-present
/// flag and no SUBACK failure code, so those cannot).
fn version_with_full_acks() -> impl Strategy<Value = ProtocolVersion> {
    prop_oneof![Just(ProtocolVersion::V311), Just(ProtocolVersion::V5)]
}

fn packet_id() -> impl Strategy<Value = u16> {
    1..=u16::MAX
}

fn connect(version: ProtocolVersion) -> impl Strategy<Value = Packet> {
    let will = (
        topic_name(),
        binary(16),
        qos(),
        any::<bool>(),
        properties(version, Context::Will),
    )
        .prop_map(|(topic, payload, qos, retain, properties)| Will {
            topic,
            payload,
            qos,
            retain,
            properties,
        });
    (
        any::<bool>(),
        any::<u16>(),
        text(),
        proptest::option::of(will),
        proptest::option::of(text()),
        proptest::option::of(binary(8)),
        properties(version, Context::Connect),
    )
        .prop_map(
            move |(clean_start, keep_alive, client_id, will, username, password, properties)| {
                // 3.1.1 forbids a password without a user name.
                let password = match (version, &username) {
                    (ProtocolVersion::V311 | ProtocolVersion::V31, None) => None,
                    _ => password,
                };
                Packet::Connect(Box::new(Connect {
                    protocol: version,
                    clean_start,
                    keep_alive,
                    client_id,
                    will,
                    username,
                    password,
                    properties,
                }))
            },
        )
}

fn publish(version: ProtocolVersion, to_client: bool) -> impl Strategy<Value = Packet> {
    (
        qos(),
        any::<bool>(),
        any::<bool>(),
        topic_name(),
        any::<bool>(),
        packet_id(),
        binary(32),
        properties(version, Context::Publish { to_client }),
    )
        .prop_map(
            |(qos, dup, retain, topic, drop_topic, id, payload, properties)| {
                let at_most_once = qos == QoS::AtMostOnce;
                // An alias may stand in for the topic.
                let topic = if drop_topic && properties.topic_alias.is_some() {
                    String::new()
                } else {
                    topic
                };
                Packet::Publish(Publish {
                    dup: dup && !at_most_once,
                    qos,
                    retain,
                    topic: topic.into(),
                    packet_id: if at_most_once { 0 } else { id },
                    payload,
                    properties,
                })
            },
        )
}

fn ack(version: ProtocolVersion, packet_type: PacketType) -> impl Strategy<Value = Packet> {
    (
        packet_id(),
        reason(version, packet_type),
        properties(version, Context::Ack),
    )
        .prop_map(move |(packet_id, reason, properties)| {
            let ack = Ack {
                packet_id,
                reason,
                properties,
            };
            match packet_type {
                PacketType::PubAck => Packet::PubAck(ack),
                PacketType::PubRec => Packet::PubRec(ack),
                PacketType::PubRel => Packet::PubRel(ack),
                _ => Packet::PubComp(ack),
            }
        })
}

fn subscribe(version: ProtocolVersion) -> impl Strategy<Value = Packet> {
    let v5 = version == ProtocolVersion::V5;
    let retain_handling = prop_oneof![
        Just(RetainHandling::SendAtSubscribe),
        Just(RetainHandling::SendIfNew),
        Just(RetainHandling::DoNotSend),
    ];
    let filter = (
        topic_filter(),
        qos(),
        any::<bool>(),
        any::<bool>(),
        retain_handling,
    )
        .prop_map(move |(filter, qos, no_local, rap, retain_handling)| {
            let shared = filter.starts_with("$share/");
            SubscribeFilter {
                filter,
                options: SubscriptionOptions {
                    qos,
                    no_local: v5 && no_local && !shared,
                    retain_as_published: v5 && rap,
                    retain_handling: if v5 {
                        retain_handling
                    } else {
                        RetainHandling::SendAtSubscribe
                    },
                },
            }
        });
    (
        packet_id(),
        proptest::collection::vec(filter, 1..4),
        properties(version, Context::Subscribe),
    )
        .prop_map(|(packet_id, filters, properties)| {
            Packet::Subscribe(Subscribe {
                packet_id,
                filters,
                properties,
            })
        })
}

fn unsubscribe(version: ProtocolVersion) -> impl Strategy<Value = Packet> {
    (
        packet_id(),
        proptest::collection::vec(topic_filter(), 1..4),
        properties(version, Context::Unsubscribe),
    )
        .prop_map(|(packet_id, filters, properties)| {
            Packet::Unsubscribe(Unsubscribe {
                packet_id,
                filters,
                properties,
            })
        })
}

fn disconnect(version: ProtocolVersion) -> impl Strategy<Value = Packet> {
    (
        reason(version, PacketType::Disconnect),
        properties(version, Context::Disconnect),
    )
        .prop_map(|(reason, properties)| Packet::Disconnect(Disconnect { reason, properties }))
}

fn auth() -> impl Strategy<Value = Packet> {
    (
        reason(ProtocolVersion::V5, PacketType::Auth),
        properties(ProtocolVersion::V5, Context::Auth),
    )
        .prop_map(|(reason, properties)| Packet::Auth(Auth { reason, properties }))
}

/// Packets after CONNECT that a client sends to a server.
fn to_server(version: ProtocolVersion) -> BoxedStrategy<Packet> {
    let common = prop_oneof![
        publish(version, false),
        ack(version, PacketType::PubAck),
        ack(version, PacketType::PubRec),
        ack(version, PacketType::PubRel),
        ack(version, PacketType::PubComp),
        subscribe(version),
        unsubscribe(version),
        Just(Packet::PingReq),
        disconnect(version),
    ];
    match version {
        ProtocolVersion::V311 | ProtocolVersion::V31 => common.boxed(),
        ProtocolVersion::V5 => prop_oneof![9 => common, 1 => auth()].boxed(),
    }
}

fn connack(version: ProtocolVersion) -> impl Strategy<Value = Packet> {
    (
        any::<bool>(),
        reason(version, PacketType::ConnAck),
        properties(version, Context::ConnAck),
    )
        .prop_map(|(session_present, reason, properties)| {
            Packet::ConnAck(ConnAck {
                session_present: session_present && reason == ReasonCode::Success,
                reason,
                properties,
            })
        })
}

fn suback(version: ProtocolVersion) -> impl Strategy<Value = Packet> {
    (
        packet_id(),
        proptest::collection::vec(reason(version, PacketType::SubAck), 1..4),
        properties(version, Context::SubAck),
    )
        .prop_map(|(packet_id, reasons, properties)| {
            Packet::SubAck(SubAck {
                packet_id,
                reasons,
                properties,
            })
        })
}

fn unsuback(version: ProtocolVersion) -> impl Strategy<Value = Packet> {
    let v5 = version == ProtocolVersion::V5;
    (
        packet_id(),
        proptest::collection::vec(reason(version, PacketType::UnsubAck), 1..4),
        properties(version, Context::UnsubAck),
    )
        .prop_map(move |(packet_id, reasons, properties)| {
            Packet::UnsubAck(UnsubAck {
                packet_id,
                reasons: if v5 { reasons } else { Vec::new() },
                properties,
            })
        })
}

/// Packets a server sends to a client.
fn to_client(version: ProtocolVersion) -> BoxedStrategy<Packet> {
    let common = prop_oneof![
        connack(version),
        publish(version, true),
        ack(version, PacketType::PubAck),
        ack(version, PacketType::PubRec),
        ack(version, PacketType::PubRel),
        ack(version, PacketType::PubComp),
        suback(version),
        unsuback(version),
        Just(Packet::PingResp),
        disconnect(version),
    ];
    match version {
        ProtocolVersion::V311 | ProtocolVersion::V31 => common.boxed(),
        ProtocolVersion::V5 => prop_oneof![10 => common, 1 => auth()].boxed(),
    }
}

// ---- Helpers ---------------------------------------------------------------------

fn encoder(role: Role, version: ProtocolVersion) -> Codec {
    let mut codec = Codec::new(role, MIB);
    codec.set_version(version);
    codec
}

fn encode(codec: &mut Codec, packet: &Packet) -> Vec<u8> {
    let mut buf = BytesMut::new();
    codec.encode(packet, &mut buf).unwrap();
    buf.to_vec()
}

/// Decodes until the buffer runs dry or an error; at most one packet per 2 bytes.
fn decode_stream(codec: &mut Codec, wire: &[u8]) -> Result<Vec<Packet>, DecodeError> {
    let mut buf = BytesMut::from(wire);
    let mut packets = Vec::new();
    for _ in 0..=wire.len() {
        match codec.decode(&mut buf)? {
            Some(packet) => packets.push(packet),
            None => return Ok(packets),
        }
    }
    panic!("decoder did not stop on {wire:?}");
}

/// A decoder in the state a `sample` is decoded in: a server that has seen a CONNECT
/// (unless the sample is one), or a client of that version.
fn decoder_for(sample: &Sample) -> Codec {
    match (sample.role, sample.is_connect) {
        (Role::Server, true) => Codec::new(Role::Server, MIB),
        (Role::Server, false) => connected_server(sample.version),
        (Role::Client, _) => encoder(Role::Client, sample.version),
    }
}

struct Sample {
    /// The role that decodes it.
    role: Role,
    version: ProtocolVersion,
    is_connect: bool,
    wire: Vec<u8>,
}

/// Whatever a mutated input decoded to must survive encode → decode unchanged.
fn assert_stable(decoder: &Codec, role: Role, packets: &[Packet]) {
    let Some(version) = decoder.version() else {
        assert!(packets.is_empty());
        return;
    };
    let sender = match role {
        Role::Server => Role::Client,
        Role::Client => Role::Server,
    };
    for packet in packets {
        let wire = encode(&mut encoder(sender, version), packet);
        let mut fresh = match (role, packet) {
            (Role::Server, Packet::Connect(_)) => Codec::new(Role::Server, MIB),
            (Role::Server, _) => connected_server(version),
            (Role::Client, _) => encoder(Role::Client, version),
        };
        let again = decode_stream(&mut fresh, &wire).unwrap();
        assert_eq!(again, vec![packet.clone()]);
    }
}

fn corpus() -> Vec<Sample> {
    use super::codec_tests::frame;
    let mut samples = Vec::new();
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    for version in [ProtocolVersion::V311, ProtocolVersion::V5] {
        let v5 = version == ProtocolVersion::V5;
        samples.push(Sample {
            role: Role::Server,
            version,
            is_connect: true,
            wire: connect_bytes(version),
        });
        // A CONNECT with a will, credentials and (v5) properties everywhere.
        let props = if v5 {
            Properties {
                session_expiry_interval: Some(10),
                receive_maximum: Some(5),
                authentication_method: Some("m".into()),
                authentication_data: Some(Bytes::from_static(b"d")),
                user_properties: vec![("k".into(), "v".into())],
                ..Properties::default()
            }
        } else {
            Properties::default()
        };
        let will_props = if v5 {
            Properties {
                will_delay_interval: Some(3),
                payload_format_indicator: Some(1),
                content_type: Some("text/plain".into()),
                response_topic: Some("r/t".into()),
                correlation_data: Some(Bytes::from_static(b"c")),
                ..Properties::default()
            }
        } else {
            Properties::default()
        };
        let full_connect = Packet::Connect(Box::new(Connect {
            protocol: version,
            clean_start: true,
            keep_alive: 30,
            client_id: "dev-1".into(),
            will: Some(Will {
                topic: "status/dev-1".into(),
                payload: Bytes::from_static(b"gone"),
                qos: QoS::AtLeastOnce,
                retain: true,
                properties: will_props,
            }),
            username: Some("dev".into()),
            password: Some(Bytes::from_static(b"pw")),
            properties: props,
        }));
        samples.push(Sample {
            role: Role::Server,
            version,
            is_connect: true,
            wire: encode(&mut encoder(Role::Client, version), &full_connect),
        });
        let publish_props = if v5 {
            Properties {
                message_expiry_interval: Some(60),
                topic_alias: Some(2),
                user_properties: vec![("a".into(), "b".into())],
                ..Properties::default()
            }
        } else {
            Properties::default()
        };
        let publish = Packet::Publish(Publish {
            dup: true,
            qos: QoS::ExactlyOnce,
            retain: true,
            topic: "home/kitchen/temp".into(),
            packet_id: 7,
            payload: Bytes::from_static(b"21.5"),
            properties: publish_props,
        });
        samples.push(Sample {
            role: Role::Server,
            version,
            is_connect: false,
            wire: encode(&mut encoder(Role::Client, version), &publish),
        });
        let subscribe = Packet::Subscribe(Subscribe {
            packet_id: 3,
            filters: vec![
                SubscribeFilter {
                    filter: "home/+/temp".into(),
                    options: SubscriptionOptions {
                        qos: QoS::AtLeastOnce,
                        no_local: v5,
                        retain_as_published: v5,
                        retain_handling: if v5 {
                            RetainHandling::DoNotSend
                        } else {
                            RetainHandling::SendAtSubscribe
                        },
                    },
                },
                SubscribeFilter {
                    filter: "$share/g/#".into(),
                    options: SubscriptionOptions {
                        qos: QoS::ExactlyOnce,
                        no_local: false,
                        retain_as_published: false,
                        retain_handling: RetainHandling::SendAtSubscribe,
                    },
                },
            ],
            properties: if v5 {
                Properties {
                    subscription_identifiers: vec![300],
                    ..Properties::default()
                }
            } else {
                Properties::default()
            },
        });
        samples.push(Sample {
            role: Role::Server,
            version,
            is_connect: false,
            wire: encode(&mut encoder(Role::Client, version), &subscribe),
        });
        let unsubscribe = Packet::Unsubscribe(Unsubscribe {
            packet_id: 4,
            filters: vec!["home/#".into()],
            properties: Properties::default(),
        });
        samples.push(Sample {
            role: Role::Server,
            version,
            is_connect: false,
            wire: encode(&mut encoder(Role::Client, version), &unsubscribe),
        });
        let pubrel = Packet::PubRel(Ack::new(7, ReasonCode::Success));
        samples.push(Sample {
            role: Role::Server,
            version,
            is_connect: false,
            wire: encode(&mut encoder(Role::Client, version), &pubrel),
        });
        // Server-to-client packets, generated from the strategy for variety.
        for _ in 0..2 {
            let packet = to_client(version).new_tree(&mut runner).unwrap().current();
            samples.push(Sample {
                role: Role::Client,
                version,
                is_connect: false,
                wire: encode(&mut encoder(Role::Server, version), &packet),
            });
        }
    }
    // The short v5 forms.
    for wire in [vec![0xe0, 0x00], vec![0xf0, 0x00], vec![0x40, 0x02, 0, 1]] {
        samples.push(Sample {
            role: Role::Server,
            version: ProtocolVersion::V5,
            is_connect: false,
            wire,
        });
    }
    samples.push(Sample {
        role: Role::Server,
        version: ProtocolVersion::V5,
        is_connect: false,
        wire: frame(0xc0, &[]),
    });
    samples
}

// ---- Tests -----------------------------------------------------------------------

#[test]
fn the_corpus_itself_decodes() {
    for sample in corpus() {
        let packets = decode_stream(&mut decoder_for(&sample), &sample.wire).unwrap();
        assert_eq!(packets.len(), 1, "{:?}", sample.wire);
    }
}

#[test]
fn every_truncation_waits_or_fails_and_never_yields_a_packet() {
    for sample in corpus() {
        for len in 0..sample.wire.len() {
            let mut decoder = decoder_for(&sample);
            if let Ok(packets) = decode_stream(&mut decoder, &sample.wire[..len]) {
                assert!(packets.is_empty(), "{:?} cut at {len}", sample.wire);
            }
        }
    }
}

#[test]
fn every_single_bit_flip_decodes_stably_or_fails() {
    let mut decoded = 0;
    let mut refused = 0;
    for sample in corpus() {
        for bit in 0..sample.wire.len() * 8 {
            let mut wire = sample.wire.clone();
            wire[bit / 8] ^= 1 << (bit % 8);
            let mut decoder = decoder_for(&sample);
            match decode_stream(&mut decoder, &wire) {
                Ok(packets) => {
                    decoded += packets.len();
                    assert_stable(&decoder, sample.role, &packets);
                }
                Err(_) => refused += 1,
            }
        }
    }
    // Both outcomes occur: the test exercises acceptance and refusal paths.
    assert!(
        decoded > 0 && refused > 0,
        "{decoded} decoded, {refused} refused"
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn client_packets_round_trip(
        (version, packet) in version().prop_flat_map(|v| (Just(v), to_server(v)))
    ) {
        let wire = encode(&mut encoder(Role::Client, version), &packet);
        prop_assert_eq!(wire.len(), encoded_len(&packet, version));
        let decoded = decode_stream(&mut connected_server(version), &wire).unwrap();
        prop_assert_eq!(decoded, vec![packet]);
    }

    #[test]
    fn server_packets_round_trip(
        (version, packet) in version_with_full_acks().prop_flat_map(|v| (Just(v), to_client(v)))
    ) {
        let wire = encode(&mut encoder(Role::Server, version), &packet);
        prop_assert_eq!(wire.len(), encoded_len(&packet, version));
        let decoded = decode_stream(&mut encoder(Role::Client, version), &wire).unwrap();
        prop_assert_eq!(decoded, vec![packet]);
    }

    /// A delivery written from borrowed parts (the shared set holds neither
    /// Subscription Identifiers nor expiry; those come apart) is the same bytes as
    /// the owned PUBLISH that carries them, and decodes back to it.
    #[test]
    fn publish_from_borrowed_parts_is_the_owned_encoding(
        (version, packet, stale_ids) in version_with_full_acks()
            .prop_flat_map(|v| (Just(v), publish(v, true), any::<bool>()))
    ) {
        let Packet::Publish(publish) = &packet else { unreachable!() };
        let mut shared = publish.properties.clone();
        // What the shared set says for the per-delivery fields must not matter.
        shared.subscription_identifiers = if stale_ids { vec![99] } else { Vec::new() };
        shared.message_expiry_interval = stale_ids.then_some(5);
        let empty = shared == Properties::default();
        let borrowed = PublishRef {
            properties: (!empty).then_some(&shared),
            ..PublishRef::from(publish)
        };
        let mut codec = encoder(Role::Server, version);
        let mut wire = BytesMut::new();
        codec.encode_publish(&borrowed, &mut wire).unwrap();
        prop_assert_eq!(&wire[..], &encode(&mut encoder(Role::Server, version), &packet)[..]);
        let decoded = decode_stream(&mut encoder(Role::Client, version), &wire).unwrap();
        prop_assert_eq!(decoded, vec![packet]);
    }

    #[test]
    fn connect_round_trips(
        (version, packet) in version().prop_flat_map(|v| (Just(v), connect(v)))
    ) {
        let wire = encode(&mut encoder(Role::Client, version), &packet);
        let mut server = Codec::new(Role::Server, MIB);
        let decoded = decode_stream(&mut server, &wire).unwrap();
        prop_assert_eq!(decoded, vec![packet]);
        prop_assert_eq!(server.version(), Some(version));
    }

    /// Random byte overwrites of valid packets: decode or fail, never panic.
    #[test]
    fn corrupted_packets_never_panic(
        (version, packet) in version().prop_flat_map(|v| (Just(v), to_server(v))),
        edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
    ) {
        let mut wire = encode(&mut encoder(Role::Client, version), &packet);
        for (index, value) in edits {
            let at = index.index(wire.len());
            wire[at] = value;
        }
        let mut decoder = connected_server(version);
        if let Ok(packets) = decode_stream(&mut decoder, &wire) {
            assert_stable(&decoder, Role::Server, &packets);
        }
    }

    /// A stream cut into arbitrary chunks frames the same packets as a whole one.
    #[test]
    fn framing_is_independent_of_read_boundaries(
        (version, packets) in version().prop_flat_map(|v| {
            (Just(v), proptest::collection::vec(to_server(v), 1..8))
        }),
        cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..12),
    ) {
        let mut stream = connect_bytes(version);
        for packet in &packets {
            stream.extend(encode(&mut encoder(Role::Client, version), packet));
        }
        let mut cuts: Vec<usize> = cuts.iter().map(|cut| cut.index(stream.len())).collect();
        cuts.push(stream.len());
        cuts.sort_unstable();

        let mut codec = Codec::new(Role::Server, MIB);
        let mut buf = BytesMut::new();
        let mut decoded = Vec::new();
        let mut start = 0;
        for cut in cuts {
            buf.extend_from_slice(&stream[start..cut]);
            start = cut;
            while let Some(packet) = codec.decode(&mut buf).unwrap() {
                decoded.push(packet);
            }
        }
        prop_assert!(buf.is_empty());
        prop_assert!(matches!(decoded.first(), Some(Packet::Connect(_))));
        prop_assert_eq!(&decoded[1..], &packets[..]);
    }
}

/// A character MQTT strings may not hold (§1.5.4): a C0/C1 control character or a
/// non-character, U+0000 aside (it has its own error).
fn disallowed_char() -> impl Strategy<Value = char> {
    prop_oneof![
        (1u32..=0x1F),
        (0x7Fu32..=0x9F),
        (0xFDD0u32..=0xFDEF),
        (0u32..=0x10).prop_flat_map(|plane| {
            select(vec![plane * 0x10000 + 0xFFFE, plane * 0x10000 + 0xFFFF])
        }),
    ]
    .prop_map(|code| char::from_u32(code).unwrap_or('\u{1}'))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Wherever a disallowed character sits in a topic, a user property or a client
    /// id, the decoder refuses the packet as malformed, naming the character.
    #[test]
    fn a_disallowed_character_in_any_string_is_malformed(
        version in version(),
        (topic, at) in topic_name().prop_flat_map(|t| { let n = t.len(); (Just(t), 0..=n) }),
        bad in disallowed_char(),
        field in 0u8..3,
    ) {
        let mut poisoned = topic.clone();
        let at = (0..=at).rev().find(|&i| poisoned.is_char_boundary(i)).unwrap_or(0);
        poisoned.insert(at, bad);
        let result = match field {
            0 => {
                let packet = Packet::Publish(Publish {
                    dup: false,
                    qos: QoS::AtMostOnce,
                    retain: false,
                    topic: poisoned.into(),
                    packet_id: 0,
                    payload: Bytes::new(),
                    properties: Properties::default(),
                });
                let wire = encode(&mut encoder(Role::Client, version), &packet);
                decode_stream(&mut connected_server(version), &wire)
            }
            1 => {
                let packet = Packet::Publish(Publish {
                    dup: false,
                    qos: QoS::AtMostOnce,
                    retain: false,
                    topic: topic.into(),
                    packet_id: 0,
                    payload: Bytes::new(),
                    properties: Properties {
                        user_properties: vec![("k".into(), poisoned)],
                        ..Properties::default()
                    },
                });
                let wire = encode(&mut encoder(Role::Client, ProtocolVersion::V5), &packet);
                decode_stream(&mut connected_server(ProtocolVersion::V5), &wire)
            }
            _ => {
                let packet = Packet::Connect(Box::new(Connect {
                    protocol: version,
                    clean_start: true,
                    keep_alive: 60,
                    client_id: poisoned,
                    will: None,
                    username: None,
                    password: None,
                    properties: Properties::default(),
                }));
                let wire = encode(&mut encoder(Role::Client, version), &packet);
                decode_stream(&mut Codec::new(Role::Server, MIB), &wire)
            }
        };
        let err = result.unwrap_err();
        prop_assert!(matches!(err, DecodeError::DisallowedCharacter(c) if c == bad), "{}", err);
        prop_assert_eq!(err.reason_code(), ReasonCode::MalformedPacket);
    }
}
