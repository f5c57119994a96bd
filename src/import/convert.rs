//! What each Mosquitto setting becomes in moat, and the report of what does not carry
//! over. The rules, in short (docs/import.md has them with the reasons):
//! - `allow_anonymous true` anywhere stops the import (moat has no anonymous access).
//! - The first TLS listener becomes `broker.listen.tls`, the first plain one
//!   `broker.listen.plain`, and every user who could log in on that plain listener
//!   gets `plaintext: true` (unless `tls_only`); WebSocket, extra and socket listeners
//!   are reported. Certificates are not carried: moat issues its own.
//! - Users keep their hashes. `topic`/`pattern` `read` becomes a subscribe grant,
//!   `write` a publish grant, `readwrite` both; patterns go to every user, `%u`/`%c`
//!   kept. Without an `acl_file` mosquitto lets every user do everything, and so does
//!   the Home Assistant add-on whose ACLs are not enforced: those users get `#`.
//! - moat has no deny rules: a grant that overlaps a `deny` line of the same user is
//!   left out (fail closed) and reported; a deny that overlaps no grant is redundant.
//! - ACL users without a password become certificate devices when a TLS listener
//!   names users by their certificate, and are reported otherwise.
//!
//! It writes nothing; the manifest text it returns has been loaded back through
//! `crate::manifest::parse_str`.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::ImportError;
use super::acl::{self, Access, AclFile, Rule, Subject};
use super::conf::{self, Conf, Listener, Security};
use super::passwd::{self, Entry};
use super::source::{Origin, Paths, split_key};
use crate::manifest::validate::{MQTT_MAX_PACKET_SIZE, check_grant_filter, check_name};
use crate::manifest::{LoadOptions, parse_str};
use crate::policy::Transport;

/// How to import.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Read absolute paths in the files under this directory (a copy of a container's
    /// or another machine's files).
    pub root: Option<PathBuf>,
    /// The Home Assistant add-on's options.json, for its `logins`.
    pub addon_options: Option<PathBuf>,
    /// Carry no plaintext listener and give nobody `plaintext: true`.
    pub tls_only: bool,
    /// How to name the manifest in validation errors.
    pub manifest_name: String,
}

/// One entry of the report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Note {
    /// `file:line` of the setting, when it has one.
    pub at: Option<String>,
    /// The setting, as written.
    pub item: String,
    pub reason: String,
}

/// What an import did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    /// The files read (configuration, password, ACL, add-on options), in order.
    pub files: Vec<String>,
    pub users: Vec<String>,
    pub devices: Vec<String>,
    /// Carried over, but not quite as it was: read these.
    pub changed: Vec<Note>,
    /// Not carried over, and why.
    pub not_carried: Vec<Note>,
}

impl Report {
    fn changed(&mut self, at: Option<&Origin>, item: impl Into<String>, reason: impl Into<String>) {
        self.changed.push(note(at, item, reason));
    }
    fn dropped(&mut self, at: Option<&Origin>, item: impl Into<String>, reason: impl Into<String>) {
        self.not_carried.push(note(at, item, reason));
    }
}

fn note(at: Option<&Origin>, item: impl Into<String>, reason: impl Into<String>) -> Note {
    Note {
        at: at.map(ToString::to_string),
        item: item.into(),
        reason: reason.into(),
    }
}

/// A validated manifest and the report.
#[derive(Debug, Clone)]
pub struct Imported {
    pub manifest: String,
    pub report: Report,
}

/// An identity on its way into the manifest.
struct Identity {
    name: String,
    origin: Origin,
    hash: Option<String>,
    certificate: bool,
    plaintext: bool,
    full_access: bool,
    publish: Vec<String>,
    subscribe: Vec<String>,
}

