//! One compiled identity (user or device): its credential, ACL built from roles and
//! its own grants (each grant naming its origin), and its limits with role and
//! identity overrides resolved. Broker-wide limits come in from `limits`.

use crate::acl::{Acl, Grant};
use crate::manifest::roles::{self, Preset};
use crate::manifest::schema::{IdentityLimitsSpec, IdentitySpec, Manifest};

use super::limits::{Limits, to_u32, to_usize};
use std::path::PathBuf;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdentityKind {
    User,
    Device,
}

impl IdentityKind {
    pub fn as_str(self) -> &'static str {
        match self {
            IdentityKind::User => "user",
            IdentityKind::Device => "device",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credential {
    /// An argon2id PHC string, or an imported mosquitto `$7$`/`$6$` hash.
    PasswordHash(String),
    /// A file holding the password (hashed by `provision`).
    PasswordFile(PathBuf),
    /// A client certificate issued by `provision`.
    Certificate,
}

impl Credential {
    pub fn kind(&self) -> &'static str {
        match self {
            Credential::PasswordHash(_) => "password_hash",
            Credential::PasswordFile(_) => "password_file",
            Credential::Certificate => "certificate",
        }
    }
}

/// One user or device, ready for the broker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub name: String,
    pub kind: IdentityKind,
    pub credential: Credential,
    /// May use the plaintext listener.
    pub plaintext: bool,
    /// May publish retained messages.
    pub may_retain: bool,
    pub acl: Acl,
    pub max_queued_messages: usize,
    pub max_queued_bytes: usize,
    /// Never larger than the broker-wide `Limits::max_packet_size`.
    pub max_packet_size: u32,
    /// This identity's share of the retained store (messages).
    pub max_retained_messages: usize,
    /// Subscriptions per client of this identity (may exceed the broker default:
    /// a hub subscribes once per entity).
    pub max_subscriptions: usize,
    /// Role names, in manifest order.
    pub roles: Vec<String>,
}

/// Per-identity limit overrides gathered from one role or the identity itself.
#[derive(Default, Clone, Copy)]
struct Overrides {
    queued_messages: Option<usize>,
    queued_bytes: Option<usize>,
    packet_size: Option<u32>,
    retained_messages: Option<usize>,
    subscriptions: Option<usize>,
}

impl Overrides {
    fn from_spec(spec: Option<&IdentityLimitsSpec>) -> Self {
        let Some(s) = spec else {
            return Overrides::default();
        };
        Overrides {
            queued_messages: s.max_queued_messages.as_ref().map(|v| to_usize(v.value)),
            queued_bytes: s.max_queued_bytes.as_ref().map(|v| to_usize(v.value.0)),
            packet_size: s.max_packet_size.as_ref().map(|v| to_u32(v.value.0)),
            retained_messages: s.max_retained_messages.as_ref().map(|v| to_usize(v.value)),
            subscriptions: s.max_subscriptions.as_ref().map(|v| to_usize(v.value)),
        }
    }

    fn from_preset(p: &Preset) -> Self {
        Overrides {
            queued_messages: p.max_queued_messages,
            queued_bytes: p.max_queued_bytes,
            packet_size: p.max_packet_size,
            retained_messages: None,
            subscriptions: p.max_subscriptions,
        }
    }

    /// The larger of two roles' values: roles add capacity, they never take it away.
    fn widen(self, other: Overrides) -> Overrides {
        fn max<T: Ord>(a: Option<T>, b: Option<T>) -> Option<T> {
            match (a, b) {
                (Some(a), Some(b)) => Some(a.max(b)),
                (a, b) => a.or(b),
            }
        }
        Overrides {
            queued_messages: max(self.queued_messages, other.queued_messages),
            queued_bytes: max(self.queued_bytes, other.queued_bytes),
            packet_size: max(self.packet_size, other.packet_size),
            retained_messages: max(self.retained_messages, other.retained_messages),
            subscriptions: max(self.subscriptions, other.subscriptions),
        }
    }

