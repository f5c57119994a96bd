//! Validation of the `broker:` section: hostnames, addresses, listeners (no port
//! claimed twice), networks, persistence and the broker-wide limits.

use super::values::check_hostname;
use super::{Collector, MQTT_MAX_PACKET_SIZE, is_local_network, parse_network};
use std::ops::RangeInclusive;

use crate::manifest::schema::{
    ByteSize, DurabilitySpec, LimitsSpec, Manifest, Seconds, Spanned, Transport,
};

pub(super) fn validate_broker(c: &mut Collector, m: &Manifest) {
    let broker = &m.broker;
    let mut seen = Vec::new();
    for host in &broker.hostnames {
        if let Err(e) = check_hostname(&host.value) {
            c.error(host, e);
        } else if seen.contains(&host.value.to_ascii_lowercase()) {
            c.error(host, format!("hostname {:?} is listed twice", host.value));
        } else {
            seen.push(host.value.to_ascii_lowercase());
        }
    }
    // Every listener needs a port of its own, defaults included (a `plain` entry on
    // 8883 with `tls` left out would clash with the default TLS port at bind time).
    let mut taken: Vec<(u16, Transport)> = Vec::new();
    for (transport, entry) in broker.listen.declared() {
        let port = entry
            .and_then(|e| e.value.port.as_ref())
            .map_or(transport.default_port(), |p| p.value);
        let at = |c: &mut Collector, message: String| match entry {
            Some(e) => match &e.value.port {
                Some(p) => c.error(p, message),
                None => c.error(e, message),
            },
            None => c.error(&m.version, message),
        };
        if port == 0 {
            at(c, "port 0 is not a port a client can connect to".into());
        } else if let Some((_, other)) = taken.iter().find(|(p, _)| *p == port) {
            at(
                c,
                format!(
                    "the {} listener cannot share port {port} with the {} listener",
                    transport.key(),
                    other.key()
                ),
            );
        } else {
            taken.push((port, transport));
        }
    }
    let allow_public = broker.allow_public.as_ref().is_some_and(|a| a.value);
    let mut any_public = false;
    if let Some(networks) = &broker.networks {
        if networks.value.is_empty() {
            c.error(
                networks,
                "broker.networks is empty: no client could connect (omit it for the default [loopback, private])",
            );
        }
        for entry in &networks.value {
            match parse_network(&entry.value) {
                Err(e) => c.error(entry, e),
                Ok(nets) => {
                    for net in nets.iter().filter(|n| !is_local_network(n)) {
                        any_public = true;
                        if allow_public {
                            c.warn(
                                entry,
                                format!("PUBLIC network {net} is allowed to connect (allow_public: true); the internet may reach this broker"),
                            );
                        } else {
                            c.error(
                                entry,
                                format!("{net} is a public network; moat is LAN-only unless you set broker.allow_public: true next to it"),
                            );
                        }
                    }
                }
            }
        }
    }
    if let Some(flag) = &broker.allow_public
        && flag.value
        && !any_public
    {
        c.warn(
            flag,
            "allow_public: true has no effect: no public network is listed",
        );
    }
    validate_limits(c, &broker.limits);
    let p = &broker.persistence;
    let batched = p
        .durability
        .as_ref()
        .is_some_and(|d| d.value == DurabilitySpec::Batched);
    if let Some(ms) = &p.commit_interval_ms {
        if !batched {
            c.error(ms, "commit_interval_ms applies only to durability: batched");
        } else if !(1..=10_000).contains(&ms.value) {
            c.error(ms, "commit_interval_ms must be between 1 and 10000");
        }
    }
    if let Some(path) = &p.path
        && path.value.as_os_str().is_empty()
    {
        c.error(path, "persistence.path cannot be empty");
    }
}

pub(super) fn at_least_one(c: &mut Collector, field: &str, value: &Option<Spanned<u64>>) {
    if let Some(v) = value
        && v.value == 0
    {
        c.error(v, format!("{field} must be at least 1"));
    }
}

/// Accepted packet size limits: room for a small packet up to MQTT's maximum.
pub(super) const PACKET_BYTES: RangeInclusive<u64> = 128..=MQTT_MAX_PACKET_SIZE;
/// Accepted queue and store size limits.
pub(super) const STORE_BYTES: RangeInclusive<u64> = 1024..=u32::MAX as u64;

pub(super) fn size_in(
    c: &mut Collector,
    field: &str,
    value: &Option<Spanned<ByteSize>>,
    range: RangeInclusive<u64>,
) {
    let (min, max) = (*range.start(), *range.end());
    if let Some(v) = value
        && !range.contains(&v.value.0)
    {
        c.error(
            v,
            format!(
                "{field} must be between {min} and {max} bytes (got {})",
                v.value.0
            ),
        );
    }
}

fn validate_limits(c: &mut Collector, l: &LimitsSpec) {
    for (field, value) in [
        ("max_connections", &l.max_connections),
        ("max_connections_per_ip", &l.max_connections_per_ip),
        ("max_inflight", &l.max_inflight),
        ("max_queued_messages", &l.max_queued_messages),
        ("max_subscriptions", &l.max_subscriptions),
        ("max_client_id_length", &l.max_client_id_length),
        ("max_topic_length", &l.max_topic_length),
        ("max_topic_levels", &l.max_topic_levels),
        ("max_retained_messages", &l.max_retained_messages),
        ("auth_concurrency", &l.auth_concurrency),
        ("max_sessions_per_identity", &l.max_sessions_per_identity),
    ] {
        at_least_one(c, field, value);
    }
    size_in(c, "max_packet_size", &l.max_packet_size, PACKET_BYTES);
    size_in(
        c,
        "max_packet_size_before_auth",
        &l.max_packet_size_before_auth,
        PACKET_BYTES,
    );
    size_in(c, "max_queued_bytes", &l.max_queued_bytes, STORE_BYTES);
    size_in(c, "max_retained_bytes", &l.max_retained_bytes, STORE_BYTES);
    size_in(
        c,
        "max_user_property_bytes",
        &l.max_user_property_bytes,
        0..=1 << 24,
    );
    if let (Some(before), Some(after)) = (&l.max_packet_size_before_auth, &l.max_packet_size)
        && before.value.0 > after.value.0
    {
        c.error(
            before,
            "max_packet_size_before_auth cannot exceed max_packet_size",
        );
    }
    if let Some(t) = &l.connect_timeout
        && !(1..=300).contains(&t.value.0)
    {
        c.error(t, "connect_timeout must be between 1s and 300s");
    }
    if let Some(k) = &l.max_keepalive {
        let Seconds(s) = k.value;
        if !(1..=65_535).contains(&s) {
            c.error(k, "max_keepalive must be between 1 and 65535 seconds");
        }
    }
    if let Some(i) = &l.max_inflight
        && i.value > 65_535
    {
        c.error(i, "max_inflight cannot exceed 65535");
    }
    if let Some(cid) = &l.max_client_id_length
        && cid.value > 65_535
    {
        c.error(cid, "max_client_id_length cannot exceed 65535");
    }
    if let Some(t) = &l.max_topic_length
        && t.value > 65_535
    {
        c.error(t, "max_topic_length cannot exceed 65535");
    }
    if let (Some(per_ip), Some(total)) = (&l.max_connections_per_ip, &l.max_connections)
        && per_ip.value > total.value
    {
        c.warn(
            per_ip,
            "max_connections_per_ip is larger than max_connections",
        );
    }
}