/// Imports the configuration at `conf_path`.
pub fn import(conf_path: &Path, options: &Options) -> Result<Imported, ImportError> {
    let paths = Paths {
        root: options.root.clone(),
    };
    let conf = conf::read(conf_path, &paths)?;
    let mut report = Report {
        files: conf.files.iter().map(|f| f.display().to_string()).collect(),
        ..Report::default()
    };
    for security in security_sets(&conf).into_iter().map(|(s, _)| s) {
        if let Some(anon) = &security.allow_anonymous
            && anon.value
        {
            return Err(ImportError::Anonymous {
                at: anon.origin.clone(),
            });
        }
    }
    let addon = options.addon_options.is_some() || uses_go_auth(&conf);
    let listeners = pick_listeners(&conf, options, &mut report);

    // Credentials, and which listeners each was good for.
    let mut identities: Vec<Identity> = Vec::new();
    let mut acl = AclFile::default();
    let mut acl_read: Vec<PathBuf> = Vec::new();
    let mut pw_read: BTreeMap<PathBuf, Vec<Entry>> = BTreeMap::new();
    // Names with a password line, usable or not (never turned into certificate
    // devices), and then ACL names already handled.
    let mut with_password: Vec<String> = Vec::new();
    for (security, on) in security_sets(&conf) {
        let plain_here = listeners
            .plain
            .is_some_and(|p| on.iter().any(|l| l.origin == p.origin));
        let unrestricted = security.acl_files.is_empty();
        for file in &security.acl_files {
            if !acl_read.contains(&file.value) {
                let parsed = acl::read(&file.value, &file.origin)?;
                acl.rules.extend(parsed.rules);
                acl.users.extend(parsed.users);
                acl_read.push(file.value.clone());
                report.files.push(file.value.display().to_string());
            }
        }
        for file in &security.password_files {
            if !pw_read.contains_key(&file.value) {
                let entries = passwd::read(&file.value, &file.origin)?;
                pw_read.insert(file.value.clone(), entries);
                report.files.push(file.value.display().to_string());
            }
            for entry in pw_read.get(&file.value).into_iter().flatten() {
                with_password.push(entry.name.clone());
                add_credential(&mut identities, entry, &mut report);
                if let Some(id) = identities.iter_mut().find(|i| i.name == entry.name) {
                    id.plaintext |= plain_here && !options.tls_only;
                    id.full_access |= unrestricted;
                }
            }
        }
    }
    if conf.per_listener_settings.as_ref().is_some_and(|p| p.value) && acl_read.len() > 1 {
        report.changed(
            conf.per_listener_settings.as_ref().map(|p| &p.origin),
            "per_listener_settings true",
            "moat has one set of rights per identity: the rules of every acl_file were merged",
        );
    }
    if let Some(path) = &options.addon_options {
        report.files.push(path.display().to_string());
        for entry in passwd::read_addon_logins(path)? {
            with_password.push(entry.name.clone());
            if let Some(old) = identities.iter().position(|i| i.name == entry.name) {
                identities.remove(old);
            }
            let plain = listeners.plain.is_some() && !options.tls_only;
            add_credential(&mut identities, &entry, &mut report);
            if let Some(id) = identities.iter_mut().find(|i| i.name == entry.name) {
                id.plaintext = plain;
            }
        }
    }

    // ACL users without a password: certificate devices, or nothing.
    let cert_names = listeners.tls.is_some_and(Listener::cert_identity);
    for (name, origin) in &acl.users {
        if with_password.contains(name) || identities.iter().any(|i| &i.name == name) {
            continue;
        }
        // Named again in another acl_file: reported once.
        with_password.push(name.clone());
        if cert_names {
            identities.push(Identity {
                name: name.clone(),
                origin: origin.clone(),
                hash: None,
                certificate: true,
                plaintext: false,
                full_access: false,
                publish: Vec::new(),
                subscribe: Vec::new(),
            });
            report.changed(
                Some(origin),
                format!("user {name}"),
                "logs in with its client certificate (use_identity_as_username): a device with certificate: true; `moat provision` issues it a new certificate from moat's CA, the old one is not accepted",
            );
        } else {
            report.dropped(
                Some(origin),
                format!("user {name}"),
                "is named in the acl_file but has no password in any password_file: moat needs a credential (add the user with `moat passwd NAME --write`)",
            );
        }
    }

    // Names moat refuses.
    identities.retain(|id| match check_name(&id.name) {
        Ok(()) => true,
        Err(e) => {
            report.dropped(Some(&id.origin), format!("user {:?}", id.name), e);
            false
        }
    });

    grant(&mut identities, &acl, addon, &mut report);
    let limits = limits(&conf, &listeners, &mut report);
    other_directives(&conf, &mut report);

    // The TLS listener is written out even when it is moat's default, so a plain
    // listener on its port is caught by validation now rather than at `serve`.
    let mut listen: Vec<(&'static str, String, u16)> = vec![match listeners.tls {
        Some(l) => ("tls", listen_address(l, &mut report), l.port),
        None => ("tls", "0.0.0.0".into(), Transport::Tls.default_port()),
    }];
    if let Some(l) = listeners.plain {
        listen.push(("plain", listen_address(l, &mut report), l.port));
    }
    let manifest = render(conf_path, &listen, &limits, &identities);
    let loaded = parse_str(&manifest, &options.manifest_name, LoadOptions::default())
        .map_err(|e| ImportError::Manifest(e.to_string()))?;
    for warning in loaded.warnings {
        report.changed(None, "manifest", warning.message);
    }
    for id in &identities {
        if id.certificate {
            report.devices.push(id.name.clone());
        } else {
            report.users.push(id.name.clone());
        }
    }
    Ok(Imported { manifest, report })
}

/// Every set of security settings with the listeners it governs.
fn security_sets(conf: &Conf) -> Vec<(&Security, Vec<&Listener>)> {
    let mut sets = vec![(&conf.security, conf.all_listeners().collect::<Vec<_>>())];
    for listener in conf.all_listeners() {
        sets.push((&listener.security, vec![listener]));
    }
    sets
}

