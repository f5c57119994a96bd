//! Weak passwords, where doctor can tell without knowing them. For a stored hash it
//! tries the identity's own name and the [`VERIFIED_CANDIDATES`] most common passwords
//! (argon2 costs tens of milliseconds per try, so the work is bounded per identity);
//! for a `password_file` it reads the secret (if it may) and compares it with the whole
//! list and the name directly. Also: argon2 parameters below OWASP's minimums (WARN)
//! and imported mosquitto hashes (WARN: cheap to brute-force). A match is a FAIL.

use std::io::Read as _;
use std::path::Path;

use super::Finding;
use crate::auth::verify::{HashKind, hash_kind};
use crate::auth::{argon2_cost, verify_password};
use crate::policy::{Credential, Identity, Policy};

const CHECK: &str = "passwords";
/// How many of [`COMMON_PASSWORDS`] are tried against each stored hash.
pub const VERIFIED_CANDIDATES: usize = 20;
/// Largest password file read.
const MAX_SECRET_LEN: u64 = 4096;

/// Common passwords, most common first (from public breach-frequency lists), plus the
/// names smart-home guides use as examples.
pub const COMMON_PASSWORDS: &[&str] = &[
    "123456",
    "password",
    "12345678",
    "qwerty",
    "123456789",
    "12345",
    "1234",
    "111111",
    "1234567",
    "admin",
    "mqtt",
    "123123",
    "abc123",
    "password1",
    "1234567890",
    "000000",
    "mosquitto",
    "homeassistant",
    "letmein",
    "changeme",
    "iloveyou",
    "qwerty123",
    "welcome",
    "monkey",
    "dragon",
    "654321",
    "666666",
    "123321",
    "1q2w3e4r",
    "qwertyuiop",
    "secret",
    "master",
    "sunshine",
    "princess",
    "football",
    "baseball",
    "shadow",
    "superman",
    "michael",
    "passw0rd",
    "trustno1",
    "121212",
    "7777777",
    "987654321",
    "zaq12wsx",
    "asdfgh",
    "asdfghjkl",
    "1qaz2wsx",
    "qazwsx",
    "password123",
    "admin123",
    "root",
    "toor",
    "test",
    "test123",
    "guest",
    "user",
    "default",
    "pass",
    "hello",
    "login",
    "starwars",
    "whatever",
    "freedom",
    "killer",
    "hunter2",
    "charlie",
    "jordan",
    "batman",
    "access",
    "ninja",
    "mustang",
    "flower",
    "lovely",
    "solo",
    "pa55word",
    "p@ssw0rd",
    "Password1",
    "Passw0rd!",
    "Welcome1",
    "raspberry",
    "raspberrypi",
    "pi",
    "tasmota",
    "zigbee2mqtt",
    "esphome",
    "nodered",
    "openhab",
    "shelly",
    "hass",
    "smarthome",
    "home",
    "homeauto",
    "broker",
    "iot",
    "sensor",
    "device",
    "12341234",
    "11111111",
    "88888888",
    "00000000",
    "abcd1234",
    "q1w2e3r4",
];

/// The OWASP argon2id minimums: any one (m KiB, t) pair, both met, is enough.
const OWASP_ARGON2: &[(u32, u32)] = &[
    (47_104, 1),
    (19_456, 2),
    (12_288, 3),
    (9_216, 4),
    (7_168, 5),
];

/// Whether `(m, t)` meets one of OWASP's argon2id configurations.
pub fn meets_owasp(m: u32, t: u32) -> bool {
    OWASP_ARGON2
        .iter()
        .any(|&(min_m, min_t)| m >= min_m && t >= min_t)
}

/// The first weak candidate that `stored` verifies, trying the name first.
pub fn weak_match_for_hash(name: &str, stored: &str) -> Option<String> {
    std::iter::once(name)
        .chain(COMMON_PASSWORDS.iter().copied().take(VERIFIED_CANDIDATES))
        .find(|candidate| verify_password(stored, candidate.as_bytes()) == Ok(true))
        .map(describe_candidate(name))
}

/// The weak candidate equal to a plaintext secret, if any (name, or the whole list).
pub fn weak_match_for_secret(name: &str, secret: &[u8]) -> Option<String> {
    std::iter::once(name)
        .chain(COMMON_PASSWORDS.iter().copied())
        .find(|candidate| candidate.as_bytes() == secret)
        .map(describe_candidate(name))
}

fn describe_candidate(name: &str) -> impl Fn(&str) -> String + '_ {
    move |candidate| {
        if candidate == name {
            "equal to the username".to_owned()
        } else {
            "on the list of the most common passwords".to_owned()
        }
    }
}

fn read_secret(path: &Path) -> Option<zeroize::Zeroizing<Vec<u8>>> {
    let file = std::fs::File::open(path).ok()?;
    let mut secret = zeroize::Zeroizing::new(Vec::new());
    file.take(MAX_SECRET_LEN).read_to_end(&mut secret).ok()?;
    // One trailing newline is not part of the secret (as for `password_file` itself).
    if secret.last() == Some(&b'\n') {
        secret.pop();
        if secret.last() == Some(&b'\r') {
            secret.pop();
        }
    }
    Some(secret)
}

