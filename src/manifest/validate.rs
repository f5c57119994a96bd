//! Validation of a parsed manifest: names, credentials, topic filters, roles,
//! networks, listeners and limits. It collects every finding (errors and warnings)
//! with the line and column of the offending node; it never stops at the first one.
//! It decides what is allowed, not how the broker uses it (that is `crate::policy`).

use std::net::IpAddr;

use ipnet::IpNet;

use super::load::LoadOptions;
use super::roles;
use super::schema::{
    ByteSize, DurabilitySpec, IdentityLimitsSpec, IdentitySpec, LimitsSpec, Manifest, RoleSpec,
    Seconds, Spanned, Transport,
};
use crate::auth::{HashKind, VerifyError, check_stored_hash};
use crate::protocol::topic::{parse_shared, validate_topic_filter};

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

/// The named network sets that `broker.networks` accepts, and what they contain.
pub const NAMED_NETWORKS: &[(&str, &[&str])] = &[
    ("loopback", &["127.0.0.0/8", "::1/128"]),
    (
        "private",
        &[
            "10.0.0.0/8",
            "172.16.0.0/12",
            "192.168.0.0/16",
            "169.254.0.0/16",
            "fc00::/7",
            "fe80::/10",
        ],
    ),
    ("link_local", &["169.254.0.0/16", "fe80::/10"]),
    ("ula", &["fc00::/7"]),
];

/// The networks used when `broker.networks` is absent.
pub const DEFAULT_NETWORKS: &[&str] = &["loopback", "private"];

/// The CIDRs of a named set, or `None` if `name` is not one.
pub fn named_network(name: &str) -> Option<Vec<IpNet>> {
    NAMED_NETWORKS
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, cidrs)| cidrs.iter().filter_map(|c| c.parse().ok()).collect())
}

/// Parses one `broker.networks` entry: a named set, a CIDR, or a single address.
pub fn parse_network(entry: &str) -> Result<Vec<IpNet>, String> {
    if let Some(set) = named_network(entry) {
        return Ok(set);
    }
    if let Ok(net) = entry.parse::<IpNet>() {
        return Ok(vec![net.trunc()]);
    }
    if let Ok(ip) = entry.parse::<IpAddr>() {
        return Ok(vec![IpNet::from(ip)]);
    }
    let names: Vec<&str> = NAMED_NETWORKS.iter().map(|(n, _)| *n).collect();
    Err(format!(
        "network {entry:?} is neither a named set ({}) nor a CIDR such as 192.168.1.0/24",
        names.join(", ")
    ))
}

/// Whether a CIDR lies entirely inside loopback, private, link-local or ULA space.
pub fn is_local_network(net: &IpNet) -> bool {
    NAMED_NETWORKS
        .iter()
        .flat_map(|(_, cidrs)| cidrs.iter())
        .filter_map(|c| c.parse::<IpNet>().ok())
        .any(|local| local.contains(net))
}

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
    validate_roles(&mut c, manifest);
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

fn validate_broker(c: &mut Collector, m: &Manifest) {
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

fn check_hostname(host: &str) -> Result<(), String> {
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

fn at_least_one(c: &mut Collector, field: &str, value: &Option<Spanned<u64>>) {
    if let Some(v) = value
        && v.value == 0
    {
        c.error(v, format!("{field} must be at least 1"));
    }
}

fn size_in(c: &mut Collector, field: &str, value: &Option<Spanned<ByteSize>>, min: u64, max: u64) {
    if let Some(v) = value
        && (v.value.0 < min || v.value.0 > max)
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
    size_in(
        c,
        "max_packet_size",
        &l.max_packet_size,
        128,
        MQTT_MAX_PACKET_SIZE,
    );
    size_in(
        c,
        "max_packet_size_before_auth",
        &l.max_packet_size_before_auth,
        128,
        MQTT_MAX_PACKET_SIZE,
    );
    size_in(
        c,
        "max_queued_bytes",
        &l.max_queued_bytes,
        1024,
        u64::from(u32::MAX),
    );
    size_in(
        c,
        "max_retained_bytes",
        &l.max_retained_bytes,
        1024,
        u64::from(u32::MAX),
    );
    size_in(
        c,
        "max_user_property_bytes",
        &l.max_user_property_bytes,
        0,
        1 << 24,
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

fn validate_identity_limits(c: &mut Collector, l: &IdentityLimitsSpec) {
    at_least_one(c, "max_queued_messages", &l.max_queued_messages);
    at_least_one(c, "max_retained_messages", &l.max_retained_messages);
    at_least_one(c, "max_subscriptions", &l.max_subscriptions);
    size_in(
        c,
        "max_queued_bytes",
        &l.max_queued_bytes,
        1024,
        u64::from(u32::MAX),
    );
    size_in(
        c,
        "max_packet_size",
        &l.max_packet_size,
        128,
        MQTT_MAX_PACKET_SIZE,
    );
}

fn validate_filters(c: &mut Collector, filters: &[Spanned<String>]) {
    for filter in filters {
        if let Err(e) = check_grant_filter(&filter.value) {
            c.error(filter, e);
        }
    }
}

fn validate_roles(c: &mut Collector, m: &Manifest) {
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
fn validate_identity<'m>(
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

#[cfg(test)]
mod tests {
    use super::*;

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
