//! Unit tests for the codec: the strictness vectors A..Y of notes/crates.md §1.3, the
//! other refusal rules, encoder behaviour and hand-written round trips for every
//! packet type in both versions.

use bytes::{Bytes, BytesMut};

use super::*;

const MIB: u32 = 1024 * 1024;

/// A whole packet from its first byte and body.
pub(super) fn frame(first_byte: u8, body: &[u8]) -> Vec<u8> {
    let mut wire = vec![first_byte];
    let mut len = body.len();
    loop {
        let mut byte = (len % 128) as u8;
        len /= 128;
        if len > 0 {
            byte |= 0x80;
        }
        wire.push(byte);
        if len == 0 {
            break;
        }
    }
    wire.extend_from_slice(body);
    wire
}

/// A length-prefixed string or binary field.
fn field(bytes: &[u8]) -> Vec<u8> {
    let mut out = (bytes.len() as u16).to_be_bytes().to_vec();
    out.extend_from_slice(bytes);
    out
}

fn cat(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

fn level(version: ProtocolVersion) -> u8 {
    match version {
        ProtocolVersion::V31 => 3,
        ProtocolVersion::V311 => 4,
        ProtocolVersion::V5 => 5,
    }
}

fn protocol_name(version: ProtocolVersion) -> &'static [u8] {
    match version {
        ProtocolVersion::V31 => b"MQIsdp",
        ProtocolVersion::V311 | ProtocolVersion::V5 => b"MQTT",
    }
}

fn is_v5(version: ProtocolVersion) -> bool {
    version == ProtocolVersion::V5
}

/// A CONNECT with the given flags byte, an empty property set in v5, client id "c"
/// and `rest` (will, user name, password) appended.
fn connect_with(version: ProtocolVersion, flags: u8, client_id: &[u8], rest: &[u8]) -> Vec<u8> {
    let props: &[u8] = if is_v5(version) { &[0] } else { &[] };
    frame(
        0x10,
        &cat(&[
            &field(protocol_name(version)),
            &[level(version), flags, 0, 60],
            props,
            &field(client_id),
            rest,
        ]),
    )
}

pub(super) fn connect_bytes(version: ProtocolVersion) -> Vec<u8> {
    connect_with(version, 0x02, b"c", &[])
}

fn decode_all(codec: &mut Codec, wire: &[u8]) -> Result<Vec<Packet>, DecodeError> {
    let mut buf = BytesMut::from(wire);
    let mut packets = Vec::new();
    while let Some(packet) = codec.decode(&mut buf)? {
        packets.push(packet);
    }
    assert!(buf.is_empty(), "{} bytes left undecoded", buf.len());
    Ok(packets)
}

/// Decodes exactly one packet on a fresh server codec.
fn server_decode(wire: &[u8]) -> Result<Packet, DecodeError> {
    let mut codec = Codec::new(Role::Server, MIB);
    let mut packets = decode_all(&mut codec, wire)?;
    assert_eq!(packets.len(), 1);
    Ok(packets.remove(0))
}

pub(super) fn connected_server(version: ProtocolVersion) -> Codec {
    let mut codec = Codec::new(Role::Server, MIB);
    let packets = decode_all(&mut codec, &connect_bytes(version)).unwrap();
    assert!(matches!(packets[..], [Packet::Connect(_)]));
    assert_eq!(codec.version(), Some(version));
    codec
}

/// Decodes exactly one packet after a valid CONNECT.
fn after_connect(version: ProtocolVersion, wire: &[u8]) -> Result<Packet, DecodeError> {
    let mut codec = connected_server(version);
    let mut packets = decode_all(&mut codec, wire)?;
    assert_eq!(packets.len(), 1);
    Ok(packets.remove(0))
}

fn client(version: ProtocolVersion) -> Codec {
    let mut codec = Codec::new(Role::Client, MIB);
    codec.set_version(version);
    codec
}

fn encode_with(codec: &mut Codec, packet: &Packet) -> Vec<u8> {
    let mut buf = BytesMut::new();
    codec.encode(packet, &mut buf).unwrap();
    buf.to_vec()
}

/// A v5 PUBLISH body: topic, packet id (QoS > 0), properties, payload.
fn publish_v5(flags: u8, topic: &[u8], packet_id: Option<u16>, props: &[u8]) -> Vec<u8> {
    let id = packet_id
        .map(|id| id.to_be_bytes().to_vec())
        .unwrap_or_default();
    let mut prop_block = vec![props.len() as u8];
    prop_block.extend_from_slice(props);
    frame(0x30 | flags, &cat(&[&field(topic), &id, &prop_block, b"x"]))
}

fn v5_subscribe(first_byte: u8, entries: &[u8]) -> Vec<u8> {
    frame(first_byte, &cat(&[&[0, 1, 0], entries]))
}

fn reason_of(result: Result<Packet, DecodeError>) -> ReasonCode {
    result.unwrap_err().reason_code()
}

// ---- MQTT 5 vectors -------------------------------------------------------------

#[test]
fn vector_a_v5_disconnect_with_remaining_length_0_is_normal() {
    let packet = after_connect(ProtocolVersion::V5, &[0xe0, 0x00]).unwrap();
    assert_eq!(
        packet,
        Packet::Disconnect(Disconnect {
            reason: ReasonCode::Success,
            properties: Properties::default(),
        })
    );
}

#[test]
fn vector_b_v5_auth_with_remaining_length_0_is_success() {
    let packet = after_connect(ProtocolVersion::V5, &[0xf0, 0x00]).unwrap();
    assert_eq!(
        packet,
        Packet::Auth(Auth {
            reason: ReasonCode::Success,
            properties: Properties::default(),
        })
    );
}

#[test]
fn vector_c_non_minimal_remaining_length_is_malformed() {
    for version in [ProtocolVersion::V5, ProtocolVersion::V311] {
        let err = after_connect(version, &[0xc0, 0x80, 0x00]).unwrap_err();
        assert!(matches!(err, DecodeError::NonMinimalVarInt), "{err}");
        assert_eq!(err.reason_code(), ReasonCode::MalformedPacket);
    }
}

#[test]
fn vector_d_five_byte_remaining_length_is_malformed() {
    let err =
        after_connect(ProtocolVersion::V5, &[0x30, 0xff, 0xff, 0xff, 0xff, 0x01]).unwrap_err();
    assert!(matches!(err, DecodeError::VarIntTooLong), "{err}");
    assert_eq!(err.reason_code(), ReasonCode::MalformedPacket);
}

#[test]
fn vector_e_subscribe_with_flags_0000_is_malformed() {
    let wire = v5_subscribe(0x80, &cat(&[&field(b"a"), &[0]]));
    let err = after_connect(ProtocolVersion::V5, &wire).unwrap_err();
    assert!(
        matches!(err, DecodeError::InvalidHeaderFlags { .. }),
        "{err}"
    );
    // The same packet with 0010 is fine (control).
    let wire = v5_subscribe(0x82, &cat(&[&field(b"a"), &[0]]));
    assert!(matches!(
        after_connect(ProtocolVersion::V5, &wire),
        Ok(Packet::Subscribe(_))
    ));
}

#[test]
fn vector_f_publish_qos_3_is_malformed() {
    let wire = publish_v5(0b0110, b"a", Some(1), &[]);
    let err = after_connect(ProtocolVersion::V5, &wire).unwrap_err();
    assert!(matches!(err, DecodeError::InvalidQoS(3)), "{err}");
}

#[test]
fn vector_g_publish_qos_1_with_packet_id_0_is_refused() {
    let wire = publish_v5(0b0010, b"a", Some(0), &[]);
    let err = after_connect(ProtocolVersion::V5, &wire).unwrap_err();
    assert!(matches!(err, DecodeError::ZeroPacketId), "{err}");
}

#[test]
fn vector_h_publish_to_a_wildcard_topic_is_refused() {
    for topic in [&b"a/+"[..], b"a/#", b"#"] {
        let wire = publish_v5(0, topic, None, &[]);
        let err = after_connect(ProtocolVersion::V5, &wire).unwrap_err();
        assert!(matches!(err, DecodeError::InvalidTopicName(_)), "{err}");
        assert_eq!(err.reason_code(), ReasonCode::TopicNameInvalid);
    }
}