fn judge_hash(identity: &Identity, stored: &str, findings: &mut Vec<Finding>) {
    let name = &identity.name;
    match hash_kind(stored) {
        Some(HashKind::MosquittoPbkdf2 | HashKind::MosquittoSha512) => {
            findings.push(Finding::warn(
                CHECK,
                format!("{name} uses an imported mosquitto hash (fast to brute-force)"),
                format!("set a new password: `moat passwd {name} --write`"),
            ))
        }
        Some(HashKind::Argon2id) => {
            if let Some((m, t)) = argon2_cost(stored)
                && !meets_owasp(m, t)
            {
                findings.push(Finding::warn(
                    CHECK,
                    format!("{name}'s argon2 parameters (m={m} KiB, t={t}) are below OWASP's minimum (m=19456, t=2)"),
                    format!("re-hash it: `moat passwd {name} --write`"),
                ));
            }
        }
        None => {}
    }
    if let Some(why) = weak_match_for_hash(name, stored) {
        findings.push(Finding::fail(
            CHECK,
            format!("{name}'s password is {why}"),
            format!(
                "set a strong one: `moat passwd {name} --write` (generates 24 random characters)"
            ),
        ));
    }
}

pub fn check(policy: &Policy) -> Vec<Finding> {
    let mut findings = Vec::new();
    let mut checked = 0usize;
    for identity in policy.identities() {
        match &identity.credential {
            Credential::PasswordHash(stored) => {
                checked += 1;
                judge_hash(identity, stored, &mut findings);
            }
            Credential::PasswordFile(path) => {
                let Some(secret) = read_secret(path) else {
                    continue;
                };
                checked += 1;
                if let Some(why) = weak_match_for_secret(&identity.name, &secret) {
                    findings.push(Finding::fail(
                        CHECK,
                        format!(
                            "{}'s password in {} is {why}",
                            identity.name,
                            path.display()
                        ),
                        format!(
                            "write a strong secret to {} (e.g. `moat passwd {}` prints one)",
                            path.display(),
                            identity.name
                        ),
                    ));
                }
            }
            Credential::Certificate => {}
        }
    }
    if findings.is_empty() {
        findings.push(Finding::pass(
            CHECK,
            format!(
                "{checked} password(s) checked: none equals its username or a common password, all hashes argon2id at OWASP strength"
            ),
        ));
    }
    findings
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::hash_password;
    use crate::doctor::Status;
    use crate::manifest::{LoadOptions, parse_str};

    fn policy_with(name: &str, hash: &str) -> Policy {
        let text = format!(
            "version: 1\nusers:\n  {name}:\n    password_hash: \"{hash}\"\n    publish: [\"x/1\"]\n"
        );
        let loaded = parse_str(&text, "t.yaml", LoadOptions::default()).unwrap();
        Policy::compile(&loaded.manifest).unwrap()
    }

    #[test]
    fn the_list_is_long_and_has_no_duplicates() {
        assert!(COMMON_PASSWORDS.len() >= 100, "{}", COMMON_PASSWORDS.len());
        let mut sorted = COMMON_PASSWORDS.to_vec();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), COMMON_PASSWORDS.len());
    }

    #[test]
    fn username_as_password_and_common_passwords_fail() {
        let p = policy_with("bob", &hash_password(b"bob").unwrap());
        let findings = check(&p);
        assert_eq!(findings[0].status, Status::Fail);
        assert!(findings[0].message.contains("equal to the username"));

        let p = policy_with("bob", &hash_password(b"mqtt").unwrap());
        let findings = check(&p);
        assert_eq!(findings[0].status, Status::Fail);
        assert!(findings[0].message.contains("most common"));
    }

    #[test]
    fn a_strong_password_passes() {
        let p = policy_with("bob", &hash_password(b"v3ry-l0ng-and-r4ndom-pw").unwrap());
        let findings = check(&p);
        assert_eq!(findings.len(), 1);
        assert_eq!(findings[0].status, Status::Pass);
    }

    #[test]
    fn owasp_parameters() {
        let owasp_hash = "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaGhhc2hoYXNoaGFzaGhhc2g";
        assert_eq!(argon2_cost(owasp_hash), Some((19_456, 2)));
        // What login refuses is not judged here (`moat check` reports it).
        assert_eq!(
            argon2_cost("$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA"),
            None
        );
        assert_eq!(argon2_cost("$7$101$c2FsdA$aGFzaA"), None);
        assert!(meets_owasp(19_456, 2));
        assert!(meets_owasp(47_104, 1));
        assert!(meets_owasp(7_168, 5));
        assert!(!meets_owasp(19_456, 1));
        assert!(!meets_owasp(4_096, 3));
    }

    #[test]
    fn weak_argon2_parameters_warn() {
        use argon2::password_hash::PasswordHasher;
        let params = argon2::Params::new(4096, 1, 1, None).unwrap();
        let hasher =
            argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
        let hash = hasher
            .hash_password(b"long-random-password-here")
            .unwrap()
            .to_string();
        let findings = check(&policy_with("bob", &hash));
        assert_eq!(findings[0].status, Status::Warn, "{findings:?}");
        assert!(findings[0].message.contains("below OWASP"));
    }

    #[test]
    fn plaintext_secret_files_are_compared_directly() {
        assert!(weak_match_for_secret("bob", b"bob").is_some());
        assert!(
            weak_match_for_secret("bob", b"q1w2e3r4").is_some(),
            "the whole list is used"
        );
        assert!(weak_match_for_secret("bob", b"something-else-entirely").is_none());
    }
}
