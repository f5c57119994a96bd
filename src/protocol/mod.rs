//! MQTT 3.1.1 and 5.0 wire protocol: packet types, the strict codec, topic rules and
//! reason codes. It owns the bytes on the wire and nothing else: it knows nothing of
//! sessions, identities, sockets or TLS.

pub mod codec;
mod decode;
mod encode;
pub mod error;
mod header;
pub mod packet;
pub mod properties;
mod reader;
pub mod reason;
mod sink;
pub mod text;
pub mod topic;
pub mod varint;

#[cfg(test)]
mod codec_tests;
#[cfg(test)]
mod proptests;

pub use codec::{Codec, MAX_PACKET_SIZE_BEFORE_CONNECT, Role};
pub use encode::encoded_len;
pub use error::{DecodeError, EncodeError};
pub use packet::*;
pub use reason::ReasonCode;
