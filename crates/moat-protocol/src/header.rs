//! The fixed header: the packet type, its flags and the remaining length. Checks the
//! whole first byte against the per-type flags table (MQTT-2.1.3-1) so that garbage
//! is refused from its first byte, before any body is awaited.

use super::error::DecodeError;
use super::packet::ProtocolVersion;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PacketType {
    Connect = 1,
    ConnAck = 2,
    Publish = 3,
    PubAck = 4,
    PubRec = 5,
    PubRel = 6,
    PubComp = 7,
    Subscribe = 8,
    SubAck = 9,
    Unsubscribe = 10,
    UnsubAck = 11,
    PingReq = 12,
    PingResp = 13,
    Disconnect = 14,
    Auth = 15,
}

impl PacketType {
    pub(crate) fn name(self) -> &'static str {
        use PacketType::*;
        match self {
            Connect => "CONNECT",
            ConnAck => "CONNACK",
            Publish => "PUBLISH",
            PubAck => "PUBACK",
            PubRec => "PUBREC",
            PubRel => "PUBREL",
            PubComp => "PUBCOMP",
            Subscribe => "SUBSCRIBE",
            SubAck => "SUBACK",
            Unsubscribe => "UNSUBSCRIBE",
            UnsubAck => "UNSUBACK",
            PingReq => "PINGREQ",
            PingResp => "PINGRESP",
            Disconnect => "DISCONNECT",
            Auth => "AUTH",
        }
    }

    /// The flags nibble every packet but PUBLISH must carry (§2.1.3).
    pub(crate) fn fixed_flags(self) -> u8 {
        match self {
            PacketType::PubRel | PacketType::Subscribe | PacketType::Unsubscribe => 0b0010,
            _ => 0,
        }
    }

    /// The first byte of a packet of this type (PUBLISH adds its own flags).
    pub(crate) fn first_byte(self) -> u8 {
        ((self as u8) << 4) | self.fixed_flags()
    }
}

/// Parses and checks the first byte of a packet. `version` is the negotiated version
/// if known: AUTH (type 15) is reserved in 3.1.1.
pub(crate) fn parse_first_byte(
    byte: u8,
    version: Option<ProtocolVersion>,
) -> Result<(PacketType, u8), DecodeError> {
    use PacketType::*;
    let flags = byte & 0x0f;
    let packet_type = match byte >> 4 {
        1 => Connect,
        2 => ConnAck,
        3 => Publish,
        4 => PubAck,
        5 => PubRec,
        6 => PubRel,
        7 => PubComp,
        8 => Subscribe,
        9 => SubAck,
        10 => Unsubscribe,
        11 => UnsubAck,
        12 => PingReq,
        13 => PingResp,
        14 => Disconnect,
        15 if version.is_none_or(ProtocolVersion::is_v5) => Auth,
        other => return Err(DecodeError::ReservedPacketType(other)),
    };
    if packet_type == Publish {
        // QoS 3 (both QoS bits set) is malformed (MQTT-3.3.1-4).
        if flags & 0b0110 == 0b0110 {
            return Err(DecodeError::InvalidQoS(3));
        }
    } else if flags != packet_type.fixed_flags() {
        return Err(DecodeError::InvalidHeaderFlags {
            packet: packet_type.name(),
            flags,
        });
    }
    Ok((packet_type, flags))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_type_accepts_only_its_flags() {
        for byte in 0u8..=255 {
            let result = parse_first_byte(byte, Some(ProtocolVersion::V5));
            let expected_ok = match byte >> 4 {
                0 => false,
                3 => byte & 0b0110 != 0b0110,
                6 | 8 | 10 => byte & 0x0f == 0b0010,
                _ => byte & 0x0f == 0,
            };
            assert_eq!(result.is_ok(), expected_ok, "{byte:#04x}");
        }
    }

    #[test]
    fn auth_is_reserved_in_311() {
        assert!(parse_first_byte(0xf0, Some(ProtocolVersion::V5)).is_ok());
        assert!(matches!(
            parse_first_byte(0xf0, Some(ProtocolVersion::V311)),
            Err(DecodeError::ReservedPacketType(15))
        ));
    }

    #[test]
    fn first_bytes_pass_their_own_check() {
        for packet_type in [
            PacketType::Connect,
            PacketType::PubRel,
            PacketType::Subscribe,
            PacketType::Unsubscribe,
            PacketType::Auth,
        ] {
            let (parsed, _) = parse_first_byte(packet_type.first_byte(), None).unwrap();
            assert_eq!(parsed, packet_type);
        }
    }
}
