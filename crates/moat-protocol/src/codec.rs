//! The framing codec for one connection: checks each fixed header as soon as it
//! arrives (type, flags, direction, packet order, size limit) before waiting for or
//! reserving room for the body, then decodes the body strictly. It tracks the
//! negotiated version and the CONNECT state; it knows nothing of sessions or sockets.

use std::sync::Arc;

use bytes::{Buf, BufMut, BytesMut};

use super::decode;
use super::encode;
use super::error::{DecodeError, EncodeError};
use super::header::{self, PacketType};
use super::packet::{AckKind, Packet, ProtocolVersion, PublishRef};
use super::reader::Reader;
use super::reason::ReasonCode;
use super::varint;

/// The largest packet a server accepts before CONNECT has been authenticated.
pub const MAX_PACKET_SIZE_BEFORE_CONNECT: u32 = 64 * 1024;

/// Room for a partly received packet is reserved at most this much at a time, so a
/// peer that announces a large packet must actually send it to make us allocate.
const RESERVE_CHUNK: usize = 64 * 1024;

/// Which side of the connection decodes. Each refuses the packets it never receives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The broker: refuses CONNACK, SUBACK, UNSUBACK, PINGRESP; CONNECT must come
    /// first and only once.
    Server,
    /// A client (tests, bridges): refuses CONNECT, SUBSCRIBE, UNSUBSCRIBE, PINGREQ.
    Client,
}

impl Role {
    fn name(self) -> &'static str {
        match self {
            Role::Server => "server",
            Role::Client => "client",
        }
    }

    fn receives(self, packet_type: PacketType) -> bool {
        use PacketType::*;
        match self {
            Role::Server => !matches!(packet_type, ConnAck | SubAck | UnsubAck | PingResp),
            Role::Client => !matches!(packet_type, Connect | Subscribe | Unsubscribe | PingReq),
        }
    }
}

/// The codec of one MQTT connection. `decode` and `encode` have the shape of
/// `tokio_util`'s `Decoder` and `Encoder` without depending on them: this crate does
/// no I/O and pulls in no runtime (see the crate docs).
#[derive(Debug)]
pub struct Codec {
    role: Role,
    version: Option<ProtocolVersion>,
    connect_received: bool,
    max_incoming: u32,
    max_outgoing: Option<u32>,
    last_topic: LastTopic,
}

/// The topic of the last valid PUBLISH decoded, shared again when the next one names
/// it (see `Reader::topic`). Boxed: one pointer in every connection's codec instead
/// of an `Arc<str>`'s 16 bytes, which would push an idle connection's task into
/// tokio's next size class (128 bytes more per connection).
#[derive(Debug, Default)]
pub(crate) struct LastTopic(Option<Box<Arc<str>>>);

impl LastTopic {
    pub(crate) fn get(&self) -> Option<&Arc<str>> {
        self.0.as_deref()
    }

    pub(crate) fn set(&mut self, topic: &Arc<str>) {
        match &mut self.0 {
            Some(last) => **last = Arc::clone(topic),
            None => self.0 = Some(Box::new(Arc::clone(topic))),
        }
    }
}

impl Codec {
    /// `max_incoming_packet_size` counts the whole packet, fixed header included (the
    /// MQTT 5 Maximum Packet Size); a server uses [`MAX_PACKET_SIZE_BEFORE_CONNECT`]
    /// until the client is authenticated.
    pub fn new(role: Role, max_incoming_packet_size: u32) -> Codec {
        Codec {
            role,
            version: None,
            connect_received: false,
            max_incoming: max_incoming_packet_size,
            max_outgoing: None,
            last_topic: LastTopic::default(),
        }
    }

    pub fn set_max_incoming_packet_size(&mut self, max: u32) {
        self.max_incoming = max;
    }

    /// The peer's MQTT 5 Maximum Packet Size; `None` for no limit but the protocol's.
    pub fn set_max_outgoing_packet_size(&mut self, max: Option<u32>) {
        self.max_outgoing = max;
    }