fn uses_go_auth(conf: &Conf) -> bool {
    conf.other.iter().any(|l| {
        let (key, rest) = split_key(&l.text);
        matches!(key, "auth_plugin" | "plugin") && rest.contains("go-auth")
    })
}

fn add_credential(identities: &mut Vec<Identity>, entry: &Entry, report: &mut Report) {
    let item = format!("user {}", entry.name);
    match &entry.hash {
        Err(reason) => report.dropped(Some(&entry.origin), item, reason.clone()),
        Ok(_) if identities.iter().any(|i| i.name == entry.name) => report.dropped(
            Some(&entry.origin),
            item,
            "listed again; the first password was kept",
        ),
        Ok(hash) => identities.push(Identity {
            name: entry.name.clone(),
            origin: entry.origin.clone(),
            hash: Some(hash.clone()),
            certificate: false,
            plaintext: false,
            full_access: false,
            publish: Vec::new(),
            subscribe: Vec::new(),
        }),
    }
}

struct Picked<'c> {
    tls: Option<&'c Listener>,
    plain: Option<&'c Listener>,
}

fn listener_item(l: &Listener) -> String {
    match &l.address {
        Some(a) => format!("listener {} {a}", l.port),
        None => format!("listener {}", l.port),
    }
}

fn pick_listeners<'c>(conf: &'c Conf, options: &Options, report: &mut Report) -> Picked<'c> {
    let mut picked = Picked {
        tls: None,
        plain: None,
    };
    for l in conf.all_listeners() {
        let item = listener_item(l);
        let at = Some(&l.origin);
        if let Some(ws) = &l.websockets {
            report.dropped(
                Some(ws),
                format!("{item} (protocol websockets)"),
                "MQTT over WebSockets is not in moat yet; these clients must use MQTT over TLS",
            );
        } else if l.port == 0 || l.address.as_deref().is_some_and(|a| a.starts_with('/')) {
            report.dropped(at, item, "a Unix socket listener; moat listens on TCP only");
        } else if l.is_tls() {
            if picked.tls.is_none() {
                picked.tls = Some(l);
            } else {
                report.dropped(
                    at,
                    item,
                    "moat has one TLS listener; point these clients at it",
                );
            }
        } else if options.tls_only {
            report.dropped(at, item, "plaintext listener left out (--tls-only)");
        } else if picked.plain.is_none() {
            picked.plain = Some(l);
        } else {
            report.dropped(
                at,
                item,
                "moat has one plaintext listener; point these clients at it",
            );
        }
        for other in &l.other {
            let (key, _) = split_key(&other.text);
            report.dropped(Some(&other.origin), other.text.clone(), reason_for(key));
        }
    }
    if conf.all_listeners().next().is_none() {
        report.changed(
            None,
            "no listener",
            "mosquitto 2 without a listener serves localhost:1883 to anonymous clients; moat has no anonymous access and listens with TLS on 0.0.0.0:8883",
        );
    }
    match picked.tls {
        Some(t) => {
            report.changed(
                Some(&t.origin),
                listener_item(t),
                "kept as broker.listen.tls; its certfile/keyfile/cafile are not: moat serves a certificate from its own CA (`moat provision` writes <state>/ca.pem), so give clients the new CA (`moat export NAME`)",
            );
            if let Some(r) = t.require_certificate.as_ref().filter(|r| r.value) {
                report.changed(
                    Some(&r.origin),
                    "require_certificate true",
                    "moat asks password users for no client certificate; identities named by their certificate become devices with certificate: true",
                );
            }
        }
        None => report.changed(
            None,
            "broker.listen.tls",
            "mosquitto had no TLS listener; moat always runs one (0.0.0.0:8883)",
        ),
    }
    if let Some(p) = picked.plain {
        report.changed(
            Some(&p.origin),
            listener_item(p),
            "kept as broker.listen.plain, where only identities with plaintext: true may log in: the users who logged in there before got it. Move them to TLS, or import with --tls-only",
        );
    }
    picked
}

/// The manifest address of a listener: every interface when none was given.
fn listen_address(l: &Listener, report: &mut Report) -> String {
    match l.address.as_deref() {
        None => "0.0.0.0".into(),
        Some("localhost") => "127.0.0.1".into(),
        Some(a) if a.parse::<IpAddr>().is_ok() => a.into(),
        Some(a) => {
            report.changed(
                Some(&l.origin),
                listener_item(l),
                format!("{a:?} is not an IP address; moat listens on 0.0.0.0 (set broker.listen address by hand)"),
            );
            "0.0.0.0".into()
        }
    }
}