#[test]
fn vector_i_duplicate_message_expiry_is_a_protocol_error() {
    let props = [0x02, 0, 0, 0, 1, 0x02, 0, 0, 0, 2];
    let wire = publish_v5(0, b"a", None, &props);
    let err = after_connect(ProtocolVersion::V5, &wire).unwrap_err();
    assert!(matches!(err, DecodeError::DuplicateProperty(0x02)), "{err}");
    assert_eq!(err.reason_code(), ReasonCode::ProtocolError);
}

#[test]
fn vector_q_session_expiry_in_publish_is_malformed() {
    let wire = publish_v5(0, b"a", None, &[0x11, 0, 0, 0, 1]);
    let err = after_connect(ProtocolVersion::V5, &wire).unwrap_err();
    assert!(
        matches!(err, DecodeError::PropertyNotAllowed { id: 0x11, .. }),
        "{err}"
    );
    assert_eq!(err.reason_code(), ReasonCode::MalformedPacket);
}

#[test]
fn vector_o_invalid_utf8_topic_is_malformed() {
    let wire = publish_v5(0, &[b'a', 0xff], None, &[]);
    let err = after_connect(ProtocolVersion::V5, &wire).unwrap_err();
    assert!(matches!(err, DecodeError::InvalidUtf8), "{err}");
}

#[test]
fn vectors_j_and_w_client_id_with_nul_is_malformed() {
    for version in [ProtocolVersion::V5, ProtocolVersion::V311] {
        let err = server_decode(&connect_with(version, 0x02, b"a\0b", &[])).unwrap_err();
        assert!(matches!(err, DecodeError::NullCharacter), "{err}");
        assert_eq!(err.reason_code(), ReasonCode::MalformedPacket);
    }
}

#[test]
fn vectors_k_and_r_connect_reserved_flag_is_malformed() {
    for version in [ProtocolVersion::V5, ProtocolVersion::V311] {
        let err = server_decode(&connect_with(version, 0x03, b"c", &[])).unwrap_err();
        assert!(matches!(err, DecodeError::ConnectReservedFlag), "{err}");
    }
}

#[test]
fn vector_l_subscribe_without_filters_is_a_protocol_error() {
    let err = after_connect(ProtocolVersion::V5, &v5_subscribe(0x82, &[])).unwrap_err();
    assert!(
        matches!(err, DecodeError::NoTopicFilters("SUBSCRIBE")),
        "{err}"
    );
    assert_eq!(err.reason_code(), ReasonCode::ProtocolError);
    let err = after_connect(ProtocolVersion::V311, &frame(0x82, &[0, 1])).unwrap_err();
    assert!(matches!(err, DecodeError::NoTopicFilters(_)), "{err}");
}

#[test]
fn vectors_m_and_y_oversized_header_fails_before_the_body_arrives() {
    // 100 MB announced against a 1 MiB limit, with only the header in the buffer.
    for version in [ProtocolVersion::V5, ProtocolVersion::V311] {
        let mut codec = connected_server(version);
        let mut buf = BytesMut::from(&[0x30, 0x80, 0xc2, 0xd7, 0x2f][..]);
        let err = codec.decode(&mut buf).unwrap_err();
        assert!(
            matches!(err, DecodeError::PacketTooLarge { max: MIB, .. }),
            "{err}"
        );
        assert_eq!(err.reason_code(), ReasonCode::PacketTooLarge);
        assert!(buf.capacity() < 1024, "reserved {}", buf.capacity());
    }
}

#[test]
fn vector_n_pingreq_with_a_trailing_byte_is_malformed() {
    let err = after_connect(ProtocolVersion::V5, &[0xc0, 0x01, 0x00]).unwrap_err();
    assert!(matches!(err, DecodeError::TrailingBytes(1)), "{err}");
    assert_eq!(
        after_connect(ProtocolVersion::V5, &[0xc0, 0x00]).unwrap(),
        Packet::PingReq
    );
}

#[test]
fn valid_v5_connect_and_subscribe_controls_decode() {
    let Packet::Connect(connect) = server_decode(&connect_bytes(ProtocolVersion::V5)).unwrap()
    else {
        panic!("not a CONNECT");
    };
    assert_eq!(connect.protocol, ProtocolVersion::V5);
    assert_eq!(connect.client_id, "c");
    assert!(connect.clean_start);
    assert_eq!(connect.keep_alive, 60);
    let wire = v5_subscribe(0x82, &cat(&[&field(b"a/+/#"), &[0b0010_1110]]));
    let Packet::Subscribe(subscribe) = after_connect(ProtocolVersion::V5, &wire).unwrap() else {
        panic!("not a SUBSCRIBE");
    };
    assert_eq!(
        subscribe.filters,
        vec![SubscribeFilter {
            filter: "a/+/#".into(),
            options: SubscriptionOptions {
                qos: QoS::ExactlyOnce,
                no_local: true,
                retain_as_published: true,
                retain_handling: RetainHandling::DoNotSend,
            },
        }]
    );
}

// ---- MQTT 3.1.1 vectors ---------------------------------------------------------

#[test]
fn vector_p_v311_password_without_user_name_is_malformed() {
    let wire = connect_with(ProtocolVersion::V311, 0x42, b"c", &field(b"pw"));
    let err = server_decode(&wire).unwrap_err();
    assert!(matches!(err, DecodeError::PasswordWithoutUsername), "{err}");
    // MQTT 5 allows it.
    let wire = connect_with(ProtocolVersion::V5, 0x42, b"c", &field(b"pw"));
    let Packet::Connect(connect) = server_decode(&wire).unwrap() else {
        panic!("not a CONNECT");
    };
    assert_eq!(connect.password, Some(Bytes::from_static(b"pw")));
    assert_eq!(connect.username, None);
}

#[test]
fn vector_t_v311_subscribe_with_flags_0000_is_malformed() {
    let wire = frame(0x80, &cat(&[&[0, 1], &field(b"a"), &[0]]));
    let err = after_connect(ProtocolVersion::V311, &wire).unwrap_err();
    assert!(
        matches!(err, DecodeError::InvalidHeaderFlags { .. }),
        "{err}"
    );
}

#[test]
fn vector_u_v311_publish_qos_3_is_malformed() {
    let wire = frame(0x36, &cat(&[&field(b"a"), &[0, 1]]));
    let err = after_connect(ProtocolVersion::V311, &wire).unwrap_err();
    assert!(matches!(err, DecodeError::InvalidQoS(3)), "{err}");
}

#[test]
fn vector_x_v311_disconnect_is_valid() {
    assert_eq!(
        after_connect(ProtocolVersion::V311, &[0xe0, 0x00]).unwrap(),
        Packet::Disconnect(Disconnect {
            reason: ReasonCode::Success,
            properties: Properties::default(),
        })
    );
    // 3.1.1 DISCONNECT has no body.
    let err = after_connect(ProtocolVersion::V311, &[0xe0, 0x01, 0x00]).unwrap_err();
    assert!(matches!(err, DecodeError::TrailingBytes(1)), "{err}");
}

// ---- Packet order and direction -------------------------------------------------

#[test]
fn the_first_packet_must_be_connect() {
    let mut codec = Codec::new(Role::Server, MIB);
    // Refused on the first byte, before a remaining length arrives.
    let err = codec.decode(&mut BytesMut::from(&[0xc0][..])).unwrap_err();
    assert!(
        matches!(err, DecodeError::ExpectedConnect("PINGREQ")),
        "{err}"
    );
    assert_eq!(err.reason_code(), ReasonCode::ProtocolError);
    // An HTTP request or a TLS ClientHello on the plaintext port is refused at once.
    for garbage in [&b"GET / HTTP/1.1\r\n"[..], &[0x16, 0x03, 0x01]] {
        assert!(
            Codec::new(Role::Server, MIB)
                .decode(&mut BytesMut::from(garbage))
                .is_err()
        );
    }
}

#[test]
fn a_second_connect_is_a_protocol_error() {
    let mut codec = connected_server(ProtocolVersion::V5);
    let err = decode_all(&mut codec, &connect_bytes(ProtocolVersion::V5)).unwrap_err();
    assert!(matches!(err, DecodeError::DuplicateConnect), "{err}");
    assert_eq!(err.reason_code(), ReasonCode::ProtocolError);
}

#[test]
fn a_connect_split_across_reads_is_not_taken_for_a_second_one() {
    let wire = connect_bytes(ProtocolVersion::V5);
    let mut codec = Codec::new(Role::Server, MIB);
    let mut buf = BytesMut::new();
    for &byte in &wire[..wire.len() - 1] {
        buf.extend_from_slice(&[byte]);
        assert!(codec.decode(&mut buf).unwrap().is_none());
    }
    assert!(!codec.connect_received());
    buf.extend_from_slice(&wire[wire.len() - 1..]);
    assert!(matches!(
        codec.decode(&mut buf),
        Ok(Some(Packet::Connect(_)))
    ));
    assert!(codec.connect_received());
}

