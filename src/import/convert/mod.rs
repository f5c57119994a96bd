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
//!
//! By job: `listeners` (which listeners carry over), `grants` (ACL lines to
//! grants, deny overlaps), `settings` (limits and the directives that do not carry
//! over, with the reasons) and `render` (the manifest text).

mod grants;
mod listeners;
mod render;
mod settings;
#[cfg(test)]
mod tests;

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
use grants::grant;
use listeners::{listen_address, pick_listeners};
use render::render;
use settings::{limits, other_directives};

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
pub(super) fn security_sets(conf: &Conf) -> Vec<(&Security, Vec<&Listener>)> {
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
