//! The broker-wide resource limits: the edge's defaults (the broker core's are
//! `BrokerConfig::default`, argon2's `AuthConfig::default`: one place for each
//! number) and their compilation from
//! `broker.limits`. Per-identity overrides live in `identity`; this module must
//! not know identities.

use std::time::Duration;

use crate::auth::AuthConfig;
use crate::broker::BrokerConfig;
use crate::manifest::schema::{ByteSize, Manifest, Spanned};

/// Resource limits (defaults sized for a Pi Zero 2 W; see DESIGN.md): the ones the
/// broker core enforces travel as one [`BrokerConfig`], which the server hands to the
/// broker as is (no copy to drift); the edge's own (connections, queues, packet size,
/// argon2) sit beside it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// The broker core's limits, with the broker's own defaults.
    pub broker: BrokerConfig,
    pub max_connections: usize,
    pub max_connections_per_ip: usize,
    pub max_packet_size: u32,
    pub max_queued_messages: usize,
    pub max_queued_bytes: usize,
    pub auth_concurrency: usize,
    pub auth_queue: usize,
}

impl Default for Limits {
    /// The broker's defaults come from [`BrokerConfig::default`] and argon2's from
    /// [`AuthConfig::default`] (one place for each number), the edge's are here; `docs/manifest.md`'s table is checked against
    /// both by a test.
    fn default() -> Self {
        let auth = AuthConfig::default();
        Limits {
            broker: BrokerConfig::default(),
            max_connections: 256,
            max_connections_per_ip: 32,
            max_packet_size: 1024 * 1024,
            max_queued_messages: 1000,
            max_queued_bytes: 1024 * 1024,
            auth_concurrency: auth.concurrency,
            auth_queue: auth.queue,
        }
    }
}

pub(super) fn to_usize(v: u64) -> usize {
    usize::try_from(v).unwrap_or(usize::MAX)
}

pub(super) fn to_u32(v: u64) -> u32 {
    u32::try_from(v).unwrap_or(u32::MAX)
}

pub(super) fn compile_limits(manifest: &Manifest) -> Limits {
    let l = &manifest.broker.limits;
    let d = Limits::default();
    let count = |v: &Option<Spanned<u64>>, default: usize| {
        v.as_ref().map_or(default, |v| to_usize(v.value))
    };
    let size = |v: &Option<Spanned<ByteSize>>, default: usize| {
        v.as_ref().map_or(default, |v| to_usize(v.value.0))
    };
    let packet = |v: &Option<Spanned<ByteSize>>, default: u32| {
        v.as_ref().map_or(default, |v| to_u32(v.value.0))
    };
    let b = &d.broker;
    let broker = BrokerConfig {
        max_packet_size_before_auth: packet(
            &l.max_packet_size_before_auth,
            b.max_packet_size_before_auth,
        ),
        connect_timeout: l
            .connect_timeout
            .as_ref()
            .map_or(b.connect_timeout, |t| Duration::from_secs(t.value.0)),
        max_keepalive: l.max_keepalive.as_ref().map_or(b.max_keepalive, |k| {
            u16::try_from(k.value.0).unwrap_or(u16::MAX)
        }),
        max_inflight: l.max_inflight.as_ref().map_or(b.max_inflight, |i| {
            u16::try_from(i.value).unwrap_or(u16::MAX)
        }),
        max_subscriptions: count(&l.max_subscriptions, b.max_subscriptions),
        max_user_properties: count(&l.max_user_properties, b.max_user_properties),
        max_user_property_bytes: size(&l.max_user_property_bytes, b.max_user_property_bytes),
        max_client_id_length: count(&l.max_client_id_length, b.max_client_id_length),
        max_topic_length: count(&l.max_topic_length, b.max_topic_length),
        max_topic_levels: count(&l.max_topic_levels, b.max_topic_levels),
        max_retained_messages: count(&l.max_retained_messages, b.max_retained_messages),
        max_retained_bytes: size(&l.max_retained_bytes, b.max_retained_bytes),
        max_sessions_per_identity: count(&l.max_sessions_per_identity, b.max_sessions_per_identity),
        // Not settable in the manifest: the broker's own values.
        topic_alias_maximum: b.topic_alias_maximum,
        max_session_expiry: b.max_session_expiry,
    };
    Limits {
        broker,
        max_connections: count(&l.max_connections, d.max_connections),
        max_connections_per_ip: count(&l.max_connections_per_ip, d.max_connections_per_ip),
        max_packet_size: packet(&l.max_packet_size, d.max_packet_size),
        max_queued_messages: count(&l.max_queued_messages, d.max_queued_messages),
        max_queued_bytes: size(&l.max_queued_bytes, d.max_queued_bytes),
        auth_concurrency: count(&l.auth_concurrency, d.auth_concurrency),
        auth_queue: count(&l.auth_queue, d.auth_queue),
    }
}
