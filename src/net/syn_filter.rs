//! The allowed networks, enforced by the kernel before the TCP handshake: a classic
//! BPF socket filter, generated from `broker.networks`, attached to each listening
//! socket (and re-attached on reload). A SYN from outside those networks is dropped
//! by the kernel, so the sender gets no SYN-ACK and no reset, even on a host where
//! nobody ran `moat firewall --apply`. Admission (`admission.rs`) still judges every
//! accepted connection behind it. This module owns the program and its attachment;
//! it must not touch accept loops, connections or the policy itself.
//!
//! Why this works (Linux `net/ipv4/tcp_ipv4.c`, `net/ipv6/tcp_ipv6.c`): `tcp_v4_rcv`
//! and `tcp_v6_rcv` run `tcp_filter()` (`sk_filter_trim_cap`) on the listening socket
//! for every segment that would open a connection, before any SYN-ACK is built; a
//! filter result of 0 ends in `discard_and_relse`, which frees the segment without
//! sending a reset, and counts it in the socket's drop counter (`ss -tlnm`: `d<N>`).
//! Accepted sockets inherit the filter (`sk_clone_lock`), which passes them too,
//! since their peer is allowed. At that point `skb->data` is the TCP header, so the
//! program reads the IP header through the `SKF_NET_OFF` window
//! (Documentation/networking/filter.rst): source at offset 12 (IPv4) or 8 (IPv6).
//! A dual-stack socket gets IPv4 segments with their IPv4 header, so the program
//! looks at the version nibble first. The filter is attached right after the
//! listener is bound; a SYN in the microseconds between `listen()` and the attach
//! is judged by admission alone.

use std::net::SocketAddr;
use std::os::fd::AsFd;

use ipnet::IpNet;

use crate::policy::Networks;

// Classic BPF opcodes (include/uapi/linux/bpf_common.h, filter.h).
const BPF_LD: u16 = 0x00;
const BPF_ALU: u16 = 0x04;
const BPF_JMP: u16 = 0x05;
const BPF_RET: u16 = 0x06;
const BPF_MISC: u16 = 0x07;
const BPF_W: u16 = 0x00;
const BPF_B: u16 = 0x10;
const BPF_ABS: u16 = 0x20;
const BPF_AND: u16 = 0x50;
const BPF_RSH: u16 = 0x70;
const BPF_JA: u16 = 0x00;
const BPF_JEQ: u16 = 0x10;
const BPF_K: u16 = 0x00;
const BPF_TAX: u16 = 0x00;
const BPF_TXA: u16 = 0x80;
/// `SKF_NET_OFF` (-0x100000): loads relative to the network header.
const NET: u32 = 0xfff0_0000;
/// `BPF_MAXINSNS`: the kernel refuses longer classic programs.
pub const MAX_INSNS: usize = 4096;

/// Keep the whole segment.
const ACCEPT: u32 = u32::MAX;
const DROP: u32 = 0;

/// One classic BPF instruction (`struct sock_filter`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Insn {
    pub code: u16,
    pub jt: u8,
    pub jf: u8,
    pub k: u32,
}

const fn stmt(code: u16, k: u32) -> Insn {
    Insn {
        code,
        jt: 0,
        jf: 0,
        k,
    }
}

