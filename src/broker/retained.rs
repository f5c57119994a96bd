//! Retained messages: the last message per topic, within a global count and byte
//! budget. It answers "which retained messages match this filter"; it knows nothing
//! of sessions or the wire.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use crate::protocol::topic;

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

    /// Sets (or, for an empty payload, clears) the retained message of its topic.
    pub fn set(
        &mut self,
        retained: Retained,
        max_messages: usize,
        max_bytes: usize,
    ) -> Result<(), RetainRefused> {
        let topic = Arc::clone(&retained.message.topic);
        let old_cost = self.by_topic.get(&topic).map_or(0, |r| r.message.cost());
        if retained.message.payload.is_empty() {
            if self.by_topic.remove(&topic).is_some() {
                self.bytes -= old_cost;
            }
            return Ok(());
        }
        let new_cost = retained.message.cost();
        let count_after = self.by_topic.len() + usize::from(old_cost == 0);
        if count_after > max_messages || self.bytes - old_cost + new_cost > max_bytes {
            return Err(RetainRefused::QuotaExceeded);
        }
        self.bytes = self.bytes - old_cost + new_cost;
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
            if let Some(r) = self.by_topic.remove(&t) {
                self.bytes -= r.message.cost();
            }
        }
        self.by_topic
            .values()
            .filter(|r| topic::matches(filter, &r.message.topic))
            .cloned()
            .collect()
    }

    pub fn iter(&self) -> impl Iterator<Item = &Retained> {
        self.by_topic.values()
    }
}