    /// The negotiated version: `None` on a server until a CONNECT announced a
    /// supported one, on a client until [`Codec::set_version`].
    pub fn version(&self) -> Option<ProtocolVersion> {
        self.version
    }

    pub fn set_version(&mut self, version: ProtocolVersion) {
        self.version = Some(version);
    }

    /// Whether a server has received the whole CONNECT packet (even a refused one).
    pub fn connect_received(&self) -> bool {
        self.connect_received
    }

    /// The packet order rules a fixed header can already be checked against.
    fn check_order(&self, packet_type: PacketType) -> Result<(), DecodeError> {
        if !self.role.receives(packet_type) {
            return Err(DecodeError::UnexpectedPacket {
                packet: packet_type.name(),
                role: self.role.name(),
            });
        }
        match self.role {
            Role::Server if !self.connect_received && packet_type != PacketType::Connect => {
                Err(DecodeError::ExpectedConnect(packet_type.name()))
            }
            Role::Server if self.connect_received && packet_type == PacketType::Connect => {
                Err(DecodeError::DuplicateConnect)
            }
            Role::Client if self.version.is_none() => Err(DecodeError::VersionUnknown),
            _ => Ok(()),
        }
    }

    /// The next whole packet in `src` (consumed from it), `None` until one is there.
    /// Checks each fixed header as soon as it arrives.
    pub fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Packet>, DecodeError> {
        let Some(&first_byte) = src.first() else {
            return Ok(None);
        };
        let (packet_type, flags) = header::parse_first_byte(first_byte, self.version)?;
        self.check_order(packet_type)?;
        let Some((remaining, length_bytes)) = varint::decode(&src[1..])? else {
            return Ok(None);
        };
        let header_len = 1 + length_bytes;
        let total = header_len as u64 + u64::from(remaining);
        if total > u64::from(self.max_incoming) {
            return Err(DecodeError::PacketTooLarge {
                size: total,
                max: self.max_incoming,
            });
        }
        // At most 256 MiB + 5 here, which fits any usize this crate builds for.
        let total = total as usize;
        if src.len() < total {
            src.reserve((total - src.len()).min(RESERVE_CHUNK));
            return Ok(None);
        }
        let mut body = src.split_to(total).freeze();
        body.advance(header_len);

        if packet_type == PacketType::Connect {
            self.connect_received = true;
            let mut reader = Reader::new(body);
            let version = decode::connect_protocol(&mut reader)?;
            self.version = Some(version);
            let connect = decode::connect(reader, version)?;
            return Ok(Some(Packet::Connect(Box::new(connect))));
        }
        let version = self.version.ok_or(DecodeError::VersionUnknown)?;
        decode::packet(
            packet_type,
            flags,
            body,
            version,
            self.role,
            &mut self.last_topic,
        )
        .map(Some)
    }

