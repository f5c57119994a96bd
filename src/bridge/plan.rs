//! A bridge as the runtime needs it, compiled from a validated manifest entry: the
//! remote endpoint, whom to trust, the credentials' file paths, the topic mappings
//! and the translation of a topic from one side to the other. Pure data: no I/O,
//! no broker types.

use std::path::PathBuf;
use std::time::Duration;

use crate::manifest::Manifest;
use crate::manifest::bridge::{BridgeSpec, Direction};
use moat_protocol::topic;

/// Default remote port with TLS (and without, to loopback).
pub const DEFAULT_TLS_PORT: u16 = 8883;
pub const DEFAULT_PLAIN_PORT: u16 = 1883;
pub const DEFAULT_KEEPALIVE: Duration = Duration::from_secs(60);
pub const DEFAULT_SESSION_EXPIRY: Duration = Duration::from_secs(3600);
/// Outbound queue defaults: a day of a few sensors at one message a minute, well
/// inside a Pi Zero's memory (the queue also lives in SQLite).
pub const DEFAULT_QUEUE_MESSAGES: usize = 10_000;
pub const DEFAULT_QUEUE_BYTES: usize = 16 * 1024 * 1024;

/// Whom the bridge trusts for the remote's certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Trust {
    /// A PEM file of CA certificates.
    CaFile(PathBuf),
    /// The operating system's CA bundle (`rustls-native-certs`).
    SystemRoots,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsPlan {
    pub trust: Trust,
    pub server_name: String,
    /// A client certificate and its key (PEM files).
    pub client_certificate: Option<(PathBuf, PathBuf)>,
}

/// One topic mapping (see `manifest::bridge::TopicMappingSpec`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mapping {
    pub topic: String,
    pub direction: Direction,
    pub local_prefix: String,
    pub remote_prefix: String,
    pub qos: u8,
    pub retain: bool,
}

