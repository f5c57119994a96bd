//! One async MQTT client (3.1.1 and 5) for moat's tools: the load generator
//! (`moat-bench`), `moat doctor --probe`, and bridges. It owns the client's side of a
//! connection: transports (plain TCP, TLS with a CA file or the system's roots and an
//! optional client certificate, WebSocket and WebSocket over TLS with the `mqtt`
//! subprotocol), the login, and two ways to talk:
//!
//! - [`Connection`]: packets in and out, batched, nothing automatic; split into a
//!   [`PacketReader`] and a [`PacketWriter`] for pipelined load.
//! - [`Client`]: a managed connection (keep-alive, acknowledgements, packet ids,
//!   receive maximum) where `publish` at QoS 0, 1 or 2 returns once the broker has
//!   acknowledged it, and messages arrive on [`Incoming`].
//!
//! It must not touch the broker's internals: it speaks to a broker only through a
//! socket, encodes and decodes only through `moat-protocol`, and knows nothing of
//! manifests, policies or the state directory (callers hand it paths and names).
//! Errors are [`ClientError`]; it never logs.
#![forbid(unsafe_code)]

mod client;
mod connection;
mod error;
mod options;
mod tls;
mod transport;
mod websocket;
mod wire;

pub use client::{Client, Incoming};
pub use connection::{Connection, PacketReader, PacketWriter, packet_name};
pub use error::ClientError;
pub use options::ConnectOptions;
pub use tls::{ClientCertificate, Roots, TlsConfig, TlsOptions};
pub use transport::{DEFAULT_WEBSOCKET_PATH, Endpoint, Stream, Transport};
pub use wire::{WireCount, WireSnapshot};
