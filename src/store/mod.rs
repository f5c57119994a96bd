//! store: durable broker state in SQLite (WAL, `synchronous=FULL`): retained messages,
//! persistent sessions and their subscriptions, messages queued for offline sessions,
//! and QoS 1/2 in-flight state in both directions.
//!
//! Writes never run on the async threads: callers reserve a [`Slot`] in a bounded
//! queue (waiting, asynchronously, while it is full), submit an [`Op`] through it
//! without blocking (so ops submitted under a lock keep the lock's order), and get a
//! [`Commit`] to await. One writer thread groups every queued op into one transaction
//! (one fsync for many clients). Expiry survives restarts on a clock that counts broker
//! running time, never the wall clock (see `clock`). A damaged database is moved aside
//! and replaced (see `recover`). This module owns the database file and nothing else:
//! it knows nothing of the broker's types, the wire format, or policy; the broker
//! converts its state into the plain records of `records`.

mod clock;
mod error;
mod records;
mod recover;
mod schema;
mod snapshot;
mod writer;

use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags, OptionalExtension};
use tokio::sync::mpsc::{self, OwnedPermit};
use tokio::sync::oneshot;

pub use error::StoreError;
pub use records::{
    InflightOut, Op, QueuedMessage, RestoredSession, Snapshot, StoredInflightIn, StoredInflightOut,
    StoredMessage, StoredRetained, StoredSession, StoredSubscription,
};
pub use recover::Recovery;

use clock::{UPTIME_KEY, UptimeClock};
use writer::{Request, Shared};

/// Ops the queue holds before callers wait for room.
const QUEUE_CAPACITY: usize = 1024;

/// SQLite page size (the default, stated for the size cap).
const PAGE_SIZE: u64 = 4096;

/// When an acknowledged write is durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// A [`Commit`] resolves after the transaction holding its op is committed and
    /// fsynced. Concurrent ops share one commit. Nothing acknowledged is lost.
    #[default]
    Full,
    /// Ops are committed every `commit_interval` (or when a batch is full) and a
    /// [`Commit`] resolves at once: a crash loses at most `commit_interval` of
    /// acknowledged writes. While the disk is full, commits wait as in `Full` so
    /// refusals are reported.
    Batched { commit_interval: Duration },
}

/// Options beyond durability.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StoreOptions {
    pub durability: Durability,
    /// Cap on the database size; writes beyond it fail with [`StoreError::DiskFull`]
    /// exactly as a full disk does. `None`: only the disk limits it.
    pub max_bytes: Option<u64>,
}

/// Counters since open.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StoreStats {
    /// Transactions committed.
    pub commits: u64,
    /// Ops committed.
    pub ops: u64,
    /// Commits that wrote to the WAL, each with one fsync (`synchronous=FULL`).
    /// WAL checkpoints (about one per 1000 pages written) add their own fsyncs.
    pub fsyncs: u64,
    /// Ops whose write failed (disk full or another error).
    pub failed_ops: u64,
}

/// Where the database lives, for the read connection of [`Store::load`].
#[derive(Debug, Clone)]
enum Location {
    File(PathBuf),
    /// A shared-cache in-memory database, alive while the writer holds it.
    Memory(String),
}

/// The durable store. Share it behind an `Arc`.
#[derive(Debug)]
pub struct Store {
    requests: mpsc::Sender<Request>,
    shared: Arc<Shared>,
    durability: Durability,
    location: Location,
}

impl Store {
    /// Opens (or creates) the store at `path`. A damaged database is moved aside and
    /// replaced; `Recovery` says so. Expired messages and sessions are purged here.
    pub fn open(path: &Path, durability: Durability) -> Result<(Store, Recovery), StoreError> {
        Store::open_with(
            path,
            StoreOptions {
                durability,
                max_bytes: None,
            },
        )
    }

    /// [`Store::open`] with every option.
    pub fn open_with(path: &Path, options: StoreOptions) -> Result<(Store, Recovery), StoreError> {
        let max_pages = options.max_bytes.map(|bytes| (bytes / PAGE_SIZE).max(1));
        let (conn, recovery) = recover::open_file(path, max_pages)?;
        let store = Store::start(conn, Location::File(path.to_owned()), options.durability)?;
        Ok((store, recovery))
    }