/// Fills every identity's grants from the ACL (or gives full access where mosquitto did).
fn grant(identities: &mut [Identity], acl: &AclFile, addon: bool, report: &mut Report) {
    for rule in acl.rules.iter().filter(|r| r.subject == Subject::Anonymous) {
        report.dropped(
            Some(&rule.origin),
            rule.describe(),
            "comes before any `user` line, so it applies to anonymous clients; moat has none",
        );
    }
    // Patterns are checked once; a bad one is reported once, not per user.
    let mut patterns: Vec<&Rule> = Vec::new();
    for rule in acl.rules.iter().filter(|r| r.subject == Subject::Pattern) {
        match check_grant_filter(&rule.topic) {
            Err(e) if rule.access != Access::Deny => {
                report.dropped(Some(&rule.origin), rule.describe(), e)
            }
            _ => patterns.push(rule),
        }
    }
    let mut used_denies: Vec<&Origin> = Vec::new();
    for id in identities.iter_mut() {
        let own: Vec<&Rule> = acl
            .rules
            .iter()
            .filter(|r| r.subject == Subject::User(id.name.clone()))
            .collect();
        if id.full_access || (addon && own.is_empty() && !id.certificate) {
            id.publish = vec!["#".into()];
            id.subscribe = vec!["#".into()];
            let why = if id.full_access {
                "no acl_file applied to it, so mosquitto let it publish and subscribe everything"
            } else {
                "the Home Assistant add-on does not enforce ACLs (home-assistant/addons#4721), so it could publish and subscribe everything"
            };
            report.changed(
                Some(&id.origin),
                format!("user {}", id.name),
                format!("{why}: granted `#` both ways (which in moat does not cover $SYS). Narrow it, e.g. with a built-in role (docs/manifest.md)"),
            );
            continue;
        }
        let denies: Vec<&Rule> = own
            .iter()
            .chain(patterns.iter())
            .copied()
            .filter(|r| r.access == Access::Deny)
            .collect();
        for rule in own.iter().chain(patterns.iter()).copied() {
            if rule.access == Access::Deny {
                continue;
            }
            let item = format!("{} (user {})", rule.describe(), id.name);
            if rule.subject != Subject::Pattern {
                if rule.topic.contains("%u") || rule.topic.contains("%c") {
                    report.dropped(Some(&rule.origin), item, "mosquitto takes %u/%c in a `topic` line literally and moat would substitute them; write a `pattern` line if substitution was meant");
                    continue;
                }
                if let Err(e) = check_grant_filter(&rule.topic) {
                    report.dropped(Some(&rule.origin), item, e);
                    continue;
                }
            }
            let mine = substitute(&rule.topic, &id.name);
            if let Some(deny) = denies
                .iter()
                .find(|d| filters_intersect(&mine, &substitute(&d.topic, &id.name)))
            {
                used_denies.push(&deny.origin);
                report.dropped(
                    Some(&rule.origin),
                    item,
                    format!(
                        "overlaps `{}` ({}); moat has no deny rules, so this grant is left out to stay closed: grant the topics it should cover without the denied ones",
                        deny.describe(),
                        deny.origin
                    ),
                );
                continue;
            }
            if rule.access.reads() {
                push_unique(&mut id.subscribe, &rule.topic);
            }
            if rule.access.writes() {
                push_unique(&mut id.publish, &rule.topic);
            }
        }
        if id.publish.is_empty() && id.subscribe.is_empty() {
            report.changed(
                Some(&id.origin),
                format!("user {}", id.name),
                "no grant carried over: it may log in but publish and subscribe nothing",
            );
        }
    }
    // Only a user with narrower read rules than `#` can notice the difference.
    if identities
        .iter()
        .any(|id| id.subscribe.iter().any(|f| f != "#"))
    {
        report.changed(
            None,
            "read rules",
            "mosquitto 2.0 accepts a subscription wider than a user's read rules and drops each message they do not allow; moat refuses a subscription its grants do not cover (a failure code in the SUBACK, logged and counted): clients must subscribe to what they were granted",
        );
    }
    for deny in acl.rules.iter().filter(|r| r.access == Access::Deny) {
        if !used_denies.contains(&&deny.origin) {
            report.changed(
                Some(&deny.origin),
                deny.describe(),
                "not needed: it overlaps no grant, and moat denies whatever is not granted",
            );
        }
    }
}

fn push_unique(list: &mut Vec<String>, filter: &str) {
    if !list.iter().any(|f| f == filter) {
        list.push(filter.to_string());
    }
}

/// `%u` becomes the name; `%c` (unknown until a client connects) and any level with a
/// placeholder inside it become `+`, so an overlap test errs towards "overlaps".
fn substitute(filter: &str, name: &str) -> String {
    filter
        .split('/')
        .map(|level| match level {
            "%u" => name,
            l if l.contains("%u") || l.contains("%c") => "+",
            l => l,
        })
        .collect::<Vec<_>>()
        .join("/")
}

