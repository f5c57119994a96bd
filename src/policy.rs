//! The compiled policy: an immutable, runtime-ready view of a validated manifest
//! (identities with their credentials and ACLs, limits, networks, listeners,
//! persistence, firewall switches). The broker holds it behind an `ArcSwap` and swaps
//! it on reload. It holds no secrets beyond hashes and never touches sockets or files.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;

use crate::acl::{Acl, Grant};
use crate::manifest::load::{self, LoadOptions};
use crate::manifest::roles::{self, Preset};
use crate::manifest::schema::{
    DurabilitySpec, IdentityLimitsSpec, IdentitySpec, ListenerSpec, Manifest, Spanned,
};
use crate::manifest::validate::{self, DEFAULT_NETWORKS, Severity};
use crate::manifest::{ManifestError, Warning};

pub use crate::manifest::schema::Transport;

/// One listener: where, and how it carries MQTT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListenerPlan {
    pub address: SocketAddr,
    pub transport: Transport,
}
/// Default group-commit interval for `durability: batched`.
pub const DEFAULT_COMMIT_INTERVAL: Duration = Duration::from_millis(50);

/// Which client addresses may connect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Networks {
    cidrs: Vec<IpNet>,
}

impl Networks {
    /// An IPv4-mapped entry (`::ffff:192.168.1.0/120`) is kept as the IPv4 network
    /// it names, since IPv4 peers are judged as IPv4 (see `allows`).
    pub fn new(cidrs: Vec<IpNet>) -> Self {
        let mut canonical: Vec<IpNet> = Vec::with_capacity(cidrs.len());
        for net in cidrs {
            let net = match net {
                IpNet::V6(v6) if v6.prefix_len() >= 96 => v6
                    .network()
                    .to_ipv4_mapped()
                    .and_then(|ip| ipnet::Ipv4Net::new(ip, v6.prefix_len() - 96).ok())
                    .map_or(net, IpNet::V4),
                other => other,
            };
            if !canonical.contains(&net) {
                canonical.push(net);
            }
        }
        Networks { cidrs: canonical }
    }

    /// Whether `ip` is inside an allowed network. An IPv4-mapped IPv6 address
    /// (`::ffff:a.b.c.d`, as a dual-stack socket reports IPv4 peers) is checked as IPv4.
    pub fn allows(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        self.cidrs.iter().any(|net| net.contains(&ip))
    }

    pub fn cidrs(&self) -> &[IpNet] {
        &self.cidrs
    }
}

/// Resource limits (defaults sized for a Pi Zero 2 W; see DESIGN.md).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    pub max_connections: usize,
    pub max_connections_per_ip: usize,
    pub max_packet_size: u32,
    pub max_packet_size_before_auth: u32,
    pub connect_timeout: Duration,
    pub max_keepalive: u16,
    pub max_inflight: u16,
    pub max_queued_messages: usize,
    pub max_queued_bytes: usize,
    pub max_subscriptions: usize,
    pub max_user_properties: usize,
    pub max_user_property_bytes: usize,
    pub max_client_id_length: usize,
    pub max_topic_length: usize,
    pub max_topic_levels: usize,
    pub max_retained_messages: usize,
    pub max_retained_bytes: usize,
    pub auth_concurrency: usize,
    pub auth_queue: usize,
    /// Persistent sessions one identity may keep (each client id is one).
    pub max_sessions_per_identity: usize,
}

impl Default for Limits {
    /// The broker's own defaults where it has one (one place for each number), and
    /// the edge's (connections, queues, argon2) here; `docs/manifest.md`'s table is
    /// checked against these by a test.
    fn default() -> Self {
        let broker = crate::broker::BrokerConfig::default();
        Limits {
            max_connections: 256,
            max_connections_per_ip: 32,
            max_packet_size: 1024 * 1024,
            max_packet_size_before_auth: broker.max_packet_size_before_auth,
            connect_timeout: broker.connect_timeout,
            max_keepalive: broker.max_keepalive,
            max_inflight: broker.max_inflight,
            max_queued_messages: 1000,
            max_queued_bytes: 1024 * 1024,
            max_subscriptions: broker.max_subscriptions,
            max_user_properties: broker.max_user_properties,
            max_user_property_bytes: broker.max_user_property_bytes,
            max_client_id_length: broker.max_client_id_length,
            max_topic_length: broker.max_topic_length,
            max_topic_levels: broker.max_topic_levels,
            max_retained_messages: broker.max_retained_messages,
            max_retained_bytes: broker.max_retained_bytes,
            auth_concurrency: 2,
            auth_queue: 16,
            max_sessions_per_identity: broker.max_sessions_per_identity,
        }
    }
}

