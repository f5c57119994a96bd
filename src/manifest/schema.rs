//! The manifest as written: serde types for schema v1, one struct per YAML mapping,
//! every one `deny_unknown_fields`. Values that validation must point at carry their
//! source location (`Spanned`). This module parses shapes and units only; what the
//! values mean is decided by `validate` and `crate::policy`.

use std::fmt;
use std::marker::PhantomData;
use std::net::IpAddr;
use std::path::PathBuf;

use serde::Deserialize;
use serde::de::{self, Deserializer, MapAccess, Visitor};

pub use super::quantity::{ByteSize, Seconds};

pub use serde_saphyr::Spanned;

/// The whole manifest (schema version 1).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Schema version; must be 1.
    pub version: Spanned<u64>,
    #[serde(default)]
    pub broker: BrokerSpec,
    #[serde(default)]
    pub firewall: FirewallSpec,
    /// People and services.
    #[serde(default)]
    pub users: NamedMap<IdentitySpec>,
    /// Things.
    #[serde(default)]
    pub devices: NamedMap<IdentitySpec>,
    /// Reusable rule bundles.
    #[serde(default)]
    pub roles: NamedMap<RoleSpec>,
    /// Outbound connections to remote brokers (see `manifest::bridge`).
    #[serde(default)]
    pub bridges: NamedMap<super::bridge::BridgeSpec>,
}

/// `broker:`: certificate names, listeners, networks, limits, persistence.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BrokerSpec {
    #[serde(default)]
    pub hostnames: Vec<Spanned<String>>,
    #[serde(default)]
    pub addresses: Vec<Spanned<IpAddr>>,
    #[serde(default)]
    pub listen: ListenSpec,
    #[serde(default)]
    pub networks: Option<Spanned<Vec<Spanned<String>>>>,
    #[serde(default)]
    pub allow_public: Option<Spanned<bool>>,
    #[serde(default)]
    pub limits: LimitsSpec,
    #[serde(default)]
    pub persistence: PersistenceSpec,
    /// The Prometheus endpoint; off when absent (see `crate::metrics`).
    #[serde(default)]
    pub metrics: Option<Spanned<MetricsSpec>>,
    /// Broker health as Home Assistant entities (MQTT discovery); off by default.
    #[serde(default)]
    pub homeassistant: Option<Spanned<bool>>,
}

/// `broker.metrics:`: `{ address, port, token_file }`, every field optional.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsSpec {
    #[serde(default)]
    pub address: Option<Spanned<IpAddr>>,
    #[serde(default)]
    pub port: Option<Spanned<u16>>,
    /// A file holding the bearer token scrapers must send.
    #[serde(default)]
    pub token_file: Option<Spanned<PathBuf>>,
}

impl MetricsSpec {
    /// Next to MQTT's 8883, outside the ports MQTT clients try.
    pub const DEFAULT_PORT: u16 = 9883;

    /// Where the endpoint listens: IPv4 only by default, like the plaintext
    /// transports (it is plain HTTP).
    pub fn socket_addr(&self) -> std::net::SocketAddr {
        std::net::SocketAddr::new(
            self.address
                .as_ref()
                .map_or(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED), |a| a.value),
            self.port.as_ref().map_or(Self::DEFAULT_PORT, |p| p.value),
        )
    }
}

/// `broker.listen:`: one optional entry per transport; TLS is always on.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenSpec {
    #[serde(default)]
    pub tls: Option<Spanned<ListenerSpec>>,
    #[serde(default)]
    pub plain: Option<Spanned<ListenerSpec>>,
    /// MQTT over WebSocket, unencrypted (plaintext identities only).
    #[serde(default)]
    pub ws: Option<Spanned<ListenerSpec>>,
    /// MQTT over WebSocket over TLS.
    #[serde(default)]
    pub wss: Option<Spanned<ListenerSpec>>,
}

/// How a listener carries MQTT: one per key of `broker.listen`. A new transport is
/// one variant here, one key above, and its stream in `crate::net`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transport {
    Tls,
    Plain,
    WebSocket,
    WebSocketTls,
}

