//! What the running broker refused (`<state>/denials.json`, written by
//! `crate::server::denials_file`), and for each refusal the manifest line that would
//! allow it, placed where it goes (`users.NAME.publish: ["frigate/front/#"]`).
//! Shared by `moat denials` and the `denials` section of `moat doctor`; it reads,
//! it never edits the manifest.

use std::path::Path;

use super::Finding;
use crate::broker::denials::{DenialEntry, DenialKind};
use crate::policy::{Limits, Policy};
use crate::server::denials_file::{self, ReadError};

const CHECK: &str = "denials";

/// The manifest line that would allow what `entry` counts, or why none would.
pub fn grant_line(policy: Option<&Policy>, entry: &DenialEntry) -> String {
    let identity = policy.and_then(|p| p.identity(&entry.identity));
    let section = identity.map_or("users", |i| match i.kind {
        crate::policy::IdentityKind::User => "users",
        crate::policy::IdentityKind::Device => "devices",
    });
    let at = format!("{section}.{}", entry.identity);
    let pattern = &entry.pattern;
    // Without a manifest, the limits a client had were the defaults.
    let defaults = Limits::default();
    let line = match entry.kind {
        DenialKind::Publish | DenialKind::Will => format!("{at}.publish: [\"{pattern}\"]"),
        DenialKind::Subscribe | DenialKind::Receive => {
            format!("{at}.subscribe: [\"{pattern}\"]")
        }
        DenialKind::Retain => format!("{at}.retain: true"),
        DenialKind::SubscribeQuota => {
            let broker_wide = policy.map_or(defaults.broker.max_subscriptions, |p| {
                p.limits.broker.max_subscriptions
            });
            let now = identity.map_or(broker_wide, |i| i.max_subscriptions);
            format!(
                "{at}.limits.max_subscriptions: {}",
                now.saturating_mul(2).max(1000)
            )
        }
        DenialKind::SubscribeInvalid => {
            "broker.limits.max_topic_length / max_topic_levels (the filter is longer or deeper)"
                .to_string()
        }
        DenialKind::QueueFull => {
            let broker_wide = policy.map_or(defaults.max_queued_messages, |p| {
                p.limits.max_queued_messages
            });
            let now = identity.map_or(broker_wide, |i| i.max_queued_messages);
            format!(
                "{at}.limits.max_queued_messages: {} (if it only falls behind in bursts; a client that is always slower than its publishers needs fixing, not a larger queue)",
                now.saturating_mul(4)
            )
        }
    };
    if policy.is_some() && identity.is_none() {
        format!(
            "{line}  (no identity {} in the manifest now)",
            entry.identity
        )
    } else {
        line
    }
}

/// PASS when the broker refused nothing since it started, else a WARN naming the
/// most frequent refusal and its grant line.
pub fn check(policy: &Policy, state_dir: &Path) -> Vec<Finding> {
    let snapshot = match denials_file::read(state_dir) {
        Ok(s) => s,
        Err(ReadError::Io { .. }) => {
            return vec![Finding::pass(
                CHECK,
                "no denial counts yet (the broker writes them while it runs)",
            )];
        }
        Err(e) => return vec![Finding::warn(CHECK, e.to_string(), "restart `moat serve`")],
    };
    let Some(top) = snapshot.entries.first() else {
        return vec![Finding::pass(
            CHECK,
            "nothing refused since the broker started",
        )];
    };
    vec![Finding::warn(
        CHECK,
        format!(
            "{} refusal(s) since the broker started; most: {} {} {} ({}x)",
            snapshot.total,
            top.identity,
            top.kind.as_str(),
            top.pattern,
            top.count
        ),
        format!(
            "if it should be allowed: {} (all of them: `moat denials`)",
            grant_line(Some(policy), top)
        ),
    )]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::{LoadOptions, parse_str};

    const HASH: &str =
        "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaGhhc2hoYXNoaGFzaGhhc2g";

    fn entry(identity: &str, kind: DenialKind, pattern: &str) -> DenialEntry {
        DenialEntry {
            identity: identity.into(),
            kind,
            pattern: pattern.into(),
            count: 1,
            example: pattern.into(),
        }
    }

    #[test]
    fn grant_lines_name_the_section_and_the_key() {
        let text = format!(
            "version: 1\nusers:\n  ha:\n    role: observer\n    password_hash: \"{HASH}\"\ndevices:\n  cam:\n    password_hash: \"{HASH}\"\n    publish: [\"x\"]\n"
        );
        let loaded = parse_str(&text, "t.yaml", LoadOptions::default()).unwrap();
        let policy = Policy::compile(&loaded.manifest).unwrap();
        let p = Some(&policy);
        assert_eq!(
            grant_line(p, &entry("cam", DenialKind::Publish, "frigate/front/#")),
            "devices.cam.publish: [\"frigate/front/#\"]"
        );
        assert_eq!(
            grant_line(p, &entry("ha", DenialKind::Receive, "a/b")),
            "users.ha.subscribe: [\"a/b\"]"
        );
        assert_eq!(
            grant_line(p, &entry("cam", DenialKind::Retain, "a")),
            "devices.cam.retain: true"
        );
        assert_eq!(
            grant_line(p, &entry("ha", DenialKind::SubscribeQuota, "a")),
            "users.ha.limits.max_subscriptions: 20000"
        );
        assert!(grant_line(p, &entry("gone", DenialKind::Will, "a")).contains("no identity gone"));
        assert!(
            grant_line(p, &entry("ha", DenialKind::QueueFull, "a/#"))
                .starts_with("users.ha.limits.max_queued_messages: "),
            "{}",
            grant_line(p, &entry("ha", DenialKind::QueueFull, "a/#"))
        );
    }
}
