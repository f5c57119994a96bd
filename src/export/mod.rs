//! Client settings for one identity: where to connect (the names in the server
//! certificate, the TLS port, the plaintext port only for `plaintext: true`
//! identities), which CA file to trust, the username and credential kind, the topics
//! the identity may use, and for the known roles a snippet to paste (Home Assistant,
//! Zigbee2MQTT, Tasmota, ESPHome, Shelly). It reads the compiled policy and public
//! files of the state directory; it never prints a password or a private key (a
//! certificate device is told where its key file is, never its content).
//!
//! The per-client snippets are in `snippets`.

mod snippets;
#[cfg(test)]
mod tests;

use std::fmt::Write as _;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::pki::{self, PkiError, SubjectName};
use crate::policy::{Credential, Identity, Policy};
use crate::provision;

pub use snippets::tasmota_backlog;
use snippets::{esphome, home_assistant, shelly, tasmota, zigbee2mqtt};

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("no user or device named {0:?} in the manifest")]
    UnknownIdentity(String),
    #[error(transparent)]
    Pki(#[from] PkiError),
}

/// What a client needs to connect as one identity.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ClientSettings {
    pub name: String,
    /// `user` or `device`.
    pub kind: &'static str,
    pub roles: Vec<String>,
    /// Names and addresses the server certificate covers, most useful first.
    pub hosts: Vec<String>,
    pub tls_port: u16,
    /// Only for identities allowed on the plaintext listener.
    pub plain_port: Option<u16>,
    /// The CA certificate to trust.
    pub ca_file: PathBuf,
    pub username: String,
    /// `password_hash`, `password_file` or `certificate`.
    pub credential: &'static str,
    /// For certificate devices: the bundle (the key file is secret; copy it, never share it).
    pub client_certificate: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
    /// Topic filters this identity may publish to / subscribe to (`%u` filled in).
    pub publish: Vec<String>,
    pub subscribe: Vec<String>,
    pub may_retain: bool,
    /// Tasmota's SHA-1 fingerprint of the RSA server key, when there is one.
    pub tasmota_fingerprint: Option<String>,
    /// Ready-to-paste settings for the known client software of this identity's roles.
    pub snippets: Vec<Snippet>,
}

/// Settings in one client's own format.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Snippet {
    /// `homeassistant`, `zigbee2mqtt`, `tasmota`, `esphome` or `shelly`.
    pub client: &'static str,
    pub title: &'static str,
    pub text: String,
}

/// The names a client can reach the broker by and verify: the server certificate's
/// names without the loopback ones (kept only when nothing else is there).
pub fn broker_hosts(policy: &Policy) -> Result<Vec<String>, PkiError> {
    let names = pki::subject_names(&provision::plan(policy))?;
    let shown = |n: &SubjectName| match n {
        SubjectName::Dns(d) => d.clone(),
        SubjectName::Ip(ip) => ip.to_string(),
    };
    let is_loopback = |n: &SubjectName| match n {
        SubjectName::Dns(d) => d == "localhost",
        SubjectName::Ip(ip) => ip.is_loopback(),
    };
    let lan: Vec<String> = names
        .iter()
        .filter(|n| !is_loopback(n))
        .map(shown)
        .collect();
    Ok(if lan.is_empty() {
        names.iter().map(shown).collect()
    } else {
        lan
    })
}

/// Settings for `name`. `ca_file` is where the client finds the CA certificate
/// (default: `<state>/ca.pem`).
pub fn client_settings(
    policy: &Policy,
    state: &Path,
    name: &str,
    ca_file: Option<&Path>,
) -> Result<ClientSettings, ExportError> {
    let identity = policy
        .identity(name)
        .ok_or_else(|| ExportError::UnknownIdentity(name.to_string()))?;
    let hosts = broker_hosts(policy)?;
    let ca_file = ca_file.map_or_else(|| state.join(pki::CA_CERT), Path::to_path_buf);
    let certificate = identity.credential == Credential::Certificate;
    let bundle = pki::device_bundle_dir(state, name);
    let plain_port = policy
        .listen_plain()
        .filter(|_| identity.plaintext)
        .map(|a| a.port());
    let fill = |pattern: &str| {
        pattern
            .split('/')
            .map(|level| if level == "%u" { name } else { level })
            .collect::<Vec<_>>()
            .join("/")
    };
    let mut settings = ClientSettings {
        name: name.to_string(),
        kind: identity.kind.as_str(),
        roles: identity.roles.clone(),
        hosts,
        tls_port: policy.listen_tls().port(),
        plain_port,
        ca_file,
        username: name.to_string(),
        credential: identity.credential.kind(),
        client_certificate: certificate.then(|| bundle.join("cert.pem")),
        client_key: certificate.then(|| bundle.join("key.pem")),
        publish: identity
            .acl
            .publish_grants()
            .iter()
            .map(|g| fill(&g.pattern))
            .collect(),
        subscribe: identity
            .acl
            .subscribe_grants()
            .iter()
            .map(|g| fill(&g.pattern))
            .collect(),
        may_retain: identity.may_retain,
        tasmota_fingerprint: pki::rsa_fingerprint_sha1(state)?,
        snippets: Vec::new(),
    };
    settings.snippets = snippets(&settings, identity, state);
    Ok(settings)
}

