//! Denials: every publish, subscribe, retain, will or delivery the broker refused,
//! counted per identity, kind and topic pattern, so that nothing is denied silently.
//! The map is bounded ([`MAX_KEYS`] distinct keys; later new keys are only counted as
//! `uncounted`), and a topic is collapsed to a pattern ([`pattern_of`]) so that one
//! misconfigured device cannot fill it with its thousand topics. It only counts:
//! logging is the caller's job, and writing the snapshot out is the server's.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use serde::{Deserialize, Serialize};

/// Distinct (identity, kind, pattern) keys kept. A home has tens of identities; a
/// key costs about 200 bytes, so the map stays under 64 KB.
pub const MAX_KEYS: usize = 256;

/// Topic levels a pattern keeps before it ends in `#`.
pub const PATTERN_LEVELS: usize = 2;

/// What was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DenialKind {
    /// PUBLISH to a topic no publish grant matches.
    Publish,
    /// A retained PUBLISH (or will) from an identity without `retain`.
    Retain,
    /// A will whose topic no publish grant matches.
    Will,
    /// A SUBSCRIBE filter no subscribe grant covers.
    Subscribe,
    /// A SUBSCRIBE filter past the identity's `max_subscriptions`.
    SubscribeQuota,
    /// A SUBSCRIBE filter longer or deeper than the broker's limits.
    SubscribeInvalid,
    /// A message not delivered because no subscribe grant matches its topic now.
    Receive,
    /// A message dropped for a client whose queue was full (it reads slower than
    /// its publishers send); counted per message.
    QueueFull,
}

impl DenialKind {
    pub const ALL: [DenialKind; 8] = [
        DenialKind::Publish,
        DenialKind::Retain,
        DenialKind::Will,
        DenialKind::Subscribe,
        DenialKind::SubscribeQuota,
        DenialKind::SubscribeInvalid,
        DenialKind::Receive,
        DenialKind::QueueFull,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            DenialKind::Publish => "publish",
            DenialKind::Retain => "retain",
            DenialKind::Will => "will",
            DenialKind::Subscribe => "subscribe",
            DenialKind::SubscribeQuota => "subscribe-quota",
            DenialKind::SubscribeInvalid => "subscribe-invalid",
            DenialKind::Receive => "receive",
            DenialKind::QueueFull => "queue-full",
        }
    }
}

/// One counted key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DenialEntry {
    pub identity: String,
    pub kind: DenialKind,
    /// The collapsed topic or filter ([`pattern_of`]).
    pub pattern: String,
    pub count: u64,
    /// The last refused topic or filter under this key, as sent.
    pub example: String,
}

/// The counts at one moment, most frequent first.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DenialsSnapshot {
    /// Every denial, counted or not.
    pub total: u64,
    /// Denials whose key did not fit in the map.
    pub uncounted: u64,
    pub entries: Vec<DenialEntry>,
}

/// (identity, kind, pattern).
type Key = (String, DenialKind, String);

#[derive(Default)]
pub struct Denials {
    total: AtomicU64,
    /// Every denial by kind, counted even when its key did not fit in the map.
    by_kind: [AtomicU64; DenialKind::ALL.len()],
    uncounted: AtomicU64,
    /// Each key's count and last example.
    map: Mutex<HashMap<Key, (u64, String)>>,
}

/// Collapses a topic or filter to what a grant would name: a `$share/<group>/`
/// prefix is dropped (grants are checked without it), the first
/// [`PATTERN_LEVELS`] levels are kept and anything deeper becomes `#`. Two levels
/// keep the ecosystem and the device or service (`frigate/front_door/#`,
/// `tele/plug-1/#`) without one key per entity.
pub fn pattern_of(topic: &str) -> String {
    let inner = moat_protocol::topic::parse_shared(topic)
        .ok()
        .flatten()
        .map_or(topic, |(_, inner)| inner);
    let levels: Vec<&str> = inner.splitn(PATTERN_LEVELS + 1, '/').collect();
    if levels.len() <= PATTERN_LEVELS {
        return inner.to_owned();
    }
    let mut out = levels[..PATTERN_LEVELS].join("/");
    out.push_str("/#");
    out
}

