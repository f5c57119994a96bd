//! The compiled policy: an immutable, runtime-ready view of a validated manifest
//! (identities with their credentials and ACLs, limits, networks, listeners,
//! persistence, firewall switches). The broker holds it behind an `ArcSwap` and swaps
//! it on reload. It holds no secrets beyond hashes and never touches sockets or files.

mod identity;
mod limits;
mod networks;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;

use crate::manifest::load::{self, LoadOptions};
use crate::manifest::roles;
use crate::manifest::schema::{DurabilitySpec, ListenerSpec, Manifest};
use crate::manifest::validate::{self, DEFAULT_NETWORKS, Severity};
use crate::manifest::{ManifestError, Warning};

pub use crate::manifest::schema::Transport;
pub use identity::{Credential, Identity, IdentityKind};
pub use limits::Limits;
pub use networks::Networks;

use identity::compile_identity;
use limits::compile_limits;

/// One listener: where, and how it carries MQTT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListenerPlan {
    pub address: SocketAddr,
    pub transport: Transport,
}

/// The Prometheus endpoint (`broker.metrics`), when declared.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetricsPlan {
    pub address: SocketAddr,
    /// The bearer token's file; `None`: no token asked.
    pub token_file: Option<PathBuf>,
}

/// Default group-commit interval for `durability: batched`.
pub const DEFAULT_COMMIT_INTERVAL: Duration = Duration::from_millis(50);

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

/// The compiled, immutable policy.
#[derive(Debug, Clone)]
pub struct Policy {
    pub hostnames: Vec<String>,
    pub addresses: Vec<IpAddr>,
    /// Every listener, TLS first (always present).
    pub listeners: Vec<ListenerPlan>,
    pub metrics: Option<MetricsPlan>,
    /// Publish broker health as Home Assistant entities (`broker.homeassistant`).
    pub homeassistant: bool,
    pub networks: Networks,
    pub limits: Limits,
    pub persistence: Persistence,
    pub firewall: FirewallSettings,
    /// Outbound bridges to remote brokers.
    pub bridges: Vec<crate::bridge::BridgePlan>,
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

    /// Every port a client or scraper may connect to (what the firewall opens to
    /// the allowed networks): the MQTT listeners', then the metrics endpoint's.
    pub fn listener_ports(&self) -> Vec<u16> {
        let mqtt = self.listeners.iter().map(|l| l.address.port());
        mqtt.chain(self.metrics.iter().map(|m| m.address.port()))
            .collect()
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
            metrics: broker.metrics.as_ref().map(|m| MetricsPlan {
                address: m.value.socket_addr(),
                token_file: m.value.token_file.as_ref().map(|f| f.value.clone()),
            }),
            homeassistant: broker.homeassistant.as_ref().is_some_and(|h| h.value),
            networks: Networks::new(cidrs),
            limits,
            persistence,
            firewall: FirewallSettings {
                ssh: manifest.firewall.ssh,
                mdns: manifest.firewall.mdns,
                egress: manifest.firewall.egress,
            },
            bridges: crate::bridge::plan::compile(manifest),
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
