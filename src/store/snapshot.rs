//! Reading state back at start: the purge of what expired while the broker was away
//! (run once at open, before the writer starts) and the [`Snapshot`] load. Expiry is
//! measured on the uptime scale of `clock`. A row whose values are out of range is
//! skipped and logged rather than failing the whole start. No writes besides the
//! purge; no knowledge of the broker.

use rusqlite::{Connection, Row, params};

use super::clock::{self, Remaining};
use super::error::StoreError;
use super::records::{
    InflightOut, QueuedMessage, RestoredSession, Snapshot, StoredInflightIn, StoredInflightOut,
    StoredMessage, StoredRetained, StoredSession, StoredSubscription,
};

/// MQTT's "session never expires".
const NEVER: i64 = u32::MAX as i64;

/// Makes the database agree with a restart at uptime `now`: every session is now
/// disconnected (its expiry clock starts at `now` unless it had already started),
/// and expired messages, expired sessions and rows of sessions that no longer exist
/// are deleted. One transaction; it writes nothing when nothing changes.
pub(crate) fn purge_at_open(conn: &mut Connection, now: i64) -> rusqlite::Result<()> {
    let tx = conn.transaction()?;
    tx.execute(
        "UPDATE sessions SET disconnected_at = ?1 WHERE disconnected_at IS NULL",
        [now],
    )?;
    tx.execute(
        "DELETE FROM retained WHERE expires_at IS NOT NULL AND expires_at <= ?1",
        [now],
    )?;
    tx.execute(
        "DELETE FROM queued WHERE expires_at IS NOT NULL AND expires_at <= ?1",
        [now],
    )?;
    tx.execute(
        "DELETE FROM sessions WHERE expiry_secs != ?2 AND disconnected_at + expiry_secs <= ?1",
        params![now, NEVER],
    )?;
    for table in ["subscriptions", "queued", "inflight_out", "inflight_in"] {
        tx.execute(
            &format!("DELETE FROM {table} WHERE client_id NOT IN (SELECT client_id FROM sessions)"),
            [],
        )?;
    }
    tx.commit()
}

/// Reads everything, with expiry applied at uptime `now`.
pub(crate) fn load(conn: &mut Connection, now: i64) -> Result<Snapshot, StoreError> {
    // One read transaction: a consistent view even while the writer commits.
    let tx = conn.transaction()?;
    let mut snapshot = Snapshot::default();

    let sessions = rows(
        &tx,
        "sessions",
        "SELECT client_id, owner, expiry_secs, disconnected_at FROM sessions ORDER BY client_id",
        |row| {
            let session = StoredSession {
                client_id: row.get(0)?,
                owner: row.get(1)?,
                expiry_secs: row.get(2)?,
            };
            let disconnected_at: Option<i64> = row.get(3)?;
            Ok((session, disconnected_at))
        },
    )?;
    for (session, disconnected_at) in sessions {
        // A session put after open is connected: its expiry has not started.
        let from = disconnected_at.unwrap_or(now);
        match clock::remaining(clock::session_deadline(from, session.expiry_secs), now) {
            Remaining::Expired => {}
            Remaining::Never => snapshot.sessions.push(RestoredSession {
                session,
                expires_in_secs: None,
            }),
            Remaining::Left(secs) => snapshot.sessions.push(RestoredSession {
                session,
                expires_in_secs: Some(secs),
            }),
        }
    }
    let live = |client_id: &str| {
        snapshot
            .sessions
            .binary_search_by(|s| s.session.client_id.as_str().cmp(client_id))
            .is_ok()
    };

    snapshot.retained = rows(&tx, "retained", "SELECT topic, payload, qos, properties, expires_at, publisher FROM retained ORDER BY topic", |row| {
        let Some(mut message) = message(row, 0, false, now)? else {
            return Ok(None);
        };
        message.retain = true;
        Ok(Some(StoredRetained { publisher: row.get(5)?, message }))
    })?
    .into_iter()
    .flatten()
    .collect();

    snapshot.subscriptions = rows(&tx, "subscriptions", "SELECT client_id, filter, options, identifier FROM subscriptions ORDER BY client_id, filter", |row| {
        Ok(StoredSubscription {
            client_id: row.get(0)?,
            filter: row.get(1)?,
            options: row.get(2)?,
            identifier: row.get(3)?,
        })
    })?
    .into_iter()
    .filter(|s| live(&s.client_id))
    .collect();

    snapshot.queued = rows(&tx, "queued", "SELECT topic, payload, qos, properties, expires_at, retain, client_id, seq FROM queued ORDER BY client_id, seq", |row| {
        let Some(mut message) = message(row, 0, false, now)? else {
            return Ok(None);
        };
        message.retain = row.get(5)?;
        let seq: i64 = row.get(7)?;
        Ok(Some(QueuedMessage {
            client_id: row.get(6)?,
            seq: u64::try_from(seq).map_err(|e| out_of_range(7, e))?,
            message,
        }))
    })?
    .into_iter()
    .flatten()
    .filter(|q| live(&q.client_id))
    .collect();

    snapshot.inflight_out = rows(&tx, "inflight_out", "SELECT topic, payload, qos, properties, expires_at, retain, client_id, packet_id, released FROM inflight_out ORDER BY client_id, packet_id", |row| {
        let released: bool = row.get(8)?;
        let state = if released {
            InflightOut::Released
        } else {
            // Delivery has started: the flow completes even if the lifetime ran out.
            let mut message = message(row, 0, true, now)?.ok_or_else(|| out_of_range(0, "missing message"))?;
            message.retain = row.get(5)?;
            InflightOut::Published(message)
        };
        Ok(StoredInflightOut {
            client_id: row.get(6)?,
            packet_id: row.get(7)?,
            state,
        })
    })?
    .into_iter()
    .filter(|e| live(&e.client_id))
    .collect();

    snapshot.inflight_in = rows(
        &tx,
        "inflight_in",
        "SELECT client_id, packet_id FROM inflight_in ORDER BY client_id, packet_id",
        |row| {
            Ok(StoredInflightIn {
                client_id: row.get(0)?,
                packet_id: row.get(1)?,
            })
        },
    )?
    .into_iter()
    .filter(|e| live(&e.client_id))
    .collect();

    tx.finish()?;
    Ok(snapshot)
}

