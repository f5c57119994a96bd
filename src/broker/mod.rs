//! The broker core: the state one lock guards (sessions, the subscription tree,
//! retained messages, pending wills), the broker's configuration and rights
//! resolver, and the modules around it. It knows nothing of TLS, sockets or
//! manifests: rights arrive as [`Permissions`] and authentication through a
//! [`Gatekeeper`].
//!
//! A PUBLISH, followed through the modules: `connection::driver` reads it,
//! `connection::handler` checks it (its topic once, as a `TopicName`, for the
//! limits and `may_publish_topic`, the one publish permission check) and asks
//! `routing` to route it; `routing` matches it in
//! `subscriptions`, pushes a copy into each subscriber's `mailbox`, updates
//! `retained`, and records what must survive a crash through the `journal` (the
//! only place store operations are built). The publisher's acknowledgement waits
//! for the journal's [`journal::Durable`]; each subscriber's connection drains its
//! mailbox and reports the QoS flow's steps back through `flows`. Session life
//! cycle (attach, takeover, detach, wills, expiry, reload) lives in `sessions`.

pub mod backpressure;
pub mod connection;
pub mod denials;
mod flows;
pub mod journal;
pub mod keepalive;
pub mod mailbox;
pub mod permissions;
pub mod retained;
mod routing;
pub mod session;
mod session_filters;
mod session_table;
mod sessions;
pub mod stats;
pub mod subscriptions;
pub mod sys;

use std::collections::HashSet;
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;

use moat_protocol::ReasonCode;

use journal::Journal;
use keepalive::Keepalive;
pub use permissions::{
    Admission, ClientLimits, Gatekeeper, ListenerKind, PeerInfo, Permissions, PublishDenied,
    may_publish_message,
};
use retained::RetainedStore;
pub use routing::{Incoming, Routed};
use session_table::{SessionEntry, SessionTable};
pub use sessions::{AttachRequest, Attached};
use stats::Stats;
use subscriptions::SubscriptionTree;

/// Broker-wide limits, swapped on reload. The defaults here are the documented
/// defaults; the policy compiles `broker.limits` into one of these
/// (`policy::Limits::broker`) and the server hands it over as is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerConfig {
    pub max_packet_size_before_auth: u32,
    pub connect_timeout: Duration,
    pub max_keepalive: u16,
    pub max_inflight: u16,
    pub max_subscriptions: usize,
    pub max_user_properties: usize,
    pub max_user_property_bytes: usize,
    pub max_client_id_length: usize,
    pub max_topic_length: usize,
    pub max_topic_levels: usize,
    pub max_retained_messages: usize,
    pub max_retained_bytes: usize,
    /// Topic aliases a client may use towards us.
    pub topic_alias_maximum: u16,
    /// Cap on a session's expiry interval (also used for 3.1.1 persistent sessions).
    pub max_session_expiry: Duration,
    /// Offline persistent sessions one identity may keep.
    pub max_sessions_per_identity: usize,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        BrokerConfig {
            max_packet_size_before_auth: 64 * 1024,
            connect_timeout: Duration::from_secs(10),
            max_keepalive: 300,
            max_inflight: 20,
            max_subscriptions: 256,
            max_user_properties: 32,
            max_user_property_bytes: 8 * 1024,
            max_client_id_length: 128,
            max_topic_length: 1024,
            max_topic_levels: 32,
            max_retained_messages: 10_000,
            max_retained_bytes: 16 * 1024 * 1024,
            topic_alias_maximum: 32,
            max_session_expiry: Duration::from_secs(7 * 24 * 3600),
            max_sessions_per_identity: 64,
        }
    }
}

/// A will waiting for its delay to pass.
struct PendingWill {
    session_id: u64,
    due: Instant,
    incoming: Incoming,
}

/// Everything the broker lock guards: one event (a publish, a subscribe, an
/// attach) sees and changes it whole, and gathers its store operations under
/// the same lock, so the store changes in the order memory does.
#[derive(Default)]
struct State {
    sessions: SessionTable,
    tree: SubscriptionTree,
    retained: RetainedStore,
    pending_wills: Vec<PendingWill>,
    next_id: u64,
    /// One copy of each identity's name for all its sessions (a home has a few
    /// identities and many sessions).
    owners: HashSet<Arc<str>>,
    /// The buffer of the subscriptions the message being routed matched: kept
    /// (empty) between messages so that routing one allocates no list (see
    /// [`subscriptions::recycle`]).
    matches: Vec<subscriptions::Matched<'static>>,
}

impl State {
    /// The shared copy of an identity's name.
    fn owner(&mut self, name: &str) -> Arc<str> {
        if let Some(owner) = self.owners.get(name) {
            return Arc::clone(owner);
        }
        let owner: Arc<str> = Arc::from(name);
        self.owners.insert(Arc::clone(&owner));
        owner
    }
}

/// Finds the current rights of an identity by name (for stored state whose owner
/// or publisher may have lost them).
pub type Resolver = Arc<dyn Fn(&str) -> Option<Arc<dyn Permissions>> + Send + Sync>;

pub struct Broker {
    state: Mutex<State>,
    config: ArcSwap<BrokerConfig>,
    pub stats: Stats,
    started: Instant,
    journal: Journal,
    keepalive: Arc<Keepalive>,
    resolver: RwLock<Option<Resolver>>,
}

impl Broker {
    pub fn new(config: BrokerConfig) -> Arc<Broker> {
        Broker::with_journal(config, Journal::default())
    }

    pub fn with_journal(config: BrokerConfig, journal: Journal) -> Arc<Broker> {
        Arc::new(Broker {
            state: Mutex::new(State::default()),
            config: ArcSwap::from_pointee(config),
            stats: Stats::default(),
            started: Instant::now(),
            journal,
            keepalive: Arc::default(),
            resolver: RwLock::new(None),
        })
    }

    /// The keepalive deadlines of live connections.
    pub fn keepalive(&self) -> &Arc<Keepalive> {
        &self.keepalive
    }

    pub fn journal(&self) -> &Journal {
        &self.journal
    }

    /// Sets how to find an identity's current rights (swapped on reload).
    pub fn set_resolver(&self, resolver: Resolver) {
        *self.resolver.write().unwrap_or_else(|e| e.into_inner()) = Some(resolver);
    }

    fn resolver_is_set(&self) -> bool {
        self.resolver
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .is_some()
    }

    fn resolve(&self, identity: &str) -> Option<Arc<dyn Permissions>> {
        let resolver = self
            .resolver
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()?;
        resolver(identity)
    }

    pub fn config(&self) -> Arc<BrokerConfig> {
        self.config.load_full()
    }

    pub fn set_config(&self, config: BrokerConfig) {
        self.config.store(Arc::new(config));
    }

    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Every mutation keeps the state consistent between statements; a poisoned
        // lock (a bug elsewhere) must not take the whole broker down.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Tells every live connection that the server is going away.
    pub fn shutdown(&self) {
        let state = self.lock();
        for entry in state.sessions.values() {
            if let Some((_, kick)) = &entry.connection {
                kick.kick(ReasonCode::ServerShuttingDown);
            }
        }
    }

    /// Counts for `$SYS`: (sessions, subscriptions, retained messages).
    pub fn counts(&self) -> (usize, usize, usize) {
        let state = self.lock();
        (state.sessions.len(), state.tree.len(), state.retained.len())
    }
}