#[test]
fn each_role_refuses_packets_it_never_receives() {
    for wire in [
        &[0x20, 0x02, 0x00, 0x00][..],
        &[0x90, 0x03, 0x00, 0x01, 0x00],
        &[0xb0, 0x02, 0x00, 0x01],
        &[0xd0, 0x00],
    ] {
        let err = after_connect(ProtocolVersion::V311, wire).unwrap_err();
        assert!(
            matches!(err, DecodeError::UnexpectedPacket { role: "server", .. }),
            "{err}"
        );
    }
    for wire in [
        connect_bytes(ProtocolVersion::V311),
        frame(0x82, &cat(&[&[0, 1], &field(b"a"), &[0]])),
        frame(0xa2, &cat(&[&[0, 1], &field(b"a")])),
        vec![0xc0, 0x00],
    ] {
        let err = decode_all(&mut client(ProtocolVersion::V311), &wire).unwrap_err();
        assert!(
            matches!(err, DecodeError::UnexpectedPacket { role: "client", .. }),
            "{err}"
        );
    }
}

#[test]
fn auth_exists_only_in_v5() {
    let err = after_connect(ProtocolVersion::V311, &[0xf0, 0x00]).unwrap_err();
    assert!(matches!(err, DecodeError::ReservedPacketType(15)), "{err}");
    let mut buf = BytesMut::new();
    let auth = Packet::Auth(Auth {
        reason: ReasonCode::ContinueAuthentication,
        properties: Properties::default(),
    });
    let err = client(ProtocolVersion::V311)
        .encode(&auth, &mut buf)
        .unwrap_err();
    assert!(matches!(err, EncodeError::NotInVersion { .. }), "{err}");
}

#[test]
fn reserved_packet_type_0_is_malformed() {
    let err = after_connect(ProtocolVersion::V5, &[0x00, 0x00]).unwrap_err();
    assert!(matches!(err, DecodeError::ReservedPacketType(0)), "{err}");
}

// ---- CONNECT ---------------------------------------------------------------------

#[test]
fn unsupported_protocol_versions_are_reported_as_such() {
    let mqisdp_4 = frame(
        0x10,
        &cat(&[&field(b"MQIsdp"), &[4, 0x02, 0, 60], &field(b"c")]),
    );
    let mqtt_3 = frame(
        0x10,
        &cat(&[&field(b"MQTT"), &[3, 0x02, 0, 60], &field(b"c")]),
    );
    let level_6 = frame(
        0x10,
        &cat(&[&field(b"MQTT"), &[6, 0x02, 0, 60], &field(b"c")]),
    );
    let other_name = frame(
        0x10,
        &cat(&[&field(b"HTTP"), &[4, 0x02, 0, 60], &field(b"c")]),
    );
    for wire in [mqisdp_4, mqtt_3, level_6, other_name] {
        let mut codec = Codec::new(Role::Server, MIB);
        let err = decode_all(&mut codec, &wire).unwrap_err();
        assert_eq!(
            err.reason_code(),
            ReasonCode::UnsupportedProtocolVersion,
            "{err}"
        );
        assert_eq!(codec.version(), None);
        // The broker's refusal goes out in the 3.1.1 format: return code 1.
        let refusal = Packet::ConnAck(ConnAck {
            session_present: false,
            reason: err.reason_code(),
            properties: Properties::default(),
        });
        assert_eq!(encode_with(&mut codec, &refusal), [0x20, 0x02, 0x00, 0x01]);
    }
}

#[test]
fn a_bad_field_after_the_protocol_level_still_sets_the_version() {
    let mut codec = Codec::new(Role::Server, MIB);
    let wire = connect_with(ProtocolVersion::V5, 0x01, b"c", &[]);
    assert!(decode_all(&mut codec, &wire).is_err());
    assert_eq!(codec.version(), Some(ProtocolVersion::V5));
    let refusal = Packet::ConnAck(ConnAck {
        session_present: false,
        reason: ReasonCode::MalformedPacket,
        properties: Properties::default(),
    });
    assert_eq!(
        encode_with(&mut codec, &refusal),
        [0x20, 0x03, 0x00, 0x81, 0x00]
    );
}

#[test]
fn will_flags_must_be_consistent() {
    let will = cat(&[&[0], &field(b"w"), &field(b"bye")]);
    for (flags, rest) in [
        (0x02 | 0x08, &[][..]),          // will QoS 1 without a will
        (0x02 | 0x20, &[][..]),          // will retain without a will
        (0x02 | 0x04 | 0x18, &will[..]), // will QoS 3
    ] {
        let err = server_decode(&connect_with(ProtocolVersion::V5, flags, b"c", rest)).unwrap_err();
        assert!(
            matches!(err, DecodeError::InvalidWillFlags),
            "{flags:#x}: {err}"
        );
    }
    let wire = connect_with(ProtocolVersion::V5, 0x02 | 0x04 | 0x10 | 0x20, b"c", &will);
    let Packet::Connect(connect) = server_decode(&wire).unwrap() else {
        panic!("not a CONNECT");
    };
    let will = connect.will.unwrap();
    assert_eq!(
        (will.topic.as_str(), will.qos, will.retain),
        ("w", QoS::ExactlyOnce, true)
    );
    assert_eq!(will.payload, Bytes::from_static(b"bye"));
}

#[test]
fn will_topic_must_be_a_valid_topic_name() {
    let will = cat(&[&field(b"w/#"), &field(b"bye")]);
    let wire = connect_with(ProtocolVersion::V311, 0x06, b"c", &will);
    let err = server_decode(&wire).unwrap_err();
    assert_eq!(err.reason_code(), ReasonCode::TopicNameInvalid, "{err}");
}

#[test]
fn client_id_characters_are_left_to_the_broker() {
    let wire = connect_with(ProtocolVersion::V311, 0x02, "é/+#$ x".as_bytes(), &[]);
    let Packet::Connect(connect) = server_decode(&wire).unwrap() else {
        panic!("not a CONNECT");
    };
    assert_eq!(connect.client_id, "é/+#$ x");
    assert!(server_decode(&connect_with(ProtocolVersion::V311, 0x00, b"", &[])).is_ok());
}

#[test]
fn connect_with_trailing_bytes_is_malformed() {
    let err = server_decode(&connect_with(ProtocolVersion::V311, 0x02, b"c", &[0])).unwrap_err();
    assert!(matches!(err, DecodeError::TrailingBytes(1)), "{err}");
}

// ---- PUBLISH ---------------------------------------------------------------------

#[test]
fn dup_on_qos_0_is_malformed() {
    let err = after_connect(ProtocolVersion::V5, &publish_v5(0b1000, b"a", None, &[])).unwrap_err();
    assert!(matches!(err, DecodeError::DupWithQoS0), "{err}");
}

#[test]
fn an_empty_topic_needs_a_v5_topic_alias() {
    let err = after_connect(ProtocolVersion::V5, &publish_v5(0, b"", None, &[])).unwrap_err();
    assert!(matches!(err, DecodeError::EmptyTopicWithoutAlias), "{err}");
    assert_eq!(err.reason_code(), ReasonCode::ProtocolError);
    let Packet::Publish(publish) = after_connect(
        ProtocolVersion::V5,
        &publish_v5(0, b"", None, &[0x23, 0, 7]),
    )
    .unwrap() else {
        panic!("not a PUBLISH");
    };
    assert_eq!(
        (&*publish.topic, publish.properties.topic_alias),
        ("", Some(7))
    );
    let err = after_connect(
        ProtocolVersion::V5,
        &publish_v5(0, b"a", None, &[0x23, 0, 0]),
    )
    .unwrap_err();
    assert_eq!(err.reason_code(), ReasonCode::TopicAliasInvalid);
    let wire = frame(0x30, &cat(&[&field(b""), b"x"]));
    let err = after_connect(ProtocolVersion::V311, &wire).unwrap_err();
    assert_eq!(err.reason_code(), ReasonCode::TopicNameInvalid, "{err}");
}