    /// A store whose database lives in memory: same pipeline, nothing survives. For
    /// tests and as the baseline of the benchmark.
    pub fn open_in_memory(durability: Durability) -> Result<Store, StoreError> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let uri = format!(
            "file:moat-memory-{}-{}?mode=memory&cache=shared",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let mut conn = Connection::open(&uri)?;
        schema::configure_writer(&conn, None, true)?;
        if let schema::SchemaCheck::Mismatch(reason) = schema::prepare(&mut conn)? {
            return Err(StoreError::Database(reason));
        }
        Store::start(conn, Location::Memory(uri), durability)
    }

    fn start(
        mut conn: Connection,
        location: Location,
        durability: Durability,
    ) -> Result<Store, StoreError> {
        let base: i64 = conn
            .query_row(
                "SELECT value FROM meta WHERE key = ?1",
                [UPTIME_KEY],
                |row| row.get(0),
            )
            .optional()?
            .unwrap_or(0);
        snapshot::purge_at_open(&mut conn, base)?;
        let shared = Arc::new(Shared::new(UptimeClock::resume(base)));
        let (requests, receiver) = mpsc::channel(QUEUE_CAPACITY);
        writer::spawn(conn, receiver, Arc::clone(&shared), durability)?;
        Ok(Store {
            requests,
            shared,
            durability,
            location,
        })
    }

    /// Everything stored, with expiry applied. Synchronous: call it once at start.
    /// It reads committed state; ops still queued are not in it.
    pub fn load(&self) -> Result<Snapshot, StoreError> {
        let mut conn = match &self.location {
            Location::File(path) => Connection::open_with_flags(
                path,
                OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
            )?,
            Location::Memory(uri) => Connection::open(uri)?,
        };
        conn.busy_timeout(Duration::from_secs(5))?;
        snapshot::load(&mut conn, self.shared.clock.now_secs())
    }

    /// Waits for room in the write queue. Submit through the [`Slot`] while holding
    /// whatever lock orders your ops; submitting never blocks.
    pub async fn reserve(&self) -> Result<Slot, StoreError> {
        let permit = self
            .requests
            .clone()
            .reserve_owned()
            .await
            .map_err(|_| StoreError::Closed)?;
        Ok(self.slot(permit))
    }

    /// A slot if the queue has room now, else [`StoreError::Busy`].
    pub fn try_reserve(&self) -> Result<Slot, StoreError> {
        match self.requests.clone().try_reserve_owned() {
            Ok(permit) => Ok(self.slot(permit)),
            Err(mpsc::error::TrySendError::Full(_)) => Err(StoreError::Busy),
            Err(mpsc::error::TrySendError::Closed(_)) => Err(StoreError::Closed),
        }
    }

    fn slot(&self, permit: OwnedPermit<Request>) -> Slot {
        Slot {
            permit,
            shared: Arc::clone(&self.shared),
            durability: self.durability,
        }
    }

    /// Reserves, submits and awaits one op.
    pub async fn apply(&self, op: Op) -> Result<(), StoreError> {
        self.reserve().await?.submit(op).await
    }

    /// Waits until every op submitted before it is committed (also in `Batched`
    /// mode). Returns the first error among the ops it committed, if any.
    pub async fn flush(&self) -> Result<(), StoreError> {
        let (done, result) = oneshot::channel();
        self.requests
            .send(Request::Flush(done))
            .await
            .map_err(|_| StoreError::Closed)?;
        result.await.map_err(|_| StoreError::Closed)?
    }

    /// Commits everything queued, saves the clock and closes the database. Later ops
    /// fail with [`StoreError::Closed`]. Call it at shutdown.
    pub async fn close(&self) -> Result<(), StoreError> {
        let (done, result) = oneshot::channel();
        self.requests
            .send(Request::Shutdown(done))
            .await
            .map_err(|_| StoreError::Closed)?;
        result.await.map_err(|_| StoreError::Closed)?
    }

    pub fn stats(&self) -> StoreStats {
        self.shared.stats()
    }

    /// How long each committed transaction took (BEGIN to the end of COMMIT).
    pub fn commit_latency(&self) -> crate::latency::LatencySnapshot {
        self.shared.commit_latency.snapshot()
    }

    /// Bytes the database takes on disk now: the file and its WAL (`None` in memory).
    pub fn database_bytes(&self) -> Option<u64> {
        let Location::File(path) = &self.location else {
            return None;
        };
        let size = |p: &Path| std::fs::metadata(p).map_or(0, |m| m.len());
        let mut wal = path.as_os_str().to_owned();
        wal.push("-wal");
        Some(size(path) + size(Path::new(&wal)))
    }

    /// True while the last write failed for lack of space (or the size cap).
    pub fn is_disk_full(&self) -> bool {
        self.shared.is_disk_full()
    }

    pub fn durability(&self) -> Durability {
        self.durability
    }
}

