//! Progressive slow-down of failed logins, counted per source address and per
//! username (never per client id, which a client chooses freely). After a few free
//! failures, each further attempt must wait an exponentially growing time after the
//! last failure; an attempt inside that window is refused without verifying anything,
//! so throttled clients hold no verification slot. Memory is bounded: each table keeps
//! a fixed number of entries and forgets keys after a quiet period. It knows nothing of
//! hashes or the verification pool.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

/// Tunables of the lockout tracker.
#[derive(Debug, Clone)]
pub struct LockoutConfig {
    /// Failures allowed before any waiting is imposed.
    pub free_failures: u32,
    /// Wait after the first failure beyond the free ones; doubles with each further one.
    pub base_delay: Duration,
    /// Ceiling of the wait.
    pub max_delay: Duration,
    /// A key with no failure for this long is forgotten.
    pub quiet_period: Duration,
    /// Entries per table (addresses, usernames).
    pub max_entries: usize,
}

impl Default for LockoutConfig {
    fn default() -> Self {
        Self {
            free_failures: 3,
            base_delay: Duration::from_millis(250),
            max_delay: Duration::from_secs(30),
            quiet_period: Duration::from_secs(15 * 60),
            max_entries: 4096,
        }
    }
}

/// The failure counters for source addresses and usernames.
#[derive(Debug)]
pub struct Lockout {
    cfg: LockoutConfig,
    addresses: Counters<AddressKey>,
    usernames: Counters<UsernameKey>,
}

impl Lockout {
    pub fn new(cfg: LockoutConfig) -> Self {
        Self {
            addresses: Counters::default(),
            usernames: Counters::default(),
            cfg,
        }
    }

    /// How long this attempt must still wait, or `None` if it may be verified now.
    /// The longer of the address's and the username's waits applies.
    pub fn retry_after(&self, peer: IpAddr, username: &str, now: Instant) -> Option<Duration> {
        let by_address = self
            .addresses
            .retry_after(&address_key(peer), now, &self.cfg);
        let by_username = self
            .usernames
            .retry_after(&username_key(username), now, &self.cfg);
        by_address.max(by_username)
    }

    /// Counts a failed verification against both the address and the username.
    pub fn record_failure(&mut self, peer: IpAddr, username: &str, now: Instant) {
        self.addresses
            .record_failure(address_key(peer), now, &self.cfg);
        self.usernames
            .record_failure(username_key(username), now, &self.cfg);
    }

    /// A correct password clears the username's counter. The address counter is left to
    /// decay: otherwise one valid account would let its holder reset the per-address
    /// budget while guessing other accounts' passwords.
    pub fn record_success(&mut self, username: &str) {
        self.usernames.remove(&username_key(username));
    }

    /// Number of tracked (addresses, usernames), for tests and metrics.
    pub fn tracked(&self) -> (usize, usize) {
        (self.addresses.entries.len(), self.usernames.entries.len())
    }
}

/// IPv4 addresses count individually; IPv6 addresses by their /64, because one host
/// can take any address in its prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum AddressKey {
    V4([u8; 4]),
    V6Prefix([u8; 8]),
}

fn address_key(peer: IpAddr) -> AddressKey {
    match peer {
        IpAddr::V4(v4) => AddressKey::V4(v4.octets()),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => AddressKey::V4(v4.octets()),
            None => {
                let mut prefix = [0u8; 8];
                prefix.copy_from_slice(&v6.octets()[..8]);
                AddressKey::V6Prefix(prefix)
            }
        },
    }
}

/// Usernames are kept as digests so a table entry has a fixed size whatever a client sent.
type UsernameKey = [u8; 32];

fn username_key(username: &str) -> UsernameKey {
    Sha256::digest(username.as_bytes()).into()
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    failures: u32,
    last_failure: Instant,
}

#[derive(Debug)]
struct Counters<K> {
    entries: HashMap<K, Entry>,
}

impl<K> Default for Counters<K> {
    fn default() -> Self {
        Self {
            entries: HashMap::new(),
        }
    }
}

impl<K: Eq + Hash + Copy> Counters<K> {
    fn retry_after(&self, key: &K, now: Instant, cfg: &LockoutConfig) -> Option<Duration> {
        let entry = self.entries.get(key)?;
        let since = now.saturating_duration_since(entry.last_failure);
        if since >= cfg.quiet_period {
            return None;
        }
        let wait = backoff(entry.failures, cfg)?;
        wait.checked_sub(since).filter(|rest| !rest.is_zero())
    }

    fn record_failure(&mut self, key: K, now: Instant, cfg: &LockoutConfig) {
        if !self.entries.contains_key(&key) && self.entries.len() >= cfg.max_entries {
            self.make_room(now, cfg);
        }
        let entry = self.entries.entry(key).or_insert(Entry {
            failures: 0,
            last_failure: now,
        });
        if now.saturating_duration_since(entry.last_failure) >= cfg.quiet_period {
            entry.failures = 0;
        }
        entry.failures = entry.failures.saturating_add(1);
        entry.last_failure = now;
    }

    fn remove(&mut self, key: &K) {
        self.entries.remove(key);
    }

    /// Forgets quiet keys; if the table is still full, the key idle the longest goes.
    fn make_room(&mut self, now: Instant, cfg: &LockoutConfig) {
        self.entries
            .retain(|_, e| now.saturating_duration_since(e.last_failure) < cfg.quiet_period);
        if self.entries.len() >= cfg.max_entries {
            let oldest = self
                .entries
                .iter()
                .min_by_key(|(_, e)| e.last_failure)
                .map(|(k, _)| *k);
            if let Some(oldest) = oldest {
                self.entries.remove(&oldest);
            }
        }
    }
}

