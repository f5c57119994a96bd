//! What each bridge is doing, for people: its state (connecting, connected,
//! waiting to retry), the last error, counters of messages carried and dropped,
//! and its queue depth. Written to `<state>/bridges.json` for `moat doctor` (a
//! file, like `denials.json`: the CLI needs no credentials and no port) and
//! published under `$SYS/broker/bridges/<name>/...`.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::broker::journal::Reservation;
use crate::broker::mailbox::Message;
use crate::broker::session::SessionLink;
use crate::broker::{Broker, Incoming};
use moat_protocol::QoS;

/// The file's name in the state directory.
pub const BRIDGES_FILE: &str = "bridges.json";

/// How often `$SYS` (and the file, when a bridge's condition changed) is refreshed.
pub const WRITE_INTERVAL: Duration = Duration::from_secs(2);
/// How often the file is rewritten when only traffic counters changed.
pub const COUNTERS_INTERVAL: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LinkState {
    Connecting,
    Connected,
    /// Waiting before the next attempt (backoff).
    Retrying,
    Stopped,
}

impl LinkState {
    pub fn as_str(self) -> &'static str {
        match self {
            LinkState::Connecting => "connecting",
            LinkState::Connected => "connected",
            LinkState::Retrying => "retrying",
            LinkState::Stopped => "stopped",
        }
    }
}

/// One bridge as written to `bridges.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BridgeReport {
    pub name: String,
    pub remote: String,
    pub state: LinkState,
    /// Unix seconds of the last state change.
    pub since: u64,
    pub last_error: Option<String>,
    /// Messages waiting for the remote, and sent but not acknowledged yet.
    pub queued: usize,
    pub in_flight: usize,
    /// Successful connections since start.
    pub connects: u64,
    /// Messages the remote acknowledged (QoS 1) or was sent (QoS 0).
    pub sent: u64,
    /// Messages from the remote injected here.
    pub received: u64,
    /// Messages lost: queue full (oldest dropped), too large for the remote, or
    /// refused by either side.
    pub dropped: u64,
}

struct Current {
    state: LinkState,
    since: u64,
    last_error: Option<String>,
}