impl Denials {
    /// Counts one denial of `topic` (a topic name or filter) for `identity`.
    pub fn record(&self, identity: &str, kind: DenialKind, topic: &str) {
        self.record_n(identity, kind, topic, 1);
    }

    /// Counts `n` denials of `topic` at once.
    pub fn record_n(&self, identity: &str, kind: DenialKind, topic: &str, n: u64) {
        if n == 0 {
            return;
        }
        self.total.fetch_add(n, Relaxed);
        self.by_kind[kind as usize].fetch_add(n, Relaxed);
        let key = (identity.to_owned(), kind, pattern_of(topic));
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        let room = map.len() < MAX_KEYS;
        match map.get_mut(&key) {
            Some((count, example)) => {
                *count += n;
                if example != topic {
                    topic.clone_into(example);
                }
            }
            None if room => {
                map.insert(key, (n, topic.to_owned()));
            }
            None => {
                self.uncounted.fetch_add(n, Relaxed);
            }
        }
    }

    pub fn total(&self) -> u64 {
        self.total.load(Relaxed)
    }

    /// Every denial so far by kind, in the order of [`DenialKind::ALL`].
    pub fn by_kind(&self) -> [(DenialKind, u64); DenialKind::ALL.len()] {
        std::array::from_fn(|i| (DenialKind::ALL[i], self.by_kind[i].load(Relaxed)))
    }

    /// Every key, most frequent first (ties by identity, kind, pattern).
    pub fn snapshot(&self) -> DenialsSnapshot {
        let map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        let mut entries: Vec<DenialEntry> = map
            .iter()
            .map(
                |((identity, kind, pattern), (count, example))| DenialEntry {
                    identity: identity.clone(),
                    kind: *kind,
                    pattern: pattern.clone(),
                    count: *count,
                    example: example.clone(),
                },
            )
            .collect();
        drop(map);
        entries.sort_by(|a, b| {
            b.count.cmp(&a.count).then_with(|| {
                (&a.identity, a.kind, &a.pattern).cmp(&(&b.identity, b.kind, &b.pattern))
            })
        });
        DenialsSnapshot {
            total: self.total(),
            uncounted: self.uncounted.load(Relaxed),
            entries,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_collapse_to_two_levels_and_shares_lose_their_prefix() {
        assert_eq!(pattern_of("frigate/front/detect/set"), "frigate/front/#");
        assert_eq!(pattern_of("frigate/events"), "frigate/events");
        assert_eq!(pattern_of("status"), "status");
        assert_eq!(pattern_of("$share/g/jobs/a/b"), "jobs/a/#");
        assert_eq!(pattern_of("a/+/#"), "a/+/#");
        assert_eq!(pattern_of("$SYS/broker/load"), "$SYS/broker/#");
    }

    #[test]
    fn counts_per_key_most_frequent_first_and_bounded() {
        let d = Denials::default();
        d.record("cam", DenialKind::Publish, "frigate/front/detect/set");
        d.record("cam", DenialKind::Publish, "frigate/front/motion/set");
        d.record("cam", DenialKind::Retain, "frigate/front/x");
        let s = d.snapshot();
        assert_eq!(s.total, 3);
        assert_eq!(s.entries.len(), 2);
        assert_eq!(s.entries[0].count, 2);
        assert_eq!(s.entries[0].pattern, "frigate/front/#");
        assert_eq!(s.entries[0].example, "frigate/front/motion/set");
        for i in 0..MAX_KEYS + 10 {
            d.record(&format!("id{i}"), DenialKind::Subscribe, "a/b");
        }
        let s = d.snapshot();
        assert_eq!(s.entries.len(), MAX_KEYS);
        assert_eq!(s.total, 3 + MAX_KEYS as u64 + 10);
        assert_eq!(s.uncounted, 12, "two keys were already there");
        let by_kind = d.by_kind();
        assert_eq!(by_kind[0], (DenialKind::Publish, 2));
        assert_eq!(by_kind[1], (DenialKind::Retain, 1));
        assert_eq!(by_kind[3], (DenialKind::Subscribe, MAX_KEYS as u64 + 10));
        assert_eq!(by_kind.iter().map(|(_, n)| n).sum::<u64>(), s.total);
        let json = serde_json::to_string(&s).unwrap();
        let back: DenialsSnapshot = serde_json::from_str(&json).unwrap();
        assert_eq!(back, s);
    }
}