    /// `self` (the identity's own values) wins over `roles`.
    fn over(self, roles: Overrides) -> Overrides {
        Overrides {
            queued_messages: self.queued_messages.or(roles.queued_messages),
            queued_bytes: self.queued_bytes.or(roles.queued_bytes),
            packet_size: self.packet_size.or(roles.packet_size),
            retained_messages: self.retained_messages.or(roles.retained_messages),
            subscriptions: self.subscriptions.or(roles.subscriptions),
        }
    }
}

pub(super) fn compile_identity(
    manifest: &Manifest,
    limits: &Limits,
    section: &str,
    kind: IdentityKind,
    name: &str,
    spec: &IdentitySpec,
) -> Identity {
    let mut acl = Acl::new();
    let mut role_overrides = Overrides::default();
    let mut role_retain: Vec<bool> = Vec::new();
    let role_names: Vec<String> = spec.role_names().iter().map(|r| r.value.clone()).collect();
    for role in &role_names {
        if let Some(p) = roles::preset(role) {
            for f in p.publish {
                acl.allow_publish(Grant::new(
                    *f,
                    format!("role {role} (built-in): publish {f}"),
                ));
            }
            for f in p.subscribe {
                acl.allow_subscribe(Grant::new(
                    *f,
                    format!("role {role} (built-in): subscribe {f}"),
                ));
            }
            role_overrides = role_overrides.widen(Overrides::from_preset(p));
            role_retain.push(p.retain);
        } else if let Some(r) = manifest.roles.get(role) {
            for (i, f) in r.publish.iter().enumerate() {
                acl.allow_publish(Grant::new(
                    f.value.clone(),
                    format!(
                        "roles.{role}.publish[{i}] (line {}): {}",
                        f.referenced.line(),
                        f.value
                    ),
                ));
            }
            for (i, f) in r.subscribe.iter().enumerate() {
                acl.allow_subscribe(Grant::new(
                    f.value.clone(),
                    format!(
                        "roles.{role}.subscribe[{i}] (line {}): {}",
                        f.referenced.line(),
                        f.value
                    ),
                ));
            }
            role_overrides = role_overrides.widen(Overrides::from_spec(r.limits.as_ref()));
            if let Some(retain) = &r.retain {
                role_retain.push(retain.value);
            }
        }
    }
    for (i, f) in spec.publish.iter().enumerate() {
        acl.allow_publish(Grant::new(
            f.value.clone(),
            format!(
                "{section}.{name}.publish[{i}] (line {}): {}",
                f.referenced.line(),
                f.value
            ),
        ));
    }
    for (i, f) in spec.subscribe.iter().enumerate() {
        acl.allow_subscribe(Grant::new(
            f.value.clone(),
            format!(
                "{section}.{name}.subscribe[{i}] (line {}): {}",
                f.referenced.line(),
                f.value
            ),
        ));
    }
    let resolved = Overrides::from_spec(spec.limits.as_ref()).over(role_overrides);
    // The identity's own `retain:` wins; otherwise any role that allows retaining
    // allows it; roles that all say false forbid it; no opinion at all means true.
    let may_retain = match &spec.retain {
        Some(r) => r.value,
        None => role_retain.is_empty() || role_retain.contains(&true),
    };
    let credential = if let Some(h) = &spec.password_hash {
        Credential::PasswordHash(h.value.clone())
    } else if let Some(f) = &spec.password_file {
        Credential::PasswordFile(f.value.clone())
    } else {
        // Validation guarantees exactly one credential; certificate is what is left.
        Credential::Certificate
    };
    Identity {
        name: name.to_string(),
        kind,
        credential,
        plaintext: spec.plaintext.as_ref().is_some_and(|p| p.value),
        may_retain,
        acl,
        max_queued_messages: resolved
            .queued_messages
            .unwrap_or(limits.max_queued_messages),
        max_queued_bytes: resolved.queued_bytes.unwrap_or(limits.max_queued_bytes),
        max_packet_size: resolved
            .packet_size
            .unwrap_or(limits.max_packet_size)
            .min(limits.max_packet_size),
        max_retained_messages: resolved
            .retained_messages
            .unwrap_or(limits.broker.max_retained_messages)
            .min(limits.broker.max_retained_messages),
        max_subscriptions: resolved
            .subscriptions
            .unwrap_or(limits.broker.max_subscriptions),
        roles: role_names,
    }
}