impl Transport {
    /// The key under `broker.listen`.
    pub fn key(self) -> &'static str {
        match self {
            Transport::Tls => "tls",
            Transport::Plain => "plain",
            Transport::WebSocket => "ws",
            Transport::WebSocketTls => "wss",
        }
    }

    pub fn is_tls(self) -> bool {
        matches!(self, Transport::Tls | Transport::WebSocketTls)
    }

    pub fn is_websocket(self) -> bool {
        matches!(self, Transport::WebSocket | Transport::WebSocketTls)
    }

    /// The port when the entry names none (WebSockets: the Mosquitto add-on's 1884
    /// and 8884, so a dashboard moved over keeps its URL).
    pub fn default_port(self) -> u16 {
        match self {
            Transport::Tls => 8883,
            Transport::Plain => 1883,
            Transport::WebSocket => 1884,
            Transport::WebSocketTls => 8884,
        }
    }

    /// The address when the entry names none: TLS transports take both families
    /// (`::`, dual-stack: the default networks include IPv6 ULA and link-local);
    /// plaintext ones stay IPv4-only, so a global IPv6 address never reaches them.
    pub fn default_address(self) -> IpAddr {
        if self.is_tls() {
            IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED)
        } else {
            IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED)
        }
    }
}

impl ListenSpec {
    /// The listeners this section turns on, TLS first (it is on even when absent),
    /// with their entry if written.
    pub fn declared(&self) -> Vec<(Transport, Option<&Spanned<ListenerSpec>>)> {
        let mut out = vec![(Transport::Tls, self.tls.as_ref())];
        for (transport, entry) in [
            (Transport::Plain, &self.plain),
            (Transport::WebSocket, &self.ws),
            (Transport::WebSocketTls, &self.wss),
        ] {
            if let Some(entry) = entry {
                out.push((transport, Some(entry)));
            }
        }
        out
    }

    /// Whether a listener without TLS is declared (plaintext identities need one).
    pub fn has_plaintext(&self) -> bool {
        self.plain.is_some() || self.ws.is_some()
    }
}

/// One listener: `{ address, port }`; see [`Transport`] for the defaults.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerSpec {
    #[serde(default)]
    pub address: Option<Spanned<IpAddr>>,
    #[serde(default)]
    pub port: Option<Spanned<u16>>,
}

impl ListenerSpec {
    /// The address and port this entry (or its absence) means for `transport`.
    pub fn socket_addr(entry: Option<&Self>, transport: Transport) -> std::net::SocketAddr {
        std::net::SocketAddr::new(
            entry
                .and_then(|e| e.address.as_ref())
                .map_or(transport.default_address(), |a| a.value),
            entry
                .and_then(|e| e.port.as_ref())
                .map_or(transport.default_port(), |p| p.value),
        )
    }
}

/// `broker.limits:`; every field optional, defaults in `crate::policy::Limits`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsSpec {
    pub max_connections: Option<Spanned<u64>>,
    pub max_connections_per_ip: Option<Spanned<u64>>,
    pub max_packet_size: Option<Spanned<ByteSize>>,
    pub max_packet_size_before_auth: Option<Spanned<ByteSize>>,
    pub connect_timeout: Option<Spanned<Seconds>>,
    pub max_keepalive: Option<Spanned<Seconds>>,
    pub max_inflight: Option<Spanned<u64>>,
    pub max_queued_messages: Option<Spanned<u64>>,
    pub max_queued_bytes: Option<Spanned<ByteSize>>,
    pub max_subscriptions: Option<Spanned<u64>>,
    pub max_user_properties: Option<Spanned<u64>>,
    pub max_user_property_bytes: Option<Spanned<ByteSize>>,
    pub max_client_id_length: Option<Spanned<u64>>,
    pub max_topic_length: Option<Spanned<u64>>,
    pub max_topic_levels: Option<Spanned<u64>>,
    pub max_retained_messages: Option<Spanned<u64>>,
    pub max_retained_bytes: Option<Spanned<ByteSize>>,
    pub auth_concurrency: Option<Spanned<u64>>,
    pub auth_queue: Option<Spanned<u64>>,
    pub max_sessions_per_identity: Option<Spanned<u64>>,
}

/// `broker.persistence:`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PersistenceSpec {
    #[serde(default)]
    pub path: Option<Spanned<PathBuf>>,
    #[serde(default)]
    pub durability: Option<Spanned<DurabilitySpec>>,
    #[serde(default)]
    pub commit_interval_ms: Option<Spanned<u64>>,
}

/// `durability: full | batched`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DurabilitySpec {
    Full,
    Batched,
}

/// `firewall:` (read by `moat firewall`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FirewallSpec {
    #[serde(default)]
    pub ssh: bool,
    #[serde(default)]
    pub mdns: bool,
    #[serde(default)]
    pub egress: bool,
}

