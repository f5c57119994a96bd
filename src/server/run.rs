//! `serve`: load and provision, bind, run until SIGTERM/SIGINT, reload on SIGHUP.
//! A reload that fails validation keeps the old policy and says why. The
//! certificate follows the host's LAN addresses in between (`addresses`).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use tokio::signal::unix::{SignalKind, signal};

use crate::auth::{AuthConfig, Authenticator};
use crate::broker::journal::Journal;
use crate::broker::mailbox::QueueLimits;
use crate::broker::{Broker, ListenerKind, sys};
use crate::net::syn_filter::SynFilter;
use crate::net::{AdmissionControl, AdmissionSettings, Listener, TlsSettings, serve_listener};
use crate::pki;
use crate::policy::{Durability, Policy};
use crate::provision::{self, PasswordFiles, ProvisionError};
use crate::store::{self, Store};

use super::denials_file;
use super::gate::{ActivePolicy, PolicyGate, resolver_for};

/// Longest `serve` waits at shutdown for connections to send their DISCONNECT and
/// end (each one's will and session state settle as it ends).
const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("{0}")]
    Manifest(#[from] crate::manifest::ManifestError),
    #[error("{0}")]
    Provision(#[from] ProvisionError),
    #[error("loading the server credentials: {0}")]
    Pki(#[from] pki::PkiError),
    #[error("TLS: {0}")]
    Tls(#[from] crate::net::tls::TlsError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("metrics endpoint: {0}")]
    Metrics(#[from] crate::metrics::MetricsError),
    #[error("durable store: {0}")]
    Store(#[from] store::StoreError),
    #[error("signal handler: {0}")]
    Signal(std::io::Error),
    #[error("writing the PID file {path}: {source}")]
    PidFile {
        path: PathBuf,
        source: std::io::Error,
    },
}

pub struct ServeOptions {
    pub manifest: PathBuf,
    pub state: PathBuf,
    pub pid_file: Option<PathBuf>,
    /// malloc gives large freed blocks straight back to the OS (a fixed mmap
    /// threshold), so argon2's working memory need not be kept between logins.
    pub large_frees_unmap: bool,
}

/// Everything that changes when the manifest does.
struct Loaded {
    active: ActivePolicy,
    tls: TlsSettings,
}

/// Loads the manifest, provisions what it implies, hashes password files.
fn load(manifest: &Path, state: &Path) -> Result<Loaded, ServeError> {
    let (policy, warnings) = Policy::load(manifest)?;
    for warning in warnings {
        tracing::warn!("{warning}");
    }
    let provisioned = provision::provision(state, &policy, PasswordFiles::Hash)?;
    log_provisioned(&provisioned.report);
    let file_hashes = provisioned.file_hashes;
    let tls = TlsSettings::new(pki::load_server_credentials(state)?)?;
    Ok(Loaded {
        active: ActivePolicy {
            policy,
            file_hashes,
        },
        tls,
    })
}

/// Logs each file provisioning created or renewed.
pub(super) fn log_provisioned(report: &pki::ProvisionReport) {
    for item in report
        .items
        .iter()
        .filter(|i| i.outcome != pki::Outcome::Kept)
    {
        tracing::info!(path = %item.path.display(), outcome = %item.outcome, "provisioned");
    }
}

fn admission_settings(policy: &Policy) -> AdmissionSettings {
    AdmissionSettings {
        networks: policy.networks.clone(),
        max_connections: policy.limits.max_connections,
        max_connections_per_ip: policy.limits.max_connections_per_ip,
    }
}

/// Opens the durable store the manifest names (default `<state>/moat.db`). A
/// damaged database is moved aside by the store, loudly; the broker starts fresh.
fn open_store(policy: &Policy, state: &Path) -> Result<Arc<Store>, ServeError> {
    let path = policy
        .persistence
        .path
        .clone()
        .unwrap_or_else(|| state.join("moat.db"));
    let durability = match policy.persistence.durability {
        Durability::Full => store::Durability::Full,
        Durability::Batched { commit_interval } => store::Durability::Batched { commit_interval },
    };
    let (store, recovery) = Store::open(&path, durability)?;
    if let Some(moved) = &recovery.moved_aside {
        tracing::error!(
            moved_aside = %moved.display(),
            reason = recovery.reason.as_deref().unwrap_or("damaged"),
            "the database was damaged: it was moved aside and moat starts with empty durable state"
        );
    }
    tracing::info!(path = %path.display(), ?durability, "durable store open");
    Ok(Arc::new(store))
}

/// Runs the broker until SIGTERM or SIGINT.
pub async fn serve(options: ServeOptions) -> Result<(), ServeError> {
    let loaded = load(&options.manifest, &options.state)?;
    let policy = &loaded.active.policy;
    let store = open_store(policy, &options.state)?;
    let broker = Broker::with_journal(
        policy.limits.broker.clone(),
        Journal::new(Some(Arc::clone(&store))),
    );
    broker.set_resolver(resolver_for(policy));
    let snapshot = store.load()?;
    let restore_limits = QueueLimits {
        max_messages: policy.limits.max_queued_messages,
        max_bytes: policy.limits.max_queued_bytes,
        max_inflight: policy.limits.broker.max_inflight,
    };
    let room = broker.journal().reserve().await;
    broker.restore(snapshot, restore_limits, room).await?;
    let auth = Authenticator::new(AuthConfig {
        concurrency: policy.limits.auth_concurrency,
        queue: policy.limits.auth_queue,
        keep_working_memory: !options.large_frees_unmap,
        ..AuthConfig::default()
    });
    let admission = AdmissionControl::new(admission_settings(policy));
    let tls = Arc::new(ArcSwap::from_pointee(loaded.tls));
    let mut listeners = Vec::new();
    // The kernel drops SYNs from outside the allowed networks; admission stays behind.
    let mut syn_filters = Vec::new();
    for plan in &policy.listeners {
        let (addr, transport) = (plan.address, plan.transport);
        let kind = if transport.is_tls() {
            ListenerKind::Tls
        } else {
            ListenerKind::Plain
        };
        let listener = Listener::bind(addr, kind, transport.is_websocket())
            .await
            .map_err(|source| ServeError::Bind { addr, source })?;
        let bound = listener.local_addr().unwrap_or(addr);
        tracing::info!(address = %bound, listener = transport.key(), "listening");
        syn_filters.extend(SynFilter::install(
            &listener.socket,
            bound,
            &policy.networks,
        ));
        listeners.push(listener);
    }
    let sources = crate::metrics::Sources {
        broker: Arc::clone(&broker),
        auth: Arc::clone(&auth),
        admission: Arc::clone(&admission),
        store: Some(Arc::clone(&store)),
    };
    let mut metrics = None;
    let metrics_bound = match &policy.metrics {
        Some(plan) => Some(
            crate::metrics::MetricsEndpoint::bind(plan, &policy.networks, sources.clone()).await?,
        ),
        None => None,
    };
    let homeassistant = policy.homeassistant;
    if homeassistant {
        crate::metrics::homeassistant::check_readers(policy);
        tokio::spawn(crate::metrics::homeassistant::run(sources));
    }
    let mut bridges = crate::bridge::Bridges::start(&broker, &policy.bridges, &options.state);
    let active = Arc::new(ArcSwap::from_pointee(loaded.active));
    let gate = Arc::new(PolicyGate {
        active: Arc::clone(&active),
        auth: Arc::clone(&auth),
    });
    // The server owns its accept loops: shutdown stops them before telling clients.
    let mut accepting = tokio::task::JoinSet::new();
    for listener in listeners {
        accepting.spawn(serve_listener(
            listener,
            Arc::clone(&admission),
            Arc::clone(&tls),
            Arc::clone(&broker),
            gate.clone(),
        ));
    }
    if let Some((endpoint, listener)) = metrics_bound {
        accepting.spawn(Arc::clone(&endpoint).serve(listener));
        metrics = Some(endpoint);
    }
    tokio::spawn(sys::run_periodic(Arc::clone(&broker)));
    tokio::spawn(super::addresses::watch(
        options.state.clone(),
        Arc::clone(&active),
        Arc::clone(&tls),
    ));
    let denials_path = denials_file::path_in(&options.state);
    tokio::spawn(denials_file::run_writer(
        Arc::clone(&broker),
        denials_path.clone(),
    ));

    if let Some(path) = &options.pid_file {
        std::fs::write(path, format!("{}\n", std::process::id())).map_err(|source| {
            ServeError::PidFile {
                path: path.clone(),
                source,
            }
        })?;
    }
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
    tracing::info!("moat is ready");

    let mut hangup = signal(SignalKind::hangup()).map_err(ServeError::Signal)?;
    let mut terminate = signal(SignalKind::terminate()).map_err(ServeError::Signal)?;
    let mut interrupt = signal(SignalKind::interrupt()).map_err(ServeError::Signal)?;
    loop {
        tokio::select! {
            _ = hangup.recv() => {
                let _ = sd_notify::notify(&[sd_notify::NotifyState::Reloading]);
                match load(&options.manifest, &options.state) {
                    Ok(loaded) => {
                        let new_policy = &loaded.active.policy;
                        broker.set_config(new_policy.limits.broker.clone());
                        admission.update(admission_settings(new_policy));
                        if new_policy.networks != active.load().policy.networks {
                            for filter in &syn_filters {
                                filter.update(&new_policy.networks);
                            }
                        }
                        crate::metrics::reload(metrics.as_deref(), homeassistant, new_policy);
                        tls.store(Arc::new(loaded.tls));
                        let new_bridges = new_policy.bridges.clone();
                        auth.clear_cache();
                        // New logins use the new policy from here on; logins already
                        // past their password check are re-resolved when they attach.
                        let resolver = resolver_for(new_policy);
                        active.store(Arc::new(loaded.active));
                        let room = broker.journal().reserve().await;
                        let (removed, dropped, durable) = broker.reauthorize(resolver, room);
                        durable.settle("revoked sessions and subscriptions").await;
                        // After the new rights: a new bridge's identity must resolve.
                        bridges.reload(&new_bridges).await;
                        tracing::info!(sessions_removed = removed, subscriptions_dropped = dropped, "manifest reloaded");
                    }
                    Err(e) => tracing::error!("reload refused, the previous policy stays in force: {e}"),
                }
                let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
            }
            _ = terminate.recv() => break,
            _ = interrupt.recv() => break,
        }
    }
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
    tracing::info!("shutting down");
    // Stop accepting, tell every client (v5: DISCONNECT "server shutting down"), and
    // wait until their tasks have ended (each holds an admission slot until then),
    // within a deadline: a client that stopped reading cannot hold the shutdown.
    accepting.shutdown().await;
    broker.shutdown();
    bridges.stopped(SHUTDOWN_GRACE).await;
    let deadline = Instant::now() + SHUTDOWN_GRACE;
    while admission.open_connections() > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let left = admission.open_connections();
    if left > 0 {
        tracing::warn!(
            connections = left,
            "shutdown deadline passed with connections still open"
        );
    }
    if let Err(e) = denials_file::write(&broker, &denials_path) {
        tracing::warn!(path = %denials_path.display(), error = %e, "cannot write the denial counts");
    }
    if let Err(e) = store.close().await {
        tracing::error!(error = %e, "closing the durable store");
    }
    if let Some(path) = &options.pid_file {
        let _ = std::fs::remove_file(path);
    }
    Ok(())
}