#[test]
fn a_client_may_not_send_subscription_identifiers() {
    let wire = publish_v5(0, b"a", None, &[0x0B, 1]);
    let err = after_connect(ProtocolVersion::V5, &wire).unwrap_err();
    assert!(
        matches!(err, DecodeError::PropertyNotAllowed { id: 0x0B, .. }),
        "{err}"
    );
    // But a server may send several to a client.
    let wire = publish_v5(0, b"a", None, &[0x0B, 1, 0x0B, 2]);
    let packets = decode_all(&mut client(ProtocolVersion::V5), &wire).unwrap();
    let [Packet::Publish(publish)] = &packets[..] else {
        panic!("not one PUBLISH");
    };
    assert_eq!(publish.properties.subscription_identifiers, vec![1, 2]);
}

#[test]
fn publish_payload_is_everything_after_the_properties() {
    let wire = frame(
        0x33,
        &cat(&[&field(b"t/1"), &[0, 9], &[0], b"\x00payload\xff"]),
    );
    let Packet::Publish(publish) = after_connect(ProtocolVersion::V5, &wire).unwrap() else {
        panic!("not a PUBLISH");
    };
    assert_eq!(publish.qos, QoS::AtLeastOnce);
    assert!(publish.retain);
    assert_eq!(publish.packet_id, 9);
    assert_eq!(publish.payload, Bytes::from_static(b"\x00payload\xff"));
}

// ---- SUBSCRIBE / UNSUBSCRIBE -----------------------------------------------------

#[test]
fn subscription_option_rules() {
    let cases: [(u8, ReasonCode); 4] = [
        (0b0100_0000, ReasonCode::MalformedPacket), // reserved bit 6
        (0b1000_0000, ReasonCode::MalformedPacket), // reserved bit 7
        (0b0011_0000, ReasonCode::ProtocolError),   // retain handling 3
        (0b0000_0011, ReasonCode::MalformedPacket), // QoS 3
    ];
    for (options, expected) in cases {
        let wire = v5_subscribe(0x82, &cat(&[&field(b"a"), &[options]]));
        assert_eq!(
            reason_of(after_connect(ProtocolVersion::V5, &wire)),
            expected,
            "{options:#b}"
        );
    }
    // 3.1.1 has only the QoS bits.
    for options in [0b0000_0100, 0b0000_1000, 0b0001_0000, 0b1000_0000] {
        let wire = frame(0x82, &cat(&[&[0, 1], &field(b"a"), &[options]]));
        let err = after_connect(ProtocolVersion::V311, &wire).unwrap_err();
        assert!(
            matches!(err, DecodeError::InvalidSubscriptionOptions(_)),
            "{err}"
        );
    }
}

#[test]
fn subscribe_filters_must_be_valid() {
    for filter in [&b"a/#/b"[..], b"a+", b"", b"$share/g"] {
        let wire = v5_subscribe(0x82, &cat(&[&field(filter), &[0]]));
        let err = after_connect(ProtocolVersion::V5, &wire).unwrap_err();
        assert_eq!(err.reason_code(), ReasonCode::TopicFilterInvalid, "{err}");
    }
    let wire = frame(0xa2, &cat(&[&[0, 1, 0], &field(b"a/#/b")]));
    let err = after_connect(ProtocolVersion::V5, &wire).unwrap_err();
    assert_eq!(err.reason_code(), ReasonCode::TopicFilterInvalid, "{err}");
}

#[test]
fn no_local_on_a_shared_subscription_is_a_protocol_error() {
    let wire = v5_subscribe(0x82, &cat(&[&field(b"$share/g/a"), &[0b0100]]));
    let err = after_connect(ProtocolVersion::V5, &wire).unwrap_err();
    assert!(
        matches!(err, DecodeError::NoLocalOnSharedSubscription),
        "{err}"
    );
}

#[test]
fn subscribe_carries_at_most_one_non_zero_subscription_identifier() {
    let entry = cat(&[&field(b"a"), &[0]]);
    let twice = frame(0x82, &cat(&[&[0, 1, 4, 0x0B, 1, 0x0B, 2], &entry]));
    let zero = frame(0x82, &cat(&[&[0, 1, 2, 0x0B, 0], &entry]));
    for wire in [twice, zero] {
        assert_eq!(
            reason_of(after_connect(ProtocolVersion::V5, &wire)),
            ReasonCode::ProtocolError
        );
    }
    let one = frame(0x82, &cat(&[&[0, 1, 2, 0x0B, 5], &entry]));
    let Packet::Subscribe(subscribe) = after_connect(ProtocolVersion::V5, &one).unwrap() else {
        panic!("not a SUBSCRIBE");
    };
    assert_eq!(subscribe.properties.subscription_identifiers, vec![5]);
}

#[test]
fn unsubscribe_needs_a_filter_and_a_packet_id() {
    let err = after_connect(ProtocolVersion::V5, &frame(0xa2, &[0, 1, 0])).unwrap_err();
    assert!(
        matches!(err, DecodeError::NoTopicFilters("UNSUBSCRIBE")),
        "{err}"
    );
    let err = after_connect(ProtocolVersion::V311, &frame(0xa2, &[0, 1])).unwrap_err();
    assert!(
        matches!(err, DecodeError::NoTopicFilters("UNSUBSCRIBE")),
        "{err}"
    );
    let wire = frame(0xa2, &cat(&[&[0, 0], &field(b"a")]));
    let err = after_connect(ProtocolVersion::V311, &wire).unwrap_err();
    assert!(matches!(err, DecodeError::ZeroPacketId), "{err}");
}

// ---- Acks, DISCONNECT, AUTH ------------------------------------------------------

#[test]
fn v5_acks_without_reason_code_mean_success() {
    for first_byte in [0x40, 0x50, 0x62, 0x70] {
        let packet = after_connect(ProtocolVersion::V5, &[first_byte, 0x02, 0x12, 0x34]).unwrap();
        let (Packet::PubAck(ack)
        | Packet::PubRec(ack)
        | Packet::PubRel(ack)
        | Packet::PubComp(ack)) = packet
        else {
            panic!("not an ack");
        };
        assert_eq!(ack, Ack::new(0x1234, ReasonCode::Success));
    }
    // Reason code without a property length (remaining length 3).
    let packet = after_connect(ProtocolVersion::V5, &[0x40, 0x03, 0x00, 0x01, 0x10]).unwrap();
    assert_eq!(
        packet,
        Packet::PubAck(Ack::new(1, ReasonCode::NoMatchingSubscribers))
    );
}

#[test]
fn ack_reason_codes_must_fit_the_packet_type() {
    // PUBREL may only carry 0x00 or 0x92.
    let err = after_connect(ProtocolVersion::V5, &[0x62, 0x04, 0, 1, 0x10, 0]).unwrap_err();
    assert!(
        matches!(err, DecodeError::InvalidReasonCode { .. }),
        "{err}"
    );
    // 0x05 is no reason code at all.
    let err = after_connect(ProtocolVersion::V5, &[0xe0, 0x01, 0x05]).unwrap_err();
    assert!(
        matches!(err, DecodeError::InvalidReasonCode { .. }),
        "{err}"
    );
    let packet = after_connect(ProtocolVersion::V5, &[0xe0, 0x01, 0x04]).unwrap();
    assert_eq!(
        packet,
        Packet::Disconnect(Disconnect {
            reason: ReasonCode::DisconnectWithWill,
            properties: Properties::default(),
        })
    );
}

#[test]
fn v311_acks_are_exactly_a_packet_id() {
    assert_eq!(
        after_connect(ProtocolVersion::V311, &[0x40, 0x02, 0, 7]).unwrap(),
        Packet::PubAck(Ack::new(7, ReasonCode::Success))
    );
    let err = after_connect(ProtocolVersion::V311, &[0x40, 0x03, 0, 7, 0]).unwrap_err();
    assert!(matches!(err, DecodeError::TrailingBytes(1)), "{err}");
    let err = after_connect(ProtocolVersion::V311, &[0x40, 0x02, 0, 0]).unwrap_err();
    assert!(matches!(err, DecodeError::ZeroPacketId), "{err}");
}

#[test]
fn disconnect_properties_follow_the_allowlist() {
    // Session Expiry Interval is allowed, Topic Alias is not.
    let ok = [0xe0, 0x07, 0x00, 0x05, 0x11, 0, 0, 0, 9];
    let Packet::Disconnect(disconnect) = after_connect(ProtocolVersion::V5, &ok).unwrap() else {
        panic!("not a DISCONNECT");
    };
    assert_eq!(disconnect.properties.session_expiry_interval, Some(9));
    let bad = [0xe0, 0x05, 0x00, 0x03, 0x23, 0, 1];
    assert_eq!(
        reason_of(after_connect(ProtocolVersion::V5, &bad)),
        ReasonCode::MalformedPacket
    );
}