    /// The next packet in `src`, consumed from it, if it is a whole PUBACK, PUBREC,
    /// PUBREL or PUBCOMP without properties that [`Codec::decode`] accepts: its kind,
    /// packet id and reason code, what `decode` would return as a packet, without
    /// building one (a `Packet` carries a `Properties` of 27 fields that would be
    /// built, copied and dropped for every acknowledgement). `None`, with nothing
    /// consumed, for anything else, an incomplete or invalid acknowledgement
    /// included: `decode` then takes it, and refuses it as it always did.
    #[inline]
    pub fn decode_ack(&mut self, src: &mut BytesMut) -> Option<(AckKind, u16, ReasonCode)> {
        let (&first_byte, rest) = src.split_first()?;
        let kind = match first_byte {
            0x40 => AckKind::PubAck,
            0x50 => AckKind::PubRec,
            0x62 => AckKind::PubRel,
            0x70 => AckKind::PubComp,
            _ => return None,
        };
        // Both roles receive acknowledgements; a server only after CONNECT.
        let version = self.version?;
        if self.role == Role::Server && !self.connect_received {
            return None;
        }
        // A one-byte remaining length: 2 (packet id), in v5 3 (+ reason code) or 4
        // (+ an empty property set). Anything longer carries properties.
        let remaining = *rest.first()?;
        let longest = if version.is_v5() { 4 } else { 2 };
        if !(2..=longest).contains(&remaining) {
            return None;
        }
        let total = 2 + usize::from(remaining);
        if src.len() < total || total as u64 > u64::from(self.max_incoming) {
            return None;
        }
        let packet_id = u16::from_be_bytes([src[2], src[3]]);
        if packet_id == 0 || (remaining == 4 && src[5] != 0) {
            return None;
        }
        let reason = if remaining == 2 {
            ReasonCode::Success
        } else {
            let code = src[4];
            let packet_type = match kind {
                AckKind::PubAck => PacketType::PubAck,
                AckKind::PubRec => PacketType::PubRec,
                AckKind::PubRel => PacketType::PubRel,
                AckKind::PubComp => PacketType::PubComp,
            };
            if !decode::reason_allowed(packet_type, code) {
                return None;
            }
            ReasonCode::from_u8(code)?
        };
        src.advance(total);
        Some((kind, packet_id, reason))
    }

    /// Encodes for the negotiated version; before one is known (a CONNECT refused for
    /// its protocol level) in the 3.1.1 format every client understands. A CONNECT is
    /// encoded in its own `protocol` version, which a client codec then adopts.
    pub fn encode(&mut self, packet: &Packet, dst: &mut BytesMut) -> Result<(), EncodeError> {
        let version = match packet {
            Packet::Connect(connect) => {
                if self.role == Role::Client {
                    self.version = Some(connect.protocol);
                }
                connect.protocol
            }
            _ => self.version.unwrap_or(ProtocolVersion::V311),
        };
        encode::encode(packet, version, self.role, self.max_outgoing, dst)
    }

    /// Encodes a PUBLISH from borrowed parts for the negotiated version, like
    /// [`Codec::encode`] does a [`Packet::Publish`] (the same bytes), and refuses it
    /// too if it exceeds the peer's Maximum Packet Size.
    pub fn encode_publish(
        &mut self,
        publish: &PublishRef<'_>,
        dst: &mut BytesMut,
    ) -> Result<(), EncodeError> {
        let version = self.version.unwrap_or(ProtocolVersion::V311);
        encode::encode_publish(publish, version, self.role, self.max_outgoing, dst)
    }

    /// Encodes a PUBACK, PUBREC, PUBREL or PUBCOMP without properties: the bytes
    /// [`Codec::encode`] writes for `kind.packet(Ack::new(packet_id, reason))`
    /// (v5: the reason code and an empty property set, never the short form),
    /// without building that packet.
    pub fn encode_ack(
        &mut self,
        kind: AckKind,
        packet_id: u16,
        reason: ReasonCode,
        dst: &mut BytesMut,
    ) -> Result<(), EncodeError> {
        let v5 = self.version.unwrap_or(ProtocolVersion::V311).is_v5();
        let remaining: u8 = if v5 { 4 } else { 2 };
        let total = u32::from(remaining) + 2;
        if let Some(max) = self.max_outgoing
            && total > max
        {
            return Err(EncodeError::TooLarge {
                size: u64::from(total),
                max,
            });
        }
        let packet_type = match kind {
            AckKind::PubAck => PacketType::PubAck,
            AckKind::PubRec => PacketType::PubRec,
            AckKind::PubRel => PacketType::PubRel,
            AckKind::PubComp => PacketType::PubComp,
        };
        dst.reserve(total as usize);
        dst.put_u8(packet_type.first_byte());
        dst.put_u8(remaining);
        dst.put_u16(packet_id);
        if v5 {
            dst.put_u8(reason as u8);
            dst.put_u8(0); // property length
        }
        Ok(())
    }
}
