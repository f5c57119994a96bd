//! Errors raised while decoding and encoding MQTT packets, and the MQTT 5 reason code
//! each decode error maps to (the broker sends it in a CONNACK or DISCONNECT before
//! closing). It owns no state and touches no I/O.

use super::packet::ProtocolVersion;
use super::reason::ReasonCode;
use super::topic::TopicError;

/// Why a byte stream is not a valid MQTT packet. Every variant ends the connection.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    #[error("packet of {size} bytes exceeds the maximum of {max} bytes")]
    PacketTooLarge { size: u64, max: u32 },
    #[error("variable byte integer longer than 4 bytes")]
    VarIntTooLong,
    #[error("variable byte integer is not minimally encoded")]
    NonMinimalVarInt,
    #[error("reserved packet type {0}")]
    ReservedPacketType(u8),
    #[error("invalid fixed header flags {flags:#06b} for {packet}")]
    InvalidHeaderFlags { packet: &'static str, flags: u8 },
    #[error("a {role} never receives {packet}")]
    UnexpectedPacket {
        packet: &'static str,
        role: &'static str,
    },
    #[error("the first packet must be CONNECT, got {0}")]
    ExpectedConnect(&'static str),
    #[error("second CONNECT on the same connection")]
    DuplicateConnect,
    #[error("protocol version not set on a client codec")]
    VersionUnknown,
    #[error("protocol name is not \"MQTT\"")]
    InvalidProtocolName,
    #[error("unsupported protocol level {0}")]
    UnsupportedProtocolVersion(u8),
    #[error("packet ends inside a field")]
    Truncated,
    #[error("{0} unexpected bytes after the last field")]
    TrailingBytes(usize),
    #[error("string is not valid UTF-8")]
    InvalidUtf8,
    #[error("string contains U+0000")]
    NullCharacter,
    /// A C0/C1 control character or a Unicode non-character (MQTT 5 §1.5.4).
    #[error("string contains U+{:04X}, a control character or non-character", u32::from(*.0))]
    DisallowedCharacter(char),
    #[error("invalid QoS {0}")]
    InvalidQoS(u8),
    #[error("DUP flag set on a QoS 0 PUBLISH")]
    DupWithQoS0,
    #[error("packet identifier 0 where a non-zero one is required")]
    ZeroPacketId,
    #[error("invalid topic name: {0}")]
    InvalidTopicName(TopicError),
    #[error("empty topic name without a topic alias")]
    EmptyTopicWithoutAlias,
    #[error("invalid topic filter: {0}")]
    InvalidTopicFilter(TopicError),
    #[error("CONNECT reserved flag is set")]
    ConnectReservedFlag,
    #[error("will QoS or retain set without a will, or will QoS 3")]
    InvalidWillFlags,
    #[error("password flag set without user name flag (MQTT 3.1.1)")]
    PasswordWithoutUsername,
    #[error("{0} without any topic filter")]
    NoTopicFilters(&'static str),
    #[error("subscription options {0:#010b} use reserved bits")]
    InvalidSubscriptionOptions(u8),
    #[error("retain handling 3 is reserved")]
    InvalidRetainHandling,
    #[error("no-local set on a shared subscription")]
    NoLocalOnSharedSubscription,
    #[error("reason code {code:#04x} is not valid in {packet}")]
    InvalidReasonCode { packet: &'static str, code: u8 },
    #[error("CONNACK flags {0:#010b} use reserved bits")]
    InvalidConnAckFlags(u8),
    #[error("unknown property identifier {0:#04x}")]
    UnknownProperty(u32),
    #[error("property {id:#04x} is not allowed in {packet}")]
    PropertyNotAllowed { id: u8, packet: &'static str },
    #[error("property {0:#04x} appears more than once")]
    DuplicateProperty(u8),
    #[error("property {0:#04x} has an invalid value")]
    InvalidPropertyValue(u8),
    #[error("topic alias 0")]
    TopicAliasZero,
    #[error("authentication data without an authentication method")]
    AuthDataWithoutMethod,
    #[error("more than {max} user properties or {max_bytes} bytes of them")]
    TooManyUserProperties { max: usize, max_bytes: usize },
}

impl DecodeError {
    /// The MQTT 5 reason code to send (CONNACK before a CONNECT was accepted,
    /// DISCONNECT after) before closing the connection.
    pub fn reason_code(&self) -> ReasonCode {
        use DecodeError::*;
        match self {
            Io(_) => ReasonCode::UnspecifiedError,
            PacketTooLarge { .. } => ReasonCode::PacketTooLarge,
            InvalidProtocolName | UnsupportedProtocolVersion(_) => {
                ReasonCode::UnsupportedProtocolVersion
            }
            UnexpectedPacket { .. }
            | ExpectedConnect(_)
            | DuplicateConnect
            | VersionUnknown
            | EmptyTopicWithoutAlias
            | NoTopicFilters(_)
            | InvalidRetainHandling
            | NoLocalOnSharedSubscription
            | DuplicateProperty(_)
            | InvalidPropertyValue(_)
            | AuthDataWithoutMethod => ReasonCode::ProtocolError,
            InvalidTopicName(_) => ReasonCode::TopicNameInvalid,
            InvalidTopicFilter(_) => ReasonCode::TopicFilterInvalid,
            TopicAliasZero => ReasonCode::TopicAliasInvalid,
            TooManyUserProperties { .. } => ReasonCode::ImplementationSpecificError,
            VarIntTooLong
            | NonMinimalVarInt
            | ReservedPacketType(_)
            | InvalidHeaderFlags { .. }
            | Truncated
            | TrailingBytes(_)
            | InvalidUtf8
            | NullCharacter
            | DisallowedCharacter(_)
            | InvalidQoS(_)
            | DupWithQoS0
            | ZeroPacketId
            | ConnectReservedFlag
            | InvalidWillFlags
            | PasswordWithoutUsername
            | InvalidSubscriptionOptions(_)
            | InvalidReasonCode { .. }
            | InvalidConnAckFlags(_)
            | UnknownProperty(_)
            | PropertyNotAllowed { .. } => ReasonCode::MalformedPacket,
        }
    }
}

/// Why a packet could not be written.
#[derive(Debug, thiserror::Error)]
pub enum EncodeError {
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    /// Larger than the peer's Maximum Packet Size (or the protocol's 256 MiB): the
    /// broker drops the message instead of sending it.
    #[error("packet of {size} bytes exceeds the maximum of {max} bytes")]
    TooLarge { size: u64, max: u32 },
    #[error("{field} is {len} bytes, more than a length prefix can hold")]
    FieldTooLong { field: &'static str, len: usize },
    #[error("{packet} does not exist in {version:?}")]
    NotInVersion {
        packet: &'static str,
        version: ProtocolVersion,
    },
}
