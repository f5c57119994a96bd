//! A short-lived, bounded memory of successful verifications, so a Wi-Fi reconnect
//! storm does not re-run argon2 for every client. An entry is a SHA-256 over a
//! per-process random key and the length-prefixed (username, password, stored hash):
//! no password or unsalted digest of one is kept, and a changed stored hash misses.
//! Lookups compare every entry in constant time. It knows nothing of lockout or pools.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use subtle::{Choice, ConstantTimeEq};

type Fingerprint = [u8; 32];

#[derive(Debug)]
pub struct SuccessCache {
    key: [u8; 32],
    capacity: usize,
    ttl: Duration,
    /// Oldest first.
    entries: VecDeque<(Fingerprint, Instant)>,
}

impl SuccessCache {
    /// A cache with a fresh random key. If the system random source fails the cache is
    /// created disabled (capacity 0): every login then verifies, which is slower but safe.
    pub fn new(capacity: usize, ttl: Duration) -> Self {
        let mut key = [0u8; 32];
        let capacity = match getrandom::fill(&mut key) {
            Ok(()) => capacity,
            Err(err) => {
                tracing::warn!(%err, "no randomness for the login cache key; cache disabled");
                0
            }
        };
        Self {
            key,
            capacity,
            ttl,
            entries: VecDeque::new(),
        }
    }

    /// True if this exact (username, password, stored hash) verified within the TTL.
    pub fn contains(&self, username: &str, password: &[u8], stored: &str, now: Instant) -> bool {
        let wanted = self.fingerprint(username, password, stored);
        let mut found = Choice::from(0);
        for (fingerprint, added) in &self.entries {
            let fresh = Choice::from(u8::from(now.saturating_duration_since(*added) < self.ttl));
            found |= fingerprint.ct_eq(&wanted) & fresh;
        }
        found.into()
    }

    /// Remembers a successful verification, evicting expired and then the oldest entries.
    pub fn insert(&mut self, username: &str, password: &[u8], stored: &str, now: Instant) {
        if self.capacity == 0 {
            return;
        }
        let fingerprint = self.fingerprint(username, password, stored);
        self.entries.retain(|(f, added)| {
            now.saturating_duration_since(*added) < self.ttl && !bool::from(f.ct_eq(&fingerprint))
        });
        while self.entries.len() >= self.capacity {
            self.entries.pop_front();
        }
        self.entries.push_back((fingerprint, now));
    }

    /// Forgets everything (on reload: a removed user must not log in from the cache).
    pub fn clear(&mut self) {
        self.entries.clear();
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn fingerprint(&self, username: &str, password: &[u8], stored: &str) -> Fingerprint {
        let mut hasher = Sha256::new();
        hasher.update(self.key);
        // Length prefixes keep (username, password, stored) unambiguous whatever bytes
        // a password contains.
        for field in [username.as_bytes(), password, stored.as_bytes()] {
            hasher.update((field.len() as u64).to_be_bytes());
            hasher.update(field);
        }
        hasher.finalize().into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TTL: Duration = Duration::from_secs(600);

    #[test]
    fn hit_only_for_the_same_username_password_and_hash() {
        let mut cache = SuccessCache::new(8, TTL);
        let now = Instant::now();
        cache.insert("alice", b"pw", "$hash1", now);
        assert!(cache.contains("alice", b"pw", "$hash1", now));
        assert!(!cache.contains("alice", b"pw2", "$hash1", now));
        assert!(!cache.contains("bob", b"pw", "$hash1", now));
        assert!(!cache.contains("alice", b"pw", "$hash2", now));
    }

    #[test]
    fn field_boundaries_are_unambiguous() {
        let mut cache = SuccessCache::new(8, TTL);
        let now = Instant::now();
        cache.insert("ab", b"c", "h", now);
        assert!(!cache.contains("a", b"bc", "h", now));
    }

    #[test]
    fn entries_expire_and_capacity_is_bounded() {
        let mut cache = SuccessCache::new(4, TTL);
        let t0 = Instant::now();
        cache.insert("alice", b"pw", "h", t0);
        assert!(!cache.contains("alice", b"pw", "h", t0 + TTL));
        for i in 0..100 {
            cache.insert(&format!("user{i}"), b"pw", "h", t0);
        }
        assert_eq!(cache.len(), 4);
        assert!(cache.contains("user99", b"pw", "h", t0));
        assert!(!cache.contains("user0", b"pw", "h", t0));
    }

    #[test]
    fn clear_forgets_everything() {
        let mut cache = SuccessCache::new(4, TTL);
        let now = Instant::now();
        cache.insert("alice", b"pw", "h", now);
        cache.clear();
        assert!(cache.is_empty());
        assert!(!cache.contains("alice", b"pw", "h", now));
    }

    #[test]
    fn two_caches_use_different_keys() {
        let a = SuccessCache::new(1, TTL);
        let b = SuccessCache::new(1, TTL);
        assert_ne!(a.fingerprint("u", b"p", "h"), b.fingerprint("u", b"p", "h"));
    }
}
