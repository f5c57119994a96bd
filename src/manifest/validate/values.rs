//! Rules for single values, with no manifest context: identity and role names,
//! password hashes (login's own parser decides, see `auth::check_stored_hash`), grant
//! filters and hostnames. Each returns the reason a value is refused.

use std::net::IpAddr;

use super::MAX_NAME_LEN;
use crate::auth::{HashKind, VerifyError, check_stored_hash};
use moat_protocol::topic::{parse_shared, validate_topic_filter};

/// Recognises a password hash, or says why it is refused. The well-formedness and
/// cost ceilings are login's own (`auth::check_stored_hash`), so `moat check`
/// refuses exactly what login would; this adds the advice for schemes moat never
/// accepts.
pub fn classify_hash(hash: &str) -> Result<HashKind, String> {
    let scheme = hash
        .strip_prefix('$')
        .and_then(|rest| rest.split('$').next());
    match scheme {
        Some("argon2id" | "7" | "6") => check_stored_hash(hash).map_err(|e| match e {
            VerifyError::Malformed(why) => format!("malformed password hash: {why}"),
            other => other.to_string(),
        }),
        Some("argon2i" | "argon2d") => Err(
            "only argon2id hashes are accepted (argon2i and argon2d are weaker against side channels or GPUs); run `moat passwd NAME --write`".into(),
        ),
        Some(scheme) if !scheme.is_empty() => Err(format!(
            "unsupported password hash scheme ${scheme}$: moat accepts argon2id (`moat passwd`) and imported mosquitto $7$/$6$ hashes"
        )),
        _ => Err(
            "this is not a password hash: expected an argon2id PHC string from `moat passwd`".into(),
        ),
    }
}

/// Whether `name` may name a user, device or role: `[A-Za-z0-9._-]{1,64}`, starting
/// with a letter or digit (so no `.`/`..` path parts and nothing that looks like a
/// flag). Returns the reason when not.
pub fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("a name cannot be empty".into());
    }
    if name.len() > MAX_NAME_LEN {
        return Err(format!(
            "name is {} bytes long; the limit is {MAX_NAME_LEN}",
            name.len()
        ));
    }
    if let Some(bad) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(format!(
            "name {name:?} contains {bad:?}; names may use only A-Z a-z 0-9 . _ - (so they can never inject + # / $ into a %u pattern)"
        ));
    }
    if !name.starts_with(|c: char| c.is_ascii_alphanumeric()) {
        return Err(format!("name {name:?} must start with a letter or a digit"));
    }
    Ok(())
}

/// Checks a grant filter: a valid MQTT filter, `%u`/`%c` only as whole levels, and no
/// `$share/` prefix (requests have theirs stripped before they are checked).
pub fn check_grant_filter(filter: &str) -> Result<(), String> {
    validate_topic_filter(filter).map_err(|e| format!("invalid topic filter {filter:?}: {e}"))?;
    if matches!(parse_shared(filter), Ok(Some(_))) {
        return Err(format!(
            "grant {filter:?} has a $share/ prefix; grant the plain filter (a shared subscription is checked without its $share/<group>/ prefix)"
        ));
    }
    for level in filter.split('/') {
        if (level.contains("%u") || level.contains("%c")) && level != "%u" && level != "%c" {
            return Err(format!(
                "in {filter:?}, %u and %c must fill a whole topic level (level {level:?})"
            ));
        }
    }
    Ok(())
}

pub(super) fn check_hostname(host: &str) -> Result<(), String> {
    if host.parse::<IpAddr>().is_ok() {
        return Err(format!(
            "{host:?} is an address; list it under broker.addresses"
        ));
    }
    let host = host.strip_suffix('.').unwrap_or(host);
    if host.is_empty() || host.len() > 253 {
        return Err(format!("hostname {host:?} must be 1 to 253 characters"));
    }
    for label in host.split('.') {
        let ok = !label.is_empty()
            && label.len() <= 63
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !label.starts_with('-')
            && !label.ends_with('-');
        if !ok {
            return Err(format!(
                "hostname {host:?} is not a valid DNS name (label {label:?})"
            ));
        }
    }
    Ok(())
}
