//! `bridges:` in the manifest: the serde shapes of an outbound bridge to a remote
//! broker (address, TLS, credentials, topic mappings, queue) and their validation
//! with line and column. It decides what a bridge may be, never how one runs
//! (`crate::bridge`); it refuses plaintext to anything but loopback, a bridge
//! without credentials, and topic mappings that would carry the same topic both
//! ways under the same name.

use std::net::IpAddr;
use std::path::PathBuf;

use serde::Deserialize;

use super::schema::{ByteSize, Manifest, Seconds, Spanned};
use super::validate::{Finding, Severity, check_name};
use moat_protocol::topic::{parse_shared, validate_topic_filter};

/// One bridge under `bridges:`, keyed by its name.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BridgeSpec {
    /// Host name or IP address of the remote broker.
    pub address: Spanned<String>,
    /// Default 8883 (TLS), 1883 with `plaintext: true`.
    #[serde(default)]
    pub port: Option<Spanned<u16>>,
    #[serde(default)]
    pub tls: Option<Spanned<BridgeTlsSpec>>,
    /// No TLS: allowed only to a loopback address (a broker on this host).
    #[serde(default)]
    pub plaintext: Option<Spanned<bool>>,
    #[serde(default)]
    pub username: Option<Spanned<String>>,
    /// A file holding the password for `username` (read at start, never logged).
    #[serde(default)]
    pub password_file: Option<Spanned<PathBuf>>,
    /// A client certificate for the remote (its own PEM files, not moat's CA).
    #[serde(default)]
    pub certificate: Option<Spanned<ClientCertificateSpec>>,
    /// Client id at the remote; default `moat-<bridge name>`.
    #[serde(default)]
    pub client_id: Option<Spanned<String>>,
    /// Default 60 s.
    #[serde(default)]
    pub keepalive: Option<Spanned<Seconds>>,
    /// Start a fresh remote session at each connect; default false (the remote
    /// keeps the bridge's subscriptions and queues `in` messages while it is away).
    #[serde(default)]
    pub clean_start: Option<Spanned<bool>>,
    /// How long the remote keeps the session after a disconnect; default 1 h.
    #[serde(default)]
    pub session_expiry: Option<Spanned<Seconds>>,
    /// Bounds of the outbound queue kept while the remote is away.
    #[serde(default)]
    pub queue: Option<BridgeQueueSpec>,
    pub topics: Spanned<Vec<Spanned<TopicMappingSpec>>>,
}

/// `tls:` of a bridge: whom to trust, and the name to check.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BridgeTlsSpec {
    /// PEM file with the CA(s) that sign the remote's certificate.
    #[serde(default)]
    pub ca_file: Option<Spanned<PathBuf>>,
    /// Trust the operating system's CA bundle instead (a public cloud broker).
    #[serde(default)]
    pub system_roots: Option<Spanned<bool>>,
    /// Name checked against the remote's certificate; default `address`.
    #[serde(default)]
    pub server_name: Option<Spanned<String>>,
}

/// `certificate:` of a bridge.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientCertificateSpec {
    pub cert_file: Spanned<PathBuf>,
    pub key_file: Spanned<PathBuf>,
}

/// `queue:` of a bridge.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BridgeQueueSpec {
    #[serde(default)]
    pub max_messages: Option<Spanned<u64>>,
    #[serde(default)]
    pub max_bytes: Option<Spanned<ByteSize>>,
}

/// Which way a mapping carries messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// Remote to local.
    In,
    /// Local to remote.
    Out,
    Both,
}

impl Direction {
    pub fn carries_in(self) -> bool {
        matches!(self, Direction::In | Direction::Both)
    }
    pub fn carries_out(self) -> bool {
        matches!(self, Direction::Out | Direction::Both)
    }
}

/// One entry of `topics:`: `topic` under `local_prefix` here is `topic` under
/// `remote_prefix` there (as in Mosquitto's `topic` bridge line).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopicMappingSpec {
    pub topic: Spanned<String>,
    pub direction: Spanned<Direction>,
    #[serde(default)]
    pub local_prefix: Option<Spanned<String>>,
    #[serde(default)]
    pub remote_prefix: Option<Spanned<String>>,
    /// 0 or 1 (default 1): the most the bridge asks for on either side.
    #[serde(default)]
    pub qos: Option<Spanned<u8>>,
    /// Carry the retain flag as published (default true); false clears it.
    #[serde(default)]
    pub retain: Option<Spanned<bool>>,
}