/// Whether some topic matches both filters (`#` and `+` never match a `$` first level).
pub fn filters_intersect(a: &str, b: &str) -> bool {
    let a: Vec<&str> = a.split('/').collect();
    let b: Vec<&str> = b.split('/').collect();
    let dollar = |f: &[&str]| f.first().is_some_and(|l| l.starts_with('$'));
    let wild = |f: &[&str]| f.first().is_some_and(|l| *l == "+" || *l == "#");
    if (dollar(&a) && wild(&b)) || (dollar(&b) && wild(&a)) {
        return false;
    }
    let mut i = 0;
    loop {
        match (a.get(i), b.get(i)) {
            (Some(&"#"), _) | (_, Some(&"#")) | (None, None) => return true,
            (None, Some(_)) | (Some(_), None) => return false,
            (Some(x), Some(y)) => {
                if *x != "+" && *y != "+" && x != y {
                    return false;
                }
            }
        }
        i += 1;
    }
}

/// `broker.limits` entries (name, YAML value) from mosquitto's limits.
fn limits(conf: &Conf, listeners: &Picked, report: &mut Report) -> Vec<(&'static str, u64)> {
    let mut out: Vec<(&'static str, u64)> = Vec::new();
    let mut set = |key: &'static str, value: u64| {
        out.retain(|(k, _)| *k != key);
        out.push((key, value));
    };
    let declared: Vec<_> = [listeners.tls, listeners.plain]
        .into_iter()
        .flatten()
        .filter_map(|l| l.max_connections.as_ref())
        .collect();
    for m in declared.iter().filter(|m| m.value <= 0) {
        report.dropped(
            Some(&m.origin),
            format!("max_connections {}", m.value),
            "unlimited in mosquitto; moat keeps its bounded default (broker.limits.max_connections)",
        );
    }
    let connections = declared
        .into_iter()
        .filter(|m| m.value > 0)
        .max_by_key(|m| m.value);
    if let Some(m) = connections {
        set("max_connections", m.value.unsigned_abs());
        report.changed(
            Some(&m.origin),
            format!("max_connections {}", m.value),
            "moat counts connections across its listeners: this is broker.limits.max_connections",
        );
    }
    for limit in &conf.limits {
        let (key, value) = (&limit.value.0, limit.value.1);
        let item = format!("{key} {value}");
        let at = Some(&limit.origin);
        let (moat_key, range): (&'static str, (i64, i64)) = match key.as_str() {
            "max_inflight_messages" => ("max_inflight", (1, 65_535)),
            "max_queued_messages" => ("max_queued_messages", (1, i64::MAX)),
            "max_queued_bytes" => ("max_queued_bytes", (1024, i64::from(u32::MAX))),
            "max_packet_size" => ("max_packet_size", (128, MQTT_MAX_PACKET_SIZE as i64)),
            _ => ("max_keepalive", (1, 65_535)),
        };
        if value <= 0 {
            report.dropped(at, item, format!("0 means unlimited in mosquitto; moat keeps its bounded default for {moat_key} (docs/manifest.md)"));
        } else if value < range.0 || value > range.1 {
            report.dropped(
                at,
                item,
                format!(
                    "moat's {moat_key} must be between {} and {}; its default stays",
                    range.0, range.1
                ),
            );
        } else {
            set(moat_key, value.unsigned_abs());
            if moat_key == "max_packet_size" && value < 65_536 {
                // The pre-authentication cap (64 KiB by default) may not exceed it.
                set("max_packet_size_before_auth", value.unsigned_abs());
            }
        }
    }
    out
}

/// Reports every directive moat has no place for, with the reason.
fn other_directives(conf: &Conf, report: &mut Report) {
    for line in &conf.other {
        let (key, rest) = split_key(&line.text);
        let reason = if key == "auth_opt_backends" && rest.contains("http") {
            "the add-on's HTTP backend logs in Home Assistant users through the Supervisor; moat cannot ask it: give those clients users (or add-on logins) and import again".to_string()
        } else {
            reason_for(key)
        };
        report.dropped(Some(&line.origin), line.text.clone(), reason);
    }
}

