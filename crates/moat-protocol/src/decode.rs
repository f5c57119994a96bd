//! Decoding packet bodies once the fixed header has been checked and the whole packet
//! has arrived. Every field is validated here; the result is a packet the broker can
//! trust structurally. Framing, size limits and packet order live in `codec`.

use bytes::Bytes;

use super::codec::{LastTopic, Role};
use super::error::DecodeError;
use super::header::PacketType;
use super::packet::*;
use super::properties::{self, Context};
use super::reader::Reader;
use super::reason::ReasonCode;
use super::topic::{self, TopicError};

/// Reads the protocol name and level that open a CONNECT and returns the version
/// they select. Called first so the codec learns the version even if a later field
/// is bad (the broker then answers with a CONNACK in the client's version).
pub(crate) fn connect_protocol(reader: &mut Reader) -> Result<ProtocolVersion, DecodeError> {
    let name = reader.binary()?;
    let level = reader.u8()?;
    match (&name[..], level) {
        (b"MQTT", 4) => Ok(ProtocolVersion::V311),
        (b"MQTT", 5) => Ok(ProtocolVersion::V5),
        (b"MQIsdp", 3) => Ok(ProtocolVersion::V31),
        (b"MQTT" | b"MQIsdp", level) => Err(DecodeError::UnsupportedProtocolVersion(level)),
        _ => Err(DecodeError::InvalidProtocolName),
    }
}

/// The rest of a CONNECT, after [`connect_protocol`].
pub(crate) fn connect(
    mut reader: Reader,
    version: ProtocolVersion,
) -> Result<Connect, DecodeError> {
    let v5 = version == ProtocolVersion::V5;
    let flags = reader.u8()?;
    if flags & 0x01 != 0 {
        return Err(DecodeError::ConnectReservedFlag); // MQTT-3.1.2-3
    }
    let clean_start = flags & 0x02 != 0;
    let will_flag = flags & 0x04 != 0;
    let will_qos = (flags >> 3) & 0x03;
    let will_retain = flags & 0x20 != 0;
    let has_password = flags & 0x40 != 0;
    let has_username = flags & 0x80 != 0;
    // MQTT-3.1.2-11/-13/-14/-15.
    if will_qos == 3 || (!will_flag && (will_qos != 0 || will_retain)) {
        return Err(DecodeError::InvalidWillFlags);
    }
    if !v5 && has_password && !has_username {
        return Err(DecodeError::PasswordWithoutUsername); // MQTT-3.1.2-22
    }
    let keep_alive = reader.u16()?;
    let properties = v5_properties(&mut reader, version, Context::Connect)?;
    // Any characters: the broker applies its own client id policy.
    let client_id = reader.string()?;
    let will = if will_flag {
        let properties = v5_properties(&mut reader, version, Context::Will)?;
        let topic = reader.string()?;
        topic::validate_topic_name(&topic).map_err(DecodeError::InvalidTopicName)?;
        let payload = reader.binary()?;
        Some(Will {
            topic,
            payload,
            qos: qos(will_qos)?,
            retain: will_retain,
            properties,
        })
    } else {
        None
    };
    let username = if has_username {
        Some(reader.string()?)
    } else {
        None
    };
    let password = if has_password {
        Some(reader.binary()?)
    } else {
        None
    };
    reader.finish()?;
    Ok(Connect {
        protocol: version,
        clean_start,
        keep_alive,
        client_id,
        will,
        username,
        password,
        properties,
    })
}