/// How hard the store works to keep acknowledged messages across a power cut.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// Every acknowledged message is on disk before the acknowledgement.
    Full,
    /// Commits are grouped; up to `commit_interval` of acknowledged messages may be lost.
    Batched { commit_interval: Duration },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Persistence {
    /// The database file; `None` means `<state>/moat.db`.
    pub path: Option<PathBuf>,
    pub durability: Durability,
}

/// Switches read by `moat firewall`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FirewallSettings {
    pub ssh: bool,
    pub mdns: bool,
    pub egress: bool,
}

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

/// The compiled, immutable policy.
#[derive(Debug, Clone)]
pub struct Policy {
    pub hostnames: Vec<String>,
    pub addresses: Vec<IpAddr>,
    /// Every listener, TLS first (always present).
    pub listeners: Vec<ListenerPlan>,
    pub networks: Networks,
    pub limits: Limits,
    pub persistence: Persistence,
    pub firewall: FirewallSettings,
    identities: Vec<Arc<Identity>>,
    by_name: BTreeMap<String, usize>,
}

impl Policy {
    /// The MQTT-over-TLS listener's address (always declared).
    pub fn listen_tls(&self) -> SocketAddr {
        self.listener(Transport::Tls).unwrap_or_else(|| {
            SocketAddr::new(
                Transport::Tls.default_address(),
                Transport::Tls.default_port(),
            )
        })
    }

    /// The plaintext MQTT listener's address, if declared.
    pub fn listen_plain(&self) -> Option<SocketAddr> {
        self.listener(Transport::Plain)
    }

    /// The address of the listener for `transport`, if declared.
    pub fn listener(&self, transport: Transport) -> Option<SocketAddr> {
        self.listeners
            .iter()
            .find(|l| l.transport == transport)
            .map(|l| l.address)
    }

    /// Every port a client may connect to (what the firewall opens).
    pub fn listener_ports(&self) -> Vec<u16> {
        self.listeners.iter().map(|l| l.address.port()).collect()
    }

    /// Loads, validates and compiles the manifest at `manifest_path`.
    pub fn load(manifest_path: &Path) -> Result<(Policy, Vec<Warning>), ManifestError> {
        let loaded = load::load(manifest_path)?;
        let policy = Policy::compile(&loaded.manifest)?;
        Ok((policy, loaded.warnings))
    }

    /// Compiles a parsed manifest. It is validated again (plaintext passwords refused),
    /// so an unvalidated manifest can never become a policy.
    pub fn compile(manifest: &Manifest) -> Result<Policy, ManifestError> {
        let errors: Vec<(u64, u64, String)> = validate::validate(manifest, LoadOptions::default())
            .into_iter()
            .filter(|f| f.severity == Severity::Error)
            .map(|f| (f.line, f.column, f.message))
            .collect();
        if !errors.is_empty() {
            return Err(load::invalid("manifest", "", errors));
        }
        let broker = &manifest.broker;
        let limits = compile_limits(manifest);
        let listeners = broker
            .listen
            .declared()
            .into_iter()
            .map(|(transport, entry)| ListenerPlan {
                address: ListenerSpec::socket_addr(entry.map(|e| &e.value), transport),
                transport,
            })
            .collect();
        let entries: Vec<String> = match &broker.networks {
            Some(list) => list.value.iter().map(|e| e.value.clone()).collect(),
            None => DEFAULT_NETWORKS.iter().map(|s| s.to_string()).collect(),
        };
        let mut cidrs: Vec<IpNet> = Vec::new();
        for entry in &entries {
            for net in validate::parse_network(entry).unwrap_or_default() {
                if !cidrs.contains(&net) {
                    cidrs.push(net);
                }
            }
        }
        let persistence = Persistence {
            path: broker.persistence.path.as_ref().map(|p| p.value.clone()),
            durability: match broker.persistence.durability.as_ref().map(|d| d.value) {
                Some(DurabilitySpec::Batched) => Durability::Batched {
                    commit_interval: broker
                        .persistence
                        .commit_interval_ms
                        .as_ref()
                        .map_or(DEFAULT_COMMIT_INTERVAL, |ms| {
                            Duration::from_millis(ms.value)
                        }),
                },
                Some(DurabilitySpec::Full) | None => Durability::Full,
            },
        };
        let mut identities = Vec::new();
        let mut by_name = BTreeMap::new();
        for (section, kind, map) in [
            ("users", IdentityKind::User, &manifest.users),
            ("devices", IdentityKind::Device, &manifest.devices),
        ] {
            for (name, spec) in map.iter() {
                let identity =
                    compile_identity(manifest, &limits, section, kind, &name.value, spec);
                by_name.insert(name.value.clone(), identities.len());
                identities.push(Arc::new(identity));
            }
        }
        Ok(Policy {
            hostnames: broker.hostnames.iter().map(|h| h.value.clone()).collect(),
            addresses: broker.addresses.iter().map(|a| a.value).collect(),
            listeners,
            networks: Networks::new(cidrs),
            limits,
            persistence,
            firewall: FirewallSettings {
                ssh: manifest.firewall.ssh,
                mdns: manifest.firewall.mdns,
                egress: manifest.firewall.egress,
            },
            identities,
            by_name,
        })
    }

