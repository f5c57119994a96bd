//! What the host looks like from inside its network namespace, read from
//! `/proc/self`: listening TCP sockets (`net/tcp`, `net/tcp6`), IPv6 addresses
//! (`net/if_inet6`) and IPv4 addresses (the `LOCAL` host routes of `net/fib_trie`).
//! Parsers take text so they are tested on fixtures; a file that cannot be read
//! yields nothing.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;

/// Where this process's `net/` directory is. Not `/proc`: `/proc/net` is only a link
/// to `self/net`, and a unit with systemd's `ProcSubset=pid` (the NixOS module's
/// broker) sees no such link, only the process directories; it reads nothing there.
pub const PROC_SELF: &str = "/proc/self";

/// The TCP state number of a listening socket in `/proc/net/tcp`.
const TCP_LISTEN: &str = "0A";

/// One address configured on the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostAddress {
    pub ip: IpAddr,
    pub interface: String,
}

/// The addresses configured in this network namespace, without the socket tables
/// (which a busy broker's make long): IPv4 from `net/fib_trie`, IPv6 from
/// `net/if_inet6`.
pub fn read_addresses(proc_root: &Path) -> Vec<HostAddress> {
    let mut addresses = parse_fib_trie_local(&read_text(proc_root, "net/fib_trie"));
    addresses.extend(parse_if_inet6(&read_text(proc_root, "net/if_inet6")));
    addresses
}

fn read_text(proc_root: &Path, name: &str) -> String {
    std::fs::read_to_string(proc_root.join(name)).unwrap_or_default()
}

/// Listening sockets and addresses of this network namespace.
#[derive(Debug, Clone, Default)]
pub struct HostFacts {
    pub listening: Vec<SocketAddr>,
    pub addresses: Vec<HostAddress>,
}

impl HostFacts {
    pub fn read(proc_root: &Path) -> HostFacts {
        let mut listening = parse_tcp_listeners(&read_text(proc_root, "net/tcp"));
        listening.extend(parse_tcp_listeners(&read_text(proc_root, "net/tcp6")));
        HostFacts {
            listening,
            addresses: read_addresses(proc_root),
        }
    }

    /// The host's addresses reachable from the internet (see [`is_public`]).
    pub fn public_addresses(&self) -> Vec<IpAddr> {
        self.addresses
            .iter()
            .map(|a| a.ip)
            .filter(|ip| is_public(*ip))
            .collect()
    }

    pub fn has_address(&self, ip: IpAddr) -> bool {
        self.addresses.iter().any(|a| a.ip == ip)
    }
}

/// An address the internet can route to: not loopback, unspecified, multicast,
/// RFC 1918, shared (100.64/10), link-local, or IPv6 ULA. Documentation ranges count as
/// public: they stand in for real public addresses in tests and examples.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            !(v4.is_loopback()
                || v4.is_unspecified()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_multicast()
                || v4.is_broadcast()
                || (a == 100 && (64..128).contains(&b)))
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_public(IpAddr::V4(v4));
            }
            let first = v6.segments()[0];
            !(v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (first & 0xfe00) == 0xfc00
                || (first & 0xffc0) == 0xfe80)
        }
    }
}

fn hex_word(text: &str) -> Option<[u8; 4]> {
    // The kernel prints each 32-bit word of the address in host byte order.
    u32::from_str_radix(text, 16).ok().map(u32::to_ne_bytes)
}

fn parse_proc_socket(text: &str) -> Option<SocketAddr> {
    let (addr, port) = text.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let ip = match addr.len() {
        8 => IpAddr::V4(Ipv4Addr::from(hex_word(addr)?)),
        32 => {
            let mut bytes = [0u8; 16];
            for (i, chunk) in bytes.chunks_exact_mut(4).enumerate() {
                chunk.copy_from_slice(&hex_word(addr.get(i * 8..i * 8 + 8)?)?);
            }
            IpAddr::V6(Ipv6Addr::from(bytes))
        }
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

/// The local addresses of sockets in the LISTEN state, from `/proc/net/tcp{,6}`.
pub fn parse_tcp_listeners(text: &str) -> Vec<SocketAddr> {
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let local = fields.nth(1)?;
            let state = fields.nth(1)?;
            (state == TCP_LISTEN)
                .then(|| parse_proc_socket(local))
                .flatten()
        })
        .collect()
}

/// IPv6 addresses from `/proc/net/if_inet6` (address, index, prefix, scope, flags, name).
pub fn parse_if_inet6(text: &str) -> Vec<HostAddress> {
    text.lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (hex, interface) = (fields.first()?, fields.get(5)?);
            if hex.len() != 32 {
                return None;
            }
            let mut bytes = [0u8; 16];
            for (i, byte) in bytes.iter_mut().enumerate() {
                *byte = u8::from_str_radix(hex.get(i * 2..i * 2 + 2)?, 16).ok()?;
            }
            Some(HostAddress {
                ip: IpAddr::V6(Ipv6Addr::from(bytes)),
                interface: (*interface).to_owned(),
            })
        })
        .collect()
}