/// Any packet but CONNECT. The functions a PUBLISH and an acknowledgement go
/// through are inlined into it and it into `Codec::decode`: a packet is a few
/// hundred bytes (its `Properties`), copied once per function it is returned from.
#[inline(always)]
pub(crate) fn packet(
    packet_type: PacketType,
    flags: u8,
    body: Bytes,
    version: ProtocolVersion,
    role: Role,
    last_topic: &mut LastTopic,
) -> Result<Packet, DecodeError> {
    let mut reader = Reader::new(body);
    let packet = match packet_type {
        PacketType::Connect => {
            // The codec routes CONNECT to `connect`; reaching here is a second one.
            return Err(DecodeError::DuplicateConnect);
        }
        PacketType::ConnAck => Packet::ConnAck(connack(&mut reader, version)?),
        PacketType::Publish => {
            let publish = publish(flags, &mut reader, version, role, last_topic)?;
            return Ok(Packet::Publish(publish));
        }
        PacketType::PubAck => Packet::PubAck(ack(packet_type, &mut reader, version)?),
        PacketType::PubRec => Packet::PubRec(ack(packet_type, &mut reader, version)?),
        PacketType::PubRel => Packet::PubRel(ack(packet_type, &mut reader, version)?),
        PacketType::PubComp => Packet::PubComp(ack(packet_type, &mut reader, version)?),
        PacketType::Subscribe => Packet::Subscribe(subscribe(&mut reader, version)?),
        PacketType::SubAck => Packet::SubAck(suback(&mut reader, version)?),
        PacketType::Unsubscribe => Packet::Unsubscribe(unsubscribe(&mut reader, version)?),
        PacketType::UnsubAck => Packet::UnsubAck(unsuback(&mut reader, version)?),
        PacketType::PingReq => Packet::PingReq,
        PacketType::PingResp => Packet::PingResp,
        PacketType::Disconnect => {
            let (reason, properties) =
                reason_and_properties(packet_type, &mut reader, version, Context::Disconnect)?;
            Packet::Disconnect(Disconnect { reason, properties })
        }
        PacketType::Auth => {
            let (reason, properties) =
                reason_and_properties(packet_type, &mut reader, version, Context::Auth)?;
            Packet::Auth(Auth { reason, properties })
        }
    };
    reader.finish()?;
    Ok(packet)
}

fn qos(value: u8) -> Result<QoS, DecodeError> {
    QoS::from_u8(value).ok_or(DecodeError::InvalidQoS(value))
}

#[inline(always)]
fn v5_properties(
    reader: &mut Reader,
    version: ProtocolVersion,
    context: Context,
) -> Result<Properties, DecodeError> {
    match version {
        ProtocolVersion::V5 => properties::decode(reader, context),
        ProtocolVersion::V311 | ProtocolVersion::V31 => Ok(Properties::default()),
    }
}

/// Whether MQTT 5 allows `code` in this packet type (the reason code tables of §3).
pub(crate) fn reason_allowed(packet_type: PacketType, code: u8) -> bool {
    match packet_type {
        PacketType::ConnAck => matches!(
            code,
            0x00 | 0x80..=0x8A | 0x8C | 0x90 | 0x95 | 0x97 | 0x99..=0x9D | 0x9F
        ),
        PacketType::PubAck | PacketType::PubRec => matches!(
            code,
            0x00 | 0x10 | 0x80 | 0x83 | 0x87 | 0x90 | 0x91 | 0x97 | 0x99
        ),
        PacketType::PubRel | PacketType::PubComp => matches!(code, 0x00 | 0x92),
        PacketType::SubAck => matches!(
            code,
            0x00..=0x02 | 0x80 | 0x83 | 0x87 | 0x8F | 0x91 | 0x97 | 0x9E | 0xA1 | 0xA2
        ),
        PacketType::UnsubAck => matches!(code, 0x00 | 0x11 | 0x80 | 0x83 | 0x87 | 0x8F | 0x91),
        PacketType::Disconnect => matches!(
            code,
            0x00 | 0x04
                | 0x80..=0x83
                | 0x87
                | 0x89
                | 0x8B
                | 0x8D..=0x90
                | 0x93..=0xA2
        ),
        PacketType::Auth => matches!(code, 0x00 | 0x18 | 0x19),
        _ => false,
    }
}

fn reason(packet_type: PacketType, code: u8) -> Result<ReasonCode, DecodeError> {
    ReasonCode::from_u8(code)
        .filter(|_| reason_allowed(packet_type, code))
        .ok_or(DecodeError::InvalidReasonCode {
            packet: packet_type.name(),
            code,
        })
}