/// Runs `sql` and converts each row, skipping (and logging) rows that do not convert.
fn rows<T>(
    conn: &Connection,
    table: &'static str,
    sql: &str,
    convert: impl Fn(&Row<'_>) -> rusqlite::Result<T>,
) -> Result<Vec<T>, StoreError> {
    let mut stmt = conn.prepare(sql)?;
    let mut out = Vec::new();
    let mut skipped = 0usize;
    for row in stmt.query_map([], |row| convert(row))? {
        match row {
            Ok(value) => out.push(value),
            Err(err) => {
                skipped += 1;
                if skipped == 1 {
                    tracing::error!(table, %err, "store: skipping an invalid stored row");
                }
            }
        }
    }
    if skipped > 1 {
        tracing::error!(table, skipped, "store: skipped invalid stored rows");
    }
    Ok(out)
}

/// The message in columns `first..first + 5` (topic, payload, qos, properties,
/// expires_at); `None` when it expired (unless `keep_expired`). `retain` is false:
/// callers set it from their own column.
fn message(
    row: &Row<'_>,
    first: usize,
    keep_expired: bool,
    now: i64,
) -> rusqlite::Result<Option<StoredMessage>> {
    let qos: u8 = row.get(first + 2)?;
    if qos > 2 {
        return Err(out_of_range(first + 2, format!("qos {qos}")));
    }
    let expires_at: Option<i64> = row.get(first + 4)?;
    let expires_in_secs = match clock::remaining(expires_at, now) {
        Remaining::Never => None,
        Remaining::Left(secs) => Some(secs),
        Remaining::Expired if keep_expired => Some(0),
        Remaining::Expired => return Ok(None),
    };
    let payload: Vec<u8> = row.get(first + 1)?;
    Ok(Some(StoredMessage {
        topic: row.get(first)?,
        payload: payload.into(),
        qos,
        retain: false,
        properties: row.get(first + 3)?,
        expires_in_secs,
    }))
}

fn out_of_range(column: usize, err: impl std::fmt::Display) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(
        column,
        rusqlite::types::Type::Integer,
        err.to_string().into(),
    )
}
