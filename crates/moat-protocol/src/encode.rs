//! Encoding packets for the negotiated version. For 3.1.1 properties are dropped and
//! reason codes mapped to return codes; for v5 acks, DISCONNECT and AUTH always carry
//! a reason code and a property length (some clients reject the short forms). Packets
//! larger than the peer's Maximum Packet Size are refused, after first trying without
//! the Reason String and User Properties, which MQTT 5 says to drop in that case.
//! A PUBLISH can also be written from borrowed parts ([`PublishRef`]), through the
//! same code as a [`Publish`]: the broker encodes each delivery that way.

use bytes::BytesMut;

use super::codec::Role;
use super::error::EncodeError;
use super::header::PacketType;
use super::packet::*;
use super::properties::{self, Context, PerDelivery};
use super::reason::ReasonCode;
use super::sink::{self, Counter, Sink};
use super::varint::{self, MAX_VARINT};

/// Bytes `packet` takes on the wire (fixed header included) when a server sends it in
/// `version`. Best effort for a packet the encoder would refuse (a string longer than
/// 64 KiB, AUTH in 3.1.1): then the bytes counted up to that field.
pub fn encoded_len(packet: &Packet, version: ProtocolVersion) -> usize {
    let mut counter = Counter::default();
    // An error only stops the count early; the partial count is still a fair estimate.
    let _ = body(&mut counter, packet, version, Role::Server);
    let remaining = counter.0;
    1 + varint::len(u32::try_from(remaining).unwrap_or(u32::MAX)) + remaining
}

/// Appends `packet` to `dst`, refusing it if it exceeds `max_size` bytes.
pub(crate) fn encode(
    packet: &Packet,
    version: ProtocolVersion,
    role: Role,
    max_size: Option<u32>,
    dst: &mut BytesMut,
) -> Result<(), EncodeError> {
    let framed = Framed::Packet(packet);
    let remaining = measure(framed, version, role)?;
    if let Err(too_large) = check_max(remaining, max_size) {
        return match without_optional_properties(packet) {
            Some(smaller) => encode(&smaller, version, role, max_size, dst),
            None => Err(too_large),
        };
    }
    write(framed, version, role, remaining, dst)
}

/// Appends one PUBLISH built from borrowed parts, refusing it if it exceeds
/// `max_size` bytes. The same wire code as a [`Publish`] in [`encode`].
pub(crate) fn encode_publish(
    publish: &PublishRef<'_>,
    version: ProtocolVersion,
    role: Role,
    max_size: Option<u32>,
    dst: &mut BytesMut,
) -> Result<(), EncodeError> {
    if publish.properties.is_none()
        && publish.subscription_identifiers.is_empty()
        && publish.message_expiry_interval.is_none()
    {
        return encode_bare_publish(publish, version, max_size, dst);
    }
    encode_framed_publish(publish, version, role, max_size, dst)
}

/// [`encode_publish`] through the general encoder: measured by a first pass, then
/// written by a second.
fn encode_framed_publish(
    publish: &PublishRef<'_>,
    version: ProtocolVersion,
    role: Role,
    max_size: Option<u32>,
    dst: &mut BytesMut,
) -> Result<(), EncodeError> {
    let framed = Framed::Publish(publish);
    let remaining = measure(framed, version, role)?;
    check_max(remaining, max_size)?;
    write(framed, version, role, remaining, dst)
}