/// A running bridge's live status, shared by its task and the writer.
pub struct BridgeStatus {
    pub name: String,
    remote: String,
    current: Mutex<Current>,
    session: Mutex<Option<Arc<SessionLink>>>,
    connects: AtomicU64,
    sent: AtomicU64,
    received: AtomicU64,
    dropped: AtomicU64,
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl BridgeStatus {
    pub fn new(name: &str, remote: String) -> Arc<BridgeStatus> {
        Arc::new(BridgeStatus {
            name: name.to_owned(),
            remote,
            current: Mutex::new(Current {
                state: LinkState::Connecting,
                since: unix_now(),
                last_error: None,
            }),
            session: Mutex::new(None),
            connects: AtomicU64::new(0),
            sent: AtomicU64::new(0),
            received: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
        })
    }

    fn current(&self) -> std::sync::MutexGuard<'_, Current> {
        self.current.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn set_session(&self, session: Arc<SessionLink>) {
        *self.session.lock().unwrap_or_else(|e| e.into_inner()) = Some(session);
    }

    /// Records a state change (logged by the caller with its reason).
    pub fn set_state(&self, state: LinkState) {
        let mut c = self.current();
        if c.state != state {
            c.state = state;
            c.since = unix_now();
        }
        drop(c);
        if state == LinkState::Connected {
            self.connects.fetch_add(1, Relaxed);
        }
    }

    pub fn set_error(&self, error: String) {
        self.current().last_error = Some(error);
    }

    pub fn state(&self) -> LinkState {
        self.current().state
    }

    pub fn sent(&self, n: u64) {
        self.sent.fetch_add(n, Relaxed);
    }
    pub fn received(&self, n: u64) {
        self.received.fetch_add(n, Relaxed);
    }
    /// Counts a drop; returns the total so far (for log thinning).
    pub fn dropped(&self, n: u64) -> u64 {
        self.dropped.fetch_add(n, Relaxed) + n
    }

    pub fn report(&self) -> BridgeReport {
        let (queued, in_flight, evicted) = self
            .session
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map_or((0, 0, 0), |s| {
                let (queued, _, in_flight) = s.mailbox.depth();
                (queued, in_flight, s.mailbox.dropped().total)
            });
        let c = self.current();
        BridgeReport {
            name: self.name.clone(),
            remote: self.remote.clone(),
            state: c.state,
            since: c.since,
            last_error: c.last_error.clone(),
            queued,
            in_flight,
            connects: self.connects.load(Relaxed),
            sent: self.sent.load(Relaxed),
            received: self.received.load(Relaxed),
            dropped: self.dropped.load(Relaxed) + evicted,
        }
    }
}

pub fn path_in(state: &Path) -> PathBuf {
    state.join(BRIDGES_FILE)
}

/// Writes every bridge's report (replacing the file atomically).
pub fn write(reports: &[BridgeReport], path: &Path) -> std::io::Result<()> {
    let text = serde_json::to_string_pretty(reports).map_err(std::io::Error::other)?;
    crate::manifest::edit::write_atomically(path, &format!("{text}\n"))
}

/// Reads what a running (or the last) broker wrote into `state`.
pub fn read(state: &Path) -> std::io::Result<Vec<BridgeReport>> {
    let text = std::fs::read_to_string(path_in(state))?;
    serde_json::from_str(&text).map_err(std::io::Error::other)
}

/// Publishes one bridge's `$SYS/broker/bridges/<name>/...` topics, retained.
fn publish_sys(broker: &Broker, r: &BridgeReport) {
    let values = [
        ("state", r.state.as_str().to_owned()),
        ("queued", r.queued.to_string()),
        ("sent", r.sent.to_string()),
        ("received", r.received.to_string()),
        ("dropped", r.dropped.to_string()),
        ("last_error", r.last_error.clone().unwrap_or_default()),
    ];
    for (leaf, value) in values {
        let topic = format!("$SYS/broker/bridges/{}/{leaf}", r.name);
        broker.publish(
            Incoming {
                message: Message::new(&topic, Bytes::from(value), QoS::AtMostOnce, true),
                publisher: None,
                from_session: None,
                retained_quota: usize::MAX,
            },
            Reservation::NONE,
        );
    }
}

/// The report without its traffic counters: what a person checking on a bridge
/// needs to see at once (state, error, queue, drops).
fn condition(r: &BridgeReport) -> BridgeReport {
    BridgeReport {
        sent: 0,
        received: 0,
        connects: 0,
        since: 0,
        ..r.clone()
    }
}

/// Refreshes `$SYS` every [`WRITE_INTERVAL`] in which a report changed, and
/// `bridges.json` when a bridge's condition changed (state, error, queue, drops)
/// or, for the traffic counters alone, at most every [`COUNTERS_INTERVAL`]: the
/// state directory is on an SD card, and a busy bridge must not rewrite a file
/// every two seconds. An empty list is written once at start, so a reader can tell
/// "no bridges" from "never ran".
pub async fn run_writer(
    broker: Arc<Broker>,
    bridges: Arc<Mutex<Vec<Arc<BridgeStatus>>>>,
    path: PathBuf,
) {
    let mut tick = tokio::time::interval(WRITE_INTERVAL);
    let mut published: Option<Vec<BridgeReport>> = None;
    let mut written: Option<(Vec<BridgeReport>, std::time::Instant)> = None;
    loop {
        tick.tick().await;
        let reports: Vec<BridgeReport> = bridges
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|b| b.report())
            .collect();
        if published.as_ref() != Some(&reports) {
            for r in &reports {
                publish_sys(&broker, r);
            }
            published = Some(reports.clone());
        }
        let due = match &written {
            None => true,
            Some((last, at)) => {
                let conditions =
                    |all: &[BridgeReport]| all.iter().map(condition).collect::<Vec<_>>();
                conditions(last) != conditions(&reports)
                    || (*last != reports && at.elapsed() >= COUNTERS_INTERVAL)
            }
        };
        if !due {
            continue;
        }
        let (to_write, p) = (reports.clone(), path.clone());
        match tokio::task::spawn_blocking(move || write(&to_write, &p)).await {
            Ok(Ok(())) => written = Some((reports, std::time::Instant::now())),
            Ok(Err(e)) => {
                tracing::warn!(path = %path.display(), error = %e, "cannot write the bridge status")
            }
            Err(e) => tracing::warn!(error = %e, "bridge status writer failed"),
        }
    }
}