fn password_note(name: &str) -> String {
    format!("the password you set with `moat passwd {name}` (or put in moat.yaml on the card)")
}

fn snippets(s: &ClientSettings, identity: &Identity, state: &Path) -> Vec<Snippet> {
    let mut out = Vec::new();
    for role in &identity.roles {
        let snippet = match role.as_str() {
            "homeassistant" | "homeassistant-strict" => home_assistant(s),
            "zigbee2mqtt" => zigbee2mqtt(s),
            "tasmota" => tasmota(s),
            "esphome" => esphome(s, state),
            "shelly" => shelly(s),
            _ => continue,
        };
        if !out.iter().any(|o: &Snippet| o.client == snippet.client) {
            out.push(snippet);
        }
    }
    out
}

fn host(s: &ClientSettings) -> &str {
    s.hosts.first().map_or("localhost", String::as_str)
}

/// A host for a URL: IPv6 literals in brackets.
fn url_host(s: &ClientSettings) -> String {
    match host(s).parse::<IpAddr>() {
        Ok(IpAddr::V6(v6)) => format!("[{v6}]"),
        _ => host(s).to_string(),
    }
}

fn ca_name(s: &ClientSettings) -> String {
    s.ca_file.file_name().map_or_else(
        || s.ca_file.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    )
}

/// The other names and addresses, for a note under the one a snippet uses.
fn covered_note(s: &ClientSettings) -> String {
    format!(
        "the certificate covers only {}: use one of them, nothing else",
        s.hosts.join(", ")
    )
}

/// The human-readable form `moat export NAME` prints.
pub fn render(s: &ClientSettings) -> String {
    let mut t = String::new();
    let roles = if s.roles.is_empty() {
        String::new()
    } else {
        format!(" (roles: {})", s.roles.join(", "))
    };
    let _ = writeln!(t, "{} {}{roles}", s.kind, s.name);
    let _ = writeln!(t, "  host:      {}", host(s));
    if s.hosts.len() > 1 {
        let _ = writeln!(t, "  also:      {}", s.hosts[1..].join(", "));
    }
    let _ = writeln!(t, "  port:      {} (TLS)", s.tls_port);
    if let Some(port) = s.plain_port {
        let _ = writeln!(t, "  plain:     {port} (no TLS; this identity only)");
    }
    let _ = writeln!(t, "  CA file:   {}", s.ca_file.display());
    let _ = writeln!(t, "  username:  {}", s.username);
    match (&s.client_certificate, &s.client_key) {
        (Some(cert), Some(key)) => {
            let _ = writeln!(t, "  client certificate: {}", cert.display());
            let _ = writeln!(t, "  client key:         {} (secret)", key.display());
        }
        _ if s.credential == "password_file" => {
            let _ = writeln!(t, "  password:  the content of its password_file");
        }
        _ => {
            let _ = writeln!(t, "  password:  {}", password_note(&s.name));
        }
    }
    let list = |v: &[String]| {
        if v.is_empty() {
            "(nothing)".to_string()
        } else {
            v.join(" ")
        }
    };
    let _ = writeln!(t, "  publish:   {}", list(&s.publish));
    let _ = writeln!(t, "  subscribe: {}", list(&s.subscribe));
    let _ = writeln!(
        t,
        "  retain:    {}",
        if s.may_retain { "allowed" } else { "no" }
    );
    if let Some(fingerprint) = &s.tasmota_fingerprint
        && s.roles.iter().any(|r| r == "tasmota")
    {
        let _ = writeln!(t, "  RSA key fingerprint (Tasmota): {fingerprint}");
    }
    for snippet in &s.snippets {
        let _ = writeln!(t, "\n{}\n{}", snippet.title, snippet.text.trim_end());
    }
    t
}
