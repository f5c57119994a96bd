//! `<state>/denials.json`: the running broker's denial counts
//! ([`crate::broker::denials`]) written out for `moat denials` and `moat doctor`,
//! atomically and only when they changed. A file, not a listener: the CLI needs no
//! credentials and the broker opens no new port.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::broker::Broker;
use crate::broker::denials::DenialsSnapshot;

/// The file's name in the state directory.
pub const DENIALS_FILE: &str = "denials.json";

/// How often the counts are written when they changed: soon enough for someone
/// looking, rare enough for an SD card under a device that retries all day.
pub const WRITE_INTERVAL: Duration = Duration::from_secs(5);

pub fn path_in(state: &Path) -> PathBuf {
    state.join(DENIALS_FILE)
}

/// Writes the current counts (replacing the file atomically).
pub fn write(broker: &Broker, path: &Path) -> std::io::Result<()> {
    let snapshot = broker.stats.denials.snapshot();
    let text = serde_json::to_string_pretty(&snapshot).map_err(std::io::Error::other)?;
    crate::manifest::edit::write_atomically(path, &format!("{text}\n"))
}

/// Writes the counts every [`WRITE_INTERVAL`] in which they changed, forever. A
/// fresh broker writes an empty file once, so a reader can tell "none" from "not
/// running since the last start".
pub async fn run_writer(broker: Arc<Broker>, path: PathBuf) {
    let mut tick = tokio::time::interval(WRITE_INTERVAL);
    let mut written: Option<u64> = None;
    loop {
        tick.tick().await;
        let total = broker.stats.denials.total();
        if written == Some(total) {
            continue;
        }
        let (b, p) = (Arc::clone(&broker), path.clone());
        match tokio::task::spawn_blocking(move || write(&b, &p)).await {
            Ok(Ok(())) => written = Some(total),
            Ok(Err(e)) => {
                tracing::warn!(path = %path.display(), error = %e, "cannot write the denial counts")
            }
            Err(e) => tracing::warn!(error = %e, "denial writer task failed"),
        }
    }
}

/// Reads the counts a broker wrote into `state`.
pub fn read(state: &Path) -> Result<DenialsSnapshot, ReadError> {
    let path = path_in(state);
    let text = std::fs::read_to_string(&path).map_err(|source| ReadError::Io {
        path: path.clone(),
        source,
    })?;
    serde_json::from_str(&text).map_err(|source| ReadError::Parse { path, source })
}

#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("cannot read {path} (has `moat serve` run with this state directory?): {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a denial snapshot: {source}")]
    Parse {
        path: PathBuf,
        source: serde_json::Error,
    },
}
