//! The writer thread: the only connection that writes, fed by a bounded channel.
//!
//! Group commit: the writer takes every request queued so far (up to [`MAX_BATCH`]
//! operations), applies them in one transaction and commits once, so many clients
//! share one fsync; then it completes each operation's handle. In `Batched` mode it
//! commits when the interval since the oldest pending operation has passed (or the
//! batch is full). A failed batch is retried one operation per transaction, so one
//! bad operation (or a full disk) fails only the operations it must. This module owns
//! the SQL that mutates state; it knows nothing of the broker or of async callers
//! beyond the channel and the completion handles.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rusqlite::{Connection, Transaction, params};
use tokio::sync::{mpsc, oneshot};

use super::clock::{self, IDLE_PERSIST_EVERY, PIGGYBACK_EVERY, UPTIME_KEY, UptimeClock};
use super::error::StoreError;
use super::records::{InflightOut, Op, StoredMessage};
use super::{Durability, StoreStats};
use crate::latency::LatencyHistogram;

/// Most operations applied in one transaction.
pub(crate) const MAX_BATCH: usize = 1024;

/// Completion handle of one request.
pub(crate) type Reply = oneshot::Sender<Result<(), StoreError>>;

/// What the writer receives.
pub(crate) enum Request {
    /// One operation, stamped with the uptime at submission (expiry counts from
    /// then). `done` is `None` when the caller does not wait (`Batched`).
    Op {
        op: Op,
        at: i64,
        done: Option<Reply>,
    },
    /// Commit everything queued before it, then reply.
    Flush(Reply),
    /// Commit everything, persist the clock, close the database, then reply.
    Shutdown(Reply),
}

/// State shared between the writer thread and the `Store` handles.
#[derive(Debug)]
pub(crate) struct Shared {
    pub clock: UptimeClock,
    commits: AtomicU64,
    ops: AtomicU64,
    fsyncs: AtomicU64,
    failed_ops: AtomicU64,
    disk_full: AtomicBool,
    /// Time of each successful transaction, from BEGIN to the end of COMMIT (fsync).
    pub commit_latency: LatencyHistogram,
}

impl Shared {
    pub fn new(clock: UptimeClock) -> Shared {
        Shared {
            clock,
            commits: AtomicU64::new(0),
            ops: AtomicU64::new(0),
            fsyncs: AtomicU64::new(0),
            failed_ops: AtomicU64::new(0),
            disk_full: AtomicBool::new(false),
            commit_latency: LatencyHistogram::default(),
        }
    }

    pub fn stats(&self) -> StoreStats {
        StoreStats {
            commits: self.commits.load(Ordering::Relaxed),
            ops: self.ops.load(Ordering::Relaxed),
            fsyncs: self.fsyncs.load(Ordering::Relaxed),
            failed_ops: self.failed_ops.load(Ordering::Relaxed),
        }
    }

    pub fn is_disk_full(&self) -> bool {
        self.disk_full.load(Ordering::Relaxed)
    }
}

/// Starts the writer thread; it owns `conn` until the channel closes or a
/// `Shutdown` arrives.
pub(crate) fn spawn(
    conn: Connection,
    requests: mpsc::Receiver<Request>,
    shared: Arc<Shared>,
    durability: Durability,
) -> Result<JoinHandle<()>, StoreError> {
    let writer = Writer {
        conn: Some(conn),
        shared,
        durability,
        pending: Vec::new(),
        pending_ops: 0,
        oldest: None,
        clock_persisted: Instant::now(),
        shutdowns: Vec::new(),
    };
    std::thread::Builder::new()
        .name("moat-store".into())
        .spawn(move || writer.run(requests))
        .map_err(|e| StoreError::Database(format!("cannot start the store writer: {e}")))
}

struct Writer {
    conn: Option<Connection>,
    shared: Arc<Shared>,
    durability: Durability,
    pending: Vec<Request>,
    pending_ops: usize,
    /// When the oldest pending operation arrived (drives `Batched` commits).
    oldest: Option<Instant>,
    clock_persisted: Instant,
    shutdowns: Vec<Reply>,
}

