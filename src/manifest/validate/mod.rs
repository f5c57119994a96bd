//! Validation of a parsed manifest: names, credentials, topic filters, roles,
//! networks, listeners and limits. It collects every finding (errors and warnings)
//! with the line and column of the offending node; it never stops at the first one.
//! It decides what is allowed, not how the broker uses it (that is `crate::policy`).

mod broker;
mod identities;
mod networks;
mod values;

use super::load::LoadOptions;
use super::schema::{Manifest, Spanned};

pub use networks::{
    DEFAULT_NETWORKS, NAMED_NETWORKS, is_local_network, named_network, parse_network,
};
pub use values::{check_grant_filter, check_name, classify_hash};

use broker::validate_broker;
use identities::{validate_identity, validate_roles};

/// The only schema version this build reads.
pub const SCHEMA_VERSION: u64 = 1;
/// Longest identity or role name.
pub const MAX_NAME_LEN: usize = 64;
/// The MQTT maximum packet size (remaining length 268 435 455 plus the fixed header).
pub const MQTT_MAX_PACKET_SIZE: u64 = 268_435_460;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    Error,
    Warning,
}

/// One located problem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub severity: Severity,
    pub line: u64,
    pub column: u64,
    pub message: String,
}

struct Collector {
    findings: Vec<Finding>,
}

impl Collector {
    fn error<T>(&mut self, at: &Spanned<T>, message: impl Into<String>) {
        self.push(Severity::Error, at, message.into());
    }
    fn warn<T>(&mut self, at: &Spanned<T>, message: impl Into<String>) {
        self.push(Severity::Warning, at, message.into());
    }
    fn push<T>(&mut self, severity: Severity, at: &Spanned<T>, message: String) {
        self.findings.push(Finding {
            severity,
            line: at.referenced.line().max(1),
            column: at.referenced.column().max(1),
            message,
        });
    }
}

/// Validates a parsed manifest; returns every error and warning found.
pub fn validate(manifest: &Manifest, options: LoadOptions) -> Vec<Finding> {
    let mut c = Collector {
        findings: Vec::new(),
    };
    if manifest.version.value != SCHEMA_VERSION {
        c.error(
            &manifest.version,
            format!(
                "unsupported manifest version {}; this moat reads version {SCHEMA_VERSION}",
                manifest.version.value
            ),
        );
    }
    validate_broker(&mut c, manifest);
    c.findings
        .extend(crate::manifest::metrics::validate(&manifest.broker));
    validate_roles(&mut c, manifest);
    c.findings.extend(super::bridge::validate(manifest));
    let plain_listener = manifest.broker.listen.has_plaintext();
    let mut anyone_plaintext = false;
    for (section, map) in [("users", &manifest.users), ("devices", &manifest.devices)] {
        for (name, spec) in map.iter() {
            if let Err(e) = check_name(&name.value) {
                c.error(name, format!("{section}: {e}"));
            }
            if section == "devices" && manifest.users.contains(&name.value) {
                c.error(
                    name,
                    format!(
                        "{:?} is both a user and a device; an identity name must be unique",
                        name.value
                    ),
                );
            }
            let plaintext = validate_identity(&mut c, manifest, section, name, spec, options);
            if let Some(p) = plaintext {
                anyone_plaintext = true;
                if !plain_listener {
                    c.error(
                        p,
                        format!(
                            "{section}.{} has plaintext: true but no plaintext listener (broker.listen.plain or .ws) is declared",
                            name.value
                        ),
                    );
                }
            }
        }
    }
    for (key, entry) in [
        ("plain", &manifest.broker.listen.plain),
        ("ws", &manifest.broker.listen.ws),
    ] {
        if let Some(entry) = entry
            && !anyone_plaintext
        {
            c.warn(
                entry,
                format!("broker.listen.{key} is declared but no identity has plaintext: true; nobody can use it"),
            );
        }
    }
    c.findings
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::HashKind;

    #[test]
    fn names_are_restricted() {
        assert!(check_name("kitchen-sensor_1.a").is_ok());
        for bad in [
            "",
            "a+b",
            "a#",
            "a/b",
            "$sys",
            "..",
            ".hidden",
            "-x",
            "ä",
            &"a".repeat(65),
        ] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn hashes_are_classified() {
        let argon = crate::auth::hash_password(b"pw").unwrap();
        assert_eq!(classify_hash(&argon), Ok(HashKind::Argon2id));
        // Debian mosquitto_passwd 2.0.11's output for "pw".
        assert_eq!(
            classify_hash(
                "$7$101$HCThYiheYqjjiGZ7$YeoFJAvMssLj5W3GxGg0L4cBzWywtioCBdn2YoryXYgq4w8PXIGEIP4Bo+w9UkUgElZIJfzpmQ/57uoMemKCtg=="
            ),
            Ok(HashKind::MosquittoPbkdf2)
        );
        assert!(classify_hash("$argon2i$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA").is_err());
        assert!(classify_hash("$2b$10$abcdefghijklmnopqrstuv").is_err());
        assert!(classify_hash("hunter2").is_err());
        assert!(classify_hash("$argon2id$v=19$m=19456$c2FsdA$aGFzaA").is_err());
    }

    #[test]
    fn check_refuses_what_login_would() {
        // Well-formed, but over login's cost ceiling: `moat check` used to accept it
        // and every login then failed.
        let costly =
            "$argon2id$v=19$m=4194304,t=2,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaGhhc2hoYXNo";
        let why = classify_hash(costly).unwrap_err();
        assert!(why.contains("ceiling"), "{why}");
        // A salt too short for argon2.
        assert!(
            classify_hash(
                "$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaGhhc2hoYXNoaGFzaGhhc2hoYXNoaGFzaGhhc2g"
            )
            .is_err()
        );
    }

    #[test]
    fn grant_filters_need_whole_level_placeholders() {
        assert!(check_grant_filter("tele/%u/#").is_ok());
        assert!(check_grant_filter("a/x%u").is_err());
        assert!(check_grant_filter("a/#/b").is_err());
        assert!(check_grant_filter("$share/g/a").is_err());
        assert!(check_grant_filter("$SYS/#").is_ok());
    }

    #[test]
    fn networks_parse_and_classify() {
        assert!(parse_network("private").is_ok_and(|n| n.len() == 6));
        let lan = parse_network("192.168.1.0/24").unwrap();
        assert!(is_local_network(&lan[0]));
        let public = parse_network("8.8.8.0/24").unwrap();
        assert!(!is_local_network(&public[0]));
        assert!(parse_network("192.168.1.0/33").is_err());
        assert!(parse_network("lan").is_err());
        assert!(parse_network("10.1.2.3").is_ok_and(|n| n[0].prefix_len() == 32));
    }
}