    pub fn identity(&self, name: &str) -> Option<&Arc<Identity>> {
        self.by_name.get(name).and_then(|&i| self.identities.get(i))
    }

    /// Users first, then devices, each in manifest order.
    pub fn identities(&self) -> impl Iterator<Item = &Arc<Identity>> {
        self.identities.iter()
    }

    /// Names of the identities with `certificate: true`.
    pub fn certificate_devices(&self) -> Vec<&str> {
        self.identities
            .iter()
            .filter(|i| i.credential == Credential::Certificate)
            .map(|i| i.name.as_str())
            .collect()
    }

    /// Whether any identity has a role that needs an RSA server key (Tasmota on
    /// ESP8266 speaks only ECDHE-RSA).
    pub fn needs_rsa_server_key(&self) -> bool {
        self.identities.iter().any(|i| {
            i.roles
                .iter()
                .any(|r| roles::preset(r).is_some_and(|p| p.needs_rsa_server_key))
        })
    }
}

/// What the state directory must contain for `policy`: the server certificate's
/// names and addresses (plus this machine's `.local` name and its current LAN
/// addresses), the RSA server key if a role needs one, and one client bundle per
/// `certificate: true` device. `serve` (at start and on reload) and `firstboot` both
/// provision from this, so a certificate follows the address people type even when
/// DHCP gave the appliance one nobody wrote into the manifest (re-issued with the
/// same key, so a pinned fingerprint stays valid).
pub fn provision_plan(policy: &Policy) -> crate::pki::ProvisionPlan {
    let machine = crate::machine::Machine::detect(Path::new("/proc"));
    let mut addresses = policy.addresses.clone();
    for address in machine.addresses {
        if !addresses.contains(&address) {
            addresses.push(address);
        }
    }
    crate::pki::ProvisionPlan {
        hostnames: policy.hostnames.clone(),
        machine_name: machine.name,
        addresses,
        rsa_server_key: policy.needs_rsa_server_key(),
        certificate_devices: policy
            .certificate_devices()
            .into_iter()
            .map(str::to_owned)
            .collect(),
    }
}

fn to_usize(v: u64) -> usize {
    usize::try_from(v).unwrap_or(usize::MAX)
}

fn to_u32(v: u64) -> u32 {
    u32::try_from(v).unwrap_or(u32::MAX)
}

