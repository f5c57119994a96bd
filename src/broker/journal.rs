//! The broker's side of durability: which broker events become store operations,
//! gathered per event into one batch and submitted through one reserved slot (so
//! they keep the order of the broker's lock), and the conversion between broker
//! messages and stored records. The store itself knows nothing of the broker.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::protocol::properties::{from_blob, to_blob};
use crate::protocol::{Properties, QoS};
use crate::store::{Commit, Op, Slot, Store, StoreError, StoredMessage};

use super::mailbox::Message;
use super::session::SessionLink;

/// The durable store, if persistence is on.
#[derive(Clone, Default)]
pub struct Journal {
    store: Option<Arc<Store>>,
}

impl Journal {
    pub fn new(store: Option<Arc<Store>>) -> Journal {
        Journal { store }
    }

    pub fn is_enabled(&self) -> bool {
        self.store.is_some()
    }

    pub fn store(&self) -> Option<&Arc<Store>> {
        self.store.as_ref()
    }

    /// Reserves room for one event's operations (waits while the write queue is
    /// full). `None` when persistence is off or the store has stopped.
    pub async fn reserve(&self) -> Option<Slot> {
        let store = self.store.as_ref()?;
        unavailable_as_none(store.reserve().await)
    }

    /// [`Journal::reserve`] without waiting: `Err(QueueFull)` when it would wait.
    pub fn try_reserve(&self) -> Result<Option<Slot>, QueueFull> {
        let Some(store) = self.store.as_ref() else {
            return Ok(None);
        };
        match store.try_reserve() {
            Err(StoreError::Busy) => Err(QueueFull),
            result => Ok(unavailable_as_none(result)),
        }
    }
}

/// The store's write queue is full; [`Journal::reserve`] waits for room.
#[derive(Debug)]
pub struct QueueFull;

fn unavailable_as_none(reserved: Result<Slot, StoreError>) -> Option<Slot> {
    match reserved {
        Ok(slot) => Some(slot),
        Err(e) => {
            tracing::error!(error = %e, "durable store unavailable");
            None
        }
    }
}

/// The operations one broker event implies, and the mailboxes holding messages
/// staged until those operations are submitted.
#[derive(Default)]
pub struct Batch {
    ops: Vec<Op>,
    staged: Vec<Arc<SessionLink>>,
}

impl Batch {
    pub fn push(&mut self, op: Op) {
        self.ops.push(op);
    }

    /// Remembers a session whose mailbox staged a journaled message.
    pub fn staged_in(&mut self, session: &Arc<SessionLink>) {
        if !self.staged.iter().any(|s| Arc::ptr_eq(s, session)) {
            self.staged.push(Arc::clone(session));
        }
    }

    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// Submits the batch through `slot`, then releases the staged messages. Call it
    /// under the broker lock that ordered the batch, so batches reach the store in
    /// the order their messages reach the mailboxes. Nothing to submit (or no
    /// store) gives no commit to wait for.
    pub fn submit(self, slot: Option<Slot>) -> Option<Commit> {
        let commit = if self.ops.is_empty() {
            None
        } else {
            slot.map(|slot| slot.submit(Op::Batch(self.ops)))
        };
        for session in self.staged {
            session.mailbox.release_staged();
        }
        commit
    }
}

/// Waits for a commit nobody answers on, logging a failure with `what` it was for.
pub async fn settle(commit: Option<Commit>, what: &str) {
    if let Some(commit) = commit
        && let Err(e) = commit.await
    {
        tracing::warn!(error = %e, "durable store: {what} not stored");
    }
}

/// A broker message as a stored record; `$SYS` never gets here.
pub fn stored_message(message: &Message, now: Instant) -> StoredMessage {
    let properties = to_blob(&message.properties).unwrap_or_else(|e| {
        // Properties came through our own decoder, so they always encode.
        tracing::warn!(error = %e, "message properties not stored");
        Vec::new()
    });
    StoredMessage {
        topic: message.topic.to_string(),
        payload: message.payload.clone(),
        qos: message.qos as u8,
        retain: message.retain,
        properties,
        expires_in_secs: message.expires_at.map(|t| {
            let left = t.saturating_duration_since(now).as_secs();
            u32::try_from(left).unwrap_or(u32::MAX)
        }),
    }
}

/// A stored record back as a broker message.
pub fn restored_message(stored: StoredMessage, seq: u64, now: Instant) -> Message {
    let properties = if stored.properties.is_empty() {
        Properties::default()
    } else {
        from_blob(&stored.properties).unwrap_or_else(|e| {
            tracing::warn!(error = %e, topic = %stored.topic, "stored properties unreadable; dropped");
            Properties::default()
        })
    };
    Message {
        topic: Arc::from(stored.topic.as_str()),
        payload: stored.payload,
        qos: QoS::from_u8(stored.qos).unwrap_or(QoS::AtLeastOnce),
        retain: stored.retain,
        properties: Arc::new(properties),
        subscription_ids: Vec::new(),
        expires_at: stored
            .expires_in_secs
            .map(|secs| now + Duration::from_secs(u64::from(secs))),
        seq,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    #[test]
    fn messages_round_trip_through_records() {
        let now = Instant::now();
        let message = Message {
            topic: Arc::from("a/b"),
            payload: Bytes::from_static(b"p"),
            qos: QoS::ExactlyOnce,
            retain: true,
            properties: Arc::new(Properties {
                content_type: Some("x".into()),
                ..Properties::default()
            }),
            subscription_ids: Vec::new(),
            expires_at: Some(now + Duration::from_secs(30)),
            seq: 7,
        };
        let back = restored_message(stored_message(&message, now), 7, now);
        assert_eq!(back.topic, message.topic);
        assert_eq!(back.payload, message.payload);
        assert_eq!(back.qos, message.qos);
        assert_eq!(back.properties, message.properties);
        assert_eq!(back.seq, 7);
        assert!(back.expires_at.is_some());
    }
}