// ---- Limits ----------------------------------------------------------------------

#[test]
fn room_for_a_body_is_reserved_in_bounded_chunks() {
    let mut codec = connected_server(ProtocolVersion::V5);
    codec.set_max_incoming_packet_size(MIB);
    // A PUBLISH that announces just under 1 MiB but sends only its header.
    let mut buf = BytesMut::from(&[0x30, 0xf0, 0xff, 0x3f][..]);
    assert!(codec.decode(&mut buf).unwrap().is_none());
    assert!(
        buf.capacity() <= 64 * 1024 + 64,
        "reserved {}",
        buf.capacity()
    );
}

#[test]
fn the_size_limit_counts_the_whole_packet() {
    let wire = frame(0x30, &cat(&[&field(b"t"), &[0], &[0u8; 100]]));
    let mut codec = connected_server(ProtocolVersion::V5);
    codec.set_max_incoming_packet_size(wire.len() as u32);
    assert!(decode_all(&mut codec, &wire).is_ok());
    codec.set_max_incoming_packet_size(wire.len() as u32 - 1);
    let err = decode_all(&mut codec, &wire).unwrap_err();
    assert!(matches!(err, DecodeError::PacketTooLarge { .. }), "{err}");
}

#[test]
fn before_connect_the_server_limit_applies_to_connect_itself() {
    let mut codec = Codec::new(Role::Server, MAX_PACKET_SIZE_BEFORE_CONNECT);
    // A CONNECT announcing 100 KiB.
    let mut buf = BytesMut::from(&[0x10, 0x80, 0x80, 0x06][..]);
    let err = codec.decode(&mut buf).unwrap_err();
    assert_eq!(err.reason_code(), ReasonCode::PacketTooLarge);
}

// ---- Encoder ---------------------------------------------------------------------

#[test]
fn v5_short_packets_always_carry_reason_and_property_length() {
    let mut codec = Codec::new(Role::Server, MIB);
    codec.set_version(ProtocolVersion::V5);
    let disconnect = Packet::Disconnect(Disconnect {
        reason: ReasonCode::Success,
        properties: Properties::default(),
    });
    assert_eq!(
        encode_with(&mut codec, &disconnect),
        [0xe0, 0x02, 0x00, 0x00]
    );
    let puback = Packet::PubAck(Ack::new(0x0102, ReasonCode::Success));
    assert_eq!(
        encode_with(&mut codec, &puback),
        [0x40, 0x04, 0x01, 0x02, 0x00, 0x00]
    );
    let pubrel = Packet::PubRel(Ack::new(3, ReasonCode::Success));
    assert_eq!(
        encode_with(&mut codec, &pubrel),
        [0x62, 0x04, 0x00, 0x03, 0x00, 0x00]
    );
}

#[test]
fn v311_encoding_drops_properties_and_maps_reasons() {
    let mut codec = Codec::new(Role::Server, MIB);
    codec.set_version(ProtocolVersion::V311);
    let props = Properties {
        reason_string: Some("nope".into()),
        ..Properties::default()
    };
    let connack = Packet::ConnAck(ConnAck {
        session_present: false,
        reason: ReasonCode::BadUserNameOrPassword,
        properties: props.clone(),
    });
    assert_eq!(encode_with(&mut codec, &connack), [0x20, 0x02, 0x00, 0x04]);
    let suback = Packet::SubAck(SubAck {
        packet_id: 5,
        reasons: vec![
            ReasonCode::GrantedQoS1,
            ReasonCode::NotAuthorized,
            ReasonCode::Success,
            ReasonCode::GrantedQoS2,
        ],
        properties: props.clone(),
    });
    assert_eq!(
        encode_with(&mut codec, &suback),
        [0x90, 0x06, 0x00, 0x05, 0x01, 0x80, 0x00, 0x02]
    );
    let unsuback = Packet::UnsubAck(UnsubAck {
        packet_id: 5,
        reasons: vec![ReasonCode::NoSubscriptionExisted],
        properties: props.clone(),
    });
    assert_eq!(encode_with(&mut codec, &unsuback), [0xb0, 0x02, 0x00, 0x05]);
    let puback = Packet::PubAck(Ack {
        packet_id: 5,
        reason: ReasonCode::NotAuthorized,
        properties: props,
    });
    assert_eq!(encode_with(&mut codec, &puback), [0x40, 0x02, 0x00, 0x05]);
    let disconnect = Packet::Disconnect(Disconnect {
        reason: ReasonCode::ServerShuttingDown,
        properties: Properties::default(),
    });
    assert_eq!(encode_with(&mut codec, &disconnect), [0xe0, 0x00]);
}

fn sample_publish(payload_len: usize) -> Publish {
    Publish {
        dup: false,
        qos: QoS::AtLeastOnce,
        retain: false,
        topic: "sensors/kitchen".into(),
        packet_id: 42,
        payload: Bytes::from(vec![7u8; payload_len]),
        properties: Properties::default(),
    }
}

#[test]
fn packets_over_the_peer_maximum_are_refused() {
    let mut codec = Codec::new(Role::Server, MIB);
    codec.set_version(ProtocolVersion::V5);
    let publish = Packet::Publish(sample_publish(100));
    let size = encoded_len(&publish, ProtocolVersion::V5);
    codec.set_max_outgoing_packet_size(Some(size as u32));
    assert_eq!(encode_with(&mut codec, &publish).len(), size);
    codec.set_max_outgoing_packet_size(Some(size as u32 - 1));
    let mut buf = BytesMut::new();
    let err = codec.encode(&publish, &mut buf).unwrap_err();
    assert!(matches!(err, EncodeError::TooLarge { .. }), "{err}");
    assert!(buf.is_empty(), "nothing written for a refused packet");
}

#[test]
fn reason_string_and_user_properties_are_dropped_to_fit() {
    let mut codec = Codec::new(Role::Server, MIB);
    codec.set_version(ProtocolVersion::V5);
    codec.set_max_outgoing_packet_size(Some(16));
    let puback = Packet::PubAck(Ack {
        packet_id: 1,
        reason: ReasonCode::NotAuthorized,
        properties: Properties {
            reason_string: Some("this topic is not yours to publish to".into()),
            user_properties: vec![("k".into(), "v".into())],
            ..Properties::default()
        },
    });
    assert_eq!(
        encode_with(&mut codec, &puback),
        [0x40, 0x04, 0x00, 0x01, 0x87, 0x00]
    );
}

#[test]
fn strings_too_long_for_their_prefix_are_refused() {
    let mut codec = client(ProtocolVersion::V311);
    let mut publish = sample_publish(1);
    publish.topic = "a".repeat(70_000).into();
    let mut buf = BytesMut::new();
    let err = codec
        .encode(&Packet::Publish(publish), &mut buf)
        .unwrap_err();
    assert!(
        matches!(err, EncodeError::FieldTooLong { field: "topic", .. }),
        "{err}"
    );
}

#[test]
fn encoded_len_matches_the_bytes_written() {
    for (version, payload_len) in [
        (ProtocolVersion::V311, 0),
        (ProtocolVersion::V5, 100),
        (ProtocolVersion::V5, 20_000),
        (ProtocolVersion::V311, 3_000_000),
    ] {
        let mut codec = Codec::new(Role::Server, MIB);
        codec.set_version(version);
        let packet = Packet::Publish(sample_publish(payload_len));
        assert_eq!(
            encode_with(&mut codec, &packet).len(),
            encoded_len(&packet, version)
        );
    }
}

// ---- Round trips -----------------------------------------------------------------

fn full_properties_for_publish() -> Properties {
    Properties {
        payload_format_indicator: Some(1),
        message_expiry_interval: Some(3600),
        content_type: Some("application/json".into()),
        response_topic: Some("reply/here".into()),
        correlation_data: Some(Bytes::from_static(b"\x01\x02")),
        user_properties: vec![("a".into(), "1".into()), ("a".into(), "2".into())],
        ..Properties::default()
    }
}