fn compile_limits(manifest: &Manifest) -> Limits {
    let l = &manifest.broker.limits;
    let d = Limits::default();
    let count = |v: &Option<Spanned<u64>>, default: usize| {
        v.as_ref().map_or(default, |v| to_usize(v.value))
    };
    let size = |v: &Option<Spanned<crate::manifest::schema::ByteSize>>, default: usize| {
        v.as_ref().map_or(default, |v| to_usize(v.value.0))
    };
    let packet = |v: &Option<Spanned<crate::manifest::schema::ByteSize>>, default: u32| {
        v.as_ref().map_or(default, |v| to_u32(v.value.0))
    };
    Limits {
        max_connections: count(&l.max_connections, d.max_connections),
        max_connections_per_ip: count(&l.max_connections_per_ip, d.max_connections_per_ip),
        max_packet_size: packet(&l.max_packet_size, d.max_packet_size),
        max_packet_size_before_auth: packet(
            &l.max_packet_size_before_auth,
            d.max_packet_size_before_auth,
        ),
        connect_timeout: l
            .connect_timeout
            .as_ref()
            .map_or(d.connect_timeout, |t| Duration::from_secs(t.value.0)),
        max_keepalive: l.max_keepalive.as_ref().map_or(d.max_keepalive, |k| {
            u16::try_from(k.value.0).unwrap_or(u16::MAX)
        }),
        max_inflight: l.max_inflight.as_ref().map_or(d.max_inflight, |i| {
            u16::try_from(i.value).unwrap_or(u16::MAX)
        }),
        max_queued_messages: count(&l.max_queued_messages, d.max_queued_messages),
        max_queued_bytes: size(&l.max_queued_bytes, d.max_queued_bytes),
        max_subscriptions: count(&l.max_subscriptions, d.max_subscriptions),
        max_user_properties: count(&l.max_user_properties, d.max_user_properties),
        max_user_property_bytes: size(&l.max_user_property_bytes, d.max_user_property_bytes),
        max_client_id_length: count(&l.max_client_id_length, d.max_client_id_length),
        max_topic_length: count(&l.max_topic_length, d.max_topic_length),
        max_topic_levels: count(&l.max_topic_levels, d.max_topic_levels),
        max_retained_messages: count(&l.max_retained_messages, d.max_retained_messages),
        max_retained_bytes: size(&l.max_retained_bytes, d.max_retained_bytes),
        auth_concurrency: count(&l.auth_concurrency, d.auth_concurrency),
        auth_queue: count(&l.auth_queue, d.auth_queue),
        max_sessions_per_identity: count(&l.max_sessions_per_identity, d.max_sessions_per_identity),
    }
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

fn compile_identity(
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
            .unwrap_or(limits.max_retained_messages)
            .min(limits.max_retained_messages),
        max_subscriptions: resolved.subscriptions.unwrap_or(limits.max_subscriptions),
        roles: role_names,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::{LoadOptions, parse_str};

    const HASH: &str =
        "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaGhhc2hoYXNoaGFzaGhhc2g";

    fn compile(text: &str) -> Policy {
        let loaded = parse_str(text, "test.yaml", LoadOptions::default()).unwrap();
        Policy::compile(&loaded.manifest).unwrap()
    }

    /// `docs/manifest.md`'s limits table says what the code does: a manifest that
    /// sets every limit to its documented default compiles to `Limits::default()`.
    #[test]
    fn the_documented_limit_defaults_are_the_defaults() {
        let docs = include_str!("../docs/manifest.md");
        let table = docs
            .split("### `broker.limits`")
            .nth(1)
            .and_then(|rest| rest.split("\n### ").next())
            .unwrap();
        let mut yaml = String::from("version: 1\nbroker:\n  limits:\n");
        let mut rows = 0;
        for row in table.lines().filter(|l| l.starts_with("| `")) {
            let cells: Vec<&str> = row.split('|').map(str::trim).collect();
            let (field, default) = (cells[1].trim_matches('`'), cells[3]);
            yaml.push_str(&format!("    {field}: {default}\n"));
            rows += 1;
        }
        assert_eq!(rows, 20, "the table has one row per limit:\n{table}");
        yaml.push_str(&format!(
            "users:\n  ha:\n    role: observer\n    password_hash: \"{HASH}\"\n"
        ));
        assert_eq!(compile(&yaml).limits, Limits::default(), "{yaml}");
    }

    #[test]
    fn every_transport_is_one_listener_with_its_defaults() {
        let p = compile(&format!(
            "version: 1\nbroker:\n  listen:\n    plain: {{}}\n    ws: {{}}\n    wss: {{ port: 9001 }}\nusers:\n  lamp:\n    password_hash: \"{HASH}\"\n    plaintext: true\n"
        ));
        let plan: Vec<(Transport, String)> = p
            .listeners
            .iter()
            .map(|l| (l.transport, l.address.to_string()))
            .collect();
        assert_eq!(
            plan,
            [
                (Transport::Tls, "[::]:8883".to_string()),
                (Transport::Plain, "0.0.0.0:1883".to_string()),
                (Transport::WebSocket, "0.0.0.0:1884".to_string()),
                (Transport::WebSocketTls, "[::]:9001".to_string()),
            ]
        );
        assert_eq!(p.listener_ports(), [8883, 1883, 1884, 9001]);
    }

    #[test]
    fn defaults_match_the_design_table() {
        let p = compile(&format!(
            "version: 1\nusers:\n  ha:\n    role: homeassistant\n    password_hash: \"{HASH}\"\n"
        ));
        assert_eq!(p.limits, Limits::default());
        assert_eq!(p.listen_tls(), "[::]:8883".parse().unwrap());
        assert_eq!(p.listen_plain(), None);
        assert_eq!(p.persistence.durability, Durability::Full);
        assert!(p.networks.allows("192.168.1.20".parse().unwrap()));
        assert!(p.networks.allows("::ffff:10.0.0.1".parse().unwrap()));
        assert!(p.networks.allows("::1".parse().unwrap()));
        assert!(p.networks.allows("fe80::1".parse().unwrap()));
        assert!(!p.networks.allows("8.8.8.8".parse().unwrap()));
        assert!(!p.networks.allows("::ffff:8.8.8.8".parse().unwrap()));
        assert!(!p.networks.allows("2001:db8::1".parse().unwrap()));
        let mapped = Networks::new(vec!["::ffff:203.0.113.0/120".parse().unwrap()]);
        assert_eq!(
            mapped.cidrs(),
            &["203.0.113.0/24".parse::<IpNet>().unwrap()]
        );
        assert!(mapped.allows("203.0.113.9".parse().unwrap()));
        assert!(mapped.allows("::ffff:203.0.113.9".parse().unwrap()));
        let ha = p.identity("ha").unwrap();
        assert_eq!(ha.max_queued_messages, 10_000);
        assert_eq!(ha.max_queued_bytes, 16 * 1024 * 1024);
        assert_eq!(ha.max_subscriptions, roles::HUB_MAX_SUBSCRIPTIONS);
        assert!(
            ha.acl
                .may_publish("ha", "c", "frigate/front/detect/set")
                .allowed
        );
        assert_eq!(ha.kind, IdentityKind::User);
        assert!(!p.needs_rsa_server_key());
    }

    #[test]
    fn limits_overrides_and_roles_compose() {
        let p = compile(&format!(
            "version: 1
broker:
  listen:
    plain: {{ port: 1884 }}
  limits: {{ max_packet_size: 256KiB, connect_timeout: 5s, max_queued_bytes: 2MiB }}
  persistence: {{ durability: batched, commit_interval_ms: 20 }}
roles:
  quiet:
    publish: [\"q/%u\"]
    retain: false
    limits: {{ max_queued_messages: 50, max_subscriptions: 20 }}
devices:
  plug:
    roles: [tasmota, quiet]
    password_hash: \"{HASH}\"
    plaintext: true
    limits: {{ max_packet_size: 1MiB, max_subscriptions: 500 }}
  cam:
    certificate: true
    role: quiet
"
        ));
        assert_eq!(p.limits.max_packet_size, 256 * 1024);
        assert_eq!(p.limits.connect_timeout, Duration::from_secs(5));
        assert_eq!(p.listen_plain(), Some("0.0.0.0:1884".parse().unwrap()));
        assert_eq!(
            p.persistence.durability,
            Durability::Batched {
                commit_interval: Duration::from_millis(20)
            }
        );
        let plug = p.identity("plug").unwrap();
        assert!(plug.plaintext && plug.may_retain);
        assert_eq!(
            plug.max_packet_size,
            256 * 1024,
            "capped at the broker limit"
        );
        assert_eq!(plug.max_queued_messages, 50);
        assert_eq!(plug.max_queued_bytes, 2 * 1024 * 1024);
        assert_eq!(plug.max_subscriptions, 500, "the identity's own value wins");
        assert!(plug.acl.may_publish("plug", "x", "tele/plug/STATE").allowed);
        assert!(plug.acl.may_publish("plug", "x", "q/plug").allowed);
        let cam = p.identity("cam").unwrap();
        assert!(!cam.may_retain);
        assert_eq!(cam.max_subscriptions, 20, "the role's value applies");
        assert_eq!(cam.credential, Credential::Certificate);
        assert_eq!(p.certificate_devices(), ["cam"]);
        assert!(p.needs_rsa_server_key());
        let names: Vec<_> = p.identities().map(|i| i.name.as_str()).collect();
        assert_eq!(names, ["plug", "cam"]);
    }

    #[test]
    fn grant_sources_name_their_origin() {
        let p = compile(&format!(
            "version: 1\nusers:\n  bob:\n    password_hash: \"{HASH}\"\n    publish: [\"a/#\"]\n    role: observer\n"
        ));
        let bob = p.identity("bob").unwrap();
        let d = bob.acl.may_publish("bob", "c", "a/b");
        assert_eq!(
            d.rule.as_deref(),
            Some("users.bob.publish[0] (line 5): a/#")
        );
        let d = bob.acl.may_subscribe("bob", "c", "x/#");
        assert_eq!(
            d.rule.as_deref(),
            Some("role observer (built-in): subscribe #")
        );
    }
}
