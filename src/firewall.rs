//! firewall: the nftables ruleset that keeps everyone but the LAN away from the broker.
//!
//! It owns three jobs: building a [`FirewallSpec`] from a compiled policy (in `spec`,
//! so the broker's admission check and the firewall are fed from the same network
//! list), rendering a complete, self-contained `table inet moat` from it (pure text, in
//! `render`), and handing that text to the `nft` binary to validate or load it (in
//! `nft`). It does not read manifests: callers pass a compiled `Policy`.

mod nft;
mod render;
mod spec;

use ipnet::IpNet;

pub use nft::{Nft, apply, check};
pub use render::render;
pub use spec::resolve_remote;

/// The name of the nftables table moat owns; nothing else in the ruleset is touched.
pub const TABLE: &str = "moat";

/// The SSH port opened to the allowed networks when [`FirewallSpec::ssh`] is set.
pub const SSH_PORT: u16 = 22;

/// Everything the ruleset depends on, already compiled from the manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FirewallSpec {
    /// The networks allowed to reach the broker (and SSH): IPv4 and IPv6 mixed.
    pub networks: Vec<IpNet>,
    /// The broker's TCP ports: every listener's (TLS, and plaintext and WebSocket ones
    /// if declared).
    pub broker_ports: Vec<u16>,
    /// Accept SSH (port 22) from the allowed networks.
    pub ssh: bool,
    /// Accept multicast DNS (UDP 5353 to 224.0.0.251 / ff02::fb).
    pub mdns: bool,
    /// Accept DHCP and DHCPv6 replies (the host configures its address by DHCP).
    pub dhcp_client: bool,
    /// Restrict outbound traffic to the allowed networks, DNS, NTP, DHCP, ICMP and
    /// each bridge's remote broker.
    pub egress: bool,
    /// The remote brokers of the manifest's bridges: with egress filtering, moat may
    /// open TCP connections to these addresses and ports only (beyond the LAN).
    pub bridge_remotes: Vec<BridgeRemote>,
}

/// One bridge's remote broker as the firewall sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BridgeRemote {
    pub bridge: String,
    pub host: String,
    pub port: u16,
    /// What `host` resolved to when the ruleset was built (a literal IP needs no
    /// lookup); empty when it did not resolve, and then no rule lets it through.
    pub addresses: Vec<std::net::IpAddr>,
}

/// Why `nft` could not validate or load a ruleset.
#[derive(Debug, thiserror::Error)]
pub enum FirewallError {
    /// The `nft` program (or its wrapper) could not be started.
    #[error("cannot run `{program}` (is nftables installed?): {source}")]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },
    /// Writing the ruleset to `nft` or waiting for it failed.
    #[error("talking to `{program}` failed: {source}")]
    Io {
        program: String,
        #[source]
        source: std::io::Error,
    },
    /// `nft` ran and refused the ruleset.
    #[error("`{program}` rejected the ruleset ({status}): {stderr}")]
    Rejected {
        program: String,
        status: std::process::ExitStatus,
        stderr: String,
    },
}
