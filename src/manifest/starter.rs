//! The commented starter manifest that `moat init` writes (and that `serve` uses,
//! loopback-only, when no manifest exists). It only formats text; the caller supplies
//! the argon2id hash and never the password itself.

/// Where the starter's broker may be reached from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StarterScope {
    /// TLS on 0.0.0.0:8883 for loopback and private networks (`moat init`).
    Lan,
    /// TLS on 127.0.0.1:8883, loopback clients only (`serve` without a manifest).
    LoopbackOnly,
}

/// A complete, valid manifest with one `homeassistant` user holding `password_hash`.
pub fn starter_manifest(password_hash: &str, scope: StarterScope) -> String {
    let (address, networks, scope_note) = match scope {
        StarterScope::Lan => (
            "0.0.0.0",
            "[loopback, private]",
            "# Clients may connect from this machine and from private (RFC 1918, ULA,\n  # link-local) networks. Anything public needs allow_public: true.",
        ),
        StarterScope::LoopbackOnly => (
            "127.0.0.1",
            "[loopback]",
            "# Only clients on this machine may connect. Run `moat init` for a LAN setup.",
        ),
    };
    format!(
        r##"# moat manifest: who and what may talk to this broker.
# Every field is described in docs/manifest.md. Check it with `moat check`.
version: 1

broker:
  # Names that go into the server certificate (<host>.local and localhost are
  # added automatically). Point your clients at one of them.
  hostnames: [moat.home.arpa]
  listen:
    tls: {{ address: "{address}", port: 8883 }}
    # A plaintext listener is off. Declare one only for devices that cannot do TLS,
    # and mark each such device with plaintext: true:
    # plain: {{ address: "0.0.0.0", port: 1883 }}
  {scope_note}
  networks: {networks}
  # limits: {{ max_connections: 256, max_packet_size: 1MiB }}
  # persistence: {{ durability: full }}

users:
  # Home Assistant's MQTT integration. Its password was printed once by `moat init`;
  # set a new one with `moat passwd homeassistant --write`.
  homeassistant:
    role: homeassistant
    password_hash: "{password_hash}"

devices: {{}}
  # A device with a client certificate (issued by `moat provision`):
  # kitchen-sensor:
  #   certificate: true
  #   publish: ["sensors/kitchen/#"]
  # A Tasmota plug (its MQTT Topic is its name):
  # plug-1:
  #   role: tasmota
  #   password_hash: "..."     # `moat passwd plug-1 --write`

# Your own rule bundles; built-in roles: homeassistant, homeassistant-strict,
# zigbee2mqtt, tasmota, esphome, shelly, observer.
# roles:
#   sensor:
#     publish: ["sensors/%u/#"]
"##
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::{LoadOptions, parse_str};
    use crate::policy::Policy;

    const HASH: &str =
        "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaGhhc2hoYXNoaGFzaGhhc2g";

    #[test]
    fn both_scopes_load_cleanly_without_warnings() {
        for scope in [StarterScope::Lan, StarterScope::LoopbackOnly] {
            let text = starter_manifest(HASH, scope);
            let loaded = parse_str(&text, "starter.yaml", LoadOptions::default()).unwrap();
            assert!(
                loaded.warnings.is_empty(),
                "{scope:?}: {:?}",
                loaded.warnings
            );
            let policy = Policy::compile(&loaded.manifest).unwrap();
            let ha = policy.identity("homeassistant").unwrap();
            assert_eq!(ha.roles, ["homeassistant"]);
            assert!(policy.listen_plain.is_none());
            let lan_ip = "192.168.1.5".parse().unwrap();
            match scope {
                StarterScope::Lan => {
                    assert_eq!(policy.listen_tls, "0.0.0.0:8883".parse().unwrap());
                    assert!(policy.networks.allows(lan_ip));
                }
                StarterScope::LoopbackOnly => {
                    assert_eq!(policy.listen_tls, "127.0.0.1:8883".parse().unwrap());
                    assert!(!policy.networks.allows(lan_ip));
                    assert!(policy.networks.allows("127.0.0.1".parse().unwrap()));
                }
            }
        }
    }
}
