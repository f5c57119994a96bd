//! The `Authenticator`: one place where every password login is decided. It combines
//! the success cache, the lockout tracker and a bounded verification pool: argon2 runs
//! on tokio's blocking threads, at most `concurrency` at a time, with at most `queue`
//! callers waiting (each at most `queue_wait`); anything beyond is refused as busy.
//! Unknown users are verified against a dummy hash so they cost what a wrong password
//! costs, and every attempt ends in exactly one audit line (target `moat::audit`)
//! without the password. It knows credentials, never sockets, sessions or the manifest.
//!
//! Order of checks: (1) the cache, so a client that recently proved this exact
//! password gets in even while an attacker has its username throttled; (2) lockout, so
//! a throttled attempt costs nothing; (3) the pool. A failure is answered only after
//! `failure_delay`, which the caller's task sleeps without holding a pool slot.

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use zeroize::Zeroizing;

use super::cache::SuccessCache;
use super::lockout::{Lockout, LockoutConfig};
use super::verify::{Scratch, is_weak_import, verify_password_with};
use crate::latency::{LatencyHistogram, LatencySnapshot};

/// A well-formed argon2id hash with the default parameters that no password matches
/// (its salt and output are random bytes), verified for unknown users.
const DUMMY_HASH: &str = "$argon2id$v=19$m=19456,t=2,p=1$rwAcOcgk4JjctKxWE1NUow$n9DWbC0KwOIcFEx/4WhFg5s7wRm/UUtiy56qonMPcwI";

/// Working memory larger than this (a stored hash with an unusual memory cost) is
/// freed after use instead of being kept for the next verification.
const KEEP_SCRATCH_BYTES: usize = 64 * 1024 * 1024;

/// Limits of the authenticator; `Default` gives the appliance's values.
#[derive(Debug, Clone)]
pub struct AuthConfig {
    /// Verifications running at once (each argon2id default takes 19 MiB).
    pub concurrency: usize,
    /// Callers allowed to wait for a verification slot.
    pub queue: usize,
    /// Longest wait for a slot before the caller is told the server is busy.
    pub queue_wait: Duration,
    /// Constant pause before a failure is answered.
    pub failure_delay: Duration,
    pub lockout: LockoutConfig,
    /// Successful verifications remembered.
    pub cache_capacity: usize,
    /// How long a remembered success stays valid.
    pub cache_ttl: Duration,
    /// Keep one argon2 working buffer (19 MiB) per slot between verifications.
    /// Needed under glibc's default malloc, which otherwise leaves freed buffers
    /// resident in per-thread arenas (a storm of 60 wrong passwords: 280 MB);
    /// unnecessary when freed large blocks are unmapped (see `commands::serve`),
    /// and then an idle broker gives the memory back.
    pub keep_working_memory: bool,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            concurrency: 2,
            queue: 16,
            queue_wait: Duration::from_secs(5),
            failure_delay: Duration::from_millis(750),
            lockout: LockoutConfig::default(),
            cache_capacity: 1024,
            cache_ttl: Duration::from_secs(10 * 60),
            keep_working_memory: true,
        }
    }
}

/// Why a login was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// Wrong password, unknown user or unusable stored hash (the client learns nothing more).
    #[error("bad username or password")]
    Denied,
    /// No verification slot in time: answer "server busy/unavailable".
    #[error("server busy")]
    Busy,
    /// Too many recent failures from this address or for this username.
    #[error("too many failed logins; retry after {retry_after:?}")]
    Throttled { retry_after: Duration },
}

/// Counters for `$SYS` and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AuthStats {
    pub accepted: u64,
    pub denied: u64,
    pub busy: u64,
    pub throttled: u64,
    pub cache_hits: u64,
    /// Hash computations run on the blocking pool.
    pub verifications: u64,
}

#[derive(Debug, Default)]
struct Counters {
    accepted: AtomicU64,
    denied: AtomicU64,
    busy: AtomicU64,
    throttled: AtomicU64,
    cache_hits: AtomicU64,
    verifications: AtomicU64,
}

#[derive(Debug)]
pub struct Authenticator {
    cfg: AuthConfig,
    permits: Arc<Semaphore>,
    waiting: AtomicUsize,
    lockout: Mutex<Lockout>,
    cache: Mutex<SuccessCache>,
    counters: Counters,
    /// Time from asking for a verification slot to getting it.
    queue_wait: LatencyHistogram,
    /// argon2 working memory, at most one per verification slot.
    scratch: Arc<Mutex<Vec<Scratch>>>,
}

impl Authenticator {
    pub fn new(cfg: AuthConfig) -> Arc<Authenticator> {
        Arc::new(Authenticator {
            permits: Arc::new(Semaphore::new(cfg.concurrency.max(1))),
            waiting: AtomicUsize::new(0),
            lockout: Mutex::new(Lockout::new(cfg.lockout.clone())),
            cache: Mutex::new(SuccessCache::new(cfg.cache_capacity, cfg.cache_ttl)),
            counters: Counters::default(),
            queue_wait: LatencyHistogram::default(),
            scratch: Arc::new(Mutex::new(Vec::new())),
            cfg,
        })
    }

