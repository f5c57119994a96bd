//! What a CONNECT says and how long a login may take: client id, protocol version,
//! clean start and session expiry, keep-alive, credentials, will. It builds the
//! CONNECT packet; it does not open connections.

use std::time::Duration;

use bytes::Bytes;
use moat_protocol::{Connect, Properties, ProtocolVersion, Will};

use crate::transport::Endpoint;

/// Everything [`crate::Connection::open`] and [`crate::Client::connect`] need.
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    pub endpoint: Endpoint,
    pub client_id: String,
    /// MQTT 5 by default; 3.1.1 for brokers or tests that need it.
    pub protocol: ProtocolVersion,
    /// Start a new session (discarding any stored one); off resumes it.
    pub clean_start: bool,
    /// MQTT 5: how long the broker keeps the session after the connection ends
    /// (`None`: it ends with the connection). MQTT 3.1.1 has no such property: a
    /// session outlives the connection exactly when `clean_start` is off.
    pub session_expiry: Option<u32>,
    /// Seconds; [`crate::Client`] sends PINGREQ within it. 0 turns keep-alive off.
    pub keep_alive: u16,
    pub username: Option<String>,
    pub password: Option<Bytes>,
    pub will: Option<Will>,
    /// Bound on TCP + TLS + WebSocket upgrade + CONNACK.
    pub connect_timeout: Duration,
    /// Largest packet accepted from the broker; a larger one is a decode error.
    pub max_incoming_packet: u32,
    /// MQTT 5: announce `max_incoming_packet` as the Maximum Packet Size, so the
    /// broker drops a larger message for us instead of sending it (off by default:
    /// a load generator should change nothing the broker does).
    pub announce_max_packet: bool,
    /// MQTT 5 Receive Maximum: QoS 1/2 messages the broker may have unacknowledged
    /// towards us (`None`: the protocol's 65 535).
    pub receive_maximum: Option<u16>,
}

impl ConnectOptions {
    pub fn new(endpoint: Endpoint, client_id: impl Into<String>) -> ConnectOptions {
        ConnectOptions {
            endpoint,
            client_id: client_id.into(),
            protocol: ProtocolVersion::V5,
            clean_start: true,
            session_expiry: None,
            keep_alive: 60,
            username: None,
            password: None,
            will: None,
            connect_timeout: Duration::from_secs(15),
            max_incoming_packet: 1024 * 1024,
            announce_max_packet: false,
            receive_maximum: None,
        }
    }

    /// Username and password (MQTT 5 also allows a password alone).
    pub fn with_credentials(self, username: impl Into<String>, password: impl Into<Bytes>) -> Self {
        ConnectOptions {
            username: Some(username.into()),
            password: Some(password.into()),
            ..self
        }
    }

    pub(crate) fn connect_packet(&self) -> Connect {
        let v5 = self.protocol == ProtocolVersion::V5;
        Connect {
            protocol: self.protocol,
            clean_start: self.clean_start,
            keep_alive: self.keep_alive,
            client_id: self.client_id.clone(),
            will: self.will.clone(),
            username: self.username.clone(),
            password: self.password.clone(),
            properties: Properties {
                session_expiry_interval: self.session_expiry.filter(|_| v5),
                maximum_packet_size: (v5 && self.announce_max_packet)
                    .then_some(self.max_incoming_packet),
                receive_maximum: self.receive_maximum.filter(|_| v5),
                ..Properties::default()
            },
        }
    }
}
