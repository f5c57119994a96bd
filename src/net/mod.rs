//! The network edge: listeners, a kernel SYN filter for the allowed networks,
//! admission before any TLS byte is read (allowed networks, per-IP and total
//! connection caps), the TLS server stream over rustls' unbuffered API (our buffers,
//! released when idle) that picks the ECDSA or RSA certificate per ClientHello, and
//! hand-over of the stream to the broker's connection driver. It knows nothing of
//! MQTT beyond that hand-over.

pub mod admission;
pub mod listener;
mod send_buffer;
pub mod syn_filter;
pub mod tls;
pub mod tls_stream;
pub mod websocket;

pub use admission::{Admission as AdmissionControl, AdmissionSettings};
pub use listener::{Listener, serve_listener};
pub use tls::TlsSettings;