impl Writer {
    fn run(mut self, mut requests: mpsc::Receiver<Request>) {
        // A tiny runtime only to wait on the channel with a timeout.
        let runtime = match tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
        {
            Ok(runtime) => runtime,
            Err(err) => {
                tracing::error!(%err, "store writer cannot start: durable writes are refused");
                return;
            }
        };
        loop {
            let wait = self.next_wakeup();
            let mut closed = false;
            match runtime.block_on(async { tokio::time::timeout(wait, requests.recv()).await }) {
                Ok(Some(request)) => {
                    self.push(request);
                    closed = self.drain(&mut requests);
                }
                Ok(None) => closed = true,
                Err(_elapsed) => {}
            }
            let stopping = closed || !self.shutdowns.is_empty();
            if stopping || self.commit_due() {
                self.commit(stopping);
            }
            if stopping {
                self.close();
                if !closed {
                    refuse_until_dropped(&runtime, requests);
                }
                return;
            }
        }
    }

    fn push(&mut self, request: Request) {
        match request {
            Request::Shutdown(reply) => self.shutdowns.push(reply),
            other => {
                if matches!(other, Request::Op { .. }) {
                    self.pending_ops += 1;
                    self.oldest.get_or_insert_with(Instant::now);
                }
                self.pending.push(other);
            }
        }
    }

    /// Takes whatever else is already queued, up to a full batch. True when the
    /// channel is closed (every `Store` handle is gone).
    fn drain(&mut self, requests: &mut mpsc::Receiver<Request>) -> bool {
        while self.pending_ops < MAX_BATCH && self.shutdowns.is_empty() {
            match requests.try_recv() {
                Ok(request) => self.push(request),
                Err(mpsc::error::TryRecvError::Empty) => return false,
                Err(mpsc::error::TryRecvError::Disconnected) => return true,
            }
        }
        false
    }

    fn commit_due(&self) -> bool {
        let flush = self.pending.iter().any(|r| matches!(r, Request::Flush(_)));
        let ops_due = match self.durability {
            Durability::Full => self.pending_ops > 0,
            Durability::Batched { commit_interval } => {
                self.pending_ops >= MAX_BATCH
                    || self.oldest.is_some_and(|t| t.elapsed() >= commit_interval)
            }
        };
        flush || ops_due || self.clock_persisted.elapsed() >= IDLE_PERSIST_EVERY
    }

    fn next_wakeup(&self) -> Duration {
        let clock = IDLE_PERSIST_EVERY.saturating_sub(self.clock_persisted.elapsed());
        match (self.durability, self.oldest) {
            (Durability::Batched { commit_interval }, Some(oldest)) => {
                clock.min(commit_interval.saturating_sub(oldest.elapsed()))
            }
            _ => clock,
        }
    }

    /// Applies and commits everything pending, then completes the handles.
    fn commit(&mut self, stopping: bool) {
        let requests = std::mem::take(&mut self.pending);
        self.pending_ops = 0;
        self.oldest = None;
        let has_flush = requests.iter().any(|r| matches!(r, Request::Flush(_)));
        let ops: Vec<(&Op, i64)> = requests
            .iter()
            .filter_map(|r| match r {
                Request::Op { op, at, .. } => Some((op, *at)),
                _ => None,
            })
            .collect();
        let clock_age = if ops.is_empty() {
            IDLE_PERSIST_EVERY
        } else {
            PIGGYBACK_EVERY
        };
        let persist_clock = stopping || has_flush || self.clock_persisted.elapsed() >= clock_age;
        let now = persist_clock.then(|| self.shared.clock.now_secs());

        let Some(conn) = self.conn.as_mut() else {
            return;
        };
        let (results, clock_saved) = apply_batch(conn, &self.shared, &ops, now);
        if clock_saved {
            self.clock_persisted = Instant::now();
        }
        drop(ops);

        let first_error = results.iter().find_map(|r| r.as_ref().err()).cloned();
        let mut results = results.into_iter();
        for request in requests {
            match request {
                Request::Op { done, .. } => {
                    let result = results.next().unwrap_or(Err(StoreError::Closed));
                    if let Some(done) = done {
                        // The caller may have stopped waiting; nothing to do then.
                        let _ = done.send(result);
                    }
                }
                Request::Flush(done) => {
                    let _ = done.send(first_error.clone().map_or(Ok(()), Err));
                }
                Request::Shutdown(done) => self.shutdowns.push(done),
            }
        }
    }

    /// Closes the database (SQLite checkpoints the WAL on the last close), then
    /// answers every shutdown request.
    fn close(&mut self) {
        let mut result = Ok(());
        if let Some(conn) = self.conn.take()
            && let Err((_, err)) = conn.close()
        {
            tracing::error!(%err, "store: closing the database failed");
            result = Err(StoreError::from(err));
        }
        for done in self.shutdowns.drain(..) {
            let _ = done.send(result.clone());
        }
    }
}