/// One user or device.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdentitySpec {
    #[serde(default)]
    pub role: Option<Spanned<String>>,
    #[serde(default)]
    pub roles: Option<Spanned<Vec<Spanned<String>>>>,
    #[serde(default)]
    pub password_hash: Option<Spanned<String>>,
    #[serde(default)]
    pub password_file: Option<Spanned<PathBuf>>,
    /// Plaintext password: only accepted by the first-boot import.
    #[serde(default)]
    pub password: Option<Spanned<String>>,
    #[serde(default)]
    pub certificate: Option<Spanned<bool>>,
    #[serde(default)]
    pub publish: Vec<Spanned<String>>,
    #[serde(default)]
    pub subscribe: Vec<Spanned<String>>,
    #[serde(default)]
    pub plaintext: Option<Spanned<bool>>,
    #[serde(default)]
    pub retain: Option<Spanned<bool>>,
    #[serde(default)]
    pub limits: Option<IdentityLimitsSpec>,
}

impl IdentitySpec {
    /// The role names this identity asks for, `role:` and `roles:` together.
    pub fn role_names(&self) -> Vec<&Spanned<String>> {
        let mut names: Vec<&Spanned<String>> = self.role.iter().collect();
        if let Some(list) = &self.roles {
            names.extend(list.value.iter());
        }
        names
    }
}

/// A role defined under `roles:`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoleSpec {
    #[serde(default)]
    pub publish: Vec<Spanned<String>>,
    #[serde(default)]
    pub subscribe: Vec<Spanned<String>>,
    #[serde(default)]
    pub retain: Option<Spanned<bool>>,
    #[serde(default)]
    pub limits: Option<IdentityLimitsSpec>,
}

/// Per-identity (or per-role) overrides of queue and packet limits.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdentityLimitsSpec {
    pub max_queued_messages: Option<Spanned<u64>>,
    pub max_queued_bytes: Option<Spanned<ByteSize>>,
    pub max_packet_size: Option<Spanned<ByteSize>>,
    pub max_retained_messages: Option<Spanned<u64>>,
    pub max_subscriptions: Option<Spanned<u64>>,
}

/// A mapping from names to values that keeps the source order and the location of
/// every key. Duplicate keys never get here: the parser rejects them.
#[derive(Debug, Clone)]
pub struct NamedMap<V>(pub Vec<(Spanned<String>, V)>);

impl<V> Default for NamedMap<V> {
    fn default() -> Self {
        NamedMap(Vec::new())
    }
}

impl<V> NamedMap<V> {
    pub fn iter(&self) -> impl Iterator<Item = (&Spanned<String>, &V)> {
        self.0.iter().map(|(k, v)| (k, v))
    }
    pub fn get(&self, name: &str) -> Option<&V> {
        self.0.iter().find(|(k, _)| k.value == name).map(|(_, v)| v)
    }
    pub fn contains(&self, name: &str) -> bool {
        self.get(name).is_some()
    }
    pub fn len(&self) -> usize {
        self.0.len()
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl<'de, V: Deserialize<'de>> Deserialize<'de> for NamedMap<V> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct MapVisitor<V>(PhantomData<V>);
        impl<'de, V: Deserialize<'de>> Visitor<'de> for MapVisitor<V> {
            type Value = NamedMap<V>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a mapping of names")
            }
            fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(NamedMap(Vec::new()))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut entries = Vec::new();
                while let Some((key, value)) = map.next_entry::<Spanned<String>, V>()? {
                    entries.push((key, value));
                }
                Ok(NamedMap(entries))
            }
        }
        deserializer.deserialize_map(MapVisitor(PhantomData))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_units() {
        assert_eq!(ByteSize::parse("64KiB"), Ok(ByteSize(65536)));
        assert_eq!(ByteSize::parse("1MiB"), Ok(ByteSize(1 << 20)));
        assert_eq!(ByteSize::parse("16 MiB"), Ok(ByteSize(16 << 20)));
        assert_eq!(ByteSize::parse("500kB"), Ok(ByteSize(500_000)));
        assert_eq!(ByteSize::parse("42"), Ok(ByteSize(42)));
        assert!(ByteSize::parse("1 lot").is_err());
        assert!(ByteSize::parse("MiB").is_err());
        assert!(ByteSize::parse("99999999999999999999GiB").is_err());
        assert!(ByteSize::parse("-1").is_err());
    }

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(Seconds::parse("10s"), Ok(Seconds(10)));
        assert_eq!(Seconds::parse("5m"), Ok(Seconds(300)));
        assert_eq!(Seconds::parse("1h"), Ok(Seconds(3600)));
        assert_eq!(Seconds::parse("2000ms"), Ok(Seconds(2)));
        assert!(Seconds::parse("1500ms").is_err());
        assert!(Seconds::parse("ten").is_err());
        assert!(Seconds::parse("10 fortnights").is_err());
    }
}
