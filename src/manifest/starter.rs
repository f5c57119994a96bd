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

# Your own rule bundles; built-in roles: homeassistant, zigbee2mqtt, tasmota,
# esphome, shelly, observer.
# roles:
#   sensor:
#     publish: ["sensors/%u/#"]
"##
    )
}