/// A PUBLISH without any property (in v5, a property length of zero), the common
/// delivery: its length is the sum of its parts, so the measuring pass of the
/// general encoder and its per-field dispatch are skipped (issue 16: they were
/// ~250 of the ~350 instructions that encoding took per fanned-out delivery). The
/// same bytes and the same refusals, in the same order, as
/// [`encode_framed_publish`] (tested).
fn encode_bare_publish(
    publish: &PublishRef<'_>,
    version: ProtocolVersion,
    max_size: Option<u32>,
    dst: &mut BytesMut,
) -> Result<(), EncodeError> {
    let topic = publish.topic.as_bytes();
    let topic_len = u16::try_from(topic.len()).map_err(|_| EncodeError::FieldTooLong {
        field: "topic",
        len: topic.len(),
    })?;
    let packet_id = publish.qos != QoS::AtMostOnce;
    let remaining = 2
        + topic.len()
        + if packet_id { 2 } else { 0 }
        + usize::from(version.is_v5())
        + publish.payload.len();
    if remaining > MAX_VARINT as usize {
        return Err(EncodeError::TooLarge {
            size: total_len(remaining),
            max: MAX_VARINT,
        });
    }
    check_max(remaining, max_size)?;
    dst.reserve(total_len(remaining) as usize);
    Sink::put_u8(dst, publish_first_byte(publish));
    sink::put_varint(dst, "remaining length", remaining)?;
    Sink::put_u16(dst, topic_len);
    Sink::put_slice(dst, topic);
    if packet_id {
        Sink::put_u16(dst, publish.packet_id);
    }
    if version.is_v5() {
        Sink::put_u8(dst, 0);
    }
    Sink::put_slice(dst, publish.payload);
    Ok(())
}

/// What is framed: a packet, or a PUBLISH from borrowed parts.
#[derive(Clone, Copy)]
enum Framed<'a> {
    Packet(&'a Packet),
    Publish(&'a PublishRef<'a>),
}

impl Framed<'_> {
    fn first_byte(self) -> u8 {
        match self {
            Framed::Packet(packet) => first_byte(packet),
            Framed::Publish(publish) => publish_first_byte(publish),
        }
    }

    fn body<S: Sink>(
        self,
        sink: &mut S,
        version: ProtocolVersion,
        role: Role,
    ) -> Result<(), EncodeError> {
        match self {
            Framed::Packet(packet) => body(sink, packet, version, role),
            Framed::Publish(publish) => publish_body(sink, publish, version, role),
        }
    }
}

/// The remaining length of `packet` (its bytes after the fixed header), refused
/// beyond what the remaining-length field can say.
fn measure(packet: Framed<'_>, version: ProtocolVersion, role: Role) -> Result<usize, EncodeError> {
    let mut counter = Counter::default();
    packet.body(&mut counter, version, role)?;
    let remaining = counter.0;
    if remaining > MAX_VARINT as usize {
        return Err(EncodeError::TooLarge {
            size: total_len(remaining),
            max: MAX_VARINT,
        });
    }
    Ok(remaining)
}

fn total_len(remaining: usize) -> u64 {
    (1 + varint::len(u32::try_from(remaining).unwrap_or(u32::MAX)) + remaining) as u64
}

/// The peer's Maximum Packet Size counts the whole packet (MQTT-3.1.2-24).
fn check_max(remaining: usize, max_size: Option<u32>) -> Result<(), EncodeError> {
    let total = total_len(remaining);
    match max_size {
        Some(max) if total > u64::from(max) => Err(EncodeError::TooLarge { size: total, max }),
        _ => Ok(()),
    }
}

fn write(
    packet: Framed<'_>,
    version: ProtocolVersion,
    role: Role,
    remaining: usize,
    dst: &mut BytesMut,
) -> Result<(), EncodeError> {
    dst.reserve(total_len(remaining) as usize);
    Sink::put_u8(dst, packet.first_byte());
    sink::put_varint(dst, "remaining length", remaining)?;
    packet.body(dst, version, role)
}

fn publish_first_byte(publish: &PublishRef<'_>) -> u8 {
    let mut byte = (PacketType::Publish as u8) << 4;
    byte |= (publish.qos as u8) << 1;
    if publish.dup {
        byte |= 0b1000;
    }
    if publish.retain {
        byte |= 0b0001;
    }
    byte
}

