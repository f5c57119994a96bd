//! Which client addresses may connect: the manifest's `broker.networks`, canonicalised
//! (IPv4-mapped entries kept as the IPv4 network they name). Pure data; it never
//! touches sockets.

use std::net::IpAddr;

use ipnet::IpNet;

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