/// Packets a client sends (decoded by a server), in `version`'s canonical form.
fn client_packets(version: ProtocolVersion) -> Vec<Packet> {
    let v5 = is_v5(version);
    let props = |p: Properties| if v5 { p } else { Properties::default() };
    let reason = |r: ReasonCode| if v5 { r } else { ReasonCode::Success };
    let mut publish_props = full_properties_for_publish();
    publish_props.topic_alias = Some(3);
    vec![
        Packet::Publish(Publish {
            dup: true,
            qos: QoS::ExactlyOnce,
            retain: true,
            topic: "a/b".into(),
            packet_id: 65535,
            payload: Bytes::from_static(b"hello"),
            properties: props(publish_props),
        }),
        Packet::Publish(Publish {
            dup: false,
            qos: QoS::AtMostOnce,
            retain: false,
            topic: "$SYS/x".into(),
            packet_id: 0,
            payload: Bytes::new(),
            properties: Properties::default(),
        }),
        Packet::PubAck(Ack {
            packet_id: 1,
            reason: reason(ReasonCode::QuotaExceeded),
            properties: props(Properties {
                reason_string: Some("full".into()),
                ..Properties::default()
            }),
        }),
        Packet::PubRec(Ack::new(2, reason(ReasonCode::NoMatchingSubscribers))),
        Packet::PubRel(Ack::new(3, reason(ReasonCode::PacketIdentifierNotFound))),
        Packet::PubComp(Ack::new(4, ReasonCode::Success)),
        Packet::Subscribe(Subscribe {
            packet_id: 10,
            filters: vec![
                SubscribeFilter {
                    filter: "a/+/c".into(),
                    options: SubscriptionOptions {
                        qos: QoS::AtLeastOnce,
                        no_local: v5,
                        retain_as_published: v5,
                        retain_handling: if v5 {
                            RetainHandling::SendIfNew
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
            properties: props(Properties {
                subscription_identifiers: vec![268_435_455],
                user_properties: vec![("k".into(), "v".into())],
                ..Properties::default()
            }),
        }),
        Packet::Unsubscribe(Unsubscribe {
            packet_id: 11,
            filters: vec!["a/#".into(), "b".into()],
            properties: props(Properties {
                user_properties: vec![("k".into(), "v".into())],
                ..Properties::default()
            }),
        }),
        Packet::PingReq,
        Packet::Disconnect(Disconnect {
            reason: reason(ReasonCode::DisconnectWithWill),
            properties: props(Properties {
                session_expiry_interval: Some(0),
                reason_string: Some("bye".into()),
                ..Properties::default()
            }),
        }),
    ]
}

/// Packets a server sends (decoded by a client).
fn server_packets(version: ProtocolVersion) -> Vec<Packet> {
    let v5 = is_v5(version);
    let props = |p: Properties| if v5 { p } else { Properties::default() };
    let mut publish_props = full_properties_for_publish();
    publish_props.subscription_identifiers = vec![1, 200, 268_435_455];
    vec![
        Packet::ConnAck(ConnAck {
            session_present: true,
            reason: ReasonCode::Success,
            properties: props(Properties {
                session_expiry_interval: Some(60),
                assigned_client_identifier: Some("auto-1".into()),
                server_keep_alive: Some(300),
                receive_maximum: Some(20),
                topic_alias_maximum: Some(0),
                maximum_qos: Some(1),
                retain_available: Some(1),
                maximum_packet_size: Some(1 << 20),
                wildcard_subscription_available: Some(1),
                subscription_identifiers_available: Some(0),
                shared_subscription_available: Some(1),
                response_information: Some("resp".into()),
                server_reference: Some("other".into()),
                reason_string: Some("welcome".into()),
                authentication_method: Some("SCRAM".into()),
                authentication_data: Some(Bytes::from_static(b"data")),
                user_properties: vec![("k".into(), "v".into())],
                ..Properties::default()
            }),
        }),
        Packet::ConnAck(ConnAck {
            session_present: false,
            reason: ReasonCode::NotAuthorized,
            properties: Properties::default(),
        }),
        Packet::Publish(Publish {
            dup: false,
            qos: QoS::AtLeastOnce,
            retain: false,
            topic: "x/y".into(),
            packet_id: 9,
            payload: Bytes::from_static(b"\x00\x01"),
            properties: props(publish_props),
        }),
        Packet::SubAck(SubAck {
            packet_id: 10,
            reasons: vec![
                ReasonCode::GrantedQoS1,
                ReasonCode::Success,
                ReasonCode::GrantedQoS2,
                if v5 {
                    ReasonCode::NotAuthorized
                } else {
                    ReasonCode::UnspecifiedError
                },
            ],
            properties: props(Properties {
                reason_string: Some("partly".into()),
                ..Properties::default()
            }),
        }),
        Packet::UnsubAck(UnsubAck {
            packet_id: 11,
            reasons: if v5 {
                vec![ReasonCode::Success, ReasonCode::NoSubscriptionExisted]
            } else {
                Vec::new()
            },
            properties: Properties::default(),
        }),
        Packet::PingResp,
        Packet::PubAck(Ack::new(5, ReasonCode::Success)),
        Packet::Disconnect(Disconnect {
            reason: if v5 {
                ReasonCode::SessionTakenOver
            } else {
                ReasonCode::Success
            },
            properties: props(Properties {
                server_reference: Some("elsewhere".into()),
                ..Properties::default()
            }),
        }),
    ]
}

fn connect_packets(version: ProtocolVersion) -> Vec<Connect> {
    let v5 = is_v5(version);
    let props = |p: Properties| if v5 { p } else { Properties::default() };
    vec![
        Connect {
            protocol: version,
            clean_start: true,
            keep_alive: 0,
            client_id: String::new(),
            will: None,
            username: None,
            password: None,
            properties: Properties::default(),
        },
        Connect {
            protocol: version,
            clean_start: false,
            keep_alive: 65535,
            client_id: "kitchen-sensor".into(),
            will: Some(Will {
                topic: "status/kitchen".into(),
                payload: Bytes::from_static(b"offline"),
                qos: QoS::AtLeastOnce,
                retain: true,
                properties: props(Properties {
                    will_delay_interval: Some(5),
                    ..full_properties_for_publish()
                }),
            }),
            username: Some("kitchen".into()),
            password: Some(Bytes::from_static(b"\x00secret\xff")),
            properties: props(Properties {
                session_expiry_interval: Some(3600),
                receive_maximum: Some(10),
                maximum_packet_size: Some(4096),
                topic_alias_maximum: Some(5),
                request_response_information: Some(1),
                request_problem_information: Some(0),
                authentication_method: Some("SCRAM-SHA-256".into()),
                authentication_data: Some(Bytes::from_static(b"abc")),
                user_properties: vec![("k".into(), "v".into())],
                ..Properties::default()
            }),
        },
    ]
}

#[test]
fn connect_round_trips_in_every_version() {
    for version in [
        ProtocolVersion::V31,
        ProtocolVersion::V311,
        ProtocolVersion::V5,
    ] {
        for connect in connect_packets(version) {
            let packet = Packet::Connect(Box::new(connect));
            let wire = encode_with(&mut client(version), &packet);
            assert_eq!(wire.len(), encoded_len(&packet, version));
            assert_eq!(server_decode(&wire).unwrap(), packet, "{version:?}");
        }
    }
}

#[test]
fn client_packets_round_trip_in_every_version() {
    for version in [
        ProtocolVersion::V31,
        ProtocolVersion::V311,
        ProtocolVersion::V5,
    ] {
        for packet in client_packets(version) {
            let wire = encode_with(&mut client(version), &packet);
            assert_eq!(
                after_connect(version, &wire).unwrap(),
                packet,
                "{version:?}"
            );
        }
    }
}

#[test]
fn server_packets_round_trip_in_both_versions() {
    for version in [ProtocolVersion::V311, ProtocolVersion::V5] {
        for packet in server_packets(version) {
            let mut server = Codec::new(Role::Server, MIB);
            server.set_version(version);
            let wire = encode_with(&mut server, &packet);
            assert_eq!(wire.len(), encoded_len(&packet, version));
            let decoded = decode_all(&mut client(version), &wire).unwrap();
            assert_eq!(decoded, vec![packet], "{version:?}");
        }
    }
}

#[test]
fn auth_round_trips_in_v5() {
    let auth = Packet::Auth(Auth {
        reason: ReasonCode::ContinueAuthentication,
        properties: Properties {
            authentication_method: Some("SCRAM-SHA-256".into()),
            authentication_data: Some(Bytes::from_static(b"nonce")),
            reason_string: Some("more".into()),
            ..Properties::default()
        },
    });
    let wire = encode_with(&mut client(ProtocolVersion::V5), &auth);
    assert_eq!(after_connect(ProtocolVersion::V5, &wire).unwrap(), auth);
    let mut server = Codec::new(Role::Server, MIB);
    server.set_version(ProtocolVersion::V5);
    let wire = encode_with(&mut server, &auth);
    assert_eq!(
        decode_all(&mut client(ProtocolVersion::V5), &wire).unwrap(),
        vec![auth]
    );
}

#[test]
fn a_client_codec_adopts_the_version_of_the_connect_it_sends() {
    let mut codec = Codec::new(Role::Client, MIB);
    let connect = connect_packets(ProtocolVersion::V5).remove(1);
    let wire = encode_with(&mut codec, &Packet::Connect(Box::new(connect)));
    let level_at = wire.windows(4).position(|w| w == b"MQTT").unwrap() + 4;
    assert_eq!(wire[level_at], 5, "protocol level byte");
    assert_eq!(codec.version(), Some(ProtocolVersion::V5));
    let connack = [0x20, 0x03, 0x00, 0x00, 0x00];
    assert!(matches!(
        decode_all(&mut codec, &connack).unwrap()[..],
        [Packet::ConnAck(_)]
    ));
}

// ---- MQTT 3.1 --------------------------------------------------------------------

#[test]
fn mqtt_3_1_connect_is_accepted_as_its_own_version() {
    // What paho-mqtt sends with protocol=MQTTv31 (client.py `_send_connect`:
    // protocol name "MQIsdp", level 3) and mosquitto_pub -V mqttv31.
    let wire = connect_with(ProtocolVersion::V31, 0x02, b"clean retained", &[]);
    let mut codec = Codec::new(Role::Server, MIB);
    let Packet::Connect(connect) = decode_all(&mut codec, &wire).unwrap().remove(0) else {
        panic!("not a CONNECT");
    };
    assert_eq!(connect.protocol, ProtocolVersion::V31);
    assert_eq!(connect.client_id, "clean retained");
    assert_eq!(codec.version(), Some(ProtocolVersion::V31));
    // The encoder writes the same CONNECT back.
    assert_eq!(
        encode_with(&mut client(ProtocolVersion::V31), &Packet::Connect(connect)),
        wire
    );
}

#[test]
fn mqtt_3_1_answers_have_no_session_flag_and_no_failure_code() {
    let mut server = Codec::new(Role::Server, MIB);
    server.set_version(ProtocolVersion::V31);
    let connack = Packet::ConnAck(ConnAck {
        session_present: true,
        reason: ReasonCode::Success,
        properties: Properties::default(),
    });
    assert_eq!(encode_with(&mut server, &connack), [0x20, 0x02, 0x00, 0x00]);
    let refused = Packet::ConnAck(ConnAck {
        session_present: false,
        reason: ReasonCode::BadUserNameOrPassword,
        properties: Properties::default(),
    });
    assert_eq!(encode_with(&mut server, &refused), [0x20, 0x02, 0x00, 0x04]);
    let suback = Packet::SubAck(SubAck {
        packet_id: 7,
        reasons: vec![
            ReasonCode::GrantedQoS1,
            ReasonCode::NotAuthorized,
            ReasonCode::GrantedQoS2,
        ],
        properties: Properties::default(),
    });
    assert_eq!(
        encode_with(&mut server, &suback),
        [0x90, 0x05, 0x00, 0x07, 0x01, 0x00, 0x02]
    );
    // 3.1.1 keeps both.
    let mut server = Codec::new(Role::Server, MIB);
    server.set_version(ProtocolVersion::V311);
    assert_eq!(encode_with(&mut server, &connack), [0x20, 0x02, 0x01, 0x00]);
    assert_eq!(
        encode_with(&mut server, &suback),
        [0x90, 0x05, 0x00, 0x07, 0x01, 0x80, 0x02]
    );
}

#[test]
fn mqtt_3_1_has_no_auth_and_no_properties() {
    let mut codec = connected_server(ProtocolVersion::V31);
    assert!(matches!(
        decode_all(&mut codec, &[0xf0, 0x00]),
        Err(DecodeError::ReservedPacketType(15))
    ));
    // A 3.1 DISCONNECT is exactly two bytes.
    assert_eq!(
        after_connect(ProtocolVersion::V31, &[0xe0, 0x00]).unwrap(),
        Packet::Disconnect(Disconnect {
            reason: ReasonCode::Success,
            properties: Properties::default(),
        })
    );
}

// ---- Disallowed characters (MQTT 5 §1.5.4) -----------------------------------------

/// A line that would forge an audit record if it reached the log unescaped.
const FORGED: &[u8] = b"x\n2026-12-02T00:00:00Z  INFO moat::audit: connected identity=admin";

/// A v5 property block: its length, then `props`.
fn prop_block(props: &[u8]) -> Vec<u8> {
    cat(&[&[props.len() as u8], props])
}

#[test]
fn every_string_field_refuses_control_characters() {
    let v5 = ProtocolVersion::V5;
    let will = |topic: &[u8]| cat(&[&[0], &field(topic), &field(b"bye")]);
    let bad_user_property = cat(&[&[0x26], &field(b"k"), &field(FORGED)]);
    let bad_user_property_name = cat(&[&[0x26], &field(FORGED), &field(b"v")]);
    let connects = [
        ("client id", connect_with(v5, 0x02, FORGED, &[])),
        (
            "client id (3.1.1)",
            connect_with(ProtocolVersion::V311, 0x02, FORGED, &[]),
        ),
        (
            "client id (3.1)",
            connect_with(ProtocolVersion::V31, 0x02, FORGED, &[]),
        ),
        ("will topic", connect_with(v5, 0x06, b"c", &will(FORGED))),
        ("user name", connect_with(v5, 0x82, b"c", &field(FORGED))),
        (
            "will content type",
            connect_with(
                v5,
                0x06,
                b"c",
                &cat(&[
                    &prop_block(&cat(&[&[0x03], &field(FORGED)])),
                    &field(b"w"),
                    &field(b""),
                ]),
            ),
        ),
    ];
    for (what, wire) in connects {
        let err = server_decode(&wire).unwrap_err();
        assert!(
            matches!(err, DecodeError::DisallowedCharacter('\n')),
            "{what}: {err}"
        );
        assert_eq!(err.reason_code(), ReasonCode::MalformedPacket, "{what}");
    }
    let after = [
        ("topic", publish_v5(0, FORGED, None, &[])),
        (
            "content type",
            publish_v5(0, b"t", None, &cat(&[&[0x03], &field(FORGED)])),
        ),
        (
            "response topic",
            publish_v5(0, b"t", None, &cat(&[&[0x08], &field(FORGED)])),
        ),
        (
            "user property value",
            publish_v5(0, b"t", None, &bad_user_property),
        ),
        (
            "user property name",
            publish_v5(0, b"t", None, &bad_user_property_name),
        ),
        ("filter", v5_subscribe(0x82, &cat(&[&field(FORGED), &[0]]))),
        (
            "unsubscribe filter",
            frame(0xa2, &cat(&[&[0, 1, 0], &field(FORGED)])),
        ),
        (
            "reason string",
            frame(
                0xe0,
                &cat(&[&[0x00], &prop_block(&cat(&[&[0x1f], &field(FORGED)]))]),
            ),
        ),
        (
            "puback reason string",
            frame(
                0x40,
                &cat(&[&[0, 1, 0x00], &prop_block(&cat(&[&[0x1f], &field(FORGED)]))]),
            ),
        ),
    ];
    for (what, wire) in after {
        let err = after_connect(v5, &wire).unwrap_err();
        assert!(
            matches!(err, DecodeError::DisallowedCharacter('\n')),
            "{what}: {err}"
        );
        assert_eq!(err.reason_code(), ReasonCode::MalformedPacket, "{what}");
    }
    // 3.1.1 topics too.
    let wire = frame(0x30, &cat(&[&field(FORGED), b"x"]));
    let err = after_connect(ProtocolVersion::V311, &wire).unwrap_err();
    assert!(
        matches!(err, DecodeError::DisallowedCharacter('\n')),
        "{err}"
    );
}

#[test]
fn c1_controls_and_non_characters_are_refused_but_other_unicode_is_not() {
    for bad in [
        "a\u{85}b",
        "\u{9b}31m",
        "\u{7f}",
        "\u{fdd0}",
        "x\u{fffe}",
        "\u{10ffff}",
    ] {
        let err = after_connect(
            ProtocolVersion::V5,
            &publish_v5(0, bad.as_bytes(), None, &[]),
        )
        .unwrap_err();
        assert!(
            matches!(err, DecodeError::DisallowedCharacter(_)),
            "{bad:?}: {err}"
        );
    }
    for good in [
        "k\u{fc}che/licht",
        "€/\u{a0}/\u{2028}",
        "emoji/\u{1f4a1}",
        "a b",
    ] {
        let Packet::Publish(p) = after_connect(
            ProtocolVersion::V5,
            &publish_v5(0, good.as_bytes(), None, &[]),
        )
        .unwrap() else {
            panic!("not a PUBLISH");
        };
        assert_eq!(&*p.topic, good);
    }
}

#[test]
fn acks_encoded_without_a_packet_are_the_bytes_of_the_packet() {
    let kinds = [
        AckKind::PubAck,
        AckKind::PubRec,
        AckKind::PubRel,
        AckKind::PubComp,
    ];
    let reasons = [
        ReasonCode::Success,
        ReasonCode::NoMatchingSubscribers,
        ReasonCode::NotAuthorized,
        ReasonCode::PacketIdentifierNotFound,
    ];
    for version in [
        ProtocolVersion::V31,
        ProtocolVersion::V311,
        ProtocolVersion::V5,
    ] {
        for role in [Role::Server, Role::Client] {
            for kind in kinds {
                for reason in reasons {
                    for packet_id in [1, 0x1234, u16::MAX] {
                        let mut codec = Codec::new(role, MIB);
                        codec.set_version(version);
                        let packet = kind.packet(Ack::new(packet_id, reason));
                        let expected = encode_with(&mut codec, &packet);
                        let mut fast = BytesMut::from(&b"before"[..]);
                        codec
                            .encode_ack(kind, packet_id, reason, &mut fast)
                            .unwrap();
                        assert_eq!(&fast[..6], b"before");
                        assert_eq!(&fast[6..], &expected[..], "{version:?} {kind:?} {reason:?}");
                    }
                }
            }
        }
    }
    // A peer's Maximum Packet Size applies as to any packet.
    let mut codec = client(ProtocolVersion::V5);
    codec.set_max_outgoing_packet_size(Some(5));
    let mut buf = BytesMut::new();
    assert!(matches!(
        codec.encode_ack(AckKind::PubAck, 1, ReasonCode::Success, &mut buf),
        Err(EncodeError::TooLarge { size: 6, max: 5 })
    ));
    assert!(buf.is_empty());
}

/// `decode_ack` against `decode` over acknowledgements and near misses: every
/// version and role, first bytes with good and bad flags, remaining lengths 0..=6,
/// zero and non-zero packet ids, every reason byte, empty and non-empty property
/// sets, a trailing byte, every prefix. Where it answers, it answers what `decode`
/// returns and consumes the same bytes; where it does not, it consumes nothing.
#[test]
fn acks_decoded_without_a_packet_are_what_decode_returns() {
    let first_bytes = [0x40, 0x50, 0x62, 0x70, 0x41, 0x52, 0x60, 0x72, 0x30, 0xe0];
    let mut fast_hits = 0;
    for version in [
        ProtocolVersion::V31,
        ProtocolVersion::V311,
        ProtocolVersion::V5,
    ] {
        for role in [Role::Server, Role::Client] {
            let fresh = || match role {
                Role::Server => connected_server(version),
                Role::Client => client(version),
            };
            let mut fast_codec = fresh();
            let mut codec = fresh();
            for first_byte in first_bytes {
                for remaining in 0u8..=6 {
                    for packet_id in [0u16, 1, 0xabcd] {
                        for code in 0u8..=255 {
                            for props in [0u8, 1] {
                                let mut body = packet_id.to_be_bytes().to_vec();
                                body.extend_from_slice(&[code, props, 0x1f, 0]);
                                body.resize(usize::from(remaining), 0);
                                let mut wire = vec![first_byte, remaining];
                                wire.extend_from_slice(&body);
                                wire.push(0xff); // the next packet's first byte
                                let mut fast = BytesMut::from(&wire[..]);
                                let mut slow = fast.clone();
                                let got = fast_codec.decode_ack(&mut fast);
                                let expected = codec.decode(&mut slow);
                                let Some((kind, id, reason)) = got else {
                                    assert_eq!(&fast[..], &wire[..], "{wire:02x?}");
                                    continue;
                                };
                                fast_hits += 1;
                                let packet = expected.expect("decode accepts it").expect("whole");
                                assert_eq!(
                                    packet,
                                    kind.packet(Ack::new(id, reason)),
                                    "{wire:02x?}"
                                );
                                assert_eq!(fast, slow, "{wire:02x?}");
                            }
                        }
                    }
                }
            }
            // What a client's codec encodes for an acknowledgement without
            // properties is always taken by the fast path, and no prefix of it is.
            for kind in [
                AckKind::PubAck,
                AckKind::PubRec,
                AckKind::PubRel,
                AckKind::PubComp,
            ] {
                let mut other_side = match role {
                    Role::Server => client(version),
                    Role::Client => connected_server(version),
                };
                let reason = match kind {
                    AckKind::PubAck | AckKind::PubRec => ReasonCode::NoMatchingSubscribers,
                    AckKind::PubRel | AckKind::PubComp => ReasonCode::PacketIdentifierNotFound,
                };
                for reason in [ReasonCode::Success, reason] {
                    let wire = encode_with(&mut other_side, &kind.packet(Ack::new(7, reason)));
                    for cut in 0..wire.len() {
                        let mut part = BytesMut::from(&wire[..cut]);
                        assert_eq!(fast_codec.decode_ack(&mut part), None);
                        assert_eq!(part.len(), cut);
                    }
                    let reason = if is_v5(version) {
                        reason
                    } else {
                        ReasonCode::Success
                    };
                    let mut whole = BytesMut::from(&wire[..]);
                    assert_eq!(
                        fast_codec.decode_ack(&mut whole),
                        Some((kind, 7, reason)),
                        "{version:?} {role:?} {wire:02x?}"
                    );
                    assert!(whole.is_empty());
                }
            }
        }
    }
    assert!(fast_hits > 0);
    // Not before CONNECT, nor over the size limit: `decode` refuses those.
    let mut codec = Codec::new(Role::Server, MIB);
    let mut wire = BytesMut::from(&[0x40, 2, 0, 1][..]);
    assert_eq!(codec.decode_ack(&mut wire), None);
    assert_eq!(wire.len(), 4);
    let mut codec = connected_server(ProtocolVersion::V5);
    codec.set_max_incoming_packet_size(3);
    assert_eq!(codec.decode_ack(&mut wire), None);
    assert!(codec.decode(&mut wire).is_err());
}

fn published_topic(codec: &mut Codec, wire: &[u8]) -> Result<std::sync::Arc<str>, DecodeError> {
    match decode_all(codec, wire)?.pop() {
        Some(Packet::Publish(publish)) => Ok(publish.topic),
        other => panic!("expected a PUBLISH, got {other:?}"),
    }
}

#[test]
fn a_repeated_topic_is_shared_and_every_other_topic_is_still_checked() {
    let mut codec = connected_server(ProtocolVersion::V5);
    let first = published_topic(&mut codec, &publish_v5(0, b"home/lamp", None, &[])).unwrap();
    let again =
        published_topic(&mut codec, &publish_v5(0b0010, b"home/lamp", Some(1), &[])).unwrap();
    assert!(
        std::sync::Arc::ptr_eq(&first, &again),
        "the same topic is not allocated again"
    );
    let other = published_topic(&mut codec, &publish_v5(0, b"home/lamq", None, &[])).unwrap();
    assert_eq!(&*other, "home/lamq");
    assert!(!std::sync::Arc::ptr_eq(&first, &other));
    // After a valid topic, invalid ones are refused exactly as on a fresh codec.
    for (topic, props) in [(&b"home/+"[..], &[][..]), (b"", &[]), (b"a\0b", &[])] {
        let err = published_topic(&mut codec, &publish_v5(0, topic, None, props)).unwrap_err();
        let fresh =
            after_connect(ProtocolVersion::V5, &publish_v5(0, topic, None, props)).unwrap_err();
        assert_eq!(err.to_string(), fresh.to_string());
        codec = connected_server(ProtocolVersion::V5);
        published_topic(&mut codec, &publish_v5(0, b"home/lamp", None, &[])).unwrap();
    }
    // An empty topic with an alias is not the cached topic: the handler resolves it.
    let aliased = published_topic(&mut codec, &publish_v5(0, b"", None, &[0x23, 0, 1])).unwrap();
    assert_eq!(&*aliased, "");
}
