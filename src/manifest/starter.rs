//! The commented starter manifest that `moat init` writes (and that `serve` uses,
//! loopback-only, when no manifest exists). It only formats text; the caller supplies
//! the argon2id hash (never the password itself) and the host name and LAN addresses
//! it detected.

use std::net::IpAddr;

/// Where the starter's broker may be reached from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StarterScope {
    /// TLS on [::]:8883 (both families) for loopback and private networks, with the
    /// machine's name and LAN addresses in the certificate (`moat init`).
    Lan,
    /// TLS on 127.0.0.1:8883, loopback clients only (`serve` without a manifest).
    LoopbackOnly,
}

/// A complete, valid manifest with one `homeassistant` user holding `password_hash`.
/// For [`StarterScope::Lan`], `host_name` and `addresses` (what the caller detected)
/// become `broker.hostnames` and `broker.addresses`; a loopback-only starter names
/// neither.
pub fn starter_manifest(
    password_hash: &str,
    scope: StarterScope,
    host_name: Option<&str>,
    addresses: &[IpAddr],
) -> String {
    let (host_name, addresses) = match scope {
        StarterScope::Lan => (host_name, addresses),
        StarterScope::LoopbackOnly => (None, &[][..]),
    };
    let hostnames = host_name.map_or_else(String::new, |h| format!("\"{h}\""));
    let addresses = addresses
        .iter()
        .map(|a| format!("\"{a}\""))
        .collect::<Vec<_>>()
        .join(", ");
    let (address, networks, scope_note) = match scope {
        StarterScope::Lan => (
            "::",
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
  # What clients type to reach the broker: the server certificate covers these
  # names and addresses and nothing else (plus localhost and this machine's
  # <name>.local, added automatically). `moat init` filled in the host name and LAN
  # addresses it found; give the broker a fixed address (a DHCP reservation) or use
  # a name, and run `moat provision` after changing them.
  hostnames: [{hostnames}]
  addresses: [{addresses}]
  listen:
    # "::" takes IPv6 and IPv4 (with an IPv4-only fallback where IPv6 is off).
    tls: {{ address: "{address}", port: 8883 }}
    # A plaintext listener is off. Declare one only for devices that cannot do TLS,
    # and mark each such device with plaintext: true:
    # plain: {{ address: "192.168.1.10", port: 1883 }}
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
        let lan = ["192.168.1.10".parse().unwrap(), "fd00::5".parse().unwrap()];
        for scope in [StarterScope::Lan, StarterScope::LoopbackOnly] {
            let text = starter_manifest(HASH, scope, Some("pi4"), &lan);
            let loaded = parse_str(&text, "starter.yaml", LoadOptions::default()).unwrap();
            assert!(
                loaded.warnings.is_empty(),
                "{scope:?}: {:?}",
                loaded.warnings
            );
            let policy = Policy::compile(&loaded.manifest).unwrap();
            let ha = policy.identity("homeassistant").unwrap();
            assert_eq!(ha.roles, ["homeassistant"]);
            assert!(policy.listen_plain().is_none());
            let lan_ip = "192.168.1.5".parse().unwrap();
            match scope {
                StarterScope::Lan => {
                    assert_eq!(policy.listen_tls(), "[::]:8883".parse().unwrap());
                    assert!(policy.networks.allows(lan_ip));
                    assert_eq!(policy.hostnames, ["pi4"]);
                    assert_eq!(policy.addresses, lan);
                }
                StarterScope::LoopbackOnly => {
                    assert_eq!(policy.listen_tls(), "127.0.0.1:8883".parse().unwrap());
                    assert!(policy.hostnames.is_empty() && policy.addresses.is_empty());
                    assert!(!policy.networks.allows(lan_ip));
                    assert!(policy.networks.allows("127.0.0.1".parse().unwrap()));
                }
            }
        }
    }

    #[test]
    fn nothing_detected_still_loads() {
        let text = starter_manifest(HASH, StarterScope::Lan, None, &[]);
        let loaded = parse_str(&text, "starter.yaml", LoadOptions::default()).unwrap();
        assert!(loaded.manifest.broker.hostnames.is_empty());
    }
}