const PERSISTENCE_KEYS: &[&str] = &[
    "persistence",
    "persistence_file",
    "persistence_location",
    "autosave_interval",
    "autosave_on_changes",
    "persistent_client_expiration",
];
const LOG_KEYS: &[&str] = &[
    "log_dest",
    "log_type",
    "log_timestamp",
    "log_timestamp_format",
    "log_facility",
    "connection_messages",
    "websockets_log_level",
];
const BRIDGE_KEYS: &[&str] = &[
    "connection",
    "address",
    "addresses",
    "topic",
    "cleansession",
    "clientid",
    "keepalive_interval",
    "idle_timeout",
    "local_clientid",
    "local_password",
    "local_username",
    "notifications",
    "notifications_local_only",
    "notification_topic",
    "remote_clientid",
    "remote_password",
    "remote_username",
    "restart_timeout",
    "round_robin",
    "start_type",
    "threshold",
    "try_private",
];
const OTHER_MOSQUITTO_KEYS: &[&str] = &[
    "allow_duplicate_messages",
    "allow_zero_length_clientid",
    "auto_id_prefix",
    "check_retain_source",
    "max_inflight_bytes",
    "max_qos",
    "max_topic_alias",
    "memory_limit",
    "message_size_limit",
    "queue_qos0_messages",
    "retain_available",
    "set_tcp_nodelay",
    "sys_interval",
    "upgrade_outgoing_qos",
];

fn reason_for(key: &str) -> String {
    let text = if PERSISTENCE_KEYS.contains(&key) {
        "moat always keeps retained messages and sessions in its own database (broker.persistence); mosquitto's are not migrated"
    } else if LOG_KEYS.contains(&key) {
        "moat logs to stderr (the journal under systemd); `RUST_LOG` sets the level"
    } else if matches!(key, "user" | "pid_file") {
        "not needed: the service manager runs moat as its own user (`moat serve --pid-file` writes a PID file)"
    } else if key.starts_with("bridge_") || BRIDGE_KEYS.contains(&key) {
        "bridges are not imported"
    } else if key.starts_with("auth_opt_")
        || key.starts_with("plugin_opt_")
        || matches!(
            key,
            "auth_plugin" | "plugin" | "auth_plugin_deny_special_chars"
        )
    {
        "moat has no plugins; users and rights come from the manifest"
    } else if matches!(key, "psk_file" | "psk_hint") {
        "moat has no TLS-PSK; give these clients users or certificates"
    } else if key == "clientid_prefixes" {
        "moat cannot require client id prefixes; rights follow the user name (and %c in grants)"
    } else if key == "mount_point" {
        "moat has no mount points: topics are used as the client sends them, so grants that relied on the prefix must be rewritten"
    } else if key == "message_size_limit" {
        "moat limits whole packets: broker.limits.max_packet_size"
    } else if OTHER_MOSQUITTO_KEYS.contains(&key) {
        "moat has no such setting; its behaviour here is fixed or bounded by default (docs/manifest.md)"
    } else if key.starts_with("tls_")
        || matches!(
            key,
            "capath" | "ciphers" | "ciphers_tls1.3" | "crlfile" | "dhparamfile"
        )
    {
        "moat's TLS settings are fixed (TLS 1.2 and 1.3, rustls' safe defaults)"
    } else if matches!(
        key,
        "bind_interface"
            | "socket_domain"
            | "http_dir"
            | "websockets_headers_size"
            | "use_username_as_clientid"
    ) {
        "moat has no such listener setting"
    } else {
        "unknown directive: not in mosquitto.conf(5), so mosquitto would not start with it either"
    };
    text.to_string()
}

/// A YAML double-quoted scalar (JSON string syntax is valid YAML).
fn quoted(text: &str) -> String {
    serde_json::Value::String(text.to_string()).to_string()
}

fn flow_list(items: &[String]) -> String {
    let parts: Vec<String> = items.iter().map(|i| quoted(i)).collect();
    format!("[{}]", parts.join(", "))
}

