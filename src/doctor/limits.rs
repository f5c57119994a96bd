//! Limits left effectively unbounded. The manifest refuses 0 ("unlimited") for every
//! limit, so "unbounded" here means raised past what a 512 MB appliance can honour:
//! each limit has a ceiling (16 to 64 times its default, see [`CEILINGS`]); a value
//! above it is a WARN, because one client could then exhaust the memory the others
//! need.

use super::Finding;
use crate::policy::Limits;

const CHECK: &str = "limits";
const MIB: u64 = 1024 * 1024;

/// (name, value, ceiling) for every limit doctor judges.
pub fn ceilings(l: &Limits) -> Vec<(&'static str, u64, u64)> {
    let n = |v: usize| u64::try_from(v).unwrap_or(u64::MAX);
    vec![
        ("max_connections", n(l.max_connections), 4096),
        ("max_connections_per_ip", n(l.max_connections_per_ip), 512),
        ("max_packet_size", u64::from(l.max_packet_size), 64 * MIB),
        (
            "max_packet_size_before_auth",
            u64::from(l.broker.max_packet_size_before_auth),
            MIB,
        ),
        (
            "connect_timeout (s)",
            l.broker.connect_timeout.as_secs(),
            60,
        ),
        ("max_keepalive (s)", u64::from(l.broker.max_keepalive), 3600),
        ("max_inflight", u64::from(l.broker.max_inflight), 1000),
        ("max_queued_messages", n(l.max_queued_messages), 100_000),
        ("max_queued_bytes", n(l.max_queued_bytes), 64 * MIB),
        ("max_subscriptions", n(l.broker.max_subscriptions), 10_000),
        ("max_user_properties", n(l.broker.max_user_properties), 1024),
        (
            "max_user_property_bytes",
            n(l.broker.max_user_property_bytes),
            MIB,
        ),
        (
            "max_client_id_length",
            n(l.broker.max_client_id_length),
            4096,
        ),
        ("max_topic_length", n(l.broker.max_topic_length), 16 * 1024),
        ("max_topic_levels", n(l.broker.max_topic_levels), 256),
        (
            "max_retained_messages",
            n(l.broker.max_retained_messages),
            1_000_000,
        ),
        (
            "max_retained_bytes",
            n(l.broker.max_retained_bytes),
            256 * MIB,
        ),
        ("auth_concurrency", n(l.auth_concurrency), 16),
        ("auth_queue", n(l.auth_queue), 1024),
    ]
}

pub fn check(limits: &Limits) -> Vec<Finding> {
    let findings: Vec<Finding> = ceilings(limits)
        .into_iter()
        .filter(|(_, value, ceiling)| value > ceiling)
        .map(|(name, value, ceiling)| {
            Finding::warn(
                CHECK,
                format!("{name} is {value}: effectively unbounded on a 512 MB appliance (ceiling {ceiling})"),
                format!("lower broker.limits.{} or remove it to get the default", name.split(' ').next().unwrap_or(name)),
            )
        })
        .collect();
    if findings.is_empty() {
        vec![Finding::pass(CHECK, "every limit is bounded")]
    } else {
        findings
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::doctor::Status;

    #[test]
    fn the_defaults_are_bounded() {
        let findings = check(&Limits::default());
        assert_eq!(findings.len(), 1);
        assert_eq!(findings[0].status, Status::Pass);
        for (name, value, ceiling) in ceilings(&Limits::default()) {
            assert!(value <= ceiling, "{name}");
        }
    }

    #[test]
    fn a_huge_limit_warns() {
        let limits = Limits {
            max_packet_size: 256 * 1024 * 1024,
            max_connections: 100_000,
            ..Limits::default()
        };
        let findings = check(&limits);
        assert_eq!(findings.len(), 2);
        assert!(findings.iter().all(|f| f.status == Status::Warn));
        assert!(findings[1].message.contains("max_packet_size is 268435456"));
    }
}