impl TopicMappingSpec {
    pub fn local_prefix(&self) -> &str {
        self.local_prefix.as_ref().map_or("", |p| p.value.as_str())
    }
    pub fn remote_prefix(&self) -> &str {
        self.remote_prefix.as_ref().map_or("", |p| p.value.as_str())
    }
    /// The filter on this broker.
    pub fn local_filter(&self) -> String {
        format!("{}{}", self.local_prefix(), self.topic.value)
    }
    /// The filter on the remote broker.
    pub fn remote_filter(&self) -> String {
        format!("{}{}", self.remote_prefix(), self.topic.value)
    }
}

/// Most messages one bridge's queue may hold.
pub const MAX_QUEUE_MESSAGES: u64 = 1_000_000;

struct Findings(Vec<Finding>);

impl Findings {
    fn error<T>(&mut self, at: &Spanned<T>, message: impl Into<String>) {
        self.0.push(Finding {
            severity: Severity::Error,
            line: at.referenced.line().max(1),
            column: at.referenced.column().max(1),
            message: message.into(),
        });
    }
}

/// Validates every bridge; returns the errors found.
pub fn validate(manifest: &Manifest) -> Vec<Finding> {
    let mut f = Findings(Vec::new());
    let mut client_ids: Vec<String> = Vec::new();
    for (name, spec) in manifest.bridges.iter() {
        if let Err(e) = check_name(&name.value) {
            f.error(name, format!("bridges: {e}"));
        }
        let at = format!("bridges.{}", name.value);
        validate_endpoint(&mut f, &at, spec);
        validate_credentials(&mut f, &at, spec);
        let client_id = spec
            .client_id
            .as_ref()
            .map_or_else(|| format!("moat-{}", name.value), |c| c.value.clone());
        if let Some(c) = &spec.client_id
            && (c.value.is_empty() || c.value.len() > 128 || c.value.contains(['+', '#', '/']))
        {
            f.error(
                c,
                format!("{at}.client_id must be 1 to 128 bytes without / + or #"),
            );
        }
        if client_ids.contains(&client_id) {
            f.error(
                name,
                format!("{at}: client id {client_id:?} is used by another bridge"),
            );
        }
        client_ids.push(client_id);
        if let Some(k) = &spec.keepalive
            && !(5..=65_535).contains(&k.value.0)
        {
            f.error(k, format!("{at}.keepalive must be 5 s to 65535 s"));
        }
        if let Some(q) = &spec.queue {
            if let Some(m) = &q.max_messages
                && !(1..=MAX_QUEUE_MESSAGES).contains(&m.value)
            {
                f.error(
                    m,
                    format!("{at}.queue.max_messages must be 1 to {MAX_QUEUE_MESSAGES}"),
                );
            }
            if let Some(b) = &q.max_bytes
                && !(1024..=1 << 30).contains(&b.value.0)
            {
                f.error(b, format!("{at}.queue.max_bytes must be 1KiB to 1GiB"));
            }
        }
        validate_mappings(&mut f, &at, &spec.topics);
    }
    f.0
}

fn validate_endpoint(f: &mut Findings, at: &str, spec: &BridgeSpec) {
    let address = &spec.address;
    if address.value.is_empty()
        || address.value.len() > 253
        || address
            .value
            .contains(|c: char| c.is_whitespace() || c.is_control() || c == '/')
    {
        f.error(
            address,
            format!("{at}.address must be a host name or an IP address"),
        );
    }
    if let Some(p) = &spec.port
        && p.value == 0
    {
        f.error(p, format!("{at}.port cannot be 0"));
    }
    let plaintext = spec.plaintext.as_ref().filter(|p| p.value);
    match (&spec.tls, plaintext) {
        (Some(tls), Some(p)) => {
            f.error(p, format!("{at}: plaintext: true and tls: are exclusive"));
            validate_tls(f, at, tls);
        }
        (Some(tls), None) => validate_tls(f, at, tls),
        (None, Some(p)) => {
            let loopback = address
                .value
                .parse::<IpAddr>()
                .is_ok_and(|ip| ip.is_loopback());
            if !loopback {
                f.error(
                    p,
                    format!(
                        "{at}: plaintext is allowed only to a loopback address (127.0.0.1, ::1); {:?} would carry the bridge's password and messages readable by anyone on the path. Use tls: {{ ca_file: ... }} or tls: {{ system_roots: true }}",
                        address.value
                    ),
                );
            }
        }
        (None, None) => f.error(
            address,
            format!(
                "{at} needs tls: {{ ca_file: PATH }} (a CA you were given) or tls: {{ system_roots: true }} (a public broker); plaintext: true is allowed only to loopback"
            ),
        ),
    }
}

