//! MQTT 3.1.1 and 5.0 wire protocol: packet types, the strict codec, topic rules and
//! reason codes. It owns the bytes on the wire and nothing else: it knows nothing of
//! sessions, identities, sockets or TLS.

pub mod packet;
pub mod reason;
pub mod topic;

pub use packet::*;
pub use reason::ReasonCode;