fn publish_body<S: Sink>(
    sink: &mut S,
    publish: &PublishRef<'_>,
    version: ProtocolVersion,
    role: Role,
) -> Result<(), EncodeError> {
    sink::put_str(sink, "topic", publish.topic)?;
    if publish.qos != QoS::AtMostOnce {
        sink.put_u16(publish.packet_id);
    }
    if version.is_v5() {
        let context = Context::Publish {
            to_client: role == Role::Server,
        };
        let per_delivery = PerDelivery {
            subscription_identifiers: publish.subscription_identifiers,
            message_expiry_interval: publish.message_expiry_interval,
        };
        properties::encode_with(sink, publish.properties, per_delivery, context)?;
    }
    // The payload is copied once, straight into the output buffer.
    sink.put_slice(publish.payload);
    Ok(())
}

fn first_byte(packet: &Packet) -> u8 {
    let packet_type = match packet {
        Packet::Publish(publish) => return publish_first_byte(&PublishRef::from(publish)),
        Packet::Connect(_) => PacketType::Connect,
        Packet::ConnAck(_) => PacketType::ConnAck,
        Packet::PubAck(_) => PacketType::PubAck,
        Packet::PubRec(_) => PacketType::PubRec,
        Packet::PubRel(_) => PacketType::PubRel,
        Packet::PubComp(_) => PacketType::PubComp,
        Packet::Subscribe(_) => PacketType::Subscribe,
        Packet::SubAck(_) => PacketType::SubAck,
        Packet::Unsubscribe(_) => PacketType::Unsubscribe,
        Packet::UnsubAck(_) => PacketType::UnsubAck,
        Packet::PingReq => PacketType::PingReq,
        Packet::PingResp => PacketType::PingResp,
        Packet::Disconnect(_) => PacketType::Disconnect,
        Packet::Auth(_) => PacketType::Auth,
    };
    packet_type.first_byte()
}

/// A copy without Reason String and User Properties, if the packet type may drop
/// them (MQTT-3.2.2-19/-20 and the like); `None` if there is nothing to drop.
fn without_optional_properties(packet: &Packet) -> Option<Packet> {
    let mut smaller = packet.clone();
    let props = match &mut smaller {
        Packet::ConnAck(p) => &mut p.properties,
        Packet::PubAck(p) | Packet::PubRec(p) | Packet::PubRel(p) | Packet::PubComp(p) => {
            &mut p.properties
        }
        Packet::SubAck(p) => &mut p.properties,
        Packet::UnsubAck(p) => &mut p.properties,
        Packet::Disconnect(p) => &mut p.properties,
        Packet::Auth(p) => &mut p.properties,
        _ => return None,
    };
    if props.reason_string.is_none() && props.user_properties.is_empty() {
        return None;
    }
    props.reason_string = None;
    props.user_properties.clear();
    Some(smaller)
}