fn validate_tls(f: &mut Findings, at: &str, tls: &Spanned<BridgeTlsSpec>) {
    let system = tls.value.system_roots.as_ref().is_some_and(|s| s.value);
    match (&tls.value.ca_file, system) {
        (Some(ca), true) => f.error(
            ca,
            format!("{at}.tls: ca_file and system_roots: true are exclusive; pick one"),
        ),
        (None, false) => f.error(
            tls,
            format!("{at}.tls needs ca_file: PATH or system_roots: true"),
        ),
        _ => {}
    }
    if let Some(name) = &tls.value.server_name
        && rustls_pki_types::ServerName::try_from(name.value.as_str()).is_err()
    {
        f.error(
            name,
            format!(
                "{at}.tls.server_name {:?} is not a DNS name or an IP address",
                name.value
            ),
        );
    }
}

fn validate_credentials(f: &mut Findings, at: &str, spec: &BridgeSpec) {
    if let Some(p) = &spec.password_file
        && spec.username.is_none()
    {
        f.error(p, format!("{at}.password_file needs username: too"));
    }
    if let Some(u) = &spec.username
        && (u.value.is_empty() || u.value.chars().any(char::is_control))
    {
        f.error(u, format!("{at}.username must be non-empty text"));
    }
    if let Some(c) = &spec.certificate
        && spec.tls.is_none()
    {
        f.error(c, format!("{at}.certificate needs tls:"));
    }
    if spec.password_file.is_none() && spec.certificate.is_none() {
        f.error(
            &spec.address,
            format!(
                "{at} has no credentials: give username: and password_file: (a secret file), or certificate: {{ cert_file, key_file }}; moat does not connect anonymously"
            ),
        );
    }
}

fn check_prefix(f: &mut Findings, at: &str, prefix: &Option<Spanned<String>>) {
    let Some(p) = prefix else { return };
    if p.value.is_empty() {
        return;
    }
    if p.value.contains(['+', '#']) || p.value.starts_with('$') || !p.value.ends_with('/') {
        f.error(
            p,
            format!(
                "{at}: prefix {:?} must end with / and hold no wildcard or leading $ (e.g. \"home/\")",
                p.value
            ),
        );
    }
}

fn validate_mappings(f: &mut Findings, at: &str, topics: &Spanned<Vec<Spanned<TopicMappingSpec>>>) {
    if topics.value.is_empty() {
        f.error(
            topics,
            format!("{at}.topics is empty: the bridge would carry nothing"),
        );
    }
    for (i, m) in topics.value.iter().enumerate() {
        let here = format!("{at}.topics[{i}]");
        let topic = &m.value.topic;
        if let Err(e) = validate_topic_filter(&topic.value) {
            f.error(
                topic,
                format!("{here}: invalid topic filter {:?}: {e}", topic.value),
            );
        } else if topic.value.starts_with('$') || matches!(parse_shared(&topic.value), Ok(Some(_)))
        {
            f.error(
                topic,
                format!("{here}: a bridge does not carry $ topics or shared subscriptions"),
            );
        }
        check_prefix(f, &here, &m.value.local_prefix);
        check_prefix(f, &here, &m.value.remote_prefix);
        if let Some(q) = &m.value.qos
            && q.value > 1
        {
            f.error(
                q,
                format!("{here}.qos must be 0 or 1: the bridge carries QoS 1 at most (a message leaves its queue when the remote's PUBACK arrives)"),
            );
        }
    }
    // A topic carried out and back in under the same name: a copy echoed by the
    // remote (a broker that ignores No Local, or a bridge of its own that mirrors
    // it back) would be indistinguishable from a new message here.
    for (i, a) in topics.value.iter().enumerate() {
        for b in topics.value.iter().skip(i) {
            let (a, b) = (&a.value, &b.value);
            let pair = [(a, b), (b, a)];
            let loops = pair.iter().any(|(inward, outward)| {
                inward.direction.value.carries_in()
                    && outward.direction.value.carries_out()
                    && inward.local_prefix() == inward.remote_prefix()
                    && outward.local_prefix() == outward.remote_prefix()
                    && filters_overlap(&inward.local_filter(), &outward.local_filter())
            });
            if loops {
                f.error(
                    &b.topic,
                    format!(
                        "{at}: topic {:?} would be carried both in and out under the same name, which loops through any remote that echoes it; give the remote side a prefix (remote_prefix: \"home/\") or split the topics by direction",
                        b.topic.value
                    ),
                );
            }
        }
    }
}