/// The wait imposed after `failures` failures: none for the free ones, then
/// `base × 2^(failures − free)`, capped.
fn backoff(failures: u32, cfg: &LockoutConfig) -> Option<Duration> {
    let beyond = failures.checked_sub(cfg.free_failures)?;
    let factor = 1u32.checked_shl(beyond.min(31)).unwrap_or(u32::MAX);
    Some(
        cfg.base_delay
            .checked_mul(factor)
            .unwrap_or(cfg.max_delay)
            .min(cfg.max_delay),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 168, 1, 10));
    const B: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 168, 1, 11));

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn backoff_doubles_after_the_free_failures_and_caps() {
        let cfg = LockoutConfig::default();
        assert_eq!(backoff(2, &cfg), None);
        assert_eq!(backoff(3, &cfg), Some(ms(250)));
        assert_eq!(backoff(4, &cfg), Some(ms(500)));
        assert_eq!(backoff(9, &cfg), Some(ms(16_000)));
        assert_eq!(backoff(10, &cfg), Some(Duration::from_secs(30)));
        assert_eq!(backoff(u32::MAX, &cfg), Some(Duration::from_secs(30)));
    }

    #[test]
    fn progression_per_address_and_per_username() {
        let mut lockout = Lockout::new(LockoutConfig::default());
        let t0 = Instant::now();
        for i in 0..3 {
            assert_eq!(lockout.retry_after(A, "alice", t0 + ms(i)), None);
            lockout.record_failure(A, "alice", t0 + ms(i));
        }
        let last = t0 + ms(2);
        // Fourth attempt: 250 ms after the third failure.
        assert_eq!(lockout.retry_after(A, "alice", last), Some(ms(250)));
        assert_eq!(
            lockout.retry_after(A, "alice", last + ms(100)),
            Some(ms(150))
        );
        assert_eq!(lockout.retry_after(A, "alice", last + ms(250)), None);
        // The username is throttled from another address, the address for another name.
        assert_eq!(lockout.retry_after(B, "alice", last), Some(ms(250)));
        assert_eq!(lockout.retry_after(A, "bob", last), Some(ms(250)));
        assert_eq!(lockout.retry_after(B, "bob", last), None);
        // One more failure doubles the wait.
        lockout.record_failure(A, "alice", last + ms(300));
        assert_eq!(
            lockout.retry_after(A, "alice", last + ms(300)),
            Some(ms(500))
        );
    }

    #[test]
    fn success_clears_the_username_but_not_the_address() {
        let mut lockout = Lockout::new(LockoutConfig::default());
        let t0 = Instant::now();
        for _ in 0..4 {
            lockout.record_failure(A, "alice", t0);
        }
        lockout.record_success("alice");
        assert_eq!(lockout.retry_after(B, "alice", t0), None);
        assert!(lockout.retry_after(A, "carol", t0).is_some());
    }

    #[test]
    fn counters_decay_after_the_quiet_period() {
        let cfg = LockoutConfig::default();
        let quiet = cfg.quiet_period;
        let mut lockout = Lockout::new(cfg);
        let t0 = Instant::now();
        for _ in 0..20 {
            lockout.record_failure(A, "alice", t0);
        }
        assert_eq!(
            lockout.retry_after(A, "alice", t0),
            Some(Duration::from_secs(30))
        );
        assert_eq!(lockout.retry_after(A, "alice", t0 + quiet), None);
        // A failure after the quiet period starts counting from one again.
        lockout.record_failure(A, "alice", t0 + quiet);
        assert_eq!(lockout.retry_after(A, "alice", t0 + quiet), None);
    }

    #[test]
    fn ipv6_addresses_in_one_slash_64_share_a_counter() {
        let mut lockout = Lockout::new(LockoutConfig::default());
        let t0 = Instant::now();
        for i in 0..4u16 {
            let addr = IpAddr::V6(std::net::Ipv6Addr::new(0xfd00, 0, 0, 1, 0, 0, 0, i));
            lockout.record_failure(addr, &format!("user{i}"), t0);
        }
        let sibling = IpAddr::V6(std::net::Ipv6Addr::new(0xfd00, 0, 0, 1, 9, 9, 9, 9));
        let other_net = IpAddr::V6(std::net::Ipv6Addr::new(0xfd00, 0, 0, 2, 0, 0, 0, 1));
        assert!(lockout.retry_after(sibling, "fresh", t0).is_some());
        assert_eq!(lockout.retry_after(other_net, "fresh", t0), None);
    }

    #[test]
    fn tables_stay_bounded() {
        let cfg = LockoutConfig {
            max_entries: 16,
            ..LockoutConfig::default()
        };
        let mut lockout = Lockout::new(cfg);
        let t0 = Instant::now();
        for i in 0..1000u32 {
            let addr = IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 + i));
            lockout.record_failure(addr, &format!("user{i}"), t0 + ms(u64::from(i)));
        }
        assert_eq!(lockout.tracked(), (16, 16));
        // The most recent offender is still tracked.
        let last = IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 + 999));
        lockout.record_failure(last, "x", t0 + ms(1000));
        lockout.record_failure(last, "y", t0 + ms(1000));
        assert!(lockout.retry_after(last, "z", t0 + ms(1000)).is_some());
    }
}