/// After a shutdown: refuse new reservations, and answer ops sent through slots
/// reserved before it with `Closed` (a permit can still send after the channel is
/// closed), until every handle is gone.
fn refuse_until_dropped(runtime: &tokio::runtime::Runtime, mut requests: mpsc::Receiver<Request>) {
    requests.close();
    while let Some(request) = runtime.block_on(requests.recv()) {
        let done = match request {
            Request::Op { done, .. } => done,
            Request::Flush(done) | Request::Shutdown(done) => Some(done),
        };
        if let Some(done) = done {
            let _ = done.send(Err(StoreError::Closed));
        }
    }
}

/// Applies `ops` (and the clock, when `now` is set) in one transaction. On failure,
/// retries each operation in its own transaction. Returns one result per operation,
/// and whether the clock was saved.
fn apply_batch(
    conn: &mut Connection,
    shared: &Shared,
    ops: &[(&Op, i64)],
    now: Option<i64>,
) -> (Vec<Result<(), StoreError>>, bool) {
    match transact(conn, shared, ops, now) {
        Ok(()) => (vec![Ok(()); ops.len()], now.is_some()),
        Err(err) if ops.len() <= 1 => {
            note_failure(shared, &err, ops.len());
            (vec![Err(err); ops.len()], false)
        }
        Err(err) => {
            tracing::warn!(%err, ops = ops.len(), "store: batch failed, retrying one by one");
            let results = ops
                .iter()
                .map(
                    |op| match transact(conn, shared, std::slice::from_ref(op), None) {
                        Ok(()) => Ok(()),
                        Err(err) => {
                            note_failure(shared, &err, 1);
                            Err(err)
                        }
                    },
                )
                .collect();
            let clock_saved = now.is_some_and(|now| transact(conn, shared, &[], Some(now)).is_ok());
            (results, clock_saved)
        }
    }
}

fn note_failure(shared: &Shared, err: &StoreError, ops: usize) {
    shared.failed_ops.fetch_add(ops as u64, Ordering::Relaxed);
    if err.is_disk_full() {
        if !shared.disk_full.swap(true, Ordering::Relaxed) {
            tracing::error!("store: disk full, durable writes are refused until space is freed");
        }
    } else {
        tracing::error!(%err, ops, "store: write failed");
    }
}

/// One transaction, one commit (one WAL fsync when anything changed).
fn transact(
    conn: &mut Connection,
    shared: &Shared,
    ops: &[(&Op, i64)],
    now: Option<i64>,
) -> Result<(), StoreError> {
    let changes_before = conn.total_changes();
    let started = Instant::now();
    let result = (|| -> rusqlite::Result<()> {
        let tx = conn.transaction()?;
        for (op, at) in ops {
            apply(&tx, op, *at)?;
        }
        if let Some(now) = now {
            tx.prepare_cached("INSERT OR REPLACE INTO meta (key, value) VALUES (?1, ?2)")?
                .execute(params![UPTIME_KEY, now])?;
        }
        tx.commit()
    })();
    if let Err(err) = result {
        // SQLITE_FULL may already have rolled the transaction back; make sure.
        if !conn.is_autocommit() {
            let _ = conn.execute_batch("ROLLBACK");
        }
        return Err(StoreError::from(err));
    }
    shared.commit_latency.observe(started.elapsed());
    shared.commits.fetch_add(1, Ordering::Relaxed);
    shared.ops.fetch_add(ops.len() as u64, Ordering::Relaxed);
    if conn.total_changes() != changes_before {
        shared.fsyncs.fetch_add(1, Ordering::Relaxed);
    }
    if shared.disk_full.swap(false, Ordering::Relaxed) {
        tracing::info!("store: writes succeed again, disk space is back");
    }
    Ok(())
}

fn to_sql_u64(value: u64) -> rusqlite::Result<i64> {
    i64::try_from(value).map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))
}