fn connack(reader: &mut Reader, version: ProtocolVersion) -> Result<ConnAck, DecodeError> {
    let flags = reader.u8()?;
    if flags & 0xfe != 0 {
        return Err(DecodeError::InvalidConnAckFlags(flags));
    }
    let code = reader.u8()?;
    let (reason, properties) = match version {
        ProtocolVersion::V311 | ProtocolVersion::V31 => {
            let reason = match code {
                0 => ReasonCode::Success,
                1 => ReasonCode::UnsupportedProtocolVersion,
                2 => ReasonCode::ClientIdentifierNotValid,
                3 => ReasonCode::ServerUnavailable,
                4 => ReasonCode::BadUserNameOrPassword,
                5 => ReasonCode::NotAuthorized,
                _ => {
                    return Err(DecodeError::InvalidReasonCode {
                        packet: "CONNACK",
                        code,
                    });
                }
            };
            (reason, Properties::default())
        }
        ProtocolVersion::V5 => (
            reason(PacketType::ConnAck, code)?,
            properties::decode(reader, Context::ConnAck)?,
        ),
    };
    // A refused connection never has a session (MQTT-3.2.2-4, MQTT-3.2.2-6).
    let session_present = flags & 0x01 != 0;
    if session_present && reason != ReasonCode::Success {
        return Err(DecodeError::InvalidConnAckFlags(flags));
    }
    Ok(ConnAck {
        session_present,
        reason,
        properties,
    })
}

#[inline(always)]
fn publish(
    flags: u8,
    reader: &mut Reader,
    version: ProtocolVersion,
    role: Role,
    last_topic: &mut LastTopic,
) -> Result<Publish, DecodeError> {
    let dup = flags & 0b1000 != 0;
    let qos = qos((flags >> 1) & 0b11)?;
    let retain = flags & 0b0001 != 0;
    if dup && qos == QoS::AtMostOnce {
        return Err(DecodeError::DupWithQoS0); // MQTT-3.3.1-2
    }
    let (topic, checked) = reader.topic(last_topic.get())?;
    let packet_id = match qos {
        QoS::AtMostOnce => 0,
        QoS::AtLeastOnce | QoS::ExactlyOnce => reader.packet_id()?,
    };
    let context = Context::Publish {
        to_client: role == Role::Client,
    };
    let properties = v5_properties(reader, version, context)?;
    if checked {
        // The previous topic again: valid, and not empty.
    } else if topic.is_empty() {
        // Only a v5 topic alias may stand in for the topic name (§3.3.2.1).
        match version {
            ProtocolVersion::V5 if properties.topic_alias.is_some() => {}
            ProtocolVersion::V5 => return Err(DecodeError::EmptyTopicWithoutAlias),
            ProtocolVersion::V311 | ProtocolVersion::V31 => {
                return Err(DecodeError::InvalidTopicName(TopicError::Empty));
            }
        }
    } else {
        topic::validate_topic_name(&topic).map_err(DecodeError::InvalidTopicName)?;
        last_topic.set(&topic);
    }
    Ok(Publish {
        dup,
        qos,
        retain,
        topic,
        packet_id,
        payload: reader.rest(),
        properties,
    })
}

/// PUBACK, PUBREC, PUBREL, PUBCOMP. In v5 the reason code and the properties may be
/// left out (remaining length 2 or 3), meaning Success and none.
#[inline(always)]
fn ack(
    packet_type: PacketType,
    reader: &mut Reader,
    version: ProtocolVersion,
) -> Result<Ack, DecodeError> {
    let packet_id = reader.packet_id()?;
    let (reason, properties) = reason_and_properties(packet_type, reader, version, Context::Ack)?;
    Ok(Ack {
        packet_id,
        reason,
        properties,
    })
}

/// The optional reason code and properties that end acks, DISCONNECT and AUTH.
#[inline(always)]
fn reason_and_properties(
    packet_type: PacketType,
    reader: &mut Reader,
    version: ProtocolVersion,
    context: Context,
) -> Result<(ReasonCode, Properties), DecodeError> {
    if !version.is_v5() || reader.is_empty() {
        return Ok((ReasonCode::Success, Properties::default()));
    }
    let reason = reason(packet_type, reader.u8()?)?;
    let properties = if reader.is_empty() {
        Properties::default()
    } else {
        properties::decode(reader, context)?
    };
    Ok((reason, properties))
}