    /// Decides one password login. `stored` is `None` for an unknown user.
    pub async fn verify(
        &self,
        username: &str,
        stored: Option<&str>,
        password: &[u8],
        peer: IpAddr,
    ) -> Result<(), AuthError> {
        let started = Instant::now();
        if let Some(stored) = stored
            && lock(&self.cache).contains(username, password, stored, started)
        {
            self.counters.cache_hits.fetch_add(1, Ordering::Relaxed);
            self.accept(username, peer, stored, true);
            return Ok(());
        }

        if let Some(retry_after) = lock(&self.lockout).retry_after(peer, username, started) {
            self.counters.throttled.fetch_add(1, Ordering::Relaxed);
            audit(username, peer, "throttled", "too many recent failures");
            return Err(AuthError::Throttled { retry_after });
        }

        let asked = Instant::now();
        let Some(permit) = self.acquire_slot().await else {
            self.counters.busy.fetch_add(1, Ordering::Relaxed);
            audit(username, peer, "busy", "no verification slot");
            return Err(AuthError::Busy);
        };

        self.queue_wait.observe(asked.elapsed());
        let hash = stored.unwrap_or(DUMMY_HASH).to_owned();
        let secret = Zeroizing::new(password.to_vec());
        self.counters.verifications.fetch_add(1, Ordering::Relaxed);
        // spawn_blocking cannot be cancelled, so the permit travels with the work and is
        // released when the hash is done, even if this caller has gone away.
        let scratch_pool = Arc::clone(&self.scratch);
        let keep = self.cfg.keep_working_memory;
        let outcome = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let mut scratch = lock(&scratch_pool).pop().unwrap_or_default();
            let result = verify_password_with(&hash, &secret, &mut scratch);
            if keep && scratch.capacity_bytes() <= KEEP_SCRATCH_BYTES {
                lock(&scratch_pool).push(scratch);
            }
            result
        })
        .await;

        let reason = match (stored, outcome) {
            (Some(stored), Ok(Ok(true))) => {
                lock(&self.cache).insert(username, password, stored, Instant::now());
                self.accept(username, peer, stored, false);
                return Ok(());
            }
            (None, _) => "unknown user",
            (Some(_), Ok(Ok(false))) => "wrong password",
            (Some(_), Ok(Err(err))) => {
                tracing::warn!(user = username, %err, "stored password hash is unusable");
                "unusable stored hash"
            }
            (Some(_), Err(_)) => "verification task failed",
        };
        lock(&self.lockout).record_failure(peer, username, Instant::now());
        self.counters.denied.fetch_add(1, Ordering::Relaxed);
        audit(username, peer, "denied", reason);
        tokio::time::sleep(self.cfg.failure_delay).await;
        Err(AuthError::Denied)
    }

    /// Empties the success cache (on reload, so removed or changed identities cannot
    /// log in from memory).
    pub fn clear_cache(&self) {
        lock(&self.cache).clear();
    }

    pub fn stats(&self) -> AuthStats {
        let c = &self.counters;
        AuthStats {
            accepted: c.accepted.load(Ordering::Relaxed),
            denied: c.denied.load(Ordering::Relaxed),
            busy: c.busy.load(Ordering::Relaxed),
            throttled: c.throttled.load(Ordering::Relaxed),
            cache_hits: c.cache_hits.load(Ordering::Relaxed),
            verifications: c.verifications.load(Ordering::Relaxed),
        }
    }

    /// How long verifications waited for a slot (those that got one; the others
    /// are counted as `busy`).
    pub fn queue_wait(&self) -> LatencySnapshot {
        self.queue_wait.snapshot()
    }

    fn accept(&self, username: &str, peer: IpAddr, stored: &str, cached: bool) {
        lock(&self.lockout).record_success(username);
        self.counters.accepted.fetch_add(1, Ordering::Relaxed);
        tracing::info!(
            target: "moat::audit",
            user = username,
            peer = %peer,
            outcome = "accepted",
            cached,
            weak_hash = is_weak_import(stored),
        );
    }

    /// A verification slot: at once if one is free, else after waiting in the bounded
    /// queue for at most `queue_wait`. `None` means busy.
    async fn acquire_slot(&self) -> Option<OwnedSemaphorePermit> {
        if let Ok(permit) = Arc::clone(&self.permits).try_acquire_owned() {
            return Some(permit);
        }
        let queue = self.cfg.queue;
        self.waiting
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |w| {
                (w < queue).then_some(w + 1)
            })
            .ok()?;
        let _place = QueuePlace(&self.waiting);
        tokio::time::timeout(
            self.cfg.queue_wait,
            Arc::clone(&self.permits).acquire_owned(),
        )
        .await
        .ok()?
        .ok()
    }
}

/// Frees a queue place when its waiter is done or dropped.
struct QueuePlace<'a>(&'a AtomicUsize);

impl Drop for QueuePlace<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A poisoned lock only means another task panicked mid-update of a counter table;
/// the data is still usable, and refusing all logins would be worse.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The one audit line of a refused attempt (`accept` writes the successful one).
/// The log formatter (`crate::logging`) escapes the username like every field.
fn audit(username: &str, peer: IpAddr, outcome: &'static str, reason: &'static str) {
    tracing::info!(target: "moat::audit", user = username, peer = %peer, outcome, reason);
}

#[cfg(test)]
mod tests;