fn body<S: Sink>(
    sink: &mut S,
    packet: &Packet,
    version: ProtocolVersion,
    role: Role,
) -> Result<(), EncodeError> {
    let v5 = version == ProtocolVersion::V5;
    match packet {
        Packet::Connect(connect) => connect_body(sink, connect, version),
        Packet::ConnAck(connack) => {
            // 3.1's first CONNACK byte is reserved: the flag came with 3.1.1 (Mosquitto
            // sets it only for 3.1.1 and 5, handle_connect.c).
            sink.put_u8(u8::from(
                connack.session_present && version != ProtocolVersion::V31,
            ));
            if v5 {
                sink.put_u8(connack.reason as u8);
                properties::encode(sink, &connack.properties, Context::ConnAck)
            } else {
                sink.put_u8(connack.reason.to_v311_connack());
                Ok(())
            }
        }
        Packet::Publish(publish) => publish_body(sink, &PublishRef::from(publish), version, role),
        Packet::PubAck(ack) | Packet::PubRec(ack) | Packet::PubRel(ack) | Packet::PubComp(ack) => {
            sink.put_u16(ack.packet_id);
            reason_and_properties(sink, version, ack.reason, &ack.properties, Context::Ack)
        }
        Packet::Subscribe(subscribe) => {
            sink.put_u16(subscribe.packet_id);
            if v5 {
                properties::encode(sink, &subscribe.properties, Context::Subscribe)?;
            }
            for filter in &subscribe.filters {
                sink::put_str(sink, "topic filter", &filter.filter)?;
                sink.put_u8(options_byte(&filter.options, version));
            }
            Ok(())
        }
        Packet::SubAck(suback) => {
            sink.put_u16(suback.packet_id);
            if v5 {
                properties::encode(sink, &suback.properties, Context::SubAck)?;
            }
            for &reason in &suback.reasons {
                sink.put_u8(match (version, reason) {
                    (ProtocolVersion::V5, reason) => reason as u8,
                    (ProtocolVersion::V311, reason) if reason.is_error() => 0x80,
                    // 3.1 has no failure code: a SUBACK can only grant. Mosquitto
                    // (handle_subscribe.c) likewise answers a refused 3.1 filter with
                    // a QoS; the refusal is in the log and the denial counters.
                    (ProtocolVersion::V31, reason) if reason.is_error() => 0x00,
                    (_, ReasonCode::GrantedQoS1) => 0x01,
                    (_, ReasonCode::GrantedQoS2) => 0x02,
                    (_, _) => 0x00,
                });
            }
            Ok(())
        }
        Packet::Unsubscribe(unsubscribe) => {
            sink.put_u16(unsubscribe.packet_id);
            if v5 {
                properties::encode(sink, &unsubscribe.properties, Context::Unsubscribe)?;
            }
            for filter in &unsubscribe.filters {
                sink::put_str(sink, "topic filter", filter)?;
            }
            Ok(())
        }
        Packet::UnsubAck(unsuback) => {
            sink.put_u16(unsuback.packet_id);
            if v5 {
                properties::encode(sink, &unsuback.properties, Context::UnsubAck)?;
                for &reason in &unsuback.reasons {
                    sink.put_u8(reason as u8);
                }
            }
            Ok(())
        }
        Packet::PingReq | Packet::PingResp => Ok(()),
        Packet::Disconnect(disconnect) => reason_and_properties(
            sink,
            version,
            disconnect.reason,
            &disconnect.properties,
            Context::Disconnect,
        ),
        Packet::Auth(auth) => {
            if !v5 {
                return Err(EncodeError::NotInVersion {
                    packet: "AUTH",
                    version,
                });
            }
            reason_and_properties(sink, version, auth.reason, &auth.properties, Context::Auth)
        }
    }
}

/// v5 only: the reason code and the properties, never the short forms.
fn reason_and_properties<S: Sink>(
    sink: &mut S,
    version: ProtocolVersion,
    reason: ReasonCode,
    props: &Properties,
    context: Context,
) -> Result<(), EncodeError> {
    if !version.is_v5() {
        return Ok(());
    }
    sink.put_u8(reason as u8);
    properties::encode(sink, props, context)
}

fn options_byte(options: &SubscriptionOptions, version: ProtocolVersion) -> u8 {
    let mut byte = options.qos as u8;
    if version == ProtocolVersion::V5 {
        if options.no_local {
            byte |= 0b0100;
        }
        if options.retain_as_published {
            byte |= 0b1000;
        }
        byte |= match options.retain_handling {
            RetainHandling::SendAtSubscribe => 0,
            RetainHandling::SendIfNew => 1,
            RetainHandling::DoNotSend => 2,
        } << 4;
    }
    byte
}

