//! Plain record types the store persists, and the operations that change them.
//!
//! These types are independent of the broker: the broker converts its own `Message`,
//! session and QoS state into them and back. They know nothing of SQL, threads or the
//! wire format; properties travel as an opaque blob the broker serializes.

use bytes::Bytes;

/// One application message as stored: retained, queued for an offline session, or
/// in flight to a client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredMessage {
    pub topic: String,
    pub payload: Bytes,
    /// 0, 1 or 2.
    pub qos: u8,
    pub retain: bool,
    /// Opaque, broker-serialized MQTT 5 properties (content type, user properties ...).
    pub properties: Vec<u8>,
    /// Remaining lifetime: when writing, at the moment of the write; in a
    /// [`Snapshot`], at the moment of the load. `None` = never expires.
    pub expires_in_secs: Option<u32>,
}

/// The retained message of one topic, with the identity that published it (a message
/// whose publisher lost write access is withheld, so the publisher must survive too).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredRetained {
    pub publisher: String,
    pub message: StoredMessage,
}

/// A persistent session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredSession {
    pub client_id: String,
    /// The identity (user or device) that owns the session.
    pub owner: String,
    /// Session Expiry Interval; `u32::MAX` means the session never expires.
    pub expiry_secs: u32,
}

/// A persistent session as restored by [`Snapshot`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestoredSession {
    pub session: StoredSession,
    /// Seconds left before the session expires, counted from its disconnect (every
    /// session is disconnected after a restart). `None` = never expires.
    pub expires_in_secs: Option<u32>,
}

/// One subscription of a persistent session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredSubscription {
    pub client_id: String,
    pub filter: String,
    /// The MQTT 5 subscription options byte (QoS, no-local, retain-as-published,
    /// retain handling).
    pub options: u8,
    pub identifier: Option<u32>,
}

/// A message waiting in an offline session's queue. `seq` is per-session and
/// monotonic: the broker picks it and the snapshot returns queues in `seq` order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueuedMessage {
    pub client_id: String,
    pub seq: u64,
    pub message: StoredMessage,
}

/// State of an outbound QoS 1/2 message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InflightOut {
    /// PUBLISH sent; waiting for PUBACK (QoS 1) or PUBREC (QoS 2).
    Published(StoredMessage),
    /// PUBREL sent; waiting for PUBCOMP.
    Released,
}

/// An outbound in-flight entry of one session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredInflightOut {
    pub client_id: String,
    pub packet_id: u16,
    pub state: InflightOut,
}

/// An inbound QoS 2 packet id awaiting PUBREL, per session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredInflightIn {
    pub client_id: String,
    pub packet_id: u16,
}

/// Everything the store holds, with expiry already applied, as read once at start.
///
/// Queued messages are sorted by `(client_id, seq)`; subscriptions, in-flight entries
/// and sessions by client id. Rows of a session that no longer exists are not returned.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    pub retained: Vec<StoredRetained>,
    pub sessions: Vec<RestoredSession>,
    pub subscriptions: Vec<StoredSubscription>,
    pub queued: Vec<QueuedMessage>,
    pub inflight_out: Vec<StoredInflightOut>,
    pub inflight_in: Vec<StoredInflightIn>,
}

/// One change to durable state. Operations apply in the order they were submitted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    PutRetained(StoredRetained),
    DeleteRetained {
        topic: String,
    },
    /// Creates or replaces a session and marks it connected (its expiry clock stops).
    PutSession(StoredSession),
    /// Starts the session's expiry clock: the client went away.
    SessionDisconnected {
        client_id: String,
    },
    /// Deletes the session with its subscriptions, queue and in-flight state.
    DeleteSession {
        client_id: String,
    },
    PutSubscription(StoredSubscription),
    DeleteSubscription {
        client_id: String,
        filter: String,
    },
    Enqueue(QueuedMessage),
    Dequeue {
        client_id: String,
        seq: u64,
    },
    PutInflightOut(StoredInflightOut),
    DeleteInflightOut {
        client_id: String,
        packet_id: u16,
    },
    PutInflightIn(StoredInflightIn),
    DeleteInflightIn {
        client_id: String,
        packet_id: u16,
    },
    /// Several ops that one broker event implies (a publish reaching many
    /// persistent sessions), applied in order within the same transaction.
    Batch(Vec<Op>),
}
