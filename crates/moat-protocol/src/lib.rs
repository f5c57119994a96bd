//! MQTT 3.1, 3.1.1 and 5.0 on the wire: packet types, the strict codec (every fixed
//! header checked before its body is waited for), the text rule, topic name and filter
//! rules, and reason codes.
//!
//! It owns the bytes on the wire and nothing else. It must not touch sessions,
//! identities, permissions, storage, sockets, TLS or a runtime: no tokio, no I/O (the
//! codec works on `bytes::BytesMut`, so the fuzz target and any client or server can
//! drive it). Modules are private; this facade is the whole API.
#![forbid(unsafe_code)]

mod ascii;
mod codec;
mod decode;
mod encode;
mod error;
mod header;
mod packet;
mod properties;
mod reader;
mod reason;
mod sink;
pub mod text;
pub mod topic;
mod varint;

#[cfg(test)]
mod codec_tests;
#[cfg(test)]
mod proptests;
#[cfg(test)]
mod publish_ref_tests;

pub use codec::{Codec, MAX_PACKET_SIZE_BEFORE_CONNECT, Role};
pub use encode::encoded_len;
pub use error::{DecodeError, EncodeError};
pub use packet::{
    Ack, AckKind, Auth, ConnAck, Connect, Disconnect, Packet, Properties, ProtocolVersion, Publish,
    PublishRef, QoS, RetainHandling, SubAck, Subscribe, SubscribeFilter, SubscriptionOptions,
    UnsubAck, Unsubscribe, Will,
};
pub use properties::{
    MAX_USER_PROPERTIES, MAX_USER_PROPERTY_BYTES, properties_from_blob, properties_to_blob,
};
pub use reason::ReasonCode;
pub use topic::TopicName;
pub use varint::MAX_VARINT;