fn render(
    conf_path: &Path,
    listen: &[(&'static str, String, u16)],
    limits: &[(&'static str, u64)],
    identities: &[Identity],
) -> String {
    let mut out = format!(
        "# Imported from {} by `moat import mosquitto`.\n# The import printed what it could not carry over; `moat check` shows who may do what.\nversion: 1\n",
        quoted(&conf_path.display().to_string())
    );
    out.push_str("broker:\n  listen:\n");
    for (kind, address, port) in listen {
        out.push_str(&format!(
            "    {kind}: {{ address: {}, port: {port} }}\n",
            quoted(address)
        ));
    }
    if !limits.is_empty() {
        out.push_str("  limits:\n");
        for (key, value) in limits {
            out.push_str(&format!("    {key}: {value}\n"));
        }
    }
    for (section, devices) in [("users", false), ("devices", true)] {
        let members: Vec<&Identity> = identities
            .iter()
            .filter(|i| i.certificate == devices)
            .collect();
        if members.is_empty() {
            continue;
        }
        out.push_str(&format!("{section}:\n"));
        for id in members {
            out.push_str(&format!("  {}:\n", quoted(&id.name)));
            if let Some(hash) = &id.hash {
                out.push_str(&format!("    password_hash: {}\n", quoted(hash)));
            }
            if id.certificate {
                out.push_str("    certificate: true\n");
            }
            if id.plaintext {
                out.push_str("    plaintext: true\n");
            }
            if !id.publish.is_empty() {
                out.push_str(&format!("    publish: {}\n", flow_list(&id.publish)));
            }
            if !id.subscribe.is_empty() {
                out.push_str(&format!("    subscribe: {}\n", flow_list(&id.subscribe)));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filter_overlap() {
        for (a, b, want) in [
            ("#", "secret/x", true),
            ("a/+/c", "a/b/#", true),
            ("a/b", "a/b/#", true),
            ("a/b", "a/c", false),
            ("a/b", "a/b/c", false),
            ("+/b", "a/+", true),
            ("#", "$SYS/#", false),
            ("$SYS/#", "$SYS/broker", true),
            ("+/x", "$SYS/x", false),
        ] {
            assert_eq!(filters_intersect(a, b), want, "{a} vs {b}");
            assert_eq!(filters_intersect(b, a), want, "{b} vs {a}");
        }
    }

    #[test]
    fn placeholders_substitute_for_the_overlap_test() {
        assert_eq!(substitute("u/%u/#", "bob"), "u/bob/#");
        assert_eq!(substitute("c/%c/x-%u", "bob"), "c/+/+");
    }
}

#[cfg(test)]
mod import_tests {
    use super::*;

    const ALICE_7: &str = "$7$101$r2g/pSyJleQUWIvt$oroAVLKjIe8ZXwOMSC0+boOsyNTxwi4EL772Qnd261Y0ru25kc2yCJ41/GxDez4mzurcYBMjsXqFDvO+Lp14TA==";

    /// Writes `files` into a temp dir and imports its `mosquitto.conf`.
    fn run(files: &[(&str, &str)]) -> (tempfile::TempDir, Result<Imported, ImportError>) {
        let dir = tempfile::tempdir().unwrap();
        for (name, text) in files {
            std::fs::write(dir.path().join(name), text).unwrap();
        }
        let options = Options {
            manifest_name: "moat.yaml".into(),
            ..Options::default()
        };
        let result = import(&dir.path().join("mosquitto.conf"), &options);
        (dir, result)
    }

    fn items(notes: &[Note]) -> String {
        notes
            .iter()
            .map(|n| {
                format!(
                    "{} | {} | {}",
                    n.at.clone().unwrap_or_default(),
                    n.item,
                    n.reason
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    #[test]
    fn users_grants_patterns_denies_and_anonymous_rules() {
        let pw = format!("alice:{ALICE_7}\nbob:{ALICE_7}\nbad/name:{ALICE_7}\n");
        let (_d, result) = run(&[
            (
                "mosquitto.conf",
                "listener 1883 127.0.0.1\npassword_file pw\nacl_file acl\nlistener 8883\ncertfile c.pem\nkeyfile k.pem\nfrobnicate 1\n",
            ),
            ("pw", &pw),
            (
                "acl",
                "topic read public/#\nuser alice\ntopic read a/#\ntopic write a/cmd\ntopic deny a/secret\ntopic x/%u\nuser bob\ntopic readwrite b/#\ntopic deny c/#\npattern readwrite u/%u/#\npattern write bad/x%u\n",
            ),
        ]);
        let imported = result.unwrap();
        let yaml = &imported.manifest;
        let r = &imported.report;
        assert_eq!(r.users, ["alice", "bob"]);
        assert!(
            yaml.contains("tls: { address: \"0.0.0.0\", port: 8883 }"),
            "{yaml}"
        );
        assert!(
            yaml.contains("plain: { address: \"127.0.0.1\", port: 1883 }"),
            "{yaml}"
        );
        // alice: a/# overlaps her deny, so only the write and the pattern remain.
        assert!(
            yaml.contains("  \"alice\":\n    password_hash: \"$7$101$"),
            "{yaml}"
        );
        assert!(
            yaml.contains("publish: [\"a/cmd\", \"u/%u/#\"]\n    subscribe: [\"u/%u/#\"]"),
            "{yaml}"
        );
        assert!(
            yaml.contains("publish: [\"b/#\", \"u/%u/#\"]\n    subscribe: [\"b/#\", \"u/%u/#\"]"),
            "{yaml}"
        );
        let dropped = items(&r.not_carried);
        for needle in [
            "acl:1 | topic read public/# | comes before any `user` line",
            "acl:3 | topic read a/# (user alice) | overlaps `topic deny a/secret` (",
            "acl:6 | topic readwrite x/%u (user alice) | mosquitto takes %u/%c",
            "acl:11 | pattern write bad/x%u |",
            "pw:3 | user \"bad/name\" |",
            "mosquitto.conf:7 | frobnicate 1 | unknown directive",
        ] {
            assert!(dropped.contains(needle), "{needle} missing:\n{dropped}");
        }
        let changed = items(&r.changed);
        assert!(
            changed.contains("acl:9 | topic deny c/# | not needed"),
            "{changed}"
        );
        assert!(
            changed.contains("listener 8883 | kept as broker.listen.tls"),
            "{changed}"
        );
    }

    #[test]
    fn no_acl_file_means_full_access_and_limits_carry() {
        let (_d, result) = run(&[
            (
                "mosquitto.conf",
                "listener 1883\nmax_connections 40\npassword_file pw\nmax_queued_messages 8192\nmax_packet_size 1000\nmax_inflight_messages 0\n",
            ),
            ("pw", &format!("alice:{ALICE_7}\n")),
        ]);
        let imported = result.unwrap();
        let yaml = &imported.manifest;
        assert!(
            yaml.contains("publish: [\"#\"]\n    subscribe: [\"#\"]"),
            "{yaml}"
        );
        assert!(yaml.contains("plaintext: true"), "{yaml}");
        for limit in [
            "max_connections: 40",
            "max_queued_messages: 8192",
            "max_packet_size: 1000",
            "max_packet_size_before_auth: 1000",
        ] {
            assert!(yaml.contains(limit), "{limit}: {yaml}");
        }
        let dropped = items(&imported.report.not_carried);
        assert!(
            dropped.contains("max_inflight_messages 0 | 0 means unlimited"),
            "{dropped}"
        );
        assert!(items(&imported.report.changed).contains("no acl_file applied"));
    }

    #[test]
    fn tls_only_and_certificate_devices() {
        let (_d, result) = run(&[
            (
                "mosquitto.conf",
                "per_listener_settings true\nlistener 1883\npassword_file pw\nlistener 8883\ncertfile c\nkeyfile k\nrequire_certificate true\nuse_identity_as_username true\nacl_file acl\n",
            ),
            ("pw", &format!("alice:{ALICE_7}\nlamp:plaintext-pass\n")),
            (
                "acl",
                "user cam\ntopic write cam/state\nuser alice\ntopic read cam/#\nuser lamp\ntopic write lamp/x\n",
            ),
        ]);
        let imported = result.unwrap();
        let yaml = &imported.manifest;
        // lamp's password line is unusable (reported); it does not become a device.
        assert_eq!(imported.report.devices, ["cam"]);
        assert!(items(&imported.report.not_carried).contains("pw:2 | user lamp | not a hash"));
        assert!(
            yaml.contains(
                "devices:\n  \"cam\":\n    certificate: true\n    publish: [\"cam/state\"]"
            ),
            "{yaml}"
        );
        // alice's password file belongs to the plain listener, which has no acl_file.
        assert!(yaml.contains("plaintext: true"), "{yaml}");

        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("mosquitto.conf"),
            "listener 1883\npassword_file pw\n",
        )
        .unwrap();
        std::fs::write(dir.path().join("pw"), format!("alice:{ALICE_7}\n")).unwrap();
        let options = Options {
            tls_only: true,
            manifest_name: "m".into(),
            ..Options::default()
        };
        let imported = import(&dir.path().join("mosquitto.conf"), &options).unwrap();
        assert!(
            !imported.manifest.contains("plain"),
            "{}",
            imported.manifest
        );
    }

    #[test]
    fn unlimited_connections_are_reported_not_dropped_silently() {
        let (_d, result) = run(&[
            (
                "mosquitto.conf",
                "listener 1883\nmax_connections -1\npassword_file pw\n",
            ),
            ("pw", &format!("alice:{ALICE_7}\n")),
        ]);
        let imported = result.unwrap();
        let dropped = items(&imported.report.not_carried);
        assert!(
            dropped.contains("mosquitto.conf:2 | max_connections -1 | unlimited"),
            "{dropped}"
        );
        assert!(!imported.manifest.contains("max_connections"));
    }

    #[test]
    fn a_manifest_moat_would_refuse_is_an_error() {
        // No TLS listener, so moat's goes to 8883, where the plain one already is.
        let (_d, result) = run(&[("mosquitto.conf", "listener 8883\n")]);
        let err = result.unwrap_err().to_string();
        assert!(err.contains("does not validate"), "{err}");
        assert!(err.contains("cannot share port 8883"), "{err}");
    }

    #[test]
    fn anonymous_is_refused_per_listener_too() {
        let (_d, result) = run(&[(
            "mosquitto.conf",
            "per_listener_settings true\nlistener 1883\nallow_anonymous false\nlistener 1884\nallow_anonymous true\n",
        )]);
        let err = result.unwrap_err().to_string();
        assert!(
            err.contains("mosquitto.conf:5: allow_anonymous true"),
            "{err}"
        );
        assert!(err.contains("mosquitto_passwd"), "{err}");
    }

    #[test]
    fn missing_password_file_names_the_line() {
        let (_d, result) = run(&[("mosquitto.conf", "listener 1883\n\npassword_file nope\n")]);
        let err = result.unwrap_err().to_string();
        assert!(
            err.contains("mosquitto.conf:3: cannot read password file"),
            "{err}"
        );
    }
}