const fn jeq(k: u32, jt: u8, jf: u8) -> Insn {
    Insn {
        code: BPF_JMP | BPF_JEQ | BPF_K,
        jt,
        jf,
        k,
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SynFilterError {
    #[error("{0} allowed networks need a filter longer than the kernel's {MAX_INSNS} instructions")]
    TooLong(usize),
    #[error("SO_ATTACH_FILTER: {0}")]
    Attach(#[source] std::io::Error),
}

/// Appends `(source & mask) == value` checks for consecutive 32-bit words of the
/// source address at `NET + offset`, followed by `ret ACCEPT`; a mismatch skips to
/// the end of the block. Words with an empty mask are not checked.
fn match_block(program: &mut Vec<Insn>, offset: u32, words: &[(u32, u32)]) {
    let checked: Vec<(u32, u32, u32)> = words
        .iter()
        .enumerate()
        .filter(|(_, (mask, _))| *mask != 0)
        .map(|(i, &(mask, value))| (offset + 4 * i as u32, mask, value))
        .collect();
    // Each check is `ld; [and;] jeq`; what follows the jeq up to and including the
    // `ret ACCEPT` is what a mismatch jumps over (at most 4 words * 3 + 1 = 13).
    let sizes: Vec<usize> = checked
        .iter()
        .map(|&(_, mask, _)| if mask == u32::MAX { 2 } else { 3 })
        .collect();
    for (n, &(at, mask, value)) in checked.iter().enumerate() {
        program.push(stmt(BPF_LD | BPF_W | BPF_ABS, NET.wrapping_add(at)));
        if mask != u32::MAX {
            program.push(stmt(BPF_ALU | BPF_AND | BPF_K, mask));
        }
        let rest = sizes[n + 1..].iter().sum::<usize>() + 1;
        program.push(jeq(value, 0, rest as u8));
    }
    program.push(stmt(BPF_RET | BPF_K, ACCEPT));
}

/// The filter that keeps segments whose source lies in `networks`.
pub fn program(networks: &Networks) -> Result<Vec<Insn>, SynFilterError> {
    let (mut v4, mut v6) = (Vec::new(), Vec::new());
    for net in networks.cidrs() {
        match net {
            IpNet::V4(n) => v4.push((u32::from(n.netmask()), u32::from(n.network()))),
            IpNet::V6(n) => {
                let (mask, addr) = (n.netmask().octets(), n.network().octets());
                let word = |b: &[u8; 16], i: usize| {
                    u32::from_be_bytes([b[4 * i], b[4 * i + 1], b[4 * i + 2], b[4 * i + 3]])
                };
                v6.push([0, 1, 2, 3].map(|i| (word(&mask, i), word(&addr, i))));
            }
        }
    }

    let mut v4_block = vec![
        stmt(BPF_LD | BPF_W | BPF_ABS, NET.wrapping_add(12)),
        stmt(BPF_MISC | BPF_TAX, 0),
    ];
    for &(mask, value) in &v4 {
        v4_block.push(stmt(BPF_MISC | BPF_TXA, 0));
        if mask != u32::MAX {
            v4_block.push(stmt(BPF_ALU | BPF_AND | BPF_K, mask));
        }
        v4_block.push(jeq(value, 0, 1));
        v4_block.push(stmt(BPF_RET | BPF_K, ACCEPT));
    }
    v4_block.push(stmt(BPF_RET | BPF_K, DROP));

    let mut program = vec![
        // A = IP version, from the first byte of the network header.
        stmt(BPF_LD | BPF_B | BPF_ABS, NET),
        stmt(BPF_ALU | BPF_RSH | BPF_K, 4),
        jeq(6, 0, 1),
        // `ja` has a 32-bit offset: the IPv4 block may be longer than a jeq can jump.
        stmt(BPF_JMP | BPF_JA, v4_block.len() as u32 + 2),
        jeq(4, 1, 0),
        stmt(BPF_RET | BPF_K, DROP),
    ];
    program.extend(v4_block);
    for words in &v6 {
        match_block(&mut program, 8, words);
    }
    program.push(stmt(BPF_RET | BPF_K, DROP));
    if program.len() > MAX_INSNS {
        return Err(SynFilterError::TooLong(networks.cidrs().len()));
    }
    Ok(program)
}

/// A listening socket's filter, kept so a reload can replace it.
pub struct SynFilter {
    /// A duplicate of the listener's descriptor: the filter belongs to the socket,
    /// so attaching through either descriptor replaces the same filter.
    socket: socket2::Socket,
    addr: SocketAddr,
}

impl SynFilter {
    /// Attaches the filter for `networks` to `listener` and says so in the log. When
    /// that fails, it says so loudly and the listener runs on admission alone:
    /// the broker still refuses those peers, only after their handshake.
    pub fn install(listener: &impl AsFd, addr: SocketAddr, networks: &Networks) -> Option<Self> {
        let socket = match socket2::SockRef::from(listener).try_clone() {
            Ok(socket) => socket,
            Err(e) => {
                tracing::warn!(listener = %addr, error = %e, "cannot keep the listening socket for its SYN filter; admission alone refuses other networks, after the TCP handshake");
                return None;
            }
        };
        let filter = SynFilter { socket, addr };
        filter.update(networks);
        Some(filter)
    }

    /// (Re)attaches the filter for `networks`; the kernel swaps programs atomically.
    /// When that fails, no filter is left on the socket and admission alone judges.
    pub fn update(&self, networks: &Networks) {
        match self.attach(networks) {
            Ok(len) => tracing::info!(
                listener = %self.addr,
                networks = networks.cidrs().len(),
                instructions = len,
                "SYN filter in place: the kernel answers no handshake from outside the allowed networks"
            ),
            Err(e) => {
                // A filter from before a reload would still judge by the old networks
                // (and shut out newly allowed ones): remove it. ENOENT: there was none.
                let _ = self.socket.detach_filter();
                tracing::warn!(
                    listener = %self.addr,
                    error = %e,
                    "SYN filter NOT in place: peers outside the allowed networks complete the TCP handshake and are refused by admission only"
                )
            }
        }
    }

    fn attach(&self, networks: &Networks) -> Result<usize, SynFilterError> {
        let insns = program(networks)?;
        let filters: Vec<socket2::SockFilter> = insns
            .iter()
            .map(|i| socket2::SockFilter::new(i.code, i.jt, i.jf, i.k))
            .collect();
        self.socket
            .attach_filter(&filters)
            .map_err(SynFilterError::Attach)?;
        Ok(insns.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::IpAddr;

    /// A classic BPF interpreter for the instructions `program` emits, over a packet
    /// as the filter sees it: the network header at `NET`, nothing else. Loads outside
    /// the header end the program with 0, as the kernel's do.
    fn run(program: &[Insn], header: &[u8]) -> u32 {
        let (mut a, mut x, mut pc) = (0u32, 0u32, 0usize);
        let load = |k: u32, size: usize| -> Option<u32> {
            let off = k.checked_sub(NET)? as usize;
            let bytes = header.get(off..off + size)?;
            Some(bytes.iter().fold(0, |acc, &b| (acc << 8) | u32::from(b)))
        };
        let mut steps = 0;
        loop {
            steps += 1;
            assert!(steps <= program.len(), "a loop in a forward-only program");
            let i = program[pc];
            pc += 1;
            match i.code {
                c if c == BPF_LD | BPF_W | BPF_ABS => match load(i.k, 4) {
                    Some(v) => a = v,
                    None => return 0,
                },
                c if c == BPF_LD | BPF_B | BPF_ABS => match load(i.k, 1) {
                    Some(v) => a = v,
                    None => return 0,
                },
                c if c == BPF_ALU | BPF_RSH | BPF_K => a >>= i.k,
                c if c == BPF_ALU | BPF_AND | BPF_K => a &= i.k,
                c if c == BPF_MISC | BPF_TAX => x = a,
                c if c == BPF_MISC | BPF_TXA => a = x,
                c if c == BPF_JMP | BPF_JA => pc += i.k as usize,
                c if c == BPF_JMP | BPF_JEQ | BPF_K => {
                    pc += usize::from(if a == i.k { i.jt } else { i.jf })
                }
                c if c == BPF_RET | BPF_K => return i.k,
                other => panic!("unexpected opcode {other:#x}"),
            }
            assert!(pc < program.len(), "jumped past the end");
        }
    }

    /// A minimal IPv4 or IPv6 header with `source` in place.
    fn header(source: IpAddr) -> Vec<u8> {
        match source {
            IpAddr::V4(ip) => {
                let mut h = vec![0u8; 20];
                h[0] = 0x45;
                h[9] = 6;
                h[12..16].copy_from_slice(&ip.octets());
                h
            }
            IpAddr::V6(ip) => {
                let mut h = vec![0u8; 40];
                h[0] = 0x60;
                h[6] = 6;
                h[8..24].copy_from_slice(&ip.octets());
                h
            }
        }
    }

    fn networks(list: &[&str]) -> Networks {
        Networks::new(list.iter().map(|s| s.parse().unwrap()).collect())
    }

    /// 500 IPv6 /127s: ten instructions each (three whole words, one masked, the
    /// return), more than the kernel takes.
    fn over_the_limit() -> Networks {
        let many: Vec<String> = (0..500)
            .map(|i| format!("2001:db8::{:x}/127", 2 * i))
            .collect();
        let refs: Vec<&str> = many.iter().map(String::as_str).collect();
        networks(&refs)
    }

    fn verdict(nets: &Networks, source: &str) -> bool {
        let program = program(nets).unwrap();
        run(&program, &header(source.parse().unwrap())) != 0
    }

    #[test]
    fn it_keeps_exactly_what_admission_allows() {
        let nets = networks(&[
            "127.0.0.0/8",
            "::1/128",
            "10.0.0.0/8",
            "172.16.0.0/12",
            "192.168.0.0/16",
            "169.254.0.0/16",
            "fe80::/10",
            "fc00::/7",
            "203.0.113.7/32",
            "2001:db8:0:1::/64",
            "2001:db8:ab::/47",
        ]);
        for source in [
            "127.0.0.1",
            "10.1.2.3",
            "172.31.255.255",
            "172.32.0.1",
            "172.15.255.255",
            "192.168.77.2",
            "192.169.0.1",
            "203.0.113.7",
            "203.0.113.8",
            "198.51.100.2",
            "8.8.8.8",
            "0.0.0.0",
            "255.255.255.255",
            "::1",
            "::2",
            "fe80::1",
            "febf:ffff::1",
            "fec0::1",
            "fd00:77::2",
            "fc00::1",
            "fe00::1",
            "2001:db8:0:1::5",
            "2001:db8:0:2::5",
            "2001:db8:ab::1",
            "2001:db8:ac:1::1",
            "2001:db8:aa:ffff::1",
            "2001:db8:100::2",
            "2606:4700::1111",
        ] {
            let ip: IpAddr = source.parse().unwrap();
            assert_eq!(verdict(&nets, source), nets.allows(ip), "source {source}");
        }
    }

    #[test]
    fn whole_families_and_single_hosts() {
        let all = networks(&["0.0.0.0/0", "::/0"]);
        assert!(verdict(&all, "8.8.8.8"));
        assert!(verdict(&all, "2606:4700::1111"));
        let v4_only = networks(&["0.0.0.0/0"]);
        assert!(!verdict(&v4_only, "::1"));
        let host = networks(&["2001:db8::1/128"]);
        assert!(verdict(&host, "2001:db8::1"));
        assert!(!verdict(&host, "2001:db8::2"));
        assert!(!verdict(&host, "2001:db9::1"));
        assert!(!verdict(&host, "10.0.0.1"));
    }

    #[test]
    fn anything_but_ipv4_and_ipv6_is_dropped() {
        let all = networks(&["0.0.0.0/0", "::/0"]);
        let program = program(&all).unwrap();
        let mut odd = header("10.0.0.1".parse().unwrap());
        odd[0] = 0x55;
        assert_eq!(run(&program, &odd), 0);
        // A header too short to hold the source: the load fails, the segment is dropped.
        assert_eq!(run(&program, &[0x45, 0, 0, 0]), 0);
    }

    #[test]
    fn long_lists_jump_correctly_and_the_kernel_limit_is_checked() {
        // 200 IPv4 /32s push the IPv6 block further than a jeq's 255 can reach.
        let mut list: Vec<String> = (0..200)
            .map(|i| format!("10.9.{}.{}/32", i / 250, i % 250))
            .collect();
        list.push("fd00:1::/64".into());
        let refs: Vec<&str> = list.iter().map(String::as_str).collect();
        let nets = networks(&refs);
        assert!(verdict(&nets, "10.9.0.199"));
        assert!(!verdict(&nets, "10.9.0.200"));
        assert!(verdict(&nets, "fd00:1::9"));
        assert!(!verdict(&nets, "fd00:2::9"));

        assert!(matches!(
            program(&over_the_limit()),
            Err(SynFilterError::TooLong(500))
        ));
    }

    #[test]
    fn the_kernel_takes_the_program() {
        // Attaching to a real socket checks the program with the kernel's own
        // verifier (`bpf_check_classic`); no packet is needed for that.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let filter = SynFilter::install(&listener, addr, &networks(&["127.0.0.0/8", "::1/128"]))
            .expect("a descriptor for the filter");
        filter
            .attach(&networks(&["192.168.0.0/16", "fd00::/8"]))
            .unwrap();
        // And a loopback peer outside the allowed networks gets no handshake.
        filter.attach(&networks(&["192.168.0.0/16"])).unwrap();
        let refused =
            std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_millis(300));
        assert!(
            refused.is_err(),
            "the handshake completed despite the filter"
        );
        filter.attach(&networks(&["127.0.0.0/8"])).unwrap();
        std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_secs(5)).unwrap();
        // A program the kernel cannot take leaves no stale filter behind: a loopback
        // peer, shut out by the filter before, is let through to admission.
        filter.attach(&networks(&["192.168.0.0/16"])).unwrap();
        filter.update(&over_the_limit());
        std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_secs(5)).unwrap();
    }
}
