//! Who may touch everything. "Everything" is a grant whose filter is `#`, or only `+`
//! levels followed by `#` (`+/#`): it matches every non-`$` topic. Publishing
//! everywhere is for the hub only ([`WRITE_ALL_ROLES`]: `homeassistant`, whose
//! automations may command any device); anyone else with such a publish grant is a
//! FAIL. Subscribing everywhere is what the built-in read-all roles are for
//! ([`READ_ALL_ROLES`]: the `homeassistant` roles, whose discovery may point
//! anywhere, and `observer`, the read-only dashboard); anyone else with such a
//! subscribe grant is a FAIL. (`#` never matches `$SYS` or other `$` topics.)

use super::Finding;
use crate::manifest::roles;
use crate::policy::{Identity, Policy};

const CHECK: &str = "grants";

/// Built-in roles that subscribe to `#` by design.
pub const READ_ALL_ROLES: &[&str] = &["homeassistant", "homeassistant-strict", "observer"];

/// Built-in roles that publish to `#` by design: the hub.
pub const WRITE_ALL_ROLES: &[&str] = &["homeassistant"];

/// Whether a filter matches every non-`$` topic.
pub fn matches_everything(filter: &str) -> bool {
    let mut levels: Vec<&str> = filter.split('/').collect();
    levels.pop() == Some("#") && levels.iter().all(|l| *l == "+")
}

/// Whether the identity holds one of `builtin` (built-in roles only: a manifest role
/// cannot take a built-in name).
fn has_role(identity: &Identity, builtin: &[&str]) -> bool {
    identity
        .roles
        .iter()
        .any(|r| builtin.contains(&r.as_str()) && roles::preset(r).is_some())
}

/// The findings for one identity (none if it is fine).
pub fn judge(identity: &Identity) -> Vec<Finding> {
    let mut findings = Vec::new();
    let kind = identity.kind.as_str();
    let name = &identity.name;
    let writes_all = has_role(identity, WRITE_ALL_ROLES);
    for grant in identity.acl.publish_grants() {
        if !writes_all && matches_everything(&grant.pattern) {
            findings.push(Finding::fail(
                CHECK,
                format!(
                    "{kind} {name} may publish to every topic ({}, from {})",
                    grant.pattern, grant.source
                ),
                format!("grant {name} only the topics it writes, e.g. `publish: [\"{name}/#\"]`"),
            ));
        }
    }
    if !has_role(identity, READ_ALL_ROLES) {
        for grant in identity.acl.subscribe_grants() {
            if matches_everything(&grant.pattern) {
                findings.push(Finding::fail(
                    CHECK,
                    format!("{kind} {name} may subscribe to every topic ({}, from {})", grant.pattern, grant.source),
                    format!(
                        "grant {name} only the topics it reads, or give it `role: observer` if it is a read-only dashboard"
                    ),
                ));
            }
        }
    }
    findings
}

pub fn check(policy: &Policy) -> Vec<Finding> {
    let findings: Vec<Finding> = policy.identities().flat_map(|i| judge(i)).collect();
    if findings.is_empty() {
        vec![Finding::pass(
            CHECK,
            format!(
                "only the built-in {} role publishes everywhere; only the built-in {} roles read everything",
                WRITE_ALL_ROLES.join(" and "),
                READ_ALL_ROLES.join(", ")
            ),
        )]
    } else {
        findings
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::doctor::Status;
    use crate::manifest::{LoadOptions, parse_str};

    const HASH: &str =
        "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaGhhc2hoYXNoaGFzaGhhc2g";

    fn policy(users: &str) -> Policy {
        let text = format!("version: 1\nusers:\n{}", users.replace("{HASH}", HASH));
        let loaded = parse_str(&text, "t.yaml", LoadOptions::default()).unwrap();
        Policy::compile(&loaded.manifest).unwrap()
    }

    #[test]
    fn what_counts_as_everything() {
        for f in ["#", "+/#", "+/+/#"] {
            assert!(matches_everything(f), "{f}");
        }
        for f in ["a/#", "+", "+/+", "$SYS/#", "#/a", "a/+/#"] {
            assert!(!matches_everything(f), "{f}");
        }
    }

    #[test]
    fn the_read_all_roles_pass() {
        let p = policy(
            "  ha:\n    role: homeassistant\n    password_hash: \"{HASH}\"\n  wall:\n    role: observer\n    password_hash: \"{HASH}\"\n",
        );
        let findings = check(&p);
        assert_eq!(findings.len(), 1);
        assert_eq!(findings[0].status, Status::Pass);
    }

    #[test]
    fn anyone_else_with_hash_fails() {
        let p = policy(
            "  bob:\n    password_hash: \"{HASH}\"\n    subscribe: [\"#\"]\n  eve:\n    password_hash: \"{HASH}\"\n    publish: [\"+/#\"]\n",
        );
        let findings = check(&p);
        assert_eq!(findings.len(), 2, "{findings:?}");
        assert!(findings.iter().all(|f| f.status == Status::Fail));
        assert!(
            findings[0]
                .message
                .contains("user bob may subscribe to every topic")
        );
        assert!(
            findings[1]
                .message
                .contains("user eve may publish to every topic")
        );
    }

    #[test]
    fn a_read_all_role_does_not_excuse_publishing_everywhere() {
        let p = policy(
            "  ha:\n    role: observer\n    password_hash: \"{HASH}\"\n    publish: [\"#\"]\n",
        );
        let findings = check(&p);
        assert_eq!(findings.len(), 1);
        assert_eq!(findings[0].status, Status::Fail);
        assert!(findings[0].message.contains("publish"));
    }
}