fn connect_body<S: Sink>(
    sink: &mut S,
    connect: &Connect,
    version: ProtocolVersion,
) -> Result<(), EncodeError> {
    let v5 = version == ProtocolVersion::V5;
    let (name, level) = match version {
        ProtocolVersion::V31 => ("MQIsdp", 3),
        ProtocolVersion::V311 => ("MQTT", 4),
        ProtocolVersion::V5 => ("MQTT", 5),
    };
    sink::put_str(sink, "protocol name", name)?;
    sink.put_u8(level);
    let mut flags = 0u8;
    if connect.clean_start {
        flags |= 0x02;
    }
    if let Some(will) = &connect.will {
        flags |= 0x04 | ((will.qos as u8) << 3);
        if will.retain {
            flags |= 0x20;
        }
    }
    if connect.password.is_some() {
        flags |= 0x40;
    }
    if connect.username.is_some() {
        flags |= 0x80;
    }
    sink.put_u8(flags);
    sink.put_u16(connect.keep_alive);
    if v5 {
        properties::encode(sink, &connect.properties, Context::Connect)?;
    }
    sink::put_str(sink, "client identifier", &connect.client_id)?;
    if let Some(will) = &connect.will {
        if v5 {
            properties::encode(sink, &will.properties, Context::Will)?;
        }
        sink::put_str(sink, "will topic", &will.topic)?;
        sink::put_binary(sink, "will payload", &will.payload)?;
    }
    if let Some(username) = &connect.username {
        sink::put_str(sink, "user name", username)?;
    }
    if let Some(password) = &connect.password {
        sink::put_binary(sink, "password", password)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What one encoder wrote, or why it refused.
    fn outcome(
        encoder: fn(
            &PublishRef<'_>,
            ProtocolVersion,
            Option<u32>,
            &mut BytesMut,
        ) -> Result<(), EncodeError>,
        publish: &PublishRef<'_>,
        version: ProtocolVersion,
        max_size: Option<u32>,
    ) -> Result<Vec<u8>, String> {
        let mut dst = BytesMut::from(&b"before"[..]);
        match encoder(publish, version, max_size, &mut dst) {
            Ok(()) => Ok(dst.to_vec()),
            Err(e) => {
                // A refusal writes nothing.
                assert_eq!(&dst[..], b"before");
                Err(format!("{e:?}"))
            }
        }
    }

    fn framed(
        publish: &PublishRef<'_>,
        version: ProtocolVersion,
        max_size: Option<u32>,
        dst: &mut BytesMut,
    ) -> Result<(), EncodeError> {
        encode_framed_publish(publish, version, Role::Server, max_size, dst)
    }

    #[test]
    fn a_publish_without_properties_is_written_as_the_general_encoder_writes_it() {
        let long_topic = "t".repeat(usize::from(u16::MAX) + 1);
        let topics = ["a", "home/kitchen/temp", &"x/".repeat(150), &long_topic];
        // Payloads whose packets straddle each remaining-length size.
        let payloads = [0, 1, 100, 118, 119, 120, 121, 122, 123, 124, 125, 126, 127]
            .into_iter()
            .chain(16_360..16_390)
            .chain([2_097_140, 2_097_150, 2_097_160]);
        let versions = [
            ProtocolVersion::V31,
            ProtocolVersion::V311,
            ProtocolVersion::V5,
        ];
        let mut cases = 0;
        for len in payloads {
            let payload = vec![0x5a; len];
            for topic in topics {
                for version in versions {
                    for (qos, dup, retain) in [
                        (QoS::AtMostOnce, false, false),
                        (QoS::AtMostOnce, false, true),
                        (QoS::AtLeastOnce, true, false),
                        (QoS::ExactlyOnce, false, true),
                    ] {
                        let publish = PublishRef {
                            dup,
                            qos,
                            retain,
                            topic,
                            packet_id: if qos == QoS::AtMostOnce { 0 } else { 0x1234 },
                            payload: &payload,
                            properties: None,
                            subscription_identifiers: &[],
                            message_expiry_interval: None,
                        };
                        let unlimited = outcome(framed, &publish, version, None);
                        let size = unlimited.as_ref().map_or(100, |b| b.len() - 6) as u32;
                        for max in [None, Some(size), Some(size - 1)] {
                            assert_eq!(
                                outcome(encode_bare_publish, &publish, version, max),
                                outcome(framed, &publish, version, max),
                                "{version:?} {qos:?} topic {} payload {len} max {max:?}",
                                topic.len()
                            );
                            cases += 1;
                        }
                    }
                }
            }
        }
        assert!(cases > 1000);
    }
}