/// IPv4 addresses of the host: the `/32 host LOCAL` leaves of `/proc/net/fib_trie`.
/// The interface is not listed there, so it is left empty.
pub fn parse_fib_trie_local(text: &str) -> Vec<HostAddress> {
    let mut found: Vec<HostAddress> = Vec::new();
    let mut last_leaf: Option<Ipv4Addr> = None;
    for line in text.lines() {
        let trimmed = line.trim_start();
        if let Some(ip) = trimmed.strip_prefix("|-- ") {
            last_leaf = ip.trim().parse().ok();
        } else if trimmed.starts_with("/32 host LOCAL")
            && let Some(ip) = last_leaf
            && !found.iter().any(|a| a.ip == IpAddr::V4(ip))
        {
            found.push(HostAddress {
                ip: IpAddr::V4(ip),
                interface: String::new(),
            });
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn listening_sockets_are_decoded_in_both_families() {
        let v4 = format!(
            "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
             \x20  0: {}:075B 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1\n\
             \x20  1: 0100007F:22B3 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 2 1\n\
             \x20  2: 0100007F:22B3 0100007F:9C40 01 00000000:00000000 00:00000000 00000000     0        0 3 1\n",
            hex::v4("198.51.100.5")
        );
        assert_eq!(
            parse_tcp_listeners(&v4),
            vec![
                "198.51.100.5:1883".parse::<SocketAddr>().unwrap(),
                "127.0.0.1:8883".parse().unwrap()
            ]
        );
        let v6 = format!(
            "  sl  local_address                         remote_address                        st\n\
             \x20  0: {}:22B3 00000000000000000000000000000000:0000 0A 0\n\
             \x20  1: {}:22B3 00000000000000000000000000000000:0000 0A 0\n",
            hex::v6("::"),
            hex::v6("2001:db8::5")
        );
        assert_eq!(
            parse_tcp_listeners(&v6),
            vec![
                "[::]:8883".parse::<SocketAddr>().unwrap(),
                "[2001:db8::5]:8883".parse().unwrap()
            ]
        );
    }

    /// Encoders for fixtures, the inverse of what the kernel prints.
    mod hex {
        pub fn v4(ip: &str) -> String {
            let ip: std::net::Ipv4Addr = ip.parse().unwrap();
            format!("{:08X}", u32::from_ne_bytes(ip.octets()))
        }
        pub fn v6(ip: &str) -> String {
            let ip: std::net::Ipv6Addr = ip.parse().unwrap();
            ip.octets()
                .chunks_exact(4)
                .map(|c| format!("{:08X}", u32::from_ne_bytes([c[0], c[1], c[2], c[3]])))
                .collect()
        }
    }

    #[test]
    fn ipv6_addresses_come_from_if_inet6() {
        let text = "20010db8000000000000000000000005 02 40 00 80     eth0\n\
                    fe800000000000000000000000000001 02 40 20 80     eth0\n\
                    00000000000000000000000000000001 01 80 10 80       lo\n";
        let addrs = parse_if_inet6(text);
        assert_eq!(addrs.len(), 3);
        assert_eq!(addrs[0].ip, ip("2001:db8::5"));
        assert_eq!(addrs[0].interface, "eth0");
        assert_eq!(addrs[2].ip, ip("::1"));
    }

    #[test]
    fn ipv4_addresses_are_the_local_host_routes_of_the_fib_trie() {
        let text = "Main:\n  +-- 0.0.0.0/0 3 0 5\n     |-- 0.0.0.0\n        /0 universe UNICAST\n\
                    \x20    +-- 127.0.0.0/8 2 0 2\n        +-- 127.0.0.0/31 1 0 0\n\
                    \x20          |-- 127.0.0.0\n              /8 host LOCAL\n\
                    \x20          |-- 127.0.0.1\n              /32 host LOCAL\n\
                    \x20    |-- 198.51.100.5\n        /32 host LOCAL\n\
                    \x20    |-- 198.51.100.255\n        /32 link BROADCAST\n\
                    Local:\n  +-- 0.0.0.0/0 3 0 5\n     |-- 127.0.0.1\n        /32 host LOCAL\n";
        let addrs: Vec<IpAddr> = parse_fib_trie_local(text)
            .into_iter()
            .map(|a| a.ip)
            .collect();
        assert_eq!(addrs, vec![ip("127.0.0.1"), ip("198.51.100.5")]);
    }

    #[test]
    fn public_means_routable_from_the_internet() {
        for public in [
            "198.51.100.5",
            "8.8.8.8",
            "2001:db8::1",
            "2a00::1",
            "::ffff:1.2.3.4",
        ] {
            assert!(is_public(ip(public)), "{public}");
        }
        for private in [
            "127.0.0.1",
            "0.0.0.0",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.10",
            "169.254.1.1",
            "100.64.0.1",
            "224.0.0.251",
            "::1",
            "::",
            "fd00::1",
            "fe80::1",
            "ff02::fb",
            "::ffff:192.168.1.1",
        ] {
            assert!(!is_public(ip(private)), "{private}");
        }
    }

    #[test]
    fn reading_a_missing_proc_yields_nothing() {
        let facts = HostFacts::read(Path::new("/nonexistent/proc"));
        assert!(facts.listening.is_empty() && facts.addresses.is_empty());
    }
}
