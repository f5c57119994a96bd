//! The `broker.networks` vocabulary: the named network sets, how one entry parses
//! (named set, CIDR or single address) and which networks count as local. Pure
//! parsing; what the broker admits is `crate::policy::Networks`.

use std::net::IpAddr;

use ipnet::IpNet;

/// The named network sets that `broker.networks` accepts, and what they contain.
pub const NAMED_NETWORKS: &[(&str, &[&str])] = &[
    ("loopback", &["127.0.0.0/8", "::1/128"]),
    (
        "private",
        &[
            "10.0.0.0/8",
            "172.16.0.0/12",
            "192.168.0.0/16",
            "169.254.0.0/16",
            "fc00::/7",
            "fe80::/10",
        ],
    ),
    ("link_local", &["169.254.0.0/16", "fe80::/10"]),
    ("ula", &["fc00::/7"]),
];

/// The networks used when `broker.networks` is absent.
pub const DEFAULT_NETWORKS: &[&str] = &["loopback", "private"];

/// The CIDRs of a named set, or `None` if `name` is not one.
pub fn named_network(name: &str) -> Option<Vec<IpNet>> {
    NAMED_NETWORKS
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, cidrs)| cidrs.iter().filter_map(|c| c.parse().ok()).collect())
}

/// Parses one `broker.networks` entry: a named set, a CIDR, or a single address.
pub fn parse_network(entry: &str) -> Result<Vec<IpNet>, String> {
    if let Some(set) = named_network(entry) {
        return Ok(set);
    }
    if let Ok(net) = entry.parse::<IpNet>() {
        return Ok(vec![net.trunc()]);
    }
    if let Ok(ip) = entry.parse::<IpAddr>() {
        return Ok(vec![IpNet::from(ip)]);
    }
    let names: Vec<&str> = NAMED_NETWORKS.iter().map(|(n, _)| *n).collect();
    Err(format!(
        "network {entry:?} is neither a named set ({}) nor a CIDR such as 192.168.1.0/24",
        names.join(", ")
    ))
}

/// Whether a CIDR lies entirely inside loopback, private, link-local or ULA space.
pub fn is_local_network(net: &IpNet) -> bool {
    NAMED_NETWORKS
        .iter()
        .flat_map(|(_, cidrs)| cidrs.iter())
        .filter_map(|c| c.parse::<IpNet>().ok())
        .any(|local| local.contains(net))
}
