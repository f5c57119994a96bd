//! Validation of `roles:`, `users:` and `devices:`: grant filters, role references,
//! exactly one credential per identity, and per-identity limit overrides.

use super::broker::{PACKET_BYTES, STORE_BYTES, at_least_one, size_in};
use super::{Collector, Finding, Severity, check_grant_filter, check_name, classify_hash};
use crate::auth::HashKind;
use crate::manifest::load::LoadOptions;
use crate::manifest::roles;
use crate::manifest::schema::{IdentityLimitsSpec, IdentitySpec, Manifest, RoleSpec, Spanned};

fn validate_identity_limits(c: &mut Collector, l: &IdentityLimitsSpec) {
    at_least_one(c, "max_queued_messages", &l.max_queued_messages);
    at_least_one(c, "max_retained_messages", &l.max_retained_messages);
    at_least_one(c, "max_subscriptions", &l.max_subscriptions);
    size_in(c, "max_queued_bytes", &l.max_queued_bytes, STORE_BYTES);
    size_in(c, "max_packet_size", &l.max_packet_size, PACKET_BYTES);
}

fn validate_filters(c: &mut Collector, filters: &[Spanned<String>]) {
    for filter in filters {
        if let Err(e) = check_grant_filter(&filter.value) {
            c.error(filter, e);
        }
    }
}

pub(super) fn validate_roles(c: &mut Collector, m: &Manifest) {
    for (name, role) in m.roles.iter() {
        if let Err(e) = check_name(&name.value) {
            c.error(name, format!("roles: {e}"));
        }
        if roles::preset(&name.value).is_some() {
            c.error(
                name,
                format!(
                    "role {:?} is built in; give your own role another name",
                    name.value
                ),
            );
        }
        let RoleSpec {
            publish,
            subscribe,
            retain: _,
            limits,
        } = role;
        validate_filters(c, publish);
        validate_filters(c, subscribe);
        if let Some(l) = limits {
            validate_identity_limits(c, l);
        }
    }
}

/// Validates one identity; returns its `plaintext: true` node if it has one.
pub(super) fn validate_identity<'m>(
    c: &mut Collector,
    m: &Manifest,
    section: &str,
    name: &Spanned<String>,
    spec: &'m IdentitySpec,
    options: LoadOptions,
) -> Option<&'m Spanned<bool>> {
    let who = format!("{section}.{}", name.value);
    if let (Some(_), Some(list)) = (&spec.role, &spec.roles) {
        c.error(list, format!("{who}: use either role: or roles:, not both"));
    }
    for role in spec.role_names() {
        if roles::preset(&role.value).is_none() && !m.roles.contains(&role.value) {
            let builtin: Vec<&str> = roles::PRESETS.iter().map(|p| p.name).collect();
            c.error(
                role,
                format!(
                    "{who}: role {:?} is not defined under roles: and is not built in ({})",
                    role.value,
                    builtin.join(", ")
                ),
            );
        }
    }
    // Credentials: exactly one.
    let mut credentials: Vec<(u64, u64)> = Vec::new();
    let location = |l: &serde_saphyr::Location| (l.line(), l.column());
    if let Some(h) = &spec.password_hash {
        credentials.push(location(&h.referenced));
    }
    if let Some(f) = &spec.password_file {
        credentials.push(location(&f.referenced));
    }
    if let Some(cert) = spec.certificate.as_ref().filter(|c| c.value) {
        credentials.push(location(&cert.referenced));
    }
    if let Some(p) = &spec.password {
        if options.allow_plaintext_passwords {
            credentials.push(location(&p.referenced));
        } else {
            c.error(
                p,
                format!(
                    "{who}: a plaintext password: does not belong in the manifest; run `moat passwd {} --write` to store an argon2id hash instead",
                    name.value
                ),
            );
        }
    }
    let refused_plaintext = spec.password.is_some() && !options.allow_plaintext_passwords;
    match credentials.len() {
        0 if !refused_plaintext => c.error(
            name,
            format!("{who} has no credential: give it exactly one of password_hash, password_file or certificate: true"),
        ),
        0 | 1 => {}
        _ => {
            let (line, column) = credentials[1];
            c.findings.push(Finding {
                severity: Severity::Error,
                line: line.max(1),
                column: column.max(1),
                message: format!(
                    "{who} has more than one credential: keep exactly one of password_hash, password_file, certificate: true{}",
                    if options.allow_plaintext_passwords { ", password" } else { "" }
                ),
            });
        }
    }
    if let Some(h) = &spec.password_hash {
        match classify_hash(&h.value) {
            Err(e) => c.error(h, format!("{who}: {e}")),
            Ok(HashKind::Argon2id) => {}
            Ok(HashKind::MosquittoPbkdf2) => c.warn(
                h,
                format!("{who}: imported mosquitto PBKDF2-SHA512 hash; it works, but replace it with `moat passwd {} --write` (argon2id)", name.value),
            ),
            Ok(HashKind::MosquittoSha512) => c.warn(
                h,
                format!("{who}: imported mosquitto $6$ (salted SHA-512) hash is weak; replace it with `moat passwd {} --write` soon", name.value),
            ),
        }
    }
    if let Some(f) = &spec.password_file
        && !f.value.is_absolute()
    {
        c.error(f, format!("{who}: password_file must be an absolute path"));
    }
    if let Some(p) = &spec.password
        && options.allow_plaintext_passwords
        && p.value.is_empty()
    {
        c.error(p, format!("{who}: password cannot be empty"));
    }
    validate_filters(c, &spec.publish);
    validate_filters(c, &spec.subscribe);
    if let Some(l) = &spec.limits {
        validate_identity_limits(c, l);
    }
    if spec.role_names().is_empty() && spec.publish.is_empty() && spec.subscribe.is_empty() {
        c.warn(
            name,
            format!(
                "{who} has no role and no grants: it may connect but publish and subscribe nothing"
            ),
        );
    }
    let plaintext = spec.plaintext.as_ref().filter(|p| p.value);
    if let (Some(p), Some(cert)) = (plaintext, &spec.certificate)
        && cert.value
    {
        c.error(
                p,
                format!("{who}: a certificate identity authenticates over TLS and cannot use the plaintext listener"),
            );
    }
    plaintext
}
