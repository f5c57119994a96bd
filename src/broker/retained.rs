//! Retained messages: the last message per topic, within a global count and byte
//! budget. It answers "which retained messages match this filter"; it knows nothing
//! of sessions or the wire.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use moat_protocol::topic;

use super::mailbox::Message;

#[derive(Clone)]
pub struct Retained {
    pub message: Message,
    /// Who published it: a message whose publisher lost write access is withheld.
    pub publisher: Arc<str>,
}

/// Why a retained message was not kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetainRefused {
    QuotaExceeded,
}

#[derive(Default)]
pub struct RetainedStore {
    by_topic: HashMap<Arc<str>, Retained>,
    bytes: usize,
    /// Retained messages held per publishing identity (for per-identity quotas).
    per_publisher: HashMap<Arc<str>, usize>,
}

/// The quotas a retained update must respect.
#[derive(Debug, Clone, Copy)]
pub struct RetainQuota {
    pub max_messages: usize,
    pub max_bytes: usize,
    /// How many retained messages this publisher may hold.
    pub max_per_publisher: usize,
}

impl RetainedStore {
    pub fn len(&self) -> usize {
        self.by_topic.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_topic.is_empty()
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }

    fn forget(&mut self, topic: &Arc<str>) -> Option<Retained> {
        let old = self.by_topic.remove(topic)?;
        self.bytes -= old.message.cost();
        if let Some(n) = self.per_publisher.get_mut(&old.publisher) {
            *n -= 1;
            if *n == 0 {
                self.per_publisher.remove(&old.publisher);
            }
        }
        Some(old)
    }

    /// Sets (or, for an empty payload, clears) the retained message of its topic.
    pub fn set(&mut self, retained: Retained, quota: RetainQuota) -> Result<(), RetainRefused> {
        let topic = Arc::clone(retained.message.topic());
        if retained.message.payload().is_empty() {
            self.forget(&topic);
            return Ok(());
        }
        let old = self.by_topic.get(&topic);
        let old_cost = old.map_or(0, |r| r.message.cost());
        let same_publisher = old.is_some_and(|r| r.publisher == retained.publisher);
        let count_after = self.by_topic.len() + usize::from(old.is_none());
        let publisher_after = self
            .per_publisher
            .get(&retained.publisher)
            .copied()
            .unwrap_or(0)
            + usize::from(!same_publisher);
        if count_after > quota.max_messages
            || self.bytes - old_cost + retained.message.cost() > quota.max_bytes
            || publisher_after > quota.max_per_publisher
        {
            return Err(RetainRefused::QuotaExceeded);
        }
        self.forget(&topic);
        self.bytes += retained.message.cost();
        *self
            .per_publisher
            .entry(Arc::clone(&retained.publisher))
            .or_default() += 1;
        self.by_topic.insert(topic, retained);
        Ok(())
    }

    /// Retained messages matching a (non-shared) filter, dropping expired ones.
    pub fn matching(&mut self, filter: &str, now: Instant) -> Vec<Retained> {
        let expired: Vec<Arc<str>> = self
            .by_topic
            .iter()
            .filter(|(_, r)| r.message.is_expired(now))
            .map(|(t, _)| Arc::clone(t))
            .collect();
        for t in expired {
            self.forget(&t);
        }
        self.by_topic
            .values()
            .filter(|r| topic::matches(filter, r.message.topic()))
            .cloned()
            .collect()
    }

    pub fn iter(&self) -> impl Iterator<Item = &Retained> {
        self.by_topic.values()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use moat_protocol::QoS;

    fn retained(topic: &str, publisher: &str, payload: &'static [u8]) -> Retained {
        Retained {
            message: Message::new(topic, Bytes::from_static(payload), QoS::AtMostOnce, true),
            publisher: Arc::from(publisher),
        }
    }

    const QUOTA: RetainQuota = RetainQuota {
        max_messages: 3,
        max_bytes: 1 << 20,
        max_per_publisher: 2,
    };

    #[test]
    fn per_publisher_and_global_quotas_hold() {
        let mut store = RetainedStore::default();
        assert!(store.set(retained("a", "p", b"1"), QUOTA).is_ok());
        assert!(store.set(retained("b", "p", b"1"), QUOTA).is_ok());
        // A third topic for the same publisher is over its quota ...
        assert_eq!(
            store.set(retained("c", "p", b"1"), QUOTA),
            Err(RetainRefused::QuotaExceeded)
        );
        // ... replacing one of its own is not.
        assert!(store.set(retained("b", "p", b"2"), QUOTA).is_ok());
        assert!(store.set(retained("c", "q", b"1"), QUOTA).is_ok());
        assert_eq!(
            store.set(retained("d", "q", b"1"), QUOTA),
            Err(RetainRefused::QuotaExceeded)
        );
        // Clearing frees the quota.
        assert!(store.set(retained("a", "p", b""), QUOTA).is_ok());
        assert!(store.set(retained("e", "p", b"1"), QUOTA).is_ok());
        assert_eq!(store.len(), 3);
    }
}
