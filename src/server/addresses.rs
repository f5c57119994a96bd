//! Keeps the server certificate naming the LAN addresses the host has now. `serve`
//! provisions at start and on reload; an address that arrives later (the Pi's Wi-Fi
//! lease, which may come after the broker started at first boot) or changes (a new
//! DHCP lease) would otherwise be missing until the next restart, and a client that
//! connects by address (Home Assistant checks the certificate against it) would fail
//! TLS verification. Every `POLL` this reads the addresses; on a change it
//! re-provisions the certificates (re-issued with the same key, so a pinned
//! fingerprint stays valid) and swaps the TLS settings that new handshakes use. It
//! owns no policy: it reads the one in force.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;

use crate::machine::current_lan_addresses;
use crate::net::TlsSettings;
use crate::pki;
use crate::policy::Policy;
use crate::provision;

use super::gate::ActivePolicy;
use super::run::{ServeError, log_provisioned};

/// How often the addresses are read: two small `/proc/self/net` files (not the
/// socket tables, which are long on a busy broker).
const POLL: Duration = Duration::from_secs(10);

/// Watches the host's LAN addresses for the life of the broker.
pub async fn watch(
    state: PathBuf,
    active: Arc<ArcSwap<ActivePolicy>>,
    tls: Arc<ArcSwap<TlsSettings>>,
) {
    let mut seen = current_lan_addresses();
    let mut tick = tokio::time::interval(POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        let now = current_lan_addresses();
        if now == seen {
            continue;
        }
        let policy = active.load_full();
        let dir = state.clone();
        let renewed = tokio::task::spawn_blocking(move || server_tls(&dir, &policy.policy)).await;
        match renewed {
            Ok(Ok(settings)) => {
                tls.store(Arc::new(settings));
                tracing::info!(addresses = ?now, "LAN addresses changed: the server certificate names the new ones");
            }
            Ok(Err(e)) => tracing::warn!(
                addresses = ?now,
                error = %e,
                "LAN addresses changed but the certificate could not be renewed: clients using a new address fail TLS verification until `moat reload`"
            ),
            Err(e) => tracing::warn!(error = %e, "certificate renewal task failed"),
        }
        // Once per change, also when it failed: a failure is logged, not repeated
        // every poll.
        seen = now;
    }
}

/// Provisions the certificates `policy` implies for this host now, logs what
/// changed, and loads the server's TLS settings from them.
fn server_tls(state: &Path, policy: &Policy) -> Result<TlsSettings, ServeError> {
    log_provisioned(&provision::certificates(state, policy)?);
    Ok(TlsSettings::new(pki::load_server_credentials(state)?)?)
}