/// Room for one op in the write queue, reserved by [`Store::reserve`]. Each method
/// consumes the slot, submits its op without blocking and returns its [`Commit`].
#[derive(Debug)]
pub struct Slot {
    permit: OwnedPermit<Request>,
    shared: Arc<Shared>,
    durability: Durability,
}

impl Slot {
    /// Submits any op.
    pub fn submit(self, op: Op) -> Commit {
        let at = self.shared.clock.now_secs();
        let wait = match self.durability {
            Durability::Full => true,
            Durability::Batched { .. } => self.shared.is_disk_full(),
        };
        if wait {
            let (done, result) = oneshot::channel();
            self.permit.send(Request::Op {
                op,
                at,
                done: Some(done),
            });
            Commit(CommitState::Waiting(result))
        } else {
            self.permit.send(Request::Op { op, at, done: None });
            Commit(CommitState::Done(Some(Ok(()))))
        }
    }

    pub fn put_retained(self, retained: StoredRetained) -> Commit {
        self.submit(Op::PutRetained(retained))
    }

    pub fn delete_retained(self, topic: impl Into<String>) -> Commit {
        self.submit(Op::DeleteRetained {
            topic: topic.into(),
        })
    }

    /// Creates or replaces the session and marks it connected.
    pub fn put_session(self, session: StoredSession) -> Commit {
        self.submit(Op::PutSession(session))
    }

    /// Starts the session's expiry countdown (the client disconnected).
    pub fn session_disconnected(self, client_id: impl Into<String>) -> Commit {
        self.submit(Op::SessionDisconnected {
            client_id: client_id.into(),
        })
    }

    /// Deletes the session with its subscriptions, queue and in-flight state.
    pub fn delete_session(self, client_id: impl Into<String>) -> Commit {
        self.submit(Op::DeleteSession {
            client_id: client_id.into(),
        })
    }

    pub fn put_subscription(self, subscription: StoredSubscription) -> Commit {
        self.submit(Op::PutSubscription(subscription))
    }

    pub fn delete_subscription(
        self,
        client_id: impl Into<String>,
        filter: impl Into<String>,
    ) -> Commit {
        self.submit(Op::DeleteSubscription {
            client_id: client_id.into(),
            filter: filter.into(),
        })
    }

    pub fn enqueue(self, client_id: impl Into<String>, seq: u64, message: StoredMessage) -> Commit {
        self.submit(Op::Enqueue(QueuedMessage {
            client_id: client_id.into(),
            seq,
            message,
        }))
    }

    pub fn dequeue(self, client_id: impl Into<String>, seq: u64) -> Commit {
        self.submit(Op::Dequeue {
            client_id: client_id.into(),
            seq,
        })
    }

    pub fn put_inflight_out(
        self,
        client_id: impl Into<String>,
        packet_id: u16,
        state: InflightOut,
    ) -> Commit {
        self.submit(Op::PutInflightOut(StoredInflightOut {
            client_id: client_id.into(),
            packet_id,
            state,
        }))
    }

    pub fn delete_inflight_out(self, client_id: impl Into<String>, packet_id: u16) -> Commit {
        self.submit(Op::DeleteInflightOut {
            client_id: client_id.into(),
            packet_id,
        })
    }

    pub fn put_inflight_in(self, client_id: impl Into<String>, packet_id: u16) -> Commit {
        self.submit(Op::PutInflightIn(StoredInflightIn {
            client_id: client_id.into(),
            packet_id,
        }))
    }

    pub fn delete_inflight_in(self, client_id: impl Into<String>, packet_id: u16) -> Commit {
        self.submit(Op::DeleteInflightIn {
            client_id: client_id.into(),
            packet_id,
        })
    }
}

/// Resolves when the op is durable at the store's [`Durability`] (at once in
/// `Batched` mode), or with the reason it could not be written.
#[derive(Debug)]
#[must_use = "await the Commit before acknowledging the message"]
pub struct Commit(CommitState);

#[derive(Debug)]
enum CommitState {
    Done(Option<Result<(), StoreError>>),
    Waiting(oneshot::Receiver<Result<(), StoreError>>),
}

impl Future for Commit {
    type Output = Result<(), StoreError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match &mut self.0 {
            CommitState::Done(result) => Poll::Ready(result.take().unwrap_or(Ok(()))),
            CommitState::Waiting(receiver) => Pin::new(receiver)
                .poll(cx)
                .map(|result| result.unwrap_or(Err(StoreError::Closed))),
        }
    }
}

#[cfg(test)]
mod tests;
