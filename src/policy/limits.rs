//! The broker-wide resource limits: their defaults (one place for each number) and
//! their compilation from `broker.limits`. Per-identity overrides live in
//! `identity`; this module must not know identities.

use std::time::Duration;

use crate::manifest::schema::{ByteSize, Manifest, Spanned};

/// Resource limits (defaults sized for a Pi Zero 2 W; see DESIGN.md).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    pub max_connections: usize,
    pub max_connections_per_ip: usize,
    pub max_packet_size: u32,
    pub max_packet_size_before_auth: u32,
    pub connect_timeout: Duration,
    pub max_keepalive: u16,
    pub max_inflight: u16,
    pub max_queued_messages: usize,
    pub max_queued_bytes: usize,
    pub max_subscriptions: usize,
    pub max_user_properties: usize,
    pub max_user_property_bytes: usize,
    pub max_client_id_length: usize,
    pub max_topic_length: usize,
    pub max_topic_levels: usize,
    pub max_retained_messages: usize,
    pub max_retained_bytes: usize,
    pub auth_concurrency: usize,
    pub auth_queue: usize,
    /// Persistent sessions one identity may keep (each client id is one).
    pub max_sessions_per_identity: usize,
}

impl Default for Limits {
    /// The broker's own defaults where it has one (one place for each number), and
    /// the edge's (connections, queues, argon2) here; `docs/manifest.md`'s table is
    /// checked against these by a test.
    fn default() -> Self {
        let broker = crate::broker::BrokerConfig::default();
        Limits {
            max_connections: 256,
            max_connections_per_ip: 32,
            max_packet_size: 1024 * 1024,
            max_packet_size_before_auth: broker.max_packet_size_before_auth,
            connect_timeout: broker.connect_timeout,
            max_keepalive: broker.max_keepalive,
            max_inflight: broker.max_inflight,
            max_queued_messages: 1000,
            max_queued_bytes: 1024 * 1024,
            max_subscriptions: broker.max_subscriptions,
            max_user_properties: broker.max_user_properties,
            max_user_property_bytes: broker.max_user_property_bytes,
            max_client_id_length: broker.max_client_id_length,
            max_topic_length: broker.max_topic_length,
            max_topic_levels: broker.max_topic_levels,
            max_retained_messages: broker.max_retained_messages,
            max_retained_bytes: broker.max_retained_bytes,
            auth_concurrency: 2,
            auth_queue: 16,
            max_sessions_per_identity: broker.max_sessions_per_identity,
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
    Limits {
        max_connections: count(&l.max_connections, d.max_connections),
        max_connections_per_ip: count(&l.max_connections_per_ip, d.max_connections_per_ip),
        max_packet_size: packet(&l.max_packet_size, d.max_packet_size),
        max_packet_size_before_auth: packet(
            &l.max_packet_size_before_auth,
            d.max_packet_size_before_auth,
        ),
        connect_timeout: l
            .connect_timeout
            .as_ref()
            .map_or(d.connect_timeout, |t| Duration::from_secs(t.value.0)),
        max_keepalive: l.max_keepalive.as_ref().map_or(d.max_keepalive, |k| {
            u16::try_from(k.value.0).unwrap_or(u16::MAX)
        }),
        max_inflight: l.max_inflight.as_ref().map_or(d.max_inflight, |i| {
            u16::try_from(i.value).unwrap_or(u16::MAX)
        }),
        max_queued_messages: count(&l.max_queued_messages, d.max_queued_messages),
        max_queued_bytes: size(&l.max_queued_bytes, d.max_queued_bytes),
        max_subscriptions: count(&l.max_subscriptions, d.max_subscriptions),
        max_user_properties: count(&l.max_user_properties, d.max_user_properties),
        max_user_property_bytes: size(&l.max_user_property_bytes, d.max_user_property_bytes),
        max_client_id_length: count(&l.max_client_id_length, d.max_client_id_length),
        max_topic_length: count(&l.max_topic_length, d.max_topic_length),
        max_topic_levels: count(&l.max_topic_levels, d.max_topic_levels),
        max_retained_messages: count(&l.max_retained_messages, d.max_retained_messages),
        max_retained_bytes: size(&l.max_retained_bytes, d.max_retained_bytes),
        auth_concurrency: count(&l.auth_concurrency, d.auth_concurrency),
        auth_queue: count(&l.auth_queue, d.auth_queue),
        max_sessions_per_identity: count(&l.max_sessions_per_identity, d.max_sessions_per_identity),
    }
}