impl Mapping {
    pub fn local_filter(&self) -> String {
        format!("{}{}", self.local_prefix, self.topic)
    }
    pub fn remote_filter(&self) -> String {
        format!("{}{}", self.remote_prefix, self.topic)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BridgePlan {
    pub name: String,
    pub host: String,
    pub port: u16,
    /// `None`: plaintext (validation allows it only to loopback).
    pub tls: Option<TlsPlan>,
    pub username: Option<String>,
    pub password_file: Option<PathBuf>,
    pub client_id: String,
    pub keepalive: Duration,
    pub clean_start: bool,
    pub session_expiry: Duration,
    pub queue_messages: usize,
    pub queue_bytes: usize,
    pub mappings: Vec<Mapping>,
}

/// The local identity of a bridge: it owns the bridge's session and holds exactly
/// its mappings' rights. `$` and `/` never appear in a manifest name, so no user or
/// device can be (or log in as) a bridge.
pub fn local_identity(name: &str) -> String {
    format!("$bridge/{name}")
}

impl BridgePlan {
    pub fn local_identity(&self) -> String {
        local_identity(&self.name)
    }

    /// The local session's client id (the identity's name: no client can take it,
    /// because `attach` refuses a client id owned by another identity).
    pub fn local_client_id(&self) -> String {
        self.local_identity()
    }

    /// The remote topic for a local message, by the first `out` mapping whose local
    /// filter matches it.
    pub fn outward(&self, local_topic: &str) -> Option<(&Mapping, String)> {
        self.mappings
            .iter()
            .filter(|m| m.direction.carries_out())
            .find(|m| topic::matches(&m.local_filter(), local_topic))
            .and_then(|m| {
                let rest = local_topic.strip_prefix(m.local_prefix.as_str())?;
                Some((m, format!("{}{rest}", m.remote_prefix)))
            })
    }

    /// The local topic for a remote message, by the first `in` mapping whose remote
    /// filter matches it.
    pub fn inward(&self, remote_topic: &str) -> Option<(&Mapping, String)> {
        self.mappings
            .iter()
            .filter(|m| m.direction.carries_in())
            .find(|m| topic::matches(&m.remote_filter(), remote_topic))
            .and_then(|m| {
                let rest = remote_topic.strip_prefix(m.remote_prefix.as_str())?;
                Some((m, format!("{}{rest}", m.local_prefix)))
            })
    }
}

/// What `moat check` prints for a bridge: where it goes, whom it trusts, and each
/// mapping with both sides' topics.
pub fn describe(plan: &BridgePlan) -> String {
    let trust = match &plan.tls {
        Some(TlsPlan {
            trust: Trust::CaFile(path),
            ..
        }) => format!("tls, CA {}", path.display()),
        Some(TlsPlan {
            trust: Trust::SystemRoots,
            ..
        }) => "tls, system roots".to_owned(),
        None => "plaintext, loopback".to_owned(),
    };
    let mut text = format!(
        "bridge {} -> {}:{} ({trust}; local rights: its mappings only)",
        plan.name, plan.host, plan.port
    );
    for m in &plan.mappings {
        let arrow = match m.direction {
            Direction::In => "<-",
            Direction::Out => "->",
            Direction::Both => "<->",
        };
        text.push_str(&format!(
            "\n  {} {arrow} {} (qos {}, retain {})",
            m.local_filter(),
            m.remote_filter(),
            m.qos,
            if m.retain { "kept" } else { "cleared" }
        ));
    }
    text
}

/// Compiles every bridge of a validated manifest.
pub fn compile(manifest: &Manifest) -> Vec<BridgePlan> {
    manifest
        .bridges
        .iter()
        .map(|(name, spec)| compile_one(&name.value, spec))
        .collect()
}

fn compile_one(name: &str, spec: &BridgeSpec) -> BridgePlan {
    let tls = spec.tls.as_ref().map(|tls| TlsPlan {
        trust: match &tls.value.ca_file {
            Some(ca) => Trust::CaFile(ca.value.clone()),
            None => Trust::SystemRoots,
        },
        server_name: tls
            .value
            .server_name
            .as_ref()
            .map_or_else(|| spec.address.value.clone(), |n| n.value.clone()),
        client_certificate: spec.certificate.as_ref().map(|c| {
            (
                c.value.cert_file.value.clone(),
                c.value.key_file.value.clone(),
            )
        }),
    });
    let default_port = if tls.is_some() {
        DEFAULT_TLS_PORT
    } else {
        DEFAULT_PLAIN_PORT
    };
    let queue = spec.queue.as_ref();
    BridgePlan {
        name: name.to_owned(),
        host: spec.address.value.clone(),
        port: spec.port.as_ref().map_or(default_port, |p| p.value),
        tls,
        username: spec.username.as_ref().map(|u| u.value.clone()),
        password_file: spec.password_file.as_ref().map(|p| p.value.clone()),
        client_id: spec
            .client_id
            .as_ref()
            .map_or_else(|| format!("moat-{name}"), |c| c.value.clone()),
        keepalive: spec
            .keepalive
            .as_ref()
            .map_or(DEFAULT_KEEPALIVE, |k| Duration::from_secs(k.value.0)),
        clean_start: spec.clean_start.as_ref().is_some_and(|c| c.value),
        session_expiry: spec
            .session_expiry
            .as_ref()
            .map_or(DEFAULT_SESSION_EXPIRY, |s| Duration::from_secs(s.value.0)),
        queue_messages: queue
            .and_then(|q| q.max_messages.as_ref())
            .and_then(|m| usize::try_from(m.value).ok())
            .unwrap_or(DEFAULT_QUEUE_MESSAGES),
        queue_bytes: queue
            .and_then(|q| q.max_bytes.as_ref())
            .and_then(|b| usize::try_from(b.value.0).ok())
            .unwrap_or(DEFAULT_QUEUE_BYTES),
        mappings: spec
            .topics
            .value
            .iter()
            .map(|m| Mapping {
                topic: m.value.topic.value.clone(),
                direction: m.value.direction.value,
                local_prefix: m.value.local_prefix().to_owned(),
                remote_prefix: m.value.remote_prefix().to_owned(),
                qos: m.value.qos.as_ref().map_or(1, |q| q.value),
                retain: m.value.retain.as_ref().is_none_or(|r| r.value),
            })
            .collect(),
    }
}

/// A plaintext loopback bridge named `cloud` with these mappings (for tests).
#[cfg(test)]
pub(crate) fn sample(mappings: Vec<Mapping>) -> BridgePlan {
    BridgePlan {
        name: "cloud".into(),
        host: "127.0.0.1".into(),
        port: DEFAULT_PLAIN_PORT,
        tls: None,
        username: None,
        password_file: None,
        client_id: "moat-cloud".into(),
        keepalive: DEFAULT_KEEPALIVE,
        clean_start: false,
        session_expiry: DEFAULT_SESSION_EXPIRY,
        queue_messages: 10,
        queue_bytes: 1 << 20,
        mappings,
    }
}

/// A mapping with QoS 1 that keeps the retain flag (for tests).
#[cfg(test)]
pub(crate) fn mapping(topic: &str, direction: Direction, local: &str, remote: &str) -> Mapping {
    Mapping {
        topic: topic.into(),
        direction,
        local_prefix: local.into(),
        remote_prefix: remote.into(),
        qos: 1,
        retain: true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_translate_by_the_first_matching_mapping() {
        let plan = sample(vec![
            mapping("sensors/#", Direction::Out, "", "home/"),
            mapping("cmd/#", Direction::In, "remote/", "home/"),
        ]);
        assert_eq!(
            plan.outward("sensors/kitchen/t").map(|(_, t)| t),
            Some("home/sensors/kitchen/t".into())
        );
        assert_eq!(plan.outward("cmd/x"), None);
        assert_eq!(
            plan.inward("home/cmd/light").map(|(_, t)| t),
            Some("remote/cmd/light".into())
        );
        assert_eq!(plan.inward("home/sensors/x"), None);
        assert_eq!(plan.local_identity(), "$bridge/cloud");
    }
}
