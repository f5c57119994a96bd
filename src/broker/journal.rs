//! The broker's side of durability, and its whole vocabulary. Every store operation
//! the broker writes is built here by a function named after the broker event it
//! records (`subscribed`, `queued`, `sent`, `released`, `acknowledged` ...); one
//! event's operations are gathered into one [`Batch`] and submitted through one
//! [`Reservation`] taken before the broker lock, so they reach the store in the
//! order of that lock; the event hands back a [`Durable`] to wait for before it is
//! acknowledged. Also here: the conversion between broker messages and stored
//! records (subscription options byte included), and what a store refusal means to
//! an MQTT client. The store itself knows nothing of the broker or of MQTT; nothing
//! outside this file builds an [`Op`].

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use crate::store::{
    Commit, InflightOut, Op, QueuedMessage, Slot, Store, StoreError, StoredInflightIn,
    StoredInflightOut, StoredMessage, StoredRetained, StoredSession, StoredSubscription,
};
use moat_protocol::{Properties, QoS, ReasonCode, RetainHandling, SubscriptionOptions};
use moat_protocol::{properties_from_blob, properties_to_blob};

use super::mailbox::{Body, InFlight, Message, shared_properties};
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
    /// full). Empty when persistence is off or the store has stopped.
    pub async fn reserve(&self) -> Reservation {
        let Some(store) = self.store.as_ref() else {
            return Reservation::NONE;
        };
        unavailable_as_none(store.reserve().await)
    }

    /// [`Journal::reserve`] without waiting: `Err(QueueFull)` when it would wait.
    pub fn try_reserve(&self) -> Result<Reservation, QueueFull> {
        let Some(store) = self.store.as_ref() else {
            return Ok(Reservation::NONE);
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

fn unavailable_as_none(reserved: Result<Slot, StoreError>) -> Reservation {
    match reserved {
        Ok(slot) => Reservation(Some(slot)),
        Err(e) => {
            tracing::error!(error = %e, "durable store unavailable");
            Reservation::NONE
        }
    }
}

/// Room in the store's write queue for one broker event's operations, reserved
/// before the broker lock is taken (reserving may wait; code under the lock must
/// not). Empty when persistence is off or the store has stopped: the event is
/// then not recorded.
pub struct Reservation(Option<Slot>);

impl Reservation {
    /// No room: the event records nothing.
    pub const NONE: Reservation = Reservation(None);

    /// Records one event that is a single operation, built only if there is room
    /// (nothing is built when persistence is off).
    pub fn record(self, op: impl FnOnce() -> Op) -> Durable {
        Durable(self.0.map(|slot| slot.submit(op())))
    }

    /// Whether this holds room in the write queue.
    pub fn is_reserved(&self) -> bool {
        self.0.is_some()
    }

    /// The room, leaving none here.
    pub fn take(&mut self) -> Reservation {
        Reservation(self.0.take())
    }
}

/// What an acknowledgement waits for: the commit of its event's store operations.
/// Ready at once when the event recorded nothing. As a future it yields the
/// store's refusal, if any ([`refusal_reason`] says what to tell the client).
#[derive(Default)]
pub struct Durable(Option<Commit>);

impl Durable {
    /// Waits for a commit nobody answers on, logging a failure with `what` it was for.
    pub async fn settle(self, what: &str) {
        if let Err(e) = self.await {
            tracing::warn!(error = %e, "durable store: {what} not stored");
        }
    }
}

impl Future for Durable {
    type Output = Result<(), StoreError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match &mut self.0 {
            None => Poll::Ready(Ok(())),
            Some(commit) => Pin::new(commit).poll(cx),
        }
    }
}

/// The MQTT 5 reason code for a PUBACK/PUBREC refused because the store refused
/// its message: `QuotaExceeded` (0x97) when the disk (or the store's size cap) is
/// full or the write queue is, `UnspecifiedError` (0x80) for anything else.
pub fn refusal_reason(error: &StoreError) -> ReasonCode {
    match error {
        StoreError::DiskFull | StoreError::Busy => ReasonCode::QuotaExceeded,
        _ => ReasonCode::UnspecifiedError,
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
    /// Adds operations built by this module's vocabulary.
    pub fn push(&mut self, ops: impl IntoIterator<Item = Op>) {
        self.ops.extend(ops);
    }

    /// Queues a message journaled at position `seq` of a persistent session's
    /// queue; its mailbox holds it back until the batch is submitted.
    pub fn queued(&mut self, session: &Arc<SessionLink>, seq: u64, message: StoredMessage) {
        self.ops.push(Op::Enqueue(QueuedMessage {
            client_id: session.client_id.to_string(),
            seq,
            message,
        }));
        if !self.staged.iter().any(|s| Arc::ptr_eq(s, session)) {
            self.staged.push(Arc::clone(session));
        }
    }

    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// Submits the batch through `room`, then releases the staged messages. Call it
    /// under the broker lock that ordered the batch, so batches reach the store in
    /// the order their messages reach the mailboxes. Nothing to submit (or no
    /// store) gives nothing to wait for.
    pub fn submit(self, mut room: Reservation) -> Durable {
        self.submit_keeping(&mut room)
    }

    /// [`Batch::submit`], taking the room only if there is something to record: a
    /// caller handling several events in a row keeps unused room for the next one
    /// (reserving and releasing it cost ~280 instructions, BENCHMARKS.md).
    pub fn submit_keeping(self, room: &mut Reservation) -> Durable {
        let durable = if self.ops.is_empty() {
            Durable::default()
        } else {
            room.take().record(|| Op::Batch(self.ops))
        };
        for session in self.staged {
            session.mailbox.release_staged();
        }
        durable
    }
}

// The vocabulary: one function per broker event that changes durable state.

fn expiry_secs(expiry: Duration) -> u32 {
    u32::try_from(expiry.as_secs()).unwrap_or(u32::MAX)
}

/// A persistent session attached (created, resumed or taken over): its expiry
/// clock stops.
pub fn session_kept(client_id: &str, owner: &str, expiry: Duration) -> Op {
    Op::PutSession(StoredSession {
        client_id: client_id.to_owned(),
        owner: owner.to_owned(),
        expiry_secs: expiry_secs(expiry),
    })
}

/// A persistent session lost its connection: kept with its (possibly new)
/// expiry, whose clock starts now.
pub fn session_disconnected(session: &SessionLink, expiry: Duration) -> [Op; 2] {
    [
        session_kept(&session.client_id, &session.owner, expiry),
        Op::SessionDisconnected {
            client_id: session.client_id.to_string(),
        },
    ]
}

/// A session ended (expired, cleaned, its owner removed): it goes with its
/// subscriptions, queue and in-flight state.
pub fn session_ended(client_id: &str) -> Op {
    Op::DeleteSession {
        client_id: client_id.to_owned(),
    }
}

/// A persistent session subscribed (or changed a subscription's options).
pub fn subscribed(
    session: &SessionLink,
    filter: &str,
    options: SubscriptionOptions,
    identifier: Option<u32>,
) -> Op {
    Op::PutSubscription(StoredSubscription {
        client_id: session.client_id.to_string(),
        filter: filter.to_owned(),
        options: options_byte(options),
        identifier,
    })
}

/// A persistent session's subscription ended (UNSUBSCRIBE, or a reload or restart
/// that no longer allows it).
pub fn unsubscribed(client_id: &str, filter: &str) -> Op {
    Op::DeleteSubscription {
        client_id: client_id.to_owned(),
        filter: filter.to_owned(),
    }
}

/// A retained message was set, or cleared by an empty payload.
pub fn retained(publisher: &str, message: &Message, now: Instant) -> Op {
    if message.payload().is_empty() {
        Op::DeleteRetained {
            topic: message.topic().to_string(),
        }
    } else {
        Op::PutRetained(StoredRetained {
            publisher: publisher.to_owned(),
            message: stored_message(message, now),
        })
    }
}

/// Inbound QoS 2: a message was routed and its packet id awaits PUBREL, so a
/// resend after a crash is acknowledged, not routed twice.
pub fn exactly_once_received(session: &SessionLink, packet_id: u16) -> Op {
    Op::PutInflightIn(StoredInflightIn {
        client_id: session.client_id.to_string(),
        packet_id,
    })
}

/// Inbound QoS 2: PUBREL arrived; the packet id is free again.
pub fn exactly_once_completed(session: &SessionLink, packet_id: u16) -> Op {
    Op::DeleteInflightIn {
        client_id: session.client_id.to_string(),
        packet_id,
    }
}

/// Outbound QoS 2: a queued message is sent for the first time, under `packet_id`
/// (a resend after a crash must reuse it, or the client would see it twice).
pub fn sent(session: &SessionLink, packet_id: u16, message: &Message, now: Instant) -> [Op; 2] {
    [
        Op::PutInflightOut(StoredInflightOut {
            client_id: session.client_id.to_string(),
            packet_id,
            state: InflightOut::Published(stored_message(message, now)),
        }),
        Op::Dequeue {
            client_id: session.client_id.to_string(),
            seq: message.seq,
        },
    ]
}

/// Outbound QoS 2: PUBREC arrived and PUBREL is due; after a crash the client gets
/// PUBREL again, never the PUBLISH.
pub fn released(session: &SessionLink, packet_id: u16) -> Op {
    Op::PutInflightOut(StoredInflightOut {
        client_id: session.client_id.to_string(),
        packet_id,
        state: InflightOut::Released,
    })
}

/// A queue that keeps the newest dropped its oldest message, journaled at `seq`.
pub fn evicted(session: &SessionLink, seq: u64) -> Op {
    Op::Dequeue {
        client_id: session.client_id.to_string(),
        seq,
    }
}

/// Outbound QoS 1/2: the client acknowledged (PUBACK, PUBCOMP, or a refusing
/// PUBREC) the message `entry` held, so it leaves the store. `None` for a QoS 1
/// message that was never journaled.
pub fn acknowledged(session: &SessionLink, packet_id: u16, entry: &InFlight) -> Option<Op> {
    match entry {
        InFlight::Published(message) if message.qos == QoS::AtLeastOnce && message.seq != 0 => {
            Some(Op::Dequeue {
                client_id: session.client_id.to_string(),
                seq: message.seq,
            })
        }
        InFlight::Published(message) if message.qos == QoS::AtLeastOnce => None,
        _ => Some(Op::DeleteInflightOut {
            client_id: session.client_id.to_string(),
            packet_id,
        }),
    }
}

// Broker messages and subscription options as stored records, and back.

/// A broker message as a stored record; `$SYS` never gets here.
pub fn stored_message(message: &Message, now: Instant) -> StoredMessage {
    let none = Properties::default();
    let properties = message.properties().unwrap_or(&none);
    let properties = properties_to_blob(properties).unwrap_or_else(|e| {
        // Properties came through our own decoder, so they always encode.
        tracing::warn!(error = %e, "message properties not stored");
        Vec::new()
    });
    StoredMessage {
        topic: message.topic().to_string(),
        payload: message.payload().clone(),
        qos: message.qos as u8,
        retain: message.retain,
        properties,
        expires_in_secs: message.expires_at().map(|t| {
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
        properties_from_blob(&stored.properties).unwrap_or_else(|e| {
            tracing::warn!(error = %e, topic = %stored.topic, "stored properties unreadable; dropped");
            Properties::default()
        })
    };
    let body = Body {
        topic: Arc::from(stored.topic.as_str()),
        payload: stored.payload,
        properties: shared_properties(properties),
        expires_at: stored
            .expires_in_secs
            .map(|secs| now + Duration::from_secs(u64::from(secs))),
    };
    let qos = QoS::from_u8(stored.qos).unwrap_or(QoS::AtLeastOnce);
    Message {
        seq,
        ..Message::with_body(body, qos, stored.retain)
    }
}

/// A stored outbound in-flight state back as the mailbox's.
pub fn restored_in_flight(stored: InflightOut, now: Instant) -> InFlight {
    match stored {
        InflightOut::Published(m) => InFlight::Published(restored_message(m, 0, now)),
        InflightOut::Released => InFlight::Released,
    }
}

/// The MQTT 5 subscription options byte (MQTT 5 §3.8.3.1), as stored.
fn options_byte(o: SubscriptionOptions) -> u8 {
    let handling = match o.retain_handling {
        RetainHandling::SendAtSubscribe => 0,
        RetainHandling::SendIfNew => 1,
        RetainHandling::DoNotSend => 2,
    };
    (o.qos as u8)
        | (u8::from(o.no_local) << 2)
        | (u8::from(o.retain_as_published) << 3)
        | (handling << 4)
}

/// A stored options byte back as options; bits outside the domain read as the
/// most conservative choice (QoS 0, retained messages not sent).
pub fn options_from_byte(b: u8) -> SubscriptionOptions {
    SubscriptionOptions {
        qos: QoS::from_u8(b & 0x03).unwrap_or(QoS::AtMostOnce),
        no_local: b & 0x04 != 0,
        retain_as_published: b & 0x08 != 0,
        retain_handling: match (b >> 4) & 0x03 {
            0 => RetainHandling::SendAtSubscribe,
            1 => RetainHandling::SendIfNew,
            _ => RetainHandling::DoNotSend,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    #[test]
    fn messages_round_trip_through_records() {
        let now = Instant::now();
        let body = Body {
            topic: Arc::from("a/b"),
            payload: Bytes::from_static(b"p"),
            properties: Some(Arc::new(Properties {
                content_type: Some("x".into()),
                ..Properties::default()
            })),
            expires_at: Some(now + Duration::from_secs(30)),
        };
        let message = Message {
            seq: 7,
            ..Message::with_body(body, QoS::ExactlyOnce, true)
        };
        let back = restored_message(stored_message(&message, now), 7, now);
        assert_eq!(back.topic(), message.topic());
        assert_eq!(back.payload(), message.payload());
        assert_eq!(back.qos, message.qos);
        assert_eq!(back.properties(), message.properties());
        assert_eq!(back.seq, 7);
        assert!(back.expires_at().is_some());
    }

    #[test]
    fn every_subscription_option_round_trips_through_its_byte() {
        for qos in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce] {
            for handling in [
                RetainHandling::SendAtSubscribe,
                RetainHandling::SendIfNew,
                RetainHandling::DoNotSend,
            ] {
                for (no_local, retain_as_published) in
                    [(false, false), (true, false), (false, true), (true, true)]
                {
                    let options = SubscriptionOptions {
                        qos,
                        no_local,
                        retain_as_published,
                        retain_handling: handling,
                    };
                    assert_eq!(options_from_byte(options_byte(options)), options);
                }
            }
        }
    }

    #[test]
    fn a_full_disk_or_write_queue_is_quota_exceeded_anything_else_unspecified() {
        assert_eq!(
            refusal_reason(&StoreError::DiskFull),
            ReasonCode::QuotaExceeded
        );
        assert_eq!(refusal_reason(&StoreError::Busy), ReasonCode::QuotaExceeded);
        assert_eq!(
            refusal_reason(&StoreError::Database("x".into())),
            ReasonCode::UnspecifiedError
        );
        assert_eq!(
            refusal_reason(&StoreError::Closed),
            ReasonCode::UnspecifiedError
        );
    }

    #[tokio::test]
    async fn an_event_without_operations_or_room_is_durable_at_once() {
        assert!(Batch::default().submit(Reservation::NONE).await.is_ok());
        let mut batch = Batch::default();
        batch.push([session_ended("c")]);
        assert!(!batch.is_empty());
        // Persistence off: nothing is recorded, nothing to wait for.
        assert!(batch.submit(Reservation::NONE).await.is_ok());
    }
}