/// Whether some topic matches both filters (valid, non-shared filters).
pub fn filters_overlap(a: &str, b: &str) -> bool {
    let mut a_levels = a.split('/');
    let mut b_levels = b.split('/');
    loop {
        match (a_levels.next(), b_levels.next()) {
            (Some("#"), _) | (_, Some("#")) => return true,
            (None, None) => return true,
            (Some(x), Some(y)) if x == "+" || y == "+" || x == y => {}
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::{LoadOptions, parse_str};

    /// The (line, column, message) of each error in a manifest with this bridge.
    fn errors(bridge: &str) -> Vec<(u64, u64, String)> {
        let text = format!("version: 1\nbridges:\n  cloud:\n{bridge}");
        match parse_str(&text, "moat.yaml", LoadOptions::default()) {
            Ok(_) => Vec::new(),
            Err(e) => e
                .diagnostics()
                .iter()
                .map(|d| (d.line, d.column, d.message.clone()))
                .collect(),
        }
    }

    const GOOD: &str = "    address: mqtt.example.net
    tls: { system_roots: true }
    username: home
    password_file: /run/secrets/cloud
    topics:
      - { topic: \"sensors/#\", direction: out, remote_prefix: \"home/\" }
      - { topic: \"cmd/#\", direction: in, remote_prefix: \"home/\" }
";

    #[test]
    fn a_sound_bridge_passes() {
        assert_eq!(errors(GOOD), Vec::new());
    }

    #[test]
    fn plaintext_is_refused_unless_the_remote_is_loopback() {
        let public = GOOD.replace("tls: { system_roots: true }", "plaintext: true");
        let found = errors(&public);
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!((found[0].0, found[0].1), (5, 16));
        assert!(
            found[0].2.contains("only to a loopback address"),
            "{found:?}"
        );
        let local = public.replace("mqtt.example.net", "\"127.0.0.1\"");
        assert_eq!(errors(&local), Vec::new());
        let neither = GOOD.replace("    tls: { system_roots: true }\n", "");
        assert!(errors(&neither)[0].2.contains("needs tls:"));
    }

    #[test]
    fn credentials_are_required() {
        let anonymous = GOOD.replace("    password_file: /run/secrets/cloud\n", "");
        let found = errors(&anonymous);
        assert!(found[0].2.contains("no credentials"), "{found:?}");
        assert_eq!(found[0].0, 4);
    }

    #[test]
    fn a_topic_both_ways_under_the_same_name_is_refused() {
        let looped = GOOD.replace(
            "{ topic: \"cmd/#\", direction: in, remote_prefix: \"home/\" }",
            "{ topic: \"sensors/kitchen/#\", direction: in }",
        );
        let looped = looped.replace(
            "{ topic: \"sensors/#\", direction: out, remote_prefix: \"home/\" }",
            "{ topic: \"sensors/#\", direction: out }",
        );
        let found = errors(&looped);
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].0, 10);
        assert!(found[0].2.contains("both in and out"), "{found:?}");
        let both = GOOD.replace(
            "direction: out, remote_prefix: \"home/\"",
            "direction: both",
        );
        assert!(errors(&both)[0].2.contains("both in and out"));
    }

    #[test]
    fn mappings_are_checked() {
        let bad = GOOD.replace(
            "remote_prefix: \"home/\" }\n      - { topic: \"cmd/#\"",
            "remote_prefix: \"home\", qos: 2 }\n      - { topic: \"cmd/#x\"",
        );
        let messages: Vec<String> = errors(&bad).into_iter().map(|e| e.2).collect();
        assert!(
            messages.iter().any(|m| m.contains("must end with /")),
            "{messages:?}"
        );
        assert!(
            messages.iter().any(|m| m.contains("qos must be 0 or 1")),
            "{messages:?}"
        );
        assert!(
            messages.iter().any(|m| m.contains("invalid topic filter")),
            "{messages:?}"
        );
    }

    #[test]
    fn overlap_follows_wildcards() {
        assert!(filters_overlap("a/#", "a/b/c"));
        assert!(filters_overlap("a/+/c", "a/b/+"));
        assert!(filters_overlap("#", "x"));
        assert!(!filters_overlap("a/b", "a/c"));
        assert!(!filters_overlap("a/b", "a/b/c"));
        assert!(filters_overlap("a/b/#", "a/b"));
    }
}
