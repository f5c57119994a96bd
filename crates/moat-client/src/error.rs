//! The client's one error type. It names what failed and, where a peer caused it,
//! the reason code the broker gave; it never hides an I/O error's kind.

use std::io;
use std::net::SocketAddr;

use moat_protocol::{DecodeError, EncodeError, ReasonCode};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot connect to {addr}: {source}")]
    Connect { addr: SocketAddr, source: io::Error },
    #[error("TLS handshake with {addr} failed: {source}")]
    TlsHandshake { addr: SocketAddr, source: io::Error },
    #[error("TLS configuration: {0}")]
    TlsConfig(String),
    #[error("WebSocket upgrade refused: {0}")]
    WebSocket(String),
    #[error("i/o: {0}")]
    Io(#[from] io::Error),
    #[error("bad packet from the broker: {0}")]
    Decode(#[from] DecodeError),
    #[error("encoding a packet: {0}")]
    Encode(#[from] EncodeError),
    #[error("the broker refused the connection: {0:?}")]
    Refused(ReasonCode),
    #[error("the broker refused the request: {0:?}")]
    Rejected(ReasonCode),
    #[error("the broker disconnected us: {0:?}")]
    Disconnected(ReasonCode),
    #[error("the broker sent an unexpected {0}")]
    Unexpected(&'static str),
    #[error("the broker closed the connection")]
    Closed,
    #[error("timed out waiting for {0}")]
    Timeout(&'static str),
    #[error("the connection has ended (see `Incoming::recv` for why)")]
    Stopped,
}
