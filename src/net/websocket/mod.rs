//! MQTT over WebSocket (RFC 6455, MQTT 5.0 section 6): the HTTP/1.1 upgrade and a
//! byte stream over binary frames, for browser dashboards, Node-RED and Home
//! Assistant's "websockets" transport. It owns the upgrade (bounded header size;
//! the caller bounds the time) and the framing; the stream it returns carries MQTT
//! bytes exactly as a TCP or TLS stream does, so the broker's connection driver
//! runs unchanged on top. Like `tls_stream`, its buffers are allocated only while
//! they hold data. It knows nothing of MQTT or of the broker.
//!
//! What it refuses, closing the connection: a request that is not a WebSocket
//! upgrade (400), one that does not offer the `mqtt` subprotocol (400), headers over
//! `MAX_REQUEST`, a client frame without a mask, text frames (MQTT 5.0 [MQTT-6.0.0-1]:
//! only binary frames carry MQTT), reserved opcodes or bits, and control frames that
//! are fragmented or longer than 125 bytes. A frame's declared length is never
//! allocated: payload is unmasked as it streams through.
//!
//! The upgrade is in `upgrade`, the framed stream and its closing handshake in
//! `stream`; the outgoing buffer is `net::send_buffer`'s.

mod stream;
#[cfg(test)]
mod tests;
mod upgrade;

use std::io;

pub use stream::{CLOSE_WAIT, WsStream};
pub use upgrade::{MAX_REQUEST, Upgrade, accept, accept_key};

/// Why an upgrade or a frame was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WsError {
    #[error("the upgrade request is larger than {MAX_REQUEST} bytes")]
    RequestTooLarge,
    #[error("the connection closed during the upgrade")]
    Closed,
    #[error("not a WebSocket upgrade: {0}")]
    NotAnUpgrade(&'static str),
    #[error("the client offers no `mqtt` subprotocol (Sec-WebSocket-Protocol)")]
    NoMqttSubprotocol,
    #[error("invalid frame: {0}")]
    Frame(&'static str),
}

impl From<WsError> for io::Error {
    fn from(e: WsError) -> io::Error {
        io::Error::new(io::ErrorKind::InvalidData, e)
    }
}
