//! What this machine is called and where the LAN reaches it: the kernel's host name
//! (`uname(2)`, which no `/proc` restriction hides) and the private addresses
//! (RFC 1918, IPv6 ULA) of its network namespace (read through `doctor::host`).
//! `moat init` writes them into a new manifest, `provision` adds `<host name>.local` to the server certificate, and
//! `moat doctor` warns when the certificate misses one. It only reads; it never
//! changes the host's name or addresses.

use std::net::IpAddr;
use std::path::Path;

use crate::doctor::host::{HostAddress, PROC_SELF, read_addresses};

/// The host name and LAN addresses detected on this machine.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Machine {
    /// The first label of the kernel host name, lowercased; `None` if it is unset,
    /// `localhost`, or not a valid DNS label.
    pub name: Option<String>,
    /// Private addresses, IPv4 first, in the order the kernel lists them.
    pub addresses: Vec<IpAddr>,
}

impl Machine {
    /// This machine, as the calling process sees it.
    pub fn detect() -> Machine {
        Machine {
            name: host_name(),
            addresses: current_lan_addresses(),
        }
    }
}

/// This machine's LAN addresses now, as [`Machine::addresses`].
pub fn current_lan_addresses() -> Vec<IpAddr> {
    lan_addresses(&read_addresses(Path::new(PROC_SELF)))
}

/// This machine's host name, as [`Machine::name`]. From `uname(2)`, not
/// `/proc/sys/kernel/hostname`: the NixOS module's broker runs with
/// `ProcSubset=pid`, which hides `/proc/sys`, and would lose its `.local` name.
pub fn host_name() -> Option<String> {
    let uts = nix::sys::utsname::uname().ok()?;
    parse_host_name(uts.nodename().to_str()?)
}

/// The first label of a host name (`pi4.fritz.box` is `pi4`), lowercased, when it is a
/// usable DNS label; `(none)`, `localhost` and the empty name are not.
pub fn parse_host_name(text: &str) -> Option<String> {
    let first = text.trim().split('.').next()?.to_ascii_lowercase();
    let valid = !first.is_empty()
        && first.len() <= 63
        && !first.starts_with('-')
        && !first.ends_with('-')
        && first
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-');
    (valid && first != "localhost").then_some(first)
}

/// An address a LAN client can use and keep using: RFC 1918 IPv4 or IPv6 ULA. Not
/// loopback, not link-local (it needs a zone and changes with the interface), not the
/// shared 100.64/10 range (carrier NAT, VPN overlays), not public.
pub fn is_lan_address(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_private(),
        IpAddr::V6(v6) => (v6.segments()[0] & 0xfe00) == 0xfc00,
    }
}

/// The LAN addresses among the host's addresses, IPv4 first, without duplicates.
pub fn lan_addresses(addresses: &[HostAddress]) -> Vec<IpAddr> {
    let mut out: Vec<IpAddr> = Vec::new();
    for want_v4 in [true, false] {
        for a in addresses {
            if a.ip.is_ipv4() == want_v4 && is_lan_address(a.ip) && !out.contains(&a.ip) {
                out.push(a.ip);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::doctor::host::HostFacts;

    #[test]
    fn host_names_are_first_labels_of_real_names() {
        assert_eq!(parse_host_name("moat\n").as_deref(), Some("moat"));
        assert_eq!(parse_host_name("Pi4.fritz.box\n").as_deref(), Some("pi4"));
        for unusable in ["", "\n", "(none)\n", "localhost\n", "-x\n", "a_b\n"] {
            assert_eq!(parse_host_name(unusable), None, "{unusable:?}");
        }
    }

    #[test]
    fn lan_addresses_are_private_ones_ipv4_first() {
        let facts = HostFacts {
            listening: vec![],
            addresses: [
                "fd00::5",
                "127.0.0.1",
                "192.168.1.10",
                "fe80::1",
                "2001:db8::5",
                "198.51.100.7",
                "100.64.0.1",
                "169.254.3.4",
                "10.0.0.2",
                "::1",
                "192.168.1.10",
            ]
            .iter()
            .map(|s| HostAddress {
                ip: s.parse().unwrap(),
                interface: "eth0".into(),
            })
            .collect(),
        };
        let got: Vec<String> = lan_addresses(&facts.addresses)
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(got, ["192.168.1.10", "10.0.0.2", "fd00::5"]);
    }

    #[test]
    fn the_lan_addresses_come_from_a_proc_self_tree() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join("net")).unwrap();
        std::fs::write(
            root.path().join("net/if_inet6"),
            "fd000000000000000000000000000005 02 40 00 80     eth0\n\
             00000000000000000000000000000001 01 80 10 80       lo\n",
        )
        .unwrap();
        assert_eq!(
            lan_addresses(&read_addresses(root.path())),
            ["fd00::5".parse::<IpAddr>().unwrap()]
        );
    }

    #[test]
    fn the_host_name_is_the_kernels() {
        let kernel = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
        assert_eq!(host_name(), parse_host_name(&kernel));
    }
}