fn subscribe(reader: &mut Reader, version: ProtocolVersion) -> Result<Subscribe, DecodeError> {
    let packet_id = reader.packet_id()?;
    let properties = v5_properties(reader, version, Context::Subscribe)?;
    let mut filters = Vec::new();
    while !reader.is_empty() {
        let filter = reader.string()?;
        topic::validate_topic_filter(&filter).map_err(DecodeError::InvalidTopicFilter)?;
        let options = subscription_options(reader.u8()?, version)?;
        if options.no_local && matches!(topic::parse_shared(&filter), Ok(Some(_))) {
            return Err(DecodeError::NoLocalOnSharedSubscription); // MQTT-3.8.3-4
        }
        filters.push(SubscribeFilter { filter, options });
    }
    if filters.is_empty() {
        return Err(DecodeError::NoTopicFilters("SUBSCRIBE")); // MQTT-3.8.3-2
    }
    Ok(Subscribe {
        packet_id,
        filters,
        properties,
    })
}

fn subscription_options(
    byte: u8,
    version: ProtocolVersion,
) -> Result<SubscriptionOptions, DecodeError> {
    // 3.1(.1) has only the QoS bits (MQTT-3.8.3-4); v5 reserves bits 6 and 7 (MQTT-3.8.3-5).
    let reserved = match version {
        ProtocolVersion::V311 | ProtocolVersion::V31 => 0b1111_1100,
        ProtocolVersion::V5 => 0b1100_0000,
    };
    if byte & reserved != 0 {
        return Err(DecodeError::InvalidSubscriptionOptions(byte));
    }
    let retain_handling = match (byte >> 4) & 0b11 {
        0 => RetainHandling::SendAtSubscribe,
        1 => RetainHandling::SendIfNew,
        2 => RetainHandling::DoNotSend,
        _ => return Err(DecodeError::InvalidRetainHandling),
    };
    Ok(SubscriptionOptions {
        qos: qos(byte & 0b11)?,
        no_local: byte & 0b0100 != 0,
        retain_as_published: byte & 0b1000 != 0,
        retain_handling,
    })
}

fn suback(reader: &mut Reader, version: ProtocolVersion) -> Result<SubAck, DecodeError> {
    let packet_id = reader.packet_id()?;
    let properties = v5_properties(reader, version, Context::SubAck)?;
    let mut reasons = Vec::new();
    while !reader.is_empty() {
        let code = reader.u8()?;
        reasons.push(match version {
            ProtocolVersion::V5 => reason(PacketType::SubAck, code)?,
            ProtocolVersion::V311 | ProtocolVersion::V31 => match code {
                0x00 => ReasonCode::Success,
                0x01 => ReasonCode::GrantedQoS1,
                0x02 => ReasonCode::GrantedQoS2,
                0x80 => ReasonCode::UnspecifiedError,
                _ => {
                    return Err(DecodeError::InvalidReasonCode {
                        packet: "SUBACK",
                        code,
                    });
                }
            },
        });
    }
    if reasons.is_empty() {
        return Err(DecodeError::Truncated);
    }
    Ok(SubAck {
        packet_id,
        reasons,
        properties,
    })
}

fn unsubscribe(reader: &mut Reader, version: ProtocolVersion) -> Result<Unsubscribe, DecodeError> {
    let packet_id = reader.packet_id()?;
    let properties = v5_properties(reader, version, Context::Unsubscribe)?;
    let mut filters = Vec::new();
    while !reader.is_empty() {
        let filter = reader.string()?;
        topic::validate_topic_filter(&filter).map_err(DecodeError::InvalidTopicFilter)?;
        filters.push(filter);
    }
    if filters.is_empty() {
        return Err(DecodeError::NoTopicFilters("UNSUBSCRIBE")); // MQTT-3.10.3-2
    }
    Ok(Unsubscribe {
        packet_id,
        filters,
        properties,
    })
}

fn unsuback(reader: &mut Reader, version: ProtocolVersion) -> Result<UnsubAck, DecodeError> {
    let packet_id = reader.packet_id()?;
    let mut unsuback = UnsubAck {
        packet_id,
        reasons: Vec::new(),
        properties: Properties::default(),
    };
    if !version.is_v5() {
        return Ok(unsuback);
    }
    unsuback.properties = properties::decode(reader, Context::UnsubAck)?;
    while !reader.is_empty() {
        unsuback
            .reasons
            .push(reason(PacketType::UnsubAck, reader.u8()?)?);
    }
    if unsuback.reasons.is_empty() {
        return Err(DecodeError::Truncated);
    }
    Ok(unsuback)
}