fn apply(tx: &Transaction<'_>, op: &Op, at: i64) -> rusqlite::Result<()> {
    match op {
        Op::Batch(ops) => {
            for op in ops {
                apply(tx, op, at)?;
            }
        }
        Op::PutRetained(r) => {
            let m = &r.message;
            tx.prepare_cached(
                "INSERT OR REPLACE INTO retained \
                 (topic, publisher, payload, qos, properties, expires_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )?
            .execute(params![
                m.topic,
                r.publisher,
                &m.payload[..],
                m.qos,
                m.properties,
                clock::deadline(at, m.expires_in_secs),
            ])?;
        }
        Op::DeleteRetained { topic } => {
            tx.prepare_cached("DELETE FROM retained WHERE topic = ?1")?
                .execute([topic])?;
        }
        Op::PutSession(s) => {
            tx.prepare_cached(
                "INSERT OR REPLACE INTO sessions (client_id, owner, expiry_secs, disconnected_at) \
                 VALUES (?1, ?2, ?3, NULL)",
            )?
            .execute(params![s.client_id, s.owner, s.expiry_secs])?;
        }
        Op::SessionDisconnected { client_id } => {
            tx.prepare_cached("UPDATE sessions SET disconnected_at = ?2 WHERE client_id = ?1")?
                .execute(params![client_id, at])?;
        }
        Op::DeleteSession { client_id } => {
            for table in [
                "sessions",
                "subscriptions",
                "queued",
                "inflight_out",
                "inflight_in",
            ] {
                tx.prepare_cached(&format!("DELETE FROM {table} WHERE client_id = ?1"))?
                    .execute([client_id])?;
            }
        }
        Op::PutSubscription(s) => {
            tx.prepare_cached(
                "INSERT OR REPLACE INTO subscriptions (client_id, filter, options, identifier) \
                 VALUES (?1, ?2, ?3, ?4)",
            )?
            .execute(params![s.client_id, s.filter, s.options, s.identifier])?;
        }
        Op::DeleteSubscription { client_id, filter } => {
            tx.prepare_cached("DELETE FROM subscriptions WHERE client_id = ?1 AND filter = ?2")?
                .execute([client_id, filter])?;
        }
        Op::Enqueue(q) => {
            let m = &q.message;
            tx.prepare_cached(
                "INSERT OR REPLACE INTO queued \
                 (client_id, seq, topic, payload, qos, retain, properties, expires_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            )?
            .execute(params![
                q.client_id,
                to_sql_u64(q.seq)?,
                m.topic,
                &m.payload[..],
                m.qos,
                m.retain,
                m.properties,
                clock::deadline(at, m.expires_in_secs),
            ])?;
        }
        Op::Dequeue { client_id, seq } => {
            tx.prepare_cached("DELETE FROM queued WHERE client_id = ?1 AND seq = ?2")?
                .execute(params![client_id, to_sql_u64(*seq)?])?;
        }
        Op::PutInflightOut(entry) => {
            let sql = "INSERT OR REPLACE INTO inflight_out \
                 (client_id, packet_id, released, topic, payload, qos, retain, properties, expires_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)";
            let mut stmt = tx.prepare_cached(sql)?;
            match &entry.state {
                InflightOut::Published(m) => {
                    let StoredMessage {
                        topic,
                        payload,
                        qos,
                        retain,
                        properties,
                        expires_in_secs,
                    } = m;
                    stmt.execute(params![
                        entry.client_id,
                        entry.packet_id,
                        false,
                        topic,
                        &payload[..],
                        qos,
                        retain,
                        properties,
                        clock::deadline(at, *expires_in_secs),
                    ])?;
                }
                InflightOut::Released => {
                    stmt.execute(params![
                        entry.client_id,
                        entry.packet_id,
                        true,
                        None::<String>,
                        None::<Vec<u8>>,
                        None::<u8>,
                        None::<bool>,
                        None::<Vec<u8>>,
                        None::<i64>,
                    ])?;
                }
            }
        }
        Op::DeleteInflightOut {
            client_id,
            packet_id,
        } => {
            tx.prepare_cached("DELETE FROM inflight_out WHERE client_id = ?1 AND packet_id = ?2")?
                .execute(params![client_id, packet_id])?;
        }
        Op::PutInflightIn(entry) => {
            tx.prepare_cached(
                "INSERT OR IGNORE INTO inflight_in (client_id, packet_id) VALUES (?1, ?2)",
            )?
            .execute(params![entry.client_id, entry.packet_id])?;
        }
        Op::DeleteInflightIn {
            client_id,
            packet_id,
        } => {
            tx.prepare_cached("DELETE FROM inflight_in WHERE client_id = ?1 AND packet_id = ?2")?
                .execute(params![client_id, packet_id])?;
        }
    }
    Ok(())
}
